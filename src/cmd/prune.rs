//! `imcast prune --older-than 90d [--reports]`: delete old rows from the state database — the
//! journal's runs that ended before the cutoff (with their calls, recipients and what their
//! reports recorded) and the scheduler's finished occurrences and handled control requests. With
//! `--reports` (never by default) also the report folders of runs that ended before the cutoff
//! (`report::prune_reports`: only files imcast wrote). Unfinished runs and pending occurrences
//! are never pruned.

use anyhow::{anyhow, Context};

use crate::cli::{GlobalArgs, PruneArgs};
use crate::clock::{Clock, SystemClock};
use crate::config::discover_root_from_dir;
use crate::daemon::{default_state_dir, state};
use crate::exit::{CmdResult, Exit, ExitContext};
use crate::output::count;

pub fn run(_g: &GlobalArgs, a: &PruneArgs) -> CmdResult {
    let age = humantime::parse_duration(a.older_than.trim())
        .map_err(|e| {
            anyhow!(
                "--older-than {:?}: {e}; write e.g. 90d or 12w",
                a.older_than
            )
        })
        .exit(Exit::Invalid)?;
    let cwd = std::env::current_dir().exit(Exit::Internal)?;
    let state_dir = match &a.state.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir(&cwd),
    };
    let now = SystemClock.now().as_second();
    let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    let cutoff_ts = jiff::Timestamp::from_second(cutoff).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let reports = if a.reports {
        let dir = a
            .report_dir
            .clone()
            .unwrap_or_else(|| discover_root_from_dir(&cwd).join("reports"));
        let r = crate::report::prune_reports(&dir, cutoff_ts).exit(Exit::Internal)?;
        Some((dir, r))
    } else {
        None
    };
    let reports_note = match &reports {
        Some((dir, r)) => format!(
            "; {} ({:.1} MB) in {}",
            count(r.folders, "report folder", "report folders"),
            r.bytes as f64 / 1e6,
            dir.display()
        ),
        None => "; reports stay (--reports removes them too)".into(),
    };
    let Some(conn) = state::open_existing(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .exit(Exit::Internal)?
    else {
        crate::outln!(
            "nothing to prune in the journal: no state database in {}{reports_note}",
            state_dir.display()
        );
        return Ok(Exit::Ok);
    };
    let mut journal = crate::journal::Journal::open(&state_dir).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    let (runs, calls, recipients) = journal.prune_runs(cutoff_ts).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    crate::report::facts::forget_pruned(&journal).exit(Exit::Internal)?;
    let (occ, ctl) = state::prune(&conn, cutoff).exit(Exit::Internal)?;
    crate::outln!(
        "pruned {} ({}, {}), {} and {} older than {}{reports_note}",
        count(runs, "run", "runs"),
        count(calls, "call", "calls"),
        count(recipients, "recipient row", "recipient rows"),
        count(occ as u64, "schedule occurrence", "schedule occurrences"),
        count(ctl as u64, "control request", "control requests"),
        humantime::format_duration(age)
    );
    Ok(Exit::Ok)
}
