//! An exact rolling-window counter: admits `n` units at time `t` only if the units admitted in
//! `(t - window, t]` plus `n` stay within the limit. Holds one entry per admission (a log, not
//! buckets), so it is exact at any instant; the mock uses it for the provider's limits.
//!
//! Invariant: at every admission the in-window sum never exceeds `limit`; `max_seen` is the most
//! units ever in one window, observed at admission instants (where the maximum is reached).

use std::collections::VecDeque;
use std::time::Duration;

/// One rolling window.
#[derive(Debug, Clone)]
pub struct Window {
    limit: u64,
    window_ns: i128,
    log: VecDeque<(i128, u64)>,
    sum: u64,
    max_seen: u64,
}

impl Window {
    pub fn new(limit: u64, window: Duration) -> Self {
        Window {
            limit,
            window_ns: window.as_nanos() as i128,
            log: VecDeque::new(),
            sum: 0,
            max_seen: 0,
        }
    }

    fn evict(&mut self, now_ns: i128) {
        while let Some(&(t, n)) = self.log.front() {
            if t <= now_ns - self.window_ns {
                self.sum -= n;
                self.log.pop_front();
            } else {
                break;
            }
        }
    }

    /// Admit `n` units at `now` if they fit; returns whether they were admitted.
    pub fn try_admit(&mut self, now: jiff::Timestamp, n: u64) -> bool {
        let now_ns = now.as_nanosecond();
        self.evict(now_ns);
        if self.sum.saturating_add(n) > self.limit {
            return false;
        }
        self.log.push_back((now_ns, n));
        self.sum += n;
        self.max_seen = self.max_seen.max(self.sum);
        true
    }

    /// Units in the window ending at `now`.
    pub fn current(&mut self, now: jiff::Timestamp) -> u64 {
        self.evict(now.as_nanosecond());
        self.sum
    }

    /// The most units seen in any one window so far.
    pub fn max_seen(&self) -> u64 {
        self.max_seen
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SimClock};

    #[test]
    fn exact_at_the_window_edge() {
        let c = SimClock::new("2026-01-01T00:00:00Z".parse().expect("valid"));
        let mut w = Window::new(10, Duration::from_secs(5));
        assert!(w.try_admit(c.now(), 6));
        c.advance(Duration::from_secs(2));
        assert!(w.try_admit(c.now(), 4));
        assert!(!w.try_admit(c.now(), 1), "full");
        // Just before the first admission leaves the window: still full.
        c.advance(Duration::from_secs(3) - Duration::from_nanos(1));
        assert!(!w.try_admit(c.now(), 1));
        // Exactly `window` after it: the 6 units are out.
        c.advance(Duration::from_nanos(1));
        assert!(w.try_admit(c.now(), 6));
        assert!(!w.try_admit(c.now(), 1));
        assert_eq!(w.current(c.now()), 10);
        assert_eq!(w.max_seen(), 10);
        c.advance(Duration::from_secs(10));
        assert_eq!(w.current(c.now()), 0);
    }

    #[test]
    fn a_request_larger_than_the_limit_never_fits() {
        let c = SimClock::new("2026-01-01T00:00:00Z".parse().expect("valid"));
        let mut w = Window::new(3, Duration::from_secs(1));
        assert!(!w.try_admit(c.now(), 4));
        assert_eq!(w.max_seen(), 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the arrival pattern, no window of the admitted log exceeds the limit, and
        /// `max_seen` is exactly the largest window sum.
        #[test]
        fn never_over_the_limit(steps in proptest::collection::vec((0u64..1500, 1u64..8), 1..120)) {
            let c = SimClock::new("2026-01-01T00:00:00Z".parse().expect("valid"));
            let window = Duration::from_secs(1);
            let mut w = Window::new(10, window);
            let mut admitted: Vec<(i128, u64)> = Vec::new();
            for (advance_ms, n) in steps {
                c.advance(Duration::from_millis(advance_ms));
                if w.try_admit(c.now(), n) {
                    admitted.push((c.now().as_nanosecond(), n));
                }
            }
            let wn = window.as_nanos() as i128;
            let mut max = 0;
            for &(t, _) in &admitted {
                let sum: u64 = admitted.iter().filter(|(u, _)| *u > t - wn && *u <= t).map(|(_, n)| n).sum();
                proptest::prop_assert!(sum <= 10);
                max = max.max(sum);
            }
            proptest::prop_assert_eq!(max, w.max_seen());
        }
    }
}
