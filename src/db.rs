//! Opening the state database (`<state_dir>/imcast.db`) the same way everywhere.
//!
//! Every connection to the state database (journal, limiter, scheduler) is WAL with a busy timeout.
//! Switching a new database file to WAL needs a lock that SQLite does not wait for through the busy
//! handler, so two runs (or a run and the daemon) opening a fresh state directory at the same
//! moment can get an immediate "database is locked". [`open`] retries that step briefly instead of
//! failing the run. It opens connections only; the schema belongs to each owner.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

/// How long a statement waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Open `path` in WAL mode with `synchronous` (`"FULL"` or `"NORMAL"`) and [`BUSY_TIMEOUT`].
pub fn open(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let mut delay = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    loop {
        match try_open(path, synchronous) {
            Err(e) if is_busy(&e) && waited < BUSY_TIMEOUT => {
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

fn try_open(path: &Path, synchronous: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    Ok(conn)
}

/// Whether `e` is SQLite's "busy" or "locked".
pub fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_threads_open_a_fresh_database_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("imcast.db");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || {
                    let c = open(&p, "FULL").expect("open under contention");
                    let mode: String = c
                        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                        .expect("journal_mode");
                    mode
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().expect("thread"), "wal");
        }
    }
}
