//! Asynchronous I/O for plugins inside a worker (or helper) event loop:
//! timers and host-managed connections (accepted by protocol listeners or
//! opened with `conn_connect`), and the relay that copies bytes between two
//! connections.
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
use crate::stats::Stat;
use crate::tls::Stream;
use crate::worker::timer::{TimerKey, Timers};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use plugin_api::sys;
use std::cell::RefCell;
use std::rc::Rc;
use std::collections::HashMap;
use std::ffi::c_void;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Tokens from here on are plugin connections.
pub const TOKEN_BASE: usize = 1 << 40;

/// A host-managed connection behind `ngx_plugin_conn_t`.
pub struct PConn {
    /// None when a connect failed before a socket existed.
    sock: Option<Stream<TcpStream>>,
    /// A TLS handshake started by conn_tls is in progress (its timer, if
    /// any, is in `connecting`).
    handshaking: bool,
    token: usize,
    plugin: usize,
    name: String,
    peer: String,
    cb: Option<sys::ConnFn>,
    data: *mut c_void,
    interest: u32,
    /// Reading may find something (no EAGAIN or short read since the last
    /// readable edge); writing may make progress (no EAGAIN since the last
    /// writable edge). conn_watch schedules an immediate callback only for
    /// what is ready; the rest comes with the next edge (nginx's `ready`).
    rready: bool,
    wready: bool,
    /// The peer closed its side (EPOLLRDHUP seen).
    rdhup: bool,
    closed: bool,
    /// The request that owns it (0: the process): closed when it ends.
    owner: usize,
    /// Made with conn_connect: does not by itself keep a draining worker.
    outbound: bool,
    /// Accepted from a plugin's listener: counted as an active connection.
    accepted: bool,
    /// A connect in progress: the id of its timeout timer (0: none).
    connecting: Option<u64>,
    /// The last failure, as nginx words it.
    error: String,
    /// The last failure was a timeout.
    timed_out: bool,
    /// A Unix-domain socket (`unix:/path`).
    unix: bool,
    /// Relayed for this HTTP connection (wake it on events).
    http: Option<usize>,
    /// Relayed with another plugin connection.
    relay: Option<Box<ConnRelay>>,
    /// conn_set_idle: a relay ends after this long without a read from
    /// this connection (None: no limit).
    idle: Option<Duration>,
    /// The last read while relayed.
    last_read: Instant,
    /// The idle timer armed for a relay between plugin connections (0:
    /// none).
    idle_timer: u64,
}

impl PConn {
    /// A plain socket, where `rready`/`wready` false means the kernel has
    /// nothing for us until the next edge, so reads and writes answer
    /// AGAIN without a syscall (nginx's `ready` flags). TLS sessions keep
    /// their own buffers and always ask.
    fn is_plain(&self) -> bool {
        self.sock.as_ref().is_some_and(|s| !s.is_tls())
    }

    fn sock(&mut self) -> std::io::Result<&mut Stream<TcpStream>> {
        self.sock.as_mut().ok_or_else(|| std::io::Error::from(ErrorKind::NotConnected))
    }
}

/// One direction of a relay: bytes read from one side not yet written to
/// the other.
#[derive(Default)]
pub struct Pipe {
    buf: Vec<u8>,
    pos: usize,
    /// The source reached EOF.
    pub eof: bool,
    /// Bytes were read from the source (the caller clears it): the
    /// relay's idle limit counts from the last read.
    pub got: bool,
}

impl Pipe {
    /// Starts with bytes already read (pipelined after an Upgrade request).
    pub fn with(bytes: &[u8]) -> Pipe {
        Pipe { buf: bytes.to_vec(), pos: 0, eof: false, got: false }
    }

    /// True when the source ended and everything read was written.
    pub fn finished(&self) -> bool {
        self.eof && self.pos >= self.buf.len()
    }

    /// Moves bytes from `src` to `dst` until neither can make progress.
    /// Err on a socket error.
    pub fn pump(&mut self, src: &mut impl Read, dst: &mut impl Write) -> Result<(), String> {
        loop {
            while self.pos < self.buf.len() {
                match dst.write(&self.buf[self.pos..]) {
                    Ok(0) => return Err("send() returned 0".into()),
                    Ok(n) => self.pos += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("send() failed ({e})")),
                }
            }
            if self.eof {
                return Ok(());
            }
            self.buf.resize(16 * 1024, 0);
            self.pos = 0;
            match src.read(&mut self.buf) {
                Ok(0) => {
                    self.buf.clear();
                    self.eof = true;
                }
                Ok(n) => {
                    self.buf.truncate(n);
                    self.got = true;
                }
                Err(e) => {
                    self.buf.clear();
                    match e.kind() {
                        ErrorKind::WouldBlock => return Ok(()),
                        ErrorKind::Interrupted => {}
                        _ => return Err(format!("recv() failed ({e})")),
                    }
                }
            }
        }
    }
}

