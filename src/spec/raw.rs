//! The campaign file exactly as written: serde structs with `deny_unknown_fields`, no meaning
//! attached. `spec::validate` turns a [`RawCampaign`] into a [`super::Campaign`]; nothing else
//! reads these types. `imcast schema` derives the JSON Schema from them, so doc comments here are
//! what editors show.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::action::Action;
use crate::schedule::RawSchedule;

/// A campaign file (version 1).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "imcast campaign")]
pub struct RawCampaign {
    /// File format version; must be 1.
    #[schemars(with = "u32")]
    pub version: Spanned<u32>,
    /// Campaign name: [a-z0-9_-]+. Names the state and the report folder.
    #[schemars(with = "String", regex(pattern = r"^[a-z0-9_-]+$"))]
    pub name: Spanned<String>,
    /// Free text shown in plans and reports.
    #[serde(default)]
    pub description: Option<String>,
    /// Which app and where to send.
    pub provider: RawProvider,
    /// batch (BatchSendMessage) | conversation (SendMessage) | p2p (P2PSendMessage).
    pub action: Action,
    /// The sending user id (`Long`: at most 9223372036854775807).
    #[schemars(with = "LongId")]
    pub sender: Spanned<u64>,
    /// BatchSendMessage options.
    #[serde(default)]
    pub batch: Option<RawBatch>,
    /// SendMessage options.
    #[serde(default)]
    pub conversation: Option<RawConversation>,
    /// P2PSendMessage options.
    #[serde(default)]
    pub p2p: Option<RawP2p>,
    /// Who receives it: user ids (batch) or conversation ids (conversation, p2p).
    pub audience: RawAudience,
    /// What is sent.
    pub message: RawMessage,
    /// When it fires; absent = manual runs only.
    #[serde(default)]
    pub schedule: Option<RawSchedule>,
    /// Lower this campaign's share of the account limit (never raises it).
    #[serde(default)]
    pub throttle: Option<RawThrottle>,
    /// Retries for calls that were certainly not processed.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Recipients still pending then become `expired`: an RFC 3339 time, or a duration after the
    /// run starts (e.g. 2h).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub deadline: Option<Spanned<String>>,
    /// Safety rails checked before a run starts.
    #[serde(default)]
    pub guard: Option<RawGuard>,
    /// When a run stops itself because calls keep failing; fields left out come from
    /// `imcast.toml` `[breaker]`, else the documented defaults.
    #[serde(default)]
    pub breaker: Option<RawBreaker>,
    /// Staged rollout: a canary sample first, a wait, then the rest only if the canary's failure
    /// ratio is within bounds.
    #[serde(default)]
    pub rollout: Option<RawRollout>,
    /// A share of the valid audience that is not sent (status `holdout`), chosen by a stable hash
    /// of (campaign name, recipient id): `5%`, `2.5%` or a number of percent (`5`); at most two
    /// decimals, below 100.
    #[serde(default)]
    #[schemars(with = "Option<StringOrNumber>")]
    pub holdout: Option<Spanned<StringOrNumber>>,
}

/// A number or a string (a percentage).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StringOrNumber {
    Number(f64),
    String(String),
}

