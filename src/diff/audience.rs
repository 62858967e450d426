//! The audience and content comparison behind `plan --diff`.
//!
//! Each side's rows are observed while its plan is built ([`crate::plan::build_observed`]: the
//! audience is read once per side, by the plan itself) and condensed into a table of fixed-size
//! entries — id, line, state, group: 24 bytes a recipient, never the row's text — plus counters
//! of repeated ids and of invalid-id rows (keyed by a 64-bit hash of the id text). Both tables are
//! sorted by id and merged in one pass. Rows of the work tree that are newly invalid or newly
//! duplicate are found while they stream by, against the revision's counters. Content is compared
//! by the plans' 128-bit Content+Ext digests; only the few groups shown are rendered. Examples are
//! the first few in file order (bounded heaps by line).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};

use super::{
    AudienceDiff, Category, ContentDiff, ContentGroup, Example, ExtChange, GainedContent,
    Recipients, WordChange, EXAMPLES, GROUPS,
};
use crate::plan::{FastState, Plan, PlanError, RowEvent};

type FastMap<K, V> = HashMap<K, V, FastState>;

const SENT: u8 = 0;
const SUPPRESSED: u8 = 1;
const INVALID: u8 = 2;

/// One recipient of one side (the first row of its id). `aux` is the valid ordinal (then, once
/// resolved, the content group) for SENT, the list for SUPPRESSED, the reason for INVALID.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    line: u64,
    aux: u32,
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

/// One side's rows, condensed.
#[derive(Debug, Default)]
pub struct Rows {
    entries: Vec<Entry>,
    dups: FastMap<u64, u32>,
    bad_ids: FastMap<u64, u32>,
    /// Why rows with a valid id are invalid (few distinct reasons).
    reasons: Vec<String>,
    /// After side: invalid-id rows beyond the revision's, in file order (first few).
    new_bad: Category,
    /// After side: duplicate rows beyond the revision's, in file order (first few).
    new_dups: Category,
}

/// Collects one side's [`RowEvent`]s while its plan is built.
pub struct Collector<'a> {
    rows: Rows,
    /// The revision's rows, when this is the work tree's side (`None` inside: no revision file).
    before: Option<&'a Rows>,
    after_side: bool,
}

impl<'a> Collector<'a> {
    /// For the revision's side.
    pub fn before() -> Collector<'static> {
        Collector {
            rows: Rows::default(),
            before: None,
            after_side: false,
        }
    }

    /// For the work tree's side, compared with the revision's rows (if the file existed there).
    pub fn after(before: Option<&'a Rows>) -> Collector<'a> {
        Collector {
            rows: Rows::default(),
            before,
            after_side: true,
        }
    }

    pub fn observe(&mut self, ev: RowEvent<'_>) {
        let r = &mut self.rows;
        match ev {
            RowEvent::Valid { id, line, ordinal } => r.entries.push(Entry {
                id,
                line,
                aux: u32::try_from(ordinal).unwrap_or(u32::MAX),
                state: SENT,
            }),
            RowEvent::Suppressed { id, line, list } => r.entries.push(Entry {
                id,
                line,
                aux: u32::from(list),
                state: SUPPRESSED,
            }),
            // Held out rows are not sent: told apart from invalid ones by their reason.
            RowEvent::Holdout { id, line } => {
                let reason = "in the holdout (not sent)".to_string();
                let aux = match r.reasons.iter().position(|x| *x == reason) {
                    Some(i) => i,
                    None => {
                        r.reasons.push(reason);
                        r.reasons.len() - 1
                    }
                };
                r.entries.push(Entry {
                    id,
                    line,
                    aux: aux as u32,
                    state: INVALID,
                });
            }
            RowEvent::MissingRequired { .. } | RowEvent::BadZone { .. } => {
                let (id, line, reason) = match ev {
                    RowEvent::MissingRequired { id, line, column } => {
                        (id, line, format!("required column `{column}` is empty"))
                    }
                    RowEvent::BadZone { id, line, reason } => (id, line, reason.to_string()),
                    _ => return,
                };
                let aux = match r.reasons.iter().position(|x| *x == reason) {
                    Some(i) => i,
                    None => {
                        r.reasons.push(reason);
                        r.reasons.len() - 1
                    }
                };
                r.entries.push(Entry {
                    id,
                    line,
                    aux: aux as u32,
                    state: INVALID,
                });
            }
            RowEvent::Duplicate { id, line } => {
                let n = r.dups.entry(id).or_insert(0);
                *n += 1;
                let before = self
                    .before
                    .and_then(|b| b.dups.get(&id).copied())
                    .unwrap_or(0);
                if self.after_side && *n > before {
                    push(
                        &mut r.new_dups,
                        Example {
                            id: Some(id),
                            line_after: Some(line),
                            ..Example::default()
                        },
                    );
                }
            }
            RowEvent::BadId {
                line,
                raw_id,
                reason,
            } => {
                let h = text_hash(raw_id);
                let n = r.bad_ids.entry(h).or_insert(0);
                *n += 1;
                let before = self
                    .before
                    .and_then(|b| b.bad_ids.get(&h).copied())
                    .unwrap_or(0);
                if self.after_side && *n > before {
                    push(
                        &mut r.new_bad,
                        Example {
                            id: None,
                            raw_id: Some(raw_id.to_string()),
                            line_before: None,
                            line_after: Some(line),
                            detail: Some(reason.to_string()),
                        },
                    );
                }
            }
        }
    }

    pub fn finish(self) -> Rows {
        self.rows
    }
}

