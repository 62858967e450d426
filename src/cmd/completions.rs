//! `imcast completions SHELL` and `imcast man`: generated from the clap definition in `cli`, so
//! they always match the flags this binary accepts.

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, GlobalArgs};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn completions(_g: &GlobalArgs, a: &CompletionsArgs) -> CmdResult {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "imcast", &mut buf);
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(Exit::Ok)
}

pub fn man(_g: &GlobalArgs) -> CmdResult {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .context("render the man page")
        .exit(Exit::Internal)?;
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(Exit::Ok)
}
