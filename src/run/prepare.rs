//! Everything before the engine, in order: the guard (`guard.max_recipients` again, for callers
//! that come straight here; `run_campaign` already applied the whole `guard::check`), the confirmation (the library builds a
//! [`Confirmation`] and asks the caller's callback), the audit block and the journal's decision
//! (create, resume, refuse a changed plan, continue, already finished), with a note for people
//! on what was decided; then what the report shows that the journal's core tables do not hold.
//!
//! With `[state] url` (not for `--mock`), the journal is the store's, shared by every state
//! directory and daemon on it: its decision covers runs opened from anywhere (another process
//! sending the run is refused by the run's lease, exit 6; a run finished elsewhere is "already
//! finished").
//!
//! `--retry-failed` asks the journal what it would send before the confirmation (which shows it)
//! and opens the follow-up run (`Journal::open_retry_run`) instead of `open_run`. A journal error
//! that is a full disk becomes one message (which file, nothing lost, how to resume; exit 8).
//!
//! Invariants: nothing is written (no run, no journal row) before the guard passed and the send
//! was confirmed — or needs no confirmation (`--yes`, `--mock`); a real send nobody can confirm
//! is refused (exit 2). (`--retry-failed` opens the existing journal to read it first, which
//! may bring its schema up to date; it never creates one. So does an ad-hoc run of a
//! `schedule.local_time` campaign, to read the wave date its unfinished run started with,
//! [`started_wave_date`].) Must not: read stdin or print (the confirmation and the notes are
//! callbacks), or start a call.
//!
//! Blocking: call from outside the runtime threads (files, the callback, the journal).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use jiff::Timestamp;

use super::{Hooks, Inputs, RunSummary};
use crate::action::Action;
use crate::config::Limit;
use crate::exit::{Exit, Failure};
use crate::journal::{Journal, NewRun, Opened, RecipientStatus, ResumeOptions, RunInfo, SeedRows};
use crate::output::count;
use crate::plan::{Plan, PlanVariant};
use crate::report::Audit;
use crate::send::adapters::PlanSource;
use crate::send::describe_counts;

/// What a person confirms before a real send: where it goes, how much, how long, and one
/// rendered message. The shell shows it and answers yes or no.
#[derive(Debug, Clone)]
pub struct Confirmation {
    pub campaign: String,
    pub campaign_file: PathBuf,
    /// A `--test-to` run (to the listed ids only).
    pub is_test: bool,
    pub app_id: u64,
    pub endpoint: String,
    pub action: Action,
    pub recipients: u64,
    pub calls: u64,
    /// The most the run can use (in the account's window).
    pub limit: Limit,
    /// At the run's pace (see `Settings::eta`).
    pub eta: Duration,
    pub sample_message: String,
    /// `--retry-failed`: what the follow-up sends again (then `recipients` counts only those).
    pub retry: Option<crate::journal::RetryCandidates>,
}

/// The journal opened on a run the engine should drive.
pub(super) struct Prepared {
    pub journal: Journal,
    pub run: RunInfo,
}

pub(super) enum Prep {
    Go(Box<Prepared>),
    Done(RunSummary),
}

impl Hooks {
    pub(super) fn note(&self, msg: &str) {
        match &self.note {
            Some(f) => f(msg),
            None => tracing::info!("{msg}"),
        }
    }
}

fn journal_failure(e: crate::journal::JournalError, campaign_file: &std::path::Path) -> Failure {
    if let Some(path) = e.disk_full() {
        return super::disk_full_failure(path, campaign_file);
    }
    let exit = e.exit();
    Failure::new(exit, e)
}

