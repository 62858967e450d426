//! The one integration-test binary (`autotests = false`): each area is a module here.

mod audience;
mod cli;
mod common;
mod daemon_e2e;
mod interop;
mod mock;
mod plan;
mod plan_diff;
mod provider;
mod race;
mod report;
mod requeue;
mod run;
mod scheduler;
mod sender;
mod spec;
mod throttle;
mod ux;
mod variants;
mod wire;
