//! A plan's rows: every audience row with its outcome ([`Plan::rows`]), given from what the
//! plan's single pass over the audience kept, instead of reading, parsing, hashing and judging
//! the audience a second time (the run's seeding reads every row).
//!
//! What is kept ([`RowLog`]) is what the plan does not already hold: the rows that are not valid
//! (their id and why: 22 bytes each), the lines that do not follow their previous row's (a CSV
//! record over several lines, a blank line: 17 bytes each), and the id text of a row where it is
//! not its id's decimal form (every bad id, an id written `0042` or ` 42`: 13 bytes and the text).
//! A valid row's id, call and A/B variant come from the plan's own per-bucket ids, as its calls
//! do. These records are appended in audience order to a buffer of [`SPILL`] bytes, which goes to
//! an unnamed temporary file whenever it fills: an ordinary audience costs a few bytes of memory,
//! and an audience of millions of rejected rows no more memory than a few (`plan --output json`
//! keeps its flat memory), their records on disk. A duplicate's first line is found when the
//! rows are given (one walk of this log, only for the duplicated ids), not kept while the plan is
//! built.
//!
//! Invariants: the log is written in audience order, one [`RowLog::line`] per row, then the row's
//! id text, then its note; the rows given are exactly the rows the plan counted
//! (`Counts::total`), each with the outcome the plan gave it. Must not: read the audience.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

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
    id: u64,
    note: Note,
}

/// Bytes of records kept in memory before they go to the temporary file.
const SPILL: usize = 1 << 20;

const BREAK: u8 = 0;
const RAW: u8 = 1;
const NOTE: u8 = 2;

/// What [`Plan::rows`] needs besides the plan's valid ids (see the module doc). Rows are
/// numbered from 0 in audience order. Records, little-endian: a line break `[0, row, line]`, an
/// id text `[1, row, len: u32, text]`, a note `[2, row, id, kind: u8, arg: u32]`.
#[derive(Debug, Default)]
pub(super) struct RowLog {
    rows: u64,
    /// The records not in the file (all of them until the first spill).
    mem: Vec<u8>,
    /// The records spilled, and their length.
    file: Option<Mutex<std::fs::File>>,
    file_len: u64,
    /// The first error writing the file (reported by [`RowLog::finish`]).
    error: Option<std::io::Error>,
    /// The `audience.required` columns, by number.
    required: Vec<String>,
    /// Time zone problems, each once.
    zone_reasons: Vec<String>,
    zone_index: FastMap<u64, Vec<u32>>,
    last_line: u64,
    /// Rows noted as duplicates.
    duplicates: u64,
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
            self.record(BREAK, row, &line.to_le_bytes(), &[]);
        }
        self.last_line = line;
        self.rows += 1;
        row
    }

    /// Row `row`'s id text is `raw`, not its id's decimal form (or it has no id).
    pub fn raw(&mut self, row: u64, raw: &str) {
        let len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let text = raw.as_bytes().get(..len as usize).unwrap_or_default();
        self.record(RAW, row, &len.to_le_bytes(), text);
    }

    /// Row `row` (id `id`, 0 for a bad id) is not valid: `note`.
    pub fn note(&mut self, row: u64, id: u64, note: Note) {
        if matches!(note, Note::Duplicate) {
            self.duplicates += 1;
        }
        let (kind, arg): (u8, u32) = match note {
            Note::BadId => (0, 0),
            Note::Duplicate => (1, 0),
            Note::Suppressed(l) => (2, u32::from(l)),
            Note::Required(c) => (3, u32::from(c)),
            Note::Holdout => (4, 0),
            Note::BadZone(r) => (5, r),
        };
        let mut b = [0u8; 13];
        b[..8].copy_from_slice(&id.to_le_bytes());
        b[8] = kind;
        b[9..].copy_from_slice(&arg.to_le_bytes());
        self.record(NOTE, row, &b, &[]);
    }

    fn record(&mut self, tag: u8, row: u64, fixed: &[u8], text: &[u8]) {
        self.mem.push(tag);
        self.mem.extend_from_slice(&row.to_le_bytes());
        self.mem.extend_from_slice(fixed);
        self.mem.extend_from_slice(text);
        if self.mem.len() >= SPILL {
            self.spill();
        }
    }

    /// The buffer to the temporary file (made on the first spill).
    fn spill(&mut self) {
        if self.error.is_some() {
            return;
        }
        let r = (|| -> std::io::Result<()> {
            if self.file.is_none() {
                self.file = Some(Mutex::new(tempfile::tempfile()?));
            }
            if let Some(f) = &self.file {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                f.seek(SeekFrom::End(0))?;
                f.write_all(&self.mem)?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.file_len += self.mem.len() as u64;
                self.mem.clear();
            }
            Err(e) => self.error = Some(e),
        }
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

    /// Done building: drop what only building needs; the first error writing the temporary
    /// file, if any.
    pub fn finish(&mut self) -> Result<(), PlanError> {
        self.zone_index = FastMap::default();
        self.mem.shrink_to_fit();
        match self.error.take() {
            Some(e) => Err(spool_error(e)),
            None => Ok(()),
        }
    }

    /// Whether records went to the temporary file (tests).
    #[cfg(test)]
    pub fn spilled(&self) -> bool {
        self.file_len > 0
    }

    fn walk(&self) -> Walk<'_> {
        Walk {
            log: self,
            row: 0,
            line: 0,
            buf: Vec::new(),
            at: 0,
            file_at: 0,
            mem_at: 0,
        }
    }
}

fn spool_error(e: std::io::Error) -> PlanError {
    PlanError::Spool(format!(
        "the plan's temporary file of rejected rows in {}: {e} (free space there, or set TMPDIR \
         to another folder)",
        std::env::temp_dir().display()
    ))
}

