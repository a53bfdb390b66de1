//! net_crypto packets (`tox-protocol.md` §5, spec §Net crypto; c-toxcore 0.2.18 `net_crypto.c`).
//!
//! Four UDP kinds carry one encrypted session per pair of long-term keys. Sizes are fixed except
//! for data packets, and all were confirmed by packet capture against c-toxcore 0.2.18:
//!
//! | kind | packet | size | layout |
//! |---|---|---|---|
//! | 0x18 | [`CookieRequest`] | 145 | `[0x18][sender DHT pk 32][nonce 24][box(DHT keys)(`[`CookieRequestPayload`]` 72) 88]` |
//! | 0x19 | [`CookieResponse`] | 161 | `[0x19][nonce 24][box(same DHT keys)(`[`CookieResponsePayload`]` 120) 136]` |
//! | 0x1a | [`Handshake`] | 385 | `[0x1a][cookie from the receiver 112][nonce 24][box(long-term keys)(`[`HandshakePayload`]` 232) 248]` |
//! | 0x1b | [`CryptoData`] | 28..=1400 | `[0x1b][low 2 bytes of the full nonce, BE][box(session key, full nonce)(`[`CryptoDataPayload`]`)]` |
//!
//! A [`Cookie`] (112 bytes) is `[nonce 24][secretbox(cookie key)(`[`CookiePlain`]` 72) 88]`; only its
//! creator can open it, so its plaintext layout (the time field in particular) is private to the
//! node that made it.
//!
//! Inside a data packet the first byte after the zero padding is the data id
//! ([`DataKind`]): 0 padding, 1 [`PacketRequest`], 2 kill, 3–15 reserved, 16–191 lossless,
//! 192–254 lossy.

use ferry_crypto::{
    KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey, SymmetricKey, sha512,
};

use crate::{Reader, WireError, kind};

/// Size of a [`Cookie`]: nonce 24 + secretbox(72) 88 = 112 bytes (`COOKIE_LENGTH`).
pub const COOKIE_SIZE: usize = NONCE_SIZE + COOKIE_PLAIN_SIZE + MAC_SIZE;
/// Size of a cookie's plaintext: time 8 + real pk 32 + DHT pk 32 = 72 bytes.
pub const COOKIE_PLAIN_SIZE: usize = 8 + 2 * KEY_SIZE;
/// Size of a cookie request plaintext: real pk 32 + 32 zero bytes + echo id 8 = 72 bytes.
pub const COOKIE_REQUEST_PLAIN_SIZE: usize = 2 * KEY_SIZE + ECHO_ID_SIZE;
/// Size of a cookie request packet (145 bytes, `COOKIE_REQUEST_LENGTH`).
pub const COOKIE_REQUEST_SIZE: usize =
    1 + KEY_SIZE + NONCE_SIZE + COOKIE_REQUEST_PLAIN_SIZE + MAC_SIZE;
/// Size of a cookie response plaintext: cookie 112 + echo id 8 = 120 bytes.
pub const COOKIE_RESPONSE_PLAIN_SIZE: usize = COOKIE_SIZE + ECHO_ID_SIZE;
/// Size of a cookie response packet (161 bytes, `COOKIE_RESPONSE_LENGTH`).
pub const COOKIE_RESPONSE_SIZE: usize = 1 + NONCE_SIZE + COOKIE_RESPONSE_PLAIN_SIZE + MAC_SIZE;
/// Size of a handshake plaintext: base nonce 24 + session pk 32 + SHA-512 64 + cookie 112 = 232.
pub const HANDSHAKE_PLAIN_SIZE: usize = NONCE_SIZE + KEY_SIZE + 64 + COOKIE_SIZE;
/// Size of a handshake packet (385 bytes, `HANDSHAKE_PACKET_LENGTH`).
pub const HANDSHAKE_SIZE: usize = 1 + COOKIE_SIZE + NONCE_SIZE + HANDSHAKE_PLAIN_SIZE + MAC_SIZE;
/// Size of the opaque echo id of cookie requests/responses (8 bytes, copied raw by c-toxcore).
pub const ECHO_ID_SIZE: usize = 8;
/// Largest net_crypto packet, in bytes (`MAX_CRYPTO_PACKET_SIZE`).
pub const MAX_CRYPTO_PACKET_SIZE: usize = 1400;
/// Bytes of a data packet around its data: kind 1 + nonce 2 + MAC 16 + buffer_start 4 +
/// packet number 4 = 27 (`CRYPTO_DATA_PACKET_MIN_SIZE`).
pub const CRYPTO_DATA_OVERHEAD: usize = 1 + 2 + MAC_SIZE + 8;
/// Smallest data packet c-toxcore accepts: 28 bytes (at least one data byte).
pub const CRYPTO_DATA_MIN_SIZE: usize = CRYPTO_DATA_OVERHEAD + 1;
/// Most data bytes (id included) in one data packet: 1373 (`MAX_CRYPTO_DATA_SIZE`).
pub const MAX_CRYPTO_DATA_SIZE: usize = MAX_CRYPTO_PACKET_SIZE - CRYPTO_DATA_OVERHEAD;
/// Padding granularity: `(1373 − len) mod 8` zero bytes precede the data (`CRYPTO_MAX_PADDING`).
pub const CRYPTO_MAX_PADDING: usize = 8;
/// Nonce reconstruction threshold (`DATA_NUM_THRESHOLD` = 21845): when a packet's 16-bit nonce
/// suffix is more than 2 × this ahead of the saved nonce and it decrypts, the saved nonce moves
/// forward by this much.
pub const DATA_NUM_THRESHOLD: u16 = 21845;

