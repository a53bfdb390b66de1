//! DHT unit tests over a tiny in-memory network with a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

/// Nodes on 127.0.0.x:33445, packets delivered after 1 ms, no loss.
struct Net {
    now: Instant,
    nodes: BTreeMap<SocketAddr, Dht>,
    in_flight: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    delivered: u64,
    lan: Vec<(SocketAddr, u16)>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250 + 1) as u8)),
        33445,
    )
}

fn config() -> DhtConfig {
    DhtConfig {
        lan_discovery: false,
        ..DhtConfig::default()
    }
}

impl Net {
    fn new(n: usize, seed: u64) -> Self {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(seed);
        let mut nodes = BTreeMap::new();
        for i in 0..n {
            let mut node_rng = rng.fork();
            let keys = KeyPair::generate(&mut node_rng);
            nodes.insert(addr(i), Dht::new(config(), keys, node_rng, now));
        }
        Self {
            now,
            nodes,
            in_flight: VecDeque::new(),
            delivered: 0,
            lan: Vec::new(),
        }
    }

    fn pk(&self, i: usize) -> PublicKey {
        self.nodes[&addr(i)].public_key()
    }

    fn node(&mut self, i: usize) -> &mut Dht {
        self.nodes.get_mut(&addr(i)).expect("node exists")
    }

    fn collect(&mut self) {
        for (from, node) in &mut self.nodes {
            while let Some(t) = node.poll_transmit() {
                match t.destination {
                    Destination::Addr(to) => self.in_flight.push_back((
                        self.now + Duration::from_millis(1),
                        *from,
                        to,
                        t.payload,
                    )),
                    Destination::LanBroadcast { port } => self.lan.push((*from, port)),
                }
            }
        }
    }

    /// Runs the network for `d` of virtual time in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.collect();
            while self.in_flight.front().is_some_and(|p| p.0 <= self.now) {
                let Some((_, from, to, bytes)) = self.in_flight.pop_front() else {
                    break;
                };
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.handle_datagram(self.now, from, &bytes);
                    self.delivered += 1;
                }
            }
            for node in self.nodes.values_mut() {
                if node.poll_timeout() <= self.now {
                    node.handle_timeout(self.now);
                }
            }
            self.collect();
            self.now += Duration::from_millis(1);
        }
    }
}

#[test]
fn two_nodes_learn_each_other() {
    let mut net = Net::new(2, 1);
    let (pk0, pk1) = (net.pk(0), net.pk(1));
    let now = net.now;
    net.node(0).bootstrap(now, addr(1), pk1);
    net.run(Duration::from_secs(5));
    let n0 = net.nodes[&addr(0)].close_nodes(net.now);
    let n1 = net.nodes[&addr(1)].close_nodes(net.now);
    assert_eq!(n0.len(), 1, "A lists B");
    assert_eq!(n0[0].public_key, pk1);
    assert_eq!(n0[0].addr, addr(1));
    assert_eq!(n1.len(), 1, "B pinged A back and lists it");
    assert_eq!(n1[0].public_key, pk0);
    assert!(net.nodes[&addr(0)].is_connected(net.now));
}

#[test]
fn empty_responder_is_not_added() {
    // A lone node answers with zero nodes: c-toxcore rejects such responses, so do we;
    // the node gets in through the ping-back instead.
    let mut net = Net::new(2, 2);
    let pk1 = net.pk(1);
    let now = net.now;
    net.node(0).bootstrap(now, addr(1), pk1);
    net.run(Duration::from_millis(10));
    assert_eq!(net.nodes[&addr(0)].close_nodes(net.now).len(), 0);
    // B pings A back (≤ 2 s), lists A, asks A for nodes; A pings B back and lists it.
    net.run(Duration::from_secs(6));
    assert_eq!(net.nodes[&addr(0)].close_nodes(net.now).len(), 1);
}

