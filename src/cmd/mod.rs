//! One module per subcommand — the shell: each turns its validated arguments into calls on the
//! library (the stage modules, `run` for a campaign run), asks and displays what a person must
//! see (prompts, progress, results through `output.rs`) and maps the outcome to an exit code.
//! Commands own no business logic of their own, and no module outside `cli.rs` and `cmd/`
//! imports them.

pub mod completions;
pub mod control;
pub mod daemon;
pub mod diff;
pub mod mock_server;
pub mod plan;
pub mod preview;
pub mod prune;
pub mod report;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod state;
pub mod status;
pub mod validate;
