//! net_crypto tests: two or three [`NetCrypto`] instances exchanging datagrams in memory with a
//! virtual clock, a seeded lossy/reordering link, and malformed input.

use std::net::{IpAddr, Ipv4Addr};

use ferry_wire::net_crypto::{COOKIE_REQUEST_SIZE, COOKIE_RESPONSE_SIZE, HANDSHAKE_SIZE};
use proptest::prelude::*;

use super::*;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8 + 1)), 33445)
}

struct Node {
    nc: NetCrypto,
    real: PublicKey,
    dht: PublicKey,
    events: Vec<NetCryptoEvent>,
}

/// In-flight datagram: deliver at, to, from, bytes.
type Flight = (Instant, usize, SocketAddr, Vec<u8>);

struct Net {
    now: Instant,
    /// The virtual clock's origin.
    start: Instant,
    nodes: Vec<Node>,
    in_flight: Vec<Flight>,
    rng: FerryRng,
    /// Percent of datagrams dropped.
    loss: usize,
    delay: Duration,
    /// Extra random delay up to this (reordering).
    jitter: Duration,
    /// Every datagram sent: (from, to, bytes).
    log: Vec<(usize, usize, Vec<u8>)>,
    /// Links cut: datagrams between these nodes are dropped.
    cut: bool,
    /// Bottleneck per direction: packets/s and drop-tail queue length (packets); `None` = none.
    bottleneck: Option<(f64, usize)>,
    /// When each directed link (from, to) finishes sending its queue.
    link_free: std::collections::HashMap<(usize, usize), Instant>,
    /// A receiver that reads its socket only every `period` (as a c-toxcore client does, once
    /// per `tox_iterate`), holding at most `cap` datagrams between reads (its receive buffer):
    /// (node, period, cap).
    batched_rx: Option<(usize, Duration, usize)>,
    /// Datagrams queued per batch slot of the batched receiver.
    batch_fill: std::collections::HashMap<u64, usize>,
}

impl Net {
    #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
    fn new(n: usize, seed: u64) -> Self {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(seed);
        let nodes = (0..n)
            .map(|_| Self::make_node(&mut rng, now, None))
            .collect();
        Self {
            now,
            start: now,
            nodes,
            in_flight: Vec::new(),
            rng,
            loss: 0,
            delay: Duration::from_millis(1),
            jitter: Duration::ZERO,
            log: Vec::new(),
            cut: false,
            bottleneck: None,
            link_free: std::collections::HashMap::new(),
            batched_rx: None,
            batch_fill: std::collections::HashMap::new(),
        }
    }

    fn make_node(rng: &mut FerryRng, now: Instant, real: Option<KeyPair>) -> Node {
        let mut r = rng.fork();
        let real = real.unwrap_or_else(|| KeyPair::generate(&mut r));
        let dht = KeyPair::generate(&mut r);
        let (rp, dp) = (real.public, dht.public);
        Node {
            nc: NetCrypto::new(NetCryptoConfig::default(), real, dht, r, now),
            real: rp,
            dht: dp,
            events: Vec::new(),
        }
    }

    /// Makes `a` and `b` friends; `a` learns `b`'s DHT key and address (so `a` initiates).
    fn befriend(&mut self, a: usize, b: usize) {
        let (ra, rb, db) = (self.nodes[a].real, self.nodes[b].real, self.nodes[b].dht);
        let now = self.now;
        self.nodes[b].nc.add_peer(now, ra);
        self.nodes[a].nc.add_peer(now, rb);
        self.nodes[a].nc.set_peer_dht_key(now, &rb, db);
        self.nodes[a].nc.set_peer_addr(now, &rb, addr(b));
        self.collect();
    }

