//! HTTP/1.x connections as the worker sees them.
//!
//! A [`Conn`] reads request heads incrementally (httparse, then nginx's
//! stricter checks in [`parse`]), picks the virtual server, and hands the
//! request to the phase engine ([`request`]). It then pumps the request
//! body (Content-Length or chunked) when a plugin reads it — or discards
//! it so keepalive stays correct — and flushes the response (memory and
//! sendfile file regions). Keepalive, pipelining, timeouts and lingering
//! close follow nginx.
//!
//! Plugins suspend requests and resume them from timers or other
//! connections' callbacks; [`wake`] queues the connection and the worker
//! runs it again after the current event.

pub mod arena;
pub mod conf;
pub mod parse;
pub mod proxy_protocol;
pub mod request;
pub mod vars;

use crate::cycle::Cycle;
use crate::plugin::host_api;
use crate::plugin::io::{self as pio, Pipe};
use conf::Server;
use mio::net::TcpStream;
use parse::Framing;
use plugin_api::http::{Chunked, Step};
use plugin_api::sys;
use request::{BodyIn, Chunk, Req, Run};
use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use crate::stats::ConnStat;
use crate::tls::{Hello, Stream};

thread_local! {
    static WAKE: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    static SERIAL: Cell<u64> = const { Cell::new(0) };
    /// The connection whose on_ready is running (usize::MAX: none).
    static RUNNING: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Read buffers of connections that went idle, for the next busy one:
    /// an idle keepalive connection holds no buffer (as nginx frees its
    /// header buffer), and a busy one takes a buffer without malloc.
    /// At most 32 of them, 16 KiB each.
    static RBUFS: FreeList<Vec<u8>> = const { FreeList::new(32) };
}

/// A bounded list of things kept for reuse in one worker (read buffers,
/// output buffers, request memory); what does not fit is dropped.
pub struct FreeList<T> {
    items: RefCell<Vec<T>>,
    max: usize,
}

impl<T> FreeList<T> {
    /// An empty list keeping at most `max` items.
    pub const fn new(max: usize) -> Self {
        FreeList { items: RefCell::new(Vec::new()), max }
    }

    /// The most recently given item, if any.
    pub fn take(&self) -> Option<T> {
        self.items.borrow_mut().pop()
    }

    /// Keeps `v` for reuse, or drops it when the list is full.
    pub fn give(&self, v: T) {
        let mut items = self.items.borrow_mut();
        if items.len() < self.max {
            items.push(v);
        }
    }
}

fn take_rbuf() -> Vec<u8> {
    RBUFS.with(FreeList::take).unwrap_or_else(|| Vec::with_capacity(READ_CHUNK))
}

fn give_rbuf(mut v: Vec<u8>) {
    if v.capacity() < READ_CHUNK || v.capacity() > 4 * READ_CHUNK {
        return;
    }
    v.clear();
    RBUFS.with(|p| p.give(v));
}

/// Asks the worker to run connection `conn` again after the current event.
/// A connection that is running now sees the change itself, so no wakeup
/// (and no extra pass through the socket) is queued for it.
pub fn wake(conn: usize) {
    if RUNNING.with(Cell::get) != conn {
        WAKE.with(|w| w.borrow_mut().push(conn));
    }
}

/// Whether a plugin woke a connection that has not run since.
pub fn has_wakes() -> bool {
    WAKE.with(|w| !w.borrow().is_empty())
}

/// Takes the queued wakeups into `into` (cleared first).
pub fn take_wakes(into: &mut Vec<usize>) {
    into.clear();
    WAKE.with(|w| std::mem::swap(&mut *w.borrow_mut(), into));
}

/// What the worker should do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it; fire its timeout at this instant.
    Wait(Instant),
    /// Keep it with no timeout (a plugin holds the request).
    Park,
    /// Close it now.
    Close,
}

enum Head {
    NeedMore,
    Started,
}

/// One client connection.
pub struct Conn<'a> {
    /// The socket (registered with the worker's poll), with TLS on top
    /// on an `ssl` address.
    pub sock: Stream<TcpStream>,
    /// A plain-text client on a TLS port (answered with nginx's 497).
    plain_https: bool,
    /// The client's SNI name.
    sni: String,
    rbuf: Vec<u8>,
    rstart: usize,
    /// The last read from the (plain) socket was short: it is empty until
    /// the next readiness event, so no read is tried (nginx's `ready = 0`).
    rdrained: bool,
    /// The peer closed its side (EPOLLRDHUP seen).
    rdhup: bool,
    wpos: usize,
    req: ReqSlot<'a>,
    /// The worker's index of this connection, and the client: what a
    /// request object attached later needs.
    idx: usize,
    peer: SocketAddr,
    /// The client's address as text, kept while the request object is
    /// dropped (not formatted again per request).
    remote_addr: String,
    active: bool,
    requests: u32,
    /// When the connection was accepted (keepalive_time).
    born: std::time::Instant,
    /// The next request was read with the previous one's bytes ($pipe).
    pipelined: bool,
    local: SocketAddr,
    cycle: &'a Cycle,
    default: &'a Server,
    /// `default` is the only server on this address: no name to look up.
    sole: bool,
    body_left: u64,
    chunked: Chunked,
    linger: Option<Instant>,
    continue_sent: bool,
    timed_out: bool,
    skip_input: bool,
    keepalive_timeout: Duration,
    serial: u64,
    /// A relay (after a 101): client → upstream, upstream → client.
    relay: Option<Box<(Pipe, Pipe)>>,
    /// limit_rate held the output back until then.
    delayed: Option<Instant>,
    /// Buffer for file output that cannot go by sendfile.
    fbuf: Option<Box<[u8]>>,
    /// TCP_CORK is on (`tcp_nopush` while sending a file).
    corked: bool,
    /// Reading a head, writing a response, or waiting (stub_status).
    stat: ConnStat,
    /// The listen has `proxy_protocol` and the header is still to come;
    /// what it said once read.
    pp_wanted: bool,
    pp: Option<std::rc::Rc<proxy_protocol::Info>>,
    /// TCP_NODELAY is on: set as nginx sets it, once the connection is
    /// kept alive (the next response must not wait for the last one's
    /// ACK), for a relay, and here also as soon as a response leaves in
    /// several writes, and for TLS. A response written at once and
    /// followed by close needs no system call for it.
    nodelay: bool,
}

