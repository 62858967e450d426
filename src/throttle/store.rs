//! Where the limiter's log lives: the small interface both backends implement ([`Store`]), and
//! what passes through it. What a call needs of each rule (units, pacing step, fallback end) is
//! worked out in `throttle.rs`; the rule on the store's state (what counts, when to wait, the
//! pacing time) is [`decide_by_steps`] here, run by SQLite on its [`Steps`], and written a second
//! time in PL/pgSQL (`imcast_throttle_decide`, `crate::pg::schema`) so that a decision on
//! PostgreSQL is one round trip (admission p99 on loopback: BENCHMARKS.md). Two copies of one
//! rule is the price of that; the limiter's test suite (`throttle/tests.rs`) runs every rule test
//! on both backends, so they cannot drift apart unnoticed. A backend keeps the bookkeeping and
//! makes each decision atomic against every other process on the same log.

/// An entry's end to write: the call ended (`close`: set the end, mark it done; the first close
/// wins), or it started late (push the in-flight fallback out to at least `until_ns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct End {
    pub id: i64,
    /// The entry's key (the Postgres backend locks it before touching its entries).
    pub key: String,
    pub until_ns: i128,
    pub close: bool,
}

/// One key's state at the start of a decision, after its ended entries were deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyState {
    /// Units its entries still counting hold (the running total).
    pub used: i128,
    /// The pacing theoretical arrival time, if it was ever set.
    pub tat: Option<i128>,
}

/// An admission to record on one key.
#[derive(Debug, Clone)]
pub(crate) struct NewEntry<'a> {
    pub key: &'a str,
    pub at_ns: i128,
    pub units: i64,
    /// The in-flight fallback end.
    pub until_ns: i128,
}

/// One rule's part of a decision, everything the store needs besides its own state: the rule's
/// key and limit, what this call needs, the pacing step (computed from the rule, the call and the
/// back-off, which the store does not know) and the entry's fallback end.
#[derive(Debug, Clone)]
pub(crate) struct AskRule<'a> {
    pub key: &'a str,
    /// Units this call takes on the key.
    pub need: i64,
    pub limit: i64,
    pub window_ns: i64,
    /// Paced rules: (this call's step of the theoretical arrival time, catch-up tolerance), ns.
    pub pace: Option<(i64, i64)>,
    /// The new entry's in-flight fallback end.
    pub until_ns: i64,
}

/// What one decision came to in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Nothing admitted: ask again in this many nanoseconds (> 0).
    Wait(i128),
    /// Recorded: the entries' ids, one per rule in order.
    Admitted(Vec<i64>),
}

/// The rule on a backend's [`Steps`]. `imcast_throttle_decide` (the PostgreSQL
/// migrations 3 and 9) is the same rule in PL/pgSQL: change both or neither (the limiter's test
/// suite runs on both backends). It deletes a key's ended entries only when they could change
/// the decision, or once a window (migration 9 says why that decides alike).
pub(crate) fn decide_by_steps<S: Steps + ?Sized>(
    store: &mut S,
    rules: &[AskRule<'_>],
    now: i128,
    ends: &[End],
) -> Result<Decided, StoreError> {
    let keys: Vec<&str> = rules.iter().map(|r| r.key).collect();
    let states = store.begin(&keys, now, ends)?;
    let mut wait: i128 = 0;
    let mut tats: Vec<(&str, i128)> = Vec::with_capacity(rules.len());
    for (rule, state) in rules.iter().zip(&states) {
        let used = state.used;
        let need = i128::from(rule.need);
        let limit = i128::from(rule.limit);
        // 1. The hard guarantee: what counts now plus n stays within the limit.
        if used + need > limit {
            let excess = used + need - limit;
            let free_at = store.earliest_free(rule.key, excess)?;
            // An entry in flight ends at its completion + W, so nothing frees up before
            // now + W except entries already ending: asking again then misses nothing.
            let cap = i128::from(rule.window_ns) + 1;
            let w = free_at.map_or(cap, |t| (t + 1 - now).min(cap));
            wait = wait.max(w.max(1));
        }
        // 2. Pacing (smoothness, not safety).
        if let Some((step, tolerance)) = rule.pace {
            let tat = state.tat.unwrap_or(now).max(now);
            let tolerance = i128::from(tolerance);
            if tat - now > tolerance {
                wait = wait.max(tat - now - tolerance);
            }
            tats.push((rule.key, tat + i128::from(step)));
        }
    }
    if wait > 0 {
        store.finish()?;
        return Ok(Decided::Wait(wait));
    }
    let new: Vec<NewEntry<'_>> = rules
        .iter()
        .map(|rule| NewEntry {
            key: rule.key,
            at_ns: now,
            units: rule.need,
            until_ns: i128::from(rule.until_ns),
        })
        .collect();
    Ok(Decided::Admitted(store.admit(&new, &tats)?))
}

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    #[error(transparent)]
    Connect(#[from] crate::pg::PgError),
    #[error(transparent)]
    Schema(crate::pg::schema::SchemaError),
    #[error("the connection was lost in the middle of a decision")]
    Lost,
}

impl StoreError {
    /// Worth trying the decision again at once: a deadlock or serialization failure the server
    /// broke, or a connection that was lost (the backend reconnects).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(_) => false,
            StoreError::Postgres(e) => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        *c == postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                            || *c == postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                            || *c == postgres::error::SqlState::ADMIN_SHUTDOWN
                    })
            }
            StoreError::Connect(_) | StoreError::Lost => true,
            StoreError::Schema(crate::pg::schema::SchemaError::Postgres(e)) => e.is_closed(),
            StoreError::Schema(_) => false,
        }
    }
}

