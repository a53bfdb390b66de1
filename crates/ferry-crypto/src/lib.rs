//! ferry's cryptographic building blocks, as the Tox protocol uses them.
//!
//! * [`PublicKey`] / [`SecretKey`] / [`KeyPair`]: X25519 keys (32 bytes each), used both as the
//!   ephemeral *DHT key* and as the *long-term key* of the Tox ID (`tox-protocol.md` §0, §1).
//! * [`PrecomputedKey`]: NaCl `crypto_box` (X25519 + XSalsa20-Poly1305, 24-byte nonce, 16-byte MAC
//!   in front of the ciphertext) with the shared key computed once (`crypto_box_beforenm`).
//! * [`PrecomputedCache`]: a bounded LRU of precomputed keys per remote public key.
//! * [`Nonce`]: 24-byte nonces; random, or incremented as a 24-byte big-endian integer.
//! * [`rng`]: randomness is *injected*. Protocol crates never read the OS RNG; the I/O layer seeds a
//!   [`rng::FerryRng`] and hands it in (architecture.md house rule 1).
//!
//! No primitive here is implemented by hand: keys are RustCrypto's `crypto_box` (X25519), and
//! the packet cipher (`crypto_box_beforenm`, XSalsa20-Poly1305) is libsodium's, reached through
//! the crate's one `unsafe` module, `sodium` (about twice as fast as the portable RustCrypto
//! Salsa20 at Tox's largest packets; bench/RESULTS.md, "libsodium").

#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use zeroize::Zeroize;

pub mod rng;
#[allow(unsafe_code)]
mod sodium;

use rng::CryptoRng;

/// Size of an X25519 public or secret key, in bytes.
pub const KEY_SIZE: usize = 32;
/// Size of a `crypto_box` nonce, in bytes.
pub const NONCE_SIZE: usize = 24;
/// Size of the Poly1305 MAC that `crypto_box` puts in front of every ciphertext, in bytes.
pub const MAC_SIZE: usize = 16;

/// Errors of this crate.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The ciphertext did not authenticate under this key and nonce (wrong key, tampered bytes,
    /// or shorter than the 16-byte MAC).
    #[error("decryption failed: the packet does not authenticate")]
    Decrypt,
    /// Encryption failed (only possible for absurdly long plaintexts).
    #[error("encryption failed")]
    Encrypt,
    /// A hex string was not exactly the expected number of hex digits.
    #[error("expected {expected} hex characters, got {got}")]
    HexLength {
        /// Number of hex characters expected.
        expected: usize,
        /// Number of characters given.
        got: usize,
    },
    /// A hex string contained a character that is not a hex digit.
    #[error("not a hex string: {0}")]
    Hex(String),
}

/// An X25519 public key (32 bytes): a DHT public key or a long-term public key.
///
/// Ordering and equality are bytewise. Prints as 64 upper-case hex digits (as c-toxcore clients do).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_SIZE]);

