//! The host table (`ngx_plugin_host_t`): every function a plugin may call.
//!
//! Handles are pointers to host structures that plugins never look inside:
//! `*mut sys::Conf` is a [`ConfCtx`], `*mut sys::Request` a [`Req`]. Each
//! function checks for NULL and answers `NGX_PLUGIN_INVALID` rather than
//! trusting the caller. Slots later issues implement (body reading, async
//! I/O, shared memory, helpers, protocol listeners) answer
//! `NGX_PLUGIN_UNSUPPORTED`, and `supports()` says so in advance.

#![allow(unsafe_code)]
// Request and connection "pointers" here are opaque handles the host
// resolves itself (or hands to plugin code); nothing dereferences them raw.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use crate::config::Directive;
use plugin_api::sys::{self, Rc, Str};
use std::cell::Cell;
use std::ffi::c_void;
use std::path::PathBuf;

thread_local! {
    static CURRENT: Cell<(usize, *const u8, usize)> = const { Cell::new((usize::MAX, std::ptr::null(), 0)) };
    static SLOT: Cell<i32> = const { Cell::new(-1) };
}

/// Runs `f` as plugin `idx` named `name` (for log tags and per-plugin state).
pub fn with_plugin<T>(idx: usize, name: &str, f: impl FnOnce() -> T) -> T {
    let prev = CURRENT.with(|c| c.replace((idx, name.as_ptr(), name.len())));
    let r = f();
    CURRENT.with(|c| c.set(prev));
    r
}

/// The plugin whose code is running now: (index, name).
pub fn current_plugin() -> (usize, &'static str) {
    current()
}

fn current() -> (usize, &'static str) {
    let (i, p, n) = CURRENT.with(Cell::get);
    if p.is_null() {
        return (i, "?");
    }
    // SAFETY: set by with_plugin from a &str (valid UTF-8) owned by the
    // Plugin, which outlives every call made inside with_plugin.
    (i, unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, n)) })
}

/// Records this process's worker slot for `worker_slot()`.
pub fn set_worker_slot(slot: i32) {
    SLOT.with(|s| s.set(slot));
}

/// The state behind a `ngx_plugin_conf_t` while one directive is applied.
pub struct ConfCtx<'a> {
    /// The directive being applied.
    pub d: &'a Directive,
    /// Its arguments as ABI strings (borrowing `d.args`).
    pub args: Vec<Str>,
    /// The prefix for conf_full_path.
    pub prefix: PathBuf,
    /// The error the plugin reported.
    pub error: Option<String>,
    /// Data stored by the nearest enclosing block of the calling plugin.
    pub block_data: *mut c_void,
    /// Data the current block directive stored for its children.
    pub new_block_data: Option<*mut c_void>,
    /// A content handler set for the block being configured.
    pub content_handler: Option<sys::HttpHandlerFn>,
    /// Zones declared while applying (kept alive by the generation).
    pub zones: Vec<std::rc::Rc<crate::shm::Zone>>,
    /// Variables defined while applying: (name, getter, data).
    pub vars: Vec<(String, sys::VarFn, *mut c_void)>,
    /// Variable families defined while applying: (prefix, getter, data).
    pub prefix_vars: Vec<(String, sys::PrefixVarFn, *mut c_void)>,
    /// Protocol listeners declared while applying: (address, callback, data).
    pub listens: Vec<(std::net::SocketAddr, sys::AcceptFn, *mut c_void)>,
    /// The enclosing location's (modifier, name), if any.
    pub location: Option<(String, String)>,
    /// The enclosing server block's `server_name` arguments, if any.
    pub server_names: Option<Vec<String>>,
    /// The main configuration file's directory (TLS file names).
    pub conf_dir: PathBuf,
    /// TLS contexts built while applying (kept by the generation).
    pub tls: Vec<Box<super::io::TlsCtx>>,
    /// Files opened while applying (kept by the generation).
    pub files: Vec<Box<super::files::OpenFile>>,
    /// Directories asked for with conf_add_path.
    pub paths: Vec<PathBuf>,
    /// The conditional block the directive opens (conf_block_id), or 0.
    pub block_id: u32,
    scratch: String,
}

impl<'a> ConfCtx<'a> {
    /// A context for applying `d`.
    pub fn new(d: &'a Directive, prefix: PathBuf, conf_dir: PathBuf, block_data: *mut c_void) -> Self {
        let args = d.args.iter().map(|a| Str::from_bytes(a.as_bytes())).collect();
        ConfCtx {
            d,
            args,
            prefix,
            error: None,
            block_data,
            new_block_data: None,
            content_handler: None,
            zones: Vec::new(),
            vars: Vec::new(),
            prefix_vars: Vec::new(),
            listens: Vec::new(),
            location: None,
            server_names: None,
            conf_dir,
            tls: Vec::new(),
            files: Vec::new(),
            paths: Vec::new(),
            block_id: 0,
            scratch: String::new(),
        }
    }
}

use crate::http::request::{self as hreq, Req};
use std::cell::RefCell;

