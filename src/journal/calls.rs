//! Call writes and the receivers still to send: in-flight marks, outcomes, not-processed
//! retries, the bookkeeping of re-queued receivers (FailedReceiver) and their resend calls, the
//! end of pending recipients (deadline, cancel), and crash recovery.
//!
//! Invariants: a mark is committed before its request leaves (see `commit` for the group
//! commit); a call's outcomes and its final state commit in one transaction, with the per-status
//! counters; after a crash an in-flight call makes its pending receivers `unknown` (SendMessage
//! calls go back to planned: the same ClientMsgId makes a resend safe). Must not: change a
//! recipient that already has a final status (every update is guarded by its current status).

use std::collections::{BTreeMap, HashMap};

use crate::store::{params, Backend, Conn, StoreError, Value};
use jiff::Timestamp;

use super::counts::count_move;
use super::deferred::{self, Answered};
use super::pack::{decode_list, encode_list, to_ns};
use super::rows::{plan_rks, resolve, rows_at, variant_idx, Fingerprint, Found, FoundMap};
use super::schema::{rk_range, run_key, ts, MAX_LINE};
use super::{
    CallState, Journal, JournalError, Mark, Ops, Outcome, RecipientStatus, RecipientUpdate,
    Recovered, Sendable, Write,
};
use crate::action::Action;

/// A call's receivers as its row stores them: the audience lines of their rows (packed, in the
/// given order) and the ids that have no row in the run (packed; None: none).
pub(super) fn pack_receivers(
    conn: &Conn,
    key: i64,
    seq: u64,
    ids: &[u64],
) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
    // Only the migration to the compact layout packs receivers this way: no deferred rows then.
    let found = super::rows::resolve_in(conn, key, seq, ids, true, false)?;
    Ok(pack_found(&found, ids))
}

/// [`pack_receivers`] from rows already looked up.
fn pack_found(found: &FoundMap, ids: &[u64]) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut lines = Vec::with_capacity(ids.len());
    let mut strays = Vec::new();
    for id in ids {
        match found.get(id) {
            Some(f) => lines.push(f.rk & MAX_LINE as i64),
            None => strays.push(*id as i64),
        }
    }
    let strays = (!strays.is_empty()).then(|| encode_list(&strays));
    (encode_list(&lines), strays)
}

/// The receivers' rows the in-flight marks of this journal looked up, by (run, call): the
/// call's outcome finds its rows here instead of reading them again (a read of every receiver's
/// row, measured at about 4 % of a run's CPU). A row's status may have changed since the mark
/// (a cancel while the call was in flight): every outcome update is guarded by the status it
/// moves from, so a stale one changes nothing, exactly as a fresh read would have skipped it.
/// Only this process writes a run's calls while it holds the lease, and a mark replaces its
/// call's entry, so an entry is never older than its call's last mark. Bounded: at most
/// [`MARKED_MAX`] calls (the sender's concurrency is far below); beyond, it starts over (a
/// missing entry is read from the journal as before).
///
/// It also holds what this process seeded for the run it created last ([`Seeded`]): a plan
/// call's mark whose receivers match the call's seeded rows (their [`Fingerprint`]) finds them by
/// the call's lines alone, without reading them (measured: the mark's read was ≈ 1,950
/// instructions a recipient on SQLite, and 0.9-2.8 s of the server's time a million on
/// PostgreSQL). Those rows were all `pending` when seeded, the call has had no outcome since
/// (its outcome spends the fingerprint), and no other process held the run since (the
/// fingerprints go with a change of this journal's fence), so each is `pending` or was ended by
/// a cancel or an expiry, which the outcome's guard on `pending` skips, as a fresh read would.
#[derive(Default)]
pub(super) struct Marked {
    found: HashMap<(String, u64), FoundMap>,
    /// Variant indexes by (run key, variant): see [`Marked::variant`].
    variants: HashMap<(i64, String), i64>,
    seeded: Option<Seeded>,
    /// Marks that found their rows by the seeded fingerprint (tests).
    #[cfg(test)]
    pub fresh_marks: u64,
    /// Of those, marks written from the plan's row alone (PostgreSQL, [`PG_FRESH_MARK`]; tests).
    #[cfg(test)]
    pub plan_marks: u64,
}

/// The plan calls' [`Fingerprint`]s of a run this process created and seeded, valid while this
/// journal holds the run under the fence it created it with (kept until the journal's next
/// decision; never stored).
pub(super) struct Seeded {
    pub run_id: String,
    /// This journal's fence on the run once created ([`Marked::seeded`] sets it).
    pub fence: Option<i64>,
    pub calls: HashMap<u64, Fingerprint, crate::plan::FastState>,
    /// The plan calls with a row written at seeding (not deferred: an A/B name, a note, an id
    /// written another way). The others' rows are all in their deferred entries, which their
    /// outcomes take: on PostgreSQL their fresh marks read nothing ([`PG_FRESH_MARK`]).
    pub written: std::collections::HashSet<u64, crate::plan::FastState>,
}

const MARKED_MAX: usize = 1024;

impl Marked {
    fn put(&mut self, run_id: &str, seq: u64, found: FoundMap) {
        if self.found.len() >= MARKED_MAX {
            self.found.clear();
        }
        self.found.insert((run_id.to_string(), seq), found);
    }

    fn take(&mut self, run_id: &str, seq: u64) -> Option<FoundMap> {
        self.found.remove(&(run_id.to_string(), seq))
    }

    /// Forget every looked-up entry (a write batch that failed: what it looked up may not be
    /// committed). The seeded fingerprints stay: the seeding was committed with its run.
    pub(super) fn clear(&mut self) {
        self.found.clear();
        self.variants.clear();
    }

    /// The index of `variant` in run `key`'s dictionary ([`variant_idx`]), remembered: a run's
    /// dictionary only grows, and an index added by a batch that fails is forgotten with the
    /// batch ([`Marked::clear`]). Saves a query a call (a round trip on PostgreSQL).
    fn variant(&mut self, tx: &Conn, key: i64, variant: &str) -> Result<i64, StoreError> {
        if let Some(i) = self.variants.get(&(key, variant.to_string())) {
            return Ok(*i);
        }
        let i = variant_idx(tx, key, variant)?;
        if self.variants.len() >= MARKED_MAX {
            self.variants.clear();
        }
        self.variants.insert((key, variant.to_string()), i);
        Ok(i)
    }

