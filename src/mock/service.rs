//! The mock's HTTP service: routing, signature and credential-scope checks, validation (by
//! [`super::wire`]), limits, idempotency, faults, and replies built as JSON data and shaped by the
//! configured quirks.
//!
//! Hand-written on hyper (not axum) because the lost-response fault needs to close a connection
//! without writing any response, which a hyper service does by returning an error.
//! All mutable state sits behind one `std::sync::Mutex` that is never held across an await, so
//! admission into the rolling windows is atomic under concurrent requests. Must not use the
//! client's `provider::types` (requests or replies): the mock is the client's independent check.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::record::{self, Delivery, Recorder};
use super::window::Window;
use super::wire::{self, WireError};
use super::{MockConfig, MockStats, Quirk, SERVICE};
use crate::provider::sign::{self, Received};

const VERSION: &str = "2020-12-01";
/// P2P per-user codes (P2PSendMessage.md, P2PResult table).
const P2P_SUCCESS: &str = "SUCCESS";
/// The spelling of the P2P page's response table example (quirk `success-spelling`).
const P2P_SUCCESS_QUIRK: &str = "Success";
const P2P_NOT_ONLINE: &str = "NOT_ONLINE";
/// First message id handed out: above 2^53, so a float anywhere in a client shows up at once.
const FIRST_MESSAGE_ID: u64 = (1 << 53) + 1;

/// A request that was closed without a response (the lost fault).
#[derive(Debug)]
struct Lost;
impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: response lost")
    }
}
impl std::error::Error for Lost {}

struct Inner {
    rng: rand::rngs::StdRng,
    /// Splits `--latency-ms` around the stamp (its own stream: faults stay as seeded).
    latency_rng: rand::rngs::StdRng,
    stats: MockStats,
    batch: Window,
    send: Window,
    p2p: Window,
    next_message_id: u64,
    next_request_id: u64,
    client_msg_ids: HashMap<(u64, u64, String), u64>,
    /// Deliveries seen, to count duplicates: (recipient, [`delivery_tag`] of action and Content):
    /// 16 bytes an entry; two different (action, Content) pairs to one recipient share a tag with
    /// probability 2^-64. std's SipHash: ~20 ns an insert is nothing beside a request.
    seen: HashSet<(u64, u64)>,
}

/// The first 8 bytes of SHA-256 over the action, a NUL and the Content: the mock's own digest
/// for duplicate counting (one per request, not per recipient).
fn delivery_tag(action: &str, content: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(action.as_bytes());
    h.update([0u8]);
    h.update(content.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&d[..8]);
    u64::from_le_bytes(prefix)
}

pub struct State {
    cfg: MockConfig,
    inner: Mutex<Inner>,
    recorder: Mutex<Option<Recorder>>,
}

/// What a request turns into.
enum Outcome {
    Reply(StatusCode, Vec<u8>),
    Close,
}

struct ApiErr {
    status: StatusCode,
    code: &'static str,
    code_n: Option<i64>,
    message: String,
}

