//! Rows kept per call: the planned, still-`pending` recipient rows of a new run (`deferred`), and
//! the rows a call's answer delivered plainly (`delivered`), each held per plan call instead of
//! one row each. A recipient row of a shared-Content run was written three times before (seeded
//! `pending`, rewritten with its outcome, read back by the report); now a delivered recipient is
//! never a row of its own: three packed lists in its call's entry (a byte or two a line, id and
//! message id in order) and what the call shares (its attempts, variant and answer time). Measured
//! in BENCHMARKS.md, "Rows kept per call": the client's instructions −45 %, the state 47.5 → 7 bytes
//! a recipient, PostgreSQL's server CPU about halved. Hand-written rather than a crate: it is the
//! journal's own storage layout (the packing is `pack`'s).
//!
//! - `deferred(run_key, seq, lo, hi, n, variant, lines, ids)`: seeding writes here the rows that
//!   are `pending` with an id written in its decimal form, a plan call, nothing of their own and
//!   no A/B `variant_name` (nearly every row); the others are seeded as rows, as before. A call's
//!   outcome takes its entry (`DELETE … RETURNING`): a receiver delivered with a message id and
//!   nothing else goes to the call's `delivered` entry, any other is inserted as a row with its
//!   final values ([`insert_answered`]), a receiver the answer does not name as a `pending` row.
//! - `delivered(run_key, seq, lo, hi, n, variant, attempts, lines, ids, mids)`: a row of it reads
//!   as `sent` with its message id, its call's attempts and variant, and its call's answer time.
//!
//! Invariants: an audience line is a recipient row or in one entry of its run, never both (an
//! entry becomes rows, or is deleted with its run, in the transaction that writes them);
//! `lines` ascend in an entry, with `lo`/`hi` the first and last. A deferred line reads as a
//! `pending` row with its entry's call and variant, no attempts, no error and the run's start as
//! its time. Only an outcome creates a `delivered` entry, from the call's `deferred` one, so a
//! plan call has at most one of each. Every writer other than a call's outcome that changes or
//! reads rows by key first turns the entries it needs into rows ([`materialize`],
//! [`materialize_call`]): crash recovery of an in-flight call, cancel, pause and expiry and a
//! stage's expiry (the `pending` ones: a delivered row is final), resume's suppressions,
//! `--continue-changed`'s carried-over rows and the fallback scan of `rows::resolve` (all).
//! Readers see entries as rows, each reading one snapshot (`store::Conn::snapshot`: an answered
//! call's rows change table in one commit, never seen half moved): the report's scan
//! ([`in_window`], a window at a time),
//! `rows::resolve` (so what is still to send never includes a delivered receiver), the call
//! list, `counts_by_scan` and `last_line`. Must not: change a row that exists, or a status count
//! (the callers move the counters as before: deferred rows are counted `pending` when seeded,
//! and move to `sent` with their outcome).

use std::collections::BTreeMap;

use crate::store::{params, Backend, Conn, StoreError, Value};

use super::pack::{decode_list, encode_list, Packer};
use super::rows::{NewRow, RowWriter};
use super::{JournalError, RecipientStatus};

fn corrupt(e: JournalError) -> StoreError {
    StoreError::Value(Box::new(e))
}

/// One plan call's deferred rows: their audience lines and ids, in audience order.
#[derive(Debug, Default)]
pub(super) struct Entry {
    pub seq: i64,
    pub variant: Option<i64>,
    pub lines: Vec<i64>,
    pub ids: Vec<i64>,
}

impl Entry {
    /// The entry in a row's first four columns ([`entry_columns!`]), None when they are NULL (a
    /// left join found no entry).
    pub fn read_opt(r: &crate::store::Row) -> Result<Option<Entry>, StoreError> {
        if r.get::<Option<i64>>(0)?.is_none() {
            return Ok(None);
        }
        Entry::read(r).map(Some)
    }

