//! Tox save decoder and toxencryptsave decryption: arbitrary bytes in, never a panic; a save that
//! decodes re-encodes to bytes that decode to the same save and encode to themselves.
#![no_main]
use std::sync::OnceLock;

use ferry_crypto::SymmetricKey;
use ferry_toxsave::encrypt::decrypt_with_key;
use ferry_toxsave::ToxSave;
use libfuzzer_sys::fuzz_target;

static KEY: OnceLock<SymmetricKey> = OnceLock::new();

fn check(data: &[u8]) {
    if let Ok(save) = ToxSave::decode(data) {
        let bytes = save.encode();
        let again = ToxSave::decode(&bytes).expect("an encoded save decodes");
        assert_eq!(again, save);
        assert_eq!(again.encode(), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes behind a valid header reach the section parser directly.
    let mut with_header = vec![0, 0, 0, 0, 0x1f, 0x1b, 0xed, 0x15];
    with_header.extend_from_slice(data);
    check(&with_header);
    // Decryption without scrypt (a fixed key): never a panic.
    let key = KEY.get_or_init(|| SymmetricKey::from_bytes([7; 32]));
    let _ = decrypt_with_key(data, key);
});
