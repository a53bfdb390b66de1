use super::*;
use ferry_wire::relay::{SERVER_HANDSHAKE_SIZE, ServerHandshake};
use proptest::prelude::*;

/// A scripted relay client over the sans-IO server.
struct TestClient {
    conn: ConnId,
    keys: KeyPair,
    session: Option<RelaySession>,
    reader: FrameReader,
    temp: KeyPair,
    base: Nonce,
    closed: bool,
}

struct Harness {
    server: RelayServer,
    now: Instant,
    clients: Vec<TestClient>,
    onion: Vec<(ConnId, Vec<u8>)>,
}

impl Harness {
    #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
    fn new(config: RelayConfig) -> Self {
        let mut rng = FerryRng::from_u64(7);
        let sk = KeyPair::generate(&mut rng).secret;
        Self {
            server: RelayServer::new(config, sk, rng.fork()),
            now: Instant::now(),
            clients: Vec::new(),
            onion: Vec::new(),
        }
    }

    /// Connects a client with handshake and a first ping; returns its index.
    fn connect(&mut self, seed: u64) -> usize {
        let mut rng = FerryRng::from_u64(1000 + seed);
        let keys = KeyPair::generate(&mut rng);
        let temp = KeyPair::generate(&mut rng);
        let base = Nonce::random(&mut rng);
        let conn = seed;
        self.server.accept(self.now, conn);
        let hs = ClientHandshake::seal(
            &keys.secret,
            &self.server.public_key(),
            Nonce::random(&mut rng),
            &HandshakePlain {
                temp_pk: temp.public,
                base_nonce: base,
            },
        )
        .expect("seal");
        self.clients.push(TestClient {
            conn,
            keys,
            session: None,
            reader: FrameReader::new(),
            temp,
            base,
            closed: false,
        });
        let i = self.clients.len() - 1;
        self.server.handle_bytes(self.now, conn, &hs.encode());
        self.pump();
        assert!(self.clients[i].session.is_some(), "server handshake");
        self.send(i, &RelayPacket::Ping { ping_id: [9; 8] });
        assert_eq!(self.recv(i), vec![RelayPacket::Pong { ping_id: [9; 8] }]);
        i
    }

    fn pump(&mut self) {
        while let Some(o) = self.server.poll_output() {
            match o {
                Output::Send(conn, bytes) => {
                    let c = self
                        .clients
                        .iter_mut()
                        .find(|c| c.conn == conn)
                        .expect("known conn");
                    c.reader.push(&bytes);
                    if c.session.is_none() {
                        let raw = c.reader.take_raw(SERVER_HANDSHAKE_SIZE).expect("96 bytes");
                        let plain = ServerHandshake::decode(&raw)
                            .expect("decode")
                            .open(&c.keys.secret, &self.server.public_key())
                            .expect("open");
                        c.session = Some(RelaySession::new(
                            &c.temp.secret,
                            &plain.temp_pk,
                            c.base,
                            plain.base_nonce,
                        ));
                    }
                }
                Output::Close(conn) => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.conn == conn) {
                        c.closed = true;
                    }
                }
                Output::OnionRequest(conn, body) => self.onion.push((conn, body)),
            }
        }
    }

    fn send(&mut self, i: usize, p: &RelayPacket) {
        let c = &mut self.clients[i];
        let frame = c
            .session
            .as_mut()
            .expect("session")
            .seal_packet(p)
            .expect("seal");
        let conn = c.conn;
        self.server.handle_bytes(self.now, conn, &frame);
        self.pump();
    }

    fn recv(&mut self, i: usize) -> Vec<RelayPacket> {
        let c = &mut self.clients[i];
        let mut out = Vec::new();
        while let Some(body) = c.reader.next_frame().expect("frame") {
            let plain = c
                .session
                .as_mut()
                .expect("session")
                .open(&body)
                .expect("open");
            out.push(RelayPacket::decode(&plain).expect("decode"));
        }
        out
    }

    fn pk(&self, i: usize) -> PublicKey {
        self.clients[i].keys.public
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.pump();
    }
}

