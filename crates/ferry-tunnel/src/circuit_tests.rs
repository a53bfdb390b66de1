use super::*;
use proptest::prelude::*;

/// An in-memory network of circuit tables; records every cell each node sends.
struct Net {
    nodes: Vec<Circuits>,
    keys: Vec<PublicKey>,
    /// Per node: every cell it sent (what a capture on its links would see going out).
    sent: Vec<Vec<Cell>>,
    /// Per node: every cell it received.
    recv: Vec<Vec<u8>>,
    events: Vec<Vec<CircuitEvent>>,
    /// Links that drop everything (to, from indices).
    down: Vec<(usize, usize)>,
}

impl Net {
    fn new(n: usize, seed: u64) -> Self {
        let mut rng = FerryRng::from_u64(seed);
        let mut nodes = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..n {
            let kp = KeyPair::generate(&mut rng);
            keys.push(kp.public);
            let cfg = CircuitConfig {
                relay: true,
                accept_end: true,
                ..CircuitConfig::default()
            };
            nodes.push(Circuits::new(kp, cfg, rng.fork()));
        }
        Self {
            nodes,
            keys,
            sent: vec![Vec::new(); n],
            recv: vec![Vec::new(); n],
            events: vec![Vec::new(); n],
            down: Vec::new(),
        }
    }

    fn idx(&self, k: &PublicKey) -> usize {
        self.keys.iter().position(|x| x == k).expect("known key")
    }

    /// Delivers cells until quiet.
    fn run(&mut self, now: Instant) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(e) = self.nodes[i].poll_event() {
                    self.events[i].push(e);
                }
                while let Some(c) = self.nodes[i].poll_transmit() {
                    moved = true;
                    self.sent[i].push(c.clone());
                    let to = self.idx(&c.to);
                    if self.down.contains(&(i, to)) {
                        self.nodes[i].send_failed(&c);
                        continue;
                    }
                    self.recv[to].extend_from_slice(&c.data);
                    let from = self.keys[i];
                    self.nodes[to].handle_cell(now, from, c.data);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("network did not settle");
    }

    fn take_events(&mut self, i: usize) -> Vec<CircuitEvent> {
        std::mem::take(&mut self.events[i])
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An IPv6-ish packet with a recognisable marker.
fn packet(marker: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0x60u8; len];
    for (i, b) in p.iter_mut().enumerate().skip(40) {
        *b = marker[i % marker.len()];
    }
    p
}

#[test]
fn three_relays_deliver_both_ways_and_relays_learn_only_neighbours() {
    // 0 = client, 1..=3 = relays, 4 = E.
    let mut net = Net::new(5, 7);
    let t0 = Instant::now();
    let (client, e) = (net.keys[0], net.keys[4]);
    let relays = [net.keys[1], net.keys[2], net.keys[3]];
    let h = net.nodes[0].create(t0, &relays, e, true).expect("create");
    net.run(t0);
    assert_eq!(net.take_events(0), vec![CircuitEvent::Open { handle: h }]);
    let ev = net.take_events(4);
    let CircuitEvent::Incoming {
        handle: eh,
        client: c,
    } = ev[0]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(c, Some(client));

    let marker = b"PLAINTEXT-MARKER";
    let fwd = packet(marker, 1000);
    net.nodes[0].send(t0, h, &fwd).expect("send");
    net.run(t0);
    assert_eq!(
        net.take_events(4),
        vec![CircuitEvent::Data {
            handle: eh,
            packet: fwd.clone()
        }]
    );
    let back_marker = b"REPLY-MARKER-XYZ";
    let back = packet(back_marker, CIRCUIT_MTU);
    net.nodes[4].send(t0, eh, &back).expect("send back");
    net.run(t0);
    assert_eq!(
        net.take_events(0),
        vec![CircuitEvent::Data {
            handle: h,
            packet: back.clone()
        }]
    );
    assert_eq!(
        net.nodes[0].send(t0, h, &packet(marker, CIRCUIT_MTU + 1)),
        Err(CircuitError::TooLarge)
    );

    // What each relay handled: received, sent, stored.
    for r in 1..=3 {
        let mut seen = net.recv[r].clone();
        for c in &net.sent[r] {
            seen.extend_from_slice(&c.data);
            seen.extend_from_slice(c.to.as_bytes());
        }
        seen.extend_from_slice(&net.nodes[r].relay_view());
        assert!(!contains(&seen, marker), "relay {r} saw plaintext");
        assert!(!contains(&seen, back_marker), "relay {r} saw plaintext");
        for (k, name) in [(0usize, "client"), (4, "E")] {
            let neighbour = k + 1 == r || r + 1 == k;
            if !neighbour {
                assert!(
                    !contains(&seen, net.keys[k].as_bytes()),
                    "relay {r} saw the {name}'s key"
                );
            }
        }
        let info = net.nodes[r].info();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].role, Role::Relay);
        assert_eq!(info[0].hops, vec![net.keys[r - 1], net.keys[r + 1]]);
        assert_eq!(info[0].far_end, None);
        assert_eq!(info[0].counters.tx_packets, 1);
        assert_eq!(info[0].counters.rx_packets, 1);
    }
    // Circuit ids differ per link.
    let ids: Vec<Vec<u8>> = (1..=3).map(|r| net.nodes[r].relay_view()).collect();
    assert_ne!(ids[0][32..36], ids[0][68..72]);
    let ci = &net.nodes[0].info()[0];
    assert_eq!(ci.hops, vec![relays[0], relays[1], relays[2], e]);
    assert_eq!(ci.state, CircuitState::Open);
    assert!(ci.rtt_ms.is_some());
    assert_eq!(ci.counters.tx_packets, 1);
    assert_eq!(ci.counters.rx_packets, 1);

    // Replayed data cell (captured at relay 3's output) is refused by E.
    let last = net.sent[3]
        .iter()
        .rev()
        .find(|c| c.data[0] == CIRCUIT_DATA_ID && c.to == e)
        .cloned()
        .expect("a forwarded data cell");
    net.nodes[4].handle_cell(t0, net.keys[3], last.data);
    net.run(t0);
    assert!(net.take_events(4).is_empty());
    assert_eq!(net.nodes[4].drops().auth, 1);

    // Teardown from the client reaches everyone.
    net.nodes[0].destroy(h, DestroyReason::Requested);
    net.run(t0);
    for n in &net.nodes {
        assert!(n.is_empty());
    }
    assert_eq!(
        net.take_events(4),
        vec![CircuitEvent::Closed {
            handle: eh,
            reason: DestroyReason::Requested
        }]
    );
}

