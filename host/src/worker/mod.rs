//! A worker process: one mio `Poll`, single-threaded, serving connections
//! accepted from the listeners it inherited from the master.
//!
//! Signals arrive through a signalfd registered with the poll: QUIT drains
//! (stop accepting, close idle connections, finish the rest, exit), TERM and
//! INT exit at once, USR1 reopens logs. Accepting stops while the worker is
//! at `worker_connections`, and pauses for 500 ms on EMFILE/ENFILE instead
//! of spinning on a listener that stays readable.

pub mod timer;

use crate::cycle::Cycle;
use crate::http::{Conn, Next};
use crate::master::listen::Bound;
use crate::stats::Stat;
use crate::sys;
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};
use timer::{TimerKey, Timers};

const SIGNAL: Token = Token(usize::MAX - 1);
/// Tokens below this are listeners; from it on, connections.
const CONN_BASE: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Timer {
    Conn(usize),
    ResumeAccept,
    ShutdownTimeout,
}

struct Slot<'a> {
    conn: Conn<'a>,
    /// The armed timer; it may be due up to [`LAZY`] before `want`.
    timer: Option<TimerKey>,
    /// When the connection's timeout really is; None while parked (no
    /// timeout: a timer still armed is left to fire for nothing, which is
    /// cheaper than taking it out now and arming another when the request
    /// ends, a few microseconds later, for the keepalive timeout).
    want: Option<Instant>,
}

/// nginx's lazy timers (NGX_TIMER_LAZY_DELAY): a deadline that moves later
/// by less than this keeps the armed timer, which is re-armed for the rest
/// when it fires, instead of being removed and added for every request.
const LAZY: Duration = Duration::from_millis(300);

struct Worker<'a> {
    cycle: &'a Cycle,
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// For each listener bound to one address (not a wildcard), that
    /// address: its connections' local address without getsockname().
    local: Vec<Option<std::net::SocketAddr>>,
    /// For each listener: the plugin protocol listener it serves, if any.
    proto: Vec<Option<usize>>,
    accepting: bool,
    conns: Vec<Option<Slot<'a>>>,
    free: Vec<usize>,
    /// Request objects kept between requests.
    reqs: crate::http::ReqPool<'a>,
    active: usize,
    timers: Timers<Timer>,
    quitting: bool,
    exit: bool,
    single: bool,
    wakes: Vec<usize>,
    /// Listeners that gave a connection with multi_accept off and may have
    /// more: one more each per turn of the loop (nginx's level-triggered
    /// accept), instead of re-arming the listener with epoll_ctl() after
    /// every accept.
    accept_more: Vec<usize>,
}

/// Sets up this process as a worker; returns a message on fatal failure.
fn init_process(cycle: &Cycle, slot: usize, single: bool) -> Result<(), String> {
    let core = &cycle.core;
    if let Some(p) = core.priority {
        sys::set_priority(p).map_err(|e| format!("setpriority({p}) failed ({e})"))?;
    }
    if let Some(n) = core.rlimit_nofile {
        // As nginx: logged, not fatal (a container without CAP_SYS_RESOURCE
        // cannot raise the hard limit; the worker runs with what it has).
        if let Err(e) = sys::set_nofile(n) {
            crate::log!(Alert, "setrlimit(RLIMIT_NOFILE, {n}) failed ({})", crate::config::parser::os_err(&e));
        }
    }
    if let (Some(masks), true) = (&core.cpu_affinity, slot != usize::MAX) {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()).min(64);
        let mask = if masks.is_empty() {
            1u64 << (slot % ncpu)
        } else {
            masks[slot.min(masks.len() - 1)]
        };
        sys::set_affinity(mask).map_err(|e| format!("sched_setaffinity({mask:#b}) failed ({e})"))?;
    }
    // Directories for request bodies in temporary files: made (and given
    // to the worker user) before privileges go, as nginx's master does.
    let mut temp = cycle.http.temp_paths();
    temp.extend(cycle.plugins.paths.borrow().iter().map(|p| p.to_string_lossy().into_owned()));
    for d in &temp {
        if let Err(e) = std::fs::create_dir_all(d) {
            crate::log!(Crit, "mkdir() \"{d}\" failed ({})", crate::config::parser::os_err(&e));
        }
    }
    if sys::is_root() && !single {
        let (uid, gid) = worker_user(core)?;
        for d in &temp {
            if let Err(e) = sys::chown(std::path::Path::new(d), uid, gid) {
                crate::log!(Crit, "chown(\"{d}\", {uid}) failed ({})", crate::config::parser::os_err(&e));
            }
        }
        sys::drop_privileges(uid, gid)
            .map_err(|e| format!("setuid({uid})/setgid({gid}) failed ({e})"))?;
    } else if core.user.is_some() && !sys::is_root() && slot == 0 {
        crate::log!(Warn, "the \"user\" directive makes sense only if the master process runs with super-user privileges, ignored");
    }
    if let Some(dir) = &core.working_directory {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("chdir(\"{}\") failed ({e})", dir.display()))?;
    }
    Ok(())
}

