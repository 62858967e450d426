//! The mock provider: a local HTTP server that speaks the three IM actions with the provider's
//! envelope, signature checks, validation, limits and idempotency, plus seeded fault injection,
//! a delivery record and counters. Used in-process by tests and `imcast run --mock`, and
//! standalone as `imcast mock-server`.
//!
//! Invariants: it binds what it is given (`start` binds 127.0.0.1 only); signatures are checked
//! with the client's own signer ([`crate::provider::sign`]), and the credential scope must name
//! the configured region and the service `rtc`; request bodies are read by the mock's own
//! [`wire`] module, written from the API pages independently of the client's
//! `provider::types` (which the mock must not use), so a wire mistake of the client cannot pass
//! both sides; replies are built as JSON data, shaped by the configured [`Quirk`]s; the batch
//! limit is an exact rolling window ([`window::Window`]); time comes from the configured
//! [`Clock`]; the record file is written by one task fed through a bounded channel, never on a
//! request path. It must not be pointed at real traffic: it holds delivery state in memory only.

mod record;
mod service;
pub mod window;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::clock::{SharedClock, SystemClock};
use crate::provider::Credentials;

/// Access key id the mock accepts by default.
pub const DEFAULT_ACCESS_KEY: &str = "AKLTmockaccesskey000000";
/// Secret key the mock verifies with by default (a test value, not a secret).
pub const DEFAULT_SECRET_KEY: &str = "mock-secret-key-not-a-secret";
/// How far X-Date may be from the mock's clock.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The region the mock serves by default (PROTOCOL.md).
pub const DEFAULT_REGION: &str = "cn-north-1";
/// The signing service of the IM API (PROTOCOL.md); the credential scope must name it.
pub const SERVICE: &str = "rtc";

/// A way a real (Go) server may write a reply that the seeds allow and the mock's plain replies
/// do not show; each makes the mock write its replies that way, so tests exercise the client's
/// tolerant reply parser end to end. Not offered: message ids as JSON strings, because the seeds
/// type every id in a reply as `Long` (UserMessageId's keys are strings already).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quirk {
    /// Empty lists and maps written as `null` (`"FailedReceiver": null`, `"UserMessageId": null`,
    /// `"P2PResult": null`), as Go's encoding/json writes a nil slice or map.
    NullLists,
    /// Successful replies carry `"Error": {"Code": "", "CodeN": 0, "Message": ""}` in
    /// ResponseMetadata (a Go struct field without `omitempty`).
    EmptyError,
    /// P2P per-user code `Success` (the spelling of the P2P page's response table) instead of
    /// `SUCCESS`.
    SuccessSpelling,
    /// Unknown extra fields in every object of every reply (envelope, ResponseMetadata, Error,
    /// Result, each P2PResult).
    ExtraFields,
}

impl Quirk {
    /// Every quirk (what `all` means).
    pub const ALL: [Quirk; 4] = [
        Quirk::NullLists,
        Quirk::EmptyError,
        Quirk::SuccessSpelling,
        Quirk::ExtraFields,
    ];

    /// The name used by `--quirks`.
    pub fn name(self) -> &'static str {
        match self {
            Quirk::NullLists => "null-lists",
            Quirk::EmptyError => "empty-error",
            Quirk::SuccessSpelling => "success-spelling",
            Quirk::ExtraFields => "extra-fields",
        }
    }
}

impl std::fmt::Display for Quirk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Quirk {
    type Err = String;
    fn from_str(s: &str) -> Result<Quirk, String> {
        Quirk::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| format!("unknown quirk `{s}`; known: all, {}", quirk_names()))
    }
}

fn quirk_names() -> String {
    Quirk::ALL.map(Quirk::name).join(", ")
}

/// Parse a comma-separated quirk list (`--quirks`): names from [`Quirk::name`], or `all`.
/// Blank items are ignored, so `""` is the empty set.
pub fn parse_quirks(list: &str) -> Result<BTreeSet<Quirk>, String> {
    let mut out = BTreeSet::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            out.extend(Quirk::ALL);
        } else {
            out.insert(item.parse::<Quirk>()?);
        }
    }
    Ok(out)
}

