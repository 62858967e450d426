//! The journal's tests on both backends: SQLite in a temporary state directory and a throwaway
//! PostgreSQL database (`testutil::fresh_journal`). Each test is one function of the backend,
//! run by a `_sqlite` and a `_postgres` test.
//!
//! Two kinds: what opening the journal on the store needs (the connection, the report's facts,
//! the daemon's control log), and a representative set of the journal's own operations
//! (open_run, marks and outcomes, recovery, the lease, control requests, pruning, the report's
//! scan), each run on both.

use std::time::Duration;

use jiff::Timestamp;

use super::schema::is_unfinished_conflict;
use super::testutil::*;
use super::*;
use crate::clock::{Clock, SimClock};
use crate::exit::Exit;

/// A test on both backends: `$body(On)` as `$sqlite` and as `$postgres`.
macro_rules! on_both {
    ($sqlite:ident, $postgres:ident, $body:ident $(,)?) => {
        #[test]
        fn $sqlite() {
            $body(On::Sqlite);
        }
        #[test]
        fn $postgres() {
            $body(On::Postgres);
        }
    };
}

/// A fresh journal on `on` with a new run of the test audience (`testutil::rows`, the ids in
/// `suppressed` suppressed), and the run's id.
fn journal_with_run(on: On, label: &str, suppressed: &[u64]) -> Option<(Journal, Keep, String)> {
    let (mut j, keep) = fresh_journal(on, label)?;
    let id = open(&mut j, "h1", ResumeOptions::default(), rows(suppressed))
        .expect("create")
        .run()
        .id
        .clone();
    Some((j, keep, id))
}

/// A fresh journal on `on` with a new run of the test audience, created on a simulated clock
/// (its lease's times are that clock's), the clock, and the run.
fn journal_with_leased_run(on: On, label: &str) -> Option<(Journal, Keep, SimClock, RunInfo)> {
    let (mut j, keep) = fresh_journal(on, label)?;
    let clock = SimClock::new(now());
    let run = open_at(&mut j, "h1", rows(&[]), clock.now())
        .expect("create")
        .run()
        .clone();
    Some((j, keep, clock, run))
}

fn at(secs: i64) -> Timestamp {
    now() + jiff::SignedDuration::from_secs(secs)
}

// ---- what opening the journal on the store needs (runs now) ------------------------------

/// `open_store` opens the journal in the store (its tables are migration 6's, applied on
/// connecting), names it without a password, hands out its store connection, and
/// `open_state`/`open_state_reader` pick the backend from the state configuration; the reader's
/// session refuses writes.
#[test]
fn open_store_opens_the_journal_in_postgres() {
    let Some(db) = crate::testing::pg::test_db("journal_open") else {
        return;
    };
    let j = Journal::open_store(db.url()).expect("open the journal in the store");
    assert_eq!(j.path(), std::path::Path::new(&db.url().redacted()));
    assert!(j.store_url().is_some());
    let c = j.connection();
    assert_eq!(c.backend(), crate::store::Backend::Postgres);
    let version: i64 = c
        .query_row(
            "SELECT CAST(MAX(version) AS BIGINT) FROM imcast_schema",
            &[],
            |r| r.get(0),
        )
        .expect("schema version");
    assert_eq!(version, i64::from(crate::pg::schema::SCHEMA_VERSION));
    let runs: i64 = c
        .query_row("SELECT COUNT(*) FROM runs", &[], |r| r.get(0))
        .expect("the journal's tables are there");
    assert_eq!(runs, 0);
    // The unfinished-run index refuses a second unfinished run, recognized by its name.
    insert_run(c, "r1", None, "running", false).expect("first");
    let e = insert_run(c, "r2", None, "paused", false).expect_err("a second unfinished run");
    assert!(is_unfinished_conflict(&e), "{e}");
    let je = JournalError::Db {
        path: j.path().to_path_buf(),
        source: e,
    };
    assert_eq!(je.exit(), Exit::Busy);
    insert_run(c, "t1", None, "running", true).expect("a test run is not limited");
    // Other stages' migrations are the store's: nothing to do.
    let mut j2 = Journal::open_state(&db.store()).expect("open_state");
    assert!(j2.store_url().is_some());
    j2.migrate_extra("report", crate::report::facts::MIGRATIONS)
        .expect("no-op on the store");
    // A reader sees the rows and cannot write.
    let r = Journal::open_state_reader(&db.store(), 256).expect("reader");
    let n: i64 = r
        .connection()
        .query_row("SELECT COUNT(*) FROM runs", &[], |r| r.get(0))
        .expect("read");
    assert_eq!(n, 2);
    let e = r
        .connection()
        .execute("DELETE FROM runs", &[])
        .expect_err("read only");
    let read_only = |e: &crate::store::StoreError| {
        matches!(e, crate::store::StoreError::Postgres(p)
            if p.code() == Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION))
    };
    assert!(read_only(&e), "{e:?}");
    let r2 = j.reader().expect("reader of a store journal");
    let e = r2
        .connection()
        .execute("DELETE FROM runs", &[])
        .expect_err("read only");
    assert!(read_only(&e), "{e:?}");
    assert!(matches!(j.source(), JournalSource::Store(_)));
}

/// A journal write that waits past the connection's `lock_timeout` for the journal's advisory
/// lock (held by another session) fails as busy (exit 6), saying another process held the lock
/// and to try again; once the lock is free the same write succeeds.
#[test]
fn lock_timeout_is_busy_on_postgres() {
    let Some(db) = crate::testing::pg::test_db("journal_lock_timeout") else {
        return;
    };
    let j = Journal::open_store(db.url()).expect("open the journal in the store");
    let other = crate::store::Conn::postgres(db.url()).expect("a second session");
    other
        .execute_batch(&format!("SELECT pg_advisory_lock({JOURNAL_LOCK})"))
        .expect("hold the journal's lock");
    j.connection()
        .execute_batch("SET lock_timeout = '200ms'")
        .expect("short lock_timeout");
    let e = j
        .request_control("a", ControlRequest::Pause, Some("test"), at(0))
        .expect_err("the lock is held");
    assert!(
        matches!(&e, JournalError::Db { source, .. } if source.is_lock_wait()),
        "{e:?}"
    );
    assert_eq!(e.exit(), Exit::Busy, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("another imcast process held the journal's lock too long")
            && text.contains("try again"),
        "{text}"
    );
    // A grouped write keeps the exit.
    assert_eq!(
        JournalError::Write(std::sync::Arc::new(e)).exit(),
        Exit::Busy
    );
    assert_eq!(j.control("a").expect("read"), None, "nothing was written");
    other
        .execute_batch(&format!("SELECT pg_advisory_unlock({JOURNAL_LOCK})"))
        .expect("release");
    j.request_control("a", ControlRequest::Pause, Some("test"), at(0))
        .expect("the lock is free");
    assert_eq!(j.control("a").expect("read"), Some(ControlRequest::Pause));
}

