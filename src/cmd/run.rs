//! `imcast run`: everything between a plan and a finished report, at the command edge.
//!
//! [`execute`] does the whole run given the plan's pieces behind the send traits: account
//! settings, journal decision (create / resume / refuse on change / continue), audit block, the
//! shared limiter, confirmation, signals (first SIGINT/SIGTERM stops starting calls and waits for
//! in-flight ones; a second aborts at once), progress (a bar on a terminal, log lines otherwise),
//! the report and the exit code.
//!
//! INTEGRATION TODO (lead): [`run`] must load the campaign (`crate::spec::load`), build the plan
//! (`crate::plan::build` with `PlanOptions { extra_suppress: account.suppress }`), wrap
//! `plan.calls()` in a `send::CallSource` (payload = `PlannedCall`), `plan.rows()` into
//! `journal::SeedRow`s (Valid → Pending with call seq, Invalid/Duplicate/Suppressed with the
//! reason as note), wrap `provider::Client` (or the `--mock` server's client) in a
//! `send::Transport` mapping `ProviderError::class()` onto `send::ErrorClass`, then call
//! [`execute`]. `--test-to` seeds only the given ids with `is_test: true`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use jiff::Timestamp;

use crate::action::Action;
use crate::cli::{GlobalArgs, RunArgs};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{BreakerSettings, Limit, RepoPaths};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::journal::{
    Journal, NewRun, Opened, RecipientStatus, ResumeOptions, RunFlags, SeedRows, SharedJournal,
};
use crate::report::{write_report, Audit};
use crate::send::{
    describe_counts, CallSource, Engine, EngineConfig, Progress, StopReason, StopToken, Transport,
};
use crate::throttle::{Limiter, LimiterOptions};

pub fn run(_g: &GlobalArgs, _args: &RunArgs) -> CmdResult {
    // INTEGRATION TODO: spec::load + plan::build + provider adapter, then `execute` (see the
    // module doc). Everything after the plan is implemented in `execute`.
    Err(super::not_yet("run"))
}

/// A deadline as the campaign writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSpec {
    At(Timestamp),
    /// After the run started (a resumed run keeps its original start).
    After(Duration),
}

/// What `execute` needs to know about the campaign and its plan.
pub struct RunInputs {
    pub campaign_file: PathBuf,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub action: Action,
    pub app_id: u64,
    pub endpoint: String,
    pub access_key_id: Option<String>,
    pub plan_hash: String,
    /// Plan hash without suppressions (lets a resume apply added suppressions); None if unknown.
    pub content_key: Option<String>,
    pub total_calls: u64,
    /// Valid recipients (for the guard, the confirmation and the ETA).
    pub recipients: u64,
    /// One rendered message, shown in the confirmation.
    pub sample_message: String,
    pub campaign_throttle: Option<Limit>,
    pub retry_max_attempts: u32,
    pub breaker: Option<BreakerSettings>,
    pub deadline: Option<DeadlineSpec>,
    pub guard_max_recipients: Option<u64>,
    pub is_test: bool,
}

