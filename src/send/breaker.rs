//! The failure breaker: trips after `consecutive_failures` failed calls in a row, or when the
//! share of failed receivers (FailedReceiver, failed and unknown outcomes) over the last
//! `window_calls` calls passes `max_failure_ratio`. Zero disables either rule.

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

    /// Record one finished call; returns why the breaker tripped, if it did.
    pub fn record(&mut self, receivers: u64, failed: u64) -> Option<String> {
        let call_failed = receivers > 0 && failed >= receivers;
        if call_failed {
            self.consecutive += 1;
        } else {
            self.consecutive = 0;
        }
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
                "failure breaker: {} calls in a row failed; fix the cause, then run again to resume",
                self.consecutive
            ));
        }
        if self.s.window_calls > 0
            && self.window.len() >= self.s.window_calls as usize
            && self.sum_receivers > 0
        {
            let ratio = self.sum_failed as f64 / self.sum_receivers as f64;
            if ratio > self.s.max_failure_ratio {
                return Some(format!(
                    "failure breaker: {:.0}% of receivers failed over the last {} calls (limit {:.0}%); fix the cause, then run again to resume",
                    ratio * 100.0,
                    self.window.len(),
                    self.s.max_failure_ratio * 100.0
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
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
}