/// Runs a worker until it exits; returns the process exit code
/// (0 normal, 2 fatal: the master does not respawn it).
/// `master` is the master's pid, taken before fork (a child reading
/// getppid() could already see init if the master just died).
pub fn run(cycle: &Cycle, bound: &[Bound], slot: usize, single: bool, master: i32) -> i32 {
    if !single {
        sys::set_name("ngxr: worker");
    }
    if let Err(e) = init_process(cycle, slot, single) {
        crate::log!(Emerg, "{e}");
        return 2;
    }
    // A worker whose master died has no supervisor and gets no reloads:
    // drain and exit instead of lingering (nginx's workers linger).
    if !single && !sys::parent_death_signal(libc::SIGQUIT, master) {
        crate::log!(Alert, "master process {master} is gone, worker exiting");
        return 0;
    }
    crate::plugin::host_api::set_worker_slot(slot as i32);
    // A clock reading the master may have left in this (forked) thread is
    // old: timers plugins arm in init_worker count from now.
    crate::clock::update();
    if let Err(e) = cycle.plugins.init_worker() {
        crate::log!(Emerg, "{e}");
        return 2;
    }
    match Worker::new(cycle, bound, slot, single) {
        Ok(mut w) => {
            let code = w.run();
            cycle.plugins.exit_worker();
            code
        }
        Err(e) => {
            crate::log!(Emerg, "worker init failed: {e}");
            2
        }
    }
}

impl<'a> Worker<'a> {
    fn new(cycle: &'a Cycle, bound: &[Bound], slot: usize, single: bool) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        crate::plugin::io::init(poll.registry())?;
        let mut listeners = Vec::new();
        let mut proto = Vec::new();
        let mut local = Vec::new();
        for (i, b) in bound.iter().enumerate() {
            proto.push(cycle.plugins.proto.iter().position(|p| p.0 == b.conf.addr));
            local.push(Some(b.conf.addr).filter(|a| !a.ip().is_unspecified() && a.port() != 0));
            let std_l: std::net::TcpListener = b.for_slot(slot).try_clone()?.into();
            let mut l = TcpListener::from_std(std_l);
            poll.registry().register(&mut l, Token(i), Interest::READABLE)?;
            listeners.push(l);
        }
        Ok(Worker {
            cycle,
            poll,
            listeners,
            local,
            proto,
            accepting: true,
            conns: Vec::new(),
            free: Vec::new(),
            reqs: Vec::new(),
            active: 0,
            timers: Timers::default(),
            quitting: false,
            exit: false,
            single,
            wakes: Vec::new(),
            accept_more: Vec::new(),
        })
    }

