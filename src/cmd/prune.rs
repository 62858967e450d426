//! `imcast prune`.

use crate::cli::{GlobalArgs, PruneArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &PruneArgs) -> CmdResult {
    Err(super::not_yet("prune"))
}
