//! A run's stages (see `crate::stages`): recorded once when the run first reaches them, then
//! their state, the time each may not start before and the canary gate's outcome.
//!
//! Invariants: rows are inserted once (`ON CONFLICT DO NOTHING`: a resumed run keeps the times it
//! recorded, so a wait survives a restart); times are RFC 3339 text like every journal time.
//! Must not: decide anything (the run does), touch recipients or calls.

use crate::store::params;
use jiff::Timestamp;

use super::counts::count_move;
use super::schema::{parse_ts, rk_range, run_key, ts};
use super::{Journal, JournalError, RecipientStatus};

/// A stage as the run records it before sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStage {
    pub name: String,
    pub first_call: u64,
    pub calls: u64,
    pub recipients: u64,
    /// Not before this instant (a wave's local time); None: as soon as the previous stage and
    /// its gate are done.
    pub not_before: Option<Timestamp>,
    /// The stage has a gate after it (the canary).
    pub gated: bool,
}

/// A stage as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRow {
    pub idx: u32,
    pub name: String,
    pub first_call: u64,
    pub calls: u64,
    pub recipients: u64,
    pub not_before: Option<Timestamp>,
    /// waiting | sending | sent | expired.
    pub state: String,
    /// None: no gate; waiting | passed | failed | overridden | skipped.
    pub gate: Option<String>,
    /// When the gate decides (set when the stage is sent).
    pub gate_at: Option<Timestamp>,
    pub detail: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

fn opt_ts(s: Option<String>) -> Result<Option<Timestamp>, JournalError> {
    s.as_deref().map(parse_ts).transpose()
}