/// One A/B variant of the message: it replaces the message body (`text` or `template`) and may
/// add or override Ext keys.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    /// The variant's name ([A-Za-z0-9_-]+, unique): the report's `variant_name`.
    #[schemars(with = "String", regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: Spanned<String>,
    /// Relative weight (a whole number; 0 switches the variant off without moving anyone else).
    #[schemars(with = "u64")]
    pub weight: Spanned<u64>,
    /// Inline template (minijinja) of this variant's body.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub text: Option<Spanned<String>>,
    /// Template file of this variant's body, relative to the campaign file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
    /// Ext keys added to (or overriding) `message.ext` for this variant; values are templates.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub ext: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The RTC AppId (`Integer`: at most 2147483647).
    #[schemars(with = "AppId")]
    pub app_id: Spanned<u64>,
    /// cn-north-1 or ap-southeast-1; the endpoint is derived from it.
    #[schemars(with = "String")]
    pub region: Spanned<String>,
    /// Override the endpoint: a known region host or a loopback address only (other hosts need
    /// `--allow-endpoint`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub endpoint: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBatch {
    /// InboxType.
    #[serde(default)]
    pub inbox_type: Option<i32>,
    /// IsNormalUser.
    #[serde(default)]
    pub is_normal_user: Option<bool>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConversation {
    /// MentionedUsers.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub mentioned_users: Option<Vec<Spanned<RawId>>>,
    /// VisibleUsers: only these members see the message.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub visible_users: Option<Vec<Spanned<RawId>>>,
    /// InvisibleUsers: these members do not see the message.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub invisible_users: Option<Vec<Spanned<RawId>>>,
    /// Priority.
    #[serde(default)]
    pub priority: Option<i32>,
    /// RefMsgInfo: the message this one quotes.
    #[serde(default)]
    pub ref_msg: Option<RawRefMsg>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRefMsg {
    #[schemars(with = "Option<LongId>")]
    pub referenced_message_id: Option<Spanned<u64>>,
    pub hint: Option<String>,
    pub referenced_message_type: Option<i32>,
    pub status: Option<i32>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawP2p {
    /// ReceiverUserId: only these members receive it.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub receiver_user_ids: Option<Vec<Spanned<RawId>>>,
    /// IgnoreUserIds: these members do not receive it (not with `receiver_user_ids`, which makes
    /// the provider ignore it).
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub ignore_user_ids: Option<Vec<Spanned<RawId>>>,
}

/// Where ids come from: a CSV file (with a header row) or an inline list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAudience {
    /// CSV file, relative to the campaign file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub csv: Option<Spanned<String>>,
    /// Inline ids.
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub ids: Option<Vec<Spanned<RawId>>>,
    /// The CSV column holding the id (default user_id); other columns become template variables.
    #[serde(default)]
    pub id_column: Option<String>,
    /// Suppression lists: ids here are never sent to.
    #[serde(default)]
    pub exclude: Vec<RawSource>,
    /// Columns that must be non-empty; rows where one is empty are `invalid`.
    #[serde(default)]
    pub required: Vec<String>,
    /// The CSV column holding each recipient's IANA time zone (with `schedule.local_time`); a row
    /// whose zone is unknown is `invalid`.
    #[serde(default)]
    pub timezone_column: Option<String>,
    /// The zone of rows whose `timezone_column` cell is empty (default: such rows are `invalid`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub default_timezone: Option<Spanned<String>>,
    /// An audience with no valid recipient (no rows, or every row invalid, duplicate or
    /// suppressed) is an error unless this is true; then a run of it ends at once, saying there
    /// was no one to send to (a recurring campaign whose list is sometimes empty).
    #[serde(default)]
    pub allow_empty: bool,
}

/// A suppression list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub csv: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<Vec<LongId>>")]
    pub ids: Option<Vec<Spanned<RawId>>>,
    /// Id column (default: the audience's id_column).
    #[serde(default)]
    pub id_column: Option<String>,
}

/// Message types; `msg_type` is derived from it unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawMessageType {
    /// 10001: Content is {"text": "..."}.
    Text,
    /// 10003: Content is {"url": "..."}, width/height go to Ext.
    Image,
    /// 10012: Content is `data` serialized as JSON (or the rendered text as is).
    Custom,
    /// The rendered text as is; `msg_type` required.
    Raw,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    /// text | image | custom | raw.
    #[serde(rename = "type")]
    pub kind: RawMessageType,
    /// Override the MsgType number.
    #[serde(default)]
    pub msg_type: Option<i32>,
    /// Inline template (minijinja).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub text: Option<Spanned<String>>,
    /// Template file, relative to the campaign file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub template: Option<Spanned<String>>,
    /// image: the URL (a template).
    #[serde(default)]
    pub url: Option<String>,
    /// image: width in pixels (a template), sent in Ext (not for `action: p2p`, which has no Ext).
    #[serde(default)]
    #[schemars(with = "Option<StringOrInt>")]
    pub width: Option<Spanned<StringOrInt>>,
    /// image: height in pixels (a template), sent in Ext (not for `action: p2p`, which has no Ext).
    #[serde(default)]
    #[schemars(with = "Option<StringOrInt>")]
    pub height: Option<Spanned<StringOrInt>>,
    /// custom: the Content document; every string in it is a template.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Ext: string to string; values are templates. Keys starting with `s:` are reserved. Not for
    /// `action: p2p` (P2PSendMessage has no Ext).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub ext: Option<Spanned<BTreeMap<String, String>>>,
    /// Campaign-level template variables.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// A/B variants (for `type: text`, `raw`, or `custom` without `data`): each recipient gets
    /// one, chosen by a stable hash of (campaign name, recipient id) in proportion to the weights.
    /// They replace `text`/`template` (give neither here when variants are given).
    #[serde(default)]
    pub variants: Option<Vec<RawVariant>>,
}

