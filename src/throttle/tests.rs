//! The limiter's tests, all on a simulated clock. [`simulate`] is a discrete-event simulation of
//! several processes (limiters on one log), each with callers queueing for admission as the
//! engine's tasks do, against a simulated provider that stamps each call at a random instant
//! between its send and its reply; the windows are then checked from the stamps alone.
//!
//! The tests of the rule run on both backends ([`both!`]: `…::sqlite` and `…::postgres`, the
//! latter on the test PostgreSQL server, `crate::testing::pg`, each test or proptest case on keys
//! of its own in one database); tests of the SQLite file itself run on SQLite only.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::sync::OnceLock;

use rusqlite::Connection;

use super::*;
use crate::clock::{Clock, SimClock};
use crate::testing::pg::TestDb;

fn start() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().expect("valid")
}

fn ns(d: Duration) -> i128 {
    d.as_nanos() as i128
}

/// Largest sum in any closed window `[t - w, t]` (stricter than the provider's `(t - w, t]`).
fn max_in_window(events: &[(i128, u64)], w: Duration) -> u64 {
    let w = ns(w);
    let mut sorted = events.to_vec();
    sorted.sort();
    let (mut best, mut lo, mut sum) = (0, 0, 0u64);
    for hi in 0..sorted.len() {
        sum += sorted[hi].1;
        while sorted[lo].0 < sorted[hi].0 - w {
            sum -= sorted[lo].1;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

fn open(db: &Path, key: &str, limit: Limit, opts: LimiterOptions, clock: &SimClock) -> Limiter {
    Limiter::open(db, key, limit, opts, Arc::new(clock.clone())).expect("open")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One test's (or proptest case's) log: a fresh SQLite file, or keys of its own (a unique
/// prefix) in this test process's PostgreSQL database.
struct Place {
    store: StateStore,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Place {
    /// None: PostgreSQL is not installed here (said loudly; a failure under CI).
    fn new(backend: Backend) -> Option<Place> {
        let dir = tempfile::tempdir().expect("tempdir");
        match backend {
            Backend::Sqlite => Some(Place {
                store: StateStore::Sqlite(dir.path().to_path_buf()),
                prefix: String::new(),
                _dir: dir,
            }),
            Backend::Postgres => {
                static DB: OnceLock<Option<TestDb>> = OnceLock::new();
                static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let db = DB
                    .get_or_init(|| crate::testing::pg::test_db("throttle"))
                    .as_ref()?;
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(Place {
                    store: db.store(),
                    prefix: format!("t{n}:"),
                    _dir: dir,
                })
            }
        }
    }

    /// `windows` simulated windows on SQLite, a fifth of them (at least 30) on PostgreSQL, where
    /// each decision is a few round trips to a server: the long simulations stay on SQLite, the
    /// PostgreSQL runs check the same rule on enough windows to hold the same assertions.
    fn windows(&self, windows: u32) -> u32 {
        match self.store {
            StateStore::Sqlite(_) => windows,
            StateStore::Postgres(_) => (windows / 5).max(30).min(windows),
        }
    }

    /// Another place on the same backend, sharing nothing with this one.
    fn fresh(&self) -> Place {
        let backend = match self.store {
            StateStore::Sqlite(_) => Backend::Sqlite,
            StateStore::Postgres(_) => Backend::Postgres,
        };
        Place::new(backend).expect("the backend was there a moment ago")
    }

    /// A limiter on `key` here (opened off any async runtime).
    fn open(&self, key: &str, limit: Limit, opts: LimiterOptions, clock: &SimClock) -> Limiter {
        let key = format!("{}{key}", self.prefix);
        let clock: SharedClock = Arc::new(clock.clone());
        off(|| Limiter::open_store(&self.store, &key, limit, opts, clock)).expect("open")
    }
}

/// Run blocking limiter work on a plain thread: the PostgreSQL client must not run on an async
/// runtime's thread (the limiter itself does its store work on the blocking pool).
fn off<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("no panic"))
}

/// A test of the rule, once per backend: `name::sqlite` and `name::postgres`.
macro_rules! both {
    ($(#[$m:meta])* fn $name:ident($place:ident: Place) $body:block) => {
        $(#[$m])*
        mod $name {
            use super::*;
            fn check($place: Place) $body
            #[test]
            fn sqlite() {
                check(Place::new(Backend::Sqlite).expect("sqlite"));
            }
            #[test]
            fn postgres() {
                if let Some(p) = Place::new(Backend::Postgres) {
                    check(p);
                }
            }
        }
    };
    ($(#[$m:meta])* async fn $name:ident($place:ident: Place) $body:block) => {
        $(#[$m])*
        mod $name {
            use super::*;
            async fn check($place: Place) $body
            #[tokio::test]
            async fn sqlite() {
                check(Place::new(Backend::Sqlite).expect("sqlite")).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(p) = Place::new(Backend::Postgres) {
                    check(p).await;
                }
            }
        }
    };
}

/// One simulated setup.
#[derive(Debug, Clone)]
struct Sim {
    limit: Limit,
    rps: Option<u32>,
    processes: usize,
    callers: usize,
    /// Units per call: fixed, or random in `1..=max` when `random_sizes`.
    size: u64,
    random_sizes: bool,
    /// Latency of each call, uniform in this range (ms).
    latency_ms: (u64, u64),
    run: Duration,
    seed: u64,
    /// A 429 arrives at this offset from the start (process 0's limiter).
    rate_limited_at: Option<Duration>,
}

#[derive(Debug, Default)]
struct SimResult {
    /// (provider stamp, units) of every call.
    stamps: Vec<(i128, u64)>,
    /// (admission, units).
    admissions: Vec<(i128, u64)>,
    /// (admission, latency ns) of every call.
    latencies: Vec<(i128, i128)>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Process `p`'s first queued caller asks for admission.
    Try(usize),
    /// The reply to caller `c`'s call arrives.
    Reply(usize),
}

fn simulate(sim: &Sim, place: &Place) -> SimResult {
    let clock = SimClock::new(start());
    let t0 = start().as_nanosecond();
    let end = t0 + ns(sim.run);
    let opts = LimiterOptions {
        max_requests_per_second: sim.rps,
        call_timeout: Duration::from_secs(10),
    };
    let limiters: Vec<Limiter> = (0..sim.processes)
        .map(|_| place.open("batch", sim.limit, opts, &clock))
        .collect();
    let mut rng = StdRng::seed_from_u64(sim.seed);
    let ncallers = sim.processes * sim.callers;
    let owner = |c: usize| c % sim.processes;
    let mut queues: Vec<VecDeque<usize>> = vec![VecDeque::new(); sim.processes];
    let mut trying = vec![false; sim.processes];
    let mut in_flight: Vec<Option<Permit>> = (0..ncallers).map(|_| None).collect();
    let mut next_size: Vec<u64> = vec![0; ncallers];
    let mut events: BinaryHeap<Reverse<(i128, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: i128, e: Event| {
        seq += 1;
        events.push(Reverse((t, seq, e)));
    };
    let size = |rng: &mut StdRng| {
        if sim.random_sizes {
            rng.random_range(1..=sim.size)
        } else {
            sim.size
        }
    };
    for (c, s) in next_size.iter_mut().enumerate() {
        *s = size(&mut rng);
        queues[owner(c)].push_back(c);
    }
    for (p, t) in trying.iter_mut().enumerate() {
        *t = true;
        push(&mut events, t0, Event::Try(p));
    }
    let mut rate_limited = sim.rate_limited_at.map(|d| t0 + ns(d));
    let mut out = SimResult::default();
    while let Some(Reverse((t, _, ev))) = events.pop() {
        if t >= end {
            break;
        }
        if let Some(r) = rate_limited.filter(|r| *r <= t) {
            clock.advance_to(Timestamp::from_nanosecond(r).expect("ts"));
            limiters[0].on_rate_limited();
            rate_limited = None;
        }
        clock.advance_to(Timestamp::from_nanosecond(t).expect("ts"));
        match ev {
            Event::Reply(c) => {
                let permit = in_flight[c].take().expect("in flight");
                permit.complete_blocking(clock.now()).expect("complete");
                next_size[c] = size(&mut rng);
                let p = owner(c);
                queues[p].push_back(c);
                if !trying[p] {
                    trying[p] = true;
                    push(&mut events, t, Event::Try(p));
                }
            }
            Event::Try(p) => loop {
                let Some(&c) = queues[p].front() else {
                    trying[p] = false;
                    break;
                };
                match limiters[p].try_acquire(next_size[c]).expect("decide") {
                    Ok(permit) => {
                        queues[p].pop_front();
                        let a = permit.at().as_nanosecond();
                        assert_eq!(a, t, "admitted at the decision's instant");
                        let (lo, hi) = sim.latency_ms;
                        let lat = ns(Duration::from_millis(lo))
                            + (rng.random::<f64>() * ns(Duration::from_millis(hi - lo)) as f64)
                                as i128;
                        let stamp = a + (rng.random::<f64>() * lat as f64) as i128;
                        out.stamps.push((stamp, next_size[c]));
                        out.admissions.push((a, next_size[c]));
                        out.latencies.push((a, lat));
                        in_flight[c] = Some(permit);
                        push(&mut events, a + lat, Event::Reply(c));
                    }
                    Err(wait) => {
                        push(&mut events, t + ns(wait), Event::Try(p));
                        break;
                    }
                }
            },
        }
    }
    out
}

/// Units stamped in `[from, to)` per second, as a share of the limit's rate.
fn share(res: &SimResult, limit: Limit, from: i128, to: i128) -> f64 {
    let units: u64 = res
        .stamps
        .iter()
        .filter(|(s, _)| *s >= from && *s < to)
        .map(|(_, n)| n)
        .sum();
    units as f64 / ((to - from) as f64 / 1e9) / limit.per_second()
}

fn mean_latency_s(res: &SimResult, from: i128, to: i128) -> f64 {
    let v: Vec<i128> = res
        .latencies
        .iter()
        .filter(|(a, _)| *a >= from && *a < to)
        .map(|(_, l)| *l)
        .collect();
    v.iter().sum::<i128>() as f64 / v.len().max(1) as f64 / 1e9
}

/// Random latencies (0–2 s, per call), random call sizes (batch up to 500 units, or count-1
/// calls), several processes and callers, windows of 1 s, 5 s and 60 s: no window of the
/// provider's stamps ever holds more than the limit, nor any window of admissions, nor any
/// second more requests than the request cap.
#[allow(clippy::too_many_arguments)]
fn no_window_over(
    backend: Backend,
    window_s: u64,
    limit: u64,
    batch: bool,
    max_size: u64,
    processes: usize,
    callers: usize,
    max_latency_ms: u64,
    rps: Option<u32>,
    seed: u64,
) -> Result<(), TestCaseError> {
    let Some(place) = Place::new(backend) else {
        return Ok(());
    };
    // One-request calls: a lower limit keeps the number of simulated calls moderate.
    let (limit, size) = if batch {
        (limit, max_size.min(limit))
    } else {
        (limit.min(300), 1)
    };
    let sim = Sim {
        limit: Limit::new(limit, Duration::from_secs(window_s)),
        rps,
        processes,
        callers,
        size,
        random_sizes: true,
        latency_ms: (0, max_latency_ms),
        run: Duration::from_secs(window_s * 6),
        seed,
        rate_limited_at: None,
    };
    let res = simulate(&sim, &place);
    prop_assert!(!res.stamps.is_empty());
    let w = sim.limit.window;
    prop_assert!(
        max_in_window(&res.stamps, w) <= limit,
        "stamps: {}",
        max_in_window(&res.stamps, w)
    );
    prop_assert!(max_in_window(&res.admissions, w) <= limit);
    if let Some(rps) = rps {
        let requests: Vec<(i128, u64)> = res.stamps.iter().map(|(s, _)| (*s, 1)).collect();
        prop_assert!(max_in_window(&requests, Duration::from_secs(1)) <= u64::from(rps));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn no_provider_window_over_the_limit_sqlite(
        window_s in prop::sample::select(vec![1u64, 5, 60]),
        limit in 1u64..1500,
        batch in any::<bool>(),
        max_size in 1u64..=500,
        processes in 1usize..=3,
        callers in 1usize..=12,
        max_latency_ms in 0u64..=2000,
        rps in prop::option::of(1u32..30),
        seed in any::<u64>(),
    ) {
        no_window_over(Backend::Sqlite, window_s, limit, batch, max_size, processes, callers, max_latency_ms, rps, seed)?;
    }
}

proptest! {
    // Fewer cases on PostgreSQL: each decision is a few round trips to a server.
    #![proptest_config(ProptestConfig { cases: PG_CASES, ..ProptestConfig::default() })]
    #[test]
    fn no_provider_window_over_the_limit_postgres(
        window_s in prop::sample::select(vec![1u64, 5, 60]),
        limit in 1u64..1500,
        batch in any::<bool>(),
        max_size in 1u64..=500,
        processes in 1usize..=3,
        callers in 1usize..=12,
        max_latency_ms in 0u64..=2000,
        rps in prop::option::of(1u32..30),
        seed in any::<u64>(),
    ) {
        no_window_over(Backend::Postgres, window_s, limit, batch, max_size, processes, callers, max_latency_ms, rps, seed)?;
    }
}

/// Proptest cases on PostgreSQL.
const PG_CASES: u32 = 8;

both! {
    fn full_limit_when_latency_is_small_against_the_window(place: Place) {
        // 12,000 / 60 s in 500-receiver calls, latency 0–0.5 s: W / (W + L) ≈ 99.6%.
        let sim = Sim {
            limit: Limit::new(12_000, Duration::from_secs(60)),
            rps: Some(200),
            processes: 2,
            callers: 4,
            size: 500,
            random_sizes: false,
            latency_ms: (0, 500),
            run: Duration::from_secs(60) * place.windows(60),
            seed: 7,
            rate_limited_at: None,
        };
        let res = simulate(&sim, &place);
        let t0 = start().as_nanosecond();
        let (from, to) = (t0 + ns(Duration::from_secs(120)), t0 + ns(sim.run));
        let got = share(&res, sim.limit, from, to);
        assert!(got >= 0.99, "{:.4} of the limit", got);
        assert!(max_in_window(&res.stamps, sim.limit.window) <= 12_000);
        // Smooth: the first 10 seconds hold far less than the whole quota.
        let first: u64 = res
            .admissions
            .iter()
            .filter(|a| a.0 < t0 + 10 * NS_PER_SEC)
            .map(|a| a.1)
            .sum();
        assert!(first <= 12_000 / 3, "burst of {first} at start");
    }
}

both! {
    fn best_exact_share_when_latency_is_large_against_the_window(place: Place) {
        for (limit, size, latency_ms, callers) in [
            // p2p-like: 100 / 1 s, one request a call, latency 0–2 s (mean 1 s): about 50%.
            (Limit::new(100, Duration::from_secs(1)), 1, (0, 2000), 120),
            // conversation-like: 50 / 1 s, latency 0–0.4 s.
            (Limit::new(50, Duration::from_secs(1)), 1, (0, 400), 40),
            // batch 1000 / 5 s in 500-receiver calls, latency 0–2 s.
            (Limit::new(1000, Duration::from_secs(5)), 500, (0, 2000), 4),
        ] {
            let sim = Sim {
                limit,
                rps: None,
                processes: 1,
                callers,
                size,
                random_sizes: false,
                latency_ms,
                run: limit.window * place.windows(200),
                seed: 11,
                rate_limited_at: None,
            };
            let res = simulate(&sim, &place.fresh());
            let t0 = start().as_nanosecond();
            let (from, to) = (t0 + 2 * ns(limit.window), t0 + ns(sim.run));
            let got = share(&res, limit, from, to);
            let w = limit.window.as_secs_f64();
            let best = w / (w + mean_latency_s(&res, from, to));
            assert!(
                got >= 0.99 * best,
                "{limit:?} latency {latency_ms:?}: {got:.4} of the limit, best exact {best:.4}"
            );
            assert!(max_in_window(&res.stamps, limit.window) <= limit.limit);
        }
    }
}

both! {
    fn full_rate_again_within_one_window_after_a_429(place: Place) {
        let limit = Limit::new(100, Duration::from_secs(1));
        let at = Duration::from_secs(10);
        let sim = Sim {
            limit,
            rps: None,
            processes: 1,
            callers: 4,
            size: 1,
            random_sizes: false,
            latency_ms: (0, 0),
            run: Duration::from_secs(20),
            seed: 3,
            rate_limited_at: Some(at),
        };
        let res = simulate(&sim, &place);
        let t0 = start().as_nanosecond();
        let t429 = t0 + ns(at);
        let w = ns(limit.window);
        // Held back and slowed in the window after the 429 …
        let held = share(&res, limit, t429, t429 + ns(Duration::from_millis(250)));
        assert_eq!(held, 0.0, "nothing admitted during the hold");
        let slowed = share(&res, limit, t429, t429 + w);
        assert!(slowed < 0.9, "slowed after the 429: {slowed:.3}");
        // … and at the full rate in the window after that, and from then on.
        for k in 1..5 {
            let got = share(&res, limit, t429 + k * w, t429 + (k + 1) * w);
            assert!(
                got >= 0.99,
                "window {k} after the 429: {got:.3} of the limit"
            );
        }
        assert!(max_in_window(&res.stamps, limit.window) <= limit.limit);
    }
}

both! {
    async fn consecutive_429s_hold_longer_but_at_most_a_quarter_window(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(100, Duration::from_secs(4));
        let l = place.open("batch",
            limit,
            LimiterOptions::default(),
            &clock,
        );
        let mut holds = Vec::new();
        for _ in 0..4 {
            let before = clock.now().as_nanosecond();
            l.on_rate_limited();
            assert!(l.slowdown() > 1.5);
            let Acquired::At(p) = l.acquire(1, None).await.expect("acquire") else {
                panic!("no deadline given")
            };
            holds.push(p.at().as_nanosecond() - before);
            p.complete(clock.now()).await;
        }
        assert_eq!(holds[0], ns(Duration::from_millis(250)));
        assert_eq!(holds[1], ns(Duration::from_millis(500)));
        assert_eq!(holds[3], ns(Duration::from_secs(1)), "capped at W/4");
        l.on_success();
        clock.advance(limit.window);
        assert_eq!(l.slowdown(), 1.0);
        let before = clock.now().as_nanosecond();
        l.on_rate_limited();
        let Acquired::At(p) = l.acquire(1, None).await.expect("acquire") else {
            panic!("no deadline given")
        };
        assert_eq!(
            p.at().as_nanosecond() - before,
            ns(Duration::from_millis(250)),
            "strikes reset"
        );
    }
}

both! {
    fn an_in_flight_call_counts_until_its_answer_plus_one_window(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(10, Duration::from_secs(1));
        let l = place.open("p2p",
            limit,
            LimiterOptions::default(),
            &clock,
        );
        let p = l.try_acquire(10).expect("decide").expect("admitted");
        // Long after one window, the call is still in flight: it still counts.
        clock.advance(Duration::from_secs(5));
        let wait = l
            .try_acquire(1)
            .expect("decide")
            .expect_err("in flight counts");
        assert_eq!(
            wait,
            limit.window + Duration::from_nanos(1),
            "ask again after one window at most"
        );
        // The answer arrives now: free exactly one window later (its end included).
        p.complete_blocking(clock.now()).expect("complete");
        let wait = l.try_acquire(1).expect("decide").expect_err("answer + W");
        assert_eq!(wait, limit.window + Duration::from_nanos(1));
        clock.advance(limit.window);
        assert!(
            l.try_acquire(1).expect("decide").is_err(),
            "its end is included"
        );
        clock.advance(Duration::from_nanos(1));
        assert!(l.try_acquire(1).expect("decide").is_ok());
    }
}

both! {
    fn a_dropped_permit_closes_at_drop_time_plus_one_window(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(1, Duration::from_secs(2));
        let l = place.open("p2p",
            limit,
            LimiterOptions::default(),
            &clock,
        );
        let p = l.try_acquire(1).expect("decide").expect("admitted");
        clock.advance(Duration::from_secs(3));
        drop(p); // a cancelled future or a panic: no answer instant known
        let dropped = clock.now();
        clock.advance(limit.window);
        assert!(
            l.try_acquire(1).expect("decide").is_err(),
            "counts to drop + W"
        );
        clock.advance(Duration::from_nanos(1));
        let p = l
            .try_acquire(1)
            .expect("decide")
            .expect("free after drop + W");
        assert_eq!(
            p.at().as_nanosecond(),
            dropped.as_nanosecond() + ns(limit.window) + 1
        );
    }
}

both! {
    fn a_killed_process_entries_stop_counting_after_the_call_timeout(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(5, Duration::from_secs(1));
        let opts = LimiterOptions {
            call_timeout: Duration::from_secs(30),
            ..LimiterOptions::default()
        };
        {
            let dead = place.open("p2p", limit, opts, &clock);
            let p = dead.try_acquire(5).expect("decide").expect("admitted");
            std::mem::forget(p); // kill -9: nothing closes the entry
        }
        let l = place.open("p2p", limit, opts, &clock);
        let fallback = ns(SEND_SLACK) + ns(opts.call_timeout) + ns(limit.window);
        clock.advance(Duration::from_nanos(fallback as u64));
        assert!(
            l.try_acquire(1).expect("decide").is_err(),
            "still counts at its end"
        );
        clock.advance(Duration::from_nanos(1));
        assert!(l.try_acquire(5).expect("decide").is_ok(), "not forever");
    }
}

both! {
    async fn a_late_start_extends_the_fallback(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(1, Duration::from_secs(1));
        let opts = LimiterOptions {
            call_timeout: Duration::from_secs(10),
            ..LimiterOptions::default()
        };
        let l = place.open("p2p", limit, opts, &clock);
        let Acquired::At(mut p) = l.acquire(1, None).await.expect("acquire") else {
            panic!("no deadline")
        };
        // The journal's mark took 8 s: the request leaves late.
        clock.advance(Duration::from_secs(8));
        p.sending().await;
        let other = place.open("p2p", limit, opts, &clock);
        // Past the original fallback (5 + 10 + 1 s after admission) it still counts for others.
        clock.advance(Duration::from_secs(9));
        assert!(off(|| other.try_acquire(1)).expect("decide").is_err());
        std::mem::forget(p);
        clock.advance(Duration::from_secs(8));
        assert!(
            off(|| other.try_acquire(1)).expect("decide").is_ok(),
            "extended fallback ends too"
        );
    }
}

#[test]
fn old_format_logs_are_replaced() {
    for old in [
        // The first format: no running totals.
        "CREATE TABLE throttle_log(key TEXT NOT NULL, at_ns INTEGER NOT NULL, count INTEGER NOT NULL);
         INSERT INTO throttle_log VALUES ('batch', 1, 500);",
        // The padded window with running totals (`seq`, `cum`).
        "CREATE TABLE throttle_log(key TEXT NOT NULL, at_ns INTEGER NOT NULL, count INTEGER NOT NULL,
             seq INTEGER NOT NULL, cum INTEGER NOT NULL);
         CREATE INDEX throttle_log_key_cum ON throttle_log(key, cum);
         CREATE TABLE throttle_pace(key TEXT PRIMARY KEY, tat_ns INTEGER NOT NULL);
         INSERT INTO throttle_log VALUES ('batch', 1, 500, 1, 500);",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(old).expect("old schema");
        create_tables(&conn).expect("upgrade");
        create_tables(&conn).expect("idempotent");
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('throttle_log')")
            .expect("q")
            .query_map([], |r| r.get(0))
            .expect("q")
            .collect::<Result<_, _>>()
            .expect("cols");
        assert_eq!(cols, ["id", "key", "at_ns", "count", "until_ns", "done"]);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM throttle_log", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 0, "old entries dropped");
        drop(conn);
        // And the limiter works on it.
        let clock = SimClock::new(start());
        let l = open(&path, "batch", Limit::new(500, Duration::from_secs(60)), LimiterOptions::default(), &clock);
        assert!(l.try_acquire(500).expect("decide").is_ok());
    }
}

#[test]
fn decisions_use_the_index_not_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DB_FILE);
    let clock = SimClock::new(start());
    let limit = Limit::new(12_000, Duration::from_secs(60));
    let l = open(&path, "batch", limit, LimiterOptions::default(), &clock);
    // A personalized campaign: 12,000 one-receiver calls in the window (still in flight).
    let mut permits = Vec::new();
    while permits.len() < 12_000 {
        match l.try_acquire(1).expect("decide") {
            Ok(p) => permits.push(p),
            Err(w) => clock.advance(w),
        }
    }
    let conn = Connection::open(&path).expect("open");
    let total: i64 = conn
        .query_row(
            "SELECT units FROM throttle_total WHERE key = 'batch'",
            [],
            |r| r.get(0),
        )
        .expect("total");
    let sum: i64 = conn
        .query_row(
            "SELECT SUM(count) FROM throttle_log WHERE key = 'batch'",
            [],
            |r| r.get(0),
        )
        .expect("sum");
    assert_eq!(total, sum, "the running total is the sum of the entries");
    assert_eq!(total, 12_000, "entries in the window");
    for q in [
        "SELECT COALESCE(SUM(count), 0), COUNT(*) FROM throttle_log WHERE key = 'batch' AND until_ns < 0",
        "SELECT until_ns, count FROM throttle_log WHERE key = 'batch' ORDER BY until_ns",
    ] {
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
            .expect("plan")
            .query_map([], |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan");
        let plan = plan.join("; ");
        assert!(
            plan.contains("COVERING INDEX throttle_log_key_until") && !plan.contains("TEMP B-TREE"),
            "{q}: {plan}"
        );
    }
    // At the limit: the wait is at most one window (only calls in flight block).
    let wait = l.try_acquire(1).expect("decide").expect_err("full");
    assert!(wait <= limit.window + Duration::from_nanos(1));
    std::mem::forget(permits);
}

both! {
    async fn restarted_limiter_remembers_spent_quota(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(10, Duration::from_secs(10));
        let mut adm = Vec::new();
        for _ in 0..2 {
            let l = place.open("p2p", limit, LimiterOptions::default(), &clock);
            for _ in 0..15 {
                if let Acquired::At(p) = l.acquire(1, None).await.expect("acquire") {
                    adm.push((p.at().as_nanosecond(), 1));
                    p.complete(clock.now()).await;
                }
            }
        }
        assert_eq!(adm.len(), 30);
        assert!(max_in_window(&adm, limit.window) <= limit.limit);
    }
}

both! {
    async fn requests_per_second_cap_and_deadline(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(1_000_000, Duration::from_secs(60));
        let opts = LimiterOptions {
            max_requests_per_second: Some(5),
            ..LimiterOptions::default()
        };
        let l = place.open("batch", limit, opts, &clock);
        let mut adm = Vec::new();
        for _ in 0..40 {
            if let Acquired::At(p) = l.acquire(1, None).await.expect("acquire") {
                adm.push((p.at().as_nanosecond(), 1));
                p.complete(clock.now()).await;
            }
        }
        assert!(max_in_window(&adm, Duration::from_secs(1)) <= 5);
        // A deadline that cannot be met takes nothing.
        let tight = Limit::new(1, Duration::from_secs(60));
        let l2 = place.open("conv",
            tight,
            LimiterOptions::default(),
            &clock,
        );
        let Ok(Acquired::At(p)) = l2.acquire(1, None).await else {
            panic!("admitted")
        };
        p.complete(clock.now()).await;
        let d = clock.now() + jiff::SignedDuration::from_secs(5);
        assert!(matches!(
            l2.acquire(1, Some(d)).await,
            Ok(Acquired::Deadline)
        ));
        assert!(matches!(
            l2.acquire(2, None).await,
            Err(ThrottleError::TooLarge { .. })
        ));
    }
}

both! {
    async fn campaign_cap_lowers_one_campaign_not_the_account(place: Place) {
        let clock = SimClock::new(start());
        let acct = Limit::new(100, Duration::from_secs(1));
        let o = |key: &str, l: Limit| place.open(key, l, LimiterOptions::default(), &clock);
        let a = o("batch", acct).capped_by(o(
            "campaign:a:batch",
            Limit::new(20, Duration::from_secs(1)),
        ));
        let b = o("batch", acct);
        let (mut adm_a, mut adm_all) = (Vec::new(), Vec::new());
        for i in 0..400 {
            let l = if i % 2 == 0 { &a } else { &b };
            if let Acquired::At(p) = l.acquire(1, None).await.expect("acquire") {
                if i % 2 == 0 {
                    adm_a.push((p.at().as_nanosecond(), 1));
                }
                adm_all.push((p.at().as_nanosecond(), 1));
                p.complete(clock.now()).await;
            }
        }
        assert!(max_in_window(&adm_a, Duration::from_secs(1)) <= 20);
        assert!(max_in_window(&adm_all, Duration::from_secs(1)) <= 100);
        assert_eq!(a.limit(), acct, "the account's limit");
        assert_eq!(
            a.effective_limit(),
            Limit::new(20, Duration::from_secs(1)),
            "the campaign's cap is what holds this run"
        );
        assert_eq!(b.effective_limit(), acct);
        // A cap above the account's rate does not hold anything: the account's limit does.
        let high = o("batch", acct).capped_by(o(
            "campaign:h:batch",
            Limit::new(60_000, Duration::from_secs(60)),
        ));
        assert_eq!(high.effective_limit(), acct);
    }
}

#[test]
fn used_in_window_counts_what_the_rule_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(DB_FILE);
    let clock = SimClock::new(start());
    let limit = Limit::new(1000, Duration::from_secs(5));
    let l = open(&path, "batch", limit, LimiterOptions::default(), &clock);
    let a = l.try_acquire(300).expect("decide").expect("admitted");
    let b = l.try_acquire(200).expect("decide").expect("admitted");
    let conn = Connection::open(&path).expect("open");
    assert_eq!(
        used_in_window(&conn, "batch", clock.now()).expect("used"),
        500
    );
    a.complete_blocking(clock.now()).expect("complete");
    clock.advance(Duration::from_secs(6));
    // `a` answered 6 s ago: out; `b` still in flight: in.
    assert_eq!(
        used_in_window(&conn, "batch", clock.now()).expect("used"),
        200
    );
    drop(b);
    let empty = tempfile::tempdir().expect("tempdir");
    let old = Connection::open(empty.path().join("old.db")).expect("open");
    old.execute_batch("CREATE TABLE throttle_log(key TEXT, at_ns INTEGER, count INTEGER)")
        .expect("old");
    assert_eq!(
        used_in_window(&old, "batch", clock.now()).expect("old format"),
        0
    );
}

#[test]
fn default_call_timeout_covers_the_client() {
    let c = crate::provider::ClientConfig::new(
        "http://127.0.0.1:1".parse().expect("url"),
        "cn-north-1",
        crate::provider::Credentials::new("AK", "SK", None),
    );
    // The client re-signs once after InvalidTimestamp: two requests, each within its timeout.
    assert!(DEFAULT_CALL_TIMEOUT >= 2 * c.request_timeout);
}

/// Two limiter instances on one log (= two processes), random sizes, pauses and answer delays,
/// calls completed in any order: no window of admissions ever holds more than the limit.
fn two_limiters(
    backend: Backend,
    limit: u64,
    window_ms: u64,
    ops: Vec<(bool, u64, u64, usize)>,
) -> Result<(), TestCaseError> {
    let Some(place) = Place::new(backend) else {
        return Ok(());
    };
    let clock = SimClock::new(start());
    let lim = Limit::new(limit, Duration::from_millis(window_ms));
    let a = place.open("batch", lim, LimiterOptions::default(), &clock);
    let b = place.open("batch", lim, LimiterOptions::default(), &clock);
    let mut adm = Vec::new();
    let mut open_permits: VecDeque<Permit> = VecDeque::new();
    for (which, n, pause, finish) in ops {
        let n = n.min(limit);
        clock.advance(Duration::from_millis(pause));
        for _ in 0..finish {
            if let Some(p) = open_permits.pop_front() {
                p.complete_blocking(clock.now()).expect("complete");
            }
        }
        let l = if which { &a } else { &b };
        loop {
            match l.try_acquire(n).expect("decide") {
                Ok(p) => {
                    adm.push((p.at().as_nanosecond(), n));
                    open_permits.push_back(p);
                    break;
                }
                Err(w) => {
                    clock.advance(w);
                    // Waiting on in-flight calls: some answers arrive meanwhile.
                    if let Some(p) = open_permits.pop_front() {
                        p.complete_blocking(clock.now()).expect("complete");
                    }
                }
            }
        }
    }
    prop_assert!(max_in_window(&adm, lim.window) <= limit);
    let (total, sum) = totals(&place, "batch");
    prop_assert_eq!(total, sum, "the running total is the sum of the entries");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn two_limiters_never_exceed_the_limit_sqlite(
        limit in 5u64..60,
        window_ms in 200u64..5000,
        ops in proptest::collection::vec((any::<bool>(), 1u64..5, 0u64..400, 0usize..4), 10..80),
    ) {
        two_limiters(Backend::Sqlite, limit, window_ms, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: PG_CASES, ..ProptestConfig::default() })]
    #[test]
    fn two_limiters_never_exceed_the_limit_postgres(
        limit in 5u64..60,
        window_ms in 200u64..5000,
        ops in proptest::collection::vec((any::<bool>(), 1u64..5, 0u64..400, 0usize..4), 10..80),
    ) {
        two_limiters(Backend::Postgres, limit, window_ms, ops)?;
    }
}

/// `key`'s running total and the sum of its entries, read from the store directly.
fn totals(place: &Place, key: &str) -> (i64, i64) {
    let key = format!("{}{key}", place.prefix);
    match &place.store {
        StateStore::Sqlite(dir) => {
            let conn = Connection::open(dir.join(DB_FILE)).expect("open");
            let total: i64 = conn
                .query_row(
                    "SELECT COALESCE((SELECT units FROM throttle_total WHERE key = ?1), 0)",
                    [&key],
                    |r| r.get(0),
                )
                .expect("total");
            let sum: i64 = conn
                .query_row(
                    "SELECT COALESCE(SUM(count), 0) FROM throttle_log WHERE key = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .expect("sum");
            (total, sum)
        }
        StateStore::Postgres(url) => off(|| {
            let mut c = crate::pg::connect(url).expect("connect");
            let total: i64 = c
                .query_one(
                    "SELECT COALESCE((SELECT units FROM imcast_throttle_key WHERE key = $1), 0)",
                    &[&key],
                )
                .expect("total")
                .get(0);
            let sum: i64 = c
                .query_one(
                    "SELECT COALESCE(SUM(count), 0)::bigint FROM imcast_throttle_log WHERE key = $1",
                    &[&key],
                )
                .expect("sum")
                .get(0);
            (total, sum)
        }),
    }
}

both! {
    /// Four processes deciding at once (threads, each with its own connection) at one frozen
    /// instant admit exactly what one process deciding alone does: the decision and its record
    /// are atomic against each other (limit, running total and pacing time alike).
    fn concurrent_decisions_admit_what_sequential_ones_do(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(400, Duration::from_secs(1));
        let admitted = |key: &str, threads: usize| -> u64 {
            let limiters: Vec<Limiter> = (0..threads)
                .map(|_| place.open(key, limit, LimiterOptions::default(), &clock))
                .collect();
            let got: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = limiters
                    .iter()
                    .map(|l| {
                        s.spawn(move || {
                            let mut n = 0;
                            for _ in 0..40 {
                                if let Ok(p) = l.try_acquire(1).expect("decide") {
                                    std::mem::forget(p);
                                    n += 1;
                                }
                            }
                            n
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("thread")).sum()
            });
            let (total, sum) = totals(&place, key);
            assert_eq!((total, sum), (got as i64, got as i64), "{key}: totals");
            got
        };
        let alone = admitted("alone", 1);
        let together = admitted("together", 4);
        assert!(alone > 1 && alone < 40, "pacing bounds one instant: {alone}");
        assert_eq!(together, alone);
    }
}

both! {
    /// A completed call's end is written by the next decision of its process, or by
    /// `Limiter::flush` (the end of a run), not by a transaction of its own: another process
    /// (here a second limiter on the same store) then sees the call stop counting one window
    /// after its answer, not at its fallback end (admission + slack + call timeout + window).
    async fn a_completed_end_is_written_by_the_next_decision_or_the_flush(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(2, Duration::from_secs(10));
        let a = place.open("batch", limit, LimiterOptions::default(), &clock);
        let b = place.open("batch", limit, LimiterOptions::default(), &clock);
        let at = |acq: Acquired| match acq {
            Acquired::At(p) => p,
            Acquired::Deadline => panic!("no deadline given"),
        };
        // One window after `earlier` was answered, B asks for `n`: admitted at once (well before
        // the fallback end, 55 s on) only if that answer's end was written.
        let after_a_window = |n: u64, earlier: &'static str| {
            let (b, clock) = (&b, &clock);
            async move {
                clock.advance(limit.window + Duration::from_millis(1));
                let before = clock.now().as_nanosecond();
                let p = at(b.acquire(n, None).await.expect("acquire"));
                let waited = p.at().as_nanosecond() - before;
                assert!(
                    waited < ns(Duration::from_secs(30)),
                    "{earlier} still counted until its fallback end: B waited {waited} ns"
                );
                p
            }
        };
        let a1 = at(a.acquire(1, None).await.expect("acquire"));
        a1.complete(clock.now()).await;
        // A's next decision carries a1's end.
        let a2 = at(a.acquire(1, None).await.expect("acquire"));
        let b1 = after_a_window(1, "a1").await;
        // No decision of A follows: its flush writes a2's end.
        let now = clock.now();
        a2.complete(now).await;
        b1.complete(now).await;
        a.flush().await.expect("flush");
        let b2 = after_a_window(2, "a2").await;
        b2.complete(clock.now()).await;
    }
}

both! {
    /// Ended entries stop counting at once, whenever the store deletes them. PostgreSQL deletes
    /// a key's ended entries once a window, or first when its total (ended entries included)
    /// would refuse the call (store migration 9); SQLite at every decision. Here, at 1.95 s, the
    /// last sweep was at 1.2 s, and the total, three with two ended entries, would refuse: the
    /// decision must sweep first and admit, then refuse what really is over the limit.
    fn ended_entries_free_room_between_sweeps(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(3, Duration::from_secs(1));
        let l = place.open("batch", limit, LimiterOptions::default(), &clock);
        let admit = |what: &str| match l.try_acquire(1).expect("decide") {
            Ok(p) => p,
            Err(w) => panic!("{what}: told to wait {w:?}"),
        };
        let answered = |p: Permit| p.complete_blocking(clock.now()).expect("complete");
        let later = |ms| clock.advance(Duration::from_millis(ms));
        // 0 s (a sweep: the key's first): a1, answered at once, counts until 1 s.
        answered(admit("a1"));
        later(900);
        // 0.9 s: a2 and a3 count until 1.9 s.
        let (a2, a3) = (admit("a2"), admit("a3"));
        answered(a2);
        answered(a3);
        later(300);
        // 1.2 s (a sweep: one window since the last; a1 is deleted): a4 counts until 2.2 s.
        answered(admit("a4"));
        later(750);
        // 1.95 s: a2 and a3 have ended; only a4 counts.
        let _a5 = admit("a5");
        let _a6 = admit("a6");
        assert!(
            l.try_acquire(1).expect("decide").is_err(),
            "a7 would be the fourth unit counting"
        );
        let (total, sum) = totals(&place, "batch");
        assert_eq!((total, sum), (3, 3), "a4, a5 and a6 count; a1, a2, a3 deleted");
    }
}

both! {
    /// Several admissions in one store call (`Store::decide_batch`, on PostgreSQL
    /// `imcast_throttle_decide_batch`) decide exactly as the same admissions one by one at the
    /// same instant, stop at the first that must wait (a smaller one behind it, which would fit,
    /// is not decided: nobody jumps ahead), and write the pending ends with the first.
    fn a_batch_decides_as_one_by_one_and_stops_at_the_first_wait(place: Place) {
        let clock = SimClock::new(start());
        let limit = Limit::new(8, Duration::from_secs(60));
        let verdicts = |got: Vec<Result<Permit, Duration>>| {
            got.into_iter()
                .map(|v| v.map(|p| p.entries.len()).map_err(|w| w.as_nanos()))
                .collect::<Vec<_>>()
        };
        // One by one, on a place of its own.
        let alone = place.fresh();
        let a = alone.open("batch", limit, LimiterOptions::default(), &clock);
        let mut one_by_one = Vec::new();
        let mut kept = Vec::new();
        for n in [3, 3, 3] {
            match off(|| a.try_acquire(n)).expect("decide") {
                Ok(p) => {
                    one_by_one.push(Ok(p.entries.len()));
                    kept.push(p);
                }
                Err(w) => one_by_one.push(Err(w.as_nanos())),
            }
        }
        // The same in one call, with a call of 1 unit behind the one that waits; and an earlier
        // admission's end pending, carried by the batch.
        let l = place.open("batch", limit, LimiterOptions::default(), &clock);
        let first = off(|| l.try_acquire(1)).expect("decide").expect("room");
        clock.advance(Duration::from_millis(1));
        let reply = clock.now();
        // Completed without a write of its own: queued for the next decision.
        let mut first = first;
        first.close_at(reply);
        drop(first);
        let before = l.core.decisions.load(std::sync::atomic::Ordering::Relaxed);
        clock.advance(limit.window + Duration::from_millis(1));
        let got = off(|| l.decide(&[3, 3, 3, 1])).expect("decide");
        let after = l.core.decisions.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(after - before, 1, "one store call");
        let got = verdicts(got);
        assert_eq!(got.len(), 3, "the fourth (1 unit) is behind a wait: not decided: {got:?}");
        assert!(matches!(got[..2], [Ok(1), Ok(1)]), "{got:?}");
        assert!(got[2].is_err(), "3 + 3 + 3 > 8: {got:?}");
        assert_eq!(got, one_by_one, "decided as one by one");
        // The pending end was written: the first call (1 unit) stopped counting a window after
        // its answer, so the total is what the batch admitted.
        assert_eq!(totals(&place, "batch"), (6, 6));
        assert_eq!(totals(&alone, "batch"), (6, 6));
        assert!(l.core.queued().0.is_empty(), "the end went with the batch");
    }
}

both! {
    /// Admissions queued at the gate are decided by the one holding it, in one store call, and
    /// in arrival order: behind one that must wait, none is admitted, even one that would fit.
    async fn admissions_queued_at_the_gate_are_decided_together_in_order(place: Place) {
        let clock = SimClock::new(start());
        let decisions = |l: &Limiter| l.core.decisions.load(std::sync::atomic::Ordering::Relaxed);
        // Queue `asks` (units, deadline) while the gate is held, then let them go.
        let run = |l: &Limiter, asks: Vec<(u64, Option<Timestamp>)>| {
            let l = l.clone();
            async move {
                let turn = l.gate.clone().try_lock_owned().expect("gate free");
                let n = asks.len();
                let tasks: Vec<_> = asks
                    .into_iter()
                    .map(|(units, deadline)| {
                        let l = l.clone();
                        tokio::spawn(async move { l.acquire(units, deadline).await })
                    })
                    .collect();
                let mut waited = 0;
                while lock(&l.lobby).len() < n {
                    assert!(waited < 5000, "{n} admissions never queued");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    waited += 1;
                }
                let before = decisions(&l);
                drop(turn);
                let mut got = Vec::new();
                for t in tasks {
                    got.push(t.await.expect("task").expect("acquire"));
                }
                assert!(lock(&l.lobby).is_empty(), "nobody left queued");
                (decisions(&l) - before, got)
            }
        };
        // Pacing lets 50 units through at once (a twentieth of the window): four calls of 2
        // queued together are admitted by one store call.
        let l = place.open("batch", Limit::new(1000, Duration::from_secs(1)), LimiterOptions::default(), &clock);
        let (calls, got) = run(&l, vec![(2, None); 4]).await;
        assert_eq!(calls, 1, "four admissions, one store call");
        assert!(got.iter().all(|a| matches!(a, Acquired::At(_))), "{got:?}");
        assert_eq!(totals(&place, "batch"), (8, 8));
        // 10 a second: 8 units admitted and still in flight 3 s later (they count until their
        // answer + 1 s, or their fallback end), when pacing holds nobody back any more. 3 units
        // must wait past their deadline; 1 unit behind them would fit, but is not decided in
        // their batch: it asks in a store call of its own once they gave up.
        let l = place.open("small", Limit::new(10, Duration::from_secs(1)), LimiterOptions::default(), &clock);
        let eight = {
            let l = l.clone();
            tokio::task::spawn_blocking(move || l.try_acquire(8))
                .await
                .expect("task")
                .expect("decide")
                .expect("room")
        };
        clock.advance(Duration::from_secs(3));
        let soon = Some(clock.now() + Duration::from_millis(500));
        let (calls, got) = run(&l, vec![(3, soon), (1, None)]).await;
        assert!(
            matches!(got[..], [Acquired::Deadline, Acquired::At(_)]),
            "{got:?}"
        );
        assert_eq!(calls, 2, "the 1-unit call did not jump ahead in the 3-unit call's batch");
        assert_eq!(totals(&place, "small"), (9, 9));
        drop((got, eight));
        // A campaign with a throttle of its own shares the account's gate: queued between two
        // of the account's calls, it ends the first one's batch (the one behind it does not go
        // first) and decides alone.
        let account = place.open("account", Limit::new(1000, Duration::from_secs(1)), LimiterOptions::default(), &clock);
        let capped = account.clone().capped_by(place.open(
            "campaign",
            Limit::new(1000, Duration::from_secs(1)),
            LimiterOptions::default(),
            &clock,
        ));
        let turn = account.gate.clone().try_lock_owned().expect("gate free");
        let tasks: Vec<_> = [&account, &capped, &account]
            .into_iter()
            .map(|l| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire(1, None).await })
            })
            .collect();
        for _ in 0..5000 {
            if lock(&account.lobby).len() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = decisions(&account);
        drop(turn);
        for t in tasks {
            let got = t.await.expect("task").expect("acquire");
            assert!(matches!(got, Acquired::At(_)), "{got:?}");
        }
        assert_eq!(decisions(&account) - before, 3, "no batch across other rules");
        assert_eq!(totals(&place, "account"), (3, 3));
        assert_eq!(totals(&place, "campaign"), (1, 1));
    }
}
