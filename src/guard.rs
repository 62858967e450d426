//! The audience guard: the checks that refuse a campaign because of what its audience turned
//! out to be, and the list of rejected rows people are shown.
//!
//! Owns: the one [`check`] that `validate`, `plan` and `run` (the CLI and the daemon) apply to a
//! plan's counts — `guard.max_recipients`, an audience with no valid recipient (unless
//! `audience.allow_empty: true`) and `guard.max_invalid_ratio` — with the words all of them show;
//! and [`Rejected`], which keeps the first [`SHOWN`] rejected rows (line and reason) and, when
//! asked, every one of them in a temporary file, so memory stays flat at any audience size.
//!
//! Definitions: a *valid recipient* is a row left after invalid ids, rows with an empty
//! `audience.required` column, duplicates and suppression lists are taken out (what a run sends
//! to). A *rejected row* is an invalid one (a bad id or an empty required column): duplicates
//! and suppressed rows are not mistakes and are only counted. The invalid ratio is invalid rows
//! over all rows.
//!
//! Must not: read the audience itself (the plan's single pass reports rows through its
//! observer), print, or decide exit codes (callers map a refusal to `Exit::Invalid`).

use std::io::{BufRead, BufWriter, Seek, Write};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};

use crate::output::count;
use crate::plan::{Counts, RowEvent};
use crate::spec::Campaign;

/// `guard.max_invalid_ratio` when the campaign does not set it.
pub const DEFAULT_MAX_INVALID_RATIO: f64 = 0.05;
/// Rejected rows shown to people (`plan`, `validate`); JSON output lists all of them.
pub const SHOWN: usize = 10;

/// What the guard checks, from the campaign (a `--test-to` run has none: it sends to the listed
/// ids only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudienceGuard {
    pub max_recipients: Option<u64>,
    pub max_invalid_ratio: f64,
    pub allow_empty: bool,
}

impl AudienceGuard {
    pub fn of(c: &Campaign) -> AudienceGuard {
        AudienceGuard {
            max_recipients: c.guard_max_recipients,
            max_invalid_ratio: c
                .guard_max_invalid_ratio
                .unwrap_or(DEFAULT_MAX_INVALID_RATIO),
            allow_empty: c.audience.allow_empty,
        }
    }
}

/// Why the guard refuses an audience. The words are the same in `validate`, `plan` and `run`
/// (callers prefix the campaign file; `run` adds that nothing was sent).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardError {
    #[error(
        "the audience has {recipients} recipients but guard.max_recipients is {max}: check the audience file, or raise guard.max_recipients if this is intended"
    )]
    TooMany { recipients: u64, max: u64 },
    #[error(
        "the audience has no valid recipient ({}: {} invalid, {} duplicate, {} suppressed): check the audience file, or set `audience.allow_empty: true` if an empty audience is expected",
        count(*rows, "row", "rows"), invalid, duplicate, suppressed
    )]
    Empty {
        rows: u64,
        invalid: u64,
        duplicate: u64,
        suppressed: u64,
    },
    #[error(
        "{invalid} of {rows} rows are invalid ({}), more than guard.max_invalid_ratio {ratio} ({}) allows: is the export broken? Fix the audience file, or raise guard.max_invalid_ratio if this is expected",
        percent(*invalid as f64 / *rows as f64), percent(*ratio)
    )]
    TooManyInvalid { invalid: u64, rows: u64, ratio: f64 },
}

/// `0.6` → `60%`, `0.055` → `5.5%`.
fn percent(r: f64) -> String {
    let p = r * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round() as u64)
    } else {
        format!("{p:.1}%")
    }
}

/// The guard's verdict on a plan's counts: every refusal that applies (none: go).
pub fn check(guard: &AudienceGuard, n: &Counts) -> Vec<GuardError> {
    let mut out = Vec::new();
    if n.valid == 0 && !guard.allow_empty {
        out.push(GuardError::Empty {
            rows: n.total,
            invalid: n.invalid,
            duplicate: n.duplicate,
            suppressed: n.suppressed,
        });
    }
    if n.total > 0 && n.invalid as f64 / n.total as f64 > guard.max_invalid_ratio {
        out.push(GuardError::TooManyInvalid {
            invalid: n.invalid,
            rows: n.total,
            ratio: guard.max_invalid_ratio,
        });
    }
    if let Some(e) = check_max(guard.max_recipients, n.valid) {
        out.push(e);
    }
    out
}

/// `guard.max_recipients` alone (what the run's last step before the journal re-checks).
pub fn check_max(max: Option<u64>, recipients: u64) -> Option<GuardError> {
    max.filter(|m| recipients > *m)
        .map(|max| GuardError::TooMany { recipients, max })
}

/// The refusals as one message: `FILE: first` or `FILE: N problems` with one per line.
pub fn describe(file: &std::path::Path, errors: &[GuardError]) -> String {
    match errors {
        [one] => format!("{}: {one}", file.display()),
        many => {
            let mut s = format!("{}: {} problems", file.display(), many.len());
            for e in many {
                s.push_str(&format!("\n  {e}"));
            }
            s
        }
    }
}

/// One rejected audience row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// The line it starts on (inline lists: the 1-based position).
    pub line: u64,
    /// The id column as written.
    pub id: String,
    pub reason: String,
}