/// Live requests: slot → (request cell, generation), and the free slots.
type Slots = (Vec<(*const RefCell<Req<'static>>, u32)>, Vec<usize>);

thread_local! {
    /// The live requests. A handle encodes (generation, slot + 1), so a
    /// stale handle answers GONE instead of reaching freed or reused
    /// memory.
    static REQS: RefCell<Slots> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Registers a request cell; returns its ABI handle (never 0).
pub fn register_request(cell: &RefCell<Req<'_>>) -> usize {
    // The lifetime is erased for the table; cell() hands it back only for
    // the length of a host call, while the connection owning it is alive.
    let cell = (cell as *const RefCell<Req<'_>>).cast::<RefCell<Req<'static>>>();
    REQS.with(|t| {
        let mut t = t.borrow_mut();
        let (slots, free) = &mut *t;
        let i = match free.pop() {
            Some(i) => i,
            None => {
                slots.push((std::ptr::null(), 0));
                slots.len() - 1
            }
        };
        slots[i].0 = cell;
        ((slots[i].1 as usize) << 32) | (i + 1)
    })
}

/// Ends a handle: later calls with it answer GONE.
pub fn unregister_request(handle: usize) {
    if handle == 0 {
        return;
    }
    REQS.with(|t| {
        let mut t = t.borrow_mut();
        let (slots, free) = &mut *t;
        let i = (handle & 0xffff_ffff) - 1;
        if let Some(s) = slots.get_mut(i) {
            if s.1 as usize == handle >> 32 && !s.0.is_null() {
                s.0 = std::ptr::null();
                s.1 = s.1.wrapping_add(1);
                free.push(i);
            }
        }
    })
}

fn cell<'a>(r: *mut sys::Request) -> Option<&'a RefCell<Req<'static>>> {
    let h = r as usize;
    if h == 0 {
        return None;
    }
    let p = REQS.with(|t| {
        let t = t.borrow();
        t.0.get((h & 0xffff_ffff).wrapping_sub(1)).filter(|s| s.1 as usize == h >> 32).map(|s| s.0)
    })?;
    // SAFETY: registered cells are boxed inside live connections and are
    // unregistered before the connection (or request) goes away.
    unsafe { p.as_ref() }
}

fn handle_of(h: usize) -> *mut sys::Request {
    h as *mut sys::Request
}

/// Runs a phase (or log) handler of plugin `i` for the request `handle`.
pub fn call_phase_handler(plugins: &crate::plugin::conf::Plugins, i: usize, h: sys::HttpHandlerFn, handle: usize, conf: *mut c_void) -> Rc {
    with_plugin(i, &plugins.list[i].name, || crate::plugin::call_handler(h, handle_of(handle), conf))
}

/// Runs a header filter.
pub fn call_header_filter(plugins: &crate::plugin::conf::Plugins, i: usize, f: sys::HeaderFilterFn, handle: usize, conf: *mut c_void) -> Rc {
    // SAFETY: f comes from a validated plugin definition; the handle is live.
    with_plugin(i, &plugins.list[i].name, || unsafe { f(handle_of(handle), conf) })
}

/// Runs a body filter over `bufs`.
pub fn call_body_filter(plugins: &crate::plugin::conf::Plugins, i: usize, f: sys::BodyFilterFn, handle: usize, conf: *mut c_void, bufs: &[sys::Buf]) -> Rc {
    // SAFETY: as above; bufs are borrowed for the call.
    with_plugin(i, &plugins.list[i].name, || unsafe { f(handle_of(handle), conf, bufs.as_ptr(), bufs.len()) })
}

/// Runs a body-read completion callback.
pub fn call_done(cycle: &crate::cycle::Cycle, i: usize, f: sys::DoneFn, handle: usize, rc: Rc, data: *mut c_void) {
    let name = cycle.plugins.list.get(i).map_or("?", |p| p.name.as_str());
    // SAFETY: f and data come from the plugin's http_read_body call.
    with_plugin(i, name, || unsafe { f(handle_of(handle), rc, data) })
}

/// Runs a plugin's destructor for per-request state.
pub fn call_free(i: usize, f: sys::FreeFn, p: *mut c_void) {
    // SAFETY: the plugin registered f to free p when the request ends.
    with_plugin(i, "ctx", || unsafe { f(p) })
}

/// The bytes of a memory buffer.
pub fn buf_bytes<'a>(b: &sys::Buf) -> &'a [u8] {
    if b.data.is_null() || b.len == 0 {
        return &[];
    }
    // SAFETY: a memory buffer from a plugin points at len readable bytes
    // for the duration of the call that passed it.
    unsafe { std::slice::from_raw_parts(b.data, b.len) }
}

fn s(x: Str) -> &'static str {
    // SAFETY: plugins pass strings valid for the call; the result is used
    // only within the call (the host copies what it keeps).
    plugin_api::rt::text(unsafe { x.as_bytes() })
}

fn put(out: *mut Str, v: &str) -> Rc {
    if out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: out is a non-null out-pointer from the plugin.
    unsafe { *out = Str::from_bytes(v.as_bytes()) };
    sys::OK
}

pub(super) fn cf<'a>(c: *mut sys::Conf) -> Option<&'a mut ConfCtx<'a>> {
    // SAFETY: the host passes only pointers to a live ConfCtx during set/create/merge.
    unsafe { (c as *mut ConfCtx<'a>).as_mut() }
}

unsafe extern "C" fn log(level: u32, msg: Str) {
    use crate::log::Level::*;
    if level & sys::LOG_NOT_FOUND != 0 && !crate::log::not_found_on() {
        return;
    }
    let lvl = match level & 0xff {
        1 => Emerg,
        2 => Alert,
        3 => Crit,
        4 => Error,
        5 => Warn,
        6 => Notice,
        7 => Info,
        _ => Debug,
    };
    crate::log::write(lvl, format_args!("[{}] {}", current().1, s(msg)));
}

unsafe extern "C" fn conf_error(c: *mut sys::Conf, msg: Str) {
    if let Some(c) = cf(c) {
        c.error = Some(s(msg).to_string());
    }
}

unsafe extern "C" fn conf_position(c: *mut sys::Conf, name: *mut Str, file: *mut Str, line: *mut u32) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if !name.is_null() {
        put(name, &c.d.name);
    }
    if !file.is_null() {
        put(file, &c.d.file);
    }
    if !line.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *line = c.d.line };
    }
    sys::OK
}

unsafe extern "C" fn parse_flag(v: Str, out: *mut bool) -> Rc {
    let b = match s(v) {
        "on" => true,
        "off" => false,
        _ => return sys::INVALID,
    };
    if out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: non-null out-pointer.
    unsafe { *out = b };
    sys::OK
}

fn put_u64(out: *mut u64, v: Option<u64>) -> Rc {
    match v {
        Some(v) if !out.is_null() => {
            // SAFETY: non-null out-pointer.
            unsafe { *out = v };
            sys::OK
        }
        _ => sys::INVALID,
    }
}

unsafe extern "C" fn parse_size(v: Str, out: *mut u64) -> Rc {
    put_u64(out, crate::config::core::parse_size(s(v)).map(|n| n as u64))
}

unsafe extern "C" fn parse_time_ms(v: Str, out: *mut u64) -> Rc {
    put_u64(out, crate::config::core::parse_duration(s(v)).map(|d| d.as_millis() as u64))
}

unsafe extern "C" fn conf_full_path(c: *mut sys::Conf, p: Str, out: *mut Str) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    c.scratch = crate::config::core::Prefix(c.prefix.clone()).resolve(s(p)).to_string_lossy().into_owned();
    put(out, &c.scratch)
}

unsafe extern "C" fn conf_conf_path(c: *mut sys::Conf, p: Str, out: *mut Str) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    c.scratch = crate::tls::conf_path(&c.conf_dir, s(p)).to_string_lossy().into_owned();
    put(out, &c.scratch)
}

unsafe extern "C" fn conf_add_path(c: *mut sys::Conf, p: Str) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if s(p).is_empty() {
        return sys::INVALID;
    }
    let path = crate::config::core::Prefix(c.prefix.clone()).resolve(s(p));
    c.paths.push(path);
    sys::OK
}

unsafe extern "C" fn conf_block_id(c: *mut sys::Conf) -> u32 {
    cf(c).map_or(0, |c| c.block_id)
}

