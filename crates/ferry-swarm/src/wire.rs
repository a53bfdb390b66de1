//! Swarm messages (`data-layer.md` §3.5 replication, §3.7 live streams).
//!
//! Every message is one tag byte followed by fixed big-endian fields; decoders check exact
//! lengths, never panic and reject unknown tags, out-of-range enums and trailing bytes.
//!
//! # Transport
//!
//! In ferry these messages ride as the payload of an encrypted session between the two nodes
//! (net_crypto lossless packets for replica control, lossy for stream segments), so the sender is
//! authenticated by the session, not by the message. The simulator (`ferry-sim`) carries them as
//! plain datagrams. Tags 0x10–0x15 are replica messages, 0x20–0x2a stream messages.
//!
//! # Layouts
//!
//! A *holder* entry is `role` (1 byte: 1 pin, 2 extra) followed by a Tox packed node
//! (`tox-protocol.md` §3.3: 39 bytes for IPv4, 51 for IPv6). A *peer* entry is a packed node
//! followed by `free` (1 byte: free stripe slots) and `depth0`, `depth1` (1 byte each: depth in
//! stripe 0 and 1, 255 = not attached).
//!
//! | tag | message | fields after the tag |
//! |---|---|---|
//! | 0x10 | [`Store`] | id 32 · size u64 · role u8 · keep_s u32 · n u8 · n × holder |
//! | 0x11 | [`StoreAck`] | id 32 · accepted u8 (0/1) |
//! | 0x12 | [`Check`] | id 32 · role u8 (0 = no change) · keep_s u32 · served u32 · n u8 · n × holder |
//! | 0x13 | [`CheckAck`] | id 32 · holding u8 (0/1) · served u32 |
//! | 0x14 | [`Fetch`] | id 32 |
//! | 0x15 | [`FetchAck`] | id 32 · ok u8 (0/1) |
//! | 0x20 | [`Segment`] | stream 32 · seq u64 · ts_ms u64 · sig 64 · data (rest, ≤ [`MAX_SEGMENT`]) |
//! | 0x21 | [`StreamMsg::Join`] | stream 32 · upload_kbps u32 |
//! | 0x22 | [`StreamMsg::Peers`] | stream 32 · n u8 (≤ [`MAX_PEERS`]) · n × peer |
//! | 0x23 | [`StreamMsg::Ping`] | stream 32 · nonce u64 |
//! | 0x24 | [`StreamMsg::Pong`] | stream 32 · nonce u64 · free u8 · depth0 u8 · depth1 u8 |
//! | 0x25 | [`StreamMsg::Attach`] | stream 32 · stripe u8 (0/1) · depth0 u8 · depth1 u8 |
//! | 0x26 | [`StreamMsg::AttachAck`] | stream 32 · stripe u8 · ok u8 · depth u8 |
//! | 0x27 | [`StreamMsg::Alive`] | stream 32 · free u8 · depth0 u8 · depth1 u8 |
//! | 0x28 | [`StreamMsg::Want`] | stream 32 · seq u64 |
//! | 0x29 | [`StreamMsg::NotHave`] | stream 32 · seq u64 |
//! | 0x2a | [`StreamMsg::Detach`] | stream 32 · stripe u8 |

use ferry_wire::node::PackedNode;
use ferry_wire::{Reader, WireError};

/// Content id: BLAKE3 of the item's manifest or chunk (`data-layer.md` §3.4), 32 bytes.
pub type ContentId = [u8; 32];
/// Stream id: the streamer's Ed25519 public key, 32 bytes.
pub type StreamId = [u8; 32];

/// Tag of [`Store`].
pub const STORE: u8 = 0x10;
/// Tag of [`StoreAck`].
pub const STORE_ACK: u8 = 0x11;
/// Tag of [`Check`].
pub const CHECK: u8 = 0x12;
/// Tag of [`CheckAck`].
pub const CHECK_ACK: u8 = 0x13;
/// Tag of [`Fetch`].
pub const FETCH: u8 = 0x14;
/// Tag of [`FetchAck`].
pub const FETCH_ACK: u8 = 0x15;
/// Tag of [`Segment`].
pub const SEGMENT: u8 = 0x20;
/// Tag of [`StreamMsg::Join`].
pub const JOIN: u8 = 0x21;
/// Tag of [`StreamMsg::Peers`].
pub const PEERS: u8 = 0x22;
/// Tag of [`StreamMsg::Ping`].
pub const PING: u8 = 0x23;
/// Tag of [`StreamMsg::Pong`].
pub const PONG: u8 = 0x24;
/// Tag of [`StreamMsg::Attach`].
pub const ATTACH: u8 = 0x25;
/// Tag of [`StreamMsg::AttachAck`].
pub const ATTACH_ACK: u8 = 0x26;
/// Tag of [`StreamMsg::Alive`].
pub const ALIVE: u8 = 0x27;
/// Tag of [`StreamMsg::Want`].
pub const WANT: u8 = 0x28;
/// Tag of [`StreamMsg::NotHave`].
pub const NOT_HAVE: u8 = 0x29;
/// Tag of [`StreamMsg::Detach`].
pub const DETACH: u8 = 0x2a;

