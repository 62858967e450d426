//! The resume decision: what `imcast run` does with the journal when it opens a run — create and
//! seed it, resume the unfinished one, apply suppressions added since, continue a changed run
//! (`--continue-changed`), supersede it (`--new-run`), reopen a finished run to resend its
//! `unknown` recipients (`--resend-unknown`; past a `--retry-failed` follow-up, which holds none,
//! to the run it retried), or report that the latest run finished.
//!
//! Invariants: the decision and everything it does are one IMMEDIATE transaction (see
//! [`Journal::open_run`]); a run another live process is sending is never touched (`Busy`, exit
//! 6); a changed plan is refused (`Changed`, exit 7) unless a flag says what to do. Must not:
//! send, or read the audience itself (rows come from the caller, at most once).

use std::collections::BTreeMap;
use std::fmt;

use crate::store::{params, Backend};
use jiff::Timestamp;

use super::counts::count_move;
use super::deferred::Deferrer;
use super::lease::describe_owner;
use super::pack::to_ns;
use super::rows::{NewRow, RowWriter, Seeder};
use super::schema::{is_unfinished_conflict, rk_range, run_key, ts, MAX_LINE};
use super::{
    new_run_id, Journal, JournalError, NewRun, Opened, Ops, RecipientStatus, Recovered,
    ResumeOptions, RunInfo, RunStatus, SeedRows,
};

/// Call `f` with every item of `items`, produced on another thread in batches (reading and
/// rendering the audience again overlaps with writing it to the database). Stops at `f`'s first
/// error; the producer then stops too.
fn consume_in_batches<T: Send>(
    items: impl Iterator<Item = T> + Send,
    mut f: impl FnMut(T) -> Result<(), JournalError>,
) -> Result<(), JournalError> {
    const BATCH: usize = 1024;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<T>>(4);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in items {
                batch.push(item);
                if batch.len() == BATCH
                    && tx
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    return;
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
        });
        for batch in rx {
            for item in batch {
                f(item)?;
            }
        }
        Ok(())
    })
}

