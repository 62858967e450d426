//! The scheduler's occurrence record: in the state directory's SQLite file (`<state_dir>/imcast.db`)
//! or, with `[state] url`, in the PostgreSQL state store shared by every daemon on it.
//!
//! Owns: `sched_campaign` (per campaign: the cursor — the last occurrence already decided — the
//! user pause flag, the file and next fire time last published), `sched_occurrence` (one row per
//! decided occurrence, keyed by campaign and UTC instant in whole seconds, naming the daemon that
//! decided or claimed it: its node id, host, pid and when), `sched_roster` (one row per daemon
//! node on the store: host, pid, imcast version, started, last seen, stopped — see
//! [`roster_beat`] and [`DaemonRow::alive`]) — all in the store ([`open_store`]:
//! SQLite or PostgreSQL, the same statements through [`crate::store`]) — and, always in the
//! local SQLite file ([`open`]): `sched_node` (this state directory's node id, random, made once),
//! `sched_control` (beside the journal: with `[state] url` in the store, its migration 6; a log
//! of what the daemon did with each pause/resume/cancel request; the
//! requests themselves are the journal's — see
//! [`Journal::pending_controls`](crate::journal::Journal::pending_controls) — and a log row is
//! written by [`log_control`] inside
//! [`Journal::finish_control`](crate::journal::Journal::finish_control)'s transaction, so the
//! request's removal and its log commit together) and `sched_daemon` (a heartbeat so two daemons
//! do not share one state directory).
//!
//! Invariants: an occurrence row is inserted in the same transaction that advances the cursor past
//! it, BEFORE its run starts, and the primary key makes a second insert a no-op (`ON CONFLICT DO
//! NOTHING`: on PostgreSQL a concurrent insert of the same key waits for the first to commit, then
//! does nothing) — this is what makes each occurrence fire at most once, on one machine or across
//! N daemons on one store. A queued or quiet-held occurrence is started by whoever moves it to
//! `claimed` first ([`claim_pending`]: a compare-and-set on its status).
//!
//! The run an occurrence starts is in the journal of the claiming daemon's state configuration:
//! the state directory's file, or with `[state] url` the store's journal that every daemon reads
//! (`Journal::open_state`). Which daemon resumes a run in progress is decided here by the
//! occurrence row: the one that claimed it, when it restarts (its node id is in its state
//! directory), or another daemon that takes it over.
//!
//! Takeover ([`takeover`], the rule in one place): an active occurrence whose claiming daemon
//! does not look alive ([`is_orphan`]) and whose run's lease expired, was released or does not
//! exist yet may be re-claimed by another daemon with a conditional UPDATE ([`take_over`]: of two
//! daemons exactly one wins), which names the new holder in node/host/pid/`claimed_at` and writes
//! a note (`taken over from HOST (pid N) at UTC`, [`TAKEN_OVER`]) into `detail`, kept after the
//! run's own detail when it ends ([`finished_detail`]); no column was added for it. The daemon
//! does this with `[state] url`, where the journal is in the same store (on one state directory
//! a dead daemon's run waits for a daemon started there).
//!
//! The roster says whom to look at; the run's lease (the journal's) is the authority: whether a
//! daemon "looks alive" compares its `last_seen` (its own clock) with the reader's clock, so it
//! assumes the hosts' clocks agree within seconds (NTP), and the window ([`ALIVE_BEATS`] refresh
//! intervals) is wide enough for that; the journal's claim checks the lease again and fences the
//! old holder off.
//!
//! Must not: touch the journal's tables (`runs`, `calls`, `recipients`, `run_counts`, `control`:
//! the journal's methods are the only way to them); [`migrate`] only creates `sched_*` tables
//! with `CREATE TABLE IF NOT EXISTS` (and adds missing columns), so it is safe on any connection
//! to the file.

use std::path::Path;

use crate::config::StateStore;
use crate::journal::PendingControl;
use crate::store::{params, OptionalExtension, Row, StoreError};

pub use crate::store::Conn;

/// Errors from the scheduler tables.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open { path: String, source: StoreError },
    #[error("state database: {0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Store(StoreError::Sqlite(e))
    }
}

