//! The account-wide rate limiter: one per (state directory, action), shared by every campaign and
//! every imcast process using the same state directory.
//!
//! Owns: the log of admissions in its own SQLite file beside the journal,
//! `<state_dir>/throttle.db` ([`DB_FILE`]; one writer per file, so the journal's long writes never
//! hold up an admission), the pacing state, and the in-process back-off after a 429.
//!
//! The rule (exact, no padding): a call counts in the window from its admission until its answer
//! arrived plus one window; a call still in flight always counts. An admission of `n` units is
//! allowed only if the units counted now plus `n` stay within the limit. Why that is enough,
//! whatever the latency: the provider stamps each call at some instant `s` between our admission
//! `a` and the answer `r`. Take any provider window `(t - W, t]` and the calls stamped in it; let
//! `k` be the one admitted last. Every other call `j` there has `s_j > t - W >= s_k - W >= a_k - W`,
//! so `r_j + W >= s_j + W > a_k`: `j` was still counted when `k` was admitted, and that admission
//! kept them all within the limit. So no provider window ever sees more than the limit, and no
//! window of our admissions holds more either (an entry counts at least one window).
//!
//! Invariants:
//! - Each log entry has an end, `until_ns`: while the call is in flight a fallback (admission +
//!   [`SEND_SLACK`] + the longest a call can take + one window), then the answer's instant + one
//!   window once the engine completes its [`Permit`] (an error or a transport failure too). A permit
//!   dropped without completion (cancelled future, panic) closes at drop time + one window. The
//!   fallback is what a process killed with `kill -9` leaves: nothing it sent can be stamped after
//!   its timeout, so its entries stop counting then and never block forever.
//! - An entry counts while `until_ns >= now` (its end included, so the proof holds for closed
//!   windows `[t - W, t]` as well); entries past their end are deleted, and a per-key
//!   running total (`throttle_total`) always equals the sum of the key's entries, so a decision is
//!   a few index lookups (an index on `(key, until_ns, count)`), even with 12,000 entries in the
//!   window (a personalized campaign at 12,000 / 60 s).
//! - Decision and record are one `BEGIN IMMEDIATE` transaction: two processes (an ad-hoc `run`
//!   beside the daemon) see each other's entries and together stay within the limit, and a
//!   restarted process does not start with quota it already spent.
//! - Within one process, waiting admissions queue first-come first-served (an async gate), so a
//!   500-receiver call is not starved by smaller ones and waiting tasks do not all poll SQLite.
//!
//! What it costs: each call holds its units for its latency `L` plus one window, so the steady
//! throughput is `limit / (W + L)`: the share `W / (W + L)` of the limit (99.6% at 250 ms on a
//! 60 s window, 83% at 200 ms on a 1 s window, 50% at 1 s on a 1 s window). No rule that is safe
//! wherever in `[a, r]` the provider stamps can do better: if `j` is stamped at `r_j` and a later
//! call `k` at `a_k`, they share a window whenever `a_k < r_j + W`, so `j` must count until then. The tests assert
//! ≥ 99% of the limit when latency is small against the window and ≥ 99% of `W / (W + mean L)`
//! otherwise, on a simulated clock with a simulated provider.
//!
//! Pacing (smoothness, not safety): admissions also follow a shared theoretical-arrival-time
//! (`throttle_pace`) at the limit's rate, with a catch-up tolerance of 1/20 of the window (at
//! least two calls' worth), so the quota is not spent in one burst at t = 0. After a 429 (someone else spends the account's quota)
//! [`Limiter::on_rate_limited`] holds admissions back briefly (250 ms, doubling on consecutive 429s,
//! at most a quarter window) and paces at half rate, ramping back to the full rate within one
//! window; the engine retries the call, recipients are never dropped.
//!
//! For BatchSendMessage a second rule bounds requests per second (its request rate is not
//! documented), counted the same exact way on its own key. A campaign's own `throttle:` is a third
//! rule on its own key ([`Limiter::capped_by`]). All rules are decided in one transaction.
//!
//! Why hand-written rather than the `governor` crate: GCRA / token buckets bound the *average*
//! rate, but burst + refill can exceed the limit inside one window. Measured for this project:
//! governor with `per_minute(12000).allow_burst(500)` admits 12,500 in a worst-case 60 s window,
//! and 24,000 with its default burst — both break the provider's 12,000 / 60 s limit. They also
//! know nothing of latency (the provider counts when it stamps, not when we start) and are
//! in-process only, so two processes would each spend the full quota.
//!
//! Must not: read the system clock (time comes only from the injected [`Clock`]), talk to the
//! network, or block a runtime thread (SQLite work runs on the blocking pool).
//!
//! [`Clock`]: crate::clock::Clock

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::clock::SharedClock;
use crate::config::Limit;

