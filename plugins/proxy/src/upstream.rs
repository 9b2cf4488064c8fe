//! Upstream groups: `upstream name { server ...; }`, peer selection
//! (nginx's smooth weighted round-robin, least_conn, ip_hash, hash with
//! optional consistent ring, random with `two`), passive health
//! (max_fails / fail_timeout), `max_conns`, and the per-worker pool of
//! idle keepalive connections.
//!
//! Configuration objects are built in the master and copied into each
//! worker by fork, so the `RefCell` state here is per worker, as nginx's
//! is without a `zone`. `zone` is accepted, and the state stays per
//! worker: failures, connection counts and `max_conns` are each worker's.

use plugin_api::io::Conn;
use plugin_api::sys;
use plugin_api::template::Template;
use std::cell::RefCell;
use std::ffi::c_void;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// One server of a group.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The address as text ("127.0.0.1:8080", "unix:/path"), for
    /// `$upstream_addr` and connecting.
    pub text: String,
    /// `weight=`.
    pub weight: u32,
    /// `max_fails=` (0: never marked down).
    pub max_fails: u32,
    /// `fail_timeout=`.
    pub fail_timeout: Duration,
    /// `down`.
    pub down: bool,
    /// `max_conns=` (0: no limit): requests in progress at most (idle
    /// keepalive connections not counted, as nginx's; per worker, see the
    /// module's comment).
    pub max_conns: u32,
}

#[derive(Debug, Default, Clone)]
struct PeerState {
    current: i64,
    effective: i64,
    fails: u32,
    checked: Option<Instant>,
    conns: u32,
}

/// How a peer is chosen.
#[derive(Debug, Clone)]
pub enum Balance {
    /// Smooth weighted round-robin (the default).
    RoundRobin,
    /// Fewest active connections relative to weight.
    LeastConn,
    /// By the client's /24 (IPv4) or whole address (IPv6).
    IpHash,
    /// `random`: by weight; `two`: the one with fewer connections of two
    /// picked so (nginx's `random two least_conn`).
    Random {
        /// `two`.
        two: bool,
    },
    /// By a key; `consistent` uses a ketama-style ring.
    Hash {
        /// The key template (`$request_uri`).
        key: Template,
        /// Consistent hashing.
        consistent: bool,
    },
}

/// An idle keepalive connection.
#[derive(Debug)]
pub struct Idle {
    /// The connection.
    pub conn: Conn,
    /// Which peer it goes to.
    pub peer: usize,
    /// Idle since.
    pub since: Instant,
    /// Requests it has carried.
    pub requests: u32,
    /// When it was connected (`keepalive_time`).
    pub born: Instant,
}

/// An upstream group (explicit, or implicit for `proxy_pass http://host:port`).
#[derive(Debug)]
pub struct Upstream {
    /// Its name (`backend`, or `host:port` for an implicit one).
    pub name: String,
    /// Primary peers first, then backups.
    pub peers: Vec<Peer>,
    /// How many are primary.
    pub nprimary: usize,
    /// The balancer.
    pub balance: Balance,
    /// `keepalive N` (0: no pool).
    pub keepalive: usize,
    /// `keepalive_timeout`.
    pub keepalive_timeout: Duration,
    /// `keepalive_requests`.
    pub keepalive_requests: u32,
    /// `keepalive_time`: a connection older than this is not kept.
    pub keepalive_time: Duration,
    state: RefCell<Vec<PeerState>>,
    ring: Vec<(u32, usize)>,
    pool: RefCell<Vec<Idle>>,
}

/// No peer can take the request now ("no live upstreams").
#[derive(Debug, PartialEq, Eq)]
pub struct NoLive;

fn parse_time(cx_time: &dyn Fn(&str) -> Result<u64, String>, v: &str) -> Result<Duration, String> {
    cx_time(v).map(Duration::from_millis)
}

/// Resolves `host[:port]` (default port 80) at configuration time, as
/// addresses in text; `unix:/path` (a Unix-domain socket) stays as it is.
pub fn resolve(hostport: &str) -> Result<Vec<String>, String> {
    if let Some(path) = hostport.strip_prefix("unix:") {
        if !path.starts_with('/') && !path.starts_with('.') || path.len() > 107 {
            return Err(format!("invalid host in upstream \"{hostport}\""));
        }
        return Ok(vec![hostport.to_string()]);
    }
    let with_port = if hostport.rsplit_once(':').is_some_and(|(h, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':'))
        || hostport.starts_with('[') && hostport.contains("]:")
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<String> = with_port.to_socket_addrs().map_err(|_| format!("host not found in upstream \"{hostport}\""))?.map(|a| a.to_string()).collect();
    if addrs.is_empty() {
        return Err(format!("host not found in upstream \"{hostport}\""));
    }
    Ok(addrs)
}

