//! The send engine: takes the calls to make, throttles them through the account-wide limiter,
//! journals every attempt, retries what is safe to retry, and gives every recipient one status.
//!
//! It is generic over two traits so it does not depend on the plan or the provider client:
//! [`CallSource`] yields the calls in plan order and [`Transport`] makes one call. At integration
//! a thin adapter implements each (plan → `CallSource`, `provider::Client` → `Transport`, mapping
//! `provider::ErrorClass` onto [`ErrorClass`] with a `match`).
//!
//! Invariants:
//! - No call starts without a limiter admission; at most `max_in_flight` calls are in flight. The
//!   admission's permit is completed with the instant the answer (or failure) arrived: the
//!   limiter counts the call until then plus one window (see `throttle`).
//! - The in-flight mark is committed before the request leaves; the per-recipient outcome is
//!   committed before the call counts as done; a failed journal write stops the run.
//! - `NotProcessed` errors are retried with backoff up to `retry_max_attempts`; a 429 also slows
//!   the limiter and does not use up attempts; recipients are never dropped (they end `failed`).
//! - A receiver a BatchSendMessage answer lists in `FailedReceiver` (not delivered) is re-queued:
//!   it stays `pending` in the journal (with its refusals and attempts so far) and waits in a
//!   per-Content pool ([`requeue`]) for a later call of the same Content, with back-off, until
//!   the provider refused it `retry_max_attempts` times (429s and not-processed retries do not
//!   count); only then is it `failed`. Such calls ("extra calls", numbered after the plan's
//!   calls) go through the limiter, the in-flight mark and the journal like any call. After a
//!   stop or crash the journal still holds these receivers `pending`: the next session finds
//!   them through their plan call and re-queues them.
//! - A receiver is in at most one call at a time: it enters a pool only after the answer that
//!   refused it is committed, and leaves it for exactly one call.
//! - An `Unknown` outcome makes a batch/P2P call's receivers `unknown` and they are never resent
//!   silently; SendMessage calls carry a stable ClientMsgId ([`client_msg_id`]) and are retried.
//! - A `Fatal` error, the failure breaker, a deadline, a control request, the `STOP` file in the
//!   state directory (pauses the run) or a stop signal stops starting calls; in-flight calls are
//!   waited for and committed.
//!
//! Progress and warnings (429s, 5xx, unknown outcomes, the breaker nearing its threshold; one
//! line per kind per 10 s of the clock, see [`warn`]) go to callbacks rendered at the command
//! edge; each attempt's admission instant is its in-flight mark's time, which the journal logs
//! for the report's busiest window.
//!
//! Must not: read the system clock (time comes from the limiter's [`Clock`]), print anything,
//! or block a runtime thread.

pub mod adapters;
pub mod breaker;
pub mod fake;
pub mod requeue;
pub mod stop;
pub mod warn;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::action::Action;
use crate::clock::SharedClock;
use crate::config::{BreakerSettings, Limit};
use crate::exit::Exit;
use crate::failpoint::{self, Point};
use crate::journal::{
    CallState, ControlRequest, JournalError, Mark, Outcome, RecipientStatus, RecipientUpdate,
    RunStatus, SharedJournal, Write,
};
use crate::schedule::QuietHours;
use crate::throttle::{Acquired, Limiter, ThrottleError};

pub use breaker::Breaker;
pub use requeue::SameContent;
pub use stop::StopToken;
pub use warn::{WarnFn, WarnKind, Warning};

/// One call of the plan: its number, content variant, receivers and an opaque payload the
/// transport turns into the request (e.g. the rendered Content and ext).
#[derive(Debug, Clone)]
pub struct Call<P> {
    pub seq: u64,
    pub variant: String,
    /// Batch: user ids (≤ 500); conversation/P2P: exactly one conversation id.
    pub receivers: Vec<u64>,
    pub payload: P,
}

/// The iterator a [`CallSource`] returns.
pub type Calls<'a, P, E> = Box<dyn Iterator<Item = Result<Call<P>, E>> + 'a>;

/// The calls to make, in plan order. Iterated on a dedicated thread (it may re-render).
pub trait CallSource: Send + Sync + 'static {
    type Payload: Send + Sync + 'static;
    type Error: std::fmt::Display + Send + 'static;
    fn calls(&self) -> Calls<'_, Self::Payload, Self::Error>;
}

/// One attempt of a call as the transport sees it: only the receivers still to send.
#[derive(Debug, Clone)]
pub struct OutgoingCall<P> {
    pub seq: u64,
    pub variant: String,
    pub receivers: Vec<u64>,
    pub payload: Arc<P>,
    /// SendMessage only: stable across attempts and restarts.
    pub client_msg_id: Option<String>,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When the limiter admitted this attempt (the start the account limit counts).
    pub admitted_at: Timestamp,
}

/// One user in a P2PSendMessage answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct P2pUser {
    pub user_id: u64,
    /// `SUCCESS` or `NOT_ONLINE` (any case), or another code, verbatim.
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_platform: Option<String>,
}

/// What the provider answered to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// BatchSendMessage: message id per receiver, and the receivers it refused.
    Batch {
        message_ids: BTreeMap<u64, u64>,
        failed: Vec<u64>,
    },
    /// SendMessage: the one message id.
    Message { message_id: u64 },
    /// P2PSendMessage: per-user results.
    P2p { results: Vec<P2pUser> },
}

/// How a failed call may be handled (mirrors `provider::ErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorClass {
    /// Not processed: safe to resend.
    NotProcessed,
    /// The local clock is off (signature time check): stop and say so.
    Clock,
    /// Will not succeed by retrying (credentials, parameters): stop the run.
    Fatal,
    /// May have been processed.
    Unknown,
}

/// A failed call attempt, as the transport classifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub class: ErrorClass,
    /// HTTP 429 / the provider's rate-limit code.
    pub rate_limited: bool,
    pub code: Option<String>,
    pub http_status: Option<u16>,
    /// What happened and what to do (never secrets).
    pub message: String,
    /// Credentials or access were refused (exit 5).
    pub access: bool,
}

impl TransportError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        TransportError {
            class,
            rate_limited: false,
            code: None,
            http_status: None,
            message: message.into(),
            access: false,
        }
    }
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
    pub fn rate_limited(mut self) -> Self {
        self.rate_limited = true;
        self
    }
}

/// Makes one provider call.
pub trait Transport: Send + Sync + 'static {
    type Payload: SameContent + Send + Sync + 'static;
    fn send(
        &self,
        call: &OutgoingCall<Self::Payload>,
    ) -> impl Future<Output = Result<CallOutcome, TransportError>> + Send;
}