/// The limiter's database file inside the state directory.
pub const DB_FILE: &str = "throttle.db";

/// The longest a call may take from its start to its answer or failure, by default: two of the
/// provider client's 30 s request timeouts (it re-signs once after an `InvalidTimestamp`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed between an admission and the request leaving (the journal's in-flight mark);
/// a call that starts later than this pushes its entry's fallback end out ([`Permit::sending`]).
pub const SEND_SLACK: Duration = Duration::from_secs(5);
/// Pacing tolerance: how far behind schedule the limiter may catch up at once (share of window).
const PACE_TOLERANCE: f64 = 1.0 / 20.0;
/// Pacing slow-down right after a 429 (halved rate), ramping back to 1 over one window.
const SLOW_AFTER_429: f64 = 2.0;
/// First hold after a 429; doubles on consecutive 429s, at most a quarter window.
const HOLD_AFTER_429: Duration = Duration::from_millis(250);
const NS_PER_SEC: i128 = 1_000_000_000;

/// `t` as an SQLite integer (times are nanoseconds since 1970: far inside i64).
fn clamp_i64(t: i128) -> i64 {
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Errors from the limiter.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("throttle state in {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("one call of {n} exceeds the whole limit of {limit} per window; lower the batch size or raise the limit")]
    TooLarge { n: u64, limit: u64 },
    #[error("throttle worker failed: {0}")]
    Join(String),
}

impl ThrottleError {
    /// The file a full disk refused to grow, when that is what this error is (SQLITE_FULL).
    pub fn disk_full(&self) -> Option<&std::path::Path> {
        match self {
            ThrottleError::Db { path, source } if crate::db::is_disk_full(source) => Some(path),
            _ => None,
        }
    }
}

/// What an acquire came to.
#[derive(Debug)]
pub enum Acquired {
    /// Admitted: the call may start. Complete the permit with the answer's instant.
    At(Permit),
    /// The wait would pass the deadline; nothing was taken.
    Deadline,
}

/// Limiter settings beyond the limit itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterOptions {
    /// Cap on admissions (requests) per second, for actions whose request rate is not documented.
    pub max_requests_per_second: Option<u32>,
    /// The longest a call can take from its start until an answer or a failure (the client's
    /// request timeout, times its attempts). Bounds how long a crashed process's in-flight
    /// entries count.
    pub call_timeout: Duration,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            max_requests_per_second: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// One limit the limiter enforces, on its own key of the log.
#[derive(Debug, Clone)]
struct Rule {
    key: String,
    limit: u64,
    window_ns: i128,
    /// Counts requests (1 a call) instead of the call's units.
    per_request: bool,
    /// Paced (the account and campaign limits; not the request-rate cap).
    pace: bool,
}

impl Rule {
    fn units(&self, n: u64) -> u64 {
        if self.per_request {
            1
        } else {
            n
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// When the last 429 came (nanoseconds since epoch).
    last_429: Option<i128>,
    /// No admission before this.
    not_before: i128,
    /// Consecutive 429s.
    strikes: u32,
}

impl Backoff {
    /// Pacing slow-down at `now`: [`SLOW_AFTER_429`] at the 429, 1 one window later.
    fn factor(&self, now: i128, window_ns: i128) -> f64 {
        match self.last_429 {
            Some(t) if now < t + window_ns && window_ns > 0 => {
                let left = 1.0 - (now - t) as f64 / window_ns as f64;
                1.0 + (SLOW_AFTER_429 - 1.0) * left.clamp(0.0, 1.0)
            }
            _ => 1.0,
        }
    }
}

/// An entry's end to write at the next flush.
#[derive(Debug, Clone, Copy)]
enum Pending {
    /// The call ended (answer, error, or the permit was dropped): set the end, mark done.
    Close { id: i64, until_ns: i128 },
    /// The call started late: push the in-flight fallback out to at least this.
    Extend { id: i64, until_ns: i128 },
}

/// What a limiter and its permits share: the connection, the clock, ends not yet written.
struct Core {
    path: PathBuf,
    conn: Mutex<Connection>,
    clock: SharedClock,
    pending: Mutex<Vec<Pending>>,
}

impl Core {
    fn db(&self) -> impl Fn(rusqlite::Error) -> ThrottleError + '_ {
        move |source| ThrottleError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn push(&self, p: Pending) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    /// Write the pending ends (blocking).
    fn flush(&self) -> Result<(), ThrottleError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.db())?;
        self.flush_in(&tx)?;
        tx.commit().map_err(self.db())
    }

    /// Write the pending ends inside `tx`. Taken from the queue only once written: on an error
    /// they stay queued, and meanwhile the entries keep their (later) fallback ends.
    fn flush_in(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), ThrottleError> {
        let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for p in q.iter() {
            match *p {
                Pending::Close { id, until_ns } => tx
                    .prepare_cached(
                        "UPDATE throttle_log SET until_ns = ?2, done = 1 WHERE id = ?1 AND done = 0",
                    )
                    .and_then(|mut s| s.execute(params![id, clamp_i64(until_ns)])),
                Pending::Extend { id, until_ns } => tx
                    .prepare_cached(
                        "UPDATE throttle_log SET until_ns = MAX(until_ns, ?2)
                         WHERE id = ?1 AND done = 0",
                    )
                    .and_then(|mut s| s.execute(params![id, clamp_i64(until_ns)])),
            }
            .map_err(self.db())?;
        }
        q.clear();
        Ok(())
    }

    /// Flush on the blocking pool when inside a runtime, else here.
    fn flush_soon(self: &Arc<Self>) {
        let core = self.clone();
        let job = move || {
            if let Err(e) = core.flush() {
                tracing::warn!(error = %e, "limiter: could not record a call's end yet (it keeps counting until its fallback end)");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(job);
            }
            Err(_) => job(),
        }
    }
}

/// The shared sliding-window limiter. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    core: Arc<Core>,
    rules: Arc<[Rule]>,
    opts: LimiterOptions,
    backoff: Arc<Mutex<Backoff>>,
    /// Admissions of this process queue here, first come first served.
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// An admitted call's hold on the window. Complete it with the instant the answer (or error)
/// arrived; dropped without that, its entry closes at drop time + one window.
pub struct Permit {
    core: Arc<Core>,
    at: Timestamp,
    /// (entry id, that rule's window in ns).
    entries: Vec<(i64, i128)>,
    call_timeout_ns: i128,
    open: bool,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("at", &self.at)
            .field("entries", &self.entries)
            .field("open", &self.open)
            .finish()
    }
}

