//! The audit of invocations: one `run_invocations` row per `imcast run` (or daemon start) that
//! opened a run — created it, resumed it, continued it, reopened it for `--resend-unknown`, or
//! started a `--retry-failed` follow-up — with who (user, host), when, which imcast and the flags
//! of that invocation. The run row's `audit` block and `flags` stay what they were at creation;
//! this table is what a resume adds.
//!
//! Why a table and not a list inside `runs.audit`: an invocation is appended by one INSERT in the
//! same transaction as the decision it records (no read-modify-write of a JSON text, nothing to
//! lose if two processes race: the loser's transaction, its row included, rolls back), rows are
//! typed, and the run row (read by every status query) does not grow with each resume.
//! Migration 6 gives every older run its creation as the first row.
//!
//! Invariants: rows are only appended (`seq` 1, 2, … per run), never changed; a row commits
//! with its decision or not at all; pruning a run deletes its rows. Must not: record an
//! invocation that changed nothing (an "already finished" answer).

use crate::store::params;
use jiff::Timestamp;

use super::schema::{parse_ts, ts};
use super::{Journal, JournalError, NewRun, Ops, RunFlags};

/// One invocation that opened a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub at: Timestamp,
    /// What it did to the run: `created`, `resumed`, `continued` (a changed run continued as this
    /// one), `retry` (this run was created by `--retry-failed`).
    pub decision: String,
    /// `run` (the command line) or `daemon` (a schedule occurrence).
    pub via: String,
    pub user: Option<String>,
    pub host: Option<String>,
    pub imcast_version: Option<String>,
    /// The flags of this invocation (not the run's first).
    pub flags: RunFlags,
}

impl Journal {
    /// The invocations that opened a run, oldest first.
    pub fn invocations(&self, run_id: &str) -> Result<Vec<Invocation>, JournalError> {
        // `"user"` is quoted: a reserved word on PostgreSQL (`user` alone is `current_user`).
        let raws = self
            .conn
            .query_map(
                "SELECT at, decision, via, \"user\", host, imcast_version, flags FROM run_invocations
                 WHERE run_id = ?1 ORDER BY seq",
                params![run_id],
                |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Option<String>>(3)?,
                    r.get::<Option<String>>(4)?,
                    r.get::<Option<String>>(5)?,
                    r.get::<String>(6)?,
                ))
                },
            )
            .map_err(self.db())?;
        raws.into_iter()
            .map(|(at, decision, via, user, host, imcast_version, flags)| {
                Ok(Invocation {
                    at: parse_ts(&at)?,
                    decision,
                    via,
                    user,
                    host,
                    imcast_version,
                    flags: serde_json::from_str(&flags)
                        .map_err(|e| JournalError::Corrupt(format!("invocation flags: {e}")))?,
                })
            })
            .collect()
    }
}

impl Ops<'_> {
    /// Append an invocation of `run_id`: `new`'s flags and audit block (user, host, imcast
    /// version) are this invocation's. Runs inside the decision's transaction.
    pub(super) fn record_invocation(
        &self,
        run_id: &str,
        decision: &str,
        new: &NewRun,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let flags =
            serde_json::to_string(&new.flags).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let text = |key: &str| {
            new.audit
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let via = if new.occurrence.is_some() {
            "daemon"
        } else {
            "run"
        };
        self.conn
            .execute(
                "INSERT INTO run_invocations(run_id, seq, at, decision, via, \"user\", host, imcast_version, flags)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_invocations WHERE run_id = ?1),
                         ?2, ?3, ?4, ?5, ?6, ?7, ?8)", params![
                run_id,
                ts(now),
                decision,
                via,
                text("user").as_deref(),
                text("host").as_deref(),
                text("imcast_version").as_deref(),
                &flags
            ])
            .map_err(self.db())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::testutil::*;
    use crate::journal::*;

    #[test]
    fn every_invocation_that_opens_a_run_is_appended_with_its_own_flags() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let mut new = new_run("h1");
        new.flags.yes = true;
        new.audit = serde_json::json!({"user": "ana", "host": "box", "imcast_version": "9.9.9"});
        let r = rows(&[]);
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        let id = j
            .open_run(&new, ResumeOptions::default(), &mut f, now())
            .expect("create")
            .run()
            .id
            .clone();
        // The process died; the next invocation resumes with other flags and another user.
        j.set_status(&id, RunStatus::Interrupted, None, now())
            .expect("stop");
        new.flags.resend_unknown = true;
        new.audit["user"] = "bo".into();
        let later = now() + jiff::SignedDuration::from_secs(60);
        let o = ResumeOptions {
            resend_unknown: true,
            ..ResumeOptions::default()
        };
        assert!(matches!(
            j.open_run(&new, o, &mut f, later).expect("resume"),
            Opened::Resumed { .. }
        ));
        j.set_status(&id, RunStatus::Finished, None, later)
            .expect("finish");
        // "Already finished" changed nothing: not recorded.
        assert!(matches!(
            j.open_run(&new, ResumeOptions::default(), &mut f, later)
                .expect("done"),
            Opened::AlreadyFinished(_)
        ));
        let inv = j.invocations(&id).expect("invocations");
        let got: Vec<(&str, Option<&str>, Vec<String>, Timestamp)> = inv
            .iter()
            .map(|i| {
                (
                    i.decision.as_str(),
                    i.user.as_deref(),
                    i.flags.to_args(),
                    i.at,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("created", Some("ana"), vec!["--yes".to_string()], now()),
                (
                    "resumed",
                    Some("bo"),
                    vec!["--resend-unknown".to_string(), "--yes".to_string()],
                    later
                ),
            ]
        );
        assert!(inv.iter().all(|i| i.via == "run"
            && i.host.as_deref() == Some("box")
            && i.imcast_version.as_deref() == Some("9.9.9")));

        // A schedule occurrence's run is the daemon's.
        new.occurrence = Some("2026-03-01T09:00:00Z".into());
        new.flags = RunFlags {
            yes: true,
            ..RunFlags::default()
        };
        let daemon_run = j
            .open_run(&new, ResumeOptions::default(), &mut f, later)
            .expect("occurrence")
            .run()
            .id
            .clone();
        let inv = j.invocations(&daemon_run).expect("invocations");
        assert_eq!(
            (inv.len(), inv[0].via.as_str(), inv[0].decision.as_str()),
            (1, "daemon", "created")
        );
    }
}