    fn run(&mut self) -> i32 {
        let sigs = [libc::SIGQUIT, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP, libc::SIGWINCH];
        let sigfd: OwnedFd = match sys::signalfd(&sigs) {
            Ok(fd) => fd,
            Err(e) => {
                crate::log!(Emerg, "signalfd() failed ({e})");
                return 2;
            }
        };
        let raw = sigfd.as_raw_fd();
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&raw), SIGNAL, Interest::READABLE) {
            crate::log!(Emerg, "epoll_ctl(signalfd) failed ({e})");
            return 2;
        }
        let mut events = Events::with_capacity(512);
        crate::clock::update();
        while !self.exit {
            if self.quitting && self.active == 0 && crate::plugin::io::active() == 0 {
                break;
            }
            let now = crate::clock::now();
            let wait = match (self.timers.next_wait(now), crate::plugin::io::next_wait(now)) {
                _ if crate::http::has_wakes() || !self.accept_more.is_empty() => Some(std::time::Duration::ZERO),
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Err(e) = self.poll.poll(&mut events, wait) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    crate::log!(Alert, "epoll_wait() failed ({e})");
                    return 1;
                }
            }
            crate::clock::update();
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => {
                        for sig in sys::read_signalfd(raw) {
                            self.on_signal(sig);
                        }
                    }
                    Token(t) if t >= crate::plugin::io::TOKEN_BASE => {
                        crate::plugin::io::on_event(t, ev.is_readable(), ev.is_writable(), ev.is_error(), ev.is_read_closed())
                    }
                    Token(i) if i < CONN_BASE => self.accept(i),
                    Token(t) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if let Some(Some(slot)) = self.conns.get_mut(t - CONN_BASE) {
                                slot.conn.readable(ev.is_read_closed() || ev.is_error());
                            }
                        }
                        self.conn_ready(t - CONN_BASE)
                    }
                }
                self.run_deferred();
            }
            // One more connection from each listener listed; accept()
            // lists it again (at the end) when it got one.
            for _ in 0..self.accept_more.len() {
                let i = self.accept_more.remove(0);
                self.accept(i);
                self.run_deferred();
            }
            crate::plugin::io::run_due();
            self.run_deferred();
            let now = crate::clock::update();
            while let Some((_, t)) = self.timers.pop_due(now) {
                self.on_timer(t);
            }
        }
        crate::log!(Info, "exiting");
        0
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGQUIT => self.start_quit(),
            libc::SIGTERM | libc::SIGINT => self.exit = true,
            libc::SIGUSR1 => reopen_files(None),
            libc::SIGHUP if self.single => {
                crate::log!(Warn, "reload is not supported with \"master_process off\"; restart instead")
            }
            _ => {}
        }
    }

    fn start_quit(&mut self) {
        if self.quitting {
            return;
        }
        crate::log!(Notice, "gracefully shutting down");
        self.quitting = true;
        crate::http::request::QUITTING.with(|q| q.set(true));
        // Close our copies of the listeners: the kernel keeps the sockets
        // (the master and new workers hold them) and their queues.
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(t) = self.cycle.core.shutdown_timeout {
            self.timers.add(crate::clock::now() + t, Timer::ShutdownTimeout);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| s.conn.is_idle()).map(|_| i))
            .collect();
        for i in idle {
            self.close(i);
        }
    }

    fn set_accepting(&mut self, on: bool) {
        if self.accepting == on {
            return;
        }
        self.accepting = on;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let r = if on {
                self.poll.registry().register(l, Token(i), Interest::READABLE)
            } else {
                self.poll.registry().deregister(l)
            };
            if let Err(e) = r {
                crate::log!(Alert, "epoll_ctl() on listener failed ({e})");
            }
        }
    }

    fn accept(&mut self, i: usize) {
        loop {
            if !self.accepting || self.quitting {
                return;
            }
            if self.active >= self.cycle.core.worker_connections {
                crate::log!(Alert, "{} worker_connections are not enough", self.cycle.core.worker_connections);
                self.set_accepting(false);
                return;
            }
            let Some(l) = self.listeners.get(i) else { return };
            match l.accept() {
                Ok((sock, peer)) => {
                    crate::stats::inc(Stat::Accepts);
                    match self.proto.get(i).copied().flatten() {
                        Some(p) => {
                            let (_, pi, cb, data) = self.cycle.plugins.proto[p];
                            let name = &self.cycle.plugins.list[pi].name;
                            crate::plugin::io::accept(sock, peer, pi, name, cb, data);
                        }
                        None => self.add_conn(sock, peer, i),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    crate::log!(Crit, "accept4() failed ({})", crate::config::parser::os_err(&e));
                    self.set_accepting(false);
                    self.timers.add(crate::clock::now() + Duration::from_millis(500), Timer::ResumeAccept);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends: the next connection may be fine.
                    crate::log!(Error, "accept4() failed ({})", crate::config::parser::os_err(&e));
                }
            }
            if !self.cycle.core.multi_accept {
                // The rest on the next turns of the loop, after other
                // ready events.
                if !self.accept_more.contains(&i) {
                    self.accept_more.push(i);
                }
                return;
            }
        }
    }

    fn add_conn(&mut self, sock: mio::net::TcpStream, peer: std::net::SocketAddr, listener: usize) {
        let local = match self.local.get(listener).copied().flatten() {
            Some(a) => a,
            None => match sock.local_addr() {
                Ok(a) => a,
                Err(_) => return,
            },
        };
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let Some(conn) = Conn::new(sock, local, peer, idx, self.cycle) else {
            self.free.push(idx);
            return;
        };
        self.conns[idx] = Some(Slot { conn, timer: None, want: None });
        self.active += 1;
        crate::stats::inc(Stat::Handled);
        crate::stats::inc(Stat::Active);
        // The request is usually there already: the connection goes into
        // the epoll set only if it has to wait. One answered and closed at
        // once (`Connection: close`, HTTP/1.0) costs no epoll_ctl() at all.
        // Added later, the socket's current readiness is reported at once
        // (edge-triggered epoll checks it on EPOLL_CTL_ADD): nothing that
        // arrived in between is missed.
        let Some(next) = self.on_ready(idx) else { return };
        if !matches!(next, Next::Close) {
            let Some(Some(slot)) = self.conns.get_mut(idx) else { return };
            if let Err(e) = self.poll.registry().register(
                &mut slot.conn.sock.tcp,
                Token(CONN_BASE + idx),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                crate::log!(Alert, "epoll_ctl() on connection failed ({e})");
                self.close(idx);
                return;
            }
        }
        self.apply(idx, next);
    }

    fn conn_ready(&mut self, idx: usize) {
        if let Some(next) = self.on_ready(idx) {
            self.apply(idx, next);
        }
    }

    /// Runs connection `idx` as far as it goes; what it waits for next.
    fn on_ready(&mut self, idx: usize) -> Option<Next> {
        let now = crate::clock::now();
        let quitting = self.quitting;
        let slot = self.conns.get_mut(idx)?.as_mut()?;
        Some(slot.conn.on_ready(now, quitting, &mut self.reqs))
    }

    fn apply(&mut self, idx: usize, next: Next) {
        let Some(Some(slot)) = self.conns.get_mut(idx) else { return };
        match next {
            Next::Close => self.close(idx),
            Next::Park => slot.want = None,
            Next::Wait(at) => {
                slot.want = Some(at);
                let armed = slot.timer.and_then(|k| self.timers.deadline(k));
                if armed.is_some_and(|t| t <= at && at - t < LAZY) {
                    return;
                }
                if let Some(k) = slot.timer.take() {
                    self.timers.cancel(k);
                }
                slot.timer = Some(self.timers.add(at, Timer::Conn(idx)));
            }
        }
    }

    /// Runs what the last event left for later: connections that plugins
    /// woke and plugin callbacks due at once, until neither has more (or
    /// for 64 rounds; then the next epoll_wait does not block, see run()).
    /// Called after every event, as nginx calls the next handler directly:
    /// with work left for the end of the batch, a proxied request would
    /// wait for its upstream write until every other event was handled,
    /// and client, worker and backend would take turns instead of running
    /// side by side.
    fn run_deferred(&mut self) {
        for _ in 0..64 {
            self.run_wakes();
            if !crate::plugin::io::run_pending() {
                return;
            }
        }
    }

    /// Runs connections that plugins woke (resumed requests, body reads).
    fn run_wakes(&mut self) {
        for _ in 0..64 {
            crate::http::take_wakes(&mut self.wakes);
            if self.wakes.is_empty() {
                return;
            }
            let list = std::mem::take(&mut self.wakes);
            for &idx in &list {
                self.conn_ready(idx);
            }
            self.wakes = list;
        }
    }

    fn close(&mut self, idx: usize) {
        let Some(mut slot) = self.conns.get_mut(idx).and_then(Option::take) else { return };
        if let Some(k) = slot.timer.take() {
            self.timers.cancel(k);
        }
        slot.conn.closing(&mut self.reqs);
        // No EPOLL_CTL_DEL: closing the socket (its only descriptor) takes
        // it out of the epoll set.
        drop(slot);
        self.free.push(idx);
        self.active -= 1;
        crate::stats::dec(Stat::Active);
        if !self.accepting && !self.quitting && self.active < self.cycle.core.worker_connections {
            self.set_accepting(true);
        }
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Conn(idx) => {
                let quitting = self.quitting;
                let Some(Some(slot)) = self.conns.get_mut(idx) else { return };
                slot.timer = None;
                let now = crate::clock::now();
                let Some(want) = slot.want else { return };
                if now < want {
                    // A lazy timer: the deadline moved on since it was armed.
                    slot.timer = Some(self.timers.add(want, Timer::Conn(idx)));
                    return;
                }
                let next = slot.conn.on_timeout(now, quitting, &mut self.reqs);
                self.apply(idx, next);
            }
            Timer::ResumeAccept => {
                if !self.quitting {
                    self.set_accepting(true);
                }
            }
            Timer::ShutdownTimeout => {
                crate::log!(Notice, "worker_shutdown_timeout expired, closing {} connections", self.active);
                self.exit = true;
            }
        }
    }
}

