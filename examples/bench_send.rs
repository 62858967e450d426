//! Benchmark (not a test): `run_campaign` end to end against the in-process mock provider over
//! real HTTP on 127.0.0.1, throttle lifted (imcast.toml and the mock's limit raised).
//!
//! ```sh
//! cargo build --release --locked --example bench_send
//! target/release/examples/bench_send shared 1000000        # one Content, 2,000 calls
//! target/release/examples/bench_send personalized 50000    # one Content per recipient
//! ```
//! Writes the audience CSV into a temp dir (deleted afterwards; generation not timed), then times
//! plan + journal seeding + sending + report. Prints wall time, the process's CPU time (user +
//! system, from /proc/self/stat; it includes the in-process mock's share) and peak RSS (VmHWM).
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark measures wall time and prints its figures"
)]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imcast::clock::SystemClock;
use imcast::config::RepoPaths;
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request};
use imcast::send::StopToken;

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process (clock ticks at 100 Hz, the Linux default).
fn cpu_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "shared".into());
    let rows: u64 = std::env::args()
        .nth(2)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("imcast.toml"),
        "[limits.batch]\nlimit = 1000000000\nwindow = \"1s\"\n[send]\nmax_requests_per_second = 1000000\nmax_batch_in_flight = 8\n",
    )?;
    {
        let f = std::fs::File::create(dir.path().join("audience.csv"))?;
        let mut w = std::io::BufWriter::new(f);
        writeln!(w, "user_id,name")?;
        for i in 0..rows {
            writeln!(w, "{},user{i}", 9_007_199_254_740_993u64 + i)?;
        }
        w.flush()?;
    }
    let text = match mode.as_str() {
        "personalized" => "Hi {{ name }}, the spring sale starts Saturday.",
        _ => "Hello from {{ campaign.name }}: the spring sale starts Saturday.",
    };
    let file = dir.path().join("bench.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: bench\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: audience.csv\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"{text}\"\n"
        ),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let m = mock::start(MockConfig {
            limit: 1_000_000_000,
            window: Duration::from_secs(1),
            ..MockConfig::default()
        })
        .await?;
        let campaign = imcast::spec::load(&file, &imcast::spec::LoadOptions::default())?;
        let mut req = Request::new(campaign, RepoPaths::discover(&file, None, None, None));
        req.target = Some((m.endpoint(), m.credentials()));
        req.flags.mock = true;
        let cpu0 = cpu_secs();
        let t0 = Instant::now();
        let s = run_campaign(req, Arc::new(SystemClock), StopToken::new())
            .await
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        let wall = t0.elapsed();
        let cpu = cpu_secs() - cpu0;
        let st = m.stats();
        m.shutdown().await;
        println!(
            "mode={mode} recipients={rows} calls={} exit={:?} sent={} wall={:.2}s cpu={:.2}s ({:.2}s per 1M recipients) peak_rss={} MiB mock_messages={} mock_requests={}",
            s.calls_done,
            s.exit,
            s.counts
                .get(&imcast::journal::RecipientStatus::Sent)
                .copied()
                .unwrap_or(0),
            wall.as_secs_f64(),
            cpu,
            cpu * 1_000_000.0 / rows as f64,
            peak_rss_kib().unwrap_or(0) / 1024,
            st.messages,
            st.requests,
        );
        anyhow::Ok(())
    })?;
    Ok(())
}
