//! Control requests: pause/resume/cancel per campaign, written by `imcast pause|resume|cancel`
//! and acted on by whoever runs the campaign — the engine of an `imcast run` (polls every second)
//! or the daemon (every tick). The `control` table is the one channel both read; this module is
//! its only reader and writer.
//!
//! Invariants: one request per campaign, the latest wins; finishing a request removes it only
//! if no newer one replaced it meanwhile. Must not: act on a request (the runners do); know the
//! daemon's log of what it did (the daemon passes that as a step of
//! [`Journal::finish_control`]'s transaction).

use std::fmt;
use std::str::FromStr;

use crate::store::{params, OptionalExtension};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::schema::{parse_ts, ts};
use super::types::str_enum;
use super::{Journal, JournalError};

str_enum!(
    /// A control request for a campaign (written by `imcast pause|resume|cancel`, read by runners).
    ControlRequest {
        Pause = "pause",
        Resume = "resume",
        Cancel = "cancel",
    }
);

/// A request waiting in the journal for whoever runs its campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingControl {
    pub campaign: String,
    pub request: ControlRequest,
    /// When it was made: identifies it when it is finished (a newer request replaces it).
    pub requested_at: Timestamp,
    pub requested_by: Option<String>,
}

impl Journal {
    /// Record a pause/resume/cancel request for a campaign (the latest wins).
    pub fn request_control(
        &self,
        campaign: &str,
        req: ControlRequest,
        by: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let tx = self.begin_write()?;
        tx.execute(
                "INSERT INTO control(campaign, request, requested_at, requested_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(campaign) DO UPDATE SET request = excluded.request,
                     requested_at = excluded.requested_at, requested_by = excluded.requested_by",
                params![campaign, req.as_str(), ts(now), by],
            )
            .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }

