//! The plan: every audience row's outcome, and the calls that deliver the valid ones.
//!
//! A/B variants and the holdout (`crate::variants`): a valid row the holdout takes is counted as
//! `holdout` (not `valid`) and never rendered or called; every other row renders with its
//! variant's templates (one renderer per variant), and the variant's name is part of the group
//! key, so every group — and every call — belongs to one variant.
//!
//! Grouping: recipients whose rendered Content and Ext are identical form a group; each group is
//! cut into calls of at most `Action::max_receivers()` (500 for batch, 1 for conversation/p2p),
//! groups ordered by their first recipient in audience order, recipients in audience order within
//! a group. So the number of calls is exactly Σ⌈group size / max⌉, the minimum. A staged campaign
//! (`rollout:`, `schedule.local_time`; see `stages`) is cut per (stage, group) instead, ordered
//! by stage, then group: each stage's calls are one contiguous range of call numbers
//! ([`Plan::stages`]), at the cost of at most one partial call per group and stage. An audience
//! row whose time zone is unknown is `invalid` (with local-time waves).
//!
//! Memory: the plan holds 8–16 bytes per valid recipient plus ~40 bytes per distinct Content,
//! and a record per row that is not valid (its outcome, so [`Plan::rows`] never reads the audience
//! again: see `rows`; past 1 MiB they go to a temporary file). Never rows × columns. Suppression
//! lists are dropped once applied. Each distinct Content is stored once; above
//! [`STORE_MAX_CONTENTS`] (or [`STORE_MAX_BYTES`]) the plan keeps only each group's content hash
//! and the position of its first row, and [`Plan::calls`] re-renders at send time (rendering is
//! deterministic; a mismatch means the inputs changed and is an error, never a silent send).
//!
//! The plan hash covers everything that decides what is sent: the campaign file, every template
//! file read (main and includes), the audience bytes, every exclude list and every extra
//! suppression list. This module sends nothing and writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::action::Action;
use crate::audience::{load_suppression_in, AudienceError, AudienceReader, RowCursor, RowPos};
use crate::render::{RenderError, Rendered, Renderer, RowInput};
use crate::spec::{Campaign, Source};
use crate::variants::{Assigner, Assignment};

mod rows;

/// A hasher for keys that are already well mixed or are plain ids: one multiply instead of
/// SipHash. The audience is trusted operator input, so hash flooding is not a concern here, and
/// these maps are the plan's hot path (a million inserts for a million rows). Hand-written to avoid
/// a dependency for ten lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; the high bits (which hashbrown uses for its control bytes) mix all
        // input bits, and a rotation feeds them to the low bits used for the bucket index.
        let h = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

/// Build [`FastHasher`]s.
pub type FastState = std::hash::BuildHasherDefault<FastHasher>;
type FastMap<K, V> = HashMap<K, V, FastState>;
type FastSet<K> = HashSet<K, FastState>;

/// Keep at most this many distinct Contents in memory; beyond, re-render at send time.
pub const STORE_MAX_CONTENTS: usize = 100_000;
/// Keep at most this many bytes of distinct Contents in memory.
pub const STORE_MAX_BYTES: usize = 64 << 20;
/// Rendered samples kept for `plan` output.
pub const SAMPLES: usize = 10;
/// Examples listed per undefined variable.
const EXAMPLES: usize = 5;

/// Options from outside the campaign file.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Global suppression lists (imcast.toml `account.suppress`), hashed into the plan too.
    pub extra_suppress: Vec<PathBuf>,
    /// The date whose `schedule.local_time` the waves are at (the occurrence's date; None:
    /// today in UTC, see `stages::waves`). Hashed into the plan with local-time waves.
    pub local_date: Option<jiff::civil::Date>,
}

/// Where a render failed, with the first few recipients affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderProblem {
    /// `undefined variable `x`` or the template error.
    pub what: String,
    pub count: u64,
    /// (recipient id, line) of the first few.
    pub examples: Vec<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Audience(#[from] AudienceError),
    #[error("template: {0}")]
    Template(String),
    #[error("{}", render_problems(.0))]
    Render(Vec<RenderProblem>),
    #[error(
        "`audience.required` lists columns, but the audience is an inline id list without columns"
    )]
    RequiredWithoutColumns,
    #[error("the inputs changed since the plan was made: {0}")]
    Changed(String),
    /// The plan's temporary file (its rejected rows past a few) could not be written or read.
    #[error("{0}")]
    Spool(String),
}

fn render_problems(ps: &[RenderProblem]) -> String {
    let mut s =
        String::from("rendering failed; nothing can be sent until every recipient renders:");
    for p in ps {
        let ex: Vec<String> = p
            .examples
            .iter()
            .map(|(id, line)| format!("{id} (line {line})"))
            .collect();
        s.push_str(&format!(
            "\n  {} — {} recipient{}, first: {}",
            p.what,
            p.count,
            if p.count == 1 { "" } else { "s" },
            ex.join(", ")
        ));
    }
    if ps.iter().any(|p| p.what.contains("undefined variable `")) {
        s.push_str(
            "\n  fix the audience columns or `message.vars`, or guard with `{% if x is defined %}`",
        );
    }
    s
}

/// The plan's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Audience rows.
    pub total: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub suppressed: u64,
    pub distinct_contents: u64,
    pub calls: u64,
    /// Messages the provider counts: receivers for batch, calls for conversation/p2p.
    pub messages: u64,
    /// Valid recipients whose render read an empty value.
    pub empty_value_rows: u64,
    /// Rows otherwise valid that the holdout keeps from being sent (not in `valid`).
    pub holdout: u64,
}

/// One A/B variant of a plan (`message.variants`): who gets it and a rendered example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbVariant {
    pub name: String,
    pub weight: u64,
    /// Valid recipients assigned to it.
    pub recipients: u64,
    pub calls: u64,
    /// Distinct Contents it renders.
    pub distinct_contents: u64,
    /// Its first recipient's rendered message.
    pub example: Option<Sample>,
}

/// One call to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedCall {
    /// 0-based call number.
    pub seq: u64,
    /// Short hash of content + ext.
    pub variant: String,
    /// batch: ≤500 user ids; conversation/p2p: exactly one conversation id.
    pub receivers: Vec<u64>,
    pub msg_type: i32,
    pub content: String,
    pub ext: BTreeMap<String, String>,
}

/// One distinct Content of a plan (see [`Plan::variants`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanVariant {
    /// Short hash of content + ext (the calls' and report rows' `variant`).
    pub variant: String,
    /// Valid recipients who get it.
    pub recipients: u64,
    /// The A/B variant (`message.variants`) it belongs to; None without A/B variants.
    pub variant_name: Option<String>,
    pub msg_type: i32,
    pub content: String,
    pub ext: BTreeMap<String, String>,
}

/// What happens to one audience row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RowStatus {
    Valid {
        call: u64,
    },
    Invalid {
        reason: String,
    },
    Duplicate {
        first_line: u64,
    },
    Suppressed {
        list: String,
    },
    /// In the holdout: valid, never sent.
    Holdout,
}

/// One audience row and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AudienceRow {
    pub line: u64,
    pub id: Option<u64>,
    /// The id column's text where it is not the id's decimal form (None: it is, see
    /// [`AudienceRow::id_text`]); a row without an id always has it.
    pub raw_id: Option<String>,
    pub status: RowStatus,
    /// The A/B variant a valid row gets (None: no variants, or not valid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_name: Option<String>,
}

impl AudienceRow {
    /// The id column's text as the audience has it.
    pub fn id_text(&self) -> std::borrow::Cow<'_, str> {
        match (&self.raw_id, self.id) {
            (Some(raw), _) => raw.as_str().into(),
            (None, Some(id)) => itoa::Buffer::new().format(id).to_string().into(),
            (None, None) => "".into(),
        }
    }
}

