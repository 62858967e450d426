//! A plan's rows: every audience row with its outcome ([`Plan::rows`]), given from what the
//! plan's single pass over the audience kept, instead of reading, parsing, hashing and judging
//! the audience a second time (the run's seeding reads every row).
//!
//! What is kept ([`RowLog`]) is what the plan does not already hold: the rows that are not valid
//! (their id and why: 24 bytes each), the lines that do not follow their previous row's (a CSV
//! record over several lines, a blank line: 16 bytes each), and the id text of a row where it is
//! not its id's decimal form (every bad id, an id written `0042` or ` 42`: 16 bytes and the text).
//! A valid row's id, call and A/B variant come from the plan's own per-bucket ids, as its calls
//! do. So an ordinary audience costs a few bytes in all, and a row with a bad id about 40 bytes
//! and its text, like the 36 or so a valid row costs while the plan is built. A duplicate's first
//! line is found when the rows are given (one walk of this log, only for the duplicated ids), not
//! kept while the plan is built.
//!
//! Invariants: the log is written in audience order, one [`RowLog::line`] per row; the rows
//! given are exactly the rows the plan counted (`Counts::total`), each with the outcome the plan
//! gave it. Must not: read the audience.

use super::{AudienceRow, FastMap, Plan, PlanError, RowStatus};

/// Why a row is not valid (see [`RowStatus`]); the row's id where it has one.
#[derive(Debug, Clone, Copy)]
pub(super) enum Note {
    /// The id column holds no id (the text is in the log's raw ids).
    BadId,
    Duplicate,
    /// In suppression list number `.0`.
    Suppressed(u16),
    /// `audience.required` column number `.0` is empty.
    Required(u16),
    Holdout,
    /// Its time zone is not known: reason number `.0`.
    BadZone(u32),
}

#[derive(Debug, Clone, Copy)]
struct Noted {
    row: u64,
    id: u64,
    note: Note,
}

/// What [`Plan::rows`] needs besides the plan's valid ids (see the module doc). Rows are
/// numbered from 0 in audience order.
#[derive(Debug, Default)]
pub(super) struct RowLog {
    rows: u64,
    /// (row, line) of each row whose line is not its previous row's plus one (the first row's
    /// previous line is 0).
    breaks: Vec<(u64, u64)>,
    notes: Vec<Noted>,
    /// (row, end of its id text in `raw_text`) where the text is not the id's decimal form; a
    /// text starts where the previous one ends.
    raw: Vec<(u64, usize)>,
    raw_text: String,
    /// The `audience.required` columns, by number.
    required: Vec<String>,
    /// Time zone problems, each once.
    zone_reasons: Vec<String>,
    zone_index: FastMap<u64, Vec<u32>>,
    last_line: u64,
}

impl RowLog {
    pub fn new(required: Vec<String>) -> RowLog {
        RowLog {
            required,
            ..RowLog::default()
        }
    }

    /// The next row (number `rows`, the rows seen before) starts on `line`.
    pub fn line(&mut self, line: u64) -> u64 {
        let row = self.rows;
        if line != self.last_line.wrapping_add(1) {
            self.breaks.push((row, line));
        }
        self.last_line = line;
        self.rows += 1;
        row
    }

    /// Row `row`'s id text is `raw`, not its id's decimal form (or it has no id).
    pub fn raw(&mut self, row: u64, raw: &str) {
        self.raw_text.push_str(raw);
        self.raw.push((row, self.raw_text.len()));
    }

    /// Row `row` (id `id`, 0 for a bad id) is not valid: `note`.
    pub fn note(&mut self, row: u64, id: u64, note: Note) {
        self.notes.push(Noted { row, id, note });
    }

    /// The number of time zone problem `reason`, kept once.
    pub fn zone_reason(&mut self, reason: &str) -> u32 {
        let h = super::value_hash(reason);
        let same = self.zone_index.entry(h).or_default();
        if let Some(i) = same
            .iter()
            .find(|i| self.zone_reasons[**i as usize] == reason)
        {
            return *i;
        }
        let i = self.zone_reasons.len() as u32;
        self.zone_reasons.push(reason.to_string());
        same.push(i);
        i
    }

    /// Done building: drop what only building needs.
    pub fn finish(&mut self) {
        self.zone_index = FastMap::default();
        self.breaks.shrink_to_fit();
        self.notes.shrink_to_fit();
        self.raw.shrink_to_fit();
        self.raw_text.shrink_to_fit();
    }

    fn walk(&self) -> Walk<'_> {
        Walk {
            log: self,
            row: 0,
            line: 0,
            b: 0,
            n: 0,
            r: 0,
            text_at: 0,
        }
    }
}

/// One row of a [`Walk`].
struct Step<'a> {
    line: u64,
    noted: Option<&'a Noted>,
    raw: Option<&'a str>,
}

/// The log's rows in order.
struct Walk<'a> {
    log: &'a RowLog,
    row: u64,
    line: u64,
    b: usize,
    n: usize,
    r: usize,
    /// Where the next id text starts in `raw_text`.
    text_at: usize,
}

impl<'a> Iterator for Walk<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        let log = self.log;
        if self.row >= log.rows {
            return None;
        }
        let row = self.row;
        self.row += 1;
        self.line = match log.breaks.get(self.b) {
            Some(&(r, line)) if r == row => {
                self.b += 1;
                line
            }
            _ => self.line + 1,
        };
        let noted = match log.notes.get(self.n) {
            Some(n) if n.row == row => {
                self.n += 1;
                Some(n)
            }
            _ => None,
        };
        let raw = match log.raw.get(self.r) {
            Some(&(r, end)) if r == row => {
                self.r += 1;
                let text = log.raw_text.get(self.text_at..end);
                self.text_at = end;
                text
            }
            _ => None,
        };
        Some(Step {
            line: self.line,
            noted,
            raw,
        })
    }
}

