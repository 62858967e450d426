//! The journal: durable run state in SQLite at `<state_dir>/imcast.db` (the one state database;
//! other stages add their own tables through [`Journal::connection`] and
//! [`Journal::migrate_extra`]), or with `[state] url` in the PostgreSQL state store
//! ([`Journal::open_store`]: the same tables, made by the store's migration 6,
//! `crate::pg::schema`), shared by every process and host on it. Every command opens it through
//! [`Journal::open_state`] with the store [`journal_store`] picks (mock runs stay in SQLite).
//!
//! Owns: runs (one per campaign send, keyed by campaign + optional occurrence, recording the plan
//! hash, status, flags, audit), calls (one row per provider call: planned → in_flight → done |
//! unknown), recipients (one row per audience row, with exactly one status) with per-status
//! counters (`run_counts`), the invocations that opened each run (`run_invocations`, the audit),
//! and control requests (pause/resume/cancel per campaign). These
//! tables have no other writer or reader: every other module calls the methods of [`Journal`]
//! (the operations a store holds, with plain-data arguments and results). The limiter keeps its
//! own file beside it (see `throttle`); the scheduler (`daemon::state`) and the report
//! (`report::facts`) keep their own tables in this file.
//!
//! Invariants: WAL with `synchronous=FULL`; an in-flight mark is committed before its request
//! leaves; a call's per-recipient outcomes are committed in the same transaction that marks it
//! done; after a crash an in-flight call without an answer makes its receivers `unknown` (except
//! for SendMessage, whose ClientMsgId makes a resend safe). A recipient refused with
//! FailedReceiver stays `pending` with its refusals counted until a later call resends it (see
//! `calls`). At most one unfinished (running/paused/interrupted) non-test run exists per
//! (campaign, occurrence): `open_run` decides and acts in one IMMEDIATE transaction and a partial
//! unique index (`runs_one_unfinished`) makes the database refuse a second one; a refusal is
//! [`JournalError::Busy`] (exit 6). A run's lease (see `lease`: a holder `runs.owner` =
//! `host:pid:instance`, one per open `Journal`; an expiry renewed by the sending engine's
//! heartbeat; a fencing number) is checked and taken in one transaction; every write for a run
//! checks the fence in its own transaction, so once another process took the run over, this one
//! writes nothing more ([`JournalError::Fenced`], exit 6). Every method is synchronous: async callers
//! run it with `spawn_blocking` ([`SharedJournal`]). A failed write is returned as a
//! [`JournalError`] (never swallowed, never flattened to text: its exit code survives) — the
//! engine stops the run on it; a full disk (SQLITE_FULL, ENOSPC) is recognizable
//! ([`JournalError::disk_full`], exit 8) so the run can say so in one message.
//!
//! Stored compactly (schema 10, issue 14: a run of ten million leaves under 50 bytes a recipient):
//! a recipient row is a few integers (its key, id, status code, call, attempts, message id), and
//! what a call or a run shares is stored once — a plan call's audience lines (`call_plan`), a
//! run's Content variants (`run_variants`), the time a call was answered (a row's time unless it
//! has its own) — with per-recipient text (error, P2P detail, a raw id that is not the number)
//! only where a row has it. There is no index on `id`: a call's receivers are found through its
//! plan call's lines (see `rows`). A new run's planned `pending` rows are not written when the run
//! is seeded but held per plan call (`deferred`, schema 12) until the call's outcome: a receiver
//! it delivered plainly stays in its call's entry (`delivered`: ids and message ids packed), any
//! other becomes a row with its final values; readers see the entries as rows.
//!
//! Portable SQL throughout except where `schema` says: every statement runs on
//! [`crate::store::Conn`] in the dialect both backends accept (numbered placeholders, `ON
//! CONFLICT … DO NOTHING/UPDATE` where SQLite's `INSERT OR IGNORE/REPLACE` was, runs ordered by
//! their `key` and read by named columns rather than `rowid` and `SELECT *`, `IS NOT DISTINCT
//! FROM` for `IS ?`, `CAST(SUM(…) AS BIGINT)`, `CASE WHEN EXISTS(…) THEN 1 ELSE 0 END` for a
//! boolean read back, `?N = 1` for a boolean parameter, `LIMIT` with `i64::MAX` rather than
//! `-1`, `SAVEPOINT`/`RELEASE SAVEPOINT`, the reserved `"user"` column quoted, packed lists as
//! bytes (`bytea`)). SQLite-only and kept so: the migration history (`schema`, through
//! [`crate::store::Conn::as_sqlite`]; PostgreSQL's journal tables are the store's migrations,
//! [`crate::pg::schema`]), the pragmas (`synchronous` per group commit in `commit`, the cache
//! size when opening) and `UPDATE OR FAIL` for a call's per-row outcome (`calls`, measured
//! faster on SQLite). PostgreSQL-only, behind [`crate::store::Conn::backend`] in the file that
//! owns it: bulk writes of many rows in one statement (seeding a run's rows through a binary
//! `COPY`, `rows::RowWriter`; a call's outcomes through `unnest` of arrays, `calls`), since a
//! round trip per row costs 30–50 µs there; the report's scan reading the run's call times first
//! (`read`); a temporary table's `BIGINT` key (`resume`). Scans of a run's rows
//! (recipients, calls, attempts, a retry's failed rows) stream through
//! [`crate::store::Conn::for_each`], so memory stays flat whatever the run's size.
//!
//! Concurrency: every journal write transaction begins in one place ([`begin_write`]): `BEGIN
//! IMMEDIATE` on SQLite; on PostgreSQL a `READ COMMITTED` transaction whose first statement takes
//! the advisory lock [`JOURNAL_LOCK`] (`pg_advisory_xact_lock`, held until it ends), so journal
//! writers are serialized on PostgreSQL exactly as SQLite's one write lock serializes them — the
//! `open_run` decision, lease claims, fence checks and counters rely on it. Reads outside a
//! transaction take nothing. A writer that waits past the connection's `lock_timeout` (or meets
//! a statement timeout, deadlock or serialization failure) fails as busy (exit 6, "try again"),
//! as SQLITE_BUSY does.
//!
//! Must not: talk to the network other than to the PostgreSQL store; let a rusqlite or
//! postgres type into a public signature (other stages' own tables beside the journal's go through
//! [`Journal::connection`], a [`crate::store::Conn`] in portable SQL, never the journal's tables;
//! the [`JournalError::Db`] source is a [`crate::store::StoreError`]). On SQLite only: the file's
//! pragmas and its migration history (`schema`). Integration tests may read the file to check what is stored
//! (and write rows an older version left); no module of the crate does.
//!
//! # The surface, by concern
//!
//! The public methods are the operations a store holds: plain data in and out (ids, [`Timestamp`]s,
//! the row and status types of `types`), every error a [`JournalError`], no transaction or
//! connection handed out (the next backend implements the same list). By concern:
//!
//! - **Opening**: [`Journal::open_state`] (what commands use: SQLite or the store, from
//!   [`journal_store`]), [`Journal::open_state_reader`], [`Journal::open`], [`Journal::open_path`],
//!   [`Journal::open_store`], [`Journal::open_reader`], [`Journal::reader`], [`Journal::source`]
//!   ([`JournalSource`]), [`Journal::path`] (the file, or the store's URL without a password),
//!   [`Journal::store_url`], [`journal_exists`]; [`new_run_id`], [`create_private_dir`]. Other
//!   stages' tables beside the journal's: [`Journal::migrate_extra`] (SQLite; the store's come
//!   from its migrations), [`Journal::connection`].
//! - **Runs and the lease**: [`Journal::open_run`] (the resume decision: create, resume,
//!   continue, reopen, or "already finished", with the lease, in one transaction),
//!   [`Journal::run`], [`Journal::latest_run`], [`Journal::unfinished_run`], [`Journal::runs`],
//!   [`Journal::campaigns`], [`Journal::set_status`], [`Journal::claim`], [`Journal::renew`],
//!   [`Journal::release`], [`Journal::lease`], [`Journal::set_lease_expiry`],
//!   [`Journal::prune_runs`].
//! - **Recipients**: [`Journal::for_each_recipient`], [`Journal::for_each_recipient_ref`],
//!   [`Journal::recipients`], [`Journal::last_line`], [`Journal::sendable`],
//!   [`Journal::sendable_detail`], [`Journal::all_valid_pending`], [`Journal::expire_pending`],
//!   [`Journal::cancel_pending`].
//! - **Calls**: [`Journal::mark_in_flight`], [`Journal::mark_retry`], [`Journal::record_outcome`],
//!   [`Journal::write_batch`] and [`SharedJournal::write`] (group commit), [`Journal::recover`]
//!   (after a crash), [`Journal::prepare_requeue`], [`Journal::extra_calls`],
//!   [`Journal::any_call_settled`], [`Journal::calls`], [`Journal::calls_in_state`],
//!   [`Journal::for_each_answered_call`].
//! - **Counts**: [`Journal::counts`], [`Journal::counts_by_scan`], [`Journal::count_status`],
//!   [`Journal::call_counts`], [`Journal::attempts`], [`Journal::recent_counts`].
//! - **Control**: [`Journal::request_control`], [`Journal::control`],
//!   [`Journal::control_pending`], [`Journal::pending_controls`], [`Journal::clear_control`],
//!   [`Journal::finish_control`].
//! - **Audit**: who started a run, where and with which risky flags is part of the run row
//!   ([`NewRun::audit`] in, [`RunInfo::audit`] and [`RunFlags::risky`] out; [`hostname`]); every invocation that
//!   opened a run (created, resumed, continued, retry: who, where, when, its flags) is a row of
//!   `run_invocations`, written in the transaction of the decision it records (`audit`).
//!
//! Async callers use [`SharedJournal`] ([`SharedJournal::with`] runs any of the above on the
//! blocking pool).
//!
//! One concern per file: `types` (statuses, runs, rows, writes), `schema` (migrations, the
//! recipient key, stored time), `rows` (seeding the compact rows, finding a call's receivers among
//! them, what a reader needs to give a row back whole), `pack` (packed lists and row times), `runs` (run rows and their status), `lease` (who is sending a
//! run), `resume` (the `open_run` decision), `calls` (in-flight marks, outcomes, re-queued
//! receivers, crash recovery), `commit` (group commit and [`SharedJournal`]), `counts` (the
//! per-status counters), `read` (recipient and call reads), `control` (pause/resume/cancel
//! requests), `prune` (deleting old runs), `audit` (the invocations that opened each run),
//! `retry` (the `--retry-failed` follow-up run and what it would send), `attempts` (the log of
//! admitted attempts: admission instants and error codes, for the report's figures), `stages`
//! (a run's stages: their times, states and gates). `Ops` below is the set
//! of run statements that can run inside another statement's transaction (a decision in
//! `open_run`, a migration).

