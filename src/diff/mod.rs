//! `imcast plan --diff REV`: what a change to a campaign does to whom.
//!
//! Owns the comparison of two plans of one campaign — as it was at a git revision ("before") and
//! as it is in the work tree ("after"), either possibly absent — and the [`PlanDiff`] report, whose
//! JSON form is a stable, documented format (`plan-diff.schema.json`, derived from these types).
//!
//! Invariants: the audience comparison reads no audience itself: each plan's build reports its rows
//! as they stream by, and each side keeps only fixed-size values per recipient (id, line, state,
//! group: 24 bytes), never the rows' text (see [`audience`]). "No effect"
//! means nothing sent changes: the same recipients get the same Content and Ext through the same
//! request fields and sending settings — a comment or a reordering of rows has no effect even
//! though the plan hash changes. Examples are bounded ([`EXAMPLES`] per category, [`GROUPS`]
//! content groups). Must not: read the clock (the caller passes `now`), send, or write anything.

mod audience;
pub mod format;
mod settings;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

pub use audience::{Collector, Rows};

use crate::plan::{Plan, PlanError};
use crate::run::Settings;

/// The value of [`PlanDiff::format`]; bumped only when a change would break readers.
pub const FORMAT: &str = "imcast-plan-diff/1";
/// Examples kept per audience category.
pub const EXAMPLES: usize = 5;
/// Content groups shown (largest first).
pub const GROUPS: usize = 10;
/// Next schedule occurrences shown per side.
pub const OCCURRENCES: usize = 3;

/// What changes when the campaign moves from the revision (`before`) to the work tree (`after`).
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[schemars(title = "imcast plan diff")]
pub struct PlanDiff {
    /// Always `imcast-plan-diff/1` for this format.
    pub format: String,
    /// The campaign's `name:` (the work tree's, else the revision's).
    pub campaign: String,
    /// The campaign file, relative to the repository root.
    pub file: String,
    /// The revision as given to `--diff`.
    pub rev: String,
    /// The commit it resolved to.
    pub commit: String,
    /// The plan at the revision; null when the file did not exist there (everything is added).
    pub before: Option<Side>,
    /// The plan in the work tree; null when the file was deleted (everything is removed).
    pub after: Option<Side>,
    /// True when nothing sent changes: same recipients, same Content and Ext, same request
    /// fields and sending settings (a comment or a reordering of rows).
    pub no_effect: bool,
    /// True when the two plans read byte-identical inputs (equal plan hashes) and resolve to the
    /// same sending settings (an `imcast.toml` change can alter those alone).
    pub identical: bool,
    /// One sentence for people.
    pub verdict: String,
    pub recipients: Recipients,
    pub audience: AudienceDiff,
    pub content: ContentDiff,
    /// Every sending setting, changed or not, in a fixed order.
    pub settings: Vec<Setting>,
    pub schedule: ScheduleDiff,
    /// Warnings of the work tree's plan (deadline, personalization, empty values).
    pub warnings: Vec<String>,
}

/// One side's plan in numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Side {
    /// The plan hash (sha256 over every input that decides what is sent).
    pub plan_hash: String,
    /// Audience rows.
    pub rows: u64,
    /// Recipients who get a message.
    pub valid: u64,
    pub invalid: u64,
    pub duplicate: u64,
    pub suppressed: u64,
    pub distinct_contents: u64,
    pub calls: u64,
    /// Messages the provider counts: receivers for batch, calls for conversation/p2p.
    pub messages: u64,
    /// Estimated sending time, in seconds, at the pace a run would use: the lower of the
    /// campaign's throttle and the account's share in `imcast.toml` (quiet hours not included).
    pub eta_secs: u64,
}

/// Who gets a message, before and after.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Recipients {
    /// Recipients who got a message before.
    pub before: u64,
    /// Recipients who get a message after.
    pub after: u64,
    /// Get a message now and did not before (added, unsuppressed, fixed).
    pub gained: u64,
    /// Got a message before and do not now (removed, newly suppressed, newly invalid).
    pub lost: u64,
    /// Get a message on both sides, a different one now.
    pub content_changed: u64,
    /// Get the same message on both sides.
    pub unchanged: u64,
}

/// Recipients whose standing in the audience changed, by kind. Lines: `line_after` is in the
/// work tree's file, `line_before` in the revision's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct AudienceDiff {
    /// Not in the audience before, get a message now.
    pub added: Category,
    /// Got a message before, no longer in the audience.
    pub removed: Category,
    /// Suppressed now (by an exclude or account list), not before.
    pub newly_suppressed: Category,
    /// Suppressed before, get a message now.
    pub unsuppressed: Category,
    /// Rows invalid now and not before: a bad id, or a required column empty.
    pub newly_invalid: Category,
    /// Invalid before, get a message now.
    pub fixed: Category,
    /// Rows that repeat an id now, beyond the repeats the revision had.
    pub newly_duplicate: Category,
}

