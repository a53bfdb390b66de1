//! The TCP relay server state machine (`ferry_relay::RelayServer`) under arbitrary traffic: two
//! clients complete real handshakes, then the input is cut into plaintexts (first byte of each
//! piece = its length) that client 1 or 2 sends sealed, with raw garbage mixed in on a third
//! stream. Nothing may panic and the counters must stay consistent.
#![no_main]
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce};
use ferry_relay::{RelayConfig, RelayServer};
use ferry_wire::relay::{ClientHandshake, HandshakePlain, RelaySession, ServerHandshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)]
    let mut now = Instant::now();
    let mut rng = FerryRng::from_u64(1);
    let relay = KeyPair::generate(&mut rng);
    let mut server = RelayServer::new(RelayConfig::default(), relay.secret.clone(), rng.fork());
    let mut sessions = Vec::new();
    for conn in 1..=2u64 {
        let keys = KeyPair::generate(&mut rng);
        let temp = KeyPair::generate(&mut rng);
        let base = Nonce::random(&mut rng);
        let hs = ClientHandshake::seal(
            &keys.secret,
            &relay.public,
            Nonce::random(&mut rng),
            &HandshakePlain {
                temp_pk: temp.public,
                base_nonce: base,
            },
        )
        .expect("seal");
        server.accept(now, conn);
        server.handle_bytes(now, conn, &hs.encode());
        let Some(ferry_relay::Output::Send(_, reply)) = server.poll_output() else {
            panic!("no server handshake");
        };
        let plain = ServerHandshake::decode(&reply)
            .expect("decode")
            .open(&keys.secret, &relay.public)
            .expect("open");
        sessions.push(RelaySession::new(
            &temp.secret,
            &plain.temp_pk,
            base,
            plain.base_nonce,
        ));
    }
    server.accept(now, 3);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len & 0x7f).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        let who = usize::from(len >> 7);
        if let Some(first) = piece.first()
            && *first == 0xff
        {
            server.handle_bytes(now, 3, piece);
        } else if let Ok(frame) = sessions[who].seal(piece) {
            server.handle_bytes(now, who as u64 + 1, &frame);
        }
        if len == 0x7f {
            now += Duration::from_secs(11);
            server.handle_timeout(now);
        }
        while server.poll_output().is_some() {}
        let s = server.stats();
        assert!(s.clients <= 2 && s.links <= 1);
    }
});