/// One field per `imcast mock-server` flag (plus the clock and skew allowance).
#[derive(Clone)]
pub struct MockConfig {
    /// Used by `imcast mock-server`; [`start`] always binds 127.0.0.1:0.
    pub listen: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    /// The region the credential scope must name (the service must be [`SERVICE`]); also the
    /// `Region` of every reply.
    pub region: String,
    /// How replies are shaped (see [`Quirk`]); empty = the plain replies of the seeds' examples.
    pub quirks: BTreeSet<Quirk>,
    /// Accepted AppIds; empty = any.
    pub app_ids: Vec<u64>,
    /// BatchSendMessage messages per rolling `window`.
    pub limit: u64,
    pub window: Duration,
    /// SendMessage requests per rolling second.
    pub send_qps: u64,
    /// P2PSendMessage requests per rolling second.
    pub p2p_qps: u64,
    /// Share of requests answered HTTP 500 before processing.
    pub fail_rate: f64,
    /// Share of requests processed, then answered HTTP 500.
    pub fail_after_rate: f64,
    /// Share of requests processed, then the connection closed with no response.
    pub lost_rate: f64,
    /// Share of requests answered 503 ServiceUnavailableTemp before processing.
    pub unavailable_rate: f64,
    /// Share of batch receivers returned in FailedReceiver.
    pub failed_receiver_rate: f64,
    /// Share of P2P users returned NOT_ONLINE.
    pub offline_rate: f64,
    /// Added latency per request: a random part before the request is stamped, the rest after.
    pub latency: Duration,
    pub seed: u64,
    /// JSONL file of every delivery.
    pub record: Option<PathBuf>,
    /// Allowed distance between X-Date and the mock's clock.
    pub max_skew: Duration,
    pub clock: SharedClock,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: DEFAULT_ACCESS_KEY.to_string(),
            secret_key: DEFAULT_SECRET_KEY.to_string(),
            region: DEFAULT_REGION.to_string(),
            quirks: BTreeSet::new(),
            app_ids: Vec::new(),
            limit: 12_000,
            window: Duration::from_secs(60),
            send_qps: 50,
            p2p_qps: 100,
            fail_rate: 0.0,
            fail_after_rate: 0.0,
            lost_rate: 0.0,
            unavailable_rate: 0.0,
            failed_receiver_rate: 0.0,
            offline_rate: 0.0,
            latency: Duration::ZERO,
            seed: 0,
            record: None,
            max_skew: DEFAULT_MAX_SKEW,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockConfig")
            .field("listen", &self.listen)
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("quirks", &self.quirks)
            .field("app_ids", &self.app_ids)
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("send_qps", &self.send_qps)
            .field("p2p_qps", &self.p2p_qps)
            .field("seed", &self.seed)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Per-action counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionStats {
    /// Requests for this action that passed authentication.
    pub requests: u64,
    /// Requests processed (delivered, possibly partly).
    pub accepted: u64,
    /// Messages counted against the limit (batch: receivers; others: requests).
    pub messages: u64,
    /// Deliveries recorded.
    pub delivered: u64,
    pub rate_limited: u64,
}

/// Counters served at `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Every request to an action endpoint (not `/stats`).
    pub requests: u64,
    /// Messages in processed requests (batch: receivers; others: 1 per request).
    pub messages: u64,
    /// Rejections by error code (including FlowLimitExceeded and injected faults).
    pub rejected: BTreeMap<String, u64>,
    /// Requests answered 429 FlowLimitExceeded.
    pub rate_limited: u64,
    /// Deliveries of a Content a recipient already got (same action, recipient and Content).
    pub duplicates: u64,
    /// Most BatchSendMessage messages seen in any rolling window.
    pub max_in_window: u64,
    /// Deliveries recorded (batch: delivered receivers; SendMessage: messages; P2P: requests).
    pub delivered: u64,
    /// Receivers returned in FailedReceiver.
    pub failed_receivers: u64,
    /// P2P users returned NOT_ONLINE.
    pub offline: u64,
    /// SendMessage repeats answered from the ClientMsgId table (nothing sent).
    pub idempotent_replays: u64,
    /// Injected faults by kind: fail, fail_after, lost, unavailable.
    pub faults: BTreeMap<String, u64>,
    /// Most SendMessage / P2PSendMessage requests seen in any rolling second.
    pub send_max_in_second: u64,
    pub p2p_max_in_second: u64,
    /// Per action (API name).
    pub actions: BTreeMap<String, ActionStats>,
    /// TCP connections accepted (a client that reuses connections keeps this low).
    pub connections: u64,
}

/// A running in-process mock.
pub struct MockHandle {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    state: Arc<service::State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl MockHandle {
    /// `http://127.0.0.1:PORT/`.
    pub fn endpoint(&self) -> url::Url {
        let s = format!("http://{}/", self.addr);
        // A SocketAddr always forms a valid URL authority.
        url::Url::parse(&s).unwrap_or_else(|_| unreachable_url(&s))
    }

    /// Credentials the mock accepts.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(&self.access_key, &self.secret_key, None)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MockStats {
        self.state.stats()
    }

    /// Stop accepting, finish in-flight requests, flush the record file.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "mock provider stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "mock provider task failed"),
            }
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cold]
fn unreachable_url(s: &str) -> url::Url {
    panic!("{s} is not a URL")
}

/// Start a mock on 127.0.0.1 at an ephemeral port.
pub async fn start(cfg: MockConfig) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let access_key = cfg.access_key.clone();
    let secret_key = cfg.secret_key.clone();
    let state = Arc::new(service::State::new(cfg).await?);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service::serve_state(listener, state.clone(), async move {
        let _ = rx.await;
    }));
    tracing::debug!(%addr, "mock provider started");
    Ok(MockHandle {
        addr,
        access_key,
        secret_key,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Serve on a bound listener until `shutdown` completes; then finish in-flight requests and
/// flush the record file.
pub async fn serve(
    l: TcpListener,
    cfg: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(service::State::new(cfg).await?);
    service::serve_state(l, state, shutdown).await
}
