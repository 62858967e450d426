//! A run in stages (see `crate::stages`): the engine sends one stage's calls at a time, in
//! order; before a stage its not-before time is waited for, after a gated stage (the canary) its
//! gate: wait, then continue only if the stage's failure ratio is within the bound, else the run
//! stops `paused` with the reason (exit 4) until a person resumes it (`imcast run`, or
//! `imcast resume NAME` under the daemon), which records the gate `overridden`.
//!
//! Invariants: every time waited for is in the journal (`journal::stages`: the stage's
//! `not_before`, the gate's `gate_at`) before the wait starts, so a restart waits only what is
//! left and resumes at the stage it stopped in; a stage's calls are a contiguous range of the
//! plan's call numbers and the engine skips recipients already settled, so a stage run again
//! after a crash sends nobody twice. The gate is decided on the run's counts: the canary is the
//! first stage, so everything attempted when it ends is the canary.
//! Must not: sleep on anything but the injected clock; decide what a stage holds (the plan did).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::clock::SharedClock;
use crate::journal::{
    ControlRequest, JournalError, NewStage, RecipientStatus, RunInfo, RunStatus, SharedJournal,
};
use crate::send::{
    CallSource, Calls, Engine, EngineError, RunEnd, StopReason, StopToken, Transport,
};
use crate::stages::{gate, GateCounts, RunStage};

/// The calls of one stage: the plan's calls numbered in `range`.
struct StageSource<S> {
    inner: Arc<S>,
    range: Range<u64>,
}

impl<S: CallSource> CallSource for StageSource<S> {
    type Payload = S::Payload;
    type Error = S::Error;

    fn calls(&self) -> Calls<'_, S::Payload, S::Error> {
        let r = self.range.clone();
        let (from, to) = (r.start, r.end);
        Box::new(
            self.inner
                .calls()
                .skip_while(move |c| c.as_ref().is_ok_and(|c| c.seq < from))
                .take_while(move |c| c.as_ref().map_or(true, |c| c.seq < to)),
        )
    }
}

/// What a staged run needs besides the engine.
pub(super) struct StagedRun {
    pub journal: SharedJournal,
    pub run: RunInfo,
    pub campaign: String,
    pub stages: Vec<RunStage>,
    pub skip_canary: bool,
    pub clock: SharedClock,
    pub stop: StopToken,
    /// How often a wait looks at the control table and the stop file.
    pub control_every: Duration,
}

/// How a wait ended.
enum Waited {
    Due,
    Stopped,
    /// A pause or cancel request (or the stop file) arrived: the engine takes it.
    Control,
}

impl StagedRun {
    /// Wait on the clock until `at`; a stop signal or a control request ends the wait early.
    async fn wait_until(&self, at: Timestamp) -> Result<Waited, JournalError> {
        loop {
            if self.stop.is_stopped() {
                return Ok(Waited::Stopped);
            }
            let campaign = self.campaign.clone();
            let state_dir = self
                .journal
                .path()
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .to_path_buf();
            let control = self
                .journal
                .with(move |j| {
                    if crate::send::stop::stop_file(&state_dir).exists() {
                        return Ok(Some(ControlRequest::Pause));
                    }
                    j.control(&campaign)
                })
                .await?;
            if matches!(
                control,
                Some(ControlRequest::Pause) | Some(ControlRequest::Cancel)
            ) {
                return Ok(Waited::Control);
            }
            let now = self.clock.now();
            if now >= at {
                return Ok(Waited::Due);
            }
            let left = Duration::from_nanos(
                (at.as_nanosecond() - now.as_nanosecond()).clamp(1, i128::from(u64::MAX)) as u64,
            );
            tokio::select! {
                biased;
                _ = self.stop.stopped() => return Ok(Waited::Stopped),
                _ = self.clock.sleep(left.min(self.control_every)) => {}
            }
        }
    }

    /// Say in the run's status line what it waits for (`imcast status` shows it).
    async fn note_wait(&self, why: String) -> Result<(), JournalError> {
        let (run, now) = (self.run.id.clone(), self.clock.now());
        self.journal
            .with(move |j| j.set_status(&run, RunStatus::Running, Some(&why), now))
            .await
    }

