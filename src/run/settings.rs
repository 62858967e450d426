//! Settings resolution: the campaign (what its file says, `None` where it says nothing), the
//! account (`imcast.toml`, [`AccountConfig`]) and the run's flags become the one [`Settings`]
//! value a run uses, in [`Settings::resolve`] — ripgrep's low-args → high-args step.
//!
//! Owns: every precedence and default of a run's settings — campaign over `imcast.toml` over the
//! documented default (field by field for the breaker), `--report-format` over
//! `[report] formats`, what a `--test-to` run drops (deadline, guard) — the limits a run is paced
//! by, where the account limiter's log lives (`[state] url`, else the state directory), the one
//! ETA ([`Settings::eta`]) that `plan`, `plan --diff` and `run`'s confirmation show,
//! the warning when a campaign's throttle asks for more than the share
//! ([`Settings::throttle_warning`]), and the audience guard a run applies (none for `--test-to`).
//!
//! Invariants: `limit` never exceeds the account's share (a campaign's `throttle:` lowers it,
//! never raises it); the ETA uses the pace the limiter really applies (the lower rate of the
//! account's share and the campaign's throttle); `retry_max_attempts` ≥ 1.
//! Must not: read files, the clock or the environment (callers pass what they loaded), or print.

use std::time::Duration;

use jiff::Timestamp;

use crate::action::Action;
use crate::config::{AccountConfig, BreakerSettings, Limit, ReportFormats, StateStore};
use crate::guard::AudienceGuard;
use crate::journal::RunFlags;
use crate::pg::PgUrl;
use crate::schedule::QuietHours;
use crate::spec::{Campaign, Deadline};

/// Attempts per call when the campaign has no `retry:` (the first attempt counts).
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u32 = 3;

/// Where the limit a run is paced by comes from (for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The campaign's `throttle:`, lower than the account's share.
    Campaign,
    /// The account's share as `imcast.toml` sets it (its limit for the action, its reserve).
    Account,
    /// The action's documented limit (no `imcast.toml` limit or reserve, no lower throttle).
    Default,
}

impl LimitSource {
    /// What follows the limit when it is shown ("" for the campaign's own throttle).
    pub fn note(self) -> &'static str {
        match self {
            LimitSource::Campaign => "",
            LimitSource::Account => " (the account's share in imcast.toml)",
            LimitSource::Default => " (the action's documented limit)",
        }
    }
}

/// The settings one run uses, resolved once (see the module doc).
#[derive(Debug, Clone)]
pub struct Settings {
    pub action: Action,
    /// The account's share for the action: `imcast.toml`'s limit (else the documented one) ×
    /// (1 − reserve). Every run of the account shares it (the limiter's key is the action).
    pub account_limit: Limit,
    /// The campaign's `throttle:` as written, when it lowers the account's share: a second
    /// limiter on the campaign's own key.
    pub campaign_limit: Option<Limit>,
    /// The campaign's `throttle:` as written, whether or not it lowers the share.
    pub campaign_throttle: Option<Limit>,
    /// The most this run can use, in the account's window (recorded in the journal, shown in the
    /// confirmation and the report).
    pub limit: Limit,
    /// The limit the limiter paces this run by (the lower rate of `account_limit` and
    /// `campaign_limit`), as written by its source.
    pub pace: Limit,
    pub pace_source: LimitSource,
    /// The request-rate cap (only where the limit counts receivers).
    pub max_requests_per_second: Option<u32>,
    pub max_in_flight: usize,
    /// Attempts per call, ≥ 1.
    pub retry_max_attempts: u32,
    pub breaker: BreakerSettings,
    pub deadline: Option<Deadline>,
    pub guard_max_recipients: Option<u64>,
    /// The audience guard (`guard.*`, `audience.allow_empty`); None for a `--test-to` run.
    pub guard: Option<AudienceGuard>,
    pub quiet_hours: Option<QuietHours>,
    /// The per-recipient report files.
    pub report_formats: ReportFormats,
    /// The flags the run was started with (recorded in the journal's audit).
    pub flags: RunFlags,
    /// `[state] url`: the PostgreSQL database the account limiter's log lives in, shared by every
    /// process and host of the account (None: `throttle.db` in the state directory).
    pub state_url: Option<PgUrl>,
    /// `[state] lease_heartbeat`/`lease_expiry`: how often the run renews its lease and how long
    /// the lease lasts without renewal.
    pub lease: crate::config::LeaseTimes,
}