/// A rendered example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub id: u64,
    pub line: u64,
    pub content: String,
    pub ext: BTreeMap<String, String>,
    /// The A/B variant it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_name: Option<String>,
    /// The content variant id of its Content (see [`PlannedCall::variant`]).
    #[serde(skip)]
    pub content_id: String,
}

/// A group's Content and Ext.
pub type GroupContent = (String, BTreeMap<String, String>);

/// One distinct Content: 32 bytes (the plan holds one per distinct Content).
#[derive(Debug, Clone)]
struct Group {
    key: [u64; 2],
    pos: RowPos,
    /// Index into `contents`, or [`NOT_STORED`].
    stored: u32,
}

const NOT_STORED: u32 = u32::MAX;
/// A group of a campaign without A/B variants.
const NO_VARIANT: u16 = u16::MAX;

impl Group {
    fn key(&self) -> u128 {
        ((self.key[0] as u128) << 64) | self.key[1] as u128
    }
    fn stored(&self) -> Option<u32> {
        (self.stored != NOT_STORED).then_some(self.stored)
    }
}

/// The plan for one campaign.
pub struct Plan {
    campaign: Campaign,
    /// One per A/B variant (one when there are none).
    renderers: Vec<Renderer>,
    assigner: Assigner,
    /// The A/B variant of each group ([`NO_VARIANT`] without variants).
    group_variant: Vec<u16>,
    ab: Vec<AbVariant>,
    hash: String,
    content_key: String,
    counts: Counts,
    groups: Vec<Group>,
    contents: Vec<(String, BTreeMap<String, String>)>,
    /// Valid ids ordered by bucket (stable: audience order within a bucket). A bucket is a
    /// group, or with stages a (stage, group) pair; buckets are ordered by stage, then group.
    ids_by_group: Vec<u64>,
    /// Offsets into `ids_by_group`, one per bucket plus the end.
    group_start: Vec<usize>,
    /// Group of each valid row, in audience order.
    row_group: Vec<u32>,
    /// First call number of each bucket.
    group_call_base: Vec<u64>,
    /// The group of each bucket (None: no stages, bucket `b` is group `b`).
    bucket_group: Option<Vec<u32>>,
    /// The bucket of each valid row in audience order (None: its group).
    row_bucket: Option<Vec<u32>>,
    /// Valid recipients per group.
    group_size: Vec<u64>,
    /// The run's stages, in order (empty: one stage, the whole plan).
    stages: Vec<crate::stages::PlanStage>,
    /// What [`Plan::rows`] gives besides the valid ids (see `rows`).
    log: rows::RowLog,
    suppress_labels: Vec<String>,
    samples: Vec<Sample>,
    variable_distinct: BTreeMap<String, u64>,
    warnings: Vec<String>,
    static_content: bool,
    header: Option<std::sync::Arc<Vec<String>>>,
}

fn content_key(content: &str, ext: &BTreeMap<String, String>) -> u128 {
    content_key_in(None, content, ext)
}

/// The group key: the Content and Ext, and the A/B variant's name when there is one (two
/// variants that render the same Content are still two groups, so each call is one variant's).
fn content_key_in(ab: Option<&str>, content: &str, ext: &BTreeMap<String, String>) -> u128 {
    let mut h = Sha256::new();
    if let Some(name) = ab {
        h.update(b"ab-variant\0");
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.update((content.len() as u64).to_le_bytes());
    h.update(content.as_bytes());
    for (k, v) in ext {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

fn variant_of(key: u128) -> String {
    format!("{:012x}", key >> 80)
}

/// The variant id of a Content and Ext: what the plan's calls and report rows carry as
/// `variant` (the one variant function: a `--test-to` call of a Content has its plan variant).
pub fn variant_id(content: &str, ext: &BTreeMap<String, String>) -> String {
    variant_of(content_key(content, ext))
}

fn value_hash(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// How many distinct Contents a plan keeps in memory before it switches to re-rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_contents: usize,
    pub max_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_contents: STORE_MAX_CONTENTS,
            max_bytes: STORE_MAX_BYTES,
        }
    }
}

/// Rows handed to the render thread at a time.
const CHUNK: usize = 4096;
/// Chunks given to the render thread and not yet taken back (bounds memory: ≤ this many chunks
/// of rows and their results exist at once, and their buffers are reused).
const IN_FLIGHT: usize = 2;

struct Pending {
    id: u64,
    line: u64,
    pos: RowPos,
    ab: Option<usize>,
    fields: csv::StringRecord,
}

/// A chunk of rows for the render thread and, on its way back, their results (content keys
/// computed there too). The buffers go back and forth: no allocation per chunk or per row
/// record once warm, and every record is freed by the thread that allocated it.
#[derive(Default)]
struct Chunk {
    rows: Vec<Pending>,
    len: usize,
    out: Vec<Result<(Rendered, u128), RenderError>>,
}

fn render_keyed(
    renderers: &[Renderer],
    names: &[String],
    ab: Option<usize>,
    id: u64,
    header: Option<&std::sync::Arc<Vec<String>>>,
    fields: &csv::StringRecord,
) -> Result<(Rendered, u128), RenderError> {
    let Some(renderer) = renderers.get(ab.unwrap_or(0)) else {
        return Err(RenderError::Template(format!(
            "internal: no renderer for variant {ab:?}"
        )));
    };
    let name = ab.and_then(|i| names.get(i)).map(String::as_str);
    renderer.render_fields(id, header, fields).map(|r| {
        let key = content_key_in(name, &r.content, &r.ext);
        (r, key)
    })
}

/// What the single pass over the audience accumulates.
struct Acc {
    counts: Counts,
    groups: Vec<Group>,
    // Index by the key's high 64 bits (16 bytes an entry instead of 32); the full 128-bit key is
    // checked against the group, and the astronomically rare 64-bit clash goes to `clash`.
    by_key: FastMap<u64, u32>,
    clash: HashMap<u128, u32>,
    contents: Vec<(String, BTreeMap<String, String>)>,
    stored_bytes: usize,
    spilled: bool,
    row_group: Vec<u32>,
    ids_in_order: Vec<u64>,
    samples: Vec<Sample>,
    failures: BTreeMap<String, RenderProblem>,
    limits: StoreLimits,
    /// The A/B variant of each group.
    group_variant: Vec<u16>,
    /// The first sample of each A/B variant.
    ab_samples: Vec<Option<Sample>>,
    names: Vec<String>,
    /// Columns and vars, for "did you mean".
    known: Vec<String>,
}

impl Acc {
    fn accept(
        &mut self,
        id: u64,
        line: u64,
        pos: RowPos,
        ab: Option<usize>,
        r: Result<(Rendered, u128), RenderError>,
    ) {
        let (r, key) = match r {
            Ok(r) => r,
            Err(e) => {
                let what = match &e {
                    RenderError::Undefined {
                        variable, place, ..
                    } => {
                        let known: Vec<&str> = self.known.iter().map(String::as_str).collect();
                        let place = place
                            .as_ref()
                            .map(|p| format!(" in {p}"))
                            .unwrap_or_default();
                        match crate::spec::did_you_mean(variable, &known) {
                            Some(s) => format!(
                                "undefined variable `{variable}`{place} (did you mean `{s}`?)"
                            ),
                            None => format!("undefined variable `{variable}`{place}"),
                        }
                    }
                    RenderError::Template(m) => m.clone(),
                };
                // With A/B variants, say whose template it is.
                let what = match ab.and_then(|i| self.names.get(i)) {
                    Some(name) => format!("message.variants `{name}`: {what}"),
                    None => what,
                };
                let p = self.failures.entry(what.clone()).or_insert(RenderProblem {
                    what,
                    count: 0,
                    examples: Vec::new(),
                });
                p.count += 1;
                if p.examples.len() < EXAMPLES {
                    p.examples.push((id, line));
                }
                return;
            }
        };
        if r.used_empty {
            self.counts.empty_value_rows += 1;
        }
        let ab_missing = ab.is_some_and(|i| self.ab_samples.get(i).is_some_and(Option::is_none));
        if self.samples.len() < SAMPLES || ab_missing {
            let sample = Sample {
                id,
                line,
                content: r.content.clone(),
                ext: r.ext.clone(),
                variant_name: ab.and_then(|i| self.names.get(i)).cloned(),
                content_id: variant_of(key),
            };
            if ab_missing {
                if let Some(slot) = ab.and_then(|i| self.ab_samples.get_mut(i)) {
                    *slot = Some(sample.clone());
                }
            }
            if self.samples.len() < SAMPLES {
                self.samples.push(sample);
            }
        }
        let hi = (key >> 64) as u64;
        let found = match self.by_key.get(&hi) {
            Some(g) if self.groups[*g as usize].key() == key => Some(*g),
            Some(_) => self.clash.get(&key).copied(),
            None => None,
        };
        let g = match found {
            Some(g) => g,
            None => {
                let g = self.groups.len() as u32;
                let stored = if self.spilled {
                    NOT_STORED
                } else {
                    self.stored_bytes += r.content.len()
                        + r.ext.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                    if self.contents.len() >= self.limits.max_contents
                        || self.stored_bytes > self.limits.max_bytes
                    {
                        self.spilled = true;
                        self.contents = Vec::new();
                        for gr in &mut self.groups {
                            gr.stored = NOT_STORED;
                        }
                        NOT_STORED
                    } else {
                        self.contents.push((r.content, r.ext));
                        (self.contents.len() - 1) as u32
                    }
                };
                self.groups.push(Group {
                    key: [hi, key as u64],
                    pos,
                    stored,
                });
                self.group_variant
                    .push(ab.map(|i| i as u16).unwrap_or(NO_VARIANT));
                match self.by_key.entry(hi) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        self.clash.insert(key, g);
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(g);
                    }
                }
                g
            }
        };
        self.row_group.push(g);
        self.ids_in_order.push(id);
        self.counts.valid += 1;
    }
}