/// The SendMessage ClientMsgId: stable for (run key, conversation, content), so a resend after a
/// timeout or a crash is deduplicated by the provider.
pub fn client_msg_id(run_key: &str, conversation: u64, content_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(run_key.as_bytes());
    h.update([0]);
    h.update(conversation.to_string().as_bytes());
    h.update([0]);
    h.update(content_hash.as_bytes());
    let d = h.finalize();
    format!("imcast-{}", &hex::encode(d)[..32])
}

/// Engine settings for one run.
#[derive(Clone)]
pub struct EngineConfig {
    pub run_id: String,
    pub campaign: String,
    pub action: Action,
    pub max_in_flight: usize,
    /// Attempts per call for `NotProcessed` errors (and `Unknown` for SendMessage), ≥ 1.
    pub retry_max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// 429s retried per call before the call is given up as failed.
    pub max_rate_limited_retries: u32,
    pub breaker: BreakerSettings,
    pub deadline: Option<Timestamp>,
    pub resend_unknown: bool,
    /// Stable key for ClientMsgIds (the run id).
    pub run_key: String,
    /// How often (clock time) to look for pause/cancel requests in the journal.
    pub control_every: Duration,
    /// No call starts inside these hours; the engine waits for them to end.
    pub quiet_hours: Option<QuietHours>,
    /// How long re-queued receivers wait (after their back-off) for others of the same Content
    /// to share a call with; once the plan is exhausted they go as soon as they are ready.
    pub requeue_linger: Duration,
}

impl EngineConfig {
    pub fn new(run_id: &str, campaign: &str, action: Action) -> Self {
        EngineConfig {
            run_id: run_id.into(),
            campaign: campaign.into(),
            action,
            max_in_flight: crate::config::AccountConfig::default().max_in_flight_for(action),
            retry_max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_rate_limited_retries: 50,
            breaker: BreakerSettings::default(),
            deadline: None,
            resend_unknown: false,
            run_key: run_id.into(),
            control_every: Duration::from_secs(1),
            quiet_hours: None,
            requeue_linger: Duration::from_secs(5),
        }
    }
}

/// Where a run stands, for progress display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub run_id: String,
    /// Recipients per status (whole run, including earlier sessions).
    pub counts: BTreeMap<RecipientStatus, u64>,
    /// Calls finished in this session.
    pub calls_done: u64,
    /// Recipients (batch) or requests counted by the limiter in this session.
    pub units_done: u64,
    pub started: String,
    pub elapsed_secs: f64,
    /// Units per second achieved in this session.
    pub rate: f64,
    /// The limit this run is held to (the campaign's own throttle where it is lower than the
    /// account's share).
    pub limit: Limit,
    /// Units this session admitted in the last window of `limit` (retries included): what the
    /// run uses of its limit right now (never above it while the limiter holds).
    pub in_window: u64,
    /// Set while the run waits for quiet hours to end (no call starts until then).
    pub quiet_until: Option<String>,
}

impl Progress {
    pub fn pending(&self) -> u64 {
        self.counts
            .get(&RecipientStatus::Pending)
            .copied()
            .unwrap_or(0)
    }
    pub fn deliverable_total(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(s, _)| {
                !matches!(
                    s,
                    RecipientStatus::Invalid
                        | RecipientStatus::Duplicate
                        | RecipientStatus::Suppressed
                        | RecipientStatus::Holdout
                )
            })
            .map(|(_, n)| n)
            .sum()
    }
    pub fn settled(&self) -> u64 {
        self.deliverable_total() - self.pending()
    }

    /// The progress line people read: outcomes so far, the rate against the limit this run is
    /// really held to, and the elapsed time of this session:
    /// `sent 1,200, failed 3, unknown 0 · 1,000 in the last 1m (limit 1,000 per 1m) · elapsed 2m 5s`.
    pub fn describe(&self) -> String {
        let n = |s: RecipientStatus| self.counts.get(&s).copied().unwrap_or(0);
        let fmt = crate::report::fmt_count;
        let mut outcomes = format!(
            "sent {}, failed {}, unknown {}",
            fmt(n(RecipientStatus::Sent)),
            fmt(n(RecipientStatus::Failed)),
            fmt(n(RecipientStatus::Unknown))
        );
        if n(RecipientStatus::NotOnline) > 0 {
            outcomes.push_str(&format!(
                ", not online {}",
                fmt(n(RecipientStatus::NotOnline))
            ));
        }
        let window = humantime::format_duration(self.limit.window);
        // What the last window holds, not an average: an average over a short run counts one
        // call too many for its time and reads as "over the limit".
        let rate = format!(
            "{} in the last {window} (limit {} per {window})",
            fmt(self.in_window),
            fmt(self.limit.limit)
        );
        let elapsed = humantime::format_duration(Duration::from_secs(self.elapsed_secs as u64));
        format!("{outcomes} · {rate} · elapsed {elapsed}")
    }
}

/// Receives progress after each call (rendered at the command edge).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Why the engine stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// Every call was made.
    Completed,
    /// The deadline passed; pending recipients are `expired`.
    Deadline,
    /// The failure breaker tripped; the run is paused.
    Breaker { message: String },
    /// The provider refused in a way retrying cannot fix; the run is paused.
    Fatal {
        message: String,
        code: Option<String>,
        access: bool,
        clock: bool,
    },
    /// A stop signal; the run is interrupted (resumable).
    Interrupted,
    /// A pause request; the run is paused.
    Paused,
    /// A cancel request; pending recipients are `cancelled`.
    Cancelled,
    /// The rollout's canary failed its gate; the run is paused (a person resumes it).
    Canary { message: String },
}

/// The end of an engine session.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub reason: StopReason,
    pub status: RunStatus,
    pub counts: BTreeMap<RecipientStatus, u64>,
    pub calls_done: u64,
    pub started: Timestamp,
    pub ended: Timestamp,
}

impl RunEnd {
    /// The exit code (SIGTERM callers map `Interrupted` to 143 themselves).
    pub fn exit(&self) -> Exit {
        match &self.reason {
            StopReason::Completed | StopReason::Deadline => {
                let bad: u64 = [
                    RecipientStatus::Failed,
                    RecipientStatus::Unknown,
                    RecipientStatus::Expired,
                ]
                .iter()
                .map(|s| self.counts.get(s).copied().unwrap_or(0))
                .sum();
                if bad > 0 || self.status != RunStatus::Finished {
                    Exit::Incomplete
                } else {
                    Exit::Ok
                }
            }
            StopReason::Breaker { .. } | StopReason::Canary { .. } => Exit::Breaker,
            StopReason::Fatal { access: true, .. } => Exit::Access,
            StopReason::Fatal { .. } => Exit::Internal,
            StopReason::Interrupted => Exit::Interrupted,
            StopReason::Paused | StopReason::Cancelled => Exit::Ok,
        }
    }
}

