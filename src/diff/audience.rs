//! The streaming audience and content comparison behind `plan --diff`.
//!
//! The before side is streamed first ([`Plan::rows`]) into a table of fixed-size entries — id,
//! line, state, content group: 24 bytes a recipient, no text — sorted by id, plus counters of
//! repeated ids and of invalid-id rows (keyed by a 64-bit hash of the id text). The after side is
//! then streamed once and each row classified on the spot by a binary search in that table; a bit
//! per before entry records that it was seen, so the before-only recipients (removed) are found
//! in one pass over the table afterwards. Nothing of the after side is kept per row. Content is
//! compared by the plans' 128-bit Content+Ext digests; only the few groups shown are rendered.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

use super::{
    AudienceDiff, Category, ContentDiff, ContentGroup, Example, ExtChange, GainedContent,
    Recipients, WordChange, EXAMPLES, GROUPS,
};
use crate::plan::{FastState, Plan, PlanError, RowStatus};

type FastMap<K, V> = HashMap<K, V, FastState>;

const SENT: u8 = 0;
const SUPPRESSED: u8 = 1;
const INVALID: u8 = 2;

/// One before-side recipient (the first row of its id).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    line: u64,
    group: u32,
    state: u8,
}

fn text_hash(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn variant(key: u128) -> String {
    format!("{:012x}", key >> 80)
}

/// The before side, condensed.
#[derive(Default)]
struct Before {
    entries: Vec<Entry>,
    dups: FastMap<u64, u32>,
    invalid_ids: FastMap<u64, u32>,
    /// Recipients who got a message.
    sent: u64,
}

fn scan_before(p: &Plan) -> Result<Before, PlanError> {
    let mut b = Before {
        entries: Vec::with_capacity(p.counts().total as usize),
        ..Before::default()
    };
    for row in p.rows() {
        let row = row?;
        let Some(id) = row.id else {
            *b.invalid_ids.entry(text_hash(&row.raw_id)).or_insert(0) += 1;
            continue;
        };
        let (state, group) = match &row.status {
            RowStatus::Duplicate { .. } => {
                *b.dups.entry(id).or_insert(0) += 1;
                continue;
            }
            RowStatus::Valid { call } => {
                b.sent += 1;
                (SENT, p.group_of_call(*call).unwrap_or(0) as u32)
            }
            RowStatus::Suppressed { .. } => (SUPPRESSED, 0),
            RowStatus::Invalid { .. } => (INVALID, 0),
        };
        b.entries.push(Entry {
            id,
            line: row.line,
            group,
            state,
        });
    }
    b.entries.sort_unstable_by_key(|e| e.id);
    Ok(b)
}

fn push(c: &mut Category, e: Example) {
    c.count += 1;
    if c.examples.len() < EXAMPLES {
        c.examples.push(e);
    }
}

/// A (before group → after group) pair or a gained group: 40 bytes, however many there are (a
/// personalized template change makes one per recipient).
struct Pair {
    count: u64,
    id: u64,
    line_before: u64,
    line_after: u64,
    order: u64,
}

impl Pair {
    fn new(id: u64, line_before: Option<u64>, line_after: u64, order: u64) -> Pair {
        Pair {
            count: 0,
            id,
            line_before: line_before.unwrap_or(0),
            line_after,
            order,
        }
    }

    fn example(&self) -> Example {
        Example {
            id: Some(self.id),
            raw_id: None,
            line_before: (self.line_before > 0).then_some(self.line_before),
            line_after: Some(self.line_after),
            detail: None,
        }
    }
}

fn describe_state(state: Option<u8>) -> &'static str {
    match state {
        None => "not in the audience before",
        Some(SENT) => "got a message before",
        Some(SUPPRESSED) => "suppressed before",
        _ => "invalid before",
    }
}