/// A reader on PostgreSQL whose session is terminated reconnects on its next statement, and the
/// new session is still read only: a write through it is refused.
#[test]
fn reader_stays_read_only_after_a_reconnect_on_postgres() {
    let Some(db) = crate::testing::pg::test_db("journal_reader_reconnect") else {
        return;
    };
    let _j = Journal::open_store(db.url()).expect("open the journal in the store");
    let r = Journal::open_state_reader(&db.store(), 256).expect("reader");
    let pid_of = |r: &Journal| -> i64 {
        r.connection()
            .query_row("SELECT CAST(pg_backend_pid() AS BIGINT)", &[], |row| {
                row.get(0)
            })
            .expect("pid")
    };
    let pid = pid_of(&r);
    let gone = db.with_client(move |c| {
        let pid = i32::try_from(pid).expect("pid");
        c.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate");
        // Terminating is asynchronous: wait until the backend is gone.
        (0..200).any(|_| {
            let left: i64 = c
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .expect("pg_stat_activity")
                .get(0);
            if left > 0 {
                std::thread::sleep(Duration::from_millis(25));
            }
            left == 0
        })
    });
    assert!(gone, "the reader's backend was not terminated");
    // The first statement meets the dead session; the next one reconnects.
    let e = r
        .connection()
        .query("SELECT 1", &[])
        .expect_err("the session is gone");
    assert!(e.is_transient(), "{e:?}");
    let new_pid = pid_of(&r);
    assert_ne!(new_pid, pid, "a new session");
    let e = r
        .connection()
        .execute("DELETE FROM runs", &[])
        .expect_err("still read only");
    assert!(
        matches!(&e, crate::store::StoreError::Postgres(p)
            if p.code() == Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)),
        "{e:?}"
    );
    // Through the journal's own write path too.
    let e = r
        .request_control("a", ControlRequest::Pause, None, at(0))
        .expect_err("a journal write through the reader");
    assert!(
        matches!(&e, JournalError::Db { source: crate::store::StoreError::Postgres(p), .. }
            if p.code() == Some(&postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)),
        "{e:?}"
    );
}

/// `open_state` on SQLite is the state directory's file, and a reader of it finds it missing
/// before anything created it.
#[test]
fn open_state_on_sqlite_is_the_state_directorys_file() {
    let d = tempfile::tempdir().expect("tempdir");
    let store = crate::config::StateStore::Sqlite(d.path().join("state"));
    assert!(!journal_exists(&store));
    assert!(matches!(
        Journal::open_state_reader(&store, 256),
        Err(JournalError::Missing(_))
    ));
    let j = Journal::open_state(&store).expect("open");
    assert_eq!(j.path(), d.path().join("state").join(DB_FILE));
    assert!(j.store_url().is_none());
    assert!(journal_exists(&store));
    assert_eq!(j.connection().backend(), crate::store::Backend::Sqlite);
    // A mock state directory keeps its journal in SQLite even with a store.
    let url = crate::pg::PgUrl::parse("postgres://u@127.0.0.1:5432/db").expect("url");
    assert!(matches!(
        journal_store(Some(&url), d.path(), true),
        crate::config::StateStore::Sqlite(_)
    ));
    assert!(matches!(
        journal_store(Some(&url), d.path(), false),
        crate::config::StateStore::Postgres(_)
    ));
    assert!(matches!(
        journal_store(None, d.path(), false),
        crate::config::StateStore::Sqlite(_)
    ));
}

/// The report's facts (`report_runs`, `report_variants`) are recorded and read back the same on
/// both backends; recording again replaces a run's variants.
fn report_facts(on: On) {
    let Some((mut j, _keep)) = fresh_journal(on, "journal_report") else {
        return;
    };
    use crate::report::facts::{record_run, recorded, RunMeta};
    let variant = |name: &str, n: u64, content: &str| crate::plan::PlanVariant {
        variant: name.into(),
        recipients: n,
        variant_name: Some("b".into()),
        msg_type: 1,
        content: content.into(),
        ext: [("k".to_string(), "v".to_string())].into(),
    };
    let meta = RunMeta {
        campaign_file: Some("campaigns/spring.yaml".into()),
        app_id: Some(9_007_199_254_740_993),
        distinct_contents: 2,
    };
    assert_eq!(recorded(&j, "r1").expect("nothing yet"), (None, Vec::new()));
    record_run(
        &mut j,
        "r1",
        &meta,
        &[variant("v1", 3, "hi"), variant("v2", 7, "hello")],
    )
    .expect("record");
    let (m, vs) = recorded(&j, "r1").expect("read");
    assert_eq!(m, Some(meta.clone()));
    let names: Vec<(&str, u64, &str)> = vs
        .iter()
        .map(|v| (v.variant.as_str(), v.recipients, v.variant_name.as_str()))
        .collect();
    assert_eq!(names, [("v2", 7, "b"), ("v1", 3, "b")], "largest first");
    assert_eq!(vs[0].ext.get("k").map(String::as_str), Some("v"));
    assert_eq!((vs[0].msg_type, vs[0].content_bytes), (1, 5));
    // Again (a resumed run): the same row, the variants replaced.
    record_run(&mut j, "r1", &meta, &[variant("v3", 1, "x")]).expect("again");
    let (_, vs) = recorded(&j, "r1").expect("read");
    assert_eq!(vs.len(), 1);
    assert_eq!(vs[0].variant, "v3");
}
on_both!(report_facts_sqlite, report_facts_postgres, report_facts);

/// The daemon's control log (`sched_control`) is written and read on the journal's connection,
/// where the request's removal commits, and pruned there.
fn control_log(on: On) {
    let Some((j, _keep)) = fresh_journal(on, "journal_control_log") else {
        return;
    };
    if let Some(c) = j.connection().as_sqlite() {
        // On SQLite the daemon's tables are created when it opens the state directory.
        crate::daemon::state::migrate(c).expect("scheduler tables");
    }
    use crate::daemon::state::{control_result, log_control, prune_control_log};
    let req = PendingControl {
        campaign: "a".into(),
        request: ControlRequest::Pause,
        requested_at: at(0),
        requested_by: Some("imcast pause".into()),
    };
    let since = at(0).as_second();
    assert_eq!(control_result(j.connection(), "a", since).expect("q"), None);
    log_control(j.connection(), &req, since + 1, "paused").expect("log");
    log_control(j.connection(), &req, since + 2, "paused again").expect("log");
    assert_eq!(
        control_result(j.connection(), "a", since).expect("q"),
        Some("paused again".into()),
        "the latest answer"
    );
    // An answer to a request made before `since` is not this one's.
    assert_eq!(
        control_result(j.connection(), "a", since + 1).expect("q"),
        None
    );
    assert_eq!(control_result(j.connection(), "b", since).expect("q"), None);
    assert_eq!(
        prune_control_log(j.connection(), since + 2).expect("prune"),
        1
    );
    assert_eq!(
        prune_control_log(j.connection(), since + 10).expect("prune"),
        1
    );
    assert_eq!(control_result(j.connection(), "a", since).expect("q"), None);
}
on_both!(control_log_sqlite, control_log_postgres, control_log);