impl PublicKey {
    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    /// Builds a key from a slice of exactly 32 bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_SIZE]>::try_from(bytes).ok().map(Self)
    }

    /// Upper-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0)
    }

    /// Parses 64 hex characters (either case).
    ///
    /// # Errors
    /// [`CryptoError::HexLength`] or [`CryptoError::Hex`].
    pub fn from_hex(s: &str) -> Result<Self, CryptoError> {
        decode_hex_array::<KEY_SIZE>(s).map(Self)
    }

    /// Compares the XOR distances of `a` and `b` to `self` (Kademlia metric; the Tox spec's
    /// "distance": XOR read as a 256-bit big-endian number). `Less` means `a` is closer.
    pub fn distance_cmp(&self, a: &Self, b: &Self) -> Ordering {
        // Eight bytes at a time: big-endian words compare as the bytes they hold.
        let word = |k: &Self, i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&k.0[i * 8..i * 8 + 8]);
            u64::from_be_bytes(w)
        };
        for i in 0..KEY_SIZE / 8 {
            let own = word(self, i);
            match (own ^ word(a, i)).cmp(&(own ^ word(b, i))) {
                Ordering::Equal => continue,
                other => return other,
            }
        }
        Ordering::Equal
    }

    /// Number of leading bits `self` shares with `other` (0..=256). The close-list bucket index
    /// is this value capped at 127 (`tox-protocol.md` §3.2).
    pub fn common_prefix_bits(&self, other: &Self) -> u32 {
        for i in 0..KEY_SIZE {
            let x = self.0[i] ^ other.0[i];
            if x != 0 {
                return (i as u32) * 8 + x.leading_zeros();
            }
        }
        256
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 8 hex digits are enough to tell keys apart in logs.
        write!(f, "PublicKey({}…)", &self.to_hex()[..8])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for PublicKey {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

/// Decodes exactly `N` bytes from `2 * N` hex characters (either case).
///
/// # Errors
/// [`CryptoError::HexLength`] when the length is wrong, [`CryptoError::Hex`] on a non-hex digit.
pub fn decode_hex_array<const N: usize>(s: &str) -> Result<[u8; N], CryptoError> {
    let s = s.trim();
    if s.len() != N * 2 {
        return Err(CryptoError::HexLength {
            expected: N * 2,
            got: s.len(),
        });
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|e| CryptoError::Hex(e.to_string()))?;
    Ok(out)
}

/// An X25519 secret key (32 bytes). Zeroized on drop; `Debug` never prints the bytes.
#[derive(Clone)]
pub struct SecretKey(crypto_box::SecretKey);

impl SecretKey {
    /// Builds a secret key from 32 bytes (clamping happens inside X25519, as in NaCl).
    pub fn from_bytes(mut bytes: [u8; KEY_SIZE]) -> Self {
        let key = crypto_box::SecretKey::from(bytes);
        bytes.zeroize();
        Self(key)
    }

    /// The 32 secret bytes, for persistence only (profile files, Tox save format).
    pub fn to_bytes(&self) -> [u8; KEY_SIZE] {
        self.0.to_bytes()
    }

    /// The 32 secret bytes as 64 upper-case hex digits, for persistence and for handing the key to
    /// another Tox implementation (profile files, the interop tests' c-toxcore peer).
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.0.to_bytes())
    }

    /// The matching public key (`crypto_scalarmult_base`).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.public_key().as_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A key pair: [`PublicKey`] and its [`SecretKey`].
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// The public half (32 bytes).
    pub public: PublicKey,
    /// The secret half (32 bytes, zeroized on drop).
    pub secret: SecretKey,
}

impl KeyPair {
    /// A fresh key pair from injected randomness (as `crypto_new_keypair`).
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; KEY_SIZE];
        rng.fill_bytes(&mut bytes);
        Self::from_secret(SecretKey::from_bytes(bytes))
    }

    /// The key pair of a known secret key.
    pub fn from_secret(secret: SecretKey) -> Self {
        Self {
            public: secret.public_key(),
            secret,
        }
    }
}

/// A 24-byte `crypto_box` nonce.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Nonce(pub [u8; NONCE_SIZE]);

impl Nonce {
    /// A random nonce from injected randomness (every Tox nonce not derived by increment).
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut n = [0u8; NONCE_SIZE];
        rng.fill_bytes(&mut n);
        Self(n)
    }

    /// Adds one, reading the nonce as a 24-byte big-endian integer, wrapping (`increment_nonce`).
    pub fn increment(&mut self) {
        for byte in self.0.iter_mut().rev() {
            let (v, carry) = byte.overflowing_add(1);
            *byte = v;
            if !carry {
                break;
            }
        }
    }
}

/// A precomputed `crypto_box` key between one of our secret keys and a peer's public key
/// (`crypto_box_beforenm`, 32 bytes, zeroized on drop). The same key encrypts and decrypts in
/// both directions: `crypto_box_afternm` is `crypto_secretbox` (XSalsa20-Poly1305) with it.
pub struct PrecomputedKey([u8; KEY_SIZE]);

impl PrecomputedKey {
    /// Precomputes HSalsa20(X25519(`ours`, `theirs`)).
    pub fn new(ours: &SecretKey, theirs: &PublicKey) -> Self {
        let mut sk = ours.to_bytes();
        let key = Self(sodium::beforenm(&theirs.0, &sk));
        sk.zeroize();
        key
    }