impl From<crate::pg::schema::SchemaError> for StoreError {
    fn from(e: crate::pg::schema::SchemaError) -> Self {
        StoreError::Schema(e)
    }
}

/// The limiter's log. One decision ([`Store::decide`]) is one transaction that excludes every
/// other decision on the same keys (every process, every host) and sees everything they
/// committed. After an error the caller calls [`Store::rollback`] before anything else.
///
/// Invariants every backend keeps: a key's running total equals the sum of its entries' units;
/// an entry is deleted only once its end is before `now`; a closed entry's end is never changed
/// again.
pub(crate) trait Store: Send {
    /// One whole decision at `now` on `rules`, committed: write `ends` (ids unique), delete the
    /// keys' entries that ended before `now`, apply the rule, and record the admission if it
    /// admits. SQLite runs [`decide_by_steps`] on its [`Steps`]; PostgreSQL calls its server-side
    /// function (one round trip).
    fn decide(
        &mut self,
        rules: &[AskRule<'_>],
        now: i128,
        ends: &[End],
    ) -> Result<Decided, StoreError>;

    /// Several admissions decided in order at `now`, each by the rule exactly as if alone (it
    /// sees what the previous ones recorded), `ends` written with the first; stops at the first
    /// that must wait (its `Wait` is the last result): the ones behind it are not decided, so none
    /// jumps ahead. Results for a prefix of `asks`, at least the first. By default one
    /// [`Store::decide`] each (SQLite: in-process, a decision costs no round trip); PostgreSQL
    /// decides them all in one call (`imcast_throttle_decide_batch`). An error after the first
    /// decision ends the batch there (what was decided stands; the rest ask again alone).
    fn decide_batch(
        &mut self,
        asks: &[Vec<AskRule<'_>>],
        now: i128,
        ends: &[End],
    ) -> Result<Vec<Decided>, StoreError> {
        let mut out = Vec::with_capacity(asks.len());
        for (i, ask) in asks.iter().enumerate() {
            match self.decide(ask, now, if i == 0 { ends } else { &[] }) {
                Ok(d) => {
                    let wait = matches!(d, Decided::Wait(_));
                    out.push(d);
                    if wait {
                        break;
                    }
                }
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    self.rollback();
                    tracing::debug!(error = %e, "limiter: a batch ended early; the rest ask again");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Abandon the decision in progress, if any.
    fn rollback(&mut self);

    /// Write `ends` outside a decision, in a transaction of their own.
    fn write_ends(&mut self, ends: &[End]) -> Result<(), StoreError>;
}

/// A decision in steps, in one transaction: [`Steps::begin`], any number of
/// [`Steps::earliest_free`], then [`Steps::admit`] or [`Steps::finish`].
pub(crate) trait Steps {
    /// Start a decision at `now` on `keys`: write `ends` (ids unique), delete the keys' entries
    /// that ended before `now`, and return each key's state (in the order of `keys`).
    fn begin(
        &mut self,
        keys: &[&str],
        now: i128,
        ends: &[End],
    ) -> Result<Vec<KeyState>, StoreError>;

    /// Within a decision: the end of the entry at which `excess` units of `key` will have
    /// stopped counting (entries taken by end), if its entries hold that many.
    fn earliest_free(&mut self, key: &str, excess: i128) -> Result<Option<i128>, StoreError>;

    /// Record `entries` (adding their units to the totals) and the new pacing times `tats`, and
    /// commit the decision. Returns the entries' ids, in order.
    fn admit(
        &mut self,
        entries: &[NewEntry<'_>],
        tats: &[(&str, i128)],
    ) -> Result<Vec<i64>, StoreError>;

    /// Commit a decision that admitted nothing (its ends and deletions stay).
    fn finish(&mut self) -> Result<(), StoreError>;
}

/// `ends` with one end per entry, in first-seen order: a close wins over extensions (the first
/// close if there are several), extensions keep the latest end.
pub(crate) fn collapse(ends: &[End]) -> Vec<End> {
    let mut out: Vec<End> = Vec::with_capacity(ends.len());
    for e in ends {
        match out.iter_mut().find(|o| o.id == e.id) {
            None => out.push(e.clone()),
            Some(o) if o.close => {}
            Some(o) if e.close => *o = e.clone(),
            Some(o) => o.until_ns = o.until_ns.max(e.until_ns),
        }
    }
    out
}

/// `t` as a 64-bit integer (times are nanoseconds since 1970: far inside i64).
pub(crate) fn clamp_i64(t: i128) -> i64 {
    t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(id: i64, until_ns: i128, close: bool) -> End {
        End {
            id,
            key: "k".into(),
            until_ns,
            close,
        }
    }

    #[test]
    fn collapse_keeps_one_end_per_entry() {
        let got = collapse(&[
            end(1, 10, false),
            end(2, 5, false),
            end(1, 20, false),
            end(2, 7, true),
            end(2, 9, true),
            end(2, 30, false),
            end(3, 1, true),
        ]);
        assert_eq!(
            got,
            vec![end(1, 20, false), end(2, 7, true), end(3, 1, true)]
        );
    }
}
