//! The journal: durable run state in SQLite at `<state_dir>/imcast.db` (the one state database;
//! other stages add tables through [`Journal::connection`] and [`Journal::migrate_extra`]).
//!
//! Owns: runs (one per campaign send, keyed by campaign + optional occurrence, recording the plan
//! hash, status, flags, audit), calls (one row per provider call: planned → in_flight → done |
//! unknown), recipients (one row per audience row, with exactly one status) with per-status
//! counters (`run_counts`), and control requests (pause/resume/cancel per campaign). The limiter
//! keeps its own file beside it (see `throttle`).
//!
//! Invariants: WAL with `synchronous=FULL`; an in-flight mark is committed before its request
//! leaves; a call's per-recipient outcomes are committed in the same transaction that marks it
//! done; after a crash an in-flight call without an answer makes its receivers `unknown` (except
//! for SendMessage, whose ClientMsgId makes a resend safe). A recipient refused with
//! FailedReceiver stays `pending` with its refusals counted until a later call resends it (see
//! "re-queued receivers" below). At most one unfinished
//! (running/paused/interrupted) non-test run exists per (campaign, occurrence): `open_run` decides
//! and acts in one IMMEDIATE transaction and a partial unique index (`runs_one_unfinished`) makes
//! the database refuse a second one; a refusal is [`JournalError::Busy`] (exit 6). A run's lease
//! (`runs.owner` = `host:pid:instance`, one per open `Journal`) is checked and taken in one
//! transaction; it is live while that process runs (and, in this process, while that journal is
//! open). Every method is synchronous: async callers run it with `spawn_blocking`. A failed write
//! is returned, never swallowed — the engine stops the run on it. The journal never talks to the
//! network.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::config::Limit;
use crate::exit::Exit;

/// The database file name inside the state directory.
pub const DB_FILE: &str = "imcast.db";

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot create state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "campaign {campaign:?} changed since its unfinished run {run_id} started (plan hash {old} → {new}); \
         nothing was sent. Revert the change and run again to resume, pass --continue-changed to continue \
         with the new content (recipients already sent are skipped), or --new-run to send to everyone again"
    )]
    Changed {
        campaign: String,
        run_id: String,
        old: String,
        new: String,
    },
    #[error("run {run_id} of campaign {campaign:?} is being sent by another imcast process ({owner}); wait for it or stop it")]
    Busy {
        campaign: String,
        run_id: String,
        owner: String,
    },
    #[error("no run {0} in the journal")]
    NoRun(String),
    #[error("reading the audience to seed the run: {0}")]
    Seed(String),
    #[error("journal holds a value it does not understand: {0}")]
    Corrupt(String),
    /// A grouped write (several calls' marks/outcomes in one transaction) failed.
    #[error("journal write failed: {0}")]
    Write(String),
}

impl JournalError {
    /// The exit code this error means.
    pub fn exit(&self) -> Exit {
        match self {
            JournalError::Changed { .. } => Exit::Changed,
            JournalError::Busy { .. } => Exit::Busy,
            JournalError::Db { source, .. }
                if is_busy(source) || is_unfinished_conflict(source) =>
            {
                Exit::Busy
            }
            JournalError::NoRun(_) | JournalError::Seed(_) => Exit::Invalid,
            _ => Exit::Internal,
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked
    )
}

/// The index that keeps at most one unfinished non-test run per (campaign, occurrence).
const UNFINISHED_INDEX: &str = "runs_one_unfinished";

/// Whether `e` is the database refusing a second unfinished run of a campaign occurrence
/// (another process created or reopened one first).
fn is_unfinished_conflict(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, Some(msg))
            if f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains(UNFINISHED_INDEX)
    )
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),* } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = JournalError;
            fn from_str(s: &str) -> Result<Self, JournalError> {
                match s { $($s => Ok($name::$var),)* other => Err(JournalError::Corrupt(format!("{} {other:?}", stringify!($name)))) }
            }
        }
    };
}

str_enum!(
    /// A run's status.
    RunStatus {
        Running = "running",
        Paused = "paused",
        Finished = "finished",
        Cancelled = "cancelled",
        Interrupted = "interrupted",
    }
);

str_enum!(
    /// A recipient's status: exactly one per audience row; `pending` only while a run is unfinished.
    RecipientStatus {
        Sent = "sent",
        Failed = "failed",
        Unknown = "unknown",
        NotOnline = "not_online",
        Invalid = "invalid",
        Duplicate = "duplicate",
        Suppressed = "suppressed",
        Expired = "expired",
        Cancelled = "cancelled",
        Pending = "pending",
    }
);

str_enum!(
    /// A call's state.
    CallState {
        Planned = "planned",
        InFlight = "in_flight",
        Done = "done",
        Unknown = "unknown",
    }
);

str_enum!(
    /// A control request for a campaign (written by `imcast pause|resume|cancel`, read by runners).
    ControlRequest {
        Pause = "pause",
        Resume = "resume",
        Cancel = "cancel",
    }
);

impl RunStatus {
    /// Running, paused or interrupted: `run` resumes it.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Paused | RunStatus::Interrupted
        )
    }
}

/// Flags a run was started with (stored as JSON, shown in the audit block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFlags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_run: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_changed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend_unknown: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub yes: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mock: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_to: Vec<u64>,
}

impl RunFlags {
    /// The flags that can cause duplicates or skip safety checks.
    pub fn risky(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.new_run {
            v.push("--new-run");
        }
        if self.continue_changed {
            v.push("--continue-changed");
        }
        if self.resend_unknown {
            v.push("--resend-unknown");
        }
        if self.yes {
            v.push("--yes");
        }
        v
    }
}

/// One run as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub id: String,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub plan_hash: String,
    pub content_key: Option<String>,
    pub action: Action,
    pub status: RunStatus,
    pub flags: RunFlags,
    pub is_test: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub stop_reason: Option<String>,
    pub audit: serde_json::Value,
    pub limit: Limit,
    pub total_calls: u64,
    pub continued_from: Option<String>,
}

/// What a new run records.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Set to choose the id (tests); otherwise generated from the time and a random suffix.
    pub id: Option<String>,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub plan_hash: String,
    /// Hash of everything that decides what is sent *except* which ids are suppressed; when both
    /// the old and the new plan provide it and only suppressions were added, a resume applies them.
    pub content_key: Option<String>,
    pub action: Action,
    pub flags: RunFlags,
    pub is_test: bool,
    pub audit: serde_json::Value,
    pub limit: Limit,
    pub total_calls: u64,
}

/// The audience rows a run is seeded from (called at most once per `open_run`).
pub type SeedRows<'a, E> = Box<dyn Iterator<Item = Result<SeedRow, E>> + Send + 'a>;

/// Call `f` with every item of `items`, produced on another thread in batches (reading and
/// rendering the audience again overlaps with writing it to the database). Stops at `f`'s first
/// error; the producer then stops too.
fn consume_in_batches<T: Send>(
    items: impl Iterator<Item = T> + Send,
    mut f: impl FnMut(T) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    const BATCH: usize = 1024;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in items {
                batch.push(item);
                if batch.len() == BATCH
                    && tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    return;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
        });
        for batch in rx {
            for item in batch {
                f(item)?;
            }
        }
        Ok(())
    })
}

/// One audience row to seed a run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRow {
    pub line: u64,
    pub id: Option<u64>,
    pub raw_id: String,
    /// Pending (valid), or final: invalid / duplicate / suppressed.
    pub status: RecipientStatus,
    pub call_seq: Option<u64>,
    pub variant: Option<String>,
    /// Why invalid / which list suppressed / first line of a duplicate.
    pub note: Option<String>,
}

/// One recipient row as stored (the report's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientRow {
    pub line: u64,
    pub id: Option<u64>,
    pub raw_id: String,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub attempts: u32,
    pub call: Option<u64>,
    pub variant: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub detail: Option<String>,
    pub time: Option<String>,
}

/// A receiver still to send, as [`Journal::sendable_detail`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sendable {
    pub id: u64,
    /// Times the provider refused it (> 0 on a `pending` row: re-queued).
    pub refusals: u32,
    /// `pending` (else `unknown`, resent with --resend-unknown).
    pub pending: bool,
}

/// One recipient row borrowed from the database (see [`Journal::for_each_recipient_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientRef<'a> {
    pub line: u64,
    pub id: Option<u64>,
    /// None when the raw id is `id` written in decimal.
    pub raw_id: Option<&'a str>,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub attempts: u32,
    pub call: Option<u64>,
    pub variant: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// The last update (the run's start when the row was never updated).
    pub time: &'a str,
}

impl RecipientRef<'_> {
    /// The owned row, as [`Journal::for_each_recipient`] gives it.
    pub fn to_row(&self) -> RecipientRow {
        RecipientRow {
            line: self.line,
            id: self.id,
            raw_id: match self.raw_id {
                Some(r) => r.to_string(),
                None => self.id.map(|v| v.to_string()).unwrap_or_default(),
            },
            status: self.status,
            message_id: self.message_id,
            attempts: self.attempts,
            call: self.call,
            variant: self.variant.map(str::to_string),
            error_code: self.error_code.map(str::to_string),
            error_message: self.error_message.map(str::to_string),
            detail: self.detail.map(str::to_string),
            time: Some(self.time.to_string()),
        }
    }
}

/// A per-recipient outcome of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub id: u64,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Extra detail (P2P: the per-user results as JSON).
    pub detail: Option<String>,
}

/// A call attempt's in-flight mark.
#[derive(Debug, Clone)]
pub struct Mark {
    pub run_id: String,
    pub seq: u64,
    pub variant: String,
    pub receivers: Vec<u64>,
    pub client_msg_id: Option<String>,
    pub now: Timestamp,
}

/// A call's per-recipient outcomes and final state.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub seq: u64,
    pub state: CallState,
    pub updates: Vec<RecipientUpdate>,
    /// (code, message)
    pub error: Option<(String, String)>,
    pub now: Timestamp,
}

/// One write of a group commit.
#[derive(Debug, Clone)]
pub enum Write {
    Mark(Mark),
    Outcome(Outcome),
}

/// How [`Journal::open_run`] should treat an existing run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    pub new_run: bool,
    pub continue_changed: bool,
    pub resend_unknown: bool,
}

/// What [`Journal::open_run`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// A new run was created and seeded.
    Created(RunInfo),
    /// The unfinished run was resumed; `recovered` in-flight calls were settled first.
    Resumed { run: RunInfo, recovered: Recovered },
    /// The unfinished run continued after its plan only gained suppressed ids (now applied).
    ResumedWithSuppressions {
        run: RunInfo,
        recovered: Recovered,
        newly_suppressed: u64,
    },
    /// `--continue-changed`: a new run continuing `from`, skipping recipients it already sent.
    Continued {
        run: RunInfo,
        from: String,
        skipped: u64,
    },
    /// The latest run already finished and nothing asks to send again.
    AlreadyFinished(RunInfo),
}

impl Opened {
    pub fn run(&self) -> &RunInfo {
        match self {
            Opened::Created(r)
            | Opened::Resumed { run: r, .. }
            | Opened::ResumedWithSuppressions { run: r, .. }
            | Opened::Continued { run: r, .. }
            | Opened::AlreadyFinished(r) => r,
        }
    }
}

/// In-flight calls settled by crash recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Calls whose receivers became `unknown`.
    pub unknown_calls: u64,
    pub unknown_recipients: u64,
    /// SendMessage calls put back to planned (safe to resend with the same ClientMsgId).
    pub replanned_calls: u64,
}

/// The state database.
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    /// The lease id this journal writes into `runs.owner` (see [`Journal::claim`]).
    owner: String,
    /// This journal's entry in [`LIVE_LEASES`].
    instance: u64,
}