/// Most holder entries in one [`Store`] or [`Check`] (64 replicas + spare pins + slack).
pub const MAX_HOLDERS: usize = 80;
/// Most peer entries in one [`StreamMsg::Peers`].
pub const MAX_PEERS: usize = 32;
/// Largest segment payload, bytes (1 s at 8 Mbit/s).
pub const MAX_SEGMENT: usize = 1 << 20;

/// A replica's role for an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A pin: one of the r0 (+ spare) replicas that check each other and repair.
    Pin,
    /// An extra replica recruited for demand; dropped when its keep time runs out.
    Extra,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Self::Pin => 1,
            Self::Extra => 2,
        }
    }
    fn from_byte(b: u8) -> Result<Self, WireError> {
        match b {
            1 => Ok(Self::Pin),
            2 => Ok(Self::Extra),
            v => Err(WireError::InvalidValue {
                what: "role",
                value: u64::from(v),
            }),
        }
    }
}

/// A holder of an item as peers tell each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderEntry {
    /// Pin or extra.
    pub role: Role,
    /// Its address and DHT public key.
    pub node: PackedNode,
}

/// Asks a node to hold an item (publisher or repairing pin → candidate). Reply: [`StoreAck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// Content id.
    pub id: ContentId,
    /// Size in bytes (checked against the quota).
    pub size: u64,
    /// Role offered.
    pub role: Role,
    /// How long to keep it, seconds (pins: the publisher's pin TTL; extras: the extra TTL).
    pub keep_s: u32,
    /// The other holders known to the sender (≤ [`MAX_HOLDERS`]).
    pub holders: Vec<HolderEntry>,
}

/// Answer to [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreAck {
    /// Content id.
    pub id: ContentId,
    /// Whether the item is now held (false: no quota, not capable, table full).
    pub accepted: bool,
}

/// A pin's periodic liveness check of another holder (every check interval), carrying the
/// sender's view of the holder set and its served-downloads count. Reply: [`CheckAck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Content id.
    pub id: ContentId,
    /// New role for the receiver, set only by the pin leader (`None` = no change).
    pub role: Option<Role>,
    /// With a role: keep the item this long from now, seconds.
    pub keep_s: u32,
    /// Downloads the sender served in the last hour.
    pub served: u32,
    /// The holders the sender knows, itself excluded (≤ [`MAX_HOLDERS`]).
    pub holders: Vec<HolderEntry>,
}

/// Answer to [`Check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckAck {
    /// Content id.
    pub id: ContentId,
    /// Whether the responder still holds the item.
    pub holding: bool,
    /// Downloads the responder served in the last hour.
    pub served: u32,
}

/// A download of an item from a holder (modelled as one request; bytes move in ferry-content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// Content id.
    pub id: ContentId,
}

/// Answer to [`Fetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchAck {
    /// Content id.
    pub id: ContentId,
    /// Whether the item was served.
    pub ok: bool,
}

/// A replica message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaMsg {
    /// 0x10.
    Store(Store),
    /// 0x11.
    StoreAck(StoreAck),
    /// 0x12.
    Check(Check),
    /// 0x13.
    CheckAck(CheckAck),
    /// 0x14.
    Fetch(Fetch),
    /// 0x15.
    FetchAck(FetchAck),
}

fn bool_byte(r: &mut Reader<'_>, what: &'static str) -> Result<bool, WireError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(WireError::InvalidValue {
            what,
            value: u64::from(v),
        }),
    }
}

fn u64_be(r: &mut Reader<'_>, what: &'static str) -> Result<u64, WireError> {
    Ok(u64::from_be_bytes(r.array(what)?))
}