/// The connection's request object. It is attached while a request is
/// read or served and taken away as soon as the connection idles between
/// requests or closes, as nginx frees a keepalive connection's request:
/// the worker keeps up to [`POOLED`] of them, memory and all, for the
/// next requests on any connection; the rest give their growable memory
/// to the worker's pool (`Req::shed`) and are dropped. An idle connection
/// holds only its `Conn`, and a burst of clients going idle does not
/// leave the heap grown. Every entry point (`on_ready`, `on_timeout`,
/// `closing`) attaches one before use.
struct ReqSlot<'a>(Option<Box<RefCell<Req<'a>>>>);

/// Request objects the worker keeps between requests (see `Conn::detach`).
pub type ReqPool<'a> = Vec<Box<RefCell<Req<'a>>>>;

/// How many request objects a worker keeps: enough for the requests in
/// flight at once on a busy worker; memory stays bounded.
const POOLED: usize = 32;

impl<'a> std::ops::Deref for ReqSlot<'a> {
    type Target = RefCell<Req<'a>>;

    fn deref(&self) -> &RefCell<Req<'a>> {
        self.0.as_deref().expect("the request object is attached at every entry point")
    }
}

const READ_CHUNK: usize = 16 * 1024;
const FILE_CHUNK: usize = 32 * 1024;

impl<'a> Conn<'a> {
    /// Wraps a freshly accepted socket; `idx` is the worker's slot for it.
    /// None when no server listens on `local` (cannot happen for sockets
    /// the http configuration opened).
    pub fn new(sock: TcpStream, local: SocketAddr, peer: SocketAddr, idx: usize, cycle: &'a Cycle) -> Option<Conn<'a>> {
        let default = cycle.http.default_server(local)?;
        let sole = cycle.http.servers_on(local) == 1;
        let serial = SERIAL.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        let tls = cycle.http.is_ssl(local);
        if tls {
            let _ = sock.set_nodelay(true);
        }
        let sock = if tls { Stream::accepting(sock) } else { Stream::plain(sock) };
        Some(Conn {
            sock,
            plain_https: false,
            sni: String::new(),
            rbuf: Vec::new(),
            rstart: 0,
            rdrained: false,
            rdhup: false,
            wpos: 0,
            req: ReqSlot(None),
            idx,
            peer,
            remote_addr: String::new(),
            active: false,
            requests: 0,
            born: crate::clock::now(),
            pipelined: false,
            local,
            cycle,
            default,
            sole,
            body_left: 0,
            chunked: Chunked::default(),
            linger: None,
            continue_sent: false,
            timed_out: false,
            skip_input: false,
            keepalive_timeout: Duration::from_secs(75),
            serial,
            relay: None,
            delayed: None,
            fbuf: None,
            corked: false,
            stat: ConnStat::Waiting,
            pp_wanted: cycle.http.is_proxy_protocol(local),
            pp: None,
            nodelay: tls,
        })
    }

    fn cycle(&self) -> &'a Cycle {
        self.cycle
    }

    /// The poller reported the socket readable (or closed): reads may find
    /// something again.
    /// `closed`: the peer's FIN came with it, so from now on a short read
    /// does not mean "drained" (the EOF is still to be read and no
    /// further edge will announce it).
    pub fn readable(&mut self, closed: bool) {
        self.rdrained = false;
        self.rdhup |= closed;
    }

    /// True for a keepalive connection waiting for its next request with
    /// nothing buffered: a draining worker may close it at once.
    pub fn is_idle(&self) -> bool {
        !self.active && self.rstart >= self.rbuf.len() && self.requests > 0 && self.linger.is_none()
    }

    /// Gives the connection a request object if it has none: one the
    /// worker keeps in `pool`, else a new one (whose growable memory comes
    /// from the worker's pool of parts).
    fn attach(&mut self, pool: &mut ReqPool<'a>) {
        if self.req.0.is_none() {
            let remote = if self.remote_addr.is_empty() { ip_text(self.peer.ip()) } else { std::mem::take(&mut self.remote_addr) };
            let b = match pool.pop() {
                Some(b) => {
                    b.borrow_mut().rebind(self.idx, self.cycle, self.default, self.peer, self.local);
                    b
                }
                None => Box::new(RefCell::new(Req::new(self.idx, self.cycle, self.default, self.peer, self.local))),
            };
            b.borrow_mut().remote_addr = remote;
            self.req.0 = Some(b);
        }
    }

    /// Takes the request object from a connection idle between requests
    /// (or closing): the worker keeps a few, with their memory, for the
    /// next requests on any connection; the others give their memory to
    /// the pool of parts and are dropped.
    fn detach(&mut self, pool: &mut ReqPool<'a>) {
        if let Some(b) = self.req.0.take() {
            let keep = pool.len() < POOLED;
            {
                let mut r = b.borrow_mut();
                r.restore_addr();
                self.remote_addr = std::mem::take(&mut r.remote_addr);
                if keep {
                    r.trim();
                } else {
                    r.shed();
                }
            }
            if keep {
                pool.push(b);
            }
        }
    }

