//! The one report writer: `reports/<campaign>/<run-id>/` with `report.html` (the page people look
//! at, see `html`), `summary.json` (counts per status, calls, duration, achieved rate vs limit,
//! the report's files, audit block) and the per-recipient files the formats ask for:
//! `recipients.csv` (default) and/or `recipients.jsonl` (on request) — one row per audience row,
//! its last column the A/B `variant_name` (and `summary.json`/`report.html` count each status per
//! variant name);
//! for P2PSendMessage campaigns each conversation row is followed by one row per user the provider
//! answered for (`raw_id` `<conversation>/<user>`, status `sent`, `not_online` or `failed` for
//! another code). Above
//! [`COMPRESS_ABOVE_ROWS`] rows the per-recipient files are zstd-compressed (`.zst`). Generated
//! from the journal only (plus what the run recorded for its page, see `facts`), so
//! `imcast report` can rewrite it at any time and it always matches the journal; per-recipient
//! files a rewrite no longer writes are removed. [`prune_reports`] deletes old report folders.
//!
//! Speed: the per-recipient rows are read borrowed from SQLite and formatted by hand (the CSV
//! exactly as the `csv` crate writes it, checked by a unit test), a large run in contiguous line
//! ranges scanned in parallel on read connections, each into a temp file appended in order
//! (zstd frames concatenate); memory is a chunk buffer per part and file, whatever the run's size.
//!
//! Invariants: every file is written to a temp file in the same directory and renamed into place
//! (a reader never sees half a report); files are mode 0600 and directories 0700 (reports hold
//! personal data); CSV cells that a spreadsheet would treat as a formula (leading `=`, `+`, `-`,
//! `@`, tab or CR) are prefixed with `'`. Must not: send anything or change the journal's core
//! tables (it only reads them; `facts::record_run` keeps the page's extras in tables of its own).

use std::collections::BTreeMap;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub mod facts;
mod html;
pub mod rate;
pub mod variants;

use crate::action::Action;
use crate::config::ReportFormats;
use crate::journal::{
    create_private_dir, CallState, Invocation, Journal, JournalError, RecipientRef, RecipientRow,
    RecipientStatus, RunFlags, RunInfo,
};

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("writing report file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing report CSV {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("no run {0} in the journal")]
    NoRun(String),
}