/// Data id 0: padding (skipped by the receiver).
pub const PACKET_ID_PADDING: u8 = 0;
/// Data id 1: packet request (cumulative ACK + list of missing packets).
pub const PACKET_ID_REQUEST: u8 = 1;
/// Data id 2: kill the session.
pub const PACKET_ID_KILL: u8 = 2;
/// Lossless data ids (16–191).
pub const LOSSLESS_IDS: std::ops::RangeInclusive<u8> = 16..=191;
/// Lossy data ids (192–254).
pub const LOSSY_IDS: std::ops::RangeInclusive<u8> = 192..=254;

/// What a data id means (`net_crypto.h` `PACKET_ID_RANGE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataKind {
    /// 0.
    Padding,
    /// 1.
    Request,
    /// 2.
    Kill,
    /// 3–15: reserved, dropped.
    Reserved,
    /// 16–191.
    Lossless,
    /// 192–254.
    Lossy,
    /// 255: not defined.
    Invalid,
}

impl DataKind {
    /// The kind of data id `id`.
    pub fn of(id: u8) -> Self {
        match id {
            PACKET_ID_PADDING => Self::Padding,
            PACKET_ID_REQUEST => Self::Request,
            PACKET_ID_KILL => Self::Kill,
            3..=15 => Self::Reserved,
            16..=191 => Self::Lossless,
            192..=254 => Self::Lossy,
            255 => Self::Invalid,
        }
    }
}

fn check_len(bytes: &[u8], want: usize, k: u8, what: &'static str) -> Result<(), WireError> {
    match bytes.first() {
        None => Err(WireError::Truncated("kind")),
        Some(&b) if b != k => Err(WireError::UnknownKind(b)),
        Some(_) if bytes.len() != want => Err(WireError::BadLength {
            what,
            len: bytes.len(),
        }),
        Some(_) => Ok(()),
    }
}

/// Plaintext of a [`Cookie`] (72 bytes): `[time u64 BE][requester real pk 32][requester DHT pk 32]`.
///
/// The time is in seconds on the creator's own clock; c-toxcore writes its monotonic seconds in
/// host byte order, which is fine because only the creator reads a cookie back. Valid for
/// 15 s (`COOKIE_TIMEOUT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookiePlain {
    /// Creation time, seconds on the creator's clock.
    pub time: u64,
    /// The requester's long-term (real) public key.
    pub real_pk: PublicKey,
    /// The requester's DHT public key.
    pub dht_pk: PublicKey,
}

impl CookiePlain {
    /// Emits the 72-byte plaintext.
    pub fn encode(&self) -> [u8; COOKIE_PLAIN_SIZE] {
        let mut out = [0u8; COOKIE_PLAIN_SIZE];
        out[..8].copy_from_slice(&self.time.to_be_bytes());
        out[8..40].copy_from_slice(self.real_pk.as_bytes());
        out[40..].copy_from_slice(self.dht_pk.as_bytes());
        out
    }

    /// Parses the 72-byte plaintext.
    ///
    /// # Errors
    /// Length errors only.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let time = u64::from_be_bytes(r.array("cookie time")?);
        let real_pk = PublicKey(r.array("cookie real pk")?);
        let dht_pk = PublicKey(r.array("cookie DHT pk")?);
        r.finish()?;
        Ok(Self {
            time,
            real_pk,
            dht_pk,
        })
    }
}

/// A net_crypto cookie (112 bytes): `[nonce 24][secretbox(cookie key, nonce)(`[`CookiePlain`]`) 88]`.
/// Opaque to everyone but its creator.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cookie(pub [u8; COOKIE_SIZE]);

impl std::fmt::Debug for Cookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cookie({:02x?}…)", &self.0[..4])
    }
}

impl Cookie {
    /// Encrypts `plain` with our cookie key under `nonce`.
    ///
    /// # Errors
    /// Not reachable for this size ([`WireError::Decrypt`] stands in for an encryption failure).
    pub fn seal(key: &SymmetricKey, nonce: &Nonce, plain: &CookiePlain) -> Result<Self, WireError> {
        let ct = key.encrypt(nonce, &plain.encode())?;
        let mut out = [0u8; COOKIE_SIZE];
        out[..NONCE_SIZE].copy_from_slice(&nonce.0);
        if ct.len() != COOKIE_SIZE - NONCE_SIZE {
            return Err(WireError::Decrypt);
        }
        out[NONCE_SIZE..].copy_from_slice(&ct);
        Ok(Self(out))
    }

