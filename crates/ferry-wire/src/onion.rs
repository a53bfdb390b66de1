//! Onion packets (`tox-protocol.md` §4, spec §Onion; c-toxcore 0.2.18 `onion.c`,
//! `onion_announce.c`, `onion_client.c`, `friend_requests.c`).
//!
//! # Relaying over three hops, client → A → B → C → D
//!
//! | kind | hop | layout | size |
//! |---|---|---|---|
//! | 0x80 | client → A | `[0x80][nonce 24][our DHT pk 32][box_A(IP_Port_B ‖ PK1 ‖ box_B(…))]` | 227..=1400 (403 for an announce ✓pcap) |
//! | 0x81 | A → B | `[0x81][nonce][PK1][box_B(IP_Port_C ‖ PK2 ‖ box_C(…))][ret1 59]` | 219..=1400 |
//! | 0x82 | B → C | `[0x82][nonce][PK2][box_C(IP_Port_D ‖ data)][ret2 118]` | 211..=1400 |
//! | data | C → D | `data ‖ ret3 177` (data = 0x83 or 0x85 only) | |
//! | 0x8c | D → C | `[0x8c][ret3 177][response]` | 179..=1400 |
//! | 0x8d | C → B | `[0x8d][ret2 118][response]` | 120..=1400 |
//! | 0x8e | B → A | `[0x8e][ret1 59][response]` | 61..=1400 |
//! | response | A → client | the response itself (0x84 or 0x86) | |
//!
//! All layers share one random nonce; layer A is boxed with the client's DHT key, layers B and C
//! with fresh random key pairs PK1/PK2 of the path. A return blob is
//! `[nonce 24][secretbox(IP_Port 19 ‖ previous blob)]` (59/118/177 bytes): only its creator
//! reads it, so its content is opaque here.
//!
//! # Announce and data
//!
//! | kind | layout | size |
//! |---|---|---|
//! | 0x83 announce request | `[0x83][nonce][pk 32][box(pk's sk, D's DHT pk)(ping_id 32 ‖ searched pk 32 ‖ data pk 32 ‖ sendback 8)]` | 177 ✓pcap |
//! | 0x84 announce response | `[0x84][sendback 8][nonce][box(is_stored u8 ‖ ping_id or data pk 32 ‖ ≤ 4 packed nodes)]` | 82..=286 (121 with one IPv4 node ✓pcap) |
//! | 0x85 data request | `[0x85][destination long-term pk 32][nonce][tmp pk 32][box(tmp sk, destination data pk)(sender long-term pk 32 ‖ box(sender sk, destination long-term pk, same nonce)([id][payload]))]` | 106..=1174 (181 for a 23-character friend request ✓pcap) |
//! | 0x86 data response | `[0x86][nonce][tmp pk][same ciphertext]` | 122..=1069 (149 ✓pcap) |
//!
//! Onion data ids (§4.4): friend request `[0x20][nospam 4][message 1..=1016]`, DHT-PK
//! `[0x9c][no_replay u64 BE][DHT pk 32][≤ 4 packed nodes]` (80 bytes with one IPv4 node ✓pcap).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferry_crypto::{KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey};

use crate::node::{PackedNode, Transport, normalize};
use crate::{Reader, WireError, kind};

/// Size of an onion IP_Port: `[family u8][16-byte address][port u16 BE]` (`SIZE_IPPORT`).
pub const IP_PORT_SIZE: usize = 19;
/// Family byte of an IPv4 IP_Port (`TOX_AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// Family byte of an IPv6 IP_Port (`TOX_AF_INET6`).
pub const FAMILY_IPV6: u8 = 10;
/// Largest onion packet, in bytes (`ONION_MAX_PACKET_SIZE`).
pub const ONION_MAX_PACKET_SIZE: usize = 1400;
/// Return blob made by node A (`ONION_RETURN_1`): nonce + secretbox(IP_Port), 59 bytes.
pub const RETURN_1_SIZE: usize = NONCE_SIZE + IP_PORT_SIZE + MAC_SIZE;
/// Return blob made by node B (`ONION_RETURN_2`), 118 bytes.
pub const RETURN_2_SIZE: usize = RETURN_1_SIZE + NONCE_SIZE + IP_PORT_SIZE + MAC_SIZE;
/// Return blob made by node C (`ONION_RETURN_3`), 177 bytes.
pub const RETURN_3_SIZE: usize = RETURN_2_SIZE + NONCE_SIZE + IP_PORT_SIZE + MAC_SIZE;
/// Per-layer overhead: public key, IP_Port and MAC (`ONION_SEND_BASE`, 67 bytes).
pub const SEND_BASE: usize = KEY_SIZE + IP_PORT_SIZE + MAC_SIZE;
/// Overhead of a 0x80 packet after its kind byte (`ONION_SEND_1`, 225 bytes).
pub const SEND_1: usize = NONCE_SIZE + SEND_BASE * 3;
/// Overhead of a 0x81 packet after its kind byte (`ONION_SEND_2`, 217 bytes).
pub const SEND_2: usize = NONCE_SIZE + SEND_BASE * 2 + RETURN_1_SIZE;
/// Overhead of a 0x82 packet after its kind byte (`ONION_SEND_3`, 209 bytes).
pub const SEND_3: usize = NONCE_SIZE + SEND_BASE + RETURN_2_SIZE;
/// Largest data an onion path carries to D (`ONION_MAX_DATA_SIZE`, 1174 bytes).
pub const ONION_MAX_DATA_SIZE: usize = ONION_MAX_PACKET_SIZE - (SEND_1 + 1);
/// Largest response carried back (`ONION_RESPONSE_MAX_DATA_SIZE`, 1222 bytes).
pub const ONION_RESPONSE_MAX_DATA_SIZE: usize = ONION_MAX_PACKET_SIZE - (1 + RETURN_3_SIZE);
/// Size of the announce ping id (`ONION_PING_ID_SIZE`, a 32-byte keyed MAC).
pub const PING_ID_SIZE: usize = 32;
/// Size of the announce sendback data (`ONION_ANNOUNCE_SENDBACK_DATA_LENGTH`).
pub const SENDBACK_SIZE: usize = 8;
/// Plaintext of an announce request: ping id, searched pk, data pk, sendback (104 bytes).
pub const ANNOUNCE_REQUEST_PLAIN_SIZE: usize = PING_ID_SIZE + 2 * KEY_SIZE + SENDBACK_SIZE;
/// Size of an announce request 0x83 (`ONION_ANNOUNCE_REQUEST_SIZE`, 177 bytes).
pub const ANNOUNCE_REQUEST_SIZE: usize =
    1 + NONCE_SIZE + KEY_SIZE + ANNOUNCE_REQUEST_PLAIN_SIZE + MAC_SIZE;
