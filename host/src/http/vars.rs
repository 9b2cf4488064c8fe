//! Core HTTP variables (`$uri`, `$http_*`, `$status`, …) and `$var`
//! template expansion for the host's own directives (try_files,
//! error_page).

use super::request::Req;
use std::fmt::Write as _;
use std::time::SystemTime;

/// Names of the host's variables (prefix families end with `_`).
const CORE: &[&str] = &[
    "uri", "document_uri", "args", "query_string", "is_args", "request_uri", "request_method", "request",
    "server_protocol", "host", "hostname", "remote_addr", "realip_remote_addr", "remote_port", "server_addr", "server_port",
    "server_name", "scheme", "https", "status", "body_bytes_sent", "bytes_sent", "request_length",
    "request_time", "time_local", "time_iso8601", "remote_user", "request_id", "realip_remote_port", "pipe", "limit_rate", "msec", "content_length", "content_type", "document_root",
    "realpath_root", "request_filename", "connection", "connection_requests", "pid", "nginx_version",
    "request_body", "request_body_file", "ssl_protocol", "ssl_cipher", "ssl_server_name", "ssl_session_reused", "http_", "sent_http_", "arg_", "cookie_",
    "proxy_protocol_addr", "proxy_protocol_port", "proxy_protocol_server_addr", "proxy_protocol_server_port", "proxy_protocol_tlv_",
];

/// True if a family of variables named `prefix…` would share names with
/// one of the host's families (`http_`, `arg_`, …).
pub fn overlaps_core_family(prefix: &str) -> bool {
    CORE.iter().any(|c| c.ends_with('_') && (c.starts_with(prefix) || prefix.starts_with(c)))
}

/// True if `name` is (or is in a family of) the host's variables.
pub fn is_core(name: &str) -> bool {
    CORE.iter().any(|c| if c.ends_with('_') { name.starts_with(c) } else { name == *c })
}

fn header_matches(header: &str, var: &str) -> bool {
    header.len() == var.len()
        && header.bytes().zip(var.bytes()).all(|(h, v)| {
            let h = if h == b'-' { b'_' } else { h.to_ascii_lowercase() };
            h == v.to_ascii_lowercase()
        })
}

fn format_local(t: SystemTime, iso: bool, out: &mut String) {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d, h, mi, s, off) = crate::sys::localtime(secs);
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let sign = if off < 0 { '-' } else { '+' };
    let (oh, om) = (off.abs() / 3600, off.abs() % 3600 / 60);
    if iso {
        let _ = write!(out, "{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{sign}{oh:02}:{om:02}");
    } else {
        let _ = write!(out, "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} {sign}{oh:02}{om:02}", MON[(mo as usize + 11) % 12]);
    }
}

/// Writes `values` joined by `sep`; false if there are none.
fn join<'v>(values: impl Iterator<Item = &'v str>, sep: &str, out: &mut String) -> bool {
    let mut any = false;
    for v in values {
        if any {
            out.push_str(sep);
        }
        out.push_str(v);
        any = true;
    }
    any
}