#[test]
fn zero_relays_and_anonymous_mode() {
    let mut net = Net::new(2, 1);
    let t0 = Instant::now();
    let h = net.nodes[0]
        .create(t0, &[], net.keys[1], false)
        .expect("create");
    net.run(t0);
    assert_eq!(net.take_events(0), vec![CircuitEvent::Open { handle: h }]);
    let ev = net.take_events(1);
    assert!(matches!(ev[0], CircuitEvent::Incoming { client: None, .. }));
    // E never saw the client's key inside any layer.
    assert!(!contains(&net.recv[1], net.keys[0].as_bytes()));
}

#[test]
fn non_relay_refuses_and_unreachable_next_hop_destroys_with_reason() {
    let mut net = Net::new(4, 3);
    let t0 = Instant::now();
    net.nodes[1].config_mut().relay = false;
    let h = net.nodes[0]
        .create(t0, &[net.keys[1]], net.keys[3], true)
        .expect("create");
    net.run(t0);
    assert_eq!(
        net.take_events(0),
        vec![CircuitEvent::Closed {
            handle: h,
            reason: DestroyReason::NotRelay
        }]
    );
    assert!(net.nodes[0].is_empty());

    // Relay 2 cannot reach E (3): the client hears Unreachable.
    net.down.push((2, 3));
    let h = net.nodes[0]
        .create(t0, &[net.keys[2]], net.keys[3], true)
        .expect("create");
    net.run(t0);
    assert_eq!(
        net.take_events(0),
        vec![CircuitEvent::Closed {
            handle: h,
            reason: DestroyReason::Unreachable
        }]
    );
    assert!(net.nodes[2].is_empty());

    // E not accepting.
    net.down.clear();
    net.nodes[3].config_mut().accept_end = false;
    let h = net.nodes[0]
        .create(t0, &[net.keys[2]], net.keys[3], true)
        .expect("create");
    net.run(t0);
    assert_eq!(
        net.take_events(0),
        vec![CircuitEvent::Closed {
            handle: h,
            reason: DestroyReason::NotAccepting
        }]
    );
}