// ---- the journal's own operations (PostgreSQL: after the port) ---------------------------

/// A run is created, resumed after a crash (its in-flight receivers `unknown`), and the partial
/// unique index refuses a second unfinished run of the campaign, recognized by its name.
fn open_run_create_resume_and_refuse(on: On) {
    let Some((mut j, keep)) = fresh_journal(on, "journal_open_run") else {
        return;
    };
    let run = open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("create");
    assert!(matches!(run, Opened::Created(_)), "{run:?}");
    let id = run.run().id.clone();
    j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
        .expect("mark");
    drop(j);
    // The process died: the next one resumes, the in-flight receivers become unknown.
    let mut j = keep.reopen();
    match open(&mut j, "h1", ResumeOptions::default(), rows(&[])).expect("resume") {
        Opened::Resumed { run, recovered } => {
            assert_eq!(run.id, id);
            assert_eq!(recovered.unknown_recipients, 2);
        }
        other => panic!("expected a resume, got {other:?}"),
    }
    let c = j.counts(&id).expect("counts");
    assert_eq!(c[&RecipientStatus::Unknown], 2);
    assert_eq!(c[&RecipientStatus::Pending], 2);
    assert_eq!(
        j.sendable(&id, 0, &[101, 102, 103], false).expect("q"),
        [103]
    );
    let e = insert_run(j.connection(), "dup", None, "paused", false)
        .expect_err("a second unfinished run");
    assert!(is_unfinished_conflict(&e), "{e}");
    assert_eq!(
        j.unfinished_run("spring", None).expect("q").map(|r| r.id),
        Some(id)
    );
}
on_both!(
    open_run_create_resume_and_refuse_sqlite,
    open_run_create_resume_and_refuse_postgres,
    open_run_create_resume_and_refuse,
);

/// An in-flight mark and its outcome move the counters exactly (they match a scan of the rows).
fn marks_outcomes_and_counts(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_outcomes", &[104]) else {
        return;
    };
    j.mark_in_flight(&id, 0, "v", &[101, 102, 103], None, now())
        .expect("mark");
    assert_eq!(
        j.calls_in_state(&id, CallState::InFlight, 10)
            .expect("q")
            .len(),
        1
    );
    let failed = RecipientUpdate {
        id: 103,
        status: RecipientStatus::Failed,
        message_id: None,
        error_code: Some("InvalidUserId".into()),
        error_message: Some("no such user".into()),
        detail: None,
    };
    if on == On::Postgres {
        // The tests' cluster runs with it off; the session as a team's server has it.
        j.connection()
            .execute("SET synchronous_commit = on", &[])
            .expect("set");
    }
    j.record_outcome(
        &id,
        0,
        CallState::Done,
        &[sent(101, 7), sent(102, 9_007_199_254_740_993), failed],
        None,
        at(1),
    )
    .expect("outcome");
    // The outcome-only commit's relaxed durability stayed in its own transaction: the
    // connection's next commit (a mark's) is synchronous again.
    let c = j.connection();
    match on {
        On::Sqlite => {
            let full: i64 = c
                .query_row("PRAGMA synchronous", &[], |r| r.get(0))
                .expect("pragma");
            assert_eq!(full, 2, "synchronous=FULL again");
        }
        On::Postgres => {
            let sync: String = c
                .query_row("SHOW synchronous_commit", &[], |r| r.get(0))
                .expect("show");
            assert_eq!(sync, "on", "SET LOCAL ended with its transaction");
        }
    }
    let c = j.counts(&id).expect("counts");
    assert_eq!(c[&RecipientStatus::Sent], 2);
    assert_eq!(c[&RecipientStatus::Failed], 1);
    assert_eq!(c[&RecipientStatus::Suppressed], 1);
    assert_eq!(c[&RecipientStatus::Pending], 0);
    assert_eq!(c, j.counts_by_scan(&id).expect("scan"));
    let rows = j.recipients(&id).expect("rows");
    assert_eq!(rows[1].message_id, Some(9_007_199_254_740_993));
    assert_eq!(rows[2].error_code.as_deref(), Some("InvalidUserId"));
    let calls = j.calls(&id).expect("calls");
    assert_eq!(calls[0].state, CallState::Done);
    assert_eq!(calls[0].receivers, [101, 102, 103]);
}
on_both!(
    marks_outcomes_and_counts_sqlite,
    marks_outcomes_and_counts_postgres,
    marks_outcomes_and_counts,
);

/// A refused receiver resent in a call where everyone is delivered (PostgreSQL's statement for a
/// delivered call, SQLite's per-row update): it becomes `sent` with its error cleared, its
/// attempts adding both calls', its refusal kept; a row already final is left alone.
fn delivered_call_after_a_refusal(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_delivered", &[]) else {
        return;
    };
    j.mark_in_flight(&id, 0, "v", &[101, 102, 103, 104], None, now())
        .expect("mark");
    let refused = RecipientUpdate {
        id: 102,
        status: RecipientStatus::Pending,
        message_id: None,
        error_code: Some("FailedReceiver".into()),
        error_message: Some("refused".into()),
        detail: None,
    };
    j.record_outcome(
        &id,
        0,
        CallState::Done,
        &[sent(101, 7), refused, sent(103, 8), sent(104, 9)],
        None,
        at(1),
    )
    .expect("outcome");
    // The resend carries 102 again, and 101 (already sent: must stay as it is).
    j.mark_in_flight(&id, 5, "v", &[102, 101], None, at(2))
        .expect("mark resend");
    j.record_outcome(
        &id,
        5,
        CallState::Done,
        &[sent(102, 11), sent(101, 99)],
        None,
        at(3),
    )
    .expect("resend outcome");
    let c = j.counts(&id).expect("counts");
    assert_eq!(c[&RecipientStatus::Sent], 4);
    assert_eq!(c[&RecipientStatus::Pending], 0);
    assert_eq!(c, j.counts_by_scan(&id).expect("scan"));
    let rows = j.recipients(&id).expect("rows");
    let r101 = &rows[0];
    assert_eq!(
        (r101.message_id, r101.attempts, r101.call),
        (Some(7), 1, Some(0))
    );
    let r102 = &rows[1];
    assert_eq!(r102.status, RecipientStatus::Sent);
    assert_eq!(
        (r102.message_id, r102.attempts, r102.call),
        (Some(11), 2, Some(5))
    );
    assert_eq!(
        (r102.error_code.as_deref(), r102.error_message.as_deref()),
        (None, None)
    );
    let refusals: i64 = j
        .connection()
        .query_row("SELECT refusals FROM recipients WHERE id = 102", &[], |r| {
            r.get(0)
        })
        .expect("refusals");
    assert_eq!(refusals, 1, "the refusal stays counted");
}
on_both!(
    delivered_call_after_a_refusal_sqlite,
    delivered_call_after_a_refusal_postgres,
    delivered_call_after_a_refusal,
);

