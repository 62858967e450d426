//! The journal's schema: the migrations (numbered by `PRAGMA user_version`), the upgrade step that
//! ends duplicate unfinished runs before the partial unique index is created, other stages'
//! migrations ([`Journal::migrate_extra`]), and how values are stored: the recipient key (`rk` =
//! run key << 32 | audience line), times of runs and calls as RFC 3339 text (the lease's
//! instants, migration 10, as integer milliseconds since the epoch), and (migration 11, the
//! compact journal) recipient rows of a few integers with what a call or a run shares stored
//! once (see `rows` and `pack`).
//!
//! Portability (the PostgreSQL port): the migrations here are SQLite's history and run on SQLite
//! only (through [`crate::store::Conn::as_sqlite`]; PostgreSQL's journal tables are the store's
//! own migrations, [`crate::pg::schema`]). The values they define are portable: integer codes,
//! BLOB lists = `bytea`, a partial index, which PostgreSQL has. SQLite-only: `rk` is the rowid
//! (`INTEGER PRIMARY KEY`: the table b-tree itself in audience order; on PostgreSQL a `bigint`
//! primary key — statements name it `rk`, never `rowid`), `run_counts`/`run_stages` are `WITHOUT
//! ROWID`, and `PRAGMA user_version` numbers the migrations. The helpers every statement uses
//! ([`run_key`], [`rk_range`], [`is_unfinished_conflict`], times) are portable.
//!
//! Invariants: a migration runs once, in order, inside one IMMEDIATE transaction with the
//! version bump; a migration is never edited once released (add a new one). Must not: change
//! a stored name or the key layout without a migration.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};

use std::collections::{BTreeMap, HashMap};

use super::counts::count_move;
use super::rows::Seeder;
use super::runs::parse_action;
use super::{sqlite_of, Journal, JournalError, RecipientStatus};
use crate::action::Action;
use crate::store::{Conn, StoreError};

/// The index that keeps at most one unfinished non-test run per (campaign, occurrence).
pub(super) const UNFINISHED_INDEX: &str = "runs_one_unfinished";

