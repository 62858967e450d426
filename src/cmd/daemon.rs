//! `imcast daemon DIR`: run a folder of campaigns on their schedules.
//!
//! Wires the scheduler core to the real clock, the campaign source, the runner, signals and the
//! metrics server. First SIGINT/SIGTERM: stop ticking, let the runner stop gracefully (runs stay
//! resumable), exit 130/143. A second signal exits at once.

use std::sync::Arc;

use anyhow::anyhow;
use tracing::info;

use crate::cli::{DaemonArgs, GlobalArgs};
use crate::clock::SystemClock;
use crate::daemon::runner::UnwiredRunner;
use crate::daemon::source::StandInSource;
use crate::daemon::{default_state_dir, metrics, Daemon, DaemonConfig};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs, a: &DaemonArgs) -> CmdResult {
    if !a.dir.is_dir() {
        return Err(anyhow!(
            "{}: not a folder of campaign files",
            a.dir.display()
        ))
        .exit(Exit::Invalid);
    }
    if let Some(addr) = a.metrics {
        if !addr.ip().is_loopback() {
            return Err(anyhow!(
                "--metrics {addr}: only a loopback address (127.0.0.1:PORT) is allowed; put a proxy in front to expose it"
            ))
            .exit(Exit::Invalid);
        }
    }
    let state_dir = a
        .state
        .state_dir
        .clone()
        .unwrap_or_else(|| default_state_dir(&a.dir));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .exit(Exit::Internal)?;
    rt.block_on(async move {
        let cfg = DaemonConfig::new(&a.dir, &state_dir);
        // TODO(merge): StandInSource -> adapter over spec::load (payload: spec::Campaign);
        // UnwiredRunner -> adapter over send::Engine + journal::Journal (run key = RunRequest::run_key),
        // and register the sender's MetricsHook (messages by status, rate vs limit).
        let daemon = Daemon::open(
            cfg,
            Arc::new(SystemClock),
            Box::new(StandInSource),
            Arc::new(UnwiredRunner),
        )
        .map_err(|e| match e {
            crate::daemon::DaemonError::Busy { .. } => crate::exit::Failure::new(Exit::Busy, e),
            other => crate::exit::Failure::new(Exit::Internal, other),
        })?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = Arc::new(std::sync::Mutex::new(None::<Exit>));
        {
            let signal = signal.clone();
            tokio::spawn(async move {
                let first = wait_signal().await;
                if let Ok(mut g) = signal.lock() {
                    *g = Some(first);
                }
                info!("signal received: stopping after the current tick (a second signal aborts)");
                let _ = tx.send(true);
                let second = wait_signal().await;
                eprintln!("second signal: aborting now; runs stay resumable");
                std::process::exit(i32::from(second.code()));
            });
        }
        if let Some(addr) = a.metrics {
            let mut srx = rx.clone();
            let bound = metrics::serve(addr, daemon.metrics(), async move {
                let _ = srx.wait_for(|v| *v).await;
            })
            .await
            .map_err(|e| anyhow!("--metrics {addr}: {e}"))
            .exit(Exit::Invalid)?;
            info!(addr = %bound, "metrics at http://{bound}/metrics");
        }
        info!(dir = %a.dir.display(), state_dir = %state_dir.display(), "daemon started");
        daemon.run(rx).await.exit(Exit::Internal)?;
        let code = signal.lock().ok().and_then(|g| *g).unwrap_or(Exit::Ok);
        Ok(code)
    })
}

#[cfg(unix)]
async fn wait_signal() -> Exit {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return Exit::Interrupted;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Exit::Interrupted,
        _ = term.recv() => Exit::Terminated,
    }
}

#[cfg(not(unix))]
async fn wait_signal() -> Exit {
    let _ = tokio::signal::ctrl_c().await;
    Exit::Interrupted
}
