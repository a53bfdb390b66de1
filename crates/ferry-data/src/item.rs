//! Stored items and their rules (`data-layer.md` §3.1; BEP 44 semantics).
//!
//! Five item classes share one encoding (first byte = class):
//!
//! | class | byte | target | who may write |
//! |---|---|---|---|
//! | [immutable](Item::Immutable) | 0 | `derive_key("eddt v1 immutable", value)` | anyone (value is self-certifying) |
//! | [mutable](MutableItem) | 1 | `derive_key("eddt v1 mutable", ed25519_pk ‖ salt)` | holder of the Ed25519 key, strictly higher `seq` |
//! | [claimed](ClaimedItem) | 2 | the 32-byte `name_id` (e.g. a [name](crate::name) hash) | first key seen by a storer, with proof of work |
//! | [mail](MailEnvelope) | 3 | a [mailbox address](crate::mailbox) | anyone; many envelopes per target |
//! | [mail delete](Item::MailDelete) | 4 | the mailbox address | whoever knows `d` with `H(d)` = an envelope's `delete_hash` |
//!
//! `derive_key` is BLAKE3's key-derivation mode (`blake3::derive_key`). Ed25519 is
//! `ed25519-dalek` with `verify_strict`.
//!
//! Encodings (all integers big-endian):
//!
//! | class | layout |
//! |---|---|
//! | 0 | `[0][len u16][value len ≤ 1000]` |
//! | 1 | `[1][pk 32][salt_len u8 ≤ 64][salt][seq u64][sig 64][len u16][value ≤ 1000]` |
//! | 2 | `[2][pk 32][name_id 32][pow u64][seq u64][sig 64][len u16][value ≤ 1000]` |
//! | 3 | `[3][delete_hash 32][pow u64][len u16][sealed ≤ 1096]` |
//! | 4 | `[4][d 32]` |

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ferry_crypto::PublicKey;
use ferry_wire::{Reader, WireError};

/// Largest item value, in bytes (BEP 44's 1000; one item fits one UDP packet).
pub const MAX_VALUE_SIZE: usize = 1000;
/// Largest mutable-item salt, in bytes (BEP 44: 64).
pub const MAX_SALT_SIZE: usize = 64;
/// Largest sealed mail envelope, in bytes: 32 ephemeral key + 24 nonce + 16 MAC + 1024 padded
/// plaintext ([`crate::mailbox`]).
pub const MAX_SEALED_MAIL_SIZE: usize = 32 + 24 + 16 + 1024;
/// Ed25519 signature size, in bytes.
pub const SIGNATURE_SIZE: usize = 64;
/// Leading zero bits a [`ClaimedItem`]'s proof of work must reach: 2^20 BLAKE3 hashes on average
/// (about 0.5 s on this machine's one core, `data-layer.md` §2/§3.2); checking costs one hash.
pub const CLAIM_POW_BITS: u32 = 20;

