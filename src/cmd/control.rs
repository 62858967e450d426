//! `imcast pause|resume|cancel NAME`: write a request to the `sched_control` table of the state
//! database; the daemon acts on it within a second and writes back what it did, which this
//! command waits for (up to a few seconds) and prints.

use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::cli::{ControlArgs, GlobalArgs};
use crate::clock::{Clock, SystemClock};
use crate::daemon::default_state_dir;
use crate::daemon::state::{self, ControlAction};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn pause(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlAction::Pause)
}

pub fn resume(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlAction::Resume)
}

pub fn cancel(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlAction::Cancel)
}

fn control(a: &ControlArgs, action: ControlAction) -> CmdResult {
    let state_dir = match &a.state.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir(&std::env::current_dir().exit(Exit::Internal)?),
    };
    let Some(conn) = state::open_existing(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .exit(Exit::Internal)?
    else {
        return Err(anyhow!(
            "no state database in {}: no daemon has run with this state directory (pass --state-dir)",
            state_dir.display()
        ))
        .exit(Exit::Invalid);
    };
    let names = state::campaign_names(&conn).exit(Exit::Internal)?;
    if !names.iter().any(|n| n == &a.name) {
        let hint = names
            .iter()
            .map(|n| (strsim::jaro_winkler(n, &a.name), n))
            .filter(|(s, _)| *s > 0.8)
            .max_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, n)| format!("; did you mean {n:?}?"))
            .unwrap_or_default();
        let known = if names.is_empty() {
            "none yet".to_string()
        } else {
            names.join(", ")
        };
        return Err(anyhow!(
            "unknown campaign {:?} in {} (known: {known}){hint}",
            a.name,
            state_dir.display()
        ))
        .exit(Exit::Invalid);
    }
    let clock = SystemClock;
    let id = state::request_control(&conn, &a.name, action, clock.now().as_second())
        .exit(Exit::Internal)?;
    if a.no_wait {
        println!(
            "{} requested for {} (request {id})",
            action.as_str(),
            a.name
        );
        return Ok(Exit::Ok);
    }
    for _ in 0..30 {
        if let Some(result) = state::control_result(&conn, id).exit(Exit::Internal)? {
            println!("{}: {result}", a.name);
            return Ok(Exit::Ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} requested for {} (request {id}); no daemon answered within 3s — it applies when the daemon runs",
        action.as_str(),
        a.name
    );
    Ok(Exit::Ok)
}
