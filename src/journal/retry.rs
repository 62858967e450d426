//! `--retry-failed`: a follow-up run for the recipients whose final status in the last finished
//! run of a campaign (occurrence) is `failed` with a retryable code, after a person fixed the
//! cause. Which codes are retryable is the caller's predicate (the provider's classification,
//! `provider::retryable_failure`): the journal only stores codes.
//!
//! The follow-up is a new run (`runs.retry_of` = the run it retries) seeded with the current
//! audience's rows of exactly those recipients (with their current status: one suppressed since
//! stays suppressed) — nobody else: the report of the follow-up lists only them, and the run
//! it retries keeps its own report. `unknown` recipients stay behind `--resend-unknown`.
//!
//! Invariants: the decision, the run row, its rows and the invocation commit in one IMMEDIATE
//! transaction (as [`Journal::open_run`]); a campaign with an unfinished run is refused (resume
//! it first) unless that run is itself an interrupted follow-up of the same plan, which is
//! resumed; nothing is created when nothing would be sent. A follow-up run never seeds a row of
//! a recipient the retried run did not fail retryably, so the engine's per-call look-up sends
//! nobody else (`Journal::all_valid_pending` is false for it: not every plan receiver is in the
//! run). Must not: send, or decide what is retryable.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::store::params;
use jiff::Timestamp;

use super::counts::count_move;
use super::rows::{NewRow, RowWriter, Seeder};
use super::schema::{rk_range, run_key, ts, MAX_LINE};
use super::{
    new_run_id, Journal, JournalError, NewRun, Opened, Ops, RecipientStatus, RunInfo, RunStatus,
    SeedRows,
};
use crate::output::count;

/// What `--retry-failed` would send: the run it follows up and that run's failures by code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCandidates {
    /// The last finished run.
    pub run_id: String,
    /// `failed` recipients with a retryable code, per code.
    pub retryable: BTreeMap<String, u64>,
    /// `failed` recipients with another code (not retried), per code (`(none)` without one).
    pub other: BTreeMap<String, u64>,
    /// `unknown` recipients (not retried: `--resend-unknown`).
    pub unknown: u64,
}

impl RetryCandidates {
    /// Recipients `--retry-failed` sends again (if still in the audience).
    pub fn retryable_total(&self) -> u64 {
        self.retryable.values().sum()
    }

    /// Failed recipients it leaves alone.
    pub fn other_total(&self) -> u64 {
        self.other.values().sum()
    }
}

/// `code n, code n` for people.
pub fn describe_codes(by_code: &BTreeMap<String, u64>) -> String {
    by_code
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for RetryCandidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of run {} to send again",
            count(
                self.retryable_total(),
                "failed recipient",
                "failed recipients"
            ),
            self.run_id
        )?;
        if !self.retryable.is_empty() {
            write!(f, " ({})", describe_codes(&self.retryable))?;
        }
        let mut rest = Vec::new();
        if self.other_total() > 0 {
            rest.push(format!(
                "{} failed with a code that is not retryable ({})",
                self.other_total(),
                describe_codes(&self.other)
            ));
        }
        if self.unknown > 0 {
            rest.push(format!(
                "{} unknown (--resend-unknown resends them)",
                self.unknown
            ));
        }
        if !rest.is_empty() {
            write!(f, "; not retried: {}", rest.join(", "))?;
        }
        Ok(())
    }
}

impl Journal {
    /// What `--retry-failed` would send for this campaign occurrence now (reads only). The same
    /// refusals as [`Journal::open_retry_run`] (no finished run, an unfinished run, nothing
    /// retryable) are errors.
    pub fn retry_candidates(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
        retryable: &dyn Fn(&str) -> bool,
    ) -> Result<RetryCandidates, JournalError> {
        let ops = self.ops();
        if let Some(old) = ops.unfinished_run(campaign, occurrence)? {
            return Err(unfinished(campaign, &old));
        }
        let last = ops.retry_source(campaign, occurrence)?;
        let c = ops.candidates(&last, retryable)?;
        if c.retryable_total() == 0 {
            return Err(nothing_to_retry(campaign, &c));
        }
        Ok(c)
    }

