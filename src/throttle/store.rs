//! Where the limiter's log lives: the small interface both backends implement ([`Store`]), and
//! what passes through it. The rule itself (what counts, when to wait, pacing) is decided in
//! `throttle.rs` once, for both; a backend only keeps the bookkeeping and makes each decision
//! atomic against every other process on the same log.

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

/// The limiter's log. One decision is [`Store::begin`], any number of
/// [`Store::earliest_free`], then [`Store::admit`] or [`Store::finish`]: one transaction that
/// excludes every other decision on the same keys (every process, every host) from `begin` to
/// the end, and sees everything they committed. After an error the caller calls
/// [`Store::rollback`] before anything else.
///
/// Invariants every backend keeps: a key's running total equals the sum of its entries' units;
/// an entry is deleted only once its end is before `now`; a closed entry's end is never changed
/// again.
pub(crate) trait Store: Send {
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

    /// Abandon the decision in progress, if any.
    fn rollback(&mut self);

    /// Write `ends` outside a decision, in a transaction of their own.
    fn write_ends(&mut self, ends: &[End]) -> Result<(), StoreError>;
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