    fn index_of(a: SocketAddr) -> Option<usize> {
        match a {
            SocketAddr::V4(v4) => Some(usize::from(v4.ip().octets()[3]) - 1),
            SocketAddr::V6(_) => None,
        }
    }

    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].nc.poll_transmit() {
                let Destination::Addr(to) = t.destination else {
                    panic!("net_crypto only sends to addresses");
                };
                let Some(j) = Self::index_of(to).filter(|&j| j < self.nodes.len()) else {
                    continue;
                };
                self.log.push((i, j, t.payload.clone()));
                if self.cut || self.rng.below(100) < self.loss {
                    continue;
                }
                let jitter = if self.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(self.rng.below(self.jitter.as_micros() as usize) as u64)
                };
                let mut depart = self.now;
                if let Some((pps, limit)) = self.bottleneck {
                    let per = Duration::from_secs_f64(1.0 / pps);
                    let free = self.link_free.entry((i, j)).or_insert(self.now);
                    let start = (*free).max(self.now);
                    if start.saturating_duration_since(self.now) > per * limit as u32 {
                        continue; // queue full: tail drop
                    }
                    *free = start + per;
                    depart = start + per;
                }
                let mut arrive = depart + self.delay + jitter;
                if let Some((node, period, cap)) = self.batched_rx
                    && node == j
                {
                    let since = arrive.saturating_duration_since(self.start);
                    let slot = since.as_nanos().div_ceil(period.as_nanos()) as u64;
                    let fill = self.batch_fill.entry(slot).or_insert(0);
                    if *fill >= cap {
                        continue; // receive buffer full: dropped by the kernel
                    }
                    *fill += 1;
                    arrive = self.start + period * slot as u32;
                }
                self.in_flight.push((arrive, j, addr(i), t.payload));
            }
            while let Some(e) = self.nodes[i].nc.poll_event() {
                self.nodes[i].events.push(e);
            }
        }
    }

    /// Advances to the next delivery or timer and processes it.
    fn step(&mut self) {
        let next_flight = self.in_flight.iter().map(|f| f.0).min();
        let next_timer = self.nodes.iter().map(|n| n.nc.poll_timeout()).min();
        let next = match (next_flight, next_timer) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("something is scheduled"),
        };
        assert!(next >= self.now, "poll_timeout went into the past");
        self.now = next;
        let now = self.now;
        let mut due: Vec<Flight> = Vec::new();
        let mut rest = Vec::new();
        for f in self.in_flight.drain(..) {
            if f.0 <= now {
                due.push(f)
            } else {
                rest.push(f)
            }
        }
        self.in_flight = rest;
        due.sort_by_key(|f| f.0);
        for (_, to, from, bytes) in due {
            self.nodes[to].nc.handle_packet(now, from, &bytes);
            self.collect();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].nc.poll_timeout() <= now {
                self.nodes[i].nc.handle_timeout(now);
                assert!(
                    self.nodes[i].nc.poll_timeout() > now,
                    "poll_timeout not in the future after handle_timeout"
                );
            }
        }
        self.collect();
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn established(&self, a: usize, b: usize) -> bool {
        let rb = self.nodes[b].real;
        self.nodes[a]
            .nc
            .session_state(&rb)
            .is_some_and(|s| s.established)
    }

    fn take_events(&mut self, i: usize) -> Vec<NetCryptoEvent> {
        std::mem::take(&mut self.nodes[i].events)
    }

    fn lossless_from(&self, i: usize, peer: PublicKey) -> Vec<Vec<u8>> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                NetCryptoEvent::Lossless { peer: p, data } if *p == peer => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

fn connect(seed: u64) -> Net {
    let mut net = Net::new(2, seed);
    net.befriend(0, 1);
    assert!(
        net.run_until(Duration::from_secs(5), |n| n.established(0, 1)
            && n.established(1, 0))
    );
    net
}

#[test]
fn establishes_with_spec_sizes() {
    let mut net = Net::new(2, 1);
    net.befriend(0, 1);
    assert!(
        net.run_until(Duration::from_secs(1), |n| n.established(0, 1)
            && n.established(1, 0))
    );
    // Four 1-ms hops and a data packet: well under 10 ms of virtual time.
    let first: Vec<(usize, usize, usize)> = net
        .log
        .iter()
        .take(4)
        .map(|(f, t, b)| (*f, *t, b.len()))
        .collect();
    assert_eq!(
        first,
        vec![
            (0, 1, COOKIE_REQUEST_SIZE),
            (1, 0, COOKIE_RESPONSE_SIZE),
            (0, 1, HANDSHAKE_SIZE),
            (1, 0, HANDSHAKE_SIZE),
        ]
    );
    assert_eq!(COOKIE_REQUEST_SIZE, 145);
    assert_eq!(COOKIE_RESPONSE_SIZE, 161);
    assert_eq!(HANDSHAKE_SIZE, 385);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    let e0 = net.take_events(0);
    assert!(e0.contains(&NetCryptoEvent::Established {
        peer: r1,
        addr: addr(1)
    }));
    let e1 = net.take_events(1);
    assert!(e1.contains(&NetCryptoEvent::Established {
        peer: r0,
        addr: addr(0)
    }));
    // A one-byte "alive" lossless packet is 32 bytes on the wire.
    let n = net.log.len();
    let now = net.now;
    net.nodes[0]
        .nc
        .send_lossless(now, &r1, &[16])
        .expect("send");
    net.collect();
    assert_eq!(net.log[n].2.len(), 32);
    let st = net.nodes[0].nc.session_state(&r1).expect("state");
    assert_eq!(st.addr, Some(addr(1)));
    assert!(st.direct);
    assert_eq!(st.status, SessionStatus::Established);
}