/// A new run's plan call marked with exactly its seeded receivers, in order, finds their rows by
/// the call's lines without reading them (`calls::Marked`), and the outcome lands on the right
/// rows; any other receiver list (another order, a subset), a call with a row that was not
/// `pending` when seeded, and a call marked again after its outcome read their rows as before.
/// On PostgreSQL a fresh call whose rows are all deferred is marked from its plan row alone
/// (`calls::PG_FRESH_MARK`); one with a row of its own (a note) reads the plan's lines.
fn fresh_marks_find_the_rows_by_their_lines(on: On) {
    let Some((mut j, _keep)) = fresh_journal(on, "journal_fresh") else {
        return;
    };
    // Calls 0 (101, 102), 1 (103, 104), 2 (105, suppressed 106).
    let mut seed = rows(&[]);
    seed.extend(rows(&[]).into_iter().take(2).map(|mut r| {
        r.line += 4;
        r.id = r.id.map(|v| v + 4);
        r.raw_id = None;
        r
    }));
    // Call 3 (107 with a note of its own, 108).
    seed.extend(rows(&[]).into_iter().take(2).map(|mut r| {
        r.line += 8;
        r.id = r.id.map(|v| v + 6);
        r.raw_id = None;
        r
    }));
    for (i, r) in seed.iter_mut().enumerate() {
        r.call_seq = Some(i as u64 / 2);
        if r.id == Some(106) {
            r.status = RecipientStatus::Suppressed;
        }
        if r.id == Some(107) {
            r.note = Some("vip".into());
        }
    }
    let id = open(&mut j, "h1", ResumeOptions::default(), seed)
        .expect("create")
        .run()
        .id
        .clone();
    j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
        .expect("mark 0");
    assert_eq!(j.marked.fresh_marks, 1, "call 0: its seeded receivers");
    let from_plan = u64::from(matches!(on, On::Postgres));
    assert_eq!(j.marked.plan_marks, from_plan, "call 0: all deferred");
    j.mark_in_flight(&id, 3, "v", &[107, 108], None, now())
        .expect("mark 3");
    assert_eq!(j.marked.fresh_marks, 2, "call 3: its seeded receivers");
    assert_eq!(j.marked.plan_marks, from_plan, "call 3: 107 has a row");
    j.record_outcome(
        &id,
        3,
        CallState::Done,
        &[sent(107, 70), sent(108, 80)],
        None,
        at(1),
    )
    .expect("outcome 3");
    j.mark_in_flight(&id, 1, "v", &[104, 103], None, now())
        .expect("mark 1");
    j.mark_in_flight(&id, 2, "v", &[105], None, now())
        .expect("mark 2");
    assert_eq!(
        j.marked.fresh_marks, 2,
        "another order; a suppressed row in the call"
    );
    j.record_outcome(
        &id,
        0,
        CallState::Done,
        &[sent(102, 20), sent(101, 10)],
        None,
        at(1),
    )
    .expect("outcome 0");
    j.record_outcome(
        &id,
        1,
        CallState::Done,
        &[sent(103, 30), sent(104, 40)],
        None,
        at(1),
    )
    .expect("outcome 1");
    j.record_outcome(&id, 2, CallState::Done, &[sent(105, 50)], None, at(1))
        .expect("outcome 2");
    j.mark_in_flight(&id, 0, "v", &[101, 102], None, at(2))
        .expect("mark 0 again");
    assert_eq!(j.marked.fresh_marks, 2, "call 0 had its outcome");
    assert_eq!(j.marked.plan_marks, from_plan);
    let by_id: Vec<(Option<u64>, RecipientStatus, Option<u64>)> = j
        .recipients(&id)
        .expect("rows")
        .into_iter()
        .map(|r| (r.id, r.status, r.message_id))
        .collect();
    assert_eq!(
        by_id,
        [
            (Some(101), RecipientStatus::Sent, Some(10)),
            (Some(102), RecipientStatus::Sent, Some(20)),
            (Some(103), RecipientStatus::Sent, Some(30)),
            (Some(104), RecipientStatus::Sent, Some(40)),
            (Some(105), RecipientStatus::Sent, Some(50)),
            (Some(106), RecipientStatus::Suppressed, None),
            (Some(107), RecipientStatus::Sent, Some(70)),
            (Some(108), RecipientStatus::Sent, Some(80)),
        ]
    );
    let calls = j.calls(&id).expect("calls");
    assert_eq!(calls[0].receivers, [101, 102]);
    assert_eq!(calls[1].receivers, [104, 103]);
    assert_eq!(calls[3].receivers, [107, 108]);
    let c = j.counts(&id).expect("counts");
    assert_eq!(c[&RecipientStatus::Sent], 7);
    assert_eq!(c, j.counts_by_scan(&id).expect("scan"));
}
on_both!(
    fresh_marks_find_the_rows_by_their_lines_sqlite,
    fresh_marks_find_the_rows_by_their_lines_postgres,
    fresh_marks_find_the_rows_by_their_lines,
);

/// The seeded fingerprints hold only while the journal keeps the run under the fence it created
/// it with: after another process took the run over and this one claimed it back, a mark reads
/// the rows (the other process may have written them).
fn fresh_marks_end_with_a_takeover(on: On) {
    let Some((mut a, keep, clock, run)) = journal_with_leased_run(on, "journal_fresh_takeover")
    else {
        return;
    };
    let b = keep.reopen();
    clock.advance(Duration::from_secs(31));
    b.claim(&run, clock.now()).expect("b takes the run over");
    clock.advance(Duration::from_secs(31));
    a.claim(&run, clock.now()).expect("a claims it back");
    a.mark_in_flight(&run.id, 0, "v", &[101, 102, 103, 104], None, clock.now())
        .expect("mark");
    assert_eq!(a.marked.fresh_marks, 0, "the fingerprints were dropped");
    a.record_outcome(
        &run.id,
        0,
        CallState::Done,
        &[sent(101, 1), sent(102, 2), sent(103, 3), sent(104, 4)],
        None,
        clock.now(),
    )
    .expect("outcome");
    assert_eq!(
        a.counts(&run.id).expect("counts")[&RecipientStatus::Sent],
        4
    );
}
on_both!(
    fresh_marks_end_with_a_takeover_sqlite,
    fresh_marks_end_with_a_takeover_postgres,
    fresh_marks_end_with_a_takeover,
);

