//! The run report: `report.html` from a real run against the mock provider (structure, numbers
//! equal to `summary.json`, nothing external, hostile campaign and provider text escaped), and
//! rendered by headless Chromium over the DevTools protocol (loads, no console error, no network
//! request, a screenshot, dark mode and print); report formats and zstd compression;
//! `imcast report --open`; `imcast prune --reports`.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imcast::action::Action;
use imcast::clock::{SharedClock, SystemClock};
use imcast::config::{Limit, RepoPaths, ReportFormats};
use imcast::journal::{
    CallState, Journal, Mark, NewRun, Outcome, RecipientStatus, RecipientUpdate, ResumeOptions,
    RunFlags, SeedRow, SeedRows, Write,
};
use imcast::mock::{self, MockConfig};
use imcast::report::{write_report_with, ReportOptions};
use imcast::run::{run_campaign, Request, RunSummary};
use imcast::send::StopToken;
use scraper::{Html, Selector};
use serde_json::Value;

use crate::common::{bin, OutputWithin};

/// Text that must never become markup.
const HOSTILE: &str = "<script>alert(1)</script>\"'&<img src=x onerror=alert(2)>";

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("selector")
}

/// A finished run against the in-process mock: 3,000 users in 3 Contents carrying hostile text
/// (6 calls of exactly 500, one at a time, so the seeded mock's faults fall the same way every
/// time), an invalid
/// and a duplicate row, some FailedReceivers (final: `retry.max_attempts: 1`, so they are not
/// re-queued) and some lost answers (unknown).
struct RealRun {
    dir: tempfile::TempDir,
    file: PathBuf,
    summary: RunSummary,
}

impl RealRun {
    fn report_dir(&self) -> PathBuf {
        self.summary.report_dir.clone().expect("report written")
    }
    fn html(&self) -> String {
        std::fs::read_to_string(self.report_dir().join("report.html")).expect("report.html")
    }
    fn summary_json(&self) -> Value {
        let t = std::fs::read_to_string(self.report_dir().join("summary.json")).expect("summary");
        serde_json::from_str(&t).expect("summary.json")
    }
}