fn push(c: &mut Category, e: Example) {
    c.count += 1;
    if c.examples.len() < EXAMPLES {
        c.examples.push(e);
    }
}

/// A candidate example: ordered by line so a bounded max-heap keeps the first few.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cand {
    line: u64,
    id: u64,
    line_before: u64,
    line_after: u64,
    old_state: u8,
    aux: u32,
}

/// A category's count and its first few candidates by line.
#[derive(Default)]
struct Firsts {
    count: u64,
    heap: BinaryHeap<Cand>,
}

impl Firsts {
    fn add(&mut self, c: Cand) {
        self.count += 1;
        if self.heap.len() < EXAMPLES {
            self.heap.push(c);
        } else if self.heap.peek().is_some_and(|top| c < *top) {
            self.heap.pop();
            self.heap.push(c);
        }
    }

    fn into_category(self, detail: impl Fn(&Cand) -> Option<String>) -> Category {
        let mut v = self.heap.into_vec();
        v.sort_unstable();
        Category {
            count: self.count,
            examples: v
                .iter()
                .map(|c| Example {
                    id: Some(c.id),
                    raw_id: None,
                    line_before: (c.line_before > 0).then_some(c.line_before),
                    line_after: (c.line_after > 0).then_some(c.line_after),
                    detail: detail(c),
                })
                .collect(),
        }
    }
}

/// A (before group → after group) pair or a gained group: 40 bytes, however many there are (a
/// personalized template change makes one per recipient).
struct Pair {
    count: u64,
    id: u64,
    line_before: u64,
    line_after: u64,
}

impl Pair {
    fn example(&self) -> Example {
        Example {
            id: Some(self.id),
            raw_id: None,
            line_before: (self.line_before > 0).then_some(self.line_before),
            line_after: Some(self.line_after),
            detail: None,
        }
    }

