//! Schedules: when a campaign fires (`at` or `cron` in an IANA time zone), how late it may fire,
//! what happens on overlap, and quiet hours in which no call may start.
//!
//! Owns: parsing and validating `schedule:` (errors name the field, e.g. `schedule.cron: ...`, and
//! carry the value's line and column in the campaign file, see [`Located`]; a cron error says which
//! of its fields is wrong), computing occurrences, and quiet-hour arithmetic. Invariants: every occurrence is a UTC
//! instant with whole seconds (the daemon keys its bookkeeping by it); occurrences are strictly
//! increasing; a `cron` is always evaluated in its required IANA zone, with the daylight-saving
//! rules of the Open Cron Pattern Specification as implemented by croner (checked by the tests
//! below): a fixed wall-clock time that does not exist on a spring-forward day fires once at the
//! first valid instant after the gap, one that occurs twice on a fall-back day fires once (the
//! first), and an interval expression (e.g. hourly) fires every real hour. Must not: read the
//! clock (callers pass instants in), touch the state database, or decide what is sent.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;

/// Where a value is in the campaign file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

/// A string value of `schedule:` with where it was written, so an error can point at it. Built
/// from text (`"0 9 * * *".into()`) it has no place (tests, callers without a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub value: String,
    pub at: Option<Loc>,
}

impl From<&str> for Located {
    fn from(s: &str) -> Located {
        Located {
            value: s.to_string(),
            at: None,
        }
    }
}

impl std::ops::Deref for Located {
    type Target = str;
    fn deref(&self) -> &str {
        &self.value
    }
}

impl<'de> Deserialize<'de> for Located {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Located, D::Error> {
        let s = serde_saphyr::Spanned::<String>::deserialize(d)?;
        let l = s.referenced;
        Ok(Located {
            value: s.value,
            at: (l.line() > 0).then(|| Loc {
                line: l.line(),
                column: l.column(),
            }),
        })
    }
}

/// `schedule:` as written in the campaign file.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// One occurrence: an RFC 3339 time with offset, e.g. 2026-03-01T09:00:00+08:00.
    #[schemars(with = "Option<String>")]
    pub at: Option<Located>,
    /// A cron expression (5 or 6 fields; 0 and 7 are Sunday), evaluated in `timezone`.
    #[schemars(with = "Option<String>")]
    pub cron: Option<Located>,
    /// IANA time zone for `cron` (required with it), e.g. Asia/Shanghai.
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Located>,
    /// How late a missed occurrence may still fire (default 1h).
    #[schemars(with = "Option<String>")]
    pub not_after: Option<Located>,
    /// What to do when an occurrence is due while the previous run is still going.
    pub overlap: Option<Overlap>,
    /// Times of day in which no call starts.
    pub quiet_hours: Option<RawQuietHours>,
    /// Deliver at this wall-clock time ("HH:MM") in each recipient's own zone
    /// (`audience.timezone_column`): the run becomes one wave per distinct local instant.
    #[schemars(with = "Option<String>")]
    pub local_time: Option<Located>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    #[default]
    Skip,
    Queue,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuietHours {
    /// Start, local wall-clock time "HH:MM".
    #[schemars(with = "String")]
    pub from: Located,
    /// End, local wall-clock time "HH:MM" (may be earlier than `from`: spans midnight).
    #[schemars(with = "String")]
    pub to: Located,
    /// IANA time zone the times are in, or `recipient`: each recipient's own zone (with
    /// `schedule.local_time`; each wave keeps the quiet hours of its zones).
    #[schemars(with = "String")]
    pub timezone: Located,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A problem with one field; Display reads `schedule.cron: ...` (the location is apart, for
    /// the caller to print as `file:line:column`).
    #[error("schedule.{field}: {message}")]
    Field {
        field: &'static str,
        message: String,
        /// Where the value (or, for a missing key, the key beside it) is written, when known.
        at: Option<Loc>,
    },
}

impl ScheduleError {
    /// Where in the campaign file the problem is, when known.
    pub fn location(&self) -> Option<Loc> {
        match self {
            ScheduleError::Field { at, .. } => *at,
        }
    }
}

/// A problem with `schedule.{field}`, at `value`'s place in the file.
fn err_at(field: &'static str, value: &Located, message: impl Into<String>) -> ScheduleError {
    ScheduleError::Field {
        field,
        message: message.into(),
        at: value.at,
    }
}

/// The default lateness cutoff: one hour.
pub const DEFAULT_NOT_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
enum Kind {
    At(Timestamp),
    Cron { cron: Box<Cron>, expr: String },
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: TimeZone,
    tz_name: String,
    not_after: Duration,
    overlap: Overlap,
}

fn parse_tz(field: &'static str, name: &Located) -> Result<TimeZone, ScheduleError> {
    let n = name.trim();
    if n.is_empty() {
        return Err(err_at(
            field,
            name,
            "empty; write an IANA time zone such as Asia/Shanghai",
        ));
    }
    TimeZone::get(n).map_err(|_| {
        err_at(
            field,
            name,
            format!("unknown time zone {n:?}; write an IANA name such as Asia/Shanghai, Europe/Berlin or UTC"),
        )
    })
}

/// The names and ranges of a cron expression's fields, for 5 or 6 fields.
fn cron_fields(count: usize) -> &'static [(&'static str, &'static str)] {
    const SIX: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31"),
        ("month", "1-12 or JAN-DEC"),
        ("day-of-week", "0-7 or SUN-SAT; 0 and 7 are Sunday"),
    ];
    if count == 6 {
        &SIX
    } else {
        &SIX[1..]
    }
}

fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Which fields of a cron expression that does not parse are wrong: each field is tried alone,
/// with every other field `*`. Empty when no single field is at fault (or for `@daily` and the
/// like).
fn wrong_cron_fields(expr: &str) -> Vec<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Vec::new();
    }
    let names = cron_fields(fields.len());
    let parser = cron_parser();
    let mut wrong = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if j == i { *f } else { "*" })
            .collect();
        if parser.parse(&alone.join(" ")).is_err() {
            let (name, range) = names[i];
            wrong.push(format!(
                "field {} ({name}) {f:?} is wrong ({name} takes {range})",
                i + 1
            ));
        }
    }
    wrong
}

/// Parse a cron expression the way imcast accepts it: 5 fields (minute precision) or 6 (with
/// seconds first); no year field; 0 and 7 are both Sunday.
fn parse_cron(value: &Located) -> Result<Cron, ScheduleError> {
    let expr = value.trim();
    let fields = expr.split_whitespace().count();
    let nickname = expr.starts_with('@');
    if !nickname && !(5..=6).contains(&fields) {
        return Err(err_at(
            "cron",
            value,
            format!(
                "{expr:?} has {fields} field{}; write 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)",
                if fields == 1 { "" } else { "s" }
            ),
        ));
    }
    cron_parser().parse(expr).map_err(|e| {
        let wrong = wrong_cron_fields(expr);
        let why = if wrong.is_empty() {
            e.to_string()
        } else {
            wrong.join("; ")
        };
        err_at(
            "cron",
            value,
            format!("{expr:?} is not a valid cron expression: {why}"),
        )
    })
}

/// `not_after` of a raw schedule ([`DEFAULT_NOT_AFTER`] when absent): how late an occurrence, or a
/// local-time wave, may still start. Read on its own too, for a schedule that names only
/// `local_time` (no `at`/`cron`: no [`Schedule`]).
pub fn parse_not_after(raw: &RawSchedule) -> Result<Duration, ScheduleError> {
    match &raw.not_after {
        None => Ok(DEFAULT_NOT_AFTER),
        Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
            err_at(
                "not_after",
                s,
                format!(
                    "{:?} is not a duration ({e}); write e.g. 30m, 1h or 2h30m",
                    s.value
                ),
            )
        }),
    }
}

