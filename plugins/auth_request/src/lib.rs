//! `auth_request`: nginx's auth_request module — access decided by a
//! subrequest (ABI 1.10 `http_subrequest`), the SSO front of oauth2-proxy,
//! Authelia and the like.
//!
//! - `auth_request uri | off;` (http, server, location): in the ACCESS
//!   phase a GET subrequest for `uri` (usually an `internal` location that
//!   proxies to the auth service) is made with the client's headers and no
//!   body. Its answer decides: 2xx grants, 401 refuses with 401 (its
//!   `WWW-Authenticate` passed on), 403 refuses with 403, anything else is
//!   an error (500). With `satisfy any`, a grant from another module is
//!   enough.
//! - `auth_request_set $variable value;` (several): once the subrequest
//!   has answered, `value` (variables read in the subrequest, e.g.
//!   `$upstream_http_x_user`) is set into `$variable` of the request.
//!
//! As in nginx, subrequests skip the ACCESS phase, so an auth location
//! that inherits `auth_request` does not recurse.

use plugin_api::{export_plugin, log, sys, template::Template, DirectiveSpec, Phase, Plugin, Request, Status, Subrequest};
use std::rc::Rc;

/// Per-block configuration.
#[derive(Default)]
pub struct Conf {
    /// `auth_request`: Some(None) is `off`.
    uri: Option<Option<String>>,
    /// `auth_request_set`s: (variable name, value).
    sets: Option<Rc<Vec<(String, Template)>>>,
}

/// A request's progress.
#[derive(Default)]
struct Ctx {
    sub: Option<Subrequest>,
}

/// The plugin.
pub struct AuthRequest;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for AuthRequest {
    const NAME: &'static str = "auth_request";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("auth_request", H, 1, 1, |c, a, _| {
                if c.uri.is_some() {
                    return Err("\"auth_request\" directive is duplicate".into());
                }
                c.uri = Some((a[0] != "off").then(|| a[0].to_string()));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("auth_request_set", H, 2, 2, |c, a, _| {
                let name = a[0].strip_prefix('$').filter(|n| !n.is_empty()).ok_or_else(|| format!("invalid variable name \"{}\"", a[0]))?;
                let list = c.sets.get_or_insert_with(|| Rc::new(Vec::new()));
                Rc::get_mut(list).ok_or("auth_request_set list is shared")?.push((name.to_string(), Template::parse(a[1])));
                Ok(())
            }),
        ]
    }

    fn merge(p: &Conf, c: &mut Conf) {
        if c.uri.is_none() {
            c.uri.clone_from(&p.uri);
        }
        if c.sets.is_none() {
            c.sets.clone_from(&p.sets);
        }
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Access]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(Some(uri)) = &conf.uri else { return Status::Declined };
        let Some(sub) = req.ctx::<Ctx>().sub else {
            return match req.subrequest(uri, "") {
                Ok(s) => {
                    req.ctx::<Ctx>().sub = Some(s);
                    Status::Again
                }
                Err(rc) => {
                    log(sys::LOG_ERR, &format!("auth request to \"{uri}\" could not start (rc {rc})"));
                    Status::Error
                }
            };
        };
        // The subrequest has answered: read what it left, then decide.
        let (status, sets, challenge) = {
            let sr = req.subrequest_of(sub);
            let sets: Vec<(String, String)> = conf.sets.as_deref().map_or(&[][..], |v| v.as_slice()).iter().map(|(n, t)| (n.clone(), render(&sr, t))).collect();
            (sr.status(), sets, sr.header_out("WWW-Authenticate").map(str::to_string))
        };
        for (name, value) in &sets {
            if let Err(rc) = req.set_var(name, value) {
                log(sys::LOG_ERR, &format!("auth_request_set \"${name}\" failed (rc {rc})"));
                return Status::Error;
            }
        }
        match status {
            200..=299 => Status::Ok,
            401 => {
                if let Some(c) = challenge {
                    req.add_header("WWW-Authenticate", &c);
                }
                Status::Http(401)
            }
            403 => Status::Http(403),
            s => {
                log(sys::LOG_ERR, &format!("auth request unexpected status: {s}"));
                Status::Error
            }
        }
    }
}

fn render(req: &Request<'_>, t: &Template) -> String {
    let mut out = Vec::new();
    t.render(&mut out, |v, out| out.extend_from_slice(req.var_bytes(v).unwrap_or(b"")));
    String::from_utf8_lossy(&out).into_owned()
}

export_plugin!(AuthRequest);
