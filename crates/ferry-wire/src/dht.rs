//! DHT packets (`tox-protocol.md` §3, spec §DHT; c-toxcore 0.2.18 `DHT.c`, `ping.c`,
//! `LAN_discovery.c`, `bootstrap_node_packets.c`).
//!
//! Ping and nodes packets share one encrypted envelope:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | kind: 0x00 ping request, 0x01 ping response, 0x02 nodes request, 0x04 nodes response |
//! | 32 | sender's DHT public key |
//! | 24 | random nonce |
//! | 16 + n | `crypto_box`(sender DHT sk, receiver DHT pk, nonce) of the n-byte plaintext |
//!
//! Plaintexts: ping `[type 0|1][ping_id 8]` (82-byte packet), nodes request
//! `[requested pk 32][ping_id 8]` (113 bytes), nodes response `[n ≤ 4][n packed nodes][ping_id 8]`
//! (82 + 39 per IPv4 / 51 per IPv6 node). The 8-byte ping id is opaque and echoed byte for byte.

use ferry_crypto::{KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey};

use crate::node::{PackedNode, Transport};
use crate::{Reader, WireError, kind};

/// Size of the opaque ping id / sendback data echoed in DHT responses, in bytes.
pub const PING_ID_SIZE: usize = 8;
/// Bytes of a DHT envelope before its plaintext: kind, sender pk, nonce and MAC (73).
pub const ENVELOPE_OVERHEAD: usize = 1 + KEY_SIZE + NONCE_SIZE + MAC_SIZE;
/// Size of a ping request or response packet (82 bytes).
pub const PING_PACKET_SIZE: usize = ENVELOPE_OVERHEAD + 1 + PING_ID_SIZE;
/// Size of a nodes request packet (113 bytes).
pub const NODES_REQUEST_PACKET_SIZE: usize = ENVELOPE_OVERHEAD + KEY_SIZE + PING_ID_SIZE;
/// Most nodes in one nodes response (`MAX_SENT_NODES`).
pub const MAX_SENT_NODES: usize = 4;
/// Smallest nodes response c-toxcore parses (a zero-node response, 82 bytes).
pub const NODES_RESPONSE_MIN_SIZE: usize = ENVELOPE_OVERHEAD + 1 + PING_ID_SIZE;
/// Largest nodes response (four IPv6 nodes, 286 bytes).
pub const NODES_RESPONSE_MAX_SIZE: usize = NODES_RESPONSE_MIN_SIZE + MAX_SENT_NODES * 51;
/// Size of a LAN discovery packet (33 bytes).
pub const LAN_DISCOVERY_SIZE: usize = 1 + KEY_SIZE;
/// Size of a bootstrap info request (78 bytes, `BOOTSTRAP_INFO_PACKET_LENGTH`).
pub const BOOTSTRAP_INFO_REQUEST_SIZE: usize = 78;
/// Longest bootstrap info MOTD, in bytes (`MAX_MOTD_LENGTH`).
pub const MAX_MOTD_LENGTH: usize = 256;
/// Largest routed DHT request (0x20) c-toxcore forwards, in bytes (`MAX_CRYPTO_REQUEST_SIZE`).
pub const MAX_DHT_REQUEST_SIZE: usize = 1024;

/// The four encrypted DHT packet kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhtKind {
    /// 0x00.
    PingRequest,
    /// 0x01.
    PingResponse,
    /// 0x02.
    NodesRequest,
    /// 0x04.
    NodesResponse,
}