/// Smallest announce response 0x84, no nodes (82 bytes).
pub const ANNOUNCE_RESPONSE_MIN_SIZE: usize =
    1 + SENDBACK_SIZE + NONCE_SIZE + 1 + PING_ID_SIZE + MAC_SIZE;
/// Largest announce response 0x84: four IPv6 nodes (286 bytes).
pub const ANNOUNCE_RESPONSE_MAX_SIZE: usize = ANNOUNCE_RESPONSE_MIN_SIZE + MAX_ANNOUNCE_NODES * 51;
/// Most nodes in an announce response or a DHT-PK packet (`MAX_SENT_NODES`).
pub const MAX_ANNOUNCE_NODES: usize = 4;
/// Header of a data request 0x85 before its payload: kind, destination, nonce, tmp pk, MAC
/// (`ONION_DATA_REQUEST_MIN_SIZE`, 105 bytes).
pub const DATA_REQUEST_MIN_SIZE: usize = 1 + KEY_SIZE + NONCE_SIZE + KEY_SIZE + MAC_SIZE;
/// Largest data request payload (`MAX_DATA_REQUEST_SIZE`, 1069 bytes).
pub const MAX_DATA_REQUEST_SIZE: usize = ONION_MAX_DATA_SIZE - DATA_REQUEST_MIN_SIZE;
/// Header of a data response 0x86: kind, nonce, tmp pk, MAC (73 bytes).
pub const DATA_RESPONSE_MIN_SIZE: usize = 1 + NONCE_SIZE + KEY_SIZE + MAC_SIZE;
/// What the inner layer of onion data adds: sender long-term pk + MAC (48 bytes).
pub const DATA_IN_RESPONSE_MIN_SIZE: usize = KEY_SIZE + MAC_SIZE;
/// Largest onion data `[id][payload]` (`ONION_CLIENT_MAX_DATA_SIZE`, 1021 bytes).
pub const ONION_CLIENT_MAX_DATA_SIZE: usize = MAX_DATA_REQUEST_SIZE - DATA_IN_RESPONSE_MIN_SIZE;
/// Longest friend request message (`TOX_MAX_FRIEND_REQUEST_LENGTH`, 1016 bytes).
pub const MAX_FRIEND_REQUEST_MESSAGE: usize = ONION_CLIENT_MAX_DATA_SIZE - 5;
/// Onion data id of a friend request (`CRYPTO_PACKET_FRIEND_REQ`).
pub const DATA_ID_FRIEND_REQUEST: u8 = 0x20;
/// Onion data id (and DHT request id) of a DHT-PK packet (`CRYPTO_PACKET_DHTPK`).
pub const DATA_ID_DHT_PK: u8 = 0x9c;
/// Smallest DHT-PK plaintext: id, no_replay, DHT pk (41 bytes).
pub const DHT_PK_MIN_SIZE: usize = 1 + 8 + KEY_SIZE;

/// One of the three return blobs (59, 118 or 177 bytes), opaque to everyone but its creator.
pub type Return1 = [u8; RETURN_1_SIZE];
/// Return blob made by node B.
pub type Return2 = [u8; RETURN_2_SIZE];
/// Return blob made by node C.
pub type Return3 = [u8; RETURN_3_SIZE];

/// An onion IP_Port (19 bytes): `[family 2 = IPv4, 10 = IPv6][address: IPv4 + 12 zero bytes, or
/// IPv6 16][port u16 BE]` (`onion.c` `ipport_pack`). Only UDP families are valid in forward
/// layers; an IPv4-mapped IPv6 address is packed as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPort(pub SocketAddr);

impl IpPort {
    /// Appends the 19 bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let addr = normalize(self.0);
        match addr.ip() {
            IpAddr::V4(ip) => {
                out.push(FAMILY_IPV4);
                out.extend_from_slice(&ip.octets());
                out.extend_from_slice(&[0; 12]);
            }
            IpAddr::V6(ip) => {
                out.push(FAMILY_IPV6);
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&addr.port().to_be_bytes());
    }

    /// Reads 19 bytes. The 12 bytes after an IPv4 address are ignored, as in c-toxcore.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for a family other than 2 or 10, [`WireError::Truncated`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let family = r.u8("IP_Port family")?;
        let raw: [u8; 16] = r.array("IP_Port address")?;
        let port = r.u16_be("IP_Port port")?;
        let ip = match family {
            FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
            FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(raw)),
            other => {
                return Err(WireError::InvalidValue {
                    what: "IP_Port family",
                    value: other.into(),
                });
            }
        };
        Ok(Self(normalize(SocketAddr::new(ip, port))))
    }
}

fn check_kind(bytes: &[u8], want: u8) -> Result<(), WireError> {
    match bytes.first() {
        None => Err(WireError::Truncated("kind")),
        Some(&k) if k == want => Ok(()),
        Some(&k) => Err(WireError::UnknownKind(k)),
    }
}

fn check_len(
    bytes: &[u8],
    min_exclusive: usize,
    max: usize,
    what: &'static str,
) -> Result<(), WireError> {
    if bytes.len() <= min_exclusive || bytes.len() > max {
        return Err(WireError::BadLength {
            what,
            len: bytes.len(),
        });
    }
    Ok(())
}