/// Runs a helper process (declared by a plugin with spawn_helper): the
/// plugin's main function, which normally calls `run_loop`.
pub fn run_helper(cycle: &Cycle, idx: usize, master: i32) -> i32 {
    let Some(h) = cycle.plugins.helpers.get(idx) else { return 2 };
    sys::set_name(&format!("ngxr: {}", h.name));
    if let Err(e) = init_process(cycle, usize::MAX, false) {
        crate::log!(Emerg, "{e}");
        return 2;
    }
    if !sys::parent_death_signal(libc::SIGQUIT, master) {
        return 0;
    }
    crate::log!(Notice, "helper \"{}\" of plugin \"{}\" started", h.name, h.plugin_name);
    crate::clock::update();
    crate::plugin::call_helper(h);
    0
}

/// The user and group workers run as when the master is root (`user`,
/// nginx's default nobody:nogroup, or nobody's own group).
pub fn worker_user(core: &crate::config::core::CoreConf) -> Result<(u32, u32), String> {
    let (user, group) = core.user.clone().unwrap_or_else(|| ("nobody".into(), Some("nogroup".into())));
    let group = group.or(Some(user.clone())).filter(|g| sys::lookup_user(&user, Some(g)).is_ok());
    sys::lookup_user(&user, group.as_deref()).map_err(|e| e.to_string())
}

