//! Measures how long one precomputed key (X25519 + HSalsa20) takes.
#![allow(clippy::disallowed_methods, missing_docs)]
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PrecomputedKey};
fn main() {
    let mut rng = FerryRng::from_u64(1);
    let keys: Vec<KeyPair> = (0..200).map(|_| KeyPair::generate(&mut rng)).collect();
    let t = std::time::Instant::now();
    let mut n = 0;
    for a in &keys[..50] {
        for b in &keys[50..] {
            std::hint::black_box(PrecomputedKey::new(&a.secret, &b.public));
            n += 1;
        }
    }
    println!(
        "{n} precomputed keys, {:.1} us each",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
