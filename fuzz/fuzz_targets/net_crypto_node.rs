//! The net_crypto manager with one registered peer fed arbitrary datagrams from arbitrary loopback
//! ports, with timers advancing: never a panic, poll_timeout never in the past after
//! handle_timeout, and every packet it sends is a net_crypto kind.
#![no_main]
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_crypto::KeyPair;
use ferry_crypto::rng::FerryRng;
use ferry_proto::net_crypto::{NetCrypto, NetCryptoConfig};
use libfuzzer_sys::fuzz_target;

static BASE: OnceLock<Instant> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let base = *BASE.get_or_init(Instant::now);
    let mut rng = FerryRng::from_u64(1);
    let real = KeyPair::generate(&mut rng);
    let dht = KeyPair::generate(&mut rng);
    let peer = KeyPair::generate(&mut rng);
    let peer_dht = KeyPair::generate(&mut rng);
    let mut nc = NetCrypto::new(NetCryptoConfig::default(), real, dht, rng.fork(), base);
    nc.add_peer(base, peer.public);
    nc.set_peer_dht_key(base, &peer.public, peer_dht.public);
    nc.set_peer_addr(
        base,
        &peer.public,
        SocketAddr::from(([127, 0, 0, 1], 33000)),
    );
    let mut now = base;
    // Datagrams are length-prefixed chunks: [len lo][len hi][port u8][bytes].
    let mut rest = data;
    while rest.len() >= 3 {
        let len = (usize::from(rest[0]) | usize::from(rest[1]) << 8).min(rest.len() - 3);
        let port = 33000 + u16::from(rest[2] % 4);
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        nc.handle_packet(now, from, &rest[3..3 + len]);
        rest = &rest[3 + len..];
        now += Duration::from_millis(300);
        nc.handle_timeout(now);
        assert!(nc.poll_timeout() > now);
        let _ = nc.send_lossless(now, &peer.public, &[160, 1]);
        while let Some(t) = nc.poll_transmit() {
            assert!(matches!(t.payload[0], 0x18..=0x1b));
        }
        while nc.poll_event().is_some() {}
    }
});
