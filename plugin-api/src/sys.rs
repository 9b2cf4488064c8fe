//! The `#[repr(C)]` mirror of `include/ngx_plugin.h`, field for field.
//!
//! The header is the source of truth; `tests/layout.rs` compiles a C probe
//! against it and compares every struct's size and every field's offset
//! with these definitions. The host uses this module too, so both sides of
//! the ABI share one Rust definition.

#![allow(missing_docs, non_camel_case_types)]

use std::ffi::{c_char, c_void};

pub const ABI_MAJOR: u32 = 1;
pub const ABI_MINOR: u32 = 14;
pub const ENTRY_SYMBOL: &str = "ngx_plugin_entry_v1";

/// Indexes into the `stats` array (1.12).
pub const STAT_ACTIVE: usize = 0;
pub const STAT_ACCEPTS: usize = 1;
pub const STAT_HANDLED: usize = 2;
pub const STAT_REQUESTS: usize = 3;
pub const STAT_READING: usize = 4;
pub const STAT_WRITING: usize = 5;
pub const STAT_WAITING: usize = 6;
pub const STAT_COUNT: usize = 7;

/// `http_gzip_ok` flag (1.13): the response could be compressed.
pub const GZIP_VARY: u32 = 0x1;

pub type Rc = i32;
pub const OK: Rc = 0;
pub const ERROR: Rc = -1;
pub const AGAIN: Rc = -2;
pub const DONE: Rc = -4;
pub const DECLINED: Rc = -5;
pub const NOT_FOUND: Rc = -10;
pub const INVALID: Rc = -11;
pub const UNSUPPORTED: Rc = -12;
pub const GONE: Rc = -13;
/// (1.1) `conn_error`: the last failure was a timeout.
pub const TIMEDOUT: Rc = -14;

pub const LOG_EMERG: u32 = 1;
pub const LOG_ALERT: u32 = 2;
pub const LOG_CRIT: u32 = 3;
pub const LOG_ERR: u32 = 4;
pub const LOG_WARN: u32 = 5;
pub const LOG_NOTICE: u32 = 6;
pub const LOG_INFO: u32 = 7;
pub const LOG_DEBUG: u32 = 8;
/// Or'ed into a level (1.14): a not-found message, dropped under `log_not_found off`.
pub const LOG_NOT_FOUND: u32 = 0x100;

pub const CTX_MAIN: u32 = 0x0001;
pub const CTX_HTTP: u32 = 0x0004;
pub const CTX_SERVER: u32 = 0x0008;
pub const CTX_LOCATION: u32 = 0x0010;
pub const CTX_UPSTREAM: u32 = 0x0020;
pub const CTX_IF: u32 = 0x0040;
pub const CTX_LIMIT_EXCEPT: u32 = 0x0080;
pub const CTX_MAIL: u32 = 0x0100;
pub const CTX_MAIL_SERVER: u32 = 0x0200;
pub const CTX_OPAQUE: u32 = 0x8000_0000;

pub const DIR_BLOCK: u32 = 0x1;
pub const DIR_UNIQUE: u32 = 0x2;
pub const ARGS_ANY: u32 = u32::MAX;

pub const PHASE_POST_READ: u32 = 0;
pub const PHASE_SERVER_REWRITE: u32 = 1;
pub const PHASE_REWRITE: u32 = 2;
pub const PHASE_PREACCESS: u32 = 3;
pub const PHASE_ACCESS: u32 = 4;
pub const PHASE_PRECONTENT: u32 = 5;
pub const PHASE_CONTENT: u32 = 6;
pub const PHASE_LOG: u32 = 7;

pub const BUF_LAST: u32 = 0x1;
pub const BUF_FLUSH: u32 = 0x2;
pub const BUF_FILE: u32 = 0x4;

pub const REQ_METHOD: u32 = 0;
pub const REQ_URI: u32 = 1;
pub const REQ_ARGS: u32 = 2;
pub const REQ_REQUEST_URI: u32 = 3;
pub const REQ_PROTOCOL: u32 = 4;
pub const REQ_HOST: u32 = 5;
pub const REQ_REMOTE_ADDR: u32 = 6;
pub const REQ_CONTENT_TYPE: u32 = 7;
pub const REQ_URI_REWRITTEN: u32 = 8;
pub const REQ_ERROR_PAGES: u32 = 9;

