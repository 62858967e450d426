//! The PostgreSQL state store (`[state] url`) with real processes: three `imcast run` processes of
//! one account, each with a state directory of its own, share one account limit through one
//! PostgreSQL database (the test server of `imcast::testing::pg`: a throwaway cluster on
//! 127.0.0.1, or `IMCAST_TEST_PG_URL`). Where PostgreSQL is not installed the fixture says so
//! loudly and, under CI, fails.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use imcast::mock::{self, MockConfig};

use crate::common::{
    bin, imcast_run, max_in_window, pg_password, record_lines, stamps, wait_within, OutputWithin,
    CHILD_LIMIT,
};

/// Conversations per campaign (one P2P request each).
const PER_CAMPAIGN: u64 = 400;
/// The account's P2P limit: requests per second.
const LIMIT: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_store_share_one_p2p_limit() {
    let Some(db) = imcast::testing::pg::test_db("three_runs") else {
        return;
    };
    let (url, password) = db.toml_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(
        root.join("imcast.toml"),
        format!("[limits.p2p]\nlimit = {LIMIT}\nwindow = \"1s\"\n\n[state]\nurl = \"{url}\"\n"),
    )
    .expect("imcast.toml");
    // The mock admits 10× the account limit and records when it counted each request: only the
    // limiter the three processes share through PostgreSQL keeps them to 100 a second.
    let rec = root.join("record.jsonl");
    let m = mock::start(MockConfig {
        p2p_qps: LIMIT * 10,
        record: Some(rec.clone()),
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let names = ["north", "south", "west"];
    let mut files = Vec::new();
    for (k, name) in names.iter().enumerate() {
        let mut csv = String::from("conversation_id\n");
        for i in 0..PER_CAMPAIGN {
            csv.push_str(&format!("{}\n", 10_000 * (k as u64 + 1) + i));
        }
        std::fs::write(root.join(format!("{name}.csv")), csv).expect("audience");
        let file = root.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "version: 1\nname: {name}\nprovider: {{ app_id: 666675, region: cn-north-1, endpoint: \"{}\" }}\n\
                 action: p2p\nsender: 10001\np2p: {{ receiver_user_ids: [11] }}\n\
                 audience:\n  csv: {name}.csv\n  id_column: conversation_id\n\
                 message:\n  type: text\n  text: \"hello from {name}\"\n",
                m.endpoint()
            ),
        )
        .expect("campaign");
        files.push(file);
    }
    let children: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(k, file)| {
            let mut c = imcast_run(
                root,
                file,
                &root.join(format!("state-{k}")),
                password.as_deref(),
            );
            c.stdout(Stdio::null());
            c.spawn().expect("spawn imcast run")
        })
        .collect();
    let outs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| wait_within(c, CHILD_LIMIT, "imcast run on the PostgreSQL store"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("wait");
    let stats = m.stats();
    m.shutdown().await;
    for (name, out) in names.iter().zip(&outs) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The journal and the limiter's log are in PostgreSQL: no state directory holds a journal or
    // a limiter file, and the store holds the three finished runs.
    for k in 0..names.len() {
        let state = root.join(format!("state-{k}"));
        assert!(
            !state.join("imcast.db").exists(),
            "state-{k}: no SQLite journal (the journal is in the store)"
        );
        assert!(
            !state.join(imcast::throttle::DB_FILE).exists(),
            "state-{k}: no SQLite limiter log beside the journal"
        );
    }
    let done: i64 = db.with_client(|c| {
        c.query_one(
            "SELECT COUNT(*) FROM runs WHERE status = 'finished' AND is_test = 0",
            &[],
        )
        .expect("runs")
        .get(0)
    });
    assert_eq!(done, names.len() as i64, "three finished runs in the store");
    let total = PER_CAMPAIGN * names.len() as u64;
    assert_eq!(stats.rate_limited, 0, "no 429 at 10× the limit: {stats:?}");
    let lines = record_lines(&rec, total);
    assert_eq!(lines.len() as u64, total, "one request per conversation");
    let all = stamps(&lines, None);
    let worst = max_in_window(&all, Duration::from_secs(1));
    assert!(
        worst <= LIMIT,
        "{worst} requests in one second from three processes (limit {LIMIT})"
    );
    // The three sent at the same time: each campaign has requests in the middle second.
    let (first, last) = (
        all.iter().map(|s| s.0).min().expect("stamps"),
        all.iter().map(|s| s.0).max().expect("stamps"),
    );
    let mid = first + (last - first) / 2;
    let mut in_mid: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        let t: jiff::Timestamp = l["time"].as_str().expect("time").parse().expect("time");
        let t = t.as_nanosecond();
        if (mid - 500_000_000..mid + 500_000_000).contains(&t) {
            *in_mid
                .entry(l["content"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    assert_eq!(
        in_mid.len(),
        names.len(),
        "all three processes sent in the middle second: {in_mid:?}"
    );
    // The check is not vacuous: together they pushed against the limit (the fullest second holds
    // at least half of it; each process alone asks for far more). How near the limit the three
    // sustain is a speed figure, measured in BENCHMARKS.md with this test, not asserted here.
    assert!(
        worst * 2 >= LIMIT,
        "only {worst} requests in the fullest second"
    );
    let rate = (total - 1) as f64 / ((last - first) as f64 / 1e9);
    eprintln!(
        "three processes on one store: {total} requests at {rate:.1}/s, fullest second {worst}"
    );
}

/// `imcast state migrate`: applies the schema and says so, then finds nothing to do; a database
/// migrated by a newer imcast is refused (exit 1, both versions named) and left as it was; without
/// `[state] url` there is nothing to migrate.
#[test]
fn state_migrate_applies_then_refuses_a_newer_schema() {
    let Some(db) = imcast::testing::pg::test_db("state_migrate") else {
        return;
    };
    let (url, password) = db.toml_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let migrate = |toml: &str| {
        std::fs::write(dir.path().join("imcast.toml"), toml).expect("imcast.toml");
        let mut c = Command::new(bin());
        c.args(["state", "migrate"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        pg_password(&mut c, password.as_deref());
        let out = c.output_limited().expect("imcast state migrate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let toml = format!("[state]\nurl = \"{url}\"\n");
    let v = imcast::pg::schema::SCHEMA_VERSION;
    let (code, out, err) = migrate(&toml);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("schema version 0 -> {v}")), "{out}");
    assert!(
        out.contains("applied 1: the account limiter's log"),
        "{out}"
    );
    let (code, out, err) = migrate(&toml);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("already at version {v} (nothing to do)")),
        "{out}"
    );
    // A newer imcast migrated the database further.
    db.with_client(|c| {
        c.execute(
            "INSERT INTO imcast_schema(version, name, applied_by) VALUES ($1, 'future', 'imcast 9.9.9')",
            &[&(v + 1)],
        )
        .expect("insert");
    });
    let (code, _, err) = migrate(&toml);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("schema is version {}", v + 1))
            && err.contains("imcast 9.9.9")
            && err.contains(&format!("up to version {v}"))
            && err.contains("upgrade imcast"),
        "{err}"
    );
    let versions: i64 = db.with_client(|c| {
        c.query_one("SELECT count(*) FROM imcast_schema", &[])
            .expect("count")
            .get(0)
    });
    assert_eq!(versions, i64::from(v) + 1, "the newer schema is untouched");
    // No [state] url: SQLite in the state directory, nothing to do here.
    let (code, out, err) = migrate("");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("nothing to migrate"), "{out}");
    assert!(out.contains("has no [state] url"), "{out}");
}

