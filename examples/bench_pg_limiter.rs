//! Benchmark (not a test): the limiter's admission latency on PostgreSQL (and on SQLite, to
//! compare), against a local server started the way the tests start theirs
//! (`imcast::testing::pg`: a throwaway cluster on 127.0.0.1, fsync off), or the server
//! `IMCAST_TEST_PG_URL` names.
//!
//! ```sh
//! cargo build --release --locked --example bench_pg_limiter
//! target/release/examples/bench_pg_limiter                 # postgres, 1 and 3 deciders, 10,000 each
//! target/release/examples/bench_pg_limiter sqlite          # the same on the SQLite file
//! target/release/examples/bench_pg_limiter postgres 20000  # more admissions per decider
//! ```
//! Each decider is a thread with a limiter of its own (its own connection, as a process would
//! have) on one shared key, at a limit far above what it reaches, so every decision admits.
//! Timed per call: `try_acquire` (one decision: lock, prune, admit, commit) and
//! `complete_blocking` (writing the answer's end), on the system clock. Prints percentiles.
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark measures wall time and prints its figures"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use imcast::clock::SystemClock;
use imcast::config::{Limit, StateStore};
use imcast::throttle::{Limiter, LimiterOptions};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = args.first().map(String::as_str).unwrap_or("postgres");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let _db;
    let store = match backend {
        "sqlite" => StateStore::Sqlite(dir.path().to_path_buf()),
        "postgres" => {
            let t = Instant::now();
            let db = imcast::testing::pg::test_db("bench").expect("PostgreSQL (see the fixture)");
            eprintln!(
                "server and database ready in {:.2} s: {}",
                t.elapsed().as_secs_f64(),
                db.url()
            );
            let s = db.store();
            _db = db;
            s
        }
        other => panic!("backend {other:?}: postgres or sqlite"),
    };
    println!("backend {backend}, {n} admissions per decider");
    println!(
        "| deciders | what | n | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | admissions/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (round, deciders) in [1usize, 3].into_iter().enumerate() {
        let key = format!("bench{round}");
        let limit = Limit::new(1_000_000_000, Duration::from_secs(60));
        let limiters: Vec<Limiter> = (0..deciders)
            .map(|_| {
                Limiter::open_store(
                    &store,
                    &key,
                    limit,
                    LimiterOptions::default(),
                    Arc::new(SystemClock),
                )
                .expect("open")
            })
            .collect();
        // Warm-up (connections, prepared statements, caches): not timed.
        for l in &limiters {
            for _ in 0..200 {
                let p = l.try_acquire(1).expect("decide").expect("admitted");
                p.complete_blocking(SystemClock.now_ts()).expect("complete");
            }
        }
        let t0 = Instant::now();
        let (mut adm, mut done): (Vec<Duration>, Vec<Duration>) = std::thread::scope(|s| {
            let hs: Vec<_> = limiters
                .iter()
                .map(|l| {
                    s.spawn(move || {
                        let (mut a, mut d) = (Vec::with_capacity(n), Vec::with_capacity(n));
                        for _ in 0..n {
                            let t = Instant::now();
                            let p = l.try_acquire(1).expect("decide").expect("admitted");
                            a.push(t.elapsed());
                            let t = Instant::now();
                            p.complete_blocking(SystemClock.now_ts()).expect("complete");
                            d.push(t.elapsed());
                        }
                        (a, d)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("decider")).fold(
                (Vec::new(), Vec::new()),
                |(mut a, mut d), (x, y)| {
                    a.extend(x);
                    d.extend(y);
                    (a, d)
                },
            )
        });
        let wall = t0.elapsed();
        adm.sort();
        done.sort();
        for (what, v) in [("admission", &adm), ("completion", &done)] {
            println!(
                "| {deciders} | {what} | {} | {} | {} | {} | {} | {} | {} |",
                v.len(),
                ms(pct(v, 0.5)),
                ms(pct(v, 0.9)),
                ms(pct(v, 0.99)),
                ms(pct(v, 0.999)),
                ms(pct(v, 1.0)),
                if what == "admission" {
                    format!("{:.0}", adm.len() as f64 / wall.as_secs_f64())
                } else {
                    "".into()
                }
            );
        }
    }
}

/// The system clock's now, as the limiter sees it.
trait NowTs {
    fn now_ts(&self) -> jiff::Timestamp;
}

impl NowTs for SystemClock {
    fn now_ts(&self) -> jiff::Timestamp {
        imcast::clock::Clock::now(self)
    }
}