    /// Wraps 32 bytes as the result of `crypto_box_beforenm` (no X25519): encrypting and
    /// decrypting are then `crypto_box_afternm` with these bytes. The simulator's hashed key
    /// agreement uses it (`ferry_sim::dht::KeyAgreement::Hashed`), where both ends of a pair
    /// derive the same bytes from their public keys; a real node never does, because such a
    /// key is known to anyone who knows both public keys.
    pub fn from_beforenm_bytes(mut bytes: [u8; KEY_SIZE]) -> Self {
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Encrypts `plaintext`; the result is `MAC (16 bytes) ‖ ciphertext`, NaCl layout, so it is
    /// `plaintext.len() + 16` bytes long.
    ///
    /// # Errors
    /// [`CryptoError::Encrypt`] only for plaintexts beyond XSalsa20's range.
    pub fn encrypt(&self, nonce: &Nonce, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.0, nonce, plaintext)
    }

    /// Encrypts in place for hot paths (net_crypto data packets): `buf[at..at + 16]` is room for
    /// the MAC, `buf[at + 16..]` the plaintext, which becomes the ciphertext. Afterwards
    /// `buf[at..]` is `MAC ‖ ciphertext`, exactly what [`PrecomputedKey::encrypt`] returns; the
    /// bytes before `at` (a packet header) are untouched. Saves the intermediate buffers.
    ///
    /// # Errors
    /// [`CryptoError::Encrypt`] when `buf` is shorter than `at + 16`.
    pub fn encrypt_in_place(
        &self,
        nonce: &Nonce,
        buf: &mut [u8],
        at: usize,
    ) -> Result<(), CryptoError> {
        let Some(msg_at) = at.checked_add(MAC_SIZE).filter(|&m| m <= buf.len()) else {
            return Err(CryptoError::Encrypt);
        };
        let tag = sodium::seal_detached(&self.0, &nonce.0, &mut buf[msg_at..])
            .map_err(|()| CryptoError::Encrypt)?;
        buf[at..msg_at].copy_from_slice(&tag);
        Ok(())
    }

    /// Decrypts `MAC ‖ ciphertext`; the result is `ciphertext.len() - 16` bytes.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the bytes do not authenticate (or are shorter than the MAC).
    pub fn decrypt(&self, nonce: &Nonce, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.0, nonce, ciphertext)
    }

    /// Decrypts in place for hot paths: `buf` is `MAC (16 bytes) ‖ ciphertext`; afterwards
    /// `buf[16..]` is the plaintext (the first 16 bytes are left as they were). On failure
    /// `buf` is unchanged.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the bytes do not authenticate (or are shorter than the MAC).
    pub fn decrypt_in_place(&self, nonce: &Nonce, buf: &mut [u8]) -> Result<(), CryptoError> {
        let (mac, msg) = buf
            .split_first_chunk_mut::<MAC_SIZE>()
            .ok_or(CryptoError::Decrypt)?;
        sodium::open_detached(&self.0, &nonce.0, mac, msg).map_err(|()| CryptoError::Decrypt)
    }
}

impl Drop for PrecomputedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PrecomputedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrecomputedKey(<redacted>)")
    }
}

/// `MAC ‖ ciphertext` of `plaintext` under `key` (XSalsa20-Poly1305).
fn seal(key: &[u8; KEY_SIZE], nonce: &Nonce, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(MAC_SIZE + plaintext.len());
    out.extend_from_slice(&[0u8; MAC_SIZE]);
    out.extend_from_slice(plaintext);
    let tag = sodium::seal_detached(key, &nonce.0, &mut out[MAC_SIZE..])
        .map_err(|()| CryptoError::Encrypt)?;
    out[..MAC_SIZE].copy_from_slice(&tag);
    Ok(out)
}

/// The plaintext of `MAC ‖ ciphertext` under `key`.
fn open(key: &[u8; KEY_SIZE], nonce: &Nonce, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (mac, msg) = ciphertext
        .split_first_chunk::<MAC_SIZE>()
        .ok_or(CryptoError::Decrypt)?;
    let mut out = msg.to_vec();
    sodium::open_detached(key, &nonce.0, mac, &mut out).map_err(|()| CryptoError::Decrypt)?;
    Ok(out)
}