impl Journal {
    /// Record `stages` of `run_id` in order, unless already recorded (a resume keeps its rows).
    pub fn record_stages(&mut self, run_id: &str, stages: &[NewStage]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source: crate::store::StoreError| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = super::begin_write(&self.conn).map_err(db)?;
        super::lease::check_fence(&tx, &path, &self.owner, run_id)?;
        for (i, s) in stages.iter().enumerate() {
            tx.execute(
                "INSERT INTO run_stages(run_id, idx, name, first_call, calls, recipients,
                     not_before, state, gate)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'waiting', ?8)
                 ON CONFLICT(run_id, idx) DO NOTHING",
                params![
                    run_id,
                    i as i64,
                    s.name,
                    s.first_call as i64,
                    s.calls as i64,
                    s.recipients as i64,
                    s.not_before.map(ts).as_deref(),
                    s.gated.then_some("waiting"),
                ],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// The stages of `run_id` in order (empty: a run without stages).
    pub fn stages(&self, run_id: &str) -> Result<Vec<StageRow>, JournalError> {
        type Raw = (
            i64,
            String,
            i64,
            i64,
            i64,
            Option<String>,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let raw: Vec<Raw> = self
            .conn
            .query_map(
                "SELECT idx, name, first_call, calls, recipients, not_before, state, gate, gate_at,
                     detail, started_at, finished_at
                 FROM run_stages WHERE run_id = ?1 ORDER BY idx",
                params![run_id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .map_err(self.db())?;
        raw.into_iter()
            .map(|r| {
                Ok(StageRow {
                    idx: r.0 as u32,
                    name: r.1,
                    first_call: r.2 as u64,
                    calls: r.3 as u64,
                    recipients: r.4 as u64,
                    not_before: opt_ts(r.5)?,
                    state: r.6,
                    gate: r.7,
                    gate_at: opt_ts(r.8)?,
                    detail: r.9,
                    started_at: opt_ts(r.10)?,
                    finished_at: opt_ts(r.11)?,
                })
            })
            .collect()
    }

    /// Set stage `idx`'s state (`sending` records its start once, `sent`/`expired` its end).
    pub fn set_stage_state(
        &self,
        run_id: &str,
        idx: u32,
        state: &str,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let tx = self.fenced(run_id)?;
        self.conn
            .execute(
                "UPDATE run_stages SET state = ?3,
                     started_at = CASE WHEN ?3 = 'sending' THEN COALESCE(started_at, ?4) ELSE started_at END,
                     finished_at = CASE WHEN ?3 IN ('sent', 'expired') THEN ?4 ELSE finished_at END
                 WHERE run_id = ?1 AND idx = ?2", params![run_id, i64::from(idx), state, ts(now)])
            .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }

    /// Set stage `idx`'s gate: its outcome, when it decides and why.
    pub fn set_stage_gate(
        &self,
        run_id: &str,
        idx: u32,
        gate: &str,
        gate_at: Option<Timestamp>,
        detail: Option<&str>,
    ) -> Result<(), JournalError> {
        let tx = self.fenced(run_id)?;
        self.conn
            .execute(
                "UPDATE run_stages SET gate = ?3, gate_at = COALESCE(?4, gate_at),
                     detail = COALESCE(?5, detail)
                 WHERE run_id = ?1 AND idx = ?2",
                params![run_id, i64::from(idx), gate, gate_at.map(ts), detail],
            )
            .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }
}

impl Journal {
    /// Pending recipients of the plan calls `calls` (a stage) become `expired` with `why`, and
    /// the stage `expired`, in one transaction. Returns how many recipients.
    pub fn expire_stage(
        &mut self,
        run_id: &str,
        idx: u32,
        calls: std::ops::Range<u64>,
        why: &str,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        let path = self.path.clone();
        let db = |source: crate::store::StoreError| JournalError::Db {
            path: path.clone(),
            source,
        };
        let tx = super::begin_write(&self.conn).map_err(db)?;
        super::lease::check_fence(&tx, &path, &self.owner, run_id)?;
        let Some(key) = run_key(&tx, run_id).map_err(db)? else {
            return Err(JournalError::NoRun(run_id.into()));
        };
        super::deferred::materialize(&tx, key, super::deferred::Which::Pending).map_err(db)?;
        let (lo, hi) = rk_range(key);
        let n = tx
            .execute(
                "UPDATE recipients SET status = ?7, error_message = ?5, at = ?6
                 WHERE rk BETWEEN ?1 AND ?2 AND status = ?8
                   AND call_seq >= ?3 AND call_seq < ?4",
                params![
                    lo,
                    hi,
                    calls.start as i64,
                    calls.end as i64,
                    why,
                    super::pack::to_ns(now),
                    RecipientStatus::Expired.code(),
                    RecipientStatus::Pending.code()
                ],
            )
            .map_err(db)? as u64;
        count_move(
            &tx,
            run_id,
            Some(RecipientStatus::Pending),
            RecipientStatus::Expired,
            n,
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE run_stages SET state = 'expired', finished_at = ?3, detail = ?4
             WHERE run_id = ?1 AND idx = ?2",
            params![run_id, i64::from(idx), ts(now), why],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_recorded_once_and_keep_their_times() {
        let dir = tempfile::tempdir().expect("dir");
        let mut j = Journal::open(dir.path()).expect("journal");
        let t0: Timestamp = "2026-03-01T09:00:00Z".parse().expect("t");
        let s = |name: &str, nb| NewStage {
            name: name.into(),
            first_call: 0,
            calls: 1,
            recipients: 5,
            not_before: nb,
            gated: name == "canary",
        };
        j.record_stages("r1", &[s("canary", None), s("rest", Some(t0))])
            .expect("record");
        j.set_stage_gate("r1", 0, "waiting", Some(t0), None)
            .expect("gate");
        // A resume records again: nothing changes.
        j.record_stages("r1", &[s("canary", None), s("rest", None)])
            .expect("again");
        let rows = j.stages("r1").expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].gate.as_deref(), Some("waiting"));
        assert_eq!(rows[0].gate_at, Some(t0));
        assert_eq!(rows[1].gate, None);
        assert_eq!(rows[1].not_before, Some(t0));
        j.set_stage_state("r1", 1, "sending", t0).expect("state");
        j.set_stage_state("r1", 1, "sent", t0).expect("state");
        let rows = j.stages("r1").expect("rows");
        assert_eq!(rows[1].state, "sent");
        assert_eq!(rows[1].started_at, Some(t0));
        assert_eq!(rows[1].finished_at, Some(t0));
    }
}
