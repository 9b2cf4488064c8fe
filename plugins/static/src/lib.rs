//! `static`: serves files, as nginx's static module with its
//! not-modified and range filters.
//!
//! The host maps the URI to a path (`root`/`alias`, `$request_filename`);
//! this plugin opens it and answers: 301 for a directory without its
//! trailing slash, 403/404 as the filesystem says, 405 for methods other
//! than GET/HEAD, ETag and Last-Modified with If-None-Match /
//! If-Modified-Since → 304 and If-Match / If-Unmodified-Since → 412, and
//! Range (single → 206, several → multipart/byteranges, none satisfiable
//! → 416). The body goes out from memory (small files, cached) or as a
//! file region (sendfile).
//!
//! The Content-Type is the host's (`types`, `default_type`: core
//! directives, as in nginx). Directives: `etag on|off`,
//! `if_modified_since off|exact|before`, `max_ranges n`,
//! `open_file_cache off | max=N [inactive=time]` (on by default, see
//! [`cache`]); `open_file_cache_valid`, `open_file_cache_min_uses` and
//! `open_file_cache_errors` are accepted for nginx configurations and
//! change nothing (a changed file is never served from the cache).
//! `gzip_static on|always` (nginx's gzip_static module): the file with
//! `.gz` appended is sent as is, `Content-Encoding: gzip`, to clients the
//! host's gzip test lets have it (see [`precompressed`]). `empty_gif`
//! (a location's content handler) answers with a transparent 1×1 GIF.

mod cache;
mod watch;

use plugin_api::http::{parse_ranges, Ranges};
use plugin_api::{export_plugin, log, send_multipart, sys, DirectiveSpec, Phase, Plugin, Request, Status};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-block configuration.
#[derive(Default, Clone)]
pub struct Conf {
    etag: Option<bool>,
    /// 0 off, 1 exact, 2 before.
    if_modified_since: Option<u8>,
    max_ranges: Option<usize>,
    /// `open_file_cache`: Some(None) = off.
    open_file_cache: Option<Option<cache::Settings>>,
    /// `gzip_static`: 0 off, 1 on, 2 always.
    gzip_static: Option<u8>,
    /// `empty_gif`: this location answers with a transparent 1×1 GIF.
    empty_gif: bool,
}

const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;

/// The plugin.
pub struct Static;

