//! The account-wide rate limiter: one per (state store, action), shared by every campaign and
//! every imcast process using the same state: the state directory, or with `[state] url` a
//! PostgreSQL database shared by every host of the account.
//!
//! Owns: the log of admissions, the pacing state, and the in-process back-off after a 429. The
//! log lives behind a small backend interface (`throttle/store.rs`: begin a decision on some keys,
//! ask when units free up, admit, write ends): SQLite in its own file beside the journal,
//! `<state_dir>/throttle.db` ([`DB_FILE`], `throttle/sqlite.rs`), or PostgreSQL
//! (`throttle/pg_store.rs`). The rule below is decided here once, for both.
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
//!   window once the engine completes its [`Permit`] (an error or a transport failure too; the
//!   end is written by the process's next decision, in its transaction, or within [`END_LINGER`],
//!   or by [`Limiter::flush`] when a run stops: meanwhile the fallback, later, holds). A permit
//!   dropped without completion (cancelled future, panic) closes at drop time + one window. The
//!   fallback is what a process killed with `kill -9` leaves: nothing it sent can be stamped after
//!   its timeout, so its entries stop counting then and never block forever.
//! - An entry counts while `until_ns >= now` (its end included, so the proof holds for closed
//!   windows `[t - W, t]` as well); entries past their end are deleted, and a per-key
//!   running total (`throttle_total`) always equals the sum of the key's entries, so a decision is
//!   a few index lookups (an index on `(key, until_ns, count)`), even with 12,000 entries in the
//!   window (a personalized campaign at 12,000 / 60 s).
//! - Decision and record are one transaction that excludes every other decision on the same keys
//!   (SQLite: `BEGIN IMMEDIATE` on the file; PostgreSQL: `SELECT … FOR UPDATE` on the keys' rows):
//!   two processes (an ad-hoc `run` beside the daemon, or runs on other hosts) see each other's
//!   entries and together stay within the limit, and a restarted process does not start with
//!   quota it already spent.
//! - Within one process, waiting admissions queue first-come first-served (an async gate), so a
//!   500-receiver call is not starved by smaller ones and waiting tasks do not all poll SQLite.
//!   The one at the gate decides those queued behind it in the same store call (in order, each
//!   by the rule as if alone, up to the first that must wait): one round trip for several calls
//!   on PostgreSQL ([`Limiter::acquire`]).
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
//! Several hosts (PostgreSQL): each stamps its entries with its own clock, so the hosts' clocks
//! must agree (NTP; the database's clock is not used: time is the injected clock, so tests run on
//! a simulated one). Under a skew of δ between two hosts, one sees the other's entries end up to δ
//! early, so the guarantee holds for windows of `W − δ`: a provider window of `W` could hold more
//! than the limit only if δ > 0, and only calls within δ of its edges. With NTP's milliseconds on a
//! 1 s window that is well inside the provider's own tolerance; a host whose clock is off by
//! seconds should not share the limiter.
//!
//! Errors: a lost connection, a deadlock or serialization failure the server broke is retried at
//! once (a few times); [`Limiter::acquire`] keeps retrying a store that cannot be reached (a
//! database failover) for [`STORE_PATIENCE`] before giving up.
//!
//! Must not: read the system clock (time comes only from the injected [`Clock`]), talk to
//! anything but the state store, or block a runtime thread (store work runs on the blocking pool;
//! [`Limiter::connect`] opens on it too).
//!
//! [`Clock`]: crate::clock::Clock

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use crate::clock::SharedClock;
use crate::config::{Limit, StateStore};
use crate::pg::PgUrl;

mod pg_store;
mod sqlite;
mod store;

pub use sqlite::{create_tables, used_in_window, used_in_windows};
pub use store::StoreError;
use store::{clamp_i64, collapse, AskRule, Decided, End, Store};

/// The limiter's database file inside the state directory.
pub const DB_FILE: &str = "throttle.db";

