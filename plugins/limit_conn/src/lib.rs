//! `limit_conn`: nginx's limit on requests in progress per key, shared by
//! all workers (a shared zone, kept across reload).
//!
//! - `limit_conn_zone key zone=name:size;` (http): `key` is text with
//!   variables (`$binary_remote_addr` reads as the client address); an
//!   empty key is not limited.
//! - `limit_conn zone number;` (http, server, location; several; a block's
//!   own list replaces the inherited one).
//! - `limit_conn_status code` (503), `limit_conn_log_level`,
//!   `limit_conn_dry_run`; `$limit_conn_status`: PASSED, REJECTED,
//!   REJECTED_DRY_RUN.
//!
//! A request counts against its key from the pre-access phase until it
//! ends (its state's drop gives the count back, whatever the way the
//! request ended). A zone too full for a new key refuses the request, as
//! nginx does.

use limit_zone::{rd, wr, HEADER};
use plugin_api::{export_plugin, log, sys, template::Template, ConfCx, DirectiveSpec, Phase, Plugin, Request, Shm, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

const LAYOUT: u32 = 1;
const SLOT: usize = 16;
const PROBES: usize = 16;

/// One `limit_conn_zone`.
pub struct Zone {
    name: String,
    key: Template,
    shm: Shm,
}

#[derive(Clone)]
struct Limit {
    zone: String,
    max: u64,
}

/// Per-block configuration.
#[derive(Clone, Default)]
pub struct Conf {
    limits: Option<Rc<Vec<Limit>>>,
    common: limit_zone::Common,
}

thread_local! {
    static ZONES: RefCell<HashMap<String, Rc<Zone>>> = RefCell::new(HashMap::new());
}

impl limit_zone::HasCommon for Conf {
    const KIND: &'static str = "limit_conn";
    fn common(&mut self) -> &mut limit_zone::Common {
        &mut self.common
    }
}

/// The plugin.
pub struct LimitConn;

/// A request's counts, given back when it ends.
#[derive(Default)]
struct Ctx {
    status: &'static str,
    held: Vec<(Rc<Zone>, u64)>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        for (zone, hash) in self.held.drain(..) {
            let _ = zone.shm.with(|m| release(m, hash));
        }
    }
}

/// Where `hash` lives, or a free slot for it (None: the neighbourhood is
/// full of keys in use).
fn slot(mem: &[u8], hash: u64) -> Option<(usize, bool)> {
    let slots = mem.len().saturating_sub(HEADER) / SLOT;
    if slots == 0 {
        return None;
    }
    let start = (hash % slots as u64) as usize;
    let mut free = None;
    for i in 0..PROBES.min(slots) {
        let at = HEADER + ((start + i) % slots) * SLOT;
        let (h, n) = (rd(mem, at), rd(mem, at + 8));
        if h == hash && n > 0 {
            return Some((at, true));
        }
        if n == 0 && free.is_none() {
            free = Some(at);
        }
    }
    free.map(|at| (at, false))
}

/// Outcome of taking a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Counted (give it back with `release`).
    Taken,
    /// `max` requests of this key are in progress.
    Busy,
    /// No room in the zone for a new key.
    Full,
}

/// Counts one more request for `hash` if fewer than `max` are in progress.
pub fn take(mem: &mut [u8], hash: u64, max: u64) -> Take {
    let hash = hash.max(1);
    match slot(mem, hash) {
        None => Take::Full,
        Some((at, true)) => {
            let n = rd(mem, at + 8);
            if n >= max {
                return Take::Busy;
            }
            wr(mem, at + 8, n + 1);
            Take::Taken
        }
        Some((at, false)) => {
            if max == 0 {
                return Take::Busy;
            }
            wr(mem, at, hash);
            wr(mem, at + 8, 1);
            Take::Taken
        }
    }
}

/// Gives back one count of `hash`.
pub fn release(mem: &mut [u8], hash: u64) {
    if let Some((at, true)) = slot(mem, hash.max(1)) {
        let n = rd(mem, at + 8);
        wr(mem, at + 8, n.saturating_sub(1));
    }
}

fn zone_directive(_c: &mut Conf, a: &[&str], cx: &ConfCx<'_>) -> Result<(), String> {
    let (name, shm) = limit_zone::declare(cx, "limit_conn", a[1], LAYOUT)?;
    let zone = Zone { name: name.clone(), key: Template::parse(a[0]), shm };
    if ZONES.with(|zs| zs.borrow_mut().insert(name.clone(), Rc::new(zone)).is_some()) {
        return Err(format!("duplicate zone \"{name}\""));
    }
    Ok(())
}

