//! The scheduler core behind `imcast daemon DIR`: fires each scheduled campaign in a folder at
//! its occurrences, exactly once, across restarts and edits, and steers the runs it started.
//!
//! Owns: the tick loop (rescan the folder, act on control requests and the stop file, reconcile
//! runs with pause reasons, start queued/quiet-held occurrences, decide newly due occurrences),
//! and the `sched_*` bookkeeping through [`state`]. Time comes only from the injected
//! [`Clock`](crate::clock::Clock), so every behaviour is tested on a `SimClock` by calling
//! [`Daemon::tick`].
//!
//! Invariants:
//! - An occurrence is recorded (and the campaign's cursor moved past it) in one transaction
//!   BEFORE its run starts; the `(campaign, occurrence)` key makes it fire at most once. A row
//!   left `claimed`/`running`/`paused` by a crash is resumed (the runner's `start` is idempotent
//!   per run key); a finished one is never started again.
//! - With `[state] url` ([`DaemonConfig::store`]) the occurrence record is in PostgreSQL, shared by
//!   every daemon on it: the claim above is what lets only one of them fire an occurrence; each
//!   daemon starts, resumes, polls and pauses only the runs of rows its node decided or claimed,
//!   and stops a run of its own whose row another daemon cancelled or took over. Overlap, pause
//!   flags and cursors are the shared record's, so they hold across daemons.
//! - Takeover (with `[state] url`, where the journal is in the store too; on one state directory
//!   a run of a dead daemon waits for a daemon started there): each tick, an active row of another
//!   daemon that is not alive in the roster, of a campaign this daemon's folder has, whose run
//!   lease expired or is absent ([`state::takeover`]), is re-claimed conditionally
//!   ([`state::take_over`]) and its run resumed like after a restart: the journal's claim takes
//!   the lease with a new fence and the dead daemon's calls in flight become `unknown`. A row
//!   left by an earlier process of this node is re-claimed the same way when resumed, so the
//!   record always names the process holding it.
//! - Each daemon keeps a row in the store's roster (`sched_roster`: node, host, pid, version,
//!   started, last seen) from [`Daemon::open`], refreshes `last_seen` every
//!   [`DaemonConfig::heartbeat`] (`[state] lease_heartbeat`, default [`HEARTBEAT_EVERY_SECS`])
//!   on the injected clock and marks it stopped on a clean shutdown; `imcast schedule` shows it,
//!   and takeover looks at it (the run lease decides).
//! - A missed occurrence later than `schedule.not_after` is recorded `skipped_late`; one due
//!   while the campaign's previous run is going is `skipped_overlap` or `queued` (overlap).
//! - While the campaign is paused by `imcast pause` or the stop file exists, no occurrence is
//!   decided (they wait, then meet the lateness cutoff) and running runs are paused. Inside
//!   quiet hours due occurrences are recorded `waiting_quiet` and running runs are paused;
//!   both continue when the quiet hours end.
//! - Only the current valid version of a file is fired: a file that fails to load is reported
//!   and its campaign is not fired until it loads again; a run in progress keeps the payload it
//!   started with.
//! - A campaign first seen by this state directory fires at most its latest occurrence within
//!   `not_after` before now; older ones are not its history.
//!
//! Must not: send anything itself (the [`runner::Runner`] does), read the campaign format
//! itself (the [`source::CampaignSource`] does), sleep for real inside `tick`.

pub mod metrics;
pub mod runner;
pub mod send_runner;
pub mod source;
pub mod state;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{debug, error, info, warn};

use crate::clock::SharedClock;
use crate::schedule::Overlap;

use metrics::{Metrics, MetricsSnapshot};
use runner::{RunRequest, RunStatus, Runner};
use source::{CampaignSource, LoadedCampaign};
use state::{status, Claimant, Conn, OccurrenceRow, StateError, Update};

use crate::journal::{ControlRequest, Journal, JournalError};

/// Where and how often.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Folder of campaign files.
    pub dir: PathBuf,
    /// State directory (holds `imcast.db` and the `STOP` file).
    pub state_dir: PathBuf,
    /// How often the folder is rescanned.
    pub scan_every: Duration,
    /// How often [`Daemon::run`] ticks (control requests are acted on within one tick).
    pub tick_every: Duration,
    /// `[state] url`: the occurrence record lives in this PostgreSQL store, shared with every
    /// daemon on it (None: the state directory's SQLite file).
    pub store: Option<crate::pg::PgUrl>,
    /// How often the daemon refreshes its roster row (and its claim on the state directory):
    /// `[state] lease_heartbeat`, whole seconds, at least 1 (default [`HEARTBEAT_EVERY_SECS`]).
    /// Other daemons count it alive within [`state::ALIVE_BEATS`] of these.
    pub heartbeat: Duration,
    /// Take over orphaned occurrences (see [`Daemon::tick`]): None (the default) is on with
    /// `[state] url` (the journal is in the store); tests force it.
    pub takeover: Option<bool>,
}

