//! `gzip`: nginx's gzip filter — compresses responses on the fly.
//!
//! Directives (http, server, location): `gzip on|off`, `gzip_types`
//! (`text/html` always; `*` for any), `gzip_min_length` (by Content-Length;
//! a response of unknown length is compressed), `gzip_comp_level 1..9`,
//! `gzip_vary`, `gzip_http_version 1.0|1.1`, `gzip_proxied`,
//! `gzip_disable` (User-Agent regexes, `msie6`); `gzip_buffers` is
//! accepted (the compressor sizes its own output).
//!
//! As nginx: only 200, 403 and 404 responses without a Content-Encoding
//! are compressed (a HEAD response says what a GET would), for clients whose
//! Accept-Encoding takes gzip (`q=0` refuses it). A compressed response
//! loses Content-Length and Accept-Ranges, and a strong ETag becomes weak;
//! with `gzip_vary on`, every response that could be compressed says
//! `Vary: Accept-Encoding`. The body filter compresses memory and file
//! pieces alike (files are read with `pread`) and sends what the
//! compressor has made for each piece it gets.

use flate2::write::GzEncoder;
use flate2::Compression;
use plugin_api::{export_plugin, sys, DirectiveSpec, Piece, Plugin, Request};
use regex::{Regex, RegexBuilder};
use std::io::Write;
use std::rc::Rc;

/// `gzip_proxied` flags (nginx's).
mod proxied {
    pub const OFF: u32 = 0x0002;
    pub const EXPIRED: u32 = 0x0004;
    pub const NO_CACHE: u32 = 0x0008;
    pub const NO_STORE: u32 = 0x0010;
    pub const PRIVATE: u32 = 0x0020;
    pub const NO_LM: u32 = 0x0040;
    pub const NO_ETAG: u32 = 0x0080;
    pub const AUTH: u32 = 0x0100;
    pub const ANY: u32 = 0x0200;
}

/// Per-block configuration (unset fields inherit).
#[derive(Clone, Default)]
pub struct Conf {
    enable: Option<bool>,
    /// Types besides text/html; None inside: `*`.
    types: Option<Rc<Vec<String>>>,
    any_type: Option<bool>,
    min_length: Option<u64>,
    level: Option<u32>,
    vary: Option<bool>,
    http10: Option<bool>,
    proxied: Option<u32>,
    disable: Option<Rc<Vec<Regex>>>,
    msie6: Option<bool>,
}

/// The plugin.
pub struct Gzip;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_IF;

/// The compressor of one response (request memory: dropped with it).
#[derive(Default)]
struct Ctx {
    enc: Option<GzEncoder<Vec<u8>>>,
}

/// True when an Accept-Encoding value takes gzip (a `q=0` refuses it).
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

/// `gzip_proxied` against the response's headers: may a response to a
/// proxied request (one with Via) be compressed?
fn proxied_ok(flags: u32, req: &Request<'_>) -> bool {
    if flags & proxied::ANY != 0 {
        return true;
    }
    if flags & proxied::OFF != 0 || flags == 0 {
        return false;
    }
    if flags & proxied::AUTH != 0 && req.header("Authorization").is_some() {
        return true;
    }
    if flags & proxied::EXPIRED != 0 && req.header_out("Expires").is_some() {
        return true;
    }
    let cc = req.header_out("Cache-Control").unwrap_or("").to_ascii_lowercase();
    if (flags & proxied::NO_CACHE != 0 && cc.contains("no-cache"))
        || (flags & proxied::NO_STORE != 0 && cc.contains("no-store"))
        || (flags & proxied::PRIVATE != 0 && cc.contains("private"))
    {
        return true;
    }
    if flags & proxied::NO_LM != 0 && req.header_out("Last-Modified").is_none() {
        return true;
    }
    flags & proxied::NO_ETAG != 0 && req.header_out("ETag").is_none()
}

