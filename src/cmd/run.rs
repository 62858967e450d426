//! `imcast run`.

use crate::cli::{GlobalArgs, RunArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &RunArgs) -> CmdResult {
    Err(super::not_yet("run"))
}
