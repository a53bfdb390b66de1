//! ferry's sans-IO protocol core.
//!
//! State machines here take `now`, bytes and injected randomness in, and hand packets, timers and
//! events out. They never touch a socket, a clock or the OS RNG (enforced by clippy's
//! `disallowed-methods` in this crate's `clippy.toml`). The one I/O layer (`ferry-net`) and the
//! deterministic simulator drive them through the same [`Endpoint`] contract.
//!
//! # Run-loop contract (architecture.md house rule 2, after str0m and quinn-proto)
//!
//! 1. Feed input: [`Endpoint::handle_datagram`] for every received datagram,
//!    [`Endpoint::handle_timeout`] once `now >= poll_timeout()`, and any command (e.g.
//!    [`dht::Dht::bootstrap`]).
//! 2. After *any* of these calls, drain [`Endpoint::poll_transmit`] until it returns `None` and
//!    send each [`Transmit`]; drain the machine's events likewise.
//! 3. Sleep until [`Endpoint::poll_timeout`] or the next datagram, whichever comes first.
//!
//! Layers present, all c-toxcore 0.2.18 compatible: [`dht`] (Tox DHT), [`onion`] (onion relay,
//! announce store and client), [`net_crypto`] (encrypted friend sessions) and [`node`] (all of
//! them glued by friend_connection and messenger: the unit the driver and the simulator run), and
//! the TCP relay client: [`tcp_client`] (one relay stream) and [`tcp_connection`] (the node's set
//! of relays; the driver opens, writes and closes streams on its [`tcp_connection::TcpCommand`]s,
//! drained after the transmits).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::net::SocketAddr;
use std::time::Instant;

pub mod dataplane;
pub mod dht;
pub mod net_crypto;
pub mod node;
pub mod onion;
mod ping_array;
pub mod tcp_client;
pub mod tcp_connection;

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One UDP address.
    Addr(SocketAddr),
    /// LAN discovery: every broadcast address of the host's interfaces, `255.255.255.255` and
    /// `ff02::1`, at this UDP port. The driver expands it (the state machine knows no interfaces).
    LanBroadcast {
        /// Destination port.
        port: u16,
    },
}

/// One datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: Destination,
    /// The whole datagram, first byte = packet kind.
    pub payload: Vec<u8>,
}

/// The sans-IO contract every ferry protocol state machine implements, and the unit the
/// driver (`ferry-net`) and the simulator drive (see the crate docs for the run loop).
pub trait Endpoint {
    /// Feeds one received datagram. `from` is the sender's address (IPv4-mapped addresses are
    /// treated as IPv4). Malformed input is counted and dropped; this never fails or panics.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);

    /// Runs timers due at `now`. Call when `now >= poll_timeout()`; calling earlier is harmless.
    fn handle_timeout(&mut self, now: Instant);

    /// The next datagram to send, if any. Drain until `None` after every input.
    fn poll_transmit(&mut self) -> Option<Transmit>;

    /// When [`Endpoint::handle_timeout`] must next be called.
    fn poll_timeout(&self) -> Instant;
}
