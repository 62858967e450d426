//! A/B variants and the holdout of one campaign: who gets which `message.variants` entry and who
//! is held out (`holdout:`), and why — for `plan`, `preview --recipient` and the run.
//!
//! Owns: [`Assigner`], built once per campaign from its validated spec, and [`Assignment`], one
//! recipient's outcome with the reason people are shown. The draws start from [`crate::assign`]'s
//! one hash: the holdout is `within(point(campaign, Holdout, id), basis points, 10,000)`; the
//! variant is a weighted rendezvous draw ([`rendezvous`]) over `point(campaign, Variant, id)` —
//! each variant scores `-log2(u) / weight` with `u` a hash of that point and the variant's name,
//! and the lowest score wins, which gives variant `i` the share `wᵢ / Σw`. The two draws are
//! independent, so the holdout takes the same share of every variant and changing it moves nobody
//! between variants.
//!
//! Why rendezvous and not `assign::pick` (cumulative ranges): with ranges, switching variant `b`
//! of `a, b, c, d` off shifts `c`'s range and moves some of `c`'s people to `d`. With rendezvous a
//! variant's score does not depend on the others, so setting a weight to 0 (or adding a variant)
//! moves only the people who leave (or join) that variant, and reordering the list moves nobody
//! (the score is keyed by name). The log is a hand-written fixed-point `log2` on integers (no
//! floats: the same bits on every platform and Rust release; a float `ln` is not promised that).
//!
//! Invariants: an assignment depends only on (campaign name, the variants' names and weights, the
//! holdout share, recipient id) — never on CSV order, run or resume; a variant with weight 0 is
//! assigned nobody and leaves everyone else where they were; without variants and holdout every
//! recipient is [`Assignment::Send`] with no variant (and no hash is computed: plain campaigns
//! pay nothing). Must not: read files, the journal or the clock; change the score (that would
//! move people between variants of a running campaign).

use sha2::{Digest, Sha256};

use crate::assign::{point, within, Purpose};
use crate::spec::{Campaign, Holdout};

/// What a recipient gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Not sent: in the holdout.
    Holdout,
    /// Sent; `Some(i)` = `message.variants[i]`, `None` = the campaign has no variants.
    Send(Option<usize>),
}

/// The assignment rules of one campaign.
#[derive(Debug, Clone)]
pub struct Assigner {
    campaign: String,
    names: Vec<String>,
    weights: Vec<u64>,
    holdout: Option<Holdout>,
}

impl Assigner {
    pub fn new(c: &Campaign) -> Assigner {
        Assigner {
            campaign: c.name.clone(),
            names: c.message.variants.iter().map(|v| v.name.clone()).collect(),
            weights: c.message.variants.iter().map(|v| v.weight).collect(),
            holdout: c.holdout.filter(|h| h.basis_points > 0),
        }
    }

    /// True when the campaign has neither variants nor a holdout (everyone: `Send(None)`).
    pub fn is_trivial(&self) -> bool {
        self.names.is_empty() && self.holdout.is_none()
    }

    /// The variants' names, in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of variant `i`.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i).map(String::as_str)
    }

    /// `id`'s assignment.
    pub fn assign(&self, id: u64) -> Assignment {
        if let Some(h) = self.holdout {
            if within(
                point(&self.campaign, Purpose::Holdout, id),
                h.basis_points,
                10_000,
            ) {
                return Assignment::Holdout;
            }
        }
        if self.names.is_empty() {
            return Assignment::Send(None);
        }
        Assignment::Send(rendezvous(
            point(&self.campaign, Purpose::Variant, id),
            &self.names,
            &self.weights,
        ))
    }

    /// Why `id` is assigned as it is, in words for `preview --recipient`.
    pub fn explain(&self, id: u64) -> String {
        let total: u128 = self.weights.iter().map(|&w| u128::from(w)).sum();
        match self.assign(id) {
            Assignment::Holdout => format!(
                "in the holdout ({} of the valid audience, by a stable hash of campaign `{}` and id {id}): not sent",
                self.holdout.map(|h| h.to_string()).unwrap_or_default(),
                self.campaign
            ),
            Assignment::Send(None) => format!(
                "the campaign's one message (no variants{})",
                self.holdout
                    .map(|h| format!("; outside the {h} holdout"))
                    .unwrap_or_default()
            ),
            Assignment::Send(Some(i)) => {
                let w = self.weights.get(i).copied().unwrap_or(0);
                let held = self
                    .holdout
                    .map(|h| format!(", outside the {h} holdout"))
                    .unwrap_or_default();
                format!(
                    "variant `{}` (weight {w} of {total}, by a stable hash of campaign `{}` and id {id}{held})",
                    self.name(i).unwrap_or(""),
                    self.campaign
                )
            }
        }
    }
}

