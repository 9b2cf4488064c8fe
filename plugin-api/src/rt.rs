//! Runtime support for [`crate::export_plugin!`]: the host table pointer
//! and the generic trampolines the host calls. Not for direct use.

use crate::sys::{self, Rc};
use crate::{ConfCx, Phase, Plugin, Request};
use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

static HOST: AtomicPtr<sys::Host> = AtomicPtr::new(std::ptr::null_mut());

/// An all-None table used until the entry point runs (unit tests).
static EMPTY: OnceLock<HostPtr> = OnceLock::new();

struct HostPtr(&'static sys::Host);
// SAFETY: the host table is immutable after creation.
unsafe impl Sync for HostPtr {}
// SAFETY: as above.
unsafe impl Send for HostPtr {}

/// The host table handed to the entry point.
pub fn host() -> &'static sys::Host {
    let p = HOST.load(Ordering::Acquire);
    if p.is_null() {
        // SAFETY: an all-zero Host is valid: integers zero, pointers null,
        // every Option<fn> None.
        return EMPTY.get_or_init(|| HostPtr(Box::leak(Box::new(unsafe { std::mem::zeroed() })))).0;
    }
    // SAFETY: the host guarantees the table outlives the loaded image.
    unsafe { &*p }
}

/// Records the host table (entry point), or a mock's.
pub fn set_host(h: *const sys::Host) {
    HOST.store(h as *mut sys::Host, Ordering::Release);
}

/// Views host-provided bytes as str (lossy on invalid UTF-8: empty).
///
/// # Safety
/// `s` must point to bytes valid for `'a`.
pub unsafe fn str_of<'a>(s: sys::Str) -> &'a str {
    // SAFETY: forwarded from the caller.
    text(unsafe { s.as_bytes() })
}

/// `b` as str, or "" if it is not UTF-8. ASCII, nearly everything the
/// host hands over, is recognised a word at a time.
pub fn text(b: &[u8]) -> &str {
    if b.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return unsafe { std::str::from_utf8_unchecked(b) };
    }
    std::str::from_utf8(b).unwrap_or("")
}

/// Calls a host parse function on `s`.
pub fn host_parse(f: Option<unsafe extern "C" fn(sys::Str, *mut u64) -> Rc>, s: &str) -> Option<u64> {
    let f = f?;
    let mut out = 0u64;
    // SAFETY: s is borrowed for the call; out is a valid out-pointer.
    (unsafe { f(sys::Str::from_bytes(s.as_bytes()), &mut out) } == sys::OK).then_some(out)
}

/// Writes to the error log through the host.
pub fn log(level: u32, msg: &str) {
    if let Some(f) = host().log {
        // SAFETY: msg borrowed for the call.
        unsafe { f(level, sys::Str::from_bytes(msg.as_bytes())) }
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// True when the host table reaches the slot at byte offset `off` (a
/// pointer-sized slot): `NGX_PLUGIN_HOST_HAS` in Rust.
pub fn host_has(off: usize) -> bool {
    host().struct_size as usize >= off + std::mem::size_of::<usize>()
}

/// A host slot appended after ABI 1.0: None when the host's table is too
/// old to have it (reading past its end would read foreign memory).
macro_rules! slot {
    ($f:ident) => {
        if $crate::rt::host_has(std::mem::offset_of!($crate::sys::Host, $f)) {
            $crate::rt::host().$f
        } else {
            None
        }
    };
}
pub(crate) use slot;

/// Runs `f`, turning a panic into a logged `fallback`.
pub fn guard<T>(plugin: &str, what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            log(sys::LOG_ALERT, &format!("plugin \"{plugin}\" panicked in {what}: {}", panic_text(&*e)));
            fallback
        }
    }
}

/// A body read finished: resume the handler, or finalize on failure.
pub unsafe extern "C" fn resume_on_done(r: *mut sys::Request, rc: Rc, _data: *mut c_void) {
    let h = host();
    // SAFETY: r is the live request the host passes to this callback.
    unsafe {
        if rc == sys::OK {
            if let Some(f) = h.http_resume {
                f(r);
            }
        } else if let Some(f) = h.http_finalize {
            f(r, rc);
        }
    }
}

