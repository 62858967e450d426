//! Two `imcast run` of one campaign from two state directories (two hosts, or a CI runner and a
//! laptop) on one PostgreSQL store, with real processes and a slow mock: one sends, one refuses.
//! Every state directory on the store shares its one journal: while the first run sends, the
//! second exits 6 (the run's lease: `JournalError::Busy`) naming the first's pid and host; once
//! the first finished, the second finds the run "already finished" and sends nothing (exit 0);
//! the mock saw every recipient exactly once; `imcast status` from the other state directory
//! shows the finished run; neither state directory holds a journal file. The test server is
//! `imcast::testing::pg`'s; where PostgreSQL is not installed the fixture says so loudly and,
//! under CI, fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use imcast::mock::{self, MockConfig};

use crate::common::{
    bin, imcast_run, pg_password, poll_while_running, record_lines, wait_within, CHILD_LIMIT,
};

/// Conversations (one P2P request each), sent at `RATE` a second: the first run lasts ~12 s.
const N: u64 = 60;
const RATE: u64 = 5;

fn run(root: &Path, file: &Path, state: &str, password: Option<&str>) -> Command {
    imcast_run(root, file, &root.join(state), password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_state_directories_on_one_store_one_sends_one_refuses() {
    let Some(db) = imcast::testing::pg::test_db("two_dirs_runs") else {
        return;
    };
    let (url, password) = db.toml_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("imcast.toml"),
        format!("[limits.p2p]\nlimit = {RATE}\nwindow = \"1s\"\n\n[state]\nurl = \"{url}\"\n"),
    )
    .expect("imcast.toml");
    let rec = root.join("record.jsonl");
    let m = mock::start(MockConfig {
        latency: Duration::from_millis(100),
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut csv = String::from("conversation_id\n");
    for i in 0..N {
        csv.push_str(&format!("{}\n", 50_000 + i));
    }
    std::fs::write(root.join("slow.csv"), csv).expect("audience");
    let file = root.join("slow.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: slow\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: p2p\nsender: 10001\np2p: {{ receiver_user_ids: [11] }}\n\
             audience:\n  csv: slow.csv\n  id_column: conversation_id\n\
             message:\n  type: text\n  text: \"hello\"\n",
            m.endpoint()
        ),
    )
    .expect("campaign");
    let pw = password.clone();
    let first_rec = rec.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let pw = pw.as_deref();
        // The first run's stderr goes to a file (nobody drains a pipe while it sends).
        let log = std::fs::File::create(root.join("first.log")).expect("log");
        let mut first = run(&root, &file, "state-a", pw)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn the first run");
        let first_pid = first.id();
        // Sending: its run is open in the store's journal and the mock has seen a call.
        poll_while_running(&mut first, CHILD_LIMIT, "the first run", || {
            let opened = db.with_client(|c| {
                c.query_opt(
                    "SELECT 1 FROM runs WHERE campaign = 'slow' \
                     AND status = 'running' AND owner IS NOT NULL",
                    &[],
                )
                // (Until the first run migrated the store, the table does not exist yet.)
                .is_ok_and(|r| r.is_some())
            });
            opened
                && std::fs::read_to_string(&first_rec)
                    .map(|t| !t.trim().is_empty())
                    .unwrap_or(false)
        });
        let busy = wait_within(
            run(&root, &file, "state-b", pw).spawn().expect("spawn"),
            CHILD_LIMIT,
            "the second run while the first sends",
        );
        let still_running = first.try_wait().expect("try_wait").is_none();
        let first_out = wait_within(first, CHILD_LIMIT, "the first run");
        let first_log = std::fs::read_to_string(root.join("first.log")).unwrap_or_default();
        let again = wait_within(
            run(&root, &file, "state-b", pw).spawn().expect("spawn"),
            CHILD_LIMIT,
            "the second run after the first finished",
        );
        // `imcast status` from the other state directory reads the same journal.
        let mut st = Command::new(bin());
        st.arg("status")
            .arg(&file)
            .arg("--state-dir")
            .arg(root.join("state-b"))
            .current_dir(&root)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        pg_password(&mut st, pw);
        let status = wait_within(st.spawn().expect("spawn"), CHILD_LIMIT, "imcast status");
        (
            first_pid,
            status,
            busy,
            still_running,
            first_out.status.code(),
            first_log,
            again,
            root,
        )
    })
    .await
    .expect("processes");
    let (first_pid, status, busy, still_running, first_code, first_log, again, root) = outcome;
    m.shutdown().await;
    assert_eq!(first_code, Some(0), "the first run sends: {first_log}");
    assert!(
        still_running,
        "the first run was still sending when the second was refused"
    );
    // Refused by the run's lease in the shared journal, naming who sends it.
    let err = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(6), "busy: {err}");
    let host = imcast::journal::hostname();
    for want in [
        "of campaign \"slow\" is being sent by another imcast process (".to_string(),
        format!("(pid {first_pid} on {host}, its lease renewed until "),
        "wait for it or stop it. Nothing was sent by this process".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} in: {err}");
    }
    // After it finished: the same run, already finished, nothing sent (exit 0).
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(0), "already finished: {err}");
    let run_id = err
        .split("Campaign \"slow\": run ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .unwrap_or_else(|| panic!("the run named in: {err}"))
        .to_string();
    let want = format!(
        "Campaign \"slow\": run {run_id} already finished (sent {N}). Nothing to send. \
         Pass --new-run to send to everyone again."
    );
    assert!(err.contains(&want), "{want:?} in: {err}");
    assert!(
        first_log.contains(&run_id),
        "the first run sent {run_id}: {first_log}"
    );
    // `imcast status` from the other state directory: the finished run, from the shared journal.
    let out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        out.contains(&format!("Campaign \"slow\": run {run_id} is finished (")),
        "{out}"
    );
    assert!(out.contains(&format!("recipients sent {N}")), "{out}");
    // Every recipient exactly once, all from the first run.
    let lines = record_lines(&rec, N);
    let mut per: BTreeMap<u64, u64> = BTreeMap::new();
    for l in &lines {
        *per.entry(l["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    assert_eq!(per.len() as u64, N, "every recipient reached");
    assert!(
        per.values().all(|&n| n == 1),
        "a recipient reached twice: {per:?}"
    );
    assert_eq!(lines.len() as u64, N);
    // Everything is in the store: neither state directory holds a journal file.
    for d in ["state-a", "state-b"] {
        let db = root.join(d).join(imcast::journal::DB_FILE);
        assert!(!db.exists(), "{} exists", db.display());
    }
}
