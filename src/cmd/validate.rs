//! `imcast validate`: everything checkable offline, for every file; every problem listed. A file
//! `run` would refuse for its audience (`guard::check`: too many recipients, none, too many
//! invalid rows) is invalid here too, with the same words; a good file lists its first rejected
//! rows and what a run would do differently (a throttle above the account's share, a past `at:`)
//! as warnings.
//!
//! Output: text (one `ok` line per good file on stdout, problems on stderr), or for machines one
//! document on stdout: `json`, GitHub Actions workflow commands (`github`: `::error file=…,line=…,
//! col=…::message`, escaped as the runner requires) or SARIF 2.1.0 (`sarif`). Each problem is a
//! [`Diagnostic`] naming the file it is in (the campaign, its audience CSV, a suppression list or
//! `imcast.toml`) and the line and column where known.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde::Serialize;

use crate::audience::AudienceError;
use crate::cli::{GlobalArgs, ValidateArgs, ValidateOutput};
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::guard::{self, Rejected};
use crate::journal::RunFlags;
use crate::output::count;
use crate::plan::{PlanError, PlanOptions};
use crate::run::Settings;
use crate::spec::{Campaign, LoadOptions, Source};

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub message: String,
}

#[derive(Debug, Serialize)]
struct FileResult {
    file: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<u64>,
    problems: Vec<Diagnostic>,
    /// Invalid audience rows (the first few; `rejected_total` counts them all), located.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<Diagnostic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_total: Option<u64>,
    /// What a run would do differently from what the file says (a throttle above the account's
    /// share, a past `at:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Diagnostic>,
    /// The text mode's message for a bad file (as `validate` always printed it).
    #[serde(skip)]
    human: String,
}

#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    invalid: usize,
    files: Vec<FileResult>,
}

/// `p` relative to the current directory when it is below it (annotations want workspace paths).
fn shown(p: &Path) -> String {
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| std::fs::canonicalize(d).ok());
    let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    match cwd.as_deref().and_then(|d| canon.strip_prefix(d).ok()) {
        Some(rel) if p.is_absolute() => rel.display().to_string(),
        _ => p.display().to_string(),
    }
}

fn at(file: &Path, line: Option<u64>, message: String) -> Diagnostic {
    Diagnostic {
        file: shown(file),
        line: line.filter(|l| *l > 0),
        column: None,
        message,
    }
}

fn audience_path(c: &Campaign) -> Option<PathBuf> {
    match &c.audience.source {
        Source::Csv { path, .. } => Some(path.clone()),
        Source::Ids(_) => None,
    }
}

fn plan_diagnostics(file: &Path, c: &Campaign, e: &PlanError) -> Vec<Diagnostic> {
    match e {
        PlanError::Audience(a) => vec![match a {
            AudienceError::Csv { path, line, .. }
            | AudienceError::BadSuppressionId { path, line, .. } => {
                at(path, Some(*line), a.to_string())
            }
            AudienceError::Open { path, .. } => at(path, None, a.to_string()),
            AudienceError::NoHeader { path }
            | AudienceError::MissingIdColumn { path, .. }
            | AudienceError::MissingRequiredColumn { path, .. } => at(path, Some(1), a.to_string()),
        }],
        PlanError::Render(problems) => problems
            .iter()
            .map(|p| {
                let ex: Vec<String> = p
                    .examples
                    .iter()
                    .map(|(id, line)| format!("{id} (line {line})"))
                    .collect();
                let message = format!(
                    "rendering failed: {} — {} recipient{}, first: {}",
                    p.what,
                    p.count,
                    if p.count == 1 { "" } else { "s" },
                    ex.join(", ")
                );
                match (audience_path(c), p.examples.first()) {
                    (Some(csv), Some((_, line))) => at(&csv, Some(*line), message),
                    _ => at(file, None, message),
                }
            })
            .collect(),
        other => vec![at(file, None, other.to_string())],
    }
}

