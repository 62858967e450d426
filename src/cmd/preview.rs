//! `imcast preview`.

use crate::cli::{GlobalArgs, PreviewArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &PreviewArgs) -> CmdResult {
    Err(super::not_yet("preview"))
}