/// Create the scheduler's SQLite tables if they do not exist. Idempotent; safe on the journal's
/// connection.
pub fn migrate(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS sched_campaign (
            name TEXT PRIMARY KEY,
            cursor INTEGER,
            paused INTEGER NOT NULL DEFAULT 0,
            path TEXT,
            next_fire INTEGER,
            updated_at INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS sched_occurrence (
            campaign TEXT NOT NULL,
            occurrence INTEGER NOT NULL,
            status TEXT NOT NULL,
            run_key TEXT NOT NULL,
            content_hash TEXT,
            recorded_at INTEGER NOT NULL,
            started_at INTEGER,
            finished_at INTEGER,
            paused_by TEXT,
            detail TEXT,
            PRIMARY KEY (campaign, occurrence)
        );
        CREATE INDEX IF NOT EXISTS sched_occurrence_status ON sched_occurrence(status);
        CREATE TABLE IF NOT EXISTS sched_control (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            campaign TEXT NOT NULL,
            action TEXT NOT NULL CHECK (action IN ('pause', 'resume', 'cancel')),
            requested_at INTEGER NOT NULL,
            handled_at INTEGER,
            result TEXT
        );
        CREATE TABLE IF NOT EXISTS sched_daemon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            pid INTEGER NOT NULL,
            heartbeat INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS sched_node (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            node TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS sched_roster (
            node TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            version TEXT NOT NULL,
            started_at INTEGER NOT NULL,
            last_seen INTEGER NOT NULL,
            every_secs INTEGER NOT NULL,
            stopped_at INTEGER
        );",
    )?;
    // Who decided or claimed an occurrence (added after the table; older files get the columns).
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('sched_occurrence')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for (col, ty) in [
        ("node", "TEXT"),
        ("host", "TEXT"),
        ("pid", "INTEGER"),
        ("claimed_at", "INTEGER"),
    ] {
        if !have.iter().any(|h| h == col) {
            conn.execute_batch(&format!(
                "ALTER TABLE sched_occurrence ADD COLUMN {col} {ty}"
            ))?;
        }
    }
    Ok(())
}

/// Open (creating if needed) the state directory's SQLite file and migrate the scheduler tables.
pub fn open(state_dir: &Path) -> Result<Conn, StateError> {
    let path = state_dir.join("imcast.db");
    let open_err = |source: rusqlite::Error| StateError::Open {
        path: path.display().to_string(),
        source: StoreError::Sqlite(source),
    };
    std::fs::create_dir_all(state_dir)
        .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    // The journal owns the file and its core tables (runs, calls, recipients, control): let it
    // create and migrate them first, so a fresh state directory has them whoever opens it first.
    crate::journal::Journal::open(state_dir)
        .map_err(|e| open_err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    let conn = crate::db::open(&path, "NORMAL").map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    // WAL + NORMAL survives a process crash; only a power loss can drop the last commits. The
    // one write that must survive that too — the claim of an occurrence — commits with FULL
    // (see record_occurrence). Everything else is re-derivable: run keys are deterministic, so a
    // lost status update is corrected by asking the runner again.
    migrate(&conn).map_err(open_err)?;
    Ok(Conn::sqlite(conn))
}

/// Open an existing state database for reading; `None` if it does not exist yet.
pub fn open_existing(state_dir: &Path) -> Result<Option<Conn>, StateError> {
    if !state_dir.join("imcast.db").exists() {
        return Ok(None);
    }
    open(state_dir).map(Some)
}

/// The store holding `sched_campaign` and `sched_occurrence`: the state directory's SQLite file,
/// or the PostgreSQL store (blocking: off the async runtime; migrations applied on connecting).
pub fn open_store(store: &StateStore) -> Result<Conn, StateError> {
    match store {
        StateStore::Sqlite(dir) => open(dir),
        StateStore::Postgres(url) => Conn::postgres(url).map_err(|source| StateError::Open {
            path: url.redacted(),
            source,
        }),
    }
}

/// This state directory's node id (made once, random): names the daemon of this state directory
/// in the store across restarts. `local` is [`open`]'s connection.
pub fn node_id(local: &Conn) -> Result<String, StateError> {
    if let Some(n) = local
        .query_row("SELECT node FROM sched_node WHERE id = 1", params![], |r| {
            r.get::<String>(0)
        })
        .optional()?
    {
        return Ok(n);
    }
    let fresh = format!("{:032x}", rand::random::<u128>());
    local.execute(
        "INSERT INTO sched_node (id, node) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
        params![&fresh],
    )?;
    Ok(
        local.query_row("SELECT node FROM sched_node WHERE id = 1", params![], |r| {
            r.get::<String>(0)
        })?,
    )
}

/// This machine's host name (for people: which host claimed what), from the kernel, else
/// `HOSTNAME`, else `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Occurrence statuses.
pub mod status {
    /// Recorded; its run is being started (or resumed after a crash).
    pub const CLAIMED: &str = "claimed";
    pub const RUNNING: &str = "running";
    pub const PAUSED: &str = "paused";
    /// Due while a previous run was going, `overlap: queue`: starts when that run ends.
    pub const QUEUED: &str = "queued";
    /// Due inside quiet hours: starts when they end.
    pub const WAITING_QUIET: &str = "waiting_quiet";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
    pub const SKIPPED_LATE: &str = "skipped_late";
    pub const SKIPPED_OVERLAP: &str = "skipped_overlap";

    pub const ACTIVE: [&str; 3] = [CLAIMED, RUNNING, PAUSED];
    pub const PENDING: [&str; 2] = [QUEUED, WAITING_QUIET];
    pub const TERMINAL: [&str; 5] = [DONE, FAILED, CANCELLED, SKIPPED_LATE, SKIPPED_OVERLAP];
}

/// The daemon that decides or claims an occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// Its state directory's node id ([`node_id`]).
    pub node: String,
    pub host: String,
    pub pid: u32,
}

/// One row of `sched_occurrence`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OccurrenceRow {
    pub campaign: String,
    /// UTC seconds.
    pub occurrence: i64,
    pub status: String,
    pub run_key: String,
    pub content_hash: Option<String>,
    pub recorded_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub paused_by: Option<String>,
    pub detail: Option<String>,
    /// The node id of the daemon that decided it, or claimed it from the queue.
    pub node: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    /// When (UTC seconds) that daemon decided or claimed it.
    pub claimed_at: Option<i64>,
}

const OCC_COLS: &str = "campaign, occurrence, status, run_key, content_hash, recorded_at, started_at, finished_at, paused_by, detail, node, host, pid, claimed_at";

fn occ_row(r: &Row) -> Result<OccurrenceRow, StoreError> {
    Ok(OccurrenceRow {
        campaign: r.get(0)?,
        occurrence: r.get(1)?,
        status: r.get(2)?,
        run_key: r.get(3)?,
        content_hash: r.get(4)?,
        recorded_at: r.get(5)?,
        started_at: r.get(6)?,
        finished_at: r.get(7)?,
        paused_by: r.get(8)?,
        detail: r.get(9)?,
        node: r.get(10)?,
        host: r.get(11)?,
        pid: r.get(12)?,
        claimed_at: r.get(13)?,
    })
}

/// Occurrences, oldest first; all campaigns when `campaign` is `None`.
pub fn occurrences(conn: &Conn, campaign: Option<&str>) -> Result<Vec<OccurrenceRow>, StateError> {
    let sql = format!(
        "SELECT {OCC_COLS} FROM sched_occurrence WHERE (CAST(?1 AS TEXT) IS NULL OR campaign = ?1) ORDER BY occurrence, campaign"
    );
    Ok(conn.query_map(&sql, params![campaign], occ_row)?)
}

/// One occurrence, if recorded.
pub fn occurrence(
    conn: &Conn,
    campaign: &str,
    occurrence: i64,
) -> Result<Option<OccurrenceRow>, StateError> {
    let sql =
        format!("SELECT {OCC_COLS} FROM sched_occurrence WHERE campaign = ?1 AND occurrence = ?2");
    Ok(conn.query_opt(&sql, params![campaign, occurrence], occ_row)?)
}

/// The occurrence of `campaign` whose run key is `run_key` (a daemon run's journal occurrence), if
/// recorded.
pub fn occurrence_by_key(
    conn: &Conn,
    campaign: &str,
    run_key: &str,
) -> Result<Option<OccurrenceRow>, StateError> {
    let sql =
        format!("SELECT {OCC_COLS} FROM sched_occurrence WHERE campaign = ?1 AND run_key = ?2");
    Ok(conn.query_opt(&sql, params![campaign, run_key], occ_row)?)
}

/// Occurrences in any of `statuses`, oldest first.
pub fn occurrences_in(conn: &Conn, statuses: &[&str]) -> Result<Vec<OccurrenceRow>, StateError> {
    let marks = (1..=statuses.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {OCC_COLS} FROM sched_occurrence WHERE status IN ({marks}) ORDER BY occurrence, campaign"
    );
    let ps: Vec<crate::store::Value<'_>> = statuses.iter().map(|s| (*s).into()).collect();
    Ok(conn.query_map(&sql, &ps, occ_row)?)
}

/// Count of occurrences by status.
pub fn status_counts(conn: &Conn) -> Result<Vec<(String, u64)>, StateError> {
    Ok(conn.query_map(
        "SELECT status, COUNT(*) FROM sched_occurrence GROUP BY status ORDER BY status",
        params![],
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?.max(0) as u64)),
    )?)
}

