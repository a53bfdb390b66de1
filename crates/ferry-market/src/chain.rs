//! Chained delivery receipts for circuit relays (issue 8, `payments.md` §4.4 "a multi-hop relay
//! applies the same rule to its own downstream"): a relay confirms the bytes it received from a
//! previous hop only as far as its next hop confirmed the bytes it forwarded there.
//!
//! Each hop of a circuit is paid by its previous hop for the data cells it carries, and a payer
//! pays for the bytes it *sent* only up to what the payee's receipts confirm. The end of a
//! circuit confirms what it received (it is the cells' destination). A relay in between does
//! not confirm on receipt: it records which previous hop each forwarded byte came from
//! ([`ReceiptChain::on_forwarded`]) and, when its next hop's cumulative receipt grows
//! ([`ReceiptChain::on_confirmed`]), passes the confirmed share back to each previous hop in
//! proportion to the bytes it forwarded for it: `credit(prev) = ⌊forwarded(prev) ×
//! min(confirmed, forwarded) / forwarded⌋` over the link's cumulative counts. By induction a
//! relay that forwards nothing (or whose next hop confirms nothing) confirms nothing, and is paid
//! nothing for the bytes it was sent; losses on a later link are shared by the previous hops
//! in proportion to their traffic.
//!
//! Limits: the next hop's receipts count every byte it metered from this relay, so traffic
//! the relay sends there for itself (its own circuits, or the next hop as its paid exit) raises
//! the ratio (capped at 1); previous hops are then confirmed more than was delivered for them,
//! never more than they sent. Sans-IO; caps: [`MAX_PEERS`] next hops and previous hops per
//! next hop (bytes beyond them are not confirmed).

use std::collections::HashMap;

use crate::{MAX_PEERS, PeerId};

/// Bytes forwarded for one previous hop over one link, and how many were confirmed to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Share {
    forwarded: u64,
    credited: u64,
}

/// One link to a next hop.
#[derive(Debug, Clone, Default)]
struct Link {
    /// Bytes forwarded to the next hop, all previous hops together.
    forwarded: u64,
    /// The next hop's newest cumulative receipt, bytes.
    confirmed: u64,
    prevs: HashMap<PeerId, Share>,
}

/// A relay's bookkeeping of forwarded bytes per (next hop, previous hop) (module docs).
#[derive(Debug, Clone, Default)]
pub struct ReceiptChain {
    links: HashMap<PeerId, Link>,
}

impl ReceiptChain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// `len` bytes received from `prev` were forwarded to `next`. Returns `false` (and counts
    /// nothing) when a table is full ([`MAX_PEERS`]).
    pub fn on_forwarded(&mut self, prev: PeerId, next: PeerId, len: u64) -> bool {
        if !self.links.contains_key(&next) && self.links.len() >= MAX_PEERS {
            return false;
        }
        let link = self.links.entry(next).or_default();
        if !link.prevs.contains_key(&prev) && link.prevs.len() >= MAX_PEERS {
            return false;
        }
        link.forwarded = link.forwarded.saturating_add(len);
        let s = link.prevs.entry(prev).or_default();
        s.forwarded = s.forwarded.saturating_add(len);
        true
    }

    /// `next` confirmed `cumulative` bytes received from this relay (its newest receipt; older
    /// or equal counts change nothing). Returns the bytes newly confirmed to each previous hop,
    /// to be receipted to them (only non-zero entries).
    pub fn on_confirmed(&mut self, next: &PeerId, cumulative: u64) -> Vec<(PeerId, u64)> {
        let Some(link) = self.links.get_mut(next) else {
            return Vec::new();
        };
        link.confirmed = link.confirmed.max(cumulative);
        let total = link.forwarded;
        if total == 0 {
            return Vec::new();
        }
        let ok = u128::from(link.confirmed.min(total));
        let mut out = Vec::new();
        for (p, s) in &mut link.prevs {
            let target = u128::from(s.forwarded) * ok / u128::from(total);
            let target = u64::try_from(target).unwrap_or(s.forwarded);
            if target > s.credited {
                out.push((*p, target - s.credited));
                s.credited = target;
            }
        }
        out
    }

    /// Bytes confirmed so far to `prev` for what was forwarded to `next`.
    pub fn credited(&self, next: &PeerId, prev: &PeerId) -> u64 {
        self.links
            .get(next)
            .and_then(|l| l.prevs.get(prev))
            .map_or(0, |s| s.credited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerId = [1; 32];
    const B: PeerId = [2; 32];
    const N: PeerId = [9; 32];

    #[test]
    fn nothing_confirmed_downstream_confirms_nothing_upstream() {
        let mut c = ReceiptChain::new();
        assert!(c.on_forwarded(A, N, 10_000));
        assert!(c.on_confirmed(&N, 0).is_empty());
        assert!(c.on_confirmed(&[7; 32], 10_000).is_empty(), "another link");
        assert_eq!(c.credited(&N, &A), 0);
    }

    #[test]
    fn confirmations_are_shared_in_proportion_and_never_exceed_what_was_sent() {
        let mut c = ReceiptChain::new();
        c.on_forwarded(A, N, 3000);
        c.on_forwarded(B, N, 1000);
        // Half delivered: each previous hop gets half of its bytes.
        let mut got = c.on_confirmed(&N, 2000);
        got.sort();
        assert_eq!(got, vec![(A, 1500), (B, 500)]);
        // An older receipt changes nothing.
        assert!(c.on_confirmed(&N, 1000).is_empty());
        // More forwarded, all delivered: the rest comes, capped at what each sent.
        c.on_forwarded(A, N, 1000);
        let mut got = c.on_confirmed(&N, 1_000_000);
        got.sort();
        assert_eq!(got, vec![(A, 2500), (B, 500)]);
        assert_eq!((c.credited(&N, &A), c.credited(&N, &B)), (4000, 1000));
        assert!(c.on_confirmed(&N, 5000).is_empty());
    }

    #[test]
    fn tables_are_capped() {
        let mut c = ReceiptChain::new();
        for i in 0..MAX_PEERS {
            let mut p = [0u8; 32];
            p[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert!(c.on_forwarded(p, N, 1));
        }
        assert!(!c.on_forwarded([0xff; 32], N, 1));
        assert_eq!(c.on_confirmed(&N, MAX_PEERS as u64).len(), MAX_PEERS);
    }
}
