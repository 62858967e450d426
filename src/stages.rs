//! A run's stages: the ordered parts a run is sent in — a canary sample and the rest
//! (`rollout:`) — each a set of recipients derived deterministically from the audience, a time
//! it may not start before, and a gate it must pass before the next stage starts.
//!
//! Owns: which stage each valid row belongs to ([`assign_rows`]: the canary by the one stable
//! hash, `assign::point(campaign, Canary, id)`), the order of rows by (stage, Content group) that
//! makes each stage one contiguous range of call numbers ([`order_rows`]), and the canary's gate
//! ([`gate`]). The plan calls the first two; the run (`run::staged`) walks the stages and keeps
//! their times and gate outcomes in the journal (`journal::stages`), so a wait is a time, never
//! a sleep that a restart forgets.
//!
//! Invariants: a row's stage depends only on (campaign name, recipient id) and the campaign's
//! `rollout:` — never on CSV order, run or resume — so a resumed run re-derives the sets it
//! started with and nobody moves between stages. Within a stage the usual grouping applies
//! (calls of ≤ 500 receivers of one Content). Must not: read the journal or the clock, send.

use serde::Serialize;

use crate::assign::{point, within, Purpose};
use crate::spec::{Campaign, Share};

/// Stage names as the journal, `plan` and the report show them.
pub const CANARY: &str = "canary";
pub const REST: &str = "rest";

/// One stage of a plan: its calls are `first_call .. first_call + calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStage {
    pub name: String,
    pub first_call: u64,
    pub calls: u64,
    pub recipients: u64,
    /// A wave's instant: `schedule.local_time` on `date` in each of `zones`.
    pub at: Option<jiff::Timestamp>,
    pub zones: Vec<String>,
    /// The date the waves are on.
    pub date: Option<jiff::civil::Date>,
}

/// A stage before its calls are counted.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub name: String,
    pub at: Option<jiff::Timestamp>,
    pub zones: Vec<String>,
    pub date: Option<jiff::civil::Date>,
}

impl StageInfo {
    fn named(name: &str) -> StageInfo {
        StageInfo {
            name: name.to_string(),
            at: None,
            zones: Vec::new(),
            date: None,
        }
    }
}

/// Each valid row's stage (index into `stages`), in audience order.
#[derive(Debug, Clone)]
pub struct Staged {
    pub stages: Vec<StageInfo>,
    pub row_stage: Vec<u32>,
}

/// The date waves fall on when the caller names none: fixed, so a plan stays deterministic
/// (commands that only read a plan's rows and Contents: validate, preview, diff).
pub const DEFAULT_WAVE_DATE: jiff::civil::Date = jiff::civil::date(2000, 1, 1);

/// Each row's zone from `audience.timezone_column` (see [`Zones::resolve`]): zones are
/// numbered in the order first seen; names are looked up once each.
pub struct Zones {
    col: Option<usize>,
    column: String,
    default: Option<String>,
    by_name: std::collections::HashMap<String, Option<u16>>,
    /// The zones seen, by number.
    pub names: Vec<String>,
    pub tzs: Vec<jiff::tz::TimeZone>,
}

impl Zones {
    /// None when the campaign has no local-time waves. An audience without the column is an
    /// error (nothing could be sent at anyone's local time).
    pub fn new(c: &Campaign, columns: &[String]) -> Result<Option<Zones>, crate::plan::PlanError> {
        let (Some(_), Some(column)) = (c.local_time, c.audience.timezone_column.as_ref()) else {
            return Ok(None);
        };
        let col = columns.iter().position(|n| n == column);
        if col.is_none() {
            let path = match &c.audience.source {
                crate::spec::Source::Csv { path, .. } => path.clone(),
                crate::spec::Source::Ids(_) => std::path::PathBuf::from("inline"),
            };
            return Err(crate::audience::AudienceError::MissingRequiredColumn {
                path,
                column: column.clone(),
                found: columns.join(", "),
            }
            .into());
        }
        Ok(Some(Zones {
            col,
            column: column.clone(),
            default: c.audience.default_timezone.clone(),
            by_name: std::collections::HashMap::new(),
            names: Vec::new(),
            tzs: Vec::new(),
        }))
    }