/// A symmetric NaCl `crypto_secretbox` key (XSalsa20-Poly1305, 32 bytes), used for state only its
/// creator reads back: onion return blobs (`tox-protocol.md` §4.1, rotated every 2 h) and
/// net_crypto cookies (§5.1). Zeroized on drop.
pub struct SymmetricKey([u8; KEY_SIZE]);

impl SymmetricKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; KEY_SIZE];
        rng.fill_bytes(&mut bytes);
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Wraps 32 raw key bytes (e.g. derived from a passphrase for toxencryptsave).
    pub fn from_bytes(mut bytes: [u8; KEY_SIZE]) -> Self {
        let key = Self(bytes);
        bytes.zeroize();
        key
    }

    /// Encrypts `plaintext` to `MAC (16 bytes) ‖ ciphertext` (`crypto_secretbox_easy` layout,
    /// `plaintext.len() + 16` bytes).
    ///
    /// # Errors
    /// [`CryptoError::Encrypt`] only for plaintexts beyond XSalsa20's range.
    pub fn encrypt(&self, nonce: &Nonce, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal(&self.0, nonce, plaintext)
    }

    /// Decrypts `MAC ‖ ciphertext`.
    ///
    /// # Errors
    /// [`CryptoError::Decrypt`] when the bytes do not authenticate or are shorter than the MAC.
    pub fn decrypt(&self, nonce: &Nonce, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open(&self.0, nonce, ciphertext)
    }
}

impl Drop for SymmetricKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

/// SHA-512 of `data` (64 bytes): the cookie hash in the net_crypto handshake (`tox-protocol.md`
/// §5.1).
pub fn sha512(data: &[u8]) -> [u8; 64] {
    use sha2::Digest;
    sha2::Sha512::digest(data).into()
}

/// SHA-256 of `data` (32 bytes): toxencryptsave's passphrase pre-hash and ferry's content ids.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Where a [`PrecomputedCache`] gets a key it does not hold.
///
/// Nodes compute it ([`PrecomputedKey::new`]). The simulator plugs in a memo shared by all its
/// nodes: both ends of a pair derive the same key, so each pair's X25519 runs once instead of
/// twice. Results are identical either way.
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The key between `ours` (whose public half is `our_public`) and `theirs`.
    fn precompute(
        &self,
        ours: &SecretKey,
        our_public: &PublicKey,
        theirs: &PublicKey,
    ) -> Arc<PrecomputedKey>;
}

/// A bounded cache of [`PrecomputedKey`]s between one fixed secret key of ours and many peers, so
/// the X25519 scalar multiplication runs once per peer, not once per packet (c-toxcore's
/// `shared_key_cache`). Keyed by remote input, so it is capped (house rule 6).
///
/// Eviction is least-recently-used in batches: each entry carries the tick of its last use, and
/// when the cache is full the eighth least recently used entries leave at once (O(capacity) per
/// eviction, amortised over capacity / 8 insertions). A hit costs one hash of the peer's key and
/// one probe of the table (its 7-bit tag group, then the entry), with no linked list to update
/// (this lookup runs for every DHT packet sent or received). The 32-byte key sits in the entry
/// itself, next to the peer's public key, so a hit reads no other memory (issue 3, simulator
/// speed: a per-entry `Arc` cost one more cache miss per packet).
pub struct PrecomputedCache {
    secret: SecretKey,
    public: PublicKey,
    table: hashbrown::HashTable<CacheEntry>,
    /// Hashes a peer's key for `table` (seeded per process: remote input chooses the keys).
    hasher: hashbrown::DefaultHashBuilder,
    capacity: usize,
    tick: u64,
    source: Option<Arc<dyn KeySource>>,
    computed: u64,
}

/// One [`PrecomputedCache`] entry: the peer, the tick of its last use and the key (72 bytes).
struct CacheEntry {
    peer: PublicKey,
    used: u64,
    key: PrecomputedKey,
}

impl PrecomputedCache {
    /// A cache for `secret` holding at most `capacity` peers (at least 1).
    pub fn new(secret: SecretKey, capacity: usize) -> Self {
        Self::with_source(secret, capacity, None)
    }