/// Whether `e` is the database refusing a second unfinished run of a campaign occurrence
/// (another process created or reopened one first).
pub(super) fn is_unfinished_conflict(e: &crate::store::StoreError) -> bool {
    use crate::store::StoreError;
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, Some(msg))) => {
            f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains(UNFINISHED_INDEX)
        }
        StoreError::Postgres(e) => e
            .as_db_error()
            .is_some_and(|d| d.constraint() == Some(UNFINISHED_INDEX)),
        _ => false,
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
    // 6 (audit, retry): `run_invocations` holds one row per invocation that opened a run (created,
    // resumed, continued, reopened for --resend-unknown, a --retry-failed follow-up; the daemon's
    // too): who, where, when, which imcast and which flags (`audit`). Runs from before get their
    // creation as their first row. `runs.retry_of`: the finished run a --retry-failed run sends
    // the retryable failures of (`retry`).
    "CREATE TABLE run_invocations(
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at TEXT NOT NULL,
        decision TEXT NOT NULL,
        via TEXT NOT NULL,
        user TEXT,
        host TEXT,
        imcast_version TEXT,
        flags TEXT NOT NULL,
        PRIMARY KEY(run_id, seq)
     ) WITHOUT ROWID;
     INSERT INTO run_invocations(run_id, seq, at, decision, via, user, host, imcast_version, flags)
        SELECT id, 1, created_at, 'created',
               CASE WHEN occurrence IS NULL THEN 'run' ELSE 'daemon' END,
               CASE WHEN json_valid(audit) THEN json_extract(audit, '$.user') END,
               CASE WHEN json_valid(audit) THEN json_extract(audit, '$.host') END,
               CASE WHEN json_valid(audit) THEN json_extract(audit, '$.imcast_version') END,
               flags
        FROM runs;
     ALTER TABLE runs ADD COLUMN retry_of TEXT;",
    // 7: the attempts log (see `attempts`): one row per admitted call attempt, its admission
    // instant (nanoseconds since 1970) and the error code it ended with.
    "CREATE TABLE attempts(
        run_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        at_ns INTEGER NOT NULL,
        receivers INTEGER NOT NULL,
        code TEXT,
        PRIMARY KEY(run_key, seq, attempt)
     ) WITHOUT ROWID;
     CREATE INDEX attempts_at ON attempts(run_key, at_ns);",
    // 8 (A/B variants): the `message.variants` entry a recipient was assigned (NULL: the
    // campaign has no variants, or the row is not sent). A row held out by `holdout:` has status
    // `holdout` (a final status like `suppressed`).
    "ALTER TABLE recipients ADD COLUMN variant_name TEXT;",
    // 9 (stages): a run's stages in order (a canary and the rest): each one's range of call
    // numbers, the time it may not start before, its state (waiting | sending | sent | expired)
    // and its gate (NULL: none; waiting | passed | failed | overridden | skipped) with the time
    // the gate decides. Times, never sleeps: a restart reads where the run stands.
    "CREATE TABLE run_stages(
        run_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        first_call INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        recipients INTEGER NOT NULL,
        not_before TEXT,
        state TEXT NOT NULL,
        gate TEXT,
        gate_at TEXT,
        detail TEXT,
        started_at TEXT,
        finished_at TEXT,
        PRIMARY KEY(run_id, idx)
     ) WITHOUT ROWID;",
    // 10 (leases across hosts): a run's lease gets an expiry (`lease_expires_ms`, renewed by the
    // sending engine's heartbeat) and a fencing number (`fence`, +1 at every claim) with who
    // took it and when (`fence_holder`, `fence_at_ms`); instants in milliseconds since the
    // epoch. A lease held when upgrading counts as claimed once (fence 1, taken at its run's last
    // update); its expiry stays NULL, which keeps the old rule for it (live while its process
    // runs), so an older process still sending is never taken over by the upgrade.
    "ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN fence_holder TEXT;
     ALTER TABLE runs ADD COLUMN fence_at_ms INTEGER;
     ALTER TABLE runs ADD COLUMN lease_expires_ms INTEGER;
     UPDATE runs SET fence = 1, fence_holder = owner,
         fence_at_ms = CAST(ROUND((julianday(updated_at) - 2440587.5) * 86400000.0) AS INTEGER)
      WHERE owner IS NOT NULL;",
    // 11 (compact journal): the new tables; `compact_rows` fills them from the old ones and
    // `COMPACT_FINISH` puts them in their place (see `rows` for what each holds).
    // `recipients.status` is an integer code (`RecipientStatus::code`), `variant` an index into
    // `run_variants`, `at` NULL or nanoseconds; no index on `id` but a partial one on the refused
    // receivers. `calls.receivers` is the receivers' audience lines packed (`pack`), `strays` the
    // ids with no row in the run (NULL: none), `n_receivers` how many.
    "CREATE TABLE recipients_10(
        rk INTEGER PRIMARY KEY,
        id INTEGER,
        status INTEGER NOT NULL,
        call_seq INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        refusals INTEGER NOT NULL DEFAULT 0,
        message_id INTEGER,
        variant INTEGER,
        at INTEGER,
        raw_id TEXT,
        variant_name TEXT,
        error_code TEXT,
        error_message TEXT,
        detail TEXT
     );
     CREATE TABLE run_variants(
        run_key INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        variant TEXT NOT NULL,
        PRIMARY KEY(run_key, idx),
        UNIQUE(run_key, variant)
     );
     CREATE TABLE call_plan(
        run_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        lines BLOB NOT NULL,
        PRIMARY KEY(run_key, seq)
     );
     CREATE TABLE calls_10(
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        variant TEXT NOT NULL,
        receivers BLOB NOT NULL,
        strays BLOB,
        n_receivers INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        client_msg_id TEXT,
        error_code TEXT,
        error_message TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY(run_id, seq)
     );",
    // 12 (rows per call): a new run's planned `pending` rows held per plan call until the call's
    // outcome writes them (`deferred`), and the rows a call's answer delivered plainly, kept per
    // call (`delivered`, with their message ids and the call's attempts); see `deferred`:
    // audience lines, ids and message ids packed, `lo`/`hi` the lowest and highest line (a
    // reader's window finds its entries by them), `n` how many.
    "CREATE TABLE deferred(
        run_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        n INTEGER NOT NULL,
        variant INTEGER,
        lines BLOB NOT NULL,
        ids BLOB NOT NULL,
        PRIMARY KEY(run_key, seq)
     );
     CREATE INDEX deferred_lo ON deferred(run_key, lo);
     CREATE INDEX deferred_wide ON deferred(run_key, lo) WHERE hi - lo > 65536;
     CREATE TABLE delivered(
        run_key INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        n INTEGER NOT NULL,
        variant INTEGER,
        attempts INTEGER NOT NULL,
        lines BLOB NOT NULL,
        ids BLOB NOT NULL,
        mids BLOB NOT NULL,
        PRIMARY KEY(run_key, seq)
     );
     CREATE INDEX delivered_lo ON delivered(run_key, lo);
     CREATE INDEX delivered_wide ON delivered(run_key, lo) WHERE hi - lo > 65536;",
];

