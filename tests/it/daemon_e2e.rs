//! The daemon end to end as real processes: `imcast daemon` against `imcast mock-server`, a
//! campaign scheduled a few seconds ahead, killed (SIGKILL) mid-run and restarted. The union of
//! deliveries in the mock's record is the audience, with duplicates only among recipients the
//! journal reports `unknown`, and the occurrence fires once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imcast::daemon::state;
use imcast::journal::{Journal, RecipientStatus};
use imcast::mock;

use crate::common::{bin, status_until, MockServer, OutputWithin};

/// A child process killed on drop (a failing assertion must not leave a daemon behind).
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `imcast mock-server` (1000 a second, recording every request in `record`) and its endpoint.
pub(crate) fn mock_server(record: &Path) -> (MockServer, String) {
    let m = MockServer::start(&[
        "--limit",
        "1000",
        "--window",
        "1s",
        "--record",
        &record.to_string_lossy(),
    ]);
    let endpoint = m.endpoint();
    (m, endpoint)
}

/// `imcast daemon` on `root/campaigns` with state in `root/.imcast`, reports in `root/reports`,
/// the mock's keys, no failpoint, `RUST_LOG=info`, stdin and stdout closed, stderr to `log`.
pub(crate) fn daemon_cmd(root: &Path, log: std::fs::File) -> Command {
    let mut c = Command::new(bin());
    c.arg("daemon")
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
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    c
}

fn daemon(root: &Path, log: &Path, metrics_port: u16) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let child = daemon_cmd(root, log)
        .arg("--metrics")
        .arg(format!("127.0.0.1:{metrics_port}"))
        .spawn()
        .expect("start daemon");
    Proc(child)
}

/// An audience CSV (`user_id,grp`): the `i`-th of `ids` in group `g{i % groups}`.
pub(crate) fn grp_csv(ids: impl IntoIterator<Item = u64>, groups: u64) -> String {
    let mut csv = String::from("user_id,grp\n");
    for (i, id) in (0u64..).zip(ids) {
        csv.push_str(&format!("{id},g{}\n", i % groups));
    }
    csv
}

/// Campaign `name`: a batch text `"{greeting} {{ grp }}"` from sender 10001 to `a.csv` (column
/// `user_id`) through the provider at `endpoint`, scheduled once `at`.
pub(crate) fn batch_campaign(
    name: &str,
    endpoint: &str,
    greeting: &str,
    at: jiff::Timestamp,
) -> String {
    format!(
        "version: 1\nname: {name}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
         action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
         message:\n  type: text\n  text: \"{greeting} {{{{ grp }}}}\"\n\
         schedule:\n  at: {at}\n"
    )
}

