//! Logging setup: `tracing` to stderr, human by default, JSON with `--log-format json`; and the
//! one decision whether text output is coloured (`--color`, `NO_COLOR`, a terminal or not).
//!
//! Reports and machine output go to stdout or files through their own writers, never through
//! here. Nothing logged may hold a secret or an Authorization header; request bodies are logged
//! only when `--log-bodies` is given (see [`bodies_enabled`]). Colour: `--color auto` (the
//! default) colours a stream only when it is a terminal, `NO_COLOR` is unset or empty
//! (no-color.org) and `TERM` is not `dumb`; `always` and `never` decide outright (the command
//! line overrides the environment). Logs to a file, cron mail or journald therefore carry no
//! escape codes. Every coloured output asks [`color_stderr`] or [`color_stdout`].
//!
//! Also the one writer of plain messages people read on stderr beside the logs (a run's summary,
//! "Mock provider: …", a signal's notice, the CLI's `error: …`): [`errln!`](crate::errln) writes
//! through [`note`]. Clippy's `print_stderr` is allowed here and in `output` only, so no other
//! module prints around these writers.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tracing_subscriber::EnvFilter;

use crate::cli::{ColorChoice, GlobalArgs, LogFormat};

static LOG_BODIES: AtomicBool = AtomicBool::new(false);
/// The `--color` given (0 auto, 1 always, 2 never).
static COLOR: AtomicU8 = AtomicU8::new(0);

/// Whether the user asked for request bodies in the logs.
pub fn bodies_enabled() -> bool {
    LOG_BODIES.load(Ordering::Relaxed)
}

fn choice() -> ColorChoice {
    match COLOR.load(Ordering::Relaxed) {
        1 => ColorChoice::Always,
        2 => ColorChoice::Never,
        _ => ColorChoice::Auto,
    }
}

/// The colour rule for one stream: `terminal` is whether it is one; `no_color` and `term` are
/// the values of `NO_COLOR` and `TERM`.
pub fn color_wanted(
    choice: ColorChoice,
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
        }
    }
}

fn color_for(terminal: bool) -> bool {
    color_wanted(
        choice(),
        terminal,
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

/// Whether to colour what goes to stderr (logs, progress).
pub fn color_stderr() -> bool {
    color_for(std::io::stderr().is_terminal())
}

/// Whether to colour what goes to stdout (e.g. `plan --diff`'s text).
pub fn color_stdout() -> bool {
    color_for(std::io::stdout().is_terminal())
}

/// Write `args` to stderr (no newline added): a message for people, not a log record (see the
/// module doc).
#[allow(
    clippy::print_stderr,
    reason = "the one writer of plain messages to stderr (with `output` for stdout)"
)]
pub fn note(args: fmt::Arguments<'_>) {
    eprint!("{args}");
}

/// `eprintln!` for messages people read on stderr: see the module doc.
#[macro_export]
macro_rules! errln {
    () => { $crate::logging::note(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::logging::note(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Install the global subscriber (once; later calls are ignored).
pub fn init(g: &GlobalArgs) {
    LOG_BODIES.store(g.log_bodies, Ordering::Relaxed);
    COLOR.store(
        match g.color {
            ColorChoice::Auto => 0,
            ColorChoice::Always => 1,
            ColorChoice::Never => 2,
        },
        Ordering::Relaxed,
    );
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
        LogFormat::Human => builder
            .with_target(false)
            .with_ansi(color_stderr())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color_unless_told() {
        let auto = ColorChoice::Auto;
        assert!(color_wanted(auto, true, None, Some(OsStr::new("xterm"))));
        assert!(!color_wanted(auto, false, None, None), "a file or pipe");
        assert!(!color_wanted(auto, true, Some(OsStr::new("1")), None));
        assert!(
            color_wanted(auto, true, Some(OsStr::new("")), None),
            "an empty NO_COLOR is unset"
        );
        assert!(!color_wanted(auto, true, None, Some(OsStr::new("dumb"))));
        assert!(color_wanted(
            ColorChoice::Always,
            false,
            Some(OsStr::new("1")),
            None
        ));
        assert!(!color_wanted(ColorChoice::Never, true, None, None));
    }
}
