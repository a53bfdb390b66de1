//! Sans-IO paid forwarding (issue 8; seeds 000, 002, 003; `payments.md` §4): the market a relay
//! or exit ("server") and its client run beside the IP tunnel. No sockets, clocks or ledgers
//! here: times are Unix seconds passed in, messages come in as bytes and go out through
//! [`server::Server::poll_transmit`] / [`client::Client::poll_transmit`], ledger lookups and
//! voucher signatures go through the [`VoucherVerifier`] and [`VoucherSigner`] traits, which the
//! daemon implements with `ferry-pay`.
//!
//! # The scheme
//! * **Contracts** ([`server`], [`client`]; seed 003): the server proposes price per KiB, data
//!   limit, expiry, destination prefix and settlement terms on the client's first packet toward
//!   a new destination ([`msg::Proposal`]); the client accepts at or under its maximum price, or
//!   rejects with a counter price, which the server must answer with a new proposal or a decline;
//!   at most [`MAX_ROUNDS`] rounds. Every contract message is signed with the node's Ed25519 key
//!   ([`identity`]) and travels inside the authenticated session.
//! * **Metering** ([`due`]): IP-packet bytes per (peer, contract), both directions, counted
//!   once on each side: the server when it forwards a packet either way (never for a packet it
//!   gated), the client when it hands one to the link or receives a reply
//!   ([`client::Client::on_received`]). `due(bytes) = ⌈bytes × price_per_kib / 1024⌉` over the cumulative count,
//!   so no per-packet rounding accumulates, and lengths are full 16-bit-and-wider integers (ngp
//!   counted `tot_len >> 8`).
//! * **Credit (grace)**: the server forwards a packet only while the peer's unpaid amount plus
//!   the packet's cost stays within its credit line: `grace_kib × price` for a peer with a
//!   channel, bounded by the channel's deposit; a peer without one draws on a one-time
//!   per-identity allowance *and* a global token bucket shared by all such peers, so Sybil
//!   identities share one budget. The credit state is per peer, across all its contracts, and
//!   survives restarts ([`server::Server::snapshot`]).
//! * **Vouchers**: the client pays with cumulative vouchers over the pair's channel for the
//!   bytes it sent, capped at what the destination confirmed in signed [`msg::Receipt`]s plus
//!   an in-flight allowance (so a relay that forwards nothing earns nothing), and for the reply
//!   bytes it received (it is their destination). Replies lost on the way are metered by the
//!   server and not paid: the credit line absorbs them.
//! * **Relays** ([`chain`]): on a multi-hop circuit each hop is a client of its next hop and a
//!   server to its previous hop for the circuit's cells; a relay confirms the bytes it received
//!   upstream only as far as its next hop's receipts confirm what it forwarded there
//!   ([`chain::ReceiptChain`]), so a relay that forwards nothing earns nothing.
//! * **Priority** ([`priority`]): paid before grace before free traffic under congestion.

#![forbid(unsafe_code)]

pub mod chain;
pub mod client;
pub mod identity;
pub mod msg;
pub mod priority;
pub mod server;

pub use identity::{NodeSigner, SigKey};
pub use msg::{Envelope, MARKET_PACKET_ID, Message, Prefix};

/// Negotiation rounds before a decline (a proposal, a rejection, a new proposal, …).
pub const MAX_ROUNDS: u8 = 3;
/// Most contracts kept per peer (older ended ones are dropped first).
pub const MAX_CONTRACTS_PER_PEER: usize = 16;
/// Most peers a server or client keeps market state for.
pub const MAX_PEERS: usize = 4096;

/// A peer: its long-term (Tox) public key, 32 bytes.
pub type PeerId = [u8; 32];

/// What costs `bytes` of IP packets at `price_per_kib` base units per KiB:
/// `⌈bytes × price_per_kib / 1024⌉`, saturating at `u128::MAX`.
pub fn due(bytes: u64, price_per_kib: u128) -> u128 {
    let b = u128::from(bytes);
    match b.checked_mul(price_per_kib) {
        Some(p) => p.div_ceil(1024),
        // Only for prices above 2^64 base units per KiB: no real price, so saturate.
        None => u128::MAX,
    }
}

