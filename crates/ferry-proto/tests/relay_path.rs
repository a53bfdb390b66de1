//! Issue 5 point 3 in a deterministic in-memory world: two full [`Node`]s whose direct UDP is
//! blocked become friends and chat through one TCP relay ([`ferry_relay::RelayServer`]); then UDP
//! is unblocked and the relayed route must be dropped within 10 s of the direct path working
//! (seed 004).

#![allow(clippy::disallowed_methods)] // the test picks its base `Instant` once

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::KeyPair;
use ferry_crypto::rng::FerryRng;
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::{Connection, Node, NodeConfig, NodeEvent};
use ferry_proto::tcp_connection::TcpCommand;
use ferry_proto::{Destination, Endpoint};
use ferry_relay::{Output, RelayConfig, RelayServer};

const LATENCY: Duration = Duration::from_millis(5);

/// A datagram in flight: (deliver at, sequence, to node, from address, bytes).
type InFlight = Reverse<(Instant, u64, usize, SocketAddr, Vec<u8>)>;

struct World {
    now: Instant,
    nodes: Vec<Node>,
    addrs: Vec<SocketAddr>,
    relay: RelayServer,
    relay_addr: SocketAddr,
    /// (node, stream id) ↔ server conn id.
    streams: BTreeMap<(usize, u64), u64>,
    back: BTreeMap<u64, (usize, u64)>,
    next_conn: u64,
    /// (deliver at, seq) → (to, from, bytes).
    queue: BinaryHeap<InFlight>,
    seq: u64,
    /// UDP between these two nodes is dropped.
    blocked: Option<(usize, usize)>,
    udp_ab: u64,
    log: Vec<(Instant, usize, NodeEvent)>,
}

