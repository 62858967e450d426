//! The limiter's log in SQLite: `<state_dir>/throttle.db` (one writer per file, so the journal's
//! long writes never hold up an admission), shared by every process on the state directory.
//!
//! A decision is one `BEGIN IMMEDIATE` transaction: the whole file is the lock. Tables:
//! `throttle_log(id, key, at_ns, count, until_ns, done)` with an index on
//! `(key, until_ns, count)` (a decision is a few index lookups even with 12,000 entries in the
//! window), `throttle_total(key, units)` (the running totals) and `throttle_pace(key, tat_ns)`.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension};

use super::store::{
    clamp_i64, decide_by_steps, AskRule, Decided, End, KeyState, NewEntry, Steps, Store, StoreError,
};

pub(crate) struct SqliteStore {
    conn: Connection,
    in_tx: bool,
}

impl SqliteStore {
    /// Open (creating or upgrading the tables) the log at `path`.
    pub(crate) fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // WAL so readers never block; NORMAL sync: losing the last entries on power loss only
        // makes a restarted process less cautious by at most a few calls, and an fsync per
        // admission would cap personalized campaigns far below the provider's limits.
        let conn = crate::db::open(path, "NORMAL")?;
        create_tables(&conn)?;
        Ok(SqliteStore { conn, in_tx: false })
    }

    fn write(&self, ends: &[End]) -> rusqlite::Result<()> {
        for e in ends {
            if e.close {
                self.conn
                    .prepare_cached(
                        "UPDATE throttle_log SET until_ns = ?2, done = 1 WHERE id = ?1 AND done = 0",
                    )?
                    .execute(params![e.id, clamp_i64(e.until_ns)])?;
            } else {
                self.conn
                    .prepare_cached(
                        "UPDATE throttle_log SET until_ns = MAX(until_ns, ?2)
                         WHERE id = ?1 AND done = 0",
                    )?
                    .execute(params![e.id, clamp_i64(e.until_ns)])?;
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.in_tx = false;
        Ok(())
    }
}

impl Store for SqliteStore {
    fn decide(
        &mut self,
        rules: &[AskRule<'_>],
        now: i128,
        ends: &[End],
    ) -> Result<Decided, StoreError> {
        decide_by_steps(self, rules, now, ends)
    }

    fn rollback(&mut self) {
        if self.in_tx {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.in_tx = false;
        }
    }

    fn write_ends(&mut self, ends: &[End]) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_tx = true;
        match self.write(ends) {
            Ok(()) => Ok(self.commit()?),
            Err(e) => {
                self.rollback();
                Err(e.into())
            }
        }
    }
}

impl Steps for SqliteStore {
    fn begin(
        &mut self,
        keys: &[&str],
        now: i128,
        ends: &[End],
    ) -> Result<Vec<KeyState>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_tx = true;
        self.write(ends)?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let used = prune(&self.conn, key, now)?;
            let tat: Option<i64> = self
                .conn
                .prepare_cached("SELECT tat_ns FROM throttle_pace WHERE key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?;
            out.push(KeyState {
                used,
                tat: tat.map(i128::from),
            });
        }
        Ok(out)
    }

    fn earliest_free(&mut self, key: &str, excess: i128) -> Result<Option<i128>, StoreError> {
        let mut st = self.conn.prepare_cached(
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

    fn admit(
        &mut self,
        entries: &[NewEntry<'_>],
        tats: &[(&str, i128)],
    ) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            self.conn
                .prepare_cached(
                    "INSERT INTO throttle_log(key, at_ns, count, until_ns, done)
                     VALUES (?1, ?2, ?3, ?4, 0)",
                )?
                .execute(params![
                    e.key,
                    clamp_i64(e.at_ns),
                    e.units,
                    clamp_i64(e.until_ns)
                ])?;
            ids.push(self.conn.last_insert_rowid());
            self.conn
                .prepare_cached(
                    "INSERT INTO throttle_total(key, units) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET units = units + excluded.units",
                )?
                .execute(params![e.key, e.units])?;
        }
        for (key, tat) in tats {
            self.conn
                .prepare_cached(
                    "INSERT INTO throttle_pace(key, tat_ns) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET tat_ns = excluded.tat_ns",
                )?
                .execute(params![key, clamp_i64(*tat)])?;
        }
        self.commit()?;
        Ok(ids)
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        Ok(self.commit()?)
    }
}

/// Delete `key`'s entries that ended before `now`, keep the running total in step, and return the
/// units that still count.
fn prune(conn: &Connection, key: &str, now: i128) -> rusqlite::Result<i128> {
    let now = clamp_i64(now);
    let (gone, rows): (i64, i64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(count), 0), COUNT(*) FROM throttle_log
             WHERE key = ?1 AND until_ns < ?2",
        )?
        .query_row(params![key, now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if rows > 0 {
        conn.prepare_cached("DELETE FROM throttle_log WHERE key = ?1 AND until_ns < ?2")?
            .execute(params![key, now])?;
        conn.prepare_cached("UPDATE throttle_total SET units = units - ?2 WHERE key = ?1")?
            .execute(params![key, gone])?;
    }
    let used: Option<i64> = conn
        .prepare_cached("SELECT units FROM throttle_total WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    Ok(i128::from(used.unwrap_or(0)))
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
        c.busy_timeout(std::time::Duration::from_secs(2)).is_ok()
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
