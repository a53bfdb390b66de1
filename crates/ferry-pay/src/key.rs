//! The secp256k1 account key that signs vouchers and ledger transactions (payments.md §4.2).

use alloy_primitives::{Address, B256, Signature, U256};
use hkdf::Hkdf;
use k256::ecdsa::{RecoveryId, SigningKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::PayError;

/// HKDF-SHA256 `info` label under which [`AccountKey::from_seed`] derives the account key.
pub const ACCOUNT_KEY_LABEL: &[u8] = b"ferry account key v1";

/// A node's secp256k1 account key (payments.md §4.2): it signs vouchers (EIP-191) and the
/// transactions a backend sends; its [`Address`] is the EVM account (20 bytes, the last 20 bytes
/// of keccak256 of the 64-byte uncompressed public key).
///
/// The secret scalar is zeroized on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct AccountKey {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl AccountKey {
    /// Derives the account key from a 32-byte seed (e.g. the node's long-term secret key) with
    /// HKDF-SHA256 (no salt, info = [`ACCOUNT_KEY_LABEL`]), so the Ed25519/X25519 identity and the
    /// account key come from one secret but are unrelated keys (payments.md §4.2).
    ///
    /// In the (probability ~2^-128) case that the 32 output bytes are not a valid scalar
    /// (zero or ≥ the group order), the label is extended by a counter byte 1, 2, … and expanded
    /// again.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, seed);
        let mut counter: u8 = 0;
        loop {
            let mut okm = Zeroizing::new([0u8; 32]);
            let mut info = ACCOUNT_KEY_LABEL.to_vec();
            if counter > 0 {
                info.push(counter);
            }
            // 32 bytes is far below HKDF-SHA256's 255 × 32 limit, so expand cannot fail.
            if hk.expand(&info, okm.as_mut_slice()).is_ok()
                && let Ok(key) = Self::from_secret_bytes(&okm)
            {
                return key;
            }
            counter = counter.wrapping_add(1);
        }
    }

    /// Builds the key from a raw 32-byte big-endian secret scalar.
    ///
    /// Fails with [`PayError::BadKey`] for zero or a value ≥ the secp256k1 group order.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, PayError> {
        let key = SigningKey::from_slice(secret).map_err(|_| PayError::BadKey)?;
        let address = Address::from_public_key(key.verifying_key());
        Ok(Self { key, address })
    }

    /// The 32-byte big-endian secret scalar (zeroized when the returned value is dropped).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&self.key.to_bytes());
        out
    }

    /// The EVM address of this key.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Signs a 32-byte prehashed digest: returns 65 bytes `r ‖ s ‖ v` with `s` in the lower half
    /// of the group order (EIP-2) and `v` = 27 + recovery id, the layout `ecrecover` and
    /// `UniChannels.voucherSigner` expect.
    pub fn sign_digest(&self, digest: B256) -> Result<[u8; 65], PayError> {
        let (mut sig, mut recid) = self
            .key
            .sign_prehash_recoverable(digest.as_slice())
            .map_err(|_| PayError::BadSignature)?;
        if let Some(low) = sig.normalize_s() {
            sig = low;
            recid = RecoveryId::new(!recid.is_y_odd(), recid.is_x_reduced());
        }
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + recid.to_byte();
        Ok(out)
    }

    /// Signs a transaction's signing hash: the same low-`s` signature as
    /// [`AccountKey::sign_digest`], as an [`alloy_primitives::Signature`] with y-parity (what an
    /// EIP-2718 envelope carries).
    pub fn sign_tx_hash(&self, hash: B256) -> Result<Signature, PayError> {
        let raw = self.sign_digest(hash)?;
        Ok(Signature::new(
            U256::from_be_slice(&raw[..32]),
            U256::from_be_slice(&raw[32..64]),
            raw[64] == 28,
        ))
    }
}
