//! ferry's on-wire formats: parse and emit, exact lengths, never a panic.
//!
//! This crate holds the Tox DHT layer (`tox-protocol.md` §1–§3, c-toxcore 0.2.18): the
//! [packed node](node::PackedNode), the encrypted [DHT envelope](dht::DhtEnvelope) and its
//! plaintext payloads (ping, nodes request, nodes response), the routed
//! [DHT request](dht::DhtRequest) `0x20`, [LAN discovery](dht::LanDiscovery) `0x21` and
//! [bootstrap info](dht::BootstrapInfo) `0xf0`, and the [`net_crypto`] packets
//! `0x18`–`0x1b` (§5). Later layers (onion, TCP relay,
//! messenger, ferry's extensions) add modules here.
//!
//! Every decoder takes untrusted bytes and returns a [`WireError`] on anything malformed; each has
//! a proptest round trip and a cargo-fuzz target (`fuzz/`).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dht;
pub mod net_crypto;
pub mod node;
mod reader;
pub mod toxid;

pub use reader::Reader;

/// Largest UDP packet c-toxcore accepts (`MAX_UDP_PACKET_SIZE`), in bytes.
pub const MAX_UDP_PACKET_SIZE: usize = 2048;

/// Top-level packet kinds: the first byte of every UDP datagram (`toxcore/network.h`
/// `Net_Packet_Type`, `tox-protocol.md` §2).
pub mod kind {
    /// DHT ping request.
    pub const PING_REQUEST: u8 = 0x00;
    /// DHT ping response.
    pub const PING_RESPONSE: u8 = 0x01;
    /// DHT nodes request ("get nodes").
    pub const NODES_REQUEST: u8 = 0x02;
    /// DHT nodes response ("send nodes", IPv6-capable).
    pub const NODES_RESPONSE: u8 = 0x04;
    /// net_crypto cookie request.
    pub const COOKIE_REQUEST: u8 = 0x18;
    /// net_crypto cookie response.
    pub const COOKIE_RESPONSE: u8 = 0x19;
    /// net_crypto handshake.
    pub const CRYPTO_HANDSHAKE: u8 = 0x1a;
    /// net_crypto data.
    pub const CRYPTO_DATA: u8 = 0x1b;
    /// DHT request routed through one DHT node (NAT ping, DHT-PK).
    pub const DHT_REQUEST: u8 = 0x20;
    /// LAN discovery.
    pub const LAN_DISCOVERY: u8 = 0x21;
    /// Bootstrap info (MOTD) request and response.
    pub const BOOTSTRAP_INFO: u8 = 0xf0;
}

/// Why bytes did not parse. Errors caused by remote input are counted and dropped by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ended before the field named here.
    #[error("packet truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes were left over after the last field.
    #[error("{0} trailing bytes after the packet")]
    Trailing(usize),
    /// The packet's total length is outside what its kind allows.
    #[error("bad length {len} for {what}")]
    BadLength {
        /// Which packet or field.
        what: &'static str,
        /// The length seen, in bytes.
        len: usize,
    },
    /// A field holds a value the protocol does not define.
    #[error("invalid {what}: {value}")]
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// The value seen.
        value: u64,
    },
    /// The first byte names a packet kind this decoder does not handle.
    #[error("unknown packet kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The encrypted part did not authenticate.
    #[error("decryption failed")]
    Decrypt,
}

impl From<ferry_crypto::CryptoError> for WireError {
    fn from(_: ferry_crypto::CryptoError) -> Self {
        Self::Decrypt
    }
}
