//! Asynchronous I/O for handlers: host-managed connections and timers.
//!
//! The simplest way to use them from a phase handler is the "resume"
//! style: connect or watch with [`Conn::connect_resuming`] /
//! [`Conn::watch_resuming`], return [`crate::Status::Again`], and the host
//! calls the handler again on every readiness event (and on timers made
//! with [`crate::Request::resume_after`]). The handler then reads and
//! writes until the connection answers `None` (would block), with the
//! request's state kept in [`crate::Request::ctx`].
//!
//! Connections owned by a request are closed by the host when the request
//! ends; connections made with no owner (for keepalive pools) are the
//! plugin's to close.

use crate::{rt, sys, Request};
use std::ffi::c_void;

/// A host-managed connection (a handle: copying it does not duplicate the
/// socket). Calls on a closed connection answer `GONE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn(*mut sys::Conn);

/// Readiness bits ([`sys::EV_READ`], [`sys::EV_WRITE`], [`sys::EV_ERROR`]).
pub type Events = u32;

unsafe extern "C" fn resume_conn(_c: *mut sys::Conn, _ev: u32, data: *mut c_void) {
    if let Some(f) = rt::host().http_resume {
        // SAFETY: data is a request handle; a finished one answers GONE.
        unsafe { f(data.cast()) };
    }
}

impl Conn {
    /// Wraps a raw handle (from a callback).
    pub fn from_raw(raw: *mut sys::Conn) -> Conn {
        Conn(raw)
    }

    /// The raw handle.
    pub fn raw(self) -> *mut sys::Conn {
        self.0
    }