impl Upstream {
    /// A group of `peers`, `nprimary` of them primary.
    pub fn new(name: &str, peers: Vec<Peer>, nprimary: usize, balance: Balance) -> Upstream {
        let state = peers
            .iter()
            .map(|p| PeerState { effective: p.weight as i64, ..Default::default() })
            .collect();
        let mut u = Upstream {
            name: name.to_string(),
            peers,
            nprimary,
            balance,
            keepalive: 0,
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            keepalive_time: Duration::from_secs(3600),
            state: RefCell::new(state),
            ring: Vec::new(),
            pool: RefCell::new(Vec::new()),
        };
        u.build_ring();
        u
    }

    /// The implicit group for `proxy_pass http://host:port`: every
    /// address the name resolves to, weight 1.
    pub fn implicit(name: &str, addrs: &[String]) -> Upstream {
        let peers = addrs
            .iter()
            .map(|a| Peer { text: a.clone(), weight: 1, max_fails: 1, fail_timeout: Duration::from_secs(10), down: false, max_conns: 0 })
            .collect::<Vec<_>>();
        let n = peers.len();
        Upstream::new(name, peers, n, Balance::RoundRobin)
    }

    /// Parses an `upstream name { ... }` block's children.
    pub fn parse(name: &str, children: &[Vec<String>], time_ms: &dyn Fn(&str) -> Result<u64, String>) -> Result<Upstream, String> {
        let mut primary = Vec::new();
        let mut backup = Vec::new();
        let mut balance = Balance::RoundRobin;
        let (mut keepalive, mut ka_timeout, mut ka_requests) = (0usize, Duration::from_secs(60), 1000u32);
        let mut ka_time = Duration::from_secs(3600);
        for words in children {
            let (d, args) = words.split_first().ok_or("empty directive")?;
            match d.as_str() {
                "server" => {
                    let (addr, params) = args.split_first().ok_or("invalid number of arguments in \"server\" directive")?;
                    let mut p = Peer {
                        text: String::new(),
                        weight: 1,
                        max_fails: 1,
                        fail_timeout: Duration::from_secs(10),
                        down: false,
                        max_conns: 0,
                    };
                    let mut is_backup = false;
                    for a in params {
                        if let Some(v) = a.strip_prefix("weight=") {
                            p.weight = v.parse().ok().filter(|&w| w > 0).ok_or(format!("invalid parameter \"{a}\""))?;
                        } else if let Some(v) = a.strip_prefix("max_fails=") {
                            p.max_fails = v.parse().map_err(|_| format!("invalid parameter \"{a}\""))?;
                        } else if let Some(v) = a.strip_prefix("fail_timeout=") {
                            p.fail_timeout = parse_time(time_ms, v).map_err(|_| format!("invalid parameter \"{a}\""))?;
                        } else if let Some(v) = a.strip_prefix("max_conns=") {
                            p.max_conns = v.parse().map_err(|_| format!("invalid parameter \"{a}\""))?;
                        } else if a == "backup" {
                            is_backup = true;
                        } else if a == "down" {
                            p.down = true;
                        } else {
                            return Err(format!("invalid parameter \"{a}\""));
                        }
                    }
                    for sa in resolve(addr)? {
                        let mut q = p.clone();
                        q.text = sa;
                        if is_backup {
                            backup.push(q);
                        } else {
                            primary.push(q);
                        }
                    }
                }
                "least_conn" if args.is_empty() => balance = Balance::LeastConn,
                "random" if args.is_empty() || args[0] == "two" && (args.len() == 1 || args.len() == 2 && args[1] == "least_conn") => {
                    balance = Balance::Random { two: !args.is_empty() }
                }
                "random" => return Err(format!("invalid parameter \"{}\"", args.join(" "))),
                // Accepted; the group's state stays per worker (see the
                // module's comment).
                "zone" if !args.is_empty() && args.len() <= 2 => {}
                "ip_hash" if args.is_empty() => balance = Balance::IpHash,
                "hash" if args.len() == 1 || args.len() == 2 && args[1] == "consistent" => {
                    balance = Balance::Hash { key: Template::parse(&args[0]), consistent: args.len() == 2 }
                }
                "keepalive" if args.len() == 1 => {
                    keepalive = args[0].parse().ok().filter(|&n| n > 0).ok_or(format!("invalid value \"{}\" in \"keepalive\" directive", args[0]))?
                }
                "keepalive_timeout" if args.len() == 1 => ka_timeout = parse_time(time_ms, &args[0])?,
                "keepalive_time" if args.len() == 1 => ka_time = parse_time(time_ms, &args[0])?,
                "keepalive_requests" if args.len() == 1 => {
                    ka_requests = args[0].parse().map_err(|_| format!("invalid value \"{}\" in \"keepalive_requests\" directive", args[0]))?
                }
                "least_conn" | "ip_hash" | "hash" | "keepalive" | "keepalive_timeout" | "keepalive_time" | "keepalive_requests" => {
                    return Err(format!("invalid number of arguments in \"{d}\" directive"))
                }
                other => return Err(format!("unknown directive \"{other}\" in upstream \"{name}\"")),
            }
        }
        if primary.is_empty() {
            return Err(format!("no servers are inside upstream \"{name}\""));
        }
        if !backup.is_empty() && !matches!(balance, Balance::RoundRobin | Balance::LeastConn) {
            return Err("balancing method does not support parameter \"backup\"".into());
        }
        let n = primary.len();
        primary.extend(backup);
        let mut u = Upstream::new(name, primary, n, balance);
        u.keepalive = keepalive;
        u.keepalive_timeout = ka_timeout;
        u.keepalive_requests = ka_requests;
        u.keepalive_time = ka_time;
        Ok(u)
    }