unsafe extern "C" fn conf_set_block_data(c: *mut sys::Conf, data: *mut c_void) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if c.d.block.is_none() {
        return sys::INVALID;
    }
    c.new_block_data = Some(data);
    sys::OK
}

unsafe extern "C" fn conf_block_data(c: *mut sys::Conf) -> *mut c_void {
    cf(c).map_or(std::ptr::null_mut(), |c| c.block_data)
}

unsafe extern "C" fn conf_block_child(c: *mut sys::Conf, i: usize, out: *mut Str, n: *mut usize) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if n.is_null() {
        return sys::INVALID;
    }
    let Some(child) = c.d.children().get(i) else { return sys::NOT_FOUND };
    // SAFETY: n non-null; out has *n entries per the contract.
    let cap = unsafe { *n };
    let words: Vec<&String> = std::iter::once(&child.name).chain(child.args.iter()).collect();
    for (k, w) in words.iter().enumerate().take(cap) {
        if !out.is_null() {
            // SAFETY: k < cap entries of out; words borrow the config tree,
            // alive for the whole set call.
            unsafe { *out.add(k) = Str::from_bytes(w.as_bytes()) };
        }
    }
    // SAFETY: n non-null.
    unsafe { *n = words.len() };
    sys::OK
}

unsafe extern "C" fn conf_set_content_handler(c: *mut sys::Conf, h: Option<sys::HttpHandlerFn>) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    c.content_handler = h;
    sys::OK
}

/// (1.14) The enclosing server block's `server_name` arguments.
unsafe extern "C" fn conf_server_names(c: *mut sys::Conf, out: *mut Str, n: *mut usize) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    let Some(names) = &c.server_names else { return sys::NOT_FOUND };
    if n.is_null() {
        return sys::INVALID;
    }
    // SAFETY: n is a valid in/out pointer; out has room for *n strings
    // (may be NULL when *n is 0); the strings live as long as cf.
    unsafe {
        let room = *n;
        if !out.is_null() {
            for (i, name) in names.iter().take(room).enumerate() {
                *out.add(i) = Str::from_bytes(name.as_bytes());
            }
        }
        *n = names.len();
    }
    sys::OK
}

/// (1.14) This plugin's configuration for the request's current block.
unsafe extern "C" fn http_conf(r: *mut sys::Request) -> *mut c_void {
    let idx = current().0;
    cell(r)
        .and_then(|c| c.try_borrow().ok().and_then(|r| r.location().confs.get(idx).copied()))
        .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn conf_location(c: *mut sys::Conf, modifier: *mut Str, name: *mut Str) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    let Some((m, n)) = &c.location else { return sys::NOT_FOUND };
    if !modifier.is_null() {
        // SAFETY: non-null out-pointer; the strings live as long as cf.
        unsafe { *modifier = Str::from_bytes(m.as_bytes()) };
    }
    if !name.is_null() {
        // SAFETY: as above.
        unsafe { *name = Str::from_bytes(n.as_bytes()) };
    }
    sys::OK
}

/// (1.2) Builds a TLS context from the plugin's options.
unsafe extern "C" fn conf_tls(c: *mut sys::Conf, opts: *const sys::TlsOpts, out: *mut *mut sys::Tls) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if opts.is_null() || out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes a valid options struct for the call; its
    // `size` says how much of it the plugin knows.
    let o = unsafe { *opts };
    if o.struct_size < std::mem::size_of::<sys::TlsOpts>() {
        return sys::INVALID;
    }
    let path = |x: Str| crate::tls::conf_path(&c.conf_dir, s(x));
    let list = |p: *const Str| -> Vec<Str> {
        if p.is_null() || o.ncertificates == 0 {
            Vec::new()
        } else {
            // SAFETY: ncertificates valid entries for the call.
            unsafe { std::slice::from_raw_parts(p, o.ncertificates) }.to_vec()
        }
    };
    let (certs, keys) = (list(o.certificates), list(o.keys));
    if certs.len() != o.ncertificates || keys.len() != o.ncertificates {
        return sys::INVALID;
    }
    let built = (|| -> Result<super::io::TlsCtx, String> {
        let mut pairs = Vec::new();
        for (cert, key) in certs.iter().zip(&keys) {
            pairs.push(crate::tls::load_key_pair(&path(*cert), &path(*key))?);
        }
        let protocols = match s(o.protocols) {
            "" => crate::tls::DEFAULT_PROTOCOLS,
            p => crate::tls::parse_protocols(&p.split_whitespace().collect::<Vec<_>>())?,
        };
        let ciphers = match s(o.ciphers) {
            "" => crate::tls::DEFAULT_CIPHERS.to_string(),
            x => x.to_string(),
        };
        if o.flags & sys::TLS_SERVER != 0 {
            if pairs.is_empty() {
                return Err("a TLS server needs a certificate".into());
            }
            let opts = crate::tls::ServerOpts {
                protocols,
                ciphers,
                tickets: o.flags & sys::TLS_NO_TICKETS == 0,
                ..Default::default()
            };
            return Ok(super::io::TlsCtx::Server(crate::tls::server_config(pairs, &opts)?));
        }
        if pairs.len() > 1 {
            return Err("a TLS client presents at most one certificate".into());
        }
        let verify = o.flags & sys::TLS_VERIFY != 0;
        let trusted = match s(o.trusted_certificate) {
            "" if verify => return Err("no trusted certificate for verification".into()),
            "" => None,
            t => Some(crate::tls::conf_path(&c.conf_dir, t)),
        };
        let opts = crate::tls::ClientOpts {
            verify,
            trusted,
            sni: o.flags & sys::TLS_SNI != 0,
            reuse: o.flags & sys::TLS_NO_REUSE == 0,
            protocols,
            ciphers,
            identity: pairs.pop(),
        };
        Ok(super::io::TlsCtx::Client(crate::tls::client_config(&opts)?))
    })();
    match built {
        Ok(ctx) => {
            let b = Box::new(ctx);
            let p = super::io::TlsCtx::register(&b);
            c.tls.push(b);
            // SAFETY: non-null out-pointer.
            unsafe { *out = p };
            sys::OK
        }
        Err(e) => {
            c.error = Some(e);
            sys::ERROR
        }
    }
}

unsafe extern "C" fn worker_slot() -> i32 {
    SLOT.with(Cell::get)
}

unsafe extern "C" fn supports(off: usize) -> bool {
    IMPLEMENTED.contains(&off)
}

/// Copies `v` into request-lifetime memory and points `out` at it.
fn put_owned(r: &mut Req, out: *mut Str, v: &[u8]) -> Rc {
    if out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: out is non-null; arena memory stays put until the request
    // ends.
    unsafe { *out = Str { data: r.arena.copy(v), len: v.len() } };
    sys::OK
}