/// An onion request at one of its three relays (0x80 at A, 0x81 at B, 0x82 at C): the shared
/// nonce, the key the layer is boxed with (client DHT pk, PK1 or PK2), the boxed layer and the
/// return blob accumulated so far (none at A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionRequest {
    /// Which layer: 0 (0x80, at A), 1 (0x81, at B) or 2 (0x82, at C).
    pub layer: u8,
    /// The nonce shared by all layers.
    pub nonce: Nonce,
    /// The public key this layer is boxed with.
    pub public_key: PublicKey,
    /// MAC ‖ ciphertext of the layer.
    pub ciphertext: Vec<u8>,
    /// The return blob so far: empty at A, 59 bytes at B, 118 bytes at C.
    pub ret: Vec<u8>,
}

impl OnionRequest {
    /// The kind byte of `layer` (0x80, 0x81, 0x82).
    pub fn kind_of(layer: u8) -> u8 {
        kind::ONION_REQUEST_0 + layer.min(2)
    }

    fn ret_len(layer: u8) -> usize {
        match layer {
            0 => 0,
            1 => RETURN_1_SIZE,
            _ => RETURN_2_SIZE,
        }
    }

    /// Parses a 0x80, 0x81 or 0x82 datagram with c-toxcore's length limits
    /// (`handle_send_initial`/`_1`/`_2`: longer than 1 + [`SEND_1`]/[`SEND_2`]/[`SEND_3`], at most
    /// 1400 bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] for another first byte, [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let k = *bytes.first().ok_or(WireError::Truncated("kind"))?;
        let (layer, min) = match k {
            kind::ONION_REQUEST_0 => (0, SEND_1),
            kind::ONION_REQUEST_1 => (1, SEND_2),
            kind::ONION_REQUEST_2 => (2, SEND_3),
            other => return Err(WireError::UnknownKind(other)),
        };
        check_len(bytes, 1 + min, ONION_MAX_PACKET_SIZE, "onion request")?;
        let mut r = Reader::new(&bytes[1..]);
        let nonce = Nonce(r.array("nonce")?);
        let public_key = PublicKey(r.array("public key")?);
        let rest = r.rest();
        let (ct, ret) = rest.split_at(rest.len() - Self::ret_len(layer));
        Ok(Self {
            layer,
            nonce,
            public_key,
            ciphertext: ct.to_vec(),
            ret: ret.to_vec(),
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(1 + NONCE_SIZE + KEY_SIZE + self.ciphertext.len() + self.ret.len());
        out.push(Self::kind_of(self.layer));
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out.extend_from_slice(&self.ret);
        out
    }
}

/// The plaintext of a forward layer at A or B: `[IP_Port of the next hop 19][next layer's public
/// key 32][next layer's box]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionLayer {
    /// Where to send the next layer.
    pub next: IpPort,
    /// The public key the next layer is boxed with (PK1 or PK2).
    pub public_key: PublicKey,
    /// MAC ‖ ciphertext of the next layer.
    pub ciphertext: Vec<u8>,
}

impl OnionLayer {
    /// Emits the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IP_PORT_SIZE + KEY_SIZE + self.ciphertext.len());
        self.next.encode(&mut out);
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the plaintext; the next box must hold at least a MAC.
    ///
    /// # Errors
    /// Length errors, a bad IP_Port family.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let next = IpPort::decode(&mut r)?;
        let public_key = PublicKey(r.array("public key")?);
        let ciphertext = r.rest();
        if ciphertext.len() <= MAC_SIZE {
            return Err(WireError::Truncated("onion layer box"));
        }
        Ok(Self {
            next,
            public_key,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// The plaintext of the innermost layer at C: `[IP_Port of D 19][data]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionExit {
    /// The destination D.
    pub destination: IpPort,
    /// What C sends to D (an announce or data request), at least 1 byte.
    pub data: Vec<u8>,
}

impl OnionExit {
    /// Emits the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IP_PORT_SIZE + self.data.len());
        self.destination.encode(&mut out);
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// Length errors, a bad IP_Port family, empty data.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let destination = IpPort::decode(&mut r)?;
        let data = r.rest();
        if data.is_empty() {
            return Err(WireError::Truncated("onion data"));
        }
        Ok(Self {
            destination,
            data: data.to_vec(),
        })
    }
}

/// An onion response on its way back (0x8c at C, 0x8d at B, 0x8e at A): the return blob made by
/// the receiving relay and the response (0x84 or 0x86) for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnionResponse {
    /// 3 (0x8c, ret3 177 bytes), 2 (0x8d, ret2 118) or 1 (0x8e, ret1 59).
    pub layer: u8,
    /// The return blob, `RETURN_{layer}` bytes.
    pub ret: Vec<u8>,
    /// The response carried, at least 1 byte.
    pub data: Vec<u8>,
}

impl OnionResponse {
    /// Kind byte of `layer` 3, 2, 1: 0x8c, 0x8d, 0x8e.
    pub fn kind_of(layer: u8) -> u8 {
        match layer {
            3 => kind::ONION_RESPONSE_3,
            2 => kind::ONION_RESPONSE_2,
            _ => kind::ONION_RESPONSE_1,
        }
    }

    /// Size of the return blob of `layer`.
    pub fn ret_len(layer: u8) -> usize {
        match layer {
            3 => RETURN_3_SIZE,
            2 => RETURN_2_SIZE,
            _ => RETURN_1_SIZE,
        }
    }

