//! Packed node: a node's transport, address and public key (`tox-protocol.md` §1, spec §Node Info).
//!
//! | bytes | field |
//! |---|---|
//! | 1 | ip_type: 2 = UDP/IPv4, 10 = UDP/IPv6, 130 = TCP/IPv4, 138 = TCP/IPv6 |
//! | 4 or 16 | address, network order |
//! | 2 | port, big-endian |
//! | 32 | public key |
//!
//! So a packed IPv4 node is 39 bytes and an IPv6 one 51 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferry_crypto::PublicKey;

use crate::{Reader, WireError};

/// ip_type of a UDP/IPv4 node.
pub const IP_TYPE_UDP4: u8 = 2;
/// ip_type of a UDP/IPv6 node.
pub const IP_TYPE_UDP6: u8 = 10;
/// ip_type of a TCP/IPv4 node (a TCP relay).
pub const IP_TYPE_TCP4: u8 = 130;
/// ip_type of a TCP/IPv6 node (a TCP relay).
pub const IP_TYPE_TCP6: u8 = 138;
/// Size of a packed IPv4 node, in bytes.
pub const PACKED_NODE_SIZE_IP4: usize = 39;
/// Size of a packed IPv6 node, in bytes.
pub const PACKED_NODE_SIZE_IP6: usize = 51;

/// Which transport a packed node describes: DHT nodes are UDP, TCP relays are TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A UDP DHT node.
    Udp,
    /// A TCP relay.
    Tcp,
}

/// A node's transport, socket address and public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackedNode {
    /// UDP (DHT) or TCP (relay).
    pub transport: Transport,
    /// IP address and port. IPv4-mapped IPv6 addresses are packed as IPv4, as c-toxcore does.
    pub addr: SocketAddr,
    /// The node's public key (a DHT key for UDP nodes, a relay's key for TCP nodes).
    pub public_key: PublicKey,
}

impl PackedNode {
    /// A UDP node.
    pub fn udp(addr: SocketAddr, public_key: PublicKey) -> Self {
        Self {
            transport: Transport::Udp,
            addr,
            public_key,
        }
    }

    /// The encoded size: 39 bytes for IPv4, 51 for IPv6.
    pub fn encoded_len(&self) -> usize {
        match normalize(self.addr).ip() {
            IpAddr::V4(_) => PACKED_NODE_SIZE_IP4,
            IpAddr::V6(_) => PACKED_NODE_SIZE_IP6,
        }
    }

    /// Appends the packed form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let addr = normalize(self.addr);
        match (addr.ip(), self.transport) {
            (IpAddr::V4(ip), t) => {
                out.push(if t == Transport::Udp {
                    IP_TYPE_UDP4
                } else {
                    IP_TYPE_TCP4
                });
                out.extend_from_slice(&ip.octets());
            }
            (IpAddr::V6(ip), t) => {
                out.push(if t == Transport::Udp {
                    IP_TYPE_UDP6
                } else {
                    IP_TYPE_TCP6
                });
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&addr.port().to_be_bytes());
        out.extend_from_slice(self.public_key.as_bytes());
    }

    /// Reads one packed node.
    ///
    /// # Errors
    /// [`WireError::InvalidValue`] for an unknown ip_type, [`WireError::Truncated`] when short.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let ip_type = r.u8("packed node ip_type")?;
        let (transport, ip) = match ip_type {
            IP_TYPE_UDP4 | IP_TYPE_TCP4 => {
                let o: [u8; 4] = r.array("packed node IPv4 address")?;
                (transport_of(ip_type), IpAddr::V4(Ipv4Addr::from(o)))
            }
            IP_TYPE_UDP6 | IP_TYPE_TCP6 => {
                let o: [u8; 16] = r.array("packed node IPv6 address")?;
                (transport_of(ip_type), IpAddr::V6(Ipv6Addr::from(o)))
            }
            other => {
                return Err(WireError::InvalidValue {
                    what: "packed node ip_type",
                    value: other.into(),
                });
            }
        };
        let port = r.u16_be("packed node port")?;
        let pk: [u8; 32] = r.array("packed node public key")?;
        Ok(Self {
            transport,
            // An IPv4-mapped IPv6 address means that IPv4 address (c-toxcore normalizes likewise).
            addr: normalize(SocketAddr::new(ip, port)),
            public_key: PublicKey(pk),
        })
    }
}

