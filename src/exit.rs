//! Process exit codes: the one place they are defined.
//!
//! Every command returns an [`Exit`]; errors carry one through [`Failure`]. README.md documents
//! the same table. Nothing else in the crate picks a numeric exit code. A failure prints its
//! error chain with each piece of wording once ([`chain_text`]); [`is_storage_full`] is the one
//! test for a full disk in an I/O error (exit 8, [`Exit::Environment`]).

use std::fmt;

/// What the process tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// 0: everything asked for was done.
    Ok,
    /// 1: a bug or an environment failure imcast could not classify (a journal write failed for
    /// another reason than a full disk).
    Internal,
    /// 2: invalid input: campaign file, audience, template, flags. Nothing was sent.
    Invalid,
    /// 3: the run finished, but some recipients are `failed` or `unknown`.
    Incomplete,
    /// 4: the failure breaker, or a failed canary gate, stopped the run (resumable with `run`).
    Breaker,
    /// 5: credentials missing, or the provider refused them (signature, access key, access denied).
    Access,
    /// 6: another process holds what is needed (a run of the same campaign, the state database),
    /// or took this process's run over after its lease expired (this process wrote nothing more).
    Busy,
    /// 7: what decides what is sent changed since the unfinished run started.
    Changed,
    /// 8: the machine refused a write imcast needs: the disk (or quota) under the state or
    /// report directory is full. Nothing was lost; free space, then run the command again.
    Environment,
    /// 130: interrupted by SIGINT; the run is resumable.
    Interrupted,
    /// 143: terminated by SIGTERM; the run is resumable.
    Terminated,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Internal => 1,
            Exit::Invalid => 2,
            Exit::Incomplete => 3,
            Exit::Breaker => 4,
            Exit::Access => 5,
            Exit::Busy => 6,
            Exit::Changed => 7,
            Exit::Environment => 8,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// Whether an I/O error is the disk (or the user's quota) being full.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(28) // ENOSPC (Linux, macOS)
}

/// An error at the command-line edge: what went wrong (with its chain) and the exit code it means.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain_text(&self.error))
    }
}

/// An error and its causes, `: `-separated, each piece of wording once: a cause whose text an
/// earlier one already says is left out (`journal x.db: database or disk is full` does not go on
/// `: database or disk is full`), and a cause that repeats the end of the text so far only adds
/// what is new (`… is full` + `database or disk is full (Error code 13)` → `… is full (Error code
/// 13)`).
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let s = s.trim();
        if s.is_empty() || out.contains(s) {
            continue;
        }
        if out.is_empty() {
            out.push_str(s);
            continue;
        }
        // The longest end of `out` that `s` starts with (at least a few words' worth).
        let overlap = (8..=s.len().min(out.len()))
            .rev()
            .filter(|&n| s.is_char_boundary(n))
            .find(|&n| out.ends_with(&s[..n]));
        match overlap {
            Some(n) => out.push_str(&s[n..]),
            None => {
                out.push_str(": ");
                out.push_str(s);
            }
        }
    }
    out
}

impl Failure {
    pub fn new(exit: Exit, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            exit,
            error: error.into(),
        }
    }
}

/// Attach an exit code to any error: `spec::load(path).exit(Exit::Invalid)?`.
pub trait ExitContext<T> {
    fn exit(self, exit: Exit) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ExitContext<T> for Result<T, E> {
    fn exit(self, exit: Exit) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(exit, e))
    }
}

/// What every command returns.
pub type CmdResult = Result<Exit, Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("journal state/imcast.db: {0}")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("database or disk is full")]
    struct Inner(#[source] Code);

    #[derive(Debug, thiserror::Error)]
    #[error("database or disk is full (Error code 13)")]
    struct Code;

    #[test]
    fn a_chain_says_each_piece_of_wording_once() {
        let e = anyhow::Error::new(Outer(Inner(Code))).context("run 1");
        assert_eq!(
            Failure::new(Exit::Internal, e).to_string(),
            "run 1: journal state/imcast.db: database or disk is full (Error code 13)"
        );
        let e = anyhow::anyhow!("cannot open x").context("loading y");
        assert_eq!(chain_text(&e), "loading y: cannot open x");
    }
}