/// A relay between two plugin connections (`relay` with no request).
struct ConnRelay {
    other: usize,
    /// This connection → other.
    out: Pipe,
    /// Only on one of the two: who to tell at the end.
    done: Option<(sys::DoneFn, *mut c_void)>,
}

enum TimerWhat {
    Plugin(sys::TimerFn, *mut c_void),
    ConnectTimeout(usize),
    /// A relayed connection's idle limit (conn_set_idle) may have passed.
    RelayIdle(usize),
}

struct TimerEntry {
    plugin: usize,
    /// The plugin's name (shared, see State::names).
    name: Rc<str>,
    what: TimerWhat,
    owner: usize,
}

/// Hashing for the integer keys below (tokens, timer ids, request
/// handles): one multiplication instead of SipHash, which cost ~140
/// instructions a lookup on every plugin I/O call. The keys are the host's
/// own, not chosen by a peer, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct IntHash(u64);

impl std::hash::Hasher for IntHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHash>>;

#[derive(Default)]
struct State {
    registry: Option<Registry>,
    conns: IntMap<usize, *mut PConn>,
    next_token: usize,
    /// Plugin timers; a timer's id is its key (`TimerKey::to_id`).
    timers: Timers<TimerEntry>,
    /// Per owning request (handle): what it owns, so that drop_owner
    /// finds it without scanning every timer and connection.
    owned: IntMap<usize, Owned>,
    pending: Vec<(usize, u32)>,
    /// Tokens closed during callbacks, freed by reap().
    closing: Vec<usize>,
    /// The other half of `pending`'s double buffer (see run_pending).
    spare_pending: Vec<(usize, u32)>,
    /// Plugin names for timers, shared rather than copied per timer.
    names: Vec<(usize, Rc<str>)>,
}

impl State {
    /// Arms a timer; returns its id.
    fn add_timer(&mut self, ms: u64, plugin: usize, name: &str, what: TimerWhat, owner: usize) -> u64 {
        let name = match self.names.iter().find(|(i, n)| *i == plugin && **n == *name) {
            Some((_, n)) => n.clone(),
            None => {
                let n: Rc<str> = name.into();
                self.names.push((plugin, n.clone()));
                n
            }
        };
        let e = TimerEntry { plugin, name, what, owner };
        let id = self.timers.add(crate::clock::now() + Duration::from_millis(ms), e).to_id();
        if owner != 0 {
            self.owned.entry(owner).or_default().add_timer(id);
        }
        id
    }

    /// Notes that a timer of `owner` fired or was cancelled.
    fn timer_gone(&mut self, owner: usize, id: u64) {
        if let Some(o) = self.owned.get_mut(&owner) {
            o.remove_timer(id);
            if o.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }

    /// Counts one more connection for `owner` (0: the process).
    fn own_conn(&mut self, owner: usize) {
        if owner != 0 {
            self.owned.entry(owner).or_default().conns += 1;
        }
    }

    /// Counts one fewer.
    fn disown_conn(&mut self, owner: usize) {
        if let Some(o) = self.owned.get_mut(&owner) {
            o.conns = o.conns.saturating_sub(1);
            if o.is_empty() {
                self.owned.remove(&owner);
            }
        }
    }
}

/// What one request owns: its connections (counted) and its timers (the
/// ids of up to four; past that, drop_owner scans).
#[derive(Default)]
struct Owned {
    conns: u32,
    timers: [u64; 4],
    ntimers: u8,
    /// More timers than `timers` holds were armed at some point.
    overflow: bool,
}

impl Owned {
    fn add_timer(&mut self, id: u64) {
        match self.timers.get_mut(self.ntimers as usize) {
            Some(slot) => {
                *slot = id;
                self.ntimers += 1;
            }
            None => self.overflow = true,
        }
    }