#[test]
fn both_sides_initiating_get_one_session() {
    let mut net = Net::new(2, 2);
    let (r0, r1, d0, d1) = (
        net.nodes[0].real,
        net.nodes[1].real,
        net.nodes[0].dht,
        net.nodes[1].dht,
    );
    let now = net.now;
    net.nodes[0].nc.add_peer(now, r1);
    net.nodes[1].nc.add_peer(now, r0);
    net.nodes[0].nc.set_peer_dht_key(now, &r1, d1);
    net.nodes[1].nc.set_peer_dht_key(now, &r0, d0);
    net.nodes[0].nc.set_peer_addr(now, &r1, addr(1));
    net.nodes[1].nc.set_peer_addr(now, &r0, addr(0));
    net.collect();
    assert!(
        net.run_until(Duration::from_secs(3), |n| n.established(0, 1)
            && n.established(1, 0))
    );
    net.run_for(Duration::from_secs(3));
    let now = net.now;
    net.nodes[0]
        .nc
        .send_lossless(now, &r1, &[160, 1])
        .expect("send");
    net.nodes[1]
        .nc
        .send_lossless(now, &r0, &[160, 2])
        .expect("send");
    net.run_for(Duration::from_millis(20));
    assert_eq!(net.lossless_from(1, r0), vec![vec![160, 1]]);
    assert_eq!(net.lossless_from(0, r1), vec![vec![160, 2]]);
    for i in 0..2 {
        assert!(
            !net.nodes[i]
                .events
                .iter()
                .any(|e| matches!(e, NetCryptoEvent::Closed { .. }))
        );
    }
}

#[test]
fn lossless_in_order_under_loss_and_reordering() {
    let mut net = connect(3);
    net.loss = 20;
    net.jitter = Duration::from_millis(5);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    let total = 2000u32;
    let mut sent = 0u32;
    let mut numbers = Vec::new();
    let end = net.now + Duration::from_secs(120);
    while net.now < end && net.lossless_from(1, r0).len() < total as usize {
        while sent < total {
            let now = net.now;
            let mut data = vec![170];
            data.extend_from_slice(&sent.to_be_bytes());
            data.resize(1 + 4 + (sent as usize % 700), 0xab);
            match net.nodes[0].nc.send_lossless(now, &r1, &data) {
                Ok(num) => {
                    numbers.push(num);
                    sent += 1;
                }
                Err(NetCryptoError::QueueFull) => break,
                Err(e) => panic!("{e}"),
            }
        }
        net.collect();
        net.step();
    }
    let got = net.lossless_from(1, r0);
    assert_eq!(got.len(), total as usize, "all delivered");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(&d[1..5], &(i as u32).to_be_bytes(), "in order, once");
        assert_eq!(d.len(), 1 + 4 + (i % 700));
    }
    // Numbers are consecutive and every one is reported delivered.
    for w in numbers.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1));
    }
    net.loss = 0;
    net.run_for(Duration::from_secs(3));
    let delivered: Vec<u32> = net.nodes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            NetCryptoEvent::Delivered { packet_number, .. } => Some(*packet_number),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, numbers);
    assert!(net.nodes[0].nc.stats().retransmissions > 0);
    assert!(net.established(0, 1) && net.established(1, 0));
    assert_eq!(
        net.nodes[0]
            .nc
            .session_state(&r1)
            .expect("state")
            .send_queue,
        0
    );
}

#[test]
fn lossy_packets_and_nonce_wraparound() {
    let mut net = connect(4);
    net.delay = Duration::ZERO;
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    // More than 2^16 packets: the 16-bit nonce suffix wraps and the 43690/21845 rule keeps up.
    let n = 70_000u32;
    let mut count = 0u32;
    for i in 0..n {
        let now = net.now;
        let mut data = vec![200];
        data.extend_from_slice(&i.to_be_bytes());
        net.nodes[0].nc.send_lossy(now, &r1, &data).expect("send");
        while let Some(t) = net.nodes[0].nc.poll_transmit() {
            net.nodes[1].nc.handle_packet(now, addr(0), &t.payload);
        }
        while net.nodes[1].nc.poll_transmit().is_some() {}
        while let Some(e) = net.nodes[1].nc.poll_event() {
            if let NetCryptoEvent::Lossy { peer, data } = e {
                assert_eq!(peer, r0);
                assert_eq!(&data[1..], &count.to_be_bytes());
                count += 1;
            }
        }
    }
    assert_eq!(count, n);
    assert_eq!(net.nodes[1].nc.stats().decrypt_failed, 0);
    // Bad ids are refused.
    let now = net.now;
    assert_eq!(
        net.nodes[0].nc.send_lossy(now, &r1, &[170]),
        Err(NetCryptoError::BadId(170))
    );
    assert_eq!(
        net.nodes[0].nc.send_lossless(now, &r1, &[200]),
        Err(NetCryptoError::BadId(200))
    );
    assert_eq!(
        net.nodes[0].nc.send_lossless(now, &r1, &[]),
        Err(NetCryptoError::BadLength(0))
    );
    assert_eq!(
        net.nodes[0].nc.send_lossless(now, &r1, &[170; 1374]),
        Err(NetCryptoError::BadLength(1374))
    );
    let stranger = PublicKey([9; 32]);
    assert_eq!(
        net.nodes[0].nc.send_lossless(now, &stranger, &[170]),
        Err(NetCryptoError::NotEstablished)
    );
}