/// Deliveries per recipient in the mock's record.
pub(crate) fn deliveries(path: &Path) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return out;
    };
    for l in text.lines() {
        // A line being written may be incomplete; the next read sees it whole.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
            if let Some(r) = v["recipient"].as_u64() {
                *out.entry(r).or_default() += 1;
            }
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Poll `f` every 50 ms, at most `tries` times; true once it holds.
pub(crate) fn wait_for(tries: u32, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Tick `d` (on the blocking pool: SQLite) until `done` holds, at most ~30 s; gives `d` back and
/// whether `done` held.
async fn tick_until(
    d: imcast::daemon::Daemon,
    mut done: impl FnMut() -> bool + Send + 'static,
) -> (imcast::daemon::Daemon, bool) {
    let mut d = d;
    for _ in 0..300 {
        let (back, back_done, ok) = tokio::task::spawn_blocking(move || {
            d.tick().expect("tick");
            let ok = done();
            (d, done, ok)
        })
        .await
        .expect("join");
        d = back;
        done = back_done;
        if ok {
            return (d, true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (d, false)
}

/// In `root`: `imcast.toml` holding `toml`, and a folder `campaigns` with campaign `c` (a batch
/// text to `a.csv`, due now) and its audience `a.csv`: `n` users from `id_base` up, in `groups`
/// groups (`grp`); then a [`SendRunner`](imcast::daemon::send_runner::SendRunner) sending to the
/// mock `m` and a [`Daemon`](imcast::daemon::Daemon) on the folder (system clock), with state in
/// `root/.imcast` and reports in `root/reports`. Returns (state directory, runner, daemon).
fn send_daemon(
    root: &Path,
    toml: &str,
    m: &mock::MockHandle,
    (n, id_base, groups): (u64, u64, u64),
) -> (
    PathBuf,
    std::sync::Arc<imcast::daemon::send_runner::SendRunner>,
    imcast::daemon::Daemon,
) {
    use imcast::daemon::send_runner::{SendRunner, SendRunnerConfig};
    use imcast::daemon::source::SpecSource;
    use imcast::daemon::{Daemon, DaemonConfig};

    std::fs::write(root.join("imcast.toml"), toml).expect("toml");
    let campaigns = root.join("campaigns");
    std::fs::create_dir_all(&campaigns).expect("mkdir");
    std::fs::write(
        campaigns.join("a.csv"),
        grp_csv(id_base..id_base + n, groups),
    )
    .expect("csv");
    #[allow(
        clippy::disallowed_methods,
        reason = "the real runner schedules on the system clock: the campaign is due now"
    )]
    let now = jiff::Timestamp::now().as_second();
    let at = jiff::Timestamp::from_second(now).expect("at");
    std::fs::write(
        campaigns.join("c.yaml"),
        batch_campaign("c", m.endpoint().as_str(), "Hi", at),
    )
    .expect("campaign");
    let state_dir = root.join(".imcast");
    let clock: imcast::clock::SharedClock = std::sync::Arc::new(imcast::clock::SystemClock);
    let runner = SendRunner::new(
        SendRunnerConfig {
            state_dir: state_dir.clone(),
            report_dir: Some(root.join("reports")),
            config: None,
            target: Some((m.endpoint(), m.credentials())),
            report_formats: None,
        },
        clock.clone(),
    );
    let d = Daemon::open(
        DaemonConfig::new(&campaigns, &state_dir),
        clock,
        Box::new(SpecSource::default()),
        runner.clone(),
    )
    .expect("daemon");
    (state_dir, runner, d)
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "the real daemon binary schedules on the system clock; a child's time limit is wall time"
)]
fn daemon_fires_once_survives_sigkill_and_delivers_the_audience_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = std::fs::canonicalize(tmp.path()).expect("canon");
    let rec = root.join("record.jsonl");
    let (_mock, endpoint) = mock_server(&rec);
    // 100 messages a second: 1,000 users in 100 calls take about ten seconds.
    std::fs::write(
        root.join("imcast.toml"),
        "[limits.batch]\nlimit = 100\nwindow = \"1s\"\n",
    )
    .expect("imcast.toml");
    let campaigns = root.join("campaigns");
    std::fs::create_dir_all(&campaigns).expect("mkdir");
    let ids: Vec<u64> = (0..1_000).map(|i| 200_000 + i).collect();
    std::fs::write(campaigns.join("a.csv"), grp_csv(ids.iter().copied(), 100)).expect("audience");
    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 4).expect("at");
    std::fs::write(
        campaigns.join("e2e.yaml"),
        batch_campaign("e2e", &endpoint, "Hello", at),
    )
    .expect("campaign");
    let log = root.join("daemon.log");
    let port = free_port();

    // First daemon: fires at `at`; SIGKILL once part of the audience got it.
    let mut first = daemon(&root, &log, port);
    let started = wait_for(1_200, || deliveries(&rec).len() >= 150);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        started,
        "the occurrence never started sending:\n{}",
        read_log()
    );
    first.0.kill().expect("SIGKILL");
    // Reaped within a minute (SIGKILL cannot be ignored; the limit guards a zombie).
    status_until(&mut first.0, Instant::now() + Duration::from_secs(60))
        .expect("the killed daemon was reaped");
    let at_kill = deliveries(&rec).len();
    assert!(at_kill < ids.len(), "killed mid-run ({at_kill} delivered)");

    // Second daemon: resumes the same run and finishes it.
    let port2 = free_port();
    let mut second = daemon(&root, &log, port2);
    let conn = || state::open(&root.join(".imcast")).expect("state");
    let finished = wait_for(2_400, || {
        state::occurrences(&conn(), Some("e2e"))
            .unwrap_or_default()
            .iter()
            .any(|r| r.finished_at.is_some())
    });
    assert!(finished, "the run did not finish:\n{}", read_log());
    let occ = state::occurrences(&conn(), Some("e2e")).expect("rows");
    assert_eq!(occ.len(), 1, "one occurrence: {occ:?}");
    assert_eq!(occ[0].occurrence, at.as_second());
    assert_eq!(occ[0].status, "done", "{occ:?}\n{}", read_log());
    // The record names the process that finished it, and whom it took the run over from.
    let host = state::host_name();
    let note = format!("taken over from {host} (pid {}) at ", first.0.id());
    assert_eq!(occ[0].pid, Some(i64::from(second.0.id())), "{occ:?}");
    assert!(
        occ[0].detail.as_deref().is_some_and(|d| d.contains(&note)),
        "{occ:?}"
    );
    let out = Command::new(bin())
        .arg("schedule")
        .arg(root.join("campaigns"))
        .arg("--state-dir")
        .arg(root.join(".imcast"))
        .output_limited()
        .expect("imcast schedule");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("done   by {host} (pid {})", second.0.id()))
            && shown.contains(&note),
        "{shown}"
    );
    // `imcast status` of the campaign says the same of its run's occurrence.
    let out = Command::new(bin())
        .arg("status")
        .arg(campaigns.join("e2e.yaml"))
        .arg("--state-dir")
        .arg(root.join(".imcast"))
        .output_limited()
        .expect("imcast status");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!(
            "  daemon    occurrence done by {host} (pid {})\n            {note}",
            second.0.id()
        )),
        "{shown}"
    );

    // The journal: exactly one run, for this occurrence, finished.
    let journal = Journal::open(&root.join(".imcast")).expect("journal");
    let runs = journal.runs("e2e").expect("runs");
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    assert_eq!(runs[0].occurrence.as_deref(), Some(occ[0].run_key.as_str()));
    let counts = journal.counts(&runs[0].id).expect("counts");
    let unknown: BTreeSet<u64> = journal
        .recipients(&runs[0].id)
        .expect("recipients")
        .into_iter()
        .filter(|r| r.status == RecipientStatus::Unknown)
        .filter_map(|r| r.id)
        .collect();
    assert_eq!(
        counts[&RecipientStatus::Sent] + counts[&RecipientStatus::Unknown],
        ids.len() as u64,
        "{counts:?}"
    );
    assert_eq!(counts[&RecipientStatus::Pending], 0);

    // The union of deliveries is the audience; duplicates only among reported `unknown`.
    let got = deliveries(&rec);
    let want: BTreeSet<u64> = ids.iter().copied().collect();
    let delivered: BTreeSet<u64> = got.keys().copied().collect();
    let missing: Vec<&u64> = want.difference(&delivered).collect();
    // A call in flight at the SIGKILL may have been lost before the mock processed it: its
    // receivers are `unknown` (reported, not resent) and may legitimately be missing.
    assert!(
        missing.iter().all(|id| unknown.contains(id)),
        "not delivered and not reported unknown: {missing:?}"
    );
    assert!(delivered.is_subset(&want), "delivered outside the audience");
    let dups: Vec<(&u64, &u64)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.iter().all(|(id, _)| unknown.contains(id)),
        "duplicates beyond reported unknown: {dups:?}"
    );

    let text = read_log();
    assert_eq!(text.matches("fired").count(), 1, "{text}");
    assert!(
        text.contains("resuming a run started before a restart"),
        "{text}"
    );
    assert!(
        std::fs::read_dir(root.join("reports"))
            .map(|d| d.count() > 0)
            .unwrap_or(false),
        "a report was written"
    );
    // The daemon's run has its report page too.
    let pages: Vec<PathBuf> = std::fs::read_dir(root.join("reports/e2e"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("report.html"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    assert!(!pages.is_empty(), "the daemon's run has report.html");

    // Metrics from the journal, control through the one table, graceful SIGTERM.
    let body = wait_for(200, || {
        crate::scheduler::http::blocking_get(port2)
            .contains("imcast_messages{campaign=\"e2e\",status=\"sent\"}")
    });
    assert!(body, "{}", crate::scheduler::http::blocking_get(port2));
    let metrics = crate::scheduler::http::blocking_get(port2);
    assert!(
        metrics.contains("imcast_rate_limit{action=\"batch\",window_seconds=\"1\"}"),
        "{metrics}"
    );
    let out = Command::new(bin())
        .args(["pause", "e2e", "--state-dir"])
        .arg(root.join(".imcast"))
        .output_limited()
        .expect("imcast pause");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("e2e: paused"), "{said}");
    let kill = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .output_limited()
        .expect("kill");
    assert!(kill.status.success());
    let status = status_until(&mut second.0, Instant::now() + Duration::from_secs(120))
        .unwrap_or_else(|| {
            panic!(
                "the daemon did not stop within 120 s of SIGTERM (killed). Its log:\n{}",
                read_log()
            )
        });
    assert_eq!(status.code(), Some(143));
}

/// The kill switch needs no daemon: a `STOP` file in the state directory pauses an `imcast run`
/// engine before it sends anything, and the run resumes once it is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_file_pauses_a_plain_run_and_it_resumes_after() {
    use imcast::run::{run_campaign, Request};
    use imcast::send::{StopReason, StopToken};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(tmp.path()).expect("canon");
    let m = mock::start(mock::MockConfig::default())
        .await
        .expect("mock");
    let file = root.join("s.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: s\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: batch\nsender: 10001\naudience: {{ ids: [1, 2, 3] }}\nmessage: {{ type: text, text: hi }}\n",
            m.endpoint()
        ),
    )
    .expect("campaign");
    std::fs::create_dir_all(root.join(".imcast")).expect("state dir");
    std::fs::write(root.join(".imcast").join("STOP"), "").expect("stop file");
    let campaign =
        imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let paths = imcast::config::RepoPaths::discover(&file, None, None, None);
    let req = || {
        let mut r = Request::new(campaign.clone(), paths.clone());
        r.target = Some((m.endpoint(), m.credentials()));
        r.flags.mock = true;
        r
    };
    let clock: imcast::clock::SharedClock = Arc::new(imcast::clock::SystemClock);
    let s = run_campaign(req(), clock.clone(), StopToken::new())
        .await
        .expect("run");
    assert_eq!(s.reason, Some(StopReason::Paused), "{s:?}");
    assert_eq!(m.stats().messages, 0, "nothing sent under the stop file");
    std::fs::remove_file(root.join(".imcast").join("STOP")).expect("rm");
    let s = run_campaign(req(), clock, StopToken::new())
        .await
        .expect("run");
    assert_eq!(s.reason, Some(StopReason::Completed), "{s:?}");
    assert_eq!(s.counts[&RecipientStatus::Sent], 3);
    m.shutdown().await;
}

