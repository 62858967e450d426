//! `imcast status FILE`: the latest real run of a campaign, from the journal, and where its report
//! page is (`report.html`, or how to write it when it is not there); the latest `--test-to` runs
//! are listed apart (a test run is never shown as "the" run). `--mock` shows the mock runs
//! (`imcast run --mock` keeps them in `<state>/mock/`, reports in `reports/mock/`); a campaign
//! with only mock runs says so and how to see them. The helpers here (`paths_for`,
//! `reports_dir_for`, `mock_hint`) are shared with `imcast report`.
//!
//! A scheduled run also shows its occurrence in the daemons' record: which daemon (host, pid)
//! holds it and, after a takeover, from whom (read only; a record that cannot be read is a
//! warning). When daemons are registered in that record (`sched_roster`), status lists them
//! (host, pid, last seen, alive) as `imcast schedule` does; nothing when there are none.
//!
//! The campaign's name comes from `crate::spec::load`; a file that no longer validates (e.g. an
//! audience file was moved since the run) still shows its runs through a minimal read of the
//! top-level `name:` key, so status and report keep working on a broken campaign.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::Deserialize;

use crate::cli::{GlobalArgs, OutputFormat, StatusArgs};
use crate::config::{RepoPaths, MOCK_DIR};
use crate::exit::{CmdResult, Exit, ExitContext, Failure};
use crate::journal::{Journal, RecipientStatus, RunInfo, DB_FILE};
use crate::report::{report_dir, summary, HTML_FILE};
use crate::send::describe_counts;

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

/// The campaign's name: from the validated campaign, else a minimal read of `name:`.
pub(crate) fn campaign_name(file: &Path) -> Result<String, Failure> {
    let spec_error = match crate::spec::load(file, &crate::spec::LoadOptions::default()) {
        Ok(c) => return Ok(c.name),
        Err(e) => e,
    };
    tracing::debug!("{spec_error}; reading only its name");
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read campaign file {}", file.display()))
        .exit(Exit::Invalid)?;
    // A file that does not even parse: the campaign loader's located, plain-worded error.
    let n: NameOnly = serde_saphyr::from_str(&text)
        .map_err(|_| anyhow!(spec_error))
        .exit(Exit::Invalid)?;
    Ok(n.name)
}

/// The journal for a campaign file, if its state database exists (never creates a SQLite file):
/// with `[state] url` in its `imcast.toml` the PostgreSQL store's (not for `mock` runs, whose
/// journal stays in the state directory: [`crate::journal::journal_store`]).
pub(crate) fn open_existing(paths: &RepoPaths, mock: bool) -> Result<Option<Journal>, Failure> {
    let url = if mock {
        None
    } else {
        paths.account_config().exit(Exit::Invalid)?.state_url
    };
    let store = crate::journal::journal_store(url.as_ref(), &paths.state_dir, mock);
    if !crate::journal::journal_exists(&store) {
        return Ok(None);
    }
    Journal::open_state(&store).map(Some).map_err(|e| {
        let exit = e.exit();
        Failure::new(exit, e)
    })
}

/// The paths `status`/`report` read: the campaign's, or with `--mock` its mock runs' (state in
/// `<state>/mock/` unless `--state-dir` names one). Reports are placed per run
/// ([`reports_dir_for`]), so the reports folder here is the campaign's own.
pub(crate) fn paths_for(
    file: &Path,
    state: &crate::cli::StateArgs,
    report_dir: Option<&Path>,
    mock: bool,
) -> (RepoPaths, RepoPaths) {
    let base = RepoPaths::discover(
        file,
        state.config.as_deref(),
        state.state_dir.as_deref(),
        report_dir,
    );
    let mut read = base.clone();
    if mock && state.state_dir.is_none() {
        read.state_dir = read.state_dir.join(MOCK_DIR);
    }
    (base, read)
}

