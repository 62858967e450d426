//! The engine part of a run, then its report: the shared limiter (the account's share on the
//! action's key, capped by the campaign's own throttle on the campaign's key), the engine
//! configured from the resolved settings, and the report written whatever way the engine ended.
//!
//! While the engine runs, a heartbeat renews the run's lease every `[state] lease_heartbeat` of
//! the clock ([`heartbeat`]); once a renewal (or any journal write) finds the run taken over by
//! another process, the engine stops at once, no report is written (the run is the other
//! process's now) and the run ends with the journal's `Fenced` error (exit 6).
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
use crate::journal::{JournalError, SharedJournal};
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

/// The run lease's heartbeat: at once, then every `every` of the clock (waiting with [`Clock::idle`], which
/// never moves a simulated clock itself), renew this process's lease on `run_id`. A renewal that
/// finds the run taken over stops the engine (`stop`: no call starts after it) and returns that
/// error; another failure is logged and retried at the next beat (the lease is only lost once
/// it expires). Ends when `done` fires.
///
/// [`Clock::idle`]: crate::clock::Clock::idle
pub(super) async fn heartbeat(
    journal: SharedJournal,
    run_id: String,
    clock: SharedClock,
    every: std::time::Duration,
    stop: StopToken,
    done: tokio::sync::oneshot::Receiver<()>,
) -> Option<JournalError> {
    tokio::pin!(done);
    let mut first = true;
    loop {
        // The first beat is at once: the claim's expiry counts from when the run was opened,
        // which may be long ago for a large audience seeded in the same transaction.
        if !std::mem::take(&mut first) {
            tokio::select! {
                biased;
                _ = &mut done => return None,
                _ = clock.idle(every) => {}
            }
        }
        let (r, now) = (run_id.clone(), clock.now());
        match journal.with(move |j| j.renew(&r, now)).await {
            Ok(_) => {}
            Err(e) if e.is_fenced() => {
                stop.stop();
                return Some(e);
            }
            Err(e) => {
                tracing::warn!(run = %run_id, "could not renew the run's lease (retried at the next heartbeat): {e}")
            }
        }
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
    let (beat_done, beat_end) = tokio::sync::oneshot::channel();
    let beat = tokio::spawn(heartbeat(
        journal.clone(),
        run.id.clone(),
        clock.clone(),
        settings.lease.heartbeat,
        stop.clone(),
        beat_end,
    ));
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
    let _ = beat_done.send(());
    let fenced = beat.await.ok().flatten();
    // Taken over: the run is the other process's now (its report too); this one wrote nothing
    // more and says so.
    if let Some(e) = fenced {
        return Err(in_run(Failure::new(e.exit(), e), &run.id));
    }
    let end = match end {
        Err(e) if e.is_fenced() => {
            let exit = e.exit();
            return Err(in_run(Failure::new(exit, e), &run.id));
        }
        end => end,
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