mod attempts;
mod audit;
#[cfg(test)]
mod backends;
mod calls;
mod commit;
mod control;
mod counts;
mod deferred;
mod lease;
mod pack;
mod prune;
mod read;
mod resume;
mod retry;
mod rows;
mod runs;
mod schema;
mod stages;
#[cfg(test)]
mod testutil;
mod types;

pub use attempts::Admission;
pub use audit::Invocation;
pub use commit::SharedJournal;
pub use control::{ControlRequest, PendingControl};
pub use lease::{hostname, Lease};
pub use retry::{describe_codes, RetryCandidates};
pub use stages::{NewStage, StageRow};
pub use types::{
    CallEnd, CallRow, CallState, Mark, NewRun, Opened, Outcome, RecipientRef, RecipientRow,
    RecipientStatus, RecipientUpdate, Recovered, ResumeOptions, RunCounts, RunFlags, RunInfo,
    RunStatus, SeedRow, SeedRows, Sendable, Write,
};

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::Connection;

use crate::exit::Exit;
use lease::{live_leases, new_owner, Holder};
use schema::is_unfinished_conflict;

/// The database file name inside the state directory.
pub const DB_FILE: &str = "imcast.db";

/// Errors from the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}{}", lock_wait_hint(source))]
    Db {
        path: PathBuf,
        source: crate::store::StoreError,
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
    #[error("run {run_id} of campaign {campaign:?} is being sent by another imcast process ({owner}); wait for it or stop it. Nothing was sent by this process")]
    Busy {
        campaign: String,
        run_id: String,
        owner: String,
    },
    /// Another process claimed the run (its lease expired while this one was paused, stopped
    /// or cut off): this process must not write to the run any more, and did not.
    #[error(
        "run {run_id} was taken over by another imcast process ({holder}){}; this process stopped \
         sending it and wrote nothing more to it (its calls in flight are that process's to settle: \
         their recipients become `unknown`)",
        match at { Some(t) => format!(" at {t}"), None => String::new() }
    )]
    Fenced {
        run_id: String,
        /// Who took it over, as people read it: `pid 4242 on host-a`.
        holder: String,
        at: Option<Timestamp>,
    },
    #[error("no run {0} in the journal")]
    NoRun(String),
    #[error("no journal at {0}")]
    Missing(PathBuf),
    #[error("reading the audience to seed the run: {0}")]
    Seed(String),
    #[error("journal holds a value it does not understand: {0}")]
    Corrupt(String),
    /// A grouped write (several calls' marks/outcomes in one transaction) failed: every call
    /// whose write was in the batch gets this same error, which keeps its exit code.
    #[error("journal write failed: {0}")]
    Write(std::sync::Arc<JournalError>),
    /// The blocking task that ran a journal operation panicked or was dropped.
    #[error("journal worker failed: {0}")]
    Worker(String),
    /// `--retry-failed` cannot start: no finished run, nothing retryable in it, or an unfinished
    /// run to resume first. Nothing was sent.
    #[error("{0}")]
    Retry(String),
}

