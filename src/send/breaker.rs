//! The failure breaker: trips after `consecutive_failures` failed calls in a row, or when the
//! share of failed receivers (failed and unknown outcomes) over the last `window_calls` calls
//! passes `max_failure_ratio`. Zero disables either rule.
//!
//! A receiver refused with FailedReceiver and re-queued (sent again in a later call) is judged by
//! its final outcome, not by the refusal: it counts in neither the failed share nor the receivers
//! until its last attempt (so a few percent of refusals that retries fix never trip it), and one
//! refused on every attempt counts as failed then. For the consecutive rule a plan call in which
//! nothing was delivered (every receiver failed, unknown or refused) is a failed call, so a
//! provider refusing everyone trips it quickly; calls that only resend re-queued receivers
//! neither count nor reset it (a repeated refusal of the same ids, such as a handful of ids the
//! provider never accepts, says nothing new about the provider).

use std::collections::VecDeque;

use crate::config::BreakerSettings;

#[derive(Debug, Clone)]
pub struct Breaker {
    s: BreakerSettings,
    consecutive: u32,
    window: VecDeque<(u64, u64)>,
    sum_receivers: u64,
    sum_failed: u64,
}

impl Breaker {
    pub fn new(s: BreakerSettings) -> Self {
        Breaker {
            s,
            consecutive: 0,
            window: VecDeque::new(),
            sum_receivers: 0,
            sum_failed: 0,
        }
    }

    /// Record one finished plan call whose receivers all got a final outcome; returns why the
    /// breaker tripped, if it did.
    pub fn record(&mut self, receivers: u64, failed: u64) -> Option<String> {
        self.record_call(receivers, failed, 0, false)
    }

    /// Record one finished call: `settled` receivers got a final outcome in it, `failed` of them
    /// failed or unknown; `requeued` more were refused and re-queued. `resend` marks a call that
    /// only carried re-queued receivers. Returns why the breaker tripped, if it did.
    pub fn record_call(
        &mut self,
        settled: u64,
        failed: u64,
        requeued: u64,
        resend: bool,
    ) -> Option<String> {
        let total = settled + requeued;
        if !resend {
            if total > 0 && failed + requeued >= total {
                self.consecutive += 1;
            } else {
                self.consecutive = 0;
            }
        }
        let receivers = settled;
        if self.s.window_calls > 0 {
            self.window.push_back((receivers, failed));
            self.sum_receivers += receivers;
            self.sum_failed += failed;
            while self.window.len() > self.s.window_calls as usize {
                if let Some((r, f)) = self.window.pop_front() {
                    self.sum_receivers -= r;
                    self.sum_failed -= f;
                }
            }
        }
        if self.s.consecutive_failures > 0 && self.consecutive >= self.s.consecutive_failures {
            return Some(format!(
                "failure breaker: {} in a row failed; fix the cause, then run again to resume",
                crate::output::count(u64::from(self.consecutive), "call", "calls")
            ));
        }
        if self.s.window_calls > 0
            && self.window.len() >= self.s.window_calls as usize
            && self.sum_receivers > 0
        {
            let ratio = self.sum_failed as f64 / self.sum_receivers as f64;
            if ratio > self.s.max_failure_ratio {
                return Some(format!(
                    "failure breaker: {:.0}% of receivers failed over the last {} (limit {:.0}%); fix the cause, then run again to resume",
                    ratio * 100.0,
                    crate::output::count(self.window.len() as u64, "call", "calls"),
                    self.s.max_failure_ratio * 100.0
                ));
            }
        }
        None
    }
}