    /// The number of the row's zone, or why the row is invalid.
    pub fn resolve(&mut self, fields: &csv::StringRecord) -> Result<u16, String> {
        let cell = self.col.and_then(|i| fields.get(i)).unwrap_or("").trim();
        // The common case: a zone seen before, looked up without allocating.
        if let Some(found) = self.by_name.get(cell) {
            return found.ok_or_else(|| self.unknown(cell));
        }
        let name = if cell.is_empty() {
            match &self.default {
                Some(d) => d.clone(),
                None => {
                    return Err(format!(
                        "time zone column `{}` is empty (set `audience.default_timezone` for such rows)",
                        self.column
                    ))
                }
            }
        } else {
            cell.to_string()
        };
        if let Some(found) = self.by_name.get(&name) {
            return found.ok_or_else(|| self.unknown(&name));
        }
        let found = match jiff::tz::TimeZone::get(&name) {
            Ok(tz) if self.names.len() < usize::from(u16::MAX) => {
                self.names.push(name.clone());
                self.tzs.push(tz);
                Some((self.names.len() - 1) as u16)
            }
            _ => None,
        };
        self.by_name.insert(name.clone(), found);
        found.ok_or_else(|| self.unknown(&name))
    }

    fn unknown(&self, name: &str) -> String {
        format!(
            "unknown time zone {name:?} in column `{}`; write an IANA name such as Asia/Shanghai",
            self.column
        )
    }
}

