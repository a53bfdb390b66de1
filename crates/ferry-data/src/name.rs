//! Usernames: name → Tox ID with no reverse index (`data-layer.md` §3.2).
//!
//! For a normalized name `n` ([`normalize`]):
//!
//! | what | derivation |
//! |---|---|
//! | target (`name_id`) | `BLAKE3-derive("eddt v1 name", n)` |
//! | sealing key | `BLAKE3-derive("eddt v1 name seal", n)` → `crypto_secretbox` (XSalsa20-Poly1305) |
//! | owner key | Ed25519 seed `BLAKE3-derive("eddt v1 name owner", identity secret ‖ n)` |
//!
//! The record is a [`ClaimedItem`] at `name_id`: value = `[nonce 24][secretbox(54-byte
//! plaintext)]` (94 bytes), plaintext = `[tox_id 38][registered_unix u64][expires_unix u64]`.
//! A holder sees a hash, an Ed25519 key derived per name (unlinkable to the identity without its
//! secret) and ciphertext: it learns neither the name nor the Tox ID, and nothing maps a Tox ID
//! back to a name. Someone who guesses the name can confirm the guess (GNS's property).
//!
//! First claim wins at each storer ([`crate::store`]: a claimed target stays bound to its first
//! owner key while held, [`MAX_CLAIM_TTL`] = 30 d, then 7 d of semi-expiry in which it no longer
//! resolves but cannot be taken, [`crate::store::CLAIM_SEMI_EXPIRY`]). Registration costs a proof of work of
//! [`CLAIM_POW_BITS`] (2^20 BLAKE3 on average); renewals reuse it (it is bound to name_id and
//! key, not to seq) and are a cheap re-put every [`NAME_RENEW_INTERVAL`].

use std::time::Duration;

use ed25519_dalek::SigningKey;
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{NONCE_SIZE, Nonce, SymmetricKey};
use ferry_wire::toxid::{TOX_ID_SIZE, ToxId};

use crate::item::{ClaimedItem, Item, MAX_CLAIM_TTL, Target, solve_claim_pow};

#[cfg(doc)]
use crate::item::CLAIM_POW_BITS;

/// Longest name, in bytes (after normalization).
pub const MAX_NAME_LEN: usize = 63;
/// A record's lifetime from its last renewal (30 days, [`MAX_CLAIM_TTL`]).
pub const NAME_LIFETIME: Duration = MAX_CLAIM_TTL;
/// The owner re-puts (renews) its record this often (1 day).
pub const NAME_RENEW_INTERVAL: Duration = Duration::from_secs(86_400);
/// Size of a sealed record value: nonce 24 + MAC 16 + plaintext 54 = 94 bytes.
pub const NAME_VALUE_SIZE: usize = NONCE_SIZE + 16 + RECORD_PLAINTEXT_SIZE;
const RECORD_PLAINTEXT_SIZE: usize = TOX_ID_SIZE + 16;

/// Why a name or record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty, too long, or characters outside `a-z 0-9 . _ -`.
    #[error("invalid name")]
    Invalid,
    /// The item is not a valid claimed record for this name (target, signature, proof of work).
    #[error("not a record for this name")]
    NotARecord,
    /// Does not decrypt under the name's key.
    #[error("record does not open")]
    Sealed,
    /// Past its `expires_unix`.
    #[error("record expired")]
    Expired,
}

/// Normalizes a name: strips one leading `@`, trims, lowercases ASCII; allows `a-z 0-9 . _ -`,
/// 1–63 bytes. ASCII only: no Unicode confusables (NFKC is not applied; see the report).
///
/// # Errors
/// [`NameError::Invalid`].
pub fn normalize(name: &str) -> Result<String, NameError> {
    let n = name.trim();
    let n = n.strip_prefix('@').unwrap_or(n).to_ascii_lowercase();
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME_LEN
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok { Ok(n) } else { Err(NameError::Invalid) }
}

/// The record's target for a normalized name.
pub fn name_id(normalized: &str) -> [u8; 32] {
    blake3::derive_key("eddt v1 name", normalized.as_bytes())
}

/// The record's target as a [`Target`].
pub fn name_target(normalized: &str) -> Target {
    Target(name_id(normalized))
}

fn seal_key(normalized: &str) -> SymmetricKey {
    SymmetricKey::from_bytes(blake3::derive_key(
        "eddt v1 name seal",
        normalized.as_bytes(),
    ))
}

/// The per-name owner key: deterministic from the identity's secret and the name, so the owner
/// can renew from any restart, and unlinkable to the identity for anyone else.
pub fn owner_key(identity_secret: &[u8; 32], normalized: &str) -> SigningKey {
    let mut h = blake3::Hasher::new_derive_key("eddt v1 name owner");
    h.update(identity_secret);
    h.update(normalized.as_bytes());
    SigningKey::from_bytes(h.finalize().as_bytes())
}

/// What a name resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRecord {
    /// The owner's Tox ID.
    pub tox_id: ToxId,
    /// When registered or last renewed (Unix seconds).
    pub registered_unix: u64,
    /// When it stops resolving (Unix seconds).
    pub expires_unix: u64,
}

