//! Prometheus text for `imcast daemon --metrics 127.0.0.1:PORT`.
//!
//! Owns: the snapshot the daemon publishes after every tick and its rendering in the
//! Prometheus text exposition format, plus the tiny axum server. What only the sender knows
//! (messages by status, rate vs limit) comes in through [`MetricsHook`]s; [`JournalMetrics`] is
//! the journal's (read through the journal's own methods and the limiter's
//! [`UsageReader`](crate::throttle::UsageReader), never their tables): `imcast_rate_used` comes
//! from where the account limiter keeps its log, the PostgreSQL store when `[state] url` is set
//! (what every host of the account spends together), else the state directory's SQLite file.
//! Must not: block the daemon (the server reads a snapshot behind a mutex), or bind anything
//! but the address it is given (the command refuses non-loopback addresses).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What the daemon knows after a tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// (campaign, next fire as UTC seconds).
    pub next_fire: Vec<(String, Option<i64>)>,
    pub runs_active: u64,
    pub runs_paused: u64,
    pub invalid_files: u64,
    /// Occurrences by status, all time (until pruned).
    pub occurrences: Vec<(String, u64)>,
    pub stopped: bool,
}

/// Extra metric families from other stages (the sender's messages by status, rate vs limit).
pub trait MetricsHook: Send + Sync {
    /// Append complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

/// Shared state between the daemon and the metrics server.
#[derive(Clone, Default)]
pub struct Metrics {
    snapshot: Arc<Mutex<MetricsSnapshot>>,
    hooks: Arc<Mutex<Vec<Arc<dyn MetricsHook>>>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn publish(&self, s: MetricsSnapshot) {
        if let Ok(mut g) = self.snapshot.lock() {
            *g = s;
        }
    }
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.snapshot.lock().map(|g| g.clone()).unwrap_or_default()
    }
    pub fn add_hook(&self, h: Arc<dyn MetricsHook>) {
        if let Ok(mut g) = self.hooks.lock() {
            g.push(h);
        }
    }
    /// The whole exposition text.
    pub fn render(&self) -> String {
        let mut out = render_snapshot(&self.snapshot());
        let hooks = self.hooks.lock().map(|g| g.clone()).unwrap_or_default();
        for h in hooks {
            h.render(&mut out);
        }
        out
    }
}