/// Per-campaign bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    pub name: String,
    pub cursor: Option<i64>,
    pub paused: bool,
    pub path: Option<String>,
    pub next_fire: Option<i64>,
}

pub fn campaign(conn: &Conn, name: &str) -> Result<Option<CampaignRow>, StateError> {
    Ok(conn.query_opt(
        "SELECT name, cursor, paused, path, next_fire FROM sched_campaign WHERE name = ?1",
        params![name],
        |r| {
            Ok(CampaignRow {
                name: r.get(0)?,
                cursor: r.get(1)?,
                paused: r.get(2)?,
                path: r.get(3)?,
                next_fire: r.get(4)?,
            })
        },
    )?)
}

pub fn campaign_names(conn: &Conn) -> Result<Vec<String>, StateError> {
    Ok(conn.query_map(
        "SELECT name FROM sched_campaign ORDER BY name",
        params![],
        |r| r.get(0),
    )?)
}

pub fn upsert_campaign(
    conn: &Conn,
    name: &str,
    path: &str,
    next_fire: Option<i64>,
    now: i64,
) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO sched_campaign (name, path, next_fire, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET path = excluded.path, next_fire = excluded.next_fire, updated_at = excluded.updated_at",
        params![name, path, next_fire, now],
    )?;
    Ok(())
}

pub fn set_cursor(conn: &Conn, name: &str, cursor: i64) -> Result<(), StateError> {
    conn.execute(
        "UPDATE sched_campaign SET cursor = ?2 WHERE name = ?1 AND (cursor IS NULL OR cursor < ?2)",
        params![name, cursor],
    )?;
    Ok(())
}

pub fn set_paused(conn: &Conn, name: &str, paused: bool) -> Result<(), StateError> {
    conn.execute(
        "UPDATE sched_campaign SET paused = ?2 WHERE name = ?1",
        params![name, paused],
    )?;
    Ok(())
}

/// Record a decided occurrence and move the cursor past it, in one transaction. Returns false
/// when the occurrence was already recorded (then nothing changes but the cursor).
#[allow(clippy::too_many_arguments)] // one flat row; a struct would only rename the columns
pub fn record_occurrence(
    conn: &Conn,
    campaign: &str,
    occurrence: i64,
    status: &str,
    run_key: &str,
    content_hash: &str,
    now: i64,
    detail: Option<&str>,
) -> Result<bool, StateError> {
    record_occurrence_by(
        conn,
        None,
        campaign,
        occurrence,
        status,
        run_key,
        content_hash,
        now,
        detail,
    )
}

/// [`record_occurrence`], naming the daemon that decides it (`by`).
#[allow(clippy::too_many_arguments)]
pub fn record_occurrence_by(
    conn: &Conn,
    by: Option<&Claimant>,
    campaign: &str,
    occurrence: i64,
    status: &str,
    run_key: &str,
    content_hash: &str,
    now: i64,
    detail: Option<&str>,
) -> Result<bool, StateError> {
    let Some(sqlite) = conn.as_sqlite() else {
        return record_occurrence_tx(
            conn,
            by,
            campaign,
            occurrence,
            status,
            run_key,
            content_hash,
            now,
            detail,
        );
    };
    sqlite.pragma_update(None, "synchronous", "FULL")?;
    let res = record_occurrence_tx(
        conn,
        by,
        campaign,
        occurrence,
        status,
        run_key,
        content_hash,
        now,
        detail,
    );
    let reset = sqlite.pragma_update(None, "synchronous", "NORMAL");
    let inserted = res?;
    reset?;
    Ok(inserted)
}

#[allow(clippy::too_many_arguments)]
fn record_occurrence_tx(
    conn: &Conn,
    by: Option<&Claimant>,
    campaign: &str,
    occurrence: i64,
    status: &str,
    run_key: &str,
    content_hash: &str,
    now: i64,
    detail: Option<&str>,
) -> Result<bool, StateError> {
    let tx = conn.transaction()?;
    let n = tx.execute(
        "INSERT INTO sched_occurrence (campaign, occurrence, status, run_key, content_hash, recorded_at, detail, node, host, pid, claimed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (campaign, occurrence) DO NOTHING",
        params![
            campaign,
            occurrence,
            status,
            run_key,
            content_hash,
            now,
            detail,
            by.map(|b| b.node.as_str()),
            by.map(|b| b.host.as_str()),
            by.map(|b| b.pid),
            by.map(|_| now)
        ],
    )?;
    tx.execute(
        "UPDATE sched_campaign SET cursor = ?2 WHERE name = ?1 AND (cursor IS NULL OR cursor < ?2)",
        params![campaign, occurrence],
    )?;
    tx.commit()?;
    Ok(n == 1)
}

/// Move a queued or quiet-held occurrence (`row`, as read) to `claimed` for `by`, if nobody did
/// since it was read: false when another daemon (or an earlier tick) changed it first.
pub fn claim_pending(
    conn: &Conn,
    row: &OccurrenceRow,
    by: &Claimant,
    content_hash: Option<&str>,
    now: i64,
) -> Result<bool, StateError> {
    let n = conn.execute(
        "UPDATE sched_occurrence SET status = ?3, content_hash = COALESCE(?4, content_hash),
            node = ?5, host = ?6, pid = ?7, claimed_at = ?8
         WHERE campaign = ?1 AND occurrence = ?2 AND status = ?9",
        params![
            &row.campaign,
            row.occurrence,
            status::CLAIMED,
            content_hash,
            &by.node,
            &by.host,
            by.pid,
            now,
            &row.status
        ],
    )?;
    Ok(n == 1)
}

/// The start of the note a takeover writes into an occurrence's `detail` (see [`take_over`]).
pub const TAKEN_OVER: &str = "taken over from ";

/// Whether `row` is orphaned at `now` (UTC seconds, the reader's clock) for daemon `me`: it is
/// active (claimed, running, paused), claimed by another daemon node, and that node does not
/// look alive in `roster` ([`DaemonRow::alive`]; a node missing from the roster counts as not
/// alive: nobody refreshes it). A row recorded without a claimant (an older record) is never an
/// orphan. Whether its run may be taken over is then the run lease's to say ([`takeover`]).
pub fn is_orphan(row: &OccurrenceRow, roster: &[DaemonRow], me: &Claimant, now: i64) -> bool {
    if !status::ACTIVE.contains(&row.status.as_str()) {
        return false;
    }
    let Some(node) = row.node.as_deref() else {
        return false;
    };
    if node == me.node {
        return false;
    }
    roster
        .iter()
        .find(|d| d.node == node)
        .is_none_or(|d| !d.alive(now))
}

