//! `imcast prune --older-than 90d [--reports]`: delete old rows from the state database — the
//! journal's runs that ended before the cutoff (with their calls, recipients and what their
//! reports recorded) and the scheduler's finished occurrences and handled control requests, and
//! daemon roster rows last seen before the cutoff (unless their daemon holds an active occurrence).
//! With `[state] url` (the PostgreSQL store) the store's finished occurrences and roster rows go by
//! the same rule, besides the state directory's, and the journal pruned is the store's (its runs
//! and the daemons' control log). With
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
    // `[state] url`: the occurrence record and the roster shared by every daemon on the store,
    // and the journal (its runs, and the daemons' control log beside it).
    let url = crate::cmd::daemon::state_url(&cwd, a.state.config.as_deref()).exit(Exit::Invalid)?;
    let store = match &url {
        Some(url) => {
            let store = crate::config::StateStore::Postgres(url.clone());
            // The blocking client on a plain thread (no runtime here, but keep the rule simple).
            let pruned = std::thread::scope(|s| {
                s.spawn(|| state::open_store(&store).and_then(|c| state::prune_store(&c, cutoff)))
                    .join()
                    .map_err(|_| anyhow!("pruning the state store panicked"))
            })
            .exit(Exit::Internal)?
            .context("pruning the occurrence record in the state store")
            .exit(Exit::Internal)?;
            Some(pruned)
        }
        None => None,
    };
    let store_note = match store {
        Some((occ, roster)) => format!(
            "; in the state store: {} and {}",
            count(occ as u64, "schedule occurrence", "schedule occurrences"),
            count(roster as u64, "daemon roster row", "daemon roster rows")
        ),
        None => String::new(),
    };
    let local = state::open_existing(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .exit(Exit::Internal)?;
    let journal_store = crate::journal::journal_store(url.as_ref(), &state_dir, false);
    let in_store = matches!(journal_store, crate::config::StateStore::Postgres(_));
    if local.is_none() && !in_store {
        crate::outln!(
            "nothing to prune in the journal: no state database in {}{store_note}{reports_note}",
            state_dir.display()
        );
        return Ok(Exit::Ok);
    }
    let mut journal = crate::journal::Journal::open_state(&journal_store).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    let (runs, calls, recipients) = journal.prune_runs(cutoff_ts).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    crate::report::facts::forget_pruned(&journal).exit(Exit::Internal)?;
    let (mut occ, mut ctl, mut roster) = (0, 0, 0);
    if let Some(conn) = &local {
        (occ, ctl) = state::prune(conn, cutoff).exit(Exit::Internal)?;
        roster = state::prune_roster(conn, cutoff).exit(Exit::Internal)?;
    }
    if in_store {
        // The daemons' control log is written beside the journal (`state::log_control`).
        ctl += state::prune_control_log(journal.connection(), cutoff).exit(Exit::Internal)?;
    }
    crate::outln!(
        "pruned {} ({}, {}), {}, {} and {} older than {}{store_note}{reports_note}",
        count(runs, "run", "runs"),
        count(calls, "call", "calls"),
        count(recipients, "recipient row", "recipient rows"),
        count(occ as u64, "schedule occurrence", "schedule occurrences"),
        count(ctl as u64, "control request", "control requests"),
        count(roster as u64, "daemon roster row", "daemon roster rows"),
        humantime::format_duration(age)
    );
    Ok(Exit::Ok)
}
