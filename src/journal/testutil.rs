//! Shared set-up of the journal's unit tests: a run, its audience rows, `open_run` with them, and
//! a run row inserted directly (bypassing `open_run`).

#![allow(dead_code)]

use std::time::Duration;

use jiff::Timestamp;
use rusqlite::Connection;

use crate::store::{params, Conn, StoreError, Value};

use super::{
    Journal, JournalError, NewRun, Opened, RecipientStatus, RecipientUpdate, ResumeOptions,
    RunFlags, SeedRow, SeedRows,
};
use crate::action::Action;
use crate::config::Limit;

pub(super) fn now() -> Timestamp {
    "2026-03-01T09:00:00Z".parse().expect("valid")
}

/// Recipient `id` sent, the provider's message id `message`.
pub(super) fn sent(id: u64, message: u64) -> RecipientUpdate {
    RecipientUpdate {
        id,
        status: RecipientStatus::Sent,
        message_id: Some(message),
        error_code: None,
        error_message: None,
        detail: None,
    }
}

pub(super) fn new_run(hash: &str) -> NewRun {
    NewRun {
        id: None,
        campaign: "spring".into(),
        occurrence: None,
        plan_hash: hash.into(),
        content_key: Some("content".into()),
        action: Action::Batch,
        flags: RunFlags::default(),
        is_test: false,
        audit: serde_json::json!({}),
        limit: Limit::new(12_000, Duration::from_secs(60)),
        total_calls: 1,
    }
}

pub(super) fn rows(suppress: &[u64]) -> Vec<SeedRow> {
    (1..=4u64)
        .map(|i| SeedRow {
            line: i + 1,
            id: Some(100 + i),
            raw_id: None,
            status: if suppress.contains(&(100 + i)) {
                RecipientStatus::Suppressed
            } else {
                RecipientStatus::Pending
            },
            call_seq: Some(0),
            variant: Some("v".into()),
            variant_name: None,
            note: None,
        })
        .collect()
}

pub(super) fn open(
    j: &mut Journal,
    hash: &str,
    o: ResumeOptions,
    r: Vec<SeedRow>,
) -> Result<Opened, JournalError> {
    let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
    j.open_run(&new_run(hash), o, &mut f, now())
}

/// [`open`] at `at` (the lease's clock).
pub(super) fn open_at(
    j: &mut Journal,
    hash: &str,
    r: Vec<SeedRow>,
    at: Timestamp,
) -> Result<Opened, JournalError> {
    let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
    j.open_run(&new_run(hash), ResumeOptions::default(), &mut f, at)
}

/// A connection [`insert_run`] writes through: the journal's own ([`Journal::connection`], either
/// backend) or a raw SQLite one (a migration test's older schema).
pub(super) trait Exec {
    fn exec(&self, sql: &str, params: &[Value<'_>]) -> Result<usize, StoreError>;
}

impl Exec for Connection {
    fn exec(&self, sql: &str, params: &[Value<'_>]) -> Result<usize, StoreError> {
        Ok(self.execute(sql, rusqlite::params_from_iter(params.iter()))?)
    }
}

impl Exec for Conn {
    fn exec(&self, sql: &str, params: &[Value<'_>]) -> Result<usize, StoreError> {
        self.execute(sql, params)
    }
}

/// A direct insert of a run row (bypassing `open_run`), in portable SQL.
pub(super) fn insert_run(
    conn: &impl Exec,
    id: &str,
    occurrence: Option<&str>,
    status: &str,
    is_test: bool,
) -> Result<usize, StoreError> {
    conn.exec(
        "INSERT INTO runs(id, campaign, occurrence, plan_hash, action, status, flags, is_test, created_at,
                          updated_at, audit, limit_count, limit_window_ms, total_calls, key)
         VALUES (?1, 'spring', ?2, 'h', 'batch', ?3, '{}', ?4, '2026-03-01T09:00:00Z',
                 '2026-03-01T09:00:00Z', '{}', 1, 1000, 1, (SELECT COALESCE(MAX(key), 0) + 1 FROM runs))",
        params![id, occurrence, status, is_test],
    )
}

/// The backends a test parameterized over both runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum On {
    Sqlite,
    Postgres,
}

/// A fresh, empty journal on `on`, with what keeps it alive (a temporary directory or a throwaway
/// PostgreSQL database: `crate::testing::pg::test_db`, which says loudly when PostgreSQL is not
/// installed and fails in CI). `None`: PostgreSQL is not available here (the test returns).
/// Drop the journal before the guard (a tuple drops in order).
pub(super) fn fresh_journal(on: On, label: &str) -> Option<(Journal, Keep)> {
    match on {
        On::Sqlite => {
            let d = tempfile::tempdir().expect("tempdir");
            let j = Journal::open(d.path()).expect("open");
            Some((j, Keep::Dir(d)))
        }
        On::Postgres => {
            let db = crate::testing::pg::test_db(label)?;
            let j = Journal::open_store(db.url()).expect("open the journal in the store");
            Some((j, Keep::Db(Box::new(db))))
        }
    }
}

/// What keeps a [`fresh_journal`]'s database alive.
pub(super) enum Keep {
    Dir(tempfile::TempDir),
    Db(Box<crate::testing::pg::TestDb>),
}

impl Keep {
    /// A second journal on the same database (another process, as far as leases go).
    pub(super) fn reopen(&self) -> Journal {
        match self {
            Keep::Dir(d) => Journal::open(d.path()).expect("reopen"),
            Keep::Db(db) => Journal::open_store(db.url()).expect("reopen the store"),
        }
    }
}