impl Schedule {
    /// Validate a raw schedule. `Ok(None)` when it names no occurrence (`at`/`cron` both absent).
    pub fn from_raw(raw: &RawSchedule) -> Result<Option<Schedule>, ScheduleError> {
        let not_after = parse_not_after(raw)?;
        let overlap = raw.overlap.unwrap_or_default();
        let tz = match &raw.timezone {
            Some(name) => Some((parse_tz("timezone", name)?, name.trim().to_string())),
            None => None,
        };
        let (kind, tz, tz_name) = match (&raw.at, &raw.cron) {
            (None, None) => return Ok(None),
            (Some(_), Some(cron)) => {
                return Err(err_at(
                    "cron",
                    cron,
                    "both `at` and `cron` are set; a schedule is one time (`at`) or a recurring `cron`, not both",
                ))
            }
            (Some(at_value), None) => {
                let at = at_value.trim();
                let ts: Timestamp = at.parse().map_err(|_| {
                    err_at(
                        "at",
                        at_value,
                        format!(
                            "{at:?} is not an RFC 3339 time with an offset; write e.g. 2026-03-01T09:00:00+08:00 (or ...Z for UTC)"
                        ),
                    )
                })?;
                let ts = Timestamp::from_second(ts.as_second())
                    .map_err(|e| err_at("at", at_value, e.to_string()))?;
                let (tz, name) = match tz {
                    Some(t) => t,
                    None => {
                        let off = ts_offset(at);
                        (TimeZone::fixed(off), off.to_string())
                    }
                };
                (Kind::At(ts), tz, name)
            }
            (None, Some(expr)) => {
                let cron = parse_cron(expr)?;
                let Some((tz, name)) = tz else {
                    return Err(err_at(
                        "timezone",
                        expr,
                        "required with `cron`: the IANA time zone the expression is read in, e.g. Asia/Shanghai",
                    ));
                };
                // A pattern like "0 0 30 2 *" (30 February) parses but never fires: say so now.
                let reference = Timestamp::UNIX_EPOCH.to_zoned(tz.clone());
                if cron.find_next_occurrence(&reference, false).is_err() {
                    return Err(err_at(
                        "cron",
                        expr,
                        format!("{:?} never matches a real date and time; check the day of month and month", expr.trim()),
                    ));
                }
                (
                    Kind::Cron {
                        cron: Box::new(cron),
                        expr: expr.trim().to_string(),
                    },
                    tz,
                    name,
                )
            }
        };
        Ok(Some(Schedule {
            kind,
            tz,
            tz_name,
            not_after,
            overlap,
        }))
    }

    /// The first occurrence strictly after `t`, if any.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::At(at) => (*at > t).then_some(*at),
            Kind::Cron { cron, .. } => {
                let z = t.to_zoned(self.tz.clone());
                let next = cron.find_next_occurrence(&z, false).ok()?;
                Some(next.timestamp())
            }
        }
    }

    /// Occurrences in `(after, until]`, oldest first, at most `limit` of them.
    pub fn occurrences_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= until && n > t => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The next `n` occurrences strictly after `t`.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        self.occurrences_between(t, Timestamp::MAX, n)
    }

    /// How late a missed occurrence may still fire.
    pub fn not_after(&self) -> Duration {
        self.not_after
    }

    /// The one lateness rule: an occurrence due at `due` that the daemon reaches at `now` is
    /// skipped when that is later than `not_after` (the daemon and `plan` both ask here).
    pub fn is_late(&self, due: Timestamp, now: Timestamp) -> bool {
        now.duration_since(due).as_secs_f64() > self.not_after.as_secs_f64()
    }

    /// An `at:` schedule whose time is not after `now`: that time (None for cron, or a future
    /// `at:`).
    pub fn past_at(&self, now: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::At(at) if *at <= now => Some(*at),
            _ => None,
        }
    }

    /// For people, when `at:` is past at `now`: how long ago, and whether the daemon would
    /// still fire it (see [`Schedule::is_late`]).
    pub fn describe_past(&self, now: Timestamp) -> Option<String> {
        let at = self.past_at(now)?;
        let ago = now.duration_since(at).as_secs().max(0) as u64;
        // Coarse: minutes within a day, then days.
        let ago = if ago >= 86_400 {
            crate::output::count(ago / 86_400, "day", "days")
        } else {
            humantime::format_duration(Duration::from_secs(ago.max(60) / 60 * 60)).to_string()
        };
        let not_after = humantime::format_duration(self.not_after);
        let head = format!("at {at} ({}) is past ({ago} ago)", self.local(at));
        Some(if self.is_late(at, now) {
            format!(
                "{head}, later than not_after {not_after}: the daemon will not fire it. Send it by hand with `imcast run`, or move `at:`"
            )
        } else {
            let until = jiff::SignedDuration::try_from(self.not_after)
                .ok()
                .and_then(|d| at.checked_add(d).ok())
                .map(|t| t.to_string())
                .unwrap_or_default();
            format!(
                "{head}, within not_after {not_after}: a daemon that gets to it by {until} still fires it (once: unless it already has)"
            )
        })
    }

    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// The zone occurrences are shown in: the `cron` zone, or `at`'s own offset (or `timezone`).
    pub fn timezone(&self) -> Option<&TimeZone> {
        Some(&self.tz)
    }

    /// The name of [`Schedule::timezone`] (IANA name or a fixed offset like +08:00).
    pub fn timezone_name(&self) -> &str {
        &self.tz_name
    }

    /// One line for people: `cron "0 9 * * *" in Asia/Shanghai` or `at 2026-03-01T01:00:00Z`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::At(at) => format!("at {} ({})", at, self.local(*at)),
            Kind::Cron { expr, .. } => format!("cron \"{expr}\" in {}", self.tz_name),
        }
    }

    /// `t` as wall-clock time in this schedule's zone, e.g. `2026-03-01 09:00:00 +08:00`.
    pub fn local(&self, t: Timestamp) -> String {
        t.to_zoned(self.tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    }
}

