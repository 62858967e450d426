//! The one writer for what commands print to stdout (plans, reports, listings, JSON).
//!
//! `println!` panics when stdout is a closed pipe (`imcast schema | head`); a command-line tool
//! should instead stop quietly, as `cat` does. [`outln!`](crate::outln) and [`out!`](crate::out)
//! write through here: a broken pipe ends the process with exit code 0 (the reader wanted no more),
//! any other write error with code 1 and a message on stderr. Logs never come through here.
//! [`count`] writes a number with its noun in the right number ("1 call", "2 calls") for every
//! message people read. Clippy's `print_stdout` is allowed nowhere (this writes through a locked
//! `std::io::stdout()`), so no module prints around this writer.

use std::fmt;
use std::io::{ErrorKind, Write};

/// Write `args` to stdout (no newline added).
pub fn write(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        stdout_failed(&e);
    }
}

/// Stdout failed: a closed pipe ends the process quietly (exit 0), anything else with exit 1.
#[allow(
    clippy::print_stderr,
    reason = "stdout itself failed: the message cannot go through the writers it belongs to"
)]
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// Write `v` as pretty JSON and a newline to stdout, streamed (nothing the size of the document
/// is built in memory); errors as [`write`].
pub fn write_json<T: serde::Serialize + ?Sized>(v: &T) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let res = serde_json::to_writer_pretty(&mut out, v)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = res {
        stdout_failed(&e);
    }
}

/// `println!` for command output: see the module doc.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for command output: see the module doc.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*)) };
}

/// `n` and the noun that fits it: `count(1, "call", "calls")` is "1 call", `count(4, ...)` "4 calls".
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    #[test]
    fn count_agrees_with_its_number() {
        assert_eq!(super::count(0, "call", "calls"), "0 calls");
        assert_eq!(super::count(1, "call", "calls"), "1 call");
        assert_eq!(super::count(2, "run", "runs"), "2 runs");
    }
}
