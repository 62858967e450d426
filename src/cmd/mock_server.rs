//! `imcast mock-server`: run the mock provider until SIGINT/SIGTERM. The bound address is the
//! first line of stdout (so scripts can use `--listen 127.0.0.1:0`); logs go to stderr.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use crate::cli::{GlobalArgs, MockServerArgs};
use crate::exit::{CmdResult, Exit, ExitContext as _, Failure};
use crate::mock::MockConfig;

fn rate(name: &str, v: f64) -> Result<f64, Failure> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(Failure::new(
            Exit::Invalid,
            anyhow!("--{name} must be between 0 and 1 (a share of requests), got {v}"),
        ))
    }
}

/// The mock configuration the flags describe.
pub fn config(a: &MockServerArgs) -> Result<MockConfig, Failure> {
    let window: Duration = humantime::parse_duration(&a.window)
        .with_context(|| {
            format!(
                "--window {:?}: expected a duration such as 60s, 5s or 500ms",
                a.window
            )
        })
        .exit(Exit::Invalid)?;
    if window.is_zero() {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!("--window must be longer than zero"),
        ));
    }
    let quirks = match &a.quirks {
        None => Default::default(),
        Some(list) => crate::mock::parse_quirks(list)
            .map_err(|e| Failure::new(Exit::Invalid, anyhow!("--quirks {list:?}: {e}")))?,
    };
    if a.region.trim().is_empty() {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!("--region must name a region, such as cn-north-1"),
        ));
    }
    Ok(MockConfig {
        listen: a.listen,
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
        region: a.region.clone(),
        quirks,
        app_ids: a.app_id.clone(),
        limit: a.limit,
        window,
        send_qps: a.send_qps,
        p2p_qps: a.p2p_qps,
        fail_rate: rate("fail-rate", a.fail_rate)?,
        fail_after_rate: rate("fail-after-rate", a.fail_after_rate)?,
        lost_rate: rate("lost-rate", a.lost_rate)?,
        unavailable_rate: rate("unavailable-rate", a.unavailable_rate)?,
        failed_receiver_rate: rate("failed-receiver-rate", a.failed_receiver_rate)?,
        offline_rate: rate("offline-rate", a.offline_rate)?,
        latency: Duration::from_millis(a.latency_ms),
        seed: a.seed,
        record: a.record.clone(),
        ..MockConfig::default()
    })
}

pub fn run(_g: &GlobalArgs, a: &MockServerArgs) -> CmdResult {
    let cfg = config(a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
        .exit(Exit::Internal)?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("could not listen on {}", cfg.listen))
            .exit(Exit::Busy)?;
        let addr = listener.local_addr().context("no local address").exit(Exit::Internal)?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{addr}").and_then(|_| out.flush()).context("stdout").exit(Exit::Internal)?;
        }
        tracing::info!(%addr, access_key = %cfg.access_key, region = %cfg.region, quirks = ?cfg.quirks, "mock provider listening; stop with Ctrl-C");
        crate::mock::serve(listener, cfg, shutdown_signal())
            .await
            .context("mock provider failed")
            .exit(Exit::Internal)?;
        tracing::info!("mock provider stopped");
        Ok(Exit::Ok)
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
