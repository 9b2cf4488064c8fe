//! memcached (nginx's memcached module) on the proxy's upstream
//! machinery: `memcached_pass` asks the server for `$memcached_key`
//! (`get <key>`, the key escaped as nginx escapes it) and answers with
//! the value: 200, the type of the URI (`types`, `default_type`),
//! `Content-Encoding: gzip` when the item's flags have
//! `memcached_gzip_flag`; a key not found is a 404 from the server's own
//! error pages (or the next server, `memcached_next_upstream
//! not_found`). Connections are not kept.

use super::cgi::Proto;
use super::{set_opt, Conf, ANY};
use plugin_api::{sys, DirectiveSpec, Request};

/// What the first line of an answer says.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// `VALUE <key> <flags> <bytes>`: the item follows.
    Value { flags: u32, len: u64 },
    /// `END`: no such key.
    End,
    /// Anything else (`SERVER_ERROR …`, another key).
    Invalid,
}

/// The key as sent: spaces, '%' and control characters escaped, as
/// nginx's NGX_ESCAPE_MEMCACHED.
pub fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        if b <= b' ' || b == b'%' || b == 0x7f {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

/// The request: `get <key>\r\n`. Err when `$memcached_key` is not set.
pub fn build(req: &Request<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    let key = req.var_bytes("memcached_key").filter(|k| !k.is_empty()).ok_or("the \"$memcached_key\" variable is not set")?;
    out.clear();
    out.extend_from_slice(b"get ");
    escape_key(key, out);
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Reads an answer's first line (without its line end); `key` is the
/// key as sent.
pub fn parse_line(line: &[u8], key: &[u8]) -> Line {
    if line == b"END" {
        return Line::End;
    }
    let Some(rest) = line.strip_prefix(b"VALUE ") else { return Line::Invalid };
    let mut words = rest.split(|&b| b == b' ');
    let (Some(k), Some(flags), Some(len)) = (words.next(), words.next(), words.next()) else { return Line::Invalid };
    let num = |w: &[u8]| std::str::from_utf8(w).ok().and_then(|s| s.parse::<u64>().ok());
    match (k == key, num(flags), num(len)) {
        (true, Some(flags), Some(len)) if flags <= u64::from(u32::MAX) => Line::Value { flags: flags as u32, len },
        _ => Line::Invalid,
    }
}

/// The directives only memcached has (its pass and twins are in
/// [`super::cgi`]).
pub fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::new("memcached_pass", sys::CTX_LOCATION | sys::CTX_IF, 1, 1, |c, a, cx| super::cgi::parse_pass(c, a, cx, Proto::Memcached)),
        DirectiveSpec::new("memcached_gzip_flag", ANY, 1, 1, |c, a, _| {
            let f = a[0].parse::<u32>().map_err(|_| format!("invalid value \"{}\"", a[0]))?;
            set_opt(&mut c.memcached_gzip_flag, f, "memcached_gzip_flag")
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_keys() {
        assert_eq!(parse_line(b"VALUE /a%20b 3 8", b"/a%20b"), Line::Value { flags: 3, len: 8 });
        assert_eq!(parse_line(b"VALUE /a 0 8 77", b"/a"), Line::Value { flags: 0, len: 8 });
        assert_eq!(parse_line(b"END", b"/a"), Line::End);
        assert_eq!(parse_line(b"VALUE /b 0 8", b"/a"), Line::Invalid);
        assert_eq!(parse_line(b"SERVER_ERROR out of memory", b"/a"), Line::Invalid);
        let mut k = Vec::new();
        escape_key(b"/a b%\x01", &mut k);
        assert_eq!(k, b"/a%20b%25%01");
    }
}