unsafe extern "C" fn http_get(r: *mut sys::Request, what: u32, out: *mut Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    if what == sys::REQ_ERROR_PAGES {
        let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
        let mut codes = String::new();
        for p in &r.location().core.error_pages {
            for code in &p.codes {
                if !codes.is_empty() {
                    codes.push(' ');
                }
                codes.push_str(&code.to_string());
            }
        }
        return put_owned(&mut r, out, codes.as_bytes());
    }
    let Ok(r) = c.try_borrow() else { return sys::INVALID };
    let v: &str = match what {
        sys::REQ_METHOD => &r.method,
        sys::REQ_URI => &r.uri,
        sys::REQ_ARGS => &r.args,
        sys::REQ_REQUEST_URI => &r.request_uri,
        sys::REQ_PROTOCOL => r.protocol(),
        sys::REQ_HOST => &r.host,
        sys::REQ_REMOTE_ADDR => &r.remote_addr,
        sys::REQ_CONTENT_TYPE => r.location().core.content_type(&r.uri),
        sys::REQ_URI_REWRITTEN => {
            if r.uri_rewritten {
                "1"
            } else {
                ""
            }
        }
        _ => return sys::INVALID,
    };
    put(out, v)
}

unsafe extern "C" fn http_header_in(r: *mut sys::Request, name: Str, out: *mut Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(r) = c.try_borrow() else { return sys::INVALID };
    match r.header_in(s(name)) {
        Some(v) => put(out, v),
        None => sys::NOT_FOUND,
    }
}

unsafe extern "C" fn http_headers_in(r: *mut sys::Request, names: *const Str, values: *mut Str, n: usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(r) = c.try_borrow() else { return sys::INVALID };
    if n == 0 {
        return sys::OK;
    }
    if names.is_null() || values.is_null() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes n names and room for n values for the call.
    let (names, values) = unsafe { (std::slice::from_raw_parts(names, n), std::slice::from_raw_parts_mut(values, n)) };
    values.fill(Str::empty());
    // One pass over the request's headers, matching each against the
    // names still unanswered (the first of each name wins).
    for (k, v) in &r.headers_in {
        for (name, out) in names.iter().zip(values.iter_mut()) {
            if out.data.is_null() && name.len == k.len() && s(*name).eq_ignore_ascii_case(k) {
                *out = Str::from_bytes(v.as_bytes());
            }
        }
    }
    sys::OK
}

unsafe extern "C" fn http_header_in_at(r: *mut sys::Request, i: usize, name: *mut Str, value: *mut Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(r) = c.try_borrow() else { return sys::INVALID };
    let Some((k, v)) = r.headers_in.get(i) else { return sys::NOT_FOUND };
    put(name, k);
    put(value, v)
}

unsafe extern "C" fn http_set_status(r: *mut sys::Request, status: u32) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if r.header_sent || !(100..600).contains(&status) {
        return sys::INVALID;
    }
    r.status = status as u16;
    sys::OK
}

unsafe extern "C" fn http_status(r: *mut sys::Request) -> u32 {
    cell(r).and_then(|c| c.try_borrow().ok().map(|r| r.status as u32)).unwrap_or(0)
}

unsafe extern "C" fn http_header_out_add(r: *mut sys::Request, name: Str, value: Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let Some((n, v)) = header_line(name, value).filter(|_| !r.header_sent) else { return sys::INVALID };
    // The first Content-Length says the length (send_header renders it).
    if n.len() == 14 && n.eq_ignore_ascii_case("content-length") && r.header_out(n).is_none() {
        if let Ok(cl) = v.trim_ascii().parse() {
            r.content_length = Some(cl);
        }
    }
    // An upstream's own Server or Date, passed on: the host writes it
    // instead of its own.
    match n.len() {
        6 if n.eq_ignore_ascii_case("server") => r.own_server_date |= 1,
        4 if n.eq_ignore_ascii_case("date") => r.own_server_date |= 2,
        _ => {}
    }
    let (n, v) = (r.text(n), r.text(v));
    r.headers_out.push((n, v));
    sys::OK
}

/// A header line a plugin passes, as text: None when it could split the
/// response (a name that is not a token, CR, LF or NUL in the value).
fn header_line(name: Str, value: Str) -> Option<(&'static str, &'static str)> {
    // SAFETY: plugins pass strings valid for the call; the results are
    // used only within it (the host copies what it keeps).
    let (n, v) = unsafe { (name.as_bytes(), value.as_bytes()) };
    if !crate::http::parse::header_name(n) {
        return None;
    }
    // SAFETY: header_name() accepts ASCII only.
    let n = unsafe { std::str::from_utf8_unchecked(n) };
    if let Some(v) = crate::http::parse::plain_str(v) {
        return Some((n, v));
    }
    memchr::memchr3(b'\r', b'\n', 0, v).is_none().then(|| (n, s(value)))
}

unsafe extern "C" fn http_header_out_set(r: *mut sys::Request, name: Str, value: Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let Some((n, v)) = header_line(name, value).filter(|_| !r.header_sent) else { return sys::INVALID };
    set_header_out(&mut r, n, (!value.data.is_null()).then_some(v));
    sys::OK
}

/// Replaces every response header `n` by one with value `v` (None: removes them).
#[inline]
fn set_header_out(r: &mut Req, n: &str, v: Option<&str>) {
    // Usually the name is new: a plain scan says so without retain()'s
    // moving machinery.
    if r.headers_out.iter().any(|(k, _)| k.eq_ignore_ascii_case(n)) {
        r.headers_out.retain(|(k, _)| !k.eq_ignore_ascii_case(n));
    }
    if n.len() == 14 && n.eq_ignore_ascii_case("content-length") {
        r.content_length = v.and_then(|v| v.trim().parse().ok());
    }
    if let Some(v) = v {
        let (n, v) = (r.text(n), r.text(v));
        r.headers_out.push((n, v));
    }
}

unsafe extern "C" fn http_headers_out_set(r: *mut sys::Request, h: *const sys::Header, n: usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if n > 0 && h.is_null() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes n valid lines for the call.
    let list = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(h, n) } };
    if r.header_sent {
        return sys::INVALID;
    }
    // Every line checked before any is set: into room on the stack for a
    // typical batch, on the heap for a longer one.
    const ROOM: usize = 16;
    let mut room = [("", None); ROOM];
    let mut heap = Vec::new();
    let lines: &mut [(&str, Option<&str>)] = if n <= ROOM {
        &mut room[..n]
    } else {
        heap.resize(n, ("", None));
        &mut heap
    };
    for (l, out) in list.iter().zip(lines.iter_mut()) {
        let Some((k, v)) = header_line(l.name, l.value) else { return sys::INVALID };
        *out = (k, (!l.value.data.is_null()).then_some(v));
    }
    for &(k, v) in lines.iter() {
        set_header_out(&mut r, k, v);
    }
    sys::OK
}

