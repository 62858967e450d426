//! The calls of a `--test-to` run: seed id i gets the Content rendered for the plan's i-th sample
//! recipient (round robin over the first few), grouped into calls the action allows.
//!
//! Invariants: each call's `variant` is the plan's variant of its Content and Ext (the sample's
//! `content_id`; [`crate::plan::variant_id`] without A/B variants), so a test call and the real run's
//! calls of one Content carry the same id; an id listed twice gets one message.
//! Must not: touch the journal or send.

use std::collections::BTreeMap;

use anyhow::anyhow;

use crate::exit::{Exit, Failure};
use crate::plan::{Plan, PlannedCall};
use crate::spec::Campaign;

/// The calls sending the plan's sample Contents to `ids` (see the module doc).
pub fn test_calls(c: &Campaign, plan: &Plan, ids: &[u64]) -> Result<Vec<PlannedCall>, Failure> {
    let samples = plan.samples();
    let msg_type = match plan.calls().next() {
        Some(Ok(call)) => call.msg_type,
        Some(Err(e)) => return Err(Failure::new(Exit::Invalid, e)),
        None => {
            return Err(Failure::new(
                Exit::Invalid,
                anyhow!(
                    "{}: the campaign has no valid recipients, so there is no rendered Content to test with",
                    c.path.display()
                ),
            ))
        }
    };
    if samples.is_empty() {
        return Err(Failure::new(
            Exit::Invalid,
            anyhow!("{}: no rendered sample to test with", c.path.display()),
        ));
    }
    let mut uniq: Vec<u64> = Vec::new();
    for &id in ids {
        if !uniq.contains(&id) {
            uniq.push(id);
        }
    }
    let mut groups: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (i, id) in uniq.iter().enumerate() {
        groups.entry(i % samples.len()).or_default().push(*id);
    }
    let max = c.action.max_receivers().max(1);
    let mut calls = Vec::new();
    for (si, ids) in groups {
        let s = &samples[si];
        // The sample's content id: its plan variant (with A/B variants, the variant's name is
        // part of it), equal to `crate::plan::variant_id` of its Content and Ext otherwise.
        let variant = s.content_id.clone();
        for chunk in ids.chunks(max) {
            calls.push(PlannedCall {
                seq: calls.len() as u64,
                variant: variant.clone(),
                receivers: chunk.to_vec(),
                msg_type,
                content: s.content.clone(),
                ext: s.ext.clone(),
            });
        }
    }
    Ok(calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanOptions;

    #[test]
    fn a_test_call_carries_the_plans_variant_of_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { ids: [1, 2] }\nmessage: { type: text, text: \"hi {{ recipient.id }}\", ext: { k: v } }\n";
        let c = crate::spec::parse_str(
            text,
            dir.path().join("t.yaml"),
            dir.path().to_path_buf(),
            &crate::spec::LoadOptions::default(),
        )
        .unwrap_or_else(|p| panic!("{p:?}"));
        let plan = crate::plan::build(&c, &PlanOptions::default()).expect("plan");
        let real: Vec<PlannedCall> = plan.calls().collect::<Result<_, _>>().expect("calls");
        let test = test_calls(&c, &plan, &[7, 8, 9, 7]).expect("test calls");
        // Ids 7 and 9 get recipient 1's Content, 8 gets recipient 2's; 7 once.
        assert_eq!(test.len(), 2);
        assert_eq!(test[0].receivers, vec![7, 9]);
        assert_eq!(test[1].receivers, vec![8]);
        for t in &test {
            let same = real
                .iter()
                .find(|r| r.content == t.content && r.ext == t.ext)
                .expect("the plan has this Content");
            assert_eq!(t.variant, same.variant, "{t:?}");
        }
    }
}