    /// After a decision of this journal: the run it created and seeded, with this journal's
    /// fence on it (None: it created none; the last one's fingerprints are dropped either way).
    pub(super) fn seeded(&mut self, seeded: Option<Seeded>, fence: impl Fn(&str) -> Option<i64>) {
        self.seeded = seeded.map(|s| Seeded {
            fence: fence(&s.run_id),
            ..s
        });
    }

    /// Before a write batch: drop the fingerprints unless this journal still holds their run
    /// under the fence it created it with. After a takeover (and a claim back) another process
    /// may have written the run's rows.
    pub(super) fn check_seeded(&mut self, fence: impl Fn(&str) -> Option<i64>) {
        if self
            .seeded
            .as_ref()
            .is_some_and(|s| s.fence.is_none() || fence(&s.run_id) != s.fence)
        {
            self.seeded = None;
        }
    }

    /// Whether `receivers` are plan call `seq`'s seeded rows, in the order of its lines, with no
    /// outcome recorded for the call since.
    fn fresh(&self, run_id: &str, seq: u64, receivers: &[u64]) -> bool {
        self.seeded.as_ref().is_some_and(|s| {
            s.run_id == run_id
                && s.calls
                    .get(&seq)
                    .is_some_and(|f| *f == Fingerprint::of(receivers))
        })
    }

    /// Whether plan call `seq` of the seeded run had every row deferred (see [`Seeded`]).
    fn all_deferred(&self, run_id: &str, seq: u64) -> bool {
        self.seeded
            .as_ref()
            .is_some_and(|s| s.run_id == run_id && !s.written.contains(&seq))
    }

    /// The call has an outcome: its next mark (if any) reads its rows.
    fn spend(&mut self, run_id: &str, seq: u64) {
        if let Some(s) = self.seeded.as_mut().filter(|s| s.run_id == run_id) {
            s.calls.remove(&seq);
        }
    }
}

/// The head of a mark's call row insert (its columns).
macro_rules! mark_call_into {
    () => {
        "INSERT INTO calls(run_id, seq, variant, receivers, strays, n_receivers, state, attempts,
                           client_msg_id, updated_at)"
    };
}

/// A mark's call row that exists already (a retry): one more attempt, in flight again.
macro_rules! mark_call_upsert {
    () => {
        "ON CONFLICT(run_id, seq) DO UPDATE SET variant = excluded.variant,
             receivers = excluded.receivers, strays = excluded.strays,
             n_receivers = excluded.n_receivers, state = 'in_flight',
             attempts = calls.attempts + 1, client_msg_id = excluded.client_msg_id,
             updated_at = excluded.updated_at"
    };
}

/// A call's in-flight mark: its row, created or (a retry) updated with one more attempt.
/// ?1 run id, ?2 call, ?3 variant, ?4 the receivers' lines (packed), ?5 strays, ?6 how many,
/// ?7 client message id, ?8 time.
pub(super) const MARK_CALL: &str = mark_call!();

/// [`MARK_CALL`]'s text, for statements that build on it with `concat!`.
macro_rules! mark_call {
    () => {
        concat!(
            $crate::journal::calls::mark_call_into!(),
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_flight', 1, ?7, ?8) ",
            $crate::journal::calls::mark_call_upsert!()
        )
    };
}
pub(super) use {mark_call, mark_call_into, mark_call_upsert};

/// PostgreSQL: the fresh mark of a plan call whose rows are all deferred ([`Marked::fresh`] and
/// [`Marked::all_deferred`]): its receivers are the call's seeded rows in the order of its lines,
/// so the call row's packed lines are the plan's own (`call_plan.lines`, the same packing) and it
/// has no strays. One statement, one round trip, nothing read back: the call row from the plan
/// row ([`MARK_CALL`]'s insert and upsert), then its attempt's row
/// ([`super::attempts::PG_MARK_WITH_ATTEMPT`]'s). The outcome finds every receiver in the call's
/// deferred entry, so the mark keeps no rows for it either.
/// ?1 run id, ?2 call, ?3 variant, ?4 how many, ?5 client message id, ?6 time, ?7 the run's key,
/// ?8 the admission in ns. Changes one row of each table, or (no plan row: never for a seeded
/// call) none, and the caller marks the call the usual way.
const PG_FRESH_MARK: &str = concat!(
    "WITH c AS (",
    mark_call_into!(),
    " SELECT ?1, ?2, ?3, p.lines, NULL, ?4, 'in_flight', 1, ?5, ?6
      FROM call_plan p WHERE p.run_key = ?7 AND p.seq = ?2 ",
    mark_call_upsert!(),
    " RETURNING seq, attempts) ",
    super::attempts::attempt_of_mark!("?7", "?8", "?4")
);

/// [`MARK_CALL`]'s parameters, then the run's key (?9) and the admission in ns (?10), for
/// [`super::attempts::PG_MARK_WITH_ATTEMPT`].
fn params_with_attempt<'a>(p: &[Value<'a>], m: &Mark, key: i64) -> Vec<Value<'a>> {
    let mut v = p.to_vec();
    v.push(Value::Int(key));
    v.push(Value::Int(super::attempts::at_ns(m)));
    v
}

/// An outcome's update of its call row: ?1 run id, ?2 call, ?3 state, ?4/?5 error code and
/// message, ?6 time; returning [`OUTCOME_CALL_COLUMNS`].
const OUTCOME_CALL: &str =
    "UPDATE calls SET state = ?3, error_code = ?4, error_message = ?5, updated_at = ?6
     WHERE run_id = ?1 AND seq = ?2";
const OUTCOME_CALL_COLUMNS: &str = "attempts, variant, receivers";

/// PostgreSQL: [`OUTCOME_CALL`] and `deferred::take` (?7 the run's key) in one statement: the
/// deferred entry's columns first (NULL: none), then the call's. No row when the call has none
/// (an error, as the update alone).
static PG_OUTCOME_CALL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH c AS ({OUTCOME_CALL} RETURNING {OUTCOME_CALL_COLUMNS}),
              d AS (DELETE FROM deferred WHERE run_key = ?7 AND seq = ?2 RETURNING {})
         SELECT d.*, c.* FROM c LEFT JOIN d ON true",
        deferred::ENTRY_COLUMNS
    )
});

