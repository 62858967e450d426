//! What `report.html` shows beyond `summary.json`, read from the journal and bounded in size
//! whatever the audience: sending over time (from the calls' outcome times), pauses, the calls
//! with an unknown outcome, the failures per status and error code with their first rows (tallied
//! during the one recipient scan), and the run's variants with their rendered Content.
//!
//! The rendered Contents are not part of the journal's core tables: the run records them once,
//! when the engine is about to send ([`record_run`]), in two tables of its own in the same
//! database (`report_runs`, `report_variants`: in the SQLite journal created through
//! [`Journal::migrate_extra`], in the PostgreSQL store by its migration 6), at most
//! [`MAX_RECORDED_VARIANTS`] of them (the largest; `variants.csv` lists them all, the page the
//! [`MAX_VARIANTS`] largest). A run recorded before those tables existed simply has
//! no rendered Content in its report.
//!
//! Bounds: at most [`MAX_SAMPLES`] points on the chart, [`MAX_GAPS`] pauses, [`MAX_GROUPS`] failure
//! groups of [`MAX_EXAMPLES`] rows each, [`MAX_UNKNOWN_CALLS`] unknown calls, [`MAX_VARIANTS`]
//! variants of at most [`MAX_CONTENT_BYTES`] each; every provider or campaign string is cut at
//! [`MAX_TEXT`] characters. Memory for the chart is one entry per time slice in which a call
//! ended (never per recipient). Reads only, except [`record_run`]; never sends anything.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::store::{params, Backend, Conn, StoreError};
use jiff::Timestamp;
use serde::Serialize;

use crate::action::Unit;
use crate::journal::{CallState, Journal, JournalError, RecipientRef, RecipientStatus, RunInfo};
use crate::plan::PlanVariant;

/// Points on the sending-over-time chart.
pub const MAX_SAMPLES: usize = 480;
/// Pauses listed.
pub const MAX_GAPS: usize = 20;
/// Failure groups (status + error code) listed; the rest are counted together.
pub const MAX_GROUPS: usize = 40;
/// Example rows per failure group.
pub const MAX_EXAMPLES: usize = 10;
/// Unknown calls listed.
pub const MAX_UNKNOWN_CALLS: usize = 50;
/// Variants whose rendered Content `report.html` shows (the largest).
pub const MAX_VARIANTS: usize = 20;
/// Variants whose rendered Content is recorded (the largest), all listed in `variants.csv`.
pub const MAX_RECORDED_VARIANTS: usize = 1000;
/// Bytes of one rendered Content kept for the report.
pub const MAX_CONTENT_BYTES: usize = 16 * 1024;
/// Characters of any other text (error messages, ids, ext values) shown.
pub const MAX_TEXT: usize = 500;

/// The report's tables in the SQLite journal (on PostgreSQL: the store's migration 6).
pub(crate) const MIGRATIONS: &[&str] = &[
    "CREATE TABLE report_runs(
        run_id TEXT PRIMARY KEY,
        campaign_file TEXT,
        app_id INTEGER,
        distinct_contents INTEGER NOT NULL
     );
     CREATE TABLE report_variants(
        run_id TEXT NOT NULL,
        variant TEXT NOT NULL,
        recipients INTEGER NOT NULL,
        msg_type INTEGER NOT NULL,
        content TEXT NOT NULL,
        content_bytes INTEGER NOT NULL,
        ext TEXT NOT NULL,
        PRIMARY KEY(run_id, variant)
     );",
    // The A/B variant's name (`message.variants`), empty without A/B variants.
    "ALTER TABLE report_variants ADD COLUMN variant_name TEXT NOT NULL DEFAULT '';",
];

/// Cut `s` to at most `max` characters (marking the cut).
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Cut `s` to at most `max` bytes on a character boundary.
fn clip_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// What the run knew when it started and the journal's core tables do not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunMeta {
    pub campaign_file: Option<String>,
    pub app_id: Option<u64>,
    pub distinct_contents: u64,
}

/// One variant as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariantFact {
    pub variant: String,
    /// The A/B variant's name (`message.variants`); empty without A/B variants.
    pub variant_name: String,
    pub recipients: u64,
    pub msg_type: i32,
    pub content: String,
    /// The Content was longer than [`MAX_CONTENT_BYTES`] (its length in bytes).
    pub content_bytes: u64,
    pub truncated: bool,
    pub ext: BTreeMap<String, String>,
}

