#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

/// An IPv4 packet with a TCP/UDP header carrying `dport` (or just `payload` bytes).
fn v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8];
    p[0] = 0x45;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p
}

fn v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 8];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    p[6] = protocol;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&40000u16.to_be_bytes());
    p[42..44].copy_from_slice(&dport.to_be_bytes());
    p
}

const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 2, 0, 0, 0, 0, 2);

#[test]
fn parse_v4_and_v6_ports() {
    let p = IpPacket::parse(&v4(EXIT_GATEWAY_V4, SERVER4, proto::TCP, 80)).unwrap();
    assert_eq!(p.dst, IpAddr::V4(SERVER4));
    assert_eq!(p.protocol, proto::TCP);
    assert_eq!(p.ports, Some((40000, 80)));
    let p = IpPacket::parse(&v6(Ipv6Addr::LOCALHOST, SERVER6, proto::UDP, 53)).unwrap();
    assert_eq!(p.ports, Some((40000, 53)));
    let p = IpPacket::parse(&v4(EXIT_GATEWAY_V4, SERVER4, proto::ICMP, 0)).unwrap();
    assert_eq!(p.ports, None);
    // Length mismatch, bad IHL, bad version, empty.
    let mut bad = v4(EXIT_GATEWAY_V4, SERVER4, proto::TCP, 80);
    bad.push(0);
    assert_eq!(IpPacket::parse(&bad), Err(ExitDrop::Malformed));
    let mut bad = v4(EXIT_GATEWAY_V4, SERVER4, proto::TCP, 80);
    bad[0] = 0x44;
    assert_eq!(IpPacket::parse(&bad), Err(ExitDrop::Malformed));
    assert_eq!(IpPacket::parse(&[0x50; 40]), Err(ExitDrop::Malformed));
    assert_eq!(IpPacket::parse(&[]), Err(ExitDrop::Malformed));
    // A later IPv4 fragment has no ports.
    let mut frag = v4(EXIT_GATEWAY_V4, SERVER4, proto::TCP, 80);
    frag[7] = 1;
    assert_eq!(IpPacket::parse(&frag).unwrap().ports, None);
}

#[test]
fn cidr_parse_contains_and_default_split() {
    let c: Cidr = "10.77.2.0/24".parse().unwrap();
    assert!(c.contains(&IpAddr::V4(SERVER4)));
    assert!(!c.contains(&IpAddr::V4(Ipv4Addr::new(10, 77, 3, 1))));
    assert!(!c.contains(&IpAddr::V6(SERVER6)));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains(&IpAddr::V4(SERVER4)));
    assert_eq!(all.split_default().len(), 2);
    let all6: Cidr = "::/0".parse().unwrap();
    let halves = all6.split_default();
    assert!(halves.iter().any(|h| h.contains(&IpAddr::V6(SERVER6))));
    assert!(
        halves
            .iter()
            .any(|h| h.contains(&"8000::1".parse().unwrap()))
    );
    let host: Cidr = "fd00:77:2::2".parse().unwrap();
    assert_eq!(host.len, 128);
    for bad in ["10.0.0.0/33", "::/129", "x/8", "10.0.0.0/-1", ""] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad}");
    }
}

#[test]
fn policy_ports_protocols_and_default() {
    let rules = vec![
        PolicyRule::parse("10.77.2.0/24", "tcp", "80, 7000-7010").unwrap(),
        PolicyRule::parse("fd00:77:2::/64", "any", "").unwrap(),
        PolicyRule::parse("10.77.2.2", "icmp", "").unwrap(),
    ];
    let pol = ExitPolicy::allow_only(rules).unwrap();
    let c = EXIT_GATEWAY_V4;
    let ok = |p: Vec<u8>| pol.allows(&IpPacket::parse(&p).unwrap());
    assert!(ok(v4(c, SERVER4, proto::TCP, 80)));
    assert!(ok(v4(c, SERVER4, proto::TCP, 7005)));
    assert!(!ok(v4(c, SERVER4, proto::TCP, 7011)));
    assert!(!ok(v4(c, SERVER4, proto::UDP, 80)));
    assert!(ok(v4(c, SERVER4, proto::ICMP, 0)));
    assert!(!ok(v4(c, Ipv4Addr::new(10, 77, 3, 2), proto::TCP, 80)));
    assert!(ok(v6(Ipv6Addr::LOCALHOST, SERVER6, proto::UDP, 9)));
    assert!(ExitPolicy::allow_all().allows(&IpPacket::parse(&v4(c, SERVER4, 99, 0)).unwrap()));
    assert!(PolicyRule::parse("10.0.0.0/8", "tcp", "90-80").is_err());
    assert!(PolicyRule::parse("10.0.0.0/8", "icmp", "80").is_err());
    assert!(PolicyRule::parse("10.0.0.0/8", "sctp", "").is_err());
}

