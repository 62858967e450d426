//! The engine part of a run, then its report: the shared limiter (the account's share on the
//! action's key, capped by the campaign's own throttle on the campaign's key), the engine
//! configured from the resolved settings, and the report written whatever way the engine ended.
//!
//! Invariants: every run of the account shares one limiter per action through the state
//! directory, or with `[state] url` through the PostgreSQL store (concurrent processes and hosts
//! included); the report is attempted after every engine end, an engine error included; a full
//! disk (journal, limiter state or report) ends it with one message naming the file (exit 8),
//! never as an internal error. Must not: print (progress is the caller's callback), or decide a
//! setting (they come resolved in `Settings`).

use std::sync::Arc;

use anyhow::{anyhow, Context};

use super::prepare::Prepared;
use super::{Inputs, RunSummary};
use crate::clock::SharedClock;
use crate::exit::{Exit, ExitContext, Failure};
use crate::journal::SharedJournal;
use crate::report::{write_report_with, ReportOptions};
use crate::send::{CallSource, Engine, EngineConfig, StopToken, Transport};
use crate::throttle::{Limiter, LimiterOptions};

/// `failure` with the run's id in its message.
fn in_run(failure: Failure, run: &str) -> Failure {
    Failure {
        exit: failure.exit,
        error: failure.error.context(format!("run {run}")),
    }
}

/// The limiter's state could not be opened: a full disk says so (exit 8), anything else is
/// internal.
fn limiter_failure(e: crate::throttle::ThrottleError, campaign_file: &std::path::Path) -> Failure {
    match e.disk_full() {
        Some(path) => super::disk_full_failure(path, campaign_file),
        None => Failure::new(Exit::Internal, e),
    }
}

/// Drive the prepared run with the engine, then write its report.
pub(super) async fn drive<S, T>(
    inputs: Inputs,
    prepared: Prepared,
    source: Arc<S>,
    transport: Arc<T>,
    clock: SharedClock,
    stop: StopToken,
) -> Result<RunSummary, Failure>
where
    S: CallSource,
    T: Transport<Payload = S::Payload>,
{
    let Inputs {
        facts,
        settings,
        paths,
        hooks,
    } = inputs;
    let Prepared { journal, run } = prepared;
    crate::failpoint::limit_journal(journal.connection());
    let journal = SharedJournal::new(journal);
    // The account limiter's log: `[state] url` (every process and host of the account), else
    // `throttle.db` in the state directory. Opened on the blocking pool (a PostgreSQL connection
    // and its schema check, or the SQLite file).
    let store = settings.limiter_store(&paths.state_dir);
    let mut limiter = Limiter::connect(
        &store,
        settings.action.as_str(),
        settings.account_limit,
        LimiterOptions {
            max_requests_per_second: settings.max_requests_per_second,
            // The provider client's request timeout, twice (it re-signs once): see `throttle`.
            call_timeout: crate::throttle::DEFAULT_CALL_TIMEOUT,
        },
        clock.clone(),
    )
    .await
    .map_err(|e| limiter_failure(e, &facts.campaign_file))?;
    if let Some(t) = settings.campaign_limit {
        let cap = Limiter::connect(
            &store,
            &format!("campaign:{}:{}", facts.campaign, settings.action),
            t,
            LimiterOptions::default(),
            clock.clone(),
        )
        .await
        .map_err(|e| limiter_failure(e, &facts.campaign_file))?;
        limiter = limiter.capped_by(cap);
    }

    let mut cfg = EngineConfig::new(&run.id, &run.campaign, settings.action);
    cfg.max_in_flight = settings.max_in_flight;
    cfg.retry_max_attempts = settings.retry_max_attempts;
    cfg.breaker = settings.breaker;
    cfg.resend_unknown = settings.flags.resend_unknown;
    cfg.quiet_hours = settings.quiet_hours.clone();
    // A resumed run keeps its original start.
    cfg.deadline = settings.deadline.map(|d| d.at(run.created_at));

    let control_every = cfg.control_every;
    let make_engine = {
        let (journal, clock, stop, progress, warn) = (
            journal.clone(),
            clock.clone(),
            stop.clone(),
            hooks.progress.clone(),
            hooks.warn.clone(),
        );
        move |stage: Option<&crate::stages::RunStage>| {
            let mut cfg = cfg.clone();
            // `quiet_hours.timezone: recipient`: a wave's quiet hours are in its zone (its zones
            // share the wave's local time).
            if let (Some(q), Some(zone)) = (
                cfg.quiet_hours.as_ref().filter(|q| q.per_recipient()),
                stage.and_then(|s| s.stage.zones.first()),
            ) {
                cfg.quiet_hours = jiff::tz::TimeZone::get(zone)
                    .ok()
                    .map(|tz| q.in_zone(tz, zone));
            }
            let mut engine = Engine::new(
                cfg,
                journal.clone(),
                limiter.clone(),
                transport.clone(),
                clock.clone(),
                stop.clone(),
            );
            if let Some(p) = &progress {
                engine = engine.with_progress(p.clone());
            }
            if let Some(w) = &warn {
                engine = engine.with_warnings(w.clone());
            }
            engine
        }
    };
    let end = if facts.stages.is_empty() {
        make_engine(None).run(source).await
    } else {
        super::staged::StagedRun {
            journal: journal.clone(),
            run: run.clone(),
            campaign: facts.campaign.clone(),
            stages: facts.stages.clone(),
            skip_canary: settings.flags.skip_canary,
            clock: clock.clone(),
            stop: stop.clone(),
            control_every,
        }
        .run(source, make_engine)
        .await
    };
    let reports_dir = paths.reports_dir.clone();
    let report_opts = ReportOptions {
        formats: settings.report_formats,
        campaign_file: Some(facts.campaign_file.clone()),
        ..ReportOptions::default()
    };
    let write_report = {
        let (j, r) = (journal.clone(), run.id.clone());
        move || j.with_blocking(|j| write_report_with(j, &r, &reports_dir, &report_opts))
    };
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            // (On a full disk the report most likely fails too; the journal keeps everything.)
            let _ = tokio::task::spawn_blocking(write_report).await;
            if let Some(path) = e.disk_full() {
                return Err(in_run(
                    super::disk_full_failure(path, &facts.campaign_file),
                    &run.id,
                ));
            }
            let exit = e.exit();
            return Err(in_run(Failure::new(exit, e), &run.id));
        }
    };
    let report = match tokio::task::spawn_blocking(write_report)
        .await
        .map_err(|e| anyhow!("report task failed: {e}"))
        .exit(Exit::Internal)?
    {
        Ok(r) => r,
        Err(e) => {
            if let Some(path) = e.disk_full() {
                return Err(super::report_disk_full_failure(
                    path,
                    &run.id,
                    &facts.campaign_file,
                ));
            }
            return Err(anyhow::Error::new(e))
                .with_context(|| {
                    format!(
                        "run {} stopped, but its report could not be written; `imcast report` retries",
                        run.id
                    )
                })
                .exit(Exit::Internal);
        }
    };
    Ok(RunSummary {
        run_id: Some(run.id.clone()),
        exit: end.exit(),
        status: Some(end.status),
        reason: Some(end.reason.clone()),
        counts: end.counts.clone(),
        calls_done: end.calls_done,
        report_dir: Some(report.dir.clone()),
        already_finished: false,
    })
}