/// Record the run's campaign file, app id and its largest variants (rendered) for its report.
/// Idempotent (a resumed run records the same again).
pub fn record_run(
    journal: &mut Journal,
    run_id: &str,
    meta: &RunMeta,
    variants: &[PlanVariant],
) -> Result<(), JournalError> {
    journal.migrate_extra("report", MIGRATIONS)?;
    let db = |source: StoreError| JournalError::Db {
        path: journal.path().to_path_buf(),
        source,
    };
    let tx = journal.connection().transaction().map_err(db)?;
    tx.execute(
        "INSERT INTO report_runs(run_id, campaign_file, app_id, distinct_contents)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (run_id) DO UPDATE SET campaign_file = excluded.campaign_file,
             app_id = excluded.app_id, distinct_contents = excluded.distinct_contents",
        params![
            run_id,
            meta.campaign_file.as_deref(),
            meta.app_id.map(|v| v as i64),
            meta.distinct_contents as i64
        ],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM report_variants WHERE run_id = ?1",
        params![run_id],
    )
    .map_err(db)?;
    for v in variants.iter().take(MAX_RECORDED_VARIANTS) {
        let ext = serde_json::to_string(&v.ext).unwrap_or_else(|_| "{}".into());
        tx.execute(
            "INSERT INTO report_variants(run_id, variant, recipients, msg_type, content,
                                         content_bytes, ext, variant_name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (run_id, variant) DO UPDATE SET recipients = excluded.recipients,
                 msg_type = excluded.msg_type, content = excluded.content,
                 content_bytes = excluded.content_bytes, ext = excluded.ext,
                 variant_name = excluded.variant_name",
            params![
                run_id,
                v.variant.as_str(),
                v.recipients as i64,
                i64::from(v.msg_type),
                clip_bytes(&v.content, MAX_CONTENT_BYTES),
                v.content.len() as i64,
                ext.as_str(),
                v.variant_name.as_deref().unwrap_or("")
            ],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Remove what [`record_run`] kept for runs the journal no longer has (after pruning). Which
/// runs it has is the journal's to say ([`Journal::run`]); this reads only the report's tables.
pub fn forget_pruned(journal: &Journal) -> Result<u64, JournalError> {
    let conn = journal.connection();
    let db = |source: StoreError| JournalError::Db {
        path: journal.path().to_path_buf(),
        source,
    };
    if !has_table(conn, "report_runs").map_err(db)? {
        return Ok(0);
    }
    let kept: Vec<String> = conn
        .query_map(
            "SELECT run_id FROM report_runs UNION SELECT run_id FROM report_variants",
            params![],
            |r| r.get(0),
        )
        .map_err(db)?;
    let mut gone = Vec::new();
    for id in kept {
        if journal.run(&id)?.is_none() {
            gone.push(id);
        }
    }
    let tx = conn.transaction().map_err(db)?;
    let mut n = 0;
    for id in &gone {
        n += tx
            .execute(
                "DELETE FROM report_runs WHERE run_id = ?1",
                params![id.as_str()],
            )
            .map_err(db)?;
        tx.execute(
            "DELETE FROM report_variants WHERE run_id = ?1",
            params![id.as_str()],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(n as u64)
}

/// Whether the report's table `name` exists: on SQLite it is created on the first
/// [`record_run`]; on PostgreSQL the store's migrations made it.
fn has_table(conn: &Conn, name: &str) -> Result<bool, StoreError> {
    if conn.backend() == Backend::Postgres {
        return Ok(true);
    }
    conn.query_opt(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |_| Ok(()),
    )
    .map(|o| o.is_some())
}

/// Whether `table` has `column` (SQLite: tables an older imcast made; PostgreSQL: always).
fn has_column(conn: &Conn, table: &str, column: &str) -> Result<bool, StoreError> {
    if conn.backend() == Backend::Postgres {
        return Ok(true);
    }
    conn.query_opt(
        "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
        params![table, column],
        |_| Ok(()),
    )
    .map(|o| o.is_some())
}

/// The run's recorded meta and variants (largest first), if it recorded them.
pub fn recorded(
    journal: &Journal,
    run_id: &str,
) -> Result<(Option<RunMeta>, Vec<VariantFact>), JournalError> {
    recorded_in(journal.connection(), run_id).map_err(|source| JournalError::Db {
        path: journal.path().to_path_buf(),
        source,
    })
}

fn recorded_in(
    conn: &Conn,
    run_id: &str,
) -> Result<(Option<RunMeta>, Vec<VariantFact>), StoreError> {
    if !has_table(conn, "report_runs")? {
        return Ok((None, Vec::new()));
    }
    let meta = conn.query_opt(
        "SELECT campaign_file, app_id, distinct_contents FROM report_runs WHERE run_id = ?1",
        params![run_id],
        |r| {
            Ok(RunMeta {
                campaign_file: r.get(0)?,
                app_id: r.get::<Option<i64>>(1)?.map(|v| v as u64),
                distinct_contents: r.get::<i64>(2)? as u64,
            })
        },
    )?;
    // A journal whose report tables predate the column (recorded by an older imcast and not
    // recorded since) reads an empty name.
    let name = if has_column(conn, "report_variants", "variant_name")? {
        "variant_name"
    } else {
        "''"
    };
    let variants = conn.query_map(
        &format!(
            "SELECT variant, recipients, msg_type, content, content_bytes, ext, {name}
             FROM report_variants WHERE run_id = ?1 ORDER BY recipients DESC, variant"
        ),
        params![run_id],
        |r| {
            let content: String = r.get(3)?;
            let bytes = r.get::<i64>(4)? as u64;
            let ext: String = r.get(5)?;
            Ok(VariantFact {
                variant: r.get(0)?,
                variant_name: r.get(6)?,
                recipients: r.get::<i64>(1)? as u64,
                msg_type: i32::try_from(r.get::<i64>(2)?).unwrap_or_default(),
                truncated: bytes > content.len() as u64,
                content,
                content_bytes: bytes,
                ext: serde_json::from_str(&ext).unwrap_or_default(),
            })
        },
    )?;
    Ok((meta, variants))
}

// ---- failures -----------------------------------------------------------------------------

/// One example row of a failure group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExampleRow {
    pub line: u64,
    pub id: Option<u64>,
    pub raw_id: String,
    pub code: Option<String>,
    pub call: Option<u64>,
}

/// Rows of one status with one error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    pub status: RecipientStatus,
    pub code: Option<String>,
    /// The first row's message (the provider's, or why imcast did not send).
    pub message: Option<String>,
    pub count: u64,
    pub examples: Vec<ExampleRow>,
}

/// Failures tallied during the recipient scan: per (status, code), bounded.
#[derive(Debug, Default)]
pub struct Tally {
    index: HashMap<(RecipientStatus, Option<String>), usize>,
    pub groups: Vec<FailureGroup>,
    /// Rows in groups beyond [`MAX_GROUPS`] (not listed), per status.
    pub other: BTreeMap<RecipientStatus, u64>,
    /// A/B variants: rows per status of each variant name (rows without a variant not counted).
    pub by_variant: BTreeMap<String, BTreeMap<RecipientStatus, u64>>,
}

impl Tally {
    /// The statuses the failures section lists (everything that was not delivered and is not a
    /// plain audience outcome like duplicate or suppressed).
    pub fn counts_status(s: RecipientStatus) -> bool {
        matches!(
            s,
            RecipientStatus::Failed
                | RecipientStatus::Unknown
                | RecipientStatus::NotOnline
                | RecipientStatus::Invalid
                | RecipientStatus::Expired
                | RecipientStatus::Cancelled
        )
    }

    /// Add the tally of the rows after this one's (parts scanned in parallel, merged in order).
    pub fn merge(&mut self, other: Tally) {
        for g in other.groups {
            let key = (g.status, g.code.clone());
            match self.index.get(&key) {
                Some(&i) => {
                    let mine = &mut self.groups[i];
                    mine.count += g.count;
                    let room = MAX_EXAMPLES.saturating_sub(mine.examples.len());
                    mine.examples.extend(g.examples.into_iter().take(room));
                }
                None if self.groups.len() < MAX_GROUPS => {
                    self.index.insert(key, self.groups.len());
                    self.groups.push(g);
                }
                None => *self.other.entry(g.status).or_default() += g.count,
            }
        }
        for (k, n) in other.other {
            *self.other.entry(k).or_default() += n;
        }
        for (name, counts) in other.by_variant {
            let mine = self.by_variant.entry(name).or_default();
            for (s, n) in counts {
                *mine.entry(s).or_default() += n;
            }
        }
    }

    pub fn add(&mut self, row: &RecipientRef<'_>) {
        if let Some(name) = row.variant_name {
            // Looked up by &str: a key is allocated once per variant, not per row.
            match self.by_variant.get_mut(name) {
                Some(m) => *m.entry(row.status).or_default() += 1,
                None => {
                    self.by_variant
                        .insert(name.to_string(), BTreeMap::from([(row.status, 1)]));
                }
            }
        }
        if !Self::counts_status(row.status) {
            return;
        }
        let code = row.error_code.map(|c| clip(c, 80));
        let key = (row.status, code);
        let i = match self.index.get(&key) {
            Some(i) => *i,
            None if self.groups.len() < MAX_GROUPS => {
                self.groups.push(FailureGroup {
                    status: row.status,
                    code: key.1.clone(),
                    message: row.error_message.or(row.detail).map(|m| clip(m, MAX_TEXT)),
                    count: 0,
                    examples: Vec::new(),
                });
                self.index.insert(key, self.groups.len() - 1);
                self.groups.len() - 1
            }
            None => {
                *self.other.entry(row.status).or_default() += 1;
                return;
            }
        };
        let g = &mut self.groups[i];
        g.count += 1;
        if g.examples.len() < MAX_EXAMPLES {
            g.examples.push(ExampleRow {
                line: row.line,
                id: row.id,
                raw_id: match row.raw_id {
                    Some(r) => clip(r, 80),
                    None => row.id.map(|v| v.to_string()).unwrap_or_default(),
                },
                code: row.error_code.map(|c| clip(c, 80)),
                call: row.call,
            });
        }
    }
}

// ---- unknown calls -----------------------------------------------------------------------

/// A call whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnknownCall {
    pub seq: u64,
    pub variant: String,
    pub receivers: u64,
    pub attempts: u64,
    pub code: Option<String>,
    pub message: Option<String>,
    pub time: String,
}

/// The first [`MAX_UNKNOWN_CALLS`] calls of a run whose outcome is unknown, in call order.
pub fn unknown_calls(journal: &Journal, run_id: &str) -> Result<Vec<UnknownCall>, JournalError> {
    Ok(journal
        .calls_in_state(run_id, CallState::Unknown, MAX_UNKNOWN_CALLS)?
        .into_iter()
        .map(|c| UnknownCall {
            seq: c.seq,
            receivers: c.receivers.len() as u64,
            variant: c.variant,
            attempts: c.attempts,
            code: c.error_code.map(|c| clip(&c, 80)),
            message: c.error_message.map(|m| clip(&m, MAX_TEXT)),
            time: show_time(c.updated_at),
        })
        .collect())
}

// ---- sending over time -------------------------------------------------------------------

/// A stretch in which no call ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gap {
    pub from: String,
    pub to: String,
    pub seconds: f64,
    /// Offsets from the chart's start, seconds.
    pub from_s: f64,
    pub to_s: f64,
}

/// Units the limiter counts, over time, against the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub unit: &'static str,
    pub limit: u64,
    pub window_seconds: f64,
    pub start: Timestamp,
    pub end: Timestamp,
    /// Seconds per chart interval.
    pub step_seconds: f64,
    /// Per interval: the most units counted in any window ending in it (the rolling window at
    /// its start when no call ended in it).
    pub values: Vec<u64>,
    /// Per interval: units of the calls that ended in it.
    pub ended: Vec<u64>,
    /// The most units in any one window over the run, and when (seconds after start).
    pub peak: u64,
    pub peak_at_s: f64,
    pub units: u64,
    pub calls: u64,
    pub gaps: Vec<Gap>,
    pub more_gaps: usize,
}