/// The variant `base` (a recipient's variant point) goes to: each variant with a weight above 0
/// scores `-log2(uᵢ) / wᵢ`, `uᵢ` uniform in (0, 1] from [`name_point`]; the lowest score wins
/// (ties: the first in the list). `None` when every weight is 0.
pub fn rendezvous(base: u64, names: &[String], weights: &[u64]) -> Option<usize> {
    let mut best: Option<(usize, u128, u64)> = None;
    for (i, (name, &w)) in names.iter().zip(weights).enumerate() {
        if w == 0 {
            continue;
        }
        let l = neg_log2(name_point(base, name));
        // l / w < lb / wb  ⟺  l · wb < lb · w  (l ≤ 2^38, w < 2^64: no overflow in u128).
        let better = match best {
            None => true,
            Some((_, lb, wb)) => l * u128::from(wb) < lb * u128::from(w),
        };
        if better {
            best = Some((i, l, w));
        }
    }
    best.map(|(i, _, _)| i)
}

/// The recipient's point for the variant `name`: SHA-256 of the variant point and the name.
fn name_point(base: u64, name: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(base.to_be_bytes());
    h.update([0u8]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Fraction bits of [`neg_log2`].
const FRAC_BITS: u32 = 32;

/// `-log2(u)` in fixed point (32 fraction bits) for `u = (p + 1) / 2^64` in (0, 1]: 0 for
/// `p = u64::MAX`, 64 · 2^32 for `p = 0`. Integer only: the integer part from the leading zeros,
/// the fraction bit by bit by squaring the mantissa (truncated, not rounded).
fn neg_log2(p: u64) -> u128 {
    let x = u128::from(p) + 1; // 1 ..= 2^64
    let int = 127 - x.leading_zeros(); // floor(log2 x), 0 ..= 64
                                       // The mantissa x / 2^int in [1, 2), as Q1.63.
    let mut m: u128 = if int >= 63 {
        x >> (int - 63)
    } else {
        x << (63 - int)
    };
    let two: u128 = 1 << 64;
    let mut frac: u128 = 0;
    for _ in 0..FRAC_BITS {
        m = (m * m) >> 63; // in [1, 4) as Q2.63
        frac <<= 1;
        if m >= two {
            m >>= 1;
            frac |= 1;
        }
    }
    let log2_x = (u128::from(int) << FRAC_BITS) | frac;
    (64u128 << FRAC_BITS) - log2_x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neg_log2_is_exact_on_powers_of_two_and_close_elsewhere() {
        let one = 1u128 << FRAC_BITS;
        assert_eq!(neg_log2(u64::MAX), 0);
        assert_eq!(neg_log2((1u64 << 63) - 1), one); // u = 1/2
        assert_eq!(neg_log2((1u64 << 62) - 1), 2 * one); // u = 1/4
        assert_eq!(neg_log2(0), 64 * one); // u = 2^-64
                                           // u = 3/4: -log2(0.75) = 0.41503749927884376
        let got = neg_log2(3 * (1u64 << 62) - 1) as f64 / one as f64;
        assert!((got - 0.415_037_499_278_843_76).abs() < 1e-8, "{got}");
    }

    #[test]
    fn the_score_is_fixed() {
        // Changing the score would move people between variants of a running campaign.
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let got: Vec<usize> = (0..16u64)
            .filter_map(|p| rendezvous(p.wrapping_mul(0x9E37_79B9_7F4A_7C15), &names, &[5, 3, 2]))
            .collect();
        assert_eq!(got, FIXED);
        assert_eq!(rendezvous(7, &names, &[0, 0, 0]), None);
        assert_eq!(rendezvous(7, &names, &[0, 4, 0]), Some(1));
    }

    const FIXED: [usize; 16] = [2, 0, 2, 0, 2, 2, 2, 0, 1, 2, 0, 0, 2, 1, 2, 0];

    #[test]
    fn switching_any_variant_off_moves_only_its_people() {
        let names: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let w = [50, 30, 10, 10];
        for off in 0..4 {
            let mut w2 = w;
            w2[off] = 0;
            for p in 0..20_000u64 {
                let base = p.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let before = rendezvous(base, &names, &w);
                let after = rendezvous(base, &names, &w2);
                if before == Some(off) {
                    assert_ne!(after, Some(off));
                } else {
                    assert_eq!(before, after, "point {base}, variant {off} off");
                }
            }
        }
    }
}