/// Compare the audiences and messages of two plans (either may be absent).
pub(super) fn compare(
    before: Option<&Plan>,
    after: Option<&Plan>,
) -> Result<(Recipients, AudienceDiff, ContentDiff), PlanError> {
    let b = match before {
        Some(p) => scan_before(p)?,
        None => Before::default(),
    };
    let mut seen = vec![false; b.entries.len()];
    let mut r = Recipients {
        before: b.sent,
        ..Recipients::default()
    };
    let mut a = AudienceDiff::default();
    let mut pairs: FastMap<u64, Pair> = FastMap::default();
    let mut gained: FastMap<u32, Pair> = FastMap::default();
    let mut new_dups: FastMap<u64, u32> = FastMap::default();
    let mut new_invalid: FastMap<u64, u32> = FastMap::default();
    let mut order = 0u64;

    if let Some(p) = after {
        for row in p.rows() {
            let row = row?;
            let Some(id) = row.id else {
                let h = text_hash(&row.raw_id);
                let n = new_invalid.entry(h).or_insert(0);
                *n += 1;
                if *n > b.invalid_ids.get(&h).copied().unwrap_or(0) {
                    let detail = match &row.status {
                        RowStatus::Invalid { reason } => Some(reason.clone()),
                        _ => None,
                    };
                    push(
                        &mut a.newly_invalid,
                        Example {
                            id: None,
                            raw_id: Some(row.raw_id.clone()),
                            line_before: None,
                            line_after: Some(row.line),
                            detail,
                        },
                    );
                }
                continue;
            };
            if let RowStatus::Duplicate { first_line } = &row.status {
                let n = new_dups.entry(id).or_insert(0);
                *n += 1;
                if *n > b.dups.get(&id).copied().unwrap_or(0) {
                    push(
                        &mut a.newly_duplicate,
                        Example {
                            id: Some(id),
                            line_after: Some(row.line),
                            detail: Some(format!("repeats line {first_line}")),
                            ..Example::default()
                        },
                    );
                }
                continue;
            }
            let old = b.entries.binary_search_by_key(&id, |e| e.id).ok().map(|i| {
                seen[i] = true;
                b.entries[i]
            });
            let ex = |detail: Option<String>| Example {
                id: Some(id),
                raw_id: None,
                line_before: old.map(|o| o.line),
                line_after: Some(row.line),
                detail,
            };
            let old_state = old.map(|o| o.state);
            match &row.status {
                RowStatus::Valid { call } => {
                    r.after += 1;
                    let g = p.group_of_call(*call).unwrap_or(0) as u32;
                    match old {
                        Some(o) if o.state == SENT => {
                            let ok = before.and_then(|bp| bp.group_key(o.group as usize));
                            let nk = p.group_key(g as usize);
                            if ok == nk {
                                r.unchanged += 1;
                            } else {
                                r.content_changed += 1;
                                let k = (u64::from(o.group) << 32) | u64::from(g);
                                let e = pairs.entry(k).or_insert_with(|| {
                                    order += 1;
                                    Pair::new(id, old.map(|o| o.line), row.line, order)
                                });
                                e.count += 1;
                            }
                        }
                        _ => {
                            r.gained += 1;
                            let e = gained.entry(g).or_insert_with(|| {
                                order += 1;
                                Pair::new(id, old.map(|o| o.line), row.line, order)
                            });
                            e.count += 1;
                            match old_state {
                                None => push(&mut a.added, ex(None)),
                                Some(SUPPRESSED) => push(&mut a.unsuppressed, ex(None)),
                                _ => push(&mut a.fixed, ex(None)),
                            }
                        }
                    }
                }
                RowStatus::Suppressed { list } => {
                    if old_state == Some(SENT) {
                        r.lost += 1;
                    }
                    if old_state != Some(SUPPRESSED) {
                        push(
                            &mut a.newly_suppressed,
                            ex(Some(format!("by {list}; {}", describe_state(old_state)))),
                        );
                    }
                }
                RowStatus::Invalid { reason } => {
                    if old_state == Some(SENT) {
                        r.lost += 1;
                    }
                    if old_state != Some(INVALID) {
                        push(
                            &mut a.newly_invalid,
                            ex(Some(format!("{reason}; {}", describe_state(old_state)))),
                        );
                    }
                }
                RowStatus::Duplicate { .. } => {}
            }
        }
    }

    // Before-side recipients the after side does not have.
    let mut first_removed: BinaryHeap<(u64, u64)> = BinaryHeap::new();
    for (e, s) in b.entries.iter().zip(seen.iter()) {
        if *s || e.state != SENT {
            continue;
        }
        r.lost += 1;
        a.removed.count += 1;
        first_removed.push((e.line, e.id));
        if first_removed.len() > EXAMPLES {
            first_removed.pop();
        }
    }
    let mut removed: Vec<(u64, u64)> = first_removed.into_vec();
    removed.sort_unstable();
    a.removed.examples = removed
        .into_iter()
        .map(|(line, id)| Example {
            id: Some(id),
            line_before: Some(line),
            ..Example::default()
        })
        .collect();

    let content = content_groups(before, after, pairs, gained)?;
    Ok((r, a, content))
}