async fn real_run(failed: f64, lost: f64) -> RealRun {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("imcast.toml"),
        "[limits.batch]\nlimit = 100000\nwindow = \"60s\"\n[send]\nmax_batch_in_flight = 1\n",
    )
    .expect("imcast.toml");
    let mut csv = String::from("user_id,grp\n");
    for i in 0..3000u64 {
        let grp = match i % 3 {
            0 => "north".to_string(),
            1 => "south".to_string(),
            _ => HOSTILE.replace(',', ";"),
        };
        csv.push_str(&format!(
            "{},\"{}\"\n",
            500_000 + i,
            grp.replace('"', "\"\"")
        ));
    }
    csv.push_str("\"<script>alert(3)</script>\",north\n");
    csv.push_str("500001,south\n");
    std::fs::write(dir.path().join("audience.csv"), csv).expect("audience");
    let m = mock::start(MockConfig {
        failed_receiver_rate: failed,
        lost_rate: lost,
        seed: 7,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let file = dir.path().join("hostile.yaml");
    std::fs::write(
        &file,
        format!(
            "version: 1\nname: hostile\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{}\" }}\n\
             action: batch\nsender: 10001\naudience:\n  csv: audience.csv\n  id_column: user_id\n\
             message:\n  type: text\n  text: \"Hi {{{{ grp }}}} </pre></td><b>bold</b>\"\n  ext: {{ tag: \"{{{{ grp }}}}\" }}\n\
             breaker: {{ consecutive_failures: 1000, window_calls: 0, max_failure_ratio: 1.0 }}\n\
             retry: {{ max_attempts: 1 }}\n",
            m.endpoint()
        ),
    )
    .expect("campaign");
    let campaign =
        imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("valid campaign");
    let mut req = Request::new(campaign, RepoPaths::discover(&file, None, None, None));
    req.target = Some((m.endpoint(), m.credentials()));
    req.flags.mock = true;
    let clock: SharedClock = Arc::new(SystemClock);
    let summary = run_campaign(req, clock, StopToken::new())
        .await
        .expect("run");
    m.shutdown().await;
    RealRun { dir, file, summary }
}

/// The text of the first element matching `css` inside `el`.
fn text_of(el: scraper::ElementRef<'_>, css: &str) -> String {
    el.select(&sel(css))
        .next()
        .map(|e| e.text().collect::<String>())
        .unwrap_or_default()
}

/// Assert the page is self-contained and its hostile text stayed text.
fn assert_self_contained(doc: &Html) {
    assert_eq!(
        doc.select(&sel("script")).count(),
        0,
        "no script element at all"
    );
    assert_eq!(doc.select(&sel("img")).count(), 0, "no img element");
    let loads: Vec<String> = doc
        .select(&sel("[src]"))
        .map(|e| format!("{:?}", e.value()))
        .collect();
    assert!(loads.is_empty(), "elements that load something: {loads:?}");
    for e in doc.select(&sel("[href]")) {
        let href = e.value().attr("href").unwrap_or_default();
        assert!(href.starts_with('#'), "only in-page links: {href:?}");
    }
    for e in doc.select(&sel("*")) {
        for (name, _) in e.value().attrs() {
            assert!(
                !name.starts_with("on"),
                "no event handler attribute: {name} on {:?}",
                e.value()
            );
        }
    }
    let csp = doc
        .select(&sel("meta[http-equiv=Content-Security-Policy]"))
        .next()
        .and_then(|m| m.value().attr("content"))
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_html_sections_and_numbers_match_summary() {
    let r = real_run(0.05, 0.5).await;
    let html = r.html();
    let s = r.summary_json();
    eprintln!("counts {} calls {}", s["counts"], s["calls"]);
    let doc = Html::parse_document(&html);

    assert_self_contained(&doc);
    for id in [
        "header", "status", "timeline", "failures", "unknown", "variants", "files",
    ] {
        assert_eq!(
            doc.select(&sel(&format!("#{id}"))).count(),
            1,
            "section #{id}"
        );
    }
    assert!(doc
        .select(&sel("title"))
        .next()
        .is_some_and(|t| t.text().collect::<String>().contains("hostile")));

    // Every status number equals summary.json, and the total equals its rows.
    let counts = s["counts"].as_object().expect("counts");
    let mut shown = BTreeMap::new();
    for tr in doc.select(&sel("#status-table tbody tr")) {
        let status = tr.value().attr("data-status").expect("data-status");
        let cell = tr
            .select(&sel("td[data-count]"))
            .next()
            .expect("count cell");
        let n: u64 = cell
            .value()
            .attr("data-count")
            .and_then(|v| v.parse().ok())
            .expect("number");
        let text: String = cell.text().collect();
        assert_eq!(text.replace(',', "").parse::<u64>().ok(), Some(n));
        let th: String = tr
            .select(&sel("th[scope=row]"))
            .next()
            .expect("row header")
            .text()
            .collect();
        assert_eq!(th.trim(), status);
        shown.insert(status.to_string(), n);
    }
    for (k, v) in counts {
        let want = v.as_u64().expect("count");
        // Pending and holdout rows are shown only when some recipient has them.
        if (k == "pending" || k == "holdout") && want == 0 {
            continue;
        }
        assert_eq!(shown.get(k), Some(&want), "status {k}");
    }
    let total = doc
        .select(&sel("#status-table tfoot td[data-count]"))
        .next()
        .and_then(|c| c.value().attr("data-count"))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(total, s["rows"].as_u64());
    assert_eq!(s["rows"], 3002);
    for (label, key) in [
        ("planned", "planned"),
        ("done", "done"),
        ("unknown outcome", "unknown"),
        ("attempts (with retries)", "attempts"),
    ] {
        let row = doc
            .select(&sel("#calls-table tr"))
            .find(|tr| text_of(*tr, "th") == label)
            .expect(label);
        let n = row
            .select(&sel("td"))
            .next()
            .and_then(|c| c.value().attr("data-count"))
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(n, s["calls"][key].as_u64(), "calls {key}");
    }

    // Failures: the groups of each status add up to its count; the invalid row's hostile id is
    // shown as text.
    let failures = doc.select(&sel("#failures")).next().expect("failures");
    let mut per_status: BTreeMap<String, u64> = BTreeMap::new();
    for card in failures.select(&sel("div.card")) {
        let st = card
            .value()
            .attr("data-status")
            .expect("status")
            .to_string();
        let h3 = text_of(card, "h3");
        let n: u64 = h3
            .rsplit('—')
            .next()
            .and_then(|t| t.split_whitespace().next())
            .map(|t| t.replace(',', ""))
            .and_then(|t| t.parse().ok())
            .expect("count in heading");
        *per_status.entry(st).or_default() += n;
        assert!(card.select(&sel("table th[scope=col]")).count() >= 3);
    }
    assert!(
        s["counts"]["failed"].as_u64() > Some(0),
        "some FailedReceivers"
    );
    for st in ["failed", "invalid"] {
        assert_eq!(
            per_status.get(st).copied(),
            s["counts"][st].as_u64(),
            "failure groups of {st}"
        );
    }
    assert!(
        failures
            .text()
            .collect::<String>()
            .contains("<script>alert(3)</script>"),
        "the invalid id is shown as text"
    );

    // Unknown outcomes: explained with the command and its risk.
    let unknown = doc.select(&sel("#unknown")).next().expect("unknown");
    let utext: String = unknown.text().collect();
    assert!(
        s["counts"]["unknown"].as_u64() > Some(0),
        "some lost answers"
    );
    assert!(
        utext.contains(&format!("imcast run {} --resend-unknown", r.file.display())),
        "{utext}"
    );
    assert!(utext.contains("Risk:"), "{utext}");
    let ucalls = unknown.select(&sel("#unknown-calls tbody tr")).count() as u64;
    assert_eq!(Some(ucalls), s["calls"]["unknown"].as_u64());

    // Variants: three, each with its rendered Content as text and its recipients.
    let variants: Vec<_> = doc.select(&sel("#variants div.card")).collect();
    assert_eq!(variants.len(), 3);
    let pres: String = doc
        .select(&sel("#variants pre"))
        .map(|p| p.text().collect::<String>())
        .collect();
    assert!(pres.contains("<script>alert(1)</script>"), "{pres}");
    assert!(pres.contains("</pre></td><b>bold</b>"), "{pres}");
    assert_eq!(
        doc.select(&sel("#variants b")).count(),
        0,
        "no injected markup"
    );
    let recipients: u64 = variants
        .iter()
        .map(|v| {
            text_of(*v, "h3")
                .rsplit('—')
                .next()
                .and_then(|t| t.split_whitespace().next())
                .map(|t| t.replace(',', ""))
                .and_then(|t| t.parse::<u64>().ok())
                .expect("recipients")
        })
        .sum();
    assert_eq!(recipients, 3000, "valid recipients over the variants");

    // Charts are described for people who cannot see them; tables have header cells.
    for svg in doc.select(&sel("svg")) {
        let labelled = svg.value().attr("aria-labelledby").is_some()
            || svg.value().attr("aria-label").is_some();
        assert!(labelled, "svg without a label");
        assert!(svg.select(&sel("title")).next().is_some());
        assert!(svg.select(&sel("desc")).next().is_some());
    }
    assert_eq!(doc.select(&sel("#timeline svg")).count(), 1, "the chart");
    for t in doc.select(&sel("table")) {
        assert!(t.select(&sel("th[scope]")).count() > 0, "table headers");
    }
    // The header names what a person needs to know about the run.
    let header: String = doc
        .select(&sel("#header"))
        .next()
        .expect("h")
        .text()
        .collect();
    for want in [
        "Run id",
        "Action",
        "App id",
        "666675",
        "Endpoint",
        "Run by",
        "Git commit",
        "Plan hash",
        "Started",
        "Ended",
        "Duration",
        "Flags",
        "--mock",
    ] {
        assert!(header.contains(want), "header lacks {want}: {header}");
    }
    assert!(
        html.len() < 200_000,
        "small run, small page: {}",
        html.len()
    );
}

/// Seed a run straight into the journal with hostile provider codes and messages.
fn hostile_journal(root: &Path, rows: u64) -> (Journal, String) {
    let mut j = Journal::open(&root.join(".imcast")).expect("journal");
    let ids: Vec<u64> = (0..rows).map(|i| 1_000 + i).collect();
    let new = NewRun {
        id: Some("run-hostile".into()),
        campaign: "hostile-provider".into(),
        occurrence: None,
        plan_hash: "h".into(),
        content_key: None,
        action: Action::Batch,
        flags: RunFlags::default(),
        is_test: false,
        audit: serde_json::json!({"user": HOSTILE, "host": "h", "endpoint": HOSTILE}),
        limit: Limit::new(12_000, Duration::from_secs(60)),
        total_calls: 1,
    };
    let seed = ids.clone();
    let mut seed_rows = move || -> SeedRows<'static, String> {
        let seed = seed.clone();
        Box::new(seed.into_iter().enumerate().map(|(i, id)| {
            Ok(SeedRow {
                line: i as u64 + 1,
                id: Some(id),
                raw_id: None,
                status: RecipientStatus::Pending,
                call_seq: Some(0),
                variant: None,
                variant_name: None,
                note: None,
            })
        }))
    };
    let now: jiff::Timestamp = "2026-11-22T08:00:00Z".parse().expect("time");
    let run = j
        .open_run(&new, ResumeOptions::default(), &mut seed_rows, now)
        .expect("open")
        .run()
        .id
        .clone();
    let updates = ids
        .iter()
        .map(|&id| RecipientUpdate {
            id,
            status: RecipientStatus::Failed,
            message_id: None,
            error_code: Some(format!("\"><script>x({id})</script>")),
            error_message: Some(HOSTILE.into()),
            detail: None,
        })
        .collect();
    j.write_batch(&[
        Write::Mark(Mark {
            run_id: run.clone(),
            seq: 0,
            variant: "<b>v</b>".into(),
            receivers: ids,
            client_msg_id: None,
            now,
        }),
        Write::Outcome(Outcome {
            run_id: run.clone(),
            seq: 0,
            state: CallState::Done,
            updates,
            error: None,
            now: now + Duration::from_millis(1500),
        }),
    ])
    .expect("outcome");
    j.set_status(
        &run,
        imcast::journal::RunStatus::Finished,
        None,
        now + Duration::from_secs(2),
    )
    .expect("finish");
    (j, run)
}

#[test]
fn provider_and_audit_text_is_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, run) = hostile_journal(dir.path(), 3);
    let p = write_report_with(
        &j,
        &run,
        &dir.path().join("reports"),
        &ReportOptions::default(),
    )
    .expect("report");
    let html = std::fs::read_to_string(&p.html).expect("html");
    let doc = Html::parse_document(&html);
    assert_self_contained(&doc);
    assert_eq!(doc.select(&sel("b")).count(), 0);
    let text: String = doc.root_element().text().collect();
    assert!(
        text.contains("\"><script>x(1000)</script>"),
        "codes shown as text"
    );
    assert!(text.contains(HOSTILE), "messages and audit shown as text");
    assert!(!html.contains("<script>x("), "never raw in the source");
    assert!(html.contains("&lt;script&gt;"));
    // What a person reads, line by line (the page's text, whitespace collapsed).
    let body: String = doc
        .select(&sel("body"))
        .next()
        .expect("body")
        .text()
        .collect();
    let lines: Vec<String> = body
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    let page = lines
        .join("\n")
        .replace(env!("CARGO_PKG_VERSION"), "[version]");
    insta::assert_snapshot!("report_page_text", page);
}

