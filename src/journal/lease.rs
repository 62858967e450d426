//! The run lease: which journal (process) is sending a run, until when, and the fencing number
//! every write for the run checks.
//!
//! A lease (columns of `runs`) has a holder (`owner` = `host:pid:instance`, one id per open
//! [`Journal`], for people and for the local liveness check; NULL once released), an expiry
//! (`lease_expires_ms`, renewed by the sending engine's heartbeat, [`Journal::renew`]) and a
//! fencing number (`fence`, with who took it and when: `fence_holder`, `fence_at_ms`). A claim
//! takes the lease when it is free (released), expired (by the caller's clock), or held on this
//! host by a process that is gone (or, in this process, by a journal that was closed): a killed
//! run is resumed at once on its own host; a holder on another host, or one alive here but paused
//! past its expiry, is taken over only once its lease expired. Every claim (a take-over, or a
//! journal claiming its own run again) increments the fence; the journal remembers the fence it
//! took per run ([`Holder`]), and every write for that run checks it in the write's own
//! transaction ([`check_fence`], the one place): when another process took the run over since,
//! the write fails with [`JournalError::Fenced`] and writes nothing, so a paused-then-revived old
//! holder can never write after another took over. A journal that never claimed a run (a
//! command on a stopped run, a migration) has no fence for it to check.
//!
//! Invariants: the check and the write of a claim are one IMMEDIATE transaction, so of two
//! claimers exactly one gets it; the fence never decreases; an expiry is computed from the
//! injected clock (`now` comes from the caller), never read here. A lease written before leases
//! had an expiry (NULL `lease_expires_ms`, left by an older release) keeps the old rule: live
//! while its process runs, and another host's counts as live. Must not: take a live holder's
//! unexpired lease; read the system clock.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::{params, Conn, Tx};
use jiff::Timestamp;

use super::{Journal, JournalError, Ops, RunInfo, Write};

/// A run's lease as people read it (`imcast status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's host and pid (None: released).
    pub holder: Option<(String, u32)>,
    /// Until when it holds without renewal (None: released, or a lease of an older release).
    pub expires_at: Option<Timestamp>,
    /// The fencing number: how many times the run was claimed.
    pub fence: u64,
}

/// The lease identity of one open [`Journal`]: its id (`host:pid:instance`), the fence it took
/// per run, and how long the leases it takes last.
#[derive(Debug)]
pub(super) struct Holder {
    id: String,
    fences: Mutex<BTreeMap<String, i64>>,
    expiry: Mutex<Duration>,
}

impl Holder {
    pub(super) fn new(id: String) -> Self {
        Holder {
            id,
            fences: Mutex::new(BTreeMap::new()),
            expiry: Mutex::new(crate::config::LeaseTimes::default().expiry),
        }
    }

    /// The id written into `runs.owner`.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn fence(&self, run_id: &str) -> Option<i64> {
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .copied()
    }

    fn set_fence(&self, run_id: &str, fence: i64) {
        self.fences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_string(), fence);
    }

    fn expiry(&self) -> Duration {
        *self.expiry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_expiry(&self, d: Duration) {
        *self.expiry.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }
}

/// Milliseconds since the epoch, as leases store instants.
fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::MAX)
}

