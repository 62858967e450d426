//! `report.html`: the page a person looks at. One self-contained file (inline CSS and SVG, no
//! script, no font or image from anywhere, a Content-Security-Policy that forbids loading
//! anything), readable in dark mode (`prefers-color-scheme`) and printed, with real text and
//! tables with header cells beside every chart.
//!
//! Everything shown that comes from a campaign or from the provider is attacker-controllable text
//! (a campaign may arrive by pull request), so the page is rendered by minijinja with HTML
//! auto-escaping on for every value (`page.html`); this module only builds the data (numbers,
//! chart geometry, sentences) and never pastes markup together. Its size depends on the number
//! of chart intervals, failure groups and variants, all bounded in `facts`, never on recipients.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::facts::{self, show_time, FailureGroup, Tally, Timeline, VariantFact};
use super::{fmt_count, ReportOptions, Summary};
use crate::action::Action;
use crate::journal::{Journal, JournalError, RecipientStatus, RunInfo};

const TEMPLATE: &str = include_str!("page.html");

/// The statuses in the order the page shows them (`pending` only while a run is unfinished).
const ORDER: &[RecipientStatus] = &[
    RecipientStatus::Sent,
    RecipientStatus::Failed,
    RecipientStatus::Unknown,
    RecipientStatus::NotOnline,
    RecipientStatus::Invalid,
    RecipientStatus::Duplicate,
    RecipientStatus::Suppressed,
    RecipientStatus::Holdout,
    RecipientStatus::Expired,
    RecipientStatus::Cancelled,
    RecipientStatus::Pending,
];

fn meaning(s: RecipientStatus) -> &'static str {
    match s {
        RecipientStatus::Sent => {
            "accepted by the provider (with a message id); not a proof of delivery to a device"
        }
        RecipientStatus::Failed => {
            "the provider refused this recipient (error code and message below)"
        }
        RecipientStatus::Unknown => "the request left but no usable answer came back; not resent",
        RecipientStatus::NotOnline => "P2PSendMessage: the user was not online",
        RecipientStatus::Invalid => "the audience row's id is not a valid user id; never sent",
        RecipientStatus::Duplicate => "the id appeared earlier in the audience; sent once",
        RecipientStatus::Suppressed => "on a suppression list; never sent",
        RecipientStatus::Holdout => {
            "in the campaign's holdout (a stable share kept from the message to compare with); never sent, not an error"
        }
        RecipientStatus::Expired => "the campaign's deadline passed before it was sent",
        RecipientStatus::Cancelled => "the run was cancelled before it was sent",
        RecipientStatus::Pending => "not sent yet: the run is unfinished",
    }
}

#[derive(Serialize)]
struct Field {
    label: &'static str,
    value: String,
    mono: bool,
}

#[derive(Serialize)]
struct StatusRow {
    status: &'static str,
    label: &'static str,
    meaning: &'static str,
    count: u64,
    count_s: String,
    pct: String,
    x: String,
    w: f64,
}

#[derive(Serialize)]
struct Calls {
    planned: u64,
    planned_s: String,
    done: u64,
    done_s: String,
    unknown: u64,
    unknown_s: String,
    attempts: u64,
    attempts_s: String,
    /// Failed attempts per error code (retried ones included): (code, count, count shown).
    errors: Vec<(String, u64, String)>,
}

#[derive(Serialize)]
struct Tick {
    pos: f64,
    label: String,
    anchor: &'static str,
}

#[derive(Serialize)]
struct Band {
    x: f64,
    w: f64,
    label: String,
}

#[derive(Serialize)]
struct GapRow {
    from: String,
    to: String,
    length: String,
}

#[derive(Serialize)]
struct ChartRow {
    time: String,
    value: String,
    ended: String,
}

#[derive(Serialize)]
struct Chart {
    width: f64,
    height: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    plot_h: f64,
    area: String,
    limit_y: f64,
    limit_label: String,
    y_label: String,
    y_ticks: Vec<Tick>,
    x_ticks: Vec<Tick>,
    bands: Vec<Band>,
    title: String,
    desc: String,
    sentence: String,
    caption: String,
    unit: &'static str,
    gap_min: String,
    gaps: Vec<GapRow>,
    more_gaps: usize,
    rows: Vec<ChartRow>,
}

#[derive(Serialize)]
struct Example {
    line: u64,
    raw_id: String,
    code: Option<String>,
    call: Option<u64>,
}

