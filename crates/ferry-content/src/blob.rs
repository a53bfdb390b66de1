//! bao outboards and range responses with 16 KiB chunk groups (`data-layer.md` §3.4), all
//! hashing done by the `bao-tree` crate (`BlockSize::from_chunk_log(4)`, iroh's layout).
//!
//! A *range response* for groups `[start, end)` of a blob of `len` bytes is exactly what
//! `bao_tree::io::sync::encode_ranges` writes for the chunk ranges `[16·start, 16·end)`:
//! the parent hash pairs (64 bytes each) on the way from the root to each group, in pre-order,
//! interleaved with the groups' bytes. Its length is [`response_len`]. The receiver verifies it
//! against the blob id with [`verify_response`]: every group is checked against the root before
//! it is handed out, so a wrong group is rejected after at most 16 KiB of data.
//!
//! Proof overhead per one-group request: one 64-byte pair per tree level above the groups
//! (`⌈log2(groups)⌉`; 16 pairs = 1 KiB for a 1 GiB blob, 6 %); the stored outboard costs
//! 64 bytes per group (0.39 %).

use std::io;

use bao_tree::io::outboard::PostOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, encode_ranges};
use bao_tree::io::{BaoContentItem, Leaf};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

use crate::{ContentId, GROUP_CHUNK_LOG, GROUP_SIZE, group_count};

/// The bao block size used everywhere: 16 KiB groups.
pub fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(GROUP_CHUNK_LOG)
}

/// Chunk ranges for groups `[start, end)`, clamped to the blob.
fn ranges(len: u64, start: u64, end: u64) -> ChunkRanges {
    let chunks = len.div_ceil(1024).max(1);
    let shift = u32::from(GROUP_CHUNK_LOG);
    let s = start.saturating_mul(1 << shift).min(chunks);
    let e = end.saturating_mul(1 << shift).min(chunks);
    ChunkRanges::from(ChunkNum(s)..ChunkNum(e))
}

/// Clamps a group range to the blob: `None` when empty.
pub fn clamp_groups(len: u64, start: u64, end: u64) -> Option<(u64, u64)> {
    let end = end.min(group_count(len));
    (start < end).then_some((start, end))
}

/// Bytes of the range response for groups `[start, end)` of a `len`-byte blob (parents and
/// data), or 0 when the range is empty.
pub fn response_len(len: u64, start: u64, end: u64) -> u64 {
    let Some((start, end)) = clamp_groups(len, start, end) else {
        return 0;
    };
    let tree = BaoTree::new(len, block_size());
    let r = ranges(len, start, end);
    tree.ranges_pre_order_chunks_iter_ref(&r, 0)
        .map(|c| match c {
            BaoChunk::Parent { .. } => 64,
            BaoChunk::Leaf { size, .. } => size as u64,
        })
        .sum()
}

/// Byte range `[from, to)` of the blob covered by groups `[start, end)`.
pub fn group_bytes(len: u64, start: u64, end: u64) -> (u64, u64) {
    let from = start.saturating_mul(GROUP_SIZE).min(len);
    let to = end.saturating_mul(GROUP_SIZE).min(len);
    (from, to)
}

/// A blob's outboard (64 bytes per 16 KiB group, post-order) and its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outboard {
    inner: PostOrderMemOutboard,
}

/// Bytes the data window given to [`Outboard::encode`] is read from.
struct Window<'a> {
    base: u64,
    data: &'a [u8],
    size: u64,
}

impl positioned_io::ReadAt for Window<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let off = pos
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| *o <= self.data.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "outside the window"))?;
        let n = buf.len().min(self.data.len() - off);
        buf[..n].copy_from_slice(&self.data[off..off + n]);
        Ok(n)
    }
}

impl positioned_io::Size for Window<'_> {
    fn size(&self) -> io::Result<Option<u64>> {
        Ok(Some(self.size))
    }
}

/// Why a range response was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not exactly [`response_len`] bytes.
    #[error("response length {got}, expected {want}")]
    Length {
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// A parent pair or a group did not hash to what the root implies.
    #[error("verification failed at byte {0}")]
    Mismatch(u64),
}

impl Outboard {
    /// Hashes `len` bytes from `data` (read sequentially) into an outboard.
    ///
    /// # Errors
    /// Read errors (including fewer than `len` bytes).
    pub fn create(data: impl io::Read, len: u64) -> io::Result<Self> {
        let tree = BaoTree::new(len, block_size());
        let mut bytes = Vec::with_capacity(usize::try_from(tree.outboard_size()).unwrap_or(0));
        let root = bao_tree::io::sync::outboard_post_order(data, tree, &mut bytes)?;
        Ok(Self {
            inner: PostOrderMemOutboard {
                root,
                tree,
                data: bytes,
            },
        })
    }

    /// Rebuilds from stored parts ([`Outboard::as_bytes`]); `None` if the byte count does not
    /// fit `len`.
    pub fn from_parts(id: ContentId, len: u64, bytes: Vec<u8>) -> Option<Self> {
        let tree = BaoTree::new(len, block_size());
        (bytes.len() as u64 == tree.outboard_size()).then(|| Self {
            inner: PostOrderMemOutboard {
                root: id.hash(),
                tree,
                data: bytes,
            },
        })
    }

