//! The worker's cached time, as nginx's `ngx_time_update`: the event loop
//! reads the clocks once after each wait for events, and everything that
//! runs for those events (request start times, the Date header, deadlines
//! of timers) uses that reading. A clock read costs about as much as
//! parsing a short header line; a keepalive request used to make five.

use std::cell::Cell;
use std::time::{Instant, SystemTime};

thread_local! {
    static NOW: Cell<(Instant, SystemTime)> = Cell::new((Instant::now(), SystemTime::now()));
}

/// Reads the clocks and caches them; returns the monotonic reading.
pub fn update() -> Instant {
    let t = (Instant::now(), SystemTime::now());
    NOW.with(|n| n.set(t));
    t.0
}

/// The monotonic time of the last `update` (on this thread).
pub fn now() -> Instant {
    NOW.with(|n| n.get().0)
}

/// The wall-clock time of the last `update`.
pub fn wall() -> SystemTime {
    NOW.with(|n| n.get().1)
}
