//! net_crypto decoders (`ferry_wire::net_crypto`): any bytes either parse or give an error;
//! fixed-size packets re-encode to the same bytes, payloads round-trip.
#![no_main]
use ferry_wire::net_crypto::{
    CookiePlain, CookieRequest, CookieRequestPayload, CookieResponse, CookieResponsePayload,
    CryptoData, CryptoDataPayload, Handshake, HandshakePayload, PacketRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = CookieRequest::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = CookieResponse::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = Handshake::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = CryptoData::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = CookiePlain::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = CookieRequestPayload::decode(data) {
        assert_eq!(CookieRequestPayload::decode(&p.encode()), Ok(p));
    }
    if let Ok(p) = CookieResponsePayload::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = HandshakePayload::decode(data) {
        assert_eq!(&p.encode()[..], data);
    }
    if let Ok(p) = CryptoDataPayload::decode(data) {
        if let Ok(bytes) = p.encode() {
            assert_eq!(CryptoDataPayload::decode(&bytes), Ok(p));
        }
    }
    if let Ok(p) = PacketRequest::decode(data) {
        let again = PacketRequest::decode(&p.encode()).expect("re-encoded request parses");
        assert!(p.missing.starts_with(&again.missing));
    }
});
