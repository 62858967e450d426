//! The audience: ids (and per-row template columns) streamed from a CSV file or an inline list,
//! plus suppression lists.
//!
//! Invariants: the CSV is read record by record, never loaded whole (what grows is the caller's
//! choice: a set of ids at 8 bytes each); ids are parsed from their text straight into `u64`
//! (never via a float, so ids above 2^53 survive) and must be at most `i64::MAX` (the provider's
//! ids are signed 64-bit `Long`s: a larger one is an invalid row, never sent); a header row is required and the id column must
//! be in it; a UTF-8 BOM, CRLF line ends and quoted fields (also spanning lines) are handled; every
//! row keeps the line it starts on. Every byte read is hashed as it streams by, so the plan hash
//! covers the exact file content without a second read.
//! This module decides nothing about duplicates or suppression: `plan` does.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::files::{Files, Input};
use crate::spec::Source;

#[derive(Debug, thiserror::Error)]
pub enum AudienceError {
    #[error("{path}: cannot read: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {message}")]
    Csv {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: the file is empty: a header row naming the columns is required (e.g. `user_id,name`)")]
    NoHeader { path: PathBuf },
    #[error("{path}: no column `{column}` in the header (columns: {found}); set `id_column:` to the column holding the ids")]
    MissingIdColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: `audience.required` names column `{column}`, which is not in the header (columns: {found})")]
    MissingRequiredColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("{path}: line {line}: suppression list id `{raw}` is invalid ({reason}); fix the list — a suppression list is never partly applied")]
    BadSuppressionId {
        path: PathBuf,
        line: u64,
        raw: String,
        reason: String,
    },
}

/// Parse an id: a non-negative integer of at most `i64::MAX` (the provider's ids are signed
/// 64-bit `Long`s), surrounding spaces allowed.
pub fn parse_id(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("missing id".to_string());
    }
    if s.starts_with('-') && s.len() > 1 && s[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("id `{s}` is negative"));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("id `{s}` is not a whole number"));
    }
    match s.parse::<u64>() {
        Ok(v) => check_id(v),
        Err(_) => Err(too_large(s)),
    }
}

/// An id the provider accepts: at most `i64::MAX`.
pub fn check_id(v: u64) -> Result<u64, String> {
    if v > crate::provider::wire::MAX_LONG {
        Err(too_large(&v.to_string()))
    } else {
        Ok(v)
    }
}

fn too_large(s: &str) -> String {
    format!(
        "id `{s}` is larger than {}, the largest id the provider accepts (user and conversation ids are signed 64-bit); it is never sent",
        crate::provider::wire::MAX_LONG
    )
}

/// A reader that hashes every byte it passes on and keeps a window of the most recent bytes,
/// so a record's true first line can be found (see [`HashingReader::true_line`]).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    window: Vec<u8>,
    window_start: u64,
}

const WINDOW_MAX: usize = 1 << 20;
const WINDOW_KEEP: usize = 256 << 10;

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// csv reports a record's position before it skips the terminator left over from the
    /// previous record (the `\n` of a CRLF) and blank lines, so with CRLF files its line numbers
    /// lag. Skip that run of `\r`/`\n` bytes and count its newlines. Falls back to the reported
    /// line if the bytes are no longer in the window (a record longer than 256 KiB).
    fn true_line(&self, reported_line: u64, byte: u64) -> u64 {
        if byte < self.window_start {
            return reported_line;
        }
        let from = (byte - self.window_start) as usize;
        let newlines = self
            .window
            .get(from..)
            .unwrap_or(&[])
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .filter(|b| **b == b'\n')
            .count() as u64;
        reported_line + newlines
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.window.extend_from_slice(&buf[..n]);
        if self.window.len() > WINDOW_MAX {
            let drop = self.window.len() - WINDOW_KEEP;
            self.window.drain(..drop);
            self.window_start += drop as u64;
        }
        Ok(n)
    }
}

/// Where a row is, so it can be found again (a byte offset in the CSV, or the list index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowPos(pub u64);

/// One audience row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line the row starts on (inline lists: 1-based index).
    pub line: u64,
    pub pos: RowPos,
    /// 0-based row number in the audience (header excluded).
    pub index: u64,
    pub raw_id: String,
    pub id: Result<u64, String>,
    /// All fields, in header order (missing trailing fields are absent). Empty for inline ids.
    pub fields: csv::StringRecord,
}

