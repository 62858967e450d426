//! Staged runs (`rollout:` canary) end to end against the mock provider on 127.0.0.1, on a
//! simulated clock shared by the run and the mock (the canary's wait ticks, nothing sleeps), and
//! as real processes killed with SIGKILL during the canary's wait.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imcast::assign::{point, within, Purpose};
use imcast::clock::{Clock, SharedClock, SimClock};
use imcast::config::RepoPaths;
use imcast::exit::Exit;
use imcast::journal::{Journal, RecipientStatus, RunStatus, StageRow};
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request};
use imcast::send::{StopReason, StopToken};
use jiff::Timestamp;
use serde_json::Value;

use crate::common::record_lines;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("imcast.toml"),
            "[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
        )
        .expect("imcast.toml");
        Repo { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `n` users (ids 200000..) in three Content groups.
    fn audience(&self, n: u64) -> Vec<u64> {
        let mut s = String::from("user_id,grp\n");
        let ids: Vec<u64> = (0..n).map(|i| 200_000 + i).collect();
        for (i, id) in ids.iter().enumerate() {
            s.push_str(&format!("{id},g{}\n", i % 3));
        }
        std::fs::write(self.path("a.csv"), s).expect("audience");
        ids
    }

    fn campaign(&self, name: &str, endpoint: &str, extra: &str) -> PathBuf {
        let text = format!(
            "version: 1\nname: {name}\nprovider: {{ app_id: 1, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
             action: batch\nsender: 10001\naudience: {{ csv: a.csv }}\n\
             message: {{ type: text, text: \"Hi {{{{ grp }}}}\" }}\n\
             breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n{extra}"
        );
        let p = self.path(&format!("{name}.yaml"));
        std::fs::write(&p, text).expect("campaign");
        p
    }

    fn journal(&self) -> Journal {
        Journal::open(&self.path(".imcast")).expect("journal")
    }
}

fn request(_repo: &Repo, file: &Path, m: &mock::MockHandle) -> Request {
    let c = imcast::spec::load(file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let mut r = Request::new(c, RepoPaths::discover(file, None, None, None));
    r.target = Some((m.endpoint(), m.credentials()));
    r.flags.mock = true;
    r
}

fn t0() -> Timestamp {
    // Near the real time: the mock checks X-Date against its (simulated) clock only.
    Timestamp::now()
}

/// Deliveries per recipient in the mock's record.
fn deliveries(rec: &Path, n: u64) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for v in record_lines(rec, n) {
        *m.entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    m
}

fn canary_of(campaign: &str, ids: &[u64], parts: u64, whole: u64) -> BTreeSet<u64> {
    ids.iter()
        .copied()
        .filter(|id| within(point(campaign, Purpose::Canary, *id), parts, whole))
        .collect()
}

fn stages(repo: &Repo) -> (String, Vec<StageRow>) {
    let j = repo.journal();
    let run = j.latest_run("can", false).expect("q").expect("a run");
    let rows = j.stages(&run.id).expect("stages");
    (run.id, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_goes_first_waits_on_the_clock_then_the_rest_follows() {
    let repo = Repo::new();
    let ids = repo.audience(1_000);
    let file = repo.campaign(
        "can",
        "http://127.0.0.1:9",
        "rollout: { canary: 10%, wait: 10m, max_failure_ratio: 0.02 }\n",
    );
    let clock = SimClock::new(t0());
    let shared: SharedClock = Arc::new(clock.clone());
    let rec = repo.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        record: Some(rec.clone()),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let started = clock.now();
    let s = run_campaign(request(&repo, &file, &m), shared, StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    assert_eq!(s.status, Some(RunStatus::Finished));
    // The wait ticked on the simulated clock: at least 10 minutes passed, and no real ones.
    assert!(clock.now().duration_since(started) >= jiff::SignedDuration::from_mins(10));

    let (_, rows) = stages(&repo);
    assert_eq!(rows.len(), 2);
    let (canary, rest) = (&rows[0], &rows[1]);
    assert_eq!(canary.name, "canary");
    assert_eq!(canary.gate.as_deref(), Some("passed"), "{canary:?}");
    let expected = canary_of("can", &ids, 10, 100);
    assert_eq!(canary.recipients, expected.len() as u64);
    assert_eq!(rest.recipients, 1_000 - expected.len() as u64);
    // The decision time is the canary's end plus the wait, and the rest started after it.
    let gate_at = canary.gate_at.expect("gate time");
    let canary_end = canary.finished_at.expect("canary end");
    assert_eq!(
        gate_at.duration_since(canary_end),
        jiff::SignedDuration::from_mins(10)
    );
    assert!(rest.started_at.expect("rest start") >= gate_at);
    assert_eq!(rest.state, "sent");

    // Every recipient exactly once; the canary's deliveries come first and are the hash sample.
    let delivered = deliveries(&rec, stats.delivered);
    assert_eq!(delivered.len(), 1_000);
    assert!(delivered.values().all(|n| *n == 1));
    assert_eq!(stats.duplicates, 0);
    let order: Vec<u64> = record_lines(&rec, stats.delivered)
        .iter()
        .map(|v| v["recipient"].as_u64().expect("id"))
        .collect();
    let first: BTreeSet<u64> = order[..expected.len()].iter().copied().collect();
    assert_eq!(first, expected, "the canary is sent first and is the stable sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_pauses_the_run_and_a_person_resumes_it() {
    let repo = Repo::new();
    let ids = repo.audience(600);
    let file = repo.campaign(
        "can",
        "http://127.0.0.1:9",
        "retry: { max_attempts: 1 }\nrollout: { canary: 100, wait: 5m, max_failure_ratio: 0.02 }\n",
    );
    let clock = SimClock::new(t0());
    let shared: SharedClock = Arc::new(clock.clone());
    let rec = repo.path("record.jsonl");
    let bad = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        failed_receiver_rate: 0.3,
        record: Some(rec.clone()),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(request(&repo, &file, &bad), shared.clone(), StopToken::new())
        .await
        .expect("run");
    let first = bad.stats();
    bad.shutdown().await;
    assert_eq!(s.exit, Exit::Breaker, "exit 4: {s:?}");
    assert_eq!(s.status, Some(RunStatus::Paused));
    assert!(
        matches!(&s.reason, Some(StopReason::Canary { message }) if message.contains("failed its gate")),
        "{:?}",
        s.reason
    );
    let (run_id, rows) = stages(&repo);
    assert_eq!(rows[0].recipients, 100, "a count takes exactly that many");
    assert_eq!(rows[0].gate.as_deref(), Some("failed"));
    assert_eq!(rows[1].state, "waiting", "the rest was not started");
    let counts = repo.journal().counts(&run_id).expect("counts");
    assert_eq!(counts[&RecipientStatus::Pending], 500, "the rest waits");
    assert!(counts[&RecipientStatus::Failed] > 2);
    let reason = repo
        .journal()
        .run(&run_id)
        .expect("q")
        .expect("run")
        .stop_reason
        .unwrap_or_default();
    assert!(reason.contains("failed its gate"), "{reason}");

    // A person resumes (`imcast run` again): the gate is overridden, the rest is sent once.
    let good = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s2 = run_campaign(request(&repo, &file, &good), shared, StopToken::new())
        .await
        .expect("resume");
    let second = good.stats();
    good.shutdown().await;
    assert_eq!(s2.run_id.as_deref(), Some(run_id.as_str()), "the same run");
    assert_eq!(s2.status, Some(RunStatus::Finished));
    let (_, rows) = stages(&repo);
    assert_eq!(rows[0].gate.as_deref(), Some("overridden"));
    assert!(rows[0]
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("resumed by a person")));
    // Nobody twice, nobody skipped: the canary's delivered ones are not sent again, the rest
    // once; the canary's failed ones stay failed.
    let canary_delivered: BTreeSet<u64> = deliveries(&rec, first.delivered).into_keys().collect();
    assert_eq!(second.delivered, 500, "exactly the rest");
    assert_eq!(
        canary_delivered.len() as u64 + second.delivered + s2.counts[&RecipientStatus::Failed],
        ids.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_canary_does_not_wait_and_says_so() {
    let repo = Repo::new();
    repo.audience(300);
    let file = repo.campaign(
        "can",
        "http://127.0.0.1:9",
        "rollout: { canary: 5%, wait: 1h }\n",
    );
    let clock = SimClock::new(t0());
    let shared: SharedClock = Arc::new(clock.clone());
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let started = clock.now();
    let mut req = request(&repo, &file, &m);
    req.flags.skip_canary = true;
    let s = run_campaign(req, shared, StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok);
    assert!(clock.now().duration_since(started) < jiff::SignedDuration::from_mins(60));
    let (run_id, rows) = stages(&repo);
    assert_eq!(rows[0].gate.as_deref(), Some("skipped"));
    let run = repo.journal().run(&run_id).expect("q").expect("run");
    assert!(run.flags.skip_canary, "recorded in the run's flags (the audit)");
    let audit: Value = run.audit.clone();
    assert!(
        audit["risky_flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "--skip-canary")),
        "{audit}"
    );
}