impl Drop for Journal {
    fn drop(&mut self) {
        live_leases().remove(&self.instance);
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: the core tables.
    "CREATE TABLE runs(
        id TEXT PRIMARY KEY,
        campaign TEXT NOT NULL,
        occurrence TEXT,
        plan_hash TEXT NOT NULL,
        content_key TEXT,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        flags TEXT NOT NULL,
        is_test INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        finished_at TEXT,
        stop_reason TEXT,
        audit TEXT NOT NULL,
        limit_count INTEGER NOT NULL,
        limit_window_ms INTEGER NOT NULL,
        total_calls INTEGER NOT NULL,
        continued_from TEXT,
        owner TEXT
     );
     CREATE INDEX runs_campaign ON runs(campaign, created_at);
     CREATE TABLE calls(
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        variant TEXT NOT NULL,
        receivers TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        client_msg_id TEXT,
        error_code TEXT,
        error_message TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY(run_id, seq)
     );
     CREATE TABLE recipients(
        run_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        id INTEGER,
        raw_id TEXT NOT NULL,
        status TEXT NOT NULL,
        message_id INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        call_seq INTEGER,
        variant TEXT,
        error_code TEXT,
        error_message TEXT,
        detail TEXT,
        updated_at TEXT,
        PRIMARY KEY(run_id, line)
     );
     CREATE INDEX recipients_id ON recipients(run_id, id);
     CREATE TABLE control(
        campaign TEXT PRIMARY KEY,
        request TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        requested_by TEXT
     );
     CREATE TABLE extra_migrations(component TEXT PRIMARY KEY, version INTEGER NOT NULL);",
    // 2: recipients per status and run, kept by every statement that changes a status (so
    // counting a run of millions never scans its rows).
    "CREATE TABLE run_counts(
        run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY(run_id, status)
     ) WITHOUT ROWID;
     INSERT INTO run_counts(run_id, status, n)
        SELECT run_id, status, COUNT(*) FROM recipients GROUP BY run_id, status;",
    // 3: recipients keyed by an integer: `rk` = the run's integer `key` << 32 | line (the rowid
    // itself, so a run's rows are one contiguous range of the table b-tree in audience order and
    // no key repeats the 21-byte text run id); `raw_id` is NULL when it is `id` written in
    // decimal. A NULL `updated_at` reads as the run's start time.
    "ALTER TABLE runs ADD COLUMN key INTEGER;
     UPDATE runs SET key = rowid;
     CREATE UNIQUE INDEX runs_key ON runs(key);
     CREATE TABLE recipients_3(
        rk INTEGER PRIMARY KEY,
        id INTEGER,
        raw_id TEXT,
        status TEXT NOT NULL,
        message_id INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        call_seq INTEGER,
        variant TEXT,
        error_code TEXT,
        error_message TEXT,
        detail TEXT,
        updated_at TEXT
     );
     INSERT INTO recipients_3(rk, id, raw_id, status, message_id, attempts, call_seq, variant,
                              error_code, error_message, detail, updated_at)
        SELECT (r.key << 32) | x.line, x.id, x.raw_id, x.status, x.message_id, x.attempts, x.call_seq,
               x.variant, x.error_code, x.error_message, x.detail, x.updated_at
        FROM recipients x JOIN runs r ON r.id = x.run_id;
     DROP TABLE recipients;
     ALTER TABLE recipients_3 RENAME TO recipients;
     CREATE INDEX recipients_id ON recipients(id);",
    // 4 (re-queue):
    // `recipients.refusals`: how many times the provider refused a recipient with
    // FailedReceiver. A `pending` row with refusals > 0 waits to be sent again in a later call of
    // its Content; the re-queue budget (`retry.max_attempts`) counts these, not 429s or
    // not-processed retries. `runs.first_resend_seq`: calls numbered from here on resend refused
    // recipients (set once, before the first such call; every plan call's number is below it).
    "ALTER TABLE recipients ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN first_resend_seq INTEGER;",
    // 5: at most one unfinished (running/paused/interrupted) non-test run per campaign and
    // occurrence, enforced by the database. Before it is created, older duplicates (left by the
    // race this closes) are cancelled: see `end_duplicate_unfinished_runs`.
    "CREATE UNIQUE INDEX runs_one_unfinished ON runs(campaign, COALESCE(occurrence, ''))
        WHERE is_test = 0 AND status IN ('running', 'paused', 'interrupted');",
];

/// The migration (index into [`MIGRATIONS`]) that adds [`UNFINISHED_INDEX`].
const UNFINISHED_INDEX_MIGRATION: usize = 4;

/// Before [`UNFINISHED_INDEX`] exists, a database may hold several unfinished runs of one
/// campaign occurrence (two processes started at once). The newest of each group stays (it is
/// what `run` resumed before the index existed); the older ones are recovered like a crash (an
/// in-flight call's receivers become `unknown`) and cancelled: pending recipients `cancelled`,
/// the run `cancelled` with a stop reason naming the run kept. Returns how many were cancelled.
fn end_duplicate_unfinished_runs(conn: &Connection, path: &Path) -> Result<u64, JournalError> {
    let db = |source| JournalError::Db {
        path: path.to_path_buf(),
        source,
    };
    let older: Vec<(String, String, String, String)> = {
        let mut st = conn
            .prepare(
                "SELECT r.id, r.action, r.updated_at,
                    (SELECT n.id FROM runs n
                      WHERE n.campaign = r.campaign AND COALESCE(n.occurrence, '') = COALESCE(r.occurrence, '')
                        AND n.is_test = 0 AND n.status IN ('running', 'paused', 'interrupted')
                      ORDER BY n.created_at DESC, n.rowid DESC LIMIT 1) AS kept
                 FROM runs r
                 WHERE r.is_test = 0 AND r.status IN ('running', 'paused', 'interrupted')",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(db)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db)?;
        rows.into_iter()
            .filter(|(id, _, _, kept)| id != kept)
            .collect()
    };
    let ops = Ops {
        conn,
        path,
        owner: "",
    };
    for (id, action, updated_at, kept) in &older {
        let action = parse_action(action)?;
        let at = parse_ts(updated_at)?;
        ops.recover(id, action)?;
        ops.set_pending(
            id,
            RecipientStatus::Cancelled,
            "the run was cancelled: another unfinished run of the campaign was kept",
            at,
        )?;
        conn.execute(
            "UPDATE runs SET status = 'cancelled', finished_at = updated_at, owner = NULL,
                 stop_reason = ?2
             WHERE id = ?1",
            params![
                id,
                format!(
                    "cancelled when the journal was upgraded: run {kept} of the same campaign was \
                     also unfinished, and only one unfinished run per campaign is kept"
                )
            ],
        )
        .map_err(db)?;
    }
    Ok(older.len() as u64)
}

/// Largest audience line a recipient key holds (`rk` = run key << 32 | line).
const MAX_LINE: u64 = u32::MAX as u64;

/// The `rk` range of a run's recipient rows: `(key << 32, key << 32 | MAX_LINE)`.
fn rk_range(key: i64) -> (i64, i64) {
    (key << 32, (key << 32) | MAX_LINE as i64)
}

/// A run's integer key (`runs.key`), if the run exists.
fn run_key(conn: &Connection, run_id: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT key FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| r.get(0))
        .optional()
}

/// Move `n` recipients of a run from status `from` to `to` in the per-status counters
/// (`from = None` adds new rows). Called in the same transaction as the change it counts.
fn count_move(
    tx: &Connection,
    run_id: &str,
    from: Option<RecipientStatus>,
    to: RecipientStatus,
    n: u64,
) -> rusqlite::Result<()> {
    if n == 0 || from == Some(to) {
        return Ok(());
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO run_counts(run_id, status, n) VALUES (?1, ?2, ?3)
         ON CONFLICT(run_id, status) DO UPDATE SET n = n + excluded.n",
    )?;
    st.execute(params![run_id, to.as_str(), n as i64])?;
    if let Some(from) = from {
        st.execute(params![run_id, from.as_str(), -(n as i64)])?;
    }
    Ok(())
}

/// Ids per multi-row statement (well under SQLite's parameter limit).
const CHUNK: usize = 500;

/// `?first, ?first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ts(t: Timestamp) -> String {
    t.to_string()
}

fn parse_ts(s: &str) -> Result<Timestamp, JournalError> {
    s.parse()
        .map_err(|e| JournalError::Corrupt(format!("time {s:?}: {e}")))
}

/// Journals open in this process, by instance number: a lease written by this process is live
/// exactly while the journal that took it is open (two journals in one process — the daemon's
/// runs, tests — are two lease holders, like two processes).
fn live_leases() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    static LIVE: std::sync::Mutex<std::collections::BTreeSet<u64>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new lease id for a journal of this process: `host:pid:instance`, registered live.
fn new_owner() -> (String, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    live_leases().insert(instance);
    (
        format!("{}:{}:{instance}", hostname(), std::process::id()),
        instance,
    )
}

/// A lease id's parts: host, pid and (since leases are per journal) the journal instance.
/// Older releases wrote `host:pid`.
fn parse_owner(owner: &str) -> Option<(&str, u32, Option<u64>)> {
    let (rest, last) = owner.rsplit_once(':')?;
    if let Some((host, pid)) = rest.rsplit_once(':') {
        if let (Ok(pid), Ok(instance)) = (pid.parse::<u32>(), last.parse::<u64>()) {
            return Some((host, pid, Some(instance)));
        }
    }
    Some((rest, last.parse().ok()?, None))
}

/// A lease holder as people read it: `pid 4242 on host-a`.
fn describe_owner(owner: &str) -> String {
    match parse_owner(owner) {
        Some((host, pid, _)) => format!("pid {pid} on {host}"),
        None => owner.to_string(),
    }
}

/// The machine's name (for the run lease and the audit block).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Is the lease holder `owner` a live process? Only decidable on this host; another host's lease
/// counts as live.
fn owner_alive(owner: &str) -> bool {
    let Some((host, pid, instance)) = parse_owner(owner) else {
        return false;
    };
    if host != hostname() {
        return true;
    }
    if pid == std::process::id() {
        // This process: live while the journal that took it is open. A lease in the old
        // `host:pid` form with our pid was written by an earlier process that had this pid.
        return instance.is_some_and(|i| live_leases().contains(&i));
    }
    if cfg!(target_os = "linux") {
        // A process killed but not yet reaped by its parent (a zombie) sends nothing more.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => Path::new(&format!("/proc/{pid}")).exists(),
        }
    } else {
        true
    }
}

