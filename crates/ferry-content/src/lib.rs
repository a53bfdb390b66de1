//! Content addressing and verified transfer (issue 10 item 1; `data-layer.md` §1.3, §3.4), sans-IO.
//!
//! * [`ContentId`]: a 32-byte BLAKE3 root. A *blob* is any byte string; its id is its BLAKE3
//!   hash (the bao tree root, which does not depend on the chunk-group size).
//! * [`manifest`]: what `ferry publish` names: a [`manifest::Manifest`] blob
//!   `{version, name, total_len, entries [(path, blob id, len)]}` (iroh HashSeq-like) for a
//!   file or a directory; the *content id* is the manifest blob's id.
//! * [`blob`]: bao outboards with 16 KiB chunk groups ([`GROUP_SIZE`],
//!   `BlockSize::from_chunk_log(4)`, as iroh), encoding and verifying range responses, all
//!   through the `bao-tree` crate (no hashing is written here).
//! * [`wire`]: the request/response packets (lossless custom packets [`wire::REQUEST_PACKET_ID`]
//!   = 188 and [`wire::DATA_PACKET_ID`] = 189 over net_crypto).
//! * [`fetch`]: the multi-provider fetch scheduler: one 16 KiB group per request, pipelined
//!   per provider, reassigned from slow providers, and a provider whose group fails
//!   verification is dropped at once (so a bad provider costs at most one 16 KiB group per
//!   request in flight and never corrupts the output).
//!
//! * [`credit`]: credits (item 6): the local, receipt-backed account of what each peer
//!   contributed, and the serving order of a busy node (more credit, served first).
//!
//! Nothing here does I/O: `now` is passed in; bytes come in and requests/events go out.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod blob;
pub mod credit;
pub mod fetch;
pub mod manifest;
pub mod wire;

use std::fmt;

/// log2 of the chunk-group size in 1 KiB BLAKE3 chunks: 4 (16 KiB groups, iroh's
/// `IROH_BLOCK_SIZE`).
pub const GROUP_CHUNK_LOG: u8 = 4;
/// Chunk-group size, bytes: 16384. The unit of verification, request and reassignment.
pub const GROUP_SIZE: u64 = 1024 << GROUP_CHUNK_LOG;

/// A blob's or a manifest's id: its 32-byte BLAKE3 hash (bao root).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// The id of `bytes` (BLAKE3).
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits (surrounding whitespace ignored); `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// As a `blake3::Hash`.
    pub fn hash(&self) -> blake3::Hash {
        blake3::Hash::from(self.0)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({})", self.to_hex())
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Number of 16 KiB groups in a blob of `len` bytes (at least 1: an empty blob has one empty
/// group).
pub fn group_count(len: u64) -> u64 {
    len.div_ceil(GROUP_SIZE).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ContentId::of(b"abc");
        assert_eq!(ContentId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ContentId::from_hex("zz"), None);
        assert_eq!(ContentId::from_hex(&"é".repeat(32)), None);
        assert_eq!(group_count(0), 1);
        assert_eq!(group_count(16384), 1);
        assert_eq!(group_count(16385), 2);
    }
}