/// A resume_after timer fired.
pub unsafe extern "C" fn resume_timer(data: *mut c_void) {
    if let Some(f) = host().http_resume {
        // SAFETY: data is the request handle; the timer is owned by that
        // request, so it only fires while the request lives (and the host
        // answers GONE for a finished one anyway).
        unsafe { f(data.cast()) };
    }
}

thread_local! {
    static VAR_OUT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Calls a variable getter defined with `ConfCx::define_variable_with`.
pub unsafe extern "C" fn var_with_tramp<T: 'static>(r: *mut sys::Request, data: *mut c_void, out: *mut sys::Str) -> Rc {
    guard("variable", "a variable getter", sys::ERROR, || {
        if r.is_null() || data.is_null() || out.is_null() {
            return sys::ERROR;
        }
        // SAFETY: data is the VarDef<T> define_variable_with passed, kept
        // alive by the plugin for the generation.
        let def = unsafe { &*(data as *const crate::VarDef<T>) };
        // SAFETY: live request handle for the call.
        let mut req = unsafe { crate::Request::from_raw(r) };
        let Some(v) = (def.get)(&def.data, &mut req) else { return sys::NOT_FOUND };
        VAR_OUT.with(|b| {
            let mut b = b.borrow_mut();
            *b = v;
            // SAFETY: as in var_tramp.
            unsafe { *out = sys::Str::from_bytes(b.as_bytes()) };
        });
        sys::OK
    })
}

/// Calls a family's getter defined with `ConfCx::define_variable_prefix`.
pub unsafe extern "C" fn prefix_var_tramp(r: *mut sys::Request, data: *mut c_void, rest: sys::Str, out: *mut sys::Str) -> Rc {
    guard("variable", "a variable getter", sys::ERROR, || {
        if r.is_null() || data.is_null() || out.is_null() {
            return sys::ERROR;
        }
        // SAFETY: data is the fn pointer define_variable_prefix passed.
        let get: fn(&mut crate::Request<'_>, &str) -> Option<String> = unsafe { std::mem::transmute(data) };
        // SAFETY: live request handle; rest borrowed for the call.
        let (mut req, rest) = unsafe { (crate::Request::from_raw(r), str_of(rest)) };
        let Some(v) = get(&mut req, rest) else { return sys::NOT_FOUND };
        VAR_OUT.with(|b| {
            let mut b = b.borrow_mut();
            *b = v;
            // SAFETY: as in var_tramp.
            unsafe { *out = sys::Str::from_bytes(b.as_bytes()) };
        });
        sys::OK
    })
}

/// Calls a variable getter defined with `ConfCx::define_variable`.
pub unsafe extern "C" fn var_tramp(r: *mut sys::Request, data: *mut c_void, out: *mut sys::Str) -> Rc {
    guard("variable", "a variable getter", sys::ERROR, || {
        if r.is_null() || data.is_null() || out.is_null() {
            return sys::ERROR;
        }
        // SAFETY: data is the fn pointer define_variable passed.
        let get: fn(&mut crate::Request<'_>) -> Option<String> = unsafe { std::mem::transmute(data) };
        // SAFETY: live request handle for the call.
        let mut req = unsafe { crate::Request::from_raw(r) };
        let Some(v) = get(&mut req) else { return sys::NOT_FOUND };
        VAR_OUT.with(|b| {
            let mut b = b.borrow_mut();
            *b = v;
            // SAFETY: the host copies the value before anything else runs
            // on this thread that could replace it.
            unsafe { *out = sys::Str::from_bytes(b.as_bytes()) };
        });
        sys::OK
    })
}

/// Frees per-request state made by `Request::ctx` on the heap.
pub unsafe extern "C" fn drop_box<T>(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: made by Box::into_raw::<T> in Request::ctx, freed once.
        drop(unsafe { Box::from_raw(p as *mut T) });
    }
}

/// Drops per-request state made by `Request::ctx` in the request's
/// memory (`http_alloc`): the host releases the memory itself, after this.
pub unsafe extern "C" fn drop_in_request<T>(p: *mut c_void) {
    if !p.is_null() {
        // SAFETY: a T written in place by Request::ctx, dropped once, and
        // its memory outlives this call (the host frees request memory
        // after the ctx free functions have run).
        unsafe { std::ptr::drop_in_place(p as *mut T) };
    }
}

/// The definition and the storage it points into, built once per image.
pub struct Built {
    /// The definition returned to the host.
    pub def: sys::Def,
    _names: Vec<CString>,
    _dirs: Vec<sys::Directive>,
    _handlers: Vec<sys::HttpHandler>,
}

// SAFETY: immutable after construction; only read by the host.
unsafe impl Sync for Built {}
// SAFETY: as above.
unsafe impl Send for Built {}

/// Builds the definition for `P` (called once from the entry point).
/// The exported plugin's configuration type, recorded by [`build`].
static CONF_TYPE: std::sync::OnceLock<std::any::TypeId> = std::sync::OnceLock::new();

/// True when `C` is the exported plugin's configuration type (the host
/// hands back objects of that type only).
pub(crate) fn is_conf_type<C: 'static>() -> bool {
    CONF_TYPE.get() == Some(&std::any::TypeId::of::<C>())
}

