//! HTTP/1.x helpers shared by the host and plugins that speak HTTP to
//! upstreams: URI normalisation and an incremental chunked-body decoder.

/// The value of a hex digit.
pub fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// nginx's `msie6` User-Agent test (keepalive_disable, gzip_disable): MSIE
/// 4 or 5, or MSIE 6 without SV1.
pub fn is_msie6(ua: &str) -> bool {
    let Some(i) = ua.find("MSIE ") else { return false };
    let b = ua.as_bytes();
    match (b.get(i + 5), b.get(i + 6)) {
        (Some(b'4' | b'5'), Some(b'.')) => true,
        (Some(b'6'), Some(b'.')) => !ua[i..].contains("SV1"),
        _ => false,
    }
}

/// True when an Accept-Encoding value takes gzip, as nginx reads it: a
/// `gzip` token with no `q`, or a `q` above 0 (`q=0`, `q=0.000` refuse).
pub fn accepts_gzip(v: &str) -> bool {
    v.split(',').any(|item| {
        let mut parts = item.split(';');
        if !parts.next().is_some_and(|t| t.trim().eq_ignore_ascii_case("gzip")) {
            return false;
        }
        for p in parts {
            if let Some(q) = p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")) {
                return q.trim().parse::<f32>().is_ok_and(|q| q > 0.0);
            }
        }
        true
    })
}

