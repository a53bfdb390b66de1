//! Onion decoders (`ferry_wire::onion`): any bytes either parse or give an error; packets that
//! parse re-encode to the same bytes (IP_Port padding aside, so layers are only decoded).
#![no_main]
use ferry_wire::onion::{
    AnnounceRequest, AnnounceRequestPayload, AnnounceResponse, AnnounceResponsePayload,
    DataInner, DataRequest, DataResponse, DhtPkEnvelope, OnionData, OnionExit, OnionLayer,
    OnionRequest, OnionResponse,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = OnionRequest::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = OnionResponse::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = AnnounceRequest::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok((p, ret)) = AnnounceRequest::decode_with_return(data) {
        let mut again = p.encode();
        again.extend_from_slice(&ret);
        assert_eq!(again, data);
    }
    if let Ok(p) = AnnounceResponse::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = DataRequest::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = DataResponse::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = DataInner::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = DhtPkEnvelope::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(p) = AnnounceRequestPayload::decode(data) {
        assert_eq!(p.encode(), data);
    }
    // Packed nodes normalize IPv4-mapped addresses, so these only need to round-trip once.
    if let Ok(p) = AnnounceResponsePayload::decode(data) {
        assert_eq!(AnnounceResponsePayload::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(p) = OnionData::decode(data) {
        assert_eq!(OnionData::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(p) = OnionLayer::decode(data) {
        assert_eq!(OnionLayer::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(p) = OnionExit::decode(data) {
        assert_eq!(OnionExit::decode(&p.encode()).ok(), Some(p));
    }
});
