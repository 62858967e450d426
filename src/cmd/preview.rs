//! `imcast preview FILE --recipient ID`: the exact request body that recipient's call carries —
//! the same typed request the sender builds (`send::adapters::build_request`), serialized by the
//! same function the client signs and sends (`provider::client::request_body`), printed byte for
//! byte on one line with `--full`. Without `--full`, id lists longer than [`FOLD_ABOVE`] (a
//! batch call's up to 500 receivers) are folded to their first and last [`FOLD_KEEP`] ids and a
//! count ([`fold_id_lists`]); everything else stays byte for byte. The fold marker is plain text
//! inside the array, so the folded form is not valid JSON and cannot pass for the wire; stderr
//! says it is folded and how to get the exact bytes. Sends nothing.
//!
//! The folding is a small hand-written scan of the serialized body rather than a re-serialized
//! `serde_json::Value`: every byte outside the folded arrays must stay exactly what the client
//! sends, which re-serializing would not promise.

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
            local_date: None,
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
            let folded = if a.full { None } else { fold_id_lists(&text) };
            match &folded {
                Some(f) => crate::outln!("{}", f.text),
                None => crate::outln!("{text}"),
            }
            crate::errln!(
                "call {} of {} ({} receiver{}) to {}?Action={}&Version={}",
                call.seq + 1,
                plan.counts().calls,
                call.receivers.len(),
                if call.receivers.len() == 1 { "" } else { "s" },
                c.endpoint,
                req.action(),
                crate::provider::client::API_VERSION,
            );
            if !plan.assigner().is_trivial() {
                crate::errln!("{}", plan.assigner().explain(a.recipient));
            }
            if let Some(f) = &folded {
                let lists: Vec<String> = f
                    .lists
                    .iter()
                    .map(|(key, n)| format!("{key} ({n} ids)"))
                    .collect();
                crate::errln!(
                    "FOLDED for reading: {} shown as the first and last {FOLD_KEEP} ids and a count; \
                     this is not the exact body, nor valid JSON. `--full` prints the bytes on the wire.",
                    lists.join(", ")
                );
            }
            if let Some(id) = client_msg_id {
                crate::errln!(
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
                    RowStatus::Holdout => {
                        format!("line {}: {}", r.line, plan.assigner().explain(a.recipient))
                    }
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

/// Id lists longer than this are folded (without `--full`).
pub const FOLD_ABOVE: usize = 20;
/// How many ids a folded list keeps at each end.
pub const FOLD_KEEP: usize = 5;

/// A body with its long id lists folded.
#[derive(Debug, PartialEq, Eq)]
pub struct Folded {
    pub text: String,
    /// Each folded list's key (`Receiver`) and length, in order.
    pub lists: Vec<(String, usize)>,
}

/// Fold every JSON array of plain integers longer than [`FOLD_ABOVE`] in the compact JSON `body`
/// to `[a,b,c,d,e, …490 more ids folded: --full shows all…, v,w,x,y,z]`; None when nothing is that
/// long. Strings (the Content document inside `Content` is one) are skipped over, escapes
/// included, so only real arrays fold.
pub fn fold_id_lists(body: &str) -> Option<Folded> {
    let b = body.as_bytes();
    let mut out = String::with_capacity(body.len().min(4096));
    let mut lists = Vec::new();
    let (mut i, mut copied) = (0, 0);
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' => {
                if let Some((end, items)) = int_array(b, i) {
                    if items.len() > FOLD_ABOVE {
                        out.push_str(&body[copied..i]);
                        let head = &items[..FOLD_KEEP];
                        let tail = &items[items.len() - FOLD_KEEP..];
                        let more = items.len() - 2 * FOLD_KEEP;
                        out.push('[');
                        out.push_str(&head.join(","));
                        out.push_str(&format!(", …{more} more ids folded: --full shows all…, "));
                        out.push_str(&tail.join(","));
                        out.push(']');
                        lists.push((key_before(b, i), items.len()));
                        copied = end;
                    }
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if lists.is_empty() {
        return None;
    }
    out.push_str(&body[copied..]);
    Some(Folded { text: out, lists })
}

/// The object key an array at `b[at]` is the value of (`"Receiver":[`), or `list`.
fn key_before(b: &[u8], at: usize) -> String {
    let before = &b[..at];
    let Some(before) = before.strip_suffix(b"\":") else {
        return "list".into();
    };
    match before.iter().rposition(|c| *c == b'"') {
        Some(q) => String::from_utf8_lossy(&before[q + 1..]).into_owned(),
        None => "list".into(),
    }
}

/// If an array of plain integers (`[1,-2,3]`, compact) starts at `b[start]`, the index just
/// past its `]` and its items.
fn int_array(b: &[u8], start: usize) -> Option<(usize, Vec<&str>)> {
    let mut items = Vec::new();
    let mut i = start + 1;
    if b.get(i) == Some(&b']') {
        return Some((i + 1, items));
    }
    loop {
        let from = i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let digits = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == digits {
            return None;
        }
        items.push(std::str::from_utf8(&b[from..i]).ok()?);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b']') => return Some((i + 1, items)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_id_lists_fold_and_nothing_else_changes() {
        let ids: Vec<String> = (1..=500).map(|n| n.to_string()).collect();
        let body = format!(
            r#"{{"AppId":1,"Receiver":[{}],"Content":"{{\"text\":\"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22] \\\" ]\"}}","Ext":{{"k":"[9]"}}}}"#,
            ids.join(",")
        );
        let f = fold_id_lists(&body).expect("folds");
        assert_eq!(f.lists, vec![("Receiver".to_string(), 500)]);
        assert!(
            f.text.starts_with(
                r#"{"AppId":1,"Receiver":[1,2,3,4,5, …490 more ids folded: --full shows all…, 496,497,498,499,500],"Content":"#
            ),
            "{}",
            f.text
        );
        // The array inside the Content string is text, not an id list: untouched.
        let after = body.find(r#","Content""#).expect("content");
        assert!(f.text.ends_with(&body[after..]), "{}", f.text);
        assert!(serde_json::from_str::<serde_json::Value>(&f.text).is_err());
        // Short lists stay as they are.
        assert_eq!(
            fold_id_lists(r#"{"Receiver":[1,2,3],"MentionedUsers":[]}"#),
            None
        );
        let twenty: Vec<String> = (1..=FOLD_ABOVE).map(|n| n.to_string()).collect();
        assert_eq!(fold_id_lists(&format!("[{}]", twenty.join(","))), None);
    }
}
