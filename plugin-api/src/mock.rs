//! A mock host for unit-testing plugins without a server.
//!
//! ```ignore
//! let mut req = mock::MockRequest::get("/hello");
//! let status = mock::run::<MyPlugin>(Phase::Content, &MyConf::default(), &mut req);
//! assert_eq!(req.status, 200);
//! ```

use crate::sys::{self, Rc, Str};
use crate::{Phase, Plugin, Request, Status};
use std::ffi::c_void;

/// A request as the mock host sees it, and the response a handler made.
#[derive(Debug, Default, Clone)]
pub struct MockRequest {
    /// Method.
    pub method: String,
    /// `$uri`.
    pub uri: String,
    /// `$args`.
    pub args: String,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Response status set (0 = none).
    pub status: u16,
    /// Response headers added.
    pub headers_out: Vec<(String, String)>,
    /// Response body sent.
    pub body: Vec<u8>,
    /// True once a buffer marked last was sent.
    pub finished: bool,
}

impl MockRequest {
    /// A GET for `uri` (a query string after `?` goes to `args`).
    pub fn get(uri: &str) -> MockRequest {
        let (path, args) = uri.split_once('?').unwrap_or((uri, ""));
        MockRequest { method: "GET".into(), uri: path.into(), args: args.into(), ..Default::default() }
    }

    /// The first response header `name`.
    pub fn header_out(&self, name: &str) -> Option<&str> {
        self.headers_out.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn me<'a>(r: *mut sys::Request) -> &'a mut MockRequest {
    // SAFETY: the mock host only ever hands out pointers to MockRequests
    // that live across the handler call in `run`.
    unsafe { &mut *(r as *mut MockRequest) }
}

fn bytes<'a>(s: Str) -> &'a str {
    // SAFETY: the plugin passes strings valid for the call.
    unsafe { crate::rt::str_of(s) }
}

unsafe extern "C" fn log(level: u32, msg: Str) {
    eprintln!("[mock log {level}] {}", bytes(msg));
}

unsafe extern "C" fn http_get(r: *mut sys::Request, what: u32, out: *mut Str) -> Rc {
    let m = me(r);
    let s = match what {
        sys::REQ_METHOD => &m.method,
        sys::REQ_URI => &m.uri,
        sys::REQ_ARGS => &m.args,
        _ => return sys::NOT_FOUND,
    };
    // SAFETY: out is a valid out-pointer; the string lives in the request.
    unsafe { *out = Str::from_bytes(s.as_bytes()) };
    sys::OK
}

unsafe extern "C" fn header_in(r: *mut sys::Request, name: Str, out: *mut Str) -> Rc {
    let m = me(r);
    match m.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(bytes(name))) {
        Some((_, v)) => {
            // SAFETY: as in http_get.
            unsafe { *out = Str::from_bytes(v.as_bytes()) };
            sys::OK
        }
        None => sys::NOT_FOUND,
    }
}

unsafe extern "C" fn set_status(r: *mut sys::Request, status: u32) -> Rc {
    me(r).status = status as u16;
    sys::OK
}

unsafe extern "C" fn header_out_add(r: *mut sys::Request, name: Str, value: Str) -> Rc {
    me(r).headers_out.push((bytes(name).to_string(), bytes(value).to_string()));
    sys::OK
}

unsafe extern "C" fn header_out_set(r: *mut sys::Request, name: Str, value: Str) -> Rc {
    let m = me(r);
    m.headers_out.retain(|(k, _)| !k.eq_ignore_ascii_case(bytes(name)));
    if !value.data.is_null() {
        m.headers_out.push((bytes(name).to_string(), bytes(value).to_string()));
    }
    sys::OK
}

unsafe extern "C" fn headers_out_set(r: *mut sys::Request, h: *const sys::Header, n: usize) -> Rc {
    // SAFETY: the plugin passes n valid lines for the call.
    for l in unsafe { std::slice::from_raw_parts(h, n) } {
        // SAFETY: forwarded.
        unsafe { header_out_set(r, l.name, l.value) };
    }
    sys::OK
}

unsafe extern "C" fn headers_in(r: *mut sys::Request, names: *const Str, values: *mut Str, n: usize) -> Rc {
    for i in 0..n {
        // SAFETY: the plugin passes n names and room for n values.
        let (name, out) = unsafe { (*names.add(i), &mut *values.add(i)) };
        *out = Str::empty();
        // SAFETY: forwarded; NOT_FOUND leaves out empty.
        unsafe { header_in(r, name, out) };
    }
    sys::OK
}

unsafe extern "C" fn send_body(r: *mut sys::Request, bufs: *const sys::Buf, n: usize) -> Rc {
    let m = me(r);
    // SAFETY: the plugin passes n valid buffers for the call.
    for b in unsafe { std::slice::from_raw_parts(bufs, n) } {
        // SAFETY: memory buffers point at len readable bytes.
        m.body.extend_from_slice(unsafe { Str { data: b.data, len: b.len }.as_bytes() });
        m.finished |= b.flags & sys::BUF_LAST != 0;
    }
    sys::OK
}

unsafe extern "C" fn parse_u64(s: Str, out: *mut u64) -> Rc {
    match bytes(s).parse() {
        Ok(v) => {
            // SAFETY: valid out-pointer.
            unsafe { *out = v };
            sys::OK
        }
        Err(_) => sys::INVALID,
    }
}

/// Installs the mock host table as this test process's host.
pub fn install() {
    static HOST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let p = *HOST.get_or_init(|| {
        // SAFETY: all-zero is a valid Host (every slot None).
        let mut h: sys::Host = unsafe { std::mem::zeroed() };
        h.struct_size = std::mem::size_of::<sys::Host>() as u32;
        h.abi_major = sys::ABI_MAJOR;
        h.abi_minor = sys::ABI_MINOR;
        h.log = Some(log);
        h.parse_size = Some(parse_u64);
        h.parse_time_ms = Some(parse_u64);
        h.http_get = Some(http_get);
        h.http_header_in = Some(header_in);
        h.http_set_status = Some(set_status);
        h.http_header_out_add = Some(header_out_add);
        h.http_header_out_set = Some(header_out_set);
        h.http_headers_out_set = Some(headers_out_set);
        h.http_headers_in = Some(headers_in);
        h.http_send_body = Some(send_body);
        Box::into_raw(Box::new(h)) as usize
    });
    crate::rt::set_host(p as *const sys::Host);
}

/// Runs `P`'s handler for `phase` on `req` with `conf`, as the host would
/// (panics are caught and become [`Status::Error`], as in the host).
pub fn run<P: Plugin>(phase: Phase, conf: &P::Conf, req: &mut MockRequest) -> Status {
    install();
    let raw = req as *mut MockRequest as *mut sys::Request;
    let _ = conf as *const P::Conf as *const c_void;
    crate::rt::guard(P::NAME, "a phase handler (mock)", Status::Error, || {
        // SAFETY: raw points at `req`, alive for this call.
        let mut r = unsafe { Request::from_raw(raw) };
        P::handle(phase, &mut r, conf)
    })
}
