//! `imcast plan`: the dry run. Counts, grouping, the ETA at the pace a run would use (the lower of
//! the campaign's throttle and the account's share: `run::Settings`, which also words the warning
//! when the throttle asks for more than the share), deadline warning, next schedule occurrence (or
//! a past `at:` and whether the daemon would still fire it), plan hash, rendered samples, the
//! rejected rows (text: the first [`guard::SHOWN`]; JSON: every one, streamed from a temporary
//! file) — human text or `--output json`. What `run` would refuse (`guard::check`) is refused here
//! too, after the plan is shown: exit 2. The system
//! clock (or `--now`) is read here, at the command edge, and nowhere below. With `--diff REV` the
//! command is `cmd::diff`'s comparison instead.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{GlobalArgs, PlanArgs, PlanOutput};
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext};
use crate::guard::{self, AllRejected, Rejected, RejectedRow};
use crate::journal::RunFlags;
use crate::plan::{AbVariant, Counts, Plan, PlanOptions, Sample};
use crate::run::{LimitSource, Settings};
use crate::spec::{Campaign, LoadOptions};

#[derive(Debug, Serialize)]
struct Summary<'a> {
    campaign: &'a str,
    file: String,
    action: &'a str,
    api: &'a str,
    app_id: u64,
    endpoint: String,
    sender: u64,
    plan_hash: &'a str,
    counts: &'a Counts,
    /// The limit the run is paced by (the lower of the campaign's throttle and the account's
    /// share in `imcast.toml`), per window.
    throttle_limit: u64,
    throttle_window_secs: f64,
    /// The pace is the action's documented limit (no throttle, no `imcast.toml` limit or reserve).
    throttle_is_default: bool,
    /// The pace for people, with where it comes from.
    #[serde(skip)]
    throttle: String,
    eta_secs: u64,
    /// With quiet hours: wall-clock seconds from the start (next occurrence, else now) to the
    /// end, quiet periods included, and when that is.
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_with_quiet_hours_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quiet_hours: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_at: Option<String>,
    deadline_warning: Option<String>,
    /// The campaign's throttle asks for more than the account's share (the run uses the share).
    throttle_warning: Option<String>,
    next_occurrence: Option<String>,
    /// An `at:` that is past: how long ago, and whether the daemon would still fire it.
    schedule_past: Option<String>,
    contents_in_memory: bool,
    variable_distinct: &'a std::collections::BTreeMap<String, u64>,
    warnings: Vec<String>,
    /// Why a run would refuse this audience (`guard.*`, `audience.allow_empty`): then `plan`
    /// exits 2, as `run` would.
    refused: Vec<String>,
    /// Every invalid row, in file order (human text: the first few).
    rejected: AllRejected,
    samples: &'a [Sample],
    /// A/B variants (`message.variants`): recipients, calls and a rendered example each.
    #[serde(skip_serializing_if = "<[AbVariant]>::is_empty")]
    variants: &'a [AbVariant],
    /// `holdout:` as written (e.g. `5%`); `counts.holdout` recipients are not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    holdout: Option<String>,
    /// The run's stages in order (a canary and the rest); absent: one stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stages: Vec<StageLine>,
}

/// One stage of the run as `plan` shows it.
#[derive(Debug, Serialize)]
struct StageLine {
    name: String,
    recipients: u64,
    calls: u64,
    first_call: u64,
    /// A wave's instant (UTC) and the zones whose local time it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    zones: Vec<String>,
    /// At the run's pace.
    eta_secs: u64,
    /// After the stage: wait this long, then continue only if (failed + unknown) / sent ≤ the
    /// ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    gate_wait_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate_max_failure_ratio: Option<f64>,
}