pub const URI_RELOCATE: u32 = 0x1;

pub const EV_READ: u32 = 0x1;
pub const EV_WRITE: u32 = 0x2;
pub const EV_ERROR: u32 = 0x4;

/// `ngx_plugin_str_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Str {
    pub data: *const u8,
    pub len: usize,
}

impl Str {
    /// A borrowed view of `s` (valid while `s` is).
    pub fn from_bytes(s: &[u8]) -> Str {
        Str { data: s.as_ptr(), len: s.len() }
    }

    /// The empty string (data NULL).
    pub const fn empty() -> Str {
        Str { data: std::ptr::null(), len: 0 }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `data` must point to `len` readable bytes for the returned lifetime.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.data.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.data, self.len) }
        }
    }
}

/// Opaque handles (never dereferenced on the plugin side).
#[repr(C)]
pub struct Conf {
    _p: [u8; 0],
}
#[repr(C)]
pub struct Cycle {
    _p: [u8; 0],
}
#[repr(C)]
pub struct Request {
    _p: [u8; 0],
}
#[repr(C)]
pub struct Conn {
    _p: [u8; 0],
}
#[repr(C)]
pub struct Shm {
    _p: [u8; 0],
}
#[repr(C)]
pub struct Tls {
    _p: [u8; 0],
}
/// `ngx_plugin_file_t` (1.3).
#[repr(C)]
pub struct File {
    _p: [u8; 0],
}
pub type Timer = u64;

pub const TLS_SERVER: u32 = 0x01;
pub const TLS_VERIFY: u32 = 0x02;
pub const TLS_SNI: u32 = 0x04;
pub const TLS_NO_REUSE: u32 = 0x08;
pub const TLS_NO_TICKETS: u32 = 0x10;

/// `ngx_plugin_tls_opts_t` (1.2).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsOpts {
    pub struct_size: usize,
    pub flags: u32,
    pub reserved: u32,
    pub certificates: *const Str,
    pub keys: *const Str,
    pub ncertificates: usize,
    pub trusted_certificate: Str,
    pub protocols: Str,
    pub ciphers: Str,
}

pub type SetFn = unsafe extern "C" fn(*mut Conf, *mut c_void, *const Str, usize) -> Rc;
pub type HttpHandlerFn = unsafe extern "C" fn(*mut Request, *mut c_void) -> Rc;
pub type HeaderFilterFn = unsafe extern "C" fn(*mut Request, *mut c_void) -> Rc;
pub type BodyFilterFn = unsafe extern "C" fn(*mut Request, *mut c_void, *const Buf, usize) -> Rc;
pub type TimerFn = unsafe extern "C" fn(*mut c_void);
pub type ConnFn = unsafe extern "C" fn(*mut Conn, u32, *mut c_void);
pub type DoneFn = unsafe extern "C" fn(*mut Request, Rc, *mut c_void);
pub type AcceptFn = unsafe extern "C" fn(*mut Conn, *mut c_void);
pub type HelperFn = unsafe extern "C" fn(*mut Cycle, *mut c_void);
pub type VarFn = unsafe extern "C" fn(*mut Request, *mut c_void, *mut Str) -> Rc;
/// `ngx_plugin_prefix_var_pt` (1.9).
pub type PrefixVarFn = unsafe extern "C" fn(*mut Request, *mut c_void, Str, *mut Str) -> Rc;
pub type FreeFn = unsafe extern "C" fn(*mut c_void);

/// `ngx_plugin_directive_t`.
#[repr(C)]
pub struct Directive {
    pub name: *const c_char,
    pub contexts: u32,
    pub flags: u32,
    pub min_args: u32,
    pub max_args: u32,
    pub block_context: u32,
    pub set: Option<SetFn>,
}