impl Plugin for LimitConn {
    const NAME: &'static str = "limit_conn";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Conf = Conf;

    fn directives() -> Vec<DirectiveSpec<Conf>> {
        const H: u32 = sys::CTX_HTTP | sys::CTX_SERVER | sys::CTX_LOCATION;
        let mut d = vec![
            DirectiveSpec::<Conf>::new("limit_conn_zone", sys::CTX_HTTP, 2, 2, zone_directive),
            DirectiveSpec::<Conf>::new("limit_conn", H, 2, 2, |c, a, _| {
                if !ZONES.with(|z| z.borrow().contains_key(a[0])) {
                    return Err(format!("unknown limit_conn_zone \"{}\"", a[0]));
                }
                let max: u64 = a[1].parse().ok().filter(|&n| n > 0).ok_or_else(|| format!("invalid number of connections \"{}\"", a[1]))?;
                let mut list = c.limits.as_deref().cloned().unwrap_or_default();
                if list.iter().any(|l| l.zone == a[0]) {
                    return Err("is duplicate".into());
                }
                list.push(Limit { zone: a[0].to_string(), max });
                c.limits = Some(Rc::new(list));
                Ok(())
            }),
        ];
        d.extend(limit_zone::directives::<Conf>(["limit_conn_status", "limit_conn_log_level", "limit_conn_dry_run"], H));
        d
    }

    fn create(cx: &ConfCx<'_>, level: u32) -> Conf {
        if level == sys::CTX_MAIN {
            ZONES.with(|z| z.borrow_mut().clear());
            let _ = cx.define_variable("limit_conn_status", |req| {
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
        if !req.ctx::<Ctx>().status.is_empty() {
            return Status::Declined;
        }
        let dry = conf.common.dry_run();
        for l in limits {
            let Some(zone) = ZONES.with(|z| z.borrow().get(&l.zone).cloned()) else { continue };
            let key = limit_zone::key(req, &zone.key);
            if key.is_empty() {
                continue;
            }
            let hash = limit_zone::hash(&zone.shm, &key);
            if dry {
                // Counted as nginx does in a dry run: not at all; only
                // whether it would be refused.
                let busy = zone.shm.with(|m| match slot(m, hash.max(1)) {
                    Some((at, true)) => rd(m, at + 8) >= l.max,
                    Some((_, false)) => false,
                    None => true,
                });
                if busy.unwrap_or(false) {
                    log(conf.common.log_level(), &format!("limiting connections, dry run, by zone \"{}\"", zone.name));
                    req.ctx::<Ctx>().status = "REJECTED_DRY_RUN";
                    return Status::Declined;
                }
                continue;
            }
            match zone.shm.with(|m| take(m, hash, l.max)).unwrap_or(Take::Full) {
                Take::Taken => req.ctx::<Ctx>().held.push((zone.clone(), hash)),
                Take::Busy | Take::Full => {
                    log(conf.common.log_level(), &format!("limiting connections by zone \"{}\"", zone.name));
                    // Counts taken for the other zones go back with the
                    // request's state.
                    req.ctx::<Ctx>().status = "REJECTED";
                    return Status::Http(conf.common.status());
                }
            }
        }
        req.ctx::<Ctx>().status = "PASSED";
        Status::Declined
    }
}

export_plugin!(LimitConn);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_progress() {
        let mut m = vec![0u8; HEADER + SLOT * 64];
        assert_eq!(take(&mut m, 5, 2), Take::Taken);
        assert_eq!(take(&mut m, 5, 2), Take::Taken);
        assert_eq!(take(&mut m, 5, 2), Take::Busy);
        assert_eq!(take(&mut m, 6, 2), Take::Taken, "another key");
        release(&mut m, 5);
        assert_eq!(take(&mut m, 5, 2), Take::Taken);
        release(&mut m, 5);
        release(&mut m, 5);
        release(&mut m, 5); // one too many: stays at zero
        assert_eq!(take(&mut m, 5, 1), Take::Taken);
    }

    #[test]
    fn a_full_zone_refuses_new_keys() {
        let mut m = vec![0u8; HEADER + SLOT * PROBES];
        for k in 0..PROBES as u64 {
            assert_eq!(take(&mut m, (k + 1) * PROBES as u64, 1), Take::Taken);
        }
        assert_eq!(take(&mut m, 1000 * PROBES as u64, 1), Take::Full);
        release(&mut m, PROBES as u64);
        assert_eq!(take(&mut m, 1000 * PROBES as u64, 1), Take::Taken, "a slot with no requests is reused");
    }
}
