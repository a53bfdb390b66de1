//! Vouchers: off-chain signatures over a channel's cumulative amount (payments.md §0, §4.3, §4.5).

use alloy_primitives::{Address, B256, U256, keccak256};
use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{AccountKey, PayError};

/// The EIP-191 prefix for a 32-byte message (`"\x19Ethereum Signed Message:\n32"`).
pub const EIP191_PREFIX: &[u8] = b"\x19Ethereum Signed Message:\n32";

/// A payment voucher (payments.md §4.3, §4.5): the channel's sender promises the receiver a
/// `cumulative` total (wei, the chain's base unit) over the whole life of channel `channel`.
///
/// Vouchers are cumulative, so only the newest matters: the contract pays
/// `cumulative - claimed`, and a voucher at or below what was claimed is worth nothing.
///
/// Wire size: 32 (channel id) + 32 (cumulative, big-endian) + 65 (`r ‖ s ‖ v`) = 129 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// The channel id `UniChannels.open` returned.
    pub channel: B256,
    /// Cumulative amount owed over the channel's life, in wei.
    pub cumulative: U256,
    /// secp256k1 signature `r ‖ s ‖ v` (v = 27/28) over [`Voucher::digest`].
    #[serde(with = "sig_hex")]
    pub sig: [u8; 65],
}

impl Voucher {
    /// The encoded size in bytes (see [`Voucher::to_bytes`]).
    pub const SIZE: usize = 129;

    /// The digest a voucher signs, identical to `UniChannels.voucherDigest`:
    /// `keccak256(EIP191_PREFIX ‖ keccak256(abi.encode(chain_id, hub, channel, cumulative)))`,
    /// where `abi.encode` is four 32-byte words (the address left-padded with zeroes).
    /// Binding the chain id and the contract (`hub`) address makes a voucher useless elsewhere.
    pub fn digest_for(chain_id: u64, hub: Address, channel: B256, cumulative: U256) -> B256 {
        let mut enc = [0u8; 128];
        enc[..32].copy_from_slice(&U256::from(chain_id).to_be_bytes::<32>());
        enc[44..64].copy_from_slice(hub.as_slice());
        enc[64..96].copy_from_slice(channel.as_slice());
        enc[96..].copy_from_slice(&cumulative.to_be_bytes::<32>());
        let inner = keccak256(enc);
        let mut msg = [0u8; 60];
        msg[..28].copy_from_slice(EIP191_PREFIX);
        msg[28..].copy_from_slice(inner.as_slice());
        keccak256(msg)
    }

    /// This voucher's digest on chain `chain_id` and contract `hub` (see [`Voucher::digest_for`]).
    pub fn digest(&self, chain_id: u64, hub: Address) -> B256 {
        Self::digest_for(chain_id, hub, self.channel, self.cumulative)
    }

    /// Signs a voucher for `cumulative` wei on `channel` with the channel sender's key.
    pub fn sign(
        key: &AccountKey,
        chain_id: u64,
        hub: Address,
        channel: B256,
        cumulative: U256,
    ) -> Result<Self, PayError> {
        let sig = key.sign_digest(Self::digest_for(chain_id, hub, channel, cumulative))?;
        Ok(Self {
            channel,
            cumulative,
            sig,
        })
    }

    /// Recovers the address that signed this voucher for `chain_id` and `hub`, applying the
    /// contract's rules: `v` ∈ {27, 28} (0/1 accepted), `s` in the lower half of the order.
    /// Any malformed signature gives [`PayError::BadSignature`]; never panics.
    /// A caller accepts the voucher only if the result equals the channel's sender.
    pub fn signer(&self, chain_id: u64, hub: Address) -> Result<Address, PayError> {
        let v = match self.sig[64] {
            v @ (0 | 1) => v,
            v @ (27 | 28) => v - 27,
            _ => return Err(PayError::BadSignature),
        };
        let sig = Signature::from_slice(&self.sig[..64]).map_err(|_| PayError::BadSignature)?;
        if sig.normalize_s().is_some() {
            // High s: malleable, and the contract rejects it.
            return Err(PayError::BadSignature);
        }
        let recid = RecoveryId::from_byte(v).ok_or(PayError::BadSignature)?;
        let digest = self.digest(chain_id, hub);
        let key = VerifyingKey::recover_from_prehash(digest.as_slice(), &sig, recid)
            .map_err(|_| PayError::BadSignature)?;
        Ok(Address::from_public_key(&key))
    }

    /// Encodes as 129 bytes: channel (32) ‖ cumulative (32, big-endian) ‖ sig (65).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[..32].copy_from_slice(self.channel.as_slice());
        out[32..64].copy_from_slice(&self.cumulative.to_be_bytes::<32>());
        out[64..].copy_from_slice(&self.sig);
        out
    }

    /// Decodes the 129-byte form of [`Voucher::to_bytes`]; any other length is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PayError> {
        if bytes.len() != Self::SIZE {
            return Err(PayError::Decode(format!(
                "voucher is {} bytes, expected {}",
                bytes.len(),
                Self::SIZE
            )));
        }
        let mut sig = [0u8; 65];
        sig.copy_from_slice(&bytes[64..]);
        Ok(Self {
            channel: B256::from_slice(&bytes[..32]),
            cumulative: U256::from_be_slice(&bytes[32..64]),
            sig,
        })
    }
}

mod sig_hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(sig: &[u8; 65], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(sig))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 65], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text.trim_start_matches("0x")).map_err(D::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| D::Error::custom("signature must be 65 bytes"))
    }
}