    fn build_ring(&mut self) {
        if !matches!(self.balance, Balance::Hash { consistent: true, .. }) {
            return;
        }
        let mut ring = Vec::new();
        for (i, p) in self.peers[..self.nprimary].iter().enumerate() {
            for j in 0..160 * p.weight {
                ring.push((crc32fast::hash(format!("{}-{j}", p.text).as_bytes()), i));
            }
        }
        ring.sort_unstable();
        self.ring = ring;
    }

    fn usable(&self, st: &[PeerState], i: usize, tried: &[bool], now: Instant) -> bool {
        let p = &self.peers[i];
        if p.down || tried.get(i).copied().unwrap_or(false) || (p.max_conns > 0 && st[i].conns >= p.max_conns) {
            return false;
        }
        // A lone server is never taken out for failures (as nginx's).
        if self.peers.len() == 1 {
            return true;
        }
        let s = &st[i];
        !(p.max_fails > 0 && s.fails >= p.max_fails && s.checked.is_some_and(|c| now.duration_since(c) <= p.fail_timeout))
    }

    /// Smooth weighted round-robin over the usable peers of `range` that
    /// `also` accepts.
    fn rr(&self, range: std::ops::Range<usize>, tried: &[bool], now: Instant, also: impl Fn(usize) -> bool) -> Option<usize> {
        let mut st = self.state.borrow_mut();
        let mut best: Option<usize> = None;
        let mut total = 0i64;
        for i in range {
            if !self.usable(&st, i, tried, now) || !also(i) {
                continue;
            }
            let w = self.peers[i].weight as i64;
            let s = &mut st[i];
            s.current += s.effective;
            total += s.effective;
            if s.effective < w {
                s.effective += 1;
            }
            let cur = s.current;
            if best.is_none_or(|b| cur > st[b].current) {
                best = Some(i);
            }
        }
        let b = best?;
        st[b].current -= total;
        Some(b)
    }

    fn least_conn(&self, range: std::ops::Range<usize>, tried: &[bool], now: Instant) -> Option<usize> {
        let best = {
            let st = self.state.borrow();
            let mut best: Option<usize> = None;
            for i in range.clone() {
                if !self.usable(&st, i, tried, now) {
                    continue;
                }
                // conns/weight smaller, compared without division.
                let better = best.is_none_or(|b| (st[i].conns as u64) * (self.peers[b].weight as u64) < (st[b].conns as u64) * (self.peers[i].weight as u64));
                if better {
                    best = Some(i);
                }
            }
            let b = best?;
            let key = (st[b].conns as u64, self.peers[b].weight as u64);
            move |i: usize| (st[i].conns as u64) * key.1 == key.0 * (self.peers[i].weight as u64)
        };
        // Ties are broken by weighted round-robin among them.
        let tied: Vec<bool> = range.clone().map(&best).collect();
        drop(best);
        let start = range.start;
        self.rr(range, tried, now, |i| tied[i - start])
    }