#[derive(Serialize)]
struct Group {
    status: &'static str,
    code: String,
    message: Option<String>,
    message_label: &'static str,
    meaning: &'static str,
    count: u64,
    count_s: String,
    examples: Vec<Example>,
}

#[derive(Serialize)]
struct UnknownView {
    recipients: u64,
    recipients_s: String,
    calls: u64,
    calls_s: String,
    command: String,
    risk: &'static str,
    groups: Vec<Group>,
    call_rows: Vec<facts::UnknownCall>,
}

#[derive(Serialize)]
struct Variant {
    variant: String,
    recipients: u64,
    recipients_s: String,
    msg_type: i32,
    content: String,
    truncated: bool,
    shown_bytes: String,
    bytes_s: String,
    ext: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct FileRow {
    name: String,
    what: String,
}

#[derive(Serialize)]
struct Page {
    version: &'static str,
    campaign: String,
    campaign_file: String,
    run_id: String,
    status: String,
    test: bool,
    rows: u64,
    rows_s: String,
    duration: String,
    fields: Vec<Field>,
    statuses: Vec<StatusRow>,
    /// A/B variants: the statuses any variant has (columns), and one row per variant.
    ab_statuses: Vec<&'static str>,
    ab_variants: Vec<AbRow>,
    status_sentence: String,
    bar_desc: String,
    calls: Calls,
    chart: Option<Chart>,
    failures: Vec<Group>,
    failures_sentence: String,
    failures_other: String,
    unknown: UnknownView,
    variants: Vec<Variant>,
    variants_sentence: String,
    /// The run's stages (empty: sent as one stage).
    stages: Vec<super::StageSummary>,
    files: Vec<FileRow>,
    files_note: Option<String>,
}

/// One A/B variant's recipients per status (`ab_statuses` order).
#[derive(Serialize)]
struct AbRow {
    name: String,
    total: u64,
    total_s: String,
    cells: Vec<(u64, String)>,
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        return "0%".into();
    }
    let p = n as f64 * 100.0 / of as f64;
    if n > 0 && p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{p:.1}%")
    }
}

/// `3725.2` seconds → `1h 2m 5s` (whole seconds; milliseconds below one second).
fn show_duration(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{} ms", (secs * 1000.0).round() as u64);
    }
    humantime::format_duration(std::time::Duration::from_secs(secs.round() as u64)).to_string()
}

fn audit_str(audit: &serde_json::Value, key: &str) -> Option<String> {
    match audit.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        v => Some(v.to_string()),
    }
}

fn flags_of(run: &RunInfo) -> String {
    let f = &run.flags;
    let mut v: Vec<String> = Vec::new();
    for (on, name) in [
        (f.new_run, "--new-run"),
        (f.continue_changed, "--continue-changed"),
        (f.resend_unknown, "--resend-unknown"),
        (f.retry_failed, "--retry-failed"),
        (f.yes, "--yes"),
        (f.mock, "--mock"),
        (f.skip_canary, "--skip-canary"),
    ] {
        if on {
            v.push(name.into());
        }
    }
    if !f.test_to.is_empty() {
        let ids: Vec<String> = f.test_to.iter().map(u64::to_string).collect();
        v.push(format!("--test-to {}", facts::clip(&ids.join(","), 200)));
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join(" ")
    }
}

/// One invocation of the audit block for people: `2026-03-01 09:00:00 UTC: resumed by ana on
/// host-1 (imcast run, imcast 0.1.0), flags --resend-unknown --yes`.
fn describe_invocation(i: &serde_json::Value) -> String {
    let s = |k: &str| i.get(k).and_then(serde_json::Value::as_str);
    let at = s("at")
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or_else(|| "(time not recorded)".to_string(), show_time);
    let who = match (s("user"), s("host")) {
        (Some(u), Some(h)) => format!(" by {u} on {h}"),
        (Some(u), None) => format!(" by {u}"),
        (None, Some(h)) => format!(" on {h}"),
        (None, None) => String::new(),
    };
    let via = match s("via") {
        Some("daemon") => "the daemon",
        _ => "imcast run",
    };
    let version = s("imcast_version")
        .map(|v| format!(", imcast {v}"))
        .unwrap_or_default();
    let flags: Vec<&str> = i
        .get("flags")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let flags = if flags.is_empty() {
        "no flags".to_string()
    } else {
        format!("flags {}", flags.join(" "))
    };
    format!(
        "{at}: {}{who} ({via}{version}), {flags}",
        s("decision").unwrap_or("opened")
    )
}

