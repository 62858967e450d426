//! The campaign file: parse (serde-saphyr, `deny_unknown_fields`), then validate into a
//! [`Campaign`] — the one validated value every later stage reads.
//!
//! Invariants: a `Campaign` has a canonical path, a resolved endpoint that passed the endpoint
//! policy (known region host, loopback, or `--allow-endpoint`), paths resolved against the file's
//! directory, and no credential in it. Every problem found is reported at once with file, line and
//! column ([`SpecError`]); a parse error stops at the first problem because serde does.
//! This module reads the campaign file only: it does not open the audience or templates beyond
//! checking that they exist (that is `plan`'s job), and it never touches the network.

mod raw;
mod scan;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use serde_saphyr::Spanned;

pub use raw::{RawCampaign, RawMessageType, StringOrNumber};

use crate::action::Action;
use crate::config::{BreakerFields, Limit};
use crate::schedule::{QuietHours, Schedule};

/// Options the command line adds to loading.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Endpoints allowed besides region hosts and loopback (`--allow-endpoint`).
    pub allow_endpoints: Vec<String>,
}

/// One problem in a campaign file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// 1-based column, when known.
    pub column: Option<u64>,
    pub message: String,
}

/// Everything wrong with one campaign file.
#[derive(Debug, thiserror::Error)]
pub struct SpecError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file.display())?;
            if let Some(l) = p.line {
                write!(f, ":{l}")?;
                if let Some(c) = p.column {
                    write!(f, ":{c}")?;
                }
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

/// How many recipients a canary takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// `parts` per `whole` of the valid recipients (1% is 1 per 100, 0.5% is 5 per 1000).
    Fraction { parts: u64, whole: u64 },
    /// This many valid recipients (the ones with the lowest hash points).
    Count(u64),
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Fraction { parts, whole } => {
                // whole is 100 × 10^decimals: print the percentage with those decimals.
                let mut decimals = 0usize;
                let mut w = whole;
                while w > 100 {
                    w /= 10;
                    decimals += 1;
                }
                let int = parts / 10u64.pow(decimals as u32);
                let frac = parts % 10u64.pow(decimals as u32);
                if decimals == 0 {
                    write!(f, "{int}%")
                } else {
                    write!(f, "{int}.{frac:0decimals$}%")
                }
            }
        }
    }
}

/// `rollout:`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollout {
    pub canary: Share,
    /// From the canary's end to the decision.
    pub wait: Duration,
    /// The canary passes when (failed + unknown) / sent ≤ this.
    pub max_failure_ratio: f64,
}

/// "HH:MM" (24-hour) as a time of day.
fn parse_local_time(s: &str) -> Option<jiff::civil::Time> {
    let (h, m) = s.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    jiff::civil::Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// Parse "1%", "0.25%" (at most 4 decimals) into a fraction.
fn parse_share_percent(s: &str) -> Option<Share> {
    let num = s.trim().strip_suffix('%')?.trim();
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty()
        || frac.len() > 4
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let parts: u64 = digits.parse().ok()?;
    let whole = 100u64 * 10u64.pow(frac.len() as u32);
    (parts <= whole).then_some(Share::Fraction { parts, whole })
}

/// `deadline:` — when pending recipients become `expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    At(Timestamp),
    /// After the run started (a resumed run keeps its original start).
    After(Duration),
}

impl Deadline {
    /// The instant, for a run that started at `started`.
    pub fn at(self, started: Timestamp) -> Timestamp {
        match self {
            Deadline::At(t) => t,
            Deadline::After(d) => started
                .checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX),
        }
    }
}

/// Where ids come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A CSV file (absolute path) and the column holding the id.
    Csv { path: PathBuf, id_column: String },
    /// Inline ids.
    Ids(Vec<u64>),
}

impl Source {
    /// A short name for reports: the file name, or "inline".
    pub fn label(&self) -> String {
        match self {
            Source::Csv { path, .. } => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            Source::Ids(_) => "inline".to_string(),
        }
    }
}

/// `audience:`.
#[derive(Debug, Clone)]
pub struct AudienceSpec {
    pub source: Source,
    pub exclude: Vec<Source>,
    /// Columns that must be non-empty.
    pub required: Vec<String>,
    /// The column holding each recipient's IANA time zone (`schedule.local_time`).
    pub timezone_column: Option<String>,
    /// The zone of rows with an empty `timezone_column` cell (None: such rows are invalid).
    pub default_timezone: Option<String>,
    /// `audience.allow_empty`: an audience with no valid recipient is not an error.
    pub allow_empty: bool,
}

/// Where the message body template comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Inline template text.
    Inline(String),
    /// A template file (absolute path).
    File(PathBuf),
}

/// What the Content document is built from.
#[derive(Debug, Clone)]
pub enum MessageKind {
    /// `{"text": body}`.
    Text { body: Body },
    /// `{"url": url}`; width/height go to Ext.
    Image {
        url: String,
        width: Option<String>,
        height: Option<String>,
    },
    /// `data` with every string rendered, serialized.
    CustomData { data: serde_json::Value },
    /// The rendered body as is (custom without `data`, and raw).
    Raw { body: Body },
}

/// `message:`.
#[derive(Debug, Clone)]
pub struct MessageSpec {
    /// With variants, the body is the first variant's (each variant renders with its own: see
    /// [`MessageSpec::for_variant`]).
    pub kind: MessageKind,
    pub msg_type: i32,
    /// Ext templates.
    pub ext: BTreeMap<String, String>,
    pub vars: BTreeMap<String, serde_json::Value>,
    /// `message.variants` (empty: one message for everyone).
    pub variants: Vec<VariantSpec>,
}