/// `ngx_plugin_http_handler_t`.
#[repr(C)]
pub struct HttpHandler {
    pub phase: u32,
    pub handler: Option<HttpHandlerFn>,
}

/// `ngx_plugin_buf_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub data: *const u8,
    pub len: usize,
    pub fd: i32,
    pub flags: u32,
    pub file_pos: i64,
    pub file_len: i64,
}

/// `ngx_plugin_header_t` (1.4).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: Str,
    pub value: Str,
}

/// `ngx_plugin_host_t`. Append-only: new slots go at the end.
#[repr(C)]
pub struct Host {
    pub struct_size: u32,
    pub abi_major: u32,
    pub abi_minor: u32,
    pub reserved: u32,
    pub version: *const c_char,
    pub supports: Option<unsafe extern "C" fn(usize) -> bool>,

    pub log: Option<unsafe extern "C" fn(u32, Str)>,

    pub conf_error: Option<unsafe extern "C" fn(*mut Conf, Str)>,
    pub conf_position: Option<unsafe extern "C" fn(*mut Conf, *mut Str, *mut Str, *mut u32) -> Rc>,
    pub parse_flag: Option<unsafe extern "C" fn(Str, *mut bool) -> Rc>,
    pub parse_size: Option<unsafe extern "C" fn(Str, *mut u64) -> Rc>,
    pub parse_time_ms: Option<unsafe extern "C" fn(Str, *mut u64) -> Rc>,
    pub conf_full_path: Option<unsafe extern "C" fn(*mut Conf, Str, *mut Str) -> Rc>,
    pub conf_set_block_data: Option<unsafe extern "C" fn(*mut Conf, *mut c_void) -> Rc>,
    pub conf_block_data: Option<unsafe extern "C" fn(*mut Conf) -> *mut c_void>,
    pub conf_block_child: Option<unsafe extern "C" fn(*mut Conf, usize, *mut Str, *mut usize) -> Rc>,
    pub conf_set_content_handler: Option<unsafe extern "C" fn(*mut Conf, Option<HttpHandlerFn>) -> Rc>,
    pub conf_define_variable: Option<unsafe extern "C" fn(*mut Conf, Str, Option<VarFn>, *mut c_void) -> Rc>,
    pub conf_shm_zone: Option<unsafe extern "C" fn(*mut Conf, Str, u64, u32, *mut *mut Shm) -> Rc>,
    pub conf_listen: Option<unsafe extern "C" fn(*mut Conf, Str, bool, Option<AcceptFn>, *mut c_void) -> Rc>,

    pub spawn_helper: Option<unsafe extern "C" fn(*mut Cycle, Str, Option<HelperFn>, *mut c_void) -> Rc>,
    pub run_loop: Option<unsafe extern "C" fn(*mut Cycle)>,
    pub worker_slot: Option<unsafe extern "C" fn() -> i32>,

    pub http_get: Option<unsafe extern "C" fn(*mut Request, u32, *mut Str) -> Rc>,
    pub http_header_in: Option<unsafe extern "C" fn(*mut Request, Str, *mut Str) -> Rc>,
    pub http_header_in_at: Option<unsafe extern "C" fn(*mut Request, usize, *mut Str, *mut Str) -> Rc>,
    pub http_set_status: Option<unsafe extern "C" fn(*mut Request, u32) -> Rc>,
    pub http_status: Option<unsafe extern "C" fn(*mut Request) -> u32>,
    pub http_header_out_add: Option<unsafe extern "C" fn(*mut Request, Str, Str) -> Rc>,
    pub http_header_out_set: Option<unsafe extern "C" fn(*mut Request, Str, Str) -> Rc>,
    pub http_header_out: Option<unsafe extern "C" fn(*mut Request, Str, *mut Str) -> Rc>,
    pub http_send_header: Option<unsafe extern "C" fn(*mut Request) -> Rc>,
    pub http_send_body: Option<unsafe extern "C" fn(*mut Request, *const Buf, usize) -> Rc>,
    pub http_next_body_filter: Option<unsafe extern "C" fn(*mut Request, *const Buf, usize) -> Rc>,
    pub http_alloc: Option<unsafe extern "C" fn(*mut Request, usize) -> *mut c_void>,
    pub http_set_ctx: Option<unsafe extern "C" fn(*mut Request, *mut c_void, Option<FreeFn>) -> Rc>,
    pub http_ctx: Option<unsafe extern "C" fn(*mut Request) -> *mut c_void>,
    pub http_var: Option<unsafe extern "C" fn(*mut Request, Str, *mut Str) -> Rc>,
    pub http_var_set: Option<unsafe extern "C" fn(*mut Request, Str, Str) -> Rc>,
    pub http_read_body: Option<unsafe extern "C" fn(*mut Request, Option<DoneFn>, *mut c_void) -> Rc>,
    pub http_body: Option<unsafe extern "C" fn(*mut Request, *mut *const Buf, *mut usize) -> Rc>,
    pub http_internal_redirect: Option<unsafe extern "C" fn(*mut Request, Str, Str) -> Rc>,
    pub http_resume: Option<unsafe extern "C" fn(*mut Request) -> Rc>,
    pub http_finalize: Option<unsafe extern "C" fn(*mut Request, Rc) -> Rc>,