fn header_fields(
    run: &RunInfo,
    s: &Summary,
    meta: Option<&facts::RunMeta>,
    timeline: Option<&Timeline>,
    duration: &str,
) -> Vec<Field> {
    let a = &run.audit;
    let text = |v: &str| facts::clip(v, facts::MAX_TEXT);
    let mut f = vec![Field {
        label: "Campaign",
        value: text(&run.campaign),
        mono: false,
    }];
    if let Some(o) = &run.occurrence {
        f.push(Field {
            label: "Occurrence",
            value: text(o),
            mono: true,
        });
    }
    f.push(Field {
        label: "Run id",
        value: text(&run.id),
        mono: true,
    });
    f.push(Field {
        label: "Status",
        value: match &run.stop_reason {
            Some(r) => format!("{} ({})", run.status, text(r)),
            None => run.status.to_string(),
        },
        mono: false,
    });
    f.push(Field {
        label: "Action",
        value: format!("{} ({})", run.action, run.action.api_name()),
        mono: false,
    });
    let app_id = a
        .get("app_id")
        .and_then(serde_json::Value::as_u64)
        .or(meta.and_then(|m| m.app_id));
    f.push(Field {
        label: "App id",
        value: app_id.map_or_else(|| "not recorded".into(), |v| v.to_string()),
        mono: true,
    });
    f.push(Field {
        label: "Endpoint",
        value: audit_str(a, "endpoint").map_or_else(|| "not recorded".into(), |v| text(&v)),
        mono: true,
    });
    if let Some(k) = audit_str(a, "access_key_id") {
        f.push(Field {
            label: "Access key id",
            value: text(&k),
            mono: true,
        });
    }
    let who = match (audit_str(a, "user"), audit_str(a, "host")) {
        (Some(u), Some(h)) => format!("{u} on {h}"),
        (Some(u), None) => u,
        (None, Some(h)) => format!("on {h}"),
        (None, None) => "not recorded".into(),
    };
    f.push(Field {
        label: "Run by",
        value: text(&who),
        mono: false,
    });
    let git = match audit_str(a, "git_commit") {
        Some(c) => match a.get("git_dirty").and_then(serde_json::Value::as_bool) {
            Some(true) => format!("{c} (dirty: uncommitted changes)"),
            Some(false) => format!("{c} (clean)"),
            None => c,
        },
        None => "not a git repository".into(),
    };
    f.push(Field {
        label: "Git commit",
        value: text(&git),
        mono: true,
    });
    f.push(Field {
        label: "Plan hash",
        value: text(&run.plan_hash),
        mono: true,
    });
    f.push(Field {
        label: "Started",
        value: show_time(run.created_at),
        mono: false,
    });
    f.push(Field {
        label: "Ended",
        value: run
            .finished_at
            .map_or_else(|| "not yet (the run is unfinished)".into(), show_time),
        mono: false,
    });
    f.push(Field {
        label: "Duration",
        value: duration.into(),
        mono: false,
    });
    f.push(Field {
        label: "Flags",
        value: flags_of(run),
        mono: true,
    });
    let window = show_duration(s.rate.window_seconds);
    f.push(Field {
        label: "Limit",
        value: format!(
            "{} {} per {window} (this run's share of the account limit)",
            fmt_count(s.rate.limit),
            s.rate.unit,
        ),
        mono: false,
    });
    let mut rate = match (s.rate.busiest_window, timeline) {
        (Some(b), _) if s.rate.admitted > 0 => format!(
            "busiest {window} window {} {} ({} of the limit)",
            fmt_count(b),
            s.rate.unit,
            pct(b, s.rate.limit)
        ),
        (_, Some(t)) => format!(
            "busiest {window} window {} {} ({} of the limit)",
            fmt_count(t.peak),
            s.rate.unit,
            pct(t.peak, t.limit)
        ),
        (_, None) => "no call was answered".into(),
    };
    // An average over less than one window says nothing against a per-window limit (a run of
    // ten calls in nine seconds averages more than the limit's per-second rate without breaking it).
    if s.rate.admitted > 0
        && s.duration_seconds >= s.rate.window_seconds
        && s.rate.window_seconds > 0.0
    {
        rate.push_str(&format!(
            "; {} {} per second on average over the whole run, pauses included",
            s.rate.average_per_second, s.rate.unit
        ));
    }
    f.push(Field {
        label: "Rate",
        value: rate,
        mono: false,
    });
    if let Some(c) = &run.continued_from {
        f.push(Field {
            label: "Continues run",
            value: text(c),
            mono: true,
        });
    }
    if let Some(r) = &run.retry_of {
        f.push(Field {
            label: "Retries run",
            value: format!(
                "{} (sends again to the recipients it left failed with a retryable code)",
                text(r)
            ),
            mono: false,
        });
    }
    for i in s
        .audit
        .get("invocations")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        f.push(Field {
            label: "Invocation",
            value: text(&describe_invocation(i)),
            mono: false,
        });
    }
    if let Some(v) = audit_str(a, "imcast_version") {
        f.push(Field {
            label: "imcast version",
            value: text(&v),
            mono: true,
        });
    }
    f
}