/// `n` nodes (seed `seed`) bootstrapped from node 0 and run for 10 s; their public keys.
fn bootstrapped(n: usize, seed: u64) -> (Net, Vec<PublicKey>) {
    let mut net = Net::new(n, seed);
    let seed_pk = net.pk(0);
    let now = net.now;
    for i in 1..n {
        net.node(i).bootstrap(now, addr(0), seed_pk);
    }
    net.run(Duration::from_secs(10));
    let keys = (0..n).map(|i| net.pk(i)).collect();
    (net, keys)
}

#[test]
fn thirty_nodes_find_every_other_node() {
    let n = 30;
    let (mut net, keys) = bootstrapped(n, 3);
    let now = net.now;
    for i in 0..n {
        for (j, k) in keys.iter().enumerate() {
            if i != j {
                net.node(i).add_search(now, *k).expect("search");
            }
        }
    }
    net.run(Duration::from_secs(60));
    let now = net.now;
    let mut missing = 0;
    for i in 0..n {
        for (j, k) in keys.iter().enumerate() {
            if i == j {
                continue;
            }
            match net.nodes[&addr(i)]
                .search_status(now, k)
                .and_then(|s| s.found)
            {
                Some(a) => assert_eq!(a, addr(j)),
                None => missing += 1,
            }
        }
    }
    assert_eq!(missing, 0, "every node resolves every other node's address");
    // Found events were emitted once per (node, target).
    let mut found = 0;
    for node in net.nodes.values_mut() {
        while let Some(e) = node.poll_event() {
            if matches!(e, DhtEvent::Found { .. }) {
                found += 1;
            }
        }
    }
    assert_eq!(found, n * (n - 1));
}

/// Every list the scan would skip (its cached walk still valid at `now`) walks, when walked
/// afresh, to the same summary and sends nothing: skipping it is exactly a full walk.
fn assert_scan_cache_is_exact(node: &Dht, now: Instant) -> usize {
    let cut = ScanCut::at(now);
    let mut checked = 0;
    let own = node.public_key();
    let lists = node
        .close
        .buckets
        .iter()
        .zip(&node.close.scanned)
        .map(|(b, s)| (b, s, own))
        .chain(
            node.searches
                .iter()
                .map(|(t, s)| (&s.clients, &s.scanned, *t)),
        );
    for (clients, scanned, target) in lists {
        let Some(cached) = scanned.filter(|s| s.until.is_none_or(|u| now < u)) else {
            continue;
        };
        if clients.is_empty() {
            continue;
        }
        let mut fresh_clients = clients.clone();
        let mut fresh = None;
        let (mut sends, mut candidates) = (Vec::new(), Vec::new());
        let walked = scan_list(
            &mut fresh_clients,
            &mut fresh,
            true,
            now,
            cut,
            target,
            &mut sends,
            &mut candidates,
        );
        assert_eq!(walked, cached, "a skipped list walks to its cached summary");
        assert!(sends.is_empty(), "a skipped list has no ping due");
        assert_eq!(fresh_clients.len(), clients.len(), "nothing in it dies");
        assert_eq!(candidates.len(), cached.good as usize);
        checked += 1;
    }
    checked
}

#[test]
fn skipped_lists_match_a_full_walk_through_churn() {
    let n = 30;
    let (mut net, keys) = bootstrapped(n, 11);
    let now = net.now;
    for i in 0..10 {
        net.node(i)
            .add_search(now, keys[n - 1 - i])
            .expect("search");
    }
    // A third of the nodes leave: their entries turn bad (122 s). Half of those come back
    // before they die (182 s) and turn good again; the others die.
    let mut away = BTreeMap::new();
    for i in 20..n {
        away.insert(addr(i), net.nodes.remove(&addr(i)).expect("node"));
    }
    let mut checked = 0;
    for step in 0..50 {
        if step == 32 {
            for i in 20..25 {
                let node = away.remove(&addr(i)).expect("away");
                net.nodes.insert(addr(i), node);
            }
        }
        net.run(Duration::from_millis(4_321));
        let now = net.now;
        for node in net.nodes.values() {
            checked += assert_scan_cache_is_exact(node, now);
        }
    }
    assert!(checked > 1_000, "only {checked} cached lists checked");
    // The nodes that stayed away were dropped from every close list.
    let gone: Vec<PublicKey> = keys[25..].to_vec();
    for node in net.nodes.values() {
        assert!(node.close.iter().all(|c| !gone.contains(&c.public_key)));
    }
}