    /// Record the run stopped for `reason` with `status` and give the engine's kind of end.
    async fn end(
        &self,
        reason: StopReason,
        status: RunStatus,
        why: String,
        calls_done: u64,
        started: Timestamp,
    ) -> Result<RunEnd, EngineError> {
        let run = self.run.id.clone();
        let now = self.clock.now();
        let counts = self
            .journal
            .with(move |j| {
                j.set_status(&run, status, Some(&why), now)?;
                j.counts(&run)
            })
            .await?;
        Ok(RunEnd {
            reason,
            status,
            counts,
            calls_done,
            started,
            ended: now,
        })
    }

    /// Send the stages in order with engines from `engine` (one per stage); see the module doc.
    pub async fn run<S, T>(
        self,
        source: Arc<S>,
        engine: impl Fn(Option<&RunStage>) -> Engine<T>,
    ) -> Result<RunEnd, EngineError>
    where
        S: CallSource,
        T: Transport<Payload = S::Payload>,
    {
        let started = self.clock.now();
        let new: Vec<NewStage> = self
            .stages
            .iter()
            .map(|s| NewStage {
                name: s.stage.name.clone(),
                first_call: s.stage.first_call,
                calls: s.stage.calls,
                recipients: s.stage.recipients,
                not_before: s.not_before,
                gated: s.gate.is_some(),
            })
            .collect();
        let run_id = self.run.id.clone();
        let rows = self
            .journal
            .with(move |j| {
                j.record_stages(&run_id, &new)?;
                j.stages(&run_id)
            })
            .await?;
        let mut calls_done = 0u64;
        let mut last: Option<RunEnd> = None;
        let n = rows.len();
        for (i, row) in rows.into_iter().enumerate() {
            let spec = self.stages.get(i);
            let gate_spec = spec.and_then(|s| s.gate);
            if row.state != "sent" && row.state != "expired" {
                // A wave never started and missed by more than its lateness: its recipients
                // are `expired` (the next waves still go at their own times).
                let late = match (row.not_before, spec.and_then(|s| s.expire_after)) {
                    (Some(nb), Some(after)) if row.state == "waiting" => {
                        let cutoff = nb + jiff::SignedDuration::try_from(after).unwrap_or_default();
                        (self.clock.now() > cutoff).then_some(cutoff)
                    }
                    _ => None,
                };
                if let Some(cutoff) = late {
                    let (run_id, now, idx) = (self.run.id.clone(), self.clock.now(), row.idx);
                    let why = format!(
                        "{} was due at {} and had not started by {cutoff} (schedule.not_after)",
                        row.name,
                        row.not_before.map(|t| t.to_string()).unwrap_or_default()
                    );
                    let calls = row.first_call..row.first_call + row.calls;
                    let n = self
                        .journal
                        .with(move |j| j.expire_stage(&run_id, idx, calls, &why, now))
                        .await?;
                    tracing::warn!(run = %self.run.id, stage = %row.name, expired = n, "stage missed: its recipients are expired");
                    continue;
                }
                if let Some(nb) = row.not_before {
                    if self.clock.now() < nb {
                        let zones = spec.map(|s| s.stage.zones.join(", ")).unwrap_or_default();
                        self.note_wait(format!("waiting: {} ({zones}) starts at {nb}", row.name))
                            .await?;
                    }
                    match self.wait_until(nb).await? {
                        Waited::Due => {}
                        Waited::Stopped => {
                            return self
                                .end(
                                    StopReason::Interrupted,
                                    RunStatus::Interrupted,
                                    "interrupted by a signal".into(),
                                    calls_done,
                                    started,
                                )
                                .await
                        }
                        // The engine takes the request on its first look and stops.
                        Waited::Control => {
                            return engine(None).run(Arc::new(Empty::<S>::new())).await
                        }
                    }
                }
                let (run_id, now, idx) = (self.run.id.clone(), self.clock.now(), row.idx);
                self.journal
                    .with(move |j| j.set_stage_state(&run_id, idx, "sending", now))
                    .await?;
                tracing::info!(run = %self.run.id, stage = %row.name, "sending stage {} of {n}", i + 1);
                let end = engine(spec)
                    .run(Arc::new(StageSource {
                        inner: source.clone(),
                        range: row.first_call..row.first_call + row.calls,
                    }))
                    .await?;
                calls_done += end.calls_done;
                if end.reason != StopReason::Completed {
                    return Ok(RunEnd { calls_done, ..end });
                }
                let (run_id, now) = (self.run.id.clone(), self.clock.now());
                let more = i + 1 < n;
                let run = self.run.clone();
                self.journal
                    .with(move |j| {
                        j.set_stage_state(&run_id, idx, "sent", now)?;
                        if more {
                            // Between stages the run is still running (the engine's end of a
                            // stage with recipients left marks it paused) and stays ours.
                            j.set_status(&run_id, RunStatus::Running, Some("between stages"), now)?;
                            j.claim(&run, now)?;
                        }
                        Ok(())
                    })
                    .await?;
                last = Some(RunEnd { calls_done, ..end });
            }
            let Some(g) = gate_spec else { continue };
            let (run_id, idx) = (self.run.id.clone(), row.idx);
            match row.gate.as_deref() {
                Some("passed") | Some("overridden") | Some("skipped") | None => continue,
                Some("failed") => {
                    // The run stopped at this gate and a person resumed it.
                    let why = format!(
                        "resumed by a person after the gate failed: {}",
                        row.detail.as_deref().unwrap_or("")
                    );
                    self.journal
                        .with(move |j| {
                            j.set_stage_gate(&run_id, idx, "overridden", None, Some(&why))
                        })
                        .await?;
                    continue;
                }
                _ => {}
            }
            if self.skip_canary {
                self.journal
                    .with(move |j| {
                        j.set_stage_gate(
                            &run_id,
                            idx,
                            "skipped",
                            None,
                            Some("not waited for: --skip-canary"),
                        )
                    })
                    .await?;
                continue;
            }
            // The decision time goes into the journal before the wait: a restart waits only
            // what is left.
            let at = match row.gate_at {
                Some(t) => t,
                None => {
                    let at = self.clock.now()
                        + jiff::SignedDuration::try_from(g.wait).unwrap_or_default();
                    let r = run_id.clone();
                    self.journal
                        .with(move |j| j.set_stage_gate(&r, idx, "waiting", Some(at), None))
                        .await?;
                    at
                }
            };
            tracing::info!(run = %self.run.id, stage = %row.name, until = %at, "waiting for the gate");
            self.note_wait(format!("waiting: the {} gate decides at {at}", row.name))
                .await?;
            match self.wait_until(at).await? {
                Waited::Due => {}
                Waited::Stopped => {
                    return self
                        .end(
                            StopReason::Interrupted,
                            RunStatus::Interrupted,
                            "interrupted by a signal".into(),
                            calls_done,
                            started,
                        )
                        .await
                }
                Waited::Control => return engine(None).run(Arc::new(Empty::<S>::new())).await,
            }
            let r = run_id.clone();
            let counts = self.journal.with(move |j| j.counts(&r)).await?;
            let get = |s: RecipientStatus| counts.get(&s).copied().unwrap_or(0);
            let c = GateCounts {
                sent: get(RecipientStatus::Sent)
                    + get(RecipientStatus::Failed)
                    + get(RecipientStatus::Unknown)
                    + get(RecipientStatus::NotOnline),
                failed: get(RecipientStatus::Failed),
                unknown: get(RecipientStatus::Unknown),
            };
            let (ratio, ok) = gate(c, g.max_failure_ratio);
            let detail = format!(
                "{} of {} failed or unknown ({:.2}%; bound {:.2}%)",
                c.failed + c.unknown,
                c.sent,
                ratio * 100.0,
                g.max_failure_ratio * 100.0
            );
            let verdict = if ok { "passed" } else { "failed" };
            let d = detail.clone();
            self.journal
                .with(move |j| j.set_stage_gate(&run_id, idx, verdict, None, Some(&d)))
                .await?;
            if !ok {
                let message = format!(
                    "the {} stage failed its gate: {detail}; the run is paused",
                    row.name
                );
                return self
                    .end(
                        StopReason::Canary {
                            message: message.clone(),
                        },
                        RunStatus::Paused,
                        message,
                        calls_done,
                        started,
                    )
                    .await;
            }
            tracing::info!(run = %self.run.id, stage = %row.name, "gate passed: {detail}");
        }
        match last {
            Some(end) => Ok(end),
            // Every stage was sent in an earlier session: settle the run's status.
            None => engine(None).run(Arc::new(Empty::<S>::new())).await,
        }
    }
}

/// No calls: an engine run over it only settles the run (or takes a control request).
struct Empty<S>(std::marker::PhantomData<fn() -> S>);

impl<S> Empty<S> {
    fn new() -> Self {
        Empty(std::marker::PhantomData)
    }
}

impl<S: CallSource> CallSource for Empty<S> {
    type Payload = S::Payload;
    type Error = S::Error;

    fn calls(&self) -> Calls<'_, S::Payload, S::Error> {
        Box::new(std::iter::empty())
    }
}
