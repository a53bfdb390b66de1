#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

/// A valid IPv6 packet with `payload` bytes of payload (ICMPv6 next header).
fn packet(src: Ipv6Addr, dst: Ipv6Addr, payload: usize) -> Vec<u8> {
    let mut p = vec![0u8; IPV6_HEADER_SIZE + payload];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    p[6] = 58;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

#[test]
fn mtu_arithmetic() {
    assert_eq!(TUNNEL_MTU, 1372);
    const { assert!(TUNNEL_MTU >= 1280) };
    assert!(ferry_wire::net_crypto::LOSSY_IDS.contains(&TUNNEL_PACKET_ID));
    assert!(!(192..=199).contains(&TUNNEL_PACKET_ID));
}

#[test]
fn mesh_address_is_in_prefix_and_stable() {
    let a = mesh_address(&key(1));
    assert!(is_mesh_address(&a));
    assert_eq!(a, mesh_address(&key(1)));
    assert_ne!(a, mesh_address(&key(2)));
    assert_eq!(a.segments()[0], 0xfd54);
    assert_eq!(a.segments()[1], 0x6f78);
    // Pinned vector: the derivation is part of the protocol; changing it breaks every peer.
    let mut input = MESH_ADDRESS_LABEL.to_vec();
    input.extend_from_slice(&[1u8; 32]);
    assert_eq!(a.octets()[4..], sha512(&input)[..12]);
    assert!(!is_mesh_address(&"fe80::1".parse().unwrap()));
}

#[test]
fn router_routes_and_checks() {
    let me = key(1);
    let friend = key(2);
    let mut r = MeshRouter::new(me);
    let fa = r.insert(friend).unwrap();
    assert_eq!(r.insert(friend).unwrap(), fa);
    assert_eq!(r.insert(me), Err(RouteError::Collision));
    let own = r.own_address();

    assert_eq!(r.route_outbound(&packet(own, fa, 8)), Ok(friend));
    let stranger = mesh_address(&key(3));
    assert_eq!(
        r.route_outbound(&packet(own, stranger, 8)),
        Err(DropReason::NoRoute)
    );
    assert_eq!(
        r.route_outbound(&packet(stranger, fa, 8)),
        Err(DropReason::BadSource)
    );
    assert_eq!(
        r.route_outbound(&packet(
            "fe80::1".parse().unwrap(),
            "ff02::2".parse().unwrap(),
            8
        )),
        Err(DropReason::NotMesh)
    );
    assert_eq!(r.route_outbound(&[0x45; 60]), Err(DropReason::NotIpv6));

    assert_eq!(r.check_inbound(&friend, &packet(fa, own, 8)), Ok(()));
    assert_eq!(
        r.check_inbound(&friend, &packet(stranger, own, 8)),
        Err(DropReason::BadSource)
    );
    assert_eq!(
        r.check_inbound(&friend, &packet(fa, stranger, 8)),
        Err(DropReason::NotForUs)
    );
    assert_eq!(
        r.check_inbound(&key(3), &packet(stranger, own, 8)),
        Err(DropReason::NoRoute)
    );
    assert!(r.remove(&friend));
    assert!(!r.remove(&friend));
    assert_eq!(
        r.route_outbound(&packet(own, fa, 8)),
        Err(DropReason::NoRoute)
    );
}

#[test]
fn router_is_capped() {
    let mut r = MeshRouter::new(PublicKey([0xff; 32]));
    for i in 0..MAX_ROUTES as u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        r.insert(PublicKey(k)).unwrap();
    }
    assert_eq!(r.len(), MAX_ROUTES);
    assert_eq!(r.insert(PublicKey([0xee; 32])), Err(RouteError::Full));
}

