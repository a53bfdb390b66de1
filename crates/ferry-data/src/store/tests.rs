use super::*;
use crate::item::{ClaimedItem, MailEnvelope, MutableItem, solve_claim_pow};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use std::collections::HashMap;

fn t0() -> Instant {
    Instant::now()
}

fn addr(a: u8, b: u8) -> SocketAddr {
    SocketAddr::from(([10, a, 1, b], 33445))
}

fn pk(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn store(now: Instant, mut config: StoreConfig) -> Store {
    if config.puts_per_minute == StoreConfig::default().puts_per_minute {
        // Most tests put in bulk at one instant; the rate limit has its own test.
        config.puts_per_minute = u32::MAX;
    }
    if config.mail_pow_bits == StoreConfig::default().mail_pow_bits {
        config.mail_pow_bits = 0;
    }
    let mut rng = FerryRng::from_u64(7);
    Store::new(pk(0), config, now, &mut rng)
}

/// Get a token then put, as a client would.
fn put(s: &mut Store, now: Instant, from: SocketAddr, item: Item) -> Result<u32, PutError> {
    put_at(
        s,
        now,
        from,
        item.implied_target().expect("keyed item"),
        item,
        None,
    )
}

fn put_at(
    s: &mut Store,
    now: Instant,
    from: SocketAddr,
    target: Target,
    item: Item,
    cas: Option<u64>,
) -> Result<u32, PutError> {
    let token = s.token(from, &pk(1), &target);
    s.put(
        now,
        from,
        &pk(1),
        &PutRequest {
            request_id: [1; 8],
            token,
            ttl_s: 7200,
            cas,
            target,
            item,
        },
    )
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn imm(i: u32) -> Item {
    Item::Immutable(i.to_be_bytes().to_vec())
}

#[test]
fn put_needs_a_token_bound_to_address_and_key() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    let item = imm(1);
    let target = item.implied_target().expect("immutable");
    let req = |token| PutRequest {
        request_id: [0; 8],
        token,
        ttl_s: 60,
        cas: None,
        target,
        item: item.clone(),
    };
    assert_eq!(
        s.put(now, addr(1, 1), &pk(1), &req([0; 32])),
        Err(PutError::BadToken)
    );
    let tok = s.token(addr(1, 1), &pk(1), &target);
    // Spoofed address or another key: refused.
    assert_eq!(
        s.put(now, addr(1, 2), &pk(1), &req(tok)),
        Err(PutError::BadToken)
    );
    assert_eq!(
        s.put(now, addr(1, 1), &pk(2), &req(tok)),
        Err(PutError::BadToken)
    );
    assert!(s.put(now, addr(1, 1), &pk(1), &req(tok)).is_ok());
}

#[test]
fn tokens_live_two_rotations() {
    let now = t0();
    let mut rng = FerryRng::from_u64(1);
    let mut s = store(now, StoreConfig::default());
    let t = Target([5; 32]);
    let tok = s.token(addr(1, 1), &pk(1), &t);
    s.handle_timeout(now + TOKEN_ROTATION, &mut rng);
    assert!(
        s.check_token(addr(1, 1), &pk(1), &t, &tok),
        "previous secret"
    );
    s.handle_timeout(now + TOKEN_ROTATION * 2, &mut rng);
    assert!(!s.check_token(addr(1, 1), &pk(1), &t, &tok), "expired");
}

#[test]
fn mutable_rules() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    let a = addr(1, 1);
    let v5 = MutableItem::sign(&key(1), b"s", 5, b"five");
    let target = v5.target();
    assert!(put(&mut s, now, a, Item::Mutable(v5.clone())).is_ok());
    // Forged: value changed after signing.
    let mut forged = MutableItem::sign(&key(1), b"s", 9, b"nine");
    forged.value = b"evil".to_vec();
    assert_eq!(
        put(&mut s, now, a, Item::Mutable(forged)),
        Err(PutError::BadSignature)
    );
    // Another key cannot write this target (its target differs): wrong target.
    let other = MutableItem::sign(&key(2), b"s", 9, b"nine");
    assert_eq!(
        put_at(&mut s, now, a, target, Item::Mutable(other), None),
        Err(PutError::WrongTarget)
    );
    // Older seq, and equal seq with another value: 302.
    let v4 = MutableItem::sign(&key(1), b"s", 4, b"four");
    assert_eq!(
        put(&mut s, now, a, Item::Mutable(v4)),
        Err(PutError::SeqTooLow)
    );
    let v5b = MutableItem::sign(&key(1), b"s", 5, b"FIVE");
    assert_eq!(
        put(&mut s, now, a, Item::Mutable(v5b)),
        Err(PutError::SeqTooLow)
    );
    // Same item again (third-party re-put): accepted.
    assert!(put(&mut s, now, addr(9, 9), Item::Mutable(v5.clone())).is_ok());
    // CAS.
    let v6 = MutableItem::sign(&key(1), b"s", 6, b"six");
    assert_eq!(
        put_at(&mut s, now, a, target, Item::Mutable(v6.clone()), Some(4)),
        Err(PutError::CasMismatch)
    );
    assert!(put_at(&mut s, now, a, target, Item::Mutable(v6.clone()), Some(5)).is_ok());
    assert_eq!(s.lookup(now, &target, None), Found::Item(Item::Mutable(v6)));
    // Get-with-seq omits a value that is not newer.
    assert_eq!(s.lookup(now, &target, Some(6)), Found::SeqOnly(6));
    assert!(matches!(s.lookup(now, &target, Some(5)), Found::Item(_)));
    assert_eq!(s.stats().items, 1);
}

