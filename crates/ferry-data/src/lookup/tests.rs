//! A small in-memory network: stores reached through [`Store::handle`], an oracle-ish routing
//! view per node (its 8 closest plus 12 random nodes), legacy nodes that never answer.

use super::*;
use crate::item::{MailEnvelope, MutableItem, delete_hash};
use crate::store::{Store, StoreConfig};
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::net::SocketAddr;

struct Node {
    node: PackedNode,
    store: Option<Store>,
    known: Vec<PackedNode>,
}

struct Net {
    nodes: HashMap<PublicKey, Node>,
    now: Instant,
}

fn key_of(rng: &mut FerryRng) -> PublicKey {
    let mut k = [0; 32];
    rng.fill_bytes(&mut k);
    PublicKey(k)
}

impl Net {
    fn new(n: usize, legacy_every: usize, seed: u64) -> Self {
        let mut rng = FerryRng::from_u64(seed);
        let now = Instant::now();
        let all: Vec<PackedNode> = (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, (i / 250) as u8, (i % 250) as u8, 1], 33445));
                PackedNode::udp(addr, key_of(&mut rng))
            })
            .collect();
        let mut nodes = HashMap::new();
        for (i, p) in all.iter().enumerate() {
            let mut known: Vec<PackedNode> = all.clone();
            known.retain(|o| o.public_key != p.public_key);
            known.sort_by(|a, b| p.public_key.distance_cmp(&a.public_key, &b.public_key));
            let mut view: Vec<PackedNode> = known[..8].to_vec();
            for _ in 0..12 {
                view.push(known[rng.below(known.len())]);
            }
            let legacy = legacy_every > 0 && i % legacy_every == 0;
            let store = (!legacy).then(|| {
                Store::new(
                    p.public_key,
                    StoreConfig {
                        mail_pow_bits: 0,
                        ..StoreConfig::default()
                    },
                    now,
                    &mut rng,
                )
            });
            nodes.insert(
                p.public_key,
                Node {
                    node: *p,
                    store,
                    known: view,
                },
            );
        }
        Self { nodes, now }
    }

    fn capable_closest(&self, to: &PublicKey, view: &[PackedNode], t: &Target) -> Vec<PackedNode> {
        let mut v: Vec<PackedNode> = view
            .iter()
            .filter(|n| n.public_key != *to && self.nodes[&n.public_key].store.is_some())
            .copied()
            .collect();
        v.sort_by(|a, b| t.key().distance_cmp(&a.public_key, &b.public_key));
        v.dedup();
        v.truncate(8);
        v
    }

    /// Runs `lookup` from node `origin` to completion; returns its events.
    fn run(
        &mut self,
        origin: PublicKey,
        mut lookup: Lookup,
        rng: &mut FerryRng,
    ) -> Vec<LookupEvent> {
        let from = self.nodes[&origin].node.addr;
        let mut events = Vec::new();
        for _ in 0..10_000 {
            while let Some((to, msg)) = lookup.poll_transmit(self.now, rng) {
                let view = self.nodes[&to.public_key].known.clone();
                let target = lookup.target();
                let closest = self.capable_closest(&to.public_key, &view, &target);
                let now = self.now;
                let Some(store) = self
                    .nodes
                    .get_mut(&to.public_key)
                    .and_then(|n| n.store.as_mut())
                else {
                    continue; // legacy: silence
                };
                if let Some(resp) = store.handle(now, from, &origin, &msg, |_| closest) {
                    assert!(lookup.handle_response(&to.public_key, &resp));
                }
            }
            while let Some(e) = lookup.poll_event() {
                events.push(e);
            }
            if lookup.is_done() {
                return events;
            }
            self.now += REQUEST_TIMEOUT;
            lookup.handle_timeout(self.now);
        }
        panic!("lookup did not finish");
    }

    fn seeds(&self, origin: &PublicKey, t: &Target) -> Vec<PackedNode> {
        self.capable_closest(origin, &self.nodes[origin].known, t)
    }

    fn true_closest_capable(&self, t: &Target) -> Vec<PublicKey> {
        let mut v: Vec<PublicKey> = self
            .nodes
            .values()
            .filter(|n| n.store.is_some())
            .map(|n| n.node.public_key)
            .collect();
        v.sort_by(|a, b| t.key().distance_cmp(a, b));
        v.truncate(K);
        v
    }
}

fn origins(net: &Net) -> (PublicKey, PublicKey) {
    let mut keys: Vec<PublicKey> = net.nodes.keys().copied().collect();
    keys.sort();
    (keys[1], keys[keys.len() - 2])
}

