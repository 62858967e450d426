//! Account settings (`imcast.toml`) and where a campaigns repository keeps its state and reports.
//!
//! Owns: parsing `imcast.toml` (unknown keys are errors), the per-action limits with the documented
//! defaults ([`Action::default_limit`]), the reserved share, the global suppression lists, the
//! request-rate cap and in-flight bounds, the `[breaker]` fields, which per-recipient report
//! files to write (`[report] formats`, [`ReportFormats`]), discovery of the campaigns root
//! from which `.imcast/` and `reports/` default — one rule for every command ([`ROOT_RULE`],
//! [`discover_root`]) — and where shared state lives ([`StateStore`]: SQLite in the state
//! directory, or `[state] url`, a PostgreSQL database; a password in that URL is refused like any
//! credential in the file), and how run leases are timed (`[state] lease_heartbeat`,
//! `lease_expiry`: [`LeaseTimes`], heartbeat shorter than expiry).
//!
//! Invariant: the effective limit is the account limit × (1 − reserve), lowered (never raised) by a
//! campaign's own `throttle:`. What a file leaves out stays `None` here (e.g. [`BreakerFields`]):
//! `run::settings` resolves campaign, account and flags into the settings a run uses, in one place.
//! This module reads files only; it never touches the journal or the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::pg::PgUrl;

/// The file name looked for at the repository root.
pub const FILE_NAME: &str = "imcast.toml";

/// Errors reading `imcast.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read account settings {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A count per window: the provider's limit or a share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub limit: u64,
    #[serde(with = "duration_ms")]
    pub window: Duration,
}

mod duration_ms {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

impl Limit {
    pub fn new(limit: u64, window: Duration) -> Self {
        Limit { limit, window }
    }
    /// Events per second this limit allows on average.
    pub fn per_second(&self) -> f64 {
        let w = self.window.as_secs_f64();
        if w <= 0.0 {
            return f64::INFINITY;
        }
        self.limit as f64 / w
    }
    pub fn describe(&self) -> String {
        format!(
            "{} per {}",
            self.limit,
            humantime::format_duration(self.window)
        )
    }
}

/// Failure-breaker settings a run uses: stop after `consecutive_failures` failed calls in a row,
/// or when the share of failed receivers over the last `window_calls` calls exceeds
/// `max_failure_ratio`. The default is the documented one (README: 5, 50, 0.5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BreakerSettings {
    pub consecutive_failures: u32,
    pub window_calls: u32,
    pub max_failure_ratio: f64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            consecutive_failures: 5,
            window_calls: 50,
            max_failure_ratio: 0.5,
        }
    }
}

/// The breaker fields one file sets (a campaign's `breaker:`, `imcast.toml`'s `[breaker]`); a
/// field it leaves out is `None` and comes from the next source (see [`BreakerFields::or`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BreakerFields {
    pub consecutive_failures: Option<u32>,
    pub window_calls: Option<u32>,
    pub max_failure_ratio: Option<f64>,
}

impl BreakerFields {
    /// Field by field: this file's value, else `fallback`'s.
    pub fn or(self, fallback: BreakerFields) -> BreakerFields {
        BreakerFields {
            consecutive_failures: self.consecutive_failures.or(fallback.consecutive_failures),
            window_calls: self.window_calls.or(fallback.window_calls),
            max_failure_ratio: self.max_failure_ratio.or(fallback.max_failure_ratio),
        }
    }

    /// The settings, with the documented default for every field nobody set.
    pub fn or_default(self) -> BreakerSettings {
        let d = BreakerSettings::default();
        BreakerSettings {
            consecutive_failures: self.consecutive_failures.unwrap_or(d.consecutive_failures),
            window_calls: self.window_calls.unwrap_or(d.window_calls),
            max_failure_ratio: self.max_failure_ratio.unwrap_or(d.max_failure_ratio),
        }
    }
}