    /// Start the `--retry-failed` follow-up of the last finished run of `new`'s campaign
    /// occurrence (see the module doc): a new run of `new` with `retry_of` set, seeded from
    /// `rows` (called at most once) with the recipients that run failed with a code `retryable`
    /// accepts. An unfinished follow-up of the same plan is resumed instead.
    pub fn open_retry_run<'r, E: fmt::Display + Send>(
        &mut self,
        new: &NewRun,
        retryable: &dyn Fn(&str) -> bool,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        self.decide(new, now, |ops| {
            ops.open_retry_run(new, retryable, rows, now)
        })
    }
}

fn unfinished(campaign: &str, old: &RunInfo) -> JournalError {
    JournalError::Retry(format!(
        "campaign {campaign:?} has an unfinished run {} ({}); nothing was sent. --retry-failed \
         follows up a finished run: resume this one first (imcast run without --retry-failed), \
         then retry what failed",
        old.id, old.status
    ))
}

fn nothing_to_retry(campaign: &str, c: &RetryCandidates) -> JournalError {
    let mut why = String::new();
    if c.other_total() > 0 {
        why.push_str(&format!(
            "; {} failed with a code that is not retryable ({}): fix the cause and send them with \
             --new-run",
            count(c.other_total(), "recipient", "recipients"),
            describe_codes(&c.other)
        ));
    }
    if c.unknown > 0 {
        why.push_str(&format!(
            "; {} unknown: --resend-unknown resends them (may duplicate)",
            count(c.unknown, "recipient is", "recipients are")
        ));
    }
    JournalError::Retry(format!(
        "nothing to retry: run {} of campaign {campaign:?} has no failed recipient with a \
         retryable code{why}. Nothing was sent",
        c.run_id
    ))
}