    /// Decrypts a cookie we made. The caller checks its age.
    ///
    /// # Errors
    /// [`WireError::Decrypt`] when it was not made with `key` or was altered.
    pub fn open(&self, key: &SymmetricKey) -> Result<CookiePlain, WireError> {
        let mut n = [0u8; NONCE_SIZE];
        n.copy_from_slice(&self.0[..NONCE_SIZE]);
        let plain = key.decrypt(&Nonce(n), &self.0[NONCE_SIZE..])?;
        CookiePlain::decode(&plain)
    }

    /// SHA-512 of the 112 bytes, as carried in a handshake.
    pub fn hash(&self) -> [u8; 64] {
        sha512(&self.0)
    }
}

/// Plaintext of a cookie request (72 bytes): `[sender real pk 32][32 zero bytes][echo id 8]`.
/// The receiver ignores the zero bytes' content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieRequestPayload {
    /// The requester's long-term (real) public key.
    pub real_pk: PublicKey,
    /// Opaque id echoed in the response (c-toxcore: a random u64 in host byte order).
    pub echo_id: [u8; ECHO_ID_SIZE],
}

impl CookieRequestPayload {
    /// Emits the 72-byte plaintext.
    pub fn encode(&self) -> [u8; COOKIE_REQUEST_PLAIN_SIZE] {
        let mut out = [0u8; COOKIE_REQUEST_PLAIN_SIZE];
        out[..32].copy_from_slice(self.real_pk.as_bytes());
        out[64..].copy_from_slice(&self.echo_id);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// Length errors only.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let real_pk = PublicKey(r.array("cookie request real pk")?);
        r.take(KEY_SIZE, "cookie request padding")?;
        let echo_id = r.array("cookie request echo id")?;
        r.finish()?;
        Ok(Self { real_pk, echo_id })
    }
}

/// Cookie request 0x18 (145 bytes), boxed between the sender's and the receiver's DHT keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieRequest {
    /// The sender's DHT public key.
    pub sender_dht_pk: PublicKey,
    /// Random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext of a [`CookieRequestPayload`] (88 bytes).
    pub ciphertext: [u8; COOKIE_REQUEST_PLAIN_SIZE + MAC_SIZE],
}

impl CookieRequest {
    /// Parses a whole datagram (exactly 145 bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] / [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_len(
            bytes,
            COOKIE_REQUEST_SIZE,
            kind::COOKIE_REQUEST,
            "cookie request",
        )?;
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            sender_dht_pk: PublicKey(r.array("sender DHT pk")?),
            nonce: Nonce(r.array("nonce")?),
            ciphertext: r.array("ciphertext")?,
        })
    }

    /// Emits the 145-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COOKIE_REQUEST_SIZE);
        out.push(kind::COOKIE_REQUEST);
        out.extend_from_slice(self.sender_dht_pk.as_bytes());
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Builds a request: `key` = ours (DHT sk) ↔ receiver's DHT pk.
    ///
    /// # Errors
    /// Not reachable for this size.
    pub fn seal(
        sender_dht_pk: PublicKey,
        nonce: Nonce,
        key: &PrecomputedKey,
        payload: &CookieRequestPayload,
    ) -> Result<Self, WireError> {
        let ct = key.encrypt(&nonce, &payload.encode())?;
        Ok(Self {
            sender_dht_pk,
            nonce,
            ciphertext: ct.try_into().map_err(|_| WireError::Decrypt)?,
        })
    }

    /// Decrypts with `key` = our DHT sk ↔ `sender_dht_pk`.
    ///
    /// # Errors
    /// [`WireError::Decrypt`].
    pub fn open(&self, key: &PrecomputedKey) -> Result<CookieRequestPayload, WireError> {
        CookieRequestPayload::decode(&key.decrypt(&self.nonce, &self.ciphertext)?)
    }
}

/// Plaintext of a cookie response (120 bytes): `[cookie 112][echo id 8]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieResponsePayload {
    /// The cookie the responder made for the requester.
    pub cookie: Cookie,
    /// The request's echo id, byte for byte.
    pub echo_id: [u8; ECHO_ID_SIZE],
}

impl CookieResponsePayload {
    /// Emits the 120-byte plaintext.
    pub fn encode(&self) -> [u8; COOKIE_RESPONSE_PLAIN_SIZE] {
        let mut out = [0u8; COOKIE_RESPONSE_PLAIN_SIZE];
        out[..COOKIE_SIZE].copy_from_slice(&self.cookie.0);
        out[COOKIE_SIZE..].copy_from_slice(&self.echo_id);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// Length errors only.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let cookie = Cookie(r.array("cookie")?);
        let echo_id = r.array("echo id")?;
        r.finish()?;
        Ok(Self { cookie, echo_id })
    }
}

/// Cookie response 0x19 (161 bytes), boxed with the same DHT shared key as the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieResponse {
    /// Random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext of a [`CookieResponsePayload`] (136 bytes).
    pub ciphertext: [u8; COOKIE_RESPONSE_PLAIN_SIZE + MAC_SIZE],
}