impl Settings {
    /// The one resolution step: campaign + `imcast.toml` + flags (`report_formats` is
    /// `--report-format`, None when not given).
    pub fn resolve(
        c: &Campaign,
        account: &AccountConfig,
        flags: &RunFlags,
        report_formats: Option<ReportFormats>,
    ) -> Settings {
        let action = c.action;
        let account_limit = account.effective_limit(action, None);
        let limit = account.effective_limit(action, c.throttle);
        // The campaign's own limiter only where its throttle lowers the account's share.
        let campaign_limit = c.throttle.filter(|_| limit != account_limit);
        // The pace: the lower rate, shown as its source writes it (a tie shows the throttle).
        let (pace, pace_source) = match c.throttle {
            Some(t) if t.per_second() <= account_limit.per_second() => (t, LimitSource::Campaign),
            _ => {
                let (l, w) = action.default_limit();
                let source = if account_limit == Limit::new(l, w) {
                    LimitSource::Default
                } else {
                    LimitSource::Account
                };
                (account_limit, source)
            }
        };
        let is_test = !flags.test_to.is_empty();
        Settings {
            action,
            account_limit,
            campaign_limit,
            campaign_throttle: c.throttle,
            limit,
            pace,
            pace_source,
            max_requests_per_second: account.max_requests_per_second_for(action),
            max_in_flight: account.max_in_flight_for(action),
            retry_max_attempts: c
                .retry_max_attempts
                .unwrap_or(DEFAULT_RETRY_MAX_ATTEMPTS)
                .max(1),
            breaker: c.breaker.or(account.breaker).or_default(),
            // A test run sends to a few ids now: no deadline, and the guard is for the audience.
            deadline: c.deadline.filter(|_| !is_test),
            guard_max_recipients: c.guard_max_recipients.filter(|_| !is_test),
            guard: (!is_test).then(|| AudienceGuard::of(c)),
            quiet_hours: c.quiet_hours.clone(),
            report_formats: report_formats.unwrap_or(account.report_formats),
            flags: flags.clone(),
            state_url: account.state_url.clone(),
            lease: account.lease,
        }
    }

    /// Where the account limiter's log lives for a run whose state directory is `state_dir`.
    pub fn limiter_store(&self, state_dir: &std::path::Path) -> StateStore {
        match &self.state_url {
            Some(u) => StateStore::Postgres(u.clone()),
            None => StateStore::Sqlite(state_dir.to_path_buf()),
        }
    }

    /// A `--test-to` run (to the listed ids only; the campaign's run is not touched).
    pub fn is_test(&self) -> bool {
        !self.flags.test_to.is_empty()
    }

    /// A warning when the campaign's `throttle:` asks for more than the account's share: the run
    /// is paced by the share (as [`Settings::eta`] is), never by the throttle.
    pub fn throttle_warning(&self) -> Option<String> {
        let t = self.campaign_throttle?;
        (t.per_second() > self.account_limit.per_second()).then(|| {
            format!(
                "throttle {} is above the account's limit {}{}: the run is paced at {} (a campaign's throttle lowers the account's share, never raises it)",
                t.describe(),
                self.account_limit.describe(),
                self.pace_source.note(),
                self.pace.describe()
            )
        })
    }

    /// The pace for people: `1000 per 5s`, with where it comes from.
    pub fn describe_pace(&self) -> String {
        format!("{}{}", self.pace.describe(), self.pace_source.note())
    }

    /// Estimated sending time for `recipients` in `calls` calls at this run's pace, pacing
    /// smoothly (units / limit × window); quiet hours are not in it (see
    /// [`Settings::finish_with_quiet`]).
    pub fn eta(&self, recipients: u64, calls: u64) -> Duration {
        let units = self.action.total_units(recipients, calls);
        let l = self.pace;
        if units == 0 || l.limit == 0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(l.window.as_secs_f64() * units as f64 / l.limit as f64)
    }

    /// When sending `eta` worth of work started at `start` ends, given the quiet hours (no calls
    /// start inside them; a run pauses there and continues when they end). None without quiet
    /// hours.
    pub fn finish_with_quiet(&self, start: Timestamp, eta: Duration) -> Option<Timestamp> {
        self.quiet_hours.as_ref().map(|q| q.finish_time(start, eta))
    }

