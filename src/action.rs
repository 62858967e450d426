//! The three provider actions a campaign can use, and the facts about each that several stages
//! need (API name, what the provider's limit counts, the documented default limit).
//!
//! Owns the rule "batch counts receivers, the others requests" ([`Action::unit`]); every stage
//! that counts against a limit (the engine, the limiter's callers, the ETA, the report's rate)
//! asks [`Action::units`] / [`Action::total_units`] instead of comparing with `Action::Batch`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which API a campaign calls.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// BatchSendMessage: one Content to up to 500 users.
    Batch,
    /// SendMessage: one message into one conversation (idempotent with ClientMsgId).
    Conversation,
    /// P2PSendMessage: one online-only message into one conversation.
    P2p,
}

/// What the provider's limit for an action counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Every receiver of a call counts (BatchSendMessage).
    Receivers,
    /// Every request counts, whatever it carries (SendMessage, P2PSendMessage).
    Requests,
}

impl Unit {
    /// The plural name, for reports: `receivers` or `requests`.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Receivers => "receivers",
            Unit::Requests => "requests",
        }
    }
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Batch, Action::Conversation, Action::P2p];

    /// The `Action=` query value.
    pub fn api_name(self) -> &'static str {
        match self {
            Action::Batch => "BatchSendMessage",
            Action::Conversation => "SendMessage",
            Action::P2p => "P2PSendMessage",
        }
    }

    /// The name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Batch => "batch",
            Action::Conversation => "conversation",
            Action::P2p => "p2p",
        }
    }

    /// What the provider's limit counts: receivers for batch, requests for the others.
    pub fn unit(self) -> Unit {
        match self {
            Action::Batch => Unit::Receivers,
            Action::Conversation | Action::P2p => Unit::Requests,
        }
    }

    /// The units one call carrying `receivers` receivers takes from the limit.
    pub fn units(self, receivers: u64) -> u64 {
        match self.unit() {
            Unit::Receivers => receivers,
            Unit::Requests => 1,
        }
    }

    /// The units of `calls` calls that carry `receivers` receivers in all (the sum of
    /// [`Action::units`] over the calls).
    pub fn total_units(self, receivers: u64, calls: u64) -> u64 {
        match self.unit() {
            Unit::Receivers => receivers,
            Unit::Requests => calls,
        }
    }

    /// The documented limit: (count, window), in [`Action::unit`]s.
    pub fn default_limit(self) -> (u64, Duration) {
        match self {
            Action::Batch => (12_000, Duration::from_secs(60)),
            Action::Conversation => (50, Duration::from_secs(1)),
            Action::P2p => (100, Duration::from_secs(1)),
        }
    }

    /// Most recipients one call can carry.
    pub fn max_receivers(self) -> usize {
        match self {
            Action::Batch => 500,
            Action::Conversation | Action::P2p => 1,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
