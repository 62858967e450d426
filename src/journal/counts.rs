//! The per-status counters (`run_counts`): recipients per status and run, kept by every statement
//! that changes a status so counting a run of millions never scans its rows; and the other
//! per-run figures (calls per state, attempts).
//!
//! Invariants: a counter moves in the same transaction as the change it counts; in debug builds
//! every [`Journal::counts`] checks the counters against a scan of the rows. Must not: be
//! changed but through [`count_move`] (pruning deletes a run's counters with the run).

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::store::{params, Conn, StoreError, Value};
use jiff::Timestamp;

use super::schema::parse_ts;
use super::{CallState, Journal, JournalError, Ops, RecipientStatus, RunCounts};

/// Move `n` recipients of a run from status `from` to `to` in the per-status counters
/// (`from = None` adds new rows). Called in the same transaction as the change it counts.
pub(super) fn count_move(
    tx: &Conn,
    run_id: &str,
    from: Option<RecipientStatus>,
    to: RecipientStatus,
    n: u64,
) -> Result<(), StoreError> {
    match from {
        Some(from) => MoveCounts {
            run_id,
            from,
            to,
            n,
        }
        .write(tx),
        None if n == 0 => Ok(()),
        None => {
            tx.execute(
                "INSERT INTO run_counts(run_id, status, n) VALUES (?1, ?2, ?3)
                 ON CONFLICT(run_id, status) DO UPDATE SET n = run_counts.n + excluded.n",
                params![run_id, to.as_str(), n as i64],
            )?;
            Ok(())
        }
    }
}

/// `n` recipients of a run moved from one status to another: both counters in one statement
/// (one round trip on PostgreSQL, or part of another's: `deferred::Delivered::insert`).
pub(super) struct MoveCounts<'a> {
    pub run_id: &'a str,
    pub from: RecipientStatus,
    pub to: RecipientStatus,
    pub n: u64,
}

impl MoveCounts<'_> {
    /// The statement, its parameters numbered from `first`: the run, the new status and `n`,
    /// the old status and `-n`. `from` and `to` differ, so it touches each row once.
    pub fn sql_from(first: usize) -> String {
        let p = |i: usize| format!("?{}", first + i);
        format!(
            "INSERT INTO run_counts(run_id, status, n) VALUES ({run}, {}, {}), ({run}, {}, {})
             ON CONFLICT(run_id, status) DO UPDATE SET n = run_counts.n + excluded.n",
            p(1),
            p(2),
            p(3),
            p(4),
            run = p(0),
        )
    }

    /// Its parameters, in [`MoveCounts::sql_from`]'s order.
    pub fn params(&self) -> [Value<'_>; 5] {
        [
            Value::Text(self.run_id),
            Value::Text(self.to.as_str()),
            Value::Int(self.n as i64),
            Value::Text(self.from.as_str()),
            Value::Int(-(self.n as i64)),
        ]
    }

    /// Write it alone (nothing when nothing moved).
    pub fn write(&self, tx: &Conn) -> Result<(), StoreError> {
        if self.n == 0 || self.from == self.to {
            return Ok(());
        }
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| MoveCounts::sql_from(1));
        tx.execute(&SQL, &self.params())?;
        Ok(())
    }
}

impl Ops<'_> {
    pub(super) fn count_status(
        &self,
        run_id: &str,
        status: RecipientStatus,
    ) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM run_counts WHERE run_id = ?1 AND status = ?2",
                params![run_id, status.as_str()],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }
}

