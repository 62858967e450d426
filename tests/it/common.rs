//! Helpers shared by the integration tests: the built binary, temp dirs, path redaction; skips
//! that fail under CI ([`require_tool`]); child processes with a time limit ([`wait_within`],
//! [`OutputWithin`]); windows computed from the mock's record ([`max_in_window`]).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `imcast` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imcast"))
}

/// `imcast run FILE --yes --state-dir STATE_DIR` in `root` with the mock's keys, none of the
/// caller's `VOLC_SECRETKEY_FILE`, `IMCAST_FAILPOINT`, `RUST_LOG` or `PGPASSWORD` (`PGPASSWORD` is
/// `password` where given); stdin closed, stdout and stderr piped (a caller may redirect them).
pub fn imcast_run(root: &Path, file: &Path, state_dir: &Path, password: Option<&str>) -> Command {
    let mut c = Command::new(bin());
    c.arg("run")
        .arg(file)
        .arg("--yes")
        .arg("--state-dir")
        .arg(state_dir)
        .current_dir(root)
        .env("VOLC_ACCESSKEY", imcast::mock::DEFAULT_ACCESS_KEY)
        .env("VOLC_SECRETKEY", imcast::mock::DEFAULT_SECRET_KEY)
        .env_remove("VOLC_SECRETKEY_FILE")
        .env_remove("IMCAST_FAILPOINT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pg_password(&mut c, password);
    c
}

/// `c` with `PGPASSWORD` set to `password` where given, else unset (never the caller's).
pub fn pg_password<'c>(c: &'c mut Command, password: Option<&str>) -> &'c mut Command {
    c.env_remove("PGPASSWORD")
        .envs(password.map(|p| ("PGPASSWORD", p)))
}

/// The repository root (where Cargo.toml is).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A temp dir holding a campaign file and its side files.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write a file (creating parent dirs) and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write fixture");
        p
    }

    /// Replace the temp dir (also canonicalized) with `[DIR]`.
    pub fn redact(&self, s: &str) -> String {
        let raw = self.dir.path().display().to_string();
        let canon = std::fs::canonicalize(self.dir.path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| raw.clone());
        s.replace(&canon, "[DIR]").replace(&raw, "[DIR]")
    }

    /// Run the built binary in this dir.
    pub fn imcast(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(bin())
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .output_limited()
            .expect("run imcast")
    }
}

/// A minimal valid campaign head; append `audience:`/`message:` etc.
pub const HEAD: &str =
    "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n";

/// The exact wire body of a planned call: the request the sender builds
/// (`send::adapters::build_request`), serialized as the client sends it and `preview` prints it.
pub fn wire_body(c: &imcast::spec::Campaign, call: &imcast::plan::PlannedCall) -> String {
    let req = imcast::send::adapters::build_request(c, call, &call.receivers, None);
    let bytes = imcast::provider::client::request_body(req.action(), &req).expect("body builds");
    String::from_utf8(bytes).expect("utf-8 body")
}

// ---- skips that CI sees -----------------------------------------------------------------------

/// True under CI (`CI` set to anything but empty, `0` or `false`, as CI services set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// A line on the process's own stderr, past the test harness's capture: visible even when the
/// test passes (`eprintln!` inside a test is captured and shown only for failures).
pub fn loud(msg: &str) {
    use std::io::Write;
    let line = "!".repeat(100);
    let _ = writeln!(std::io::stderr(), "\n{line}\n{msg}\n{line}\n");
}

/// A test that cannot run on this machine (`msg` says what is missing and what was not
/// checked): under CI that is a failure (panics); elsewhere a loud SKIPPED line naming the test
/// goes to stderr and the caller returns.
pub fn skip_or_fail(msg: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if in_ci() {
        panic!("{test}: {msg} CI is set, so a missing prerequisite is a failure.");
    }
    loud(&format!(
        "TEST SKIPPED (it passes, but checked nothing; a failure under CI=true): {test}: {msg}"
    ));
}

/// Whether `tool` can be run (`tool --version` starts). When it cannot: under CI the test fails,
/// elsewhere a loud SKIPPED line says what was not checked (`why`) and this returns false.
pub fn require_tool(tool: &str, why: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(|c| wait_within(c, Duration::from_secs(30), tool));
    if found.is_ok() {
        return true;
    }
    skip_or_fail(&format!("`{tool}` is not installed, so {why}."));
    false
}

// ---- children with a time limit ---------------------------------------------------------------

/// How long any child process a test starts may run unless the test says otherwise.
pub const CHILD_LIMIT: Duration = Duration::from_secs(300);

