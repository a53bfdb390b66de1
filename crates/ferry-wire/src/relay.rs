//! TCP relay wire formats (`tox-protocol.md` §6, spec §TCP server; c-toxcore 0.2.18
//! `TCP_common.h`, `TCP_server.c`, `TCP_client.c`).
//!
//! A relay connection is a TCP stream. It opens with two raw (unframed) handshakes:
//!
//! | direction | packet | size | layout |
//! |---|---|---|---|
//! | client → server | [`ClientHandshake`] | 128 | `[client DHT pk 32][nonce 24][box(client DHT sk, server DHT pk)(`[`HandshakePlain`]` 56) 72]` |
//! | server → client | [`ServerHandshake`] | 96 | `[nonce 24][box(server DHT sk, client DHT pk)(`[`HandshakePlain`]` 56) 72]` |
//!
//! The relay's long-term key is its **DHT** key (c-toxcore passes `dht_get_self_secret_key` to
//! `new_tcp_server`), and so is the client's. Each [`HandshakePlain`] carries a temporary public
//! key and the sender's base nonce; the session key is X25519 of the two temporary keys
//! ([`RelaySession`]). After that every packet is a frame `[len u16 BE][box(session key,
//! nonce)(payload)]`, `len` = payload + 16 ≤ [`MAX_FRAME_SIZE`]; each side encrypts its frames
//! from its own base nonce, +1 per frame, and decrypts the other's from the other's base nonce.
//!
//! The payload's first byte is the [`RelayPacket`] id:
//!
//! | id | packet | plaintext layout |
//! |---|---|---|
//! | 0 | routing request | `[0][pk 32]` |
//! | 1 | routing response | `[1][conn_id u8, 0 = refused][pk 32]` |
//! | 2 | connect notification | `[2][conn_id]` |
//! | 3 | disconnect notification | `[3][conn_id]` |
//! | 4 / 5 | ping / pong | `[4 or 5][ping id 8, opaque]` |
//! | 6 | OOB send | `[6][destination pk 32][data 1..=1024]` |
//! | 7 | OOB recv | `[7][source pk 32][data 1..=1024]` |
//! | 8 / 9 | onion request / response | `[8 or 9][opaque ≥ 1]` |
//! | 10 / 11 | forward request / forwarding | `[10 or 11][opaque ≥ 1]` |
//! | 12–15 | reserved (the peer kills the connection) | |
//! | 16–255 | data on a linked connection | `[conn_id][data]` |

use ferry_crypto::{KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey, SecretKey};

use crate::{Reader, WireError};

/// Plaintext of either handshake: temporary pk 32 + base nonce 24 = 56 bytes
/// (`TCP_HANDSHAKE_PLAIN_SIZE`).
pub const HANDSHAKE_PLAIN_SIZE: usize = KEY_SIZE + NONCE_SIZE;
/// Server handshake: nonce 24 + box(56) 72 = 96 bytes (`TCP_SERVER_HANDSHAKE_SIZE`).
pub const SERVER_HANDSHAKE_SIZE: usize = NONCE_SIZE + HANDSHAKE_PLAIN_SIZE + MAC_SIZE;
/// Client handshake: client DHT pk 32 + 96 = 128 bytes (`TCP_CLIENT_HANDSHAKE_SIZE`).
pub const CLIENT_HANDSHAKE_SIZE: usize = KEY_SIZE + SERVER_HANDSHAKE_SIZE;
/// Largest encrypted frame body (the `len` field), in bytes (`MAX_PACKET_SIZE`).
pub const MAX_FRAME_SIZE: usize = 2048;
/// Largest frame plaintext: 2048 − 16 = 2032 bytes.
pub const MAX_PLAIN_SIZE: usize = MAX_FRAME_SIZE - MAC_SIZE;
/// Largest OOB data, in bytes (`TCP_MAX_OOB_DATA_LENGTH`).
pub const MAX_OOB_DATA_SIZE: usize = 1024;
/// Payload ids below this are control packets; data connection ids are 16–255
/// (`NUM_RESERVED_PORTS`).
pub const NUM_RESERVED_IDS: u8 = 16;
/// Connection ids per client: 256 − 16 = 240 (`NUM_CLIENT_CONNECTIONS`).
pub const NUM_CLIENT_CONNECTIONS: usize = 256 - NUM_RESERVED_IDS as usize;

