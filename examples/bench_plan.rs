//! Benchmark (not a test): plan a generated 1,000,000-row audience.
//!
//! ```sh
//! cargo build --release --locked --example bench_plan
//! /usr/bin/time -v target/release/examples/bench_plan personalized
//! /usr/bin/time -v target/release/examples/bench_plan shared
//! ```
//! `personalized`: every recipient's text holds their own name (1,000,000 distinct Contents,
//! re-rendered at send time). `shared`: one Content for everyone (2,000 calls). `variants`: the
//! shared text in three A/B variants (weights 50/30/20) with a 5 % holdout (the cost of assigning).
//! The CSV is written to a temp dir and deleted afterwards. Prints the plan's wall time (CSV
//! generation excluded) and the process's peak RSS (VmHWM from /proc/self/status).
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark measures wall time and prints its figures"
)]

use std::io::Write;
use std::time::Instant;

use imcast::plan::{self, PlanOptions};
use imcast::spec::{self, LoadOptions};

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "shared".into());
    let rows: u64 = std::env::args()
        .nth(2)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let csv = dir.path().join("audience.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&csv)?);
    writeln!(w, "user_id,name,city,signup")?;
    let cities = ["Beijing", "Shanghai", "Shenzhen", "Singapore"];
    for i in 0..rows {
        writeln!(
            w,
            "{},user{i},{},2025-{:02}-{:02}",
            9_007_199_254_740_993u64 + i * 7,
            cities[(i % 4) as usize],
            i % 12 + 1,
            i % 28 + 1
        )?;
    }
    w.flush()?;
    drop(w);
    let text = match mode.as_str() {
        "personalized" => "Hi {{ name }}, the spring sale starts {{ starts_at }}!",
        _ => "Hello from {{ campaign.name }}: the spring sale starts {{ starts_at }}!",
    };
    let body = if mode == "variants" {
        format!(
            "holdout: 5%\nmessage:\n  type: text\n  variants:\n    - {{ name: a, weight: 50, text: \"{text}\" }}\n    - {{ name: b, weight: 30, text: \"B {text}\" }}\n    - {{ name: c, weight: 20, text: \"C {text}\" }}\n"
        )
    } else {
        format!("message:\n  type: text\n  text: \"{text}\"\n")
    };
    let yaml = format!(
        "version: 1\nname: bench\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\nsender: 1\naudience: {{ csv: audience.csv }}\n{body}  ext: {{ campaign: \"{{{{ campaign.name }}}}\" }}\n  vars: {{ starts_at: \"March 1\" }}\n"
    );
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, yaml)?;

    let start = Instant::now();
    let c = spec::load(&file, &LoadOptions::default())?;
    let p = plan::build(&c, &PlanOptions::default())?;
    let took = start.elapsed();
    let n = p.counts();
    println!(
        "mode={mode} rows={} valid={} holdout={} distinct_contents={} calls={} in_memory={} plan_wall={:.2}s peak_rss={} MiB hash={}",
        n.total,
        n.valid,
        n.holdout,
        n.distinct_contents,
        n.calls,
        p.contents_in_memory(),
        took.as_secs_f64(),
        peak_rss_kib().unwrap_or(0) / 1024,
        &p.hash()[..12]
    );
    Ok(())
}
