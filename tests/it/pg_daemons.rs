//! Two `imcast daemon` processes on one PostgreSQL state store (`[state] url`), each with its own
//! state directory and its own copy of the campaigns folder (two checkouts of one repository),
//! against one `imcast mock-server`: every occurrence is fired exactly once (the mock's record),
//! the store names the host and pid that claimed each, and after a `kill -9` of one daemon the
//! other fires every later occurrence; `imcast schedule` lists both daemons, the killed one not
//! alive once the alive window has passed. The test server is `imcast::testing::pg`'s (a throwaway
//! cluster on 127.0.0.1, or `IMCAST_TEST_PG_URL`); where PostgreSQL is not installed the fixture
//! says so loudly and, under CI, fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imcast::clock::{Clock, SimClock};
use imcast::daemon::runner::{FakeRunner, RunOutcome, RunStatus};
use imcast::daemon::source::StandInSource;
use imcast::daemon::{state, Daemon, DaemonConfig};

use crate::common::{bin, pg_password, status_until, OutputWithin};
use crate::daemon_e2e::{
    batch_campaign, daemon_cmd, deliveries, grp_csv, mock_server, wait_for, Proc,
};

/// The start of a daemon process test on the store: its database, the URL and password
/// `imcast.toml` names, a temporary root (canonical), and the mock provider recording every
/// delivery to `root/record.jsonl`.
struct OnStore {
    db: imcast::testing::pg::TestDb,
    url: String,
    password: Option<String>,
    _tmp: tempfile::TempDir,
    root: PathBuf,
    rec: PathBuf,
    _mock: crate::common::MockServer,
    endpoint: String,
}

/// [`OnStore`] for a test database labelled `label` (None: no PostgreSQL, the fixture said so).
fn on_store(label: &str) -> Option<OnStore> {
    let db = imcast::testing::pg::test_db(label)?;
    let (url, password) = db.toml_url();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root: PathBuf = std::fs::canonicalize(tmp.path()).expect("canon");
    let rec = root.join("record.jsonl");
    let (mock, endpoint) = mock_server(&rec);
    Some(OnStore {
        db,
        url,
        password,
        _tmp: tmp,
        root,
        rec,
        _mock: mock,
        endpoint,
    })
}

/// Campaigns, one occurrence each (`schedule.at`), `SPACING` seconds apart; campaign `i` sends to
/// user `BASE + i` only, so the mock's record tells which occurrence a delivery belongs to.
const N: u64 = 8;
const SPACING: i64 = 3;
const BASE: u64 = 70_000;

fn daemon(checkout: &Path, password: Option<&str>) -> Proc {
    let log = std::fs::File::create(checkout.join("daemon.log")).expect("log file");
    let mut c = daemon_cmd(checkout, log);
    c.env_remove("IMCAST_STATE_PASSWORD_FILE");
    pg_password(&mut c, password);
    Proc(c.spawn().expect("start daemon"))
}

/// A [`Daemon`](imcast::daemon::Daemon) on a simulated clock and the PostgreSQL store `db`, with
/// its folder `home/campaigns` (holding `h.yaml` = `campaign` where given), its state directory
/// `home/.imcast`, takeover as `takeover` says, and the fake `runner`. Returns (daemon, state
/// directory, node id).
fn sim_daemon(
    db: &imcast::testing::pg::TestDb,
    home: &Path,
    campaign: Option<&str>,
    takeover: bool,
    clock: &SimClock,
    runner: &Arc<FakeRunner>,
) -> (Daemon, PathBuf, String) {
    let dir = home.join("campaigns");
    std::fs::create_dir_all(&dir).expect("mkdir");
    if let Some(text) = campaign {
        std::fs::write(dir.join("h.yaml"), text).expect("campaign");
    }
    let state_dir = home.join(".imcast");
    let mut cfg = DaemonConfig::new(&dir, &state_dir);
    cfg.store = Some(db.url().clone());
    cfg.takeover = Some(takeover);
    let d = Daemon::open(
        cfg,
        Arc::new(clock.clone()),
        Box::new(StandInSource),
        runner.clone(),
    )
    .expect("open daemon");
    let node = state::node_id(&state::open(&state_dir).expect("local")).expect("node");
    (d, state_dir, node)
}

