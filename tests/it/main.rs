//! The one integration-test binary (`autotests = false`): each area is a module here.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test's own notes (a skip, a measured figure) go to the test harness's captured output"
)]

mod audience;
mod cli;
mod common;
mod daemon_e2e;
mod disk_full;
mod interop;
mod lease;
mod mock;
mod numbers;
mod pg_daemons;
mod pg_store;
mod pg_tls;
mod pg_two_dirs;
mod plan;
mod plan_diff;
mod predict;
mod provider;
mod race;
mod report;
mod requeue;
mod retry;
mod run;
mod scheduler;
mod sender;
mod spec;
mod stages;
mod throttle;
mod ux;
mod variants;
mod wire;
