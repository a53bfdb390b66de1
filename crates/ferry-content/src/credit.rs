//! Credits (issue 10 item 6; `data-layer.md` §3.8, EDDT "more credit, more priority"): a
//! node's local, pairwise account of what each peer contributed to it, backed by signed
//! receipts, and the order in which a busy node serves the peers that wait on it.
//!
//! * **Contributions to us**: verified content bytes a peer served this node
//!   ([`Ledger::on_received`]; only bytes that passed bao verification count) and bytes of
//!   this node's content it stores ([`Ledger::on_stored`]). `credit(peer)` is their sum: the
//!   peer's standing here. Nothing global: each node keeps its own ledger (Bitswap ledger /
//!   BitTorrent tit-for-tat), so a peer cannot talk its credit up.
//! * **Receipts**: every [`RECEIPT_EVERY`] bytes received from a peer, this node owes it a
//!   [`Receipt`] signed with its Ed25519 node key: "`consumer` got `cumulative` bytes from
//!   `provider`" ([`Ledger::receipt_due`]). The provider keeps the best receipt from each
//!   consumer ([`Ledger::on_receipt`]): transferable proof of what it contributed (what it
//!   earned), checked against the consumer's key.
//! * **Serving order** ([`Ledger::order`]): peers waiting for this node's bandwidth, highest
//!   credit first; every [`OPTIMISTIC_INTERVAL`] a waiting peer without credit (the one that
//!   had it least recently, then the longest waiting) gets the first slot for that interval
//!   (BitTorrent's optimistic unchoke), so a new node can bootstrap.
//! * Caps: [`MAX_PEERS`] accounts; when full, the account with the least credit and the
//!   oldest activity goes.
//!
//! Sans-IO: times are Unix seconds passed in; signing and verification go through closures.

use std::collections::HashMap;

use ferry_wire::{Reader, WireError};

/// A peer: its long-term (Tox) public key, 32 bytes.
pub type PeerId = [u8; 32];

/// A receipt is owed after this many more bytes received from a peer: 1 MiB.
pub const RECEIPT_EVERY: u64 = 1 << 20;
/// How long an optimistic slot lasts: 30 s.
pub const OPTIMISTIC_INTERVAL: u64 = 30;
/// Most accounts kept.
pub const MAX_PEERS: usize = 4096;
/// Lossless custom packet id of a receipt (net_crypto, between the two peers): 190.
pub const RECEIPT_PACKET_ID: u8 = 190;
/// Encoded size of a [`Receipt`] (without the packet id): 32 + 32 + 32 + 8 + 8 + 64 = 176
/// bytes.
pub const RECEIPT_SIZE: usize = 176;
/// Domain of a receipt signature.
pub const RECEIPT_DOMAIN: &[u8] = b"ferry credit receipt v1";

/// "`consumer` received `cumulative` verified bytes from `provider`", signed by the
/// consumer's Ed25519 node key (the key its market bindings announce, derived from its
/// long-term secret; it comes with the receipt over the consumer's authenticated session).
///
/// Layout (integers big-endian): `[provider 32][consumer 32][consumer node key 32]
/// [cumulative u64][unix u64][signature 64]`; the signature covers [`RECEIPT_DOMAIN`] ‖ the
/// first 112 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Who served the bytes.
    pub provider: PeerId,
    /// Who received them (and signed).
    pub consumer: PeerId,
    /// The consumer's Ed25519 node key, which signed.
    pub consumer_key: [u8; 32],
    /// Bytes received so far, cumulative.
    pub cumulative: u64,
    /// When it was signed, Unix s.
    pub unix: u64,
    /// Ed25519 signature by the consumer's node key.
    pub signature: [u8; 64],
}

impl Receipt {
    /// The signed part: the first 112 bytes of the encoding.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(112);
        b.extend_from_slice(&self.provider);
        b.extend_from_slice(&self.consumer);
        b.extend_from_slice(&self.consumer_key);
        b.extend_from_slice(&self.cumulative.to_be_bytes());
        b.extend_from_slice(&self.unix.to_be_bytes());
        b
    }

    /// The 176-byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.signed_bytes();
        b.extend_from_slice(&self.signature);
        b
    }

    /// Parses exactly [`RECEIPT_SIZE`] bytes.
    ///
    /// # Errors
    /// [`WireError`] on a wrong length.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let provider = r.array("receipt provider")?;
        let consumer = r.array("receipt consumer")?;
        let consumer_key = r.array("receipt consumer key")?;
        let cumulative = r.u64_be("receipt cumulative")?;
        let unix = r.u64_be("receipt time")?;
        let signature = r.array("receipt signature")?;
        r.finish()?;
        Ok(Self {
            provider,
            consumer,
            consumer_key,
            cumulative,
            unix,
            signature,
        })
    }
}