impl DhtKind {
    /// The packet's first byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::PingRequest => kind::PING_REQUEST,
            Self::PingResponse => kind::PING_RESPONSE,
            Self::NodesRequest => kind::NODES_REQUEST,
            Self::NodesResponse => kind::NODES_RESPONSE,
        }
    }

    /// The kind of a first byte, if it is one of the four.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            kind::PING_REQUEST => Some(Self::PingRequest),
            kind::PING_RESPONSE => Some(Self::PingResponse),
            kind::NODES_REQUEST => Some(Self::NodesRequest),
            kind::NODES_RESPONSE => Some(Self::NodesResponse),
            _ => None,
        }
    }

    fn length_ok(self, len: usize) -> bool {
        match self {
            Self::PingRequest | Self::PingResponse => len == PING_PACKET_SIZE,
            Self::NodesRequest => len == NODES_REQUEST_PACKET_SIZE,
            Self::NodesResponse => {
                (NODES_RESPONSE_MIN_SIZE..=NODES_RESPONSE_MAX_SIZE).contains(&len)
            }
        }
    }
}

/// An encrypted DHT packet (ping or nodes) before decryption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtEnvelope {
    /// Which of the four kinds.
    pub kind: DhtKind,
    /// The sender's DHT public key.
    pub sender: PublicKey,
    /// The random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext (16 + plaintext length bytes).
    pub ciphertext: Vec<u8>,
}

impl DhtEnvelope {
    /// Parses a whole datagram, checking the exact length c-toxcore requires for the kind.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] when the first byte is not 0x00/0x01/0x02/0x04,
    /// [`WireError::BadLength`] when the length does not fit the kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let k = r.u8("kind")?;
        let kind = DhtKind::from_byte(k).ok_or(WireError::UnknownKind(k))?;
        if !kind.length_ok(bytes.len()) {
            return Err(WireError::BadLength {
                what: "DHT packet",
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
        out.push(self.kind.byte());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Encrypts `plaintext` with `key` (ours ↔ receiver's) into an envelope.
    ///
    /// # Errors
    /// Only if encryption itself fails ([`WireError::Decrypt`] stands in; not reachable for DHT sizes).
    pub fn seal(
        kind: DhtKind,
        sender: PublicKey,
        nonce: Nonce,
        key: &PrecomputedKey,
        plaintext: &[u8],
    ) -> Result<Self, WireError> {
        let ciphertext = key.encrypt(&nonce, plaintext)?;
        Ok(Self {
            kind,
            sender,
            nonce,
            ciphertext,
        })
    }

    /// Decrypts the payload with `key` (ours ↔ sender's).
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it does not authenticate.
    pub fn open(&self, key: &PrecomputedKey) -> Result<Vec<u8>, WireError> {
        Ok(key.decrypt(&self.nonce, &self.ciphertext)?)
    }

    /// Like [`DhtEnvelope::open`], decrypting the envelope's own ciphertext buffer in place
    /// (no new buffer): returns the plaintext, `ciphertext.len() − 16` bytes.
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it does not authenticate (the ciphertext is then unchanged).
    pub fn open_in_place(&mut self, key: &PrecomputedKey) -> Result<&[u8], WireError> {
        key.decrypt_in_place(&self.nonce, &mut self.ciphertext)?;
        Ok(self.ciphertext.get(MAC_SIZE..).unwrap_or_default())
    }

    /// The datagram [`DhtEnvelope::seal`] followed by [`DhtEnvelope::encode`] gives, byte for
    /// byte, built in one buffer: `[kind][sender 32][nonce 24][MAC 16][ciphertext]`,
    /// `57 + 16 + plaintext.len()` bytes.
    ///
    /// # Errors
    /// As [`DhtEnvelope::seal`].
    pub fn seal_datagram(
        kind: DhtKind,
        sender: PublicKey,
        nonce: Nonce,
        key: &PrecomputedKey,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        let at = 1 + KEY_SIZE + NONCE_SIZE;
        let mut out = Vec::with_capacity(at + MAC_SIZE + plaintext.len());
        out.push(kind.byte());
        out.extend_from_slice(sender.as_bytes());
        out.extend_from_slice(&nonce.0);
        out.extend_from_slice(&[0u8; MAC_SIZE]);
        out.extend_from_slice(plaintext);
        key.encrypt_in_place(&nonce, &mut out, at)?;
        Ok(out)
    }
}

/// Plaintext of a ping request (0x00) or response (0x01): `[type][ping_id 8]`, 9 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingPayload {
    /// `false` for a request (type byte 0), `true` for a response (type byte 1).
    pub is_response: bool,
    /// Opaque id; the response echoes the request's.
    pub ping_id: [u8; PING_ID_SIZE],
}

impl PingPayload {
    /// Emits the 9-byte plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.push(u8::from(self.is_response));
        out.extend_from_slice(&self.ping_id);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a type byte other than 0 or 1, length errors otherwise.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let t = r.u8("ping type")?;
        let is_response = match t {
            0 => false,
            1 => true,
            v => {
                return Err(WireError::InvalidValue {
                    what: "ping type",
                    value: v.into(),
                });
            }
        };
        let ping_id = r.array("ping id")?;
        r.finish()?;
        Ok(Self {
            is_response,
            ping_id,
        })
    }
}

/// Plaintext of a nodes request (0x02): `[requested pk 32][ping_id 8]`, 40 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodesRequestPayload {
    /// The DHT key whose closest nodes are asked for.
    pub target: PublicKey,
    /// Opaque id (c-toxcore's sendback data), echoed in the response.
    pub ping_id: [u8; PING_ID_SIZE],
}

impl NodesRequestPayload {
    /// Emits the 40-byte plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(&self.ping_id);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// Length errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let target = PublicKey(r.array("requested public key")?);
        let ping_id = r.array("ping id")?;
        r.finish()?;
        Ok(Self { target, ping_id })
    }
}