unsafe extern "C" fn http_header_out(r: *mut sys::Request, name: Str, out: *mut Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(r) = c.try_borrow() else { return sys::INVALID };
    match r.header_out(s(name)) {
        Some(v) => put(out, v),
        None => sys::NOT_FOUND,
    }
}

unsafe extern "C" fn http_send_header(r: *mut sys::Request) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    if c.try_borrow().is_err() {
        return sys::INVALID;
    }
    if c.borrow().header_sent {
        return sys::OK;
    }
    if hreq::send_header(c) {
        sys::OK
    } else {
        sys::ERROR
    }
}

fn bufs<'a>(p: *const sys::Buf, n: usize) -> Option<&'a [sys::Buf]> {
    if n == 0 {
        return Some(&[]);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: the plugin passes n valid buffers for the call.
    Some(unsafe { std::slice::from_raw_parts(p, n) })
}

unsafe extern "C" fn http_send_body(r: *mut sys::Request, b: *const sys::Buf, n: usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Some(list) = bufs(b, n) else { return sys::INVALID };
    {
        let Ok(mut req) = c.try_borrow_mut() else { return sys::INVALID };
        if req.body_done_out {
            return sys::GONE;
        }
        // A whole body in one call: its length is known up front.
        if !req.header_sent && req.content_length.is_none() && list.iter().any(|b| b.flags & sys::BUF_LAST != 0) {
            let total: u64 = list.iter().map(|b| if b.flags & sys::BUF_FILE != 0 { b.file_len.max(0) as u64 } else { b.len as u64 }).sum();
            if req.header_out("content-length").is_none() {
                req.content_length = Some(total);
            }
        }
    }
    if !c.borrow().header_sent && !hreq::send_header(c) {
        return sys::ERROR;
    }
    let rc = hreq::body_chain(c, 0, list);
    crate::http::wake(c.borrow().conn);
    rc
}

unsafe extern "C" fn http_next_body_filter(r: *mut sys::Request, b: *const sys::Buf, n: usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Some(list) = bufs(b, n) else { return sys::INVALID };
    let Ok(pos) = c.try_borrow().map(|r| r.filter_pos) else { return sys::INVALID };
    hreq::body_chain(c, pos, list)
}

unsafe extern "C" fn http_alloc(r: *mut sys::Request, size: usize) -> *mut c_void {
    let Some(c) = cell(r) else { return std::ptr::null_mut() };
    let Ok(mut r) = c.try_borrow_mut() else { return std::ptr::null_mut() };
    r.arena.alloc(size, true).cast()
}

/// A request's per-plugin state list: `ctx` (ended by internal
/// redirects) or `data` (kept).
type PluginStates = Vec<(usize, *mut c_void, Option<sys::FreeFn>)>;

/// Sets the calling plugin's entry in the list `pick` chooses.
fn set_state(r: *mut sys::Request, p: *mut c_void, f: Option<sys::FreeFn>, pick: for<'x> fn(&'x mut Req<'static>) -> &'x mut PluginStates) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let idx = current().0;
    let list = pick(&mut r);
    list.retain(|(i, _, _)| *i != idx);
    list.push((idx, p, f));
    sys::OK
}

/// The calling plugin's entry in the list `pick` chooses, or NULL.
fn get_state(r: *mut sys::Request, pick: for<'x> fn(&'x Req<'static>) -> &'x PluginStates) -> *mut c_void {
    let idx = current().0;
    cell(r)
        .and_then(|c| c.try_borrow().ok().and_then(|r| pick(&r).iter().find(|(i, _, _)| *i == idx).map(|c| c.1)))
        .unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn http_set_ctx(r: *mut sys::Request, ctx: *mut c_void, f: Option<sys::FreeFn>) -> Rc {
    set_state(r, ctx, f, |r| &mut r.ctx)
}

unsafe extern "C" fn http_set_data(r: *mut sys::Request, data: *mut c_void, f: Option<sys::FreeFn>) -> Rc {
    set_state(r, data, f, |r| &mut r.data)
}

unsafe extern "C" fn http_data(r: *mut sys::Request) -> *mut c_void {
    get_state(r, |r| &r.data)
}

unsafe extern "C" fn http_gzip_ok(r: *mut sys::Request, flags: u32) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if flags & sys::GZIP_VARY != 0 {
        r.gzip_vary = true;
    }
    if crate::http::request::gzip_ok(&mut r) {
        sys::OK
    } else {
        sys::DECLINED
    }
}

unsafe extern "C" fn stats(out: *mut u64, n: usize) -> usize {
    let t = crate::stats::totals();
    let n = n.min(t.len());
    if n > 0 && out.is_null() {
        return 0;
    }
    for (i, v) in t.iter().take(n).enumerate() {
        // SAFETY: the caller gives room for n values.
        unsafe { *out.add(i) = *v };
    }
    n
}

unsafe extern "C" fn http_ctx(r: *mut sys::Request) -> *mut c_void {
    get_state(r, |r| &r.ctx)
}

/// A plugin variable's getter: for its whole name, or for a family (with
/// the prefix's length).
#[derive(Clone, Copy)]
enum Getter {
    Whole(sys::VarFn),
    Family(sys::PrefixVarFn, usize),
}

unsafe extern "C" fn http_var(r: *mut sys::Request, name: Str, out: *mut Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let n = s(name);
    // Plugin-defined variables run plugin code: no borrow is held.
    let def = c.try_borrow().ok().and_then(|req| {
        if req.vars.iter().any(|(k, _)| k == n) {
            return None;
        }
        let cy = req.cycle();
        let exact = cy.plugins.vars.iter().find(|v| v.0 == n).map(|v| (v.1, Getter::Whole(v.2), v.3, cy));
        exact.or_else(|| {
            if cy.plugins.prefix_first & (1 << (n.as_bytes().first()? & 0x7f)) == 0 {
                return None;
            }
            let v = cy.plugins.prefix_vars.iter().find(|v| n.len() > v.0.len() && n.starts_with(v.0.as_str()))?;
            Some((v.1, Getter::Family(v.2, v.0.len()), v.3, cy))
        })
    });
    if let Some((pi, get, data, cy)) = def {
        let mut tmp = Str::empty();
        let pname = &cy.plugins.list[pi].name;
        // SAFETY: get/data come from the plugin's conf_define_variable(_prefix);
        // the rest of the name is borrowed for the call.
        let rc = with_plugin(pi, pname, || unsafe {
            match get {
                Getter::Whole(get) => get(r, data, &mut tmp),
                Getter::Family(get, at) => get(r, data, Str::from_bytes(&n.as_bytes()[at..]), &mut tmp),
            }
        });
        if rc != sys::OK {
            return sys::NOT_FOUND;
        }
        let bytes = if tmp.data.is_null() { Vec::new() } else { tmp.as_bytes().to_vec() };
        let Ok(mut req) = c.try_borrow_mut() else { return sys::INVALID };
        return put_owned(&mut req, out, &bytes);
    }
    let Ok(mut req) = c.try_borrow_mut() else { return sys::INVALID };
    // The value is rendered into a scratch string kept by the worker, then
    // copied into request memory.
    thread_local!(static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) });
    SCRATCH.with(|v| {
        let Ok(mut v) = v.try_borrow_mut() else { return sys::INVALID };
        v.clear();
        if !crate::http::vars::get(&req, n, &mut v) {
            return sys::NOT_FOUND;
        }
        put_owned(&mut req, out, v.as_bytes())
    })
}