/// The rejected rows of one plan: the first [`SHOWN`], the total, and (with
/// [`Rejected::keep_all`]) every one in a temporary file, one JSON line each.
#[derive(Debug, Default)]
pub struct Rejected {
    pub first: Vec<RejectedRow>,
    pub total: u64,
    all: Option<BufWriter<std::fs::File>>,
    error: Option<String>,
}

impl Rejected {
    /// Keep only the first few.
    pub fn new() -> Rejected {
        Rejected::default()
    }

    /// Keep every rejected row too (in an unnamed temporary file: memory stays flat).
    pub fn keep_all() -> std::io::Result<Rejected> {
        Ok(Rejected {
            all: Some(BufWriter::new(tempfile::tempfile()?)),
            ..Rejected::default()
        })
    }

    /// Take one row event of the plan's pass (anything but a rejected row is ignored).
    pub fn observe(&mut self, e: RowEvent<'_>) {
        let row = match e {
            RowEvent::BadId {
                line,
                raw_id,
                reason,
            } => RejectedRow {
                line,
                id: raw_id.to_string(),
                reason: reason.to_string(),
            },
            RowEvent::MissingRequired { id, line, column } => RejectedRow {
                line,
                id: id.to_string(),
                reason: format!("column `{column}` is empty (audience.required)"),
            },
            _ => return,
        };
        self.total += 1;
        if let Some(w) = &mut self.all {
            let res = serde_json::to_writer(&mut *w, &row)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"));
            if let Err(e) = res {
                self.error.get_or_insert(e.to_string());
            }
        }
        if self.first.len() < SHOWN {
            self.first.push(row);
        }
    }

    /// The rows left out of [`Rejected::first`].
    pub fn more(&self) -> u64 {
        self.total - self.first.len() as u64
    }

    /// Every rejected row, for serializing as one JSON array read back from the temporary file
    /// (only the first few without [`Rejected::keep_all`]).
    pub fn all(mut self) -> std::io::Result<AllRejected> {
        if let Some(e) = self.error.take() {
            return Err(std::io::Error::other(format!(
                "cannot keep the rejected rows in a temporary file: {e}"
            )));
        }
        let file = match self.all.take() {
            Some(w) => {
                let mut f = w.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Some(std::sync::Mutex::new(std::io::BufReader::new(f)))
            }
            None => None,
        };
        Ok(AllRejected {
            first: self.first,
            file,
        })
    }
}

/// Every rejected row, serialized as a JSON array straight from the temporary file (see
/// [`Rejected::all`]). Serializes once (the file is read as it goes).
#[derive(Debug)]
pub struct AllRejected {
    first: Vec<RejectedRow>,
    file: Option<std::sync::Mutex<std::io::BufReader<std::fs::File>>>,
}

impl Serialize for AllRejected {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(file) = &self.file else {
            return self.first.serialize(s);
        };
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let mut seq = s.serialize_seq(None)?;
        let mut line = String::new();
        loop {
            line.clear();
            match f.read_line(&mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let row: RejectedRow =
                        serde_json::from_str(&line).map_err(serde::ser::Error::custom)?;
                    seq.serialize_element(&row)?;
                }
                Err(e) => return Err(serde::ser::Error::custom(e)),
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: u64, valid: u64, invalid: u64) -> Counts {
        Counts {
            total,
            valid,
            invalid,
            ..Counts::default()
        }
    }

    #[test]
    fn the_guard_names_its_numbers_and_key() {
        let g = AudienceGuard {
            max_recipients: Some(1000),
            max_invalid_ratio: DEFAULT_MAX_INVALID_RATIO,
            allow_empty: false,
        };
        assert!(check(&g, &counts(1000, 1000, 0)).is_empty());
        let e = check(&g, &counts(1200, 1200, 0));
        assert_eq!(
            e,
            [GuardError::TooMany {
                recipients: 1200,
                max: 1000
            }]
        );
        let e = check(&g, &counts(10, 4, 6));
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string(),
            "6 of 10 rows are invalid (60%), more than guard.max_invalid_ratio 0.05 (5%) allows: is the export broken? Fix the audience file, or raise guard.max_invalid_ratio if this is expected"
        );
        // Exactly at the ratio is allowed.
        assert!(check(&g, &counts(100, 95, 5)).is_empty());
        assert_eq!(check(&g, &counts(1000, 944, 56)).len(), 1);
        // Empty: an error unless allowed; all-invalid is both.
        assert!(matches!(
            check(&g, &counts(0, 0, 0))[..],
            [GuardError::Empty { rows: 0, .. }]
        ));
        assert_eq!(check(&g, &counts(3, 0, 3)).len(), 2);
        let allow = AudienceGuard {
            allow_empty: true,
            ..g
        };
        assert!(check(&allow, &counts(0, 0, 0)).is_empty());
        assert_eq!(percent(0.055), "5.5%");
    }

    #[test]
    fn rejected_rows_keep_the_first_few_and_stream_all() {
        let mut r = Rejected::keep_all().expect("temp file");
        for i in 0..25u64 {
            r.observe(RowEvent::BadId {
                line: i + 2,
                raw_id: "x",
                reason: "id `x` is not a whole number",
            });
            r.observe(RowEvent::Duplicate { id: 1, line: 1 });
        }
        assert_eq!((r.first.len(), r.total, r.more()), (SHOWN, 25, 15));
        let all = r.all().expect("all");
        let v: Vec<RejectedRow> =
            serde_json::from_str(&serde_json::to_string(&all).expect("json")).expect("rows");
        assert_eq!(v.len(), 25);
        assert_eq!(v[24].line, 26);
    }
}
