//! The Tox ID (`tox-protocol.md` §7.2): what a user gives friends to be added.
//!
//! | bytes | field |
//! |---|---|
//! | 32 | long-term public key |
//! | 4 | nospam (big-endian: `tox_self_set_nospam(n)` stores n so) |
//! | 2 | checksum: XOR of the 18 two-byte words of key ‖ nospam |
//!
//! 38 bytes, written as 76 hex digits. Matches c-toxcore's `tox_self_get_address` byte for byte.

use std::fmt;
use std::str::FromStr;

use ferry_crypto::{CryptoError, KEY_SIZE, PublicKey, decode_hex_array};

/// Size of a Tox ID in bytes (`TOX_ADDRESS_SIZE`).
pub const TOX_ID_SIZE: usize = 38;

/// Why a Tox ID string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToxIdError {
    /// Not 76 hex digits.
    #[error("a Tox ID is 76 hex characters: {0}")]
    Hex(#[from] CryptoError),
    /// The checksum does not match: a typo.
    #[error("the Tox ID's checksum does not match (mistyped?)")]
    Checksum,
}

/// A Tox ID: long-term public key, nospam and checksum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ToxId {
    /// The long-term public key.
    pub public_key: PublicKey,
    /// The nospam, as the 4 bytes that appear in the ID.
    pub nospam: [u8; 4],
}

impl ToxId {
    /// A Tox ID from its parts; `nospam` is the value `tox_self_get_nospam` reports.
    pub fn new(public_key: PublicKey, nospam: u32) -> Self {
        Self {
            public_key,
            nospam: nospam.to_be_bytes(),
        }
    }

    /// The nospam as `tox_self_get_nospam` reports it.
    pub fn nospam_value(&self) -> u32 {
        u32::from_be_bytes(self.nospam)
    }

    /// The 2-byte checksum (`data_checksum` over key ‖ nospam).
    pub fn checksum(&self) -> [u8; 2] {
        let mut c = [0u8; 2];
        for (i, b) in self
            .public_key
            .as_bytes()
            .iter()
            .chain(self.nospam.iter())
            .enumerate()
        {
            c[i % 2] ^= b;
        }
        c
    }

    /// The 38 bytes.
    pub fn to_bytes(&self) -> [u8; TOX_ID_SIZE] {
        let mut out = [0u8; TOX_ID_SIZE];
        out[..KEY_SIZE].copy_from_slice(self.public_key.as_bytes());
        out[KEY_SIZE..KEY_SIZE + 4].copy_from_slice(&self.nospam);
        out[KEY_SIZE + 4..].copy_from_slice(&self.checksum());
        out
    }

    /// Parses 38 bytes, checking the checksum.
    ///
    /// # Errors
    /// [`ToxIdError::Checksum`].
    pub fn from_bytes(bytes: &[u8; TOX_ID_SIZE]) -> Result<Self, ToxIdError> {
        let mut pk = [0u8; KEY_SIZE];
        pk.copy_from_slice(&bytes[..KEY_SIZE]);
        let mut nospam = [0u8; 4];
        nospam.copy_from_slice(&bytes[KEY_SIZE..KEY_SIZE + 4]);
        let id = Self {
            public_key: PublicKey(pk),
            nospam,
        };
        if id.checksum() != bytes[KEY_SIZE + 4..] {
            return Err(ToxIdError::Checksum);
        }
        Ok(id)
    }
}

impl fmt::Display for ToxId {
    /// 76 upper-case hex digits, as qTox and toxic show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.public_key.to_hex())?;
        for b in self.nospam.iter().chain(self.checksum().iter()) {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl FromStr for ToxId {
    type Err = ToxIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(&decode_hex_array::<TOX_ID_SIZE>(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(pk in any::<[u8; 32]>(), nospam in any::<u32>()) {
            let id = ToxId::new(PublicKey(pk), nospam);
            let s = id.to_string();
            prop_assert_eq!(s.len(), 76);
            prop_assert_eq!(s.parse::<ToxId>().expect("parse"), id);
            prop_assert_eq!(id.nospam_value(), nospam);
        }
    }

    #[test]
    fn checksum_catches_typos() {
        let id = ToxId::new(PublicKey([0x11; 32]), 0xdeadbeef);
        let mut s = id.to_string();
        s.replace_range(0..1, "2");
        assert_eq!(s.parse::<ToxId>(), Err(ToxIdError::Checksum));
        assert!(matches!("abc".parse::<ToxId>(), Err(ToxIdError::Hex(_))));
        assert_eq!(&id.to_string()[64..72], "DEADBEEF");
    }
}