impl ReportError {
    /// The file a full disk refused (a report file, or the journal), when that is what this
    /// error is.
    pub fn disk_full(&self) -> Option<&Path> {
        match self {
            ReportError::Journal(j) => j.disk_full(),
            ReportError::Io { path, source } if crate::exit::is_storage_full(source) => Some(path),
            ReportError::Csv { path, source } => match source.kind() {
                csv::ErrorKind::Io(e) if crate::exit::is_storage_full(e) => Some(path),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Who ran a run, from where, with what: recorded when the run is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Audit {
    pub user: String,
    pub host: String,
    pub git_commit: Option<String>,
    pub git_dirty: Option<bool>,
    pub plan_hash: String,
    pub access_key_id: Option<String>,
    pub endpoint: String,
    /// The campaign's AppId.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<u64>,
    pub risky_flags: Vec<String>,
    pub imcast_version: String,
}

impl Audit {
    /// Gather the audit block for a run of a campaign in `repo_root` (runs `git` there if present).
    pub fn collect(
        repo_root: &Path,
        plan_hash: &str,
        access_key_id: Option<&str>,
        endpoint: &str,
        app_id: u64,
        flags: &RunFlags,
    ) -> Audit {
        let (git_commit, git_dirty) = git_state(repo_root);
        Audit {
            user: std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .unwrap_or_else(|_| "unknown".into()),
            host: crate::journal::hostname(),
            git_commit,
            git_dirty,
            plan_hash: plan_hash.into(),
            access_key_id: access_key_id.map(str::to_string),
            endpoint: endpoint.into(),
            app_id: Some(app_id),
            risky_flags: flags.risky().into_iter().map(str::to_string).collect(),
            imcast_version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

fn git_state(root: &Path) -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty());
    let dirty = commit
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain"]))
        .map(|s| !s.is_empty());
    (commit, dirty)
}

/// The report's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub dir: PathBuf,
    /// `recipients.csv` (`.zst` when compressed), if written.
    pub csv: Option<PathBuf>,
    /// `recipients.jsonl` (`.zst` when compressed), if written.
    pub jsonl: Option<PathBuf>,
    pub summary: PathBuf,
    pub html: PathBuf,
    /// `variants.csv`, if the run recorded its variants.
    pub variants: Option<PathBuf>,
    /// The per-recipient files are zstd-compressed.
    pub compressed: bool,
}

/// The files of a report, as `summary.json` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportFiles {
    pub report_html: String,
    pub recipients_csv: Option<String>,
    pub recipients_jsonl: Option<String>,
    /// Each variant id with its rendered Content, Ext and recipients (absent for a run that
    /// did not record its variants).
    pub variants_csv: Option<String>,
    /// The per-recipient files are zstd-compressed (runs above 1,000,000 rows).
    pub compressed: bool,
    /// What a person needs to know about them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When `variants.csv` lists only the variants with the most recipients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variants_note: Option<String>,
}

impl ReportFiles {
    fn new(p: &ReportPaths) -> Self {
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        };
        ReportFiles {
            report_html: HTML_FILE.into(),
            recipients_csv: name(&p.csv),
            recipients_jsonl: name(&p.jsonl),
            variants_csv: name(&p.variants),
            compressed: p.compressed,
            note: p.compressed.then(|| {
                format!(
                    "more than {} rows: the per-recipient files are zstd-compressed (no spreadsheet \
                     opens that many rows); read them with `zstdcat recipients.csv.zst` or unpack \
                     with `zstd -d`",
                    fmt_count(COMPRESS_ABOVE_ROWS)
                )
            }),
            variants_note: None,
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub action: Action,
    pub status: String,
    pub stop_reason: Option<String>,
    pub test: bool,
    pub continued_from: Option<String>,
    /// A `--retry-failed` run: the finished run whose retryable failures it sends again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    pub plan_hash: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    /// Audience rows (= report rows).
    pub rows: u64,
    pub counts: BTreeMap<RecipientStatus, u64>,
    pub calls: CallsSummary,
    pub rate: RateSummary,
    pub errors: ErrorCounts,
    pub audit: serde_json::Value,
    /// The run's stages in order (a canary and the rest, or local-time waves); absent for a
    /// run sent as one stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSummary>,
    /// A/B variants: recipients per status of each `message.variants` entry, by name (held-out
    /// recipients are in `counts.holdout`, under no variant). Left out without variants.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, BTreeMap<RecipientStatus, u64>>,
    /// The report's files (set when a report is written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<ReportFiles>,
}

/// One stage of a staged run as the journal holds it (see `stages`, `journal::stages`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSummary {
    pub name: String,
    /// waiting | sending | sent | expired.
    pub state: String,
    pub recipients: u64,
    pub calls: u64,
    /// Not before this time (a wave's local time).
    pub not_before: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// The gate after the stage (the canary's): waiting | passed | failed | overridden | skipped.
    pub gate: Option<String>,
    /// When the gate decides.
    pub gate_at: Option<String>,
    /// The gate's numbers, or why the stage expired.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallsSummary {
    pub planned: u64,
    pub done: u64,
    pub unknown: u64,
    pub attempts: u64,
    /// Calls made (beyond the plan's) to resend receivers the provider refused with
    /// FailedReceiver; included in `done`/`unknown`. Left out when zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub resend_calls: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the run used of its limit: measured from the admission instants the journal logged
/// (see [`rate`]), never extrapolated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateSummary {
    /// What the limit counts: receivers (batch) or requests.
    pub unit: &'static str,
    /// The most this run may use per window: the account's share, or the campaign's own
    /// `throttle:` where that is lower (in the account's window).
    pub limit: u64,
    pub window_seconds: f64,
    /// The most units admitted in any one window of the run (exact sliding window; retries
    /// count). Null for a run sent before imcast logged admissions.
    pub busiest_window: Option<u64>,
    /// When that window ended (its last admission).
    pub busiest_window_end: Option<String>,
    /// busiest_window / limit (≤ 1 whenever the limiter held).
    pub busiest_window_share_of_limit: Option<f64>,
    /// Units admitted over the run (retries included).
    pub admitted: u64,
    /// admitted / duration_seconds: the average over the whole run, pauses included. Compare
    /// `busiest_window` with the limit, not this: a run shorter than a few windows averages
    /// above the limit's per-second rate without breaking it (n calls span n − 1 intervals).
    pub average_per_second: f64,
}

/// Errors by code: what people look for when a run went wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorCounts {
    /// Failed attempts per error code, retried ones included (429s, 5xx): the provider's code,
    /// `HTTP<status>` when it gave none, or the transport's class (`Unknown`: no answer).
    pub attempts: BTreeMap<String, u64>,
    /// Failed, unknown and not-online recipients per status and final error code (the
    /// report's scan counts them; `imcast status --output json` leaves this out). Codes beyond the report's 40 groups are counted
    /// under `(other)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<BTreeMap<RecipientStatus, BTreeMap<String, u64>>>,
}

impl ErrorCounts {
    /// The recipient counts from the report's tally.
    fn with_tally(&mut self, tally: &facts::Tally) {
        let mut by: BTreeMap<RecipientStatus, BTreeMap<String, u64>> = BTreeMap::new();
        let provider = |st: &RecipientStatus| {
            matches!(
                st,
                RecipientStatus::Failed | RecipientStatus::Unknown | RecipientStatus::NotOnline
            )
        };
        for g in tally.groups.iter().filter(|g| provider(&g.status)) {
            let code = g.code.clone().unwrap_or_else(|| "(none)".into());
            *by.entry(g.status).or_default().entry(code).or_default() += g.count;
        }
        for (st, n) in tally.other.iter().filter(|(st, _)| provider(st)) {
            *by.entry(*st)
                .or_default()
                .entry("(other)".into())
                .or_default() += n;
        }
        self.recipients = Some(by);
    }
}

/// One row of recipients.csv / recipients.jsonl: the journal's recipient row as stored (P2P
/// per-user rows are built in the same shape by [`p2p_user_rows`]).
pub type ReportRow = RecipientRow;

/// Neutralize a cell a spreadsheet would evaluate as a formula.
pub fn safe_cell(s: &str) -> std::borrow::Cow<'_, str> {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}").into(),
        _ => s.into(),
    }
}

/// A path-safe directory name for a campaign.
fn dir_name(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() || v.starts_with('.') {
        format!("_{v}")
    } else {
        v
    }
}