impl Journal {
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
        let mut out: BTreeMap<RecipientStatus, u64> =
            RecipientStatus::ALL.iter().map(|k| (*k, 0)).collect();
        // The rows and the entries (`deferred`) as of one moment.
        let _snapshot = self.conn.snapshot().map_err(self.db())?;
        // Grouped by the database: a handful of rows, whatever the run's size.
        let rows = self
            .conn
            .query_map(
                "SELECT status, COUNT(*) FROM recipients
                 WHERE rk BETWEEN (SELECT key << 32 FROM runs WHERE id = ?1)
                              AND (SELECT (key << 32) | 4294967295 FROM runs WHERE id = ?1)
                 GROUP BY status",
                params![run_id],
                |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)),
            )
            .map_err(self.db())?;
        for (code, n) in rows {
            out.insert(RecipientStatus::from_code(code)?, n as u64);
        }
        // Deferred rows are `pending`, delivered ones `sent` (see `deferred`).
        if let Some(key) = super::schema::run_key(&self.conn, run_id).map_err(self.db())? {
            let (p, s, _) = super::deferred::extent(&self.conn, key).map_err(self.db())?;
            *out.entry(RecipientStatus::Pending).or_default() += p;
            *out.entry(RecipientStatus::Sent).or_default() += s;
        }
        Ok(out)
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
        let rows = self
            .conn
            .query_map(sql, params![run_id], |r| {
                Ok((r.get::<String>(0)?, r.get::<i64>(1)?))
            })
            .map_err(self.db())?;
        for (k, n) in rows {
            out.insert(k.parse()?, n as u64);
        }
        Ok(out)
    }

    /// How many recipients of a run have `status`.
    pub fn count_status(&self, run_id: &str, status: RecipientStatus) -> Result<u64, JournalError> {
        let n: i64 = self.conn
            .query_row(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM run_counts WHERE run_id = ?1 AND status = ?2",
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
                "SELECT CAST(COALESCE(SUM(attempts), 0) AS BIGINT) FROM calls WHERE run_id = ?1",
                params![run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// The counters of every run updated at or after `since` (compared in whole seconds), for
    /// the daemon's metrics: per run, each status its recipients have had and how many have it
    /// now (zero once all moved on; a status none of them ever had is absent).
    pub fn recent_counts(&self, since: Timestamp) -> Result<Vec<RunCounts>, JournalError> {
        let recent: Vec<(String, String)> = self
            .conn
            .query_map(
                "SELECT id, campaign, updated_at FROM runs",
                params![],
                |r| {
                    Ok((
                        r.get::<String>(0)?,
                        r.get::<String>(1)?,
                        r.get::<String>(2)?,
                    ))
                },
            )
            .map_err(self.db())?
            .into_iter()
            .filter(|(_, _, at)| parse_ts(at).is_ok_and(|t| t.as_second() >= since.as_second()))
            .map(|(id, campaign, _)| (id, campaign))
            .collect();
        let mut out = Vec::with_capacity(recent.len());
        for (run_id, campaign) in recent {
            let mut counts = BTreeMap::new();
            let rows = self
                .conn
                .query_map(
                    "SELECT status, n FROM run_counts WHERE run_id = ?1",
                    params![&run_id],
                    |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
                )
                .map_err(self.db())?;
            for (status, n) in rows {
                counts.insert(status.parse()?, n.max(0) as u64);
            }
            out.push(RunCounts {
                run_id,
                campaign,
                counts,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::*;
    use crate::journal::ResumeOptions;

    #[test]
    fn recent_counts_are_the_counters_of_runs_updated_since() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[103]))
            .expect("create")
            .run()
            .id
            .clone();
        assert_eq!(j.campaigns().expect("campaigns"), ["spring"]);
        let recent = j.recent_counts(now()).expect("recent");
        assert_eq!(recent.len(), 1);
        assert_eq!(
            (recent[0].run_id.as_str(), recent[0].campaign.as_str()),
            (id.as_str(), "spring")
        );
        // The statuses its rows have had, not every status.
        assert_eq!(
            recent[0].counts,
            BTreeMap::from([
                (RecipientStatus::Pending, 3),
                (RecipientStatus::Suppressed, 1)
            ])
        );
        // Whole seconds: a run updated within the second of `since` counts.
        let just_after = now() + jiff::SignedDuration::from_millis(999);
        assert_eq!(j.recent_counts(just_after).expect("recent").len(), 1);
        let next_second = now() + jiff::SignedDuration::from_secs(1);
        assert!(j.recent_counts(next_second).expect("recent").is_empty());
    }
}