fn render_thread_gone() -> PlanError {
    PlanError::Template("the render thread stopped unexpectedly".into())
}

/// Take the next rendered chunk back (chunks return in the order they were sent) and accept its
/// rows in audience order.
fn take_back(
    acc: &mut Acc,
    rendered: &std::sync::mpsc::Receiver<Chunk>,
    free: &mut Vec<Chunk>,
) -> Result<(), PlanError> {
    let mut chunk = rendered.recv().map_err(|_| render_thread_gone())?;
    let Chunk { rows, len, out } = &mut chunk;
    for (p, r) in rows[..*len].iter().zip(out.drain(..)) {
        acc.accept(p.id, p.line, p.pos, p.ab, r);
    }
    chunk.len = 0;
    free.push(chunk);
    Ok(())
}

/// Build the plan: stream the audience once, render, group, hash.
pub fn build(c: &Campaign, opts: &PlanOptions) -> Result<Plan, PlanError> {
    build_with(c, opts, StoreLimits::default())
}

/// One audience row's outcome, reported in file order by [`build_observed`] during the plan's
/// single pass (what [`Plan::rows`] would give, without reading the audience again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowEvent<'a> {
    /// The `ordinal`-th valid row (0-based); its group is [`Plan::group_of_valid`] once built.
    Valid { id: u64, line: u64, ordinal: u64 },
    /// The id column does not hold an id.
    BadId {
        line: u64,
        raw_id: &'a str,
        reason: &'a str,
    },
    /// A column listed in `audience.required` is empty.
    MissingRequired { id: u64, line: u64, column: &'a str },
    /// The time zone column (`audience.timezone_column`) holds no known zone.
    BadZone { id: u64, line: u64, reason: &'a str },
    /// The id is on an earlier row.
    Duplicate { id: u64, line: u64 },
    /// The id is in suppression list number `list` ([`Plan::suppress_label`]).
    Suppressed { id: u64, line: u64, list: u16 },
    /// The holdout keeps it from being sent.
    Holdout { id: u64, line: u64 },
}

/// [`build`], telling `observer` each row's outcome as it streams by (`plan --diff`).
pub fn build_observed(
    c: &Campaign,
    opts: &PlanOptions,
    observer: &mut dyn FnMut(RowEvent<'_>),
) -> Result<Plan, PlanError> {
    build_threads(c, opts, StoreLimits::default(), 1, Some(observer))
}

/// [`build`] with explicit memory limits (tests use tiny ones to exercise re-rendering).
pub fn build_with(
    c: &Campaign,
    opts: &PlanOptions,
    limits: StoreLimits,
) -> Result<Plan, PlanError> {
    // Render threads: IMCAST_PLAN_THREADS=2 (or more) runs a two-stage pipeline: this thread
    // reads the CSV, dedupes, suppresses and groups, while one render thread renders chunks and
    // hashes their Contents; order is kept (chunks come back in the order they went). Default 1:
    // see BENCHMARKS.md for when the second thread pays on the shared 2-core machine.
    let workers = std::env::var("IMCAST_PLAN_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 4);
    build_threads(c, opts, limits, workers, None)
}

fn build_threads(
    c: &Campaign,
    opts: &PlanOptions,
    limits: StoreLimits,
    workers: usize,
    mut observer: Option<&mut dyn FnMut(RowEvent<'_>)>,
) -> Result<Plan, PlanError> {
    let assigner = Assigner::new(c);
    let trivial = assigner.is_trivial();
    let names: Vec<String> = assigner.names().to_vec();
    // One renderer per A/B variant (its body and Ext); one for a campaign without variants.
    let mut renderers = Vec::new();
    if c.message.variants.is_empty() {
        renderers.push(Renderer::new(c).map_err(|e| PlanError::Template(e.to_string()))?);
    } else {
        for (i, v) in c.message.variants.iter().enumerate() {
            let mut cv = c.clone();
            cv.message = c.message.for_variant(i);
            renderers.push(
                Renderer::new(&cv).map_err(|e| {
                    PlanError::Template(format!("message.variants `{}`: {e}", v.name))
                })?,
            );
        }
    }

    // Suppression lists: one map id → list, 8 bytes per id plus the label index.
    let mut suppress: FastMap<u64, u16> = FastMap::default();
    let mut suppress_labels = Vec::new();
    let mut list_hashes: Vec<[u8; 32]> = Vec::new();
    let default_col = match &c.audience.source {
        Source::Csv { id_column, .. } => id_column.clone(),
        Source::Ids(_) => "user_id".to_string(),
    };
    let extra: Vec<Source> = opts
        .extra_suppress
        .iter()
        .map(|p| Source::Csv {
            path: p.clone(),
            id_column: default_col.clone(),
        })
        .collect();
    for src in c.audience.exclude.iter().chain(extra.iter()) {
        let (set, h) = load_suppression_in(src, &c.files)?;
        let idx = suppress_labels.len() as u16;
        suppress_labels.push(src.label());
        list_hashes.push(h);
        for id in set {
            suppress.entry(id).or_insert(idx);
        }
    }

    let mut reader = AudienceReader::open_in(&c.audience.source, &c.files)?;
    let header = reader.header().cloned();
    let columns: Vec<String> = header
        .as_ref()
        .map(|h| h.names.as_ref().clone())
        .unwrap_or_default();
    let mut required = Vec::new();
    for r in &c.audience.required {
        match &header {
            None => return Err(PlanError::RequiredWithoutColumns),
            Some(h) => match h.names.iter().position(|n| n == r) {
                Some(i) => required.push((i, r.clone())),
                None => {
                    let path = match &c.audience.source {
                        Source::Csv { path, .. } => path.clone(),
                        Source::Ids(_) => PathBuf::from("inline"),
                    };
                    return Err(AudienceError::MissingRequiredColumn {
                        path,
                        column: r.clone(),
                        found: h.names.join(", "),
                    }
                    .into());
                }
            },
        }
    }
    let mut log = rows::RowLog::new(required.iter().map(|(_, r)| r.clone()).collect());
    let inline_ids = match &c.audience.source {
        Source::Ids(ids) => Some(ids),
        Source::Csv { .. } => None,
    };
    // Each valid row's zone (`schedule.local_time`), in audience order.
    let mut zones = crate::stages::Zones::new(c, &columns)?;
    let mut row_zone: Vec<u16> = Vec::new();
    // Per renderer: every recipient of that variant gets the same Content.
    let static_of: Vec<bool> = renderers.iter().map(|r| r.is_static(&columns)).collect();
    let static_content = renderers.len() == 1 && static_of.iter().all(|s| *s);
    for r in &mut renderers {
        r.prepare(&columns)
            .map_err(|e| PlanError::Template(e.to_string()))?;
    }
    // Variables to count distinct values of: columns the templates read (+ recipient).
    let read: std::collections::BTreeSet<String> = renderers
        .iter()
        .flat_map(|r| r.variables().iter().cloned())
        .collect();
    let tracked: Vec<(String, Option<usize>)> = read
        .iter()
        .filter_map(|v| {
            if v == "recipient" {
                Some((v.clone(), None))
            } else {
                columns
                    .iter()
                    .position(|c| c == v)
                    .map(|i| (v.clone(), Some(i)))
            }
        })
        .take(8)
        .collect();
    let mut distinct: Vec<FastSet<u64>> = vec![FastSet::default(); tracked.len()];

    let known: Vec<String> = columns
        .iter()
        .cloned()
        .chain(c.message.vars.keys().cloned())
        .collect();
    let mut acc = Acc {
        counts: Counts::default(),
        groups: Vec::new(),
        by_key: FastMap::default(),
        clash: HashMap::new(),
        contents: Vec::new(),
        stored_bytes: 0,
        spilled: false,
        row_group: Vec::new(),
        ids_in_order: Vec::new(),
        samples: Vec::new(),
        failures: BTreeMap::new(),
        limits,
        known,
        group_variant: Vec::new(),
        ab_samples: vec![None; names.len()],
        names: names.clone(),
    };
    let mut seen: FastSet<u64> = FastSet::default();
    // Per renderer: the group and sample of its static Content, once rendered.
    let mut static_cache: Vec<Option<(u32, Sample)>> = vec![None; renderers.len()];
    // Reserve the per-row vectors up front from the file size (an over-estimate costs only
    // address space: pages never written are never resident), so they never reallocate and
    // fragment the heap while growing.
    let estimate = match &c.audience.source {
        Source::Csv { path, .. } => c
            .files
            .size_hint(path)
            .map(|n| (n / 16) as usize)
            .unwrap_or(0),
        Source::Ids(ids) => ids.len(),
    }
    .min(1 << 28);
    acc.row_group.reserve(estimate);
    acc.ids_in_order.reserve(estimate);
    acc.groups.reserve(estimate);
    let names_of_header = header.as_ref().map(|h| &h.names);
    // One record reused for every row: the reader parses into it and, single-threaded, the
    // renderer renders straight from it (no per-row allocation or copy).
    let mut fields = csv::StringRecord::new();
    // A static Content is rendered once: nothing to hand to a second thread.
    let pipelined = workers > 1 && !static_of.iter().all(|s| *s);
    let renderers_ref = &renderers;
    let names_ref = &names;
    // Whether accepted rows may still need their Content (a new group while Contents are kept,
    // or a sample). Goes from true to false once, never back; while false the render thread
    // drops each Content where it was made (freeing across threads is what made the pipeline
    // slow and fat) and sends only its key.
    let need_content = std::sync::atomic::AtomicBool::new(true);
    let need_ref = &need_content;

    std::thread::scope(|s| -> Result<(), PlanError> {
        let (to_render, from_main) = std::sync::mpsc::channel::<Chunk>();
        let (to_main, rendered) = std::sync::mpsc::channel::<Chunk>();
        if pipelined {
            s.spawn(move || {
                for mut chunk in from_main {
                    chunk.out.clear();
                    let keep = need_ref.load(std::sync::atomic::Ordering::Acquire);
                    for p in &chunk.rows[..chunk.len] {
                        let mut r = render_keyed(
                            renderers_ref,
                            names_ref,
                            p.ab,
                            p.id,
                            names_of_header,
                            &p.fields,
                        );
                        if !keep {
                            if let Ok((rendered, _)) = &mut r {
                                rendered.content = String::new();
                                rendered.ext = BTreeMap::new();
                            }
                        }
                        chunk.out.push(r);
                    }
                    if to_main.send(chunk).is_err() {
                        break;
                    }
                }
            });
        } else {
            drop(from_main);
            drop(to_main);
        }
        let mut cur = Chunk::default();
        let mut free: Vec<Chunk> = Vec::new();
        let mut in_flight = 0usize;

        let id_index = header.as_ref().map(|h| h.id_index).unwrap_or(0);
        let mut valid_ordinal = 0u64;
        while let Some(row) = reader.next_row_into(&mut fields)? {
            acc.counts.total += 1;
            let at = log.line(row.line);
            // The id's text, where it is not the id's decimal form (inline ids always are).
            let text = || match inline_ids {
                Some(ids) => ids
                    .get(row.index as usize)
                    .map(u64::to_string)
                    .unwrap_or_default(),
                None => fields.get(id_index).unwrap_or("").to_string(),
            };
            let id = match row.id {
                Ok(id) => id,
                Err(reason) => {
                    log.raw(at, &text());
                    log.note(at, 0, rows::Note::BadId);
                    acc.counts.invalid += 1;
                    if let Some(o) = observer.as_mut() {
                        o(RowEvent::BadId {
                            line: row.line,
                            raw_id: fields.get(id_index).unwrap_or(""),
                            reason: &reason,
                        });
                    }
                    continue;
                }
            };
            if inline_ids.is_none() {
                let raw = fields.get(id_index).unwrap_or("");
                if itoa::Buffer::new().format(id) != raw {
                    log.raw(at, raw);
                }
            }
            if !seen.insert(id) {
                log.note(at, id, rows::Note::Duplicate);
                acc.counts.duplicate += 1;
                if let Some(o) = observer.as_mut() {
                    o(RowEvent::Duplicate { id, line: row.line });
                }
                continue;
            }
            if let Some(list) = suppress.get(&id) {
                log.note(at, id, rows::Note::Suppressed(*list));
                acc.counts.suppressed += 1;
                if let Some(o) = observer.as_mut() {
                    o(RowEvent::Suppressed {
                        id,
                        line: row.line,
                        list: *list,
                    });
                }
                continue;
            }
            if let Some((k, (_, column))) = required
                .iter()
                .enumerate()
                .find(|(_, (i, _))| fields.get(*i).unwrap_or("").trim().is_empty())
            {
                log.note(at, id, rows::Note::Required(k as u16));
                acc.counts.invalid += 1;
                if let Some(o) = observer.as_mut() {
                    o(RowEvent::MissingRequired {
                        id,
                        line: row.line,
                        column,
                    });
                }
                continue;
            }
            let ab = if trivial {
                None
            } else {
                match assigner.assign(id) {
                    Assignment::Holdout => {
                        log.note(at, id, rows::Note::Holdout);
                        acc.counts.holdout += 1;
                        if let Some(o) = observer.as_mut() {
                            o(RowEvent::Holdout { id, line: row.line });
                        }
                        continue;
                    }
                    Assignment::Send(v) => v,
                }
            };
            if let Some(z) = zones.as_mut() {
                match z.resolve(&fields) {
                    Ok(i) => row_zone.push(i),
                    Err(reason) => {
                        let r = log.zone_reason(&reason);
                        log.note(at, id, rows::Note::BadZone(r));
                        acc.counts.invalid += 1;
                        if let Some(o) = observer.as_mut() {
                            o(RowEvent::BadZone {
                                id,
                                line: row.line,
                                reason: &reason,
                            });
                        }
                        continue;
                    }
                }
            }
            if let Some(o) = observer.as_mut() {
                o(RowEvent::Valid {
                    id,
                    line: row.line,
                    ordinal: valid_ordinal,
                });
            }
            valid_ordinal += 1;
            for (k, (_, col)) in tracked.iter().enumerate() {
                let h = match col {
                    Some(i) => value_hash(fields.get(*i).unwrap_or("")),
                    None => id,
                };
                distinct[k].insert(h);
            }
            let ri = ab.unwrap_or(0);
            // Pipelined, every row goes through the chunks: rows are accepted in audience order.
            if let Some(Some((g, sample))) = static_cache.get(ri).filter(|_| !pipelined) {
                if acc.samples.len() < SAMPLES {
                    acc.samples.push(Sample {
                        id,
                        line: row.line,
                        ..sample.clone()
                    });
                }
                acc.row_group.push(*g);
                acc.ids_in_order.push(id);
                acc.counts.valid += 1;
                continue;
            }
            if !pipelined {
                let r = render_keyed(&renderers, &names, ab, id, names_of_header, &fields);
                let before = acc.counts.valid;
                let line = row.line;
                acc.accept(id, line, row.pos, ab, r);
                if static_of.get(ri).copied().unwrap_or(false) && acc.counts.valid > before {
                    if let (Some(g), Some(slot)) = (acc.row_group.last(), static_cache.get_mut(ri))
                    {
                        let content = acc.groups.get(*g as usize).map(|gr| variant_of(gr.key()));
                        let sample = acc
                            .samples
                            .iter()
                            .rev()
                            .find(|s| s.id == id)
                            .cloned()
                            .or_else(|| acc.ab_samples.get(ri).cloned().flatten());
                        if let (Some(mut s), Some(content)) = (sample, content) {
                            s.content_id = content;
                            *slot = Some((*g, s));
                        }
                    }
                }
                continue;
            }
            if cur.len == cur.rows.len() {
                cur.rows.push(Pending {
                    id,
                    line: row.line,
                    pos: row.pos,
                    ab,
                    fields: csv::StringRecord::new(),
                });
            }
            if let Some(slot) = cur.rows.get_mut(cur.len) {
                slot.id = id;
                slot.line = row.line;
                slot.pos = row.pos;
                slot.ab = ab;
                // The record moves into the chunk; the slot's old one is read into next.
                std::mem::swap(&mut slot.fields, &mut fields);
                cur.len += 1;
            }
            if cur.len >= CHUNK {
                while in_flight >= IN_FLIGHT {
                    take_back(&mut acc, &rendered, &mut free)?;
                    in_flight -= 1;
                    // Every variant with a weight needs its example before Contents go.
                    let examples_done = acc
                        .ab_samples
                        .iter()
                        .zip(&c.message.variants)
                        .all(|(s, v)| s.is_some() || v.weight == 0);
                    if acc.spilled && acc.samples.len() >= SAMPLES && examples_done {
                        need_content.store(false, std::sync::atomic::Ordering::Release);
                    }
                }
                let full = std::mem::replace(&mut cur, free.pop().unwrap_or_default());
                to_render.send(full).map_err(|_| render_thread_gone())?;
                in_flight += 1;
            }
        }
        if pipelined {
            if cur.len > 0 {
                to_render.send(cur).map_err(|_| render_thread_gone())?;
                in_flight += 1;
            }
            while in_flight > 0 {
                take_back(&mut acc, &rendered, &mut free)?;
                in_flight -= 1;
            }
        }
        Ok(())
    })?;
    let Acc {
        mut counts,
        groups,
        by_key,
        clash,
        contents,
        row_group,
        ids_in_order,
        samples,
        failures,
        group_variant,
        ab_samples,
        ..
    } = acc;
    if static_content && counts.empty_value_rows > 0 {
        counts.empty_value_rows = counts.valid;
    }
    let audience_hash = reader.finish()?;
    drop(by_key);
    drop(clash);
    drop(seen);
    drop(suppress);
    log.finish()?;
    if !failures.is_empty() {
        let mut v: Vec<RenderProblem> = failures.into_values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.what.cmp(&b.what)));
        return Err(PlanError::Render(v));
    }

    // The run's stages (a canary, or waves): each valid row's stage, in audience order. Calls
    // are cut per (stage, group) — a "bucket" — ordered by stage, then group: a stage's calls
    // are one contiguous range of call numbers. Without stages a bucket is a group.
    let staged = match &zones {
        Some(z) => Some(crate::stages::waves(c, z, &row_zone, opts.local_date)),
        None => crate::stages::assign_rows(c, &ids_in_order),
    };
    drop(row_zone);
    let mut group_size = vec![0u64; groups.len()];
    for g in &row_group {
        group_size[*g as usize] += 1;
    }
    let (bucket_group, row_bucket, group_start, ids_by_group, stage_of_bucket, stage_names) =
        match staged {
            None => {
                // Counting sort of valid ids by group (stable).
                let mut group_start = vec![0usize; groups.len() + 1];
                for (g, n) in group_size.iter().enumerate() {
                    group_start[g + 1] = group_start[g] + *n as usize;
                }
                let mut fill = group_start.clone();
                let mut ids_by_group = vec![0u64; ids_in_order.len()];
                for (g, id) in row_group.iter().zip(ids_in_order.iter()) {
                    let slot = &mut fill[*g as usize];
                    ids_by_group[*slot] = *id;
                    *slot += 1;
                }
                (
                    None,
                    None,
                    group_start,
                    ids_by_group,
                    Vec::new(),
                    Vec::new(),
                )
            }
            Some(st) => {
                let o = crate::stages::order_rows(&row_group, &group_size, &st.row_stage);
                let ids: Vec<u64> = o.order.iter().map(|r| ids_in_order[*r as usize]).collect();
                (
                    Some(o.bucket_group),
                    Some(o.row_bucket),
                    o.bucket_start,
                    ids,
                    o.bucket_stage,
                    st.stages,
                )
            }
        };
    drop(ids_in_order);

    let max = c.action.max_receivers() as u64;
    let nbuckets = group_start.len() - 1;
    let mut group_call_base = Vec::with_capacity(nbuckets);
    let mut calls = 0u64;
    let mut stages: Vec<crate::stages::PlanStage> = stage_names
        .into_iter()
        .map(|s| crate::stages::PlanStage {
            name: s.name,
            first_call: 0,
            calls: 0,
            recipients: 0,
            at: s.at,
            zones: s.zones,
            date: s.date,
        })
        .collect();
    for b in 0..nbuckets {
        group_call_base.push(calls);
        let size = (group_start[b + 1] - group_start[b]) as u64;
        let n = size.div_ceil(max);
        if let Some(s) = stage_of_bucket
            .get(b)
            .and_then(|s| stages.get_mut(*s as usize))
        {
            if s.recipients == 0 {
                s.first_call = calls;
            }
            s.calls += n;
            s.recipients += size;
        }
        calls += n;
    }
    // An empty stage starts where the next one does (it has no calls).
    let mut next = calls;
    for s in stages.iter_mut().rev() {
        if s.recipients == 0 {
            s.first_call = next;
        }
        next = s.first_call;
    }
    counts.calls = calls;
    counts.distinct_contents = groups.len() as u64;
    let mut ab: Vec<AbVariant> = c
        .message
        .variants
        .iter()
        .zip(ab_samples)
        .map(|(v, example)| AbVariant {
            name: v.name.clone(),
            weight: v.weight,
            recipients: 0,
            calls: 0,
            distinct_contents: 0,
            example,
        })
        .collect();
    for (g, v) in group_variant.iter().enumerate() {
        if let Some(a) = ab.get_mut(*v as usize) {
            let size = (group_start[g + 1] - group_start[g]) as u64;
            a.recipients += size;
            a.calls += size.div_ceil(max);
            a.distinct_contents += 1;
        }
    }
    // What the provider counts: receivers for batch, requests (one message each) otherwise.
    counts.messages = c.action.total_units(counts.valid, calls);

    // The plan hash.
    let mut h = Sha256::new();
    h.update(b"imcast-plan/1\n");
    h.update((c.source.len() as u64).to_le_bytes());
    h.update(c.source.as_bytes());
    for (name, fh) in template_files(&renderers) {
        h.update(b"template\0");
        h.update(name.as_bytes());
        h.update(fh);
    }
    h.update(b"audience\0");
    h.update(audience_hash);
    if let Some(d) = stages.first().and_then(|s| s.date) {
        // Waves are at a date's local time: another date is another plan.
        h.update(b"local_date\0");
        h.update(d.to_string().as_bytes());
    }
    for lh in &list_hashes {
        h.update(b"suppress\0");
        h.update(lh);
    }
    let hash = hex::encode(h.finalize());
    let content_key = content_key_of(c, &renderers, &audience_hash);

    let variable_distinct: BTreeMap<String, u64> = tracked
        .iter()
        .zip(distinct.iter())
        .map(|((n, _), s)| (n.clone(), s.len() as u64))
        .collect();

    let mut warnings = Vec::new();
    if c.action == Action::Batch && counts.valid >= 2 && counts.distinct_contents * 2 > counts.valid
    {
        let mut culprits: Vec<(&String, &u64)> = variable_distinct
            .iter()
            .filter(|(_, n)| **n * 2 > counts.distinct_contents)
            .collect();
        culprits.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let named: Vec<String> = culprits
            .iter()
            .map(|(n, d)| format!("`{n}` ({d} distinct values)"))
            .collect();
        warnings.push(format!(
            "personalized: {} of {} recipients get a Content of their own, so calls carry {:.1} receivers on average instead of up to 500; responsible: {}",
            counts.distinct_contents,
            counts.valid,
            counts.valid as f64 / counts.calls.max(1) as f64,
            if named.is_empty() {
                "the templates' per-recipient values".to_string()
            } else {
                named.join(", ")
            }
        ));
    }
    if counts.empty_value_rows > 0 {
        warnings.push(format!(
            "{} recipient{} got a message that used an empty value (e.g. \"Hi ,\"); list such columns in `audience.required` to make those rows invalid",
            counts.empty_value_rows,
            if counts.empty_value_rows == 1 { "" } else { "s" }
        ));
    }
    if counts.valid == 0 {
        warnings.push("no valid recipients: nothing would be sent".to_string());
    }

    Ok(Plan {
        campaign: c.clone(),
        renderers,
        assigner,
        group_variant,
        ab,
        hash,
        content_key,
        counts,
        groups,
        contents,
        ids_by_group,
        group_start,
        row_group,
        group_call_base,
        bucket_group,
        row_bucket,
        group_size,
        stages,
        log,
        suppress_labels,
        samples,
        variable_distinct,
        warnings,
        static_content,
        header: header.map(|h| h.names),
    })
}

impl Plan {
    /// Hex sha256 over everything that decides what is sent.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Hex sha256 over what decides the content and the audience, *excluding* suppression:
    /// the campaign file without `audience.exclude`, the templates and the audience file, but not
    /// the suppression lists. Two plans with the same key differ at most in who is suppressed (the
    /// journal then checks row by row that ids were only added to suppression).
    pub fn content_key(&self) -> &str {
        &self.content_key
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn campaign(&self) -> &Campaign {
        &self.campaign
    }

    /// Warnings for people (personalization, empty values, nothing to send).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The first few rendered recipients.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Distinct values of each per-recipient variable the templates read.
    pub fn variable_distinct(&self) -> &BTreeMap<String, u64> {
        &self.variable_distinct
    }

    /// True when every recipient gets the same Content (rendered once).
    pub fn is_static(&self) -> bool {
        self.static_content
    }

    /// The A/B variants (`message.variants`) with their recipients, calls and an example; empty
    /// for a campaign without variants.
    pub fn ab_variants(&self) -> &[AbVariant] {
        &self.ab
    }

    /// Who gets which variant and who is held out.
    pub fn assigner(&self) -> &Assigner {
        &self.assigner
    }

    /// The A/B variant (index into `message.variants`) group `g` belongs to.
    pub fn ab_of_group(&self, g: usize) -> Option<usize> {
        self.group_variant
            .get(g)
            .filter(|v| **v != NO_VARIANT)
            .map(|v| *v as usize)
    }

    /// The A/B variant name of group `g`.
    pub fn variant_name_of_group(&self, g: usize) -> Option<&str> {
        self.ab_of_group(g).and_then(|i| self.assigner.name(i))
    }

    /// The A/B variant name of the distinct Content whose variant id is `variant`, if any.
    pub fn variant_name_of(&self, variant: &str) -> Option<&str> {
        (0..self.groups.len())
            .find(|&g| variant_of(self.groups[g].key()) == variant)
            .and_then(|g| self.variant_name_of_group(g))
    }

    /// Whether Contents are kept in memory (false: re-rendered by `calls()`).
    pub fn contents_in_memory(&self) -> bool {
        self.groups.iter().all(|g| g.stored().is_some())
    }

    /// Every call, in plan order (deterministic).
    pub fn calls(&self) -> impl Iterator<Item = Result<PlannedCall, PlanError>> + '_ {
        CallIter {
            plan: self,
            group: 0,
            offset: 0,
            seq: 0,
            current: None,
            cursor: None,
            failed: false,
            last_group: None,
        }
    }

    /// Every audience row in file order with its outcome, from what the plan's pass over the
    /// audience kept (the audience is not read again; see `rows`).
    pub fn rows(&self) -> impl Iterator<Item = Result<AudienceRow, PlanError>> + '_ {
        rows::Rows::new(self)
    }

    /// The `max` distinct Contents with the most recipients (ties: plan order), in plan order,
    /// each rendered, with its variant id and recipient count (for the run report). Re-renders a
    /// Content the plan does not keep in memory from its first row.
    pub fn variants(&self, max: usize) -> Result<Vec<PlanVariant>, PlanError> {
        let size = |g: usize| self.group_size[g];
        let mut chosen: Vec<usize> = (0..self.groups.len()).collect();
        if chosen.len() > max {
            chosen.select_nth_unstable_by_key(max, |&g| (std::cmp::Reverse(size(g)), g));
            chosen.truncate(max);
        }
        chosen.sort_unstable();
        let mut cursor = None;
        chosen
            .into_iter()
            .map(|g| {
                let (content, ext) = self.content_of(g, &mut cursor)?;
                Ok(PlanVariant {
                    variant: variant_of(self.groups[g].key()),
                    recipients: size(g),
                    variant_name: self.variant_name_of_group(g).map(str::to_string),
                    msg_type: self.campaign.message.msg_type,
                    content,
                    ext,
                })
            })
            .collect()
    }

    /// The call that carries `id`, if `id` is a valid recipient.
    pub fn call_for(&self, id: u64) -> Option<Result<PlannedCall, PlanError>> {
        self.calls().find(|c| match c {
            Ok(c) => c.receivers.contains(&id),
            Err(_) => true,
        })
    }

    /// The group of the `ordinal`-th valid row (audience order; see [`RowEvent::Valid`]).
    pub fn group_of_valid(&self, ordinal: u64) -> Option<usize> {
        self.row_group.get(ordinal as usize).map(|g| *g as usize)
    }

    /// The name of suppression list number `list` (see [`RowEvent::Suppressed`]).
    pub fn suppress_label(&self, list: u16) -> Option<&str> {
        self.suppress_labels.get(list as usize).map(String::as_str)
    }

    /// The group (one distinct Content and Ext) that call `seq` carries.
    pub fn group_of_call(&self, seq: u64) -> Option<usize> {
        let b = self.group_call_base.partition_point(|b| *b <= seq);
        (b > 0 && seq < self.counts.calls).then(|| self.bucket_group(b - 1))
    }

    /// The group of bucket `b` (see `ids_by_group`).
    fn bucket_group(&self, b: usize) -> usize {
        match &self.bucket_group {
            Some(v) => v.get(b).map_or(b, |g| *g as usize),
            None => b,
        }
    }

    /// The run's stages in order (empty: the plan is sent as one stage).
    pub fn stages(&self) -> &[crate::stages::PlanStage] {
        &self.stages
    }

    /// A 128-bit digest of group `g`'s Content and Ext: equal across plans exactly when what the
    /// recipients get is equal (see `content_key`).
    pub fn group_key(&self, g: usize) -> Option<u128> {
        self.groups.get(g).map(Group::key)
    }

    /// The Content and Ext of each group in `gs` (re-rendered in one pass over the audience when
    /// not kept in memory).
    pub fn group_contents(&self, gs: &[usize]) -> Result<Vec<GroupContent>, PlanError> {
        let mut order: Vec<usize> = (0..gs.len()).collect();
        order.sort_by_key(|i| self.groups.get(gs[*i]).map(|g| g.pos));
        let mut out = vec![(String::new(), BTreeMap::new()); gs.len()];
        let mut cursor = None;
        for i in order {
            if gs[i] < self.groups.len() {
                out[i] = self.content_of(gs[i], &mut cursor)?;
            }
        }
        Ok(out)
    }

    fn content_of(
        &self,
        g: usize,
        cursor: &mut Option<RowCursor>,
    ) -> Result<(String, BTreeMap<String, String>), PlanError> {
        let group = &self.groups[g];
        if let Some(i) = group.stored() {
            if let Some((c, e)) = self.contents.get(i as usize) {
                return Ok((c.clone(), e.clone()));
            }
        }
        if cursor.is_none() {
            *cursor = Some(RowCursor::open_in(
                &self.campaign.audience.source,
                &self.campaign.files,
            )?);
        }
        let Some(cur) = cursor.as_mut() else {
            return Err(PlanError::Changed("audience cursor".into()));
        };
        let row = cur.seek_forward(group.pos, 0)?;
        let id = row
            .id
            .map_err(|e| PlanError::Changed(format!("line {}: {e}", row.line)))?;
        let input = RowInput {
            id,
            header: self.header.as_ref(),
            fields: row.fields,
        };
        let ab = self.ab_of_group(g);
        let renderer = self
            .renderers
            .get(ab.unwrap_or(0))
            .ok_or_else(|| PlanError::Changed(format!("group {g}: no renderer")))?;
        let r = renderer
            .render(input)
            .map_err(|e| PlanError::Changed(format!("line {}: {e}", row.line)))?;
        let name = ab.and_then(|i| self.assigner.name(i));
        if content_key_in(name, &r.content, &r.ext) != group.key() {
            return Err(PlanError::Changed(format!(
                "line {} renders differently than when planned; plan again",
                row.line
            )));
        }
        Ok((r.content, r.ext))
    }
}

struct CallIter<'a> {
    plan: &'a Plan,
    group: usize,
    offset: usize,
    seq: u64,
    current: Option<(String, BTreeMap<String, String>, String)>,
    cursor: Option<RowCursor>,
    failed: bool,
    last_group: Option<usize>,
}