impl DaemonConfig {
    pub fn new(dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        DaemonConfig {
            dir: dir.into(),
            state_dir: state_dir.into(),
            scan_every: Duration::from_secs(5),
            tick_every: Duration::from_secs(1),
            store: None,
            heartbeat: Duration::from_secs(HEARTBEAT_EVERY_SECS as u64),
            takeover: None,
        }
    }
    /// `<state_dir>/STOP`: while it exists everything is paused.
    pub fn stop_file(&self) -> PathBuf {
        crate::send::stop::stop_file(&self.state_dir)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("another imcast daemon (pid {pid}) is running on state directory {state_dir}; stop it first or use another --state-dir")]
    Busy { pid: u32, state_dir: String },
    #[error("campaign folder {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
}

/// The default state directory for campaigns under `start`: `.imcast/` at the campaigns
/// repository root, found by the same rule `imcast run` uses ([`crate::config::discover_root`]:
/// the nearest ancestor holding `imcast.toml`, else the nearest holding `.git`, else `start`).
pub fn default_state_dir(start: &Path) -> PathBuf {
    crate::config::discover_root_from_dir(start).join(".imcast")
}

struct Known {
    path: PathBuf,
    campaign: LoadedCampaign,
}

/// Why a campaign's runs are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Stop,
    User,
    Quiet,
}

impl Hold {
    fn as_str(self) -> &'static str {
        match self {
            Hold::Stop => "stop_file",
            Hold::User => "user",
            Hold::Quiet => "quiet_hours",
        }
    }
}

/// Consecutive failed ticks after which [`Daemon::run`] gives up.
const MAX_FAILED_TICKS: u32 = 30;

/// How often the daemon refreshes its claim on the state directory and its roster row's
/// `last_seen` (readers count it alive within [`state::ALIVE_BEATS`] of these).
pub const HEARTBEAT_EVERY_SECS: i64 = 10;

/// The roster refresh interval in whole seconds (at least 1).
fn beat_secs(cfg: &DaemonConfig) -> i64 {
    i64::try_from(cfg.heartbeat.as_secs_f64().ceil() as u64)
        .unwrap_or(HEARTBEAT_EVERY_SECS)
        .max(1)
}

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The scheduler. Build with [`Daemon::open`], drive with [`Daemon::tick`] or [`Daemon::run`].
pub struct Daemon {
    cfg: DaemonConfig,
    clock: SharedClock,
    source: Box<dyn CampaignSource>,
    runner: Arc<dyn Runner>,
    /// The occurrence record (`sched_campaign`, `sched_occurrence`): the state directory's SQLite
    /// file or the PostgreSQL store.
    conn: Conn,
    /// The state directory's SQLite file (the daemon slot, the node id).
    local: Conn,
    /// This daemon, as the occurrence rows name it.
    me: Claimant,
    /// Whether other daemons share the occurrence record (PostgreSQL): then only the rows this
    /// daemon decided or claimed are its runs.
    shared: bool,
    /// The journal, for control requests (its `control` table is the journal's).
    journal: Journal,
    campaigns: BTreeMap<String, Known>,
    invalid: BTreeMap<PathBuf, String>,
    last_scan: Option<Timestamp>,
    /// Run keys this process started or resumed (the runner knows them).
    attached: BTreeSet<String>,
    stopped: bool,
    metrics: Metrics,
    pid: u32,
    next_logged: BTreeMap<String, Option<Timestamp>>,
    /// What `sched_campaign` holds for path/next_fire, to write only changes.
    published: BTreeMap<String, (String, Option<i64>)>,
    last_heartbeat: Option<i64>,
    /// When this process opened (UTC seconds, the injected clock), for the roster.
    started_at: i64,
    /// Whether this daemon takes over orphaned occurrences of other daemons on the store.
    takeover: bool,
    /// Orphans already logged as waiting for their run's lease (run key → lease expiry).
    waiting: BTreeMap<String, Timestamp>,
}

fn pid_alive(pid: u32) -> bool {
    let proc_root = Path::new("/proc");
    if !proc_root.exists() {
        return true;
    }
    proc_root.join(pid.to_string()).exists()
}