fn plus(now: Timestamp, d: Duration) -> i64 {
    ms(now).saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The fence check, the one place: when `holder` took a fence on `run_id` and the run's fence
/// has moved since (another process claimed it), [`JournalError::Fenced`] naming who took it
/// over and when. Called inside the transaction of every write for a run, before it writes.
pub(super) fn check_fence(
    conn: &Conn,
    path: &Path,
    holder: &Holder,
    run_id: &str,
) -> Result<(), JournalError> {
    if holder.fence(run_id).is_none() {
        return Ok(());
    }
    fenced_key(conn, path, holder, run_id).map(drop)
}

/// Run `run_id`'s key, after [`check_fence`] (one query for both): what a group commit's writes
/// to the run use, so a call's mark, attempt and outcome do not each look the key up again.
pub(super) fn fenced_key(
    conn: &Conn,
    path: &Path,
    holder: &Holder,
    run_id: &str,
) -> Result<i64, JournalError> {
    let row: Option<FenceRow> = conn
        .query_opt(
            &format!("SELECT {FENCE_COLUMNS} FROM runs WHERE id = ?1"),
            params![run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(|source| JournalError::Db {
            path: path.to_path_buf(),
            source,
        })?;
    judge_fence(row, holder, run_id)
}

/// What [`fenced_key`] reads of a run: key, fence, fence holder, when it was taken.
type FenceRow = (i64, i64, Option<String>, Option<i64>);
const FENCE_COLUMNS: &str = "key, fence, fence_holder, fence_at_ms";

/// PostgreSQL: [`fenced_key`]'s query as text with the run id quoted, for the write
/// transaction's opening round trip (`crate::store::Conn::transaction_then_read`). Only for an
/// id of the characters imcast's run ids are made of (letters, digits, `-`, `_`, `.`, `:`), so
/// the literal means the same under any server setting; None for any other (the caller reads
/// the fence with a prepared statement).
pub(super) fn fence_query(run_id: &str) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!run_id.is_empty() && run_id.chars().all(plain)).then(|| {
        format!(
            "SELECT {FENCE_COLUMNS} FROM runs WHERE id = {}",
            crate::store::quote_literal(run_id)
        )
    })
}

/// [`fenced_key`] on the rows [`fence_query`] returned (as text).
pub(super) fn fenced_key_of(
    rows: &[Vec<Option<String>>],
    path: &Path,
    holder: &Holder,
    run_id: &str,
) -> Result<i64, JournalError> {
    let bad = |what: &str| JournalError::Db {
        path: path.to_path_buf(),
        source: crate::store::StoreError::Sql {
            sql: "SELECT … FROM runs".into(),
            why: if what == "key" {
                "the run's key is not an integer"
            } else {
                "the run's fence is not an integer"
            },
        },
    };
    let row = match rows.first() {
        None => None,
        Some(r) => {
            let int = |i: usize, what: &str| -> Result<Option<i64>, JournalError> {
                match r.get(i).cloned().flatten() {
                    None => Ok(None),
                    Some(v) => v.parse().map(Some).map_err(|_| bad(what)),
                }
            };
            Some((
                int(0, "key")?.ok_or_else(|| bad("key"))?,
                int(1, "fence")?.ok_or_else(|| bad("fence"))?,
                r.get(2).cloned().flatten(),
                int(3, "fence")?,
            ))
        }
    };
    judge_fence(row, holder, run_id)
}

fn judge_fence(row: Option<FenceRow>, holder: &Holder, run_id: &str) -> Result<i64, JournalError> {
    match (row, holder.fence(run_id)) {
        (None, _) => Err(JournalError::NoRun(run_id.to_string())),
        (Some((key, _, _, _)), None) => Ok(key),
        (Some((key, fence, _, _)), Some(mine)) if fence == mine => Ok(key),
        (Some((_, _, by, at)), Some(_)) => Err(JournalError::Fenced {
            run_id: run_id.to_string(),
            holder: by
                .as_deref()
                .map(describe_owner)
                .unwrap_or_else(|| "another process".into()),
            at: at.map(from_ms),
        }),
    }
}

/// [`fenced_key`] for each run a group commit writes to (see `commit`): the runs' keys.
pub(super) fn check_writes(
    conn: &Conn,
    path: &Path,
    holder: &Holder,
    writes: &[Write],
) -> Result<Vec<(String, i64)>, JournalError> {
    let mut runs: Vec<&str> = writes
        .iter()
        .map(|w| match w {
            Write::Mark(m) => m.run_id.as_str(),
            Write::Outcome(o) => o.run_id.as_str(),
        })
        .collect();
    runs.sort_unstable();
    runs.dedup();
    runs.into_iter()
        .map(|r| Ok((r.to_string(), fenced_key(conn, path, holder, r)?)))
        .collect()
}

/// Journals open in this process, by instance number: a lease written by this process is live
/// exactly while the journal that took it is open (two journals in one process — the daemon's
/// runs, tests — are two lease holders, like two processes).
pub(super) fn live_leases() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    static LIVE: std::sync::Mutex<std::collections::BTreeSet<u64>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new lease holder for a journal of this process: `host:pid:instance`, registered live.
pub(super) fn new_owner() -> (Holder, u64) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let instance = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    live_leases().insert(instance);
    (
        Holder::new(format!("{}:{}:{instance}", hostname(), std::process::id())),
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
    /// How long the leases this journal takes last without renewal (default 30 s; the run
    /// engine's heartbeat renews them well before: `[state] lease_expiry`/`lease_heartbeat`).
    pub fn set_lease_expiry(&self, expiry: Duration) {
        self.owner.set_expiry(expiry);
    }

    /// Take the run's lease for this journal, unless a live holder has it: the check and the
    /// write are one IMMEDIATE transaction, so of two processes claiming at once exactly one
    /// gets it. A free, expired or dead holder's lease (its process gone, or its journal closed
    /// in this process) is taken over, and the run's fence moves on.
    pub fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let tx = self.begin_write()?;
        let ops = Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
            seeded: None,
        };
        ops.claim(run, now)?;
        tx.commit().map_err(self.db())
    }

    /// The heartbeat: extend this journal's lease on `run_id` to `now` + the expiry, unless the
    /// run was taken over ([`JournalError::Fenced`]: the caller stops sending at once). Returns
    /// the new expiry (None: the lease is not held any more, e.g. the run was paused).
    pub fn renew(&self, run_id: &str, now: Timestamp) -> Result<Option<Timestamp>, JournalError> {
        let tx = self.begin_write()?;
        check_fence(&tx, &self.path, &self.owner, run_id)?;
        let until = plus(now, self.owner.expiry());
        let n = tx
            .execute(
                "UPDATE runs SET lease_expires_ms = ?3 WHERE id = ?1 AND owner = ?2",
                params![run_id, self.owner.id(), until],
            )
            .map_err(self.db())?;
        tx.commit().map_err(self.db())?;
        Ok((n > 0).then(|| from_ms(until)))
    }

    /// Give up the run's lease (if this journal holds it). The fence stays: it moves only when
    /// someone claims the run.
    pub fn release(&self, run_id: &str) -> Result<(), JournalError> {
        let tx = self.begin_write()?;
        tx.execute(
            "UPDATE runs SET owner = NULL, lease_expires_ms = NULL WHERE id = ?1 AND owner = ?2",
            params![run_id, self.owner.id()],
        )
        .map_err(self.db())?;
        tx.commit().map_err(self.db())
    }

    /// The run's lease: its holder (None once released), expiry and fence.
    pub fn lease(&self, run_id: &str) -> Result<Option<Lease>, JournalError> {
        let row: Option<(Option<String>, Option<i64>, i64)> = self
            .conn
            .query_opt(
                "SELECT owner, lease_expires_ms, fence FROM runs WHERE id = ?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(self.db())?;
        Ok(row.map(|(owner, until, fence)| Lease {
            holder: owner
                .as_deref()
                .and_then(|o| parse_owner(o).map(|(host, pid, _)| (host.to_string(), pid))),
            expires_at: until.map(from_ms),
            fence: fence.max(0) as u64,
        }))
    }

    /// Begin a write transaction ([`Journal::begin_write`]) on this journal's connection for a
    /// write to `run_id`, after [`check_fence`]: the caller's statements (on `tx`, or
    /// `self.conn`: the same connection) run inside it, and it commits with `.commit()`
    /// (dropped, it rolls back).
    pub(super) fn fenced(&self, run_id: &str) -> Result<Tx<'_>, JournalError> {
        let tx = self.begin_write()?;
        check_fence(&tx, &self.path, &self.owner, run_id)?;
        Ok(tx)
    }
}