/// A warning for each wave that cannot finish at the run's pace before the next one starts.
fn wave_warnings(c: &Campaign, plan: &Plan, settings: &Settings) -> Vec<String> {
    let stages = plan.stages();
    let mut out = Vec::new();
    for (a, b) in stages.iter().zip(stages.iter().skip(1)) {
        let (Some(at), Some(next)) = (a.at, b.at) else {
            continue;
        };
        let eta = settings.eta(a.recipients, a.calls);
        let gap = at.duration_until(next);
        if jiff::SignedDuration::try_from(eta).unwrap_or(jiff::SignedDuration::MAX) > gap {
            out.push(format!(
                "{} ({}) needs about {} at {} but {} starts {} later: it will still be sending, and the next wave waits for it (raise the limit, or expect later deliveries than {} local time)",
                a.name,
                a.zones.join(", "),
                humantime::format_duration(Duration::from_secs(eta.as_secs_f64().ceil() as u64)),
                settings.describe_pace(),
                b.name,
                humantime::format_duration(Duration::from_secs(gap.as_secs().max(0) as u64)),
                c.local_time.map(|t| t.strftime("%H:%M").to_string()).unwrap_or_default()
            ));
        }
    }
    out
}

fn stage_lines(c: &Campaign, plan: &Plan, settings: &Settings) -> Vec<StageLine> {
    crate::stages::run_stages(c, plan.stages())
        .into_iter()
        .map(|s| StageLine {
            eta_secs: settings
                .eta(s.stage.recipients, s.stage.calls)
                .as_secs_f64()
                .ceil() as u64,
            name: match (&c.rollout, s.stage.name.as_str()) {
                (Some(r), crate::stages::CANARY) => format!("canary {}", r.canary),
                _ => s.stage.name.clone(),
            },
            recipients: s.stage.recipients,
            calls: s.stage.calls,
            first_call: s.stage.first_call,
            at: s.stage.at.map(|t| t.to_string()),
            zones: s.stage.zones.clone(),
            gate_wait_secs: s.gate.map(|g| g.wait.as_secs()),
            gate_max_failure_ratio: s.gate.map(|g| g.max_failure_ratio),
        })
        .collect()
}

fn summarize<'a>(
    c: &'a Campaign,
    plan: &'a Plan,
    settings: &Settings,
    now: jiff::Timestamp,
    sample: usize,
    rejected: AllRejected,
) -> Summary<'a> {
    let eta = settings.eta(plan.counts().valid, plan.counts().calls);
    let start = c
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(now))
        .unwrap_or(now);
    let finish = settings.finish_with_quiet(start, eta);
    Summary {
        campaign: &c.name,
        file: c.path.display().to_string(),
        action: c.action.as_str(),
        api: c.action.api_name(),
        app_id: c.app_id,
        endpoint: c.endpoint.to_string(),
        sender: c.sender,
        plan_hash: plan.hash(),
        counts: plan.counts(),
        throttle_limit: settings.pace.limit,
        throttle_window_secs: settings.pace.window.as_secs_f64(),
        throttle_is_default: settings.pace_source == LimitSource::Default,
        throttle: settings.describe_pace(),
        eta_secs: eta.as_secs_f64().ceil() as u64,
        eta_with_quiet_hours_secs: finish.map(|f| start.duration_until(f).as_secs().max(0) as u64),
        quiet_hours: c.quiet_hours.as_ref().map(|q| q.describe()),
        finish_at: finish.map(|f| f.to_string()),
        deadline_warning: settings.deadline_warning(now, eta),
        throttle_warning: settings.throttle_warning(),
        schedule_past: c.schedule.as_ref().and_then(|s| s.describe_past(now)),
        next_occurrence: c
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(now))
            .map(|t| t.to_string()),
        contents_in_memory: plan.contents_in_memory(),
        variable_distinct: plan.variable_distinct(),
        warnings: plan
            .warnings()
            .iter()
            .cloned()
            .chain(wave_warnings(c, plan, settings))
            .collect(),
        refused: settings
            .guard
            .as_ref()
            .map(|g| guard::check(g, plan.counts()))
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect(),
        rejected,
        samples: &plan.samples()[..sample.min(plan.samples().len())],
        variants: plan.ab_variants(),
        holdout: c.holdout.map(|h| h.to_string()),
        stages: stage_lines(c, plan, settings),
    }
}

/// The first rejected rows for people, one a line, and how many more.
fn rejected_lines(first: &[RejectedRow], total: u64, all_hint: &str) -> Vec<String> {
    let mut v: Vec<String> = first
        .iter()
        .map(|r| format!("line {}: {}", r.line, r.reason))
        .collect();
    let more = total.saturating_sub(first.len() as u64);
    if more > 0 {
        v.push(format!("… and {more} more ({all_hint})"));
    }
    v
}