impl JournalError {
    /// The file or directory a full disk (or quota) refused to grow, when that is what this
    /// error is: SQLite's SQLITE_FULL, or ENOSPC/EDQUOT creating the state directory.
    pub fn disk_full(&self) -> Option<&Path> {
        match self {
            JournalError::Db {
                path,
                source: crate::store::StoreError::Sqlite(source),
            } if crate::db::is_disk_full(source) => Some(path),
            JournalError::Io { path, source } if crate::exit::is_storage_full(source) => Some(path),
            JournalError::Write(e) => e.disk_full(),
            _ => None,
        }
    }

    /// The exit code this error means.
    pub fn exit(&self) -> Exit {
        if self.disk_full().is_some() {
            return Exit::Environment;
        }
        match self {
            JournalError::Changed { .. } => Exit::Changed,
            JournalError::Busy { .. } | JournalError::Fenced { .. } => Exit::Busy,
            JournalError::Db { source, .. }
                if matches!(source, crate::store::StoreError::Sqlite(e) if is_busy(e))
                    || source.is_lock_wait()
                    || is_unfinished_conflict(source) =>
            {
                Exit::Busy
            }
            JournalError::NoRun(_) | JournalError::Seed(_) | JournalError::Retry(_) => {
                Exit::Invalid
            }
            JournalError::Write(e) => e.exit(),
            _ => Exit::Internal,
        }
    }
}