    /// Ends a relay of this connection once nothing was read from it for
    /// `ms` milliseconds (ABI 1.8; 0: no limit). Call before relaying.
    /// On an older host: no limit, and `UNSUPPORTED`.
    pub fn set_idle(self, ms: u64) -> Result<(), sys::Rc> {
        let f = crate::rt::slot!(conn_set_idle).ok_or(sys::UNSUPPORTED)?;
        // SAFETY: a handle the host gave us; a stale one answers GONE.
        match unsafe { f(self.0, ms) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Starts a nonblocking connect to `addr` ("127.0.0.1:8080"), owned by
    /// `owner` (closed when that request ends) or by nobody; the handler of
    /// `req` is resumed when the connect finishes or fails (see
    /// [`Conn::error`]). `timeout_ms` 0 means no connect timeout.
    pub fn connect_resuming(req: &Request<'_>, owned: bool, addr: &str, timeout_ms: u64) -> Result<Conn, sys::Rc> {
        let f = rt::host().conn_connect.ok_or(sys::UNSUPPORTED)?;
        let mut out = std::ptr::null_mut();
        let owner = if owned { req.raw() } else { std::ptr::null_mut() };
        // SAFETY: live request; addr borrowed for the call; the callback
        // only passes the request handle back to the host.
        match unsafe { f(owner, sys::Str::from_bytes(addr.as_bytes()), timeout_ms, Some(resume_conn), req.raw().cast(), &mut out) } {
            sys::OK => Ok(Conn(out)),
            rc => Err(rc),
        }
    }

    /// Starts a nonblocking connect to `addr` owned by nobody (a protocol
    /// plugin's session keeps it): `cb(conn, EV_WRITE, data)` when it is
    /// up, `EV_ERROR` when it failed or `timeout_ms` (0: none) passed.
    ///
    /// # Safety
    /// `data` must stay valid until the connection is closed.
    pub unsafe fn connect_raw(addr: &str, timeout_ms: u64, cb: sys::ConnFn, data: *mut c_void) -> Result<Conn, sys::Rc> {
        let f = rt::host().conn_connect.ok_or(sys::UNSUPPORTED)?;
        let mut out = std::ptr::null_mut();
        // SAFETY: per this function's contract; addr borrowed for the call.
        match unsafe { f(std::ptr::null_mut(), sys::Str::from_bytes(addr.as_bytes()), timeout_ms, Some(cb), data, &mut out) } {
            sys::OK => Ok(Conn(out)),
            rc => Err(rc),
        }
    }

    /// Hands `self` and `other` to the host, which copies bytes both ways
    /// until either side closes, then closes both and calls
    /// `done(NULL, rc, data)`. Neither handle may be used after `Ok`.
    ///
    /// # Safety
    /// `data` must stay valid until `done` has run.
    pub unsafe fn relay_raw(self, other: Conn, done: Option<sys::DoneFn>, data: *mut c_void) -> Result<(), sys::Rc> {
        let f = rt::host().relay.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: per this function's contract.
        match unsafe { f(std::ptr::null_mut(), self.0, other.0, done, data) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Resumes `req`'s handler on `interest` readiness (one call follows
    /// at once, so no edge is missed).
    pub fn watch_resuming(self, req: &Request<'_>, interest: Events) -> Result<(), sys::Rc> {
        // SAFETY: the callback only passes the request handle to the host.
        unsafe { self.watch_raw(interest, Some(resume_conn), req.raw().cast()) }
    }

    /// Stops callbacks (an idle pooled connection). It still reports
    /// nothing until watched again.
    pub fn unwatch(self) -> Result<(), sys::Rc> {
        // SAFETY: no callback.
        unsafe { self.watch_raw(0, None, std::ptr::null_mut()) }
    }

    /// Sets a raw callback.
    ///
    /// # Safety
    /// `data` must stay valid for as long as `cb` may be called with it.
    pub unsafe fn watch_raw(self, interest: Events, cb: Option<sys::ConnFn>, data: *mut c_void) -> Result<(), sys::Rc> {
        let f = rt::host().conn_watch.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: per this function's contract.
        match unsafe { f(self.0, interest, cb, data) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// Reads: `Ok(Some(n))` (0 = EOF), `Ok(None)` would block.
    pub fn read(self, buf: &mut [u8]) -> Result<Option<usize>, sys::Rc> {
        let f = rt::host().conn_read.ok_or(sys::UNSUPPORTED)?;
        let mut n = 0;
        // SAFETY: buf is writable for its length.
        match unsafe { f(self.0, buf.as_mut_ptr(), buf.len(), &mut n) } {
            sys::OK => Ok(Some(n)),
            sys::AGAIN => Ok(None),
            rc => Err(rc),
        }
    }

    /// Reads up to `max` bytes, appended to `v` (its spare capacity is
    /// filled by the host directly: nothing is zeroed or copied first).
    /// `Ok(Some(n))` (0 = EOF), `Ok(None)` would block.
    pub fn read_append(self, v: &mut Vec<u8>, max: usize) -> Result<Option<usize>, sys::Rc> {
        let f = rt::host().conn_read.ok_or(sys::UNSUPPORTED)?;
        v.reserve(max);
        let len = v.len();
        let mut n = 0;
        // SAFETY: the spare capacity holds at least `max` bytes; the host
        // only writes into it and reports how many bytes it wrote.
        match unsafe { f(self.0, v.as_mut_ptr().add(len), max, &mut n) } {
            sys::OK => {
                // SAFETY: the host initialised n <= max bytes after len.
                unsafe { v.set_len(len + n.min(max)) };
                Ok(Some(n))
            }
            sys::AGAIN => Ok(None),
            rc => Err(rc),
        }
    }

    /// Writes: `Ok(Some(n))` bytes taken, `Ok(None)` would block.
    pub fn write(self, bytes: &[u8]) -> Result<Option<usize>, sys::Rc> {
        let f = rt::host().conn_write.ok_or(sys::UNSUPPORTED)?;
        let b = sys::Buf { data: bytes.as_ptr(), len: bytes.len(), fd: -1, flags: 0, file_pos: 0, file_len: 0 };
        let mut n = 0;
        // SAFETY: b borrows bytes for the call.
        match unsafe { f(self.0, &b, 1, &mut n) } {
            sys::OK => Ok(Some(n)),
            sys::AGAIN => Ok(None),
            rc => Err(rc),
        }
    }

    /// Starts TLS (ABI 1.2) with a context from [`crate::ConfCx::tls`]:
    /// the client side checking and sending `server_name`, or the server
    /// side (STARTTLS). `req`'s handler is resumed when the handshake is
    /// done or failed ([`Conn::error`] says why); until then reads and
    /// writes would block. `timeout_ms` 0: no limit.
    pub fn start_tls_resuming(self, req: &Request<'_>, tls: crate::TlsCtx, server_name: &str, timeout_ms: u64) -> Result<(), sys::Rc> {
        // SAFETY: the callback only passes the request handle to the host.
        unsafe { self.start_tls_raw(tls, server_name, timeout_ms, Some(resume_conn), req.raw().cast()) }
    }

    /// [`Conn::start_tls_resuming`] with a raw callback (called once, with
    /// `EV_WRITE` on success or `EV_ERROR`).
    ///
    /// # Safety
    /// `data` must stay valid until `cb` has been called.
    pub unsafe fn start_tls_raw(self, tls: crate::TlsCtx, server_name: &str, timeout_ms: u64, cb: Option<sys::ConnFn>, data: *mut c_void) -> Result<(), sys::Rc> {
        if !rt::host_has(std::mem::offset_of!(sys::Host, conn_tls)) {
            return Err(sys::UNSUPPORTED);
        }
        let f = rt::host().conn_tls.ok_or(sys::UNSUPPORTED)?;
        // SAFETY: per this function's contract; the name is borrowed.
        match unsafe { f(self.0, tls.raw(), sys::Str::from_bytes(server_name.as_bytes()), timeout_ms, cb, data) } {
            sys::OK => Ok(()),
            rc => Err(rc),
        }
    }

    /// The negotiated TLS protocol and cipher, once established.
    pub fn tls_info(self) -> Option<(&'static str, &'static str)> {
        if !rt::host_has(std::mem::offset_of!(sys::Host, conn_tls_info)) {
            return None;
        }
        let f = rt::host().conn_tls_info?;
        let (mut p, mut c) = (sys::Str::empty(), sys::Str::empty());
        // SAFETY: the host returns static strings.
        (unsafe { f(self.0, &mut p, &mut c) } == sys::OK).then(|| unsafe { (rt::str_of(p), rt::str_of(c)) })
    }

    /// The peer address ("127.0.0.1:8080").
    pub fn peer(self) -> String {
        let Some(f) = rt::host().conn_peer else { return String::new() };
        let mut out = sys::Str::empty();
        // SAFETY: copied before any other call.
        if unsafe { f(self.0, &mut out) } == sys::OK {
            return unsafe { rt::str_of(out) }.to_string();
        }
        String::new()
    }

    /// The last failure: `(sys::OK, "")` if none, `sys::TIMEDOUT` or
    /// `sys::ERROR` with nginx's wording ("connect() failed (111: ...)").
    pub fn error(self) -> (sys::Rc, String) {
        let h = rt::host();
        if !rt::host_has(std::mem::offset_of!(sys::Host, conn_error)) {
            return (sys::ERROR, String::new());
        }
        let Some(f) = h.conn_error else { return (sys::ERROR, String::new()) };
        let mut out = sys::Str::empty();
        // SAFETY: copied at once.
        let rc = unsafe { f(self.0, &mut out) };
        (rc, unsafe { rt::str_of(out) }.to_string())
    }

    /// Closes it (deferred if inside its own callback).
    pub fn close(self) {
        if let Some(f) = rt::host().conn_close {
            // SAFETY: a closed handle is ignored by the host.
            unsafe { f(self.0) };
        }
    }
}

/// Arms a timer that resumes `req`'s handler after `ms`; owned by the
/// request. Returns its id for [`cancel_timer`].
pub fn resume_timer(req: &Request<'_>, ms: u64) -> Result<sys::Timer, sys::Rc> {
    let f = rt::host().timer_add.ok_or(sys::UNSUPPORTED)?;
    let mut id = 0;
    // SAFETY: live handle; the callback gets the handle back as data.
    match unsafe { f(req.raw(), ms, Some(rt::resume_timer), req.raw().cast(), &mut id) } {
        sys::OK => Ok(id),
        rc => Err(rc),
    }
}

/// Arms a process-owned timer calling `cb(data)`.
///
/// # Safety
/// `data` must stay valid until the timer fires or is cancelled.
pub unsafe fn timer_raw(ms: u64, cb: sys::TimerFn, data: *mut c_void) -> Result<sys::Timer, sys::Rc> {
    let f = rt::host().timer_add.ok_or(sys::UNSUPPORTED)?;
    let mut id = 0;
    // SAFETY: per this function's contract.
    match unsafe { f(std::ptr::null_mut(), ms, Some(cb), data, &mut id) } {
        sys::OK => Ok(id),
        rc => Err(rc),
    }
}

/// Cancels a timer (unknown or fired ids are ignored).
pub fn cancel_timer(id: sys::Timer) {
    if let Some(f) = rt::host().timer_cancel {
        // SAFETY: plain id.
        unsafe { f(id) };
    }
}