    fn read(r: &crate::store::Row) -> Result<Entry, StoreError> {
        let lines = decode_list(&r.get::<Vec<u8>>(2)?).map_err(corrupt)?;
        let ids = decode_list(&r.get::<Vec<u8>>(3)?).map_err(corrupt)?;
        if lines.len() != ids.len() {
            return Err(corrupt(JournalError::Corrupt(format!(
                "deferred rows of call {}: {} lines but {} ids",
                r.get::<i64>(0)?,
                lines.len(),
                ids.len()
            ))));
        }
        Ok(Entry {
            seq: r.get(0)?,
            variant: r.get(1)?,
            lines,
            ids,
        })
    }
}

/// What seeding defers, per plan call ([`Deferrer::offer`]), written by [`Deferrer::finish`].
/// Kept packed as it grows (about a byte a line and the id's varint, not sixteen bytes a row).
pub(super) struct Deferrer {
    key: i64,
    calls: BTreeMap<u64, Pending>,
}

/// One plan call's deferred rows while seeding.
struct Pending {
    variant: Option<i64>,
    lo: i64,
    lines: Packer,
    ids: Packer,
}

impl Deferrer {
    pub fn new(key: i64) -> Self {
        Deferrer {
            key,
            calls: BTreeMap::new(),
        }
    }

    /// Defer a seeded row if it can be (a `pending` row with an id and a plan call, `plain`:
    /// nothing of its own, not even an id written another way; with its call's variant index):
    /// true when deferred (the caller writes no row for it). Rows come in audience order.
    pub fn offer(
        &mut self,
        line: u64,
        id: Option<u64>,
        status: RecipientStatus,
        call_seq: Option<u64>,
        variant: Option<i64>,
        plain: bool,
    ) -> bool {
        let (Some(id), Some(seq), RecipientStatus::Pending, true) = (id, call_seq, status, plain)
        else {
            return false;
        };
        let e = self.calls.entry(seq).or_insert_with(|| Pending {
            variant,
            lo: line as i64,
            lines: Packer::default(),
            ids: Packer::default(),
        });
        if e.variant != variant || e.lines.last().is_some_and(|l| l >= line as i64) {
            return false;
        }
        e.lines.push(line as i64);
        e.ids.push(id as i64);
        true
    }

    /// Write the entries: on SQLite one statement each (a few hundred rows per entry), on
    /// PostgreSQL one binary COPY for them all (a statement each was a round trip each: 2,000
    /// for a 1M-recipient run, 0.2 s of its seeding).
    pub fn finish(self, conn: &Conn) -> Result<(), StoreError> {
        if conn.backend() == Backend::Postgres {
            use crate::store::CopyType::{Bytes, Int};
            conn.copy_in(
                "COPY deferred(run_key, seq, lo, hi, n, variant, lines, ids) FROM STDIN (FORMAT binary)",
                &[Int, Int, Int, Int, Int, Int, Bytes, Bytes],
                |w| {
                    for (seq, e) in &self.calls {
                        let Some(hi) = e.lines.last() else {
                            continue;
                        };
                        w.row(&[
                            self.key.into(),
                            (*seq as i64).into(),
                            e.lo.into(),
                            hi.into(),
                            (e.lines.len() as i64).into(),
                            e.variant.into(),
                            e.lines.bytes().into(),
                            e.ids.bytes().into(),
                        ])?;
                    }
                    Ok(())
                },
            )?;
            return Ok(());
        }
        let mut ins = conn.prepare(
            "INSERT INTO deferred(run_key, seq, lo, hi, n, variant, lines, ids)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for (seq, e) in &self.calls {
            let Some(hi) = e.lines.last() else {
                continue;
            };
            ins.execute(params![
                self.key,
                *seq as i64,
                e.lo,
                hi,
                e.lines.len() as i64,
                e.variant,
                e.lines.bytes(),
                e.ids.bytes()
            ])?;
        }
        Ok(())
    }
}

/// An entry's columns as [`Entry::read`] reads them.
macro_rules! entry_columns {
    () => {
        "seq, variant, lines, ids"
    };
}

/// [`entry_columns!`] as a constant (for statements built with `format!`).
pub(super) const ENTRY_COLUMNS: &str = entry_columns!();

/// The columns [`Delivered::read`] reads first (a query may add more after them).
macro_rules! delivered_columns {
    () => {
        "seq, variant, attempts, lines, ids, mids"
    };
}