/// A PCRE pattern from an nginx configuration, in the regex crate's
/// dialect: `\Q…\E` (a literal run, up to `\E` or the end) is spelled
/// out with escapes. Other syntax passes as it is.
pub fn pcre_compat(src: &str) -> std::borrow::Cow<'_, str> {
    if !src.contains("\\Q") {
        return std::borrow::Cow::Borrowed(src);
    }
    let mut out = String::with_capacity(src.len() + 8);
    let mut rest = src;
    while let Some(i) = find_unescaped(rest, "\\Q") {
        out.push_str(&rest[..i]);
        let lit = &rest[i + 2..];
        let (lit, after) = match lit.find("\\E") {
            Some(j) => (&lit[..j], &lit[j + 2..]),
            None => (lit, ""),
        };
        for c in lit.chars() {
            if "\\.+*?()|[]{}^$".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        rest = after;
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// Where `pat` (a backslash escape) starts in `s`, not itself escaped.
fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if s[i..].starts_with(pat) {
                return Some(i);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    None
}

/// A Range header against a body of known size.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// Not a byte range request we serve: send the whole body.
    Ignore,
    /// 416.
    Unsatisfiable,
    /// Inclusive (start, end) pairs.
    List(Vec<(u64, u64)>),
}

/// A `*_types` directive's MIME types (`sub_filter_types`,
/// `charset_types`): a list, or `*` for any; unset means the module's
/// default list.
#[derive(Clone, Debug, Default)]
pub enum Types {
    /// Not set in this block or above.
    #[default]
    Unset,
    /// `*`.
    Any,
    /// The types, lowercase.
    List(std::rc::Rc<Vec<String>>),
}

impl Types {
    /// From the directive's arguments.
    pub fn parse(args: &[&str]) -> Types {
        if args.contains(&"*") {
            Types::Any
        } else {
            Types::List(std::rc::Rc::new(args.iter().map(|t| t.to_ascii_lowercase()).collect()))
        }
    }

    /// Inherits the enclosing block's when unset here.
    pub fn merge(&mut self, parent: &Types) {
        if matches!(self, Types::Unset) {
            *self = parent.clone();
        }
    }

    /// Whether a response of type `base` (without parameters) is
    /// covered; `default` when unset.
    pub fn covers(&self, base: &str, default: &[&str]) -> bool {
        match self {
            Types::Any => true,
            Types::List(l) => l.iter().any(|t| t.eq_ignore_ascii_case(base)),
            Types::Unset => default.iter().any(|t| t.eq_ignore_ascii_case(base)),
        }
    }
}

/// Parses `bytes=a-b,c-,-n` against `size`: inclusive (start, end) pairs.
pub fn parse_ranges(spec: &str, size: u64) -> Ranges {
    let Some(list) = spec.trim().strip_prefix("bytes=") else { return Ranges::Ignore };
    let mut out = Vec::new();
    let mut total = 0u64;
    for part in list.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((a, b)) = part.split_once('-') else { return Ranges::Ignore };
        let (a, b) = (a.trim(), b.trim());
        let num = |s: &str| s.parse::<u64>().ok().filter(|_| s.bytes().all(|c| c.is_ascii_digit()));
        let (start, end) = if a.is_empty() {
            let Some(n) = num(b) else { return Ranges::Ignore };
            if n == 0 {
                continue;
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        } else {
            let Some(s) = num(a) else { return Ranges::Ignore };
            let e = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match num(b) {
                    Some(e) if e >= s => e.min(size.saturating_sub(1)),
                    _ => return Ranges::Ignore,
                }
            };
            if s >= size {
                continue;
            }
            (s, e)
        };
        if size == 0 {
            continue;
        }
        total += end - start + 1;
        out.push((start, end));
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    if total > size && out.len() > 1 {
        // nginx: overlapping ranges larger than the file → the whole file.
        return Ranges::Ignore;
    }
    Ranges::List(out)
}

/// Escapes a decoded path for a request line or a Location header, as
/// nginx's NGX_ESCAPE_URI: controls, space, non-ASCII, `"`, `#`, `%`,
/// `<`, `>`, `?`, `\`, `^`, `` ` ``, `{`, `|` and `}` become `%XX`.
pub fn escape_uri(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}') {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

/// Decodes `%XX` and normalises a path into `out`: merges `//` (when
/// `merge`), resolves `.` and `..` segments. `Err` when the path is not
/// absolute, climbs above the root, has a bad escape or a decoded NUL.
pub fn normalize(path: &str, merge: bool, out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    let p = path.as_bytes();
    if p.first() != Some(&b'/') {
        return Err("client sent invalid request");
    }
    let mut i = 0;
    while i < p.len() {
        let mut b = p[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (p.get(i + 1).copied().and_then(hex_digit), p.get(i + 2).copied().and_then(hex_digit)) else {
                return Err("client sent invalid escape in URI");
            };
            b = h << 4 | l;
            i += 2;
            if b == 0 {
                return Err("client sent invalid \"%00\" in URI");
            }
        }
        i += 1;
        out.push(b);
        if b != b'/' {
            continue;
        }
        // Just pushed a '/': fold the segment before it if it was "." or "..".
        let n = out.len();
        if merge && n >= 2 && out[n - 2] == b'/' {
            out.pop();
        } else if n >= 3 && &out[n - 3..] == b"/./" {
            out.truncate(n - 2);
        } else if n >= 4 && &out[n - 4..] == b"/../" {
            if n == 4 {
                return Err("client sent invalid request");
            }
            out.truncate(n - 3);
            let cut = out[..out.len() - 1].iter().rposition(|&c| c == b'/').map_or(0, |k| k + 1);
            out.truncate(cut);
        }
    }
    // A trailing "/." or "/.." segment.
    let n = out.len();
    if n >= 2 && &out[n - 2..] == b"/." {
        out.pop();
    } else if n >= 3 && &out[n - 3..] == b"/.." {
        if n == 3 {
            return Err("client sent invalid request");
        }
        out.truncate(n - 2);
        let cut = out[..out.len() - 1].iter().rposition(|&c| c == b'/').map_or(0, |k| k + 1);
        out.truncate(cut);
    }
    Ok(())
}

/// Decodes a chunked body incrementally.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: CState,
    size: u64,
    digits: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLine,
    TrailerLf,
    LastLf,
    Done,
}

/// One step of chunked decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Some input consumed, part of it body data.
    Progress {
        /// Input bytes consumed.
        used: usize,
        /// The body data among them (relative to the input).
        data: std::ops::Range<usize>,
    },
    /// The terminating chunk and trailers were read.
    Done {
        /// Input bytes consumed.
        used: usize,
    },
}

impl Chunked {
    /// True once the last chunk and trailers were read.
    pub fn done(&self) -> bool {
        self.state == CState::Done
    }

