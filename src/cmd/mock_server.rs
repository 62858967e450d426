//! `imcast mock-server`.

use crate::cli::{GlobalArgs, MockServerArgs};
use crate::exit::CmdResult;

pub fn run(_g: &GlobalArgs, _args: &MockServerArgs) -> CmdResult {
    Err(super::not_yet("mock-server"))
}