/// The active occurrences of other daemons that do not look alive at `now` ([`is_orphan`]),
/// oldest first.
pub fn orphans(conn: &Conn, me: &Claimant, now: i64) -> Result<Vec<OccurrenceRow>, StateError> {
    let roster = roster(conn)?;
    Ok(occurrences_in(conn, &status::ACTIVE)?
        .into_iter()
        .filter(|r| is_orphan(r, &roster, me, now))
        .collect())
}

/// What a daemon does with an occurrence row on its loop ([`takeover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Not an orphan: its daemon looks alive, it is this daemon's, or it is not active.
    No,
    /// An orphan whose run lease is still held until this instant: not yet.
    WaitLease(jiff::Timestamp),
    /// An orphan whose run lease expired, was released, or that has no run yet: take it over.
    Take,
}

/// The takeover rule, the one place: `row` is taken over by `me` at `now` when it is an orphan
/// ([`is_orphan`]) AND its run's lease (`lease`: the journal's, None when the occurrence has no
/// unfinished run yet) is absent, released or expired at `now`. A lease without an expiry (an
/// older release's) counts as held. The lease is the authority: the roster only says whom to
/// look at; the journal's claim then checks the lease again, with a new fence.
pub fn takeover(
    row: &OccurrenceRow,
    roster: &[DaemonRow],
    me: &Claimant,
    lease: Option<&crate::journal::Lease>,
    now: jiff::Timestamp,
) -> Takeover {
    if !is_orphan(row, roster, me, now.as_second()) {
        return Takeover::No;
    }
    match lease {
        Some(l) if l.holder.is_some() => match l.expires_at {
            Some(t) if t <= now => Takeover::Take,
            Some(t) => Takeover::WaitLease(t),
            None => Takeover::WaitLease(jiff::Timestamp::MAX),
        },
        _ => Takeover::Take,
    }
}

/// The note [`take_over`] writes: `taken over from HOST (pid N) at UTC`.
pub fn takeover_note(from: &OccurrenceRow, at: i64) -> String {
    let at = jiff::Timestamp::from_second(at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let host = from.host.as_deref().unwrap_or("an unknown host");
    match from.pid {
        Some(pid) => format!("{TAKEN_OVER}{host} (pid {pid}) at {at}"),
        None => format!("{TAKEN_OVER}{host} at {at}"),
    }
}

/// The takeover note in an occurrence's `detail`, if it was taken over.
pub fn taken_over(detail: Option<&str>) -> Option<&str> {
    let d = detail?;
    let i = d.find(TAKEN_OVER)?;
    (i == 0 || d[..i].ends_with("; ")).then(|| &d[i..])
}

/// The `detail` to record when a run ends: the run's own (`new`) followed by the takeover note
/// the row carried (`old`), so `imcast schedule` still says whose run it was first.
pub fn finished_detail(old: Option<&str>, new: Option<String>) -> Option<String> {
    match (taken_over(old), new) {
        (Some(n), Some(d)) if !d.contains(n) => Some(format!("{d}; {n}")),
        (Some(n), None) => Some(n.to_string()),
        (_, d) => d,
    }
}

/// Re-claim `row` (as read) for `by` at `now`: node, host, pid and `claimed_at` become `by`'s
/// and `detail` the [`takeover_note`], if the row is still active and still names the claim that
/// was read (node, pid, `claimed_at`) — one conditional UPDATE, so of two daemons taking over
/// one orphan exactly one wins (false: another did first, or its daemon came back and claimed it
/// again). Used for an orphan of a dead daemon and for a row an earlier process of this node left.
pub fn take_over(
    conn: &Conn,
    row: &OccurrenceRow,
    by: &Claimant,
    now: i64,
) -> Result<bool, StateError> {
    let note = takeover_note(row, now);
    let n = conn.execute(
        "UPDATE sched_occurrence SET node = ?3, host = ?4, pid = ?5, claimed_at = ?6, detail = ?7
         WHERE campaign = ?1 AND occurrence = ?2
           AND status IN ('claimed', 'running', 'paused')
           AND COALESCE(node, '') = ?8 AND COALESCE(pid, -1) = ?9
           AND COALESCE(claimed_at, -1) = ?10",
        params![
            &row.campaign,
            row.occurrence,
            &by.node,
            &by.host,
            by.pid,
            now,
            &note,
            row.node.as_deref().unwrap_or(""),
            row.pid.unwrap_or(-1),
            row.claimed_at.unwrap_or(-1)
        ],
    )?;
    Ok(n == 1)
}

/// Record an occurrence `failed` at `at` (UTC seconds), saying why.
pub fn record_failed(
    conn: &Conn,
    row: &OccurrenceRow,
    at: i64,
    detail: &str,
) -> Result<(), StateError> {
    update_occurrence(
        conn,
        &row.campaign,
        row.occurrence,
        status::FAILED,
        Update {
            finished_at: Some(at),
            detail: Some(detail),
            ..Default::default()
        },
    )
}

/// Change an occurrence's status (and optionally timestamps/detail).
pub fn update_occurrence(
    conn: &Conn,
    campaign: &str,
    occurrence: i64,
    status: &str,
    upd: Update<'_>,
) -> Result<(), StateError> {
    conn.execute(
        "UPDATE sched_occurrence SET status = ?3,
            started_at = COALESCE(?4, started_at),
            finished_at = COALESCE(?5, finished_at),
            paused_by = ?6,
            detail = COALESCE(?7, detail),
            content_hash = COALESCE(?8, content_hash)
         WHERE campaign = ?1 AND occurrence = ?2",
        params![
            campaign,
            occurrence,
            status,
            upd.started_at,
            upd.finished_at,
            upd.paused_by,
            upd.detail,
            upd.content_hash
        ],
    )?;
    Ok(())
}

/// Optional fields for [`update_occurrence`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Update<'a> {
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub paused_by: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub content_hash: Option<&'a str>,
}

/// Log what the daemon did with a control request: call it inside
/// [`Journal::finish_control`](crate::journal::Journal::finish_control)'s step, on the journal's
/// connection, so the request's removal and this row commit together.
pub fn log_control(
    conn: &Conn,
    req: &PendingControl,
    handled_at: i64,
    result: &str,
) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO sched_control (campaign, action, requested_at, handled_at, result) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            req.campaign.as_str(),
            req.request.as_str(),
            req.requested_at.as_second(),
            handled_at,
            result
        ],
    )?;
    Ok(())
}

