//! One module per subcommand: each turns its validated arguments into calls on the stage modules
//! and prints the result. Commands own no business logic of their own.

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
pub mod status;
pub mod validate;