#[test]
fn timeouts_keepalive_and_caps() {
    let mut net = Net::new(3, 9);
    let t0 = Instant::now();
    // Setup timeout: E never answers (link down both ways silently: drop cells).
    let h = net.nodes[0]
        .create(t0, &[net.keys[1]], net.keys[2], true)
        .expect("create");
    // Deliver the CREATE to the relay only.
    let c = net.nodes[0].poll_transmit().expect("create cell");
    net.nodes[1].handle_cell(t0, net.keys[0], c.data);
    let _ = net.nodes[1].poll_transmit();
    let t1 = t0 + Duration::from_secs(11);
    assert!(net.nodes[0].poll_timeout().is_some_and(|t| t <= t1));
    net.nodes[0].handle_timeout(t1);
    net.nodes[1].handle_timeout(t1);
    assert!(net.nodes[0].is_empty() && net.nodes[1].is_empty());
    assert!(net.nodes[0].poll_event().is_some_and(|e| e
        == CircuitEvent::Closed {
            handle: h,
            reason: DestroyReason::Timeout
        }));
    while net.nodes[0].poll_transmit().is_some() {}
    while net.nodes[1].poll_transmit().is_some() {}

    // Keepalive gives an RTT sample and keeps relays from idling out.
    let h = net.nodes[0]
        .create(t1, &[net.keys[1]], net.keys[2], true)
        .expect("create");
    net.run(t1);
    let mut t = t1;
    for _ in 0..20 {
        t += Duration::from_secs(15);
        for i in 0..3 {
            net.nodes[i].handle_timeout(t);
        }
        net.run(t + Duration::from_millis(3));
    }
    let info = &net.nodes[0].info()[0];
    assert_eq!(info.handle, h);
    assert!((info.rtt_ms.expect("rtt") - 3.0).abs() < 0.01);
    assert_eq!(net.nodes[1].len(), 1);

    // Per-peer cap on the relay.
    net.nodes[1].config_mut().max_per_peer = 1;
    let h2 = net.nodes[0]
        .create(t, &[net.keys[1]], net.keys[2], true)
        .expect("create");
    net.run(t);
    assert!(net.take_events(0).contains(&CircuitEvent::Closed {
        handle: h2,
        reason: DestroyReason::Full
    }));
    // Bad paths.
    let me = net.keys[0];
    assert_eq!(
        net.nodes[0].create(t, &[me], net.keys[2], true),
        Err(CircuitError::BadPath)
    );
    assert_eq!(
        net.nodes[0].create(t, &[net.keys[2]], net.keys[2], true),
        Err(CircuitError::BadPath)
    );
    assert_eq!(
        net.nodes[0].create(t, &[net.keys[1]; MAX_RELAYS + 1], net.keys[2], true),
        Err(CircuitError::BadPath)
    );
}

#[test]
fn max_relays_fits_one_packet() {
    let mut net = Net::new(MAX_RELAYS + 2, 5);
    let t0 = Instant::now();
    let relays: Vec<PublicKey> = net.keys[1..=MAX_RELAYS].to_vec();
    let e = net.keys[MAX_RELAYS + 1];
    let h = net.nodes[0].create(t0, &relays, e, true).expect("create");
    let first = net.nodes[0].poll_transmit().expect("create");
    assert!(
        first.data.len() <= MAX_CRYPTO_DATA_SIZE,
        "{}",
        first.data.len()
    );
    assert_eq!(first.data.len(), CREATE_SIZE);
    let from = net.keys[0];
    net.nodes[1].handle_cell(t0, from, first.data);
    net.run(t0);
    assert_eq!(net.take_events(0), vec![CircuitEvent::Open { handle: h }]);
}

#[test]
fn replay_window() {
    let mut r = Replay::default();
    assert!(r.check(5));
    assert!(!r.check(5));
    assert!(r.check(3));
    assert!(r.check(100));
    assert!(!r.check(36));
    assert!(r.check(37));
    assert!(!r.check(37));
}

#[test]
fn rewrite_circ_sets_direction() {
    let mut d = vec![CIRCUIT_DATA_ID, 0, 0, 0, 0, 9];
    assert!(rewrite_circ(&mut d, 0x1234, Dir::Backward));
    assert_eq!(&d[1..5], &(0x1234 | BACKWARD_BIT).to_be_bytes());
    assert!(!rewrite_circ(
        &mut [CIRCUIT_CONTROL_ID, 1, 0],
        1,
        Dir::Forward
    ));
    assert!(!rewrite_circ(&mut [], 1, Dir::Forward));
}