    /// Like [`PrecomputedCache::new`], taking missing keys from `source` when given.
    pub fn with_source(
        secret: SecretKey,
        capacity: usize,
        source: Option<Arc<dyn KeySource>>,
    ) -> Self {
        let capacity = capacity.max(1);
        let public = secret.public_key();
        Self {
            secret,
            public,
            table: hashbrown::HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            capacity,
            tick: 0,
            source,
            computed: 0,
        }
    }

    /// The precomputed key for `peer`, computing and caching it if needed.
    pub fn get(&mut self, peer: &PublicKey) -> &PrecomputedKey {
        use std::hash::BuildHasher;
        self.tick += 1;
        let tick = self.tick;
        let hash = self.hasher.hash_one(peer);
        // One probe: a hit returns from it, a miss gets the table back for the insertion.
        let table = match self.table.find_entry(hash, |e| e.peer == *peer) {
            Ok(hit) => {
                let e = hit.into_mut();
                e.used = tick;
                return &e.key;
            }
            Err(absent) => absent.into_table(),
        };
        if table.len() >= self.capacity {
            evict(table);
        }
        self.computed += 1;
        let key = match &self.source {
            // The entry keeps its own copy of the 32 bytes (zeroized on drop, as the source's).
            Some(s) => PrecomputedKey(s.precompute(&self.secret, &self.public, peer).0),
            None => PrecomputedKey::new(&self.secret, peer),
        };
        let hasher = &self.hasher;
        let entry = CacheEntry {
            peer: *peer,
            used: tick,
            key,
        };
        &table
            .insert_unique(hash, entry, |e| hasher.hash_one(e.peer))
            .into_mut()
            .key
    }

    /// Cache misses since creation: how many distinct peers' keys had to be fetched or computed.
    pub fn computed(&self) -> u64 {
        self.computed
    }

