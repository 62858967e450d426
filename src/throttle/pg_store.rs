//! The limiter's log in PostgreSQL (`[state] url`): the same exact rule, shared by every process
//! of the account on any host.
//!
//! Tables (the store's versioned migrations, `crate::pg::schema`, applied on connecting; a newer
//! schema is refused): `imcast_throttle_log(id, key, at_ns, count, until_ns, done)` with an index on
//! `(key, until_ns) INCLUDE (count)`, and `imcast_throttle_key(key, units, tat_ns)`: one row per
//! key holding the running total and the pacing time, and serving as the key's lock.
//!
//! A decision is one READ COMMITTED transaction: `SELECT … FOR UPDATE` on the decision's key rows
//! (in key order, so two decisions on overlapping keys never deadlock), then, each statement
//! seeing everything the previous holders committed: the pending ends, the deletion of ended
//! entries (their units taken off the total in the same statement), and at admission the new
//! entries with the totals and pacing times (one statement). Five round trips when admitting, four
//! when waiting; writing a call's end alone locks the entry's key first too, so every change to a
//! key's entries happens under its row lock and the log's rows are never locked in two orders.
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

use super::store::{clamp_i64, End, KeyState, NewEntry, Store, StoreError};
use crate::pg::{OffRuntime, PgUrl};

const LOCK: &str = "SELECT key, units, tat_ns FROM imcast_throttle_key
    WHERE key = ANY($1) ORDER BY key FOR UPDATE";
const ENSURE: &str = "INSERT INTO imcast_throttle_key(key)
    SELECT DISTINCT unnest($1::text[]) ON CONFLICT (key) DO NOTHING";
const ENDS: &str = "UPDATE imcast_throttle_log l
    SET until_ns = CASE WHEN e.close THEN e.until_ns ELSE GREATEST(l.until_ns, e.until_ns) END,
        done = e.close
    FROM unnest($1::bigint[], $2::bigint[], $3::bool[]) AS e(id, until_ns, close)
    WHERE l.id = e.id AND NOT l.done";
const PRUNE: &str = "WITH gone AS (
        DELETE FROM imcast_throttle_log WHERE key = ANY($1) AND until_ns < $2
        RETURNING key, count),
    s AS (SELECT key, SUM(count)::bigint AS n FROM gone GROUP BY key)
    UPDATE imcast_throttle_key t SET units = t.units - s.n FROM s WHERE t.key = s.key
    RETURNING t.key, t.units";
const FREE: &str = "SELECT until_ns FROM (
        SELECT until_ns,
            (SUM(count) OVER (ORDER BY until_ns, id ROWS UNBOUNDED PRECEDING))::bigint AS freed
        FROM imcast_throttle_log WHERE key = $1) e
    WHERE freed >= $2 ORDER BY until_ns LIMIT 1";
const ADMIT: &str = "WITH ins AS (
        INSERT INTO imcast_throttle_log(key, at_ns, count, until_ns, done)
        SELECT k, a, c, u, false
        FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
            WITH ORDINALITY AS e(k, a, c, u, ord)
        ORDER BY ord
        RETURNING id, key),
    upd AS (
        UPDATE imcast_throttle_key t
        SET units = t.units + s.n, tat_ns = COALESCE(s.tat, t.tat_ns)
        FROM (SELECT COALESCE(a.k, p.k) AS k, COALESCE(a.n, 0) AS n, p.tat
              FROM (SELECT k, SUM(c)::bigint AS n
                    FROM unnest($1::text[], $3::bigint[]) AS e(k, c) GROUP BY k) a
              FULL JOIN (SELECT k, MAX(tat) AS tat
                    FROM unnest($5::text[], $6::bigint[]) AS p(k, tat) GROUP BY k) p
              ON a.k = p.k) s
        WHERE t.key = s.k)
    SELECT id, key FROM ins ORDER BY id";