#[test]
fn round_trip_needs_no_timer_and_is_fast() {
    let mut net = connect(5);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    let mut now = net.now;
    let rounds = 200;
    #[allow(clippy::disallowed_methods)] // measuring CPU time of the in-memory round trip
    let t0 = Instant::now();
    for i in 0..rounds {
        now += Duration::from_millis(10);
        net.nodes[0]
            .nc
            .send_lossless(now, &r1, &[64, i as u8])
            .expect("send");
        // Deliver A → B, B replies from its event handler, deliver B → A; no handle_timeout.
        let mut got_reply = false;
        for _ in 0..4 {
            while let Some(t) = net.nodes[0].nc.poll_transmit() {
                net.nodes[1].nc.handle_packet(now, addr(0), &t.payload);
            }
            while let Some(e) = net.nodes[1].nc.poll_event() {
                if let NetCryptoEvent::Lossless { data, .. } = e {
                    net.nodes[1]
                        .nc
                        .send_lossless(now, &r0, &data)
                        .expect("reply");
                }
            }
            while let Some(t) = net.nodes[1].nc.poll_transmit() {
                net.nodes[0].nc.handle_packet(now, addr(1), &t.payload);
            }
            while let Some(e) = net.nodes[0].nc.poll_event() {
                if matches!(e, NetCryptoEvent::Lossless { ref data, .. } if data[1] == i as u8) {
                    got_reply = true;
                }
            }
            if got_reply {
                break;
            }
        }
        assert!(got_reply, "round {i} completed without timers");
    }
    let per_round = t0.elapsed() / rounds;
    assert!(
        per_round < Duration::from_millis(2),
        "round trip took {per_round:?} of CPU"
    );
}