/// A user or conversation id in the schema: `Long` (signed 64-bit), so at most `i64::MAX`.
pub struct LongId;

/// An id in a list as written: a non-negative whole number, or whatever else was there (a
/// negative or fractional number, text, null), kept so validation can say which entry is wrong
/// and carry on (a plain `u64` would stop at the first with a message naming no key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawId {
    Id(u64),
    /// Not a whole number from 0 up, as written (e.g. `-5`, `1.5`, `abc`).
    Other(String),
}

/// Only so the JSON Schema can show a list's default (`null`); ids are never written back.
impl serde::Serialize for RawId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RawId::Id(v) => s.serialize_u64(*v),
            RawId::Other(w) => s.serialize_str(w),
        }
    }
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an id (a whole number from 0)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId::Id(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(u64::try_from(v).map_or_else(|_| RawId::Other(v.to_string()), RawId::Id))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<RawId, E> {
                Ok(u64::try_from(v).map_or_else(|_| RawId::Other(v.to_string()), RawId::Id))
            }
            fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<RawId, E> {
                Ok(u64::try_from(v).map_or_else(|_| RawId::Other(v.to_string()), RawId::Id))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawId, E> {
                Ok(RawId::Other(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawId, E> {
                Ok(RawId::Other(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Other(format!("\"{v}\"")))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RawId, E> {
                Ok(RawId::Other("null".into()))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<RawId, E> {
                Ok(RawId::Other("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for LongId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LongId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 0,
            "maximum": 9223372036854775807u64,
            "description": "A user or conversation id: a whole number from 0 to 9223372036854775807 (Long)."
        })
    }
}

/// The AppId in the schema: `Integer` (signed 32-bit), so at most `i32::MAX`.
pub struct AppId;

impl JsonSchema for AppId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AppId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "minimum": 0,
            "maximum": 2147483647u64,
            "description": "The RTC AppId: a whole number from 0 to 2147483647 (Integer)."
        })
    }
}

/// A number or a string.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StringOrInt {
    Int(u64),
    String(String),
}

impl StringOrInt {
    pub fn as_template(&self) -> String {
        match self {
            StringOrInt::Int(n) => n.to_string(),
            StringOrInt::String(s) => s.clone(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Units per window: receivers for batch, requests for conversation/p2p.
    pub limit: u64,
    /// The rolling window, e.g. 60s, 5s, 500ms.
    #[schemars(with = "String")]
    pub window: Spanned<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts per call, first included (default 3).
    pub max_attempts: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Refuse a run whose valid audience is larger than this.
    #[serde(default)]
    pub max_recipients: Option<u64>,
    /// Refuse a run when more than this share of the audience's rows is invalid, 0..1 (default
    /// 0.05): a broken export is the likeliest mistake.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_invalid_ratio: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Stop after this many failed calls in a row (default: `imcast.toml` `[breaker]`, else 5).
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Failure ratio is measured over the last this many calls (default: `[breaker]`, else 50).
    #[serde(default)]
    pub window_calls: Option<u32>,
    /// Stop when the failure ratio over the window exceeds this, 0..1 (default: `[breaker]`, else
    /// 0.5).
    #[serde(default)]
    pub max_failure_ratio: Option<f64>,
}

/// `rollout:` — a canary stage before the rest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// The canary: a share of the valid recipients ("1%", "0.5%") or a count (500), chosen by a
    /// stable hash of (campaign name, recipient id).
    #[schemars(with = "StringOrInt")]
    pub canary: Spanned<StringOrInt>,
    /// How long to wait after the canary's last call before deciding (default 10m).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub wait: Option<Spanned<String>>,
    /// Continue only if the canary's (failed + unknown) / sent is at most this, 0..1 (default
    /// 0.02).
    #[serde(default)]
    pub max_failure_ratio: Option<f64>,
}