fn human(s: &Summary<'_>, first: &[RejectedRow]) -> String {
    let n = s.counts;
    let dur = |secs: u64| humantime::format_duration(Duration::from_secs(secs)).to_string();
    let mut o = String::new();
    o.push_str(&format!("campaign   {} ({})\n", s.campaign, s.file));
    o.push_str(&format!(
        "send       {} via {} to app {} at {} as sender {}\n",
        s.action, s.api, s.app_id, s.endpoint, s.sender
    ));
    o.push_str(&format!(
        "audience   {}: {} valid, {} invalid, {} duplicate, {} suppressed\n",
        crate::output::count(n.total, "row", "rows"),
        n.valid,
        n.invalid,
        n.duplicate,
        n.suppressed
    ));
    for v in s.variants {
        o.push_str(&format!(
            "variant    {}: weight {}, {}, {}, {} distinct\n",
            v.name,
            v.weight,
            crate::output::count(v.recipients, "recipient", "recipients"),
            crate::output::count(v.calls, "call", "calls"),
            v.distinct_contents
        ));
        if let Some(x) = &v.example {
            o.push_str(&format!(
                "             e.g. {} (line {}): {}",
                x.id, x.line, x.content
            ));
            if !x.ext.is_empty() {
                let ext = serde_json::to_string(&x.ext).unwrap_or_default();
                o.push_str(&format!("  ext {ext}"));
            }
            o.push('\n');
        }
    }
    if let Some(h) = &s.holdout {
        o.push_str(&format!(
            "holdout    {h}: {} not sent (status holdout)\n",
            crate::output::count(n.holdout, "recipient", "recipients")
        ));
    }
    o.push_str(&format!(
        "contents   {} distinct{}\n",
        n.distinct_contents,
        if s.contents_in_memory {
            ""
        } else {
            " (re-rendered at send time)"
        }
    ));
    o.push_str(&format!(
        "calls      {} ({})\n",
        n.calls,
        crate::output::count(n.messages, "message", "messages")
    ));
    for (i, st) in s.stages.iter().enumerate() {
        let when = match &st.at {
            Some(at) => format!(" at {at} ({})", st.zones.join(", ")),
            None => String::new(),
        };
        o.push_str(&format!(
            "{}{}. {}{when}: {}, {}, about {}",
            if i == 0 { "stages     " } else { "           " },
            i + 1,
            st.name,
            crate::output::count(st.recipients, "recipient", "recipients"),
            crate::output::count(st.calls, "call", "calls"),
            dur(st.eta_secs)
        ));
        if let (Some(w), Some(r)) = (st.gate_wait_secs, st.gate_max_failure_ratio) {
            o.push_str(&format!(
                "; then wait {} and continue only if at most {}% failed or unknown",
                dur(w),
                r * 100.0
            ));
        }
        o.push('\n');
    }
    o.push_str(&format!(
        "throttle   {} → about {}\n",
        s.throttle,
        dur(s.eta_secs)
    ));
    if let (Some(wall), Some(q), Some(end)) =
        (s.eta_with_quiet_hours_secs, &s.quiet_hours, &s.finish_at)
    {
        o.push_str(&format!(
            "quiet      {q}: no calls start then → about {} from the start, ending around {end}\n",
            dur(wall)
        ));
    }
    o.push_str(&format!(
        "schedule   {}\n",
        match (&s.schedule_past, &s.next_occurrence) {
            (Some(past), _) => past.clone(),
            (None, Some(t)) => format!("next {t}"),
            (None, None) => "manual (no upcoming occurrence)".to_string(),
        }
    ));
    o.push_str(&format!("plan hash  {}\n", s.plan_hash));
    if let Some(w) = &s.throttle_warning {
        o.push_str(&format!("warning: {w}\n"));
    }
    if let Some(w) = &s.deadline_warning {
        o.push_str(&format!("warning: {w}\n"));
    }
    for w in &s.warnings {
        o.push_str(&format!("warning: {w}\n"));
    }
    if n.invalid > 0 {
        o.push_str(&format!(
            "rejected   {}:\n",
            crate::output::count(n.invalid, "row", "rows")
        ));
        for l in rejected_lines(first, n.invalid, "--output json lists every one") {
            o.push_str(&format!("  {l}\n"));
        }
    }
    if !s.samples.is_empty() {
        o.push_str("first recipients:\n");
        for x in s.samples {
            let v = x
                .variant_name
                .as_ref()
                .map(|n| format!(" [{n}]"))
                .unwrap_or_default();
            o.push_str(&format!("  {} (line {}){v}: {}", x.id, x.line, x.content));
            if !x.ext.is_empty() {
                let ext = serde_json::to_string(&x.ext).unwrap_or_default();
                o.push_str(&format!("  ext {ext}"));
            }
            o.push('\n');
        }
    }
    o
}