/// USR1: reopens the error log and the files plugins opened. `owner`: in
/// a root master, the worker user the new files are given to, so that
/// the workers (signalled next) can reopen them as well.
pub fn reopen_files(owner: Option<(u32, u32)>) {
    crate::log::reopen();
    if let Some((uid, gid)) = owner {
        crate::log::chown_all(uid, gid);
    }
    crate::plugin::files::reopen_all(owner);
}

/// The event loop of a helper process: plugin timers and connections,
/// until QUIT or TERM.
pub fn helper_loop() {
    let sigs = [libc::SIGQUIT, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGHUP, libc::SIGWINCH];
    let (Ok(mut poll), Ok(sigfd)) = (Poll::new(), sys::signalfd(&sigs)) else {
        crate::log!(Alert, "helper: cannot create its event loop");
        return;
    };
    let raw = sigfd.as_raw_fd();
    if poll.registry().register(&mut SourceFd(&raw), SIGNAL, Interest::READABLE).is_err()
        || crate::plugin::io::init(poll.registry()).is_err()
    {
        crate::log!(Alert, "helper: cannot register its event sources");
        return;
    }
    let mut events = Events::with_capacity(64);
    loop {
        let wait = crate::plugin::io::next_wait(crate::clock::update());
        let _ = poll.poll(&mut events, wait);
        crate::clock::update();
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => {
                    for sig in sys::read_signalfd(raw) {
                        match sig {
                            libc::SIGQUIT | libc::SIGTERM | libc::SIGINT => return,
                            libc::SIGUSR1 => reopen_files(None),
                            _ => {}
                        }
                    }
                }
                Token(t) => {
                    crate::plugin::io::on_event(t, ev.is_readable(), ev.is_writable(), ev.is_error(), ev.is_read_closed());
                    crate::plugin::io::run_pending();
                }
            }
        }
        crate::plugin::io::run_due();
    }
}
