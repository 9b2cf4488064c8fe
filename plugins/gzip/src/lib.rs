//! `gzip`: nginx's gzip filter — compresses responses on the fly.
//!
//! Directives (http, server, location): `gzip on|off`, `gzip_types`
//! (`text/html` always; `*` for any), `gzip_min_length` (by Content-Length;
//! a response of unknown length is compressed), `gzip_comp_level 1..9`;
//! `gzip_buffers` is accepted (the compressor sizes its own output).
//! `gunzip on` (nginx's gunzip module): a gzip response (proxied, or
//! `gzip_static always`) is decompressed for a client that may not have
//! it, every gzip member in turn; `gunzip_buffers` is accepted.
//! `gzip_vary`, `gzip_http_version`, `gzip_proxied` and `gzip_disable`
//! are core directives, as in nginx: the host answers nginx's
//! `ngx_http_gzip_ok` for this filter and for `gzip_static` alike.
//!
//! As nginx: only 200, 403 and 404 responses without a Content-Encoding
//! are compressed (a HEAD response says what a GET would), for clients whose
//! Accept-Encoding takes gzip (`q=0` refuses it). A compressed response
//! loses Content-Length and Accept-Ranges, and a strong ETag becomes weak;
//! with `gzip_vary on`, every response that could be compressed says
//! `Vary: Accept-Encoding`. The body filter compresses memory and file
//! pieces alike (files are read with `pread`) and sends what the
//! compressor has made for each piece it gets.

use flate2::write::{GzEncoder, MultiGzDecoder};
use flate2::Compression;
use plugin_api::{export_plugin, sys, DirectiveSpec, Piece, Plugin, Request};
use std::io::Write;
use std::rc::Rc;

/// Per-block configuration (unset fields inherit).
#[derive(Clone, Default)]
pub struct Conf {
    enable: Option<bool>,
    /// Types besides text/html; None inside: `*`.
    types: Option<Rc<Vec<String>>>,
    any_type: Option<bool>,
    min_length: Option<u64>,
    level: Option<u32>,
    /// `gunzip`: decompress gzip responses for clients that cannot take
    /// them (nginx's gunzip module).
    gunzip: Option<bool>,
}

/// The plugin.
pub struct Gzip;

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION | sys::CTX_IF;

/// The compressor or decompressor of one response (request memory:
/// dropped with it).
#[derive(Default)]
struct Ctx {
    coder: Option<Coder>,
}

enum Coder {
    Gzip(GzEncoder<Vec<u8>>),
    /// Every gzip member in turn, as nginx's gunzip.
    Gunzip(MultiGzDecoder<Vec<u8>>),
}

impl Coder {
    fn write_all(&mut self, d: &[u8]) -> std::io::Result<()> {
        match self {
            Coder::Gzip(e) => e.write_all(d),
            Coder::Gunzip(g) => g.write_all(d),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Coder::Gzip(e) => e.flush(),
            Coder::Gunzip(g) => g.flush(),
        }
    }

