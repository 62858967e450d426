//! `imcast run`: everything between a campaign file and a finished report, at the command edge.
//!
//! [`run_campaign`] is the library entry point (the CLI and the daemon call it from inside a
//! tokio runtime): it builds the plan (`spec` → `plan`, blocking work on the blocking pool),
//! picks the target (the campaign's endpoint with credentials from the environment, or an
//! override such as the embedded mock), wraps the plan and the provider client in the engine's
//! adapters (`send::adapters`) and hands them to the shared core: account settings, journal
//! decision (create / resume / refuse on change / continue), audit block, the shared limiter,
//! confirmation, progress, the report and the exit code. [`execute`] is the same core for callers
//! that already have the plan's pieces behind the send traits (tests).
//!
//! Signals are the caller's: the CLI installs a handler that trips the [`StopToken`] (first
//! SIGINT/SIGTERM stops starting calls and waits for in-flight ones; a second aborts at once).
//!
//! Confirmation: on a terminal (stdin and stderr) `run` shows what it is about to send and asks;
//! `--yes` skips that. Off a terminal without `--yes`, a real send is refused (exit 2) rather
//! than sent unconfirmed or left waiting for an answer nobody can type; `--mock` runs need no
//! confirmation (nothing leaves the machine).

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use jiff::Timestamp;
use sha2::{Digest, Sha256};

use crate::action::Action;
use crate::cli::{GlobalArgs, RunArgs};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{AccountConfig, BreakerSettings, Limit, RepoPaths, ReportFormats};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::journal::{
    Journal, NewRun, Opened, RecipientStatus, ResumeOptions, RunFlags, RunInfo, RunStatus,
    SeedRows, SharedJournal,
};
use crate::plan::{Plan, PlanOptions, PlannedCall};
use crate::provider::{Client, ClientConfig, Credentials};
use crate::report::{write_report_with, Audit, ReportOptions};
use crate::schedule::QuietHours;
use crate::send::adapters::{seed_rows, test_seed_rows, PlanSource, ProviderTransport};
use crate::send::{
    describe_counts, CallSource, Engine, EngineConfig, Progress, ProgressFn, StopReason, StopToken,
    Transport,
};
use crate::spec::{Campaign, LoadOptions};
use crate::throttle::{Limiter, LimiterOptions};

/// One run of a campaign, as the CLI or the daemon asks for it.
pub struct CampaignRun {
    pub campaign: Campaign,
    /// The schedule occurrence this run is for (daemon), None for an ad-hoc run.
    pub occurrence: Option<String>,
    /// Repository root, `imcast.toml`, state and report directories.
    pub paths: RepoPaths,
    /// Send here with these credentials instead of the campaign's endpoint and the environment's
    /// credentials (the mock provider).
    pub target: Option<(url::Url, Credentials)>,
    /// The target is the embedded mock (recorded in the audit flags).
    pub mock: bool,
    /// Skip the confirmation.
    pub yes: bool,
    /// Ask for confirmation on stdin/stderr unless `yes` (only when both are a terminal).
    pub interactive: bool,
    pub new_run: bool,
    pub continue_changed: bool,
    pub resend_unknown: bool,
    /// Send to these ids only, as a test run (`--test-to`).
    pub test_to: Vec<u64>,
    /// Progress after each call (the CLI renders a bar or log lines; None: nothing).
    pub progress: Option<ProgressFn>,
    /// Print the human notes (resuming, already finished) on stderr; else they go to tracing.
    pub notes_on_stderr: bool,
    /// Per-recipient report files (`--report-format`); None: `imcast.toml`'s `report.formats`.
    pub report_formats: Option<ReportFormats>,
}