/// Another host's lease is taken only once it expired, the fence moves, and the old holder's
/// next write is refused and writes nothing.
fn lease_claim_and_fence(on: On) {
    let Some((mut a, keep, clock, run)) = journal_with_leased_run(on, "journal_lease") else {
        return;
    };
    assert_eq!(a.lease(&run.id).expect("q").expect("run").fence, 1);
    // b (another process; its holder on another host as far as `a`'s row says) waits for the
    // expiry.
    let b = keep.reopen();
    clock.advance(Duration::from_secs(29));
    let e = b.claim(&run, clock.now()).expect_err("not expired yet");
    assert_eq!(e.exit(), Exit::Busy);
    clock.advance(Duration::from_secs(31));
    b.claim(&run, clock.now()).expect("expired: taken over");
    assert_eq!(b.lease(&run.id).expect("q").expect("run").fence, 2);
    let e = a
        .mark_in_flight(&run.id, 0, "v", &[101], None, clock.now())
        .expect_err("fenced");
    assert!(e.is_fenced(), "{e}");
    assert!(
        b.calls(&run.id).expect("calls").is_empty(),
        "a wrote nothing"
    );
}
on_both!(
    lease_claim_and_fence_sqlite,
    lease_claim_and_fence_postgres,
    lease_claim_and_fence,
);

/// A control request waits, is listed, and finishing it commits the caller's log row with it.
fn control_request(on: On) {
    let Some((j, _keep)) = fresh_journal(on, "journal_control") else {
        return;
    };
    if let Some(c) = j.connection().as_sqlite() {
        crate::daemon::state::migrate(c).expect("scheduler tables");
    }
    j.request_control("a", ControlRequest::Pause, Some("imcast pause"), at(0))
        .expect("request");
    assert!(j.control_pending("a").expect("q"));
    let pending = j.pending_controls().expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request, ControlRequest::Pause);
    let removed = j
        .finish_control(&pending[0], |j| -> Result<(), JournalError> {
            crate::daemon::state::log_control(j.connection(), &pending[0], 1, "paused")
                .map_err(|e| JournalError::Corrupt(e.to_string()))
        })
        .expect("finish");
    assert!(removed);
    assert!(!j.control_pending("a").expect("q"));
    assert_eq!(
        crate::daemon::state::control_result(j.connection(), "a", at(0).as_second()).expect("q"),
        Some("paused".into())
    );
}
on_both!(
    control_request_sqlite,
    control_request_postgres,
    control_request,
);

/// Pruning deletes a finished run with its rows, and keeps an unfinished one.
fn prune(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_prune", &[]) else {
        return;
    };
    j.set_status(&id, RunStatus::Finished, None, at(1))
        .expect("finish");
    let other = {
        let mut n = new_run("h2");
        n.campaign = "summer".into();
        let r: Vec<SeedRow> = rows(&[]);
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        j.open_run(&n, ResumeOptions::default(), &mut f, now())
            .expect("another")
            .run()
            .id
            .clone()
    };
    let (runs, _calls, recipients) = j.prune_runs(at(86_400)).expect("prune");
    assert_eq!((runs, recipients), (1, 4));
    assert!(j.run(&id).expect("q").is_none());
    assert!(j.run(&other).expect("q").is_some(), "unfinished: kept");
}
on_both!(prune_sqlite, prune_postgres, prune);

/// A row's time is its answered call's (`updated_at`; a row left pending by it too), else the
/// run's start (a suppressed row); on PostgreSQL the
/// scan gives the same rows whether it reads the call times into memory first or with each row
/// (a run with more answered calls than the bound).
fn recipient_times(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_times", &[104]) else {
        return;
    };
    j.mark_in_flight(&id, 0, "v", &[101, 102], None, now())
        .expect("mark");
    j.record_outcome(
        &id,
        0,
        CallState::Done,
        &[sent(101, 7), sent(102, 8)],
        None,
        at(5),
    )
    .expect("outcome");
    let scan = |bound: usize| {
        let mut v = Vec::new();
        j.scan_recipients::<JournalError>(&id, 0..=u64::MAX, bound, 1 << 16, |r| {
            v.push(r.to_row());
            Ok(())
        })
        .expect("scan");
        v
    };
    let rows = scan(100);
    let times: Vec<Option<String>> = rows.iter().map(|r| r.time.clone()).collect();
    let (start, answered) = (
        Some(super::schema::ts(now())),
        Some(super::schema::ts(at(5))),
    );
    assert_eq!(
        times,
        [answered.clone(), answered.clone(), answered, start],
        "{rows:?}"
    );
    assert_eq!(scan(0), rows, "call times read with each row");
    assert_eq!(scan(1), rows, "one answered call: read first");
}
on_both!(
    recipient_times_sqlite,
    recipient_times_postgres,
    recipient_times,
);

/// A call's outcomes, also where PostgreSQL leaves its one-statement update (`calls::PG_OUTCOMES`)
/// for the per-row one (an id named twice) or looks an id up outside the call's lines (a stray
/// id without a row): the same rows change on both backends, only open ones (a suppressed
/// receiver stays), a refusal is counted, and the counters match a scan.
fn outcomes_with_strays_and_repeats(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_outcome_paths", &[104]) else {
        return;
    };
    let refused = RecipientUpdate {
        id: 102,
        status: RecipientStatus::Pending,
        message_id: None,
        error_code: Some("FailedReceiver".into()),
        error_message: None,
        detail: None,
    };
    // Every receiver at the call's lines; 104 (suppressed) is not open and stays.
    j.mark_in_flight(&id, 0, "v", &[101, 102, 104], None, now())
        .expect("mark");
    j.record_outcome(
        &id,
        0,
        CallState::Done,
        &[sent(101, 7), refused, sent(104, 9)],
        None,
        at(1),
    )
    .expect("outcome");
    // The refused receiver resent in an extra call with a stray id (no row): the general path.
    j.mark_in_flight(&id, 1, "v", &[102, 999], None, now())
        .expect("mark");
    j.record_outcome(
        &id,
        1,
        CallState::Done,
        &[sent(102, 8), sent(999, 10)],
        None,
        at(2),
    )
    .expect("outcome");
    // An id named twice: the general path, applied in order.
    j.mark_in_flight(&id, 2, "v", &[103], None, now())
        .expect("mark");
    j.record_outcome(
        &id,
        2,
        CallState::Done,
        &[sent(103, 11), sent(103, 12)],
        None,
        at(3),
    )
    .expect("outcome");
    let rows = j.recipients(&id).expect("rows");
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.id.expect("id"),
                r.status,
                r.message_id,
                r.attempts,
                r.call,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (101, RecipientStatus::Sent, Some(7), 1, Some(0)),
            (102, RecipientStatus::Sent, Some(8), 2, Some(1)),
            (103, RecipientStatus::Sent, Some(11), 1, Some(2)),
            (104, RecipientStatus::Suppressed, None, 0, Some(0)),
        ]
    );
    let refusals: i64 = j
        .connection()
        .query_row("SELECT refusals FROM recipients WHERE id = 102", &[], |r| {
            r.get(0)
        })
        .expect("refusals");
    assert_eq!(refusals, 1);
    let c = j.counts(&id).expect("counts");
    assert_eq!(c[&RecipientStatus::Sent], 3);
    assert_eq!(c[&RecipientStatus::Pending], 0);
    assert_eq!(c, j.counts_by_scan(&id).expect("scan"));
}
on_both!(
    outcomes_with_strays_and_repeats_sqlite,
    outcomes_with_strays_and_repeats_postgres,
    outcomes_with_strays_and_repeats,
);