    /// What it has made so far.
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(match self {
            Coder::Gzip(e) => e.get_mut(),
            Coder::Gunzip(g) => g.get_mut(),
        })
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Coder::Gzip(e) => e.finish(),
            Coder::Gunzip(g) => g.finish(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Coder::Gzip(_) => "gzip",
            Coder::Gunzip(_) => "gunzip",
        }
    }
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
            DirectiveSpec::<Conf>::new("gunzip", H ^ sys::CTX_IF, 1, 1, |c, a, cx| {
                c.gunzip = Some(flag(a[0], cx)?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("gunzip_buffers", H ^ sys::CTX_IF, 2, 2, |_, a, cx| {
                a[0].parse::<u32>().map_err(|_| format!("invalid value \"{}\"", a[0]))?;
                cx.size(a[1]).map(drop)
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
        inherit!(enable, types, any_type, min_length, level, gunzip);
    }

    fn header_filter(req: &mut Request<'_>, conf: &Conf) -> Result<(), String> {
        if conf.gunzip == Some(true) && req.header_out("Content-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip")) {
            return gunzip_header(req);
        }
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
        // Could be compressed: caches must key on Accept-Encoding (the
        // host adds Vary under gzip_vary on). The rest is nginx's
        // ngx_http_gzip_ok, which the host answers (an older host: the
        // client's Accept-Encoding alone).
        let ok = match req.gzip_ok(true) {
            Some(ok) => ok,
            None => req.header("Accept-Encoding").is_some_and(plugin_api::http::accepts_gzip),
        };
        if !ok {
            return Ok(());
        }
        recode(req, Some("gzip"))?;
        let level = Compression::new(conf.level.unwrap_or(1));
        req.ctx::<Ctx>().coder = Some(Coder::Gzip(GzEncoder::new(Vec::new(), level)));
        Ok(())
    }

    fn body_filter(req: &mut Request<'_>, conf: &Conf, body: &[sys::Buf]) -> Result<(), String> {
        // Off here: no per-request state to look at (or make).
        let on = conf.enable == Some(true) || conf.gunzip == Some(true);
        let Some(mut coder) = on.then(|| req.ctx::<Ctx>().coder.take()).flatten() else {
            return req.next_body_raw(body).map_err(|rc| format!("next body filter failed (rc {rc})"));
        };
        let mut last = false;
        let mut file_buf = Vec::new();
        for b in body {
            last |= Piece::is_last(b);
            match Piece::of(b) {
                Piece::Mem(d) => coder.write_all(d).map_err(|e| format!("{}: {e}", coder.name()))?,
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
                            return Err(format!("{}: pread() failed ({})", coder.name(), std::io::Error::last_os_error()));
                        }
                        coder.write_all(&file_buf[..n as usize]).map_err(|e| format!("{}: {e}", coder.name()))?;
                        at += n as u64;
                    }
                }
            }
        }
        if last {
            let name = coder.name();
            let out = coder.finish().map_err(|e| format!("{name}: {e}"))?;
            return req.next_body(&out, true).map_err(|rc| format!("next body filter failed (rc {rc})"));
        }
        // A flush buffer asks for what is compressed so far to go out.
        if body.iter().any(|b| b.flags & sys::BUF_FLUSH != 0) {
            coder.flush().map_err(|e| format!("{}: {e}", coder.name()))?;
        }
        let out = coder.take();
        req.ctx::<Ctx>().coder = Some(coder);
        req.next_body(&out, false).map_err(|rc| format!("next body filter failed (rc {rc})"))
    }
}

/// nginx's gunzip: a gzip response to a client that may not have it is
/// decompressed (the response could be compressed: Vary, under
/// gzip_vary on).
fn gunzip_header(req: &mut Request<'_>) -> Result<(), String> {
    let ok = match req.gzip_ok(true) {
        Some(ok) => ok,
        None => req.header("Accept-Encoding").is_some_and(plugin_api::http::accepts_gzip),
    };
    if ok {
        return Ok(());
    }
    recode(req, None)?;
    req.ctx::<Ctx>().coder = Some(Coder::Gunzip(MultiGzDecoder::new(Vec::new())));
    Ok(())
}

/// The headers of a body about to be re-encoded: its new
/// Content-Encoding, no length or ranges, and a strong ETag made weak.
fn recode(req: &mut Request<'_>, encoding: Option<&str>) -> Result<(), String> {
    let etag = req.header_out("ETag").filter(|e| e.starts_with('"')).map(|e| format!("W/{e}"));
    let mut lines: Vec<(&str, Option<&str>)> = vec![("Content-Encoding", encoding), ("Content-Length", None), ("Accept-Ranges", None)];
    if let Some(e) = &etag {
        lines.push(("ETag", Some(e)));
    }
    req.set_headers(&lines).map_err(|rc| format!("gzip: setting headers failed (rc {rc})"))
}

export_plugin!(Gzip);