    fn add(&mut self, id: u64, line_before: u64, line_after: u64) {
        self.count += 1;
        if line_after < self.line_after {
            self.id = id;
            self.line_before = line_before;
            self.line_after = line_after;
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

const ABSENT: u8 = u8::MAX;

fn state_of(s: u8) -> Option<u8> {
    (s != ABSENT).then_some(s)
}

/// Resolve valid ordinals to content groups and sort by id.
fn prepare(plan: &Plan, rows: &mut Rows) {
    for e in &mut rows.entries {
        if e.state == SENT {
            e.aux = plan.group_of_valid(u64::from(e.aux)).unwrap_or(0) as u32;
        }
    }
    rows.entries.sort_unstable_by_key(|e| e.id);
}

/// Compare the audiences and messages of two plans (either may be absent), given the rows each
/// side's build reported.
pub(super) fn compare(
    before: Option<(&Plan, &mut Rows)>,
    after: Option<(&Plan, &mut Rows)>,
) -> Result<(Recipients, AudienceDiff, ContentDiff), PlanError> {
    let mut empty_b = Rows::default();
    let mut empty_a = Rows::default();
    let (bp, b) = match before {
        Some((p, r)) => {
            prepare(p, r);
            (Some(p), r)
        }
        None => (None, &mut empty_b),
    };
    let (ap, a) = match after {
        Some((p, r)) => {
            prepare(p, r);
            (Some(p), r)
        }
        None => (None, &mut empty_a),
    };
    let mut rec = Recipients::default();
    let mut added = Firsts::default();
    let mut removed = Firsts::default();
    let mut newly_suppressed = Firsts::default();
    let mut unsuppressed = Firsts::default();
    let mut newly_invalid = Firsts::default();
    let mut fixed = Firsts::default();
    let mut pairs: FastMap<u64, Pair> = FastMap::default();
    let mut gained: FastMap<u32, Pair> = FastMap::default();

    let key = |p: Option<&Plan>, g: u32| p.and_then(|p| p.group_key(g as usize));
    let (mut i, mut j) = (0usize, 0usize);
    let (be, ae) = (&b.entries, &a.entries);
    while i < be.len() || j < ae.len() {
        let (o, n) = match (be.get(i), ae.get(j)) {
            (Some(o), Some(n)) if o.id == n.id => {
                i += 1;
                j += 1;
                (Some(*o), Some(*n))
            }
            (Some(o), Some(n)) if o.id < n.id => {
                i += 1;
                (Some(*o), None)
            }
            (Some(o), None) => {
                i += 1;
                (Some(*o), None)
            }
            (_, Some(n)) => {
                j += 1;
                (None, Some(*n))
            }
            (None, None) => break,
        };
        let os = o.map(|o| o.state).unwrap_or(ABSENT);
        if os == SENT {
            rec.before += 1;
        }
        let Some(n) = n else {
            if let Some(o) = o.filter(|o| o.state == SENT) {
                rec.lost += 1;
                removed.add(Cand {
                    line: o.line,
                    id: o.id,
                    line_before: o.line,
                    line_after: 0,
                    old_state: os,
                    aux: 0,
                });
            }
            continue;
        };
        let lb = o.map(|o| o.line).unwrap_or(0);
        let cand = Cand {
            line: n.line,
            id: n.id,
            line_before: lb,
            line_after: n.line,
            old_state: os,
            aux: n.aux,
        };
        match n.state {
            SENT => {
                rec.after += 1;
                match o {
                    Some(o) if o.state == SENT => {
                        if key(bp, o.aux) == key(ap, n.aux) {
                            rec.unchanged += 1;
                        } else {
                            rec.content_changed += 1;
                            pairs
                                .entry((u64::from(o.aux) << 32) | u64::from(n.aux))
                                .or_insert(Pair {
                                    count: 0,
                                    id: n.id,
                                    line_before: lb,
                                    line_after: n.line,
                                })
                                .add(n.id, lb, n.line);
                        }
                    }
                    _ => {
                        rec.gained += 1;
                        gained
                            .entry(n.aux)
                            .or_insert(Pair {
                                count: 0,
                                id: n.id,
                                line_before: lb,
                                line_after: n.line,
                            })
                            .add(n.id, lb, n.line);
                        match os {
                            ABSENT => added.add(cand),
                            SUPPRESSED => unsuppressed.add(cand),
                            _ => fixed.add(cand),
                        }
                    }
                }
            }
            SUPPRESSED => {
                if os == SENT {
                    rec.lost += 1;
                }
                if os != SUPPRESSED {
                    newly_suppressed.add(cand);
                }
            }
            _ => {
                if os == SENT {
                    rec.lost += 1;
                }
                if os != INVALID {
                    newly_invalid.add(cand);
                }
            }
        }
    }

    let label = |l: u32| {
        ap.and_then(|p| p.suppress_label(l as u16))
            .unwrap_or("a suppression list")
            .to_string()
    };
    let mut audience = AudienceDiff {
        added: added.into_category(|_| None),
        removed: removed.into_category(|_| None),
        newly_suppressed: newly_suppressed.into_category(|c| {
            Some(format!(
                "by {}; {}",
                label(c.aux),
                describe_state(state_of(c.old_state))
            ))
        }),
        unsuppressed: unsuppressed.into_category(|_| None),
        newly_invalid: newly_invalid.into_category(|c| {
            Some(format!(
                "{}; {}",
                a.reasons
                    .get(c.aux as usize)
                    .map(String::as_str)
                    .unwrap_or("invalid"),
                describe_state(state_of(c.old_state))
            ))
        }),
        fixed: fixed.into_category(|_| None),
        newly_duplicate: std::mem::take(&mut a.new_dups),
    };
    // Rows with a bad id join the rows invalid for an empty column, in file order.
    let bad = std::mem::take(&mut a.new_bad);
    let inv = &mut audience.newly_invalid;
    inv.count += bad.count;
    inv.examples.extend(bad.examples);
    inv.examples.sort_by_key(|e| e.line_after);
    inv.examples.truncate(EXAMPLES);
    // Say which row a duplicate repeats.
    for e in &mut audience.newly_duplicate.examples {
        if let Some(id) = e.id {
            if let Ok(k) = a.entries.binary_search_by_key(&id, |x| x.id) {
                e.detail = Some(format!("repeats line {}", a.entries[k].line));
            }
        }
    }

    let content = content_groups(bp, ap, pairs, gained)?;
    Ok((rec, audience, content))
}

fn largest<K: Into<u64>>(m: FastMap<K, Pair>, n: usize) -> (u64, Vec<(u64, Pair)>) {
    let total = m.len() as u64;
    let mut v: Vec<(u64, Pair)> = m.into_iter().map(|(k, p)| (k.into(), p)).collect();
    v.sort_by_key(|(_, p)| (Reverse(p.count), p.line_after));
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
