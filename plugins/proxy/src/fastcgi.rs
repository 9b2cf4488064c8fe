//! FastCGI (nginx's fastcgi module) on the proxy's upstream machinery:
//! `fastcgi_pass` picks peers, connects, retries, buffers and streams
//! exactly as `proxy_pass` does; what differs is the wire. The request
//! goes out as FastCGI records (BEGIN_REQUEST as a responder, the
//! `fastcgi_param`s and the client's headers as `HTTP_*` PARAMS, the body
//! as STDIN), and the answer's STDOUT records are taken out of their
//! framing as they arrive, so the proxy reads a CGI response: headers
//! (`Status:` gives the status; a `Location:` without one, 302) and a
//! body that ends with END_REQUEST. STDERR records go to the error log,
//! as nginx logs them. With `fastcgi_keep_conn on` (and `keepalive` in
//! the upstream group) the application is asked to keep the connection
//! (FCGI_KEEP_CONN), and a connection whose response ended cleanly goes
//! back to the group's pool; otherwise the application closes it.

use super::cgi::{self, Proto};
use super::{set_opt, Conf, ANY};
use plugin_api::{sys, ConfCx, DirectiveSpec, Piece, Request};
use std::rc::Rc;

const VERSION: u8 = 1;
const BEGIN_REQUEST: u8 = 1;
const END_REQUEST: u8 = 3;
const PARAMS: u8 = 4;
pub const STDIN: u8 = 5;
const STDOUT: u8 = 6;
const STDERR: u8 = 7;
/// The FastCGI responder role.
const RESPONDER: u8 = 1;
/// One request per connection: its id is always 1.
const REQUEST_ID: u16 = 1;
/// Content per record (the format allows 65535).
pub const RECORD_MAX: usize = 32768;

/// A record header for `len` bytes of `kind`.
pub fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    let id = REQUEST_ID.to_be_bytes();
    out.extend_from_slice(&[VERSION, kind, id[0], id[1], (len >> 8) as u8, len as u8, 0, 0]);
}

/// `data` as records of `kind`, then (if `end`) the empty record that
/// closes the stream.
fn records(out: &mut Vec<u8>, kind: u8, data: &[u8], end: bool) {
    for piece in data.chunks(RECORD_MAX) {
        header(out, kind, piece.len());
        out.extend_from_slice(piece);
    }
    if end {
        header(out, kind, 0);
    }
}

/// The empty STDIN record that ends a body sent from a file.
pub fn end_of_stdin(out: &mut Vec<u8>) {
    header(out, STDIN, 0);
}

fn pair_len(out: &mut Vec<u8>, n: usize) {
    if n < 128 {
        out.push(n as u8);
    } else {
        out.extend_from_slice(&((n as u32) | 0x8000_0000).to_be_bytes());
    }
}

/// One name-value pair of the PARAMS stream.
fn pair(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    pair_len(out, name.len());
    pair_len(out, value.len());
    out.extend_from_slice(name);
    out.extend_from_slice(value);
}

/// The request as FastCGI records into `out`; a body in a file is left
/// to the caller (its STDIN records, then [`end_of_stdin`]).
pub fn build(req: &Request<'_>, conf: &Conf, out: &mut Vec<u8>) -> Option<(i32, u64, u64)> {
    out.clear();
    header(out, BEGIN_REQUEST, 8);
    // Role, flags (FCGI_KEEP_CONN, or the application closes), reserved.
    let flags = u8::from(conf.fcgi_keep.unwrap_or(false));
    out.extend_from_slice(&[0, RESPONDER, flags, 0, 0, 0, 0, 0]);
    let mut params = Vec::with_capacity(1024);
    cgi::env(req, conf, Proto::FastCgi, |name, value| pair(&mut params, name, value));
    records(out, PARAMS, &params, true);
    match req.body_piece().filter(|_| conf.pass_body.unwrap_or(true)) {
        Some(Piece::Mem(m)) => records(out, STDIN, m, true),
        Some(Piece::File { fd, pos, len }) => return Some((fd, pos, len)),
        None => records(out, STDIN, &[], true),
    }
    None
}

