//! The compact recipient rows (schema 10 on): how a run's rows are seeded (with their plan calls'
//! lines and the run's variant dictionary), how a call's receivers (ids) are found among them
//! without an index on `id`, and what a reader needs to give a row back whole (variant names,
//! the times of answered calls).
//!
//! What is stored once rather than per row: a plan call's audience lines (`call_plan`, packed,
//! about a byte a recipient), a run's Content variants (`run_variants`: a row holds the variant's
//! small index), a recipient's time (NULL: the time its call was answered, or the run's start; an
//! integer of nanoseconds only where it differs: cancelled, expired, suppressed on resume,
//! carried over). A call's receivers are found through its plan call's lines (look-ups by key, `rk`),
//! then through the small partial index of refused receivers (`recipients_refused`, the only rows
//! resent in another call), and only then by a scan of the run (receivers the run does not plan
//! in that call: never in a real run; it keeps the old semantics for any caller). A run this
//! process seeds also leaves each plan call's [`Fingerprint`] in memory, so the call's first
//! mark can take its rows' keys from its lines without reading the rows (`calls::Marked`).
//!
//! Invariants: every seeded row with a `call_seq` is in that call's `call_plan` lines; a row's
//! `variant` index is in `run_variants` for its run. Must not: change a row's status (the callers
//! do, guarded by the current status and with the counters).

use std::collections::{BTreeMap, HashMap};

use crate::store::{params, Backend, Conn, StoreError, Value};

use super::pack::{decode_list, Packer};
use super::schema::{rk_range, MAX_LINE};
use super::{JournalError, RecipientStatus};

/// A call's receivers' rows by id. Hashed with the plan's multiply hasher rather than SipHash:
/// the keys are ids of the operator's own audience, and these maps are built for every call
/// (SipHash measured about 1.5 % of a run's instructions here).
pub(super) type FoundMap = HashMap<u64, Found, crate::plan::FastState>;

/// A recipient row as a call's look-up finds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Found {
    pub rk: i64,
    pub status: i64,
    pub refusals: i64,
}

fn corrupt(e: JournalError) -> StoreError {
    StoreError::Value(Box::new(e))
}