impl Iterator for CallIter<'_> {
    type Item = Result<PlannedCall, PlanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let p = self.plan;
        let max = p.campaign.action.max_receivers();
        loop {
            if self.group + 1 >= p.group_start.len() {
                return None;
            }
            let start = p.group_start[self.group];
            let end = p.group_start[self.group + 1];
            if start + self.offset >= end {
                self.group += 1;
                self.offset = 0;
                self.current = None;
                continue;
            }
            if self.current.is_none() {
                let g = p.bucket_group(self.group);
                // The audience cursor only moves forward: a later stage starts over.
                if self.last_group.is_some_and(|l| g < l) {
                    self.cursor = None;
                }
                self.last_group = Some(g);
                match p.content_of(g, &mut self.cursor) {
                    Ok((c, e)) => self.current = Some((c, e, variant_of(p.groups[g].key()))),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let from = start + self.offset;
            let to = (from + max).min(end);
            self.offset += to - from;
            let (content, ext, variant) = self.current.as_ref()?;
            let call = PlannedCall {
                seq: self.seq,
                variant: variant.clone(),
                receivers: p.ids_by_group[from..to].to_vec(),
                msg_type: p.campaign.message.msg_type,
                content: content.clone(),
                ext: ext.clone(),
            };
            self.seq += 1;
            return Some(Ok(call));
        }
    }
}

