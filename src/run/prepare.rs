//! Everything before the engine, in order: the guard, the confirmation (the library builds a
//! [`Confirmation`] and asks the caller's callback), the audit block and the journal's decision
//! (create, resume, refuse a changed plan, continue, already finished), with a note for people
//! on what was decided; then what the report shows that the journal's core tables do not hold.
//!
//! Invariants: nothing is written (no run, no journal row) before the guard passed and the send
//! was confirmed — or needs no confirmation (`--yes`, `--mock`); a real send nobody can confirm
//! is refused (exit 2). Must not: read stdin or print (the confirmation and the notes are
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
    fn note(&self, msg: &str) {
        match &self.note {
            Some(f) => f(msg),
            None => tracing::info!("{msg}"),
        }
    }
}

fn journal_failure(e: crate::journal::JournalError) -> Failure {
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
        paths,
        hooks,
    } = inp;
    if let Some(max) = settings.guard_max_recipients {
        if facts.recipients > max {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: the audience has {} recipients but guard.max_recipients is {max}; nothing was sent. \
                     Check the audience file, or raise the guard if this is intended",
                    facts.campaign_file.display(),
                    facts.recipients
                ),
            ));
        }
    }
    let flags = &settings.flags;
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
        let c = Confirmation {
            campaign: facts.campaign.clone(),
            campaign_file: facts.campaign_file.clone(),
            is_test: settings.is_test(),
            app_id: facts.app_id,
            endpoint: facts.endpoint.clone(),
            action: settings.action,
            recipients: facts.recipients,
            calls: facts.total_calls,
            limit: settings.limit,
            eta: settings.eta(facts.recipients, facts.total_calls),
            sample_message: facts.sample_message.clone(),
        };
        if !confirm(&c) {
            return Ok(Prep::Done(RunSummary::nothing(Exit::Ok)));
        }
    }

    let audit = Audit::collect(
        &paths.root,
        &facts.plan_hash,
        facts.access_key_id.as_deref(),
        &facts.endpoint,
        facts.app_id,
        flags,
    );
    let mut journal = Journal::open(&paths.state_dir).map_err(journal_failure)?;
    let new = NewRun {
        id: None,
        campaign: facts.campaign.clone(),
        occurrence: facts.occurrence.clone(),
        plan_hash: facts.plan_hash.clone(),
        content_key: facts.content_key.clone(),
        action: settings.action,
        flags: flags.clone(),
        is_test: settings.is_test(),
        audit: serde_json::to_value(&audit).unwrap_or_default(),
        limit: settings.limit,
        total_calls: facts.total_calls,
    };
    // The journal's own narrow input: how to treat an existing run.
    let resume = ResumeOptions {
        new_run: flags.new_run,
        continue_changed: flags.continue_changed,
        resend_unknown: flags.resend_unknown,
    };
    let opened = journal
        .open_run(&new, resume, rows, now)
        .map_err(journal_failure)?;
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
        Opened::Continued { run, from, skipped } => hooks.note(&format!(
            "Continuing run {from} as run {} with the changed content, skipping {} already handled.",
            run.id,
            count(*skipped, "recipient", "recipients")
        )),
    }
    Ok(Prep::Go(Box::new(Prepared { journal, run })))
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
