//! `limit_req`: nginx's request rate limiting — a leaky bucket per key,
//! shared by all workers (a shared zone, kept across reload).
//!
//! - `limit_req_zone key zone=name:size rate=Nr/s|Nr/m [sync];` (http):
//!   `key` is text with variables (`$binary_remote_addr` reads as the
//!   client address); an empty key is not limited.
//! - `limit_req zone=name [burst=N] [nodelay | delay=N];` (http, server,
//!   location; several may be given; a block's own list replaces the
//!   inherited one).
//! - `limit_req_status code` (503), `limit_req_log_level`, `limit_req_dry_run`.
//! - `$limit_req_status`: PASSED, DELAYED, REJECTED, DELAYED_DRY_RUN,
//!   REJECTED_DRY_RUN.
//!
//! As nginx: each request adds one to its key's excess, which drains at
//! `rate`; beyond `burst` the request is refused; beyond `delay` (0 by
//! default, `burst` with `nodelay`) it waits until the excess would have
//! drained to `delay`. Several limits: all are checked, any refusal wins,
//! the longest wait applies. The zone holds a fixed number of keys
//! (32 bytes each); a full neighbourhood forgets its least recently seen
//! key.

use limit_zone::{rd, wr, HEADER};
use plugin_api::{export_plugin, log, sys, template::Template, ConfCx, DirectiveSpec, Phase, Plugin, Request, Shm, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Zone layout version (a change gives a fresh zone on reload).
const LAYOUT: u32 = 1;
const SLOT: usize = 32;
/// Slots looked at for a key (then the least recently seen is replaced).
const PROBES: usize = 16;

/// One `limit_req_zone`.
pub struct Zone {
    name: String,
    key: Template,
    /// Milli-requests per second.
    rate: u64,
    shm: Shm,
}

/// One `limit_req` line.
#[derive(Clone)]
struct Limit {
    zone: String,
    /// Milli-requests.
    burst: u64,
    delay: u64,
}

/// Per-block configuration.
#[derive(Clone, Default)]
pub struct Conf {
    limits: Option<Rc<Vec<Limit>>>,
    common: limit_zone::Common,
}

thread_local! {
    /// The zones of the configuration being read (and, in workers, in use).
    static ZONES: RefCell<HashMap<String, Rc<Zone>>> = RefCell::new(HashMap::new());
}

impl limit_zone::HasCommon for Conf {
    const KIND: &'static str = "limit_req";
    fn common(&mut self) -> &mut limit_zone::Common {
        &mut self.common
    }
}

/// The plugin.
pub struct LimitReq;

/// Where a request stands (`$limit_req_status`), in request memory.
#[derive(Default)]
struct Ctx {
    status: &'static str,
    delayed: bool,
}

/// Parses `Nr/s` or `Nr/m` into milli-requests per second.
pub fn parse_rate(v: &str) -> Option<u64> {
    let (n, per) = v.strip_suffix("r/s").map(|n| (n, 1)).or_else(|| v.strip_suffix("r/m").map(|n| (n, 60)))?;
    let n: u64 = n.parse().ok().filter(|&n| n > 0)?;
    Some(n * 1000 / per)
}

fn now_ms() -> u64 {
    // Wall clock milliseconds: the same in every worker (a jump back is
    // treated as no time passing, as nginx does).
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The outcome of one limit for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit, now.
    Pass,
    /// Within burst: wait this many ms (with the excess).
    Delay(u64, u64),
    /// Beyond burst (with the excess, milli-requests).
    Reject(u64),
}

/// The leaky bucket on one zone's bytes: looks `hash` up (or takes a
/// slot for it), drains its excess at `rate` since it was last seen, adds
/// this request and judges it against `burst` and `delay`. A refused
/// request leaves the bucket as it was (as nginx's). `account`: record
/// the request.
pub fn judge(mem: &mut [u8], hash: u64, now: u64, rate: u64, burst: u64, delay: u64, account: bool) -> Verdict {
    let slots = (mem.len().saturating_sub(HEADER)) / SLOT;
    if slots == 0 {
        return Verdict::Pass;
    }
    let hash = hash.max(1); // 0 marks an empty slot
    let start = (hash % slots as u64) as usize;
    let mut found = None;
    let mut victim = (u64::MAX, start);
    for i in 0..PROBES.min(slots) {
        let s = (start + i) % slots;
        let at = HEADER + s * SLOT;
        let h = rd(mem, at);
        if h == hash {
            found = Some(at);
            break;
        }
        if h == 0 {
            victim = (0, s);
            break;
        }
        let last = rd(mem, at + 16);
        if last < victim.0 {
            victim = (last, s);
        }
    }
    // A key's first request starts its bucket empty (nginx's new node).
    let (at, excess) = match found {
        Some(at) => {
            let elapsed = now.saturating_sub(rd(mem, at + 16));
            (at, (rd(mem, at + 8) as i128 - (rate as i128 * elapsed as i128) / 1000 + 1000).max(0) as u64)
        }
        None => (HEADER + victim.1 * SLOT, 0),
    };
    if excess > burst {
        return Verdict::Reject(excess);
    }
    if account {
        wr(mem, at, hash);
        wr(mem, at + 8, excess);
        wr(mem, at + 16, now);
    }
    if excess > delay {
        Verdict::Delay((excess - delay) * 1000 / rate.max(1), excess)
    } else {
        Verdict::Pass
    }
}

fn zone_directive(_c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let (mut zone, mut rate) = (None, None);
    for p in &a[1..] {
        if p.starts_with("zone=") {
            zone = Some(limit_zone::declare(cx, "limit_req", p, LAYOUT)?);
        } else if let Some(r) = p.strip_prefix("rate=") {
            rate = Some(parse_rate(r).ok_or_else(|| format!("invalid rate \"{r}\""))?);
        } else if *p != "sync" {
            return Err(format!("invalid parameter \"{p}\""));
        }
    }
    let (name, shm) = zone.ok_or("\"limit_req_zone\" must have \"zone\" parameter")?;
    let zone = Zone { name: name.clone(), key: Template::parse(a[0]), rate: rate.unwrap_or(1000), shm };
    let dup = ZONES.with(|z| z.borrow_mut().insert(name.clone(), Rc::new(zone)).is_some());
    if dup {
        return Err(format!("duplicate zone \"{name}\""));
    }
    Ok(())
}

fn limit_directive(c: &mut Conf, a: &[&str], _cx: &ConfCx<'_>) -> Result<(), String> {
    let (mut zone, mut burst, mut delay, mut nodelay) = (None, 0u64, 0u64, false);
    for p in a {
        if let Some(z) = p.strip_prefix("zone=") {
            zone = Some(z.to_string());
        } else if let Some(b) = p.strip_prefix("burst=") {
            burst = b.parse().map_err(|_| format!("invalid burst value \"{p}\""))?;
        } else if let Some(d) = p.strip_prefix("delay=") {
            delay = d.parse().map_err(|_| format!("invalid delay value \"{p}\""))?;
        } else if *p == "nodelay" {
            nodelay = true;
        } else {
            return Err(format!("invalid parameter \"{p}\""));
        }
    }
    let zone = zone.ok_or("\"limit_req\" must have \"zone\" parameter")?;
    if !ZONES.with(|z| z.borrow().contains_key(&zone)) {
        return Err(format!("unknown limit_req_zone \"{zone}\""));
    }
    let mut list = c.limits.as_deref().cloned().unwrap_or_default();
    if list.iter().any(|l| l.zone == zone) {
        return Err("limit_req for the same zone is duplicate".into());
    }
    let burst = burst * 1000;
    list.push(Limit { zone, burst, delay: if nodelay { burst } else { delay * 1000 } });
    c.limits = Some(Rc::new(list));
    Ok(())
}

impl Plugin for LimitReq {
    const NAME: &'static str = "limit_req";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;
        let mut d = vec![
            DirectiveSpec::<Conf>::new("limit_req_zone", sys::CTX_HTTP, 2, 4, zone_directive),
            DirectiveSpec::<Conf>::new("limit_req", H, 1, 3, limit_directive),
        ];
        d.extend(limit_zone::directives::<Conf>(["limit_req_status", "limit_req_log_level", "limit_req_dry_run"], H));
        d
    }

    fn create(cx: &ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            // A new configuration: its own zones.
            ZONES.with(|z| z.borrow_mut().clear());
            // $limit_req_status, for any configuration that loads the plugin.
            let _ = cx.define_variable("limit_req_status", |req| {
                let s = req.ctx::<Ctx>().status;
                (!s.is_empty()).then(|| s.to_string())
            });
        }
        Conf::default()
    }

    fn merge(parent: &Conf, child: &mut Conf) {
        if child.limits.is_none() {
            child.limits = parent.limits.clone();
        }
        child.common.merge(&parent.common);
    }

    fn phases() -> &'static [Phase] {
        &[Phase::Preaccess]
    }

    fn handle(_phase: Phase, req: &mut Request<'_>, conf: &Conf) -> Status {
        let Some(limits) = conf.limits.as_deref().filter(|l| !l.is_empty()) else { return Status::Declined };
        if req.ctx::<Ctx>().delayed {
            // Back from the wait.
            return Status::Declined;
        }
        let dry = conf.common.dry_run();
        let level = conf.common.log_level();
        let now = now_ms();
        let (mut wait, mut why) = (0u64, (0u64, String::new()));
        for l in limits {
            let Some(zone) = ZONES.with(|z| z.borrow().get(&l.zone).cloned()) else { continue };
            let key = limit_zone::key(req, &zone.key);
            if key.is_empty() {
                continue;
            }
            let hash = limit_zone::hash(&zone.shm, &key);
            // A dry run accounts as usual (nginx): only the verdict is not
            // carried out.
            let v = zone.shm.with(|m| judge(m, hash, now, zone.rate, l.burst, l.delay, true)).unwrap_or(Verdict::Pass);
            match v {
                Verdict::Pass => {}
                Verdict::Delay(ms, excess) => {
                    if ms > wait {
                        (wait, why) = (ms, (excess, zone.name.clone()));
                    }
                }
                Verdict::Reject(excess) => {
                    log(level, &format!("limiting requests{}, excess: {}.{:03} by zone \"{}\"", if dry { ", dry run" } else { "" }, excess / 1000, excess % 1000, zone.name));
                    req.ctx::<Ctx>().status = if dry { "REJECTED_DRY_RUN" } else { "REJECTED" };
                    return if dry { Status::Declined } else { Status::Http(conf.common.status()) };
                }
            }
        }
        if wait == 0 {
            req.ctx::<Ctx>().status = "PASSED";
            return Status::Declined;
        }
        // nginx logs the delay one level below the refusal.
        let delay_level = if level == sys::LOG_INFO { sys::LOG_INFO } else { level + 1 };
        let excess = why.0;
        log(delay_level, &format!("delaying request{}, excess: {}.{:03}, by zone \"{}\"", if dry { ", dry run" } else { "" }, excess / 1000, excess % 1000, why.1));
        if dry {
            req.ctx::<Ctx>().status = "DELAYED_DRY_RUN";
            return Status::Declined;
        }
        let c = req.ctx::<Ctx>();
        c.status = "DELAYED";
        c.delayed = true;
        match req.resume_after(wait) {
            Ok(()) => Status::Again,
            Err(_) => Status::Declined,
        }
    }
}

