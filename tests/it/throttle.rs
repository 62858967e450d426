//! The exact throttle against the mock provider over real HTTP, with latency split around the
//! mock's stamp (a random part before it counts the request, the rest before it answers), for
//! the three actions at short windows.
//!
//! "Never over the limit" is computed from the mock's record of stamps (`--record`, the `time`
//! each delivery was counted at), with the mock's own limits raised so it refuses nothing: its
//! admission counter refuses over-limit requests and so could never show an overshoot. A second
//! test runs at the provider's own limit and asserts that not one request was refused (429).

use std::sync::Arc;
use std::time::Duration;

use imcast::clock::SystemClock;
use imcast::config::RepoPaths;
use imcast::journal::RecipientStatus;
use imcast::mock::{self, MockConfig, MockStats};
use imcast::run::{run_campaign, Request};
use imcast::send::StopToken;

use crate::common::{max_in_window, record_lines, stamps};

/// One campaign shape: the action, its limit and window, how many audience rows.
#[derive(Debug, Clone, Copy)]
struct Case {
    action: &'static str,
    limit: u64,
    window: Duration,
    rows: u64,
    latency_ms: u64,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for latency_ms in [0, 50, 500] {
        v.push(Case {
            action: "batch",
            limit: 1000,
            window: Duration::from_secs(5),
            rows: 2_000,
            latency_ms,
        });
        v.push(Case {
            action: "conversation",
            limit: 50,
            window: Duration::from_secs(1),
            rows: 150,
            latency_ms,
        });
        v.push(Case {
            action: "p2p",
            limit: 100,
            window: Duration::from_secs(1),
            rows: 300,
            latency_ms,
        });
    }
    v
}

struct Outcome {
    stats: MockStats,
    sent: u64,
    /// (stamp, units) from the mock's record.
    stamps: Vec<(i128, u64)>,
}

/// Run `case` against a mock whose limits are `mock_limit_factor` × the client's.
async fn run(case: Case, mock_limit_factor: u64) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let window = humantime::format_duration(case.window).to_string();
    std::fs::write(
        dir.path().join("imcast.toml"),
        format!(
            // Enough calls in flight that at 500 ms latency the limiter, not the engine's
            // concurrency, sets the pace.
            "[limits.{}]\nlimit = {}\nwindow = \"{window}\"\n[send]\nmax_in_flight = 64\n",
            case.action, case.limit
        ),
    )
    .expect("imcast.toml");
    let mut audience = String::from("id\n");
    for i in 0..case.rows {
        audience.push_str(&format!("{}\n", 9_007_199_254_740_993u64 + i));
    }
    std::fs::write(dir.path().join("audience.csv"), audience).expect("audience");
    let extra = match case.action {
        "p2p" => "p2p: { receiver_user_ids: [11, 12] }\n",
        _ => "",
    };
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: exact-{}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }}\n\
             action: {}\nsender: 10001\n{extra}audience:\n  csv: audience.csv\n  id_column: id\n\
             message:\n  type: text\n  text: \"hello\"\n",
            case.action, case.action
        ),
    )
    .expect("campaign");
    let record = dir.path().join("record.jsonl");
    let f = mock_limit_factor;
    let (limit, window, send_qps, p2p_qps) = match case.action {
        "batch" => (case.limit * f, case.window, 50, 100),
        "conversation" => (12_000, Duration::from_secs(60), case.limit * f, 100),
        _ => (12_000, Duration::from_secs(60), 50, case.limit * f),
    };
    let m = mock::start(MockConfig {
        limit,
        window,
        send_qps,
        p2p_qps,
        latency: Duration::from_millis(case.latency_ms),
        record: Some(record.clone()),
        seed: case.latency_ms,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let campaign =
        imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let mut req = Request::new(campaign, RepoPaths::discover(&file, None, None, None));
    req.target = Some((m.endpoint(), m.credentials()));
    req.flags.mock = true;
    let s = run_campaign(req, Arc::new(SystemClock), StopToken::new())
        .await
        .unwrap_or_else(|e| panic!("{case:?}: {e}"));
    let stats = m.stats();
    m.shutdown().await;
    Outcome {
        sent: s.counts.get(&RecipientStatus::Sent).copied().unwrap_or(0),
        stamps: stamps(&record_lines(&record, stats.delivered), None),
        stats,
    }
}

async fn all_cases(mock_limit_factor: u64) -> Vec<(Case, Outcome)> {
    // One action at a time (its three latencies at once): a loaded test machine must still let
    // the client push against the limit.
    let mut out = Vec::new();
    for action in ["batch", "conversation", "p2p"] {
        let mut set = tokio::task::JoinSet::new();
        for c in cases().into_iter().filter(|c| c.action == action) {
            set.spawn(async move { (c, run(c, mock_limit_factor).await) });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.expect("case task"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_stamps_never_exceed_the_limit_whatever_the_latency() {
    // The mock admits up to 10× the limit, so only the client keeps the limit.
    for (case, o) in all_cases(10).await {
        assert_eq!(o.sent, case.rows, "{case:?}: everyone sent");
        assert_eq!(o.stamps.len() as u64, case.rows, "{case:?}: one stamp each");
        let worst = max_in_window(&o.stamps, case.window);
        assert!(
            worst <= case.limit,
            "{case:?}: {worst} stamped in one window of {:?}",
            case.window
        );
        // Not vacuous: the client pushed against the limit. A call holds its place from
        // admission until its answer + W, so with latency L at most limit × W/(W+L) fit in one
        // window; a loaded test machine must reach at least half of that.
        let w = case.window.as_millis() as u64;
        let reachable = case.limit * w / (w + case.latency_ms);
        assert!(
            worst * 2 >= reachable,
            "{case:?}: only {worst} in the fullest window (at most {reachable} reachable)"
        );
        assert_eq!(o.stats.rate_limited, 0, "{case:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_429_at_the_providers_own_limit() {
    for (case, o) in all_cases(1).await {
        assert_eq!(
            o.stats.rate_limited, 0,
            "{case:?}: the provider refused requests: {:?}",
            o.stats.rejected
        );
        assert_eq!(o.sent, case.rows, "{case:?}: everyone sent");
        // No window check here: a mock at the limit refuses any overshoot (counted above as a
        // 429), so its record cannot show one. The test above raises the mock's limit for that.
    }
}