    /// A warning when sending `eta` worth of work started at `now` would run past the deadline
    /// (quiet hours stretch the run: the check uses the wall-clock duration).
    pub fn deadline_warning(&self, now: Timestamp, eta: Duration) -> Option<String> {
        let wall = self
            .finish_with_quiet(now, eta)
            .map(|f| Duration::from_secs(now.duration_until(f).as_secs().max(0) as u64))
            .unwrap_or(eta);
        let fmt =
            |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
        match self.deadline? {
            Deadline::After(d) => (wall > d).then(|| {
                format!(
                    "the estimated duration {} is longer than the deadline of {} after start: recipients still pending then become `expired`",
                    fmt(wall),
                    fmt(d)
                )
            }),
            Deadline::At(t) if t <= now => Some(format!(
                "the deadline {t} has already passed: every recipient would be `expired`"
            )),
            Deadline::At(t) => {
                let end = now
                    .checked_add(jiff::SignedDuration::try_from(wall).ok()?)
                    .ok()?;
                (end > t).then(|| {
                    format!(
                        "started now, sending would end around {end}, after the deadline {t}: recipients still pending then become `expired`"
                    )
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerFields;
    use std::path::{Path, PathBuf};

    fn campaign(dir: &Path, extra: &str) -> Campaign {
        let text = format!(
            "version: 1\nname: c\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\nsender: 1\naudience: {{ ids: [1] }}\nmessage: {{ type: text, text: hi }}\n{extra}"
        );
        crate::spec::parse_str(
            &text,
            dir.join("c.yaml"),
            PathBuf::from(dir),
            &crate::spec::LoadOptions::default(),
        )
        .unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn account(text: &str) -> AccountConfig {
        AccountConfig::parse(text, Path::new("/repo/imcast.toml")).expect("imcast.toml")
    }

    #[test]
    fn breaker_comes_from_the_campaign_then_imcast_toml_then_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = RunFlags::default();
        let none = campaign(dir.path(), "");
        // Neither: the documented default.
        let s = Settings::resolve(&none, &AccountConfig::default(), &flags, None);
        assert_eq!(s.breaker, BreakerSettings::default());
        assert_eq!(
            (s.breaker.consecutive_failures, s.breaker.window_calls),
            (5, 50)
        );
        // imcast.toml's [breaker] for a campaign without `breaker:`.
        let acct = account("[breaker]\nconsecutive_failures = 9\nmax_failure_ratio = 0.2\n");
        let s = Settings::resolve(&none, &acct, &flags, None);
        assert_eq!(
            s.breaker,
            BreakerSettings {
                consecutive_failures: 9,
                window_calls: 50,
                max_failure_ratio: 0.2,
            }
        );
        // The campaign's fields win, field by field.
        let some = campaign(dir.path(), "breaker: { consecutive_failures: 2 }\n");
        assert_eq!(
            some.breaker,
            BreakerFields {
                consecutive_failures: Some(2),
                ..BreakerFields::default()
            }
        );
        let s = Settings::resolve(&some, &acct, &flags, None);
        assert_eq!(
            s.breaker,
            BreakerSettings {
                consecutive_failures: 2,
                window_calls: 50,
                max_failure_ratio: 0.2,
            }
        );
    }

    #[test]
    fn the_pace_is_the_lower_of_the_throttle_and_the_accounts_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = RunFlags::default();
        let none = campaign(dir.path(), "");
        let s = Settings::resolve(&none, &AccountConfig::default(), &flags, None);
        assert_eq!(s.pace, Limit::new(12_000, Duration::from_secs(60)));
        assert_eq!(s.pace_source, LimitSource::Default);
        assert_eq!(s.campaign_limit, None);
        // 12,000 receivers at 12,000 a minute.
        assert_eq!(s.eta(12_000, 24), Duration::from_secs(60));

        // A throttle below the share paces the run, as written.
        let low = campaign(dir.path(), "throttle: { limit: 10, window: 1s }\n");
        let s = Settings::resolve(&low, &AccountConfig::default(), &flags, None);
        assert_eq!(s.pace, Limit::new(10, Duration::from_secs(1)));
        assert_eq!(s.pace_source, LimitSource::Campaign);
        assert_eq!(s.limit, Limit::new(600, Duration::from_secs(60)));
        assert_eq!(s.eta(600, 2), Duration::from_secs(60));

        // A throttle above the account's share does not raise it: the share paces the run (the
        // ETA used to be computed from the throttle alone).
        let high = campaign(dir.path(), "throttle: { limit: 100000, window: 60s }\n");
        let acct = account("[account]\nreserve = 0.5\n");
        let s = Settings::resolve(&high, &acct, &flags, None);
        assert_eq!(s.campaign_limit, None);
        assert_eq!(s.pace, Limit::new(6_000, Duration::from_secs(60)));
        assert_eq!(s.pace_source, LimitSource::Account);
        assert_eq!(s.eta(6_000, 12), Duration::from_secs(60));
        assert_eq!(
            s.describe_pace(),
            "6000 per 1m (the account's share in imcast.toml)"
        );
    }

    #[test]
    fn flags_and_formats_resolve_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = campaign(
            dir.path(),
            "deadline: 2h\nguard: { max_recipients: 5 }\nretry: { max_attempts: 4 }\n",
        );
        let acct = account("[report]\nformats = [\"jsonl\"]\n");
        let s = Settings::resolve(&c, &acct, &RunFlags::default(), None);
        assert_eq!(s.retry_max_attempts, 4);
        assert!(s.deadline.is_some() && s.guard_max_recipients == Some(5));
        assert_eq!(s.report_formats.names(), ["jsonl"]);
        assert_eq!(s.max_in_flight, acct.max_batch_in_flight);
        assert_eq!(
            s.max_requests_per_second,
            Some(acct.max_requests_per_second)
        );
        // --report-format wins; a test run drops the deadline and the guard.
        let test = RunFlags {
            test_to: vec![7],
            ..RunFlags::default()
        };
        let formats = ReportFormats {
            csv: true,
            jsonl: false,
        };
        let s = Settings::resolve(&c, &acct, &test, Some(formats));
        assert!(s.is_test());
        assert_eq!(s.report_formats, formats);
        assert!(s.deadline.is_none() && s.guard_max_recipients.is_none());
        // Without `retry:`, the documented default.
        let plain = campaign(dir.path(), "");
        let s = Settings::resolve(&plain, &acct, &RunFlags::default(), None);
        assert_eq!(s.retry_max_attempts, DEFAULT_RETRY_MAX_ATTEMPTS);
    }
}