/// Plan call `seq`'s deferred rows, removed from the table (the caller writes them as rows in
/// the same transaction). None: the call has none.
pub(super) fn take(conn: &Conn, key: i64, seq: i64) -> Result<Option<Entry>, StoreError> {
    let mut out = None;
    for r in conn.query(
        concat!(
            "DELETE FROM deferred WHERE run_key = ?1 AND seq = ?2 RETURNING ",
            entry_columns!()
        ),
        params![key, seq],
    )? {
        out = Some(Entry::read(&r)?);
    }
    Ok(out)
}

/// Plan call `seq`'s deferred rows, left in place (a reader).
pub(super) fn peek(conn: &Conn, key: i64, seq: i64) -> Result<Option<Entry>, StoreError> {
    let mut out = None;
    for r in conn.query(
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM deferred WHERE run_key = ?1 AND seq = ?2"
        ),
        params![key, seq],
    )? {
        out = Some(Entry::read(&r)?);
    }
    Ok(out)
}

/// Write an entry's rows as `pending` rows (it was taken from the table).
fn write_pending(w: &mut RowWriter<'_>, key: i64, e: &Entry) -> Result<(), StoreError> {
    for (line, id) in e.lines.iter().zip(&e.ids) {
        w.write(NewRow {
            rk: (key << 32) | line,
            id: Some(*id),
            raw_id: None,
            status: RecipientStatus::Pending.code(),
            call_seq: Some(e.seq),
            variant: e.variant,
            error_message: None,
            message_id: None,
            detail: None,
            at: None,
            variant_name: None,
        })?;
    }
    Ok(())
}

/// Turn plan call `seq`'s deferred rows (if any) into `pending` rows. Returns how many.
pub(super) fn materialize_call(conn: &Conn, key: i64, seq: i64) -> Result<u64, StoreError> {
    let Some(e) = take(conn, key, seq)? else {
        return Ok(0);
    };
    let mut w = RowWriter::new(conn)?;
    write_pending(&mut w, key, &e)?;
    w.finish()?;
    Ok(e.lines.len() as u64)
}

/// Entries read at a time by [`materialize`] (memory: a few hundred rows each).
const BATCH: i64 = 64;

/// Which entries [`materialize`] writes as rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
    /// The `pending` ones (`deferred`): before a writer that changes pending rows in bulk.
    Pending,
    /// Those and the delivered ones (`delivered`): before a writer that reads or changes any row
    /// by its key.
    All,
}

