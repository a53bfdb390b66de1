//! toxencryptsave: passphrase encryption of a Tox save (c-toxcore 0.2.18
//! `toxencryptsave/toxencryptsave.c`, `tox_pass_encrypt` / `tox_pass_decrypt`).
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `toxEsave` |
//! | 32 | salt (scrypt) |
//! | 24 | nonce |
//! | 16 | Poly1305 MAC |
//! | n | XSalsa20 ciphertext of the plain save |
//!
//! So an encrypted save is the plain one plus [`ENCRYPTION_EXTRA_LENGTH`] = 80 bytes.
//!
//! Key derivation: `key = scrypt-salsa208-sha256(password = SHA-256(passphrase), salt, N = 2^14,
//! r = 8, p = 2, 32 bytes)`. c-toxcore asks libsodium's
//! `crypto_pwhash_scryptsalsa208sha256` for `opslimit = 2 × OPSLIMIT_INTERACTIVE = 1048576` and
//! `memlimit = MEMLIMIT_INTERACTIVE = 16 MiB`; libsodium's parameter choice (`pickparams`) turns
//! those into N = memlimit / (128 r) rounded down to a power of two = 2^14 and
//! p = (opslimit / 4) / N / r = 2. Derivation takes 16 MiB and a few tenths of a second.
//! The encryption is NaCl `crypto_secretbox` (XSalsa20-Poly1305) with a fresh random nonce.

use ferry_crypto::rng::CryptoRng;
use ferry_crypto::{KEY_SIZE, MAC_SIZE, NONCE_SIZE, Nonce, SymmetricKey, sha256};

use crate::SaveError;

/// The first 8 bytes of an encrypted save (`TOX_ENC_SAVE_MAGIC_NUMBER`).
pub const ENCRYPTION_MAGIC: &[u8; 8] = b"toxEsave";
/// Size of the scrypt salt, in bytes (`TOX_PASS_SALT_LENGTH`).
pub const SALT_SIZE: usize = 32;
/// Bytes an encrypted save adds to the plain one (`TOX_PASS_ENCRYPTION_EXTRA_LENGTH`):
/// magic 8 + salt 32 + nonce 24 + MAC 16 = 80.
pub const ENCRYPTION_EXTRA_LENGTH: usize =
    ENCRYPTION_MAGIC.len() + SALT_SIZE + NONCE_SIZE + MAC_SIZE;

/// scrypt's log2(N) as libsodium picks it for toxencryptsave's limits.
const SCRYPT_LOG_N: u8 = 14;
/// scrypt's block size r.
const SCRYPT_R: u32 = 8;
/// scrypt's parallelism p.
const SCRYPT_P: u32 = 2;

/// Whether `data` starts with the toxencryptsave magic `toxEsave` (`tox_is_data_encrypted`).
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(ENCRYPTION_MAGIC)
}

/// The 32-byte secretbox key for `passphrase` and `salt` (`tox_pass_key_derive_with_salt`):
/// scrypt (N = 2^14, r = 8, p = 2) over SHA-256 of the passphrase.
///
/// # Errors
/// [`SaveError::KeyDerivation`] if scrypt refuses (it does not with these fixed parameters).
pub fn derive_key(passphrase: &[u8], salt: &[u8; SALT_SIZE]) -> Result<SymmetricKey, SaveError> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, KEY_SIZE)
        .map_err(|_| SaveError::KeyDerivation)?;
    let mut prehash = sha256(passphrase);
    let mut key = [0u8; KEY_SIZE];
    let result = scrypt::scrypt(&prehash, salt, &params, &mut key);
    prehash.fill(0);
    result.map_err(|_| SaveError::KeyDerivation)?;
    Ok(SymmetricKey::from_bytes(key))
}

