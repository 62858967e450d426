//! `imcast daemon DIR`: run a folder of campaigns on their schedules.
//!
//! Wires the scheduler core to the real clock, the `spec::load` campaign source, the
//! `run_campaign` runner, signals and the metrics server. First SIGINT/SIGTERM: stop ticking,
//! stop starting calls, wait for calls in flight to commit (runs stay resumable), exit 130/143.
//! A second signal exits at once.

use std::sync::Arc;

use anyhow::anyhow;
use tracing::info;

use crate::cli::{DaemonArgs, GlobalArgs};
use crate::clock::SystemClock;
use crate::daemon::send_runner::{SendRunner, SendRunnerConfig};
use crate::daemon::source::SpecSource;
use crate::daemon::{default_state_dir, metrics, Daemon, DaemonConfig};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs, a: &DaemonArgs) -> CmdResult {
    // Every run needs them: refuse to start rather than fail each occurrence later.
    crate::provider::Credentials::from_env()
        .map_err(|e| {
            anyhow!(
                "{e}. The daemon sends with Volcengine credentials from the environment: VOLC_ACCESSKEY and \
                 VOLC_SECRETKEY (or VOLC_SECRETKEY_FILE, e.g. with systemd LoadCredential=)"
            )
        })
        .exit(Exit::Access)?;
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
    // `[state] url` decides where the occurrence record lives: a config that does not load is an
    // error here, never a silent fall back to this machine's SQLite (two daemons would then each
    // fire every occurrence).
    let store = state_url(&a.dir, a.state.config.as_deref()).exit(Exit::Invalid)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .exit(Exit::Internal)?;
    rt.block_on(async move {
        let mut cfg = DaemonConfig::new(&a.dir, &state_dir);
        cfg.store = store;
        // The roster refresh follows the run lease's heartbeat (`[state] lease_heartbeat`).
        cfg.heartbeat = account_config(&a.dir, a.state.config.as_deref())
            .lease
            .heartbeat;
        let source = SpecSource::new(crate::spec::LoadOptions {
            allow_endpoints: a.allow_endpoint.clone(),
        });
        let runner = SendRunner::new(
            SendRunnerConfig {
                state_dir: state_dir.clone(),
                report_dir: a.report_dir.clone(),
                config: a.state.config.clone(),
                target: None,
                report_formats: a.report_format,
            },
            Arc::new(SystemClock),
        );
        // Off the runtime's threads: opening may connect to PostgreSQL (a blocking client).
        let open_runner: Arc<dyn crate::daemon::runner::Runner> = runner.clone();
        let daemon = tokio::task::spawn_blocking(move || {
            Daemon::open(cfg, Arc::new(SystemClock), Box::new(source), open_runner)
        })
        .await
        .map_err(|e| anyhow!("opening the daemon: {e}"))
        .exit(Exit::Internal)?
        .map_err(|e| match e {
            crate::daemon::DaemonError::Busy { .. } => crate::exit::Failure::new(Exit::Busy, e),
            crate::daemon::DaemonError::Journal(ref j) => crate::exit::Failure::new(j.exit(), e),
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
                crate::errln!("second signal: aborting now; runs stay resumable");
                std::process::exit(i32::from(second.code()));
            });
        }
        if let Some(addr) = a.metrics {
            let journal_metrics = metrics::JournalMetrics::new();
            let account = account_config(&a.dir, a.state.config.as_deref());
            let limits = crate::action::Action::ALL
                .iter()
                .map(|act| (act.as_str().to_string(), account.account_limit(*act)))
                .collect();
            journal_metrics.spawn_refresh(
                crate::journal::journal_store(account.state_url.as_ref(), &state_dir, false),
                account.state_store(&state_dir),
                limits,
                Arc::new(SystemClock),
                std::time::Duration::from_secs(5),
            );
            daemon.metrics().add_hook(Arc::new(journal_metrics));
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
        let res = daemon.run(rx).await;
        // Graceful: the runs stop starting calls; wait for calls in flight to commit.
        runner.drain().await;
        res.exit(Exit::Internal)?;
        let code = signal.lock().ok().and_then(|g| *g).unwrap_or(Exit::Ok);
        Ok(code)
    })
}

/// `[state] url` of the account settings for the campaigns under `dir` (`--config`, else
/// `imcast.toml` at the campaigns root): an error when that file does not load.
pub(crate) fn state_url(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Option<crate::pg::PgUrl>> {
    let file = config.map(std::path::Path::to_path_buf).or_else(|| {
        let f = crate::config::discover_root_from_dir(dir).join(crate::config::FILE_NAME);
        f.is_file().then_some(f)
    });
    match file {
        Some(f) => Ok(crate::config::AccountConfig::load(&f)?.state_url),
        None => Ok(None),
    }
}

/// The account settings for the campaigns under `dir`: `--config`, else `imcast.toml` at the
/// campaigns root (the same rule as the state directory's, `config::ROOT_RULE`), else defaults
/// (for the metrics' limits; runs load their own).
fn account_config(
    dir: &std::path::Path,
    config: Option<&std::path::Path>,
) -> crate::config::AccountConfig {
    let file = config.map(std::path::Path::to_path_buf).or_else(|| {
        let f = crate::config::discover_root_from_dir(dir).join(crate::config::FILE_NAME);
        f.is_file().then_some(f)
    });
    file.and_then(|f| crate::config::AccountConfig::load(&f).ok())
        .unwrap_or_default()
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
