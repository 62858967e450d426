//! The attempts log: one row per admitted call attempt (`attempts`: run key, call, attempt
//! number, admission instant in nanoseconds, receivers, and the error code the attempt ended
//! with, NULL while in flight or when answered). What the report reads it for: the busiest window
//! the run really used (from the admission instants, exact) and the failed attempts per error
//! code (429s and 5xx that were retried never reach a recipient's row).
//!
//! Invariants: a row is written in the same transaction as the attempt's in-flight mark (so it
//! exists before the request leaves), numbered as `calls.attempts` after that mark; an attempt's
//! code is set by the write that ends it (a retry, a fatal stop, an error outcome). Must not:
//! change `calls` or `recipients` (only this table; on PostgreSQL the mark's statement wraps the
//! call row's own upsert, `calls::MARK_CALL`, so that both rows cost one round trip), or be read
//! by anything but the methods here.

use std::collections::BTreeMap;

use crate::store::{params, Conn, StoreError};
use jiff::Timestamp;

use super::schema::run_key;
use super::{Journal, JournalError, Mark};

/// Record the attempt `m` marks in flight (called by the mark's transaction, after the call row
/// was written).
pub(super) fn attempt_tx(
    tx: &Conn,
    m: &Mark,
    key: i64,
    db: &impl Fn(StoreError) -> JournalError,
) -> Result<(), JournalError> {
    tx.execute(
        "INSERT INTO attempts(run_key, seq, attempt, at_ns, receivers, code)
         SELECT CAST(?1 AS BIGINT), seq, attempts, CAST(?3 AS BIGINT), CAST(?4 AS BIGINT), NULL
         FROM calls WHERE run_id = ?2 AND seq = ?5
         ON CONFLICT(run_key, seq, attempt) DO UPDATE SET at_ns = excluded.at_ns,
             receivers = excluded.receivers, code = NULL",
        params![
            key,
            m.run_id,
            at_ns(m),
            m.receivers.len() as i64,
            m.seq as i64
        ],
    )
    .map_err(db)?;
    Ok(())
}

