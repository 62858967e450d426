//! `imcast pause|resume|cancel NAME`: record a request in the journal ([`Journal::request_control`])
//! — the one channel both a running `imcast run` (its engine polls it every second) and the daemon
//! (every tick) act on. Waits (up to a few seconds) until someone took the request and prints what
//! was done (the daemon's answer from its `sched_control` log).

use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::cli::{ControlArgs, GlobalArgs};
use crate::clock::{Clock, SystemClock};
use crate::daemon::default_state_dir;
use crate::daemon::state;
use crate::exit::{CmdResult, Exit, ExitContext};
use crate::journal::{ControlRequest, Journal};

pub fn pause(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlRequest::Pause)
}

pub fn resume(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlRequest::Resume)
}

pub fn cancel(_g: &GlobalArgs, a: &ControlArgs) -> CmdResult {
    control(a, ControlRequest::Cancel)
}

/// Campaigns the state directory knows: scheduled by a daemon or sent by `imcast run`.
fn known_names(conn: &rusqlite::Connection, journal: &Journal) -> anyhow::Result<Vec<String>> {
    let mut names = state::campaign_names(conn)?;
    names.extend(journal.campaigns()?);
    names.sort();
    names.dedup();
    Ok(names)
}

fn control(a: &ControlArgs, action: ControlRequest) -> CmdResult {
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
    let journal = Journal::open(&state_dir).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    let names = known_names(&conn, &journal).exit(Exit::Internal)?;
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
    // Whole seconds: the daemon's log of what it did keeps the request's time in seconds.
    let since = clock.now().as_second();
    let at = jiff::Timestamp::from_second(since).exit(Exit::Internal)?;
    journal
        .request_control(&a.name, action, Some(&format!("imcast {action}")), at)
        .exit(Exit::Internal)?;
    if a.no_wait {
        crate::outln!("{} requested for {}", action.as_str(), a.name);
        return Ok(Exit::Ok);
    }
    for _ in 0..30 {
        if !journal.control_pending(&a.name).exit(Exit::Internal)? {
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
