//! The CGI-style upstreams, as nginx's fastcgi, scgi and uwsgi modules:
//! `fastcgi_pass`, `scgi_pass` and `uwsgi_pass` run on the proxy's
//! upstream machinery (groups, Unix sockets, retries, buffering, flow
//! control, intercepted errors, X-Accel-Redirect, `$upstream_*`); what
//! differs is the wire. The request carries a CGI/1.1 environment: the
//! family's `*_param`s, then the client's headers as `HTTP_*`. The
//! response is a CGI head (`Status:` gives the status; a `Location:`
//! without one, 302) — or, from uWSGI, an HTTP status line — and a body
//! that lasts until the application is done (END_REQUEST for FastCGI,
//! the connection's end for the others).
//!
//! - SCGI: a netstring of NUL-separated pairs, CONTENT_LENGTH first and
//!   `SCGI 1`, then the body as is.
//! - uWSGI: a 4-byte header (`uwsgi_modifier1`, the size little-endian,
//!   `uwsgi_modifier2`), length-prefixed pairs, then the body as is.
//! - FastCGI: records, see [`super::fastcgi`].
//!
//! Every upstream setting has its twin per family (`fastcgi_read_timeout`,
//! `scgi_read_timeout`, `uwsgi_read_timeout` beside `proxy_read_timeout`),
//! kept apart as in nginx (`Conf::sides`).

use super::{set_opt, Conf, Pass, ANY};
use plugin_api::template::Template;
use plugin_api::{sys, ConfCx, DirectiveSpec, Piece, Request};
use std::rc::Rc;

/// What the upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proto {
    /// `proxy_pass`.
    #[default]
    Http,
    /// `fastcgi_pass`.
    FastCgi,
    /// `scgi_pass`.
    Scgi,
    /// `uwsgi_pass`.
    Uwsgi,
    /// `memcached_pass` (see [`super::memcached`]).
    Memcached,
}

impl Proto {
    /// The CGI families, in `Conf::params` order.
    pub const CGI: [Proto; 3] = [Proto::FastCgi, Proto::Scgi, Proto::Uwsgi];

    /// The families with twins of the upstream settings, in `Conf::sides`
    /// order.
    pub const SIDED: [Proto; 4] = [Proto::FastCgi, Proto::Scgi, Proto::Uwsgi, Proto::Memcached];

    /// Its slot in `Conf::params` (None but for the CGI families).
    pub fn slot(self) -> Option<usize> {
        Proto::CGI.iter().position(|p| *p == self)
    }

    /// Its slot in `Conf::sides` (None for HTTP).
    pub fn side(self) -> Option<usize> {
        Proto::SIDED.iter().position(|p| *p == self)
    }

    /// A CGI family: the response is a CGI head and a body up to the
    /// application's end.
    pub fn is_cgi(self) -> bool {
        self.slot().is_some()
    }

    /// Its directives' prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Proto::Http => "proxy",
            Proto::FastCgi => "fastcgi",
            Proto::Scgi => "scgi",
            Proto::Uwsgi => "uwsgi",
            Proto::Memcached => "memcached",
        }
    }
}

/// One `*_param name value [if_not_empty]`.
pub type Param = (String, Template, bool);

/// The `HTTP_*` name of a request header.
pub fn param_name(header: &str) -> String {
    let mut n = String::with_capacity(5 + header.len());
    n.push_str("HTTP_");
    n.extend(header.chars().map(|c| if c == '-' { '_' } else { c.to_ascii_uppercase() }));
    n
}