/// The rows at `rks` (a run's keys), by id. Keys in one ascending contiguous range are read with
/// one range scan, others one by one (look-ups by key).
pub(super) fn rows_at(conn: &Conn, rks: &[i64]) -> Result<FoundMap, StoreError> {
    let mut out = FoundMap::with_capacity_and_hasher(rks.len(), Default::default());
    let contiguous = rks.len() > 1 && rks.windows(2).all(|w| w[1] == w[0] + 1);
    if contiguous {
        conn.for_each(
            "SELECT rk, id, status, refusals FROM recipients WHERE rk BETWEEN ?1 AND ?2",
            params![rks[0], rks[rks.len() - 1]],
            |r| {
                if let Some(id) = r.get::<Option<i64>>(1)? {
                    out.entry(id as u64).or_insert(Found {
                        rk: r.get(0)?,
                        status: r.get(2)?,
                        refusals: r.get(3)?,
                    });
                }
                Ok::<_, StoreError>(())
            },
        )??;
        return Ok(out);
    }
    let mut st = conn.prepare("SELECT id, status, refusals FROM recipients WHERE rk = ?1")?;
    for &rk in rks {
        let row: Option<(Option<i64>, i64, i64)> =
            st.query_opt(params![rk], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if let Some((Some(id), status, refusals)) = row {
            out.entry(id as u64).or_insert(Found {
                rk,
                status,
                refusals,
            });
        }
    }
    Ok(out)
}

/// The keys of the audience lines a plan call holds (empty: no such plan call).
pub(super) fn plan_rks(conn: &Conn, key: i64, seq: u64) -> Result<Vec<i64>, StoreError> {
    let blob: Option<Vec<u8>> = conn.query_opt(
        "SELECT lines FROM call_plan WHERE run_key = ?1 AND seq = ?2",
        params![key, seq as i64],
        |r| r.get(0),
    )?;
    let Some(blob) = blob else {
        return Ok(Vec::new());
    };
    Ok(decode_list(&blob)
        .map_err(corrupt)?
        .into_iter()
        .map(|l| (key << 32) | (l & MAX_LINE as i64))
        .collect())
}

/// The rows of run `key` that `ids` name as receivers of call `seq`: its plan call's rows, then
/// refused receivers (resent in another call), then, with `scan`, a scan of the run for the rest
/// (preferring a pending or unknown row of an id). Ids not found are absent.
///
/// Without `scan` (what is still to send of a plan call), an id that is neither in the call's
/// plan nor refused has nothing to send in this run: a `--retry-failed` run holds only some of
/// the plan's receivers, and must not scan itself once per plan call for the others.
pub(super) fn resolve(
    conn: &Conn,
    key: i64,
    seq: u64,
    ids: &[u64],
    scan: bool,
) -> Result<FoundMap, StoreError> {
    resolve_in(conn, key, seq, ids, scan, true)
}

/// [`resolve`]; `with_deferred` false: the journal has no deferred rows (nor their table: the
/// migration to the compact layout, before migration 12).
pub(super) fn resolve_in(
    conn: &Conn,
    key: i64,
    seq: u64,
    ids: &[u64],
    scan: bool,
    with_deferred: bool,
) -> Result<FoundMap, StoreError> {
    // The call's deferred rows read as `pending` rows (they have none yet: `deferred`).
    // The call's delivered rows read as `sent` rows (`deferred`).
    let (entry, sent) = match with_deferred {
        true => (
            super::deferred::peek(conn, key, seq as i64)?,
            super::deferred::peek_delivered(conn, key, seq as i64)?,
        ),
        false => (None, None),
    };
    let mut rks = plan_rks(conn, key, seq)?;
    let mut packed: Vec<(i64, i64, RecipientStatus)> = Vec::new();
    if let Some(e) = entry {
        packed.extend(
            e.lines
                .iter()
                .zip(&e.ids)
                .map(|(l, id)| (*l, *id, RecipientStatus::Pending)),
        );
    }
    if let Some(d) = sent {
        packed.extend(
            d.lines
                .iter()
                .zip(&d.ids)
                .map(|(l, id)| (*l, *id, RecipientStatus::Sent)),
        );
    }
    if !packed.is_empty() {
        let lines: std::collections::HashSet<i64> = packed.iter().map(|p| p.0).collect();
        rks.retain(|rk| !lines.contains(&(rk & MAX_LINE as i64)));
    }
    let mut found = rows_at(conn, &rks)?;
    for (line, id, status) in packed {
        found.entry(id as u64).or_insert(Found {
            rk: (key << 32) | line,
            status: status.code(),
            refusals: 0,
        });
    }
    let missing: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains_key(id))
        .collect();
    if missing.is_empty() {
        return Ok(found);
    }
    let (lo, hi) = rk_range(key);
    let mut refused = conn.prepare(
        "SELECT rk, status, refusals FROM recipients
         WHERE id = ?1 AND refusals > 0 AND rk BETWEEN ?2 AND ?3 ORDER BY rk LIMIT 1",
    )?;
    let mut rest = Vec::new();
    for id in missing {
        let row: Option<Found> = refused.query_opt(params![id as i64, lo, hi], |r| {
            Ok(Found {
                rk: r.get(0)?,
                status: r.get(1)?,
                refusals: r.get(2)?,
            })
        })?;
        match row {
            Some(f) => {
                found.insert(id, f);
            }
            None => rest.push(id),
        }
    }
    drop(refused);
    if rest.is_empty() || !scan {
        return Ok(found);
    }
    // Not planned in this call and never refused: only callers outside a real run's flow get
    // here (one scan of the run's rows for all of them, every deferred row written first; the
    // callers with `scan` write).
    if with_deferred {
        super::deferred::materialize(conn, key, super::deferred::Which::All)?;
    }
    let want: std::collections::HashSet<u64> = rest.into_iter().collect();
    let (pending, unknown) = (
        RecipientStatus::Pending.code(),
        RecipientStatus::Unknown.code(),
    );
    conn.for_each(
        "SELECT rk, id, status, refusals FROM recipients WHERE rk BETWEEN ?1 AND ?2 AND id IS NOT NULL",
        params![lo, hi],
        |r| {
            let id = r.get::<i64>(1)? as u64;
            if !want.contains(&id) {
                return Ok(());
            }
            let f = Found {
                rk: r.get(0)?,
                status: r.get(2)?,
                refusals: r.get(3)?,
            };
            let open = |s: i64| s == pending || s == unknown;
            match found.get(&id) {
                Some(old) if open(old.status) || !open(f.status) => {}
                _ => {
                    found.insert(id, f);
                }
            }
            Ok::<_, StoreError>(())
        },
    )??;
    Ok(found)
}