/// Run the campaign: see the module doc. `rows` seeds the journal (called at most once).
pub fn execute<'r, S, T, E>(
    rt: &tokio::runtime::Runtime,
    args: &RunArgs,
    inp: RunInputs,
    rows: &mut dyn FnMut() -> SeedRows<'r, E>,
    source: Arc<S>,
    transport: Arc<T>,
    clock: SharedClock,
) -> CmdResult
where
    S: CallSource,
    T: Transport<Payload = S::Payload>,
    E: std::fmt::Display,
{
    if let Some(max) = inp.guard_max_recipients {
        if inp.recipients > max {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: the audience has {} recipients but guard.max_recipients is {max}; nothing was sent. \
                     Check the audience file, or raise the guard if this is intended",
                    inp.campaign_file.display(),
                    inp.recipients
                ),
            ));
        }
    }
    let paths = RepoPaths::discover(
        &inp.campaign_file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let account = paths.account_config().exit(Exit::Invalid)?;
    // The account's share bounds every campaign together; the campaign's own throttle (if any)
    // is a second limiter on its own key. `limit` is what this run can use at most.
    let account_limit = account.effective_limit(inp.action, None);
    let limit = account.effective_limit(inp.action, inp.campaign_throttle);
    let flags = RunFlags {
        new_run: args.new_run,
        continue_changed: args.continue_changed,
        resend_unknown: args.resend_unknown,
        yes: args.yes,
        mock: args.mock,
        test_to: args.test_to.clone(),
    };

    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.yes && interactive {
        let eta = eta(inp.action, inp.recipients, inp.total_calls, limit);
        eprintln!(
            "About to send campaign {:?}\n  app id    {}\n  endpoint  {}\n  action    {} ({})\n  recipients {}\n  calls     {}\n  limit     {}\n  ETA       {}\n  message   {}\n",
            inp.campaign,
            inp.app_id,
            inp.endpoint,
            inp.action,
            inp.action.api_name(),
            inp.recipients,
            inp.total_calls,
            limit.describe(),
            humantime::format_duration(eta),
            inp.sample_message
        );
        eprint!("Send? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("Nothing was sent.");
            return Ok(Exit::Ok);
        }
    }

    let audit = Audit::collect(
        &paths.root,
        &inp.plan_hash,
        inp.access_key_id.as_deref(),
        &inp.endpoint,
        &flags,
    );
    let mut journal = Journal::open(&paths.state_dir).map_err(|e| {
        let exit = e.exit();
        Failure::new(exit, e)
    })?;
    let new = NewRun {
        id: None,
        campaign: inp.campaign.clone(),
        occurrence: inp.occurrence.clone(),
        plan_hash: inp.plan_hash.clone(),
        content_key: inp.content_key.clone(),
        action: inp.action,
        flags,
        is_test: inp.is_test,
        audit: serde_json::to_value(&audit).unwrap_or_default(),
        limit,
        total_calls: inp.total_calls,
    };
    let opts = ResumeOptions {
        new_run: args.new_run,
        continue_changed: args.continue_changed,
        resend_unknown: args.resend_unknown,
    };
    let opened = journal
        .open_run(&new, opts, rows, clock.now())
        .map_err(|e| {
            let exit = e.exit();
            Failure::new(exit, e)
        })?;
    let run = opened.run().clone();
    match &opened {
        Opened::AlreadyFinished(r) => {
            eprintln!(
                "Campaign {:?}: run {} already {} ({}). Nothing to send. Pass --new-run to send to everyone again{}.",
                r.campaign,
                r.id,
                r.status,
                describe_counts(&journal.counts(&r.id).unwrap_or_default()),
                if journal.count_status(&r.id, RecipientStatus::Unknown).unwrap_or(0) > 0 {
                    ", or --resend-unknown to resend recipients whose outcome is unknown (may duplicate)"
                } else {
                    ""
                }
            );
            return Ok(Exit::Ok);
        }
        Opened::Created(r) => tracing::info!(run = %r.id, "starting a new run"),
        Opened::Resumed { run, recovered } => {
            eprintln!(
                "Resuming unfinished run {} of {:?} ({}).",
                run.id,
                run.campaign,
                describe_counts(&journal.counts(&run.id).unwrap_or_default())
            );
            if recovered.unknown_calls > 0 {
                eprintln!(
                    "  {} call(s) were in flight when the previous process stopped: their {} recipient(s) are `unknown` and are not resent (pass --resend-unknown to resend them, which may duplicate).",
                    recovered.unknown_calls, recovered.unknown_recipients
                );
            }
        }
        Opened::ResumedWithSuppressions {
            run,
            newly_suppressed,
            ..
        } => eprintln!(
            "Resuming run {} with {newly_suppressed} newly suppressed recipient(s) applied.",
            run.id
        ),
        Opened::Continued { run, from, skipped } => eprintln!(
            "Continuing run {from} as run {} with the changed content; {skipped} recipient(s) already handled are skipped.",
            run.id
        ),
    }
    let journal = SharedJournal::new(journal);
    let mut limiter = Limiter::open(
        journal.path(),
        inp.action.as_str(),
        account_limit,
        LimiterOptions {
            max_requests_per_second: (inp.action == Action::Batch)
                .then_some(account.max_requests_per_second),
            ..LimiterOptions::default()
        },
        clock.clone(),
    )
    .exit(Exit::Internal)?;
    if let Some(t) = inp.campaign_throttle.filter(|_| limit != account_limit) {
        let cap = Limiter::open(
            journal.path(),
            &format!("campaign:{}:{}", inp.campaign, inp.action),
            t,
            LimiterOptions::default(),
            clock.clone(),
        )
        .exit(Exit::Internal)?;
        limiter = limiter.capped_by(cap);
    }

    let mut cfg = EngineConfig::new(&run.id, &run.campaign, inp.action);
    cfg.max_in_flight = if inp.action == Action::Batch {
        account.max_batch_in_flight
    } else {
        account.max_in_flight
    };
    cfg.retry_max_attempts = inp.retry_max_attempts.max(1);
    cfg.breaker = inp.breaker.unwrap_or(account.breaker);
    cfg.resend_unknown = args.resend_unknown;
    cfg.deadline = inp.deadline.map(|d| match d {
        DeadlineSpec::At(t) => t,
        DeadlineSpec::After(dur) => {
            run.created_at
                + jiff::SignedDuration::try_from(dur).unwrap_or(jiff::SignedDuration::MAX)
        }
    });

    let stop = StopToken::new();
    let signal_exit = Arc::new(Mutex::new(None::<Exit>));
    let renderer = Arc::new(Renderer::new(std::io::stderr().is_terminal()));
    let r2 = renderer.clone();
    let end = rt.block_on(async {
        spawn_signal_handler(stop.clone(), signal_exit.clone());
        Engine::new(
            cfg,
            journal.clone(),
            limiter,
            transport,
            clock.clone(),
            stop,
        )
        .with_progress(Arc::new(move |p: &Progress| r2.update(p)))
        .run(source)
        .await
    });
    renderer.finish();
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            let exit = e.exit();
            let _ = journal.with_blocking(|j| write_report(j, &run.id, &paths.reports_dir));
            return Err(Failure::new(exit, e).context_run(&run.id));
        }
    };
    let report = journal
        .with_blocking(|j| write_report(j, &run.id, &paths.reports_dir))
        .with_context(|| {
            format!(
                "run {} stopped, but its report could not be written; `imcast report` retries",
                run.id
            )
        })
        .exit(Exit::Internal)?;
    let file = inp.campaign_file.display();
    eprintln!(
        "Run {} {}: {}.",
        run.id,
        end.status,
        describe_counts(&end.counts)
    );
    match &end.reason {
        StopReason::Completed | StopReason::Deadline | StopReason::Cancelled => {}
        StopReason::Interrupted => eprintln!("Stopped by a signal; resume with: imcast run {file}"),
        StopReason::Breaker { message } => eprintln!("{message}\nResume with: imcast run {file}"),
        StopReason::Fatal { message, .. } => {
            eprintln!(
                "The provider refused: {message}\nFix it, then resume with: imcast run {file}"
            )
        }
        StopReason::Paused => {
            eprintln!("Paused by request; resume with: imcast resume or imcast run {file}")
        }
    }
    println!("{}", report.dir.display());
    let exit = match (
        end.exit(),
        *signal_exit.lock().unwrap_or_else(|p| p.into_inner()),
    ) {
        (Exit::Interrupted, Some(sig)) => sig,
        (e, _) => e,
    };
    Ok(exit)
}

