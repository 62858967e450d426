//! FailedReceiver re-queueing: receivers a BatchSendMessage answer refused are sent again in later
//! calls of the same Content, up to `retry.max_attempts` tries each, and survive crashes and
//! resumes without being lost or sent twice. Against the in-process fake transport on a
//! simulated clock (seeded faults, real SQLite journals, real child processes for the crashes)
//! and against the mock provider over HTTP.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imcast::action::Action;
use imcast::clock::{Clock, SharedClock, SimClock, SystemClock};
use imcast::config::{BreakerSettings, Limit, RepoPaths};
use imcast::exit::Exit;
use imcast::journal::{
    Journal, Opened, RecipientRow, RecipientStatus, ResumeOptions, RunStatus, SeedRow,
    SharedJournal,
};
use imcast::mock::{self, MockConfig};
use imcast::run::{run_campaign, Request};
use imcast::send::fake::{FakeTransport, Faults};
use imcast::send::{Call, StopReason, StopToken};
use serde_json::Value;

use crate::common::OutputWithin;
use crate::sender::{statuses, t0, AwaitBlocking, Setup};

/// `users` valid ids (from 10_000) in calls of `per_call`, the calls cycling through `variants`
/// Contents (payload = the variant's text, the same for every call of it).
fn plan(users: u64, per_call: usize, variants: usize) -> (Vec<SeedRow>, Vec<Call<String>>) {
    let ids: Vec<u64> = (0..users).map(|i| 10_000 + i).collect();
    let mut rows = Vec::new();
    let mut calls = Vec::new();
    for (seq, chunk) in ids.chunks(per_call).enumerate() {
        let variant = format!("v{}", seq % variants.max(1));
        for &id in chunk {
            rows.push(SeedRow {
                line: rows.len() as u64 + 2,
                id: Some(id),
                raw_id: None,
                status: RecipientStatus::Pending,
                call_seq: Some(seq as u64),
                variant: Some(variant.clone()),
                variant_name: None,
                note: None,
            });
        }
        calls.push(Call {
            seq: seq as u64,
            variant: variant.clone(),
            receivers: chunk.to_vec(),
            payload: format!("hello from {variant}"),
        });
    }
    (rows, calls)
}

fn batch_setup() -> Setup {
    Setup::new(Action::Batch, Limit::new(12_000, Duration::from_secs(60)))
}

fn rows(j: &SharedJournal, run: &str) -> BTreeMap<u64, RecipientRow> {
    j.with_blocking(|j| j.recipients(run))
        .expect("rows")
        .into_iter()
        .filter_map(|r| Some((r.id?, r)))
        .collect()
}

