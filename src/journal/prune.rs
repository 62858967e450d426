//! Pruning: deleting runs that ended before a cutoff, with their calls, recipients and counters.
//!
//! Invariants: one transaction; unfinished runs are kept whatever their age (they may still be
//! resumed). Must not: delete report files (they are files, and the report's own tables are the
//! report's to clean).

use crate::store::params;
use jiff::Timestamp;

use super::schema::{rk_range, run_key};
use super::{Journal, JournalError};

impl Journal {
    /// Delete runs that ended (finished or cancelled) before `cutoff`, with their calls and
    /// recipients, in one transaction. Unfinished runs are kept whatever their age (they may
    /// still be resumed); reports already written are files and stay. Returns
    /// (runs, calls, recipients) deleted.
    pub fn prune_runs(&mut self, cutoff: Timestamp) -> Result<(u64, u64, u64), JournalError> {
        let db = self.db();
        let tx = self.begin_write()?;
        let old: Vec<String> = {
            let rows = tx
                .query_map(
                    "SELECT id, COALESCE(finished_at, updated_at) FROM runs
                     WHERE status IN ('finished', 'cancelled')",
                    params![],
                    |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
                )
                .map_err(&db)?;
            rows.into_iter()
                .filter(|(_, at)| at.parse::<Timestamp>().is_ok_and(|t| t < cutoff))
                .map(|(id, _)| id)
                .collect()
        };
        let (mut runs, mut calls, mut recipients) = (0u64, 0u64, 0u64);
        for id in &old {
            super::attempts::delete_run_tx(&tx, id).map_err(&db)?;
            if let Some(key) = run_key(&tx, id).map_err(&db)? {
                let (lo, hi) = rk_range(key);
                recipients += tx
                    .execute(
                        "DELETE FROM recipients WHERE rk BETWEEN ?1 AND ?2",
                        params![lo, hi],
                    )
                    .map_err(&db)? as u64;
                recipients += super::deferred::delete_run(&tx, key).map_err(&db)?;
                tx.execute("DELETE FROM call_plan WHERE run_key = ?1", params![key])
                    .map_err(&db)?;
                tx.execute("DELETE FROM run_variants WHERE run_key = ?1", params![key])
                    .map_err(&db)?;
            }
            tx.execute("DELETE FROM run_counts WHERE run_id = ?1", params![id])
                .map_err(&db)?;
            tx.execute("DELETE FROM run_stages WHERE run_id = ?1", params![id])
                .map_err(&db)?;
            tx.execute("DELETE FROM run_invocations WHERE run_id = ?1", params![id])
                .map_err(&db)?;
            calls += tx
                .execute("DELETE FROM calls WHERE run_id = ?1", params![id])
                .map_err(&db)? as u64;
            runs += tx
                .execute("DELETE FROM runs WHERE id = ?1", params![id])
                .map_err(&db)? as u64;
        }
        tx.commit().map_err(&db)?;
        Ok((runs, calls, recipients))
    }
}
