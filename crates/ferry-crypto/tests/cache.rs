//! `PrecomputedCache` under churn: many peers, a small capacity, repeated evictions and table
//! rebuilds. Every key it hands out must be the key `PrecomputedKey::new` computes for that peer,
//! it never holds more than its capacity, and it recomputes a key only for a peer it does not hold
//! (issue 3: the cache's open-addressing table).

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PrecomputedCache, PrecomputedKey};

#[test]
fn cache_under_churn_returns_each_peers_own_key() {
    let mut rng = FerryRng::from_u64(3);
    let me = KeyPair::generate(&mut rng);
    let peers: Vec<_> = (0..120)
        .map(|_| KeyPair::generate(&mut rng).public)
        .collect();
    let nonce = Nonce([9; 24]);
    let expect: Vec<Vec<u8>> = peers
        .iter()
        .map(|p| {
            PrecomputedKey::new(&me.secret, p)
                .encrypt(&nonce, b"probe")
                .expect("encrypt")
        })
        .collect();
    let capacity = 40;
    let mut cache = PrecomputedCache::new(me.secret.clone(), capacity);
    let mut last_computed = 0;
    for step in 0..3_000 {
        // Mostly a hot set of 30 peers, sometimes any of the 120: evictions keep happening.
        let i = if step % 4 == 0 {
            rng.below(peers.len())
        } else {
            rng.below(30)
        };
        let held_before = cache.len();
        let got = cache
            .get(&peers[i])
            .encrypt(&nonce, b"probe")
            .expect("encrypt");
        assert_eq!(got, expect[i], "step {step}: wrong key for peer {i}");
        assert!(
            cache.len() <= capacity,
            "step {step}: {} > {capacity}",
            cache.len()
        );
        let computed = cache.computed();
        assert!(computed == last_computed || computed == last_computed + 1);
        if computed == last_computed {
            // A hit changes nothing held.
            assert_eq!(cache.len(), held_before);
        }
        last_computed = computed;
    }
    // The hot set stays cached: asking for it again computes nothing.
    let before = cache.computed();
    for p in &peers[..30] {
        let _ = cache.get(p);
    }
    assert!(cache.computed() - before < 30, "the hot set was evicted");
    assert!(cache.computed() > 120, "churn never evicted anything");
}
