//! The journal's values: run, recipient and call statuses, what a run records ([`NewRun`],
//! [`RunInfo`], [`RunFlags`]), the rows it is seeded with and gives back, the writes of a call
//! (marks and outcomes) and what [`Journal::open_run`](super::Journal::open_run) decided.
//!
//! Owns: these types and their stored names (`as_str`/`FromStr`, the strings in the database).
//! Invariants: a stored name never changes (old databases hold them). Must not: touch the
//! database (plain data only).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::JournalError;
use crate::action::Action;
use crate::config::Limit;

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),* } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = JournalError;
            fn from_str(s: &str) -> Result<Self, JournalError> {
                match s { $($s => Ok($name::$var),)* other => Err(JournalError::Corrupt(format!("{} {other:?}", stringify!($name)))) }
            }
        }
    };
}
pub(super) use str_enum;

str_enum!(
    /// A run's status.
    RunStatus {
        Running = "running",
        Paused = "paused",
        Finished = "finished",
        Cancelled = "cancelled",
        Interrupted = "interrupted",
    }
);

str_enum!(
    /// A recipient's status: exactly one per audience row; `pending` only while a run is unfinished.
    RecipientStatus {
        Sent = "sent",
        Failed = "failed",
        Unknown = "unknown",
        NotOnline = "not_online",
        Invalid = "invalid",
        Duplicate = "duplicate",
        Suppressed = "suppressed",
        Holdout = "holdout",
        Expired = "expired",
        Cancelled = "cancelled",
        Pending = "pending",
    }
);

str_enum!(
    /// A call's state.
    CallState {
        Planned = "planned",
        InFlight = "in_flight",
        Done = "done",
        Unknown = "unknown",
    }
);

impl RecipientStatus {
    /// The integer a recipient row stores for this status (`recipients.status`, schema 10 on).
    /// `sent` and `pending` are 0 and 1, which SQLite stores in no bytes at all, so the common
    /// rows pay nothing for their status and an outcome rewrites a row at the same size. A stored
    /// code never changes (old databases hold them).
    pub fn code(self) -> i64 {
        match self {
            RecipientStatus::Sent => 0,
            RecipientStatus::Pending => 1,
            RecipientStatus::Failed => 2,
            RecipientStatus::Unknown => 3,
            RecipientStatus::NotOnline => 4,
            RecipientStatus::Invalid => 5,
            RecipientStatus::Duplicate => 6,
            RecipientStatus::Suppressed => 7,
            RecipientStatus::Holdout => 8,
            RecipientStatus::Expired => 9,
            RecipientStatus::Cancelled => 10,
        }
    }

    /// The status a stored code means (see [`Self::code`]).
    pub fn from_code(code: i64) -> Result<Self, JournalError> {
        RecipientStatus::ALL
            .iter()
            .copied()
            .find(|s| s.code() == code)
            .ok_or_else(|| JournalError::Corrupt(format!("recipient status code {code}")))
    }

    /// Statuses a call's answer (or crash recovery) gives: a row with one of them and no time of
    /// its own was last changed when its call (`call_seq`) was answered.
    pub(super) fn given_by_call(self) -> bool {
        matches!(
            self,
            RecipientStatus::Sent
                | RecipientStatus::Failed
                | RecipientStatus::Unknown
                | RecipientStatus::NotOnline
                | RecipientStatus::Pending
        )
    }
}

impl RunStatus {
    /// Running, paused or interrupted: `run` resumes it.
    pub fn is_unfinished(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Paused | RunStatus::Interrupted
        )
    }
}

/// Flags a run was started with (stored as JSON, shown in the audit block).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFlags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_run: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_changed: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resend_unknown: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub yes: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mock: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub test_to: Vec<u64>,
    /// `--skip-canary`: the rollout's canary gate is not waited for (recorded in the audit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_canary: bool,
    /// `--retry-failed`: a follow-up run for the last finished run's retryable failures.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_failed: bool,
}

impl RunFlags {
    /// The flags that can cause duplicates or skip safety checks.
    pub fn risky(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.new_run {
            v.push("--new-run");
        }
        if self.continue_changed {
            v.push("--continue-changed");
        }
        if self.resend_unknown {
            v.push("--resend-unknown");
        }
        if self.yes {
            v.push("--yes");
        }
        if self.skip_canary {
            v.push("--skip-canary");
        }
        v
    }