#[test]
fn put_lands_on_the_k_closest_capable_and_get_finds_it() {
    // 200 nodes, every 2nd one legacy (50 % mixed network, data-layer.md §4 test 3).
    let mut net = Net::new(200, 2, 11);
    let mut rng = FerryRng::from_u64(3);
    let (a, b) = origins(&net);
    let m = MutableItem::sign(&SigningKey::from_bytes(&[5; 32]), b"", 1, b"v1");
    let target = m.target();
    let op = Operation::Put {
        item: Item::Mutable(m.clone()),
        ttl_s: 3600,
        cas: None,
    };
    let seeds = net.seeds(&a, &target);
    let ev = net.run(a, Lookup::new(a, target, op, seeds), &mut rng);
    let Some(LookupEvent::Finished { closest, stored }) = ev.last().cloned() else {
        panic!("finished last: {ev:?}");
    };
    assert_eq!(stored, K);
    let want = net.true_closest_capable(&target);
    let got: Vec<PublicKey> = closest
        .iter()
        .map(|n| n.public_key)
        .filter(|k| *k != a)
        .collect();
    for k in want.iter().filter(|k| **k != a) {
        assert!(got.contains(k), "a true closest node was missed");
    }
    // Another node gets it; a newer version replaces it; get-with-seq skips the old one.
    let seeds = net.seeds(&b, &target);
    let ev = net.run(
        b,
        Lookup::new(b, target, Operation::Get { seq: None }, seeds),
        &mut rng,
    );
    assert!(ev.iter().any(
        |e| matches!(e, LookupEvent::Value { item, .. } if *item == Item::Mutable(m.clone()))
    ));
    let m2 = MutableItem::sign(&SigningKey::from_bytes(&[5; 32]), b"", 2, b"v2");
    let seeds = net.seeds(&a, &target);
    let op = Operation::Put {
        item: Item::Mutable(m2.clone()),
        ttl_s: 3600,
        cas: Some(1),
    };
    net.run(a, Lookup::new(a, target, op, seeds), &mut rng);
    let seeds = net.seeds(&b, &target);
    let ev = net.run(
        b,
        Lookup::new(b, target, Operation::Get { seq: Some(1) }, seeds),
        &mut rng,
    );
    let values: Vec<&Item> = ev
        .iter()
        .filter_map(|e| match e {
            LookupEvent::Value { item, .. } => Some(item),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec![&Item::Mutable(m2)]);
}

#[test]
fn stale_put_is_refused_everywhere() {
    let mut net = Net::new(60, 0, 12);
    let mut rng = FerryRng::from_u64(4);
    let (a, _) = origins(&net);
    let key = SigningKey::from_bytes(&[6; 32]);
    let new = MutableItem::sign(&key, b"x", 9, b"new");
    let old = MutableItem::sign(&key, b"x", 3, b"old");
    let target = new.target();
    for (item, ok) in [(new, true), (old, false)] {
        let seeds = net.seeds(&a, &target);
        let op = Operation::Put {
            item: Item::Mutable(item),
            ttl_s: 600,
            cas: None,
        };
        let ev = net.run(a, Lookup::new(a, target, op, seeds), &mut rng);
        let refused = ev
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    LookupEvent::Refused {
                        error: PutError::SeqTooLow,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(refused == 0, ok);
    }
}

#[test]
fn mailbox_fetch_pages_and_dedups() {
    let mut net = Net::new(80, 5, 13);
    let mut rng = FerryRng::from_u64(5);
    let (a, b) = origins(&net);
    let mailbox = Target([0x42; 32]);
    for n in 0..5u8 {
        let env = Item::Mail(MailEnvelope {
            delete_hash: delete_hash(&[n; 32]),
            pow: 0,
            sealed: vec![n; 40],
        });
        let seeds = net.seeds(&a, &mailbox);
        let op = Operation::Put {
            item: env,
            ttl_s: 86_400,
            cas: None,
        };
        let ev = net.run(a, Lookup::new(a, mailbox, op, seeds), &mut rng);
        assert!(matches!(
            ev.last(),
            Some(LookupEvent::Finished { stored: K, .. })
        ));
    }
    let seeds = net.seeds(&b, &mailbox);
    let ev = net.run(
        b,
        Lookup::new(b, mailbox, Operation::Get { seq: None }, seeds),
        &mut rng,
    );
    let mails = ev
        .iter()
        .filter(|e| matches!(e, LookupEvent::Mail { .. }))
        .count();
    assert_eq!(mails, 5, "each envelope once, though 8 holders hold it");
    // Delete one by revealing d: gone from every holder.
    let seeds = net.seeds(&b, &mailbox);
    let op = Operation::Put {
        item: Item::MailDelete([2; 32]),
        ttl_s: 0,
        cas: None,
    };
    let ev = net.run(b, Lookup::new(b, mailbox, op, seeds), &mut rng);
    assert!(matches!(
        ev.last(),
        Some(LookupEvent::Finished { stored: K, .. })
    ));
    let seeds = net.seeds(&b, &mailbox);
    let ev = net.run(
        b,
        Lookup::new(b, mailbox, Operation::Get { seq: None }, seeds),
        &mut rng,
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, LookupEvent::Mail { .. }))
            .count(),
        4
    );
}