/// One peer's account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Verified bytes the peer served us.
    pub received: u64,
    /// Bytes of our content the peer stores (verified).
    pub stored: u64,
    /// Bytes we served the peer.
    pub served: u64,
    /// `received` at the last receipt we signed for the peer.
    pub receipted: u64,
    /// The best receipt the peer signed for what we served it.
    pub best_receipt: Option<Receipt>,
    /// Last activity, Unix s.
    pub last_unix: u64,
    /// Since when the peer has been waiting (for the optimistic slot).
    waiting_since: Option<u64>,
    /// When the peer last had the optimistic slot.
    optimistic_at: Option<u64>,
}

impl Account {
    /// The peer's standing here: bytes it served us plus bytes of ours it stores.
    pub fn credit(&self) -> u64 {
        self.received.saturating_add(self.stored)
    }
}

/// Why a receipt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Not about this node as provider, or not signed by the peer it came from.
    #[error("receipt is not for us from this peer")]
    WrongParties,
    /// The signature does not verify.
    #[error("bad receipt signature")]
    BadSignature,
    /// Not above the best one held.
    #[error("receipt is not newer")]
    Stale,
}

/// The ledger of one node.
#[derive(Debug)]
pub struct Ledger {
    me: PeerId,
    accounts: HashMap<PeerId, Account>,
    /// The optimistic slot: (peer, until Unix s).
    optimistic: Option<(PeerId, u64)>,
}