    /// A timer set by the last `Next::Wait` fired.
    pub fn on_timeout(&mut self, now: Instant, quitting: bool, pool: &mut ReqPool<'a>) -> Next {
        if !self.active || self.linger.is_some() {
            return Next::Close;
        }
        self.attach(pool);
        // limit_rate's pause is over: write on.
        if self.delayed.take().is_some() {
            return self.on_ready(now, quitting, pool);
        }
        // A relay whose upstream said nothing for its idle limit ends;
        // otherwise the limit moved on since the timer was armed.
        let relayed = self.req.borrow().relay.map(|r| r.0);
        if let Some(token) = relayed {
            self.timed_out = pio::idle_deadline(token).is_some_and(|d| d <= now);
            return if self.timed_out { self.pump_relay(now, quitting) } else { self.on_ready(now, quitting, pool) };
        }
        let reading = self.req.borrow().body_state == BodyIn::Reading;
        if reading {
            self.timed_out = true;
            return self.on_ready(now, quitting, pool);
        }
        // send_timeout, or discarding a body too slowly.
        let mut r = self.req.borrow_mut();
        if r.status == 0 || !r.header_sent {
            r.status = 408;
        }
        Next::Close
    }

    /// The connection is being closed: log the request in progress.
    pub fn closing(&mut self, pool: &mut ReqPool<'a>) {
        if self.active {
            self.attach(pool);
            {
                let mut r = self.req.borrow_mut();
                if !r.header_sent || r.run != Run::Finalized {
                    // nginx's 499: the client closed before the response.
                    if !r.header_sent && r.status == 0 {
                        r.status = 499;
                    }
                }
            }
            request::log_phase(&self.req);
            self.end_request();
        }
        if let Some(r) = &self.req.0 {
            let mut r = r.borrow_mut();
            r.free_plugin_state();
            // It serves the next connection's requests (open files in
            // unsent output are closed now, not kept).
            r.out.clear();
        }
        self.detach(pool);
        // A head cut short leaves the reading gauge.
        self.stat.set(ConnStat::Waiting);
        if !self.sock.handshaking() {
            self.sock.close_notify();
        }
        give_rbuf(std::mem::take(&mut self.rbuf));
    }

    fn end_request(&mut self) {
        let mut r = self.req.borrow_mut();
        r.free_plugin_state();
        // A body's temporary file lives no longer than its request (after
        // the plugins that read it have let go).
        r.body_file = None;
        host_api::unregister_request(r.handle);
        r.handle = 0;
        r.out.clear();
        self.active = false;
        self.stat.set(ConnStat::Waiting);
        self.wpos = 0;
        if let Some((token, ..)) = r.relay.take() {
            pio::close(token);
        }
        self.relay = None;
    }

    /// Reads the PROXY protocol header that starts the connection (before
    /// any TLS): peeked until whole, then taken off the socket exactly.
    /// Ok(false) while incomplete; Err (logged) when broken.
    fn read_proxy_protocol(&mut self) -> Result<bool, ()> {
        let mut buf = [0u8; proxy_protocol::MAX];
        let n = match self.sock.tcp.peek(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(_) => return Err(()),
        };
        let broken = |why: &str, remote: &str| {
            let head = String::from_utf8_lossy(&buf[..n.min(107)]).escape_debug().to_string();
            crate::log!(Error, "broken header: \"{head}\" ({why}) while reading PROXY protocol, client: {remote}");
        };
        match proxy_protocol::parse(&buf[..n]) {
            Ok(None) if n < proxy_protocol::MAX && !self.rdhup => Ok(false),
            Ok(None) => {
                broken("incomplete", &ip_text(self.peer.ip()));
                Err(())
            }
            Err(why) => {
                broken(why, &ip_text(self.peer.ip()));
                Err(())
            }
            Ok(Some((info, len))) => {
                // Peeked, so there: take exactly the header.
                let mut taken = 0;
                while taken < len {
                    match (&self.sock.tcp).read(&mut buf[taken..len]) {
                        Ok(0) | Err(_) => return Err(()),
                        Ok(k) => taken += k,
                    }
                }
                self.pp = Some(std::rc::Rc::new(info));
                self.pp_wanted = false;
                Ok(true)
            }
        }
    }

