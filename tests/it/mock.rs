//! The mock provider: its rolling window under many concurrent senders, signature and body
//! checks over raw HTTP, duplicates, seeded faults, the SimClock window, and the
//! `imcast mock-server` process.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::{Clock, SimClock};
use imcast::mock::{self, MockConfig, MockStats};
use imcast::provider::*;
use serde_json::{json, Value};

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
    assert!(stats.max_in_window > 0 && stats.max_in_window <= 1000);
    assert_eq!(stats.duplicates, 0);

    // Check every rolling window from the record itself.
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
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let addr: std::net::SocketAddr = line
        .trim()
        .parse()
        .expect("first line is the bound address");
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
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("exits");
    assert_eq!(exit.code(), Some(0));
    assert_eq!(
        read_record(&record).len(),
        3,
        "the record is flushed on SIGTERM"
    );
}

#[test]
fn mock_server_rejects_bad_flags() {
    let out = Command::new(crate::common::bin())
        .args(["mock-server", "--fail-rate", "1.5"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be between 0 and 1"));
    let out = Command::new(crate::common::bin())
        .args(["mock-server", "--window", "soon"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--window"));
}