    /// Parses a 0x8c, 0x8d or 0x8e datagram (longer than 1 + blob, at most 1400 bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let k = *bytes.first().ok_or(WireError::Truncated("kind"))?;
        let layer = match k {
            kind::ONION_RESPONSE_3 => 3,
            kind::ONION_RESPONSE_2 => 2,
            kind::ONION_RESPONSE_1 => 1,
            other => return Err(WireError::UnknownKind(other)),
        };
        let rl = Self::ret_len(layer);
        check_len(bytes, 1 + rl, ONION_MAX_PACKET_SIZE, "onion response")?;
        Ok(Self {
            layer,
            ret: bytes[1..1 + rl].to_vec(),
            data: bytes[1 + rl..].to_vec(),
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.ret.len() + self.data.len());
        out.push(Self::kind_of(self.layer));
        out.extend_from_slice(&self.ret);
        out.extend_from_slice(&self.data);
        out
    }
}

/// Announce request 0x83 (177 bytes): `[0x83][nonce 24][pk 32][box(pk's sk, D's DHT pk)(104-byte
/// [`AnnounceRequestPayload`])]`. `pk` is the long-term key when announcing, a per-friend random
/// key when searching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The random nonce.
    pub nonce: Nonce,
    /// The requester's key (long-term when announcing, temporary when searching).
    pub public_key: PublicKey,
    /// MAC ‖ ciphertext, 120 bytes.
    pub ciphertext: Vec<u8>,
}

impl AnnounceRequest {
    /// Parses exactly 177 bytes.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_kind(bytes, kind::ANNOUNCE_REQUEST)?;
        if bytes.len() != ANNOUNCE_REQUEST_SIZE {
            return Err(WireError::BadLength {
                what: "announce request",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(&bytes[1..]);
        let nonce = Nonce(r.array("nonce")?);
        let public_key = PublicKey(r.array("public key")?);
        Ok(Self {
            nonce,
            public_key,
            ciphertext: r.rest().to_vec(),
        })
    }

    /// Parses what node D receives from C: the 177-byte request followed by ret3 (354 bytes in
    /// all, `ANNOUNCE_REQUEST_SIZE_RECV`).
    ///
    /// # Errors
    /// As [`AnnounceRequest::decode`].
    pub fn decode_with_return(bytes: &[u8]) -> Result<(Self, Return3), WireError> {
        if bytes.len() != ANNOUNCE_REQUEST_SIZE + RETURN_3_SIZE {
            check_kind(bytes, kind::ANNOUNCE_REQUEST)?;
            return Err(WireError::BadLength {
                what: "announce request with return",
                len: bytes.len(),
            });
        }
        let (req, ret) = bytes.split_at(ANNOUNCE_REQUEST_SIZE);
        let mut ret3 = [0u8; RETURN_3_SIZE];
        ret3.copy_from_slice(ret);
        Ok((Self::decode(req)?, ret3))
    }

    /// Emits the 177 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCE_REQUEST_SIZE);
        out.push(kind::ANNOUNCE_REQUEST);
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(self.public_key.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Boxes `payload` with `key` (requester sk ↔ D's DHT pk).
    ///
    /// # Errors
    /// Only if encryption fails ([`WireError::Decrypt`] stands in).
    pub fn seal(
        key: &PrecomputedKey,
        nonce: Nonce,
        public_key: PublicKey,
        payload: &AnnounceRequestPayload,
    ) -> Result<Self, WireError> {
        Ok(Self {
            nonce,
            public_key,
            ciphertext: key.encrypt(&nonce, &payload.encode())?,
        })
    }

    /// Decrypts with `key` (D's DHT sk ↔ requester pk).
    ///
    /// # Errors
    /// [`WireError::Decrypt`], or a malformed payload.
    pub fn open(&self, key: &PrecomputedKey) -> Result<AnnounceRequestPayload, WireError> {
        AnnounceRequestPayload::decode(&key.decrypt(&self.nonce, &self.ciphertext)?)
    }
}

/// Plaintext of an announce request (104 bytes): `[ping_id 32][searched pk 32][data pk 32]
/// [sendback 8]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceRequestPayload {
    /// The ping id D gave us last time (zeros the first time, and always when searching).
    pub ping_id: [u8; PING_ID_SIZE],
    /// The long-term key looked up (ours when announcing, the friend's when searching).
    pub search_pk: PublicKey,
    /// The key friends encrypt data to (zeros when searching).
    pub data_pk: PublicKey,
    /// Opaque, echoed in the response.
    pub sendback: [u8; SENDBACK_SIZE],
}

impl AnnounceRequestPayload {
    /// Emits the 104 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ANNOUNCE_REQUEST_PLAIN_SIZE);
        out.extend_from_slice(&self.ping_id);
        out.extend_from_slice(self.search_pk.as_bytes());
        out.extend_from_slice(self.data_pk.as_bytes());
        out.extend_from_slice(&self.sendback);
        out
    }

    /// Parses exactly 104 bytes.
    ///
    /// # Errors
    /// Length errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let p = Self {
            ping_id: r.array("ping id")?,
            search_pk: PublicKey(r.array("searched public key")?),
            data_pk: PublicKey(r.array("data public key")?),
            sendback: r.array("sendback")?,
        };
        r.finish()?;
        Ok(p)
    }
}

/// Announce response 0x84: `[0x84][sendback 8][nonce 24][box(is_stored ‖ 32 ‖ nodes)]`,
/// 82..=286 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// The request's sendback, echoed.
    pub sendback: [u8; SENDBACK_SIZE],
    /// The random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext.
    pub ciphertext: Vec<u8>,
}

