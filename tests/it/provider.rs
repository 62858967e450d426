//! Provider client: the official signing vectors, signing properties, and the client against the
//! in-process mock for each action and each error class.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::{Clock, SleepFuture, SystemClock};
use imcast::mock::{self, MockConfig};
use imcast::provider::sign::{self, Received, SignInput};
use imcast::provider::*;
use proptest::prelude::*;
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let path = crate::common::root().join("tests/data/sign_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the official signing vectors are missing at {}: {e}. Copy them from ../shared/volcengine/sign_vectors.json",
            path.display()
        )
    });
    let v: Value = serde_json::from_str(&text).expect("sign_vectors.json is JSON");
    v["vectors"].as_array().expect("a vectors array").clone()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|p| {
                (
                    p[0].as_str().expect("name").to_string(),
                    p[1].as_str().expect("value").to_string(),
                )
            })
            .collect(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("value").to_string()))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn all_nine_official_vectors_reproduce_byte_for_byte() {
    let vs = vectors();
    assert_eq!(vs.len(), 9, "expected the 9 official vectors");
    for v in &vs {
        let name = v["name"].as_str().expect("name");
        let i = &v["inputs"];
        let o = &v["outputs"];
        let body = hex::decode(i["body_utf8_hex"].as_str().expect("hex")).expect("hex body");
        assert_eq!(body, i["body"].as_str().expect("body").as_bytes(), "{name}");
        let query = pairs(&i["query"]);
        let headers = pairs(&i["headers"]);
        let token = i["session_token"].as_str().expect("token");
        let s = sign::sign(&SignInput {
            access_key_id: i["access_key_id"].as_str().expect("ak"),
            secret_key: i["secret_access_key"].as_str().expect("sk"),
            session_token: Some(token).filter(|t| !t.is_empty()),
            method: i["method"].as_str().expect("method"),
            host: i["host"].as_str().expect("host"),
            path: i["path"].as_str().expect("path"),
            query: &query,
            headers: &headers,
            body: &body,
            x_date: i["x_date"].as_str().expect("x_date"),
            region: i["region"].as_str().expect("region"),
            service: i["service"].as_str().expect("service"),
        });
        let out = |k: &str| o[k].as_str().expect(k).to_string();
        assert_eq!(s.x_date, out("x_date"), "{name} x_date");
        assert_eq!(
            s.x_content_sha256,
            out("x_content_sha256"),
            "{name} body hash"
        );
        assert_eq!(s.canonical_uri, out("canonical_uri"), "{name} uri");
        assert_eq!(s.canonical_query, out("canonical_query"), "{name} query");
        assert_eq!(
            s.canonical_request,
            out("canonical_request"),
            "{name} canonical request"
        );
        assert_eq!(
            s.canonical_request_sha256,
            out("canonical_request_sha256"),
            "{name}"
        );
        assert_eq!(s.credential_scope, out("credential_scope"), "{name} scope");
        assert_eq!(
            s.string_to_sign,
            out("string_to_sign"),
            "{name} string to sign"
        );
        assert_eq!(
            s.signed_headers,
            out("signed_headers"),
            "{name} signed headers"
        );
        assert_eq!(s.signature, out("signature"), "{name} signature");
        assert_eq!(
            s.authorization,
            out("authorization"),
            "{name} authorization"
        );
        let mut got: Vec<(String, String)> = s.headers_out.clone();
        let mut want = pairs(&o["headers_out"]);
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name} headers out");

        // The verifier accepts what the SDK signed.
        let auth = sign::parse_authorization(&s.authorization).expect("parses");
        let r = Received {
            method: i["method"].as_str().expect("method"),
            path: i["path"].as_str().expect("path"),
            query: &query,
            headers: &s.headers_out,
            body: &body,
        };
        sign::verify(&r, &auth, i["secret_access_key"].as_str().expect("sk"))
            .unwrap_or_else(|e| panic!("{name}: verifier rejects an SDK signature: {e}"));
    }
}

fn arb_query() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z0-9 _~+=&/中-]{1,8}", "[ -~中😀]{0,10}"), 0..5)
}

