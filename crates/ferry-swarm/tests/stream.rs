//! Live-stream node: signatures checked on every segment (tampering rejected, relays fine), and
//! a small tree on a hand-driven network plays without stalls.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_proto::{Destination, Endpoint};
use ferry_swarm::stream::{StreamConfig, StreamEvent, StreamNode};
use ferry_swarm::wire::{Segment, StreamMsg};
use ferry_wire::node::PackedNode;

const RATE: u64 = 10_000;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 2000)
}

fn signed(key: &SigningKey, seq: u64, data: Vec<u8>) -> Segment {
    let stream = key.verifying_key().to_bytes();
    let hash = blake3::hash(&data);
    let sig = key
        .sign(&Segment::signed_bytes(
            &stream,
            seq,
            hash.as_bytes(),
            seq * 1000,
        ))
        .to_bytes();
    Segment {
        stream,
        seq,
        ts_ms: seq * 1000,
        sig,
        data,
    }
}

#[test]
fn segments_are_verified() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let now = Instant::now();
    let me = PackedNode::udp(addr(2), PublicKey([2; 32]));
    let mut v = StreamNode::viewer(
        StreamConfig::new(RATE, RATE * 2),
        key.verifying_key().to_bytes(),
        me,
        addr(1),
        FerryRng::from_u64(1),
        now,
    );
    v.start(now);
    // Genuine, relayed by anyone: accepted.
    let good = signed(&key, 0, vec![1; 100]);
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(good.clone()).encode());
    assert_eq!(v.stats().received, 1);
    // One flipped byte: rejected.
    let mut bad = signed(&key, 1, vec![2; 100]);
    bad.data[50] ^= 1;
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(bad).encode());
    // Changed seq or timestamp under the same signature: rejected.
    let mut moved = signed(&key, 2, vec![3; 100]);
    moved.seq = 3;
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(moved).encode());
    let mut late = signed(&key, 4, vec![3; 100]);
    late.ts_ms += 1;
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(late).encode());
    // Signed by someone else: rejected.
    let other = SigningKey::from_bytes(&[8; 32]);
    let mut forged = signed(&other, 5, vec![4; 100]);
    forged.stream = key.verifying_key().to_bytes();
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(forged).encode());
    assert_eq!(v.stats().tampered, 4);
    assert_eq!(v.stats().received, 1);
    // Duplicates are counted, not re-accepted; garbage is counted as malformed.
    v.handle_datagram(now, addr(7), &StreamMsg::Segment(good).encode());
    assert_eq!(v.stats().duplicates, 1);
    v.handle_datagram(now, addr(7), &[0x20, 1, 2]);
    assert_eq!(v.stats().malformed, 1);
}

/// A streamer and 8 viewers on a 30 ms network: everyone plays, nobody stalls, the streamer
/// feeds at most its 3 copies.
#[test]
fn small_tree_plays() {
    let base = Instant::now();
    let key = SigningKey::from_bytes(&[5; 32]);
    let stream = key.verifying_key().to_bytes();
    let mut nodes: HashMap<SocketAddr, StreamNode> = HashMap::new();
    let s_addr = addr(1);
    nodes.insert(
        s_addr,
        StreamNode::streamer(
            StreamConfig::new(RATE, RATE * 5),
            key,
            PackedNode::udp(s_addr, PublicKey([1; 32])),
            FerryRng::from_u64(1),
            base,
        ),
    );
    for i in 2..10u8 {
        let a = addr(i);
        let mut v = StreamNode::viewer(
            StreamConfig::new(RATE, RATE * u64::from(i)),
            stream,
            PackedNode::udp(a, PublicKey([i; 32])),
            s_addr,
            FerryRng::from_u64(u64::from(i)),
            base,
        );
        v.start(base + Duration::from_millis(200 * u64::from(i)));
        nodes.insert(a, v);
    }
    let mut in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
    let mut now = base;
    let mut next_seg = base;
    let end = base + Duration::from_secs(30);
    let mut startups = Vec::new();
    while now < end {
        if now >= next_seg {
            next_seg += Duration::from_secs(1);
            nodes
                .get_mut(&s_addr)
                .unwrap()
                .push_segment(now, vec![7; RATE as usize]);
        }
        for (a, n) in &mut nodes {
            while let Some(t) = n.poll_transmit() {
                if let Destination::Addr(to) = t.destination {
                    in_flight.push((now + Duration::from_millis(30), *a, to, t.payload));
                }
            }
            while let Some(ev) = n.poll_event() {
                if let StreamEvent::Playing { startup, .. } = ev {
                    startups.push(startup);
                }
            }
        }
        now += Duration::from_millis(10);
        let (due, rest): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|m| m.0 <= now);
        in_flight = rest;
        for (_, from, to, bytes) in due {
            if let Some(n) = nodes.get_mut(&to) {
                n.handle_datagram(now, from, &bytes);
            }
        }
        for n in nodes.values_mut() {
            if n.poll_timeout() <= now {
                n.handle_timeout(now);
            }
        }
    }
    assert_eq!(startups.len(), 8, "not every viewer plays");
    assert!(
        startups.iter().all(|s| *s < Duration::from_secs(5)),
        "{startups:?}"
    );
    for (a, n) in &nodes {
        if *a == s_addr {
            let copies = n.stats().bytes_sent as f64 / (RATE as f64 * 30.0);
            assert!(copies < 4.0, "streamer sent {copies} copies");
            continue;
        }
        assert!(
            n.parents().iter().all(Option::is_some),
            "{a}: {:?}",
            n.parents()
        );
        assert!(
            n.stalled(now) < Duration::from_millis(300),
            "{a}: {:?}",
            n.stats()
        );
        assert_eq!(n.stats().tampered, 0);
    }
}