/// See [`Plan::content_key`]. The campaign file is read as YAML so the `audience.exclude` entry
/// can be left out; a file that does not read as a mapping is hashed as bytes.
fn content_key_of(c: &Campaign, renderers: &[Renderer], audience_hash: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"imcast-content/1\n");
    match serde_saphyr::from_str::<serde_json::Value>(&c.source) {
        Ok(mut v) => {
            if let Some(a) = v.get_mut("audience").and_then(|a| a.as_object_mut()) {
                a.remove("exclude");
            }
            let text = serde_json::to_string(&v).unwrap_or_default();
            h.update(b"campaign-json\0");
            h.update((text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        Err(_) => {
            h.update(b"campaign-bytes\0");
            h.update((c.source.len() as u64).to_le_bytes());
            h.update(c.source.as_bytes());
        }
    }
    for (name, fh) in template_files(renderers) {
        h.update(b"template\0");
        h.update(name.as_bytes());
        h.update(fh);
    }
    h.update(b"audience\0");
    h.update(audience_hash);
    hex::encode(h.finalize())
}

/// Every template file the renderers read (main and includes), each once, by name. With one
/// renderer this is exactly its `files()` (plans of campaigns without variants hash as before).
fn template_files(renderers: &[Renderer]) -> BTreeMap<String, [u8; 32]> {
    let mut all = BTreeMap::new();
    for r in renderers {
        all.extend(r.files());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{LoadOptions, Problem};
    use std::io::Write;

    /// The render-thread pipeline gives exactly the single-threaded plan: counts, hash, calls,
    /// rows and samples, over several chunks, with duplicates, bad ids and empty values, through
    /// both the substitution fast path and minijinja, with Contents kept and re-rendered.
    #[test]
    fn pipeline_matches_single_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("a.csv");
        let mut w = std::fs::File::create(&csv).expect("csv");
        writeln!(w, "user_id,name").expect("write");
        for i in 0..6_000u64 {
            let id = match i % 97 {
                0 => "x".to_string(),
                1 => (1_000_000 + i - 2).to_string(),
                _ => (1_000_000 + i).to_string(),
            };
            let name = if i % 89 == 0 {
                String::new()
            } else {
                format!("n{}", i % 300)
            };
            writeln!(w, "{id},{name}").expect("write");
        }
        drop(w);
        let plain = |text: &str| format!("message: {{ type: text, text: {text:?} }}\n");
        // A/B variants (a personalized, a filtered and a static one) and a holdout.
        let ab = "holdout: 10%\nmessage:\n  type: text\n  variants:\n    - { name: a, weight: 2, text: \"Hi {{ name }} {{ recipient.id }}\" }\n    - { name: b, weight: 1, text: \"Yo {{ name|upper }}\" }\n    - { name: c, weight: 1, text: \"static\" }\n    - { name: d, weight: 0, text: \"off\" }\n".to_string();
        for message in [
            plain("Hi {{ name }} {{ recipient.id }}"),
            plain("Hi {{ name|upper }}"),
            ab,
        ] {
            let yaml = format!(
                "version: 1\nname: t\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\nsender: 1\naudience: {{ csv: a.csv }}\n{message}"
            );
            let c = crate::spec::parse_str(
                &yaml,
                dir.path().join("c.yaml"),
                dir.path().to_path_buf(),
                &LoadOptions::default(),
            )
            .unwrap_or_else(|p: Vec<Problem>| panic!("{p:?}"));
            for limits in [
                StoreLimits::default(),
                StoreLimits {
                    max_contents: 100,
                    max_bytes: 1 << 20,
                },
            ] {
                let one =
                    build_threads(&c, &PlanOptions::default(), limits, 1, None).expect("plan 1");
                let two =
                    build_threads(&c, &PlanOptions::default(), limits, 2, None).expect("plan 2");
                assert_eq!(one.counts(), two.counts());
                assert!(one.counts().duplicate > 0 && one.counts().invalid > 0);
                assert!(one.counts().empty_value_rows > 0);
                assert_eq!(one.hash(), two.hash());
                assert_eq!(one.samples(), two.samples());
                let calls = |p: &Plan| p.calls().collect::<Result<Vec<_>, _>>().expect("calls");
                assert_eq!(calls(&one), calls(&two));
                let rows = |p: &Plan| p.rows().collect::<Result<Vec<_>, _>>().expect("rows");
                assert_eq!(rows(&one), rows(&two));
                assert_eq!(one.ab_variants(), two.ab_variants());
                for v in one.ab_variants() {
                    let shown = v.example.as_ref().map(|e| e.content.as_str());
                    if v.weight == 0 {
                        assert_eq!((v.recipients, shown), (0, None));
                    } else {
                        assert!(v.recipients > 0 && shown.is_some_and(|t| t.len() > 10));
                    }
                }
            }
        }
    }

    /// `rows()` gives what the plan's single pass kept; here checked against the audience read
    /// again (line, id text and id of every row) and judged again (each status, a duplicate's
    /// first line, a valid row's call and A/B variant), over ids written oddly, bad ids, blank
    /// lines, a record over two lines, duplicates of valid and of suppressed rows, an empty
    /// required column, a holdout and a canary (stages: buckets are not groups).
    #[test]
    fn rows_from_memory_match_the_audience_read_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = String::from("user_id,name,req\n");
        a.push_str("1001,a,x\n0042,b,x\n 1003 ,c,x\n1001,dup,x\nabc,bad,x\n-5,neg,x\n");
        a.push_str("99999999999999999999,big,x\n,empty,x\n\n\n\"1004\",\"two\nlines\",x\n");
        a.push_str("1005,e,\n2001,sup,x\n2001,supdup,x\n0042,dup2,x\n");
        for i in 0..3_000u64 {
            let id = 10_000 + if i % 13 == 0 { i / 2 } else { i };
            a.push_str(&format!(
                "{id},n{},{}\n",
                i % 7,
                if i % 101 == 0 { "" } else { "x" }
            ));
        }
        // Enough rejected rows that the log's records go to its temporary file, then valid and
        // duplicate rows after them.
        for i in 0..40_000u64 {
            a.push_str(&format!("bad{i},n,x\n"));
            if i % 4 == 0 {
                a.push_str(&format!("{},n,x\n", 20_000 + i / 4 % 700));
            }
        }
        std::fs::write(dir.path().join("a.csv"), &a).expect("csv");
        std::fs::write(dir.path().join("s.csv"), "user_id\n2001\n10005\n").expect("csv");
        let yaml = "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { csv: a.csv, required: [req], exclude: [ { csv: s.csv } ] }\nrollout: { canary: 10%, wait: 10m, max_failure_ratio: 0.02 }\nholdout: 10%\nmessage:\n  type: text\n  variants:\n    - { name: a, weight: 2, text: \"Hi {{ name }}\" }\n    - { name: b, weight: 1, text: \"static\" }\n";
        let c = crate::spec::parse_str(
            yaml,
            dir.path().join("c.yaml"),
            dir.path().to_path_buf(),
            &LoadOptions::default(),
        )
        .unwrap_or_else(|p: Vec<Problem>| panic!("{p:?}"));
        let plan = build(&c, &PlanOptions::default()).expect("plan");
        assert!(plan.stages().len() == 2 && plan.counts().holdout > 0);
        assert!(
            plan.log.spilled(),
            "the rejected rows' records went to the file"
        );
        let mut call_of = HashMap::new();
        for call in plan.calls() {
            let call = call.expect("call");
            for id in &call.receivers {
                call_of.insert(*id, (call.seq, call.variant.clone()));
            }
        }
        let rows: Vec<AudienceRow> = plan.rows().collect::<Result<_, _>>().expect("rows");
        let mut reader = AudienceReader::open_in(&c.audience.source, &c.files).expect("open");
        let mut first: HashMap<u64, u64> = HashMap::new();
        let mut seen = 0;
        let mut kinds = BTreeMap::new();
        for got in &rows {
            let want = reader.next_row().expect("read").expect("a row");
            seen += 1;
            assert_eq!(
                (got.line, &*got.id_text(), got.id),
                (want.line, want.raw_id.as_str(), want.id.clone().ok()),
                "{got:?}"
            );
            let id = match want.id {
                Ok(id) => id,
                Err(reason) => {
                    assert_eq!(got.status, RowStatus::Invalid { reason });
                    *kinds.entry("bad id").or_insert(0) += 1;
                    continue;
                }
            };
            if let Some(l) = first.get(&id) {
                assert_eq!(got.status, RowStatus::Duplicate { first_line: *l });
                *kinds.entry("duplicate").or_insert(0) += 1;
                continue;
            }
            first.insert(id, want.line);
            let kind = match &got.status {
                RowStatus::Suppressed { list } => {
                    assert!(id == 2001 || id == 10_005, "{got:?}");
                    assert_eq!(list, "s.csv");
                    "suppressed"
                }
                RowStatus::Invalid { reason } => {
                    assert_eq!(want.fields.get(2), Some(""), "{got:?}");
                    assert_eq!(reason, "required column `req` is empty");
                    "required"
                }
                RowStatus::Holdout => {
                    assert_eq!(plan.assigner.assign(id), Assignment::Holdout);
                    "holdout"
                }
                RowStatus::Valid { call } => {
                    let (seq, variant) = call_of.get(&id).expect("in a call");
                    assert_eq!(call, seq, "{got:?}");
                    assert_eq!(
                        got.variant_name.as_deref(),
                        plan.variant_name_of(variant),
                        "{got:?}"
                    );
                    "valid"
                }
                RowStatus::Duplicate { .. } => panic!("{got:?}"),
            };
            *kinds.entry(kind).or_insert(0) += 1;
        }
        assert!(reader.next_row().expect("read").is_none(), "rows missing");
        assert_eq!(seen, plan.counts().total);
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert_eq!(kinds["valid"], call_of.len() as u64);
        assert_eq!(rows[0].raw_id, None, "1001 is its own text");
        assert_eq!(rows[1].raw_id.as_deref(), Some("0042"));
        assert_eq!(rows[2].raw_id.as_deref(), Some(" 1003 "));
        assert_eq!(rows[8].line, 12, "a record after blank lines");
        assert_eq!(rows[9].line, 14, "a record after one over two lines");
    }
}
