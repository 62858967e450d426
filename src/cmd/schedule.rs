//! `imcast schedule`.

use crate::cli::{GlobalArgs, ScheduleArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &ScheduleArgs) -> CmdResult {
    Err(super::not_yet("schedule"))
}