/// The daemon core with the real source and runner (in process, real clock, the mock over
/// HTTP): pause stops the engine and the occurrence shows `paused`, resume continues the same
/// run, cancel makes the remaining recipients `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::disallowed_methods,
    reason = "the real daemon binary schedules on the system clock; a child's time limit is wall time"
)]
async fn pause_resume_cancel_act_on_a_running_occurrence() {
    use imcast::journal::ControlRequest;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(tmp.path()).expect("canon");
    let m = mock::start(mock::MockConfig::default())
        .await
        .expect("mock");
    let (state_dir, runner, mut d) = send_daemon(
        &root,
        "[limits.batch]\nlimit = 50\nwindow = \"1s\"\n",
        &m,
        (1_000, 300_000, 100),
    );
    // What `imcast pause|resume|cancel c` records.
    let request = |req: ControlRequest| {
        Journal::open(&state_dir)
            .expect("journal")
            .request_control("c", req, Some("test"), jiff::Timestamp::UNIX_EPOCH)
            .expect("request")
    };
    let status = |conn: &state::Conn| {
        state::occurrences(conn, Some("c"))
            .expect("rows")
            .first()
            .map(|r| r.status.clone())
            .unwrap_or_default()
    };
    let sd = state_dir.clone();
    let m_ref = Arc::new(m);
    let m2 = m_ref.clone();
    let (back, ok) = tick_until(d, move || m2.stats().messages >= 100).await;
    d = back;
    assert!(ok, "the occurrence started sending");

    request(ControlRequest::Pause);
    let sd2 = sd.clone();
    let (back, ok) = tick_until(d, move || {
        status(&state::open(&sd2).expect("state")) == "paused"
    })
    .await;
    d = back;
    assert!(ok, "paused");
    let journal = Journal::open(&state_dir).expect("journal");
    let run = journal.runs("c").expect("runs").remove(0);
    // The engine stops within its in-flight calls: the run is paused with recipients pending.
    let (back, ok) = tick_until(d, {
        let sd3 = sd.clone();
        let id = run.id.clone();
        move || {
            let j = Journal::open(&sd3).expect("journal");
            j.run(&id)
                .expect("run")
                .is_some_and(|r| r.status != imcast::journal::RunStatus::Running)
        }
    })
    .await;
    d = back;
    assert!(ok, "the engine stopped");
    assert!(
        journal
            .count_status(&run.id, RecipientStatus::Pending)
            .expect("q")
            > 0
    );

    request(ControlRequest::Resume);
    let sd4 = sd.clone();
    let (back, ok) = tick_until(d, move || {
        status(&state::open(&sd4).expect("state")) == "running"
    })
    .await;
    d = back;
    assert!(ok, "running again");

    request(ControlRequest::Cancel);
    let sd5 = sd.clone();
    let (back, ok) = tick_until(d, move || {
        status(&state::open(&sd5).expect("state")) == "cancelled"
    })
    .await;
    d = back;
    assert!(ok, "cancelled");
    // The runner finishes the cancel in the journal: wait (bounded) for its tasks.
    runner.drain().await;
    drop(d);
    let runs = journal.runs("c").expect("runs");
    assert_eq!(runs.len(), 1, "resume continued the same run: {runs:?}");
    let counts = journal.counts(&runs[0].id).expect("counts");
    assert_eq!(counts[&RecipientStatus::Pending], 0, "{counts:?}");
    assert!(counts[&RecipientStatus::Cancelled] > 0, "{counts:?}");
    assert_eq!(
        counts[&RecipientStatus::Sent]
            + counts[&RecipientStatus::Cancelled]
            + counts[&RecipientStatus::Unknown],
        1_000,
        "{counts:?}"
    );
    assert_eq!(runs[0].status, imcast::journal::RunStatus::Cancelled);
    assert_eq!(m_ref.stats().messages, counts[&RecipientStatus::Sent]);
}

