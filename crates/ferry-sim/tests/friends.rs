//! Full ferry nodes (`ferry_proto::node::Node`: DHT + onion + net_crypto + messenger) in the
//! simulator (issue 3 point 4: later layers plug into the same simulator): friends who start
//! together come online, a friend request is accepted, messages get receipts, and the same seed
//! gives the same run.

#![allow(clippy::disallowed_methods)] // the test picks its base `Instant` once

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::KeyPair;
use ferry_crypto::rng::FerryRng;
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::{Connection, Node, NodeConfig, NodeEvent};
use ferry_proto::{Endpoint, Transmit};
use ferry_sim::net::{LinkConfig, Network, NodeId};

/// A node that answers friend requests itself and logs its events with their times.
struct SimNode {
    node: Node,
    auto_accept: bool,
    log: Vec<(Instant, NodeEvent)>,
}

impl SimNode {
    fn new(rng: &mut FerryRng, now: Instant) -> Self {
        let mut rng = rng.fork();
        let real = KeyPair::generate(&mut rng);
        let dht = KeyPair::generate(&mut rng);
        let config = NodeConfig {
            dht: DhtConfig {
                lan_discovery: false,
                ..DhtConfig::default()
            },
            ..NodeConfig::default()
        };
        Self {
            node: Node::new(config, real, dht, 7, rng.fork(), now),
            auto_accept: false,
            log: Vec::new(),
        }
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.node.poll_event() {
            if let NodeEvent::FriendRequest { public_key, .. } = &ev
                && self.auto_accept
            {
                let _ = self.node.add_friend_norequest(now, *public_key);
            }
            self.log.push((now, ev));
        }
    }

    fn online_at(&self, peer: &ferry_crypto::PublicKey) -> Option<Instant> {
        self.log.iter().find_map(|(t, e)| match e {
            NodeEvent::FriendConnection {
                public_key,
                connection,
            } if public_key == peer && *connection != Connection::None => Some(*t),
            _ => None,
        })
    }
}

impl Endpoint for SimNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.node.handle_datagram(now, from, bytes);
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.node.poll_transmit()
    }

    fn poll_timeout(&self) -> Instant {
        self.node.poll_timeout()
    }
}

/// Online times (ms after the friendship began) of both sides of each pair, and the number of
/// messages with receipts, for one seeded run of `n` nodes.
fn run(seed: u64, n: usize) -> (Vec<(u64, u64)>, usize) {
    let base = Instant::now();
    let mut net = Network::new(LinkConfig::default(), FerryRng::from_u64(seed), base);
    let ids: Vec<NodeId> = (0..n)
        .map(|_| net.add(|_, rng| SimNode::new(rng, base)))
        .collect();
    let seed_addr = net.addr(ids[0]).expect("seed");
    let seed_pk = net.node(ids[0]).expect("seed").node.dht().public_key();
    for &id in &ids[1..] {
        net.with_node(id, |s, now| {
            s.node.dht_mut().bootstrap(now, seed_addr, seed_pk)
        });
    }
    // Let the DHT form.
    net.run_until(Duration::from_secs(20));
    let start = net.now();
    let real = |net: &Network<SimNode>, id: NodeId| net.node(id).expect("live").node.tox_id();
    // Pairs who already are friends (as after a restart), and one friend request.
    let pairs = [(1usize, 2usize), (3, 4), (5, 6)];
    for &(a, b) in &pairs {
        let (ia, ib) = (real(&net, ids[a]), real(&net, ids[b]));
        net.with_node(ids[a], |s, now| {
            s.node.add_friend_norequest(now, ib.public_key)
        })
        .expect("live")
        .expect("add");
        net.with_node(ids[b], |s, now| {
            s.node.add_friend_norequest(now, ia.public_key)
        })
        .expect("live")
        .expect("add");
    }
    let (ra, rb) = (ids[7], ids[8]);
    net.with_node(rb, |s, _| s.auto_accept = true);
    let rb_id = real(&net, rb);
    net.with_node(ra, |s, now| {
        s.node.add_friend(now, &rb_id, b"hello from the simulator")
    })
    .expect("live")
    .expect("add");
    net.run_until(Duration::from_secs(80));
    let mut times = Vec::new();
    for &(a, b) in pairs.iter().chain([(7usize, 8usize)].iter()) {
        let (pa, pb) = (real(&net, ids[a]).public_key, real(&net, ids[b]).public_key);
        let ta = net.node(ids[a]).and_then(|s| s.online_at(&pb));
        let tb = net.node(ids[b]).and_then(|s| s.online_at(&pa));
        let (Some(ta), Some(tb)) = (ta, tb) else {
            panic!("seed {seed}: pair ({a}, {b}) never came online");
        };
        times.push((
            ta.duration_since(start).as_millis() as u64,
            tb.duration_since(start).as_millis() as u64,
        ));
    }
    // Messages with receipts across every pair.
    let mut sent = Vec::new();
    for &(a, b) in pairs.iter().chain([(7usize, 8usize)].iter()) {
        let pb = real(&net, ids[b]).public_key;
        let id = net
            .with_node(ids[a], |s, now| {
                s.node.send_message(now, &pb, false, "ping")
            })
            .expect("live")
            .expect("send");
        sent.push((ids[a], ids[b], id));
    }
    net.run_until(Duration::from_secs(85));
    let mut delivered = 0;
    for &(a, b, id) in &sent {
        let got = net.node(b).expect("live").log.iter().any(
            |(_, e)| matches!(e, NodeEvent::Message { text, .. } if text.as_slice() == b"ping"),
        );
        let receipt =
            net.node(a).expect("live").log.iter().any(
                |(_, e)| matches!(e, NodeEvent::Receipt { message_id, .. } if *message_id == id),
            );
        assert!(
            got && receipt,
            "seed {seed}: message {id} from {a:?} to {b:?}"
        );
        delivered += 1;
    }
    (times, delivered)
}

#[test]
fn friends_come_online_and_chat_in_the_simulator() {
    let (times, delivered) = run(11, 40);
    eprintln!("online after (ms, both sides): {times:?}");
    assert_eq!(delivered, 4);
    for (a, b) in &times {
        // 10–150 ms links: well under c-toxcore's ~10 s on loopback.
        assert!(*a < 15_000 && *b < 15_000, "{times:?}");
    }
}

#[test]
fn same_seed_same_friends_run() {
    assert_eq!(run(5, 25), run(5, 25));
}
