//! The scheduler's own tables in the shared state database (`<state_dir>/imcast.db`).
//!
//! Owns: `sched_campaign` (per campaign: the cursor — the last occurrence already decided — and
//! the user pause flag), `sched_occurrence` (one row per decided occurrence, keyed by campaign
//! and UTC instant in whole seconds), `sched_control` (a log of what the daemon did with each
//! pause/resume/cancel request; the requests themselves are the journal's — see
//! [`Journal::pending_controls`](crate::journal::Journal::pending_controls) — and a log row is
//! written by [`log_control`] inside
//! [`Journal::finish_control`](crate::journal::Journal::finish_control)'s transaction, so the
//! request's removal and its log commit together) and `sched_daemon` (a heartbeat so two daemons
//! do not share one state directory). Invariants: an occurrence row is inserted in the same
//! transaction that advances the cursor past it, BEFORE its run starts, and the primary key makes
//! a second insert a no-op — this is what makes each occurrence fire at most once.
//! Must not: touch the journal's tables (`runs`, `calls`, `recipients`, `run_counts`, `control`:
//! the journal's methods are the only way to them); [`migrate`] only creates `sched_*` tables
//! with `CREATE TABLE IF NOT EXISTS`, so it is safe on any connection to the file.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::journal::PendingControl;

/// Errors from the scheduler tables.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// `execute` through the statement cache: the daemon runs the same few statements every tick.
fn exec(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(p)
}

/// Create the scheduler's tables if they do not exist. Idempotent; safe on the journal's connection.
pub fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
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
        );",
    )
}

/// Open (creating if needed) the state database and migrate the scheduler tables.
pub fn open(state_dir: &Path) -> Result<Connection, StateError> {
    let path = state_dir.join("imcast.db");
    let open_err = |source| StateError::Open {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(|e| StateError::Open {
        path: path.display().to_string(),
        source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
    })?;
    // The journal owns the file and its core tables (runs, calls, recipients, control): let it
    // create and migrate them first, so a fresh state directory has them whoever opens it first.
    crate::journal::Journal::open(state_dir).map_err(|e| StateError::Open {
        path: path.display().to_string(),
        source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
    })?;
    let conn = crate::db::open(&path, "NORMAL").map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    // WAL + NORMAL survives a process crash; only a power loss can drop the last commits. The
    // one write that must survive that too — the claim of an occurrence — commits with FULL
    // (see record_occurrence). Everything else is re-derivable: run keys are deterministic, so a
    // lost status update is corrected by asking the runner again.
    migrate(&conn).map_err(open_err)?;
    Ok(conn)
}

/// Open an existing state database for reading; `None` if it does not exist yet.
pub fn open_existing(state_dir: &Path) -> Result<Option<Connection>, StateError> {
    if !state_dir.join("imcast.db").exists() {
        return Ok(None);
    }
    open(state_dir).map(Some)
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
}

const OCC_COLS: &str = "campaign, occurrence, status, run_key, content_hash, recorded_at, started_at, finished_at, paused_by, detail";

fn occ_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OccurrenceRow> {
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
    })
}

