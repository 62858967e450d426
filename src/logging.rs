//! Logging setup: `tracing` to stderr, human by default, JSON with `--log-format json`.
//!
//! Reports and machine output go to stdout or files through their own writers, never through
//! here. Nothing logged may hold a secret or an Authorization header; request bodies are logged
//! only when `--log-bodies` is given (see [`bodies_enabled`]).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogFormat};

static LOG_BODIES: AtomicBool = AtomicBool::new(false);

/// Whether the user asked for request bodies in the logs.
pub fn bodies_enabled() -> bool {
    LOG_BODIES.load(Ordering::Relaxed)
}

/// Install the global subscriber (once; later calls are ignored).
pub fn init(g: &GlobalArgs) {
    LOG_BODIES.store(g.log_bodies, Ordering::Relaxed);
    let default = if g.quiet {
        "warn"
    } else {
        match g.verbose {
            0 => "info",
            1 => "imcast=debug,info",
            _ => "imcast=trace,debug",
        }
    };
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match g.log_format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
