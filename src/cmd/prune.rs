//! `imcast prune --older-than 90d`: delete old rows from the state database — the journal's
//! runs that ended before the cutoff (with their calls and recipients) and the scheduler's
//! finished occurrences and handled control requests. Reports already written stay on disk;
//! unfinished runs and pending occurrences are never pruned.

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
        crate::outln!(
            "nothing to prune: no state database in {}",
            state_dir.display()
        );
        return Ok(Exit::Ok);
    };
    let now = SystemClock.now().as_second();
    let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    drop(conn);
    let mut journal = crate::journal::Journal::open(&state_dir).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    let (runs, calls, recipients) = journal
        .prune_runs(jiff::Timestamp::from_second(cutoff).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
        .map_err(|e| {
            let exit = e.exit();
            crate::exit::Failure::new(exit, e)
        })?;
    let (occ, ctl) = state::prune(journal.connection(), cutoff).exit(Exit::Internal)?;
    crate::outln!(
        "pruned {runs} run(s) ({calls} call(s), {recipients} recipient row(s)), {occ} schedule occurrence(s) and {ctl} control request(s) older than {}; reports stay",
        humantime::format_duration(age)
    );
    Ok(Exit::Ok)
}