/// With `[state] url`, `imcast status` lists the daemons registered on the store (its
/// `sched_roster`), whatever the state directory: host, pid, alive.
#[test]
fn status_lists_the_daemons_on_the_store() {
    let Some(db) = imcast::testing::pg::test_db("status_daemons") else {
        return;
    };
    let (url, password) = db.toml_url();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("imcast.toml"),
        format!("[state]\nurl = \"{url}\"\n"),
    )
    .expect("imcast.toml");
    std::fs::write(
        dir.path().join("c.yaml"),
        "version: 1\nname: t\nprovider: { app_id: 1, region: cn-north-1, endpoint: \"http://127.0.0.1:9\" }\n\
         action: batch\nsender: 1\naudience: { ids: [1, 2, 3] }\nmessage: { type: text, text: hi }\n",
    )
    .expect("campaign");
    let status = || {
        let mut c = Command::new(bin());
        c.args(["status", "c.yaml", "--output", "json"])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null());
        if let Some(p) = &password {
            c.env("PGPASSWORD", p);
        }
        let out = c.output_limited().expect("imcast status");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v
    };
    assert!(status().get("daemons").is_none(), "no daemon yet");
    let store = db.store();
    std::thread::spawn(move || {
        use imcast::daemon::state;
        let c = state::open_store(&store).expect("store");
        let now = imcast::clock::Clock::now(&imcast::clock::SystemClock).as_second();
        let me = state::Claimant {
            node: "node-on-store".to_string(),
            host: "host-pg".to_string(),
            pid: 4343,
        };
        state::roster_beat(&c, &me, now - 60, 3600, now).expect("beat");
    })
    .join()
    .expect("thread");
    let v = status();
    let d = v["daemons"].as_array().expect("daemons");
    assert_eq!(d.len(), 1, "{v}");
    assert_eq!(d[0]["host"], "host-pg");
    assert_eq!(d[0]["pid"], 4343);
    assert_eq!(d[0]["alive"], true);
}