    /// Reads the ClientHello on a TLS port and picks the server its SNI
    /// names (that server's certificate, and the default for the Host
    /// lookup); Ok(false) while the hello is incomplete.
    fn tls_accept(&mut self) -> Result<bool, ()> {
        let (http, local) = (&self.cycle.http, self.local);
        let mut chosen = None;
        let peek = |tcp: &mut TcpStream| {
            let mut b = [0u8; 1];
            match tcp.peek(&mut b) {
                Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => Ok(Some(b[0])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        };
        let default = self.default;
        let res = self.sock.accept(peek, |sni| {
            let (s, cfg) = http.tls_server(local, sni, default)?;
            chosen = Some((s, sni.map(str::to_string)));
            Some(cfg)
        });
        match res {
            Ok(Hello::Pending) => Ok(false),
            Ok(Hello::Plain) => {
                self.plain_https = true;
                Ok(true)
            }
            Ok(Hello::Tls) => {
                if let Some((s, sni)) = chosen {
                    self.default = s;
                    self.sni = sni.unwrap_or_default();
                }
                Ok(true)
            }
            Err(e) => {
                if e.kind() != ErrorKind::UnexpectedEof {
                    crate::log!(Info, "SSL_do_handshake() failed ({e}) while SSL handshaking, client: {}", self.req.borrow().remote_addr);
                }
                Err(())
            }
        }
    }

    /// Does all the work the socket and the request allow now.
    pub fn on_ready(&mut self, now: Instant, quitting: bool, pool: &mut ReqPool<'a>) -> Next {
        self.attach(pool);
        let prev = RUNNING.with(|r| r.replace(self.idx));
        let next = self.work(now, quitting);
        RUNNING.with(|r| r.set(prev));
        if next != Next::Close && self.is_idle() {
            self.detach(pool);
        }
        next
    }

    fn work(&mut self, now: Instant, quitting: bool) -> Next {
        loop {
            if let Some(deadline) = self.linger {
                return self.lingering(now, deadline);
            }
            if !self.active {
                if quitting && self.is_idle() {
                    return Next::Close;
                }
                if self.pp_wanted {
                    match self.read_proxy_protocol() {
                        Ok(true) => {}
                        Ok(false) => return Next::Wait(now + self.default.header_timeout),
                        Err(()) => return Next::Close,
                    }
                }
                if self.sock.handshaking() && self.requests == 0 {
                    match self.tls_accept() {
                        Ok(true) => {}
                        Ok(false) => return Next::Wait(now + self.default.header_timeout),
                        Err(()) => return Next::Close,
                    }
                }
                match self.read_head() {
                    Ok(Head::Started) => {}
                    Ok(Head::NeedMore) => {
                        let idle = self.rstart >= self.rbuf.len();
                        self.stat.set(if idle { ConnStat::Waiting } else { ConnStat::Reading });
                        let t = if idle && self.requests > 0 {
                            self.keepalive_timeout
                        } else {
                            self.default.header_timeout
                        };
                        return Next::Wait(now + t);
                    }
                    Err(()) => return Next::Close,
                }
            }
            // A request is active.
            let mut wait_read = false;
            let state = self.req.borrow().body_state;
            if matches!(state, BodyIn::Reading | BodyIn::Discarding) {
                match self.pump_body() {
                    Ok(true) => {}
                    Ok(false) => wait_read = true,
                    Err(()) => return Next::Close,
                }
            }
            request::run(&self.req);
            let flushed = match self.flush() {
                Ok(f) => f,
                Err(()) => return Next::Close,
            };
            if self.drained() {
                continue;
            }
            if flushed && self.req.borrow().relay.is_some() {
                return self.pump_relay(now, quitting);
            }
            let (complete, send_timeout, body_timeout) = {
                let r = self.req.borrow();
                let core = &r.location().core;
                (r.complete(), core.send_timeout, core.client_body_timeout)
            };
            if !flushed {
                return Next::Wait(self.delayed.unwrap_or(now + send_timeout));
            }
            if complete {
                match self.after_response(now, quitting) {
                    Some(next) => return next,
                    None => continue,
                }
            }
            let reading = matches!(self.req.borrow().body_state, BodyIn::Reading | BodyIn::Discarding);
            if reading && wait_read {
                return Next::Wait(now + body_timeout);
            }
            if reading {
                continue;
            }
            if self.rdhup && self.rstart >= self.rbuf.len() && !crate::sys::has_input(self.sock.tcp.as_raw_fd()) {
                // The client closed while its request waits (for an
                // upstream, a timer): as nginx, the request is over (499),
                // and what it holds (upstream connection, limits, files)
                // is released now rather than when the wait ends.
                let mut r = self.req.borrow_mut();
                if !r.header_sent && r.status == 0 {
                    r.status = 499;
                }
                crate::log!(Info, "client prematurely closed connection, client: {}", r.remote_addr);
                return Next::Close;
            }
            return Next::Park;
        }
    }

    /// A handler waiting in http_resume_when_drained can go on.
    fn drained(&mut self) -> bool {
        let mut r = self.req.borrow_mut();
        match r.drain_limit {
            Some(l) if r.run == Run::Suspended && r.queued() <= l => {
                r.drain_limit = None;
                r.resume = true;
                true
            }
            _ => false,
        }
    }

    /// Copies bytes both ways between the client and the relayed plugin
    /// connection; when either side has ended (and what it sent is
    /// delivered), closes the upstream, tells the plugin and closes.
    fn pump_relay(&mut self, now: Instant, quitting: bool) -> Next {
        let Some((token, plugin, done, data)) = self.req.borrow().relay else { return Next::Close };
        if self.relay.is_none() {
            // Bytes the client sent after the Upgrade request go first.
            let early = Pipe::with(&self.rbuf[self.rstart..]);
            self.rstart = self.rbuf.len();
            self.relay = Some(Box::new((early, Pipe::default())));
            self.nodelay();
        }
        let Some(pipes) = self.relay.as_mut() else { return Next::Close };
        let client = &mut self.sock;
        let res = pio::with_sock(token, |up| {
            pipes.0.pump(client, up)?;
            pipes.1.pump(up, client)
        });
        if std::mem::take(&mut pipes.1.got) {
            pio::note_read(token);
        }
        let ended = pipes.0.finished() || pipes.1.finished();
        let rc = match res {
            Ok(Ok(())) if !ended && std::mem::take(&mut self.timed_out) => {
                crate::log!(Error, "upstream timed out (110: Connection timed out) while proxying upgraded connection");
                sys::ERROR
            }
            // The upstream's idle limit (proxy_read_timeout), if any.
            Ok(Ok(())) if !ended => return pio::idle_deadline(token).map_or(Next::Park, Next::Wait),
            Ok(Ok(())) => sys::OK,
            Ok(Err(why)) => {
                crate::log!(Info, "{why} while proxying upgraded connection");
                sys::ERROR
            }
            Err(_) => sys::ERROR,
        };
        pio::close(token);
        self.relay = None;
        let handle = {
            let mut r = self.req.borrow_mut();
            r.relay = None;
            r.must_close = true;
            r.body_done_out = true;
            r.run = Run::Finalized;
            r.handle
        };
        if let Some(f) = done {
            host_api::call_done(self.cycle(), plugin, f, handle, rc, data);
        }
        self.after_response(now, quitting).unwrap_or(Next::Close)
    }

    /// The response is out: discard an unread body, log, and keep the
    /// connection for the next request or close it. `None` = go on.
    fn after_response(&mut self, now: Instant, quitting: bool) -> Option<Next> {
        let (state, must_close, expect) = {
            let r = self.req.borrow();
            (r.body_state, r.must_close, r.expect_continue && !self.continue_sent)
        };
        if matches!(state, BodyIn::Idle | BodyIn::Reading) {
            if must_close || expect {
                // The client may or may not send the body now: framing is
                // lost, so the connection ends (lingering).
                self.req.borrow_mut().must_close = true;
            } else {
                self.req.borrow_mut().body_state = BodyIn::Discarding;
                return None;
            }
        } else if state == BodyIn::Discarding && !must_close {
            return None;
        }
        request::log_phase(&self.req);
        let (keep, core_ka, linger_mode) = {
            let r = self.req.borrow();
            let core = &r.location().core;
            // The head already decided keepalive (client wish,
            // keepalive_requests, keepalive_timeout 0) into must_close.
            let keep = !r.must_close && !quitting;
            (keep, core.keepalive_timeout, (core.lingering_close, core.lingering_time, core.lingering_timeout))
        };
        let unread_body = matches!(self.req.borrow().body_state, BodyIn::Idle | BodyIn::Reading | BodyIn::Discarding);
        self.end_request();
        self.keepalive_timeout = core_ka;
        if keep {
            self.nodelay();
            // The next request is already here ($pipe).
            self.pipelined = self.rstart < self.rbuf.len();
            if self.rstart >= self.rbuf.len() {
                // Idle until the next request: the buffer goes back (and
                // on_ready() drops the request object).
                give_rbuf(std::mem::take(&mut self.rbuf));
                self.rstart = 0;
            }
            return None;
        }
        let (mode, time, timeout) = linger_mode;
        // Input the client sent after this request, read or still in the
        // kernel (nginx looks only at what it has read).
        let pending = unread_body || self.rstart < self.rbuf.len() || (mode == 1 && crate::sys::has_input(self.sock.tcp.as_raw_fd()));
        if mode == 2 || (mode == 1 && pending) {
            self.sock.close_notify();
            crate::sys::shutdown_write(self.sock.tcp.as_raw_fd());
            self.linger = Some(now + time);
            self.rbuf.clear();
            self.rstart = 0;
            return Some(Next::Wait((now + timeout).min(now + time)));
        }
        Some(Next::Close)
    }

    fn lingering(&mut self, now: Instant, deadline: Instant) -> Next {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        if now >= deadline {
            return Next::Close;
        }
        Next::Wait((now + Duration::from_secs(5)).min(deadline))
    }

    /// Reads more into rbuf. Ok(false) on WouldBlock; Err on EOF/error.
    fn fill(&mut self) -> Result<bool, ()> {
        if self.rdrained {
            return Ok(false);
        }
        if self.rstart > 0 && self.rstart >= self.rbuf.len() {
            self.rbuf.clear();
            self.rstart = 0;
        } else if self.rstart > 64 * 1024 {
            self.rbuf.drain(..self.rstart);
            self.rstart = 0;
        }
        if self.rbuf.capacity() == 0 {
            self.rbuf = take_rbuf();
        }
        if !self.sock.is_tls() {
            // Straight into the spare capacity: no zeroing per read.
            return match crate::sys::recv_into(self.sock.tcp.as_raw_fd(), &mut self.rbuf, READ_CHUNK) {
                Ok(0) => Err(()),
                Ok(n) => {
                    // A short read emptied the socket: the next bytes come
                    // with a new edge.
                    self.rdrained = n < READ_CHUNK && !self.rdhup;
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.rdrained = true;
                    Ok(false)
                }
                Err(_) => Err(()),
            };
        }
        let len = self.rbuf.len();
        self.rbuf.resize(len + READ_CHUNK, 0);
        loop {
            match self.sock.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    self.rbuf.truncate(len);
                    return Err(());
                }
                Ok(n) => {
                    self.rbuf.truncate(len + n);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.rbuf.truncate(len);
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.rbuf.truncate(len);
                    return Err(());
                }
            }
        }
    }