impl CookieResponse {
    /// Parses a whole datagram (exactly 161 bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] / [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_len(
            bytes,
            COOKIE_RESPONSE_SIZE,
            kind::COOKIE_RESPONSE,
            "cookie response",
        )?;
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            nonce: Nonce(r.array("nonce")?),
            ciphertext: r.array("ciphertext")?,
        })
    }

    /// Emits the 161-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COOKIE_RESPONSE_SIZE);
        out.push(kind::COOKIE_RESPONSE);
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Builds a response with the request's shared key.
    ///
    /// # Errors
    /// Not reachable for this size.
    pub fn seal(
        nonce: Nonce,
        key: &PrecomputedKey,
        payload: &CookieResponsePayload,
    ) -> Result<Self, WireError> {
        let ct = key.encrypt(&nonce, &payload.encode())?;
        Ok(Self {
            nonce,
            ciphertext: ct.try_into().map_err(|_| WireError::Decrypt)?,
        })
    }

    /// Decrypts with the key the request was sealed with.
    ///
    /// # Errors
    /// [`WireError::Decrypt`].
    pub fn open(&self, key: &PrecomputedKey) -> Result<CookieResponsePayload, WireError> {
        CookieResponsePayload::decode(&key.decrypt(&self.nonce, &self.ciphertext)?)
    }
}

/// Plaintext of a handshake (232 bytes): `[sender's base nonce 24][sender's session pk 32]
/// [SHA-512 of the packet's outer cookie 64][cookie the sender made for the receiver 112]`.
///
/// TRAP (`tox-protocol.md` §5.2): the base nonce is the nonce the *sender* will encrypt its data
/// packets with; the receiver decrypts with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakePayload {
    /// The sender's sending base nonce.
    pub base_nonce: Nonce,
    /// The sender's session (ephemeral) public key.
    pub session_pk: PublicKey,
    /// SHA-512 of the outer cookie.
    pub cookie_hash: [u8; 64],
    /// A cookie the sender made for the receiver (lets the receiver answer without a cookie request).
    pub other_cookie: Cookie,
}

impl HandshakePayload {
    /// Emits the 232-byte plaintext.
    pub fn encode(&self) -> [u8; HANDSHAKE_PLAIN_SIZE] {
        let mut out = [0u8; HANDSHAKE_PLAIN_SIZE];
        out[..24].copy_from_slice(&self.base_nonce.0);
        out[24..56].copy_from_slice(self.session_pk.as_bytes());
        out[56..120].copy_from_slice(&self.cookie_hash);
        out[120..].copy_from_slice(&self.other_cookie.0);
        out
    }

    /// Parses the plaintext.
    ///
    /// # Errors
    /// Length errors only.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let base_nonce = Nonce(r.array("base nonce")?);
        let session_pk = PublicKey(r.array("session pk")?);
        let cookie_hash = r.array("cookie hash")?;
        let other_cookie = Cookie(r.array("other cookie")?);
        r.finish()?;
        Ok(Self {
            base_nonce,
            session_pk,
            cookie_hash,
            other_cookie,
        })
    }
}

/// Handshake 0x1a (385 bytes): `[cookie 112][nonce 24][box(sender real sk, receiver real pk)(`
/// [`HandshakePayload`]`) 248]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// A cookie the receiver made for the sender (from a cookie response or the receiver's
    /// own handshake).
    pub cookie: Cookie,
    /// Random nonce.
    pub nonce: Nonce,
    /// MAC ‖ ciphertext (248 bytes).
    pub ciphertext: [u8; HANDSHAKE_PLAIN_SIZE + MAC_SIZE],
}

impl Handshake {
    /// Parses a whole datagram (exactly 385 bytes).
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] / [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        check_len(bytes, HANDSHAKE_SIZE, kind::CRYPTO_HANDSHAKE, "handshake")?;
        let mut r = Reader::new(&bytes[1..]);
        Ok(Self {
            cookie: Cookie(r.array("cookie")?),
            nonce: Nonce(r.array("nonce")?),
            ciphertext: r.array("ciphertext")?,
        })
    }

    /// Emits the 385-byte datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HANDSHAKE_SIZE);
        out.push(kind::CRYPTO_HANDSHAKE);
        out.extend_from_slice(&self.cookie.0);
        out.extend_from_slice(&self.nonce.0);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Builds a handshake; `key` = our real sk ↔ the receiver's real pk.
    ///
    /// # Errors
    /// Not reachable for this size.
    pub fn seal(
        cookie: Cookie,
        nonce: Nonce,
        key: &PrecomputedKey,
        payload: &HandshakePayload,
    ) -> Result<Self, WireError> {
        let ct = key.encrypt(&nonce, &payload.encode())?;
        Ok(Self {
            cookie,
            nonce,
            ciphertext: ct.try_into().map_err(|_| WireError::Decrypt)?,
        })
    }

    /// Decrypts; `key` = our real sk ↔ the sender's real pk (taken from the opened outer cookie).
    /// Does not check the cookie hash (see [`Handshake::open_checked`]).
    ///
    /// # Errors
    /// [`WireError::Decrypt`].
    pub fn open(&self, key: &PrecomputedKey) -> Result<HandshakePayload, WireError> {
        HandshakePayload::decode(&key.decrypt(&self.nonce, &self.ciphertext)?)
    }

    /// [`Handshake::open`], then checks that the payload's hash is the SHA-512 of the outer
    /// cookie (constant time).
    ///
    /// # Errors
    /// [`WireError::Decrypt`] on a bad MAC or hash.
    pub fn open_checked(&self, key: &PrecomputedKey) -> Result<HandshakePayload, WireError> {
        let p = self.open(key)?;
        if ferry_crypto::ct_eq(&p.cookie_hash, &self.cookie.hash()) {
            Ok(p)
        } else {
            Err(WireError::Decrypt)
        }
    }
}