/// One row of a [`Walk`].
struct Step {
    line: u64,
    noted: Option<Noted>,
    raw: Option<String>,
}

/// The log's rows in order, reading its records from the file, then from memory.
struct Walk<'a> {
    log: &'a RowLog,
    row: u64,
    line: u64,
    /// Records read and not yet taken: `buf[at..]`.
    buf: Vec<u8>,
    at: usize,
    file_at: u64,
    mem_at: usize,
}

impl Walk<'_> {
    /// At least `n` unread bytes in `buf[at..]`, if the log has them.
    fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() - self.at < n {
            self.buf.drain(..self.at);
            self.at = 0;
            let log = self.log;
            if self.file_at < log.file_len {
                let Some(f) = &log.file else {
                    return Ok(false);
                };
                let want = (log.file_len - self.file_at).min(SPILL as u64) as usize;
                let start = self.buf.len();
                self.buf.resize(start + want, 0);
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                f.seek(SeekFrom::Start(self.file_at))?;
                f.read_exact(&mut self.buf[start..])?;
                self.file_at += want as u64;
            } else if self.mem_at < log.mem.len() {
                self.buf.extend_from_slice(&log.mem[self.mem_at..]);
                self.mem_at = log.mem.len();
            } else {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next record's tag if it is row `row`'s.
    fn peek(&mut self, row: u64) -> std::io::Result<Option<u8>> {
        if !self.fill(9)? {
            return Ok(None);
        }
        let b = &self.buf[self.at..];
        Ok((u64_at(b, 1) == row).then_some(b[0]))
    }

    /// Take `n` bytes (after the record's tag and row).
    fn take(&mut self, n: usize) -> std::io::Result<&[u8]> {
        if !self.fill(9 + n)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a record cut short",
            ));
        }
        let start = self.at + 9;
        self.at = start + n;
        Ok(&self.buf[start..start + n])
    }

    fn step(&mut self) -> std::io::Result<Step> {
        let row = self.row;
        self.row += 1;
        self.line = if self.peek(row)? == Some(BREAK) {
            u64_at(self.take(8)?, 0)
        } else {
            self.line + 1
        };
        let raw = if self.peek(row)? == Some(RAW) {
            let len = u32_at(self.take(4)?, 0) as usize;
            let text = self.take_text(len)?;
            Some(text)
        } else {
            None
        };
        let noted = if self.peek(row)? == Some(NOTE) {
            let b = self.take(13)?;
            let (id, kind, arg) = (u64_at(b, 0), b[8], u32_at(b, 9));
            let note = match kind {
                0 => Note::BadId,
                1 => Note::Duplicate,
                2 => Note::Suppressed(arg as u16),
                3 => Note::Required(arg as u16),
                4 => Note::Holdout,
                _ => Note::BadZone(arg),
            };
            Some(Noted { id, note })
        } else {
            None
        };
        Ok(Step {
            line: self.line,
            noted,
            raw,
        })
    }

    /// The `len` bytes of text right after a taken id-text record's length.
    fn take_text(&mut self, len: usize) -> std::io::Result<String> {
        if !self.fill(len)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "an id text cut short",
            ));
        }
        let text = String::from_utf8_lossy(&self.buf[self.at..self.at + len]).into_owned();
        self.at += len;
        Ok(text)
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

impl Iterator for Walk<'_> {
    type Item = std::io::Result<Step>;

    fn next(&mut self) -> Option<std::io::Result<Step>> {
        (self.row < self.log.rows).then(|| self.step())
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
    /// An error reading the log before the first row, given as the first item.
    error: Option<PlanError>,
}

impl<'a> Rows<'a> {
    pub fn new(plan: &'a Plan) -> Rows<'a> {
        let (first_line, error) = match first_lines(plan) {
            Ok(m) => (m, None),
            Err(e) => (FastMap::default(), Some(spool_error(e))),
        };
        Rows {
            plan,
            walk: plan.log.walk(),
            valid_seen: 0,
            rank: vec![0; plan.group_start.len().saturating_sub(1)],
            first_line,
            error,
        }
    }
}

/// The duplicated ids' first lines: two walks of the log (the duplicated ids, then their first
/// rows), only when there are duplicates. An id's first row is never a duplicate; it is valid,
/// or noted with its id.
fn first_lines(plan: &Plan) -> std::io::Result<FastMap<u64, u64>> {
    let log = &plan.log;
    let mut first: FastMap<u64, u64> = FastMap::default();
    if log.duplicates == 0 {
        return Ok(first);
    }
    for step in log.walk() {
        if let Some(Noted {
            id,
            note: Note::Duplicate,
        }) = step?.noted
        {
            first.insert(id, 0);
        }
    }
    let mut left = first.len();
    let mut ids = ValidIds::new(plan);
    for step in log.walk() {
        let step = step?;
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
        if let Some(l) = first.get_mut(&id).filter(|l| **l == 0) {
            *l = step.line;
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    Ok(first)
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
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        let step = match self.walk.next()? {
            Ok(s) => s,
            Err(e) => {
                // Nothing more after an error.
                self.walk.row = self.plan.log.rows;
                return Some(Err(spool_error(e)));
            }
        };
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
                raw_id: step.raw,
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
                let raw = step.raw.unwrap_or_default();
                let reason = crate::audience::parse_id(&raw)
                    .err()
                    .unwrap_or_else(|| "not a valid id".to_string());
                return Some(Ok(AudienceRow {
                    line: step.line,
                    id: None,
                    raw_id: Some(raw),
                    status: RowStatus::Invalid { reason },
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
            raw_id: step.raw,
            status,
            variant_name: None,
        }))
    }
}