/// A group commit that fails after an outcome added its call's variant to the run's dictionary
/// takes the variant back with it: the next outcome of the call adds it again, and its rows name
/// it (the outcome's remembered variant indexes go with the failed batch).
fn a_failed_batch_forgets_the_variant_it_added(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_failed_variant", &[]) else {
        return;
    };
    j.mark_in_flight(&id, 0, "w", &[101, 102], None, now())
        .expect("mark");
    // The attempt of call 9's mark fails, after call 0's outcome in the same batch.
    let (arm, disarm) = match on {
        On::Sqlite => (
            "CREATE TEMP TRIGGER boom BEFORE INSERT ON attempts WHEN NEW.seq = 9
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
            "DROP TRIGGER boom;",
        ),
        On::Postgres => (
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.seq = 9 THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER boom BEFORE INSERT ON attempts FOR EACH ROW EXECUTE FUNCTION boom();",
            "DROP TRIGGER boom ON attempts; DROP FUNCTION boom();",
        ),
    };
    j.connection().execute_batch(arm).expect("arm");
    let outcome = Outcome {
        run_id: id.clone(),
        seq: 0,
        state: CallState::Done,
        updates: vec![sent(101, 7), sent(102, 8)],
        error: None,
        now: at(1),
    };
    let mark = Mark {
        run_id: id.clone(),
        seq: 9,
        variant: "x".into(),
        receivers: vec![103],
        client_msg_id: None,
        now: at(1),
    };
    let failed = j.write_batch(&[Write::Outcome(outcome.clone()), Write::Mark(mark)]);
    assert!(failed.is_err(), "{failed:?}");
    j.connection().execute_batch(disarm).expect("disarm");
    j.write_batch(&[Write::Outcome(outcome)]).expect("outcome");
    let rows = j.recipients(&id).expect("rows");
    for r in &rows[..2] {
        assert_eq!(
            (r.status, r.variant.as_deref()),
            (RecipientStatus::Sent, Some("w")),
            "{r:?}"
        );
    }
}
on_both!(
    a_failed_batch_forgets_the_variant_it_added_sqlite,
    a_failed_batch_forgets_the_variant_it_added_postgres,
    a_failed_batch_forgets_the_variant_it_added,
);

/// PostgreSQL: a run's per-call look-ups of its call (the outcome's read, the final state, the
/// attempt's insert) go through the calls' key however many calls the run writes: opening a run
/// leaves `calls` unanalyzed (statistics taken while it was nearly empty made the cached plans
/// sequential scans, a cost per call growing with the run).
#[test]
fn call_look_ups_use_the_key_on_postgres() {
    let Some((mut j, _keep, id)) = journal_with_run(On::Postgres, "journal_call_plans", &[]) else {
        return;
    };
    let seq_scans = |j: &Journal| -> i64 {
        let c = j.connection();
        c.execute_batch("SELECT pg_stat_force_next_flush()")
            .expect("flush");
        c.query_row(
            "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'calls'",
            &[],
            |r| r.get(0),
        )
        .expect("stats")
    };
    let before = seq_scans(&j);
    for seq in 1..=40u64 {
        j.mark_in_flight(&id, seq, "v", &[], None, now())
            .expect("mark");
        j.record_outcome(&id, seq, CallState::Done, &[], None, at(1))
            .expect("outcome");
    }
    let scans = seq_scans(&j) - before;
    assert!(scans <= 5, "{scans} sequential scans of calls for 40 calls");
}

/// Call `seq` of run `id` marked in flight to `receivers` (variant "v"), then answered with
/// `updates` (done).
fn answer(
    j: &mut Journal,
    id: &str,
    seq: u64,
    receivers: &[u64],
    updates: &[RecipientUpdate],
) -> Result<(), JournalError> {
    j.mark_in_flight(id, seq, "v", receivers, None, now())?;
    j.record_outcome(id, seq, CallState::Done, updates, None, now())
}