#[test]
fn header_lengths() {
    let a = mesh_address(&key(1));
    let p = packet(a, a, 0);
    assert!(Ipv6Header::parse(&p).is_ok());
    assert_eq!(Ipv6Header::parse(&p[..39]), Err(DropReason::BadLength));
    assert_eq!(Ipv6Header::parse(&[]), Err(DropReason::BadLength));
    let mut long = packet(a, a, 10);
    long.push(0);
    assert_eq!(Ipv6Header::parse(&long), Err(DropReason::BadLength));
    let max = packet(a, a, TUNNEL_MTU - IPV6_HEADER_SIZE);
    assert!(Ipv6Header::parse(&max).is_ok());
    let over = packet(a, a, TUNNEL_MTU - IPV6_HEADER_SIZE + 1);
    assert_eq!(Ipv6Header::parse(&over), Err(DropReason::BadLength));
    // Jumbogram: payload length 0, packet longer.
    let mut jumbo = packet(a, a, 100);
    jumbo[4] = 0;
    jumbo[5] = 0;
    assert_eq!(Ipv6Header::parse(&jumbo), Err(DropReason::BadLength));
}

#[test]
fn frames() {
    let mut buf = Vec::new();
    encode_frame(&[1, 2, 3], &mut buf);
    assert_eq!(buf, [TUNNEL_PACKET_ID, 1, 2, 3]);
    assert_eq!(decode_frame(&buf), Ok(&[1u8, 2, 3][..]));
    assert_eq!(decode_frame(&[]), Err(DropReason::NotTunnel));
    assert_eq!(decode_frame(&[200, 1]), Err(DropReason::NotTunnel));
    let mut c = TunnelCounters::default();
    c.count_drop(DropReason::BadSource);
    c.drop_send += 1;
    assert_eq!(c.dropped(), 2);
}

proptest! {
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let r = MeshRouter::new(key(1));
        let _ = Ipv6Header::parse(&data);
        let _ = r.route_outbound(&data);
        let _ = r.check_inbound(&key(2), &data);
        let _ = decode_frame(&data);
    }

    #[test]
    fn header_round_trip(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(),
                         payload in 0usize..=(TUNNEL_MTU - IPV6_HEADER_SIZE)) {
        let p = packet(src.into(), dst.into(), payload);
        let h = Ipv6Header::parse(&p).unwrap();
        prop_assert_eq!(h.src, Ipv6Addr::from(src));
        prop_assert_eq!(h.dst, Ipv6Addr::from(dst));
        prop_assert_eq!(usize::from(h.payload_len), payload);
        prop_assert_eq!(h.next_header, 58);
    }

    #[test]
    fn frame_round_trip(data in proptest::collection::vec(any::<u8>(), 0..TUNNEL_MTU)) {
        let mut buf = Vec::new();
        encode_frame(&data, &mut buf);
        prop_assert!(buf.len() <= MAX_CRYPTO_DATA_SIZE);
        prop_assert_eq!(decode_frame(&buf).unwrap(), &data[..]);
    }

    #[test]
    fn every_key_maps_into_prefix_and_routes_back(k in any::<[u8; 32]>(), me in any::<[u8; 32]>()) {
        prop_assume!(k != me);
        let mut r = MeshRouter::new(PublicKey(me));
        let a = r.insert(PublicKey(k)).unwrap();
        prop_assert!(is_mesh_address(&a));
        prop_assert_eq!(r.route_outbound(&packet(r.own_address(), a, 0)), Ok(PublicKey(k)));
        prop_assert_eq!(r.check_inbound(&PublicKey(k), &packet(a, r.own_address(), 0)), Ok(()));
    }
}

#[test]
fn service_nospam_is_stable_and_key_bound() {
    let a = PublicKey([7; 32]);
    let b = PublicKey([8; 32]);
    assert_eq!(service_nospam(&a), service_nospam(&a));
    assert_ne!(service_nospam(&a), service_nospam(&b));
    let id = service_tox_id(&a);
    assert_eq!(id.public_key, a);
    assert_eq!(id.nospam_value(), service_nospam(&a));
    // The ID round-trips through its 76-hex-digit text form (checksum included).
    let text = id.to_string();
    assert_eq!(text.len(), 76);
    assert_eq!(
        text.parse::<ferry_wire::toxid::ToxId>().expect("parses"),
        id
    );
}
