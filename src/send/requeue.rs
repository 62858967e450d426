//! Re-queued receivers: the ones a BatchSendMessage answer listed in `FailedReceiver` (not
//! delivered, so sending them again is safe) wait here for a later call of the same Content.
//!
//! One pool per distinct Content (same variant and [`SameContent`] payload; a variant string is a
//! short hash, so two Contents could share one and are told apart by their payloads). Each
//! entry waits out its back-off (`ready_at`); a pool is taken as a call of at most `max`
//! receivers when `max` of its entries are ready, when its earliest entry has been ready for the
//! `linger` (so receivers refused by several calls go out together), or, once the plan is
//! exhausted, as soon as any entry is ready (nothing at the end of a plan starves).
//!
//! Invariants: a receiver is in at most one pool entry, and only between the committed answer
//! that refused it and the call that resends it (so never in two calls at once); the journal
//! holds it `pending` meanwhile, so a pool lost with the process loses nobody. Must not: touch
//! the journal, the clock or the limiter (the engine does; this is plain data).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Whether two payloads carry the same Content (and Ext): receivers refused by calls of one
/// Content may be resent together in one call.
pub trait SameContent {
    fn same_content(&self, other: &Self) -> bool;
}

impl SameContent for String {
    fn same_content(&self, other: &Self) -> bool {
        self == other
    }
}

/// One receiver waiting to be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// Times the provider refused it so far.
    pub refusals: u32,
    /// Not before this instant (its back-off).
    pub ready_at: Timestamp,
}

/// Receivers taken from a pool for one call.
#[derive(Debug)]
pub struct Taken<P> {
    pub variant: String,
    pub payload: Arc<P>,
    pub entries: Vec<Entry>,
}

struct Pool<P> {
    variant: String,
    payload: Arc<P>,
    entries: Vec<Entry>,
    earliest: Timestamp,
}

/// Every pool of one engine session.
pub struct Pools<P> {
    max: usize,
    linger: SignedDuration,
    next_id: u64,
    pools: HashMap<u64, Pool<P>>,
    by_variant: HashMap<String, Vec<u64>>,
    /// (earliest ready_at, pool) for every non-empty pool.
    order: BTreeSet<(Timestamp, u64)>,
    /// Pools holding at least `max` entries.
    big: BTreeSet<u64>,
    len: usize,
}

impl<P: SameContent> Pools<P> {
    /// Calls of at most `max` receivers; a pool waits up to `linger` for company.
    pub fn new(max: usize, linger: Duration) -> Self {
        Pools {
            max: max.max(1),
            linger: SignedDuration::try_from(linger).unwrap_or(SignedDuration::ZERO),
            next_id: 0,
            pools: HashMap::new(),
            by_variant: HashMap::new(),
            order: BTreeSet::new(),
            big: BTreeSet::new(),
            len: 0,
        }
    }