/// Takes the records in `raw` apart: STDOUT content is appended to
/// `out`, STDERR content is logged (Err when it holds one of `catch`,
/// nginx's fastcgi_catch_stderr); what is left is an incomplete record.
/// True once END_REQUEST has come (nothing after it is read).
pub fn decode(raw: &mut Vec<u8>, out: &mut Vec<u8>, catch: &[String], peer: &dyn Fn() -> String) -> Result<bool, String> {
    let mut at = 0;
    let mut ended = false;
    while raw.len() - at >= 8 {
        let h = &raw[at..at + 8];
        if h[0] != VERSION {
            return Err(format!("upstream sent unsupported FastCGI protocol version: {}", h[0]));
        }
        let (kind, len, pad) = (h[1], usize::from(u16::from_be_bytes([h[4], h[5]])), usize::from(h[6]));
        if raw.len() - at < 8 + len + pad {
            break;
        }
        let content = &raw[at + 8..at + 8 + len];
        match kind {
            STDOUT => out.extend_from_slice(content),
            STDERR => {
                let text = String::from_utf8_lossy(content);
                let text = text.trim_end_matches(['\r', '\n']);
                if !text.is_empty() {
                    plugin_api::log(sys::LOG_ERR, &format!("FastCGI sent in stderr: \"{text}\" while reading upstream, upstream: \"{}\"", peer()));
                }
                if catch.iter().any(|c| text.contains(c.as_str())) {
                    return Err("upstream sent a stderr line fastcgi_catch_stderr names".into());
                }
            }
            END_REQUEST => ended = true,
            _ => return Err(format!("upstream sent unexpected FastCGI record: {kind}")),
        }
        at += 8 + len + pad;
        if ended {
            at = raw.len();
            break;
        }
    }
    raw.drain(..at);
    Ok(ended)
}

/// `fastcgi_pass`'s variables.
pub fn define_variables(cx: &ConfCx<'_>) -> Result<(), String> {
    for (name, get) in VARS {
        cx.define_variable(name, *get)?;
    }
    Ok(())
}

type VarGet = fn(&mut Request<'_>) -> Option<String>;

const VARS: &[(&str, VarGet)] = &[("fastcgi_script_name", |r| script_and_path(r).map(|v| v.0)), ("fastcgi_path_info", |r| script_and_path(r).map(|v| v.1))];

/// `$fastcgi_script_name` and `$fastcgi_path_info`: the URI split by
/// `fastcgi_split_path_info` (when it matches), `fastcgi_index` added to
/// a script name that ends in '/'.
fn script_and_path(r: &mut Request<'_>) -> Option<(String, String)> {
    let conf = r.conf::<Conf>()?;
    let uri = r.uri().to_string();
    let (mut script, path) = match conf.fcgi_split.as_ref().and_then(|re| re.captures(&uri)) {
        Some(caps) => (caps.get(1).map_or("", |m| m.as_str()).to_string(), caps.get(2).map_or("", |m| m.as_str()).to_string()),
        None => (uri, String::new()),
    };
    if let (true, Some(index)) = (script.ends_with('/'), conf.fcgi_index.as_deref()) {
        script.push_str(index);
    }
    Some((script, path))
}

/// The directives only FastCGI has.
pub fn directives() -> Vec<DirectiveSpec<Conf>> {
    vec![
        DirectiveSpec::new("fastcgi_catch_stderr", ANY, 1, 1, |c, a, _| {
            let list = c.fcgi_catch.get_or_insert_with(|| Rc::new(Vec::new()));
            Rc::get_mut(list).ok_or("the fastcgi_catch_stderr list is shared")?.push(a[0].to_string());
            Ok(())
        }),
        DirectiveSpec::new("fastcgi_index", ANY, 1, 1, |c, a, _| set_opt(&mut c.fcgi_index, a[0].to_string(), "fastcgi_index")),
        DirectiveSpec::new("fastcgi_split_path_info", LOC_ONLY, 1, 1, |c, a, _| {
            let re = regex::Regex::new(&plugin_api::http::pcre_compat(a[0])).map_err(|e| format!("regex \"{}\" is invalid: {}", a[0], e.to_string().lines().last().unwrap_or("")))?;
            if re.captures_len() < 3 {
                return Err(format!("pattern \"{}\" must have 2 captures", a[0]));
            }
            set_opt(&mut c.fcgi_split, Rc::new(re), "fastcgi_split_path_info")
        }),
        DirectiveSpec::new("fastcgi_keep_conn", ANY, 1, 1, |c, a, cx| set_opt(&mut c.fcgi_keep, cx.flag(a[0])?, "fastcgi_keep_conn")),
    ]
}

const LOC_ONLY: u32 = sys::CTX_LOCATION;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut wire = Vec::new();
        // Two STDOUT records, padded, a STDERR one, END_REQUEST.
        for (kind, data, pad) in [(STDOUT, &b"Status: 404\r\n\r\n"[..], 3usize), (STDERR, b"", 0), (STDOUT, b"body", 0), (END_REQUEST, &[0u8; 8][..], 0)] {
            header(&mut wire, kind, data.len());
            let at = wire.len() - 2;
            wire[at] = pad as u8;
            wire.extend_from_slice(data);
            wire.extend(std::iter::repeat_n(0, pad));
        }
        // Byte by byte: incomplete records wait.
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        let mut ended = false;
        for b in &wire {
            raw.push(*b);
            ended = decode(&mut raw, &mut out, &[], &String::new).unwrap();
        }
        assert!(ended);
        assert_eq!(out, b"Status: 404\r\n\r\nbody");
        assert!(raw.is_empty());
    }

    #[test]
    fn pair_lengths() {
        let mut p = Vec::new();
        pair(&mut p, b"A", &[b'x'; 200]);
        assert_eq!(&p[..5], &[1, 0x80, 0, 0, 200]);
    }
}