impl World {
    /// `n` nodes; node 0 also hosts the relay (its onion layer serves the relay's onion
    /// requests, as `ferry up --tcp-relay` does); nodes in `no_udp` send no UDP.
    fn new(n: usize, seed: u64, no_udp: &[usize]) -> Self {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(seed);
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        let mut relay_secret = None;
        for i in 0..n {
            let mut r = rng.fork();
            let real = KeyPair::generate(&mut r);
            let dht = KeyPair::generate(&mut r);
            if i == 0 {
                relay_secret = Some(dht.secret.clone());
            }
            let config = NodeConfig {
                dht: DhtConfig {
                    lan_discovery: false,
                    ..DhtConfig::default()
                },
                udp_enabled: !no_udp.contains(&i),
                ..NodeConfig::default()
            };
            nodes.push(Node::new(config, real, dht, 7, r.fork(), now));
            addrs.push(SocketAddr::from(([10, 0, 0, i as u8 + 1], 33445)));
        }
        let relay = RelayServer::new(
            RelayConfig {
                tap_bytes: 1 << 20,
                ..RelayConfig::default()
            },
            relay_secret.expect("node 0"),
            rng.fork(),
        );
        Self {
            now,
            nodes,
            addrs,
            relay,
            relay_addr: "10.0.0.1:3389".parse().expect("addr"),
            streams: BTreeMap::new(),
            back: BTreeMap::new(),
            next_conn: 1,
            queue: BinaryHeap::new(),
            seq: 0,
            blocked: None,
            udp_ab: 0,
            log: Vec::new(),
        }
    }

    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(ev) = self.nodes[i].poll_event() {
                    self.log.push((self.now, i, ev));
                }
                while let Some(t) = self.nodes[i].poll_transmit() {
                    moved = true;
                    let Destination::Addr(to) = t.destination else {
                        continue;
                    };
                    if i == 0
                        && let Some(conn) = relay_client_conn(to)
                    {
                        self.relay.send_onion_response(conn, t.payload);
                        continue;
                    }
                    let Some(j) = self.addrs.iter().position(|a| *a == to) else {
                        continue;
                    };
                    if let Some((a, b)) = self.blocked
                        && ((i, j) == (a, b) || (i, j) == (b, a))
                    {
                        continue;
                    }
                    if self.blocked.is_none() && (i, j) == (1, 2) {
                        self.udp_ab += 1;
                    }
                    self.seq += 1;
                    self.queue.push(Reverse((
                        self.now + LATENCY,
                        self.seq,
                        j,
                        self.addrs[i],
                        t.payload,
                    )));
                }
                while let Some(c) = self.nodes[i].poll_tcp_command() {
                    moved = true;
                    match c {
                        TcpCommand::Connect { id, addr } => {
                            if addr == self.relay_addr {
                                let conn = self.next_conn;
                                self.next_conn += 1;
                                self.streams.insert((i, id), conn);
                                self.back.insert(conn, (i, id));
                                self.relay.accept(self.now, conn);
                                self.nodes[i].handle_tcp_connected(self.now, id);
                            } else {
                                self.nodes[i].handle_tcp_closed(self.now, id);
                            }
                        }
                        TcpCommand::Send { id, bytes } => {
                            if let Some(&conn) = self.streams.get(&(i, id)) {
                                self.relay.handle_bytes(self.now, conn, &bytes);
                            }
                        }
                        TcpCommand::Close { id } => {
                            if let Some(conn) = self.streams.remove(&(i, id)) {
                                self.back.remove(&conn);
                                self.relay.closed(conn);
                            }
                        }
                    }
                }
            }
            while let Some(o) = self.relay.poll_output() {
                moved = true;
                match o {
                    Output::Send(conn, bytes) => {
                        if let Some(&(i, id)) = self.back.get(&conn) {
                            self.nodes[i].handle_tcp_bytes(self.now, id, &bytes);
                        }
                    }
                    Output::Close(conn) => {
                        if let Some((i, id)) = self.back.remove(&conn) {
                            self.streams.remove(&(i, id));
                            self.nodes[i].handle_tcp_closed(self.now, id);
                        }
                    }
                    Output::OnionRequest(conn, body) => {
                        let now = self.now;
                        self.nodes[0].handle_tcp_onion_request(now, relay_client_addr(conn), &body);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.flush();
            let mut next = end;
            for n in &self.nodes {
                next = next.min(n.poll_timeout());
            }
            if let Some(t) = self.relay.poll_timeout() {
                next = next.min(t);
            }
            if let Some(Reverse((t, ..))) = self.queue.peek() {
                next = next.min(*t);
            }
            self.now = next.max(self.now);
            while let Some(Reverse((t, ..))) = self.queue.peek()
                && *t <= self.now
            {
                let Some(Reverse((_, _, j, from, bytes))) = self.queue.pop() else {
                    break;
                };
                self.nodes[j].handle_datagram(self.now, from, &bytes);
            }
            for n in &mut self.nodes {
                if n.poll_timeout() <= self.now {
                    n.handle_timeout(self.now);
                }
            }
            if self.relay.poll_timeout().is_some_and(|t| t <= self.now) {
                self.relay.handle_timeout(self.now);
            }
            // Never stall on a timer in the past.
            if self.now == next && self.queue.is_empty() {
                self.now += Duration::from_millis(1);
            }
        }
        self.flush();
    }

    fn connection(&self, i: usize, friend: &ferry_crypto::PublicKey) -> Connection {
        self.nodes[i]
            .friends()
            .iter()
            .find(|f| f.public_key == *friend)
            .map_or(Connection::None, |f| f.connection)
    }
}

/// The synthetic address node 0's onion layer knows relay client `conn` by (as ferry-net's).
fn relay_client_addr(conn: u64) -> SocketAddr {
    SocketAddr::from((
        std::net::Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, conn as u16),
        1,
    ))
}

fn relay_client_conn(a: SocketAddr) -> Option<u64> {
    match a {
        SocketAddr::V6(v6) if v6.port() == 1 && v6.ip().segments()[0] == 0x100 => {
            Some(u64::from(v6.ip().segments()[7]))
        }
        _ => None,
    }
}

