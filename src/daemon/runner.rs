//! What the daemon drives: a [`Runner`] starts (or resumes) the run of one occurrence and
//! answers status, pause, resume and cancel by run key.
//!
//! Contract for implementations: `start` is idempotent per `run_key` — starting a key whose run
//! already exists (in this process or, after a crash, in the journal) resumes it and never sends
//! to a recipient twice; the run uses the payload it was started with even if the file changes
//! later. [`super::send_runner::SendRunner`] is the real one (`run::run_campaign` per
//! occurrence, run key = the journal's `runs.occurrence`); [`FakeRunner`] is for tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use jiff::Timestamp;

use super::source::Payload;

/// One occurrence to run.
#[derive(Clone)]
pub struct RunRequest {
    pub campaign: String,
    /// The occurrence's UTC instant (the run's identity with `campaign`).
    pub occurrence: Timestamp,
    /// `NAME@<UTC RFC 3339>`: stable across restarts.
    pub run_key: String,
    pub path: PathBuf,
    /// The content hash recorded when the occurrence was claimed. On a resume after a restart
    /// the payload is the file as it is now; the run's journal compares its own plan hash with
    /// the payload's plan and refuses to continue changed content (like `run`, exit 7).
    pub content_hash: String,
    pub payload: Payload,
    /// True when this resumes a run claimed before a restart.
    pub resume: bool,
    /// Start it paused (the campaign is paused, the stop file exists or quiet hours hold).
    pub start_paused: bool,
}

impl std::fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunRequest")
            .field("run_key", &self.run_key)
            .field("resume", &self.resume)
            .field("start_paused", &self.start_paused)
            .finish_non_exhaustive()
    }
}

/// The stable key of one occurrence's run.
pub fn run_key(campaign: &str, occurrence: Timestamp) -> String {
    format!("{campaign}@{occurrence}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Paused,
    /// Ended; `outcome` is `done`, `failed` or `cancelled`.
    Finished {
        outcome: RunOutcome,
        detail: String,
    },
    /// The runner knows no run by that key.
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Done,
    Failed,
    Cancelled,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Done => "done",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
        }
    }
}

/// Starts and steers runs. Calls must return quickly (work happens elsewhere).
pub trait Runner: Send + Sync {
    fn start(&self, req: RunRequest) -> Result<(), String>;
    fn status(&self, run_key: &str) -> RunStatus;
    fn pause(&self, run_key: &str);
    fn resume(&self, run_key: &str);
    /// Cancel: pending recipients become `cancelled`.
    fn cancel(&self, run_key: &str);
    /// Graceful stop of everything (first SIGTERM/SIGINT): stop starting calls, let in-flight
    /// ones finish and commit. Runs stay resumable.
    fn shutdown(&self) {}
}

/// What a [`FakeRunner`] remembers about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRun {
    pub campaign: String,
    pub content_hash: String,
    /// The payload as text, when it is the stand-in source's file text.
    pub content: Option<String>,
    pub status: RunStatus,
    /// How many times `start` was called for this key (1 + resumes).
    pub starts: u32,
    pub resumed: bool,
}

/// An in-memory runner for tests: runs stay `Running` until the test finishes them.
#[derive(Debug, Default)]
pub struct FakeRunner {
    runs: Mutex<BTreeMap<String, FakeRun>>,
    /// Every start call's run key, in order (resumes included).
    log: Mutex<Vec<String>>,
    shutdowns: std::sync::atomic::AtomicU32,
}

impl FakeRunner {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn runs(&self) -> BTreeMap<String, FakeRun> {
        self.runs.lock().map(|g| g.clone()).unwrap_or_default()
    }
    pub fn starts(&self) -> Vec<String> {
        self.log.lock().map(|g| g.clone()).unwrap_or_default()
    }
    /// How many times `shutdown` was called.
    pub fn shutdowns(&self) -> u32 {
        self.shutdowns.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// End a run with an outcome.
    pub fn finish(&self, run_key: &str, outcome: RunOutcome) {
        if let Ok(mut g) = self.runs.lock() {
            if let Some(r) = g.get_mut(run_key) {
                r.status = RunStatus::Finished {
                    outcome,
                    detail: String::new(),
                };
            }
        }
    }
    fn set(&self, run_key: &str, f: impl FnOnce(&mut FakeRun)) {
        if let Ok(mut g) = self.runs.lock() {
            if let Some(r) = g.get_mut(run_key) {
                f(r);
            }
        }
    }
}

impl Runner for FakeRunner {
    fn start(&self, req: RunRequest) -> Result<(), String> {
        if let Ok(mut l) = self.log.lock() {
            l.push(req.run_key.clone());
        }
        let mut g = self.runs.lock().map_err(|_| "poisoned".to_string())?;
        let status = if req.start_paused {
            RunStatus::Paused
        } else {
            RunStatus::Running
        };
        match g.get_mut(&req.run_key) {
            Some(r) => {
                r.starts += 1;
                r.resumed = true;
                if !matches!(r.status, RunStatus::Finished { .. }) {
                    r.status = status;
                }
            }
            None => {
                g.insert(
                    req.run_key.clone(),
                    FakeRun {
                        campaign: req.campaign.clone(),
                        content_hash: req.content_hash.clone(),
                        content: req.payload.text().map(str::to_string),
                        status,
                        starts: 1,
                        resumed: req.resume,
                    },
                );
            }
        }
        Ok(())
    }
    fn status(&self, run_key: &str) -> RunStatus {
        self.runs
            .lock()
            .ok()
            .and_then(|g| g.get(run_key).map(|r| r.status.clone()))
            .unwrap_or(RunStatus::NotFound)
    }
    fn pause(&self, run_key: &str) {
        self.set(run_key, |r| {
            if r.status == RunStatus::Running {
                r.status = RunStatus::Paused
            }
        });
    }
    fn resume(&self, run_key: &str) {
        self.set(run_key, |r| {
            if r.status == RunStatus::Paused {
                r.status = RunStatus::Running
            }
        });
    }
    fn shutdown(&self) {
        self.shutdowns
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn cancel(&self, run_key: &str) {
        self.set(run_key, |r| {
            if !matches!(r.status, RunStatus::Finished { .. }) {
                r.status = RunStatus::Finished {
                    outcome: RunOutcome::Cancelled,
                    detail: "cancelled".into(),
                }
            }
        });
    }
}