#[test]
fn forged_value_downranks_the_node() {
    let me = PublicKey([0; 32]);
    let liar = PackedNode::udp("10.0.0.9:1".parse().expect("addr"), PublicKey([9; 32]));
    let target = Target([1; 32]);
    let mut l = Lookup::new(me, target, Operation::Get { seq: None }, [liar]);
    let mut rng = FerryRng::from_u64(1);
    let now = Instant::now();
    let (to, StoreMessage::Get(g)) = l.poll_transmit(now, &mut rng).expect("get") else {
        panic!("a get");
    };
    // An immutable value whose hash is not the target.
    let resp = StoreMessage::GetResponse(crate::wire::GetResponse {
        request_id: g.request_id,
        token: [0; 32],
        would_accept: true,
        nodes: vec![],
        found: Found::Item(Item::Immutable(b"lie".to_vec())),
    });
    // A response from another key or with another id is not ours.
    assert!(!l.handle_response(&PublicKey([8; 32]), &resp));
    assert!(l.handle_response(&to.public_key, &resp));
    assert!(l.poll_transmit(now, &mut rng).is_none());
    assert_eq!(
        l.poll_event(),
        Some(LookupEvent::Finished {
            closest: vec![],
            stored: 0
        })
    );
}

#[test]
fn at_most_two_holders_per_subnet() {
    let me = PublicKey([0; 32]);
    let seeds: Vec<PackedNode> = (1..=10u8)
        .map(|i| PackedNode::udp(SocketAddr::from(([10, 0, 0, i], 1)), PublicKey([i; 32])))
        .collect();
    let mut l = Lookup::new(me, Target([1; 32]), Operation::Get { seq: None }, seeds);
    let mut rng = FerryRng::from_u64(1);
    let now = Instant::now();
    let mut sent = 0;
    while l.poll_transmit(now, &mut rng).is_some() {
        sent += 1;
    }
    assert_eq!(sent, MAX_PER_PREFIX);
}

#[test]
fn placement_is_what_a_put_picks() {
    let me = PublicKey([0; 32]);
    let target = Target([0; 32]);
    // Keys [i; 32]: distance to the all-zero target grows with i.
    let loopback = |i: u8| {
        PackedNode::udp(
            SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(i))),
            PublicKey([i; 32]),
        )
    };
    let spread = |i: u8| PackedNode::udp(SocketAddr::from(([10, i, 0, 1], 1)), PublicKey([i; 32]));
    // One /24 (a loopback test network): the 2 closest, self left out, duplicates once.
    let nodes = vec![
        loopback(5),
        me_node(me),
        loopback(3),
        loopback(9),
        loopback(3),
        loopback(4),
    ];
    let keys = |v: Vec<PackedNode>| v.iter().map(|n| n.public_key.0[0]).collect::<Vec<u8>>();
    assert_eq!(keys(placement(&me, &target, &nodes)), vec![3, 4]);
    // The same nodes a put lookup sends to when all answer.
    let mut l = Lookup::new(me, target, Operation::Get { seq: None }, nodes.clone());
    let mut rng = FerryRng::from_u64(1);
    let mut asked = Vec::new();
    while let Some((to, _)) = l.poll_transmit(Instant::now(), &mut rng) {
        asked.push(to.public_key.0[0]);
    }
    assert_eq!(asked, vec![3, 4]);
    // Distinct /24s: the k closest.
    let wide: Vec<PackedNode> = (1..=12u8).rev().map(spread).collect();
    assert_eq!(
        keys(placement(&me, &target, &wide)),
        (1..=8u8).collect::<Vec<_>>()
    );
    // A closer node joining changes it; nothing known, nothing placed.
    let mut more = nodes.clone();
    more.push(loopback(1));
    assert_eq!(keys(placement(&me, &target, &more)), vec![1, 3]);
    assert!(placement(&me, &target, &[]).is_empty());
}

