//! The mock provider: its rolling window under many concurrent senders, signature and body
//! checks over raw HTTP, its own reading of the wire (names, types, ranges, required and unknown
//! fields from the seeds), the credential scope's region and service, the reply quirks,
//! duplicates, seeded faults, the SimClock window, and the `imcast mock-server` process.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::{Clock, SimClock};
use imcast::mock::{self, MockConfig, MockStats};
use imcast::provider::sign;
use imcast::provider::*;
use serde_json::{json, Value};

use crate::common::{first_line_within, wait_within, OutputWithin};

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
        app_id: 1,
        sender: 2,
        receiver: receivers,
        inbox_type: None,
        msg_type: 10001,
        content: content.to_string(),
        is_normal_user: None,
        ext: None,
    }
}

fn read_record(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("record file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_holds_under_fifty_concurrent_senders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("deliveries.jsonl");
    let window = Duration::from_secs(2);
    let m = mock::start(MockConfig {
        limit: 1000,
        window,
        record: Some(record.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50u64 {
        let c = c.clone();
        tasks.spawn(async move {
            let (mut accepted, mut limited) = (0u64, 0u64);
            for i in 0..30u64 {
                let base = (t * 1000 + i) * 100;
                match c
                    .batch_send(&batch((base..base + 10).collect(), "promo"))
                    .await
                {
                    Ok(r) => accepted += r.user_message_id.len() as u64,
                    Err(e) if e.is_rate_limited() => limited += 1,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            (accepted, limited)
        });
    }
    let (mut accepted, mut limited) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, l) = r.expect("task");
        accepted += a;
        limited += l;
    }
    let stats = m.stats();
    m.shutdown().await;

    assert!(
        limited > 0,
        "15000 messages offered against 1000 per 2s must be limited"
    );
    assert_eq!(stats.rate_limited, limited);
    assert_eq!(stats.messages, accepted);
    assert_eq!(stats.duplicates, 0);

    // Check every rolling window from the record itself (the mock's counter is what refuses, so
    // only the record can show an overshoot), and that the counter agrees with it.
    let lines = read_record(&record);
    assert_eq!(lines.len() as u64, accepted, "one record line per delivery");
    let mut times: Vec<i128> = lines
        .iter()
        .map(|l| {
            l["time"]
                .as_str()
                .expect("time")
                .parse::<jiff::Timestamp>()
                .expect("RFC 3339")
                .as_nanosecond()
        })
        .collect();
    times.sort();
    let w = window.as_nanos() as i128;
    let (mut lo, mut max) = (0usize, 0usize);
    for hi in 0..times.len() {
        // Include every delivery at the same instant as `hi`.
        let mut end = hi;
        while end + 1 < times.len() && times[end + 1] == times[hi] {
            end += 1;
        }
        while times[lo] <= times[hi] - w {
            lo += 1;
        }
        max = max.max(end + 1 - lo);
    }
    assert!(max <= 1000, "{max} deliveries in one rolling window");
    assert_eq!(max as u64, stats.max_in_window);
}

#[tokio::test]
async fn window_follows_the_injected_clock() {
    let clock = SimClock::new("2026-03-01T08:00:00Z".parse().expect("valid"));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let m = mock::start(MockConfig {
        limit: 10,
        window: Duration::from_secs(60),
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
    c.batch_send(&batch((1..=6).collect(), "a"))
        .await
        .expect("6 fit");
    clock.advance(Duration::from_secs(30));
    c.batch_send(&batch((7..=10).collect(), "a"))
        .await
        .expect("4 more fit");
    let e = c.batch_send(&batch(vec![11], "a")).await.expect_err("full");
    assert!(e.is_rate_limited());
    clock.advance(Duration::from_secs(30)); // the first 6 leave the window
    c.batch_send(&batch((11..=16).collect(), "a"))
        .await
        .expect("room again");
    let e = c
        .batch_send(&batch(vec![17], "a"))
        .await
        .expect_err("full again");
    assert!(e.is_rate_limited());
    assert_eq!(m.stats().max_in_window, 10);
    m.shutdown().await;
}

async fn raw(url: url::Url, headers: &[(String, String)], body: Vec<u8>) -> (u16, Value) {
    let mut rb = reqwest::Client::new().post(url);
    for (k, v) in headers {
        if !k.eq_ignore_ascii_case("host") {
            rb = rb.header(k.as_str(), v.as_str());
        }
    }
    let resp = rb.body(body).send().await.expect("response");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON envelope"))
}

fn code(v: &Value) -> &str {
    v["ResponseMetadata"]["Error"]["Code"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn signature_and_body_checks_over_raw_http() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    let req = batch(vec![5], "hi");
    let imcast::provider::client::SignedRequest { url, headers, body } =
        c.signed_request("BatchSendMessage", &req).expect("signed");

    let (status, v) = raw(url.clone(), &headers, body.clone()).await;
    assert_eq!((status, code(&v)), (200, ""), "{v}");
    assert_eq!(
        v["Result"]["UserMessageId"].as_object().expect("map").len(),
        1
    );

    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;
    let (status, v) = raw(url.clone(), &headers, tampered).await;
    assert_eq!(
        (status, code(&v)),
        (401, "SignatureDoesNotMatch"),
        "body changed after signing"
    );

    let no_auth: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k != "Authorization")
        .cloned()
        .collect();
    let (status, v) = raw(url.clone(), &no_auth, body.clone()).await;
    assert_eq!((status, code(&v)), (401, "MissingAuthenticationToken"));

    let mut other_action = url.clone();
    other_action.set_query(Some("Action=SendMessage&Version=2020-12-01"));
    let (status, v) = raw(other_action, &headers, body.clone()).await;
    assert_eq!(
        (status, code(&v)),
        (401, "SignatureDoesNotMatch"),
        "query is signed"
    );

    // Bodies the provider rejects, each correctly signed.
    for (body, want) in [
        (json!("not an object"), "InvalidParameter.Unmarshal"),
        (
            json!({"AppId": 1, "Sender": 2, "MsgType": 10001, "Content": "x"}),
            "InvalidParameter",
        ),
        (
            json!({"AppId": 1, "Sender": 2, "Receiver": ["a"], "MsgType": 10001, "Content": "x"}),
            "InvalidParameter",
        ),
        (
            json!({"AppId": 1, "Sender": 2, "Receiver": [1], "MsgType": 10001}),
            "InvalidParameter",
        ),
    ] {
        let imcast::provider::client::SignedRequest {
            url,
            headers,
            body: bytes,
        } = c.signed_request("BatchSendMessage", &body).expect("signed");
        let (status, v) = raw(url, &headers, bytes).await;
        assert_eq!((status, code(&v)), (400, want), "{body}");
    }
    let s = m.stats();
    assert_eq!(s.delivered, 1);
    assert_eq!(s.rejected.get("SignatureDoesNotMatch"), Some(&2));
    m.shutdown().await;
}

#[tokio::test]
async fn duplicates_stats_endpoint_and_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("r.jsonl");
    let m = mock::start(MockConfig {
        record: Some(record.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let c = client_for(&m);
    let first = c
        .batch_send(&batch(vec![1, 2], "same"))
        .await
        .expect("sent");
    c.batch_send(&batch(vec![1, 2], "same"))
        .await
        .expect("sent again");
    c.batch_send(&batch(vec![1, 2], "different"))
        .await
        .expect("sent");
    let over_http: MockStats = reqwest::get(m.endpoint().join("stats").expect("url"))
        .await
        .expect("GET /stats")
        .json()
        .await
        .expect("stats JSON");
    assert_eq!(over_http, m.stats());
    assert_eq!(over_http.duplicates, 2);
    assert_eq!(over_http.delivered, 6);
    assert_eq!(over_http.actions["BatchSendMessage"].accepted, 3);
    m.shutdown().await;
    let lines = read_record(&record);
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["action"], "BatchSendMessage");
    assert_eq!(lines[0]["content"], "same");
    let id = lines[0]["message_id"].as_u64().expect("integer id");
    let user = lines[0]["recipient"].as_u64().expect("integer recipient");
    assert_eq!(first.user_message_id.get(&user), Some(&id));
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn failed_lists(seed: u64) -> Vec<Vec<u64>> {
        let m = mock::start(MockConfig {
            failed_receiver_rate: 0.5,
            seed,
            ..MockConfig::default()
        })
        .await
        .expect("mock");
        let c = client_for(&m);
        let mut out = Vec::new();
        for i in 0..4u64 {
            let r = c
                .batch_send(&batch((i * 20..i * 20 + 20).collect(), "x"))
                .await
                .expect("sent");
            assert_eq!(r.user_message_id.len() + r.failed_receiver.len(), 20);
            out.push(r.failed_receiver);
        }
        m.shutdown().await;
        out
    }
    let a = failed_lists(7).await;
    assert_eq!(a, failed_lists(7).await);
    let total: usize = a.iter().map(Vec::len).sum();
    assert!(total > 0 && total < 80, "about half fail, got {total}/80");
}

#[test]
fn mock_server_prints_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("rec.jsonl");
    let mut child = Command::new(crate::common::bin())
        .args([
            "mock-server",
            "--listen",
            "127.0.0.1:0",
            "--limit",
            "3",
            "--window",
            "5s",
            "--record",
        ])
        .arg(&record)
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imcast mock-server");
    let line = first_line_within(&mut child, Duration::from_secs(60), "imcast mock-server");
    let addr: std::net::SocketAddr = line.parse().expect("first line is the bound address");
    assert_ne!(addr.port(), 0);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let url = url::Url::parse(&format!("http://{addr}/")).expect("url");
        let c = Client::new(ClientConfig::new(
            url,
            "cn-north-1",
            Credentials::new(mock::DEFAULT_ACCESS_KEY, mock::DEFAULT_SECRET_KEY, None),
        ))
        .expect("client");
        c.batch_send(&batch(vec![1, 2, 3], "hello"))
            .await
            .expect("3 fit the --limit");
        let e = c
            .batch_send(&batch(vec![4], "hello"))
            .await
            .expect_err("--limit 3");
        assert!(e.is_rate_limited());
    });
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output_limited()
        .expect("kill");
    assert!(kill.status.success());
    let exit = wait_within(child, Duration::from_secs(60), "mock-server after SIGTERM").status;
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        read_record(&record).len(),
        3,
        "the record is flushed on SIGTERM"
    );
}

/// A request signed with imcast's signer for any region and service (the client always signs for
/// `rtc`), with a body given as JSON data.
#[allow(
    clippy::disallowed_methods,
    reason = "the mock checks X-Date against its system clock: the request is signed at real time"
)]
fn signed_raw(
    m: &mock::MockHandle,
    region: &str,
    service: &str,
    action: &str,
    body: &Value,
) -> (url::Url, Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(body).expect("serializes");
    let query = vec![
        ("Action".to_string(), action.to_string()),
        ("Version".to_string(), "2020-12-01".to_string()),
    ];
    let mut url = m.endpoint();
    url.set_query(Some(&format!("Action={action}&Version=2020-12-01")));
    let host = m.addr.to_string();
    let headers = [("Content-Type".to_string(), "application/json".to_string())];
    let x_date = sign::format_x_date(jiff::Timestamp::now());
    let signed = sign::sign(&sign::SignInput {
        access_key_id: &m.access_key,
        secret_key: &m.secret_key,
        session_token: None,
        method: "POST",
        host: &host,
        path: "/",
        query: &query,
        headers: &headers,
        body: &body,
        x_date: &x_date,
        region,
        service,
    });
    (url, signed.headers_out, body)
}

/// Send `body` (JSON data, possibly deliberately wrong) to `action`, correctly signed for the
/// mock's region and `rtc`; the status and the raw reply.
async fn send_raw(m: &mock::MockHandle, action: &str, body: &Value) -> (u16, Value) {
    let (url, headers, bytes) = signed_raw(m, "cn-north-1", "rtc", action, body);
    raw(url, &headers, bytes).await
}

fn message(v: &Value) -> &str {
    v["ResponseMetadata"]["Error"]["Message"]
        .as_str()
        .unwrap_or("")
}

#[tokio::test]
async fn wire_mistakes_are_rejected_with_invalid_parameter_naming_the_field() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let batch_ok =
        json!({"AppId": 1, "Sender": 2, "Receiver": [3], "MsgType": 10001, "Content": "x"});
    let send_ok = json!({"AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 10001, "Content": "x"});
    let p2p_ok = json!({"AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 10013, "Content": "x"});
    let edit = |base: &Value, remove: &[&str], set: &[(&str, Value)]| {
        let mut v = base.clone();
        let o = v.as_object_mut().expect("object");
        for k in remove {
            o.remove(*k);
        }
        for (k, x) in set {
            o.insert((*k).to_string(), x.clone());
        }
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        // A misspelled field: unknown, and the required one is then missing.
        (
            "BatchSendMessage",
            edit(&batch_ok, &["Receiver"], &[("Reciever", json!([3]))]),
            "unknown field Reciever",
        ),
        // Case matters.
        (
            "BatchSendMessage",
            edit(&batch_ok, &["Content"], &[("content", json!("x"))]),
            "case-sensitive: Content",
        ),
        // A string where a Long belongs.
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("Sender", json!("2"))]),
            "Sender must be a Long",
        ),
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("Receiver", json!([3, "4"]))]),
            "Receiver[1] must be a Long",
        ),
        // Ids outside int64, and negative ids.
        (
            "BatchSendMessage",
            edit(
                &batch_ok,
                &[],
                &[("Receiver", json!([9_223_372_036_854_775_808_u64]))],
            ),
            "Receiver[0] is 9223372036854775808",
        ),
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("Sender", json!(-5))]),
            "Sender is -5",
        ),
        (
            "SendMessage",
            edit(
                &send_ok,
                &[],
                &[("ConversationShortId", json!(9_223_372_036_854_775_808_u64))],
            ),
            "ConversationShortId is 9223372036854775808",
        ),
        (
            "P2PSendMessage",
            edit(
                &p2p_ok,
                &[],
                &[("ReceiverUserId", json!([1, 18_446_744_073_709_551_615_u64]))],
            ),
            "ReceiverUserId[1] is 18446744073709551615",
        ),
        // AppId is an Integer (32-bit).
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("AppId", json!(2_147_483_648_u64))]),
            "AppId is 2147483648",
        ),
        // A missing required field.
        (
            "SendMessage",
            edit(&send_ok, &["ConversationShortId"], &[]),
            "missing required field ConversationShortId",
        ),
        (
            "P2PSendMessage",
            edit(&p2p_ok, &["MsgType"], &[]),
            "missing required field MsgType",
        ),
        // Unknown fields: another action's field, and one no page has.
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("ClientMsgId", json!("k"))]),
            "unknown field ClientMsgId",
        ),
        (
            "P2PSendMessage",
            edit(&p2p_ok, &[], &[("ReceiverUserIds", json!([1]))]),
            "unknown field ReceiverUserIds",
        ),
        // Ext maps strings to strings; an optional field is omitted, never null.
        (
            "SendMessage",
            edit(&send_ok, &[], &[("Ext", json!({"w": 640}))]),
            "Ext[\"w\"] must be a String",
        ),
        (
            "BatchSendMessage",
            edit(&batch_ok, &[], &[("Ext", Value::Null)]),
            "Ext is null",
        ),
    ];
    for (action, body, want) in &cases {
        let (status, v) = send_raw(&m, action, body).await;
        assert_eq!(
            (status, code(&v)),
            (400, "InvalidParameter"),
            "{action} {body}: {v}"
        );
        assert!(message(&v).contains(want), "{action} {body}: {v}");
    }
    // The well-formed bodies pass, so each rejection above is the one edit's doing.
    for (action, body) in [
        ("BatchSendMessage", &batch_ok),
        ("SendMessage", &send_ok),
        ("P2PSendMessage", &p2p_ok),
    ] {
        let (status, v) = send_raw(&m, action, body).await;
        assert_eq!((status, code(&v)), (200, ""), "{action}: {v}");
    }
    let s = m.stats();
    assert_eq!(
        s.rejected.get("InvalidParameter"),
        Some(&(cases.len() as u64))
    );
    assert_eq!(s.delivered, 3);
    m.shutdown().await;
}

