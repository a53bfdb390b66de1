//! ferry's swarm layer (issue 10 items 2 and 5; `data-layer.md` §3.5, §3.7, §4 items 9 and 11).
//!
//! Two sans-IO state machines, each a [`ferry_proto::Endpoint`] (datagrams and `now: Instant`
//! in; transmits, a timer and events out; randomness from an injected
//! [`ferry_crypto::rng::FerryRng`]):
//!
//! * [`replica::ReplicaManager`]: pinned content keeps `r0 = 3` (+1 spare) pins that check each
//!   other and repair when holders leave; extra replicas follow demand
//!   (`r(t) = max(3, ceil(downloads_last_h / 20))`, ≤ 64) and fall away by TTL; disk quotas.
//! * [`stream::StreamNode`]: a live stream cut into ~1 s segments, each signed by the streamer
//!   (Ed25519 over stream id, seq, BLAKE3(segment), timestamp) so any peer may relay it; a push
//!   tree of two stripes (each viewer has 2 parents) chosen by measured RTT and spare upload, plus
//!   pull repair of gaps; tampered segments are rejected; start-up delay and stalls are measured.
//!
//! [`wire`] holds the message encodings. `ferry-sim` runs both at scale (`ferry sim replicate`,
//! `ferry sim stream`).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod replica;
pub mod stream;
pub mod wire;
