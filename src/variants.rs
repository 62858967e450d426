//! A/B variants and the holdout of one campaign: who gets which `message.variants` entry and who
//! is held out (`holdout:`), and why — for `plan`, `preview --recipient` and the run.
//!
//! Owns: [`Assigner`], built once per campaign from its validated spec, and [`Assignment`], one
//! recipient's outcome with the reason people are shown. The draws are [`crate::assign`]'s: the
//! holdout is `within(point(campaign, Holdout, id), basis points, 10,000)` and the variant is
//! `pick(point(campaign, Variant, id), weights)`, two independent draws, so the holdout takes the
//! same share of every variant and changing it moves nobody between variants.
//!
//! Invariants: an assignment depends only on (campaign name, the weights in file order, the
//! holdout share, recipient id) — never on CSV order, run or resume; a variant with weight 0 is
//! assigned nobody and leaves everyone else where they were; without variants and holdout every
//! recipient is [`Assignment::Send`] with no variant (and no hash is computed: plain campaigns
//! pay nothing). Must not: read files, the journal or the clock.

use crate::assign::{pick, point, within, Purpose};
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
        Assignment::Send(pick(
            point(&self.campaign, Purpose::Variant, id),
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