/// The migration (index into [`MIGRATIONS`]) that adds the lease's expiry and fence.
#[cfg(test)]
const LEASE_MIGRATION: usize = 9;

/// The migration (index into [`MIGRATIONS`]) that makes the journal compact.
const COMPACT_MIGRATION: usize = 10;

/// After `compact_rows` filled `recipients_10`: it replaces `recipients`.
const COMPACT_RECIPIENTS: &str = "DROP TABLE recipients;
     ALTER TABLE recipients_10 RENAME TO recipients;
     CREATE INDEX recipients_refused ON recipients(id) WHERE refusals > 0;";

/// After `compact_calls` filled `calls_10`: it replaces `calls`.
const COMPACT_CALLS: &str = "DROP TABLE calls;
     ALTER TABLE calls_10 RENAME TO calls;";

/// Migration 10's rows: every recipient row into `recipients_10` (status as its code, the variant
/// as an index into the run's dictionary, the time NULL where it is the time the new layout
/// derives — its call's answer, or the run's start — and nanoseconds where it is not), and each
/// plan call's lines into `call_plan`. In Rust because times and packed lists cannot be converted
/// exactly in portable SQL.
fn compact_rows(conn: &Connection, sc: &Conn, path: &Path) -> Result<(), JournalError> {
    let db = |source: rusqlite::Error| JournalError::Db {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let sdb = |source: StoreError| JournalError::Db {
        path: path.to_path_buf(),
        source,
    };
    let mut runs: HashMap<i64, (String, String)> = HashMap::new();
    {
        let mut st = conn
            .prepare("SELECT key, id, created_at FROM runs")
            .map_err(db)?;
        let mut rows = st.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            runs.insert(
                r.get(0).map_err(db)?,
                (r.get(1).map_err(db)?, r.get(2).map_err(db)?),
            );
        }
    }
    let mut answered: HashMap<(String, i64), String> = HashMap::new();
    {
        let mut st = conn
            .prepare("SELECT run_id, seq, updated_at FROM calls WHERE state IN ('done', 'unknown')")
            .map_err(db)?;
        let mut rows = st.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            answered.insert(
                (r.get(0).map_err(db)?, r.get(1).map_err(db)?),
                r.get(2).map_err(db)?,
            );
        }
    }
    let mut seeders: BTreeMap<i64, Seeder> = BTreeMap::new();
    let mut st = conn
        .prepare(
            "SELECT rk, id, raw_id, status, message_id, attempts, call_seq, variant, error_code,
                    error_message, detail, updated_at, refusals, variant_name
             FROM recipients ORDER BY rk",
        )
        .map_err(db)?;
    let mut ins = conn
        .prepare(
            "INSERT INTO recipients_10(rk, id, status, call_seq, attempts, refusals, message_id,
                 variant, at, raw_id, variant_name, error_code, error_message, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .map_err(db)?;
    let mut rows = st.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let rk: i64 = r.get(0).map_err(db)?;
        let key = rk >> 32;
        let status: RecipientStatus = r.get::<_, String>(3).map_err(db)?.parse()?;
        let call_seq: Option<i64> = r.get(6).map_err(db)?;
        let variant: Option<String> = r.get(7).map_err(db)?;
        let updated_at: Option<String> = r.get(11).map_err(db)?;
        let run = runs.get(&key);
        let derived = run.map(|(id, created)| {
            let call = call_seq
                .filter(|_| status.given_by_call())
                .and_then(|c| answered.get(&(id.clone(), c)));
            call.unwrap_or(created).as_str()
        });
        let old = updated_at
            .as_deref()
            .or(run.map(|(_, created)| created.as_str()));
        let at = match (old, derived) {
            (Some(o), Some(d)) if o == d => None,
            (Some(o), _) => Some(super::pack::to_ns(parse_ts(o)?)),
            (None, _) => None,
        };
        let seeder = seeders.entry(key).or_insert_with(|| Seeder::new(key));
        let variant = seeder.row(
            (rk as u64) & MAX_LINE,
            call_seq.map(|c| c as u64),
            variant.as_deref(),
        );
        ins.execute(params![
            rk,
            r.get::<_, Option<i64>>(1).map_err(db)?,
            status.code(),
            call_seq,
            r.get::<_, i64>(5).map_err(db)?,
            r.get::<_, i64>(12).map_err(db)?,
            r.get::<_, Option<i64>>(4).map_err(db)?,
            variant,
            at,
            r.get::<_, Option<String>>(2).map_err(db)?,
            r.get::<_, Option<String>>(13).map_err(db)?,
            r.get::<_, Option<String>>(8).map_err(db)?,
            r.get::<_, Option<String>>(9).map_err(db)?,
            r.get::<_, Option<String>>(10).map_err(db)?,
        ])
        .map_err(db)?;
    }
    for (_, s) in seeders {
        s.finish(sc).map_err(sdb)?;
    }
    Ok(())
}

