//! `imcast state migrate`: bring the configured state store's schema up to this build's version
//! and say what was done. With `[state] url` that is the PostgreSQL store's versioned migrations
//! (`pg::schema`; a schema newer than this build knows is refused, untouched); without it the
//! state is SQLite files in the state directory, which each command brings up to date when it
//! opens them, so there is nothing to do and the command says so.

use anyhow::Context;

use crate::cli::{GlobalArgs, StateMigrateArgs};
use crate::config::{discover_root_from_dir, AccountConfig, FILE_NAME};
use crate::daemon::default_state_dir;
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn migrate(_g: &GlobalArgs, a: &StateMigrateArgs) -> CmdResult {
    let cwd = std::env::current_dir().exit(Exit::Internal)?;
    let file = a.state.config.clone().or_else(|| {
        let f = discover_root_from_dir(&cwd).join(FILE_NAME);
        f.is_file().then_some(f)
    });
    let account = match &file {
        Some(f) => AccountConfig::load(f).exit(Exit::Invalid)?,
        None => AccountConfig::default(),
    };
    let Some(url) = account.state_url.clone() else {
        let dir = a
            .state
            .state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&cwd));
        let from = match &file {
            Some(f) => format!("{} has no [state] url", f.display()),
            None => format!("no {FILE_NAME} found"),
        };
        crate::outln!(
            "nothing to migrate: {from}, so state is SQLite in {}; those files are brought up to \
             date when a command opens them",
            dir.display()
        );
        return Ok(Exit::Ok);
    };
    let mut client = crate::pg::connect(&url).exit(Exit::Internal)?;
    let m = crate::pg::schema::migrate(&mut client)
        .with_context(|| format!("the state store {url}"))
        .exit(Exit::Internal)?;
    if m.applied.is_empty() {
        crate::outln!(
            "state store {url}: schema already at version {} (nothing to do)",
            m.to
        );
    } else {
        crate::outln!("state store {url}: schema version {} -> {}", m.from, m.to);
        for (v, name) in &m.applied {
            crate::outln!("  applied {v}: {name}");
        }
    }
    Ok(Exit::Ok)
}