/// Deferred rows (`deferred`): a new run's planned pending rows with a canonical id are held per
/// plan call, not as rows; every reader sees them as `pending` rows in audience order (whatever
/// the scan's window), a call's outcome writes them with their final values (a receiver it does
/// not name stays `pending`), crash recovery turns an in-flight call's into `unknown`, a cancel
/// ends the rest, and the counters equal a scan at every step.
fn deferred_rows(on: On) {
    let Some((mut j, keep)) = fresh_journal(on, "journal_deferred") else {
        return;
    };
    let row = |line: u64, id: Option<u64>, status: RecipientStatus, call: Option<u64>| SeedRow {
        line,
        id,
        raw_id: None,
        status,
        call_seq: call,
        variant: call.map(|_| "v".to_string()),
        variant_name: None,
        note: (status != RecipientStatus::Pending).then(|| "why".to_string()),
    };
    use RecipientStatus::{Duplicate, Invalid, Pending, Suppressed};
    let mut seed = vec![
        row(2, Some(101), Pending, Some(0)),
        row(3, Some(102), Pending, Some(0)),
        row(4, None, Invalid, None),
        row(5, Some(103), Pending, Some(0)),
        row(6, Some(104), Pending, Some(1)),
        row(7, Some(105), Pending, Some(1)),
        row(8, Some(101), Duplicate, None),
        row(9, Some(106), Pending, Some(2)),
        row(10, Some(107), Pending, Some(2)),
        row(11, Some(108), Suppressed, None),
        row(12, Some(109), Pending, Some(2)),
    ];
    // Not its decimal form: seeded as a row, beside its call's deferred ones.
    seed[7].raw_id = Some("0106".into());
    let mut f = || -> SeedRows<'static, String> { Box::new(seed.clone().into_iter().map(Ok)) };
    let run = NewRun {
        total_calls: 3,
        ..new_run("h1")
    };
    let id = j
        .open_run(&run, ResumeOptions::default(), &mut f, now())
        .expect("create")
        .run()
        .id
        .clone();
    let count = |j: &Journal, sql: &str| -> i64 {
        j.connection()
            .query_row(sql, &[], |r| r.get(0))
            .expect("count")
    };
    let stored = |j: &Journal| {
        (
            count(j, "SELECT COUNT(*) FROM deferred"),
            count(j, "SELECT COUNT(*) FROM recipients"),
            count(j, "SELECT COUNT(*) FROM delivered"),
        )
    };
    // Three entries (call 2's holds 107 and 109); rows for lines 4, 8, 9 and 11 only.
    assert_eq!(stored(&j), (3, 4, 0));
    let check = |j: &Journal, what: &str| -> Vec<RecipientRow> {
        let all = j.recipients(&id).expect("recipients");
        let lines: Vec<u64> = all.iter().map(|r| r.line).collect();
        assert_eq!(lines, (2..=12).collect::<Vec<_>>(), "{what}: {all:?}");
        for window in [1, 2, 3, 5] {
            let mut v = Vec::new();
            j.scan_recipients::<JournalError>(&id, 0..=u64::MAX, 100, window, |r| {
                v.push(r.to_row());
                Ok(())
            })
            .expect("scan");
            assert_eq!(v, all, "{what}: window {window}");
        }
        let mut part = Vec::new();
        j.for_each_recipient_ref::<JournalError>(&id, 5..=9, |r| {
            part.push(r.line);
            Ok(())
        })
        .expect("part");
        assert_eq!(part, [5, 6, 7, 8, 9], "{what}");
        assert_eq!(
            j.counts_by_scan(&id).expect("scan"),
            j.counts(&id).expect("counts"),
            "{what}"
        );
        assert_eq!(j.last_line(&id).expect("last"), Some(12), "{what}");
        all
    };
    let all = check(&j, "seeded");
    let r103 = &all[3];
    assert_eq!(
        (r103.id, r103.status, r103.call, r103.variant.as_deref()),
        (Some(103), Pending, Some(0), Some("v"))
    );
    assert_eq!(
        (r103.attempts, r103.time.clone()),
        (0, Some(super::schema::ts(now())))
    );
    assert_eq!(j.counts(&id).expect("counts")[&Pending], 8);
    // A resend lookup (another session) finds the deferred receivers pending.
    assert_eq!(
        j.sendable(&id, 2, &[106, 107, 109], false).expect("q"),
        [106, 107, 109]
    );
    // Call 0 answered: 101 delivered, 103 failed, 102 not named (stays pending).
    let failed = RecipientUpdate {
        id: 103,
        status: RecipientStatus::Failed,
        message_id: None,
        error_code: Some("InvalidParameter".into()),
        error_message: Some("no".into()),
        detail: None,
    };
    answer(&mut j, &id, 0, &[101, 102, 103], &[sent(101, 11), failed]).expect("answer");
    // 101 (delivered plainly) kept with its call; 102 and 103 written as rows.
    assert_eq!(stored(&j), (2, 6, 1));
    let all = check(&j, "call 0 answered");
    assert_eq!(
        all[..4]
            .iter()
            .map(|r| (r.status, r.message_id, r.attempts, r.error_code.as_deref()))
            .collect::<Vec<_>>(),
        [
            (RecipientStatus::Sent, Some(11), 1, None),
            (Pending, None, 0, None),
            (Invalid, None, 0, None),
            (RecipientStatus::Failed, None, 1, Some("InvalidParameter")),
        ]
    );
    // Another process reads the same rows, and resends none of the delivered ones.
    let other = keep.reopen();
    assert_eq!(check(&other, "another journal"), all);
    assert_eq!(
        other.sendable(&id, 0, &[101, 102, 103], true).expect("q"),
        [102]
    );
    // Call 2 delivered: 106 (a row) updated, 107 and 109 (deferred) written with it.
    let delivered = [sent(106, 16), sent(107, 17), sent(109, 19)];
    answer(&mut j, &id, 2, &[106, 107, 109], &delivered).expect("answer");
    assert_eq!(stored(&j), (1, 6, 2));
    let all = check(&j, "call 2 answered");
    assert_eq!(
        [7, 8, 10].map(|i| (all[i].id, all[i].status, all[i].message_id, all[i].attempts)),
        [
            (Some(106), RecipientStatus::Sent, Some(16), 1),
            (Some(107), RecipientStatus::Sent, Some(17), 1),
            (Some(109), RecipientStatus::Sent, Some(19), 1),
        ]
    );
    // Call 1 in flight when the process stops: recovery makes its deferred receivers unknown.
    j.mark_in_flight(&id, 1, "v", &[104, 105], None, now())
        .expect("mark");
    assert_eq!(
        j.calls_in_state(&id, CallState::InFlight, 10).expect("q")[0].receivers,
        [104, 105]
    );
    let rec = j
        .recover(&id, crate::action::Action::Batch)
        .expect("recover");
    assert_eq!(rec.unknown_recipients, 2);
    assert_eq!(stored(&j), (0, 8, 2));
    let all = check(&j, "recovered");
    assert_eq!(
        (all[4].status, all[4].error_code.as_deref(), all[4].attempts),
        (RecipientStatus::Unknown, Some("InFlightAtCrash"), 1)
    );
    // A cancel ends the pending row left (102); the delivered ones are left alone.
    assert_eq!(j.cancel_pending(&id, now()).expect("cancel"), 1);
    assert_eq!(stored(&j), (0, 8, 2));
    let all = check(&j, "cancelled");
    assert_eq!(all[1].status, RecipientStatus::Cancelled);
    assert!(all.iter().all(|r| r.status != Pending), "{all:?}");
    // A delivered row reads its call's time and attempts, and written as a row (what a writer
    // that reads rows by key does first) it is the same row.
    assert_eq!(
        (all[0].time.clone(), all[0].attempts, all[0].call),
        (Some(super::schema::ts(now())), 1, Some(0))
    );
    let key = super::schema::run_key(j.connection(), &id)
        .expect("key")
        .expect("run");
    assert_eq!(
        super::deferred::materialize(j.connection(), key, super::deferred::Which::All)
            .expect("materialize"),
        3
    );
    assert_eq!(stored(&j), (0, 11, 0));
    assert_eq!(check(&j, "written as rows"), all);
}