impl Journal {
    /// Decide and do what `imcast run` does with the journal: create, resume, apply added
    /// suppressions, continue a changed run, reopen a finished run for `--resend-unknown`, or
    /// report that the latest run finished. `rows` is called at most once, to seed (or check)
    /// recipients.
    ///
    /// The decision and everything it does (taking the lease, settling in-flight calls,
    /// cancelling a superseded run, inserting and seeding the new run) are one IMMEDIATE
    /// transaction: a second process deciding at the same moment waits for it, then sees this
    /// run and its live lease ([`JournalError::Busy`], exit 6). The unique index on unfinished
    /// runs backs this up; if it refuses a run, that is `Busy` too.
    pub fn open_run<'r, E: fmt::Display + Send>(
        &mut self,
        new: &NewRun,
        opts: ResumeOptions,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        self.decide(new, now, |ops| ops.open_run(new, opts, rows, now))
    }

    /// Run a decision that opens a run of `new` (`decide`) in one IMMEDIATE transaction, record
    /// the invocation with it (`audit`), and commit both or neither; a unique-index refusal from
    /// another process's decision is [`JournalError::Busy`].
    pub(super) fn decide(
        &mut self,
        new: &NewRun,
        now: Timestamp,
        decide: impl FnOnce(&Ops<'_>) -> Result<Opened, JournalError>,
    ) -> Result<Opened, JournalError> {
        let db = self.db();
        let tx = self.begin_write()?;
        let seeded = std::cell::RefCell::new(None);
        let ops = Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
            seeded: Some(&seeded),
        };
        match decide(&ops).and_then(|o| ops.record_opened(&o, new, now).map(|()| o)) {
            Ok(opened) => {
                tx.commit().map_err(db)?;
                let owner = &self.owner;
                self.marked
                    .seeded(seeded.into_inner(), |run| owner.fence(run));
                self.refresh_statistics();
                Ok(opened)
            }
            Err(e) => {
                drop(tx);
                Err(self.conflict_as_busy(e, &new.campaign, new.occurrence.as_deref()))
            }
        }
    }

    /// PostgreSQL only: bring the planner's statistics of the run tables up to date once a run
    /// was opened (seeded with up to millions of rows in one transaction). Autovacuum does it
    /// too, but only after a minute or so; until then the planner believes the tables nearly
    /// empty and plans a run's scans and joins for a few rows (measured: a report's scan of a
    /// million rows joined to the calls took 42 s instead of under one). `ANALYZE` samples a
    /// bounded number of rows whatever the table's size. A failure only costs speed: logged.
    ///
    /// Not `calls`: a run's calls are written while it sends, after this. Analyzed here while
    /// nearly empty (a fresh store), the statistics said "a page or two", so the generic plans
    /// PostgreSQL caches for the prepared look-ups of one call by its key (`run_id`, `seq`: the
    /// outcome's read of the call, the call's final state, the attempt's insert) were sequential
    /// scans, kept for the whole run while the table grew: a cost per call growing with the
    /// calls written (measured at 1M recipients: 0.4-0.5 ms each, 2,000 calls; quadratic in the
    /// run's size). A table never analyzed is planned as at least ten pages (the key's index);
    /// autovacuum analyzes `calls` as it grows.
    fn refresh_statistics(&self) {
        if self.conn.backend() != crate::store::Backend::Postgres {
            return;
        }
        if let Err(e) = self.conn.execute_batch("ANALYZE recipients") {
            tracing::debug!("ANALYZE of the journal's tables failed: {e}");
        }
    }

    /// The unique index refused a second unfinished run: say who holds the one there is.
    pub(super) fn conflict_as_busy(
        &self,
        e: JournalError,
        campaign: &str,
        occurrence: Option<&str>,
    ) -> JournalError {
        let JournalError::Db { source, .. } = &e else {
            return e;
        };
        if !is_unfinished_conflict(source) {
            return e;
        }
        let run = self.unfinished_run(campaign, occurrence).ok().flatten();
        let owner = run
            .as_ref()
            .and_then(|r| self.ops().owner_of(&r.id).ok().flatten());
        JournalError::Busy {
            campaign: campaign.to_string(),
            run_id: run.map(|r| r.id).unwrap_or_else(|| "(just created)".into()),
            owner: owner
                .as_deref()
                .map(describe_owner)
                .unwrap_or_else(|| "another process".into()),
        }
    }
}

