//! `imcast prune --older-than 90d`: delete old rows from the state database. The scheduler's
//! tables are pruned here; the journal's (runs, calls, recipients) through its hook at merge.

use anyhow::{anyhow, Context};

use crate::cli::{GlobalArgs, PruneArgs};
use crate::clock::{Clock, SystemClock};
use crate::daemon::{default_state_dir, state};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs, a: &PruneArgs) -> CmdResult {
    let age = humantime::parse_duration(a.older_than.trim())
        .map_err(|e| {
            anyhow!(
                "--older-than {:?}: {e}; write e.g. 90d or 12w",
                a.older_than
            )
        })
        .exit(Exit::Invalid)?;
    let state_dir = match &a.state.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir(&std::env::current_dir().exit(Exit::Internal)?),
    };
    let Some(conn) = state::open_existing(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .exit(Exit::Internal)?
    else {
        println!(
            "nothing to prune: no state database in {}",
            state_dir.display()
        );
        return Ok(Exit::Ok);
    };
    let now = SystemClock.now().as_second();
    let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    let (occ, ctl) = state::prune(&conn, cutoff).exit(Exit::Internal)?;
    // TODO(merge): run the journal's prune hook (state::PruneHook) for runs that ended before
    // `cutoff`; reports already written stay on disk.
    println!(
        "pruned {occ} schedule occurrence(s) and {ctl} control request(s) older than {}",
        humantime::format_duration(age)
    );
    Ok(Exit::Ok)
}
