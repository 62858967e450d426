//! Issue 11: the audit records every invocation of a run (who, when, imcast version, flags), and
//! `imcast run --retry-failed` sends a follow-up run to exactly the recipients the last finished
//! run left `failed` with a retryable code. Against the mock provider on 127.0.0.1 with fault
//! injection; real files in temp dirs; the audit test runs the real binary and crashes it with a
//! failpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use imcast::clock::SystemClock;
use imcast::config::RepoPaths;
use imcast::exit::Exit;
use imcast::journal::{Journal, RecipientStatus};
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Confirmation, Request, RunSummary};
use imcast::send::StopToken;
use serde_json::Value;

use crate::common::{bin, record_lines, OutputWithin};

/// A campaigns repository in a temp dir with `n` users (ids 100000..) and one campaign.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new(n: u64) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("imcast.toml"), "").expect("imcast.toml");
        let mut csv = String::from("user_id\n");
        for i in 0..n {
            csv.push_str(&format!("{}\n", 100_000 + i));
        }
        std::fs::write(dir.path().join("a.csv"), csv).expect("audience");
        Repo { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// The campaign at `endpoint`: each refused receiver is `failed` at once (max_attempts 1),
    /// and the breaker never trips.
    fn campaign(&self, endpoint: &str) -> PathBuf {
        let p = self.path("retry.yaml");
        std::fs::write(
            &p,
            format!(
                "version: 1\nname: retry\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
                 action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
                 message:\n  type: text\n  text: \"Hello\"\nretry: {{ max_attempts: 1 }}\n\
                 breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n"
            ),
        )
        .expect("campaign");
        p
    }

    fn journal(&self) -> Journal {
        Journal::open(&self.path(".imcast")).expect("journal")
    }
}