impl Ops<'_> {
    /// The last non-test run of the occurrence, which must have finished.
    fn retry_source(
        &self,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> Result<RunInfo, JournalError> {
        let Some(last) = self.latest_of_occurrence(campaign, occurrence)? else {
            return Err(JournalError::Retry(format!(
                "campaign {campaign:?} has no finished run to retry (no run in this state \
                 directory yet); nothing was sent. Send it with imcast run first"
            )));
        };
        if last.status != RunStatus::Finished {
            return Err(JournalError::Retry(format!(
                "the last run {} of campaign {campaign:?} is {}, not finished; nothing was sent. \
                 --retry-failed follows up a finished run",
                last.id, last.status
            )));
        }
        Ok(last)
    }

    fn candidates(
        &self,
        last: &RunInfo,
        retryable: &dyn Fn(&str) -> bool,
    ) -> Result<RetryCandidates, JournalError> {
        let key = run_key(self.conn, &last.id)
            .map_err(self.db())?
            .ok_or_else(|| JournalError::NoRun(last.id.clone()))?;
        let (lo, hi) = rk_range(key);
        let by_code = self
            .conn
            .query_map(
                "SELECT error_code, COUNT(*) FROM recipients
                 WHERE rk BETWEEN ?1 AND ?2 AND status = ?3 GROUP BY error_code",
                params![lo, hi, RecipientStatus::Failed.code()],
                |r| Ok((r.get::<Option<String>>(0)?, r.get::<i64>(1)?)),
            )
            .map_err(self.db())?;
        let mut c = RetryCandidates {
            run_id: last.id.clone(),
            retryable: BTreeMap::new(),
            other: BTreeMap::new(),
            unknown: self.count_status(&last.id, RecipientStatus::Unknown)?,
        };
        for (code, n) in by_code {
            let n = n.max(0) as u64;
            match code {
                Some(code) if retryable(&code) => *c.retryable.entry(code).or_default() += n,
                Some(code) => *c.other.entry(code).or_default() += n,
                None => *c.other.entry("(none)".into()).or_default() += n,
            }
        }
        Ok(c)
    }

    /// See [`Journal::open_retry_run`]; runs inside its transaction.
    fn open_retry_run<'r, E: fmt::Display + Send>(
        &self,
        new: &NewRun,
        retryable: &dyn Fn(&str) -> bool,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        let campaign = new.campaign.as_str();
        let occurrence = new.occurrence.as_deref();
        if new.is_test {
            return Err(JournalError::Retry(
                "--retry-failed follows up a campaign's run, not a --test-to run".into(),
            ));
        }
        if let Some(old) = self.unfinished_run(campaign, occurrence)? {
            if old.retry_of.is_some() && old.plan_hash == new.plan_hash {
                // An interrupted follow-up: resume it (it only holds the retried recipients).
                self.claim(&old, now)?;
                let recovered = self.recover(&old.id, old.action)?;
                self.set_status(&old.id, RunStatus::Running, None, now)?;
                let run = self.existing_run(&old.id)?;
                return Ok(Opened::Resumed { run, recovered });
            }
            return Err(unfinished(campaign, &old));
        }
        let last = self.retry_source(campaign, occurrence)?;
        let db = self.db();
        let old_key = run_key(self.conn, &last.id)
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(last.id.clone()))?;
        let (lo, hi) = rk_range(old_key);
        let mut ids: HashSet<u64> = HashSet::new();
        {
            // Streamed: a run of millions may have many failed rows (only the retryable ids
            // are kept).
            self.conn
                .for_each(
                    "SELECT id, error_code FROM recipients
                     WHERE rk BETWEEN ?1 AND ?2 AND status = ?3 AND id IS NOT NULL",
                    params![lo, hi, RecipientStatus::Failed.code()],
                    |r| {
                        if r.str(1)?.is_some_and(retryable) {
                            ids.insert(r.get::<i64>(0)? as u64);
                        }
                        Ok(())
                    },
                )
                .and_then(|r| r)
                .map_err(&db)?;
        }
        if ids.is_empty() {
            return Err(nothing_to_retry(
                campaign,
                &self.candidates(&last, retryable)?,
            ));
        }

        let id = new.id.clone().unwrap_or_else(|| new_run_id(now));
        let flags =
            serde_json::to_string(&new.flags).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let mut audit = new.audit.clone();
        if let Some(o) = audit.as_object_mut() {
            o.insert("retry_of".into(), serde_json::Value::from(last.id.clone()));
        }
        let audit =
            serde_json::to_string(&audit).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        self.conn
            .execute(
                "INSERT INTO runs(id, campaign, occurrence, plan_hash, content_key, action, status, flags, is_test,
                                  created_at, updated_at, audit, limit_count, limit_window_ms, total_calls,
                                  owner, retry_of, key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, 0, ?8, ?8, ?9, ?10, ?11, ?14, ?12, ?13,
                         (SELECT COALESCE(MAX(key), 0) + 1 FROM runs))",
                params![
                    id,
                    new.campaign,
                    new.occurrence,
                    new.plan_hash,
                    new.content_key,
                    new.action.as_str(),
                    flags,
                    ts(now),
                    audit,
                    new.limit.limit as i64,
                    new.limit.window.as_millis() as i64,
                    self.owner.id(),
                    last.id,
                    // The plan's calls, as for any run: call numbers from here up resend
                    // re-queued receivers (`calls::prepare_requeue`), so none may collide with a
                    // plan call's, although most plan calls send nothing in a follow-up.
                    new.total_calls as i64,
                ],
            )
            .map_err(&db)?;
        self.take(&id, now)?;
        let key = run_key(self.conn, &id)
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(id.clone()))?;
        let mut seeder = Seeder::new(key);
        let mut seeded: BTreeMap<RecipientStatus, u64> = BTreeMap::new();
        let mut found: HashSet<u64> = HashSet::new();
        {
            let mut ins = RowWriter::new(self.conn).map_err(&db)?;
            for row in rows() {
                let row = row.map_err(|e| JournalError::Seed(e.to_string()))?;
                let Some(rid) = row.id.filter(|v| ids.contains(v)) else {
                    continue;
                };
                if row.line > MAX_LINE {
                    return Err(JournalError::Seed(format!(
                        "audience line {} is beyond the {MAX_LINE} lines a run can hold",
                        row.line
                    )));
                }
                found.insert(rid);
                *seeded.entry(row.status).or_default() += 1;
                let raw_id = row.stored_raw_id();
                let variant = seeder.row(row.line, row.call_seq, row.variant.as_deref());
                ins.write(NewRow {
                    rk: (key << 32) | row.line as i64,
                    id: Some(rid as i64),
                    raw_id,
                    status: row.status.code(),
                    call_seq: row.call_seq.map(|v| v as i64),
                    variant,
                    error_message: row.note.as_deref(),
                    message_id: None,
                    detail: None,
                    at: None,
                    variant_name: None,
                })
                .map_err(&db)?;
            }
            ins.finish().map_err(&db)?;
        }
        seeder.finish(self.conn).map_err(&db)?;
        let retried = seeded.get(&RecipientStatus::Pending).copied().unwrap_or(0);
        if retried == 0 {
            return Err(JournalError::Retry(format!(
                "nothing to retry: the {} that run {} of campaign {campaign:?} failed with a \
                 retryable code are no longer in the audience, or are suppressed or invalid now. \
                 Nothing was sent",
                count(ids.len() as u64, "recipient", "recipients"),
                last.id
            )));
        }
        for (status, n) in seeded {
            count_move(self.conn, &id, None, status, n).map_err(&db)?;
        }
        let run = self.existing_run(&id)?;
        Ok(Opened::Retry {
            run,
            of: last.id,
            retried,
            left_out: (ids.len() - found.len()) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::testutil::*;
    use crate::journal::*;

    fn upd(id: u64, status: RecipientStatus, code: Option<&str>) -> RecipientUpdate {
        RecipientUpdate {
            id,
            status,
            message_id: (status == RecipientStatus::Sent).then_some(id),
            error_code: code.map(str::to_string),
            error_message: None,
            detail: None,
        }
    }

    /// Retryable in these tests: the provider's classification.
    fn retryable(code: &str) -> bool {
        crate::provider::retryable_failure(code)
    }

    fn retry(j: &mut Journal, hash: &str) -> Result<Opened, JournalError> {
        let mut new = new_run(hash);
        new.flags.retry_failed = true;
        new.total_calls = 7;
        let r = rows(&[]);
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        j.open_retry_run(&new, &retryable, &mut f, now())
    }

    /// A finished run of rows 101..104: 101 sent, 102 failed FailedReceiver (retryable), 103
    /// failed with a P2P-style code (not retryable), 104 unknown.
    fn finished_run(j: &mut Journal) -> String {
        let id = open(j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101, 102, 103, 104], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[
                upd(101, RecipientStatus::Sent, None),
                upd(102, RecipientStatus::Failed, Some("FailedReceiver")),
                upd(103, RecipientStatus::Failed, Some("USER_BLOCKED")),
                upd(104, RecipientStatus::Unknown, Some("HTTP500")),
            ],
            None,
            now(),
        )
        .expect("outcome");
        j.set_status(&id, RunStatus::Finished, None, now())
            .expect("finish");
        id
    }

    #[test]
    fn no_finished_run_and_an_unfinished_run_are_refused_with_nothing_created() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let e = retry(&mut j, "h1").expect_err("no run");
        assert!(
            e.to_string().contains("has no finished run to retry"),
            "{e}"
        );
        assert_eq!(e.exit(), crate::exit::Exit::Invalid);
        let first = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        let e = retry(&mut j, "h1").expect_err("unfinished");
        assert!(e.to_string().contains("has an unfinished run"), "{e}");
        assert_eq!(j.runs("spring").expect("runs").len(), 1, "nothing created");
        let e = j
            .retry_candidates("spring", None, &retryable)
            .expect_err("unfinished");
        assert!(e.to_string().contains(&first), "{e}");
    }

    #[test]
    fn the_follow_up_holds_exactly_the_retryable_failures_and_is_linked() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let first = finished_run(&mut j);
        let c = j
            .retry_candidates("spring", None, &retryable)
            .expect("candidates");
        assert_eq!(c.run_id, first);
        assert_eq!(c.retryable_total(), 1);
        assert_eq!(c.other_total(), 1);
        assert_eq!(c.unknown, 1);
        assert_eq!(
            c.to_string(),
            format!(
                "1 failed recipient of run {first} to send again (FailedReceiver 1); not retried: \
                 1 failed with a code that is not retryable (USER_BLOCKED 1), 1 unknown \
                 (--resend-unknown resends them)"
            )
        );
        let (run, of, retried) = match retry(&mut j, "h2").expect("retry") {
            Opened::Retry {
                run,
                of,
                retried,
                left_out,
            } => {
                assert_eq!(left_out, 0);
                (run, of, retried)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!((of.as_str(), retried), (first.as_str(), 1));
        assert_eq!(run.retry_of.as_deref(), Some(first.as_str()));
        assert_eq!(run.audit["retry_of"], first.as_str());
        // The plan's calls: a call that resends refused receivers is numbered after all of them.
        assert_eq!(run.total_calls, 7);
        assert_eq!(j.prepare_requeue(&run.id, now()).expect("requeue"), 7);
        let ids: Vec<(Option<u64>, RecipientStatus)> = j
            .recipients(&run.id)
            .expect("rows")
            .into_iter()
            .map(|r| (r.id, r.status))
            .collect();
        assert_eq!(ids, [(Some(102), RecipientStatus::Pending)]);
        // The engine looks every call's receivers up: only 102 is sendable.
        assert!(!j.all_valid_pending(&run.id).expect("q"));
        assert_eq!(
            j.sendable(&run.id, 0, &[101, 102, 103, 104], false)
                .expect("q"),
            [102]
        );
        let inv = j.invocations(&run.id).expect("invocations");
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0].decision, "retry");
        assert!(inv[0].flags.retry_failed);
        // While it is unfinished, another --retry-failed (same plan) resumes it.
        assert!(matches!(
            retry(&mut j, "h2").expect("resume"),
            Opened::Resumed { run: ref r, .. } if r.id == run.id
        ));
        assert_eq!(j.invocations(&run.id).expect("inv").len(), 2);

        // Once the follow-up finished, --resend-unknown still reaches the retried run's
        // `unknown` recipient (the follow-up has none).
        j.set_status(&run.id, RunStatus::Finished, None, now())
            .expect("finish");
        let o = ResumeOptions {
            resend_unknown: true,
            ..ResumeOptions::default()
        };
        match open(&mut j, "h1", o, rows(&[])).expect("resend unknown") {
            Opened::Resumed { run: r, .. } => {
                assert_eq!(r.id, first);
                assert_eq!(j.sendable(&r.id, 0, &[104], true).expect("q"), [104]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_retryable_is_an_error_that_says_what_stays() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101, 102, 103, 104], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[
                upd(101, RecipientStatus::Sent, None),
                upd(102, RecipientStatus::Sent, None),
                upd(103, RecipientStatus::Failed, Some("USER_BLOCKED")),
                upd(104, RecipientStatus::Unknown, Some("HTTP500")),
            ],
            None,
            now(),
        )
        .expect("outcome");
        j.set_status(&id, RunStatus::Finished, None, now())
            .expect("finish");
        let e = retry(&mut j, "h1").expect_err("nothing");
        let msg = e.to_string();
        assert!(msg.starts_with("nothing to retry"), "{msg}");
        assert!(msg.contains("USER_BLOCKED 1"), "{msg}");
        assert!(msg.contains("--resend-unknown"), "{msg}");
        assert_eq!(j.runs("spring").expect("runs").len(), 1, "nothing created");
    }
}