    fn remove_timer(&mut self, id: u64) {
        let n = self.ntimers as usize;
        if let Some(i) = self.timers[..n].iter().position(|&t| t == id) {
            self.timers[i] = self.timers[n - 1];
            self.ntimers -= 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.conns == 0 && self.ntimers == 0 && !self.overflow
    }
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

/// Live plugin connections that keep a draining worker alive: accepted
/// ones. Outbound connections (upstreams, idle keepalive pools) do not:
/// the request or client connection using them does.
pub fn active() -> usize {
    ST.with(|s| {
        s.borrow()
            .conns
            .values()
            // SAFETY: live Box<PConn>s owned by ST (see conn()).
            .filter(|&&p| !unsafe { &*p }.outbound)
            .count()
    })
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
        let mut pc = new_conn(Some(Stream::plain(sock)), token, plugin, name, peer.to_string());
        let reg = s.registry.as_ref()?;
        reg.register(&mut pc.sock.as_mut()?.tcp, Token(token), Interest::READABLE | Interest::WRITABLE).ok()?;
        pc.accepted = true;
        s.conns.insert(token, Box::into_raw(pc));
        Some(token)
    }) else {
        crate::log!(Alert, "cannot register a connection for plugin \"{name}\"");
        return;
    };
    crate::stats::inc(Stat::Handled);
    crate::stats::inc(Stat::Active);
    // SAFETY: the callback comes from the plugin's conf_listen.
    host_api::with_plugin(plugin, name, || unsafe { on_accept(handle(token), data) });
    reap();
}

fn new_conn(sock: Option<Stream<TcpStream>>, token: usize, plugin: usize, name: &str, peer: String) -> Box<PConn> {
    Box::new(PConn {
        sock,
        handshaking: false,
        token,
        plugin,
        name: name.to_string(),
        peer,
        cb: None,
        data: std::ptr::null_mut(),
        interest: 0,
        rready: true,
        wready: true,
        rdhup: false,
        closed: false,
        owner: 0,
        outbound: false,
        accepted: false,
        connecting: None,
        error: String::new(),
        timed_out: false,
        unix: false,
        http: None,
        relay: None,
        idle: None,
        last_read: crate::clock::now(),
        idle_timer: 0,
    })
}

/// Dispatches a readiness event for a plugin connection token; the peer's
/// FIN (`read_closed`) counts as readable.
pub fn on_event(token: usize, readable: bool, writable: bool, error: bool, read_closed: bool) {
    if read_closed {
        // The peer's FIN came with this edge: a short read will not mean
        // "drained" any more (the EOF is still to be read, and no further
        // edge will announce it).
        if let Some(p) = ST.with(|s| s.borrow().conns.get(&token).copied()) {
            // SAFETY: a live Box<PConn> owned by ST (see dispatch).
            unsafe { (*p).rdhup = true };
        }
    }
    let mut ev = 0;
    if readable || read_closed {
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
    // reap(), never during a callback (closing is deferred). The borrow is
    // not used once plugin code runs: `call` receives copies.
    let pc = unsafe { &mut *p };
    if pc.closed {
        return;
    }
    if ev & (sys::EV_READ | sys::EV_ERROR) != 0 {
        pc.rready = true;
    }
    if ev & (sys::EV_WRITE | sys::EV_ERROR) != 0 {
        pc.wready = true;
    }
    if let Some(conn) = pc.http {
        crate::http::wake(conn);
        return;
    }
    if pc.relay.is_some() {
        relay_step(token);
        return;
    }
    if pc.handshaking {
        handshake_step(pc, token);
        return;
    }
    if pc.connecting.is_some() {
        match connect_result(pc) {
            None => return,
            Some(Ok(())) => {
                if let Some(id) = pc.connecting.take() {
                    timer_cancel_id(id);
                }
                if let Ok(a) = pc.sock().and_then(|s| s.tcp.peer_addr()) {
                    pc.peer = a.to_string();
                }
                // Connected: the plugin now watches what it wants.
                pc.interest = 0;
                call(token, sys::EV_WRITE, pc.cb, pc.data);
            }
            Some(Err(e)) => {
                pc.connecting = None;
                pc.error = format!("connect() failed ({})", crate::config::parser::os_err(&e));
                pc.interest = 0;
                call(token, sys::EV_ERROR, pc.cb, pc.data);
            }
        }
        return;
    }
    // TLS records the session could not send earlier go out now, whatever
    // the plugin is waiting for.
    if let Some(s) = pc.sock.as_mut().filter(|s| s.is_tls()) {
        let _ = s.flush_tls();
    }
    let want = ev & (pc.interest | sys::EV_ERROR);
    if want != 0 {
        call(token, want, pc.cb, pc.data);
    }
}

/// Connects a nonblocking stream socket to the Unix-domain socket at
/// `path` (`proxy_pass http://unix:/path`). A local connect completes at
/// once or fails (EAGAIN when the listener's backlog is full, as nginx
/// reports it). The socket is then driven through mio's TcpStream: recv,
/// send, shutdown and SO_ERROR are the same calls on an AF_UNIX stream
/// socket, and nothing here asks it for an IP address.
fn connect_unix(path: &str) -> std::io::Result<TcpStream> {
    use std::os::unix::io::FromRawFd;
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let bytes = path.as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
        *d = b as libc::c_char;
    }
    // SAFETY: plain socket calls on a descriptor owned here until it is
    // handed to TcpStream (or closed on failure); addr is initialised.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        if libc::connect(fd, &addr as *const libc::sockaddr_un as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Where a connect in progress stands: None while still connecting.
fn connect_result(pc: &mut PConn) -> Option<std::io::Result<()>> {
    let unix = pc.unix;
    let sock = match pc.sock() {
        Ok(s) => &mut s.tcp,
        Err(e) => return Some(Err(e)),
    };
    match sock.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        // A Unix-domain connect is complete once it succeeded.
        Ok(None) if unix => return Some(Ok(())),
        Ok(None) => {}
    }
    match sock.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == ErrorKind::NotConnected => None,
        Err(e) => Some(Err(e)),
    }
}