fn linked_pair(h: &mut Harness) -> (usize, usize) {
    let a = h.connect(1);
    let b = h.connect(2);
    let (pa, pb) = (h.pk(a), h.pk(b));
    h.send(a, &RelayPacket::RoutingRequest { pk: pb });
    assert_eq!(
        h.recv(a),
        vec![RelayPacket::RoutingResponse {
            conn_id: 16,
            pk: pb
        }]
    );
    assert_eq!(h.server.stats().links, 0, "one-sided request links nothing");
    h.send(b, &RelayPacket::RoutingRequest { pk: pa });
    assert_eq!(
        h.recv(b),
        vec![
            RelayPacket::RoutingResponse {
                conn_id: 16,
                pk: pa
            },
            RelayPacket::ConnectNotification { conn_id: 16 }
        ]
    );
    assert_eq!(
        h.recv(a),
        vec![RelayPacket::ConnectNotification { conn_id: 16 }]
    );
    assert_eq!(h.server.stats().links, 1);
    (a, b)
}

#[test]
fn link_data_and_disconnect() {
    let mut h = Harness::new(RelayConfig {
        tap_bytes: 1 << 16,
        ..RelayConfig::default()
    });
    let (a, b) = linked_pair(&mut h);
    assert_eq!(h.server.stats().clients, 2);
    h.send(
        a,
        &RelayPacket::Data {
            conn_id: 16,
            data: vec![0x1b; 48],
        },
    );
    assert_eq!(
        h.recv(b),
        vec![RelayPacket::Data {
            conn_id: 16,
            data: vec![0x1b; 48]
        }]
    );
    let s = h.server.stats();
    assert_eq!((s.bytes_relayed, s.packets_relayed), (48, 1));
    assert_eq!(h.server.take_tap(), vec![0x1b; 48]);
    assert!(h.server.take_tap().is_empty());
    // Asking again returns the same id, no new link.
    let pb = h.pk(b);
    h.send(a, &RelayPacket::RoutingRequest { pk: pb });
    assert_eq!(
        h.recv(a),
        vec![RelayPacket::RoutingResponse {
            conn_id: 16,
            pk: pb
        }]
    );
    // Self-routing is refused.
    let pa = h.pk(a);
    h.send(a, &RelayPacket::RoutingRequest { pk: pa });
    assert_eq!(
        h.recv(a),
        vec![RelayPacket::RoutingResponse { conn_id: 0, pk: pa }]
    );
    h.send(a, &RelayPacket::DisconnectNotification { conn_id: 16 });
    assert_eq!(
        h.recv(b),
        vec![RelayPacket::DisconnectNotification { conn_id: 16 }]
    );
    assert_eq!(h.server.stats().links, 0);
    // b's slot stays reserved but unlinked: its data is dropped silently.
    h.send(
        b,
        &RelayPacket::Data {
            conn_id: 16,
            data: vec![1],
        },
    );
    assert!(!h.clients[b].closed);
    // Data on an unknown id closes the stream, as c-toxcore does.
    h.send(
        b,
        &RelayPacket::Data {
            conn_id: 40,
            data: vec![1],
        },
    );
    assert!(h.clients[b].closed);
    assert_eq!(h.server.stats().clients, 1);
}

#[test]
fn closing_a_client_notifies_its_peer() {
    let mut h = Harness::new(RelayConfig::default());
    let (a, b) = linked_pair(&mut h);
    h.server.closed(h.clients[a].conn);
    h.pump();
    assert_eq!(
        h.recv(b),
        vec![RelayPacket::DisconnectNotification { conn_id: 16 }]
    );
    assert_eq!(h.server.stats().links, 0);
    assert_eq!(h.server.stats().clients, 1);
}

