//! The library behind the `ferry` binary's long-running commands: the profile on disk
//! ([`profile`]), the embedded bootstrap list ([`bootstrap`]), `ferry up` ([`up`]) and
//! `ferry devnet` ([`devnet`]).
//!
//! `anyhow` is used here (and in ferry-cli) only; the protocol crates have typed errors.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bootstrap;
pub mod channel;
pub mod chat;
pub mod circuit;
pub mod content;
pub mod data;
pub mod devnet;
pub mod exit;
pub mod files;
pub mod gateway;
pub mod market;
pub mod profile;
pub mod replica;
pub mod stream;
pub mod tap;
pub mod toxfile;
pub mod tunnel;
pub mod tunnel_io;
pub mod up;

/// ferry's version, as reported by the control API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