/// The CGI environment of the request for `proto`, pair by pair: the
/// family's params (`if_not_empty` ones only with a value), then, unless
/// `*_pass_request_headers off`, the client's headers as `HTTP_*`
/// (repeated ones joined as nginx joins them: Cookie with "; ", the
/// others with ", "; a name a param sets is not sent twice).
pub fn env(req: &Request<'_>, conf: &Conf, proto: Proto, mut emit: impl FnMut(&[u8], &[u8])) {
    let own: &[Param] = proto.slot().and_then(|i| conf.params[i].as_deref()).map_or(&[], |v| v.as_slice());
    let mut value = Vec::new();
    for (name, t, if_not_empty) in own {
        value.clear();
        super::render_into(req, t, "", &mut value);
        if *if_not_empty && value.is_empty() {
            continue;
        }
        emit(name.as_bytes(), &value);
    }
    if !conf.pass_req_headers.unwrap_or(true) {
        return;
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for (k, v) in req.headers() {
        let name = param_name(k);
        if own.iter().any(|(n, _, _)| *n == name) {
            continue;
        }
        match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, joined)) => {
                joined.push_str(if name == "HTTP_COOKIE" { "; " } else { ", " });
                joined.push_str(v);
            }
            None => seen.push((name, v.to_string())),
        }
    }
    for (n, v) in &seen {
        emit(n.as_bytes(), v.as_bytes());
    }
}

/// The body to send: in memory (appended to the request by the caller)
/// or in a file (sent after it).
fn body<'r>(req: &'r Request<'_>, conf: &Conf) -> (&'r [u8], Option<(i32, u64, u64)>) {
    match req.body_piece().filter(|_| conf.pass_body.unwrap_or(true)) {
        Some(Piece::Mem(m)) => (m, None),
        Some(Piece::File { fd, pos, len }) => (&[], Some((fd, pos, len))),
        None => (&[], None),
    }
}