    /// Walks primary peers by weight to the one holding weight unit `w`.
    fn by_weight(&self, mut w: u64) -> usize {
        for (i, p) in self.peers[..self.nprimary].iter().enumerate() {
            if w < p.weight as u64 {
                return i;
            }
            w -= p.weight as u64;
        }
        0
    }

    fn total_weight(&self) -> u64 {
        self.peers[..self.nprimary].iter().map(|p| p.weight as u64).sum::<u64>().max(1)
    }

    /// Chooses a peer not in `tried`. `client` is the client's address
    /// (ip_hash), `key` the rendered hash key.
    pub fn pick(&self, tried: &[bool], client: &str, key: &[u8], now: Instant) -> Result<usize, NoLive> {
        let primary = 0..self.nprimary;
        let found = match &self.balance {
            Balance::RoundRobin => self.rr(primary, tried, now, |_| true),
            Balance::LeastConn => self.least_conn(primary, tried, now),
            Balance::IpHash => self.ip_hash(client, tried, now),
            Balance::Random { two } => self.random(*two, tried, now),
            // An empty key: round-robin, as nginx's.
            Balance::Hash { .. } if key.is_empty() => self.rr(primary, tried, now, |_| true),
            Balance::Hash { consistent: false, .. } => self.hash(key, tried, now),
            Balance::Hash { consistent: true, .. } => self.consistent(key, tried, now),
        };
        if let Some(i) = found {
            return Ok(i);
        }
        let backup = self.nprimary..self.peers.len();
        let found = match &self.balance {
            Balance::LeastConn => self.least_conn(backup, tried, now),
            _ => self.rr(backup, tried, now, |_| true),
        };
        if let Some(i) = found {
            return Ok(i);
        }
        // Everything is down or failed: forget the failures so the next
        // request tries again (nginx does the same), and report.
        for s in self.state.borrow_mut().iter_mut() {
            s.fails = 0;
        }
        Err(NoLive)
    }

    /// nginx's random: a usable primary peer by weight; with `two`, the
    /// one of two such picks with fewer connections for its weight.
    fn random(&self, two: bool, tried: &[bool], now: Instant) -> Option<usize> {
        let st = self.state.borrow();
        let usable: Vec<usize> = (0..self.nprimary).filter(|&i| self.usable(&st, i, tried, now)).collect();
        let total: u64 = usable.iter().map(|&i| u64::from(self.peers[i].weight)).sum();
        let pick = || {
            let mut w = fastrand::u64(0..total.max(1));
            for &i in &usable {
                let pw = u64::from(self.peers[i].weight);
                if w < pw {
                    return i;
                }
                w -= pw;
            }
            usable[0]
        };
        if usable.is_empty() {
            return None;
        }
        let a = pick();
        if !two || usable.len() == 1 {
            return Some(a);
        }
        let mut b = pick();
        for _ in 0..20 {
            if b != a {
                break;
            }
            b = pick();
        }
        let load = |i: usize| u64::from(st[i].conns) * u64::from(self.peers[if i == a { b } else { a }].weight);
        Some(if load(b) < load(a) { b } else { a })
    }

    fn ip_hash(&self, client: &str, tried: &[bool], now: Instant) -> Option<usize> {
        let octets: Vec<u8> = match client.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => a.octets()[..3].to_vec(),
            Ok(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
            Err(_) => client.as_bytes().to_vec(),
        };
        let total = self.total_weight();
        let mut h: u64 = 89;
        for _ in 0..20 {
            for &b in &octets {
                h = (h * 113 + b as u64) % 6271;
            }
            let i = self.by_weight(h % total);
            let st = self.state.borrow();
            if self.usable(&st, i, tried, now) {
                return Some(i);
            }
        }
        self.rr(0..self.nprimary, tried, now, |_| true)
    }

    fn hash(&self, key: &[u8], tried: &[bool], now: Instant) -> Option<usize> {
        let total = self.total_weight();
        let mut h = crc32fast::hash(key);
        for n in 0..20u32 {
            let i = self.by_weight(h as u64 % total);
            if self.usable(&self.state.borrow(), i, tried, now) {
                return Some(i);
            }
            let mut hs = crc32fast::Hasher::new();
            hs.update(&n.to_le_bytes());
            hs.update(key);
            h = hs.finalize();
        }
        self.rr(0..self.nprimary, tried, now, |_| true)
    }