impl AnnounceResponse {
    /// Parses a datagram of 82..=286 bytes.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_kind(bytes, kind::ANNOUNCE_RESPONSE)?;
        if !(ANNOUNCE_RESPONSE_MIN_SIZE..=ANNOUNCE_RESPONSE_MAX_SIZE).contains(&bytes.len()) {
            return Err(WireError::BadLength {
                what: "announce response",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            sendback: r.array("sendback")?,
            nonce: Nonce(r.array("nonce")?),
            ciphertext: r.rest().to_vec(),
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + SENDBACK_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.push(kind::ANNOUNCE_RESPONSE);
        out.extend_from_slice(&self.sendback);
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Boxes `payload` with `key` (D's DHT sk ↔ requester pk).
    ///
    /// # Errors
    /// Only if encryption fails.
    pub fn seal(
        key: &PrecomputedKey,
        nonce: Nonce,
        sendback: [u8; SENDBACK_SIZE],
        payload: &AnnounceResponsePayload,
    ) -> Result<Self, WireError> {
        Ok(Self {
            sendback,
            nonce,
            ciphertext: key.encrypt(&nonce, &payload.encode())?,
        })
    }

    /// Decrypts with `key` (requester sk ↔ D's DHT pk).
    ///
    /// # Errors
    /// [`WireError::Decrypt`], or a malformed payload.
    pub fn open(&self, key: &PrecomputedKey) -> Result<AnnounceResponsePayload, WireError> {
        AnnounceResponsePayload::decode(&key.decrypt(&self.nonce, &self.ciphertext)?)
    }
}

/// `is_stored` of an announce response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnnounceStatus {
    /// 0: the searched key is not announced here; the field is a fresh ping id.
    Failed,
    /// 1: the searched key is announced here; the field is its data public key.
    Found,
    /// 2: the requester is announced here; the field is a fresh ping id.
    Announced,
}

impl AnnounceStatus {
    /// The wire byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Failed => 0,
            Self::Found => 1,
            Self::Announced => 2,
        }
    }
}

/// Plaintext of an announce response: `[is_stored u8][ping id or data pk 32][≤ 4 packed UDP
/// nodes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponsePayload {
    /// What `is_stored` says.
    pub status: AnnounceStatus,
    /// A ping id (status 0 and 2) or the searched key's data public key (status 1).
    pub ping_id_or_key: [u8; PING_ID_SIZE],
    /// Up to 4 nodes close to the searched key.
    pub nodes: Vec<PackedNode>,
}

impl AnnounceResponsePayload {
    /// Emits the plaintext (only the first 4 nodes are written).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + PING_ID_SIZE + 4 * 51);
        out.push(self.status.byte());
        out.extend_from_slice(&self.ping_id_or_key);
        for n in self.nodes.iter().take(MAX_ANNOUNCE_NODES) {
            n.encode(&mut out);
        }
        out
    }

    /// Parses the plaintext: the nodes must fill it exactly and be UDP.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for an is_stored above 2, a TCP node or more than 4 nodes;
    /// length errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let status = match r.u8("is_stored")? {
            0 => AnnounceStatus::Failed,
            1 => AnnounceStatus::Found,
            2 => AnnounceStatus::Announced,
            v => {
                return Err(WireError::InvalidValue {
                    what: "is_stored",
                    value: v.into(),
                });
            }
        };
        let ping_id_or_key = r.array("ping id or data public key")?;
        let nodes = decode_nodes(&mut r, false)?;
        Ok(Self {
            status,
            ping_id_or_key,
            nodes,
        })
    }
}

/// Reads packed nodes until the end: at most 4, UDP only unless `tcp_ok`.
fn decode_nodes(r: &mut Reader<'_>, tcp_ok: bool) -> Result<Vec<PackedNode>, WireError> {
    let mut nodes = Vec::new();
    while r.remaining() > 0 {
        if nodes.len() == MAX_ANNOUNCE_NODES {
            return Err(WireError::Trailing(r.remaining()));
        }
        let n = PackedNode::decode(r)?;
        if !tcp_ok && n.transport != Transport::Udp {
            return Err(WireError::InvalidValue {
                what: "node transport",
                value: 1,
            });
        }
        nodes.push(n);
    }
    Ok(nodes)
}

/// Data request 0x85: `[0x85][destination long-term pk 32][nonce 24][tmp pk 32][box(tmp sk,
/// destination data pk)(`[`DataInner`]`)]`, 106..=1174 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRequest {
    /// Whose announce entry routes it (the destination's long-term key).
    pub destination: PublicKey,
    /// The nonce (shared with the inner box).
    pub nonce: Nonce,
    /// A fresh temporary public key.
    pub temp_pk: PublicKey,
    /// MAC ‖ ciphertext.
    pub ciphertext: Vec<u8>,
}

impl DataRequest {
    /// Parses a data request as the client builds it (106..=[`ONION_MAX_DATA_SIZE`] bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_kind(bytes, kind::DATA_REQUEST)?;
        check_len(
            bytes,
            DATA_REQUEST_MIN_SIZE,
            ONION_MAX_DATA_SIZE,
            "data request",
        )?;
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            destination: PublicKey(r.array("destination public key")?),
            nonce: Nonce(r.array("nonce")?),
            temp_pk: PublicKey(r.array("temporary public key")?),
            ciphertext: r.rest().to_vec(),
        })
    }

    /// Parses what node D receives: the request followed by ret3 (longer than 282 bytes, at most
    /// 1400, `handle_data_request`).
    ///
    /// # Errors
    /// As [`DataRequest::decode`].
    pub fn decode_with_return(bytes: &[u8]) -> Result<(Self, Return3), WireError> {
        check_kind(bytes, kind::DATA_REQUEST)?;
        check_len(
            bytes,
            DATA_REQUEST_MIN_SIZE + RETURN_3_SIZE,
            ONION_MAX_PACKET_SIZE,
            "data request with return",
        )?;
        let (req, ret) = bytes.split_at(bytes.len() - RETURN_3_SIZE);
        let mut ret3 = [0u8; RETURN_3_SIZE];
        ret3.copy_from_slice(ret);
        Ok((Self::decode(req)?, ret3))
    }

    /// Emits the request.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 2 * KEY_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.push(kind::DATA_REQUEST);
        out.extend_from_slice(self.destination.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(self.temp_pk.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// What D sends down the destination's return path: `[0x86][nonce][tmp pk][ciphertext]`.
    pub fn to_response(&self) -> DataResponse {
        DataResponse {
            nonce: self.nonce,
            temp_pk: self.temp_pk,
            ciphertext: self.ciphertext.clone(),
        }
    }
}

/// Data response 0x86: `[0x86][nonce 24][tmp pk 32][box(tmp sk, our data pk)(`[`DataInner`]`)]`,
/// 122..=1069 bytes (`handle_data_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataResponse {
    /// The nonce (shared with the inner box).
    pub nonce: Nonce,
    /// The sender's temporary public key.
    pub temp_pk: PublicKey,
    /// MAC ‖ ciphertext.
    pub ciphertext: Vec<u8>,
}