impl Ops<'_> {
    pub(super) fn owner_of(&self, run_id: &str) -> Result<Option<String>, JournalError> {
        Ok(self
            .conn
            .query_opt(
                "SELECT owner FROM runs WHERE id = ?1",
                params![run_id],
                |r| r.get::<Option<String>>(0),
            )
            .map_err(self.db())?
            .flatten())
    }

    /// [`check_fence`] on these statements' connection (inside the caller's transaction).
    pub(super) fn check_fence(&self, run_id: &str) -> Result<(), JournalError> {
        check_fence(self.conn, self.path, self.owner, run_id)
    }

    /// See [`Journal::claim`]; the caller holds the IMMEDIATE transaction.
    pub(super) fn claim(&self, run: &RunInfo, now: Timestamp) -> Result<(), JournalError> {
        let held: (Option<String>, Option<i64>) = self
            .conn
            .query_opt(
                "SELECT owner, lease_expires_ms FROM runs WHERE id = ?1",
                params![&run.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(self.db())?
            .ok_or_else(|| JournalError::NoRun(run.id.clone()))?;
        if let (Some(o), until) = held {
            let expired = until.is_some_and(|u| u <= ms(now));
            if o != self.owner.id() && !expired && owner_alive(&o) {
                let mut owner = describe_owner(&o);
                if let Some(u) = until {
                    owner.push_str(&format!(", its lease renewed until {}", from_ms(u)));
                }
                return Err(JournalError::Busy {
                    campaign: run.campaign.clone(),
                    run_id: run.id.clone(),
                    owner,
                });
            }
        }
        self.take(&run.id, now)
    }

    /// Write this journal as the run's holder: the fence moves on, the lease runs from `now`
    /// (after the check in [`Ops::claim`], or for a run this journal just inserted).
    pub(super) fn take(&self, run_id: &str, now: Timestamp) -> Result<(), JournalError> {
        let fence: i64 = self
            .conn
            .query_opt(
                "UPDATE runs SET owner = ?2, updated_at = ?3, fence = fence + 1, fence_holder = ?2,
                     fence_at_ms = ?4, lease_expires_ms = ?5
                 WHERE id = ?1 RETURNING fence",
                params![
                    run_id,
                    self.owner.id(),
                    super::schema::ts(now),
                    ms(now),
                    plus(now, self.owner.expiry())
                ],
                |r| r.get(0),
            )
            .map_err(self.db())?
            .ok_or_else(|| JournalError::NoRun(run_id.to_string()))?;
        self.owner.set_fence(run_id, fence);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SimClock};
    use crate::exit::Exit;
    use crate::journal::testutil::*;
    use crate::journal::*;

    /// The fence read in a write's opening round trip: only plain run ids become a literal, and
    /// its text rows are judged as the prepared read's are.
    #[test]
    fn the_fence_read_as_text_judges_as_the_prepared_one() {
        assert_eq!(
            fence_query("20261201T081242Z-3a7a").as_deref(),
            Some(
                "SELECT key, fence, fence_holder, fence_at_ms FROM runs \
                 WHERE id = '20261201T081242Z-3a7a'"
            )
        );
        for odd in ["", "a'b", "a\\b", "a b", "a\0b", "é"] {
            assert_eq!(fence_query(odd), None, "{odd:?}");
        }
        let h = Holder::new("host:1:0".into());
        let p = Path::new("/state");
        let row = |fence: &str, by: Option<&str>| {
            vec![vec![
                Some("7".to_string()),
                Some(fence.to_string()),
                by.map(str::to_string),
                Some("1000".to_string()),
            ]]
        };
        // Not leased by this holder: the key.
        assert_eq!(fenced_key_of(&row("3", None), p, &h, "r").expect("key"), 7);
        h.set_fence("r", 3);
        assert_eq!(fenced_key_of(&row("3", None), p, &h, "r").expect("key"), 7);
        let e = fenced_key_of(&row("4", Some("other:9:0")), p, &h, "r").expect_err("fenced");
        assert!(
            e.is_fenced() && e.to_string().contains("pid 9 on other"),
            "{e}"
        );
        assert!(matches!(
            fenced_key_of(&[], p, &h, "r"),
            Err(JournalError::NoRun(_))
        ));
        let e = fenced_key_of(&row("x", None), p, &h, "r").expect_err("not a number");
        assert!(e.to_string().contains("not an integer"), "{e}");
    }

    fn set_owner(j: &Journal, run: &str, o: &str) {
        j.connection()
            .execute(
                "UPDATE runs SET owner = ?2 WHERE id = ?1",
                crate::store::params![run, o],
            )
            .expect("set owner");
    }

    #[test]
    fn a_live_lease_is_kept_and_a_dead_one_taken() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open(&mut a, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .clone();
        let b = Journal::open(d.path()).expect("open b");
        // Held by a's open journal and not expired: refused, and the lease stays a's.
        let e = b.claim(&run, now()).expect_err("a holds it");
        assert_eq!(e.exit(), Exit::Busy);
        assert!(
            e.to_string()
                .contains("lease renewed until 2026-03-01T09:00:30Z"),
            "{e}"
        );
        assert_eq!(
            b.ops().owner_of(&run.id).expect("q").as_deref(),
            Some(a.owner.id())
        );
        assert_eq!(a.lease(&run.id).expect("q").expect("run").fence, 1);
        // Another host's unexpired lease counts as live.
        set_owner(&b, &run.id, "some-other-host:1:0");
        assert!(b.claim(&run, now()).is_err());
        // A process that is gone (this host, no such pid), an old-format lease with this
        // process's pid (an earlier process), and a journal of this process that was closed:
        // all dead, so taken over at once, before the lease expires; each take moves the fence.
        let me = std::process::id();
        let host = hostname();
        let closed = {
            let c = Journal::open(d.path()).expect("open c");
            c.owner.id().to_string()
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
        let mut fence = 1;
        for dead in [
            format!("{host}:4294967295:0"),
            format!("{host}:{me}"),
            closed,
            zombie,
        ] {
            set_owner(&b, &run.id, &dead);
            b.claim(&run, now())
                .unwrap_or_else(|e| panic!("{dead}: {e}"));
            fence += 1;
            assert_eq!(
                b.ops().owner_of(&run.id).expect("q").as_deref(),
                Some(b.owner.id())
            );
            assert_eq!(b.lease(&run.id).expect("q").expect("run").fence, fence);
        }
        // Released by its holder only.
        a.release(&run.id).expect("release");
        assert_eq!(
            b.ops().owner_of(&run.id).expect("q").as_deref(),
            Some(b.owner.id())
        );
        b.release(&run.id).expect("release");
        assert_eq!(b.ops().owner_of(&run.id).expect("q"), None);
        let l = b.lease(&run.id).expect("q").expect("run");
        assert_eq!((l.holder, l.expires_at, l.fence), (None, None, fence));
        let _ = child.wait();
    }

    #[test]
    fn another_hosts_lease_is_taken_only_after_it_expires_and_the_fence_moves() {
        let d = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(now());
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open_at(&mut a, "h1", rows(&[]), clock.now())
            .expect("create")
            .run()
            .clone();
        let l = a.lease(&run.id).expect("q").expect("run");
        assert_eq!(l.holder, Some((hostname(), std::process::id())));
        assert_eq!(l.expires_at, Some(now() + Duration::from_secs(30)));
        assert_eq!(l.fence, 1);
        // The holder is on another host: its pid means nothing here.
        set_owner(&a, &run.id, "host-b:4242:0");
        let b = Journal::open(d.path()).expect("open b");
        clock.advance(Duration::from_secs(29));
        let e = b.claim(&run, clock.now()).expect_err("not expired yet");
        assert_eq!(e.exit(), Exit::Busy);
        assert!(e.to_string().contains("pid 4242 on host-b"), "{e}");
        assert_eq!(b.lease(&run.id).expect("q").expect("run").fence, 1);
        clock.advance(Duration::from_secs(1));
        b.claim(&run, clock.now()).expect("expired: taken over");
        let l = b.lease(&run.id).expect("q").expect("run");
        assert_eq!(l.fence, 2, "a take-over moves the fence");
        assert_eq!(l.expires_at, Some(clock.now() + Duration::from_secs(30)));
        assert_eq!(
            b.ops().owner_of(&run.id).expect("q").as_deref(),
            Some(b.owner.id())
        );
        // The expiry is the journal's setting (`[state] lease_expiry`).
        let c = Journal::open(d.path()).expect("open c");
        c.set_lease_expiry(Duration::from_secs(2));
        clock.advance(Duration::from_secs(30));
        c.claim(&run, clock.now()).expect("b's lease expired");
        let l = c.lease(&run.id).expect("q").expect("run");
        assert_eq!(
            (l.fence, l.expires_at),
            (3, Some(clock.now() + Duration::from_secs(2)))
        );
    }

    #[test]
    fn the_heartbeat_keeps_a_lease_and_a_live_local_holder_past_its_expiry_is_taken() {
        let d = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(now());
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open_at(&mut a, "h1", rows(&[]), clock.now())
            .expect("create")
            .run()
            .clone();
        let b = Journal::open(d.path()).expect("open b");
        // Renewed every 10 s: never expires, however long the run sends.
        for _ in 0..6 {
            clock.advance(Duration::from_secs(10));
            let until = a.renew(&run.id, clock.now()).expect("renew");
            assert_eq!(until, Some(clock.now() + Duration::from_secs(30)));
            let e = b.claim(&run, clock.now()).expect_err("renewed: still a's");
            assert_eq!(e.exit(), Exit::Busy);
        }
        assert_eq!(
            a.lease(&run.id).expect("q").expect("run").fence,
            1,
            "renewing is no claim"
        );
        // a stops renewing (paused, cut off) but its journal, in this live process, stays open:
        // once the lease expired it is taken over all the same.
        clock.advance(Duration::from_secs(29));
        assert!(b.claim(&run, clock.now()).is_err());
        clock.advance(Duration::from_secs(1));
        b.claim(&run, clock.now()).expect("expired");
        assert_eq!(b.lease(&run.id).expect("q").expect("run").fence, 2);
        // a's next heartbeat finds the fence moved, and changes nothing.
        let before = b.lease(&run.id).expect("q");
        let e = a.renew(&run.id, clock.now()).expect_err("taken over");
        assert!(e.is_fenced(), "{e}");
        assert_eq!(b.lease(&run.id).expect("q"), before);
        // The new holder's heartbeat goes on.
        clock.advance(Duration::from_secs(10));
        assert!(b.renew(&run.id, clock.now()).expect("renew").is_some());
    }

    #[test]
    fn every_write_with_an_old_fence_fails_and_writes_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let clock = SimClock::new(now());
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open_at(&mut a, "h1", rows(&[]), clock.now())
            .expect("create")
            .run()
            .clone();
        a.mark_in_flight(&run.id, 0, "v", &[101, 102], None, clock.now())
            .expect("a's mark");
        a.record_stages(
            &run.id,
            &[NewStage {
                name: "all".into(),
                first_call: 0,
                calls: 1,
                recipients: 4,
                not_before: None,
                gated: false,
            }],
        )
        .expect("a's stages");
        // a is paused past its expiry; b takes the run over and recovers it.
        clock.advance(Duration::from_secs(31));
        let mut b = Journal::open(d.path()).expect("open b");
        let opened = open_at(&mut b, "h1", rows(&[]), clock.now()).expect("b resumes");
        assert!(matches!(opened, Opened::Resumed { .. }), "{opened:?}");
        let taken_at = clock.now();
        let snapshot = |j: &Journal| {
            (
                j.run(&run.id).expect("q"),
                j.counts(&run.id).expect("counts"),
                j.calls(&run.id).expect("calls"),
                j.stages(&run.id).expect("stages"),
                j.lease(&run.id).expect("lease"),
                j.attempts(&run.id).expect("attempts"),
            )
        };
        // A pause given after the take-over is for b: a's poll must not consume it.
        b.request_control("spring", ControlRequest::Pause, Some("ops"), clock.now())
            .expect("pause");
        let before = snapshot(&b);
        assert_eq!(
            before.1[&RecipientStatus::Unknown],
            2,
            "b's recovery: in flight → unknown"
        );
        // Every write a makes now fails with the fencing error, naming who took over and when.
        let me = format!("pid {} on {}", std::process::id(), hostname());
        let t = clock.now();
        let upd = |id| RecipientUpdate {
            id,
            status: RecipientStatus::Sent,
            message_id: Some(1),
            error_code: None,
            error_message: None,
            detail: None,
        };
        let results: Vec<(&str, Result<(), JournalError>)> = vec![
            ("mark", a.mark_in_flight(&run.id, 1, "v", &[103], None, t)),
            (
                "outcome",
                a.record_outcome(&run.id, 0, CallState::Done, &[upd(101), upd(102)], None, t),
            ),
            ("retry", a.mark_retry(&run.id, 0, Some("x"), "m", t)),
            (
                "status",
                a.set_status(&run.id, RunStatus::Interrupted, None, t),
            ),
            ("recover", a.recover(&run.id, run.action).map(|_| ())),
            ("cancel", a.cancel_pending(&run.id, t).map(|_| ())),
            ("expire", a.expire_pending(&run.id, t).map(|_| ())),
            ("requeue", a.prepare_requeue(&run.id, t).map(|_| ())),
            ("stage state", a.set_stage_state(&run.id, 0, "sent", t)),
            (
                "stage gate",
                a.set_stage_gate(&run.id, 0, "passed", Some(t), None),
            ),
            (
                "expire stage",
                a.expire_stage(&run.id, 0, 0..1, "x", t).map(|_| ()),
            ),
            ("stages", a.record_stages(&run.id, &[])),
            ("renew", a.renew(&run.id, t).map(|_| ())),
            (
                "take control",
                a.take_control(&run.id, "spring").map(|_| ()),
            ),
        ];
        for (what, r) in results {
            let e = r.expect_err(what);
            assert!(e.is_fenced(), "{what}: {e}");
            assert_eq!(e.exit(), Exit::Busy, "{what}");
            let msg = e.to_string();
            assert!(msg.contains(&me), "{what}: {msg}");
            assert!(msg.contains(&format!("at {taken_at}")), "{what}: {msg}");
            assert!(msg.contains("wrote nothing more"), "{what}: {msg}");
        }
        assert_eq!(
            snapshot(&b),
            before,
            "nothing a wrote after the take-over is there"
        );
        // The new holder writes as usual, and finds the pause waiting for it.
        b.mark_in_flight(&run.id, 1, "v", &[103], None, t)
            .expect("b writes");
        assert_eq!(
            b.take_control(&run.id, "spring").expect("b polls"),
            Some(ControlRequest::Pause)
        );
        assert_eq!(b.control("spring").expect("q"), None, "b consumed it");
    }

    #[tokio::test]
    async fn a_group_commit_with_an_old_fence_fails_for_every_waiter() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut a = Journal::open(d.path()).expect("open a");
        let run = open_at(&mut a, "h1", rows(&[]), now())
            .expect("create")
            .run()
            .clone();
        let mut b = Journal::open(d.path()).expect("open b");
        open_at(&mut b, "h1", rows(&[]), now() + Duration::from_secs(30)).expect("b takes over");
        let shared = SharedJournal::new(a);
        let e = shared
            .write(Write::Mark(Mark {
                run_id: run.id.clone(),
                seq: 0,
                variant: "v".into(),
                receivers: vec![101],
                client_msg_id: None,
                now: now(),
            }))
            .await
            .expect_err("fenced");
        assert!(e.is_fenced(), "{e}");
        assert_eq!(e.exit(), Exit::Busy);
        assert!(
            b.calls(&run.id).expect("calls").is_empty(),
            "no mark was written"
        );
    }
}
