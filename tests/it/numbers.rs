//! The numbers people read during and after a run (issue 11, "Numbers people read"): progress
//! against the limit the run is really held to, the busiest window actually used and errors per
//! code in `summary.json`, `variants.csv`, warnings during a run (one line per kind per 10 s of
//! the clock), and `status` keeping `--test-to` runs apart. Each runs against the mock provider
//! on 127.0.0.1 on a simulated clock shared with the mock (no sleeping).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imcast::clock::{Clock, SimClock};
use imcast::config::RepoPaths;
use imcast::journal::RecipientStatus;
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request, RunSummary};
use imcast::send::{Progress, StopToken, WarnKind, Warning};
use serde_json::Value;

use crate::common::bin;

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

    /// `n` users (ids 100000..) in `groups` content groups.
    fn audience(&self, n: u64, groups: u64) {
        let mut s = String::from("user_id,grp\n");
        for i in 0..n {
            s.push_str(&format!("{},g{}\n", 100_000 + i, i % groups.max(1)));
        }
        std::fs::write(self.path("a.csv"), s).expect("write audience");
    }

    fn campaign(&self, name: &str, extra: &str) -> PathBuf {
        let text = format!(
            "version: 1\nname: {name}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"Hello {{{{ grp }}}}\"\n  ext: {{ tag: \"{{{{ grp }}}}\" }}\n{extra}"
        );
        let p = self.path(&format!("{name}.yaml"));
        std::fs::write(&p, text).expect("write campaign");
        p
    }
}

fn t0() -> jiff::Timestamp {
    "2026-03-01T09:00:00Z".parse().expect("time")
}

fn request(file: &Path, m: &mock::MockHandle) -> Request {
    let c = imcast::spec::load(file, &imcast::spec::LoadOptions::default()).expect("valid");
    let mut r = Request::new(c, RepoPaths::discover(file, None, None, None));
    r.target = Some((m.endpoint(), m.credentials()));
    r.flags.mock = true;
    r
}

async fn mock_on(clock: &SimClock, cfg: MockConfig) -> mock::MockHandle {
    mock::start(MockConfig {
        clock: Arc::new(clock.clone()),
        ..cfg
    })
    .await
    .expect("mock")
}