    fn consistent(&self, key: &[u8], tried: &[bool], now: Instant) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = crc32fast::hash(key);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let st = self.state.borrow();
        (0..self.ring.len()).map(|k| self.ring[(start + k) % self.ring.len()].1).find(|&i| self.usable(&st, i, tried, now))
    }

    /// A connection to peer `i` starts (least_conn bookkeeping).
    pub fn acquire(&self, i: usize) {
        if let Some(s) = self.state.borrow_mut().get_mut(i) {
            s.conns += 1;
        }
    }

    /// A connection to peer `i` ends; `ok` false counts a failure.
    pub fn release(&self, i: usize, ok: bool, now: Instant) {
        let mut st = self.state.borrow_mut();
        let Some(s) = st.get_mut(i) else { return };
        s.conns = s.conns.saturating_sub(1);
        let p = &self.peers[i];
        if ok {
            if s.checked.is_none_or(|c| now.duration_since(c) > p.fail_timeout) {
                s.fails = 0;
            }
            return;
        }
        s.fails += 1;
        s.checked = Some(now);
        if let Some(d) = p.weight.checked_div(p.max_fails) {
            s.effective = (s.effective - d as i64).max(0);
        }
        if p.max_fails > 0 && s.fails >= p.max_fails && self.peers.len() > 1 {
            plugin_api::log(sys::LOG_WARN, &format!("upstream server temporarily disabled while connecting to upstream, upstream: \"{}\"", p.text));
        }
    }

    /// Takes an idle connection to peer `i` from the pool (expired ones
    /// are closed on the way).
    pub fn take_idle(&self, i: usize, now: Instant) -> Option<Idle> {
        let mut pool = self.pool.borrow_mut();
        while let Some(pos) = pool.iter().rposition(|c| c.peer == i) {
            let idle = pool.remove(pos);
            if now.duration_since(idle.since) <= self.keepalive_timeout {
                return Some(idle);
            }
            idle.conn.close();
        }
        None
    }

    /// Keeps a connection for reuse (the oldest one is closed when the
    /// pool is full). It is watched: data or EOF while idle closes it.
    pub fn put_idle(&self, mut idle: Idle, now: Instant) {
        if self.keepalive == 0 || idle.requests >= self.keepalive_requests || idle.born.checked_add(self.keepalive_time).is_some_and(|end| now >= end) {
            idle.conn.close();
            return;
        }
        idle.since = now;
        let conn = idle.conn;
        {
            let mut pool = self.pool.borrow_mut();
            if pool.len() >= self.keepalive {
                let old = pool.remove(0);
                old.conn.close();
            }
            pool.push(idle);
        }
        // SAFETY: the upstream lives as long as the configuration, which
        // outlives every connection in its pool in this worker.
        let ok = unsafe { conn.watch_raw(sys::EV_READ, Some(idle_event), self as *const Upstream as *mut c_void) };
        if ok.is_err() {
            self.drop_idle(conn);
        }
    }

    fn drop_idle(&self, conn: Conn) {
        let mut pool = self.pool.borrow_mut();
        if let Some(pos) = pool.iter().position(|c| c.conn == conn) {
            pool.remove(pos);
        }
        conn.close();
    }

    /// Idle connections now (tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.pool.borrow().len()
    }
}