impl Daemon {
    /// Open the state database, migrate, and claim the state directory for this daemon.
    pub fn open(
        cfg: DaemonConfig,
        clock: SharedClock,
        source: Box<dyn CampaignSource>,
        runner: Arc<dyn Runner>,
    ) -> Result<Daemon, DaemonError> {
        let store = match &cfg.store {
            Some(url) => crate::config::StateStore::Postgres(url.clone()),
            None => crate::config::StateStore::Sqlite(cfg.state_dir.clone()),
        };
        // The journal (control requests; with `[state] url` in the store, shared by every host).
        let journal = Journal::open_state(&crate::journal::journal_store(
            cfg.store.as_ref(),
            &cfg.state_dir,
            false,
        ))?;
        let local = state::open(&cfg.state_dir)?;
        let pid = std::process::id();
        let now = clock.now().as_second();
        if let Err(other) = state::claim_daemon(&local, pid, now, 30, pid_alive)? {
            return Err(DaemonError::Busy {
                pid: other,
                state_dir: cfg.state_dir.display().to_string(),
            });
        }
        let me = Claimant {
            node: state::node_id(&local)?,
            host: state::host_name(),
            pid,
        };
        let conn = match state::open_store(&store) {
            Ok(c) => c,
            Err(e) => {
                let _ = state::release_daemon(&local, pid);
                return Err(e.into());
            }
        };
        // The roster: who is on the store (for `imcast schedule`), refreshed with the heartbeat.
        if let Err(e) = state::roster_beat(&conn, &me, now, beat_secs(&cfg), now) {
            let _ = state::release_daemon(&local, pid);
            return Err(e.into());
        }
        let shared = cfg.store.is_some();
        // The journal is in the store with `[state] url` (its schema is applied on connecting), so
        // another daemon's run is readable and resumable from here.
        let takeover = shared && cfg.takeover.unwrap_or(true);
        if shared {
            info!(node = %me.node, host = %me.host, pid, "occurrence record in the PostgreSQL state store, shared with every daemon on it");
            if takeover {
                info!(
                    alive_window_secs = state::ALIVE_BEATS * beat_secs(&cfg),
                    "takes over the runs of daemons that are not alive once their run lease expired"
                );
            } else {
                info!("takeover is off: runs of a daemon that died wait for its restart");
            }
        }
        Ok(Daemon {
            cfg,
            clock,
            source,
            runner,
            conn,
            local,
            me,
            shared,
            journal,
            campaigns: BTreeMap::new(),
            invalid: BTreeMap::new(),
            last_scan: None,
            attached: BTreeSet::new(),
            stopped: false,
            metrics: Metrics::new(),
            pid,
            next_logged: BTreeMap::new(),
            published: BTreeMap::new(),
            last_heartbeat: Some(now),
            started_at: now,
            takeover,
            waiting: BTreeMap::new(),
        })
    }

    /// The metrics handle (give it to the metrics server).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The occurrence record's connection (tests and commands read `sched_campaign` and
    /// `sched_occurrence` through it).
    pub fn connection(&self) -> &Conn {
        &self.conn
    }

    /// Files that failed to load at the last scan, with their errors.
    pub fn invalid_files(&self) -> &BTreeMap<PathBuf, String> {
        &self.invalid
    }

    /// Names of the campaigns that loaded at the last scan.
    pub fn campaign_names(&self) -> Vec<String> {
        self.campaigns.keys().cloned().collect()
    }

    /// Force a rescan at the next tick (tests; a future notify watcher).
    pub fn rescan_soon(&mut self) {
        self.last_scan = None;
    }

    /// One pass of the loop at the clock's current time.
    pub fn tick(&mut self) -> Result<(), DaemonError> {
        let now = self.clock.now();
        let every = beat_secs(&self.cfg);
        if self
            .last_heartbeat
            .is_none_or(|h| now.as_second() - h >= every)
        {
            state::heartbeat(&self.local, self.pid, now.as_second())?;
            state::roster_beat(
                &self.conn,
                &self.me,
                self.started_at,
                every,
                now.as_second(),
            )?;
            self.last_heartbeat = Some(now.as_second());
        }
        let scan_due = match self.last_scan {
            None => true,
            Some(t) => now.duration_since(t).as_secs_f64() >= self.cfg.scan_every.as_secs_f64(),
        };
        if scan_due {
            self.scan();
            self.last_scan = Some(now);
        }
        let stopped = self.cfg.stop_file().exists();
        if stopped != self.stopped {
            if stopped {
                warn!(stop_file = %self.cfg.stop_file().display(), "stop file present: pausing everything");
            } else {
                info!("stop file removed: continuing");
            }
            self.stopped = stopped;
        }
        self.take_over_orphans(now)?;
        self.attach_unattached(now)?;
        self.handle_controls(now)?;
        self.poll_runs(now)?;
        self.apply_holds()?;
        self.start_pending(now)?;
        self.decide_due(now)?;
        self.publish(now)?;
        Ok(())
    }

