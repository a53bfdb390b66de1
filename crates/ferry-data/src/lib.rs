//! ferry's data layer on the DHT (issue 9; `data-layer.md` §3.1–§3.3), sans-IO.
//!
//! * [`item`]: the stored item classes and their BEP 44 rules (immutable, mutable, claimed, mail).
//! * [`wire`]: the value-store packets 0xe0–0xe4 (encrypted like DHT requests).
//! * [`store`]: what a node holds for others: quotas, write tokens, expiry, snapshot/restore.
//! * [`lookup`]: the Kademlia iterative get/put driver over capable nodes (k = 8, α = 3).
//! * [`name`]: usernames (record hides the name; first claim wins; proof of work).
//! * [`mailbox`]: offline messages (mailbox addresses, sealed envelopes, per-sender order).
//!
//! Nothing here does I/O: `now` is passed in, randomness comes from an injected
//! [`ferry_crypto::rng::FerryRng`]. A host (the DHT node, the simulator) routes datagrams whose
//! first byte is 0xe0–0xe4 ([`wire::StoreEnvelope::is_store_kind`]) here.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod item;
pub mod lookup;
pub mod mailbox;
pub mod name;
pub mod store;
pub mod wire;