pub fn run(g: &GlobalArgs, a: &PlanArgs) -> CmdResult {
    if let Some(rev) = &a.diff {
        return crate::cmd::diff::run(g, a, rev);
    }
    if a.output == PlanOutput::Markdown {
        return Err(anyhow::anyhow!(
            "--output markdown is for comparing with a revision: add --diff REV (e.g. --diff origin/main)"
        ))
        .exit(Exit::Invalid);
    }
    let now = crate::cmd::diff::now_arg(a.now.as_deref())?;
    let c = crate::spec::load(
        &a.file,
        &LoadOptions {
            allow_endpoints: a.allow_endpoint.clone(),
        },
    )
    .exit(Exit::Invalid)?;
    let account = RepoPaths::discover(&a.file, a.state.config.as_deref(), None, None)
        .account_config()
        .exit(Exit::Invalid)?;
    // What a run would use: the ETA and the deadline warning are the run's.
    let settings = Settings::resolve(&c, &account, &RunFlags::default(), None);
    let json = a.output == PlanOutput::Json;
    let mut rejected = if json {
        Rejected::keep_all()
            .context("create a temporary file for the rejected rows")
            .exit(Exit::Internal)?
    } else {
        Rejected::new()
    };
    let plan = crate::plan::build_observed(
        &c,
        &PlanOptions {
            extra_suppress: account.suppress.clone(),
            // The waves of the next occurrence (else of a run started now).
            local_date: crate::stages::wave_date(
                &c,
                c.schedule.as_ref().and_then(|s| s.next_after(now)),
                now,
            ),
        },
        &mut |e| rejected.observe(e),
    )
    .exit(Exit::Invalid)?;
    let first = rejected.first.clone();
    let all = rejected
        .all()
        .context("read back the rejected rows")
        .exit(Exit::Internal)?;
    let s = summarize(&c, &plan, &settings, now, a.sample, all);
    // --retry-failed: what a follow-up run would send again (see `run::prepare::retry_preview`).
    let retry = if a.retry_failed {
        let paths = RepoPaths::discover(
            &a.file,
            a.state.config.as_deref(),
            a.state.state_dir.as_deref(),
            None,
        );
        Some(crate::run::prepare::retry_preview(
            &crate::journal::journal_store(settings.state_url.as_ref(), &paths.state_dir, false),
            &c.name,
            None,
            &a.file,
        )?)
    } else {
        None
    };
    match a.output {
        PlanOutput::Text | PlanOutput::Markdown => {
            crate::out!("{}", human(&s, &first));
            if let Some(r) = &retry {
                crate::outln!("retry      {r}");
            }
        }
        PlanOutput::Json => {
            /// The plan's fields and, with --retry-failed, `retry` beside them (streamed: the
            /// rejected rows are not collected in memory).
            #[derive(serde::Serialize)]
            struct WithRetry<'a, T: serde::Serialize> {
                #[serde(flatten)]
                plan: &'a T,
                #[serde(skip_serializing_if = "Option::is_none")]
                retry: Option<serde_json::Value>,
            }
            let retry = retry.as_ref().map(|r| {
                serde_json::json!({
                    "run_id": r.run_id,
                    "recipients": r.retryable_total(),
                    "by_code": r.retryable,
                    "not_retried_failed_by_code": r.other,
                    "unknown": r.unknown,
                })
            });
            crate::output::write_json(&WithRetry { plan: &s, retry });
        }
    }
    if let Some(g) = &settings.guard {
        let refused = guard::check(g, plan.counts());
        if !refused.is_empty() {
            return Err(anyhow::anyhow!(
                "{}\n`imcast run` would refuse it the same way; nothing was sent.",
                guard::describe(&a.file, &refused)
            ))
            .exit(Exit::Invalid);
        }
    }
    Ok(Exit::Ok)
}