fn request(file: &Path, m: &mock::MockHandle) -> Request {
    let c = imcast::spec::load(file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let mut r = Request::new(c, RepoPaths::discover(file, None, None, None));
    r.target = Some((m.endpoint(), m.credentials()));
    r
}

async fn run(req: Request) -> Result<RunSummary, imcast::exit::Failure> {
    run_campaign(req, Arc::new(SystemClock), StopToken::new()).await
}

fn summary_json(s: &RunSummary) -> Value {
    let dir = s.report_dir.as_ref().expect("report written");
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
        .expect("json")
}

/// Deliveries per recipient in a mock record.
fn deliveries(rec: &Path, n: u64) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for v in record_lines(rec, n) {
        *m.entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    m
}

/// The mock's seeded faults decide how many fail; the snapshots show where the counts go.
fn redact_counts(s: &str, failed: usize, unknown: usize) -> String {
    let mut out = s.to_string();
    for (n, tag) in [(failed, "[FAILED]"), (unknown, "[UNKNOWN]")] {
        for (a, b) in [(" ", " "), (" ", ")"), (" ", "\n")] {
            out = out.replace(&format!("{a}{n}{b}"), &format!("{a}{tag}{b}"));
        }
    }
    out
}

/// Ids of a run per final status (from the journal).
fn by_status(j: &Journal, run: &str) -> BTreeMap<RecipientStatus, BTreeSet<u64>> {
    let mut m: BTreeMap<RecipientStatus, BTreeSet<u64>> = BTreeMap::new();
    for r in j.recipients(run).expect("rows") {
        if let Some(id) = r.id {
            m.entry(r.status).or_default().insert(id);
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_sends_exactly_the_retryable_failures_of_the_last_run_and_nobody_else() {
    let repo = Repo::new(3000);
    // The first send: the provider refuses some receivers (FailedReceiver) and loses some
    // answers (processed, then HTTP 500: `unknown`).
    let m1 = mock::start(MockConfig {
        failed_receiver_rate: 0.05,
        fail_after_rate: 0.4,
        seed: 11,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let file = repo.campaign(m1.endpoint().as_str());

    // Nothing to follow up yet: a clear error, nothing sent.
    let mut req = request(&file, &m1);
    req.flags.retry_failed = true;
    let e = run(req).await.expect_err("no finished run");
    assert_eq!(e.exit, Exit::Invalid);
    assert_eq!(m1.stats().requests, 0);
    insta::assert_snapshot!(
        "retry_failed_without_a_run",
        e.to_string()
            .replace(&repo.dir.path().display().to_string(), "[DIR]")
    );

    let first = run(request(&file, &m1)).await.expect("first run");
    let first_id = first.run_id.clone().expect("run id");
    let j = repo.journal();
    let st = by_status(&j, &first_id);
    let failed = st
        .get(&RecipientStatus::Failed)
        .cloned()
        .unwrap_or_default();
    let unknown = st
        .get(&RecipientStatus::Unknown)
        .cloned()
        .unwrap_or_default();
    let sizes: BTreeMap<_, _> = st.iter().map(|(k, v)| (*k, v.len())).collect();
    assert!(
        !failed.is_empty(),
        "the mock refused some receivers: {sizes:?}"
    );
    assert!(!unknown.is_empty(), "the mock lost some answers: {sizes:?}");
    assert!(j
        .recipients(&first_id)
        .expect("rows")
        .iter()
        .filter(|r| r.status == RecipientStatus::Failed)
        .all(|r| r.error_code.as_deref() == Some("FailedReceiver")));
    m1.shutdown().await;

    // `plan --retry-failed` says what the follow-up would send.
    let f = file.clone();
    let d = repo.dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["plan", "--retry-failed", "--sample", "0"])
            .arg(&f)
            .current_dir(&d)
            .output_limited()
            .expect("plan")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "retry      {} of run {first_id} to send again (FailedReceiver {}); not retried: {} unknown (--resend-unknown resends them)",
            imcast::output::count(failed.len() as u64, "failed recipient", "failed recipients"),
            failed.len(),
            unknown.len(),
        )),
        "{stdout}"
    );

    let (f, d) = (file.clone(), repo.dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["plan", "--retry-failed", "--output", "json"])
            .arg(&f)
            .current_dir(&d)
            .output_limited()
            .expect("plan json")
    })
    .await
    .expect("join");
    let v: Value = serde_json::from_slice(&out.stdout).expect("plan json");
    assert_eq!(v["retry"]["run_id"], first_id.as_str());
    assert_eq!(v["retry"]["recipients"], failed.len() as u64);
    assert_eq!(v["retry"]["unknown"], unknown.len() as u64);

    // A person fixed the cause; the provider now takes everyone. The confirmation says how many
    // are retried.
    let rec = repo.path("record2.jsonl");
    let m2 = mock::start(MockConfig {
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock 2");
    let asked: Arc<Mutex<Option<Confirmation>>> = Arc::default();
    let mut req = request(&file, &m2);
    req.flags.yes = false;
    req.flags.retry_failed = true;
    let a = asked.clone();
    req.hooks.confirm = Some(Arc::new(move |c: &Confirmation| {
        *a.lock().expect("lock") = Some(c.clone());
        true
    }));
    let notes: Arc<Mutex<Vec<String>>> = Arc::default();
    let n2 = notes.clone();
    req.hooks.note = Some(Arc::new(move |s: &str| {
        n2.lock().expect("lock").push(s.to_string())
    }));
    let second = run(req).await.expect("retry run");
    let c = asked.lock().expect("lock").clone().expect("asked");
    let r = c.retry.clone().expect("the confirmation names the retry");
    insta::assert_snapshot!(
        "retry_failed_confirmation",
        redact_counts(
            &imcast::cmd::run::confirmation_text(&c)
                .replace(&first_id, "[RUN]")
                .replace(m2.endpoint().as_str().trim_end_matches('/'), "[ENDPOINT]"),
            failed.len(),
            unknown.len()
        )
    );
    assert_eq!(r.run_id, first_id);
    assert_eq!(c.recipients, failed.len() as u64);
    assert_eq!(r.retryable_total(), failed.len() as u64);
    assert_eq!(r.unknown, unknown.len() as u64);
    let notes = notes.lock().expect("lock").join("\n");
    assert!(
        notes.contains(&format!(
            "Retrying run {first_id} as run {}: sending again to {} that failed with a retryable code (FailedReceiver {}).",
            second.run_id.as_deref().expect("id"),
            imcast::output::count(failed.len() as u64, "recipient", "recipients"),
            failed.len()
        )),
        "{notes}"
    );
    assert!(notes.contains("(--resend-unknown)"), "{notes}");
    insta::assert_snapshot!(
        "retry_failed_notes",
        redact_counts(
            &notes
                .replace(&first_id, "[RUN]")
                .replace(second.run_id.as_deref().expect("id"), "[NEW RUN]"),
            failed.len(),
            unknown.len()
        )
    );

    // Exactly the failed ones got a message, once; nobody else (not the unknown ones).
    let got = deliveries(&rec, m2.stats().delivered);
    assert_eq!(m2.stats().delivered, failed.len() as u64);
    assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), failed);
    assert!(got.values().all(|&k| k == 1));
    assert!(got.keys().all(|id| !unknown.contains(id)));

    // The follow-up is its own run, linked to the first in the journal and in its report.
    assert_ne!(second.run_id.as_deref(), Some(first_id.as_str()));
    assert_eq!(second.exit, Exit::Ok);
    let j = repo.journal();
    let run2 = j
        .run(second.run_id.as_deref().expect("id"))
        .expect("q")
        .expect("run");
    assert_eq!(run2.retry_of.as_deref(), Some(first_id.as_str()));
    assert_eq!(
        by_status(&j, &run2.id).get(&RecipientStatus::Sent),
        Some(&failed)
    );
    let s = summary_json(&second);
    assert_eq!(s["retry_of"], first_id.as_str());
    assert_eq!(s["audit"]["retry_of"], first_id.as_str());
    assert_eq!(s["rows"], failed.len() as u64);
    let inv = s["audit"]["invocations"].as_array().expect("invocations");
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0]["decision"], "retry");
    assert_eq!(inv[0]["flags"], serde_json::json!(["--retry-failed"]));
    let html =
        std::fs::read_to_string(second.report_dir.as_ref().expect("dir").join("report.html"))
            .expect("html");
    assert!(html.contains("Retries run"), "the page says which run");
    assert!(html.contains(&first_id));
    // The first run is untouched: still finished, its statuses as they were.
    assert_eq!(
        by_status(&j, &first_id).get(&RecipientStatus::Failed),
        Some(&failed)
    );

    // Again: the follow-up left nothing failed, so there is nothing to retry (the unknown ones
    // stay behind --resend-unknown).
    let mut req = request(&file, &m2);
    req.flags.retry_failed = true;
    let e = run(req).await.expect_err("nothing to retry");
    assert_eq!(e.exit, Exit::Invalid);
    let msg = e.to_string();
    insta::assert_snapshot!(
        "retry_failed_nothing_to_retry",
        msg.replace(second.run_id.as_deref().expect("id"), "[RUN]")
    );
    assert_eq!(
        m2.stats().delivered,
        failed.len() as u64,
        "nothing more sent"
    );
    m2.shutdown().await;
}

