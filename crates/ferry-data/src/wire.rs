//! Value-store packets (`data-layer.md` §3.1): five top-level UDP packet kinds in 0xe0–0xe4.
//!
//! # Why 0xe0–0xe4
//!
//! c-toxcore 0.2.18 dispatches a datagram on its first byte through a 256-entry handler table
//! (`network.c` `networking_poll` → `packethandlers[data[0]]`); a byte with no registered handler
//! is logged ("Packet has no handler") and dropped, with no reply and no effect on the sender's
//! node state. Its registered kinds are 0x00–0x04, 0x18–0x1b, 0x20–0x21, 0x5a–0x5c, 0x80–0x8e,
//! 0x90–0x98 (announce, owned by `announce.c`; `data-layer.md` §3.1 says keep clear) and 0xf0
//! (`tox-protocol.md` §2). ferry already uses 0xd4 (data plane). 0xe0–0xe4 are unused by both, so
//! a legacy peer silently ignores a store probe and ferry learns it is not capable by the missing
//! reply.
//!
//! # Envelope (as DHT requests, `tox-protocol.md` §3)
//!
//! | bytes | field |
//! |---|---|
//! | 1 | kind: [`STORE_HELLO`] 0xe0, [`STORE_GET`] 0xe1, [`STORE_GET_RESPONSE`] 0xe2, [`STORE_PUT`] 0xe3, [`STORE_PUT_RESPONSE`] 0xe4 |
//! | 32 | sender's DHT public key |
//! | 24 | random nonce |
//! | 16 + n | `crypto_box`(sender DHT sk, receiver DHT pk, nonce) of the n-byte plaintext |
//!
//! # Plaintexts (integers big-endian)
//!
//! | packet | layout | size |
//! |---|---|---|
//! | hello | `[is_response u8 0/1][request_id 8][flags u8: bit0 accepts puts]` | 10 |
//! | get | `[request_id 8][target 32][has_seq u8 0/1][seq u64]` | 49 |
//! | get response | `[request_id 8][token 32][flags u8][n ≤ 8][n packed nodes][found]` | 50 + nodes + found |
//! | put | `[request_id 8][token 32][ttl_s u32][has_cas u8][cas u64][target 32][item]` | 85 + item |
//! | put response | `[request_id 8][status u16: 0 ok, else `[`PutError::code`]`][ttl_s u32 granted]` | 14 |
//!
//! Get-response flags: bit0 the storer would accept a put. `found` is `[0]` nothing,
//! `[1][seq u64]` (stored seq not newer than the getter's: value omitted, BEP 44), `[2][item]`,
//! `[3][slot u64][item]` (one mail envelope; mailbox gets page with `seq` = first slot wanted).
//! For mailbox targets the get's `seq` is that first slot. Largest get response: 73 + 50 + 8 × 51
//! + 9 + 1 + 1121 = 1662 bytes < [`ferry_wire::MAX_UDP_PACKET_SIZE`] (2048).

use ferry_crypto::{KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey};
use ferry_wire::node::PackedNode;
use ferry_wire::{MAX_UDP_PACKET_SIZE, Reader, WireError};

use crate::item::{Item, PutError, Target};

/// Store-capability hello (request or response).
pub const STORE_HELLO: u8 = 0xe0;
/// Get request.
pub const STORE_GET: u8 = 0xe1;
/// Get response.
pub const STORE_GET_RESPONSE: u8 = 0xe2;
/// Put request.
pub const STORE_PUT: u8 = 0xe3;
/// Put response (ack or refusal).
pub const STORE_PUT_RESPONSE: u8 = 0xe4;

/// Bytes before the plaintext: kind, sender pk, nonce and MAC (73).
pub const ENVELOPE_OVERHEAD: usize = 1 + KEY_SIZE + NONCE_SIZE + MAC_SIZE;
/// Request id size, in bytes (echoed by responses).
pub const REQUEST_ID_SIZE: usize = 8;
/// Write token size, in bytes (keyed BLAKE3 output, [`crate::store`]).
pub const TOKEN_SIZE: usize = 32;
/// Most nodes in one get response (k = 8; Tox nodes responses carry only 4).
pub const MAX_RESPONSE_NODES: usize = 8;

