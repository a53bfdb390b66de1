//! ferry's deterministic network simulator (issue 3).
//!
//! Because ferry's protocol crates are sans-IO, the very state machines that run on the wire run
//! here by the thousand in one process, on a virtual clock: [`net::Network`] is generic over any
//! [`ferry_proto::Endpoint`], so later layers (onion, net_crypto, relays, tunnel, payments) plug
//! in by implementing that trait for their node type; [`dht`] holds the DHT scenarios.
//!
//! Same seed, same run, bit for bit. A failing test prints its seed; `ferry sim dht --seed S`
//! replays it.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dht;
pub mod net;
pub mod replicate;
pub mod store;
pub mod stream;