/// Occurrences, oldest first; all campaigns when `campaign` is `None`.
pub fn occurrences(
    conn: &Connection,
    campaign: Option<&str>,
) -> Result<Vec<OccurrenceRow>, StateError> {
    let sql = format!(
        "SELECT {OCC_COLS} FROM sched_occurrence WHERE (?1 IS NULL OR campaign = ?1) ORDER BY occurrence, campaign"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st
        .query_map(params![campaign], occ_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Occurrences in any of `statuses`, oldest first.
pub fn occurrences_in(
    conn: &Connection,
    statuses: &[&str],
) -> Result<Vec<OccurrenceRow>, StateError> {
    let marks = (1..=statuses.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {OCC_COLS} FROM sched_occurrence WHERE status IN ({marks}) ORDER BY occurrence, campaign"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st
        .query_map(rusqlite::params_from_iter(statuses.iter()), occ_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Count of occurrences by status.
pub fn status_counts(conn: &Connection) -> Result<Vec<(String, u64)>, StateError> {
    let mut st = conn
        .prepare("SELECT status, COUNT(*) FROM sched_occurrence GROUP BY status ORDER BY status")?;
    let rows = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
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

pub fn campaign(conn: &Connection, name: &str) -> Result<Option<CampaignRow>, StateError> {
    Ok(conn
        .prepare_cached(
            "SELECT name, cursor, paused, path, next_fire FROM sched_campaign WHERE name = ?1",
        )?
        .query_row(params![name], |r| {
            Ok(CampaignRow {
                name: r.get(0)?,
                cursor: r.get(1)?,
                paused: r.get::<_, i64>(2)? != 0,
                path: r.get(3)?,
                next_fire: r.get(4)?,
            })
        })
        .optional()?)
}

pub fn campaign_names(conn: &Connection) -> Result<Vec<String>, StateError> {
    let mut st = conn.prepare_cached("SELECT name FROM sched_campaign ORDER BY name")?;
    let names = st
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

pub fn upsert_campaign(
    conn: &Connection,
    name: &str,
    path: &str,
    next_fire: Option<i64>,
    now: i64,
) -> Result<(), StateError> {
    exec(conn,
        "INSERT INTO sched_campaign (name, path, next_fire, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(name) DO UPDATE SET path = excluded.path, next_fire = excluded.next_fire, updated_at = excluded.updated_at",
        params![name, path, next_fire, now],
    )?;
    Ok(())
}

pub fn set_cursor(conn: &Connection, name: &str, cursor: i64) -> Result<(), StateError> {
    exec(
        conn,
        "UPDATE sched_campaign SET cursor = ?2 WHERE name = ?1 AND (cursor IS NULL OR cursor < ?2)",
        params![name, cursor],
    )?;
    Ok(())
}

pub fn set_paused(conn: &Connection, name: &str, paused: bool) -> Result<(), StateError> {
    exec(
        conn,
        "UPDATE sched_campaign SET paused = ?2 WHERE name = ?1",
        params![name, paused as i64],
    )?;
    Ok(())
}

/// Record a decided occurrence and move the cursor past it, in one transaction. Returns false
/// when the occurrence was already recorded (then nothing changes but the cursor).
#[allow(clippy::too_many_arguments)] // one flat row; a struct would only rename the columns
pub fn record_occurrence(
    conn: &mut Connection,
    campaign: &str,
    occurrence: i64,
    status: &str,
    run_key: &str,
    content_hash: &str,
    now: i64,
    detail: Option<&str>,
) -> Result<bool, StateError> {
    conn.pragma_update(None, "synchronous", "FULL")?;
    let res = record_occurrence_tx(
        conn,
        campaign,
        occurrence,
        status,
        run_key,
        content_hash,
        now,
        detail,
    );
    let reset = conn.pragma_update(None, "synchronous", "NORMAL");
    let inserted = res?;
    reset?;
    Ok(inserted)
}

#[allow(clippy::too_many_arguments)]
fn record_occurrence_tx(
    conn: &mut Connection,
    campaign: &str,
    occurrence: i64,
    status: &str,
    run_key: &str,
    content_hash: &str,
    now: i64,
    detail: Option<&str>,
) -> Result<bool, StateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = exec(&tx,
        "INSERT OR IGNORE INTO sched_occurrence (campaign, occurrence, status, run_key, content_hash, recorded_at, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![campaign, occurrence, status, run_key, content_hash, now, detail],
    )?;
    exec(
        &tx,
        "UPDATE sched_campaign SET cursor = ?2 WHERE name = ?1 AND (cursor IS NULL OR cursor < ?2)",
        params![campaign, occurrence],
    )?;
    tx.commit()?;
    Ok(n == 1)
}

/// Record an occurrence `failed` at `at` (UTC seconds), saying why.
pub fn record_failed(
    conn: &Connection,
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
    conn: &Connection,
    campaign: &str,
    occurrence: i64,
    status: &str,
    upd: Update<'_>,
) -> Result<(), StateError> {
    exec(
        conn,
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
    conn: &Connection,
    req: &PendingControl,
    handled_at: i64,
    result: &str,
) -> Result<(), StateError> {
    exec(
        conn,
        "INSERT INTO sched_control (campaign, action, requested_at, handled_at, result) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            req.campaign,
            req.request.as_str(),
            req.requested_at.as_second(),
            handled_at,
            result
        ],
    )?;
    Ok(())
}

/// What the daemon answered to the latest request for `campaign` made at or after `since`
/// (UTC seconds), once it acted on it.
pub fn control_result(
    conn: &Connection,
    campaign: &str,
    since: i64,
) -> Result<Option<String>, StateError> {
    Ok(conn
        .query_row(
            "SELECT result FROM sched_control WHERE campaign = ?1 AND requested_at >= ?2
             ORDER BY id DESC LIMIT 1",
            params![campaign, since],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
}

/// Claim the daemon slot: fails with the other pid when another daemon's heartbeat is fresher
/// than `stale_after` seconds and `alive(pid)` says it still runs. The check and the write are
/// one IMMEDIATE transaction, so of two daemons starting at once on one state directory exactly
/// one gets the slot.
pub fn claim_daemon(
    conn: &Connection,
    pid: u32,
    now: i64,
    stale_after: i64,
    alive: impl Fn(u32) -> bool,
) -> Result<Result<(), u32>, StateError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let other: Option<(u32, i64)> = tx
        .query_row(
            "SELECT pid, heartbeat FROM sched_daemon WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((opid, hb)) = other {
        if opid != pid && now - hb < stale_after && alive(opid) {
            return Ok(Err(opid));
        }
    }
    heartbeat(&tx, pid, now)?;
    tx.commit()?;
    Ok(Ok(()))
}

pub fn heartbeat(conn: &Connection, pid: u32, now: i64) -> Result<(), StateError> {
    exec(
        conn,
        "INSERT INTO sched_daemon (id, pid, heartbeat) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, heartbeat = excluded.heartbeat",
        params![pid, now],
    )?;
    Ok(())
}

pub fn release_daemon(conn: &Connection, pid: u32) -> Result<(), StateError> {
    exec(
        conn,
        "DELETE FROM sched_daemon WHERE id = 1 AND pid = ?1",
        params![pid],
    )?;
    Ok(())
}

/// Delete finished occurrences older than `cutoff` (UTC seconds) and handled control requests
/// older than it. Returns (occurrences, controls) deleted. Active and pending rows are kept.
pub fn prune(conn: &Connection, cutoff: i64) -> Result<(usize, usize), StateError> {
    let occ = exec(
        conn,
        "DELETE FROM sched_occurrence WHERE occurrence < ?1
           AND status IN ('done', 'failed', 'cancelled', 'skipped_late', 'skipped_overlap')",
        params![cutoff],
    )?;
    let ctl = exec(
        conn,
        "DELETE FROM sched_control WHERE handled_at IS NOT NULL AND handled_at < ?1",
        params![cutoff],
    )?;
    Ok((occ, ctl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_is_idempotent_and_record_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = open(dir.path()).expect("open");
        migrate(&conn).expect("second migrate");
        upsert_campaign(&conn, "a", "a.yaml", None, 0).expect("upsert");
        assert!(
            record_occurrence(&mut conn, "a", 100, status::CLAIMED, "a@100", "h", 1, None)
                .expect("rec")
        );
        assert!(
            !record_occurrence(&mut conn, "a", 100, status::CLAIMED, "a@100", "h", 2, None)
                .expect("rec")
        );
        assert_eq!(
            campaign(&conn, "a").expect("q").expect("row").cursor,
            Some(100)
        );
        set_cursor(&conn, "a", 50).expect("cursor never goes back");
        assert_eq!(
            campaign(&conn, "a").expect("q").expect("row").cursor,
            Some(100)
        );
        update_occurrence(
            &conn,
            "a",
            100,
            status::DONE,
            Update {
                finished_at: Some(5),
                ..Default::default()
            },
        )
        .expect("upd");
        assert_eq!(prune(&conn, 99).expect("prune"), (0, 0));
        assert_eq!(prune(&conn, 101).expect("prune"), (1, 0));
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