/// The date a run's waves fall on: the occurrence's date (an ad-hoc run: `now`'s) in the
/// schedule's zone (UTC without one). None without `schedule.local_time`.
pub fn wave_date(
    c: &Campaign,
    occurrence: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<jiff::civil::Date> {
    c.local_time?;
    let tz = c
        .schedule
        .as_ref()
        .and_then(|s| s.timezone())
        .cloned()
        .unwrap_or(jiff::tz::TimeZone::UTC);
    Some(occurrence.unwrap_or(now).to_zoned(tz).date())
}

/// The instant of a daemon occurrence's run key (`NAME@<UTC RFC 3339>`, see
/// `daemon::runner::run_key`).
pub fn occurrence_instant(run_key: &str) -> Option<jiff::Timestamp> {
    run_key.rsplit_once('@')?.1.parse().ok()
}

/// `time` on `date` in `tz` as an instant: a time skipped by a DST change is the first instant
/// after the gap, a time that occurs twice is the first (jiff's "compatible" choice).
pub fn local_instant(
    date: jiff::civil::Date,
    time: jiff::civil::Time,
    tz: &jiff::tz::TimeZone,
) -> jiff::Timestamp {
    tz.to_ambiguous_timestamp(date.to_datetime(time))
        .compatible()
        .unwrap_or(jiff::Timestamp::MAX)
}

/// The waves of a local-time campaign: one per distinct instant of `local_time` on `date`
/// among the zones seen, earliest first; each row's wave from its zone.
pub fn waves(
    c: &Campaign,
    zones: &Zones,
    row_zone: &[u16],
    date: Option<jiff::civil::Date>,
) -> Staged {
    let date = date.unwrap_or(DEFAULT_WAVE_DATE);
    let time = c.local_time.unwrap_or(jiff::civil::Time::midnight());
    let mut by_at: std::collections::BTreeMap<jiff::Timestamp, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (z, tz) in zones.tzs.iter().enumerate() {
        by_at
            .entry(local_instant(date, time, tz))
            .or_default()
            .push(z);
    }
    let mut wave_of_zone = vec![0u32; zones.tzs.len()];
    let mut stages = Vec::new();
    for (w, (at, zs)) in by_at.into_iter().enumerate() {
        let mut names: Vec<String> = zs.iter().map(|z| zones.names[*z].clone()).collect();
        names.sort();
        for z in zs {
            wave_of_zone[z] = w as u32;
        }
        stages.push(StageInfo {
            name: format!("wave {}", w + 1),
            at: Some(at),
            zones: names,
            date: Some(date),
        });
    }
    let row_stage = row_zone
        .iter()
        .map(|z| wave_of_zone.get(usize::from(*z)).copied().unwrap_or(0))
        .collect();
    Staged { stages, row_stage }
}

/// The stage of each valid row (`ids` in audience order), or None when the campaign has no
/// stages. The canary is a `within` share of the hash points, or the `n` rows with the lowest
/// points (all of them when the audience is smaller).
pub fn assign_rows(c: &Campaign, ids: &[u64]) -> Option<Staged> {
    let rollout = c.rollout.as_ref()?;
    let stages = vec![StageInfo::named(CANARY), StageInfo::named(REST)];
    let row_stage = match rollout.canary {
        Share::Fraction { parts, whole } => ids
            .iter()
            .map(|&id| u32::from(!within(point(&c.name, Purpose::Canary, id), parts, whole)))
            .collect(),
        Share::Count(n) if n as usize >= ids.len() => vec![0; ids.len()],
        Share::Count(n) => {
            let points: Vec<u64> = ids
                .iter()
                .map(|&id| point(&c.name, Purpose::Canary, id))
                .collect();
            let mut sorted = points.clone();
            let (_, nth, _) = sorted.select_nth_unstable(n as usize);
            let threshold = *nth;
            // Points below the (n+1)-th smallest: exactly n of them (SHA-256 points of distinct
            // ids do not tie in practice; a tie only makes the canary smaller).
            points.iter().map(|p| u32::from(*p >= threshold)).collect()
        }
    };
    Some(Staged { stages, row_stage })
}

/// What [`order_rows`] gives the plan.
pub struct Ordered {
    /// Valid-row ordinals (audience order numbers) by (stage, group, audience order).
    pub order: Vec<u32>,
    /// The group of each bucket (a (stage, group) pair with rows), in order.
    pub bucket_group: Vec<u32>,
    /// The bucket of each valid row, in audience order.
    pub row_bucket: Vec<u32>,
    /// Offsets into `order`, one per bucket plus the end.
    pub bucket_start: Vec<usize>,
    /// The stage of each bucket.
    pub bucket_stage: Vec<u32>,
}

/// Order the valid rows by (stage, group, audience order): two stable counting sorts.
pub fn order_rows(row_group: &[u32], group_size: &[u64], row_stage: &[u32]) -> Ordered {
    // By group.
    let mut start = vec![0usize; group_size.len() + 1];
    for (g, n) in group_size.iter().enumerate() {
        start[g + 1] = start[g] + *n as usize;
    }
    let mut by_group = vec![0u32; row_group.len()];
    for (ord, g) in row_group.iter().enumerate() {
        let slot = &mut start[*g as usize];
        by_group[*slot] = ord as u32;
        *slot += 1;
    }
    // Then by stage (stable: group order kept within a stage).
    let stages = row_stage.iter().max().map_or(0, |m| *m as usize + 1);
    let mut sstart = vec![0usize; stages + 1];
    for s in row_stage {
        sstart[*s as usize + 1] += 1;
    }
    for i in 0..stages {
        sstart[i + 1] += sstart[i];
    }
    let mut order = vec![0u32; row_group.len()];
    for ord in by_group {
        let slot = &mut sstart[row_stage[ord as usize] as usize];
        order[*slot] = ord;
        *slot += 1;
    }
    // Buckets: runs of equal (stage, group).
    let mut bucket_group = Vec::new();
    let mut bucket_stage = Vec::new();
    let mut bucket_start = Vec::new();
    let mut row_bucket = vec![0u32; row_group.len()];
    let mut last = None;
    for (i, ord) in order.iter().enumerate() {
        let key = (row_stage[*ord as usize], row_group[*ord as usize]);
        if last != Some(key) {
            bucket_group.push(key.1);
            bucket_stage.push(key.0);
            bucket_start.push(i);
            last = Some(key);
        }
        row_bucket[*ord as usize] = (bucket_group.len() - 1) as u32;
    }
    bucket_start.push(order.len());
    Ordered {
        order,
        bucket_group,
        row_bucket,
        bucket_start,
        bucket_stage,
    }
}

/// What a stage must pass before the next one starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// From the stage's end to the decision.
    pub wait: std::time::Duration,
    /// The stage passes when (failed + unknown) / sent ≤ this.
    pub max_failure_ratio: f64,
}

/// A stage as a run sends it: the plan's stage, when it may start and its gate.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStage {
    pub stage: PlanStage,
    pub not_before: Option<jiff::Timestamp>,
    pub gate: Option<Gate>,
    /// A stage not started by `not_before` + this is `expired` for its recipients (a wave: the
    /// schedule's `not_after`, default 1h).
    pub expire_after: Option<std::time::Duration>,
}