/// Calls a connection callback of the plugin that owns `token`.
fn call(token: usize, ev: u32, cb: Option<sys::ConnFn>, data: *mut c_void) {
    let Some(cb) = cb else { return };
    let Some(p) = ST.with(|s| s.borrow().conns.get(&token).copied()) else { return };
    // SAFETY: live (see dispatch); the name's heap buffer is not modified
    // by any conn_* call and lives until reap().
    let (plugin, name) = unsafe { ((*p).plugin, (*p).name.as_str() as *const str) };
    // SAFETY: the plugin registered cb/data for this connection.
    host_api::with_plugin(plugin, unsafe { &*name }, || unsafe { cb(handle(token), ev, data) });
}

/// Runs the pending immediate callbacks (`conn_watch` on a connection
/// that is already ready); returns whether there were any. The worker calls
/// this after every event, so an upstream request goes out while its
/// client's event is handled, not after the whole epoll batch.
pub fn run_pending() -> bool {
    let mut ran = false;
    loop {
        // The queue is swapped with a spare one, so callbacks queueing more
        // reuse memory rather than allocate.
        let mut list = ST.with(|s| {
            let mut s = s.borrow_mut();
            let spare = std::mem::take(&mut s.spare_pending);
            std::mem::replace(&mut s.pending, spare)
        });
        if list.is_empty() {
            ST.with(|s| s.borrow_mut().spare_pending = list);
            return ran;
        }
        ran = true;
        for &(token, ev) in &list {
            dispatch(token, ev);
        }
        reap();
        list.clear();
        ST.with(|s| s.borrow_mut().spare_pending = list);
    }
}

/// Runs pending immediate callbacks and due timers.
pub fn run_due() {
    run_pending();
    let now = crate::clock::now();
    while let Some(t) = ST.with(|s| {
        let mut s = s.borrow_mut();
        let (k, t) = s.timers.pop_due(now)?;
        s.timer_gone(t.owner, k.to_id());
        Some(t)
    }) {
        match t.what {
            // SAFETY: the plugin registered cb/data with timer_add.
            TimerWhat::Plugin(cb, data) => host_api::with_plugin(t.plugin, &t.name, || unsafe { cb(data) }),
            TimerWhat::ConnectTimeout(token) => connect_timed_out(token),
            TimerWhat::RelayIdle(token) => relay_idle_due(token),
        }
        reap();
    }
}

fn connect_timed_out(token: usize) {
    let Ok(pc) = conn(handle(token)) else { return };
    if pc.connecting.take().is_none() {
        return;
    }
    pc.error = if pc.handshaking {
        pc.handshaking = false;
        "timed out (110: Connection timed out) while SSL handshaking".into()
    } else {
        "upstream timed out (110: Connection timed out) while connecting".into()
    };
    pc.timed_out = true;
    pc.interest = 0;
    let (cb, data) = (pc.cb, pc.data);
    call(token, sys::EV_ERROR, cb, data);
}

/// Frees connections closed during callbacks.
fn reap() {
    let closed: Vec<*mut PConn> = ST.with(|s| {
        let mut s = s.borrow_mut();
        if s.closing.is_empty() {
            return Vec::new();
        }
        let ids = std::mem::take(&mut s.closing);
        let gone: Vec<*mut PConn> = ids.iter().filter_map(|t| s.conns.remove(t)).collect();
        for &p in &gone {
            // SAFETY: live until freed below.
            let owner = unsafe { &*p }.owner;
            s.disown_conn(owner);
        }
        gone
    });
    for p in closed {
        // SAFETY: removed from the map above, so this is the only owner.
        let mut c = unsafe { Box::from_raw(p) };
        if c.accepted {
            crate::stats::dec(Stat::Active);
        }
        ST.with(|s| {
            if let (Some(r), Some(sock)) = (&s.borrow().registry, c.sock.as_mut()) {
                let _ = r.deregister(&mut sock.tcp);
            }
        });
    }
}