impl AudienceDiff {
    /// The categories with their names, in display order.
    pub fn named(&self) -> [(&'static str, &Category); 7] {
        [
            ("added", &self.added),
            ("removed", &self.removed),
            ("newly suppressed", &self.newly_suppressed),
            ("unsuppressed", &self.unsuppressed),
            ("newly invalid", &self.newly_invalid),
            ("fixed", &self.fixed),
            ("newly duplicate", &self.newly_duplicate),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.named().iter().all(|(_, c)| c.count == 0)
    }
}

/// A count and the first few examples (in file order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Category {
    pub count: u64,
    pub examples: Vec<Example>,
}

/// One recipient (or row) as an example.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Example {
    /// The id; null for a row whose id is not a valid id.
    pub id: Option<u64>,
    /// The id column's text, for a row whose id is invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_id: Option<String>,
    /// Its line at the revision, if it was in the audience there.
    pub line_before: Option<u64>,
    /// Its line in the work tree, if it is in the audience now.
    pub line_after: Option<u64>,
    /// Why (the invalid reason, the suppression list, the first line of a duplicate id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How the messages of recipients present on both sides changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ContentDiff {
    /// Recipients on both sides whose Content or Ext changed.
    pub changed: u64,
    /// Distinct (before variant → after variant) pairs among them.
    pub groups_total: u64,
    /// The largest pairs (at most 10), each with one rendered example.
    pub groups: Vec<ContentGroup>,
    /// What recipients who gain a message get: the largest variants (at most 3).
    pub gained: Vec<GainedContent>,
}

/// Recipients moving from one Content (and Ext) to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ContentGroup {
    pub before_variant: String,
    pub after_variant: String,
    /// Recipients in this group.
    pub count: u64,
    /// The first of them (audience order in the work tree).
    pub example: Example,
    /// `text` when both Contents are text messages (the text is compared), else `content` (the
    /// Content strings as sent are compared).
    pub field: String,
    pub before: String,
    pub after: String,
    /// Word-level diff of `before` → `after`.
    pub words: Vec<WordChange>,
    /// Ext keys whose value differs.
    pub ext: Vec<ExtChange>,
}

/// A run of words in a word diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WordChange {
    /// `equal`, `delete` or `insert`.
    pub op: String,
    pub text: String,
}

/// One Ext key that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ExtChange {
    pub key: String,
    /// Null when the key is new.
    pub before: Option<String>,
    /// Null when the key is gone.
    pub after: Option<String>,
}

/// A Content that recipients gaining a message get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct GainedContent {
    pub variant: String,
    pub count: u64,
    pub example: Example,
    pub content: String,
    pub ext: BTreeMap<String, String>,
}

/// One sending setting on both sides (as text; null where that side does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Setting {
    /// action, app_id, endpoint, sender, msg_type, options, calls, throttle, eta, deadline, guard,
    /// retry, breaker, schedule, quiet_hours.
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub changed: bool,
}

/// The next occurrences of the schedule on each side, from the same instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ScheduleDiff {
    /// The instant the occurrences are counted from (UTC, RFC 3339).
    pub from: String,
    pub before: Vec<Occurrence>,
    pub after: Vec<Occurrence>,
    pub changed: bool,
}

/// One occurrence, in UTC and in the campaign's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Occurrence {
    pub utc: String,
    /// Wall-clock time in the schedule's zone, e.g. `2026-03-02 09:00:00 +08:00 (Asia/Shanghai)`.
    pub local: String,
}

/// What identifies the comparison.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The campaign file relative to the repository root.
    pub file: String,
    pub rev: String,
    pub commit: String,
}

/// The JSON Schema of [`PlanDiff`] (committed as `plan-diff.schema.json`).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(PlanDiff);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

fn side((p, settings): (&Plan, &Settings)) -> Side {
    let n = p.counts();
    Side {
        plan_hash: p.hash().to_string(),
        rows: n.total,
        valid: n.valid,
        invalid: n.invalid,
        duplicate: n.duplicate,
        suppressed: n.suppressed,
        distinct_contents: n.distinct_contents,
        calls: n.calls,
        messages: n.messages,
        eta_secs: settings.eta(n.valid, n.calls).as_secs_f64().ceil() as u64,
    }
}