/// A row without its fields (see [`AudienceReader::next_row_into`]).
#[derive(Debug, Clone)]
pub struct RowMeta {
    pub line: u64,
    pub pos: RowPos,
    pub index: u64,
    pub id: Result<u64, String>,
}

/// The columns of a CSV audience.
#[derive(Debug, Clone)]
pub struct Header {
    pub names: Arc<Vec<String>>,
    pub id_index: usize,
}

fn csv_builder() -> csv::ReaderBuilder {
    let mut b = csv::ReaderBuilder::new();
    b.has_headers(false).flexible(true);
    b
}

fn read_header(
    rdr: &mut csv::Reader<impl Read>,
    path: &Path,
) -> Result<Vec<String>, AudienceError> {
    let mut rec = csv::StringRecord::new();
    match rdr.read_record(&mut rec) {
        Ok(true) => {}
        Ok(false) => {
            return Err(AudienceError::NoHeader {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(csv_err(path, &e)),
    }
    let names: Vec<String> = rec
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let f = if i == 0 {
                f.trim_start_matches('\u{feff}')
            } else {
                f
            };
            f.trim().to_string()
        })
        .collect();
    if names.iter().all(|n| n.is_empty()) {
        return Err(AudienceError::NoHeader {
            path: path.to_path_buf(),
        });
    }
    Ok(names)
}

fn csv_err(path: &Path, e: &csv::Error) -> AudienceError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 (save the file as UTF-8)".to_string(),
        _ => e.to_string(),
    };
    AudienceError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn open(files: &Files, path: &Path) -> Result<Input, AudienceError> {
    files.open(path).map_err(|e| AudienceError::Open {
        path: path.to_path_buf(),
        source: e,
    })
}

#[allow(clippy::large_enum_variant)] // one per open audience; boxing buys nothing
enum Inner {
    Csv {
        path: PathBuf,
        rdr: csv::Reader<HashingReader<Input>>,
        id_index: usize,
    },
    Ids {
        ids: Arc<Vec<u64>>,
        next: usize,
    },
}

/// Streams the rows of an audience source in file order.
pub struct AudienceReader {
    inner: Inner,
    header: Option<Header>,
    index: u64,
    done: bool,
}

impl AudienceReader {
    /// Open a source and read its header.
    pub fn open(source: &Source) -> Result<AudienceReader, AudienceError> {
        Self::open_in(source, &Files::WorkTree)
    }

    /// [`AudienceReader::open`] reading the CSV from `files` (the work tree or a git revision).
    pub fn open_in(source: &Source, files: &Files) -> Result<AudienceReader, AudienceError> {
        match source {
            Source::Csv { path, id_column } => {
                let f = open(files, path)?;
                let mut rdr = csv_builder().from_reader(HashingReader::new(f));
                let names = read_header(&mut rdr, path)?;
                let id_index = names.iter().position(|n| n == id_column).ok_or_else(|| {
                    AudienceError::MissingIdColumn {
                        path: path.clone(),
                        column: id_column.clone(),
                        found: names.join(", "),
                    }
                })?;
                Ok(AudienceReader {
                    inner: Inner::Csv {
                        path: path.clone(),
                        rdr,
                        id_index,
                    },
                    header: Some(Header {
                        names: Arc::new(names),
                        id_index,
                    }),
                    index: 0,
                    done: false,
                })
            }
            Source::Ids(ids) => Ok(AudienceReader {
                inner: Inner::Ids {
                    ids: Arc::new(ids.clone()),
                    next: 0,
                },
                header: None,
                index: 0,
                done: false,
            }),
        }
    }

    /// The CSV header; `None` for inline ids.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The next row, `Ok(None)` at the end.
    pub fn next_row(&mut self) -> Result<Option<Row>, AudienceError> {
        let mut rec = csv::StringRecord::new();
        let Some(meta) = self.next_row_into(&mut rec)? else {
            return Ok(None);
        };
        let raw_id = match &self.inner {
            Inner::Csv { id_index, .. } => rec.get(*id_index).unwrap_or("").to_string(),
            Inner::Ids { ids, .. } => ids
                .get(meta.index as usize)
                .map(u64::to_string)
                .unwrap_or_default(),
        };
        Ok(Some(Row {
            line: meta.line,
            pos: meta.pos,
            index: meta.index,
            raw_id,
            id: meta.id,
            fields: rec,
        }))
    }