    /// Consumes input up to the next piece of data (or the end).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, &'static str> {
        use CState::*;
        let bad = "invalid chunked body";
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Size => match hex_digit(b) {
                    Some(v) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad);
                        }
                        self.size = self.size << 4 | v as u64;
                    }
                    None if self.digits == 0 => return Err(bad),
                    None if b == b'\r' => self.state = SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = Ext,
                    None => return Err(bad),
                },
                Ext => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' | 0 => return Err(bad),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 { Trailer } else { Data };
                }
                Data => {
                    let n = (self.size as usize).min(input.len() - i);
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    return Ok(Step::Progress { used: i + n, data: i..i + n });
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(bad);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = Size;
                }
                Trailer => match b {
                    b'\r' => self.state = LastLf,
                    _ => self.state = TrailerLine,
                },
                TrailerLine => {
                    if b == b'\r' {
                        self.state = TrailerLf;
                    }
                }
                TrailerLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = Trailer;
                }
                LastLf => {
                    if b != b'\n' {
                        return Err(bad);
                    }
                    self.state = Done;
                    return Ok(Step::Done { used: i + 1 });
                }
                Done => return Ok(Step::Done { used: i }),
            }
            i += 1;
        }
        if self.state == Done {
            return Ok(Step::Done { used: i });
        }
        Ok(Step::Progress { used: i, data: i..i })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcre_literal_runs() {
        assert_eq!(pcre_compat("^(?P<n>[a-z]+)\\Q.example.com\\E$"), "^(?P<n>[a-z]+)\\.example\\.com$");
        assert_eq!(pcre_compat("a\\Q(*)"), "a\\(\\*\\)");
        assert_eq!(pcre_compat("\\\\Q"), "\\\\Q", "an escaped backslash before Q");
        assert_eq!(pcre_compat("plain.*"), "plain.*");
    }

    #[test]
    fn accept_encoding_as_nginx() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, gzip;q=0.5"));
        assert!(accepts_gzip("br, GZIP"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("gzip; q=0.000"));
        assert!(!accepts_gzip("deflate, br"));
        assert!(!accepts_gzip("x-gzipx"));
        assert!(!accepts_gzip(""));
    }

    #[test]
    fn uri_escaping_is_nginx_s() {
        let mut out = Vec::new();
        escape_uri("/a b\"#%<>?\\^`{|}~é/", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "/a%20b%22%23%25%3C%3E%3F%5C%5E%60%7B%7C%7D~%C3%A9/");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_ranges("bytes=0-4", 10), Ranges::List(vec![(0, 4)]));
        assert_eq!(parse_ranges("bytes=5-", 10), Ranges::List(vec![(5, 9)]));
        assert_eq!(parse_ranges("bytes=-3", 10), Ranges::List(vec![(7, 9)]));
        assert_eq!(parse_ranges("bytes=0-100", 10), Ranges::List(vec![(0, 9)]));
        assert_eq!(parse_ranges("bytes=0-1,4-5", 10), Ranges::List(vec![(0, 1), (4, 5)]));
        assert_eq!(parse_ranges("bytes=20-30", 10), Ranges::Unsatisfiable);
        assert_eq!(parse_ranges("bytes=5-2", 10), Ranges::Ignore);
        assert_eq!(parse_ranges("items=0-1", 10), Ranges::Ignore);
        assert_eq!(parse_ranges("bytes=0-9,0-9", 10), Ranges::Ignore);
    }

    #[test]
    fn msie6() {
        assert!(is_msie6("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"));
        assert!(is_msie6("Mozilla/4.0 (compatible; MSIE 5.5; Windows 98)"));
        assert!(!is_msie6("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)"));
        assert!(!is_msie6("Mozilla/5.0 (compatible; MSIE 9.0)"));
        assert!(!is_msie6("curl/8"));
    }

    fn norm(p: &str) -> Result<String, &'static str> {
        let mut v = Vec::new();
        normalize(p, true, &mut v).map(|()| String::from_utf8(v).unwrap())
    }

    #[test]
    fn uri_normalisation() {
        for (i, o) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%61%2Fb", "/a/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/b/../../c", "/c"),
        ] {
            assert_eq!(norm(i).as_deref(), Ok(o), "{i}");
        }
        for bad in ["/..", "/../x", "/a/../../x", "/%zz", "/%2", "/a%00b", "x", "/%2e%2e/"] {
            assert!(norm(bad).is_err(), "{bad}");
        }
    }


    fn dechunk(input: &[u8]) -> Result<(Vec<u8>, bool), &'static str> {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match c.step(&input[pos..])? {
                Step::Progress { used, data } => {
                    out.extend_from_slice(&input[pos..][data]);
                    pos += used;
                    if used == 0 {
                        return Ok((out, false));
                    }
                }
                Step::Done { .. } => return Ok((out, true)),
            }
        }
    }

    #[test]
    fn chunked() {
        assert_eq!(dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"), Ok((b"hello world".to_vec(), true)));
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"), Ok((b"abc".to_vec(), true)));
        assert_eq!(dechunk(b"3\r\nab"), Ok((b"ab".to_vec(), false)));
        for bad in [&b"x\r\n"[..], b"3\r\nabcX", b"3\nabc", b"ffffffffffffffffff\r\n", b"-1\r\n"] {
            assert!(dechunk(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

}