/// Check one file: its counts, or every problem found.
fn check(file: &Path, opts: &LoadOptions, now: jiff::Timestamp) -> FileResult {
    let mut r = FileResult {
        file: shown(file),
        ok: false,
        rows: None,
        valid: None,
        calls: None,
        problems: Vec::new(),
        rejected: Vec::new(),
        rejected_total: None,
        warnings: Vec::new(),
        human: String::new(),
    };
    let c = match crate::spec::load(file, opts) {
        Ok(c) => c,
        Err(e) => {
            r.human = e.to_string();
            if e.problems.is_empty() {
                r.problems.push(at(file, None, e.to_string()));
            }
            for p in &e.problems {
                r.problems.push(Diagnostic {
                    file: shown(file),
                    line: p.line,
                    column: p.column,
                    message: p.message.clone(),
                });
            }
            return r;
        }
    };
    let account = match RepoPaths::discover(file, None, None, None).account_config() {
        Ok(a) => a,
        Err(e) => {
            let path = match &e {
                crate::config::ConfigError::Read { path, .. }
                | crate::config::ConfigError::Parse { path, .. }
                | crate::config::ConfigError::Invalid { path, .. } => path.clone(),
            };
            r.human = e.to_string();
            r.problems.push(at(&path, None, e.to_string()));
            return r;
        }
    };
    // What a run would use (`run::Settings`): its guard and its pace.
    let settings = Settings::resolve(&c, &account, &RunFlags::default(), None);
    if let Some(w) = settings.throttle_warning() {
        r.warnings.push(at(file, None, w));
    }
    if let Some(w) = c.schedule.as_ref().and_then(|s| s.describe_past(now)) {
        r.warnings.push(at(file, None, w));
    }
    let mut rejected = Rejected::new();
    match crate::plan::build_observed(
        &c,
        &PlanOptions {
            extra_suppress: account.suppress.clone(),
            local_date: None,
        },
        &mut |e| rejected.observe(e),
    ) {
        Ok(p) => {
            let n = p.counts();
            r.rows = Some(n.total);
            r.valid = Some(n.valid);
            r.calls = Some(n.calls);
            let rows_file = audience_path(&c).unwrap_or_else(|| file.to_path_buf());
            r.rejected = rejected
                .first
                .iter()
                .map(|x| {
                    at(
                        &rows_file,
                        Some(x.line),
                        format!("rejected row: {}", x.reason),
                    )
                })
                .collect();
            if n.invalid > 0 {
                r.rejected_total = Some(n.invalid);
            }
            let refused = settings
                .guard
                .as_ref()
                .map(|g| guard::check(g, n))
                .unwrap_or_default();
            r.ok = refused.is_empty();
            if !r.ok {
                let mut human = guard::describe(file, &refused);
                for l in rejected_notes(&r) {
                    human.push_str(&format!("\n  {l}"));
                }
                r.human = human;
                r.problems = refused
                    .iter()
                    .map(|e| at(file, None, e.to_string()))
                    .collect();
            }
        }
        Err(e) => {
            r.human = format!("{}: {e}", file.display());
            r.problems = plan_diagnostics(file, &c, &e);
        }
    }
    r
}

/// Escape the message of a workflow command (`%`, CR, LF).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escape a property value of a workflow command (also `:` and `,`).
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One `::error` workflow command.
pub fn github_annotation(d: &Diagnostic) -> String {
    github_annotation_at("error", d)
}

/// One workflow command of `level` (`error`, `warning`).
fn github_annotation_at(level: &str, d: &Diagnostic) -> String {
    let mut props = vec![format!("file={}", escape_property(&d.file))];
    if let Some(l) = d.line {
        props.push(format!("line={l}"));
    }
    if let Some(c) = d.column {
        props.push(format!("col={c}"));
    }
    props.push(format!("title={}", escape_property("imcast validate")));
    format!("::{level} {}::{}", props.join(","), escape_data(&d.message))
}