/// Where a run's report goes.
pub fn report_dir(reports_dir: &Path, campaign: &str, run_id: &str) -> PathBuf {
    reports_dir.join(dir_name(campaign)).join(dir_name(run_id))
}

/// Build the summary of a run from the journal.
pub fn summary(journal: &Journal, run: &RunInfo) -> Result<Summary, ReportError> {
    let counts = journal.counts(&run.id)?;
    let calls = journal.call_counts(&run.id)?;
    let attempts = journal.attempts(&run.id)?;
    let rows: u64 = counts.values().sum();
    let end = run.finished_at.unwrap_or(run.updated_at);
    let duration = ((end.as_nanosecond() - run.created_at.as_nanosecond()).max(0) as f64) / 1e9;
    // What the limiter counted: the receivers and calls that reached the provider.
    let receivers = [
        RecipientStatus::Sent,
        RecipientStatus::Failed,
        RecipientStatus::Unknown,
    ]
    .iter()
    .map(|s| counts.get(s).copied().unwrap_or(0))
    .sum::<u64>();
    let calls_made = calls.get(&CallState::Done).copied().unwrap_or(0)
        + calls.get(&CallState::Unknown).copied().unwrap_or(0);
    let window = run.limit.window.as_secs_f64();
    let busiest = rate::busiest(journal, &run.id, run.action, run.limit.window)?;
    // A run sent before the attempts log existed: what reached the provider, no busiest window.
    let logged = busiest.attempts > 0 || calls_made == 0;
    let admitted = if logged {
        busiest.admitted
    } else {
        run.action.total_units(receivers, calls_made)
    };
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    Ok(Summary {
        run_id: run.id.clone(),
        campaign: run.campaign.clone(),
        occurrence: run.occurrence.clone(),
        action: run.action,
        status: run.status.to_string(),
        stop_reason: run.stop_reason.clone(),
        test: run.is_test,
        continued_from: run.continued_from.clone(),
        retry_of: run.retry_of.clone(),
        plan_hash: run.plan_hash.clone(),
        started_at: run.created_at.to_string(),
        finished_at: run.finished_at.map(|t| t.to_string()),
        duration_seconds: (duration * 1000.0).round() / 1000.0,
        rows,
        counts,
        calls: CallsSummary {
            planned: run.total_calls,
            done: calls.get(&CallState::Done).copied().unwrap_or(0),
            unknown: calls.get(&CallState::Unknown).copied().unwrap_or(0),
            attempts,
            resend_calls: journal.extra_calls(&run.id)?,
        },
        rate: RateSummary {
            unit: run.action.unit().as_str(),
            limit: run.limit.limit,
            window_seconds: window,
            busiest_window: logged.then_some(busiest.units),
            busiest_window_end: busiest.end.map(|t| t.to_string()),
            busiest_window_share_of_limit: (logged && run.limit.limit > 0)
                .then(|| round(busiest.units as f64 / run.limit.limit as f64, 3)),
            admitted,
            average_per_second: if duration > 0.0 {
                round(admitted as f64 / duration, 2)
            } else {
                0.0
            },
        },
        errors: ErrorCounts {
            attempts: journal.attempt_codes(&run.id)?,
            recipients: None,
        },
        audit: audit_block(run, &journal.invocations(&run.id)?),
        stages: journal
            .stages(&run.id)?
            .into_iter()
            .map(|r| StageSummary {
                name: r.name,
                state: r.state,
                recipients: r.recipients,
                calls: r.calls,
                not_before: r.not_before.map(|t| t.to_string()),
                started_at: r.started_at.map(|t| t.to_string()),
                finished_at: r.finished_at.map(|t| t.to_string()),
                gate: r.gate,
                gate_at: r.gate_at.map(|t| t.to_string()),
                detail: r.detail,
            })
            .collect(),
        variants: BTreeMap::new(),
        files: None,
    })
}

/// The run's audit block as `summary.json` shows it: what was recorded when the run was created,
/// plus `invocations` — every invocation that opened the run (created, resumed, continued, a
/// `--retry-failed` follow-up), oldest first, with who, where, when, which imcast and its flags.
pub fn audit_block(run: &RunInfo, invocations: &[Invocation]) -> serde_json::Value {
    let mut audit = match &run.audit {
        serde_json::Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    if let Some(r) = &run.retry_of {
        audit.insert("retry_of".into(), r.clone().into());
    }
    let list: Vec<serde_json::Value> = invocations
        .iter()
        .map(|i| {
            serde_json::json!({
                "at": i.at.to_string(),
                "decision": i.decision,
                "via": i.via,
                "user": i.user,
                "host": i.host,
                "imcast_version": i.imcast_version,
                "flags": i.flags.to_args(),
            })
        })
        .collect();
    audit.insert("invocations".into(), serde_json::Value::Array(list));
    serde_json::Value::Object(audit)
}

/// What to write (see [`write_report_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOptions {
    /// Per-recipient files (`report.html` and `summary.json` are always written).
    pub formats: ReportFormats,
    /// Above this many rows the per-recipient files are written zstd-compressed (`.zst`).
    pub compress_above_rows: u64,
    /// The campaign file, named in the commands the report suggests (else the one the run
    /// recorded).
    pub campaign_file: Option<PathBuf>,
    /// Scan in this many parallel parts (None: one per core, up to 4, above 200,000 rows).
    pub scan_parts: Option<usize>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            formats: ReportFormats::default(),
            compress_above_rows: COMPRESS_ABOVE_ROWS,
            campaign_file: None,
            scan_parts: None,
        }
    }
}