/// Plaintext of a nodes response (0x04): `[n u8][n packed nodes][ping_id 8]`, n ≤ 4, UDP nodes
/// only (c-toxcore rejects TCP types here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodesResponsePayload {
    /// Up to [`MAX_SENT_NODES`] UDP nodes.
    pub nodes: Vec<PackedNode>,
    /// The request's ping id, echoed.
    pub ping_id: [u8; PING_ID_SIZE],
}

impl NodesResponsePayload {
    /// Emits the plaintext. Only the first [`MAX_SENT_NODES`] nodes are written.
    pub fn encode(&self) -> Vec<u8> {
        let nodes = &self.nodes[..self.nodes.len().min(MAX_SENT_NODES)];
        let mut out = Vec::with_capacity(1 + nodes.len() * 51 + PING_ID_SIZE);
        out.push(nodes.len() as u8);
        for n in nodes {
            n.encode(&mut out);
        }
        out.extend_from_slice(&self.ping_id);
        out
    }

    /// Parses the plaintext: the count must be ≤ 4 and the nodes must fill the space before the
    /// 8-byte ping id exactly.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a count over 4 or a TCP node; length errors otherwise.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() < 1 + PING_ID_SIZE {
            return Err(WireError::BadLength {
                what: "nodes response plaintext",
                len: bytes.len(),
            });
        }
        let (body, id) = bytes.split_at(bytes.len() - PING_ID_SIZE);
        let mut r = Reader::new(body);
        let n = r.u8("node count")?;
        if usize::from(n) > MAX_SENT_NODES {
            return Err(WireError::InvalidValue {
                what: "node count",
                value: n.into(),
            });
        }
        let mut nodes = Vec::with_capacity(n.into());
        for _ in 0..n {
            let node = PackedNode::decode(&mut r)?;
            if node.transport != Transport::Udp {
                return Err(WireError::InvalidValue {
                    what: "node transport in nodes response",
                    value: 1,
                });
            }
            nodes.push(node);
        }
        r.finish()?;
        let mut ping_id = [0u8; PING_ID_SIZE];
        ping_id.copy_from_slice(id);
        Ok(Self { nodes, ping_id })
    }
}

