//! Many `imcast run` processes on one campaign at the same instant, and a kill -9 storm: real
//! processes (the built binary) against one `imcast mock-server` process that records every
//! delivery, in fresh temp state directories.
//!
//! Releasing processes together: each `imcast run` reads its secret key from its own FIFO
//! (`VOLC_SECRETKEY_FILE`), the first thing a run does after loading the campaign. The test
//! waits until every process has opened its FIFO, then writes the key to all of them at once,
//! so they plan, open the journal and decide within the same few milliseconds.
//!
//! Every child has a time limit: one that hangs is killed and fails the test.

#![cfg(unix)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use imcast::journal::{Journal, RecipientStatus, RunStatus};
use imcast::mock::{self, MockStats};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::{bin, OutputWithin};

/// Processes started at once.
const N: usize = 4;
/// Repetitions of each race, each on a fresh state directory.
const REPS: u64 = 20;
/// Longest any one child may take.
const CHILD_LIMIT: Duration = Duration::from_secs(60);
const CAMPAIGN: &str = "race";

// ---- the mock provider ----------------------------------------------------------------------

/// `imcast mock-server` with `--record`; killed on drop.
struct MockProc {
    child: Child,
    addr: String,
    record: PathBuf,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl MockProc {
    fn start(latency_ms: u64) -> MockProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("record.jsonl");
        let mut child = Command::new(bin())
            .arg("mock-server")
            .args(["--limit", "1000000", "--window", "1s", "--latency-ms"])
            .arg(latency_ms.to_string())
            .arg("--record")
            .arg(&record)
            .env_remove("VOLC_ACCESSKEY")
            .env_remove("VOLC_SECRETKEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mock-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if !l.trim().is_empty() => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mock-server printed no address: {other:?}");
            }
        };
        MockProc {
            child,
            addr: line.trim().to_string(),
            record,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn stats(&self) -> MockStats {
        let url = format!("{}/stats", self.endpoint());
        self.rt.block_on(async {
            self.client
                .get(url)
                .send()
                .await
                .expect("GET /stats")
                .json::<MockStats>()
                .await
                .expect("stats json")
        })
    }

    /// Deliveries per recipient, once the record file holds every delivery the mock counted.
    #[allow(
        clippy::disallowed_methods,
        reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
    )]
    fn deliveries(&self) -> BTreeMap<u64, u64> {
        let want = self.stats().delivered;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.record).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() as u64 >= want || Instant::now() > deadline {
                let mut m = BTreeMap::new();
                for l in lines {
                    let v: Value = serde_json::from_str(l).expect("record line");
                    *m.entry(v["recipient"].as_u64().expect("recipient"))
                        .or_default() += 1;
                }
                assert!(
                    m.values().sum::<u64>() >= want,
                    "the record file holds every delivery the mock counted ({want})"
                );
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MockProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- campaigns and processes ----------------------------------------------------------------

/// A campaigns repository (imcast.toml, audience, campaign file) with its state in `.imcast`.
struct Repo {
    dir: tempfile::TempDir,
    file: PathBuf,
    ids: Vec<u64>,
}

impl Repo {
    /// `n` users from id `first`, in `groups` content groups (one call each while ≤ 500).
    fn new(endpoint: &str, first: u64, n: u64, groups: u64) -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("imcast.toml"),
            "[limits.batch]\nlimit = 1000000\nwindow = \"1s\"\n",
        )
        .expect("imcast.toml");
        let ids: Vec<u64> = (first..first + n).collect();
        let mut csv = String::from("user_id,grp\n");
        for (i, id) in ids.iter().enumerate() {
            csv.push_str(&format!("{id},g{}\n", i as u64 % groups));
        }
        std::fs::write(dir.path().join("a.csv"), csv).expect("audience");
        let file = dir.path().join(format!("{CAMPAIGN}.yaml"));
        std::fs::write(
            &file,
            format!(
                "version: 1\nname: {CAMPAIGN}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
                 action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
                 message:\n  type: text\n  text: \"Hello {{{{ grp }}}}\"\n\
                 breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n"
            ),
        )
        .expect("campaign");
        Repo { dir, file, ids }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn journal(&self) -> Journal {
        Journal::open(&self.path(".imcast")).expect("journal")
    }

    /// `imcast run FILE --yes` in the repo with the mock's access key; the secret comes from
    /// `secret_file` (a FIFO) or, without one, from the environment.
    fn run(&self, secret_file: Option<&Path>, stderr: &Path) -> Command {
        let mut c = Command::new(bin());
        c.arg("run")
            .arg(&self.file)
            .arg("--yes")
            .current_dir(self.dir.path())
            .env("VOLC_ACCESSKEY", mock::DEFAULT_ACCESS_KEY)
            .env_remove("IMCAST_FAILPOINT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(stderr).expect("stderr file"));
        match secret_file {
            Some(f) => c.env_remove("VOLC_SECRETKEY").env("VOLC_SECRETKEY_FILE", f),
            None => c
                .env("VOLC_SECRETKEY", mock::DEFAULT_SECRET_KEY)
                .env_remove("VOLC_SECRETKEY_FILE"),
        };
        c
    }

    /// Final status of every valid recipient of the latest run, and the run's status.
    fn statuses(&self) -> (RunStatus, BTreeMap<u64, RecipientStatus>) {
        let j = self.journal();
        let run = j
            .latest_run(CAMPAIGN, false)
            .expect("q")
            .expect("a run exists");
        let st = j
            .recipients(&run.id)
            .expect("rows")
            .into_iter()
            .filter_map(|r| r.id.map(|id| (id, r.status)))
            .collect();
        (run.status, st)
    }
}

/// A child process with its stderr file; killed (and reaped) on drop.
struct Proc {
    child: Child,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(mut c: Command, stderr: PathBuf) -> Proc {
        Proc {
            child: c.spawn().expect("spawn imcast"),
            stderr,
            status: None,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Wait at most until `deadline`; a child still running then is killed and fails the test.
    #[allow(
        clippy::disallowed_methods,
        reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
    )]
    fn wait_until(&mut self, deadline: Instant, ctx: &str) -> ExitStatus {
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{ctx}: imcast run did not end within its time limit; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        self.status = Some(self.child.wait().expect("reap"));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mkfifo(path: &Path) {
    let out = Command::new("mkfifo")
        .arg(path)
        .output_limited()
        .expect("run mkfifo");
    assert!(out.status.success(), "mkfifo {}", path.display());
}

/// Wait until every process has opened its FIFO (it blocks reading the secret), then write
/// the secret to all of them at once.
#[allow(
    clippy::disallowed_methods,
    reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
)]
fn release(fifos: &[PathBuf], procs: &mut [Proc], ctx: &str) {
    let (opened_tx, opened_rx) = mpsc::channel::<()>();
    let mut go = Vec::new();
    for f in fifos {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let (f, tx) = (f.clone(), opened_tx.clone());
        std::thread::spawn(move || {
            // Opening a FIFO for writing waits until its reader has opened it.
            let Ok(mut w) = std::fs::OpenOptions::new().write(true).open(&f) else {
                return;
            };
            let _ = tx.send(());
            if go_rx.recv().is_ok() {
                let _ = w.write_all(mock::DEFAULT_SECRET_KEY.as_bytes());
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut opened = 0;
    while opened < fifos.len() {
        match opened_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(()) => opened += 1,
            Err(_) => {
                if let Some(p) = procs
                    .iter_mut()
                    .find_map(|p| p.try_status().is_some().then_some(p))
                {
                    panic!(
                        "{ctx}: a process ended before reading its key:\n{}",
                        p.stderr()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "{ctx}: not every process opened its key file in time"
                );
            }
        }
    }
    for g in go {
        let _ = g.send(());
    }
}

/// Start `N` runs of `repo`'s campaign, released together; wait for all. Returns them ended.
#[allow(
    clippy::disallowed_methods,
    reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
)]
fn race(repo: &Repo, ctx: &str) -> Vec<Proc> {
    let fifos: Vec<PathBuf> = (0..N)
        .map(|i| {
            let f = repo.path(&format!("secret-{i}.fifo"));
            mkfifo(&f);
            f
        })
        .collect();
    let mut procs: Vec<Proc> = fifos
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let err = repo.path(&format!("stderr-{i}.txt"));
            Proc::spawn(repo.run(Some(f), &err), err)
        })
        .collect();
    release(&fifos, &mut procs, ctx);
    let deadline = Instant::now() + CHILD_LIMIT;
    for p in procs.iter_mut() {
        p.wait_until(deadline, ctx);
    }
    procs
}

/// Of ended processes: the one that was not refused (asserting there is exactly one), after
/// checking that every other exited 6 saying another process is sending.
fn the_one_that_sent<'p>(procs: &'p [Proc], ctx: &str) -> &'p Proc {
    let (busy, other): (Vec<&Proc>, Vec<&Proc>) = procs
        .iter()
        .partition(|p| p.status.and_then(|s| s.code()) == Some(6));
    let report = || {
        procs
            .iter()
            .map(|p| format!("exit {:?}:\n{}", p.status, p.stderr()))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(
        other.len(),
        1,
        "{ctx}: exactly one process sends\n{}",
        report()
    );
    assert_eq!(busy.len(), N - 1, "{ctx}\n{}", report());
    for p in busy {
        assert!(
            p.stderr().contains("being sent by another imcast process"),
            "{ctx}: {}",
            p.stderr()
        );
    }
    other[0]
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
)]
fn n_runs_started_at_once_send_once() {
    let started = Instant::now();
    // One call per run, answered after 800 ms: the first run is still sending while the others
    // decide, even on a loaded machine.
    let mock = MockProc::start(800);
    let per_rep = 40;
    for rep in 0..REPS {
        let ctx = format!("fresh run, repetition {rep}");
        // Each repetition its own recipients, so the one mock counts every repetition apart.
        let repo = Repo::new(&mock.endpoint(), 1_000_000 + rep * 1_000, per_rep, 1);
        let procs = race(&repo, &ctx);
        let winner = the_one_that_sent(&procs, &ctx);
        assert_eq!(
            winner.status.and_then(|s| s.code()),
            Some(0),
            "{ctx}: {}",
            winner.stderr()
        );
        assert!(
            !winner.stderr().contains("already"),
            "{ctx}: it sent, not found a finished run: {}",
            winner.stderr()
        );
        let (status, st) = repo.statuses();
        assert_eq!(status, RunStatus::Finished, "{ctx}");
        assert_eq!(
            repo.journal().runs(CAMPAIGN).expect("runs").len(),
            1,
            "{ctx}: one run"
        );
        assert!(
            st.values().all(|s| *s == RecipientStatus::Sent),
            "{ctx}: {st:?}"
        );
        let delivered = mock.deliveries();
        for id in &repo.ids {
            assert_eq!(
                delivered.get(id),
                Some(&1),
                "{ctx}: recipient {id} delivered once"
            );
        }
        assert_eq!(mock.stats().duplicates, 0, "{ctx}");
    }
    let st = mock.stats();
    assert_eq!(st.delivered, REPS * per_rep, "{st:?}");
    assert_eq!(st.duplicates, 0);
    eprintln!(
        "{REPS} x {N} runs at once: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
)]
fn n_processes_resuming_one_interrupted_run_resume_it_once() {
    let started = Instant::now();
    // 8 calls of 10, 4 in flight, 400 ms each: the resumed run sends for about 0.8 s.
    let mock = MockProc::start(400);
    let per_rep = 80;
    for rep in 0..REPS {
        let ctx = format!("resume, repetition {rep}");
        let repo = Repo::new(&mock.endpoint(), 2_000_000 + rep * 1_000, per_rep, 8);
        // Interrupted: the process dies right after its second call is marked in flight.
        let err = repo.path("crash.txt");
        let mut c = repo.run(None, &err);
        c.env("IMCAST_FAILPOINT", "after_mark:2");
        let mut crash = Proc::spawn(c, err);
        let s = crash.wait_until(Instant::now() + CHILD_LIMIT, &ctx);
        assert!(!s.success(), "{ctx}: the first process aborted");
        assert!(
            crash.stderr().contains("IMCAST_FAILPOINT"),
            "{ctx}: {}",
            crash.stderr()
        );
        let unfinished = repo
            .journal()
            .unfinished_run(CAMPAIGN, None)
            .expect("q")
            .expect("an interrupted run");

        let procs = race(&repo, &ctx);
        let winner = the_one_that_sent(&procs, &ctx);
        // 3: the calls in flight at the crash left recipients `unknown`.
        assert!(
            matches!(winner.status.and_then(|s| s.code()), Some(0 | 3)),
            "{ctx}: {}",
            winner.stderr()
        );
        assert!(
            winner.stderr().contains("Resuming unfinished run"),
            "{ctx}: {}",
            winner.stderr()
        );
        let j = repo.journal();
        let runs = j.runs(CAMPAIGN).expect("runs");
        assert_eq!(runs.len(), 1, "{ctx}: resumed, no new run");
        assert_eq!(runs[0].id, unfinished.id);
        let (status, st) = repo.statuses();
        assert_eq!(status, RunStatus::Finished, "{ctx}");
        let delivered = mock.deliveries();
        for id in &repo.ids {
            let n = delivered.get(id).copied().unwrap_or(0);
            match st.get(id) {
                Some(RecipientStatus::Sent) => assert_eq!(n, 1, "{ctx}: {id} sent once"),
                Some(RecipientStatus::Unknown) => assert!(n <= 1, "{ctx}: {id} never resent"),
                other => panic!("{ctx}: recipient {id} ended {other:?}"),
            }
        }
        assert_eq!(mock.stats().duplicates, 0, "{ctx}");
    }
    eprintln!(
        "{REPS} x ({N} processes resuming one interrupted run): {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "real processes race on the real clock: a child's time limit, elapsed time of the race"
)]
fn kill_9_storm_then_resume_leaves_every_recipient_final() {
    const KILLS: u32 = 20;
    let seed: u64 = std::env::var("IMCAST_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    let ctx = format!("kill storm seed {seed} (rerun with IMCAST_STORM_SEED={seed})");
    eprintln!("{ctx}");
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // 3,000 recipients in 400 calls of 7-8, 4 calls in flight, each answered after 100 ms:
    // about 10 s of sending in all. A kill lands at most 300 ms into sending (≤ 12 calls done,
    // ≤ 4 in doubt), so 20 kills leave work for the final run.
    let mock = MockProc::start(100);
    let repo = Repo::new(&mock.endpoint(), 3_000_000, 3_000, 400);
    let mut kills = 0u32;
    let mut in_startup = 0u32;
    let mut attempt = 0u32;
    while kills < KILLS {
        attempt += 1;
        assert!(
            attempt <= 3 * KILLS,
            "{ctx}: the run kept ending before its kill"
        );
        let before = mock.stats().requests;
        let err = repo.path(&format!("storm-{attempt}.txt"));
        let mut p = Proc::spawn(repo.run(None, &err), err);
        // One kill in four at a random instant from the start (planning, opening the journal,
        // deciding); the others at a random instant after this process's first request.
        if rng.random_range(0..4) == 0 {
            in_startup += 1;
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=1_000)));
        } else {
            let deadline = Instant::now() + CHILD_LIMIT;
            while mock.stats().requests == before && p.try_status().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{ctx}: attempt {attempt} never sent: {}",
                    p.stderr()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=300)));
        }
        if let Some(s) = p.try_status() {
            panic!(
                "{ctx}: attempt {attempt} ended by itself ({s:?}) before its kill: {}",
                p.stderr()
            );
        }
        p.kill9();
        kills += 1;
    }
    let err = repo.path("final.txt");
    let mut last = Proc::spawn(repo.run(None, &err), err);
    let s = last.wait_until(Instant::now() + CHILD_LIMIT, &ctx);
    assert!(
        matches!(s.code(), Some(0 | 3)),
        "{ctx}: final run {s:?}: {}",
        last.stderr()
    );

    let (status, st) = repo.statuses();
    assert_eq!(status, RunStatus::Finished, "{ctx}");
    assert_eq!(st.len(), repo.ids.len(), "{ctx}: a row per recipient");
    let count = |s: RecipientStatus| st.values().filter(|v| **v == s).count();
    let (sent, unknown, failed) = (
        count(RecipientStatus::Sent),
        count(RecipientStatus::Unknown),
        count(RecipientStatus::Failed),
    );
    assert_eq!(count(RecipientStatus::Pending), 0, "{ctx}: nothing pending");
    assert_eq!(
        sent + unknown + failed,
        repo.ids.len(),
        "{ctx}: sent + unknown + failed is every recipient: {:?}",
        repo.journal().counts(
            &repo
                .journal()
                .latest_run(CAMPAIGN, false)
                .expect("q")
                .expect("run")
                .id
        )
    );
    let delivered = mock.deliveries();
    let dups: BTreeSet<u64> = delivered
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    for id in &dups {
        assert_eq!(
            st.get(id),
            Some(&RecipientStatus::Unknown),
            "{ctx}: recipient {id} delivered {} times",
            delivered[id]
        );
    }
    for (id, s) in &st {
        if *s == RecipientStatus::Sent {
            assert_eq!(
                delivered.get(id),
                Some(&1),
                "{ctx}: sent {id} delivered once"
            );
        }
    }
    let stats = mock.stats();
    assert_eq!(
        stats.duplicates,
        delivered.values().map(|n| n - 1).sum::<u64>(),
        "{ctx}"
    );
    let unknown_delivered = st
        .iter()
        .filter(|(id, s)| **s == RecipientStatus::Unknown && delivered.contains_key(id))
        .count();
    eprintln!(
        "{ctx}: {kills} kills ({in_startup} before sending) in {:.1} s; sent {sent}, unknown {unknown} ({unknown_delivered} of them delivered), failed {failed}, duplicates {}",
        started.elapsed().as_secs_f64(),
        stats.duplicates
    );
}

