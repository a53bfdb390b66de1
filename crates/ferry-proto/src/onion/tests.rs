//! Onion unit tests: the relay and announce store packet by packet, and a small network of
//! DHT + onion nodes on a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use ferry_crypto::{Nonce, PrecomputedKey};
use ferry_wire::onion::{
    AnnounceRequest, AnnounceRequestPayload, AnnounceResponse, AnnounceStatus, OnionResponse,
    RETURN_3_SIZE,
};
use proptest::prelude::*;

use super::*;
use crate::Endpoint;
use crate::dht::{DhtConfig, DhtEvent};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250 + 1) as u8)),
        33445,
    )
}

/// A DHT + onion node, dispatching by first byte as the lead's `Node` does.
struct Node {
    dht: Dht,
    onion: Onion,
    events: Vec<OnionEvent>,
}

impl Node {
    fn new(seed: u64, now: Instant) -> Self {
        let mut rng = FerryRng::from_u64(seed);
        let dht_keys = KeyPair::generate(&mut rng);
        let real_keys = KeyPair::generate(&mut rng);
        let dht = Dht::new(
            DhtConfig {
                lan_discovery: false,
                ..DhtConfig::default()
            },
            dht_keys.clone(),
            rng.fork(),
            now,
        );
        let onion = Onion::new(OnionConfig::default(), real_keys, dht_keys, rng.fork(), now);
        Self {
            dht,
            onion,
            events: Vec::new(),
        }
    }

    fn datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match bytes.first() {
            Some(0x80..=0x8e) => self.onion.handle_packet(now, from, bytes, &mut self.dht),
            _ => self.dht.handle_datagram(now, from, bytes),
        }
        self.drain();
    }

    fn timeout(&mut self, now: Instant) {
        if self.dht.poll_timeout() <= now {
            self.dht.handle_timeout(now);
        }
        if self.onion.poll_timeout() <= now {
            self.onion.handle_timeout(now, &mut self.dht);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(ev) = self.dht.poll_event() {
            if let DhtEvent::DhtRequest {
                sender,
                id: 0x9c,
                data,
                ..
            } = ev
            {
                self.onion.handle_dht_pk_request(&sender, &data);
            }
        }
        while let Some(ev) = self.onion.poll_event() {
            self.events.push(ev);
        }
    }

    fn poll_timeout(&self) -> Instant {
        self.dht.poll_timeout().min(self.onion.poll_timeout())
    }
}

