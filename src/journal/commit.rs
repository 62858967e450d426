//! Group commit: several calls' in-flight marks and outcomes in one transaction
//! ([`Journal::write_batch`]), and [`SharedJournal`], the journal shared by async tasks, which
//! batches whatever writes are waiting when it gets the journal.
//!
//! Invariants: a batch with a mark commits with `synchronous=FULL` (PostgreSQL: a synchronous
//! commit; durable before its request leaves); outcomes alone commit with `NORMAL` (PostgreSQL:
//! `synchronous_commit = off` for that transaction; see [`Journal::write_batch`]); every waiter of a
//! failed batch gets the failure with its exit code. Must not: run a statement on a runtime
//! thread (every operation goes to the blocking pool).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Journal, JournalError, Write};

impl Journal {
    /// Commit several calls' in-flight marks and outcomes in one transaction (group commit).
    ///
    /// With any mark in the batch the commit is `synchronous=FULL` (durable before any of those
    /// requests leaves); outcomes alone commit with `NORMAL`: durable against a process crash at
    /// once, and against power loss by the next mark's FULL commit (the WAL is one sequential
    /// file, so that fsync covers it). If power fails in between, an outcome is lost but its mark
    /// is not, so recovery makes those receivers `unknown` — never a resend.
    ///
    /// On PostgreSQL the same rule, with the server's own setting: outcomes alone commit with
    /// `SET LOCAL synchronous_commit = off` (visible at once, durable when the server's WAL
    /// writer flushes, within a fraction of a second), and a batch with a mark commits
    /// synchronously, which flushes the WAL up to it, earlier outcomes included. A server crash
    /// in between loses at most those last outcomes, never a mark: their receivers become
    /// `unknown`, as above. Outcome-only commits are about half of a run's commits.
    pub fn write_batch(&mut self, writes: &[Write]) -> Result<(), JournalError> {
        if writes.is_empty() {
            return Ok(());
        }
        // SQLite: the durability of one commit is a pragma of the connection (PostgreSQL: a
        // setting of the transaction, in `write_batch_tx`).
        let relaxed =
            self.conn.as_sqlite().is_some() && !writes.iter().any(|w| matches!(w, Write::Mark(_)));
        fn sqlite(j: &Journal, relaxed: bool) -> Option<&rusqlite::Connection> {
            j.conn.as_sqlite().filter(|_| relaxed)
        }
        if let Some(c) = sqlite(self, relaxed) {
            c.pragma_update(None, "synchronous", "NORMAL")
                .map_err(self.db())?;
        }
        let res = self.write_batch_tx(writes);
        if res.is_err() {
            // What the batch's marks looked up was rolled back with them.
            self.marked.clear();
        }
        if let Some(c) = sqlite(self, relaxed) {
            let back = c.pragma_update(None, "synchronous", "FULL");
            res?;
            return back.map_err(self.db());
        }
        res
    }

    fn write_batch_tx(&mut self, writes: &[Write]) -> Result<(), JournalError> {
        let path = self.path.clone();
        let db = |source: crate::store::StoreError| JournalError::Db {
            path: path.clone(),
            source,
        };
        // PostgreSQL: an outcome-only commit is asynchronous (see `write_batch`).
        let relaxed = !writes.iter().any(|w| matches!(w, Write::Mark(_)));
        let pg_more = if relaxed {
            "SET LOCAL synchronous_commit = off"
        } else {
            ""
        };
        // A batch for one run (nearly every one): on PostgreSQL its fence is read in the
        // transaction's opening round trip, not one of its own.
        fn run_of(w: &Write) -> &str {
            match w {
                Write::Mark(m) => &m.run_id,
                Write::Outcome(o) => &o.run_id,
            }
        }
        let one_run = run_of(&writes[0]);
        let fence_sql = writes
            .iter()
            .all(|w| run_of(w) == one_run)
            .then(|| super::lease::fence_query(one_run))
            .flatten();
        let (tx, read) =
            super::begin_write_then_read(&self.conn, pg_more, fence_sql.as_deref()).map_err(db)?;
        let keys = match read {
            Some(rows) => vec![(
                one_run.to_string(),
                super::lease::fenced_key_of(&rows, &path, &self.owner, one_run)?,
            )],
            None => super::lease::check_writes(&tx, &path, &self.owner, writes)?,
        };
        let key = |run: &str| {
            keys.iter()
                .find(|(r, _)| r == run)
                .map(|(_, k)| *k)
                .ok_or_else(|| JournalError::NoRun(run.to_string()))
        };
        let owner = &self.owner;
        self.marked.check_seeded(|run| owner.fence(run));
        let mut outcomes = false;
        for w in writes {
            match w {
                Write::Mark(m) => Self::mark_tx(&tx, m, key(&m.run_id)?, &mut self.marked, &db)?,
                Write::Outcome(o) => {
                    outcomes = true;
                    Self::outcome_tx(&tx, o, key(&o.run_id)?, &mut self.marked, &db)?
                }
            }
        }
        if outcomes {
            crate::failpoint::hit(crate::failpoint::Point::BeforeCommit);
        }
        tx.commit().map_err(db)
    }
}

