//! The daemon's real [`Runner`]: each occurrence is its own run of [`run::run_campaign`] (the
//! same library code path as `imcast run`), started as a tokio task with the occurrence's run key as the
//! journal's `runs.occurrence`, so a restart resumes exactly that run and a finished one is never
//! sent again (the journal answers "already finished").
//!
//! Pause stops the run's engine through its stop token (calls in flight finish and commit; the
//! journal run stays resumable) and resume starts `run_campaign` again, which resumes it. Cancel
//! stops it the same way, then marks its pending recipients `cancelled` in the journal and
//! writes the report. A pause or cancel the engine itself took from the control table ends the
//! task as `Paused` / `Cancelled` and is reported the same way. All runs share the account
//! limiter through the state directory, like concurrent `imcast run` processes.
//!
//! A run whose lease another live process holds (the journal refuses to open it, busy) is "not
//! yet", not a failure: it stays `Running` for the daemon and is opened again every `[state]
//! lease_heartbeat` on the injected clock until the lease expired (a takeover waiting for a dead
//! daemon's lease) or the holder finished it.
//!
//! Must not: block the caller (every call returns at once; work happens on the runtime), or
//! send anything itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::runner::{RunOutcome, RunRequest, RunStatus, Runner};
use crate::clock::SharedClock;
use crate::config::RepoPaths;
use crate::exit::Failure;
use crate::journal::{Journal, RunFlags, RunStatus as JournalRunStatus};
use crate::run::{self, run_campaign, RunSummary, Settings};
use crate::send::{describe_counts, StopReason, StopToken};

/// What the daemon last asked of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Run,
    Pause,
    Cancel,
}

struct Entry {
    req: RunRequest,
    want: Want,
    state: RunStatus,
    stop: Option<StopToken>,
    task: Option<JoinHandle<()>>,
}

/// Where the runs' files go.
#[derive(Debug, Clone)]
pub struct SendRunnerConfig {
    pub state_dir: PathBuf,
    /// `--report-dir` (else `reports/` at each campaign's repository root).
    pub report_dir: Option<PathBuf>,
    /// `--config` (else each campaign's `imcast.toml`).
    pub config: Option<PathBuf>,
    /// Send here instead of each campaign's endpoint (tests; None in production).
    pub target: Option<(url::Url, crate::provider::Credentials)>,
    /// `--report-format` (else each campaign's `imcast.toml` `report.formats`).
    pub report_formats: Option<crate::config::ReportFormats>,
}

/// See the module doc.
pub struct SendRunner {
    cfg: SendRunnerConfig,
    clock: SharedClock,
    rt: tokio::runtime::Handle,
    runs: Mutex<BTreeMap<String, Entry>>,
    shutting_down: AtomicBool,
    me: std::sync::Weak<SendRunner>,
}