/// Errors that stop the engine without a clean run status.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("journal write failed, the run stopped: {0}")]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Throttle(#[from] ThrottleError),
    #[error("building call {seq}: {message}")]
    Source { seq: u64, message: String },
    #[error("send task failed: {0}")]
    Task(String),
}

impl EngineError {
    /// The file a full disk refused to grow (the journal or the limiter's state), when that is
    /// what stopped the engine.
    pub fn disk_full(&self) -> Option<&std::path::Path> {
        match self {
            EngineError::Journal(j) => j.disk_full(),
            EngineError::Throttle(t) => t.disk_full(),
            _ => None,
        }
    }

    /// Whether the run was taken over by another process (see `journal::lease`): this process
    /// wrote nothing more to it.
    pub fn is_fenced(&self) -> bool {
        matches!(self, EngineError::Journal(j) if j.is_fenced())
    }

    pub fn exit(&self) -> Exit {
        if self.disk_full().is_some() {
            return Exit::Environment;
        }
        match self {
            EngineError::Journal(j) => match j.exit() {
                Exit::Busy => Exit::Busy,
                _ => Exit::Internal,
            },
            EngineError::Source { .. } => Exit::Invalid,
            _ => Exit::Internal,
        }
    }
}

/// The engine for one run session.
pub struct Engine<T: Transport> {
    cfg: EngineConfig,
    journal: SharedJournal,
    limiter: Limiter,
    transport: Arc<T>,
    clock: SharedClock,
    stop: StopToken,
    progress: Option<ProgressFn>,
    warn: Option<WarnFn>,
}

struct Work<P> {
    seq: u64,
    variant: String,
    receivers: Vec<u64>,
    payload: Arc<P>,
    /// How many times the provider refused each receiver before this call (in `receivers`
    /// order); empty: never.
    refusals: Vec<u32>,
    /// An extra call: it only carries re-queued receivers.
    extra: bool,
}

enum Produced<P> {
    Work(Work<P>),
    /// Receivers of a plan call refused in an earlier session: (id, refusals so far).
    Requeue {
        variant: String,
        payload: Arc<P>,
        entries: Vec<(u64, u32)>,
    },
    Error {
        seq: u64,
        message: String,
    },
}

/// How one call ended, for the breaker and progress.
#[derive(Debug, Clone, Copy, Default)]
struct CallEnd {
    /// Receivers with a final outcome in this call.
    receivers: u64,
    failed: u64,
    /// Receivers refused and re-queued (judged later, by their final outcome).
    requeued: u64,
    units: u64,
    done: bool,
}

struct Shared {
    stop: Option<StopReason>,
    error: Option<EngineError>,
    breaker: Breaker,
    counts: BTreeMap<RecipientStatus, u64>,
    calls_done: u64,
    units_done: u64,
    quiet_until: Option<Timestamp>,
    /// This session's admissions (instant, units) within the last window of the run's limit.
    recent: std::collections::VecDeque<(Timestamp, u64)>,
}

struct Ctx<T: Transport> {
    cfg: EngineConfig,
    journal: SharedJournal,
    limiter: Limiter,
    transport: Arc<T>,
    clock: SharedClock,
    stop: StopToken,
    shared: Mutex<Shared>,
    progress: Option<ProgressFn>,
    /// Where warnings go (None: `tracing`), one line per kind per 10 s.
    warn: Option<WarnFn>,
    warnings: Mutex<warn::WarnGate>,
    started: Timestamp,
    /// Receivers refused by the provider, waiting for a later call of their Content.
    pools: Mutex<requeue::Pools<T::Payload>>,
    /// The number the next extra call gets.
    next_extra: AtomicU64,
}

impl<T: Transport> Engine<T> {
    pub fn new(
        cfg: EngineConfig,
        journal: SharedJournal,
        limiter: Limiter,
        transport: Arc<T>,
        clock: SharedClock,
        stop: StopToken,
    ) -> Self {
        Engine {
            cfg,
            journal,
            limiter,
            transport,
            clock,
            stop,
            progress: None,
            warn: None,
        }
    }

    /// Report progress to `f` after each call.
    pub fn with_progress(mut self, f: ProgressFn) -> Self {
        self.progress = Some(f);
        self
    }

    /// Hand warnings to `f` (at most one line per kind per 10 s of the clock; see `warn`).
    pub fn with_warnings(mut self, f: WarnFn) -> Self {
        self.warn = Some(f);
        self
    }