    /// Like [`AudienceReader::next_row`], but the fields go into `rec` (reused across rows: no
    /// allocation per row once it has grown) and the raw id is not copied out. The plan's hot
    /// path; the row is the same one `next_row` would return.
    pub fn next_row_into(
        &mut self,
        rec: &mut csv::StringRecord,
    ) -> Result<Option<RowMeta>, AudienceError> {
        if self.done {
            return Ok(None);
        }
        match &mut self.inner {
            Inner::Csv {
                path,
                rdr,
                id_index,
            } => {
                loop {
                    match rdr.read_record(rec) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.done = true;
                            return Ok(None);
                        }
                        Err(e) => return Err(csv_err(path, &e)),
                    }
                    // A completely blank line (one empty field) is not a row.
                    if rec.len() == 1 && rec.get(0).is_some_and(|f| f.trim().is_empty()) {
                        continue;
                    }
                    break;
                }
                let (line, byte) = rec
                    .position()
                    .map(|p| (p.line(), p.byte()))
                    .unwrap_or((0, 0));
                let line = rdr.get_ref().true_line(line, byte);
                let id = parse_id(rec.get(*id_index).unwrap_or(""));
                let index = self.index;
                self.index += 1;
                Ok(Some(RowMeta {
                    line,
                    pos: RowPos(byte),
                    index,
                    id,
                }))
            }
            Inner::Ids { ids, next } => {
                let Some(id) = ids.get(*next).copied() else {
                    self.done = true;
                    return Ok(None);
                };
                let i = *next as u64;
                *next += 1;
                self.index += 1;
                rec.clear();
                Ok(Some(RowMeta {
                    line: i + 1,
                    pos: RowPos(i),
                    index: i,
                    id: check_id(id),
                }))
            }
        }
    }

    /// Read to the end and return the sha256 of every byte of the source (inline lists: of the
    /// ids as decimal lines).
    pub fn finish(mut self) -> Result<[u8; 32], AudienceError> {
        let mut rec = csv::StringRecord::new();
        while self.next_row_into(&mut rec)?.is_some() {}
        match self.inner {
            Inner::Csv { rdr, .. } => Ok(rdr.into_inner().hasher.finalize().into()),
            Inner::Ids { ids, .. } => {
                let mut h = Sha256::new();
                for id in ids.iter() {
                    h.update(id.to_string().as_bytes());
                    h.update(b"\n");
                }
                Ok(h.finalize().into())
            }
        }
    }
}

/// A forward-only cursor that finds rows again by position (positions must be asked for in
/// ascending order, as plan order guarantees). Used to re-render at send time.
pub struct RowCursor {
    inner: CursorInner,
}

#[allow(clippy::large_enum_variant)] // one per call iterator
enum CursorInner {
    Csv {
        path: PathBuf,
        rdr: csv::Reader<std::io::BufReader<Input>>,
        id_index: usize,
        rec: csv::StringRecord,
    },
    Ids(Arc<Vec<u64>>),
}

impl RowCursor {
    pub fn open(source: &Source) -> Result<RowCursor, AudienceError> {
        Self::open_in(source, &Files::WorkTree)
    }

    /// [`RowCursor::open`] reading the CSV from `files`.
    pub fn open_in(source: &Source, files: &Files) -> Result<RowCursor, AudienceError> {
        match source {
            Source::Csv { path, id_column } => {
                let f = open(files, path)?;
                let mut rdr = csv_builder().from_reader(std::io::BufReader::new(f));
                let names = read_header(&mut rdr, path)?;
                let id_index = names.iter().position(|n| n == id_column).ok_or_else(|| {
                    AudienceError::MissingIdColumn {
                        path: path.clone(),
                        column: id_column.clone(),
                        found: names.join(", "),
                    }
                })?;
                Ok(RowCursor {
                    inner: CursorInner::Csv {
                        path: path.clone(),
                        rdr,
                        id_index,
                        rec: csv::StringRecord::new(),
                    },
                })
            }
            Source::Ids(ids) => Ok(RowCursor {
                inner: CursorInner::Ids(Arc::new(ids.clone())),
            }),
        }
    }

