//! Warnings during a run: what a person watching should know before the totals at the end —
//! the provider rate-limiting us (429), server errors (5xx), outcomes imcast cannot know
//! (`unknown`), and the failure breaker nearing its threshold.
//!
//! [`WarnGate`] lets through at most one line per kind per [`WARN_EVERY`] (10 s) of the injected
//! clock; what it held back is counted and said in the next line of that kind, so nothing is
//! hidden, only folded. The engine feeds it and hands each line to the caller's [`WarnFn`] (the
//! CLI prints it on stderr; without one it goes to `tracing`). Must not: read the system clock or
//! print.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

/// At most one line per kind this often (clock time).
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarnKind {
    /// The provider answered 429 (or a rate-limit code): the limiter backs off and retries.
    RateLimited,
    /// HTTP 5xx: retried while attempts last.
    ServerError,
    /// A call's outcome is unknown: its recipients are `unknown` and not resent.
    Unknown,
    /// The failure breaker is half way or more to pausing the run.
    BreakerNear,
}

impl WarnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WarnKind::RateLimited => "rate limited (429)",
            WarnKind::ServerError => "server error (5xx)",
            WarnKind::Unknown => "unknown outcome",
            WarnKind::BreakerNear => "failure breaker near",
        }
    }
}

/// One warning line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub kind: WarnKind,
    /// What happened this time.
    pub message: String,
    /// Warnings of this kind held back since the last line.
    pub held_back: u64,
    /// The line at the end of a session that only says what was held back since the last one
    /// (see [`WarnGate::drain`]).
    pub closing: bool,
}

impl Warning {
    /// The line people read: `warning: rate limited (429): … (3 more since the last one)`.
    pub fn line(&self) -> String {
        if self.closing {
            return format!(
                "warning: {}: {} more since the last warning of this kind, until the run stopped",
                self.kind.as_str(),
                self.held_back
            );
        }
        let more = if self.held_back > 0 {
            format!(
                " ({} more since the last warning of this kind)",
                self.held_back
            )
        } else {
            String::new()
        };
        format!("warning: {}: {}{more}", self.kind.as_str(), self.message)
    }
}

/// Receives the warnings let through.
pub type WarnFn = Arc<dyn Fn(&Warning) + Send + Sync>;

/// One line per kind per [`WARN_EVERY`]; the rest counted.
#[derive(Debug, Default)]
pub struct WarnGate {
    /// Per kind: when its last line went out, and how many were held back since.
    last: BTreeMap<WarnKind, (Timestamp, u64)>,
}

impl WarnGate {
    /// A warning of `kind` happened at `now`: the line to show, if one is due.
    pub fn note(&mut self, kind: WarnKind, now: Timestamp, message: String) -> Option<Warning> {
        let every = jiff::SignedDuration::try_from(WARN_EVERY).unwrap_or_default();
        match self.last.get_mut(&kind) {
            Some((at, held)) if now < at.saturating_add(every).unwrap_or(*at) => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let w = Warning {
                    kind,
                    message,
                    held_back: *held,
                    closing: false,
                };
                *at = now;
                *held = 0;
                Some(w)
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(Warning {
                    kind,
                    message,
                    held_back: 0,
                    closing: false,
                })
            }
        }
    }
}

impl WarnGate {
    /// The end of a session: one closing line per kind with warnings held back since its last
    /// line (so every warning is either a line or counted in one).
    pub fn drain(&mut self) -> Vec<Warning> {
        let out = self
            .last
            .iter()
            .filter(|(_, (_, held))| *held > 0)
            .map(|(kind, (_, held))| Warning {
                kind: *kind,
                message: String::new(),
                held_back: *held,
                closing: true,
            })
            .collect();
        for (_, held) in self.last.values_mut() {
            *held = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_ten_seconds_and_the_rest_counted() {
        let t0: Timestamp = "2026-11-30T12:00:00Z".parse().expect("time");
        let at = |ms: i64| t0 + jiff::SignedDuration::from_millis(ms);
        let mut g = WarnGate::default();
        let first = g.note(WarnKind::RateLimited, at(0), "a".into());
        assert_eq!(first.map(|w| w.held_back), Some(0));
        // Other kinds have their own budget.
        assert!(g.note(WarnKind::ServerError, at(1), "b".into()).is_some());
        for ms in [1, 500, 9_999] {
            assert!(g.note(WarnKind::RateLimited, at(ms), "x".into()).is_none());
        }
        let w = g
            .note(WarnKind::RateLimited, at(10_000), "c".into())
            .expect("due after 10 s");
        assert_eq!(w.held_back, 3);
        assert_eq!(
            w.line(),
            "warning: rate limited (429): c (3 more since the last warning of this kind)"
        );
        // The next window starts at that line.
        assert!(g
            .note(WarnKind::RateLimited, at(19_999), "d".into())
            .is_none());
        let w = g
            .note(WarnKind::RateLimited, at(20_000), "e".into())
            .expect("due");
        assert_eq!(w.held_back, 1);
        assert!(g
            .note(WarnKind::RateLimited, at(20_001), "f".into())
            .is_none());
        assert!(g
            .note(WarnKind::RateLimited, at(20_002), "g".into())
            .is_none());
        let end = g.drain();
        assert_eq!(end.len(), 1, "only kinds with something held back");
        assert_eq!(
            end[0].line(),
            "warning: rate limited (429): 2 more since the last warning of this kind, until the run stopped"
        );
        assert!(g.drain().is_empty());
    }
}