/// Payload ids (`TCP_common.h` `Tcp_Packet`).
pub mod id {
    /// Routing request.
    pub const ROUTING_REQUEST: u8 = 0;
    /// Routing response.
    pub const ROUTING_RESPONSE: u8 = 1;
    /// Connect notification.
    pub const CONNECT_NOTIFICATION: u8 = 2;
    /// Disconnect notification.
    pub const DISCONNECT_NOTIFICATION: u8 = 3;
    /// Ping.
    pub const PING: u8 = 4;
    /// Pong.
    pub const PONG: u8 = 5;
    /// Out-of-band send.
    pub const OOB_SEND: u8 = 6;
    /// Out-of-band receive.
    pub const OOB_RECV: u8 = 7;
    /// Onion request.
    pub const ONION_REQUEST: u8 = 8;
    /// Onion response.
    pub const ONION_RESPONSE: u8 = 9;
    /// Forward request (DHT announce relaying).
    pub const FORWARD_REQUEST: u8 = 10;
    /// Forwarding.
    pub const FORWARDING: u8 = 11;
}

/// Plaintext of a handshake (56 bytes): `[temporary pk 32][base nonce 24]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakePlain {
    /// The sender's temporary public key for this connection.
    pub temp_pk: PublicKey,
    /// The nonce the sender's first frame uses.
    pub base_nonce: Nonce,
}

impl HandshakePlain {
    /// Emits the 56 bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_PLAIN_SIZE] {
        let mut out = [0u8; HANDSHAKE_PLAIN_SIZE];
        out[..KEY_SIZE].copy_from_slice(self.temp_pk.as_bytes());
        out[KEY_SIZE..].copy_from_slice(&self.base_nonce.0);
        out
    }

    /// Parses the 56 bytes.
    ///
    /// # Errors
    /// Length errors only.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let temp_pk = PublicKey(r.array("handshake temp pk")?);
        let base_nonce = Nonce(r.array("handshake base nonce")?);
        r.finish()?;
        Ok(Self {
            temp_pk,
            base_nonce,
        })
    }
}

fn seal_plain(
    key: &PrecomputedKey,
    nonce: &Nonce,
    plain: &HandshakePlain,
) -> Result<[u8; HANDSHAKE_PLAIN_SIZE + MAC_SIZE], WireError> {
    let ct = key.encrypt(nonce, &plain.encode())?;
    ct.try_into().map_err(|_| WireError::Decrypt)
}

/// Client → server handshake (128 bytes), sent raw as the first bytes of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHandshake {
    /// The client's DHT public key (its identity on this relay).
    pub client_pk: PublicKey,
    /// Random nonce of the box.
    pub nonce: Nonce,
    /// `box(client DHT sk, server DHT pk)(`[`HandshakePlain`]`)`, 72 bytes.
    pub encrypted: [u8; HANDSHAKE_PLAIN_SIZE + MAC_SIZE],
}

impl ClientHandshake {
    /// Encrypts `plain` from `client_sk` to the relay's DHT key `server_pk`.
    ///
    /// # Errors
    /// Not reachable for this size.
    pub fn seal(
        client_sk: &SecretKey,
        server_pk: &PublicKey,
        nonce: Nonce,
        plain: &HandshakePlain,
    ) -> Result<Self, WireError> {
        let key = PrecomputedKey::new(client_sk, server_pk);
        Ok(Self {
            client_pk: client_sk.public_key(),
            nonce,
            encrypted: seal_plain(&key, &nonce, plain)?,
        })
    }

    /// Decrypts with the relay's DHT secret key.
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it was not made for `server_sk`.
    pub fn open(&self, server_sk: &SecretKey) -> Result<HandshakePlain, WireError> {
        let key = PrecomputedKey::new(server_sk, &self.client_pk);
        HandshakePlain::decode(&key.decrypt(&self.nonce, &self.encrypted)?)
    }

    /// Emits the 128 bytes.
    pub fn encode(&self) -> [u8; CLIENT_HANDSHAKE_SIZE] {
        let mut out = [0u8; CLIENT_HANDSHAKE_SIZE];
        out[..KEY_SIZE].copy_from_slice(self.client_pk.as_bytes());
        out[KEY_SIZE..KEY_SIZE + NONCE_SIZE].copy_from_slice(&self.nonce.0);
        out[KEY_SIZE + NONCE_SIZE..].copy_from_slice(&self.encrypted);
        out
    }