/// A cancel (and a deadline, a stage's expiry) ends deferred rows too: they are written first,
/// then end like any pending row, in one transaction with the counters.
fn deferred_rows_end_with_a_cancel(on: On) {
    let Some((j, _keep, id)) = journal_with_run(on, "journal_deferred_cancel", &[102]) else {
        return;
    };
    let count = |sql: &str| -> i64 {
        j.connection()
            .query_row(sql, &[], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(count("SELECT COUNT(*) FROM deferred"), 1);
    assert_eq!(j.cancel_pending(&id, now()).expect("cancel"), 3);
    assert_eq!(count("SELECT COUNT(*) FROM deferred"), 0);
    let statuses: Vec<RecipientStatus> = j
        .recipients(&id)
        .expect("rows")
        .iter()
        .map(|r| r.status)
        .collect();
    use RecipientStatus::{Cancelled, Suppressed};
    assert_eq!(statuses, [Cancelled, Suppressed, Cancelled, Cancelled]);
    assert_eq!(
        j.counts_by_scan(&id).expect("scan"),
        j.counts(&id).expect("counts")
    );
}
on_both!(deferred_rows_sqlite, deferred_rows_postgres, deferred_rows);
on_both!(
    deferred_rows_end_with_a_cancel_sqlite,
    deferred_rows_end_with_a_cancel_postgres,
    deferred_rows_end_with_a_cancel,
);

/// A resume that applies new suppressions reads and moves a run's rows by their keys: a call's
/// delivered rows (kept per call, `deferred`) are written as rows first and stay `sent` with their
/// message ids; the pending ones left get suppressed; nothing is counted twice.
fn suppressions_after_a_delivered_call(on: On) {
    let Some((mut j, _keep, id)) = journal_with_run(on, "journal_delivered_suppress", &[]) else {
        return;
    };
    answer(&mut j, &id, 0, &[101, 102], &[sent(101, 7), sent(102, 8)]).expect("answer");
    let delivered = |j: &Journal| -> i64 {
        j.connection()
            .query_row("SELECT COUNT(*) FROM delivered", &[], |r| r.get(0))
            .expect("count")
    };
    assert_eq!(delivered(&j), 1);
    match open(&mut j, "h2", ResumeOptions::default(), rows(&[104])).expect("suppress") {
        Opened::ResumedWithSuppressions {
            newly_suppressed, ..
        } => assert_eq!(newly_suppressed, 1),
        other => panic!("expected a suppression resume, got {other:?}"),
    }
    assert_eq!(delivered(&j), 0);
    let rows: Vec<(Option<u64>, RecipientStatus, Option<u64>)> = j
        .recipients(&id)
        .expect("rows")
        .iter()
        .map(|r| (r.id, r.status, r.message_id))
        .collect();
    use RecipientStatus::{Pending, Sent, Suppressed};
    assert_eq!(
        rows,
        [
            (Some(101), Sent, Some(7)),
            (Some(102), Sent, Some(8)),
            (Some(103), Pending, None),
            (Some(104), Suppressed, None),
        ]
    );
    assert_eq!(
        j.counts_by_scan(&id).expect("scan"),
        j.counts(&id).expect("counts")
    );
    // What is still to send of the call: 103 only.
    assert_eq!(
        j.sendable(&id, 0, &[101, 102, 103], false).expect("q"),
        [103]
    );
}
on_both!(
    suppressions_after_a_delivered_call_sqlite,
    suppressions_after_a_delivered_call_postgres,
    suppressions_after_a_delivered_call,
);

/// A call whose receivers are spread thinly through the audience (a small group among others)
/// spans more than `deferred::WIDE` lines: a window of the report's scan far from the call's
/// first line still finds its rows, deferred and then delivered.
fn wide_entries_are_found_by_every_window(on: On) {
    let Some((mut j, _keep)) = fresh_journal(on, "journal_wide_entries") else {
        return;
    };
    let far = 2 + 2 * super::deferred::WIDE as u64;
    let row = |line: u64, id: u64, call: u64| SeedRow {
        line,
        id: Some(id),
        raw_id: None,
        status: RecipientStatus::Pending,
        call_seq: Some(call),
        variant: Some("v".into()),
        variant_name: None,
        note: None,
    };
    let seed = vec![
        row(2, 101, 0),
        row(3, 102, 1),
        row(4, 103, 1),
        row(far, 104, 0),
    ];
    let mut f = || -> SeedRows<'static, String> { Box::new(seed.clone().into_iter().map(Ok)) };
    let run = NewRun {
        total_calls: 2,
        ..new_run("h1")
    };
    let id = j
        .open_run(&run, ResumeOptions::default(), &mut f, now())
        .expect("create")
        .run()
        .id
        .clone();
    let scan = |j: &Journal| -> Vec<(u64, RecipientStatus)> {
        let mut v = Vec::new();
        j.scan_recipients::<JournalError>(&id, 0..=u64::MAX, 100, 10_000, |r| {
            v.push((r.line, r.status));
            Ok(())
        })
        .expect("scan");
        v
    };
    use RecipientStatus::{Pending, Sent};
    assert_eq!(
        scan(&j),
        [(2, Pending), (3, Pending), (4, Pending), (far, Pending)]
    );
    answer(&mut j, &id, 0, &[101, 104], &[sent(101, 1), sent(104, 4)]).expect("answer");
    assert_eq!(
        scan(&j),
        [(2, Sent), (3, Pending), (4, Pending), (far, Sent)]
    );
    assert_eq!(j.last_line(&id).expect("last"), Some(far));
}
on_both!(
    wide_entries_are_found_by_every_window_sqlite,
    wide_entries_are_found_by_every_window_postgres,
    wide_entries_are_found_by_every_window,
);

/// A scan in several statements (a window at a time) sees one state of the journal: a call
/// answered by another process while the scan is between two windows moves its rows from the
/// call's deferred entry to its delivered one in one commit, and the scan sees all of them
/// before the move (without the snapshot it saw line 2 `pending` and line 3 `sent`).
fn a_scan_sees_one_state_while_a_call_is_answered(on: On) {
    let Some((mut j, keep, id)) = journal_with_run(on, "journal_scan_snapshot", &[]) else {
        return;
    };
    let reader = keep.reopen();
    let mut seen = Vec::new();
    let mut answered = false;
    reader
        .scan_recipients::<JournalError>(&id, 0..=u64::MAX, 100, 1, |r| {
            seen.push((r.line, r.status));
            if !answered {
                answered = true;
                let all = [sent(101, 1), sent(102, 2), sent(103, 3), sent(104, 4)];
                answer(&mut j, &id, 0, &[101, 102, 103, 104], &all)?;
            }
            Ok(())
        })
        .expect("scan");
    use RecipientStatus::{Pending, Sent};
    assert_eq!(
        seen,
        [(2, Pending), (3, Pending), (4, Pending), (5, Pending)]
    );
    // A scan after the answer sees it.
    let after: Vec<RecipientStatus> = reader
        .recipients(&id)
        .expect("rows")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(after, [Sent; 4]);
}
on_both!(
    a_scan_sees_one_state_while_a_call_is_answered_sqlite,
    a_scan_sees_one_state_while_a_call_is_answered_postgres,
    a_scan_sees_one_state_while_a_call_is_answered,
);