/// The reports folder a run's report belongs in: `--report-dir` if given; else the campaign's
/// `reports/`, or `reports/mock/` for a mock run — decided from the run itself (its recorded
/// flags say `mock`), so a mock run's report never lands among the real campaign's however its
/// state directory was named.
pub(crate) fn reports_dir_for(
    run: &RunInfo,
    base: &RepoPaths,
    mock: bool,
    report_dir_given: bool,
) -> PathBuf {
    if report_dir_given || !(run.flags.mock || mock) {
        base.reports_dir.clone()
    } else {
        base.reports_dir.join(MOCK_DIR)
    }
}

/// How many mock runs of `name` the mock state directory under `base` holds (0 when none).
pub(crate) fn mock_runs(base: &RepoPaths, name: &str) -> usize {
    let dir = base.state_dir.join(MOCK_DIR);
    if !dir.join(DB_FILE).is_file() {
        return 0;
    }
    Journal::open(&dir)
        .and_then(|j| j.runs(name))
        .map(|r| r.len())
        .unwrap_or(0)
}

/// What to say when a campaign has no real runs but has mock ones: `command` is `status` or
/// `report`.
pub(crate) fn mock_hint(
    base: &RepoPaths,
    name: &str,
    file: &Path,
    command: &str,
) -> Option<String> {
    let n = mock_runs(base, name);
    let which = if n == 1 { "it" } else { "the latest" };
    let does = match command {
        "report" => format!("writes the report of {which}"),
        _ => format!("shows {which}"),
    };
    (n > 0).then(|| {
        format!(
            "It has {} (`imcast run --mock`, state in {}): `imcast {command} {} --mock` {does}.",
            crate::output::count(n as u64, "mock run", "mock runs"),
            base.state_dir.join(MOCK_DIR).display(),
            file.display(),
        )
    })
}

/// Test runs listed by `status` (newest first).
const TEST_RUNS_SHOWN: usize = 5;

/// A `--test-to` run as `status` lists it.
#[derive(serde::Serialize)]
struct TestRun {
    run_id: String,
    status: String,
    started_at: String,
    counts: std::collections::BTreeMap<RecipientStatus, u64>,
}

/// The latest [`TEST_RUNS_SHOWN`] `--test-to` runs of `name`, newest first (never "the" run).
fn test_runs(j: &Journal, name: &str) -> Result<Vec<TestRun>, Failure> {
    let runs = j.runs(name).exit(Exit::Internal)?;
    runs.into_iter()
        .filter(|r| r.is_test)
        .take(TEST_RUNS_SHOWN)
        .map(|r| {
            Ok(TestRun {
                counts: j.counts(&r.id).exit(Exit::Internal)?,
                run_id: r.id,
                status: r.status.to_string(),
                started_at: r.created_at.to_string(),
            })
        })
        .collect()
}

/// The human lines for the test runs (nothing when there are none).
fn print_test_runs(tests: &[TestRun]) {
    if tests.is_empty() {
        return;
    }
    crate::outln!("Test runs (--test-to: sent to the listed ids only, not the campaign's run):");
    for t in tests {
        crate::outln!(
            "  {} {} (started {}): {}",
            t.run_id,
            t.status,
            t.started_at,
            describe_counts(&t.counts)
        );
    }
}

/// A scheduled run's occurrence in the daemons' record (the state directory's, or the store's
/// with `[state] url`): which daemon (host, pid) holds it and, after a takeover, from whom it was
/// taken over. None for an ad-hoc run or an occurrence not recorded; a record that cannot be read
/// is a warning, not a failure.
fn daemon_occurrence(
    paths: &RepoPaths,
    run: &RunInfo,
) -> Option<crate::daemon::state::OccurrenceRow> {
    use crate::daemon::state;
    let key = run.occurrence.as_deref()?;
    let store = paths.account_config().ok()?.state_store(&paths.state_dir);
    let conn = match &store {
        crate::config::StateStore::Sqlite(dir) => state::open_existing(dir),
        crate::config::StateStore::Postgres(_) => state::open_store(&store).map(Some),
    };
    conn.and_then(|c| {
        c.map(|c| state::occurrence_by_key(&c, &run.campaign, key))
            .transpose()
    })
    .map(Option::flatten)
    .unwrap_or_else(|e| {
        tracing::warn!("the daemons' record of this occurrence is not shown: {e}");
        None
    })
}