    /// Parses exactly 128 bytes.
    ///
    /// # Errors
    /// [`WireError::BadLength`] for any other length.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != CLIENT_HANDSHAKE_SIZE {
            return Err(WireError::BadLength {
                what: "TCP client handshake",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        Ok(Self {
            client_pk: PublicKey(r.array("client pk")?),
            nonce: Nonce(r.array("nonce")?),
            encrypted: r.array("encrypted handshake")?,
        })
    }
}

/// Server → client handshake (96 bytes), sent raw in answer to a [`ClientHandshake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerHandshake {
    /// Random nonce of the box.
    pub nonce: Nonce,
    /// `box(server DHT sk, client DHT pk)(`[`HandshakePlain`]`)`, 72 bytes.
    pub encrypted: [u8; HANDSHAKE_PLAIN_SIZE + MAC_SIZE],
}

impl ServerHandshake {
    /// Encrypts `plain` from the relay's DHT secret key to the client's DHT key.
    ///
    /// # Errors
    /// Not reachable for this size.
    pub fn seal(
        server_sk: &SecretKey,
        client_pk: &PublicKey,
        nonce: Nonce,
        plain: &HandshakePlain,
    ) -> Result<Self, WireError> {
        let key = PrecomputedKey::new(server_sk, client_pk);
        Ok(Self {
            nonce,
            encrypted: seal_plain(&key, &nonce, plain)?,
        })
    }

    /// Decrypts with the client's DHT secret key and the relay's DHT public key.
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it was not made by that relay for this client.
    pub fn open(
        &self,
        client_sk: &SecretKey,
        server_pk: &PublicKey,
    ) -> Result<HandshakePlain, WireError> {
        let key = PrecomputedKey::new(client_sk, server_pk);
        HandshakePlain::decode(&key.decrypt(&self.nonce, &self.encrypted)?)
    }

    /// Emits the 96 bytes.
    pub fn encode(&self) -> [u8; SERVER_HANDSHAKE_SIZE] {
        let mut out = [0u8; SERVER_HANDSHAKE_SIZE];
        out[..NONCE_SIZE].copy_from_slice(&self.nonce.0);
        out[NONCE_SIZE..].copy_from_slice(&self.encrypted);
        out
    }

    /// Parses exactly 96 bytes.
    ///
    /// # Errors
    /// [`WireError::BadLength`] for any other length.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() != SERVER_HANDSHAKE_SIZE {
            return Err(WireError::BadLength {
                what: "TCP server handshake",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        Ok(Self {
            nonce: Nonce(r.array("nonce")?),
            encrypted: r.array("encrypted handshake")?,
        })
    }
}

/// One decrypted relay payload (the plaintext of a frame); see the module table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayPacket {
    /// 0: ask the relay to link us with the client whose DHT pk this is.
    RoutingRequest {
        /// The other client's DHT public key.
        pk: PublicKey,
    },
    /// 1: the relay's answer: the connection id reserved for `pk`, or 0 when refused.
    RoutingResponse {
        /// 16–255, or 0 = refused.
        conn_id: u8,
        /// The key from the request.
        pk: PublicKey,
    },
    /// 2: the connection `conn_id` is linked (both sides asked for each other).
    ConnectNotification {
        /// Connection id (16–255 on the wire from a c-toxcore relay; not checked here).
        conn_id: u8,
    },
    /// 3: the connection `conn_id` is gone (either direction).
    DisconnectNotification {
        /// Connection id.
        conn_id: u8,
    },
    /// 4: keepalive; answered by a pong with the same id.
    Ping {
        /// Opaque 8 bytes (c-toxcore copies raw memory; 0 means "none").
        ping_id: [u8; 8],
    },
    /// 5: answer to a ping.
    Pong {
        /// The ping's id.
        ping_id: [u8; 8],
    },
    /// 6: deliver `data` to the client whose DHT pk is `dest`, if it is on this relay.
    OobSend {
        /// Destination DHT public key.
        dest: PublicKey,
        /// 1..=1024 bytes.
        data: Vec<u8>,
    },
    /// 7: out-of-band data from `src`.
    OobRecv {
        /// Source DHT public key.
        src: PublicKey,
        /// 1..=1024 bytes.
        data: Vec<u8>,
    },
    /// 8: an onion request for the relay to send on as onion node A (`tox-protocol.md` §4.1).
    OnionRequest(Vec<u8>),
    /// 9: an onion response for the client.
    OnionResponse(Vec<u8>),
    /// 10: forward request (DHT announcements).
    ForwardRequest(Vec<u8>),
    /// 11: forwarding (DHT announcements).
    Forwarding(Vec<u8>),
    /// 16–255: data on linked connection `conn_id`.
    Data {
        /// 16–255.
        conn_id: u8,
        /// The relayed bytes (a net_crypto packet in Tox), possibly empty.
        data: Vec<u8>,
    },
}