unsafe extern "C" fn http_var_set(r: *mut sys::Request, name: Str, value: Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let (n, v) = (s(name), String::from_utf8_lossy(value.as_bytes()).into_owned());
    if n.is_empty() {
        return sys::INVALID;
    }
    match n {
        // (1.5) A client address another part of the path reported
        // (realip): this request's $remote_addr; the connection's stays
        // $realip_remote_addr.
        "remote_addr" => match v.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let text = ip.to_string();
                if r.real_addr.is_none() {
                    let own = std::mem::replace(&mut r.remote_addr, text);
                    r.real_addr = Some(own);
                } else {
                    r.remote_addr = text;
                }
            }
            Err(_) => return sys::INVALID,
        },
        // (1.14) The client's port with such an address (a PROXY
        // protocol header's).
        "remote_port" => match v.parse::<u16>() {
            Ok(p) => r.real_port = Some(p),
            Err(_) => return sys::INVALID,
        },
        "uri" => r.uri = v,
        "args" | "query_string" => r.args = v,
        // (1.11) An X-Accel-Redirect makes the request a GET, as nginx.
        "request_method" if !v.is_empty() && v.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-') => r.method = v,
        // `set $limit_rate 100k`, an upstream's X-Accel-Limit-Rate. A
        // value that is not a size is logged and changes nothing (nginx).
        "limit_rate" => match crate::config::core::parse_size(v.trim()) {
            Some(n) => r.limit_rate_set = Some(n as u64),
            None => crate::log!(Error, "invalid $limit_rate \"{v}\""),
        },
        _ if crate::http::vars::is_core(n) || r.cycle().plugins.vars.iter().any(|x| x.0 == n) || r.cycle().plugins.prefix_vars.iter().any(|x| n.starts_with(x.0.as_str())) => return sys::INVALID,
        _ => {
            if let Some(slot) = r.vars.iter_mut().find(|(k, _)| k == n) {
                slot.1 = v;
            } else {
                r.vars.push((n.to_string(), v));
            }
        }
    }
    sys::OK
}

unsafe extern "C" fn http_set_uri(r: *mut sys::Request, uri: Str, args: Str, flags: u32) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let u = uri.as_bytes();
    if u.first() != Some(&b'/') || !matches!(r.phase, sys::PHASE_SERVER_REWRITE | sys::PHASE_REWRITE) {
        return sys::INVALID;
    }
    r.uri.clear();
    r.uri.push_str(&String::from_utf8_lossy(u));
    if !args.data.is_null() {
        r.args.clear();
        r.args.push_str(&String::from_utf8_lossy(args.as_bytes()));
    }
    if r.phase == sys::PHASE_REWRITE {
        r.uri_changed = flags & sys::URI_RELOCATE != 0;
        r.uri_rewritten = !r.uri_changed;
    }
    sys::OK
}

unsafe extern "C" fn http_enter_block(r: *mut sys::Request, id: u32) -> *mut c_void {
    let Some(c) = cell(r) else { return std::ptr::null_mut() };
    let Ok(mut r) = c.try_borrow_mut() else { return std::ptr::null_mut() };
    if !matches!(r.phase, sys::PHASE_SERVER_REWRITE | sys::PHASE_REWRITE) {
        return std::ptr::null_mut();
    }
    let Some(loc) = r.server().cond_block(id) else { return std::ptr::null_mut() };
    r.loc = loc;
    r.location().confs.get(current().0).copied().unwrap_or(std::ptr::null_mut())
}

unsafe extern "C" fn http_subrequest(r: *mut sys::Request, uri: Str, args: Str, out: *mut *mut sys::Request) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let u = s(uri);
    if out.is_null() || !u.starts_with('/') || r.is_sub || r.waiting_sub || r.run == hreq::Run::Finalized {
        return sys::INVALID;
    }
    let a = if args.data.is_null() { "" } else { s(args) };
    let sub = Box::new(RefCell::new(r.subrequest(u, a)));
    r.free_sub();
    let h = register_request(&sub);
    sub.borrow_mut().handle = h;
    r.sub = Some(sub);
    r.waiting_sub = true;
    // SAFETY: non-null out-pointer.
    unsafe { *out = h as *mut sys::Request };
    sys::OK
}

unsafe extern "C" fn http_read_body(r: *mut sys::Request, done: Option<sys::DoneFn>, data: *mut c_void) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let idx = current().0;
    hreq::start_body(&mut r, done.map(|f| (idx, f, data)))
}

unsafe extern "C" fn http_body(r: *mut sys::Request, out: *mut *const sys::Buf, n: *mut usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if out.is_null() || n.is_null() {
        return sys::INVALID;
    }
    if r.body_state != hreq::BodyIn::Done {
        return sys::AGAIN;
    }
    r.body_buf = match &r.body_file {
        // In a temporary file: one file region (the fd lives with the
        // request).
        Some(f) => sys::Buf {
            data: std::ptr::null(),
            len: 0,
            fd: std::os::fd::AsRawFd::as_raw_fd(&f.file),
            flags: sys::BUF_LAST | sys::BUF_FILE,
            file_pos: 0,
            file_len: f.len as i64,
        },
        None => sys::Buf { data: r.body_in.as_ptr(), len: r.body_in.len(), fd: -1, flags: sys::BUF_LAST, file_pos: 0, file_len: 0 },
    };
    // SAFETY: out-pointers checked non-null; body_buf lives in the request.
    unsafe {
        *out = &r.body_buf;
        *n = 1;
    }
    sys::OK
}