/// Cancels every timer and closes every connection owned by a finished
/// request.
pub fn drop_owner(owner: usize) {
    let owned: Vec<usize> = ST.with(|s| {
        let mut s = s.borrow_mut();
        let Some(o) = s.owned.remove(&owner) else { return Vec::new() };
        if o.overflow {
            s.timers.retain(|t| t.owner != owner);
        } else {
            for &id in &o.timers[..o.ntimers as usize] {
                s.timers.cancel(TimerKey::from_id(id));
            }
        }
        if o.conns == 0 {
            return Vec::new();
        }
        // Closed connections stay counted until reap(): count them again.
        s.owned.insert(owner, Owned { conns: o.conns, ..Owned::default() });
        s.conns
            .iter()
            // SAFETY: live Box<PConn>s owned by ST.
            .filter(|(_, &p)| unsafe { &*p }.owner == owner)
            .map(|(&t, _)| t)
            .collect()
    });
    for t in owned {
        close_token(t);
    }
}

fn close_token(token: usize) {
    if let Ok(pc) = conn(handle(token)) {
        pc.closed = true;
        if let Some(sock) = pc.sock.as_mut() {
            if !sock.handshaking() {
                sock.close_notify();
            }
            let _ = sock.tcp.shutdown(std::net::Shutdown::Both);
        }
        if let Some(id) = pc.connecting.take() {
            timer_cancel_id(id);
        }
        if pc.idle_timer != 0 {
            timer_cancel_id(std::mem::take(&mut pc.idle_timer));
        }
        ST.with(|s| s.borrow_mut().closing.push(token));
    }
}