fn flag(a: &str, cx: &plugin_api::ConfCx<'_>) -> Result<bool, String> {
    cx.flag(a)
}

impl Plugin for Gzip {
    const NAME: &'static str = "gzip";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HEADER_FILTER: bool = true;
    const BODY_FILTER: bool = true;
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("gzip", H, 1, 1, |c, a, cx| {
                c.enable = Some(flag(a[0], cx)?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_types", H ^ sys::CTX_IF, 1, sys::ARGS_ANY, |c, a, _| {
                let any = a.contains(&"*");
                c.any_type = Some(any);
                c.types = Some(Rc::new(a.iter().filter(|t| **t != "*").map(|t| t.to_ascii_lowercase()).collect()));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_min_length", H ^ sys::CTX_IF, 1, 1, |c, a, cx| {
                c.min_length = Some(cx.size(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_comp_level", H ^ sys::CTX_IF, 1, 1, |c, a, _| {
                let l = a[0].parse::<u32>().ok().filter(|l| (1..=9).contains(l)).ok_or("the value must be in 1 to 9 range")?;
                c.level = Some(l);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_vary", H ^ sys::CTX_IF, 1, 1, |c, a, cx| {
                c.vary = Some(flag(a[0], cx)?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_http_version", H ^ sys::CTX_IF, 1, 1, |c, a, _| {
                c.http10 = Some(match a[0] {
                    "1.0" => true,
                    "1.1" => false,
                    v => return Err(format!("invalid value \"{v}\" in \"gzip_http_version\" directive, it must be \"1.0\" or \"1.1\"")),
                });
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_proxied", H ^ sys::CTX_IF, 1, sys::ARGS_ANY, |c, a, _| {
                let mut f = 0;
                for v in a {
                    f |= match *v {
                        "off" => proxied::OFF,
                        "expired" => proxied::EXPIRED,
                        "no-cache" => proxied::NO_CACHE,
                        "no-store" => proxied::NO_STORE,
                        "private" => proxied::PRIVATE,
                        "no_last_modified" => proxied::NO_LM,
                        "no_etag" => proxied::NO_ETAG,
                        "auth" => proxied::AUTH,
                        "any" => proxied::ANY,
                        v => return Err(format!("invalid value \"{v}\" in \"gzip_proxied\" directive")),
                    };
                }
                c.proxied = Some(f);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_disable", H ^ sys::CTX_IF, 1, sys::ARGS_ANY, |c, a, _| {
                let mut list = Vec::new();
                for v in a {
                    if *v == "msie6" {
                        c.msie6 = Some(true);
                        continue;
                    }
                    list.push(RegexBuilder::new(v).case_insensitive(true).build().map_err(|e| format!("regex \"{v}\" is invalid: {}", e.to_string().lines().last().unwrap_or("")))?);
                }
                c.disable = Some(Rc::new(list));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gzip_buffers", H ^ sys::CTX_IF, 2, 2, |_, a, cx| {
                a[0].parse::<u32>().map_err(|_| format!("invalid value \"{}\"", a[0]))?;
                cx.size(a[1]).map(drop)
            }),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        macro_rules! inherit {
            ($($f:ident),*) => { $( if child.$f.is_none() { child.$f = parent.$f.clone(); } )* };
        }
        inherit!(enable, types, any_type, min_length, level, vary, http10, proxied, disable, msie6);
    }

    fn header_filter(req: &mut Request<'_>, conf: &Conf) -> Result<(), String> {
        // (A HEAD response gets the headers a GET would, as in nginx.)
        if conf.enable != Some(true) || !matches!(req.status(), 200 | 403 | 404) {
            return Ok(());
        }
        if req.header_out("Content-Encoding").is_some_and(|v| !v.is_empty()) {
            return Ok(());
        }
        let min = conf.min_length.unwrap_or(20);
        if req.header_out("Content-Length").and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n < min) {
            return Ok(());
        }
        let ctype = req.header_out("Content-Type").unwrap_or("");
        let base = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let typed = base == "text/html"
            || conf.any_type == Some(true)
            || conf.types.as_ref().is_some_and(|t| t.contains(&base));
        if !typed {
            return Ok(());
        }
        // Could be compressed: caches must key on Accept-Encoding.
        if conf.vary == Some(true) {
            req.add_header("Vary", "Accept-Encoding");
        }
        if !req.header("Accept-Encoding").is_some_and(accepts_gzip) {
            return Ok(());
        }
        if req.protocol() == "HTTP/1.0" && conf.http10 != Some(true) {
            return Ok(());
        }
        if let Some(ua) = req.header("User-Agent") {
            if (conf.msie6 == Some(true) && plugin_api::http::is_msie6(ua)) || conf.disable.as_ref().is_some_and(|l| l.iter().any(|re| re.is_match(ua))) {
                return Ok(());
            }
        }
        if req.header("Via").is_some() && !proxied_ok(conf.proxied.unwrap_or(proxied::OFF), req) {
            return Ok(());
        }
        let etag = req.header_out("ETag").filter(|e| e.starts_with('"')).map(|e| format!("W/{e}"));
        let mut lines: Vec<(&str, Option<&str>)> = vec![("Content-Encoding", Some("gzip")), ("Content-Length", None), ("Accept-Ranges", None)];
        if let Some(e) = &etag {
            lines.push(("ETag", Some(e)));
        }
        req.set_headers(&lines).map_err(|rc| format!("gzip: setting headers failed (rc {rc})"))?;
        let level = Compression::new(conf.level.unwrap_or(1));
        req.ctx::<Ctx>().enc = Some(GzEncoder::new(Vec::new(), level));
        Ok(())
    }

    fn body_filter(req: &mut Request<'_>, conf: &Conf, body: &[sys::Buf]) -> Result<(), String> {
        // Off here: no per-request state to look at (or make).
        let on = conf.enable == Some(true);
        let Some(mut enc) = on.then(|| req.ctx::<Ctx>().enc.take()).flatten() else {
            return req.next_body_raw(body).map_err(|rc| format!("next body filter failed (rc {rc})"));
        };
        let mut last = false;
        let mut file_buf = Vec::new();
        for b in body {
            last |= Piece::is_last(b);
            match Piece::of(b) {
                Piece::Mem(d) => enc.write_all(d).map_err(|e| format!("gzip: {e}"))?,
                Piece::File { fd, pos, len } => {
                    // Read the region in blocks (the fd is borrowed).
                    let (mut at, end) = (pos, pos + len);
                    file_buf.resize(65536, 0);
                    while at < end {
                        let want = ((end - at) as usize).min(file_buf.len());
                        // SAFETY: fd is a live descriptor for this call;
                        // file_buf has room for `want` bytes.
                        let n = unsafe { libc::pread(fd, file_buf.as_mut_ptr().cast(), want, at as libc::off_t) };
                        if n <= 0 {
                            return Err(format!("gzip: pread() failed ({})", std::io::Error::last_os_error()));
                        }
                        enc.write_all(&file_buf[..n as usize]).map_err(|e| format!("gzip: {e}"))?;
                        at += n as u64;
                    }
                }
            }
        }
        if last {
            let out = enc.finish().map_err(|e| format!("gzip: {e}"))?;
            return req.next_body(&out, true).map_err(|rc| format!("next body filter failed (rc {rc})"));
        }
        // A flush buffer asks for what is compressed so far to go out.
        if body.iter().any(|b| b.flags & sys::BUF_FLUSH != 0) {
            enc.flush().map_err(|e| format!("gzip: {e}"))?;
        }
        let out = std::mem::take(enc.get_mut());
        req.ctx::<Ctx>().enc = Some(enc);
        req.next_body(&out, false).map_err(|rc| format!("next body filter failed (rc {rc})"))
    }
}

export_plugin!(Gzip);

#[cfg(test)]
mod tests {
    use super::*;

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

}