    /// Tick every `tick_every` until `shutdown` turns true, then stop the runner gracefully.
    /// SQLite and file work happens on the blocking pool, never on a runtime thread.
    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), DaemonError> {
        let mut failures = 0u32;
        loop {
            let (back, res) = tokio::task::spawn_blocking(move || {
                let r = self.tick();
                (self, r)
            })
            .await
            .map_err(|e| DaemonError::Dir {
                path: "tick".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            self = back;
            // Each write in a tick is atomic and a claim is durable before its run starts, so a
            // failed tick (e.g. the database busy beyond its timeout) is safely retried; only a
            // persistent failure stops the daemon.
            match res {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    error!(error = %e, attempt = failures, "tick failed; retrying");
                    if failures >= MAX_FAILED_TICKS {
                        self.runner.shutdown();
                        return Err(e);
                    }
                }
            }
            if *shutdown.borrow() {
                break;
            }
            let clock = self.clock.clone();
            let every = self.cfg.tick_every;
            tokio::select! {
                _ = clock.sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
        info!("daemon stopping: runs in progress stay resumable");
        self.runner.shutdown();
        // Off the runtime's threads: the store may be PostgreSQL (a blocking client).
        let _ = tokio::task::spawn_blocking(move || {
            let now = self.clock.now().as_second();
            if let Err(e) = state::roster_stop(&self.conn, &self.me, now) {
                warn!(error = %e, "could not mark this daemon stopped in the roster; it ages out");
            }
            let _ = state::release_daemon(&self.local, self.pid);
        })
        .await;
        Ok(())
    }

    fn scan(&mut self) {
        let files = match source::scan_dir(&self.cfg.dir, self.source.as_ref()) {
            Ok(f) => f,
            Err(e) => {
                warn!(dir = %self.cfg.dir.display(), error = %e, "cannot read the campaign folder; keeping the last scan");
                return;
            }
        };
        let mut valid = BTreeMap::new();
        let mut invalid = BTreeMap::new();
        for (path, res) in files {
            match res {
                Ok(c) => {
                    match self.campaigns.get(&c.name) {
                        None => info!(campaign = %c.name, file = %path.display(),
                            schedule = %c.schedule.as_ref().map(|s| s.describe()).unwrap_or_else(|| "none (never fired by the daemon)".into()),
                            "campaign loaded"),
                        Some(old) if old.campaign.content_hash != c.content_hash => {
                            info!(campaign = %c.name, file = %path.display(), "campaign changed: applies to occurrences not started yet")
                        }
                        Some(_) => {}
                    }
                    valid.insert(c.name.clone(), Known { path, campaign: c });
                }
                Err(e) => {
                    if self.invalid.get(&path) != Some(&e) {
                        warn!(file = %path.display(), error = %e, "campaign file invalid: skipped (its last good version is not fired)");
                    }
                    invalid.insert(path, e);
                }
            }
        }
        for (name, old) in &self.campaigns {
            if !valid.contains_key(name) && !invalid.contains_key(&old.path) {
                info!(campaign = %name, file = %old.path.display(), "campaign file removed: no further occurrences");
            }
        }
        self.campaigns = valid;
        self.invalid = invalid;
    }

    fn hold(&self, name: &str, paused: bool, now: Timestamp) -> Option<Hold> {
        if self.stopped {
            return Some(Hold::Stop);
        }
        if paused {
            return Some(Hold::User);
        }
        let quiet = self
            .campaigns
            .get(name)
            .and_then(|k| k.campaign.quiet_hours.as_ref())
            .is_some_and(|q| q.is_quiet(now));
        quiet.then_some(Hold::Quiet)
    }

    /// Whether `row` is this daemon's to run: every row when the record is this state
    /// directory's alone; on a shared store, the rows this daemon's node decided or claimed.
    fn mine(&self, row: &OccurrenceRow) -> bool {
        !self.shared || row.node.as_deref() == Some(self.me.node.as_str())
    }

    fn user_paused(&self, name: &str) -> Result<bool, DaemonError> {
        Ok(state::campaign(&self.conn, name)?.is_some_and(|r| r.paused))
    }

    fn request(
        &self,
        row: &OccurrenceRow,
        k: &Known,
        resume: bool,
        start_paused: bool,
    ) -> RunRequest {
        RunRequest {
            campaign: row.campaign.clone(),
            occurrence: ts(row.occurrence),
            run_key: row.run_key.clone(),
            path: k.path.clone(),
            content_hash: row
                .content_hash
                .clone()
                .unwrap_or_else(|| k.campaign.content_hash.clone()),
            payload: k.campaign.payload.clone(),
            resume,
            start_paused,
        }
    }

    /// Take over orphaned occurrences ([`state::takeover`]: active, claimed by a daemon that is
    /// not alive, its run's lease expired or absent) of campaigns this daemon's folder has: the
    /// row is re-claimed conditionally ([`state::take_over`]: of two daemons one wins) and
    /// [`Self::attach_unattached`] resumes its run the same tick, as after a restart (the
    /// journal's claim takes the lease with a new fence; calls the dead daemon had in flight
    /// become `unknown`).
    fn take_over_orphans(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        if !self.takeover {
            return Ok(());
        }
        let n = now.as_second();
        let roster = state::roster(&self.conn)?;
        for row in state::occurrences_in(&self.conn, &status::ACTIVE)? {
            if !state::is_orphan(&row, &roster, &self.me, n) {
                continue;
            }
            if !self.campaigns.contains_key(&row.campaign) {
                debug!(run = %row.run_key, "orphaned run of a campaign this folder does not have (or not valid): not taken over");
                continue;
            }
            let lease = match self
                .journal
                .unfinished_run(&row.campaign, Some(&row.run_key))?
            {
                Some(run) => self.journal.lease(&run.id)?,
                None => None,
            };
            match state::takeover(&row, &roster, &self.me, lease.as_ref(), now) {
                state::Takeover::No => {}
                state::Takeover::WaitLease(until) => {
                    if self.waiting.insert(row.run_key.clone(), until) != Some(until) {
                        info!(run = %row.run_key, from_host = row.host.as_deref().unwrap_or("?"), from_pid = row.pid.unwrap_or(0), lease_until = %until, "its daemon is not alive; taking it over once the run's lease expires");
                    }
                }
                state::Takeover::Take => {
                    self.waiting.remove(&row.run_key);
                    if state::take_over(&self.conn, &row, &self.me, n)? {
                        warn!(run = %row.run_key, from_host = row.host.as_deref().unwrap_or("?"), from_pid = row.pid.unwrap_or(0), "took over a run whose daemon is not alive: resuming it (its calls in flight become unknown)");
                    } else {
                        debug!(run = %row.run_key, "another daemon took it over first");
                    }
                }
            }
        }
        Ok(())
    }

    /// Resume runs recorded active by an earlier process (after a restart).
    fn attach_unattached(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        for row in state::occurrences_in(&self.conn, &status::ACTIVE)? {
            if self.attached.contains(&row.run_key) || !self.mine(&row) {
                continue;
            }
            if !self.campaigns.contains_key(&row.campaign) {
                debug!(run = %row.run_key, "cannot resume yet: campaign file missing or invalid");
                continue;
            }
            // Left by an earlier process (of this node, or taken over from another): the row
            // names this process from now on, if nobody re-claimed it since it was read.
            // (A row without a claimant, from an older imcast, is resumed as it is.)
            let earlier = row.pid.is_some()
                && (row.pid != Some(i64::from(self.me.pid))
                    || row.host.as_deref() != Some(&self.me.host));
            if earlier && !state::take_over(&self.conn, &row, &self.me, now.as_second())? {
                debug!(run = %row.run_key, "re-claimed by another daemon first");
                continue;
            }
            let Some(k) = self.campaigns.get(&row.campaign) else {
                continue;
            };
            let hold = self.hold(&row.campaign, self.user_paused(&row.campaign)?, now);
            let req = self.request(&row, k, true, hold.is_some());
            info!(run = %row.run_key, "resuming a run started before a restart");
            match self.runner.start(req) {
                Ok(()) => {
                    self.attached.insert(row.run_key.clone());
                    let (st, by) = match hold {
                        Some(h) => (status::PAUSED, Some(h.as_str())),
                        None => (status::RUNNING, None),
                    };
                    state::update_occurrence(
                        &self.conn,
                        &row.campaign,
                        row.occurrence,
                        st,
                        Update {
                            paused_by: by,
                            ..Default::default()
                        },
                    )?;
                }
                Err(e) => {
                    error!(run = %row.run_key, error = %e, "could not resume run");
                    state::record_failed(&self.conn, &row, now.as_second(), &e)?;
                }
            }
        }
        Ok(())
    }

    fn handle_controls(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        let n = now.as_second();
        for req in self.journal.pending_controls()? {
            let name = req.campaign.as_str();
            let known_row = state::campaign(&self.conn, name)?;
            if known_row.is_none() && !self.campaigns.contains_key(name) {
                // Not ours: a request for a campaign sent by `imcast run` (its engine acts on it).
                continue;
            }
            if known_row.is_none() {
                if let Some(k) = self.campaigns.get(name) {
                    state::upsert_campaign(
                        &self.conn,
                        name,
                        &k.path.display().to_string(),
                        None,
                        n,
                    )?;
                }
            }
            let result = match req.request {
                ControlRequest::Pause => {
                    state::set_paused(&self.conn, name, true)?;
                    "paused: no new occurrence starts and running runs pause until `imcast resume`"
                        .to_string()
                }
                ControlRequest::Resume => {
                    state::set_paused(&self.conn, name, false)?;
                    "resumed".to_string()
                }
                ControlRequest::Cancel => self.cancel(name, now)?,
            };
            info!(campaign = %name, action = req.request.as_str(), result = %result, "control request");
            // The request's removal and the log of what was done commit together.
            self.journal
                .finish_control(&req, |j| -> Result<(), DaemonError> {
                    Ok(state::log_control(j.connection(), &req, n, &result)?)
                })?;
        }
        Ok(())
    }

    fn cancel(&mut self, name: &str, now: Timestamp) -> Result<String, DaemonError> {
        let n = now.as_second();
        let mut cancelled = Vec::new();
        for row in state::occurrences_in(
            &self.conn,
            &[
                status::CLAIMED,
                status::RUNNING,
                status::PAUSED,
                status::QUEUED,
                status::WAITING_QUIET,
            ],
        )? {
            if row.campaign != name {
                continue;
            }
            if self.attached.remove(&row.run_key) {
                self.runner.cancel(&row.run_key);
            }
            state::update_occurrence(
                &self.conn,
                name,
                row.occurrence,
                status::CANCELLED,
                Update {
                    finished_at: Some(n),
                    detail: Some("cancelled by request"),
                    ..Default::default()
                },
            )?;
            cancelled.push(row.run_key);
        }
        if !cancelled.is_empty() {
            return Ok(format!("cancelled {}", cancelled.join(", ")));
        }
        // Nothing running: cancel the next undecided occurrence.
        let Some(k) = self.campaigns.get(name) else {
            return Ok("nothing to cancel (campaign file missing or invalid)".into());
        };
        let Some(sched) = k.campaign.schedule.as_ref() else {
            return Ok("nothing to cancel (no schedule)".into());
        };
        let cursor = state::campaign(&self.conn, name)?
            .and_then(|r| r.cursor)
            .map(ts)
            .unwrap_or(now);
        let Some(next) = sched.next_after(cursor) else {
            return Ok("nothing to cancel (no further occurrence)".into());
        };
        let key = runner::run_key(name, next);
        state::record_occurrence_by(
            &self.conn,
            Some(&self.me),
            name,
            next.as_second(),
            status::CANCELLED,
            &key,
            &k.campaign.content_hash,
            n,
            Some("cancelled by request before it started"),
        )?;
        Ok(format!(
            "cancelled the next occurrence {next} ({})",
            sched.local(next)
        ))
    }

    fn poll_runs(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        let active = state::occurrences_in(&self.conn, &status::ACTIVE)?;
        // A run of ours whose row is no longer active: another daemon on the store cancelled it
        // (`imcast cancel` given to that daemon's state directory).
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|k| !active.iter().any(|r| &r.run_key == *k))
            .cloned()
            .collect();
        for key in gone {
            self.attached.remove(&key);
            self.runner.cancel(&key);
            info!(run = %key, "run cancelled in the occurrence record; stopped");
        }
        // A run of ours whose row another daemon took over (this one looked dead to it): stop
        // sending (a pause writes nothing; the journal's fence refuses our writes anyway).
        let lost: Vec<String> = active
            .iter()
            .filter(|r| self.attached.contains(&r.run_key) && !self.mine(r))
            .map(|r| r.run_key.clone())
            .collect();
        for key in lost {
            self.attached.remove(&key);
            self.runner.pause(&key);
            warn!(run = %key, "another daemon took this run over; stopped sending it here");
        }
        for row in active {
            if !self.attached.contains(&row.run_key) || !self.mine(&row) {
                continue;
            }
            match self.runner.status(&row.run_key) {
                // (Under the stop file the engine pauses itself; that is not a user pause.)
                RunStatus::Paused if row.status != status::PAUSED && !self.stopped => {
                    // The run's engine took the campaign's pause request from the control
                    // table before this loop did: the campaign is paused by the user.
                    state::set_paused(&self.conn, &row.campaign, true)?;
                    info!(run = %row.run_key, "run paused by request");
                }
                RunStatus::Running | RunStatus::Paused => {}
                RunStatus::Finished { outcome, detail } => {
                    self.attached.remove(&row.run_key);
                    let detail = state::finished_detail(
                        row.detail.as_deref(),
                        (!detail.is_empty()).then_some(detail),
                    );
                    state::update_occurrence(
                        &self.conn,
                        &row.campaign,
                        row.occurrence,
                        outcome.as_str(),
                        Update {
                            finished_at: Some(now.as_second()),
                            detail: detail.as_deref(),
                            ..Default::default()
                        },
                    )?;
                    info!(run = %row.run_key, outcome = outcome.as_str(), "run finished");
                }
                RunStatus::NotFound => {
                    self.attached.remove(&row.run_key);
                    error!(run = %row.run_key, "the runner lost this run; recorded failed");
                    state::record_failed(
                        &self.conn,
                        &row,
                        now.as_second(),
                        "the runner lost the run",
                    )?;
                }
            }
        }
        Ok(())
    }

    fn apply_holds(&mut self) -> Result<(), DaemonError> {
        let now = self.clock.now();
        for row in state::occurrences_in(&self.conn, &status::ACTIVE)? {
            if !self.attached.contains(&row.run_key) || !self.mine(&row) {
                continue;
            }
            let hold = self.hold(&row.campaign, self.user_paused(&row.campaign)?, now);
            match (hold, row.status.as_str()) {
                (Some(h), st)
                    if st != status::PAUSED || row.paused_by.as_deref() != Some(h.as_str()) =>
                {
                    if st != status::PAUSED {
                        self.runner.pause(&row.run_key);
                        info!(run = %row.run_key, reason = h.as_str(), "run paused");
                    }
                    state::update_occurrence(
                        &self.conn,
                        &row.campaign,
                        row.occurrence,
                        status::PAUSED,
                        Update {
                            paused_by: Some(h.as_str()),
                            ..Default::default()
                        },
                    )?;
                }
                (None, st) if st == status::PAUSED || st == status::CLAIMED => {
                    if st == status::PAUSED {
                        self.runner.resume(&row.run_key);
                        info!(run = %row.run_key, "run continues");
                    }
                    state::update_occurrence(
                        &self.conn,
                        &row.campaign,
                        row.occurrence,
                        status::RUNNING,
                        Update::default(),
                    )?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn has_active(&self, name: &str) -> Result<bool, DaemonError> {
        Ok(state::occurrences_in(&self.conn, &status::ACTIVE)?
            .iter()
            .any(|r| r.campaign == name))
    }

    fn has_active_or_pending(&self, name: &str) -> Result<bool, DaemonError> {
        Ok(state::occurrences_in(
            &self.conn,
            &[
                status::CLAIMED,
                status::RUNNING,
                status::PAUSED,
                status::QUEUED,
                status::WAITING_QUIET,
            ],
        )?
        .iter()
        .any(|r| r.campaign == name))
    }

    /// Start (the now claimed) `row`: the row is durable before the runner hears of it.
    fn start_row(&mut self, row: &OccurrenceRow, now: Timestamp) -> Result<(), DaemonError> {
        let Some(k) = self.campaigns.get(&row.campaign) else {
            return Ok(());
        };
        let req = self.request(row, k, false, false);
        let local = k
            .campaign
            .schedule
            .as_ref()
            .map(|s| s.local(req.occurrence))
            .unwrap_or_default();
        match self.runner.start(req) {
            Ok(()) => {
                self.attached.insert(row.run_key.clone());
                state::update_occurrence(
                    &self.conn,
                    &row.campaign,
                    row.occurrence,
                    status::RUNNING,
                    Update {
                        started_at: Some(now.as_second()),
                        ..Default::default()
                    },
                )?;
                info!(campaign = %row.campaign, occurrence_utc = %ts(row.occurrence), occurrence_local = %local, run = %row.run_key, at = %now, "fired");
            }
            Err(e) => {
                error!(campaign = %row.campaign, run = %row.run_key, error = %e, "could not start run; recorded failed");
                state::record_failed(&self.conn, row, now.as_second(), &e)?;
            }
        }
        Ok(())
    }

    fn start_pending(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        let pending = state::occurrences_in(&self.conn, &status::PENDING)?;
        let mut done: BTreeSet<String> = BTreeSet::new();
        for row in pending {
            if done.contains(&row.campaign) || !self.campaigns.contains_key(&row.campaign) {
                continue;
            }
            done.insert(row.campaign.clone());
            if self.has_active(&row.campaign)?
                || self
                    .hold(&row.campaign, self.user_paused(&row.campaign)?, now)
                    .is_some()
            {
                continue;
            }
            let hash = self
                .campaigns
                .get(&row.campaign)
                .map(|k| k.campaign.content_hash.clone());
            if !state::claim_pending(&self.conn, &row, &self.me, hash.as_deref(), now.as_second())?
            {
                debug!(run = %row.run_key, "another daemon claimed it first");
                continue;
            }
            let mut row = row;
            row.status = status::CLAIMED.into();
            row.content_hash = hash;
            self.start_row(&row, now)?;
        }
        Ok(())
    }

    fn decide_due(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        let n = now.as_second();
        let names: Vec<String> = self.campaigns.keys().cloned().collect();
        for name in names {
            let Some(k) = self.campaigns.get(&name) else {
                continue;
            };
            let Some(sched) = k.campaign.schedule.clone() else {
                continue;
            };
            let path = k.path.display().to_string();
            let hash = k.campaign.content_hash.clone();
            let row = match state::campaign(&self.conn, &name)? {
                Some(r) => r,
                None => {
                    state::upsert_campaign(&self.conn, &name, &path, None, n)?;
                    state::campaign(&self.conn, &name)?
                        .ok_or(StateError::Store(crate::store::StoreError::NoRows))?
                }
            };
            let cursor = match row.cursor {
                Some(c) => ts(c),
                None => {
                    // First sight: only the latest occurrence within not_after may still fire.
                    let window = jiff::SignedDuration::try_from(sched.not_after())
                        .unwrap_or(jiff::SignedDuration::ZERO);
                    let from = now.checked_sub(window).unwrap_or(now);
                    let last = sched
                        .occurrences_between(from, now, 100_000)
                        .last()
                        .copied();
                    let c = match last {
                        Some(l) => ts(l.as_second() - 1),
                        None => now,
                    };
                    state::set_cursor(&self.conn, &name, c.as_second())?;
                    c
                }
            };
            if matches!(
                self.hold(&name, row.paused, now),
                Some(Hold::Stop | Hold::User)
            ) {
                continue;
            }
            for o in sched.occurrences_between(cursor, now, 1000) {
                let key = runner::run_key(&name, o);
                let late = sched.is_late(o, now);
                let (st, detail): (&str, Option<String>) = if late {
                    (
                        status::SKIPPED_LATE,
                        Some(format!(
                            "due {o}, the daemon got to it at {now}: later than not_after {}",
                            humantime::format_duration(sched.not_after())
                        )),
                    )
                } else if self.has_active_or_pending(&name)? {
                    match sched.overlap() {
                        Overlap::Skip => (
                            status::SKIPPED_OVERLAP,
                            Some("the previous run was still going (overlap: skip)".into()),
                        ),
                        Overlap::Queue => (
                            status::QUEUED,
                            Some("the previous run was still going (overlap: queue)".into()),
                        ),
                    }
                } else if self.hold(&name, false, now) == Some(Hold::Quiet) {
                    (
                        status::WAITING_QUIET,
                        Some("due inside quiet hours; starts when they end".into()),
                    )
                } else {
                    (status::CLAIMED, None)
                };
                let inserted = state::record_occurrence_by(
                    &self.conn,
                    Some(&self.me),
                    &name,
                    o.as_second(),
                    st,
                    &key,
                    &hash,
                    n,
                    detail.as_deref(),
                )?;
                if !inserted {
                    debug!(run = %key, "occurrence already recorded; not fired again");
                    continue;
                }
                match st {
                    status::CLAIMED => {
                        let row = OccurrenceRow {
                            campaign: name.clone(),
                            occurrence: o.as_second(),
                            status: st.into(),
                            run_key: key,
                            content_hash: Some(hash.clone()),
                            recorded_at: n,
                            started_at: None,
                            finished_at: None,
                            paused_by: None,
                            detail: None,
                            node: Some(self.me.node.clone()),
                            host: Some(self.me.host.clone()),
                            pid: Some(i64::from(self.me.pid)),
                            claimed_at: Some(n),
                        };
                        self.start_row(&row, now)?;
                    }
                    status::SKIPPED_LATE => {
                        warn!(campaign = %name, occurrence_utc = %o, run = %key, "occurrence skipped: too late (skipped_late)")
                    }
                    status::SKIPPED_OVERLAP => {
                        warn!(campaign = %name, occurrence_utc = %o, run = %key, "occurrence skipped: previous run still going (skipped_overlap)")
                    }
                    other => {
                        info!(campaign = %name, occurrence_utc = %o, run = %key, status = other, "occurrence recorded")
                    }
                }
            }
        }
        Ok(())
    }

    fn publish(&mut self, now: Timestamp) -> Result<(), DaemonError> {
        let n = now.as_second();
        let mut next_fire = Vec::new();
        let names: Vec<String> = self.campaigns.keys().cloned().collect();
        for name in names {
            let Some(k) = self.campaigns.get(&name) else {
                continue;
            };
            let next = k.campaign.schedule.as_ref().and_then(|s| s.next_after(now));
            let path = k.path.display().to_string();
            if self.next_logged.get(&name) != Some(&next) {
                if let (Some(t), Some(s)) = (next, k.campaign.schedule.as_ref()) {
                    let later: Vec<String> =
                        s.upcoming(t, 2).iter().map(|x| x.to_string()).collect();
                    info!(campaign = %name, next_utc = %t, next_local = %s.local(t), then = %later.join(", "), "next occurrence");
                }
                self.next_logged.insert(name.clone(), next);
            }
            let want = (path, next.map(|t| t.as_second()));
            if self.published.get(&name) != Some(&want) {
                state::upsert_campaign(&self.conn, &name, &want.0, want.1, n)?;
                self.published.insert(name.clone(), want);
            }
            next_fire.push((name, next.map(|t| t.as_second())));
        }
        let active = state::occurrences_in(&self.conn, &status::ACTIVE)?;
        let paused = active.iter().filter(|r| r.status == status::PAUSED).count() as u64;
        self.metrics.publish(MetricsSnapshot {
            next_fire,
            runs_active: active.len() as u64,
            runs_paused: paused,
            invalid_files: self.invalid.len() as u64,
            occurrences: state::status_counts(&self.conn)?,
            stopped: self.stopped,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_state_dir_is_at_the_repository_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(root.join("campaigns/team")).expect("mkdir");
        std::fs::write(root.join("imcast.toml"), "").expect("write");
        let got = default_state_dir(&root.join("campaigns/team"));
        let want = std::fs::canonicalize(&root).expect("canon").join(".imcast");
        assert_eq!(got, want);
        // A nearer `.git` (a submodule, a nested checkout) does not split the state: the daemon
        // and `imcast run` on a file in that folder find the same state directory.
        std::fs::create_dir_all(root.join("campaigns/.git")).expect("mkdir .git");
        let file = root.join("campaigns/team/x.yaml");
        std::fs::write(&file, "").expect("write");
        let run_paths = crate::config::RepoPaths::discover(&file, None, None, None);
        assert_eq!(default_state_dir(&root.join("campaigns/team")), want);
        assert_eq!(run_paths.state_dir, want);
    }
}
