//! `imcast pause|resume|cancel NAME`.

use crate::cli::{ControlArgs, GlobalArgs};
use crate::exit::CmdResult;

pub fn pause(_g: &GlobalArgs, _args: &ControlArgs) -> CmdResult {
    Err(super::not_yet("pause"))
}

pub fn resume(_g: &GlobalArgs, _args: &ControlArgs) -> CmdResult {
    Err(super::not_yet("resume"))
}

pub fn cancel(_g: &GlobalArgs, _args: &ControlArgs) -> CmdResult {
    Err(super::not_yet("cancel"))
}