    pub timer_add: Option<unsafe extern "C" fn(*mut Request, u64, Option<TimerFn>, *mut c_void, *mut Timer) -> Rc>,
    pub timer_cancel: Option<unsafe extern "C" fn(Timer)>,
    pub conn_connect: Option<unsafe extern "C" fn(*mut Request, Str, u64, Option<ConnFn>, *mut c_void, *mut *mut Conn) -> Rc>,
    pub conn_watch: Option<unsafe extern "C" fn(*mut Conn, u32, Option<ConnFn>, *mut c_void) -> Rc>,
    pub conn_read: Option<unsafe extern "C" fn(*mut Conn, *mut u8, usize, *mut usize) -> Rc>,
    pub conn_write: Option<unsafe extern "C" fn(*mut Conn, *const Buf, usize, *mut usize) -> Rc>,
    pub conn_start_tls: Option<unsafe extern "C" fn(*mut Conn, Str, bool, Option<ConnFn>, *mut c_void) -> Rc>,
    pub conn_peer: Option<unsafe extern "C" fn(*mut Conn, *mut Str) -> Rc>,
    pub conn_close: Option<unsafe extern "C" fn(*mut Conn)>,
    pub relay: Option<unsafe extern "C" fn(*mut Request, *mut Conn, *mut Conn, Option<DoneFn>, *mut c_void) -> Rc>,