#[test]
fn control_round_trip_and_rejects() {
    for m in [
        ExitControl::Request,
        ExitControl::Release,
        ExitControl::Refuse(REFUSE_FULL),
        ExitControl::Assign {
            v4: Ipv4Addr::new(100, 64, 0, 2),
            v4_len: 10,
            v6: mesh_address(&key(3)),
            v6_len: 128,
        },
    ] {
        let e = m.encode();
        assert_eq!(e[0], EXIT_CONTROL_PACKET_ID);
        assert_eq!(ExitControl::decode(&e), Ok(m));
    }
    assert_eq!(ExitControl::Request.encode().len(), 2);
    assert!(ExitControl::decode(&[EXIT_CONTROL_PACKET_ID]).is_err());
    assert!(ExitControl::decode(&[EXIT_CONTROL_PACKET_ID, 9]).is_err());
    assert!(ExitControl::decode(&[171, 1]).is_err());
    assert!(ferry_wire::messenger::CUSTOM_LOSSLESS.contains(&EXIT_CONTROL_PACKET_ID));
}

#[test]
fn table_assigns_routes_and_checks_sources() {
    let now = Instant::now();
    let mut t = ExitTable::new(ExitPolicy::allow_all());
    let (a4, a6) = t.assign(now, key(1)).unwrap();
    let (b4, _) = t.assign(now, key(2)).unwrap();
    assert_eq!(a4, Ipv4Addr::new(100, 64, 0, 2));
    assert_eq!(b4, Ipv4Addr::new(100, 64, 0, 3));
    assert_eq!(a6, mesh_address(&key(1)));
    assert_eq!(t.assign(now, key(1)), Some((a4, a6)));
    // From A with A's address: ok; with B's: spoofed; unknown client: no address.
    assert!(
        t.check_from_client(now, &key(1), &v4(a4, SERVER4, proto::UDP, 9))
            .is_ok()
    );
    assert!(
        t.check_from_client(now, &key(1), &v6(a6, SERVER6, proto::UDP, 9))
            .is_ok()
    );
    assert_eq!(
        t.check_from_client(now, &key(1), &v4(b4, SERVER4, proto::UDP, 9)),
        Err(ExitDrop::BadSource)
    );
    assert_eq!(
        t.check_from_client(now, &key(9), &v4(a4, SERVER4, proto::UDP, 9)),
        Err(ExitDrop::NoClient)
    );
    // Into the mesh or to another client: refused.
    assert_eq!(
        t.check_from_client(now, &key(1), &v4(a4, b4, proto::UDP, 9)),
        Err(ExitDrop::Policy)
    );
    // Return traffic by destination.
    assert_eq!(
        t.route_to_client(now, &v4(SERVER4, b4, proto::UDP, 9)),
        Ok(key(2))
    );
    assert_eq!(
        t.route_to_client(now, &v6(SERVER6, a6, proto::UDP, 9)),
        Ok(key(1))
    );
    assert_eq!(
        t.route_to_client(
            now,
            &v4(SERVER4, Ipv4Addr::new(100, 64, 9, 9), proto::UDP, 9)
        ),
        Err(ExitDrop::NoRoute)
    );
    assert_eq!(t.counters.drop_bad_source, 1);
    assert_eq!(t.counters.drop_policy, 1);
    assert!(t.release(&key(1)));
    assert!(!t.is_client_address(&IpAddr::V4(a4)));
}

#[test]
fn table_is_capped_and_evicts_idle_clients() {
    let t0 = Instant::now();
    let mut t = ExitTable::new(ExitPolicy::allow_all());
    for i in 0..MAX_EXIT_CLIENTS as u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        assert!(t.assign(t0, PublicKey(k)).is_some());
    }
    assert_eq!(t.len(), MAX_EXIT_CLIENTS);
    // Full and nobody idle: refused.
    assert_eq!(t.assign(t0 + Duration::from_secs(1), key(0xee)), None);
    // Later everyone is idle: the oldest is evicted.
    assert!(t.assign(t0 + CLIENT_IDLE_EVICT, key(0xee)).is_some());
    assert_eq!(t.len(), MAX_EXIT_CLIENTS);
}