fn api_err(
    status: u16,
    code: &'static str,
    code_n: Option<i64>,
    message: impl Into<String>,
) -> ApiErr {
    ApiErr {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        code_n,
        message: message.into(),
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiErr {
    api_err(400, code, None, message)
}

impl From<WireError> for ApiErr {
    fn from(e: WireError) -> ApiErr {
        invalid(e.code, e.message)
    }
}

/// Unknown fields the `extra-fields` quirk adds to an object of a reply: several JSON types, as a
/// newer server version might add.
fn add_extra_fields(o: &mut Map<String, Value>) {
    o.insert("XMockExtraString".into(), json!("ignore me"));
    o.insert("XMockExtraNumber".into(), json!(1.5));
    o.insert("XMockExtraNull".into(), Value::Null);
    o.insert("XMockExtraList".into(), json!([1, "two", null]));
    o.insert(
        "XMockExtraObject".into(),
        json!({"Nested": {"Deeper": [true]}, "Code": "NOT_A_CODE"}),
    );
}

impl State {
    pub async fn new(cfg: MockConfig) -> std::io::Result<State> {
        let recorder = match &cfg.record {
            Some(p) => Some(Recorder::open(p).await?),
            None => None,
        };
        let inner = Inner {
            rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
            latency_rng: rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x6c61_7465_6e63_7900),
            stats: MockStats::default(),
            batch: Window::new(cfg.limit, cfg.window),
            send: Window::new(cfg.send_qps, Duration::from_secs(1)),
            p2p: Window::new(cfg.p2p_qps, Duration::from_secs(1)),
            next_message_id: FIRST_MESSAGE_ID,
            next_request_id: 1,
            client_msg_ids: HashMap::new(),
            seen: HashSet::default(),
        };
        Ok(State {
            cfg,
            inner: Mutex::new(inner),
            recorder: Mutex::new(recorder),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters to a mock; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> MockStats {
        let g = self.lock();
        let mut s = g.stats.clone();
        s.max_in_window = g.batch.max_seen();
        s.send_max_in_second = g.send.max_seen();
        s.p2p_max_in_second = g.p2p.max_seen();
        s
    }

    fn record_sender(&self) -> Option<mpsc::Sender<Vec<u8>>> {
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|r| r.sender())
    }

    async fn close_record(&self) -> std::io::Result<()> {
        let r = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match r {
            Some(r) => r.close().await,
            None => Ok(()),
        }
    }

    fn quirk(&self, q: Quirk) -> bool {
        self.cfg.quirks.contains(&q)
    }

    /// ResponseMetadata without Error.
    fn envelope_meta(&self, g: &mut Inner, action: &str) -> Map<String, Value> {
        let id = g.next_request_id;
        g.next_request_id += 1;
        let mut m = Map::new();
        m.insert("RequestId".into(), json!(format!("mock{id:016}")));
        m.insert("Action".into(), json!(action));
        m.insert("Version".into(), json!(VERSION));
        m.insert("Service".into(), json!(SERVICE));
        m.insert("Region".into(), json!(self.cfg.region));
        m
    }

    /// The envelope as bytes: `Error` only on failure, `Result` only on success (PROTOCOL.md),
    /// with the `extra-fields` quirk applied to every object but the maps keyed by user id.
    fn envelope(&self, mut meta: Map<String, Value>, result: Option<Value>) -> Vec<u8> {
        let extra = self.quirk(Quirk::ExtraFields);
        if extra {
            if let Some(Value::Object(e)) = meta.get_mut("Error") {
                add_extra_fields(e);
            }
            add_extra_fields(&mut meta);
        }
        let mut env = Map::new();
        env.insert("ResponseMetadata".into(), Value::Object(meta));
        if let Some(mut r) = result {
            if extra {
                if let Value::Object(o) = &mut r {
                    if let Some(Value::Array(items)) = o.get_mut("P2PResult") {
                        for it in items.iter_mut() {
                            if let Value::Object(it) = it {
                                add_extra_fields(it);
                            }
                        }
                    }
                    add_extra_fields(o);
                }
            }
            env.insert("Result".into(), r);
        }
        if extra {
            add_extra_fields(&mut env);
        }
        serde_json::to_vec(&Value::Object(env)).unwrap_or_default()
    }

    fn error_reply(&self, action: &str, e: ApiErr) -> Outcome {
        let mut g = self.lock();
        *g.stats.rejected.entry(e.code.to_string()).or_default() += 1;
        let mut meta = self.envelope_meta(&mut g, action);
        drop(g);
        let mut err = Map::new();
        if let Some(n) = e.code_n {
            err.insert("CodeN".into(), json!(n));
        }
        err.insert("Code".into(), json!(e.code));
        err.insert("Message".into(), json!(e.message));
        meta.insert("Error".into(), Value::Object(err));
        Outcome::Reply(e.status, self.envelope(meta, None))
    }

    fn ok_reply(&self, action: &str, result: Value) -> Outcome {
        let mut meta = {
            let mut g = self.lock();
            self.envelope_meta(&mut g, action)
        };
        if self.quirk(Quirk::EmptyError) {
            meta.insert(
                "Error".into(),
                json!({"Code": "", "CodeN": 0, "Message": ""}),
            );
        }
        Outcome::Reply(StatusCode::OK, self.envelope(meta, Some(result)))
    }

    /// A list or map of a Result: as is, or `null` when empty under the `null-lists` quirk.
    fn list(&self, v: Value) -> Value {
        let empty = match &v {
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if empty && self.quirk(Quirk::NullLists) {
            Value::Null
        } else {
            v
        }
    }

    fn fault(&self, g: &mut Inner, rate: f64, kind: &str) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let hit = g.rng.random::<f64>() < rate;
        if hit {
            *g.stats.faults.entry(kind.to_string()).or_default() += 1;
        }
        hit
    }

    /// Check Authorization, X-Date and the body hash; the error is the provider's.
    fn authenticate(&self, r: &Received<'_>) -> Result<(), ApiErr> {
        let Some(auth_value) = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
        else {
            return Err(api_err(
                401,
                "MissingAuthenticationToken",
                Some(100003),
                "the request has no Authorization header",
            ));
        };
        let Some(auth) = sign::parse_authorization(auth_value) else {
            return Err(api_err(
                400,
                "InvalidAuthorization",
                None,
                "the Authorization header is malformed",
            ));
        };
        if auth.access_key_id != self.cfg.access_key {
            return Err(api_err(
                401,
                "InvalidAccessKey",
                Some(100009),
                "the access key is not valid",
            ));
        }
        // A scope for another region or service: the server derives its signing key from its own
        // region and `rtc`, so such a signature cannot verify there. No dedicated code is
        // documented for this endpoint (PROTOCOL.md's gateway table), so the mock answers what
        // the failed verification yields: 401 SignatureDoesNotMatch (100010), with a message
        // naming both scopes so the mistake is plain.
        if auth.region != self.cfg.region || auth.service != SERVICE {
            return Err(api_err(
                401,
                "SignatureDoesNotMatch",
                Some(100010),
                format!(
                    "the credential scope is signed for region `{}` and service `{}`; this endpoint is region `{}`, service `{SERVICE}`",
                    auth.region, auth.service, self.cfg.region
                ),
            ));
        }
        let x_date = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-date"))
            .and_then(|(_, v)| sign::parse_x_date(v));
        let Some(x_date) = x_date else {
            return Err(api_err(
                400,
                "InvalidTimestamp",
                Some(100006),
                "X-Date is missing or malformed",
            ));
        };
        let now = self.cfg.clock.now();
        let skew = (now.as_nanosecond() - x_date.as_nanosecond()).unsigned_abs();
        if skew > self.cfg.max_skew.as_nanos() {
            return Err(api_err(
                400,
                "InvalidTimestamp",
                Some(100006),
                format!("X-Date {x_date} is too far from the server time {now}"),
            ));
        }
        match sign::verify(r, &auth, &self.cfg.secret_key) {
            Ok(()) => Ok(()),
            Err(sign::VerifyError::BadDate | sign::VerifyError::ScopeDate) => Err(api_err(
                400,
                "InvalidTimestamp",
                Some(100006),
                "X-Date does not match the credential scope",
            )),
            Err(e) => Err(api_err(
                401,
                "SignatureDoesNotMatch",
                Some(100010),
                e.to_string(),
            )),
        }
    }

    fn check_app(&self, app_id: u64) -> Result<(), ApiErr> {
        if !self.cfg.app_ids.is_empty() && !self.cfg.app_ids.contains(&app_id) {
            return Err(invalid(
                "InvalidParameter.NotExistAppId",
                format!("AppId {app_id} does not exist"),
            ));
        }
        Ok(())
    }

    fn rate_limited(&self, g: &mut Inner, action: &str) -> ApiErr {
        g.stats.rate_limited += 1;
        g.stats
            .actions
            .entry(action.to_string())
            .or_default()
            .rate_limited += 1;
        api_err(
            429,
            "FlowLimitExceeded",
            None,
            "the request rate exceeds the limit",
        )
    }

    fn next_id(g: &mut Inner) -> u64 {
        let id = g.next_message_id;
        g.next_message_id += 1;
        id
    }

    fn note_delivery(g: &mut Inner, action: &'static str, recipient: u64, tag: u64) {
        if !g.seen.insert((recipient, tag)) {
            g.stats.duplicates += 1;
        }
        g.stats.delivered += 1;
        g.stats
            .actions
            .entry(action.to_string())
            .or_default()
            .delivered += 1;
    }

    /// Everything after authentication; returns the Result JSON and the deliveries to record.
    fn process(&self, action: &'static str, body: &[u8]) -> Result<(Value, Vec<Delivery>), ApiErr> {
        match action {
            "BatchSendMessage" => {
                let req = wire::batch(body)?;
                self.check_app(req.app_id)?;
                let tag = delivery_tag(action, &req.content);
                let mut g = self.lock();
                let now = self.cfg.clock.now();
                let n = req.receiver.len() as u64;
                if !g.batch.try_admit(now, n) {
                    return Err(self.rate_limited(&mut g, action));
                }
                // UserMessageId: user id as a string key, message id as a Long (the seed).
                let mut ids = Map::new();
                let mut failed = Vec::new();
                let mut ds = Vec::with_capacity(req.receiver.len());
                let time = now.to_string();
                for &u in &req.receiver {
                    if self.fault_free(&mut g, self.cfg.failed_receiver_rate) {
                        let id = Self::next_id(&mut g);
                        ids.insert(u.to_string(), json!(id));
                        Self::note_delivery(&mut g, action, u, tag);
                        ds.push(Delivery {
                            action,
                            recipient: u,
                            content: req.content.clone(),
                            message_id: Some(id),
                            users: None,
                            time: time.clone(),
                        });
                    } else {
                        g.stats.failed_receivers += 1;
                        failed.push(json!(u));
                    }
                }
                self.count_accepted(&mut g, action, n);
                drop(g);
                let mut res = Map::new();
                res.insert("UserMessageId".into(), self.list(Value::Object(ids)));
                res.insert("FailedReceiver".into(), self.list(Value::Array(failed)));
                Ok((Value::Object(res), ds))
            }
            "SendMessage" => {
                let req = wire::send(body)?;
                self.check_app(req.app_id)?;
                let tag = delivery_tag(action, &req.content);
                let mut g = self.lock();
                let now = self.cfg.clock.now();
                if !g.send.try_admit(now, 1) {
                    return Err(self.rate_limited(&mut g, action));
                }
                let key = req
                    .client_msg_id
                    .as_ref()
                    .filter(|s| !s.is_empty())
                    .map(|c| (req.app_id, req.conversation_short_id, c.clone()));
                if let Some(id) = key.as_ref().and_then(|k| g.client_msg_ids.get(k)).copied() {
                    g.stats.idempotent_replays += 1;
                    return Ok((json!({"MessageId": id}), Vec::new()));
                }
                let id = Self::next_id(&mut g);
                if let Some(k) = key {
                    g.client_msg_ids.insert(k, id);
                }
                Self::note_delivery(&mut g, action, req.conversation_short_id, tag);
                self.count_accepted(&mut g, action, 1);
                let d = Delivery {
                    action,
                    recipient: req.conversation_short_id,
                    content: req.content,
                    message_id: Some(id),
                    users: None,
                    time: now.to_string(),
                };
                Ok((json!({"MessageId": id}), vec![d]))
            }
            "P2PSendMessage" => {
                let req = wire::p2p(body)?;
                self.check_app(req.app_id)?;
                let tag = delivery_tag(action, &req.content);
                let mut g = self.lock();
                let now = self.cfg.clock.now();
                if !g.p2p.try_admit(now, 1) {
                    return Err(self.rate_limited(&mut g, action));
                }
                let success = if self.quirk(Quirk::SuccessSpelling) {
                    P2P_SUCCESS_QUIRK
                } else {
                    P2P_SUCCESS
                };
                // The mock knows no conversation members: ReceiverUserId are the members reached.
                let users: Vec<u64> = req.receiver_user_id.clone().unwrap_or_default();
                let mut results = Vec::with_capacity(users.len());
                let mut got = Vec::new();
                for u in users {
                    if self.fault_free(&mut g, self.cfg.offline_rate) {
                        let platform = ["Android", "Web", "IOS"][(u % 3) as usize];
                        results.push(
                            json!({"UserId": u, "Code": success, "DevicePlatform": platform}),
                        );
                        got.push(u);
                    } else {
                        g.stats.offline += 1;
                        results.push(json!({"UserId": u, "Code": P2P_NOT_ONLINE, "DevicePlatform": "Default"}));
                    }
                }
                Self::note_delivery(&mut g, action, req.conversation_short_id, tag);
                self.count_accepted(&mut g, action, 1);
                drop(g);
                let d = Delivery {
                    action,
                    recipient: req.conversation_short_id,
                    content: req.content,
                    message_id: None,
                    users: Some(got),
                    time: now.to_string(),
                };
                let mut res = Map::new();
                res.insert("P2PResult".into(), self.list(Value::Array(results)));
                Ok((Value::Object(res), vec![d]))
            }
            _ => Err(api_err(
                404,
                "InvalidActionOrVersion",
                Some(100008),
                "unknown action",
            )),
        }
    }

    /// True when a per-item fault at `rate` does NOT hit.
    fn fault_free(&self, g: &mut Inner, rate: f64) -> bool {
        rate <= 0.0 || g.rng.random::<f64>() >= rate
    }

    fn count_accepted(&self, g: &mut Inner, action: &str, n: u64) {
        g.stats.messages += n;
        let a = g.stats.actions.entry(action.to_string()).or_default();
        a.accepted += 1;
        a.messages += n;
    }

    /// `--latency-ms`: a uniformly random part of it before the request is read, checked and
    /// stamped (counted in its window), the rest before the answer leaves, so the stamp falls
    /// anywhere between the client's send and its answer, as a real provider's does.
    async fn handle(
        &self,
        method: Method,
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Outcome {
        let latency = self.cfg.latency;
        if latency.is_zero() || (method == Method::GET && path == "/stats") {
            return self.handle_now(method, path, query, headers, body).await;
        }
        let before = {
            let mut g = self.lock();
            latency.mul_f64(g.latency_rng.random::<f64>())
        };
        tokio::time::sleep(before).await;
        let out = self.handle_now(method, path, query, headers, body).await;
        tokio::time::sleep(latency.saturating_sub(before)).await;
        out
    }

    async fn handle_now(
        &self,
        method: Method,
        path: String,
        query: Option<String>,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Outcome {
        if method == Method::GET && path == "/stats" {
            let s = self.stats();
            return Outcome::Reply(
                StatusCode::OK,
                serde_json::to_vec_pretty(&s).unwrap_or_default(),
            );
        }
        let query_pairs = parse_query(query.as_deref().unwrap_or(""));
        let q = |name: &str| {
            query_pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let action_name = q("Action").unwrap_or("").to_string();
        {
            let mut g = self.lock();
            g.stats.requests += 1;
        }
        let action: &'static str = match action_name.as_str() {
            "BatchSendMessage" => "BatchSendMessage",
            "SendMessage" => "SendMessage",
            "P2PSendMessage" => "P2PSendMessage",
            _ => "",
        };
        let received = Received {
            method: method.as_str(),
            path: &path,
            query: &query_pairs,
            headers: &headers,
            body: &body,
        };
        if let Err(e) = self.authenticate(&received) {
            return self.error_reply(&action_name, e);
        }
        if method != Method::POST
            || path != "/"
            || action.is_empty()
            || q("Version") != Some(VERSION)
        {
            return self.error_reply(
                &action_name,
                api_err(
                    404,
                    "InvalidActionOrVersion",
                    Some(100008),
                    format!("unknown action {action_name:?} or version"),
                ),
            );
        }
        {
            let mut g = self.lock();
            g.stats
                .actions
                .entry(action.to_string())
                .or_default()
                .requests += 1;
            if self.fault(&mut g, self.cfg.unavailable_rate, "unavailable") {
                drop(g);
                return self.error_reply(
                    action,
                    api_err(
                        503,
                        "ServiceUnavailableTemp",
                        None,
                        "the service is temporarily unavailable (injected)",
                    ),
                );
            }
            if self.fault(&mut g, self.cfg.fail_rate, "fail") {
                drop(g);
                return self.error_reply(
                    action,
                    api_err(
                        500,
                        "InternalError",
                        Some(100014),
                        "internal error before processing (injected)",
                    ),
                );
            }
        }
        let (result, deliveries) = match self.process(action, &body) {
            Ok(x) => x,
            Err(e) => return self.error_reply(action, e),
        };
        if !deliveries.is_empty() {
            if let Some(tx) = self.record_sender() {
                // Bounded: under sustained overload this waits for the writer, never the disk.
                let _ = tx.send(record::lines(&deliveries)).await;
            }
        }
        let (lost, fail_after) = {
            let mut g = self.lock();
            let lost = self.fault(&mut g, self.cfg.lost_rate, "lost");
            let fail_after = !lost && self.fault(&mut g, self.cfg.fail_after_rate, "fail_after");
            (lost, fail_after)
        };
        if lost {
            return Outcome::Close;
        }
        if fail_after {
            return self.error_reply(
                action,
                api_err(
                    500,
                    "InternalError",
                    Some(100014),
                    "internal error after processing (injected)",
                ),
            );
        }
        self.ok_reply(action, result)
    }
}

/// Split a raw query into decoded pairs (`+` is kept: the signer encodes it as `%2B`).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Lost> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        // The client went away mid-body: nothing to answer.
        Err(_) => return Err(Lost),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let out = state
        .handle(
            parts.method,
            parts.uri.path().to_string(),
            parts.uri.query().map(str::to_string),
            headers,
            body,
        )
        .await;
    match out {
        Outcome::Close => Err(Lost),
        Outcome::Reply(status, bytes) => {
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            Ok(resp)
        }
    }
}

/// Accept connections until `shutdown`, then let in-flight requests finish (up to 10 s) and
/// flush the record.
pub async fn serve_state(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "mock provider: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                state.lock().stats.connections += 1;
                let state = state.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| respond(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = &mut conn => {}
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    state.close_record().await
}