    pub shm_addr: Option<unsafe extern "C" fn(*mut Shm, *mut *mut c_void, *mut u64) -> Rc>,
    pub shm_is_new: Option<unsafe extern "C" fn(*mut Shm) -> bool>,
    pub shm_lock: Option<unsafe extern "C" fn(*mut Shm)>,
    pub shm_unlock: Option<unsafe extern "C" fn(*mut Shm)>,
    // appended in 1.1
    pub conn_error: Option<unsafe extern "C" fn(*mut Conn, *mut Str) -> Rc>,
    pub http_output_queued: Option<unsafe extern "C" fn(*mut Request) -> usize>,
    pub http_resume_when_drained: Option<unsafe extern "C" fn(*mut Request, usize) -> Rc>,
    pub conf_location: Option<unsafe extern "C" fn(*mut Conf, *mut Str, *mut Str) -> Rc>,
    // appended in 1.2
    pub conf_tls: Option<unsafe extern "C" fn(*mut Conf, *const TlsOpts, *mut *mut Tls) -> Rc>,
    pub conn_tls: Option<unsafe extern "C" fn(*mut Conn, *mut Tls, Str, u64, Option<ConnFn>, *mut c_void) -> Rc>,
    pub conn_tls_info: Option<unsafe extern "C" fn(*mut Conn, *mut Str, *mut Str) -> Rc>,
    // appended in 1.3
    pub conf_open_file: Option<unsafe extern "C" fn(*mut Conf, Str, *mut *mut File) -> Rc>,
    pub file_write: Option<unsafe extern "C" fn(*mut File, *const u8, usize) -> Rc>,
    // appended in 1.4
    pub http_headers_in: Option<unsafe extern "C" fn(*mut Request, *const Str, *mut Str, usize) -> Rc>,
    pub http_headers_out_set: Option<unsafe extern "C" fn(*mut Request, *const Header, usize) -> Rc>,
    // appended in 1.5
    pub http_set_uri: Option<unsafe extern "C" fn(*mut Request, Str, Str, u32) -> Rc>,
    pub conf_conf_path: Option<unsafe extern "C" fn(*mut Conf, Str, *mut Str) -> Rc>,
    // appended in 1.6
    pub conf_add_path: Option<unsafe extern "C" fn(*mut Conf, Str) -> Rc>,
    // appended in 1.7
    pub conf_block_id: Option<unsafe extern "C" fn(*mut Conf) -> u32>,
    pub http_enter_block: Option<unsafe extern "C" fn(*mut Request, u32) -> *mut c_void>,
    // appended in 1.8
    pub conn_set_idle: Option<unsafe extern "C" fn(*mut Conn, u64) -> Rc>,
    // appended in 1.9
    pub conf_define_variable_prefix: Option<unsafe extern "C" fn(*mut Conf, Str, Option<PrefixVarFn>, *mut c_void) -> Rc>,
    // appended in 1.10
    pub http_subrequest: Option<unsafe extern "C" fn(*mut Request, Str, Str, *mut *mut Request) -> Rc>,
    // appended in 1.11
    pub http_set_data: Option<unsafe extern "C" fn(*mut Request, *mut c_void, Option<FreeFn>) -> Rc>,
    pub http_data: Option<unsafe extern "C" fn(*mut Request) -> *mut c_void>,
    // appended in 1.12
    pub stats: Option<unsafe extern "C" fn(*mut u64, usize) -> usize>,
    // appended in 1.13
    pub http_gzip_ok: Option<unsafe extern "C" fn(*mut Request, u32) -> Rc>,
    // appended in 1.14
    pub http_conf: Option<unsafe extern "C" fn(*mut Request) -> *mut c_void>,
    pub conf_server_names: Option<unsafe extern "C" fn(*mut Conf, *mut Str, *mut usize) -> Rc>,
}

/// `ngx_plugin_def_t`. Append-only: new fields go at the end.
#[repr(C)]
pub struct Def {
    pub struct_size: u32,
    pub abi_major: u32,
    pub abi_minor: u32,
    pub min_host_minor: u32,
    pub name: *const c_char,
    pub version: *const c_char,
    pub directives: *const Directive,
    pub ndirectives: usize,
    pub create_conf: Option<unsafe extern "C" fn(*mut Conf, u32) -> *mut c_void>,
    pub merge_conf: Option<unsafe extern "C" fn(*mut Conf, u32, *const c_void, *mut c_void) -> Rc>,
    pub free_conf: Option<unsafe extern "C" fn(u32, *mut c_void)>,
    pub init_cycle: Option<unsafe extern "C" fn(*mut Cycle, *mut c_void) -> Rc>,
    pub init_worker: Option<unsafe extern "C" fn(*mut Cycle, *mut c_void) -> Rc>,
    pub exit_worker: Option<unsafe extern "C" fn(*mut Cycle, *mut c_void)>,
    pub fini_cycle: Option<unsafe extern "C" fn(*mut Cycle, *mut c_void)>,
    pub handlers: *const HttpHandler,
    pub nhandlers: usize,
    pub header_filter: Option<HeaderFilterFn>,
    pub body_filter: Option<BodyFilterFn>,
}

// SAFETY: a Def is immutable static data describing code; the host reads
// it from its single event-loop thread.
unsafe impl Sync for Def {}
// SAFETY: as above; directive tables are immutable statics.
unsafe impl Sync for Directive {}
// SAFETY: as above.
unsafe impl Sync for HttpHandler {}

/// The entry point's type.
pub type EntryFn = unsafe extern "C" fn(*const Host) -> *const Def;