    /// The pending control request for a campaign, if any.
    pub fn control(&self, campaign: &str) -> Result<Option<ControlRequest>, JournalError> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT request FROM control WHERE campaign = ?1",
                params![campaign],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())?;
        s.map(|s| s.parse()).transpose()
    }

    /// Whether a request for `campaign` is still waiting (nobody acted on it yet).
    pub fn control_pending(&self, campaign: &str) -> Result<bool, JournalError> {
        Ok(self
            .conn
            .query_opt(
                "SELECT 1 FROM control WHERE campaign = ?1",
                params![campaign],
                |_| Ok(()),
            )
            .map_err(self.db())?
            .is_some())
    }

    /// Every waiting request, by campaign. A row this version cannot read (a request kind it does
    /// not know) is left for whoever can.
    pub fn pending_controls(&self) -> Result<Vec<PendingControl>, JournalError> {
        let rows = self
            .conn
            .query_map(
                "SELECT campaign, request, requested_at, requested_by FROM control ORDER BY campaign",
                params![],
                |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Option<String>>(3)?,
                ))
                },
            )
            .map_err(self.db())?;
        Ok(rows
            .into_iter()
            .filter_map(|(campaign, request, at, by)| {
                Some(PendingControl {
                    campaign,
                    request: request.parse().ok()?,
                    requested_at: parse_ts(&at).ok()?,
                    requested_by: by,
                })
            })
            .collect())
    }

    /// The engine of run `run_id`'s poll: the campaign's request, and if it is a pause or a
    /// cancel (which the engine acts on by stopping), removed in the same transaction, fenced by
    /// the run's lease. A process whose run was taken over gets [`JournalError::Fenced`] and
    /// removes nothing, so a pause meant for the new holder is never consumed by the old one
    /// (which would then stop, while the new holder never saw the pause and went on sending).
    pub fn take_control(
        &self,
        run_id: &str,
        campaign: &str,
    ) -> Result<Option<ControlRequest>, JournalError> {
        let stops = |c: &Option<ControlRequest>| {
            matches!(c, Some(ControlRequest::Pause | ControlRequest::Cancel))
        };
        // Most polls find nothing: read without the write lock first.
        if !stops(&self.control(campaign)?) {
            return self.control(campaign);
        }
        let tx = self.fenced(run_id)?;
        let c = self.control(campaign)?;
        if stops(&c) {
            tx.execute("DELETE FROM control WHERE campaign = ?1", params![campaign])
                .map_err(self.db())?;
        }
        tx.commit().map_err(self.db())?;
        Ok(c)
    }

    /// Forget a campaign's control request, whichever it is (`imcast` commands outside a run;
    /// a run's engine uses [`Journal::take_control`], which is fenced).
    pub fn clear_control(&self, campaign: &str) -> Result<(), JournalError> {
        let tx = self.begin_write()?;
        tx.execute("DELETE FROM control WHERE campaign = ?1", params![campaign])
            .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }

    /// `req` was acted on: remove it (unless a newer request for the campaign replaced it
    /// meanwhile) and, in the same transaction, run `and_then` — the caller's own record of what
    /// it did (the daemon logs it in its `sched_control` table through `j.connection()`). If
    /// `and_then` fails, nothing is removed. Returns whether `req` was still waiting.
    ///
    /// `and_then` runs inside this transaction: it must not call a journal method that begins
    /// one itself.
    pub fn finish_control<E: From<JournalError>>(
        &self,
        req: &PendingControl,
        and_then: impl FnOnce(&Journal) -> Result<(), E>,
    ) -> Result<bool, E> {
        let tx = self.begin_write()?;
        let removed = tx
            .execute(
                "DELETE FROM control WHERE campaign = ?1 AND requested_at = ?2",
                params![req.campaign, ts(req.requested_at)],
            )
            .map_err(self.db())?;
        and_then(self)?;
        tx.commit().map_err(self.db())?;
        Ok(removed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::testutil::*;

    #[test]
    fn control_requests_round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(d.path()).expect("open");
        assert_eq!(j.control("c").expect("q"), None);
        j.request_control("c", ControlRequest::Pause, Some("ops"), now())
            .expect("req");
        assert_eq!(j.control("c").expect("q"), Some(ControlRequest::Pause));
        j.clear_control("c").expect("clear");
        assert_eq!(j.control("c").expect("q"), None);
    }

    #[test]
    fn finishing_a_request_keeps_a_newer_one_and_commits_with_the_callers_step() {
        let d = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(d.path()).expect("open");
        j.connection()
            .execute_batch("CREATE TABLE log(campaign TEXT, request TEXT)")
            .expect("the caller's table");
        let logged = |j: &Journal| -> i64 {
            j.connection()
                .query_row("SELECT COUNT(*) FROM log", &[], |r| r.get(0))
                .expect("count")
        };
        let t0 = now();
        let t1 = t0 + jiff::SignedDuration::from_millis(1500);
        j.request_control("a", ControlRequest::Pause, Some("imcast pause"), t0)
            .expect("req");
        j.request_control("b", ControlRequest::Cancel, None, t0)
            .expect("req");
        let pending = j.pending_controls().expect("pending");
        assert_eq!(
            pending,
            [
                PendingControl {
                    campaign: "a".into(),
                    request: ControlRequest::Pause,
                    requested_at: t0,
                    requested_by: Some("imcast pause".into()),
                },
                PendingControl {
                    campaign: "b".into(),
                    request: ControlRequest::Cancel,
                    requested_at: t0,
                    requested_by: None,
                },
            ]
        );
        // A failing step of the caller: nothing changes.
        let e = j
            .finish_control(&pending[0], |_| {
                Err::<(), JournalError>(JournalError::Corrupt("step failed".into()))
            })
            .expect_err("the step failed");
        assert!(e.to_string().contains("step failed"), "{e}");
        assert!(j.control_pending("a").expect("q"));
        // A newer request (fractional seconds too) replaced `a`'s: finishing the old one keeps it.
        j.request_control("a", ControlRequest::Resume, None, t1)
            .expect("req");
        fn log(j: &Journal, req: &PendingControl) -> Result<(), JournalError> {
            j.connection()
                .execute(
                    "INSERT INTO log VALUES (?1, ?2)",
                    crate::store::params![req.campaign.as_str(), req.request.as_str()],
                )
                .map(|_| ())
                .map_err(j.db())
        }
        assert!(!j
            .finish_control(&pending[0], |j| log(j, &pending[0]))
            .expect("finish"));
        assert_eq!(j.control("a").expect("q"), Some(ControlRequest::Resume));
        assert_eq!(
            logged(&j),
            1,
            "the step commits whether or not the request was there"
        );
        let newer = j.pending_controls().expect("pending");
        assert_eq!(newer[0].requested_at, t1);
        assert!(j
            .finish_control(&newer[0], |j| log(j, &newer[0]))
            .expect("finish"));
        assert!(!j.control_pending("a").expect("q"));
        assert!(j.control_pending("b").expect("q"));
        assert_eq!(logged(&j), 2);
    }
}