    /// Send every call of `source` still to send in this run, then settle the run's status.
    pub async fn run<S>(self, source: Arc<S>) -> Result<RunEnd, EngineError>
    where
        S: CallSource<Payload = T::Payload>,
    {
        let started = self.clock.now();
        let run_id = self.cfg.run_id.clone();
        let (counts, next_extra) = self
            .journal
            .with(move |j| Ok((j.counts(&run_id)?, j.prepare_requeue(&run_id, started)?)))
            .await?;
        let ctx = Arc::new(Ctx {
            cfg: self.cfg.clone(),
            journal: self.journal.clone(),
            limiter: self.limiter.clone(),
            transport: self.transport.clone(),
            clock: self.clock.clone(),
            stop: self.stop.clone(),
            shared: Mutex::new(Shared {
                stop: None,
                error: None,
                breaker: Breaker::new(self.cfg.breaker),
                counts,
                calls_done: 0,
                units_done: 0,
                quiet_until: None,
                recent: std::collections::VecDeque::new(),
            }),
            progress: self.progress.clone(),
            warn: self.warn.clone(),
            warnings: Mutex::new(warn::WarnGate::default()),
            started,
            pools: Mutex::new(requeue::Pools::new(
                self.cfg.action.max_receivers(),
                self.cfg.requeue_linger,
            )),
            next_extra: AtomicU64::new(next_extra),
        });

        // Producer: iterate the plan on its own thread, keep only receivers still to send.
        let (tx, mut rx) = mpsc::channel::<Produced<T::Payload>>(self.cfg.max_in_flight.max(1) * 2);
        let db_path = self.journal.with(|j| Ok(j.source())).await?;
        let run_id = self.cfg.run_id.clone();
        let resend_unknown = self.cfg.resend_unknown;
        let producer = std::thread::Builder::new()
            .name("imcast-plan".into())
            .spawn(move || produce(source, &db_path, &run_id, resend_unknown, tx))
            .map_err(|e| EngineError::Task(e.to_string()))?;

        let sem = Arc::new(Semaphore::new(self.cfg.max_in_flight.max(1)));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let mut next_control = started;
        let mut source_done = false;
        loop {
            while let Some(r) = tasks.try_join_next() {
                if let Err(e) = r {
                    ctx.set_error(EngineError::Task(e.to_string()));
                }
            }
            if ctx.should_stop() {
                break;
            }
            if self.stop.is_stopped() {
                ctx.set_stop(StopReason::Interrupted);
                break;
            }
            let now = self.clock.now();
            if let Some(d) = self.cfg.deadline {
                if now >= d {
                    ctx.set_stop(StopReason::Deadline);
                    break;
                }
            }
            if now >= next_control {
                next_control = now
                    + jiff::SignedDuration::try_from(self.cfg.control_every).unwrap_or_default();
                let (campaign, run_id) = (self.cfg.campaign.clone(), self.cfg.run_id.clone());
                // The kill switch: `STOP` in the state directory pauses every run (no pid needed).
                let stop_file = stop::stop_file(
                    self.journal
                        .path()
                        .parent()
                        .unwrap_or(std::path::Path::new(".")),
                );
                match self
                    .journal
                    .with(move |j| {
                        if stop_file.exists() {
                            return Ok(Some(ControlRequest::Pause));
                        }
                        j.take_control(&run_id, &campaign)
                    })
                    .await
                {
                    Ok(Some(ControlRequest::Pause)) => {
                        ctx.set_stop(StopReason::Paused);
                        break;
                    }
                    Ok(Some(ControlRequest::Cancel)) => {
                        ctx.set_stop(StopReason::Cancelled);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ctx.set_error(e.into());
                        break;
                    }
                }
            }
            // Re-queued receivers that are due go first; then the plan's next call; once the
            // plan is exhausted, wait for calls in flight (they may re-queue more) and for the
            // re-queued receivers' back-off.
            let due = ctx.pools().take(now, source_done);
            let work = if let Some(t) = due {
                ctx.extra_work(t)
            } else if !source_done {
                let item = tokio::select! {
                    biased;
                    _ = self.stop.stopped() => { ctx.set_stop(StopReason::Interrupted); break; }
                    item = rx.recv() => item,
                };
                match item {
                    None => {
                        source_done = true;
                        continue;
                    }
                    Some(Produced::Error { seq, message }) => {
                        ctx.set_error(EngineError::Source { seq, message });
                        break;
                    }
                    Some(Produced::Requeue {
                        variant,
                        payload,
                        entries,
                    }) => {
                        let entries = entries
                            .into_iter()
                            .map(|(id, refusals)| requeue::Entry {
                                id,
                                refusals,
                                ready_at: now,
                            })
                            .collect();
                        ctx.pools().add(&variant, &payload, entries);
                        continue;
                    }
                    Some(Produced::Work(w)) => w,
                }
            } else {
                let next_due = ctx.pools().next_due(true);
                if next_due.is_none() {
                    // Nothing waits: done once the calls in flight are (they may re-queue).
                    let r = tokio::select! {
                        biased;
                        _ = self.stop.stopped() => { ctx.set_stop(StopReason::Interrupted); break; }
                        r = tasks.join_next() => r,
                    };
                    match r {
                        None => break,
                        Some(Err(e)) => ctx.set_error(EngineError::Task(e.to_string())),
                        Some(Ok(())) => {}
                    }
                    continue;
                }
                // Wait for a call to end, the next re-queued receiver, the next control check
                // or the deadline, whichever comes first.
                let mut until = next_control;
                if let Some(t) = next_due {
                    until = until.min(t);
                }
                if let Some(d) = self.cfg.deadline {
                    until = until.min(d);
                }
                let wait = Duration::from_nanos(
                    (until.as_nanosecond() - now.as_nanosecond())
                        .clamp(1_000_000, i128::from(u64::MAX)) as u64,
                );
                tokio::select! {
                    biased;
                    _ = self.stop.stopped() => { ctx.set_stop(StopReason::Interrupted); break; }
                    Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Err(e) = r {
                            ctx.set_error(EngineError::Task(e.to_string()));
                        }
                    }
                    _ = self.clock.sleep(wait) => {}
                }
                continue;
            };
            let permit = tokio::select! {
                biased;
                _ = self.stop.stopped() => { ctx.set_stop(StopReason::Interrupted); break; }
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            if ctx.should_stop() {
                break;
            }
            let c = ctx.clone();
            tasks.spawn(async move {
                let _permit = permit;
                c.process(work).await;
            });
        }
        drop(rx);
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                ctx.set_error(EngineError::Task(e.to_string()));
            }
        }
        let _ = tokio::task::spawn_blocking(move || producer.join()).await;
        ctx.finish().await
    }
}