    /// The row at `pos` (the file changed if it is not there).
    pub fn seek_forward(&mut self, pos: RowPos, index: u64) -> Result<Row, AudienceError> {
        match &mut self.inner {
            CursorInner::Csv {
                path,
                rdr,
                id_index,
                rec,
            } => loop {
                match rdr.read_record(rec) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(AudienceError::Csv {
                            path: path.clone(),
                            line: 0,
                            message: "the file changed since the plan was made (a row is gone)"
                                .into(),
                        })
                    }
                    Err(e) => return Err(csv_err(path, &e)),
                }
                let (line, byte) = rec
                    .position()
                    .map(|p| (p.line(), p.byte()))
                    .unwrap_or((0, 0));
                if byte < pos.0 {
                    continue;
                }
                if byte > pos.0 {
                    return Err(AudienceError::Csv {
                        path: path.clone(),
                        line,
                        message: "the file changed since the plan was made".into(),
                    });
                }
                let raw_id = rec.get(*id_index).unwrap_or("").to_string();
                return Ok(Row {
                    line,
                    pos,
                    index,
                    id: parse_id(&raw_id),
                    raw_id,
                    fields: rec.clone(),
                });
            },
            CursorInner::Ids(ids) => {
                let id = ids.get(pos.0 as usize).copied().unwrap_or(0);
                Ok(Row {
                    line: pos.0 + 1,
                    pos,
                    index,
                    raw_id: id.to_string(),
                    id: check_id(id),
                    fields: csv::StringRecord::new(),
                })
            }
        }
    }
}

/// Load a suppression list into a set (8 bytes per id) and hash its bytes. For a CSV without
/// `id_column`, a one-column file's only column is used.
pub fn load_suppression(source: &Source) -> Result<(HashSet<u64>, [u8; 32]), AudienceError> {
    load_suppression_in(source, &Files::WorkTree)
}

/// [`load_suppression`] reading the list from `files`.
pub fn load_suppression_in(
    source: &Source,
    files: &Files,
) -> Result<(HashSet<u64>, [u8; 32]), AudienceError> {
    let mut set = HashSet::new();
    let source = match source {
        Source::Csv { path, id_column } => {
            // Peek at the header to apply the one-column rule.
            let f = open(files, path)?;
            let mut rdr = csv_builder().from_reader(f);
            let names = read_header(&mut rdr, path)?;
            let col = if names.iter().any(|n| n == id_column) || names.len() != 1 {
                id_column.clone()
            } else {
                names[0].clone()
            };
            Source::Csv {
                path: path.clone(),
                id_column: col,
            }
        }
        other => other.clone(),
    };
    let mut r = AudienceReader::open_in(&source, files)?;
    while let Some(row) = r.next_row()? {
        match row.id {
            Ok(id) => {
                set.insert(id);
            }
            Err(reason) => {
                let path = match &source {
                    Source::Csv { path, .. } => path.clone(),
                    Source::Ids(_) => PathBuf::from("inline"),
                };
                return Err(AudienceError::BadSuppressionId {
                    path,
                    line: row.line,
                    raw: row.raw_id,
                    reason,
                });
            }
        }
    }
    let hash = r.finish()?;
    Ok((set, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_exactly() {
        assert_eq!(parse_id(" 9007199254740993 "), Ok(9_007_199_254_740_993));
        assert_eq!(parse_id("9223372036854775807"), Ok(i64::MAX as u64));
        assert!(parse_id("9223372036854775808")
            .expect_err("above Long")
            .contains("larger than 9223372036854775807"));
        assert!(parse_id("18446744073709551615")
            .expect_err("u64::MAX")
            .contains("larger"));
        assert!(parse_id("18446744073709551616")
            .expect_err("overflow")
            .contains("larger"));
        assert!(check_id(u64::MAX).is_err());
        assert!(parse_id("-1").expect_err("negative").contains("negative"));
        assert!(parse_id("1e5").expect_err("float").contains("whole"));
        assert!(parse_id("1.0").expect_err("float").contains("whole"));
        assert_eq!(parse_id(""), Err("missing id".to_string()));
    }
}
