//! `referer`: nginx's referer module — `valid_referers` and
//! `$invalid_referer` ("1" when the Referer is not among the valid ones,
//! empty otherwise), the usual hotlink protection:
//!
//! ```text
//! valid_referers none blocked server_names *.example.com;
//! if ($invalid_referer) { return 403; }
//! ```
//!
//! As nginx: `none` (no Referer), `blocked` (a Referer without `http://`
//! or `https://`), `server_names` (the server's `server_name`s, regexes
//! included, wherever they stand in the block), host names with the
//! wildcards `*.example.com`, `.example.com` and `www.example.*` and an
//! optional URI prefix (`example.com/galleries/`), and `~regex`
//! (caseless) against the Referer without its scheme. Host names are
//! compared without regard to case and at most 256 bytes long; the URI
//! prefix with regard to case. With no `valid_referers`, every request
//! is valid. `referer_hash_max_size` and `referer_hash_bucket_size` are
//! accepted (there is no hash to size).

use plugin_api::{export_plugin, log, sys, ConfCx, DirectiveSpec, Plugin, Request};
use regex::{Regex, RegexBuilder};
use std::rc::Rc;

/// What `valid_referers` lists.
#[derive(Default)]
pub struct Referers {
    none: bool,
    blocked: bool,
    /// Exact host names (lowercase) and their URI prefixes.
    exact: Vec<(String, Option<String>)>,
    /// `*.example.com` / `.example.com`: the suffix with its dot, whether
    /// the bare name matches too, the URI prefix.
    head: Vec<(String, bool, Option<String>)>,
    /// `www.example.*`: the prefix with its dot, the URI prefix.
    tail: Vec<(String, Option<String>)>,
    /// The server's regex server names, against the host.
    host_regex: Vec<Regex>,
    /// `~regex`, against the Referer without its scheme.
    regex: Vec<Regex>,
}

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    referers: Option<Rc<Referers>>,
}

/// The plugin.
pub struct Referer;

const SL: u32 = sys::CTX_SERVER | sys::CTX_LOCATION;

impl Plugin for Referer {
    const NAME: &'static str = "referer";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("valid_referers", SL, 1, sys::ARGS_ANY, |c, a, cx| {
                let mut r = Referers::default();
                for v in a {
                    add(&mut r, v, cx)?;
                }
                c.referers = Some(Rc::new(r));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("referer_hash_max_size", SL, 1, 1, |_, a, _| number(a[0])),
            DirectiveSpec::<Conf>::new("referer_hash_bucket_size", SL, 1, 1, |_, a, _| number(a[0])),
        ]
    }

    fn create(cx: &ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            let _ = cx.define_variable("invalid_referer", |req| {
                let valid = req.conf::<Conf>().and_then(|c| c.referers.clone()).is_none_or(|r| is_valid(&r, req));
                Some(if valid { String::new() } else { "1".into() })
            });
        }
        Conf::default()
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.referers.is_none() {
            child.referers = parent.referers.clone();
        }
    }
}

fn number(v: &str) -> Result<(), String> {
    v.parse::<usize>().map(drop).map_err(|_| format!("invalid value \"{v}\""))
}

fn caseless(re: &str) -> Result<Regex, String> {
    RegexBuilder::new(&plugin_api::http::pcre_compat(re)).case_insensitive(true).build().map_err(|e| format!("regex \"{re}\" is invalid: {}", e.to_string().lines().last().unwrap_or("")))
}

/// One `valid_referers` argument.
fn add(r: &mut Referers, v: &str, cx: &ConfCx<'_>) -> Result<(), String> {
    match v {
        "none" => r.none = true,
        "blocked" => r.blocked = true,
        "server_names" => {
            let names = cx.server_names().ok_or("\"server_names\" needs a server block")?;
            for n in names {
                match n.strip_prefix('~') {
                    Some(re) => r.host_regex.push(caseless(re)?),
                    None if n.is_empty() => {}
                    None => add_host(r, &n, None),
                }
            }
        }
        _ => match v.strip_prefix('~') {
            Some(re) => r.regex.push(caseless(re)?),
            None => {
                let (host, uri) = match v.find('/') {
                    Some(i) => (&v[..i], Some(v[i..].to_string())),
                    None => (v, None),
                };
                if host.is_empty() {
                    return Err(format!("invalid referer \"{v}\""));
                }
                add_host(r, host, uri);
            }
        },
    }
    Ok(())
}