/// What belongs to the account rather than to one campaign.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountConfig {
    /// The file this came from (None: defaults, no file).
    pub path: Option<PathBuf>,
    /// Share of every limit left for other traffic on the account (0 ≤ reserve < 1).
    pub reserve: f64,
    /// Global suppression lists, resolved against the file's directory.
    pub suppress: Vec<PathBuf>,
    /// The provider's limit per action (account-wide, before the reserve).
    pub limits: BTreeMap<Action, Limit>,
    /// Cap on BatchSendMessage requests per second (its request rate is undocumented).
    pub max_requests_per_second: u32,
    /// At most this many batch calls in flight (each holds up to 500 recipients in doubt).
    pub max_batch_in_flight: usize,
    /// At most this many conversation/p2p calls in flight.
    pub max_in_flight: usize,
    /// `[breaker]`: the failure-breaker fields for campaigns whose `breaker:` leaves them out.
    pub breaker: BreakerFields,
    /// Per-recipient report files (`[report] formats`; `--report-format` overrides).
    pub report_formats: ReportFormats,
    /// `[state] url`: the PostgreSQL database shared state lives in (None: the state directory).
    pub state_url: Option<PgUrl>,
    /// `[state] lease_heartbeat`, `lease_expiry`: how often a sending run renews its lease and
    /// how long the lease lasts without renewal (another process takes the run over only after
    /// that; default 10 s and 30 s, heartbeat < expiry).
    pub lease: LeaseTimes,
}

/// How long a lease lasts without renewal, and how often the sending engine renews it
/// (`imcast.toml` `[state] lease_expiry`, `lease_heartbeat`; heartbeat < expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseTimes {
    /// How often the sending engine renews its lease.
    #[serde(rename = "heartbeat_ms", serialize_with = "ser_ms")]
    pub heartbeat: Duration,
    /// How long a lease lasts past its last renewal.
    #[serde(rename = "expiry_ms", serialize_with = "ser_ms")]
    pub expiry: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl Default for LeaseTimes {
    /// Renewed every 10 s, expiring 30 s after the last renewal.
    fn default() -> Self {
        LeaseTimes {
            heartbeat: Duration::from_secs(10),
            expiry: Duration::from_secs(30),
        }
    }
}

/// Where the state shared by imcast processes lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStore {
    /// SQLite files in this state directory (the default; one machine).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`[state] url`): every process of the account, on any host.
    Postgres(PgUrl),
}

/// Which per-recipient report files a run writes: `recipients.csv` (default) and/or
/// `recipients.jsonl` (on request). `report.html` and `summary.json` are always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReportFormats {
    pub csv: bool,
    pub jsonl: bool,
}

impl Default for ReportFormats {
    fn default() -> Self {
        ReportFormats {
            csv: true,
            jsonl: false,
        }
    }
}

impl ReportFormats {
    /// The names accepted in `--report-format` and `report.formats`.
    pub const NAMES: &'static str = "csv, jsonl (or none)";

    /// One format name into `self`; an unknown name is an error saying what is accepted.
    fn add(&mut self, name: &str) -> Result<(), String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "csv" => self.csv = true,
            "jsonl" => self.jsonl = true,
            "none" => {}
            "html" | "summary" | "json" => {
                return Err(format!(
                    "report format {name:?}: report.html and summary.json are always written; \
                     choose the per-recipient files from {}",
                    Self::NAMES
                ))
            }
            _ => {
                return Err(format!(
                    "unknown report format {name:?}: choose from {}",
                    Self::NAMES
                ))
            }
        }
        Ok(())
    }

    /// A list of names (`report.formats = [...]`); empty or `["none"]` means no per-recipient file.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut f = ReportFormats {
            csv: false,
            jsonl: false,
        };
        for n in names {
            f.add(n)?;
        }
        Ok(f)
    }

    /// `--report-format csv,jsonl` (comma-separated).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err(format!(
                "no report format given: choose from {}",
                Self::NAMES
            ));
        }
        Self::from_names(s.split(','))
    }

    /// The names, for messages and `summary.json`.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.csv {
            v.push("csv");
        }
        if self.jsonl {
            v.push("jsonl");
        }
        v
    }
}