impl Journal {
    /// Open (creating) `<state_dir>/imcast.db`; the directory is created owner-only.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        create_private_dir(state_dir)?;
        Self::open_path(&state_dir.join(DB_FILE))
    }

    /// Open (creating) the database file at `path` and bring its schema up to date.
    pub fn open_path(path: &Path) -> Result<Journal, JournalError> {
        let db = |source| JournalError::Db {
            path: path.to_path_buf(),
            source,
        };
        let conn = crate::db::open(path, "FULL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        // Up to 16 MiB of page cache (grows only as used): a run's rows are appended and updated
        // in audience order, so the hot pages are few; the id index is what a larger audience
        // touches all over. Bounded, whatever the audience size.
        conn.pragma_update(None, "cache_size", -16384).map_err(db)?;
        let (owner, instance) = new_owner();
        let mut j = Journal {
            conn,
            path: path.to_path_buf(),
            owner,
            instance,
        };
        j.migrate()?;
        Ok(j)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection, for other stages' own tables (same file, same pragmas).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        for (i, m) in MIGRATIONS.iter().enumerate() {
            if (i as i64) >= version {
                if i == UNFINISHED_INDEX_MIGRATION {
                    end_duplicate_unfinished_runs(&tx, &path)?;
                }
                tx.execute_batch(m).map_err(db)?;
            }
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Apply another stage's migrations once each: `steps[i]` runs when `component`'s recorded
    /// version is ≤ i.
    pub fn migrate_extra(&mut self, component: &str, steps: &[&str]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let v: i64 = tx
            .query_row(
                "SELECT version FROM extra_migrations WHERE component = ?1",
                [component],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .unwrap_or(0);
        for (i, s) in steps.iter().enumerate() {
            if (i as i64) >= v {
                tx.execute_batch(s).map_err(db)?;
            }
        }
        tx.execute(
            "INSERT INTO extra_migrations(component, version) VALUES (?1, ?2)
             ON CONFLICT(component) DO UPDATE SET version = excluded.version",
            params![component, steps.len() as i64],
        )
        .map_err(db)?;
        tx.commit().map_err(db)
    }

    // ---- runs -------------------------------------------------------------------------------

    fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
        Ok(RawRun {
            id: r.get("id")?,
            campaign: r.get("campaign")?,
            occurrence: r.get("occurrence")?,
            plan_hash: r.get("plan_hash")?,
            content_key: r.get("content_key")?,
            action: r.get("action")?,
            status: r.get("status")?,
            flags: r.get("flags")?,
            is_test: r.get("is_test")?,
            created_at: r.get("created_at")?,
            updated_at: r.get("updated_at")?,
            finished_at: r.get("finished_at")?,
            stop_reason: r.get("stop_reason")?,
            audit: r.get("audit")?,
            limit_count: r.get("limit_count")?,
            limit_window_ms: r.get("limit_window_ms")?,
            total_calls: r.get("total_calls")?,
            continued_from: r.get("continued_from")?,
        })
    }

    /// Statements on this journal's own connection (each commits by itself unless the caller
    /// opened a transaction).
    fn ops(&self) -> Ops<'_> {
        Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
        }
    }

    /// One run by id.
    pub fn run(&self, id: &str) -> Result<Option<RunInfo>, JournalError> {
        self.ops().run(id)
    }

    /// The latest run of a campaign (tests excluded unless asked for).
    pub fn latest_run(
        &self,
        campaign: &str,
        include_tests: bool,
    ) -> Result<Option<RunInfo>, JournalError> {
        let raw = self
            .conn
            .query_row(
                "SELECT * FROM runs WHERE campaign = ?1 AND (?2 OR is_test = 0)
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                params![campaign, include_tests],
                Self::run_from_row,
            )
            .optional()
            .map_err(self.db())?;
        raw.map(RawRun::into_info).transpose()
    }

    /// The unfinished (running/paused/interrupted) non-test run of a campaign occurrence (the
    /// database holds at most one).
    pub fn unfinished_run(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        self.ops().unfinished_run(campaign, occurrence)
    }

    /// All runs of a campaign, newest first.
    pub fn runs(&self, campaign: &str) -> Result<Vec<RunInfo>, JournalError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM runs WHERE campaign = ?1 ORDER BY created_at DESC, rowid DESC")
            .map_err(self.db())?;
        let raws = st
            .query_map([campaign], Self::run_from_row)
            .map_err(self.db())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.db())?;
        raws.into_iter().map(RawRun::into_info).collect()
    }

    /// Decide and do what `imcast run` does with the journal: create, resume, apply added
    /// suppressions, continue a changed run, reopen a finished run for `--resend-unknown`, or
    /// report that the latest run finished. `rows` is called at most once, to seed (or check)
    /// recipients.
    ///
    /// The decision and everything it does (taking the lease, settling in-flight calls,
    /// cancelling a superseded run, inserting and seeding the new run) are one IMMEDIATE
    /// transaction: a second process deciding at the same moment waits for it, then sees this
    /// run and its live lease ([`JournalError::Busy`], exit 6). The unique index on unfinished
    /// runs backs this up; if it refuses a run, that is `Busy` too.
    pub fn open_run<'r, E: fmt::Display + Send>(
        &mut self,
        new: &NewRun,
        opts: ResumeOptions,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let ops = Ops {
            conn: &tx,
            path: &self.path,
            owner: &self.owner,
        };
        match ops.open_run(new, opts, rows, now) {
            Ok(opened) => {
                tx.commit().map_err(db)?;
                Ok(opened)
            }
            Err(e) => {
                drop(tx);
                Err(self.conflict_as_busy(e, &new.campaign, new.occurrence.as_deref()))
            }
        }
    }

    /// The unique index refused a second unfinished run: say who holds the one there is.
    fn conflict_as_busy(
        &self,
        e: JournalError,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> JournalError {
        let JournalError::Db { source, .. } = &e else {
            return e;
        };
        if !is_unfinished_conflict(source) {
            return e;
        }
        let run = self.unfinished_run(campaign, occurrence).ok().flatten();
        let owner = run
            .as_ref()
            .and_then(|r| self.ops().owner_of(&r.id).ok().flatten());
        JournalError::Busy {
            campaign: campaign.to_string(),
            run_id: run.map(|r| r.id).unwrap_or_else(|| "(just created)".into()),
            owner: owner
                .as_deref()
                .map(describe_owner)
                .unwrap_or_else(|| "another process".into()),
        }
    }

    /// Take the run's lease for this journal, unless a live holder has it: the check and the
    /// write are one IMMEDIATE transaction, so of two processes claiming at once exactly one
    /// gets it. A dead holder's lease (its process gone, or its journal closed in this process)
    /// is taken over; another host's lease counts as live.
    pub fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(self.db())?;
        let ops = Ops {
            conn: &tx,
            path: &self.path,
            owner: &self.owner,
        };
        ops.claim(run, now)?;
        tx.commit().map_err(self.db())
    }

    /// Give up the run's lease (if this journal holds it).
    pub fn release(&self, run_id: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE runs SET owner = NULL WHERE id = ?1 AND owner = ?2",
                params![run_id, self.owner],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// Set a run's status (and why it stopped); finished/cancelled also set finished_at and release.
    pub fn set_status(
        &self,
        run_id: &str,
        status: RunStatus,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.ops().set_status(run_id, status, reason, now)
    }

    /// Settle in-flight calls left by a crash: their receivers become `unknown`, except for
    /// SendMessage (conversation) calls, which go back to planned (ClientMsgId makes a resend safe).
    pub fn recover(&mut self, run_id: &str, action: Action) -> Result<Recovered, JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let rec = Ops {
            conn: &tx,
            path: &self.path,
            owner: &self.owner,
        }
        .recover(run_id, action)?;
        tx.commit().map_err(db)?;
        Ok(rec)
    }
}

/// An action's stored name.
fn parse_action(s: &str) -> Result<Action, JournalError> {
    Action::ALL
        .iter()
        .copied()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| JournalError::Corrupt(format!("action {s:?}")))
}

/// The journal's run statements on one connection: inside [`Journal::open_run`]'s transaction
/// (so a decision and what it does commit together), in a migration, or on the journal's own
/// connection. Never begins or commits a transaction itself.
struct Ops<'a> {
    conn: &'a Connection,
    path: &'a Path,
    /// The lease id of the journal these statements act for.
    owner: &'a str,
}