/// A run whose lease another live process holds is "not yet" for the daemon, not a failure: the
/// occurrence is paused mid-run, another journal (a process that came back, or the daemon a
/// takeover waits for) claims the run with a 2 s lease, and the run is resumed. The runner's
/// open is refused (the lease is held) and retried every `[state] lease_heartbeat` (500 ms)
/// until the lease expired; then the run resumes with a new fence (the other holder is fenced
/// off) and finishes: the occurrence is `done`, every recipient sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::disallowed_methods,
    reason = "the real runner schedules on the system clock; leases expire in wall time"
)]
async fn a_run_whose_lease_is_held_elsewhere_waits_and_resumes_once_it_expired() {
    use imcast::journal::ControlRequest;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(tmp.path()).expect("canon");
    let m = Arc::new(
        mock::start(mock::MockConfig::default())
            .await
            .expect("mock"),
    );
    let n = 300u64;
    let (state_dir, runner, mut d) = send_daemon(
        &root,
        "[state]\nlease_heartbeat = \"500ms\"\nlease_expiry = \"2s\"\n\n\
         [limits.batch]\nlimit = 50\nwindow = \"1s\"\n",
        &m,
        (n, 400_000, 30),
    );
    let request = |req: ControlRequest| {
        Journal::open(&state_dir)
            .expect("journal")
            .request_control("c", req, Some("test"), jiff::Timestamp::UNIX_EPOCH)
            .expect("request")
    };
    let status = |sd: &Path| {
        state::occurrences(&state::open(sd).expect("state"), Some("c"))
            .expect("rows")
            .first()
            .map(|r| r.status.clone())
            .unwrap_or_default()
    };
    let m2 = m.clone();
    let (back, ok) = tick_until(d, move || m2.stats().messages >= 50).await;
    d = back;
    assert!(ok, "the occurrence started sending");
    request(ControlRequest::Pause);
    let journal = Journal::open(&state_dir).expect("journal");
    let run = journal.runs("c").expect("runs").remove(0);
    let (sd, id) = (state_dir.clone(), run.id.clone());
    let (back, ok) = tick_until(d, move || {
        status(&sd) == "paused"
            && Journal::open(&sd)
                .expect("journal")
                .run(&id)
                .expect("run")
                .is_some_and(|r| r.status != imcast::journal::RunStatus::Running)
    })
    .await;
    d = back;
    assert!(ok, "paused and the engine stopped");
    let sent_before = m.stats().messages;
    assert!(sent_before < n, "paused mid-run ({sent_before} sent)");

    // Another holder takes the run's lease for 2 s and stays alive (this journal stays open).
    let other = Journal::open(&state_dir).expect("journal");
    other.set_lease_expiry(Duration::from_secs(2));
    let run = other.run(&run.id).expect("run").expect("exists");
    other
        .claim(&run, jiff::Timestamp::now())
        .expect("the other holder claims the lease");
    let held_until = jiff::Timestamp::now().as_millisecond() + 2_000;

    // Resume: not yet (the lease is held) — the occurrence stays running, nothing is sent — and
    // once the lease expired the run goes on and finishes.
    request(ControlRequest::Resume);
    let (sd, m3) = (state_dir.clone(), m.clone());
    let saw_held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw = saw_held.clone();
    let (back, ok) = tick_until(d, move || {
        let st = status(&sd);
        if jiff::Timestamp::now().as_millisecond() < held_until - 300 {
            // While the lease is held: the occurrence is not failed and nothing more is sent.
            assert!(st == "running" || st == "paused", "{st}");
            assert_eq!(
                m3.stats().messages,
                sent_before,
                "sent while the lease was held"
            );
            saw.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        st == "done"
    })
    .await;
    d = back;
    assert!(
        ok,
        "the run finished after the lease expired: {}",
        status(&state_dir)
    );
    assert!(saw_held.load(std::sync::atomic::Ordering::SeqCst));
    runner.drain().await;
    drop(d);
    let counts = journal.counts(&run.id).expect("counts");
    assert_eq!(counts[&RecipientStatus::Sent], n, "{counts:?}");
    assert_eq!(m.stats().messages, n, "each recipient sent once");
    // The other holder was fenced off when the runner took the run over.
    let e = other
        .renew(&run.id, jiff::Timestamp::now())
        .expect_err("fenced");
    assert!(e.is_fenced(), "{e}");
}