impl Plugin for Static {
    const NAME: &'static str = "static";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        vec![
            DirectiveSpec::<Conf>::new("etag", H, 1, 1, |c, a, cx| {
                c.etag = Some(cx.flag(a[0])?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("if_modified_since", H, 1, 1, |c, a, _| {
                c.if_modified_since = Some(match a[0] {
                    "off" => 0,
                    "exact" => 1,
                    "before" => 2,
                    v => return Err(format!("invalid value \"{v}\" in \"if_modified_since\" directive")),
                });
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("max_ranges", H, 1, 1, |c, a, _| {
                c.max_ranges = Some(a[0].parse().map_err(|_| format!("invalid value \"{}\"", a[0]))?);
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("open_file_cache", H, 1, 2, |c, a, cx| {
                if a[0] == "off" {
                    if a.len() > 1 {
                        return Err(format!("invalid \"open_file_cache\" parameter \"{}\"", a[1]));
                    }
                    c.open_file_cache = Some(None);
                    return Ok(());
                }
                let mut s = cache::Settings::default();
                let mut max = false;
                for p in a {
                    match p.split_once('=') {
                        Some(("max", v)) => {
                            s.max = v.parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("invalid \"open_file_cache\" parameter \"{p}\""))?;
                            max = true;
                        }
                        Some(("inactive", v)) => s.inactive = Duration::from_millis(cx.time_ms(v)?),
                        _ => return Err(format!("invalid \"open_file_cache\" parameter \"{p}\"")),
                    }
                }
                if !max {
                    return Err("\"open_file_cache\" must have the \"max\" parameter".into());
                }
                c.open_file_cache = Some(Some(s));
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("open_file_cache_valid", H, 1, 1, |_, a, cx| cx.time_ms(a[0]).map(drop)),
            DirectiveSpec::<Conf>::new("open_file_cache_min_uses", H, 1, 1, |_, a, _| {
                a[0].parse::<u32>().map(drop).map_err(|_| format!("invalid value \"{}\"", a[0]))
            }),
            // nginx's empty_gif module: the location's content handler.
            DirectiveSpec::<Conf>::new("empty_gif", sys::CTX_LOCATION, 0, 0, |c, _, cx| {
                c.empty_gif = true;
                cx.set_content_handler::<Static>()
            }),
            DirectiveSpec::<Conf>::new("gzip_static", H, 1, 1, |c, a, _| {
                c.gzip_static = Some(match a[0] {
                    "off" => 0,
                    "on" => 1,
                    "always" => 2,
                    v => return Err(format!("invalid value \"{v}\" in \"gzip_static\" directive, it must be \"on\", \"off\" or \"always\"")),
                });
                Ok(())
            }),
            DirectiveSpec::<Conf>::new("open_file_cache_errors", H, 1, 1, |_, a, cx| cx.flag(a[0]).map(drop)),
        ]
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        child.etag = child.etag.or(parent.etag);
        child.if_modified_since = child.if_modified_since.or(parent.if_modified_since);
        child.max_ranges = child.max_ranges.or(parent.max_ranges);
        child.open_file_cache = child.open_file_cache.or(parent.open_file_cache);
        child.gzip_static = child.gzip_static.or(parent.gzip_static);
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Content]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        if conf.empty_gif {
            return empty_gif(req);
        }
        serve(req, conf)
    }
}

/// A transparent 1×1 GIF (43 bytes).
const EMPTY_GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', // signature, version
    0x01, 0x00, 0x01, 0x00, // 1 × 1
    0x80, 0x00, 0x00, // a global colour table of two entries
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // black, white
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // colour 0 is transparent
    0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // the image, 1 × 1
    0x02, 0x02, 0x44, 0x01, 0x00, // its LZW data
    0x3b, // trailer
];

/// `empty_gif`: the GIF for GET and HEAD, with nginx's fixed
/// Last-Modified.
fn empty_gif(req: &mut Request<'_>) -> Status {
    if !matches!(req.method(), "GET" | "HEAD") {
        return Status::Http(405);
    }
    req.set_header("Last-Modified", "Mon, 28 Sep 1970 06:00:00 GMT");
    req.respond(200, "image/gif", &EMPTY_GIF)
}

/// The URI's extension packed in a word (at most 8 bytes; 0 for none),
/// or None when it is longer.
fn ext_key(uri: &str) -> Option<u64> {
    let b = uri.as_bytes();
    let mut start = b.len();
    for i in (0..b.len()).rev() {
        match b[i] {
            b'/' => break,
            b'.' => {
                start = i + 1;
                break;
            }
            _ => {}
        }
    }
    let ext = &b[start..];
    (ext.len() <= 8).then(|| ext.iter().fold(0u64, |k, &c| k << 8 | u64::from(c)))
}

fn os_error(e: &std::io::Error) -> String {
    let code = e.raw_os_error().unwrap_or(0);
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    format!("{code}: {text}")
}

/// What the path names.
enum Found {
    File(Rc<cache::Entry>),
    Dir,
}

/// Opens (or finds in the cache) the file the request maps to; Err is the
/// response status, already logged.
fn find(req: &Request<'_>, conf: &Conf) -> Result<Found, Status> {
    let Some(path) = req.var("request_filename") else { return Err(Status::Error) };
    find_at(path, conf, false)
}

/// nginx's gzip_static: the request's file with `.gz` appended, sent as
/// is with `Content-Encoding: gzip` when the client may take it (`on`:
/// the host's gzip test, as nginx's ngx_http_gzip_ok; `always`: every
/// client). Under `on`, the file's existence makes the response one that
/// could be compressed (Vary with `gzip_vary on`) whoever asks.
fn precompressed(req: &mut Request<'_>, conf: &Conf) -> Option<Rc<cache::Entry>> {
    let always = conf.gzip_static == Some(2);
    let ok = always || req.gzip_ok(false).unwrap_or_else(|| req.header("Accept-Encoding").is_some_and(plugin_api::http::accepts_gzip));
    let path = format!("{}.gz", req.var("request_filename")?);
    let Ok(Found::File(e)) = find_at(&path, conf, true) else { return None };
    if !always {
        req.gzip_ok(true);
    }
    ok.then_some(e)
}

/// `find` for `path`. `optional`: a missing file is no error (nothing
/// logged), and no failure is the response's (Err(Declined)), as for
/// gzip_static's `.gz` files.
fn find_at(path: &str, conf: &Conf, optional: bool) -> Result<Found, Status> {
    let settings = conf.open_file_cache.unwrap_or(Some(cache::Settings::default()));
    if settings.is_some() {
        // A watched entry nothing changed: no file system call.
        if let Some(e) = cache::lookup_watched(path) {
            return Ok(Found::File(e));
        }
        // Otherwise one stat() revalidates a cached entry.
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Ok(Found::Dir),
            Ok(m) => {
                if let Some(e) = cache::lookup(path, &m) {
                    return Ok(Found::File(e));
                }
            }
            // Gone or unreadable: open() below says how, in its words.
            Err(_) => cache::forget(path),
        }
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            let st = match e.kind() {
                ErrorKind::NotFound => 404,
                ErrorKind::PermissionDenied => 403,
                _ if e.raw_os_error() == Some(20) || e.raw_os_error() == Some(36) => 404, // ENOTDIR, ENAMETOOLONG
                _ => 500,
            };
            if optional && st == 404 {
                return Err(Status::Declined);
            }
            let msg = format!("open() \"{path}\" failed ({})", os_error(&e));
            match st {
                500 => log(sys::LOG_CRIT, &msg),
                404 => plugin_api::log_not_found(&msg),
                _ => log(sys::LOG_ERR, &msg),
            }
            return Err(if optional { Status::Declined } else { Status::Http(st) });
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            log(sys::LOG_CRIT, &format!("fstat() \"{path}\" failed ({})", os_error(&e)));
            return Err(Status::Error);
        }
    };
    if meta.is_dir() {
        return Ok(Found::Dir);
    }
    if !meta.is_file() {
        log(sys::LOG_ERR, &format!("\"{path}\" is not a regular file"));
        return Err(Status::Http(404));
    }
    let keep_body = settings.is_some() && cache::room_for_body();
    let held = if settings.is_some() { cache::watch_for(path, &file, &meta) } else { None };
    match cache::Entry::new(file, &meta, keep_body, held) {
        Ok(e) => Ok(Found::File(match settings {
            Some(s) => cache::insert(path, e, s),
            None => Rc::new(e),
        })),
        Err(e) => {
            log(sys::LOG_CRIT, &format!("read() \"{path}\" failed ({})", os_error(&e)));
            Err(Status::Error)
        }
    }
}

/// Response header lines gathered for one `set_headers` call.
struct Lines<'a> {
    l: [(&'a str, Option<&'a str>); 12],
    n: usize,
}

impl<'a> Lines<'a> {
    fn new() -> Self {
        Lines { l: [("", None); 12], n: 0 }
    }