impl Ops<'_> {
    fn db(&self) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
        move |source| JournalError::Db {
            path: self.path.to_path_buf(),
            source,
        }
    }

    fn run(&self, id: &str) -> Result<Option<RunInfo>, JournalError> {
        let raw = self
            .conn
            .prepare_cached("SELECT * FROM runs WHERE id = ?1")
            .map_err(self.db())?
            .query_row([id], Journal::run_from_row)
            .optional()
            .map_err(self.db())?;
        raw.map(RawRun::into_info).transpose()
    }

    fn existing_run(&self, id: &str) -> Result<RunInfo, JournalError> {
        self.run(id)?
            .ok_or_else(|| JournalError::NoRun(id.to_string()))
    }

    fn owner_of(&self, run_id: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn
            .query_row("SELECT owner FROM runs WHERE id = ?1", [run_id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(self.db())?
            .flatten())
    }

    fn unfinished_run(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        let raw = self
            .conn
            .prepare_cached(
                "SELECT * FROM runs WHERE campaign = ?1 AND occurrence IS ?2 AND is_test = 0
                   AND status IN ('running','paused','interrupted')
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            )
            .map_err(self.db())?
            .query_row(params![campaign, occurrence], Journal::run_from_row)
            .optional()
            .map_err(self.db())?;
        raw.map(RawRun::into_info).transpose()
    }

    /// The latest non-test run of a campaign occurrence (`None` = runs started by `imcast run`).
    fn latest_of_occurrence(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        let raw = self
            .conn
            .prepare_cached(
                "SELECT * FROM runs WHERE campaign = ?1 AND occurrence IS ?2 AND is_test = 0
                 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            )
            .map_err(self.db())?
            .query_row(params![campaign, occurrence], Journal::run_from_row)
            .optional()
            .map_err(self.db())?;
        raw.map(RawRun::into_info).transpose()
    }

    fn count_status(&self, run_id: &str, status: RecipientStatus) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(n), 0) FROM run_counts WHERE run_id = ?1 AND status = ?2",
            )
            .map_err(self.db())?
            .query_row(params![run_id, status.as_str()], |r| r.get(0))
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// See [`Journal::open_run`]; runs inside its transaction.
    fn open_run<'r, E: fmt::Display + Send>(
        &self,
        new: &NewRun,
        opts: ResumeOptions,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        if !new.is_test && !opts.new_run {
            if let Some(old) = self.unfinished_run(&new.campaign, new.occurrence.as_deref())? {
                // Whatever follows, a run another live process is sending is not touched (and
                // that, not a changed plan, is what the caller hears). On an error the caller
                // rolls back, this lease included.
                self.claim(&old, now)?;
                if old.plan_hash == new.plan_hash {
                    let recovered = self.recover(&old.id, old.action)?;
                    self.set_status(&old.id, RunStatus::Running, None, now)?;
                    let run = self.existing_run(&old.id)?;
                    return Ok(Opened::Resumed { run, recovered });
                }
                if opts.continue_changed {
                    self.recover(&old.id, old.action)?;
                    // The old run ends before the continuing one is inserted (at most one
                    // unfinished run); both commit together or not at all.
                    let id = new.id.clone().unwrap_or_else(|| new_run_id(now));
                    self.cancel_pending(&old.id, now)?;
                    self.set_status(
                        &old.id,
                        RunStatus::Cancelled,
                        Some(&format!("continued as run {id} with changed content")),
                        now,
                    )?;
                    let (run, skipped) =
                        self.create_run(&id, new, Some(&old), opts, rows(), now)?;
                    return Ok(Opened::Continued {
                        run,
                        from: old.id,
                        skipped,
                    });
                }
                if old.content_key.is_some() && old.content_key == new.content_key {
                    if let Some(n) = self.try_apply_suppressions(&old, new, rows(), now)? {
                        let recovered = self.recover(&old.id, old.action)?;
                        self.set_status(&old.id, RunStatus::Running, None, now)?;
                        let run = self.existing_run(&old.id)?;
                        return Ok(Opened::ResumedWithSuppressions {
                            run,
                            recovered,
                            newly_suppressed: n,
                        });
                    }
                }
                return Err(JournalError::Changed {
                    campaign: new.campaign.clone(),
                    run_id: old.id,
                    old: old.plan_hash,
                    new: new.plan_hash.clone(),
                });
            }
            if let Some(last) =
                self.latest_of_occurrence(&new.campaign, new.occurrence.as_deref())?
            {
                let unknown = self.count_status(&last.id, RecipientStatus::Unknown)?;
                if opts.resend_unknown
                    && unknown > 0
                    && last.status == RunStatus::Finished
                    && last.plan_hash == new.plan_hash
                {
                    // Reopened: unfinished again, so the unique index admits it only because
                    // no other unfinished run exists (checked above, in this transaction).
                    self.claim(&last, now)?;
                    self.set_status(&last.id, RunStatus::Running, None, now)?;
                    let run = self.existing_run(&last.id)?;
                    return Ok(Opened::Resumed {
                        run,
                        recovered: Recovered::default(),
                    });
                }
                return Ok(Opened::AlreadyFinished(last));
            }
        }
        if opts.new_run && !new.is_test {
            if let Some(old) = self.unfinished_run(&new.campaign, new.occurrence.as_deref())? {
                self.claim(&old, now)?;
                self.recover(&old.id, old.action)?;
                self.cancel_pending(&old.id, now)?;
                self.set_status(
                    &old.id,
                    RunStatus::Cancelled,
                    Some("superseded by --new-run"),
                    now,
                )?;
            }
        }
        let id = new.id.clone().unwrap_or_else(|| new_run_id(now));
        let (run, _) = self.create_run(&id, new, None, opts, rows(), now)?;
        Ok(Opened::Created(run))
    }

    fn create_run<E: fmt::Display + Send>(
        &self,
        id: &str,
        new: &NewRun,
        continue_from: Option<&RunInfo>,
        opts: ResumeOptions,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<(RunInfo, u64), JournalError> {
        let flags =
            serde_json::to_string(&new.flags).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let audit =
            serde_json::to_string(&new.audit).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let db = self.db();
        let tx = self.conn;
        tx.execute(
            "INSERT INTO runs(id, campaign, occurrence, plan_hash, content_key, action, status, flags, is_test,
                              created_at, updated_at, audit, limit_count, limit_window_ms, total_calls,
                              continued_from, owner, key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     (SELECT COALESCE(MAX(key), 0) + 1 FROM runs))",
            params![
                id,
                new.campaign,
                new.occurrence,
                new.plan_hash,
                new.content_key,
                new.action.as_str(),
                flags,
                new.is_test,
                ts(now),
                audit,
                new.limit.limit as i64,
                new.limit.window.as_millis() as i64,
                new.total_calls as i64,
                continue_from.map(|r| r.id.clone()),
                self.owner,
            ],
        )
        .map_err(&db)?;
        let mut skipped = 0u64;
        let now_s = ts(now);
        let mut seeded: BTreeMap<RecipientStatus, u64> = BTreeMap::new();
        let key = run_key(tx, id)
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(id.to_string()))?;
        let old_range = match continue_from {
            Some(old) => run_key(tx, &old.id).map_err(&db)?.map(rk_range),
            None => None,
        };
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO recipients(rk, id, raw_id, status, call_seq, variant, error_message,
                                            message_id, detail, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(&db)?;
            let mut prior = tx
                .prepare(
                    "SELECT status, message_id FROM recipients
                     WHERE id = ?3 AND rk BETWEEN ?1 AND ?2 AND status IN ('sent','not_online','unknown') LIMIT 1",
                )
                .map_err(&db)?;
            consume_in_batches(rows, |row| {
                let row = row.map_err(|e| JournalError::Seed(e.to_string()))?;
                let mut status = row.status;
                let mut message_id: Option<i64> = None;
                let mut note = row.note.clone();
                let mut detail: Option<String> = None;
                if row.line > MAX_LINE {
                    return Err(JournalError::Seed(format!(
                        "audience line {} is beyond the {MAX_LINE} lines a run can hold",
                        row.line
                    )));
                }
                if let (Some(old), Some((lo, hi)), Some(rid), RecipientStatus::Pending) =
                    (continue_from, old_range, row.id, row.status)
                {
                    let p: Option<(String, Option<i64>)> = prior
                        .query_row(params![lo, hi, rid as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                        .map_err(&db)?;
                    if let Some((s, mid)) = p {
                        let s: RecipientStatus = s.parse()?;
                        if s != RecipientStatus::Unknown || !opts.resend_unknown {
                            status = s;
                            message_id = mid;
                            detail = Some(format!("carried over from run {}", old.id));
                            note = None;
                            skipped += 1;
                        }
                    }
                }
                *seeded.entry(status).or_default() += 1;
                // The id's own decimal form is not stored twice. `updated_at` is written now
                // although the run row holds the same time: an outcome then rewrites the row at
                // the same size instead of growing it (which splits pages all over the table).
                let raw_id = match row.id {
                    Some(v) if itoa::Buffer::new().format(v) == row.raw_id => None,
                    _ => Some(row.raw_id.as_str()),
                };
                let updated_at = Some(now_s.as_str());
                ins.execute(params![
                    (key << 32) | row.line as i64,
                    row.id.map(|v| v as i64),
                    raw_id,
                    status.as_str(),
                    row.call_seq.map(|v| v as i64),
                    row.variant,
                    note,
                    message_id,
                    detail,
                    updated_at,
                ])
                .map_err(&db)?;
                Ok(())
            })?;
        }
        for (status, n) in seeded {
            count_move(tx, id, None, status, n).map_err(&db)?;
        }
        let run = self.existing_run(id)?;
        Ok((run, skipped))
    }

    /// If the new rows differ from the run's only by rows that became suppressed, apply that and
    /// return how many; otherwise change nothing (its own savepoint is rolled back) and return
    /// None.
    fn try_apply_suppressions<E: fmt::Display + Send>(
        &self,
        old: &RunInfo,
        new: &NewRun,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<Option<u64>, JournalError> {
        let db = self.db();
        self.conn
            .execute_batch("SAVEPOINT apply_suppressions")
            .map_err(&db)?;
        let res = self.apply_suppressions(old, new, rows, now);
        let end = match res {
            Ok(Some(_)) => "RELEASE apply_suppressions",
            _ => "ROLLBACK TO apply_suppressions; RELEASE apply_suppressions",
        };
        let ended = self.conn.execute_batch(end).map_err(&db);
        let n = res?;
        ended?;
        Ok(n)
    }

    fn apply_suppressions<E: fmt::Display + Send>(
        &self,
        old: &RunInfo,
        new: &NewRun,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<Option<u64>, JournalError> {
        let db = self.db();
        let tx = self.conn;
        let mut n = 0u64;
        let mut seen = 0u64;
        {
            let key = run_key(tx, &old.id)
                .map_err(&db)?
                .ok_or_else(|| JournalError::NoRun(old.id.clone()))?;
            let mut get = tx
                .prepare("SELECT id, status FROM recipients WHERE rk = ?1")
                .map_err(&db)?;
            let mut upd = tx
                .prepare(
                    "UPDATE recipients SET status = 'suppressed', error_message = ?2, updated_at = ?3
                     WHERE rk = ?1",
                )
                .map_err(&db)?;
            for row in rows {
                let row = row.map_err(|e| JournalError::Seed(e.to_string()))?;
                seen += 1;
                if row.line > MAX_LINE {
                    return Ok(None);
                }
                let rk = (key << 32) | row.line as i64;
                let cur: Option<(Option<i64>, String)> = get
                    .query_row(params![rk], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(&db)?;
                let Some((cid, cstatus)) = cur else {
                    return Ok(None);
                };
                if cid.map(|v| v as u64) != row.id {
                    return Ok(None);
                }
                let cstatus: RecipientStatus = cstatus.parse()?;
                let was_final_input = matches!(
                    cstatus,
                    RecipientStatus::Invalid
                        | RecipientStatus::Duplicate
                        | RecipientStatus::Suppressed
                );
                let now_final_input = matches!(
                    row.status,
                    RecipientStatus::Invalid
                        | RecipientStatus::Duplicate
                        | RecipientStatus::Suppressed
                );
                if row.status == RecipientStatus::Suppressed && !was_final_input {
                    if cstatus == RecipientStatus::Pending {
                        upd.execute(params![rk, row.note, ts(now)]).map_err(&db)?;
                        n += 1;
                    }
                    continue;
                }
                if was_final_input != now_final_input || (was_final_input && cstatus != row.status)
                {
                    return Ok(None);
                }
            }
        }
        let total: i64 = tx
            .query_row(
                "SELECT COALESCE(SUM(n), 0) FROM run_counts WHERE run_id = ?1",
                [&old.id],
                |r| r.get(0),
            )
            .map_err(&db)?;
        if total as u64 != seen {
            return Ok(None);
        }
        count_move(
            tx,
            &old.id,
            Some(RecipientStatus::Pending),
            RecipientStatus::Suppressed,
            n,
        )
        .map_err(&db)?;
        tx.execute(
            "UPDATE runs SET plan_hash = ?2, total_calls = ?3, updated_at = ?4 WHERE id = ?1",
            params![old.id, new.plan_hash, new.total_calls as i64, ts(now)],
        )
        .map_err(&db)?;
        Ok(Some(n))
    }

    /// See [`Journal::claim`]; the caller holds the IMMEDIATE transaction.
    fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let held = self
            .conn
            .query_row("SELECT owner FROM runs WHERE id = ?1", [&run.id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(self.db())?
            .ok_or_else(|| JournalError::NoRun(run.id.clone()))?;
        if let Some(o) = held {
            if o != self.owner && owner_alive(&o) {
                return Err(JournalError::Busy {
                    campaign: run.campaign.clone(),
                    run_id: run.id.clone(),
                    owner: describe_owner(&o),
                });
            }
        }
        self.conn
            .execute(
                "UPDATE runs SET owner = ?2, updated_at = ?3 WHERE id = ?1",
                params![run.id, self.owner, ts(now)],
            )
            .map_err(self.db())?;
        Ok(())
    }

    fn set_status(
        &self,
        run_id: &str,
        status: RunStatus,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let done = matches!(status, RunStatus::Finished | RunStatus::Cancelled);
        let n = self
            .conn
            .prepare_cached(
                "UPDATE runs SET status = ?2, stop_reason = ?3, updated_at = ?4,
                     finished_at = CASE WHEN ?5 THEN ?4 ELSE NULL END,
                     owner = CASE WHEN ?5 OR ?2 != 'running' THEN NULL ELSE owner END
                 WHERE id = ?1",
            )
            .map_err(self.db())?
            .execute(params![run_id, status.as_str(), reason, ts(now), done])
            .map_err(self.db())?;
        if n == 0 {
            return Err(JournalError::NoRun(run_id.into()));
        }
        Ok(())
    }

    /// See [`Journal::recover`]; the caller holds the transaction.
    fn recover(&self, run_id: &str, action: Action) -> Result<Recovered, JournalError> {
        let db = self.db();
        let tx = self.conn;
        let mut rec = Recovered::default();
        let (lo, hi) = rk_range(
            run_key(tx, run_id)
                .map_err(&db)?
                .ok_or_else(|| JournalError::NoRun(run_id.to_string()))?,
        );
        let calls: Vec<(i64, String)> = {
            let mut st = tx
                .prepare(
                    "SELECT seq, receivers FROM calls WHERE run_id = ?1 AND state = 'in_flight'",
                )
                .map_err(&db)?;
            let v = st
                .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(&db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&db)?;
            v
        };
        for (seq, receivers) in calls {
            if action == Action::Conversation {
                tx.execute(
                    "UPDATE calls SET state = 'planned', error_message = 'interrupted; resent with the same ClientMsgId'
                     WHERE run_id = ?1 AND seq = ?2",
                    params![run_id, seq],
                )
                .map_err(&db)?;
                rec.replanned_calls += 1;
                continue;
            }
            let ids: Vec<u64> = serde_json::from_str(&receivers)
                .map_err(|e| JournalError::Corrupt(format!("call {seq} receivers: {e}")))?;
            tx.execute(
                "UPDATE calls SET state = 'unknown', error_message = 'the process stopped while the call was in flight'
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq],
            )
            .map_err(&db)?;
            rec.unknown_calls += 1;
            let mut upd = tx
                .prepare_cached(
                    "UPDATE OR FAIL recipients SET status = 'unknown', error_code = 'InFlightAtCrash',
                         error_message = 'the process stopped while this call was in flight; it may have been delivered',
                         call_seq = ?3,
                         variant = (SELECT variant FROM calls WHERE run_id = ?1 AND seq = ?3),
                         attempts = attempts + (SELECT attempts FROM calls WHERE run_id = ?1 AND seq = ?3)
                     WHERE id = ?2 AND rk BETWEEN ?4 AND ?5 AND status = 'pending'",
                )
                .map_err(&db)?;
            for id in ids {
                rec.unknown_recipients += upd
                    .execute(params![run_id, id as i64, seq, lo, hi])
                    .map_err(&db)? as u64;
            }
        }
        count_move(
            tx,
            run_id,
            Some(RecipientStatus::Pending),
            RecipientStatus::Unknown,
            rec.unknown_recipients,
        )
        .map_err(&db)?;
        Ok(rec)
    }

    fn cancel_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.set_pending(
            run_id,
            RecipientStatus::Cancelled,
            "the run was cancelled",
            now,
        )
    }

    /// Pending recipients of a run become `to`; the caller holds the transaction.
    fn set_pending(
        &self,
        run_id: &str,
        to: RecipientStatus,
        why: &str,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        let db = self.db();
        let Some(key) = run_key(self.conn, run_id).map_err(&db)? else {
            return Ok(0);
        };
        let (lo, hi) = rk_range(key);
        let n = self
            .conn
            .execute(
                "UPDATE recipients SET status = ?3, error_message = ?4, updated_at = ?5
                 WHERE rk BETWEEN ?1 AND ?2 AND status = 'pending'",
                params![lo, hi, to.as_str(), why, ts(now)],
            )
            .map_err(&db)? as u64;
        count_move(self.conn, run_id, Some(RecipientStatus::Pending), to, n).map_err(&db)?;
        Ok(n)
    }
}

impl Journal {
    // ---- calls ------------------------------------------------------------------------------

    /// Of `ids`, those still to send in this run: `pending` (and `unknown` with `resend_unknown`),
    /// in the given order.
    pub fn sendable(
        &self,
        run_id: &str,
        ids: &[u64],
        resend_unknown: bool,
    ) -> Result<Vec<u64>, JournalError> {
        let mut found = std::collections::HashSet::with_capacity(ids.len());
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(Vec::new());
        };
        let (lo, hi) = rk_range(key);
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id FROM recipients WHERE id IN ({}) AND rk BETWEEN ?1 AND ?2
                   AND (status = 'pending' OR (?3 AND status = 'unknown'))",
                placeholders(4, chunk.len())
            );
            let mut st = self.conn.prepare_cached(&sql).map_err(self.db())?;
            let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() + 3);
            values.push(lo.into());
            values.push(hi.into());
            values.push(i64::from(resend_unknown).into());
            values.extend(
                chunk
                    .iter()
                    .map(|&id| rusqlite::types::Value::Integer(id as i64)),
            );
            let rows = st
                .query_map(rusqlite::params_from_iter(values), |r| r.get::<_, i64>(0))
                .map_err(self.db())?;
            for r in rows {
                found.insert(r.map_err(self.db())? as u64);
            }
        }
        Ok(ids
            .iter()
            .copied()
            .filter(|id| found.contains(id))
            .collect())
    }

    /// True when no recipient of the run has an outcome yet (every valid row is still
    /// `pending`): a freshly created run. The engine then skips the per-call "still to send"
    /// lookup, since every receiver the plan names is pending.
    pub fn all_valid_pending(&self, run_id: &str) -> Result<bool, JournalError> {
        let any: bool = self
            .conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM run_counts WHERE run_id = ?1 AND n > 0
                   AND status NOT IN ('pending','invalid','duplicate','suppressed'))",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(!any)
    }

    // ---- re-queued receivers (FailedReceiver) ------------------------------------------------
    //
    // A receiver the provider refused (`FailedReceiver`) was not delivered, so it is sent again in
    // a later call of the same Content. In the journal it stays `pending`, with `refusals` > 0,
    // `attempts` = the requests that carried it so far, and error code `FailedReceiver`; no other
    // `pending` row has refusals or attempts > 0. The calls that resend such receivers are
    // ordinary call rows ("extra calls") numbered from the run's `first_resend_seq` up (after
    // every plan call), marked in flight before they are sent like any call; settling one adds its
    // attempts to each receiver's. After a stop or a crash, the engine finds these receivers
    // again through their plan call (`sendable_detail`) and re-queues them.

    /// True when any call of the run has an outcome (`done` or `unknown`). A run without one has
    /// no re-queued receivers either.
    pub fn any_call_settled(&self, run_id: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM calls WHERE run_id = ?1 AND state IN ('done','unknown'))",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.db())
    }

    /// [`Self::sendable`] with each receiver's refusals so far and whether it is `pending` (a
    /// pending receiver with refusals > 0 was refused and is to be re-queued).
    pub fn sendable_detail(
        &self,
        run_id: &str,
        ids: &[u64],
        resend_unknown: bool,
    ) -> Result<Vec<Sendable>, JournalError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(Vec::new());
        };
        let (lo, hi) = rk_range(key);
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, refusals, status = 'pending' FROM recipients WHERE id IN ({}) AND rk BETWEEN ?1 AND ?2
                   AND (status = 'pending' OR (?3 AND status = 'unknown'))",
                placeholders(4, chunk.len())
            );
            let mut st = self.conn.prepare_cached(&sql).map_err(self.db())?;
            let mut values: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() + 3);
            values.push(lo.into());
            values.push(hi.into());
            values.push(i64::from(resend_unknown).into());
            values.extend(
                chunk
                    .iter()
                    .map(|&id| rusqlite::types::Value::Integer(id as i64)),
            );
            let rows = st
                .query_map(rusqlite::params_from_iter(values), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .map_err(self.db())?;
            for r in rows {
                let (id, refusals, pending) = r.map_err(self.db())?;
                found.insert(
                    id as u64,
                    (refusals.clamp(0, u32::MAX as i64) as u32, pending),
                );
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| {
                found.get(id).map(|&(refusals, pending)| Sendable {
                    id: *id,
                    refusals,
                    pending,
                })
            })
            .collect())
    }

    /// Before a session sends: settle the extra calls an earlier session left `planned` (a
    /// not-processed attempt waiting for its retry when the run stopped). Their attempts are added
    /// to their still-pending receivers, which are re-queued again through their plan calls; the
    /// call itself becomes `done` (nothing more is sent under its number). Returns the number the
    /// next extra call gets: after every plan call and every call already recorded.
    pub fn prepare_requeue(&mut self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let (key, total, first): (i64, i64, Option<i64>) = tx
            .query_row(
                "SELECT key, total_calls, first_resend_seq FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| JournalError::NoRun(run_id.to_string()))?;
        let (lo, hi) = rk_range(key);
        let stale: Vec<(i64, String, i64)> = {
            let mut st = tx
                .prepare(
                    "SELECT seq, receivers, attempts FROM calls
                     WHERE run_id = ?1 AND seq >= ?2 AND state = 'planned'",
                )
                .map_err(db)?;
            let v = st
                .query_map(params![run_id, first.unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            v
        };
        for (seq, receivers, attempts) in stale {
            let ids: Vec<u64> = serde_json::from_str(&receivers)
                .map_err(|e| JournalError::Corrupt(format!("call {seq} receivers: {e}")))?;
            let mut upd = tx
                .prepare_cached(
                    "UPDATE OR FAIL recipients SET attempts = attempts + ?4
                     WHERE id = ?1 AND rk BETWEEN ?2 AND ?3 AND status = 'pending'",
                )
                .map_err(db)?;
            for id in ids {
                upd.execute(params![id as i64, lo, hi, attempts])
                    .map_err(db)?;
            }
            tx.execute(
                "UPDATE calls SET state = 'done', updated_at = ?3,
                     error_message = COALESCE(error_message || '; ', '') || 'not sent again under this number: its receivers were re-queued'
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq, ts(now)],
            )
            .map_err(db)?;
        }
        let max_seq: Option<i64> = tx
            .query_row(
                "SELECT MAX(seq) FROM calls WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(db)?;
        let next = max_seq.map_or(0, |m| m + 1).max(total).max(0);
        if first.is_none() {
            tx.execute(
                "UPDATE runs SET first_resend_seq = ?2 WHERE id = ?1",
                params![run_id, next],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(next as u64)
    }

    /// Calls made for re-queued receivers (numbered from the run's `first_resend_seq` up).
    pub fn extra_calls(&self, run_id: &str) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM calls c JOIN runs r ON r.id = c.run_id
                 WHERE c.run_id = ?1 AND c.seq >= r.first_resend_seq",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// Commit the in-flight mark of a call attempt (before the request leaves).
    pub fn mark_in_flight(
        &mut self,
        run_id: &str,
        seq: u64,
        variant: &str,
        receivers: &[u64],
        client_msg_id: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.write_batch(&[Write::Mark(Mark {
            run_id: run_id.to_string(),
            seq,
            variant: variant.to_string(),
            receivers: receivers.to_vec(),
            client_msg_id: client_msg_id.map(str::to_string),
            now,
        })])
    }

    fn mark_tx(
        tx: &Connection,
        m: &Mark,
        db: &impl Fn(rusqlite::Error) -> JournalError,
    ) -> Result<(), JournalError> {
        let recv = serde_json::to_string(&m.receivers)
            .map_err(|e| JournalError::Corrupt(e.to_string()))?;
        // Recipients are not touched here: the call row (with its receivers) is the in-flight
        // mark; the outcome (or crash recovery) updates the recipients.
        tx.prepare_cached(
            "INSERT INTO calls(run_id, seq, variant, receivers, state, attempts, client_msg_id, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'in_flight', 1, ?5, ?6)
             ON CONFLICT(run_id, seq) DO UPDATE SET variant = excluded.variant, receivers = excluded.receivers,
                 state = 'in_flight', attempts = calls.attempts + 1, client_msg_id = excluded.client_msg_id,
                 updated_at = excluded.updated_at",
        )
        .map_err(db)?
        .execute(params![
            m.run_id,
            m.seq as i64,
            m.variant,
            recv,
            m.client_msg_id,
            ts(m.now)
        ])
        .map_err(db)?;
        Ok(())
    }

    /// Commit several calls' in-flight marks and outcomes in one transaction (group commit).
    ///
    /// With any mark in the batch the commit is `synchronous=FULL` (durable before any of those
    /// requests leaves); outcomes alone commit with `NORMAL`: durable against a process crash at
    /// once, and against power loss by the next mark's FULL commit (the WAL is one sequential
    /// file, so that fsync covers it). If power fails in between, an outcome is lost but its mark
    /// is not, so recovery makes those receivers `unknown` — never a resend.
    pub fn write_batch(&mut self, writes: &[Write]) -> Result<(), JournalError> {
        if writes.is_empty() {
            return Ok(());
        }
        let full = writes.iter().any(|w| matches!(w, Write::Mark(_)));
        if !full {
            self.conn
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(self.db())?;
        }
        let res = self.write_batch_tx(writes);
        if !full {
            let back = self.conn.pragma_update(None, "synchronous", "FULL");
            res?;
            return back.map_err(self.db());
        }
        res
    }

    fn write_batch_tx(&mut self, writes: &[Write]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let mut outcomes = false;
        for w in writes {
            match w {
                Write::Mark(m) => Self::mark_tx(&tx, m, &db)?,
                Write::Outcome(o) => {
                    outcomes = true;
                    Self::outcome_tx(&tx, o, &db)?
                }
            }
        }
        if outcomes {
            crate::failpoint::hit(crate::failpoint::Point::BeforeCommit);
        }
        tx.commit().map_err(db)
    }

    /// A call attempt was not processed (safe to retry): back to planned, recipients untouched.
    pub fn mark_retry(
        &self,
        run_id: &str,
        seq: u64,
        code: Option<&str>,
        message: &str,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE calls SET state = 'planned', error_code = ?3, error_message = ?4, updated_at = ?5
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq as i64, code, message, ts(now)],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// Commit a call's per-recipient outcomes and its final state in one transaction
    /// (`synchronous=NORMAL`, see [`Journal::write_batch`]).
    pub fn record_outcome(
        &mut self,
        run_id: &str,
        seq: u64,
        state: CallState,
        updates: &[RecipientUpdate],
        error: Option<(&str, &str)>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.write_batch(&[Write::Outcome(Outcome {
            run_id: run_id.to_string(),
            seq,
            state,
            updates: updates.to_vec(),
            error: error.map(|(c, m)| (c.to_string(), m.to_string())),
            now,
        })])
    }

    fn outcome_tx(
        tx: &Connection,
        o: &Outcome,
        db: &impl Fn(rusqlite::Error) -> JournalError,
    ) -> Result<(), JournalError> {
        let (attempts, variant): (i64, String) = tx
            .prepare_cached("SELECT attempts, variant FROM calls WHERE run_id = ?1 AND seq = ?2")
            .map_err(db)?
            .query_row(params![o.run_id, o.seq as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db)?;
        let (lo, hi) = rk_range(
            run_key(tx, &o.run_id)
                .map_err(db)?
                .ok_or_else(|| JournalError::NoRun(o.run_id.clone()))?,
        );
        let mut upd = tx
            .prepare_cached(
                // OR FAIL: at most one row per statement, so nothing to undo if it fails halfway;
                // SQLite then keeps no statement journal for it (measured: about half of the
                // per-statement overhead of this update).
                // A pending receiver keeps the attempts of earlier calls that refused it
                // (FailedReceiver, re-queued) and adds this call's; an `unknown` one resent with
                // --resend-unknown was in this very call before, whose count already holds them.
                "UPDATE OR FAIL recipients SET status = ?3, message_id = ?4, error_code = ?5, error_message = ?6,
                     detail = ?7, updated_at = ?8, call_seq = ?9, variant = ?10,
                     attempts = CASE WHEN ?12 = 'pending' THEN attempts + ?11 ELSE ?11 END,
                     refusals = refusals + (?5 IS 'FailedReceiver')
                 WHERE id = ?2 AND rk BETWEEN ?1 AND ?13 AND status = ?12",
            )
            .map_err(db)?;
        let now_s = ts(o.now);
        // What every row of the call shares is bound once; per row only its own values (SQLite
        // keeps bindings between executions).
        upd.raw_bind_parameter(1, lo).map_err(db)?;
        upd.raw_bind_parameter(8, &now_s).map_err(db)?;
        upd.raw_bind_parameter(9, o.seq as i64).map_err(db)?;
        upd.raw_bind_parameter(10, &variant).map_err(db)?;
        upd.raw_bind_parameter(11, attempts).map_err(db)?;
        upd.raw_bind_parameter(13, hi).map_err(db)?;
        // (from, to) → recipients moved, for the per-status counters. A receiver is `pending`,
        // or `unknown` when resent with --resend-unknown (tried second: rare).
        let mut moved: BTreeMap<(RecipientStatus, RecipientStatus), u64> = BTreeMap::new();
        for u in &o.updates {
            upd.raw_bind_parameter(2, u.id as i64).map_err(db)?;
            upd.raw_bind_parameter(3, u.status.as_str()).map_err(db)?;
            upd.raw_bind_parameter(4, u.message_id.map(|v| v as i64))
                .map_err(db)?;
            upd.raw_bind_parameter(5, &u.error_code).map_err(db)?;
            upd.raw_bind_parameter(6, &u.error_message).map_err(db)?;
            upd.raw_bind_parameter(7, &u.detail).map_err(db)?;
            for from in [RecipientStatus::Pending, RecipientStatus::Unknown] {
                upd.raw_bind_parameter(12, from.as_str()).map_err(db)?;
                let n = upd.raw_execute().map_err(db)?;
                if n > 0 {
                    *moved.entry((from, u.status)).or_default() += n as u64;
                    break;
                }
            }
        }
        for ((from, to), n) in moved {
            count_move(tx, &o.run_id, Some(from), to, n).map_err(db)?;
        }
        tx.prepare_cached(
            "UPDATE calls SET state = ?3, error_code = ?4, error_message = ?5, updated_at = ?6
             WHERE run_id = ?1 AND seq = ?2",
        )
        .map_err(db)?
        .execute(params![
            o.run_id,
            o.seq as i64,
            o.state.as_str(),
            o.error.as_ref().map(|e| e.0.as_str()),
            o.error.as_ref().map(|e| e.1.as_str()),
            now_s
        ])
        .map_err(db)?;
        Ok(())
    }

    /// Pending recipients become `expired` (deadline passed). Returns how many.
    pub fn expire_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.set_pending(
            run_id,
            RecipientStatus::Expired,
            "the run's deadline passed",
            now,
        )
    }

    /// Pending recipients become `cancelled`. Returns how many.
    pub fn cancel_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.set_pending(
            run_id,
            RecipientStatus::Cancelled,
            "the run was cancelled",
            now,
        )
    }

    fn set_pending(
        &self,
        run_id: &str,
        to: RecipientStatus,
        why: &str,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(self.db())?;
        let n = Ops {
            conn: &tx,
            path: &self.path,
            owner: &self.owner,
        }
        .set_pending(run_id, to, why, now)?;
        tx.commit().map_err(self.db())?;
        Ok(n)
    }

    // ---- reading ----------------------------------------------------------------------------

    /// Recipients per status (every status present, zeros included).
    pub fn counts(&self, run_id: &str) -> Result<BTreeMap<RecipientStatus, u64>, JournalError> {
        let counts = self.grouped_counts(
            "SELECT status, n FROM run_counts WHERE run_id = ?1",
            run_id,
            RecipientStatus::ALL,
        )?;
        // Every test run (debug builds) checks the counters against the rows themselves.
        #[cfg(debug_assertions)]
        if let Ok(scan) = self.counts_by_scan(run_id) {
            assert_eq!(
                counts, scan,
                "run_counts out of step with recipients for run {run_id}"
            );
        }
        Ok(counts)
    }

    /// [`Self::counts`] by scanning the run's rows (what the counters must always equal; tests
    /// and `imcast status --verify`-style checks).
    pub fn counts_by_scan(
        &self,
        run_id: &str,
    ) -> Result<BTreeMap<RecipientStatus, u64>, JournalError> {
        self.grouped_counts(
            "SELECT status, COUNT(*) FROM recipients
             WHERE rk BETWEEN (SELECT key << 32 FROM runs WHERE id = ?1)
                          AND (SELECT (key << 32) | 4294967295 FROM runs WHERE id = ?1)
             GROUP BY status",
            run_id,
            RecipientStatus::ALL,
        )
    }

    /// Rows per key for a `SELECT key, COUNT(*) ... GROUP BY key` query, every key in `all`
    /// present (zeros included).
    fn grouped_counts<K>(
        &self,
        sql: &str,
        run_id: &str,
        all: &[K],
    ) -> Result<BTreeMap<K, u64>, JournalError>
    where
        K: Copy + Ord + FromStr<Err = JournalError>,
    {
        let mut out: BTreeMap<K, u64> = all.iter().map(|k| (*k, 0)).collect();
        let mut st = self.conn.prepare_cached(sql).map_err(self.db())?;
        let rows = st
            .query_map([run_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.db())?;
        for row in rows {
            let (k, n) = row.map_err(self.db())?;
            out.insert(k.parse()?, n as u64);
        }
        Ok(out)
    }

    /// How many recipients of a run have `status`.
    pub fn count_status(&self, run_id: &str, status: RecipientStatus) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(n), 0) FROM run_counts WHERE run_id = ?1 AND status = ?2",
                params![run_id, status.as_str()],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// Calls per state.
    pub fn call_counts(&self, run_id: &str) -> Result<BTreeMap<CallState, u64>, JournalError> {
        self.grouped_counts(
            "SELECT state, COUNT(*) FROM calls WHERE run_id = ?1 GROUP BY state",
            run_id,
            CallState::ALL,
        )
    }

    /// Total provider attempts made (sum over calls).
    pub fn attempts(&self, run_id: &str) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COALESCE(SUM(attempts), 0) FROM calls WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// Every recipient row of a run in audience order, streamed to `f` (stops at its first error).
    pub fn for_each_recipient<E: From<JournalError>>(
        &self,
        run_id: &str,
        mut f: impl FnMut(RecipientRow) -> Result<(), E>,
    ) -> Result<(), E> {
        let run: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT key, created_at FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db())?;
        let Some((key, created_at)) = run else {
            return Ok(());
        };
        let (lo, hi) = rk_range(key);
        let mut st = self
            .conn
            .prepare(
                "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                        error_message, detail, updated_at
                 FROM recipients WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk",
            )
            .map_err(self.db())?;
        let mut rows = st.query(params![lo, hi]).map_err(self.db())?;
        while let Some(r) = rows.next().map_err(self.db())? {
            let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<RecipientRow> {
                let status: rusqlite::types::ValueRef<'_> = r.get_ref(3)?;
                let id = r.get::<_, Option<i64>>(1)?.map(|v| v as u64);
                let raw_id: Option<String> = r.get(2)?;
                Ok(RecipientRow {
                    line: (r.get::<_, i64>(0)? as u64) & MAX_LINE,
                    raw_id: raw_id.unwrap_or_else(|| id.map(|v| v.to_string()).unwrap_or_default()),
                    id,
                    status: status
                        .as_str()
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(RecipientStatus::Unknown),
                    message_id: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                    attempts: r.get::<_, i64>(5)? as u32,
                    call: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    variant: r.get(7)?,
                    error_code: r.get(8)?,
                    error_message: r.get(9)?,
                    detail: r.get(10)?,
                    time: Some(
                        r.get::<_, Option<String>>(11)?
                            .unwrap_or_else(|| created_at.clone()),
                    ),
                })
            };
            f(get(r).map_err(self.db())?)?;
        }
        Ok(())
    }

    /// A second connection to the same database that only reads (`query_only`): for a reader on
    /// another thread (the report scans the halves of a large run in parallel). Writes through it
    /// fail.
    pub fn reader(&self) -> Result<Journal, JournalError> {
        let db = |source| JournalError::Db {
            path: self.path.clone(),
            source,
        };
        let conn = crate::db::open(&self.path, "FULL").map_err(db)?;
        conn.pragma_update(None, "query_only", true).map_err(db)?;
        conn.pragma_update(None, "cache_size", -16384).map_err(db)?;
        // Its own lease id, never written (the connection is read-only).
        let (owner, instance) = new_owner();
        Ok(Journal {
            conn,
            path: self.path.clone(),
            owner,
            instance,
        })
    }

    /// The highest audience line of a run's recipient rows (None: no rows).
    pub fn last_line(&self, run_id: &str) -> Result<Option<u64>, JournalError> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(None);
        };
        let (lo, hi) = rk_range(key);
        let max: Option<i64> = self
            .conn
            .query_row(
                "SELECT MAX(rk) FROM recipients WHERE rk BETWEEN ?1 AND ?2",
                params![lo, hi],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(max.map(|v| (v as u64) & MAX_LINE))
    }

    /// The recipient rows of a run whose audience line is in `lines`, in audience order,
    /// borrowed from the database row (no allocation per row: the report's scan of ten million
    /// rows). Same rows and values as [`Self::for_each_recipient`]; stops at `f`'s first error.
    pub fn for_each_recipient_ref<E: From<JournalError>>(
        &self,
        run_id: &str,
        lines: std::ops::RangeInclusive<u64>,
        mut f: impl FnMut(&RecipientRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let run: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT key, created_at FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.db())?;
        let Some((key, created_at)) = run else {
            return Ok(());
        };
        let (lo, _) = rk_range(key);
        let (first, last) = (
            (*lines.start()).min(MAX_LINE) as i64,
            (*lines.end()).min(MAX_LINE) as i64,
        );
        let mut st = self
            .conn
            .prepare(
                "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                        error_message, detail, updated_at
                 FROM recipients WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk",
            )
            .map_err(self.db())?;
        let mut rows = st
            .query(params![lo | first, lo | last])
            .map_err(self.db())?;
        fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'a str>> {
            match r.get_ref(i)? {
                rusqlite::types::ValueRef::Null => Ok(None),
                v => v.as_str().map(Some).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e))
                }),
            }
        }
        fn int(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<i64>> {
            r.get::<_, Option<i64>>(i)
        }
        while let Some(r) = rows.next().map_err(self.db())? {
            let line = (r.get::<_, i64>(0).map_err(self.db())? as u64) & MAX_LINE;
            let id = int(r, 1).map_err(self.db())?.map(|v| v as u64);
            let message_id = int(r, 4).map_err(self.db())?.map(|v| v as u64);
            let attempts = r.get::<_, i64>(5).map_err(self.db())? as u32;
            let call = int(r, 6).map_err(self.db())?.map(|v| v as u64);
            let status = text(r, 3)
                .map_err(self.db())?
                .and_then(|s| s.parse().ok())
                .unwrap_or(RecipientStatus::Unknown);
            let row = RecipientRef {
                line,
                id,
                raw_id: text(r, 2).map_err(self.db())?,
                status,
                message_id,
                attempts,
                call,
                variant: text(r, 7).map_err(self.db())?,
                error_code: text(r, 8).map_err(self.db())?,
                error_message: text(r, 9).map_err(self.db())?,
                detail: text(r, 10).map_err(self.db())?,
                time: text(r, 11).map_err(self.db())?.unwrap_or(&created_at),
            };
            f(&row)?;
        }
        Ok(())
    }

    /// All recipient rows of a run (small runs and tests; large runs use [`Self::for_each_recipient`]).
    pub fn recipients(&self, run_id: &str) -> Result<Vec<RecipientRow>, JournalError> {
        let mut v = Vec::new();
        self.for_each_recipient::<JournalError>(run_id, |r| {
            v.push(r);
            Ok(())
        })?;
        Ok(v)
    }

    // ---- pruning ----------------------------------------------------------------------------

    /// Delete runs that ended (finished or cancelled) before `cutoff`, with their calls and
    /// recipients, in one transaction. Unfinished runs are kept whatever their age (they may
    /// still be resumed); reports already written are files and stay. Returns
    /// (runs, calls, recipients) deleted.
    pub fn prune_runs(&mut self, cutoff: Timestamp) -> Result<(u64, u64, u64), JournalError> {
        let path = self.path.clone();
        let db = move |source| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&db)?;
        let old: Vec<String> = {
            let mut st = tx
                .prepare(
                    "SELECT id, COALESCE(finished_at, updated_at) FROM runs
                     WHERE status IN ('finished', 'cancelled')",
                )
                .map_err(&db)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(&db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(&db)?;
            rows.into_iter()
                .filter(|(_, at)| at.parse::<Timestamp>().is_ok_and(|t| t < cutoff))
                .map(|(id, _)| id)
                .collect()
        };
        let (mut runs, mut calls, mut recipients) = (0u64, 0u64, 0u64);
        for id in &old {
            if let Some(key) = run_key(&tx, id).map_err(&db)? {
                let (lo, hi) = rk_range(key);
                recipients += tx
                    .execute(
                        "DELETE FROM recipients WHERE rk BETWEEN ?1 AND ?2",
                        params![lo, hi],
                    )
                    .map_err(&db)? as u64;
            }
            tx.execute("DELETE FROM run_counts WHERE run_id = ?1", [id])
                .map_err(&db)?;
            calls += tx
                .execute("DELETE FROM calls WHERE run_id = ?1", [id])
                .map_err(&db)? as u64;
            runs += tx
                .execute("DELETE FROM runs WHERE id = ?1", [id])
                .map_err(&db)? as u64;
        }
        tx.commit().map_err(&db)?;
        Ok((runs, calls, recipients))
    }

    // ---- control ----------------------------------------------------------------------------

    /// Record a pause/resume/cancel request for a campaign (the latest wins).
    pub fn request_control(
        &self,
        campaign: &str,
        req: ControlRequest,
        by: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO control(campaign, request, requested_at, requested_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(campaign) DO UPDATE SET request = excluded.request,
                     requested_at = excluded.requested_at, requested_by = excluded.requested_by",
                params![campaign, req.as_str(), ts(now), by],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// The pending control request for a campaign, if any.
    pub fn control(&self, campaign: &str) -> Result<Option<ControlRequest>, JournalError> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT request FROM control WHERE campaign = ?1",
                [campaign],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())?;
        s.map(|s| s.parse()).transpose()
    }

    /// Forget a campaign's control request (after acting on it).
    pub fn clear_control(&self, campaign: &str) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM control WHERE campaign = ?1", [campaign])
            .map_err(self.db())?;
        Ok(())
    }
}