impl DataResponse {
    /// Parses a datagram.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`], [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_kind(bytes, kind::DATA_RESPONSE)?;
        check_len(
            bytes,
            DATA_RESPONSE_MIN_SIZE + DATA_IN_RESPONSE_MIN_SIZE,
            MAX_DATA_REQUEST_SIZE,
            "data response",
        )?;
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            nonce: Nonce(r.array("nonce")?),
            temp_pk: PublicKey(r.array("temporary public key")?),
            ciphertext: r.rest().to_vec(),
        })
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + KEY_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.push(kind::DATA_RESPONSE);
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(self.temp_pk.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }
}

/// The plaintext of the outer box of onion data: `[sender long-term pk 32][box(sender sk,
/// receiver long-term pk, same nonce)([id][payload])]`. The same layout (with its own nonce in
/// front, see [`DhtPkEnvelope`]) carries DHT-PK over the DHT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataInner {
    /// The sender's long-term public key.
    pub sender: PublicKey,
    /// MAC ‖ ciphertext of `[id][payload]`.
    pub ciphertext: Vec<u8>,
}

impl DataInner {
    /// Emits the plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_SIZE + self.ciphertext.len());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses it; the inner box must hold at least the MAC and one byte.
    ///
    /// # Errors
    /// Length errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let sender = PublicKey(r.array("sender public key")?);
        let ct = r.rest();
        if ct.len() <= MAC_SIZE {
            return Err(WireError::Truncated("onion data inner box"));
        }
        Ok(Self {
            sender,
            ciphertext: ct.to_vec(),
        })
    }
}

/// DHT-PK carried by a DHT request (0x20, request id 0x9c): the DHT request's data is
/// `[sender long-term pk 32][nonce 24][box(sender long-term sk, receiver long-term pk)(DHT-PK
/// plaintext incl. its 0x9c)]` (`send_dht_dhtpk`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtPkEnvelope {
    /// The sender's long-term key.
    pub sender: PublicKey,
    /// Random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext.
    pub ciphertext: Vec<u8>,
}

impl DhtPkEnvelope {
    /// Emits the bytes after the request id.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(KEY_SIZE + NONCE_SIZE + self.ciphertext.len());
        out.extend_from_slice(self.sender.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses the bytes after the request id; the box must fit a DHT-PK plaintext
    /// (41..=245 bytes, `handle_dht_dhtpk`).
    ///
    /// # Errors
    /// Length errors.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let sender = PublicKey(r.array("sender public key")?);
        let nonce = Nonce(r.array("nonce")?);
        let ct = r.rest();
        let plain = ct.len().saturating_sub(MAC_SIZE);
        if ct.len() < MAC_SIZE || !(DHT_PK_MIN_SIZE..=DHT_PK_MIN_SIZE + 4 * 51).contains(&plain) {
            return Err(WireError::BadLength {
                what: "DHT-PK envelope",
                len: bytes.len(),
            });
        }
        Ok(Self {
            sender,
            nonce,
            ciphertext: ct.to_vec(),
        })
    }
}

/// What onion data (and DHT-PK over the DHT) carries, by its first byte (§4.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnionData {
    /// 0x20: `[0x20][nospam 4][message 1..=1016]`.
    FriendRequest {
        /// The nospam of the Tox ID the sender used.
        nospam: [u8; 4],
        /// The message, 1..=1016 bytes.
        message: Vec<u8>,
    },
    /// 0x9c: `[0x9c][no_replay u64 BE][DHT pk 32][≤ 4 packed nodes, UDP or TCP]`.
    DhtPk(DhtPk),
}

/// A DHT-PK announcement: the sender's current DHT key and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtPk {
    /// Monotonic per sender (c-toxcore sends its monotonic clock in seconds); replays are dropped.
    pub no_replay: u64,
    /// The sender's DHT public key.
    pub dht_pk: PublicKey,
    /// Up to 4 nodes: TCP relays (types 130/138) first, then DHT nodes close to the sender.
    pub nodes: Vec<PackedNode>,
}