/// The longest a call may take from its start to its answer or failure, by default: two of the
/// provider client's 30 s request timeouts (it re-signs once after an `InvalidTimestamp`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed between an admission and the request leaving (the journal's in-flight mark);
/// a call that starts later than this pushes its entry's fallback end out ([`Permit::sending`]).
pub const SEND_SLACK: Duration = Duration::from_secs(5);
/// How long [`Limiter::acquire`] keeps retrying a state store it cannot reach.
pub const STORE_PATIENCE: Duration = Duration::from_secs(60);
/// Pacing tolerance: how far behind schedule the limiter may catch up at once (share of window).
const PACE_TOLERANCE: f64 = 1.0 / 20.0;
/// Pacing slow-down right after a 429 (halved rate), ramping back to 1 over one window.
const SLOW_AFTER_429: f64 = 2.0;
/// First hold after a 429; doubles on consecutive 429s, at most a quarter window.
const HOLD_AFTER_429: Duration = Duration::from_millis(250);
/// Immediate retries of a decision after a transient store error.
const TRANSIENT_RETRIES: u32 = 3;
/// How long a completed call's end may wait for this process's next decision to write it (see
/// [`Permit::complete`]).
pub const END_LINGER: Duration = Duration::from_millis(50);
const NS_PER_SEC: i128 = 1_000_000_000;
/// Most admissions one store call decides ([`Limiter::acquire`]).
const MAX_BATCH: usize = 16;

/// Errors from the limiter.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    #[error("throttle state in {place}: {source}")]
    Store { place: String, source: StoreError },
    #[error("one call of {n} exceeds the whole limit of {limit} per window; lower the batch size or raise the limit")]
    TooLarge { n: u64, limit: u64 },
    #[error("throttle worker failed: {0}")]
    Join(String),
}

impl ThrottleError {
    /// A store that may answer again soon (lost connection, failover, deadlock).
    fn is_transient(&self) -> bool {
        matches!(self, ThrottleError::Store { source, .. } if source.is_transient())
    }