/// The daemons registered in the daemons' record (the state directory's, or the store's with
/// `[state] url`) as `imcast schedule` lists them; empty when there are none, for `--mock`, or
/// when the record cannot be read (a warning).
fn daemons(
    paths: &RepoPaths,
    mock: bool,
    now: jiff::Timestamp,
) -> Vec<crate::daemon::view::DaemonView> {
    use crate::daemon::state;
    if mock {
        return Vec::new();
    }
    let Ok(config) = paths.account_config() else {
        return Vec::new();
    };
    let store = config.state_store(&paths.state_dir);
    let conn = match &store {
        crate::config::StateStore::Sqlite(dir) => state::open_existing(dir),
        crate::config::StateStore::Postgres(_) => state::open_store(&store).map(Some),
    };
    match conn.and_then(|c| c.map(|c| state::roster(&c)).transpose()) {
        Ok(roster) => crate::daemon::view::daemon_views(&roster.unwrap_or_default(), now),
        Err(e) => {
            tracing::warn!("the daemons on the state store are not shown: {e}");
            Vec::new()
        }
    }
}

/// The human lines for the daemons (nothing when there are none).
fn print_daemons(daemons: &[crate::daemon::view::DaemonView]) {
    if !daemons.is_empty() {
        crate::out!("{}", crate::daemon::view::render_daemons(daemons));
    }
}