/// A DHT request (0x20) routed through one DHT node to `receiver` (`tox-protocol.md` §3.3):
/// `[0x20][receiver DHT pk 32][sender DHT pk 32][nonce 24][box([request id u8][data])]`, at most
/// 1024 bytes. A node that is not the receiver forwards the bytes unchanged if the receiver is in
/// its close list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtRequest {
    /// The DHT key the request is for.
    pub receiver: PublicKey,
    /// The sender's DHT key.
    pub sender: PublicKey,
    /// The random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext of `[request id][data]`.
    pub ciphertext: Vec<u8>,
}

impl DhtRequest {
    /// Smallest valid size: header plus MAC plus the 1-byte request id (106 bytes).
    pub const MIN_SIZE: usize = 1 + 2 * KEY_SIZE + NONCE_SIZE + MAC_SIZE + 1;

    /// Parses a whole datagram.
    ///
    /// # Errors
    /// [`WireError::BadLength`] outside 106..=1024 bytes; [`WireError::UnknownKind`] if not 0x20.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let k = r.u8("kind")?;
        if k != kind::DHT_REQUEST {
            return Err(WireError::UnknownKind(k));
        }
        if !(Self::MIN_SIZE..=MAX_DHT_REQUEST_SIZE).contains(&bytes.len()) {
            return Err(WireError::BadLength {
                what: "DHT request",
                len: bytes.len(),
            });
        }
        let receiver = PublicKey(r.array("receiver public key")?);
        let sender = PublicKey(r.array("sender public key")?);
        let nonce = Nonce(r.array("nonce")?);
        Ok(Self {
            receiver,
            sender,
            nonce,
            ciphertext: r.rest().to_vec(),
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 * KEY_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.push(kind::DHT_REQUEST);
        out.extend_from_slice(self.receiver.as_bytes());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }
}

/// NAT ping, a DHT request payload (`[0xfe][0 = request, 1 = response][id u64]`, 10 bytes) used
/// to learn that a friend is online before hole punching (`tox-protocol.md` §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPing {
    /// Request (false) or response (true).
    pub is_response: bool,
    /// Opaque id echoed by the response.
    pub id: [u8; 8],
}

impl NatPing {
    /// The DHT request id of a NAT ping.
    pub const REQUEST_ID: u8 = 0xfe;

    /// Emits the 10-byte payload (request id included).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![Self::REQUEST_ID, u8::from(self.is_response)];
        out.extend_from_slice(&self.id);
        out
    }

    /// Parses the payload (request id included).
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a wrong id or type byte, length errors otherwise.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let id = r.u8("request id")?;
        if id != Self::REQUEST_ID {
            return Err(WireError::InvalidValue {
                what: "NAT ping request id",
                value: id.into(),
            });
        }
        let is_response = match r.u8("NAT ping type")? {
            0 => false,
            1 => true,
            v => {
                return Err(WireError::InvalidValue {
                    what: "NAT ping type",
                    value: v.into(),
                });
            }
        };
        let ping = r.array("NAT ping id")?;
        r.finish()?;
        Ok(Self {
            is_response,
            id: ping,
        })
    }
}

/// LAN discovery (0x21): `[0x21][sender DHT pk 32]`, exactly 33 bytes, broadcast every 10 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanDiscovery {
    /// The sender's DHT public key.
    pub public_key: PublicKey,
}

impl LanDiscovery {
    /// Parses a whole datagram.
    ///
    /// # Errors
    /// [`WireError::BadLength`] unless exactly 33 bytes; [`WireError::UnknownKind`] if not 0x21.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let k = r.u8("kind")?;
        if k != kind::LAN_DISCOVERY {
            return Err(WireError::UnknownKind(k));
        }
        if bytes.len() != LAN_DISCOVERY_SIZE {
            return Err(WireError::BadLength {
                what: "LAN discovery",
                len: bytes.len(),
            });
        }
        Ok(Self {
            public_key: PublicKey(r.array("public key")?),
        })
    }

    /// Emits the 33-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LAN_DISCOVERY_SIZE);
        out.push(kind::LAN_DISCOVERY);
        out.extend_from_slice(self.public_key.as_bytes());
        out
    }
}