/// The index of `variant` in run `key`'s dictionary, added if new.
pub(super) fn variant_idx(conn: &Conn, key: i64, variant: &str) -> Result<i64, StoreError> {
    let idx: Option<i64> = conn.query_opt(
        "SELECT idx FROM run_variants WHERE run_key = ?1 AND variant = ?2",
        params![key, variant],
        |r| r.get(0),
    )?;
    if let Some(i) = idx {
        return Ok(i);
    }
    conn.execute(
        "INSERT INTO run_variants(run_key, idx, variant)
         SELECT CAST(?1 AS BIGINT), COALESCE(MAX(idx) + 1, 0), CAST(?2 AS TEXT)
         FROM run_variants WHERE run_key = ?1",
        params![key, variant],
    )?;
    variant_idx(conn, key, variant)
}

/// One recipient row as seeding writes it ([`RowWriter`]).
pub(super) struct NewRow<'a> {
    pub rk: i64,
    pub id: Option<i64>,
    pub raw_id: Option<&'a str>,
    pub status: i64,
    pub call_seq: Option<i64>,
    pub variant: Option<i64>,
    pub error_message: Option<&'a str>,
    pub message_id: Option<i64>,
    pub detail: Option<&'a str>,
    pub at: Option<i64>,
    pub variant_name: Option<&'a str>,
}

const INSERT_ROW: &str = "INSERT INTO recipients(rk, id, raw_id, status, call_seq, variant,
                              error_message, message_id, detail, at, variant_name)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Rows a PostgreSQL bulk insert sends in one statement.
pub(super) const PG_BATCH: usize = 5000;

/// Writes a run's new recipient rows inside the caller's transaction. SQLite: rows are buffered
/// and written [`SQLITE_BATCH`] to a prepared multi-row insert (in-process; measured about a
/// third cheaper a row than one row per statement), the rest one row per statement. PostgreSQL: a
/// round trip per row would cost 30–50 µs (minutes for ten million), so rows are buffered and
/// written [`PG_BATCH`] at a time with one binary `COPY` ([`Conn::copy_in`]; the
/// PostgreSQL-only branch, behind [`Conn::backend`]; measured against an
/// `INSERT … SELECT FROM unnest(arrays)` of the same rows: see BENCHMARKS.md).
/// [`RowWriter::finish`] writes the rest.
pub(super) struct RowWriter<'c> {
    conn: &'c Conn,
    /// SQLite: the multi-row insert, prepared once, and the rows waiting for it.
    sqlite: Option<(crate::store::Stmt<'c>, Vec<SqliteRow>)>,
    pg: Option<PgRows>,
}

/// Rows a SQLite multi-row insert writes in one statement (11 parameters each, far below
/// SQLite's limit of 32,766).
const SQLITE_BATCH: usize = 64;

/// A row waiting for the SQLite multi-row insert ([`NewRow`], owned).
struct SqliteRow {
    ints: [Option<i64>; 7],
    texts: [Option<String>; 4],
}

impl SqliteRow {
    fn new(r: &NewRow<'_>) -> Self {
        let own = |s: Option<&str>| s.map(str::to_string);
        SqliteRow {
            ints: [
                Some(r.rk),
                r.id,
                Some(r.status),
                r.call_seq,
                r.variant,
                r.message_id,
                r.at,
            ],
            texts: [
                own(r.raw_id),
                own(r.error_message),
                own(r.detail),
                own(r.variant_name),
            ],
        }
    }

    /// Its parameters in [`INSERT_ROW`]'s order.
    fn params(&self) -> [Value<'_>; 11] {
        let [rk, id, status, call_seq, variant, message_id, at] = self.ints;
        let [raw_id, error_message, detail, variant_name] = &self.texts;
        fn t(s: &Option<String>) -> Value<'_> {
            s.as_deref().map_or(Value::Null, Value::Text)
        }
        let i = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
        [
            i(rk),
            i(id),
            t(raw_id),
            i(status),
            i(call_seq),
            i(variant),
            t(error_message),
            i(message_id),
            t(detail),
            i(at),
            t(variant_name),
        ]
    }
}