impl JournalError {
    /// Whether this is (or a grouped write failed with) [`JournalError::Fenced`].
    pub fn is_fenced(&self) -> bool {
        match self {
            JournalError::Fenced { .. } => true,
            JournalError::Write(e) => e.is_fenced(),
            _ => false,
        }
    }
}

/// What a journal error adds when PostgreSQL gave up waiting for the journal's lock (or another
/// session's rows): who held it and what to do.
fn lock_wait_hint(source: &crate::store::StoreError) -> &'static str {
    if source.is_lock_wait() {
        " (another imcast process held the journal's lock too long; this write was not made: try \
         again once that process is done)"
    } else {
        ""
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked
    )
}

/// The state database.
pub struct Journal {
    conn: crate::store::Conn,
    /// The SQLite file, or the PostgreSQL store's URL without its password (for messages).
    path: PathBuf,
    /// The PostgreSQL store this journal is on (`None`: SQLite at `path`), for [`Journal::reader`].
    store: Option<crate::pg::PgUrl>,
    /// The lease id this journal writes into `runs.owner` and the fences it took (see
    /// [`Journal::claim`]).
    owner: Holder,
    /// This journal's entry in [`LIVE_LEASES`].
    instance: u64,
    /// The receivers' rows each in-flight mark looked up, by (run, call), for its outcome (see
    /// `calls::Marked`).
    marked: calls::Marked,
}

