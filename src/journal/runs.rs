//! Run rows: reading runs (by id, latest of a campaign, the unfinished one of an occurrence) and
//! setting a run's status.
//!
//! Invariants: finished and cancelled runs get `finished_at` and lose their lease; any status but
//! `running` releases the lease; [`Journal::set_status`] checks the run's fence (see `lease`) in
//! its transaction. Must not: create runs (only [`Journal::open_run`] does, in
//! `resume`).

use std::time::Duration;

use crate::store::{params, OptionalExtension};
use jiff::Timestamp;

use super::schema::{parse_ts, ts};
use super::{Journal, JournalError, Ops, RunInfo, RunStatus};
use crate::action::Action;
use crate::config::Limit;

/// The columns [`Journal::run_from_row`] reads, in its order.
macro_rules! run_columns {
    () => {
        "id, campaign, occurrence, plan_hash, content_key, action, status, flags, is_test, \
         created_at, updated_at, finished_at, stop_reason, audit, limit_count, limit_window_ms, \
         total_calls, continued_from, retry_of"
    };
}

impl Journal {
    /// A run row selected with [`RUN_COLUMNS`] (named, in this order: `SELECT *` would follow
    /// each backend's column order).
    fn run_from_row(r: &crate::store::Row) -> Result<RawRun, crate::store::StoreError> {
        Ok(RawRun {
            id: r.get(0)?,
            campaign: r.get(1)?,
            occurrence: r.get(2)?,
            plan_hash: r.get(3)?,
            content_key: r.get(4)?,
            action: r.get(5)?,
            status: r.get(6)?,
            flags: r.get(7)?,
            is_test: r.get(8)?,
            created_at: r.get(9)?,
            updated_at: r.get(10)?,
            finished_at: r.get(11)?,
            stop_reason: r.get(12)?,
            audit: r.get(13)?,
            limit_count: r.get(14)?,
            limit_window_ms: r.get(15)?,
            total_calls: r.get(16)?,
            continued_from: r.get(17)?,
            retry_of: r.get(18)?,
        })
    }

    /// One run by id.
    pub fn run(&self, id: &str) -> Result<Option<RunInfo>, JournalError> {
        self.ops().run(id)
    }

    /// The latest run of a campaign (tests excluded unless asked for).
    pub fn latest_run(
        &self,
        campaign: &str,
        include_tests: bool,
    ) -> Result<Option<RunInfo>, JournalError> {
        one_run(
            &self.conn,
            concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE campaign = ?1 AND (?2 = 1 OR is_test = 0)
                 ORDER BY created_at DESC, key DESC LIMIT 1"
            ),
            params![campaign, include_tests],
            self.db(),
        )
    }

    /// The unfinished (running/paused/interrupted) non-test run of a campaign occurrence (the
    /// database holds at most one).
    pub fn unfinished_run(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        self.ops().unfinished_run(campaign, occurrence)
    }

    /// All runs of a campaign, newest first.
    pub fn runs(&self, campaign: &str) -> Result<Vec<RunInfo>, JournalError> {
        let raws = self
            .conn
            .query_map(
                concat!(
                    "SELECT ",
                    run_columns!(),
                    " FROM runs WHERE campaign = ?1 ORDER BY created_at DESC, key DESC"
                ),
                params![campaign],
                Self::run_from_row,
            )
            .map_err(self.db())?;
        raws.into_iter().map(RawRun::into_info).collect()
    }

    /// Every campaign with a run in the journal (test runs included), sorted.
    pub fn campaigns(&self) -> Result<Vec<String>, JournalError> {
        let names = self
            .conn
            .query_map(
                "SELECT DISTINCT campaign FROM runs ORDER BY campaign",
                params![],
                |r| r.get::<String>(0),
            )
            .map_err(self.db())?;
        Ok(names)
    }

    /// Set a run's status (and why it stopped); finished/cancelled also set finished_at and release.
    pub fn set_status(
        &self,
        run_id: &str,
        status: RunStatus,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let tx = self.fenced(run_id)?;
        self.ops().set_status(run_id, status, reason, now)?;
        tx.commit().map_err(self.db())
    }
}

