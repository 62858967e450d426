//! An in-process fake provider for the engine's tests (and the lead's integration tests): a
//! [`Transport`] with deterministic, seeded faults that records exactly what it "delivered".
//!
//! Fault kinds mirror the mock provider's: refused before processing (`NotProcessed`, e.g. HTTP
//! 500 before), processed but the answer lost (`Unknown`, a delivery happened), lost before
//! processing (`Unknown`, nothing delivered), FailedReceiver per receiver (at random, or always
//! for chosen ids), 429s, a fatal refusal. SendMessage is idempotent by ClientMsgId, like the
//! real API. It also counts the requests that carried each receiver, the largest call, and
//! receivers seen in two calls at once; and it can abort the process when a refused receiver is
//! sent again (crash tests).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{CallOutcome, ErrorClass, OutgoingCall, P2pUser, Transport, TransportError};
use crate::action::Action;

/// Fault probabilities (0..1 each) and switches.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    /// Refused before processing (HTTP 500 before): safe to retry.
    pub not_processed: f64,
    /// Processed, then the answer was lost: an unknown outcome with a delivery.
    pub lost_after: f64,
    /// Lost before processing: an unknown outcome without a delivery.
    pub lost_before: f64,
    /// Each receiver of a batch call refused (FailedReceiver).
    pub failed_receiver: f64,
    /// 429 before processing.
    pub rate_limited: f64,
    /// P2P: the user was not online.
    pub not_online: f64,
    /// Refuse every call from this call number on (0-based count of requests) as fatal/access.
    pub fatal_from_request: Option<u64>,
    /// Refuse every call as NotProcessed (for the breaker).
    pub always_fail: bool,
    /// Receivers refused (FailedReceiver) by every call.
    pub refuse_always: BTreeSet<u64>,
    /// Crash tests: abort this process at the N-th (1-based) request that carries a receiver
    /// this fake refused before: before processing it (nothing delivered), or with
    /// `abort_after_processing` after delivering it (the answer never leaves).
    pub abort_on_resend: Option<u32>,
    pub abort_after_processing: bool,
}

#[derive(Debug, Default)]
struct State {
    rng: Option<StdRng>,
    requests: u64,
    next_message_id: u64,
    delivered: BTreeMap<u64, u32>,
    by_client_msg_id: BTreeMap<String, u64>,
    starts: Vec<(Timestamp, u64)>,
    unknown_calls: Vec<Vec<u64>>,
    carried: BTreeMap<u64, u32>,
    in_flight: BTreeSet<u64>,
    overlaps: Vec<u64>,
    max_call: usize,
    refused: BTreeSet<u64>,
    resends: u32,
}

/// The fake transport. Payload: the content string.
pub struct FakeTransport {
    action: Action,
    faults: Faults,
    record_starts: bool,
    track: bool,
    delivery_log: Option<Mutex<std::fs::File>>,
    state: Mutex<State>,
}

impl FakeTransport {
    pub fn new(action: Action, faults: Faults) -> Self {
        let rng = StdRng::seed_from_u64(faults.seed);
        FakeTransport {
            action,
            faults,
            record_starts: false,
            track: true,
            delivery_log: None,
            state: Mutex::new(State {
                rng: Some(rng),
                next_message_id: 7_000_000_000,
                ..State::default()
            }),
        }
    }

    /// Record the admission time of every request (for window checks).
    pub fn recording_starts(mut self) -> Self {
        self.record_starts = true;
        self
    }

    /// Do not keep per-receiver delivery counts (benchmarks: flat memory).
    pub fn without_tracking(mut self) -> Self {
        self.track = false;
        self
    }

    /// Also append every delivered receiver id, one per line, to `path` (survives a crash of
    /// this process, for crash tests).
    pub fn with_delivery_log(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.delivery_log = Some(Mutex::new(f));
        Ok(self)
    }