impl Drop for Journal {
    fn drop(&mut self) {
        live_leases().remove(&self.instance);
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
        let db = |source: rusqlite::Error| JournalError::Db {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let conn = crate::db::open(path, "FULL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        // Up to 16 MiB of page cache (grows only as used): a run's rows are appended and updated
        // in audience order, so the hot pages are few; the id index is what a larger audience
        // touches all over. Bounded, whatever the audience size.
        conn.pragma_update(None, "cache_size", -16384).map_err(db)?;
        let (owner, instance) = new_owner();
        let mut j = Journal {
            conn: crate::store::Conn::sqlite(conn),
            path: path.to_path_buf(),
            store: None,
            owner,
            instance,
            marked: Default::default(),
        };
        j.migrate()?;
        Ok(j)
    }

    /// Open the journal in the PostgreSQL state store at `url` (blocking: off the async runtime).
    /// Its tables come from the store's migrations (`crate::pg::schema`, applied on connecting;
    /// a newer schema is refused); [`Journal::path`] names the store without its password.
    pub fn open_store(url: &crate::pg::PgUrl) -> Result<Journal, JournalError> {
        Self::open_store_with(url, &[])
    }

    /// [`Journal::open_store`] whose connection runs `on_connect` on every (re)connect
    /// ([`crate::store::Conn::postgres_with`]).
    fn open_store_with(
        url: &crate::pg::PgUrl,
        on_connect: &[&str],
    ) -> Result<Journal, JournalError> {
        let path = PathBuf::from(url.redacted());
        let conn = crate::store::Conn::postgres_with(url, on_connect).map_err(|source| {
            JournalError::Db {
                path: path.clone(),
                source,
            }
        })?;
        let (owner, instance) = new_owner();
        Ok(Journal {
            conn,
            path,
            store: Some(url.clone()),
            owner,
            instance,
            marked: Default::default(),
        })
    }

    /// Open the journal where the state configuration keeps it: SQLite at
    /// `<state_dir>/imcast.db` (created, owner-only directory) without `[state] url`, the
    /// PostgreSQL store with it. Every command opens its journal through this.
    pub fn open_state(store: &crate::config::StateStore) -> Result<Journal, JournalError> {
        match store {
            crate::config::StateStore::Sqlite(dir) => Self::open(dir),
            crate::config::StateStore::Postgres(url) => Self::open_store(url),
        }
    }

    /// A journal that only reads, where the state configuration keeps it (see
    /// [`Journal::open_reader`]; on PostgreSQL a second connection whose transactions are read
    /// only). `Missing` when the SQLite file does not exist yet.
    pub fn open_state_reader(
        store: &crate::config::StateStore,
        cache_kib: u32,
    ) -> Result<Journal, JournalError> {
        match store {
            crate::config::StateStore::Sqlite(dir) => {
                Self::open_reader(&dir.join(DB_FILE), cache_kib)
            }
            // Read only on every session: a silent reconnect stays read only.
            crate::config::StateStore::Postgres(url) => Self::open_store_with(
                url,
                &["SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"],
            ),
        }
    }

    /// The database file (SQLite), or the PostgreSQL store's URL without its password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PostgreSQL store this journal is on (`None`: the SQLite file at [`Journal::path`]).
    pub fn store_url(&self) -> Option<&crate::pg::PgUrl> {
        self.store.as_ref()
    }

    /// Where another connection to this journal's database connects (a reader on a thread of
    /// its own: [`JournalSource::open_reader`]).
    pub fn source(&self) -> JournalSource {
        match &self.store {
            Some(url) => JournalSource::Store(url.clone()),
            None => JournalSource::File(self.path.clone()),
        }
    }

    /// The connection, for other stages' own tables beside the journal's (the scheduler's
    /// `sched_control`, the report's `report_*`), in portable SQL ([`crate::store`]): the SQLite
    /// file, or the PostgreSQL store. Never for the journal's own tables: their methods are the
    /// only way to them.
    pub fn connection(&self) -> &crate::store::Conn {
        &self.conn
    }

    fn db<E: Into<crate::store::StoreError>>(&self) -> impl Fn(E) -> JournalError + '_ {
        move |source| JournalError::Db {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// Begin a journal write transaction (see [`begin_write`]: on PostgreSQL it holds the journal's
    /// advisory lock until it ends).
    fn begin_write(&self) -> Result<crate::store::Tx<'_>, JournalError> {
        begin_write(&self.conn).map_err(self.db())
    }

    /// Statements on this journal's own connection (each commits by itself unless the caller
    /// opened a transaction).
    fn ops(&self) -> Ops<'_> {
        Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
            seeded: None,
        }
    }