/// PostgreSQL: a call's outcomes in one statement (see `Journal::outcome_tx`). ?1 the pending
/// code; arrays ?2 rk, ?3 new status, ?4 message id, ?5 error code, ?6 error message, ?7 detail,
/// ?8 the status each row moves from; ?9 the call, ?10 its variant index, ?11 its attempts.
/// Returns (from, to) of each row it changed.
pub(super) const PG_OUTCOMES: &str = "UPDATE recipients AS r SET status = u.status, message_id = u.message_id,
                         error_code = u.code, error_message = u.msg, detail = u.detail, at = NULL,
                         call_seq = ?9, variant = ?10,
                         attempts = CASE WHEN u.from_status = ?1 THEN r.attempts + ?11 ELSE ?11 END,
                         refusals = r.refusals + CASE WHEN u.code = 'FailedReceiver' THEN 1 ELSE 0 END
                     FROM unnest(CAST(?2 AS BIGINT[]), CAST(?3 AS BIGINT[]), CAST(?4 AS BIGINT[]),
                                 CAST(?5 AS TEXT[]), CAST(?6 AS TEXT[]), CAST(?7 AS TEXT[]),
                                 CAST(?8 AS BIGINT[]))
                          AS u(rk, status, message_id, code, msg, detail, from_status)
                     WHERE r.rk = u.rk AND r.status = u.from_status
                     RETURNING u.from_status, u.status";

/// PostgreSQL: [`PG_OUTCOMES`] for the common call, where every receiver moves from `pending` and
/// none has an error code, message or detail (a delivered call): only the arrays that differ
/// per row are sent (?2 rk, ?3 new status, ?4 message id), the rest are constants (?1 the pending
/// code, ?5 the call, ?6 its variant index, ?7 its attempts). It sets neither `refusals` nor an
/// indexed column, so where its page has room PostgreSQL updates each row in place without a new
/// index entry (a HOT update). Since deferred rows (store migration 8) a delivered plan call's rows
/// are inserted by its outcome instead (`deferred::insert_answered`); this updates the rows that
/// already exist (a resumed or resent call's). Returns (from, to) of each row it changed, as
/// [`PG_OUTCOMES`].
pub(super) const PG_DELIVERED: &str =
    "UPDATE recipients AS r SET status = u.status, message_id = u.message_id,
                         error_code = NULL, error_message = NULL, detail = NULL, at = NULL,
                         call_seq = ?5, variant = ?6, attempts = r.attempts + ?7
                     FROM unnest(CAST(?2 AS BIGINT[]), CAST(?3 AS BIGINT[]), CAST(?4 AS BIGINT[]))
                          AS u(rk, status, message_id)
                     WHERE r.rk = u.rk AND r.status = ?1
                     RETURNING CAST(?1 AS BIGINT), u.status";

/// The per-row outcome update after its verb (`UPDATE` or SQLite's `UPDATE OR FAIL`), and what
/// it adds for a refused receiver (`, refusals = refusals + 1`, or nothing): a statement that
/// does not set `refusals` leaves the partial index on refused receivers alone (SQLite then
/// skips evaluating it for the old and the new row: measured about 10 % of the update's cost).
macro_rules! outcome_update {
    ($refused:literal) => {
        concat!(
            " recipients SET status = ?3, message_id = ?4, error_code = ?5, error_message = ?6,
             detail = ?7, at = NULL, call_seq = ?8, variant = ?9,
             attempts = CASE WHEN CAST(?11 AS BIGINT) = CAST(?1 AS BIGINT) THEN attempts + ?10 ELSE ?10 END",
            $refused,
            " WHERE rk = ?2 AND status = ?11"
        )
    };
}

impl Journal {
    /// Settle in-flight calls left by a crash: their receivers become `unknown`, except for
    /// SendMessage (conversation) calls, which go back to planned (ClientMsgId makes a resend safe).
    pub fn recover(&mut self, run_id: &str, action: Action) -> Result<Recovered, JournalError> {
        let tx = self.begin_write()?;
        super::lease::check_fence(&tx, &self.path, &self.owner, run_id)?;
        let rec = Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
            seeded: None,
        }
        .recover(run_id, action)?;
        tx.commit().map_err(self.db())?;
        Ok(rec)
    }
}

impl Ops<'_> {
    /// See [`Journal::recover`]; the caller holds the transaction.
    pub(super) fn recover(&self, run_id: &str, action: Action) -> Result<Recovered, JournalError> {
        let db = self.db();
        let tx = self.conn;
        let mut rec = Recovered::default();
        let (lo, _) = rk_range(
            run_key(tx, run_id)
                .map_err(&db)?
                .ok_or_else(|| JournalError::NoRun(run_id.to_string()))?,
        );
        let key = lo >> 32;
        // The calls in flight: a handful (at most the sender's concurrency), so collected.
        let calls: Vec<(i64, Vec<u8>, String, i64)> = tx
            .query_map(
                "SELECT seq, receivers, variant, attempts FROM calls
                 WHERE run_id = ?1 AND state = 'in_flight'",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(&db)?;
        for (seq, receivers, variant, attempts) in calls {
            if action == Action::Conversation {
                tx.execute(
                    "UPDATE calls SET state = 'planned', error_message = 'interrupted; resent with the same ClientMsgId'
                     WHERE run_id = ?1 AND seq = ?2",
                    params![run_id, seq],
                )
                .map_err(&db)?;
                rec.replanned_calls += 1;
                continue;
            }
            let lines = decode_list(&receivers)?;
            // Its deferred receivers become rows first (then `unknown` like the others).
            deferred::materialize_call(tx, key, seq).map_err(&db)?;
            tx.execute(
                "UPDATE calls SET state = 'unknown', error_message = 'the process stopped while the call was in flight'
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq],
            )
            .map_err(&db)?;
            rec.unknown_calls += 1;
            let vidx = variant_idx(tx, key, &variant).map_err(&db)?;
            let mut upd = tx
                .prepare(
                    "UPDATE recipients SET status = ?2, error_code = 'InFlightAtCrash',
                         error_message = 'the process stopped while this call was in flight; it may have been delivered',
                         call_seq = ?3, variant = ?4, attempts = attempts + ?5, at = NULL
                     WHERE rk = ?1 AND status = ?6",
                )
                .map_err(&db)?;
            for line in lines {
                rec.unknown_recipients += upd
                    .execute(params![
                        (key << 32) | (line & MAX_LINE as i64),
                        RecipientStatus::Unknown.code(),
                        seq,
                        vidx,
                        attempts,
                        RecipientStatus::Pending.code()
                    ])
                    .map_err(&db)? as u64;
            }
        }
        count_move(
            tx,
            run_id,
            Some(RecipientStatus::Pending),
            RecipientStatus::Unknown,
            rec.unknown_recipients,
        )
        .map_err(&db)?;
        Ok(rec)
    }

    pub(super) fn cancel_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.set_pending(
            run_id,
            RecipientStatus::Cancelled,
            "the run was cancelled",
            now,
        )
    }

    /// Pending recipients of a run become `to`; the caller holds the transaction.
    pub(super) fn set_pending(
        &self,
        run_id: &str,
        to: RecipientStatus,
        why: &str,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        let db = self.db();
        let Some(key) = run_key(self.conn, run_id).map_err(&db)? else {
            return Ok(0);
        };
        deferred::materialize(self.conn, key, deferred::Which::Pending).map_err(&db)?;
        let (lo, hi) = rk_range(key);
        let n = self
            .conn
            .execute(
                "UPDATE recipients SET status = ?3, error_message = ?4, at = ?5
                 WHERE rk BETWEEN ?1 AND ?2 AND status = ?6",
                params![
                    lo,
                    hi,
                    to.code(),
                    why,
                    to_ns(now),
                    RecipientStatus::Pending.code()
                ],
            )
            .map_err(&db)? as u64;
        count_move(self.conn, run_id, Some(RecipientStatus::Pending), to, n).map_err(&db)?;
        Ok(n)
    }
}