unsafe extern "C" fn http_internal_redirect(r: *mut sys::Request, uri: Str, args: Str) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    let u = s(uri);
    if r.header_sent || u.is_empty() || !(u.starts_with('/') || u.starts_with('@')) {
        return sys::INVALID;
    }
    r.redirect = Some(hreq::Redirect { uri: u.to_string(), args: s(args).to_string() });
    crate::http::wake(r.conn);
    sys::OK
}

unsafe extern "C" fn http_resume(r: *mut sys::Request) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    r.resume = true;
    crate::http::wake(r.conn);
    sys::OK
}

unsafe extern "C" fn http_finalize(r: *mut sys::Request, rc: Rc) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if r.run == hreq::Run::Finalized {
        return sys::GONE;
    }
    r.finalize = Some(rc);
    crate::http::wake(r.conn);
    sys::OK
}

unsafe extern "C" fn http_output_queued(r: *mut sys::Request) -> usize {
    let Some(c) = cell(r) else { return 0 };
    c.try_borrow().map_or(0, |r| r.queued())
}

unsafe extern "C" fn http_resume_when_drained(r: *mut sys::Request, limit: usize) -> Rc {
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if r.queued() <= limit {
        return sys::OK;
    }
    r.drain_limit = Some(limit);
    sys::AGAIN
}

unsafe extern "C" fn relay(r: *mut sys::Request, a: *mut sys::Conn, b: *mut sys::Conn, done: Option<sys::DoneFn>, data: *mut c_void) -> Rc {
    if r.is_null() {
        // SAFETY: forwarded as received.
        return unsafe { super::io::relay_conns(a, b, done, data) };
    }
    let Some(c) = cell(r) else { return sys::GONE };
    let Ok(mut r) = c.try_borrow_mut() else { return sys::INVALID };
    if !r.header_sent || r.relay.is_some() || r.run == hreq::Run::Finalized {
        return sys::INVALID;
    }
    let rc = super::io::attach_http(b, r.conn);
    if rc != sys::OK {
        return rc;
    }
    let (plugin, _) = current();
    r.relay = Some((b as usize, plugin, done, data));
    crate::http::wake(r.conn);
    sys::OK
}

// Slots implemented by later issues answer UNSUPPORTED (never NULL, so a C
// plugin that skips supports() gets an error code, not a crash).
/// A variable name (or a family's prefix) a plugin may define.
fn var_name(n: &str) -> Option<String> {
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then(|| n.to_string())
}

unsafe extern "C" fn conf_define_variable(c: *mut sys::Conf, name: Str, get: Option<sys::VarFn>, data: *mut c_void) -> Rc {
    let (Some(c), Some(get), Some(n)) = (cf(c), get, var_name(s(name))) else { return sys::INVALID };
    c.vars.push((n, get, data));
    sys::OK
}

unsafe extern "C" fn conf_define_variable_prefix(c: *mut sys::Conf, prefix: Str, get: Option<sys::PrefixVarFn>, data: *mut c_void) -> Rc {
    let (Some(c), Some(get), Some(n)) = (cf(c), get, var_name(s(prefix))) else { return sys::INVALID };
    c.prefix_vars.push((n, get, data));
    sys::OK
}

unsafe extern "C" fn conf_shm_zone(c: *mut sys::Conf, name: Str, size: u64, version: u32, out: *mut *mut sys::Shm) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    if out.is_null() || s(name).is_empty() {
        return sys::INVALID;
    }
    match crate::shm::zone(current().1, s(name), size, version) {
        Ok(z) => {
            // SAFETY: out is non-null; the Zone lives in an Rc kept by the
            // generation (and the zone registry) for as long as its handle
            // can be used.
            unsafe { *out = std::rc::Rc::as_ptr(&z) as *mut sys::Shm };
            c.zones.push(z);
            sys::OK
        }
        Err(e) => {
            c.error = Some(e);
            sys::ERROR
        }
    }
}

fn zone<'a>(z: *mut sys::Shm) -> Option<&'a crate::shm::Zone> {
    // SAFETY: handles are Rc<Zone> pointers kept alive by the generation.
    unsafe { (z as *const crate::shm::Zone).as_ref() }
}

unsafe extern "C" fn shm_addr(z: *mut sys::Shm, addr: *mut *mut c_void, size: *mut u64) -> Rc {
    let Some(z) = zone(z) else { return sys::INVALID };
    let (p, n) = z.user();
    if !addr.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *addr = p.cast() };
    }
    if !size.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *size = n };
    }
    sys::OK
}

unsafe extern "C" fn shm_is_new(z: *mut sys::Shm) -> bool {
    zone(z).is_some_and(|z| z.is_new.get())
}

unsafe extern "C" fn shm_lock(z: *mut sys::Shm) {
    if let Some(z) = zone(z) {
        z.lock();
    }
}

unsafe extern "C" fn shm_unlock(z: *mut sys::Shm) {
    if let Some(z) = zone(z) {
        z.unlock();
    }
}
unsafe extern "C" fn conf_listen(c: *mut sys::Conf, addr: Str, ssl: bool, cb: Option<sys::AcceptFn>, data: *mut c_void) -> Rc {
    let Some(c) = cf(c) else { return sys::INVALID };
    let Some(cb) = cb else { return sys::INVALID };
    if ssl {
        c.error = Some("TLS on plugin listeners is not supported by this host yet".into());
        return sys::UNSUPPORTED;
    }
    let mut d = c.d.clone();
    d.name = "listen".into();
    d.args = vec![s(addr).to_string()];
    d.block = None;
    match crate::config::core::parse_listen(&d) {
        Ok((l, _)) => {
            c.listens.push((l.addr, cb, data));
            sys::OK
        }
        Err(e) => {
            c.error = Some(e.msg);
            sys::INVALID
        }
    }
}

/// A helper process a plugin asked for in init_cycle.
#[derive(Clone)]
pub struct HelperSpec {
    /// Plugin index.
    pub plugin: usize,
    /// Plugin name.
    pub plugin_name: String,
    /// The helper's name (for logs and the process title).
    pub name: String,
    /// Its main function.
    pub run: sys::HelperFn,
    /// Its argument.
    pub data: *mut c_void,
}