#[test]
fn delivered_events_follow_acks() {
    let mut net = connect(6);
    let r1 = net.nodes[1].real;
    net.take_events(0);
    let now = net.now;
    let a = net.nodes[0]
        .nc
        .send_lossless(now, &r1, &[64, 1])
        .expect("send");
    let b = net.nodes[0]
        .nc
        .send_lossless(now, &r1, &[64, 2])
        .expect("send");
    assert_eq!(b, a.wrapping_add(1));
    net.collect();
    net.run_for(Duration::from_millis(10));
    let delivered: Vec<u32> = net
        .take_events(0)
        .into_iter()
        .filter_map(|e| match e {
            NetCryptoEvent::Delivered { packet_number, .. } => Some(packet_number),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![a, b]);
}

#[test]
fn dead_path_times_out_and_kill_closes() {
    let mut net = connect(7);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    net.cut = true;
    net.take_events(0);
    net.take_events(1);
    let start = net.now;
    assert!(net.run_until(Duration::from_secs(40), |n| !n.established(0, 1)));
    let waited = net.now - start;
    assert!(
        waited >= SESSION_TIMEOUT && waited < SESSION_TIMEOUT + Duration::from_secs(2),
        "{waited:?}"
    );
    assert!(net.nodes[0].events.contains(&NetCryptoEvent::Closed {
        peer: r1,
        reason: CloseReason::Timeout
    }));
    // Path back: a new session comes up by itself (node 0 keeps the DHT key and retries).
    net.cut = false;
    assert!(
        net.run_until(Duration::from_secs(40), |n| n.established(0, 1)
            && n.established(1, 0))
    );
    net.take_events(1);
    // Removing a peer sends a kill: the other side closes at once.
    let now = net.now;
    net.nodes[0].nc.remove_peer(now, &r1);
    net.collect();
    assert!(net.nodes[0].events.contains(&NetCryptoEvent::Closed {
        peer: r1,
        reason: CloseReason::Removed
    }));
    net.run_for(Duration::from_millis(5));
    assert!(net.nodes[1].events.contains(&NetCryptoEvent::Closed {
        peer: r0,
        reason: CloseReason::KillReceived
    }));
    assert!(!net.established(1, 0));
    assert!(net.nodes[0].nc.session_state(&r1).is_none());
}

/// A stopping node kills its sessions: the peer closes at once (not after the 32 s timeout),
/// the stopping side keeps the peer, and a session comes back if it goes on.
#[test]
fn close_all_kills_sessions_and_keeps_peers() {
    let mut net = connect(8);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    net.take_events(0);
    net.take_events(1);
    let now = net.now;
    net.nodes[0].nc.close_all(now);
    net.collect();
    assert!(net.nodes[0].events.contains(&NetCryptoEvent::Closed {
        peer: r1,
        reason: CloseReason::Shutdown
    }));
    net.run_for(Duration::from_millis(5));
    assert!(net.nodes[1].events.contains(&NetCryptoEvent::Closed {
        peer: r0,
        reason: CloseReason::KillReceived
    }));
    assert!(
        net.run_until(Duration::from_secs(40), |n| n.established(0, 1)
            && n.established(1, 0))
    );
}

#[test]
fn handshake_with_new_dht_key_replaces_session() {
    let mut net = connect(8);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    net.take_events(0);
    // Node 1 restarts: same long-term key, new DHT key, no state. It initiates this time.
    let now = net.now;
    let mut rng = FerryRng::from_u64(99);
    let real1 = {
        // Rebuild node 1's key pair from the same seed path: reuse the old NetCrypto's key.
        let old = &net.nodes[1].nc;
        old.real.clone()
    };
    net.nodes[1] = Net::make_node(&mut rng, now, Some(real1));
    assert_eq!(net.nodes[1].real, r1);
    let (d0, new_dht) = (net.nodes[0].dht, net.nodes[1].dht);
    net.nodes[1].nc.add_peer(now, r0);
    net.nodes[1].nc.set_peer_dht_key(now, &r0, d0);
    net.nodes[1].nc.set_peer_addr(now, &r0, addr(0));
    net.collect();
    assert!(net.run_until(Duration::from_secs(3), |n| {
        n.nodes[0].events.contains(&NetCryptoEvent::Closed {
            peer: r1,
            reason: CloseReason::Replaced,
        })
    }));
    assert!(
        net.run_until(Duration::from_secs(3), |n| n.established(0, 1)
            && n.established(1, 0))
    );
    let st = net.nodes[0].nc.session_state(&r1).expect("state");
    assert_eq!(st.dht_pk, new_dht);
    net.run_for(Duration::from_millis(100));
    let now = net.now;
    net.nodes[1]
        .nc
        .send_lossless(now, &r0, &[160, 7])
        .expect("send");
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.lossless_from(0, r1), vec![vec![160, 7]]);

    // And the other way: the layers above report a new DHT key for an established peer.
    net.take_events(0);
    let now = net.now;
    let fake = PublicKey([7; 32]);
    net.nodes[0].nc.set_peer_dht_key(now, &r1, fake);
    net.collect();
    assert!(net.nodes[0].events.contains(&NetCryptoEvent::Closed {
        peer: r1,
        reason: CloseReason::Replaced
    }));
    let st = net.nodes[0].nc.session_state(&r1).expect("new attempt");
    assert_eq!(st.status, SessionStatus::CookieRequesting);
    assert_eq!(st.dht_pk, fake);
}

#[test]
fn three_nodes_and_unknown_peer() {
    let mut net = Net::new(3, 9);
    net.befriend(0, 1);
    net.befriend(0, 2);
    assert!(net.run_until(Duration::from_secs(3), |n| {
        n.established(0, 1) && n.established(1, 0) && n.established(0, 2) && n.established(2, 0)
    }));
    let (r0, r1, r2) = (net.nodes[0].real, net.nodes[1].real, net.nodes[2].real);
    let now = net.now;
    net.nodes[0]
        .nc
        .send_lossless(now, &r1, &[160, 1])
        .expect("send");
    net.nodes[0]
        .nc
        .send_lossless(now, &r2, &[160, 2])
        .expect("send");
    net.nodes[2]
        .nc
        .send_lossy(now, &r0, &[210, 3])
        .expect("send");
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.lossless_from(1, r0), vec![vec![160, 1]]);
    assert_eq!(net.lossless_from(2, r0), vec![vec![160, 2]]);
    assert!(net.nodes[0].events.contains(&NetCryptoEvent::Lossy {
        peer: r2,
        data: vec![210, 3]
    }));
    // Node 2 tries node 1, which does not know it: a cookie, then an UnknownPeer report.
    let (d1,) = (net.nodes[1].dht,);
    let now = net.now;
    net.nodes[2].nc.add_peer(now, r1);
    net.nodes[2].nc.set_peer_dht_key(now, &r1, d1);
    net.nodes[2].nc.set_peer_addr(now, &r1, addr(1));
    net.collect();
    net.run_for(Duration::from_millis(10));
    assert!(net.nodes[1].events.iter().any(|e| matches!(
        e,
        NetCryptoEvent::UnknownPeer { real_pk, addr: a, .. } if *real_pk == r2 && *a == addr(2)
    )));
    assert!(!net.established(2, 1));
    assert!(net.nodes[1].nc.session_state(&r2).is_none());
    // The attempt keeps retrying at 1 s, each cookie request answered, nothing established.
    net.run_for(Duration::from_secs(20));
    assert!(!net.established(2, 1));
    assert!(net.nodes[1].nc.stats().unknown_peer >= 10);
}

