//! One run of a campaign, as a library: everything between a loaded campaign and a finished
//! report. `imcast run` (the shell in `cmd::run`) and the daemon (`daemon::send_runner`) both call
//! [`run_campaign`]; tests drive [`execute`] with fake transports.
//!
//! The pieces, one concern a file:
//! - [`settings`]: campaign + `imcast.toml` + flags → the [`Settings`] a run uses (the one
//!   resolution step) and the one ETA;
//! - [`prepare`]: the guard, the confirmation (a [`Confirmation`] handed to the caller's
//!   callback), the audit block and the journal's decision (create / resume / refuse a changed
//!   plan / continue / already finished);
//! - `drive`: the shared limiter, the engine and the report;
//! - `staged`: a run in stages (canary, waves): one engine per stage, waits and gates kept as
//!   times in the journal;
//! - [`test_to`]: the calls of a `--test-to` run.
//!
//! [`run_campaign`] builds the plan (`spec` → `plan`, on the blocking pool), applies the audience
//! guard (`guard::check`, the one `validate` and `plan` apply; an empty audience the campaign allows
//! ends the run here with a note and exit 0, nothing recorded), picks the target
//! (the campaign's endpoint with credentials from the environment, or an override such as the
//! embedded mock), wraps the plan and the provider client in the engine's adapters
//! (`send::adapters`), then prepares and drives.
//!
//! Owns: the order of a run's steps and the [`RunSummary`] its caller gets back.
//! Invariants: nothing is sent before the guard passed, the send was confirmed (or needs no
//! confirmation) and the journal recorded the run; the summary's exit comes from the one exit
//! table (`exit.rs`). Must not: print, read stdin, install signal handlers or read the system
//! clock (the caller passes a [`SharedClock`], a [`StopToken`] it trips on a signal, and
//! [`Hooks`] for the prompt, the notes and the progress), or import `cmd`.

mod drive;
pub mod prepare;
pub mod settings;
mod staged;
pub mod test_to;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;

use crate::clock::SharedClock;
use crate::config::{RepoPaths, ReportFormats};
use crate::exit::{Exit, ExitContext, Failure};
use crate::journal::{RecipientStatus, RunFlags, RunStatus, SeedRows};
use crate::plan::PlanOptions;
use crate::provider::{Client, ClientConfig, Credentials};
use crate::send::adapters::{seed_rows, test_seed_rows, PlanSource, ProviderTransport};
use crate::send::{CallSource, ProgressFn, StopReason, StopToken, Transport, WarnFn};
use crate::spec::Campaign;

pub use prepare::Confirmation;
pub use settings::{LimitSource, Settings};

/// Asked before a real send (not for `--yes` or `--mock`): true sends. Runs on the blocking pool.
pub type ConfirmFn = Arc<dyn Fn(&Confirmation) -> bool + Send + Sync>;
/// Receives the notes people read (resuming, already finished, a test run).
pub type NoteFn = Arc<dyn Fn(&str) + Send + Sync>;

/// How a run talks to whoever started it. The default asks nobody (so a send that needs a
/// confirmation is refused), logs notes to `tracing` and shows no progress.
#[derive(Clone, Default)]
pub struct Hooks {
    /// None: nobody can answer (off a terminal, the daemon).
    pub confirm: Option<ConfirmFn>,
    /// None: notes go to `tracing` at info level.
    pub note: Option<NoteFn>,
    /// Progress after each call (the CLI renders a bar or log lines).
    pub progress: Option<ProgressFn>,
    /// Warnings during the run, one line per kind per 10 s (None: `tracing`).
    pub warn: Option<WarnFn>,
}

/// One run of a campaign, as the CLI or the daemon asks for it.
#[derive(Clone)]
pub struct Request {
    pub campaign: Campaign,
    /// The schedule occurrence this run is for (daemon), None for an ad-hoc run.
    pub occurrence: Option<String>,
    /// Repository root, `imcast.toml`, state and report directories.
    pub paths: RepoPaths,
    /// Send here with these credentials instead of the campaign's endpoint and the environment's
    /// credentials (the mock provider).
    pub target: Option<(url::Url, Credentials)>,
    /// The command line's flags (recorded in the journal's audit).
    pub flags: RunFlags,
    /// `--report-format` (None: `imcast.toml`'s `report.formats`).
    pub report_formats: Option<ReportFormats>,
    pub hooks: Hooks,
}