    /// Receivers waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add receivers refused by (or found pending after) a call of `variant` with `payload`.
    pub fn add(&mut self, variant: &str, payload: &Arc<P>, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let found = self.by_variant.get(variant).and_then(|ids| {
            ids.iter().copied().find(|id| {
                self.pools
                    .get(id)
                    .is_some_and(|p| p.payload.same_content(payload))
            })
        });
        let id = match found {
            Some(id) => id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.pools.insert(
                    id,
                    Pool {
                        variant: variant.to_string(),
                        payload: payload.clone(),
                        entries: Vec::new(),
                        earliest: Timestamp::MAX,
                    },
                );
                self.by_variant
                    .entry(variant.to_string())
                    .or_default()
                    .push(id);
                id
            }
        };
        let Some(pool) = self.pools.get_mut(&id) else {
            return;
        };
        let old = (!pool.entries.is_empty()).then_some(pool.earliest);
        self.len += entries.len();
        for e in entries {
            pool.earliest = pool.earliest.min(e.ready_at);
            pool.entries.push(e);
        }
        if old != Some(pool.earliest) {
            if let Some(t) = old {
                self.order.remove(&(t, id));
            }
            self.order.insert((pool.earliest, id));
        }
        if pool.entries.len() >= self.max {
            self.big.insert(id);
        }
    }

    /// The next call to make at `now`, if one is due. `flush` (the plan is exhausted): any
    /// ready entry is due at once.
    pub fn take(&mut self, now: Timestamp, flush: bool) -> Option<Taken<P>> {
        let full = self.big.iter().copied().find(|id| {
            self.pools
                .get(id)
                .is_some_and(|p| p.entries.iter().filter(|e| e.ready_at <= now).count() >= self.max)
        });
        let id = match full {
            Some(id) => id,
            None => {
                let &(earliest, id) = self.order.first()?;
                let due = if flush {
                    earliest
                } else {
                    earliest.saturating_add(self.linger).ok()?
                };
                if earliest > now || due > now {
                    return None;
                }
                id
            }
        };
        self.take_from(id, now)
    }

    /// When [`Self::take`] may next return a call (None: no entry waits).
    pub fn next_due(&self, flush: bool) -> Option<Timestamp> {
        let &(earliest, _) = self.order.first()?;
        if flush {
            Some(earliest)
        } else {
            Some(
                earliest
                    .saturating_add(self.linger)
                    .unwrap_or(Timestamp::MAX),
            )
        }
    }

    fn take_from(&mut self, id: u64, now: Timestamp) -> Option<Taken<P>> {
        let pool = self.pools.get_mut(&id)?;
        let old = pool.earliest;
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(pool.entries.len());
        for e in pool.entries.drain(..) {
            if taken.len() < self.max && e.ready_at <= now {
                taken.push(e);
            } else {
                kept.push(e);
            }
        }
        pool.entries = kept;
        self.len -= taken.len();
        self.order.remove(&(old, id));
        if pool.entries.len() < self.max {
            self.big.remove(&id);
        }
        let out = Taken {
            variant: pool.variant.clone(),
            payload: pool.payload.clone(),
            entries: taken,
        };
        if pool.entries.is_empty() {
            let variant = pool.variant.clone();
            self.pools.remove(&id);
            if let Some(ids) = self.by_variant.get_mut(&variant) {
                ids.retain(|p| *p != id);
                if ids.is_empty() {
                    self.by_variant.remove(&variant);
                }
            }
        } else {
            pool.earliest = pool
                .entries
                .iter()
                .map(|e| e.ready_at)
                .min()
                .unwrap_or(Timestamp::MAX);
            self.order.insert((pool.earliest, id));
        }
        (!out.entries.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("valid")
    }

    fn entries(ids: std::ops::Range<u64>, ready: Timestamp) -> Vec<Entry> {
        ids.map(|id| Entry {
            id,
            refusals: 1,
            ready_at: ready,
        })
        .collect()
    }

    #[test]
    fn full_pools_go_first_then_linger_then_flush() {
        let mut p: Pools<String> = Pools::new(500, Duration::from_secs(10));
        let a = Arc::new("hello".to_string());
        p.add("v1", &a, entries(0..300, t(1)));
        p.add("v1", &a, entries(300..700, t(2)));
        assert_eq!(p.len(), 700);
        assert!(p.take(t(1), false).is_none(), "300 ready, not lingered");
        let c = p.take(t(2), false).expect("500 ready: a full call");
        assert_eq!(c.entries.len(), 500);
        assert_eq!(p.len(), 200);
        assert!(p.take(t(5), false).is_none(), "200 left, still lingering");
        assert_eq!(p.next_due(false), Some(t(12)));
        let c = p.take(t(12), false).expect("lingered");
        assert_eq!(c.entries.len(), 200);
        assert!(p.is_empty());
        assert!(p.take(t(100), true).is_none());
    }

    #[test]
    fn flush_takes_ready_entries_and_back_off_is_respected() {
        let mut p: Pools<String> = Pools::new(500, Duration::from_secs(60));
        let a = Arc::new("a".to_string());
        p.add("v", &a, entries(0..3, t(5)));
        p.add("v", &a, entries(3..4, t(1)));
        assert!(p.take(t(0), true).is_none(), "nothing ready yet");
        assert_eq!(p.next_due(true), Some(t(1)));
        let c = p.take(t(1), true).expect("one ready");
        assert_eq!(c.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        assert_eq!(p.next_due(true), Some(t(5)));
        assert_eq!(p.take(t(5), true).expect("rest").entries.len(), 3);
        assert!(p.is_empty());
    }

    #[test]
    fn one_variant_two_contents_never_share_a_call() {
        let mut p: Pools<String> = Pools::new(500, Duration::ZERO);
        let a = Arc::new("a".to_string());
        let b = Arc::new("b".to_string());
        p.add("v", &a, entries(0..2, t(0)));
        p.add("v", &b, entries(2..4, t(0)));
        p.add("v", &Arc::new("a".to_string()), entries(4..5, t(0)));
        let mut calls = Vec::new();
        while let Some(c) = p.take(t(0), true) {
            calls.push((
                c.payload.to_string(),
                c.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            ));
        }
        calls.sort();
        assert_eq!(
            calls,
            [
                ("a".to_string(), vec![0, 1, 4]),
                ("b".to_string(), vec![2, 3])
            ]
        );
    }
}
