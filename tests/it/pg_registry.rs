//! The run registry in the PostgreSQL state store, with real processes: two state directories
//! (two hosts, or a CI runner and a laptop) on one store, one campaign, a slow mock. While the
//! first `imcast run` sends, the second exits 6 naming the first's host, pid and state directory;
//! once the first finished, the second is refused again as "already sent"; the mock saw every
//! recipient exactly once. The test server is `imcast::testing::pg`'s; where PostgreSQL is not
//! installed the fixture says so loudly and, under CI, fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use imcast::mock::{self, MockConfig};

use crate::common::{bin, poll_while_running, record_lines, wait_within, CHILD_LIMIT};

/// Conversations (one P2P request each), sent at `RATE` a second: the first run lasts ~12 s.
const N: u64 = 60;
const RATE: u64 = 5;

fn run(root: &Path, file: &Path, state: &str, password: Option<&str>) -> Command {
    let mut c = Command::new(bin());
    c.arg("run")
        .arg(file)
        .arg("--yes")
        .arg("--state-dir")
        .arg(root.join(state))
        .current_dir(root)
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_state_directory_is_refused_while_the_first_sends_and_after_it_sent() {
    let Some(db) = imcast::testing::pg::test_db("registry_runs") else {
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
    let outcome = tokio::task::spawn_blocking(move || {
        let pw = pw.as_deref();
        // The first run's stderr goes to a file (nobody drains a pipe while it sends).
        let log = std::fs::File::create(root.join("first.log")).expect("log");
        let mut first = run(&root, &file, "state-a", pw)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn the first run");
        let first_pid = first.id();
        // Registered and sending: its row in the store names its run.
        poll_while_running(&mut first, CHILD_LIMIT, "the first run", || {
            db.with_client(|c| {
                c.query_opt(
                    "SELECT 1 FROM imcast_run_registry WHERE campaign = 'slow' \
                     AND status = 'running' AND run_id IS NOT NULL",
                    &[],
                )
                // (Until the first run migrated the store, the table does not exist yet.)
                .is_ok_and(|r| r.is_some())
            })
        });
        let busy = wait_within(
            run(&root, &file, "state-b", pw).spawn().expect("spawn"),
            CHILD_LIMIT,
            "the second run while the first sends",
        );
        let still_running = first.try_wait().expect("try_wait").is_none();
        let first_out = wait_within(first, CHILD_LIMIT, "the first run");
        let first_log = std::fs::read_to_string(root.join("first.log")).unwrap_or_default();
        let sent = wait_within(
            run(&root, &file, "state-b", pw).spawn().expect("spawn"),
            CHILD_LIMIT,
            "the second run after the first sent",
        );
        // `imcast status` from the refused state directory lists the run registered elsewhere.
        let mut st = Command::new(bin());
        st.arg("status")
            .arg(&file)
            .arg("--state-dir")
            .arg(root.join("state-b"))
            .current_dir(&root)
            .env_remove("RUST_LOG")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = pw {
            st.env("PGPASSWORD", p);
        }
        let status = wait_within(st.spawn().expect("spawn"), CHILD_LIMIT, "imcast status");
        (
            first_pid,
            status,
            busy,
            still_running,
            first_out.status.code(),
            first_log,
            sent,
            root,
        )
    })
    .await
    .expect("processes");
    let (first_pid, status, busy, still_running, first_code, first_log, sent, root) = outcome;
    m.shutdown().await;
    assert_eq!(first_code, Some(0), "the first run sends: {first_log}");
    assert!(
        still_running,
        "the first run was still sending when the second was refused"
    );
    let err = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(6), "busy: {err}");
    let host = imcast::journal::hostname();
    let state_a = std::path::absolute(root.join("state-a")).expect("absolute");
    for want in [
        format!("pid {first_pid} on {host}"),
        format!("state directory {}", state_a.display()),
        "Nothing was sent".to_string(),
        "resume it there".to_string(),
    ] {
        assert!(err.contains(&want), "{want:?} in: {err}");
    }
    let err = String::from_utf8_lossy(&sent.stderr);
    assert_eq!(sent.status.code(), Some(6), "already sent: {err}");
    assert!(
        err.contains(&format!("already sent from {host} at"))
            && err.contains("--new-run")
            && err.contains(&state_a.display().to_string()),
        "{err}"
    );
    let out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        out.contains("Registered from other state directories")
            && out.contains(&format!("finished on {host} (pid {first_pid}")),
        "{out}"
    );
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
    // The refused state directory holds no journal run: nothing was opened there.
    assert!(
        !root.join("state-b").join("imcast.db").exists(),
        "the refused runs opened no journal"
    );
}
