//! `imcast daemon`.

use crate::cli::{DaemonArgs, GlobalArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &DaemonArgs) -> CmdResult {
    Err(super::not_yet("daemon"))
}