impl RelayPacket {
    /// Parses a frame's plaintext.
    ///
    /// # Errors
    /// Truncated/trailing bytes, empty input, ids 12–15 ([`WireError::UnknownKind`]), OOB data
    /// outside 1..=1024, empty onion/forward bodies, plaintext beyond [`MAX_PLAIN_SIZE`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_PLAIN_SIZE {
            return Err(WireError::BadLength {
                what: "TCP relay payload",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        let kind = r.u8("TCP relay packet id")?;
        let opaque = |r: &mut Reader<'_>, what| {
            let rest = r.rest();
            if rest.is_empty() {
                Err(WireError::Truncated(what))
            } else {
                Ok(rest.to_vec())
            }
        };
        let oob = |r: &mut Reader<'_>| -> Result<(PublicKey, Vec<u8>), WireError> {
            let pk = PublicKey(r.array("OOB pk")?);
            let data = r.rest();
            if data.is_empty() || data.len() > MAX_OOB_DATA_SIZE {
                return Err(WireError::BadLength {
                    what: "OOB data",
                    len: data.len(),
                });
            }
            Ok((pk, data.to_vec()))
        };
        let p = match kind {
            id::ROUTING_REQUEST => Self::RoutingRequest {
                pk: PublicKey(r.array("routing pk")?),
            },
            id::ROUTING_RESPONSE => Self::RoutingResponse {
                conn_id: r.u8("routing conn id")?,
                pk: PublicKey(r.array("routing pk")?),
            },
            id::CONNECT_NOTIFICATION => Self::ConnectNotification {
                conn_id: r.u8("conn id")?,
            },
            id::DISCONNECT_NOTIFICATION => Self::DisconnectNotification {
                conn_id: r.u8("conn id")?,
            },
            id::PING => Self::Ping {
                ping_id: r.array("ping id")?,
            },
            id::PONG => Self::Pong {
                ping_id: r.array("ping id")?,
            },
            id::OOB_SEND => {
                let (dest, data) = oob(&mut r)?;
                Self::OobSend { dest, data }
            }
            id::OOB_RECV => {
                let (src, data) = oob(&mut r)?;
                Self::OobRecv { src, data }
            }
            id::ONION_REQUEST => Self::OnionRequest(opaque(&mut r, "onion request")?),
            id::ONION_RESPONSE => Self::OnionResponse(opaque(&mut r, "onion response")?),
            id::FORWARD_REQUEST => Self::ForwardRequest(opaque(&mut r, "forward request")?),
            id::FORWARDING => Self::Forwarding(opaque(&mut r, "forwarding")?),
            12..=15 => return Err(WireError::UnknownKind(kind)),
            conn_id => Self::Data {
                conn_id,
                data: r.rest().to_vec(),
            },
        };
        r.finish()?;
        Ok(p)
    }

    /// Emits the plaintext.
    ///
    /// # Errors
    /// [`WireError::BadLength`] when the result would exceed [`MAX_PLAIN_SIZE`] or OOB data is
    /// outside 1..=1024; [`WireError::InvalidValue`] for a data `conn_id` below 16.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(1 + KEY_SIZE + 1);
        let oob_check = |data: &[u8]| {
            if data.is_empty() || data.len() > MAX_OOB_DATA_SIZE {
                Err(WireError::BadLength {
                    what: "OOB data",
                    len: data.len(),
                })
            } else {
                Ok(())
            }
        };
        match self {
            Self::RoutingRequest { pk } => {
                out.push(id::ROUTING_REQUEST);
                out.extend_from_slice(pk.as_bytes());
            }
            Self::RoutingResponse { conn_id, pk } => {
                out.extend_from_slice(&[id::ROUTING_RESPONSE, *conn_id]);
                out.extend_from_slice(pk.as_bytes());
            }
            Self::ConnectNotification { conn_id } => {
                out.extend_from_slice(&[id::CONNECT_NOTIFICATION, *conn_id]);
            }
            Self::DisconnectNotification { conn_id } => {
                out.extend_from_slice(&[id::DISCONNECT_NOTIFICATION, *conn_id]);
            }
            Self::Ping { ping_id } => {
                out.push(id::PING);
                out.extend_from_slice(ping_id);
            }
            Self::Pong { ping_id } => {
                out.push(id::PONG);
                out.extend_from_slice(ping_id);
            }
            Self::OobSend { dest: pk, data } | Self::OobRecv { src: pk, data } => {
                oob_check(data)?;
                out.push(if matches!(self, Self::OobSend { .. }) {
                    id::OOB_SEND
                } else {
                    id::OOB_RECV
                });
                out.extend_from_slice(pk.as_bytes());
                out.extend_from_slice(data);
            }
            Self::OnionRequest(b)
            | Self::OnionResponse(b)
            | Self::ForwardRequest(b)
            | Self::Forwarding(b) => {
                if b.is_empty() {
                    return Err(WireError::BadLength {
                        what: "opaque TCP relay body",
                        len: 0,
                    });
                }
                out.push(match self {
                    Self::OnionRequest(_) => id::ONION_REQUEST,
                    Self::OnionResponse(_) => id::ONION_RESPONSE,
                    Self::ForwardRequest(_) => id::FORWARD_REQUEST,
                    _ => id::FORWARDING,
                });
                out.extend_from_slice(b);
            }
            Self::Data { conn_id, data } => {
                if *conn_id < NUM_RESERVED_IDS {
                    return Err(WireError::InvalidValue {
                        what: "data conn id",
                        value: u64::from(*conn_id),
                    });
                }
                out.push(*conn_id);
                out.extend_from_slice(data);
            }
        }
        if out.len() > MAX_PLAIN_SIZE {
            return Err(WireError::BadLength {
                what: "TCP relay payload",
                len: out.len(),
            });
        }
        Ok(out)
    }
}

