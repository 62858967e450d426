//! Staged runs (`rollout:` canary) end to end against the mock provider on 127.0.0.1, on a
//! simulated clock shared by the run and the mock (the canary's wait ticks, nothing sleeps), and
//! as real processes killed with SIGKILL during the canary's wait.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imcast::assign::{point, within, Purpose};
use imcast::clock::{Clock, SharedClock, SimClock, SystemClock};
use imcast::config::RepoPaths;
use imcast::exit::Exit;
use imcast::journal::{Journal, RecipientStatus, RunStatus, StageRow};
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request};
use imcast::send::{StopReason, StopToken};
use jiff::Timestamp;
use serde_json::Value;

use crate::common::{record_lines, MockServer};

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
    SystemClock.now()
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
    assert_eq!(
        first, expected,
        "the canary is sent first and is the stable sample"
    );

    // The report shows the stages: summary.json and report.html.
    let dir = s.report_dir.as_ref().expect("report");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["stages"][0]["name"], "canary");
    assert_eq!(summary["stages"][0]["gate"], "passed");
    assert_eq!(summary["stages"][1]["state"], "sent");
    assert_eq!(
        summary["stages"][1]["recipients"],
        1_000 - expected.len() as u64
    );
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains(r#"<tr data-stage="canary">"#), "stages table");
    assert!(html.contains("0 of "), "the gate's numbers");
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
    let s = run_campaign(
        request(&repo, &file, &bad),
        shared.clone(),
        StopToken::new(),
    )
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
    assert!(
        run.flags.skip_canary,
        "recorded in the run's flags (the audit)"
    );
    let audit: Value = run.audit.clone();
    assert!(
        audit["risky_flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "--skip-canary")),
        "{audit}"
    );
}

// ---- real processes -------------------------------------------------------------------------

fn imcast_run(repo: &Repo, file: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(crate::common::bin());
    c.arg("run")
        .arg(file)
        .arg("--yes")
        .stdin(std::process::Stdio::null())
        .current_dir(repo.dir.path())
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG");
    c
}

/// The stages of the campaign's latest run, read without taking part (None before it exists).
fn stages_now(repo: &Repo, campaign: &str) -> Option<Vec<StageRow>> {
    let db = repo.path(".imcast").join(imcast::journal::DB_FILE);
    let j = Journal::open_reader(&db, 256).ok()?;
    let run = j.latest_run(campaign, false).ok()??;
    j.stages(&run.id).ok()
}

/// SIGKILL during the canary's wait: the restarted run waits only what is left of the same
/// wait (its time is in the journal), then sends the rest: nobody twice, nobody skipped.
#[cfg(unix)]
#[test]
fn a_crash_during_the_canary_wait_resumes_at_the_gate() {
    use crate::common::OutputWithin;
    let repo = Repo::new();
    let rec = repo.path("record.jsonl");
    let mock = MockServer::recording(&rec);
    let ids = repo.audience(800);
    let file = repo.campaign(
        "can",
        &mock.endpoint(),
        "rollout: { canary: 10%, wait: 4s }\n",
    );
    let canary = canary_of("can", &ids, 10, 100);
    let mut child = imcast_run(&repo, &file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("imcast run");
    crate::common::poll_while_running(
        &mut child,
        Duration::from_secs(120),
        "the canary's wait",
        || {
            stages_now(&repo, "can").is_some_and(|s| {
                s.first()
                    .is_some_and(|c| c.gate.as_deref() == Some("waiting") && c.gate_at.is_some())
            })
        },
    );
    // `imcast status` says what the run waits for.
    let status = std::process::Command::new(crate::common::bin())
        .arg("status")
        .arg(&file)
        .current_dir(repo.dir.path())
        .env_remove("RUST_LOG")
        .output_limited()
        .expect("status");
    let shown = String::from_utf8_lossy(&status.stdout).to_string()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(
        shown.contains("waiting: the canary gate decides at"),
        "{shown}"
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let before = stages_now(&repo, "can").expect("stages");
    let gate_at = before[0].gate_at.expect("gate time");
    assert_eq!(before[1].state, "waiting", "the rest had not started");
    let at_kill = mock.stats().delivered;
    assert_eq!(at_kill, canary.len() as u64, "only the canary was sent");

    let out = imcast_run(&repo, &file).output_limited().expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Resuming"), "{stderr}");
    let after = stages_now(&repo, "can").expect("stages");
    assert_eq!(
        after[0].gate_at,
        Some(gate_at),
        "the same wait, not a new one"
    );
    assert_eq!(after[0].gate.as_deref(), Some("passed"));
    assert!(after[1].started_at.expect("rest started") >= gate_at);

    let stats = mock.stats();
    let delivered = deliveries(&rec, stats.delivered);
    assert_eq!(
        delivered.keys().copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>(),
        "nobody skipped"
    );
    assert!(delivered.values().all(|n| *n == 1), "nobody twice");
    assert_eq!(stats.duplicates, 0);
}

// ---- local-time waves ------------------------------------------------------------------------

/// An audience of `per_zone` users in each of `zones` (ids 300000.. in zone order), plus one row
/// with an unknown zone (line 2) and one with an empty cell.
fn zoned_audience(repo: &Repo, zones: &[&str], per_zone: u64) -> BTreeMap<String, BTreeSet<u64>> {
    let mut s = String::from("user_id,grp,tz\n999,g0,Mars/Olympus\n998,g0,\n");
    let mut by: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut id = 300_000u64;
    for i in 0..per_zone {
        for z in zones {
            s.push_str(&format!("{id},g{},{z}\n", i % 2));
            by.entry(z.to_string()).or_default().insert(id);
            id += 1;
        }
    }
    std::fs::write(repo.path("a.csv"), s).expect("audience");
    by
}

fn wave_request(repo: &Repo, file: &Path, m: &mock::MockHandle, occurrence: &str) -> Request {
    let mut r = request(repo, file, m);
    r.occurrence = Some(format!("tz@{occurrence}"));
    r
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

/// Three zones on the day New York springs forward (2026-03-08): each wave at 09:00 in its
/// zones, earliest first, on the simulated clock; New York's 09:00 is already EDT (13:00 UTC,
/// not 14:00). Every valid recipient once, each delivered no earlier than their wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_go_at_each_zones_local_time_across_a_dst_change() {
    let repo = Repo::new();
    let by_zone = zoned_audience(
        &repo,
        &["America/New_York", "Asia/Tokyo", "Europe/London"],
        40,
    );
    let file = repo.campaign(
        "tz",
        "http://127.0.0.1:9",
        "schedule: { local_time: \"09:00\" }\n",
    );
    let mut text = std::fs::read_to_string(&file).expect("read");
    text = text.replace(
        "audience: { csv: a.csv }",
        "audience: { csv: a.csv, timezone_column: tz }",
    );
    std::fs::write(&file, text).expect("write");
    // The occurrence fires at midnight UTC on the 8th; Tokyo's 09:00 is that instant.
    let clock = SimClock::new(ts("2026-03-07T23:59:00Z"));
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
    let s = run_campaign(
        wave_request(&repo, &file, &m, "2026-03-08T00:00:00Z"),
        shared,
        StopToken::new(),
    )
    .await
    .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    assert_eq!(
        s.counts[&RecipientStatus::Invalid],
        2,
        "unknown and empty zone"
    );

    let j = repo.journal();
    let run = j.latest_run("tz", false).expect("q").expect("run");
    let rows = j.stages(&run.id).expect("stages");
    let at: Vec<Timestamp> = rows.iter().filter_map(|r| r.not_before).collect();
    assert_eq!(
        at,
        vec![
            ts("2026-03-08T00:00:00Z"), // Tokyo, JST
            ts("2026-03-08T09:00:00Z"), // London, GMT
            ts("2026-03-08T13:00:00Z"), // New York, EDT from 02:00 that morning
        ]
    );
    for r in &rows {
        assert_eq!(r.state, "sent", "{r:?}");
        assert!(r.started_at.expect("started") >= r.not_before.expect("at"));
        assert_eq!(r.recipients, 40);
    }
    // The unknown zone is invalid with its line and the reason.
    let bad = j
        .recipients(&run.id)
        .expect("rows")
        .into_iter()
        .find(|r| r.id == Some(999))
        .expect("row 999");
    assert_eq!(bad.line, 2);
    assert!(
        bad.error_message
            .as_deref()
            .or(bad.detail.as_deref())
            .unwrap_or("")
            .contains("Mars/Olympus"),
        "{bad:?}"
    );

    // Each recipient once, no earlier than their zone's wave.
    let lines = record_lines(&rec, stats.delivered);
    assert_eq!(lines.len(), 120);
    assert_eq!(stats.duplicates, 0);
    let wave_of = |zone: &str| match zone {
        "Asia/Tokyo" => at[0],
        "Europe/London" => at[1],
        _ => at[2],
    };
    let mut seen = BTreeSet::new();
    for v in &lines {
        let id = v["recipient"].as_u64().expect("id");
        assert!(seen.insert(id), "{id} twice");
        let when = ts(v["time"].as_str().expect("time"));
        let zone = by_zone
            .iter()
            .find(|(_, ids)| ids.contains(&id))
            .map(|(z, _)| z.as_str())
            .expect("a zone");
        assert!(when >= wave_of(zone), "{id} in {zone} at {when}");
    }
}

/// A wave missed by more than `not_after` (the run starts late) is `expired` for its
/// recipients; later waves still go at their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_wave_is_expired_and_the_next_still_goes() {
    let repo = Repo::new();
    let by_zone = zoned_audience(&repo, &["Asia/Tokyo", "Europe/London"], 10);
    let file = repo.campaign(
        "tz",
        "http://127.0.0.1:9",
        "schedule: { local_time: \"09:00\", not_after: 30m }\n",
    );
    let mut text = std::fs::read_to_string(&file).expect("read");
    text = text.replace(
        "audience: { csv: a.csv }",
        "audience: { csv: a.csv, timezone_column: tz, default_timezone: Europe/London }",
    );
    std::fs::write(&file, text).expect("write");
    // Two hours after Tokyo's 09:00.
    let clock = SimClock::new(ts("2026-06-01T02:00:00Z"));
    let shared: SharedClock = Arc::new(clock.clone());
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        clock: shared.clone(),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(
        wave_request(&repo, &file, &m, "2026-06-01T00:00:00Z"),
        shared,
        StopToken::new(),
    )
    .await
    .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Incomplete, "expired recipients: exit 3");
    assert_eq!(s.counts[&RecipientStatus::Expired], 10, "Tokyo's wave");
    // London (BST: 08:00 UTC) plus the empty-zone row defaulted to London.
    assert_eq!(s.counts[&RecipientStatus::Sent], 11);
    assert_eq!(stats.delivered, 11);
    let j = repo.journal();
    let run = j.latest_run("tz", false).expect("q").expect("run");
    let rows = j.stages(&run.id).expect("stages");
    assert_eq!(rows[0].state, "expired");
    assert_eq!(rows[1].not_before, Some(ts("2026-06-01T08:00:00Z")));
    let expired: BTreeSet<u64> = j
        .recipients(&run.id)
        .expect("rows")
        .into_iter()
        .filter(|r| r.status == RecipientStatus::Expired)
        .filter_map(|r| r.id)
        .collect();
    assert_eq!(&expired, &by_zone["Asia/Tokyo"]);
}

/// An ad-hoc run (no occurrence) of a local-time campaign stopped after its first wave and
/// resumed after midnight in the schedule's zone continues the same run: its waves keep the date
/// it started with (recorded in the run's audit), so the plan is not "changed" (exit 7), and the
/// next wave goes at its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_hoc_local_time_run_resumed_after_midnight_keeps_its_wave_date() {
    let repo = Repo::new();
    let by_zone = zoned_audience(&repo, &["Europe/London", "Pacific/Honolulu"], 10);
    let file = repo.campaign(
        "tz",
        "http://127.0.0.1:9",
        "schedule: { local_time: \"09:00\", cron: \"0 0 * * *\", timezone: Asia/Tokyo }\n\
         guard: { max_invalid_ratio: 0.5 }\n",
    );
    let mut text = std::fs::read_to_string(&file).expect("read");
    text = text.replace(
        "audience: { csv: a.csv }",
        "audience: { csv: a.csv, timezone_column: tz }",
    );
    std::fs::write(&file, text).expect("write");
    // 16:00 on 1 June in Tokyo (the schedule's zone, whose date the waves take). London's 09:00
    // is 08:00 UTC (BST), Honolulu's 19:00 UTC (04:00 on 2 June in Tokyo).
    let clock = SimClock::new(ts("2026-06-01T07:00:00Z"));
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
    // The first session stops once London's wave (two Content groups: two calls) is sent.
    let stop = StopToken::new();
    let mut first = request(&repo, &file, &m);
    let stopper = stop.clone();
    first.hooks.progress = Some(Arc::new(move |p: &imcast::send::Progress| {
        if p.calls_done >= 2 {
            stopper.stop();
        }
    }));
    let s1 = run_campaign(first, shared.clone(), stop)
        .await
        .expect("first session");
    assert_eq!(
        s1.counts.get(&RecipientStatus::Sent).copied(),
        Some(10),
        "{s1:?}"
    );
    assert_eq!(
        s1.counts.get(&RecipientStatus::Pending).copied(),
        Some(10),
        "Honolulu waits: {s1:?}"
    );
    let run = repo
        .journal()
        .latest_run("tz", false)
        .expect("q")
        .expect("run");
    assert_eq!(run.audit["wave_date"], "2026-06-01");

    // Past midnight in Tokyo (03:30 on 2 June): the run's waves are still 1 June's.
    clock.advance_to(ts("2026-06-01T18:30:00Z"));
    let s = run_campaign(request(&repo, &file, &m), shared, StopToken::new())
        .await
        .expect("resumed run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(
        s.exit,
        Exit::Ok,
        "{s:?}\n{s1:?}\n{:?}",
        repo.journal().stages(&run.id)
    );
    assert_eq!(s.run_id, s1.run_id, "the same run resumed");
    assert_eq!(
        repo.journal()
            .run(&run.id)
            .expect("q")
            .expect("run")
            .plan_hash,
        run.plan_hash,
        "the same plan"
    );
    assert_eq!(s.counts.get(&RecipientStatus::Sent).copied(), Some(20));
    let j = repo.journal();
    let rows = j.stages(&run.id).expect("stages");
    let at: Vec<Timestamp> = rows.iter().filter_map(|r| r.not_before).collect();
    assert_eq!(
        at,
        vec![ts("2026-06-01T08:00:00Z"), ts("2026-06-01T19:00:00Z")]
    );
    assert!(rows.iter().all(|r| r.state == "sent"), "{rows:?}");
    // Everyone once, Honolulu no earlier than its wave.
    let got = deliveries(&rec, stats.delivered);
    let all: BTreeSet<u64> = by_zone.values().flatten().copied().collect();
    assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), all);
    assert!(got.values().all(|n| *n == 1));
    for v in record_lines(&rec, stats.delivered) {
        let id = v["recipient"].as_u64().expect("id");
        if by_zone["Pacific/Honolulu"].contains(&id) {
            // At 1 June's wave, not 2 June's.
            let when = ts(v["time"].as_str().expect("time"));
            assert!(when >= at[1] && when < ts("2026-06-01T20:00:00Z"), "{v}");
        }
    }
}