trait FailureContext {
    fn context_run(self, run: &str) -> Failure;
}

impl FailureContext for Failure {
    fn context_run(self, run: &str) -> Failure {
        Failure {
            exit: self.exit,
            error: self.error.context(format!("run {run}")),
        }
    }
}

/// Rough time to send: the limiter's rate over the units to send.
fn eta(action: Action, recipients: u64, calls: u64, limit: Limit) -> Duration {
    let units = if action == Action::Batch {
        recipients
    } else {
        calls
    };
    let rate = limit.per_second();
    if rate <= 0.0 || !rate.is_finite() {
        return Duration::ZERO;
    }
    Duration::from_secs((units as f64 / rate).ceil() as u64)
}

fn spawn_signal_handler(stop: StopToken, signal_exit: Arc<Mutex<Option<Exit>>>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let exit = tokio::select! {
                    _ = int.recv() => Exit::Interrupted,
                    _ = term.recv() => Exit::Terminated,
                };
                {
                    let mut g = signal_exit.lock().unwrap_or_else(|p| p.into_inner());
                    g.get_or_insert(exit);
                }
                if stop.stop() >= 2 {
                    eprintln!("Second signal: aborting now. The journal is consistent; resume with `imcast run`.");
                    std::process::exit(i32::from(exit.code()));
                }
                eprintln!("Stopping: no new calls; waiting for calls in flight to finish (signal again to abort).");
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                signal_exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Exit::Interrupted);
                stop.stop();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(Exit::Interrupted.code()));
            }
        }
    });
}

/// Progress on stderr: a bar on a terminal, a log line every 10 s otherwise.
struct Renderer {
    bar: Option<indicatif::ProgressBar>,
    last_log: Mutex<Option<Instant>>,
}

impl Renderer {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} recipients  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Renderer {
            bar,
            last_log: Mutex::new(None),
        }
    }

    fn update(&self, p: &Progress) {
        let per_window = p.rate * p.limit.window.as_secs_f64();
        let msg = format!(
            "{:.0} per {} (limit {})",
            per_window,
            humantime::format_duration(p.limit.window),
            p.limit.limit
        );
        if let Some(b) = &self.bar {
            b.set_length(p.deliverable_total());
            b.set_position(p.settled());
            b.set_message(msg);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            *last = Some(Instant::now());
            tracing::info!(
                run = %p.run_id,
                settled = p.settled(),
                total = p.deliverable_total(),
                calls = p.calls_done,
                rate = %msg,
                "progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The system clock, for callers wiring `execute`.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}