impl Breaker {
    /// Why the breaker is close to tripping, if it is: a rule half way or more to its threshold
    /// but not past it (consecutive failed calls, or the failed share over a window at least
    /// half full).
    pub fn approaching(&self) -> Option<String> {
        let limit = self.s.consecutive_failures;
        if limit >= 2 && self.consecutive * 2 >= limit && self.consecutive < limit {
            return Some(format!(
                "{} in a row failed; the breaker pauses the run at {limit}",
                crate::output::count(u64::from(self.consecutive), "call", "calls")
            ));
        }
        let max = self.s.max_failure_ratio;
        let calls = self.s.window_calls as usize;
        // A share of 1.0 or more never trips (no share is above it): nothing to approach.
        if calls > 0
            && self.window.len() * 2 >= calls
            && self.sum_receivers > 0
            && max > 0.0
            && max < 1.0
        {
            let ratio = self.sum_failed as f64 / self.sum_receivers as f64;
            if ratio * 2.0 >= max && ratio <= max {
                return Some(format!(
                    "{:.0}% of receivers failed over the last {}; the breaker pauses the run above {:.0}%",
                    ratio * 100.0,
                    crate::output::count(self.window.len() as u64, "call", "calls"),
                    max * 100.0
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn approaching_is_half_way_to_a_threshold() {
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 4,
            window_calls: 0,
            max_failure_ratio: 1.0,
        });
        assert!(b.record(1, 1).is_none());
        assert_eq!(b.approaching(), None, "1 of 4");
        assert!(b.record(1, 1).is_none());
        assert_eq!(
            b.approaching().as_deref(),
            Some("2 calls in a row failed; the breaker pauses the run at 4")
        );
        assert!(b.record(1, 0).is_none());
        assert_eq!(b.approaching(), None, "reset by a good call");
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 0,
            window_calls: 4,
            max_failure_ratio: 0.5,
        });
        assert!(b.record(10, 2).is_none());
        assert_eq!(b.approaching(), None, "window not half full");
        assert!(b.record(10, 4).is_none());
        assert_eq!(
            b.approaching().as_deref(),
            Some("30% of receivers failed over the last 2 calls; the breaker pauses the run above 50%")
        );
        // A share of 100% can never be passed: never "near".
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 0,
            window_calls: 1,
            max_failure_ratio: 1.0,
        });
        assert!(b.record(10, 10).is_none());
        assert_eq!(b.approaching(), None);
    }

    use super::*;

    #[test]
    fn consecutive_and_ratio_rules() {
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 3,
            window_calls: 0,
            max_failure_ratio: 1.0,
        });
        assert!(b.record(1, 1).is_none());
        assert!(b.record(1, 1).is_none());
        assert!(b.record(1, 0).is_none());
        assert!(b.record(1, 1).is_none());
        assert!(b.record(1, 1).is_none());
        assert!(b.record(1, 1).expect("trips").contains("3 calls in a row"));
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 0,
            window_calls: 4,
            max_failure_ratio: 0.25,
        });
        for _ in 0..3 {
            assert!(b.record(500, 200).is_none(), "window not full yet");
        }
        assert!(b.record(500, 0).expect("trips").contains("30%"));
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 0,
            window_calls: 2,
            max_failure_ratio: 0.5,
        });
        assert!(b.record(10, 5).is_none());
        assert!(
            b.record(10, 5).is_none(),
            "exactly at the threshold does not trip"
        );
    }

    #[test]
    fn re_queued_receivers_are_judged_by_their_final_outcome() {
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 3,
            window_calls: 4,
            max_failure_ratio: 0.02,
        });
        // 3% refused and re-queued in every plan call: neither rule moves.
        for _ in 0..20 {
            assert!(b.record_call(485, 0, 15, false).is_none());
        }
        // The re-sends: refused again, then delivered.
        for _ in 0..5 {
            assert!(b.record_call(0, 0, 15, true).is_none());
            assert!(b.record_call(15, 0, 0, true).is_none());
        }
        // Calls of re-queued ids only never make a run of failed calls.
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 3,
            window_calls: 0,
            max_failure_ratio: 1.0,
        });
        for _ in 0..10 {
            assert!(b.record_call(0, 0, 1, true).is_none());
            assert!(b.record_call(1, 1, 0, true).is_none());
        }
        // A provider refusing every receiver of plan calls trips the consecutive rule.
        assert!(b.record_call(0, 0, 500, false).is_none());
        assert!(b.record_call(0, 0, 500, false).is_none());
        assert!(b
            .record_call(0, 0, 500, false)
            .expect("trips")
            .contains("3 calls in a row"));
        // And final failures count in the ratio.
        let mut b = Breaker::new(BreakerSettings {
            consecutive_failures: 0,
            window_calls: 2,
            max_failure_ratio: 0.1,
        });
        assert!(b.record_call(100, 0, 5, false).is_none());
        assert!(b.record_call(5, 5, 0, true).is_none(), "5 of 105");
        assert!(b.record_call(10, 10, 0, true).expect("trips").contains("%"));
    }
}