impl OnionData {
    /// Emits `[id][payload]`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::FriendRequest { nospam, message } => {
                let mut out = Vec::with_capacity(5 + message.len());
                out.push(DATA_ID_FRIEND_REQUEST);
                out.extend_from_slice(nospam);
                out.extend_from_slice(message);
                out
            }
            Self::DhtPk(p) => {
                let mut out = Vec::with_capacity(DHT_PK_MIN_SIZE + 4 * 51);
                out.push(DATA_ID_DHT_PK);
                out.extend_from_slice(&p.no_replay.to_be_bytes());
                out.extend_from_slice(p.dht_pk.as_bytes());
                for n in p.nodes.iter().take(MAX_ANNOUNCE_NODES) {
                    n.encode(&mut out);
                }
                out
            }
        }
    }

    /// Parses `[id][payload]`.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] for ids other than 0x20 and 0x9c (the caller ignores them);
    /// length or node errors otherwise.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        match r.u8("onion data id")? {
            DATA_ID_FRIEND_REQUEST => {
                let nospam = r.array("nospam")?;
                let message = r.rest();
                if message.is_empty() || message.len() > MAX_FRIEND_REQUEST_MESSAGE {
                    return Err(WireError::BadLength {
                        what: "friend request message",
                        len: message.len(),
                    });
                }
                Ok(Self::FriendRequest {
                    nospam,
                    message: message.to_vec(),
                })
            }
            DATA_ID_DHT_PK => {
                let no_replay = u64::from_be_bytes(r.array("no_replay")?);
                let dht_pk = PublicKey(r.array("DHT public key")?);
                let nodes = decode_nodes(&mut r, true)?;
                Ok(Self::DhtPk(DhtPk {
                    no_replay,
                    dht_pk,
                    nodes,
                }))
            }
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crypto::KeyPair;
    use ferry_crypto::rng::FerryRng;
    use proptest::prelude::*;

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

    fn arb_node(tcp: bool) -> impl Strategy<Value = PackedNode> {
        (arb_addr(), arb_pk(), any::<bool>()).prop_map(move |(addr, public_key, t)| PackedNode {
            transport: if tcp && t {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            addr,
            public_key,
        })
    }

    fn arb_status() -> impl Strategy<Value = AnnounceStatus> {
        prop_oneof![
            Just(AnnounceStatus::Failed),
            Just(AnnounceStatus::Found),
            Just(AnnounceStatus::Announced)
        ]
    }

    fn keys(seed: u64) -> (KeyPair, KeyPair) {
        let mut rng = FerryRng::from_u64(seed);
        (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng))
    }

    proptest! {
        #[test]
        fn ip_port_round_trip(addr in arb_addr()) {
            let mut b = Vec::new();
            IpPort(addr).encode(&mut b);
            prop_assert_eq!(b.len(), IP_PORT_SIZE);
            prop_assert_eq!(IpPort::decode(&mut Reader::new(&b)).expect("decode"), IpPort(addr));
        }

        #[test]
        fn onion_request_round_trip(layer in 0u8..3, nonce in any::<[u8; 24]>(), pk in arb_pk(),
                                    extra in proptest::collection::vec(any::<u8>(), 1..900)) {
            let ret_len = OnionRequest::ret_len(layer);
            let min = [SEND_1, SEND_2, SEND_3][usize::from(layer)];
            // Ciphertext long enough to pass the minimum: min − nonce − pk − ret + extra.
            let ct_len = min - NONCE_SIZE - KEY_SIZE - ret_len + extra.len();
            let mut ct = extra.clone();
            ct.resize(ct_len, 7);
            let p = OnionRequest { layer, nonce: Nonce(nonce), public_key: pk, ciphertext: ct, ret: vec![9; ret_len] };
            let bytes = p.encode();
            prop_assume!(bytes.len() <= ONION_MAX_PACKET_SIZE);
            prop_assert_eq!(OnionRequest::decode(&bytes).expect("decode"), p);
        }

        #[test]
        fn onion_layers_round_trip(addr in arb_addr(), pk in arb_pk(), ct in proptest::collection::vec(any::<u8>(), 17..300)) {
            let l = OnionLayer { next: IpPort(addr), public_key: pk, ciphertext: ct.clone() };
            prop_assert_eq!(OnionLayer::decode(&l.encode()).expect("decode"), l);
            let e = OnionExit { destination: IpPort(addr), data: ct };
            prop_assert_eq!(OnionExit::decode(&e.encode()).expect("decode"), e);
        }

        #[test]
        fn onion_response_round_trip(layer in 1u8..=3, data in proptest::collection::vec(any::<u8>(), 1..1000)) {
            let r = OnionResponse { layer, ret: vec![3; OnionResponse::ret_len(layer)], data };
            let bytes = r.encode();
            prop_assume!(bytes.len() <= ONION_MAX_PACKET_SIZE);
            prop_assert_eq!(OnionResponse::decode(&bytes).expect("decode"), r);
        }

        #[test]
        fn announce_round_trip(seed in any::<u64>(), ping_id in any::<[u8; 32]>(), search in arb_pk(), data in arb_pk(),
                               sendback in any::<[u8; 8]>(), status in arb_status(),
                               nodes in proptest::collection::vec(arb_node(false), 0..=4)) {
            let (a, d) = keys(seed);
            let ka = PrecomputedKey::new(&a.secret, &d.public);
            let kd = PrecomputedKey::new(&d.secret, &a.public);
            let payload = AnnounceRequestPayload { ping_id, search_pk: search, data_pk: data, sendback };
            let req = AnnounceRequest::seal(&ka, Nonce([1; 24]), a.public, &payload).expect("seal");
            let bytes = req.encode();
            prop_assert_eq!(bytes.len(), ANNOUNCE_REQUEST_SIZE);
            let back = AnnounceRequest::decode(&bytes).expect("decode");
            prop_assert_eq!(back.open(&kd).expect("open"), payload);
            let mut with_ret = bytes.clone();
            with_ret.extend_from_slice(&[5; RETURN_3_SIZE]);
            let (r2, ret) = AnnounceRequest::decode_with_return(&with_ret).expect("decode");
            prop_assert_eq!(r2, req);
            prop_assert_eq!(ret, [5; RETURN_3_SIZE]);

            let rp = AnnounceResponsePayload { status, ping_id_or_key: ping_id, nodes };
            let resp = AnnounceResponse::seal(&kd, Nonce([2; 24]), sendback, &rp).expect("seal");
            let bytes = resp.encode();
            let back = AnnounceResponse::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &resp);
            prop_assert_eq!(back.open(&ka).expect("open"), rp);
        }

        #[test]
        fn data_round_trip(dest in arb_pk(), nonce in any::<[u8; 24]>(), tmp in arb_pk(),
                           ct in proptest::collection::vec(any::<u8>(), 65..=996)) {
            let req = DataRequest { destination: dest, nonce: Nonce(nonce), temp_pk: tmp, ciphertext: ct };
            let bytes = req.encode();
            prop_assume!(bytes.len() <= ONION_MAX_DATA_SIZE);
            prop_assert_eq!(DataRequest::decode(&bytes).expect("decode"), req.clone());
            let mut with_ret = bytes.clone();
            with_ret.extend_from_slice(&[1; RETURN_3_SIZE]);
            prop_assert_eq!(DataRequest::decode_with_return(&with_ret).expect("decode").0, req.clone());
            let resp = req.to_response();
            let rb = resp.encode();
            prop_assert_eq!(rb.len(), bytes.len() - KEY_SIZE);
            prop_assert_eq!(DataResponse::decode(&rb).expect("decode"), resp);
        }

        #[test]
        fn onion_data_round_trip(nospam in any::<[u8; 4]>(), msg in proptest::collection::vec(any::<u8>(), 1..=1016),
                                 no_replay in any::<u64>(), dht_pk in arb_pk(),
                                 nodes in proptest::collection::vec(arb_node(true), 0..=4)) {
            let fr = OnionData::FriendRequest { nospam, message: msg };
            prop_assert_eq!(OnionData::decode(&fr.encode()).expect("decode"), fr);
            let pk = OnionData::DhtPk(DhtPk { no_replay, dht_pk, nodes });
            prop_assert_eq!(OnionData::decode(&pk.encode()).expect("decode"), pk);
        }

        #[test]
        fn inner_and_envelope_round_trip(sender in arb_pk(), nonce in any::<[u8; 24]>(),
                                         ct in proptest::collection::vec(any::<u8>(), 57..=260)) {
            let i = DataInner { sender, ciphertext: ct.clone() };
            prop_assert_eq!(DataInner::decode(&i.encode()).expect("decode"), i);
            let e = DhtPkEnvelope { sender, nonce: Nonce(nonce), ciphertext: ct };
            prop_assert_eq!(DhtPkEnvelope::decode(&e.encode()).expect("decode"), e);
        }

        /// Any bytes at all: every decoder returns, never panics.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = OnionRequest::decode(&bytes);
            let _ = OnionLayer::decode(&bytes);
            let _ = OnionExit::decode(&bytes);
            let _ = OnionResponse::decode(&bytes);
            let _ = AnnounceRequest::decode(&bytes);
            let _ = AnnounceRequest::decode_with_return(&bytes);
            let _ = AnnounceRequestPayload::decode(&bytes);
            let _ = AnnounceResponse::decode(&bytes);
            let _ = AnnounceResponsePayload::decode(&bytes);
            let _ = DataRequest::decode(&bytes);
            let _ = DataRequest::decode_with_return(&bytes);
            let _ = DataResponse::decode(&bytes);
            let _ = DataInner::decode(&bytes);
            let _ = DhtPkEnvelope::decode(&bytes);
            let _ = OnionData::decode(&bytes);
        }
    }

    /// The ✓pcap sizes of `tox-protocol.md` §4.
    #[test]
    fn sizes_match_capture() {
        assert_eq!(RETURN_1_SIZE, 59);
        assert_eq!(RETURN_2_SIZE, 118);
        assert_eq!(RETURN_3_SIZE, 177);
        assert_eq!(ANNOUNCE_REQUEST_SIZE, 177);
        // A 0x80 packet carrying a 177-byte announce: 1 + SEND_1 + 177 = 403.
        assert_eq!(1 + SEND_1 + ANNOUNCE_REQUEST_SIZE, 403);
        // Announce response with one IPv4 node.
        assert_eq!(ANNOUNCE_RESPONSE_MIN_SIZE + 39, 121);
        // 23-character friend request: data request 181 bytes, data response 149 bytes.
        let payload = 1 + 4 + 23;
        let request = DATA_REQUEST_MIN_SIZE + DATA_IN_RESPONSE_MIN_SIZE + payload;
        assert_eq!(request, 181);
        assert_eq!(request - KEY_SIZE, 149);
        assert_eq!(request + RETURN_3_SIZE, 358);
        // DHT-PK plaintext with one IPv4 node: 80 bytes.
        let dpk = OnionData::DhtPk(DhtPk {
            no_replay: 1,
            dht_pk: PublicKey([1; 32]),
            nodes: vec![PackedNode::udp(
                "1.2.3.4:5".parse().expect("addr"),
                PublicKey([2; 32]),
            )],
        });
        assert_eq!(dpk.encode().len(), 80);
        assert_eq!(ONION_CLIENT_MAX_DATA_SIZE, 1021);
        assert_eq!(MAX_FRIEND_REQUEST_MESSAGE, 1016);
        assert_eq!(ONION_MAX_DATA_SIZE, 1174);
        assert_eq!(MAX_DATA_REQUEST_SIZE, 1069);
    }

    #[test]
    fn ip_port_layout_and_families() {
        let mut b = Vec::new();
        IpPort("1.2.3.4:33445".parse().expect("addr")).encode(&mut b);
        assert_eq!(b[0], 2);
        assert_eq!(&b[1..5], &[1, 2, 3, 4]);
        assert_eq!(&b[5..17], &[0; 12]);
        assert_eq!(&b[17..], &[0x82, 0xa5]);
        b[0] = 130; // TCP family: not valid in a forward layer
        assert!(IpPort::decode(&mut Reader::new(&b)).is_err());
    }

    #[test]
    fn bad_friend_requests_are_rejected() {
        assert!(OnionData::decode(&[0x20, 1, 2, 3, 4]).is_err());
        let mut long = vec![0x20, 1, 2, 3, 4];
        long.resize(5 + 1017, b'x');
        assert!(OnionData::decode(&long).is_err());
        assert!(matches!(
            OnionData::decode(&[0x42, 1]),
            Err(WireError::UnknownKind(0x42))
        ));
        // Five DHT-PK nodes are one too many.
        let mut dpk = OnionData::DhtPk(DhtPk {
            no_replay: 0,
            dht_pk: PublicKey([0; 32]),
            nodes: vec![],
        })
        .encode();
        for _ in 0..5 {
            PackedNode::udp("1.2.3.4:5".parse().expect("addr"), PublicKey([2; 32]))
                .encode(&mut dpk);
        }
        assert!(OnionData::decode(&dpk).is_err());
    }
}
