//! Asynchronous I/O for plugins inside a worker (or helper) event loop:
//! timers and host-managed connections (protocol listeners).
//!
//! State is per process and thread-local. Plugin callbacks never run while
//! that state is borrowed, so a callback may freely call back into the
//! host. Closing a connection from inside its own callback is deferred
//! until the callback returns. Readiness is edge-triggered: a callback
//! should read or write until `NGX_PLUGIN_AGAIN`; `conn_watch` always
//! schedules one immediate callback so no edge is missed.

#![allow(unsafe_code)]
// Request and connection "pointers" here are opaque handles the host
// resolves itself (or hands to plugin code); nothing dereferences them raw.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use super::host_api;
use crate::worker::timer::{TimerKey, Timers};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use plugin_api::sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Tokens from here on are plugin connections.
pub const TOKEN_BASE: usize = 1 << 40;

/// A host-managed connection behind `ngx_plugin_conn_t`.
pub struct PConn {
    sock: TcpStream,
    token: usize,
    plugin: usize,
    name: String,
    peer: String,
    cb: Option<sys::ConnFn>,
    data: *mut c_void,
    interest: u32,
    closed: bool,
}

struct TimerEntry {
    id: u64,
    plugin: usize,
    name: String,
    cb: sys::TimerFn,
    data: *mut c_void,
    owner: usize,
}

#[derive(Default)]
struct State {
    registry: Option<Registry>,
    conns: HashMap<usize, *mut PConn>,
    next_token: usize,
    timers: Timers<TimerEntry>,
    timer_keys: HashMap<u64, TimerKey>,
    next_timer: u64,
    pending: Vec<(usize, u32)>,
    /// Tokens closed during callbacks, freed by reap().
    closing: Vec<usize>,
}

thread_local! {
    static ST: RefCell<State> = RefCell::new(State::default());
}

/// Gives the I/O layer this process's poll registry.
pub fn init(registry: &Registry) -> std::io::Result<()> {
    let r = registry.try_clone()?;
    ST.with(|s| s.borrow_mut().registry = Some(r));
    Ok(())
}

/// Live plugin connections (they keep a draining worker alive).
pub fn active() -> usize {
    ST.with(|s| s.borrow().conns.len())
}

/// How long until the next plugin timer.
pub fn next_wait(now: Instant) -> Option<Duration> {
    ST.with(|s| {
        let s = s.borrow();
        if !s.pending.is_empty() {
            return Some(Duration::ZERO);
        }
        s.timers.next_wait(now)
    })
}

/// Adopts an accepted socket for plugin `plugin` and calls `on_accept`.
pub fn accept(sock: TcpStream, peer: std::net::SocketAddr, plugin: usize, name: &str, on_accept: sys::AcceptFn, data: *mut c_void) {
    let _ = sock.set_nodelay(true);
    let Some(token) = ST.with(|s| {
        let mut s = s.borrow_mut();
        let token = TOKEN_BASE + s.next_token;
        s.next_token += 1;
        let mut pc = Box::new(PConn {
            sock,
            token,
            plugin,
            name: name.to_string(),
            peer: peer.to_string(),
            cb: None,
            data: std::ptr::null_mut(),
            interest: 0,
            closed: false,
        });
        let reg = s.registry.as_ref()?;
        reg.register(&mut pc.sock, Token(token), Interest::READABLE | Interest::WRITABLE).ok()?;
        s.conns.insert(token, Box::into_raw(pc));
        Some(token)
    }) else {
        crate::log!(Alert, "cannot register a connection for plugin \"{name}\"");
        return;
    };
    // SAFETY: the callback comes from the plugin's conf_listen.
    host_api::with_plugin(plugin, name, || unsafe { on_accept(handle(token), data) });
    reap();
}