/// A run killed with -9 in the middle of sending, read from another process before anyone
/// resumes it: a row per recipient, each once, in audience order (the calls not yet answered
/// are kept per call as `pending`, the delivered ones per call as `sent`: the journal's reader
/// gives them back as rows); every `sent` one was delivered once, every other is `pending`;
/// the counters equal a scan. Resumed, the run ends with nothing pending.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "a real process killed on the real clock: a child's time limit"
)]
fn an_interrupted_run_reads_whole_from_another_process() {
    let mock = MockProc::start(100);
    let repo = Repo::new(&mock.endpoint(), 5_000_000, 3_000, 400);
    let err = repo.path("killed.txt");
    let mut p = Proc::spawn(repo.run(None, &err), err);
    let deadline = Instant::now() + CHILD_LIMIT;
    while mock.deliveries().len() < 100 {
        assert!(
            Instant::now() < deadline && p.try_status().is_none(),
            "the run never got 100 recipients delivered: {}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    p.kill9();
    let delivered = mock.deliveries();
    let j = repo.journal();
    let run = j
        .latest_run(CAMPAIGN, false)
        .expect("q")
        .expect("a run exists");
    let rows = j.recipients(&run.id).expect("rows");
    let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
    assert_eq!(
        lines,
        (2..2 + repo.ids.len() as u64).collect::<Vec<_>>(),
        "a row per recipient, once each, in audience order"
    );
    let ids: BTreeSet<u64> = rows.iter().filter_map(|r| r.id).collect();
    assert_eq!(ids.len(), repo.ids.len(), "every id once");
    let (mut sent, mut pending) = (0, 0);
    for r in &rows {
        let id = r.id.expect("an id");
        match r.status {
            RecipientStatus::Sent => {
                sent += 1;
                assert_eq!(delivered.get(&id), Some(&1), "sent {id} was delivered once");
                assert!(r.message_id.is_some(), "sent {id} has its message id");
            }
            RecipientStatus::Pending => pending += 1,
            other => panic!("recipient {id} is {other:?} before the run is resumed"),
        }
    }
    assert!(
        sent > 0 && pending > 0,
        "killed mid-run: {sent} sent, {pending} pending"
    );
    assert_eq!(
        j.counts_by_scan(&run.id).expect("scan"),
        j.counts(&run.id).expect("counts")
    );
    drop(j);
    let err = repo.path("resumed.txt");
    let mut last = Proc::spawn(repo.run(None, &err), err);
    let s = last.wait_until(Instant::now() + CHILD_LIMIT, "resume");
    assert!(
        matches!(s.code(), Some(0 | 3)),
        "resume {s:?}: {}",
        last.stderr()
    );
    let (status, st) = repo.statuses();
    assert_eq!(status, RunStatus::Finished);
    assert_eq!(st.len(), repo.ids.len());
    assert!(
        st.values().all(|s| *s != RecipientStatus::Pending),
        "nothing pending after the resume"
    );
}
