//! The one report writer: `reports/<campaign>/<run-id>/` with `recipients.csv`,
//! `recipients.jsonl` (one row per audience row; for P2PSendMessage campaigns each conversation
//! row is followed by one row per user the provider answered for, `raw_id` `<conversation>/<user>`,
//! status `sent` or `not_online`) and `summary.json` (counts per status, calls,
//! duration, achieved rate vs limit, audit block). Generated from the journal only, so
//! `imcast report` can rewrite it at any time and it always matches the journal.
//!
//! Invariants: every file is written to a temp file in the same directory and renamed into place
//! (a reader never sees half a report); files are mode 0600 and directories 0700 (reports hold
//! personal data); CSV cells that a spreadsheet would treat as a formula (leading `=`, `+`, `-`,
//! `@`, tab or CR) are prefixed with `'`. Must not: send anything or change the journal.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::journal::{
    create_private_dir, CallState, Journal, JournalError, RecipientRow, RecipientStatus, RunFlags,
    RunInfo,
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
    pub csv: PathBuf,
    pub jsonl: PathBuf,
    pub summary: PathBuf,
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
    pub plan_hash: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_seconds: f64,
    /// Audience rows (= report rows).
    pub rows: u64,
    pub counts: BTreeMap<RecipientStatus, u64>,
    pub calls: CallsSummary,
    pub rate: RateSummary,
    pub audit: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallsSummary {
    pub planned: u64,
    pub done: u64,
    pub unknown: u64,
    pub attempts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateSummary {
    /// What the limit counts: receivers (batch) or requests.
    pub unit: &'static str,
    pub limit: u64,
    pub window_seconds: f64,
    /// Units per window achieved over the run's duration.
    pub achieved_per_window: f64,
    /// achieved / limit.
    pub share_of_limit: f64,
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
    let units = match run.action {
        Action::Batch => [
            RecipientStatus::Sent,
            RecipientStatus::Failed,
            RecipientStatus::Unknown,
        ]
        .iter()
        .map(|s| counts.get(s).copied().unwrap_or(0))
        .sum::<u64>(),
        _ => {
            calls.get(&CallState::Done).copied().unwrap_or(0)
                + calls.get(&CallState::Unknown).copied().unwrap_or(0)
        }
    };
    let window = run.limit.window.as_secs_f64();
    let achieved = if duration > 0.0 {
        units as f64 / duration * window
    } else {
        0.0
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
        },
        rate: RateSummary {
            unit: if run.action == Action::Batch {
                "receivers"
            } else {
                "requests"
            },
            limit: run.limit.limit,
            window_seconds: window,
            achieved_per_window: (achieved * 10.0).round() / 10.0,
            share_of_limit: if run.limit.limit > 0 {
                ((achieved / run.limit.limit as f64) * 1000.0).round() / 1000.0
            } else {
                0.0
            },
        },
        audit: run.audit.clone(),
    })
}

/// Write (or rewrite) the report of run `run_id` under `reports_dir`.
pub fn write_report(
    journal: &Journal,
    run_id: &str,
    reports_dir: &Path,
) -> Result<ReportPaths, ReportError> {
    let run = journal
        .run(run_id)?
        .ok_or_else(|| ReportError::NoRun(run_id.into()))?;
    let dir = report_dir(reports_dir, &run.campaign, &run.id);
    create_private_dir(&dir)?;
    let paths = ReportPaths {
        csv: dir.join("recipients.csv"),
        jsonl: dir.join("recipients.jsonl"),
        summary: dir.join("summary.json"),
        dir,
    };

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io {
            path: path.clone(),
            source,
        }
    };

    let mut csv_tmp = tempfile::Builder::new()
        .prefix(".recipients.csv.")
        .tempfile_in(&paths.dir)
        .map_err(io(&paths.csv))?;
    let mut jsonl_tmp = tempfile::Builder::new()
        .prefix(".recipients.jsonl.")
        .tempfile_in(&paths.dir)
        .map_err(io(&paths.jsonl))?;
    {
        // One ordered scan of the journal on this thread; the CSV and the JSONL are formatted
        // and written by a thread each, fed batches of rows through bounded channels (memory
        // stays at a few batches whatever the run's size).
        let csv_file = csv_tmp.as_file_mut();
        let jsonl_file = jsonl_tmp.as_file_mut();
        let (csv_path, jsonl_path) = (&paths.csv, &paths.jsonl);
        let p2p = run.action == Action::P2p;
        std::thread::scope(|scope| -> Result<(), ReportError> {
            let (csv_tx, csv_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
            let (json_tx, json_rx) = std::sync::mpsc::sync_channel::<Batch>(4);
            let csv_h = scope.spawn(move || write_csv(csv_file, csv_rx, csv_path));
            let json_h = scope.spawn(move || write_jsonl(jsonl_file, json_rx, jsonl_path));
            let scanned = {
                let send = |b: Vec<ReportRow>| {
                    let b = std::sync::Arc::new(b);
                    csv_tx.send(b.clone()).is_ok() && json_tx.send(b).is_ok()
                };
                let mut batch = Vec::with_capacity(BATCH_ROWS);
                let mut scanned = journal.for_each_recipient::<ReportError>(&run.id, |row| {
                    // P2P: one row per user the provider answered for, right under its conversation.
                    let users = if p2p { p2p_user_rows(&row) } else { Vec::new() };
                    batch.push(row);
                    batch.extend(users);
                    if batch.len() >= BATCH_ROWS
                        && !send(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(BATCH_ROWS),
                        ))
                    {
                        return Err(writer_stopped(csv_path));
                    }
                    Ok(())
                });
                if scanned.is_ok() && !batch.is_empty() && !send(batch) {
                    scanned = Err(writer_stopped(csv_path));
                }
                scanned
            };
            drop((csv_tx, json_tx));
            let joined = |h: std::thread::ScopedJoinHandle<'_, Result<(), ReportError>>,
                          path: &Path| {
                h.join().unwrap_or_else(|_| Err(writer_stopped(path)))
            };
            // A writer's own error explains a stopped scan better than the scan's.
            let (c, j) = (joined(csv_h, csv_path), joined(json_h, jsonl_path));
            c?;
            j?;
            scanned
        })?;
    }
    let summary = summary(journal, &run)?;
    let mut sum_tmp = tempfile::Builder::new()
        .prefix(".summary.json.")
        .tempfile_in(&paths.dir)
        .map_err(io(&paths.summary))?;
    serde_json::to_writer_pretty(sum_tmp.as_file_mut(), &summary).map_err(|e| ReportError::Io {
        path: paths.summary.clone(),
        source: e.into(),
    })?;
    sum_tmp
        .as_file_mut()
        .write_all(b"\n")
        .map_err(io(&paths.summary))?;

    for (tmp, path) in [
        (csv_tmp, &paths.csv),
        (jsonl_tmp, &paths.jsonl),
        (sum_tmp, &paths.summary),
    ] {
        tmp.as_file().sync_all().map_err(io(path))?;
        set_private(tmp.path()).map_err(io(path))?;
        tmp.persist(path).map_err(|e| ReportError::Io {
            path: path.clone(),
            source: e.error,
        })?;
    }
    Ok(paths)
}