pub fn build<P: Plugin>() -> Built {
    let _ = CONF_TYPE.set(std::any::TypeId::of::<P::Conf>());
    let mut names = vec![CString::new(P::NAME).expect("plugin name has NUL"), CString::new(P::VERSION).unwrap_or_default()];
    let mut dirs = Vec::new();
    for d in P::directives() {
        let c = CString::new(d.name).expect("directive name has NUL");
        dirs.push(sys::Directive {
            name: c.as_ptr(),
            contexts: d.contexts,
            flags: d.flags,
            min_args: d.min_args,
            max_args: d.max_args,
            block_context: d.block_context,
            set: Some(set_tramp::<P>),
        });
        names.push(c);
    }
    let handlers: Vec<sys::HttpHandler> = P::phases()
        .iter()
        .map(|&p| sys::HttpHandler { phase: p as u32, handler: Some(handler_for::<P>(p as u32)) })
        .collect();
    let def = sys::Def {
        struct_size: std::mem::size_of::<sys::Def>() as u32,
        abi_major: sys::ABI_MAJOR,
        abi_minor: sys::ABI_MINOR,
        min_host_minor: 0,
        name: names[0].as_ptr(),
        version: names[1].as_ptr(),
        directives: dirs.as_ptr(),
        ndirectives: dirs.len(),
        create_conf: Some(create_tramp::<P>),
        merge_conf: Some(merge_tramp::<P>),
        free_conf: Some(free_tramp::<P>),
        init_cycle: None,
        init_worker: Some(init_worker_tramp::<P>),
        exit_worker: Some(exit_worker_tramp::<P>),
        fini_cycle: None,
        handlers: handlers.as_ptr(),
        nhandlers: handlers.len(),
        header_filter: if P::HEADER_FILTER { Some(header_filter_tramp::<P>) } else { None },
        body_filter: if P::BODY_FILTER { Some(body_filter_tramp::<P>) } else { None },
    };
    Built { def, _names: names, _dirs: dirs, _handlers: handlers }
}

pub(crate) fn handler_for<P: Plugin>(phase: u32) -> sys::HttpHandlerFn {
    match phase {
        sys::PHASE_POST_READ => handler_tramp::<P, { sys::PHASE_POST_READ }>,
        sys::PHASE_SERVER_REWRITE => handler_tramp::<P, { sys::PHASE_SERVER_REWRITE }>,
        sys::PHASE_REWRITE => handler_tramp::<P, { sys::PHASE_REWRITE }>,
        sys::PHASE_PREACCESS => handler_tramp::<P, { sys::PHASE_PREACCESS }>,
        sys::PHASE_ACCESS => handler_tramp::<P, { sys::PHASE_ACCESS }>,
        sys::PHASE_PRECONTENT => handler_tramp::<P, { sys::PHASE_PRECONTENT }>,
        sys::PHASE_CONTENT => handler_tramp::<P, { sys::PHASE_CONTENT }>,
        _ => handler_tramp::<P, { sys::PHASE_LOG }>,
    }
}

