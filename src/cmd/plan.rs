//! `imcast plan`: the dry run. Counts, grouping, the ETA at the pace a run would use (the lower of
//! the campaign's throttle and the account's share: `run::Settings`), deadline warning, next
//! schedule occurrence, plan hash, rendered samples — human text or `--output json`. The system
//! clock (or `--now`) is read here, at the command edge, and nowhere below. With `--diff REV` the
//! command is `cmd::diff`'s comparison instead.

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{GlobalArgs, PlanArgs, PlanOutput};
use crate::config::RepoPaths;
use crate::exit::{CmdResult, Exit, ExitContext};
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
    next_occurrence: Option<String>,
    contents_in_memory: bool,
    variable_distinct: &'a std::collections::BTreeMap<String, u64>,
    warnings: &'a [String],
    samples: &'a [Sample],
    /// A/B variants (`message.variants`): recipients, calls and a rendered example each.
    #[serde(skip_serializing_if = "<[AbVariant]>::is_empty")]
    variants: &'a [AbVariant],
    /// `holdout:` as written (e.g. `5%`); `counts.holdout` recipients are not sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    holdout: Option<String>,
}

fn summarize<'a>(
    c: &'a Campaign,
    plan: &'a Plan,
    settings: &Settings,
    now: jiff::Timestamp,
    sample: usize,
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
        next_occurrence: c
            .schedule
            .as_ref()
            .and_then(|s| s.next_after(now))
            .map(|t| t.to_string()),
        contents_in_memory: plan.contents_in_memory(),
        variable_distinct: plan.variable_distinct(),
        warnings: plan.warnings(),
        samples: &plan.samples()[..sample.min(plan.samples().len())],
        variants: plan.ab_variants(),
        holdout: c.holdout.map(|h| h.to_string()),
    }
}

fn human(s: &Summary<'_>) -> String {
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
        s.next_occurrence
            .as_deref()
            .map(|t| format!("next {t}"))
            .unwrap_or_else(|| "manual (no upcoming occurrence)".to_string())
    ));
    o.push_str(&format!("plan hash  {}\n", s.plan_hash));
    if let Some(w) = &s.deadline_warning {
        o.push_str(&format!("warning: {w}\n"));
    }
    for w in s.warnings {
        o.push_str(&format!("warning: {w}\n"));
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
    let plan = crate::plan::build(
        &c,
        &PlanOptions {
            extra_suppress: account.suppress.clone(),
        },
    )
    .exit(Exit::Invalid)?;
    let s = summarize(&c, &plan, &settings, now, a.sample);
    match a.output {
        PlanOutput::Text | PlanOutput::Markdown => crate::out!("{}", human(&s)),
        PlanOutput::Json => {
            let j = serde_json::to_string_pretty(&s)
                .context("serialize the plan")
                .exit(Exit::Internal)?;
            crate::outln!("{j}");
        }
    }
    Ok(Exit::Ok)
}