fn sign_req(body: &[u8], query: &[(String, String)], extra: &[(String, String)]) -> sign::Signed {
    sign::sign(&SignInput {
        access_key_id: "AK",
        secret_key: "SK",
        session_token: None,
        method: "POST",
        host: "127.0.0.1:9000",
        path: "/",
        query,
        headers: extra,
        body,
        x_date: "20260101T000000Z",
        region: "cn-north-1",
        service: "rtc",
    })
}

fn verify_with(
    signed: &sign::Signed,
    body: &[u8],
    query: &[(String, String)],
    headers: &[(String, String)],
) -> Result<(), sign::VerifyError> {
    let auth = sign::parse_authorization(&signed.authorization).expect("parses");
    sign::verify(
        &Received {
            method: "POST",
            path: "/",
            query,
            headers,
            body,
        },
        &auth,
        "SK",
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn signing_is_deterministic(body in prop::collection::vec(any::<u8>(), 0..64), query in arb_query()) {
        let a = sign_req(&body, &query, &[]);
        let b = sign_req(&body, &query, &[]);
        prop_assert_eq!(&a, &b);
        prop_assert!(verify_with(&a, &body, &query, &a.headers_out).is_ok());
    }

    #[test]
    fn any_change_breaks_verification(
        body in prop::collection::vec(any::<u8>(), 1..64),
        query in arb_query(),
        flip in any::<prop::sample::Index>(),
        which in 0u8..4,
    ) {
        let extra = vec![("X-Campaign-Id".to_string(), "c1".to_string())];
        let s = sign_req(&body, &query, &extra);
        prop_assert!(verify_with(&s, &body, &query, &s.headers_out).is_ok());
        match which {
            0 => {
                // Body changed (the client's claimed hash kept): body hash mismatch.
                let mut b2 = body.clone();
                let i = flip.index(b2.len());
                b2[i] ^= 1;
                prop_assert!(verify_with(&s, &b2, &query, &s.headers_out).is_err());
            }
            1 => {
                // Body and claimed hash both changed consistently: signature mismatch.
                let mut b2 = body.clone();
                let i = flip.index(b2.len());
                b2[i] ^= 0x80;
                let mut h = s.headers_out.clone();
                for (k, v) in h.iter_mut() {
                    if k == "X-Content-Sha256" { *v = sign::sha256_hex(&b2); }
                }
                prop_assert_eq!(verify_with(&s, &b2, &query, &h), Err(sign::VerifyError::Signature));
            }
            2 => {
                let mut q2 = query.clone();
                q2.push(("Extra".to_string(), "1".to_string()));
                prop_assert_eq!(verify_with(&s, &body, &q2, &s.headers_out), Err(sign::VerifyError::Signature));
            }
            _ => {
                let mut h = s.headers_out.clone();
                for (k, v) in h.iter_mut() {
                    if k == "X-Campaign-Id" { v.push('x'); }
                }
                prop_assert_eq!(verify_with(&s, &body, &query, &h), Err(sign::VerifyError::Signature));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client against the in-process mock.

fn client_for(m: &mock::MockHandle) -> Client {
    Client::new(ClientConfig::new(
        m.endpoint(),
        "cn-north-1",
        m.credentials(),
    ))
    .expect("client")
}

fn batch(receivers: Vec<u64>, content: &str) -> BatchSendMessageRequest {
    BatchSendMessageRequest {
        app_id: 666675,
        sender: 10001,
        receiver: receivers,
        inbox_type: Some(0),
        msg_type: 10001,
        content: content.to_string(),
        is_normal_user: None,
        ext: Some(BTreeMap::from([("campaign".to_string(), "c1".to_string())])),
    }
}

fn send(conv: u64, client_msg_id: Option<&str>) -> SendMessageRequest {
    SendMessageRequest {
        app_id: 666675,
        sender: 10001,
        conversation_short_id: conv,
        msg_type: 10001,
        content: r#"{"text":"hello"}"#.to_string(),
        mentioned_users: None,
        ref_msg_info: None,
        visible_users: None,
        invisible_users: None,
        ext: None,
        client_msg_id: client_msg_id.map(str::to_string),
        create_time: None,
        priority: None,
    }
}

fn p2p(conv: u64, users: Vec<u64>) -> P2pSendMessageRequest {
    P2pSendMessageRequest {
        app_id: 666675,
        sender: 10001,
        conversation_short_id: conv,
        msg_type: 10013,
        content: r#"{"type":1000}"#.to_string(),
        receiver_user_id: Some(users),
        ignore_user_ids: None,
    }
}

#[tokio::test]
async fn batch_send_delivers_and_keeps_big_ids_exact() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    let big = (1u64 << 53) + 1;
    // The largest id the wire allows: user ids are Long (signed 64-bit).
    let max = i64::MAX as u64;
    let r = c
        .batch_send(&batch(vec![1, 2, big, max], r#"{"text":"你好"}"#))
        .await
        .expect("delivered");
    assert_eq!(r.user_message_id.len(), 4);
    assert!(r.user_message_id.contains_key(&max));
    assert!(r.user_message_id.contains_key(&big));
    assert!(r.failed_receiver.is_empty());
    assert!(r.user_message_id.values().all(|&id| id > 1 << 53));
    let s = m.stats();
    assert_eq!((s.requests, s.messages, s.delivered), (1, 4, 4));
    m.shutdown().await;
}

#[tokio::test]
async fn send_message_is_idempotent_on_client_msg_id() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    let a = c.send_message(&send(42, Some("k-1"))).await.expect("sent");
    let b = c
        .send_message(&send(42, Some("k-1")))
        .await
        .expect("replayed");
    let other = c.send_message(&send(42, Some("k-2"))).await.expect("sent");
    assert_eq!(a.message_id, b.message_id);
    assert_ne!(a.message_id, other.message_id);
    let s = m.stats();
    assert_eq!(s.connections, 1, "the client reuses its connection");
    assert_eq!(s.idempotent_replays, 1);
    assert_eq!(s.delivered, 2);
    assert_eq!(
        s.duplicates, 1,
        "k-2 repeats the same Content to the same conversation"
    );
    m.shutdown().await;
}

#[tokio::test]
async fn p2p_reports_success_and_not_online() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    let r = c.p2p_send(&p2p(7, vec![10, 11])).await.expect("sent");
    assert_eq!(r.p2p_result.len(), 2);
    assert!(r.p2p_result.iter().all(|u| u.code == P2P_SUCCESS));
    m.shutdown().await;

    let m = mock::start(MockConfig {
        offline_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    let r = c.p2p_send(&p2p(7, vec![10, 11])).await.expect("sent");
    assert!(r.p2p_result.iter().all(|u| u.code == P2P_NOT_ONLINE));
    assert_eq!(m.stats().offline, 2);
    m.shutdown().await;
}

#[tokio::test]
async fn over_the_window_is_429_not_processed() {
    let m = mock::start(MockConfig {
        limit: 5,
        window: Duration::from_secs(600),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    c.batch_send(&batch(vec![1, 2, 3, 4, 5], "x"))
        .await
        .expect("fits");
    let e = c
        .batch_send(&batch(vec![6], "x"))
        .await
        .expect_err("over the limit");
    assert!(e.is_rate_limited(), "{e}");
    assert_eq!(e.class(), ErrorClass::NotProcessed);
    assert_eq!(e.http_status(), Some(429));
    assert_eq!(e.code(), Some("FlowLimitExceeded"));
    let s = m.stats();
    assert_eq!((s.rate_limited, s.messages, s.max_in_window), (1, 5, 5));
    m.shutdown().await;
}

/// Requests keep coming for three simulated seconds (one every 70 ms, so no two arrive exactly a
/// second apart), refused ones included; the mock's record shows what it delivered in any
/// rolling second. Its own counters are what refuse, so only the record can show an overshoot.
#[tokio::test]
async fn send_and_p2p_qps_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("record.jsonl");
    let clock = imcast::clock::SimClock::new("2026-03-01T08:00:00Z".parse().expect("valid"));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let m = mock::start(MockConfig {
        send_qps: 2,
        p2p_qps: 1,
        record: Some(record.clone()),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = Client::with_clock(
        ClientConfig::new(m.endpoint(), "cn-north-1", m.credentials()),
        shared,
    )
    .expect("client");
    let step = Duration::from_millis(70);
    let mut limited = (0, 0);
    for i in 0..43 {
        if let Err(e) = c.send_message(&send(i, None)).await {
            assert!(
                e.is_rate_limited() && e.class() == ErrorClass::NotProcessed,
                "{e}"
            );
            limited.0 += 1;
        }
        clock.advance(step);
    }
    for i in 0..43 {
        if let Err(e) = c.p2p_send(&p2p(i, vec![1])).await {
            assert!(e.is_rate_limited(), "{e}");
            limited.1 += 1;
        }
        clock.advance(step);
    }
    let s = m.stats();
    m.shutdown().await;
    assert!(
        limited.0 > 20 && limited.1 > 30,
        "the limits bite: {limited:?}"
    );
    let lines = crate::common::record_lines(&record, s.delivered);
    let second = Duration::from_secs(1);
    let send = crate::common::stamps(&lines, Some("SendMessage"));
    let p2p = crate::common::stamps(&lines, Some("P2PSendMessage"));
    assert_eq!(
        send.len() as u64 + limited.0,
        43,
        "every SendMessage delivered or refused"
    );
    assert_eq!(
        (
            crate::common::max_in_window(&send, second),
            crate::common::max_in_window(&p2p, second)
        ),
        (2, 1),
        "{s:?}"
    );
    assert_eq!((s.send_max_in_second, s.p2p_max_in_second), (2, 1), "{s:?}");
}

#[tokio::test]
async fn unavailable_503_is_not_processed() {
    let m = mock::start(MockConfig {
        unavailable_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let e = client_for(&m)
        .batch_send(&batch(vec![1], "x"))
        .await
        .expect_err("503");
    assert_eq!(e.http_status(), Some(503));
    assert_eq!(e.code(), Some("ServiceUnavailableTemp"));
    assert_eq!(e.class(), ErrorClass::NotProcessed);
    assert_eq!(m.stats().delivered, 0);
    m.shutdown().await;
}

#[tokio::test]
async fn internal_error_before_and_after_processing_is_unknown() {
    let m = mock::start(MockConfig {
        fail_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let e = client_for(&m)
        .batch_send(&batch(vec![1, 2], "x"))
        .await
        .expect_err("500");
    assert_eq!(
        (e.http_status(), e.class()),
        (Some(500), ErrorClass::Unknown)
    );
    assert_eq!(
        m.stats().delivered,
        0,
        "fail-rate answers before processing"
    );
    m.shutdown().await;

    let m = mock::start(MockConfig {
        fail_after_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let e = client_for(&m)
        .batch_send(&batch(vec![1, 2], "x"))
        .await
        .expect_err("500");
    assert_eq!(
        (e.http_status(), e.class()),
        (Some(500), ErrorClass::Unknown)
    );
    assert_eq!(m.stats().delivered, 2, "fail-after-rate processes first");
    m.shutdown().await;
}

#[tokio::test]
async fn dropped_connection_after_send_is_unknown() {
    let m = mock::start(MockConfig {
        lost_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    let e = c
        .batch_send(&batch(vec![1, 2, 3], "x"))
        .await
        .expect_err("lost");
    assert!(matches!(e, ProviderError::Dropped { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Unknown);
    assert_eq!(e.http_status(), None);
    assert_eq!(m.stats().delivered, 3, "the lost request was processed");
    assert_eq!(m.stats().faults.get("lost"), Some(&1));
    // The client recovers on a fresh connection.
    let e = c
        .send_message(&send(1, None))
        .await
        .expect_err("lost again");
    assert_eq!(e.class(), ErrorClass::Unknown);
    m.shutdown().await;
}

#[tokio::test]
async fn connect_failure_is_not_processed() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    let url = url::Url::parse(&format!("http://{addr}/")).expect("url");
    let c = Client::new(ClientConfig::new(
        url,
        "cn-north-1",
        Credentials::new("AK", "SK", None),
    ))
    .expect("client");
    let e = c
        .batch_send(&batch(vec![1], "x"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, ProviderError::Connect { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::NotProcessed);
}

#[tokio::test]
async fn read_timeout_is_unknown() {
    let m = mock::start(MockConfig {
        latency: Duration::from_secs(3),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut cfg = ClientConfig::new(m.endpoint(), "cn-north-1", m.credentials());
    cfg.request_timeout = Duration::from_millis(200);
    let e = Client::new(cfg)
        .expect("client")
        .batch_send(&batch(vec![1], "x"))
        .await
        .expect_err("timeout");
    assert!(matches!(e, ProviderError::Timeout { .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Unknown);
}

#[tokio::test]
async fn bad_secret_and_unknown_key_are_fatal_access_errors() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = Client::new(ClientConfig::new(
        m.endpoint(),
        "cn-north-1",
        Credentials::new(&m.access_key, "wrong-secret", None),
    ))
    .expect("client");
    let e = c
        .batch_send(&batch(vec![1], "x"))
        .await
        .expect_err("bad signature");
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"));
    assert_eq!((e.http_status(), e.class()), (Some(401), ErrorClass::Fatal));
    assert!(e.is_access());
    assert!(e.to_string().contains("VOLC_SECRETKEY"), "{e}");
    assert!(!e.to_string().contains("wrong-secret"));

    let c = Client::new(ClientConfig::new(
        m.endpoint(),
        "cn-north-1",
        Credentials::new("AKLTnobody", &m.secret_key, None),
    ))
    .expect("client");
    let e = c
        .send_message(&send(1, None))
        .await
        .expect_err("unknown key");
    assert_eq!(e.code(), Some("InvalidAccessKey"));
    assert_eq!(e.class(), ErrorClass::Fatal);
    assert_eq!(m.stats().delivered, 0);
    m.shutdown().await;
}

#[tokio::test]
async fn invalid_parameters_are_fatal() {
    let m = mock::start(MockConfig {
        app_ids: vec![666675],
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    let e = c
        .batch_send(&batch((1..=501).collect(), "x"))
        .await
        .expect_err("501 receivers");
    assert_eq!(e.code(), Some("InvalidParameter.UserCountOverLimit"));
    assert_eq!(e.class(), ErrorClass::Fatal);
    let e = c
        .batch_send(&batch(vec![], "x"))
        .await
        .expect_err("no receivers");
    assert_eq!(e.code(), Some("InvalidParameter.UserCountOverLimit"));
    let mut r = batch(vec![1], "x");
    r.app_id = 1;
    let e = c.batch_send(&r).await.expect_err("unknown app");
    assert_eq!(e.code(), Some("InvalidParameter.NotExistAppId"));
    assert_eq!(e.class(), ErrorClass::Fatal);
    let s = m.stats();
    assert_eq!(
        s.rejected.get("InvalidParameter.UserCountOverLimit"),
        Some(&2)
    );
    assert_eq!(s.delivered, 0);
    m.shutdown().await;
}

/// A clock `offset` away from the system clock for its first `bad_reads` readings.
struct SkewedClock {
    offset: jiff::SignedDuration,
    bad_reads: usize,
    reads: AtomicUsize,
}

impl Clock for SkewedClock {
    fn now(&self) -> jiff::Timestamp {
        let n = self.reads.fetch_add(1, Ordering::SeqCst);
        let now = SystemClock.now();
        if n < self.bad_reads {
            now.checked_add(self.offset).expect("in range")
        } else {
            now
        }
    }
    fn sleep(&self, d: Duration) -> SleepFuture<'_> {
        SystemClock.sleep(d)
    }
}

fn skewed_client(m: &mock::MockHandle, bad_reads: usize) -> (Client, Arc<SkewedClock>) {
    let clock = Arc::new(SkewedClock {
        offset: jiff::SignedDuration::from_mins(-40),
        bad_reads,
        reads: AtomicUsize::new(0),
    });
    let c = Client::with_clock(
        ClientConfig::new(m.endpoint(), "cn-north-1", m.credentials()),
        clock.clone(),
    )
    .expect("client");
    (c, clock)
}

#[tokio::test]
async fn clock_skew_resigns_once_with_a_fresh_x_date() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    // Off once: the re-signed request succeeds.
    let (c, clock) = skewed_client(&m, 1);
    c.batch_send(&batch(vec![1], "x"))
        .await
        .expect("re-signed and delivered");
    assert_eq!(clock.reads.load(Ordering::SeqCst), 2, "signed twice");
    assert_eq!(m.stats().rejected.get("InvalidTimestamp"), Some(&1));
    // Off for good: one re-sign, then a Clock error.
    let (c, clock) = skewed_client(&m, usize::MAX);
    let e = c
        .batch_send(&batch(vec![2], "x"))
        .await
        .expect_err("still off");
    assert_eq!(e.class(), ErrorClass::Clock);
    assert_eq!(e.code(), Some("InvalidTimestamp"));
    assert_eq!(clock.reads.load(Ordering::SeqCst), 2, "exactly one re-sign");
    assert_eq!(m.stats().rejected.get("InvalidTimestamp"), Some(&3));
    assert_eq!(m.stats().delivered, 1);
    m.shutdown().await;
}

#[test]
fn http_200_with_an_error_is_a_failure() {
    let body = br#"{"ResponseMetadata":{"RequestId":"r1","Action":"BatchSendMessage","Version":"2020-12-01","Error":{"CodeN":0,"Code":"InvalidParameter","Message":"bad"}}}"#;
    let e = imcast::provider::client::parse_envelope::<BatchSendMessageResult>(
        "BatchSendMessage",
        200,
        body,
    )
    .expect_err("Error means failure");
    assert_eq!(e.code(), Some("InvalidParameter"));
    assert_eq!(e.class(), ErrorClass::Fatal);
    let e = imcast::provider::client::parse_envelope::<BatchSendMessageResult>(
        "BatchSendMessage",
        502,
        b"<html>bad gateway</html>",
    )
    .expect_err("not an envelope");
    assert_eq!(e.class(), ErrorClass::Unknown);
    let ok = br#"{"ResponseMetadata":{"RequestId":"r1"},"Result":{"UserMessageId":{"9007199254740993":9007199254740995},"FailedReceiver":[3]}}"#;
    let r = imcast::provider::client::parse_envelope::<BatchSendMessageResult>(
        "BatchSendMessage",
        200,
        ok,
    )
    .expect("ok");
    assert_eq!(
        r.user_message_id.get(&9007199254740993),
        Some(&9007199254740995)
    );
    assert_eq!(r.failed_receiver, vec![3]);
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn debug_logs_hold_no_secret_signature_or_body() {
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // A second live dispatch, so tracing takes its general path when another test's thread
    // first reaches a callsite: with exactly one registered dispatch (this test's) it asks that
    // thread's default (none) and caches "never" for every thread (tokio-rs/tracing#3611), and
    // the events below would be lost when tests run in parallel.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    c.batch_send(&batch(vec![424242], "very-private-content"))
        .await
        .expect("sent");
    let bad = Client::new(ClientConfig::new(
        m.endpoint(),
        "cn-north-1",
        Credentials::new(&m.access_key, "wrong-secret-value", None),
    ))
    .expect("client");
    bad.batch_send(&batch(vec![1], "x"))
        .await
        .expect_err("bad signature");
    m.shutdown().await;
    let logs = String::from_utf8(buf.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(
        logs.contains("provider response"),
        "debug logging is active: {logs}"
    );
    for secret in [
        mock::DEFAULT_SECRET_KEY,
        "wrong-secret-value",
        "Signature=",
        "very-private-content",
        "424242",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} leaked into the logs:\n{logs}"
        );
    }
}