#[tokio::test]
async fn every_field_the_client_can_send_is_one_the_seeds_document() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let c = client_for(&m);
    let mut ext = std::collections::BTreeMap::new();
    ext.insert("file_ext_key_original_width".to_string(), "640".to_string());
    c.batch_send(&BatchSendMessageRequest {
        inbox_type: Some(0),
        is_normal_user: Some(false),
        ext: Some(ext.clone()),
        ..batch(vec![1, i64::MAX as u64], "x")
    })
    .await
    .expect("batch with every optional field");
    c.send_message(&SendMessageRequest {
        app_id: 1,
        sender: 2,
        conversation_short_id: 7_221_856_821_303_361_536,
        msg_type: 10001,
        content: "x".into(),
        mentioned_users: Some(vec![4]),
        ref_msg_info: Some(RefMsgInfo {
            referenced_message_id: Some(7_171_391_232_210_504_000),
            hint: Some("[图片]".into()),
            referenced_message_type: Some(10003),
            status: Some(0),
        }),
        visible_users: Some(vec![5]),
        invisible_users: Some(vec![6]),
        ext: Some(ext),
        client_msg_id: Some("k-1".into()),
        create_time: Some(1_666_613_688_658),
        priority: Some(1),
    })
    .await
    .expect("SendMessage with every optional field");
    let r = c
        .p2p_send(&P2pSendMessageRequest {
            app_id: 1,
            sender: 2,
            conversation_short_id: 3,
            msg_type: 10013,
            content: "x".into(),
            receiver_user_id: Some(vec![10, 11]),
            ignore_user_ids: Some(vec![12]),
        })
        .await
        .expect("P2P with every optional field");
    assert_eq!(r.p2p_result.len(), 2);
    assert_eq!(m.stats().delivered, 4);
    m.shutdown().await;
}