struct RawRun {
    id: String,
    campaign: String,
    occurrence: Option<String>,
    plan_hash: String,
    content_key: Option<String>,
    action: String,
    status: String,
    flags: String,
    is_test: bool,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    stop_reason: Option<String>,
    audit: String,
    limit_count: i64,
    limit_window_ms: i64,
    total_calls: i64,
    continued_from: Option<String>,
}

impl RawRun {
    fn into_info(self) -> Result<RunInfo, JournalError> {
        let action = parse_action(&self.action)?;
        Ok(RunInfo {
            action,
            status: self.status.parse()?,
            flags: serde_json::from_str(&self.flags)
                .map_err(|e| JournalError::Corrupt(format!("flags: {e}")))?,
            audit: serde_json::from_str(&self.audit)
                .map_err(|e| JournalError::Corrupt(format!("audit: {e}")))?,
            created_at: parse_ts(&self.created_at)?,
            updated_at: parse_ts(&self.updated_at)?,
            finished_at: self.finished_at.as_deref().map(parse_ts).transpose()?,
            limit: Limit::new(
                self.limit_count.max(0) as u64,
                Duration::from_millis(self.limit_window_ms.max(0) as u64),
            ),
            total_calls: self.total_calls.max(0) as u64,
            id: self.id,
            campaign: self.campaign,
            occurrence: self.occurrence,
            plan_hash: self.plan_hash,
            content_key: self.content_key,
            is_test: self.is_test,
            stop_reason: self.stop_reason,
            continued_from: self.continued_from,
        })
    }
}

