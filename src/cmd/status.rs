//! `imcast status`.

use crate::cli::{GlobalArgs, StatusArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &StatusArgs) -> CmdResult {
    Err(super::not_yet("status"))
}