fn produce<S: CallSource>(
    source: Arc<S>,
    db_path: &crate::journal::JournalSource,
    run_id: &str,
    resend_unknown: bool,
    tx: mpsc::Sender<Produced<S::Payload>>,
) {
    // This connection only looks up a call's receivers: a small page cache (memory stays flat).
    let reader = match db_path.open_reader(2048) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.blocking_send(Produced::Error {
                seq: 0,
                message: e.to_string(),
            });
            return;
        }
    };
    // A fresh run: every receiver the plan names is pending and none was re-queued, no lookup
    // per call needed.
    let fresh = match reader
        .all_valid_pending(run_id)
        .and_then(|f| Ok(f && !reader.any_call_settled(run_id)?))
    {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Produced::Error {
                seq: 0,
                message: e.to_string(),
            });
            return;
        }
    };
    let mut last_seq = 0;
    for call in source.calls() {
        let call = match call {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.blocking_send(Produced::Error {
                    seq: last_seq,
                    message: e.to_string(),
                });
                return;
            }
        };
        last_seq = call.seq;
        if fresh {
            let w = Work {
                seq: call.seq,
                variant: call.variant,
                receivers: call.receivers,
                payload: Arc::new(call.payload),
                refusals: Vec::new(),
                extra: false,
            };
            if w.receivers.is_empty() {
                continue;
            }
            if tx.blocking_send(Produced::Work(w)).is_err() {
                return;
            }
            continue;
        }
        // Resumed: only the receivers still to send; those refused in an earlier session
        // (pending with refusals) go back to the re-queue pools, not into this call.
        let looked_up = reader.sendable_detail(run_id, call.seq, &call.receivers, resend_unknown);
        let found = match looked_up {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Produced::Error {
                    seq: call.seq,
                    message: e.to_string(),
                });
                return;
            }
        };
        let (requeued, receivers): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|x| x.pending && x.refusals > 0);
        let payload = Arc::new(call.payload);
        if !requeued.is_empty() {
            let r = Produced::Requeue {
                variant: call.variant.clone(),
                payload: payload.clone(),
                entries: requeued.iter().map(|x| (x.id, x.refusals)).collect(),
            };
            if tx.blocking_send(r).is_err() {
                return;
            }
        }
        if receivers.is_empty() {
            continue;
        }
        // (An `unknown` receiver resent with --resend-unknown keeps the refusals it had.)
        let refusals = if receivers.iter().any(|x| x.refusals > 0) {
            receivers.iter().map(|x| x.refusals).collect()
        } else {
            Vec::new()
        };
        let w = Work {
            seq: call.seq,
            variant: call.variant,
            receivers: receivers.iter().map(|x| x.id).collect(),
            payload,
            refusals,
            extra: false,
        };
        if tx.blocking_send(Produced::Work(w)).is_err() {
            return;
        }
    }
}

enum Attempt {
    Retry,
    End(CallEnd),
    Stop,
}

