//! Benchmark (not a test): the report step of a large run, alone.
//!
//! ```sh
//! cargo build --release --locked --example bench_report
//! target/release/examples/bench_report 10000000            # 10M recipients, 3 Contents
//! target/release/examples/bench_report 10000000 csv,jsonl  # the same, JSONL too
//! target/release/examples/bench_report 10000000 csv --keep # keep the temp repo (prints where)
//! ```
//! Seeds a journal in a temp repo the way a BatchSendMessage run leaves it (not timed): N
//! recipients (ids above 2^53, 0.1 % invalid rows) in 3 Contents, calls of 500, each marked in
//! flight and answered through the journal's own group commits, at the provider's default pace
//! (12,000 receivers a minute: one call every 2.5 s of simulated time, with a two-hour pause in
//! the middle), 0.5 % of receivers `failed` with a FailedReceiver code and 3 calls `unknown`. Then
//! times `report::write_report_with` (the report step: recipients.csv[.zst], report.html,
//! summary.json) and prints its wall and CPU time, peak RSS and the size of every file written.
#![allow(
    clippy::disallowed_methods,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark measures wall time and prints its figures"
)]

use std::time::{Duration, Instant};

use imcast::action::Action;
use imcast::config::{Limit, ReportFormats};
use imcast::journal::{
    CallState, Journal, Mark, NewRun, Outcome, RecipientStatus, RecipientUpdate, ResumeOptions,
    RunFlags, SeedRow, SeedRows, Write,
};
use imcast::plan::PlanVariant;
use imcast::report::{facts, write_report_with, ReportOptions};
use jiff::Timestamp;

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_secs() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