#[test]
fn garbage_is_counted_not_fatal() {
    let mut net = Net::new(1, 4);
    let now = net.now;
    let from = addr(9);
    let node = net.node(0);
    node.handle_datagram(now, from, &[]);
    node.handle_datagram(now, from, &[0x00; 82]); // right length, does not decrypt
    node.handle_datagram(now, from, &[0x02; 5]); // short
    node.handle_datagram(now, from, &[0x93; 40]); // unknown kind (announce probe)
    node.handle_datagram(now, from, &[0x1b; 40]); // net_crypto data: not this layer
    let s = node.stats();
    assert_eq!(s.rx_packets, 5);
    assert_eq!(s.malformed, 3);
    assert_eq!(s.unknown_kind, 2);
    assert!(node.poll_transmit().is_none(), "nothing answers garbage");
}

#[test]
fn unsolicited_and_spoofed_responses_are_rejected() {
    let mut net = Net::new(2, 5);
    let pk0 = net.pk(0);
    let pk1 = net.pk(1);
    let now = net.now;
    // Node 1 forges a nodes response to node 0 without a request.
    let plain = NodesResponsePayload {
        nodes: vec![PackedNode::udp(addr(7), PublicKey([7; 32]))],
        ping_id: [1; 8],
    }
    .encode();
    let bytes = net
        .node(1)
        .seal(DhtKind::NodesResponse, &pk0, &plain)
        .expect("seal");
    net.node(0).handle_datagram(now, addr(1), &bytes);
    assert_eq!(net.nodes[&addr(0)].stats().unsolicited, 1);
    assert!(net.nodes[&addr(0)].close_nodes(now).is_empty());
    // A real request, answered from the wrong address, does not count either.
    net.node(0).bootstrap(now, addr(1), pk1);
    net.collect();
    let (_, _, _, req) = net.in_flight.pop_front().expect("request sent");
    net.node(1).handle_datagram(now, addr(0), &req);
    let resp = net.node(1).poll_transmit().expect("response");
    net.node(0).handle_datagram(now, addr(5), &resp.payload);
    assert!(net.nodes[&addr(0)].close_nodes(now).is_empty());
}

#[test]
fn lan_discovery_ports_and_handling() {
    let now = Instant::now();
    let mut rng = FerryRng::from_u64(6);
    let keys = KeyPair::generate(&mut rng);
    let mut node = Dht::new(DhtConfig::default(), keys, rng.fork(), now);
    node.handle_timeout(now);
    let ports: Vec<u16> = std::iter::from_fn(|| node.poll_transmit())
        .filter_map(|t| match t.destination {
            Destination::LanBroadcast { port } => Some(port),
            Destination::Addr(_) => None,
        })
        .collect();
    assert_eq!(ports, (33445..=33455).collect::<Vec<_>>());
    // Next round continues the cycle after 10 s, not before.
    node.handle_timeout(now + Duration::from_secs(5));
    assert!(node.poll_transmit().is_none());
    node.handle_timeout(now + Duration::from_secs(10));
    let ports: Vec<u16> = std::iter::from_fn(|| node.poll_transmit())
        .filter_map(|t| match t.destination {
            Destination::LanBroadcast { port } => Some(port),
            Destination::Addr(_) => None,
        })
        .collect();
    assert_eq!(ports[0], 33445);
    assert_eq!(ports[1], 33456);
    // A LAN discovery packet from a LAN address gets a nodes request; from the internet, nothing.
    let other = KeyPair::generate(&mut rng).public;
    let pkt = LanDiscovery { public_key: other }.encode();
    let t = now + Duration::from_secs(11);
    node.handle_datagram(t, "8.8.8.8:33445".parse().expect("addr"), &pkt);
    assert!(node.poll_transmit().is_none());
    node.handle_datagram(t, "192.168.1.20:33445".parse().expect("addr"), &pkt);
    let tx = node.poll_transmit().expect("nodes request");
    assert_eq!(tx.payload[0], 0x02);
    assert_eq!(tx.payload.len(), 113);
}