    /// A second connection to the same database that only reads (`query_only`; on PostgreSQL a
    /// read-only session): for a reader on
    /// another thread (the report scans the halves of a large run in parallel). Writes through it
    /// fail.
    pub fn reader(&self) -> Result<Journal, JournalError> {
        self.source().open_reader(16 * 1024)
    }

    /// A journal that only reads the existing database at `path` (`query_only`, no migration;
    /// writes through it fail), with a page cache of at most `cache_kib` KiB: for a reader of its
    /// own (the sender's receiver look-ups, the daemon's metrics).
    pub fn open_reader(path: &Path, cache_kib: u32) -> Result<Journal, JournalError> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_path_buf()));
        }
        let db = |source: rusqlite::Error| JournalError::Db {
            path: path.to_path_buf(),
            source: source.into(),
        };
        let conn = crate::db::open(path, "FULL").map_err(db)?;
        conn.pragma_update(None, "query_only", true).map_err(db)?;
        conn.pragma_update(None, "cache_size", -i64::from(cache_kib))
            .map_err(db)?;
        // Its own lease id, never written (the connection is read-only).
        let (owner, instance) = new_owner();
        Ok(Journal {
            conn: crate::store::Conn::sqlite(conn),
            path: path.to_path_buf(),
            store: None,
            owner,
            instance,
            marked: Default::default(),
        })
    }
}

/// Where a journal's database is, to open another connection to it (see [`Journal::source`]).
#[derive(Debug, Clone)]
pub enum JournalSource {
    /// The SQLite file.
    File(PathBuf),
    /// The PostgreSQL state store.
    Store(crate::pg::PgUrl),
}

impl JournalSource {
    /// A journal that only reads this database (see [`Journal::open_reader`]; on PostgreSQL a
    /// connection of its own whose transactions are read only: blocking, off the async runtime).
    pub fn open_reader(&self, cache_kib: u32) -> Result<Journal, JournalError> {
        match self {
            JournalSource::File(path) => Journal::open_reader(path, cache_kib),
            JournalSource::Store(url) => Journal::open_state_reader(
                &crate::config::StateStore::Postgres(url.clone()),
                cache_kib,
            ),
        }
    }
}

/// The journal's run statements on one connection: inside [`Journal::open_run`]'s transaction
/// (so a decision and what it does commit together), in a migration, or on the journal's own
/// connection. Never begins or commits a transaction itself.
struct Ops<'a> {
    conn: &'a crate::store::Conn,
    path: &'a Path,
    /// The lease holder (id and fences) of the journal these statements act for.
    owner: &'a Holder,
    /// Where a run's creation leaves its plan calls' fingerprints (`calls::Marked`), for the
    /// journal to keep once the creation is committed; None: not kept.
    seeded: Option<&'a std::cell::RefCell<Option<calls::Seeded>>>,
}