/// [`Plan::rows`]: the log's rows, each valid one with its id, call and A/B variant from the
/// plan's buckets.
pub(super) struct Rows<'a> {
    plan: &'a Plan,
    walk: Walk<'a>,
    valid_seen: usize,
    rank: Vec<u32>,
    /// A duplicated id's first line.
    first_line: FastMap<u64, u64>,
}

impl<'a> Rows<'a> {
    pub fn new(plan: &'a Plan) -> Rows<'a> {
        let log = &plan.log;
        // The duplicated ids' first lines: one walk of the log, only when there are duplicates.
        // An id's first row is never a duplicate; it is valid, or noted with its id.
        let mut first_line: FastMap<u64, u64> = log
            .notes
            .iter()
            .filter(|n| matches!(n.note, Note::Duplicate))
            .map(|n| (n.id, 0))
            .collect();
        if !first_line.is_empty() {
            let mut left = first_line.len();
            let mut ids = ValidIds::new(plan);
            for step in log.walk() {
                let id = match step.noted {
                    Some(Noted {
                        note: Note::BadId | Note::Duplicate,
                        ..
                    }) => continue,
                    Some(n) => n.id,
                    None => match ids.next() {
                        Some((id, _)) => id,
                        None => break,
                    },
                };
                if let Some(l) = first_line.get_mut(&id).filter(|l| **l == 0) {
                    *l = step.line;
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
        Rows {
            plan,
            walk: log.walk(),
            valid_seen: 0,
            rank: vec![0; plan.group_start.len().saturating_sub(1)],
            first_line,
        }
    }
}

/// The valid rows' (id, bucket) in audience order.
struct ValidIds<'a> {
    plan: &'a Plan,
    seen: usize,
    rank: Vec<u32>,
}

impl<'a> ValidIds<'a> {
    fn new(plan: &'a Plan) -> ValidIds<'a> {
        ValidIds {
            plan,
            seen: 0,
            rank: vec![0; plan.group_start.len().saturating_sub(1)],
        }
    }

    fn next(&mut self) -> Option<(u64, usize)> {
        let (id, b, _) = valid_at(self.plan, &mut self.seen, &mut self.rank)?;
        Some((id, b))
    }
}

/// The next valid row (number `*seen`): its id, bucket and rank in the bucket.
fn valid_at(p: &Plan, seen: &mut usize, rank: &mut [u32]) -> Option<(u64, usize, u64)> {
    let b = match &p.row_bucket {
        Some(v) => v.get(*seen),
        None => p.row_group.get(*seen),
    }
    .copied()? as usize;
    let r = rank.get_mut(b)?;
    let at = u64::from(*r);
    *r += 1;
    *seen += 1;
    let id = *p.ids_by_group.get(p.group_start.get(b)? + at as usize)?;
    Some((id, b, at))
}

impl Iterator for Rows<'_> {
    type Item = Result<AudienceRow, PlanError>;

    fn next(&mut self) -> Option<Self::Item> {
        let p = self.plan;
        let step = self.walk.next()?;
        let Some(noted) = step.noted else {
            let Some((id, b, at)) = valid_at(p, &mut self.valid_seen, &mut self.rank) else {
                return Some(Err(PlanError::Changed(format!(
                    "line {}: more valid rows than planned",
                    step.line
                ))));
            };
            let max = p.campaign.action.max_receivers() as u64;
            let group = match &p.bucket_group {
                Some(bg) => bg.get(b).map_or(b, |g| *g as usize),
                None => b,
            };
            return Some(Ok(AudienceRow {
                line: step.line,
                id: Some(id),
                raw_id: step.raw.map(str::to_string),
                status: RowStatus::Valid {
                    call: p.group_call_base.get(b).copied().unwrap_or(0) + at / max,
                },
                variant_name: p.variant_name_of_group(group).map(str::to_string),
            }));
        };
        let log = &p.log;
        let id = noted.id;
        let status = match noted.note {
            Note::BadId => {
                let raw = step.raw.unwrap_or("");
                return Some(Ok(AudienceRow {
                    line: step.line,
                    id: None,
                    raw_id: Some(raw.to_string()),
                    status: RowStatus::Invalid {
                        reason: crate::audience::parse_id(raw)
                            .err()
                            .unwrap_or_else(|| "not a valid id".to_string()),
                    },
                    variant_name: None,
                }));
            }
            Note::Duplicate => RowStatus::Duplicate {
                first_line: self.first_line.get(&id).copied().unwrap_or(0),
            },
            Note::Suppressed(list) => RowStatus::Suppressed {
                list: p.suppress_label(list).unwrap_or_default().to_string(),
            },
            Note::Required(col) => RowStatus::Invalid {
                reason: format!(
                    "required column `{}` is empty",
                    log.required.get(col as usize).map_or("", String::as_str)
                ),
            },
            Note::Holdout => RowStatus::Holdout,
            Note::BadZone(r) => RowStatus::Invalid {
                reason: log
                    .zone_reasons
                    .get(r as usize)
                    .cloned()
                    .unwrap_or_default(),
            },
        };
        Some(Ok(AudienceRow {
            line: step.line,
            id: Some(id),
            raw_id: step.raw.map(str::to_string),
            status,
            variant_name: None,
        }))
    }
}
