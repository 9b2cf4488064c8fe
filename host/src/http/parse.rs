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
    /// Header lines to drop (bit i: line i): invalid names under
    /// `ignore_invalid_headers`, as nginx ignores them.
    pub ignored: u128,
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
                // (Nor right after an IPv6 literal's ']', as nginx 1.29.4.)
                if prev_dot || i == 0 || h[i - 1] == b']' {
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
    if in_bracket {
        // An IPv6 literal without its ']'.
        return false;
    }
    let mut name = &h[..end];
    if let [rest @ .., b'.'] = name {
        name = rest;
    }
    if name.is_empty() {
        // An empty host is invalid, as nginx's.
        return false;
    }
    let start = out.len();
    out.push_str(&text(name));
    out[start..].make_ascii_lowercase();
    true
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Non-zero when a byte of `w` is below `n` (n <= 128), as in "Bit
/// Twiddling Hacks"; exact about whether there is one.
#[inline(always)]
fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(LO * u64::from(n)) & !w & HI
}

/// Non-zero when a byte of `w` equals `b`.
#[inline(always)]
fn equal(w: u64, b: u8) -> u64 {
    below(w ^ (LO * u64::from(b)), 1)
}

/// Up to eight bytes of `b` as one little-endian word; a shorter `b`
/// fills it by reading its pieces overlapping, and the bytes it cannot
/// fill are `pad`. For "every byte is…" checks only: bytes may repeat.
#[inline(always)]
fn word(b: &[u8], pad: u64) -> u64 {
    let n = b.len();
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let u32_at = |i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    match n {
        8.. => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        4..=7 => u32_at(0) | (u32_at(n - 4) << 32),
        2..=3 => u16_at(0) | (u16_at(n - 2) << 16) | (pad & !0xffff_ffff),
        1 => u64::from(b[0]) | (pad & !0xff),
        _ => pad,
    }
}

/// True when `bad` is zero for every eight bytes of `b` (read a word at a
/// time, the last word overlapping the one before); `pad` is a byte
/// `bad` accepts.
#[inline(always)]
fn all_words(b: &[u8], pad: u8, bad: impl Fn(u64) -> u64) -> bool {
    let pad = LO * u64::from(pad);
    let mut acc = 0;
    let mut i = 0;
    while i + 8 <= b.len() {
        acc |= bad(word(&b[i..i + 8], pad));
        i += 8;
    }
    if i < b.len() {
        acc |= bad(word(if b.len() >= 8 { &b[b.len() - 8..] } else { b }, pad));
    }
    acc == 0
}

/// True when every byte is printable ASCII (0x20..=0x7e): text that is
/// UTF-8 and safe in a header line as it is.
pub fn plain(b: &[u8]) -> bool {
    all_words(b, b'a', |w| (w & HI) | below(w, 0x20) | equal(w, 0x7f))
}

/// `b` as str when it is [`plain`], without a second UTF-8 scan.
#[allow(unsafe_code)]
pub fn plain_str(b: &[u8]) -> Option<&str> {
    // SAFETY: plain bytes are ASCII, hence UTF-8.
    plain(b).then(|| unsafe { std::str::from_utf8_unchecked(b) })
}

/// True for a header name nginx would send: visible ASCII (0x21..=0x7e)
/// other than ':', at least one byte.
pub fn header_name(b: &[u8]) -> bool {
    !b.is_empty() && all_words(b, b'a', |w| (w & HI) | below(w, 0x21) | equal(w, 0x7f) | equal(w, b':'))
}

/// Bytes from the wire as text: borrowed when they are UTF-8 (checked with
/// `from_utf8`, cheaper than `from_utf8_lossy`'s chunk scan on this hot
/// path), with U+FFFD for invalid sequences otherwise.
pub fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Some(t) = plain_str(b) {
        return std::borrow::Cow::Borrowed(t);
    }
    match std::str::from_utf8(b) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(b),
    }
}

const NAME_OK: u8 = 1;
const NAME_UNDERSCORE: u8 = 2;

/// Request header name bytes nginx accepts: letters, digits and '-'
/// (NAME_OK); '_' only with underscores_in_headers.
const NAME_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' {
            t[b] = NAME_OK;
        }
        b += 1;
    }
    t[b'_' as usize] = NAME_UNDERSCORE;
    t
};

/// Checks a parsed head as nginx would: returns what the rest of the
/// request needs, or the status to refuse it with.
/// The host name goes to `host` (lowercase, no port; left empty when
/// there is none).
pub fn check_head(req: &httparse::Request<'_, '_>, underscores: bool, ignore_invalid: bool, host_out: &mut String) -> Result<HeadInfo, Refusal> {
    let method = req.method.unwrap_or("");
    if !valid_method(method) {
        return Err((400, "client sent invalid method"));
    }
    let minor = req.version.unwrap_or(1);
    let mut info = HeadInfo { framing: Framing::None, keepalive: minor == 1, expect_continue: false, ignored: 0 };
    let (mut cl, mut te, mut host): (Option<u64>, Option<bool>, Option<&[u8]>) = (None, None, None);
    for (i, h) in req.headers.iter().enumerate() {
        let name = h.name;
        // nginx's valid names: letters, digits, '-' (and '_' with
        // underscores_in_headers); others are ignored unless
        // ignore_invalid_headers is off.
        let mask = if underscores { NAME_OK | NAME_UNDERSCORE } else { NAME_OK };
        if ignore_invalid && !name.bytes().all(|b| NAME_CLASS[usize::from(b)] & mask != 0) {
            if i < 128 {
                info.ignored |= 1 << i;
            }
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
    if method == "TRACE" {
        // As nginx: never echoed back.
        return Err((405, "client sent TRACE method"));
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
        for bad in [&b"a/b"[..], b"..", b"a..b", b".a", b"a:b", b"a\0", b"", b":80", b"[::1].", b"[::1"] {
            assert!(host(bad).is_none(), "{:?}", bad);
        }
    }

    /// The word-at-a-time checks agree with a byte-by-byte reading for
    /// every byte value at every position of strings up to 17 bytes long.
    #[test]
    fn word_checks_match_bytewise() {
        let plain_ref = |b: &[u8]| b.iter().all(|&c| (0x20..0x7f).contains(&c));
        let name_ref = |b: &[u8]| !b.is_empty() && b.iter().all(|&c| c.is_ascii_graphic() && c != b':');
        for len in 0..=17 {
            for pos in 0..len.max(1) {
                for c in 0..=255u8 {
                    let mut b = vec![b'x'; len];
                    if len > 0 {
                        b[pos] = c;
                    }
                    assert_eq!(plain(&b), plain_ref(&b), "plain {b:?}");
                    assert_eq!(header_name(&b), name_ref(&b), "name {b:?}");
                    assert_eq!(plain_str(&b).is_some(), plain_ref(&b));
                }
            }
        }
        assert_eq!(text(b"caf\xc3\xa9"), "caf\u{e9}");
        assert_eq!(text(b"a\xffb"), "a\u{fffd}b");
    }
}