impl Journal {
    // ---- calls ------------------------------------------------------------------------------

    /// Of `ids` (the receivers of plan call `seq`), those still to send in this run: `pending`
    /// (and `unknown` with `resend_unknown`), in the given order.
    pub fn sendable(
        &self,
        run_id: &str,
        seq: u64,
        ids: &[u64],
        resend_unknown: bool,
    ) -> Result<Vec<u64>, JournalError> {
        Ok(self
            .sendable_detail(run_id, seq, ids, resend_unknown)?
            .into_iter()
            .map(|s| s.id)
            .collect())
    }
    /// True when no recipient of the run has an outcome yet (every valid row is still
    /// `pending`): a freshly created run. The engine then skips the per-call "still to send"
    /// lookup, since every receiver the plan names is pending. Never true for a `--retry-failed`
    /// run: it holds only some of the plan's receivers (see `retry`).
    pub fn all_valid_pending(&self, run_id: &str) -> Result<bool, JournalError> {
        // CASE: a boolean expression reads back as 0/1 on both backends.
        let any: bool = self
            .conn
            .query_row(
                "SELECT CASE WHEN EXISTS(SELECT 1 FROM run_counts WHERE run_id = ?1 AND n > 0
                   AND status NOT IN ('pending','invalid','duplicate','suppressed','holdout'))
                 OR EXISTS(SELECT 1 FROM runs WHERE id = ?1 AND retry_of IS NOT NULL)
                 THEN 1 ELSE 0 END",
                params![run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(!any)
    }

    // ---- re-queued receivers (FailedReceiver) ------------------------------------------------
    //
    // A receiver the provider refused (`FailedReceiver`) was not delivered, so it is sent again in
    // a later call of the same Content. In the journal it stays `pending`, with `refusals` > 0,
    // `attempts` = the requests that carried it so far, and error code `FailedReceiver`; no other
    // `pending` row has refusals or attempts > 0. The calls that resend such receivers are
    // ordinary call rows ("extra calls") numbered from the run's `first_resend_seq` up (after
    // every plan call), marked in flight before they are sent like any call; settling one adds its
    // attempts to each receiver's. After a stop or a crash, the engine finds these receivers
    // again through their plan call (`sendable_detail`) and re-queues them.

    /// True when any call of the run has an outcome (`done` or `unknown`). A run without one has
    /// no re-queued receivers either.
    pub fn any_call_settled(&self, run_id: &str) -> Result<bool, JournalError> {
        self.conn
            .query_row(
                "SELECT CASE WHEN EXISTS(SELECT 1 FROM calls WHERE run_id = ?1
                     AND state IN ('done','unknown')) THEN 1 ELSE 0 END",
                params![run_id],
                |r| r.get(0),
            )
            .map_err(self.db())
    }

    /// [`Self::sendable`] with each receiver's refusals so far and whether it is `pending` (a
    /// pending receiver with refusals > 0 was refused and is to be re-queued).
    pub fn sendable_detail(
        &self,
        run_id: &str,
        seq: u64,
        ids: &[u64],
        resend_unknown: bool,
    ) -> Result<Vec<Sendable>, JournalError> {
        let Some(key) = run_key(&self.conn, run_id).map_err(self.db())? else {
            return Ok(Vec::new());
        };
        let found = resolve(&self.conn, key, seq, ids, false).map_err(self.db())?;
        let (pending, unknown) = (
            RecipientStatus::Pending.code(),
            RecipientStatus::Unknown.code(),
        );
        Ok(ids
            .iter()
            .filter_map(|id| {
                let f = found.get(id)?;
                (f.status == pending || (resend_unknown && f.status == unknown)).then(|| Sendable {
                    id: *id,
                    refusals: f.refusals.clamp(0, u32::MAX as i64) as u32,
                    pending: f.status == pending,
                })
            })
            .collect())
    }

