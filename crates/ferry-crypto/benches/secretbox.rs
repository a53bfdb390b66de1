//! `cargo bench -p ferry-crypto --bench secretbox`: encrypt + decrypt of Tox-sized packets
//! (XSalsa20-Poly1305 with a precomputed key) through ferry-crypto (libsodium) against
//! RustCrypto's `crypto_secretbox` (what ferry used before), same run, ratio printed. Also the
//! in-place pair the net_crypto hot path uses, and `crypto_box_beforenm` (X25519 + HSalsa20).

#![allow(clippy::disallowed_methods, missing_docs)] // a benchmark reads the clock

use std::time::{Duration, Instant};

use crypto_secretbox::aead::{Aead, KeyInit};
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, MAC_SIZE, Nonce, PrecomputedKey};

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let mut rng = FerryRng::from_u64(7);
    let (a, b) = (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng));
    let pk = PrecomputedKey::new(&a.secret, &b.public);
    let nonce = Nonce::random(&mut rng);
    // RustCrypto with the same key bytes: the raw beforenm key, via a round trip through
    // `from_beforenm_bytes` would hide it, so derive it with RustCrypto's own SalsaBox.
    let rc = crypto_box::SalsaBox::new(
        &crypto_box::PublicKey::from(b.public.0),
        &crypto_box::SecretKey::from(a.secret.to_bytes()),
    );
    let _ = crypto_secretbox::XSalsa20Poly1305::new(&[0u8; 32].into());
    println!("size  ferry(libsodium) µs  in-place µs  RustCrypto µs  RustCrypto/libsodium");
    for size in [40usize, 100, 160, 256, 600, 1373] {
        let n = 100_000_000 / (size + 200);
        let payload = vec![0x5au8; size];
        let t = Instant::now();
        for _ in 0..n {
            let ct = pk.encrypt(&nonce, &payload).expect("encrypt");
            let pt = pk.decrypt(&nonce, &ct).expect("decrypt");
            std::hint::black_box(pt);
        }
        let ours = t.elapsed();
        let mut buf = vec![0u8; MAC_SIZE + size];
        let t = Instant::now();
        for _ in 0..n {
            buf[MAC_SIZE..].copy_from_slice(&payload);
            pk.encrypt_in_place(&nonce, &mut buf, 0).expect("encrypt");
            pk.decrypt_in_place(&nonce, &mut buf).expect("decrypt");
            std::hint::black_box(&buf);
        }
        let inplace = t.elapsed();
        let t = Instant::now();
        for _ in 0..n {
            let ct = rc.encrypt(&nonce.0.into(), &payload[..]).expect("encrypt");
            let pt = rc.decrypt(&nonce.0.into(), &ct[..]).expect("decrypt");
            std::hint::black_box(pt);
        }
        let theirs = t.elapsed();
        println!(
            "{size:5}  {:19.2}  {:11.2}  {:13.2}  {:.2}×",
            per_op(ours, n),
            per_op(inplace, n),
            per_op(theirs, n),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(PrecomputedKey::new(&a.secret, &b.public));
    }
    let ours = t.elapsed();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(crypto_box::SalsaBox::new(
            &crypto_box::PublicKey::from(b.public.0),
            &crypto_box::SecretKey::from(a.secret.to_bytes()),
        ));
    }
    let theirs = t.elapsed();
    println!(
        "beforenm  libsodium {:.1} µs  RustCrypto {:.1} µs  {:.2}×",
        per_op(ours, n),
        per_op(theirs, n),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}
