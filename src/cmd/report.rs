//! `imcast report`.

use crate::cli::{GlobalArgs, ReportArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &ReportArgs) -> CmdResult {
    Err(super::not_yet("report"))
}