fn me_node(me: PublicKey) -> PackedNode {
    PackedNode::udp(SocketAddr::from(([127, 0, 0, 1], 999)), me)
}

#[test]
fn put_search_asks_for_no_values() {
    let me = PublicKey([0; 32]);
    let n = PackedNode::udp("10.0.0.9:1".parse().expect("addr"), PublicKey([9; 32]));
    let op = Operation::Put {
        item: Item::Immutable(vec![1]),
        ttl_s: 60,
        cas: None,
    };
    let target = Item::Immutable(vec![1]).implied_target().expect("t");
    let mut l = Lookup::new(me, target, op, [n]);
    let mut rng = FerryRng::from_u64(1);
    let Some((_, StoreMessage::Get(g))) = l.poll_transmit(Instant::now(), &mut rng) else {
        panic!("get");
    };
    assert_eq!(g.seq, Some(u64::MAX));
}

/// Holder republish (30 min) and owner republish (60 min) keep an item retrievable past its
/// 2 h TTL while 60 % of the nodes leave, 10 % per half hour at random (no joins).
#[test]
fn republish_survives_departures() {
    use crate::item::{HOLDER_REPUBLISH_INTERVAL, OWNER_REPUBLISH_INTERVAL};
    let mut net = Net::new(150, 0, 21);
    let mut rng = FerryRng::from_u64(8);
    // Stores have been up 8 h: they grant the full 2 h.
    net.now += Duration::from_secs(8 * 3600);
    let mut keys: Vec<PublicKey> = net.nodes.keys().copied().collect();
    keys.sort();
    let owner = keys[0];
    let m = MutableItem::sign(&SigningKey::from_bytes(&[7; 32]), b"r", 1, b"durable");
    let target = m.target();
    let item = Item::Mutable(m);
    let put = |net: &mut Net, from: PublicKey, item: Item, ttl_s: u32, rng: &mut FerryRng| {
        let seeds = net.seeds(&from, &target);
        let op = Operation::Put {
            item,
            ttl_s,
            cas: None,
        };
        net.run(from, Lookup::new(from, target, op, seeds), rng)
    };
    put(&mut net, owner, item.clone(), 7200, &mut rng);
    let start = net.now;
    let mut last_owner_put = start;
    let mut leaving = keys[1..].to_vec();
    for round in 1..=6u32 {
        net.now = start + HOLDER_REPUBLISH_INTERVAL * round;
        // 10 % of the original nodes leave, at random. (Removing the k closest at once would
        // remove every holder together: no replication survives that.)
        for _ in 0..15 {
            let k = leaving.swap_remove(rng.below(leaving.len()));
            if let Some(n) = net.nodes.get_mut(&k) {
                n.store = None;
            }
        }
        let now = net.now;
        let mut due = Vec::new();
        for (k, n) in net.nodes.iter_mut() {
            if let Some(s) = n.store.as_mut() {
                s.handle_timeout(now, &mut rng);
                for r in s.due_republish(now, &mut rng) {
                    due.push((*k, r));
                }
            }
        }
        for (k, r) in due {
            put(&mut net, k, r.item, r.ttl_s, &mut rng);
        }
        if now.saturating_duration_since(last_owner_put) >= OWNER_REPUBLISH_INTERVAL {
            put(&mut net, owner, item.clone(), 7200, &mut rng);
            last_owner_put = now;
        }
        if round >= 4 {
            // Past the first put's 2 h lifetime.
            let getter = keys[keys.len() - 1];
            let seeds = net.seeds(&getter, &target);
            let ev = net.run(
                getter,
                Lookup::new(getter, target, Operation::Get { seq: None }, seeds),
                &mut rng,
            );
            assert!(
                ev.iter()
                    .any(|e| matches!(e, LookupEvent::Value { item: i, .. } if *i == item)),
                "lost in round {round}"
            );
        }
        // Replication is restored to k live holders every round.
        let now = net.now;
        let holders = net
            .nodes
            .values()
            .filter_map(|n| n.store.as_ref())
            .filter(|s| matches!(s.lookup(now, &target, None), Found::Item(_)))
            .count();
        assert!(holders >= K, "round {round}: {holders} holders");
    }
}
