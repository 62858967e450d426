//! `imcast schema`: the JSON Schema of the campaign file format, for editors.

use crate::cli::GlobalArgs;
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs) -> CmdResult {
    let s = serde_json::to_string_pretty(&crate::spec::json_schema()).exit(Exit::Internal)?;
    crate::outln!("{s}");
    Ok(Exit::Ok)
}