fn add_host(r: &mut Referers, host: &str, uri: Option<String>) {
    let host = host.to_ascii_lowercase();
    if r.exact.iter().any(|(h, _)| *h == host) || r.head.iter().any(|(h, _, _)| *h == host) || r.tail.iter().any(|(h, _)| *h == host) {
        log(sys::LOG_WARN, &format!("conflicting parameter \"{host}\" in valid_referers"));
        return;
    }
    if let Some(rest) = host.strip_prefix("*.") {
        r.head.push((format!(".{rest}"), false, uri));
    } else if host.starts_with('.') {
        r.head.push((host, true, uri));
    } else if let Some(rest) = host.strip_suffix(".*") {
        r.tail.push((format!("{rest}."), uri));
    } else {
        r.exact.push((host, uri));
    }
}

/// The URI prefix of the host entry matching `host`: Some(None) for an
/// entry without one, None when no entry matches. Exact names first, then
/// the longest leading wildcard, then the longest trailing one.
fn lookup<'r>(r: &'r Referers, host: &str) -> Option<Option<&'r str>> {
    if let Some((_, u)) = r.exact.iter().find(|(h, _)| h == host) {
        return Some(u.as_deref());
    }
    let head = r
        .head
        .iter()
        .filter(|(s, bare, _)| (host.len() > s.len() && host.ends_with(s.as_str())) || (*bare && host == &s[1..]))
        .max_by_key(|(s, _, _)| s.len());
    if let Some((_, _, u)) = head {
        return Some(u.as_deref());
    }
    let tail = r.tail.iter().filter(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str())).max_by_key(|(p, _)| p.len());
    tail.map(|(_, u)| u.as_deref())
}

/// nginx's check of the request's Referer.
pub fn is_valid(r: &Referers, req: &Request<'_>) -> bool {
    let Some(referer) = req.header("Referer") else { return r.none };
    let b = referer.as_bytes();
    let rest = if b.len() >= "http://i.ru".len() {
        if b[..7].eq_ignore_ascii_case(b"http://") {
            Some(&referer[7..])
        } else if b[..8].eq_ignore_ascii_case(b"https://") {
            Some(&referer[8..])
        } else {
            None
        }
    } else {
        None
    };
    let Some(rest) = rest else { return r.blocked };
    let end = rest.find(['/', ':']).unwrap_or(rest.len());
    if end > 256 {
        return false;
    }
    let host = rest[..end].to_ascii_lowercase();
    if let Some(uri) = lookup(r, &host) {
        let Some(prefix) = uri else { return true };
        let path = rest[end..].find('/').map_or("", |i| &rest[end + i..]);
        return path.starts_with(prefix);
    }
    r.host_regex.iter().any(|re| re.is_match(&host)) || r.regex.iter().any(|re| re.is_match(rest))
}

export_plugin!(Referer);

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(hosts: &[(&str, Option<&str>)]) -> Referers {
        let mut r = Referers::default();
        for (h, u) in hosts {
            add_host(&mut r, h, u.map(str::to_string));
        }
        r
    }

    #[test]
    fn wildcards_as_nginx_hash() {
        let r = refs(&[("*.example.com", None), (".example.org", Some("/g/")), ("www.example.*", None), ("a.b.example.com", Some("/x"))]);
        assert_eq!(lookup(&r, "www.example.com"), Some(None));
        assert_eq!(lookup(&r, "example.com"), None);
        assert_eq!(lookup(&r, "example.org"), Some(Some("/g/")));
        assert_eq!(lookup(&r, "a.example.org"), Some(Some("/g/")));
        assert_eq!(lookup(&r, "www.example.net"), Some(None));
        assert_eq!(lookup(&r, "a.b.example.com"), Some(Some("/x")), "exact before wildcards");
        assert_eq!(lookup(&r, "other.net"), None);
    }
}
