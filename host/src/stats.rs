//! Connection and request counters for every process of the server
//! (nginx's stub_status numbers): accepted and handled connections,
//! requests, and the connections now active, reading a request head,
//! writing a response, or waiting.
//!
//! One anonymous `MAP_SHARED` mapping is made by the master before it
//! forks, so every worker of every generation shares it, and the numbers
//! carry over reloads. Each worker writes only its own 64-byte slot (no
//! atomic read-modify-write, no cache line shared with another writer on
//! the request path); a reader adds the slots up. When a worker exits the
//! master clears its slot's gauges, so a crashed worker's connections do
//! not stay counted as active forever (nginx's do).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// How many processes can count at once (workers of all live generations).
pub const SLOTS: usize = 256;

/// One process's numbers. Counters only grow; gauges go up and down.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Slot {
    accepts: AtomicU64,
    handled: AtomicU64,
    requests: AtomicU64,
    active: AtomicU64,
    reading: AtomicU64,
    writing: AtomicU64,
}

static BASE: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// This process's slot (None in the master, helpers, or when the
    /// slots ran out: it then does not count).
    static MINE: Cell<Option<&'static Slot>> = const { Cell::new(None) };
}

/// Maps the slots (the master, before its first fork; idempotent).
pub fn init() -> Result<(), String> {
    if !BASE.load(Ordering::Relaxed).is_null() {
        return Ok(());
    }
    let len = SLOTS * size_of::<Slot>();
    // SAFETY: an anonymous shared mapping with no address hint; checked
    // below. Zeroed memory is a valid array of Slots (atomics of 0).
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap(MAP_ANON|MAP_SHARED, {len}) failed ({})", std::io::Error::last_os_error()));
    }
    BASE.store(p.cast(), Ordering::Relaxed);
    Ok(())
}

fn slots() -> &'static [Slot] {
    let p = BASE.load(Ordering::Relaxed);
    if p.is_null() {
        return &[];
    }
    // SAFETY: init() mapped SLOTS slots at p, never unmapped.
    unsafe { std::slice::from_raw_parts(p, SLOTS) }
}

/// Makes this process count into slot `i` (a worker, after fork).
pub fn claim(i: usize) {
    MINE.with(|m| m.set(slots().get(i)));
}

/// The master: clears the gauges of an exited process's slot (its
/// connections are gone whatever it had counted).
pub fn release(i: usize) {
    if let Some(s) = slots().get(i) {
        for g in [&s.active, &s.reading, &s.writing] {
            g.store(0, Ordering::Relaxed);
        }
    }
}

/// Which counter moves.
#[derive(Clone, Copy)]
pub enum Stat {
    /// Connections accepted.
    Accepts,
    /// Connections taken on.
    Handled,
    /// Requests begun.
    Requests,
    /// Open connections (gauge).
    Active,
    /// Connections reading a head (gauge).
    Reading,
    /// Connections serving a request (gauge).
    Writing,
}

#[inline]
fn add(stat: Stat, delta: u64) {
    MINE.with(|m| {
        if let Some(s) = m.get() {
            let c = match stat {
                Stat::Accepts => &s.accepts,
                Stat::Handled => &s.handled,
                Stat::Requests => &s.requests,
                Stat::Active => &s.active,
                Stat::Reading => &s.reading,
                Stat::Writing => &s.writing,
            };
            // Only this process writes its slot: a load and a store.
            c.store(c.load(Ordering::Relaxed).wrapping_add(delta), Ordering::Relaxed);
        }
    });
}

/// One more.
#[inline]
pub fn inc(stat: Stat) {
    add(stat, 1);
}

/// One less (gauges only).
#[inline]
pub fn dec(stat: Stat) {
    add(stat, u64::MAX);
}

/// What a connection is doing, for the reading/writing gauges.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub enum ConnStat {
    /// Idle: a new connection before its first byte, a keepalive one
    /// between requests (stub_status's "waiting").
    #[default]
    Waiting,
    /// Part of a request head has arrived.
    Reading,
    /// A request is being served.
    Writing,
}

impl ConnStat {
    /// Moves a connection from `self` to `to`; a request starts when a
    /// connection leaves Waiting (as nginx counts a request when it
    /// allocates one for the first bytes).
    #[inline]
    pub fn set(&mut self, to: ConnStat) {
        if *self == to {
            return;
        }
        match *self {
            ConnStat::Waiting => inc(Stat::Requests),
            ConnStat::Reading => dec(Stat::Reading),
            ConnStat::Writing => dec(Stat::Writing),
        }
        match to {
            ConnStat::Waiting => {}
            ConnStat::Reading => inc(Stat::Reading),
            ConnStat::Writing => inc(Stat::Writing),
        }
        *self = to;
    }
}

/// The totals over every slot, in the ABI's order: active, accepts,
/// handled, requests, reading, writing, waiting.
pub fn totals() -> [u64; 7] {
    let mut t = [0u64; 7];
    for s in slots() {
        let v = [&s.active, &s.accepts, &s.handled, &s.requests, &s.reading, &s.writing].map(|c| c.load(Ordering::Relaxed));
        for (a, b) in t.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    // Gauges are sums of per-process values that each stay >= 0; a read
    // racing a worker's update may see one side moved before the other.
    let as_gauge = |v: u64| if (v as i64) < 0 { 0 } else { v };
    let (active, reading, writing) = (as_gauge(t[0]), as_gauge(t[4]), as_gauge(t[5]));
    [active, t[1], t[2], t[3], reading, writing, active.saturating_sub(reading + writing)]
}