struct Conn {
    client: OffRuntime<postgres::Client>,
    lock: Statement,
    ensure: Statement,
    ends: Statement,
    prune: Statement,
    free: Statement,
    admit: Statement,
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
            prune: client.prepare(PRUNE)?,
            free: client.prepare(FREE)?,
            admit: client.prepare(ADMIT)?,
            client,
        })
    }
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
    fn lock(&mut self, keys: &[&str]) -> Result<Vec<postgres::Row>, StoreError> {
        let mut keys: Vec<&str> = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let c = self.conn()?;
        c.client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")?;
        self.in_tx = true;
        let c = self.conn()?;
        let mut rows = c.client.query(&c.lock, &[&keys])?;
        if rows.len() < keys.len() {
            c.client.execute(&c.ensure, &[&keys])?;
            rows = c.client.query(&c.lock, &[&keys])?;
        }
        Ok(rows)
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
    fn begin(
        &mut self,
        keys: &[&str],
        now: i128,
        ends: &[End],
    ) -> Result<Vec<KeyState>, StoreError> {
        // Every key whose entries this transaction touches is locked first.
        let mut all: Vec<&str> = keys.to_vec();
        all.extend(ends.iter().map(|e| e.key.as_str()));
        let locked = self.lock(&all)?;
        self.write(ends)?;
        let c = self.conn()?;
        let want: Vec<&str> = keys.to_vec();
        let pruned = c.client.query(&c.prune, &[&want, &clamp_i64(now)])?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let row = locked.iter().find(|r| r.get::<_, &str>(0) == *key);
            let after = pruned.iter().find(|r| r.get::<_, &str>(0) == *key);
            let used: i64 = match (after, row) {
                (Some(r), _) => r.try_get(1)?,
                (None, Some(r)) => r.try_get(1)?,
                (None, None) => 0,
            };
            let tat: Option<i64> = match row {
                Some(r) => r.try_get(2)?,
                None => None,
            };
            out.push(KeyState {
                used: i128::from(used),
                tat: tat.map(i128::from),
            });
        }
        Ok(out)
    }

    fn earliest_free(&mut self, key: &str, excess: i128) -> Result<Option<i128>, StoreError> {
        let c = self.conn()?;
        let row = c.client.query_opt(&c.free, &[&key, &clamp_i64(excess)])?;
        Ok(match row {
            Some(r) => Some(i128::from(r.try_get::<_, i64>(0)?)),
            None => None,
        })
    }

    fn admit(
        &mut self,
        entries: &[NewEntry<'_>],
        tats: &[(&str, i128)],
    ) -> Result<Vec<i64>, StoreError> {
        let keys: Vec<&str> = entries.iter().map(|e| e.key).collect();
        let ats: Vec<i64> = entries.iter().map(|e| clamp_i64(e.at_ns)).collect();
        let counts: Vec<i64> = entries.iter().map(|e| e.units).collect();
        let untils: Vec<i64> = entries.iter().map(|e| clamp_i64(e.until_ns)).collect();
        let tat_keys: Vec<&str> = tats.iter().map(|t| t.0).collect();
        let tat_ns: Vec<i64> = tats.iter().map(|t| clamp_i64(t.1)).collect();
        let c = self.conn()?;
        let rows = c.client.query(
            &c.admit,
            &[&keys, &ats, &counts, &untils, &tat_keys, &tat_ns],
        )?;
        // Ids come back ascending, which is the insertion order; match them to the entries by
        // key (in order, should two entries share a key).
        let mut returned: Vec<(i64, String, bool)> = Vec::with_capacity(rows.len());
        for r in &rows {
            returned.push((r.try_get(0)?, r.try_get(1)?, false));
        }
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            let slot = returned.iter_mut().find(|(_, k, used)| !used && k == e.key);
            match slot {
                Some((id, _, used)) => {
                    *used = true;
                    ids.push(*id);
                }
                // Cannot happen (one row per entry); the entry keeps its fallback end.
                None => ids.push(0),
            }
        }
        self.commit()?;
        Ok(ids)
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        self.commit()
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
            .and_then(|_| self.write(ends))
            .and_then(|()| self.commit());
        if r.is_err() {
            self.rollback();
        }
        r
    }
}