fn summary_json(s: &RunSummary) -> Value {
    let dir = s.report_dir.as_ref().expect("report written");
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_summary_measure_against_the_limit_the_run_is_held_to() {
    // The account allows 12,000 a minute; the campaign holds itself to 100 a second. 1,000 users
    // in 10 Contents: 10 calls of 100, one in flight, each filling the campaign's whole second.
    let repo = Repo::new(
        "[limits.batch]\nlimit = 12000\nwindow = \"60s\"\n[send]\nmax_batch_in_flight = 1\n",
    );
    repo.audience(1_000, 10);
    let file = repo.campaign("capped", "throttle: { limit: 100, window: 1s }\n");
    let clock = SimClock::new(t0());
    let m = mock_on(&clock, MockConfig::default()).await;
    let mut r = request(&file, &m);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l2 = lines.clone();
    r.hooks.progress = Some(Arc::new(move |p: &Progress| {
        l2.lock().expect("lock").push(p.describe());
    }));
    let s = run_campaign(r, Arc::new(clock.clone()), StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    assert_eq!(s.counts[&RecipientStatus::Sent], 1_000, "{s:?}");
    let lines = lines.lock().expect("lock").clone();
    assert_eq!(lines.len(), 10, "one line per call: {lines:?}");
    // The campaign's own limit, never the account's 12000 per 1m.
    assert!(
        lines.iter().all(|l| l.contains("limit 100 per 1s")),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("12000")), "{lines:?}");
    insta::assert_snapshot!("progress_lines", lines.join("\n"));

    // summary.json: the busiest minute is what was admitted in it (all 1,000, the run took about
    // ten seconds), against the 6,000 a minute the campaign's throttle allows; never more than
    // the limit, and never an extrapolation.
    let v = summary_json(&s);
    let rate = &v["rate"];
    assert_eq!(rate["limit"], 6_000);
    assert_eq!(rate["busiest_window"], 1_000);
    assert_eq!(rate["admitted"], 1_000);
    assert!(
        rate["busiest_window_share_of_limit"]
            .as_f64()
            .expect("share")
            <= 1.0
    );
    assert!(
        v["rate"].get("share_of_limit").is_none(),
        "no extrapolation"
    );
    // Any one second of admissions holds at most the campaign's 100: read back from the
    // journal's attempts log through the report's own window code, at 1 s.
    let j = imcast::journal::Journal::open(&repo.path(".imcast")).expect("journal");
    let run = s.run_id.as_deref().expect("run id");
    let second = imcast::report::rate::busiest(
        &j,
        run,
        imcast::action::Action::Batch,
        Duration::from_secs(1),
    )
    .expect("busiest");
    assert_eq!(second.units, 100, "{second:?}");
    assert_eq!(second.attempts, 10);
    insta::assert_json_snapshot!("summary_rate_and_errors", (rate, &v["errors"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_come_once_per_kind_per_ten_seconds_and_errors_are_counted_per_code() {
    // A provider that refuses above 150 receivers a second (429), answers 500 to some requests
    // and drops some connections after processing (both unknown outcomes for a batch call); the
    // breaker's failed share is set where those unknowns bring it near but not over.
    let repo = Repo::new(
        "[limits.batch]\nlimit = 12000\nwindow = \"60s\"\n[send]\nmax_batch_in_flight = 1\n",
    );
    repo.audience(6_000, 60);
    let file = repo.campaign(
        "faulty",
        "breaker: { consecutive_failures: 1000, window_calls: 10, max_failure_ratio: 0.7 }\n",
    );
    let clock = SimClock::new(t0());
    let m = mock_on(
        &clock,
        MockConfig {
            limit: 150,
            window: Duration::from_secs(1),
            fail_rate: 0.15,
            lost_rate: 0.15,
            seed: 11,
            ..MockConfig::default()
        },
    )
    .await;
    let mut r = request(&file, &m);
    let seen = Arc::new(Mutex::new(Vec::<(jiff::Timestamp, Warning)>::new()));
    let (s2, c2) = (seen.clone(), clock.clone());
    r.hooks.warn = Some(Arc::new(move |w: &Warning| {
        s2.lock().expect("lock").push((c2.now(), w.clone()));
    }));
    let s = run_campaign(r, Arc::new(clock.clone()), StopToken::new())
        .await
        .expect("run");
    let stats = m.stats();
    m.shutdown().await;
    let seen = seen.lock().expect("lock").clone();
    assert!(stats.rate_limited > 0, "the mock did answer 429");

    let mut by: BTreeMap<WarnKind, Vec<(jiff::Timestamp, Warning)>> = BTreeMap::new();
    for (t, w) in &seen {
        by.entry(w.kind).or_default().push((*t, w.clone()));
    }
    for kind in [
        WarnKind::RateLimited,
        WarnKind::ServerError,
        WarnKind::Unknown,
        WarnKind::BreakerNear,
    ] {
        let lines = by.get(&kind).map(Vec::as_slice).unwrap_or_default();
        assert!(!lines.is_empty(), "a {kind:?} warning: {seen:?}");
        // One line per kind per 10 s of the clock (the closing line at the end aside).
        let timely: Vec<_> = lines.iter().filter(|(_, w)| !w.closing).collect();
        for pair in timely.windows(2) {
            let gap = pair[1].0.duration_since(pair[0].0);
            assert!(
                gap >= jiff::SignedDuration::from_secs(10),
                "{kind:?} lines {gap:?} apart"
            );
        }
        assert!(lines[0].1.line().starts_with("warning: "));
    }
    // Nothing is hidden: lines + what they say was held back = every unknown call.
    let unknown: u64 = by[&WarnKind::Unknown]
        .iter()
        .map(|(_, w)| w.held_back + u64::from(!w.closing))
        .sum();
    let v = summary_json(&s);
    assert_eq!(v["calls"]["unknown"], unknown, "{v}");
    assert!(
        unknown > 1,
        "several unknown calls were folded into fewer lines"
    );
    assert!(
        (by[&WarnKind::Unknown].len() as u64) < unknown,
        "folded: {unknown} unknown calls"
    );

    // Errors per code: the retried 429s and 500s (attempts), and the recipients left unknown.
    let attempts = v["errors"]["attempts"].as_object().expect("attempts");
    let n = |k: &str| attempts.get(k).and_then(Value::as_u64).unwrap_or(0);
    let rate_limited: u64 = attempts
        .iter()
        .filter(|(k, _)| k.contains("429") || k.contains("FlowLimit"))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(rate_limited, stats.rate_limited, "{attempts:?}");
    // The mock's 500s and dropped connections, each an attempt with its code.
    assert_eq!(
        n("InternalError"),
        stats.rejected["InternalError"],
        "{attempts:?}"
    );
    assert_eq!(n("Unknown"), stats.faults["lost"], "{attempts:?}");
    assert_eq!(n("InternalError") + n("Unknown"), unknown);
    insta::assert_json_snapshot!("faulty_errors", &v["errors"]);
    let recipients = &v["errors"]["recipients"];
    assert_eq!(
        recipients["unknown"]
            .as_object()
            .expect("unknown codes")
            .values()
            .map(|v| v.as_u64().unwrap_or(0))
            .sum::<u64>(),
        v["counts"]["unknown"].as_u64().expect("count")
    );
    // The page shows the same attempt counts.
    let html = std::fs::read_to_string(
        s.report_dir
            .as_ref()
            .expect("dir")
            .join(imcast::report::HTML_FILE),
    )
    .expect("html");
    for (code, count) in attempts {
        assert!(
            html.contains(&format!(
                "<tr data-code=\"{code}\"><th scope=\"row\">failed attempts: <span class=\"mono\">{code}</span></th><td class=\"num\" data-count=\"{count}\">"
            )),
            "{code} {count} on the page"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_csv_says_what_each_variant_id_is() {
    let repo = Repo::new("[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n");
    repo.audience(30, 3);
    let file = repo.campaign("variants", "");
    let clock = SimClock::new(t0());
    let m = mock_on(&clock, MockConfig::default()).await;
    let s = run_campaign(
        request(&file, &m),
        Arc::new(clock.clone()),
        StopToken::new(),
    )
    .await
    .expect("run");
    m.shutdown().await;
    let dir = s.report_dir.as_ref().expect("report");
    let text = std::fs::read_to_string(dir.join("variants.csv")).expect("variants.csv");
    insta::assert_snapshot!("variants_csv", text);
    // Every variant id of the per-recipient file is listed, with its recipients.
    let mut per_row: BTreeMap<String, u64> = BTreeMap::new();
    let mut rows = csv::Reader::from_path(dir.join("recipients.csv")).expect("recipients.csv");
    for r in rows.records() {
        let r = r.expect("row");
        *per_row.entry(r[7].to_string()).or_default() += 1;
    }
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    let mut v = csv::Reader::from_reader(text.as_bytes());
    let h = v.headers().expect("header").clone();
    let col = |n: &str| h.iter().position(|c| c == n).expect(n);
    let (id, name, n) = (col("variant"), col("variant_name"), col("recipients"));
    for r in v.records() {
        let r = r.expect("row");
        listed.insert(r[id].to_string(), r[n].parse().expect("count"));
        assert_eq!(&r[name], "", "no A/B variants: no variant name");
    }
    assert_eq!(per_row, listed);
    assert_eq!(summary_json(&s)["files"]["variants_csv"], "variants.csv");
}

fn imcast_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("run imcast")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_latest_real_run_and_lists_test_runs_apart() {
    let repo = Repo::new("[limits.batch]\nlimit = 100000\nwindow = \"1s\"\n");
    repo.audience(20, 1);
    let file = repo.campaign("st", "");
    let clock = SimClock::new(t0());
    let m = mock_on(&clock, MockConfig::default()).await;
    let run = |test_to: Vec<u64>| {
        let mut r = request(&file, &m);
        // Recorded as the campaign's own runs (the mock is only where they go).
        r.flags.mock = false;
        r.flags.test_to = test_to;
        run_campaign(r, Arc::new(clock.clone()), StopToken::new())
    };
    // A test run alone is not "the" run.
    let t1 = run(vec![42]).await.expect("test run");
    let out = imcast_in(repo.dir.path(), &["status", "st.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let only_tests = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(only_tests.contains("has no runs yet"), "{only_tests}");
    // The real run, then another test run after it: status shows the real one.
    clock.advance(Duration::from_secs(60));
    let real = run(Vec::new()).await.expect("run");
    clock.advance(Duration::from_secs(60));
    let t2 = run(vec![43, 44]).await.expect("test run");
    m.shutdown().await;
    let out = imcast_in(repo.dir.path(), &["status", "st.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    let both = String::from_utf8_lossy(&out.stdout).to_string();
    let out = imcast_in(repo.dir.path(), &["status", "st.yaml", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = |s: &RunSummary| s.run_id.clone().expect("id");
    assert_eq!(v["run_id"], id(&real));
    assert_eq!(v["test"], false);
    let tests: Vec<&str> = v["test_runs"]
        .as_array()
        .expect("test runs")
        .iter()
        .map(|t| t["run_id"].as_str().expect("id"))
        .collect();
    assert_eq!(tests, [id(&t2), id(&t1)], "newest first");
    let redact = |s: &str| {
        s.replace(&id(&real), "[RUN]")
            .replace(&id(&t1), "[TEST-1]")
            .replace(&id(&t2), "[TEST-2]")
            .replace(&repo.dir.path().display().to_string(), "[DIR]")
            .replace(
                &std::fs::canonicalize(repo.dir.path())
                    .expect("canon")
                    .display()
                    .to_string(),
                "[DIR]",
            )
    };
    insta::assert_snapshot!(
        "status_real_and_test_runs",
        format!("{}---\n{}", redact(&only_tests), redact(&both))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_csv_lists_the_largest_thousand_and_says_so() {
    // A personalized campaign: 1,001 distinct Contents (one per recipient).
    let repo = Repo::new("[limits.batch]\nlimit = 1000000\nwindow = \"1s\"\n");
    repo.audience(1_001, 1_001);
    let file = repo.campaign("personal", "");
    let clock = SimClock::new(t0());
    let m = mock_on(
        &clock,
        MockConfig {
            limit: 1_000_000,
            window: Duration::from_secs(1),
            ..MockConfig::default()
        },
    )
    .await;
    let s = run_campaign(
        request(&file, &m),
        Arc::new(clock.clone()),
        StopToken::new(),
    )
    .await
    .expect("run");
    m.shutdown().await;
    assert_eq!(s.counts[&RecipientStatus::Sent], 1_001);
    let dir = s.report_dir.as_ref().expect("report");
    let mut r = csv::Reader::from_path(dir.join("variants.csv")).expect("variants.csv");
    assert_eq!(r.records().count(), 1_000);
    let v = summary_json(&s);
    assert_eq!(
        v["files"]["variants_note"],
        "1,001 distinct Contents: variants.csv lists the 1,000 with the most recipients; \
         `imcast preview FILE ID` shows any recipient's message"
    );
}

/// The real binary against `imcast mock-server` (a process on 127.0.0.1) that drops every
/// connection after processing: stderr shows the progress against the campaign's own limit and
/// one unknown-outcome warning, then a closing line for the rest.
#[test]
fn the_binary_prints_progress_and_folded_warnings_on_stderr() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin())
        .args(["mock-server", "--lost-rate", "1"])
        .env_remove("VOLC_ACCESSKEY")
        .env_remove("VOLC_SECRETKEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mock-server");
    let addr = crate::common::first_line_within(&mut child, Duration::from_secs(60), "mock-server");
    let repo = Repo::new("[limits.batch]\nlimit = 12000\nwindow = \"60s\"\n");
    repo.audience(30, 3);
    let text = std::fs::read_to_string(repo.campaign("lost", "")).expect("campaign");
    let file = repo.path("lost.yaml");
    std::fs::write(
        &file,
        text.replace("http://127.0.0.1:9", &format!("http://{addr}"))
            + "throttle: { limit: 100, window: 1s }\n\
               breaker: { consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }\n",
    )
    .expect("write campaign");
    let out = Command::new(bin())
        .args(["run", "lost.yaml", "--yes"])
        .current_dir(repo.dir.path())
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run imcast");
    let _ = child.kill();
    let _ = child.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    // Calls run side by side: any one of the three may be the first to end unknown.
    assert!(
        warnings[0].starts_with("warning: unknown outcome: call ")
            && warnings[0].contains(" (10 recipients) has an unknown outcome"),
        "{stderr}"
    );
    assert_eq!(
        warnings[1],
        "warning: unknown outcome: 2 more since the last warning of this kind, until the run stopped"
    );
    // The first progress line (then one every 10 s): the campaign's own limit, not the
    // account's 12000 per 1m. It is printed after the first call settles, by which time one
    // or two of the others (side by side) may have settled too.
    assert!(
        ["10", "20", "30"]
            .iter()
            .any(|n| stderr.contains(&format!("progress: sent 0, failed 0, unknown {n} · "))),
        "{stderr}"
    );
    assert!(
        stderr.contains(" in the last 1s (limit 100 per 1s) · elapsed 0s"),
        "{stderr}"
    );
    assert!(!stderr.contains("12000"), "{stderr}");
}