impl CampaignRun {
    /// A run with everything off: no target override, no flags, no prompt.
    pub fn new(campaign: Campaign, paths: RepoPaths) -> Self {
        CampaignRun {
            campaign,
            occurrence: None,
            paths,
            target: None,
            mock: false,
            yes: true,
            interactive: false,
            new_run: false,
            continue_changed: false,
            resend_unknown: false,
            test_to: Vec::new(),
            progress: None,
            notes_on_stderr: false,
            report_formats: None,
        }
    }
}

/// How a run ended, for the caller.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run's id (None when nothing was started: confirmation declined).
    pub run_id: Option<String>,
    pub exit: Exit,
    /// The run's status in the journal after this session.
    pub status: Option<RunStatus>,
    /// Why the engine stopped (None when it did not run: already finished, declined).
    pub reason: Option<StopReason>,
    pub counts: BTreeMap<RecipientStatus, u64>,
    pub calls_done: u64,
    /// Where the report was written.
    pub report_dir: Option<PathBuf>,
    /// True when the latest run had already finished and nothing was sent.
    pub already_finished: bool,
}

impl RunSummary {
    fn nothing(exit: Exit) -> Self {
        RunSummary {
            run_id: None,
            exit,
            status: None,
            reason: None,
            counts: BTreeMap::new(),
            calls_done: 0,
            report_dir: None,
            already_finished: false,
        }
    }
}

/// A deadline as the campaign writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSpec {
    At(Timestamp),
    /// After the run started (a resumed run keeps its original start).
    After(Duration),
}

/// What the core needs to know about the campaign and its plan.
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

/// Flags and environment of one run for the core.
#[derive(Clone)]
struct ExecOptions {
    flags: RunFlags,
    interactive: bool,
    notes_on_stderr: bool,
    quiet_hours: Option<QuietHours>,
    report_formats: Option<ReportFormats>,
}

fn note(on_stderr: bool, msg: &str) {
    if on_stderr {
        eprintln!("{msg}");
    } else {
        tracing::info!("{msg}");
    }
}

/// The journal opened on a run the engine should drive.
struct Prepared {
    journal: Journal,
    run: RunInfo,
    account: AccountConfig,
    account_limit: Limit,
}

enum Prep {
    Go(Box<Prepared>),
    Done(RunSummary),
}

/// What a person confirms before a real send: where it goes, how much, how long, and one
/// rendered message.
fn confirmation_text(inp: &RunInputs, limit: &Limit, eta: Duration) -> String {
    format!(
        "About to send campaign {:?}{}\n  app id     {}\n  endpoint   {}\n  action     {} ({})\n  recipients {}\n  calls      {}\n  limit      {}\n  ETA        {}\n  message    {}\n",
        inp.campaign,
        if inp.is_test { " as a TEST to the --test-to ids only" } else { "" },
        inp.app_id,
        inp.endpoint,
        inp.action,
        inp.action.api_name(),
        inp.recipients,
        inp.total_calls,
        limit.describe(),
        humantime::format_duration(eta),
        inp.sample_message
    )
}

/// Show `text`, ask "Send? [y/N]" and read one answer line: only `y`, `Y` or `yes` sends
/// (an empty line, anything else or end of input does not).
fn confirm(text: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> bool {
    let _ = writeln!(out, "{text}");
    let _ = write!(out, "Send? [y/N] ");
    let _ = out.flush();
    let mut answer = String::new();
    let _ = input.read_line(&mut answer);
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        let _ = writeln!(out, "Nothing was sent.");
    }
    yes
}