/// The encrypted channel after the handshakes: session key and both running nonces.
///
/// `seal` frames our plaintexts (`[len u16 BE][box]`, nonce +1 each); `open` decrypts one frame
/// body (without the length) of the other side (its nonce +1 only on success, as c-toxcore's
/// `read_packet_TCP_secure_connection`).
#[derive(Debug)]
pub struct RelaySession {
    key: PrecomputedKey,
    send_nonce: Nonce,
    recv_nonce: Nonce,
}

impl RelaySession {
    /// Session from our temporary secret key, the peer's temporary public key, our base nonce
    /// (what we sent in our handshake) and the peer's base nonce.
    pub fn new(
        our_temp_sk: &SecretKey,
        their_temp_pk: &PublicKey,
        our_base_nonce: Nonce,
        their_base_nonce: Nonce,
    ) -> Self {
        Self {
            key: PrecomputedKey::new(our_temp_sk, their_temp_pk),
            send_nonce: our_base_nonce,
            recv_nonce: their_base_nonce,
        }
    }

    /// Encrypts `plain` into one frame `[len u16 BE][MAC ‖ ciphertext]`, `len` = plain + 16.
    ///
    /// # Errors
    /// [`WireError::BadLength`] when `plain` is empty or longer than [`MAX_PLAIN_SIZE`].
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>, WireError> {
        if plain.is_empty() || plain.len() > MAX_PLAIN_SIZE {
            return Err(WireError::BadLength {
                what: "TCP relay payload",
                len: plain.len(),
            });
        }
        let ct = self.key.encrypt(&self.send_nonce, plain)?;
        self.send_nonce.increment();
        let len = u16::try_from(ct.len()).map_err(|_| WireError::BadLength {
            what: "TCP relay frame",
            len: ct.len(),
        })?;
        let mut out = Vec::with_capacity(2 + ct.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Encodes and seals a packet.
    ///
    /// # Errors
    /// As [`RelayPacket::encode`] and [`Self::seal`].
    pub fn seal_packet(&mut self, p: &RelayPacket) -> Result<Vec<u8>, WireError> {
        self.seal(&p.encode()?)
    }

    /// Decrypts one frame body (the `len` bytes after the length field).
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it does not authenticate under the expected nonce; an empty
    /// plaintext is [`WireError::BadLength`].
    pub fn open(&mut self, body: &[u8]) -> Result<Vec<u8>, WireError> {
        let plain = self.key.decrypt(&self.recv_nonce, body)?;
        self.recv_nonce.increment();
        if plain.is_empty() {
            return Err(WireError::BadLength {
                what: "TCP relay payload",
                len: 0,
            });
        }
        Ok(plain)
    }
}

/// Splits a byte stream into frame bodies: feed bytes with [`Self::push`], take complete
/// `[len u16 BE][body]` bodies with [`Self::next_frame`]. Holds at most one frame plus what was
/// pushed (the driver bounds reads).
#[derive(Debug, Default, Clone)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends stream bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` raw bytes from the front (for the unframed handshakes), or `None` while
    /// fewer are buffered.
    pub fn take_raw(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.buf.len() < n {
            return None;
        }
        let rest = self.buf.split_off(n);
        Some(std::mem::replace(&mut self.buf, rest))
    }

    /// The next complete frame body, `None` while incomplete.
    ///
    /// # Errors
    /// [`WireError::BadLength`] when a length field is above [`MAX_FRAME_SIZE`] or not above
    /// the 16-byte MAC: the stream cannot be resynchronised, close it.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(head) = self.buf.get(..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if len > MAX_FRAME_SIZE || len <= MAC_SIZE {
            return Err(WireError::BadLength {
                what: "TCP relay frame",
                len,
            });
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(2 + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..2);
        Ok(Some(frame))
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

    fn arb_packet() -> impl Strategy<Value = RelayPacket> {
        let data = |lo: usize, hi: usize| proptest::collection::vec(any::<u8>(), lo..=hi);
        prop_oneof![
            arb_pk().prop_map(|pk| RelayPacket::RoutingRequest { pk }),
            (any::<u8>(), arb_pk())
                .prop_map(|(conn_id, pk)| RelayPacket::RoutingResponse { conn_id, pk }),
            any::<u8>().prop_map(|conn_id| RelayPacket::ConnectNotification { conn_id }),
            any::<u8>().prop_map(|conn_id| RelayPacket::DisconnectNotification { conn_id }),
            any::<[u8; 8]>().prop_map(|ping_id| RelayPacket::Ping { ping_id }),
            any::<[u8; 8]>().prop_map(|ping_id| RelayPacket::Pong { ping_id }),
            (arb_pk(), data(1, 1024)).prop_map(|(dest, data)| RelayPacket::OobSend { dest, data }),
            (arb_pk(), data(1, 1024)).prop_map(|(src, data)| RelayPacket::OobRecv { src, data }),
            data(1, 400).prop_map(RelayPacket::OnionRequest),
            data(1, 400).prop_map(RelayPacket::OnionResponse),
            data(1, 400).prop_map(RelayPacket::ForwardRequest),
            data(1, 400).prop_map(RelayPacket::Forwarding),
            (16u8..=255, data(0, 2031))
                .prop_map(|(conn_id, data)| RelayPacket::Data { conn_id, data }),
        ]
    }

    proptest! {
        #[test]
        fn packet_round_trip(p in arb_packet()) {
            let bytes = p.encode().expect("encode");
            prop_assert_eq!(RelayPacket::decode(&bytes).expect("decode"), p);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2100)) {
            if let Ok(p) = RelayPacket::decode(&bytes) {
                prop_assert_eq!(p.encode().expect("re-encode"), bytes);
            }
        }

        #[test]
        fn handshake_and_frames(seed in any::<u64>(), packets in proptest::collection::vec(arb_packet(), 1..8), split in 1usize..64) {
            let mut rng = FerryRng::from_u64(seed);
            let client = KeyPair::generate(&mut rng);
            let server = KeyPair::generate(&mut rng);
            let ct = KeyPair::generate(&mut rng);
            let st = KeyPair::generate(&mut rng);
            let cplain = HandshakePlain { temp_pk: ct.public, base_nonce: Nonce::random(&mut rng) };
            let hs = ClientHandshake::seal(&client.secret, &server.public, Nonce::random(&mut rng), &cplain).expect("seal");
            let bytes = hs.encode();
            prop_assert_eq!(bytes.len(), CLIENT_HANDSHAKE_SIZE);
            let back = ClientHandshake::decode(&bytes).expect("decode");
            prop_assert_eq!(back, hs);
            prop_assert_eq!(back.client_pk, client.public);
            prop_assert_eq!(back.open(&server.secret).expect("open"), cplain);
            prop_assert!(back.open(&client.secret).is_err());

            let splain = HandshakePlain { temp_pk: st.public, base_nonce: Nonce::random(&mut rng) };
            let shs = ServerHandshake::seal(&server.secret, &client.public, Nonce::random(&mut rng), &splain).expect("seal");
            let sbytes = shs.encode();
            prop_assert_eq!(sbytes.len(), SERVER_HANDSHAKE_SIZE);
            prop_assert_eq!(ServerHandshake::decode(&sbytes).expect("decode").open(&client.secret, &server.public).expect("open"), splain);

            let mut cs = RelaySession::new(&ct.secret, &st.public, cplain.base_nonce, splain.base_nonce);
            let mut ss = RelaySession::new(&st.secret, &ct.public, splain.base_nonce, cplain.base_nonce);
            let mut stream = Vec::new();
            for p in &packets {
                stream.extend(cs.seal_packet(p).expect("seal"));
            }
            let mut reader = FrameReader::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(split) {
                reader.push(chunk);
                while let Some(body) = reader.next_frame().expect("frame") {
                    got.push(RelayPacket::decode(&ss.open(&body).expect("open")).expect("decode"));
                }
            }
            prop_assert_eq!(got, packets);
            // The reverse direction uses the other base nonce: a client frame does not open as
            // a server frame.
            let f = cs.seal(&[4, 1, 2, 3, 4, 5, 6, 7, 8]).expect("seal");
            prop_assert!(cs.open(&f[2..]).is_err());
        }
    }