/// `--no-udp`: a node that sends no UDP at all announces and searches through the relay's
/// onion (onion over TCP) and reaches its UDP-enabled friend through the relay.
#[test]
fn a_node_without_udp_reaches_its_friend_through_a_relay() {
    let mut w = World::new(10, 5, &[1]);
    let boot = (w.addrs[0], w.nodes[0].dht().public_key());
    let now = w.now;
    for i in 2..w.nodes.len() {
        w.nodes[i].dht_mut().bootstrap(now, boot.0, boot.1);
    }
    // The UDP-less node knows bootstrap nodes only as onion path nodes.
    for j in [0, 3, 4, 5] {
        let (addr, pk) = (w.addrs[j], w.nodes[j].dht().public_key());
        w.nodes[1].add_onion_path_node(addr, pk);
    }
    let (a, b) = (1, 2);
    let relay_pk = w.relay.public_key();
    let relay_addr = w.relay_addr;
    w.nodes[a].add_tcp_relay(now, relay_addr, relay_pk);
    w.nodes[b].add_tcp_relay(now, relay_addr, relay_pk);
    w.run_for(Duration::from_secs(10));
    let pa = w.nodes[a].tox_id().public_key;
    let pb_id = w.nodes[b].tox_id();
    let pb = pb_id.public_key;
    let t0 = w.now;
    // A real friend request, sent over the onion through the relay.
    w.nodes[a]
        .add_friend(t0, &pb_id, b"hi through tcp")
        .expect("add");
    let mut accepted = false;
    let mut online = None;
    for _ in 0..1200 {
        w.run_for(Duration::from_millis(100));
        if !accepted
            && w.log.iter().any(|(_, i, e)| {
                *i == b
                    && matches!(e, NodeEvent::FriendRequest { public_key, .. } if *public_key == pa)
            })
        {
            let t = w.now;
            w.nodes[b].add_friend_norequest(t, pa).expect("accept");
            accepted = true;
        }
        if w.connection(a, &pb) == Connection::Tcp && w.connection(b, &pa) == Connection::Tcp {
            online = Some(w.now.duration_since(t0));
            break;
        }
    }
    assert!(
        accepted,
        "the friend request arrived over the onion through the relay"
    );
    let online = online.expect("online through the relay within 120 s");
    eprintln!("no-UDP node online via relay after {online:?}");
    let t = w.now;
    w.nodes[a]
        .send_message(t, &pb, false, "no udp here")
        .expect("send");
    w.run_for(Duration::from_secs(2));
    assert!(w.log.iter().any(|(_, i, e)| *i == b
        && matches!(e, NodeEvent::Message { text, .. } if text == b"no udp here")));
    assert!(w.relay.stats().onion_requests > 0);
}

#[test]
fn friends_chat_through_a_relay_then_switch_to_direct_udp() {
    let mut w = World::new(10, 4, &[]);
    let boot = (w.addrs[0], w.nodes[0].dht().public_key());
    let now = w.now;
    for i in 1..w.nodes.len() {
        w.nodes[i].dht_mut().bootstrap(now, boot.0, boot.1);
    }
    let (a, b) = (1, 2);
    let relay_pk = w.relay.public_key();
    let relay_addr = w.relay_addr;
    w.nodes[a].add_tcp_relay(now, relay_addr, relay_pk);
    w.nodes[b].add_tcp_relay(now, relay_addr, relay_pk);
    w.blocked = Some((a, b));
    w.run_for(Duration::from_secs(15));
    let pa = w.nodes[a].tox_id().public_key;
    let pb = w.nodes[b].tox_id().public_key;
    let t0 = w.now;
    w.nodes[a].add_friend_norequest(t0, pb).expect("add");
    w.nodes[b].add_friend_norequest(t0, pa).expect("add");
    // Online through the relay.
    let mut online = None;
    for _ in 0..600 {
        w.run_for(Duration::from_millis(100));
        if w.connection(a, &pb) == Connection::Tcp && w.connection(b, &pa) == Connection::Tcp {
            online = Some(w.now.duration_since(t0));
            break;
        }
    }
    let online = online.expect("friends came online through the relay within 60 s");
    eprintln!("online via relay after {online:?}");
    w.run_for(Duration::from_millis(500));
    assert_eq!(w.relay.stats().links, 1, "the relay links the two");
    let info = w.nodes[a]
        .friends()
        .into_iter()
        .find(|f| f.public_key == pb)
        .expect("friend");
    assert_eq!(
        info.relay,
        Some((relay_pk, relay_addr)),
        "the relay is reported"
    );
    // Chat.
    let secret = "relayed secret text 1234567890";
    let t = w.now;
    w.nodes[a]
        .send_message(t, &pb, false, secret)
        .expect("send");
    w.run_for(Duration::from_secs(2));
    assert!(
        w.log.iter().any(|(_, i, e)| *i == b
            && matches!(e, NodeEvent::Message { text, .. } if text == secret.as_bytes())),
        "b got the message through the relay"
    );
    let tap = w.relay.take_tap();
    assert!(!tap.is_empty(), "traffic went through the relay");
    assert!(
        !tap.windows(secret.len()).any(|x| x == secret.as_bytes()),
        "the relay never sees plaintext"
    );
    // Unblock UDP: direct must take over and the relayed route go within 10 s of it working.
    w.blocked = None;
    let unblocked = w.now;
    let mut direct_at = None;
    let mut dropped_at = None;
    for _ in 0..400 {
        w.run_for(Duration::from_millis(100));
        let both_udp =
            w.connection(a, &pb) == Connection::Udp && w.connection(b, &pa) == Connection::Udp;
        if both_udp && direct_at.is_none() {
            direct_at = Some(w.now);
        }
        if direct_at.is_some() && w.relay.stats().links == 0 {
            dropped_at = Some(w.now);
            break;
        }
    }
    let direct_at = direct_at.expect("direct UDP took over within 40 s of unblocking");
    let dropped_at = dropped_at.expect("relayed route dropped");
    eprintln!(
        "direct after {:?}, relay route dropped {:?} later",
        direct_at.duration_since(unblocked),
        dropped_at.duration_since(direct_at)
    );
    assert!(dropped_at.duration_since(direct_at) <= Duration::from_secs(10));
    assert!(
        w.log.iter().any(|(_, i, e)| *i == a
            && matches!(e, NodeEvent::FriendPath { public_key, connection: Connection::Udp, .. } if *public_key == pb)),
        "the switch to UDP is reported"
    );
    // Still chatting, now directly.
    let t = w.now;
    w.nodes[b]
        .send_message(t, &pa, false, "direct")
        .expect("send");
    w.run_for(Duration::from_secs(1));
    assert!(
        w.log.iter().any(|(_, i, e)| *i == a
            && matches!(e, NodeEvent::Message { text, .. } if text == b"direct"))
    );
}