    /// Number of cached peers.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Drops the least recently used eighth of `table`'s entries (at least one).
fn evict(table: &mut hashbrown::HashTable<CacheEntry>) {
    let drop = (table.len() / 8).max(1);
    let mut used: Vec<u64> = table.iter().map(|e| e.used).collect();
    let (_, &mut threshold, _) = used.select_nth_unstable(drop - 1);
    // Ticks are unique, so exactly `drop` entries are at or below the threshold.
    table.retain(|e| e.used > threshold);
}

impl fmt::Debug for PrecomputedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrecomputedCache")
            .field("len", &self.table.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Constant-time equality of two byte strings of equal length (MACs, tokens, ping ids).
/// Different lengths compare unequal (the length itself is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    /// libsodium gives the very bytes RustCrypto's `crypto_box` / `crypto_secretbox` (what
    /// ferry used before, and an independent implementation) give, for every size class of
    /// Tox packet, in both directions, including the in-place paths and the low-order-key case.
    #[test]
    fn libsodium_matches_rustcrypto() {
        use crypto_box::aead::{Aead, KeyInit};
        let mut rng = FerryRng::from_u64(11);
        for round in 0..40usize {
            let a = KeyPair::generate(&mut rng);
            let b = KeyPair::generate(&mut rng);
            let nonce = Nonce::random(&mut rng);
            let len = [
                0, 1, 15, 16, 17, 63, 64, 65, 100, 511, 1024, 1373, 1400, 4097,
            ][round % 14];
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            let theirs = crypto_box::PublicKey::from(b.public.0);
            let ours = crypto_box::SecretKey::from(a.secret.to_bytes());
            let reference = crypto_box::SalsaBox::new(&theirs, &ours)
                .encrypt(&nonce.0.into(), &msg[..])
                .expect("rustcrypto encrypt");
            let k = PrecomputedKey::new(&a.secret, &b.public);
            assert_eq!(
                k.encrypt(&nonce, &msg).expect("encrypt"),
                reference,
                "len {len}"
            );
            let mut buf = vec![0xeeu8; 3];
            buf.extend_from_slice(&[0u8; MAC_SIZE]);
            buf.extend_from_slice(&msg);
            k.encrypt_in_place(&nonce, &mut buf, 3).expect("in place");
            assert_eq!(&buf[..3], &[0xee; 3]);
            assert_eq!(&buf[3..], &reference[..]);
            let back = PrecomputedKey::new(&b.secret, &a.public);
            assert_eq!(back.decrypt(&nonce, &reference).expect("decrypt"), msg);
            let mut inplace = reference.clone();
            back.decrypt_in_place(&nonce, &mut inplace)
                .expect("decrypt in place");
            assert_eq!(&inplace[MAC_SIZE..], &msg[..]);
            let mut sym = [0u8; KEY_SIZE];
            rng.fill_bytes(&mut sym);
            let sref = crypto_secretbox::XSalsa20Poly1305::new(&sym.into())
                .encrypt(&nonce.0.into(), &msg[..])
                .expect("rustcrypto secretbox");
            let sk = SymmetricKey::from_bytes(sym);
            assert_eq!(sk.encrypt(&nonce, &msg).expect("encrypt"), sref);
            assert_eq!(sk.decrypt(&nonce, &sref).expect("decrypt"), msg);
        }
        // A low-order public key (all zeros): libsodium's beforenm refuses it; ours keeps the
        // NaCl / RustCrypto result (HSalsa20 of the zero secret) so packets stay the same.
        let a = KeyPair::generate(&mut rng);
        let zero = PublicKey([0u8; KEY_SIZE]);
        let nonce = Nonce::random(&mut rng);
        let reference = crypto_box::SalsaBox::new(
            &crypto_box::PublicKey::from(zero.0),
            &crypto_box::SecretKey::from(a.secret.to_bytes()),
        )
        .encrypt(&nonce.0.into(), &b"x"[..])
        .expect("rustcrypto");
        let k = PrecomputedKey::new(&a.secret, &zero);
        assert_eq!(k.encrypt(&nonce, b"x").expect("encrypt"), reference);
    }

    #[test]
    fn in_place_decrypt_rejects_tamper_and_short() {
        let mut rng = FerryRng::from_u64(12);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let nonce = Nonce::random(&mut rng);
        let k = PrecomputedKey::new(&a.secret, &b.public);
        // Both paths: RustCrypto below `sodium::SMALL` bytes, libsodium above.
        for len in [11usize, sodium::SMALL - 1, sodium::SMALL, 1373] {
            let boxed = k.encrypt(&nonce, &vec![7u8; len]).expect("encrypt");
            let mut t = boxed.clone();
            t[MAC_SIZE + len / 2] ^= 4;
            let before = t.clone();
            assert_eq!(
                k.decrypt_in_place(&nonce, &mut t),
                Err(CryptoError::Decrypt)
            );
            assert_eq!(
                t, before,
                "a failed decrypt leaves the buffer as it was ({len})"
            );
            let mut ok = boxed.clone();
            k.decrypt_in_place(&nonce, &mut ok).expect("decrypt");
            assert_eq!(&ok[MAC_SIZE..], &vec![7u8; len][..]);
        }
        let boxed = k.encrypt(&nonce, b"hello world").expect("encrypt");
        let mut short = boxed[..MAC_SIZE - 1].to_vec();
        assert_eq!(
            k.decrypt_in_place(&nonce, &mut short),
            Err(CryptoError::Decrypt)
        );
        assert!(k.decrypt(&nonce, &boxed[..MAC_SIZE - 1]).is_err());
        let mut empty = boxed[..MAC_SIZE].to_vec();
        assert!(k.decrypt_in_place(&nonce, &mut empty).is_err());
    }

    #[test]
    fn secretbox_round_trip_and_tamper() {
        let mut rng = FerryRng::from_u64(7);
        let key = SymmetricKey::generate(&mut rng);
        let nonce = Nonce::random(&mut rng);
        let mut boxed = key.encrypt(&nonce, b"cookie").expect("encrypt");
        assert_eq!(boxed.len(), 6 + MAC_SIZE);
        assert_eq!(key.decrypt(&nonce, &boxed).expect("decrypt"), b"cookie");
        boxed[3] ^= 1;
        assert!(key.decrypt(&nonce, &boxed).is_err());
        assert!(key.decrypt(&nonce, &boxed[..10]).is_err());
    }

    #[test]
    fn sha512_known_answer() {
        // FIPS 180-2 "abc".
        assert_eq!(hex::encode(&sha512(b"abc")[..8]), "ddaf35a193617aba");
        assert_eq!(hex::encode(&sha256(b"abc")[..8]), "ba7816bf8f01cfea");
    }

    use super::*;
    use crate::rng::FerryRng;
    use rand_core::RngCore;

    #[test]
    fn box_round_trip_and_symmetry() {
        let mut rng = FerryRng::from_seed([7; 32]);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        let ab = PrecomputedKey::new(&a.secret, &b.public);
        let ba = PrecomputedKey::new(&b.secret, &a.public);
        let nonce = Nonce::random(&mut rng);
        let ct = ab.encrypt(&nonce, b"hello tox").expect("encrypt");
        assert_eq!(ct.len(), 9 + MAC_SIZE);
        assert_eq!(ba.decrypt(&nonce, &ct).expect("decrypt"), b"hello tox");
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert_eq!(ba.decrypt(&nonce, &bad), Err(CryptoError::Decrypt));
        assert_eq!(ba.decrypt(&nonce, &ct[..10]), Err(CryptoError::Decrypt));
        // In place, behind a 3-byte header: same bytes as `encrypt`.
        let mut buf = vec![0xee, 0xff, 0x11];
        buf.extend_from_slice(&[0; MAC_SIZE]);
        buf.extend_from_slice(b"hello tox");
        ab.encrypt_in_place(&nonce, &mut buf, 3).expect("in place");
        assert_eq!(&buf[..3], &[0xee, 0xff, 0x11]);
        assert_eq!(&buf[3..], &ct[..]);
        assert_eq!(
            ab.encrypt_in_place(&nonce, &mut [0u8; 10], 0),
            Err(CryptoError::Encrypt)
        );
    }

    /// NaCl test vector from the `crypto_box` documentation (Bernstein's "box" example):
    /// checks the MAC-first layout and HSalsa20 key derivation against libsodium's output.
    #[test]
    fn nacl_box_vector() {
        let alice_sk: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let bob_pk: [u8; 32] = [
            0xde, 0x9e, 0xdb, 0x7d, 0x7b, 0x7d, 0xc1, 0xb4, 0xd3, 0x5b, 0x61, 0xc2, 0xec, 0xe4,
            0x35, 0x37, 0x3f, 0x83, 0x43, 0xc8, 0x5b, 0x78, 0x67, 0x4d, 0xad, 0xfc, 0x7e, 0x14,
            0x6f, 0x88, 0x2b, 0x4f,
        ];
        let nonce: [u8; 24] = [
            0x69, 0x69, 0x6e, 0xe9, 0x55, 0xb6, 0x2b, 0x73, 0xcd, 0x62, 0xbd, 0xa8, 0x75, 0xfc,
            0x73, 0xd6, 0x82, 0x19, 0xe0, 0x03, 0x6b, 0x7a, 0x0b, 0x37,
        ];
        let key = PrecomputedKey::new(&SecretKey::from_bytes(alice_sk), &PublicKey(bob_pk));
        // First 32 bytes of the NaCl test message and the matching output (MAC then ciphertext).
        let msg: [u8; 32] = [
            0xbe, 0x07, 0x5f, 0xc5, 0x3c, 0x81, 0xf2, 0xd5, 0xcf, 0x14, 0x13, 0x16, 0xeb, 0xeb,
            0x0c, 0x7b, 0x52, 0x28, 0xc5, 0x2a, 0x4c, 0x62, 0xcb, 0xd4, 0x4b, 0x66, 0x84, 0x9b,
            0x64, 0x24, 0x4f, 0xfc,
        ];
        let ct = key.encrypt(&Nonce(nonce), &msg).expect("encrypt");
        // The stream part of NaCl's vector (after its 16-byte MAC) starts 8e 99 3b 9f 48 68 12 73;
        // the MAC covers the whole 131-byte message, so only the stream bytes are comparable here.
        assert_eq!(
            &ct[16..24],
            &[0x8e, 0x99, 0x3b, 0x9f, 0x48, 0x68, 0x12, 0x73]
        );
        // NaCl's `crypto_box_beforenm` of the same pair (its test "box7"/"core1" key): wrapped
        // as raw bytes it gives the very same packet, MAC included, and opens it.
        let beforenm: [u8; 32] = [
            0x1b, 0x27, 0x55, 0x64, 0x73, 0xe9, 0x85, 0xd4, 0x62, 0xcd, 0x51, 0x19, 0x7a, 0x9a,
            0x46, 0xc7, 0x60, 0x09, 0x54, 0x9e, 0xac, 0x64, 0x74, 0xf2, 0x06, 0xc4, 0xee, 0x08,
            0x44, 0xf6, 0x83, 0x89,
        ];
        let raw = PrecomputedKey::from_beforenm_bytes(beforenm);
        assert_eq!(raw.encrypt(&Nonce(nonce), &msg).expect("encrypt"), ct);
        assert_eq!(raw.decrypt(&Nonce(nonce), &ct).expect("decrypt"), msg);
        let mut buf = vec![0u8; MAC_SIZE + msg.len()];
        buf[MAC_SIZE..].copy_from_slice(&msg);
        raw.encrypt_in_place(&Nonce(nonce), &mut buf, 0)
            .expect("in place");
        assert_eq!(buf, ct);
    }

    #[test]
    fn nonce_increment_carries() {
        let mut n = Nonce([0xff; 24]);
        n.increment();
        assert_eq!(n.0, [0; 24]);
        let mut n = Nonce([0; 24]);
        n.0[23] = 0xff;
        n.increment();
        assert_eq!(n.0[22], 1);
        assert_eq!(n.0[23], 0);
    }

    #[test]
    fn distance_and_prefix() {
        let me = PublicKey([0; 32]);
        let mut a = [0u8; 32];
        a[31] = 1;
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(
            me.distance_cmp(&PublicKey(a), &PublicKey(b)),
            Ordering::Less
        );
        assert_eq!(me.common_prefix_bits(&PublicKey(b)), 0);
        assert_eq!(me.common_prefix_bits(&PublicKey(a)), 255);
        assert_eq!(me.common_prefix_bits(&me), 256);
    }

    #[test]
    fn hex_errors_are_clear() {
        assert!(matches!(
            PublicKey::from_hex("abc"),
            Err(CryptoError::HexLength { .. })
        ));
        let bad = "zz".repeat(32);
        assert!(matches!(
            PublicKey::from_hex(&bad),
            Err(CryptoError::Hex(_))
        ));
        let k = PublicKey([0xab; 32]);
        assert_eq!(PublicKey::from_hex(&k.to_hex().to_lowercase()), Ok(k));
    }

    #[test]
    fn cache_is_bounded() {
        let mut rng = FerryRng::from_seed([1; 32]);
        let me = KeyPair::generate(&mut rng);
        let mut cache = PrecomputedCache::new(me.secret.clone(), 4);
        for _ in 0..10 {
            let peer = KeyPair::generate(&mut rng).public;
            let _ = cache.get(&peer);
        }
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn cache_keeps_recently_used_keys_and_evicts_old_ones() {
        let mut rng = FerryRng::from_seed([2; 32]);
        let me = KeyPair::generate(&mut rng);
        let mut cache = PrecomputedCache::new(me.secret.clone(), 16);
        let hot = KeyPair::generate(&mut rng).public;
        let nonce = Nonce([7; 24]);
        let expect = PrecomputedKey::new(&me.secret, &hot)
            .encrypt(&nonce, b"x")
            .expect("encrypt");
        let mut cold = Vec::new();
        for _ in 0..100 {
            assert_eq!(
                cache.get(&hot).encrypt(&nonce, b"x").expect("encrypt"),
                expect
            );
            let peer = KeyPair::generate(&mut rng).public;
            let _ = cache.get(&peer);
            cold.push(peer);
            assert!(cache.len() <= 16);
        }
        // The hot key was computed once; every cold key once.
        assert_eq!(cache.computed(), 101);
        // The first cold keys are long gone: getting one computes it again.
        let _ = cache.get(&cold[0]);
        assert_eq!(cache.computed(), 102);
        // The newest is still there.
        let _ = cache.get(&cold[99]);
        assert_eq!(cache.computed(), 102);
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