/// The price of the last `len` bytes after `before` bytes: `due(before + len) − due(before)`
/// (what one packet adds, with no rounding drift).
pub fn marginal_due(before: u64, len: u64, price_per_kib: u128) -> u128 {
    due(before.saturating_add(len), price_per_kib).saturating_sub(due(before, price_per_kib))
}

/// Why a market message or call was refused. Nothing is changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarketError {
    /// The bytes do not parse.
    #[error("malformed market message: {0}")]
    Wire(#[from] ferry_wire::WireError),
    /// A signature does not verify, or a signed message came without one.
    #[error("bad signature")]
    BadSignature,
    /// A signed message came before the peer's [`msg::Binding`].
    #[error("no binding from this peer yet")]
    NoBinding,
    /// The message names a contract this side does not know.
    #[error("unknown contract")]
    UnknownContract,
    /// The message does not fit the contract's state (wrong round, already ended, …).
    #[error("unexpected {0} in this state")]
    Unexpected(&'static str),
    /// The proposal or binding has expired.
    #[error("expired")]
    Expired,
    /// A voucher was refused (why).
    #[error("voucher refused: {0}")]
    Voucher(String),
    /// A table is full ([`MAX_PEERS`], [`MAX_CONTRACTS_PER_PEER`]).
    #[error("too many {0}")]
    Full(&'static str),
}

/// Checks a voucher against the ledger's rules: the signature recovers to `payer`, the
/// channel's sender (the daemon implements it with `ferry-pay`'s `Voucher::signer`).
pub trait VoucherVerifier {
    /// Whether `signature` over (`channel`, `cumulative`) was made by `payer`.
    ///
    /// # Errors
    /// Why not, as text.
    fn verify(
        &self,
        channel: &msg::ChannelId,
        cumulative: u128,
        signature: &[u8; 65],
        payer: &msg::Address,
    ) -> Result<(), String>;
}

/// Signs vouchers with the client's secp256k1 account key (`ferry-pay`'s `Voucher::sign`).
pub trait VoucherSigner {
    /// The 65-byte signature over (`channel`, `cumulative`).
    fn sign(&self, channel: &msg::ChannelId, cumulative: u128) -> [u8; 65];
}

/// What the ledger says about a channel (filled in by the daemon after
/// [`server::ServerEvent::CheckChannel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChannelInfo {
    /// The channel id.
    pub id: msg::ChannelId,
    /// Payer account.
    pub sender: msg::Address,
    /// Payee account.
    pub receiver: msg::Address,
    /// Escrowed amount, base units.
    pub deposit: u128,
    /// Already paid out to the receiver, base units.
    pub claimed: u128,
    /// Unix time (s) after which the sender may take the rest back.
    pub expiry: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn due_rounds_up_once_over_the_cumulative_count() {
        assert_eq!(due(0, 1000), 0);
        assert_eq!(due(1, 1000), 1); // 1000/1024 rounds up
        assert_eq!(due(1024, 1000), 1000);
        assert_eq!(due(1500, 1024), 1500);
        // 300-byte packets (ngp's `tot_len >> 8` counted 1 for each): exact.
        let total: u64 = (0..1000).map(|_| 300u64).sum();
        assert_eq!(due(total, 2048), 600_000);
        assert_eq!(due(u64::MAX, u128::MAX), u128::MAX);
    }

    proptest! {
        #[test]
        fn marginal_dues_sum_to_the_total(lens in proptest::collection::vec(1u64..70_000, 1..200), price in 0u128..1_000_000_000_000) {
            let mut before = 0u64;
            let mut sum = 0u128;
            for l in lens {
                sum += marginal_due(before, l, price);
                before += l;
            }
            prop_assert_eq!(sum, due(before, price));
        }
    }
}