/// The guard, the confirmation and the journal's decision (see the module doc). `rows` seeds a
/// new run (called at most once).
pub(super) fn prepare<'r, E: std::fmt::Display + Send>(
    inp: &Inputs,
    rows: &mut dyn FnMut() -> SeedRows<'r, E>,
    now: Timestamp,
) -> Result<Prep, Failure> {
    let Inputs {
        facts,
        settings,
        hooks,
        ..
    } = inp;
    // `run_campaign` checked the whole guard on the plan's counts; this re-checks the one rule
    // the facts carry, for callers that come straight here (`execute`).
    if let Some(e) = crate::guard::check_max(settings.guard_max_recipients, facts.recipients) {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "{}\nNothing was sent.",
                crate::guard::describe(&facts.campaign_file, &[e])
            ),
        ));
    }
    let flags = &settings.flags;
    // --retry-failed: what it would send, before anyone is asked (nothing to retry is an error).
    let retry = if flags.retry_failed {
        Some(retry_candidates(inp)?)
    } else {
        None
    };
    if !flags.yes && !flags.mock {
        let Some(confirm) = &hooks.confirm else {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: not on a terminal, so there is no one to confirm this send of {} to {}; \
                     nothing was sent. Pass --yes to send without confirmation (e.g. from scripts or CI)",
                    facts.campaign_file.display(),
                    count(facts.recipients, "recipient", "recipients"),
                    facts.endpoint
                ),
            ));
        };
        let (recipients, calls) = match &retry {
            // At most one call per retried recipient, and no more than the plan's.
            Some(r) => (
                r.retryable_total(),
                facts.total_calls.min(r.retryable_total()),
            ),
            None => (facts.recipients, facts.total_calls),
        };
        let c = Confirmation {
            campaign: facts.campaign.clone(),
            campaign_file: facts.campaign_file.clone(),
            is_test: settings.is_test(),
            app_id: facts.app_id,
            endpoint: facts.endpoint.clone(),
            action: settings.action,
            recipients,
            calls,
            limit: settings.limit,
            eta: settings.eta(recipients, calls),
            sample_message: facts.sample_message.clone(),
            retry: retry.clone(),
        };
        if !confirm(&c) {
            return Ok(Prep::Done(RunSummary::nothing(Exit::Ok)));
        }
    }

    let (journal, opened) = open_journal(inp, rows, now, retry.is_some())?;
    noted(inp, journal, opened, retry.as_ref())
}

/// The journal's decision (see [`prepare`]).
fn open_journal<'r, E: std::fmt::Display + Send>(
    inp: &Inputs,
    rows: &mut dyn FnMut() -> SeedRows<'r, E>,
    now: Timestamp,
    retry_failed: bool,
) -> Result<(Journal, Opened), Failure> {
    let Inputs {
        facts,
        settings,
        paths,
        ..
    } = inp;
    let flags = &settings.flags;
    let audit = Audit::collect(
        &paths.root,
        &facts.plan_hash,
        facts.access_key_id.as_deref(),
        &facts.endpoint,
        facts.app_id,
        flags,
    );
    let store =
        crate::journal::journal_store(settings.state_url.as_ref(), &paths.state_dir, flags.mock);
    let mut journal =
        Journal::open_state(&store).map_err(|e| journal_failure(e, &facts.campaign_file))?;
    journal.set_lease_expiry(settings.lease.expiry);
    let new = NewRun {
        id: None,
        campaign: facts.campaign.clone(),
        occurrence: facts.occurrence.clone(),
        plan_hash: facts.plan_hash.clone(),
        content_key: facts.content_key.clone(),
        action: settings.action,
        flags: flags.clone(),
        is_test: settings.is_test(),
        audit: with_wave_date(
            serde_json::to_value(&audit).unwrap_or_default(),
            facts.wave_date,
        ),
        limit: settings.limit,
        total_calls: facts.total_calls,
    };
    // The journal's own narrow input: how to treat an existing run.
    let resume = ResumeOptions {
        new_run: flags.new_run,
        continue_changed: flags.continue_changed,
        resend_unknown: flags.resend_unknown,
    };
    let opened = if retry_failed {
        journal.open_retry_run(&new, &crate::provider::retryable_failure, rows, now)
    } else {
        journal.open_run(&new, resume, rows, now)
    }
    .map_err(|e| journal_failure(e, &facts.campaign_file))?;
    Ok((journal, opened))
}