/// (campaign, status, host, pid, node) of every occurrence in the store.
type StoreRow = (String, String, Option<String>, Option<i64>, Option<String>);

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "real daemon processes schedule on the system clock; a child's time limit is wall time"
)]
fn two_daemons_on_one_store_fire_each_occurrence_once_and_survive_a_kill() {
    let Some(OnStore {
        db,
        url,
        password,
        _tmp,
        root,
        rec,
        _mock,
        endpoint,
    }) = on_store("two_daemons")
    else {
        return;
    };
    // Far enough ahead for both daemons to start and scan (debug build, busy machine).
    let t0 = jiff::Timestamp::now().as_second() + 8;
    let at = |i: u64| t0 + SPACING * i as i64;
    let checkouts: Vec<PathBuf> = ["a", "b"].iter().map(|n| root.join(n)).collect();
    for co in &checkouts {
        let dir = co.join("campaigns");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            co.join("imcast.toml"),
            format!("[state]\nurl = \"{url}\"\n"),
        )
        .expect("imcast.toml");
        for i in 0..N {
            let when = jiff::Timestamp::from_second(at(i)).expect("at");
            std::fs::write(
                dir.join(format!("c{i}.yaml")),
                format!(
                    "version: 1\nname: c{i}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{endpoint}\" }}\n\
                     action: batch\nsender: 10001\naudience: {{ ids: [{}] }}\n\
                     message: {{ type: text, text: \"occurrence {i}\" }}\nschedule:\n  at: {when}\n",
                    BASE + i
                ),
            )
            .expect("campaign");
        }
    }
    let mut a = daemon(&checkouts[0], password.as_deref());
    let b = daemon(&checkouts[1], password.as_deref());
    let logs = || {
        checkouts
            .iter()
            .map(|c| {
                format!(
                    "--- {}:\n{}",
                    c.display(),
                    std::fs::read_to_string(c.join("daemon.log")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rows = || -> Vec<StoreRow> {
        db.with_client(|c| {
            c.query(
                "SELECT campaign, status, host, pid, node FROM sched_occurrence ORDER BY campaign",
                &[],
            )
            .map(|rs| {
                rs.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect()
            })
            .unwrap_or_default()
        })
    };

    // Half the occurrences fired: kill -9 daemon a (whichever daemon fired them).
    let half = N / 2;
    let fired_half = wait_for(1_200, || {
        let got = deliveries(&rec);
        (0..half).all(|i| got.contains_key(&(BASE + i)))
    });
    assert!(
        fired_half,
        "the first occurrences were not sent:\n{}",
        logs()
    );
    let a_pid = i64::from(a.0.id());
    let b_pid = i64::from(b.0.id());
    a.0.kill().expect("SIGKILL");
    status_until(&mut a.0, Instant::now() + Duration::from_secs(60))
        .expect("the killed daemon was reaped");
    let killed_at = jiff::Timestamp::now().as_second();
    assert!(
        killed_at < at(half),
        "the kill came after the next occurrence was due; the machine is too slow for this test"
    );

    // The other daemon fires every later occurrence.
    let all = wait_for(1_200, || {
        let got = deliveries(&rec);
        (0..N).all(|i| got.contains_key(&(BASE + i)))
    });
    assert!(all, "not every occurrence was sent:\n{}", logs());
    // Its runs finish (no call left to send twice), then a last look at the record.
    let finished = wait_for(600, || {
        let rs = rows();
        rs.len() == N as usize
            && rs
                .iter()
                .filter(|r| r.3 == Some(b_pid))
                .all(|r| r.1 == "done")
    });
    assert!(finished, "{:?}\n{}", rows(), logs());
    std::thread::sleep(Duration::from_secs(2));

    // Exactly once each, nothing else.
    let got = deliveries(&rec);
    let want: BTreeMap<u64, u64> = (0..N).map(|i| (BASE + i, 1)).collect();
    assert_eq!(got, want, "deliveries per occurrence's user\n{}", logs());

    // The store names a host, pid and node for each; the later ones are the survivor's.
    let host = imcast::daemon::state::host_name();
    let rs = rows();
    assert_eq!(rs.len(), N as usize, "{rs:?}");
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(r.0, format!("c{i}"));
        assert_eq!(r.2.as_deref(), Some(host.as_str()), "{r:?}");
        assert!(r.3 == Some(a_pid) || r.3 == Some(b_pid), "{r:?}");
        assert!(r.4.as_deref().is_some_and(|n| n.len() == 32), "{r:?}");
        if at(i as u64) > killed_at {
            assert_eq!(r.3, Some(b_pid), "after the kill only b fires: {r:?}");
            assert_eq!(r.1, "done", "{r:?}");
        }
    }
    let by_a = rs.iter().filter(|r| r.3 == Some(a_pid)).count();
    println!(
        "occurrences claimed: {by_a} by a (killed), {} by b",
        rs.len() - by_a
    );
    let nodes: std::collections::BTreeSet<&str> =
        rs.iter().filter_map(|r| r.4.as_deref()).collect();
    assert!(nodes.len() <= 2, "{nodes:?}");

    // `imcast schedule` (either checkout) reads the store and says who fired each.
    let out = pg_password(&mut Command::new(bin()), password.as_deref())
        .arg("schedule")
        .arg(checkouts[1].join("campaigns"))
        .args(["--past", "5"])
        .output_limited()
        .expect("imcast schedule");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = format!("c{}", N - 1);
    let block = text.split(&format!("{last} (")).nth(1).unwrap_or_default();
    assert!(
        block.contains(&format!("by {host} (pid {b_pid})")),
        "{text}"
    );
    // … and lists both daemons: b alive now; a (killed, no clean stop) not alive once the alive
    // window (3 refreshes of 10 s) after its last refresh has passed.
    let daemons = |now: Option<i64>| -> Vec<(i64, bool, Option<String>)> {
        let mut c = Command::new(bin());
        c.arg("schedule")
            .arg(checkouts[1].join("campaigns"))
            .args(["--output", "json"]);
        pg_password(&mut c, password.as_deref());
        if let Some(n) = now {
            c.args([
                "--now",
                &jiff::Timestamp::from_second(n).expect("ts").to_string(),
            ]);
        }
        let out = c.output_limited().expect("imcast schedule");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["daemons"]
            .as_array()
            .expect("daemons")
            .iter()
            .map(|d| {
                assert_eq!(d["host"], host.as_str(), "{d}");
                (
                    d["pid"].as_i64().expect("pid"),
                    d["alive"].as_bool().expect("alive"),
                    d["stopped_at"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let now_list = daemons(None);
    let mut pids: Vec<i64> = now_list.iter().map(|d| d.0).collect();
    pids.sort_unstable();
    let mut want = vec![a_pid, b_pid];
    want.sort_unstable();
    assert_eq!(pids, want, "{now_list:?}");
    assert!(now_list.contains(&(b_pid, true, None)), "{now_list:?}");
    let later = daemons(Some(killed_at + 31));
    assert!(later.contains(&(a_pid, false, None)), "{later:?}");
    drop(b);
}

/// kill -9 the daemon sending a run; the other takes it over and finishes it. Two `imcast daemon`
/// processes on one PostgreSQL store (`[state] lease_heartbeat = "1s"`, `lease_expiry = "3s"`: the
/// roster refreshes every second, a daemon is alive within 3 s, a run's lease lasts 3 s), one
/// campaign of 1,000 recipients the mock takes about ten seconds to receive. Once part of the
/// audience got it, the daemon the occurrence's claim names is killed; the other re-claims the
/// occurrence once the killed one is not alive and the run's lease expired, resumes the run and
/// finishes it: every recipient delivered at the mock or reported `unknown` (a call in flight
/// at the kill may be lost), duplicates only among `unknown`, the occurrence `done`, held by the
/// survivor and saying from whom it was taken over (`imcast schedule` too).
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "real daemon processes schedule on the system clock; a child's time limit is wall time"
)]
fn kill_the_sender_and_another_daemon_takes_over_and_finishes_the_run() {
    let Some(OnStore {
        db,
        url,
        password,
        _tmp,
        root,
        rec,
        _mock,
        endpoint,
    }) = on_store("takeover_kill")
    else {
        return;
    };
    let ids: Vec<u64> = (0..1_000).map(|i| 300_000 + i).collect();
    let csv = grp_csv(ids.iter().copied(), 100);
    // Far enough ahead for both daemons to start and scan (debug build, busy machine).
    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 8).expect("at");
    let checkouts: Vec<PathBuf> = ["a", "b"].iter().map(|n| root.join(n)).collect();
    for co in &checkouts {
        let dir = co.join("campaigns");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // 100 messages a second: 1,000 users in 100 calls (one per group) take about ten seconds.
        std::fs::write(
            co.join("imcast.toml"),
            format!(
                "[state]\nurl = \"{url}\"\nlease_heartbeat = \"1s\"\nlease_expiry = \"3s\"\n\n\
                 [limits.batch]\nlimit = 100\nwindow = \"1s\"\n"
            ),
        )
        .expect("imcast.toml");
        std::fs::write(dir.join("a.csv"), &csv).expect("audience");
        std::fs::write(
            dir.join("tk.yaml"),
            batch_campaign("tk", &endpoint, "Hello", at),
        )
        .expect("campaign");
    }
    let mut procs = vec![
        Some(daemon(&checkouts[0], password.as_deref())),
        Some(daemon(&checkouts[1], password.as_deref())),
    ];
    let pids: Vec<i64> = procs
        .iter()
        .map(|p| i64::from(p.as_ref().expect("proc").0.id()))
        .collect();
    let logs = || {
        checkouts
            .iter()
            .map(|c| {
                format!(
                    "--- {}:\n{}",
                    c.display(),
                    std::fs::read_to_string(c.join("daemon.log")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // (status, pid, detail) of the occurrence.
    let claim = || -> Option<(String, Option<i64>, Option<String>)> {
        db.with_client(|c| {
            c.query_opt(
                "SELECT status, pid, detail FROM sched_occurrence WHERE campaign = 'tk'",
                &[],
            )
            .ok()
            .flatten()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
        })
    };

    // Part of the audience got it: kill -9 the daemon the claim names.
    let started = wait_for(1_200, || deliveries(&rec).len() >= 150);
    assert!(started, "the occurrence never started sending:\n{}", logs());
    let holder = claim().and_then(|c| c.1).expect("the claim names a pid");
    let k = pids.iter().position(|p| *p == holder).expect("one of ours");
    let mut killed = procs[k].take().expect("proc");
    killed.0.kill().expect("SIGKILL");
    status_until(&mut killed.0, Instant::now() + Duration::from_secs(60))
        .expect("the killed daemon was reaped");
    let at_kill = deliveries(&rec).len();
    assert!(at_kill < ids.len(), "killed mid-run ({at_kill} delivered)");
    let survivor = pids[1 - k];
    let survivor_dir = &checkouts[1 - k];

    // The other daemon takes it over and finishes it.
    let done = wait_for(2_400, || claim().is_some_and(|c| c.0 == "done"));
    assert!(done, "{:?}\n{}", claim(), logs());
    let (_, pid, detail) = claim().expect("row");
    let host = imcast::daemon::state::host_name();
    assert_eq!(pid, Some(survivor), "held by the survivor");
    let note = format!("taken over from {host} (pid {holder}) at ");
    assert!(
        detail.as_deref().is_some_and(|d| d.contains(&note)),
        "{detail:?}"
    );
    let survivor_log = std::fs::read_to_string(survivor_dir.join("daemon.log")).unwrap_or_default();
    assert!(
        survivor_log.contains("took over a run whose daemon is not alive"),
        "{}",
        logs()
    );

    // The survivor's report: every recipient sent or unknown.
    let reports: Vec<PathBuf> = std::fs::read_dir(survivor_dir.join("reports/tk"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("recipients.csv"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(reports.len(), 1, "{reports:?}\n{}", logs());
    let mut r = csv::Reader::from_path(&reports[0]).expect("recipients.csv");
    let h = r.headers().expect("header").clone();
    let col = |n: &str| h.iter().position(|c| c == n).expect(n);
    let (id_col, status_col) = (col("id"), col("status"));
    let mut unknown = std::collections::BTreeSet::new();
    let mut rows = 0;
    for rec in r.records() {
        let rec = rec.expect("row");
        rows += 1;
        match &rec[status_col] {
            "sent" => {}
            "unknown" => {
                unknown.insert(rec[id_col].parse::<u64>().expect("id"));
            }
            other => panic!("recipient {} is {other}", &rec[id_col]),
        }
    }
    assert_eq!(rows, ids.len());

    // The mock's record: the audience, duplicates only among reported `unknown`.
    std::thread::sleep(Duration::from_secs(1));
    let got = deliveries(&rec);
    let want: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    let delivered: std::collections::BTreeSet<u64> = got.keys().copied().collect();
    assert!(delivered.is_subset(&want), "delivered outside the audience");
    let missing: Vec<&u64> = want.difference(&delivered).collect();
    assert!(
        missing.iter().all(|id| unknown.contains(id)),
        "not delivered and not reported unknown: {missing:?}"
    );
    let dups: Vec<(&u64, &u64)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.iter().all(|(id, _)| unknown.contains(id)),
        "duplicates beyond reported unknown: {dups:?}"
    );

    // `imcast schedule` says who holds it now and from whom it was taken over.
    let out = pg_password(&mut Command::new(bin()), password.as_deref())
        .arg("schedule")
        .arg(survivor_dir.join("campaigns"))
        .args(["--past", "5"])
        .output_limited()
        .expect("imcast schedule");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("done   by {host} (pid {survivor})")),
        "{text}"
    );
    assert!(text.contains(&note), "{text}");
    // `imcast status` of the campaign: the run's occurrence held by the survivor, taken over.
    let out = pg_password(&mut Command::new(bin()), password.as_deref())
        .arg("status")
        .arg(survivor_dir.join("campaigns/tk.yaml"))
        .output_limited()
        .expect("imcast status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "  daemon    occurrence done by {host} (pid {survivor})\n            {note}"
        )),
        "{text}"
    );
    drop(procs);
}

/// The same two-daemon rules on a simulated clock (no sleeping, no processes): two [`Daemon`]s
/// with two state directories and two copies of the folder on one PostgreSQL store, each with a
/// fake runner. An occurrence starts on exactly one; one due while the other's run is going is
/// queued and started once by whichever claims it; a pause or cancel given to one daemon's state
/// directory holds or stops the run on the other. The roster (what `imcast schedule` shows) names
/// both; one that falls silent is not alive after the window, with a note on the run it holds.
#[test]
fn two_daemons_share_claims_queue_pause_and_cancel_through_the_store() {
    use imcast::journal::{ControlRequest, Journal};

    let Some(db) = imcast::testing::pg::test_db("two_daemons_sim") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = SimClock::new("2026-03-01T00:30:00Z".parse().expect("ts"));
    let open = |name: &str, runner: &Arc<FakeRunner>| {
        // No takeover here (see `a_live_daemon_takes_over_the_run_of_a_silent_one_exactly_once`):
        // the silent daemon's run stays its own, with the note saying who would take it over.
        sim_daemon(
            &db,
            &tmp.path().join(name),
            Some("name: h\nschedule:\n  cron: \"0 * * * *\"\n  timezone: UTC\n  not_after: 10m\n  overlap: queue\n"),
            false,
            &clock,
            runner,
        )
    };
    let (ra, rb) = (Arc::new(FakeRunner::new()), Arc::new(FakeRunner::new()));
    let (mut a, _sa, node_a) = open("a", &ra);
    let (mut b, _sb, node_b) = open("b", &rb);
    assert_ne!(node_a, node_b);
    let tick = |d: &mut Daemon| d.tick().expect("tick");
    // A control request goes to the journal, which is in the store: any host's `imcast pause`.
    let request = |req: ControlRequest| {
        Journal::open_store(db.url())
            .expect("journal")
            .request_control("h", req, None, jiff::Timestamp::UNIX_EPOCH)
            .expect("request");
    };
    tick(&mut a);
    tick(&mut b);

    // 01:00: a ticks first and claims it; b records nothing and starts nothing.
    clock.advance_to("2026-03-01T01:00:00Z".parse().expect("ts"));
    tick(&mut a);
    tick(&mut b);
    let k1 = "h@2026-03-01T01:00:00Z";
    assert_eq!(ra.starts(), vec![k1.to_string()]);
    assert!(rb.starts().is_empty());

    // 02:00 while a's run goes: b decides it first — queued (overlap: queue).
    clock.advance_to("2026-03-01T02:00:00Z".parse().expect("ts"));
    tick(&mut b);
    tick(&mut a);
    let k2 = "h@2026-03-01T02:00:00Z";
    let reader = state::open_store(&db.store()).expect("store");
    let row = |k: &str| {
        state::occurrences(&reader, Some("h"))
            .expect("rows")
            .into_iter()
            .find(|r| r.run_key == k)
            .expect("row")
    };
    assert_eq!(row(k2).status, "queued");
    assert_eq!(row(k2).node.as_deref(), Some(node_b.as_str()));
    // a's run ends; a claims the queued occurrence; b, ticking after, does not start it too.
    ra.finish(k1, RunOutcome::Done);
    clock.advance(std::time::Duration::from_secs(1));
    tick(&mut a);
    tick(&mut b);
    assert_eq!(ra.starts(), vec![k1.to_string(), k2.to_string()]);
    assert!(rb.starts().is_empty(), "{:?}", rb.starts());
    let r2 = row(k2);
    assert_eq!(
        (r2.status.as_str(), r2.node.as_deref()),
        ("running", Some(node_a.as_str()))
    );
    assert_eq!(r2.pid, Some(i64::from(std::process::id())));
    assert!(r2.host.is_some() && r2.claimed_at.is_some(), "{r2:?}");

    // `imcast pause h` given on any host (the store's journal) pauses a's run; resume continues it.
    request(ControlRequest::Pause);
    tick(&mut b);
    tick(&mut a);
    assert_eq!(ra.runs()[k2].status, RunStatus::Paused);
    request(ControlRequest::Resume);
    tick(&mut b);
    tick(&mut a);
    assert_eq!(ra.runs()[k2].status, RunStatus::Running);

    // A cancel given to b stops a's run.
    request(ControlRequest::Cancel);
    tick(&mut b);
    tick(&mut a);
    assert!(
        matches!(
            ra.runs()[k2].status,
            RunStatus::Finished {
                outcome: RunOutcome::Cancelled,
                ..
            }
        ),
        "{:?}",
        ra.runs()[k2]
    );
    assert_eq!(row(k2).status, "cancelled");
    assert_eq!(row(k1).status, "done");
    assert!(rb.starts().is_empty());

    // The roster names both daemons; at 03:00 a claims the occurrence, then falls silent (no
    // tick, no clean stop) while b goes on: 31 s after a's last refresh, a is not alive and its
    // running occurrence carries the note; b is alive.
    clock.advance_to("2026-03-01T03:00:00Z".parse().expect("ts"));
    tick(&mut a);
    tick(&mut b);
    let k3 = "h@2026-03-01T03:00:00Z";
    assert_eq!(row(k3).node.as_deref(), Some(node_a.as_str()));
    let folder = tmp.path().join("b").join("campaigns");
    let view = || {
        imcast::daemon::view::schedule_view(
            &folder,
            &StandInSource,
            Some(&reader),
            clock.now(),
            1,
            10,
        )
        .expect("view")
    };
    let v = view();
    let alive: Vec<(&str, bool)> = v
        .daemons
        .iter()
        .map(|d| (d.node.as_str(), d.alive))
        .collect();
    assert_eq!(alive.len(), 2, "{alive:?}");
    assert!(alive.contains(&(node_a.as_str(), true)) && alive.contains(&(node_b.as_str(), true)));
    for _ in 0..4 {
        clock.advance(std::time::Duration::from_secs(10));
        tick(&mut b);
    }
    clock.advance(std::time::Duration::from_secs(1));
    let v = view();
    let alive: Vec<(&str, bool)> = v
        .daemons
        .iter()
        .map(|d| (d.node.as_str(), d.alive))
        .collect();
    assert!(
        alive.contains(&(node_a.as_str(), false)) && alive.contains(&(node_b.as_str(), true)),
        "{alive:?}"
    );
    let past = &v.campaigns[0].past;
    let last = past.last().expect("k3");
    assert_eq!(
        (last.status.as_str(), last.node.as_deref()),
        ("running", Some(node_a.as_str()))
    );
    assert!(
        last.note.as_deref().is_some_and(|n| n.contains("not alive")
            && n.contains("takes it over once the run's lease has expired")),
        "{last:?}"
    );
    assert!(
        past[..past.len() - 1].iter().all(|p| p.note.is_none()),
        "{past:?}"
    );
    drop(a);
}

/// Takeover on a simulated clock (no sleeping, no processes): four [`Daemon`]s on one PostgreSQL
/// store, each with its own state directory, folder and fake runner; `d`'s folder does not have
/// the campaign. `a` fires an occurrence, then falls silent (a kill -9: no tick, no clean stop).
/// While `a` looks alive (30 s after its last refresh) nobody touches its run; then exactly one of
/// the live daemons with the campaign takes it over (the first to tick: `c`), resuming the run
/// (the runner is asked to resume it) and naming itself and whom it took it from in the record;
/// `b` and `d` start nothing. When `a` comes back it stops its copy of the run and does not take
/// it back. The run's end keeps the takeover note, and `imcast schedule`'s view shows it.
#[test]
fn a_live_daemon_takes_over_the_run_of_a_silent_one_exactly_once() {
    let Some(db) = imcast::testing::pg::test_db("takeover_sim") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let clock = SimClock::new("2026-03-01T00:30:00Z".parse().expect("ts"));
    let open = |name: &str, with_campaign: bool, runner: &Arc<FakeRunner>| {
        // The fake runner has no journal in the store: force what the store's journal enables.
        let (d, _, node) = sim_daemon(
            &db,
            &tmp.path().join(name),
            with_campaign.then_some(
                "name: h\nschedule:\n  cron: \"0 * * * *\"\n  timezone: UTC\n  not_after: 10m\n",
            ),
            true,
            &clock,
            runner,
        );
        (d, node)
    };
    let runners: Vec<Arc<FakeRunner>> = (0..4).map(|_| Arc::new(FakeRunner::new())).collect();
    let (mut a, node_a) = open("a", true, &runners[0]);
    let (mut b, node_b) = open("b", true, &runners[1]);
    let (mut c, node_c) = open("c", true, &runners[2]);
    let (mut d, _node_d) = open("d", false, &runners[3]);
    let (ra, rb, rc, rd) = (&runners[0], &runners[1], &runners[2], &runners[3]);
    let tick = |d: &mut Daemon| d.tick().expect("tick");
    for x in [&mut a, &mut b, &mut c, &mut d] {
        tick(x);
    }
    let reader = state::open_store(&db.store()).expect("store");
    let k1 = "h@2026-03-01T01:00:00Z";
    let row = || {
        state::occurrences(&reader, Some("h"))
            .expect("rows")
            .into_iter()
            .find(|r| r.run_key == k1)
            .expect("row")
    };

    // 01:00: a fires it; then a falls silent.
    clock.advance_to("2026-03-01T01:00:00Z".parse().expect("ts"));
    tick(&mut a);
    assert_eq!(ra.starts(), vec![k1.to_string()]);
    assert_eq!(row().node.as_deref(), Some(node_a.as_str()));
    let others = |b: &mut Daemon, c: &mut Daemon, d: &mut Daemon| {
        tick(d);
        tick(c);
        tick(b);
    };
    // Within a's alive window (last seen 01:00:00, 3 × 10 s): nobody takes it.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        others(&mut b, &mut c, &mut d);
    }
    assert!(rb.starts().is_empty() && rc.starts().is_empty() && rd.starts().is_empty());
    assert_eq!(row().node.as_deref(), Some(node_a.as_str()));
    // 01:00:40: a is not alive; c ticks first (after d, whose folder lacks the campaign).
    clock.advance(Duration::from_secs(10));
    others(&mut b, &mut c, &mut d);
    assert_eq!(rc.starts(), vec![k1.to_string()], "c resumes the run");
    assert!(rc.runs()[k1].resumed, "{:?}", rc.runs());
    assert!(rb.starts().is_empty(), "{:?}", rb.starts());
    assert!(rd.starts().is_empty(), "{:?}", rd.starts());
    let r = row();
    assert_eq!(
        (r.status.as_str(), r.node.as_deref(), r.claimed_at),
        (
            "running",
            Some(node_c.as_str()),
            Some(clock.now().as_second())
        )
    );
    let host = state::host_name();
    let note = format!(
        "taken over from {host} (pid {}) at 2026-03-01T01:00:40Z",
        std::process::id()
    );
    assert_eq!(r.detail.as_deref(), Some(note.as_str()));
    // More ticks change nothing: it is c's now, and c is alive.
    for _ in 0..3 {
        clock.advance(Duration::from_secs(10));
        others(&mut b, &mut c, &mut d);
    }
    assert_eq!(rc.starts().len(), 1);
    assert!(rb.starts().is_empty());

    // a comes back: it stops its copy of the run and leaves the row alone.
    tick(&mut a);
    assert_eq!(ra.runs()[k1].status, RunStatus::Paused);
    assert_eq!(ra.starts().len(), 1);
    assert_eq!(row().node.as_deref(), Some(node_c.as_str()));

    // c's run ends: done, the note kept after the run's detail; the view shows who and from whom.
    rc.finish(k1, RunOutcome::Done);
    clock.advance(Duration::from_secs(1));
    tick(&mut c);
    tick(&mut a);
    let r = row();
    assert_eq!(r.status, "done");
    assert_eq!(r.detail.as_deref(), Some(note.as_str()));
    let v = imcast::daemon::view::schedule_view(
        &tmp.path().join("b").join("campaigns"),
        &StandInSource,
        Some(&reader),
        clock.now(),
        1,
        10,
    )
    .expect("view");
    let past = v.campaigns[0].past.last().expect("k1");
    assert_eq!(past.node.as_deref(), Some(node_c.as_str()));
    assert_eq!(past.taken_over.as_deref(), Some(note.as_str()));
    let text = imcast::daemon::view::render_human(&v);
    assert!(text.contains(&format!("      {note}")), "{text}");
    assert_ne!(node_b, node_c);
}

/// `imcast prune` with `[state] url`: the store's finished occurrences older than the cutoff go
/// (pending and recent ones stay), and so do roster rows last seen before it, except the row of a
/// daemon that still holds an active occurrence.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "`imcast prune` (a real process) ages rows by the system clock: the fixture must too"
)]
fn prune_prunes_the_store_occurrences_and_stale_roster_rows() {
    use imcast::daemon::state::{self, Claimant};

    let Some(db) = imcast::testing::pg::test_db("prune_store") else {
        return;
    };
    let (url, password) = db.toml_url();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("imcast.toml"),
        format!("[state]\nurl = \"{url}\"\n"),
    )
    .expect("imcast.toml");
    let now = jiff::Timestamp::now().as_second();
    let day = 86_400;
    let who = |node: &str, pid: u32| Claimant {
        node: node.into(),
        host: format!("host-{node}"),
        pid,
    };
    let store = db.store();
    std::thread::spawn(move || {
        let c = state::open_store(&store).expect("store");
        state::upsert_campaign(&c, "p", "p.yaml", None, 0).expect("upsert");
        for (occ, status, node) in [
            (now - 100 * day, "done", "old"),
            (now - 95 * day, "queued", "old"),
            (now - 99 * day, "running", "holder"),
            (now - 10 * day, "done", "new"),
        ] {
            state::record_occurrence_by(
                &c,
                Some(&who(node, 1)),
                "p",
                occ,
                status,
                &format!("p@{occ}"),
                "h",
                occ,
                None,
            )
            .expect("record");
        }
        state::roster_beat(&c, &who("old", 1), now - 100 * day, 10, now - 100 * day).expect("old");
        state::roster_beat(&c, &who("holder", 2), now - 99 * day, 10, now - 99 * day)
            .expect("holder");
        state::roster_beat(&c, &who("new", 3), now - day, 10, now - 10).expect("new");
    })
    .join()
    .expect("thread");

    let out = pg_password(&mut Command::new(bin()), password.as_deref())
        .args(["prune", "--older-than", "90d", "--state-dir"])
        .arg(tmp.path().join(".imcast"))
        .arg("--config")
        .arg(tmp.path().join("imcast.toml"))
        .current_dir(tmp.path())
        .output_limited()
        .expect("imcast prune");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("in the state store: 1 schedule occurrence and 1 daemon roster row"),
        "{stdout}"
    );
    let (occ, roster) = db.with_client(|c| {
        let occ: Vec<String> = c
            .query(
                "SELECT status FROM sched_occurrence ORDER BY occurrence",
                &[],
            )
            .expect("occ")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let roster: Vec<String> = c
            .query("SELECT node FROM sched_roster ORDER BY node", &[])
            .expect("roster")
            .iter()
            .map(|r| r.get(0))
            .collect();
        (occ, roster)
    });
    assert_eq!(occ, vec!["running", "queued", "done"]);
    assert_eq!(roster, vec!["holder", "new"]);
}
