//! Wire encodings: round trips for every message, and decoders never panic on arbitrary bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferry_crypto::PublicKey;
use ferry_swarm::wire::{
    Check, CheckAck, Fetch, FetchAck, HolderEntry, MAX_HOLDERS, MAX_PEERS, PeerEntry, ReplicaMsg,
    Role, Segment, Store, StoreAck, StreamMsg,
};
use ferry_wire::node::PackedNode;
use proptest::prelude::*;

fn node() -> impl Strategy<Value = PackedNode> {
    (
        any::<bool>(),
        any::<[u8; 4]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(v4, a4, a6, port, pk)| {
            let ip = if v4 {
                IpAddr::V4(Ipv4Addr::from(a4))
            } else {
                let mut a6 = a6;
                // Not IPv4-mapped (those are packed as IPv4, by design).
                a6[10] = 0x12;
                IpAddr::V6(Ipv6Addr::from(a6))
            };
            PackedNode::udp(SocketAddr::new(ip, port), PublicKey(pk))
        })
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Pin), Just(Role::Extra)]
}

fn holders() -> impl Strategy<Value = Vec<HolderEntry>> {
    prop::collection::vec(
        (role(), node()).prop_map(|(role, node)| HolderEntry { role, node }),
        0..8,
    )
}

fn replica_msg() -> impl Strategy<Value = ReplicaMsg> {
    prop_oneof![
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            role(),
            any::<u32>(),
            holders()
        )
            .prop_map(
                |(id, size, role, keep_s, holders)| ReplicaMsg::Store(Store {
                    id,
                    size,
                    role,
                    keep_s,
                    holders
                })
            ),
        (any::<[u8; 32]>(), any::<bool>())
            .prop_map(|(id, accepted)| ReplicaMsg::StoreAck(StoreAck { id, accepted })),
        (
            any::<[u8; 32]>(),
            prop::option::of(role()),
            any::<u32>(),
            any::<u32>(),
            holders()
        )
            .prop_map(
                |(id, role, keep_s, served, holders)| ReplicaMsg::Check(Check {
                    id,
                    role,
                    keep_s,
                    served,
                    holders
                })
            ),
        (any::<[u8; 32]>(), any::<bool>(), any::<u32>()).prop_map(|(id, holding, served)| {
            ReplicaMsg::CheckAck(CheckAck {
                id,
                holding,
                served,
            })
        }),
        any::<[u8; 32]>().prop_map(|id| ReplicaMsg::Fetch(Fetch { id })),
        (any::<[u8; 32]>(), any::<bool>())
            .prop_map(|(id, ok)| ReplicaMsg::FetchAck(FetchAck { id, ok })),
    ]
}

fn stream_msg() -> impl Strategy<Value = StreamMsg> {
    let id = any::<[u8; 32]>();
    let depth = any::<[u8; 2]>();
    let stripe = 0u8..2;
    prop_oneof![
        (
            id,
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 64),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(stream, seq, ts_ms, sig, data)| {
                let mut s = [0u8; 64];
                s.copy_from_slice(&sig);
                StreamMsg::Segment(Segment {
                    stream,
                    seq,
                    ts_ms,
                    sig: s,
                    data,
                })
            }),
        (id, any::<u32>()).prop_map(|(stream, upload_kbps)| StreamMsg::Join {
            stream,
            upload_kbps
        }),
        (
            id,
            prop::collection::vec(
                (node(), any::<u8>(), depth).prop_map(|(node, free, depth)| PeerEntry {
                    node,
                    free,
                    depth
                }),
                0..6
            )
        )
            .prop_map(|(stream, peers)| StreamMsg::Peers { stream, peers }),
        (id, any::<u64>()).prop_map(|(stream, nonce)| StreamMsg::Ping { stream, nonce }),
        (id, any::<u64>(), any::<u8>(), depth).prop_map(|(stream, nonce, free, depth)| {
            StreamMsg::Pong {
                stream,
                nonce,
                free,
                depth,
            }
        }),
        (id, stripe.clone(), depth).prop_map(|(stream, stripe, depth)| StreamMsg::Attach {
            stream,
            stripe,
            depth
        }),
        (id, stripe.clone(), any::<bool>(), any::<u8>()).prop_map(|(stream, stripe, ok, depth)| {
            StreamMsg::AttachAck {
                stream,
                stripe,
                ok,
                depth,
            }
        }),
        (id, any::<u8>(), depth).prop_map(|(stream, free, depth)| StreamMsg::Alive {
            stream,
            free,
            depth
        }),
        (id, any::<u64>()).prop_map(|(stream, seq)| StreamMsg::Want { stream, seq }),
        (id, any::<u64>()).prop_map(|(stream, seq)| StreamMsg::NotHave { stream, seq }),
        (id, stripe).prop_map(|(stream, stripe)| StreamMsg::Detach { stream, stripe }),
    ]
}

proptest! {
    #[test]
    fn replica_round_trip(m in replica_msg()) {
        let bytes = m.encode();
        prop_assert_eq!(ReplicaMsg::decode(&bytes), Ok(m));
        // Every strict prefix is rejected, and so is a trailing byte.
        for cut in 0..bytes.len() {
            prop_assert!(ReplicaMsg::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(ReplicaMsg::decode(&longer).is_err());
    }

    #[test]
    fn stream_round_trip(m in stream_msg()) {
        let bytes = m.encode();
        prop_assert_eq!(StreamMsg::decode(&bytes), Ok(m.clone()));
        if !matches!(m, StreamMsg::Segment(_)) {
            for cut in 0..bytes.len() {
                prop_assert!(StreamMsg::decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(StreamMsg::decode(&longer).is_err());
        }
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = ReplicaMsg::decode(&bytes);
        let _ = StreamMsg::decode(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_known_tags(tag in 0x10u8..0x2b, rest in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&rest);
        let _ = ReplicaMsg::decode(&bytes);
        let _ = StreamMsg::decode(&bytes);
    }
}

#[test]
fn counts_and_enums_are_checked() {
    // Too many holders.
    let mut b = vec![0x12];
    b.extend_from_slice(&[0; 32]);
    b.push(0);
    b.extend_from_slice(&[0; 8]);
    b.push((MAX_HOLDERS + 1) as u8);
    assert!(ReplicaMsg::decode(&b).is_err());
    // Bad role in a store.
    let m = ReplicaMsg::Store(Store {
        id: [1; 32],
        size: 5,
        role: Role::Pin,
        keep_s: 9,
        holders: vec![],
    });
    let mut bytes = m.encode();
    bytes[41] = 7;
    assert!(ReplicaMsg::decode(&bytes).is_err());
    // Bad flag.
    let mut bytes = ReplicaMsg::StoreAck(StoreAck {
        id: [0; 32],
        accepted: true,
    })
    .encode();
    bytes[33] = 2;
    assert!(ReplicaMsg::decode(&bytes).is_err());
    // Too many peers; bad stripe.
    let mut b = vec![0x22];
    b.extend_from_slice(&[0; 32]);
    b.push((MAX_PEERS + 1) as u8);
    assert!(StreamMsg::decode(&b).is_err());
    let mut b = StreamMsg::Detach {
        stream: [0; 32],
        stripe: 1,
    }
    .encode();
    b[33] = 2;
    assert!(StreamMsg::decode(&b).is_err());
    // Oversized segment.
    let seg = StreamMsg::Segment(Segment {
        stream: [0; 32],
        seq: 0,
        ts_ms: 0,
        sig: [0; 64],
        data: vec![0; ferry_swarm::wire::MAX_SEGMENT + 1],
    });
    assert!(StreamMsg::decode(&seg.encode()).is_err());
}
