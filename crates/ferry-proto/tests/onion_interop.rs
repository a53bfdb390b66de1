//! Onion interop with a real c-toxcore 0.2.18 (Debian `libtoxcore-dev`) through the C peer in
//! `crates/ferry-testkit/c/toxpeer.c`, everything on 127.0.0.1 (LAN discovery off).
//!
//! Ferry nodes here are the bare sans-IO [`Dht`] + [`Onion`] driven by a tiny blocking UDP loop
//! (the daemon's `Node` is not involved). c-toxcore peers bootstrap from a ferry node only; the
//! network is mostly ferry nodes, so c-toxcore's announces and friend searches are relayed and
//! stored by ferry.

#![allow(clippy::disallowed_methods)] // a real-time test: Instant::now and sockets are the point

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PublicKey};
use ferry_proto::dht::{Dht, DhtConfig, DhtEvent};
use ferry_proto::onion::{Onion, OnionConfig, OnionEvent};
use ferry_proto::{Destination, Endpoint};
use ferry_testkit::{ToxPeer, free_udp_port};

struct Live {
    sock: UdpSocket,
    addr: SocketAddr,
    dht: Dht,
    onion: Onion,
    events: Vec<OnionEvent>,
    /// (from, kind) of every datagram seen.
    seen: Vec<(SocketAddr, u8)>,
}

impl Live {
    fn new(seed: u64, config: OnionConfig) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_nonblocking(true).expect("nonblocking");
        let addr = sock.local_addr().expect("addr");
        let now = Instant::now();
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
        let onion = Onion::new(config, real_keys, dht_keys, rng.fork(), now);
        Self {
            sock,
            addr,
            dht,
            onion,
            events: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn step(&mut self) {
        let now = Instant::now();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            let bytes = &buf[..n];
            if let Some(&k) = bytes.first()
                && !self.seen.contains(&(from, k))
            {
                self.seen.push((from, k));
            }
            match bytes.first() {
                Some(0x80..=0x8e) => self.onion.handle_packet(now, from, bytes, &mut self.dht),
                _ => self.dht.handle_datagram(now, from, bytes),
            }
        }
        if self.dht.poll_timeout() <= now {
            self.dht.handle_timeout(now);
        }
        if self.onion.poll_timeout() <= now {
            self.onion.handle_timeout(now, &mut self.dht);
        }
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
        while let Some(t) = self
            .onion
            .poll_transmit()
            .or_else(|| self.dht.poll_transmit())
        {
            if let Destination::Addr(to) = t.destination {
                let _ = self.sock.send_to(&t.payload, to);
            }
        }
    }
}