impl MessageSpec {
    /// The message variant `i` sends: its body in place of the message's, its Ext keys over the
    /// message's. `i` out of range (or no variants) gives the message as written.
    pub fn for_variant(&self, i: usize) -> MessageSpec {
        let mut m = self.clone();
        m.variants = Vec::new();
        if let Some(v) = self.variants.get(i) {
            match &mut m.kind {
                MessageKind::Text { body } | MessageKind::Raw { body } => *body = v.body.clone(),
                MessageKind::Image { .. } | MessageKind::CustomData { .. } => {}
            }
            m.ext
                .extend(v.ext.iter().map(|(k, x)| (k.clone(), x.clone())));
        }
        m
    }
}

/// One A/B variant (`message.variants[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSpec {
    pub name: String,
    /// Relative weight; 0 = switched off (nobody is assigned, nobody else moves).
    pub weight: u64,
    pub body: Body,
    /// Ext templates added to (or overriding) `message.ext`.
    pub ext: BTreeMap<String, String>,
}

/// `holdout:`: the share of the valid audience that is not sent, in hundredths of a percent
/// (500 = 5 %), below 10,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdout {
    pub basis_points: u64,
}

impl fmt::Display for Holdout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.basis_points / 100, self.basis_points % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

/// A percentage as written (`5%`, `2.5%`, `5`, `2.5`) in hundredths of a percent; None when it is
/// not one or has more than two decimals. Decimal text is read digit by digit (no float rounding).
pub fn parse_percent(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim_end();
    let (whole, frac) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 2 || whole.len() > 6 {
        return None;
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let f: u64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>().ok()? * 10,
        _ => frac.parse().ok()?,
    };
    Some(w * 100 + f)
}

/// BatchSendMessage options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOptions {
    pub inbox_type: Option<i32>,
    pub is_normal_user: Option<bool>,
}

/// RefMsgInfo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefMsg {
    pub referenced_message_id: Option<u64>,
    pub hint: Option<String>,
    pub referenced_message_type: Option<i32>,
    pub status: Option<i32>,
}

/// SendMessage options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversationOptions {
    pub mentioned_users: Option<Vec<u64>>,
    pub visible_users: Option<Vec<u64>>,
    pub invisible_users: Option<Vec<u64>>,
    pub priority: Option<i32>,
    pub ref_msg: Option<RefMsg>,
}

/// P2PSendMessage options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct P2pOptions {
    pub receiver_user_ids: Option<Vec<u64>>,
    pub ignore_user_ids: Option<Vec<u64>>,
}

/// A validated campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    /// Canonical path of the campaign file.
    pub path: PathBuf,
    /// Its directory (relative paths in the file are resolved against it).
    pub dir: PathBuf,
    pub description: Option<String>,
    pub action: Action,
    pub app_id: u64,
    pub region: String,
    pub endpoint: url::Url,
    pub sender: u64,
    pub schedule: Option<Schedule>,
    pub quiet_hours: Option<QuietHours>,
    // What the campaign may leave out is None here; `run::settings` resolves it with
    // `imcast.toml` and the flags into what a run uses.
    /// `throttle:`: this campaign's cap, as written (it lowers the account's share, never raises it).
    pub throttle: Option<Limit>,
    /// `retry.max_attempts` (≥ 1).
    pub retry_max_attempts: Option<u32>,
    pub deadline: Option<Deadline>,
    pub guard_max_recipients: Option<u64>,
    /// `holdout:` (None: everyone valid is sent).
    pub holdout: Option<Holdout>,
    /// `guard.max_invalid_ratio` as written, 0..=1 (None: [`crate::guard::DEFAULT_MAX_INVALID_RATIO`]).
    pub guard_max_invalid_ratio: Option<f64>,
    /// `breaker:`, field by field (the rest from `imcast.toml [breaker]`, else the default).
    pub breaker: BreakerFields,
    /// `rollout:`: a canary stage first (see `stages`).
    pub rollout: Option<Rollout>,
    /// `schedule.local_time`: each recipient at this wall-clock time in their own zone (waves,
    /// see `stages`).
    pub local_time: Option<jiff::civil::Time>,
    /// `schedule.not_after` (default 1h), also when the schedule names only `local_time`: a
    /// local-time wave not started by its instant + this is `expired` for its recipients.
    pub wave_not_after: std::time::Duration,
    pub audience: AudienceSpec,
    pub message: MessageSpec,
    pub batch: BatchOptions,
    pub conversation: ConversationOptions,
    pub p2p: P2pOptions,
    /// The campaign file's bytes as read (hashed into the plan hash).
    pub source: String,
    /// Where this campaign's files (audience, lists, templates) are read from.
    pub files: crate::files::Files,
}

/// The documented endpoint of a region.
pub fn region_endpoint(region: &str) -> Option<url::Url> {
    let s = match region {
        "cn-north-1" => "https://rtc.volcengineapi.com/",
        "ap-southeast-1" => "https://open-ap-singapore-1.volcengineapi.com/",
        _ => return None,
    };
    url::Url::parse(s).ok()
}

const REGIONS: [&str; 2] = ["cn-north-1", "ap-southeast-1"];

/// Read, parse and validate a campaign file.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Campaign, SpecError> {
    load_from(&crate::files::Files::WorkTree, path, opts)
}