/// A run crashed by a failpoint, then resumed with `--resend-unknown`: the report's audit block
/// (summary.json and report.html) lists both invocations with their flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_lists_every_invocation_of_a_run_with_its_flags() {
    let repo = Repo::new(1500);
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let file = repo.campaign(m.endpoint().as_str());
    let imcast_run = |extra: &[&str], failpoint: Option<&str>| {
        let mut c = Command::new(bin());
        c.arg("run")
            .arg(&file)
            .args(extra)
            .current_dir(repo.dir.path())
            .stdin(Stdio::null())
            .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
            .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
            .env("USER", "ops-ana")
            .env_remove("VOLC_SECRETKEY_FILE")
            .env_remove("IMCAST_FAILPOINT")
            .env_remove("RUST_LOG");
        if let Some(f) = failpoint {
            c.env("IMCAST_FAILPOINT", f);
        }
        c
    };
    // Crash right after the second call's in-flight mark: that call's receivers are `unknown`.
    let mut c = imcast_run(&["--yes"], Some("after_mark:2"));
    let out = tokio::task::spawn_blocking(move || c.output_limited().expect("run"))
        .await
        .expect("join");
    assert!(!out.status.success(), "the failpoint aborts the process");
    let mut c = imcast_run(&["--yes", "--resend-unknown"], None);
    let out = tokio::task::spawn_blocking(move || c.output_limited().expect("resume"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Resuming unfinished run"), "{stderr}");
    let report = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let s: Value = serde_json::from_str(
        &std::fs::read_to_string(report.join("summary.json")).expect("summary"),
    )
    .expect("json");
    let inv = s["audit"]["invocations"].as_array().expect("invocations");
    // What people read, with the times, host and version redacted.
    let shown: Vec<Value> = inv
        .iter()
        .map(|i| {
            assert!(i["at"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()));
            assert_eq!(i["host"], imcast::journal::hostname().as_str());
            assert_eq!(i["imcast_version"], env!("CARGO_PKG_VERSION"));
            let mut i = i.clone();
            i["at"] = "[TIME]".into();
            i["host"] = "[HOST]".into();
            i["imcast_version"] = "[VERSION]".into();
            i
        })
        .collect();
    insta::assert_json_snapshot!("audit_invocations_crash_then_resend_unknown", shown);
    let html = std::fs::read_to_string(report.join("report.html")).expect("html");
    assert_eq!(html.matches("Invocation").count(), 2, "both on the page");
    assert!(html.contains("resumed by ops-ana on"), "who");
    assert!(
        html.contains("flags --resend-unknown --yes"),
        "the resume's flags"
    );
    assert!(html.contains("created by ops-ana on"), "the creation");
    m.shutdown().await;
}