thread_local! {
    static HELPERS: std::cell::RefCell<Vec<HelperSpec>> = const { std::cell::RefCell::new(Vec::new()) };
    static IN_INIT_CYCLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with spawn_helper allowed, returning the helpers requested.
pub fn collect_helpers(f: impl FnOnce() -> Result<(), String>) -> Result<Vec<HelperSpec>, String> {
    IN_INIT_CYCLE.with(|c| c.set(true));
    let r = f();
    IN_INIT_CYCLE.with(|c| c.set(false));
    let list = HELPERS.with(|h| std::mem::take(&mut *h.borrow_mut()));
    r.map(|()| list)
}

unsafe extern "C" fn spawn_helper(_cy: *mut sys::Cycle, name: Str, run: Option<sys::HelperFn>, data: *mut c_void) -> Rc {
    if !IN_INIT_CYCLE.with(Cell::get) {
        return sys::INVALID;
    }
    let Some(run) = run else { return sys::INVALID };
    let (plugin, pname) = current();
    let name = s(name).to_string();
    if name.is_empty() {
        return sys::INVALID;
    }
    HELPERS.with(|h| h.borrow_mut().push(HelperSpec { plugin, plugin_name: pname.to_string(), name, run, data }));
    sys::OK
}

unsafe extern "C" fn run_loop(_cy: *mut sys::Cycle) {
    crate::worker::helper_loop();
}
unsafe extern "C" fn un_tls(_: *mut sys::Conn, _: Str, _: bool, _: Option<sys::ConnFn>, _: *mut c_void) -> Rc {
    sys::UNSUPPORTED
}

macro_rules! offsets {
    ($($f:ident),*) => { [$(std::mem::offset_of!(sys::Host, $f)),*] };
}

/// Byte offsets of the slots this host implements (for `supports`).
const IMPLEMENTED: [usize; 78] = offsets!(
    http_conf, conf_server_names, http_gzip_ok, stats, http_set_data, http_data, http_subrequest, conf_define_variable_prefix, conn_set_idle, conf_block_id, http_enter_block, conf_add_path, conf_conf_path, http_set_uri, http_headers_in, http_headers_out_set, conf_open_file, file_write, conf_tls, conn_tls, conn_tls_info, conn_connect, relay, conn_error, http_output_queued, http_resume_when_drained, conf_location,
    conf_define_variable, http_next_body_filter, http_var_set, http_read_body, http_body,
    http_internal_redirect, http_resume, http_finalize,
    conf_listen, spawn_helper, run_loop, timer_add, timer_cancel, conn_watch, conn_read, conn_write,
    conn_peer, conn_close,
    conf_shm_zone, shm_addr, shm_is_new, shm_lock, shm_unlock,
    log, conf_error, conf_position, parse_flag, parse_size, parse_time_ms, conf_full_path,
    conf_set_block_data, conf_block_data, conf_block_child, conf_set_content_handler, worker_slot,
    http_get, http_header_in, http_header_in_at, http_set_status, http_status, http_header_out_add,
    http_header_out_set, http_header_out, http_send_header, http_send_body, http_alloc,
    http_set_ctx, http_ctx, http_var, supports, version
);

struct Table(sys::Host);
// SAFETY: the table is immutable after construction and holds only
// function pointers and a pointer to a static string.
unsafe impl Sync for Table {}

static VERSION: &str = concat!("ngxr/", env!("CARGO_PKG_VERSION"), "\0");

static TABLE: Table = Table(sys::Host {
    struct_size: std::mem::size_of::<sys::Host>() as u32,
    abi_major: sys::ABI_MAJOR,
    abi_minor: sys::ABI_MINOR,
    reserved: 0,
    version: VERSION.as_ptr().cast(),
    supports: Some(supports),
    log: Some(log),
    conf_error: Some(conf_error),
    conf_position: Some(conf_position),
    parse_flag: Some(parse_flag),
    parse_size: Some(parse_size),
    parse_time_ms: Some(parse_time_ms),
    conf_full_path: Some(conf_full_path),
    conf_set_block_data: Some(conf_set_block_data),
    conf_block_data: Some(conf_block_data),
    conf_block_child: Some(conf_block_child),
    conf_set_content_handler: Some(conf_set_content_handler),
    conf_define_variable: Some(conf_define_variable),
    conf_shm_zone: Some(conf_shm_zone),
    conf_listen: Some(conf_listen),
    spawn_helper: Some(spawn_helper),
    run_loop: Some(run_loop),
    worker_slot: Some(worker_slot),
    http_get: Some(http_get),
    http_header_in: Some(http_header_in),
    http_header_in_at: Some(http_header_in_at),
    http_set_status: Some(http_set_status),
    http_status: Some(http_status),
    http_header_out_add: Some(http_header_out_add),
    http_header_out_set: Some(http_header_out_set),
    http_header_out: Some(http_header_out),
    http_send_header: Some(http_send_header),
    http_send_body: Some(http_send_body),
    http_next_body_filter: Some(http_next_body_filter),
    http_alloc: Some(http_alloc),
    http_set_ctx: Some(http_set_ctx),
    http_ctx: Some(http_ctx),
    http_var: Some(http_var),
    http_var_set: Some(http_var_set),
    http_read_body: Some(http_read_body),
    http_body: Some(http_body),
    http_internal_redirect: Some(http_internal_redirect),
    http_resume: Some(http_resume),
    http_finalize: Some(http_finalize),
    timer_add: Some(super::io::timer_add),
    timer_cancel: Some(super::io::timer_cancel),
    conn_connect: Some(super::io::conn_connect),
    conn_watch: Some(super::io::conn_watch),
    conn_read: Some(super::io::conn_read),
    conn_write: Some(super::io::conn_write),
    conn_start_tls: Some(un_tls),
    conn_peer: Some(super::io::conn_peer),
    conn_close: Some(super::io::conn_close),
    relay: Some(relay),
    shm_addr: Some(shm_addr),
    shm_is_new: Some(shm_is_new),
    shm_lock: Some(shm_lock),
    shm_unlock: Some(shm_unlock),
    conn_error: Some(super::io::conn_error),
    http_output_queued: Some(http_output_queued),
    http_resume_when_drained: Some(http_resume_when_drained),
    conf_location: Some(conf_location),
    conf_tls: Some(conf_tls),
    conn_tls: Some(super::io::conn_tls),
    conn_tls_info: Some(super::io::conn_tls_info),
    conf_open_file: Some(super::files::conf_open_file),
    file_write: Some(super::files::file_write),
    http_headers_in: Some(http_headers_in),
    http_headers_out_set: Some(http_headers_out_set),
    http_set_uri: Some(http_set_uri),
    conf_conf_path: Some(conf_conf_path),
    conf_add_path: Some(conf_add_path),
    conf_block_id: Some(conf_block_id),
    http_enter_block: Some(http_enter_block),
    conn_set_idle: Some(super::io::conn_set_idle),
    conf_define_variable_prefix: Some(conf_define_variable_prefix),
    http_subrequest: Some(http_subrequest),
    http_set_data: Some(http_set_data),
    http_data: Some(http_data),
    stats: Some(stats),
    http_gzip_ok: Some(http_gzip_ok),
    http_conf: Some(http_conf),
    conf_server_names: Some(conf_server_names),
});

/// The host table handed to every plugin.
pub fn table() -> *const sys::Host {
    &TABLE.0
}