/// [`load`] reading the file, and later everything it names, from `files` (the work tree or a git
/// revision). The campaign's `path` is the work-tree path in both cases.
pub fn load_from(
    files: &crate::files::Files,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Campaign, SpecError> {
    let fail = |problems: Vec<Problem>| SpecError {
        file: path.to_path_buf(),
        problems,
    };
    let one = |message: String| {
        fail(vec![Problem {
            line: None,
            column: None,
            message,
        }])
    };
    let text = files
        .read_to_string(path)
        .map_err(|e| one(format!("cannot read the campaign file: {e}")))?;
    let canonical = match files {
        crate::files::Files::WorkTree => std::fs::canonicalize(path)
            .map_err(|e| one(format!("cannot resolve the campaign file's path: {e}")))?,
        // It may not exist in the work tree any more.
        crate::files::Files::Git(_) => crate::git::logical_path(path),
    };
    let dir = canonical
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    parse_str_in(files, &text, canonical, dir, opts).map_err(fail)
}

/// Parse and validate campaign text; `path`/`dir` are where it lives (for relative paths).
pub fn parse_str(
    text: &str,
    path: PathBuf,
    dir: PathBuf,
    opts: &LoadOptions,
) -> Result<Campaign, Vec<Problem>> {
    parse_str_in(&crate::files::Files::WorkTree, text, path, dir, opts)
}

/// [`parse_str`] checking the files it names in `files`.
pub fn parse_str_in(
    files: &crate::files::Files,
    text: &str,
    path: PathBuf,
    dir: PathBuf,
    opts: &LoadOptions,
) -> Result<Campaign, Vec<Problem>> {
    // Credentials first: a file holding a secret is rejected whatever else is wrong with it, and
    // the scan sees keys that serde would stop at.
    let mut problems = scan::credentials(text);
    let raw: RawCampaign = match serde_saphyr::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let pp = parse_problem(&e);
            // A credential key is also an unknown key: say it once, as the credential.
            if !problems
                .iter()
                .any(|c| c.line == pp.line && c.column == pp.column)
            {
                problems.push(pp);
            }
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    validate(raw, text, path, dir, opts, files)
}

fn at<T>(s: &Spanned<T>) -> (Option<u64>, Option<u64>) {
    let l = s.referenced;
    if l.line() == 0 {
        (None, None)
    } else {
        (Some(l.line()), Some(l.column()))
    }
}

/// The problems found, and where each key is written (for problems serde gave no span for).
struct Problems(Vec<Problem>, scan::Places);

impl Problems {
    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        let (line, column) = at(s);
        self.0.push(Problem {
            line,
            column,
            message: message.into(),
        });
    }
    fn located(&mut self, at: Option<crate::schedule::Loc>, message: impl Into<String>) {
        self.0.push(Problem {
            line: at.map(|l| l.line),
            column: at.map(|l| l.column),
            message: message.into(),
        });
    }
    /// A problem at the key `path` (dotted, as [`scan::Places`] names keys), or the nearest
    /// written parent of it: the first of `paths` that is written.
    fn key(&mut self, paths: &[&str], message: impl Into<String>) {
        let at = paths
            .iter()
            .find_map(|k| self.1.get(k))
            .or_else(|| paths.first().and_then(|k| self.1.find(k)));
        self.0.push(Problem {
            line: at.map(|a| a.0),
            column: at.map(|a| a.1),
            message: message.into(),
        });
    }
}

/// The nearest of `candidates` to `word`, if it is an obvious near match.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn parse_problem(e: &serde_saphyr::Error) -> Problem {
    let inner = e.without_snippet();
    let loc = inner.location().or_else(|| e.location());
    let (line, column) = match loc {
        Some(l) if l.line() > 0 => (Some(l.line()), Some(l.column())),
        _ => (None, None),
    };
    // An error met while replaying an alias is wrapped with the alias's places: read the error.
    let mut core = inner;
    while let serde_saphyr::Error::AliasError { error, .. } = core {
        core = error.without_snippet();
    }
    let message = match core {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            let mut m = format!("unknown key `{field}`");
            if let Some(s) = did_you_mean(field, expected) {
                m.push_str(&format!(" — did you mean `{s}`?"));
            }
            m.push_str(&format!("; expected one of: {}", expected.join(", ")));
            m
        }
        serde_saphyr::Error::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let mut m = format!("unknown value `{variant}`");
            if let Some(s) = did_you_mean(variant, expected) {
                m.push_str(&format!(" — did you mean `{s}`?"));
            }
            m.push_str(&format!("; expected one of: {}", expected.join(", ")));
            m
        }
        serde_saphyr::Error::SerdeMissingField { field, .. } => {
            format!("missing required key `{field}`")
        }
        // The parser's safety budget (it stops an alias bomb early): say what it means.
        serde_saphyr::Error::Budget { breach, .. } => budget_message(breach),
        other => {
            // The crate's own message, without its location suffix/snippet (we print our own).
            let s = other.to_string();
            let first = s.lines().next().unwrap_or("invalid YAML");
            let first = match first.rfind(" at line ") {
                Some(i) => &first[..i],
                None => first,
            };
            match first {
                "invalid u64" | "invalid u32" => {
                    format!("{first}: expected a non-negative whole number")
                }
                "invalid i32" => format!("{first}: expected a whole number"),
                other => other.to_string(),
            }
        }
    };
    Problem {
        line,
        column,
        message,
    }
}

/// What a breach of the YAML parser's budget means for a campaign file.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Depth { .. } => "the file nests too deeply to be a campaign (YAML nesting beyond the parser's limit); \
             flatten it"
            .to_string(),
        B::ScalarBytes { .. } | B::InputBytes { .. } => {
            "the file is too large to be a campaign; keep long texts in a template file (`message.template`) \
             and ids in a CSV (`audience.csv`)"
                .to_string()
        }
        _ => "the file expands to too many values (YAML aliases?): its anchors (`&a`) and aliases (`*a`) \
             repeat into more values than a campaign can hold; write the values out, or keep ids in a CSV \
             (`audience.csv`)"
            .to_string(),
    }
}