/// Data 0x1b (28..=1400 bytes): `[0x1b][nonce low 16 bits BE][box(session key, full nonce)(`
/// [`CryptoDataPayload`]`)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoData {
    /// The last two bytes of the full 24-byte nonce (big-endian).
    pub nonce_low: u16,
    /// MAC ‖ ciphertext (at least 16 + 9 bytes).
    pub ciphertext: Vec<u8>,
}

impl CryptoData {
    /// Parses a whole datagram; 28 ≤ length ≤ 1400 as c-toxcore requires.
    ///
    /// # Errors
    /// [`WireError::UnknownKind`] / [`WireError::BadLength`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        match bytes.first() {
            None => return Err(WireError::Truncated("kind")),
            Some(&b) if b != kind::CRYPTO_DATA => return Err(WireError::UnknownKind(b)),
            Some(_) => {}
        }
        if !(CRYPTO_DATA_MIN_SIZE..=MAX_CRYPTO_PACKET_SIZE).contains(&bytes.len()) {
            return Err(WireError::BadLength {
                what: "crypto data",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(&bytes[1..]);
        let nonce_low = r.u16_be("nonce low bytes")?;
        Ok(Self {
            nonce_low,
            ciphertext: r.rest().to_vec(),
        })
    }

    /// As [`CryptoData::decode`] without copying: the nonce's low 2 bytes and the ciphertext
    /// (`MAC ‖ encrypted payload`) borrowed from `bytes` (the receive hot path).
    ///
    /// # Errors
    /// As [`CryptoData::decode`].
    pub fn split(bytes: &[u8]) -> Result<(u16, &[u8]), WireError> {
        match bytes.first() {
            None => return Err(WireError::Truncated("kind")),
            Some(&b) if b != kind::CRYPTO_DATA => return Err(WireError::UnknownKind(b)),
            Some(_) => {}
        }
        if !(CRYPTO_DATA_MIN_SIZE..=MAX_CRYPTO_PACKET_SIZE).contains(&bytes.len()) {
            return Err(WireError::BadLength {
                what: "crypto data",
                len: bytes.len(),
            });
        }
        let mut r = Reader::new(&bytes[1..]);
        let nonce_low = r.u16_be("nonce low bytes")?;
        Ok((nonce_low, r.rest()))
    }

    /// Emits the datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.ciphertext.len());
        out.push(kind::CRYPTO_DATA);
        out.extend_from_slice(&self.nonce_low.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Encrypts `payload` with the session key under the sender's current full nonce.
    ///
    /// # Errors
    /// [`WireError::BadLength`] when the data is empty or longer than 1373 bytes.
    pub fn seal(
        nonce: &Nonce,
        key: &PrecomputedKey,
        payload: &CryptoDataPayload,
    ) -> Result<Self, WireError> {
        let plain = payload.encode()?;
        Ok(Self {
            nonce_low: nonce_low16(nonce),
            ciphertext: key.encrypt(nonce, &plain)?,
        })
    }

    /// Decrypts with the full nonce rebuilt by [`reconstruct_nonce`].
    ///
    /// # Errors
    /// [`WireError::Decrypt`], or payload errors.
    pub fn open(
        &self,
        nonce: &Nonce,
        key: &PrecomputedKey,
    ) -> Result<CryptoDataPayload, WireError> {
        CryptoDataPayload::decode(&key.decrypt(nonce, &self.ciphertext)?)
    }
}

/// The low 16 bits of a nonce (its last two bytes, big-endian).
pub fn nonce_low16(nonce: &Nonce) -> u16 {
    u16::from_be_bytes([nonce.0[NONCE_SIZE - 2], nonce.0[NONCE_SIZE - 1]])
}

/// Adds `n` to a nonce read as a 24-byte big-endian integer, wrapping (`increment_nonce_number`).
pub fn nonce_add(nonce: &mut Nonce, n: u32) {
    let mut carry = u64::from(n);
    for byte in nonce.0.iter_mut().rev() {
        if carry == 0 {
            break;
        }
        let sum = u64::from(*byte) + (carry & 0xff);
        *byte = (sum & 0xff) as u8;
        carry = (carry >> 8) + (sum >> 8);
    }
}

/// Rebuilds a data packet's full nonce from the receiver's saved nonce and the packet's 16-bit
/// suffix: `diff = suffix − low16(saved)` (mod 2¹⁶), `nonce = saved + diff`. Returns the nonce and
/// `diff`; when the packet then decrypts and `diff > 2 × DATA_NUM_THRESHOLD` (43690), the caller
/// advances its saved nonce by [`DATA_NUM_THRESHOLD`] (21845) (`handle_data_packet`).
pub fn reconstruct_nonce(saved: &Nonce, nonce_low: u16) -> (Nonce, u16) {
    let diff = nonce_low.wrapping_sub(nonce_low16(saved));
    let mut n = *saved;
    nonce_add(&mut n, u32::from(diff));
    (n, diff)
}

/// Plaintext of a data packet: `[buffer_start u32 BE][packet number u32 BE][zero padding]
/// [data]`, padding = `(1373 − data length) mod 8` bytes.
///
/// `buffer_start` is the sender's receive `buffer_start` (a cumulative ACK: every lossless
/// packet before it arrived); the packet number is the lossless number of this packet, or for
/// lossy, request and kill packets the sender's next lossless number (its send `buffer_end`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoDataPayload {
    /// The sender's receive buffer start.
    pub buffer_start: u32,
    /// Packet number.
    pub packet_number: u32,
    /// The data, first byte = data id (not 0), 1..=1373 bytes.
    pub data: Vec<u8>,
}

impl CryptoDataPayload {
    /// Emits the plaintext with c-toxcore's padding.
    ///
    /// # Errors
    /// [`WireError::BadLength`] when the data is empty or longer than 1373 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let len = self.data.len();
        if len == 0 || len > MAX_CRYPTO_DATA_SIZE {
            return Err(WireError::BadLength {
                what: "crypto data",
                len,
            });
        }
        let padding = (MAX_CRYPTO_DATA_SIZE - len) % CRYPTO_MAX_PADDING;
        let mut out = Vec::with_capacity(8 + padding + len);
        out.extend_from_slice(&self.buffer_start.to_be_bytes());
        out.extend_from_slice(&self.packet_number.to_be_bytes());
        out.resize(8 + padding, PACKET_ID_PADDING);
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// As [`CryptoDataPayload::decode`], reusing the plaintext buffer for `data` (the numbers
    /// and padding are cut off in place; no new allocation).
    ///
    /// # Errors
    /// As [`CryptoDataPayload::decode`].
    pub fn decode_vec(mut plain: Vec<u8>) -> Result<Self, WireError> {
        let (buffer_start, packet_number, first) = {
            let mut r = Reader::new(&plain);
            let buffer_start = r.u32_be("buffer_start")?;
            let packet_number = r.u32_be("packet number")?;
            let first = r
                .rest()
                .iter()
                .position(|&b| b != PACKET_ID_PADDING)
                .ok_or(WireError::BadLength {
                    what: "crypto data without data",
                    len: plain.len(),
                })?;
            (buffer_start, packet_number, first)
        };
        plain.drain(..8 + first);
        Ok(Self {
            buffer_start,
            packet_number,
            data: plain,
        })
    }

    /// Parses a plaintext, skipping any number of leading zero bytes after the two numbers.
    ///
    /// # Errors
    /// Truncated numbers, or nothing but padding ([`WireError::BadLength`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let buffer_start = r.u32_be("buffer_start")?;
        let packet_number = r.u32_be("packet number")?;
        let rest = r.rest();
        let first =
            rest.iter()
                .position(|&b| b != PACKET_ID_PADDING)
                .ok_or(WireError::BadLength {
                    what: "crypto data without data",
                    len: bytes.len(),
                })?;
        Ok(Self {
            buffer_start,
            packet_number,
            data: rest[first..].to_vec(),
        })
    }
}