fn esc(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render a snapshot as Prometheus text.
pub fn render_snapshot(s: &MetricsSnapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP imcast_campaign_next_fire_timestamp_seconds Next occurrence of each scheduled campaign (UTC seconds).");
    let _ = writeln!(
        o,
        "# TYPE imcast_campaign_next_fire_timestamp_seconds gauge"
    );
    for (name, next) in &s.next_fire {
        if let Some(t) = next {
            let _ = writeln!(
                o,
                "imcast_campaign_next_fire_timestamp_seconds{{campaign=\"{}\"}} {t}",
                esc(name)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP imcast_runs_active Runs started by the daemon and not finished."
    );
    let _ = writeln!(o, "# TYPE imcast_runs_active gauge");
    let _ = writeln!(o, "imcast_runs_active {}", s.runs_active);
    let _ = writeln!(
        o,
        "# HELP imcast_runs_paused Runs currently paused (user, stop file or quiet hours)."
    );
    let _ = writeln!(o, "# TYPE imcast_runs_paused gauge");
    let _ = writeln!(o, "imcast_runs_paused {}", s.runs_paused);
    let _ = writeln!(
        o,
        "# HELP imcast_invalid_campaign_files Campaign files that failed to load at the last scan."
    );
    let _ = writeln!(o, "# TYPE imcast_invalid_campaign_files gauge");
    let _ = writeln!(o, "imcast_invalid_campaign_files {}", s.invalid_files);
    let _ = writeln!(
        o,
        "# HELP imcast_stopped 1 while the stop file pauses everything."
    );
    let _ = writeln!(o, "# TYPE imcast_stopped gauge");
    let _ = writeln!(o, "imcast_stopped {}", u8::from(s.stopped));
    let _ = writeln!(
        o,
        "# HELP imcast_occurrences Recorded occurrences by status."
    );
    let _ = writeln!(o, "# TYPE imcast_occurrences gauge");
    for (status, n) in &s.occurrences {
        let _ = writeln!(o, "imcast_occurrences{{status=\"{}\"}} {n}", esc(status));
    }
    o
}

/// Serve `GET /metrics` on `addr` until `shutdown` resolves. Returns the bound address first
/// through `bound` (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(local)
}

/// The sender's figures from the journal: recipients by status for recent runs and each
/// action's use of the account window vs its limit. Computed every few seconds on the blocking
/// pool by [`JournalMetrics::spawn_refresh`]; a scrape only copies the last text.
#[derive(Clone, Default)]
pub struct JournalMetrics {
    text: Arc<Mutex<String>>,
}

impl MetricsHook for JournalMetrics {
    fn render(&self, out: &mut String) {
        if let Ok(g) = self.text.lock() {
            out.push_str(&g);
        }
    }
}

/// How far back a run's messages are still exported (by its last update).
const RECENT_SECS: i64 = 24 * 3600;

impl JournalMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Refresh from the journal in `db` (the state directory's SQLite file, or the PostgreSQL
    /// store) and the limiter's log in `store` every `every` until the runtime ends.
    pub fn spawn_refresh(
        &self,
        db: crate::config::StateStore,
        store: crate::config::StateStore,
        limits: Vec<(String, crate::config::Limit)>,
        clock: crate::clock::SharedClock,
        every: std::time::Duration,
    ) {
        let me = self.clone();
        let usage = Arc::new(Mutex::new(crate::throttle::UsageReader::new(store)));
        tokio::spawn(async move {
            loop {
                let now = clock.now();
                let (db2, limits2, usage2) = (db.clone(), limits.clone(), usage.clone());
                let text = tokio::task::spawn_blocking(move || {
                    let mut usage = usage2.lock().unwrap_or_else(|p| p.into_inner());
                    journal_text(&db2, &mut usage, &limits2, now)
                })
                .await;
                match text {
                    Ok(Ok(text)) => {
                        if let Ok(mut g) = me.text.lock() {
                            *g = text;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "metrics: could not refresh"),
                    Err(_) => {}
                }
                clock.sleep(every).await;
            }
        });
    }
}

/// Why the journal's families could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("the limiter's log: {0}")]
    Limiter(#[from] crate::throttle::StoreError),
}

/// The journal's families as Prometheus text, at `now`.
pub fn journal_text(
    db: &crate::config::StateStore,
    usage: &mut crate::throttle::UsageReader,
    limits: &[(String, crate::config::Limit)],
    now: jiff::Timestamp,
) -> Result<String, MetricsError> {
    let journal = crate::journal::Journal::open_state_reader(db, 2048)?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP imcast_messages Recipients by status, per campaign, over runs updated in the last 24h."
    );
    let _ = writeln!(o, "# TYPE imcast_messages gauge");
    let since = now
        .checked_sub(jiff::SignedDuration::from_secs(RECENT_SECS))
        .unwrap_or(jiff::Timestamp::MIN);
    let mut by: std::collections::BTreeMap<(String, &'static str), u64> = Default::default();
    for run in journal.recent_counts(since)? {
        for (status, n) in run.counts {
            *by.entry((run.campaign.clone(), status.as_str()))
                .or_default() += n;
        }
    }
    for ((campaign, status), n) in &by {
        let _ = writeln!(
            o,
            "imcast_messages{{campaign=\"{}\",status=\"{}\"}} {n}",
            esc(campaign),
            esc(status)
        );
    }
    let _ = writeln!(
        o,
        "# HELP imcast_rate_used Units (messages or calls) the account limiter counts now: calls in flight and calls answered within the last window."
    );
    let _ = writeln!(o, "# TYPE imcast_rate_used gauge");
    let _ = writeln!(
        o,
        "# HELP imcast_rate_limit The account limit per window (after the reserve)."
    );
    let _ = writeln!(o, "# TYPE imcast_rate_limit gauge");
    // The limiter's log: its own file beside the journal, or the PostgreSQL store (`throttle`).
    let keys: Vec<&str> = limits.iter().map(|(action, _)| action.as_str()).collect();
    let used = usage.used(&keys, now)?;
    for ((action, limit), used) in limits.iter().zip(used) {
        let _ = writeln!(o, "imcast_rate_used{{action=\"{}\"}} {used}", esc(action));
        let _ = writeln!(
            o,
            "imcast_rate_limit{{action=\"{}\",window_seconds=\"{}\"}} {}",
            esc(action),
            limit.window.as_secs_f64(),
            limit.limit
        );
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Hook;
    impl MetricsHook for Hook {
        fn render(&self, out: &mut String) {
            out.push_str("imcast_messages{status=\"sent\"} 3\n");
        }
    }

    #[tokio::test]
    async fn serves_snapshot_and_hooks() {
        let m = Metrics::new();
        m.publish(MetricsSnapshot {
            next_fire: vec![
                ("daily \"news\"".into(), Some(1_772_326_800)),
                ("off".into(), None),
            ],
            runs_active: 2,
            runs_paused: 1,
            ..Default::default()
        });
        m.add_hook(Arc::new(Hook));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let addr = serve("127.0.0.1:0".parse().expect("addr"), m, async move {
            let _ = rx.await;
        })
        .await
        .expect("bind");
        let body = reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        let _ = tx.send(());
        assert!(body.contains(
            "imcast_campaign_next_fire_timestamp_seconds{campaign=\"daily \\\"news\\\"\"} 1772326800"
        ), "{body}");
        assert!(!body.contains("campaign=\"off\""), "{body}");
        assert!(body.contains("imcast_runs_active 2\n"), "{body}");
        assert!(body.contains("imcast_runs_paused 1\n"), "{body}");
        assert!(
            body.contains("imcast_messages{status=\"sent\"} 3"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn journal_families_read_the_run_counters_and_the_limiter_file() {
        use crate::clock::{Clock, SimClock};
        let dir = tempfile::tempdir().expect("tempdir");
        // The journal's file (what the families read) exists.
        crate::journal::Journal::open(dir.path()).expect("journal");
        let clock = SimClock::new("2026-03-01T09:00:00Z".parse().expect("ts"));
        let limit = crate::config::Limit::new(12_000, std::time::Duration::from_secs(60));
        let mut usage =
            crate::throttle::UsageReader::new(crate::config::StateStore::Sqlite(dir.path().into()));
        let db = crate::config::StateStore::Sqlite(dir.path().into());
        let none = journal_text(&db, &mut usage, &[("batch".into(), limit)], clock.now())
            .expect("metrics without a limiter file");
        assert!(
            none.contains("imcast_rate_used{action=\"batch\"} 0"),
            "{none}"
        );
        let limiter = crate::throttle::Limiter::open(
            &dir.path().join(crate::throttle::DB_FILE),
            "batch",
            limit,
            crate::throttle::LimiterOptions::default(),
            Arc::new(clock.clone()),
        )
        .expect("limiter");
        // In flight (not completed): it counts.
        let _in_flight = limiter.acquire(500, None).await.expect("admitted");
        let text = journal_text(&db, &mut usage, &[("batch".into(), limit)], clock.now())
            .expect("metrics");
        assert!(
            text.contains("imcast_rate_used{action=\"batch\"} 500"),
            "{text}"
        );
        assert!(
            text.contains("imcast_rate_limit{action=\"batch\",window_seconds=\"60\"} 12000"),
            "{text}"
        );
    }

    /// With `[state] url`, `imcast_rate_used` is what the limiter counts in PostgreSQL, shared by
    /// every host: an admission by another process on the store shows, the local SQLite file
    /// (empty here) does not matter, and a completed call stops counting one window after its
    /// answer.
    #[test]
    fn rate_used_comes_from_the_postgres_limiter_when_the_store_is_postgres() {
        use crate::clock::{Clock, SimClock};
        let Some(db) = crate::testing::pg::test_db("metrics") else {
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = crate::journal::Journal::open(dir.path()).expect("journal");
        let clock = SimClock::new("2026-03-01T09:00:00Z".parse().expect("ts"));
        let limit = crate::config::Limit::new(12_000, std::time::Duration::from_secs(60));
        let limits = [("batch".to_string(), limit), ("p2p".to_string(), limit)];
        drop(journal);
        let journal = crate::config::StateStore::Sqlite(dir.path().into());
        // Blocking client work off any runtime (this test has none; the fixture's own threads).
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut usage = crate::throttle::UsageReader::new(db.store());
                // A store nothing was ever sent on (no limiter tables yet): 0, not an error.
                let text = journal_text(&journal, &mut usage, &limits, clock.now())
                    .expect("metrics on an empty store");
                assert!(
                    text.contains("imcast_rate_used{action=\"batch\"} 0"),
                    "{text}"
                );
                // Another process (here: a limiter of its own) admits 500 on the store.
                let other = crate::throttle::Limiter::open_postgres(
                    db.url(),
                    "batch",
                    limit,
                    crate::throttle::LimiterOptions::default(),
                    Arc::new(clock.clone()),
                )
                .expect("limiter");
                let permit = other.try_acquire(500).expect("decide").expect("admitted");
                let text =
                    journal_text(&journal, &mut usage, &limits, clock.now()).expect("metrics");
                assert!(
                    text.contains("imcast_rate_used{action=\"batch\"} 500"),
                    "{text}"
                );
                assert!(
                    text.contains("imcast_rate_used{action=\"p2p\"} 0"),
                    "{text}"
                );
                // The SQLite reader of the same state directory sees nothing: the count is the
                // store's, not the local file's.
                let mut local = crate::throttle::UsageReader::new(
                    crate::config::StateStore::Sqlite(dir.path().into()),
                );
                assert_eq!(
                    local.used(&["batch"], clock.now()).expect("sqlite"),
                    vec![0]
                );
                // Answered now: it counts one more window, then no more.
                permit.complete_blocking(clock.now()).expect("complete");
                clock.advance(std::time::Duration::from_secs(60));
                assert_eq!(
                    usage.used(&["batch"], clock.now()).expect("used"),
                    vec![500]
                );
                clock.advance(std::time::Duration::from_secs(1));
                assert_eq!(usage.used(&["batch"], clock.now()).expect("used"), vec![0]);
            });
        });
    }
}