/// An idle pooled connection became readable: the upstream closed it (or
/// sent something unasked), so it is dropped.
unsafe extern "C" fn idle_event(c: *mut sys::Conn, _ev: u32, data: *mut c_void) {
    plugin_api::rt::guard("proxy", "an idle upstream connection", (), || {
        // SAFETY: data is the Upstream that put this connection in its pool.
        let up = unsafe { &*(data as *const Upstream) };
        let conn = Conn::from_raw(c);
        let mut b = [0u8; 1];
        match conn.read(&mut b) {
            Ok(None) => {}
            _ => up.drop_idle(conn),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Result<u64, String> {
        s.trim_end_matches('s').parse::<u64>().map(|v| v * 1000).map_err(|e| e.to_string())
    }

    fn group(body: &str) -> Upstream {
        let children: Vec<Vec<String>> = body.split(';').map(str::trim).filter(|l| !l.is_empty()).map(|l| l.split_whitespace().map(String::from).collect()).collect();
        Upstream::parse("t", &children, &ms).unwrap()
    }

    fn counts(u: &Upstream, n: usize, key: impl Fn(usize) -> String) -> Vec<usize> {
        let mut c = vec![0; u.peers.len()];
        let now = Instant::now();
        for k in 0..n {
            let tried = vec![false; u.peers.len()];
            let k = key(k);
            let i = u.pick(&tried, &k, k.as_bytes(), now).unwrap();
            c[i] += 1;
        }
        c
    }

    #[test]
    fn smooth_weighted_round_robin_is_nginx_order() {
        let u = group("server 127.0.0.1:1 weight=5; server 127.0.0.1:2 weight=1; server 127.0.0.1:3 weight=1");
        let now = Instant::now();
        let seq: Vec<usize> = (0..7).map(|_| u.pick(&[false; 3], "", b"", now).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&u, 700, |_| String::new()), vec![500, 100, 100]);
    }

    #[test]
    fn failures_mark_a_peer_down_then_backup_then_no_live() {
        let u = group("server 127.0.0.1:1 max_fails=1 fail_timeout=10s; server 127.0.0.1:2 backup");
        let now = Instant::now();
        assert_eq!(u.pick(&[false, false], "", b"", now), Ok(0));
        u.acquire(0);
        u.release(0, false, now);
        assert_eq!(u.pick(&[false, false], "", b"", now), Ok(1), "primary failed: backup");
        assert_eq!(u.pick(&[false, true], "", b"", now), Err(NoLive));
        assert_eq!(u.pick(&[false, false], "", b"", now), Ok(0), "no live upstreams resets the failures");
        let later = now + Duration::from_secs(11);
        u.release(0, false, now);
        assert_eq!(u.pick(&[false, false], "", b"", later), Ok(0), "fail_timeout passed");
    }

    #[test]
    fn hashes_are_sticky_and_spread() {
        for method in ["hash $k", "hash $k consistent", "ip_hash"] {
            let u = group(&format!("{method}; server 127.0.0.1:1; server 127.0.0.1:2; server 127.0.0.1:3"));
            let key = |k: usize| format!("10.0.{}.{}", k % 50, k % 7);
            let now = Instant::now();
            for k in 0..200 {
                let a = u.pick(&[false; 3], &key(k), key(k).as_bytes(), now).unwrap();
                let b = u.pick(&[false; 3], &key(k), key(k).as_bytes(), now).unwrap();
                assert_eq!(a, b, "{method}: same key, same peer");
            }
            let c = counts(&u, 3000, |k| format!("/item/{k}"));
            if method != "ip_hash" {
                assert!(c.iter().all(|&n| n > 600), "{method}: spread {c:?}");
            }
        }
    }

    #[test]
    fn consistent_hash_moves_few_keys_when_a_peer_goes() {
        let a = group("hash $k consistent; server 127.0.0.1:1; server 127.0.0.1:2; server 127.0.0.1:3; server 127.0.0.1:4");
        let b = group("hash $k consistent; server 127.0.0.1:1; server 127.0.0.1:2; server 127.0.0.1:3");
        let now = Instant::now();
        let mut moved = 0;
        for k in 0..1000 {
            let key = format!("/k/{k}");
            let pa = a.pick(&[false; 4], "", key.as_bytes(), now).unwrap();
            let pb = b.pick(&[false; 3], "", key.as_bytes(), now).unwrap();
            if pa != 3 && pa != pb {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of surviving peers stay put");
    }

    #[test]
    fn least_conn_prefers_idle_peers() {
        let u = group("least_conn; server 127.0.0.1:1; server 127.0.0.1:2");
        let now = Instant::now();
        u.acquire(0);
        u.acquire(0);
        assert_eq!(u.pick(&[false; 2], "", b"", now), Ok(1));
        u.acquire(1);
        u.acquire(1);
        u.acquire(1);
        assert_eq!(u.pick(&[false; 2], "", b"", now), Ok(0));
    }

    #[test]
    fn bad_blocks_are_refused() {
        let bad = |b: &str| {
            let children: Vec<Vec<String>> = b.split(';').map(str::trim).filter(|l| !l.is_empty()).map(|l| l.split_whitespace().map(String::from).collect()).collect();
            Upstream::parse("t", &children, &ms).unwrap_err()
        };
        assert!(bad("").contains("no servers"));
        assert!(bad("server 127.0.0.1:1 weight=0").contains("weight=0"));
        assert!(bad("server 127.0.0.1:1 bogus").contains("bogus"));
        assert!(bad("ip_hash; server 127.0.0.1:1; server 127.0.0.1:2 backup").contains("backup"));
        assert!(bad("frobnicate; server 127.0.0.1:1").contains("frobnicate"));
    }
}
