//! imcast: a declarative campaign runner for the Volcengine RTC IM server API.
//!
//! The data flow, one module per stage:
//! `spec` (parse, validate) → `audience` (stream, dedupe, suppress) → `render` (minijinja) →
//! `plan` (group identical Content into calls) → `journal` (durable run state) → `send`
//! (throttle, signed HTTP, retries) → `report` (per recipient). `run` is one campaign run through
//! those stages (settings resolved once, confirmation, journal decision, engine, report), called
//! by `imcast run` and the daemon alike. `schedule` and `daemon` fire campaigns on their
//! schedules; `provider` is the API client, `mock` a faithful local stand-in. `cli` parses the
//! command line and `cmd` holds one small module per subcommand (the shell: nothing below imports it).

pub mod action;
pub mod assign;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod exit;
pub mod failpoint;
pub mod logging;
pub mod output;

pub mod audience;
pub mod config;
pub mod daemon;
pub mod db;
pub mod diff;
pub mod files;
pub mod git;
pub mod guard;
pub mod journal;
pub mod mock;
pub mod pg;
pub mod plan;
pub mod provider;
pub mod render;
pub mod report;
pub mod run;
pub mod schedule;
pub mod send;
pub mod spec;
pub mod stages;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod throttle;
pub mod variants;

pub use cli::run;