#[test]
fn oversize_and_wrong_target_refused() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    assert_eq!(
        put_at(
            &mut s,
            now,
            addr(1, 1),
            Target([1; 32]),
            Item::Immutable(vec![0; 1001]),
            None
        ),
        Err(PutError::TooLarge)
    );
    assert_eq!(
        put_at(&mut s, now, addr(1, 1), Target([1; 32]), imm(3), None),
        Err(PutError::WrongTarget)
    );
}

#[test]
fn one_source_cannot_evict_others() {
    let now = t0();
    let config = StoreConfig {
        max_items: 12,
        per_source_items: 6,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    // Victims: two sources with 3 items each.
    for i in 0..3 {
        assert!(put(&mut s, now, addr(1, 1), imm(i)).is_ok());
        assert!(put(&mut s, now, addr(2, 1), imm(100 + i)).is_ok());
    }
    // A flood from one /24 (many hosts in it): stops at its quota.
    let mut refused = 0;
    for i in 0..1000 {
        if put(&mut s, now, addr(3, (i % 250) as u8), imm(1000 + i)) == Err(PutError::Quota) {
            refused += 1;
        }
    }
    assert_eq!(refused, 1000 - 6);
    // The store is full (12). A newcomer /24 makes room at the flooder's expense, not the victims'.
    assert!(put(&mut s, now, addr(4, 1), imm(9999)).is_ok());
    assert_eq!(s.stats().evicted, 1);
    for i in 0..3 {
        assert!(matches!(
            s.lookup(now, &imm(i).implied_target().expect("t"), None),
            Found::Item(_)
        ));
        assert!(matches!(
            s.lookup(now, &imm(100 + i).implied_target().expect("t"), None),
            Found::Item(_)
        ));
    }
    assert!(s.stats().items <= 12);
}

#[test]
fn fair_share_eviction_takes_from_the_largest_source() {
    let now = t0();
    let config = StoreConfig {
        max_items: 8,
        per_source_items: 8,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    for i in 0..6 {
        assert!(put(&mut s, now, addr(1, 1), imm(i)).is_ok());
    }
    assert!(put(&mut s, now, addr(2, 1), imm(100)).is_ok());
    assert!(put(&mut s, now, addr(3, 1), imm(200)).is_ok());
    // Full. A small source may evict from the big one, not from its peers.
    assert!(put(&mut s, now, addr(4, 1), imm(300)).is_ok());
    assert_eq!(s.stats().items, 8);
    assert_eq!(s.stats().evicted, 1);
    assert!(matches!(
        s.lookup(now, &imm(100).implied_target().expect("t"), None),
        Found::Item(_)
    ));
    // The big source cannot evict the small ones to grow back.
    assert_eq!(put(&mut s, now, addr(1, 1), imm(7)), Err(PutError::Full));
}

#[test]
fn ttl_caps_and_expiry() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    // 10 min uptime grants 150 s (uptime / 4).
    let later = now + Duration::from_secs(600);
    assert_eq!(put(&mut s, later, addr(1, 1), imm(1)), Ok(150));
    let t = imm(1).implied_target().expect("t");
    assert!(matches!(
        s.lookup(later + Duration::from_secs(149), &t, None),
        Found::Item(_)
    ));
    assert_eq!(
        s.lookup(later + Duration::from_secs(150), &t, None),
        Found::Nothing
    );
    let mut rng = FerryRng::from_u64(3);
    s.handle_timeout(later + Duration::from_secs(151), &mut rng);
    assert_eq!(s.stats().items, 0);
    // After 8 h of uptime the 2 h cap rules.
    let old = now + Duration::from_secs(8 * 3600);
    s.handle_timeout(old, &mut rng);
    assert_eq!(put(&mut s, old, addr(1, 1), imm(2)), Ok(7200));
}

#[test]
fn claims_first_key_wins() {
    let now = t0();
    let config = StoreConfig {
        claim_pow_bits: 6,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    let id = [42; 32];
    let claim = |k: &SigningKey, seq: u64, v: &[u8]| {
        let pk = k.verifying_key().to_bytes();
        let pow = solve_claim_pow(&id, &pk, 6, 0);
        Item::Claimed(ClaimedItem::sign(k, id, pow, seq, v))
    };
    assert!(put(&mut s, now, addr(1, 1), claim(&key(1), 1, b"alice")).is_ok());
    assert_eq!(
        put(&mut s, now, addr(2, 1), claim(&key(2), 9, b"mallory")),
        Err(PutError::Claimed)
    );
    assert!(put(&mut s, now, addr(1, 1), claim(&key(1), 2, b"alice2")).is_ok());
    // No proof of work: refused.
    let pk2 = key(2).verifying_key().to_bytes();
    let lazy = (0..)
        .find(|p| crate::item::claim_pow_bits(&id, &pk2, *p) < 6)
        .expect("most nonces fail");
    assert_eq!(
        put(
            &mut s,
            now,
            addr(2, 1),
            Item::Claimed(ClaimedItem::sign(&key(2), id, lazy, 1, b"x"))
        ),
        Err(PutError::Pow)
    );
}

fn mail(n: u8, len: usize) -> (Item, [u8; 32]) {
    let d = [n; 32];
    (
        Item::Mail(MailEnvelope {
            delete_hash: delete_hash(&d),
            pow: 0,
            sealed: vec![n; len],
        }),
        d,
    )
}

#[test]
fn mailbox_paging_dedup_quota_delete() {
    let now = t0();
    let config = StoreConfig {
        mailbox_items: 3,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    let mb = Target([7; 32]);
    let (m1, d1) = mail(1, 100);
    let (m2, _) = mail(2, 100);
    assert!(put_at(&mut s, now, addr(1, 1), mb, m1.clone(), None).is_ok());
    // Duplicate: accepted (refresh), stored once.
    assert!(put_at(&mut s, now, addr(2, 1), mb, m1.clone(), None).is_ok());
    assert!(put_at(&mut s, now, addr(1, 1), mb, m2.clone(), None).is_ok());
    assert_eq!(s.stats().items, 2);
    assert_eq!(s.lookup(now, &mb, None), Found::Mail { slot: 0, item: m1 });
    assert_eq!(
        s.lookup(now, &mb, Some(1)),
        Found::Mail { slot: 1, item: m2 }
    );
    assert_eq!(s.lookup(now, &mb, Some(2)), Found::Nothing);
    assert!(put_at(&mut s, now, addr(1, 1), mb, mail(3, 10).0, None).is_ok());
    assert_eq!(
        put_at(&mut s, now, addr(1, 1), mb, mail(4, 10).0, None),
        Err(PutError::Quota)
    );
    // Delete by revealing d; a wrong d deletes nothing.
    assert_eq!(
        put_at(&mut s, now, addr(5, 1), mb, Item::MailDelete([9; 32]), None),
        Err(PutError::NotFound)
    );
    assert!(put_at(&mut s, now, addr(5, 1), mb, Item::MailDelete(d1), None).is_ok());
    assert!(matches!(
        s.lookup(now, &mb, None),
        Found::Mail { slot: 1, .. }
    ));
    // Seven days and the mail is gone.
    assert_eq!(s.lookup(now + MAX_MAIL_TTL, &mb, None), Found::Nothing);
}

#[test]
fn snapshot_restore_round_trip() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    let m = MutableItem::sign(&key(1), b"", 3, b"x");
    put(&mut s, now, addr(1, 1), imm(1)).expect("put");
    put(&mut s, now, addr(1, 1), Item::Mutable(m.clone())).expect("put");
    put_at(
        &mut s,
        now,
        addr(2, 1),
        Target([7; 32]),
        mail(1, 50).0,
        None,
    )
    .expect("put");
    let later = now + Duration::from_secs(30);
    let snap = s.snapshot(later);
    let mut rng = FerryRng::from_u64(9);
    let r = Store::restore(pk(0), StoreConfig::default(), &snap, later, &mut rng).expect("restore");
    assert_eq!(r.stats().items, 3);
    assert_eq!(r.stats().bytes, s.stats().bytes);
    assert_eq!(
        r.lookup(later, &m.target(), None),
        Found::Item(Item::Mutable(m))
    );
    assert!(matches!(
        r.lookup(later, &Target([7; 32]), None),
        Found::Mail { .. }
    ));
    assert!(
        Store::restore(
            pk(0),
            StoreConfig::default(),
            &snap[..snap.len() - 1],
            later,
            &mut rng
        )
        .is_err()
    );
}

#[test]
fn handle_answers_hello_get_put() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    let from = addr(1, 1);
    let hello = StoreMessage::Hello(Hello {
        is_response: false,
        request_id: [3; 8],
        accepts: false,
    });
    assert!(matches!(
        s.handle(now, from, &pk(1), &hello, |_| vec![]),
        Some(StoreMessage::Hello(Hello {
            is_response: true,
            accepts: true,
            ..
        }))
    ));
    let item = imm(77);
    let target = item.implied_target().expect("t");
    let get = StoreMessage::Get(GetRequest {
        request_id: [4; 8],
        target,
        seq: None,
    });
    let Some(StoreMessage::GetResponse(g)) = s.handle(now, from, &pk(1), &get, |_| vec![]) else {
        panic!("get response");
    };
    let putm = StoreMessage::Put(PutRequest {
        request_id: [5; 8],
        token: g.token,
        ttl_s: 100,
        cas: None,
        target,
        item,
    });
    assert!(matches!(
        s.handle(now, from, &pk(1), &putm, |_| vec![]),
        Some(StoreMessage::PutResponse(PutResponse {
            result: Ok(60),
            ..
        }))
    ));
}

#[test]
fn republish_is_scheduled() {
    let now = t0();
    let mut rng = FerryRng::from_u64(4);
    let mut s = store(now, StoreConfig::default());
    let later = now + Duration::from_secs(8 * 3600);
    put(&mut s, later, addr(1, 1), imm(1)).expect("put");
    assert!(s.due_republish(later, &mut rng).is_empty());
    let due = s.due_republish(later + HOLDER_REPUBLISH_INTERVAL, &mut rng);
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].ttl_s, 7200 - 1800);
    assert!(
        s.due_republish(later + HOLDER_REPUBLISH_INTERVAL, &mut rng)
            .is_empty()
    );
}

