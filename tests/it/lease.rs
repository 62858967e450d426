//! The run lease across processes: a sending `imcast run` paused (SIGSTOP) past its lease's
//! expiry is taken over by another `imcast run`, which finishes the run; revived (SIGCONT), the
//! old holder finds the fence moved, writes nothing and exits 6, and the mock's record shows no
//! recipient sent twice except those the journal reports `unknown`. Real processes (`imcast
//! mock-server`, the built binary), real files; the waits are on real processes (a lease expiry of
//! 2 s), not on a clock of ours.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use imcast::journal::{Journal, RecipientStatus};
use imcast::mock;

use crate::common::{bin, poll_while_running, record_lines, wait_within, MockServer, CHILD_LIMIT};

fn imcast_in(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG");
    c
}

fn signal(child: &Child, sig: &str) {
    let out = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .output()
        .expect("kill");
    assert!(out.status.success(), "kill {sig}");
}

/// Kills (SIGCONT first, then SIGKILL) and reaps the child if the test fails half-way.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(unix)]
#[test]
fn a_paused_holder_is_taken_over_after_its_lease_expires_and_revived_writes_nothing() {
    let rec_dir = tempfile::tempdir().expect("tempdir");
    let rec = rec_dir.path().join("record.jsonl");
    // A slow provider (up to 200 ms a request) and a limit that makes the run last ~10 s.
    let mock = MockServer::start(&[
        "--limit",
        "100000",
        "--window",
        "1s",
        "--latency-ms",
        "200",
        "--record",
        rec.to_str().expect("utf8"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("imcast.toml"),
        "[limits.batch]\nlimit = 200\nwindow = \"1s\"\n\
         [state]\nlease_expiry = \"2s\"\nlease_heartbeat = \"500ms\"\n",
    )
    .expect("imcast.toml");
    let ids: Vec<u64> = (0..2_000u64).map(|i| 100_000 + i).collect();
    let mut csv = String::from("user_id,grp\n");
    for (i, id) in ids.iter().enumerate() {
        csv.push_str(&format!("{id},g{}\n", i % 40));
    }
    std::fs::write(root.join("a.csv"), csv).expect("audience");
    std::fs::write(
        root.join("lease.yaml"),
        format!(
            "version: 1\nname: lease\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"Hello {{{{ grp }}}}\"\n\
             breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n",
            mock.endpoint()
        ),
    )
    .expect("campaign");

    // The first holder starts sending, then is paused (SIGSTOP) mid-run.
    let mut first = imcast_in(root, &["run", "lease.yaml", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn first");
    poll_while_running(
        &mut first,
        Duration::from_secs(120),
        "the first imcast run before its first sends",
        || mock.stats().messages >= 200,
    );
    signal(&first, "-STOP");
    let first_pid = first.id();
    let mut first = Guard(Some(first));

    // `imcast status` names the holder: the paused process.
    let out = imcast_in(root, &["status", "lease.yaml", "--output", "json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(v["status"], "running", "{v}");
    assert_eq!(v["lease"]["pid"], first_pid, "{v}");
    assert_eq!(v["lease"]["fence"], 1, "{v}");
    assert!(v["lease"]["expires_at"].is_string(), "{v}");
    let out = imcast_in(root, &["status", "lease.yaml"])
        .output()
        .expect("status");
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains(&format!("held by   pid {first_pid} on ")),
        "{human}"
    );

    // Past its expiry (2 s; renewed at most 0.5 s before the pause) another run takes over.
    // A real process's lease: real time.
    std::thread::sleep(Duration::from_millis(3_000));
    let second = imcast_in(root, &["run", "lease.yaml", "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn second");
    let second_pid = second.id();
    let out = wait_within(second, CHILD_LIMIT, "the second imcast run");
    let stderr2 = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "the taker finishes the run: {stderr2}"
    );
    assert!(stderr2.contains("Resuming unfinished run"), "{stderr2}");

    // Revived, the old holder finds the run taken over: it stops, writes nothing, exits 6.
    let sent_before_revival = mock.stats().messages;
    let child = first.0.take().expect("first");
    signal(&child, "-CONT");
    let out = wait_within(child, CHILD_LIMIT, "the first imcast run after SIGCONT");
    let stderr1 = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr1}");
    assert!(
        stderr1.contains(&format!(
            "was taken over by another imcast process (pid {second_pid} on "
        )),
        "{stderr1}"
    );
    assert!(stderr1.contains("wrote nothing more"), "{stderr1}");

    // The journal: finished by the taker, claimed twice, released; every recipient final.
    let j = Journal::open(&root.join(".imcast")).expect("journal");
    let run = j.latest_run("lease", false).expect("q").expect("run");
    assert_eq!(run.status.to_string(), "finished");
    let lease = j.lease(&run.id).expect("q").expect("run");
    assert_eq!((lease.holder, lease.fence), (None, 2));
    let status: BTreeMap<u64, RecipientStatus> = j
        .recipients(&run.id)
        .expect("rows")
        .into_iter()
        .filter_map(|r| r.id.map(|id| (id, r.status)))
        .collect();
    assert_eq!(status.len(), ids.len());
    assert!(
        status
            .values()
            .all(|s| matches!(s, RecipientStatus::Sent | RecipientStatus::Unknown)),
        "{status:?}"
    );
    let unknown: BTreeSet<u64> = status
        .iter()
        .filter(|(_, s)| **s == RecipientStatus::Unknown)
        .map(|(id, _)| *id)
        .collect();

    // The mock's record: everyone sent got it once; twice only among `unknown` recipients.
    let stats = mock.stats();
    let mut got: BTreeMap<u64, u64> = BTreeMap::new();
    for v in record_lines(&rec, stats.delivered) {
        *got.entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    for (id, s) in &status {
        let n = got.get(id).copied().unwrap_or(0);
        match s {
            RecipientStatus::Sent => assert_eq!(n, 1, "sent {id} delivered {n} times"),
            _ => assert!(n <= 2, "unknown {id} delivered {n} times"),
        }
    }
    let twice: BTreeSet<u64> = got
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        twice.is_subset(&unknown),
        "sent twice but not unknown: {twice:?}"
    );
    // The revived holder started no new call: anything it delivered after SIGCONT was a request
    // already in flight when it was paused, whose recipients the taker recorded `unknown`.
    let after = stats.messages - sent_before_revival;
    println!(
        "lease take-over: {} unknown, {} sent twice, {after} delivered after the revival; the old holder said: {stderr1}",
        unknown.len(),
        twice.len()
    );
    assert!(
        after <= unknown.len() as u64,
        "{after} messages after the revival, {} unknown",
        unknown.len()
    );
}