/// A journal shared by async tasks: each operation runs on the blocking pool, never on a
/// runtime thread.
#[derive(Clone)]
pub struct SharedJournal {
    inner: std::sync::Arc<std::sync::Mutex<Journal>>,
    /// Marks and outcomes waiting for the next group commit.
    queue: std::sync::Arc<std::sync::Mutex<Vec<Queued>>>,
    path: PathBuf,
}

type Queued = (Write, tokio::sync::oneshot::Sender<Result<(), String>>);

impl SharedJournal {
    pub fn new(j: Journal) -> Self {
        let path = j.path().to_path_buf();
        SharedJournal {
            inner: std::sync::Arc::new(std::sync::Mutex::new(j)),
            queue: Default::default(),
            path,
        }
    }

    /// Commit `w` with whatever other marks/outcomes are queued, in one transaction (group
    /// commit): the first task to get the journal writes every queued write; the others find
    /// theirs done. Returns once `w` is committed (see [`Journal::write_batch`] for durability).
    pub async fn write(&self, w: Write) -> Result<(), JournalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((w, tx));
        let inner = self.inner.clone();
        let queue = self.queue.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = inner.lock().unwrap_or_else(|p| p.into_inner());
            let batch = std::mem::take(&mut *queue.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                return;
            }
            let (writes, senders): (Vec<Write>, Vec<_>) = batch.into_iter().unzip();
            let res = j.write_batch(&writes).map_err(|e| e.to_string());
            for s in senders {
                let _ = s.send(res.clone());
            }
        })
        .await
        .map_err(|e| JournalError::Corrupt(format!("journal worker failed: {e}")))?;
        match rx.await {
            Ok(r) => r.map_err(JournalError::Write),
            Err(_) => Err(JournalError::Write("the group commit was dropped".into())),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` with the journal on the blocking pool.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> Result<R, JournalError> + Send + 'static,
    ) -> Result<R, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut j)
        })
        .await
        .map_err(|e| JournalError::Corrupt(format!("journal worker failed: {e}")))?
    }

    /// Run `f` with the journal on this thread (for synchronous callers outside the runtime).
    pub fn with_blocking<R>(&self, f: impl FnOnce(&mut Journal) -> R) -> R {
        let mut j = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut j)
    }
}

/// A run id: UTC start time plus a random suffix, e.g. `20260301T090000Z-3f9a`.
pub fn new_run_id(now: Timestamp) -> String {
    let t = now.strftime("%Y%m%dT%H%M%SZ");
    format!("{t}-{:04x}", rand::random::<u16>())
}

/// Create a directory (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    let io = |source| JournalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-03-01T09:00:00Z".parse().expect("valid")
    }

    fn new_run(hash: &str) -> NewRun {
        NewRun {
            id: None,
            campaign: "spring".into(),
            occurrence: None,
            plan_hash: hash.into(),
            content_key: Some("content".into()),
            action: Action::Batch,
            flags: RunFlags::default(),
            is_test: false,
            audit: serde_json::json!({}),
            limit: Limit::new(12_000, Duration::from_secs(60)),
            total_calls: 1,
        }
    }

    fn rows(suppress: &[u64]) -> Vec<SeedRow> {
        (1..=4u64)
            .map(|i| SeedRow {
                line: i + 1,
                id: Some(100 + i),
                raw_id: (100 + i).to_string(),
                status: if suppress.contains(&(100 + i)) {
                    RecipientStatus::Suppressed
                } else {
                    RecipientStatus::Pending
                },
                call_seq: Some(0),
                variant: Some("v".into()),
                note: None,
            })
            .collect()
    }

    #[test]
    fn migrations_count_and_rekey_the_rows_of_existing_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            // A state database as the first release left it: schema 1, one run with rows.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("schema 1");
            conn.execute_batch(
                "PRAGMA user_version = 1;
                 INSERT INTO runs(id, campaign, plan_hash, action, status, flags, created_at, updated_at,
                                  audit, limit_count, limit_window_ms, total_calls)
                 VALUES ('r1', 'c', 'h', 'batch', 'finished', '{}', '2026-03-01T09:00:00Z',
                         '2026-03-01T09:00:00Z', '{}', 1, 1000, 1),
                        ('r2', 'c', 'h', 'batch', 'finished', '{}', '2026-03-01T09:00:00Z',
                         '2026-03-01T09:00:00Z', '{}', 1, 1000, 1);
                 INSERT INTO recipients(run_id, line, id, raw_id, status) VALUES
                   ('r1', 2, 1, '1', 'sent'), ('r1', 3, 2, '2', 'sent'), ('r1', 4, 3, '3', 'pending'),
                   ('r1', 5, NULL, 'x', 'invalid'), ('r2', 2, 1, '1', 'unknown');",
            )
            .expect("rows");
        }
        let j = Journal::open_path(&path).expect("migrate");
        let c = j.counts("r1").expect("counts");
        assert_eq!(c[&RecipientStatus::Sent], 2);
        assert_eq!(c[&RecipientStatus::Pending], 1);
        assert_eq!(c[&RecipientStatus::Invalid], 1);
        assert_eq!(c[&RecipientStatus::Unknown], 0);
        assert_eq!(
            j.count_status("r2", RecipientStatus::Unknown).expect("n"),
            1
        );
        assert_eq!(c, j.counts_by_scan("r1").expect("scan"));
        // Migration 3 kept every row, in audience order, with its line and raw id.
        let rows = j.recipients("r1").expect("rows");
        let lines: Vec<(u64, &str)> = rows.iter().map(|r| (r.line, r.raw_id.as_str())).collect();
        assert_eq!(lines, [(2, "1"), (3, "2"), (4, "3"), (5, "x")]);
        assert_eq!(j.recipients("r2").expect("rows").len(), 1);
    }

    fn open(
        j: &mut Journal,
        hash: &str,
        o: ResumeOptions,
        r: Vec<SeedRow>,
    ) -> Result<Opened, JournalError> {
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        j.open_run(&new_run(hash), o, &mut f, now())
    }

    #[test]
    fn create_resume_change_and_suppression_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let run = open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("create");
        assert!(matches!(run, Opened::Created(_)));
        let id = run.run().id.clone();
        // The first call is in flight when the process dies.
        j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
            .expect("mark");
        drop(j);
        let mut j = Journal::open(d.path()).expect("reopen");
        // Same hash: resumed, in-flight receivers become unknown.
        match open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("resume") {
            Opened::Resumed { recovered, .. } => assert_eq!(recovered.unknown_recipients, 2),
            other => panic!("expected resume, got {other:?}"),
        }
        assert_eq!(
            j.sendable(&id, &[101, 102, 103], false).expect("q"),
            vec![103]
        );
        assert_eq!(
            j.sendable(&id, &[101, 102, 103], true).expect("q"),
            vec![101, 102, 103]
        );
        // Changed hash, but only a new suppression: applied.
        match open(&mut j, "h2", ResumeOptions::default(), rows(&[104])).expect("suppress") {
            Opened::ResumedWithSuppressions {
                newly_suppressed, ..
            } => assert_eq!(newly_suppressed, 1),
            other => panic!("expected suppression resume, got {other:?}"),
        }
        // Anything else changed: refused with exit 7.
        let mut other = rows(&[104]);
        other[2].id = Some(999);
        let e = open(&mut j, "h3", ResumeOptions::default(), other).expect_err("changed");
        assert_eq!(e.exit(), Exit::Changed);
        assert!(e.to_string().contains("--continue-changed"), "{e}");
    }

    #[test]
    fn continue_changed_skips_already_sent() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[RecipientUpdate {
                id: 101,
                status: RecipientStatus::Sent,
                message_id: Some(7),
                error_code: None,
                error_message: None,
                detail: None,
            }],
            None,
            now(),
        )
        .expect("record");
        let o = ResumeOptions {
            continue_changed: true,
            ..Default::default()
        };
        match open(&mut j, "h2", o, rows(&[])).expect("continue") {
            Opened::Continued { run, from, skipped } => {
                assert_eq!(from, id);
                assert_eq!(skipped, 1);
                assert_eq!(
                    j.sendable(&run.id, &[101, 102], false).expect("q"),
                    vec![102]
                );
                assert_eq!(
                    j.run(&id).expect("q").expect("old").status,
                    RunStatus::Cancelled
                );
            }
            other => panic!("expected continue, got {other:?}"),
        }
    }

    #[test]
    fn finished_run_is_not_resent_without_new_run() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.set_status(&id, RunStatus::Finished, None, now())
            .expect("finish");
        assert!(matches!(
            open(&mut j, "h1", ResumeOptions::default(), rows(&[])),
            Ok(Opened::AlreadyFinished(_))
        ));
        let o = ResumeOptions {
            new_run: true,
            ..Default::default()
        };
        let r = open(&mut j, "h1", o, rows(&[])).expect("new run");
        assert!(matches!(r, Opened::Created(ref run) if run.id != id));
    }

    #[test]
    fn refused_receivers_stay_pending_and_stale_resends_are_settled() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        assert_eq!(j.prepare_requeue(&id, now()).expect("prepare"), 1);
        j.mark_in_flight(&id, 0, "v", &[101, 102, 103, 104], None, now())
            .expect("mark");
        let upd = |id, status, code: Option<&str>| RecipientUpdate {
            id,
            status,
            message_id: None,
            error_code: code.map(str::to_string),
            error_message: None,
            detail: None,
        };
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[
                upd(101, RecipientStatus::Sent, None),
                upd(102, RecipientStatus::Pending, Some("FailedReceiver")),
                upd(103, RecipientStatus::Failed, Some("FailedReceiver")),
                upd(104, RecipientStatus::Sent, None),
            ],
            None,
            now(),
        )
        .expect("outcome");
        assert!(j.any_call_settled(&id).expect("q"));
        assert_eq!(
            j.sendable_detail(&id, &[101, 102, 103, 104], false)
                .expect("q"),
            [Sendable {
                id: 102,
                refusals: 1,
                pending: true
            }]
        );
        // A resend tried twice, not processed, left planned by a stop.
        j.mark_in_flight(&id, 1, "v", &[102], None, now())
            .expect("mark");
        j.mark_retry(&id, 1, Some("InternalError"), "HTTP 500", now())
            .expect("retry");
        j.mark_in_flight(&id, 1, "v", &[102], None, now())
            .expect("mark");
        j.mark_retry(&id, 1, Some("InternalError"), "HTTP 500", now())
            .expect("retry");
        // The next session settles it (its attempts count) and numbers resends after it.
        assert_eq!(j.prepare_requeue(&id, now()).expect("prepare"), 2);
        assert_eq!(j.call_counts(&id).expect("calls")[&CallState::Planned], 0);
        let row = |j: &Journal| {
            j.recipients(&id)
                .expect("rows")
                .into_iter()
                .find(|r| r.id == Some(102))
                .expect("row")
        };
        assert_eq!(row(&j).attempts, 3);
        assert_eq!(row(&j).status, RecipientStatus::Pending);
        j.mark_in_flight(&id, 2, "v", &[102], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            2,
            CallState::Done,
            &[upd(102, RecipientStatus::Sent, None)],
            None,
            now(),
        )
        .expect("outcome");
        assert_eq!(row(&j).attempts, 4, "every request that carried it");
        assert_eq!(row(&j).status, RecipientStatus::Sent);
        assert_eq!(j.extra_calls(&id).expect("n"), 2);
        let c = j.counts(&id).expect("counts");
        assert_eq!(c[&RecipientStatus::Sent], 3);
        assert_eq!(c[&RecipientStatus::Failed], 1);
        assert_eq!(c[&RecipientStatus::Pending], 0);
        // The refusal that made 103 `failed` is counted too.
        let n: i64 = j
            .connection()
            .query_row("SELECT refusals FROM recipients WHERE id = 103", [], |r| {
                r.get(0)
            })
            .expect("refusals");
        assert_eq!(n, 1);
    }

    #[test]
    fn conversation_in_flight_is_replanned_not_unknown() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let mut nr = new_run("h1");
        nr.action = Action::Conversation;
        let r = rows(&[]);
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        let id = j
            .open_run(&nr, ResumeOptions::default(), &mut f, now())
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101], Some("imcast-abc"), now())
            .expect("mark");
        let rec = j.recover(&id, Action::Conversation).expect("recover");
        assert_eq!(rec.replanned_calls, 1);
        assert_eq!(rec.unknown_recipients, 0);
        assert_eq!(
            j.sendable(&id, &[101], false).expect("q"),
            vec![101],
            "resent with the same ClientMsgId"
        );
    }

    /// A direct insert of a run row (bypassing `open_run`).
    fn insert_run(
        conn: &Connection,
        id: &str,
        occurrence: Option<&str>,
        status: &str,
        is_test: bool,
    ) -> rusqlite::Result<usize> {
        conn.execute(
            "INSERT INTO runs(id, campaign, occurrence, plan_hash, action, status, flags, is_test, created_at,
                              updated_at, audit, limit_count, limit_window_ms, total_calls, key)
             VALUES (?1, 'spring', ?2, 'h', 'batch', ?3, '{}', ?4, '2026-03-01T09:00:00Z',
                     '2026-03-01T09:00:00Z', '{}', 1, 1000, 1, (SELECT COALESCE(MAX(key), 0) + 1 FROM runs))",
            params![id, occurrence, status, is_test],
        )
    }

    /// Two journals on one file (two threads, released together) call `open_run` with the same
    /// arguments; both journals stay open until both have decided.
    fn race_two(
        dir: &Path,
        hash: &'static str,
        o: ResumeOptions,
        r: Vec<SeedRow>,
    ) -> Vec<(Journal, Result<Opened, JournalError>)> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (dir, b, r) = (dir.to_path_buf(), barrier.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut j = Journal::open(&dir).expect("open");
                    b.wait();
                    let res = open(&mut j, hash, o, r);
                    (j, res)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    }

    #[test]
    fn two_journals_racing_open_run_act_exactly_once() {
        let o = ResumeOptions::default();
        let new_run = ResumeOptions { new_run: true, ..o };
        let continue_changed = ResumeOptions {
            continue_changed: true,
            ..o
        };
        let resend_unknown = ResumeOptions {
            resend_unknown: true,
            ..o
        };
        // (what is there before, how both open, what the winner gets)
        type Setup = fn(&mut Journal);
        fn nothing(_: &mut Journal) {}
        /// A run whose process died (its journal closed) with a call in flight.
        fn interrupted(j: &mut Journal) {
            let id = open(j, "h1", ResumeOptions::default(), rows(&[]))
                .expect("create")
                .run()
                .id
                .clone();
            j.mark_in_flight(&id, 0, "v", &[101], None, now())
                .expect("mark");
        }
        fn finished_with_unknown(j: &mut Journal) {
            interrupted(j);
            let id = j.latest_run("spring", false).expect("q").expect("run").id;
            j.recover(&id, Action::Batch).expect("recover");
            j.set_status(&id, RunStatus::Finished, None, now())
                .expect("finish");
        }
        let cases: [(&str, Setup, &'static str, ResumeOptions, Vec<SeedRow>); 6] = [
            ("fresh", nothing, "h1", o, rows(&[])),
            ("resume", interrupted, "h1", o, rows(&[])),
            ("suppressions", interrupted, "h2", o, rows(&[104])),
            (
                "--continue-changed",
                interrupted,
                "h2",
                continue_changed,
                rows(&[]),
            ),
            ("--new-run", finished_with_unknown, "h1", new_run, rows(&[])),
            (
                "--resend-unknown",
                finished_with_unknown,
                "h1",
                resend_unknown,
                rows(&[]),
            ),
        ];
        for (name, setup, hash, opts, r) in cases {
            for round in 0..5 {
                let d = tempfile::tempdir().expect("tempdir");
                {
                    let mut j = Journal::open(d.path()).expect("create the database");
                    setup(&mut j);
                }
                let results = race_two(d.path(), hash, opts, r.clone());
                let ctx = format!(
                    "{name}, round {round}: {:?}",
                    results.iter().map(|r| &r.1).collect::<Vec<_>>()
                );
                let won: Vec<&Opened> = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .collect();
                let lost: Vec<&JournalError> = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().err())
                    .collect();
                assert_eq!(won.len(), 1, "{ctx}");
                let expected = match won[0] {
                    Opened::Created(_) => ["fresh", "--new-run"].contains(&name),
                    Opened::Resumed { .. } => ["resume", "--resend-unknown"].contains(&name),
                    Opened::ResumedWithSuppressions { .. } => name == "suppressions",
                    Opened::Continued { .. } => name == "--continue-changed",
                    Opened::AlreadyFinished(_) => false,
                };
                assert!(expected, "{ctx}");
                assert!(matches!(lost[0], JournalError::Busy { .. }), "{ctx}");
                assert_eq!(lost[0].exit(), Exit::Busy);
                let msg = lost[0].to_string();
                assert!(
                    msg.contains("being sent by another imcast process"),
                    "{msg}"
                );
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
                // The winner holds the one unfinished run.
                let j = &results[0].0;
                let runs = j.runs("spring").expect("runs");
                let unfinished: Vec<&RunInfo> =
                    runs.iter().filter(|r| r.status.is_unfinished()).collect();
                assert_eq!(unfinished.len(), 1, "{ctx}");
                assert_eq!(unfinished[0].id, won[0].run().id, "{ctx}");
                let holder = results
                    .iter()
                    .find(|(_, r)| r.is_ok())
                    .map(|(j, _)| j.owner.clone());
                assert_eq!(j.ops().owner_of(&unfinished[0].id).expect("q"), holder);
            }
        }
    }

    #[test]
    fn a_changed_plan_meets_a_run_being_sent_busy_and_a_dead_one_changed() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let id = open(&mut a, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        let mut b = Journal::open(d.path()).expect("open b");
        let mut other = rows(&[]);
        other[0].id = Some(999);
        let e = open(&mut b, "h2", ResumeOptions::default(), other.clone()).expect_err("busy");
        assert!(matches!(e, JournalError::Busy { .. }), "{e}");
        // Refused without a trace: the lease is still a's.
        assert_eq!(b.ops().owner_of(&id).expect("q"), Some(a.owner.clone()));
        drop(a);
        let e = open(&mut b, "h2", ResumeOptions::default(), other).expect_err("changed");
        assert_eq!(e.exit(), Exit::Changed, "{e}");
        // The refusal rolled back the lease it took on the way.
        assert_ne!(b.ops().owner_of(&id).expect("q"), Some(b.owner.clone()));
    }

    #[test]
    fn a_live_lease_is_kept_and_a_dead_one_taken() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open(&mut a, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .clone();
        let b = Journal::open(d.path()).expect("open b");
        // Held by a's open journal: refused, and the lease stays a's.
        let e = b.claim(&run, now()).expect_err("a holds it");
        assert_eq!(e.exit(), Exit::Busy);
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(a.owner.clone()));
        // Another host's lease counts as live.
        let set = |o: &str| {
            b.connection()
                .execute(
                    "UPDATE runs SET owner = ?2 WHERE id = ?1",
                    params![run.id, o],
                )
                .expect("set owner")
        };
        set("some-other-host:1:0");
        assert!(b.claim(&run, now()).is_err());
        // A process that is gone (this host, no such pid), an old-format lease with this
        // process's pid (an earlier process), and a journal of this process that was closed:
        // all dead, so taken over.
        let me = std::process::id();
        let host = hostname();
        let closed = {
            let c = Journal::open(d.path()).expect("open c");
            c.owner.clone()
        };
        // A child killed and not yet reaped: a zombie, which sends nothing more.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        child.kill().expect("kill");
        let zombie = format!("{host}:{}:0", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while owner_alive(&zombie) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!owner_alive(&zombie), "a zombie is not a live holder");
        assert!(owner_alive(&format!("{host}:{me}:{}", b.instance)));
        for dead in [
            format!("{host}:4294967295:0"),
            format!("{host}:{me}"),
            closed,
            zombie,
        ] {
            set(&dead);
            b.claim(&run, now())
                .unwrap_or_else(|e| panic!("{dead}: {e}"));
            assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(b.owner.clone()));
        }
        // Released by its holder only.
        a.release(&run.id).expect("release");
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(b.owner.clone()));
        b.release(&run.id).expect("release");
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), None);
        let _ = child.wait();
    }

    #[test]
    fn the_database_refuses_a_second_unfinished_run() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("create");
        let c = j.connection();
        for status in ["running", "paused", "interrupted"] {
            let e = insert_run(c, &format!("dup-{status}"), None, status, false)
                .expect_err("a second unfinished run");
            assert!(is_unfinished_conflict(&e), "{e}");
            let je = JournalError::Db {
                path: j.path().to_path_buf(),
                source: e,
            };
            assert_eq!(je.exit(), Exit::Busy, "never an internal error");
        }
        // Finished runs, test runs and other occurrences are not limited.
        insert_run(c, "done", None, "finished", false).expect("finished");
        insert_run(c, "cancelled", None, "cancelled", false).expect("cancelled");
        insert_run(c, "test-1", None, "running", true).expect("test run");
        insert_run(c, "test-2", None, "running", true).expect("another test run");
        insert_run(c, "occ-1", Some("2026-03-01T09:00Z"), "running", false).expect("occurrence");
        let e = insert_run(c, "occ-2", Some("2026-03-01T09:00Z"), "paused", false)
            .expect_err("same occurrence");
        assert!(is_unfinished_conflict(&e), "{e}");
        // Reopening a finished run while another is unfinished is refused too.
        let e = c
            .execute("UPDATE runs SET status = 'running' WHERE id = 'done'", [])
            .expect_err("reopen");
        assert!(is_unfinished_conflict(&e), "{e}");
    }

    #[test]
    fn migration_cancels_older_duplicate_unfinished_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        {
            // Schema 3 (before the index), holding what the race left: two unfinished runs of
            // campaign `spring`, the older with a call in flight, and two of one occurrence.
            let conn = Connection::open(&path).expect("open");
            for m in &MIGRATIONS[..UNFINISHED_INDEX_MIGRATION] {
                conn.execute_batch(m).expect("schema");
            }
            conn.execute_batch(&format!(
                "PRAGMA user_version = {UNFINISHED_INDEX_MIGRATION};"
            ))
            .expect("version");
            insert_run(&conn, "old", None, "running", false).expect("old");
            insert_run(&conn, "new", None, "interrupted", false).expect("new");
            insert_run(&conn, "test", None, "running", true).expect("test");
            insert_run(&conn, "o1", Some("occ"), "paused", false).expect("o1");
            insert_run(&conn, "o2", Some("occ"), "running", false).expect("o2");
            conn.execute_batch(
                "UPDATE runs SET created_at = '2026-03-01T08:00:00Z' WHERE id IN ('old', 'o1');
                 UPDATE runs SET owner = 'somewhere:1' WHERE id = 'old';",
            )
            .expect("times");
            for (run, key) in [("old", 1i64), ("new", 2)] {
                for line in 2..=5i64 {
                    conn.execute(
                        "INSERT INTO recipients(rk, id, status) VALUES (?1, ?2, ?3)",
                        params![
                            (key << 32) | line,
                            100 + line,
                            if line == 2 { "sent" } else { "pending" }
                        ],
                    )
                    .expect("recipient");
                }
                conn.execute(
                    "INSERT INTO run_counts(run_id, status, n) VALUES (?1, 'sent', 1), (?1, 'pending', 3)",
                    [run],
                )
                .expect("counts");
            }
            conn.execute(
                "INSERT INTO calls(run_id, seq, variant, receivers, state, attempts, updated_at)
                 VALUES ('old', 0, 'v', '[103]', 'in_flight', 1, '2026-03-01T09:00:00Z')",
                [],
            )
            .expect("call");
        }
        let j = Journal::open_path(&path).expect("migrate");
        let old = j.run("old").expect("q").expect("old");
        assert_eq!(old.status, RunStatus::Cancelled);
        assert!(old.finished_at.is_some());
        let why = old.stop_reason.expect("a stop reason");
        assert!(why.contains("run new"), "{why}");
        let c = j.counts("old").expect("counts");
        assert_eq!(c[&RecipientStatus::Sent], 1);
        assert_eq!(
            c[&RecipientStatus::Unknown],
            1,
            "the in-flight receiver may have been delivered"
        );
        assert_eq!(c[&RecipientStatus::Cancelled], 2);
        assert_eq!(c[&RecipientStatus::Pending], 0);
        assert_eq!(j.ops().owner_of("old").expect("q"), None);
        // The newest of each group stays as it was; test runs are not touched.
        assert_eq!(
            j.run("new").expect("q").expect("new").status,
            RunStatus::Interrupted
        );
        assert_eq!(
            j.counts("new").expect("counts")[&RecipientStatus::Pending],
            3
        );
        assert_eq!(
            j.run("o1").expect("q").expect("o1").status,
            RunStatus::Cancelled
        );
        assert_eq!(
            j.run("o2").expect("q").expect("o2").status,
            RunStatus::Running
        );
        assert_eq!(
            j.run("test").expect("q").expect("test").status,
            RunStatus::Running
        );
        assert_eq!(
            j.unfinished_run("spring", None).expect("q").map(|r| r.id),
            Some("new".to_string())
        );
        // And the index now holds.
        assert!(insert_run(j.connection(), "third", None, "paused", false).is_err());
    }

    #[test]
    fn control_requests_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(d.path()).expect("open");
        assert_eq!(j.control("c").expect("q"), None);
        j.request_control("c", ControlRequest::Pause, Some("ops"), now())
            .expect("req");
        assert_eq!(j.control("c").expect("q"), Some(ControlRequest::Pause));
        j.clear_control("c").expect("clear");
        assert_eq!(j.control("c").expect("q"), None);
    }
}