/// [`INSERT_ROW`] for `n` rows.
fn insert_rows(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO recipients(rk, id, raw_id, status, call_seq, variant,
                                error_message, message_id, detail, at, variant_name) VALUES ",
    );
    push_placeholders(&mut sql, n, 11);
    sql
}

/// `(?1,…,?cols),(…)…` for `rows` rows of a multi-row `VALUES`, appended to `sql`.
pub(super) fn push_placeholders(sql: &mut String, rows: usize, cols: usize) {
    use std::fmt::Write as _;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push(',');
            }
            let _ = write!(sql, "?{}", r * cols + c + 1);
        }
        sql.push(')');
    }
}

#[derive(Default)]
struct PgRows {
    rk: Vec<Option<i64>>,
    id: Vec<Option<i64>>,
    raw_id: Vec<Option<String>>,
    status: Vec<Option<i64>>,
    call_seq: Vec<Option<i64>>,
    variant: Vec<Option<i64>>,
    error_message: Vec<Option<String>>,
    message_id: Vec<Option<i64>>,
    detail: Vec<Option<String>>,
    at: Vec<Option<i64>>,
    variant_name: Vec<Option<String>>,
}

impl<'c> RowWriter<'c> {
    pub fn new(conn: &'c Conn) -> Result<Self, StoreError> {
        let pg = conn.backend() == Backend::Postgres;
        Ok(RowWriter {
            conn,
            sqlite: if pg {
                None
            } else {
                Some((
                    conn.prepare(&insert_rows(SQLITE_BATCH))?,
                    Vec::with_capacity(SQLITE_BATCH),
                ))
            },
            pg: pg.then(PgRows::default),
        })
    }

    pub fn write(&mut self, r: NewRow<'_>) -> Result<(), StoreError> {
        if let Some((st, rows)) = self.sqlite.as_mut() {
            rows.push(SqliteRow::new(&r));
            if rows.len() == SQLITE_BATCH {
                let params: Vec<Value<'_>> = rows.iter().flat_map(SqliteRow::params).collect();
                st.execute(&params)?;
                rows.clear();
            }
            return Ok(());
        }
        let Some(b) = self.pg.as_mut() else {
            return Ok(());
        };
        let own = |s: Option<&str>| s.map(str::to_string);
        b.rk.push(Some(r.rk));
        b.id.push(r.id);
        b.raw_id.push(own(r.raw_id));
        b.status.push(Some(r.status));
        b.call_seq.push(r.call_seq);
        b.variant.push(r.variant);
        b.error_message.push(own(r.error_message));
        b.message_id.push(r.message_id);
        b.detail.push(own(r.detail));
        b.at.push(r.at);
        b.variant_name.push(own(r.variant_name));
        if b.rk.len() >= PG_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        let Some(b) = self.pg.as_ref() else {
            return Ok(());
        };
        if b.rk.is_empty() {
            return Ok(());
        }
        use crate::store::CopyType::{Int, Text};
        self.conn.copy_in(
            "COPY recipients(rk, id, raw_id, status, call_seq, variant,
                             error_message, message_id, detail, at, variant_name)
             FROM STDIN (FORMAT binary)",
            &[Int, Int, Text, Int, Int, Int, Text, Int, Text, Int, Text],
            |w| {
                for i in 0..b.rk.len() {
                    w.row(&[
                        b.rk[i].into(),
                        b.id[i].into(),
                        b.raw_id[i].as_deref().into(),
                        b.status[i].into(),
                        b.call_seq[i].into(),
                        b.variant[i].into(),
                        b.error_message[i].as_deref().into(),
                        b.message_id[i].into(),
                        b.detail[i].as_deref().into(),
                        b.at[i].into(),
                        b.variant_name[i].as_deref().into(),
                    ])?;
                }
                Ok(())
            },
        )?;
        self.pg = Some(PgRows::default());
        Ok(())
    }

    /// Write the rows still buffered.
    pub fn finish(mut self) -> Result<(), StoreError> {
        if let Some((_, rows)) = self.sqlite.take() {
            let mut one = self.conn.prepare(INSERT_ROW)?;
            for r in &rows {
                one.execute(&r.params())?;
            }
        }
        self.flush()
    }
}