impl Permit {
    /// When the call was admitted.
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The request is leaving now. Only writes when the call starts more than [`SEND_SLACK`]
    /// after its admission (a slow journal), pushing the in-flight fallback end out so a call
    /// still running never stops counting.
    pub async fn sending(&mut self) {
        let now = self.core.clock.now().as_nanosecond();
        if now <= self.at.as_nanosecond() + SEND_SLACK.as_nanos() as i128 {
            return;
        }
        for &(id, w) in &self.entries {
            self.core.push(Pending::Extend {
                id,
                until_ns: fallback_end(now, self.call_timeout_ns, w),
            });
        }
        let core = self.core.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || core.flush())
            .await
            .map_err(|e| ThrottleError::Join(e.to_string()))
            .and_then(|r| r)
        {
            tracing::warn!(error = %e, "limiter: could not extend a late call's entry");
        }
    }

    /// The answer (or error, or transport failure) arrived at `reply`: the call stops counting
    /// one window later. Writes on the blocking pool.
    pub async fn complete(mut self, reply: Timestamp) {
        self.close_at(reply);
        let core = self.core.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || core.flush())
            .await
            .map_err(|e| ThrottleError::Join(e.to_string()))
            .and_then(|r| r)
        {
            tracing::warn!(error = %e, "limiter: could not record a call's end yet (it keeps counting until its fallback end)");
        }
    }

    /// [`Permit::complete`] for blocking callers (simulations and tests).
    pub fn complete_blocking(mut self, reply: Timestamp) -> Result<(), ThrottleError> {
        self.close_at(reply);
        self.core.flush()
    }

    fn close_at(&mut self, reply: Timestamp) {
        self.open = false;
        let r = reply.as_nanosecond();
        for &(id, w) in &self.entries {
            self.core.push(Pending::Close {
                id,
                until_ns: r + w,
            });
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // Cancelled or panicked: the request may have left, so count it one window past now.
        let now = self.core.clock.now();
        self.close_at(now);
        self.core.flush_soon();
    }
}