    fn read_head(&mut self) -> Result<Head, ()> {
        loop {
            // nginx skips empty lines before a request line.
            while self.rstart < self.rbuf.len() && matches!(self.rbuf[self.rstart], b'\r' | b'\n') {
                self.rstart += 1;
            }
            if self.rstart < self.rbuf.len() {
                if let Some(h) = self.try_head() {
                    return Ok(h);
                }
            }
            match self.fill() {
                Ok(true) => continue,
                Ok(false) => return Ok(Head::NeedMore),
                Err(()) => return Err(()),
            }
        }
    }

    /// Parses a head from rbuf: Some(Started) when a request (or an error
    /// response) began, None when more bytes are needed.
    fn try_head(&mut self) -> Option<Head> {
        let s = self.default;
        let (large, max_head, merge) = (s.large_header, s.max_head, s.merge_slashes);
        let names = (s.underscores_in_headers, s.ignore_invalid_headers);
        let rbuf = std::mem::take(&mut self.rbuf);
        let out = self.try_head_in(&rbuf, large, max_head, names, merge);
        self.rbuf = rbuf;
        if self.skip_input {
            // Nothing after a bad head can be trusted.
            self.skip_input = false;
            self.rstart = self.rbuf.len();
        }
        out
    }

    fn try_head_in(&mut self, rbuf: &[u8], large: usize, max_head: usize, (underscores, ignore_invalid): (bool, bool), merge: bool) -> Option<Head> {
        let buf = &rbuf[self.rstart..];
        // Not initialised: httparse writes the headers it finds.
        let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(buf, &mut headers);
        match parsed {
            Ok(httparse::Status::Complete(n)) => {
                thread_local!(static HOST: RefCell<String> = const { RefCell::new(String::new()) });
                HOST.with(|host| {
                    let mut host = host.borrow_mut();
                    host.clear();
                    let checked = parse::check_head(&req, underscores, ignore_invalid, &mut host);
                    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(n);
                    if line_len > large {
                        self.error_request(Some(&req), 414, "client sent too long URI");
                    } else if n > max_head || too_long_header(&buf[..n], large).is_some() {
                        self.error_request(Some(&req), 494, "client sent too long header line");
                    } else {
                        match checked {
                            Ok(info) => self.start_request(&req, info, &host, n, merge),
                            Err((st, why)) => self.error_request(Some(&req), st, why),
                        }
                    }
                });
                self.rstart += n;
                Some(Head::Started)
            }
            Ok(httparse::Status::Partial) => {
                let line_end = buf.iter().position(|&b| b == b'\n');
                if line_end.unwrap_or(buf.len()) > large {
                    self.error_request(None, 414, "client sent too long URI");
                    return Some(Head::Started);
                }
                if buf.len() > max_head || too_long_header(buf, large).is_some() {
                    self.error_request(None, 494, "client sent too large request");
                    return Some(Head::Started);
                }
                None
            }
            Err(e) => {
                let (st, why) = match e {
                    httparse::Error::Version if version_like(buf) => (505, "client sent unsupported HTTP version"),
                    httparse::Error::TooManyHeaders => (494, "client sent too many headers"),
                    httparse::Error::HeaderName | httparse::Error::HeaderValue => (400, "client sent invalid header line"),
                    _ => (400, "client sent invalid request"),
                };
                self.error_request(None, st, why);
                Some(Head::Started)
            }
        }
    }

