//! Broadcast sites: a username bound to the latest version of a published directory
//! (`data-layer.md` §3.6 "Broadcast sites", the BEP 46 pattern on top of §3.2 names).
//!
//! The owner of name `n` (normalized, [`crate::name::normalize`]) signs a *site head*, a
//! [`MutableItem`] with the name's own owner key ([`crate::name::owner_key`], the key of its name
//! record) and salt [`SITE_SALT`]:
//!
//! | field | value |
//! |---|---|
//! | target | `BLAKE3(owner pk ‖ "eddt v1 site")` ([`Target::mutable`]) |
//! | seq | the publication's Unix time, s (a newer publication replaces an older one) |
//! | value | `[nonce 24][secretbox(40-byte plaintext)]` = 80 bytes ([`SITE_VALUE_SIZE`]) |
//! | plaintext | `[content id 32][published_unix u64 BE]` |
//!
//! The secretbox key is `BLAKE3-derive("eddt v1 site seal", n)` (XSalsa20-Poly1305), so the
//! nodes holding the head learn neither the name nor the content id, like the name record.
//! A resolver looks the name up (its record gives the owner key), then the head at the target
//! above; only a head signed by that key and sealed under that name opens ([`open_head`]).

use ed25519_dalek::SigningKey;
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{NONCE_SIZE, Nonce, SymmetricKey};

use crate::item::{Item, MutableItem, Target};
use crate::name::{NameError, normalize, owner_key};

/// Salt of a site head, under the name's owner key.
pub const SITE_SALT: &[u8] = b"eddt v1 site";
/// Plaintext of a head: content id 32 + published time 8.
const HEAD_PLAINTEXT_SIZE: usize = 40;
/// Size of a sealed head value: nonce 24 + MAC 16 + plaintext 40 = 80 bytes.
pub const SITE_VALUE_SIZE: usize = NONCE_SIZE + 16 + HEAD_PLAINTEXT_SIZE;

/// What a site head says: the latest version of the site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteHead {
    /// Content id (BLAKE3 root of the directory's manifest, 32 bytes) of the latest version.
    pub content_id: [u8; 32],
    /// When it was published, Unix s (also the head's sequence number).
    pub published_unix: u64,
}

fn seal_key(normalized: &str) -> SymmetricKey {
    SymmetricKey::from_bytes(blake3::derive_key(
        "eddt v1 site seal",
        normalized.as_bytes(),
    ))
}

/// Where the site head of the name whose record is signed by `owner_pk` lives.
pub fn head_target(owner_pk: &[u8; 32]) -> Target {
    Target::mutable(owner_pk, SITE_SALT)
}

/// The owner's head for `name` pointing at `head`, signed with the name's owner key (derived
/// from the owner's 32-byte identity secret), sequence number `head.published_unix`.
///
/// # Errors
/// [`NameError::Invalid`] for an invalid name.
pub fn sign_head(
    identity_secret: &[u8; 32],
    name: &str,
    head: &SiteHead,
    rng: &mut FerryRng,
) -> Result<MutableItem, NameError> {
    let n = normalize(name)?;
    let key: SigningKey = owner_key(identity_secret, &n);
    let mut plain = Vec::with_capacity(HEAD_PLAINTEXT_SIZE);
    plain.extend_from_slice(&head.content_id);
    plain.extend_from_slice(&head.published_unix.to_be_bytes());
    let nonce = Nonce::random(rng);
    let ct = seal_key(&n)
        .encrypt(&nonce, &plain)
        .map_err(|_| NameError::Sealed)?;
    let mut value = nonce.0.to_vec();
    value.extend_from_slice(&ct);
    Ok(MutableItem::sign(
        &key,
        SITE_SALT,
        head.published_unix,
        &value,
    ))
}

/// Opens a site head found at [`head_target`]`(owner_pk)` for `name`.
///
/// # Errors
/// [`NameError::NotARecord`]: not a mutable item of `owner_pk` with [`SITE_SALT`], or a bad
/// signature; [`NameError::Sealed`]: does not open under the name's key; [`NameError::Invalid`]
/// for an invalid name.
pub fn open_head(name: &str, owner_pk: &[u8; 32], item: &Item) -> Result<SiteHead, NameError> {
    let n = normalize(name)?;
    let Item::Mutable(m) = item else {
        return Err(NameError::NotARecord);
    };
    if &m.pk != owner_pk || m.salt != SITE_SALT || m.verify().is_err() {
        return Err(NameError::NotARecord);
    }
    if m.value.len() != SITE_VALUE_SIZE {
        return Err(NameError::Sealed);
    }
    let (nonce, ct) = m.value.split_at(NONCE_SIZE);
    let nonce = Nonce(nonce.try_into().map_err(|_| NameError::Sealed)?);
    let plain = seal_key(&n)
        .decrypt(&nonce, ct)
        .map_err(|_| NameError::Sealed)?;
    if plain.len() != HEAD_PLAINTEXT_SIZE {
        return Err(NameError::Sealed);
    }
    let mut content_id = [0u8; 32];
    content_id.copy_from_slice(&plain[..32]);
    let mut t = [0u8; 8];
    t.copy_from_slice(&plain[32..]);
    Ok(SiteHead {
        content_id,
        published_unix: u64::from_be_bytes(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> SiteHead {
        SiteHead {
            content_id: [7; 32],
            published_unix: 1_800_000_000,
        }
    }

    #[test]
    fn head_round_trip_and_hides_name_and_content() {
        let secret = [3u8; 32];
        let mut rng = FerryRng::from_u64(1);
        let m = sign_head(&secret, "@My.Site", &head(), &mut rng).expect("head");
        let pk = owner_key(&secret, "my.site").verifying_key().to_bytes();
        assert_eq!(m.target(), head_target(&pk));
        assert_eq!(m.seq, 1_800_000_000);
        assert_eq!(m.value.len(), SITE_VALUE_SIZE);
        let item = Item::Mutable(m.clone());
        assert_eq!(open_head("my.site", &pk, &item), Ok(head()));
        // What a holder sees has neither the name nor the content id in it.
        let mut stored = Vec::new();
        item.encode(&mut stored);
        assert!(!stored.windows(7).any(|w| w == b"my.site"));
        assert!(!stored.windows(32).any(|w| w == [7u8; 32]));
        // Another name, another owner, a tampered value: refused.
        assert_eq!(
            open_head("other", &pk, &item),
            Err(NameError::Sealed),
            "sealed under the name"
        );
        assert_eq!(
            open_head("my.site", &[9; 32], &item),
            Err(NameError::NotARecord)
        );
        let mut bad = m;
        bad.value[30] ^= 1;
        assert_eq!(
            open_head("my.site", &pk, &Item::Mutable(bad)),
            Err(NameError::NotARecord),
            "the signature covers the value"
        );
        assert_eq!(
            open_head("my.site", &pk, &Item::Immutable(vec![1])),
            Err(NameError::NotARecord)
        );
    }

    #[test]
    fn another_key_cannot_publish_under_the_name() {
        let mut rng = FerryRng::from_u64(2);
        let owner = owner_key(&[1; 32], "site").verifying_key().to_bytes();
        let forged = sign_head(&[2; 32], "site", &head(), &mut rng).expect("head");
        assert_ne!(forged.target(), head_target(&owner), "lands elsewhere");
        assert_eq!(
            open_head("site", &owner, &Item::Mutable(forged)),
            Err(NameError::NotARecord)
        );
    }
}