/// Rows handed from the journal scan to the two file writers.
type Batch = std::sync::Arc<Vec<ReportRow>>;

/// Rows per batch handed to the writers.
const BATCH_ROWS: usize = 2048;

const CSV_HEADER: [&str; 12] = [
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
];

fn writer_stopped(path: &Path) -> ReportError {
    ReportError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("the report writer stopped"),
    }
}

/// Write `recipients.csv` from the batches in `rx` (numbers formatted without allocating;
/// text cells neutralized with [`safe_cell`]).
fn write_csv(
    file: &mut std::fs::File,
    rx: std::sync::mpsc::Receiver<Batch>,
    path: &Path,
) -> Result<(), ReportError> {
    let err = |source| ReportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut w = csv::Writer::from_writer(BufWriter::with_capacity(1 << 16, file));
    w.write_record(CSV_HEADER).map_err(err)?;
    let mut num = itoa::Buffer::new();
    for batch in rx {
        for row in batch.iter() {
            w.write_field(num.format(row.line)).map_err(err)?;
            match row.id {
                Some(id) => w.write_field(num.format(id)),
                None => w.write_field(""),
            }
            .map_err(err)?;
            w.write_field(safe_cell(&row.raw_id).as_ref())
                .map_err(err)?;
            w.write_field(row.status.as_str()).map_err(err)?;
            match row.message_id {
                Some(m) => w.write_field(num.format(m)),
                None => w.write_field(""),
            }
            .map_err(err)?;
            w.write_field(num.format(row.attempts)).map_err(err)?;
            match row.call {
                Some(c) => w.write_field(num.format(c)),
                None => w.write_field(""),
            }
            .map_err(err)?;
            for cell in [
                &row.variant,
                &row.error_code,
                &row.error_message,
                &row.detail,
                &row.time,
            ] {
                let cell = cell.as_deref().map(safe_cell).unwrap_or_default();
                w.write_field(cell.as_ref()).map_err(err)?;
            }
            w.write_record(None::<&[u8]>).map_err(err)?;
        }
    }
    w.flush().map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `recipients.jsonl` from the batches in `rx`.
fn write_jsonl(
    file: &mut std::fs::File,
    rx: std::sync::mpsc::Receiver<Batch>,
    path: &Path,
) -> Result<(), ReportError> {
    let err = |source: std::io::Error| ReportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = BufWriter::with_capacity(1 << 16, file);
    for batch in rx {
        for row in batch.iter() {
            serde_json::to_writer(&mut w, row).map_err(|e| err(e.into()))?;
            w.write_all(b"\n").map_err(err)?;
        }
    }
    w.flush().map_err(err)
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
/// `<conversation>/<user>`, status `sent` (SUCCESS) or `not_online`. Empty for rows without a
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
            let online = u.code == "SUCCESS";
            ReportRow {
                line: conv.line,
                id: Some(u.user_id),
                raw_id: format!("{conv_id}/{}", u.user_id),
                status: if online {
                    RecipientStatus::Sent
                } else {
                    RecipientStatus::NotOnline
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

    #[test]
    fn dir_names_are_path_safe() {
        assert_eq!(dir_name("spring-sale"), "spring-sale");
        assert_eq!(dir_name("../etc"), "_.._etc");
        assert_eq!(dir_name("a/b"), "a_b");
    }
}
