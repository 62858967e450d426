//! The limiter's log in PostgreSQL (`[state] url`): the same exact rule, shared by every process
//! of the account on any host.
//!
//! Tables (the store's versioned migrations, `crate::pg::schema`, applied on connecting; a newer
//! schema is refused): `imcast_throttle_log(id, key, at_ns, count, until_ns, done)` with an index on
//! `(key, until_ns) INCLUDE (count)`, and `imcast_throttle_key(key, units, tat_ns, sweep_ns)`: one
//! row per key holding the running total, the pacing time and when its ended entries are next
//! deleted, and serving as the key's lock.
//!
//! A decision is one call of the server-side function `imcast_throttle_decide` (migration 3,
//! replaced by migration 9), with one prepared statement: one round trip, in one READ COMMITTED
//! transaction (the statement's own). The function locks the decision's key rows (`SELECT … FOR
//! UPDATE` in key order, so two decisions on overlapping keys never deadlock; rows created when
//! missing), then, each statement seeing everything the previous holders committed: writes the
//! pending ends, deletes the ended entries (their units taken off the total) of a key whose total
//! would refuse the call or whose sweep is due (once a window: deleting at every decision was a
//! quarter of its time; the rule is unchanged, see migration 9), applies the rule and, if it
//! admits, inserts the new entries and updates the totals and pacing times. It is the rule of
//! `store::decide_by_steps` (which SQLite runs) written in PL/pgSQL — why, and what keeps the
//! two identical, is in `store.rs`. Several admissions of this process queued together are one
//! call of `imcast_throttle_decide_batch` (migration 10), which calls that function for each in
//! order and stops at the first that must wait ([`Store::decide_batch`]). Round trips are what an admission costs on a network: five
//! statements in a client-side transaction gave p99 7.3 ms on a loaded loopback, above the 5 ms
//! target (BENCHMARKS.md). Writing a call's end alone locks the entry's key first too (a
//! transaction of its own), so every change to a key's entries happens under its row lock and
//! the log's rows are never locked in two orders.
//!
//! Sessions set `lock_timeout` (30 s: a decision never waits forever on a stuck peer) and
//! `idle_in_transaction_session_timeout` (10 s: a process stopped mid-decision, e.g. `SIGSTOP` or
//! a VM pause, loses its transaction and its locks instead of stalling every host). A lost
//! connection is reopened by the next decision; a deadlock, serialization failure or lost
//! connection is retried by the limiter (a commit whose answer was lost may have recorded the
//! admission: that only counts a phantom call until its fallback end — cautious, never over).
//!
//! Time is the limiter's injected clock, never the server's `now()`: tests run on a simulated
//! clock, and every host stamps entries with its own clock (see `throttle`'s module doc on skew).

use postgres::Statement;

use super::store::{clamp_i64, AskRule, Decided, End, Store, StoreError};
use crate::pg::{OffRuntime, PgUrl};

const LOCK: &str = "SELECT key FROM imcast_throttle_key
    WHERE key = ANY($1) ORDER BY key FOR UPDATE";
const ENSURE: &str = "INSERT INTO imcast_throttle_key(key)
    SELECT DISTINCT unnest($1::text[]) ON CONFLICT (key) DO NOTHING";
const ENDS: &str = "UPDATE imcast_throttle_log l
    SET until_ns = CASE WHEN e.close THEN e.until_ns ELSE GREATEST(l.until_ns, e.until_ns) END,
        done = e.close
    FROM unnest($1::bigint[], $2::bigint[], $3::bool[]) AS e(id, until_ns, close)
    WHERE l.id = e.id AND NOT l.done";
const DECIDE_BATCH: &str = "SELECT wait_ns, ids FROM imcast_throttle_decide_batch(
    $1::int[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bigint, $10::bigint[], $11::text[], $12::bigint[], $13::bool[])";
const DECIDE: &str = "SELECT wait_ns, ids FROM imcast_throttle_decide(
    $1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
    $7::bigint[], $8::bigint, $9::bigint[], $10::text[], $11::bigint[], $12::bool[])";