/// The run's calls numbered after the plan's (the re-sends): (seq, variant, receivers).
fn extra_calls(j: &SharedJournal, run: &str, planned: u64) -> Vec<(u64, String, Vec<u64>)> {
    j.with_blocking(|j| j.calls(run))
        .expect("calls")
        .into_iter()
        .filter(|c| c.seq >= planned)
        .map(|c| (c.seq, c.variant, c.receivers))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_percent_failed_receiver_all_end_sent_with_their_attempts() {
    let s = batch_setup();
    let (seed_rows, calls) = plan(20_000, 500, 3);
    let (j, o) = s.open(
        "requeue",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    let fake = Arc::new(FakeTransport::new(
        Action::Batch,
        Faults {
            seed: 3,
            failed_receiver: 0.03,
            ..Faults::default()
        },
    ));
    let mut cfg = s.cfg(&run, "requeue");
    cfg.max_in_flight = 4;
    cfg.retry_max_attempts = 5;
    // A strict breaker: 3% refusals that retries fix must not trip it.
    cfg.breaker = BreakerSettings {
        consecutive_failures: 3,
        window_calls: 10,
        max_failure_ratio: 0.02,
    };
    let end = s.run(&j, cfg, fake.clone(), &calls, StopToken::new()).await;
    assert_eq!(end.reason, StopReason::Completed, "{end:?}");
    assert_eq!(end.status, RunStatus::Finished);
    assert_eq!(end.exit(), Exit::Ok);
    assert_eq!(end.counts[&RecipientStatus::Sent], 20_000, "{end:?}");

    let refused = fake.refused();
    assert!(
        (450..=750).contains(&refused.len()),
        "about 3% refused: {}",
        refused.len()
    );
    let delivered = fake.delivered();
    assert_eq!(delivered.len(), 20_000, "everyone delivered");
    assert!(
        delivered.values().all(|&n| n == 1),
        "nobody delivered twice"
    );
    assert!(fake.max_call() <= 500, "a call of {}", fake.max_call());
    assert_eq!(
        fake.overlaps(),
        Vec::<u64>::new(),
        "a receiver in two calls at once"
    );

    // The report's attempts are the requests that carried each recipient.
    let carried = fake.carried();
    let rs = rows(&j, &run);
    for (id, r) in &rs {
        assert_eq!(r.status, RecipientStatus::Sent);
        assert_eq!(Some(&r.attempts), carried.get(id), "attempts of {id}");
        assert_eq!(r.attempts > 1, refused.contains(id), "{r:?}");
    }
    assert!(
        rs.values().any(|r| r.attempts >= 3),
        "some were refused twice"
    );

    // Re-sends carry one Content each, with company where possible.
    let extra = extra_calls(&j, &run, calls.len() as u64);
    assert!(!extra.is_empty());
    for (seq, variant, ids) in &extra {
        for id in ids {
            let plan_variant = seed_rows
                .iter()
                .find(|r| r.id == Some(*id))
                .and_then(|r| r.variant.clone());
            assert_eq!(plan_variant.as_ref(), Some(variant), "call {seq}: {id}");
            assert_eq!(rs[id].variant.as_ref(), Some(variant));
        }
    }
    let resent: usize = extra.iter().map(|(_, _, ids)| ids.len()).sum();
    assert!(
        extra.len() * 5 < resent,
        "{} re-send calls for {resent} receivers: not merged",
        extra.len()
    );
    let summary = j
        .with_blocking(|j| {
            let info = j.run(&run).expect("query").expect("run");
            imcast::report::summary(j, &info)
        })
        .expect("summary");
    assert_eq!(summary.calls.resend_calls, extra.len() as u64);
    assert_eq!(summary.calls.planned, calls.len() as u64);
}

#[tokio::test]
async fn sticky_refusals_fail_after_max_attempts_and_the_rest_are_sent() {
    let s = batch_setup();
    let (seed_rows, calls) = plan(3_000, 500, 2);
    let (j, o) = s.open(
        "sticky",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    // Ids the provider never accepts, the last one alone at the end of the plan.
    let sticky: BTreeSet<u64> = [10_000, 10_001, 10_777, 11_500, 12_999].into();
    let fake = Arc::new(FakeTransport::new(
        Action::Batch,
        Faults {
            seed: 9,
            failed_receiver: 0.03,
            refuse_always: sticky.clone(),
            ..Faults::default()
        },
    ));
    let mut cfg = s.cfg(&run, "sticky");
    cfg.max_in_flight = 3;
    cfg.retry_max_attempts = 5;
    let end = s.run(&j, cfg, fake.clone(), &calls, StopToken::new()).await;
    assert_eq!(end.status, RunStatus::Finished, "{end:?}");
    assert_eq!(end.exit(), Exit::Incomplete, "failed recipients: exit 3");
    assert_eq!(end.counts[&RecipientStatus::Failed], sticky.len() as u64);
    assert_eq!(
        end.counts[&RecipientStatus::Sent],
        3_000 - sticky.len() as u64
    );
    let carried = fake.carried();
    for (id, r) in rows(&j, &run) {
        if sticky.contains(&id) {
            assert_eq!(r.status, RecipientStatus::Failed);
            assert_eq!(r.error_code.as_deref(), Some("FailedReceiver"));
            assert_eq!(r.attempts, 5, "{r:?}");
            assert_eq!(carried[&id], 5, "sent exactly 5 times");
            assert!(
                r.error_message
                    .as_deref()
                    .is_some_and(|m| m.contains("5 tries")),
                "{r:?}"
            );
        } else {
            assert_eq!(r.status, RecipientStatus::Sent, "{r:?}");
        }
    }
    assert!(fake.delivered().values().all(|&n| n == 1));
    assert_eq!(fake.overlaps(), Vec::<u64>::new());
}

#[tokio::test]
async fn max_attempts_one_fails_refused_receivers_at_once() {
    let s = batch_setup();
    let (seed_rows, calls) = plan(1_000, 500, 1);
    let (j, o) = s.open(
        "once",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    let fake = Arc::new(FakeTransport::new(
        Action::Batch,
        Faults {
            seed: 5,
            failed_receiver: 0.03,
            ..Faults::default()
        },
    ));
    let mut cfg = s.cfg(&run, "once");
    cfg.retry_max_attempts = 1;
    let end = s.run(&j, cfg, fake.clone(), &calls, StopToken::new()).await;
    assert_eq!(end.status, RunStatus::Finished);
    assert_eq!(
        end.counts[&RecipientStatus::Failed],
        fake.refused().len() as u64
    );
    assert_eq!(fake.requests(), 2, "nothing sent again");
}

#[tokio::test]
async fn deadline_expires_receivers_still_waiting_for_a_re_send() {
    // Refused receivers wait for their back-off; the deadline comes first: they end `expired`
    // (final, not lost), never sent twice.
    let s = batch_setup();
    let (seed_rows, calls) = plan(2_000, 500, 1);
    let (j, o) = s.open(
        "deadline",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    let fake = Arc::new(FakeTransport::new(
        Action::Batch,
        Faults {
            seed: 21,
            failed_receiver: 0.05,
            ..Faults::default()
        },
    ));
    let mut cfg = s.cfg(&run, "deadline");
    cfg.retry_max_attempts = 5;
    // The deadline falls before the first re-sent receiver's back-off ends.
    cfg.deadline = Some(s.clock.now() + jiff::SignedDuration::from_millis(1));
    cfg.backoff_base = Duration::from_secs(3600);
    cfg.backoff_max = Duration::from_secs(3600);
    let end = s
        .run(&j, cfg.clone(), fake.clone(), &calls, StopToken::new())
        .await;
    assert_eq!(end.reason, StopReason::Deadline, "{end:?}");
    let refused = fake.refused();
    assert!(!refused.is_empty());
    let st = statuses(&j, &run);
    for (id, status) in &st {
        if refused.contains(id) {
            assert_eq!(*status, RecipientStatus::Expired, "{id}");
        } else if fake.delivered().contains_key(id) {
            assert_eq!(*status, RecipientStatus::Sent, "{id}");
        }
    }
    assert!(fake.delivered().values().all(|&n| n == 1));
}

#[tokio::test]
async fn stop_while_receivers_wait_then_resume_sends_them_once() {
    let s = batch_setup();
    let (seed_rows, calls) = plan(2_000, 500, 2);
    let (j, o) = s.open(
        "resume",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    let log = s.state.parent().expect("root").join("deliveries.log");
    let faults = Faults {
        seed: 13,
        failed_receiver: 0.03,
        ..Faults::default()
    };
    let fake = Arc::new(
        FakeTransport::new(Action::Batch, faults.clone())
            .with_delivery_log(&log)
            .expect("log"),
    );
    let mut cfg = s.cfg(&run, "resume");
    cfg.retry_max_attempts = 5;
    cfg.backoff_base = Duration::from_secs(3600);
    cfg.backoff_max = Duration::from_secs(3600);
    // Stop as soon as the plan's calls are made: the refused wait an hour for their back-off.
    let stop = StopToken::new();
    let watcher = {
        let (stop, fake) = (stop.clone(), fake.clone());
        let n = calls.len() as u64;
        tokio::spawn(async move {
            while fake.requests() < n {
                tokio::task::yield_now().await;
            }
            stop.stop();
        })
    };
    let end = s.run(&j, cfg, fake.clone(), &calls, stop).await;
    watcher.await.expect("watcher");
    assert_eq!(end.reason, StopReason::Interrupted, "{end:?}");
    let refused = fake.refused();
    assert!(!refused.is_empty());
    let before = rows(&j, &run);
    for id in &refused {
        let r = &before[id];
        assert_eq!(r.status, RecipientStatus::Pending, "{r:?}");
        assert_eq!(r.error_code.as_deref(), Some("FailedReceiver"));
        assert_eq!(r.attempts, 1);
    }
    drop(j);

    // Resume: the refused are found again through their plan calls and sent once.
    let (j, o) = s.open(
        "resume",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    assert!(matches!(o, Opened::Resumed { .. }), "{o:?}");
    let fake2 = Arc::new(
        FakeTransport::new(Action::Batch, Faults { seed: 14, ..faults })
            .with_delivery_log(&log)
            .expect("log"),
    );
    let mut cfg = s.cfg(&run, "resume");
    cfg.retry_max_attempts = 5;
    let end = s
        .run(&j, cfg, fake2.clone(), &calls, StopToken::new())
        .await;
    assert_eq!(end.status, RunStatus::Finished, "{end:?}");
    assert_eq!(end.counts[&RecipientStatus::Sent], 2_000);
    let carried2 = fake2.carried();
    assert!(
        carried2.keys().all(|id| refused.contains(id)),
        "the resumed session only sent the refused"
    );
    let after = rows(&j, &run);
    for id in &refused {
        assert!(after[id].attempts >= 2, "{:?}", after[id]);
        assert_eq!(after[id].attempts, 1 + carried2[id], "{:?}", after[id]);
    }
    let delivered = read_log(&log);
    assert_eq!(delivered.len(), 2_000);
    assert!(delivered.values().all(|&n| n == 1), "nobody twice");
}

fn read_log(path: &Path) -> BTreeMap<u64, u32> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *m.entry(l.parse::<u64>().expect("id")).or_default() += 1;
    }
    m
}

// ---- crashes between a refusal and its re-send (real child processes) ------------------------

const CHILD_STATE: &str = "IMCAST_TEST_REQUEUE_STATE";
const CHILD_MODE: &str = "IMCAST_TEST_REQUEUE_MODE";

fn crash_setup(state: &Path, dir: tempfile::TempDir) -> Setup {
    Setup {
        _dir: dir,
        state: state.to_path_buf(),
        clock: SimClock::new(t0()),
        action: Action::Batch,
        limit: Limit::new(12_000, Duration::from_secs(60)),
    }
}

fn crash_faults(seed: u64) -> Faults {
    Faults {
        seed,
        failed_receiver: 0.03,
        ..Faults::default()
    }
}

/// Child half of the crash tests: sends with refusals until the mode's crash aborts it.
#[test]
#[ignore = "run by crash_between_refusal_and_resend_then_resume in a child process"]
fn requeue_crash_child() {
    let (Ok(state), Ok(mode)) = (std::env::var(CHILD_STATE), std::env::var(CHILD_MODE)) else {
        return;
    };
    let state = PathBuf::from(state);
    let s = crash_setup(&state, tempfile::tempdir().expect("tempdir"));
    let (seed_rows, calls) = plan(2_000, 100, 2);
    let (j, o) = s.open(
        "crash",
        "h1",
        &seed_rows,
        calls.len() as u64,
        ResumeOptions::default(),
    );
    let run = o.run().id.clone();
    let mut faults = crash_faults(17);
    match mode.as_str() {
        "resend_before" => faults.abort_on_resend = Some(1),
        "resend_after" => {
            faults.abort_on_resend = Some(1);
            faults.abort_after_processing = true;
        }
        _ => {} // after_requeue: IMCAST_FAILPOINT does it
    }
    let fake = Arc::new(
        FakeTransport::new(Action::Batch, faults)
            .with_delivery_log(&state.join("deliveries.log"))
            .expect("log"),
    );
    let mut cfg = s.cfg(&run, "crash");
    cfg.retry_max_attempts = 5;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(s.run(&j, cfg, fake, &calls, StopToken::new()));
}

#[test]
fn crash_between_refusal_and_resend_then_resume() {
    for mode in ["after_requeue", "resend_before", "resend_after"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join(".imcast");
        std::fs::create_dir_all(&state).expect("mkdir");
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"));
        child
            .args([
                "--exact",
                "requeue::requeue_crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_STATE, &state)
            .env(CHILD_MODE, mode);
        if mode == "after_requeue" {
            child.env("IMCAST_FAILPOINT", "after_requeue:2");
        } else {
            child.env_remove("IMCAST_FAILPOINT");
        }
        let out = child.output_limited().expect("spawn child");
        assert!(
            !out.status.success(),
            "{mode}: the child should have aborted"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("IMCAST_FAILPOINT=after_requeue")
                || stderr.contains("fake provider: aborting"),
            "{mode}: {stderr}"
        );

        // What the crash left: refused receivers still pending in the journal.
        let s = crash_setup(&state, dir);
        let (seed_rows, calls) = plan(2_000, 100, 2);
        let waiting: BTreeSet<u64> = {
            let j = Journal::open(&state).expect("journal");
            let run = j
                .latest_run("crash", false)
                .expect("query")
                .expect("a run")
                .id;
            j.recipients(&run)
                .expect("rows")
                .into_iter()
                .filter(|r| {
                    r.status == RecipientStatus::Pending
                        && r.error_code.as_deref() == Some("FailedReceiver")
                })
                .filter_map(|r| r.id)
                .collect()
        };
        assert!(!waiting.is_empty(), "{mode}: refused receivers waited");

        let (j, o) = s.open(
            "crash",
            "h1",
            &seed_rows,
            calls.len() as u64,
            ResumeOptions::default(),
        );
        let Opened::Resumed { recovered, run } = o else {
            panic!("{mode}: expected a resume, got {o:?}")
        };
        let fake = Arc::new(
            FakeTransport::new(Action::Batch, crash_faults(18))
                .with_delivery_log(&state.join("deliveries.log"))
                .expect("log"),
        );
        let mut cfg = s.cfg(&run.id, "crash");
        cfg.retry_max_attempts = 5;
        let end = s
            .run(&j, cfg, fake.clone(), &calls, StopToken::new())
            .await_blocking();
        assert_eq!(end.status, RunStatus::Finished, "{mode}: {end:?}");
        assert_eq!(end.counts[&RecipientStatus::Pending], 0);

        let delivered = read_log(&state.join("deliveries.log"));
        assert!(
            delivered.values().all(|&n| n == 1),
            "{mode}: sent twice: {:?}",
            delivered
                .iter()
                .filter(|(_, n)| **n > 1)
                .collect::<Vec<_>>()
        );
        let st = statuses(&j, &run.id);
        assert_eq!(st.len(), 2_000);
        let unknown: BTreeSet<u64> = st
            .iter()
            .filter(|(_, s)| **s == RecipientStatus::Unknown)
            .map(|(id, _)| *id)
            .collect();
        for (id, status) in &st {
            match status {
                RecipientStatus::Sent => {
                    assert_eq!(delivered.get(id), Some(&1), "{mode}: sent {id}")
                }
                RecipientStatus::Unknown => {}
                other => panic!("{mode}: {id} ended {other}"),
            }
        }
        match mode {
            "after_requeue" => {
                assert_eq!(recovered.unknown_calls, 0, "{mode}: nothing was in flight");
                assert!(unknown.is_empty(), "{mode}");
                let rs = rows(&j, &run.id);
                for id in &waiting {
                    assert_eq!(rs[id].status, RecipientStatus::Sent, "{mode}");
                    assert!(rs[id].attempts >= 2, "{mode}: {:?}", rs[id]);
                }
            }
            _ => {
                // The re-send in flight at the crash: its receivers are unknown, never resent;
                // delivered by it only when the provider had processed it.
                assert_eq!(recovered.unknown_calls, 1, "{mode}");
                assert!(!unknown.is_empty() && unknown.is_subset(&waiting), "{mode}");
                for id in &unknown {
                    let n = delivered.get(id).copied().unwrap_or(0);
                    if mode == "resend_before" {
                        assert_eq!(n, 0, "{mode}: {id}");
                    }
                    assert!(n <= 1, "{mode}: {id}");
                }
                if mode == "resend_after" {
                    assert!(
                        unknown.iter().any(|id| delivered.contains_key(id)),
                        "{mode}: the provider had processed the re-send"
                    );
                }
                assert_eq!(
                    fake.carried()
                        .keys()
                        .filter(|id| unknown.contains(id))
                        .count(),
                    0,
                    "{mode}: unknown receivers were not sent again"
                );
                for id in waiting.difference(&unknown) {
                    assert_eq!(st[id], RecipientStatus::Sent, "{mode}: {id}");
                }
            }
        }
    }
}

// ---- against the mock provider ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_failed_receiver_rate_three_percent_everyone_sent_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("imcast.toml"),
        "[limits.batch]\nlimit = 1000000\nwindow = \"1s\"\n",
    )
    .expect("toml");
    let n = 5_000u64;
    let mut csv = String::from("user_id,grp\n");
    for i in 0..n {
        csv.push_str(&format!("{},g{}\n", 200_000 + i, i % 3));
    }
    std::fs::write(root.join("a.csv"), csv).expect("audience");
    let file = root.join("refused.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: refused\n\
         provider: { app_id: 666675, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }\n\
         action: batch\nsender: 10001\naudience:\n  csv: a.csv\n  id_column: user_id\n\
         message:\n  type: text\n  text: \"Hello {{ grp }}\"\nretry: { max_attempts: 5 }\n",
    )
    .expect("campaign");
    let rec = root.join("record.jsonl");
    let m = mock::start(MockConfig {
        limit: 1_000_000,
        window: Duration::from_secs(1),
        failed_receiver_rate: 0.03,
        seed: 5,
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let campaign =
        imcast::spec::load(&file, &imcast::spec::LoadOptions::default()).expect("valid campaign");
    let mut r = Request::new(campaign, RepoPaths::discover(&file, None, None, None));
    r.target = Some((m.endpoint(), m.credentials()));
    r.flags.mock = true;
    r.report_formats = Some(imcast::config::ReportFormats {
        csv: true,
        jsonl: true,
    });
    let clock: SharedClock = Arc::new(SystemClock);
    let s = run_campaign(r, clock, StopToken::new()).await.expect("run");
    let stats = m.stats();
    m.shutdown().await;
    assert_eq!(s.exit, Exit::Ok, "{s:?}");

    let report = s
        .report_dir
        .as_ref()
        .expect("report")
        .join("recipients.jsonl");
    let rows: Vec<Value> = std::fs::read_to_string(report)
        .expect("report")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len() as u64, n);
    assert!(
        rows.iter().all(|r| r["status"] == "sent"),
        "every recipient sent"
    );
    let extra: u64 = rows
        .iter()
        .map(|r| r["attempts"].as_u64().expect("attempts") - 1)
        .sum();
    assert!(stats.failed_receivers > 50, "{stats:?}");
    assert_eq!(
        extra, stats.failed_receivers,
        "each refusal cost its recipient exactly one more attempt"
    );
    assert!(rows.iter().any(|r| r["attempts"].as_u64() > Some(1)));

    let mut delivered: BTreeMap<u64, u32> = BTreeMap::new();
    for l in std::fs::read_to_string(&rec).expect("record").lines() {
        let v: Value = serde_json::from_str(l).expect("record line");
        *delivered
            .entry(v["recipient"].as_u64().expect("recipient"))
            .or_default() += 1;
    }
    assert_eq!(delivered.len() as u64, n, "everyone delivered");
    assert!(delivered.values().all(|&k| k == 1), "delivered once each");
    assert_eq!(stats.duplicates, 0);
}