fn transport_of(ip_type: u8) -> Transport {
    if ip_type >= IP_TYPE_TCP4 {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// Turns an IPv4-mapped IPv6 socket address (`::ffff:a.b.c.d`) into plain IPv4, as c-toxcore does
/// on receipt; other addresses are returned unchanged.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Whether `ip` is a LAN address in c-toxcore's sense (`LAN_discovery.c` `ip_is_lan`): loopback,
/// RFC 1918, link-local 169.254/16 (third byte neither 0 nor 255), CGNAT 100.64/10, IPv6 loopback,
/// link-local fe80::/10 and the all-nodes multicast groups; IPv4-mapped forms count as their IPv4.
///
/// LAN addresses are only handed to LAN requesters, and only LAN sources may use LAN discovery.
pub fn ip_is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 127
                || o[0] == 10
                || (o[0] == 172 && (16..=31).contains(&o[1]))
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 169 && o[1] == 254 && o[2] != 0 && o[2] != 255)
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_is_lan(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || (s[0] & 0xffc0) == 0xfe80
                || (matches!(s[0], 0xff00..=0xff02) && s[1..7].iter().all(|&x| x == 0) && s[7] == 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_spec() {
        let pk = PublicKey([9; 32]);
        let v4 = PackedNode::udp("1.2.3.4:33445".parse().expect("addr"), pk);
        let v6 = PackedNode::udp("[2001:db8::1]:33445".parse().expect("addr"), pk);
        let mut b = Vec::new();
        v4.encode(&mut b);
        assert_eq!(b.len(), 39);
        assert_eq!(&b[..7], &[2, 1, 2, 3, 4, 0x82, 0xa5]);
        b.clear();
        v6.encode(&mut b);
        assert_eq!(b.len(), 51);
        assert_eq!(b[0], 10);
    }

    #[test]
    fn mapped_is_packed_as_v4() {
        let n = PackedNode::udp(
            "[::ffff:127.0.0.1]:1".parse().expect("addr"),
            PublicKey([0; 32]),
        );
        let mut b = Vec::new();
        n.encode(&mut b);
        assert_eq!(b.len(), 39);
        let back = PackedNode::decode(&mut Reader::new(&b)).expect("decode");
        assert_eq!(
            back.addr,
            "127.0.0.1:1".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn mapped_v6_on_the_wire_decodes_as_v4() {
        // Found by the dht_payloads fuzz target: type 10 carrying ::ffff:a.b.c.d.
        let mut b = vec![IP_TYPE_UDP6];
        b.extend_from_slice(
            &"::ffff:255.255.10.10"
                .parse::<Ipv6Addr>()
                .expect("ip")
                .octets(),
        );
        b.extend_from_slice(&[0xff, 0x28]);
        b.extend_from_slice(&[7; 32]);
        let n = PackedNode::decode(&mut Reader::new(&b)).expect("decode");
        assert_eq!(
            n.addr,
            "255.255.10.10:65320".parse::<SocketAddr>().expect("addr")
        );
        let mut again = Vec::new();
        n.encode(&mut again);
        assert_eq!(
            PackedNode::decode(&mut Reader::new(&again)).expect("decode"),
            n
        );
    }

    #[test]
    fn lan_ranges() {
        for lan in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
        ] {
            assert!(ip_is_lan(lan.parse().expect("ip")), "{lan}");
        }
        for wan in [
            "8.8.8.8",
            "172.32.0.1",
            "169.254.0.1",
            "2001:db8::1",
            "100.128.0.1",
        ] {
            assert!(!ip_is_lan(wan.parse().expect("ip")), "{wan}");
        }
    }
}