    /// Every flag as it is written on the command line (`--test-to` with its ids), in a fixed
    /// order: what the audit shows for an invocation.
    pub fn to_args(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (on, name) in [
            (self.new_run, "--new-run"),
            (self.continue_changed, "--continue-changed"),
            (self.resend_unknown, "--resend-unknown"),
            (self.retry_failed, "--retry-failed"),
            (self.yes, "--yes"),
            (self.mock, "--mock"),
        ] {
            if on {
                v.push(name.to_string());
            }
        }
        if !self.test_to.is_empty() {
            let ids: Vec<String> = self.test_to.iter().map(u64::to_string).collect();
            v.push(format!("--test-to {}", ids.join(",")));
        }
        v
    }
}

/// One run as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub id: String,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub plan_hash: String,
    pub content_key: Option<String>,
    pub action: Action,
    pub status: RunStatus,
    pub flags: RunFlags,
    pub is_test: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub stop_reason: Option<String>,
    pub audit: serde_json::Value,
    pub limit: Limit,
    pub total_calls: u64,
    pub continued_from: Option<String>,
    /// A `--retry-failed` run: the finished run whose failures it sends again.
    pub retry_of: Option<String>,
}

/// The recipient counters of one run (see [`Journal::recent_counts`](super::Journal::recent_counts)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCounts {
    pub run_id: String,
    pub campaign: String,
    pub counts: BTreeMap<RecipientStatus, u64>,
}

/// What a new run records.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Set to choose the id (tests); otherwise generated from the time and a random suffix.
    pub id: Option<String>,
    pub campaign: String,
    pub occurrence: Option<String>,
    pub plan_hash: String,
    /// Hash of everything that decides what is sent *except* which ids are suppressed; when both
    /// the old and the new plan provide it and only suppressions were added, a resume applies them.
    pub content_key: Option<String>,
    pub action: Action,
    pub flags: RunFlags,
    pub is_test: bool,
    pub audit: serde_json::Value,
    pub limit: Limit,
    pub total_calls: u64,
}

/// The audience rows a run is seeded from (called at most once per `open_run`).
pub type SeedRows<'a, E> = Box<dyn Iterator<Item = Result<SeedRow, E>> + Send + 'a>;

/// One audience row to seed a run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRow {
    pub line: u64,
    pub id: Option<u64>,
    /// The id column's text where it is not the id's decimal form (None: it is).
    pub raw_id: Option<String>,
    /// Pending (valid), or final: invalid / duplicate / suppressed / holdout.
    pub status: RecipientStatus,
    pub call_seq: Option<u64>,
    pub variant: Option<String>,
    /// The A/B variant (`message.variants`) the recipient is assigned.
    pub variant_name: Option<String>,
    /// Why invalid / which list suppressed / first line of a duplicate.
    pub note: Option<String>,
}

impl SeedRow {
    /// The id text a row stores: None where it is the id's decimal form (not stored twice).
    pub fn stored_raw_id(&self) -> Option<&str> {
        match (self.id, self.raw_id.as_deref()) {
            (Some(v), Some(raw)) if itoa::Buffer::new().format(v) == raw => None,
            (_, raw) => raw,
        }
    }
}

/// One recipient row as stored (the report's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientRow {
    pub line: u64,
    pub id: Option<u64>,
    pub raw_id: String,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub attempts: u32,
    pub call: Option<u64>,
    pub variant: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub detail: Option<String>,
    pub time: Option<String>,
    /// The A/B variant (`message.variants`) the recipient was assigned.
    pub variant_name: Option<String>,
}

/// A receiver still to send, as [`Journal::sendable_detail`](super::Journal::sendable_detail) finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sendable {
    pub id: u64,
    /// Times the provider refused it (> 0 on a `pending` row: re-queued).
    pub refusals: u32,
    /// `pending` (else `unknown`, resent with --resend-unknown).
    pub pending: bool,
}

/// One recipient row borrowed from the database (see [`Journal::for_each_recipient_ref`](super::Journal::for_each_recipient_ref)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientRef<'a> {
    pub line: u64,
    pub id: Option<u64>,
    /// None when the raw id is `id` written in decimal.
    pub raw_id: Option<&'a str>,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub attempts: u32,
    pub call: Option<u64>,
    pub variant: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// The last update: the row's own time (cancelled, expired, suppressed on resume, carried
    /// over), else when its call was answered, else the run's start.
    pub time: &'a str,
    /// The A/B variant (`message.variants`) the recipient was assigned.
    pub variant_name: Option<&'a str>,
}