#[test]
fn good_nodes_are_kept_and_bad_ones_replaced() {
    let own = PublicKey([0; 32]);
    let mut list = CloseList::new(own);
    let now = Instant::now();
    // Fill bucket 0 (keys with the top bit set) with 8 nodes.
    for i in 0..8u8 {
        let mut k = [0xff; 32];
        k[1] = i;
        assert_eq!(
            list.add(PublicKey(k), addr(usize::from(i)), now),
            Insert::New
        );
    }
    let mut closer = [0x80; 32];
    closer[1] = 0;
    assert_eq!(
        list.add(PublicKey(closer), addr(20), now),
        Insert::No,
        "full of good nodes"
    );
    let later = now + BAD_NODE_TIMEOUT;
    assert_eq!(
        list.add(PublicKey(closer), addr(20), later),
        Insert::New,
        "a bad slot is reused"
    );
    assert_eq!(list.len(), 8);
}

/// A key listed in a search list and in the close list at different addresses: the nodes
/// answer carries the search list's address while that entry is good (search lists are the first
/// source, as before the close list was scanned first), the close list's once it is not.
#[test]
fn close_nodes_prefer_the_search_lists_entry_of_a_key_listed_twice() {
    let now = Instant::now();
    let mut rng = FerryRng::from_u64(5);
    let keys = KeyPair::generate(&mut rng);
    let mut node = Dht::new(config(), keys, rng.fork(), now);
    let target = PublicKey(rng.bytes());
    node.add_search(now, target).expect("search added");
    let pk = PublicKey(rng.bytes());
    let other = PublicKey(rng.bytes());
    let later = now + BAD_NODE_TIMEOUT;
    // `other` keeps the close list's answer non-trivial; `pk` is in both lists.
    assert_eq!(node.close.add(other, addr(3), later), Insert::New);
    assert_eq!(node.close.add(pk, addr(1), later), Insert::New);
    let search = node.searches.get_mut(&target).expect("search exists");
    assert_eq!(search.add(&target, pk, addr(2), now), Insert::New);
    let find = |nodes: Vec<PackedNode>| {
        let listed: Vec<_> = nodes.iter().filter(|n| n.public_key == pk).collect();
        assert_eq!(listed.len(), 1, "one entry per key: {nodes:?}");
        listed[0].addr
    };
    // The search-list entry, heard at `now`, is good just before `later`.
    let just_before = later - Duration::from_millis(1);
    assert_eq!(
        find(node.get_close_nodes(&target, true, just_before)),
        addr(2)
    );
    // At `later` it is bad: the close list's entry (heard at `later`) stands in.
    assert_eq!(find(node.get_close_nodes(&target, true, later)), addr(1));
    assert_eq!(node.get_close_nodes(&target, true, later).len(), 2);
}