/// Everything before the engine (blocking: files, prompt, journal).
fn prepare<'r, E: std::fmt::Display + Send>(
    inp: &RunInputs,
    opts: &ExecOptions,
    paths: &RepoPaths,
    rows: &mut dyn FnMut() -> SeedRows<'r, E>,
    now: Timestamp,
) -> Result<Prep, Failure> {
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
    let account = paths.account_config().exit(Exit::Invalid)?;
    // The account's share bounds every campaign together; the campaign's own throttle (if any)
    // is a second limiter on its own key. `limit` is what this run can use at most.
    let account_limit = account.effective_limit(inp.action, None);
    let limit = account.effective_limit(inp.action, inp.campaign_throttle);
    let flags = opts.flags.clone();

    if !flags.yes && !flags.mock {
        if !opts.interactive {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: not on a terminal, so there is no one to confirm this send of {} recipient(s) to {}; \
                     nothing was sent. Pass --yes to send without confirmation (e.g. from scripts or CI)",
                    inp.campaign_file.display(),
                    inp.recipients,
                    inp.endpoint
                ),
            ));
        }
        let eta = eta(inp.action, inp.recipients, inp.total_calls, limit);
        let text = confirmation_text(inp, &limit, eta);
        let stdin = std::io::stdin();
        if !confirm(&text, &mut stdin.lock(), &mut std::io::stderr()) {
            return Ok(Prep::Done(RunSummary::nothing(Exit::Ok)));
        }
    }

    let audit = Audit::collect(
        &paths.root,
        &inp.plan_hash,
        inp.access_key_id.as_deref(),
        &inp.endpoint,
        inp.app_id,
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
        flags: flags.clone(),
        is_test: inp.is_test,
        audit: serde_json::to_value(&audit).unwrap_or_default(),
        limit,
        total_calls: inp.total_calls,
    };
    let ropts = ResumeOptions {
        new_run: flags.new_run,
        continue_changed: flags.continue_changed,
        resend_unknown: flags.resend_unknown,
    };
    let opened = journal.open_run(&new, ropts, rows, now).map_err(|e| {
        let exit = e.exit();
        Failure::new(exit, e)
    })?;
    let run = opened.run().clone();
    let say = |m: String| note(opts.notes_on_stderr, &m);
    match &opened {
        Opened::AlreadyFinished(r) => {
            let counts = journal.counts(&r.id).unwrap_or_default();
            say(format!(
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
        Opened::Created(r) if r.is_test => say(format!(
            "Test run {} of {:?}: sending to {} test recipient(s) only; the campaign's run is not touched.",
            r.id, r.campaign, inp.recipients
        )),
        Opened::Created(r) => tracing::info!(run = %r.id, "starting a new run"),
        Opened::Resumed { run, recovered } => {
            say(format!(
                "Resuming unfinished run {} of {:?} ({}).",
                run.id,
                run.campaign,
                describe_counts(&journal.counts(&run.id).unwrap_or_default())
            ));
            if recovered.unknown_calls > 0 {
                say(format!(
                    "  {} call(s) were in flight when the previous process stopped: their {} recipient(s) are `unknown` and are not resent (pass --resend-unknown to resend them, which may duplicate).",
                    recovered.unknown_calls, recovered.unknown_recipients
                ));
            }
        }
        Opened::ResumedWithSuppressions {
            run,
            newly_suppressed,
            ..
        } => say(format!(
            "Resuming run {} with {newly_suppressed} newly suppressed recipient(s) applied.",
            run.id
        )),
        Opened::Continued { run, from, skipped } => say(format!(
            "Continuing run {from} as run {} with the changed content; {skipped} recipient(s) already handled are skipped.",
            run.id
        )),
    }
    Ok(Prep::Go(Box::new(Prepared {
        journal,
        run,
        account,
        account_limit,
    })))
}

/// The engine part of a run, then the report.
#[allow(clippy::too_many_arguments)]
async fn drive<S, T>(
    inp: RunInputs,
    opts: ExecOptions,
    paths: RepoPaths,
    prepared: Prepared,
    source: Arc<S>,
    transport: Arc<T>,
    clock: SharedClock,
    stop: StopToken,
    progress: Option<ProgressFn>,
) -> Result<RunSummary, Failure>
where
    S: CallSource,
    T: Transport<Payload = S::Payload>,
{
    let Prepared {
        journal,
        run,
        account,
        account_limit,
    } = prepared;
    let limit = account.effective_limit(inp.action, inp.campaign_throttle);
    let journal = SharedJournal::new(journal);
    let throttle_db = journal.path().with_file_name(crate::throttle::DB_FILE);
    let mut limiter = Limiter::open(
        &throttle_db,
        inp.action.as_str(),
        account_limit,
        LimiterOptions {
            max_requests_per_second: (inp.action == Action::Batch)
                .then_some(account.max_requests_per_second),
            // The provider client's request timeout, twice (it re-signs once): see `throttle`.
            call_timeout: crate::throttle::DEFAULT_CALL_TIMEOUT,
        },
        clock.clone(),
    )
    .exit(Exit::Internal)?;
    if let Some(t) = inp.campaign_throttle.filter(|_| limit != account_limit) {
        let cap = Limiter::open(
            &throttle_db,
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
    cfg.resend_unknown = opts.flags.resend_unknown;
    cfg.quiet_hours = opts.quiet_hours.clone();
    cfg.deadline = inp.deadline.map(|d| match d {
        DeadlineSpec::At(t) => t,
        DeadlineSpec::After(dur) => {
            run.created_at
                + jiff::SignedDuration::try_from(dur).unwrap_or(jiff::SignedDuration::MAX)
        }
    });

    let mut engine = Engine::new(
        cfg,
        journal.clone(),
        limiter,
        transport,
        clock.clone(),
        stop,
    );
    if let Some(p) = progress {
        engine = engine.with_progress(p);
    }
    let end = engine.run(source).await;
    let reports_dir = paths.reports_dir.clone();
    let run_id = run.id.clone();
    let report_opts = ReportOptions {
        formats: opts.report_formats.unwrap_or(account.report_formats),
        campaign_file: Some(inp.campaign_file.clone()),
        ..ReportOptions::default()
    };
    let end = match end {
        Ok(e) => e,
        Err(e) => {
            let exit = e.exit();
            let (j, r) = (journal.clone(), run_id.clone());
            let _ = tokio::task::spawn_blocking(move || {
                j.with_blocking(|j| write_report_with(j, &r, &reports_dir, &report_opts))
            })
            .await;
            return Err(Failure::new(exit, e).context_run(&run.id));
        }
    };
    let (j, r) = (journal.clone(), run_id.clone());
    let report = tokio::task::spawn_blocking(move || {
        j.with_blocking(|j| write_report_with(j, &r, &reports_dir, &report_opts))
    })
    .await
    .map_err(|e| anyhow!("report task failed: {e}"))
    .exit(Exit::Internal)?
    .with_context(|| {
        format!(
            "run {} stopped, but its report could not be written; `imcast report` retries",
            run.id
        )
    })
    .exit(Exit::Internal)?;
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

/// Print where a run stands (CLI): counts, how to resume, and the report directory on stdout.
fn print_summary(s: &RunSummary, file: &std::path::Path) {
    let file = file.display();
    let (Some(id), Some(status)) = (&s.run_id, s.status) else {
        return;
    };
    if s.already_finished {
        return;
    }
    eprintln!("Run {id} {status}: {}.", describe_counts(&s.counts));
    match &s.reason {
        None | Some(StopReason::Completed | StopReason::Deadline | StopReason::Cancelled) => {}
        Some(StopReason::Interrupted) => {
            eprintln!("Stopped by a signal; resume with: imcast run {file}")
        }
        Some(StopReason::Breaker { message }) => {
            eprintln!("{message}\nResume with: imcast run {file}")
        }
        Some(StopReason::Fatal { message, .. }) => {
            eprintln!(
                "The provider refused: {message}\nFix it, then resume with: imcast run {file}"
            )
        }
        Some(StopReason::Paused) => {
            eprintln!("Paused by request; resume with: imcast resume or imcast run {file}")
        }
    }
    if let Some(dir) = &s.report_dir {
        eprintln!("Report: {}", dir.display());
        crate::outln!("{}", dir.display());
    }
}

/// Run the campaign with the plan's pieces already behind the send traits (tests; see the module
/// doc). `rows` seeds the journal (called at most once).
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
    E: std::fmt::Display + Send,
{
    let paths = RepoPaths::discover(
        &inp.campaign_file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let opts = ExecOptions {
        flags: flags_of(args),
        interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        notes_on_stderr: true,
        quiet_hours: None,
        report_formats: args.report_format,
    };
    let prepared = match prepare(&inp, &opts, &paths, rows, clock.now())? {
        Prep::Done(s) => return Ok(s.exit),
        Prep::Go(p) => *p,
    };
    let file = inp.campaign_file.clone();
    let stop = StopToken::new();
    let signal_exit = Arc::new(Mutex::new(None::<Exit>));
    let renderer = Arc::new(Renderer::new(std::io::stderr().is_terminal()));
    let r2 = renderer.clone();
    let progress: ProgressFn = Arc::new(move |p: &Progress| r2.update(p));
    let res = rt.block_on(async {
        spawn_signal_handler(stop.clone(), signal_exit.clone());
        drive(
            inp,
            opts,
            paths,
            prepared,
            source,
            transport,
            clock,
            stop,
            Some(progress),
        )
        .await
    });
    renderer.finish();
    let s = res?;
    print_summary(&s, &file);
    Ok(signal_mapped(s.exit, &signal_exit))
}

/// Whether the latest run of `campaign` in the mock journal has finished (no journal yet: false).
fn latest_mock_run_finished(paths: &RepoPaths, campaign: &str) -> bool {
    if !paths.state_dir.join(crate::journal::DB_FILE).exists() {
        return false;
    }
    Journal::open(&paths.state_dir)
        .ok()
        .and_then(|j| j.latest_run(campaign, false).ok().flatten())
        .is_some_and(|r| !r.status.is_unfinished())
}

fn flags_of(args: &RunArgs) -> RunFlags {
    RunFlags {
        new_run: args.new_run,
        continue_changed: args.continue_changed,
        resend_unknown: args.resend_unknown,
        yes: args.yes,
        mock: args.mock,
        test_to: args.test_to.clone(),
    }
}

fn signal_mapped(exit: Exit, signal_exit: &Mutex<Option<Exit>>) -> Exit {
    match (exit, *signal_exit.lock().unwrap_or_else(|p| p.into_inner())) {
        (Exit::Interrupted, Some(sig)) => sig,
        (e, _) => e,
    }
}

/// `imcast run FILE`.
pub fn run(_g: &GlobalArgs, args: &RunArgs) -> CmdResult {
    let campaign = crate::spec::load(
        &args.file,
        &LoadOptions {
            allow_endpoints: args.allow_endpoint.clone(),
        },
    )
    .exit(Exit::Invalid)?;
    let mut paths = RepoPaths::discover(
        &args.file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let mut new_run = args.new_run;
    if args.mock {
        // A mock run must never stand for the real campaign: it keeps its own journal and
        // reports (unless the command line names them), so a demo or a rehearsal cannot make a
        // later real `run` answer "already finished". The embedded mock remembers nothing between
        // processes, so a finished mock run is simply run again.
        if args.state.state_dir.is_none() {
            paths.state_dir = paths.state_dir.join("mock");
        }
        if args.report_dir.is_none() {
            paths.reports_dir = paths.reports_dir.join("mock");
        }
        new_run = new_run || latest_mock_run_finished(&paths, &campaign.name);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
        .exit(Exit::Internal)?;
    let stop = StopToken::new();
    let signal_exit = Arc::new(Mutex::new(None::<Exit>));
    let renderer = Arc::new(Renderer::new(std::io::stderr().is_terminal()));
    let r2 = renderer.clone();
    let res = rt.block_on(async {
        spawn_signal_handler(stop.clone(), signal_exit.clone());
        let mock = if args.mock {
            // The embedded mock serves the campaign's region, so the scope the client signs checks.
            let m = crate::mock::start(crate::mock::MockConfig {
                region: campaign.region.clone(),
                ..crate::mock::MockConfig::default()
            })
                .await
                .context("start the embedded mock provider")
                .exit(Exit::Internal)?;
            eprintln!(
                "Sending to the embedded mock provider at {} (nothing leaves this machine).",
                m.endpoint()
            );
            Some(m)
        } else {
            None
        };
        let req = CampaignRun {
            campaign,
            occurrence: None,
            paths,
            target: mock.as_ref().map(|m| (m.endpoint(), m.credentials())),
            mock: args.mock,
            yes: args.yes,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
            new_run,
            continue_changed: args.continue_changed,
            resend_unknown: args.resend_unknown,
            test_to: args.test_to.clone(),
            progress: Some(Arc::new(move |p: &Progress| r2.update(p))),
            notes_on_stderr: true,
            report_formats: args.report_format,
        };
        let res = run_campaign(req, Arc::new(SystemClock), stop).await;
        if let Some(m) = mock {
            let st = m.stats();
            eprintln!(
                "Mock provider: {} request(s), {} message(s) accepted, {} rate-limited, {} duplicate(s), most in any window {}.",
                st.requests, st.messages, st.rate_limited, st.duplicates, st.max_in_window
            );
            m.shutdown().await;
        }
        res
    });
    renderer.finish();
    let s = res?;
    print_summary(&s, &args.file);
    Ok(signal_mapped(s.exit, &signal_exit))
}

/// Run one campaign to the end of this session (see the module doc). Call from inside a tokio
/// runtime; blocking work goes to the blocking pool. `stop` stops starting calls (in-flight ones
/// are waited for and committed); the summary's exit is then `Interrupted`.
pub async fn run_campaign(
    req: CampaignRun,
    clock: SharedClock,
    stop: StopToken,
) -> Result<RunSummary, Failure> {
    let (credentials, endpoint) = match &req.target {
        Some((url, c)) => (c.clone(), url.clone()),
        None => {
            let c = Credentials::from_env()
                .map_err(|e| {
                    anyhow!(
                        "{e}. Real sends need Volcengine credentials in the environment: VOLC_ACCESSKEY and \
                         VOLC_SECRETKEY (or VOLC_SECRETKEY_FILE), optionally VOLC_SESSION_TOKEN. To try \
                         imcast without credentials, add --mock"
                    )
                })
                .exit(Exit::Access)?;
            (c, req.campaign.endpoint.clone())
        }
    };
    let access_key_id = credentials.access_key_id.clone();
    let client = Client::with_clock(
        ClientConfig::new(endpoint.clone(), req.campaign.region.clone(), credentials),
        clock.clone(),
    )
    .exit(Exit::Internal)?;

    let campaign = Arc::new(req.campaign.clone());
    let paths = req.paths.clone();
    let flags = RunFlags {
        new_run: req.new_run,
        continue_changed: req.continue_changed,
        resend_unknown: req.resend_unknown,
        yes: req.yes,
        mock: req.mock,
        test_to: req.test_to.clone(),
    };
    let opts = ExecOptions {
        flags,
        interactive: req.interactive,
        notes_on_stderr: req.notes_on_stderr,
        quiet_hours: req.campaign.quiet_hours.clone(),
        report_formats: req.report_formats,
    };
    let test_to = req.test_to.clone();
    let occurrence = req.occurrence.clone();
    let c2 = campaign.clone();
    let endpoint_s = endpoint.to_string();
    let now = clock.now();
    let o2 = opts.clone();
    let p2 = paths.clone();
    // Plan, confirmation and journal: blocking work, off the runtime threads.
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let account = p2.account_config().exit(Exit::Invalid)?;
        let plan = crate::plan::build(
            &c2,
            &PlanOptions {
                extra_suppress: account.suppress.clone(),
            },
        )
        .exit(Exit::Invalid)?;
        for w in plan.warnings() {
            tracing::warn!(campaign = %c2.name, "{w}");
        }
        let plan = Arc::new(plan);
        let (inp, source) = if test_to.is_empty() {
            let inp = inputs_for(&c2, &plan, occurrence, &endpoint_s, &access_key_id, false);
            (inp, PlanSource::Plan(plan.clone()))
        } else {
            let calls = test_calls(&c2, &plan, &test_to)?;
            let mut inp = inputs_for(&c2, &plan, occurrence, &endpoint_s, &access_key_id, true);
            inp.recipients = test_to.len() as u64;
            inp.total_calls = calls.len() as u64;
            inp.guard_max_recipients = None;
            inp.deadline = None;
            (inp, PlanSource::Fixed(calls))
        };
        let mut prep = match &source {
            PlanSource::Plan(p) => {
                let mut rows = || seed_rows(p);
                prepare(&inp, &o2, &p2, &mut rows, now)?
            }
            PlanSource::Fixed(calls) => {
                let mut rows = || test_seed_rows(calls);
                prepare(&inp, &o2, &p2, &mut rows, now)?
            }
        };
        if let Prep::Go(p) = &mut prep {
            record_for_report(&mut p.journal, &p.run.id, &c2, &plan, &source);
        }
        Ok((inp, source, prep))
    })
    .await
    .map_err(|e| anyhow!("planning task failed: {e}"))
    .exit(Exit::Internal)??;
    let (inp, source, prep) = prepared;
    let prepared = match prep {
        Prep::Done(s) => return Ok(s),
        Prep::Go(p) => *p,
    };
    let transport = Arc::new(ProviderTransport::new(client, campaign));
    drive(
        inp,
        opts,
        paths,
        prepared,
        Arc::new(source),
        transport,
        clock,
        stop,
        req.progress,
    )
    .await
}

/// Record what the run's report shows and the journal's core tables do not hold: the campaign
/// file, its AppId and the largest variants, rendered. A failure costs only the report's
/// Contents, never the send: it is logged and the run goes on.
fn record_for_report(
    journal: &mut Journal,
    run_id: &str,
    c: &Campaign,
    plan: &Plan,
    source: &PlanSource,
) {
    let res = (|| -> Result<(), String> {
        let (variants, distinct) = match source {
            PlanSource::Plan(_) => (
                plan.variants(crate::report::facts::MAX_VARIANTS)
                    .map_err(|e| e.to_string())?,
                plan.counts().distinct_contents,
            ),
            PlanSource::Fixed(calls) => {
                let mut by: Vec<crate::plan::PlanVariant> = Vec::new();
                for call in calls {
                    match by.iter_mut().find(|v| v.variant == call.variant) {
                        Some(v) => v.recipients += call.receivers.len() as u64,
                        None => by.push(crate::plan::PlanVariant {
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

/// The core's inputs from a campaign and its plan.
fn inputs_for(
    c: &Campaign,
    plan: &Plan,
    occurrence: Option<String>,
    endpoint: &str,
    access_key_id: &str,
    is_test: bool,
) -> RunInputs {
    RunInputs {
        campaign_file: c.path.clone(),
        campaign: c.name.clone(),
        occurrence,
        action: c.action,
        app_id: c.app_id,
        endpoint: endpoint.to_string(),
        access_key_id: Some(access_key_id.to_string()),
        plan_hash: if is_test {
            format!("test:{}", plan.hash())
        } else {
            plan.hash().to_string()
        },
        content_key: Some(plan.content_key().to_string()),
        total_calls: plan.counts().calls,
        recipients: plan.counts().valid,
        sample_message: plan
            .samples()
            .first()
            .map(|s| s.content.clone())
            .unwrap_or_else(|| "(no valid recipients: nothing to send)".into()),
        campaign_throttle: c.throttle.map(|t| Limit::new(t.limit, t.window)),
        retry_max_attempts: c.retry_max_attempts,
        breaker: Some(BreakerSettings {
            consecutive_failures: c.breaker.consecutive_failures,
            window_calls: c.breaker.window_calls,
            max_failure_ratio: c.breaker.max_failure_ratio,
        }),
        deadline: c.deadline.map(|d| match d {
            crate::spec::Deadline::At(t) => DeadlineSpec::At(t),
            crate::spec::Deadline::After(d) => DeadlineSpec::After(d),
        }),
        guard_max_recipients: c.guard_max_recipients,
        is_test,
    }
}

/// The calls of a `--test-to` run: seed id i gets the Content rendered for the plan's i-th sample
/// recipient (round robin over the first few), grouped into calls the action allows.
fn test_calls(c: &Campaign, plan: &Plan, ids: &[u64]) -> Result<Vec<PlannedCall>, Failure> {
    let samples = plan.samples();
    let msg_type = match plan.calls().next() {
        Some(Ok(call)) => call.msg_type,
        Some(Err(e)) => return Err(Failure::new(Exit::Invalid, e)),
        None => {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: the campaign has no valid recipients, so there is no rendered Content to test with",
                    c.path.display()
                ),
            ))
        }
    };
    if samples.is_empty() {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!("{}: no rendered sample to test with", c.path.display()),
        ));
    }
    let mut uniq: Vec<u64> = Vec::new();
    for &id in ids {
        if !uniq.contains(&id) {
            uniq.push(id);
        }
    }
    let mut groups: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (i, id) in uniq.iter().enumerate() {
        groups.entry(i % samples.len()).or_default().push(*id);
    }
    let max = c.action.max_receivers().max(1);
    let mut calls = Vec::new();
    for (si, ids) in groups {
        let s = &samples[si];
        let mut h = Sha256::new();
        h.update(s.content.as_bytes());
        for (k, v) in &s.ext {
            h.update([0]);
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
        }
        let variant = hex::encode(h.finalize())[..12].to_string();
        for chunk in ids.chunks(max) {
            calls.push(PlannedCall {
                seq: calls.len() as u64,
                variant: variant.clone(),
                receivers: chunk.to_vec(),
                msg_type,
                content: s.content.clone(),
                ext: s.ext.clone(),
            });
        }
    }
    Ok(calls)
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
        // The first second's rate says nothing (one call over a few milliseconds).
        let msg = if p.elapsed_secs < 1.0 {
            format!(
                "limit {} per {}",
                p.limit.limit,
                humantime::format_duration(p.limit.window)
            )
        } else {
            format!(
                "{:.0} per {} (limit {})",
                per_window,
                humantime::format_duration(p.limit.window),
                p.limit.limit
            )
        };
        if let Some(q) = &p.quiet_until {
            let msg = format!("quiet hours: no calls start until {q}");
            match &self.bar {
                Some(b) => b.set_message(msg),
                None => tracing::info!(run = %p.run_id, "{msg}"),
            }
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str) -> (bool, String) {
        let mut out = Vec::new();
        let yes = confirm("About to send…\n", &mut line.as_bytes(), &mut out);
        (yes, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn only_an_explicit_yes_sends() {
        for l in ["y\n", "Y\n", "yes\n", "  y  \r\n"] {
            let (yes, out) = answer(l);
            assert!(yes, "{l:?}");
            assert!(out.ends_with("Send? [y/N] "), "{out}");
        }
        for l in ["", "\n", "n\n", "no\n", "yes please\n", "YES\n", "Send\n"] {
            let (yes, out) = answer(l);
            assert!(!yes, "{l:?}");
            assert!(out.contains("About to send…"), "{out}");
            assert!(out.ends_with("Nothing was sent.\n"), "{out}");
        }
    }
}
