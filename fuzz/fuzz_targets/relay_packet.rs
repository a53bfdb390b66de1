//! TCP relay decoders (`ferry_wire::relay`): any bytes either parse or give an error; fixed-size
//! handshakes and every payload re-encode to the same bytes; the frame reader never panics on
//! a stream split anywhere.
#![no_main]
use ferry_wire::relay::{
    ClientHandshake, FrameReader, HandshakePlain, RelayPacket, ServerHandshake,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ClientHandshake::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = ServerHandshake::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = HandshakePlain::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = RelayPacket::decode(data) {
        assert_eq!(p.encode().expect("decoded packet re-encodes"), data);
    }
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut r = FrameReader::new();
    for chunk in data.chunks(split) {
        r.push(chunk);
        while let Ok(Some(body)) = r.next_frame() {
            assert!(body.len() > 16 && body.len() <= 2048);
        }
    }
});
