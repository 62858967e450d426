//! The run registry: with `[state] url`, which state directory sends each campaign occurrence,
//! kept in the PostgreSQL store so that two `imcast run` of one campaign from two state
//! directories (two hosts, a CI runner and a laptop) on one store do not both send.
//!
//! Owns: the table `imcast_run_registry` (migration 5 in [`crate::pg::schema`]): one row per
//! campaign and occurrence key (the journal's: `''` here for an ad-hoc run, the schedule
//! occurrence for a scheduled one) with the run's id, plan hash and status, its holder (host,
//! pid, state directory), a lease expiry (the journal's lease times: `[state] lease_expiry`,
//! renewed by the run's heartbeat), a fence (moved by every claim) and when it was opened and
//! last updated. [`Registration::claim`] decides before the journal opens the run;
//! [`Registration::opened`], [`Registration::renew`] and [`Registration::finish`] follow the run.
//!
//! The decision ([`Registration::claim`], one transaction, the row locked `FOR UPDATE` or inserted
//! `ON CONFLICT DO NOTHING`, so of two claimers from two state directories exactly one wins):
//! - no row, a row of this state directory (host + absolute path), or another directory's
//!   cancelled run, or its finished run of another plan: this directory's now (a row of this
//!   directory that another live process here holds is left to the journal, which refuses it or
//!   takes it over by its own lease rules);
//! - another directory's unfinished run with a live lease: [`RegistryError::Busy`] (exit 6);
//! - another directory's unfinished run whose lease expired (or was released: paused,
//!   interrupted): [`RegistryError::Elsewhere`] (exit 6): its recipients' state is in that
//!   directory, taking it over from here would resend; `--new-run` (send to everyone again)
//!   overrides, as it supersedes an unfinished run in one journal;
//! - another directory's finished run of the same plan: [`RegistryError::AlreadySent`] (exit 6),
//!   the journal's "already finished" from afar; `--new-run` sends again, as it does locally.
//!
//! Invariants: a write after the claim is conditional on the fence the claim took, so a holder
//! that another directory took over writes nothing more and learns it ([`RegistryError::TakenOver`]
//! from [`Registration::renew`]: the run stops); a claim that the journal then refuses puts the
//! previous holder back. Times come from the caller's clock. Test runs (`--test-to`) are never
//! registered, nor are `--mock` runs (the caller does not call it).
//!
//! Interim: this exists only while the journal (runs, recipients, calls) lives in each state
//! directory; once the journal moves to the store, the run and its lease there replace this table.
//! Must not: touch the journal, read or write recipients, or decide anything without `[state]
//! url` (SQLite-only setups never reach it); blocking: off the async runtime's threads.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use crate::exit::Exit;
use crate::journal::RunStatus;
use crate::pg::PgUrl;
use crate::store::{params, Conn, OptionalExtension, Row, StoreError};

/// Errors and refusals of the run registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "campaign {campaign:?}{}: run {} is being sent from another state directory: pid {} on {}, \
         state directory {}, since {}. Nothing was sent. Wait for it to finish. If that host is \
         gone, its lease expires in {} s, but the run's journal (who was sent what) is in that \
         state directory on {}: resume it there",
        occ(occurrence), other.run(), other.pid, other.host, other.state_dir, other.opened_at,
        expires_in.as_secs(), other.host
    )]
    Busy {
        campaign: String,
        occurrence: Option<String>,
        other: Box<Holder>,
        expires_in: Duration,
    },
    #[error(
        "campaign {campaign:?}{}: run {} is {} in another state directory ({} on {}, last held \
         by pid {}, since {}); {}. Nothing was sent. Its recipients' state is in that state \
         directory, so sending from here would resend to everyone it already reached: resume it \
         there (`imcast run` on {} with that state directory). If that host and its state \
         directory are gone for good, pass --new-run to send to everyone again from here \
         (whoever it reached gets the message twice)",
        occ(occurrence), other.run(), other.status, other.state_dir, other.host, other.pid,
        other.opened_at,
        match other.lease_expires { Some(t) => format!("its lease expired at {t}"), None => "it holds no lease".into() },
        other.host
    )]
    Elsewhere {
        campaign: String,
        occurrence: Option<String>,
        other: Box<Holder>,
    },
    #[error(
        "Campaign {campaign:?}{}: run {} already sent from {} at {} (status {}, state directory {}). \
         Nothing to send. Pass --new-run to send to everyone again",
        occ(occurrence), other.run(), other.host, other.finished_at.unwrap_or(other.updated_at),
        other.status, other.state_dir
    )]
    AlreadySent {
        campaign: String,
        occurrence: Option<String>,
        other: Box<Holder>,
    },
    #[error(
        "campaign {campaign:?}{}: the run registry in the state store was taken over by pid {} on \
         {} (state directory {}); this process stopped sending",
        occ(occurrence), other.pid, other.host, other.state_dir
    )]
    TakenOver {
        campaign: String,
        occurrence: Option<String>,
        other: Box<Holder>,
    },
    #[error("the run registry in the state store: {0}")]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// The exit code: a refusal is [`Exit::Busy`] (another state directory holds the run); a
    /// store error is internal (as the limiter's).
    pub fn exit(&self) -> Exit {
        match self {
            RegistryError::Store(_) => Exit::Internal,
            _ => Exit::Busy,
        }
    }
}