/// An in-flight entry's end when nothing closes it: the call cannot be stamped after its start +
/// the call timeout, so one window after that it no longer matters.
fn fallback_end(start_ns: i128, call_timeout_ns: i128, window_ns: i128) -> i128 {
    start_ns + SEND_SLACK.as_nanos() as i128 + call_timeout_ns + window_ns
}

/// Create the limiter's tables, replacing a log of an older format.
pub fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        // A log without ends (the padded-window formats before) is dropped: it holds at most one
        // window of history, which only makes the first window after the upgrade less cautious.
        let has_log = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'throttle_log'")?
            .exists([])?;
        let has_until = conn
            .prepare("SELECT 1 FROM pragma_table_info('throttle_log') WHERE name = 'until_ns'")?
            .exists([])?;
        if has_log && !has_until {
            conn.execute_batch(
                "DROP TABLE throttle_log;
                 DROP TABLE IF EXISTS throttle_total;",
            )?;
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS throttle_log(
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 key TEXT NOT NULL,
                 at_ns INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 until_ns INTEGER NOT NULL,
                 done INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS throttle_log_key_until
                 ON throttle_log(key, until_ns, count);
             CREATE TABLE IF NOT EXISTS throttle_total(
                 key TEXT PRIMARY KEY, units INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS throttle_pace(key TEXT PRIMARY KEY, tat_ns INTEGER NOT NULL);",
        )?;
        // Totals are derived: rebuild them if a crash or an older build left them out of step.
        conn.execute_batch(
            "DELETE FROM throttle_total;
             INSERT INTO throttle_total(key, units)
                 SELECT key, SUM(count) FROM throttle_log GROUP BY key;",
        )
    })();
    match r {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Units each of `keys` holds in its window at `now`, read from the limiter file at `db_path`
/// on a read-only connection (daemon metrics). No file or no log yet (nothing sent from this
/// state directory), or a file it cannot open: 0 for every key.
pub fn used_in_windows(
    db_path: &Path,
    keys: &[&str],
    now: Timestamp,
) -> rusqlite::Result<Vec<u64>> {
    let conn = Connection::open_with_flags(
        db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok();
    let has_log = conn.as_ref().is_some_and(|c| {
        c.busy_timeout(Duration::from_secs(2)).is_ok()
            && c.prepare(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'throttle_log'",
            )
            .and_then(|mut st| st.exists([]))
            .unwrap_or(false)
    });
    match (has_log, &conn) {
        (true, Some(c)) => keys.iter().map(|k| used_in_window(c, k, now)).collect(),
        _ => Ok(vec![0; keys.len()]),
    }
}

/// Units `key` holds in its window at `now` (read-only: daemon metrics).
pub fn used_in_window(conn: &Connection, key: &str, now: Timestamp) -> rusqlite::Result<u64> {
    let has_until = conn
        .prepare("SELECT 1 FROM pragma_table_info('throttle_log') WHERE name = 'until_ns'")?
        .exists([])?;
    if !has_until {
        return Ok(0);
    }
    let used: i64 = conn.query_row(
        "SELECT COALESCE(SUM(count), 0) FROM throttle_log WHERE key = ?1 AND until_ns >= ?2",
        params![key, clamp_i64(now.as_nanosecond())],
        |r| r.get(0),
    )?;
    Ok(used.max(0) as u64)
}

impl Limiter {
    /// Open the limiter `key` (e.g. `"batch"`) on the limiter database at `db_path`
    /// (`<state_dir>/`[`DB_FILE`]; tests may use any file).
    pub fn open(
        db_path: &Path,
        key: &str,
        limit: Limit,
        opts: LimiterOptions,
        clock: SharedClock,
    ) -> Result<Limiter, ThrottleError> {
        let db = |source| ThrottleError::Db {
            path: db_path.to_path_buf(),
            source,
        };
        // WAL so readers never block; NORMAL sync: losing the last entries on power loss only
        // makes a restarted process less cautious by at most a few calls, and an fsync per
        // admission would cap personalized campaigns far below the provider's limits.
        let conn = crate::db::open(db_path, "NORMAL").map_err(db)?;
        create_tables(&conn).map_err(db)?;
        let mut rules = vec![Rule {
            key: key.to_string(),
            limit: limit.limit,
            window_ns: limit.window.as_nanos() as i128,
            per_request: false,
            pace: true,
        }];
        if let Some(rps) = opts.max_requests_per_second {
            rules.push(Rule {
                key: format!("{key}/requests"),
                limit: u64::from(rps.max(1)),
                window_ns: NS_PER_SEC,
                per_request: true,
                pace: false,
            });
        }
        Ok(Limiter {
            core: Arc::new(Core {
                path: db_path.to_path_buf(),
                conn: Mutex::new(conn),
                clock,
                pending: Mutex::new(Vec::new()),
            }),
            rules: rules.into(),
            opts,
            backoff: Arc::new(Mutex::new(Backoff {
                last_429: None,
                not_before: i128::MIN,
                strikes: 0,
            })),
            gate: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Also hold every admission to `cap`'s limits (a campaign's own throttle, on its own key),
    /// decided in the same transaction; the account limit still bounds the sum of all
    /// campaigns. `cap` must be on the same database file (its connection is not used).
    pub fn capped_by(mut self, cap: Limiter) -> Limiter {
        let mut rules: Vec<Rule> = self.rules.to_vec();
        rules.extend(cap.rules.iter().cloned());
        self.rules = rules.into();
        self
    }

    /// The limit this limiter enforces (the account's).
    pub fn limit(&self) -> Limit {
        let r = &self.rules[0];
        Limit::new(r.limit, Duration::from_nanos(r.window_ns as u64))
    }

    /// The limit this limiter really holds admissions to, as its rule is written: the lowest
    /// rate among the paced rules (a campaign's own throttle where it is lower than the
    /// account's share; on a tie, the campaign's). The request-rate cap is not in it.
    pub fn effective_limit(&self) -> Limit {
        let mut best = &self.rules[0];
        for r in self.rules.iter().filter(|r| r.pace) {
            // a/w ≤ b/v ⇔ a·v ≤ b·w (exact in integers).
            if i128::from(r.limit) * best.window_ns <= i128::from(best.limit) * r.window_ns {
                best = r;
            }
        }
        Limit::new(best.limit, Duration::from_nanos(best.window_ns as u64))
    }

    /// Wait until `n` can start without breaking any limit, record it, and return its permit.
    /// With a deadline, gives up (taking nothing) once the wait would pass it.
    pub async fn acquire(
        &self,
        n: u64,
        deadline: Option<Timestamp>,
    ) -> Result<Acquired, ThrottleError> {
        self.check_size(n)?;
        let _turn = self.gate.lock().await;
        loop {
            let me = self.clone();
            let res = tokio::task::spawn_blocking(move || me.try_acquire(n))
                .await
                .map_err(|e| ThrottleError::Join(e.to_string()))??;
            match res {
                Ok(p) => return Ok(Acquired::At(p)),
                Err(wait) => {
                    if let Some(d) = deadline {
                        let now = self.core.clock.now();
                        if now.as_nanosecond() + wait.as_nanos() as i128 >= d.as_nanosecond() {
                            return Ok(Acquired::Deadline);
                        }
                    }
                    self.core.clock.sleep(wait).await;
                }
            }
        }
    }

    fn check_size(&self, n: u64) -> Result<(), ThrottleError> {
        match self.rules.iter().find(|r| r.units(n) > r.limit) {
            Some(r) => Err(ThrottleError::TooLarge { n, limit: r.limit }),
            None => Ok(()),
        }
    }

    /// One decision now (blocking; async code uses [`Limiter::acquire`]): the permit, or how long
    /// to wait before asking again. The wait is never longer than the real one: when only calls
    /// in flight block, it is at most one window, the earliest a completion could free anything.
    pub fn try_acquire(&self, n: u64) -> Result<Result<Permit, Duration>, ThrottleError> {
        self.check_size(n)?;
        let now = self.core.clock.now().as_nanosecond();
        let to_wait = |ns: i128| Duration::from_nanos(ns.clamp(1, i128::from(u64::MAX)) as u64);
        let backoff = *self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if backoff.not_before > now {
            return Ok(Err(to_wait(backoff.not_before - now)));
        }
        let core = &self.core;
        let db = core.db();
        let mut conn = core.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&db)?;
        core.flush_in(&tx)?;
        let mut wait: i128 = 0;
        let mut tats = Vec::with_capacity(self.rules.len());
        for rule in self.rules.iter() {
            let used = prune(&tx, &rule.key, now).map_err(&db)?;
            let need = rule.units(n) as i128;
            let limit = rule.limit as i128;
            // 1. The hard guarantee: what counts now plus n stays within the limit.
            if used + need > limit {
                let excess = used + need - limit;
                let free_at = earliest_free(&tx, &rule.key, excess).map_err(&db)?;
                // An entry in flight ends at its completion + W, so nothing frees up before
                // now + W except entries already ending: asking again then misses nothing.
                let cap = rule.window_ns + 1;
                let w = free_at.map_or(cap, |t| (t + 1 - now).min(cap));
                wait = wait.max(w.max(1));
            }
            // 2. Pacing (smoothness, not safety).
            if rule.pace {
                let tat: Option<i64> = tx
                    .prepare_cached("SELECT tat_ns FROM throttle_pace WHERE key = ?1")
                    .and_then(|mut s| s.query_row(params![rule.key], |r| r.get(0)).optional())
                    .map_err(&db)?;
                let tat = tat.map_or(now, i128::from).max(now);
                let unit = rule.window_ns as f64 / rule.limit.max(1) as f64
                    * backoff.factor(now, rule.window_ns);
                let this_call = (unit * need as f64) as i128;
                // At least two calls' worth: calls that are a large share of the limit are
                // already spread by the log, and their answers, which free the window, come
                // back at random intervals; pacing them further would only waste quota.
                let tolerance =
                    ((rule.window_ns as f64 * PACE_TOLERANCE) as i128).max(2 * this_call);
                if tat - now > tolerance {
                    wait = wait.max(tat - now - tolerance);
                }
                tats.push((rule, tat + this_call));
            }
        }
        if wait > 0 {
            tx.commit().map_err(&db)?;
            return Ok(Err(to_wait(wait)));
        }
        let call_timeout_ns = self.opts.call_timeout.as_nanos() as i128;
        let mut entries = Vec::with_capacity(self.rules.len());
        for rule in self.rules.iter() {
            let units = rule.units(n) as i64;
            tx.prepare_cached(
                "INSERT INTO throttle_log(key, at_ns, count, until_ns, done)
                 VALUES (?1, ?2, ?3, ?4, 0)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    rule.key,
                    clamp_i64(now),
                    units,
                    clamp_i64(fallback_end(now, call_timeout_ns, rule.window_ns))
                ])
            })
            .map_err(&db)?;
            entries.push((tx.last_insert_rowid(), rule.window_ns));
            tx.prepare_cached(
                "INSERT INTO throttle_total(key, units) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET units = units + excluded.units",
            )
            .and_then(|mut s| s.execute(params![rule.key, units]))
            .map_err(&db)?;
        }
        for (rule, tat) in tats {
            tx.prepare_cached(
                "INSERT INTO throttle_pace(key, tat_ns) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET tat_ns = excluded.tat_ns",
            )
            .and_then(|mut s| s.execute(params![rule.key, clamp_i64(tat)]))
            .map_err(&db)?;
        }
        tx.commit().map_err(&db)?;
        Ok(Ok(Permit {
            core: self.core.clone(),
            at: Timestamp::from_nanosecond(now).unwrap_or(Timestamp::UNIX_EPOCH),
            entries,
            call_timeout_ns,
            open: true,
        }))
    }

    /// The provider answered 429 (someone else spends this account's quota): hold admissions
    /// back briefly, then pace at half rate, back to full within one window.
    pub fn on_rate_limited(&self) {
        let now = self.core.clock.now().as_nanosecond();
        let window = self.rules[0].window_ns;
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.strikes = b.strikes.saturating_add(1);
        b.last_429 = Some(now);
        let hold = (HOLD_AFTER_429.as_nanos() as i128) << (b.strikes - 1).min(10);
        b.not_before = now + hold.min(window / 4).max(1);
    }

    /// A call was accepted: the next 429 starts the hold from its shortest again.
    pub fn on_success(&self) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .strikes = 0;
    }

    /// The current pacing slow-down factor (1.0 = full speed).
    pub fn slowdown(&self) -> f64 {
        let now = self.core.clock.now().as_nanosecond();
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .factor(now, self.rules[0].window_ns)
    }
}