/// Writes the value of `$name` into `out`; false if it is not set.
pub fn get(r: &Req, name: &str, out: &mut String) -> bool {
    if let Some((_, v)) = r.vars.iter().find(|(k, _)| k == name) {
        out.push_str(v);
        return true;
    }
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        let Some(Some((a, b))) = name.parse::<usize>().ok().and_then(|n| r.captures.get(n)) else { return false };
        out.push_str(&r.captured[*a..*b]);
        return true;
    }
    match name {
        "uri" | "document_uri" => out.push_str(&r.uri),
        // Empty args read as unset, as nginx's (logged as "-").
        "args" | "query_string" if r.args.is_empty() => return false,
        "args" | "query_string" => out.push_str(&r.args),
        "is_args" => {
            if !r.args.is_empty() {
                out.push('?')
            }
        }
        "request_uri" => out.push_str(&r.request_uri),
        "request_method" => out.push_str(&r.method),
        "request" => {
            let _ = write!(out, "{} {} {}", r.method, r.request_uri, r.protocol());
        }
        "server_protocol" => out.push_str(r.protocol()),
        "host" => {
            if r.host.is_empty() {
                out.push_str(&r.server().primary_name);
            } else {
                out.push_str(&r.host)
            }
        }
        "hostname" => out.push_str(&crate::sys::hostname()),
        "remote_addr" => out.push_str(&r.remote_addr),
        "realip_remote_addr" => out.push_str(r.real_addr.as_deref().unwrap_or(&r.remote_addr)),
        // (realip from a header changes the address only; from a PROXY
        // protocol header, the port too.)
        "remote_port" => {
            let _ = write!(out, "{}", r.real_port.unwrap_or(r.peer.port()));
        }
        "realip_remote_port" => {
            let _ = write!(out, "{}", r.peer.port());
        }
        "server_addr" => {
            let _ = write!(out, "{}", r.local.ip());
        }
        // What a PROXY protocol header said (not found without one).
        "proxy_protocol_addr" | "proxy_protocol_port" | "proxy_protocol_server_addr" | "proxy_protocol_server_port" => {
            let pp = r.proxy_protocol.as_deref();
            let end = if name.contains("server") { pp.and_then(|p| p.dst) } else { pp.and_then(|p| p.src) };
            let Some((ip, port)) = end else { return false };
            let _ = if name.ends_with("port") { write!(out, "{port}") } else { write!(out, "{ip}") };
        }
        "server_port" => {
            let _ = write!(out, "{}", r.local.port());
        }
        "server_name" => out.push_str(&r.server().primary_name),
        "scheme" => out.push_str(if r.tls.is_some() { "https" } else { "http" }),
        "https" => out.push_str(if r.tls.is_some() { "on" } else { "" }),
        // Not found on plain connections (and without SNI), as nginx.
        "ssl_protocol" | "ssl_cipher" | "ssl_session_reused" => match r.tls {
            Some(t) if name == "ssl_protocol" => out.push_str(t.protocol),
            Some(t) if name == "ssl_cipher" => out.push_str(t.cipher),
            Some(t) => out.push(if t.reused { 'r' } else { '.' }),
            None => return false,
        },
        "ssl_server_name" if r.ssl_server_name.is_empty() => return false,
        "ssl_server_name" => out.push_str(&r.ssl_server_name),
        "status" => {
            let _ = write!(out, "{:03}", super::request::wire_status(if r.status == 0 { 0 } else { r.status }));
        }
        "body_bytes_sent" => {
            let _ = write!(out, "{}", r.body_bytes);
        }
        "bytes_sent" => {
            let _ = write!(out, "{}", r.body_bytes + r.head_bytes);
        }
        "request_length" => {
            let _ = write!(out, "{}", r.head_len as u64 + r.body_received);
        }
        "request_time" => {
            let t = r.start.elapsed();
            let _ = write!(out, "{}.{:03}", t.as_secs(), t.subsec_millis());
        }
        "msec" => {
            let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            let _ = write!(out, "{}.{:03}", t.as_secs(), t.subsec_millis());
        }
        "time_local" => format_local(SystemTime::now(), false, out),
        "time_iso8601" => format_local(SystemTime::now(), true, out),
        // The user name of Basic credentials, whether or not they are
        // valid (nginx's).
        "remote_user" => {
            use base64::Engine;
            let Some(v) = r.header_in("authorization") else { return false };
            let Some((scheme, cred)) = v.trim().split_once(' ') else { return false };
            if !scheme.eq_ignore_ascii_case("basic") {
                return false;
            }
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(cred.trim()) else { return false };
            let user = raw.split(|&b| b == b':').next().unwrap_or(&[]);
            out.push_str(&String::from_utf8_lossy(user));
        }
        "pipe" => out.push(if r.pipelined { 'p' } else { '.' }),
        "limit_rate" => {
            let _ = write!(out, "{}", r.limit_rate().0);
        }
        // 32 hex digits, random, the same for the whole request.
        "request_id" => {
            let id = r.request_id.get().unwrap_or_else(|| {
                let id = crate::sys::random_u128();
                r.request_id.set(Some(id));
                id
            });
            let _ = write!(out, "{id:032x}");
        }
        "content_length" => match r.header_in("content-length") {
            Some(v) => out.push_str(v),
            // A chunked body once read: its length, as nginx's.
            None if r.body_read => {
                let _ = write!(out, "{}", r.body_received);
            }
            None => return false,
        },
        "content_type" => match r.header_in("content-type") {
            Some(v) => out.push_str(v),
            None => return false,
        },
        "document_root" => r.document_root(out),
        "realpath_root" => {
            let mut root = String::new();
            r.document_root(&mut root);
            match std::fs::canonicalize(&root) {
                Ok(p) => out.push_str(&p.to_string_lossy()),
                Err(_) => return false,
            }
        }
        "request_filename" => r.map_to_path(&r.uri, out),
        "connection" => {
            let _ = write!(out, "{}", r.conn_serial);
        }
        "connection_requests" => {
            let _ = write!(out, "{}", r.conn_requests);
        }
        "pid" => {
            let _ = write!(out, "{}", std::process::id());
        }
        "nginx_version" => out.push_str(env!("CARGO_PKG_VERSION")),
        // As nginx: the body when it is in memory; in a file, its path.
        "request_body" => {
            if r.body_state != super::request::BodyIn::Done || r.body_in.is_empty() || r.body_file.is_some() {
                return false;
            }
            out.push_str(&String::from_utf8_lossy(&r.body_in));
        }
        "request_body_file" => match &r.body_file {
            Some(f) => out.push_str(&f.path),
            None => return false,
        },
        _ => {
            if let Some(h) = name.strip_prefix("http_") {
                // Several lines of one header are joined, as nginx does
                // (1.23): "; " for Cookie, ", " for the others.
                let sep = if h == "cookie" { "; " } else { ", " };
                return join(r.headers_in.iter().filter(|(k, _)| header_matches(k, h)).map(|(_, v)| v.as_str()), sep, out);
            }
            if let Some(h) = name.strip_prefix("sent_http_") {
                if h == "content_length" {
                    if let Some(n) = r.content_length {
                        let _ = write!(out, "{n}");
                        return true;
                    }
                }
                if h == "connection" {
                    out.push_str(if r.must_close || !r.keepalive { "close" } else { "keep-alive" });
                    return true;
                }
                return join(r.headers_out.iter().filter(|(k, _)| header_matches(k, h)).map(|(_, v)| v.as_str()), ", ", out);
            }
            if let Some(a) = name.strip_prefix("arg_") {
                for pair in r.args.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if k.eq_ignore_ascii_case(a) {
                        out.push_str(v);
                        return true;
                    }
                }
                return false;
            }
            if let Some(t) = name.strip_prefix("proxy_protocol_tlv_") {
                return match r.proxy_protocol.as_deref().and_then(|pp| pp.tlv(t)) {
                    Some(v) => {
                        out.push_str(&String::from_utf8_lossy(&v));
                        true
                    }
                    None => false,
                };
            }
            if let Some(c) = name.strip_prefix("cookie_") {
                for h in r.headers_in.iter().filter(|(k, _)| k.eq_ignore_ascii_case("cookie")) {
                    for pair in h.1.split(';') {
                        let (k, v) = pair.trim().split_once('=').unwrap_or((pair.trim(), ""));
                        if k == c {
                            out.push_str(v);
                            return true;
                        }
                    }
                }
                return false;
            }
            return false;
        }
    }
    true
}

/// Expands `$name` and `${name}` in `t` with the request's variables
/// (unset ones expand to nothing).
pub fn expand(r: &Req, t: &str) -> String {
    if !t.contains('$') {
        return t.to_string();
    }
    let mut out = String::with_capacity(t.len() + 32);
    plugin_api::template::walk(t, |seg| match seg {
        plugin_api::template::Seg::Lit(s) => out.push_str(s),
        plugin_api::template::Seg::Var(v) => {
            get(r, v, &mut out);
        }
    });
    out
}