/// A journal shared by async tasks: each operation runs on the blocking pool, never on a
/// runtime thread.
#[derive(Clone)]
pub struct SharedJournal {
    inner: std::sync::Arc<std::sync::Mutex<Journal>>,
    /// Marks and outcomes waiting for the next group commit.
    queue: std::sync::Arc<std::sync::Mutex<Vec<Queued>>>,
    path: PathBuf,
}

/// A write waiting for the group commit, and where its result goes (shared by the batch).
type Queued = (
    Write,
    tokio::sync::oneshot::Sender<Result<(), Arc<JournalError>>>,
);

impl SharedJournal {
    pub fn new(j: Journal) -> Self {
        let path = j.path().to_path_buf();
        SharedJournal {
            inner: std::sync::Arc::new(std::sync::Mutex::new(j)),
            queue: Default::default(),
            path,
        }
    }

    /// Commit `w` with whatever other marks/outcomes are queued, in one transaction (group
    /// commit): the first task to get the journal writes every queued write; the others find
    /// theirs done. Returns once `w` is committed (see [`Journal::write_batch`] for durability).
    ///
    /// It waits for its write's batch, not for its own blocking task: that task may get the
    /// journal only after several batches (one for each writer ahead of it, most finding the
    /// queue empty), long after another writer's batch committed `w`. Measured on PostgreSQL,
    /// a write waited about four batches instead of one.
    pub async fn write(&self, w: Write) -> Result<(), JournalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((w, tx));
        let inner = self.inner.clone();
        let queue = self.queue.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut j = inner.lock().unwrap_or_else(|p| p.into_inner());
            let batch = std::mem::take(&mut *queue.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                return;
            }
            let (writes, senders): (Vec<Write>, Vec<_>) = batch.into_iter().unzip();
            let res = j.write_batch(&writes).map_err(Arc::new);
            for s in senders {
                let _ = s.send(res.clone());
            }
        });
        match rx.await {
            Ok(r) => r.map_err(JournalError::Write),
            // The batch holding `w` never answered: its task failed (a panic), say how.
            Err(_) => Err(JournalError::Worker(match task.await {
                Err(e) => e.to_string(),
                Ok(()) => "the group commit was dropped".into(),
            })),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` with the journal on the blocking pool.
    pub async fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> Result<R, JournalError> + Send + 'static,
    ) -> Result<R, JournalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut j = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut j)
        })
        .await
        .map_err(|e| JournalError::Worker(e.to_string()))?
    }

    /// Run `f` with the journal on this thread (for synchronous callers outside the runtime).
    pub fn with_blocking<R>(&self, f: impl FnOnce(&mut Journal) -> R) -> R {
        let mut j = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use crate::journal::testutil::*;
    use crate::journal::{Mark, ResumeOptions};

    /// A failed group commit reaches every writer as the journal's own error, so its exit code
    /// survives: a busy database is exit 6 like anywhere else, not an internal error.
    #[tokio::test]
    async fn a_failed_group_commit_keeps_its_error_and_exit_code() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        // A reader refuses writes: the batch fails inside SQLite.
        let shared = SharedJournal::new(j.reader().expect("reader"));
        let mark = |seq| {
            Write::Mark(Mark {
                run_id: id.clone(),
                seq,
                variant: "v".into(),
                receivers: vec![101],
                client_msg_id: None,
                now: now(),
            })
        };
        let (a, b) = tokio::join!(shared.write(mark(0)), shared.write(mark(1)));
        for e in [a.expect_err("read-only"), b.expect_err("read-only")] {
            let JournalError::Write(inner) = &e else {
                panic!("expected a group-commit error, got {e:?}");
            };
            assert!(
                matches!(**inner, JournalError::Db { .. }),
                "the database's own error: {inner:?}"
            );
            assert_eq!(e.exit(), inner.exit());
            assert!(
                e.to_string().starts_with("journal write failed: journal "),
                "{e}"
            );
        }
        let busy = JournalError::Write(Arc::new(JournalError::Db {
            path: d.path().join(crate::journal::DB_FILE),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            )
            .into(),
        }));
        assert_eq!(busy.exit(), Exit::Busy);
    }
}
