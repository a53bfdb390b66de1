//! Tox ID parser: text in, never a panic; a parsed ID prints back to the same (upper-case) text.
#![no_main]
use ferry_wire::toxid::ToxId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<ToxId>() {
            assert_eq!(id.to_string(), s.trim().to_uppercase());
        }
    }
});
