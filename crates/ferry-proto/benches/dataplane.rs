//! `cargo bench -p ferry-proto --bench dataplane`: seal + open of 1400-byte tunnel packets,
//! the data plane (Noise transport, ChaCha20-Poly1305 via ring) against net_crypto's
//! XSalsa20-Poly1305 (what one-hop frames used before), same run, ratio printed.

#![allow(clippy::disallowed_methods, missing_docs)] // a benchmark reads the clock

use std::time::Instant;

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PrecomputedKey};
use ferry_proto::dataplane::DataPlane;

fn main() {
    let mut rng = FerryRng::from_u64(7);
    let (a, b) = (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng));
    let now = Instant::now();
    let mut da = DataPlane::new(a.secret.to_bytes(), rng.fork());
    let mut db = DataPlane::new(b.secret.to_bytes(), rng.fork());
    let init = da.initiate(now, &b.public).expect("initiate");
    let resp = db
        .handle_handshake(now, &a.public, &init)
        .expect("respond")
        .expect("response");
    da.handle_handshake(now, &b.public, &resp).expect("finish");
    let pk = PrecomputedKey::new(&a.secret, &b.public);
    let nonce = Nonce::random(&mut rng);
    for size in [64usize, 576, 1400] {
        let n = 200_000_000 / size;
        let payload = vec![0x5au8; size];
        let (mut wire, mut plain) = (Vec::with_capacity(2048), Vec::with_capacity(2048));
        let t = Instant::now();
        for _ in 0..n {
            da.seal(&b.public, &payload, &mut wire).expect("seal");
            db.open(now, &wire, &mut plain).expect("open");
        }
        let dp = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            let ct = pk.encrypt(&nonce, &payload).expect("encrypt");
            let pt = pk.decrypt(&nonce, &ct).expect("decrypt");
            std::hint::black_box(pt);
        }
        let nc = t.elapsed();
        let mbs = |d: std::time::Duration| (n * size) as f64 / d.as_secs_f64() / 1e6;
        println!(
            "{size:5} B seal+open: dataplane {:7.1} MB/s ({:6.0} ns/pkt), net_crypto {:7.1} MB/s ({:6.0} ns/pkt), ratio {:.2}x",
            mbs(dp),
            dp.as_nanos() as f64 / n as f64,
            mbs(nc),
            nc.as_nanos() as f64 / n as f64,
            nc.as_secs_f64() / dp.as_secs_f64()
        );
    }
}
