//! A full disk under the state directory (issue 11): the run stops with exit 8 and one message
//! that names the file, says the disk is full and nothing was lost, and how to resume; after
//! space is freed `imcast run FILE` resumes and every recipient gets exactly one message (the
//! mock's record says so). Two ways to fill the disk: the `journal_full` failpoint (SQLite's own
//! SQLITE_FULL through `max_page_count`; works everywhere) and a real small tmpfs filled while
//! the run sends (root only; under CI a missing mount is a failure). The real binary against the
//! in-process mock on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use imcast::journal::{Journal, RecipientStatus};
use imcast::mock::{self, MockConfig};

use crate::common::{
    bin, poll_while_running, record_lines, wait_within, OutputWithin, CHILD_LIMIT,
};

/// `n` users (ids 100000..) and a batch campaign at `endpoint` in `dir`.
fn campaign(dir: &Path, n: u64, endpoint: &str, extra: &str) -> PathBuf {
    let mut csv = String::from("user_id\n");
    for i in 0..n {
        csv.push_str(&format!("{}\n", 100_000 + i));
    }
    std::fs::write(dir.join("a.csv"), csv).expect("audience");
    std::fs::write(dir.join("imcast.toml"), "").expect("imcast.toml");
    let p = dir.join("full.yaml");
    std::fs::write(
        &p,
        format!(
            "version: 1\nname: full\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"Hello\"\n{extra}"
        ),
    )
    .expect("campaign");
    p
}

fn imcast_run(dir: &Path, file: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("run")
        .arg(file)
        .arg("--yes")
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG");
    c
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

/// The disk-full message, once, with the temp dir and run id redacted.
fn the_message(out: &Output, dir: &Path) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{stderr}");
    let line = errors[0].to_string();
    assert_eq!(line.matches("disk is full").count(), 1, "said once: {line}");
    assert!(
        !line.contains("database or disk is full") && !line.contains("os error"),
        "not SQLite's or the OS's wording: {line}"
    );
    let canon = dir.canonicalize().expect("canon").display().to_string();
    let line = line
        .replace(&canon, "[DIR]")
        .replace(&dir.display().to_string(), "[DIR]");
    // The run id: `run 20260301T090000Z-3f9a: `.
    let mut words: Vec<String> = line.split(' ').map(str::to_string).collect();
    if words.get(1).is_some_and(|w| w == "run") {
        words[2] = "[RUN]:".into();
    }
    words.join(" ")
}

