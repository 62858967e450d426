//! The engine part of a run, then its report: the shared limiter (the account's share on the
//! action's key, capped by the campaign's own throttle on the campaign's key), the engine
//! configured from the resolved settings, and the report written whatever way the engine ended.
//!
//! While the engine runs, a heartbeat renews the run's lease every `[state] lease_heartbeat` of
//! the clock ([`heartbeat`]); once a renewal (or any journal write) finds the run taken over by
//! another process, the engine stops at once, no report is written (the run is the other
//! process's now) and the run ends with the journal's `Fenced` error (exit 6). With `[state] url`
//! the journal and its leases are the store's, shared by every state directory and host on it.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, SimClock};
    use crate::journal::{Journal, NewRun, ResumeOptions, RunFlags, SeedRows};

    fn start() -> jiff::Timestamp {
        "2026-03-01T09:00:00Z".parse().expect("valid")
    }

    /// A run of campaign `c` opened by `j` at `at` (no recipients).
    fn open(j: &mut Journal, at: jiff::Timestamp) -> String {
        let new = NewRun {
            id: None,
            campaign: "c".into(),
            occurrence: None,
            plan_hash: "h".into(),
            content_key: None,
            action: crate::action::Action::Batch,
            flags: RunFlags::default(),
            is_test: false,
            audit: serde_json::json!({}),
            limit: crate::config::Limit::new(10, Duration::from_secs(1)),
            total_calls: 0,
        };
        let mut rows = || -> SeedRows<'static, String> { Box::new(std::iter::empty()) };
        j.open_run(&new, ResumeOptions::default(), &mut rows, at)
            .expect("open")
            .run()
            .id
            .clone()
    }

    /// Yield until `f` holds (the heartbeat runs on the blocking pool), at most 10 s of real time.
    async fn until(mut f: impl FnMut() -> bool) {
        let waited = crate::clock::Stopwatch::start();
        while !f() {
            assert!(waited.elapsed() < Duration::from_secs(10), "timed out");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn the_heartbeat_renews_on_the_clock_and_stops_the_run_once_taken_over() {
        let d = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(start());
        let mut a = Journal::open(d.path()).expect("open a");
        // Opened 5 s before the heartbeat starts: its first beat moves the expiry.
        let run = open(&mut a, clock.now() - Duration::from_secs(5));
        let reader = Journal::open(d.path()).expect("open reader");
        let expiry = |r: &Journal| r.lease(&run).expect("q").expect("run").expires_at;
        let a = SharedJournal::new(a);
        let stop = StopToken::new();
        let (done, end) = tokio::sync::oneshot::channel();
        let beat = tokio::spawn(heartbeat(
            a.clone(),
            run.clone(),
            Arc::new(clock.clone()),
            Duration::from_secs(10),
            stop.clone(),
            end,
        ));
        // The first beat is at once; then one every 10 s of the clock, which the heartbeat never
        // moves itself.
        until(|| expiry(&reader) == Some(start() + Duration::from_secs(30))).await;
        until(|| clock.idlers() == 1).await;
        assert_eq!(
            clock.now(),
            start(),
            "the heartbeat does not drive the clock"
        );
        for beat in 1..=3u64 {
            until(|| clock.idlers() == 1).await;
            clock.advance(Duration::from_secs(10));
            let want = start() + Duration::from_secs(10 * beat + 30);
            until(|| expiry(&reader) == Some(want)).await;
        }
        assert!(!stop.is_stopped());
        // Another process takes the run over (its clock says a's lease expired).
        let mut b = Journal::open(d.path()).expect("open b");
        let taken = open(&mut b, start() + Duration::from_secs(3600));
        assert_eq!(taken, run, "b resumed the same run");
        assert_eq!(b.lease(&run).expect("q").expect("run").fence, 2);
        // a's next beat finds the fence moved: the engine is told to stop, and a writes nothing.
        let before = b.lease(&run).expect("q");
        until(|| clock.idlers() == 1).await;
        clock.advance(Duration::from_secs(10));
        let e = tokio::time::timeout(Duration::from_secs(10), beat)
            .await
            .expect("the heartbeat ends")
            .expect("task")
            .expect("the take-over");
        assert!(e.is_fenced(), "{e}");
        assert!(stop.is_stopped(), "the engine is stopped at once");
        assert_eq!(b.lease(&run).expect("q"), before);
        drop(done);
    }

    #[tokio::test]
    async fn the_heartbeat_ends_when_the_run_does() {
        let d = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(start());
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open(&mut a, clock.now());
        let (done, end) = tokio::sync::oneshot::channel();
        let beat = tokio::spawn(heartbeat(
            SharedJournal::new(a),
            run,
            Arc::new(clock.clone()),
            Duration::from_secs(10),
            StopToken::new(),
            end,
        ));
        let _ = done.send(());
        let r = tokio::time::timeout(Duration::from_secs(10), beat)
            .await
            .expect("ended")
            .expect("task");
        assert!(r.is_none());
    }
}