fn validate(
    raw: RawCampaign,
    text: &str,
    path: PathBuf,
    dir: PathBuf,
    opts: &LoadOptions,
    files: &crate::files::Files,
) -> Result<Campaign, Vec<Problem>> {
    let mut p = Problems(Vec::new(), scan::key_places(text));
    let resolve_file = |dir: &Path, rel: &Spanned<String>, key: &str, p: &mut Problems| {
        resolve_file(files, dir, rel, key, p)
    };

    if raw.version.value != 1 {
        p.at(
            &raw.version,
            format!(
                "unsupported version {}: this imcast reads version 1",
                raw.version.value
            ),
        );
    }
    let name_ok = !raw.name.value.is_empty()
        && raw
            .name
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        p.at(
            &raw.name,
            format!(
                "invalid name `{}`: use lower-case letters, digits, `-` and `_` only (it names the state and report folder)",
                raw.name.value
            ),
        );
    }

    // Provider and endpoint policy.
    let region = raw.provider.region.value.clone();
    let region_url = region_endpoint(&region);
    if region_url.is_none() {
        let hint = did_you_mean(&region, &REGIONS)
            .map(|s| format!(" — did you mean `{s}`?"))
            .unwrap_or_default();
        p.at(
            &raw.provider.region,
            format!(
                "unknown region `{region}`{hint}; known: {}",
                REGIONS.join(", ")
            ),
        );
    }
    let mut endpoint = region_url.clone();
    if let Some(ep) = &raw.provider.endpoint {
        match check_endpoint(ep, region_url.as_ref().map(|_| region.as_str()), opts) {
            Ok(u) => endpoint = Some(u),
            Err(m) => {
                p.at(ep, m);
                endpoint = None;
            }
        }
    }

    // AppId is an `Integer` (signed 32-bit); ids are `Long` (signed 64-bit).
    let app_id = raw.provider.app_id.value;
    if app_id > crate::provider::wire::MAX_INTEGER {
        p.at(
            &raw.provider.app_id,
            format!(
                "provider.app_id {app_id} is out of range: the provider's AppId is a signed 32-bit Integer (at most {})",
                crate::provider::wire::MAX_INTEGER
            ),
        );
    }
    let sender = long_id(&mut p, "sender", &raw.sender);

    // Audience.
    let id_column = raw
        .audience
        .id_column
        .clone()
        .unwrap_or_else(|| "user_id".to_string());
    let source = match (&raw.audience.csv, &raw.audience.ids) {
        (Some(csv), None) => Some(Source::Csv {
            path: resolve_file(&dir, csv, "audience.csv", &mut p),
            id_column: id_column.clone(),
        }),
        (None, Some(ids)) => {
            if ids.is_empty() {
                p.key(
                    &["audience.ids"],
                    "audience.ids is empty: give at least one id",
                );
            }
            Some(Source::Ids(long_ids(&mut p, text, "audience.ids", ids)))
        }
        (Some(csv), Some(_)) => {
            p.at(csv, "audience has both `csv` and `ids`: give one of them");
            None
        }
        (None, None) => {
            p.key(&["audience"], "audience needs `csv: FILE` or `ids: [..]`");
            None
        }
    };
    let mut exclude = Vec::new();
    for (i, x) in raw.audience.exclude.iter().enumerate() {
        let col = x.id_column.clone().unwrap_or_else(|| id_column.clone());
        match (&x.csv, &x.ids) {
            (Some(csv), None) => exclude.push(Source::Csv {
                path: resolve_file(&dir, csv, "audience.exclude.csv", &mut p),
                id_column: col,
            }),
            (None, Some(ids)) => exclude.push(Source::Ids(long_ids(
                &mut p,
                text,
                &format!("audience.exclude[{i}].ids"),
                ids,
            ))),
            (Some(csv), Some(_)) => p.at(
                csv,
                format!("audience.exclude[{i}] has both `csv` and `ids`: give one of them"),
            ),
            (None, None) => p.key(
                &[&format!("audience.exclude[{i}]")],
                format!("audience.exclude[{i}] needs `csv: FILE` or `ids: [..]`"),
            ),
        }
    }

    // Message.
    let m = &raw.message;
    let body = match (&m.text, &m.template) {
        (Some(t), None) => Some(Body::Inline(t.value.clone())),
        (None, Some(f)) => Some(Body::File(resolve_file(
            &dir,
            f,
            "message.template",
            &mut p,
        ))),
        (Some(t), Some(_)) => {
            p.at(
                t,
                "message has both `text` and `template`: give one of them",
            );
            None
        }
        (None, None) => None,
    };
    let body_conflict = m.text.is_some() && m.template.is_some();
    // A/B variants replace the body: each gives its own `text` or `template`.
    let mut variants = Vec::new();
    if let Some(vs) = &m.variants {
        if let Some(t) = m.text.as_ref().or(m.template.as_ref()) {
            p.at(
                t,
                "message has `variants` and its own `text`/`template`: the variants replace the body; move it into each variant",
            );
        }
        let body_kind = match m.kind {
            RawMessageType::Text | RawMessageType::Raw => true,
            RawMessageType::Custom => m.data.is_none(),
            RawMessageType::Image => false,
        };
        if !body_kind {
            p.key(
                &["message.variants"],
                "message.variants replace the message body (`text`/`template`): they are for `type: text`, `raw`, or `custom` without `data`",
            );
        }
        if vs.is_empty() {
            p.key(
                &["message.variants"],
                "message.variants is empty: give at least one variant, or leave `variants:` out",
            );
        }
        let mut seen: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
        for (i, v) in vs.iter().enumerate() {
            let name = &v.name.value;
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                p.at(
                    &v.name,
                    format!("message.variants[{i}].name `{name}`: use letters, digits, `-` and `_` only (it is the report's variant_name)"),
                );
            }
            if let Some((line, _)) = seen.get(name) {
                p.at(
                    &v.name,
                    format!(
                        "message.variants[{i}].name `{name}` is used twice{}: variant names must be unique",
                        line.map(|l| format!(" (first at line {l})")).unwrap_or_default()
                    ),
                );
            } else {
                seen.insert(name.clone(), at(&v.name));
            }
            let vbody = match (&v.text, &v.template) {
                (Some(t), None) => Some(Body::Inline(t.value.clone())),
                (None, Some(f)) => Some(Body::File(resolve_file(
                    &dir,
                    f,
                    &format!("message.variants[{i}].template"),
                    &mut p,
                ))),
                (Some(t), Some(_)) => {
                    p.at(
                        t,
                        format!("message.variants[{i}] (`{name}`) has both `text` and `template`: give one of them"),
                    );
                    None
                }
                (None, None) => {
                    p.at(
                        &v.name,
                        format!("message.variants[{i}] (`{name}`) needs `text:` (inline template) or `template: FILE`"),
                    );
                    None
                }
            };
            let vext = v.ext.as_ref().map(|e| e.value.clone()).unwrap_or_default();
            for k in vext.keys() {
                if k.starts_with("s:") {
                    p.key(
                        &[&format!("message.variants[{i}].ext.{k}"), "message.variants"],
                        format!("message.variants[{i}].ext key `{k}`: keys starting with `s:` are reserved by the IM platform"),
                    );
                }
            }
            if raw.action == Action::P2p {
                if let Some(e) = v.ext.as_ref().filter(|e| !e.value.is_empty()) {
                    p.at(
                        e,
                        format!("message.variants[{i}].ext: `action: p2p` (P2PSendMessage) has no Ext field, so it could not be sent; remove `ext:`"),
                    );
                }
            }
            if let Some(body) = vbody {
                variants.push(VariantSpec {
                    name: name.clone(),
                    weight: v.weight.value,
                    body,
                    ext: vext,
                });
            }
        }
        if !vs.is_empty() && vs.iter().all(|v| v.weight.value == 0) {
            p.key(
                &["message.variants"],
                "every variant in message.variants has weight 0: nobody could be sent; give at least one a weight above 0",
            );
        }
        if vs.iter().map(|v| u128::from(v.weight.value)).sum::<u128>() > u128::from(u64::MAX) {
            p.key(&["message.variants"], "message.variants: the weights add up to more than a whole number can hold; use smaller weights");
        }
    }
    // The base kind takes the first variant's body (every variant renders with its own).
    let body = match (body, variants.first()) {
        (None, Some(v))
            if m.text.is_none()
                && m.template.is_none()
                && (matches!(m.kind, RawMessageType::Text | RawMessageType::Raw)
                    || (m.kind == RawMessageType::Custom && m.data.is_none())) =>
        {
            Some(v.body.clone())
        }
        (b, _) => b,
    };
    let image_only = m.url.is_some() || m.width.is_some() || m.height.is_some();
    if image_only && m.kind != RawMessageType::Image {
        p.key(
            &["message.url", "message.width", "message.height"],
            "message `url`/`width`/`height` are for `type: image` only",
        );
    }
    if m.data.is_some() && m.kind != RawMessageType::Custom {
        p.key(
            &["message.data"],
            "message `data` is for `type: custom` only",
        );
    }
    let kind = match m.kind {
        RawMessageType::Text => match body {
            Some(body) => Some(MessageKind::Text { body }),
            None => {
                if !body_conflict {
                    p.key(
                        &["message.type"],
                        "`type: text` needs `text:` (inline template) or `template: FILE`",
                    );
                }
                None
            }
        },
        RawMessageType::Image => {
            if body.is_some() {
                p.key(
                    &["message.text", "message.template"],
                    "`type: image` takes `url`, `width`, `height`, not `text`/`template`",
                );
            }
            match &m.url {
                Some(url) => Some(MessageKind::Image {
                    url: url.clone(),
                    width: m.width.as_ref().map(|w| w.value.as_template()),
                    height: m.height.as_ref().map(|h| h.value.as_template()),
                }),
                None => {
                    p.key(&["message.type"], "`type: image` needs `url:`");
                    None
                }
            }
        }
        RawMessageType::Custom => match (&m.data, body) {
            (Some(data), None) => Some(MessageKind::CustomData { data: data.clone() }),
            (None, Some(body)) => Some(MessageKind::Raw { body }),
            (Some(_), Some(_)) => {
                p.key(
                    &["message.data"],
                    "`type: custom` takes `data:` or `text`/`template`, not both",
                );
                None
            }
            (None, None) => {
                if !body_conflict {
                    p.key(
                        &["message.type"],
                        "`type: custom` needs `data:` (a document) or `text`/`template`",
                    );
                }
                None
            }
        },
        RawMessageType::Raw => {
            if m.msg_type.is_none() {
                p.key(
                    &["message.type"],
                    "`type: raw` needs `msg_type:` (the MsgType number)",
                );
            }
            match body {
                Some(body) => Some(MessageKind::Raw { body }),
                None => {
                    if !body_conflict {
                        p.key(
                            &["message.type"],
                            "`type: raw` needs `text:` or `template: FILE`",
                        );
                    }
                    None
                }
            }
        }
    };
    let msg_type = m.msg_type.unwrap_or(match m.kind {
        RawMessageType::Text => 10001,
        RawMessageType::Image => 10003,
        RawMessageType::Custom | RawMessageType::Raw => 10012,
    });
    let ext = m.ext.as_ref().map(|e| e.value.clone()).unwrap_or_default();
    for k in ext.keys() {
        if k.starts_with("s:") {
            p.key(
                &[&format!("message.ext.{k}")],
                format!(
                    "message.ext key `{k}`: keys starting with `s:` are reserved by the IM platform"
                ),
            );
        }
    }
    // P2PSendMessage has no Ext field: whatever would go there cannot be sent.
    if raw.action == Action::P2p {
        if let Some(e) = m.ext.as_ref().filter(|e| !e.value.is_empty()) {
            p.at(
                e,
                "message.ext: `action: p2p` (P2PSendMessage) has no Ext field, so it could not be sent; remove `ext:` or put the values into the Content",
            );
        }
        for (key, v) in [("width", &m.width), ("height", &m.height)] {
            if let Some(v) = v.as_ref().filter(|_| m.kind == RawMessageType::Image) {
                p.at(
                    v,
                    format!("message.{key}: an image's width and height travel in Ext, which `action: p2p` (P2PSendMessage) does not have; remove `{key}:`"),
                );
            }
        }
    }
    for k in m.vars.keys() {
        if k == "campaign" || k == "recipient" {
            p.key(
                &[&format!("message.vars.{k}")],
                format!("message.vars `{k}` is reserved (the template context sets it)"),
            );
        }
    }

    // Action options.
    let wrong_action = |key: &str, want: Action, p: &mut Problems| {
        if raw.action != want {
            p.key(
                &[key],
                format!(
                    "`{key}:` options apply to `action: {want}`, but this campaign is `action: {}`",
                    raw.action
                ),
            );
        }
    };
    let batch = match &raw.batch {
        Some(b) => {
            wrong_action("batch", Action::Batch, &mut p);
            BatchOptions {
                inbox_type: b.inbox_type,
                is_normal_user: b.is_normal_user,
            }
        }
        None => BatchOptions::default(),
    };
    let conversation = match &raw.conversation {
        Some(c) => {
            wrong_action("conversation", Action::Conversation, &mut p);
            ConversationOptions {
                mentioned_users: c
                    .mentioned_users
                    .as_ref()
                    .map(|v| long_ids(&mut p, text, "conversation.mentioned_users", v)),
                visible_users: c
                    .visible_users
                    .as_ref()
                    .map(|v| long_ids(&mut p, text, "conversation.visible_users", v)),
                invisible_users: c
                    .invisible_users
                    .as_ref()
                    .map(|v| long_ids(&mut p, text, "conversation.invisible_users", v)),
                priority: c.priority,
                ref_msg: c.ref_msg.as_ref().map(|r| RefMsg {
                    referenced_message_id: r.referenced_message_id.as_ref().map(|id| {
                        long_id(&mut p, "conversation.ref_msg.referenced_message_id", id)
                    }),
                    hint: r.hint.clone(),
                    referenced_message_type: r.referenced_message_type,
                    status: r.status,
                }),
            }
        }
        None => ConversationOptions::default(),
    };
    let p2p = match &raw.p2p {
        Some(x) => {
            wrong_action("p2p", Action::P2p, &mut p);
            let receivers = x
                .receiver_user_ids
                .as_ref()
                .map(|v| long_ids(&mut p, text, "p2p.receiver_user_ids", v));
            let ignore = x
                .ignore_user_ids
                .as_ref()
                .map(|v| long_ids(&mut p, text, "p2p.ignore_user_ids", v));
            // The seed: with ReceiverUserId set, IgnoreUserIds does not take effect.
            if let (Some(r), Some(i)) = (&receivers, &x.ignore_user_ids) {
                if !r.is_empty() && !i.is_empty() {
                    p.at(
                        &i[0],
                        "p2p.ignore_user_ids has no effect when p2p.receiver_user_ids is set (the provider then ignores IgnoreUserIds): give one of them",
                    );
                }
            }
            P2pOptions {
                receiver_user_ids: receivers,
                ignore_user_ids: ignore,
            }
        }
        None => P2pOptions::default(),
    };

    // Schedule.
    let mut schedule = None;
    let mut quiet_hours = None;
    if let Some(s) = &raw.schedule {
        // The errors read `schedule.cron: ...` and carry the value's line and column.
        match Schedule::from_raw(s) {
            Ok(sc) => schedule = sc,
            Err(e) => p.located(e.location(), e.to_string()),
        }
        if let Some(q) = &s.quiet_hours {
            match QuietHours::from_raw(q) {
                Ok(q) => quiet_hours = Some(q),
                Err(e) => p.located(e.location(), e.to_string()),
            }
        }
    }

    // Throttle, retry, deadline, guard, breaker.
    let mut throttle = None;
    if let Some(t) = &raw.throttle {
        match humantime::parse_duration(&t.window.value) {
            Ok(w) if !w.is_zero() => {
                if t.limit == 0 {
                    p.at(&t.window, "throttle.limit must be at least 1");
                } else {
                    throttle = Some(Limit::new(t.limit, w))
                }
            }
            Ok(_) => p.at(&t.window, "throttle.window must be longer than zero"),
            Err(e) => p.at(
                &t.window,
                format!(
                    "throttle.window `{}`: {e} (write e.g. 60s, 5s, 500ms)",
                    t.window.value
                ),
            ),
        }
    }
    let retry_max_attempts = match &raw.retry {
        Some(r) if r.max_attempts == 0 => {
            p.key(
                &["retry.max_attempts"],
                "retry.max_attempts must be at least 1 (the first attempt counts)",
            );
            None
        }
        Some(r) => Some(r.max_attempts),
        None => None,
    };
    let deadline = match &raw.deadline {
        None => None,
        Some(d) => {
            if let Ok(ts) = d.value.parse::<Timestamp>() {
                Some(Deadline::At(ts))
            } else if let Ok(dur) = humantime::parse_duration(&d.value) {
                Some(Deadline::After(dur))
            } else {
                p.at(
                    d,
                    format!(
                        "deadline `{}` is neither an RFC 3339 time with offset (2026-03-01T12:00:00+08:00) nor a duration (2h)",
                        d.value
                    ),
                );
                None
            }
        }
    };
    let guard_max_recipients = raw.guard.as_ref().and_then(|g| g.max_recipients);
    let holdout = match &raw.holdout {
        None => None,
        Some(h) => {
            let bp = match &h.value {
                raw::StringOrNumber::String(s) => parse_percent(s),
                raw::StringOrNumber::Number(x) => parse_percent(&x.to_string()),
            };
            match bp {
                Some(bp) if bp < 10_000 => Some(Holdout { basis_points: bp }),
                Some(_) => {
                    p.at(
                        h,
                        "holdout must be below 100%: a holdout of everyone sends nobody",
                    );
                    None
                }
                None => {
                    p.at(
                        h,
                        "holdout: write a percentage such as `5%`, `2.5%` or `5` (at most two decimals)",
                    );
                    None
                }
            }
        }
    };
    let guard_max_invalid_ratio = match raw.guard.as_ref().and_then(|g| g.max_invalid_ratio) {
        Some(r) if !(0.0..=1.0).contains(&r) => {
            p.key(
                &["guard.max_invalid_ratio"],
                format!("guard.max_invalid_ratio {r} must be between 0 and 1 (e.g. 0.05 for 5%)"),
            );
            None
        }
        r => r,
    };
    let mut breaker = BreakerFields::default();
    if let Some(b) = &raw.breaker {
        breaker.consecutive_failures = b.consecutive_failures.map(|n| n.max(1));
        breaker.window_calls = b.window_calls.map(|n| n.max(1));
        if let Some(r) = b.max_failure_ratio {
            if !(0.0..=1.0).contains(&r) {
                p.key(
                    &["breaker.max_failure_ratio"],
                    format!("breaker.max_failure_ratio {r} must be between 0 and 1"),
                );
            } else {
                breaker.max_failure_ratio = Some(r);
            }
        }
    }

    let mut rollout = None;
    if let Some(r) = &raw.rollout {
        let canary = match &r.canary.value {
            raw::StringOrInt::Int(0) => None,
            raw::StringOrInt::Int(n) => Some(Share::Count(*n)),
            raw::StringOrInt::String(s) => parse_share_percent(s),
        };
        let wait = match &r.wait {
            None => Some(Duration::from_secs(600)),
            Some(w) => match humantime::parse_duration(&w.value) {
                Ok(d) => Some(d),
                Err(e) => {
                    p.at(
                        w,
                        format!("rollout.wait `{}`: {e} (write e.g. 10m, 30s)", w.value),
                    );
                    None
                }
            },
        };
        let ratio = r.max_failure_ratio.unwrap_or(0.02);
        if !(0.0..=1.0).contains(&ratio) {
            p.key(
                &["rollout.max_failure_ratio"],
                format!("rollout.max_failure_ratio {ratio} must be between 0 and 1"),
            );
        }
        match canary {
            None => p.at(
                &r.canary,
                format!(
                    "rollout.canary `{}` is neither a share (1%, 0.5%: up to 100%, at most 4 decimals) nor a count of recipients (500, at least 1)",
                    r.canary.value.as_template()
                ),
            ),
            Some(canary) => {
                if let Some(wait) = wait {
                    rollout = Some(Rollout {
                        canary,
                        wait,
                        max_failure_ratio: ratio,
                    });
                }
            }
        }
    }

    // Local-time waves.
    let mut local_time = None;
    let raw_local = raw.schedule.as_ref().and_then(|s| s.local_time.as_ref());
    if let Some(lt) = raw_local {
        match parse_local_time(&lt.value) {
            Some(t) => local_time = Some(t),
            None => p.located(
                lt.at,
                format!(
                    "schedule.local_time {:?} is not a time of day; write HH:MM in 24-hour form, e.g. 09:00",
                    lt.value
                ),
            ),
        }
        if raw.audience.timezone_column.is_none() {
            p.located(
                lt.at,
                "schedule.local_time needs `audience.timezone_column`: the CSV column holding each recipient's IANA time zone",
            );
        }
        if matches!(source, Some(Source::Ids(_))) {
            p.located(
                lt.at,
                "schedule.local_time needs a CSV audience with a time zone column (`audience.csv`, `audience.timezone_column`)",
            );
        }
        if raw.rollout.is_some() {
            p.located(
                lt.at,
                "`rollout` and `schedule.local_time` cannot be combined yet: use one of them",
            );
        }
    } else {
        if raw.audience.timezone_column.is_some() {
            p.key(
                &["audience.timezone_column"],
                "audience.timezone_column is used by `schedule.local_time`, which is not set",
            );
        }
        if quiet_hours.as_ref().is_some_and(QuietHours::per_recipient) {
            p.key(
                &["schedule.quiet_hours.timezone"],
                "quiet_hours.timezone `recipient` needs `schedule.local_time` and `audience.timezone_column`",
            );
        }
    }
    let mut default_timezone = None;
    if let Some(d) = &raw.audience.default_timezone {
        match jiff::tz::TimeZone::get(d.value.trim()) {
            Ok(_) => default_timezone = Some(d.value.trim().to_string()),
            Err(_) => p.at(
                d,
                format!(
                    "audience.default_timezone: unknown time zone {:?}; write an IANA name such as Asia/Shanghai",
                    d.value
                ),
            ),
        }
    }

    if !p.0.is_empty() {
        return Err(p.0);
    }
    let (Some(endpoint), Some(source), Some(kind)) = (endpoint, source, kind) else {
        return Err(vec![Problem {
            line: None,
            column: None,
            message: "internal: validation incomplete".into(),
        }]);
    };
    Ok(Campaign {
        name: raw.name.value,
        path,
        dir,
        description: raw.description,
        action: raw.action,
        app_id,
        region,
        endpoint,
        sender,
        schedule,
        quiet_hours,
        throttle,
        retry_max_attempts,
        deadline,
        guard_max_recipients,
        holdout,
        guard_max_invalid_ratio,
        breaker,
        rollout,
        local_time,
        wave_not_after: raw
            .schedule
            .as_ref()
            .and_then(|s| crate::schedule::parse_not_after(s).ok())
            .unwrap_or(crate::schedule::DEFAULT_NOT_AFTER),
        audience: AudienceSpec {
            source,
            exclude,
            required: raw.audience.required,
            timezone_column: raw.audience.timezone_column,
            default_timezone,
            allow_empty: raw.audience.allow_empty,
        },
        message: MessageSpec {
            kind,
            msg_type,
            ext,
            vars: raw.message.vars,
            variants,
        },
        batch,
        conversation,
        p2p,
        source: text.to_string(),
        files: files.clone(),
    })
}

