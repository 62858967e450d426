//! `imcast preview FILE --recipient ID`: the exact request body that recipient's call carries —
//! the same typed request the sender builds (`send::adapters::build_request`), serialized by the
//! same function the client signs and sends (`provider::client::request_body`), printed byte for
//! byte on one line. Sends nothing.

use anyhow::anyhow;

use crate::action::Action;
use crate::cli::{GlobalArgs, PreviewArgs};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::plan::{PlanOptions, RowStatus};
use crate::spec::LoadOptions;

/// The run id preview derives a SendMessage `ClientMsgId` from: a real run uses its own run id,
/// which does not exist before `imcast run` creates it.
pub const PREVIEW_RUN_ID: &str = "<run-id>";

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
            let target = call.receivers.first().copied().unwrap_or(0);
            let client_msg_id = (c.action == Action::Conversation)
                .then(|| crate::send::client_msg_id(PREVIEW_RUN_ID, target, &call.variant));
            let req = crate::send::adapters::build_request(
                &c,
                &call,
                &call.receivers,
                client_msg_id.clone(),
            );
            let body =
                crate::provider::client::request_body(req.action(), &req).exit(Exit::Invalid)?;
            let text = String::from_utf8(body).exit(Exit::Internal)?;
            crate::outln!("{text}");
            eprintln!(
                "call {} of {} ({} receiver{}) to {}?Action={}&Version={}",
                call.seq + 1,
                plan.counts().calls,
                call.receivers.len(),
                if call.receivers.len() == 1 { "" } else { "s" },
                c.endpoint,
                req.action(),
                crate::provider::client::API_VERSION,
            );
            if let Some(id) = client_msg_id {
                eprintln!(
                    "ClientMsgId {id} is shown for the placeholder run id `{PREVIEW_RUN_ID}`: each run sends \
                     \"imcast-\" + the first 32 hex digits of sha256(run id, 0x00, conversation id, 0x00, \
                     content variant {}), the same on every retry and resume of that run",
                    call.variant
                );
            }
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