export_plugin!(LimitReq);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10r/s"), Some(10_000));
        assert_eq!(parse_rate("30r/m"), Some(500));
        assert_eq!(parse_rate("0r/s"), None);
        assert_eq!(parse_rate("5/s"), None);
    }

    #[test]
    fn leaky_bucket_as_nginx() {
        let mut mem = vec![0u8; HEADER + SLOT * 64];
        let (rate, t) = (1000, 1_000_000); // 1 r/s
        // burst 0: the first passes, the second at once is refused.
        assert_eq!(judge(&mut mem, 7, t, rate, 0, 0, true), Verdict::Pass);
        assert_eq!(judge(&mut mem, 7, t, rate, 0, 0, true), Verdict::Reject(1000));
        // A second later the bucket has drained.
        assert_eq!(judge(&mut mem, 7, t + 1000, rate, 0, 0, true), Verdict::Pass);
        // Another key is its own bucket.
        assert_eq!(judge(&mut mem, 8, t + 1000, rate, 0, 0, true), Verdict::Pass);
        // burst 2 without nodelay: the excess waits.
        let mut mem = vec![0u8; HEADER + SLOT * 64];
        assert_eq!(judge(&mut mem, 9, t, rate, 2000, 0, true), Verdict::Pass);
        assert_eq!(judge(&mut mem, 9, t, rate, 2000, 0, true), Verdict::Delay(1000, 1000));
        assert_eq!(judge(&mut mem, 9, t, rate, 2000, 0, true), Verdict::Delay(2000, 2000));
        assert_eq!(judge(&mut mem, 9, t, rate, 2000, 0, true), Verdict::Reject(3000));
        // nodelay (delay = burst): no wait within burst.
        let mut mem = vec![0u8; HEADER + SLOT * 64];
        for _ in 0..3 {
            assert_eq!(judge(&mut mem, 9, t, rate, 2000, 2000, true), Verdict::Pass);
        }
        assert_eq!(judge(&mut mem, 9, t, rate, 2000, 2000, true), Verdict::Reject(3000));
        // A dry run records nothing.
        let mut mem = vec![0u8; HEADER + SLOT * 64];
        for _ in 0..3 {
            assert_eq!(judge(&mut mem, 9, t, rate, 0, 0, false), Verdict::Pass);
        }
    }

    #[test]
    fn a_full_neighbourhood_forgets_its_oldest_key() {
        let mut mem = vec![0u8; HEADER + SLOT * PROBES];
        for k in 1..=PROBES as u64 {
            judge(&mut mem, k * PROBES as u64, 1000 + k, 1000, 0, 0, true);
        }
        // Every slot is taken; a new key replaces the least recent (key 1),
        // whose bucket is then empty again.
        assert_eq!(judge(&mut mem, 999_999 * PROBES as u64, 2000, 1000, 0, 0, true), Verdict::Pass);
        assert_eq!(judge(&mut mem, PROBES as u64, 2000, 1000, 0, 0, true), Verdict::Pass);
    }
}