#[test]
fn oob_reaches_connected_clients_only() {
    let mut h = Harness::new(RelayConfig::default());
    let a = h.connect(1);
    let b = h.connect(2);
    let (pa, pb) = (h.pk(a), h.pk(b));
    h.send(
        a,
        &RelayPacket::OobSend {
            dest: pb,
            data: vec![0x18; 145],
        },
    );
    assert_eq!(
        h.recv(b),
        vec![RelayPacket::OobRecv {
            src: pa,
            data: vec![0x18; 145]
        }]
    );
    h.send(
        a,
        &RelayPacket::OobSend {
            dest: PublicKey([5; 32]),
            data: vec![1],
        },
    );
    assert!(h.recv(b).is_empty());
    assert!(!h.clients[a].closed);
}

#[test]
fn bandwidth_limit_per_link() {
    let mut h = Harness::new(RelayConfig::default());
    let (a, b) = linked_pair(&mut h);
    // Offer 1373-byte packets at ~10x the limit for 10 s of virtual time.
    let mut delivered = 0usize;
    for _ in 0..1000 {
        h.now += Duration::from_millis(10);
        h.send(
            a,
            &RelayPacket::Data {
                conn_id: 16,
                data: vec![7; 1373],
            },
        );
        for p in h.recv(b) {
            if let RelayPacket::Data { data, .. } = p {
                delivered += data.len();
            }
        }
    }
    let expected = 10 * DEFAULT_LINK_RATE as usize + 16 * 1024;
    assert!(delivered <= expected, "{delivered} > {expected}");
    assert!(delivered >= expected - 2 * 1373, "{delivered}");
    assert!(h.server.stats().bytes_rate_limited > 0);
    // The other direction has its own bucket.
    h.send(
        b,
        &RelayPacket::Data {
            conn_id: 16,
            data: vec![7; 1373],
        },
    );
    assert_eq!(h.recv(a).len(), 1);
}

#[test]
fn pings_and_timeouts() {
    let mut h = Harness::new(RelayConfig::default());
    let a = h.connect(1);
    let b = h.connect(2);
    h.advance(PING_INTERVAL);
    let pa = h.recv(a);
    let [RelayPacket::Ping { ping_id }] = pa[..] else {
        panic!("expected a ping, got {pa:?}");
    };
    assert_eq!(h.recv(b).len(), 1);
    h.send(a, &RelayPacket::Pong { ping_id });
    h.advance(PING_TIMEOUT);
    assert!(!h.clients[a].closed);
    assert!(h.clients[b].closed, "b never answered");
    // A half-done handshake times out too.
    h.server.accept(h.now, 77);
    h.server.handle_bytes(h.now, 77, &[0; 10]);
    h.advance(Duration::from_secs(11));
    assert_eq!(h.server.stats().unconfirmed, 0);
}

#[test]
fn unconfirmed_ring_is_bounded() {
    let mut h = Harness::new(RelayConfig {
        max_unconfirmed: 4,
        max_clients: 2,
        ..RelayConfig::default()
    });
    for conn in 100..110 {
        h.server.accept(h.now, conn);
    }
    assert_eq!(h.server.stats().unconfirmed, 4);
    let mut closes = 0;
    while let Some(o) = h.server.poll_output() {
        assert!(matches!(o, Output::Close(_)));
        closes += 1;
    }
    assert_eq!(closes, 6);
    h.connect(1);
    h.connect(2);
    let c = {
        // A third client is refused at confirmation.
        let mut rng = FerryRng::from_u64(3);
        let keys = KeyPair::generate(&mut rng);
        let hs = ClientHandshake::seal(
            &keys.secret,
            &h.server.public_key(),
            Nonce::random(&mut rng),
            &HandshakePlain {
                temp_pk: keys.public,
                base_nonce: Nonce([0; 24]),
            },
        )
        .expect("seal");
        h.server.accept(h.now, 3);
        h.server.handle_bytes(h.now, 3, &hs.encode());
        h.server.stats().clients
    };
    assert_eq!(c, 2);
}