    fn set(&mut self, name: &'a str, value: &'a str) -> &mut Self {
        self.l[self.n] = (name, Some(value));
        self.n += 1;
        self
    }

    fn remove(&mut self, name: &'a str) -> &mut Self {
        self.l[self.n] = (name, None);
        self.n += 1;
        self
    }

    fn apply(&self, req: &mut Request<'_>) {
        // Header lines of a file and the configuration are valid by
        // construction: nothing to report.
        let _ = req.set_headers(&self.l[..self.n]);
    }
}

fn serve(req: &mut Request<'_>, conf: &Conf) -> Status {
    let (slash, post, ext) = {
        let (uri, method) = (req.uri(), req.method());
        if !matches!(method, "GET" | "HEAD" | "POST") {
            return Status::Http(405);
        }
        (uri.ends_with('/'), method == "POST", ext_key(uri))
    };
    if slash {
        return Status::Declined;
    }
    let gz = if conf.gzip_static.unwrap_or(0) != 0 && !post { precompressed(req, conf) } else { None };
    let gzipped = gz.is_some();
    let found = match gz {
        Some(e) => Ok(Found::File(e)),
        None => find(req, conf),
    };
    let e = match found {
        Ok(Found::File(e)) => e,
        Ok(Found::Dir) => {
            let mut loc = Vec::new();
            plugin_api::http::escape_uri(req.uri(), &mut loc);
            loc.push(b'/');
            let args = req.args();
            if !args.is_empty() {
                loc.push(b'?');
                loc.extend_from_slice(args.as_bytes());
            }
            req.set_header("Location", &String::from_utf8_lossy(&loc));
            return Status::Http(301);
        }
        Err(st) => return st,
    };
    if post {
        return Status::Http(405);
    }
    // The host's type depends on the location and the URI's extension: it
    // is kept on the entry for the next request with both (another
    // location or extension asks the host each time).
    let key = ext.map(|x| (conf as *const Conf as usize, x));
    let other: String;
    let ctype: &str = match (e.ctype.get(), key) {
        (Some((at, t)), Some(k)) if *at == k => t,
        (cached, _) => {
            let t = req.mime_type().unwrap_or("application/octet-stream").to_string();
            match key {
                Some(k) if cached.is_none() => &e.ctype.get_or_init(|| (k, t)).1,
                _ => {
                    other = t;
                    &other
                }
            }
        }
    };
    let (size, mtime) = (e.size, e.mtime);
    let etag = (conf.etag != Some(false)).then_some(e.etag.as_str());
    // The not-modified filter, then the range filter: what the request
    // asks for, read in one host call.
    let (cond, ranges) = {
        let [ius, im, inm, ims, range, if_range] =
            req.headers_named(["If-Unmodified-Since", "If-Match", "If-None-Match", "If-Modified-Since", "Range", "If-Range"]);
        let cond = conditional(conf, mtime, &e.etag, ius, im, inm, ims);
        let if_range_ok = |v: &str| {
            if v.starts_with('"') || v.starts_with("W/") {
                v == e.etag
            } else {
                httpdate::parse_http_date(v).ok().map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())) == Some(mtime)
            }
        };
        let ranges = match range {
            Some(spec) if cond == 200 && if_range.is_none_or(if_range_ok) => parse_ranges(spec, size),
            _ => Ranges::Ignore,
        };
        (cond, ranges)
    };
    let mut h = Lines::new();
    h.set("Content-Type", ctype).set("Last-Modified", &e.last_modified);
    if let Some(t) = etag {
        h.set("ETag", t);
    }
    if cond != 200 {
        if cond == 304 {
            h.remove("Content-Type").apply(req);
            req.set_status(304);
            return match req.send_header() {
                Ok(()) => Status::Ok,
                Err(_) => Status::Error,
            };
        }
        h.apply(req);
        return Status::Http(cond);
    }
    h.set("Accept-Ranges", "bytes");
    // (Not on a 304 or an error page, as nginx's filters clear it.)
    if gzipped {
        h.set("Content-Encoding", "gzip");
    }
    let fd = e.file.as_raw_fd();
    match ranges {
        Ranges::Ignore => {}
        Ranges::Unsatisfiable => {
            let cr = format!("bytes */{size}");
            h.remove("Accept-Ranges").remove("Last-Modified").remove("ETag").remove("Content-Encoding").set("Content-Range", &cr).apply(req);
            return Status::Http(416);
        }
        Ranges::List(list) if list.len() > conf.max_ranges.unwrap_or(usize::MAX) => {}
        Ranges::List(list) if list.len() == 1 => {
            let (a, b) = list[0];
            let (cr, cl) = (format!("bytes {a}-{b}/{size}"), (b - a + 1).to_string());
            h.set("Content-Range", &cr).set("Content-Length", &cl).apply(req);
            req.set_status(206);
            return sent(req.send_file(fd, a, b - a + 1, true));
        }
        Ranges::List(list) => {
            h.apply(req);
            return sent(send_multipart(req, fd, 0, &list, size, ctype));
        }
    }
    h.set("Content-Length", &e.length).apply(req);
    req.set_status(200);
    match &e.body {
        // Small and cached: the header and the body leave in one write.
        Some(body) => sent(req.send(body, true)),
        None => sent(req.send_file(fd, 0, size, true)),
    }
}

