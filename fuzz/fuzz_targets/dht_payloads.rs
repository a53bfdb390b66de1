//! Decrypted DHT plaintext decoders (ping, nodes request/response, NAT ping) and packed nodes.
#![no_main]
use ferry_wire::dht::{NatPing, NodesRequestPayload, NodesResponsePayload, PingPayload};
use ferry_wire::node::PackedNode;
use ferry_wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = PingPayload::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = NodesRequestPayload::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = NodesResponsePayload::decode(data) {
        assert_eq!(NodesResponsePayload::decode(&p.encode()), Ok(p));
    }
    if let Ok(p) = NatPing::decode(data) {
        assert_eq!(p.encode(), data);
    }
    let mut r = Reader::new(data);
    while let Ok(n) = PackedNode::decode(&mut r) {
        let _ = n.encoded_len();
    }
});