/// Human time: `2026-11-22 03:47:01 UTC`.
pub fn show_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn millis(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// Sending over time, from the outcome time of every call that was answered (done or unknown).
/// `end` is when the run ended (or was last updated).
pub fn timeline(
    journal: &Journal,
    run: &RunInfo,
    end: Timestamp,
) -> Result<Option<Timeline>, JournalError> {
    let window_ms = (run.limit.window.as_millis() as i64).max(1);
    // Time slices: a tenth of the window, between 100 ms and 1 s.
    let res = (window_ms / 10).clamp(100, 1000);
    let batch = run.action.unit() == Unit::Receivers;
    let mut slices: HashMap<i64, u64> = HashMap::new();
    let mut calls = 0u64;
    journal.for_each_answered_call::<JournalError>(&run.id, |c| {
        let n = if batch { c.receivers } else { 1 };
        *slices.entry(millis(c.at).div_euclid(res)).or_default() += n;
        calls += 1;
        Ok(())
    })?;
    if slices.is_empty() {
        return Ok(None);
    }
    // Slice k covers [k*res, (k+1)*res); a call in it counts at the slice's end.
    let mut keys: Vec<(i64, u64)> = slices.into_iter().collect();
    keys.sort_unstable();
    let ends: Vec<i64> = keys.iter().map(|(k, _)| (k + 1) * res).collect();
    let mut prefix = Vec::with_capacity(keys.len() + 1);
    prefix.push(0u64);
    for (_, n) in &keys {
        let last = prefix.last().copied().unwrap_or(0);
        prefix.push(last + n);
    }
    let units = prefix.last().copied().unwrap_or(0);
    // Units counted in the window (t - window, t].
    let upto = |t: i64| ends.partition_point(|&e| e <= t);
    let rolling = |t: i64| prefix[upto(t)] - prefix[upto(t - window_ms)];

    let start_ms = millis(run.created_at).min(ends[0] - res);
    let last_ms = ends[ends.len() - 1];
    let end_ms = millis(end).max(last_ms);
    let span = (end_ms - start_ms).max(1);
    let n = (span as f64 / res as f64)
        .ceil()
        .clamp(1.0, MAX_SAMPLES as f64) as usize;
    let step = (span as f64 / n as f64).max(1.0);
    let idx = |t: i64| (((t - start_ms) as f64 / step) as usize).min(n - 1);
    let mut values: Vec<u64> = (0..n)
        .map(|i| rolling(start_ms + (i as f64 * step) as i64))
        .collect();
    let mut ended = vec![0u64; n];
    let (mut peak, mut peak_at) = (0u64, start_ms);
    for (j, &e) in ends.iter().enumerate() {
        let v = rolling(e);
        let i = idx(e);
        values[i] = values[i].max(v);
        ended[i] += keys[j].1;
        if v > peak {
            peak = v;
            peak_at = e;
        }
    }
    // Pauses: no call ended for at least twice the window (and 30 s): quiet hours, a pause, the
    // breaker, a back-off, a stopped process, or the start before the first call.
    let threshold = (2 * window_ms).max(30_000);
    let mut gaps = Vec::new();
    let mut more_gaps = 0;
    let mut prev = start_ms;
    for &e in ends.iter().chain(std::iter::once(&end_ms)) {
        let from = prev;
        if e - from >= threshold {
            if gaps.len() < MAX_GAPS {
                let ts = |ms: i64| {
                    Timestamp::from_millisecond(ms)
                        .map(show_time)
                        .unwrap_or_default()
                };
                gaps.push(Gap {
                    from: ts(from),
                    to: ts(e),
                    seconds: (e - from) as f64 / 1000.0,
                    from_s: (from - start_ms) as f64 / 1000.0,
                    to_s: (e - start_ms) as f64 / 1000.0,
                });
            } else {
                more_gaps += 1;
            }
        }
        prev = e;
    }
    let ts = |ms: i64| Timestamp::from_millisecond(ms).unwrap_or(run.created_at);
    Ok(Some(Timeline {
        unit: run.action.unit().as_str(),
        limit: run.limit.limit,
        window_seconds: window_ms as f64 / 1000.0,
        start: ts(start_ms),
        end: ts(end_ms),
        step_seconds: step / 1000.0,
        values,
        ended,
        peak,
        peak_at_s: (peak_at - start_ms) as f64 / 1000.0,
        units,
        calls,
        gaps,
        more_gaps,
    }))
}

/// The campaign file a report should name in the commands it suggests.
pub fn campaign_file_hint(meta: Option<&RunMeta>, given: Option<&Path>) -> String {
    given
        .map(|p| p.display().to_string())
        .or_else(|| meta.and_then(|m| m.campaign_file.clone()))
        .unwrap_or_else(|| "CAMPAIGN.yaml".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_marks_the_cut_on_char_boundaries() {
        assert_eq!(clip("héllo", 10), "héllo");
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip_bytes("héllo", 2), "h");
        assert_eq!(clip_bytes("héllo", 3), "hé");
    }

    /// A journal whose report tables predate `variant_name` reads it empty; recording again adds
    /// the column and keeps the name.
    #[test]
    fn variant_name_is_read_from_old_and_new_report_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("journal");
        j.migrate_extra("report", &MIGRATIONS[..1])
            .expect("old tables");
        j.connection()
            .execute(
                "INSERT INTO report_variants(run_id, variant, recipients, msg_type, content,
                                             content_bytes, ext)
                 VALUES ('r1', 'v1', 3, 1, 'hi', 2, '{}')",
                params![],
            )
            .expect("old row");
        let (_, old) = recorded(&j, "r1").expect("read old");
        assert_eq!(old.len(), 1);
        assert_eq!(
            (old[0].variant.as_str(), old[0].variant_name.as_str()),
            ("v1", "")
        );
        let pv = PlanVariant {
            variant: "v2".into(),
            recipients: 4,
            variant_name: Some("b".into()),
            msg_type: 1,
            content: "hello".into(),
            ext: BTreeMap::new(),
        };
        record_run(&mut j, "r2", &RunMeta::default(), &[pv]).expect("record");
        let (_, new) = recorded(&j, "r2").expect("read new");
        assert_eq!(new[0].variant_name, "b");
        let (_, old) = recorded(&j, "r1").expect("read old again");
        assert_eq!(old[0].variant_name, "");
    }
}