impl std::str::FromStr for ReportFormats {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Default for AccountConfig {
    fn default() -> Self {
        AccountConfig {
            path: None,
            reserve: 0.0,
            suppress: Vec::new(),
            limits: Action::ALL
                .iter()
                .map(|a| {
                    let (l, w) = a.default_limit();
                    (*a, Limit::new(l, w))
                })
                .collect(),
            max_requests_per_second: 200,
            max_batch_in_flight: 4,
            max_in_flight: 16,
            breaker: BreakerFields::default(),
            report_formats: ReportFormats::default(),
            state_url: None,
            lease: LeaseTimes::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    account: RawAccount,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    send: RawSend,
    #[serde(default)]
    breaker: RawBreaker,
    #[serde(default)]
    report: RawReport,
    #[serde(default)]
    state: RawState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    url: Option<toml::Spanned<String>>,
    lease_expiry: Option<toml::Spanned<String>>,
    lease_heartbeat: Option<toml::Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReport {
    formats: Option<Vec<toml::Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    reserve: Option<f64>,
    #[serde(default)]
    suppress: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    batch: Option<RawLimit>,
    conversation: Option<RawLimit>,
    p2p: Option<RawLimit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    limit: u64,
    window: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSend {
    max_requests_per_second: Option<u32>,
    max_batch_in_flight: Option<usize>,
    max_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<u32>,
    window_calls: Option<u32>,
    max_failure_ratio: Option<f64>,
}

impl AccountConfig {
    /// Read and check `imcast.toml` at `path`.
    pub fn load(path: &Path) -> Result<AccountConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse `text` as if read from `path` (relative suppression paths resolve against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<AccountConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut cfg = AccountConfig {
            path: Some(path.to_path_buf()),
            ..AccountConfig::default()
        };
        if let Some(r) = raw.account.reserve {
            if !(0.0..1.0).contains(&r) || r.is_nan() {
                return Err(invalid(format!(
                    "account.reserve = {r}: must be at least 0 and below 1 (e.g. 0.10 keeps 10% for other traffic)"
                )));
            }
            cfg.reserve = r;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.suppress = raw.account.suppress.iter().map(|s| base.join(s)).collect();
        for (action, l) in [
            (Action::Batch, raw.limits.batch),
            (Action::Conversation, raw.limits.conversation),
            (Action::P2p, raw.limits.p2p),
        ] {
            let Some(l) = l else { continue };
            if l.limit == 0 {
                return Err(invalid(format!("limits.{action}.limit must be at least 1")));
            }
            let window = match &l.window {
                None => action.default_limit().1,
                Some(w) => humantime::parse_duration(w).map_err(|e| {
                    invalid(format!(
                        "limits.{action}.window = {w:?}: {e} (write e.g. \"60s\" or \"1s\")"
                    ))
                })?,
            };
            if window.is_zero() {
                return Err(invalid(format!(
                    "limits.{action}.window must be longer than zero"
                )));
            }
            cfg.limits.insert(action, Limit::new(l.limit, window));
        }
        if let Some(v) = raw.send.max_requests_per_second {
            if v == 0 {
                return Err(invalid(
                    "send.max_requests_per_second must be at least 1".into(),
                ));
            }
            cfg.max_requests_per_second = v;
        }
        if let Some(v) = raw.send.max_batch_in_flight {
            if v == 0 {
                return Err(invalid(
                    "send.max_batch_in_flight must be at least 1".into(),
                ));
            }
            cfg.max_batch_in_flight = v;
        }
        if let Some(v) = raw.send.max_in_flight {
            if v == 0 {
                return Err(invalid("send.max_in_flight must be at least 1".into()));
            }
            cfg.max_in_flight = v;
        }
        if let Some(v) = raw.breaker.max_failure_ratio {
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(format!(
                    "breaker.max_failure_ratio = {v}: must be between 0 and 1"
                )));
            }
        }
        cfg.breaker = BreakerFields {
            consecutive_failures: raw.breaker.consecutive_failures,
            window_calls: raw.breaker.window_calls,
            max_failure_ratio: raw.breaker.max_failure_ratio,
        };
        if let Some(names) = &raw.report.formats {
            let mut f = ReportFormats {
                csv: false,
                jsonl: false,
            };
            for n in names {
                if let Err(e) = f.add(n.get_ref()) {
                    let (line, col) = line_col(text, n.span().start);
                    return Err(invalid(format!(
                        "line {line}, column {col}: report.formats: {e}"
                    )));
                }
            }
            cfg.report_formats = f;
        }
        if let Some(u) = &raw.state.url {
            let (line, col) = line_col(text, u.span().start);
            let at = |m: &str| invalid(format!("line {line}, column {col}: state.url: {m}"));
            // Checked first: nothing below may echo the URL with its password.
            if crate::pg::str_has_password(u.get_ref()) {
                return Err(at(
                    "the URL holds a password, and imcast.toml is kept in git: remove it from the \
                     URL and give it in PGPASSWORD, ~/.pgpass or a file named by \
                     IMCAST_STATE_PASSWORD_FILE",
                ));
            }
            cfg.state_url = Some(PgUrl::parse(u.get_ref()).map_err(|e| at(&e))?);
        }
        let lease_time = |v: &Option<toml::Spanned<String>>, key: &str, default: Duration| {
            let Some(v) = v else { return Ok(default) };
            let (line, col) = line_col(text, v.span().start);
            let d = humantime::parse_duration(v.get_ref()).map_err(|e| {
                invalid(format!(
                    "line {line}, column {col}: state.{key} = {:?}: {e} (write e.g. \"30s\")",
                    v.get_ref()
                ))
            })?;
            if d < Duration::from_millis(100) {
                return Err(invalid(format!(
                    "line {line}, column {col}: state.{key} = {:?}: must be at least 100ms",
                    v.get_ref()
                )));
            }
            Ok(d)
        };
        let defaults = LeaseTimes::default();
        cfg.lease = LeaseTimes {
            heartbeat: lease_time(
                &raw.state.lease_heartbeat,
                "lease_heartbeat",
                defaults.heartbeat,
            )?,
            expiry: lease_time(&raw.state.lease_expiry, "lease_expiry", defaults.expiry)?,
        };
        if cfg.lease.heartbeat >= cfg.lease.expiry {
            return Err(invalid(format!(
                "state.lease_heartbeat ({}) must be shorter than state.lease_expiry ({}): a lease \
                 renewed less often than it expires would be taken over while its run still sends",
                humantime::format_duration(cfg.lease.heartbeat),
                humantime::format_duration(cfg.lease.expiry)
            )));
        }
        Ok(cfg)
    }

    /// Where shared state lives for a state directory: `[state] url` if set, else SQLite there.
    pub fn state_store(&self, state_dir: &Path) -> StateStore {
        match &self.state_url {
            Some(u) => StateStore::Postgres(u.clone()),
            None => StateStore::Sqlite(state_dir.to_path_buf()),
        }
    }

    /// At most this many calls of `action` in flight: `send.max_batch_in_flight` for batch (each
    /// call holds up to 500 recipients in doubt), `send.max_in_flight` for the others.
    pub fn max_in_flight_for(&self, action: Action) -> usize {
        if action.max_receivers() > 1 {
            self.max_batch_in_flight
        } else {
            self.max_in_flight
        }
    }

    /// The cap on requests per second for `action`: only where the limit counts receivers
    /// (BatchSendMessage's request rate is undocumented); None where it counts requests.
    pub fn max_requests_per_second_for(&self, action: Action) -> Option<u32> {
        (action.unit() == crate::action::Unit::Receivers).then_some(self.max_requests_per_second)
    }

    /// The account's limit for `action` (before the reserve).
    pub fn account_limit(&self, action: Action) -> Limit {
        self.limits.get(&action).copied().unwrap_or_else(|| {
            let (l, w) = action.default_limit();
            Limit::new(l, w)
        })
    }

    /// The limit this process's limiter enforces for `action`: account limit × (1 − reserve),
    /// lowered by `campaign_throttle` (converted to the account's window), never raised.
    pub fn effective_limit(&self, action: Action, campaign_throttle: Option<Limit>) -> Limit {
        let acct = self.account_limit(action);
        let share = ((acct.limit as f64) * (1.0 - self.reserve)).floor() as u64;
        let mut limit = share.max(1);
        if let Some(t) = campaign_throttle {
            // Scale the campaign's rate to the account window. For a longer campaign window this
            // is a rate cap; the account window still bounds every burst.
            let scaled = if t.window.is_zero() {
                u64::MAX
            } else {
                let v = (t.limit as f64) * acct.window.as_secs_f64() / t.window.as_secs_f64();
                if t.window <= acct.window {
                    // Within the account window the campaign can use `t.limit` per its own window:
                    // at most floor(acct.window / t.window) full windows fit.
                    v.floor() as u64
                } else {
                    (v.floor() as u64).min(t.limit)
                }
            };
            limit = limit.min(scaled.max(1));
        }
        Limit::new(limit, acct.window)
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where one campaign's repository keeps things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPaths {
    /// The campaigns repository root.
    pub root: PathBuf,
    /// `imcast.toml` if present (or given by `--config`).
    pub config: Option<PathBuf>,
    /// The state directory (`<root>/.imcast/` unless `--state-dir`).
    pub state_dir: PathBuf,
    /// The reports directory (`<root>/reports/` unless `--report-dir`).
    pub reports_dir: PathBuf,
}

impl RepoPaths {
    /// Discover from the campaign file, honouring explicit overrides.
    pub fn discover(
        campaign_file: &Path,
        config: Option<&Path>,
        state_dir: Option<&Path>,
        report_dir: Option<&Path>,
    ) -> RepoPaths {
        let root = discover_root(campaign_file);
        let config = match config {
            Some(c) => Some(c.to_path_buf()),
            None => {
                let c = root.join(FILE_NAME);
                c.is_file().then_some(c)
            }
        };
        RepoPaths {
            state_dir: state_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.join(STATE_DIR_NAME)),
            reports_dir: report_dir
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.join("reports")),
            root,
            config,
        }
    }

    /// Where mock runs (`imcast run --mock`) keep things: `<state>/mock/` and `<reports>/mock/`,
    /// each unless the command line named that directory (`state_given`, `reports_given`).
    pub fn for_mock(mut self, state_given: bool, reports_given: bool) -> RepoPaths {
        if !state_given {
            self.state_dir = self.state_dir.join(MOCK_DIR);
        }
        if !reports_given {
            self.reports_dir = self.reports_dir.join(MOCK_DIR);
        }
        self
    }

    /// The account settings: the file if there is one, else defaults.
    pub fn account_config(&self) -> Result<AccountConfig, ConfigError> {
        match &self.config {
            Some(p) => AccountConfig::load(p),
            None => Ok(AccountConfig::default()),
        }
    }
}

/// The account's global suppression lists (`account.suppress` in `imcast.toml`) for a campaign
/// file: `config` if given, else the `imcast.toml` found by [`RepoPaths::discover`]. The one
/// reader of that key (plan, preview, validate and run all use it).
pub fn account_suppress(
    campaign_file: &Path,
    config: Option<&Path>,
) -> Result<Vec<PathBuf>, ConfigError> {
    Ok(RepoPaths::discover(campaign_file, config, None, None)
        .account_config()?
        .suppress)
}

/// The folder under the state and reports directories where mock runs keep theirs.
pub const MOCK_DIR: &str = "mock";

/// The state directory's name under the campaigns root.
pub const STATE_DIR_NAME: &str = ".imcast";

/// Where state and reports live, as `--help` says it (see [`root_above_in`]).
pub const ROOT_RULE: &str = "The campaigns root is the nearest folder above the campaign file (for daemon and \
schedule: above the campaigns folder; for pause, resume, cancel and prune: above the current directory) that \
holds imcast.toml, else .git. Outside any repository it is the current directory, when the campaign is inside \
it (unless a folder in between already holds .imcast/; never /), else the campaign's own folder. State lives in \
<root>/.imcast/ (mock runs in <root>/.imcast/mock/), reports in <root>/reports/ (mock runs in \
<root>/reports/mock/).";

/// The campaigns repository root for `campaign_file` (see [`root_above_in`]).
pub fn discover_root(campaign_file: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(campaign_file).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(campaign_file))
            .unwrap_or_else(|_| campaign_file.to_path_buf())
    });
    let dir = abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    root_above(dir)
}