    /// Before a session sends: settle the extra calls an earlier session left `planned` (a
    /// not-processed attempt waiting for its retry when the run stopped). Their attempts are added
    /// to their still-pending receivers, which are re-queued again through their plan calls; the
    /// call itself becomes `done` (nothing more is sent under its number). Returns the number the
    /// next extra call gets: after every plan call and every call already recorded.
    pub fn prepare_requeue(&mut self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        let db = self.db();
        let tx = self.begin_write()?;
        super::lease::check_fence(&tx, &self.path, &self.owner, run_id)?;
        let (key, total, first): (i64, i64, Option<i64>) = tx
            .query_opt(
                "SELECT key, total_calls, first_resend_seq FROM runs WHERE id = ?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(&db)?
            .ok_or_else(|| JournalError::NoRun(run_id.to_string()))?;
        let (lo, _) = rk_range(key);
        // Extra calls left planned: a handful (a stop interrupts at most the sender's
        // concurrency), so collected.
        let stale: Vec<(i64, Vec<u8>, i64)> = tx
            .query_map(
                "SELECT seq, receivers, attempts FROM calls
                 WHERE run_id = ?1 AND seq >= ?2 AND state = 'planned'",
                params![run_id, first.unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(&db)?;
        for (seq, receivers, attempts) in stale {
            let lines = decode_list(&receivers)?;
            let mut upd = tx
                .prepare(
                    "UPDATE recipients SET attempts = attempts + ?2
                     WHERE rk = ?1 AND status = ?3",
                )
                .map_err(&db)?;
            for line in lines {
                upd.execute(params![
                    (lo & !(MAX_LINE as i64)) | (line & MAX_LINE as i64),
                    attempts,
                    RecipientStatus::Pending.code()
                ])
                .map_err(&db)?;
            }
            tx.execute(
                "UPDATE calls SET state = 'done', updated_at = ?3,
                     error_message = COALESCE(error_message || '; ', '') || 'not sent again under this number: its receivers were re-queued'
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq, ts(now)],
            )
            .map_err(&db)?;
        }
        let max_seq: Option<i64> = tx
            .query_row(
                "SELECT MAX(seq) FROM calls WHERE run_id = ?1",
                params![run_id],
                |r| r.get(0),
            )
            .map_err(&db)?;
        let next = max_seq.map_or(0, |m| m + 1).max(total).max(0);
        if first.is_none() {
            tx.execute(
                "UPDATE runs SET first_resend_seq = ?2 WHERE id = ?1",
                params![run_id, next],
            )
            .map_err(&db)?;
        }
        tx.commit().map_err(&db)?;
        Ok(next as u64)
    }

    /// Calls made for re-queued receivers (numbered from the run's `first_resend_seq` up).
    pub fn extra_calls(&self, run_id: &str) -> Result<u64, JournalError> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM calls c JOIN runs r ON r.id = c.run_id
                 WHERE c.run_id = ?1 AND c.seq >= r.first_resend_seq",
                params![run_id],
                |r| r.get(0),
            )
            .map_err(self.db())?;
        Ok(n as u64)
    }

    /// Commit the in-flight mark of a call attempt (before the request leaves).
    pub fn mark_in_flight(
        &mut self,
        run_id: &str,
        seq: u64,
        variant: &str,
        receivers: &[u64],
        client_msg_id: Option<&str>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.write_batch(&[Write::Mark(Mark {
            run_id: run_id.to_string(),
            seq,
            variant: variant.to_string(),
            receivers: receivers.to_vec(),
            client_msg_id: client_msg_id.map(str::to_string),
            now,
        })])
    }

    /// Write mark `m` to run `key` (the caller checked the run's fence and found its key).
    pub(super) fn mark_tx(
        tx: &Conn,
        m: &Mark,
        key: i64,
        marked: &mut Marked,
        db: &impl Fn(crate::store::StoreError) -> JournalError,
    ) -> Result<(), JournalError> {
        let mut found = None;
        let fresh = marked.fresh(&m.run_id, m.seq, &m.receivers);
        if fresh && tx.backend() == Backend::Postgres && marked.all_deferred(&m.run_id, m.seq) {
            let n = tx
                .execute(
                    PG_FRESH_MARK,
                    params![
                        m.run_id,
                        m.seq as i64,
                        m.variant,
                        m.receivers.len() as i64,
                        m.client_msg_id.as_deref(),
                        ts(m.now),
                        key,
                        super::attempts::at_ns(m)
                    ],
                )
                .map_err(db)?;
            if n == 1 {
                // Rows an earlier mark of the call looked up are not needed (see above).
                marked.take(&m.run_id, m.seq);
                #[cfg(test)]
                {
                    marked.fresh_marks += 1;
                    marked.plan_marks += 1;
                }
                return Ok(());
            }
        }
        if fresh {
            // The call's seeded rows, in its lines' order (see `Marked`).
            let rks = plan_rks(tx, key, m.seq).map_err(db)?;
            if rks.len() == m.receivers.len() {
                let mut f = FoundMap::with_capacity_and_hasher(rks.len(), Default::default());
                for (id, rk) in m.receivers.iter().zip(rks) {
                    f.entry(*id).or_insert(Found {
                        rk,
                        status: RecipientStatus::Pending.code(),
                        refusals: 0,
                    });
                }
                found = Some(f);
                #[cfg(test)]
                {
                    marked.fresh_marks += 1;
                }
            }
        }
        let found = match found {
            Some(f) => f,
            None => resolve(tx, key, m.seq, &m.receivers, true).map_err(db)?,
        };
        let (lines, strays) = pack_found(&found, &m.receivers);
        marked.put(&m.run_id, m.seq, found);
        // Recipients are not touched here: the call row (with its receivers' lines) is the
        // in-flight mark; the outcome (or crash recovery) updates the recipients.
        let (seq, n, now) = (m.seq as i64, m.receivers.len() as i64, ts(m.now));
        let (lines, strays, cmid) = (
            lines.as_slice(),
            strays.as_deref(),
            m.client_msg_id.as_deref(),
        );
        let params: Vec<Value<'_>> =
            params![m.run_id, seq, m.variant, lines, strays, n, cmid, now].to_vec();
        if tx.backend() == Backend::Postgres {
            // One statement (one round trip): the call row, then its attempt's row from what the
            // row's upsert returned.
            tx.execute(
                super::attempts::PG_MARK_WITH_ATTEMPT,
                &params_with_attempt(&params, m, key),
            )
            .map_err(db)?;
            return Ok(());
        }
        tx.execute(MARK_CALL, &params).map_err(db)?;
        super::attempts::attempt_tx(tx, m, key, db)
    }