/// net_crypto alone over [`Path::Relay`]: two managers that know no UDP address of each other
/// (relay fallback on) do cookie → handshake → data over the relay path only, in both
/// directions; then one learns the other's UDP address, hears from it, and its packets move to
/// UDP (c-toxcore `send_packet_to`).
#[test]
fn net_crypto_session_over_the_relay_path() {
    use ferry_proto::net_crypto::{NetCrypto, NetCryptoConfig, NetCryptoEvent, Path};
    let mut now = Instant::now();
    let mut rng = FerryRng::from_u64(11);
    let mk = |rng: &mut FerryRng| {
        let real = KeyPair::generate(rng);
        let dht = KeyPair::generate(rng);
        let mut nc = NetCrypto::new(
            NetCryptoConfig::default(),
            real.clone(),
            dht.clone(),
            rng.fork(),
            now,
        );
        nc.set_relay_fallback(true);
        (nc, real.public, dht.public)
    };
    let (mut a, ra, da) = mk(&mut rng);
    let (mut b, rb, db) = mk(&mut rng);
    let ua: SocketAddr = "10.0.0.1:33445".parse().expect("addr");
    let ub: SocketAddr = "10.0.0.2:33445".parse().expect("addr");
    a.add_peer(now, rb);
    b.add_peer(now, ra);
    a.set_peer_dht_key(now, &rb, db);
    b.set_peer_dht_key(now, &ra, da);
    let mut udp_sent = 0;
    let mut relay_sent = 0;
    let mut udp_ok = false;
    let mut events: Vec<(usize, NetCryptoEvent)> = Vec::new();
    let step = |a: &mut NetCrypto,
                b: &mut NetCrypto,
                now: Instant,
                udp_ok: bool,
                udp_sent: &mut u32,
                relay_sent: &mut u32,
                events: &mut Vec<(usize, NetCryptoEvent)>| {
        for _ in 0..20 {
            let mut moved = false;
            while let Some((p, bytes)) = a.poll_path_transmit() {
                moved = true;
                match p {
                    Path::Relay(to) => {
                        assert_eq!(to, db);
                        *relay_sent += 1;
                        b.handle_path_packet(now, Path::Relay(da), &bytes);
                    }
                    Path::Udp(to) => {
                        assert_eq!(to, ub);
                        *udp_sent += 1;
                        if udp_ok {
                            b.handle_packet(now, ua, &bytes);
                        }
                    }
                    _ => {}
                }
            }
            while let Some((p, bytes)) = b.poll_path_transmit() {
                moved = true;
                match p {
                    Path::Relay(_) => a.handle_path_packet(now, Path::Relay(db), &bytes),
                    Path::Udp(_) if udp_ok => a.handle_packet(now, ub, &bytes),
                    _ => {}
                }
            }
            while let Some(e) = a.poll_event() {
                events.push((0, e));
            }
            while let Some(e) = b.poll_event() {
                events.push((1, e));
            }
            if !moved {
                break;
            }
        }
    };
    for _ in 0..50 {
        a.handle_timeout(now);
        b.handle_timeout(now);
        step(
            &mut a,
            &mut b,
            now,
            udp_ok,
            &mut udp_sent,
            &mut relay_sent,
            &mut events,
        );
        now += Duration::from_millis(100);
    }
    let st = a.session_state(&rb).expect("session");
    assert!(st.established && st.relayed && !st.direct, "{st:?}");
    a.send_lossless(now, &rb, &[0x40, b'h', b'i'])
        .expect("send");
    b.send_lossless(now, &ra, &[0x40, b'y', b'o'])
        .expect("send");
    step(
        &mut a,
        &mut b,
        now,
        udp_ok,
        &mut udp_sent,
        &mut relay_sent,
        &mut events,
    );
    assert!(events.iter().any(|(i, e)| *i == 1
        && matches!(e, NetCryptoEvent::Lossless { data, .. } if data == &[0x40, b'h', b'i'])));
    assert!(events.iter().any(|(i, e)| *i == 0
        && matches!(e, NetCryptoEvent::Lossless { data, .. } if data == &[0x40, b'y', b'o'])));
    assert_eq!(udp_sent, 0, "no UDP address known, nothing went by UDP");
    assert!(relay_sent > 0);
    // UDP opens: A learns B's address (as a probe), B learns A's; probes get through.
    udp_ok = true;
    a.add_peer_addr_candidate(now, &rb, ub);
    b.add_peer_addr_candidate(now, &ra, ua);
    for _ in 0..100 {
        a.handle_timeout(now);
        b.handle_timeout(now);
        step(
            &mut a,
            &mut b,
            now,
            udp_ok,
            &mut udp_sent,
            &mut relay_sent,
            &mut events,
        );
        now += Duration::from_millis(100);
    }
    let st = a.session_state(&rb).expect("session");
    assert!(st.direct && !st.relayed, "direct after probes: {st:?}");
    let before = relay_sent;
    a.send_lossless(now, &rb, &[0x40, b'u']).expect("send");
    step(
        &mut a,
        &mut b,
        now,
        udp_ok,
        &mut udp_sent,
        &mut relay_sent,
        &mut events,
    );
    assert_eq!(relay_sent, before, "direct: nothing more over the relay");
}