    /// The blob id (bao root = BLAKE3 of the bytes).
    pub fn id(&self) -> ContentId {
        ContentId(*self.inner.root.as_bytes())
    }

    /// The blob's length, bytes.
    pub fn len(&self) -> u64 {
        self.inner.tree.size()
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The outboard bytes (post-order hash pairs, no size prefix).
    pub fn as_bytes(&self) -> &[u8] {
        &self.inner.data
    }

    /// Writes the range response for groups `[start, end)` to `out`. `data` holds the blob's
    /// bytes [`group_bytes`]`(len, start, end)`. Not validated: a corrupt `data` is caught by
    /// the receiver.
    ///
    /// # Errors
    /// `data` shorter than the range, or an empty range.
    pub fn encode(&self, start: u64, end: u64, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let len = self.len();
        let (start, end) = clamp_groups(len, start, end)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty range"))?;
        let (from, to) = group_bytes(len, start, end);
        if (data.len() as u64) < to - from {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short data"));
        }
        let w = Window {
            base: from,
            data,
            size: len,
        };
        encode_ranges(w, &self.inner, &ranges(len, start, end), out).map_err(io::Error::other)
    }
}

/// Verifies a range response for groups `[start, end)` of blob `id` (`len` bytes) and returns
/// the verified data as `(offset, bytes)` pieces in order. `len` must itself be trusted (from a
/// verified manifest) unless the range includes the last group, which proves it.
///
/// # Errors
/// [`VerifyError::Length`] when `encoded` is not [`response_len`] bytes;
/// [`VerifyError::Mismatch`] when a hash does not match (pieces before it are discarded too).
pub fn verify_response(
    id: ContentId,
    len: u64,
    start: u64,
    end: u64,
    encoded: &[u8],
) -> Result<Vec<(u64, Vec<u8>)>, VerifyError> {
    let want = response_len(len, start, end);
    if encoded.len() as u64 != want || want == 0 {
        return Err(VerifyError::Length {
            got: encoded.len() as u64,
            want,
        });
    }
    let tree = BaoTree::new(len, block_size());
    let r = ranges(len, start, end);
    let mut out = Vec::new();
    for item in DecodeResponseIter::new(id.hash(), tree, encoded, &r) {
        match item {
            Ok(BaoContentItem::Leaf(Leaf { offset, data })) => out.push((offset, data.to_vec())),
            Ok(BaoContentItem::Parent(_)) => {}
            Err(_) => {
                let at = out.last().map_or(0, |(o, d)| o + d.len() as u64);
                return Err(VerifyError::Mismatch(at));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn root_is_blake3() {
        for n in [0usize, 1, 1024, 16384, 16385, 100_000] {
            let d = data(n);
            let ob = Outboard::create(&d[..], n as u64).expect("hash");
            assert_eq!(ob.id(), ContentId::of(&d), "{n}");
            let again = Outboard::from_parts(ob.id(), n as u64, ob.as_bytes().to_vec());
            assert_eq!(again.as_ref(), Some(&ob));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn ranges_round_trip(n in 1usize..200_000, a in 0u64..16, span in 1u64..4) {
            let d = data(n);
            let ob = Outboard::create(&d[..], n as u64).expect("hash");
            let Some((s, e)) = clamp_groups(n as u64, a, a + span) else { return Ok(()); };
            let (from, to) = group_bytes(n as u64, s, e);
            let mut enc = Vec::new();
            ob.encode(s, e, &d[from as usize..to as usize], &mut enc).expect("encode");
            prop_assert_eq!(enc.len() as u64, response_len(n as u64, s, e));
            let got = verify_response(ob.id(), n as u64, s, e, &enc).expect("verify");
            let mut joined = Vec::new();
            for (off, piece) in got {
                prop_assert_eq!(off, from + joined.len() as u64);
                joined.extend_from_slice(&piece);
            }
            prop_assert_eq!(&joined[..], &d[from as usize..to as usize]);
            // Any flipped byte is caught.
            let i = (n * 31 + a as usize) % enc.len();
            let mut bad = enc.clone();
            bad[i] ^= 1;
            prop_assert!(verify_response(ob.id(), n as u64, s, e, &bad).is_err());
        }
    }

    #[test]
    fn wrong_size_or_length_rejected() {
        let d = data(50_000);
        let ob = Outboard::create(&d[..], 50_000).expect("hash");
        let mut enc = Vec::new();
        ob.encode(0, 4, &d, &mut enc).expect("encode");
        assert!(verify_response(ob.id(), 50_000, 0, 4, &enc[..enc.len() - 1]).is_err());
        // A lying size with the same group count fails on the last group.
        let mut enc2 = enc.clone();
        enc2.push(0);
        assert!(verify_response(ob.id(), 50_001, 0, 4, &enc2).is_err());
    }
}
