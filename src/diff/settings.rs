//! The sending settings of two plans side by side, as text, and the schedules' next occurrences.
//! Each side's settings are the ones a run would use (`run::Settings`: the campaign with that
//! side's `imcast.toml`), so the throttle, ETA and breaker shown are what would be sent with.

use std::time::Duration;

use super::{Occurrence, ScheduleDiff, Setting, OCCURRENCES};
use crate::plan::{Plan, PlannedCall};
use crate::run::Settings;
use crate::spec::{Campaign, Deadline};

/// Whole seconds, rounded up (as `imcast plan` shows an ETA).
fn dur(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs_f64().ceil() as u64)).to_string()
}

fn window(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The request fields that are neither recipients nor Content: the action's options.
fn options(c: &Campaign) -> String {
    let call = PlannedCall {
        seq: 0,
        variant: String::new(),
        receivers: Vec::new(),
        msg_type: c.message.msg_type,
        content: String::new(),
        ext: Default::default(),
    };
    // The one request builder the sender uses (options only: no receiver, no Content).
    let req = crate::send::adapters::build_request(c, &call, &[], None);
    let mut body = serde_json::to_value(&req).unwrap_or_default();
    if let Some(m) = body.as_object_mut() {
        for k in [
            "AppId",
            "Sender",
            "Receiver",
            "ConversationShortId",
            "MsgType",
            "Content",
            "Ext",
        ] {
            m.remove(k);
        }
        if m.is_empty() {
            return "none".to_string();
        }
    }
    serde_json::to_string(&body).unwrap_or_default()
}

fn eta(p: &Plan, s: &Settings, now: jiff::Timestamp) -> String {
    let c = p.campaign();
    let e = s.eta(p.counts().valid, p.counts().calls);
    let mut text = dur(e);
    let start = c
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(now))
        .unwrap_or(now);
    if let Some(f) = s.finish_with_quiet(start, e) {
        let wall = Duration::from_secs(start.duration_until(f).as_secs().max(0) as u64);
        if wall.as_secs() != e.as_secs_f64().ceil() as u64 {
            text.push_str(&format!(" ({} with quiet hours)", dur(wall)));
        }
    }
    text
}

/// The whole audience guard that decides a run, named as the campaign writes it, so a change to
/// any part shows: `guard.max_recipients`, `guard.max_invalid_ratio` (its default marked) and
/// `audience.allow_empty`.
fn guard(c: &Campaign) -> String {
    let max = c
        .guard_max_recipients
        .map(|m| m.to_string())
        .unwrap_or_else(|| "none".to_string());
    let ratio = match c.guard_max_invalid_ratio {
        Some(r) => r.to_string(),
        None => format!("{} (default)", crate::guard::DEFAULT_MAX_INVALID_RATIO),
    };
    format!(
        "max_recipients {max}, max_invalid_ratio {ratio}, audience.allow_empty {}",
        c.audience.allow_empty
    )
}

fn values((p, s): (&Plan, &Settings), now: jiff::Timestamp) -> Vec<(&'static str, String)> {
    let c = p.campaign();
    let n = p.counts();
    let b = s.breaker;
    vec![
        (
            "action",
            format!("{} ({})", c.action.as_str(), c.action.api_name()),
        ),
        ("app_id", c.app_id.to_string()),
        ("endpoint", c.endpoint.to_string()),
        ("sender", c.sender.to_string()),
        ("msg_type", c.message.msg_type.to_string()),
        ("options", options(c)),
        (
            "calls",
            format!(
                "{} ({})",
                n.calls,
                crate::output::count(n.messages, "message", "messages")
            ),
        ),
        ("throttle", s.describe_pace()),
        ("eta", eta(p, s, now)),
        (
            "deadline",
            match s.deadline {
                None => "none".to_string(),
                Some(Deadline::At(t)) => t.to_string(),
                Some(Deadline::After(d)) => format!("{} after the start", window(d)),
            },
        ),
        ("guard", guard(c)),
        (
            "retry",
            format!("at most {} attempts a call", s.retry_max_attempts),
        ),
        (
            "breaker",
            format!(
                "stop after {} failed calls in a row, or over {}% failed receivers in the last {} calls",
                b.consecutive_failures,
                b.max_failure_ratio * 100.0,
                b.window_calls
            ),
        ),
        (
            "schedule",
            match &c.schedule {
                None => "manual (no schedule)".to_string(),
                Some(s) => format!(
                    "{}, not after {}, overlap {}",
                    s.describe(),
                    window(s.not_after()),
                    s.overlap().as_str()
                ),
            },
        ),
        (
            "quiet_hours",
            c.quiet_hours
                .as_ref()
                .map(|q| q.describe())
                .unwrap_or_else(|| "none".to_string()),
        ),
    ]
}

/// Every setting of both sides, in a fixed order.
pub(super) fn compare(
    before: Option<(&Plan, &Settings)>,
    after: Option<(&Plan, &Settings)>,
    now: jiff::Timestamp,
) -> Vec<Setting> {
    let b = before.map(|p| values(p, now));
    let a = after.map(|p| values(p, now));
    let names: Vec<&'static str> = a
        .as_ref()
        .or(b.as_ref())
        .map(|v| v.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let bv = b.as_ref().and_then(|v| v.get(i)).map(|(_, s)| s.clone());
            let av = a.as_ref().and_then(|v| v.get(i)).map(|(_, s)| s.clone());
            Setting {
                name: name.to_string(),
                changed: bv != av,
                before: bv,
                after: av,
            }
        })
        .collect()
}

fn occurrences(p: Option<&Plan>, now: jiff::Timestamp) -> Vec<Occurrence> {
    let Some(s) = p.and_then(|p| p.campaign().schedule.as_ref()) else {
        return Vec::new();
    };
    s.upcoming(now, OCCURRENCES)
        .into_iter()
        .map(|t| Occurrence {
            utc: t.to_string(),
            local: format!("{} ({})", s.local(t), s.timezone_name()),
        })
        .collect()
}

/// The next occurrences on both sides, counted from `now`.
pub(super) fn schedule(
    before: Option<&Plan>,
    after: Option<&Plan>,
    now: jiff::Timestamp,
) -> ScheduleDiff {
    let b = occurrences(before, now);
    let a = occurrences(after, now);
    ScheduleDiff {
        from: now.to_string(),
        changed: b != a,
        before: b,
        after: a,
    }
}

/// The deadline warning `imcast plan` shows, for the work tree's plan.
pub(super) fn deadline_warning(p: &Plan, s: &Settings, now: jiff::Timestamp) -> Option<String> {
    s.deadline_warning(now, s.eta(p.counts().valid, p.counts().calls))
}