/// Re-put times depend only on the items and the seed, not on the hash maps' iteration order
/// (which differs between two stores, as between two processes): the simulator's runs repeat.
#[test]
fn republish_schedule_does_not_depend_on_hash_order() {
    let now = t0();
    let later = now + Duration::from_secs(8 * 3600);
    let (mut a, mut b) = (
        store(now, StoreConfig::default()),
        store(now, StoreConfig::default()),
    );
    for v in 0..30u32 {
        put(&mut a, later, addr(v as u8, 1), imm(v)).expect("put a");
        put(&mut b, later, addr((29 - v) as u8, 1), imm(29 - v)).expect("put b");
    }
    let (mut ra, mut rb) = (FerryRng::from_u64(9), FerryRng::from_u64(9));
    let mut seen = 0;
    for step in 0..90u64 {
        let at = later + HOLDER_REPUBLISH_INTERVAL + Duration::from_secs(60 * step);
        let da: Vec<Target> = a
            .due_republish(at, &mut ra)
            .iter()
            .map(|r| r.target)
            .collect();
        let db: Vec<Target> = b
            .due_republish(at, &mut rb)
            .iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(da, db, "step {step}");
        seen += da.len();
    }
    assert!(
        seen > 30,
        "items came due again after their jittered interval: {seen}"
    );
}