#[test]
fn large_runs_are_compressed_and_formats_are_chosen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (j, run) = hostile_journal(dir.path(), 40);
    let reports = dir.path().join("reports");
    let both = ReportFormats {
        csv: true,
        jsonl: true,
    };
    let plain = write_report_with(
        &j,
        &run,
        &reports,
        &ReportOptions {
            formats: both,
            ..ReportOptions::default()
        },
    )
    .expect("plain");
    let csv = std::fs::read(plain.csv.as_ref().expect("csv")).expect("read csv");
    let jsonl = std::fs::read(plain.jsonl.as_ref().expect("jsonl")).expect("read jsonl");
    assert!(!plain.compressed);

    // Above the threshold (lowered here; 1,000,000 rows by default): .zst, same bytes inside.
    let z = write_report_with(
        &j,
        &run,
        &reports,
        &ReportOptions {
            formats: both,
            compress_above_rows: 39,
            ..ReportOptions::default()
        },
    )
    .expect("compressed");
    assert!(z.compressed);
    let zcsv = z.csv.clone().expect("csv.zst");
    assert!(zcsv.to_string_lossy().ends_with("recipients.csv.zst"));
    let unpacked = zstd::decode_all(std::fs::File::open(&zcsv).expect("open")).expect("zstd");
    assert_eq!(unpacked, csv, "the compressed CSV holds the same rows");
    let unpacked =
        zstd::decode_all(std::fs::File::open(z.jsonl.as_ref().expect("jsonl.zst")).expect("o"))
            .expect("zstd");
    assert_eq!(unpacked, jsonl);
    assert!(
        !plain.csv.as_ref().expect("csv").exists(),
        "the stale uncompressed file is gone"
    );
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(&z.summary).expect("summary")).expect("json");
    assert_eq!(s["files"]["compressed"], true);
    assert_eq!(s["files"]["recipients_csv"], "recipients.csv.zst");
    assert!(s["files"]["note"]
        .as_str()
        .is_some_and(|n| n.contains("zstd") && n.contains("1,000,000")));
    let html = std::fs::read_to_string(&z.html).expect("html");
    assert!(html.contains("recipients.csv.zst"));

    // Scanned in parallel parts (forced here; automatic above 200,000 rows): the parts are
    // appended in order, zstd frames into one stream, the failures tallied across them.
    for parts in [2, 3, 4] {
        let p = write_report_with(
            &j,
            &run,
            &reports,
            &ReportOptions {
                formats: both,
                scan_parts: Some(parts),
                ..ReportOptions::default()
            },
        )
        .expect("parts");
        assert_eq!(
            std::fs::read(p.csv.as_ref().expect("csv")).expect("csv"),
            csv,
            "{parts} parts"
        );
        assert_eq!(
            std::fs::read(p.jsonl.as_ref().expect("jsonl")).expect("j"),
            jsonl
        );
        let z = write_report_with(
            &j,
            &run,
            &reports,
            &ReportOptions {
                formats: both,
                scan_parts: Some(parts),
                compress_above_rows: 39,
                ..ReportOptions::default()
            },
        )
        .expect("parts, compressed");
        let unpacked =
            zstd::decode_all(std::fs::File::open(z.csv.as_ref().expect("csv.zst")).expect("open"))
                .expect("zstd frames");
        assert_eq!(unpacked, csv, "{parts} zstd frames make one CSV");
        let html = std::fs::read_to_string(&z.html).expect("html");
        let doc = Html::parse_document(&html);
        let failed: u64 = doc.select(&sel("#failures div.card")).count() as u64;
        assert_eq!(
            failed, 40,
            "every failure group across the parts (one code per row)"
        );
    }

    // No per-recipient file at all: only the page and the summary.
    let none = write_report_with(
        &j,
        &run,
        &reports,
        &ReportOptions {
            formats: ReportFormats::parse("none").expect("none"),
            ..ReportOptions::default()
        },
    )
    .expect("none");
    let mut names: Vec<String> = std::fs::read_dir(&none.dir)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["report.html", "summary.json"]);
}