/// A "nice" step for an axis: 1, 2 or 5 × 10^k at or above `raw`.
fn nice(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let k = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    k * p
}

fn chart(t: &Timeline) -> Chart {
    let (width, height) = (1000.0f64, 320.0f64);
    let (left, right, top, bottom) = (70.0, 985.0, 28.0, 285.0);
    let plot_w = right - left;
    let plot_h = bottom - top;
    let n = t.values.len().max(1);
    let ymax_raw = (t.peak.max(t.limit) as f64 * 1.12).max(1.0);
    let ystep = nice(ymax_raw / 4.0);
    let ymax = (ymax_raw / ystep).ceil() * ystep;
    let y = |v: f64| bottom - v / ymax * plot_h;
    let x = |i: f64| left + i / n as f64 * plot_w;
    // A step path: each interval's value across its width.
    let mut area = format!("M{:.1},{:.1}", left, bottom);
    for (i, v) in t.values.iter().enumerate() {
        let yy = y(*v as f64);
        area.push_str(&format!(
            " L{:.1},{:.1} L{:.1},{:.1}",
            x(i as f64),
            yy,
            x(i as f64 + 1.0),
            yy
        ));
    }
    area.push_str(&format!(" L{right:.1},{bottom:.1} Z"));
    let mut y_ticks = Vec::new();
    let mut v = 0.0;
    while v <= ymax + 0.5 {
        y_ticks.push(Tick {
            pos: (y(v) * 10.0).round() / 10.0,
            label: fmt_count(v as u64),
            anchor: "end",
        });
        v += ystep;
    }
    let span_s = (t.end.as_millisecond() - t.start.as_millisecond()).max(1) as f64 / 1000.0;
    let fmt = if span_s > 86_400.0 {
        "%m-%d %H:%M"
    } else if span_s > 600.0 {
        "%H:%M"
    } else {
        "%H:%M:%S"
    };
    let at = |secs: f64| {
        Timestamp::from_millisecond(t.start.as_millisecond() + (secs * 1000.0) as i64)
            .unwrap_or(t.start)
    };
    let x_ticks = (0..=5)
        .map(|k| {
            let s = span_s * k as f64 / 5.0;
            Tick {
                pos: ((left + s / span_s * plot_w) * 10.0).round() / 10.0,
                // Under a minute, seconds after the first tick tell the ticks apart.
                label: if span_s < 60.0 && k > 0 {
                    format!("+{s:.1}s")
                } else {
                    at(s).strftime(fmt).to_string()
                },
                anchor: match k {
                    0 => "start",
                    5 => "end",
                    _ => "middle",
                },
            }
        })
        .collect();
    let sx = |s: f64| left + (s / span_s).clamp(0.0, 1.0) * plot_w;
    let bands = t
        .gaps
        .iter()
        .map(|g| Band {
            x: (sx(g.from_s) * 10.0).round() / 10.0,
            w: ((sx(g.to_s) - sx(g.from_s)) * 10.0).round() / 10.0,
            label: format!(
                "No call ended from {} to {} ({})",
                g.from,
                g.to,
                show_duration(g.seconds)
            ),
        })
        .collect();
    let window = show_duration(t.window_seconds);
    let unit = t.unit;
    let title = format!("{unit} counted in any {window} window, against the limit");
    let share = pct(t.peak, t.limit);
    let desc = format!(
        "From {} to {}: {} {unit} in {} call{}. The busiest {window} window held {} {unit} ({share} of the limit of {}), {} after the start. Pauses of {} or longer: {}.",
        show_time(t.start),
        show_time(t.end),
        fmt_count(t.units),
        fmt_count(t.calls),
        if t.calls == 1 { "" } else { "s" },
        fmt_count(t.peak),
        fmt_count(t.limit),
        show_duration(t.peak_at_s),
        show_duration(((2.0 * t.window_seconds).max(30.0)).round()),
        t.gaps.len() + t.more_gaps,
    );
    let sentence = format!(
        "The area is how many {unit} the limiter counted in the {window} window ending at each moment (the highest in each interval of {}); the dashed line is the limit this run could use, {} {unit} per {window}. A flat top at the line is the throttle at work; a drop to zero is a pause; the slope at the end is the tail.",
        show_duration(t.step_seconds),
        fmt_count(t.limit),
    );
    let caption = format!(
        "Times in UTC, by when each call's answer was recorded. Busiest window: {} {unit} ({share} of the limit). Shaded: pauses.",
        fmt_count(t.peak)
    );
    let gaps = t
        .gaps
        .iter()
        .map(|g| GapRow {
            from: g.from.clone(),
            to: g.to.clone(),
            length: show_duration(g.seconds),
        })
        .collect();
    let rows = t
        .values
        .iter()
        .zip(&t.ended)
        .enumerate()
        .map(|(i, (v, e))| ChartRow {
            time: show_time(at(i as f64 * t.step_seconds)),
            value: fmt_count(*v),
            ended: fmt_count(*e),
        })
        .collect();
    Chart {
        width,
        height,
        left,
        right,
        top,
        bottom,
        plot_h,
        area,
        limit_y: (y(t.limit as f64) * 10.0).round() / 10.0,
        limit_label: format!("limit {} per {window}", fmt_count(t.limit)),
        y_label: format!("{unit} per {window} window"),
        y_ticks,
        x_ticks,
        bands,
        title,
        desc,
        sentence,
        caption,
        unit,
        gap_min: show_duration(((2.0 * t.window_seconds).max(30.0)).round()),
        gaps,
        more_gaps: t.more_gaps,
        rows,
    }
}