    fn begin(&mut self) -> std::cell::RefMut<'_, Req<'a>> {
        self.stat.set(ConnStat::Writing);
        self.requests += 1;
        self.active = true;
        self.continue_sent = false;
        self.timed_out = false;
        let srv = self.default;
        let mut r = self.req.borrow_mut();
        r.reset();
        r.srv = srv;
        r.conn_requests = self.requests;
        r.conn_born = self.born;
        r.pipelined = std::mem::take(&mut self.pipelined);
        r.conn_serial = self.serial;
        r.proxy_protocol.clone_from(&self.pp);
        r.tls = self.sock.info();
        if r.ssl_server_name != self.sni {
            r.ssl_server_name.clone_from(&self.sni);
        }
        r.handle = host_api::register_request(&self.req);
        r
    }

    fn error_request(&mut self, req: Option<&httparse::Request<'_, '_>>, status: u16, why: &str) {
        crate::log!(Info, "{why} while reading client request headers, client: {}", self.req.borrow().remote_addr);
        self.skip_input = true;
        {
            let mut r = self.begin();
            if let Some(q) = req {
                r.method.push_str(q.method.unwrap_or(""));
                r.request_uri.push_str(q.path.unwrap_or(""));
                r.minor = q.version.unwrap_or(1);
            }
            r.keepalive = false;
            r.must_close = true;
            r.body_state = BodyIn::Done;
        }
        request::finalize_status(&self.req, status);
    }