impl<T: Transport> Ctx<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn should_stop(&self) -> bool {
        let s = self.lock();
        s.stop.is_some() || s.error.is_some()
    }

    fn set_stop(&self, r: StopReason) {
        let mut s = self.lock();
        if s.stop.is_none() {
            s.stop = Some(r);
        }
    }

    fn set_error(&self, e: EngineError) {
        let mut s = self.lock();
        if s.error.is_none() {
            s.error = Some(e);
        }
    }

    /// A warning happened now: shown when its kind is due (see `warn`).
    fn warn(&self, kind: WarnKind, message: String) {
        let line = self
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(kind, self.clock.now(), message);
        if let Some(w) = line {
            match &self.warn {
                Some(f) => f(&w),
                None => tracing::warn!(run = %self.cfg.run_id, "{}", w.line()),
            }
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, requeue::Pools<T::Payload>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An extra call for re-queued receivers, numbered after every call so far.
    fn extra_work(&self, t: requeue::Taken<T::Payload>) -> Work<T::Payload> {
        Work {
            seq: self.next_extra.fetch_add(1, Ordering::SeqCst),
            variant: t.variant,
            receivers: t.entries.iter().map(|e| e.id).collect(),
            refusals: t.entries.iter().map(|e| e.refusals).collect(),
            payload: t.payload,
            extra: true,
        }
    }

    /// The wait before attempt `attempt + 1`: `backoff_base` doubled per attempt, at most
    /// `backoff_max`.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(16);
        self.cfg
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.backoff_max)
    }

    /// Receivers of a batch answer's `FailedReceiver` (not delivered): refused fewer than
    /// `retry_max_attempts` times, they stay `pending` and are returned to be re-queued; the rest
    /// are `failed`. The budget counts refusals (calls answered), not 429s or not-processed
    /// retries of a call, which have their own limits.
    fn refused(
        &self,
        work: &Work<T::Payload>,
        outcome: &CallOutcome,
        updates: &mut [RecipientUpdate],
    ) -> Vec<requeue::Entry> {
        let CallOutcome::Batch {
            message_ids,
            failed,
        } = outcome
        else {
            return Vec::new();
        };
        if failed.is_empty() {
            return Vec::new();
        }
        let refused: std::collections::HashSet<u64> = failed
            .iter()
            .copied()
            .filter(|id| !message_ids.contains_key(id))
            .collect();
        let index: std::collections::HashMap<u64, usize> = if work.refusals.is_empty() {
            std::collections::HashMap::new()
        } else {
            work.receivers
                .iter()
                .enumerate()
                .map(|(i, id)| (*id, i))
                .collect()
        };
        let max = self.cfg.retry_max_attempts.max(1);
        let now = self.clock.now();
        let mut out = Vec::new();
        for u in updates.iter_mut().filter(|u| refused.contains(&u.id)) {
            let before = index
                .get(&u.id)
                .and_then(|&i| work.refusals.get(i))
                .copied()
                .unwrap_or(0);
            let refusals = before.saturating_add(1);
            u.message_id = None;
            u.error_code = Some("FailedReceiver".into());
            if refusals < max {
                u.status = RecipientStatus::Pending;
                u.error_message = Some(format!(
                    "the provider refused this receiver (FailedReceiver), try {refusals} of at most {max}; sent again in a later call"
                ));
                let wait =
                    jiff::SignedDuration::try_from(self.backoff(refusals)).unwrap_or_default();
                out.push(requeue::Entry {
                    id: u.id,
                    refusals,
                    ready_at: now.saturating_add(wait).unwrap_or(now),
                });
            } else {
                u.status = RecipientStatus::Failed;
                u.error_message = Some(if refusals <= 1 {
                    "the provider refused this receiver (FailedReceiver); retry.max_attempts is 1, so it was not sent again"
                        .to_string()
                } else {
                    format!(
                        "the provider refused this receiver (FailedReceiver) in each of its {refusals} tries (retry.max_attempts)"
                    )
                });
            }
        }
        out
    }

    fn units(&self, receivers: usize) -> u64 {
        self.cfg.action.units(receivers as u64)
    }

    async fn process(&self, work: Work<T::Payload>) {
        let client_msg_id = (self.cfg.action == Action::Conversation).then(|| {
            client_msg_id(
                &self.cfg.run_key,
                work.receivers.first().copied().unwrap_or(0),
                &work.variant,
            )
        });
        let mut attempt: u32 = 0;
        let mut rate_limited: u32 = 0;
        loop {
            match self
                .attempt(&work, &client_msg_id, &mut attempt, &mut rate_limited)
                .await
            {
                Ok(Attempt::Retry) => continue,
                Ok(Attempt::Stop) => return,
                Ok(Attempt::End(end)) => {
                    self.call_ended(&work, end).await;
                    return;
                }
                Err(e) => {
                    self.set_error(e);
                    return;
                }
            }
        }
    }

    async fn attempt(
        &self,
        work: &Work<T::Payload>,
        client_msg_id: &Option<String>,
        attempt: &mut u32,
        rate_limited: &mut u32,
    ) -> Result<Attempt, EngineError> {
        let units = self.units(work.receivers.len());
        let mut permit = loop {
            // Quiet hours: wait for them to end before taking quota.
            if !self.wait_quiet().await {
                return Ok(Attempt::Stop);
            }
            let acquired = tokio::select! {
                biased;
                _ = self.stop.stopped() => return Ok(Attempt::Stop),
                a = self.limiter.acquire(units, self.cfg.deadline) => a?,
            };
            match acquired {
                Acquired::At(p) => {
                    // Admitted right as quiet hours began: that quota is spent (the window
                    // counts it), wait and take fresh quota when they end.
                    if self.is_quiet(self.clock.now()) {
                        continue;
                    }
                    break p;
                }
                Acquired::Deadline => {
                    self.set_stop(StopReason::Deadline);
                    return Ok(Attempt::Stop);
                }
            }
        };
        // A stop requested while waiting for the limiter: do not start.
        if self.stop.is_stopped() || self.should_stop() {
            return Ok(Attempt::Stop);
        }
        self.admitted(permit.at(), units);
        *attempt += 1;
        let (run, seq, variant, recv, cmid, now) = (
            self.cfg.run_id.clone(),
            work.seq,
            work.variant.clone(),
            work.receivers.clone(),
            client_msg_id.clone(),
            // The admission instant: the attempts log measures the busiest window from it.
            permit.at(),
        );
        self.journal
            .write(Write::Mark(Mark {
                run_id: run,
                seq,
                variant,
                receivers: recv,
                client_msg_id: cmid,
                now,
            }))
            .await?;
        failpoint::hit(Point::AfterMark);
        let out = OutgoingCall {
            seq: work.seq,
            variant: work.variant.clone(),
            receivers: work.receivers.clone(),
            payload: work.payload.clone(),
            client_msg_id: client_msg_id.clone(),
            attempt: *attempt,
            admitted_at: permit.at(),
        };
        permit.sending().await;
        let res = self.transport.send(&out).await;
        failpoint::hit(Point::AfterResponse);
        let now = self.clock.now();
        // The call counts in the window until its answer (or failure) plus one window.
        permit.complete(now).await;
        match res {
            Ok(outcome) => {
                self.limiter.on_success();
                let mut updates = outcome_updates(&work.receivers, &outcome);
                let requeue = self.refused(work, &outcome, &mut updates);
                let failed = updates
                    .iter()
                    .filter(|u| {
                        matches!(u.status, RecipientStatus::Failed | RecipientStatus::Unknown)
                    })
                    .count() as u64;
                self.record(work.seq, CallState::Done, updates, None, now)
                    .await?;
                let requeued = requeue.len() as u64;
                if !requeue.is_empty() {
                    // Committed `pending`: from here a crash loses nobody (resume re-queues).
                    failpoint::hit(Point::AfterRequeue);
                    self.pools().add(&work.variant, &work.payload, requeue);
                }
                Ok(Attempt::End(CallEnd {
                    receivers: work.receivers.len() as u64 - requeued,
                    failed,
                    requeued,
                    units,
                    done: true,
                }))
            }
            Err(e) => {
                let code = e.code.clone().unwrap_or_else(|| match e.http_status {
                    Some(s) => format!("HTTP{s}"),
                    None => format!("{:?}", e.class),
                });
                if e.rate_limited {
                    self.warn(
                        WarnKind::RateLimited,
                        format!(
                            "the provider answered call {} with {code}; slowing down and retrying (someone else may be using this account's quota)",
                            work.seq
                        ),
                    );
                } else if e.http_status.is_some_and(|s| s >= 500) {
                    self.warn(
                        WarnKind::ServerError,
                        format!("call {} failed with {code}: {}", work.seq, e.message),
                    );
                }
                match e.class {
                    ErrorClass::NotProcessed => {
                        let retry = if e.rate_limited {
                            self.limiter.on_rate_limited();
                            *rate_limited += 1;
                            // 429s do not use up attempts.
                            *attempt -= 1;
                            *rate_limited <= self.cfg.max_rate_limited_retries
                        } else {
                            *attempt < self.cfg.retry_max_attempts.max(1)
                        };
                        if retry {
                            self.retry_later(work.seq, &code, &e.message, *attempt)
                                .await
                        } else {
                            let updates =
                                all(&work.receivers, RecipientStatus::Failed, &code, &e.message);
                            self.record(
                                work.seq,
                                CallState::Done,
                                updates,
                                Some((&code, &e.message)),
                                now,
                            )
                            .await?;
                            Ok(Attempt::End(CallEnd {
                                receivers: work.receivers.len() as u64,
                                failed: work.receivers.len() as u64,
                                requeued: 0,
                                units,
                                done: false,
                            }))
                        }
                    }
                    ErrorClass::Unknown => {
                        if self.cfg.action == Action::Conversation
                            && *attempt < self.cfg.retry_max_attempts.max(1)
                        {
                            return self
                                .retry_later(work.seq, &code, &e.message, *attempt)
                                .await;
                        }
                        let msg = format!(
                            "{} (the provider may have delivered it; not resent without --resend-unknown)",
                            e.message
                        );
                        self.warn(
                            WarnKind::Unknown,
                            format!(
                                "call {} ({}) has an unknown outcome ({code}); its recipients are `unknown` and not resent without --resend-unknown",
                                work.seq,
                                crate::output::count(work.receivers.len() as u64, "recipient", "recipients")
                            ),
                        );
                        let updates = all(&work.receivers, RecipientStatus::Unknown, &code, &msg);
                        self.record(
                            work.seq,
                            CallState::Unknown,
                            updates,
                            Some((&code, &msg)),
                            now,
                        )
                        .await?;
                        Ok(Attempt::End(CallEnd {
                            receivers: work.receivers.len() as u64,
                            failed: work.receivers.len() as u64,
                            requeued: 0,
                            units,
                            done: false,
                        }))
                    }
                    ErrorClass::Fatal | ErrorClass::Clock => {
                        let (run, seq, c, m) = (
                            self.cfg.run_id.clone(),
                            work.seq,
                            code.clone(),
                            e.message.clone(),
                        );
                        self.journal
                            .with(move |j| j.mark_retry(&run, seq, Some(&c), &m, now))
                            .await?;
                        self.set_stop(StopReason::Fatal {
                            message: e.message.clone(),
                            code: e.code.clone(),
                            access: e.access,
                            clock: e.class == ErrorClass::Clock,
                        });
                        Ok(Attempt::Stop)
                    }
                }
            }
        }
    }

    fn is_quiet(&self, t: Timestamp) -> bool {
        self.cfg.quiet_hours.as_ref().is_some_and(|q| q.is_quiet(t))
    }

    /// Wait (on the clock) while it is quiet hours; false when stopped or the deadline comes
    /// first. While waiting, `quiet_until` is set (progress and status show the pause).
    async fn wait_quiet(&self) -> bool {
        let Some(q) = self.cfg.quiet_hours.clone() else {
            return true;
        };
        loop {
            let now = self.clock.now();
            if !q.is_quiet(now) {
                self.set_quiet(None).await;
                return true;
            }
            let open = q.next_open(now);
            if let Some(d) = self.cfg.deadline {
                if open >= d {
                    self.set_quiet(Some(open)).await;
                    self.set_stop(StopReason::Deadline);
                    return false;
                }
            }
            self.set_quiet(Some(open)).await;
            let wait = (open.as_nanosecond() - now.as_nanosecond()).max(1_000_000) as u64;
            let wait = Duration::from_nanos(wait);
            tokio::select! {
                biased;
                _ = self.stop.stopped() => return false,
                _ = self.clock.sleep(wait) => {}
            }
            if self.should_stop() {
                return false;
            }
        }
    }

    /// Record (once per change) that the run waits for quiet hours to end, or no longer does.
    async fn set_quiet(&self, until: Option<Timestamp>) {
        let progress = {
            let mut s = self.lock();
            if s.quiet_until == until {
                return;
            }
            s.quiet_until = until;
            self.progress.as_ref().map(|_| self.snapshot(&mut s))
        };
        let (run, now) = (self.cfg.run_id.clone(), self.clock.now());
        let why = until.map(|t| format!("waiting: quiet hours until {t}"));
        let _ = self
            .journal
            .with(move |j| j.set_status(&run, RunStatus::Running, why.as_deref(), now))
            .await;
        if let (Some(f), Some(p)) = (&self.progress, progress) {
            f(&p);
        }
    }

    async fn retry_later(
        &self,
        seq: u64,
        code: &str,
        message: &str,
        attempt: u32,
    ) -> Result<Attempt, EngineError> {
        let (run, c, m, now) = (
            self.cfg.run_id.clone(),
            code.to_string(),
            message.to_string(),
            self.clock.now(),
        );
        self.journal
            .with(move |j| j.mark_retry(&run, seq, Some(&c), &m, now))
            .await?;
        let wait = self.backoff(attempt);
        if let Some(d) = self.cfg.deadline {
            if self.clock.now() + jiff::SignedDuration::try_from(wait).unwrap_or_default() >= d {
                self.set_stop(StopReason::Deadline);
                return Ok(Attempt::Stop);
            }
        }
        tokio::select! {
            biased;
            _ = self.stop.stopped() => Ok(Attempt::Stop),
            _ = self.clock.sleep(wait) => Ok(Attempt::Retry),
        }
    }

    async fn record(
        &self,
        seq: u64,
        state: CallState,
        updates: Vec<RecipientUpdate>,
        error: Option<(&str, &str)>,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        let run = self.cfg.run_id.clone();
        let error = error.map(|(c, m)| (c.to_string(), m.to_string()));
        let delta: Vec<RecipientStatus> = updates.iter().map(|u| u.status).collect();
        self.journal
            .write(Write::Outcome(Outcome {
                run_id: run,
                seq,
                state,
                updates,
                error,
                now,
            }))
            .await?;
        let mut s = self.lock();
        for st in delta {
            *s.counts.entry(st).or_default() += 1;
            let p = s.counts.entry(RecipientStatus::Pending).or_default();
            *p = p.saturating_sub(1);
        }
        Ok(())
    }

    async fn call_ended(&self, work: &Work<T::Payload>, end: CallEnd) {
        let (progress, near) = {
            let mut s = self.lock();
            s.calls_done += 1;
            s.units_done += end.units;
            let _ = end.done;
            let mut near = None;
            if let Some(msg) =
                s.breaker
                    .record_call(end.receivers, end.failed, end.requeued, work.extra)
            {
                if s.stop.is_none() {
                    s.stop = Some(StopReason::Breaker { message: msg });
                }
            } else {
                near = s.breaker.approaching();
            }
            (self.progress.as_ref().map(|_| self.snapshot(&mut s)), near)
        };
        if let Some(msg) = near {
            self.warn(WarnKind::BreakerNear, msg);
        }
        if let (Some(f), Some(p)) = (&self.progress, progress) {
            f(&p);
        }
    }

    /// Keep only the admissions in the window `(now - W, now]` of `limit` (memory: one window's
    /// admissions, whether or not anyone reads the progress).
    fn keep_window(s: &mut Shared, limit: Limit, now: Timestamp) {
        let w = jiff::SignedDuration::try_from(limit.window).unwrap_or_default();
        let from = now.checked_sub(w).unwrap_or(now);
        while s.recent.front().is_some_and(|(at, _)| *at <= from) {
            s.recent.pop_front();
        }
    }

    /// An attempt of `units` was admitted at `at`.
    fn admitted(&self, at: Timestamp, units: u64) {
        let limit = self.limiter.effective_limit();
        let mut s = self.lock();
        s.recent.push_back((at, units));
        Self::keep_window(&mut s, limit, at);
    }

    fn snapshot(&self, s: &mut Shared) -> Progress {
        let now = self.clock.now();
        let limit = self.limiter.effective_limit();
        Self::keep_window(s, limit, now);
        let in_window = s.recent.iter().map(|(_, u)| u).sum();
        let elapsed = (now.as_nanosecond() - self.started.as_nanosecond()).max(0) as f64 / 1e9;
        Progress {
            run_id: self.cfg.run_id.clone(),
            counts: s.counts.clone(),
            calls_done: s.calls_done,
            units_done: s.units_done,
            started: self.started.to_string(),
            elapsed_secs: elapsed,
            rate: if elapsed > 0.0 {
                s.units_done as f64 / elapsed
            } else {
                0.0
            },
            limit,
            in_window,
            quiet_until: s.quiet_until.map(|t| t.to_string()),
        }
    }

    async fn finish(&self) -> Result<RunEnd, EngineError> {
        // The calls' ends that no later decision carried: written before the run reports.
        if let Err(e) = self.limiter.flush().await {
            tracing::warn!(error = %e, "limiter: could not record the calls' ends (they keep counting until their fallback ends)");
        }
        // What the warnings held back since their last line, said once at the end.
        let closing = self
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain();
        for w in closing {
            match &self.warn {
                Some(f) => f(&w),
                None => tracing::warn!(run = %self.cfg.run_id, "{}", w.line()),
            }
        }
        let (reason, error, calls_done) = {
            let mut s = self.lock();
            (s.stop.take(), s.error.take(), s.calls_done)
        };
        let now = self.clock.now();
        let run = self.cfg.run_id.clone();
        if let Some(e) = error {
            // Best effort: leave the run resumable with the reason; the error is what counts.
            let msg = e.to_string();
            let _ = self
                .journal
                .with(move |j| j.set_status(&run, RunStatus::Paused, Some(&msg), now))
                .await;
            return Err(e);
        }
        let reason = reason.unwrap_or(StopReason::Completed);
        let r = reason.clone();
        let (status, counts) = self
            .journal
            .with(move |j| {
                let status = match &r {
                    StopReason::Completed => {
                        if j.count_status(&run, RecipientStatus::Pending)? == 0 {
                            RunStatus::Finished
                        } else {
                            RunStatus::Paused
                        }
                    }
                    StopReason::Deadline => {
                        j.expire_pending(&run, now)?;
                        RunStatus::Finished
                    }
                    StopReason::Cancelled => {
                        j.cancel_pending(&run, now)?;
                        RunStatus::Cancelled
                    }
                    StopReason::Interrupted => RunStatus::Interrupted,
                    StopReason::Breaker { .. }
                    | StopReason::Canary { .. }
                    | StopReason::Fatal { .. }
                    | StopReason::Paused => RunStatus::Paused,
                };
                let why = match &r {
                    StopReason::Completed if status == RunStatus::Paused => {
                        Some("calls ended with recipients still pending".to_string())
                    }
                    StopReason::Completed => None,
                    StopReason::Deadline => Some("deadline passed".into()),
                    StopReason::Breaker { message } | StopReason::Canary { message } => {
                        Some(message.clone())
                    }
                    StopReason::Fatal { message, .. } => Some(message.clone()),
                    StopReason::Interrupted => Some("interrupted by a signal".into()),
                    StopReason::Paused => Some("paused by request".into()),
                    StopReason::Cancelled => Some("cancelled by request".into()),
                };
                j.set_status(&run, status, why.as_deref(), now)?;
                Ok((status, j.counts(&run)?))
            })
            .await?;
        Ok(RunEnd {
            reason,
            status,
            counts,
            calls_done,
            started: self.started,
            ended: now,
        })
    }
}