fn timer_cancel_id(id: u64) {
    ST.with(|s| {
        let mut s = s.borrow_mut();
        if let Some(t) = s.timers.cancel(TimerKey::from_id(id)) {
            s.timer_gone(t.owner, id);
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
        s.add_timer(ms, plugin, name, TimerWhat::Plugin(cb, data), owner as usize)
    });
    if !out.is_null() {
        // SAFETY: non-null out-pointer.
        unsafe { *out = id };
    }
    sys::OK
}

pub(super) unsafe extern "C" fn timer_cancel(id: sys::Timer) {
    timer_cancel_id(id);
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
    let ready = if pc.rready { sys::EV_READ } else { 0 } | if pc.wready { sys::EV_WRITE } else { 0 };
    // While connecting or handshaking, the next edge drives everything.
    let busy = pc.connecting.is_some() || pc.handshaking || pc.relay.is_some() || pc.http.is_some();
    let now = if busy { pc.interest } else { pc.interest & ready };
    if now != 0 {
        ST.with(|s| s.borrow_mut().pending.push((token, now)));
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
    if pc.connecting.is_some() || (!pc.rready && pc.is_plain()) {
        return sys::AGAIN;
    }
    loop {
        match pc.sock().and_then(|s| s.read(dst)) {
            Ok(k) => {
                // A short read on a plain socket took all there was: the
                // next bytes come with an edge. (TLS may hold more
                // plaintext than one read returns.)
                if k > 0 && k < len && !pc.rdhup && pc.is_plain() {
                    pc.rready = false;
                }
                // SAFETY: n is non-null.
                unsafe { *n = k };
                return sys::OK;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                pc.rready = false;
                return sys::AGAIN;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                pc.error = format!("recv() failed ({})", crate::config::parser::os_err(&e));
                return sys::ERROR;
            }
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
    if pc.connecting.is_some() || (!pc.wready && pc.is_plain() && list.iter().any(|b| b.len != 0)) {
        return sys::AGAIN;
    }
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
            match pc.sock().and_then(|s| s.write(bytes)) {
                Ok(0) => {
                    rc = sys::ERROR;
                    break 'bufs;
                }
                Ok(k) => {
                    total += k;
                    bytes = &bytes[k..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    pc.wready = false;
                    rc = sys::AGAIN;
                    break 'bufs;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    pc.error = format!("send() failed ({})", crate::config::parser::os_err(&e));
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
    close_token(c as usize);
}

pub(super) unsafe extern "C" fn conn_connect(
    owner: *mut sys::Request,
    addr: sys::Str,
    timeout_ms: u64,
    cb: Option<sys::ConnFn>,
    data: *mut c_void,
    out: *mut *mut sys::Conn,
) -> sys::Rc {
    if out.is_null() || cb.is_none() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes a valid string for the call.
    let text = unsafe { addr.as_bytes() };
    let Ok(text) = std::str::from_utf8(text) else { return sys::INVALID };
    let unix = text.strip_prefix("unix:");
    let sa = match (unix, text.parse::<std::net::SocketAddr>()) {
        (Some(_), _) => None,
        (None, Ok(sa)) => Some(sa),
        // Names should be resolved at configuration time; this blocks.
        (None, Err(_)) => match std::net::ToSocketAddrs::to_socket_addrs(text).ok().and_then(|mut a| a.next()) {
            Some(sa) => Some(sa),
            None => return sys::INVALID,
        },
    };
    let (plugin, name) = host_api::current_plugin();
    let connected = match (unix, sa) {
        (Some(path), _) => connect_unix(path),
        (None, Some(sa)) => TcpStream::connect(sa),
        (None, None) => return sys::INVALID,
    };
    let (sock, error) = match connected {
        Ok(s) => (Some(Stream::plain(s)), None),
        Err(e) => (None, Some(e)),
    };
    let peer = sa.map_or_else(|| text.to_string(), |sa| sa.to_string());
    let token = ST.with(|s| {
        let mut s = s.borrow_mut();
        let token = TOKEN_BASE + s.next_token;
        s.next_token += 1;
        let mut pc = new_conn(sock, token, plugin, name, peer);
        pc.unix = unix.is_some();
        pc.owner = owner as usize;
        s.own_conn(pc.owner);
        pc.outbound = true;
        pc.cb = cb;
        pc.data = data;
        match error {
            Some(e) => {
                pc.error = format!("connect() failed ({})", crate::config::parser::os_err(&e));
                pc.interest = sys::EV_ERROR;
                s.pending.push((token, sys::EV_ERROR));
            }
            None => {
                let _ = pc.sock.as_ref().map(|s| s.tcp.set_nodelay(true));
                let ok = match (s.registry.as_ref(), pc.sock.as_mut()) {
                    (Some(r), Some(sock)) => r.register(&mut sock.tcp, Token(token), Interest::READABLE | Interest::WRITABLE).is_ok(),
                    _ => false,
                };
                if !ok {
                    pc.error = "epoll_ctl() failed".into();
                    pc.interest = sys::EV_ERROR;
                    s.pending.push((token, sys::EV_ERROR));
                } else {
                    pc.interest = sys::EV_WRITE;
                    if timeout_ms > 0 {
                        pc.connecting = Some(s.add_timer(timeout_ms, plugin, name, TimerWhat::ConnectTimeout(token), owner as usize));
                    } else {
                        pc.connecting = Some(0);
                    }
                }
            }
        }
        s.conns.insert(token, Box::into_raw(pc));
        token
    });
    // SAFETY: non-null out-pointer.
    unsafe { *out = handle(token) };
    sys::OK
}

pub(super) unsafe extern "C" fn conn_error(c: *mut sys::Conn, out: *mut sys::Str) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    if !out.is_null() {
        // SAFETY: non-null out-pointer; the text lives until the next failure.
        unsafe { *out = sys::Str::from_bytes(pc.error.as_bytes()) };
    }
    if pc.timed_out {
        sys::TIMEDOUT
    } else if pc.error.is_empty() {
        sys::OK
    } else {
        sys::ERROR
    }
}

/// Hands connection `c` to HTTP connection `http` for a relay: its events
/// wake that connection instead of calling the plugin.
pub fn attach_http(c: *mut sys::Conn, http: usize) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    if pc.connecting.is_some() || pc.handshaking || pc.relay.is_some() || pc.http.is_some() {
        return sys::INVALID;
    }
    pc.http = Some(http);
    pc.last_read = crate::clock::now();
    pc.cb = None;
    ST.with(|s| s.borrow_mut().disown_conn(pc.owner));
    pc.owner = 0;
    sys::OK
}

/// Runs `f` on the socket of a relayed connection; GONE once closed.
pub fn with_sock<T>(token: usize, f: impl FnOnce(&mut Stream<TcpStream>) -> T) -> Result<T, sys::Rc> {
    let pc = conn(handle(token))?;
    pc.sock().map(f).map_err(|_| sys::ERROR)
}

/// Closes a connection by token (the host owns relayed connections).
pub fn close(token: usize) {
    close_token(token);
}

pub(super) unsafe extern "C" fn relay_conns(a: *mut sys::Conn, b: *mut sys::Conn, done: Option<sys::DoneFn>, data: *mut c_void) -> sys::Rc {
    let (ta, tb) = (a as usize, b as usize);
    if ta == tb {
        return sys::INVALID;
    }
    for t in [ta, tb] {
        match conn(handle(t)) {
            Ok(pc) if pc.connecting.is_none() && pc.relay.is_none() && pc.http.is_none() => {}
            Ok(_) => return sys::INVALID,
            Err(rc) => return rc,
        }
    }
    for (t, other) in [(ta, tb), (tb, ta)] {
        if let Ok(pc) = conn(handle(t)) {
            pc.relay = Some(Box::new(ConnRelay { other, out: Pipe::default(), done: None }));
            pc.cb = None;
            ST.with(|s| s.borrow_mut().disown_conn(pc.owner));
            pc.owner = 0;
            if let Some(idle) = pc.idle {
                pc.last_read = crate::clock::now();
                arm_idle(pc, idle);
            }
        }
    }
    if let (Ok(pc), Some(done)) = (conn(handle(ta)), done) {
        if let Some(r) = pc.relay.as_mut() {
            r.done = Some((done, data));
        }
    }
    ST.with(|s| s.borrow_mut().pending.push((ta, sys::EV_READ | sys::EV_WRITE)));
    sys::OK
}

/// Moves bytes both ways between two relayed plugin connections; ends the
/// relay (closing both, then calling `done`) when either side finished.
fn relay_step(token: usize) {
    let Ok(a) = conn(handle(token)) else { return };
    let Some(other) = a.relay.as_ref().map(|r| r.other) else { return };
    let Ok(b) = conn(handle(other)) else {
        close_token(token);
        return;
    };
    // SAFETY: two distinct live PConns (tokens differ, checked at setup).
    let (a, b) = (a as *mut PConn, b as *mut PConn);
    let (a, b) = unsafe { (&mut *a, &mut *b) };
    let mut res = Ok(());
    let mut finished = false;
    if let (Some(ra), Some(rb), Some(sa), Some(sb)) = (a.relay.as_mut(), b.relay.as_mut(), a.sock.as_mut(), b.sock.as_mut()) {
        res = ra.out.pump(sa, sb).and_then(|()| rb.out.pump(sb, sa));
        finished = ra.out.finished() || rb.out.finished();
        // ra.out reads from a, rb.out from b.
        for (got, pc) in [(&mut ra.out.got, &mut a.last_read), (&mut rb.out.got, &mut b.last_read)] {
            if std::mem::take(got) {
                *pc = crate::clock::now();
            }
        }
    }
    if res.is_err() || finished {
        end_relay(token, other, if res.is_err() { sys::ERROR } else { sys::OK });
    }
}

/// Ends a relay between plugin connections: closes both, then calls the
/// plugin's `done` with `rc`.
fn end_relay(token: usize, other: usize, rc: sys::Rc) {
    let (Ok(a), Ok(b)) = (conn(handle(token)), conn(handle(other))) else {
        close_token(token);
        close_token(other);
        return;
    };
    let done = a.relay.as_mut().and_then(|r| r.done.take());
    let done = done.or_else(|| b.relay.as_mut().and_then(|r| r.done.take()));
    let plugin = (a.plugin, a.name.clone());
    close_token(token);
    close_token(other);
    if let Some((f, data)) = done {
        // SAFETY: the plugin passed done/data to relay.
        host_api::with_plugin(plugin.0, &plugin.1, || unsafe { f(std::ptr::null_mut(), rc, data) });
    }
}

/// Arms the idle timer of relayed connection `pc` to fire `after`.
fn arm_idle(pc: &mut PConn, after: Duration) {
    let ms = after.as_millis().max(1) as u64;
    pc.idle_timer = ST.with(|s| s.borrow_mut().add_timer(ms, pc.plugin, &pc.name, TimerWhat::RelayIdle(pc.token), 0));
}

/// A relayed connection's idle timer fired: ends the relay if nothing was
/// read from it for its limit, else waits for the rest (reads do not
/// re-arm the timer: it is checked when it fires).
fn relay_idle_due(token: usize) {
    let Ok(pc) = conn(handle(token)) else { return };
    pc.idle_timer = 0;
    let (Some(idle), Some(other)) = (pc.idle, pc.relay.as_ref().map(|r| r.other)) else { return };
    let due = pc.last_read + idle;
    let now = crate::clock::now();
    if now < due {
        arm_idle(pc, due - now);
        return;
    }
    crate::log!(Info, "{} timed out (nothing read for {} ms) while relaying", pc.peer, idle.as_millis());
    end_relay(token, other, sys::ERROR);
}

/// conn_set_idle.
pub(super) unsafe extern "C" fn conn_set_idle(c: *mut sys::Conn, ms: u64) -> sys::Rc {
    match conn(c) {
        Ok(pc) => {
            pc.idle = (ms > 0).then(|| Duration::from_millis(ms));
            sys::OK
        }
        Err(rc) => rc,
    }
}

/// For a connection relayed to an HTTP client: notes a read from it.
pub fn note_read(token: usize) {
    if let Ok(pc) = conn(handle(token)) {
        pc.last_read = crate::clock::now();
    }
}

/// For a connection relayed to an HTTP client: when its idle limit runs
/// out (None: no limit).
pub fn idle_deadline(token: usize) -> Option<Instant> {
    conn(handle(token)).ok().and_then(|pc| pc.idle.map(|i| pc.last_read + i))
}

/// A TLS context a plugin built with conf_tls (behind `ngx_plugin_tls_t`).
pub enum TlsCtx {
    /// Client side (upstream TLS).
    Client(std::sync::Arc<rustls::ClientConfig>),
    /// Server side (STARTTLS).
    Server(std::sync::Arc<rustls::ServerConfig>),
}

thread_local! {
    /// Addresses of live contexts: a handle is checked before use.
    static LIVE_TLS: RefCell<std::collections::HashSet<usize>> = RefCell::new(std::collections::HashSet::new());
}

impl TlsCtx {
    /// Registers a context (owned by the generation) and returns its handle.
    pub fn register(b: &TlsCtx) -> *mut sys::Tls {
        let p = b as *const TlsCtx as usize;
        LIVE_TLS.with(|l| l.borrow_mut().insert(p));
        p as *mut sys::Tls
    }
}

impl Drop for TlsCtx {
    fn drop(&mut self) {
        let p = self as *const TlsCtx as usize;
        LIVE_TLS.with(|l| l.borrow_mut().remove(&p));
    }
}

/// The context behind a handle, if it is live.
fn tls_ctx<'a>(t: *mut sys::Tls) -> Option<&'a TlsCtx> {
    let live = LIVE_TLS.with(|l| l.borrow().contains(&(t as usize)));
    // SAFETY: registered addresses are live boxed TlsCtx values owned by a
    // generation; Drop unregisters them before the memory goes.
    live.then(|| unsafe { &*(t as *const TlsCtx) })
}

/// Drives a conn_tls handshake; tells the plugin when it is over.
fn handshake_step(pc: &mut PConn, token: usize) {
    let res = pc.sock().and_then(|s| s.handshake());
    let ev = match res {
        Ok(false) => return,
        Ok(true) => sys::EV_WRITE,
        Err(e) => {
            let why = e.to_string();
            pc.error = if e.kind() == ErrorKind::UnexpectedEof {
                "peer closed connection in SSL handshake".into()
            } else if why.contains("invalid peer certificate") {
                format!("SSL certificate verify error: ({why})")
            } else {
                format!("SSL_do_handshake() failed ({why})")
            };
            sys::EV_ERROR
        }
    };
    pc.handshaking = false;
    if let Some(id) = pc.connecting.take() {
        timer_cancel_id(id);
    }
    pc.interest = 0;
    call(token, ev, pc.cb, pc.data);
}

pub(super) unsafe extern "C" fn conn_tls(
    c: *mut sys::Conn,
    tls: *mut sys::Tls,
    server_name: sys::Str,
    timeout_ms: u64,
    cb: Option<sys::ConnFn>,
    data: *mut c_void,
) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    let Some(ctx) = tls_ctx(tls) else { return sys::INVALID };
    if cb.is_none() || pc.connecting.is_some() || pc.handshaking || pc.relay.is_some() || pc.http.is_some() {
        return sys::INVALID;
    }
    let Ok(sock) = pc.sock() else { return sys::ERROR };
    if sock.is_tls() {
        return sys::INVALID;
    }
    // SAFETY: the plugin passes a valid string for the call.
    let name = std::str::from_utf8(unsafe { server_name.as_bytes() }).unwrap_or("");
    let session = match ctx {
        TlsCtx::Client(cfg) => crate::tls::client_session(cfg, name),
        TlsCtx::Server(cfg) => crate::tls::server_session(cfg),
    };
    match session {
        Ok(sess) => sock.start(sess),
        Err(e) => {
            pc.error = e;
            return sys::ERROR;
        }
    }
    pc.handshaking = true;
    pc.timed_out = false;
    pc.error.clear();
    pc.cb = cb;
    pc.data = data;
    let token = pc.token;
    let (plugin, name) = host_api::current_plugin();
    ST.with(|s| {
        let mut s = s.borrow_mut();
        pc.connecting = Some(if timeout_ms > 0 {
            s.add_timer(timeout_ms, plugin, name, TimerWhat::ConnectTimeout(token), pc.owner)
        } else {
            0
        });
        s.pending.push((token, sys::EV_WRITE));
    });
    sys::OK
}

pub(super) unsafe extern "C" fn conn_tls_info(c: *mut sys::Conn, protocol: *mut sys::Str, cipher: *mut sys::Str) -> sys::Rc {
    let pc = match conn(c) {
        Ok(pc) => pc,
        Err(rc) => return rc,
    };
    let Some(info) = pc.sock.as_ref().filter(|s| !s.handshaking()).and_then(Stream::info) else { return sys::NOT_FOUND };
    for (out, v) in [(protocol, info.protocol), (cipher, info.cipher)] {
        if !out.is_null() {
            // SAFETY: non-null out-pointer; static text.
            unsafe { *out = sys::Str::from_bytes(v.as_bytes()) };
        }
    }
    sys::OK
}
