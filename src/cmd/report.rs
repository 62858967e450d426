//! `imcast report FILE [--run ID]`: rewrite a run's report from the journal.

use anyhow::anyhow;

use crate::cli::{GlobalArgs, ReportArgs};
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::report::write_report;

pub fn run(_g: &GlobalArgs, args: &ReportArgs) -> CmdResult {
    let name = super::status::campaign_name(&args.file)?;
    let paths = RepoPaths::discover(
        &args.file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let Some(j) = super::status::open_existing(&paths)? else {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "campaign {name:?} has no runs (no journal at {}); pass --state-dir if it lives elsewhere",
                paths.state_dir.display()
            ),
        ));
    };
    let run = match &args.run {
        Some(id) => j
            .run(id)
            .exit(Exit::Internal)?
            .filter(|r| r.campaign == name),
        None => j.latest_run(&name, true).exit(Exit::Internal)?,
    };
    let Some(run) = run else {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!(
                "campaign {name:?} has no run {}; `imcast status {}` shows the latest",
                args.run.as_deref().unwrap_or("yet"),
                args.file.display()
            ),
        ));
    };
    let p = write_report(&j, &run.id, &paths.reports_dir).exit(Exit::Internal)?;
    eprintln!("Report of run {} written.", run.id);
    crate::outln!("{}", p.dir.display());
    Ok(Exit::Ok)
}