/// Turn run `key`'s entries (see [`Which`]) into rows. Returns how many.
pub(super) fn materialize(conn: &Conn, key: i64, which: Which) -> Result<u64, StoreError> {
    let (pending, sent, _) = extent(conn, key)?;
    let mut n = 0;
    if pending > 0 {
        let mut w = RowWriter::new(conn)?;
        in_batches(
            conn,
            concat!(
                "SELECT ",
                entry_columns!(),
                " FROM deferred WHERE run_key = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            key,
            |r| {
                let e = Entry::read(r)?;
                write_pending(&mut w, key, &e)?;
                n += e.lines.len() as u64;
                Ok(e.seq)
            },
        )?;
        w.finish()?;
        conn.execute("DELETE FROM deferred WHERE run_key = ?1", params![key])?;
    }
    if sent > 0 && which == Which::All {
        in_batches(
            conn,
            concat!(
                "SELECT ",
                delivered_columns!(),
                " FROM delivered WHERE run_key = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            key,
            |r| {
                let d = Delivered::read(r)?;
                insert_answered(conn, &d.answered(key))?;
                n += d.lines.len() as u64;
                Ok(d.seq)
            },
        )?;
        conn.execute("DELETE FROM delivered WHERE run_key = ?1", params![key])?;
    }
    Ok(n)
}

/// Every entry `sql` selects for run `key` (?1 the run's key, ?2 the last call read, ?3 how many a
/// batch), [`BATCH`] at a time in call order: `f` handles one and returns its call.
fn in_batches(
    conn: &Conn,
    sql: &str,
    key: i64,
    mut f: impl FnMut(&crate::store::Row) -> Result<i64, StoreError>,
) -> Result<(), StoreError> {
    let mut after = -1i64;
    loop {
        let batch = conn.query(sql, params![key, after, BATCH])?;
        if batch.is_empty() {
            return Ok(());
        }
        for r in &batch {
            after = f(r)?;
        }
    }
}

/// Whether run `key` has entries of either kind.
pub(super) fn any(conn: &Conn, key: i64) -> Result<bool, StoreError> {
    Ok(conn
        .query_opt(
            "SELECT CASE WHEN EXISTS(SELECT 1 FROM deferred WHERE run_key = ?1)
                      OR EXISTS(SELECT 1 FROM delivered WHERE run_key = ?1) THEN 1 ELSE 0 END",
            params![key],
            |r| r.get::<i64>(0),
        )?
        .is_some_and(|v| v == 1))
}

/// How many deferred (`pending`) and delivered (`sent`) rows run `key` has, and the highest
/// audience line among them.
pub(super) fn extent(conn: &Conn, key: i64) -> Result<(u64, u64, Option<i64>), StoreError> {
    let (p, s, hi): (Option<i64>, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT CAST(SUM(n) AS BIGINT) FROM deferred WHERE run_key = ?1),
                (SELECT CAST(SUM(n) AS BIGINT) FROM delivered WHERE run_key = ?1),
                (SELECT MAX(m) FROM (SELECT MAX(hi) AS m FROM deferred WHERE run_key = ?1
                                     UNION ALL
                                     SELECT MAX(hi) AS m FROM delivered WHERE run_key = ?1) AS x)",
        params![key],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
    Ok((n(p), n(s), hi))
}

/// Lines an entry spans (`hi - lo`) beyond which it is *wide*: the partial indexes
/// `deferred_wide` and `delivered_wide` (schema 12, store 8; the same number in their
/// predicates) hold only wide entries, so that [`in_window`] finds an entry overlapping its
/// window either by its start (at most this far before the window) or among the wide ones
/// (few: a call is wide only when its receivers are spread thinly through the audience, a small
/// group among others).
pub(super) const WIDE: i64 = 65_536;

/// Delete run `key`'s entries (with the run). Returns how many rows they held.
pub(super) fn delete_run(conn: &Conn, key: i64) -> Result<u64, StoreError> {
    let (p, s, _) = extent(conn, key)?;
    conn.execute("DELETE FROM deferred WHERE run_key = ?1", params![key])?;
    conn.execute("DELETE FROM delivered WHERE run_key = ?1", params![key])?;
    Ok(p + s)
}

/// A row of an entry as a reader sees it: `pending` (deferred) or `sent` (delivered, with its
/// message id, its call's attempts and the index of its call's answer time in
/// [`Window::times`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DeferredRow {
    pub line: i64,
    pub id: i64,
    pub call_seq: i64,
    pub variant: Option<i64>,
    pub sent: Option<SentRow>,
}

/// What a delivered row has besides a deferred one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SentRow {
    pub message_id: i64,
    pub attempts: i64,
    /// Index into [`Window::times`] (None: the call has no answer time; the run's start).
    pub time: Option<usize>,
}

/// The entries' rows of a window of audience lines, in audience order.
#[derive(Debug, Default)]
pub(super) struct Window {
    pub rows: std::collections::VecDeque<DeferredRow>,
    /// The answer times of the delivered calls in the window.
    pub times: Vec<String>,
}