/// Delete `key`'s entries that ended before `now`, keep the running total in step, and return the
/// units that still count.
fn prune(tx: &rusqlite::Transaction<'_>, key: &str, now: i128) -> rusqlite::Result<i128> {
    let now = clamp_i64(now);
    let (gone, rows): (i64, i64) = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(count), 0), COUNT(*) FROM throttle_log
             WHERE key = ?1 AND until_ns < ?2",
        )?
        .query_row(params![key, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rows > 0 {
        tx.prepare_cached("DELETE FROM throttle_log WHERE key = ?1 AND until_ns < ?2")?
            .execute(params![key, now])?;
        tx.prepare_cached("UPDATE throttle_total SET units = units - ?2 WHERE key = ?1")?
            .execute(params![key, gone])?;
    }
    let used: Option<i64> = tx
        .prepare_cached("SELECT units FROM throttle_total WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    Ok(i128::from(used.unwrap_or(0)))
}

/// The end of the entry at which `excess` units have stopped counting (entries taken by end).
fn earliest_free(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    excess: i128,
) -> rusqlite::Result<Option<i128>> {
    let mut st = tx.prepare_cached(
        "SELECT until_ns, count FROM throttle_log WHERE key = ?1 ORDER BY until_ns",
    )?;
    let mut rows = st.query(params![key])?;
    let mut freed: i128 = 0;
    while let Some(r) = rows.next()? {
        let (until, count): (i64, i64) = (r.get(0)?, r.get(1)?);
        freed += i128::from(count);
        if freed >= excess {
            return Ok(Some(i128::from(until)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
