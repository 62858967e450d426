//! `imcast validate`.

use crate::cli::{GlobalArgs, ValidateArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &ValidateArgs) -> CmdResult {
    Err(super::not_yet("validate"))
}
