//! The rate figures of `summary.json`: the busiest window the run really used and its average
//! rate, from the journal's attempts log (every admitted attempt's admission instant; retries
//! count, they took quota too).
//!
//! The busiest window is exact: the most units admitted in any window `(t - W, t]` of the
//! limit's length, found with one pass over the admissions in order and a queue of those still
//! in the window (memory: the admissions of one window, never the run's). It is a measurement of
//! what happened, never an extrapolation: a run shorter than the window reports what it used,
//! not what it would have used over a whole window.
//!
//! Must not: write anything (it only reads the journal).

use std::collections::VecDeque;

use jiff::Timestamp;

use crate::action::Action;
use crate::journal::{Admission, Journal, JournalError};

/// The busiest window of a run's admissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Busiest {
    /// Units admitted in that window.
    pub units: u64,
    /// The instant the window ends (its last admission); None when nothing was admitted.
    pub end: Option<Timestamp>,
    /// Units admitted over the run (retries included).
    pub admitted: u64,
    /// Attempts admitted.
    pub attempts: u64,
}

/// Track the busiest window of length `window` over admissions fed in time order.
#[derive(Debug)]
pub struct BusiestWindow {
    window_ns: i128,
    action: Action,
    open: VecDeque<(i128, u64)>,
    sum: u64,
    best: Busiest,
}

impl BusiestWindow {
    pub fn new(action: Action, window: std::time::Duration) -> Self {
        BusiestWindow {
            window_ns: window.as_nanos().max(1) as i128,
            action,
            open: VecDeque::new(),
            sum: 0,
            best: Busiest::default(),
        }
    }

    /// One admission (in time order).
    pub fn add(&mut self, a: Admission) {
        let t = a.at.as_nanosecond();
        let units = self.action.units(a.receivers);
        // The window (t - W, t]: admissions at or before t - W have left it.
        while let Some(&(at, u)) = self.open.front() {
            if at > t - self.window_ns {
                break;
            }
            self.sum -= u;
            self.open.pop_front();
        }
        self.open.push_back((t, units));
        self.sum += units;
        self.best.admitted += units;
        self.best.attempts += 1;
        if self.sum > self.best.units || self.best.end.is_none() {
            self.best.units = self.sum;
            self.best.end = Some(a.at);
        }
    }

    pub fn finish(self) -> Busiest {
        self.best
    }
}

/// The busiest window of run `run_id`'s admissions, `window` long.
pub fn busiest(
    journal: &Journal,
    run_id: &str,
    action: Action,
    window: std::time::Duration,
) -> Result<Busiest, JournalError> {
    let mut b = BusiestWindow::new(action, window);
    journal.for_each_admission::<JournalError>(run_id, |a| {
        b.add(a);
        Ok(())
    })?;
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_800_000_000_000 + ms).expect("time")
    }

    fn run(action: Action, window_ms: u64, xs: &[(i64, u64)]) -> Busiest {
        let mut b = BusiestWindow::new(action, Duration::from_millis(window_ms));
        for &(ms, receivers) in xs {
            b.add(Admission {
                at: at(ms),
                receivers,
            });
        }
        b.finish()
    }

    /// The reference: for every admission instant t, the units in (t - W, t].
    fn brute(action: Action, window_ms: i64, xs: &[(i64, u64)]) -> u64 {
        xs.iter()
            .map(|&(t, _)| {
                xs.iter()
                    .filter(|&&(u, _)| u > t - window_ms && u <= t)
                    .map(|&(_, r)| action.units(r))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn the_window_is_exact_at_its_edges() {
        // 1 s window: admissions exactly one window apart never share it.
        let b = run(Action::Batch, 1000, &[(0, 500), (1000, 500), (2000, 500)]);
        assert_eq!(b.units, 500);
        assert_eq!(b.admitted, 1500);
        assert_eq!(b.attempts, 3);
        assert_eq!(b.end, Some(at(0)));
        // One nanosecond less apart: they do.
        let b = run(Action::Batch, 1000, &[(0, 500), (999, 300), (1998, 100)]);
        assert_eq!(b.units, 800);
        assert_eq!(b.end, Some(at(999)));
        // Requests count 1 a call whatever their receivers.
        let b = run(Action::Conversation, 1000, &[(0, 1), (10, 1), (20, 1)]);
        assert_eq!(b.units, 3);
        assert_eq!(run(Action::Batch, 1000, &[]), Busiest::default());
    }

    #[test]
    fn agrees_with_the_brute_force_reference() {
        // A deterministic pseudo-random series of admissions, bursts and gaps.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = 0i64;
        let mut xs = Vec::new();
        for _ in 0..400 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 700) as i64;
            xs.push((t, 1 + x % 500));
        }
        for w in [1, 250, 1000, 5000, 60_000] {
            for action in [Action::Batch, Action::P2p] {
                assert_eq!(
                    run(action, w as u64, &xs).units,
                    brute(action, w, &xs),
                    "window {w} ms"
                );
            }
        }
    }
}
