//! `imcast status FILE`: the latest run of a campaign, from the journal, and where its report
//! page is (`report.html`, or how to write it when it is not there).
//!
//! The campaign's name comes from `crate::spec::load`; a file that no longer validates (e.g. an
//! audience file was moved since the run) still shows its runs through a minimal read of the
//! top-level `name:` key, so status and report keep working on a broken campaign.

use std::path::Path;

use anyhow::{anyhow, Context};
use serde::Deserialize;

use crate::cli::{GlobalArgs, OutputFormat, StatusArgs};
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::journal::{Journal, RecipientStatus, DB_FILE};
use crate::report::{report_dir, summary, HTML_FILE};
use crate::send::describe_counts;

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

/// The campaign's name: from the validated campaign, else a minimal read of `name:`.
pub(crate) fn campaign_name(file: &Path) -> Result<String, Failure> {
    match crate::spec::load(file, &crate::spec::LoadOptions::default()) {
        Ok(c) => return Ok(c.name),
        Err(e) => tracing::debug!("{e}; reading only its name"),
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read campaign file {}", file.display()))
        .exit(Exit::Invalid)?;
    let n: NameOnly = serde_saphyr::from_str(&text)
        .map_err(|e| {
            anyhow!(
                "{}: cannot read the campaign's `name:`: {e}",
                file.display()
            )
        })
        .exit(Exit::Invalid)?;
    Ok(n.name)
}

/// The journal for a campaign file, if its state database exists (never creates one).
pub(crate) fn open_existing(paths: &RepoPaths) -> Result<Option<Journal>, Failure> {
    if !paths.state_dir.join(DB_FILE).is_file() {
        return Ok(None);
    }
    Journal::open(&paths.state_dir).map(Some).map_err(|e| {
        let exit = e.exit();
        Failure::new(exit, e)
    })
}

pub fn run(_g: &GlobalArgs, args: &StatusArgs) -> CmdResult {
    let name = campaign_name(&args.file)?;
    let paths = RepoPaths::discover(
        &args.file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let journal = open_existing(&paths)?;
    let run = match &journal {
        Some(j) => j.latest_run(&name, true).exit(Exit::Internal)?,
        None => None,
    };
    let (Some(j), Some(run)) = (journal, run) else {
        match args.output {
            OutputFormat::Json => {
                crate::outln!("{}", serde_json::json!({ "campaign": name, "run": null }))
            }
            OutputFormat::Human => crate::outln!(
                "Campaign {name:?} has no runs yet (state: {}).",
                paths.state_dir.display()
            ),
        }
        return Ok(Exit::Ok);
    };
    let s = summary(&j, &run).exit(Exit::Internal)?;
    let html = report_dir(&paths.reports_dir, &run.campaign, &run.id).join(HTML_FILE);
    let html = html.is_file().then_some(html);
    match args.output {
        OutputFormat::Json => {
            let mut v = serde_json::to_value(&s).exit(Exit::Internal)?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "report_html".into(),
                    html.as_ref().map(|p| p.display().to_string()).into(),
                );
            }
            let v = serde_json::to_string_pretty(&v).exit(Exit::Internal)?;
            crate::outln!("{v}");
        }
        OutputFormat::Human => {
            crate::outln!(
                "Campaign {name:?}: run {} is {}{} ({}, {}).",
                run.id,
                run.status,
                if run.is_test { " (test)" } else { "" },
                run.action,
                run.action.api_name()
            );
            crate::outln!("  started   {}", run.created_at);
            if let Some(f) = run.finished_at {
                crate::outln!("  finished  {f}");
            }
            if let Some(r) = &run.stop_reason {
                crate::outln!("  reason    {r}");
            }
            crate::outln!("  recipients {}", describe_counts(&s.counts));
            crate::outln!(
                "  calls     {} done, {} unknown, {} planned, {} attempts",
                s.calls.done,
                s.calls.unknown,
                s.calls.planned,
                s.calls.attempts
            );
            crate::outln!("  plan hash {}", run.plan_hash);
            match &html {
                Some(p) => crate::outln!("  report    {}", p.display()),
                None => crate::outln!(
                    "  report    not written yet; `imcast report {}` writes it",
                    args.file.display()
                ),
            }
            if run.status.is_unfinished() {
                crate::outln!("Resume with: imcast run {}", args.file.display());
            } else if s
                .counts
                .get(&RecipientStatus::Unknown)
                .copied()
                .unwrap_or(0)
                > 0
            {
                crate::outln!(
                    "Recipients with an unknown outcome are not resent; `imcast run {} --resend-unknown` resends them (may duplicate).",
                    args.file.display()
                );
            }
        }
    }
    Ok(Exit::Ok)
}