fn sarif(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let results: Vec<serde_json::Value> = report
        .files
        .iter()
        .flat_map(|f| {
            f.problems
                .iter()
                .map(|d| ("error", d))
                .chain(f.rejected.iter().chain(&f.warnings).map(|d| ("warning", d)))
        })
        .map(|(level, d)| {
            let mut region = serde_json::Map::new();
            if let Some(l) = d.line {
                region.insert("startLine".into(), json!(l));
            }
            if let Some(c) = d.column {
                region.insert("startColumn".into(), json!(c));
            }
            let mut phys = serde_json::Map::new();
            phys.insert(
                "artifactLocation".into(),
                json!({ "uri": d.file.replace('\\', "/") }),
            );
            if !region.is_empty() {
                phys.insert("region".into(), serde_json::Value::Object(region));
            }
            json!({
                "ruleId": "imcast/invalid-campaign",
                "level": level,
                "message": { "text": d.message },
                "locations": [{ "physicalLocation": phys }],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "imcast",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": [{
                    "id": "imcast/invalid-campaign",
                    "shortDescription": { "text": "The campaign cannot be planned as written" },
                }],
            }},
            "results": results,
        }],
    })
}

/// The lines under a good file's `ok` line: its rejected rows and warnings.
fn notes(f: &FileResult) -> Vec<String> {
    let mut v = rejected_notes(f);
    v.extend(f.warnings.iter().map(|d| format!("warning: {}", d.message)));
    v
}

/// A file's first rejected rows (`audience.csv:7: rejected row: …`) and how many more.
fn rejected_notes(f: &FileResult) -> Vec<String> {
    let mut v: Vec<String> = f
        .rejected
        .iter()
        .map(|d| match d.line {
            Some(l) => format!("{}:{l}: {}", d.file, d.message),
            None => format!("{}: {}", d.file, d.message),
        })
        .collect();
    let more = f
        .rejected_total
        .unwrap_or(0)
        .saturating_sub(f.rejected.len() as u64);
    if more > 0 {
        v.push(format!(
            "… and {more} more rejected rows (imcast plan FILE --output json lists every one)"
        ));
    }
    v
}

/// `2 valid of 2 rows, 1 call` for a file that passed.
fn ok_line(f: &FileResult) -> String {
    let rows = f.rows.unwrap_or(0);
    format!(
        "{} valid of {}, {}",
        f.valid.unwrap_or(0),
        count(rows, "row", "rows"),
        count(f.calls.unwrap_or(0), "call", "calls")
    )
}

pub fn run(_g: &GlobalArgs, a: &ValidateArgs) -> CmdResult {
    // The system clock, read here at the command edge (for a past `at:`).
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let opts = LoadOptions {
        allow_endpoints: a.allow_endpoint.clone(),
    };
    let files: Vec<FileResult> = a.files.iter().map(|f| check(f, &opts, now)).collect();
    let bad = files.iter().filter(|f| !f.ok).count();
    let report = Report {
        ok: bad == 0,
        invalid: bad,
        files,
    };
    match a.output {
        ValidateOutput::Text => {
            for (f, path) in report.files.iter().zip(&a.files) {
                if f.ok {
                    crate::outln!("ok  {}: {}", path.display(), ok_line(f));
                    for l in notes(f) {
                        crate::outln!("  {l}");
                    }
                } else {
                    crate::errln!("{}", f.human);
                }
            }
        }
        ValidateOutput::Json => {
            let j = serde_json::to_string_pretty(&report).exit(Exit::Internal)?;
            crate::outln!("{j}");
        }
        ValidateOutput::Sarif => {
            let j = serde_json::to_string_pretty(&sarif(&report)).exit(Exit::Internal)?;
            crate::outln!("{j}");
        }
        ValidateOutput::Github => {
            for f in &report.files {
                if f.ok {
                    crate::outln!("ok  {}: {}", f.file, ok_line(f));
                }
                for d in &f.problems {
                    crate::outln!("{}", github_annotation(d));
                }
                for d in f.rejected.iter().chain(&f.warnings) {
                    crate::outln!("{}", github_annotation_at("warning", d));
                }
            }
        }
    }
    if bad > 0 {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "{bad} of {} invalid",
                count(a.files.len() as u64, "campaign file", "campaign files")
            ),
        ));
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_commands_are_escaped() {
        let d = Diagnostic {
            file: "campaigns/a,b:c%.yaml".into(),
            line: Some(3),
            column: Some(7),
            message: "100% wrong\r\nsecond: line, too".into(),
        };
        assert_eq!(
            github_annotation(&d),
            "::error file=campaigns/a%2Cb%3Ac%25.yaml,line=3,col=7,title=imcast validate::100%25 wrong%0D%0Asecond: line, too"
        );
    }
}
