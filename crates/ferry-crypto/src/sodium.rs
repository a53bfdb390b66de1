//! libsodium's `crypto_box_beforenm` and `crypto_secretbox` (XSalsa20-Poly1305), the crate's
//! only `unsafe` code: six FFI calls, each with its buffer sizes checked here.
//!
//! Why libsodium: Tox packets are XSalsa20-Poly1305, and RustCrypto's `salsa20` is portable
//! scalar code; libsodium picks SSE2/AVX2 Salsa20 and Poly1305 at `sodium_init` (the same
//! library c-toxcore uses). Measured: `cargo bench -p ferry-crypto --bench secretbox`
//! (bench/RESULTS.md, "libsodium").
//!
//! Linked statically through `libsodium-sys-stable`, which builds the libsodium stable release it
//! bundles (checked against its minisign signature; no download, no system package).

use std::sync::Once;

use crate::{KEY_SIZE, MAC_SIZE, NONCE_SIZE};

static INIT: Once = Once::new();

/// Selects libsodium's fastest implementations for this CPU, once per process. Until it has
/// run, libsodium uses its portable reference code, which gives the same bytes.
fn init() {
    INIT.call_once(|| {
        // SAFETY: `sodium_init` takes no arguments, is thread-safe and idempotent. It returns
        // -1 only when it cannot set up its RNG, which nothing here uses; the functions below
        // then still work (reference implementations).
        let _ = unsafe { libsodium_sys::sodium_init() };
    });
}

/// `crypto_box_beforenm`: HSalsa20(X25519(`ours`, `theirs`)), 32 bytes.
///
/// libsodium refuses an all-zero X25519 result (a low-order public key); NaCl and RustCrypto's
/// `crypto_box` compute HSalsa20 of the zero secret instead, and so does this function, so
/// every key gives the packets it gave before.
pub(crate) fn beforenm(theirs: &[u8; KEY_SIZE], ours: &[u8; KEY_SIZE]) -> [u8; KEY_SIZE] {
    init();
    let mut k = [0u8; KEY_SIZE];
    // SAFETY: `k`, `theirs` and `ours` are 32-byte arrays, the sizes the function reads and
    // writes (crypto_box_BEFORENMBYTES, PUBLICKEYBYTES, SECRETKEYBYTES = 32).
    let rc = unsafe {
        libsodium_sys::crypto_box_beforenm(k.as_mut_ptr(), theirs.as_ptr(), ours.as_ptr())
    };
    if rc != 0 {
        let zero_in = [0u8; 16];
        let zero_key = [0u8; KEY_SIZE];
        // SAFETY: output 32 bytes, input 16 bytes, key 32 bytes (crypto_core_hsalsa20_*BYTES);
        // a null constant selects the standard "expand 32-byte k".
        unsafe {
            libsodium_sys::crypto_core_hsalsa20(
                k.as_mut_ptr(),
                zero_in.as_ptr(),
                zero_key.as_ptr(),
                std::ptr::null(),
            );
        }
    }
    k
}

/// Messages shorter than this many bytes go through RustCrypto's portable
/// `crypto_secretbox` instead: libsodium's SIMD Salsa20 and Poly1305 have a fixed set-up cost,
/// so for the small Tox packets (DHT pings and node lists, onion requests) the two are even
/// (40–256 bytes: 0.9–1.15× under load), while from 600 bytes libsodium is 1.9–2.6× faster and
/// at net_crypto's 1,373 bytes 2.3–3.5× (`cargo bench -p ferry-crypto --bench secretbox`). Both
/// give the same bytes (test `libsodium_matches_rustcrypto`); keeping small packets on
/// RustCrypto leaves the simulator's per-packet cost where it was.
pub(crate) const SMALL: usize = 256;

/// Encrypts `msg` in place with XSalsa20-Poly1305 and returns the 16-byte Poly1305 tag
/// (`crypto_secretbox_detached`). Fails only for messages beyond libsodium's length bound.
pub(crate) fn seal_detached(
    key: &[u8; KEY_SIZE],
    nonce: &[u8; NONCE_SIZE],
    msg: &mut [u8],
) -> Result<[u8; MAC_SIZE], ()> {
    if msg.len() < SMALL {
        use crypto_secretbox::aead::{AeadInPlace, KeyInit};
        let tag = crypto_secretbox::XSalsa20Poly1305::new(&(*key).into())
            .encrypt_in_place_detached(&(*nonce).into(), b"", msg)
            .map_err(|_| ())?;
        return Ok(tag.into());
    }
    init();
    let mut mac = [0u8; MAC_SIZE];
    let p = msg.as_mut_ptr();
    // SAFETY: `p` is valid for `msg.len()` bytes of reads and writes; libsodium documents that
    // the ciphertext and message may overlap (in-place encryption); `mac` is 16 bytes
    // (crypto_secretbox_MACBYTES), `nonce` 24 (NONCEBYTES), `key` 32 (KEYBYTES).
    let rc = unsafe {
        libsodium_sys::crypto_secretbox_detached(
            p,
            mac.as_mut_ptr(),
            p,
            msg.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    if rc == 0 { Ok(mac) } else { Err(()) }
}

/// Checks `mac` over `buf` and decrypts `buf` in place (`crypto_secretbox_open_detached`).
/// On failure `buf` is left as it was.
pub(crate) fn open_detached(
    key: &[u8; KEY_SIZE],
    nonce: &[u8; NONCE_SIZE],
    mac: &[u8; MAC_SIZE],
    buf: &mut [u8],
) -> Result<(), ()> {
    if buf.len() < SMALL {
        use crypto_secretbox::aead::{AeadInPlace, KeyInit};
        return crypto_secretbox::XSalsa20Poly1305::new(&(*key).into())
            .decrypt_in_place_detached(&(*nonce).into(), b"", buf, &(*mac).into())
            .map_err(|_| ());
    }
    init();
    let p = buf.as_mut_ptr();
    // SAFETY: as in `seal_detached`: `p` is valid for `buf.len()` bytes, in-place decryption
    // is allowed, and the tag, nonce and key arrays have the sizes libsodium reads. libsodium
    // verifies the tag before it writes anything.
    let rc = unsafe {
        libsodium_sys::crypto_secretbox_open_detached(
            p,
            p,
            mac.as_ptr(),
            buf.len() as u64,
            nonce.as_ptr(),
            key.as_ptr(),
        )
    };
    if rc == 0 { Ok(()) } else { Err(()) }
}