// ---- plan output -----------------------------------------------------------------------------

#[test]
fn plan_shows_the_canary_stage_and_its_gate() {
    let f = crate::common::Fixture::new();
    let mut csv = String::from("user_id,grp\n");
    for i in 0..1_000 {
        csv.push_str(&format!("{},g{}\n", 500_000 + i, i % 2));
    }
    f.write("a.csv", &csv);
    f.write(
        "c.yaml",
        &format!(
            "{}audience: {{ csv: a.csv }}\nmessage: {{ type: text, text: \"Hi {{{{ grp }}}}\" }}\n\
             rollout: {{ canary: 2%, wait: 15m, max_failure_ratio: 0.05 }}\n",
            crate::common::HEAD
        ),
    );
    let out = f.imcast(&["plan", "c.yaml", "--now", "2026-03-01T00:00:00Z"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = f.redact(&String::from_utf8_lossy(&out.stdout));
    let stages: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("stages") || l.starts_with("           "))
        .collect();
    insta::assert_snapshot!(stages.join("\n"));
}

#[test]
fn plan_shows_the_waves_and_warns_when_one_overruns_the_next() {
    let f = crate::common::Fixture::new();
    let mut csv = String::from("user_id,grp,tz\n1,g0,Mars/Olympus\n");
    for i in 0..30u64 {
        for (k, z) in [
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Europe/Berlin",
            "Europe/Paris",
        ]
        .iter()
        .enumerate()
        {
            csv.push_str(&format!("{},g{},{z}\n", 600_000 + i * 10 + k as u64, i % 2));
        }
    }
    f.write("a.csv", &csv);
    f.write(
        "c.yaml",
        &format!(
            "{}audience: {{ csv: a.csv, timezone_column: tz }}\nmessage: {{ type: text, text: \"Hi {{{{ grp }}}}\" }}\n\
             schedule: {{ local_time: \"09:00\", cron: \"0 0 * * *\", timezone: Asia/Kathmandu }}\n\
             throttle: {{ limit: 1, window: 1m }}\n",
            crate::common::HEAD
        ),
    );
    let out = f.imcast(&["plan", "c.yaml", "--now", "2026-03-28T12:00:00Z"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = f.redact(&String::from_utf8_lossy(&out.stdout));
    let shown: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("audience")
                || l.starts_with("stages")
                || l.starts_with("           ")
                || l.starts_with("warning")
        })
        .collect();
    insta::assert_snapshot!(shown.join("\n"));

    let out = f.imcast(&[
        "plan",
        "c.yaml",
        "--now",
        "2026-03-28T12:00:00Z",
        "--output",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let waves = v["stages"].as_array().expect("stages");
    assert_eq!(waves.len(), 3, "Berlin and Paris share one instant");
    assert_eq!(
        waves[2]["zones"],
        serde_json::json!(["Europe/Berlin", "Europe/Paris"])
    );
    assert_eq!(waves[2]["recipients"], 60);
}

/// SIGKILL while a real `imcast run` waits for its second wave: the restarted run resumes at
/// that wave (the first is not sent again), sends it at its time, and everyone gets one message.
/// The waves are 09:00-style local times of two real zones 15 (or 30) minutes apart, chosen so
/// the first is just past (within `not_after`) and the second is the next whole minute.
#[cfg(unix)]
#[test]
fn a_crash_between_waves_resumes_at_the_next_wave() {
    use crate::common::OutputWithin;
    use jiff::tz::TimeZone;
    let now = SystemClock.now();
    let utc_date = now.to_zoned(TimeZone::UTC).date();
    let mut next = (now.as_second() / 60 + 1) * 60;
    if next - now.as_second() < 8 {
        next += 60;
    }
    // Zones whose local date is the UTC date at that hour (the run's wave date is UTC's).
    let (first, second) = if now.to_zoned(TimeZone::UTC).hour() < 18 {
        ("Asia/Kathmandu", "Asia/Kolkata")
    } else {
        ("America/St_Johns", "America/Halifax")
    };
    let tz2 = TimeZone::get(second).expect("zone");
    let (t2, local) = (0..3)
        .map(|k| Timestamp::from_second(next + 60 * k).expect("t"))
        .map(|t| (t, t.to_zoned(tz2.clone()).time()))
        .find(|(t, l)| imcast::stages::local_instant(utc_date, *l, &tz2) == *t)
        .expect("a wave time on today's date");

    let repo = Repo::new();
    let rec = repo.path("record.jsonl");
    let mock = MockServer::recording(&rec);
    let by_zone = zoned_audience(&repo, &[first, second], 50);
    let file = repo.campaign(
        "tz",
        &mock.endpoint(),
        &format!(
            "schedule: {{ local_time: \"{}\" }}\n",
            local.strftime("%H:%M")
        ),
    );
    let text = std::fs::read_to_string(&file).expect("read").replace(
        "audience: { csv: a.csv }",
        "audience: { csv: a.csv, timezone_column: tz }",
    );
    std::fs::write(&file, text).expect("write");

    let mut child = imcast_run(&repo, &file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("imcast run");
    crate::common::poll_while_running(
        &mut child,
        Duration::from_secs(60),
        "the wait for the second wave",
        || {
            stages_now(&repo, "tz")
                .is_some_and(|s| s.len() == 2 && s[0].state == "sent" && s[1].state == "waiting")
        },
    );
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        SystemClock.now() < t2,
        "killed before the second wave was due"
    );
    let at_kill = deliveries(&rec, mock.stats().delivered);
    assert_eq!(
        at_kill.keys().copied().collect::<BTreeSet<_>>(),
        by_zone[first],
        "only the first wave was sent"
    );

    let out = imcast_run(&repo, &file).output_limited().expect("resume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Resuming"), "{stderr}");
    let rows = stages_now(&repo, "tz").expect("stages");
    assert_eq!(rows[1].not_before, Some(t2));
    assert!(rows[1].started_at.expect("second wave started") >= t2);

    let stats = mock.stats();
    let delivered = deliveries(&rec, stats.delivered);
    let all: BTreeSet<u64> = by_zone.values().flatten().copied().collect();
    assert_eq!(
        delivered.keys().copied().collect::<BTreeSet<_>>(),
        all,
        "nobody skipped"
    );
    assert!(delivered.values().all(|n| *n == 1), "nobody twice");
    assert_eq!(stats.duplicates, 0);
}

// ---- the daemon -------------------------------------------------------------------------------

/// The daemon sends the canary of a scheduled occurrence and waits; SIGKILL during the wait, a
/// new daemon resumes the same run of the occurrence at the gate (the same decision time), then
/// sends the rest: one occurrence, one run, everyone once.
#[cfg(unix)]
#[test]
fn the_daemon_resumes_a_canary_wait_after_sigkill() {
    use imcast::daemon::state;
    let repo = Repo::new();
    let root = std::fs::canonicalize(repo.dir.path()).expect("canon");
    let rec = root.join("record.jsonl");
    let mock = MockServer::recording(&rec);
    let campaigns = root.join("campaigns");
    std::fs::create_dir_all(&campaigns).expect("mkdir");
    let ids: Vec<u64> = (0..600).map(|i| 700_000 + i).collect();
    let mut csv = String::from("user_id,grp\n");
    for (i, id) in ids.iter().enumerate() {
        csv.push_str(&format!("{id},g{}\n", i % 3));
    }
    std::fs::write(campaigns.join("a.csv"), csv).expect("audience");
    let at = Timestamp::from_second(SystemClock.now().as_second() + 3).expect("at");
    std::fs::write(
        campaigns.join("can.yaml"),
        format!(
            "version: 1\nname: can\nprovider: {{ app_id: 1, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: batch\nsender: 10001\naudience: {{ csv: a.csv }}\n\
             message: {{ type: text, text: \"Hi {{{{ grp }}}}\" }}\n\
             schedule: {{ at: {at} }}\nrollout: {{ canary: 10%, wait: 4s }}\n",
            mock.endpoint()
        ),
    )
    .expect("campaign");
    let log = root.join("daemon.log");
    let daemon = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        std::process::Command::new(crate::common::bin())
            .arg("daemon")
            .arg(&campaigns)
            .arg("--state-dir")
            .arg(root.join(".imcast"))
            .arg("--report-dir")
            .arg(root.join("reports"))
            .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
            .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
            .env_remove("VOLC_SECRETKEY_FILE")
            .env_remove("IMCAST_FAILPOINT")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon")
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let stages = || {
        let db = root.join(".imcast").join(imcast::journal::DB_FILE);
        let j = Journal::open_reader(&db, 256).ok()?;
        let run = j.latest_run("can", false).ok()??;
        j.stages(&run.id).ok()
    };
    let waiting = |s: &Option<Vec<StageRow>>| {
        s.as_ref().is_some_and(|s| {
            s.first()
                .is_some_and(|c| c.gate.as_deref() == Some("waiting") && c.gate_at.is_some())
        })
    };

    let mut first = daemon();
    crate::common::poll_while_running(
        &mut first,
        Duration::from_secs(120),
        "the canary wait",
        || waiting(&stages()),
    );
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let before = stages().expect("stages");
    let gate_at = before[0].gate_at.expect("gate time");
    let canary = canary_of("can", &ids, 10, 100);
    assert_eq!(
        deliveries(&rec, mock.stats().delivered)
            .keys()
            .copied()
            .collect::<BTreeSet<_>>(),
        canary,
        "only the canary before the kill"
    );

    let mut second = daemon();
    let conn = || state::open(&root.join(".imcast")).expect("state");
    crate::common::poll_while_running(&mut second, Duration::from_secs(120), "the rest", || {
        state::occurrences(&conn(), Some("can"))
            .unwrap_or_default()
            .iter()
            .any(|r| r.finished_at.is_some())
    });
    let _ = second.kill();
    let _ = second.wait();
    let occ = state::occurrences(&conn(), Some("can")).expect("rows");
    assert_eq!(occ.len(), 1, "{occ:?}");
    assert_eq!(occ[0].status, "done", "{occ:?}\n{}", read_log());
    let journal = repo.journal();
    assert_eq!(journal.runs("can").expect("runs").len(), 1, "one run");
    let after = stages().expect("stages");
    assert_eq!(after[0].gate_at, Some(gate_at), "the same wait");
    assert_eq!(after[0].gate.as_deref(), Some("passed"));
    let stats = mock.stats();
    let got = deliveries(&rec, stats.delivered);
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>(),
        "nobody skipped"
    );
    assert!(got.values().all(|n| *n == 1), "nobody twice");
}

// ---- the plan ---------------------------------------------------------------------------------

/// With stages the plan's calls are ordered by stage, each stage one contiguous range of call
/// numbers, every valid recipient in exactly one call — the call its audience row names (what the
/// journal is seeded with) — also when Contents are re-rendered at send time.
#[test]
fn staged_calls_are_contiguous_and_match_each_rows_call() {
    use imcast::plan::{build_with, PlanOptions, RowStatus, StoreLimits};
    let repo = Repo::new();
    let mut csv = String::from("user_id,grp\n");
    for i in 0..3_000u64 {
        csv.push_str(&format!("{},g{}\n", 800_000 + i, i % 7));
    }
    std::fs::write(repo.path("a.csv"), csv).expect("audience");
    let file = repo.campaign("can", "http://127.0.0.1:9", "rollout: { canary: 5% }\n");
    let c = imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("campaign");
    for limits in [
        StoreLimits::default(),
        StoreLimits {
            max_contents: 1,
            max_bytes: 1 << 20,
        },
    ] {
        let plan = build_with(&c, &PlanOptions::default(), limits).expect("plan");
        let stages = plan.stages();
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0].first_call, 0);
        assert_eq!(stages[1].first_call, stages[0].calls);
        assert_eq!(stages[0].calls + stages[1].calls, plan.counts().calls);
        let calls: Vec<_> = plan.calls().collect::<Result<_, _>>().expect("calls");
        let mut call_of = BTreeMap::new();
        for call in &calls {
            for id in &call.receivers {
                assert!(call_of.insert(*id, call.seq).is_none(), "{id} in two calls");
            }
        }
        assert_eq!(call_of.len(), 3_000);
        let canary: BTreeSet<u64> = calls[..stages[0].calls as usize]
            .iter()
            .flat_map(|c| c.receivers.clone())
            .collect();
        let ids: Vec<u64> = (0..3_000).map(|i| 800_000 + i).collect();
        assert_eq!(canary, canary_of("can", &ids, 5, 100));
        for row in plan.rows() {
            let row = row.expect("row");
            let RowStatus::Valid { call } = row.status else {
                panic!("{row:?}")
            };
            assert_eq!(Some(&call), call_of.get(&row.id.expect("id")), "{row:?}");
        }
    }
}