    fn start_request(&mut self, q: &httparse::Request<'_, '_>, info: parse::HeadInfo, host: &str, n: usize, merge: bool) {
        let local = self.local;
        let (srv, by) = if self.sole && !self.default.name_captures { (Some(self.default), None) } else { self.cycle().http.find_server_by(local, host) };
        let mut bad = None;
        {
            let mut r = self.begin();
            if let Some(s) = srv {
                r.srv = s;
            }
            if let Some(re) = by {
                request::regex_captures(&mut r, re, host);
            }
            let target = q.path.unwrap_or("/");
            r.method.push_str(q.method.unwrap_or(""));
            r.request_uri.push_str(target);
            r.minor = q.version.unwrap_or(1);
            r.host.push_str(host);
            r.head_len = n;
            r.keepalive = info.keepalive;
            r.expect_continue = info.expect_continue && r.minor == 1;
            r.framing = info.framing;
            r.body_state = if info.framing == Framing::None { BodyIn::Done } else { BodyIn::Idle };
            for (i, h) in q.headers.iter().enumerate() {
                if i < 128 && info.ignored & (1 << i) != 0 {
                    continue;
                }
                let (k, v) = (r.text(h.name), r.text(&parse::text(h.value)));
                r.headers_in.push((k, v));
            }
            match parse::origin_form(target) {
                None => bad = Some((400, "client sent invalid request target")),
                Some(t) => {
                    // A fragment is not part of the request, as nginx reads
                    // it; "http://host?args" has the path "/".
                    // (Targets are short: a plain loop beats memchr's setup.)
                    let qf = |b: &u8| *b == b'?' || *b == b'#';
                    let at = if t.len() <= 64 { t.as_bytes().iter().position(qf) } else { memchr::memchr2(b'?', b'#', t.as_bytes()) };
                    let (path, args) = match at {
                        Some(i) if t.as_bytes()[i] == b'#' => (&t[..i], ""),
                        Some(i) => {
                            let a = &t[i + 1..];
                            let a = memchr::memchr(b'#', a.as_bytes()).map_or(a, |j| &a[..j]);
                            (if i == 0 { "/" } else { &t[..i] }, a)
                        }
                        None => (t, ""),
                    };
                    let path = if path.is_empty() { "/" } else { path };
                    r.args.push_str(args);
                    thread_local!(static DECODED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) });
                    DECODED.with(|d| {
                        let mut decoded = d.borrow_mut();
                        decoded.clear();
                        match parse::normalize(path, merge, &mut decoded) {
                            Ok(()) => r.uri.push_str(&parse::text(&decoded)),
                            Err(why) => bad = Some((400, why)),
                        }
                    });
                }
            }
        }
        self.body_left = match info.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        self.chunked = Chunked::default();
        if self.plain_https {
            bad = Some((497, "client sent plain HTTP request to HTTPS port"));
        }
        if let Some((st, why)) = bad {
            crate::log!(Info, "{why}, client: {}", self.req.borrow().remote_addr);
            self.req.borrow_mut().must_close = true;
            request::finalize_status(&self.req, st);
        }
    }

    /// Moves request-body bytes from rbuf/socket into the request (or the
    /// bin). Ok(true): done or waiting on the plugin; Ok(false): needs more
    /// from the socket; Err: close.
    fn pump_body(&mut self) -> Result<bool, ()> {
        loop {
            let (state, framing, max) = {
                let r = self.req.borrow();
                let max = r.location().core.client_max_body_size;
                (r.body_state, r.framing, max)
            };
            if !matches!(state, BodyIn::Reading | BodyIn::Discarding) {
                return Ok(true);
            }
            if self.timed_out {
                self.timed_out = false;
                return self.body_failed(408);
            }
            let avail = self.rbuf.len() - self.rstart;
            let mut finished = false;
            if avail > 0 {
                let (used, data, done) = match framing {
                    Framing::Length(_) => {
                        let n = (self.body_left as usize).min(avail);
                        self.body_left -= n as u64;
                        (n, 0..n, self.body_left == 0)
                    }
                    Framing::Chunked => match self.chunked.step(&self.rbuf[self.rstart..]) {
                        Ok(Step::Progress { used, data }) => (used, data, false),
                        Ok(Step::Done { used }) => (used, 0..0, true),
                        Err(why) => {
                            crate::log!(Info, "client sent {why}");
                            return self.body_failed(400);
                        }
                    },
                    Framing::None => (0, 0..0, true),
                };
                {
                    let mut r = self.req.borrow_mut();
                    let len = data.len() as u64;
                    r.body_received += len;
                    if max > 0 && r.body_received > max {
                        drop(r);
                        crate::log!(Error, "client intended to send too large chunked body");
                        return self.body_failed(413);
                    }
                    if state == BodyIn::Reading {
                        let start = self.rstart;
                        if let Err(e) = r.body_append(&self.rbuf[start + data.start..start + data.end]) {
                            drop(r);
                            crate::log!(Crit, "writing the client request body to a temporary file failed: {e}");
                            return self.body_failed(500);
                        }
                    }
                }
                self.rstart += used;
                finished = done;
            } else if matches!(framing, Framing::Length(_)) && self.body_left == 0 {
                finished = true;
            }
            if finished {
                return self.body_complete(state);
            }
            if self.rstart < self.rbuf.len() {
                continue;
            }
            self.send_continue(state);
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(()) => {
                    crate::log!(Info, "client prematurely closed connection while reading client request body");
                    return Err(());
                }
            }
        }
    }

    fn send_continue(&mut self, state: BodyIn) {
        let (expect, sent) = {
            let r = self.req.borrow();
            (r.expect_continue, r.header_sent)
        };
        if expect && !self.continue_sent && !sent && state == BodyIn::Reading && self.rstart >= self.rbuf.len() {
            self.continue_sent = true;
            let _ = self.sock.write(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    }

    fn body_complete(&mut self, state: BodyIn) -> Result<bool, ()> {
        let done = {
            let mut r = self.req.borrow_mut();
            r.body_state = BodyIn::Done;
            r.body_read = state == BodyIn::Reading;
            r.body_done.take().filter(|_| state == BodyIn::Reading)
        };
        if let Some((pi, f, data)) = done {
            let handle = self.req.borrow().handle;
            host_api::call_done(self.cycle(), pi, f, handle, sys::OK, data);
        }
        Ok(true)
    }

    fn body_failed(&mut self, status: u16) -> Result<bool, ()> {
        let (state, done) = {
            let mut r = self.req.borrow_mut();
            let st = r.body_state;
            r.body_state = BodyIn::Done;
            r.must_close = true;
            (st, r.body_done.take())
        };
        if state == BodyIn::Discarding {
            return Err(());
        }
        match done {
            Some((pi, f, data)) => {
                let handle = self.req.borrow().handle;
                host_api::call_done(self.cycle(), pi, f, handle, status as sys::Rc, data);
            }
            None => request::finalize_status(&self.req, status),
        }
        Ok(true)
    }

    /// Turns Nagle's algorithm off for the rest of the connection.
    fn nodelay(&mut self) {
        if !self.nodelay {
            let _ = self.sock.tcp.set_nodelay(true);
            self.nodelay = true;
        }
    }

    /// Writes queued output. Ok(true) when everything is out.
    fn flush(&mut self) -> Result<bool, ()> {
        let wrote = !self.nodelay && !self.req.borrow().out.is_empty();
        let done = self.write_out();
        // More of the response goes in later writes (the socket is full,
        // or the body is still being made): none may wait for an ACK.
        if wrote && (done == Ok(false) || (done == Ok(true) && self.req.borrow().run != Run::Finalized)) {
            self.nodelay();
        }
        done
    }

    fn write_out(&mut self) -> Result<bool, ()> {
        let fd = self.sock.tcp.as_raw_fd();
        let tls = self.sock.is_tls();
        // sendfile cannot encrypt: TLS reads the file and writes records.
        let (sendfile, nopush, linger) = {
            let r = self.req.borrow();
            let core = &r.location().core;
            (core.sendfile && !tls, core.tcp_nopush, core.lingering_close)
        };
        let mut r = self.req.borrow_mut();
        // limit_rate: what may go now (nginx's rate × elapsed time, after
        // the first limit_rate_after bytes, with one second's worth at
        // the start).
        self.delayed = None;
        // Limits with variables are evaluated once per response; a value
        // that is not a size counts as 0 (nginx).
        let size_of = |r: &Req<'_>, t: &str| crate::config::core::parse_size(vars::expand(r, t).trim()).unwrap_or(0) as u64;
        if r.limit_rate_set.is_none() {
            if let Some(t) = r.location().core.limit_rate_var.clone() {
                r.limit_rate_set = Some(size_of(&r, &t));
            }
        }
        if r.limit_rate_after_set.is_none() {
            if let Some(t) = r.location().core.limit_rate_after_var.clone() {
                r.limit_rate_after_set = Some(size_of(&r, &t));
            }
        }
        let (rate, after) = r.limit_rate();
        let mut budget = if rate == 0 {
            u64::MAX
        } else {
            let ms = crate::clock::now().saturating_duration_since(r.start).as_millis() as u64;
            after.saturating_add(rate.saturating_mul(ms + 1000) / 1000).saturating_sub(r.wrote)
        };
        let r = &mut *r;
        // The connection's last response: the close (or lingering
        // shutdown) that follows at once sends its tail with the FIN, one
        // segment fewer per connection, as nginx's corked close does. (A
        // close with unread input would reset the connection and lose held
        // data: after_response() lingers instead when the client sent
        // more, unless `lingering_close off`.) Not for TLS, whose
        // close_notify is still to be written.
        let last = r.must_close
            && linger != 0
            && r.run == Run::Finalized
            && r.relay.is_none()
            && r.body_state == BodyIn::Done
            && !tls;
        // tcp_nopush: the head and the file leave in full segments; the
        // cork comes off when everything queued is out.
        if sendfile && nopush && !self.corked && r.out.iter().any(|c| matches!(c, Chunk::File { .. })) {
            crate::sys::set_cork(fd, true);
            self.corked = true;
        }
        loop {
            let hold = last && r.out.len() == 1;
            let Some(front) = r.out.front_mut() else { break };
            match front {
                Chunk::Mem(v) => {
                    while self.wpos < v.len() {
                        if budget == 0 {
                            self.delayed = Some(resume_at(rate, after, r.wrote, r.start));
                            return Ok(false);
                        }
                        let end = v.len().min(self.wpos.saturating_add(budget.min(usize::MAX as u64) as usize));
                        let res = if hold {
                            crate::sys::send_more(fd, &v[self.wpos..end])
                        } else {
                            self.sock.write(&v[self.wpos..end])
                        };
                        match res {
                            Ok(0) => return Err(()),
                            Ok(n) => {
                                self.wpos += n;
                                r.wrote += n as u64;
                                budget = budget.saturating_sub(n as u64);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return Err(()),
                        }
                    }
                    self.wpos = 0;
                }
                Chunk::File { fd: file, pos, end } => {
                    while *pos < *end {
                        if budget == 0 {
                            self.delayed = Some(resume_at(rate, after, r.wrote, r.start));
                            return Ok(false);
                        }
                        let want = ((*end - *pos) as usize).min(1 << 20).min(budget.min(usize::MAX as u64) as usize);
                        let before = *pos;
                        let res = if sendfile {
                            crate::sys::sendfile(fd, file.as_raw_fd(), pos, want)
                        } else {
                            // Through a buffer (TLS, or `sendfile off`); what
                            // the socket does not take is read again later.
                            let buf = self.fbuf.get_or_insert_with(|| vec![0u8; FILE_CHUNK].into_boxed_slice());
                            let n = want.min(buf.len());
                            match crate::sys::pread(file.as_raw_fd(), &mut buf[..n], *pos) {
                                Ok(0) => Ok(0),
                                Ok(n) => self.sock.write(&buf[..n]).inspect(|&w| *pos += w as u64),
                                Err(e) => Err(e),
                            }
                        };
                        match res {
                            Ok(0) => {
                                crate::log!(Alert, "file was truncated while it was being sent");
                                return Err(());
                            }
                            Ok(_) => {
                                let n = *pos - before;
                                budget = budget.saturating_sub(n);
                                r.wrote += n;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => return Err(()),
                        }
                    }
                }
            }
            if let Some(Chunk::Mem(v)) = r.out.pop_front() {
                request::give_mem(v);
            }
        }
        // On the last response the close flushes the cork, with the FIN.
        if self.corked && !last {
            crate::sys::set_cork(fd, false);
            self.corked = false;
        }
        // TLS records still in the session's buffer are part of the output.
        self.sock.flush_tls().map_err(|_| ())
    }
}

/// When limit_rate lets the next piece of output (4 KiB, or a second's
/// worth when less) go, for a response started at `start` that has
/// written `wrote` bytes.
fn resume_at(rate: u64, after: u64, wrote: u64, start: Instant) -> Instant {
    let now = crate::clock::now();
    let ms = now.saturating_duration_since(start).as_millis() as u64;
    let due = (wrote + rate.clamp(1, 4096)).saturating_sub(after).saturating_mul(1000) / rate.max(1);
    now + std::time::Duration::from_millis(due.saturating_sub(ms + 1000).max(1))
}

/// A header line in a (partial) head longer than `max`.
fn too_long_header(head: &[u8], max: usize) -> Option<usize> {
    head.split(|&b| b == b'\n').skip(1).map(<[u8]>::len).find(|&l| l > max)
}

/// "METHOD target HTTP/d.d" with a well-formed but unsupported version.
fn version_like(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(b"");
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Method, target, version: a space inside the target is a bad request
    // (400), not a bad version.
    if line.split(|&b| b == b' ').filter(|w| !w.is_empty()).count() != 3 {
        return false;
    }
    let v = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    v.len() >= 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[5] != b'0' && v[5] != b'1'
        || (v.len() >= 8 && v.starts_with(b"HTTP/1.") && v[7].is_ascii_digit())
}

/// An address as text ($remote_addr); IPv4 without `fmt`, as this runs
/// for every connection.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                if o >= 100 {
                    s.push((b'0' + o / 100) as char);
                }
                if o >= 10 {
                    s.push((b'0' + o / 10 % 10) as char);
                }
                s.push((b'0' + o % 10) as char);
            }
            s
        }
        v6 => v6.to_string(),
    }
}

#[cfg(test)]
mod ip_tests {
    #[test]
    fn ipv4_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.100.255", "192.168.1.9"] {
            let a: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(a), a.to_string());
        }
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        assert_eq!(super::ip_text(v6), "::1");
    }
}