#[test]
fn stale_cookie_is_refused() {
    let mut net = Net::new(2, 10);
    net.cut = true; // deliver by hand
    net.befriend(0, 1);
    let now = net.now;
    let req = net.log.last().expect("cookie request").2.clone();
    assert_eq!(req.len(), COOKIE_REQUEST_SIZE);
    net.nodes[1].nc.handle_packet(now, addr(0), &req);
    net.collect();
    let resp = net.log.last().expect("cookie response").2.clone();
    assert_eq!(resp.len(), COOKIE_RESPONSE_SIZE);
    net.nodes[0].nc.handle_packet(now, addr(1), &resp);
    net.collect();
    let hs = net.log.last().expect("handshake").2.clone();
    assert_eq!(hs.len(), HANDSHAKE_SIZE);
    // 16 s later the cookie inside is stale.
    net.nodes[1]
        .nc
        .handle_packet(now + Duration::from_secs(16), addr(0), &hs);
    assert_eq!(net.nodes[1].nc.stats().stale_cookies, 1);
    assert!(net.nodes[1].nc.session_state(&net.nodes[0].real).is_none());
    // Within 15 s it is accepted.
    net.nodes[1]
        .nc
        .handle_packet(now + Duration::from_secs(14), addr(0), &hs);
    let st = net.nodes[1]
        .nc
        .session_state(&net.nodes[0].real)
        .expect("accepted");
    assert_eq!(st.status, SessionStatus::NotConfirmed);
}