/// An opaque request id.
pub type RequestId = [u8; REQUEST_ID_SIZE];
/// A write token.
pub type Token = [u8; TOKEN_SIZE];

/// One of the five store packets before decryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreEnvelope {
    /// First byte (0xe0–0xe4).
    pub kind: u8,
    /// Sender's DHT public key.
    pub sender: PublicKey,
    /// Random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext.
    pub ciphertext: Vec<u8>,
}

impl StoreEnvelope {
    /// Whether `b` is one of the store kinds (a host routes these datagrams to the store).
    pub fn is_store_kind(b: u8) -> bool {
        (STORE_HELLO..=STORE_PUT_RESPONSE).contains(&b)
    }

    /// Parses a datagram.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] outside 0xe0–0xe4; [`WireError::BadLength`] when shorter than
    /// the overhead or longer than 2048 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8("kind")?;
        if !Self::is_store_kind(kind) {
            return Err(WireError::UnknownKind(kind));
        }
        if bytes.len() < ENVELOPE_OVERHEAD || bytes.len() > MAX_UDP_PACKET_SIZE {
            return Err(WireError::BadLength {
                what: "store packet",
                len: bytes.len(),
            });
        }
        let sender = PublicKey(r.array("sender public key")?);
        let nonce = Nonce(r.array("nonce")?);
        let ciphertext = r.rest().to_vec();
        Ok(Self {
            kind,
            sender,
            nonce,
            ciphertext,
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + KEY_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.push(self.kind);
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Encrypts a message (`key` = our DHT sk ↔ receiver's DHT pk).
    ///
    /// # Errors
    /// [`WireError::Decrypt`] stands in for an encryption failure (not reachable at these sizes).
    pub fn seal(
        sender: PublicKey,
        nonce: Nonce,
        key: &PrecomputedKey,
        msg: &StoreMessage,
    ) -> Result<Self, WireError> {
        let ciphertext = key.encrypt(&nonce, &msg.encode_plaintext())?;
        Ok(Self {
            kind: msg.kind(),
            sender,
            nonce,
            ciphertext,
        })
    }

    /// Decrypts and parses the message (`key` = our DHT sk ↔ sender's DHT pk).
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it does not authenticate, parse errors otherwise.
    pub fn open(&self, key: &PrecomputedKey) -> Result<StoreMessage, WireError> {
        let plain = key.decrypt(&self.nonce, &self.ciphertext)?;
        StoreMessage::decode_plaintext(self.kind, &plain)
    }
}

/// Store-capability probe. A capable node answers a request with a response; legacy nodes are
/// silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// `false` request, `true` response.
    pub is_response: bool,
    /// Echoed by the response.
    pub request_id: RequestId,
    /// The sender accepts puts now (not full, not shutting down).
    pub accepts: bool,
}

/// Get request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetRequest {
    /// Echoed by the response.
    pub request_id: RequestId,
    /// What to get.
    pub target: Target,
    /// BEP 44 get-with-seq: omit the value unless the stored seq is higher. For mailbox targets:
    /// the first mail slot wanted.
    pub seq: Option<u64>,
}

/// What a get found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing stored.
    Nothing,
    /// Stored seq, value omitted (not newer than the getter's `seq`).
    SeqOnly(u64),
    /// The item.
    Item(Item),
    /// One mail envelope ([`Item::Mail`]) and its slot; ask again with `seq = slot + 1`.
    Mail {
        /// Holder-assigned, increasing per mailbox.
        slot: u64,
        /// The envelope.
        item: Item,
    },
}

