//! Benchmark (not a test): how much of the provider's limit the exact throttle uses, and how many
//! 429s it gets, against `imcast mock-server --latency-ms` 0, 50 and 500 as a separate process.
//!
//! ```sh
//! cargo build --release --locked --example bench_throttle
//! target/release/examples/bench_throttle                       # all nine cases
//! target/release/examples/bench_throttle p2p:500 --max-in-flight 64
//! IMCAST_CLIENT=/path/to/other/imcast target/release/examples/bench_throttle   # another client build
//! ```
//! For each case it writes a temp repo (`imcast.toml` with the limit, an audience CSV, a campaign),
//! starts `target/release/imcast mock-server` at exactly that limit with `--record`, times
//! `imcast run --yes` (the whole process: plan, journal, sending, report), reads the mock's
//! `/stats` and computes from the record (the instant the mock counted each unit):
//! - `share`: units / (wall × limit / W), the issue's measure (the first window is free, so a
//!   short campaign can exceed 1);
//!   over a long run the best an exact rule can do is `W / (W + latency)` (column `W/(W+L)`);
//! - `max/W`: the most units stamped in any window (≤ the limit: the mock refuses the rest with
//!   a 429), and the 429 count (each one a window the client would have overfilled).
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark measures wall time and prints its figures"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Case {
    action: &'static str,
    limit: u64,
    window_s: u64,
    rows: u64,
    latency_ms: u64,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (action, limit, window_s, rows) in [
        ("batch", 1000, 5, 6000),
        ("conversation", 50, 1, 500),
        ("p2p", 100, 1, 500),
    ] {
        for latency_ms in [0, 50, 500] {
            v.push(Case {
                action,
                limit,
                window_s,
                rows,
                latency_ms,
            });
        }
    }
    v
}

fn bin_dir() -> PathBuf {
    // target/release/examples/bench_throttle → target/release/
    let exe = std::env::current_exe().expect("exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn max_in_window(stamps: &[i128], w: i128) -> u64 {
    let (mut lo, mut best) = (0usize, 0u64);
    for hi in 0..stamps.len() {
        while stamps[lo] < stamps[hi] - w {
            lo += 1;
        }
        best = best.max((hi - lo + 1) as u64);
    }
    best
}

fn stats(addr: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("connect to the mock");
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("response");
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked or not: the JSON object is between the first '{' and the last '}'.
    let (a, b) = (body.find('{').unwrap_or(0), body.rfind('}').unwrap_or(0));
    serde_json::from_str(&body[a..=b]).expect("stats json")
}

fn run_case(c: Case, max_in_flight: Option<u64>, client: &Path, mock_bin: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut toml = format!(
        "[limits.{}]\nlimit = {}\nwindow = \"{}s\"\n",
        c.action, c.limit, c.window_s
    );
    if let Some(n) = max_in_flight {
        toml.push_str(&format!("[send]\nmax_in_flight = {n}\n"));
    }
    std::fs::write(dir.path().join("imcast.toml"), toml).expect("toml");
    let mut csv = String::from("id\n");
    for i in 0..c.rows {
        csv.push_str(&format!("{}\n", 9_007_199_254_740_993u64 + i));
    }
    std::fs::write(dir.path().join("audience.csv"), csv).expect("csv");
    let record = dir.path().join("record.jsonl");
    let mut mock = Command::new(mock_bin)
        .args([
            "mock-server",
            "--listen",
            "127.0.0.1:0",
            "--limit",
            &c.limit.to_string(),
            "--window",
            &format!("{}s", c.window_s),
            "--send-qps",
            "50",
            "--p2p-qps",
            "100",
            "--latency-ms",
            &c.latency_ms.to_string(),
            "--record",
        ])
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the mock");
    let mut first = String::new();
    BufReader::new(mock.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("mock address");
    let addr = first.trim().to_string();
    let extra = if c.action == "p2p" {
        "p2p: { receiver_user_ids: [11, 12] }\n"
    } else {
        ""
    };
    let file = dir.path().join("bench.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: bench-{}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"http://{addr}\" }}\n\
             action: {}\nsender: 10001\n{extra}audience:\n  csv: audience.csv\n  id_column: id\n\
             message:\n  type: text\n  text: \"The spring sale starts Saturday.\"\n",
            c.action, c.action
        ),
    )
    .expect("campaign");
    let t = Instant::now();
    let out = Command::new(client)
        .args(["run", "--yes"])
        .arg(&file)
        .current_dir(dir.path())
        .env("VOLC_ACCESSKEY", "AKLTmockaccesskey000000")
        .env("VOLC_SECRETKEY", "mock-secret-key-not-a-secret")
        .env("RUST_LOG", "imcast=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("imcast run");
    let wall = t.elapsed().as_secs_f64();
    let st = stats(&addr);
    let _ = Command::new("kill")
        .args(["-TERM", &mock.id().to_string()])
        .status();
    let _ = mock.wait();
    let mut stamps: Vec<i128> = std::fs::read_to_string(&record)
        .expect("record")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("record line");
            let t: jiff::Timestamp = v["time"].as_str().expect("time").parse().expect("ts");
            t.as_nanosecond()
        })
        .collect();
    stamps.sort();
    let units = stamps.len() as u64;
    let w = c.window_s as f64;
    let rate = c.limit as f64 / w;
    let best = w / (w + c.latency_ms as f64 / 1000.0);
    let max_w = max_in_window(&stamps, i128::from(c.window_s as i64) * 1_000_000_000);
    format!(
        "| {} {}/{} s | {} | {} ms | {:.1} s | {:.2} | {:.2} | {} | {} | {} |",
        c.action,
        c.limit,
        c.window_s,
        c.rows,
        c.latency_ms,
        wall,
        units as f64 / (wall * rate),
        best,
        max_w,
        st["rate_limited"],
        if out.status.success() {
            "0".to_string()
        } else {
            format!(
                "{:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        },
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut max_in_flight = None;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--max-in-flight" {
            max_in_flight = it.next().and_then(|n| n.parse().ok());
        } else {
            only.push(a.clone());
        }
    }
    let dir = bin_dir();
    let mock_bin = dir.join("imcast");
    let client = std::env::var_os("IMCAST_CLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| mock_bin.clone());
    println!("| case | units | latency | wall | share | W/(W+L) | max/W | 429s | exit |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in cases() {
        let name = format!("{}:{}", c.action, c.latency_ms);
        if !only.is_empty() && !only.iter().any(|o| *o == name || *o == c.action) {
            continue;
        }
        println!("{}", run_case(c, max_in_flight, &client, &mock_bin));
    }
}