fn group_view(g: FailureGroup) -> Group {
    Group {
        status: g.status.as_str(),
        code: g.code.unwrap_or_default(),
        message_label: match g.status {
            RecipientStatus::Failed | RecipientStatus::NotOnline => "The provider said",
            _ => "Why",
        },
        message: g.message,
        meaning: meaning(g.status),
        count: g.count,
        count_s: fmt_count(g.count),
        examples: g
            .examples
            .into_iter()
            .map(|r| Example {
                line: r.line,
                raw_id: r.raw_id,
                code: r.code,
                call: r.call,
            })
            .collect(),
    }
}

/// A Content as people read it: JSON pretty-printed (the provider gets it compact), anything
/// else as it is.
fn readable(content: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(content) {
        Ok(v @ serde_json::Value::Object(_)) => {
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| content.to_string())
        }
        _ => content.to_string(),
    }
}

fn variant_view(v: VariantFact) -> Variant {
    Variant {
        recipients_s: fmt_count(v.recipients),
        shown_bytes: fmt_count(v.content.len() as u64),
        bytes_s: fmt_count(v.content_bytes),
        variant: facts::clip(&v.variant, 80),
        recipients: v.recipients,
        msg_type: v.msg_type,
        content: if v.truncated {
            v.content
        } else {
            readable(&v.content)
        },
        truncated: v.truncated,
        ext: v
            .ext
            .into_iter()
            .take(50)
            .map(|(k, val)| (facts::clip(&k, 200), facts::clip(&val, 2000)))
            .collect(),
    }
}

