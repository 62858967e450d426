//! `imcast schema`.

use crate::cli::GlobalArgs;
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs) -> CmdResult {
    Err(super::not_yet("schema"))
}