proptest! {
    /// Random puts from random sources: caps always hold, and a source that stays within its fair
    /// share (2 items ≤ 40 items / 16 sources) never loses an item to anyone.
    #[test]
    fn caps_hold_and_small_sources_keep_items(ops in proptest::collection::vec((0u8..15, any::<u32>()), 1..400)) {
        let now = t0();
        let config = StoreConfig { max_items: 40, per_source_items: 10, max_bytes: 4000, per_source_bytes: 1000, ..StoreConfig::default() };
        let mut s = store(now, config.clone());
        let keep = [imm(u32::MAX), imm(u32::MAX - 1)];
        for k in &keep {
            prop_assert!(put(&mut s, now, addr(200, 1), k.clone()).is_ok());
        }
        for (src, v) in ops {
            let _ = put(&mut s, now, addr(src, 1), imm(v));
            let st = s.stats();
            prop_assert!(st.items <= config.max_items);
            prop_assert!(st.bytes <= config.max_bytes);
        }
        for k in &keep {
            let found = matches!(s.lookup(now, &k.implied_target().expect("t"), None), Found::Item(_));
            prop_assert!(found);
        }
    }
}

#[test]
fn put_rate_per_source() {
    let now = t0();
    let config = StoreConfig {
        puts_per_minute: 16,
        ..StoreConfig::default()
    };
    let mut rng = FerryRng::from_u64(7);
    let mut s = Store::new(pk(0), config, now, &mut rng);
    // A 10k puts/min flood from one /24: 16 pass, the rest are refused; another /24 is unaffected.
    let ok = (0..10_000)
        .filter(|i| put(&mut s, now, addr(1, (i % 200) as u8), imm(*i)).is_ok())
        .count();
    assert_eq!(ok, 16);
    assert!(put(&mut s, now, addr(2, 1), imm(99_999)).is_ok());
    // Next minute: the window resets.
    let later = now + Duration::from_secs(60);
    assert!(put(&mut s, later, addr(1, 1), imm(50_000)).is_ok());
}