pub fn run(_g: &GlobalArgs, args: &StatusArgs) -> CmdResult {
    let name = campaign_name(&args.file)?;
    let (base, paths) = paths_for(
        &args.file,
        &args.state,
        args.report_dir.as_deref(),
        args.mock,
    );
    let journal = open_existing(&paths, args.mock)?;
    // The latest real run; `--test-to` runs are listed apart, never as "the" run.
    let run = match &journal {
        Some(j) => j.latest_run(&name, false).exit(Exit::Internal)?,
        None => None,
    };
    let tests = match &journal {
        Some(j) => test_runs(j, &name)?,
        None => Vec::new(),
    };
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    let daemons = daemons(&base, args.mock, now);
    let (Some(j), Some(run)) = (journal, run) else {
        let hint = if args.mock {
            None
        } else {
            mock_hint(&base, &name, &args.file, "status")
        };
        match args.output {
            OutputFormat::Json => {
                let mut v = serde_json::json!({ "campaign": name, "run": null });
                if !args.mock {
                    v["mock_runs"] = mock_runs(&base, &name).into();
                }
                v["test_runs"] = serde_json::to_value(&tests).exit(Exit::Internal)?;
                if !daemons.is_empty() {
                    v["daemons"] = serde_json::to_value(&daemons).exit(Exit::Internal)?;
                }
                crate::outln!("{v}")
            }
            OutputFormat::Human => {
                crate::outln!(
                    "Campaign {name:?} has no {}runs yet (state: {}).",
                    if args.mock { "mock " } else { "" },
                    paths.state_dir.display()
                );
                if let Some(h) = hint {
                    crate::outln!("{h}");
                }
                print_test_runs(&tests);
                print_daemons(&daemons);
            }
        }
        return Ok(Exit::Ok);
    };
    let reports_dir = reports_dir_for(&run, &base, args.mock, args.report_dir.is_some());
    let s = summary(&j, &run).exit(Exit::Internal)?;
    let html = report_dir(&reports_dir, &run.campaign, &run.id).join(HTML_FILE);
    let html = html.is_file().then_some(html);
    // Who is sending the run and until when their lease holds (None: nobody holds it).
    let lease = j
        .lease(&run.id)
        .exit(Exit::Internal)?
        .filter(|l| l.holder.is_some());
    let occurrence = if args.mock {
        None
    } else {
        daemon_occurrence(&base, &run)
    };
    match args.output {
        OutputFormat::Json => {
            let mut v = serde_json::to_value(&s).exit(Exit::Internal)?;
            if let Some(o) = v.as_object_mut() {
                o.insert(
                    "report_html".into(),
                    html.as_ref().map(|p| p.display().to_string()).into(),
                );
                o.insert(
                    "test_runs".into(),
                    serde_json::to_value(&tests).exit(Exit::Internal)?,
                );
                if let Some(r) = &occurrence {
                    o.insert(
                        "daemon".into(),
                        serde_json::json!({
                            "status": r.status,
                            "host": r.host,
                            "pid": r.pid,
                            "node": r.node,
                            "taken_over": crate::daemon::state::taken_over(r.detail.as_deref()),
                        }),
                    );
                }
                if !daemons.is_empty() {
                    o.insert(
                        "daemons".into(),
                        serde_json::to_value(&daemons).exit(Exit::Internal)?,
                    );
                }
                o.insert(
                    "lease".into(),
                    match &lease {
                        Some(l) => serde_json::json!({
                            "host": l.holder.as_ref().map(|h| h.0.clone()),
                            "pid": l.holder.as_ref().map(|h| h.1),
                            "expires_at": l.expires_at.map(|t| t.to_string()),
                            "fence": l.fence,
                        }),
                        None => serde_json::Value::Null,
                    },
                );
            }
            let v = serde_json::to_string_pretty(&v).exit(Exit::Internal)?;
            crate::outln!("{v}");
        }
        OutputFormat::Human => {
            crate::outln!(
                "Campaign {name:?}: {}run {} is {} ({}, {}).",
                if run.flags.mock { "mock " } else { "" },
                run.id,
                run.status,
                run.action,
                run.action.api_name()
            );
            crate::outln!("  started   {}", run.created_at);
            if let Some(f) = run.finished_at {
                crate::outln!("  finished  {f}");
            }
            if let Some(r) = &run.stop_reason {
                crate::outln!("  reason    {r}");
            }
            if let Some((l, (host, pid))) =
                lease.as_ref().and_then(|l| Some((l, l.holder.as_ref()?)))
            {
                let until = match l.expires_at {
                    Some(t) if t <= now => format!(
                        "its lease expired at {t}: the next `imcast run` takes the run over"
                    ),
                    Some(t) => format!("lease until {t}"),
                    None => "lease held while that process runs".to_string(),
                };
                crate::outln!(
                    "  held by   pid {pid} on {host} ({until}, fence {})",
                    l.fence
                );
            }
            if let Some(r) = &occurrence {
                let by = match (&r.host, r.pid) {
                    (Some(h), Some(pid)) => format!(" by {h} (pid {pid})"),
                    _ => String::new(),
                };
                crate::outln!("  daemon    occurrence {}{by}", r.status);
                if let Some(t) = crate::daemon::state::taken_over(r.detail.as_deref()) {
                    crate::outln!("            {t}");
                }
            }
            crate::outln!("  recipients {}", describe_counts(&s.counts));
            crate::outln!(
                "  calls     {} done, {} unknown, {} planned, {}",
                s.calls.done,
                s.calls.unknown,
                s.calls.planned,
                crate::output::count(s.calls.attempts, "attempt", "attempts")
            );
            crate::outln!("  plan hash {}", run.plan_hash);
            // The commands to suggest carry `--mock` for a mock run.
            let mock = if run.flags.mock { " --mock" } else { "" };
            match &html {
                Some(p) => crate::outln!("  report    {}", p.display()),
                None => crate::outln!(
                    "  report    not written yet; `imcast report {}{mock}` writes it",
                    args.file.display()
                ),
            }
            if run.status.is_unfinished() {
                crate::outln!("Resume with: imcast run {}{mock}", args.file.display());
            } else if s
                .counts
                .get(&RecipientStatus::Unknown)
                .copied()
                .unwrap_or(0)
                > 0
            {
                crate::outln!(
                    "Recipients with an unknown outcome are not resent; `imcast run {} --resend-unknown` resends them (may duplicate).",
                    args.file.display()
                );
            }
            print_test_runs(&tests);
            print_daemons(&daemons);
        }
    }
    Ok(Exit::Ok)
}