impl SendRunner {
    /// Build on the current tokio runtime (call from inside it).
    pub fn new(cfg: SendRunnerConfig, clock: SharedClock) -> Arc<SendRunner> {
        Arc::new_cyclic(|me| SendRunner {
            cfg,
            clock,
            rt: tokio::runtime::Handle::current(),
            runs: Mutex::new(BTreeMap::new()),
            shutting_down: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until every run task has ended (after [`Runner::shutdown`]: calls in flight are
    /// finished and committed).
    pub async fn drain(&self) {
        loop {
            let tasks: Vec<JoinHandle<()>> = self
                .lock()
                .values_mut()
                .filter_map(|e| e.task.take())
                .collect();
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    fn paths(&self, c: &crate::spec::Campaign) -> RepoPaths {
        RepoPaths::discover(
            &c.path,
            self.cfg.config.as_deref(),
            Some(&self.cfg.state_dir),
            self.cfg.report_dir.as_deref(),
        )
    }

    /// Start (or restart) the task of `key`. Caller holds no lock.
    fn spawn(&self, key: &str) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut g = self.lock();
        let Some(e) = g.get_mut(key) else {
            return;
        };
        let Some(campaign) = e.req.payload.campaign().cloned() else {
            e.state = RunStatus::Finished {
                outcome: RunOutcome::Failed,
                detail: "internal: the campaign payload is not a loaded campaign".into(),
            };
            return;
        };
        let stop = StopToken::new();
        // Confirmed by being scheduled (`--yes`); nobody to ask, notes go to the log.
        let mut run = run::Request::new(campaign, self.paths_for_key(&e.req));
        run.occurrence = Some(e.req.run_key.clone());
        run.target = self.cfg.target.clone();
        run.report_formats = self.cfg.report_formats;
        let clock = self.clock.clone();
        let k = key.to_string();
        let s2 = stop.clone();
        e.stop = Some(stop);
        e.state = RunStatus::Running;
        e.want = Want::Run;
        let task = self.rt.spawn(async move {
            let res = run_campaign(run, clock, s2).await;
            me.ended(&k, res).await;
        });
        e.task = Some(task);
    }

    fn paths_for_key(&self, req: &RunRequest) -> RepoPaths {
        match req.payload.campaign() {
            Some(c) => self.paths(c),
            None => RepoPaths::discover(
                &req.path,
                self.cfg.config.as_deref(),
                Some(&self.cfg.state_dir),
                self.cfg.report_dir.as_deref(),
            ),
        }
    }

    /// A task ended: decide the run's state from why, and act on what was asked meanwhile.
    async fn ended(&self, key: &str, res: Result<RunSummary, Failure>) {
        let (want, req) = {
            let mut g = self.lock();
            let Some(e) = g.get_mut(key) else { return };
            e.stop = None;
            (e.want, e.req.clone())
        };
        if let Err(f) = &res {
            if lease_busy(f) {
                self.not_yet(key, &req, f);
                return;
            }
        }
        let state = match res {
            Err(f) => {
                error!(run = %key, error = %f, "run failed");
                RunStatus::Finished {
                    outcome: RunOutcome::Failed,
                    detail: f.to_string(),
                }
            }
            Ok(s) => {
                let counts = describe_counts(&s.counts);
                let report = s
                    .report_dir
                    .as_ref()
                    .map(|d| format!("; report {}", d.display()))
                    .unwrap_or_default();
                match &s.reason {
                    None => RunStatus::Finished {
                        outcome: RunOutcome::Done,
                        detail: if s.already_finished {
                            format!("already finished earlier ({counts})")
                        } else {
                            "nothing to send".into()
                        },
                    },
                    Some(StopReason::Completed | StopReason::Deadline) => {
                        info!(run = %key, counts = %counts, "run finished");
                        RunStatus::Finished {
                            outcome: RunOutcome::Done,
                            detail: format!("{counts}{report}"),
                        }
                    }
                    Some(StopReason::Cancelled) => RunStatus::Finished {
                        outcome: RunOutcome::Cancelled,
                        detail: format!("cancelled by request: {counts}{report}"),
                    },
                    Some(StopReason::Paused) => RunStatus::Paused,
                    // Paused until a person resumes it (`imcast resume NAME`): the daemon sees
                    // a run that paused itself and records the campaign paused.
                    Some(StopReason::Canary { message }) => {
                        warn!(run = %key, "{message}");
                        RunStatus::Paused
                    }
                    Some(StopReason::Breaker { message }) => RunStatus::Finished {
                        outcome: RunOutcome::Failed,
                        detail: format!("{message} ({counts}){report}"),
                    },
                    Some(StopReason::Fatal { message, .. }) => RunStatus::Finished {
                        outcome: RunOutcome::Failed,
                        detail: format!("the provider refused: {message} ({counts}){report}"),
                    },
                    Some(StopReason::Interrupted) => match want {
                        Want::Cancel => self.cancel_in_journal(&req, s.run_id.clone()).await,
                        Want::Pause => RunStatus::Paused,
                        // Shutting down: stays resumable; the next daemon resumes it.
                        Want::Run if self.shutting_down.load(Ordering::SeqCst) => RunStatus::Paused,
                        Want::Run => {
                            // A resume arrived while it was stopping: go again.
                            if let Some(e) = self.lock().get_mut(key) {
                                e.state = RunStatus::Paused;
                            }
                            self.spawn(key);
                            return;
                        }
                    },
                }
            }
        };
        if let Some(e) = self.lock().get_mut(key) {
            e.state = state;
        }
    }

    /// The run's lease is still held by another process (a daemon taking over a run whose lease
    /// has not expired yet, or a holder that came back): not a failure — try again after the
    /// lease heartbeat (`[state] lease_heartbeat`), on the injected clock. The run stays
    /// `Running` for the daemon meanwhile; a pause or cancel asked during the wait is honoured
    /// when it ends.
    fn not_yet(&self, key: &str, req: &RunRequest, f: &Failure) {
        let Some(me) = self.me.upgrade() else { return };
        let wait = self
            .paths_for_key(req)
            .account_config()
            .map(|a| a.lease.heartbeat)
            .unwrap_or(crate::config::LeaseTimes::default().heartbeat);
        warn!(run = %key, error = %f, retry_in = %humantime::format_duration(wait), "not yet: the run's lease is still held; trying again");
        let clock = self.clock.clone();
        let k = key.to_string();
        let req2 = req.clone();
        let mut g = self.lock();
        let Some(e) = g.get_mut(key) else { return };
        e.state = RunStatus::Running;
        e.task = Some(self.rt.spawn(async move {
            clock.idle(wait).await;
            let want = me.lock().get(&k).map(|e| e.want);
            let paused = |me: &SendRunner, st: RunStatus| {
                if let Some(e) = me.lock().get_mut(&k) {
                    e.state = st;
                }
            };
            match want {
                Some(Want::Run) if !me.shutting_down.load(Ordering::SeqCst) => me.spawn(&k),
                Some(Want::Run | Want::Pause) => paused(&me, RunStatus::Paused),
                Some(Want::Cancel) => {
                    let st = me.cancel_in_journal(&req2, None).await;
                    paused(&me, st);
                }
                None => {}
            }
        }));
    }

    /// Pending recipients of the occurrence's unfinished run become `cancelled`; the run is
    /// recorded cancelled and its report written.
    async fn cancel_in_journal(&self, req: &RunRequest, run_id: Option<String>) -> RunStatus {
        let paths = self.paths_for_key(req);
        let campaign = req.campaign.clone();
        let occurrence = req.run_key.clone();
        let now = self.clock.now();
        let formats = self.cfg.report_formats;
        let file = req.path.clone();
        let loaded = req.payload.campaign().cloned();
        let res = tokio::task::spawn_blocking(move || -> Result<String, String> {
            // Where the run's journal is: the campaign's `[state] url`, as the run opened it.
            let url = paths.account_config().map_err(|e| e.to_string())?.state_url;
            let store = crate::journal::journal_store(url.as_ref(), &paths.state_dir, false);
            let j = Journal::open_state(&store).map_err(|e| e.to_string())?;
            let id = match run_id {
                Some(id) => id,
                None => match j
                    .unfinished_run(&campaign, Some(&occurrence))
                    .map_err(|e| e.to_string())?
                {
                    Some(r) => r.id,
                    None => return Ok("cancelled before anything was sent".into()),
                },
            };
            let n = j.cancel_pending(&id, now).map_err(|e| e.to_string())?;
            j.set_status(&id, JournalRunStatus::Cancelled, Some("cancelled"), now)
                .map_err(|e| e.to_string())?;
            // The formats the run would have written (its settings, resolved the one way).
            let account = paths.account_config().unwrap_or_default();
            let formats = match &loaded {
                Some(c) => {
                    Settings::resolve(c, &account, &RunFlags::default(), formats).report_formats
                }
                None => formats.unwrap_or(account.report_formats),
            };
            let opts = crate::report::ReportOptions {
                formats,
                campaign_file: Some(file),
                ..crate::report::ReportOptions::default()
            };
            let report = crate::report::write_report_with(&j, &id, &paths.reports_dir, &opts)
                .map(|r| format!("; report {}", r.dir.display()))
                .unwrap_or_default();
            Ok(format!(
                "cancelled: {} cancelled{report}",
                crate::output::count(n, "pending recipient", "pending recipients")
            ))
        })
        .await;
        match res {
            Ok(Ok(detail)) => RunStatus::Finished {
                outcome: RunOutcome::Cancelled,
                detail,
            },
            Ok(Err(e)) => {
                warn!(run = %req.run_key, error = %e, "cancel: could not update the journal");
                RunStatus::Finished {
                    outcome: RunOutcome::Cancelled,
                    detail: format!("cancelled; the journal could not be updated: {e}"),
                }
            }
            Err(e) => RunStatus::Finished {
                outcome: RunOutcome::Cancelled,
                detail: format!("cancelled; {e}"),
            },
        }
    }
}

impl Runner for SendRunner {
    fn start(&self, req: RunRequest) -> Result<(), String> {
        if req.payload.campaign().is_none() {
            return Err("the campaign payload is not a loaded campaign".into());
        }
        let key = req.run_key.clone();
        let paused = req.start_paused;
        {
            let mut g = self.lock();
            match g.get_mut(&key) {
                Some(e) if e.stop.is_some() || matches!(e.state, RunStatus::Finished { .. }) => {
                    return Ok(());
                }
                Some(e) => {
                    e.req = req;
                }
                None => {
                    g.insert(
                        key.clone(),
                        Entry {
                            req,
                            want: if paused { Want::Pause } else { Want::Run },
                            state: RunStatus::Paused,
                            stop: None,
                            task: None,
                        },
                    );
                }
            }
        }
        if !paused {
            self.spawn(&key);
        }
        Ok(())
    }

    fn status(&self, run_key: &str) -> RunStatus {
        self.lock()
            .get(run_key)
            .map(|e| match (&e.state, e.want) {
                // Asked to pause and still winding down: already paused for the daemon.
                (RunStatus::Running, Want::Pause) => RunStatus::Paused,
                (s, _) => s.clone(),
            })
            .unwrap_or(RunStatus::NotFound)
    }

    fn pause(&self, run_key: &str) {
        if let Some(e) = self.lock().get_mut(run_key) {
            e.want = Want::Pause;
            if let Some(s) = &e.stop {
                s.stop();
            }
        }
    }

    fn resume(&self, run_key: &str) {
        let restart = {
            let mut g = self.lock();
            let Some(e) = g.get_mut(run_key) else { return };
            e.want = Want::Run;
            // Still stopping: `ended` restarts it. Paused with no task: start it again.
            e.stop.is_none() && e.state == RunStatus::Paused
        };
        if restart {
            self.spawn(run_key);
        }
    }

    fn cancel(&self, run_key: &str) {
        let idle = {
            let mut g = self.lock();
            let Some(e) = g.get_mut(run_key) else { return };
            e.want = Want::Cancel;
            match &e.stop {
                Some(s) => {
                    s.stop();
                    None
                }
                None if e.state == RunStatus::Paused => Some(e.req.clone()),
                None => None,
            }
        };
        // Paused with no task: cancel in the journal directly.
        if let (Some(req), Some(me)) = (idle, self.me.upgrade()) {
            let key = run_key.to_string();
            let task = self.rt.spawn(async move {
                let st = me.cancel_in_journal(&req, None).await;
                if let Some(e) = me.lock().get_mut(&key) {
                    e.state = st;
                }
            });
            if let Some(e) = self.lock().get_mut(run_key) {
                e.task = Some(task);
            }
        }
    }

    fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for e in self.lock().values() {
            if let Some(s) = &e.stop {
                s.stop();
            }
        }
    }
}

/// Whether a run ended because its lease is held by another live process
/// ([`crate::journal::JournalError::Busy`]; not a fence: a run taken over is not retried).
fn lease_busy(f: &Failure) -> bool {
    f.exit == crate::exit::Exit::Busy
        && f.error.chain().any(|c| {
            matches!(
                c.downcast_ref::<crate::journal::JournalError>(),
                Some(crate::journal::JournalError::Busy { .. })
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use crate::journal::JournalError;

    /// Only a run lease held by another live process is "not yet": a run taken over (fenced),
    /// another refusal (exit 6 too, e.g. "already finished") or another failure is not retried.
    #[test]
    fn only_a_held_lease_is_not_yet() {
        let busy = || JournalError::Busy {
            campaign: "c".into(),
            run_id: "r".into(),
            owner: "pid 1 on h".into(),
        };
        assert!(lease_busy(&Failure::new(Exit::Busy, busy())));
        assert!(lease_busy(&Failure::new(
            Exit::Busy,
            anyhow::Error::from(busy()).context("opening the run")
        )));
        let fenced = JournalError::Fenced {
            run_id: "r".into(),
            holder: "pid 2 on h".into(),
            at: None,
        };
        assert!(!lease_busy(&Failure::new(Exit::Busy, fenced)));
        assert!(!lease_busy(&Failure::new(
            Exit::Busy,
            anyhow::anyhow!("run is being sent from another state directory")
        )));
        assert!(!lease_busy(&Failure::new(Exit::Internal, busy())));
    }
}