fn run(nodes: &mut [Live], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for n in nodes.iter_mut() {
            n.step();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pk_of_address(address: &str) -> PublicKey {
    PublicKey::from_hex(&address[..64]).expect("hex")
}

/// c-toxcore announces, searches and sends a friend request through ferry relays and announce
/// stores; ferry announces itself, finds c-toxcore friends, sends them a friend request and
/// exchanges DHT-PK with them.
#[test]
fn onion_interop_with_c_toxcore() {
    let f = 3; // the ferry node that befriends c-toxcore
    let mut nodes: Vec<Live> = (0..8)
        .map(|i| {
            // F sends DHT-PK by onion only, so T3 acting on it proves the onion data path.
            let config = OnionConfig {
                dht_pk_over_dht: i != f,
                ..OnionConfig::default()
            };
            Live::new(1000 + i as u64, config)
        })
        .collect();
    let seed_addr = nodes[0].addr;
    let seed_pk = nodes[0].dht.public_key();
    let now = Instant::now();
    for n in nodes.iter_mut().skip(1) {
        n.dht.bootstrap(now, seed_addr, seed_pk);
    }
    let boot = [(seed_addr.port(), seed_pk.to_hex())];
    let f_pk = nodes[f].onion.real_public_key();
    // T1 accepts requests; T2 asks T1 for friendship; T3 is F's friend (no request needed).
    let t1 = ToxPeer::start_with(free_udp_port(), &boot, &["--accept".into()]).expect("toxpeer 1");
    let t2 = ToxPeer::start_with(
        free_udp_port(),
        &boot,
        &[
            "--friend-request".into(),
            t1.address.clone(),
            "hello from c-toxcore".into(),
        ],
    )
    .expect("toxpeer 2");
    let t3 = ToxPeer::start_with(free_udp_port(), &boot, &["--friend".into(), f_pk.to_hex()])
        .expect("toxpeer 3");
    // T4 is F's friend too, but F treats it as online (no search, no DHT-PK of ours), so T4
    // cannot know F's DHT key and its DHT-PK can only come by onion.
    let t4 = ToxPeer::start_with(free_udp_port(), &boot, &["--friend".into(), f_pk.to_hex()])
        .expect("toxpeer 4");
    let t4_pk = pk_of_address(&t4.address);
    let t4_dht = PublicKey::from_hex(&t4.dht_id).expect("hex");
    let (t1_pk, t2_pk, t3_pk) = (
        pk_of_address(&t1.address),
        pk_of_address(&t2.address),
        pk_of_address(&t3.address),
    );
    let t3_dht = PublicKey::from_hex(&t3.dht_id).expect("hex");
    // The receiver drops requests with a nospam other than its own (the Tox ID's bytes 32..36).
    let mut t1_nospam = [0u8; 4];
    for (i, b) in t1_nospam.iter_mut().enumerate() {
        *b = u8::from_str_radix(&t1.address[64 + 2 * i..66 + 2 * i], 16).expect("hex");
    }
    let t3_addr: SocketAddr = format!("127.0.0.1:{}", t3.port).parse().expect("addr");
    let start = Instant::now();
    nodes[f].onion.add_friend(start, t1_pk).expect("add t1");
    nodes[f].onion.add_friend(start, t3_pk).expect("add t3");
    nodes[f].onion.add_friend(start, t4_pk).expect("add t4");
    nodes[f].onion.set_friend_online(&t4_pk, true);

    let mut request_sent = None;
    let mut c_request = None;
    let mut our_request = None;
    let mut dht_pk_from_t3 = None;
    let mut t3_cookie = None;
    let mut f_connected = None;
    let mut c_friends_online = None;
    let mut onion_dht_pk_from_t4 = None;
    let deadline = start + Duration::from_secs(90);
    while Instant::now() < deadline {
        run(&mut nodes, Duration::from_millis(500));
        let el = start.elapsed();
        if f_connected.is_none() && nodes[f].onion.is_connected() {
            f_connected = Some(el);
        }
        if request_sent.is_none() {
            let now = Instant::now();
            if nodes[f]
                .onion
                .send_friend_request(now, &t1_pk, t1_nospam, b"hello from ferry")
                .is_ok()
            {
                request_sent = Some(el);
            }
        }
        let lines = t1.lines.snapshot();
        if c_request.is_none()
            && lines
                .iter()
                .any(|l| *l == format!("FRIEND_REQUEST {} hello from c-toxcore", t2_pk.to_hex()))
        {
            c_request = Some(el);
        }
        if our_request.is_none()
            && lines
                .iter()
                .any(|l| *l == format!("FRIEND_REQUEST {} hello from ferry", f_pk.to_hex()))
        {
            our_request = Some(el);
        }
        if dht_pk_from_t3.is_none()
            && nodes[f].events.iter().any(|e| {
                matches!(e, OnionEvent::FriendDhtPk { real_pk, dht_pk, .. }
                    if *real_pk == t3_pk && *dht_pk == t3_dht)
            })
        {
            dht_pk_from_t3 = Some(el);
        }
        if onion_dht_pk_from_t4.is_none()
            && nodes[f].events.iter().any(|e| {
                matches!(e, OnionEvent::FriendDhtPk { real_pk, dht_pk, .. }
                    if *real_pk == t4_pk && *dht_pk == t4_dht)
            })
        {
            onion_dht_pk_from_t4 = Some(el);
        }
        // T3 learned our DHT key from our DHT-PK once it starts net_crypto: a cookie request
        // (0x18) from T3 reaches F.
        if t3_cookie.is_none() && nodes[f].seen.contains(&(t3_addr, 0x18)) {
            t3_cookie = Some(el);
        }
        // T2's friend 0 is T1: both c-toxcore peers became friends over a ferry network.
        if c_friends_online.is_none()
            && t2
                .lines
                .snapshot()
                .iter()
                .any(|l| l == "FRIEND_CONNECTION 0 tcp" || l == "FRIEND_CONNECTION 0 udp")
        {
            c_friends_online = Some(el);
        }
        if c_request.is_some()
            && c_friends_online.is_some()
            && onion_dht_pk_from_t4.is_some()
            && our_request.is_some()
            && dht_pk_from_t3.is_some()
            && t3_cookie.is_some()
            && {
                // The final assertions also need DHT-PK by both routes: wait for them too
                // instead of racing c-toxcore's DHT-PK timers.
                let fs = nodes[f].onion.stats();
                fs.dht_pk_via_onion >= 1 && fs.dht_pk_via_dht >= 1
            }
        {
            break;
        }
    }
    let stored: u64 = nodes.iter().map(|n| n.onion.stats().announce_entries).sum();
    let relayed: u64 = nodes.iter().map(|n| n.onion.stats().relayed_requests).sum();
    let malformed: u64 = nodes.iter().map(|n| n.onion.stats().malformed).sum();
    eprintln!(
        "F connected {f_connected:?}; c-toxcore→c-toxcore request via ferry {c_request:?}; \
         ferry request sent {request_sent:?}, arrived {our_request:?}; F got T3's DHT key \
         {dht_pk_from_t3:?}; T3 sent F a cookie request {t3_cookie:?}; c-toxcore friends \
         online {c_friends_online:?}; F got T4's DHT key by onion {onion_dht_pk_from_t4:?}; ferry nodes: {stored} \
         announcements stored, {relayed} requests relayed, {malformed} malformed"
    );
    assert!(f_connected.is_some(), "ferry never onion-connected");
    assert!(
        c_request.is_some(),
        "c-toxcore friend request did not arrive over ferry"
    );
    assert!(
        c_friends_online.is_some(),
        "c-toxcore friends did not connect over a ferry network"
    );
    assert!(
        our_request.is_some(),
        "ferry friend request did not reach c-toxcore"
    );
    assert!(dht_pk_from_t3.is_some(), "no DHT-PK from c-toxcore");
    assert!(
        onion_dht_pk_from_t4.is_some(),
        "no onion DHT-PK from c-toxcore"
    );
    assert!(
        t3_cookie.is_some(),
        "c-toxcore did not act on our onion DHT-PK"
    );
    let fs = nodes[f].onion.stats();
    eprintln!("F: {fs:?}");
    assert!(fs.dht_pk_via_onion >= 1, "no DHT-PK by onion decoded");
    // c-toxcore routes a DHT-PK by DHT (`route_to_friend`) only once at least 2 of its close
    // nodes for our DHT key report our address; in a 10-node network under CI load that can take
    // longer than the whole run (seen once in 90 s). Decoding that route is covered by the
    // wire/unit tests; here it is waited for (see the loop) and reported, not required.
    if fs.dht_pk_via_dht == 0 {
        eprintln!("note: c-toxcore routed no DHT-PK by DHT within the run");
    }
    assert!(
        fs.data_received >= 1,
        "no onion data from c-toxcore decrypted"
    );
    let forwarded: u64 = nodes.iter().map(|n| n.onion.stats().data_forwarded).sum();
    assert!(
        forwarded >= 1,
        "no data request reached a ferry announce store"
    );
    assert_eq!(
        malformed, 0,
        "ferry dropped c-toxcore onion packets as malformed"
    );
    drop((t1, t2, t3, t4));
}