fn sent(r: Result<(), sys::Rc>) -> Status {
    match r {
        Ok(()) => Status::Ok,
        Err(_) => Status::Error,
    }
}

fn http_time(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v.trim()).ok().map(|t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn etag_match(list: &str, etag: &str, weak: bool) -> bool {
    let bare = etag.trim_start_matches("W/");
    list.split(',').map(str::trim).any(|t| {
        t == "*" || t == etag || (weak && t.trim_start_matches("W/") == bare)
    })
}

/// nginx's not-modified filter: 200 to go on, 304 or 412, from the
/// request's If-Unmodified-Since, If-Match, If-None-Match and
/// If-Modified-Since.
fn conditional(conf: &Conf, mtime: u64, etag: &str, ius: Option<&str>, im: Option<&str>, inm: Option<&str>, ims: Option<&str>) -> u16 {
    if ius.and_then(http_time).is_some_and(|t| mtime > t) {
        return 412;
    }
    if im.is_some_and(|v| !etag_match(v, etag, false)) {
        return 412;
    }
    if let Some(v) = inm {
        return if etag_match(v, etag, true) { 304 } else { 200 };
    }
    if let Some(v) = ims {
        let mode = conf.if_modified_since.unwrap_or(1);
        if let (Some(t), true) = (http_time(v), mode != 0) {
            if (mode == 1 && t == mtime) || (mode == 2 && mtime <= t) {
                return 304;
            }
        }
    }
    200
}

export_plugin!(Static);