/// Bootstrap info (0xf0, `bootstrap_node_packets.c`): a request is `[0xf0]` padded to 78 bytes;
/// the response is `[0xf0][version u32 BE][MOTD ≤ 256 bytes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapInfo {
    /// The 78-byte request.
    Request,
    /// The response.
    Response {
        /// The node's version number (tox-bootstrapd 0.2.18 says 1000002018).
        version: u32,
        /// Message of the day, at most [`MAX_MOTD_LENGTH`] bytes.
        motd: Vec<u8>,
    },
}

impl BootstrapInfo {
    /// Parses a whole datagram: exactly 78 bytes is a request, 5..=261 bytes otherwise a response.
    ///
    /// # Errors
    /// [`WireError::BadLength`] for other sizes; [`WireError::UnknownKind`] if not 0xf0.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let k = r.u8("kind")?;
        if k != kind::BOOTSTRAP_INFO {
            return Err(WireError::UnknownKind(k));
        }
        if bytes.len() == BOOTSTRAP_INFO_REQUEST_SIZE {
            return Ok(Self::Request);
        }
        if bytes.len() > 1 + 4 + MAX_MOTD_LENGTH {
            return Err(WireError::BadLength {
                what: "bootstrap info",
                len: bytes.len(),
            });
        }
        let version = r.u32_be("version")?;
        Ok(Self::Response {
            version,
            motd: r.rest().to_vec(),
        })
    }

    /// Emits the datagram (a response's MOTD is cut at 256 bytes).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Request => {
                let mut out = vec![0u8; BOOTSTRAP_INFO_REQUEST_SIZE];
                out[0] = kind::BOOTSTRAP_INFO;
                out
            }
            Self::Response { version, motd } => {
                let motd = &motd[..motd.len().min(MAX_MOTD_LENGTH)];
                let mut out = Vec::with_capacity(5 + motd.len());
                out.push(kind::BOOTSTRAP_INFO);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(motd);
                out
            }
        }
    }
}

/// Any datagram the DHT layer handles, classified by its first byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// 0x00, 0x01, 0x02, 0x04.
    Dht(DhtEnvelope),
    /// 0x20.
    DhtRequest(DhtRequest),
    /// 0x21.
    LanDiscovery(LanDiscovery),
    /// 0xf0.
    BootstrapInfo(BootstrapInfo),
}