/// The SCGI request into `out`; a body in a file is the caller's to send.
pub fn build_scgi(req: &Request<'_>, conf: &Conf, out: &mut Vec<u8>) -> Option<(i32, u64, u64)> {
    let (mem, file) = body(req, conf);
    let len = file.map_or(mem.len() as u64, |f| f.2);
    // CONTENT_LENGTH first, then SCGI 1, as the protocol wants.
    let mut head = format!("CONTENT_LENGTH\0{len}\0SCGI\x001\0").into_bytes();
    env(req, conf, Proto::Scgi, |n, v| {
        if n != b"CONTENT_LENGTH" && n != b"SCGI" {
            head.extend_from_slice(n);
            head.push(0);
            head.extend_from_slice(v);
            head.push(0);
        }
    });
    out.clear();
    out.extend_from_slice(head.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(&head);
    out.push(b',');
    out.extend_from_slice(mem);
    file
}

/// The uWSGI request into `out`; Err when its variables pass the 64 KiB
/// the packet's size can say.
pub fn build_uwsgi(req: &Request<'_>, conf: &Conf, out: &mut Vec<u8>) -> Result<Option<(i32, u64, u64)>, String> {
    let mut vars = Vec::with_capacity(1024);
    let mut too_long = false;
    env(req, conf, Proto::Uwsgi, |n, v| {
        too_long |= n.len() > 0xffff || v.len() > 0xffff;
        vars.extend_from_slice(&(n.len() as u16).to_le_bytes());
        vars.extend_from_slice(n);
        vars.extend_from_slice(&(v.len() as u16).to_le_bytes());
        vars.extend_from_slice(v);
    });
    if too_long || vars.len() > 0xffff {
        return Err(format!("uwsgi request is too big: {}", vars.len()));
    }
    let (m1, m2) = conf.uwsgi_modifiers.unwrap_or((0, 0));
    out.clear();
    out.push(m1);
    out.extend_from_slice(&(vars.len() as u16).to_le_bytes());
    out.push(m2);
    out.extend_from_slice(&vars);
    let (mem, file) = body(req, conf);
    out.extend_from_slice(mem);
    Ok(file)
}

/// The status of a CGI response head: its `Status:` line, else 302 with
/// a `Location:`, else 200 (nginx's reading). Err: an invalid Status.
pub fn status(head: &[httparse::Header<'_>]) -> Result<u16, String> {
    if let Some(h) = head.iter().find(|h| h.name.eq_ignore_ascii_case("status")) {
        let v = String::from_utf8_lossy(h.value);
        let code = v.trim().split(' ').next().and_then(|c| c.parse::<u16>().ok()).filter(|c| (100..1000).contains(c));
        return code.ok_or_else(|| format!("upstream sent invalid status \"{}\"", v.trim()));
    }
    Ok(if head.iter().any(|h| h.name.eq_ignore_ascii_case("location")) { 302 } else { 200 })
}

/// `*_pass address | unix:/path | upstream`, with variables or not.
pub fn parse_pass(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>, proto: Proto) -> Result<(), String> {
    let addr = a[0];
    if addr.contains("://") {
        return Err(format!("invalid host in upstream \"{addr}\""));
    }
    let dynamic = addr.contains('$');
    let pass = Pass {
        base: String::new(),
        tls: false,
        host: if dynamic { String::new() } else { addr.to_string() },
        uri: None,
        loc_prefix: String::new(),
        addrs: if dynamic { Vec::new() } else { super::upstream::resolve(addr).unwrap_or_default() },
        group: std::cell::RefCell::new(None),
        url: dynamic.then(|| Template::parse(&format!("http://{addr}"))),
        dynamic: false,
        proto,
    };
    set_opt(&mut c.pass, Rc::new(pass), &format!("{}_pass", proto.prefix()))?;
    super::serve_here(cx)?;
    if proto == Proto::FastCgi {
        super::fastcgi::define_variables(cx)?;
    }
    Ok(())
}

fn parse_param(c: &mut Conf, a: &[&str], proto: Proto) -> Result<(), String> {
    let if_not_empty = match a.get(2) {
        None => false,
        Some(&"if_not_empty") => true,
        Some(v) => return Err(format!("invalid parameter \"{v}\"")),
    };
    let slot = proto.slot().ok_or("not a CGI family")?;
    let list = c.params[slot].get_or_insert_with(|| Rc::new(Vec::new()));
    Rc::get_mut(list).ok_or("the parameter list is shared")?.push((a[0].to_string(), Template::parse(a[1]), if_not_empty));
    Ok(())
}

/// The setter of every family's twin of every TWINNED setting (a plain
/// function each, as directive setters are): `twin` with its own name.
macro_rules! twin_setters {
    ($($name:literal),*) => {
        &[$(
            (concat!("fastcgi_", $name), |c: &mut Conf, a: &[&str], cx: &ConfCx<'_>| twin(c, a, cx, concat!("fastcgi_", $name))),
            (concat!("scgi_", $name), |c: &mut Conf, a: &[&str], cx: &ConfCx<'_>| twin(c, a, cx, concat!("scgi_", $name))),
            (concat!("uwsgi_", $name), |c: &mut Conf, a: &[&str], cx: &ConfCx<'_>| twin(c, a, cx, concat!("uwsgi_", $name))),
        )*]
    };
}

/// memcached's twins: the connection and next-upstream settings.
macro_rules! memcached_twins {
    ($($name:literal),*) => {
        &[$((concat!("memcached_", $name), |c: &mut Conf, a: &[&str], cx: &ConfCx<'_>| twin(c, a, cx, concat!("memcached_", $name)))),*]
    };
}

const MEMCACHED_TWINS: &[(&str, plugin_api::SetFn<Conf>)] =
    memcached_twins!["connect_timeout", "send_timeout", "read_timeout", "buffer_size", "next_upstream", "next_upstream_tries", "next_upstream_timeout"];

const TWINS: &[(&str, plugin_api::SetFn<Conf>)] = twin_setters![
    "connect_timeout", "send_timeout", "read_timeout", "buffering", "request_buffering", "buffer_size", "buffers", "busy_buffers_size",
    "temp_file_write_size", "max_temp_file_size", "temp_path", "intercept_errors", "hide_header", "pass_header", "ignore_headers",
    "next_upstream", "next_upstream_tries", "next_upstream_timeout", "pass_request_body", "pass_request_headers"
];

/// Applies twin `to` (`fastcgi_read_timeout`): the proxy directive's
/// parser, into that family's side of the configuration.
fn twin(c: &mut Conf, a: &[&str], cx: &ConfCx<'_>, to: &str) -> Result<(), String> {
    let (prefix, name) = to.split_once('_').ok_or("a twin's name has a prefix")?;
    let from = format!("proxy_{name}");
    let slot = Proto::SIDED.iter().position(|p| p.prefix() == prefix).ok_or("no such family")?;
    let spec = super::directives().into_iter().find(|s| s.name == from).ok_or("no such proxy directive")?;
    let side = c.sides[slot].get_or_insert_with(Default::default);
    (spec.set)(side, a, cx).map_err(|e| e.replace(&from, to))
}

/// The three families' directives, given the proxy's (for the twins'
/// shapes).
pub fn directives(proxy: &[DirectiveSpec<Conf>]) -> Vec<DirectiveSpec<Conf>> {
    let pass_ctx = sys::CTX_LOCATION | sys::CTX_IF;
    let mut d = vec![
        DirectiveSpec::new("fastcgi_pass", pass_ctx, 1, 1, |c, a, cx| parse_pass(c, a, cx, Proto::FastCgi)),
        DirectiveSpec::new("scgi_pass", pass_ctx, 1, 1, |c, a, cx| parse_pass(c, a, cx, Proto::Scgi)),
        DirectiveSpec::new("uwsgi_pass", pass_ctx, 1, 1, |c, a, cx| parse_pass(c, a, cx, Proto::Uwsgi)),
        DirectiveSpec::new("fastcgi_param", ANY, 2, 3, |c, a, _| parse_param(c, a, Proto::FastCgi)),
        DirectiveSpec::new("scgi_param", ANY, 2, 3, |c, a, _| parse_param(c, a, Proto::Scgi)),
        DirectiveSpec::new("uwsgi_param", ANY, 2, 3, |c, a, _| parse_param(c, a, Proto::Uwsgi)),
        DirectiveSpec::new("uwsgi_modifier1", ANY, 1, 1, |c, a, _| {
            let m = a[0].parse::<u8>().map_err(|_| format!("invalid value \"{}\"", a[0]))?;
            let (_, m2) = c.uwsgi_modifiers.unwrap_or((0, 0));
            c.uwsgi_modifiers = Some((m, m2));
            Ok(())
        }),
        DirectiveSpec::new("uwsgi_modifier2", ANY, 1, 1, |c, a, _| {
            let m = a[0].parse::<u8>().map_err(|_| format!("invalid value \"{}\"", a[0]))?;
            let (m1, _) = c.uwsgi_modifiers.unwrap_or((0, 0));
            c.uwsgi_modifiers = Some((m1, m));
            Ok(())
        }),
    ];
    d.extend(super::fastcgi::directives());
    d.extend(super::memcached::directives());
    for (to, set) in TWINS.iter().chain(MEMCACHED_TWINS) {
        let from = format!("proxy_{}", to.split_once('_').map_or("", |x| x.1));
        if let Some(s) = proxy.iter().find(|s| s.name == from) {
            d.push(DirectiveSpec { name: to, contexts: s.contexts, min_args: s.min_args, max_args: s.max_args, set: *set, flags: s.flags, block_context: s.block_context });
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy settings each family has a twin of (`proxy_` + name),
    /// as nginx's modules have them.
    const TWINNED: [&str; 20] = [
        "connect_timeout",
        "send_timeout",
        "read_timeout",
        "buffering",
        "request_buffering",
        "buffer_size",
        "buffers",
        "busy_buffers_size",
        "temp_file_write_size",
        "max_temp_file_size",
        "temp_path",
        "intercept_errors",
        "hide_header",
        "pass_header",
        "ignore_headers",
        "next_upstream",
        "next_upstream_tries",
        "next_upstream_timeout",
        "pass_request_body",
        "pass_request_headers",
    ];

    #[test]
    fn every_setting_has_its_twins() {
        assert_eq!(TWINS.len(), 3 * TWINNED.len());
        for name in TWINNED {
            for p in Proto::CGI {
                let to = format!("{}_{name}", p.prefix());
                assert!(TWINS.iter().any(|(n, _)| *n == to), "{to}");
            }
        }
        assert_eq!(param_name("X-Forwarded-For"), "HTTP_X_FORWARDED_FOR");
    }

    #[test]
    fn cgi_status() {
        let h = |n: &'static str, v: &'static [u8]| httparse::Header { name: n, value: v };
        assert_eq!(status(&[h("Status", b"404 Not Found")]), Ok(404));
        assert_eq!(status(&[h("Location", b"http://x/")]), Ok(302));
        assert_eq!(status(&[h("Content-Type", b"text/plain")]), Ok(200));
        assert!(status(&[h("Status", b"abc")]).is_err());
    }
}