    /// The file a full disk refused to grow, when that is what this error is (SQLITE_FULL on
    /// the limiter's SQLite file; its place is that file's path).
    pub fn disk_full(&self) -> Option<&Path> {
        match self {
            ThrottleError::Store {
                place,
                source: StoreError::Sqlite(e),
            } if crate::db::is_disk_full(e) => Some(Path::new(place)),
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// What a limiter and its permits share: the store, the clock, ends not yet written.
struct Core {
    /// Where the log is, for messages (a path, or a URL without its password).
    place: String,
    store: Mutex<Box<dyn Store>>,
    clock: SharedClock,
    /// Ends not yet written. Taken only once written (under the store's lock): on an error they
    /// stay queued, and meanwhile the entries keep their (later) fallback ends.
    pending: Mutex<Vec<End>>,
    /// A write of the pending ends is scheduled ([`Core::flush_later`]).
    flush_scheduled: std::sync::atomic::AtomicBool,
    /// Store calls that decided admissions (tests: how many a batch saved).
    #[cfg(test)]
    decisions: std::sync::atomic::AtomicUsize,
}

impl Core {
    fn new(place: String, store: Box<dyn Store>, clock: SharedClock) -> Core {
        Core {
            place,
            store: Mutex::new(store),
            clock,
            pending: Mutex::new(Vec::new()),
            flush_scheduled: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            decisions: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn err(&self) -> impl Fn(StoreError) -> ThrottleError + '_ {
        move |source| ThrottleError::Store {
            place: self.place.clone(),
            source,
        }
    }

    fn push(&self, e: End) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// The queued ends (one per entry) and how many queue items they cover.
    fn queued(&self) -> (Vec<End>, usize) {
        let q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        (collapse(&q), q.len())
    }

    /// Drop the first `n` queue items: written.
    fn written(&self, n: usize) {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(q.len());
        q.drain(..n);
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Box<dyn Store>> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the pending ends (blocking).
    fn flush(&self) -> Result<(), ThrottleError> {
        let mut attempt = 0;
        loop {
            let mut store = self.store();
            let (ends, n) = self.queued();
            if ends.is_empty() {
                return Ok(());
            }
            match store.write_ends(&ends).map_err(self.err()) {
                Ok(()) => {
                    self.written(n);
                    return Ok(());
                }
                Err(e) if e.is_transient() && attempt < TRANSIENT_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Write the pending ends within [`END_LINGER`], unless a decision of this process carries
    /// them first (a decision writes the queued ends in its own transaction): a sending process
    /// decides again within milliseconds, so a call's end costs no transaction of its own. Until
    /// written, an entry keeps its fallback end, later than its real one: other processes see it
    /// count a little longer, never shorter. Outside a runtime: written now.
    fn flush_later(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        let Ok(h) = tokio::runtime::Handle::try_current() else {
            return self.flush_soon();
        };
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let core = self.clone();
        h.spawn(async move {
            tokio::time::sleep(END_LINGER).await;
            core.flush_scheduled.store(false, Ordering::Release);
            if !core.queued().0.is_empty() {
                core.flush_soon();
            }
        });
    }

    /// [`Core::flush`] on the blocking pool, awaited.
    async fn flush_pool(self: &Arc<Self>) -> Result<(), ThrottleError> {
        let core = self.clone();
        tokio::task::spawn_blocking(move || core.flush())
            .await
            .map_err(|e| ThrottleError::Join(e.to_string()))?
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
    /// The admissions waiting at the gate, in arrival order: the one holding the gate decides
    /// those behind it, up to the first with other rules, in its store call
    /// ([`Limiter::acquire`]).
    lobby: Arc<Mutex<VecDeque<Arc<Waiter>>>>,
}

/// An admission waiting in this process's [`Limiter::acquire`].
struct Waiter {
    n: u64,
    rules: Arc<[Rule]>,
    /// Its permit, once an admission ahead of it decided it in its batch.
    permit: Mutex<Option<Permit>>,
}

impl Waiter {
    fn take(&self) -> Option<Permit> {
        self.permit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A waiter's place in the lobby, left when its acquire ends (returns, fails or is dropped). A
/// permit given to it that it did not take is dropped with it: the entry closes one window
/// after that, as any permit dropped unused.
struct Queued<'a> {
    lobby: &'a Mutex<VecDeque<Arc<Waiter>>>,
    me: Arc<Waiter>,
}

impl<'a> Queued<'a> {
    fn new(lobby: &'a Mutex<VecDeque<Arc<Waiter>>>, me: Arc<Waiter>) -> Queued<'a> {
        lock(lobby).push_back(me.clone());
        Queued { lobby, me }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        lock(self.lobby).retain(|w| !Arc::ptr_eq(w, &self.me));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An admitted call's hold on the window. Complete it with the instant the answer (or error)
/// arrived; dropped without that, its entry closes at drop time + one window.
pub struct Permit {
    core: Arc<Core>,
    at: Timestamp,
    /// (entry id, that rule's key, its window in ns).
    entries: Vec<(i64, String, i128)>,
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
        for (id, key, w) in &self.entries {
            self.core.push(End {
                id: *id,
                key: key.clone(),
                until_ns: fallback_end(now, self.call_timeout_ns, *w),
                close: false,
            });
        }
        if let Err(e) = self.core.flush_pool().await {
            tracing::warn!(error = %e, "limiter: could not extend a late call's entry");
        }
    }

    /// The answer (or error, or transport failure) arrived at `reply`: the call stops counting
    /// one window later. Written with this process's next decision, or on the blocking pool
    /// within [`END_LINGER`] ([`Core::flush_later`]); [`Limiter::flush`] writes every pending end
    /// now (the end of a run).
    pub async fn complete(mut self, reply: Timestamp) {
        self.close_at(reply);
        self.core.flush_later();
    }

    /// [`Permit::complete`] for blocking callers (simulations and tests).
    pub fn complete_blocking(mut self, reply: Timestamp) -> Result<(), ThrottleError> {
        self.close_at(reply);
        self.core.flush()
    }

    fn close_at(&mut self, reply: Timestamp) {
        self.open = false;
        let r = reply.as_nanosecond();
        for (id, key, w) in &self.entries {
            self.core.push(End {
                id: *id,
                key: key.clone(),
                until_ns: r + w,
                close: true,
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

/// The rules a limiter on `key` enforces.
fn rules_for(key: &str, limit: Limit, opts: &LimiterOptions) -> Vec<Rule> {
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
    rules
}

impl Limiter {
    /// Open the limiter `key` (e.g. `"batch"`) on the SQLite limiter database at `db_path`
    /// (`<state_dir>/`[`DB_FILE`]; tests may use any file).
    pub fn open(
        db_path: &Path,
        key: &str,
        limit: Limit,
        opts: LimiterOptions,
        clock: SharedClock,
    ) -> Result<Limiter, ThrottleError> {
        let place = db_path.display().to_string();
        let store = sqlite::SqliteStore::open(db_path).map_err(|source| ThrottleError::Store {
            place: place.clone(),
            source,
        })?;
        Ok(Limiter::with_store(
            Core::new(place, Box::new(store), clock),
            rules_for(key, limit, &opts),
            opts,
        ))
    }

    /// Open the limiter `key` on a PostgreSQL database (blocking: off the async runtime; async
    /// code uses [`Limiter::connect`]).
    pub fn open_postgres(
        url: &PgUrl,
        key: &str,
        limit: Limit,
        opts: LimiterOptions,
        clock: SharedClock,
    ) -> Result<Limiter, ThrottleError> {
        let rules = rules_for(key, limit, &opts);
        let keys: Vec<&str> = rules.iter().map(|r| r.key.as_str()).collect();
        let place = format!("PostgreSQL {}", url.redacted());
        let store = pg_store::PgStore::open(url, &keys).map_err(|source| ThrottleError::Store {
            place: place.clone(),
            source,
        })?;
        Ok(Limiter::with_store(
            Core::new(place, Box::new(store), clock),
            rules,
            opts,
        ))
    }

    /// Open the limiter `key` where `store` keeps shared state: `<state_dir>/`[`DB_FILE`], or the
    /// PostgreSQL database (blocking; async code uses [`Limiter::connect`]).
    pub fn open_store(
        store: &StateStore,
        key: &str,
        limit: Limit,
        opts: LimiterOptions,
        clock: SharedClock,
    ) -> Result<Limiter, ThrottleError> {
        match store {
            StateStore::Sqlite(dir) => Limiter::open(&dir.join(DB_FILE), key, limit, opts, clock),
            StateStore::Postgres(url) => Limiter::open_postgres(url, key, limit, opts, clock),
        }
    }

    /// [`Limiter::open_store`] on the blocking pool.
    pub async fn connect(
        store: &StateStore,
        key: &str,
        limit: Limit,
        opts: LimiterOptions,
        clock: SharedClock,
    ) -> Result<Limiter, ThrottleError> {
        let (store, key) = (store.clone(), key.to_string());
        tokio::task::spawn_blocking(move || Limiter::open_store(&store, &key, limit, opts, clock))
            .await
            .map_err(|e| ThrottleError::Join(e.to_string()))?
    }

    fn with_store(core: Core, rules: Vec<Rule>, opts: LimiterOptions) -> Limiter {
        Limiter {
            core: Arc::new(core),
            rules: rules.into(),
            opts,
            backoff: Arc::new(Mutex::new(Backoff {
                last_429: None,
                not_before: i128::MIN,
                strikes: 0,
            })),
            gate: Arc::new(tokio::sync::Mutex::new(())),
            lobby: Arc::new(Mutex::new(VecDeque::new())),
        }
    }

    /// Also hold every admission to `cap`'s limits (a campaign's own throttle, on its own key),
    /// decided in the same transaction; the account limit still bounds the sum of all
    /// campaigns. `cap` must be on the same state store (its connection is not used).
    pub fn capped_by(mut self, cap: Limiter) -> Limiter {
        let mut rules: Vec<Rule> = self.rules.to_vec();
        rules.extend(cap.rules.iter().cloned());
        self.rules = rules.into();
        self
    }

    /// Write every completed call's end now (on the blocking pool): what [`Permit::complete`]
    /// left for a later decision. The engine calls it when a run stops sending, so the calls'
    /// real ends are in the log before the process leaves.
    pub async fn flush(&self) -> Result<(), ThrottleError> {
        self.core.flush_pool().await
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
    /// With a deadline, gives up (taking nothing) once the wait would pass it. A store that
    /// cannot be reached is retried for [`STORE_PATIENCE`].
    ///
    /// Admissions of this process wait in arrival order at a gate; the one holding it decides,
    /// in the same store call, those waiting behind it up to the first with other rules
    /// ([`MAX_BATCH`] at most), in order, each by the rule exactly as if alone at that instant, up to the first
    /// that must wait ([`store::Store::decide_batch`]). On PostgreSQL that is one round trip
    /// for several calls instead of one each: the limiter's decisions, one at a time, were
    /// what bounded a sending run (1M recipients: 1.25 ms a decision, 2,000 in a row). Those
    /// decided take their permit when their turn at the gate comes, without asking the store.
    pub async fn acquire(
        &self,
        n: u64,
        deadline: Option<Timestamp>,
    ) -> Result<Acquired, ThrottleError> {
        self.check_size(n)?;
        let me = Arc::new(Waiter {
            n,
            rules: self.rules.clone(),
            permit: Mutex::new(None),
        });
        let _queued = Queued::new(&self.lobby, me.clone());
        let _turn = self.gate.lock().await;
        let mut unreachable_since: Option<Timestamp> = None;
        let mut retry_in = Duration::from_millis(100);
        loop {
            if let Some(p) = me.take() {
                return Ok(Acquired::At(p));
            }
            let batch = self.batch_behind(&me);
            let ns: Vec<u64> = batch.iter().map(|w| w.n).collect();
            let lim = self.clone();
            let res = tokio::task::spawn_blocking(move || lim.try_decide(&ns))
                .await
                .map_err(|e| ThrottleError::Join(e.to_string()))?;
            let mut verdicts = match res {
                Ok(v) => v.into_iter(),
                Err(e) if e.is_transient() => {
                    let now = self.core.clock.now();
                    let since = *unreachable_since.get_or_insert(now);
                    if now.duration_since(since).unsigned_abs() >= STORE_PATIENCE {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, retry_in = ?retry_in, "limiter: state store unavailable; retrying");
                    self.core.clock.sleep(retry_in).await;
                    retry_in = (retry_in * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            unreachable_since = None;
            let mine = verdicts.next();
            self.hand_out(&batch[1..], verdicts);
            match mine {
                Some(Ok(p)) => return Ok(Acquired::At(p)),
                Some(Err(wait)) => {
                    if let Some(d) = deadline {
                        let now = self.core.clock.now();
                        if now.as_nanosecond() + wait.as_nanos() as i128 >= d.as_nanosecond() {
                            return Ok(Acquired::Deadline);
                        }
                    }
                    self.core.clock.sleep(wait).await;
                }
                // A store answers at least the first admission; if not, ask again.
                None => {}
            }
        }
    }

    /// `me` then the admissions waiting behind it, in arrival order, up to the first with other
    /// rules (a campaign with its own throttle beside others on one account limiter): that one
    /// decides at its turn, and nobody behind it goes first.
    fn batch_behind(&self, me: &Arc<Waiter>) -> Vec<Arc<Waiter>> {
        let mut batch = vec![me.clone()];
        let lobby = lock(&self.lobby);
        batch.extend(
            lobby
                .iter()
                .filter(|w| !Arc::ptr_eq(w, me))
                .take_while(|w| w.rules == me.rules)
                .take(MAX_BATCH - 1)
                .cloned(),
        );
        batch
    }

    /// Give the admitted of `behind` their permits and take them out of the lobby (a wait
    /// decided for one of them is not kept: it asks again at its turn).
    fn hand_out(
        &self,
        behind: &[Arc<Waiter>],
        verdicts: impl Iterator<Item = Result<Permit, Duration>>,
    ) {
        let mut lobby = lock(&self.lobby);
        for (w, v) in behind.iter().zip(verdicts) {
            if let Ok(p) = v {
                *lock(&w.permit) = Some(p);
                lobby.retain(|x| !Arc::ptr_eq(x, w));
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
    /// A deadlock or lost connection is retried here a few times.
    pub fn try_acquire(&self, n: u64) -> Result<Result<Permit, Duration>, ThrottleError> {
        self.check_size(n)?;
        self.try_decide(&[n])?
            .into_iter()
            .next()
            .ok_or_else(|| self.core.err()(StoreError::Lost))
    }

    /// Admissions of `ns` units decided in order in one store call (blocking): a verdict for
    /// each up to the first that must wait (the rest were not decided). Transient store errors
    /// are retried a few times.
    fn try_decide(&self, ns: &[u64]) -> Result<Vec<Result<Permit, Duration>>, ThrottleError> {
        let mut attempt = 0;
        loop {
            match self.decide(ns) {
                Err(e) if e.is_transient() && attempt < TRANSIENT_RETRIES => {
                    tracing::debug!(error = %e, "limiter: retrying a decision");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// One store call (one transaction on PostgreSQL; rolled back on any error).
    fn decide(&self, ns: &[u64]) -> Result<Vec<Result<Permit, Duration>>, ThrottleError> {
        let now = self.core.clock.now().as_nanosecond();
        let to_wait = |ns: i128| Duration::from_nanos(ns.clamp(1, i128::from(u64::MAX)) as u64);
        let backoff = *self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if backoff.not_before > now {
            return Ok(vec![Err(to_wait(backoff.not_before - now))]);
        }
        let core = &self.core;
        let asks: Vec<Vec<AskRule<'_>>> = ns.iter().map(|&n| self.ask(n, now, backoff)).collect();
        let mut store = core.store();
        let (ends, written) = core.queued();
        #[cfg(test)]
        core.decisions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match store.decide_batch(&asks, now, &ends) {
            Ok(decided) => {
                // The ends were committed with the first decision.
                core.written(written);
                Ok(decided
                    .into_iter()
                    .map(|d| match d {
                        Decided::Wait(ns) => Err(to_wait(ns)),
                        Decided::Admitted(ids) => Ok(self.permit(now, ids)),
                    })
                    .collect())
            }
            Err(e) => {
                store.rollback();
                Err(core.err()(e))
            }
        }
    }

    /// The permit of an admission at `now` whose entries got `ids` (one per rule, in order).
    fn permit(&self, now: i128, ids: Vec<i64>) -> Permit {
        Permit {
            core: self.core.clone(),
            at: Timestamp::from_nanosecond(now).unwrap_or(Timestamp::UNIX_EPOCH),
            entries: self
                .rules
                .iter()
                .zip(ids)
                .map(|(rule, id)| (id, rule.key.clone(), rule.window_ns))
                .collect(),
            call_timeout_ns: self.opts.call_timeout.as_nanos() as i128,
            open: true,
        }
    }

    /// What an admission of `n` units asks of each rule at `now`.
    fn ask(&self, n: u64, now: i128, backoff: Backoff) -> Vec<AskRule<'_>> {
        let call_timeout_ns = self.opts.call_timeout.as_nanos() as i128;
        self.rules
            .iter()
            .map(|rule| {
                let need = rule.units(n) as i128;
                let pace = rule.pace.then(|| {
                    let unit = rule.window_ns as f64 / rule.limit.max(1) as f64
                        * backoff.factor(now, rule.window_ns);
                    let this_call = (unit * need as f64) as i128;
                    // At least two calls' worth: calls that are a large share of the limit are
                    // already spread by the log, and their answers, which free the window, come
                    // back at random intervals; pacing them further would only waste quota.
                    let tolerance =
                        ((rule.window_ns as f64 * PACE_TOLERANCE) as i128).max(2 * this_call);
                    (clamp_i64(this_call), clamp_i64(tolerance))
                });
                AskRule {
                    key: &rule.key,
                    need: clamp_i64(need),
                    limit: clamp_i64(i128::from(rule.limit)),
                    window_ns: clamp_i64(rule.window_ns),
                    pace,
                    until_ns: clamp_i64(fallback_end(now, call_timeout_ns, rule.window_ns)),
                }
            })
            .collect()
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

/// Reads the units the account limiter counts now (read-only: the daemon's metrics), wherever its
/// log is: `<state_dir>/`[`DB_FILE`] ([`used_in_windows`]) or the PostgreSQL store, on one
/// connection kept between reads (reopened when lost). Blocking: call it off the async runtime.
pub struct UsageReader {
    store: StateStore,
    pg: Option<crate::pg::OffRuntime<postgres::Client>>,
}

impl UsageReader {
    pub fn new(store: StateStore) -> UsageReader {
        UsageReader { store, pg: None }
    }

    /// Units each of `keys` holds in its window at `now` (an entry counts while its end is not
    /// before `now`, as the rule counts it). No log yet (nothing sent on this store): 0s.
    pub fn used(&mut self, keys: &[&str], now: Timestamp) -> Result<Vec<u64>, StoreError> {
        let url = match &self.store {
            StateStore::Sqlite(dir) => return Ok(used_in_windows(&dir.join(DB_FILE), keys, now)?),
            StateStore::Postgres(url) => url.clone(),
        };
        let client = match self.pg.take() {
            Some(c) if !c.is_closed() => self.pg.insert(c),
            _ => self
                .pg
                .insert(crate::pg::OffRuntime::new(crate::pg::connect(&url)?)),
        };
        let want: Vec<&str> = keys.to_vec();
        let rows = match client.query(
            "SELECT key, COALESCE(SUM(count), 0)::bigint FROM imcast_throttle_log
             WHERE key = ANY($1) AND until_ns >= $2 GROUP BY key",
            &[&want, &store::clamp_i64(now.as_nanosecond())],
        ) {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
            Err(e) => {
                if e.is_closed() {
                    self.pg = None;
                }
                return Err(e.into());
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let mut used = 0i64;
            for r in &rows {
                if r.try_get::<_, &str>(0)? == *key {
                    used = r.try_get(1)?;
                }
            }
            out.push(used.max(0) as u64);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