/// Packet request (data id 1): `[1][n1][n2]…`. Each byte is the distance from the previously
/// requested packet number (the first from `buffer_start − 1`); a 0 byte means "+255 and go on
/// without requesting". Packets the request steps over without naming count as received. Carried
/// with the sender's receive `buffer_start` and its send `buffer_end` as packet number.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PacketRequest {
    /// Requested (missing) packets, as ascending offsets from the receiver's `buffer_start`.
    pub missing: Vec<u32>,
    /// How many offsets from `buffer_start` the request covers: offsets below this that are not
    /// in `missing` were received.
    pub covered: u32,
}

impl PacketRequest {
    /// Emits `[1][distances…]`, at most 1373 bytes (the list is cut there as c-toxcore does).
    /// `missing` must be ascending without repeats (others are skipped).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PACKET_ID_REQUEST];
        let mut prev: i64 = -1;
        'outer: for &m in &self.missing {
            let m = i64::from(m);
            if m <= prev {
                continue;
            }
            let mut dist = m - prev;
            while dist > 255 {
                if out.len() >= MAX_CRYPTO_DATA_SIZE {
                    break 'outer;
                }
                out.push(0);
                dist -= 255;
            }
            if out.len() >= MAX_CRYPTO_DATA_SIZE {
                break;
            }
            out.push(dist as u8);
            prev = m;
        }
        out
    }

    /// Parses `[1][distances…]`.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] when the first byte is not 1.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let id = r.u8("packet request id")?;
        if id != PACKET_ID_REQUEST {
            return Err(WireError::InvalidValue {
                what: "packet request id",
                value: u64::from(id),
            });
        }
        let mut missing = Vec::new();
        let mut pos: i64 = -1;
        for &b in r.rest() {
            if b == 0 {
                pos += 255;
            } else {
                pos += i64::from(b);
                missing.push(u32::try_from(pos).unwrap_or(u32::MAX));
            }
        }
        Ok(Self {
            missing,
            covered: u32::try_from(pos + 1).unwrap_or(u32::MAX),
        })
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

    fn keys(seed: u64) -> (KeyPair, KeyPair, FerryRng) {
        let mut rng = FerryRng::from_u64(seed);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        (a, b, rng)
    }

    #[test]
    fn sizes_match_the_spec() {
        assert_eq!(COOKIE_SIZE, 112);
        assert_eq!(COOKIE_REQUEST_SIZE, 145);
        assert_eq!(COOKIE_RESPONSE_SIZE, 161);
        assert_eq!(HANDSHAKE_SIZE, 385);
        assert_eq!(MAX_CRYPTO_DATA_SIZE, 1373);
        let (a, b, mut rng) = keys(1);
        let k = PrecomputedKey::new(&a.secret, &b.public);
        let n = Nonce::random(&mut rng);
        let alive = CryptoDataPayload {
            buffer_start: 0,
            packet_number: 0,
            data: vec![16],
        };
        assert_eq!(
            CryptoData::seal(&n, &k, &alive)
                .expect("seal")
                .encode()
                .len(),
            32
        );
        let full = CryptoDataPayload {
            data: vec![160; MAX_CRYPTO_DATA_SIZE],
            ..alive.clone()
        };
        assert_eq!(
            CryptoData::seal(&n, &k, &full)
                .expect("seal")
                .encode()
                .len(),
            MAX_CRYPTO_PACKET_SIZE
        );
        let too_big = CryptoDataPayload {
            data: vec![160; MAX_CRYPTO_DATA_SIZE + 1],
            ..alive
        };
        assert!(CryptoData::seal(&n, &k, &too_big).is_err());
    }

    #[test]
    fn nonce_reconstruction_follows_the_threshold_rule() {
        let mut saved = Nonce([0; 24]);
        saved.0[22] = 0xff;
        saved.0[23] = 0xf0; // low16 = 0xfff0
        let (n, diff) = reconstruct_nonce(&saved, 0x0005);
        assert_eq!(diff, 0x15);
        assert_eq!(&n.0[20..], &[0, 1, 0, 5]);
        let (_, diff) = reconstruct_nonce(&saved, 0xfff0u16.wrapping_add(43691));
        assert!(diff > 2 * DATA_NUM_THRESHOLD);
        let mut m = Nonce([0xff; 24]);
        nonce_add(&mut m, 1);
        assert_eq!(m, Nonce([0; 24]));
        let mut m = Nonce([0; 24]);
        nonce_add(&mut m, 0x0102_0304);
        assert_eq!(&m.0[20..], &[1, 2, 3, 4]);
    }

    #[test]
    fn packet_request_matches_c_toxcore_generator() {
        // Offsets 0 missing, 1..=299 present, 300 missing: [1][1][0][45].
        let r = PacketRequest {
            missing: vec![0, 300],
            covered: 301,
        };
        assert_eq!(r.encode(), vec![1, 1, 0, 45]);
        assert_eq!(PacketRequest::decode(&r.encode()).expect("decode"), r);
        // Distance exactly 255 is one byte.
        assert_eq!(
            PacketRequest {
                missing: vec![254],
                covered: 255
            }
            .encode(),
            vec![1, 255]
        );
        // Trailing zeros cover received packets.
        let r = PacketRequest::decode(&[1, 1, 0]).expect("decode");
        assert_eq!(r.missing, vec![0]);
        assert_eq!(r.covered, 256);
        assert_eq!(PacketRequest::decode(&[1]).expect("decode").covered, 0);
    }

    proptest! {
        #[test]
        fn cookie_round_trip(time in any::<u64>(), r in arb_pk(), d in arb_pk(), seed in any::<u64>()) {
            let mut rng = FerryRng::from_u64(seed);
            let key = SymmetricKey::generate(&mut rng);
            let plain = CookiePlain { time, real_pk: r, dht_pk: d };
            prop_assert_eq!(CookiePlain::decode(&plain.encode()).expect("decode"), plain);
            let c = Cookie::seal(&key, &Nonce::random(&mut rng), &plain).expect("seal");
            prop_assert_eq!(c.open(&key).expect("open"), plain);
            let other = SymmetricKey::generate(&mut rng);
            prop_assert!(c.open(&other).is_err());
        }

        #[test]
        fn cookie_request_response_round_trip(real in arb_pk(), echo in any::<[u8; 8]>(), cookie in proptest::collection::vec(any::<u8>(), 112), seed in any::<u64>()) {
            let (a, b, mut rng) = keys(seed);
            let ka = PrecomputedKey::new(&a.secret, &b.public);
            let kb = PrecomputedKey::new(&b.secret, &a.public);
            let p = CookieRequestPayload { real_pk: real, echo_id: echo };
            prop_assert_eq!(CookieRequestPayload::decode(&p.encode()).expect("decode"), p);
            let req = CookieRequest::seal(a.public, Nonce::random(&mut rng), &ka, &p).expect("seal");
            let bytes = req.encode();
            prop_assert_eq!(bytes.len(), COOKIE_REQUEST_SIZE);
            let back = CookieRequest::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &req);
            prop_assert_eq!(back.open(&kb).expect("open"), p);

            let rp = CookieResponsePayload { cookie: Cookie(cookie.try_into().expect("112")), echo_id: echo };
            prop_assert_eq!(CookieResponsePayload::decode(&rp.encode()).expect("decode"), rp);
            let resp = CookieResponse::seal(Nonce::random(&mut rng), &kb, &rp).expect("seal");
            let bytes = resp.encode();
            prop_assert_eq!(bytes.len(), COOKIE_RESPONSE_SIZE);
            let back = CookieResponse::decode(&bytes).expect("decode");
            prop_assert_eq!(back.open(&ka).expect("open"), rp);
        }

        #[test]
        fn handshake_round_trip(base in any::<[u8; 24]>(), session in arb_pk(), outer in proptest::collection::vec(any::<u8>(), 112), inner in proptest::collection::vec(any::<u8>(), 112), seed in any::<u64>()) {
            let (a, b, mut rng) = keys(seed);
            let ka = PrecomputedKey::new(&a.secret, &b.public);
            let kb = PrecomputedKey::new(&b.secret, &a.public);
            let outer = Cookie(outer.try_into().expect("112"));
            let p = HandshakePayload { base_nonce: Nonce(base), session_pk: session, cookie_hash: outer.hash(), other_cookie: Cookie(inner.try_into().expect("112")) };
            prop_assert_eq!(HandshakePayload::decode(&p.encode()).expect("decode"), p);
            let h = Handshake::seal(outer, Nonce::random(&mut rng), &ka, &p).expect("seal");
            let bytes = h.encode();
            prop_assert_eq!(bytes.len(), HANDSHAKE_SIZE);
            let back = Handshake::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &h);
            prop_assert_eq!(back.open_checked(&kb).expect("open"), p);
            let mut bad = p;
            bad.cookie_hash[0] ^= 1;
            let h = Handshake::seal(outer, Nonce::random(&mut rng), &ka, &bad).expect("seal");
            prop_assert!(h.open_checked(&kb).is_err());
        }

        #[test]
        fn data_round_trip(bs in any::<u32>(), num in any::<u32>(), id in 1u8..=255, rest in proptest::collection::vec(any::<u8>(), 0..1372), base in any::<[u8; 24]>(), step in any::<u16>(), seed in any::<u64>()) {
            let (a, b, _) = keys(seed);
            let ka = PrecomputedKey::new(&a.secret, &b.public);
            let kb = PrecomputedKey::new(&b.secret, &a.public);
            let mut data = vec![id];
            data.extend_from_slice(&rest);
            let p = CryptoDataPayload { buffer_start: bs, packet_number: num, data };
            let plain = p.encode().expect("encode");
            prop_assert_eq!((plain.len() - 8) % 8, (MAX_CRYPTO_DATA_SIZE) % 8);
            prop_assert_eq!(CryptoDataPayload::decode(&plain).expect("decode"), p.clone());
            prop_assert_eq!(CryptoDataPayload::decode_vec(plain.clone()).expect("decode"), p.clone());
            let saved = Nonce(base);
            let mut sent = saved;
            nonce_add(&mut sent, u32::from(step));
            let pkt = CryptoData::seal(&sent, &kb, &p).expect("seal");
            let bytes = pkt.encode();
            prop_assert_eq!(bytes.len(), CRYPTO_DATA_OVERHEAD + plain.len() - 8);
            let back = CryptoData::decode(&bytes).expect("decode");
            let (low, ct) = CryptoData::split(&bytes).expect("split");
            prop_assert_eq!((low, ct), (back.nonce_low, back.ciphertext.as_slice()));
            let (n, diff) = reconstruct_nonce(&saved, back.nonce_low);
            prop_assert_eq!(diff, step);
            prop_assert_eq!(n, sent);
            prop_assert_eq!(back.open(&n, &ka).expect("open"), p);
        }

        #[test]
        fn packet_request_round_trip(mut missing in proptest::collection::vec(0u32..40_000, 0..200)) {
            missing.sort_unstable();
            missing.dedup();
            let r = PacketRequest { covered: missing.last().map_or(0, |m| m + 1), missing };
            let bytes = r.encode();
            prop_assert!(bytes.len() <= MAX_CRYPTO_DATA_SIZE);
            let back = PacketRequest::decode(&bytes).expect("decode");
            if bytes.len() < MAX_CRYPTO_DATA_SIZE {
                prop_assert_eq!(back, r);
            } else {
                prop_assert!(r.missing.starts_with(&back.missing));
            }
        }

        /// Any bytes: never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = CookieRequest::decode(&bytes);
            let _ = CookieResponse::decode(&bytes);
            let _ = Handshake::decode(&bytes);
            let _ = CryptoData::decode(&bytes);
            let _ = CryptoDataPayload::decode(&bytes);
            let _ = PacketRequest::decode(&bytes);
            let _ = HandshakePayload::decode(&bytes);
            let _ = CookiePlain::decode(&bytes);
        }
    }
}
