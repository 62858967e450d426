//! `imcast pause|resume|cancel NAME`: write a request to the journal's `control` table in the
//! state database — the one channel both a running `imcast run` (its engine polls it every
//! second) and the daemon (every tick) act on. Waits (up to a few seconds) until someone took
//! the request and prints what was done.

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

/// Campaigns the state directory knows: scheduled by a daemon or sent by `imcast run`.
fn known_names(conn: &rusqlite::Connection) -> anyhow::Result<Vec<String>> {
    let mut names = state::campaign_names(conn)?;
    let mut st = conn.prepare("SELECT DISTINCT campaign FROM runs")?;
    let runs = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    names.extend(runs);
    names.sort();
    names.dedup();
    Ok(names)
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
            "no state database in {}: nothing has run with this state directory (pass --state-dir)",
            state_dir.display()
        ))
        .exit(Exit::Invalid);
    };
    let names = known_names(&conn).exit(Exit::Internal)?;
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
    let since = state::request_control(&conn, &a.name, action, clock.now().as_second())
        .exit(Exit::Internal)?;
    if a.no_wait {
        crate::outln!("{} requested for {}", action.as_str(), a.name);
        return Ok(Exit::Ok);
    }
    for _ in 0..30 {
        if !state::control_pending(&conn, &a.name).exit(Exit::Internal)? {
            match state::control_result(&conn, &a.name, since).exit(Exit::Internal)? {
                Some(result) => crate::outln!("{}: {result}", a.name),
                None => crate::outln!(
                    "{}: {} taken by its running `imcast run`",
                    a.name,
                    action.as_str()
                ),
            }
            return Ok(Exit::Ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::outln!(
        "{} requested for {}; nothing running took it within 3s — it applies when a daemon or `imcast run` of it runs",
        action.as_str(),
        a.name
    );
    Ok(Exit::Ok)
}