    fn log_delivery(&self, id: u64) {
        if let Some(f) = &self.delivery_log {
            use std::io::Write;
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{id}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many times each receiver (batch: user, conversation/P2P: conversation) got a message.
    pub fn delivered(&self) -> BTreeMap<u64, u32> {
        self.lock().delivered.clone()
    }

    /// Requests received.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Receivers of calls whose answer was lost (after or before processing).
    pub fn unknown_calls(&self) -> Vec<Vec<u64>> {
        self.lock().unknown_calls.clone()
    }

    /// (time, units) of every request, units as the provider's limit counts them.
    pub fn starts(&self) -> Vec<(Timestamp, u64)> {
        self.lock().starts.clone()
    }

    /// How many requests carried each receiver (whatever their answer).
    pub fn carried(&self) -> BTreeMap<u64, u32> {
        self.lock().carried.clone()
    }

    /// Receivers that arrived in a request while another request carrying them was in flight.
    pub fn overlaps(&self) -> Vec<u64> {
        self.lock().overlaps.clone()
    }

    /// The most receivers one request carried.
    pub fn max_call(&self) -> usize {
        self.lock().max_call
    }

    /// Receivers this fake refused (FailedReceiver) at least once.
    pub fn refused(&self) -> BTreeSet<u64> {
        self.lock().refused.clone()
    }
}

impl Transport for FakeTransport {
    type Payload = String;

    async fn send(&self, call: &OutgoingCall<String>) -> Result<CallOutcome, TransportError> {
        if self.track {
            {
                let mut st = self.lock();
                st.max_call = st.max_call.max(call.receivers.len());
                for &r in &call.receivers {
                    *st.carried.entry(r).or_default() += 1;
                    if !st.in_flight.insert(r) {
                        st.overlaps.push(r);
                    }
                }
            }
            // Let other calls run while this one is "in flight".
            tokio::task::yield_now().await;
        }
        let res = self.answer(call);
        if self.track {
            let mut st = self.lock();
            for r in &call.receivers {
                st.in_flight.remove(r);
            }
        }
        res
    }
}

impl FakeTransport {
    fn answer(&self, call: &OutgoingCall<String>) -> Result<CallOutcome, TransportError> {
        let mut st = self.lock();
        let mut abort_after = false;
        if let Some(n) = self.faults.abort_on_resend {
            if call.receivers.iter().any(|r| st.refused.contains(r)) {
                st.resends += 1;
                if st.resends == n {
                    if !self.faults.abort_after_processing {
                        crate::errln!("fake provider: aborting before resend {n}");
                        std::process::abort();
                    }
                    abort_after = true;
                }
            }
        }
        let n = st.requests;
        st.requests += 1;
        if self.record_starts {
            let units = self.action.units(call.receivers.len() as u64);
            st.starts.push((call.admitted_at, units));
        }
        let mut rng = st.rng.take().unwrap_or_else(|| StdRng::seed_from_u64(0));
        let f = &self.faults;
        let result = (|| {
            if let Some(k) = f.fatal_from_request {
                if n >= k {
                    let mut e = TransportError::new(
                        ErrorClass::Fatal,
                        "access denied: the access key is not allowed to call this API",
                    )
                    .with_code("AccessDenied");
                    e.access = true;
                    return Err(e);
                }
            }
            if f.always_fail || rng.random_bool(f.not_processed.clamp(0.0, 1.0)) {
                let mut e =
                    TransportError::new(ErrorClass::NotProcessed, "HTTP 500 before processing")
                        .with_code("InternalError");
                e.http_status = Some(500);
                return Err(e);
            }
            if rng.random_bool(f.rate_limited.clamp(0.0, 1.0)) {
                let mut e = TransportError::new(ErrorClass::NotProcessed, "HTTP 429: rate limited")
                    .with_code("RateLimited")
                    .rate_limited();
                e.http_status = Some(429);
                return Err(e);
            }
            if rng.random_bool(f.lost_before.clamp(0.0, 1.0)) {
                st.unknown_calls.push(call.receivers.clone());
                return Err(TransportError::new(
                    ErrorClass::Unknown,
                    "connection lost before an answer",
                )
                .with_code("Timeout"));
            }
            let lost_after = rng.random_bool(f.lost_after.clamp(0.0, 1.0));
            let outcome = match self.action {
                Action::Batch => {
                    let mut message_ids = BTreeMap::new();
                    let mut failed = Vec::new();
                    for &r in &call.receivers {
                        let refuse = rng.random_bool(f.failed_receiver.clamp(0.0, 1.0));
                        if refuse || f.refuse_always.contains(&r) {
                            st.refused.insert(r);
                            failed.push(r);
                        } else {
                            st.next_message_id += 1;
                            message_ids.insert(r, st.next_message_id);
                            if self.track {
                                *st.delivered.entry(r).or_default() += 1;
                            }
                            self.log_delivery(r);
                        }
                    }
                    CallOutcome::Batch {
                        message_ids,
                        failed,
                    }
                }
                Action::Conversation => {
                    let conv = call.receivers.first().copied().unwrap_or(0);
                    let key = call.client_msg_id.clone().unwrap_or_default();
                    let message_id = match st.by_client_msg_id.get(&key) {
                        Some(m) if !key.is_empty() => *m,
                        _ => {
                            st.next_message_id += 1;
                            let m = st.next_message_id;
                            st.by_client_msg_id.insert(key, m);
                            *st.delivered.entry(conv).or_default() += 1;
                            self.log_delivery(conv);
                            m
                        }
                    };
                    CallOutcome::Message { message_id }
                }
                Action::P2p => {
                    let conv = call.receivers.first().copied().unwrap_or(0);
                    let online = !rng.random_bool(f.not_online.clamp(0.0, 1.0));
                    if online {
                        *st.delivered.entry(conv).or_default() += 1;
                        self.log_delivery(conv);
                    }
                    CallOutcome::P2p {
                        results: vec![P2pUser {
                            user_id: conv.saturating_mul(10),
                            code: if online { "SUCCESS" } else { "NOT_ONLINE" }.into(),
                            device_platform: None,
                        }],
                    }
                }
            };
            if lost_after {
                st.unknown_calls.push(call.receivers.clone());
                return Err(
                    TransportError::new(ErrorClass::Unknown, "HTTP 500 after processing")
                        .with_code("InternalError"),
                );
            }
            Ok(outcome)
        })();
        st.rng = Some(rng);
        if abort_after {
            crate::errln!("fake provider: aborting after processing a resend");
            std::process::abort();
        }
        result
    }
}