#[test]
fn client_routes_non_mesh_traffic_to_its_exit() {
    let own6 = mesh_address(&key(1));
    let mut c = ExitClient::new(key(7));
    let pkt = v6(own6, SERVER6, proto::UDP, 9);
    assert_eq!(c.route_outbound(&pkt), Some(Err(ExitDrop::NoClient)));
    let assign = ExitControl::Assign {
        v4: Ipv4Addr::new(100, 64, 0, 2),
        v4_len: 10,
        v6: own6,
        v6_len: 128,
    };
    assert!(!c.on_assign(&key(8), assign, own6));
    assert!(c.on_assign(&key(7), assign, own6));
    assert_eq!(c.route_outbound(&pkt), Some(Ok(key(7))));
    // Mesh destinations are not the exit's business.
    assert_eq!(
        c.route_outbound(&v6(own6, mesh_address(&key(2)), 58, 0)),
        None
    );
    let me4 = Ipv4Addr::new(100, 64, 0, 2);
    assert_eq!(
        c.route_outbound(&v4(me4, SERVER4, proto::TCP, 80)),
        Some(Ok(key(7)))
    );
    assert_eq!(
        c.route_outbound(&v4(Ipv4Addr::new(1, 2, 3, 4), SERVER4, proto::TCP, 80)),
        Some(Err(ExitDrop::BadSource))
    );
    // Inbound: only from the exit, only to us.
    assert_eq!(
        c.check_inbound(&key(7), &v4(SERVER4, me4, 6, 1)),
        Some(Ok(()))
    );
    assert_eq!(c.check_inbound(&key(8), &v4(SERVER4, me4, 6, 1)), None);
    assert_eq!(
        c.check_inbound(&key(7), &v4(SERVER4, Ipv4Addr::new(100, 64, 0, 3), 6, 1)),
        Some(Err(ExitDrop::BadSource))
    );
}

proptest! {
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = IpPacket::parse(&data);
    }

    #[test]
    fn parse_never_panics_on_plausible_headers(
        v in prop_oneof![Just(0x45u8), Just(0x46), Just(0x4f), Just(0x60)],
        rest in proptest::collection::vec(any::<u8>(), 0..200),
        fix_len in any::<bool>(),
    ) {
        let mut p = vec![v];
        p.extend_from_slice(&rest);
        if fix_len && p.len() >= 40 {
            let n = p.len();
            if v == 0x60 {
                p[4..6].copy_from_slice(&((n - 40) as u16).to_be_bytes());
            } else {
                p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            }
        }
        if let Ok(x) = IpPacket::parse(&p) {
            prop_assert_eq!(x.src.is_ipv4(), v >> 4 == 4);
        }
    }

    #[test]
    fn ports_round_trip(dport in any::<u16>(), tcp in any::<bool>()) {
        let proto = if tcp { proto::TCP } else { proto::UDP };
        let p = IpPacket::parse(&v4(EXIT_GATEWAY_V4, SERVER4, proto, dport)).unwrap();
        prop_assert_eq!(p.ports, Some((40000, dport)));
        let p = IpPacket::parse(&v6(Ipv6Addr::LOCALHOST, SERVER6, proto, dport)).unwrap();
        prop_assert_eq!(p.ports, Some((40000, dport)));
    }

    #[test]
    fn control_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(m) = ExitControl::decode(&data) {
            prop_assert_eq!(m.encode(), data);
        }
    }
}

#[test]
fn pseudonymous_client_takes_a_mesh_address_that_is_not_its_own() {
    let own6 = mesh_address(&key(1));
    let pseudo6 = mesh_address(&key(0x55));
    let assign = |v6| ExitControl::Assign {
        v4: Ipv4Addr::new(100, 64, 0, 3),
        v4_len: 10,
        v6,
        v6_len: 128,
    };
    // A direct client refuses an IPv6 address other than its own mesh address.
    assert!(!ExitClient::new(key(7)).on_assign(&key(7), assign(pseudo6), own6));
    // Through a circuit: any mesh address, from the exit only; nothing outside the prefix.
    let mut c = ExitClient::new_pseudonymous(key(7));
    assert!(!c.on_assign(&key(7), assign("2001:db8::1".parse().expect("v6")), own6));
    assert!(!c.on_assign(&key(8), assign(pseudo6), own6));
    assert!(c.on_assign(&key(7), assign(pseudo6), own6));
    // Packets from the pseudonym's address go to the exit; from our own are spoofed.
    assert_eq!(
        c.route_outbound(&v6(pseudo6, SERVER6, proto::UDP, 9)),
        Some(Ok(key(7)))
    );
    assert_eq!(
        c.route_outbound(&v6(own6, SERVER6, proto::UDP, 9)),
        Some(Err(ExitDrop::BadSource))
    );
    // The exit table names a pseudonym like any key: its IPv6 is the pseudonym's mesh address.
    let mut t = ExitTable::new(ExitPolicy::allow_all());
    let now = Instant::now();
    assert_eq!(t.assign(now, key(0x55)).map(|a| a.1), Some(pseudo6));
}
