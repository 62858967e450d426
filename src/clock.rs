//! Injected time. Logic never reads the system clock directly: it asks a [`Clock`], so throttle,
//! deadline and schedule tests run on a [`SimClock`] instead of sleeping.
//!
//! Invariants: `now()` never goes backwards for a given clock; `sleep(d)` returns no earlier than
//! `now() + d` as that clock sees it. A `SimClock` never sleeps for real: `sleep` advances its own
//! time (auto-advance), so a simulated hour of throttled sending takes milliseconds.
//!
//! This is the one module that reads the system clock: clippy's `disallowed-methods`
//! (`clippy.toml`) refuses `Instant::now`, `SystemTime::now`, `jiff::Timestamp::now` and
//! `jiff::Zoned::now` everywhere else. [`SystemClock`] is wall time for logic; [`Stopwatch`] is
//! monotonic time for durations only people see (a log field, how often progress is logged),
//! never for a decision a test must control.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

pub type SleepFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of wall-clock time and a way to wait on it.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
    /// Wait for `d` as this clock measures it.
    fn sleep(&self, d: Duration) -> SleepFuture<'_>;
    /// Wait for `d` as this clock measures it, without moving time: for a background timer (the
    /// run lease's heartbeat) that must not drive a simulated clock by itself. The real clock
    /// just sleeps; a [`SimClock`] returns once someone else moved it `d` on.
    fn idle(&self, d: Duration) -> SleepFuture<'_> {
        self.sleep(d)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock: `jiff::Timestamp::now()` and `tokio::time::sleep`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(
        clippy::disallowed_methods,
        reason = "the real clock: the one place logic's wall time comes from"
    )]
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
    fn sleep(&self, d: Duration) -> SleepFuture<'_> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// Monotonic elapsed time for what people see (a request's latency in a log line, the pacing of
/// progress log lines); never for a decision (those ask a [`Clock`]).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Start measuring now.
    #[allow(
        clippy::disallowed_methods,
        reason = "monotonic time for durations people see, never for decisions"
    )]
    pub fn start() -> Self {
        Stopwatch(std::time::Instant::now())
    }

    /// Time since [`Stopwatch::start`].
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A simulated clock for tests and simulations. Time moves only when someone sleeps on it or
/// calls [`SimClock::advance`]; sleeping moves it forward by the requested duration at once and
/// yields to the runtime so other tasks can observe the new time.
#[derive(Debug, Clone)]
pub struct SimClock {
    nanos: Arc<AtomicI64>,
    /// Tells [`Clock::idle`] waiters that time moved.
    moved: Arc<tokio::sync::watch::Sender<()>>,
}

impl SimClock {
    /// A clock that starts at `start`.
    pub fn new(start: Timestamp) -> Self {
        SimClock {
            nanos: Arc::new(AtomicI64::new(start.as_nanosecond() as i64)),
            moved: Arc::new(tokio::sync::watch::channel(()).0),
        }
    }

    /// Move the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as i64, Ordering::SeqCst);
        self.moved.send_replace(());
    }

    /// How many [`Clock::idle`] waits are pending (a test moves the clock once a background
    /// timer is parked on it).
    pub fn idlers(&self) -> usize {
        self.moved.receiver_count()
    }

    /// Set the clock to `t` if `t` is later than now (it never goes backwards).
    pub fn advance_to(&self, t: Timestamp) {
        self.nanos
            .fetch_max(t.as_nanosecond() as i64, Ordering::SeqCst);
        self.moved.send_replace(());
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanosecond(self.nanos.load(Ordering::SeqCst) as i128)
            .unwrap_or(Timestamp::MAX)
    }
    fn sleep(&self, d: Duration) -> SleepFuture<'_> {
        self.advance(d);
        Box::pin(tokio::task::yield_now())
    }
    fn idle(&self, d: Duration) -> SleepFuture<'_> {
        let until = self.now().as_nanosecond() + d.as_nanos() as i128;
        let mut rx = self.moved.subscribe();
        Box::pin(async move {
            while self.now().as_nanosecond() < until {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idling_on_a_sim_clock_waits_for_others_to_move_it() {
        let c = SimClock::new("2026-01-01T00:00:00Z".parse().expect("valid"));
        let start = c.now();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.idle(Duration::from_secs(10)).await })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(c.now(), start, "idling never moves the clock");
        assert!(!waiter.is_finished(), "nothing moved it yet");
        c.advance(Duration::from_secs(4));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "4 s of 10");
        c.advance(Duration::from_secs(6));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once the clock moved 10 s on")
            .expect("task");
    }

    #[tokio::test]
    async fn sim_clock_advances_on_sleep() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().expect("valid");
        let c = SimClock::new(start);
        c.sleep(Duration::from_secs(90)).await;
        assert_eq!(
            c.now(),
            "2026-01-01T00:01:30Z".parse::<Timestamp>().expect("valid")
        );
        c.advance_to(start);
        assert_eq!(
            c.now(),
            "2026-01-01T00:01:30Z".parse::<Timestamp>().expect("valid")
        );
    }
}