/// Render the page of `run` (see the module doc).
pub(super) fn render(
    journal: &Journal,
    run: &RunInfo,
    s: &Summary,
    tally: Tally,
    opts: &ReportOptions,
) -> Result<String, String> {
    let journal_err = |e: JournalError| format!("reading the journal for report.html: {e}");
    // The report's own tables (see `facts::record_run`).
    let (meta, recorded) = facts::recorded(journal, &run.id).map_err(journal_err)?;
    let end = run.finished_at.unwrap_or(run.updated_at);
    let timeline = facts::timeline(journal, run, end).map_err(journal_err)?;
    let unknown_calls = facts::unknown_calls(journal, &run.id).map_err(journal_err)?;
    let file = facts::campaign_file_hint(meta.as_ref(), opts.campaign_file.as_deref());
    let duration = show_duration(s.duration_seconds);

    let count = |st: RecipientStatus| s.counts.get(&st).copied().unwrap_or(0);
    let rows = s.rows;
    let mut x = 0.0f64;
    let statuses: Vec<StatusRow> = ORDER
        .iter()
        .filter(|st| {
            !matches!(**st, RecipientStatus::Pending | RecipientStatus::Holdout) || count(**st) > 0
        })
        .map(|st| {
            let n = count(*st);
            let w = if rows > 0 {
                n as f64 / rows as f64 * 1000.0
            } else {
                0.0
            };
            let row = StatusRow {
                status: st.as_str(),
                label: st.as_str(),
                meaning: meaning(*st),
                count: n,
                count_s: fmt_count(n),
                pct: pct(n, rows),
                x: format!("{x:.2}"),
                w: (w * 100.0).round() / 100.0,
            };
            x += w;
            row
        })
        .collect();
    let nonzero: Vec<String> = statuses
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| format!("{} {} ({})", r.count_s, r.status, r.pct))
        .collect();
    let ab_statuses: Vec<&'static str> = ORDER
        .iter()
        .filter(|st| {
            s.variants
                .values()
                .any(|c| c.get(st).is_some_and(|n| *n > 0))
        })
        .map(|st| st.as_str())
        .collect();
    let status_sentence = if rows == 0 {
        "The audience had no rows.".to_string()
    } else {
        format!("{} audience rows: {}.", fmt_count(rows), nonzero.join(", "))
    };

    let mut failures = Vec::new();
    let mut unknown_groups = Vec::new();
    for g in tally.groups {
        if g.status == RecipientStatus::Unknown {
            unknown_groups.push(group_view(g));
        } else {
            failures.push(group_view(g));
        }
    }
    // Most rows first; statuses in page order among equals.
    let rank = |st: &str| ORDER.iter().position(|o| o.as_str() == st).unwrap_or(99);
    failures.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(rank(a.status).cmp(&rank(b.status)))
    });
    unknown_groups.sort_by_key(|g| std::cmp::Reverse(g.count));
    let failed_total: u64 = failures.iter().map(|g| g.count).sum::<u64>()
        + tally
            .other
            .iter()
            .filter(|(k, _)| **k != RecipientStatus::Unknown)
            .map(|(_, n)| n)
            .sum::<u64>();
    let failures_sentence = format!(
        "{} recipient{} not delivered for a known reason, by status and error code (most first), each with the first rows as they appear in the audience.",
        fmt_count(failed_total),
        if failed_total == 1 { " was" } else { "s were" }
    );
    let failures_other = tally
        .other
        .iter()
        .map(|(k, n)| format!("{} more {k}", fmt_count(*n)))
        .collect::<Vec<_>>()
        .join(", ");

    let unknown_n = count(RecipientStatus::Unknown);
    let unknown = UnknownView {
        recipients: unknown_n,
        recipients_s: fmt_count(unknown_n),
        calls: s.calls.unknown,
        calls_s: fmt_count(s.calls.unknown),
        command: format!("imcast run {file} --resend-unknown"),
        risk: match run.action {
            Action::Conversation => "SendMessage calls carry a ClientMsgId, which lets the provider drop a repeat; still, a repeat the provider does not recognise is delivered twice.",
            _ => "the provider may already have delivered some of these messages: every recipient it did deliver to gets the message a second time. There is no way to ask the provider which ones arrived. Resend only when a duplicate is better than a missing message.",
        },
        groups: unknown_groups,
        call_rows: unknown_calls,
    };

    let recorded: Vec<VariantFact> = recorded.into_iter().take(facts::MAX_VARIANTS).collect();
    let shown = recorded.len() as u64;
    let total_variants = meta
        .as_ref()
        .map(|m| m.distinct_contents)
        .unwrap_or(shown)
        .max(shown);
    let variants_sentence = if meta.is_none() && recorded.is_empty() {
        "This run did not record its rendered Contents (it was started by an older imcast, or had nothing to send); each recipient's variant id is in the per-recipient file.".to_string()
    } else if total_variants > shown {
        format!(
            "{} distinct Contents; the {} with the most recipients are shown. Every recipient's variant id is in the per-recipient file.",
            fmt_count(total_variants),
            fmt_count(shown)
        )
    } else if total_variants == 1 {
        "Every recipient got the same Content:".to_string()
    } else {
        format!(
            "{} distinct Contents (recipients whose rendered Content and Ext are identical share a variant and its calls):",
            fmt_count(total_variants)
        )
    };

    let files = super::FILE_NAMES
        .iter()
        .filter_map(|name| {
            let what = match *name {
                n if Some(n) == s.files.as_ref().and_then(|f| f.recipients_csv.as_deref()) => {
                    "one row per audience row: line, id, status, message id, attempts, call, variant, error code and message, time (spreadsheet-safe)"
                }
                n if Some(n) == s.files.as_ref().and_then(|f| f.recipients_jsonl.as_deref()) => {
                    "the same rows as JSON lines"
                }
                super::SUMMARY_FILE => "counts per status, calls, errors per code, duration, the busiest window and average rate, and the audit block, as JSON",
                n if Some(n) == s.files.as_ref().and_then(|f| f.variants_csv.as_deref()) => {
                    "each variant id of the per-recipient file with its rendered Content, Ext and recipients"
                }
                super::HTML_FILE => "this page",
                _ => return None,
            };
            Some(FileRow {
                name: (*name).to_string(),
                what: what.to_string(),
            })
        })
        .collect();

    let page = Page {
        version: env!("CARGO_PKG_VERSION"),
        campaign: facts::clip(&run.campaign, facts::MAX_TEXT),
        campaign_file: facts::clip(&file, facts::MAX_TEXT),
        run_id: facts::clip(&run.id, facts::MAX_TEXT),
        status: run.status.to_string(),
        test: run.is_test,
        rows,
        rows_s: fmt_count(rows),
        fields: header_fields(run, s, meta.as_ref(), timeline.as_ref(), &duration),
        duration,
        bar_desc: status_sentence.clone(),
        status_sentence,
        statuses,
        ab_statuses: ab_statuses.clone(),
        ab_variants: s
            .variants
            .iter()
            .map(|(name, counts)| {
                let total: u64 = counts.values().sum();
                AbRow {
                    name: facts::clip(name, facts::MAX_TEXT),
                    total,
                    total_s: fmt_count(total),
                    cells: ab_statuses
                        .iter()
                        .map(|st| {
                            let n = st
                                .parse::<RecipientStatus>()
                                .ok()
                                .and_then(|st| counts.get(&st).copied())
                                .unwrap_or(0);
                            (n, fmt_count(n))
                        })
                        .collect(),
                }
            })
            .collect(),
        calls: Calls {
            planned: s.calls.planned,
            planned_s: fmt_count(s.calls.planned),
            done: s.calls.done,
            done_s: fmt_count(s.calls.done),
            unknown: s.calls.unknown,
            unknown_s: fmt_count(s.calls.unknown),
            attempts: s.calls.attempts,
            attempts_s: fmt_count(s.calls.attempts),
            errors: s
                .errors
                .attempts
                .iter()
                .map(|(c, n)| (facts::clip(c, 80), *n, fmt_count(*n)))
                .collect(),
        },
        chart: timeline.as_ref().map(chart),
        failures: failures.into_iter().collect(),
        failures_sentence,
        failures_other,
        unknown,
        variants: recorded.into_iter().map(variant_view).collect(),
        variants_sentence,
        stages: s
            .stages
            .iter()
            .map(|st| super::StageSummary {
                name: facts::clip(&st.name, facts::MAX_TEXT),
                detail: st
                    .detail
                    .as_deref()
                    .map(|d| facts::clip(d, facts::MAX_TEXT)),
                ..st.clone()
            })
            .collect(),
        files,
        files_note: s.files.as_ref().and_then(|f| f.note.clone()),
    };
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template("report.html", TEMPLATE)
        .map_err(|e| format!("report template: {e}"))?;
    let tmpl = env
        .get_template("report.html")
        .map_err(|e| format!("report template: {e}"))?;
    tmpl.render(&page)
        .map_err(|e| format!("rendering report.html: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps_and_durations() {
        assert_eq!(nice(2600.0), 5000.0);
        assert_eq!(nice(3.0), 5.0);
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(show_duration(0.25), "250 ms");
        assert_eq!(show_duration(3725.2), "1h 2m 5s");
        assert_eq!(pct(1, 3), "33.3%");
        assert_eq!(pct(1, 100_000), "<0.1%");
        assert_eq!(pct(0, 0), "0%");
    }
}
