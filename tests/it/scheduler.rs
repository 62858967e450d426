//! The scheduler on a simulated clock: a real state database and real campaign files in a temp
//! dir, the stand-in campaign source and a fake runner. No test sleeps: the async run loop's
//! test waits (with a time limit) for the runner to report a start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imcast::clock::{Clock, SimClock};
use imcast::daemon::runner::{FakeRunner, RunOutcome, RunRequest, RunStatus, Runner};
use imcast::daemon::source::StandInSource;
use imcast::daemon::state;
use imcast::daemon::{Daemon, DaemonConfig};
use imcast::journal::{ControlRequest, Journal};
use jiff::Timestamp;

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    clock: SimClock,
}

fn t(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

impl Env {
    fn new(start: &str) -> Env {
        // tmpfs when there is one: these tests commit hundreds of occurrences and fsync on a
        // loaded CI disk costs seconds; the semantics under test do not depend on the disk.
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let dir = tmp.path().join("campaigns");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let state = tmp.path().join(".imcast");
        Env {
            dir,
            state,
            clock: SimClock::new(t(start)),
            _tmp: tmp,
        }
    }
    fn write(&self, file: &str, body: &str) {
        std::fs::write(self.dir.join(file), body).expect("write campaign");
    }
    fn daemon(&self, runner: &Arc<FakeRunner>) -> Daemon {
        Daemon::open(
            DaemonConfig::new(&self.dir, &self.state),
            Arc::new(self.clock.clone()),
            Box::new(StandInSource),
            runner.clone(),
        )
        .expect("open daemon")
    }
    fn at(&self, s: &str) {
        self.clock.advance_to(t(s));
    }
    fn conn(&self) -> state::Conn {
        state::open(&self.state).expect("open state")
    }
    fn journal(&self) -> Journal {
        Journal::open(&self.state).expect("open journal")
    }
    /// What `imcast pause|resume|cancel` records, made at the epoch; returns that instant in
    /// seconds (what `state::control_result` takes).
    fn request(&self, campaign: &str, req: ControlRequest) -> i64 {
        self.journal()
            .request_control(
                campaign,
                req,
                Some(&format!("imcast {req}")),
                Timestamp::UNIX_EPOCH,
            )
            .expect("request");
        0
    }
    /// (UTC occurrence, status) for one campaign.
    fn rows(&self, name: &str) -> Vec<(String, String)> {
        state::occurrences(&self.conn(), Some(name))
            .expect("rows")
            .into_iter()
            .map(|r| {
                (
                    Timestamp::from_second(r.occurrence)
                        .expect("ts")
                        .to_string(),
                    r.status,
                )
            })
            .collect()
    }
}

fn cron_campaign(name: &str, cron: &str, tz: &str, extra: &str) -> String {
    format!("name: {name}\nschedule:\n  cron: \"{cron}\"\n  timezone: {tz}\n{extra}")
}

fn finish_all(r: &FakeRunner) {
    for (k, run) in r.runs() {
        if !matches!(run.status, RunStatus::Finished { .. }) {
            r.finish(&k, RunOutcome::Done);
        }
    }
}

fn rows(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn cron_in_shanghai_fires_each_occurrence_once() {
    let env = Env::new("2026-03-01T00:58:00Z");
    env.write(
        "daily.yaml",
        &cron_campaign("daily", "0 9 * * *", "Asia/Shanghai", ""),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    assert!(runner.starts().is_empty(), "not due yet");
    env.at("2026-03-01T01:00:00Z");
    d.tick().expect("tick");
    d.tick().expect("tick again at the same instant");
    env.at("2026-03-01T01:00:30Z");
    d.tick().expect("tick");
    assert_eq!(runner.starts(), vec!["daily@2026-03-01T01:00:00Z"]);
    finish_all(&runner);
    d.tick().expect("tick");
    env.at("2026-03-02T01:00:00Z");
    d.tick().expect("tick");
    assert_eq!(
        env.rows("daily"),
        rows(&[
            ("2026-03-01T01:00:00Z", "done"),
            ("2026-03-02T01:00:00Z", "running")
        ])
    );
}

#[test]
fn at_fires_once_and_campaign_without_schedule_never() {
    let env = Env::new("2026-03-01T00:00:00Z");
    env.write(
        "once.yaml",
        "name: once\nschedule:\n  at: 2026-03-01T09:00:00+08:00\n",
    );
    env.write("manual.yaml", "name: manual\naction: batch\n");
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    for m in 0..200 {
        env.clock.advance(Duration::from_secs(60));
        d.tick().expect("tick");
        if m == 100 {
            finish_all(&runner);
        }
    }
    assert_eq!(runner.starts(), vec!["once@2026-03-01T01:00:00Z"]);
    assert_eq!(env.rows("once"), rows(&[("2026-03-01T01:00:00Z", "done")]));
    assert!(env.rows("manual").is_empty());
}

/// Step the daemon every `step` from `from` to `to`, finishing each run at once.
fn drive(env: &Env, d: &mut Daemon, runner: &FakeRunner, to: &str, step: Duration) {
    let end = t(to);
    while env.clock.now() < end {
        env.clock.advance(step);
        d.tick().expect("tick");
        finish_all(runner);
        d.tick().expect("tick");
    }
}

#[test]
fn dst_new_york_spring_forward_and_fall_back() {
    let env = Env::new("2026-03-08T04:00:00Z");
    env.write(
        "gap.yaml",
        &cron_campaign("gap", "30 2 * * *", "America/New_York", ""),
    );
    env.write(
        "fold.yaml",
        &cron_campaign("fold", "30 1 * * *", "America/New_York", ""),
    );
    env.write(
        "hourly.yaml",
        &cron_campaign("hourly", "0 * * * *", "America/New_York", ""),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    drive(
        &env,
        &mut d,
        &runner,
        "2026-03-09T08:00:00Z",
        Duration::from_secs(900),
    );
    let gap: Vec<String> = env.rows("gap").into_iter().map(|r| r.0).collect();
    // 02:30 does not exist on 2026-03-08: fires once at 03:00 EDT (07:00Z).
    assert_eq!(gap, vec!["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]);
    let hourly = env.rows("hourly");
    assert!(hourly.iter().all(|r| r.1 == "done"), "{hourly:?}");
    // 04:00Z (first sight, due now) .. 08:00Z next day: 29 real hours, none lost to the gap.
    assert_eq!(hourly.len(), 29);

    env.at("2026-11-01T03:00:00Z");
    d.tick().expect("tick");
    finish_all(&runner);
    drive(
        &env,
        &mut d,
        &runner,
        "2026-11-02T08:00:00Z",
        Duration::from_secs(900),
    );
    let fold: Vec<String> = env
        .rows("fold")
        .into_iter()
        .map(|r| r.0)
        .filter(|o| o.starts_with("2026-11"))
        .collect();
    // 01:30 happens twice on 2026-11-01: fires once, at the first (EDT, 05:30Z).
    assert_eq!(fold, vec!["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]);
    let nov_hours = env
        .rows("hourly")
        .into_iter()
        .filter(|r| r.0.as_str() >= "2026-11-01T04:00:00Z" && r.0.as_str() < "2026-11-02T05:00:00Z")
        .count();
    assert_eq!(nov_hours, 25, "fall-back day has 25 real hours, each fires");
}

#[test]
fn dst_berlin_daemon_fires_gap_time_once() {
    let env = Env::new("2026-03-28T23:00:00Z");
    env.write(
        "b.yaml",
        &cron_campaign("b", "30 2 * * *", "Europe/Berlin", ""),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    drive(
        &env,
        &mut d,
        &runner,
        "2026-03-30T02:00:00Z",
        Duration::from_secs(600),
    );
    let got: Vec<String> = env.rows("b").into_iter().map(|r| r.0).collect();
    assert_eq!(got, vec!["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]);
}

#[test]
fn restart_during_a_run_resumes_it_and_after_it_does_not_refire() {
    let env = Env::new("2026-03-01T00:59:00Z");
    env.write(
        "daily.yaml",
        &cron_campaign("daily", "0 9 * * *", "Asia/Shanghai", ""),
    );
    let r1 = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&r1);
    d.tick().expect("tick");
    env.at("2026-03-01T01:00:00Z");
    d.tick().expect("tick");
    assert_eq!(r1.starts(), vec!["daily@2026-03-01T01:00:00Z"]);
    drop(d); // crash mid-run

    env.at("2026-03-01T01:05:00Z");
    let r2 = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&r2);
    d.tick().expect("tick");
    let runs = r2.runs();
    let run = runs.get("daily@2026-03-01T01:00:00Z").expect("resumed");
    assert!(
        run.resumed,
        "the restart resumes the run rather than starting another"
    );
    assert_eq!(r2.starts(), vec!["daily@2026-03-01T01:00:00Z"]);
    finish_all(&r2);
    d.tick().expect("tick");
    drop(d);

    env.at("2026-03-01T01:10:00Z");
    let r3 = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&r3);
    d.tick().expect("tick");
    assert!(
        r3.starts().is_empty(),
        "a finished occurrence never fires again"
    );
    assert_eq!(env.rows("daily"), rows(&[("2026-03-01T01:00:00Z", "done")]));
}

#[test]
fn lateness_cutoff_skips_or_fires_late() {
    // Down across two occurrences: one beyond not_after (skipped_late), one within (fires late).
    let env = Env::new("2026-02-28T23:59:00Z");
    env.write(
        "h.yaml",
        &cron_campaign("h", "0 */2 * * *", "UTC", "  not_after: 90m\n"),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    drop(d);
    env.at("2026-03-01T03:00:00Z"); // 02:00 due 1h ago (ok)
    env.clock.advance(Duration::from_secs(1));
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    assert_eq!(runner.starts(), vec!["h@2026-03-01T02:00:00Z"]);
    finish_all(&runner);
    d.tick().expect("tick");
    drop(d);
    env.at("2026-03-01T05:45:00Z"); // 04:00 due 1h45m ago: too late
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    assert_eq!(runner.starts().len(), 1, "nothing new started");
    assert_eq!(
        env.rows("h"),
        rows(&[
            ("2026-03-01T00:00:00Z", "skipped_late"),
            ("2026-03-01T02:00:00Z", "done"),
            ("2026-03-01T04:00:00Z", "skipped_late")
        ])
    );
    let detail = state::occurrences(&env.conn(), Some("h")).expect("rows")[2]
        .detail
        .clone()
        .expect("detail");
    assert!(detail.contains("not_after 1h 30m"), "{detail}");
}

#[test]
fn new_campaign_fires_only_its_latest_occurrence_within_cutoff() {
    let env = Env::new("2026-03-01T01:30:00Z");
    env.write(
        "m.yaml",
        &cron_campaign("m", "*/10 * * * *", "UTC", "  overlap: queue\n"),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    assert_eq!(runner.starts(), vec!["m@2026-03-01T01:30:00Z"]);
    assert_eq!(env.rows("m").len(), 1);
}

#[test]
fn overlap_skip_records_and_queue_waits() {
    let env = Env::new("2026-03-01T00:05:30Z");
    env.write(
        "s.yaml",
        &cron_campaign("s", "*/10 * * * *", "UTC", "  not_after: 5m\n"),
    );
    env.write(
        "q.yaml",
        &cron_campaign(
            "q",
            "*/10 * * * *",
            "UTC",
            "  not_after: 5m\n  overlap: queue\n",
        ),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T00:10:00Z");
    d.tick().expect("tick");
    env.at("2026-03-01T00:20:00Z");
    d.tick().expect("tick");
    assert_eq!(
        env.rows("s"),
        rows(&[
            ("2026-03-01T00:10:00Z", "running"),
            ("2026-03-01T00:20:00Z", "skipped_overlap")
        ])
    );
    assert_eq!(
        env.rows("q"),
        rows(&[
            ("2026-03-01T00:10:00Z", "running"),
            ("2026-03-01T00:20:00Z", "queued")
        ])
    );
    runner.finish("q@2026-03-01T00:10:00Z", RunOutcome::Done);
    env.at("2026-03-01T00:21:00Z");
    d.tick().expect("tick");
    assert_eq!(
        env.rows("q"),
        rows(&[
            ("2026-03-01T00:10:00Z", "done"),
            ("2026-03-01T00:20:00Z", "running")
        ])
    );
    assert!(runner
        .starts()
        .contains(&"q@2026-03-01T00:20:00Z".to_string()));
}

#[test]
fn quiet_hours_pause_a_run_and_hold_a_due_occurrence() {
    let env = Env::new("2026-03-01T12:59:00Z");
    let quiet =
        "  quiet_hours:\n    from: \"22:00\"\n    to: \"07:00\"\n    timezone: Asia/Shanghai\n";
    env.write(
        "evening.yaml",
        &cron_campaign("evening", "0 21 * * *", "Asia/Shanghai", quiet),
    );
    env.write(
        "late.yaml",
        &cron_campaign(
            "late",
            "0 23 * * *",
            "Asia/Shanghai",
            &format!("  not_after: 10m\n{quiet}"),
        ),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T13:00:00Z"); // 21:00 local
    d.tick().expect("tick");
    let key = "evening@2026-03-01T13:00:00Z";
    assert_eq!(runner.runs()[key].status, RunStatus::Running);
    env.at("2026-03-01T14:00:00Z"); // 22:00: quiet
    d.tick().expect("tick");
    assert_eq!(runner.runs()[key].status, RunStatus::Paused);
    let r = &state::occurrences(&env.conn(), Some("evening")).expect("rows")[0];
    assert_eq!(
        (r.status.as_str(), r.paused_by.as_deref()),
        ("paused", Some("quiet_hours"))
    );
    env.at("2026-03-01T15:00:00Z"); // 23:00: `late` due inside quiet hours
    d.tick().expect("tick");
    assert_eq!(
        env.rows("late"),
        rows(&[("2026-03-01T15:00:00Z", "waiting_quiet")])
    );
    assert!(!runner.runs().contains_key("late@2026-03-01T15:00:00Z"));
    env.at("2026-03-01T23:00:00Z"); // 07:00: open again
    d.tick().expect("tick");
    assert_eq!(runner.runs()[key].status, RunStatus::Running);
    assert_eq!(
        runner.runs()["late@2026-03-01T15:00:00Z"].status,
        RunStatus::Running,
        "a held occurrence starts when quiet hours end, not skipped as late"
    );
}

#[test]
fn pause_resume_cancel_through_the_control_table() {
    let env = Env::new("2026-03-01T00:30:00Z");
    env.write(
        "c.yaml",
        &cron_campaign(
            "c",
            "0 * * * *",
            "UTC",
            "  not_after: 10m\n  overlap: queue\n",
        ),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T01:00:00Z");
    d.tick().expect("tick");
    let k1 = "c@2026-03-01T01:00:00Z";
    assert_eq!(runner.runs()[k1].status, RunStatus::Running);

    let conn = env.conn();
    let id = env.request("c", ControlRequest::Pause);
    env.clock.advance(Duration::from_secs(1));
    d.tick().expect("tick");
    assert_eq!(runner.runs()[k1].status, RunStatus::Paused);
    assert!(state::control_result(&conn, "c", id)
        .expect("q")
        .expect("handled")
        .starts_with("paused"));
    // Due while paused: not decided yet.
    runner.finish(k1, RunOutcome::Done);
    env.at("2026-03-01T02:00:00Z");
    d.tick().expect("tick");
    assert_eq!(env.rows("c"), rows(&[("2026-03-01T01:00:00Z", "done")]));

    env.request("c", ControlRequest::Resume);
    env.at("2026-03-01T02:05:00Z");
    d.tick().expect("tick");
    let k2 = "c@2026-03-01T02:00:00Z";
    assert_eq!(
        runner.runs()[k2].status,
        RunStatus::Running,
        "held occurrence fires on resume within not_after"
    );

    let id = env.request("c", ControlRequest::Cancel);
    d.tick().expect("tick");
    assert!(matches!(
        runner.runs()[k2].status,
        RunStatus::Finished {
            outcome: RunOutcome::Cancelled,
            ..
        }
    ));
    assert!(state::control_result(&conn, "c", id)
        .expect("q")
        .expect("handled")
        .contains(k2));
    // Nothing running now: cancel takes the next occurrence, which then never fires.
    env.request("c", ControlRequest::Cancel);
    d.tick().expect("tick");
    env.at("2026-03-01T03:00:00Z");
    d.tick().expect("tick");
    assert_eq!(
        env.rows("c"),
        rows(&[
            ("2026-03-01T01:00:00Z", "done"),
            ("2026-03-01T02:00:00Z", "cancelled"),
            ("2026-03-01T03:00:00Z", "cancelled")
        ])
    );
    assert!(!runner.runs().contains_key("c@2026-03-01T03:00:00Z"));

    // A campaign the daemon does not know is left for the engine of an `imcast run` of it.
    env.request("nope", ControlRequest::Pause);
    d.tick().expect("tick");
    assert!(env.journal().control_pending("nope").expect("q"));
    assert!(!env.journal().control_pending("c").expect("q"));
}

#[test]
fn stop_file_pauses_everything_until_removed() {
    let env = Env::new("2026-03-01T00:45:00Z");
    env.write(
        "a.yaml",
        &cron_campaign("a", "0 * * * *", "UTC", "  not_after: 10m\n"),
    );
    env.write(
        "b.yaml",
        &cron_campaign("b", "30 * * * *", "UTC", "  not_after: 10m\n"),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T01:00:00Z");
    d.tick().expect("tick");
    std::fs::write(env.state.join("STOP"), "").expect("stop file");
    env.at("2026-03-01T01:00:01Z");
    d.tick().expect("tick");
    assert_eq!(
        runner.runs()["a@2026-03-01T01:00:00Z"].status,
        RunStatus::Paused
    );
    env.at("2026-03-01T01:30:00Z");
    d.tick().expect("tick");
    assert!(env.rows("b").is_empty(), "nothing fires while stopped");
    assert!(d.metrics().render().contains("imcast_stopped 1"));
    std::fs::remove_file(env.state.join("STOP")).expect("rm");
    env.at("2026-03-01T01:31:00Z");
    d.tick().expect("tick");
    assert_eq!(
        runner.runs()["a@2026-03-01T01:00:00Z"].status,
        RunStatus::Running
    );
    assert_eq!(env.rows("b"), rows(&[("2026-03-01T01:30:00Z", "running")]));
}

#[test]
fn edit_remove_and_invalid_files_while_a_run_is_going() {
    let env = Env::new("2026-03-01T00:30:00Z");
    let v1 = cron_campaign(
        "e",
        "0 * * * *",
        "UTC",
        "  not_after: 10m\n  overlap: queue\n",
    );
    env.write("e.yaml", &v1);
    env.write(
        "other.yaml",
        &cron_campaign("other", "0 * * * *", "UTC", "  not_after: 10m\n"),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T01:00:00Z");
    d.tick().expect("tick");
    let k1 = "e@2026-03-01T01:00:00Z";
    assert_eq!(runner.runs()[k1].content.as_deref(), Some(v1.as_str()));

    // Edit: a new schedule; the running run keeps its content, later occurrences follow the edit.
    let v2 = cron_campaign(
        "e",
        "15 * * * *",
        "UTC",
        "  not_after: 10m\n  overlap: queue\n",
    );
    env.write("e.yaml", &v2);
    env.at("2026-03-01T01:10:00Z");
    d.tick().expect("tick");
    assert_eq!(runner.runs()[k1].content.as_deref(), Some(v1.as_str()));
    assert_eq!(runner.runs()[k1].status, RunStatus::Running);
    runner.finish(k1, RunOutcome::Done);
    env.at("2026-03-01T01:15:00Z");
    d.tick().expect("tick");
    let k2 = "e@2026-03-01T01:15:00Z";
    assert_eq!(runner.runs()[k2].content.as_deref(), Some(v2.as_str()));

    // Invalid: reported, skipped; the last good version does not fire; the others keep running.
    env.write("e.yaml", "name: e\nschedule:\n  cron: \"15 * * * *\"\n");
    env.at("2026-03-01T01:20:00Z");
    d.tick().expect("tick");
    let errs: Vec<String> = d.invalid_files().values().cloned().collect();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("schedule.timezone: required"), "{errs:?}");
    assert_eq!(
        runner.runs()[k2].status,
        RunStatus::Running,
        "the run in progress goes on"
    );
    finish_all(&runner);
    env.at("2026-03-01T02:00:00Z");
    d.tick().expect("tick");
    env.at("2026-03-01T02:15:00Z");
    d.tick().expect("tick");
    assert!(!runner.runs().contains_key("e@2026-03-01T02:15:00Z"));
    assert!(runner.runs().contains_key("other@2026-03-01T02:00:00Z"));
    assert!(d
        .metrics()
        .render()
        .contains("imcast_invalid_campaign_files 1"));

    // Removed: no further occurrences; the other campaign goes on.
    std::fs::remove_file(env.dir.join("e.yaml")).expect("rm");
    finish_all(&runner);
    env.at("2026-03-01T03:00:00Z");
    d.tick().expect("tick");
    env.at("2026-03-01T03:15:00Z");
    d.tick().expect("tick");
    assert!(d.invalid_files().is_empty());
    assert_eq!(d.campaign_names(), vec!["other".to_string()]);
    assert_eq!(
        env.rows("e"),
        rows(&[
            ("2026-03-01T01:00:00Z", "done"),
            ("2026-03-01T01:15:00Z", "done")
        ])
    );
    assert!(runner.runs().contains_key("other@2026-03-01T03:00:00Z"));
}

// ---- the commands, as real processes ----

use std::process::Command;

use crate::common::{bin, OutputWithin};

fn redact(s: &str, env: &Env) -> String {
    s.replace(&env.dir.display().to_string(), "[DIR]")
}

/// What `spec::load` needs besides `name:` and `schedule:` (the schedule command validates fully).
const BODY: &str = "version: 1\nprovider: { app_id: 1, region: cn-north-1 }\naction: batch\nsender: 1\naudience: { ids: [1] }\nmessage: { type: text, text: hi }\n";

fn schedule_env() -> Env {
    let env = Env::new("2026-03-01T00:00:00Z");
    let full = |f: &str, s: String| env.write(f, &format!("{BODY}{s}"));
    full(
        "daily.yaml",
        cron_campaign(
            "daily",
            "30 2 * * *",
            "America/New_York",
            "  quiet_hours:\n    from: \"22:00\"\n    to: \"07:00\"\n    timezone: America/New_York\n",
        ),
    );
    full(
        "once.yaml",
        "name: once\nschedule:\n  at: 2026-03-08T09:00:00+08:00\n  not_after: 15m\n".into(),
    );
    full("manual.yaml", "name: manual\n".into());
    full(
        "broken.yaml",
        "name: broken\nschedule:\n  cron: \"0 9 * *\"\n  timezone: UTC\n".into(),
    );
    // Some history.
    let conn = env.conn();
    state::upsert_campaign(&conn, "daily", "daily.yaml", None, 0).expect("upsert");
    state::record_occurrence(
        &conn,
        "daily",
        t("2026-03-06T07:30:00Z").as_second(),
        "done",
        "k1",
        "h",
        0,
        None,
    )
    .expect("rec");
    state::record_occurrence(
        &conn,
        "daily",
        t("2026-03-07T07:30:00Z").as_second(),
        "skipped_late",
        "k2",
        "h",
        0,
        None,
    )
    .expect("rec");
    env
}

#[test]
fn schedule_command_lists_next_in_zone_and_utc_and_past_outcomes() {
    let env = schedule_env();
    let out = Command::new(bin())
        .arg("schedule")
        .arg(&env.dir)
        .arg("--state-dir")
        .arg(&env.state)
        .args(["--now", "2026-03-07T12:00:00Z"])
        .output_limited()
        .expect("run imcast schedule");
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid file makes the exit code 2"
    );
    let text = redact(&String::from_utf8_lossy(&out.stdout), &env);
    // 02:30 on 2026-03-08 does not exist in New York: shown at 03:00 EDT.
    assert!(
        text.contains("2026-03-08 03:00:00 -04:00   2026-03-08T07:00:00Z"),
        "{text}"
    );
    insta::assert_snapshot!("schedule_human", text);

    let out = Command::new(bin())
        .arg("schedule")
        .arg(&env.dir)
        .arg("--state-dir")
        .arg(&env.state)
        .args([
            "--now",
            "2026-03-07T12:00:00Z",
            "--output",
            "json",
            "--next",
            "1",
        ])
        .output_limited()
        .expect("run imcast schedule");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let daily = &v["campaigns"][0];
    assert_eq!(daily["name"], "daily");
    assert_eq!(daily["next"][0]["utc"], "2026-03-08T07:00:00Z");
    assert_eq!(daily["past"][1]["status"], "skipped_late");
    assert_eq!(v["invalid"][0]["file"], "broken.yaml");
}

#[test]
fn control_command_names_unknown_campaigns() {
    let env = schedule_env();
    let out = Command::new(bin())
        .args(["pause", "dayly", "--no-wait", "--state-dir"])
        .arg(&env.state)
        .output_limited()
        .expect("run imcast pause");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown campaign \"dayly\""), "{err}");
    assert!(err.contains("did you mean \"daily\""), "{err}");

    let out = Command::new(bin())
        .args(["cancel", "daily", "--no-wait", "--state-dir"])
        .arg(&env.state)
        .output_limited()
        .expect("run imcast cancel");
    assert_eq!(out.status.code(), Some(0));
    let pending = env.journal().pending_controls().expect("q");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request, ControlRequest::Cancel);
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "`imcast prune` (a real process) ages rows by the system clock: the fixture must too"
)]
fn prune_deletes_old_finished_occurrences_only() {
    let env = Env::new("2026-03-01T00:00:00Z");
    let conn = env.conn();
    let now = jiff::Timestamp::now().as_second();
    state::upsert_campaign(&conn, "p", "p.yaml", None, 0).expect("upsert");
    state::record_occurrence(&conn, "p", now - 100 * 86400, "done", "a", "h", 0, None)
        .expect("rec");
    state::record_occurrence(&conn, "p", now - 95 * 86400, "queued", "b", "h", 0, None)
        .expect("rec");
    state::record_occurrence(&conn, "p", now - 10 * 86400, "done", "c", "h", 0, None).expect("rec");
    // Journal runs: an old finished one (pruned with its rows), an old unfinished one and a
    // recent finished one (kept).
    let at = |days: i64| {
        jiff::Timestamp::from_second(now - days * 86400)
            .expect("ts")
            .to_string()
    };
    for (key, (id, status, days)) in [
        ("old", "finished", 100),
        ("stuck", "interrupted", 100),
        ("new", "finished", 10),
    ]
    .into_iter()
    .enumerate()
    {
        let key = key as i64 + 1;
        conn.as_sqlite()
            .expect("sqlite")
            .execute(
            "INSERT INTO runs(id, campaign, plan_hash, action, status, flags, created_at, updated_at, finished_at, audit, limit_count, limit_window_ms, total_calls, key)
             VALUES (?1, 'p', 'h', 'batch', ?2, '{}', ?3, ?3, ?3, '{}', 1, 1000, 1, ?4)",
            rusqlite::params![id, status, at(days), key],
        )
        .expect("insert run");
        // A recipient row: key = the run's key << 32 | its audience line.
        conn.as_sqlite()
            .expect("sqlite")
            .execute(
                "INSERT INTO recipients(rk, id, raw_id, status) VALUES (?1, 1, '1', 'sent')",
                [(key << 32) | 1],
            )
            .expect("insert recipient");
        conn.as_sqlite()
            .expect("sqlite")
            .execute(
            "INSERT INTO calls(run_id, seq, variant, receivers, state, updated_at) VALUES (?1, 0, 'v', '[1]', 'done', ?2)",
            rusqlite::params![id, at(days)],
        )
        .expect("insert call");
    }
    let out = Command::new(bin())
        .args(["prune", "--older-than", "90d", "--state-dir"])
        .arg(&env.state)
        .output_limited()
        .expect("run imcast prune");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pruned 1 run (1 call, 1 recipient row), 1 schedule occurrence"),
        "{stdout}"
    );
    let check = env.conn();
    let mut st = check
        .as_sqlite()
        .expect("sqlite")
        .prepare("SELECT id FROM runs ORDER BY id")
        .expect("q");
    let runs: Vec<String> = st
        .query_map([], |r| r.get(0))
        .expect("q")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(runs, vec!["new", "stuck"]);
    let left_rows: Vec<i64> = env
        .conn()
        .as_sqlite()
        .expect("sqlite")
        .prepare("SELECT rk >> 32 FROM recipients ORDER BY rk")
        .expect("q")
        .query_map([], |r| r.get(0))
        .expect("q")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        left_rows,
        vec![2, 3],
        "the pruned run's rows are gone, the others kept"
    );
    let left: Vec<String> = state::occurrences(&env.conn(), Some("p"))
        .expect("rows")
        .into_iter()
        .map(|r| r.run_key)
        .collect();
    assert_eq!(left, vec!["b", "c"]);
}

pub mod http {
    /// GET /metrics with a plain TCP request (keeps the test free of an async runtime).
    pub fn blocking_get(port: u16) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}

/// A [`FakeRunner`] that tells a watcher how many runs it has started.
struct Announcing {
    inner: Arc<FakeRunner>,
    started: tokio::sync::watch::Sender<usize>,
}

impl Runner for Announcing {
    fn start(&self, req: RunRequest) -> Result<(), String> {
        let r = self.inner.start(req);
        self.started.send_modify(|n| *n += 1);
        r
    }
    fn status(&self, run_key: &str) -> RunStatus {
        self.inner.status(run_key)
    }
    fn pause(&self, run_key: &str) {
        self.inner.pause(run_key)
    }
    fn resume(&self, run_key: &str) {
        self.inner.resume(run_key)
    }
    fn cancel(&self, run_key: &str) {
        self.inner.cancel(run_key)
    }
    fn shutdown(&self) {
        self.inner.shutdown()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_loop_fires_on_sim_clock_and_stops_gracefully() {
    let env = Env::new("2026-03-01T00:00:00Z");
    env.write("a.yaml", "name: a\nschedule:\n  at: 2026-03-01T00:05:00Z\n");
    let runner = Arc::new(FakeRunner::new());
    let (started, mut starts) = tokio::sync::watch::channel(0usize);
    let announcing = Arc::new(Announcing {
        inner: runner.clone(),
        started,
    });
    let d = Daemon::open(
        DaemonConfig::new(&env.dir, &env.state),
        Arc::new(env.clock.clone()),
        Box::new(StandInSource),
        announcing,
    )
    .expect("open daemon");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(d.run(rx));
    // The SimClock advances one second per tick: the start comes at the simulated 00:05, after
    // 300 ticks on the blocking pool. Waited for, not slept on (a minute at most).
    tokio::time::timeout(Duration::from_secs(60), starts.wait_for(|n| *n > 0))
        .await
        .expect("the run loop started the occurrence within a minute")
        .expect("the runner is alive");
    assert_eq!(runner.starts(), vec!["a@2026-03-01T00:05:00Z"]);
    tx.send(true).expect("send shutdown");
    task.await.expect("join").expect("daemon run ok");
    assert_eq!(
        runner.shutdowns(),
        1,
        "the runner is asked to stop gracefully"
    );
    assert_eq!(env.rows("a"), rows(&[("2026-03-01T00:05:00Z", "running")]));
    // The roster: written at open, refreshed on the loop, marked stopped on the clean shutdown.
    let roster = state::roster(&env.conn()).expect("roster");
    assert_eq!(roster.len(), 1, "{roster:?}");
    let me = &roster[0];
    assert_eq!(me.pid, i64::from(std::process::id()));
    assert_eq!(me.started_at, t("2026-03-01T00:00:00Z").as_second());
    assert!(
        me.last_seen >= t("2026-03-01T00:05:00Z").as_second(),
        "refreshed on the loop: {me:?}"
    );
    assert_eq!(me.stopped_at, Some(me.last_seen), "{me:?}");
    assert!(!me.alive(me.last_seen));
}

/// `imcast schedule` lists the daemon of the state directory and whether it looks alive; an
/// occurrence it was running when it went silent (a kill -9: no clean stop) gets the note that it
/// resumes when that daemon restarts.
#[test]
fn schedule_lists_the_daemons_and_notes_a_run_held_by_a_silent_one() {
    let env = Env::new("2026-03-01T00:00:00Z");
    env.write(
        "a.yaml",
        &format!("{BODY}name: a\nschedule:\n  at: 2026-03-01T00:05:00Z\n"),
    );
    let runner = Arc::new(FakeRunner::new());
    let mut d = env.daemon(&runner);
    d.tick().expect("tick");
    env.at("2026-03-01T00:05:00Z");
    d.tick().expect("tick");
    assert_eq!(runner.starts(), vec!["a@2026-03-01T00:05:00Z"]);
    env.at("2026-03-01T00:05:10Z");
    d.tick().expect("tick: refreshes last_seen");
    // Then silence: no clean stop (dropping a Daemon is what a kill -9 leaves in the store).
    drop(d);
    let node = state::roster(&env.conn()).expect("roster")[0].node.clone();
    let schedule = |now: &str, json: bool| {
        let mut c = Command::new(bin());
        c.arg("schedule")
            .arg(&env.dir)
            .arg("--state-dir")
            .arg(&env.state)
            .args(["--now", now]);
        if json {
            c.args(["--output", "json"]);
        }
        let out = c.output_limited().expect("run imcast schedule");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let redact_daemon = |s: &str| {
        // The host only where it is shown (a short host name could match other text).
        let host = state::host_name();
        redact(s, &env)
            .replace(&format!("pid {}", std::process::id()), "pid [PID]")
            .replace(&format!("  {host} (pid"), "  [HOST] (pid")
            .replace(&format!("by {host} (pid"), "by [HOST] (pid")
            .replace(&format!("on {host} (pid"), "on [HOST] (pid")
            .replace(&node[..8], "[NODE]")
            .replace(env!("CARGO_PKG_VERSION"), "[VERSION]")
    };
    // Within the window (last seen 00:05:10, refresh every 10 s: alive until 00:05:40).
    let v: serde_json::Value =
        serde_json::from_str(&schedule("2026-03-01T00:05:40Z", true)).expect("json");
    assert_eq!(v["daemons"][0]["alive"], true, "{v}");
    assert_eq!(v["daemons"][0]["alive_window_seconds"], 30, "{v}");
    assert!(v["campaigns"][0]["past"][0].get("note").is_none(), "{v}");
    // One second later it does not look alive, and its running occurrence says so.
    let v: serde_json::Value =
        serde_json::from_str(&schedule("2026-03-01T00:05:41Z", true)).expect("json");
    assert_eq!(v["daemons"][0]["alive"], false, "{v}");
    assert_eq!(v["daemons"][0]["last_seen"], "2026-03-01T00:05:10Z", "{v}");
    assert_eq!(v["daemons"][0]["pid"], i64::from(std::process::id()), "{v}");
    let past = &v["campaigns"][0]["past"][0];
    assert_eq!(past["status"], "running", "{v}");
    assert_eq!(past["node"], node.as_str(), "{v}");
    assert!(
        past["note"]
            .as_str()
            .is_some_and(|n| n.contains("resumes when that daemon restarts")),
        "{v}"
    );
    let text = redact_daemon(&schedule("2026-03-01T00:15:00Z", false));
    insta::assert_snapshot!("schedule_daemons_human", text);
}

mod exactly_once {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Advance(u64),
        Restart,
        FinishAll,
        Pause,
        Resume,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1u64..5400).prop_map(Step::Advance),
            1 => Just(Step::Restart),
            2 => Just(Step::FinishAll),
            1 => Just(Step::Pause),
            1 => Just(Step::Resume),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Whatever the interleaving of time, restarts, pauses and run ends: no occurrence is
        /// started fresh twice, every started run is recorded, and every recorded occurrence is
        /// a real occurrence of the schedule.
        #[test]
        fn no_occurrence_starts_twice(steps in proptest::collection::vec(step(), 1..40)) {
            let env = Env::new("2026-03-01T00:00:00Z");
            env.write("p.yaml", &cron_campaign("p", "*/20 * * * *", "Europe/Berlin", "  not_after: 30m\n  overlap: queue\n"));
            let mut runners = vec![Arc::new(FakeRunner::new())];
            let mut d = env.daemon(&runners[0]);
            let conn = env.conn();
            for s in steps {
                match s {
                    Step::Advance(secs) => env.clock.advance(Duration::from_secs(secs)),
                    Step::Restart => {
                        drop(d);
                        runners.push(Arc::new(FakeRunner::new()));
                        d = env.daemon(runners.last().expect("runner"));
                    }
                    Step::FinishAll => finish_all(runners.last().expect("runner")),
                    Step::Pause => { env.request("p", ControlRequest::Pause); }
                    Step::Resume => { env.request("p", ControlRequest::Resume); }
                }
                d.tick().expect("tick");
            }
            let mut fresh: std::collections::BTreeMap<String, u32> = Default::default();
            for r in &runners {
                for (k, run) in r.runs() {
                    if !run.resumed {
                        *fresh.entry(k).or_default() += 1;
                    }
                }
            }
            for (k, n) in &fresh {
                prop_assert_eq!(*n, 1, "{} started fresh {} times", k, n);
            }
            let recorded = state::occurrences(&conn, Some("p")).expect("rows");
            for k in fresh.keys() {
                prop_assert!(recorded.iter().any(|r| &r.run_key == k), "{} started but not recorded", k);
            }
            for r in &recorded {
                prop_assert_eq!(r.occurrence % 1200, 0, "not an occurrence of */20: {}", r.occurrence);
            }
        }
    }
}
