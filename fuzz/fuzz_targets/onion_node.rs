//! The onion state machine fed arbitrary datagrams from arbitrary loopback ports, with timers
//! advancing: never a panic, and everything it sends is an onion kind or a plain announce/data
//! request or response.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::KeyPair;
use ferry_proto::dht::{Dht, DhtConfig};
use ferry_proto::onion::{Onion, OnionConfig};
use libfuzzer_sys::fuzz_target;

static BASE: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let base = *BASE.get_or_init(Instant::now);
    let mut rng = FerryRng::from_u64(1);
    let dht_keys = KeyPair::generate(&mut rng);
    let real_keys = KeyPair::generate(&mut rng);
    let mut dht = Dht::new(DhtConfig::default(), dht_keys.clone(), rng.fork(), base);
    let mut onion = Onion::new(OnionConfig::default(), real_keys, dht_keys, rng.fork(), base);
    let _ = onion.add_friend(base, ferry_crypto::PublicKey([7; 32]));
    let mut now = base;
    // Datagrams are length-prefixed chunks: [len u16 BE, capped][port u8][bytes].
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]) % 1500).min(rest.len() - 3);
        let port = 33000 + u16::from(rest[2]);
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        onion.handle_packet(now, from, &rest[3..3 + len], &mut dht);
        rest = &rest[3 + len..];
        now += Duration::from_millis(700);
        onion.handle_timeout(now, &mut dht);
        while let Some(t) = onion.poll_transmit() {
            assert!(matches!(t.payload[0], 0x80..=0x86 | 0x8c..=0x8e));
        }
        while onion.poll_event().is_some() {}
    }
});