/// Longest lifetime a storer grants an immutable or mutable item (2 h, `data-layer.md` §3.1).
pub const MAX_TTL: Duration = Duration::from_secs(2 * 3600);
/// Longest lifetime a storer grants a claimed item (name record): 30 days without refresh
/// (`data-layer.md` §3.2).
pub const MAX_CLAIM_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Longest lifetime a storer grants a mail envelope: 7 days (`data-layer.md` §3.3).
pub const MAX_MAIL_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The owner (publisher) of an item re-puts it this often (60 min, BEP 44's skip rule).
pub const OWNER_REPUBLISH_INTERVAL: Duration = Duration::from_secs(3600);
/// The soonest an owner re-puts an item (60 s, the least lifetime a storer grants,
/// [`crate::store::MIN_TTL`]).
pub const MIN_OWNER_REPUBLISH: Duration = Duration::from_secs(60);

/// When the owner of an item should put it again, given the lifetimes (seconds) the holders
/// granted its last put ([`crate::lookup::LookupEvent::Stored`]): after
/// [`OWNER_REPUBLISH_INTERVAL`], or sooner when the storers granted less. A storer grants at most
/// a quarter of its uptime ([`crate::store`]), so under churn the k closest nodes can all be young
/// and keep an item only minutes, and holder republish carries only the lifetime left: the owner
/// must come back before the grants run out. The pace is half the second-longest grant (one
/// holder alone, which may be lying, does not set it), at least [`MIN_OWNER_REPUBLISH`]. No grant
/// (nobody stored the put): retry after [`MIN_OWNER_REPUBLISH`]. Found by the store simulation
/// (`ferry sim store`): with a fixed 60-minute re-put, about 1–2 % of items vanished under
/// 30 %/h churn.
pub fn owner_republish_after(granted_ttl_s: &[u32]) -> Duration {
    let mut g: Vec<u32> = granted_ttl_s.to_vec();
    g.sort_unstable_by(|a, b| b.cmp(a));
    let Some(&pace) = g.get(1).or_else(|| g.first()) else {
        return MIN_OWNER_REPUBLISH;
    };
    (Duration::from_secs(u64::from(pace)) / 2).clamp(MIN_OWNER_REPUBLISH, OWNER_REPUBLISH_INTERVAL)
}

/// Every holder re-puts what it holds to the current k closest this often, before jitter
/// (30 min; `data-layer.md` §3.1: 60 min is marginal under loss in the simulator).
pub const HOLDER_REPUBLISH_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Ed25519 public key of a mutable or claimed item's owner (32 bytes).
pub type OwnerKey = [u8; 32];

/// A storage address: 32 bytes in the DHT key space (distance = XOR, as DHT public keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(pub [u8; 32]);

impl Target {
    /// The target as a DHT key, for XOR distance ([`PublicKey::distance_cmp`]).
    pub fn key(&self) -> PublicKey {
        PublicKey(self.0)
    }

    /// Target of an immutable value: `derive_key("eddt v1 immutable", value)`.
    pub fn immutable(value: &[u8]) -> Self {
        Self(blake3::derive_key("eddt v1 immutable", value))
    }

    /// Target of a mutable item: `derive_key("eddt v1 mutable", pk ‖ salt)`.
    pub fn mutable(pk: &OwnerKey, salt: &[u8]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("eddt v1 mutable");
        h.update(pk);
        h.update(salt);
        Self(*h.finalize().as_bytes())
    }
}

/// Why a storer refused a put. Codes follow BEP 44 where it has one, so they can be logged and
/// compared with mainline DHT tooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PutError {
    /// 205: value (or sealed mail) too large.
    #[error("value too large")]
    TooLarge,
    /// 206: signature does not verify (or the Ed25519 key is not a valid point).
    #[error("invalid signature")]
    BadSignature,
    /// 207: salt longer than [`MAX_SALT_SIZE`].
    #[error("salt too large")]
    SaltTooLarge,
    /// 301: compare-and-swap failed (stored seq differs from the put's `cas`).
    #[error("cas mismatch")]
    CasMismatch,
    /// 302: seq lower than the stored one, or equal with a different value.
    #[error("sequence number less than current")]
    SeqTooLow,
    /// 303 (ferry): the claimed target is bound to another owner key.
    #[error("target claimed by another key")]
    Claimed,
    /// 304 (ferry): proof of work below [`CLAIM_POW_BITS`].
    #[error("insufficient proof of work")]
    Pow,
    /// 305 (ferry): the item's target is not the put's target.
    #[error("item does not belong to the target")]
    WrongTarget,
    /// 401 (ferry): missing, expired or foreign write token.
    #[error("bad write token")]
    BadToken,
    /// 402 (ferry): the sender's /24 (/48) or the mailbox is over its quota.
    #[error("quota exceeded")]
    Quota,
    /// 403 (ferry): the store is full of others' items it will not evict.
    #[error("store full")]
    Full,
    /// 404 (ferry): a mail delete matched nothing.
    #[error("nothing to delete")]
    NotFound,
}

impl PutError {
    /// The status code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::TooLarge => 205,
            Self::BadSignature => 206,
            Self::SaltTooLarge => 207,
            Self::CasMismatch => 301,
            Self::SeqTooLow => 302,
            Self::Claimed => 303,
            Self::Pow => 304,
            Self::WrongTarget => 305,
            Self::BadToken => 401,
            Self::Quota => 402,
            Self::Full => 403,
            Self::NotFound => 404,
        }
    }

    /// The error of a wire status code (0 = success is not an error: `None`).
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            205 => Self::TooLarge,
            206 => Self::BadSignature,
            207 => Self::SaltTooLarge,
            301 => Self::CasMismatch,
            302 => Self::SeqTooLow,
            303 => Self::Claimed,
            304 => Self::Pow,
            305 => Self::WrongTarget,
            401 => Self::BadToken,
            402 => Self::Quota,
            403 => Self::Full,
            404 => Self::NotFound,
            _ => return None,
        })
    }
}

