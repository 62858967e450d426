//! `imcast run`: the shell around [`crate::run::run_campaign`]. Arguments become a
//! [`Request`]; this module shows the confirmation prompt (on a terminal: stdin and stderr),
//! installs the signal handler that trips the [`StopToken`], renders progress and the run's
//! warnings on stderr, starts
//! the embedded mock for `--mock`, and prints the summary (the report directory on stdout). The
//! run itself — settings, plan, journal, engine, report — is the library's.
//!
//! Signals: the first SIGINT/SIGTERM stops starting calls and waits for in-flight ones; a second
//! aborts at once. Confirmation: on a terminal `run` shows what it is about to send and asks;
//! `--yes` skips that. Off a terminal without `--yes` no callback is passed, so a real send is
//! refused (exit 2) rather than sent unconfirmed or left waiting for an answer nobody can type;
//! `--mock` runs need no confirmation (nothing leaves the machine).
//!
//! Must not: decide a setting, touch the journal beyond finding out whether the last mock run
//! finished, or send anything itself.

use crate::output::count;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::cli::{GlobalArgs, RunArgs};
use crate::clock::SystemClock;
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext};
use crate::journal::{Journal, RunFlags};
use crate::run::{Confirmation, Hooks, Request, RunSummary};
use crate::send::{describe_counts, Progress, StopReason, StopToken, Warning};
use crate::spec::LoadOptions;

/// What a person confirms before a real send: where it goes, how much, how long, and one
/// rendered message (with `--retry-failed`: which run it retries and how many, by code).
pub fn confirmation_text(c: &Confirmation) -> String {
    // Whole seconds, rounded up (as `imcast plan` shows an ETA).
    let eta = Duration::from_secs(c.eta.as_secs_f64().ceil() as u64);
    let retry = match &c.retry {
        Some(r) => format!("  retry      {r}\n"),
        None => String::new(),
    };
    format!(
        "About to send campaign {:?}{}\n{retry}  app id     {}\n  endpoint   {}\n  action     {} ({})\n  recipients {}\n  calls      {}\n  limit      {}\n  ETA        {}\n  message    {}\n",
        c.campaign,
        if c.is_test { " as a TEST to the --test-to ids only" } else { "" },
        c.app_id,
        c.endpoint,
        c.action,
        c.action.api_name(),
        c.recipients,
        c.calls,
        c.limit.describe(),
        humantime::format_duration(eta),
        c.sample_message
    )
}

/// Show `text`, ask "Send? [y/N]" and read one answer line: only `y`, `Y` or `yes` sends
/// (an empty line, anything else or end of input does not).
fn confirm(text: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> bool {
    let _ = writeln!(out, "{text}");
    let _ = write!(out, "Send? [y/N] ");
    let _ = out.flush();
    let mut answer = String::new();
    let _ = input.read_line(&mut answer);
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        let _ = writeln!(out, "Nothing was sent.");
    }
    yes
}

fn spawn_signal_handler(stop: StopToken, signal_exit: Arc<Mutex<Option<Exit>>>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let exit = tokio::select! {
                    _ = int.recv() => Exit::Interrupted,
                    _ = term.recv() => Exit::Terminated,
                };
                {
                    let mut g = signal_exit.lock().unwrap_or_else(|p| p.into_inner());
                    g.get_or_insert(exit);
                }
                if stop.stop() >= 2 {
                    crate::errln!("Second signal: aborting now. The journal is consistent; resume with `imcast run`.");
                    std::process::exit(i32::from(exit.code()));
                }
                crate::errln!("Stopping: no new calls; waiting for calls in flight to finish (signal again to abort).");
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                signal_exit
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(Exit::Interrupted);
                stop.stop();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(Exit::Interrupted.code()));
            }
        }
    });
}

/// Progress on stderr: a bar on a terminal, a log line every 10 s (of the run's clock)
/// otherwise; warnings as lines of their own (above the bar on a terminal).
struct Renderer {
    bar: Option<indicatif::ProgressBar>,
    /// When the last log line went out (the run's elapsed seconds).
    last_log: Mutex<Option<f64>>,
}

