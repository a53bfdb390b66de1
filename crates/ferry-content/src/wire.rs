//! Content transfer packets: net_crypto lossless custom packets (`tox-protocol.md` §5,
//! custom lossless range 160–191) between a fetcher and a provider.
//!
//! Ids: [`REQUEST_PACKET_ID`] = 188 (control, both directions) and [`DATA_PACKET_ID`] = 189
//! (response bytes, provider → fetcher). Lossless packets of one session arrive in order, so
//! a response is the concatenation of the data packets carrying its request id.
//!
//! Control packet `[188][kind u8]…` (integers big-endian):
//!
//! | kind | body | size | meaning |
//! |---|---|---|---|
//! | 0 get | `[req u32][blob 32][start u64][end u64]` | 54 | send groups `[start, end)` of `blob`; `end` = [`WHOLE`] means the whole blob, preceded by a `size` |
//! | 1 missing | `[req u32]` | 6 | I do not have it (or refuse): ask someone else |
//! | 2 cancel | `[req u32]` | 6 | no longer needed (fetcher → provider) |
//! | 3 size | `[req u32][len u64]` | 14 | the blob's length (before a whole-blob response; proved by its last group) |
//!
//! Data packet `[189][req u32][bytes]`: 5 + 1..=[`MAX_DATA_CHUNK`] bytes; the bytes of one
//! request's range response ([`crate::blob`]) in order.

use ferry_wire::{Reader, WireError};

use crate::ContentId;

/// Lossless custom packet id of the control packets: 188.
pub const REQUEST_PACKET_ID: u8 = 188;
/// Lossless custom packet id of the data packets: 189.
pub const DATA_PACKET_ID: u8 = 189;
/// Largest custom packet net_crypto carries, bytes (`MAX_CRYPTO_DATA_SIZE` − 1): 1373.
pub const MAX_PACKET: usize = 1373;
/// Response bytes per data packet: 1368.
pub const MAX_DATA_CHUNK: usize = MAX_PACKET - 5;
/// `end` of a whole-blob request.
pub const WHOLE: u64 = u64::MAX;

/// A content packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentPacket {
    /// Ask for groups `[start, end)` of `blob`.
    Get {
        /// Request id (fetcher-chosen, unique per session).
        req: u32,
        /// The blob.
        blob: ContentId,
        /// First group.
        start: u64,
        /// One past the last group, or [`WHOLE`].
        end: u64,
    },
    /// The provider does not serve this request.
    Missing {
        /// Request id.
        req: u32,
    },
    /// The fetcher no longer wants this request.
    Cancel {
        /// Request id.
        req: u32,
    },
    /// The blob's length (whole-blob requests).
    Size {
        /// Request id.
        req: u32,
        /// Length, bytes.
        len: u64,
    },
    /// Response bytes.
    Data {
        /// Request id.
        req: u32,
        /// 1..=[`MAX_DATA_CHUNK`] bytes.
        bytes: Vec<u8>,
    },
}

impl ContentPacket {
    /// Whether a custom packet's first byte belongs here.
    pub fn is_content(id: Option<&u8>) -> bool {
        matches!(id, Some(&(REQUEST_PACKET_ID | DATA_PACKET_ID)))
    }

    /// Encodes (id byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Self::Get {
                req,
                blob,
                start,
                end,
            } => {
                out.extend_from_slice(&[REQUEST_PACKET_ID, 0]);
                out.extend_from_slice(&req.to_be_bytes());
                out.extend_from_slice(&blob.0);
                out.extend_from_slice(&start.to_be_bytes());
                out.extend_from_slice(&end.to_be_bytes());
            }
            Self::Missing { req } => {
                out.extend_from_slice(&[REQUEST_PACKET_ID, 1]);
                out.extend_from_slice(&req.to_be_bytes());
            }
            Self::Cancel { req } => {
                out.extend_from_slice(&[REQUEST_PACKET_ID, 2]);
                out.extend_from_slice(&req.to_be_bytes());
            }
            Self::Size { req, len } => {
                out.extend_from_slice(&[REQUEST_PACKET_ID, 3]);
                out.extend_from_slice(&req.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Self::Data { req, bytes } => {
                out.reserve(bytes.len());
                out.push(DATA_PACKET_ID);
                out.extend_from_slice(&req.to_be_bytes());
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    /// Decodes one packet (exact lengths; never panics).
    ///
    /// # Errors
    /// [`WireError`] on a wrong id, kind or length.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() > MAX_PACKET {
            return Err(WireError::BadLength {
                what: "content packet",
                len: b.len(),
            });
        }
        let mut r = Reader::new(b);
        let p = match r.u8("content packet id")? {
            DATA_PACKET_ID => {
                let req = r.u32_be("content data req")?;
                let bytes = r.rest().to_vec();
                if bytes.is_empty() {
                    return Err(WireError::BadLength {
                        what: "content data",
                        len: 0,
                    });
                }
                return Ok(Self::Data { req, bytes });
            }
            REQUEST_PACKET_ID => {
                let kind = r.u8("content kind")?;
                let req = r.u32_be("content req")?;
                match kind {
                    0 => Self::Get {
                        req,
                        blob: ContentId(r.array::<32>("content blob")?),
                        start: u64::from_be_bytes(r.array::<8>("content start")?),
                        end: u64::from_be_bytes(r.array::<8>("content end")?),
                    },
                    1 => Self::Missing { req },
                    2 => Self::Cancel { req },
                    3 => Self::Size {
                        req,
                        len: u64::from_be_bytes(r.array::<8>("content size")?),
                    },
                    k => {
                        return Err(WireError::InvalidValue {
                            what: "content kind",
                            value: k.into(),
                        });
                    }
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet() -> impl Strategy<Value = ContentPacket> {
        prop_oneof![
            (any::<u32>(), any::<[u8; 32]>(), any::<u64>(), any::<u64>()).prop_map(
                |(req, b, start, end)| ContentPacket::Get {
                    req,
                    blob: ContentId(b),
                    start,
                    end
                }
            ),
            any::<u32>().prop_map(|req| ContentPacket::Missing { req }),
            any::<u32>().prop_map(|req| ContentPacket::Cancel { req }),
            (any::<u32>(), any::<u64>()).prop_map(|(req, len)| ContentPacket::Size { req, len }),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 1..=MAX_DATA_CHUNK)
            )
                .prop_map(|(req, bytes)| ContentPacket::Data { req, bytes }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(p in packet()) {
            let b = p.encode();
            prop_assert!(b.len() <= MAX_PACKET);
            prop_assert!(ContentPacket::is_content(b.first()));
            prop_assert_eq!(ContentPacket::decode(&b), Ok(p));
        }

        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..1500)) {
            if let Ok(p) = ContentPacket::decode(&b) {
                prop_assert_eq!(p.encode(), b);
            }
        }
    }

    #[test]
    fn sizes() {
        let g = ContentPacket::Get {
            req: 1,
            blob: ContentId([0; 32]),
            start: 0,
            end: 1,
        };
        assert_eq!(g.encode().len(), 54);
        assert_eq!(ContentPacket::Missing { req: 1 }.encode().len(), 6);
        assert_eq!(ContentPacket::Size { req: 1, len: 2 }.encode().len(), 14);
        let mut b = g.encode();
        b.push(0);
        assert!(ContentPacket::decode(&b).is_err());
        assert!(ContentPacket::decode(&[DATA_PACKET_ID, 0, 0, 0, 1]).is_err());
    }
}