/// The entries' rows of run `key` (run id `run_id`) with an audience line in `first..=last`.
/// An entry overlapping the window starts at most [`WIDE`] lines before it (read by the index on
/// `lo`) or is wide (read by the partial index of wide entries), so a window never reads every
/// entry before it.
pub(super) fn in_window(
    conn: &Conn,
    key: i64,
    run_id: &str,
    first: i64,
    last: i64,
) -> Result<Window, StoreError> {
    let from = first.saturating_sub(WIDE);
    let mut out = Vec::new();
    for r in conn.query(
        concat!(
            "SELECT ",
            entry_columns!(),
            " FROM deferred WHERE run_key = ?1 AND lo BETWEEN ?4 AND ?3 AND hi >= ?2
             UNION ALL SELECT ",
            entry_columns!(),
            " FROM deferred WHERE run_key = ?1 AND hi - lo > 65536 AND lo < ?4 AND hi >= ?2"
        ),
        params![key, first, last, from],
    )? {
        let e = Entry::read(&r)?;
        for (line, id) in e.lines.iter().zip(&e.ids) {
            if (first..=last).contains(line) {
                out.push(DeferredRow {
                    line: *line,
                    id: *id,
                    call_seq: e.seq,
                    variant: e.variant,
                    sent: None,
                });
            }
        }
    }
    let mut times = Vec::new();
    for r in conn.query(
        "SELECT d.seq, d.variant, d.attempts, d.lines, d.ids, d.mids, c.updated_at
         FROM (SELECT seq, variant, attempts, lines, ids, mids FROM delivered
               WHERE run_key = ?1 AND lo BETWEEN ?5 AND ?3 AND hi >= ?2
               UNION ALL
               SELECT seq, variant, attempts, lines, ids, mids FROM delivered
               WHERE run_key = ?1 AND hi - lo > 65536 AND lo < ?5 AND hi >= ?2) AS d
         LEFT JOIN calls c
              ON c.run_id = ?4 AND c.seq = d.seq AND c.state IN ('done', 'unknown')",
        params![key, first, last, run_id, from],
    )? {
        let d = Delivered::read(&r)?;
        let time = r.get::<Option<String>>(6)?.map(|t| {
            times.push(t);
            times.len() - 1
        });
        for ((line, id), mid) in d.lines.iter().zip(&d.ids).zip(&d.mids) {
            if (first..=last).contains(line) {
                out.push(DeferredRow {
                    line: *line,
                    id: *id,
                    call_seq: d.seq,
                    variant: d.variant,
                    sent: Some(SentRow {
                        message_id: *mid,
                        attempts: d.attempts,
                        time,
                    }),
                });
            }
        }
    }
    out.sort_unstable_by_key(|r| r.line);
    Ok(Window {
        rows: out.into(),
        times,
    })
}

/// One plan call's delivered rows (`delivered`): receivers the call's answer delivered with a
/// message id and nothing else of their own, kept per call rather than as rows. Status `sent`,
/// the call's attempts and variant, the time its call was answered.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    pub seq: i64,
    pub variant: Option<i64>,
    pub attempts: i64,
    pub lines: Vec<i64>,
    pub ids: Vec<i64>,
    pub mids: Vec<i64>,
}

impl Delivered {
    fn read(r: &crate::store::Row) -> Result<Delivered, StoreError> {
        let list = |i: usize| -> Result<Vec<i64>, StoreError> {
            decode_list(&r.get::<Vec<u8>>(i)?).map_err(corrupt)
        };
        let (lines, ids, mids) = (list(3)?, list(4)?, list(5)?);
        if lines.len() != ids.len() || lines.len() != mids.len() {
            return Err(corrupt(JournalError::Corrupt(format!(
                "delivered rows of call {}: {} lines, {} ids, {} message ids",
                r.get::<i64>(0)?,
                lines.len(),
                ids.len(),
                mids.len()
            ))));
        }
        Ok(Delivered {
            seq: r.get(0)?,
            variant: r.get(1)?,
            attempts: r.get(2)?,
            lines,
            ids,
            mids,
        })
    }