/// Get response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    /// The request's id.
    pub request_id: RequestId,
    /// Write token for (getter address, getter key, target); needed by a put.
    pub token: Token,
    /// The storer would accept a put for this target.
    pub would_accept: bool,
    /// Up to 8 capable nodes the storer knows closest to the target.
    pub nodes: Vec<PackedNode>,
    /// What is stored.
    pub found: Found,
}

/// Put request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRequest {
    /// Echoed by the response.
    pub request_id: RequestId,
    /// From an earlier get response of the same storer.
    pub token: Token,
    /// Requested lifetime, in seconds (the storer caps it).
    pub ttl_s: u32,
    /// BEP 44 compare-and-swap: store only if the stored seq equals this.
    pub cas: Option<u64>,
    /// Where.
    pub target: Target,
    /// What.
    pub item: Item,
}

/// Put response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutResponse {
    /// The request's id.
    pub request_id: RequestId,
    /// `Ok(granted lifetime, s)` or the refusal.
    pub result: Result<u32, PutError>,
}

/// A decrypted store message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreMessage {
    /// 0xe0.
    Hello(Hello),
    /// 0xe1.
    Get(GetRequest),
    /// 0xe2.
    GetResponse(GetResponse),
    /// 0xe3.
    Put(PutRequest),
    /// 0xe4.
    PutResponse(PutResponse),
}

fn u64_of(r: &mut Reader<'_>, what: &'static str) -> Result<u64, WireError> {
    Ok(u64::from_be_bytes(r.array(what)?))
}

/// An optional u64 sent as a presence flag and 8 bytes: absent values must be sent as 0, so that
/// every message has exactly one encoding (what decodes re-encodes to the same bytes).
fn optional_u64(present: bool, value: u64, what: &'static str) -> Result<Option<u64>, WireError> {
    match (present, value) {
        (true, v) => Ok(Some(v)),
        (false, 0) => Ok(None),
        (false, v) => Err(WireError::InvalidValue { what, value: v }),
    }
}

fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool, WireError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(WireError::InvalidValue {
            what,
            value: u64::from(v),
        }),
    }
}