impl Renderer {
    fn new(terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} recipients  {msg}  ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Renderer {
            bar,
            last_log: Mutex::new(None),
        }
    }

    fn warn(&self, w: &Warning) {
        match &self.bar {
            Some(b) => b.suspend(|| crate::errln!("{}", w.line())),
            None => crate::errln!("{}", w.line()),
        }
    }

    fn update(&self, p: &Progress) {
        let msg = p.describe();
        if let Some(q) = &p.quiet_until {
            let msg = format!("quiet hours: no calls start until {q}");
            match &self.bar {
                Some(b) => b.set_message(msg),
                None => tracing::info!(run = %p.run_id, "{msg}"),
            }
            return;
        }
        if let Some(b) = &self.bar {
            b.set_length(p.deliverable_total());
            b.set_position(p.settled());
            b.set_message(msg);
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| p.elapsed_secs - t >= 10.0);
        if due {
            *last = Some(p.elapsed_secs);
            tracing::info!(
                run = %p.run_id,
                settled = p.settled(),
                total = p.deliverable_total(),
                calls = p.calls_done,
                "progress: {msg}"
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Print where a run stands (CLI): counts, how to resume, and the report directory on stdout.
fn print_summary(s: &RunSummary, file: &std::path::Path) {
    let file = file.display();
    let (Some(id), Some(status)) = (&s.run_id, s.status) else {
        return;
    };
    if s.already_finished {
        return;
    }
    crate::errln!("Run {id} {status}: {}.", describe_counts(&s.counts));
    match &s.reason {
        None | Some(StopReason::Completed | StopReason::Deadline | StopReason::Cancelled) => {}
        Some(StopReason::Interrupted) => {
            crate::errln!("Stopped by a signal; resume with: imcast run {file}")
        }
        Some(StopReason::Breaker { message }) => {
            crate::errln!("{message}\nResume with: imcast run {file}")
        }
        Some(StopReason::Canary { message }) => {
            crate::errln!(
                "{message}\nThe rest of the audience was not sent. Check the report; to send to them anyway, \
                 resume with: imcast run {file} (or imcast resume NAME under the daemon)"
            )
        }
        Some(StopReason::Fatal { message, .. }) => {
            crate::errln!(
                "The provider refused: {message}\nFix it, then resume with: imcast run {file}"
            )
        }
        Some(StopReason::Paused) => {
            crate::errln!("Paused by request; resume with: imcast resume or imcast run {file}")
        }
    }
    if let Some(dir) = &s.report_dir {
        crate::errln!("Report: {}", dir.display());
        crate::outln!("{}", dir.display());
    }
}

/// Whether the latest run of `campaign` in the mock journal has finished (no journal yet: false).
fn latest_mock_run_finished(paths: &RepoPaths, campaign: &str) -> bool {
    if !paths.state_dir.join(crate::journal::DB_FILE).exists() {
        return false;
    }
    Journal::open(&paths.state_dir)
        .ok()
        .and_then(|j| j.latest_run(campaign, false).ok().flatten())
        .is_some_and(|r| !r.status.is_unfinished())
}

fn signal_mapped(exit: Exit, signal_exit: &Mutex<Option<Exit>>) -> Exit {
    match (exit, *signal_exit.lock().unwrap_or_else(|p| p.into_inner())) {
        (Exit::Interrupted, Some(sig)) => sig,
        (e, _) => e,
    }
}

/// The flags as the command line gives them.
fn flags_of(args: &RunArgs) -> RunFlags {
    RunFlags {
        new_run: args.new_run,
        continue_changed: args.continue_changed,
        resend_unknown: args.resend_unknown,
        yes: args.yes,
        mock: args.mock,
        test_to: args.test_to.clone(),
        skip_canary: args.skip_canary,
        retry_failed: args.retry_failed,
    }
}

/// The hooks of a run on this terminal: the prompt (only when stdin and stderr are a terminal),
/// notes on stderr, progress through `renderer`.
fn hooks(renderer: Arc<Renderer>) -> Hooks {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    Hooks {
        confirm: interactive.then(|| {
            Arc::new(|c: &Confirmation| {
                let stdin = std::io::stdin();
                confirm(
                    &confirmation_text(c),
                    &mut stdin.lock(),
                    &mut std::io::stderr(),
                )
            }) as crate::run::ConfirmFn
        }),
        note: Some(Arc::new(|m: &str| crate::errln!("{m}"))),
        progress: Some({
            let r = renderer.clone();
            Arc::new(move |p: &Progress| r.update(p))
        }),
        warn: Some(Arc::new(move |w: &Warning| renderer.warn(w))),
    }
}

/// `imcast run FILE`.
pub fn run(_g: &GlobalArgs, args: &RunArgs) -> CmdResult {
    let campaign = crate::spec::load(
        &args.file,
        &LoadOptions {
            allow_endpoints: args.allow_endpoint.clone(),
        },
    )
    .exit(Exit::Invalid)?;
    let mut paths = RepoPaths::discover(
        &args.file,
        args.state.config.as_deref(),
        args.state.state_dir.as_deref(),
        args.report_dir.as_deref(),
    );
    let mut flags = flags_of(args);
    if args.mock {
        // A mock run must never stand for the real campaign: it keeps its own journal and
        // reports (unless the command line names them), so a demo or a rehearsal cannot make a
        // later real `run` answer "already finished". The embedded mock remembers nothing between
        // processes, so a finished mock run is simply run again.
        paths = paths.for_mock(args.state.state_dir.is_some(), args.report_dir.is_some());
        // (A --retry-failed follow-up is a new run by itself, of the last mock run.)
        flags.new_run = flags.new_run
            || (!flags.retry_failed && latest_mock_run_finished(&paths, &campaign.name));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
        .exit(Exit::Internal)?;
    let stop = StopToken::new();
    let signal_exit = Arc::new(Mutex::new(None::<Exit>));
    let renderer = Arc::new(Renderer::new(std::io::stderr().is_terminal()));
    let hooks = hooks(renderer.clone());
    let res = rt.block_on(async {
        spawn_signal_handler(stop.clone(), signal_exit.clone());
        let mock = if args.mock {
            // The embedded mock serves the campaign's region, so the scope the client signs checks.
            let m = crate::mock::start(crate::mock::MockConfig {
                region: campaign.region.clone(),
                ..crate::mock::MockConfig::default()
            })
            .await
            .context("start the embedded mock provider")
            .exit(Exit::Internal)?;
            crate::errln!(
                "Sending to the embedded mock provider at {} (nothing leaves this machine).",
                m.endpoint()
            );
            Some(m)
        } else {
            None
        };
        let req = Request {
            campaign,
            occurrence: None,
            paths,
            target: mock.as_ref().map(|m| (m.endpoint(), m.credentials())),
            flags,
            report_formats: args.report_format,
            hooks,
        };
        let res = crate::run::run_campaign(req, Arc::new(SystemClock), stop).await;
        if let Some(m) = mock {
            let st = m.stats();
            crate::errln!(
                "Mock provider: {}, {} accepted, {} rate-limited, {}, most in any window {}.",
                count(st.requests, "request", "requests"),
                count(st.messages, "message", "messages"),
                st.rate_limited,
                count(st.duplicates, "duplicate", "duplicates"),
                st.max_in_window
            );
            m.shutdown().await;
        }
        res
    });
    renderer.finish();
    let s = res?;
    print_summary(&s, &args.file);
    Ok(signal_mapped(s.exit, &signal_exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str) -> (bool, String) {
        let mut out = Vec::new();
        let yes = confirm("About to send…\n", &mut line.as_bytes(), &mut out);
        (yes, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn only_an_explicit_yes_sends() {
        for l in ["y\n", "Y\n", "yes\n", "  y  \r\n"] {
            let (yes, out) = answer(l);
            assert!(yes, "{l:?}");
            assert!(out.ends_with("Send? [y/N] "), "{out}");
        }
        for l in ["", "\n", "n\n", "no\n", "yes please\n", "YES\n", "Send\n"] {
            let (yes, out) = answer(l);
            assert!(!yes, "{l:?}");
            assert!(out.contains("About to send…"), "{out}");
            assert!(out.ends_with("Nothing was sent.\n"), "{out}");
        }
    }
}