/// The run `sql` (selecting [`run_columns!`]) finds with `params`, if any.
fn one_run(
    conn: &crate::store::Conn,
    sql: &str,
    params: &[crate::store::Value<'_>],
    db: impl Fn(crate::store::StoreError) -> JournalError,
) -> Result<Option<RunInfo>, JournalError> {
    conn.query_row(sql, params, Journal::run_from_row)
        .optional()
        .map_err(db)?
        .map(RawRun::into_info)
        .transpose()
}

/// An action's stored name.
pub(super) fn parse_action(s: &str) -> Result<Action, JournalError> {
    Action::ALL
        .iter()
        .copied()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| JournalError::Corrupt(format!("action {s:?}")))
}

impl Ops<'_> {
    pub(super) fn run(&self, id: &str) -> Result<Option<RunInfo>, JournalError> {
        one_run(
            self.conn,
            concat!("SELECT ", run_columns!(), " FROM runs WHERE id = ?1"),
            params![id],
            self.db(),
        )
    }

    pub(super) fn existing_run(&self, id: &str) -> Result<RunInfo, JournalError> {
        self.run(id)?
            .ok_or_else(|| JournalError::NoRun(id.to_string()))
    }

    pub(super) fn unfinished_run(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        one_run(
            self.conn,
            concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE campaign = ?1 AND occurrence IS NOT DISTINCT FROM ?2
                   AND is_test = 0 AND status IN ('running','paused','interrupted')
                 ORDER BY created_at DESC, key DESC LIMIT 1"
            ),
            params![campaign, occurrence],
            self.db(),
        )
    }

    /// The latest non-test run of a campaign occurrence (`None` = runs started by `imcast run`).
    pub(super) fn latest_of_occurrence(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<Option<RunInfo>, JournalError> {
        one_run(
            self.conn,
            concat!(
                "SELECT ",
                run_columns!(),
                " FROM runs WHERE campaign = ?1 AND occurrence IS NOT DISTINCT FROM ?2
                   AND is_test = 0 ORDER BY created_at DESC, key DESC LIMIT 1"
            ),
            params![campaign, occurrence],
            self.db(),
        )
    }

    pub(super) fn set_status(
        &self,
        run_id: &str,
        status: RunStatus,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let done = matches!(status, RunStatus::Finished | RunStatus::Cancelled);
        let n = self
            .conn
            .execute(
                "UPDATE runs SET status = ?2, stop_reason = ?3, updated_at = ?4,
                     finished_at = CASE WHEN ?5 = 1 THEN ?4 ELSE NULL END,
                     owner = CASE WHEN ?5 = 1 OR ?2 <> 'running' THEN NULL ELSE owner END
                 WHERE id = ?1",
                params![run_id, status.as_str(), reason, ts(now), done],
            )
            .map_err(self.db())?;
        if n == 0 {
            return Err(JournalError::NoRun(run_id.into()));
        }
        Ok(())
    }
}

struct RawRun {
    id: String,
    campaign: String,
    occurrence: Option<String>,
    plan_hash: String,
    content_key: Option<String>,
    action: String,
    status: String,
    flags: String,
    is_test: bool,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
    stop_reason: Option<String>,
    audit: String,
    limit_count: i64,
    limit_window_ms: i64,
    total_calls: i64,
    continued_from: Option<String>,
    retry_of: Option<String>,
}

impl RawRun {
    fn into_info(self) -> Result<RunInfo, JournalError> {
        let action = parse_action(&self.action)?;
        Ok(RunInfo {
            action,
            status: self.status.parse()?,
            flags: serde_json::from_str(&self.flags)
                .map_err(|e| JournalError::Corrupt(format!("flags: {e}")))?,
            audit: serde_json::from_str(&self.audit)
                .map_err(|e| JournalError::Corrupt(format!("audit: {e}")))?,
            created_at: parse_ts(&self.created_at)?,
            updated_at: parse_ts(&self.updated_at)?,
            finished_at: self.finished_at.as_deref().map(parse_ts).transpose()?,
            limit: Limit::new(
                self.limit_count.max(0) as u64,
                Duration::from_millis(self.limit_window_ms.max(0) as u64),
            ),
            total_calls: self.total_calls.max(0) as u64,
            id: self.id,
            campaign: self.campaign,
            occurrence: self.occurrence,
            plan_hash: self.plan_hash,
            content_key: self.content_key,
            is_test: self.is_test,
            stop_reason: self.stop_reason,
            continued_from: self.continued_from,
            retry_of: self.retry_of,
        })
    }
}