/// What the daemon answered to the latest request for `campaign` made at or after `since`
/// (UTC seconds), once it acted on it. `conn` is the journal's ([`log_control`] writes there:
/// the state directory's file, or the PostgreSQL store with `[state] url`).
pub fn control_result(
    conn: &Conn,
    campaign: &str,
    since: i64,
) -> Result<Option<String>, StateError> {
    Ok(conn
        .query_opt(
            "SELECT result FROM sched_control WHERE campaign = ?1 AND requested_at >= ?2
             ORDER BY id DESC LIMIT 1",
            params![campaign, since],
            |r| r.get::<Option<String>>(0),
        )?
        .flatten())
}

/// Claim the daemon slot of a state directory (`conn` is [`open`]'s): fails with the other pid
/// when another daemon's heartbeat is fresher than `stale_after` seconds and `alive(pid)` says it
/// still runs. The check and the write are one IMMEDIATE transaction, so of two daemons starting
/// at once on one state directory exactly one gets the slot.
pub fn claim_daemon(
    conn: &Conn,
    pid: u32,
    now: i64,
    stale_after: i64,
    alive: impl Fn(u32) -> bool,
) -> Result<Result<(), u32>, StateError> {
    let tx = conn.transaction()?;
    let other: Option<(u32, i64)> = tx.query_opt(
        "SELECT pid, heartbeat FROM sched_daemon WHERE id = 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if let Some((opid, hb)) = other {
        if opid != pid && now - hb < stale_after && alive(opid) {
            return Ok(Err(opid));
        }
    }
    heartbeat(&tx, pid, now)?;
    tx.commit()?;
    Ok(Ok(()))
}

pub fn heartbeat(conn: &Conn, pid: u32, now: i64) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO sched_daemon (id, pid, heartbeat) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, heartbeat = excluded.heartbeat",
        params![pid, now],
    )?;
    Ok(())
}

pub fn release_daemon(conn: &Conn, pid: u32) -> Result<(), StateError> {
    conn.execute(
        "DELETE FROM sched_daemon WHERE id = 1 AND pid = ?1",
        params![pid],
    )?;
    Ok(())
}

/// A daemon counts as alive while its `last_seen` is at most this many of its refresh intervals
/// old (refresh every 10 s: alive within 30 s, the run lease's expiry).
pub const ALIVE_BEATS: i64 = 3;

/// One row of `sched_roster`: a daemon node on the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonRow {
    pub node: String,
    pub host: String,
    pub pid: i64,
    /// The imcast version it runs.
    pub version: String,
    /// UTC seconds (its clock).
    pub started_at: i64,
    /// UTC seconds (its clock): the last refresh.
    pub last_seen: i64,
    /// How often it promised to refresh `last_seen`, seconds.
    pub every_secs: i64,
    /// UTC seconds: it stopped cleanly (a crash leaves this empty and `last_seen` ageing).
    pub stopped_at: Option<i64>,
}

impl DaemonRow {
    /// Alive at `now` (UTC seconds, the reader's clock): not stopped and seen within
    /// [`ALIVE_BEATS`] refresh intervals.
    pub fn alive(&self, now: i64) -> bool {
        self.stopped_at.is_none() && now - self.last_seen <= self.alive_window()
    }

    /// The alive window in seconds.
    pub fn alive_window(&self) -> i64 {
        ALIVE_BEATS.saturating_mul(self.every_secs.max(1))
    }
}

/// Write this daemon's roster row: on start and on each refresh (`started_at` is when this
/// process started; `every_secs` how often it refreshes). A restart of the same node (its state
/// directory) replaces the row, clearing `stopped_at`.
pub fn roster_beat(
    conn: &Conn,
    me: &Claimant,
    started_at: i64,
    every_secs: i64,
    now: i64,
) -> Result<(), StateError> {
    conn.execute(
        "INSERT INTO sched_roster (node, host, pid, version, started_at, last_seen, every_secs, stopped_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL)
         ON CONFLICT (node) DO UPDATE SET host = excluded.host, pid = excluded.pid,
            version = excluded.version, started_at = excluded.started_at,
            last_seen = excluded.last_seen, every_secs = excluded.every_secs, stopped_at = NULL",
        params![
            &me.node,
            &me.host,
            me.pid,
            env!("CARGO_PKG_VERSION"),
            started_at,
            now,
            every_secs
        ],
    )?;
    Ok(())
}

/// Mark this daemon stopped (a clean shutdown), if the row is still this process's.
pub fn roster_stop(conn: &Conn, me: &Claimant, now: i64) -> Result<(), StateError> {
    conn.execute(
        "UPDATE sched_roster SET stopped_at = ?3, last_seen = ?3 WHERE node = ?1 AND pid = ?2",
        params![&me.node, me.pid, now],
    )?;
    Ok(())
}

/// Every daemon on the store, by host then node.
pub fn roster(conn: &Conn) -> Result<Vec<DaemonRow>, StateError> {
    Ok(conn.query_map(
        "SELECT node, host, pid, version, started_at, last_seen, every_secs, stopped_at
         FROM sched_roster ORDER BY host, node",
        params![],
        |r| {
            Ok(DaemonRow {
                node: r.get(0)?,
                host: r.get(1)?,
                pid: r.get(2)?,
                version: r.get(3)?,
                started_at: r.get(4)?,
                last_seen: r.get(5)?,
                every_secs: r.get(6)?,
                stopped_at: r.get(7)?,
            })
        },
    )?)
}

/// Prune the store ([`open_store`]'s connection): finished occurrences older than `cutoff` (UTC
/// seconds; the rule of [`prune`]) and roster rows last seen before it whose node holds no active
/// occurrence (the note "resumes when that daemon restarts" needs the row). Returns
/// (occurrences, roster rows) deleted. On SQLite the store is the state directory's file: call
/// this or [`prune`] for its occurrences, not both counts.
pub fn prune_store(conn: &Conn, cutoff: i64) -> Result<(usize, usize), StateError> {
    let occ = prune_occurrences(conn, cutoff)?;
    let roster = prune_roster(conn, cutoff)?;
    Ok((occ, roster))
}

/// Roster rows last seen before `cutoff` whose node holds no active occurrence.
pub fn prune_roster(conn: &Conn, cutoff: i64) -> Result<usize, StateError> {
    Ok(conn.execute(
        "DELETE FROM sched_roster WHERE last_seen < ?1
           AND NOT EXISTS (SELECT 1 FROM sched_occurrence o WHERE o.node = sched_roster.node
                           AND o.status IN ('claimed', 'running', 'paused'))",
        params![cutoff],
    )?)
}

fn prune_occurrences(conn: &Conn, cutoff: i64) -> Result<usize, StateError> {
    Ok(conn.execute(
        "DELETE FROM sched_occurrence WHERE occurrence < ?1
           AND status IN ('done', 'failed', 'cancelled', 'skipped_late', 'skipped_overlap')",
        params![cutoff],
    )?)
}