/// A BEP 44 mutable item: value signed by an Ed25519 key, versioned by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MutableItem {
    /// The owner's Ed25519 public key.
    pub pk: OwnerKey,
    /// Salt (≤ 64 bytes) so one key can own many targets.
    pub salt: Vec<u8>,
    /// Version; storers keep only the highest.
    pub seq: u64,
    /// The value (≤ 1000 bytes).
    pub value: Vec<u8>,
    /// Ed25519 signature over [`MutableItem::signed_bytes`].
    pub sig: [u8; SIGNATURE_SIZE],
}

impl MutableItem {
    /// The signed message: `"eddt-mut-v1" ‖ len(salt) u8 ‖ salt ‖ seq u64 BE ‖ len(v) u16 BE ‖ v`
    /// (`data-layer.md` §3.1).
    pub fn signed_bytes(salt: &[u8], seq: u64, value: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(11 + 1 + salt.len() + 8 + 2 + value.len());
        m.extend_from_slice(b"eddt-mut-v1");
        m.push(salt.len() as u8);
        m.extend_from_slice(salt);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        m
    }

    /// Signs a new version with `key`.
    pub fn sign(key: &SigningKey, salt: &[u8], seq: u64, value: &[u8]) -> Self {
        let sig = key.sign(&Self::signed_bytes(salt, seq, value)).to_bytes();
        Self {
            pk: key.verifying_key().to_bytes(),
            salt: salt.to_vec(),
            seq,
            value: value.to_vec(),
            sig,
        }
    }

    /// Where the item lives.
    pub fn target(&self) -> Target {
        Target::mutable(&self.pk, &self.salt)
    }

    /// Checks sizes and the signature.
    ///
    /// # Errors
    /// [`PutError::SaltTooLarge`], [`PutError::TooLarge`], [`PutError::BadSignature`].
    pub fn verify(&self) -> Result<(), PutError> {
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(PutError::SaltTooLarge);
        }
        if self.value.len() > MAX_VALUE_SIZE {
            return Err(PutError::TooLarge);
        }
        verify_sig(
            &self.pk,
            &Self::signed_bytes(&self.salt, self.seq, &self.value),
            &self.sig,
        )
    }
}

fn verify_sig(pk: &OwnerKey, msg: &[u8], sig: &[u8; SIGNATURE_SIZE]) -> Result<(), PutError> {
    let vk = VerifyingKey::from_bytes(pk).map_err(|_| PutError::BadSignature)?;
    // verify_strict rejects small-order keys and malleable (non-canonical) signatures.
    vk.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| PutError::BadSignature)
}

/// A first-claim-wins item (used for [names](crate::name)): the target is a fixed 32-byte
/// `name_id`; the first storer-seen owner key binds it until the record expires; later versions
/// need the same key and a higher `seq`. Writing costs a proof of work bound to (name_id, pk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedItem {
    /// The owner's Ed25519 key (per name; unlinkable to the identity, [`crate::name`]).
    pub pk: OwnerKey,
    /// The target.
    pub name_id: [u8; 32],
    /// Proof-of-work nonce: [`claim_pow_bits`]`(name_id, pk, pow)` ≥ [`CLAIM_POW_BITS`].
    pub pow: u64,
    /// Version.
    pub seq: u64,
    /// The (sealed) value, ≤ 1000 bytes.
    pub value: Vec<u8>,
    /// Ed25519 signature over [`ClaimedItem::signed_bytes`].
    pub sig: [u8; SIGNATURE_SIZE],
}

/// Leading zero bits of `BLAKE3-derive("eddt v1 claim pow", name_id ‖ pk ‖ pow u64 BE)`.
pub fn claim_pow_bits(name_id: &[u8; 32], pk: &OwnerKey, pow: u64) -> u32 {
    let mut h = blake3::Hasher::new_derive_key("eddt v1 claim pow");
    h.update(name_id);
    h.update(pk);
    h.update(&pow.to_be_bytes());
    leading_zero_bits(h.finalize().as_bytes())
}

