//! Opening the state directory's SQLite files (`<state_dir>/imcast.db`: journal and scheduler;
//! `<state_dir>/throttle.db`: the limiter) the same way everywhere.
//!
//! Every connection is WAL with a busy handler (see [`busy_wait`]).
//! Switching a new database file to WAL needs a lock that SQLite does not wait for through the busy
//! handler, so two runs (or a run and the daemon) opening a fresh state directory at the same
//! moment can get an immediate "database is locked". [`open`] retries that step briefly instead of
//! failing the run. It opens connections only; the schema belongs to each owner.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};

/// How long a statement waits for another connection's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite could not grow a file: the disk (or quota) is full (SQLITE_FULL; SQLite reports a
/// write's ENOSPC this way too).
pub fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DiskFull)
}

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
    conn.busy_handler(Some(busy_wait))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    // Seeding a large run writes its rows to the WAL in one transaction (a million rows ≈ 100 MB);
    // once checkpointed, the WAL file is cut back to this size instead of staying that large.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(conn)
}

/// The busy handler: wait for another connection's write lock for up to [`BUSY_TIMEOUT`].
///
/// SQLite's own `busy_timeout` sleeps 1, 2, 5, 10 … 100 ms between tries. The state database's
/// write transactions (a call's mark, a throttle decision) take well under a millisecond, so a
/// sender contending with another connection lost several milliseconds per call to those sleeps.
/// This handler retries after 50 µs at first and backs off to 1 ms, then 10 ms.
fn busy_wait(tries: i32) -> bool {
    let tries = tries.max(0) as u64;
    // 200 × 50 µs = 10 ms, then 990 × 1 ms ≈ 1 s, then 10 ms steps up to BUSY_TIMEOUT.
    let (sleep, waited) = match tries {
        0..200 => (Duration::from_micros(50), Duration::from_micros(50 * tries)),
        200..1190 => (
            Duration::from_millis(1),
            Duration::from_millis(10 + (tries - 200)),
        ),
        _ => (
            Duration::from_millis(10),
            Duration::from_millis(1000 + 10 * (tries - 1190)),
        ),
    };
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(sleep);
    true
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