/// The stages a run of `c` sends, from its plan's stages (empty: one stage, the whole plan).
pub fn run_stages(c: &Campaign, stages: &[PlanStage]) -> Vec<RunStage> {
    stages
        .iter()
        .map(|s| RunStage {
            stage: s.clone(),
            not_before: s.at,
            // `schedule.not_after`, read even when the schedule names only `local_time` (then
            // there is no `c.schedule`, and a wave would otherwise fall back to the default).
            expire_after: s.at.map(|_| c.wave_not_after),
            gate: match (&c.rollout, s.name.as_str()) {
                (Some(r), CANARY) => Some(Gate {
                    wait: r.wait,
                    max_failure_ratio: r.max_failure_ratio,
                }),
                _ => None,
            },
        })
        .collect()
}

/// The canary's numbers at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GateCounts {
    /// Recipients the canary attempted (sent, failed, unknown, not online).
    pub sent: u64,
    pub failed: u64,
    pub unknown: u64,
}

/// Whether the canary passes: (failed + unknown) / sent ≤ `max_ratio` (a canary that sent
/// nothing passes: there is nothing to judge). Returns the ratio and the verdict.
pub fn gate(c: GateCounts, max_ratio: f64) -> (f64, bool) {
    if c.sent == 0 {
        return (0.0, true);
    }
    let ratio = (c.failed + c.unknown) as f64 / c.sent as f64;
    (ratio, ratio <= max_ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign(rollout: &str) -> Campaign {
        let text = format!(
            "version: 1\nname: spring\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\n\
             sender: 1\naudience: {{ ids: [1] }}\nmessage: {{ type: text, text: hi }}\nrollout: {rollout}\n"
        );
        crate::spec::parse_str(
            &text,
            "/tmp/c.yaml".into(),
            "/tmp".into(),
            &crate::spec::LoadOptions::default(),
        )
        .expect("valid campaign")
    }

    #[test]
    fn a_wave_expires_after_the_schedules_not_after_even_without_cron_or_at() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.csv"), "id,tz\n1,Europe/London\n").expect("csv");
        let load = |schedule: &str| {
            let text = format!(
                "version: 1\nname: w\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\n\
                 sender: 1\naudience: {{ csv: a.csv, timezone_column: tz }}\n\
                 message: {{ type: text, text: hi }}\nschedule: {schedule}\n"
            );
            crate::spec::parse_str(
                &text,
                dir.path().join("c.yaml"),
                dir.path().to_path_buf(),
                &crate::spec::LoadOptions::default(),
            )
            .expect("valid campaign")
        };
        let at = "2026-06-01T08:00:00Z".parse().expect("ts");
        let stage = PlanStage {
            name: "wave 1".into(),
            first_call: 0,
            calls: 1,
            recipients: 1,
            at: Some(at),
            zones: vec!["Europe/London".into()],
            date: None,
        };
        let c = load("{ local_time: \"09:00\", not_after: 12h }");
        assert!(
            c.schedule.is_none(),
            "only local_time: no occurrence schedule"
        );
        let r = run_stages(&c, std::slice::from_ref(&stage));
        assert_eq!(
            r[0].expire_after,
            Some(std::time::Duration::from_secs(12 * 3600))
        );
        let c = load("{ local_time: \"09:00\" }");
        let r = run_stages(&c, std::slice::from_ref(&stage));
        assert_eq!(r[0].expire_after, Some(crate::schedule::DEFAULT_NOT_AFTER));
    }

    fn canary(c: &Campaign, ids: &[u64]) -> std::collections::BTreeSet<u64> {
        let st = assign_rows(c, ids).expect("staged");
        ids.iter()
            .zip(st.row_stage.iter())
            .filter(|(_, s)| **s == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    #[test]
    fn a_share_canary_is_within_binomial_bounds_and_stable_under_reordering() {
        let c = campaign("{ canary: 1% }");
        let ids: Vec<u64> = (0..100_000u64).map(|i| i * 7 + 3).collect();
        let a = canary(&c, &ids);
        // 1 % of 100,000 is 1,000; σ ≈ 31.5, so ±5σ is ±158.
        assert!((842..=1_158).contains(&a.len()), "{}", a.len());
        let mut shuffled = ids.clone();
        shuffled.reverse();
        shuffled.rotate_left(12_345);
        assert_eq!(canary(&c, &shuffled), a, "independent of CSV order");
        // Another campaign draws another sample.
        let mut autumn = campaign("{ canary: 1% }");
        autumn.name = "autumn".into();
        let other = canary(&autumn, &ids);
        assert_ne!(other, a);
    }

    #[test]
    fn a_count_canary_takes_exactly_that_many_lowest_points() {
        let c = campaign("{ canary: 500 }");
        let ids: Vec<u64> = (1..=20_000u64).collect();
        let a = canary(&c, &ids);
        assert_eq!(a.len(), 500);
        let max_in = a
            .iter()
            .map(|id| point("spring", Purpose::Canary, *id))
            .max()
            .expect("some");
        let min_out = ids
            .iter()
            .filter(|id| !a.contains(id))
            .map(|id| point("spring", Purpose::Canary, *id))
            .min()
            .expect("some");
        assert!(max_in < min_out);
        let mut rev = ids.clone();
        rev.reverse();
        assert_eq!(canary(&c, &rev), a);
        // Fewer recipients than the count: everyone is the canary.
        assert_eq!(canary(&c, &ids[..10]).len(), 10);
    }

    #[test]
    fn shares_parse_and_print() {
        for (text, shown) in [
            ("1%", "1%"),
            ("0.5%", "0.5%"),
            ("12.25%", "12.25%"),
            ("100%", "100%"),
        ] {
            let c = campaign(&format!("{{ canary: \"{text}\" }}"));
            assert_eq!(c.rollout.expect("rollout").canary.to_string(), shown);
        }
        let bad = |r: &str| {
            crate::spec::parse_str(
                &format!(
                    "version: 1\nname: s\nprovider: {{ app_id: 1, region: cn-north-1 }}\naction: batch\n\
                     sender: 1\naudience: {{ ids: [1] }}\nmessage: {{ type: text, text: hi }}\nrollout: {r}\n"
                ),
                "/tmp/c.yaml".into(),
                "/tmp".into(),
                &crate::spec::LoadOptions::default(),
            )
            .expect_err("invalid")
        };
        let e = bad("{ canary: \"150%\" }");
        assert!(e[0].message.contains("rollout.canary"), "{e:?}");
        assert_eq!(e[0].line, Some(8));
        let e = bad("{ canary: 0 }");
        assert!(e[0].message.contains("at least 1"), "{e:?}");
        let e = bad("{ canary: 1%, max_failure_ratio: 2 }");
        assert!(e[0].message.contains("between 0 and 1"), "{e:?}");
        let e = bad("{ canary: 1%, wait: soon }");
        assert!(e[0].message.contains("rollout.wait"), "{e:?}");
    }

    #[test]
    fn a_wave_time_skipped_by_dst_is_the_first_instant_after_the_gap() {
        let ny = jiff::tz::TimeZone::get("America/New_York").expect("zone");
        let d = jiff::civil::date(2026, 3, 8);
        // 02:30 does not exist that morning in New York: it is 03:30 EDT (07:30 UTC).
        let t = local_instant(d, jiff::civil::time(2, 30, 0, 0), &ny);
        assert_eq!(
            t,
            "2026-03-08T07:30:00Z"
                .parse::<jiff::Timestamp>()
                .expect("t")
        );
        let t = local_instant(d, jiff::civil::time(9, 0, 0, 0), &ny);
        assert_eq!(
            t,
            "2026-03-08T13:00:00Z"
                .parse::<jiff::Timestamp>()
                .expect("t")
        );
    }

    #[test]
    fn order_rows_groups_each_stage_contiguously() {
        // rows: group, stage
        let row_group = [0, 1, 0, 1, 0];
        let row_stage = [1, 0, 0, 1, 1];
        let o = order_rows(&row_group, &[3, 2], &row_stage);
        // stage 0: group 0 (row 2), group 1 (row 1); stage 1: group 0 (rows 0, 4), group 1 (row 3)
        assert_eq!(o.order, vec![2, 1, 0, 4, 3]);
        assert_eq!(o.bucket_group, vec![0, 1, 0, 1]);
        assert_eq!(o.bucket_stage, vec![0, 0, 1, 1]);
        assert_eq!(o.bucket_start, vec![0, 1, 2, 4, 5]);
        assert_eq!(o.row_bucket, vec![2, 1, 0, 3, 2]);
    }

    #[test]
    fn the_gate_compares_failed_and_unknown_over_sent() {
        let c = |sent, failed, unknown| GateCounts {
            sent,
            failed,
            unknown,
        };
        assert!(gate(c(100, 1, 1), 0.02).1);
        assert!(!gate(c(100, 2, 1), 0.02).1);
        assert!(gate(c(0, 0, 0), 0.0).1);
        assert_eq!(gate(c(50, 5, 0), 0.5).0, 0.1);
    }
}