struct Conn {
    client: OffRuntime<postgres::Client>,
    lock: Statement,
    ensure: Statement,
    ends: Statement,
    decide: Statement,
    decide_batch: Statement,
}

impl Conn {
    fn open(url: &PgUrl) -> Result<Conn, StoreError> {
        let mut client = OffRuntime::new(crate::pg::connect(url)?);
        client.batch_execute(
            "SET lock_timeout = '30s'; SET idle_in_transaction_session_timeout = '10s'",
        )?;
        let m = crate::pg::schema::migrate(&mut client)?;
        for (v, name) in &m.applied {
            tracing::info!(version = v, "state store: applied migration: {name}");
        }
        Ok(Conn {
            lock: client.prepare(LOCK)?,
            ensure: client.prepare(ENSURE)?,
            ends: client.prepare(ENDS)?,
            decide: client.prepare(DECIDE)?,
            decide_batch: client.prepare(DECIDE_BATCH)?,
            client,
        })
    }
}

/// The rules of a decision as the functions' array arguments.
struct RuleArrays<'a> {
    keys: Vec<&'a str>,
    need: Vec<i64>,
    limit: Vec<i64>,
    window: Vec<i64>,
    step: Vec<Option<i64>>,
    tol: Vec<Option<i64>>,
    until: Vec<i64>,
}

impl<'a> RuleArrays<'a> {
    fn of<'r>(rules: impl Iterator<Item = &'r AskRule<'a>>) -> RuleArrays<'a>
    where
        'a: 'r,
    {
        let mut r = RuleArrays {
            keys: Vec::new(),
            need: Vec::new(),
            limit: Vec::new(),
            window: Vec::new(),
            step: Vec::new(),
            tol: Vec::new(),
            until: Vec::new(),
        };
        for rule in rules {
            r.keys.push(rule.key);
            r.need.push(rule.need);
            r.limit.push(rule.limit);
            r.window.push(rule.window_ns);
            r.step.push(rule.pace.map(|p| p.0));
            r.tol.push(rule.pace.map(|p| p.1));
            r.until.push(rule.until_ns);
        }
        r
    }
}

/// The pending ends as the functions' array arguments.
struct EndArrays<'a> {
    ids: Vec<i64>,
    keys: Vec<&'a str>,
    until: Vec<i64>,
    close: Vec<bool>,
}

impl<'a> EndArrays<'a> {
    fn of(ends: &'a [End]) -> EndArrays<'a> {
        EndArrays {
            ids: ends.iter().map(|e| e.id).collect(),
            keys: ends.iter().map(|e| e.key.as_str()).collect(),
            until: ends.iter().map(|e| clamp_i64(e.until_ns)).collect(),
            close: ends.iter().map(|e| e.close).collect(),
        }
    }
}

/// One row of a decision function: wait, or the admitted entries' ids.
fn decided(row: &postgres::Row) -> Result<Decided, StoreError> {
    let wait: i64 = row.try_get(0)?;
    if wait > 0 {
        return Ok(Decided::Wait(i128::from(wait)));
    }
    Ok(Decided::Admitted(row.try_get(1)?))
}

pub(crate) struct PgStore {
    url: PgUrl,
    conn: Option<Conn>,
    in_tx: bool,
}

impl PgStore {
    /// Connect (blocking; off the async runtime), create the tables if needed, and make sure
    /// `keys` have their rows.
    pub(crate) fn open(url: &PgUrl, keys: &[&str]) -> Result<PgStore, StoreError> {
        let mut s = PgStore {
            url: url.clone(),
            conn: None,
            in_tx: false,
        };
        let c = s.conn()?;
        let keys: Vec<&str> = keys.to_vec();
        c.client.execute(&c.ensure, &[&keys])?;
        Ok(s)
    }