/// What seeding a run collects besides its rows: the variant dictionary and each plan call's
/// lines, written by [`Seeder::finish`]; and, for a new run, each plan call's [`Fingerprint`]
/// ([`Seeder::fingerprints`]).
pub(super) struct Seeder {
    key: i64,
    variants: HashMap<String, i64>,
    plan: BTreeMap<u64, Packer>,
    prints: HashMap<u64, Print, crate::plan::FastState>,
}

/// The ids of a plan call's seeded rows, in the order of its lines (`call_plan`), as a count and
/// a hash: a mark whose receivers have the same fingerprint names those rows in that order, so
/// the call's lines say where each receiver's row is without reading the rows (see
/// `calls::Marked`). Kept in this process's memory only (a few bytes a call), never stored, so
/// the hash may be std's SipHash with its fixed keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    n: u64,
    hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `ids` in this order.
    pub fn of(ids: &[u64]) -> Fingerprint {
        let mut p = Print::default();
        for &id in ids {
            p.add(Some(id), true);
        }
        p.done().unwrap_or(Fingerprint { n: 0, hash: 0 })
    }
}

/// A [`Fingerprint`] being built; spoiled by a row without an id or not `pending` (such a call
/// gets none: its mark reads its rows).
#[derive(Default)]
struct Print {
    n: u64,
    h: std::hash::DefaultHasher,
    spoiled: bool,
}

impl Print {
    fn add(&mut self, id: Option<u64>, pending: bool) {
        use std::hash::Hasher;
        match id {
            Some(id) if pending => self.h.write_u64(id),
            _ => self.spoiled = true,
        }
        self.n += 1;
    }

    fn done(self) -> Option<Fingerprint> {
        use std::hash::Hasher;
        (!self.spoiled).then(|| Fingerprint {
            n: self.n,
            hash: self.h.finish(),
        })
    }
}

impl Seeder {
    pub fn new(key: i64) -> Self {
        Seeder {
            key,
            variants: HashMap::new(),
            plan: BTreeMap::new(),
            prints: HashMap::default(),
        }
    }

    /// Record the id and status of the row [`Seeder::row`] just recorded in plan call `call_seq`
    /// (for [`Seeder::fingerprints`]).
    pub fn fingerprint(&mut self, call_seq: Option<u64>, id: Option<u64>, pending: bool) {
        if let Some(seq) = call_seq {
            self.prints.entry(seq).or_default().add(id, pending);
        }
    }

    /// Each plan call's [`Fingerprint`] (the calls whose rows were all `pending` with an id), once
    /// every row went through [`Seeder::fingerprint`].
    pub fn fingerprints(&mut self) -> HashMap<u64, Fingerprint, crate::plan::FastState> {
        std::mem::take(&mut self.prints)
            .into_iter()
            .filter_map(|(seq, p)| p.done().map(|f| (seq, f)))
            .collect()
    }

    /// The index to store for `variant`; records `line` in plan call `call_seq`.
    pub fn row(&mut self, line: u64, call_seq: Option<u64>, variant: Option<&str>) -> Option<i64> {
        if let Some(seq) = call_seq {
            // A call's lines come one after another (the plan fills its calls in order): the
            // last call first, before a search of the map.
            match self.plan.last_entry() {
                Some(mut last) if *last.key() == seq => last.get_mut().push(line as i64),
                _ => self.plan.entry(seq).or_default().push(line as i64),
            }
        }
        let v = variant?;
        if let Some(&i) = self.variants.get(v) {
            return Some(i);
        }
        let i = self.variants.len() as i64;
        self.variants.insert(v.to_string(), i);
        Some(i)
    }