/// Migration 10's calls (after [`COMPACT_RECIPIENTS`]): each call's receivers found among the
/// compact rows (as a mark finds them) and stored as their lines.
fn compact_calls(conn: &Connection, sc: &Conn, path: &Path) -> Result<(), JournalError> {
    let db = |source: rusqlite::Error| JournalError::Db {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let sdb = |source: StoreError| JournalError::Db {
        path: path.to_path_buf(),
        source,
    };
    let mut st = conn
        .prepare(
            "SELECT c.run_id, c.seq, c.variant, c.receivers, c.state, c.attempts, c.client_msg_id,
                    c.error_code, c.error_message, c.updated_at, r.key
             FROM calls c LEFT JOIN runs r ON r.id = c.run_id",
        )
        .map_err(db)?;
    let mut rows = st.query([]).map_err(db)?;
    while let Some(r) = rows.next().map_err(db)? {
        let seq: i64 = r.get(1).map_err(db)?;
        let receivers: String = r.get(3).map_err(db)?;
        let ids: Vec<u64> = serde_json::from_str(&receivers)
            .map_err(|e| JournalError::Corrupt(format!("call {seq} receivers: {e}")))?;
        let key: Option<i64> = r.get(10).map_err(db)?;
        let (lines, strays) = match key {
            Some(key) => super::calls::pack_receivers(sc, key, seq as u64, &ids).map_err(sdb)?,
            None => (
                Vec::new(),
                Some(super::pack::encode_list(
                    &ids.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                )),
            ),
        };
        conn.execute(
            "INSERT INTO calls_10(run_id, seq, variant, receivers, strays, n_receivers, state,
                 attempts, client_msg_id, error_code, error_message, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                r.get::<_, String>(0).map_err(db)?,
                seq,
                r.get::<_, String>(2).map_err(db)?,
                lines,
                strays,
                ids.len() as i64,
                r.get::<_, String>(4).map_err(db)?,
                r.get::<_, i64>(5).map_err(db)?,
                r.get::<_, Option<String>>(6).map_err(db)?,
                r.get::<_, Option<String>>(7).map_err(db)?,
                r.get::<_, Option<String>>(8).map_err(db)?,
                r.get::<_, String>(9).map_err(db)?,
            ],
        )
        .map_err(db)?;
    }
    Ok(())
}