impl Packet {
    /// Classifies and parses a datagram.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] for kinds outside the DHT layer (the caller ignores those
    /// silently); any other error means the packet is malformed (the caller counts and drops it).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        match bytes.first() {
            None => Err(WireError::Truncated("kind")),
            Some(&k) if DhtKind::from_byte(k).is_some() => {
                DhtEnvelope::decode(bytes).map(Self::Dht)
            }
            Some(&kind::DHT_REQUEST) => DhtRequest::decode(bytes).map(Self::DhtRequest),
            Some(&kind::LAN_DISCOVERY) => LanDiscovery::decode(bytes).map(Self::LanDiscovery),
            Some(&kind::BOOTSTRAP_INFO) => BootstrapInfo::decode(bytes).map(Self::BootstrapInfo),
            Some(&k) => Err(WireError::UnknownKind(k)),
        }
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Dht(p) => p.encode(),
            Self::DhtRequest(p) => p.encode(),
            Self::LanDiscovery(p) => p.encode(),
            Self::BootstrapInfo(p) => p.encode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crypto::KeyPair;
    use ferry_crypto::rng::FerryRng;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    fn arb_pk() -> impl Strategy<Value = PublicKey> {
        any::<[u8; 32]>().prop_map(PublicKey)
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(o, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), p)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_filter("not v4-mapped", |(o, _)| Ipv6Addr::from(*o)
                    .to_ipv4_mapped()
                    .is_none())
                .prop_map(|(o, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), p)),
        ]
    }

    fn arb_udp_node() -> impl Strategy<Value = PackedNode> {
        (arb_addr(), arb_pk()).prop_map(|(a, k)| PackedNode::udp(a, k))
    }

    fn arb_node() -> impl Strategy<Value = PackedNode> {
        (arb_addr(), arb_pk(), any::<bool>()).prop_map(|(addr, public_key, tcp)| PackedNode {
            transport: if tcp { Transport::Tcp } else { Transport::Udp },
            addr,
            public_key,
        })
    }

    fn sealed(kind: DhtKind, plain: &[u8], seed: u64) -> (DhtEnvelope, KeyPair, KeyPair) {
        let mut rng = FerryRng::from_u64(seed);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let key = PrecomputedKey::new(&a.secret, &b.public);
        let env =
            DhtEnvelope::seal(kind, a.public, Nonce::random(&mut rng), &key, plain).expect("seal");
        (env, a, b)
    }

    proptest! {
        #[test]
        fn packed_node_round_trip(node in arb_node()) {
            let mut b = Vec::new();
            node.encode(&mut b);
            prop_assert_eq!(b.len(), node.encoded_len());
            let mut r = Reader::new(&b);
            prop_assert_eq!(PackedNode::decode(&mut r).expect("decode"), node);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn ping_round_trip(is_response in any::<bool>(), ping_id in any::<[u8; 8]>(), seed in any::<u64>()) {
            let p = PingPayload { is_response, ping_id };
            prop_assert_eq!(PingPayload::decode(&p.encode()).expect("decode"), p);
            let kind = if is_response { DhtKind::PingResponse } else { DhtKind::PingRequest };
            let (env, a, b) = sealed(kind, &p.encode(), seed);
            let bytes = env.encode();
            prop_assert_eq!(bytes.len(), PING_PACKET_SIZE);
            let back = DhtEnvelope::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &env);
            let key = PrecomputedKey::new(&b.secret, &a.public);
            prop_assert_eq!(PingPayload::decode(&back.open(&key).expect("open")).expect("decode"), p);
        }

        #[test]
        fn nodes_request_round_trip(target in arb_pk(), ping_id in any::<[u8; 8]>(), seed in any::<u64>()) {
            let p = NodesRequestPayload { target, ping_id };
            let (env, _, _) = sealed(DhtKind::NodesRequest, &p.encode(), seed);
            let bytes = env.encode();
            prop_assert_eq!(bytes.len(), NODES_REQUEST_PACKET_SIZE);
            prop_assert_eq!(DhtEnvelope::decode(&bytes).expect("decode"), env);
            prop_assert_eq!(NodesRequestPayload::decode(&p.encode()).expect("decode"), p);
        }

        #[test]
        fn nodes_response_round_trip(nodes in proptest::collection::vec(arb_udp_node(), 0..=4), ping_id in any::<[u8; 8]>(), seed in any::<u64>()) {
            let p = NodesResponsePayload { nodes, ping_id };
            let plain = p.encode();
            prop_assert_eq!(NodesResponsePayload::decode(&plain).expect("decode"), p.clone());
            let (env, _, _) = sealed(DhtKind::NodesResponse, &plain, seed);
            let bytes = env.encode();
            prop_assert_eq!(bytes.len(), ENVELOPE_OVERHEAD + plain.len());
            prop_assert_eq!(DhtEnvelope::decode(&bytes).expect("decode"), env);
        }

        #[test]
        fn dht_request_round_trip(receiver in arb_pk(), sender in arb_pk(), nonce in any::<[u8; 24]>(), ct in proptest::collection::vec(any::<u8>(), 17..900)) {
            let p = DhtRequest { receiver, sender, nonce: Nonce(nonce), ciphertext: ct };
            prop_assert_eq!(Packet::decode(&p.encode()).expect("decode"), Packet::DhtRequest(p));
        }

        #[test]
        fn seal_datagram_is_seal_then_encode(plain in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<u64>()) {
            let mut rng = FerryRng::from_u64(seed);
            let a = KeyPair::generate(&mut rng);
            let b = KeyPair::generate(&mut rng);
            let key = PrecomputedKey::new(&a.secret, &b.public);
            let nonce = Nonce::random(&mut rng);
            let env = DhtEnvelope::seal(DhtKind::NodesResponse, a.public, nonce, &key, &plain).expect("seal");
            let bytes = DhtEnvelope::seal_datagram(DhtKind::NodesResponse, a.public, nonce, &key, &plain).expect("seal");
            prop_assert_eq!(&bytes, &env.encode());
            // The receiver opens it in place to the same plaintext; a flipped bit fails.
            let theirs = PrecomputedKey::new(&b.secret, &a.public);
            let mut back = env.clone();
            prop_assert_eq!(back.open_in_place(&theirs).expect("open"), &plain[..]);
            let mut bad = env;
            bad.ciphertext[0] ^= 1;
            prop_assert!(bad.open_in_place(&theirs).is_err());
        }

        #[test]
        fn nat_ping_round_trip(is_response in any::<bool>(), id in any::<[u8; 8]>()) {
            let p = NatPing { is_response, id };
            prop_assert_eq!(NatPing::decode(&p.encode()).expect("decode"), p);
        }

        #[test]
        fn lan_and_bootstrap_round_trip(pk in arb_pk(), version in any::<u32>(), motd in proptest::collection::vec(any::<u8>(), 0..=256)) {
            let lan = Packet::LanDiscovery(LanDiscovery { public_key: pk });
            prop_assert_eq!(Packet::decode(&lan.encode()).expect("decode"), lan);
            prop_assume!(motd.len() != BOOTSTRAP_INFO_REQUEST_SIZE - 5);
            let resp = Packet::BootstrapInfo(BootstrapInfo::Response { version, motd });
            prop_assert_eq!(Packet::decode(&resp.encode()).expect("decode"), resp);
            let req = Packet::BootstrapInfo(BootstrapInfo::Request);
            prop_assert_eq!(Packet::decode(&req.encode()).expect("decode"), req);
        }

        /// Any bytes at all: decoding returns, never panics.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Packet::decode(&bytes);
            let _ = PingPayload::decode(&bytes);
            let _ = NodesRequestPayload::decode(&bytes);
            let _ = NodesResponsePayload::decode(&bytes);
            let _ = NatPing::decode(&bytes);
        }
    }

    #[test]
    fn nodes_response_rejects_bad_counts_and_tcp() {
        let mut plain = vec![5u8];
        plain.extend_from_slice(&[0; 8]);
        assert!(matches!(
            NodesResponsePayload::decode(&plain),
            Err(WireError::InvalidValue { .. })
        ));
        let tcp = PackedNode {
            transport: Transport::Tcp,
            addr: "1.2.3.4:5".parse().expect("addr"),
            public_key: PublicKey([1; 32]),
        };
        let mut plain = vec![1u8];
        tcp.encode(&mut plain);
        plain.extend_from_slice(&[0; 8]);
        assert!(NodesResponsePayload::decode(&plain).is_err());
        // Count says 2 but only one node is present.
        let udp = PackedNode::udp("1.2.3.4:5".parse().expect("addr"), PublicKey([1; 32]));
        let mut plain = vec![2u8];
        udp.encode(&mut plain);
        plain.extend_from_slice(&[0; 8]);
        assert!(NodesResponsePayload::decode(&plain).is_err());
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let mut ping = vec![0u8; PING_PACKET_SIZE + 1];
        ping[0] = 0;
        assert!(matches!(
            Packet::decode(&ping),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            Packet::decode(&[0x21; 34]),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            Packet::decode(&[0x93, 1, 2]),
            Err(WireError::UnknownKind(0x93))
        ));
        assert!(matches!(Packet::decode(&[]), Err(WireError::Truncated(_))));
    }
}