    /// A call attempt was not processed (safe to retry): back to planned, recipients untouched.
    pub fn mark_retry(
        &self,
        run_id: &str,
        seq: u64,
        code: Option<&str>,
        message: &str,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        let tx = self.fenced(run_id)?;
        tx.execute(
                "UPDATE calls SET state = 'planned', error_code = ?3, error_message = ?4, updated_at = ?5
                 WHERE run_id = ?1 AND seq = ?2",
                params![run_id, seq as i64, code, message, ts(now)],
            )
            .map_err(self.db())?;
        if let Some(code) = code {
            super::attempts::attempt_ended_tx(&tx, run_id, seq, code).map_err(self.db())?;
        }
        tx.commit().map_err(self.db())
    }

    /// Commit a call's per-recipient outcomes and its final state in one transaction
    /// (`synchronous=NORMAL`, see [`Journal::write_batch`]).
    pub fn record_outcome(
        &mut self,
        run_id: &str,
        seq: u64,
        state: CallState,
        updates: &[RecipientUpdate],
        error: Option<(&str, &str)>,
        now: Timestamp,
    ) -> Result<(), JournalError> {
        self.write_batch(&[Write::Outcome(Outcome {
            run_id: run_id.to_string(),
            seq,
            state,
            updates: updates.to_vec(),
            error: error.map(|(c, m)| (c.to_string(), m.to_string())),
            now,
        })])
    }