    /// Write the dictionary and the plan calls' lines.
    pub fn finish(self, conn: &Conn) -> Result<(), StoreError> {
        let mut ins =
            conn.prepare("INSERT INTO run_variants(run_key, idx, variant) VALUES (?1, ?2, ?3)")?;
        for (v, i) in &self.variants {
            ins.execute(params![self.key, *i, v])?;
        }
        if conn.backend() == Backend::Postgres {
            // Many calls a statement (a statement each was a round trip each).
            let plan: Vec<(&u64, &Packer)> = self.plan.iter().collect();
            for chunk in plan.chunks(PG_PLAN_BATCH) {
                let seqs: Vec<Option<i64>> = chunk.iter().map(|(s, _)| Some(**s as i64)).collect();
                let lines: Vec<Option<&[u8]>> =
                    chunk.iter().map(|(_, l)| Some(l.bytes())).collect();
                conn.execute(
                    "INSERT INTO call_plan(run_key, seq, lines)
                     SELECT ?1, u.seq, u.lines FROM unnest(?2::bigint[], ?3::bytea[]) AS u(seq, lines)
                     ON CONFLICT(run_key, seq) DO UPDATE SET lines = excluded.lines",
                    &[
                        Value::Int(self.key),
                        Value::Ints(&seqs),
                        Value::BytesArray(&lines),
                    ],
                )?;
            }
            return Ok(());
        }
        let mut ins = conn.prepare(
            "INSERT INTO call_plan(run_key, seq, lines) VALUES (?1, ?2, ?3)
             ON CONFLICT(run_key, seq) DO UPDATE SET lines = excluded.lines",
        )?;
        for (seq, lines) in &self.plan {
            let lines = lines.bytes();
            ins.execute(params![self.key, *seq as i64, lines])?;
        }
        Ok(())
    }
}

/// Plan calls a PostgreSQL statement writes at seeding.
const PG_PLAN_BATCH: usize = 1000;

/// What a reader of a run's rows needs besides them: the run's start, its variant dictionary, and
/// the time of the call a row was last answered by (looked up as the scan reaches it, one call
/// remembered: rows of a call are mostly consecutive, and memory stays flat however many calls a
/// run has — a personalized run has one per recipient).
pub(super) struct RunView {
    pub key: i64,
    run_id: String,
    created_at: String,
    pub variants: HashMap<i64, String, crate::plan::FastState>,
    last_call: std::cell::RefCell<Option<(i64, Option<String>)>>,
}

impl RunView {
    pub fn load(conn: &Conn, run_id: &str) -> Result<Option<RunView>, StoreError> {
        let run: Option<(i64, String)> = conn.query_opt(
            "SELECT key, created_at FROM runs WHERE id = ?1",
            params![run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let Some((key, created_at)) = run else {
            return Ok(None);
        };
        let variants: HashMap<i64, String, crate::plan::FastState> = conn
            .query_map(
                "SELECT idx, variant FROM run_variants WHERE run_key = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .into_iter()
            .collect();
        Ok(Some(RunView {
            key,
            run_id: run_id.to_string(),
            created_at,
            variants,
            last_call: std::cell::RefCell::new(None),
        }))
    }

    /// A row's time: its own (`at`), else when its call was answered (for a status a call
    /// gives), else the run's start.
    /// [`RunView::time`] with the answering call's time already read (`call_time`: the
    /// call's `updated_at` if it was answered), for a scan that cannot look it up as it goes.
    pub fn time_given<'a>(
        &'a self,
        status: RecipientStatus,
        call_time: Option<&'a str>,
        at: Option<i64>,
        buf: &'a mut String,
    ) -> Result<&'a str, StoreError> {
        if let Some(ns) = at {
            *buf = super::pack::ns_text(ns).map_err(corrupt)?;
            return Ok(buf.as_str());
        }
        match call_time {
            Some(t) if status.given_by_call() => Ok(t),
            _ => Ok(self.created_at.as_str()),
        }
    }

    pub fn time<'a>(
        &'a self,
        conn: &Conn,
        status: RecipientStatus,
        call_seq: Option<i64>,
        at: Option<i64>,
        buf: &'a mut String,
    ) -> Result<&'a str, StoreError> {
        if let Some(ns) = at {
            *buf = super::pack::ns_text(ns).map_err(corrupt)?;
            return Ok(buf.as_str());
        }
        if let (true, Some(c)) = (status.given_by_call(), call_seq) {
            let mut last = self.last_call.borrow_mut();
            if last.as_ref().map(|(s, _)| *s) != Some(c) {
                let t: Option<String> = conn.query_opt(
                    "SELECT updated_at FROM calls
                     WHERE run_id = ?1 AND seq = ?2 AND state IN ('done', 'unknown')",
                    params![&self.run_id, c],
                    |r| r.get(0),
                )?;
                *last = Some((c, t));
            }
            if let Some((_, Some(t))) = last.as_ref() {
                buf.clear();
                buf.push_str(t);
                return Ok(buf.as_str());
            }
        }
        Ok(self.created_at.as_str())
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::testutil::*;
    use crate::journal::*;

