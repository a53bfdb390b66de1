//! friend_connection/messenger packets: bytes in, never a panic; what parses re-encodes to
//! something that parses to the same packet.
#![no_main]
use ferry_wire::messenger::MessengerPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = MessengerPacket::decode(data) {
        assert_eq!(MessengerPacket::decode(&p.encode()).ok(), Some(p));
    }
});