    /// The open connection, reconnecting (and preparing the statements) if it was lost between
    /// decisions. Inside a transaction a lost connection stays lost: the next statement fails
    /// (and the limiter retries the decision whole) rather than running outside the transaction.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        let c = match self.conn.take() {
            Some(c) if self.in_tx || !c.client.is_closed() => c,
            None if self.in_tx => return Err(StoreError::Lost),
            _ => Conn::open(&self.url)?,
        };
        Ok(self.conn.insert(c))
    }

    /// Begin a transaction and lock `keys` (sorted, deduplicated), creating missing rows.
    fn lock(&mut self, keys: &[&str]) -> Result<(), StoreError> {
        let mut keys: Vec<&str> = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let c = self.conn()?;
        c.client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        self.in_tx = true;
        let c = self.conn()?;
        let n = c.client.query(&c.lock, &[&keys])?.len();
        if n < keys.len() {
            c.client.execute(&c.ensure, &[&keys])?;
            c.client.query(&c.lock, &[&keys])?;
        }
        Ok(())
    }

    fn write(&mut self, ends: &[End]) -> Result<(), StoreError> {
        if ends.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ends.iter().map(|e| e.id).collect();
        let untils: Vec<i64> = ends.iter().map(|e| clamp_i64(e.until_ns)).collect();
        let closes: Vec<bool> = ends.iter().map(|e| e.close).collect();
        let c = self.conn()?;
        c.client.execute(&c.ends, &[&ids, &untils, &closes])?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let c = self.conn()?;
        c.client.batch_execute("COMMIT")?;
        self.in_tx = false;
        Ok(())
    }
}

impl Store for PgStore {
    fn decide(
        &mut self,
        rules: &[AskRule<'_>],
        now: i128,
        ends: &[End],
    ) -> Result<Decided, StoreError> {
        let r = RuleArrays::of(rules.iter());
        let e = EndArrays::of(ends);
        let now = clamp_i64(now);
        let c = self.conn()?;
        let row = c.client.query_one(
            &c.decide,
            &[
                &r.keys, &r.need, &r.limit, &r.window, &r.step, &r.tol, &r.until, &now, &e.ids,
                &e.keys, &e.until, &e.close,
            ],
        )?;
        decided(&row)
    }

    fn decide_batch(
        &mut self,
        asks: &[Vec<AskRule<'_>>],
        now: i128,
        ends: &[End],
    ) -> Result<Vec<Decided>, StoreError> {
        if asks.len() <= 1 {
            return match asks.first() {
                Some(a) => Ok(vec![self.decide(a, now, ends)?]),
                None => Ok(Vec::new()),
            };
        }
        // Admission a's rules start at first[a] (1-based) in the flattened arrays.
        let mut first: Vec<i32> = Vec::with_capacity(asks.len());
        let mut at: i32 = 1;
        for a in asks {
            first.push(at);
            at = at.saturating_add(i32::try_from(a.len()).unwrap_or(i32::MAX));
        }
        let rules: Vec<&AskRule<'_>> = asks.iter().flatten().collect();
        let r = RuleArrays::of(rules.iter().copied());
        let e = EndArrays::of(ends);
        let now = clamp_i64(now);
        let c = self.conn()?;
        let rows = c.client.query(
            &c.decide_batch,
            &[
                &first, &r.keys, &r.need, &r.limit, &r.window, &r.step, &r.tol, &r.until, &now,
                &e.ids, &e.keys, &e.until, &e.close,
            ],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(decided(row)?);
        }
        if out.is_empty() {
            // The function decides at least the first admission.
            return Err(StoreError::Lost);
        }
        Ok(out)
    }

    fn rollback(&mut self) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        if let Some(c) = self.conn.as_mut() {
            if c.client.batch_execute("ROLLBACK").is_err() {
                // A connection that cannot roll back is not reused.
                self.conn = None;
            }
        }
    }

    fn write_ends(&mut self, ends: &[End]) -> Result<(), StoreError> {
        let keys: Vec<&str> = ends.iter().map(|e| e.key.as_str()).collect();
        let r = self
            .lock(&keys)
            .and_then(|()| self.write(ends))
            .and_then(|()| self.commit());
        if r.is_err() {
            self.rollback();
        }
        r
    }
}
