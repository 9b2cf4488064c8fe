//! Listening sockets: opened by the master, shared with every worker.
//!
//! On reload, sockets are matched by address and kept (no bind errors, no
//! window where connections are refused); on binary upgrade, they are
//! inherited through the `NGXR_INHERIT` environment variable (`fd;fd;…`).
//! A `reuseport` listen gets one socket per worker slot.

use crate::config::core::Listen;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

/// Name of the environment variable carrying inherited listener fds.
pub const INHERIT_ENV: &str = "NGXR_INHERIT";

/// One configured listen and its open socket(s).
pub struct Bound {
    /// What the config asked for.
    pub conf: Listen,
    /// One socket, or one per worker slot for `reuseport`.
    pub socks: Vec<Socket>,
}

impl Bound {
    /// The socket worker `slot` accepts on.
    pub fn for_slot(&self, slot: usize) -> &Socket {
        &self.socks[slot % self.socks.len()]
    }
}

fn bind_one(l: &Listen) -> Result<Socket, String> {
    let fail = |what: &str, e: std::io::Error| {
        format!("{what}() to {} failed ({})", l.addr, crate::config::parser::os_err(&e))
    };
    let s = Socket::new(Domain::for_address(l.addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("socket", e))?;
    s.set_reuse_address(true).map_err(|e| fail("setsockopt(SO_REUSEADDR)", e))?;
    if l.addr.is_ipv6() {
        s.set_only_v6(l.ipv6only).map_err(|e| fail("setsockopt(IPV6_V6ONLY)", e))?;
    }
    if l.reuseport {
        s.set_reuse_port(true).map_err(|e| fail("setsockopt(SO_REUSEPORT)", e))?;
    }
    if let Some(n) = l.rcvbuf {
        s.set_recv_buffer_size(n).map_err(|e| fail("setsockopt(SO_RCVBUF)", e))?;
    }
    if let Some(n) = l.sndbuf {
        s.set_send_buffer_size(n).map_err(|e| fail("setsockopt(SO_SNDBUF)", e))?;
    }
    if l.so_keepalive {
        s.set_keepalive(true).map_err(|e| fail("setsockopt(SO_KEEPALIVE)", e))?;
    }
    s.bind(&SockAddr::from(l.addr)).map_err(|e| fail("bind", e))?;
    apply_listen(&s, l)?;
    s.set_nonblocking(true).map_err(|e| fail("ioctl(FIONBIO)", e))?;
    Ok(s)
}

/// Calls listen() with the configured backlog (again on reload: the kernel
/// takes a new backlog on an already listening socket).
fn apply_listen(s: &Socket, l: &Listen) -> Result<(), String> {
    s.listen(l.backlog).map_err(|e| {
        format!("listen() to {}, backlog {} failed ({})", l.addr, l.backlog, crate::config::parser::os_err(&e))
    })?;
    if l.deferred {
        crate::sys::set_defer_accept(s.as_raw_fd(), 1)
            .map_err(|e| format!("setsockopt(TCP_DEFER_ACCEPT) {} failed ({e})", l.addr))?;
    }
    Ok(())
}

/// Sockets available for reuse: the running generation's and inherited ones.
#[derive(Default)]
pub struct Pool {
    socks: Vec<(SocketAddr, bool, Socket)>,
}

impl Pool {
    /// Takes the sockets of a running generation.
    pub fn from_bound(bound: Vec<Bound>) -> Pool {
        let mut p = Pool::default();
        for b in bound {
            for s in b.socks {
                p.socks.push((b.conf.addr, b.conf.reuseport, s));
            }
        }
        p
    }

    /// Takes the fds named in `NGXR_INHERIT`, if set, and clears it.
    pub fn inherited() -> Pool {
        let mut p = Pool::default();
        let Ok(v) = std::env::var(INHERIT_ENV) else { return p };
        std::env::remove_var(INHERIT_ENV);
        for part in v.split([';', ':']).filter(|s| !s.is_empty()) {
            let Ok(fd) = part.parse::<RawFd>() else { continue };
            if fd < 3 {
                continue;
            }
            let Some(s) = crate::sys::adopt_socket(fd) else { continue };
            let Some(addr) = s.local_addr().ok().and_then(|a| a.as_socket()) else { continue };
            let reuseport = s.reuse_port().unwrap_or(false);
            let _ = crate::sys::set_cloexec(fd, true);
            p.socks.push((addr, reuseport, s));
        }
        crate::log!(Notice, "using inherited sockets from \"{v}\"");
        p
    }

    fn take(&mut self, addr: SocketAddr, reuseport: bool) -> Option<Socket> {
        let i = self.socks.iter().position(|(a, r, _)| *a == addr && *r == reuseport)?;
        Some(self.socks.remove(i).2)
    }

    /// Opens the set `want` (one socket per slot for reuseport), reusing
    /// pooled sockets by address. On error nothing is lost: the sockets taken
    /// so far are given back to the pool.
    pub fn open(&mut self, want: &[Listen], slots: usize) -> Result<Vec<Bound>, String> {
        let mut out: Vec<Bound> = Vec::new();
        for l in want {
            let n = if l.reuseport { slots.max(1) } else { 1 };
            let mut socks = Vec::with_capacity(n);
            for _ in 0..n {
                let got = match self.take(l.addr, l.reuseport) {
                    Some(s) => apply_listen(&s, l).map(|()| s),
                    None => bind_one(l),
                };
                match got {
                    Ok(s) => socks.push(s),
                    Err(e) => {
                        self.give_back(out);
                        for s in socks {
                            self.socks.push((l.addr, l.reuseport, s));
                        }
                        return Err(e);
                    }
                }
            }
            out.push(Bound { conf: l.clone(), socks });
        }
        Ok(out)
    }

    /// Returns sockets to the pool (after a failed open).
    pub fn give_back(&mut self, bound: Vec<Bound>) {
        for b in bound {
            for s in b.socks {
                self.socks.push((b.conf.addr, b.conf.reuseport, s));
            }
        }
    }

    /// Closes what is left, logging each address.
    pub fn close_rest(&mut self) {
        for (addr, _, _) in self.socks.drain(..) {
            crate::log!(Notice, "closing listening socket on {addr}");
        }
    }
}

/// The `NGXR_INHERIT` value for a set of bound sockets, clearing
/// FD_CLOEXEC on each so the new binary receives them.
pub fn export(bound: &[Bound]) -> String {
    let mut v = String::new();
    for b in bound {
        for s in &b.socks {
            let fd = s.as_raw_fd();
            let _ = crate::sys::set_cloexec(fd, false);
            v.push_str(&format!("{fd};"));
        }
    }
    v
}

/// Sets FD_CLOEXEC again after the new binary was started.
pub fn unexport(bound: &[Bound]) {
    for b in bound {
        for s in &b.socks {
            let _ = crate::sys::set_cloexec(s.as_raw_fd(), true);
        }
    }
}