/// Encrypts a (plain) save under `passphrase` with a fresh salt and nonce from `rng`
/// (`tox_pass_encrypt`); the result is `plain.len() + 80` bytes, laid out as in the module docs.
///
/// c-toxcore refuses to encrypt empty data and to decrypt an encrypted save of exactly 80 bytes;
/// ferry encrypts and decrypts those too.
///
/// # Errors
/// [`SaveError::KeyDerivation`] (not expected in practice).
pub fn encrypt(
    plain: &[u8],
    passphrase: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, SaveError> {
    let mut salt = [0u8; SALT_SIZE];
    rng.fill_bytes(&mut salt);
    let key = derive_key(passphrase, &salt)?;
    encrypt_with_key(plain, &key, &salt, rng)
}

/// Like [`encrypt`] with a key already derived by [`derive_key`] from `salt`
/// (`tox_pass_key_encrypt`): saves repeatedly without paying for scrypt each time.
///
/// # Errors
/// [`SaveError::KeyDerivation`] never; [`SaveError::TooLarge`] beyond XSalsa20's range.
pub fn encrypt_with_key(
    plain: &[u8],
    key: &SymmetricKey,
    salt: &[u8; SALT_SIZE],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, SaveError> {
    let nonce = Nonce::random(rng);
    let sealed = key
        .encrypt(&nonce, plain)
        .map_err(|_| SaveError::TooLarge)?;
    let mut out = Vec::with_capacity(plain.len() + ENCRYPTION_EXTRA_LENGTH);
    out.extend_from_slice(ENCRYPTION_MAGIC);
    out.extend_from_slice(salt);
    out.extend_from_slice(&nonce.0);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The salt of an encrypted save (`tox_get_salt`), to derive its key once with [`derive_key`].
///
/// # Errors
/// [`SaveError::NotEncrypted`] without the magic, [`SaveError::Truncated`] when too short.
pub fn salt_of(data: &[u8]) -> Result<[u8; SALT_SIZE], SaveError> {
    if !is_encrypted(data) {
        return Err(SaveError::NotEncrypted);
    }
    if data.len() < ENCRYPTION_EXTRA_LENGTH {
        return Err(SaveError::Truncated(format!(
            "an encrypted save is at least {ENCRYPTION_EXTRA_LENGTH} bytes, this one {}",
            data.len()
        )));
    }
    let mut salt = [0u8; SALT_SIZE];
    salt.copy_from_slice(&data[ENCRYPTION_MAGIC.len()..ENCRYPTION_MAGIC.len() + SALT_SIZE]);
    Ok(salt)
}

/// Decrypts an encrypted save with `passphrase` (`tox_pass_decrypt`), giving the plain save.
///
/// # Errors
/// [`SaveError::NotEncrypted`] without the `toxEsave` magic, [`SaveError::Truncated`] below 80
/// bytes, [`SaveError::WrongPassphrase`] when the MAC does not verify (wrong passphrase or
/// damaged file: the two cannot be told apart).
pub fn decrypt(data: &[u8], passphrase: &[u8]) -> Result<Vec<u8>, SaveError> {
    let salt = salt_of(data)?;
    let key = derive_key(passphrase, &salt)?;
    decrypt_with_key(data, &key)
}

/// Like [`decrypt`] with a key already derived by [`derive_key`] from the save's [`salt_of`]
/// (`tox_pass_key_decrypt`).
///
/// # Errors
/// As [`decrypt`].
pub fn decrypt_with_key(data: &[u8], key: &SymmetricKey) -> Result<Vec<u8>, SaveError> {
    salt_of(data)?;
    let at = ENCRYPTION_MAGIC.len() + SALT_SIZE;
    let mut nonce = [0u8; NONCE_SIZE];
    nonce.copy_from_slice(&data[at..at + NONCE_SIZE]);
    key.decrypt(&Nonce(nonce), &data[at + NONCE_SIZE..])
        .map_err(|_| SaveError::WrongPassphrase)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crypto::rng::FerryRng;

    #[test]
    fn round_trip_and_errors() {
        let mut rng = FerryRng::from_u64(7);
        let plain = b"some save bytes".to_vec();
        let enc = encrypt(&plain, b"pw", &mut rng).expect("encrypt");
        assert_eq!(enc.len(), plain.len() + ENCRYPTION_EXTRA_LENGTH);
        assert!(is_encrypted(&enc));
        assert_eq!(decrypt(&enc, b"pw").expect("decrypt"), plain);
        assert_eq!(decrypt(&enc, b"wrong"), Err(SaveError::WrongPassphrase));
        assert_eq!(decrypt(&plain, b"pw"), Err(SaveError::NotEncrypted));
        assert!(matches!(
            decrypt(&enc[..40], b"pw"),
            Err(SaveError::Truncated(_))
        ));
        let mut bad = enc.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(decrypt(&bad, b"pw"), Err(SaveError::WrongPassphrase));
    }

    /// scrypt(N = 2^14, r = 8, p = 2) gives RFC 7914's published vector for these inputs
    /// ("pleaseletmein", "SodiumChloride"), so the parameters are wired as intended.
    #[test]
    fn scrypt_parameters_match_rfc7914_vector() {
        let params = scrypt::Params::new(14, 8, 1, 64).expect("params");
        let mut out = [0u8; 64];
        scrypt::scrypt(b"pleaseletmein", b"SodiumChloride", &params, &mut out).expect("scrypt");
        assert_eq!(out[..8], [0x70, 0x23, 0xbd, 0xcb, 0x3a, 0xfd, 0x73, 0x48]);
    }
}