/// The notes on what the journal decided, and what the engine drives (see [`prepare`]).
fn noted(
    inp: &Inputs,
    journal: Journal,
    opened: Opened,
    retry: Option<&crate::journal::RetryCandidates>,
) -> Result<Prep, Failure> {
    let Inputs { facts, hooks, .. } = inp;
    let run = opened.run().clone();
    match &opened {
        Opened::AlreadyFinished(r) => {
            let counts = journal.counts(&r.id).unwrap_or_default();
            hooks.note(&format!(
                "Campaign {:?}: run {} already {} ({}). Nothing to send. Pass --new-run to send to everyone again{}.",
                r.campaign,
                r.id,
                r.status,
                describe_counts(&counts),
                if journal.count_status(&r.id, RecipientStatus::Unknown).unwrap_or(0) > 0 {
                    ", or --resend-unknown to resend recipients whose outcome is unknown (may duplicate)"
                } else {
                    ""
                }
            ));
            return Ok(Prep::Done(RunSummary {
                run_id: Some(r.id.clone()),
                exit: Exit::Ok,
                status: Some(r.status),
                reason: None,
                counts,
                calls_done: 0,
                report_dir: None,
                already_finished: true,
            }));
        }
        Opened::Created(r) if r.is_test => hooks.note(&format!(
            "Test run {} of {:?}: sending to {} only; the campaign's run is not touched.",
            r.id, r.campaign, count(facts.recipients, "test recipient", "test recipients")
        )),
        Opened::Created(r) => tracing::info!(run = %r.id, "starting a new run"),
        Opened::Resumed { run, recovered } => {
            hooks.note(&format!(
                "Resuming unfinished run {} of {:?} ({}).",
                run.id,
                run.campaign,
                describe_counts(&journal.counts(&run.id).unwrap_or_default())
            ));
            if recovered.unknown_calls > 0 {
                hooks.note(&format!(
                    "  {} in flight when the previous process stopped: their {} `unknown` and are not resent (pass --resend-unknown to resend them, which may duplicate).",
                    count(recovered.unknown_calls, "call was", "calls were"),
                    count(recovered.unknown_recipients, "recipient is", "recipients are")
                ));
            }
        }
        Opened::ResumedWithSuppressions {
            run,
            newly_suppressed,
            ..
        } => hooks.note(&format!(
            "Resuming run {} with {} applied.",
            run.id,
            count(*newly_suppressed, "newly suppressed recipient", "newly suppressed recipients")
        )),
        Opened::Retry {
            run,
            of,
            retried,
            left_out,
        } => {
            hooks.note(&format!(
                "Retrying run {of} as run {}: sending again to {} that failed with a retryable code{}.",
                run.id,
                count(*retried, "recipient", "recipients"),
                match &retry {
                    Some(r) if !r.retryable.is_empty() => {
                        format!(" ({})", crate::journal::describe_codes(&r.retryable))
                    }
                    _ => String::new(),
                }
            ));
            if *left_out > 0 {
                hooks.note(&format!(
                    "  {} no longer in the audience: not sent.",
                    count(*left_out, "of them is", "of them are")
                ));
            }
            if let Some(r) = retry.as_ref().filter(|r| r.other_total() > 0 || r.unknown > 0) {
                let mut rest = Vec::new();
                if r.other_total() > 0 {
                    rest.push(format!(
                        "{} failed with a code that is not retryable ({})",
                        count(r.other_total(), "recipient", "recipients"),
                        crate::journal::describe_codes(&r.other)
                    ));
                }
                if r.unknown > 0 {
                    rest.push(format!(
                        "{} unknown (--resend-unknown)",
                        count(r.unknown, "recipient is", "recipients are")
                    ));
                }
                hooks.note(&format!("  Not retried: {}.", rest.join("; ")));
            }
        }
        Opened::Continued { run, from, skipped } => hooks.note(&format!(
            "Continuing run {from} as run {} with the changed content, skipping {} already handled.",
            run.id,
            count(*skipped, "recipient", "recipients")
        )),
    }
    Ok(Prep::Go(Box::new(Prepared { journal, run })))
}

/// What `--retry-failed` would send now, from the journal (read before the confirmation; a
/// missing journal means there is no run to retry).
fn retry_candidates(inp: &Inputs) -> Result<crate::journal::RetryCandidates, Failure> {
    let facts = &inp.facts;
    retry_preview(
        &crate::journal::journal_store(
            inp.settings.state_url.as_ref(),
            &inp.paths.state_dir,
            inp.settings.flags.mock,
        ),
        &facts.campaign,
        facts.occurrence.as_deref(),
        &facts.campaign_file,
    )
}