    /// The recipient columns the bulk paths write and update (a stand-in for the journal's
    /// schema, which PostgreSQL gets from the store's migrations).
    fn recipients_table(c: &crate::store::Conn) {
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS recipients(rk BIGINT PRIMARY KEY, id BIGINT, raw_id TEXT,
                 status BIGINT NOT NULL, call_seq BIGINT, variant BIGINT, error_message TEXT,
                 message_id BIGINT, detail TEXT, at BIGINT, variant_name TEXT,
                 attempts BIGINT NOT NULL DEFAULT 0, refusals BIGINT NOT NULL DEFAULT 0,
                 error_code TEXT)",
        )
        .expect("table");
    }

    /// `RowWriter` writes every row, whole, on either backend (PostgreSQL: in batches of
    /// `PG_BATCH`, the last one by `finish`).
    fn row_writer_writes_every_row(c: &crate::store::Conn) {
        use super::{NewRow, RowWriter, PG_BATCH};
        use crate::store::params;
        recipients_table(c);
        let n = PG_BATCH as i64 * 2 + 7;
        let tx = c.transaction().expect("begin");
        let mut w = RowWriter::new(&tx).expect("writer");
        for i in 0..n {
            let note = format!("note {i}");
            w.write(NewRow {
                rk: (1 << 32) | (i + 2),
                id: (i % 5 != 0).then_some(9_007_199_254_740_993 + i),
                raw_id: (i % 5 == 0).then_some("x"),
                status: i % 3,
                call_seq: Some(i / 500),
                variant: Some(0),
                error_message: (i % 2 == 0).then_some(note.as_str()),
                message_id: None,
                detail: None,
                at: (i == 1).then_some(42),
                variant_name: Some("v"),
            })
            .expect("write");
        }
        w.finish().expect("finish");
        tx.commit().expect("commit");
        let (count, ids, notes, ats): (i64, i64, i64, i64) = c
            .query_row(
                "SELECT COUNT(*), COUNT(id), COUNT(error_message), COUNT(at) FROM recipients",
                params![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("count");
        assert_eq!(
            (count, ids, notes, ats),
            (n, n - (n + 4) / 5, (n + 1) / 2, 1)
        );
        let last: (i64, Option<String>) = c
            .query_row(
                "SELECT id, error_message FROM recipients WHERE rk = ?1",
                params![(1i64 << 32) | (n + 1)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("last row");
        assert_eq!(last.0, 9_007_199_254_740_993 + n - 1);
    }

    #[test]
    fn row_writer_writes_every_row_on_sqlite() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = crate::store::Conn::sqlite(
            crate::db::open(&d.path().join("t.db"), "NORMAL").expect("open"),
        );
        row_writer_writes_every_row(&c);
    }

    /// PostgreSQL's bulk paths: the seeding batches, and a call's outcomes in one statement
    /// (`calls::PG_OUTCOMES`): only rows still in the status they move from change, a refusal is
    /// counted, attempts add up for a pending row, and each change is returned for the counters.
    #[test]
    fn bulk_seeding_and_outcomes_on_postgres() {
        let Some(db) = crate::testing::pg::test_db("journal_bulk") else {
            return;
        };
        let url = db.url().clone();
        std::thread::spawn(move || {
            use crate::store::{params, Value};
            let c = crate::store::Conn::postgres(&url).expect("connect");
            row_writer_writes_every_row(&c);
            let rk = |line: i64| (1i64 << 32) | line;
            // Rows at lines 2..=5 hold status 0, 1, 2, 0 (line - 2) % 3.
            c.execute(
                "UPDATE recipients SET attempts = 1 WHERE rk = ?1",
                params![rk(5)],
            )
            .expect("attempts");
            let rks = [Some(rk(2)), Some(rk(3)), Some(rk(5)), Some(rk(4))];
            let to = [Some(4), Some(0), Some(4), Some(3)];
            let mid = [Some(7), None, Some(8), None];
            let code = [None, Some("FailedReceiver"), None, None];
            let none: [Option<&str>; 4] = [None; 4];
            // Line 4 (status 2) claims to move from 0: not in that status, unchanged.
            let from = [Some(0), Some(1), Some(0), Some(0)];
            let changed = c
                .query_map(
                    crate::journal::calls::PG_OUTCOMES,
                    &[
                        Value::Int(0),
                        Value::Ints(&rks),
                        Value::Ints(&to),
                        Value::Ints(&mid),
                        Value::Texts(&code),
                        Value::Texts(&none),
                        Value::Texts(&none),
                        Value::Ints(&from),
                        Value::Int(9),
                        Value::Int(0),
                        Value::Int(2),
                    ],
                    |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
                )
                .expect("outcomes");
            let mut changed = changed;
            changed.sort_unstable();
            assert_eq!(changed, [(0, 4), (0, 4), (1, 0)]);
            let rows = c
                .query_map(
                    "SELECT rk, status, message_id, attempts, refusals, call_seq FROM recipients
                     WHERE rk BETWEEN ?1 AND ?2 ORDER BY rk",
                    params![rk(2), rk(5)],
                    |r| {
                        Ok((
                            r.get::<i64>(1)?,
                            r.get::<Option<i64>>(2)?,
                            r.get::<i64>(3)?,
                            r.get::<i64>(4)?,
                            r.get::<Option<i64>>(5)?,
                        ))
                    },
                )
                .expect("rows");
            assert_eq!(
                rows,
                [
                    (4, Some(7), 2, 0, Some(9)),
                    (0, None, 2, 1, Some(9)),
                    (2, None, 0, 0, Some(0)),
                    (4, Some(8), 3, 0, Some(9)),
                ]
            );
        })
        .join()
        .expect("thread");
    }

    /// The state a run leaves per recipient, in bytes (deterministic, unlike time): 100,000
    /// recipients with ids above 2^53, one shared Content in calls of 500, every one sent with a
    /// message id of its own (above 2^53 too, as the provider's are). The bound is the issue's
    /// target (≤ 50 bytes a recipient at 10M); the old layout needed about 130.
    #[test]
    fn a_sent_run_stores_at_most_50_bytes_a_recipient() {
        const N: u64 = 100_000;
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let seed: Vec<SeedRow> = (0..N)
            .map(|i| SeedRow {
                line: i + 2,
                id: Some(9_007_199_300_000_000 + i * 7),
                raw_id: Some((9_007_199_300_000_000 + i * 7).to_string()),
                status: RecipientStatus::Pending,
                call_seq: Some(i / 500),
                variant: Some("3f9a8c0d2b7e4f61".into()),
                variant_name: None,
                note: None,
            })
            .collect();
        let mut nr = new_run("h1");
        nr.total_calls = N / 500;
        let mut f = || -> SeedRows<'static, String> { Box::new(seed.clone().into_iter().map(Ok)) };
        let id = j
            .open_run(&nr, ResumeOptions::default(), &mut f, now())
            .expect("create")
            .run()
            .id
            .clone();
        let mut message = 9_007_199_254_740_993u64;
        for call in seed.chunks(500) {
            let seq = call[0].call_seq.expect("seq");
            let ids: Vec<u64> = call.iter().filter_map(|r| r.id).collect();
            let updates: Vec<RecipientUpdate> = ids
                .iter()
                .map(|&id| {
                    message += 1;
                    sent(id, message)
                })
                .collect();
            j.write_batch(&[Write::Mark(Mark {
                run_id: id.clone(),
                seq,
                variant: "3f9a8c0d2b7e4f61".into(),
                receivers: ids,
                client_msg_id: None,
                now: now(),
            })])
            .expect("mark");
            j.record_outcome(&id, seq, CallState::Done, &updates, None, now())
                .expect("outcome");
        }
        j.set_status(&id, RunStatus::Finished, None, now())
            .expect("finish");
        assert_eq!(j.count_status(&id, RecipientStatus::Sent).expect("n"), N);
        let last = j.recipients(&id).expect("rows").pop().expect("a row");
        assert_eq!(last.message_id, Some(message), "{last:?}");
        assert_eq!(last.variant.as_deref(), Some("3f9a8c0d2b7e4f61"));
        j.connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let bytes: u64 = ["imcast.db", "imcast.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(d.path().join(f)).ok())
            .map(|m| m.len())
            .sum();
        let per = bytes as f64 / N as f64;
        assert!(per <= 50.0, "{per:.1} bytes a recipient (bound 50)");
    }
}