proptest! {
    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let _ = CellRef::decode(&data);
        let mut d = data.clone();
        let _ = rewrite_circ(&mut d, 1, Dir::Forward);
    }

    #[test]
    fn handle_cell_never_panics(
        id in prop_oneof![Just(CIRCUIT_DATA_ID), Just(CIRCUIT_CONTROL_ID)],
        ty in 0u8..5,
        rest in proptest::collection::vec(any::<u8>(), 0..1400),
    ) {
        let mut net = Net::new(2, 11);
        let mut d = vec![id, ty];
        d.extend_from_slice(&rest);
        let from = net.keys[0];
        net.nodes[1].handle_cell(Instant::now(), from, d);
        net.nodes[1].handle_cell(Instant::now(), from, rest);
    }

    #[test]
    fn control_round_trip(id in 0u32..BACKWARD_BIT, reason in any::<u8>(), back in any::<bool>()) {
        let dir = if back { Dir::Backward } else { Dir::Forward };
        let d = control(TYPE_DESTROY, id, dir, &[reason]);
        prop_assert_eq!(
            CellRef::decode(&d),
            Ok(CellRef::Destroy { id, dir, reason: DestroyReason::from_byte(reason) })
        );
        let body = [7u8; CREATED_BODY];
        let d = control(TYPE_CREATED, id, Dir::Backward, &body);
        prop_assert_eq!(CellRef::decode(&d), Ok(CellRef::Created { id, body: &body }));
    }

    #[test]
    fn data_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..CIRCUIT_MTU)) {
        let mut net = Net::new(2, 13);
        let t0 = Instant::now();
        let h = net.nodes[0].create(t0, &[], net.keys[1], true).expect("create");
        net.run(t0);
        let _ = net.take_events(1);
        if payload.is_empty() {
            return Ok(());
        }
        net.nodes[0].send(t0, h, &payload).expect("send");
        net.run(t0);
        let ev = net.take_events(1);
        let ok = matches!(&ev[..], [CircuitEvent::Data { packet, .. }] if *packet == payload);
        prop_assert!(ok);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any path length: data arrives both ways, and no relay ever handles (receives, sends or
    /// stores) the plaintext or the key of a node that is not its neighbour.
    #[test]
    fn any_path_relays_see_only_neighbours(
        n in 0usize..=MAX_RELAYS,
        seed in any::<u64>(),
        identified in any::<bool>(),
        len in 41usize..=CIRCUIT_MTU,
    ) {
        let mut net = Net::new(n + 2, seed);
        let t0 = Instant::now();
        let relays: Vec<PublicKey> = net.keys[1..=n].to_vec();
        let e = net.keys[n + 1];
        let h = net.nodes[0].create(t0, &relays, e, identified).expect("create");
        net.run(t0);
        prop_assert_eq!(net.take_events(0), vec![CircuitEvent::Open { handle: h }]);
        let ev = net.take_events(n + 1);
        let Some(CircuitEvent::Incoming { handle: eh, .. }) = ev.first().cloned() else {
            return Err(TestCaseError::fail("no Incoming"));
        };
        let marker = b"SECRET-PAYLOAD-0";
        let p = packet(marker, len);
        net.nodes[0].send(t0, h, &p).expect("send");
        net.nodes[n + 1].send(t0, eh, &p).expect("send back");
        net.run(t0);
        let got_e = net.take_events(n + 1);
        let got_c = net.take_events(0);
        prop_assert_eq!(got_e, vec![CircuitEvent::Data { handle: eh, packet: p.clone() }]);
        prop_assert_eq!(got_c, vec![CircuitEvent::Data { handle: h, packet: p.clone() }]);
        for r in 1..=n {
            let mut seen = net.recv[r].clone();
            for c in &net.sent[r] {
                seen.extend_from_slice(&c.data);
                seen.extend_from_slice(c.to.as_bytes());
            }
            seen.extend_from_slice(&net.nodes[r].relay_view());
            prop_assert!(!contains(&seen, marker));
            for k in 0..n + 2 {
                if k + 1 != r && k != r + 1 && k != r {
                    prop_assert!(!contains(&seen, net.keys[k].as_bytes()), "relay {} saw key {}", r, k);
                }
            }
        }
    }
}

#[test]
fn create_size_is_constant() {
    let mut net = Net::new(MAX_RELAYS + 2, 17);
    let t0 = Instant::now();
    let e = net.keys[MAX_RELAYS + 1];
    for n in [0, 1, 3, MAX_RELAYS] {
        for identified in [false, true] {
            let relays: Vec<PublicKey> = net.keys[1..=n].to_vec();
            net.nodes[0]
                .create(t0, &relays, e, identified)
                .expect("create");
            let c = net.nodes[0].poll_transmit().expect("create cell");
            assert_eq!(
                c.data.len(),
                CREATE_SIZE,
                "{n} relays, identified {identified}"
            );
        }
    }
}

#[test]
fn neighbour_gone_tears_down_towards_the_other_side() {
    // 0 = client, 1, 2 = relays, 3 = E.
    let mut net = Net::new(4, 21);
    let t0 = Instant::now();
    let h = net.nodes[0]
        .create(t0, &[net.keys[1], net.keys[2]], net.keys[3], true)
        .expect("create");
    net.run(t0);
    assert_eq!(net.take_events(0), vec![CircuitEvent::Open { handle: h }]);
    let _ = net.take_events(3);
    // R1 loses R2: the client hears PeerGone; nothing is queued for R2.
    let r2 = net.keys[2];
    net.nodes[1].peer_gone(&r2);
    let mut to_r2 = 0;
    while let Some(c) = net.nodes[1].poll_transmit() {
        if c.to == r2 {
            to_r2 += 1;
        } else {
            let from = net.keys[1];
            net.nodes[0].handle_cell(t0, from, c.data);
        }
    }
    assert_eq!(to_r2, 0);
    assert!(net.nodes[1].is_empty());
    net.run(t0);
    assert_eq!(
        net.take_events(0),
        vec![CircuitEvent::Closed {
            handle: h,
            reason: DestroyReason::PeerGone
        }]
    );
    assert!(net.nodes[0].is_empty());
    // R2 and E forget it by the idle timeout.
    let later = t0 + CircuitConfig::default().idle_timeout;
    net.nodes[2].handle_timeout(later);
    net.run(later);
    assert!(net.nodes[2].is_empty() && net.nodes[3].is_empty());
}

/// `data_cell_route` (paid relaying): each node classifies the data cells it receives by the
/// link they came over, with the next hop where it relays, and knows nothing of control
/// cells, unknown circuits or garbage.
#[test]
fn data_cells_are_routed_by_link() {
    // 0 = client, 1 = relay, 2 = E.
    let mut net = Net::new(3, 11);
    let t0 = Instant::now();
    let (client, relay, e) = (net.keys[0], net.keys[1], net.keys[2]);
    let h = net.nodes[0].create(t0, &[relay], e, false).expect("create");
    net.run(t0);
    let eh = match net.take_events(2).first() {
        Some(CircuitEvent::Incoming { handle, .. }) => *handle,
        ev => panic!("{ev:?}"),
    };
    let sent_before = net.sent.iter().map(Vec::len).collect::<Vec<_>>();
    net.nodes[0].send(t0, h, &packet(b"up", 200)).expect("send");
    net.nodes[2]
        .send(t0, eh, &packet(b"down", 300))
        .expect("send back");
    net.run(t0);
    let cell = |i: usize| net.sent[i][sent_before[i]..].to_vec();
    // Client → relay (forward, relayed to E); relay → E (forward, ends there).
    let up0 = cell(0);
    assert_eq!(
        net.nodes[1]
            .data_cell_route(&client, &up0[0].data)
            .map(|r| (r.dir, r.next)),
        Some((Dir::Forward, Some(e)))
    );
    let relay_out = cell(1);
    let to_e = relay_out.iter().find(|c| c.to == e).expect("cell to E");
    assert_eq!(
        net.nodes[2]
            .data_cell_route(&relay, &to_e.data)
            .map(|r| (r.dir, r.next)),
        Some((Dir::Forward, None))
    );
    // E → relay (backward), relay → client (backward).
    let down2 = cell(2);
    assert_eq!(
        net.nodes[1]
            .data_cell_route(&e, &down2[0].data)
            .map(|r| (r.dir, r.next)),
        Some((Dir::Backward, None))
    );
    let to_c = relay_out
        .iter()
        .find(|c| c.to == client)
        .expect("cell to client");
    assert_eq!(
        net.nodes[0]
            .data_cell_route(&relay, &to_c.data)
            .map(|r| (r.dir, r.next)),
        Some((Dir::Backward, None))
    );
    // The wrong neighbour, a control cell, garbage: nothing.
    assert_eq!(net.nodes[1].data_cell_route(&e, &up0[0].data), None);
    let destroy = control(TYPE_DESTROY, 1, Dir::Forward, &[0]);
    assert_eq!(net.nodes[1].data_cell_route(&client, &destroy), None);
    assert_eq!(
        net.nodes[1].data_cell_route(&client, &[CIRCUIT_DATA_ID, 1]),
        None
    );
}
