//! `imcast plan FILE --diff REV`: plan the campaign as it is in the work tree and as it was at a git
//! revision, compare the two plans (`crate::diff`) and print the result as text, JSON or Markdown.
//! The system clock is read here (or `--now`), nowhere below.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use jiff::Timestamp;

use crate::cli::{GlobalArgs, PlanArgs, PlanOutput};
use crate::clock::{Clock, SystemClock};
use crate::config::{AccountConfig, RepoPaths};
use crate::diff::{Collector, Rows};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::files::Files;
use crate::git::{logical_path, GitRev};
use crate::journal::RunFlags;
use crate::plan::{Plan, PlanOptions};
use crate::run::Settings;
use crate::spec::LoadOptions;

/// `--now TIME`, else the system clock.
pub fn now_arg(s: Option<&str>) -> Result<Timestamp, Failure> {
    match s {
        Some(s) => s
            .parse()
            .map_err(|_| {
                anyhow!(
                    "--now {s:?}: write an RFC 3339 time with offset, e.g. 2026-03-01T00:00:00Z"
                )
            })
            .exit(Exit::Invalid),
        None => Ok(SystemClock.now()),
    }
}

/// The account settings as `files` has them: `--config`, else `imcast.toml` at the repository
/// root the work tree would use, read from `files` (absent there: the defaults).
fn account_config(
    files: &Files,
    file: &Path,
    config: Option<&Path>,
) -> anyhow::Result<AccountConfig> {
    if let Files::WorkTree = files {
        return Ok(RepoPaths::discover(file, config, None, None).account_config()?);
    }
    let candidate = match config {
        Some(c) => c.to_path_buf(),
        None => crate::config::discover_root(file).join(crate::config::FILE_NAME),
    };
    let candidate = logical_path(&candidate);
    if !files.is_file(&candidate) {
        return Ok(AccountConfig::default());
    }
    let text = files
        .read_to_string(&candidate)
        .with_context(|| format!("cannot read {}", candidate.display()))?;
    Ok(AccountConfig::parse(&text, &candidate)?)
}

/// One side's plan and the settings a run of it would use.
fn plan_side(
    files: &Files,
    file: &Path,
    a: &PlanArgs,
    side: &str,
    rows: &mut crate::diff::Collector<'_>,
) -> Result<(Plan, Settings), Failure> {
    let opts = LoadOptions {
        allow_endpoints: a.allow_endpoint.clone(),
    };
    let c = crate::spec::load_from(files, file, &opts)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("the campaign {side}"))
        .exit(Exit::Invalid)?;
    let account = account_config(files, file, a.state.config.as_deref())
        .with_context(|| format!("the account settings {side}"))
        .exit(Exit::Invalid)?;
    let settings = Settings::resolve(&c, &account, &RunFlags::default(), None);
    let plan = crate::plan::build_observed(
        &c,
        &PlanOptions {
            extra_suppress: account.suppress,
            local_date: None,
        },
        &mut |ev| rows.observe(ev),
    )
    .map_err(anyhow::Error::new)
    .with_context(|| format!("{}: the plan {side}", file.display()))
    .exit(Exit::Invalid)?;
    Ok((plan, settings))
}

/// One side for the comparison: its plan and settings by reference, its rows handed over.
fn with_rows(
    side: &Option<(Plan, Settings)>,
    rows: Option<Rows>,
) -> Option<(&Plan, &Settings, Rows)> {
    side.as_ref().zip(rows).map(|((p, s), r)| (p, s, r))
}

/// Colour by the one rule (`--color`, `NO_COLOR`, a terminal): see `crate::logging`.
fn use_color() -> bool {
    crate::logging::color_stdout()
}

pub fn run(_g: &GlobalArgs, a: &PlanArgs, rev: &str) -> CmdResult {
    let now = now_arg(a.now.as_deref())?;
    let git = GitRev::open(&a.file, rev).exit(Exit::Invalid)?;
    let path = logical_path(&a.file);
    let rel = git.relative(&path).exit(Exit::Invalid)?;
    let in_tree = a.file.is_file();
    let at_rev = git.is_file(&path);
    if !in_tree && !at_rev {
        return Err(anyhow!(
            "{}: no such campaign file in the work tree, nor at {} — check the path",
            a.file.display(),
            rev
        ))
        .exit(Exit::Invalid);
    }
    let meta = crate::diff::Meta {
        file: rel,
        rev: git.rev().to_string(),
        commit: git.commit().to_string(),
    };
    let at = Files::Git(Arc::new(git));
    // The revision first: the work tree's rows are compared with its rows as they stream by.
    let before = if at_rev {
        let mut rows = Collector::before();
        let (p, s) = plan_side(&at, &path, a, &format!("at {rev}"), &mut rows)?;
        Some((p, s, rows.finish()))
    } else {
        None
    };
    let after = if in_tree {
        let mut rows = Collector::after(before.as_ref().map(|(_, _, r)| r));
        let (p, s) = plan_side(&Files::WorkTree, &a.file, a, "in the work tree", &mut rows)?;
        Some((p, s, rows.finish()))
    } else {
        None
    };
    // The plans and settings stay here; their rows go to the comparison.
    let split = |x: Option<(Plan, Settings, Rows)>| match x {
        Some((p, s, r)) => (Some((p, s)), Some(r)),
        None => (None, None),
    };
    let ((bp, br), (ap, ar)) = (split(before), split(after));
    let d = crate::diff::compare(with_rows(&bp, br), with_rows(&ap, ar), now, meta)
        .map_err(anyhow::Error::new)
        .context("compare the plans")
        .exit(Exit::Invalid)?;
    match a.output {
        PlanOutput::Text => crate::out!("{}", crate::diff::format::text(&d, use_color())),
        PlanOutput::Markdown => crate::out!("{}", crate::diff::format::markdown(&d)),
        PlanOutput::Json => {
            let j = serde_json::to_string_pretty(&d)
                .context("serialize the plan diff")
                .exit(Exit::Internal)?;
            crate::outln!("{j}");
        }
    }
    Ok(Exit::Ok)
}