    /// Its rows as [`insert_answered`] writes them.
    fn answered(&self, key: i64) -> Vec<Answered<'static>> {
        self.lines
            .iter()
            .zip(&self.ids)
            .zip(&self.mids)
            .map(|((line, id), mid)| Answered {
                rk: (key << 32) | line,
                id: *id,
                status: RecipientStatus::Sent.code(),
                message_id: Some(*mid),
                error_code: None,
                error_message: None,
                detail: None,
                call_seq: self.seq,
                variant: self.variant,
                attempts: self.attempts,
                refusals: 0,
            })
            .collect()
    }

    /// Write it (`lines` ascending, as the caller sorted them), and `counted` if any
    /// ([`super::counts::MoveCounts`]: the run's counters for the call's one move): on
    /// PostgreSQL in the same statement, one round trip (a delivered call's outcome writes
    /// nothing else); on SQLite the two statements.
    pub fn insert(
        &self,
        conn: &Conn,
        key: i64,
        counted: Option<&super::counts::MoveCounts<'_>>,
    ) -> Result<(), StoreError> {
        let (Some(lo), Some(hi)) = (self.lines.first(), self.lines.last()) else {
            return counted.map_or(Ok(()), |c| c.write(conn));
        };
        let (lines, ids, mids) = (
            encode_list(&self.lines),
            encode_list(&self.ids),
            encode_list(&self.mids),
        );
        let mut p = vec![
            Value::Int(key),
            Value::Int(self.seq),
            Value::Int(*lo),
            Value::Int(*hi),
            Value::Int(self.lines.len() as i64),
            self.variant.map_or(Value::Null, Value::Int),
            Value::Int(self.attempts),
            Value::Bytes(&lines),
            Value::Bytes(&ids),
            Value::Bytes(&mids),
        ];
        match counted {
            Some(c) if conn.backend() == Backend::Postgres => {
                p.extend(c.params());
                conn.execute(&INSERT_DELIVERED_COUNTED, &p)?;
            }
            _ => {
                conn.execute(INSERT_DELIVERED, &p)?;
                if let Some(c) = counted {
                    c.write(conn)?;
                }
            }
        }
        Ok(())
    }
}

/// A call's delivered rows: ?1 the run's key, ?2 the call, ?3/?4 its lowest and highest line,
/// ?5 how many, ?6 variant, ?7 attempts, ?8 lines, ?9 ids, ?10 message ids (packed).
const INSERT_DELIVERED: &str =
    "INSERT INTO delivered(run_key, seq, lo, hi, n, variant, attempts, lines, ids, mids)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// PostgreSQL: [`INSERT_DELIVERED`], then the counters' statement of
/// [`super::counts::MoveCounts`] with its parameters from ?11 on.
static INSERT_DELIVERED_COUNTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH d AS ({INSERT_DELIVERED}) {}",
        super::counts::MoveCounts::sql_from(11)
    )
});

/// Plan call `seq`'s delivered rows, left in place (a reader, or a mark's look-up).
pub(super) fn peek_delivered(
    conn: &Conn,
    key: i64,
    seq: i64,
) -> Result<Option<Delivered>, StoreError> {
    let mut out = None;
    for r in conn.query(
        concat!(
            "SELECT ",
            delivered_columns!(),
            " FROM delivered WHERE run_key = ?1 AND seq = ?2"
        ),
        params![key, seq],
    )? {
        out = Some(Delivered::read(&r)?);
    }
    Ok(out)
}

/// A deferred row's outcome, inserted as its row by [`insert_answered`].
pub(super) struct Answered<'a> {
    pub rk: i64,
    pub id: i64,
    pub status: i64,
    pub message_id: Option<i64>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub call_seq: i64,
    pub variant: Option<i64>,
    pub attempts: i64,
    pub refusals: i64,
}

/// The columns [`insert_answered`] writes, in [`Answered`]'s order.
macro_rules! answered_columns {
    () => {
        "rk, id, status, message_id, error_code, error_message, detail, call_seq, variant, attempts, refusals"
    };
}

/// [`SQLITE_ANSWERED`] rows in one SQLite insert (built once: formatting it per call measured
/// about 3 % of a run's instructions).
fn sqlite_answered_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let mut sql = String::from(concat!(
            "INSERT INTO recipients(",
            answered_columns!(),
            ") VALUES "
        ));
        super::rows::push_placeholders(&mut sql, SQLITE_ANSWERED, 11);
        sql
    })
}

/// Rows one SQLite statement inserts ([`insert_answered`]; 11 parameters each).
const SQLITE_ANSWERED: usize = 50;

