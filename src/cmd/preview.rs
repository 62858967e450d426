//! `imcast preview FILE --recipient ID`: the exact request body that recipient's call carries.

use anyhow::anyhow;

use crate::cli::{GlobalArgs, PreviewArgs};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::plan::{PlanOptions, RowStatus};
use crate::spec::LoadOptions;

pub fn run(_g: &GlobalArgs, a: &PreviewArgs) -> CmdResult {
    let c = crate::spec::load(
        &a.file,
        &LoadOptions {
            allow_endpoints: a.allow_endpoint.clone(),
        },
    )
    .exit(Exit::Invalid)?;
    let plan = crate::plan::build(
        &c,
        &PlanOptions {
            extra_suppress: crate::config::account_suppress(&a.file, None).exit(Exit::Invalid)?,
        },
    )
    .exit(Exit::Invalid)?;
    match plan.call_for(a.recipient) {
        Some(Ok(call)) => {
            let body = crate::plan::request_body(&c, &call);
            let s = serde_json::to_string_pretty(&body).exit(Exit::Internal)?;
            crate::outln!("{s}");
            eprintln!(
                "call {} of {} ({} receivers) to {}?Action={}",
                call.seq + 1,
                plan.counts().calls,
                call.receivers.len(),
                c.endpoint,
                c.action.api_name()
            );
            Ok(Exit::Ok)
        }
        Some(Err(e)) => Err(Failure::new(Exit::Invalid, e)),
        None => {
            // Say why: find the recipient's row.
            let why = plan
                .rows()
                .filter_map(Result::ok)
                .find(|r| r.id == Some(a.recipient))
                .map(|r| match r.status {
                    RowStatus::Duplicate { first_line } => {
                        format!("line {} duplicates line {first_line}", r.line)
                    }
                    RowStatus::Suppressed { list } => {
                        format!("line {}: suppressed by {list}", r.line)
                    }
                    RowStatus::Invalid { reason } => format!("line {}: invalid: {reason}", r.line),
                    RowStatus::Valid { .. } => format!("line {}: valid", r.line),
                })
                .unwrap_or_else(|| "not in the audience".to_string());
            Err(Failure::new(
                Exit::Invalid,
                anyhow!("recipient {} gets no message: {why}", a.recipient),
            ))
        }
    }
}