fn encode_holders(out: &mut Vec<u8>, holders: &[HolderEntry]) {
    let n = holders.len().min(MAX_HOLDERS);
    out.push(n as u8);
    for h in &holders[..n] {
        out.push(h.role.byte());
        h.node.encode(out);
    }
}

fn decode_holders(r: &mut Reader<'_>) -> Result<Vec<HolderEntry>, WireError> {
    let n = usize::from(r.u8("holder count")?);
    if n > MAX_HOLDERS {
        return Err(WireError::InvalidValue {
            what: "holder count",
            value: n as u64,
        });
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let role = Role::from_byte(r.u8("holder role")?)?;
        let node = PackedNode::decode(r)?;
        v.push(HolderEntry { role, node });
    }
    Ok(v)
}

impl ReplicaMsg {
    /// Whether `b` is a replica message tag.
    pub fn is_tag(b: u8) -> bool {
        (STORE..=FETCH_ACK).contains(&b)
    }

    /// Encodes the message (holder lists beyond [`MAX_HOLDERS`] are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Self::Store(m) => {
                out.push(STORE);
                out.extend_from_slice(&m.id);
                out.extend_from_slice(&m.size.to_be_bytes());
                out.push(m.role.byte());
                out.extend_from_slice(&m.keep_s.to_be_bytes());
                encode_holders(&mut out, &m.holders);
            }
            Self::StoreAck(m) => {
                out.push(STORE_ACK);
                out.extend_from_slice(&m.id);
                out.push(u8::from(m.accepted));
            }
            Self::Check(m) => {
                out.push(CHECK);
                out.extend_from_slice(&m.id);
                out.push(m.role.map_or(0, Role::byte));
                out.extend_from_slice(&m.keep_s.to_be_bytes());
                out.extend_from_slice(&m.served.to_be_bytes());
                encode_holders(&mut out, &m.holders);
            }
            Self::CheckAck(m) => {
                out.push(CHECK_ACK);
                out.extend_from_slice(&m.id);
                out.push(u8::from(m.holding));
                out.extend_from_slice(&m.served.to_be_bytes());
            }
            Self::Fetch(m) => {
                out.push(FETCH);
                out.extend_from_slice(&m.id);
            }
            Self::FetchAck(m) => {
                out.push(FETCH_ACK);
                out.extend_from_slice(&m.id);
                out.push(u8::from(m.ok));
            }
        }
        out
    }

    /// Decodes one message.
    ///
    /// # Errors
    /// Unknown tag, truncation, trailing bytes, invalid enum or flag values, too many holders.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let tag = r.u8("tag")?;
        let msg = match tag {
            STORE => {
                let id = r.array("id")?;
                let size = u64_be(&mut r, "size")?;
                let role = Role::from_byte(r.u8("role")?)?;
                let keep_s = r.u32_be("keep_s")?;
                let holders = decode_holders(&mut r)?;
                Self::Store(Store {
                    id,
                    size,
                    role,
                    keep_s,
                    holders,
                })
            }
            STORE_ACK => Self::StoreAck(StoreAck {
                id: r.array("id")?,
                accepted: bool_byte(&mut r, "accepted")?,
            }),
            CHECK => {
                let id = r.array("id")?;
                let role = match r.u8("role")? {
                    0 => None,
                    b => Some(Role::from_byte(b)?),
                };
                let keep_s = r.u32_be("keep_s")?;
                let served = r.u32_be("served")?;
                let holders = decode_holders(&mut r)?;
                Self::Check(Check {
                    id,
                    role,
                    keep_s,
                    served,
                    holders,
                })
            }
            CHECK_ACK => Self::CheckAck(CheckAck {
                id: r.array("id")?,
                holding: bool_byte(&mut r, "holding")?,
                served: r.u32_be("served")?,
            }),
            FETCH => Self::Fetch(Fetch { id: r.array("id")? }),
            FETCH_ACK => Self::FetchAck(FetchAck {
                id: r.array("id")?,
                ok: bool_byte(&mut r, "ok")?,
            }),
            t => return Err(WireError::UnknownKind(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// One signed live segment. The signature is the streamer's Ed25519 signature over
/// [`Segment::signed_bytes`] = stream (32) ‖ seq (u64 BE) ‖ BLAKE3(data) (32) ‖ ts_ms (u64 BE),
/// so any peer may relay it and every receiver checks it against the stream id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Stream id (the streamer's Ed25519 public key).
    pub stream: StreamId,
    /// Sequence number (one per segment, ~1 s each).
    pub seq: u64,
    /// Streamer's timestamp when the segment was cut, ms since the stream's epoch.
    pub ts_ms: u64,
    /// Ed25519 signature, 64 bytes.
    pub sig: [u8; 64],
    /// Segment bytes (≤ [`MAX_SEGMENT`]).
    pub data: Vec<u8>,
}

impl Segment {
    /// The 80 bytes the streamer signs.
    pub fn signed_bytes(stream: &StreamId, seq: u64, hash: &[u8; 32], ts_ms: u64) -> [u8; 80] {
        let mut b = [0u8; 80];
        b[..32].copy_from_slice(stream);
        b[32..40].copy_from_slice(&seq.to_be_bytes());
        b[40..72].copy_from_slice(hash);
        b[72..].copy_from_slice(&ts_ms.to_be_bytes());
        b
    }
}

/// A stream control or data message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMsg {
    /// 0x20: a signed segment.
    Segment(Segment),
    /// 0x21: viewer → streamer (tracker): I want to watch; my upload capacity.
    Join {
        /// Stream id.
        stream: StreamId,
        /// Upload the viewer offers, kbit/s.
        upload_kbps: u32,
    },
    /// 0x22: streamer → viewer: peers that may have free slots.
    Peers {
        /// Stream id.
        stream: StreamId,
        /// Up to [`MAX_PEERS`] entries.
        peers: Vec<PeerEntry>,
    },
    /// 0x23: RTT probe.
    Ping {
        /// Stream id.
        stream: StreamId,
        /// Echoed in the pong.
        nonce: u64,
    },
    /// 0x24: answer to a ping with the responder's state.
    Pong {
        /// Stream id.
        stream: StreamId,
        /// The ping's nonce.
        nonce: u64,
        /// Free stripe slots.
        free: u8,
        /// Depth in stripe 0 and 1 (255 = not attached).
        depth: [u8; 2],
    },
    /// 0x25: child → parent: send me stripe `stripe`; my current depths (loop check).
    Attach {
        /// Stream id.
        stream: StreamId,
        /// 0 (even seqs) or 1 (odd seqs).
        stripe: u8,
        /// The child's depths (255 = not attached).
        depth: [u8; 2],
    },
    /// 0x26: answer to an attach.
    AttachAck {
        /// Stream id.
        stream: StreamId,
        /// The stripe asked for.
        stripe: u8,
        /// Accepted.
        ok: bool,
        /// The parent's depth in that stripe.
        depth: u8,
    },
    /// 0x27: keep-alive from a child to its parents and status to the streamer.
    Alive {
        /// Stream id.
        stream: StreamId,
        /// Free stripe slots.
        free: u8,
        /// Depths.
        depth: [u8; 2],
    },
    /// 0x28: pull repair: send me segment `seq`.
    Want {
        /// Stream id.
        stream: StreamId,
        /// Wanted sequence number.
        seq: u64,
    },
    /// 0x29: answer to a want the responder cannot serve.
    NotHave {
        /// Stream id.
        stream: StreamId,
        /// The sequence number.
        seq: u64,
    },
    /// 0x2a: child → parent: stop sending this stripe.
    Detach {
        /// Stream id.
        stream: StreamId,
        /// Stripe.
        stripe: u8,
    },
}

/// A peer in [`StreamMsg::Peers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Address and key.
    pub node: PackedNode,
    /// Free stripe slots.
    pub free: u8,
    /// Depth per stripe (255 = not attached).
    pub depth: [u8; 2],
}