/// Leading zero bits of a byte string.
pub fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut n = 0;
    for b in bytes {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// Searches the smallest `pow ≥ start` reaching `bits` (2^bits hashes on average).
pub fn solve_claim_pow(name_id: &[u8; 32], pk: &OwnerKey, bits: u32, start: u64) -> u64 {
    let mut pow = start;
    while claim_pow_bits(name_id, pk, pow) < bits {
        pow = pow.wrapping_add(1);
    }
    pow
}

impl ClaimedItem {
    /// Signed message: `"eddt-claim-v1" ‖ name_id ‖ pow u64 ‖ seq u64 ‖ len(v) u16 ‖ v` (BE).
    pub fn signed_bytes(name_id: &[u8; 32], pow: u64, seq: u64, value: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(13 + 32 + 18 + value.len());
        m.extend_from_slice(b"eddt-claim-v1");
        m.extend_from_slice(name_id);
        m.extend_from_slice(&pow.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&(value.len() as u16).to_be_bytes());
        m.extend_from_slice(value);
        m
    }

    /// Signs a version; `pow` must already be solved (see [`solve_claim_pow`]).
    pub fn sign(key: &SigningKey, name_id: [u8; 32], pow: u64, seq: u64, value: &[u8]) -> Self {
        let sig = key
            .sign(&Self::signed_bytes(&name_id, pow, seq, value))
            .to_bytes();
        Self {
            pk: key.verifying_key().to_bytes(),
            name_id,
            pow,
            seq,
            value: value.to_vec(),
            sig,
        }
    }

    /// Checks size, proof of work (`bits` required) and signature.
    ///
    /// # Errors
    /// [`PutError::TooLarge`], [`PutError::Pow`], [`PutError::BadSignature`].
    pub fn verify(&self, bits: u32) -> Result<(), PutError> {
        if self.value.len() > MAX_VALUE_SIZE {
            return Err(PutError::TooLarge);
        }
        if claim_pow_bits(&self.name_id, &self.pk, self.pow) < bits {
            return Err(PutError::Pow);
        }
        verify_sig(
            &self.pk,
            &Self::signed_bytes(&self.name_id, self.pow, self.seq, &self.value),
            &self.sig,
        )
    }
}

/// One sealed offline message at a mailbox target ([`crate::mailbox`]). Holders see only
/// opaque bytes and `delete_hash = BLAKE3-derive("eddt v1 mail delete", d)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailEnvelope {
    /// Hash of the delete secret `d` sealed inside.
    pub delete_hash: [u8; 32],
    /// Hashcash nonce: [`MailEnvelope::pow_bits`] at the mailbox target must reach the storer's
    /// minimum ([`crate::store::StoreConfig::mail_pow_bits`], default [`MAIL_POW_BITS`]).
    pub pow: u64,
    /// Ephemeral-key sealed box, ≤ [`MAX_SEALED_MAIL_SIZE`] bytes.
    pub sealed: Vec<u8>,
}

/// Default hashcash a storer requires of each mail envelope: 16 bits (2^16 BLAKE3 over ~1 KiB,
/// tens of ms). Holders cannot tell friend requests from friend mail (by design), so this is one
/// store-wide floor; `data-layer.md` §3.3 suggests 2^20 for friend requests.
pub const MAIL_POW_BITS: u32 = 16;

impl MailEnvelope {
    /// Leading zero bits of `BLAKE3-derive("eddt v1 mail pow", target ‖ delete_hash ‖ pow u64 BE ‖
    /// sealed)`: the work is bound to the mailbox and the content.
    pub fn pow_bits(&self, target: &Target) -> u32 {
        let mut h = blake3::Hasher::new_derive_key("eddt v1 mail pow");
        h.update(&target.0);
        h.update(&self.delete_hash);
        h.update(&self.pow.to_be_bytes());
        h.update(&self.sealed);
        leading_zero_bits(h.finalize().as_bytes())
    }

    /// Searches `pow` from 0 until [`MailEnvelope::pow_bits`] ≥ `bits` (2^bits hashes on average).
    pub fn solve_pow(&mut self, target: &Target, bits: u32) {
        self.pow = 0;
        while self.pow_bits(target) < bits {
            self.pow = self.pow.wrapping_add(1);
        }
    }
}

/// `BLAKE3-derive("eddt v1 mail delete", d)`: what holders compare a revealed `d` against.
pub fn delete_hash(d: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("eddt v1 mail delete", d)
}

/// An item in a put or a get response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// Self-certifying value (≤ 1000 bytes).
    Immutable(Vec<u8>),
    /// Signed, versioned value.
    Mutable(MutableItem),
    /// First-claim-wins signed value.
    Claimed(ClaimedItem),
    /// Offline message.
    Mail(MailEnvelope),
    /// Reveals `d`: holders drop the envelope with `delete_hash(d)` at the target.
    MailDelete([u8; 32]),
}