/// Nodes on 127.0.0.x, datagrams delivered after 5 ms, no loss; jumps from event to event.
struct Net {
    now: Instant,
    nodes: BTreeMap<SocketAddr, Node>,
    in_flight: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Net {
    fn new(n: usize, seed: u64) -> Self {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        for i in 0..n {
            nodes.insert(addr(i), Node::new(seed * 1000 + i as u64, now));
        }
        let mut net = Self {
            now,
            nodes,
            in_flight: VecDeque::new(),
        };
        let seed_pk = net.node(0).dht.public_key();
        for i in 1..n {
            net.node(i).dht.bootstrap(now, addr(0), seed_pk);
        }
        net
    }

    fn node(&mut self, i: usize) -> &mut Node {
        self.nodes.get_mut(&addr(i)).expect("node exists")
    }

    fn collect(&mut self) {
        for (from, node) in &mut self.nodes {
            while let Some(t) = node
                .onion
                .poll_transmit()
                .or_else(|| node.dht.poll_transmit())
            {
                if let Destination::Addr(to) = t.destination {
                    self.in_flight.push_back((
                        self.now + Duration::from_millis(5),
                        *from,
                        to,
                        t.payload,
                    ));
                }
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.collect();
            let next_packet = self.in_flight.front().map(|p| p.0);
            let next_timer = self.nodes.values().map(Node::poll_timeout).min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            while self.in_flight.front().is_some_and(|p| p.0 <= self.now) {
                let Some((_, from, to, bytes)) = self.in_flight.pop_front() else {
                    break;
                };
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.datagram(self.now, from, &bytes);
                }
            }
            let now = self.now;
            for node in self.nodes.values_mut() {
                node.timeout(now);
            }
        }
        self.now = end;
    }
}

#[test]
fn hmac_sha256_rfc4231_case_1() {
    let mut key = [0u8; 32];
    key[..20].fill(0x0b);
    let mac = relay::hmac_sha256(&key, b"Hi There");
    assert_eq!(
        mac[..8],
        [0xb0, 0x34, 0x4c, 0x61, 0xd8, 0xdb, 0x38, 0x53],
        "zero-padding a 20-byte key to 32 bytes does not change HMAC"
    );
}

/// Sends a raw announce request to `d` as if it came from relay C at `from`, returns the
/// decrypted response.
fn announce_at(
    d: &mut Node,
    now: Instant,
    from: SocketAddr,
    requester: &KeyPair,
    ping_id: [u8; 32],
    search: PublicKey,
    data_pk: PublicKey,
) -> AnnounceResponsePayloadView {
    let d_pk = d.dht.public_key();
    let key = PrecomputedKey::new(&requester.secret, &d_pk);
    let payload = AnnounceRequestPayload {
        ping_id,
        search_pk: search,
        data_pk,
        sendback: [4; 8],
    };
    let req =
        AnnounceRequest::seal(&key, Nonce([9; 24]), requester.public, &payload).expect("seal");
    let mut bytes = req.encode();
    bytes.extend_from_slice(&[0x33; RETURN_3_SIZE]);
    d.onion.handle_packet(now, from, &bytes, &mut d.dht);
    let t = d.onion.poll_transmit().expect("a response");
    assert_eq!(t.destination, Destination::Addr(from));
    let resp = OnionResponse::decode(&t.payload).expect("0x8c");
    assert_eq!(resp.layer, 3);
    assert_eq!(resp.ret, vec![0x33; RETURN_3_SIZE], "ret3 echoed");
    let ar = AnnounceResponse::decode(&resp.data).expect("0x84");
    assert_eq!(ar.sendback, [4; 8]);
    let p = ar.open(&key).expect("open");
    AnnounceResponsePayloadView {
        status: p.status,
        field: p.ping_id_or_key,
    }
}

struct AnnounceResponsePayloadView {
    status: AnnounceStatus,
    field: [u8; 32],
}

#[test]
fn announce_store_ping_id_window_and_lookup() {
    let now = Instant::now();
    let mut d = Node::new(1, now);
    let mut rng = FerryRng::from_u64(99);
    let alice = KeyPair::generate(&mut rng);
    let data_pk = PublicKey([5; 32]);
    let src = addr(7);
    // First request: not stored, a fresh ping id.
    let r = announce_at(&mut d, now, src, &alice, [0; 32], alice.public, data_pk);
    assert_eq!(r.status, AnnounceStatus::Failed);
    let ping_id = r.field;
    // Same ping id from another source address is not valid.
    let r = announce_at(&mut d, now, addr(8), &alice, ping_id, alice.public, data_pk);
    assert_eq!(r.status, AnnounceStatus::Failed);
    // With it: stored.
    let r = announce_at(&mut d, now, src, &alice, ping_id, alice.public, data_pk);
    assert_eq!(r.status, AnnounceStatus::Announced);
    assert_eq!(d.onion.stats().announce_entries, 1);
    // A searcher with a random key finds Alice's data key.
    let bob_tmp = KeyPair::generate(&mut rng);
    let r = announce_at(
        &mut d,
        now,
        addr(9),
        &bob_tmp,
        [0; 32],
        alice.public,
        PublicKey([0; 32]),
    );
    assert_eq!(r.status, AnnounceStatus::Found);
    assert_eq!(r.field, data_pk.0);
    // The ping id is still good 599 s later (previous bucket at worst) ...
    let later = now + Duration::from_secs(599);
    let r = announce_at(&mut d, later, src, &alice, ping_id, alice.public, data_pk);
    assert_eq!(r.status, AnnounceStatus::Announced);
    // ... but not 600 s later, whatever the bucket phase.
    let r = announce_at(
        &mut d,
        now + Duration::from_secs(600),
        src,
        &alice,
        ping_id,
        alice.public,
        data_pk,
    );
    assert_ne!(r.field, ping_id, "a new ping id is handed out");
    // The entry expires 300 s after its last renewal.
    d.onion.relay.expire(later + Duration::from_secs(300));
    assert_eq!(d.onion.relay.entries.len(), 0);
}

#[test]
fn announce_store_is_capped_and_keeps_the_closest() {
    let now = Instant::now();
    let mut d = Node::new(2, now);
    let own = d.dht.public_key();
    let mut rng = FerryRng::from_u64(5);
    let mut stored = Vec::new();
    for i in 0..(ONION_ANNOUNCE_MAX_ENTRIES + 40) {
        let kp = KeyPair::generate(&mut rng);
        let src = addr(10 + i);
        let r = announce_at(
            &mut d,
            now,
            src,
            &kp,
            [0; 32],
            kp.public,
            PublicKey([1; 32]),
        );
        let r2 = announce_at(
            &mut d,
            now,
            src,
            &kp,
            r.field,
            kp.public,
            PublicKey([1; 32]),
        );
        if r2.status == AnnounceStatus::Announced {
            stored.push(kp.public);
        }
    }
    let entries = &d.onion.relay.entries;
    assert_eq!(entries.len(), ONION_ANNOUNCE_MAX_ENTRIES);
    // Every key that was stored and evicted is farther than every key kept.
    let kept: Vec<PublicKey> = entries.iter().map(|e| e.public_key).collect();
    let farthest_kept = kept
        .iter()
        .max_by(|a, b| own.distance_cmp(a, b))
        .expect("non-empty");
    for pk in stored.iter().filter(|k| !kept.contains(k)) {
        assert!(own.distance_cmp(pk, farthest_kept).is_gt());
    }
}

#[test]
fn responses_obey_the_kind_filter() {
    let now = Instant::now();
    let mut n = Node::new(3, now);
    // A 0x8e carrying a 0x83 (not a response kind) is dropped before any decryption.
    let mut bytes = vec![0x8e];
    bytes.extend_from_slice(&[0; 59]);
    bytes.push(0x83);
    bytes.extend_from_slice(&[0; 100]);
    n.onion.handle_packet(now, addr(1), &bytes, &mut n.dht);
    assert!(n.onion.poll_transmit().is_none());
    assert_eq!(n.onion.stats().malformed, 1);
    // With 0x84 it passes the filter but our secretbox does not open random bytes.
    bytes[60] = 0x84;
    n.onion.handle_packet(now, addr(1), &bytes, &mut n.dht);
    assert!(n.onion.poll_transmit().is_none());
    assert_eq!(n.onion.stats().malformed, 2);
    // 0x87 (group announce, ≥ 0.2.19) is ignored, not malformed.
    n.onion
        .handle_packet(now, addr(1), &[0x87, 1, 2], &mut n.dht);
    assert_eq!(n.onion.stats().unknown_kind, 1);
}

#[test]
fn relays_carry_an_announce_there_and_back() {
    // Client X, relays A, B, C and destination D, all on one small network.
    let mut net = Net::new(8, 4);
    net.run(Duration::from_secs(20));
    // After the warm-up every node announced itself through three relays: each node stores
    // some announcements and counts relayed packets.
    let total_relayed: u64 = net
        .nodes
        .values()
        .map(|n| n.onion.stats().relayed_requests)
        .sum();
    let total_back: u64 = net
        .nodes
        .values()
        .map(|n| n.onion.stats().relayed_responses)
        .sum();
    let stored: u64 = net
        .nodes
        .values()
        .map(|n| n.onion.stats().announce_entries)
        .sum();
    assert!(
        total_relayed > 0 && total_back > 0,
        "{total_relayed} {total_back}"
    );
    assert!(stored >= 8, "every node is stored somewhere: {stored}");
    for (a, n) in &net.nodes {
        assert_eq!(n.onion.stats().malformed, 0, "{a}");
    }
}

#[test]
fn nodes_connect_and_friends_exchange_dht_keys() {
    let mut net = Net::new(16, 5);
    let (a, b) = (1, 2);
    let pka = net.node(a).onion.real_public_key();
    let pkb = net.node(b).onion.real_public_key();
    let now = net.now;
    net.node(a).onion.add_friend(now, pkb).expect("add");
    net.node(b).onion.add_friend(now, pka).expect("add");
    net.run(Duration::from_secs(15));
    let connected = net
        .nodes
        .values()
        .filter(|n| n.onion.is_connected())
        .count();
    assert!(connected >= 14, "{connected} of 16 connected after 15 s");
    assert!(net.node(a).events.contains(&OnionEvent::Connected(true)));
    net.run(Duration::from_secs(45));
    let dhta = net.node(a).dht.public_key();
    let dhtb = net.node(b).dht.public_key();
    assert_eq!(net.node(a).onion.friend_dht_pk(&pkb), Some(dhtb));
    assert_eq!(net.node(b).onion.friend_dht_pk(&pka), Some(dhta));
    // A friend request from a third node.
    let c = 3;
    let now = net.now;
    net.node(c).onion.add_friend(now, pka).expect("add");
    net.run(Duration::from_secs(20));
    let now = net.now;
    net.node(c)
        .onion
        .send_friend_request(now, &pka, [1, 2, 3, 4], b"hello from c")
        .expect("found");
    net.run(Duration::from_secs(2));
    let pkc = net.node(c).onion.real_public_key();
    assert!(net.node(a).events.iter().any(|e| matches!(
        e,
        OnionEvent::FriendRequest { real_pk, nospam: [1, 2, 3, 4], message } if *real_pk == pkc && message == b"hello from c"
    )));
}

#[test]
fn dht_pk_replays_are_dropped() {
    let now = Instant::now();
    let mut a = Node::new(10, now);
    let mut b = Node::new(11, now);
    let pka = a.onion.real_public_key();
    let pkb = b.onion.real_public_key();
    b.onion.add_friend(now, pka).expect("add");
    a.onion.add_friend(now, pkb).expect("add");
    // Pretend A learned B's DHT key, so it can build a DHT-PK request.
    a.onion.client.friends.get_mut(&pkb).expect("friend").dht_pk = Some(b.dht.public_key());
    let (to, data) = a
        .onion
        .build_dht_pk_request(now, &pkb, &a.dht)
        .expect("built");
    assert_eq!(to, b.dht.public_key());
    let a_dht = a.dht.public_key();
    assert!(b.onion.handle_dht_pk_request(&a_dht, &data));
    assert!(!b.onion.handle_dht_pk_request(&a_dht, &data), "replay");
    // Wrong DHT sender key: rejected.
    let (_, data2) = a
        .onion
        .build_dht_pk_request(now, &pkb, &a.dht)
        .expect("built");
    assert!(!b.onion.handle_dht_pk_request(&PublicKey([1; 32]), &data2));
    assert!(
        b.onion.handle_dht_pk_request(&a_dht, &data2),
        "newer no_replay"
    );
    assert_eq!(b.onion.friend_dht_pk(&pka), Some(a_dht));
    // Going offline resets the counter (c-toxcore `onion_set_friend_online`).
    b.onion.set_friend_online(&pka, false);
    assert!(b.onion.handle_dht_pk_request(&a_dht, &data));
}

#[test]
fn friend_table_is_capped_and_commands_check_input() {
    let now = Instant::now();
    let mut rng = FerryRng::from_u64(1);
    let keys = KeyPair::generate(&mut rng);
    let mut o = Onion::new(
        OnionConfig {
            max_friends: 2,
            ..OnionConfig::default()
        },
        keys.clone(),
        KeyPair::generate(&mut rng),
        rng.fork(),
        now,
    );
    o.add_friend(now, PublicKey([1; 32])).expect("1");
    o.add_friend(now, PublicKey([1; 32])).expect("again");
    o.add_friend(now, PublicKey([2; 32])).expect("2");
    assert_eq!(
        o.add_friend(now, PublicKey([3; 32])),
        Err(OnionError::TooManyFriends(2))
    );
    assert_eq!(
        o.send_friend_request(now, &PublicKey([1; 32]), [0; 4], b""),
        Err(OnionError::BadMessage(0))
    );
    assert_eq!(
        o.send_friend_request(now, &PublicKey([9; 32]), [0; 4], b"hi"),
        Err(OnionError::UnknownFriend)
    );
    assert_eq!(
        o.send_friend_request(now, &PublicKey([1; 32]), [0; 4], b"hi"),
        Err(OnionError::NotFound)
    );
    o.remove_friend(&PublicKey([1; 32]));
    assert_eq!(o.stats().friends, 1);
    let mut b = Bounded::new(3);
    for i in 0..10u8 {
        b.insert(i, i);
    }
    assert_eq!(b.len(), 3);
    assert_eq!(b.remove(&9), Some(9));
    assert_eq!(b.remove(&0), None);
}

#[test]
fn timeout_moves_forward() {
    let now = Instant::now();
    let mut n = Node::new(12, now);
    assert!(n.onion.poll_timeout() <= now);
    n.onion.handle_timeout(now, &mut n.dht);
    assert!(n.onion.poll_timeout() > now);
}

proptest! {
    /// Random bytes under every onion kind: never a panic, never a transmit; counted.
    #[test]
    fn random_packets_never_panic(kind in 0x80u8..=0x8e, body in proptest::collection::vec(any::<u8>(), 0..1500), seed in 0u64..4) {
        let now = Instant::now();
        let mut n = Node::new(seed, now);
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&body);
        n.onion.handle_packet(now, addr(1), &bytes, &mut n.dht);
        prop_assert!(n.onion.poll_transmit().is_none());
        let s = n.onion.stats();
        prop_assert_eq!(s.rx_packets, 1);
    }
}