/// A `Long` id from the file: above `i64::MAX` is a problem at its line (the value is kept so
/// validation goes on; the campaign is refused).
fn long_id(p: &mut Problems, key: &str, id: &Spanned<u64>) -> u64 {
    if id.value > crate::provider::wire::MAX_LONG {
        p.at(id, format!("{key}: {}", too_large(id.value)));
    }
    id.value
}

/// A list of `Long` ids from the file, each checked as [`long_id`], named by its position (an
/// entry that is no id at all too: `audience.ids[2]: "abc" is not an id`).
fn long_ids(p: &mut Problems, text: &str, key: &str, ids: &[Spanned<raw::RawId>]) -> Vec<u64> {
    ids.iter()
        .enumerate()
        .filter_map(|(i, id)| match &id.value {
            raw::RawId::Id(v) => Some(long_id(
                p,
                &format!("{key}[{i}]"),
                &Spanned {
                    value: *v,
                    referenced: id.referenced,
                    defined: id.defined,
                },
            )),
            raw::RawId::Other(parsed) => {
                let written = written_at(text, id.referenced.line(), id.referenced.column())
                    .unwrap_or_else(|| parsed.clone());
                p.at(
                    id,
                    format!(
                        "{key}[{i}]: `{written}` is not an id: ids are whole numbers from 0 to {} (no sign, decimals or quotes)",
                        crate::provider::wire::MAX_LONG
                    ),
                );
                None
            }
        })
        .collect()
}

