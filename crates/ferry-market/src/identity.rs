//! Signing identities for market messages (`payments.md` §4.2).
//!
//! A ferry node's identity is its Tox long-term key, an X25519 key, which cannot sign. Market
//! messages (proposals, acceptances, receipts) must be signed so that they can be shown to a
//! third party, so each node derives an Ed25519 key from its long-term secret key:
//! `seed = HKDF-SHA256(ikm = long-term secret (32 bytes), salt = none, info =
//! "ferry node signing key v1")`, 32 bytes. The binding of that Ed25519 key to the long-term key
//! comes from the channel it is announced on: a [`crate::msg::Binding`] is accepted only inside
//! the peer's net_crypto session (or circuit end-to-end channel), which is authenticated to the
//! long-term key.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::Sha256;

use crate::MarketError;

/// HKDF info label for the Ed25519 signing key.
pub const SIGNING_KEY_LABEL: &[u8] = b"ferry node signing key v1";
/// Size of an Ed25519 signature in bytes.
pub const SIGNATURE_SIZE: usize = 64;

/// A node's Ed25519 signing key, derived from its long-term secret key.
pub struct NodeSigner {
    key: SigningKey,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSigner")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl NodeSigner {
    /// Derives the signing key from the 32-byte long-term secret key (see the module docs).
    pub fn from_long_term_secret(secret: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, secret);
        let mut seed = [0u8; 32];
        hk.expand(SIGNING_KEY_LABEL, &mut seed)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half (32 bytes).
    pub fn public(&self) -> SigKey {
        SigKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `domain ‖ body` (64 bytes).
    pub fn sign(&self, domain: &[u8], body: &[u8]) -> [u8; SIGNATURE_SIZE] {
        let mut m = Vec::with_capacity(domain.len() + body.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(body);
        self.key.sign(&m).to_bytes()
    }
}

/// An Ed25519 public key (32 bytes) that signs a node's market messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct SigKey(pub [u8; 32]);

impl std::fmt::Debug for SigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl SigKey {
    /// Checks `sig` over `domain ‖ body` (strict verification: no small-order keys, canonical
    /// signatures).
    ///
    /// # Errors
    /// [`MarketError::BadSignature`].
    pub fn verify(
        &self,
        domain: &[u8],
        body: &[u8],
        sig: &[u8; SIGNATURE_SIZE],
    ) -> Result<(), MarketError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| MarketError::BadSignature)?;
        let mut m = Vec::with_capacity(domain.len() + body.len());
        m.extend_from_slice(domain);
        m.extend_from_slice(body);
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        key.verify_strict(&m, &sig)
            .map_err(|_| MarketError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_sign_and_verify() {
        let a = NodeSigner::from_long_term_secret(&[1; 32]);
        let b = NodeSigner::from_long_term_secret(&[2; 32]);
        assert_ne!(a.public(), b.public());
        assert_eq!(
            a.public(),
            NodeSigner::from_long_term_secret(&[1; 32]).public()
        );
        let sig = a.sign(b"d", b"body");
        assert!(a.public().verify(b"d", b"body", &sig).is_ok());
        assert!(a.public().verify(b"e", b"body", &sig).is_err());
        assert!(a.public().verify(b"d", b"bodz", &sig).is_err());
        assert!(b.public().verify(b"d", b"body", &sig).is_err());
    }
}
