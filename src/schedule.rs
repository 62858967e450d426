//! Schedules: when a campaign fires (`at` or `cron` in an IANA time zone), how late it may fire,
//! what happens on overlap, and quiet hours in which no call may start.
//!
//! PLACEHOLDER API: the scheduler issue fills in the behaviour; the signatures below are the
//! boundary the spec and plan stages call.

use jiff::Timestamp;
use serde::Deserialize;

/// `schedule:` as written in the campaign file.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// One occurrence: an RFC 3339 time with offset, e.g. 2026-03-01T09:00:00+08:00.
    pub at: Option<String>,
    /// A cron expression (5 or 6 fields; 0 and 7 are Sunday), evaluated in `timezone`.
    pub cron: Option<String>,
    /// IANA time zone for `cron` (required with it), e.g. Asia/Shanghai.
    pub timezone: Option<String>,
    /// How late a missed occurrence may still fire (default 1h).
    pub not_after: Option<String>,
    /// What to do when an occurrence is due while the previous run is still going.
    pub overlap: Option<Overlap>,
    /// Times of day in which no call starts.
    pub quiet_hours: Option<RawQuietHours>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuietHours {
    /// Start, local wall-clock time "HH:MM".
    pub from: String,
    /// End, local wall-clock time "HH:MM" (may be earlier than `from`: spans midnight).
    pub to: String,
    /// IANA time zone the times are in.
    pub timezone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Invalid(String),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    _private: (),
}

impl Schedule {
    /// Validate a raw schedule. `Ok(None)` when it names no occurrence (`at`/`cron` both absent).
    pub fn from_raw(_raw: &RawSchedule) -> Result<Option<Schedule>, ScheduleError> {
        Ok(None)
    }

    /// The first occurrence strictly after `t`, if any.
    pub fn next_after(&self, _t: Timestamp) -> Option<Timestamp> {
        None
    }
}

/// Quiet hours: times of day in which no call starts.
///
/// PLACEHOLDER (foundation stream): the scheduler issue replaces this with the real thing; the
/// signatures are the CONTRACTS.md boundary. This stub accepts any raw value and is never quiet.
#[derive(Debug, Clone)]
pub struct QuietHours {
    _private: (),
}

impl QuietHours {
    /// Validate raw quiet hours.
    pub fn from_raw(_raw: &RawQuietHours) -> Result<QuietHours, ScheduleError> {
        Ok(QuietHours { _private: () })
    }

    /// Whether no call may start at `t`.
    pub fn is_quiet(&self, _t: Timestamp) -> bool {
        false
    }

    /// The first instant at or after `t` that is not quiet (`t` itself if not quiet).
    pub fn next_open(&self, t: Timestamp) -> Timestamp {
        t
    }
}