impl Item {
    /// Checks the item's own rules (sizes, signatures, proof of work with [`CLAIM_POW_BITS`]).
    ///
    /// # Errors
    /// The [`PutError`] of the first rule broken.
    pub fn verify(&self) -> Result<(), PutError> {
        self.verify_with_pow(CLAIM_POW_BITS)
    }

    /// As [`Item::verify`] with a chosen claim difficulty (tests and simulators use a low one).
    ///
    /// # Errors
    /// The [`PutError`] of the first rule broken.
    pub fn verify_with_pow(&self, bits: u32) -> Result<(), PutError> {
        match self {
            Self::Immutable(v) if v.len() > MAX_VALUE_SIZE => Err(PutError::TooLarge),
            Self::Immutable(_) | Self::MailDelete(_) => Ok(()),
            Self::Mutable(m) => m.verify(),
            Self::Claimed(c) => c.verify(bits),
            Self::Mail(m) if m.sealed.len() > MAX_SEALED_MAIL_SIZE => Err(PutError::TooLarge),
            Self::Mail(_) => Ok(()),
        }
    }

    /// The target the item itself implies (`None` for mail and mail deletes: any mailbox).
    pub fn implied_target(&self) -> Option<Target> {
        match self {
            Self::Immutable(v) => Some(Target::immutable(v)),
            Self::Mutable(m) => Some(m.target()),
            Self::Claimed(c) => Some(Target(c.name_id)),
            Self::Mail(_) | Self::MailDelete(_) => None,
        }
    }

    /// Version for BEP 44 ordering (0 for unversioned classes).
    pub fn seq(&self) -> u64 {
        match self {
            Self::Mutable(m) => m.seq,
            Self::Claimed(c) => c.seq,
            _ => 0,
        }
    }

    /// Bytes the item costs a storer (its encoded size).
    pub fn cost(&self) -> usize {
        self.encoded_len()
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Immutable(v) => 3 + v.len(),
            Self::Mutable(m) => 1 + 32 + 1 + m.salt.len() + 8 + 64 + 2 + m.value.len(),
            Self::Claimed(c) => 1 + 32 + 32 + 8 + 8 + 64 + 2 + c.value.len(),
            Self::Mail(m) => 1 + 32 + 8 + 2 + m.sealed.len(),
            Self::MailDelete(_) => 33,
        }
    }

    /// Appends the encoding (table in the module docs).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Immutable(v) => {
                out.push(0);
                put_bytes16(out, v);
            }
            Self::Mutable(m) => {
                out.push(1);
                out.extend_from_slice(&m.pk);
                out.push(m.salt.len() as u8);
                out.extend_from_slice(&m.salt);
                out.extend_from_slice(&m.seq.to_be_bytes());
                out.extend_from_slice(&m.sig);
                put_bytes16(out, &m.value);
            }
            Self::Claimed(c) => {
                out.push(2);
                out.extend_from_slice(&c.pk);
                out.extend_from_slice(&c.name_id);
                out.extend_from_slice(&c.pow.to_be_bytes());
                out.extend_from_slice(&c.seq.to_be_bytes());
                out.extend_from_slice(&c.sig);
                put_bytes16(out, &c.value);
            }
            Self::Mail(m) => {
                out.push(3);
                out.extend_from_slice(&m.delete_hash);
                out.extend_from_slice(&m.pow.to_be_bytes());
                put_bytes16(out, &m.sealed);
            }
            Self::MailDelete(d) => {
                out.push(4);
                out.extend_from_slice(d);
            }
        }
    }

    /// Parses one item from `r` (sizes checked against the caps; signatures are not checked here:
    /// see [`Item::verify`]).
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for an unknown class, [`WireError::BadLength`] for an
    /// oversize field, [`WireError::Truncated`].
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let class = r.u8("item class")?;
        Ok(match class {
            0 => Self::Immutable(get_bytes16(r, MAX_VALUE_SIZE, "immutable value")?),
            1 => {
                let pk = r.array("mutable pk")?;
                let salt_len = usize::from(r.u8("salt length")?);
                if salt_len > MAX_SALT_SIZE {
                    return Err(WireError::BadLength {
                        what: "salt",
                        len: salt_len,
                    });
                }
                let salt = r.take(salt_len, "salt")?.to_vec();
                let seq = u64::from_be_bytes(r.array("seq")?);
                let sig = r.array("signature")?;
                let value = get_bytes16(r, MAX_VALUE_SIZE, "mutable value")?;
                Self::Mutable(MutableItem {
                    pk,
                    salt,
                    seq,
                    value,
                    sig,
                })
            }
            2 => {
                let pk = r.array("claim pk")?;
                let name_id = r.array("name id")?;
                let pow = u64::from_be_bytes(r.array("pow")?);
                let seq = u64::from_be_bytes(r.array("seq")?);
                let sig = r.array("signature")?;
                let value = get_bytes16(r, MAX_VALUE_SIZE, "claimed value")?;
                Self::Claimed(ClaimedItem {
                    pk,
                    name_id,
                    pow,
                    seq,
                    value,
                    sig,
                })
            }
            3 => {
                let delete_hash = r.array("delete hash")?;
                let pow = u64::from_be_bytes(r.array("mail pow")?);
                let sealed = get_bytes16(r, MAX_SEALED_MAIL_SIZE, "sealed mail")?;
                Self::Mail(MailEnvelope {
                    delete_hash,
                    pow,
                    sealed,
                })
            }
            4 => Self::MailDelete(r.array("delete secret")?),
            v => {
                return Err(WireError::InvalidValue {
                    what: "item class",
                    value: u64::from(v),
                });
            }
        })
    }
}