/// Per-recipient files of runs with more rows than this are written zstd-compressed: no
/// spreadsheet opens them anyway, and they shrink several times.
pub const COMPRESS_ABOVE_ROWS: u64 = 1_000_000;

/// zstd level for the per-recipient files: fast (the report step must keep up with ten million
/// rows in seconds) and still several times smaller than the text.
const ZSTD_LEVEL: i32 = 1;

/// The report page's file name.
pub const HTML_FILE: &str = "report.html";
/// The summary's file name.
pub const SUMMARY_FILE: &str = "summary.json";
/// Every file name the report writer may leave in a report folder (what `prune --reports`
/// removes, and what a rewrite removes when it no longer writes it).
pub const FILE_NAMES: &[&str] = &[
    "recipients.csv",
    "recipients.csv.zst",
    "recipients.jsonl",
    "recipients.jsonl.zst",
    HTML_FILE,
    SUMMARY_FILE,
    variants::FILE,
];

/// Write (or rewrite) the report of run `run_id` under `reports_dir` with the default options
/// (`recipients.csv`, `report.html`, `summary.json`).
pub fn write_report(
    journal: &Journal,
    run_id: &str,
    reports_dir: &Path,
) -> Result<ReportPaths, ReportError> {
    write_report_with(journal, run_id, reports_dir, &ReportOptions::default())
}

/// Write (or rewrite) the report of run `run_id` under `reports_dir`: one ordered scan of the
/// journal feeds the per-recipient files and the failure tally; then `summary.json` and
/// `report.html`. Per-recipient files of the other kind or compression left by an earlier write
/// are removed, so the folder always matches the journal.
pub fn write_report_with(
    journal: &Journal,
    run_id: &str,
    reports_dir: &Path,
    opts: &ReportOptions,
) -> Result<ReportPaths, ReportError> {
    let run = journal
        .run(run_id)?
        .ok_or_else(|| ReportError::NoRun(run_id.into()))?;
    let dir = report_dir(reports_dir, &run.campaign, &run.id);
    create_private_dir(&dir)?;
    let mut summary = summary(journal, &run)?;
    let (meta, recorded) = facts::recorded(journal, &run.id)?;
    let compressed = summary.rows > opts.compress_above_rows;
    let ext = if compressed { ".zst" } else { "" };
    let paths = ReportPaths {
        csv: opts
            .formats
            .csv
            .then(|| dir.join(format!("recipients.csv{ext}"))),
        jsonl: opts
            .formats
            .jsonl
            .then(|| dir.join(format!("recipients.jsonl{ext}"))),
        summary: dir.join(SUMMARY_FILE),
        html: dir.join(HTML_FILE),
        variants: (!recorded.is_empty()).then(|| dir.join(variants::FILE)),
        compressed,
        dir,
    };

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io {
            path: path.clone(),
            source,
        }
    };
    let temp = |path: &Path| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempfile_in(&paths.dir)
            .map_err(io(path))
    };

    // The per-recipient files, formatted by one scan of the journal per part: a large run is
    // cut into contiguous line ranges scanned in parallel (each on its own read connection,
    // formatting rows borrowed from SQLite, nothing allocated per row, and writing — compressed
    // when large — into a temp file of its own); the parts are then appended in order (zstd
    // frames concatenate into one stream). Memory: a chunk buffer per part and file.
    let formats: Vec<(Kind, &Path)> = [
        (Kind::Csv, paths.csv.as_deref()),
        (Kind::Jsonl, paths.jsonl.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    let ranges = scan_ranges(journal, &run.id, summary.rows, opts.scan_parts)?;
    let mut files: Vec<Vec<tempfile::NamedTempFile>> = formats
        .iter()
        .map(|(_, path)| ranges.iter().map(|_| temp(path)).collect())
        .collect::<Result<_, _>>()?;
    let readers: Vec<Journal> = (0..ranges.len())
        .map(|_| journal.reader())
        .collect::<Result<_, _>>()?;
    let mut tallies: Vec<facts::Tally> = ranges.iter().map(|_| facts::Tally::default()).collect();
    {
        let mut per_part: Vec<Vec<(Kind, &mut std::fs::File, &Path)>> =
            ranges.iter().map(|_| Vec::new()).collect();
        for ((kind, path), parts) in formats.iter().zip(files.iter_mut()) {
            for (part, t) in per_part.iter_mut().zip(parts.iter_mut()) {
                part.push((*kind, t.as_file_mut(), path));
            }
        }
        let p2p = run.action == Action::P2p;
        let run_id = run.id.as_str();
        std::thread::scope(|scope| -> Result<(), ReportError> {
            let mut work = per_part
                .into_iter()
                .zip(tallies.iter_mut())
                .zip(ranges.iter().cloned())
                .enumerate();
            let mut readers = readers.into_iter();
            let first = work.next().zip(readers.next());
            let handles: Vec<_> = work
                .zip(readers)
                .map(|((_, ((outs, tally), lines)), reader)| {
                    scope.spawn(move || {
                        scan_part(&reader, run_id, lines, outs, tally, compressed, false, p2p)
                    })
                })
                .collect();
            let res = match first {
                Some(((_, ((outs, tally), lines)), reader)) => {
                    scan_part(&reader, run_id, lines, outs, tally, compressed, true, p2p)
                }
                None => Ok(()),
            };
            for h in handles {
                h.join()
                    .unwrap_or_else(|_| Err(writer_stopped(&paths.dir)))?;
            }
            res
        })?;
    }
    for (parts, (_, path)) in files.iter_mut().zip(&formats) {
        let (first, rest) = parts.split_at_mut(1);
        let dst = first[0].as_file_mut();
        for t in rest {
            let f = t.as_file_mut();
            f.seek(std::io::SeekFrom::Start(0)).map_err(io(path))?;
            std::io::copy(f, dst).map_err(io(path))?;
        }
    }
    let mut tally = facts::Tally::default();
    for t in tallies {
        tally.merge(t);
    }
    let mut finals = files.into_iter().map(|mut parts| parts.swap_remove(0));
    let csv_tmp = paths.csv.as_ref().and_then(|_| finals.next());
    let jsonl_tmp = paths.jsonl.as_ref().and_then(|_| finals.next());

    summary.variants = tally.by_variant.clone();
    let mut files = ReportFiles::new(&paths);
    let distinct = meta.as_ref().map_or(0, |m| m.distinct_contents);
    if !recorded.is_empty() && distinct > recorded.len() as u64 {
        files.variants_note = Some(format!(
            "{} distinct Contents: variants.csv lists the {} with the most recipients; \
             `imcast preview FILE ID` shows any recipient's message",
            fmt_count(distinct),
            fmt_count(recorded.len() as u64)
        ));
    }
    summary.files = Some(files);
    summary.errors.with_tally(&tally);
    let variants_tmp = match &paths.variants {
        Some(p) => {
            let mut t = temp(p)?;
            let bytes = variants::to_csv(&recorded).map_err(|source| ReportError::Csv {
                path: p.clone(),
                source,
            })?;
            t.as_file_mut().write_all(&bytes).map_err(io(p))?;
            Some(t)
        }
        None => None,
    };
    let mut sum_tmp = temp(&paths.summary)?;
    serde_json::to_writer_pretty(sum_tmp.as_file_mut(), &summary).map_err(|e| ReportError::Io {
        path: paths.summary.clone(),
        source: e.into(),
    })?;
    sum_tmp
        .as_file_mut()
        .write_all(b"\n")
        .map_err(io(&paths.summary))?;

    let page = html::render(journal, &run, &summary, tally, opts).map_err(|e| ReportError::Io {
        path: paths.html.clone(),
        source: std::io::Error::other(e),
    })?;
    let mut html_tmp = temp(&paths.html)?;
    html_tmp
        .as_file_mut()
        .write_all(page.as_bytes())
        .map_err(io(&paths.html))?;

    let mut done: Vec<(tempfile::NamedTempFile, &PathBuf)> = Vec::new();
    if let (Some(t), Some(p)) = (csv_tmp, &paths.csv) {
        done.push((t, p));
    }
    if let (Some(t), Some(p)) = (jsonl_tmp, &paths.jsonl) {
        done.push((t, p));
    }
    if let (Some(t), Some(p)) = (variants_tmp, &paths.variants) {
        done.push((t, p));
    }
    done.push((sum_tmp, &paths.summary));
    done.push((html_tmp, &paths.html));
    for (tmp, path) in done {
        tmp.as_file().sync_all().map_err(io(path))?;
        set_private(tmp.path()).map_err(io(path))?;
        tmp.persist(path).map_err(|e| ReportError::Io {
            path: path.clone(),
            source: e.error,
        })?;
    }
    // Per-recipient files this write did not produce are stale: remove them.
    for name in FILE_NAMES {
        let p = paths.dir.join(name);
        let written = [&paths.csv, &paths.jsonl, &paths.variants]
            .iter()
            .any(|w| w.as_ref() == Some(&p))
            || p == paths.summary
            || p == paths.html;
        if !written && p.exists() {
            std::fs::remove_file(&p).map_err(io(&p))?;
        }
    }
    Ok(paths)
}

/// What [`prune_reports`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedReports {
    pub folders: u64,
    pub bytes: u64,
}