/// The plain scalar written at 1-based `line` and `column` of `text` (up to `,`, `]`, `}`, `#`
/// or the line's end), as people typed it: `99999999999999999999`, not its float.
fn written_at(text: &str, line: u64, column: u64) -> Option<String> {
    let l = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let rest: String = l
        .chars()
        .skip(usize::try_from(column).ok()?.checked_sub(1)?)
        .take_while(|c| !matches!(c, ',' | ']' | '}' | '#'))
        .collect();
    let w = rest.trim();
    (!w.is_empty()).then(|| w.to_string())
}

fn too_large(v: u64) -> String {
    format!(
        "id {v} is larger than {}, the largest id the provider accepts (user and conversation ids are signed 64-bit Longs); fix or remove it",
        crate::provider::wire::MAX_LONG
    )
}

fn resolve_file(
    files: &crate::files::Files,
    dir: &Path,
    rel: &Spanned<String>,
    key: &str,
    p: &mut Problems,
) -> PathBuf {
    let full = dir.join(&rel.value);
    if !files.is_file(&full) {
        p.at(
            rel,
            format!(
                "{key}: file `{}` not found{} (paths are relative to the campaign file)",
                rel.value,
                files
                    .revision()
                    .map(|g| format!(" at {}", g.rev()))
                    .unwrap_or_default()
            ),
        );
    }
    full
}