/// A node hosting a relay announces it to friends as c-toxcore does (`127.0.0.1:PORT` with its
/// DHT key, in share-relays packets and DHT-PK announcements); the friend puts the host's IP in
/// place of the loopback address (`friend_connection.c` `friend_add_tcp_relay`).
#[test]
fn a_hosted_relay_is_shared_with_the_hosts_ip() {
    let mut w = World::new(10, 6, &[]);
    let boot = (w.addrs[0], w.nodes[0].dht().public_key());
    let now = w.now;
    for i in 1..w.nodes.len() {
        w.nodes[i].dht_mut().bootstrap(now, boot.0, boot.1);
    }
    // Node 0 hosts the relay (on port 3389 of its address 10.0.0.1); node 2 is its friend.
    w.nodes[0].set_hosted_relay(Some(w.relay_addr.port()));
    w.run_for(Duration::from_secs(10));
    let (a, b) = (0, 2);
    let pa = w.nodes[a].tox_id().public_key;
    let pb = w.nodes[b].tox_id().public_key;
    let t0 = w.now;
    w.nodes[a].add_friend_norequest(t0, pb).expect("add");
    w.nodes[b].add_friend_norequest(t0, pa).expect("add");
    let relay_pk = w.relay.public_key();
    let mut learnt = None;
    for _ in 0..600 {
        w.run_for(Duration::from_millis(100));
        learnt = w.nodes[b]
            .tcp_relays()
            .into_iter()
            .find(|r| r.public_key == relay_pk);
        if learnt.is_some() {
            break;
        }
    }
    let r = learnt.expect("the friend learnt the hosted relay within 60 s");
    assert_eq!(r.addr, w.relay_addr, "at the host's IP, not 127.0.0.1");
    assert!(!r.base, "a friend's relay, not one of ours");
}