#[test]
fn same_key_replaces_old_stream() {
    let mut h = Harness::new(RelayConfig::default());
    let a = h.connect(1);
    // Same key pair (seed 1), new conn id.
    let mut rng = FerryRng::from_u64(1001);
    let keys = KeyPair::generate(&mut rng);
    assert_eq!(keys.public, h.pk(a));
    h.clients[a].conn = 1; // keep
    let before = h.server.stats().clients;
    let hs = ClientHandshake::seal(
        &keys.secret,
        &h.server.public_key(),
        Nonce::random(&mut rng),
        &HandshakePlain {
            temp_pk: keys.public,
            base_nonce: Nonce([0; 24]),
        },
    )
    .expect("seal");
    h.server.accept(h.now, 50);
    h.server.handle_bytes(h.now, 50, &hs.encode());
    assert_eq!(h.server.stats().clients, before);
}

#[test]
fn onion_requests_go_to_the_node_and_back() {
    let mut h = Harness::new(RelayConfig::default());
    let a = h.connect(1);
    h.send(a, &RelayPacket::OnionRequest(vec![3; 200]));
    assert_eq!(h.onion, vec![(1, vec![3; 200])]);
    h.server.send_onion_response(1, vec![0x84; 100]);
    h.pump();
    assert_eq!(h.recv(a), vec![RelayPacket::OnionResponse(vec![0x84; 100])]);
    // Onion responses from a client close it (c-toxcore does the same).
    h.send(a, &RelayPacket::OnionResponse(vec![1]));
    assert!(h.clients[a].closed);
}

proptest! {
    #[test]
    fn links_stay_symmetric(ops in proptest::collection::vec((0usize..4, 0usize..4, 0u8..4), 1..60)) {
        let mut h = Harness::new(RelayConfig::default());
        for i in 0..4 {
            h.connect(i as u64 + 1);
        }
        for (a, b, op) in ops {
            if h.clients[a].closed {
                continue;
            }
            let pb = h.pk(b);
            match op {
                0 | 1 => h.send(a, &RelayPacket::RoutingRequest { pk: pb }),
                2 => {
                    // Disconnect whatever id a holds for b, if any (unknown ids close a).
                    h.send(a, &RelayPacket::RoutingRequest { pk: pb });
                    let id = h.recv(a).iter().find_map(|p| match p {
                        RelayPacket::RoutingResponse { conn_id, pk } if *pk == pb && *conn_id != 0 => Some(*conn_id),
                        _ => None,
                    });
                    if let Some(conn_id) = id {
                        h.send(a, &RelayPacket::DisconnectNotification { conn_id });
                    }
                }
                _ => {
                    let conn = h.clients[a].conn;
                    h.server.closed(conn);
                    h.clients[a].closed = true;
                    h.pump();
                }
            }
            for i in 0..4 {
                if !h.clients[i].closed {
                    h.recv(i);
                }
            }
            h.server.check_invariants();
        }
    }

    #[test]
    fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut h = Harness::new(RelayConfig::default());
        let a = h.connect(1);
        h.server.accept(h.now, 9);
        for c in &chunks {
            h.server.handle_bytes(h.now, 9, c);
            h.server.handle_bytes(h.now, h.clients[a].conn, c);
            while h.server.poll_output().is_some() {}
        }
        prop_assert!(h.server.stats().clients <= 1);
    }
}

#[test]
fn memory_per_client_estimate() {
    // Heap per confirmed client with one link: the Conn entry (State boxed Client) plus a slot.
    let per_client = size_of::<Conn>() + size_of::<Client>();
    let per_slot = size_of::<Slot>() + 2 * size_of::<u64>();
    eprintln!("bytes: conn+client {per_client}, slot {per_slot}");
    assert!(per_client < 1024);
}