/// The migration (index into [`MIGRATIONS`]) that adds [`UNFINISHED_INDEX`].
const UNFINISHED_INDEX_MIGRATION: usize = 4;

/// Before [`UNFINISHED_INDEX`] exists, a database may hold several unfinished runs of one
/// campaign occurrence (two processes started at once). The newest of each group stays (it is
/// what `run` resumed before the index existed); the older ones are recovered like a crash (an
/// in-flight call's receivers become `unknown`) and cancelled: pending recipients `cancelled`,
/// the run `cancelled` with a stop reason naming the run kept. Returns how many were cancelled.
fn end_duplicate_unfinished_runs(
    conn: &Connection,
    sc: &Conn,
    path: &Path,
) -> Result<u64, JournalError> {
    let db = |source: rusqlite::Error| JournalError::Db {
        path: path.to_path_buf(),
        source: source.into(),
    };
    let sdb = |source: StoreError| JournalError::Db {
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
    for (id, action, updated_at, kept) in &older {
        let action = parse_action(action)?;
        legacy_recover_v4(conn, sc, id, action).map_err(sdb)?;
        legacy_cancel_pending_v4(
            conn,
            sc,
            id,
            "the run was cancelled: another unfinished run of the campaign was kept",
            updated_at,
        )
        .map_err(sdb)?;
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

/// Crash recovery as schema 4 to 9 stored it (text statuses, JSON receivers, an index on `id`):
/// frozen here for the migration step that runs on that schema (the journal's own recovery reads
/// the compact layout).
fn legacy_recover_v4(
    conn: &Connection,
    sc: &Conn,
    run_id: &str,
    action: Action,
) -> Result<(), StoreError> {
    let Some(key) = run_key(sc, run_id)? else {
        return Ok(());
    };
    let (lo, hi) = rk_range(key);
    let calls: Vec<(i64, String)> = conn
        .prepare("SELECT seq, receivers FROM calls WHERE run_id = ?1 AND state = 'in_flight'")?
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut moved = 0u64;
    for (seq, receivers) in calls {
        if action == Action::Conversation {
            conn.execute(
                "UPDATE calls SET state = 'planned', error_message = 'interrupted; resent with the same ClientMsgId'
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq],
            )?;
            continue;
        }
        let ids: Vec<u64> = serde_json::from_str(&receivers).unwrap_or_default();
        conn.execute(
            "UPDATE calls SET state = 'unknown', error_message = 'the process stopped while the call was in flight'
             WHERE run_id = ?1 AND seq = ?2",
            params![run_id, seq],
        )?;
        for id in ids {
            moved += conn.execute(
                "UPDATE recipients SET status = 'unknown', error_code = 'InFlightAtCrash',
                     error_message = 'the process stopped while this call was in flight; it may have been delivered',
                     call_seq = ?3,
                     variant = (SELECT variant FROM calls WHERE run_id = ?1 AND seq = ?3),
                     attempts = attempts + (SELECT attempts FROM calls WHERE run_id = ?1 AND seq = ?3)
                 WHERE id = ?2 AND rk BETWEEN ?4 AND ?5 AND status = 'pending'",
                params![run_id, id as i64, seq, lo, hi],
            )? as u64;
        }
    }
    count_move(
        sc,
        run_id,
        Some(RecipientStatus::Pending),
        RecipientStatus::Unknown,
        moved,
    )
}

/// Pending recipients cancelled, as schema 4 to 9 stored them (see [`legacy_recover_v4`]).
fn legacy_cancel_pending_v4(
    conn: &Connection,
    sc: &Conn,
    run_id: &str,
    why: &str,
    at: &str,
) -> Result<(), StoreError> {
    let Some(key) = run_key(sc, run_id)? else {
        return Ok(());
    };
    let (lo, hi) = rk_range(key);
    let n = conn.execute(
        "UPDATE recipients SET status = 'cancelled', error_message = ?3, updated_at = ?4
         WHERE rk BETWEEN ?1 AND ?2 AND status = 'pending'",
        params![lo, hi, why, at],
    )? as u64;
    count_move(
        sc,
        run_id,
        Some(RecipientStatus::Pending),
        RecipientStatus::Cancelled,
        n,
    )
}

/// Largest audience line a recipient key holds (`rk` = run key << 32 | line).
pub(super) const MAX_LINE: u64 = u32::MAX as u64;

/// The `rk` range of a run's recipient rows: `(key << 32, key << 32 | MAX_LINE)`.
pub(super) fn rk_range(key: i64) -> (i64, i64) {
    (key << 32, (key << 32) | MAX_LINE as i64)
}

/// A run's integer key (`runs.key`), if the run exists.
pub(super) fn run_key(
    conn: &crate::store::Conn,
    run_id: &str,
) -> Result<Option<i64>, crate::store::StoreError> {
    conn.query_opt(
        "SELECT key FROM runs WHERE id = ?1",
        crate::store::params![run_id],
        |r| r.get(0),
    )
}

pub(super) fn ts(t: Timestamp) -> String {
    t.to_string()
}

pub(super) fn parse_ts(s: &str) -> Result<Timestamp, JournalError> {
    s.parse()
        .map_err(|e| JournalError::Corrupt(format!("time {s:?}: {e}")))
}

impl Journal {
    pub(super) fn migrate(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source: rusqlite::Error| JournalError::Db {
            path: path.clone(),
            source: source.into(),
        };
        let tx = rusqlite::Transaction::new_unchecked(
            sqlite_of(&self.conn),
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(db)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)?;
        for (i, m) in MIGRATIONS.iter().enumerate() {
            if (i as i64) >= version {
                if i == UNFINISHED_INDEX_MIGRATION {
                    end_duplicate_unfinished_runs(&tx, &self.conn, &path)?;
                }
                tx.execute_batch(m).map_err(db)?;
                if i == COMPACT_MIGRATION {
                    compact_rows(&tx, &self.conn, &path)?;
                    tx.execute_batch(COMPACT_RECIPIENTS).map_err(db)?;
                    compact_calls(&tx, &self.conn, &path)?;
                    tx.execute_batch(COMPACT_CALLS).map_err(db)?;
                }
            }
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Apply another stage's migrations once each: `steps[i]` runs when `component`'s recorded
    /// version is ≤ i. SQLite only: on PostgreSQL the store's migrations (`crate::pg::schema`)
    /// made those tables, and this does nothing.
    pub fn migrate_extra(&mut self, component: &str, steps: &[&str]) -> Result<(), JournalError> {
        if self.conn.as_sqlite().is_none() {
            return Ok(());
        }
        let path = self.path.clone();
        let db = |source: rusqlite::Error| JournalError::Db {
            path: path.clone(),
            source: source.into(),
        };
        let tx = rusqlite::Transaction::new_unchecked(
            sqlite_of(&self.conn),
            rusqlite::TransactionBehavior::Immediate,
        )
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use crate::journal::testutil::*;
    use crate::journal::*;

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
        assert!(is_unfinished_conflict(&e));
        // Reopening a finished run while another is unfinished is refused too.
        let e = c
            .execute("UPDATE runs SET status = 'running' WHERE id = 'done'", &[])
            .expect_err("reopen");
        assert!(is_unfinished_conflict(&e));
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

    /// A journal as schema 9 left it (text statuses and times, JSON receivers, an `id` index),
    /// holding an unfinished run: a sent receiver, a refused one waiting to be re-queued, a call
    /// in flight at a crash, an invalid row and one suppressed later. Migration 10 keeps every
    /// value (times included) and the run resumes: the in-flight receivers become `unknown`, the
    /// refused one is found for its re-queue and sent, the counters stay exact.
    #[test]
    fn an_old_journal_is_compacted_and_its_run_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let (t0, t1, t2) = (
            "2026-03-01T09:00:00Z",
            "2026-03-01T09:00:05.25Z",
            "2026-03-01T09:00:07Z",
        );
        {
            let conn = Connection::open(&path).expect("open");
            for m in &MIGRATIONS[..COMPACT_MIGRATION] {
                conn.execute_batch(m).expect("schema");
            }
            conn.execute_batch(&format!("PRAGMA user_version = {COMPACT_MIGRATION};"))
                .expect("version");
            insert_run(&conn, "r1", None, "running", false).expect("run");
            conn.execute("UPDATE runs SET total_calls = 2 WHERE id = 'r1'", [])
                .expect("calls");
            let row = |line: i64,
                       id: Option<i64>,
                       raw: Option<&str>,
                       status: &str,
                       msg: Option<i64>,
                       attempts: i64,
                       call: Option<i64>,
                       code: Option<&str>,
                       at: &str,
                       refusals: i64| {
                conn.execute(
                    "INSERT INTO recipients(rk, id, raw_id, status, message_id, attempts, call_seq,
                         variant, error_code, error_message, detail, updated_at, refusals, variant_name)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, NULL, ?10, ?11, NULL)",
                    params![
                        (1i64 << 32) | line,
                        id,
                        raw,
                        status,
                        msg,
                        attempts,
                        call,
                        call.map(|_| "v"),
                        code,
                        at,
                        refusals
                    ],
                )
                .expect("row");
            };
            row(
                2,
                Some(101),
                None,
                "sent",
                Some(9_007_199_254_740_993),
                1,
                Some(0),
                None,
                t1,
                0,
            );
            row(
                3,
                Some(102),
                None,
                "pending",
                None,
                1,
                Some(0),
                Some("FailedReceiver"),
                t1,
                1,
            );
            row(4, Some(103), None, "pending", None, 0, Some(1), None, t0, 0);
            row(5, Some(104), None, "pending", None, 0, Some(1), None, t0, 0);
            row(6, None, Some("x"), "invalid", None, 0, None, None, t0, 0);
            row(
                7,
                Some(106),
                None,
                "suppressed",
                None,
                0,
                Some(1),
                None,
                t2,
                0,
            );
            conn.execute_batch(&format!(
                "INSERT INTO calls(run_id, seq, variant, receivers, state, attempts, updated_at)
                 VALUES ('r1', 0, 'v', '[101,102]', 'done', 1, '{t1}'),
                        ('r1', 1, 'v', '[103,104]', 'in_flight', 1, '{t0}');
                 INSERT INTO run_counts(run_id, status, n) VALUES
                   ('r1', 'sent', 1), ('r1', 'pending', 3), ('r1', 'invalid', 1), ('r1', 'suppressed', 1);"
            ))
            .expect("calls");
        }
        let mut j = Journal::open_path(&path).expect("migrate");
        let version: i64 = j
            .connection()
            .query_row("PRAGMA user_version", &[], |r| r.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let rows = j.recipients("r1").expect("rows");
        type Seen<'a> = (
            u64,
            &'a str,
            RecipientStatus,
            Option<&'a str>,
            Option<&'a str>,
        );
        let seen: Vec<Seen<'_>> = rows
            .iter()
            .map(|r| {
                (
                    r.line,
                    r.raw_id.as_str(),
                    r.status,
                    r.time.as_deref(),
                    r.variant.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (2, "101", RecipientStatus::Sent, Some(t1), Some("v")),
                (3, "102", RecipientStatus::Pending, Some(t1), Some("v")),
                (4, "103", RecipientStatus::Pending, Some(t0), Some("v")),
                (5, "104", RecipientStatus::Pending, Some(t0), Some("v")),
                (6, "x", RecipientStatus::Invalid, Some(t0), None),
                (7, "106", RecipientStatus::Suppressed, Some(t2), Some("v")),
            ]
        );
        assert_eq!(rows[0].message_id, Some(9_007_199_254_740_993));
        assert_eq!(rows[1].attempts, 1);
        assert_eq!(rows[1].error_code.as_deref(), Some("FailedReceiver"));
        let calls = j.calls("r1").expect("calls");
        assert_eq!(calls[0].receivers, [101, 102]);
        assert_eq!(calls[1].receivers, [103, 104]);
        assert_eq!(calls[1].state, CallState::InFlight);
        // No index on `id` is left; the refused receivers' partial one is there.
        let indexes: Vec<String> = j
            .connection()
            .query_map("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients' AND sql IS NOT NULL", &[], |r| r.get(0))
            .expect("names");
        assert_eq!(indexes, ["recipients_refused"]);

        // Resume: the crash's in-flight call makes its receivers unknown.
        let opened = open(&mut j, "h", ResumeOptions::default(), rows_of_test()).expect("resume");
        let Opened::Resumed { recovered, .. } = opened else {
            panic!("expected a resume, got {opened:?}");
        };
        assert_eq!(recovered.unknown_recipients, 2);
        assert_eq!(
            j.sendable_detail("r1", 0, &[101, 102], false).expect("q"),
            [Sendable {
                id: 102,
                refusals: 1,
                pending: true
            }]
        );
        assert_eq!(
            j.sendable("r1", 1, &[103, 104], true).expect("q"),
            [103, 104]
        );
        // The re-queued receiver is resent in an extra call and delivered.
        let next = j.prepare_requeue("r1", now()).expect("requeue");
        assert_eq!(next, 2);
        j.mark_in_flight("r1", next, "v", &[102], None, now())
            .expect("mark");
        j.record_outcome(
            "r1",
            next,
            CallState::Done,
            &[RecipientUpdate {
                id: 102,
                status: RecipientStatus::Sent,
                message_id: Some(7),
                error_code: None,
                error_message: None,
                detail: None,
            }],
            None,
            now(),
        )
        .expect("outcome");
        let c = j.counts("r1").expect("counts");
        assert_eq!(c[&RecipientStatus::Sent], 2);
        assert_eq!(c[&RecipientStatus::Unknown], 2);
        assert_eq!(c[&RecipientStatus::Pending], 0);
        assert_eq!(c, j.counts_by_scan("r1").expect("scan"));
        let r102 = j.recipients("r1").expect("rows").remove(1);
        assert_eq!(
            (r102.status, r102.attempts, r102.call),
            (RecipientStatus::Sent, 2, Some(2))
        );
    }

    fn rows_of_test() -> Vec<SeedRow> {
        rows(&[])
    }

    #[test]
    fn the_lease_migration_counts_a_held_lease_as_claimed_once_and_keeps_its_old_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DB_FILE);
        let before_leases = LEASE_MIGRATION;
        {
            let conn = Connection::open(&path).expect("open");
            for m in &MIGRATIONS[..before_leases] {
                conn.execute_batch(m).expect("schema");
            }
            conn.execute_batch(&format!("PRAGMA user_version = {before_leases};"))
                .expect("version");
            insert_run(&conn, "far", Some("a"), "running", false).expect("far");
            insert_run(&conn, "dead", Some("b"), "running", false).expect("dead");
            insert_run(&conn, "free", Some("c"), "paused", false).expect("free");
            let host = hostname();
            conn.execute_batch(&format!(
                "UPDATE runs SET owner = 'other-host:7:0' WHERE id = 'far';
                 UPDATE runs SET owner = '{host}:4294967295:0' WHERE id = 'dead';"
            ))
            .expect("owners");
        }
        let j = Journal::open_path(&path).expect("migrate");
        let fence = |id: &str| -> (i64, Option<String>, Option<i64>, Option<i64>) {
            j.connection()
                .query_row(
                    "SELECT fence, fence_holder, fence_at_ms, lease_expires_ms FROM runs WHERE id = ?1",
                    crate::store::params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .expect("row")
        };
        let at = now().as_millisecond();
        assert_eq!(
            fence("far"),
            (1, Some("other-host:7:0".into()), Some(at), None)
        );
        assert_eq!(fence("free"), (0, None, None, None));
        // No expiry: the old rule. Another host's lease stays live however late it is...
        let far = j.run("far").expect("q").expect("far");
        let e = j
            .claim(&far, now() + std::time::Duration::from_secs(86_400))
            .expect_err("live");
        assert_eq!(e.exit(), Exit::Busy);
        // ... and a dead local holder's is taken at once, the fence moving on.
        let dead = j.run("dead").expect("q").expect("dead");
        j.claim(&dead, now()).expect("dead holder");
        assert_eq!(fence("dead").0, 2);
        assert!(fence("dead").3.is_some(), "a claimed lease has an expiry");
    }
}