/// Delete finished occurrences older than `cutoff` (UTC seconds) and handled control requests
/// older than it. Returns (occurrences, controls) deleted. Active and pending rows are kept.
/// `conn` is the state directory's ([`open`]).
pub fn prune(conn: &Conn, cutoff: i64) -> Result<(usize, usize), StateError> {
    let occ = prune_occurrences(conn, cutoff)?;
    let ctl = prune_control_log(conn, cutoff)?;
    Ok((occ, ctl))
}

/// Delete the control log's rows handled before `cutoff` (UTC seconds). `conn` is the one
/// [`log_control`] writes to: the journal's (the state directory's file, or the PostgreSQL store
/// with `[state] url`).
pub fn prune_control_log(conn: &Conn, cutoff: i64) -> Result<usize, StateError> {
    Ok(conn.execute(
        "DELETE FROM sched_control WHERE handled_at IS NOT NULL AND handled_at < ?1",
        params![cutoff],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who holds an occurrence and since when: (status, node, host, pid, claimed at).
    fn claim(r: &OccurrenceRow) -> (&str, Option<&str>, Option<&str>, Option<i64>, Option<i64>) {
        (
            r.status.as_str(),
            r.node.as_deref(),
            r.host.as_deref(),
            r.pid,
            r.claimed_at,
        )
    }

    #[test]
    fn migrate_is_idempotent_and_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(dir.path()).expect("open");
        migrate(conn.as_sqlite().expect("sqlite")).expect("second migrate");
        record_once(&conn);
        claims_name_the_daemon_and_pending_is_claimed_once(&conn);
        // Pruning is the state directory's (SQLite): finished rows before the cutoff go.
        assert_eq!(prune(&conn, 99).expect("prune"), (0, 0));
        assert_eq!(prune(&conn, 151).expect("prune"), (2, 0));
    }

    #[test]
    fn roster_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(dir.path()).expect("open");
        record_once(&conn);
        claims_name_the_daemon_and_pending_is_claimed_once(&conn);
        roster_rules(&conn);
    }

    /// The roster on a simulated clock (instants are parameters): written on start, refreshed,
    /// alive within ALIVE_BEATS refresh intervals, stopped on a clean shutdown, replaced on a
    /// restart; pruning takes old finished occurrences and old roster rows, but keeps the row of a
    /// daemon that holds an active occurrence. Runs after the two helpers above (their rows: `a`
    /// 100 done, `b` 150 done, `q` 200 claimed by n-b).
    fn roster_rules(conn: &Conn) {
        let who = |node: &str, host: &str, pid: u32| Claimant {
            node: node.into(),
            host: host.into(),
            pid,
        };
        let (a, b) = (who("n-a", "host-a", 11), who("n-b", "host-b", 22));
        roster_beat(conn, &a, 1000, 10, 1000).expect("a starts");
        roster_beat(conn, &b, 1000, 10, 1005).expect("b starts");
        let get = |node: &str| {
            roster(conn)
                .expect("roster")
                .into_iter()
                .find(|d| d.node == node)
                .expect("row")
        };
        let rs = roster(conn).expect("roster");
        assert_eq!(
            rs.iter()
                .map(|d| (d.host.as_str(), d.pid, d.version.as_str(), d.last_seen))
                .collect::<Vec<_>>(),
            vec![
                ("host-a", 11, env!("CARGO_PKG_VERSION"), 1000),
                ("host-b", 22, env!("CARGO_PKG_VERSION"), 1005)
            ]
        );
        // Alive while seen within 3 × 10 s; not after.
        let ra = get("n-a");
        assert_eq!(ra.alive_window(), 30);
        assert!(ra.alive(1030) && !ra.alive(1031));
        // A refresh moves last_seen, not started_at.
        roster_beat(conn, &a, 1000, 10, 1020).expect("a refreshes");
        let ra = get("n-a");
        assert_eq!((ra.started_at, ra.last_seen), (1000, 1020));
        assert!(ra.alive(1050) && !ra.alive(1051));
        // A clean stop: not alive at once. A stop from an older process of the node (another pid)
        // does not mark the current one stopped.
        roster_stop(conn, &who("n-b", "host-b", 99), 1021).expect("stale stop");
        assert_eq!(get("n-b").stopped_at, None);
        roster_stop(conn, &a, 1025).expect("a stops");
        let ra = get("n-a");
        assert_eq!((ra.stopped_at, ra.last_seen), (Some(1025), 1025));
        assert!(!ra.alive(1025));
        // A restart of node a (another pid) replaces its row.
        let a2 = who("n-a", "host-a2", 33);
        roster_beat(conn, &a2, 1100, 10, 1100).expect("a restarts");
        let ra = get("n-a");
        assert_eq!(
            (ra.host.as_str(), ra.pid, ra.started_at, ra.stopped_at),
            ("host-a2", 33, 1100, None)
        );
        assert!(ra.alive(1110));
        // Prune at 2000: a's row (last seen 1100) goes; b's too old as well, but it holds the
        // claimed occurrence q@200, so it stays; the finished occurrences before 2000 go.
        assert_eq!(prune_store(conn, 1050).expect("prune"), (2, 0));
        assert_eq!(prune_store(conn, 2000).expect("prune"), (0, 1));
        assert_eq!(
            roster(conn)
                .expect("roster")
                .iter()
                .map(|d| d.node.as_str())
                .collect::<Vec<_>>(),
            vec!["n-b"]
        );
        assert_eq!(occurrences(conn, None).expect("rows").len(), 1);
        // Once q is finished, b's old row goes too.
        update_occurrence(conn, "q", 200, status::DONE, Update::default()).expect("done");
        assert_eq!(prune_roster(conn, 2000).expect("prune"), 1);
        assert!(roster(conn).expect("roster").is_empty());
    }

    #[test]
    fn record_once_and_claims_on_postgres() {
        let Some(db) = crate::testing::pg::test_db("sched_state") else {
            return;
        };
        let url = db.url().clone();
        std::thread::spawn(move || {
            let conn = open_store(&StateStore::Postgres(url.clone())).expect("store");
            record_once(&conn);
            claims_name_the_daemon_and_pending_is_claimed_once(&conn);
            // Migrating again (a second daemon connecting) changes nothing.
            let again = open_store(&StateStore::Postgres(url)).expect("again");
            assert_eq!(occurrences(&again, None).expect("rows").len(), 3);
            roster_rules(&conn);
        })
        .join()
        .expect("thread");
    }

    fn claims_name_the_daemon_and_pending_is_claimed_once(conn: &Conn) {
        let a = Claimant {
            node: "n-a".into(),
            host: "host-a".into(),
            pid: 11,
        };
        let b = Claimant {
            node: "n-b".into(),
            host: "host-b".into(),
            pid: 22,
        };
        upsert_campaign(conn, "q", "q.yaml", None, 0).expect("upsert");
        assert!(record_occurrence_by(
            conn,
            Some(&a),
            "q",
            200,
            status::QUEUED,
            "q@200",
            "h1",
            7,
            None
        )
        .expect("rec"));
        assert!(!record_occurrence_by(
            conn,
            Some(&b),
            "q",
            200,
            status::CLAIMED,
            "q@200",
            "h1",
            8,
            None
        )
        .expect("rec"));
        let row = occurrence(conn, "q", 200).expect("q").expect("row");
        assert_eq!(
            claim(&row),
            (
                status::QUEUED,
                Some("n-a"),
                Some("host-a"),
                Some(11),
                Some(7)
            )
        );
        // Two daemons read the queued row; the first claim wins, the second finds it changed.
        assert!(claim_pending(conn, &row, &b, Some("h2"), 9).expect("claim"));
        assert!(!claim_pending(conn, &row, &a, None, 10).expect("claim again"));
        let row = occurrence(conn, "q", 200).expect("q").expect("row");
        assert_eq!(
            (
                row.status.as_str(),
                row.node.as_deref(),
                row.host.as_deref(),
                row.pid,
                row.claimed_at,
                row.content_hash.as_deref()
            ),
            (
                status::CLAIMED,
                Some("n-b"),
                Some("host-b"),
                Some(22),
                Some(9),
                Some("h2")
            )
        );
        assert_eq!(
            status_counts(conn).expect("counts"),
            vec![("claimed".to_string(), 1), ("done".to_string(), 2)]
        );
    }

    fn record_once(conn: &Conn) {
        upsert_campaign(conn, "a", "a.yaml", None, 0).expect("upsert");
        assert!(
            record_occurrence(conn, "a", 100, status::CLAIMED, "a@100", "h", 1, None).expect("rec")
        );
        assert!(
            !record_occurrence(conn, "a", 100, status::CLAIMED, "a@100", "h", 2, None)
                .expect("rec")
        );
        assert_eq!(
            campaign(conn, "a").expect("q").expect("row").cursor,
            Some(100)
        );
        set_cursor(conn, "a", 50).expect("cursor never goes back");
        assert_eq!(
            campaign(conn, "a").expect("q").expect("row").cursor,
            Some(100)
        );
        update_occurrence(
            conn,
            "a",
            100,
            status::DONE,
            Update {
                finished_at: Some(5),
                ..Default::default()
            },
        )
        .expect("upd");
        assert!(!campaign(conn, "a").expect("q").expect("row").paused);
        set_paused(conn, "a", true).expect("pause");
        assert!(campaign(conn, "a").expect("q").expect("row").paused);
        assert_eq!(campaign_names(conn).expect("names"), vec!["a".to_string()]);
        let rows = occurrences(conn, Some("a")).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, status::DONE);
        assert_eq!(rows[0].node, None, "recorded without a claimant");
        assert_eq!(occurrences_in(conn, &status::TERMINAL).expect("in"), rows);
        upsert_campaign(conn, "b", "b.yaml", None, 0).expect("upsert");
        assert!(
            record_occurrence(conn, "b", 150, status::DONE, "b@150", "h", 1, None).expect("rec")
        );
    }

    #[test]
    fn takeover_on_sqlite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(dir.path()).expect("open");
        takeover_rules(&conn);
        racing_takeovers(&|| open(dir.path()).expect("open"));
    }

    #[test]
    fn takeover_on_postgres() {
        let Some(db) = crate::testing::pg::test_db("sched_takeover") else {
            return;
        };
        let url = db.url().clone();
        std::thread::spawn(move || {
            let store = StateStore::Postgres(url);
            let conn = open_store(&store).expect("store");
            takeover_rules(&conn);
            racing_takeovers(&|| open_store(&store).expect("store"));
        })
        .join()
        .expect("thread");
    }

    fn who(node: &str, pid: u32) -> Claimant {
        Claimant {
            node: node.into(),
            host: format!("host-{node}"),
            pid,
        }
    }

    fn lease(until: Option<i64>, held: bool) -> crate::journal::Lease {
        crate::journal::Lease {
            holder: held.then(|| ("host-a".to_string(), 11)),
            expires_at: until.map(|s| jiff::Timestamp::from_second(s).expect("ts")),
            fence: 1,
        }
    }

    /// The takeover rule on a simulated clock (instants are parameters): daemons a, b, c refresh
    /// every 10 s (alive 30 s); a holds t@300 (running) and t@400 (done), c holds t@500. While a
    /// is alive nothing is an orphan; once it is not, t@300 (only) is b's and c's to take, after
    /// the run's lease expired; of b and c (having read the same row) exactly one re-claims it,
    /// and the row then names the winner and whom it was taken from. A live daemon's claim and a
    /// finished occurrence are never taken.
    fn takeover_rules(conn: &Conn) {
        let t = |s: i64| jiff::Timestamp::from_second(s).expect("ts");
        let (a, b, c) = (who("a", 11), who("b", 22), who("c", 33));
        for d in [&a, &b, &c] {
            roster_beat(conn, d, 1000, 10, 1000).expect("beat");
        }
        upsert_campaign(conn, "t", "t.yaml", None, 0).expect("upsert");
        for (occ, st, by) in [
            (300, status::CLAIMED, &a),
            (400, status::CLAIMED, &a),
            (500, status::CLAIMED, &c),
        ] {
            assert!(record_occurrence_by(
                conn,
                Some(by),
                "t",
                occ,
                st,
                &format!("t@{occ}"),
                "h",
                1000,
                None
            )
            .expect("record"));
        }
        update_occurrence(conn, "t", 300, status::RUNNING, Update::default()).expect("run");
        update_occurrence(conn, "t", 400, status::DONE, Update::default()).expect("done");
        update_occurrence(conn, "t", 500, status::RUNNING, Update::default()).expect("run");
        let row = |occ: i64| occurrence(conn, "t", occ).expect("q").expect("row");
        let rs = || roster(conn).expect("roster");

        // a alive (seen at 1000, window 30 s): nothing is anyone's to take.
        for me in [&b, &c] {
            assert!(orphans(conn, me, 1030).expect("orphans").is_empty());
            assert_eq!(takeover(&row(300), &rs(), me, None, t(1030)), Takeover::No);
        }
        // b and c refresh; a is silent. At 1031 a is not alive: t@300 is an orphan for b and c,
        // never for a itself; t@400 is finished; t@500 is c's, alive.
        roster_beat(conn, &b, 1000, 10, 1030).expect("beat");
        roster_beat(conn, &c, 1000, 10, 1030).expect("beat");
        let keys = |me: &Claimant| {
            orphans(conn, me, 1031)
                .expect("orphans")
                .into_iter()
                .map(|r| r.occurrence)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&b), vec![300]);
        assert_eq!(keys(&c), vec![300]);
        assert!(keys(&a).is_empty());
        assert_eq!(takeover(&row(400), &rs(), &b, None, t(1031)), Takeover::No);
        assert_eq!(takeover(&row(500), &rs(), &b, None, t(1031)), Takeover::No);
        // The run's lease decides when: held until 1040 → not yet; expired, released or no run
        // yet → take; a lease without expiry (an older release's) is held.
        let r300 = row(300);
        let held = lease(Some(1040), true);
        assert_eq!(
            takeover(&r300, &rs(), &b, Some(&held), t(1031)),
            Takeover::WaitLease(t(1040))
        );
        assert_eq!(
            takeover(&r300, &rs(), &b, Some(&held), t(1039)),
            Takeover::WaitLease(t(1040))
        );
        assert_eq!(
            takeover(&r300, &rs(), &b, Some(&held), t(1040)),
            Takeover::Take
        );
        assert_eq!(
            takeover(&r300, &rs(), &b, Some(&lease(None, false)), t(1031)),
            Takeover::Take
        );
        assert_eq!(takeover(&r300, &rs(), &b, None, t(1031)), Takeover::Take);
        assert_eq!(
            takeover(&r300, &rs(), &b, Some(&lease(None, true)), t(1031)),
            Takeover::WaitLease(jiff::Timestamp::MAX)
        );
        // A node missing from the roster (pruned, never beat) counts as not alive.
        let mut ghost = r300.clone();
        ghost.node = Some("gone".into());
        assert!(is_orphan(&ghost, &rs(), &b, 1031));
        ghost.node = None;
        assert!(
            !is_orphan(&ghost, &rs(), &b, 1031),
            "no claimant: an older record"
        );

        // b and c both read t@300 and take it over: exactly one wins.
        assert!(take_over(conn, &r300, &b, 1041).expect("b"));
        assert!(!take_over(conn, &r300, &c, 1041).expect("c"));
        let now300 = row(300);
        assert_eq!(
            claim(&now300),
            (
                status::RUNNING,
                Some("b"),
                Some("host-b"),
                Some(22),
                Some(1041)
            )
        );
        let note = "taken over from host-a (pid 11) at 1970-01-01T00:17:21Z";
        assert_eq!(now300.detail.as_deref(), Some(note));
        assert_eq!(taken_over(now300.detail.as_deref()), Some(note));
        // Now b's (alive): an orphan for nobody; a coming back does not get it by a stale read.
        assert!(orphans(conn, &c, 1041).expect("orphans").is_empty());
        roster_beat(conn, &a, 1050, 10, 1050).expect("a is back");
        assert!(!take_over(conn, &r300, &a, 1050).expect("stale"));
        assert_eq!(
            occurrence_by_key(conn, "t", "t@300").expect("q"),
            Some(row(300))
        );
        assert_eq!(occurrence_by_key(conn, "t", "t@301").expect("q"), None);
        // A finished occurrence is never re-claimed, even by a direct call.
        assert!(!take_over(conn, &row(400), &b, 1050).expect("done"));
        assert_eq!(row(400).node.as_deref(), Some("a"));
        // A daemon that stopped cleanly is not alive at once: its run is an orphan right away.
        assert!(!is_orphan(&row(500), &rs(), &b, 1050));
        roster_stop(conn, &c, 1050).expect("c stops");
        assert!(is_orphan(&row(500), &rs(), &b, 1050));
        // The note survives the run's end, after the run's own detail.
        assert_eq!(
            finished_detail(Some(note), Some("3 sent".into())).as_deref(),
            Some(format!("3 sent; {note}").as_str())
        );
        assert_eq!(finished_detail(Some(note), None).as_deref(), Some(note));
        assert_eq!(
            finished_detail(Some("queued"), Some("x".into())).as_deref(),
            Some("x")
        );
        assert_eq!(taken_over(Some(&format!("3 sent; {note}"))), Some(note));
        assert_eq!(taken_over(Some("not taken over from anyone")), None);
    }

    /// Two daemons (two connections, two threads) re-claim one orphan at once, ten rounds:
    /// exactly one wins each time.
    fn racing_takeovers(open: &(dyn Fn() -> Conn + Sync)) {
        let setup = open();
        upsert_campaign(&setup, "r", "r.yaml", None, 0).expect("upsert");
        for round in 0..10i64 {
            let dead = who("dead", 9);
            assert!(record_occurrence_by(
                &setup,
                Some(&dead),
                "r",
                round,
                status::RUNNING,
                &format!("r@{round}"),
                "h",
                5,
                None
            )
            .expect("record"));
            let row = occurrence(&setup, "r", round).expect("q").expect("row");
            let barrier = std::sync::Barrier::new(2);
            let won: Vec<bool> = std::thread::scope(|s| {
                let hs: Vec<_> = [who("x", 1), who("y", 2)]
                    .into_iter()
                    .map(|me| {
                        let (row, barrier) = (&row, &barrier);
                        s.spawn(move || {
                            let conn = open();
                            barrier.wait();
                            take_over(&conn, row, &me, 100 + round).expect("take over")
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).collect()
            });
            assert_eq!(
                won.iter().filter(|w| **w).count(),
                1,
                "round {round}: {won:?}"
            );
        }
    }

    #[test]
    fn daemon_slot_is_exclusive_until_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = open(dir.path()).expect("open");
        let alive = |_| true;
        assert_eq!(claim_daemon(&conn, 1, 100, 30, alive).expect("q"), Ok(()));
        assert_eq!(claim_daemon(&conn, 2, 110, 30, alive).expect("q"), Err(1));
        // A fresh heartbeat of a process that is gone does not hold the slot.
        assert_eq!(
            claim_daemon(&conn, 3, 111, 30, |_| false).expect("q"),
            Ok(())
        );
        assert_eq!(claim_daemon(&conn, 2, 142, 30, alive).expect("q"), Ok(()));
    }

    #[test]
    fn two_daemons_claiming_at_once_get_one_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path()).expect("create"));
        for round in 0..10 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let won: Vec<bool> = (0..2u32)
                .map(|i| {
                    let d = dir.path().to_path_buf();
                    let b = barrier.clone();
                    std::thread::spawn(move || {
                        let conn = open(&d).expect("open");
                        b.wait();
                        let pid = 1000 * (round + 1) + i;
                        claim_daemon(&conn, pid, 100 * i64::from(round + 1), 30, |_| true)
                            .expect("claim")
                            .is_ok()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            assert_eq!(
                won.iter().filter(|w| **w).count(),
                1,
                "round {round}: {won:?}"
            );
        }
    }
}