impl Request {
    /// A run confirmed in advance (`--yes`), with no target override and default hooks.
    pub fn new(campaign: Campaign, paths: RepoPaths) -> Self {
        Request {
            campaign,
            occurrence: None,
            paths,
            target: None,
            flags: RunFlags {
                yes: true,
                ..RunFlags::default()
            },
            report_formats: None,
            hooks: Hooks::default(),
        }
    }
}

/// What a run knows about the campaign and its plan (how it is sent is in [`Settings`]).
#[derive(Debug, Clone)]
pub struct Facts {
    pub campaign_file: PathBuf,
    pub campaign: String,
    pub occurrence: Option<String>,
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
    /// The run's stages in order (empty: the plan is sent as one stage); see `stages`.
    pub stages: Vec<crate::stages::RunStage>,
    /// The date the run's local-time waves fall on (`schedule.local_time`; None without): recorded
    /// in the run's audit as `wave_date`, so a resume on a later day plans the same waves.
    pub wave_date: Option<jiff::civil::Date>,
}

/// Everything [`execute`] needs besides the calls: the plan's facts, the resolved settings,
/// where the files go and the caller's hooks.
#[derive(Clone)]
pub struct Inputs {
    pub facts: Facts,
    pub settings: Settings,
    pub paths: RepoPaths,
    pub hooks: Hooks,
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

/// A full disk stopped the run (the journal, the limiter's state or the state directory could
/// not grow): one message that names the file, says nothing was lost and how to go on (exit 8).
pub fn disk_full_failure(path: &std::path::Path, campaign_file: &std::path::Path) -> Failure {
    Failure::new(
        Exit::Environment,
        anyhow!(
            "the disk is full: imcast could not write {}. Nothing was lost: every outcome recorded so \
             far is kept, recipients not yet sent stay pending, and a call whose answer could not be \
             recorded will show its recipients as `unknown` (never resent on its own). Free space, \
             then resume with `imcast run {}`",
            path.display(),
            campaign_file.display()
        ),
    )
}

/// The same after the engine ended, for the run's report (exit 8).
pub fn report_disk_full_failure(
    path: &std::path::Path,
    run_id: &str,
    campaign_file: &std::path::Path,
) -> Failure {
    Failure::new(
        Exit::Environment,
        anyhow!(
            "the disk is full: imcast could not write {}, so the report of run {run_id} was not \
             written. Nothing was lost: the journal holds the run. Free space, then write the report \
             with `imcast report {}`",
            path.display(),
            campaign_file.display()
        ),
    )
}

/// Run one campaign to the end of this session (see the module doc). Call from inside a tokio
/// runtime; blocking work goes to the blocking pool. `stop` stops starting calls (in-flight ones
/// are waited for and committed); the summary's exit is then `Interrupted`.
pub async fn run_campaign(
    req: Request,
    clock: SharedClock,
    stop: StopToken,
) -> Result<RunSummary, Failure> {
    let Request {
        campaign,
        occurrence,
        paths,
        target,
        flags,
        report_formats,
        hooks,
    } = req;
    let (credentials, endpoint) = match target {
        Some((url, c)) => (c, url),
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
            (c, campaign.endpoint.clone())
        }
    };
    let access_key_id = credentials.access_key_id.clone();
    let client = Client::with_clock(
        ClientConfig::new(endpoint.clone(), campaign.region.clone(), credentials),
        clock.clone(),
    )
    .exit(Exit::Internal)?;

