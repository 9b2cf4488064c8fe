//! Timers for one worker: an ordered map keyed by deadline and a sequence
//! number, so equal deadlines stay distinct and cancellation is O(log n).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Identifies one armed timer, for cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimerKey(Instant, u64);

/// Deadlines mapped to what they fire.
pub struct Timers<T> {
    map: BTreeMap<TimerKey, T>,
    seq: u64,
}

impl TimerKey {
    /// The deadline.
    pub fn at(self) -> Instant {
        self.0
    }
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers { map: BTreeMap::new(), seq: 0 }
    }
}

impl<T> Timers<T> {
    /// Arms a timer firing `what` at `at`.
    pub fn add(&mut self, at: Instant, what: T) -> TimerKey {
        self.seq += 1;
        let k = TimerKey(at, self.seq);
        self.map.insert(k, what);
        k
    }

    /// Disarms a timer; unknown or fired keys are ignored.
    pub fn cancel(&mut self, k: TimerKey) -> Option<T> {
        self.map.remove(&k)
    }

    /// How long until the earliest deadline (zero if overdue).
    pub fn next_wait(&self, now: Instant) -> Option<Duration> {
        self.map.keys().next().map(|k| k.0.saturating_duration_since(now))
    }

    /// Removes and returns the earliest timer if it is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        let k = *self.map.keys().next()?;
        if k.0 <= now {
            self.map.remove(&k)
        } else {
            None
        }
    }

    /// Keeps only the timers for which `keep` is true (no allocation).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.map.retain(|_, v| keep(v));
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when none are armed.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_cancel_and_due() {
        let mut t = Timers::default();
        let now = Instant::now();
        let a = t.add(now + Duration::from_millis(20), "a");
        t.add(now + Duration::from_millis(10), "b");
        t.add(now + Duration::from_millis(10), "c");
        assert_eq!(t.next_wait(now), Some(Duration::from_millis(10)));
        assert_eq!(t.cancel(a), Some("a"));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(15);
        assert_eq!(t.pop_due(later), Some("b"));
        assert_eq!(t.pop_due(later), Some("c"));
        assert!(t.is_empty());
    }
}