fn occ(o: &Option<String>) -> String {
    o.as_ref()
        .map(|o| format!(" (occurrence {o})"))
        .unwrap_or_default()
}

/// One registry row, as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub run_id: Option<String>,
    pub plan_hash: String,
    /// A journal run status (`running`, `paused`, `finished` …).
    pub status: String,
    pub host: String,
    pub pid: u32,
    pub state_dir: String,
    pub lease_expires: Option<Timestamp>,
    pub fence: i64,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl Holder {
    fn run(&self) -> &str {
        self.run_id.as_deref().unwrap_or("(being opened)")
    }

    fn is_unfinished(&self) -> bool {
        self.status
            .parse::<RunStatus>()
            .map_or(true, RunStatus::is_unfinished)
    }
}

/// A run of one campaign registered from another state directory (`imcast status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub occurrence: Option<String>,
    pub holder: Holder,
}

const COLS: &str = "run_id, plan_hash, status, host, pid, state_dir, lease_expires_ms, fence, \
                    opened_ms, updated_ms, finished_ms";

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(v: i64) -> Timestamp {
    Timestamp::from_millisecond(v).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn holder(r: &Row) -> Result<Holder, StoreError> {
    Ok(Holder {
        run_id: r.get(0)?,
        plan_hash: r.get(1)?,
        status: r.get(2)?,
        host: r.get(3)?,
        pid: u32::try_from(r.get::<i64>(4)?).unwrap_or(0),
        state_dir: r.get(5)?,
        lease_expires: r.get::<Option<i64>>(6)?.map(from_ms),
        fence: r.get(7)?,
        opened_at: from_ms(r.get(8)?),
        updated_at: from_ms(r.get(9)?),
        finished_at: r.get::<Option<i64>>(10)?.map(from_ms),
    })
}

/// What a run claims: the campaign, its occurrence and plan, and this process's identity.
#[derive(Debug, Clone)]
pub struct Claim {
    pub campaign: String,
    /// The schedule occurrence (None: an ad-hoc run).
    pub occurrence: Option<String>,
    pub plan_hash: String,
    /// `--new-run`: send to everyone again (overrides a finished or abandoned run elsewhere).
    pub new_run: bool,
    pub host: String,
    pub pid: u32,
    /// The state directory, absolute ([`state_dir_key`]).
    pub state_dir: String,
    /// How long a lease lasts without renewal (`[state] lease_expiry`).
    pub expiry: Duration,
}

/// The state directory as the registry names it: absolute, without resolving symlinks (so it
/// does not depend on the directory existing yet).
pub fn state_dir_key(state_dir: &Path) -> String {
    std::path::absolute(state_dir)
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .display()
        .to_string()
}

/// This process's registration of one campaign occurrence (see the module doc).
pub struct Registration {
    conn: Conn,
    claim: Claim,
    /// The fence this registration holds (None: the claim left a row of this state directory
    /// that another live process here holds to the journal).
    fence: Option<i64>,
    /// The row before the claim (put back if the journal refuses the run).
    prev: Option<Holder>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("claim", &self.claim)
            .field("fence", &self.fence)
            .finish()
    }
}