/// After the resume: no recipient pending, each exactly one delivery in the mock's record, and
/// the journal's `sent`/`unknown` (an answer the full disk kept from being recorded) cover all.
fn assert_resumed_whole(dir: &Path, state: &Path, rec: &Path, n: u64, delivered: u64) {
    assert_eq!(delivered, n, "the mock delivered each recipient once");
    let got = deliveries(rec, n);
    assert_eq!(got.len() as u64, n, "everybody got a message");
    assert!(
        got.values().all(|&k| k == 1),
        "nobody got two: {:?}",
        got.iter()
            .filter(|(_, &k)| k > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let j = Journal::open(state).expect("journal");
    let run = j.latest_run("full", false).expect("q").expect("a run");
    let counts = j.counts(&run.id).expect("counts");
    let c = |s| counts.get(&s).copied().unwrap_or(0);
    assert_eq!(c(RecipientStatus::Pending), 0, "{counts:?}");
    assert_eq!(
        c(RecipientStatus::Sent) + c(RecipientStatus::Unknown),
        n,
        "0 lost: {counts:?} ({})",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_stops_the_run_with_one_clear_message_and_the_resume_loses_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("record.jsonl");
    let m = mock::start(MockConfig {
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let n = 3000;
    let file = campaign(dir.path(), n, m.endpoint().as_str(), "");
    let (d, f) = (dir.path().to_path_buf(), file.clone());
    let first = tokio::task::spawn_blocking(move || {
        imcast_run(&d, &f, &[])
            .env("IMCAST_FAILPOINT", "journal_full:0")
            .output_limited()
            .expect("run")
    })
    .await
    .expect("join");
    assert_eq!(
        first.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    insta::assert_snapshot!("disk_full_journal", the_message(&first, dir.path()));
    assert!(
        m.stats().delivered < n,
        "the run stopped before the end ({} delivered)",
        m.stats().delivered
    );

    // Space freed (the failpoint gone): the same command resumes.
    let (d, f) = (dir.path().to_path_buf(), file.clone());
    let second = tokio::task::spawn_blocking(move || imcast_run(&d, &f, &[]).output_limited())
        .await
        .expect("join")
        .expect("run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        matches!(second.status.code(), Some(0 | 3)),
        "{:?}: {stderr}",
        second.status
    );
    assert!(stderr.contains("Resuming unfinished run"), "{stderr}");
    assert_resumed_whole(
        dir.path(),
        &dir.path().join(".imcast"),
        &rec,
        n,
        m.stats().delivered,
    );
}

/// The report step on a full disk: the run finished, its report could not be written; the
/// message says so and how to write it later, and `imcast report` then writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_does_not_fit_says_how_to_write_it_later() {
    if !can_mount_tmpfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let m = mock::start(MockConfig::default()).await.expect("mock");
    let file = campaign(dir.path(), 2000, m.endpoint().as_str(), "");
    let reports = dir.path().join("reports");
    let _mount = Tmpfs::mount(&reports, "1m");
    // Fill the reports disk before the run: the send (state dir elsewhere) works, the report
    // does not fit.
    let filler = reports.join("filler");
    fill(&filler);
    let (d, f) = (dir.path().to_path_buf(), file.clone());
    let out = tokio::task::spawn_blocking(move || {
        imcast_run(&d, &f, &["--report-format", "csv,jsonl"]).output_limited()
    })
    .await
    .expect("join")
    .expect("run");
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msg = the_message(&out, dir.path());
    assert!(msg.contains("the report of run"), "{msg}");
    assert!(msg.contains("`imcast report [DIR]/full.yaml`"), "{msg}");
    assert_eq!(m.stats().delivered, 2000, "the send itself was whole");
    std::fs::remove_file(&filler).expect("free space");
    let out = Command::new(bin())
        .arg("report")
        .arg(&file)
        .current_dir(dir.path())
        .output_limited()
        .expect("report");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- a real small tmpfs (root) ----------------------------------------------------------------

/// Whether this process may mount a tmpfs (root, and `mount` works here). When it cannot: under
/// CI the test fails; elsewhere a loud SKIPPED line and false.
fn can_mount_tmpfs() -> bool {
    let probe = tempfile::tempdir().expect("tempdir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(probe.path())
        .stdin(Stdio::null())
        .output_within(Duration::from_secs(30))
        .is_ok_and(|o| o.status.success());
    if ok {
        let _ = Command::new("umount")
            .arg(probe.path())
            .output_within(Duration::from_secs(30));
        return true;
    }
    crate::common::skip_or_fail(
        "cannot `mount -t tmpfs` (not root?), so a real full disk was NOT checked (the \
         journal_full failpoint test still runs).",
    );
    false
}

/// A tmpfs mounted at a directory; unmounted on drop.
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output_within(Duration::from_secs(30))
            .expect("mount");
        assert!(out.status.success(), "mount: {out:?}");
        Tmpfs {
            at: at.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.at)
            .output_within(Duration::from_secs(30));
    }
}

/// Write `path` until the disk holding it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let block = vec![0u8; 4096];
    loop {
        match f.write_all(&block).and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if imcast::exit::is_storage_full(&e) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// A real disk filling up while the run sends: the state directory on a small tmpfs, filled by
/// this test once the first messages were delivered. The run stops (exit 8, the message); with
/// the filler deleted the same command resumes and everybody got exactly one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_mid_run_stops_cleanly_and_the_resume_after_freeing_space_loses_nobody() {
    if !can_mount_tmpfs() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("record.jsonl");
    let m = mock::start(MockConfig {
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let n = 4000;
    // 500 a second: the run takes about 8 s, time enough to fill the disk under it.
    let file = campaign(
        dir.path(),
        n,
        m.endpoint().as_str(),
        "throttle: { limit: 500, window: 1s }\n",
    );
    let state = dir.path().join("state");
    let _mount = Tmpfs::mount(&state, "4m");
    let state_arg = state.display().to_string();
    let mut child = imcast_run(dir.path(), &file, &["--state-dir", &state_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run");
    let (r, st) = (rec.clone(), state.clone());
    let first = tokio::task::spawn_blocking(move || {
        let delivered = || {
            std::fs::read_to_string(&r)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        poll_while_running(
            &mut child,
            Duration::from_secs(120),
            "the run delivering its first calls",
            || delivered() >= 1000,
        );
        fill(&st.join("filler"));
        wait_within(child, CHILD_LIMIT, "the run on a full disk")
    })
    .await
    .expect("join");
    let filler = state.join("filler");
    assert_eq!(
        first.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let msg = the_message(&first, dir.path());
    assert!(
        msg.contains("the disk is full: imcast could not write [DIR]/state/"),
        "{msg}"
    );
    assert!(msg.contains("Nothing was lost"), "{msg}");
    assert!(
        msg.ends_with("then resume with `imcast run [DIR]/full.yaml`"),
        "{msg}"
    );
    assert!(m.stats().delivered < n, "stopped before the end");

    std::fs::remove_file(&filler).expect("free space");
    let (d, f) = (dir.path().to_path_buf(), file.clone());
    let second = tokio::task::spawn_blocking(move || {
        imcast_run(&d, &f, &["--state-dir", &state_arg]).output_limited()
    })
    .await
    .expect("join")
    .expect("run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        matches!(second.status.code(), Some(0 | 3)),
        "{:?}: {stderr}",
        second.status
    );
    assert_resumed_whole(dir.path(), &state, &rec, n, m.stats().delivered);
}
