//! Control requests: pause/resume/cancel per campaign, written by `imcast pause|resume|cancel`
//! and acted on by whoever runs the campaign — the engine of an `imcast run` (polls every second)
//! or the daemon (every tick).
//!
//! Invariants: one request per campaign, the latest wins. Must not: act on a request (the
//! runners do); know the daemon's log of what it did (it passes that as a step of
//! [`Journal::finish_control`]'s transaction).

use jiff::Timestamp;
use rusqlite::{params, OptionalExtension};

use super::schema::ts;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

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

impl Journal {
    /// Record a pause/resume/cancel request for a campaign (the latest wins).
    pub fn request_control(
        &self,
        campaign: &str,
        req: ControlRequest,
        by: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT INTO control(campaign, request, requested_at, requested_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(campaign) DO UPDATE SET request = excluded.request,
                     requested_at = excluded.requested_at, requested_by = excluded.requested_by",
                params![campaign, req.as_str(), ts(now), by],
            )
            .map_err(self.db())?;
        Ok(())
    }

    /// The pending control request for a campaign, if any.
    pub fn control(&self, campaign: &str) -> Result<Option<ControlRequest>, JournalError> {
        let s: Option<String> = self
            .conn
            .query_row(
                "SELECT request FROM control WHERE campaign = ?1",
                [campaign],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.db())?;
        s.map(|s| s.parse()).transpose()
    }

    /// Forget a campaign's control request (after acting on it).
    pub fn clear_control(&self, campaign: &str) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM control WHERE campaign = ?1", [campaign])
            .map_err(self.db())?;
        Ok(())
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
}