/// Dispatches a readiness event for a plugin connection token.
pub fn on_event(token: usize, readable: bool, writable: bool, error: bool) {
    let mut ev = 0;
    if readable {
        ev |= sys::EV_READ;
    }
    if writable {
        ev |= sys::EV_WRITE;
    }
    if error {
        ev |= sys::EV_ERROR;
    }
    dispatch(token, ev);
    reap();
}

fn dispatch(token: usize, ev: u32) {
    let Some(p) = ST.with(|s| s.borrow().conns.get(&token).copied()) else { return };
    // SAFETY: p is a live Box<PConn> owned by ST; it is freed only by
    // reap(), never during a callback (closing is deferred). Copy the
    // scalars out so no reference into the PConn is held while the plugin
    // calls back into conn_* (which take it mutably).
    let (cb, data, interest, closed, plugin, name) = unsafe {
        let c = &*p;
        (c.cb, c.data, c.interest, c.closed, c.plugin, c.name.as_str() as *const str)
    };
    let want = ev & (interest | sys::EV_ERROR);
    if closed || want == 0 {
        return;
    }
    if let Some(cb) = cb {
        // SAFETY: name points into the String's own heap buffer, which no
        // conn_* call modifies and which lives until reap(); the plugin
        // registered cb/data for this connection.
        host_api::with_plugin(plugin, unsafe { &*name }, || unsafe { cb(handle(token), want, data) });
    }
}

/// Runs due timers and pending immediate callbacks.
pub fn run_due() {
    loop {
        let pending = ST.with(|s| std::mem::take(&mut s.borrow_mut().pending));
        if pending.is_empty() {
            break;
        }
        for (token, ev) in pending {
            dispatch(token, ev);
        }
        reap();
    }
    let now = Instant::now();
    while let Some(t) = ST.with(|s| {
        let mut s = s.borrow_mut();
        let t = s.timers.pop_due(now)?;
        s.timer_keys.remove(&t.id);
        Some(t)
    }) {
        // SAFETY: the plugin registered cb/data with timer_add.
        host_api::with_plugin(t.plugin, &t.name, || unsafe { (t.cb)(t.data) });
        reap();
    }
}

/// Frees connections closed during callbacks.
fn reap() {
    let closed: Vec<*mut PConn> = ST.with(|s| {
        let mut s = s.borrow_mut();
        if s.closing.is_empty() {
            return Vec::new();
        }
        let ids = std::mem::take(&mut s.closing);
        ids.iter().filter_map(|t| s.conns.remove(t)).collect()
    });
    for p in closed {
        // SAFETY: removed from the map above, so this is the only owner.
        let mut c = unsafe { Box::from_raw(p) };
        ST.with(|s| {
            if let Some(r) = &s.borrow().registry {
                let _ = r.deregister(&mut c.sock);
            }
        });
    }
}

/// Cancels every timer owned by a finished request.
pub fn drop_owner(owner: usize) {
    ST.with(|s| {
        let mut s = s.borrow_mut();
        if s.timers.is_empty() {
            return;
        }
        for t in s.timers.remove_if(|t| t.owner == owner) {
            s.timer_keys.remove(&t.id);
        }
    });
}

/// Resolves a handle (the connection's token): `GONE` once closed.
fn conn<'a>(c: *mut sys::Conn) -> Result<&'a mut PConn, sys::Rc> {
    let p = ST.with(|s| s.borrow().conns.get(&(c as usize)).copied()).ok_or(sys::GONE)?;
    // SAFETY: pointers in the map are live Box<PConn>s; they are freed only
    // by reap(), between callbacks, after removal from the map.
    let pc = unsafe { &mut *p };
    if pc.closed {
        return Err(sys::GONE);
    }
    Ok(pc)
}

fn handle(token: usize) -> *mut sys::Conn {
    token as *mut sys::Conn
}