    #[test]
    fn sizes_match_pcap() {
        let mut rng = FerryRng::from_u64(1);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let mut s = RelaySession::new(&a.secret, &b.public, Nonce([0; 24]), Nonce([1; 24]));
        let frame = |s: &mut RelaySession, p| s.seal_packet(&p).expect("seal").len() - 2;
        assert_eq!(
            frame(&mut s, RelayPacket::RoutingRequest { pk: a.public }),
            49
        );
        assert_eq!(
            frame(
                &mut s,
                RelayPacket::RoutingResponse {
                    conn_id: 16,
                    pk: a.public
                }
            ),
            50
        );
        assert_eq!(
            frame(&mut s, RelayPacket::ConnectNotification { conn_id: 16 }),
            18
        );
        assert_eq!(frame(&mut s, RelayPacket::Ping { ping_id: [1; 8] }), 25);
        assert_eq!(
            frame(
                &mut s,
                RelayPacket::OobSend {
                    dest: a.public,
                    data: vec![0x18; 145]
                }
            ),
            194
        );
        assert_eq!(
            frame(
                &mut s,
                RelayPacket::Data {
                    conn_id: 16,
                    data: vec![0; 48]
                }
            ),
            65
        );
    }

    #[test]
    fn bad_frames() {
        let mut r = FrameReader::new();
        r.push(&[0x08, 0x01]);
        assert!(r.next_frame().is_err());
        let mut r = FrameReader::new();
        r.push(&[0x00, 0x10]);
        assert!(r.next_frame().is_err());
        let mut r = FrameReader::new();
        r.push(&[0x00, 0x11, 1]);
        assert_eq!(r.next_frame(), Ok(None));
        assert!(RelayPacket::decode(&[12, 0]).is_err());
        assert!(RelayPacket::decode(&[]).is_err());
        assert!(RelayPacket::decode(&[6; 33]).is_err());
        assert!(
            RelayPacket::Data {
                conn_id: 3,
                data: vec![]
            }
            .encode()
            .is_err()
        );
    }
}