    let campaign = Arc::new(campaign);
    let c = campaign.clone();
    let now = clock.now();
    // Settings, plan, confirmation and journal: blocking work, off the runtime threads.
    let prepared = tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let account = paths.account_config().exit(Exit::Invalid)?;
        let settings = Settings::resolve(&c, &account, &flags, report_formats);
        // An ad-hoc run's waves fall on the day it started: a resume (after midnight too) plans
        // the date its unfinished run recorded; a new run, today's.
        let resumed_date = (c.local_time.is_some()
            && occurrence.is_none()
            && !settings.is_test()
            && !flags.new_run)
            .then(|| {
                prepare::started_wave_date(
                    &crate::journal::journal_store(
                        settings.state_url.as_ref(),
                        &paths.state_dir,
                        flags.mock,
                    ),
                    &c.name,
                )
            })
            .flatten();
        let local_date = resumed_date.or_else(|| {
            crate::stages::wave_date(
                &c,
                occurrence
                    .as_deref()
                    .and_then(crate::stages::occurrence_instant),
                now,
            )
        });
        let plan = crate::plan::build(
            &c,
            &PlanOptions {
                extra_suppress: account.suppress.clone(),
                local_date,
            },
        )
        .exit(Exit::Invalid)?;
        if let Some(g) = &settings.guard {
            let refused = crate::guard::check(g, plan.counts());
            if !refused.is_empty() {
                return Err(Failure::new(
                    Exit::Invalid,
                    anyhow!(
                        "{}\nNothing was sent.",
                        crate::guard::describe(&c.path, &refused)
                    ),
                ));
            }
        }
        if let Some(w) = settings.throttle_warning() {
            tracing::warn!(campaign = %c.name, "{w}");
        }
        for w in plan.warnings() {
            tracing::warn!(campaign = %c.name, "{w}");
        }
        let plan = Arc::new(plan);
        let mut facts = Facts {
            campaign_file: c.path.clone(),
            campaign: c.name.clone(),
            occurrence,
            app_id: c.app_id,
            endpoint: endpoint.to_string(),
            access_key_id: Some(access_key_id),
            plan_hash: plan.hash().to_string(),
            content_key: Some(plan.content_key().to_string()),
            total_calls: plan.counts().calls,
            recipients: plan.counts().valid,
            sample_message: plan
                .samples()
                .first()
                .map(|s| s.content.clone())
                .unwrap_or_else(|| "(no valid recipients: nothing to send)".into()),
            stages: crate::stages::run_stages(&c, plan.stages()),
            wave_date: local_date,
        };
        let source = if settings.is_test() {
            let calls = test_to::test_calls(&c, &plan, &settings.flags.test_to)?;
            facts.plan_hash = format!("test:{}", plan.hash());
            facts.stages = Vec::new();
            facts.recipients = settings.flags.test_to.len() as u64;
            facts.total_calls = calls.len() as u64;
            PlanSource::Fixed(calls)
        } else {
            PlanSource::Plan(plan.clone())
        };
        let inputs = Inputs {
            facts,
            settings,
            paths,
            hooks,
        };
        if !inputs.settings.is_test() && plan.counts().valid == 0 {
            // The guard let an empty audience through: `audience.allow_empty: true`.
            let n = plan.counts();
            inputs.hooks.note(&format!(
                "Campaign {:?}: no one to send to: the audience has no valid recipient ({}: {} invalid, {} duplicate, {} suppressed) and `audience.allow_empty` is true. Nothing was sent.",
                c.name,
                crate::output::count(n.total, "row", "rows"),
                n.invalid,
                n.duplicate,
                n.suppressed
            ));
            return Ok((inputs, source, prepare::Prep::Done(RunSummary::nothing(Exit::Ok))));
        }
        let mut prep = match &source {
            PlanSource::Plan(p) => prepare::prepare(&inputs, &mut || seed_rows(p), now)?,
            PlanSource::Fixed(calls) => {
                prepare::prepare(&inputs, &mut || test_seed_rows(calls), now)?
            }
        };
        if let prepare::Prep::Go(p) = &mut prep {
            prepare::record_for_report(&mut p.journal, &p.run.id, &c, &plan, &source);
        }
        Ok((inputs, source, prep))
    })
    .await
    .map_err(|e| anyhow!("planning task failed: {e}"))
    .exit(Exit::Internal)??;
    let (inputs, source, prep) = prepared;
    let prepared = match prep {
        prepare::Prep::Done(s) => return Ok(s),
        prepare::Prep::Go(p) => *p,
    };
    let transport = Arc::new(ProviderTransport::new(client, campaign));
    drive::drive(inputs, prepared, Arc::new(source), transport, clock, stop).await
}

/// A run whose calls are already behind the send traits (tests drive it with fake transports):
/// prepare on this thread (`rows` seeds a new run, called at most once), then drive on `rt`.
/// Blocking: call it from outside the runtime.
pub fn execute<'r, S, T, E>(
    rt: &tokio::runtime::Handle,
    inputs: Inputs,
    rows: &mut dyn FnMut() -> SeedRows<'r, E>,
    source: Arc<S>,
    transport: Arc<T>,
    clock: SharedClock,
    stop: StopToken,
) -> Result<RunSummary, Failure>
where
    S: CallSource,
    T: Transport<Payload = S::Payload>,
    E: std::fmt::Display + Send,
{
    let prepared = match prepare::prepare(&inputs, rows, clock.now())? {
        prepare::Prep::Done(s) => return Ok(s),
        prepare::Prep::Go(p) => *p,
    };
    rt.block_on(drive::drive(
        inputs, prepared, source, transport, clock, stop,
    ))
}
