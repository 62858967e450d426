//! Crash test hooks: `IMCAST_FAILPOINT=after_mark|after_response|before_commit|after_requeue` makes the process
//! abort (no unwinding, no destructors, like `kill -9`) at exactly that point of a call, so crash
//! tests do not depend on timing. An optional `:N` suffix aborts at the N-th hit (1-based), e.g.
//! `after_mark:3`. Unset or unknown values do nothing; reading the variable once is cheap.
//!
//! `IMCAST_FAILPOINT=journal_full[:K]` is not a crash: when a run's engine starts, the journal's
//! connection may grow by at most K more pages (default 0; SQLite `PRAGMA max_page_count`), so a
//! later write fails with SQLite's own SQLITE_FULL ("database or disk is full", code 13) — what a
//! full disk gives, on any machine and without root ([`limit_journal`]; SQLite only).
//!
//! Must not: do anything else. It is compiled into release builds on purpose (the crash tests run
//! the real binary); without the variable it is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Where a failpoint can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// After the in-flight mark is committed, before the request leaves.
    AfterMark,
    /// After the provider answered, before the outcome is recorded.
    AfterResponse,
    /// Inside the outcome transaction, before it commits.
    BeforeCommit,
    /// After an answer that re-queued FailedReceiver receivers was committed, before any call
    /// resends them.
    AfterRequeue,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::AfterMark => "after_mark",
            Point::AfterResponse => "after_response",
            Point::BeforeCommit => "before_commit",
            Point::AfterRequeue => "after_requeue",
        }
    }
}

static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn config() -> &'static Option<(String, u64)> {
    CONFIG.get_or_init(|| {
        let v = std::env::var("IMCAST_FAILPOINT").ok()?;
        let (name, n) = match v.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some((name, n.max(1)))
    })
}

/// Abort the process if the configured failpoint is `p` and this is its N-th hit.
pub fn hit(p: Point) {
    if let Some((name, n)) = config() {
        if name == p.name() {
            let k = HITS.fetch_add(1, Ordering::SeqCst) + 1;
            if k == *n {
                crate::errln!("IMCAST_FAILPOINT={}: aborting", p.name());
                std::process::abort();
            }
        }
    }
}

/// The extra pages `IMCAST_FAILPOINT=journal_full[:K]` lets the journal grow by (None: unset).
fn journal_full() -> Option<u64> {
    let v = std::env::var("IMCAST_FAILPOINT").ok()?;
    let (name, k) = v.split_once(':').unwrap_or((v.as_str(), "0"));
    (name == "journal_full").then(|| k.parse().unwrap_or(0))
}

/// With `IMCAST_FAILPOINT=journal_full[:K]`: cap `conn`'s database at its current size plus K
/// pages, so a write that needs more fails with SQLITE_FULL. Called when a run's engine starts.
/// SQLite only: on the PostgreSQL store it says so and does nothing.
pub fn limit_journal(conn: &crate::store::Conn) {
    let Some(k) = journal_full() else {
        return;
    };
    let Some(conn) = conn.as_sqlite() else {
        crate::errln!(
            "IMCAST_FAILPOINT=journal_full:{k}: ignored, the journal is in the PostgreSQL store"
        );
        return;
    };
    let pages: Result<i64, _> = conn.query_row("PRAGMA page_count", [], |r| r.get(0));
    if let Ok(pages) = pages {
        let max = pages.saturating_add(k as i64);
        let set: Result<i64, _> =
            conn.query_row(&format!("PRAGMA max_page_count = {max}"), [], |r| r.get(0));
        crate::errln!(
            "IMCAST_FAILPOINT=journal_full:{k}: the journal may grow to {} pages",
            set.unwrap_or(max)
        );
    }
}