/// Remove the report folders under `reports_dir` (`<campaign>/<run>/`, and `mock/<campaign>/<run>/`)
/// whose run ended — `summary.json` says finished or cancelled — before `cutoff`. Only the files
/// this module writes are removed (and its temp files); a folder is removed once empty, so anything
/// else a person put there stays. Folders without a readable `summary.json` are left alone, and
/// symbolic links are never followed.
pub fn prune_reports(reports_dir: &Path, cutoff: Timestamp) -> Result<PrunedReports, ReportError> {
    let mut out = PrunedReports::default();
    if !reports_dir.is_dir() {
        return Ok(out);
    }
    prune_walk(reports_dir, reports_dir, 0, cutoff, &mut out)?;
    Ok(out)
}

#[derive(Deserialize)]
struct SummaryEnd {
    #[serde(default)]
    status: String,
    #[serde(default)]
    finished_at: Option<String>,
}

fn prune_walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    cutoff: Timestamp,
    out: &mut PrunedReports,
) -> Result<(), ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io {
            path: path.clone(),
            source,
        }
    };
    let summary = dir.join(SUMMARY_FILE);
    if depth >= 2 && summary.is_file() {
        let ended = std::fs::read_to_string(&summary)
            .ok()
            .and_then(|t| serde_json::from_str::<SummaryEnd>(&t).ok())
            .filter(|s| matches!(s.status.as_str(), "finished" | "cancelled"))
            .and_then(|s| s.finished_at)
            .and_then(|t| t.parse::<Timestamp>().ok());
        if ended.is_some_and(|t| t < cutoff) {
            for e in std::fs::read_dir(dir).map_err(io(dir))? {
                let e = e.map_err(io(dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = FILE_NAMES.iter().any(|f| {
                    name == *f
                        || name
                            .strip_prefix('.')
                            .is_some_and(|rest| rest.starts_with(&format!("{f}.")))
                });
                if ours && e.file_type().map_err(io(dir))?.is_file() {
                    out.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                    std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                }
            }
            out.folders += 1;
            // Remove the folder, then its campaign folder, when nothing else is in them.
            let mut d = dir.to_path_buf();
            while d != root && d.starts_with(root) && std::fs::remove_dir(&d).is_ok() {
                if !d.pop() {
                    break;
                }
            }
        }
        return Ok(());
    }
    if depth >= 3 {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        if e.file_type().map_err(io(dir))?.is_dir() {
            prune_walk(root, &e.path(), depth + 1, cutoff, out)?;
        }
    }
    Ok(())
}

/// Where a per-recipient file's bytes go: the temp file, through zstd when compressed.
enum Sink<'a> {
    Plain(BufWriter<&'a mut std::fs::File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<&'a mut std::fs::File>>),
}