/// `imcast daemon` on `<root>/campaigns` with the mock's credentials, logging to `log`.
fn daemon_proc(root: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    std::process::Command::new(crate::common::bin())
        .arg("daemon")
        .arg(root.join("campaigns"))
        .arg("--state-dir")
        .arg(root.join(".imcast"))
        .arg("--report-dir")
        .arg(root.join("reports"))
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon")
}

/// Under the daemon a failing canary pauses the campaign (the rest is not sent) until a person
/// runs `imcast resume NAME`; then the same run sends the rest, the gate recorded `overridden`.
#[cfg(unix)]
#[test]
fn under_the_daemon_a_failed_canary_waits_for_imcast_resume() {
    use crate::common::OutputWithin;
    use imcast::daemon::state;
    let repo = Repo::new();
    let root = std::fs::canonicalize(repo.dir.path()).expect("canon");
    let rec = root.join("record.jsonl");
    // Half the receivers of every call are refused: the canary fails its 2 % bound.
    let rec_arg = rec.to_str().expect("utf-8 path");
    let mock = MockServer::start(&[
        "--limit",
        "100000",
        "--window",
        "1s",
        "--failed-receiver-rate",
        "0.5",
        "--record",
        rec_arg,
    ]);
    let campaigns = root.join("campaigns");
    std::fs::create_dir_all(&campaigns).expect("mkdir");
    let ids: Vec<u64> = (0..400).map(|i| 900_000 + i).collect();
    let mut csv = String::from("user_id,grp\n");
    for (i, id) in ids.iter().enumerate() {
        csv.push_str(&format!("{id},g{}\n", i % 2));
    }
    std::fs::write(campaigns.join("a.csv"), csv).expect("audience");
    let at = Timestamp::from_second(SystemClock.now().as_second() + 3).expect("at");
    std::fs::write(
        campaigns.join("can.yaml"),
        format!(
            "version: 1\nname: can\nprovider: {{ app_id: 1, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: batch\nsender: 10001\naudience: {{ csv: a.csv }}\n\
             message: {{ type: text, text: \"Hi {{{{ grp }}}}\" }}\nretry: {{ max_attempts: 1 }}\n\
             breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n\
             schedule: {{ at: {at} }}\nrollout: {{ canary: 25%, wait: 1s }}\n",
            mock.endpoint()
        ),
    )
    .expect("campaign");
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let conn = || state::open(&root.join(".imcast")).expect("state");
    let stages = || {
        let db = root.join(".imcast").join(imcast::journal::DB_FILE);
        let j = Journal::open_reader(&db, 256).ok()?;
        let run = j.latest_run("can", false).ok()??;
        j.stages(&run.id).ok()
    };
    let mut d = daemon_proc(&root, &log);
    crate::common::poll_while_running(&mut d, Duration::from_secs(120), "the failed gate", || {
        stages().is_some_and(|s| {
            s.first()
                .is_some_and(|c| c.gate.as_deref() == Some("failed"))
        }) && state::campaign(&conn(), "can")
            .ok()
            .flatten()
            .is_some_and(|c| c.paused)
    });
    let canary = canary_of("can", &ids, 25, 100);
    let got = deliveries(&rec, mock.stats().delivered);
    assert!(
        got.keys().all(|id| canary.contains(id)),
        "only canary recipients were sent"
    );
    let j = repo.journal();
    let run = j.latest_run("can", false).expect("q").expect("run");
    assert_eq!(run.status, RunStatus::Paused, "{}", read_log());
    assert!(run
        .stop_reason
        .as_deref()
        .is_some_and(|r| r.contains("failed its gate")));
    assert_eq!(
        j.counts(&run.id).expect("counts")[&RecipientStatus::Pending],
        (ids.len() - canary.len()) as u64
    );

    // A person resumes it.
    let out = std::process::Command::new(crate::common::bin())
        .args(["resume", "can", "--state-dir"])
        .arg(root.join(".imcast"))
        .current_dir(&root)
        .env_remove("RUST_LOG")
        .output_limited()
        .expect("imcast resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::common::poll_while_running(&mut d, Duration::from_secs(120), "the rest", || {
        state::occurrences(&conn(), Some("can"))
            .unwrap_or_default()
            .iter()
            .any(|r| r.finished_at.is_some())
    });
    let _ = d.kill();
    let _ = d.wait();
    let j = repo.journal();
    assert_eq!(j.runs("can").expect("runs").len(), 1, "the same run");
    let rows = stages().expect("stages");
    assert_eq!(
        rows[0].gate.as_deref(),
        Some("overridden"),
        "{}",
        read_log()
    );
    assert_eq!(rows[1].state, "sent");
    let counts = j.counts(&run.id).expect("counts");
    assert_eq!(
        counts.get(&RecipientStatus::Pending).copied().unwrap_or(0),
        0,
        "{counts:?}"
    );
    let got = deliveries(&rec, mock.stats().delivered);
    assert!(got.values().all(|n| *n == 1), "nobody twice");
    assert_eq!(
        counts[&RecipientStatus::Sent],
        got.len() as u64,
        "every delivery is a sent recipient"
    );
    assert_eq!(
        counts[&RecipientStatus::Sent] + counts[&RecipientStatus::Failed],
        ids.len() as u64,
        "nobody skipped: {counts:?}"
    );
}