    /// Write outcome `o` to run `key` (the caller checked the run's fence and found its key).
    pub(super) fn outcome_tx(
        tx: &Conn,
        o: &Outcome,
        key: i64,
        marked: &mut Marked,
        db: &impl Fn(StoreError) -> JournalError,
    ) -> Result<(), JournalError> {
        // The call's final state first, and what the rest needs from its row, in one statement:
        // the transaction makes the order invisible. Then the call's deferred rows (a plan call
        // of a run seeded here or elsewhere, unanswered so far), inserted below with their
        // outcome rather than updated (see `deferred`): on PostgreSQL both in one statement
        // ([`PG_OUTCOME_CALL`]), one round trip.
        let (seq, now) = (o.seq as i64, ts(o.now));
        let (code, message) = (
            o.error.as_ref().map(|e| e.0.as_str()),
            o.error.as_ref().map(|e| e.1.as_str()),
        );
        let state = o.state.as_str();
        let p: Vec<Value<'_>> = params![o.run_id, seq, state, code, message, now, key].to_vec();
        let ((attempts, variant, receivers), entry): ((i64, String, Vec<u8>), _) =
            if tx.backend() == Backend::Postgres {
                tx.query_row(&PG_OUTCOME_CALL, &p, |r| {
                    Ok((
                        (r.get(4)?, r.get(5)?, r.get(6)?),
                        deferred::Entry::read_opt(r)?,
                    ))
                })
                .map_err(db)?
            } else {
                let call = tx
                    .query_row(
                        &format!("{OUTCOME_CALL} RETURNING {OUTCOME_CALL_COLUMNS}"),
                        &p[..6],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(db)?;
                (call, deferred::take(tx, key, o.seq as i64).map_err(db)?)
            };
        let mut deferred_rks: HashMap<i64, i64, crate::plan::FastState> = HashMap::default();
        if let Some(e) = &entry {
            deferred_rks.reserve(e.lines.len());
            for (line, id) in e.lines.iter().zip(&e.ids) {
                deferred_rks.insert((key << 32) | line, *id);
            }
        }
        // The rows of the call's receivers (what its mark looked up in this process, else the
        // lines its mark stored), by id; an update for an id outside them is looked up as a mark
        // would.
        marked.spend(&o.run_id, o.seq);
        let mut found = match marked.take(&o.run_id, o.seq) {
            Some(f) => f,
            None => {
                let rks: Vec<i64> = decode_list(&receivers)?
                    .into_iter()
                    .map(|l| (key << 32) | (l & MAX_LINE as i64))
                    .filter(|rk| !deferred_rks.contains_key(rk))
                    .collect();
                if rks.is_empty() {
                    // Every receiver is in the deferred entry (a fresh mark that read nothing).
                    FoundMap::default()
                } else {
                    rows_at(tx, &rks).map_err(db)?
                }
            }
        };
        for (rk, id) in &deferred_rks {
            found.entry(*id as u64).or_insert(Found {
                rk: *rk,
                status: RecipientStatus::Pending.code(),
                refusals: 0,
            });
        }
        let missing: Vec<u64> = o
            .updates
            .iter()
            .map(|u| u.id)
            .filter(|id| !found.contains_key(id))
            .collect();
        if !missing.is_empty() {
            found.extend(resolve(tx, key, o.seq, &missing, true).map_err(db)?);
        }
        let vidx = marked.variant(tx, key, &variant).map_err(db)?;
        // The updates that apply: a receiver's row and the status it moves from (`pending`, or
        // `unknown` when resent with --resend-unknown).
        let mut rows: Vec<(&RecipientUpdate, i64, RecipientStatus)> =
            Vec::with_capacity(o.updates.len());
        // (from, to) → recipients moved, for the per-status counters.
        let mut moved: BTreeMap<(RecipientStatus, RecipientStatus), u64> = BTreeMap::new();
        // Deferred receivers: their rows, inserted whole (first, so that an update naming a row
        // twice finds it as the per-row path would).
        let mut answered: Vec<Answered<'_>> = Vec::new();
        // (line, id, message id) of the deferred receivers delivered plainly (`deferred`).
        let mut sent: Vec<(i64, i64, i64)> = Vec::with_capacity(deferred_rks.len());
        for u in &o.updates {
            let Some(f) = found.get(&u.id) else {
                continue;
            };
            if let Some(id) = deferred_rks.remove(&f.rk) {
                *moved
                    .entry((RecipientStatus::Pending, u.status))
                    .or_default() += 1;
                // Delivered with a message id and nothing of its own: kept with its call.
                if let (RecipientStatus::Sent, Some(mid), None, None, None) = (
                    u.status,
                    u.message_id,
                    &u.error_code,
                    &u.error_message,
                    &u.detail,
                ) {
                    sent.push((f.rk & MAX_LINE as i64, id, mid as i64));
                    continue;
                }
                let refused = u.error_code.as_deref() == Some("FailedReceiver");
                answered.push(Answered {
                    rk: f.rk,
                    id,
                    status: u.status.code(),
                    message_id: u.message_id.map(|v| v as i64),
                    error_code: u.error_code.as_deref(),
                    error_message: u.error_message.as_deref(),
                    detail: u.detail.as_deref(),
                    call_seq: o.seq as i64,
                    variant: Some(vidx),
                    attempts,
                    refusals: i64::from(refused),
                });
                continue;
            }
            let from = match RecipientStatus::from_code(f.status) {
                Ok(s @ (RecipientStatus::Pending | RecipientStatus::Unknown)) => s,
                _ => continue,
            };
            rows.push((u, f.rk, from));
        }
        // Deferred receivers the answer does not name stay `pending`, as seeded.
        if let Some(e) = &entry {
            let mut rest: Vec<(i64, i64)> = deferred_rks.into_iter().collect();
            rest.sort_unstable();
            answered.extend(rest.into_iter().map(|(rk, id)| Answered {
                rk,
                id,
                status: RecipientStatus::Pending.code(),
                message_id: None,
                error_code: None,
                error_message: None,
                detail: None,
                call_seq: e.seq,
                variant: e.variant,
                attempts: 0,
                refusals: 0,
            }));
        }
        deferred::insert_answered(tx, &answered).map_err(db)?;
        // A call whose receivers all moved one way and were delivered plainly (nearly every
        // call): its counters are written with its delivered rows, one statement on PostgreSQL.
        let mut counted = None;
        if !sent.is_empty() && rows.is_empty() && moved.len() == 1 {
            if let Some(((from, to), n)) = moved.pop_first() {
                counted = Some(super::counts::MoveCounts {
                    run_id: &o.run_id,
                    from,
                    to,
                    n,
                });
            }
        }
        if !sent.is_empty() {
            sent.sort_unstable();
            let mut d = deferred::Delivered {
                seq: o.seq as i64,
                variant: Some(vidx),
                attempts,
                ..Default::default()
            };
            for (line, id, mid) in sent {
                d.lines.push(line);
                d.ids.push(id);
                d.mids.push(mid);
            }
            d.insert(tx, key, counted.as_ref()).map_err(db)?;
        }
        let bulk = tx.backend() == Backend::Postgres && !rows.is_empty() && {
            // One statement updates each row once: an update list naming a row twice (never
            // from the engine) takes the per-row path, which applies both in order.
            let mut seen = std::collections::HashSet::with_capacity(rows.len());
            rows.iter().all(|(_, rk, _)| seen.insert(*rk))
        };
        if bulk {
            // PostgreSQL: one statement for the whole call (a round trip per receiver would cost
            // 30-50 us each); the rows it changed say which moves happened.
            let rk: Vec<Option<i64>> = rows.iter().map(|r| Some(r.1)).collect();
            let to: Vec<Option<i64>> = rows.iter().map(|r| Some(r.0.status.code())).collect();
            let mid: Vec<Option<i64>> = rows
                .iter()
                .map(|r| r.0.message_id.map(|v| v as i64))
                .collect();
            // A delivered call (nearly every one) takes the statement with three arrays.
            let plain = rows.iter().all(|(u, _, from)| {
                *from == RecipientStatus::Pending
                    && u.error_code.is_none()
                    && u.error_message.is_none()
                    && u.detail.is_none()
            });
            let (code, msg, detail, from): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = if plain {
                Default::default()
            } else {
                (
                    rows.iter().map(|r| r.0.error_code.as_deref()).collect(),
                    rows.iter().map(|r| r.0.error_message.as_deref()).collect(),
                    rows.iter().map(|r| r.0.detail.as_deref()).collect(),
                    rows.iter().map(|r| Some(r.2.code())).collect(),
                )
            };
            let (sql, params) = if plain {
                (
                    PG_DELIVERED,
                    vec![
                        Value::Int(RecipientStatus::Pending.code()),
                        Value::Ints(&rk),
                        Value::Ints(&to),
                        Value::Ints(&mid),
                        Value::Int(o.seq as i64),
                        Value::Int(vidx),
                        Value::Int(attempts),
                    ],
                )
            } else {
                (
                    PG_OUTCOMES,
                    vec![
                        Value::Int(RecipientStatus::Pending.code()),
                        Value::Ints(&rk),
                        Value::Ints(&to),
                        Value::Ints(&mid),
                        Value::Texts(&code),
                        Value::Texts(&msg),
                        Value::Texts(&detail),
                        Value::Ints(&from),
                        Value::Int(o.seq as i64),
                        Value::Int(vidx),
                        Value::Int(attempts),
                    ],
                )
            };
            let changed = tx
                .query_map(sql, &params, |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)))
                .map_err(db)?;
            for (f, t) in changed {
                let key = (
                    RecipientStatus::from_code(f)?,
                    RecipientStatus::from_code(t)?,
                );
                *moved.entry(key).or_default() += 1;
            }
        } else if !rows.is_empty() {
            // One prepared statement a row inside the transaction (SQLite: in-process, a few
            // hundred nanoseconds each). `OR FAIL` on SQLite: at most one row per statement, so
            // nothing to undo if it fails halfway; SQLite then keeps no statement journal for
            // it (measured: about half of the per-statement overhead of this update).
            // A pending receiver keeps the attempts of earlier calls that refused it
            // (FailedReceiver, re-queued) and adds this call's; an `unknown` one resent with
            // --resend-unknown was in this very call before, whose count already holds them.
            // No time of its own: the row's time is its call's (`rows::RunView::time`).
            let (plain, refused) = match tx.backend() {
                Backend::Sqlite => (
                    concat!("UPDATE OR FAIL", outcome_update!("")),
                    concat!(
                        "UPDATE OR FAIL",
                        outcome_update!(", refusals = refusals + 1")
                    ),
                ),
                Backend::Postgres => (
                    concat!("UPDATE", outcome_update!("")),
                    concat!("UPDATE", outcome_update!(", refusals = refusals + 1")),
                ),
            };
            let mut plain = tx.prepare(plain).map_err(db)?;
            let mut refused = tx.prepare(refused).map_err(db)?;
            for (u, rk, from) in rows {
                let upd = if u.error_code.as_deref() == Some("FailedReceiver") {
                    &mut refused
                } else {
                    &mut plain
                };
                let n = upd
                    .execute(params![
                        RecipientStatus::Pending.code(),
                        rk,
                        u.status.code(),
                        u.message_id.map(|v| v as i64),
                        u.error_code.as_deref(),
                        u.error_message.as_deref(),
                        u.detail.as_deref(),
                        o.seq as i64,
                        vidx,
                        attempts,
                        from.code()
                    ])
                    .map_err(db)?;
                if n > 0 {
                    *moved.entry((from, u.status)).or_default() += n as u64;
                }
            }
        }
        for ((from, to), n) in moved {
            count_move(tx, &o.run_id, Some(from), to, n).map_err(db)?;
        }
        if let Some((code, _)) = &o.error {
            super::attempts::attempt_ended_tx(tx, &o.run_id, o.seq, code).map_err(db)?;
        }
        Ok(())
    }

    /// Pending recipients become `expired` (deadline passed). Returns how many.
    pub fn expire_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.set_pending(
            run_id,
            RecipientStatus::Expired,
            "the run's deadline passed",
            now,
        )
    }

    /// Pending recipients become `cancelled`. Returns how many.
    pub fn cancel_pending(&self, run_id: &str, now: Timestamp) -> Result<u64, JournalError> {
        self.in_immediate(|ops| {
            ops.check_fence(run_id)
                .and_then(|()| ops.cancel_pending(run_id, now))
        })
    }

    pub(super) fn set_pending(
        &self,
        run_id: &str,
        to: RecipientStatus,
        why: &str,
        now: Timestamp,
    ) -> Result<u64, JournalError> {
        self.in_immediate(|ops| {
            ops.check_fence(run_id)
                .and_then(|()| ops.set_pending(run_id, to, why, now))
        })
    }

    /// Run `f` on the run statements ([`Ops`]) in one IMMEDIATE transaction, committed if it
    /// succeeds.
    fn in_immediate(
        &self,
        f: impl FnOnce(&Ops<'_>) -> Result<u64, JournalError>,
    ) -> Result<u64, JournalError> {
        let tx = super::begin_write(&self.conn).map_err(self.db())?;
        let n = f(&Ops {
            conn: &self.conn,
            path: &self.path,
            owner: &self.owner,
            seeded: None,
        })?;
        tx.commit().map_err(self.db())?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::Action;
    use crate::journal::testutil::*;
    use crate::journal::*;

    #[test]
    fn refused_receivers_stay_pending_and_stale_resends_are_settled() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let id = open(&mut j, "h1", ResumeOptions::default(), rows(&[]))
            .expect("create")
            .run()
            .id
            .clone();
        assert_eq!(j.prepare_requeue(&id, now()).expect("prepare"), 1);
        j.mark_in_flight(&id, 0, "v", &[101, 102, 103, 104], None, now())
            .expect("mark");
        let upd = |id, status, code: Option<&str>| RecipientUpdate {
            id,
            status,
            message_id: None,
            error_code: code.map(str::to_string),
            error_message: None,
            detail: None,
        };
        j.record_outcome(
            &id,
            0,
            CallState::Done,
            &[
                upd(101, RecipientStatus::Sent, None),
                upd(102, RecipientStatus::Pending, Some("FailedReceiver")),
                upd(103, RecipientStatus::Failed, Some("FailedReceiver")),
                upd(104, RecipientStatus::Sent, None),
            ],
            None,
            now(),
        )
        .expect("outcome");
        assert!(j.any_call_settled(&id).expect("q"));
        assert_eq!(
            j.sendable_detail(&id, 0, &[101, 102, 103, 104], false)
                .expect("q"),
            [Sendable {
                id: 102,
                refusals: 1,
                pending: true
            }]
        );
        // A resend tried twice, not processed, left planned by a stop.
        j.mark_in_flight(&id, 1, "v", &[102], None, now())
            .expect("mark");
        j.mark_retry(&id, 1, Some("InternalError"), "HTTP 500", now())
            .expect("retry");
        j.mark_in_flight(&id, 1, "v", &[102], None, now())
            .expect("mark");
        j.mark_retry(&id, 1, Some("InternalError"), "HTTP 500", now())
            .expect("retry");
        // The next session settles it (its attempts count) and numbers resends after it.
        assert_eq!(j.prepare_requeue(&id, now()).expect("prepare"), 2);
        assert_eq!(j.call_counts(&id).expect("calls")[&CallState::Planned], 0);
        let row = |j: &Journal| {
            j.recipients(&id)
                .expect("rows")
                .into_iter()
                .find(|r| r.id == Some(102))
                .expect("row")
        };
        assert_eq!(row(&j).attempts, 3);
        assert_eq!(row(&j).status, RecipientStatus::Pending);
        j.mark_in_flight(&id, 2, "v", &[102], None, now())
            .expect("mark");
        j.record_outcome(
            &id,
            2,
            CallState::Done,
            &[upd(102, RecipientStatus::Sent, None)],
            None,
            now(),
        )
        .expect("outcome");
        assert_eq!(row(&j).attempts, 4, "every request that carried it");
        assert_eq!(row(&j).status, RecipientStatus::Sent);
        assert_eq!(j.extra_calls(&id).expect("n"), 2);
        let c = j.counts(&id).expect("counts");
        assert_eq!(c[&RecipientStatus::Sent], 3);
        assert_eq!(c[&RecipientStatus::Failed], 1);
        assert_eq!(c[&RecipientStatus::Pending], 0);
        // The refusal that made 103 `failed` is counted too.
        let n: i64 = j
            .connection()
            .query_row("SELECT refusals FROM recipients WHERE id = 103", &[], |r| {
                r.get(0)
            })
            .expect("refusals");
        assert_eq!(n, 1);
    }

    #[test]
    fn conversation_in_flight_is_replanned_not_unknown() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(d.path()).expect("open");
        let mut nr = new_run("h1");
        nr.action = Action::Conversation;
        let r = rows(&[]);
        let mut f = || -> SeedRows<'static, String> { Box::new(r.clone().into_iter().map(Ok)) };
        let id = j
            .open_run(&nr, ResumeOptions::default(), &mut f, now())
            .expect("create")
            .run()
            .id
            .clone();
        j.mark_in_flight(&id, 0, "v", &[101], Some("imcast-abc"), now())
            .expect("mark");
        let rec = j.recover(&id, Action::Conversation).expect("recover");
        assert_eq!(rec.replanned_calls, 1);
        assert_eq!(rec.unknown_recipients, 0);
        assert_eq!(
            j.sendable(&id, 0, &[101], false).expect("q"),
            vec![101],
            "resent with the same ClientMsgId"
        );
    }
}