impl<'a> Sink<'a> {
    fn new(
        file: &'a mut std::fs::File,
        compressed: bool,
        path: &Path,
    ) -> Result<Self, ReportError> {
        let w = BufWriter::with_capacity(1 << 16, file);
        if !compressed {
            return Ok(Sink::Plain(w));
        }
        zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)
            .map(Sink::Zstd)
            .map_err(|source| ReportError::Io {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Flush everything (and end the zstd frame).
    fn finish(self) -> std::io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Zstd(e) => e.finish()?.flush(),
        }
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// Bytes of formatted rows handed to a file's writer at a time.
const CHUNK: usize = 256 * 1024;

const CSV_HEADER: [&str; 13] = [
    "line",
    "id",
    "raw_id",
    "status",
    "message_id",
    "attempts",
    "call",
    "variant",
    "error_code",
    "error_message",
    "detail",
    "time",
    "variant_name",
];

fn writer_stopped(path: &Path) -> ReportError {
    ReportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("the report writer stopped"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Jsonl,
}

/// Runs with more rows than this are scanned in parallel parts.
const PARALLEL_ABOVE_ROWS: u64 = 200_000;
/// At most this many parts.
const MAX_PARTS: usize = 4;

/// The line ranges to scan: one for small runs, else one per core (up to [`MAX_PARTS`]).
fn scan_ranges(
    journal: &Journal,
    run_id: &str,
    rows: u64,
    parts: Option<usize>,
) -> Result<Vec<std::ops::RangeInclusive<u64>>, ReportError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parts = match parts {
        Some(n) => n.clamp(1, MAX_PARTS) as u64,
        None if rows > PARALLEL_ABOVE_ROWS => cores.clamp(1, MAX_PARTS) as u64,
        None => 1,
    };
    let last = journal.last_line(run_id)?.unwrap_or(0);
    if parts == 1 || last < parts {
        return Ok(vec![0..=u64::MAX]);
    }
    let step = last.div_ceil(parts);
    Ok((0..parts)
        .map(|i| {
            let from = if i == 0 { 0 } else { i * step + 1 };
            let to = if i + 1 == parts {
                u64::MAX
            } else {
                (i + 1) * step
            };
            from..=to
        })
        .collect())
}

/// Scan the rows of `lines` and write each per-recipient file's part (`header`: the CSV header
/// first).
#[allow(clippy::too_many_arguments)]
fn scan_part(
    journal: &Journal,
    run_id: &str,
    lines: std::ops::RangeInclusive<u64>,
    outs: Vec<(Kind, &mut std::fs::File, &Path)>,
    tally: &mut facts::Tally,
    compressed: bool,
    header: bool,
    p2p: bool,
) -> Result<(), ReportError> {
    let mut outs = outs
        .into_iter()
        .map(|(kind, file, path)| {
            let mut buf = Vec::with_capacity(CHUNK + 4096);
            if header && kind == Kind::Csv {
                buf.extend_from_slice(CSV_HEADER.join(",").as_bytes());
                buf.push(b'\n');
            }
            Ok(Out {
                kind,
                sink: Sink::new(file, compressed, path)?,
                buf,
                path,
            })
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    journal.for_each_recipient_ref::<ReportError>(run_id, lines, |row| {
        tally.add(row);
        if outs.is_empty() {
            return Ok(());
        }
        // P2P: one row per user the provider answered for, right under its conversation.
        let users = if p2p && row.detail.is_some() {
            p2p_user_rows(&row.to_row())
        } else {
            Vec::new()
        };
        for out in outs.iter_mut() {
            out.push(row)?;
            for u in &users {
                out.push(&row_ref(u))?;
            }
            if out.buf.len() >= CHUNK {
                out.flush()?;
            }
        }
        Ok(())
    })?;
    for out in outs {
        out.finish()?;
    }
    Ok(())
}

/// One per-recipient file's part being formatted.
struct Out<'f> {
    kind: Kind,
    sink: Sink<'f>,
    buf: Vec<u8>,
    path: &'f Path,
}

impl Out<'_> {
    fn push(&mut self, row: &RecipientRef<'_>) -> Result<(), ReportError> {
        match self.kind {
            Kind::Csv => {
                csv_row(&mut self.buf, row);
                Ok(())
            }
            Kind::Jsonl => json_row(&mut self.buf, row).map_err(|e| ReportError::Io {
                path: self.path.to_path_buf(),
                source: e.into(),
            }),
        }
    }

    fn flush(&mut self) -> Result<(), ReportError> {
        let res = self.sink.write_all(&self.buf);
        self.buf.clear();
        res.map_err(|source| ReportError::Io {
            path: self.path.to_path_buf(),
            source,
        })
    }

    fn finish(mut self) -> Result<(), ReportError> {
        self.flush()?;
        let path = self.path;
        self.sink.finish().map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A borrowed view of an owned row (the P2P per-user rows).
fn row_ref(r: &ReportRow) -> RecipientRef<'_> {
    RecipientRef {
        line: r.line,
        id: r.id,
        raw_id: Some(&r.raw_id),
        status: r.status,
        message_id: r.message_id,
        attempts: r.attempts,
        call: r.call,
        variant: r.variant.as_deref(),
        error_code: r.error_code.as_deref(),
        error_message: r.error_message.as_deref(),
        detail: r.detail.as_deref(),
        time: r.time.as_deref().unwrap_or_default(),
        variant_name: r.variant_name.as_deref(),
    }
}

/// One CSV record, exactly as `csv::Writer` (default settings) writes it after [`safe_cell`]:
/// numbers and statuses as they are, text quoted when it holds `,` `"` CR or LF (quotes
/// doubled). Hand-written because this runs ten million times in a report: the csv crate's
/// per-field state machine and buffering cost more than the scan itself (a unit test checks
/// both give the same bytes).
fn csv_row(buf: &mut Vec<u8>, r: &RecipientRef<'_>) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(n.format(r.line).as_bytes());
    buf.push(b',');
    if let Some(id) = r.id {
        buf.extend_from_slice(n.format(id).as_bytes());
    }
    buf.push(b',');
    match r.raw_id {
        Some(raw) => csv_text(buf, raw),
        None => {
            if let Some(id) = r.id {
                buf.extend_from_slice(n.format(id).as_bytes());
            }
        }
    }
    buf.push(b',');
    buf.extend_from_slice(r.status.as_str().as_bytes());
    buf.push(b',');
    if let Some(m) = r.message_id {
        buf.extend_from_slice(n.format(m).as_bytes());
    }
    buf.push(b',');
    buf.extend_from_slice(n.format(r.attempts).as_bytes());
    buf.push(b',');
    if let Some(c) = r.call {
        buf.extend_from_slice(n.format(c).as_bytes());
    }
    for cell in [
        r.variant,
        r.error_code,
        r.error_message,
        r.detail,
        Some(r.time),
        r.variant_name,
    ] {
        buf.push(b',');
        if let Some(t) = cell {
            csv_text(buf, t);
        }
    }
    buf.push(b'\n');
}

/// A text cell: neutralized ([`safe_cell`]), quoted when needed.
fn csv_text(buf: &mut Vec<u8>, s: &str) {
    let s = safe_cell(s);
    let b = s.as_bytes();
    if !b.iter().any(|c| matches!(c, b',' | b'"' | b'\r' | b'\n')) {
        buf.extend_from_slice(b);
        return;
    }
    buf.push(b'"');
    for &c in b {
        if c == b'"' {
            buf.push(b'"');
        }
        buf.push(c);
    }
    buf.push(b'"');
}

/// One JSON line, the fields and order of [`RecipientRow`] (`raw_id` always a string).
fn json_row(buf: &mut Vec<u8>, r: &RecipientRef<'_>) -> serde_json::Result<()> {
    #[derive(Serialize)]
    struct Line<'a> {
        line: u64,
        id: Option<u64>,
        raw_id: &'a str,
        status: RecipientStatus,
        message_id: Option<u64>,
        attempts: u32,
        call: Option<u64>,
        variant: Option<&'a str>,
        error_code: Option<&'a str>,
        error_message: Option<&'a str>,
        detail: Option<&'a str>,
        time: Option<&'a str>,
        variant_name: Option<&'a str>,
    }
    let mut n = itoa::Buffer::new();
    let raw_id = match (r.raw_id, r.id) {
        (Some(raw), _) => raw,
        (None, Some(id)) => n.format(id),
        (None, None) => "",
    };
    serde_json::to_writer(
        &mut *buf,
        &Line {
            line: r.line,
            id: r.id,
            raw_id,
            status: r.status,
            message_id: r.message_id,
            attempts: r.attempts,
            call: r.call,
            variant: r.variant,
            error_code: r.error_code,
            error_message: r.error_message,
            detail: r.detail,
            time: Some(r.time),
            variant_name: r.variant_name,
        },
    )?;
    buf.push(b'\n');
    Ok(())
}

/// One user of a P2PSendMessage answer (as the engine stores them in the row's detail).
#[derive(serde::Deserialize)]
struct P2pUserDetail {
    user_id: u64,
    code: String,
    #[serde(default)]
    device_platform: Option<String>,
}

/// The per-user rows of a P2P conversation row: same line and call, `raw_id`
/// `<conversation>/<user>`, status `sent` (SUCCESS, any case), `not_online` (NOT_ONLINE, any
/// case) or `failed` (any other code, kept verbatim as the error code). Empty for rows without a
/// P2P answer in their detail.
pub fn p2p_user_rows(conv: &ReportRow) -> Vec<ReportRow> {
    let Some(detail) = &conv.detail else {
        return Vec::new();
    };
    let Ok(users) = serde_json::from_str::<Vec<P2pUserDetail>>(detail) else {
        return Vec::new();
    };
    let conv_id = conv.id.map(|v| v.to_string()).unwrap_or_default();
    users
        .into_iter()
        .map(|u| {
            let code = crate::provider::p2p_code(&u.code);
            let online = code == crate::provider::P2pCode::Success;
            ReportRow {
                line: conv.line,
                id: Some(u.user_id),
                raw_id: format!("{conv_id}/{}", u.user_id),
                status: match code {
                    crate::provider::P2pCode::Success => RecipientStatus::Sent,
                    crate::provider::P2pCode::NotOnline => RecipientStatus::NotOnline,
                    crate::provider::P2pCode::Other => RecipientStatus::Failed,
                },
                message_id: None,
                attempts: conv.attempts,
                call: conv.call,
                variant: conv.variant.clone(),
                error_code: (!online).then(|| u.code.clone()),
                error_message: None,
                detail: Some(match &u.device_platform {
                    Some(p) => format!("user of conversation {conv_id} ({p})"),
                    None => format!("user of conversation {conv_id}"),
                }),
                time: conv.time.clone(),
                variant_name: conv.variant_name.clone(),
            }
        })
        .collect()
}

fn set_private(p: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = p;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralized() {
        assert_eq!(safe_cell("=1+2"), "'=1+2");
        assert_eq!(safe_cell("+1"), "'+1");
        assert_eq!(safe_cell("-5"), "'-5");
        assert_eq!(safe_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(safe_cell("12345"), "12345");
        assert_eq!(safe_cell(""), "");
    }

    /// What `csv::Writer` and `serde_json` make of a row: the reference for the hand-written
    /// formatters.
    fn reference(row: &ReportRow) -> (Vec<u8>, Vec<u8>) {
        let mut w = csv::Writer::from_writer(Vec::new());
        let num = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        let text =
            |v: &Option<String>| v.as_deref().map(safe_cell).unwrap_or_default().into_owned();
        w.write_record([
            row.line.to_string(),
            num(row.id),
            safe_cell(&row.raw_id).into_owned(),
            row.status.as_str().to_string(),
            num(row.message_id),
            row.attempts.to_string(),
            num(row.call),
            text(&row.variant),
            text(&row.error_code),
            text(&row.error_message),
            text(&row.detail),
            text(&row.time),
            text(&row.variant_name),
        ])
        .expect("csv");
        let csv = w.into_inner().expect("inner");
        let mut json = serde_json::to_vec(row).expect("json");
        json.push(b'\n');
        (csv, json)
    }

    #[test]
    fn hand_written_rows_equal_the_csv_and_json_crates() {
        let tricky = [
            "plain",
            "with,comma",
            "with \"quotes\"",
            "line\nbreak",
            "cr\rhere",
            "=1+2",
            "-5,\"x\"",
            "@SUM(A1)",
            "\ttab",
            "",
            "ünïcødé ✓ <script>",
        ];
        for (i, t) in tricky.iter().enumerate() {
            let row = ReportRow {
                line: i as u64 + 1,
                id: (i % 2 == 0).then_some(18_014_398_509_481_984 + i as u64),
                raw_id: t.to_string(),
                status: RecipientStatus::Failed,
                message_id: (i % 3 == 0).then_some(7_000_000_000),
                attempts: 2,
                call: (i % 2 == 1).then_some(42),
                variant: Some(t.to_string()),
                error_code: Some(format!("Code{t}")),
                error_message: (i % 2 == 0).then(|| t.to_string()),
                detail: Some(t.to_string()),
                time: Some("2026-11-22T08:00:00Z".into()),
                variant_name: (i % 2 == 0).then(|| t.to_string()),
            };
            let (want_csv, want_json) = reference(&row);
            let mut csv = Vec::new();
            csv_row(&mut csv, &row_ref(&row));
            assert_eq!(
                String::from_utf8_lossy(&csv),
                String::from_utf8_lossy(&want_csv),
                "{t:?}"
            );
            let mut json = Vec::new();
            json_row(&mut json, &row_ref(&row)).expect("json");
            assert_eq!(
                String::from_utf8_lossy(&json),
                String::from_utf8_lossy(&want_json),
                "{t:?}"
            );
        }
        // A raw id the journal does not store (it equals the id) is the id in decimal.
        let row = ReportRow {
            line: 1,
            id: Some(5),
            raw_id: "5".into(),
            status: RecipientStatus::Sent,
            message_id: None,
            attempts: 1,
            call: Some(0),
            variant: None,
            error_code: None,
            error_message: None,
            detail: None,
            time: Some("t".into()),
            variant_name: None,
        };
        let mut r = row_ref(&row);
        r.raw_id = None;
        let (want_csv, want_json) = reference(&row);
        let (mut csv, mut json) = (Vec::new(), Vec::new());
        csv_row(&mut csv, &r);
        json_row(&mut json, &r).expect("json");
        assert_eq!(csv, want_csv);
        assert_eq!(json, want_json);
    }

    #[test]
    fn dir_names_are_path_safe() {
        assert_eq!(dir_name("spring-sale"), "spring-sale");
        assert_eq!(dir_name("../etc"), "_.._etc");
        assert_eq!(dir_name("a/b"), "a_b");
    }
}