impl RecipientRef<'_> {
    /// The owned row, as [`Journal::for_each_recipient`](super::Journal::for_each_recipient) gives it.
    pub fn to_row(&self) -> RecipientRow {
        RecipientRow {
            line: self.line,
            id: self.id,
            raw_id: match self.raw_id {
                Some(r) => r.to_string(),
                None => self.id.map(|v| v.to_string()).unwrap_or_default(),
            },
            status: self.status,
            message_id: self.message_id,
            attempts: self.attempts,
            call: self.call,
            variant: self.variant.map(str::to_string),
            error_code: self.error_code.map(str::to_string),
            error_message: self.error_message.map(str::to_string),
            detail: self.detail.map(str::to_string),
            time: Some(self.time.to_string()),
            variant_name: self.variant_name.map(str::to_string),
        }
    }
}

/// A per-recipient outcome of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub id: u64,
    pub status: RecipientStatus,
    pub message_id: Option<u64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Extra detail (P2P: the per-user results as JSON).
    pub detail: Option<String>,
}

/// One call row as stored (see [`Journal::calls`](super::Journal::calls)(super::Journal::calls)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    pub seq: u64,
    pub variant: String,
    pub receivers: Vec<u64>,
    pub state: CallState,
    /// Requests made under this number.
    pub attempts: u64,
    pub client_msg_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The last change: the mark, the outcome or a retry.
    pub updated_at: Timestamp,
}

/// An answered call as the report's timeline needs it (see
/// [`Journal::for_each_answered_call`](super::Journal::for_each_answered_call)(super::Journal::for_each_answered_call)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallEnd {
    /// When its outcome was written.
    pub at: Timestamp,
    pub receivers: u64,
}

/// A call attempt's in-flight mark.
#[derive(Debug, Clone)]
pub struct Mark {
    pub run_id: String,
    pub seq: u64,
    pub variant: String,
    pub receivers: Vec<u64>,
    pub client_msg_id: Option<String>,
    pub now: Timestamp,
}

/// A call's per-recipient outcomes and final state.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_id: String,
    pub seq: u64,
    pub state: CallState,
    pub updates: Vec<RecipientUpdate>,
    /// (code, message)
    pub error: Option<(String, String)>,
    pub now: Timestamp,
}

/// One write of a group commit.
#[derive(Debug, Clone)]
pub enum Write {
    Mark(Mark),
    Outcome(Outcome),
}

/// How [`Journal::open_run`](super::Journal::open_run) should treat an existing run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    pub new_run: bool,
    pub continue_changed: bool,
    pub resend_unknown: bool,
}

/// What [`Journal::open_run`](super::Journal::open_run) did.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// A new run was created and seeded.
    Created(RunInfo),
    /// The unfinished run was resumed; `recovered` in-flight calls were settled first.
    Resumed { run: RunInfo, recovered: Recovered },
    /// The unfinished run continued after its plan only gained suppressed ids (now applied).
    ResumedWithSuppressions {
        run: RunInfo,
        recovered: Recovered,
        newly_suppressed: u64,
    },
    /// `--continue-changed`: a new run continuing `from`, skipping recipients it already sent.
    Continued {
        run: RunInfo,
        from: String,
        skipped: u64,
    },
    /// The latest run already finished and nothing asks to send again.
    AlreadyFinished(RunInfo),
    /// `--retry-failed`: a new run for the recipients of the finished run `of` whose final
    /// status is `failed` with a retryable code (see [`Journal::open_retry_run`](super::Journal::open_retry_run)).
    Retry {
        run: RunInfo,
        of: String,
        /// Recipients seeded `pending` (sent again).
        retried: u64,
        /// Retryable failures of `of` whose id is no longer in the audience (not sent).
        left_out: u64,
    },
}

impl Opened {
    pub fn run(&self) -> &RunInfo {
        match self {
            Opened::Created(r)
            | Opened::Resumed { run: r, .. }
            | Opened::ResumedWithSuppressions { run: r, .. }
            | Opened::Continued { run: r, .. }
            | Opened::Retry { run: r, .. }
            | Opened::AlreadyFinished(r) => r,
        }
    }
}

/// In-flight calls settled by crash recovery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Calls whose receivers became `unknown`.
    pub unknown_calls: u64,
    pub unknown_recipients: u64,
    /// SendMessage calls put back to planned (safe to resend with the same ClientMsgId).
    pub replanned_calls: u64,
}
