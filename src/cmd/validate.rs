//! `imcast validate`: everything checkable offline, for every file; every problem listed.
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
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::output::count;
use crate::plan::{PlanError, PlanOptions};
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
fn check(file: &Path, opts: &LoadOptions) -> FileResult {
    let mut r = FileResult {
        file: shown(file),
        ok: false,
        rows: None,
        valid: None,
        calls: None,
        problems: Vec::new(),
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
    let extra = match crate::config::account_suppress(file, None) {
        Ok(e) => e,
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
    match crate::plan::build(
        &c,
        &PlanOptions {
            extra_suppress: extra,
            local_date: None,
        },
    ) {
        Ok(p) => {
            let n = p.counts();
            r.ok = true;
            r.rows = Some(n.total);
            r.valid = Some(n.valid);
            r.calls = Some(n.calls);
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
    let mut props = vec![format!("file={}", escape_property(&d.file))];
    if let Some(l) = d.line {
        props.push(format!("line={l}"));
    }
    if let Some(c) = d.column {
        props.push(format!("col={c}"));
    }
    props.push(format!("title={}", escape_property("imcast validate")));
    format!("::error {}::{}", props.join(","), escape_data(&d.message))
}

fn sarif(report: &Report) -> serde_json::Value {
    use serde_json::json;
    let results: Vec<serde_json::Value> = report
        .files
        .iter()
        .flat_map(|f| f.problems.iter())
        .map(|d| {
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
                "level": "error",
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
    let opts = LoadOptions {
        allow_endpoints: a.allow_endpoint.clone(),
    };
    let files: Vec<FileResult> = a.files.iter().map(|f| check(f, &opts)).collect();
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
                } else {
                    eprintln!("{}", f.human);
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