#[test]
fn malformed_input_is_counted() {
    let mut net = connect(11);
    let now = net.now;
    let before = net.nodes[1].nc.stats();
    let nc = &mut net.nodes[1].nc;
    nc.handle_packet(now, addr(0), &[0x1a; 100]);
    nc.handle_packet(now, addr(0), &[0x18; 145]);
    nc.handle_packet(now, addr(0), &[0x1b; 40]);
    nc.handle_packet(now, addr(0), &[0x1b; 10]);
    nc.handle_packet(now, addr(0), &[]);
    let after = nc.stats();
    assert_eq!(after.malformed - before.malformed, 3);
    assert_eq!(after.decrypt_failed - before.decrypt_failed, 2);
    assert!(net.established(1, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random datagrams (with a valid kind byte half the time) into an established node never
    /// panic and never break the session.
    #[test]
    fn random_bytes_never_panic(packets in proptest::collection::vec((0u8..8, proptest::collection::vec(any::<u8>(), 0..1500)), 1..20)) {
        let mut net = connect(12);
        let now = net.now;
        for (k, mut bytes) in packets {
            if k < 4 && !bytes.is_empty() {
                bytes[0] = 0x18 + k;
            }
            net.nodes[1].nc.handle_packet(now, addr(0), &bytes);
            net.nodes[1].nc.handle_packet(now, addr(2), &bytes);
        }
        net.collect();
        prop_assert!(net.established(1, 0));
        let r1 = net.nodes[1].real;
        let r0 = net.nodes[0].real;
        let now = net.now;
        net.nodes[0].nc.send_lossless(now, &r1, &[160, 5]).expect("send");
        net.run_for(Duration::from_millis(10));
        prop_assert_eq!(net.lossless_from(1, r0), vec![vec![160, 5]]);
    }
}

#[test]
fn bulk_transfer_ramps_up() {
    let mut net = connect(13);
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    let total = 20_000usize;
    let start = net.now;
    for i in 0..total {
        let now = net.now;
        let mut data = vec![160];
        data.extend_from_slice(&(i as u32).to_be_bytes());
        data.resize(1300, 0);
        net.nodes[0]
            .nc
            .send_lossless(now, &r1, &data)
            .expect("queued");
    }
    net.collect();
    let mut got = 0;
    let end = net.now + Duration::from_secs(60);
    while net.now < end && got < total {
        net.step();
        got += net.nodes[1]
            .events
            .drain(..)
            .filter(|e| matches!(e, NetCryptoEvent::Lossless { peer, .. } if *peer == r0))
            .count();
    }
    assert_eq!(got, total);
    let took = net.now - start;
    let rate = net.nodes[0].nc.session_state(&r1).expect("state").send_rate;
    // 20,000 × 1300 B over a 1 ms link: the rate has to climb far above the 4 packets/s floor.
    assert!(took < Duration::from_secs(20), "took {took:?}, rate {rate}");
    assert_eq!(net.nodes[0].nc.stats().retransmissions, 0);
}

#[test]
fn packet_request_spans_long_gaps() {
    let now = Net::new(1, 14).now;
    let mut rng = FerryRng::from_u64(14);
    // Receiver side: 700 packets known, 0, 300, 301 and 650 missing.
    // Numbers wrap inside the window.
    let mut recv = RecvBuffer {
        start: u32::MAX - 100,
        ..RecvBuffer::default()
    };
    assert!(recv.set_end(recv.start.wrapping_add(700), CRYPTO_PACKET_BUFFER_SIZE));
    for i in 0..700 {
        if ![0, 300, 301, 650].contains(&i) {
            recv.slots[i] = Some(vec![160]);
        }
    }
    let bytes = recv.missing().encode();
    assert_eq!(bytes, vec![1, 1, 0, 45, 1, 0, 94]);
    let req = PacketRequest::decode(&bytes).expect("decode");
    // Sender side: the same 700 packets, all sent 2 s ago.
    let mut s = Session::new(now, PublicKey([1; 32]), &mut rng);
    s.send.start = recv.start;
    for _ in 0..700 {
        let rate = s.cc.send_state();
        s.send.slots.push_back(Some(Outgoing {
            data: vec![160],
            sent_at: Some(now),
            rate,
            tries: 1,
        }));
    }
    s.send.scan = 700;
    apply_request(now + Duration::from_secs(2), &mut s, &req);
    let pending: Vec<usize> = (0..700)
        .filter(|&i| matches!(&s.send.slots[i], Some(o) if o.sent_at.is_none()))
        .collect();
    assert_eq!(pending, vec![0, 300, 301, 650]);
    let kept: usize = s.send.slots.iter().filter(|o| o.is_some()).count();
    // Everything up to 650 not requested is freed; 651..700 are beyond the request and kept.
    assert_eq!(kept, 4 + 49);
    assert_eq!(s.send.unsent, 4);
    assert_eq!(s.send.scan, 0);
    // A request for packets sent less than one RTT ago does not resend them.
    let mut s2 = Session::new(now, PublicKey([1; 32]), &mut rng);
    s2.cc.on_rtt_sample(now, Duration::from_millis(100));
    let rate = s2.cc.send_state();
    s2.send.slots.push_back(Some(Outgoing {
        data: vec![160],
        sent_at: Some(now),
        rate,
        tries: 1,
    }));
    apply_request(
        now + Duration::from_millis(50),
        &mut s2,
        &PacketRequest::decode(&[1, 1]).expect("decode"),
    );
    assert_eq!(s2.send.unsent, 0);
}

/// Pushes bulk packets (id 160, `size` bytes, numbered in bytes 1..5) from node 0 to node 1 as
/// [`NetCrypto::send_budget`] allows, until `total` are queued; returns how many were queued.
fn push_bulk(net: &mut Net, sent: &mut u32, total: u32, size: usize) {
    let r1 = net.nodes[1].real;
    let now = net.now;
    let budget = net.nodes[0].nc.send_budget(&r1);
    for _ in 0..budget {
        if *sent >= total {
            break;
        }
        let mut data = vec![160];
        data.extend_from_slice(&sent.to_be_bytes());
        data.resize(size, 0x5a);
        net.nodes[0]
            .nc
            .send_lossless(now, &r1, &data)
            .expect("budgeted send fits");
        *sent += 1;
    }
    net.collect();
}

#[test]
fn bulk_through_lossy_reordering_bottleneck_arrives_in_order() {
    let mut net = connect(21);
    net.loss = 5;
    net.delay = Duration::from_millis(10);
    net.jitter = Duration::from_millis(3);
    // 2,000 packets/s (2.7 MB/s of 1373-byte packets), 100-packet queue.
    net.bottleneck = Some((2000.0, 100));
    let r0 = net.nodes[0].real;
    let total = 6000u32;
    let mut sent = 0;
    let start = net.now;
    let end = start + Duration::from_secs(60);
    let mut got = 0usize;
    while net.now < end && got < total as usize {
        push_bulk(&mut net, &mut sent, total, 1373);
        net.step();
        for e in net.nodes[1].events.drain(..) {
            if let NetCryptoEvent::Lossless { peer, data } = e
                && peer == r0
            {
                assert_eq!(&data[1..5], &(got as u32).to_be_bytes(), "in order, once");
                assert_eq!(data.len(), 1373);
                got += 1;
            }
        }
    }
    assert_eq!(got, total as usize, "all delivered");
    let took = net.now - start;
    let rate = f64::from(total) / took.as_secs_f64();
    // 5 % random loss and 3 ms of reordering must not collapse the rate: at least 60 % of the
    // bottleneck (the loss alone costs 5 %; startup and the tail a few hundred ms).
    eprintln!(
        "lossy bottleneck: {rate:.0} packets/s in {took:?}, {} retransmissions",
        net.nodes[0].nc.stats().retransmissions
    );
    assert!(rate > 1200.0, "{rate:.0} packets/s in {took:?}");
    let retrans = net.nodes[0].nc.stats().retransmissions;
    assert!(
        retrans < u64::from(total) / 4,
        "{retrans} retransmissions for {total} packets"
    );
}

#[test]
fn chat_packet_is_not_stuck_behind_bulk() {
    let mut net = connect(22);
    net.delay = Duration::from_millis(5);
    net.bottleneck = Some((20_000.0, 1000));
    let (r0, r1) = (net.nodes[0].real, net.nodes[1].real);
    let total = u32::MAX;
    let mut sent = 0;
    // Saturate for one second, then send a chat message (id 64) every 100 ms while bulk goes on.
    let mut worst = Duration::ZERO;
    let mut chats = 0;
    let bulk_start = net.now;
    while net.now < bulk_start + Duration::from_secs(1) {
        push_bulk(&mut net, &mut sent, total, 1373);
        net.step();
        net.nodes[1].events.clear();
    }
    for _ in 0..5 {
        let t0 = net.now;
        net.nodes[0]
            .nc
            .send_lossless(t0, &r1, &[64, 1, 2, 3])
            .expect("chat");
        net.collect();
        let mut arrived = None;
        while net.now < t0 + Duration::from_secs(2) && arrived.is_none() {
            push_bulk(&mut net, &mut sent, total, 1373);
            net.step();
            for e in net.nodes[1].events.drain(..) {
                if matches!(&e, NetCryptoEvent::Lossless { peer, data } if *peer == r0 && data[0] == 64)
                {
                    arrived = Some(net.now);
                }
            }
        }
        let took = arrived.expect("chat arrived") - t0;
        worst = worst.max(took);
        chats += 1;
        let wait = net.now + Duration::from_millis(100);
        while net.now < wait {
            push_bulk(&mut net, &mut sent, total, 1373);
            net.step();
            net.nodes[1].events.clear();
        }
    }
    assert_eq!(chats, 5);
    let rate = f64::from(sent) / (net.now - bulk_start).as_secs_f64();
    eprintln!("chat worst {worst:?}, bulk {rate:.0} packets/s");
    assert!(rate > 12_000.0, "bulk ran at {rate:.0} packets/s");
    // One-way delay is 5 ms; the message waits at most for the window ahead of it.
    assert!(worst < Duration::from_millis(50), "chat took {worst:?}");
}

/// A receiver that reads its socket only every 50 ms, as a c-toxcore client does once per
/// `tox_iterate`: its ACKs come in bursts 50 ms apart. The rate must not collapse between
/// bursts (rounds without an ACK carry no bandwidth sample) and the window must cover the gap
/// between ACKs (ACK aggregation), or the sender idles most of each 50 ms.
#[test]
fn bulk_to_a_receiver_that_reads_every_50_ms() {
    let mut net = connect(23);
    // 1,000 datagrams per read: a few MiB of receive buffer.
    net.batched_rx = Some((1, Duration::from_millis(50), 1000));
    let r0 = net.nodes[0].real;
    let total = 20_000u32;
    let mut sent = 0;
    let start = net.now;
    let end = start + Duration::from_secs(120);
    let mut got = 0usize;
    while net.now < end && got < total as usize {
        push_bulk(&mut net, &mut sent, total, 1373);
        net.step();
        for e in net.nodes[1].events.drain(..) {
            if let NetCryptoEvent::Lossless { peer, data } = e
                && peer == r0
            {
                assert_eq!(&data[1..5], &(got as u32).to_be_bytes(), "in order, once");
                got += 1;
            }
        }
    }
    assert_eq!(got, total as usize, "all delivered");
    let took = net.now - start;
    let rate = f64::from(total) / took.as_secs_f64();
    let r1 = net.nodes[1].real;
    eprintln!(
        "50 ms reader: {rate:.0} packets/s in {took:?}, {} retransmissions, state {:?}",
        net.nodes[0].nc.stats().retransmissions,
        net.nodes[0].nc.session_state(&r1)
    );
    // Up to 1,000 packets per 50 ms read fit: 20,000 packets/s is the ceiling.
    assert!(rate > 10_000.0, "{rate:.0} packets/s in {took:?}");
}