/// The region whose host `u` is, if it is a region host.
fn region_of_host(u: &url::Url) -> Option<&'static str> {
    let host = u.host_str()?;
    REGIONS.iter().copied().find(|r| {
        region_endpoint(r)
            .and_then(|e| e.host_str().map(|h| h.eq_ignore_ascii_case(host)))
            .unwrap_or(false)
    })
}

/// The endpoint policy: a known region host (over https, for the campaign's own region: a host of
/// another region would get requests signed for the wrong region), a loopback address (http or
/// https: the mock), or listed in `allow_endpoints`.
fn check_endpoint(
    ep: &Spanned<String>,
    region: Option<&str>,
    opts: &LoadOptions,
) -> Result<url::Url, String> {
    let u = url::Url::parse(&ep.value)
        .map_err(|e| format!("provider.endpoint `{}` is not a URL: {e}", ep.value))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!(
            "provider.endpoint `{}`: only http and https are supported",
            ep.value
        ));
    }
    if let Some(host_region) = region_of_host(&u) {
        if u.scheme() != "https" {
            return Err(format!(
                "provider.endpoint `{}`: the provider's region hosts are reached over https only (signed requests and personal data never go over plain http); write `https://{}`",
                ep.value,
                u.host_str().unwrap_or_default()
            ));
        }
        if let Some(region) = region.filter(|r| *r != host_region) {
            let own = region_endpoint(region)
                .map(|e| e.origin().ascii_serialization())
                .unwrap_or_default();
            return Err(format!(
                "provider.endpoint `{}` is the {host_region} host, but provider.region is `{region}`: requests would be signed for {region} and sent to {host_region}; make them agree (region `{host_region}` for this host, or endpoint `{own}` for {region}, or leave `endpoint:` out)",
                ep.value
            ));
        }
        return Ok(u);
    }
    let allowed_by_flag = opts.allow_endpoints.iter().any(|a| {
        url::Url::parse(a)
            .map(|a| a.origin() == u.origin())
            .unwrap_or(false)
    });
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if loopback || allowed_by_flag {
        Ok(u)
    } else {
        Err(format!(
            "provider.endpoint `{}` is not a known region host or a loopback address; campaign files cannot send elsewhere unless the command line says `--allow-endpoint {}`",
            ep.value,
            u.origin().ascii_serialization()
        ))
    }
}