fn all(ids: &[u64], status: RecipientStatus, code: &str, msg: &str) -> Vec<RecipientUpdate> {
    ids.iter()
        .map(|&id| RecipientUpdate {
            id,
            status,
            message_id: None,
            error_code: Some(code.to_string()),
            error_message: Some(msg.to_string()),
            detail: None,
        })
        .collect()
}

/// Per-recipient statuses from a provider answer.
pub fn outcome_updates(receivers: &[u64], outcome: &CallOutcome) -> Vec<RecipientUpdate> {
    match outcome {
        CallOutcome::Batch {
            message_ids,
            failed,
        } => receivers
            .iter()
            .map(|&id| {
                if let Some(m) = message_ids.get(&id) {
                    RecipientUpdate {
                        id,
                        status: RecipientStatus::Sent,
                        message_id: Some(*m),
                        error_code: None,
                        error_message: None,
                        detail: None,
                    }
                } else if failed.contains(&id) {
                    RecipientUpdate {
                        id,
                        status: RecipientStatus::Failed,
                        message_id: None,
                        error_code: Some("FailedReceiver".into()),
                        error_message: Some(
                            "the provider refused this receiver (FailedReceiver)".into(),
                        ),
                        detail: None,
                    }
                } else {
                    RecipientUpdate {
                        id,
                        status: RecipientStatus::Unknown,
                        message_id: None,
                        error_code: Some("MissingFromAnswer".into()),
                        error_message: Some(
                            "the provider's answer did not mention this receiver".into(),
                        ),
                        detail: None,
                    }
                }
            })
            .collect(),
        CallOutcome::Message { message_id } => receivers
            .iter()
            .map(|&id| RecipientUpdate {
                id,
                status: RecipientStatus::Sent,
                message_id: Some(*message_id),
                error_code: None,
                error_message: None,
                detail: None,
            })
            .collect(),
        CallOutcome::P2p { results } => {
            let (status, error_code, error_message) = p2p_status(results);
            let detail = serde_json::to_string(results).ok();
            receivers
                .iter()
                .map(|&id| RecipientUpdate {
                    id,
                    status,
                    message_id: None,
                    error_code: error_code.clone(),
                    error_message: error_message.clone(),
                    detail: detail.clone(),
                })
                .collect()
        }
    }
}