impl Ledger {
    /// An empty ledger for the node with long-term key `me`.
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            accounts: HashMap::new(),
            optimistic: None,
        }
    }

    /// The account of `peer`, if any.
    pub fn account(&self, peer: &PeerId) -> Option<&Account> {
        self.accounts.get(peer)
    }

    /// Every account.
    pub fn accounts(&self) -> impl Iterator<Item = (&PeerId, &Account)> {
        self.accounts.iter()
    }

    /// `peer`'s credit here (0 for a stranger).
    pub fn credit(&self, peer: &PeerId) -> u64 {
        self.accounts.get(peer).map_or(0, Account::credit)
    }

    fn entry(&mut self, peer: PeerId, now_unix: u64) -> &mut Account {
        if !self.accounts.contains_key(&peer)
            && self.accounts.len() >= MAX_PEERS
            && let Some(victim) = self
                .accounts
                .iter()
                .min_by_key(|(_, a)| (a.credit(), a.last_unix))
                .map(|(k, _)| *k)
        {
            self.accounts.remove(&victim);
        }
        let a = self.accounts.entry(peer).or_default();
        a.last_unix = a.last_unix.max(now_unix);
        a
    }

    /// `bytes` verified bytes arrived from `peer`.
    pub fn on_received(&mut self, peer: PeerId, bytes: u64, now_unix: u64) {
        let a = self.entry(peer, now_unix);
        a.received = a.received.saturating_add(bytes);
    }

    /// We served `peer` `bytes` bytes.
    pub fn on_served(&mut self, peer: PeerId, bytes: u64, now_unix: u64) {
        let a = self.entry(peer, now_unix);
        a.served = a.served.saturating_add(bytes);
    }

    /// `peer` stores `bytes` more bytes of our content (verified by the caller, e.g. a bao
    /// range challenge).
    pub fn on_stored(&mut self, peer: PeerId, bytes: u64, now_unix: u64) {
        let a = self.entry(peer, now_unix);
        a.stored = a.stored.saturating_add(bytes);
    }

    /// The receipt this node owes `peer` now, if [`RECEIPT_EVERY`] more bytes (or `force` and
    /// any) arrived since the last one: unsigned, naming `my_key` as the signing key; the host
    /// signs [`RECEIPT_DOMAIN`] ‖ [`Receipt::signed_bytes`], fills `signature` and sends it.
    pub fn receipt_due(
        &mut self,
        peer: &PeerId,
        my_key: [u8; 32],
        now_unix: u64,
        force: bool,
    ) -> Option<Receipt> {
        let a = self.accounts.get_mut(peer)?;
        let new = a.received.saturating_sub(a.receipted);
        if new == 0 || (!force && new < RECEIPT_EVERY) {
            return None;
        }
        a.receipted = a.received;
        Some(Receipt {
            provider: *peer,
            consumer: self.me,
            consumer_key: my_key,
            cumulative: a.received,
            unix: now_unix,
            signature: [0; 64],
        })
    }

    /// A receipt from `from` for what we served it; `verify(receipt)` checks the signature by
    /// `consumer_key` over [`RECEIPT_DOMAIN`] ‖ [`Receipt::signed_bytes`].
    ///
    /// # Errors
    /// [`ReceiptError`]; nothing changes then.
    pub fn on_receipt(
        &mut self,
        from: PeerId,
        r: Receipt,
        now_unix: u64,
        verify: impl FnOnce(&Receipt) -> bool,
    ) -> Result<(), ReceiptError> {
        if r.provider != self.me || r.consumer != from {
            return Err(ReceiptError::WrongParties);
        }
        if self
            .accounts
            .get(&from)
            .and_then(|a| a.best_receipt.as_ref())
            .is_some_and(|b| b.cumulative >= r.cumulative)
        {
            return Err(ReceiptError::Stale);
        }
        if !verify(&r) {
            return Err(ReceiptError::BadSignature);
        }
        self.entry(from, now_unix).best_receipt = Some(r);
        Ok(())
    }

    /// The order in which to serve the peers in `waiting` at `now_unix`: the optimistic-slot
    /// peer first (while its slot lasts), then by credit, highest first (ties: longest
    /// waiting, then key). A new optimistic slot goes, every [`OPTIMISTIC_INTERVAL`], to the
    /// waiting peer without credit that had it least recently (then the longest waiting).
    pub fn order(&mut self, waiting: &[PeerId], now_unix: u64) -> Vec<PeerId> {
        for p in waiting {
            let a = self.entry(*p, now_unix);
            if a.waiting_since.is_none() {
                a.waiting_since = Some(now_unix);
            }
        }
        for (k, a) in &mut self.accounts {
            if !waiting.contains(k) {
                a.waiting_since = None;
            }
        }
        let slot_over = self
            .optimistic
            .is_none_or(|(p, until)| now_unix >= until || !waiting.contains(&p));
        if slot_over {
            // The newcomer that had it least recently, then the longest waiting.
            self.optimistic = waiting
                .iter()
                .filter(|p| self.credit(p) == 0)
                .min_by_key(|p| {
                    let a = self.accounts.get(*p);
                    (
                        a.and_then(|a| a.optimistic_at),
                        a.and_then(|a| a.waiting_since),
                        **p,
                    )
                })
                .map(|p| (*p, now_unix + OPTIMISTIC_INTERVAL));
            if let Some((p, _)) = self.optimistic
                && let Some(a) = self.accounts.get_mut(&p)
            {
                a.optimistic_at = Some(now_unix);
            }
        }
        let mut out: Vec<PeerId> = waiting.to_vec();
        out.sort_by_key(|p| {
            let a = self.accounts.get(p);
            (
                std::cmp::Reverse(a.map_or(0, Account::credit)),
                a.and_then(|a| a.waiting_since),
                *p,
            )
        });
        out.dedup();
        if let Some((p, _)) = self.optimistic
            && let Some(i) = out.iter().position(|x| *x == p)
        {
            out.remove(i);
            out.insert(0, p);
        }
        out
    }

    /// Serializes the accounts (for the profile): `"FCL1"[count u32]` then per account
    /// `[peer 32][received u64][stored u64][served u64][receipted u64][last u64]
    /// [has receipt u8][receipt 176?]`.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = b"FCL1".to_vec();
        out.extend_from_slice(&(self.accounts.len() as u32).to_be_bytes());
        for (k, a) in &self.accounts {
            out.extend_from_slice(k);
            for v in [a.received, a.stored, a.served, a.receipted, a.last_unix] {
                out.extend_from_slice(&v.to_be_bytes());
            }
            match &a.best_receipt {
                Some(r) => {
                    out.push(1);
                    out.extend_from_slice(&r.encode());
                }
                None => out.push(0),
            }
        }
        out
    }

    /// A ledger from [`Ledger::snapshot`] bytes (at most [`MAX_PEERS`] accounts are read).
    ///
    /// # Errors
    /// [`WireError`] on a bad magic or truncated input.
    pub fn restore(me: PeerId, bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        if &r.array::<4>("ledger magic")? != b"FCL1" {
            return Err(WireError::InvalidValue {
                what: "ledger magic",
                value: 0,
            });
        }
        let n = r.u32_be("ledger count")?;
        let mut l = Self::new(me);
        for _ in 0..n.min(MAX_PEERS as u32) {
            let k: PeerId = r.array("ledger peer")?;
            let mut v = [0u64; 5];
            for x in &mut v {
                *x = r.u64_be("ledger value")?;
            }
            let best_receipt = match r.u8("ledger receipt flag")? {
                0 => None,
                _ => Some(Receipt::decode(
                    &r.array::<RECEIPT_SIZE>("ledger receipt")?,
                )?),
            };
            l.accounts.insert(
                k,
                Account {
                    received: v[0],
                    stored: v[1],
                    served: v[2],
                    receipted: v[3],
                    last_unix: v[4],
                    best_receipt,
                    waiting_since: None,
                    optimistic_at: None,
                },
            );
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: PeerId = [1; 32];

    #[test]
    fn credit_orders_service_and_newcomers_get_an_optimistic_slot() {
        let mut l = Ledger::new(ME);
        let (a, b, c, d) = ([2; 32], [3; 32], [4; 32], [5; 32]);
        l.on_received(a, 10 << 20, 100);
        l.on_received(b, 1 << 20, 100);
        l.on_stored(b, 20 << 20, 100);
        // b (21 MiB) before a (10 MiB); c then d (no credit): c waited first, gets the slot.
        let o = l.order(&[d, a, b], 200);
        assert_eq!(o[0], d, "the only newcomer takes the optimistic slot");
        assert_eq!(&o[1..], &[b, a]);
        let o = l.order(&[c, d, a, b], 201);
        assert_eq!(o, vec![d, b, a, c], "the slot lasts its interval");
        let o = l.order(&[c, d, a, b], 200 + OPTIMISTIC_INTERVAL);
        assert_eq!(o[0], c, "then the next newcomer, longest waiting first");
        assert_eq!(&o[1..3], &[b, a]);
    }

    #[test]
    fn receipts_every_mib_and_only_newer_and_signed_ones_count() {
        let mut consumer = Ledger::new([9; 32]);
        let provider_key = ME;
        consumer.on_received(provider_key, RECEIPT_EVERY - 1, 10);
        assert!(
            consumer
                .receipt_due(&provider_key, [6; 32], 10, false)
                .is_none()
        );
        consumer.on_received(provider_key, 1, 11);
        let mut r = consumer
            .receipt_due(&provider_key, [6; 32], 11, false)
            .expect("due");
        assert_eq!(r.cumulative, RECEIPT_EVERY);
        assert!(
            consumer
                .receipt_due(&provider_key, [6; 32], 12, false)
                .is_none()
        );
        r.signature = [7; 64];
        let mut provider = Ledger::new(ME);
        assert_eq!(
            provider.on_receipt([8; 32], r.clone(), 12, |_| true),
            Err(ReceiptError::WrongParties),
            "came from someone else"
        );
        assert_eq!(
            provider.on_receipt([9; 32], r.clone(), 12, |_| false),
            Err(ReceiptError::BadSignature)
        );
        assert_eq!(
            provider.on_receipt([9; 32], r.clone(), 12, |_| true),
            Ok(())
        );
        assert_eq!(
            provider.on_receipt([9; 32], r.clone(), 13, |_| true),
            Err(ReceiptError::Stale)
        );
        let got = provider.account(&[9; 32]).expect("account");
        assert_eq!(
            got.best_receipt.as_ref().map(|r| r.cumulative),
            Some(RECEIPT_EVERY)
        );
        // Force: whatever is left.
        consumer.on_received(provider_key, 5, 14);
        assert_eq!(
            consumer
                .receipt_due(&provider_key, [6; 32], 14, true)
                .map(|r| r.cumulative),
            Some(RECEIPT_EVERY + 5)
        );
    }

    #[test]
    fn table_is_capped_and_snapshot_round_trips() {
        let mut l = Ledger::new(ME);
        for i in 0..(MAX_PEERS as u32 + 10) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            l.on_received(k, u64::from(i), u64::from(i));
        }
        assert_eq!(l.accounts().count(), MAX_PEERS);
        assert_eq!(l.credit(&[0; 32]), 0, "the least credit went first");
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&(MAX_PEERS as u32 + 9).to_be_bytes());
        let back = Ledger::restore(ME, &l.snapshot()).expect("restore");
        assert_eq!(back.accounts().count(), MAX_PEERS);
        assert_eq!(back.account(&k), l.account(&k));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Receipt::decode(&bytes);
            let _ = Ledger::restore(ME, &bytes);
        }

        #[test]
        fn receipt_round_trip(p in any::<[u8; 32]>(), c in any::<[u8; 32]>(), n: u64, t: u64) {
            let r = Receipt { provider: p, consumer: c, consumer_key: [5; 32], cumulative: n, unix: t, signature: [3; 64] };
            let b = r.encode();
            prop_assert_eq!(b.len(), RECEIPT_SIZE);
            prop_assert_eq!(Receipt::decode(&b).expect("decode"), r);
        }
    }
}
