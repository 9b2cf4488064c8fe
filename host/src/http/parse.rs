//! Request-head validation, URI normalisation and the chunked decoder —
//! the parts of HTTP/1.1 parsing where nginx is stricter than httparse.
//!
//! httparse tokenises the head; [`check_head`] then refuses what nginx
//! refuses (smuggling vectors, missing or duplicate Host, bad methods),
//! and [`normalize`] turns the request target into `$uri` the way
//! `ngx_http_parse_complex_uri` does: `%XX` decoded, `//` merged, `/./`
//! and `/../` resolved without ever climbing above `/`.

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the head says, beyond method/target/version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadInfo {
    /// Body framing.
    pub framing: Framing,
    /// The client wants the connection kept.
    pub keepalive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Why a head is refused: the status and the error-log reason.
pub type Refusal = (u16, &'static str);

fn valid_method(m: &str) -> bool {
    !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
}

/// Validates a host name as nginx's `ngx_http_validate_host`: strips the
/// port and a trailing dot, lowercases, refuses `/`, `\0`, `..` and
/// leading dots. Appends the name to `out`; false (nothing appended) =
/// invalid.
pub fn validate_host(h: &[u8], out: &mut String) -> bool {
    let mut in_bracket = false;
    let mut prev_dot = false;
    let mut end = h.len();
    for (i, &b) in h.iter().enumerate() {
        match b {
            b'.' => {
                if prev_dot || i == 0 {
                    return false;
                }
                prev_dot = true;
                continue;
            }
            b':' if !in_bracket => {
                if !h[i + 1..].iter().all(u8::is_ascii_digit) {
                    return false;
                }
                end = i;
                break;
            }
            b'[' if i == 0 => in_bracket = true,
            b']' => in_bracket = false,
            b'/' | b'\\' | 0 | b' ' | b'\t' => return false,
            _ if b < 0x20 || b == 0x7f => return false,
            _ => {}
        }
        prev_dot = false;
    }
    let mut name = &h[..end];
    if let [rest @ .., b'.'] = name {
        name = rest;
    }
    let start = out.len();
    out.push_str(&text(name));
    out[start..].make_ascii_lowercase();
    true
}

/// Bytes from the wire as text: borrowed when they are UTF-8 (checked with
/// `from_utf8`, cheaper than `from_utf8_lossy`'s chunk scan on this hot
/// path), with U+FFFD for invalid sequences otherwise.
pub fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

/// Checks a parsed head as nginx would: returns what the rest of the
/// request needs, or the status to refuse it with.
/// The host name goes to `host` (lowercase, no port; left empty when
/// there is none).
pub fn check_head(req: &httparse::Request<'_, '_>, underscores: bool, host_out: &mut String) -> Result<HeadInfo, Refusal> {
    let method = req.method.unwrap_or("");
    if !valid_method(method) {
        return Err((400, "client sent invalid method"));
    }
    let minor = req.version.unwrap_or(1);
    let mut info = HeadInfo { framing: Framing::None, keepalive: minor == 1, expect_continue: false };
    let (mut cl, mut te, mut host): (Option<u64>, Option<bool>, Option<&[u8]>) = (None, None, None);
    for h in req.headers.iter() {
        let name = h.name;
        if !underscores && name.contains('_') {
            // nginx ignores such headers (ignore_invalid_headers on).
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err((400, "client sent duplicate host header"));
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if cl.is_some() {
                return Err((400, "client sent duplicate header line: \"Content-Length\""));
            }
            let v = std::str::from_utf8(h.value).map_err(|_| (400, "client sent invalid \"Content-Length\" header"))?;
            let v = v.trim_matches(|c| c == ' ' || c == '\t');
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 18 {
                return Err((400, "client sent invalid \"Content-Length\" header"));
            }
            cl = Some(v.parse().map_err(|_| (400, "client sent invalid \"Content-Length\" header"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Err((400, "client sent duplicate header line: \"Transfer-Encoding\""));
            }
            let v = String::from_utf8_lossy(h.value);
            te = Some(v.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            let tokens = || h.value.split(|&b| b == b',').map(|t| t.trim_ascii());
            if tokens().any(|t| t.eq_ignore_ascii_case(b"close")) {
                info.keepalive = false;
            } else if tokens().any(|t| t.eq_ignore_ascii_case(b"keep-alive")) {
                info.keepalive = true;
            }
        } else if name.eq_ignore_ascii_case("expect") {
            info.expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let target = req.path.unwrap_or("");
    let abs_host = absolute_host(target);
    match (abs_host, host) {
        (Some(a), _) if !validate_host(a.as_bytes(), host_out) => return Err((400, "client sent invalid host in request line")),
        (None, Some(h)) if !validate_host(h, host_out) => return Err((400, "client sent invalid host header")),
        (Some(_), _) | (None, Some(_)) => {}
        (None, None) if minor == 1 => return Err((400, "client sent HTTP/1.1 request without \"Host\" header")),
        (None, None) => {}
    }
    match (te, cl) {
        (Some(_), Some(_)) => return Err((400, "client sent \"Content-Length\" and \"Transfer-Encoding\" headers at the same time")),
        (Some(_), None) if minor == 0 => return Err((400, "client sent HTTP/1.0 request with \"Transfer-Encoding\" header")),
        (Some(true), None) => info.framing = Framing::Chunked,
        (Some(false), None) => return Err((501, "client sent unknown \"Transfer-Encoding\"")),
        (None, Some(0)) | (None, None) => {}
        (None, Some(n)) => info.framing = Framing::Length(n),
    }
    Ok(info)
}

/// The host part of an absolute-form target (`http://host:port/path`).
fn absolute_host(target: &str) -> Option<&str> {
    let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The origin-form part of a target: `/path?query` (absolute form reduced).
pub fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
    Some(rest.find(['/', '?']).map_or("/", |i| &rest[i..]))
}

pub use plugin_api::http::normalize;


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let host = |h: &[u8]| {
            let mut out = String::new();
            validate_host(h, &mut out).then_some(out)
        };
        assert_eq!(host(b"Example.COM:8080").as_deref(), Some("example.com"));
        assert_eq!(host(b"example.com.").as_deref(), Some("example.com"));
        assert_eq!(host(b"example.com.:80").as_deref(), Some("example.com"));
        assert_eq!(host(b"[::1]:80").as_deref(), Some("[::1]"));
        for bad in [&b"a/b"[..], b"..", b"a..b", b".a", b"a:b", b"a\0"] {
            assert!(host(bad).is_none(), "{:?}", bad);
        }
    }
}
