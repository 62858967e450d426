//! `imcast schema [campaign|plan-diff]`: a JSON Schema — of the campaign file format (for editors;
//! committed as `imcast.schema.json`) or of `plan --diff --output json` (`plan-diff.schema.json`).

use crate::cli::{GlobalArgs, SchemaArgs, SchemaKind};
use crate::exit::{CmdResult, Exit, ExitContext};

pub fn run(_g: &GlobalArgs, a: &SchemaArgs) -> CmdResult {
    let schema = match a.kind {
        SchemaKind::Campaign => crate::spec::json_schema(),
        SchemaKind::PlanDiff => crate::diff::json_schema(),
    };
    let s = serde_json::to_string_pretty(&schema).exit(Exit::Internal)?;
    crate::outln!("{s}");
    Ok(Exit::Ok)
}
