//! Stable assignment of recipients: which A/B variant, whether in the holdout, whether in the
//! canary sample.
//!
//! Owns: the one hash every assignment uses — SHA-256 of `campaign name`, a purpose (`"variant"`,
//! `"holdout"`, `"canary"`) and the recipient id, read as a `u64` ([`point`]) — and the two ways
//! a point is turned into a choice: by weights ([`pick`]) and by a share ([`within`]).
//!
//! Invariants: a recipient's assignment depends only on (campaign name, purpose, id) — never on
//! CSV order, run, resume, host or imcast version — so the same person gets the same variant on
//! every run and a resumed run re-derives exactly the sets it started with. Purposes are
//! independent: the holdout takes the same share of every variant, and the canary samples each
//! variant in proportion. Choices use integer arithmetic only (no floats on the path). [`pick`]
//! lays the weights out as consecutive ranges, so switching one off with weight 0 also moves people
//! of the variants after it; A/B variants therefore use the weighted rendezvous draw of
//! `crate::variants` over the same point, where switching one off moves only its own people.
//!
//! Must not: read the journal, the clock or any randomness; change the hash (that would move
//! people between variants of a running campaign). SHA-256 is the `sha2` crate the signer
//! already uses: a fixed, documented function, unlike `std`'s `DefaultHasher`, which is free to
//! change between Rust releases.

use sha2::{Digest, Sha256};

/// What an assignment is for; each purpose is an independent draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Variant,
    Holdout,
    Canary,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Variant => "variant",
            Purpose::Holdout => "holdout",
            Purpose::Canary => "canary",
        }
    }
}

/// The recipient's point in `0..=u64::MAX` for `purpose` in `campaign`.
pub fn point(campaign: &str, purpose: Purpose, id: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(campaign.as_bytes());
    h.update([0u8]);
    h.update(purpose.as_str().as_bytes());
    h.update([0u8]);
    h.update(id.to_be_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The index of the weight whose share of `0..=u64::MAX` holds `point`: weight `w` of a total `t`
/// gets `w/t` of the points. `None` when every weight is 0.
pub fn pick(point: u64, weights: &[u64]) -> Option<usize> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return None;
    }
    // Scale the point into 0..total without floats: floor(point * total / 2^64).
    let x = (u128::from(point) * total) >> 64;
    let mut acc = 0u128;
    for (i, &w) in weights.iter().enumerate() {
        acc += u128::from(w);
        if x < acc {
            return Some(i);
        }
    }
    None
}

/// Whether `point` falls in a share of `parts` per `whole` (e.g. 5 per 100 for 5 %): exactly
/// `parts/whole` of all points do.
pub fn within(point: u64, parts: u64, whole: u64) -> bool {
    if whole == 0 {
        return false;
    }
    let x = (u128::from(point) * u128::from(whole)) >> 64;
    x < u128::from(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Changing the hash would move people between variants of a running campaign.
        assert_eq!(
            point("spring", Purpose::Variant, 42),
            point("spring", Purpose::Variant, 42)
        );
        assert_ne!(
            point("spring", Purpose::Variant, 42),
            point("spring", Purpose::Holdout, 42)
        );
        assert_ne!(
            point("spring", Purpose::Variant, 42),
            point("autumn", Purpose::Variant, 42)
        );
        // SHA-256(b"spring\0variant\0" + 42u64 big-endian), first 8 bytes big-endian.
        assert_eq!(
            point("spring", Purpose::Variant, 42),
            3_686_777_867_352_570_162
        );
    }

    #[test]
    fn pick_follows_weights_at_the_edges() {
        assert_eq!(pick(0, &[1, 1]), Some(0));
        assert_eq!(pick(u64::MAX, &[1, 1]), Some(1));
        assert_eq!(pick(u64::MAX / 2, &[1, 1]), Some(0));
        assert_eq!(pick(u64::MAX / 2 + 1, &[1, 1]), Some(1));
        assert_eq!(pick(5, &[0, 0]), None);
        assert_eq!(pick(0, &[0, 3]), Some(1));
        assert_eq!(pick(u64::MAX, &[3, 0]), Some(0));
    }

    #[test]
    fn within_takes_the_share() {
        assert!(within(0, 5, 100));
        assert!(!within(u64::MAX, 5, 100));
        assert!(!within(0, 0, 100));
        assert!(within(u64::MAX, 100, 100));
        let n = (0..100_000u64)
            .filter(|&id| within(point("c", Purpose::Holdout, id), 5, 100))
            .count();
        // 5 % of 100,000 is 5,000; σ ≈ 69, so ±5σ is ±345.
        assert!((4_655..=5_345).contains(&n), "{n}");
    }
}
