//! `imcast pause|resume|cancel NAME`: record a request in the journal ([`Journal::request_control`])
//! — the one channel both a running `imcast run` (its engine polls it every second) and the daemon
//! (every tick) act on. Waits (up to a few seconds) until someone took the request and prints what
//! was done (the daemon's answer from its `sched_control` log). The state directory is found by the
//! one rule (`config::ROOT_RULE`) from the current directory; `--mock` acts on a running
//! `imcast run --mock` (`<state>/mock/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::cli::{ControlArgs, GlobalArgs};
use crate::clock::{Clock, SystemClock};
use crate::config::{MOCK_DIR, STATE_DIR_NAME};
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
fn known_names(conn: Option<&state::Conn>, journal: &Journal) -> anyhow::Result<Vec<String>> {
    let mut names = match conn {
        Some(c) => state::campaign_names(c)?,
        None => Vec::new(),
    };
    names.extend(journal.campaigns()?);
    names.sort();
    names.dedup();
    Ok(names)
}

/// The campaigns of the PostgreSQL store's occurrence record when `imcast.toml` (or `--config`)
/// names one; empty otherwise. Best effort: a store that cannot be read is said on stderr and the
/// state directory's own names still apply.
fn store_campaigns(cwd: &Path, config: Option<&Path>) -> Vec<String> {
    let url = match crate::cmd::daemon::state_url(cwd, config) {
        Ok(Some(u)) => u,
        Ok(None) | Err(_) => return Vec::new(),
    };
    let store = crate::config::StateStore::Postgres(url);
    // The blocking client on a thread of its own.
    let got = std::thread::scope(|s| {
        s.spawn(|| state::open_store(&store).and_then(|c| state::campaign_names(&c)))
            .join()
    });
    match got {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the campaigns of the state store");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// State databases one folder below `cwd` (`*/.imcast/imcast.db`), for the hint when there is
/// none where the rule points: e.g. one a daemon of an older imcast left in `campaigns/.imcast`.
fn state_dirs_below(cwd: &Path, mock: bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(cwd) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join(STATE_DIR_NAME))
        .map(|d| if mock { d.join(MOCK_DIR) } else { d })
        .filter(|d| d.join(crate::journal::DB_FILE).is_file())
        .collect();
    found.sort();
    found.truncate(3);
    found
}

fn control(a: &ControlArgs, action: ControlRequest) -> CmdResult {
    // The one rule (`config::ROOT_RULE`), started from the current directory.
    let cwd = std::env::current_dir().exit(Exit::Internal)?;
    let state_dir = match &a.state.state_dir {
        Some(d) => d.clone(),
        None if a.mock => default_state_dir(&cwd).join(MOCK_DIR),
        None => default_state_dir(&cwd),
    };
    // `[state] url`: the journal (where requests go and the daemons log what they did) is the
    // store's, shared by every host; mock runs keep theirs in the state directory.
    let url = if a.mock {
        None
    } else {
        crate::cmd::daemon::state_url(&cwd, a.state.config.as_deref()).exit(Exit::Invalid)?
    };
    let conn = state::open_existing(&state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))
        .exit(Exit::Internal)?;
    let store = crate::journal::journal_store(url.as_ref(), &state_dir, a.mock);
    if conn.is_none() && !crate::journal::journal_exists(&store) {
        let below = state_dirs_below(&cwd, a.mock && a.state.state_dir.is_none());
        let mock_dir = state_dir.join(MOCK_DIR);
        let hint = if !a.mock && mock_dir.join(crate::journal::DB_FILE).is_file() {
            format!(
                "; mock runs keep theirs in {}: add --mock to act on a running `imcast run --mock`",
                mock_dir.display()
            )
        } else {
            match below.first() {
                Some(d) => format!(
                    "; there is one in {}: pass --state-dir {}",
                    d.display(),
                    d.display()
                ),
                None => " (pass --state-dir)".to_string(),
            }
        };
        return Err(anyhow!(
            "no state database in {}: nothing has run with this state directory{hint}",
            state_dir.display()
        ))
        .exit(Exit::Invalid);
    }
    let journal = Journal::open_state(&store).map_err(|e| {
        let exit = e.exit();
        crate::exit::Failure::new(exit, e)
    })?;
    let mut names = known_names(conn.as_ref(), &journal).exit(Exit::Internal)?;
    // With `[state] url` the daemons' campaigns are the store's: one this state directory's daemon
    // has not fired yet (another daemon on the store did) is known too.
    names.extend(store_campaigns(&cwd, a.state.config.as_deref()));
    names.sort();
    names.dedup();
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
        // A campaign only run with `--mock` is known to the mock state directory.
        let mock_dir = state_dir.join(MOCK_DIR);
        let mock_hint = if !a.mock
            && state::open_existing(&mock_dir)
                .ok()
                .flatten()
                .and_then(|c| {
                    let j = Journal::open(&mock_dir).ok()?;
                    known_names(Some(&c), &j).ok()
                })
                .is_some_and(|n| n.contains(&a.name))
        {
            format!(
                "; it has mock runs ({}): add --mock to act on a running `imcast run --mock`",
                mock_dir.display()
            )
        } else {
            String::new()
        };
        return Err(anyhow!(
            "unknown campaign {:?} in {} (known: {known}){hint}{mock_hint}",
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
            // Logged beside the journal, in the request's transaction (`state::log_control`).
            match state::control_result(journal.connection(), &a.name, since)
                .exit(Exit::Internal)?
            {
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