/// Wait for `child` until `deadline`; one still running then is killed (and reaped) and this
/// returns None.
#[allow(
    clippy::disallowed_methods,
    reason = "a time limit on a real child process or file: waits on the kernel, not on our clock"
)]
pub fn status_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn drain(r: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    match r {
        Some(mut r) => {
            std::thread::spawn(move || {
                let mut b = Vec::new();
                let _ = r.read_to_end(&mut b);
                let _ = tx.send(b);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// `wait_with_output` with a time limit: a child still running after `limit` is killed and the
/// test fails with `what` and the child's stderr (when piped). Collects piped stdout/stderr.
#[allow(
    clippy::disallowed_methods,
    reason = "a time limit on a real child process or file: waits on the kernel, not on our clock"
)]
pub fn wait_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let status = status_until(&mut child, deadline);
    // A grandchild may hold a pipe after the child ended: wait for EOF within the limit too.
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    let stderr = err.recv_timeout(grace).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{what}: still running after {limit:?}, killed. Its stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
    };
    let stdout = out.recv_timeout(grace).unwrap_or_else(|_| {
        panic!("{what}: ended ({status}) but its stdout stayed open (a leftover grandchild?)")
    });
    Output {
        status,
        stdout,
        stderr,
    }
}

/// `Command::output` with a time limit (see [`wait_within`]): stdin null, stdout and stderr
/// captured.
pub trait OutputWithin {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
    /// [`OutputWithin::output_within`] with [`CHILD_LIMIT`].
    fn output_limited(&mut self) -> std::io::Result<Output> {
        self.output_within(CHILD_LIMIT)
    }
}

impl OutputWithin for std::process::Command {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(wait_within(child, limit, &format!("{self:?}")))
    }
}

/// The first line `child` prints on stdout (e.g. a bound address), within `limit`; a child that
/// ends or stays silent is killed and fails the test. Takes the child's stdout.
pub fn first_line_within(child: &mut Child, limit: Duration, what: &str) -> String {
    let stdout = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(limit) {
        Ok(l) if !l.trim().is_empty() => l.trim().to_string(),
        other => {
            let _ = child.kill();
            let status = child.wait();
            panic!("{what}: printed no first line within {limit:?} ({other:?}); exit: {status:?}");
        }
    }
}

/// Poll `cond` until it holds while `child` runs: a child that ends first, or `limit` passing,
/// fails the test (the child killed, `what` and its stderr, when piped, in the message).
#[allow(
    clippy::disallowed_methods,
    reason = "a time limit on a real child process or file: waits on the kernel, not on our clock"
)]
pub fn poll_while_running(
    child: &mut Child,
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        let ended = child.try_wait().ok().flatten();
        if ended.is_some() || Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait();
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            panic!("{what}: the child ended ({status:?}) or {limit:?} passed first. Its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- the mock's record: windows computed independently of its counters ------------------------

/// The mock's record (`--record`, `MockConfig::record`) once it holds `want` lines (the writer
/// flushes asynchronously; at most 20 s): one JSON value per delivery.
#[allow(
    clippy::disallowed_methods,
    reason = "a time limit on a real child process or file: waits on the kernel, not on our clock"
)]
pub fn record_lines(path: &Path, want: u64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() as u64 >= want || Instant::now() >= deadline {
            assert!(
                lines.len() as u64 >= want,
                "{} holds {} deliveries, the mock counted {want}",
                path.display(),
                lines.len()
            );
            return lines
                .iter()
                .map(|l| serde_json::from_str(l).expect("a JSON record line"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (stamp ns, 1) per record line of `action` (all when None): the `time` the mock counted the
/// delivery at. A batch line is one receiver, a SendMessage/P2P line one request: what the
/// limit counts.
pub fn stamps(lines: &[serde_json::Value], action: Option<&str>) -> Vec<(i128, u64)> {
    lines
        .iter()
        .filter(|v| action.is_none_or(|a| v["action"] == a))
        .map(|v| {
            let t: jiff::Timestamp = v["time"]
                .as_str()
                .expect("time")
                .parse()
                .expect("RFC 3339 time");
            (t.as_nanosecond(), 1)
        })
        .collect()
}

/// Largest sum in any closed window `[t - w, t]` (stricter than the provider's `(t - w, t]`).
pub fn max_in_window(events: &[(i128, u64)], w: Duration) -> u64 {
    let w = w.as_nanos() as i128;
    let mut v = events.to_vec();
    v.sort();
    let (mut lo, mut sum, mut best) = (0, 0, 0);
    for hi in 0..v.len() {
        sum += v[hi].1;
        while v[lo].0 < v[hi].0 - w {
            sum -= v[lo].1;
            lo += 1;
        }
        best = best.max(sum);
    }
    best
}

/// `imcast mock-server` as a process (its first stdout line is the bound address); killed on drop.
pub struct MockServer {
    child: Child,
    addr: String,
}

impl MockServer {
    pub fn start(args: &[&str]) -> MockServer {
        let mut child = std::process::Command::new(bin())
            .arg("mock-server")
            .args(args)
            .env_remove("VOLC_ACCESSKEY")
            .env_remove("VOLC_SECRETKEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mock-server");
        let addr = first_line_within(&mut child, Duration::from_secs(60), "imcast mock-server");
        MockServer { child, addr }
    }

    /// A mock at 100,000 calls a second that records every delivery to `record`.
    pub fn recording(record: &Path) -> MockServer {
        let record = record.to_str().expect("utf-8 record path");
        MockServer::start(&["--limit", "100000", "--window", "1s", "--record", record])
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> imcast::mock::MockStats {
        let url = format!("{}/stats", self.endpoint());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            reqwest::get(url)
                .await
                .expect("GET /stats")
                .json::<imcast::mock::MockStats>()
                .await
                .expect("stats json")
        })
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