/// The campaigns repository root above the directory `dir` (same rule as [`discover_root`]):
/// what `imcast daemon DIR`, `schedule`, `pause` and `prune` use, so every command finds the same
/// state directory as `imcast run` does for a file in `dir`.
pub fn discover_root_from_dir(dir: &Path) -> PathBuf {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    root_above(dir)
}

fn root_above(dir: PathBuf) -> PathBuf {
    let cwd = std::env::current_dir()
        .ok()
        .map(|c| std::fs::canonicalize(&c).unwrap_or(c));
    root_above_in(dir, cwd.as_deref())
}

/// The campaigns root above the (canonical) folder `dir`, seen from the current directory `cwd`:
/// the nearest ancestor holding `imcast.toml`, else the nearest holding `.git`. Outside any
/// repository: when `dir` is inside `cwd`, the nearest folder from `dir` up to `cwd` that
/// already holds `.imcast/` (state written before stays found), else `cwd` itself — so
/// `imcast daemon campaigns` and `imcast pause NAME` in the same shell agree; when `dir` is not
/// inside `cwd` (or `cwd` is the filesystem root `/`), `dir` itself.
pub fn root_above_in(dir: PathBuf, cwd: Option<&Path>) -> PathBuf {
    if let Some(d) = dir.ancestors().find(|d| d.join(FILE_NAME).is_file()) {
        return d.to_path_buf();
    }
    if let Some(d) = dir.ancestors().find(|d| d.join(".git").exists()) {
        return d.to_path_buf();
    }
    // A service started in `/` (systemd's default) must not make `/` the root.
    match cwd.filter(|c| c.parent().is_some()) {
        Some(cwd) if dir.starts_with(cwd) => dir
            .ancestors()
            .take_while(|d| d.starts_with(cwd))
            .find(|d| d.join(STATE_DIR_NAME).is_dir())
            .unwrap_or(cwd)
            .to_path_buf(),
        _ => dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_limits() {
        let c = AccountConfig::default();
        assert_eq!(
            c.account_limit(Action::Batch),
            Limit::new(12_000, Duration::from_secs(60))
        );
        assert_eq!(c.max_requests_per_second, 200);
    }

    #[test]
    fn parses_issue_shape_and_applies_reserve() {
        let text = r#"
[account]
reserve = 0.10
suppress = ["audiences/global-optout.csv"]
[limits.batch]
limit = 12000
window = "60s"
[limits.p2p]
limit = 80
"#;
        let c = AccountConfig::parse(text, Path::new("/repo/imcast.toml")).expect("valid");
        assert_eq!(
            c.suppress,
            vec![PathBuf::from("/repo/audiences/global-optout.csv")]
        );
        assert_eq!(
            c.effective_limit(Action::Batch, None),
            Limit::new(10_800, Duration::from_secs(60))
        );
        assert_eq!(c.effective_limit(Action::P2p, None).limit, 72);
        // A throttle lowers ...
        let low = Limit::new(600, Duration::from_secs(60));
        assert_eq!(c.effective_limit(Action::Batch, Some(low)).limit, 600);
        // ... and never raises.
        let high = Limit::new(1_000_000, Duration::from_secs(60));
        assert_eq!(c.effective_limit(Action::Batch, Some(high)).limit, 10_800);
        // A per-second throttle scales to the account window.
        let per_sec = Limit::new(10, Duration::from_secs(1));
        assert_eq!(c.effective_limit(Action::Batch, Some(per_sec)).limit, 600);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = AccountConfig::parse("[account]\nreserv = 0.1\n", Path::new("x.toml"))
            .expect_err("unknown key");
        assert!(e.to_string().contains("reserv"), "{e}");
        let e = AccountConfig::parse("[account]\nreserve = 1.5\n", Path::new("x.toml"))
            .expect_err("bad reserve");
        assert!(e.to_string().contains("reserve"), "{e}");
        let e = AccountConfig::parse(
            "[limits.batch]\nlimit = 5\nwindow = \"soon\"\n",
            Path::new("x.toml"),
        )
        .expect_err("bad window");
        assert!(e.to_string().contains("window"), "{e}");
    }

    #[test]
    fn state_url_is_checked_and_never_holds_a_password() {
        let p = Path::new("/repo/imcast.toml");
        let c = AccountConfig::parse(
            "[state]\nurl = \"postgres://imcast@db.internal:5432/imcast\"\n",
            p,
        )
        .expect("valid");
        assert_eq!(
            c.state_store(Path::new("/s")),
            StateStore::Postgres(
                PgUrl::parse("postgres://imcast@db.internal:5432/imcast").expect("url")
            )
        );
        assert_eq!(
            AccountConfig::default().state_store(Path::new("/s")),
            StateStore::Sqlite(PathBuf::from("/s"))
        );
        for (text, says) in [
            (
                "[limits.p2p]\nlimit = 5\n[state]\nurl = \"postgres://imcast:hunter2@db:5432/imcast\"\n",
                "line 4, column 7: state.url: the URL holds a password",
            ),
            (
                "[state]\nurl = \"postgres://imcast@db/imcast?password=hunter2\"\n",
                "line 2, column 7: state.url: the URL holds a password",
            ),
            (
                "[state]\nurl = \"postgres://db:5432/imcast\"\n",
                "line 2, column 7: state.url: the URL names no user",
            ),
            ("[state]\nurl = \"sqlite://x\"\n", "postgres://"),
            ("[state]\nuri = \"postgres://a@b/c\"\n", "uri"),
        ] {
            let e = AccountConfig::parse(text, p).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.starts_with("/repo/imcast.toml"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn lease_times_default_parse_and_heartbeat_must_be_shorter_than_expiry() {
        let p = Path::new("/repo/imcast.toml");
        assert_eq!(
            AccountConfig::default().lease,
            LeaseTimes {
                heartbeat: Duration::from_secs(10),
                expiry: Duration::from_secs(30)
            }
        );
        let c = AccountConfig::parse(
            "[state]\nlease_expiry = \"2s\"\nlease_heartbeat = \"500ms\"\n",
            p,
        )
        .expect("valid");
        assert_eq!(
            c.lease,
            LeaseTimes {
                heartbeat: Duration::from_millis(500),
                expiry: Duration::from_secs(2)
            }
        );
        // One key alone keeps the other's default.
        let c = AccountConfig::parse("[state]\nlease_expiry = \"2m\"\n", p).expect("valid");
        assert_eq!(c.lease.heartbeat, Duration::from_secs(10));
        for (text, says) in [
            (
                "[state]\nlease_expiry = \"5s\"\n",
                "state.lease_heartbeat (10s) must be shorter than state.lease_expiry (5s)",
            ),
            (
                "[state]\nlease_expiry = \"2s\"\nlease_heartbeat = \"2s\"\n",
                "must be shorter",
            ),
            (
                "[state]\nlease_expiry = \"soon\"\n",
                "line 2, column 16: state.lease_expiry = \"soon\"",
            ),
            (
                "[state]\nlease_heartbeat = \"1ms\"\n",
                "line 2, column 19: state.lease_heartbeat = \"1ms\": must be at least 100ms",
            ),
        ] {
            let e = AccountConfig::parse(text, p).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.starts_with("/repo/imcast.toml"), "{e}");
        }
    }

    #[test]
    fn root_discovery_prefers_imcast_toml_then_git() {
        let t = tempfile::tempdir().expect("tempdir");
        let root = t.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::write(root.join("a/b/c.yaml"), "name: x\n").expect("write");
        // Neither: the campaign's directory, seen from elsewhere ...
        let file_dir = root.join("a/b");
        assert_eq!(root_above_in(file_dir.clone(), None), file_dir);
        let elsewhere = root.join("z");
        assert_eq!(root_above_in(file_dir.clone(), Some(&elsewhere)), file_dir);
        // ... and the current directory when the campaign is inside it ...
        assert_eq!(root_above_in(file_dir.clone(), Some(&root)), root);
        assert_eq!(root_above_in(root.clone(), Some(&root)), root);
        // ... unless a folder in between already holds state.
        std::fs::create_dir(root.join("a/.imcast")).expect("mkdir");
        assert_eq!(root_above_in(file_dir.clone(), Some(&root)), root.join("a"));
        std::fs::remove_dir(root.join("a/.imcast")).expect("rmdir");
        // Started in `/` (a service): never `/` itself.
        assert_eq!(
            root_above_in(file_dir.clone(), Some(Path::new("/"))),
            file_dir
        );
        std::fs::create_dir(root.join(".git")).expect("mkdir");
        assert_eq!(discover_root(&root.join("a/b/c.yaml")), root);
        std::fs::write(root.join("a/imcast.toml"), "").expect("write");
        assert_eq!(discover_root(&root.join("a/b/c.yaml")), root.join("a"));
        let p = RepoPaths::discover(&root.join("a/b/c.yaml"), None, None, None);
        assert_eq!(p.state_dir, root.join("a/.imcast"));
        assert_eq!(p.reports_dir, root.join("a/reports"));
        assert_eq!(p.config, Some(root.join("a/imcast.toml")));
    }
}