fn phase_of(p: u32) -> Phase {
    match p {
        sys::PHASE_POST_READ => Phase::PostRead,
        sys::PHASE_SERVER_REWRITE => Phase::ServerRewrite,
        sys::PHASE_REWRITE => Phase::Rewrite,
        sys::PHASE_PREACCESS => Phase::Preaccess,
        sys::PHASE_ACCESS => Phase::Access,
        sys::PHASE_PRECONTENT => Phase::Precontent,
        sys::PHASE_CONTENT => Phase::Content,
        _ => Phase::Log,
    }
}

unsafe extern "C" fn handler_tramp<P: Plugin, const PHASE: u32>(r: *mut sys::Request, conf: *mut c_void) -> Rc {
    guard(P::NAME, "a phase handler", sys::ERROR, || {
        if r.is_null() || conf.is_null() {
            return sys::ERROR;
        }
        // SAFETY: the host passes a live request and the conf object that
        // create_tramp::<P> made for this location.
        let (mut req, conf) = unsafe { (Request::from_raw(r), &*(conf as *const P::Conf)) };
        P::handle(phase_of(PHASE), &mut req, conf).rc()
    })
}

unsafe extern "C" fn header_filter_tramp<P: Plugin>(r: *mut sys::Request, conf: *mut c_void) -> Rc {
    guard(P::NAME, "the header filter", sys::ERROR, || {
        if r.is_null() {
            return sys::ERROR;
        }
        if conf.is_null() {
            // A location the plugin has no configuration for: nothing to do.
            return sys::OK;
        }
        // SAFETY: as in handler_tramp.
        let (mut req, conf) = unsafe { (Request::from_raw(r), &*(conf as *const P::Conf)) };
        match P::header_filter(&mut req, conf) {
            Ok(()) => sys::OK,
            Err(e) => {
                log(sys::LOG_ERR, &e);
                sys::ERROR
            }
        }
    })
}

unsafe extern "C" fn body_filter_tramp<P: Plugin>(r: *mut sys::Request, conf: *mut c_void, bufs: *const sys::Buf, n: usize) -> Rc {
    guard(P::NAME, "the body filter", sys::ERROR, || {
        if r.is_null() || (bufs.is_null() && n > 0) {
            return sys::ERROR;
        }
        // SAFETY: the host passes n buffers valid for the call.
        let body: &[sys::Buf] = if n == 0 { &[] } else { unsafe { std::slice::from_raw_parts(bufs, n) } };
        // SAFETY: a live request handle.
        let mut req = unsafe { Request::from_raw(r) };
        if conf.is_null() {
            return req.next_body_raw(body).err().unwrap_or(sys::OK);
        }
        // SAFETY: the conf object create_tramp::<P> made for this location.
        let conf = unsafe { &*(conf as *const P::Conf) };
        match P::body_filter(&mut req, conf, body) {
            Ok(()) => sys::OK,
            Err(e) => {
                log(sys::LOG_ERR, &e);
                sys::ERROR
            }
        }
    })
}

unsafe extern "C" fn create_tramp<P: Plugin>(cf: *mut sys::Conf, level: u32) -> *mut c_void {
    guard(P::NAME, "create_conf", std::ptr::null_mut(), || {
        let cx = ConfCx { raw: cf, _l: PhantomData };
        Box::into_raw(Box::new(P::create(&cx, level))).cast()
    })
}

unsafe extern "C" fn merge_tramp<P: Plugin>(
    cf: *mut sys::Conf,
    level: u32,
    parent: *const c_void,
    child: *mut c_void,
) -> Rc {
    guard(P::NAME, "merge_conf", sys::ERROR, || {
        if parent.is_null() || child.is_null() {
            return sys::ERROR;
        }
        let cx = ConfCx { raw: cf, _l: PhantomData };
        // SAFETY: both were made by create_tramp::<P>; the host does not
        // alias them during the call.
        match P::merge_in(&cx, level, unsafe { &*(parent as *const P::Conf) }, unsafe { &mut *(child as *mut P::Conf) }) {
            Ok(()) => sys::OK,
            Err(msg) => {
                if let (false, Some(e)) = (msg.is_empty(), host().conf_error) {
                    // SAFETY: msg borrowed for the call.
                    unsafe { e(cf, sys::Str::from_bytes(msg.as_bytes())) };
                }
                sys::ERROR
            }
        }
    })
}

