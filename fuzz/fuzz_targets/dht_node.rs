//! The DHT state machine fed arbitrary datagrams from arbitrary loopback ports, with timers
//! advancing: never a panic, and every packet it sends is a DHT packet kind.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::KeyPair;
use ferry_proto::dht::{Dht, DhtConfig};
use ferry_proto::Endpoint;
use libfuzzer_sys::fuzz_target;

static BASE: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let base = *BASE.get_or_init(Instant::now);
    let mut rng = FerryRng::from_u64(1);
    let keys = KeyPair::generate(&mut rng);
    let mut dht = Dht::new(DhtConfig::default(), keys, rng.fork(), base);
    let mut now = base;
    // Datagrams are length-prefixed chunks: [len u8][port u8][bytes].
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]).min(rest.len() - 2);
        let port = 33000 + u16::from(rest[1]);
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        dht.handle_datagram(now, from, &rest[2..2 + len]);
        rest = &rest[2 + len..];
        now += Duration::from_millis(700);
        dht.handle_timeout(now);
        while let Some(t) = dht.poll_transmit() {
            assert!(matches!(t.payload[0], 0x00 | 0x01 | 0x02 | 0x04 | 0x20 | 0x21 | 0xf0));
        }
    }
});