const BASE_ID: u64 = 1 << 54;
const GROUPS: u64 = 3;
const PER_CALL: u64 = 500;

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(10_000_000);
    let formats = match std::env::args().nth(2) {
        Some(f) => ReportFormats::parse(&f).map_err(anyhow::Error::msg)?,
        None => ReportFormats::default(),
    };
    let keep = std::env::args().any(|a| a == "--keep");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("imcast.toml"), "")?;
    std::fs::write(dir.path().join("bench.yaml"), "name: bench-report\n")?;
    let state = dir.path().join(".imcast");
    let reports = dir.path().join("reports");

    // Rows: line i+1; every 1000th an invalid id; the others valid, group = i % 3.
    let invalid = |i: u64| i % 1000 == 999;
    // Group sizes and call numbers (groups in order of their first row, 500 per call).
    let mut size = [0u64; GROUPS as usize];
    for i in 0..n {
        if !invalid(i) {
            size[(i % GROUPS) as usize] += 1;
        }
    }
    let calls_of = |s: u64| s.div_ceil(PER_CALL);
    let base: Vec<u64> = (0..GROUPS as usize)
        .map(|g| (0..g).map(|k| calls_of(size[k])).sum())
        .collect();
    let total_calls: u64 = size.iter().map(|s| calls_of(*s)).sum();
    let variants: Vec<String> = (0..GROUPS)
        .map(|g| format!("{:012x}", 0xabc000 + g))
        .collect();

    let t_seed = Instant::now();
    let t0: Timestamp = "2026-11-22T08:00:00Z".parse()?;
    let mut j = Journal::open(&state)?;
    let new = NewRun {
        id: Some("bench-run".into()),
        campaign: "bench-report".into(),
        occurrence: None,
        plan_hash: "bench".into(),
        content_key: None,
        action: Action::Batch,
        flags: RunFlags {
            yes: true,
            ..RunFlags::default()
        },
        is_test: false,
        audit: serde_json::json!({"user": "bench", "host": "bench", "plan_hash": "bench",
            "endpoint": "https://rtc.volcengineapi.com", "app_id": 666675}),
        limit: Limit::new(12_000, Duration::from_secs(60)),
        total_calls,
    };
    let mut rows = || -> SeedRows<'static, String> {
        let mut rank = [0u64; GROUPS as usize];
        let base = base.clone();
        Box::new((0..n).map(move |i| {
            let id = BASE_ID + i;
            if invalid(i) {
                return Ok(SeedRow {
                    line: i + 1,
                    id: None,
                    raw_id: Some(format!("x{id}")),
                    status: RecipientStatus::Invalid,
                    call_seq: None,
                    variant: None,
                    variant_name: None,
                    note: Some("not a user id".into()),
                });
            }
            let g = (i % GROUPS) as usize;
            let seq = base[g] + rank[g] / PER_CALL;
            rank[g] += 1;
            Ok(SeedRow {
                line: i + 1,
                id: Some(id),
                raw_id: None,
                status: RecipientStatus::Pending,
                call_seq: Some(seq),
                variant: None,
                variant_name: None,
                note: None,
            })
        }))
    };
    let opened = j.open_run(&new, ResumeOptions::default(), &mut rows, t0)?;
    let run_id = opened.run().id.clone();
    eprintln!(
        "seeded {n} rows in {:.1}s; answering {total_calls} calls",
        t_seed.elapsed().as_secs_f64()
    );

    // Receivers per call, in call order.
    let mut receivers: Vec<Vec<u64>> = vec![Vec::new(); total_calls as usize];
    {
        let mut rank = [0u64; GROUPS as usize];
        for i in 0..n {
            if invalid(i) {
                continue;
            }
            let g = (i % GROUPS) as usize;
            receivers[(base[g] + rank[g] / PER_CALL) as usize].push(BASE_ID + i);
            rank[g] += 1;
        }
    }
    let group_of = |seq: u64| {
        (0..GROUPS as usize)
            .rev()
            .find(|g| seq >= base[*g])
            .unwrap_or(0)
    };
    let unknown_calls = [total_calls / 4, total_calls / 2, total_calls * 3 / 4];
    let pause_at = total_calls / 2;
    let mut msg = 7_000_000_000u64;
    let mut writes = Vec::new();
    for (seq, recv) in receivers.iter().enumerate() {
        let seq = seq as u64;
        // One call every 2.5 s (12,000 receivers a minute); two hours of quiet in the middle.
        let pause = if seq >= pause_at { 7_200_000 } else { 0 };
        let at =
            Timestamp::from_millisecond(t0.as_millisecond() + 30_000 + seq as i64 * 2500 + pause)?;
        let variant = variants[group_of(seq)].clone();
        writes.push(Write::Mark(Mark {
            run_id: run_id.clone(),
            seq,
            variant,
            receivers: recv.clone(),
            client_msg_id: None,
            now: at,
        }));
        let unknown = unknown_calls.contains(&seq);
        let updates = recv
            .iter()
            .map(|&id| {
                if unknown {
                    return RecipientUpdate {
                        id,
                        status: RecipientStatus::Unknown,
                        message_id: None,
                        error_code: Some("Timeout".into()),
                        error_message: Some(
                            "no answer within 30s; the provider may have delivered".into(),
                        ),
                        detail: None,
                    };
                }
                if id % 200 == 7 {
                    return RecipientUpdate {
                        id,
                        status: RecipientStatus::Failed,
                        message_id: None,
                        error_code: Some("UserNotExist".into()),
                        error_message: Some(
                            "FailedReceiver: the user does not exist in this app".into(),
                        ),
                        detail: None,
                    };
                }
                msg += 1;
                RecipientUpdate {
                    id,
                    status: RecipientStatus::Sent,
                    message_id: Some(msg),
                    error_code: None,
                    error_message: None,
                    detail: None,
                }
            })
            .collect();
        writes.push(Write::Outcome(Outcome {
            run_id: run_id.clone(),
            seq,
            state: if unknown {
                CallState::Unknown
            } else {
                CallState::Done
            },
            updates,
            error: unknown.then(|| ("Timeout".into(), "read timed out".into())),
            now: Timestamp::from_millisecond(at.as_millisecond() + 180)?,
        }));
        if writes.len() >= 64 {
            j.write_batch(&writes)?;
            writes.clear();
        }
    }
    j.write_batch(&writes)?;
    let end = Timestamp::from_millisecond(
        t0.as_millisecond() + 60_000 + total_calls as i64 * 2500 + 7_200_000,
    )?;
    j.set_status(&run_id, imcast::journal::RunStatus::Finished, None, end)?;
    let pv: Vec<PlanVariant> = (0..GROUPS as usize)
        .map(|g| PlanVariant {
            variant: variants[g].clone(),
            recipients: size[g],
            variant_name: None,
            msg_type: 10001,
            content: format!(
                "{{\"text\":\"Announcement, edition {g}: our spring sale starts Monday.\"}}"
            ),
            ext: [("campaign".to_string(), "bench-report".to_string())].into(),
        })
        .collect();
    facts::record_run(
        &mut j,
        &run_id,
        &facts::RunMeta {
            campaign_file: Some("bench.yaml".into()),
            app_id: Some(666675),
            distinct_contents: GROUPS,
        },
        &pv,
    )?;
    j.connection()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    drop(j);
    eprintln!("journal ready after {:.1}s", t_seed.elapsed().as_secs_f64());

    // The report step alone: open the journal, write everything.
    let rss_before = peak_rss_kib().unwrap_or(0);
    let cpu0 = cpu_secs();
    let t = Instant::now();
    let j = Journal::open(&state)?;
    let opts = ReportOptions {
        formats,
        campaign_file: Some(dir.path().join("bench.yaml")),
        ..ReportOptions::default()
    };
    let paths = write_report_with(&j, &run_id, &reports, &opts)?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    let mut total = 0u64;
    println!("report step: {wall:.2} s wall, {cpu:.2} s CPU (user+sys), peak RSS {} MiB (seeding peak {} MiB)",
        peak_rss_kib().unwrap_or(0) / 1024, rss_before / 1024);
    let mut names: Vec<_> = std::fs::read_dir(&paths.dir)?.collect::<Result<_, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let len = e.metadata()?.len();
        total += len;
        println!(
            "  {:<22} {:>12} bytes",
            e.file_name().to_string_lossy(),
            len
        );
    }
    println!(
        "  {:<22} {:>12} bytes ({:.0} MB)",
        "total",
        total,
        total as f64 / 1e6
    );
    let db = state.join(imcast::journal::DB_FILE);
    println!(
        "journal {}: {:.0} MB",
        db.display(),
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    if keep {
        let kept = dir.keep();
        println!(
            "kept {} (imcast report {}/bench.yaml)",
            kept.display(),
            kept.display()
        );
    }
    Ok(())
}