impl StoreMessage {
    /// The packet kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Hello(_) => STORE_HELLO,
            Self::Get(_) => STORE_GET,
            Self::GetResponse(_) => STORE_GET_RESPONSE,
            Self::Put(_) => STORE_PUT,
            Self::PutResponse(_) => STORE_PUT_RESPONSE,
        }
    }

    /// The request id (requests and responses alike).
    pub fn request_id(&self) -> RequestId {
        match self {
            Self::Hello(m) => m.request_id,
            Self::Get(m) => m.request_id,
            Self::GetResponse(m) => m.request_id,
            Self::Put(m) => m.request_id,
            Self::PutResponse(m) => m.request_id,
        }
    }

    /// Emits the plaintext (layouts in the module docs).
    pub fn encode_plaintext(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        match self {
            Self::Hello(h) => {
                out.push(u8::from(h.is_response));
                out.extend_from_slice(&h.request_id);
                out.push(u8::from(h.accepts));
            }
            Self::Get(g) => {
                out.extend_from_slice(&g.request_id);
                out.extend_from_slice(&g.target.0);
                out.push(u8::from(g.seq.is_some()));
                out.extend_from_slice(&g.seq.unwrap_or(0).to_be_bytes());
            }
            Self::GetResponse(g) => {
                out.extend_from_slice(&g.request_id);
                out.extend_from_slice(&g.token);
                out.push(u8::from(g.would_accept));
                let n = g.nodes.len().min(MAX_RESPONSE_NODES);
                out.push(n as u8);
                for node in &g.nodes[..n] {
                    node.encode(&mut out);
                }
                match &g.found {
                    Found::Nothing => out.push(0),
                    Found::SeqOnly(s) => {
                        out.push(1);
                        out.extend_from_slice(&s.to_be_bytes());
                    }
                    Found::Item(i) => {
                        out.push(2);
                        i.encode(&mut out);
                    }
                    Found::Mail { slot, item } => {
                        out.push(3);
                        out.extend_from_slice(&slot.to_be_bytes());
                        item.encode(&mut out);
                    }
                }
            }
            Self::Put(p) => {
                out.extend_from_slice(&p.request_id);
                out.extend_from_slice(&p.token);
                out.extend_from_slice(&p.ttl_s.to_be_bytes());
                out.push(u8::from(p.cas.is_some()));
                out.extend_from_slice(&p.cas.unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&p.target.0);
                p.item.encode(&mut out);
            }
            Self::PutResponse(p) => {
                out.extend_from_slice(&p.request_id);
                let (code, ttl) = match p.result {
                    Ok(ttl) => (0, ttl),
                    Err(e) => (e.code(), 0),
                };
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
            }
        }
        out
    }

    /// Parses the plaintext of packet kind `kind`; the whole input must be consumed.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::Truncated`], [`WireError::Trailing`],
    /// [`WireError::InvalidValue`] (flags, status codes, item class), [`WireError::BadLength`].
    pub fn decode_plaintext(kind: u8, bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let msg = match kind {
            STORE_HELLO => Self::Hello(Hello {
                is_response: flag(&mut r, "hello type")?,
                request_id: r.array("request id")?,
                accepts: flag(&mut r, "hello flags")?,
            }),
            STORE_GET => {
                let request_id = r.array("request id")?;
                let target = Target(r.array("target")?);
                let has = flag(&mut r, "has seq")?;
                let seq = u64_of(&mut r, "seq")?;
                Self::Get(GetRequest {
                    request_id,
                    target,
                    seq: optional_u64(has, seq, "seq without its flag")?,
                })
            }
            STORE_GET_RESPONSE => {
                let request_id = r.array("request id")?;
                let token = r.array("token")?;
                let would_accept = flag(&mut r, "get response flags")?;
                let n = usize::from(r.u8("node count")?);
                if n > MAX_RESPONSE_NODES {
                    return Err(WireError::InvalidValue {
                        what: "node count",
                        value: n as u64,
                    });
                }
                let mut nodes = Vec::with_capacity(n);
                for _ in 0..n {
                    nodes.push(PackedNode::decode(&mut r)?);
                }
                let found = match r.u8("found")? {
                    0 => Found::Nothing,
                    1 => Found::SeqOnly(u64_of(&mut r, "seq")?),
                    2 => Found::Item(Item::decode(&mut r)?),
                    3 => Found::Mail {
                        slot: u64_of(&mut r, "slot")?,
                        item: Item::decode(&mut r)?,
                    },
                    v => {
                        return Err(WireError::InvalidValue {
                            what: "found",
                            value: u64::from(v),
                        });
                    }
                };
                Self::GetResponse(GetResponse {
                    request_id,
                    token,
                    would_accept,
                    nodes,
                    found,
                })
            }
            STORE_PUT => {
                let request_id = r.array("request id")?;
                let token = r.array("token")?;
                let ttl_s = r.u32_be("ttl")?;
                let has = flag(&mut r, "has cas")?;
                let cas = u64_of(&mut r, "cas")?;
                let target = Target(r.array("target")?);
                let item = Item::decode(&mut r)?;
                Self::Put(PutRequest {
                    request_id,
                    token,
                    ttl_s,
                    cas: optional_u64(has, cas, "cas without its flag")?,
                    target,
                    item,
                })
            }
            STORE_PUT_RESPONSE => {
                let request_id = r.array("request id")?;
                let code = r.u16_be("status")?;
                let ttl = r.u32_be("granted ttl")?;
                let result = if code == 0 {
                    Ok(ttl)
                } else if ttl != 0 {
                    // A refusal grants no lifetime: its ttl field must be 0 (one encoding).
                    return Err(WireError::InvalidValue {
                        what: "granted ttl of a refusal",
                        value: u64::from(ttl),
                    });
                } else {
                    Err(PutError::from_code(code).ok_or(WireError::InvalidValue {
                        what: "status",
                        value: u64::from(code),
                    })?)
                };
                Self::PutResponse(PutResponse { request_id, result })
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ClaimedItem, MailEnvelope, MutableItem};
    use ferry_crypto::SecretKey;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    fn arb_item() -> impl Strategy<Value = Item> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=1000).prop_map(Item::Immutable),
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..=64),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=1000),
                any::<[u8; 32]>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(pk, salt, seq, value, s1, s2)| {
                    let mut sig = [0; 64];
                    sig[..32].copy_from_slice(&s1);
                    sig[32..].copy_from_slice(&s2);
                    Item::Mutable(MutableItem {
                        pk,
                        salt,
                        seq,
                        value,
                        sig,
                    })
                }),
            (
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=1000)
            )
                .prop_map(|(pk, name_id, pow, seq, value)| Item::Claimed(
                    ClaimedItem {
                        pk,
                        name_id,
                        pow,
                        seq,
                        value,
                        sig: [7; 64]
                    }
                )),
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<u8>(), 0..=1096)
            )
                .prop_map(|(delete_hash, sealed)| Item::Mail(MailEnvelope {
                    delete_hash,
                    pow: sealed.len() as u64,
                    sealed
                })),
            any::<[u8; 32]>().prop_map(Item::MailDelete),
        ]
    }

    fn arb_node() -> impl Strategy<Value = PackedNode> {
        (
            any::<bool>(),
            any::<u32>(),
            any::<u128>(),
            1u16..,
            any::<[u8; 32]>(),
        )
            .prop_map(|(v4, a, b, port, k)| {
                let ip = if v4 {
                    Ipv4Addr::from(a).into()
                } else {
                    // Avoid IPv4-mapped addresses (they are packed as IPv4).
                    Ipv6Addr::from(b | (1 << 127)).into()
                };
                PackedNode::udp(SocketAddr::new(ip, port), PublicKey(k))
            })
    }

    fn arb_found() -> impl Strategy<Value = Found> {
        prop_oneof![
            Just(Found::Nothing),
            any::<u64>().prop_map(Found::SeqOnly),
            arb_item().prop_map(Found::Item),
            (any::<u64>(), arb_item()).prop_map(|(slot, item)| Found::Mail { slot, item }),
        ]
    }

    fn arb_msg() -> impl Strategy<Value = StoreMessage> {
        prop_oneof![
            (any::<bool>(), any::<[u8; 8]>(), any::<bool>()).prop_map(|(r, id, a)| {
                StoreMessage::Hello(Hello {
                    is_response: r,
                    request_id: id,
                    accepts: a,
                })
            }),
            (any::<[u8; 8]>(), any::<[u8; 32]>(), any::<Option<u64>>()).prop_map(|(id, t, s)| {
                StoreMessage::Get(GetRequest {
                    request_id: id,
                    target: Target(t),
                    seq: s,
                })
            }),
            (
                any::<[u8; 8]>(),
                any::<[u8; 32]>(),
                any::<bool>(),
                proptest::collection::vec(arb_node(), 0..=8),
                arb_found()
            )
                .prop_map(|(id, token, a, nodes, found)| {
                    StoreMessage::GetResponse(GetResponse {
                        request_id: id,
                        token,
                        would_accept: a,
                        nodes,
                        found,
                    })
                }),
            (
                any::<[u8; 8]>(),
                any::<[u8; 32]>(),
                any::<u32>(),
                any::<Option<u64>>(),
                any::<[u8; 32]>(),
                arb_item()
            )
                .prop_map(|(id, token, ttl_s, cas, t, item)| {
                    StoreMessage::Put(PutRequest {
                        request_id: id,
                        token,
                        ttl_s,
                        cas,
                        target: Target(t),
                        item,
                    })
                }),
            (any::<[u8; 8]>(), any::<u32>(), 0usize..13).prop_map(|(id, ttl, e)| {
                let errs = [205, 206, 207, 301, 302, 303, 304, 305, 401, 402, 403, 404];
                let result = if e == 12 {
                    Ok(ttl)
                } else {
                    Err(PutError::from_code(errs[e]).expect("listed code"))
                };
                StoreMessage::PutResponse(PutResponse {
                    request_id: id,
                    result,
                })
            }),
        ]
    }

    /// Fuzz finding (`store_packets`): a get request without seq but non-zero seq bytes decoded,
    /// and re-encoded differently. Absent optional values must be zero; so must an absent cas.
    #[test]
    fn absent_seq_or_cas_must_be_zero() {
        let mut get = vec![0u8; 8 + 32 + 1 + 8];
        assert!(StoreMessage::decode_plaintext(STORE_GET, &get).is_ok());
        get[44] = 0xe7;
        assert!(matches!(
            StoreMessage::decode_plaintext(STORE_GET, &get),
            Err(WireError::InvalidValue { .. })
        ));
        get[40] = 1;
        let m = StoreMessage::decode_plaintext(STORE_GET, &get).expect("seq present");
        assert_eq!(m.encode_plaintext(), get);
        let put = StoreMessage::Put(PutRequest {
            request_id: [1; 8],
            token: [2; 32],
            ttl_s: 60,
            cas: None,
            target: Target::immutable(b"v"),
            item: Item::Immutable(b"v".to_vec()),
        });
        let mut bytes = put.encode_plaintext();
        assert!(StoreMessage::decode_plaintext(STORE_PUT, &bytes).is_ok());
        // request id 8, token 32, ttl 4, has-cas 1, then the cas: make it non-zero.
        bytes[8 + 32 + 4 + 1 + 7] = 1;
        assert!(StoreMessage::decode_plaintext(STORE_PUT, &bytes).is_err());
        // Second finding: a refusal (status 207) with a non-zero ttl field.
        let mut resp = vec![0u8; 8 + 2 + 4];
        resp[9] = 207;
        assert!(StoreMessage::decode_plaintext(STORE_PUT_RESPONSE, &resp).is_ok());
        resp[13] = 64;
        assert!(StoreMessage::decode_plaintext(STORE_PUT_RESPONSE, &resp).is_err());
    }

    proptest! {
        #[test]
        fn plaintext_round_trip(m in arb_msg()) {
            let bytes = m.encode_plaintext();
            prop_assert_eq!(StoreMessage::decode_plaintext(m.kind(), &bytes), Ok(m.clone()));
            // Exact length: one byte more or less is refused.
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(StoreMessage::decode_plaintext(m.kind(), &longer).is_err());
            prop_assert!(StoreMessage::decode_plaintext(m.kind(), &bytes[..bytes.len() - 1]).is_err());
        }

        #[test]
        fn sealed_round_trip_fits_udp(m in arb_msg(), nonce in any::<[u8; 24]>()) {
            let a = SecretKey::from_bytes([1; 32]);
            let b = SecretKey::from_bytes([2; 32]);
            let env = StoreEnvelope::seal(a.public_key(), Nonce(nonce), &PrecomputedKey::new(&a, &b.public_key()), &m).expect("seal");
            let bytes = env.encode();
            prop_assert!(bytes.len() <= MAX_UDP_PACKET_SIZE);
            let back = StoreEnvelope::decode(&bytes).expect("decode");
            prop_assert_eq!(back.open(&PrecomputedKey::new(&b, &a.public_key())), Ok(m));
        }

        #[test]
        fn decoders_never_panic(kind in any::<u8>(), bytes in proptest::collection::vec(any::<u8>(), 0..1700)) {
            let _ = StoreMessage::decode_plaintext(kind, &bytes);
            let _ = StoreEnvelope::decode(&bytes);
            let _ = Item::decode(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn legacy_kinds_are_not_store_kinds() {
        for b in [
            0x00, 0x01, 0x02, 0x04, 0x20, 0x21, 0x83, 0x93, 0x98, 0xd4, 0xf0,
        ] {
            assert!(!StoreEnvelope::is_store_kind(b));
        }
    }
}