/// The audit key of a local-time run's wave date (see [`started_wave_date`]).
const WAVE_DATE: &str = "wave_date";

/// The run's audit with the date its local-time waves fall on, when it has one.
fn with_wave_date(
    mut audit: serde_json::Value,
    date: Option<jiff::civil::Date>,
) -> serde_json::Value {
    if let (Some(d), Some(m)) = (date, audit.as_object_mut()) {
        m.insert(WAVE_DATE.into(), d.to_string().into());
    }
    audit
}

/// The wave date the unfinished ad-hoc run of `campaign` started with (recorded in its audit),
/// if there is one: a resume plans the same waves whatever the day. Reads only; no journal, no
/// such run or an unreadable one is None (the run then plans today's date and the journal's
/// usual plan check decides).
pub(super) fn started_wave_date(
    store: &crate::config::StateStore,
    campaign: &str,
) -> Option<jiff::civil::Date> {
    if !crate::journal::journal_exists(store) {
        return None;
    }
    let journal = Journal::open_state(store).ok()?;
    let run = journal.unfinished_run(campaign, None).ok()??;
    run.audit.get(WAVE_DATE)?.as_str()?.parse().ok()
}

/// What `imcast run FILE --retry-failed` would send now for `campaign` (its ad-hoc runs when
/// `occurrence` is None), from the journal in `store`: for the confirmation and
/// `imcast plan --retry-failed`. No finished run, an unfinished one, or nothing retryable is an
/// error (exit 2) that says why.
pub fn retry_preview(
    store: &crate::config::StateStore,
    campaign: &str,
    occurrence: Option<&str>,
    campaign_file: &std::path::Path,
) -> Result<crate::journal::RetryCandidates, Failure> {
    if let crate::config::StateStore::Sqlite(dir) = store {
        let db = dir.join(crate::journal::DB_FILE);
        if !db.exists() {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: --retry-failed: campaign {campaign:?} has no finished run to retry (no journal at {}); \
                     nothing was sent",
                    campaign_file.display(),
                    db.display()
                ),
            ));
        }
    }
    let journal = Journal::open_state(store).map_err(|e| journal_failure(e, campaign_file))?;
    journal
        .retry_candidates(campaign, occurrence, &crate::provider::retryable_failure)
        .map_err(|e| journal_failure(e, campaign_file))
}

/// Record what the run's report shows and the journal's core tables do not hold: the campaign
/// file, its AppId and the largest variants, rendered. A failure costs only the report's
/// Contents, never the send: it is logged and the run goes on.
pub(super) fn record_for_report(
    journal: &mut Journal,
    run_id: &str,
    c: &crate::spec::Campaign,
    plan: &Plan,
    source: &PlanSource,
) {
    let res = (|| -> Result<(), String> {
        let (variants, distinct) = match source {
            PlanSource::Plan(_) => (
                plan.variants(crate::report::facts::MAX_RECORDED_VARIANTS)
                    .map_err(|e| e.to_string())?,
                plan.counts().distinct_contents,
            ),
            PlanSource::Fixed(calls) => {
                let mut by: Vec<PlanVariant> = Vec::new();
                for call in calls {
                    match by.iter_mut().find(|v| v.variant == call.variant) {
                        Some(v) => v.recipients += call.receivers.len() as u64,
                        None => by.push(PlanVariant {
                            variant: call.variant.clone(),
                            recipients: call.receivers.len() as u64,
                            variant_name: plan.variant_name_of(&call.variant).map(str::to_string),
                            msg_type: call.msg_type,
                            content: call.content.clone(),
                            ext: call.ext.clone(),
                        }),
                    }
                }
                let n = by.len() as u64;
                (by, n)
            }
        };
        let meta = crate::report::facts::RunMeta {
            campaign_file: Some(c.path.display().to_string()),
            app_id: Some(c.app_id),
            distinct_contents: distinct,
        };
        crate::report::facts::record_run(journal, run_id, &meta, &variants)
            .map_err(|e| e.to_string())
    })();
    if let Err(e) = res {
        tracing::warn!(run = %run_id, "the report will not show the rendered Contents: {e}");
    }
}