fn put_bytes16(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    out.extend_from_slice(v);
}

fn get_bytes16(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<Vec<u8>, WireError> {
    let len = usize::from(r.u16_be(what)?);
    if len > max {
        return Err(WireError::BadLength { what, len });
    }
    Ok(r.take(len, what)?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_republish_follows_the_grants() {
        let m = |s: u64| Duration::from_secs(s);
        assert_eq!(owner_republish_after(&[]), MIN_OWNER_REPUBLISH);
        assert_eq!(owner_republish_after(&[7200; 8]), OWNER_REPUBLISH_INTERVAL);
        // Young storers: the second-longest grant sets the pace, halved.
        assert_eq!(owner_republish_after(&[60, 7200, 900, 1200]), m(600));
        assert_eq!(owner_republish_after(&[1200]), m(600));
        assert_eq!(owner_republish_after(&[60, 60, 7200]), MIN_OWNER_REPUBLISH);
    }

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn mutable_sign_verify_and_forgeries() {
        let m = MutableItem::sign(&key(1), b"salt", 7, b"hello");
        assert_eq!(m.verify(), Ok(()));
        let mut f = m.clone();
        f.value = b"hellO".to_vec();
        assert_eq!(f.verify(), Err(PutError::BadSignature));
        let mut f = m.clone();
        f.seq = 8;
        assert_eq!(f.verify(), Err(PutError::BadSignature));
        let mut f = m.clone();
        f.pk = key(2).verifying_key().to_bytes();
        assert_eq!(f.verify(), Err(PutError::BadSignature));
        let mut f = m.clone();
        f.salt = vec![0; 65];
        assert_eq!(f.verify(), Err(PutError::SaltTooLarge));
        let big = MutableItem::sign(&key(1), b"", 1, &[0; 1001]);
        assert_eq!(big.verify(), Err(PutError::TooLarge));
        assert_eq!(
            Item::Immutable(vec![0; 1001]).verify(),
            Err(PutError::TooLarge)
        );
    }

    #[test]
    fn targets_are_domain_separated() {
        assert_ne!(Target::immutable(b""), Target::mutable(&[0; 32], b""));
        assert_ne!(
            Target::mutable(&[1; 32], b"a"),
            Target::mutable(&[1; 32], b"b")
        );
        // Golden vector: pins the derivation (BLAKE3 derive_key, context "eddt v1 immutable").
        assert_eq!(
            Target::immutable(b"abc").0,
            blake3::derive_key("eddt v1 immutable", b"abc")
        );
    }

    #[test]
    fn claim_pow() {
        let id = [9; 32];
        let pk = key(3).verifying_key().to_bytes();
        let pow = solve_claim_pow(&id, &pk, 8, 0);
        let c = ClaimedItem::sign(&key(3), id, pow, 1, b"v");
        assert_eq!(c.verify(8), Ok(()));
        let bad = (0..)
            .find(|p| claim_pow_bits(&id, &pk, *p) < 8)
            .expect("most nonces fail");
        let c2 = ClaimedItem::sign(&key(3), id, bad, 1, b"v");
        assert_eq!(c2.verify(8), Err(PutError::Pow));
    }

    #[test]
    fn codes_round_trip() {
        for code in 0..1000 {
            if let Some(e) = PutError::from_code(code) {
                assert_eq!(e.code(), code);
            }
        }
    }
}
