//! ferry's on-wire formats: parse and emit, exact lengths, never a panic.
//!
//! This crate holds the Tox DHT layer (`tox-protocol.md` §1–§3, c-toxcore 0.2.18): the
//! [packed node](node::PackedNode), the encrypted [DHT envelope](dht::DhtEnvelope) and its
//! plaintext payloads (ping, nodes request, nodes response), the routed
//! [DHT request](dht::DhtRequest) `0x20`, [LAN discovery](dht::LanDiscovery) `0x21` and
//! [bootstrap info](dht::BootstrapInfo) `0xf0`; the [net_crypto](net_crypto) packets
//! `0x18`–`0x1b` (§5); the [onion](onion) (`0x80`–`0x8e`, §4); friend_connection and
//! [messenger](messenger) packets (§7); the [TCP relay](relay) handshakes, frames and payloads
//! (§6). Later layers (ferry's extensions) add modules
//! here.
//!
//! Every decoder takes untrusted bytes and returns a [`WireError`] on anything malformed; each has
//! a proptest round trip and a cargo-fuzz target (`fuzz/`).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dht;
pub mod messenger;
pub mod net_crypto;
pub mod node;
pub mod onion;
mod reader;
pub mod relay;
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
    /// Onion request, client → first relay ("send initial").
    pub const ONION_REQUEST_0: u8 = 0x80;
    /// Onion request, first → second relay.
    pub const ONION_REQUEST_1: u8 = 0x81;
    /// Onion request, second → third relay.
    pub const ONION_REQUEST_2: u8 = 0x82;
    /// Onion announce request (`NET_PACKET_ANNOUNCE_REQUEST_OLD`).
    pub const ANNOUNCE_REQUEST: u8 = 0x83;
    /// Onion announce response (`NET_PACKET_ANNOUNCE_RESPONSE_OLD`).
    pub const ANNOUNCE_RESPONSE: u8 = 0x84;
    /// Onion data request (to the node storing the destination's announce).
    pub const DATA_REQUEST: u8 = 0x85;
    /// Onion data response (down the destination's return path).
    pub const DATA_RESPONSE: u8 = 0x86;
    /// Onion response, destination → third relay ("recv 3").
    pub const ONION_RESPONSE_3: u8 = 0x8c;
    /// Onion response, third → second relay ("recv 2").
    pub const ONION_RESPONSE_2: u8 = 0x8d;
    /// Onion response, second → first relay ("recv 1").
    pub const ONION_RESPONSE_1: u8 = 0x8e;
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
