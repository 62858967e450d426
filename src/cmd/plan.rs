//! `imcast plan`.

use crate::cli::{GlobalArgs, PlanArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &PlanArgs) -> CmdResult {
    Err(super::not_yet("plan"))
}