/// A campaign repository with one finished run of `hostile-provider` (seeded in its journal).
fn repo_with_run(rows: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("imcast.toml"), "").expect("toml");
    let file = dir.path().join("hostile-provider.yaml");
    std::fs::write(&file, "name: hostile-provider\n").expect("campaign");
    let (j, _) = hostile_journal(dir.path(), rows);
    drop(j);
    (dir, file)
}

fn imcast(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = std::process::Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output_limited().expect("run imcast")
}

#[test]
fn report_formats_are_validated_and_rewritten_by_the_command() {
    let (dir, file) = repo_with_run(5);
    let f = file.to_str().expect("utf-8");
    let out = imcast(
        dir.path(),
        &["report", f, "--report-format", "csv,xml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown report format \"xml\"") && err.contains("jsonl"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("imcast.toml"),
        "[report]\nformats = [\"csv\",\n  \"html\"]\n",
    )
    .expect("toml");
    let out = imcast(dir.path(), &["report", f], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("imcast.toml") && err.contains("line 3") && err.contains("always written"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("imcast.toml"),
        "[report]\nformats = [\"jsonl\"]\n",
    )
    .expect("toml");
    let out = imcast(dir.path(), &["report", f], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(report.join("recipients.jsonl").is_file());
    assert!(!report.join("recipients.csv").exists());
    assert!(report.join("report.html").is_file());
    // The flag wins over imcast.toml.
    let out = imcast(
        dir.path(),
        &["report", f, "--report-format", "csv,jsonl"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(report.join("recipients.csv").is_file());
    assert!(report.join("recipients.jsonl").is_file());
    // status names the page.
    let out = imcast(dir.path(), &["status", f], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "report    {}",
            report.join("report.html").display()
        )),
        "{text}"
    );
}

#[test]
fn report_open_uses_the_desktop_opener_or_says_where_the_page_is() {
    let (dir, file) = repo_with_run(2);
    let f = file.to_str().expect("utf-8");
    // No graphical session: not opened, the path printed, the command still succeeds.
    let out = imcast(dir.path(), &["report", f, "--open"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Not opened") && err.contains("report.html"),
        "{err}"
    );

    // A session and an opener: it is handed the page.
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir(&bin_dir).expect("mkdir");
    let opened = dir.path().join("opened.txt");
    let opener = bin_dir.join("xdg-open");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\nprintf '%s' \"$1\" > '{}'\n", opened.display()),
    )
    .expect("opener");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = imcast(
        dir.path(),
        &["report", f, "--open"],
        &[("PATH", &path), ("DISPLAY", ":99")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&opened).expect("the opener ran");
    assert!(page.ends_with("report.html"), "{page}");
    assert!(Path::new(&page).is_file());
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "`imcast prune --reports` (a real process) ages folders by the system clock: the fixture must too"
)]
fn prune_removes_old_report_folders_only_when_asked() {
    let root = tempfile::tempdir().expect("tempdir");
    let reports = root.path().join("reports");
    let state = root.path().join(".imcast");
    let old = "2020-01-01T00:00:00Z";
    let recent = jiff::Timestamp::now().to_string();
    let folder = |campaign: &str, run: &str, status: &str, finished: Option<&str>| {
        let d = reports.join(campaign).join(run);
        std::fs::create_dir_all(&d).expect("mkdir");
        let s = serde_json::json!({"run_id": run, "status": status, "finished_at": finished});
        std::fs::write(d.join("summary.json"), s.to_string()).expect("summary");
        std::fs::write(d.join("report.html"), "<!DOCTYPE html>").expect("html");
        std::fs::write(d.join("recipients.csv.zst"), "x").expect("csv");
        d
    };
    let old_done = folder("a", "r1", "finished", Some(old));
    let old_cancelled = folder("b", "r2", "cancelled", Some(old));
    let recent_done = folder("a", "r3", "finished", Some(&recent));
    let old_unfinished = folder("c", "r4", "paused", None);
    let mock_old = folder("mock/a", "r5", "finished", Some(old));
    let with_notes = folder("d", "r6", "finished", Some(old));
    std::fs::write(with_notes.join("notes.txt"), "mine").expect("notes");
    let stray = reports.join("e/r7");
    std::fs::create_dir_all(&stray).expect("mkdir");
    std::fs::write(stray.join("report.html"), "not ours: no summary").expect("stray");

    let prune = |extra: &[&str]| {
        let mut args = vec![
            "prune",
            "--older-than",
            "30d",
            "--state-dir",
            state.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let out = imcast(root.path(), &args, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Never by default.
    let text = prune(&[]);
    assert!(text.contains("reports stay"), "{text}");
    assert!(old_done.join("recipients.csv.zst").exists());

    let text = prune(&[
        "--reports",
        "--report-dir",
        reports.to_str().expect("utf-8"),
    ]);
    assert!(text.contains("4 report folders"), "{text}");
    assert!(!old_done.exists() && !old_cancelled.exists() && !mock_old.exists());
    assert!(
        !reports.join("b").exists(),
        "an emptied campaign folder goes too"
    );
    assert!(
        recent_done.join("report.html").exists(),
        "recent reports stay"
    );
    assert!(
        old_unfinished.join("report.html").exists(),
        "unfinished runs stay"
    );
    assert!(
        with_notes.join("notes.txt").exists(),
        "files imcast did not write stay"
    );
    assert!(!with_notes.join("report.html").exists());
    assert!(
        stray.join("report.html").exists(),
        "folders without a summary stay"
    );
}

// ---- the browser test ---------------------------------------------------------------------

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IMCAST_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|n| std::env::split_paths(&path).map(move |d| d.join(n)))
    .find(|p| p.is_file())
}

/// A tiny DevTools-protocol client: one browser websocket, one flattened page session.
struct DevTools {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl DevTools {
    fn connect(url: &str) -> DevTools {
        let (ws, _) = tungstenite::connect(url).expect("connect to DevTools");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
        }
        DevTools {
            ws,
            next: 0,
            session: None,
            events: Vec::new(),
        }
    }

    /// Send a command and wait for its answer (events meanwhile are kept).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = Value::String(s.clone());
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send");
        loop {
            let v = self.read();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read().expect("DevTools message (timed out?)") {
                tungstenite::Message::Text(t) => {
                    return serde_json::from_str(t.as_str()).expect("json")
                }
                tungstenite::Message::Close(_) => panic!("DevTools closed"),
                _ => continue,
            }
        }
    }

    /// Wait for `method` (kept in the events too).
    fn wait_event(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        loop {
            let v = self.read();
            let hit = v["method"] == method;
            self.events.push(v);
            if hit {
                return;
            }
        }
    }

    /// Load `url` in the page and return what went wrong: exceptions, console errors, log
    /// errors, and requests to anything but the page itself.
    fn load(&mut self, url: &str) -> Vec<String> {
        self.events.clear();
        self.call("Page.navigate", serde_json::json!({ "url": url }));
        self.wait_event("Page.loadEventFired");
        // A round trip after the load: events before it have arrived.
        let title = self.eval("document.title");
        assert!(title.is_string());
        let mut problems = Vec::new();
        for e in &self.events {
            let p = &e["params"];
            match e["method"].as_str().unwrap_or_default() {
                "Runtime.exceptionThrown" => problems.push(format!("exception: {p}")),
                "Runtime.consoleAPICalled"
                    if matches!(p["type"].as_str(), Some("error" | "assert")) =>
                {
                    problems.push(format!("console.{}: {}", p["type"], p["args"]))
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => {
                    problems.push(format!("log error: {}", p["entry"]))
                }
                "Network.requestWillBeSent" => {
                    let u = p["request"]["url"].as_str().unwrap_or_default();
                    if u != url {
                        problems.push(format!("request to {u}"));
                    }
                }
                _ => {}
            }
        }
        problems
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }
}

/// Width and height from a PNG's IHDR.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_renders_the_report_without_errors() {
    let Some(chromium) = find_chromium() else {
        crate::common::skip_or_fail(
            "no chromium on PATH (apt-get install -y chromium, or set IMCAST_CHROMIUM), so \
             report.html was NOT checked in a browser.",
        );
        return;
    };
    let r = real_run(0.05, 0.5).await;
    let page = r.report_dir().join("report.html");
    let url = format!("file://{}", page.display());
    let profile = tempfile::tempdir().expect("profile");
    let mut child = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-extensions",
            "--window-size=1280,2000",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Keep draining stderr so the browser never blocks on it.
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let ws_url = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                if let Some(u) = l.split("DevTools listening on ").nth(1) {
                    break u.trim().to_string();
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("chromium did not start its DevTools endpoint: {e}");
            }
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut dt = DevTools::connect(&ws_url);
        let target = dt.call(
            "Target.createTarget",
            serde_json::json!({"url": "about:blank"}),
        );
        let attached = dt.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": target["targetId"], "flatten": true}),
        );
        dt.session = Some(attached["sessionId"].as_str().expect("session").to_string());
        for m in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            dt.call(m, serde_json::json!({}));
        }

        // The harness sees errors: a page that throws and logs one is caught.
        let bad = r.dir.path().join("bad.html");
        std::fs::write(
            &bad,
            "<!DOCTYPE html><title>bad</title><script>console.error('boom'); throw new Error('x')</script>",
        )
        .expect("bad page");
        let problems = dt.load(&format!("file://{}", bad.display()));
        assert!(
            problems.iter().any(|p| p.contains("exception"))
                && problems.iter().any(|p| p.contains("console.")),
            "the harness must catch errors: {problems:?}"
        );

        // The report: loads, no error, no request, its sections rendered.
        let problems = dt.load(&url);
        assert!(problems.is_empty(), "report.html in Chromium: {problems:?}");
        assert_eq!(
            dt.eval("document.querySelectorAll('main section').length"),
            6
        );
        assert_eq!(dt.eval("document.querySelectorAll('svg').length"), 2);
        assert_eq!(
            dt.eval("[...document.querySelectorAll('#variants pre')].some(p => p.textContent.includes('<script>alert(1)'))"),
            Value::Bool(true)
        );
        let height = dt.eval("document.documentElement.scrollHeight");
        assert!(height.as_f64() > Some(1500.0), "a full page: {height}");

        let shot = dt.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png", "captureBeyondViewport": true}),
        );
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-screenshot.png");
        std::fs::write(&out, &png).expect("save screenshot");
        let (w, h) = png_size(&png);
        assert!(w >= 1000 && h >= 1500, "screenshot {w}x{h}");
        assert!(
            png.len() > 30_000,
            "a screenshot with content: {} bytes",
            png.len()
        );

        // Dark mode: the page follows prefers-color-scheme.
        let light = dt.eval("getComputedStyle(document.body).backgroundColor");
        dt.call(
            "Emulation.setEmulatedMedia",
            serde_json::json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        );
        let dark = dt.eval("getComputedStyle(document.body).backgroundColor");
        assert_ne!(light, dark, "dark mode changes the background");
        assert_eq!(dark, "rgb(13, 17, 23)");

        // Printed: light colours, no navigation, and a PDF comes out.
        dt.call(
            "Emulation.setEmulatedMedia",
            serde_json::json!({"media": "print"}),
        );
        assert_eq!(
            dt.eval("getComputedStyle(document.querySelector('nav')).display"),
            "none"
        );
        let pdf = dt.call("Page.printToPDF", serde_json::json!({}));
        assert!(pdf["data"].as_str().is_some_and(|d| d.len() > 10_000));
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The variants a run records for its page are the plan's largest Contents, rendered the same
/// whether the plan keeps its Contents or re-renders them, with the recipients its calls carry.
#[test]
fn plan_variants_are_the_largest_contents_kept_or_re_rendered() {
    use imcast::plan::{self, PlanOptions, StoreLimits};
    let dir = tempfile::tempdir().expect("tempdir");
    // Group g has 30 - 2g users: sizes 30, 28, …, 2.
    let mut csv = String::from("user_id,g\n");
    let mut id = 1_000u64;
    for g in 0..15u64 {
        for _ in 0..(30 - 2 * g) {
            csv.push_str(&format!("{id},g{g}\n"));
            id += 1;
        }
    }
    std::fs::write(dir.path().join("a.csv"), csv).expect("csv");
    let file = dir.path().join("v.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: v\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\n\
         audience: { csv: a.csv }\nmessage: { type: text, text: \"Hello {{ g }}\", ext: { k: \"{{ g }}\" } }\n",
    )
    .expect("campaign");
    let c = imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("campaign");
    let kept = plan::build(&c, &PlanOptions::default()).expect("plan");
    let spilled = plan::build_with(
        &c,
        &PlanOptions::default(),
        StoreLimits {
            max_contents: 1,
            max_bytes: 1 << 20,
        },
    )
    .expect("plan");
    assert!(!spilled.contents_in_memory());
    let mut by_variant: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for call in kept.calls() {
        let call = call.expect("call");
        let e = by_variant
            .entry(call.variant.clone())
            .or_insert((0, call.content.clone()));
        e.0 += call.receivers.len() as u64;
    }
    for p in [&kept, &spilled] {
        let v = p.variants(4).expect("variants");
        let sizes: Vec<u64> = v.iter().map(|v| v.recipients).collect();
        assert_eq!(sizes, [30, 28, 26, 24], "the four largest, in plan order");
        for x in &v {
            let (n, content) = &by_variant[&x.variant];
            assert_eq!(x.recipients, *n);
            assert_eq!(&x.content, content);
            assert_eq!(
                x.ext.get("k").map(String::as_str),
                x.content
                    .split(' ')
                    .nth(1)
                    .map(|s| s.trim_end_matches("\"}"))
            );
        }
        assert_eq!(p.variants(100).expect("all").len(), 15);
    }
}