#[tokio::test]
async fn the_credential_scope_must_name_the_mock_region_and_rtc() {
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let body = json!({"AppId": 1, "Sender": 2, "Receiver": [3], "MsgType": 10001, "Content": "x"});
    for (region, service) in [
        ("ap-southeast-1", "rtc"),
        ("cn-north-1", "iam"),
        ("cn-north-1", "RTC"),
    ] {
        let (url, headers, bytes) = signed_raw(&m, region, service, "BatchSendMessage", &body);
        let (status, v) = raw(url, &headers, bytes).await;
        assert_eq!(
            (status, code(&v)),
            (401, "SignatureDoesNotMatch"),
            "{region}/{service}: {v}"
        );
        assert!(
            message(&v).contains(&format!("region `{region}` and service `{service}`")),
            "{v}"
        );
    }
    // The real client pointed at the wrong region is refused the same way.
    let wrong = Client::new(ClientConfig::new(
        m.endpoint(),
        "ap-southeast-1",
        m.credentials(),
    ))
    .expect("client");
    let e = wrong
        .batch_send(&batch(vec![3], "x"))
        .await
        .expect_err("signed for another region");
    assert!(e.to_string().contains("SignatureDoesNotMatch"), "{e}");
    assert_eq!(m.stats().rejected.get("SignatureDoesNotMatch"), Some(&4));
    assert_eq!(m.stats().delivered, 0);
    m.shutdown().await;

    // A mock for another region accepts that region and names it in its replies.
    let m = mock::start(MockConfig {
        region: "ap-southeast-1".into(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let (url, headers, bytes) = signed_raw(&m, "ap-southeast-1", "rtc", "BatchSendMessage", &body);
    let (status, v) = raw(url, &headers, bytes).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ResponseMetadata"]["Region"], "ap-southeast-1");
    let (status, v) = send_raw(&m, "BatchSendMessage", &body).await;
    assert_eq!((status, code(&v)), (401, "SignatureDoesNotMatch"), "{v}");
    m.shutdown().await;
}

/// A mock with these quirks; the raw replies to a batch of `[1, 2]`, a P2P call to `users` and a
/// rejected body.
async fn quirk_replies(
    quirks: &str,
    failed_receiver_rate: f64,
    offline_rate: f64,
    users: &[u64],
) -> (Value, Value, Value) {
    let m = mock::start(MockConfig {
        quirks: mock::parse_quirks(quirks).expect("quirks"),
        failed_receiver_rate,
        offline_rate,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let (status, b) = send_raw(
        &m,
        "BatchSendMessage",
        &json!({"AppId": 1, "Sender": 2, "Receiver": [1, 2], "MsgType": 10001, "Content": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{b}");
    let mut p2p = json!({"AppId": 1, "Sender": 2, "ConversationShortId": 3, "MsgType": 10013, "Content": "x"});
    if !users.is_empty() {
        p2p["ReceiverUserId"] = json!(users);
    }
    let (status, p) = send_raw(&m, "P2PSendMessage", &p2p).await;
    assert_eq!(status, 200, "{p}");
    let (status, e) = send_raw(
        &m,
        "BatchSendMessage",
        &json!({"AppId": 1, "Sender": 2, "Reciever": [1], "MsgType": 10001, "Content": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    m.shutdown().await;
    (b, p, e)
}

fn has_extra(v: &Value) -> bool {
    v.get("XMockExtraString").is_some()
}

#[tokio::test]
async fn quirks_shape_the_replies_as_a_go_server_may() {
    // Plain replies: empty lists as [], no Error on success, SUCCESS, no unknown fields.
    let (b, p, e) = quirk_replies("", 0.0, 0.0, &[]).await;
    assert_eq!(b["Result"]["FailedReceiver"], json!([]));
    assert!(b["ResponseMetadata"].get("Error").is_none(), "{b}");
    assert_eq!(p["Result"]["P2PResult"], json!([]));
    assert!(!has_extra(&b) && !has_extra(&b["ResponseMetadata"]) && !has_extra(&b["Result"]));
    assert_eq!(code(&e), "InvalidParameter");
    let (b, _, _) = quirk_replies("", 1.0, 0.0, &[]).await;
    assert_eq!(b["Result"]["UserMessageId"], json!({}));
    assert_eq!(b["Result"]["FailedReceiver"], json!([1, 2]));

    // null-lists: every empty list or map is null; non-empty ones are unchanged.
    let (b, p, _) = quirk_replies("null-lists", 0.0, 0.0, &[]).await;
    assert_eq!(b["Result"]["FailedReceiver"], Value::Null, "{b}");
    assert_eq!(
        b["Result"]["UserMessageId"].as_object().map(|o| o.len()),
        Some(2)
    );
    assert_eq!(p["Result"]["P2PResult"], Value::Null, "{p}");
    assert!(p["Result"]
        .as_object()
        .expect("Result")
        .contains_key("P2PResult"));
    let (b, _, _) = quirk_replies("null-lists", 1.0, 0.0, &[]).await;
    assert_eq!(b["Result"]["UserMessageId"], Value::Null, "{b}");
    assert_eq!(b["Result"]["FailedReceiver"], json!([1, 2]));

    // empty-error: success carries an empty Error object; a real error is still the real one.
    let (b, p, e) = quirk_replies("empty-error", 0.0, 0.0, &[]).await;
    let empty = json!({"Code": "", "CodeN": 0, "Message": ""});
    assert_eq!(b["ResponseMetadata"]["Error"], empty, "{b}");
    assert_eq!(p["ResponseMetadata"]["Error"], empty, "{p}");
    assert!(b["Result"].is_object());
    assert_eq!(code(&e), "InvalidParameter");

    // success-spelling: P2P delivered users are `Success`; NOT_ONLINE is unchanged.
    let (_, p, _) = quirk_replies("success-spelling", 0.0, 0.0, &[10, 11]).await;
    let codes: Vec<&str> = p["Result"]["P2PResult"]
        .as_array()
        .expect("P2PResult")
        .iter()
        .map(|r| r["Code"].as_str().expect("Code"))
        .collect();
    assert_eq!(codes, ["Success", "Success"], "{p}");
    let (_, p, _) = quirk_replies("success-spelling", 0.0, 1.0, &[10]).await;
    assert_eq!(p["Result"]["P2PResult"][0]["Code"], "NOT_ONLINE");

    // extra-fields: unknown fields in every object, never in the map keyed by user id.
    let (b, p, e) = quirk_replies("extra-fields", 0.0, 0.0, &[10]).await;
    for (what, v) in [
        ("envelope", &b),
        ("ResponseMetadata", &b["ResponseMetadata"]),
        ("Result", &b["Result"]),
        ("P2P Result", &p["Result"]),
        ("P2PResult item", &p["Result"]["P2PResult"][0]),
        ("error envelope", &e),
        ("Error", &e["ResponseMetadata"]["Error"]),
    ] {
        assert!(has_extra(v), "{what}: {v}");
    }
    let ids = b["Result"]["UserMessageId"].as_object().expect("map");
    assert_eq!(ids.keys().collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(code(&e), "InvalidParameter");
    assert!(b["Result"]
        .get("XMockExtraNull")
        .is_some_and(Value::is_null));

    // all: every quirk at once.
    let (b, p, _) = quirk_replies("all", 0.0, 0.0, &[10]).await;
    assert_eq!(b["Result"]["FailedReceiver"], Value::Null);
    assert_eq!(b["ResponseMetadata"]["Error"]["Code"], "");
    assert!(has_extra(&b["ResponseMetadata"]["Error"]), "{b}");
    assert_eq!(p["Result"]["P2PResult"][0]["Code"], "Success");
}

#[test]
fn quirk_lists_parse() {
    use mock::Quirk;
    assert_eq!(
        mock::parse_quirks("all").expect("all"),
        Quirk::ALL.into_iter().collect()
    );
    assert_eq!(
        mock::parse_quirks(" null-lists,extra-fields ,").expect("two"),
        [Quirk::NullLists, Quirk::ExtraFields].into_iter().collect()
    );
    assert!(mock::parse_quirks("").expect("none").is_empty());
    let e = mock::parse_quirks("null-lists,string-ids").expect_err("unknown");
    assert!(
        e.contains("unknown quirk `string-ids`") && e.contains("success-spelling"),
        "{e}"
    );
}

#[test]
fn mock_server_region_and_quirks_flags() {
    let mut child = Command::new(crate::common::bin())
        .args([
            "mock-server",
            "--listen",
            "127.0.0.1:0",
            "--region",
            "ap-southeast-1",
            "--quirks",
            "null-lists,empty-error",
        ])
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn imcast mock-server");
    let line = first_line_within(&mut child, Duration::from_secs(60), "imcast mock-server");
    let addr: std::net::SocketAddr = line.parse().expect("bound address");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ok, wrong) = rt.block_on(async {
        let url = url::Url::parse(&format!("http://{addr}/")).expect("url");
        let body = batch(vec![1], "x");
        let mut out = Vec::new();
        for region in ["ap-southeast-1", "cn-north-1"] {
            let c = Client::new(ClientConfig::new(
                url.clone(),
                region,
                Credentials::new(mock::DEFAULT_ACCESS_KEY, mock::DEFAULT_SECRET_KEY, None),
            ))
            .expect("client");
            let r = c.signed_request("BatchSendMessage", &body).expect("signed");
            out.push(raw(r.url, &r.headers, r.body).await);
        }
        (out.remove(0), out.remove(0))
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output_limited();
    let exit = wait_within(child, Duration::from_secs(60), "mock-server after SIGTERM").status;
    assert_eq!(exit.code(), Some(0));
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(ok.1["Result"]["FailedReceiver"], Value::Null);
    assert_eq!(ok.1["ResponseMetadata"]["Error"]["CodeN"], 0);
    assert_eq!(ok.1["ResponseMetadata"]["Region"], "ap-southeast-1");
    assert_eq!((wrong.0, code(&wrong.1)), (401, "SignatureDoesNotMatch"));
}

#[test]
fn mock_server_rejects_bad_flags() {
    let out = Command::new(crate::common::bin())
        .args(["mock-server", "--fail-rate", "1.5"])
        .output_limited()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be between 0 and 1"));
    let out = Command::new(crate::common::bin())
        .args(["mock-server", "--window", "soon"])
        .output_limited()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window"));
    let out = Command::new(crate::common::bin())
        .args(["mock-server", "--quirks", "null-lists,bogus"])
        .output_limited()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown quirk `bogus`"), "{err}");
}

/// End to end: campaigns of all three actions run against a mock writing every quirk, and every
/// recipient gets the status it would get from plain replies. Fails with today's strict reply
/// parser (`"FailedReceiver": null` makes whole calls `unknown`, an empty Error object reads as a
/// failure, `Success` reads as `not_online`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_against_every_quirk_report_the_true_statuses() {
    use imcast::config::RepoPaths;
    use imcast::exit::Exit;
    use imcast::run::{run_campaign, Request};
    use imcast::send::StopToken;

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("imcast.toml"),
        "[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
    )
    .expect("imcast.toml");
    let users: Vec<u64> = (0..1_200).map(|i| 100_000 + i).collect();
    let mut csv = String::from("user_id\n");
    for u in &users {
        csv.push_str(&format!("{u}\n"));
    }
    std::fs::write(root.join("users.csv"), csv).expect("users.csv");
    std::fs::write(
        root.join("convs.csv"),
        "conversation_id\n7001\n7002\n7003\n7004\n",
    )
    .expect("convs.csv");
    let provider =
        "provider: { app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }";
    let campaigns = [
        ("batch", "action: batch\naudience: { csv: users.csv, id_column: user_id }"),
        ("conversation", "action: conversation\naudience: { csv: convs.csv, id_column: conversation_id }"),
        ("p2p", "action: p2p\np2p: { receiver_user_ids: [11, 12, 13] }\naudience: { csv: convs.csv, id_column: conversation_id }"),
    ];
    for (name, body) in campaigns {
        let file = root.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("version: 1\nname: {name}\n{provider}\nsender: 10001\n{body}\nmessage: {{ type: text, text: hi }}\n"),
        )
        .expect("campaign");
        let m = mock::start(MockConfig {
            quirks: mock::parse_quirks("all").expect("all"),
            offline_rate: if name == "p2p" { 0.5 } else { 0.0 },
            seed: 3,
            ..MockConfig::default()
        })
        .await
        .expect("mock");
        let campaign = imcast::spec::load(&file, &imcast::spec::LoadOptions::default())
            .expect("valid campaign");
        let mut req = Request::new(campaign, RepoPaths::discover(&file, None, None, None));
        req.target = Some((m.endpoint(), m.credentials()));
        req.flags.mock = true;
        req.report_formats = Some(imcast::config::ReportFormats {
            csv: true,
            jsonl: true,
        });
        let s = run_campaign(req, Arc::new(imcast::clock::SystemClock), StopToken::new())
            .await
            .expect("run");
        let stats = m.stats();
        m.shutdown().await;
        let text = std::fs::read_to_string(
            s.report_dir
                .as_ref()
                .expect("report")
                .join("recipients.jsonl"),
        )
        .expect("recipients.jsonl");
        let rows: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("row"))
            .collect();
        let count = |st: &str| rows.iter().filter(|r| r["status"] == st).count() as u64;
        match name {
            "batch" => {
                assert_eq!(s.exit, Exit::Ok, "{name}: {s:?}");
                assert_eq!(count("sent"), users.len() as u64, "{name}: {rows:?}");
                assert_eq!(stats.delivered, users.len() as u64);
            }
            "conversation" => {
                assert_eq!(s.exit, Exit::Ok, "{name}: {s:?}");
                assert_eq!(count("sent"), 4, "{name}: {rows:?}");
            }
            _ => {
                // One row per conversation plus one per user the provider returned.
                assert_eq!(rows.len(), 4 + 4 * 3, "{name}: {rows:?}");
                let users_not_online = rows
                    .iter()
                    .filter(|r| r["raw_id"].as_str().is_some_and(|x| x.contains('/')))
                    .filter(|r| r["status"] == "not_online")
                    .count() as u64;
                assert_eq!(users_not_online, stats.offline, "{name}: {rows:?}");
                assert!(stats.offline > 0 && stats.offline < 12);
                assert_eq!(count("unknown") + count("failed"), 0, "{name}: {rows:?}");
            }
        }
    }
}