/// The JSON Schema of the campaign file format.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(RawCampaign);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_near_keys() {
        assert_eq!(
            did_you_mean("audiance", &["audience", "action", "message"]),
            Some("audience")
        );
        assert_eq!(did_you_mean("zzz", &["audience", "action"]), None);
    }

    #[test]
    fn percentages_read_exactly() {
        assert_eq!(parse_percent("5%"), Some(500));
        assert_eq!(parse_percent("2.5%"), Some(250));
        assert_eq!(parse_percent("0.05"), Some(5));
        assert_eq!(parse_percent("5"), Some(500));
        assert_eq!(parse_percent("12.34 %"), Some(1234));
        assert_eq!(parse_percent("1.234%"), None);
        assert_eq!(parse_percent("-5%"), None);
        assert_eq!(parse_percent("%"), None);
        assert_eq!(parse_percent("five"), None);
        assert_eq!(Holdout { basis_points: 250 }.to_string(), "2.5%");
        assert_eq!(Holdout { basis_points: 5 }.to_string(), "0.05%");
        assert_eq!(Holdout { basis_points: 500 }.to_string(), "5%");
    }

    #[test]
    fn region_endpoints_are_known() {
        assert_eq!(
            region_endpoint("cn-north-1").map(|u| u.to_string()),
            Some("https://rtc.volcengineapi.com/".to_string())
        );
        assert!(region_endpoint("us-east-1").is_none());
    }
}