#[test]
fn routed_request_is_forwarded_to_a_close_node() {
    let mut net = Net::new(3, 7);
    let (pk1, pk2) = (net.pk(1), net.pk(2));
    let now = net.now;
    net.node(0).bootstrap(now, addr(1), pk1);
    net.node(2).bootstrap(now, addr(1), pk1);
    net.run(Duration::from_secs(5));
    // Node 0 sends to node 2 through node 1 by addressing the packet to node 1's socket.
    let now = net.now;
    let req = {
        let n0 = net.node(0);
        let nonce = Nonce::random(&mut n0.rng);
        let ct = n0
            .cache
            .get(&pk2)
            .encrypt(&nonce, &[0x9c, 0, 1, 2, 3, 4, 5, 6, 7, 8])
            .expect("enc");
        DhtRequest {
            receiver: pk2,
            sender: n0.public_key(),
            nonce,
            ciphertext: ct,
        }
        .encode()
    };
    net.node(1).handle_datagram(now, addr(0), &req);
    assert_eq!(net.nodes[&addr(1)].stats().forwarded, 1);
    net.run(Duration::from_millis(5));
    let ev = std::iter::from_fn(|| net.node(2).poll_event())
        .find(|e| matches!(e, DhtEvent::DhtRequest { .. }));
    assert!(matches!(ev, Some(DhtEvent::DhtRequest { id: 0x9c, .. })));
}

#[test]
fn searches_are_capped() {
    let now = Instant::now();
    let mut rng = FerryRng::from_u64(8);
    let keys = KeyPair::generate(&mut rng);
    let own = keys.public;
    let mut node = Dht::new(
        DhtConfig {
            max_searches: 3,
            ..config()
        },
        keys,
        rng.fork(),
        now,
    );
    assert_eq!(node.add_search(now, own), Err(DhtError::OwnKey));
    for i in 0..3u8 {
        node.add_search(now, PublicKey([i + 1; 32])).expect("room");
    }
    assert_eq!(
        node.add_search(now, PublicKey([9; 32])),
        Err(DhtError::TooManySearches(3))
    );
    node.remove_search(&PublicKey([1; 32]));
    node.add_search(now, PublicKey([9; 32]))
        .expect("room again");
}

proptest! {
    /// Whatever arrives, from wherever, the state machine neither panics nor answers garbage
    /// with anything but protocol packets.
    #[test]
    fn arbitrary_datagrams_never_panic(packets in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..20)) {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(9);
        let keys = KeyPair::generate(&mut rng);
        let mut node = Dht::new(DhtConfig::default(), keys, rng.fork(), now);
        for (kind, mut body) in packets {
            body.insert(0, kind);
            node.handle_datagram(now, "127.0.0.1:1".parse().expect("addr"), &body);
        }
        node.handle_timeout(now + Duration::from_secs(1));
        while let Some(t) = node.poll_transmit() {
            prop_assert!(matches!(t.payload[0], 0x00 | 0x02 | 0x21 | 0xf0));
        }
    }
}

proptest! {
    /// The bucket-ordered `get_close_nodes` returns exactly the 4 closest good nodes that a
    /// scan of every list finds.
    #[test]
    fn get_close_nodes_matches_brute_force(seed in any::<u64>(), n in 1usize..400, targets in proptest::collection::vec(any::<[u8; 32]>(), 1..8)) {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(seed);
        let keys = KeyPair::generate(&mut rng);
        let mut node = Dht::new(config(), keys, rng.fork(), now);
        let mut own_prefix = node.public_key().0;
        for i in 0..n {
            // Half random keys, half sharing a long prefix with our own (deep buckets).
            let mut k: [u8; 32] = rng.bytes();
            if i % 2 == 0 {
                let share = rng.below(20);
                own_prefix[31] = own_prefix[31].wrapping_add(1);
                k[..share].copy_from_slice(&own_prefix[..share]);
            }
            node.add_to_lists(now, PublicKey(k), addr(i));
        }
        for t in targets {
            let target = PublicKey(t);
            let got: Vec<PublicKey> = node.get_close_nodes(&target, true, now).iter().map(|p| p.public_key).collect();
            let mut all: Vec<PublicKey> = node.close.iter().chain(node.searches.values().flat_map(|s| s.clients.iter()))
                .filter(|c| c.good(now)).map(|c| c.public_key).collect();
            all.sort_by(|a, b| target.distance_cmp(a, b));
            all.dedup();
            all.truncate(4);
            prop_assert_eq!(got, all);
        }
    }
}
