//! Top-level datagram decoder: any bytes either parse or give an error; parsed packets re-encode
//! to the same bytes.
#![no_main]
use ferry_wire::dht::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::decode(data) {
        let again = p.encode();
        // A bootstrap info request is any 78-byte 0xf0 datagram; it re-encodes zero-padded.
        if !matches!(p, Packet::BootstrapInfo(ferry_wire::dht::BootstrapInfo::Request)) {
            assert_eq!(again, data);
        }
    }
});