fn stripe_byte(r: &mut Reader<'_>) -> Result<u8, WireError> {
    match r.u8("stripe")? {
        s @ (0 | 1) => Ok(s),
        v => Err(WireError::InvalidValue {
            what: "stripe",
            value: u64::from(v),
        }),
    }
}

impl StreamMsg {
    /// Whether `b` is a stream message tag.
    pub fn is_tag(b: u8) -> bool {
        (SEGMENT..=DETACH).contains(&b)
    }

    /// Encodes the message (peer lists beyond [`MAX_PEERS`] are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        match self {
            Self::Segment(s) => {
                out.reserve(112 + s.data.len());
                out.push(SEGMENT);
                out.extend_from_slice(&s.stream);
                out.extend_from_slice(&s.seq.to_be_bytes());
                out.extend_from_slice(&s.ts_ms.to_be_bytes());
                out.extend_from_slice(&s.sig);
                out.extend_from_slice(&s.data);
            }
            Self::Join {
                stream,
                upload_kbps,
            } => {
                out.push(JOIN);
                out.extend_from_slice(stream);
                out.extend_from_slice(&upload_kbps.to_be_bytes());
            }
            Self::Peers { stream, peers } => {
                out.push(PEERS);
                out.extend_from_slice(stream);
                let n = peers.len().min(MAX_PEERS);
                out.push(n as u8);
                for p in &peers[..n] {
                    p.node.encode(&mut out);
                    out.push(p.free);
                    out.extend_from_slice(&p.depth);
                }
            }
            Self::Ping { stream, nonce } => {
                out.push(PING);
                out.extend_from_slice(stream);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Self::Pong {
                stream,
                nonce,
                free,
                depth,
            } => {
                out.push(PONG);
                out.extend_from_slice(stream);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.push(*free);
                out.extend_from_slice(depth);
            }
            Self::Attach {
                stream,
                stripe,
                depth,
            } => {
                out.push(ATTACH);
                out.extend_from_slice(stream);
                out.push(*stripe);
                out.extend_from_slice(depth);
            }
            Self::AttachAck {
                stream,
                stripe,
                ok,
                depth,
            } => {
                out.push(ATTACH_ACK);
                out.extend_from_slice(stream);
                out.push(*stripe);
                out.push(u8::from(*ok));
                out.push(*depth);
            }
            Self::Alive {
                stream,
                free,
                depth,
            } => {
                out.push(ALIVE);
                out.extend_from_slice(stream);
                out.push(*free);
                out.extend_from_slice(depth);
            }
            Self::Want { stream, seq } => {
                out.push(WANT);
                out.extend_from_slice(stream);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::NotHave { stream, seq } => {
                out.push(NOT_HAVE);
                out.extend_from_slice(stream);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::Detach { stream, stripe } => {
                out.push(DETACH);
                out.extend_from_slice(stream);
                out.push(*stripe);
            }
        }
        out
    }

    /// Decodes one message.
    ///
    /// # Errors
    /// Unknown tag, truncation, trailing bytes, invalid stripe or flag, too many peers, a
    /// segment larger than [`MAX_SEGMENT`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let tag = r.u8("tag")?;
        let stream: StreamId = r.array("stream")?;
        let msg = match tag {
            SEGMENT => {
                let seq = u64_be(&mut r, "seq")?;
                let ts_ms = u64_be(&mut r, "ts_ms")?;
                let sig = r.array("sig")?;
                let data = r.rest();
                if data.len() > MAX_SEGMENT {
                    return Err(WireError::BadLength {
                        what: "segment",
                        len: data.len(),
                    });
                }
                Self::Segment(Segment {
                    stream,
                    seq,
                    ts_ms,
                    sig,
                    data: data.to_vec(),
                })
            }
            JOIN => Self::Join {
                stream,
                upload_kbps: r.u32_be("upload_kbps")?,
            },
            PEERS => {
                let n = usize::from(r.u8("peer count")?);
                if n > MAX_PEERS {
                    return Err(WireError::InvalidValue {
                        what: "peer count",
                        value: n as u64,
                    });
                }
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    let node = PackedNode::decode(&mut r)?;
                    let free = r.u8("free")?;
                    let depth = r.array("depth")?;
                    peers.push(PeerEntry { node, free, depth });
                }
                Self::Peers { stream, peers }
            }
            PING => Self::Ping {
                stream,
                nonce: u64_be(&mut r, "nonce")?,
            },
            PONG => Self::Pong {
                stream,
                nonce: u64_be(&mut r, "nonce")?,
                free: r.u8("free")?,
                depth: r.array("depth")?,
            },
            ATTACH => Self::Attach {
                stream,
                stripe: stripe_byte(&mut r)?,
                depth: r.array("depth")?,
            },
            ATTACH_ACK => Self::AttachAck {
                stream,
                stripe: stripe_byte(&mut r)?,
                ok: bool_byte(&mut r, "ok")?,
                depth: r.u8("depth")?,
            },
            ALIVE => Self::Alive {
                stream,
                free: r.u8("free")?,
                depth: r.array("depth")?,
            },
            WANT => Self::Want {
                stream,
                seq: u64_be(&mut r, "seq")?,
            },
            NOT_HAVE => Self::NotHave {
                stream,
                seq: u64_be(&mut r, "seq")?,
            },
            DETACH => Self::Detach {
                stream,
                stripe: stripe_byte(&mut r)?,
            },
            t => return Err(WireError::UnknownKind(t)),
        };
        r.finish()?;
        Ok(msg)
    }
}
