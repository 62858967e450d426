//! Process exit codes: the one place they are defined.
//!
//! Every command returns an [`Exit`]; errors carry one through [`Failure`]. README.md documents
//! the same table. Nothing else in the crate picks a numeric exit code.

use std::fmt;

/// What the process tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// 0: everything asked for was done.
    Ok,
    /// 1: a bug or an environment failure imcast could not classify (disk full, journal write failed).
    Internal,
    /// 2: invalid input: campaign file, audience, template, flags. Nothing was sent.
    Invalid,
    /// 3: the run finished, but some recipients are `failed` or `unknown`.
    Incomplete,
    /// 4: the failure breaker, or a failed canary gate, stopped the run (resumable with `run`).
    Breaker,
    /// 5: credentials missing, or the provider refused them (signature, access key, access denied).
    Access,
    /// 6: another process holds what is needed (a run of the same campaign, the state database).
    Busy,
    /// 7: what decides what is sent changed since the unfinished run started.
    Changed,
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

/// An error at the command-line edge: what went wrong (with its chain) and the exit code it means.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
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