impl Ops<'_> {
    fn db<E: Into<crate::store::StoreError>>(&self) -> impl Fn(E) -> JournalError + '_ {
        move |source| JournalError::Db {
            path: self.path.to_path_buf(),
            source: source.into(),
        }
    }
}

/// The SQLite connection of a journal, for the steps only SQLite has (its migration history,
/// pragmas, [`Journal::connection`]); the journal opens SQLite only until the PostgreSQL journal
/// opens through the store.
fn sqlite_of(conn: &crate::store::Conn) -> &Connection {
    #[allow(clippy::expect_used)]
    conn.as_sqlite()
        .expect("a SQLite-only journal step (migration history, pragma) on a SQLite journal")
}

/// The PostgreSQL advisory lock every journal write transaction takes first (see
/// [`begin_write`]); `imcast` in ASCII, then 2 (1 is the schema's, [`crate::pg::schema::SCHEMA_LOCK`]).
pub(crate) const JOURNAL_LOCK: i64 = 0x696d_6361_7374_0002;

/// Begin a journal write transaction: `BEGIN IMMEDIATE` on SQLite (the database's one write
/// lock); on PostgreSQL `READ COMMITTED` whose first statement takes the transaction-scoped
/// advisory lock [`JOURNAL_LOCK`], so journal writers are serialized exactly as on SQLite (the
/// `open_run` decision, claims, fences and counters rely on it). Every journal write
/// transaction begins here; reads outside a transaction need nothing.
fn begin_write(
    conn: &crate::store::Conn,
) -> Result<crate::store::Tx<'_>, crate::store::StoreError> {
    begin_write_then(conn, "")
}

/// [`begin_write`], then on PostgreSQL `pg_more` (a setting of the transaction) in the same
/// round trip as the `BEGIN` and the lock ([`crate::store::Conn::transaction_then`]).
fn begin_write_then<'c>(
    conn: &'c crate::store::Conn,
    pg_more: &str,
) -> Result<crate::store::Tx<'c>, crate::store::StoreError> {
    conn.transaction_then(&format!(
        "SELECT pg_advisory_xact_lock({JOURNAL_LOCK}); {pg_more}"
    ))
}

/// [`begin_write_then`], and on PostgreSQL `pg_read` in the same round trip (its rows as text;
/// see `crate::store::Conn::transaction_then_read`).
fn begin_write_then_read<'c>(
    conn: &'c crate::store::Conn,
    pg_more: &str,
    pg_read: Option<&str>,
) -> Result<(crate::store::Tx<'c>, Option<crate::store::TextRows>), crate::store::StoreError> {
    conn.transaction_then_read(
        &format!("SELECT pg_advisory_xact_lock({JOURNAL_LOCK}); {pg_more}"),
        pg_read,
    )
}

/// Where the journal of a state directory lives: the PostgreSQL store of `[state] url` (`url`),
/// shared by every state directory and host on it, else SQLite at `<state_dir>/imcast.db`. A
/// mock state directory (`mock`: `imcast run --mock` and what reads its runs) keeps its journal in SQLite whatever the configuration: mock runs
/// send nothing real and must not meet the campaign's real runs in the shared store (one
/// unfinished run per campaign occurrence).
pub fn journal_store(
    url: Option<&crate::pg::PgUrl>,
    state_dir: &Path,
    mock: bool,
) -> crate::config::StateStore {
    match url {
        Some(u) if !mock => crate::config::StateStore::Postgres(u.clone()),
        _ => crate::config::StateStore::Sqlite(state_dir.to_path_buf()),
    }
}

/// Whether the journal in `store` may hold runs: its SQLite file exists (reads never create
/// one); a PostgreSQL store always may.
pub fn journal_exists(store: &crate::config::StateStore) -> bool {
    match store {
        crate::config::StateStore::Sqlite(dir) => dir.join(DB_FILE).is_file(),
        crate::config::StateStore::Postgres(_) => true,
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
