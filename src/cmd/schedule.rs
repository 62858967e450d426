//! `imcast schedule DIR`: each campaign's next occurrences (its zone and UTC) and past ones with
//! their outcome. Reads the state database if it exists; never creates or writes it.

use anyhow::{anyhow, Context};
use jiff::Timestamp;

use crate::cli::{GlobalArgs, OutputFormat, ScheduleArgs};
use crate::clock::{Clock, SystemClock};
use crate::daemon::source::SpecSource;
use crate::daemon::{default_state_dir, state, view};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs, a: &ScheduleArgs) -> CmdResult {
    let now: Timestamp = match &a.now {
        Some(s) => s
            .parse()
            .map_err(|_| {
                anyhow!(
                    "--now {s:?}: write an RFC 3339 time with offset, e.g. 2026-03-01T00:00:00Z"
                )
            })
            .exit(Exit::Invalid)?,
        None => SystemClock.now(),
    };
    if !a.dir.is_dir() {
        return Err(anyhow!(
            "{}: not a folder of campaign files",
            a.dir.display()
        ))
        .exit(Exit::Invalid);
    }
    let state_dir = a
        .state
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(&a.dir));
    let conn = match crate::cmd::daemon::state_url(&a.dir, a.state.config.as_deref())
        .exit(Exit::Invalid)?
    {
        // With `[state] url` the occurrence record is the store's, shared by every daemon on it.
        Some(url) => {
            let store = crate::config::StateStore::Postgres(url);
            // The blocking client on a plain thread (no runtime here, but keep the rule simple).
            let c = std::thread::scope(|s| {
                s.spawn(|| state::open_store(&store))
                    .join()
                    .map_err(|_| anyhow!("connecting to the state store panicked"))
            })
            .exit(Exit::Internal)?
            .context("reading the occurrence record in the state store")
            .exit(Exit::Internal)?;
            Some(c)
        }
        None => state::open_existing(&state_dir)
            .with_context(|| format!("reading the state directory {}", state_dir.display()))
            .exit(Exit::Internal)?,
    };
    let source = SpecSource::new(crate::spec::LoadOptions {
        allow_endpoints: a.allow_endpoint.clone(),
    });
    let v = view::schedule_view(&a.dir, &source, conn.as_ref(), now, a.next, a.past)
        .exit(Exit::Invalid)?;
    match a.output {
        OutputFormat::Human => crate::out!("{}", view::render_human(&v)),
        OutputFormat::Json => {
            let s = serde_json::to_string_pretty(&v).exit(Exit::Internal)?;
            crate::outln!("{s}");
        }
    }
    Ok(if v.invalid.is_empty() {
        Exit::Ok
    } else {
        Exit::Invalid
    })
}