/// Compare the plan at the revision (`before`) with the work tree's (`after`), each with the rows
/// its build reported to a [`Collector`] (built with [`crate::plan::build_observed`], the revision's
/// first); at least one must exist.
pub fn compare(
    before: Option<(&Plan, &Settings, Rows)>,
    after: Option<(&Plan, &Settings, Rows)>,
    now: jiff::Timestamp,
    meta: Meta,
) -> Result<PlanDiff, PlanError> {
    let (mut before, mut after) = (before, after);
    let sides = (
        before.as_ref().map(|(p, s, _)| (*p, *s)),
        after.as_ref().map(|(p, s, _)| (*p, *s)),
    );
    let rows = (
        before.as_mut().map(|(p, _, r)| (*p, r)),
        after.as_mut().map(|(p, _, r)| (*p, r)),
    );
    let before = rows.0.as_ref().map(|(p, _)| *p);
    let after = rows.1.as_ref().map(|(p, _)| *p);
    let same_plan = match (before, after) {
        (Some(b), Some(a)) => b.hash() == a.hash(),
        _ => false,
    };
    let settings = settings::compare(sides.0, sides.1, now);
    // The plan hash covers the campaign's inputs; `imcast.toml` may still change its settings.
    let identical = same_plan && settings.iter().all(|s| !s.changed);
    let (recipients, audience, content) = if same_plan {
        let n = after.map(|a| a.counts().valid).unwrap_or(0);
        (
            Recipients {
                before: n,
                after: n,
                unchanged: n,
                ..Recipients::default()
            },
            AudienceDiff::default(),
            ContentDiff::default(),
        )
    } else {
        audience::compare(rows.0, rows.1)?
    };
    let schedule = settings::schedule(before, after, now);
    let no_effect = recipients.gained == 0
        && recipients.lost == 0
        && recipients.content_changed == 0
        && settings.iter().all(|s| !s.changed)
        && before.is_some()
        && after.is_some();
    let mut warnings = Vec::new();
    if let Some((a, s)) = sides.1 {
        warnings.extend(settings::deadline_warning(a, s, now));
        warnings.extend(a.warnings().iter().cloned());
    }
    let verdict = verdict(identical, no_effect, &recipients, &settings, before, after);
    let campaign = after
        .or(before)
        .map(|p| p.campaign().name.clone())
        .unwrap_or_default();
    Ok(PlanDiff {
        format: FORMAT.to_string(),
        campaign,
        file: meta.file,
        rev: meta.rev,
        commit: meta.commit,
        before: sides.0.map(side),
        after: sides.1.map(side),
        no_effect,
        identical,
        verdict,
        recipients,
        audience,
        content,
        settings,
        schedule,
        warnings,
    })
}

pub(crate) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn verdict(
    identical: bool,
    no_effect: bool,
    r: &Recipients,
    settings: &[Setting],
    before: Option<&Plan>,
    after: Option<&Plan>,
) -> String {
    match (before, after) {
        (None, Some(_)) => {
            return format!(
                "New campaign: {} would get a message.",
                plural(r.after, "recipient", "recipients")
            )
        }
        (Some(_), None) => {
            return format!(
                "Campaign deleted: {} would no longer get a message.",
                plural(r.before, "recipient", "recipients")
            )
        }
        _ => {}
    }
    if identical {
        return "No effect: the inputs are identical.".to_string();
    }
    if no_effect {
        return "No effect: nothing sent changes (same recipients, same messages, same settings)."
            .to_string();
    }
    let who = |n: u64, one: &str, many: &str| {
        format!(
            "{} {}",
            plural(n, "recipient", "recipients"),
            if n == 1 { one } else { many }
        )
    };
    let mut parts = Vec::new();
    if r.gained > 0 {
        parts.push(who(r.gained, "gains a message", "gain a message"));
    }
    if r.lost > 0 {
        parts.push(who(r.lost, "loses their message", "lose their message"));
    }
    if r.content_changed > 0 {
        parts.push(who(
            r.content_changed,
            "gets a different message",
            "get a different message",
        ));
    }
    let changed: Vec<&str> = settings
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.name.as_str())
        .collect();
    let settings = if changed.is_empty() {
        String::new()
    } else {
        format!("settings changed: {}", changed.join(", "))
    };
    if parts.is_empty() {
        return format!("Same recipients, same messages; {settings}.");
    }
    if !settings.is_empty() {
        parts.push(settings);
    }
    format!("Changes what is sent: {}.", parts.join("; "))
}