/// A P2P conversation's status from its per-user results: `sent` if any user got it (`SUCCESS`,
/// any case); `not_online` if every user is `NOT_ONLINE` (any case) or none is listed; otherwise
/// `failed`, with the provider's first other code verbatim (never silently `not_online`).
fn p2p_status(results: &[P2pUser]) -> (RecipientStatus, Option<String>, Option<String>) {
    use crate::provider::{p2p_code, P2pCode};
    if results
        .iter()
        .any(|r| p2p_code(&r.code) == P2pCode::Success)
    {
        return (RecipientStatus::Sent, None, None);
    }
    if let Some(r) = results.iter().find(|r| p2p_code(&r.code) == P2pCode::Other) {
        let code = if r.code.trim().is_empty() {
            "(empty)".to_string()
        } else {
            r.code.clone()
        };
        return (
            RecipientStatus::Failed,
            Some(code.clone()),
            Some(format!(
                "the provider answered Code {code} for user {} (not SUCCESS or NOT_ONLINE); no user of the conversation got it",
                r.user_id
            )),
        );
    }
    match results.first() {
        Some(r) => (RecipientStatus::NotOnline, Some(r.code.clone()), None),
        None => (
            RecipientStatus::NotOnline,
            Some("NOT_ONLINE".to_string()),
            Some("the provider listed no user in P2PResult: nobody online received it".to_string()),
        ),
    }
}

/// How many recipients per status, for messages: `sent 10, failed 2, …` (zeros left out).
pub fn describe_counts(counts: &BTreeMap<RecipientStatus, u64>) -> String {
    let v: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    if v.is_empty() {
        "no recipients".into()
    } else {
        v.join(", ")
    }
}