impl Ops<'_> {
    /// Append the invocation that made `opened` to its run's audit (see `audit`); an "already
    /// finished" answer changed nothing and is not recorded.
    pub(super) fn record_opened(
        &self,
        opened: &Opened,
        new: &NewRun,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let decision = match opened {
            Opened::AlreadyFinished(_) => return Ok(()),
            Opened::Created(_) => "created",
            Opened::Resumed { .. } | Opened::ResumedWithSuppressions { .. } => "resumed",
            Opened::Continued { .. } => "continued",
            Opened::Retry { .. } => "retry",
        };
        self.record_invocation(&opened.run().id, decision, new, now)
    }

    /// See [`Journal::open_run`]; runs inside its transaction.
    fn open_run<'r, E: fmt::Display + Send>(
        &self,
        new: &NewRun,
        opts: ResumeOptions,
        rows: &mut dyn FnMut() -> SeedRows<'r, E>,
        now: Timestamp,
    ) -> Result<Opened, JournalError> {
        if !new.is_test && !opts.new_run {
            if let Some(old) = self.unfinished_run(&new.campaign, new.occurrence.as_deref())? {
                // Whatever follows, a run another live process is sending is not touched (and
                // that, not a changed plan, is what the caller hears). On an error the caller
                // rolls back, this lease included.
                self.claim(&old, now)?;
                if old.plan_hash == new.plan_hash {
                    let recovered = self.recover(&old.id, old.action)?;
                    self.set_status(&old.id, RunStatus::Running, None, now)?;
                    let run = self.existing_run(&old.id)?;
                    return Ok(Opened::Resumed { run, recovered });
                }
                if opts.continue_changed {
                    self.recover(&old.id, old.action)?;
                    // The old run ends before the continuing one is inserted (at most one
                    // unfinished run); both commit together or not at all.
                    let id = new.id.clone().unwrap_or_else(|| new_run_id(now));
                    self.cancel_pending(&old.id, now)?;
                    self.set_status(
                        &old.id,
                        RunStatus::Cancelled,
                        Some(&format!("continued as run {id} with changed content")),
                        now,
                    )?;
                    let (run, skipped) =
                        self.create_run(&id, new, Some(&old), opts, rows(), now)?;
                    return Ok(Opened::Continued {
                        run,
                        from: old.id,
                        skipped,
                    });
                }
                if old.content_key.is_some() && old.content_key == new.content_key {
                    if let Some(n) = self.try_apply_suppressions(&old, new, rows(), now)? {
                        let recovered = self.recover(&old.id, old.action)?;
                        self.set_status(&old.id, RunStatus::Running, None, now)?;
                        let run = self.existing_run(&old.id)?;
                        return Ok(Opened::ResumedWithSuppressions {
                            run,
                            recovered,
                            newly_suppressed: n,
                        });
                    }
                }
                return Err(JournalError::Changed {
                    campaign: new.campaign.clone(),
                    run_id: old.id,
                    old: old.plan_hash,
                    new: new.plan_hash.clone(),
                });
            }
            if let Some(latest) =
                self.latest_of_occurrence(&new.campaign, new.occurrence.as_deref())?
            {
                // A --retry-failed follow-up holds only the retried recipients: the `unknown`
                // ones are in the run it retried (and so on back), so --resend-unknown looks
                // there when the follow-up has none (see `retry`).
                let mut last = latest.clone();
                let mut unknown = self.count_status(&last.id, RecipientStatus::Unknown)?;
                while opts.resend_unknown && unknown == 0 {
                    let Some(prev) = last.retry_of.as_deref() else {
                        break;
                    };
                    let Some(prev) = self.run(prev)? else { break };
                    unknown = self.count_status(&prev.id, RecipientStatus::Unknown)?;
                    last = prev;
                }
                if opts.resend_unknown
                    && unknown > 0
                    && last.status == RunStatus::Finished
                    && last.plan_hash == new.plan_hash
                {
                    // Reopened: unfinished again, so the unique index admits it only because
                    // no other unfinished run exists (checked above, in this transaction).
                    self.claim(&last, now)?;
                    self.set_status(&last.id, RunStatus::Running, None, now)?;
                    let run = self.existing_run(&last.id)?;
                    return Ok(Opened::Resumed {
                        run,
                        recovered: Recovered::default(),
                    });
                }
                return Ok(Opened::AlreadyFinished(latest));
            }
        }
        if opts.new_run && !new.is_test {
            if let Some(old) = self.unfinished_run(&new.campaign, new.occurrence.as_deref())? {
                self.claim(&old, now)?;
                self.recover(&old.id, old.action)?;
                self.cancel_pending(&old.id, now)?;
                self.set_status(
                    &old.id,
                    RunStatus::Cancelled,
                    Some("superseded by --new-run"),
                    now,
                )?;
            }
        }
        let id = new.id.clone().unwrap_or_else(|| new_run_id(now));
        let (run, _) = self.create_run(&id, new, None, opts, rows(), now)?;
        Ok(Opened::Created(run))
    }

    fn create_run<E: fmt::Display + Send>(
        &self,
        id: &str,
        new: &NewRun,
        continue_from: Option<&RunInfo>,
        opts: ResumeOptions,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<(RunInfo, u64), JournalError> {
        let flags =
            serde_json::to_string(&new.flags).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let audit =
            serde_json::to_string(&new.audit).map_err(|e| JournalError::Corrupt(e.to_string()))?;
        let db = self.db();
        let tx = self.conn;
        tx.execute(
            "INSERT INTO runs(id, campaign, occurrence, plan_hash, content_key, action, status, flags, is_test,
                              created_at, updated_at, audit, limit_count, limit_window_ms, total_calls,
                              continued_from, owner, key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     (SELECT COALESCE(MAX(key), 0) + 1 FROM runs))",
            params![
                id,
                new.campaign,
                new.occurrence,
                new.plan_hash,
                new.content_key,
                new.action.as_str(),
                flags,
                new.is_test,
                ts(now),
                audit,
                new.limit.limit as i64,
                new.limit.window.as_millis() as i64,
                new.total_calls as i64,
                continue_from.map(|r| r.id.clone()),
                self.owner.id(),
            ],
        )
        .map_err(&db)?;
        self.take(id, now)?;
        let mut skipped = 0u64;
        let mut seeded: BTreeMap<RecipientStatus, u64> = BTreeMap::new();
        let key = run_key(tx, id)
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(id.to_string()))?;
        let old_range = match continue_from {
            Some(old) => run_key(tx, &old.id).map_err(&db)?.map(rk_range),
            None => None,
        };
        // The rows a continued run carries over, by id (the compact layout has no index on
        // `id`): one scan of the old run into a temporary table, dropped below.
        if let Some((lo, hi)) = old_range {
            // The old run's delivered rows are read below: written as rows first (`deferred`).
            super::deferred::materialize(tx, lo >> 32, super::deferred::Which::All).map_err(&db)?;
            // SQLite: `INTEGER PRIMARY KEY` is the table's own b-tree; PostgreSQL's integers
            // are 32-bit unless BIGINT (a temporary table is the session's on both).
            tx.execute_batch(match tx.backend() {
                Backend::Sqlite => {
                    "CREATE TEMP TABLE IF NOT EXISTS prior_rows(id INTEGER PRIMARY KEY,
                         status INTEGER NOT NULL, message_id INTEGER);
                     DELETE FROM prior_rows;"
                }
                Backend::Postgres => {
                    "CREATE TEMP TABLE IF NOT EXISTS prior_rows(id BIGINT PRIMARY KEY,
                         status BIGINT NOT NULL, message_id BIGINT);
                     DELETE FROM prior_rows;"
                }
            })
            .map_err(&db)?;
            // The first row of an id wins (audience order), as INSERT OR IGNORE did.
            tx.execute(
                "INSERT INTO prior_rows(id, status, message_id)
                 SELECT id, status, message_id FROM recipients
                 WHERE rk BETWEEN ?1 AND ?2 AND id IS NOT NULL AND status IN (?3, ?4, ?5) ORDER BY rk
                 ON CONFLICT(id) DO NOTHING",
                params![
                    lo,
                    hi,
                    RecipientStatus::Sent.code(),
                    RecipientStatus::NotOnline.code(),
                    RecipientStatus::Unknown.code()
                ],
            )
            .map_err(&db)?;
        }
        let mut seeder = Seeder::new(key);
        let mut deferrer = Deferrer::new(key);
        // Plan calls with a row written here rather than deferred (see `calls::Seeded`).
        let mut written: std::collections::HashSet<u64, crate::plan::FastState> =
            Default::default();
        let now_ns = to_ns(now);
        {
            let mut ins = RowWriter::new(tx).map_err(&db)?;
            let mut prior = tx
                .prepare(if old_range.is_some() {
                    "SELECT status, message_id FROM prior_rows WHERE id = ?1"
                } else {
                    "SELECT 0, 0 WHERE CAST(?1 AS BIGINT) IS NULL"
                })
                .map_err(&db)?;
            consume_in_batches(rows, |row| {
                let row = row.map_err(|e| JournalError::Seed(e.to_string()))?;
                let mut status = row.status;
                let mut message_id: Option<i64> = None;
                let mut note = row.note.clone();
                let mut detail: Option<String> = None;
                if row.line > MAX_LINE {
                    return Err(JournalError::Seed(format!(
                        "audience line {} is beyond the {MAX_LINE} lines a run can hold",
                        row.line
                    )));
                }
                let mut at: Option<i64> = None;
                if let (Some(old), Some(_), Some(rid), RecipientStatus::Pending) =
                    (continue_from, old_range, row.id, row.status)
                {
                    let p: Option<(i64, Option<i64>)> = prior
                        .query_opt(params![rid as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(&db)?;
                    if let Some((s, mid)) = p {
                        let s = RecipientStatus::from_code(s)?;
                        if s != RecipientStatus::Unknown || !opts.resend_unknown {
                            status = s;
                            message_id = mid;
                            detail = Some(format!("carried over from run {}", old.id));
                            note = None;
                            // Its own time: not the answer of this run's call `call_seq`.
                            at = Some(now_ns);
                            skipped += 1;
                        }
                    }
                }
                *seeded.entry(status).or_default() += 1;
                // The id's own decimal form is not stored twice; the time is the run's start
                // (NULL) until an outcome gives the row its call's.
                let raw_id = row.stored_raw_id();
                let variant = seeder.row(row.line, row.call_seq, row.variant.as_deref());
                seeder.fingerprint(row.call_seq, row.id, status == RecipientStatus::Pending);
                // A planned pending row waits for its call's outcome (`deferred`) unless it has
                // something of its own: an id written another way, an A/B name, a note, a time.
                let plain = raw_id.is_none()
                    && row.variant_name.is_none()
                    && note.is_none()
                    && message_id.is_none()
                    && detail.is_none()
                    && at.is_none();
                if deferrer.offer(row.line, row.id, status, row.call_seq, variant, plain) {
                    return Ok(());
                }
                if let Some(seq) = row.call_seq {
                    written.insert(seq);
                }
                ins.write(NewRow {
                    rk: (key << 32) | row.line as i64,
                    id: row.id.map(|v| v as i64),
                    raw_id,
                    status: status.code(),
                    call_seq: row.call_seq.map(|v| v as i64),
                    variant,
                    error_message: note.as_deref(),
                    message_id,
                    detail: detail.as_deref(),
                    at,
                    variant_name: row.variant_name.as_deref(),
                })
                .map_err(&db)?;
                Ok(())
            })?;
            drop(prior);
            ins.finish().map_err(&db)?;
        }
        let prints = seeder.fingerprints();
        seeder.finish(tx).map_err(&db)?;
        deferrer.finish(tx).map_err(&db)?;
        if let Some(cell) = self.seeded {
            *cell.borrow_mut() = Some(super::calls::Seeded {
                run_id: id.to_string(),
                fence: None,
                calls: prints,
                written,
            });
        }
        if old_range.is_some() {
            tx.execute_batch("DROP TABLE prior_rows").map_err(&db)?;
        }
        for (status, n) in seeded {
            count_move(tx, id, None, status, n).map_err(&db)?;
        }
        let run = self.existing_run(id)?;
        Ok((run, skipped))
    }

    /// If the new rows differ from the run's only by rows that became suppressed, apply that and
    /// return how many; otherwise change nothing (its own savepoint is rolled back) and return
    /// None.
    fn try_apply_suppressions<E: fmt::Display + Send>(
        &self,
        old: &RunInfo,
        new: &NewRun,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<Option<u64>, JournalError> {
        let db = self.db();
        self.conn
            .execute_batch("SAVEPOINT apply_suppressions")
            .map_err(&db)?;
        let res = self.apply_suppressions(old, new, rows, now);
        let end = match res {
            Ok(Some(_)) => "RELEASE SAVEPOINT apply_suppressions",
            _ => "ROLLBACK TO SAVEPOINT apply_suppressions; RELEASE SAVEPOINT apply_suppressions",
        };
        let ended = self.conn.execute_batch(end).map_err(&db);
        let n = res?;
        ended?;
        Ok(n)
    }

    fn apply_suppressions<E: fmt::Display + Send>(
        &self,
        old: &RunInfo,
        new: &NewRun,
        rows: SeedRows<'_, E>,
        now: Timestamp,
    ) -> Result<Option<u64>, JournalError> {
        let db = self.db();
        let tx = self.conn;
        let mut n = 0u64;
        let mut seen = 0u64;
        let key = run_key(tx, &old.id)
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(old.id.clone()))?;
        // Rows are read and moved between calls below by their keys: every entry is written as
        // rows first (`deferred`).
        super::deferred::materialize(tx, key, super::deferred::Which::All).map_err(&db)?;
        let mut plan = Seeder::new(key);
        {
            let mut get = tx
                .prepare("SELECT id, status FROM recipients WHERE rk = ?1")
                .map_err(&db)?;
            let mut upd = tx
                .prepare(
                    "UPDATE recipients SET status = ?4, error_message = ?2, at = ?3
                     WHERE rk = ?1",
                )
                .map_err(&db)?;
            for row in rows {
                let row = row.map_err(|e| JournalError::Seed(e.to_string()))?;
                seen += 1;
                // The new plan's calls (suppressed rows leave them, so receivers move between
                // calls): its lines replace the old plan's below.
                if row.status == RecipientStatus::Pending {
                    plan.row(row.line, row.call_seq, None);
                }
                if row.line > MAX_LINE {
                    return Ok(None);
                }
                let rk = (key << 32) | row.line as i64;
                let cur: Option<(Option<i64>, i64)> = get
                    .query_opt(params![rk], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(&db)?;
                let Some((cid, cstatus)) = cur else {
                    return Ok(None);
                };
                if cid.map(|v| v as u64) != row.id {
                    return Ok(None);
                }
                let cstatus = RecipientStatus::from_code(cstatus)?;
                let was_final_input = matches!(
                    cstatus,
                    RecipientStatus::Invalid
                        | RecipientStatus::Duplicate
                        | RecipientStatus::Suppressed
                        | RecipientStatus::Holdout
                );
                let now_final_input = matches!(
                    row.status,
                    RecipientStatus::Invalid
                        | RecipientStatus::Duplicate
                        | RecipientStatus::Suppressed
                        | RecipientStatus::Holdout
                );
                if row.status == RecipientStatus::Suppressed && !was_final_input {
                    if cstatus == RecipientStatus::Pending {
                        upd.execute(params![
                            rk,
                            row.note,
                            to_ns(now),
                            RecipientStatus::Suppressed.code()
                        ])
                        .map_err(&db)?;
                        n += 1;
                    }
                    continue;
                }
                if was_final_input != now_final_input || (was_final_input && cstatus != row.status)
                {
                    return Ok(None);
                }
            }
        }
        let total: i64 = tx
            .query_row(
                "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM run_counts WHERE run_id = ?1",
                params![&old.id],
                |r| r.get(0),
            )
            .map_err(&db)?;
        if total as u64 != seen {
            return Ok(None);
        }
        tx.execute("DELETE FROM call_plan WHERE run_key = ?1", params![key])
            .map_err(&db)?;
        plan.finish(tx).map_err(&db)?;
        count_move(
            tx,
            &old.id,
            Some(RecipientStatus::Pending),
            RecipientStatus::Suppressed,
            n,
        )
        .map_err(&db)?;
        tx.execute(
            "UPDATE runs SET plan_hash = ?2, total_calls = ?3, updated_at = ?4 WHERE id = ?1",
            params![old.id, new.plan_hash, new.total_calls as i64, ts(now)],
        )
        .map_err(&db)?;
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::exit::Exit;
    use crate::journal::testutil::*;
    use crate::journal::*;
    use std::path::Path;

    #[test]
    fn create_resume_change_and_suppression_only() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let run = open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("create");
        assert!(matches!(run, Opened::Created(_)));
        let id = run.run().id.clone();
        // The first call is in flight when the process dies.
        j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
            .expect("mark");
        drop(j);
        let mut j = Journal::open(d.path()).expect("reopen");
        // Same hash: resumed, in-flight receivers become unknown.
        match open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("resume") {
            Opened::Resumed { recovered, .. } => assert_eq!(recovered.unknown_recipients, 2),
            other => panic!("expected resume, got {other:?}"),
        }
        assert_eq!(
            j.sendable(&id, 0, &[101, 102, 103], false).expect("q"),
            vec![103]
        );
        assert_eq!(
            j.sendable(&id, 0, &[101, 102, 103], true).expect("q"),
            vec![101, 102, 103]
        );
        // Changed hash, but only a new suppression: applied.
        match open(&mut j, "h2", ResumeOptions::default(), rows(&[104])).expect("suppress") {
            Opened::ResumedWithSuppressions {
                newly_suppressed, ..
            } => assert_eq!(newly_suppressed, 1),
            other => panic!("expected suppression resume, got {other:?}"),
        }
        // Anything else changed: refused with exit 7.
        let mut other = rows(&[104]);
        other[2].id = Some(999);
        let e = open(&mut j, "h3", ResumeOptions::default(), other).expect_err("changed");
        assert_eq!(e.exit(), Exit::Changed);
        assert!(e.to_string().contains("--continue-changed"), "{e}");
    }

    #[test]
    fn continue_changed_skips_already_sent() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[RecipientUpdate {
                id: 101,
                status: RecipientStatus::Sent,
                message_id: Some(7),
                error_code: None,
                error_message: None,
                detail: None,
            }],
            None,
            now(),
        )
        .expect("record");
        let o = ResumeOptions {
            continue_changed: true,
            ..Default::default()
        };
        match open(&mut j, "h2", o, rows(&[])).expect("continue") {
            Opened::Continued { run, from, skipped } => {
                assert_eq!(from, id);
                assert_eq!(skipped, 1);
                assert_eq!(
                    j.sendable(&run.id, 0, &[101, 102], false).expect("q"),
                    vec![102]
                );
                assert_eq!(
                    j.run(&id).expect("q").expect("old").status,
                    RunStatus::Cancelled
                );
            }
            other => panic!("expected continue, got {other:?}"),
        }
    }

    #[test]
    fn finished_run_is_not_resent_without_new_run() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        j.set_status(&id, RunStatus::Finished, None, now())
            .expect("finish");
        assert!(matches!(
            open(&mut j, "h1", ResumeOptions::default(), rows(&[])),
            Ok(Opened::AlreadyFinished(_))
        ));
        let o = ResumeOptions {
            new_run: true,
            ..Default::default()
        };
        let r = open(&mut j, "h1", o, rows(&[])).expect("new run");
        assert!(matches!(r, Opened::Created(ref run) if run.id != id));
    }

    /// Two journals on one file (two threads, released together) call `open_run` with the same
    /// arguments; both journals stay open until both have decided.
    fn race_two(
        dir: &Path,
        hash: &'static str,
        o: ResumeOptions,
        r: Vec<SeedRow>,
    ) -> Vec<(Journal, Result<Opened, JournalError>)> {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (dir, b, r) = (dir.to_path_buf(), barrier.clone(), r.clone());
                std::thread::spawn(move || {
                    let mut j = Journal::open(&dir).expect("open");
                    b.wait();
                    let res = open(&mut j, hash, o, r);
                    (j, res)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    }

    #[test]
    fn two_journals_racing_open_run_act_exactly_once() {
        let o = ResumeOptions::default();
        let new_run = ResumeOptions { new_run: true, ..o };
        let continue_changed = ResumeOptions {
            continue_changed: true,
            ..o
        };
        let resend_unknown = ResumeOptions {
            resend_unknown: true,
            ..o
        };
        // (what is there before, how both open, what the winner gets)
        type Setup = fn(&mut Journal);
        fn nothing(_: &mut Journal) {}
        /// A run whose process died (its journal closed) with a call in flight.
        fn interrupted(j: &mut Journal) {
            let id = open(j, "h1", ResumeOptions::default(), rows(&[]))
                .expect("create")
                .run()
                .id
                .clone();
            j.mark_in_flight(&id, 0, "v", &[101], None, now())
                .expect("mark");
        }
        fn finished_with_unknown(j: &mut Journal) {
            interrupted(j);
            let id = j.latest_run("spring", false).expect("q").expect("run").id;
            j.recover(&id, Action::Batch).expect("recover");
            j.set_status(&id, RunStatus::Finished, None, now())
                .expect("finish");
        }
        let cases: [(&str, Setup, &'static str, ResumeOptions, Vec<SeedRow>); 6] = [
            ("fresh", nothing, "h1", o, rows(&[])),
            ("resume", interrupted, "h1", o, rows(&[])),
            ("suppressions", interrupted, "h2", o, rows(&[104])),
            (
                "--continue-changed",
                interrupted,
                "h2",
                continue_changed,
                rows(&[]),
            ),
            ("--new-run", finished_with_unknown, "h1", new_run, rows(&[])),
            (
                "--resend-unknown",
                finished_with_unknown,
                "h1",
                resend_unknown,
                rows(&[]),
            ),
        ];
        for (name, setup, hash, opts, r) in cases {
            for round in 0..5 {
                let d = tempfile::tempdir().expect("tempdir");
                {
                    let mut j = Journal::open(d.path()).expect("create the database");
                    setup(&mut j);
                }
                let results = race_two(d.path(), hash, opts, r.clone());
                let ctx = format!(
                    "{name}, round {round}: {:?}",
                    results.iter().map(|r| &r.1).collect::<Vec<_>>()
                );
                let won: Vec<&Opened> = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .collect();
                let lost: Vec<&JournalError> = results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().err())
                    .collect();
                assert_eq!(won.len(), 1, "{ctx}");
                let expected = match won[0] {
                    Opened::Created(_) => ["fresh", "--new-run"].contains(&name),
                    Opened::Resumed { .. } => ["resume", "--resend-unknown"].contains(&name),
                    Opened::ResumedWithSuppressions { .. } => name == "suppressions",
                    Opened::Continued { .. } => name == "--continue-changed",
                    Opened::AlreadyFinished(_) | Opened::Retry { .. } => false,
                };
                assert!(expected, "{ctx}");
                assert!(matches!(lost[0], JournalError::Busy { .. }), "{ctx}");
                assert_eq!(lost[0].exit(), Exit::Busy);
                let msg = lost[0].to_string();
                assert!(
                    msg.contains("being sent by another imcast process"),
                    "{msg}"
                );
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
                // The winner holds the one unfinished run.
                let j = &results[0].0;
                let runs = j.runs("spring").expect("runs");
                let unfinished: Vec<&RunInfo> =
                    runs.iter().filter(|r| r.status.is_unfinished()).collect();
                assert_eq!(unfinished.len(), 1, "{ctx}");
                assert_eq!(unfinished[0].id, won[0].run().id, "{ctx}");
                let holder = results
                    .iter()
                    .find(|(_, r)| r.is_ok())
                    .map(|(j, _)| j.owner.id().to_string());
                assert_eq!(j.ops().owner_of(&unfinished[0].id).expect("q"), holder);
            }
        }
    }

    #[test]
    fn a_changed_plan_meets_a_run_being_sent_busy_and_a_dead_one_changed() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let id = open(&mut a, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        let mut b = Journal::open(d.path()).expect("open b");
        let mut other = rows(&[]);
        other[0].id = Some(999);
        let e = open(&mut b, "h2", ResumeOptions::default(), other.clone()).expect_err("busy");
        assert!(matches!(e, JournalError::Busy { .. }), "{e}");
        // Refused without a trace: the lease is still a's.
        assert_eq!(
            b.ops().owner_of(&id).expect("q"),
            Some(a.owner.id().to_string())
        );
        drop(a);
        let e = open(&mut b, "h2", ResumeOptions::default(), other).expect_err("changed");
        assert_eq!(e.exit(), Exit::Changed, "{e}");
        // The refusal rolled back the lease it took on the way.
        assert_ne!(
            b.ops().owner_of(&id).expect("q"),
            Some(b.owner.id().to_string())
        );
    }
}