impl NameRecord {
    /// A record valid for [`NAME_LIFETIME`] from `now_unix`.
    pub fn new(tox_id: ToxId, now_unix: u64) -> Self {
        Self {
            tox_id,
            registered_unix: now_unix,
            expires_unix: now_unix + NAME_LIFETIME.as_secs(),
        }
    }

    /// Seals the record under the name's key (random nonce): the item value.
    pub fn seal(&self, normalized: &str, rng: &mut FerryRng) -> Vec<u8> {
        let mut plain = Vec::with_capacity(RECORD_PLAINTEXT_SIZE);
        plain.extend_from_slice(&self.tox_id.to_bytes());
        plain.extend_from_slice(&self.registered_unix.to_be_bytes());
        plain.extend_from_slice(&self.expires_unix.to_be_bytes());
        let nonce = Nonce::random(rng);
        let ct = seal_key(normalized)
            .encrypt(&nonce, &plain)
            .expect("secretbox of 54 bytes cannot fail");
        let mut out = nonce.0.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a sealed value with the name.
    ///
    /// # Errors
    /// [`NameError::Sealed`] when the size is wrong, it does not authenticate or the Tox ID's
    /// checksum fails.
    pub fn open(normalized: &str, value: &[u8]) -> Result<Self, NameError> {
        if value.len() != NAME_VALUE_SIZE {
            return Err(NameError::Sealed);
        }
        let (nonce, ct) = value.split_at(NONCE_SIZE);
        let nonce = Nonce(nonce.try_into().map_err(|_| NameError::Sealed)?);
        let plain = seal_key(normalized)
            .decrypt(&nonce, ct)
            .map_err(|_| NameError::Sealed)?;
        let id: [u8; TOX_ID_SIZE] = plain[..TOX_ID_SIZE]
            .try_into()
            .map_err(|_| NameError::Sealed)?;
        let tox_id = ToxId::from_bytes(&id).map_err(|_| NameError::Sealed)?;
        let u = |r: std::ops::Range<usize>| -> Result<u64, NameError> {
            Ok(u64::from_be_bytes(
                plain[r].try_into().map_err(|_| NameError::Sealed)?,
            ))
        };
        Ok(Self {
            tox_id,
            registered_unix: u(TOX_ID_SIZE..TOX_ID_SIZE + 8)?,
            expires_unix: u(TOX_ID_SIZE + 8..TOX_ID_SIZE + 16)?,
        })
    }
}

/// Builds the claimed item registering `name` for `record`: derives the owner key, solves the
/// proof of work (`pow_bits`, normally [`CLAIM_POW_BITS`]; 2^bits hashes on average) and signs
/// version `seq`. Renew with [`renew`] (no new proof of work).
///
/// # Errors
/// [`NameError::Invalid`] for a bad name.
pub fn register(
    identity_secret: &[u8; 32],
    name: &str,
    record: &NameRecord,
    seq: u64,
    pow_bits: u32,
    rng: &mut FerryRng,
) -> Result<ClaimedItem, NameError> {
    let n = normalize(name)?;
    let key = owner_key(identity_secret, &n);
    let id = name_id(&n);
    let pow = solve_claim_pow(&id, &key.verifying_key().to_bytes(), pow_bits, 0);
    Ok(ClaimedItem::sign(&key, id, pow, seq, &record.seal(&n, rng)))
}

/// Renews a registration: same owner key and proof of work, `seq + 1`, new record.
///
/// # Errors
/// [`NameError::Invalid`] for a bad name, [`NameError::NotARecord`] when `previous` is not this
/// identity's record for the name.
pub fn renew(
    identity_secret: &[u8; 32],
    name: &str,
    previous: &ClaimedItem,
    record: &NameRecord,
    rng: &mut FerryRng,
) -> Result<ClaimedItem, NameError> {
    let n = normalize(name)?;
    let key = owner_key(identity_secret, &n);
    if previous.pk != key.verifying_key().to_bytes() || previous.name_id != name_id(&n) {
        return Err(NameError::NotARecord);
    }
    Ok(ClaimedItem::sign(
        &key,
        previous.name_id,
        previous.pow,
        previous.seq.saturating_add(1),
        &record.seal(&n, rng),
    ))
}

/// Resolves `name` from an item a lookup returned: checks target, signature, proof of work
/// (`pow_bits`), opens the record and checks expiry at `now_unix`. Returns the record and the
/// owner key (its fingerprint is what the UI shows to tell look-alike names apart).
///
/// # Errors
/// [`NameError`] when any check fails.
pub fn resolve(
    name: &str,
    item: &Item,
    pow_bits: u32,
    now_unix: u64,
) -> Result<(NameRecord, [u8; 32]), NameError> {
    let n = normalize(name)?;
    let Item::Claimed(c) = item else {
        return Err(NameError::NotARecord);
    };
    if c.name_id != name_id(&n) || c.verify(pow_bits).is_err() {
        return Err(NameError::NotARecord);
    }
    let rec = NameRecord::open(&n, &c.value)?;
    if now_unix >= rec.expires_unix {
        return Err(NameError::Expired);
    }
    Ok((rec, c.pk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::MAX_VALUE_SIZE;
    use crate::store::{Store, StoreConfig};
    use crate::wire::PutRequest;
    use ferry_crypto::PublicKey;
    use proptest::prelude::*;
    use std::time::Instant;

    const BITS: u32 = 8;

    fn tox(n: u8) -> ToxId {
        ToxId::new(PublicKey([n; 32]), 0x0102_0304)
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize(" @Alice_1 "), Ok("alice_1".into()));
        assert_eq!(normalize(""), Err(NameError::Invalid));
        assert_eq!(normalize("al ice"), Err(NameError::Invalid));
        assert_eq!(normalize("аlice"), Err(NameError::Invalid), "Cyrillic a");
        assert_eq!(normalize(&"a".repeat(64)), Err(NameError::Invalid));
        assert_eq!(name_id("alice"), name_id(&normalize("ALICE").expect("ok")));
    }

    #[test]
    fn register_resolve_renew() {
        let mut rng = FerryRng::from_u64(1);
        let secret = [7; 32];
        let rec = NameRecord::new(tox(1), 1_000);
        let item = register(&secret, "Alice", &rec, 1, BITS, &mut rng).expect("register");
        assert!(item.value.len() == NAME_VALUE_SIZE && NAME_VALUE_SIZE <= MAX_VALUE_SIZE);
        let (got, pk) = resolve("@alice", &Item::Claimed(item.clone()), BITS, 2_000).expect("ok");
        assert_eq!(got, rec);
        assert_eq!(pk, item.pk);
        // Another name does not resolve from this record.
        assert_eq!(
            resolve("alicf", &Item::Claimed(item.clone()), BITS, 2_000),
            Err(NameError::NotARecord)
        );
        // Expiry.
        assert_eq!(
            resolve(
                "alice",
                &Item::Claimed(item.clone()),
                BITS,
                rec.expires_unix
            ),
            Err(NameError::Expired)
        );
        let rec2 = NameRecord::new(tox(1), 90_000);
        let item2 = renew(&secret, "alice", &item, &rec2, &mut rng).expect("renew");
        assert_eq!((item2.seq, item2.pow, item2.pk), (2, item.pow, item.pk));
        assert_eq!(
            renew(&[8; 32], "alice", &item, &rec2, &mut rng),
            Err(NameError::NotARecord)
        );
    }

    #[test]
    fn second_claimant_is_refused_by_a_storer() {
        let mut rng = FerryRng::from_u64(2);
        let now = Instant::now();
        let config = StoreConfig {
            claim_pow_bits: BITS,
            ..StoreConfig::default()
        };
        let mut store = Store::new(PublicKey([0; 32]), config, now, &mut rng);
        let from = "10.0.0.1:33445".parse().expect("addr");
        let me = PublicKey([1; 32]);
        let put = |store: &mut Store, item: ClaimedItem| {
            let target = Target(item.name_id);
            let token = store.token(from, &me, &target);
            store.put(
                now,
                from,
                &me,
                &PutRequest {
                    request_id: [0; 8],
                    token,
                    ttl_s: u32::MAX,
                    cas: None,
                    target,
                    item: Item::Claimed(item),
                },
            )
        };
        let a = register(
            &[1; 32],
            "bob",
            &NameRecord::new(tox(1), 0),
            1,
            BITS,
            &mut rng,
        )
        .expect("a");
        let b = register(
            &[2; 32],
            "bob",
            &NameRecord::new(tox(2), 0),
            5,
            BITS,
            &mut rng,
        )
        .expect("b");
        assert_eq!(
            put(&mut store, a.clone()),
            Ok(MAX_CLAIM_TTL.as_secs() as u32)
        );
        assert_eq!(put(&mut store, b), Err(crate::item::PutError::Claimed));
        // The holder's snapshot contains neither the name nor the Tox ID.
        let dump = store.snapshot(now);
        let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(b"bob"));
        assert!(!contains(&tox(1).to_bytes()));
        assert!(!contains(&[1; 32]), "owner's long-term key");
        let found = store.lookup(now, &name_target("bob"), None);
        let crate::wire::Found::Item(item) = found else {
            panic!("stored");
        };
        assert_eq!(
            resolve("bob", &item, BITS, 1).expect("resolves").0.tox_id,
            tox(1)
        );
    }

    proptest! {
        /// A record opens only with its own name.
        #[test]
        fn unreadable_without_the_name(name in "[a-z0-9]{1,20}", other in "[a-z0-9]{1,20}", seed in any::<u64>()) {
            let mut rng = FerryRng::from_u64(seed);
            let v = NameRecord::new(tox(3), 5).seal(&name, &mut rng);
            prop_assert_eq!(NameRecord::open(&name, &v).map(|r| r.tox_id), Ok(tox(3)));
            if other != name {
                prop_assert_eq!(NameRecord::open(&other, &v), Err(NameError::Sealed));
            }
            // Owner keys differ per name and per identity.
            let k1 = owner_key(&[1; 32], &name).verifying_key();
            prop_assert_ne!(k1, owner_key(&[2; 32], &name).verifying_key());
        }
    }
}