pub(super) unsafe extern "C" fn timer_add(
    owner: *mut sys::Request,
    ms: u64,
    cb: Option<sys::TimerFn>,
    data: *mut c_void,
    out: *mut sys::Timer,
) -> sys::Rc {
    let Some(cb) = cb else { return sys::INVALID };
    let (plugin, name) = host_api::current_plugin();
    let id = ST.with(|s| {
        let mut s = s.borrow_mut();
        s.next_timer += 1;
        let id = s.next_timer;
        let e = TimerEntry { id, plugin, name: name.to_string(), cb, data, owner: owner as usize };
        let k = s.timers.add(Instant::now() + Duration::from_millis(ms), e);
        s.timer_keys.insert(id, k);
        id
    });
    if !out.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *out = id };
    }
    sys::OK
}

pub(super) unsafe extern "C" fn timer_cancel(id: sys::Timer) {
    ST.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(k) = s.timer_keys.remove(&id) {
            s.timers.cancel(k);
        }
    });
}

pub(super) unsafe extern "C" fn conn_watch(c: *mut sys::Conn, interest: u32, cb: Option<sys::ConnFn>, data: *mut c_void) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    pc.cb = cb;
    pc.data = data;
    pc.interest = interest & (sys::EV_READ | sys::EV_WRITE);
    let token = pc.token;
    if pc.interest != 0 {
        ST.with(|s| s.borrow_mut().pending.push((token, pc.interest)));
    }
    sys::OK
}

pub(super) unsafe extern "C" fn conn_read(c: *mut sys::Conn, buf: *mut u8, len: usize, n: *mut usize) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    if buf.is_null() || n.is_null() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes a writable buffer of len bytes.
    let dst = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    loop {
        match pc.sock.read(dst) {
            Ok(k) => {
                // SAFETY: n is non-null.
                unsafe { *n = k };
                return sys::OK;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return sys::AGAIN,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return sys::ERROR,
        }
    }
}

pub(super) unsafe extern "C" fn conn_write(c: *mut sys::Conn, bufs: *const sys::Buf, nbufs: usize, n: *mut usize) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    if nbufs > 0 && bufs.is_null() {
        return sys::INVALID;
    }
    let list: &[sys::Buf] = if nbufs == 0 {
        &[]
    } else {
        // SAFETY: nbufs valid buffers for the call.
        unsafe { std::slice::from_raw_parts(bufs, nbufs) }
    };
    let mut total = 0usize;
    let mut rc = sys::OK;
    'bufs: for b in list {
        if b.flags & sys::BUF_FILE != 0 {
            rc = sys::UNSUPPORTED;
            break;
        }
        // SAFETY: a memory buffer points at len readable bytes.
        let mut bytes = unsafe { sys::Str { data: b.data, len: b.len }.as_bytes() };
        while !bytes.is_empty() {
            match pc.sock.write(bytes) {
                Ok(0) => {
                    rc = sys::ERROR;
                    break 'bufs;
                }
                Ok(k) => {
                    total += k;
                    bytes = &bytes[k..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    rc = sys::AGAIN;
                    break 'bufs;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    rc = sys::ERROR;
                    break 'bufs;
                }
            }
        }
    }
    if !n.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *n = total };
    }
    if rc == sys::AGAIN && total > 0 {
        return sys::OK;
    }
    rc
}

pub(super) unsafe extern "C" fn conn_peer(c: *mut sys::Conn, out: *mut sys::Str) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    if out.is_null() {
        return sys::INVALID;
    }
    // SAFETY: non-null out-pointer; peer lives as long as the connection.
    unsafe { *out = sys::Str::from_bytes(pc.peer.as_bytes()) };
    sys::OK
}

pub(super) unsafe extern "C" fn conn_close(c: *mut sys::Conn) {
    if let Ok(pc) = conn(c) {
        pc.closed = true;
        let _ = pc.sock.shutdown(std::net::Shutdown::Both);
        let token = pc.token;
        ST.with(|s| s.borrow_mut().closing.push(token));
    }
}