/// The offset written in an RFC 3339 string that already parsed as a Timestamp (UTC if unsure).
fn ts_offset(s: &str) -> jiff::tz::Offset {
    jiff::fmt::temporal::Pieces::parse(s)
        .ok()
        .and_then(|p| p.to_numeric_offset())
        .unwrap_or(jiff::tz::Offset::UTC)
}

/// Validated quiet hours: a daily wall-clock interval `[from, to)` in a zone; spans midnight when
/// `to` is earlier than `from`.
#[derive(Debug, Clone)]
pub struct QuietHours {
    from: Time,
    to: Time,
    tz: TimeZone,
    tz_name: String,
    /// `timezone: recipient`: no zone of its own; never quiet until a run binds a wave's zone
    /// ([`QuietHours::in_zone`]).
    recipient: bool,
}

fn parse_hhmm(field: &'static str, value: &Located) -> Result<Time, ScheduleError> {
    let s = value.value.as_str();
    let bad = || {
        err_at(
            field,
            value,
            format!("{s:?} is not a time of day; write HH:MM in 24-hour form, e.g. 22:00"),
        )
    };
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

impl QuietHours {
    pub fn from_raw(raw: &RawQuietHours) -> Result<QuietHours, ScheduleError> {
        let from = parse_hhmm("quiet_hours.from", &raw.from)?;
        let to = parse_hhmm("quiet_hours.to", &raw.to)?;
        if from == to {
            return Err(err_at(
                "quiet_hours.to",
                &raw.to,
                format!(
                    "equals `from` ({}); quiet hours need a start and a different end",
                    raw.from.value
                ),
            ));
        }
        if raw.timezone.trim() == "recipient" {
            return Ok(QuietHours {
                from,
                to,
                tz: TimeZone::UTC,
                tz_name: "recipient".into(),
                recipient: true,
            });
        }
        let tz = parse_tz("quiet_hours.timezone", &raw.timezone)?;
        Ok(QuietHours {
            from,
            to,
            tz,
            tz_name: raw.timezone.trim().to_string(),
            recipient: false,
        })
    }

    /// `timezone: recipient` (see [`QuietHours::in_zone`]).
    pub fn per_recipient(&self) -> bool {
        self.recipient
    }

    /// The same hours in zone `tz` (a wave's recipients' zone).
    pub fn in_zone(&self, tz: TimeZone, name: &str) -> QuietHours {
        QuietHours {
            from: self.from,
            to: self.to,
            tz,
            tz_name: name.to_string(),
            recipient: false,
        }
    }

    fn in_window(&self, lt: Time) -> bool {
        if self.from < self.to {
            self.from <= lt && lt < self.to
        } else {
            lt >= self.from || lt < self.to
        }
    }

    /// Whether no call may start at `t` (never for `timezone: recipient` until bound to a zone).
    pub fn is_quiet(&self, t: Timestamp) -> bool {
        !self.recipient && self.in_window(t.to_zoned(self.tz.clone()).time())
    }

    /// When quiet hours containing `t` end (`t` itself if not quiet).
    pub fn next_open(&self, t: Timestamp) -> Timestamp {
        if !self.is_quiet(t) {
            return t;
        }
        let z = t.to_zoned(self.tz.clone());
        let date = z.date();
        let end_date = if self.from > self.to && z.time() >= self.from {
            date.tomorrow().unwrap_or(date)
        } else {
            date
        };
        let end = self
            .tz
            .to_ambiguous_zoned(end_date.to_datetime(self.to))
            .compatible()
            .map(|z| z.timestamp())
            .unwrap_or(t);
        if end > t {
            end
        } else {
            // Unreachable with a real zone; never return an instant that is still quiet forever.
            t.checked_add(jiff::SignedDuration::from_mins(1))
                .unwrap_or(t)
        }
    }

    /// The next instant at or after `t` at which quiet hours begin (`t` itself if quiet).
    pub fn next_quiet(&self, t: Timestamp) -> Timestamp {
        if self.is_quiet(t) {
            return t;
        }
        let z = t.to_zoned(self.tz.clone());
        let mut date = z.date();
        for _ in 0..3 {
            if self.recipient {
                break;
            }
            if let Ok(start) = self
                .tz
                .to_ambiguous_zoned(date.to_datetime(self.from))
                .compatible()
            {
                if start.timestamp() > t {
                    return start.timestamp();
                }
            }
            date = date.tomorrow().unwrap_or(date);
        }
        Timestamp::MAX
    }

    /// When `work` of sending time, starting at `start`, ends if it may only run outside quiet
    /// hours (for ETAs): the work pauses at each quiet period and continues when it ends.
    pub fn finish_time(&self, start: Timestamp, work: Duration) -> Timestamp {
        let mut t = self.next_open(start);
        let mut left = jiff::SignedDuration::try_from(work).unwrap_or(jiff::SignedDuration::MAX);
        // Bounded: one iteration per day of work.
        for _ in 0..100_000 {
            let quiet = self.next_quiet(t);
            let open = t.duration_until(quiet);
            if left <= open {
                return t.checked_add(left).unwrap_or(Timestamp::MAX);
            }
            left -= open;
            t = self.next_open(quiet);
        }
        Timestamp::MAX
    }

    /// `22:00–07:00 Asia/Shanghai`.
    pub fn describe(&self) -> String {
        format!(
            "{}–{} {}",
            self.from.strftime("%H:%M"),
            self.to.strftime("%H:%M"),
            self.tz_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("test timestamp")
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        Schedule::from_raw(&RawSchedule {
            cron: Some(expr.into()),
            timezone: Some(tz.into()),
            ..Default::default()
        })
        .expect("valid")
        .expect("some")
    }

    fn err(raw: RawSchedule) -> String {
        Schedule::from_raw(&raw)
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn at_requires_offset() {
        let e = err(RawSchedule {
            at: Some("2026-03-01T09:00:00".into()),
            ..Default::default()
        });
        assert!(e.starts_with("schedule.at:"), "{e}");
        assert!(e.contains("offset"), "{e}");
        let s = Schedule::from_raw(&RawSchedule {
            at: Some("2026-03-01T09:00:00+08:00".into()),
            ..Default::default()
        })
        .expect("valid")
        .expect("some");
        assert_eq!(
            s.next_after(ts("2026-02-01T00:00:00Z")),
            Some(ts("2026-03-01T01:00:00Z"))
        );
        assert_eq!(s.next_after(ts("2026-03-01T01:00:00Z")), None);
        assert_eq!(s.timezone_name(), "+08");
        assert!(
            s.describe().contains("2026-03-01 09:00:00 +08:00"),
            "{}",
            s.describe()
        );
    }

    #[test]
    fn cron_requires_timezone_and_valid_fields() {
        let e = err(RawSchedule {
            cron: Some("0 9 * * *".into()),
            ..Default::default()
        });
        assert!(e.starts_with("schedule.timezone: required"), "{e}");
        let e = err(RawSchedule {
            cron: Some("0 9 * * *".into()),
            timezone: Some("Mars/Olympus".into()),
            ..Default::default()
        });
        assert!(e.contains("unknown time zone"), "{e}");
        let e = err(RawSchedule {
            cron: Some("0 9 * *".into()),
            timezone: Some("UTC".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("schedule.cron:") && e.contains("4 fields"),
            "{e}"
        );
        let e = err(RawSchedule {
            cron: Some("0 0 9 * * * 2026".into()),
            timezone: Some("UTC".into()),
            ..Default::default()
        });
        assert!(e.contains("7 fields"), "{e}");
        let e = err(RawSchedule {
            cron: Some("61 9 * * *".into()),
            timezone: Some("UTC".into()),
            ..Default::default()
        });
        assert!(e.starts_with("schedule.cron:"), "{e}");
        let e = err(RawSchedule {
            cron: Some("0 9 * * *".into()),
            at: Some("2026-03-01T09:00:00Z".into()),
            timezone: Some("UTC".into()),
            ..Default::default()
        });
        assert!(e.contains("both"), "{e}");
        let e = err(RawSchedule {
            cron: Some("0 0 30 2 *".into()),
            timezone: Some("UTC".into()),
            ..Default::default()
        });
        assert!(
            e.starts_with("schedule.cron:") && e.contains("never matches"),
            "{e}"
        );
        let e = err(RawSchedule {
            cron: Some("0 9 * * *".into()),
            timezone: Some("UTC".into()),
            not_after: Some("soon".into()),
            ..Default::default()
        });
        assert!(e.starts_with("schedule.not_after:"), "{e}");
    }

    #[test]
    fn defaults_and_none() {
        assert!(Schedule::from_raw(&RawSchedule::default())
            .expect("ok")
            .is_none());
        let s = cron("0 9 * * *", "Asia/Shanghai");
        assert_eq!(s.not_after(), Duration::from_secs(3600));
        assert_eq!(s.overlap(), Overlap::Skip);
        let s = Schedule::from_raw(&RawSchedule {
            cron: Some("*/5 * * * *".into()),
            timezone: Some("UTC".into()),
            not_after: Some("10m".into()),
            overlap: Some(Overlap::Queue),
            ..Default::default()
        })
        .expect("ok")
        .expect("some");
        assert_eq!(s.not_after(), Duration::from_secs(600));
        assert_eq!(s.overlap(), Overlap::Queue);
    }

    #[test]
    fn shanghai_daily_and_six_fields_and_sunday() {
        let s = cron("0 9 * * *", "Asia/Shanghai");
        assert_eq!(
            s.next_after(ts("2026-03-01T00:00:00Z")),
            Some(ts("2026-03-01T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-03-01T01:00:00Z")),
            Some(ts("2026-03-02T01:00:00Z"))
        );
        let s = cron("30 0 9 * * *", "Asia/Shanghai");
        assert_eq!(
            s.next_after(ts("2026-03-01T00:00:00Z")),
            Some(ts("2026-03-01T01:00:30Z"))
        );
        // 2026-03-01 is a Sunday: 0 and 7 both name it.
        for dow in ["0", "7", "SUN"] {
            let s = cron(&format!("0 12 * * {dow}"), "UTC");
            assert_eq!(
                s.next_after(ts("2026-02-26T00:00:00Z")),
                Some(ts("2026-03-01T12:00:00Z")),
                "dow {dow}"
            );
        }
    }

    #[test]
    fn new_york_spring_forward_fixed_time_fires_once_after_gap() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 does not exist.
        let s = cron("30 2 * * *", "America/New_York");
        let occ = s.occurrences_between(ts("2026-03-07T12:00:00Z"), ts("2026-03-09T12:00:00Z"), 10);
        assert_eq!(
            occ,
            vec![
                ts("2026-03-08T07:00:00Z"), // 03:00 EDT, the first valid instant after the gap
                ts("2026-03-09T06:30:00Z"), // 02:30 EDT next day
            ]
        );
    }

    #[test]
    fn new_york_fall_back_fixed_time_fires_once_first() {
        // 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens twice.
        let s = cron("30 1 * * *", "America/New_York");
        let occ = s.occurrences_between(ts("2026-10-31T12:00:00Z"), ts("2026-11-02T12:00:00Z"), 10);
        assert_eq!(
            occ,
            vec![
                ts("2026-11-01T05:30:00Z"), // 01:30 EDT (the first)
                ts("2026-11-02T06:30:00Z"), // 01:30 EST next day
            ]
        );
    }

    #[test]
    fn hourly_fires_every_real_hour_across_dst() {
        // New York fall back: 25 real hours on 2026-11-01, all fire.
        let s = cron("0 * * * *", "America/New_York");
        let day_start = ts("2026-11-01T04:00:00Z"); // 00:00 EDT
        let occ = s.occurrences_between(
            day_start
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .expect("t"),
            ts("2026-11-02T04:59:59Z"),
            100,
        );
        assert_eq!(occ.len(), 25);
        for w in occ.windows(2) {
            assert_eq!(w[1].as_second() - w[0].as_second(), 3600);
        }
        // Berlin spring forward 2026-03-29: 02:00 CET -> 03:00 CEST; 23 real hours, one apart.
        let s = cron("0 * * * *", "Europe/Berlin");
        let occ =
            s.occurrences_between(ts("2026-03-28T22:59:59Z"), ts("2026-03-29T21:59:59Z"), 100);
        assert_eq!(occ.len(), 23);
        for w in occ.windows(2) {
            assert_eq!(w[1].as_second() - w[0].as_second(), 3600);
        }
    }

    #[test]
    fn berlin_spring_and_fall() {
        let s = cron("30 2 * * *", "Europe/Berlin");
        // Spring: 02:30 does not exist on 2026-03-29 -> 03:00 CEST = 01:00Z.
        assert_eq!(
            s.next_after(ts("2026-03-28T23:00:00Z")),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-03-29T01:00:00Z")),
            Some(ts("2026-03-30T00:30:00Z"))
        );
        // Fall: 2026-10-25 03:00 CEST -> 02:00 CET; 02:30 twice, fires at the first (00:30Z).
        let occ = s.occurrences_between(ts("2026-10-24T12:00:00Z"), ts("2026-10-26T12:00:00Z"), 10);
        assert_eq!(
            occ,
            vec![ts("2026-10-25T00:30:00Z"), ts("2026-10-26T01:30:00Z")]
        );
        // Starting inside the second half of the repeated hour does not fire it again.
        assert_eq!(
            s.next_after(ts("2026-10-25T01:10:00Z")),
            Some(ts("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn shanghai_has_no_dst() {
        let s = cron("0 2 * * *", "Asia/Shanghai");
        let occ =
            s.occurrences_between(ts("2026-03-01T00:00:00Z"), ts("2026-12-31T00:00:00Z"), 400);
        assert_eq!(occ.len(), 305);
        assert!(occ.iter().all(|t| t.as_second() % 86400 == 18 * 3600));
    }

    fn qh(from: &str, to: &str, tz: &str) -> QuietHours {
        QuietHours::from_raw(&RawQuietHours {
            from: from.into(),
            to: to.into(),
            timezone: tz.into(),
        })
        .expect("valid quiet hours")
    }

    #[test]
    fn quiet_hours_across_midnight() {
        let q = qh("22:00", "07:00", "Asia/Shanghai");
        assert!(!q.is_quiet(ts("2026-03-01T13:59:59Z"))); // 21:59:59 local
        assert!(q.is_quiet(ts("2026-03-01T14:00:00Z"))); // 22:00
        assert!(q.is_quiet(ts("2026-03-01T18:00:00Z"))); // 02:00 next day
        assert!(!q.is_quiet(ts("2026-03-01T23:00:00Z"))); // 07:00
        assert_eq!(
            q.next_open(ts("2026-03-01T15:00:00Z")),
            ts("2026-03-01T23:00:00Z")
        );
        assert_eq!(
            q.next_open(ts("2026-03-01T20:00:00Z")),
            ts("2026-03-01T23:00:00Z")
        );
        assert_eq!(
            q.next_open(ts("2026-03-01T12:00:00Z")),
            ts("2026-03-01T12:00:00Z")
        );
    }

    #[test]
    fn quiet_hours_same_day_and_dst() {
        let q = qh("12:00", "13:30", "Europe/Berlin");
        assert!(q.is_quiet(ts("2026-07-01T10:00:00Z"))); // 12:00 CEST
        assert!(!q.is_quiet(ts("2026-07-01T11:30:00Z")));
        assert_eq!(
            q.next_open(ts("2026-07-01T10:05:00Z")),
            ts("2026-07-01T11:30:00Z")
        );
        // Ends inside the New York spring-forward gap: opens at the first valid instant after.
        let q = qh("01:00", "02:30", "America/New_York");
        assert_eq!(
            q.next_open(ts("2026-03-08T06:30:00Z")),
            ts("2026-03-08T07:30:00Z")
        );
    }

    #[test]
    fn quiet_hours_shift_an_eta() {
        let q = qh("22:00", "07:00", "Asia/Shanghai");
        // Starts 21:00 local with 3h of work: 1h before quiet, the rest from 07:00.
        let start = ts("2026-03-01T13:00:00Z");
        assert_eq!(q.next_quiet(start), ts("2026-03-01T14:00:00Z"));
        assert_eq!(
            q.finish_time(start, Duration::from_secs(3 * 3600)),
            ts("2026-03-02T01:00:00Z")
        );
        // Starting inside quiet hours waits for the end.
        assert_eq!(
            q.finish_time(ts("2026-03-01T15:00:00Z"), Duration::from_secs(600)),
            ts("2026-03-01T23:10:00Z")
        );
        // 40h of work: 15 open hours a day.
        assert_eq!(
            q.finish_time(ts("2026-03-01T23:00:00Z"), Duration::from_secs(40 * 3600)),
            ts("2026-03-04T09:00:00Z")
        );
    }

    #[test]
    fn quiet_hours_errors_name_field() {
        let e = QuietHours::from_raw(&RawQuietHours {
            from: "25:00".into(),
            to: "07:00".into(),
            timezone: "UTC".into(),
        })
        .expect_err("bad");
        assert!(
            e.to_string().starts_with("schedule.quiet_hours.from:"),
            "{e}"
        );
        let e = QuietHours::from_raw(&RawQuietHours {
            from: "07:00".into(),
            to: "07:00".into(),
            timezone: "UTC".into(),
        })
        .expect_err("bad");
        assert!(e.to_string().starts_with("schedule.quiet_hours.to:"), "{e}");
        let e = QuietHours::from_raw(&RawQuietHours {
            from: "22:00".into(),
            to: "07:00".into(),
            timezone: "Nowhere/City".into(),
        })
        .expect_err("bad");
        assert!(
            e.to_string().starts_with("schedule.quiet_hours.timezone:"),
            "{e}"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            #[test]
            fn occurrences_strictly_increase_whole_seconds(start in 1_700_000_000i64..1_900_000_000i64, which in 0usize..4) {
                let (expr, tz) = [("0 * * * *", "America/New_York"), ("30 2 * * *", "Europe/Berlin"),
                                  ("*/7 1-3 * * *", "America/New_York"), ("0 9 * * 1-5", "Asia/Shanghai")][which];
                let s = cron(expr, tz);
                let t0 = Timestamp::from_second(start).expect("ts");
                let occ = s.upcoming(t0, 30);
                prop_assert_eq!(occ.len(), 30);
                let mut prev = t0;
                for o in occ {
                    prop_assert!(o > prev);
                    prop_assert_eq!(o.subsec_nanosecond(), 0);
                    prev = o;
                }
            }
        }
    }
}