unsafe extern "C" fn free_tramp<P: Plugin>(_level: u32, conf: *mut c_void) {
    guard(P::NAME, "free_conf", (), || {
        if !conf.is_null() {
            // SAFETY: made by create_tramp::<P> and freed exactly once.
            drop(unsafe { Box::from_raw(conf as *mut P::Conf) });
        }
    })
}

unsafe extern "C" fn set_tramp<P: Plugin>(cf: *mut sys::Conf, conf: *mut c_void, args: *const sys::Str, nargs: usize) -> Rc {
    guard(P::NAME, "a directive", sys::ERROR, || {
        let h = host();
        let (mut name, mut file, mut line) = (sys::Str::empty(), sys::Str::empty(), 0u32);
        let Some(pos) = h.conf_position else { return sys::ERROR };
        // SAFETY: valid out-pointers; strings borrowed for this call.
        if unsafe { pos(cf, &mut name, &mut file, &mut line) } != sys::OK || conf.is_null() {
            return sys::ERROR;
        }
        // SAFETY: borrowed for this call.
        let name = unsafe { str_of(name) };
        let raw_args: &[sys::Str] =
            if nargs == 0 { &[] } else { unsafe { std::slice::from_raw_parts(args, nargs) } };
        // SAFETY: the host's args are borrowed for this call.
        let words: Vec<&str> = raw_args.iter().map(|s| unsafe { str_of(*s) }).collect();
        let cx = ConfCx { raw: cf, _l: PhantomData };
        let Some(d) = P::directives().into_iter().find(|d| d.name == name) else { return sys::ERROR };
        // SAFETY: conf was made by create_tramp::<P> for this block.
        match (d.set)(unsafe { &mut *(conf as *mut P::Conf) }, &words, &cx) {
            Ok(()) => sys::OK,
            Err(msg) => {
                if let (false, Some(e)) = (msg.is_empty(), h.conf_error) {
                    // SAFETY: msg borrowed for the call.
                    unsafe { e(cf, sys::Str::from_bytes(msg.as_bytes())) };
                }
                sys::ERROR
            }
        }
    })
}

unsafe extern "C" fn init_worker_tramp<P: Plugin>(_cy: *mut sys::Cycle, main: *mut c_void) -> Rc {
    guard(P::NAME, "init_worker", sys::ERROR, || {
        if main.is_null() {
            return sys::ERROR;
        }
        // SAFETY: the main-level conf made by create_tramp::<P>.
        match P::init_worker(unsafe { &*(main as *const P::Conf) }) {
            Ok(()) => sys::OK,
            Err(e) => {
                log(sys::LOG_EMERG, &e);
                sys::ERROR
            }
        }
    })
}

unsafe extern "C" fn exit_worker_tramp<P: Plugin>(_cy: *mut sys::Cycle, main: *mut c_void) {
    guard(P::NAME, "exit_worker", (), || {
        if !main.is_null() {
            // SAFETY: the main-level conf made by create_tramp::<P>.
            P::exit_worker(unsafe { &*(main as *const P::Conf) })
        }
    })
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as this image's
/// plugin: emits `ngx_plugin_entry_v1`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        /// The plugin entry point (ABI major 1).
        #[no_mangle]
        pub unsafe extern "C" fn ngx_plugin_entry_v1(
            host: *const $crate::sys::Host,
        ) -> *const $crate::sys::Def {
            static BUILT: ::std::sync::OnceLock<$crate::rt::Built> = ::std::sync::OnceLock::new();
            $crate::rt::guard(<$plugin as $crate::Plugin>::NAME, "the entry point", ::std::ptr::null(), || {
                if host.is_null() {
                    return ::std::ptr::null();
                }
                $crate::rt::set_host(host);
                &BUILT.get_or_init(|| $crate::rt::build::<$plugin>()).def as *const _
            })
        }
    };
}