impl Registration {
    /// Connect to the store and decide (see the module doc): Ok when this state directory may
    /// open the run; a refusal names who holds it and what to do. Blocking.
    pub fn claim(url: &PgUrl, claim: Claim, now: Timestamp) -> Result<Registration, RegistryError> {
        Self::claim_on(Conn::postgres(url)?, claim, now)
    }

    /// [`Registration::claim`] on an open connection.
    pub fn claim_on(
        conn: Conn,
        claim: Claim,
        now: Timestamp,
    ) -> Result<Registration, RegistryError> {
        let occurrence = claim.occurrence.clone().unwrap_or_default();
        let until = ms(now) + i64::try_from(claim.expiry.as_millis()).unwrap_or(i64::MAX / 2);
        let (fence, prev) = {
            let tx = conn.transaction()?;
            let select = format!(
                "SELECT {COLS} FROM imcast_run_registry WHERE campaign = ?1 AND occurrence = ?2 \
                 FOR UPDATE"
            );
            let mut row = tx
                .query_row(&select, params![&claim.campaign, &occurrence], holder)
                .optional()?;
            if row.is_none() {
                let n = tx.execute(
                    "INSERT INTO imcast_run_registry(campaign, occurrence, run_id, plan_hash, status,
                         host, pid, state_dir, lease_expires_ms, fence, opened_ms, updated_ms)
                     VALUES (?1, ?2, NULL, ?3, 'running', ?4, ?5, ?6, ?7, 1, ?8, ?8)
                     ON CONFLICT (campaign, occurrence) DO NOTHING",
                    params![
                        &claim.campaign,
                        &occurrence,
                        &claim.plan_hash,
                        &claim.host,
                        claim.pid,
                        &claim.state_dir,
                        until,
                        ms(now)
                    ],
                )?;
                if n == 1 {
                    tx.commit()?;
                    return Ok(Registration {
                        conn,
                        claim,
                        fence: Some(1),
                        prev: None,
                    });
                }
                // Another claimer inserted it first (we waited for its commit): decide on it.
                row = tx
                    .query_row(&select, params![&claim.campaign, &occurrence], holder)
                    .optional()?;
            }
            let Some(r) = row else {
                return Err(StoreError::NoRows.into());
            };
            let ours = r.host == claim.host && r.state_dir == claim.state_dir;
            let live = r.lease_expires.is_some_and(|t| t > now);
            let refuse = |mk: fn(String, Option<String>, Box<Holder>) -> RegistryError| {
                Err(mk(
                    claim.campaign.clone(),
                    claim.occurrence.clone(),
                    Box::new(r.clone()),
                ))
            };
            if ours {
                if r.is_unfinished() && live && r.pid != claim.pid {
                    // Another process of this state directory: the journal's lease decides.
                    tx.commit()?;
                    return Ok(Registration {
                        conn,
                        claim,
                        fence: None,
                        prev: Some(r),
                    });
                }
            } else if r.is_unfinished() && live {
                return Err(RegistryError::Busy {
                    campaign: claim.campaign.clone(),
                    occurrence: claim.occurrence.clone(),
                    expires_in: r.lease_expires.map_or(Duration::ZERO, |t| {
                        Duration::from_millis(u64::try_from(ms(t) - ms(now)).unwrap_or(0))
                    }),
                    other: Box::new(r),
                });
            } else if r.is_unfinished() && !claim.new_run {
                return refuse(|campaign, occurrence, other| RegistryError::Elsewhere {
                    campaign,
                    occurrence,
                    other,
                });
            } else if r.status == RunStatus::Finished.as_str()
                && r.plan_hash == claim.plan_hash
                && !claim.new_run
            {
                return refuse(|campaign, occurrence, other| RegistryError::AlreadySent {
                    campaign,
                    occurrence,
                    other,
                });
            }
            let fence = r.fence + 1;
            tx.execute(
                "UPDATE imcast_run_registry SET run_id = NULL, plan_hash = ?3, status = 'running',
                     host = ?4, pid = ?5, state_dir = ?6, lease_expires_ms = ?7, fence = ?8,
                     opened_ms = ?9, updated_ms = ?9, finished_ms = NULL
                 WHERE campaign = ?1 AND occurrence = ?2",
                params![
                    &claim.campaign,
                    &occurrence,
                    &claim.plan_hash,
                    &claim.host,
                    claim.pid,
                    &claim.state_dir,
                    until,
                    fence,
                    ms(now)
                ],
            )?;
            tx.commit()?;
            (Some(fence), Some(r))
        };
        Ok(Registration {
            conn,
            claim,
            fence,
            prev,
        })
    }

    fn occurrence(&self) -> &str {
        self.claim.occurrence.as_deref().unwrap_or("")
    }

    fn until(&self, now: Timestamp) -> i64 {
        ms(now) + i64::try_from(self.claim.expiry.as_millis()).unwrap_or(i64::MAX / 2)
    }

    fn taken_over(&self) -> RegistryError {
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT {COLS} FROM imcast_run_registry WHERE campaign = ?1 AND occurrence = ?2"
                ),
                params![&self.claim.campaign, self.occurrence()],
                holder,
            )
            .optional();
        match row {
            Ok(Some(other)) => RegistryError::TakenOver {
                campaign: self.claim.campaign.clone(),
                occurrence: self.claim.occurrence.clone(),
                other: Box::new(other),
            },
            Ok(None) => StoreError::NoRows.into(),
            Err(e) => e.into(),
        }
    }

    /// The journal opened (created or resumed) run `run_id` with `status`: the row is this
    /// process's, with the run's id and plan. A journal that answered "already finished" passes
    /// that run: recorded when the row was this directory's (or absent), else the previous
    /// holder is put back. Errors when another directory took the row meanwhile.
    pub fn opened(
        &mut self,
        run_id: &str,
        status: RunStatus,
        plan_hash: &str,
        now: Timestamp,
    ) -> Result<(), RegistryError> {
        let theirs = self
            .prev
            .as_ref()
            .is_some_and(|p| p.host != self.claim.host || p.state_dir != self.claim.state_dir);
        if !status.is_unfinished() && theirs {
            return self.abandon();
        }
        let unfinished = status.is_unfinished();
        let until = unfinished.then(|| self.until(now));
        let finished = (!unfinished).then(|| ms(now));
        let (claim, occurrence) = (&self.claim, self.claim.occurrence.as_deref().unwrap_or(""));
        let tx = self.conn.transaction()?;
        // Without a fence of our own (another process of this directory held the row), the
        // journal granted us the run: the row is ours whatever its fence.
        let fence: Option<i64> = tx
            .query_row(
                "SELECT fence FROM imcast_run_registry WHERE campaign = ?1 AND occurrence = ?2
                     AND (fence = ?3 OR (CAST(?3 AS BIGINT) IS NULL AND host = ?4 AND state_dir = ?5))
                 FOR UPDATE",
                params![&claim.campaign, occurrence, self.fence, &claim.host, &claim.state_dir],
                |r| r.get(0),
            )
            .optional()?;
        let Some(f) = fence else {
            drop(tx);
            return Err(self.taken_over());
        };
        let f = f + i64::from(self.fence.is_none());
        tx.execute(
            "UPDATE imcast_run_registry SET run_id = ?3, plan_hash = ?4, status = ?5, host = ?6,
                 pid = ?7, state_dir = ?8, lease_expires_ms = ?9, fence = ?10, updated_ms = ?11,
                 finished_ms = ?12
             WHERE campaign = ?1 AND occurrence = ?2",
            params![
                &claim.campaign,
                occurrence,
                run_id,
                plan_hash,
                status.as_str(),
                &claim.host,
                claim.pid,
                &claim.state_dir,
                until,
                f,
                ms(now),
                finished
            ],
        )?;
        tx.commit()?;
        self.fence = Some(f);
        Ok(())
    }

    /// The journal refused the run (or found nothing to do that is this directory's): put the
    /// previous holder back (or remove the row this claim inserted), unless someone claimed since.
    pub fn abandon(&mut self) -> Result<(), RegistryError> {
        let Some(f) = self.fence.take() else {
            return Ok(());
        };
        let (campaign, occurrence) = (&self.claim.campaign, self.occurrence());
        match &self.prev {
            None => {
                self.conn.execute(
                    "DELETE FROM imcast_run_registry
                     WHERE campaign = ?1 AND occurrence = ?2 AND fence = ?3",
                    params![campaign, occurrence, f],
                )?;
            }
            Some(p) => {
                self.conn.execute(
                    "UPDATE imcast_run_registry SET run_id = ?4, plan_hash = ?5, status = ?6,
                         host = ?7, pid = ?8, state_dir = ?9, lease_expires_ms = ?10,
                         opened_ms = ?11, updated_ms = ?12, finished_ms = ?13
                     WHERE campaign = ?1 AND occurrence = ?2 AND fence = ?3",
                    params![
                        campaign,
                        occurrence,
                        f,
                        p.run_id.as_deref(),
                        &p.plan_hash,
                        &p.status,
                        &p.host,
                        p.pid,
                        &p.state_dir,
                        p.lease_expires.map(ms),
                        ms(p.opened_at),
                        ms(p.updated_at),
                        p.finished_at.map(ms)
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// The heartbeat: extend the row's lease to `now` + the expiry, as the journal's lease is.
    /// [`RegistryError::TakenOver`] when another state directory claimed the row since (the
    /// caller stops sending).
    pub fn renew(&self, now: Timestamp) -> Result<Timestamp, RegistryError> {
        let until = self.until(now);
        let n = self.conn.execute(
            "UPDATE imcast_run_registry SET lease_expires_ms = ?4, updated_ms = ?5
             WHERE campaign = ?1 AND occurrence = ?2 AND fence = ?3",
            params![
                &self.claim.campaign,
                self.occurrence(),
                self.fence,
                until,
                ms(now)
            ],
        )?;
        if n == 0 {
            return Err(self.taken_over());
        }
        Ok(from_ms(until))
    }

    /// The run ended this session with `status` (finished, paused, interrupted, cancelled …):
    /// recorded, and the lease released (an unfinished run stays this directory's).
    pub fn finish(&self, status: RunStatus, now: Timestamp) -> Result<(), RegistryError> {
        let finished = (!status.is_unfinished()).then(|| ms(now));
        let n = self.conn.execute(
            "UPDATE imcast_run_registry SET status = ?4, lease_expires_ms = NULL, updated_ms = ?5,
                 finished_ms = ?6
             WHERE campaign = ?1 AND occurrence = ?2 AND fence = ?3",
            params![
                &self.claim.campaign,
                self.occurrence(),
                self.fence,
                status.as_str(),
                ms(now),
                finished
            ],
        )?;
        if n == 0 {
            return Err(self.taken_over());
        }
        Ok(())
    }
}

/// The runs of `campaign` registered from state directories other than `state_dir` on `host`
/// (`imcast status`). Blocking.
pub fn elsewhere(
    url: &PgUrl,
    campaign: &str,
    host: &str,
    state_dir: &str,
) -> Result<Vec<Registered>, RegistryError> {
    elsewhere_on(&Conn::postgres(url)?, campaign, host, state_dir)
}

/// [`elsewhere`] on an open connection.
pub fn elsewhere_on(
    conn: &Conn,
    campaign: &str,
    host: &str,
    state_dir: &str,
) -> Result<Vec<Registered>, RegistryError> {
    let rows = conn.query_map(
        &format!(
            "SELECT {COLS}, occurrence FROM imcast_run_registry
             WHERE campaign = ?1 AND NOT (host = ?2 AND state_dir = ?3)
             ORDER BY updated_ms DESC"
        ),
        params![campaign, host, state_dir],
        |r| {
            let occurrence: String = r.get(11)?;
            Ok(Registered {
                occurrence: (!occurrence.is_empty()).then_some(occurrence),
                holder: holder(r)?,
            })
        },
    )?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pg::test_db;

    fn t0() -> Timestamp {
        "2026-03-01T09:00:00Z".parse().expect("valid")
    }

    fn at(s: u64) -> Timestamp {
        t0() + Duration::from_secs(s)
    }

    fn claim(host: &str, pid: u32, dir: &str, plan: &str) -> Claim {
        Claim {
            campaign: "promo".into(),
            occurrence: None,
            plan_hash: plan.into(),
            new_run: false,
            host: host.into(),
            pid,
            state_dir: dir.into(),
            expiry: Duration::from_secs(30),
        }
    }

    /// Each test on a thread of its own (the blocking client must not run on a runtime thread).
    fn on_store(label: &str, f: impl FnOnce(&dyn Fn() -> Conn) + Send + 'static) {
        let Some(db) = test_db(label) else { return };
        let url = db.url().clone();
        std::thread::spawn(move || {
            let connect = move || Conn::postgres(&url).expect("connect");
            f(&connect);
        })
        .join()
        .expect("test thread");
        drop(db);
    }

    fn row(c: &Conn) -> Holder {
        c.query_row(
            &format!("SELECT {COLS} FROM imcast_run_registry WHERE campaign = 'promo'"),
            params![],
            holder,
        )
        .expect("row")
    }

    #[test]
    fn a_second_state_directory_is_refused_while_the_first_runs_then_told_it_was_sent() {
        on_store("registry_busy", |connect| {
            let mut a = Registration::claim_on(connect(), claim("ha", 11, "/a", "p1"), at(0))
                .expect("a claims");
            a.opened("run-a", RunStatus::Running, "p1", at(0))
                .expect("opened");
            // b, from another state directory, while a's lease is live: Busy, naming a.
            let e = Registration::claim_on(connect(), claim("hb", 22, "/b", "p1"), at(5))
                .expect_err("b refused");
            assert_eq!(e.exit(), Exit::Busy);
            let msg = e.to_string();
            for want in [
                "run-a",
                "pid 11 on ha",
                "state directory /a",
                "expires in 25 s",
            ] {
                assert!(msg.contains(want), "{want:?} in {msg}");
            }
            // a's heartbeat keeps it live past the first expiry.
            assert_eq!(a.renew(at(25)).expect("renew"), at(55));
            let e = Registration::claim_on(connect(), claim("hb", 22, "/b", "p1"), at(40))
                .expect_err("still refused");
            assert!(matches!(e, RegistryError::Busy { .. }), "{e}");
            // a finishes: b is told it was already sent, from where and when.
            a.finish(RunStatus::Finished, at(60)).expect("finish");
            let e = Registration::claim_on(connect(), claim("hb", 22, "/b", "p1"), at(70))
                .expect_err("already sent");
            let msg = e.to_string();
            assert!(matches!(e, RegistryError::AlreadySent { .. }), "{msg}");
            assert!(
                msg.contains(&format!("already sent from ha at {}", at(60)))
                    && msg.contains("--new-run"),
                "{msg}"
            );
            // The refusals changed nothing.
            let r = row(&connect());
            assert_eq!(
                (r.host.as_str(), r.status.as_str(), r.fence),
                ("ha", "finished", 1)
            );
            // --new-run sends again from b; a changed plan is a new send too.
            let mut flag = claim("hb", 22, "/b", "p1");
            flag.new_run = true;
            let b = Registration::claim_on(connect(), flag, at(80)).expect("--new-run");
            assert_eq!(b.fence, Some(2));
            b.finish(RunStatus::Finished, at(90)).expect("finish b");
            Registration::claim_on(connect(), claim("ha", 12, "/a", "p2"), at(100))
                .expect("a changed plan is not the sent one");
        });
    }

    #[test]
    fn the_own_state_directory_resumes_and_an_expired_run_elsewhere_is_still_refused() {
        on_store("registry_expiry", |connect| {
            let mut a = Registration::claim_on(connect(), claim("ha", 11, "/a", "p1"), at(0))
                .expect("a claims");
            a.opened("run-a", RunStatus::Running, "p1", at(0))
                .expect("opened");
            // Killed: no finish, the lease runs out at 30 s. After expiry, another directory is
            // still refused, plainly.
            drop(a);
            let e = Registration::claim_on(connect(), claim("hb", 22, "/b", "p1"), at(31))
                .expect_err("refused");
            let msg = e.to_string();
            assert!(matches!(e, RegistryError::Elsewhere { .. }), "{msg}");
            assert!(
                msg.contains(&format!("its lease expired at {}", at(30)))
                    && msg.contains("would resend")
                    && msg.contains("resume it there"),
                "{msg}"
            );
            // The same state directory (a new process) takes it back.
            let mut a2 = Registration::claim_on(connect(), claim("ha", 13, "/a", "p1"), at(40))
                .expect("own directory resumes");
            a2.opened("run-a", RunStatus::Running, "p1", at(40))
                .expect("opened");
            let r = row(&connect());
            assert_eq!(
                (r.pid, r.fence, r.run_id.as_deref()),
                (13, 2, Some("run-a"))
            );
            // Paused (lease released): another directory is refused, the own one resumes.
            a2.finish(RunStatus::Paused, at(50)).expect("pause");
            let e = Registration::claim_on(connect(), claim("hb", 22, "/b", "p1"), at(51))
                .expect_err("paused elsewhere");
            assert!(e.to_string().contains("it holds no lease"), "{e}");
            // A process of the own directory while another one here holds it live: left to the
            // journal, which refuses; the row is untouched.
            let mut a3 = Registration::claim_on(connect(), claim("ha", 14, "/a", "p1"), at(52))
                .expect("own directory");
            a3.opened("run-a", RunStatus::Running, "p1", at(52))
                .expect("opened");
            let mut a4 = Registration::claim_on(connect(), claim("ha", 15, "/a", "p1"), at(53))
                .expect("left to the journal");
            assert_eq!(a4.fence, None);
            a4.abandon().expect("journal said busy");
            assert_eq!(row(&connect()).pid, 14);
            a3.renew(at(60)).expect("a3 still holds it");
            // --new-run from b after a3's lease expired supersedes it; a3 learns at its next beat.
            let mut flag = claim("hb", 22, "/b", "p1");
            flag.new_run = true;
            Registration::claim_on(connect(), flag, at(200)).expect("superseded");
            let e = a3.renew(at(201)).expect_err("taken over");
            assert!(
                matches!(e, RegistryError::TakenOver { .. }) && e.to_string().contains("hb"),
                "{e}"
            );
        });
    }

    #[test]
    fn two_state_directories_claiming_at_once_one_wins_and_a_refused_journal_puts_the_row_back() {
        on_store("registry_race", |connect| {
            // Concurrent first claims (no row yet): exactly one wins.
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let conns: Vec<Conn> = (0..4).map(|_| connect()).collect();
            let wins: usize = std::thread::scope(|s| {
                conns
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let b = barrier.clone();
                        s.spawn(move || {
                            b.wait();
                            let dir = format!("/d{i}");
                            Registration::claim_on(c, claim("h", 100 + i as u32, &dir, "p"), at(0))
                                .map(|r| r.fence)
                        })
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|h| h.join().expect("thread"))
                    .filter(|r| matches!(r, Ok(Some(1))))
                    .count()
            });
            assert_eq!(wins, 1, "one of four state directories registers the run");
            // A claim the journal then refuses leaves the row as it was.
            let c = connect();
            c.execute("DELETE FROM imcast_run_registry", params![])
                .expect("reset");
            let mut a =
                Registration::claim_on(connect(), claim("ha", 1, "/a", "p"), at(0)).expect("claim");
            a.abandon().expect("abandon");
            let n: i64 = c
                .query_row("SELECT COUNT(*) FROM imcast_run_registry", params![], |r| {
                    r.get(0)
                })
                .expect("count");
            assert_eq!(n, 0, "the inserted row is removed");
            // Elsewhere lists other directories' runs only.
            let mut b =
                Registration::claim_on(connect(), claim("hb", 2, "/b", "p"), at(0)).expect("b");
            b.opened("run-b", RunStatus::Running, "p", at(0))
                .expect("opened");
            let rows = elsewhere_on(&c, "promo", "ha", "/a").expect("elsewhere");
            assert_eq!(rows.len(), 1);
            assert_eq!(
                (rows[0].holder.host.as_str(), rows[0].holder.status.as_str()),
                ("hb", "running")
            );
            assert!(elsewhere_on(&c, "promo", "hb", "/b")
                .expect("elsewhere")
                .is_empty());
        });
    }
}
