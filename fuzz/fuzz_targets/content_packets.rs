//! Content packets and manifests (ferry-content): decoders never panic and what decodes
//! re-encodes to the input; a fetch scheduler fed arbitrary packets from arbitrary providers
//! never panics and never hands out bytes that do not belong to the blob.
#![no_main]
use std::time::{Duration, Instant};

use ferry_content::ContentId;
use ferry_content::fetch::{Fetch, FetchConfig, FetchEvent};
use ferry_content::manifest::Manifest;
use ferry_content::wire::ContentPacket;
use libfuzzer_sys::fuzz_target;

/// The blob every fuzz run fetches: 40,000 bytes of a fixed pattern (3 groups).
fn blob() -> Vec<u8> {
    (0..40_000u32).map(|i| (i % 251) as u8).collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ContentPacket::decode(data) {
        assert_eq!(p.encode(), data);
    }
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data);
    }
    let b = blob();
    let id = ContentId::of(&b);
    let whole = data.first().is_some_and(|x| x & 1 == 1);
    let len = (!whole).then_some(b.len() as u64);
    let mut f: Fetch<u8> = Fetch::new(id, len, FetchConfig::default());
    for p in 0..3 {
        f.add_provider(p);
    }
    let start = Instant::now();
    let mut now = start;
    // Records of `[provider u8][len u8][packet bytes]`.
    let mut rest = data.get(1..).unwrap_or_default();
    while rest.len() >= 2 {
        let (who, n) = (rest[0] % 3, rest[1] as usize);
        let pkt = &rest[2..(2 + n).min(rest.len())];
        rest = &rest[(2 + n).min(rest.len())..];
        while f.poll_transmit(now).is_some() {}
        if let Ok(p) = ContentPacket::decode(pkt) {
            f.on_packet(now, who, p);
        }
        now += Duration::from_millis(500);
        f.handle_timeout(now);
        while let Some(e) = f.poll_event() {
            if let FetchEvent::Data { offset, bytes } = e {
                let o = offset as usize;
                assert_eq!(&b[o..o + bytes.len()], &bytes[..], "unverified bytes out");
            }
        }
    }
});
