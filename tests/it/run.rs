//! `imcast run` end to end against the mock provider over real HTTP on 127.0.0.1: in-process
//! (`mock::start` + `run::run_campaign`) and as real processes (`imcast mock-server` and the
//! built binary), with real files in temp dirs. Also quiet hours in the engine on a simulated clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imcast::clock::{Clock, SharedClock, SimClock, SystemClock};
use imcast::config::RepoPaths;
use imcast::exit::Exit;
use imcast::journal::{CallState, Journal, RecipientStatus, RunFlags};
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request, RunSummary};
use imcast::send::{Progress, StopReason, StopToken};
use serde_json::Value;

use crate::common::{
    bin, max_in_window, poll_while_running, record_lines, stamps, wait_within, MockServer,
    OutputWithin, CHILD_LIMIT,
};

/// A campaigns repository in a temp dir: imcast.toml, an audience, campaign files.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(toml: &str) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("imcast.toml"), toml).expect("write imcast.toml");
        Repo { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `n` valid users (ids 100000..) in `groups` content groups, plus `extra` raw lines.
    fn audience(&self, file: &str, n: u64, groups: u64, extra: &[&str]) -> Vec<u64> {
        let mut s = String::from("user_id,grp\n");
        let ids: Vec<u64> = (0..n).map(|i| 100_000 + i).collect();
        for (i, id) in ids.iter().enumerate() {
            s.push_str(&format!("{id},g{}\n", i as u64 % groups.max(1)));
        }
        for l in extra {
            s.push_str(l);
            s.push('\n');
        }
        std::fs::write(self.path(file), s).expect("write audience");
        ids
    }

    fn campaign(&self, name: &str, audience: &str, endpoint: &str, extra: &str) -> PathBuf {
        let text = format!(
            "version: 1\nname: {name}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: {audience}\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"Hello {{{{ grp }}}} from {{{{ campaign.name }}}}\"\n\
             breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n{extra}"
        );
        let p = self.path(&format!("{name}.yaml"));
        std::fs::write(&p, text).expect("write campaign");
        p
    }

    fn paths(&self, file: &Path) -> RepoPaths {
        RepoPaths::discover(file, None, None, None)
    }

    fn journal(&self) -> Journal {
        Journal::open(&self.path(".imcast")).expect("journal")
    }
}

fn load(file: &Path) -> imcast::spec::Campaign {
    imcast::spec::load(file, &imcast::spec::LoadOptions::default()).expect("valid campaign")
}

fn request(repo: &Repo, file: &Path, m: &mock::MockHandle) -> Request {
    let mut r = Request::new(load(file), repo.paths(file));
    r.target = Some((m.endpoint(), m.credentials()));
    r.flags.mock = true;
    // These tests read the JSONL rows (on request; the default is CSV only).
    r.report_formats = Some(imcast::config::ReportFormats {
        csv: true,
        jsonl: true,
    });
    r
}

fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// The report rows of a finished run session.
fn report_rows(s: &RunSummary) -> Vec<Value> {
    let dir = s.report_dir.as_ref().expect("report written");
    let text = std::fs::read_to_string(dir.join("recipients.jsonl")).expect("recipients.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// id → status from report rows (valid ids only).
fn statuses(rows: &[Value]) -> BTreeMap<u64, String> {
    rows.iter()
        .filter(|r| r["status"] != "duplicate")
        .filter_map(|r| {
            Some((
                r["id"].as_u64()?,
                r["status"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// Deliveries per recipient in a mock record (see `common::record_lines`).
fn record(lines: &[Value]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for v in lines {
        *m.entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    m
}

fn with_status(st: &BTreeMap<u64, String>, s: &str) -> BTreeSet<u64> {
    st.iter()
        .filter(|(_, v)| v.as_str() == s)
        .map(|(k, _)| *k)
        .collect()
}

/// Receivers of the run's calls whose outcome was unknown, from the journal's calls.
fn unknown_call_receivers(j: &Journal, run: &str) -> (u64, BTreeSet<u64>) {
    let unknown: Vec<_> = j
        .calls(run)
        .expect("calls")
        .into_iter()
        .filter(|c| c.state == CallState::Unknown)
        .collect();
    let set = unknown.iter().flat_map(|c| c.receivers.clone()).collect();
    (unknown.len() as u64, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_valid_recipient_delivered_exactly_once_and_rows_match_the_audience() {
    let repo = Repo::new(
        "[account]\nsuppress = [\"optout.csv\"]\n[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n",
    );
    std::fs::write(repo.path("optout.csv"), "user_id\n100003\n100007\n").expect("optout");
    let ids = repo.audience("a.csv", 1_200, 7, &["=1+2,g1", "100001,g1"]);
    let file = repo.campaign("once", "a.csv", "http://127.0.0.1:9", "");
    let rec = repo.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(request(&repo, &file, &m), system(), StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    let rows = report_rows(&s);
    assert_eq!(rows.len(), 1_202, "one report row per audience row");
    let st = statuses(&rows);
    let sent = with_status(&st, "sent");
    let expected: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|i| *i != 100_003 && *i != 100_007)
        .collect();
    assert_eq!(sent, expected);
    assert_eq!(
        with_status(&st, "suppressed"),
        BTreeSet::from([100_003, 100_007])
    );
    let counts: u64 = s.counts.values().sum();
    assert_eq!(counts, 1_202, "statuses sum to the audience rows");
    assert_eq!(s.counts[&RecipientStatus::Invalid], 1);
    assert_eq!(s.counts[&RecipientStatus::Duplicate], 1);
    let delivered = record(&record_lines(&rec, stats.delivered));
    assert_eq!(delivered.keys().copied().collect::<BTreeSet<_>>(), expected);
    assert!(delivered.values().all(|&n| n == 1), "exactly once");
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.delivered, expected.len() as u64);
    report_csv_matches_jsonl(&s, &rows);
}

/// recipients.csv holds the same rows as recipients.jsonl, in the same order, with formula-like
/// cells neutralized.
fn report_csv_matches_jsonl(s: &RunSummary, rows: &[Value]) {
    let dir = s.report_dir.as_ref().expect("report written");
    let mut r = csv::Reader::from_path(dir.join("recipients.csv")).expect("recipients.csv");
    let header: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header[..4], ["line", "id", "raw_id", "status"]);
    let records: Vec<csv::StringRecord> = r.records().collect::<Result<_, _>>().expect("rows");
    assert_eq!(
        records.len(),
        rows.len(),
        "CSV and JSONL have the same rows"
    );
    for (c, j) in records.iter().zip(rows) {
        for (i, name) in header.iter().enumerate() {
            let cell = &c[i];
            let want = match &j[name.as_str()] {
                Value::Null => String::new(),
                Value::String(v) if v.starts_with('=') => format!("'{v}"),
                Value::String(v) => v.clone(),
                v => v.to_string(),
            };
            assert_eq!(cell, want, "column {name} of line {}", &c[0]);
        }
    }
    assert!(
        records
            .iter()
            .any(|c| &c[2] == "'=1+2" && &c[3] == "invalid"),
        "a formula-like id is neutralized in the CSV"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_every_recipient_final_with_zero_duplicates() {
    let repo = Repo::new("[limits.batch]\nlimit = 1000000\nwindow = \"1s\"\n");
    // 300 content groups of 20: 300 calls, enough for every fault kind to occur.
    let ids = repo.audience("a.csv", 6_000, 300, &[]);
    let file = repo.campaign("faults", "a.csv", "http://127.0.0.1:9", "");
    let rec = repo.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 1_000_000,
        window: Duration::from_secs(1),
        fail_rate: 0.05,
        fail_after_rate: 0.02,
        lost_rate: 0.02,
        failed_receiver_rate: 0.03,
        seed: 11,
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(request(&repo, &file, &m), system(), StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(
        s.exit,
        Exit::Incomplete,
        "failed/unknown recipients: exit 3"
    );
    let rows = report_rows(&s);
    assert_eq!(rows.len(), ids.len());
    let st = statuses(&rows);
    assert!(
        st.values().all(|v| v != "pending"),
        "every recipient has a final status"
    );
    let delivered = record(&record_lines(&rec, stats.delivered));
    assert_eq!(stats.duplicates, 0, "zero duplicates at the mock");
    assert!(
        delivered.values().all(|&n| n == 1),
        "zero duplicates in the record"
    );
    for id in delivered.keys() {
        let v = st.get(id).map(String::as_str);
        assert!(
            matches!(v, Some("sent" | "unknown")),
            "{id} reached the mock but is {v:?}"
        );
    }
    for id in with_status(&st, "sent") {
        assert_eq!(delivered.get(&id), Some(&1), "sent {id} was delivered once");
    }
    let j = repo.journal();
    let run = s.run_id.clone().expect("run id");
    let (unknown_calls, unknown_receivers) = unknown_call_receivers(&j, &run);
    assert_eq!(
        with_status(&st, "unknown"),
        unknown_receivers,
        "unknown = receivers of calls whose outcome was unknown"
    );
    let faulted: u64 = ["fail", "fail_after", "lost"]
        .iter()
        .map(|k| stats.faults.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(faulted > 0 && stats.failed_receivers > 0, "{stats:?}");
    assert_eq!(
        unknown_calls, faulted,
        "each 500/lost answer leaves exactly its call unknown"
    );
    // FailedReceiver ids are sent again (re-queued), not failed at once: only one refused on
    // each of its 3 tries (the default retry.max_attempts) may end failed with that code.
    assert!(stats.failed_receivers > 0);
    let refused_failed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["status"] == "failed" && r["error_code"] == "FailedReceiver")
        .collect();
    for r in &refused_failed {
        assert!(r["attempts"].as_u64() >= Some(3), "failed too early: {r}");
    }
    assert!(
        refused_failed.len() * 20 < stats.failed_receivers as usize,
        "{} of {} refusals ended failed",
        refused_failed.len(),
        stats.failed_receivers
    );
    assert!(
        rows.iter()
            .any(|r| r["status"] == "sent" && r["attempts"].as_u64() > Some(1)),
        "refused receivers were sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_to_sends_the_real_content_to_seed_ids_only() {
    let repo = Repo::new("[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n");
    repo.audience("a.csv", 300, 3, &[]);
    let file = repo.campaign("seeded", "a.csv", "http://127.0.0.1:9", "");
    let rec = repo.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 100_000,
        window: Duration::from_secs(1),
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut r = request(&repo, &file, &m);
    r.flags.test_to = vec![7, 8, 9, 7];
    let t = run_campaign(r, system(), StopToken::new())
        .await
        .expect("test run");
    assert_eq!(t.exit, Exit::Ok);
    let delivered = record(&record_lines(&rec, m.stats().delivered));
    assert_eq!(
        delivered.keys().copied().collect::<Vec<_>>(),
        vec![7, 8, 9],
        "only the seed ids"
    );
    let text = std::fs::read_to_string(&rec).expect("record");
    assert!(
        text.contains("Hello g0 from seeded") && text.contains("Hello g1 from seeded"),
        "the real Content rendered for the first recipients: {text}"
    );
    let j = repo.journal();
    let test_run = j
        .run(t.run_id.as_deref().expect("id"))
        .expect("q")
        .expect("run");
    assert!(test_run.is_test);
    assert!(
        j.latest_run("seeded", false).expect("q").is_none(),
        "the campaign's run is untouched"
    );
    // The campaign itself then runs in full.
    let s = run_campaign(request(&repo, &file, &m), system(), StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok);
    assert_eq!(s.counts[&RecipientStatus::Sent], 300);
    assert_ne!(s.run_id, t.run_id);
    // One variant function: a test call of a Content carries the campaign run's variant id.
    let variants = |s: &RunSummary| -> BTreeSet<String> {
        report_rows(s)
            .iter()
            .filter_map(|r| r["variant"].as_str().map(str::to_string))
            .filter(|v| !v.is_empty())
            .collect()
    };
    let (tested, planned) = (variants(&t), variants(&s));
    assert_eq!(tested.len(), 3, "{tested:?}");
    assert!(tested.is_subset(&planned), "{tested:?} not in {planned:?}");
}

/// A campaign without `breaker:` stops at `imcast.toml`'s `[breaker]` (before, the campaign's
/// built-in default of 5 failed calls in a row always won and `[breaker]` was never read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imcast_toml_breaker_applies_to_a_campaign_without_one() {
    let repo = Repo::new(
        "[breaker]\nconsecutive_failures = 2\nwindow_calls = 0\n[send]\nmax_batch_in_flight = 1\n",
    );
    // Ten Contents: ten calls, one at a time.
    repo.audience("a.csv", 10, 10, &[]);
    let file = repo.path("nobreaker.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: nobreaker\nprovider: { app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }\n\
         action: batch\nsender: 10001\naudience: { csv: a.csv }\n\
         message: { type: text, text: \"Hello {{ grp }}\" }\n",
    )
    .expect("write campaign");
    // Every request is answered HTTP 500: each call's outcome is unknown, a failed call.
    let m = mock::start(MockConfig {
        fail_rate: 1.0,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(request(&repo, &file, &m), system(), StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Breaker, "{s:?}");
    match &s.reason {
        Some(StopReason::Breaker { message }) => {
            assert!(message.contains("2 calls in a row"), "{message}")
        }
        other => panic!("expected the breaker, got {other:?}"),
    }
    assert!(
        stats.requests < 5,
        "stopped before the default's 5: {stats:?}"
    );
    // The flags the run recorded, in the journal's JSON (see `recorded_flags_keep_their_json`).
    let flags: String = repo
        .journal()
        .connection()
        .query_row(
            "SELECT flags FROM runs WHERE id = ?1",
            imcast::store::params![s.run_id.as_deref().expect("run id")],
            |r| r.get(0),
        )
        .expect("flags");
    assert_eq!(flags, r#"{"yes":true,"mock":true}"#);
}

/// `runs.flags` keeps its JSON: what earlier versions wrote reads back, and what is written now
/// has the same shape (the one flags type is the journal's `RunFlags`).
#[test]
fn recorded_flags_keep_their_json() {
    let all = RunFlags {
        new_run: true,
        continue_changed: true,
        resend_unknown: true,
        yes: true,
        mock: true,
        test_to: vec![7, 8],
        skip_canary: true,
        retry_failed: false,
    };
    let yes = RunFlags {
        yes: true,
        ..RunFlags::default()
    };
    for (json, want) in [
        ("{}", RunFlags::default()),
        (r#"{"yes":true}"#, yes),
        (
            r#"{"new_run":true,"continue_changed":true,"resend_unknown":true,"yes":true,"mock":true,"test_to":[7,8],"skip_canary":true}"#,
            all,
        ),
    ] {
        let read: RunFlags = serde_json::from_str(json).expect("old flags JSON");
        assert_eq!(read, want, "{json}");
        assert_eq!(serde_json::to_string(&want).expect("json"), json);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_campaigns_in_one_process_share_the_account_limit() {
    let repo = Repo::new("[limits.batch]\nlimit = 200\nwindow = \"1s\"\n");
    repo.audience("a.csv", 500, 5, &[]);
    let a = repo.campaign("one", "a.csv", "http://127.0.0.1:9", "");
    let b = repo.campaign("two", "a.csv", "http://127.0.0.1:9", "");
    // The mock admits 10× the account limit and records when it counted each delivery: only the
    // shared limiter keeps the two runs under 200 a second, and the record shows it.
    let rec = repo.path("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 2_000,
        window: Duration::from_secs(1),
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let ra = request(&repo, &a, &m);
    let rb = request(&repo, &b, &m);
    let (x, y) = tokio::join!(
        tokio::spawn(run_campaign(ra, system(), StopToken::new())),
        tokio::spawn(run_campaign(rb, system(), StopToken::new())),
    );
    let (x, y) = (
        x.expect("task").expect("run"),
        y.expect("task").expect("run"),
    );
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!((x.exit, y.exit), (Exit::Ok, Exit::Ok));
    assert_eq!(stats.messages, 1_000);
    assert_window(
        &rec,
        stats.delivered,
        200,
        Duration::from_secs(1),
        "two runs",
    );
}

/// From the mock's record (not its counters, which refuse anything over its own limit): every
/// rolling `window` holds at most `limit` deliveries, and the fullest at least half of it (the
/// check is not vacuous: the client pushed against the limit).
fn assert_window(rec: &Path, delivered: u64, limit: u64, window: Duration, ctx: &str) {
    let lines = record_lines(rec, delivered);
    let worst = max_in_window(&stamps(&lines, None), window);
    assert!(
        worst <= limit,
        "{ctx}: {worst} deliveries in one window of {window:?} (limit {limit})"
    );
    assert!(
        worst * 2 >= limit,
        "{ctx}: only {worst} in the fullest window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_pause_the_engine_and_it_continues_after() {
    // 2,000 users in 20 calls at 1,000 per minute from 09:00 UTC; quiet 09:01–09:30.
    // One call in flight: the simulated clock adds up concurrent sleeps.
    let repo = Repo::new(
        "[limits.batch]\nlimit = 1000\nwindow = \"60s\"\n[send]\nmax_batch_in_flight = 1\n",
    );
    repo.audience("a.csv", 2_000, 20, &[]);
    let file = repo.campaign(
        "quiet",
        "a.csv",
        "http://127.0.0.1:9",
        "schedule: { quiet_hours: { from: \"09:01\", to: \"09:30\", timezone: UTC } }\n",
    );
    let t0: jiff::Timestamp = "2026-03-01T09:00:00Z".parse().expect("time");
    let clock = SimClock::new(t0);
    // The mock checks signatures against the same simulated clock.
    let m = mock::start(MockConfig {
        limit: 1_000_000,
        window: Duration::from_secs(1),
        clock: Arc::new(clock.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut r = request(&repo, &file, &m);
    let seen = Arc::new(Mutex::new(
        Vec::<(jiff::Timestamp, Option<String>, u64)>::new(),
    ));
    let s2 = seen.clone();
    let c2 = clock.clone();
    r.hooks.progress = Some(Arc::new(move |p: &Progress| {
        s2.lock()
            .expect("lock")
            .push((c2.now(), p.quiet_until.clone(), p.calls_done));
    }));
    let s = run_campaign(r, Arc::new(clock.clone()), StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");
    assert_eq!(s.counts[&RecipientStatus::Sent], 2_000);
    let seen = seen.lock().expect("lock").clone();
    let quiet_start: jiff::Timestamp = "2026-03-01T09:01:00Z".parse().expect("time");
    let quiet_end: jiff::Timestamp = "2026-03-01T09:30:00Z".parse().expect("time");
    assert!(
        seen.iter()
            .any(|(_, q, _)| q.as_deref() == Some("2026-03-01T09:30:00Z")),
        "progress shows the pause: {seen:?}"
    );
    // No call starts inside quiet hours: the journal's call rows carry their start time.
    let j = repo.journal();
    let times: Vec<jiff::Timestamp> = j
        .calls(s.run_id.as_deref().expect("id"))
        .expect("calls")
        .into_iter()
        .map(|c| c.updated_at)
        .collect();
    assert_eq!(times.len(), 20);
    assert!(
        times.iter().all(|t| *t < quiet_start || *t >= quiet_end),
        "no call inside quiet hours: {times:?}"
    );
    assert!(times.iter().any(|t| *t < quiet_start), "some before");
    assert!(times.iter().any(|t| *t >= quiet_end), "the rest after");
}

// ---- real processes -------------------------------------------------------------------------

fn imcast_run(repo: &Repo, file: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("run").arg(file).args(extra).stdin(Stdio::null());
    in_repo_with_mock_credentials(&mut c, repo);
    c
}

/// Run `c` in the repo with the mock's credentials and no test hooks or log filter inherited.
fn in_repo_with_mock_credentials(c: &mut Command, repo: &Repo) {
    c.current_dir(repo.dir.path())
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG");
}

fn latest_statuses(repo: &Repo, campaign: &str) -> (String, BTreeMap<u64, String>) {
    let j = repo.journal();
    let run = j
        .latest_run(campaign, false)
        .expect("q")
        .expect("a run exists");
    let st = j
        .recipients(&run.id)
        .expect("rows")
        .into_iter()
        .filter(|r| r.status != RecipientStatus::Duplicate)
        .filter_map(|r| r.id.map(|id| (id, r.status.to_string())))
        .collect();
    (run.id, st)
}

#[test]
fn readme_demo_command_runs_against_the_embedded_mock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ex = crate::common::root().join("examples");
    std::fs::create_dir(dir.path().join("audiences")).expect("mkdir");
    std::fs::copy(ex.join("demo.yaml"), dir.path().join("demo.yaml")).expect("copy demo");
    std::fs::copy(
        ex.join("audiences/demo.csv"),
        dir.path().join("audiences/demo.csv"),
    )
    .expect("copy audience");
    let audience_rows = std::fs::read_to_string(dir.path().join("audiences/demo.csv"))
        .expect("csv")
        .lines()
        .count()
        - 1;
    let run = |args: &[&str]| {
        Command::new(bin())
            .arg("run")
            .arg("demo.yaml")
            .args(args)
            .current_dir(dir.path())
            .env_remove("VOLC_ACCESSKEY")
            .env_remove("VOLC_SECRETKEY")
            .stdin(Stdio::null())
            .output_limited()
            .expect("run imcast")
    };
    let out = run(&["--mock", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        report.starts_with(dir.path().canonicalize().expect("canon"))
            || report.starts_with(dir.path())
    );
    let csv = std::fs::read_to_string(report.join("recipients.csv")).expect("recipients.csv");
    assert_eq!(
        csv.lines().count() - 1,
        audience_rows,
        "a row per audience row"
    );
    assert!(stderr.contains("Report:"), "{stderr}");
    // A mock run keeps its own journal and reports: it never stands for the real campaign.
    assert!(
        report.components().any(|c| c.as_os_str() == "mock"),
        "mock reports go under reports/mock/: {report:?}"
    );
    assert!(
        !dir.path().join(".imcast").join("imcast.db").exists(),
        "a mock run must not write the real journal"
    );
    // Off a terminal without --yes: a --mock run needs no confirmation and does not wait; the
    // embedded mock remembers nothing, so a finished mock run is run again, not "already finished".
    let out = run(&["--mock"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("finished: sent 2000"), "{stderr}");
}

/// `imcast run` on a terminal (a pseudo-terminal from util-linux `script`): it shows what is about
/// to be sent and asks; "n" sends nothing, "y" sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_run_asks_before_sending() {
    if !crate::common::require_tool(
        "script",
        "the confirmation prompt on a terminal was NOT checked (util-linux `script` gives the \
         pseudo-terminal)",
    ) {
        return;
    }
    let repo = Repo::new("");
    repo.audience("a.csv", 10, 1, &[]);
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let file = repo.campaign("ask", "a.csv", m.endpoint().as_str(), "");
    let on_tty = |answer: &'static str| {
        let cmd = format!("{} run {}", bin().display(), file.display());
        let mut c = Command::new("script");
        in_repo_with_mock_credentials(&mut c, &repo);
        c.args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut child = c.spawn().expect("run script");
                let mut stdin = child.stdin.take().expect("stdin");
                stdin.write_all(answer.as_bytes()).expect("answer");
                // stdin stays open until the child ends (EOF would end the terminal session).
                let out = wait_within(child, CHILD_LIMIT, "imcast run on a pseudo-terminal");
                drop(stdin);
                out
            })
            .await
            .expect("join")
        }
    };
    let out = on_tty("n\n").await;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "About to send campaign \"ask\"",
        "app id     666675",
        "endpoint   http://127.0.0.1:",
        "action     batch (BatchSendMessage)",
        "recipients 10",
        "calls      1",
        "ETA",
        "message    ",
        "Hello g0 from ask",
        "Send? [y/N]",
        "Nothing was sent.",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(m.stats().requests, 0, "a no sends nothing");
    assert!(
        repo.journal()
            .latest_run("ask", false)
            .expect("q")
            .is_none(),
        "a no starts no run"
    );
    let out = on_tty("y\n").await;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("finished: sent 10"), "{text}");
    assert_eq!(m.stats().delivered, 10, "a yes sends");
    m.shutdown().await;
}

#[test]
fn real_sends_need_credentials_and_a_confirmation() {
    let repo = Repo::new("");
    repo.audience("a.csv", 10, 1, &[]);
    let file = repo.campaign("creds", "a.csv", "http://127.0.0.1:9", "");
    let out = imcast_run(&repo, &file, &["--yes"])
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .output_limited()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("VOLC_ACCESSKEY") && stderr.contains("--mock"),
        "{stderr}"
    );
    let out = imcast_run(&repo, &file, &[]).output_limited().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        !repo.path(".imcast/imcast.db").exists(),
        "nothing was started"
    );
}

#[test]
fn throttle_1000_per_5s_with_6000_recipients_zero_429s() {
    let mock = MockServer::start(&["--limit", "1000", "--window", "5s"]);
    let repo = Repo::new("[limits.batch]\nlimit = 1000\nwindow = \"5s\"\n");
    // 60 groups of 100: 60 calls of 100 receivers.
    repo.audience("a.csv", 6_000, 60, &[]);
    let file = repo.campaign("throttle", "a.csv", &mock.endpoint(), "");
    let out = imcast_run(&repo, &file, &["--yes"])
        .output_limited()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The mock runs at the provider's own limit and refuses anything over it, so its window
    // counter can never show an overshoot: zero 429s is the check (the record-based window
    // check with the mock's limit raised is in throttle.rs).
    let st = mock.stats();
    assert_eq!(st.rate_limited, 0, "zero 429s: {st:?}");
    assert_eq!(st.messages, 6_000);
}

/// The real binary and a real mock process; as strict as the fake-transport version in
/// sender.rs: one call in flight, so the crash at the 4th call leaves exactly that call unknown.
#[test]
fn crash_at_each_failpoint_then_resume() {
    for point in ["after_mark", "after_response", "before_commit"] {
        let repo = Repo::new(
            "[limits.batch]\nlimit = 300\nwindow = \"1s\"\n[send]\nmax_batch_in_flight = 1\n",
        );
        let rec = repo.path("record.jsonl");
        // The mock admits 10× the limit: the record shows whether the limit held across the crash.
        let mock = MockServer::start(&[
            "--limit",
            "3000",
            "--window",
            "1s",
            "--record",
            rec.to_str().expect("utf8"),
        ]);
        // 20 content groups of 50: 20 calls of 50 receivers.
        let ids = repo.audience("a.csv", 1_000, 20, &[]);
        let file = repo.campaign("crash", "a.csv", &mock.endpoint(), "");
        let out = imcast_run(&repo, &file, &["--yes"])
            .env("IMCAST_FAILPOINT", format!("{point}:4"))
            .output_limited()
            .expect("run");
        assert!(!out.status.success(), "{point}: the process aborted");
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains(&format!("IMCAST_FAILPOINT={point}: aborting")),
            "{point}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = imcast_run(&repo, &file, &["--yes"])
            .output_limited()
            .expect("resume");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{point}: finished with unknown recipients: {stderr}"
        );
        assert!(stderr.contains("Resuming"), "{point}: {stderr}");
        let (run, st) = latest_statuses(&repo, "crash");
        let unknown = with_status(&st, "unknown");
        let (unknown_calls, in_unknown_call) = unknown_call_receivers(&repo.journal(), &run);
        assert_eq!(unknown_calls, 1, "{point}: the crashed call is unknown");
        assert_eq!(
            unknown, in_unknown_call,
            "{point}: its receivers, and only they, are unknown"
        );
        assert_eq!(unknown.len(), 50, "{point}: one call's receivers");
        let sent = with_status(&st, "sent");
        let all: BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            sent,
            all.difference(&unknown).copied().collect::<BTreeSet<_>>(),
            "{point}: everyone but unknown is sent"
        );
        let stats = mock.stats();
        let lines = record_lines(&rec, stats.delivered);
        let delivered = record(&lines);
        assert!(
            delivered.values().all(|&n| n == 1),
            "{point}: no duplicates"
        );
        assert_eq!(stats.duplicates, 0, "{point}");
        let dset: BTreeSet<u64> = delivered.keys().copied().collect();
        if point == "after_mark" {
            assert_eq!(dset, sent, "after_mark: the crashed request never left");
        } else {
            assert_eq!(
                dset, all,
                "{point}: the provider had processed the crashed call"
            );
        }
        let worst = max_in_window(&stamps(&lines, None), Duration::from_secs(1));
        assert!(
            worst <= 300,
            "{point}: {worst} deliveries in one second across the crash"
        );
        assert!(worst >= 150, "{point}: only {worst} in the fullest second");
    }
}

#[cfg(unix)]
#[test]
fn sigint_mid_run_exits_130_then_resume_completes() {
    let rec_dir = tempfile::tempdir().expect("tempdir");
    let rec = rec_dir.path().join("record.jsonl");
    // The mock admits 10× the limit: the record shows whether it held across the interruption.
    let mock = MockServer::start(&[
        "--limit",
        "2000",
        "--window",
        "1s",
        "--record",
        rec.to_str().expect("utf8"),
    ]);
    let repo = Repo::new("[limits.batch]\nlimit = 200\nwindow = \"1s\"\n");
    let ids = repo.audience("a.csv", 2_000, 40, &[]);
    let file = repo.campaign("sigint", "a.csv", &mock.endpoint(), "");
    let mut child = imcast_run(&repo, &file, &["--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until sending has begun (the mock saw messages), then interrupt.
    poll_while_running(
        &mut child,
        Duration::from_secs(120),
        "imcast run before its first send",
        || mock.stats().messages > 0,
    );
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .output_limited()
        .expect("kill");
    assert!(ok.status.success());
    let out = wait_within(child, CHILD_LIMIT, "imcast run after SIGINT");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("resume with"), "{stderr}");
    let partial = mock.stats().messages;
    assert!(partial < 2_000, "stopped early");
    let out = imcast_run(&repo, &file, &["--yes"])
        .output_limited()
        .expect("resume");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = mock.stats();
    let delivered = record(&record_lines(&rec, stats.delivered));
    assert_eq!(delivered.len(), ids.len());
    assert!(delivered.values().all(|&n| n == 1));
    assert_window(
        &rec,
        stats.delivered,
        200,
        Duration::from_secs(1),
        "across SIGINT and resume",
    );
}

#[test]
fn two_campaigns_in_two_processes_share_the_account_limit() {
    let repo = Repo::new("[limits.batch]\nlimit = 200\nwindow = \"1s\"\n");
    let rec = repo.path("record.jsonl");
    // The mock admits 10× the account limit: only the limiter the two processes share keeps them
    // under 200 a second, and the record shows it.
    let mock = MockServer::start(&[
        "--limit",
        "2000",
        "--window",
        "1s",
        "--record",
        rec.to_str().expect("utf8"),
    ]);
    repo.audience("a.csv", 600, 6, &[]);
    let a = repo.campaign("one", "a.csv", &mock.endpoint(), "");
    let b = repo.campaign("two", "a.csv", &mock.endpoint(), "");
    // Create the state database first so both processes open an existing one.
    drop(repo.journal());
    let pa = imcast_run(&repo, &a, &["--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a");
    let pb = imcast_run(&repo, &b, &["--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn b");
    let oa = wait_within(pa, CHILD_LIMIT, "imcast run one");
    let ob = wait_within(pb, CHILD_LIMIT, "imcast run two");
    assert_eq!(
        oa.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&oa.stderr)
    );
    assert_eq!(
        ob.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    let st = mock.stats();
    assert_eq!(st.messages, 1_200);
    assert_window(
        &rec,
        st.delivered,
        200,
        Duration::from_secs(1),
        "two processes",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_report_has_one_row_per_user_under_its_conversation() {
    let repo = Repo::new("");
    std::fs::write(
        repo.path("convs.csv"),
        "conversation_id\n7001\n7002\n7003\n7004\n",
    )
    .expect("audience");
    let file = repo.path("p2p.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: p2p\nprovider: { app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }\n\
         action: p2p\nsender: 10001\np2p: { receiver_user_ids: [11, 12, 13] }\n\
         audience:\n  csv: convs.csv\n  id_column: conversation_id\n\
         message:\n  type: text\n  text: \"ping\"\n",
    )
    .expect("campaign");
    let m = mock::start(MockConfig {
        offline_rate: 0.5,
        seed: 3,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let s = run_campaign(request(&repo, &file, &m), system(), StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    let rows = report_rows(&s);
    let convs: Vec<&Value> = rows
        .iter()
        .filter(|r| r["raw_id"].as_str().is_some_and(|r| !r.contains('/')))
        .collect();
    assert_eq!(convs.len(), 4, "one row per audience row");
    assert_eq!(
        rows.len(),
        4 + 4 * 3,
        "plus one per user returned: {rows:?}"
    );
    let users: Vec<&Value> = rows
        .iter()
        .filter(|r| r["raw_id"].as_str().is_some_and(|r| r.contains('/')))
        .collect();
    let offline = users.iter().filter(|r| r["status"] == "not_online").count() as u64;
    assert_eq!(
        offline, stats.offline,
        "not_online rows = users the provider reported offline"
    );
    assert!(
        offline > 0 && offline < 12,
        "the seed gives a mix: {offline}"
    );
    // Each user row sits right under its conversation.
    for (i, r) in rows.iter().enumerate() {
        if let Some((conv, _)) = r["raw_id"].as_str().and_then(|x| x.split_once('/')) {
            let parent = rows[..i]
                .iter()
                .rev()
                .find(|p| p["raw_id"].as_str().is_some_and(|x| !x.contains('/')))
                .expect("a conversation row above");
            assert_eq!(parent["raw_id"].as_str(), Some(conv));
            assert_eq!(parent["line"], r["line"]);
        }
    }
}