/// Insert the rows of a call's answered deferred receivers. SQLite: [`SQLITE_ANSWERED`] rows a
/// prepared statement, the rest one by one; PostgreSQL: one statement over arrays.
pub(super) fn insert_answered(conn: &Conn, rows: &[Answered<'_>]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    if conn.backend() == Backend::Postgres {
        let ints = |f: &dyn Fn(&Answered<'_>) -> Option<i64>| -> Vec<Option<i64>> {
            rows.iter().map(f).collect()
        };
        // A delivered call (nearly every one): no text, no refusal, one call, variant and
        // attempts for all: four arrays and three constants instead of eleven arrays.
        let first = &rows[0];
        let plain = rows.iter().all(|r| {
            r.error_code.is_none()
                && r.error_message.is_none()
                && r.detail.is_none()
                && r.refusals == 0
                && (r.call_seq, r.variant, r.attempts)
                    == (first.call_seq, first.variant, first.attempts)
        });
        if plain {
            let (rk, id, status, mid) = (
                ints(&|r| Some(r.rk)),
                ints(&|r| Some(r.id)),
                ints(&|r| Some(r.status)),
                ints(&|r| r.message_id),
            );
            conn.execute(
                "INSERT INTO recipients(rk, id, status, message_id, call_seq, variant, attempts)
                 SELECT u.rk, u.id, u.status, u.mid, CAST(?5 AS BIGINT), CAST(?6 AS BIGINT),
                        CAST(?7 AS BIGINT)
                 FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS BIGINT[]), CAST(?3 AS BIGINT[]),
                             CAST(?4 AS BIGINT[])) AS u(rk, id, status, mid)",
                &[
                    Value::Ints(&rk),
                    Value::Ints(&id),
                    Value::Ints(&status),
                    Value::Ints(&mid),
                    Value::Int(first.call_seq),
                    first.variant.map_or(Value::Null, Value::Int),
                    Value::Int(first.attempts),
                ],
            )?;
            return Ok(());
        }
        let (rk, id, status, mid, seq, variant, attempts, refusals) = (
            ints(&|r| Some(r.rk)),
            ints(&|r| Some(r.id)),
            ints(&|r| Some(r.status)),
            ints(&|r| r.message_id),
            ints(&|r| Some(r.call_seq)),
            ints(&|r| r.variant),
            ints(&|r| Some(r.attempts)),
            ints(&|r| Some(r.refusals)),
        );
        let code: Vec<Option<&str>> = rows.iter().map(|r| r.error_code).collect();
        let msg: Vec<Option<&str>> = rows.iter().map(|r| r.error_message).collect();
        let detail: Vec<Option<&str>> = rows.iter().map(|r| r.detail).collect();
        conn.execute(
            concat!(
                "INSERT INTO recipients(",
                answered_columns!(),
                ") SELECT * FROM unnest(CAST(?1 AS BIGINT[]), CAST(?2 AS BIGINT[]),
                     CAST(?3 AS BIGINT[]), CAST(?4 AS BIGINT[]), CAST(?5 AS TEXT[]),
                     CAST(?6 AS TEXT[]), CAST(?7 AS TEXT[]), CAST(?8 AS BIGINT[]),
                     CAST(?9 AS BIGINT[]), CAST(?10 AS BIGINT[]), CAST(?11 AS BIGINT[]))"
            ),
            &[
                Value::Ints(&rk),
                Value::Ints(&id),
                Value::Ints(&status),
                Value::Ints(&mid),
                Value::Texts(&code),
                Value::Texts(&msg),
                Value::Texts(&detail),
                Value::Ints(&seq),
                Value::Ints(&variant),
                Value::Ints(&attempts),
                Value::Ints(&refusals),
            ],
        )?;
        return Ok(());
    }
    fn values<'v>(r: &'v Answered<'v>) -> [Value<'v>; 11] {
        let opt = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
        let txt = |v: Option<&'v str>| v.map_or(Value::Null, Value::Text);
        [
            Value::Int(r.rk),
            Value::Int(r.id),
            Value::Int(r.status),
            opt(r.message_id),
            txt(r.error_code),
            txt(r.error_message),
            txt(r.detail),
            Value::Int(r.call_seq),
            opt(r.variant),
            Value::Int(r.attempts),
            Value::Int(r.refusals),
        ]
    }
    let mut chunks = rows.chunks_exact(SQLITE_ANSWERED);
    if rows.len() >= SQLITE_ANSWERED {
        let mut st = conn.prepare(sqlite_answered_sql())?;
        for chunk in chunks.by_ref() {
            let params: Vec<Value<'_>> = chunk.iter().flat_map(values).collect();
            st.execute(&params)?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut one = conn.prepare(concat!(
            "INSERT INTO recipients(",
            answered_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))?;
        for r in rest {
            one.execute(&values(r))?;
        }
    }
    Ok(())
}