fn largest<K: Into<u64>>(m: FastMap<K, Pair>, n: usize) -> (u64, Vec<(u64, Pair)>) {
    let total = m.len() as u64;
    let mut v: Vec<(u64, Pair)> = m.into_iter().map(|(k, p)| (k.into(), p)).collect();
    v.sort_by_key(|(_, p)| (Reverse(p.count), p.order));
    v.truncate(n);
    (total, v)
}

fn text_of(content: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(content).ok()?;
    let o = v.as_object()?;
    if o.len() != 1 {
        return None;
    }
    o.get("text")?.as_str().map(str::to_string)
}

/// Word-level diff (similar's word tokenizer), runs of the same kind merged.
pub(super) fn words(before: &str, after: &str) -> Vec<WordChange> {
    let d = similar::TextDiff::from_words(before, after);
    let mut out: Vec<WordChange> = Vec::new();
    for ch in d.iter_all_changes() {
        let op = match ch.tag() {
            similar::ChangeTag::Equal => "equal",
            similar::ChangeTag::Delete => "delete",
            similar::ChangeTag::Insert => "insert",
        };
        match out.last_mut() {
            Some(last) if last.op == op => last.text.push_str(ch.value()),
            _ => out.push(WordChange {
                op: op.to_string(),
                text: ch.value().to_string(),
            }),
        }
    }
    out
}

fn ext_changes(b: &BTreeMap<String, String>, a: &BTreeMap<String, String>) -> Vec<ExtChange> {
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| ExtChange {
            key: k.clone(),
            before: b.get(k).cloned(),
            after: a.get(k).cloned(),
        })
        .collect()
}

fn content_groups(
    before: Option<&Plan>,
    after: Option<&Plan>,
    pairs: FastMap<u64, Pair>,
    gained: FastMap<u32, Pair>,
) -> Result<ContentDiff, PlanError> {
    let changed: u64 = pairs.values().map(|p| p.count).sum();
    let (groups_total, top) = largest(pairs, GROUPS);
    let (_, top_gained) = largest(gained, 3);
    let mut out = ContentDiff {
        changed,
        groups_total,
        ..ContentDiff::default()
    };
    if let (Some(bp), Some(ap)) = (before, after) {
        let bg: Vec<usize> = top.iter().map(|(k, _)| (k >> 32) as usize).collect();
        let ag: Vec<usize> = top
            .iter()
            .map(|(k, _)| (k & 0xffff_ffff) as usize)
            .collect();
        let bc = bp.group_contents(&bg)?;
        let ac = ap.group_contents(&ag)?;
        for (((k, p), (bcontent, bext)), (acontent, aext)) in top.into_iter().zip(bc).zip(ac) {
            let bkey = bp.group_key((k >> 32) as usize).unwrap_or(0);
            let akey = ap.group_key((k & 0xffff_ffff) as usize).unwrap_or(0);
            let (field, b, a) = match (text_of(&bcontent), text_of(&acontent)) {
                (Some(b), Some(a)) => ("text", b, a),
                _ => ("content", bcontent, acontent),
            };
            out.groups.push(ContentGroup {
                before_variant: variant(bkey),
                after_variant: variant(akey),
                count: p.count,
                example: p.example(),
                field: field.to_string(),
                words: words(&b, &a),
                before: b,
                after: a,
                ext: ext_changes(&bext, &aext),
            });
        }
    }
    if let Some(ap) = after {
        let gs: Vec<usize> = top_gained.iter().map(|(k, _)| *k as usize).collect();
        let cs = ap.group_contents(&gs)?;
        for ((k, p), (content, ext)) in top_gained.into_iter().zip(cs) {
            out.gained.push(GainedContent {
                variant: variant(ap.group_key(k as usize).unwrap_or(0)),
                count: p.count,
                example: p.example(),
                content,
                ext,
            });
        }
    }
    Ok(out)
}