impl Store {
    /// Accounting matches contents (test helper).
    fn assert_consistent(&self) {
        let mut per: HashMap<SourceKey, Usage> = HashMap::new();
        let all = self
            .items
            .values()
            .chain(self.mail.values().flat_map(|m| m.envelopes.values()));
        for h in all {
            let u = per.entry(h.source).or_default();
            u.items += 1;
            u.bytes += h.cost;
        }
        assert_eq!(per.len(), self.usage.len());
        for (k, u) in &per {
            let v = self.usage[k];
            assert_eq!((u.items, u.bytes), (v.items, v.bytes));
        }
        for mb in self.mail.values() {
            assert!(!mb.envelopes.is_empty());
            assert_eq!(
                mb.bytes,
                mb.envelopes.values().map(|h| h.cost).sum::<usize>()
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Imm(u8, u16),
    Mut(u8, u8, u64, u8),
    Mail(u8, u8, u8),
    Del(u8, u8),
    Wait(u16),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8, any::<u16>()).prop_map(|(s, v)| Op::Imm(s, v)),
        (0u8..8, 0u8..3, 0u64..6, any::<u8>()).prop_map(|(s, k, q, v)| Op::Mut(s, k, q, v)),
        (0u8..8, 0u8..3, any::<u8>()).prop_map(|(s, m, d)| Op::Mail(s, m, d)),
        (0u8..8, any::<u8>()).prop_map(|(m, d)| Op::Del(m, d)),
        (0u16..4000).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Any sequence of puts, deletes, expiries and a snapshot round trip keeps the accounting
    /// exact and within the caps; nothing panics.
    #[test]
    fn accounting_stays_exact(ops in proptest::collection::vec(arb_op(), 1..200)) {
        let start = t0();
        let mut now = start;
        let config = StoreConfig { max_items: 30, max_bytes: 6000, per_source_items: 12, per_source_bytes: 3000, mailbox_items: 5, mailbox_bytes: 800, ..StoreConfig::default() };
        let mut s = store(now, config.clone());
        let mut rng = FerryRng::from_u64(1);
        for op in ops {
            match op {
                Op::Imm(src, v) => { let _ = put(&mut s, now, addr(src, 1), Item::Immutable(vec![7; usize::from(v % 300)])); }
                Op::Mut(src, k, q, v) => {
                    let m = MutableItem::sign(&key(k), b"", q, &[v; 20]);
                    let _ = put(&mut s, now, addr(src, 1), Item::Mutable(m));
                }
                Op::Mail(src, mb, d) => { let _ = put_at(&mut s, now, addr(src, 1), Target([mb; 32]), mail(d, usize::from(d)).0, None); }
                Op::Del(mb, d) => { let _ = put_at(&mut s, now, addr(1, 1), Target([mb % 3; 32]), Item::MailDelete([d; 32]), None); }
                Op::Wait(secs) => { now += Duration::from_secs(u64::from(secs)); s.handle_timeout(now, &mut rng); }
            }
            s.assert_consistent();
            let st = s.stats();
            prop_assert!(st.items <= config.max_items && st.bytes <= config.max_bytes);
        }
        let r = Store::restore(pk(0), config, &s.snapshot(now), now, &mut rng).expect("restore");
        r.assert_consistent();
        let live = |st: &Store| { let mut x = st.clone_contents(now); x.sort(); x };
        prop_assert_eq!(live(&r), live(&s));
    }
}

impl Store {
    fn clone_contents(&self, now: Instant) -> Vec<Vec<u8>> {
        let all = self
            .items
            .values()
            .chain(self.mail.values().flat_map(|m| m.envelopes.values()));
        all.filter(|h| h.expires > now)
            .map(|h| {
                let mut v = Vec::new();
                h.item.encode(&mut v);
                v
            })
            .collect()
    }
}

#[test]
fn mail_needs_hashcash_bound_to_the_mailbox() {
    let now = t0();
    let config = StoreConfig {
        mail_pow_bits: 8,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    let (Item::Mail(mut env), _) = mail(1, 64) else {
        panic!("mail");
    };
    let mb = Target([3; 32]);
    env.solve_pow(&Target([4; 32]), 8);
    if env.pow_bits(&mb) < 8 {
        // Work done for another mailbox does not count here.
        assert_eq!(
            put_at(&mut s, now, addr(1, 1), mb, Item::Mail(env.clone()), None),
            Err(PutError::Pow)
        );
    }
    env.solve_pow(&mb, 8);
    assert!(put_at(&mut s, now, addr(1, 1), mb, Item::Mail(env), None).is_ok());
}

#[test]
fn claim_expiry_then_semi_expiry() {
    let now = t0();
    let config = StoreConfig {
        claim_pow_bits: 4,
        ..StoreConfig::default()
    };
    let mut s = store(now, config.clone());
    let id = [43; 32];
    let claim = |k: &SigningKey, seq: u64| {
        let pk = k.verifying_key().to_bytes();
        let pow = solve_claim_pow(&id, &pk, 4, 0);
        Item::Claimed(ClaimedItem::sign(k, id, pow, seq, b"rec"))
    };
    let ttl = put(&mut s, now, addr(1, 1), claim(&key(1), 1)).expect("claim");
    let target = Target(id);
    // At expiry, unrenewed: no longer resolves, but cannot be taken for 7 more days...
    let expired = now + Duration::from_secs(u64::from(ttl));
    let mut rng = FerryRng::from_u64(2);
    s.handle_timeout(expired, &mut rng);
    assert_eq!(s.lookup(expired, &target, None), Found::Nothing);
    assert_eq!(
        put(&mut s, expired, addr(2, 1), claim(&key(2), 1)),
        Err(PutError::Claimed)
    );
    // ...and survives a restart in that state.
    let mut s =
        Store::restore(pk(0), config, &s.snapshot(expired), expired, &mut rng).expect("restore");
    assert_eq!(
        put(&mut s, expired, addr(2, 1), claim(&key(2), 1)),
        Err(PutError::Claimed)
    );
    // After the semi-expiry the name is free.
    let free = expired + CLAIM_SEMI_EXPIRY;
    s.handle_timeout(free, &mut rng);
    assert!(put(&mut s, free, addr(2, 1), claim(&key(2), 1)).is_ok());
}

#[test]
fn owner_can_renew_during_semi_expiry() {
    let now = t0();
    let config = StoreConfig {
        claim_pow_bits: 4,
        ..StoreConfig::default()
    };
    let mut s = store(now, config);
    let id = [44; 32];
    let pk1 = key(1).verifying_key().to_bytes();
    let pow = solve_claim_pow(&id, &pk1, 4, 0);
    put(
        &mut s,
        now,
        addr(1, 1),
        Item::Claimed(ClaimedItem::sign(&key(1), id, pow, 1, b"a")),
    )
    .expect("claim");
    let later = now + MAX_CLAIM_TTL + Duration::from_secs(86_400);
    let mut rng = FerryRng::from_u64(2);
    s.handle_timeout(later, &mut rng);
    assert!(
        put(
            &mut s,
            later,
            addr(1, 1),
            Item::Claimed(ClaimedItem::sign(&key(1), id, pow, 2, b"b"))
        )
        .is_ok()
    );
    assert!(matches!(s.lookup(later, &Target(id), None), Found::Item(_)));
}

proptest! {
    /// BEP 44 ordering under any sequence of versions: the store always holds the highest seq
    /// accepted so far; a lower seq is always refused; an equal seq passes only with the same value.
    #[test]
    fn mutable_keeps_the_highest_seq(puts in proptest::collection::vec((0u64..20, 0u8..3), 1..40)) {
        let now = t0();
        let mut s = store(now, StoreConfig::default());
        let k = key(1);
        let mut best: Option<(u64, u8)> = None;
        for (seq, v) in puts {
            let m = MutableItem::sign(&k, b"p", seq, &[v]);
            let r = put(&mut s, now, addr(1, 1), Item::Mutable(m.clone()));
            match best {
                Some((bs, _)) if seq < bs => prop_assert_eq!(r, Err(PutError::SeqTooLow)),
                Some((bs, bv)) if seq == bs && v != bv => prop_assert_eq!(r, Err(PutError::SeqTooLow)),
                _ => {
                    prop_assert!(r.is_ok());
                    best = Some((seq, v));
                }
            }
            let (bs, bv) = best.expect("first put is accepted");
            let held = MutableItem::sign(&k, b"p", bs, &[bv]);
            prop_assert_eq!(s.lookup(now, &held.target(), None), Found::Item(Item::Mutable(held)));
        }
    }
}

#[test]
fn remove_drops_item_and_mailbox_and_frees_quota() {
    let now = t0();
    let mut s = store(now, StoreConfig::default());
    let item = imm(1);
    let t = item.implied_target().expect("t");
    assert!(put(&mut s, now, addr(1, 1), item).is_ok());
    let mb = Target([7; 32]);
    assert!(put_at(&mut s, now, addr(1, 1), mb, mail(1, 100).0, None).is_ok());
    assert!(put_at(&mut s, now, addr(2, 1), mb, mail(2, 100).0, None).is_ok());
    assert_eq!(s.stats().items, 3);
    assert_eq!(s.remove(&t), 1);
    assert_eq!(s.lookup(now, &t, None), Found::Nothing);
    assert_eq!(s.remove(&mb), 2);
    assert_eq!(s.lookup(now, &mb, None), Found::Nothing);
    assert_eq!(s.remove(&mb), 0);
    let st = s.stats();
    assert_eq!((st.items, st.bytes, st.sources), (0, 0, 0));
    assert!(
        s.due_republish(now + MAX_TTL, &mut FerryRng::from_u64(1))
            .is_empty()
    );
}
