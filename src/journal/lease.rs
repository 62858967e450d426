//! The run lease: which journal (process) is sending a run. `runs.owner` holds
//! `host:pid:instance`, one id per open [`Journal`]; a lease is live while that process runs and,
//! in this process, while that journal is open.
//!
//! Invariants: the check and the write of a claim are one IMMEDIATE transaction, so of two
//! claimers exactly one gets it; a lease on another host counts as live (its process cannot be
//! checked from here). Must not: take a live holder's lease.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::schema::ts;
use super::{Journal, JournalError, Ops, RunInfo};

/// Journals open in this process, by instance number: a lease written by this process is live
/// exactly while the journal that took it is open (two journals in one process — the daemon's
/// runs, tests — are two lease holders, like two processes).
pub(super) fn live_leases() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    static LIVE: std::sync::Mutex<std::collections::BTreeSet<u64>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new lease id for a journal of this process: `host:pid:instance`, registered live.
pub(super) fn new_owner() -> (String, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    live_leases().insert(instance);
    (
        format!("{}:{}:{instance}", hostname(), std::process::id()),
        instance,
    )
}

/// A lease id's parts: host, pid and (since leases are per journal) the journal instance.
/// Older releases wrote `host:pid`.
fn parse_owner(owner: &str) -> Option<(&str, u32, Option<u64>)> {
    let (rest, last) = owner.rsplit_once(':')?;
    if let Some((host, pid)) = rest.rsplit_once(':') {
        if let (Ok(pid), Ok(instance)) = (pid.parse::<u32>(), last.parse::<u64>()) {
            return Some((host, pid, Some(instance)));
        }
    }
    Some((rest, last.parse().ok()?, None))
}

/// A lease holder as people read it: `pid 4242 on host-a`.
pub(super) fn describe_owner(owner: &str) -> String {
    match parse_owner(owner) {
        Some((host, pid, _)) => format!("pid {pid} on {host}"),
        None => owner.to_string(),
    }
}

/// The machine's name (for the run lease and the audit block).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Is the lease holder `owner` a live process? Only decidable on this host; another host's lease
/// counts as live.
fn owner_alive(owner: &str) -> bool {
    let Some((host, pid, instance)) = parse_owner(owner) else {
        return false;
    };
    if host != hostname() {
        return true;
    }
    if pid == std::process::id() {
        // This process: live while the journal that took it is open. A lease in the old
        // `host:pid` form with our pid was written by an earlier process that had this pid.
        return instance.is_some_and(|i| live_leases().contains(&i));
    }
    if cfg!(target_os = "linux") {
        // A process killed but not yet reaped by its parent (a zombie) sends nothing more.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => Path::new(&format!("/proc/{pid}")).exists(),
        }
    } else {
        true
    }
}

impl Journal {
    /// Take the run's lease for this journal, unless a live holder has it: the check and the
    /// write are one IMMEDIATE transaction, so of two processes claiming at once exactly one
    /// gets it. A dead holder's lease (its process gone, or its journal closed in this process)
    /// is taken over; another host's lease counts as live.
    pub fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)
            .map_err(self.db())?;
        let ops = Ops {
            conn: &tx,
            path: &self.path,
            owner: &self.owner,
        };
        ops.claim(run, now)?;
        tx.commit().map_err(self.db())
    }

    /// Give up the run's lease (if this journal holds it).
    pub fn release(&self, run_id: &str) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE runs SET owner = NULL WHERE id = ?1 AND owner = ?2",
                params![run_id, self.owner],
            )
            .map_err(self.db())?;
        Ok(())
    }
}

impl Ops<'_> {
    pub(super) fn owner_of(&self, run_id: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn
            .query_row("SELECT owner FROM runs WHERE id = ?1", [run_id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(self.db())?
            .flatten())
    }

    /// See [`Journal::claim`]; the caller holds the IMMEDIATE transaction.
    pub(super) fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let held = self
            .conn
            .query_row("SELECT owner FROM runs WHERE id = ?1", [&run.id], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()
            .map_err(self.db())?
            .ok_or_else(|| JournalError::NoRun(run.id.clone()))?;
        if let Some(o) = held {
            if o != self.owner && owner_alive(&o) {
                return Err(JournalError::Busy {
                    campaign: run.campaign.clone(),
                    run_id: run.id.clone(),
                    owner: describe_owner(&o),
                });
            }
        }
        self.conn
            .execute(
                "UPDATE runs SET owner = ?2, updated_at = ?3 WHERE id = ?1",
                params![run.id, self.owner, ts(now)],
            )
            .map_err(self.db())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;
    use crate::journal::testutil::*;
    use crate::journal::*;
    use std::time::Duration;

    #[test]
    fn a_live_lease_is_kept_and_a_dead_one_taken() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open(&mut a, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .clone();
        let b = Journal::open(d.path()).expect("open b");
        // Held by a's open journal: refused, and the lease stays a's.
        let e = b.claim(&run, now()).expect_err("a holds it");
        assert_eq!(e.exit(), Exit::Busy);
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(a.owner.clone()));
        // Another host's lease counts as live.
        let set = |o: &str| {
            b.connection()
                .execute(
                    "UPDATE runs SET owner = ?2 WHERE id = ?1",
                    params![run.id, o],
                )
                .expect("set owner")
        };
        set("some-other-host:1:0");
        assert!(b.claim(&run, now()).is_err());
        // A process that is gone (this host, no such pid), an old-format lease with this
        // process's pid (an earlier process), and a journal of this process that was closed:
        // all dead, so taken over.
        let me = std::process::id();
        let host = hostname();
        let closed = {
            let c = Journal::open(d.path()).expect("open c");
            c.owner.clone()
        };
        // A child killed and not yet reaped: a zombie, which sends nothing more.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        child.kill().expect("kill");
        let zombie = format!("{host}:{}:0", child.id());
        // Waits on the kernel, not on our clock: real time, at most 10 s.
        let waited = crate::clock::Stopwatch::start();
        while owner_alive(&zombie) && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!owner_alive(&zombie), "a zombie is not a live holder");
        assert!(owner_alive(&format!("{host}:{me}:{}", b.instance)));
        for dead in [
            format!("{host}:4294967295:0"),
            format!("{host}:{me}"),
            closed,
            zombie,
        ] {
            set(&dead);
            b.claim(&run, now())
                .unwrap_or_else(|e| panic!("{dead}: {e}"));
            assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(b.owner.clone()));
        }
        // Released by its holder only.
        a.release(&run.id).expect("release");
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), Some(b.owner.clone()));
        b.release(&run.id).expect("release");
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), None);
        let _ = child.wait();
    }
}