/// PostgreSQL: the attempt's row of a mark whose call row an upsert `c` just returned
/// (`seq, attempts`): numbered by it, as [`attempt_tx`] reads it back. The arguments are the
/// parameters holding the run's key, the admission in ns and the number of receivers.
macro_rules! attempt_of_mark {
    ($key:literal, $at_ns:literal, $receivers:literal) => {
        concat!(
            "INSERT INTO attempts(run_key, seq, attempt, at_ns, receivers, code)
             SELECT CAST(",
            $key,
            " AS BIGINT), c.seq, c.attempts, CAST(",
            $at_ns,
            " AS BIGINT), CAST(",
            $receivers,
            " AS BIGINT), NULL
             FROM c
             ON CONFLICT(run_key, seq, attempt) DO UPDATE SET at_ns = excluded.at_ns,
                 receivers = excluded.receivers, code = NULL"
        )
    };
}
pub(super) use attempt_of_mark;

/// PostgreSQL: a mark's call row ([`super::calls::MARK_CALL`], ?1–?8) and its attempt's row
/// (?9 the run's key, ?10 the admission in ns) in one statement, one round trip.
pub(super) const PG_MARK_WITH_ATTEMPT: &str = concat!(
    "WITH c AS (",
    super::calls::mark_call!(),
    " RETURNING seq, attempts) ",
    attempt_of_mark!("?9", "?10", "?6")
);

/// A mark's admission instant as stored (ns, clamped to `i64`).
pub(super) fn at_ns(m: &Mark) -> i64 {
    clamp_i64(m.now.as_nanosecond())
}

/// The latest attempt of call `seq` ended with `code` (a retry, a fatal stop, an error outcome).
pub(super) fn attempt_ended_tx(
    tx: &Conn,
    run_id: &str,
    seq: u64,
    code: &str,
) -> Result<(), StoreError> {
    let Some(key) = run_key(tx, run_id)? else {
        return Ok(());
    };
    tx.execute(
        "UPDATE attempts SET code = ?4
         WHERE run_key = ?1 AND seq = ?2
           AND attempt = (SELECT attempts FROM calls WHERE run_id = ?3 AND seq = ?2)",
        params![key, seq as i64, run_id, code],
    )?;
    Ok(())
}

/// Delete a run's attempts (pruning, in its transaction).
pub(super) fn delete_run_tx(tx: &Conn, run_id: &str) -> Result<u64, StoreError> {
    let Some(key) = run_key(tx, run_id)? else {
        return Ok(0);
    };
    Ok(tx.execute("DELETE FROM attempts WHERE run_key = ?1", params![key])? as u64)
}

fn clamp_i64(t: i128) -> i64 {
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// One admitted attempt, as [`Journal::for_each_admission`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub at: Timestamp,
    /// Receivers the attempt carried.
    pub receivers: u64,
}

impl Journal {
    /// Every admitted attempt of a run, in admission order (ties: call, attempt). Reads one row
    /// at a time (a personalized run of millions is a scan, not a load). Stops at `f`'s first
    /// error.
    pub fn for_each_admission<E: From<JournalError>>(
        &self,
        run_id: &str,
        mut f: impl FnMut(Admission) -> Result<(), E>,
    ) -> Result<(), E> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(());
        };
        self.conn
            .for_each(
                "SELECT at_ns, receivers FROM attempts WHERE run_key = ?1
                 ORDER BY at_ns, seq, attempt",
                params![key],
                |r| {
                    let at: i64 = r.get(0).map_err(self.db())?;
                    let receivers: i64 = r.get(1).map_err(self.db())?;
                    f(Admission {
                        at: Timestamp::from_nanosecond(i128::from(at)).map_err(|e| {
                            JournalError::Corrupt(format!("admission time {at}: {e}"))
                        })?,
                        receivers: receivers.max(0) as u64,
                    })
                },
            )
            .map_err(self.db())?
    }

    /// Failed attempts of a run per error code (retried ones included), as the engine recorded
    /// them: the provider's code, `HTTP<status>`, or the transport's class.
    pub fn attempt_codes(&self, run_id: &str) -> Result<BTreeMap<String, u64>, JournalError> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(BTreeMap::new());
        };
        let rows = self
            .conn
            .query_map(
                "SELECT code, COUNT(*) FROM attempts WHERE run_key = ?1 AND code IS NOT NULL
                 GROUP BY code",
                params![key],
                |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
            )
            .map_err(self.db())?;
        let mut out = BTreeMap::new();
        for (code, n) in rows {
            out.insert(code, n.max(0) as u64);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::*;
    use crate::journal::{CallState, ResumeOptions};

    #[test]
    fn every_attempt_is_logged_with_its_admission_and_end_code() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        let at = |s: i64| now() + jiff::SignedDuration::from_millis(s);
        // Call 0: a 429, then answered. Call 1: a 5xx answered as an error outcome.
        j.mark_in_flight(&id, 0, "v", &[1, 2, 3], None, at(0))
            .expect("mark");
        j.mark_retry(&id, 0, Some("HTTP429"), "slow down", at(10))
            .expect("retry");
        j.mark_in_flight(&id, 0, "v", &[1, 2, 3], None, at(500))
            .expect("mark");
        j.record_outcome(&id, 0, CallState::Done, &[], None, at(600))
            .expect("outcome");
        j.mark_in_flight(&id, 1, "v", &[4], None, at(200))
            .expect("mark");
        j.record_outcome(
            &id,
            1,
            CallState::Done,
            &[],
            Some(("HTTP500", "server error")),
            at(300),
        )
        .expect("outcome");
        let mut seen = Vec::new();
        j.for_each_admission::<JournalError>(&id, |a| {
            seen.push((a.at, a.receivers));
            Ok(())
        })
        .expect("scan");
        assert_eq!(seen, [(at(0), 3), (at(200), 1), (at(500), 3)]);
        let codes = j.attempt_codes(&id).expect("codes");
        assert_eq!(
            codes.into_iter().collect::<Vec<_>>(),
            [("HTTP429".to_string(), 1), ("HTTP500".to_string(), 1)]
        );
        // Pruning removes them with the run.
        j.set_status(&id, crate::journal::RunStatus::Finished, None, at(700))
            .expect("finish");
        let left = |j: &Journal| -> i64 {
            j.connection()
                .query_row("SELECT COUNT(*) FROM attempts", &[], |r| r.get(0))
                .expect("count")
        };
        assert_eq!(left(&j), 3);
        j.prune_runs(at(10_000)).expect("prune");
        assert_eq!(left(&j), 0);
    }
}
