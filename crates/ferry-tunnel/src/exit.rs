//! Exit nodes (issue 7 item 2, seed 003): the sans-IO half. An exit is a ferry node that writes
//! its clients' IPv4/IPv6 packets to its TUN device, where the kernel forwards them out of the
//! uplink with NAT (the daemon, `ferry-daemon/src/exit.rs`, sets that up with iptables); the
//! answers come back on the TUN device and go to the client that owns the destination address.
//!
//! This module holds what needs no I/O:
//! - [`IpPacket::parse`]: IPv4/IPv6 header + TCP/UDP ports, never panics.
//! - [`ExitPolicy`]: allowed destinations (CIDR, protocol, port ranges), checked per packet.
//! - [`ExitControl`]: the address request/assignment control messages (lossless packet
//!   [`EXIT_CONTROL_PACKET_ID`]).
//! - [`ExitTable`]: the address pool (IPv4 from [`CLIENT_POOL_V4`], IPv6 = the client's mesh
//!   address) and the return routing table destination address → client key, capped at
//!   [`MAX_EXIT_CLIENTS`].
//! - [`ExitClient`]: the client's view (its exit, its assigned addresses) deciding which TUN
//!   packets go to the exit and which packets from the exit may be written to the TUN.
//!
//! # Addresses
//! IPv4: the exit's TUN device has [`EXIT_GATEWAY_V4`] (`100.64.0.1/10`, RFC 6598 shared address
//! space, so it never clashes with RFC 1918 LANs); clients get `100.64.0.2`, `100.64.0.3`, … (a
//! pool of [`POOL_SIZE`] addresses). IPv6: a client's source is its own mesh address
//! ([`crate::mesh_address`]), which the exit already routes to its TUN device (the mesh prefix
//! route), so the exit needs no IPv6 pool.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;

use crate::{TUNNEL_MTU, is_mesh_address, mesh_address};

/// net_crypto lossless custom packet id of exit control messages: 170 (0xAA), inside the custom
/// lossless range 160..=191 (`PACKET_ID_RANGE_LOSSLESS_CUSTOM_START..END`, c-toxcore
/// `Messenger.h`; [`ferry_wire::messenger::CUSTOM_LOSSLESS`]). No other ferry packet uses it;
/// c-toxcore hands it to `tox_callback_friend_lossless_packet`, which clients without a tunnel
/// ignore.
pub const EXIT_CONTROL_PACKET_ID: u8 = 170;

/// The exit's own address on its TUN device: `100.64.0.1`, prefix [`CLIENT_POOL_V4_LEN`].
pub const EXIT_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The IPv4 client pool `100.64.0.0/10` (RFC 6598).
pub const CLIENT_POOL_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Prefix length of [`CLIENT_POOL_V4`], bits (10).
pub const CLIENT_POOL_V4_LEN: u8 = 10;
/// Most clients an exit holds addresses for: 4096. Past it the least recently active client idle
/// for ≥ [`CLIENT_IDLE_EVICT`] is evicted, else the request is refused.
pub const MAX_EXIT_CLIENTS: usize = 4096;
/// Addresses handed out: `100.64.0.2 ..= 100.64.0.2 + POOL_SIZE − 1` (16384, 4 × the client cap,
/// so a freed address is not reused at once).
pub const POOL_SIZE: u32 = 4 * MAX_EXIT_CLIENTS as u32;
/// A client idle this long (no packet either way) may be evicted when the table is full: 60 s.
pub const CLIENT_IDLE_EVICT: Duration = Duration::from_secs(60);
/// Most rules in an [`ExitPolicy`]: 1024.
pub const MAX_POLICY_RULES: usize = 1024;
/// Most port ranges in one [`PolicyRule`]: 64.
pub const MAX_PORT_RANGES: usize = 64;
/// Most IPv6 extension headers [`IpPacket::parse`] walks before giving up on ports: 8.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// IP protocol numbers used here (IANA).
pub mod proto {
    /// ICMP (1).
    pub const ICMP: u8 = 1;
    /// TCP (6).
    pub const TCP: u8 = 6;
    /// UDP (17).
    pub const UDP: u8 = 17;
    /// ICMPv6 (58).
    pub const ICMPV6: u8 = 58;
}

/// Why an exit (or an exit client) dropped a packet; each has a counter in [`ExitCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExitDrop {
    /// Truncated, longer than [`crate::TUNNEL_MTU`], a length field that does not match, or a
    /// version that is neither 4 nor 6.
    #[error("malformed IP packet")]
    Malformed,
    /// From a client: the source is not an address the exit assigned to that client. To a
    /// client: the source is not the exit, or the destination is not ours.
    #[error("source address not assigned to the sender")]
    BadSource,
    /// The exit policy forbids the destination (address, protocol or port).
    #[error("forbidden by exit policy")]
    Policy,
    /// From a client that has no address (never asked, or evicted).
    #[error("client has no address")]
    NoClient,
    /// Return traffic for an address no client holds.
    #[error("no client for destination")]
    NoRoute,
}

/// Per-reason drop counters of an exit or exit client, plus forwarded packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounters {
    /// Client → uplink packets written to the TUN device (exit) or sent to the exit (client).
    pub forwarded: u64,
    /// Uplink → client packets sent into the mesh (exit) or written to the TUN (client).
    pub returned: u64,
    /// Dropped: [`ExitDrop::Malformed`].
    pub drop_malformed: u64,
    /// Dropped: [`ExitDrop::BadSource`].
    pub drop_bad_source: u64,
    /// Dropped: [`ExitDrop::Policy`].
    pub drop_policy: u64,
    /// Dropped: [`ExitDrop::NoClient`].
    pub drop_no_client: u64,
    /// Dropped: [`ExitDrop::NoRoute`].
    pub drop_no_route: u64,
}

impl ExitCounters {
    /// Counts a drop.
    pub fn count_drop(&mut self, r: ExitDrop) {
        let c = match r {
            ExitDrop::Malformed => &mut self.drop_malformed,
            ExitDrop::BadSource => &mut self.drop_bad_source,
            ExitDrop::Policy => &mut self.drop_policy,
            ExitDrop::NoClient => &mut self.drop_no_client,
            ExitDrop::NoRoute => &mut self.drop_no_route,
        };
        *c += 1;
    }

    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.drop_malformed
            + self.drop_bad_source
            + self.drop_policy
            + self.drop_no_client
            + self.drop_no_route
    }
}

/// What the exit looks at in an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (IPv4 protocol field; IPv6: the first next header past the extension
    /// headers walked, or the last one seen if more than [`MAX_EXTENSION_HEADERS`]).
    pub protocol: u8,
    /// TCP/UDP (source, destination) ports; `None` for other protocols, for IPv4 fragments past
    /// the first, for IPv6 fragments, and when the transport header is truncated.
    pub ports: Option<(u16, u16)>,
}

impl IpPacket {
    /// Parses a whole IPv4 (RFC 791) or IPv6 (RFC 8200) packet of at most
    /// [`crate::TUNNEL_MTU`] bytes. Checks exactly: IPv4 `IHL ≥ 5`, `IHL·4 ≤ total length ==
    /// packet length`; IPv6 `40 + payload length == packet length`. Never panics.
    ///
    /// # Errors
    /// [`ExitDrop::Malformed`].
    pub fn parse(p: &[u8]) -> Result<Self, ExitDrop> {
        if p.len() > TUNNEL_MTU {
            return Err(ExitDrop::Malformed);
        }
        match p.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(p),
            Some(6) => Self::parse_v6(p),
            _ => Err(ExitDrop::Malformed),
        }
    }

    fn parse_v4(p: &[u8]) -> Result<Self, ExitDrop> {
        if p.len() < 20 {
            return Err(ExitDrop::Malformed);
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if ihl < 20 || total != p.len() || ihl > total {
            return Err(ExitDrop::Malformed);
        }
        let frag_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
        let protocol = p[9];
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let ports = if frag_offset == 0 {
            ports_at(p, ihl, protocol)
        } else {
            None
        };
        Ok(Self {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            protocol,
            ports,
        })
    }

    fn parse_v6(p: &[u8]) -> Result<Self, ExitDrop> {
        let h = crate::Ipv6Header::parse(p).map_err(|_| ExitDrop::Malformed)?;
        let mut next = h.next_header;
        let mut off = crate::IPV6_HEADER_SIZE;
        let mut fragmented = false;
        for _ in 0..MAX_EXTENSION_HEADERS {
            match next {
                // Hop-by-hop, routing, destination options: length in 8-octet units past 8.
                0 | 43 | 60 => {
                    let (Some(&n), Some(&len)) = (p.get(off), p.get(off + 1)) else {
                        break;
                    };
                    next = n;
                    off += 8 + usize::from(len) * 8;
                }
                // Fragment header: 8 bytes; ports are not trusted in fragments.
                44 => {
                    let Some(&n) = p.get(off) else { break };
                    next = n;
                    off += 8;
                    fragmented = true;
                }
                _ => break,
            }
        }
        Ok(Self {
            src: IpAddr::V6(h.src),
            dst: IpAddr::V6(h.dst),
            protocol: next,
            ports: if fragmented {
                None
            } else {
                ports_at(p, off, next)
            },
        })
    }
}

fn ports_at(p: &[u8], off: usize, protocol: u8) -> Option<(u16, u16)> {
    if protocol != proto::TCP && protocol != proto::UDP {
        return None;
    }
    let b = p.get(off..off.checked_add(4)?)?;
    Some((
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ))
}

/// An address prefix, IPv4 or IPv6 (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a /32 or
/// /128). Host bits past the prefix are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length, bits (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub len: u8,
}

/// A policy file or CIDR that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

impl std::str::FromStr for Cidr {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError(format!("bad CIDR {s:?}"));
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    /// Whether `ip` is inside (never across families).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & m == u32::from(*a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & m == u128::from(*a) & m
            }
            _ => false,
        }
    }

    /// The default route of `addr`'s family (`0.0.0.0/0` or `::/0`).
    pub fn is_default(&self) -> bool {
        self.len == 0
    }

    /// `0.0.0.0/0` as `0.0.0.0/1` + `128.0.0.0/1` (and `::/0` as `::/1` + `8000::/1`), which
    /// win over a pre-existing default route by being longer; other prefixes unchanged.
    pub fn split_default(&self) -> Vec<Self> {
        if !self.is_default() {
            return vec![*self];
        }
        match self.addr {
            IpAddr::V4(_) => vec![
                Self {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    len: 1,
                },
                Self {
                    addr: IpAddr::V4(Ipv4Addr::new(128, 0, 0, 0)),
                    len: 1,
                },
            ],
            IpAddr::V6(_) => vec![
                Self {
                    addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    len: 1,
                },
                Self {
                    addr: IpAddr::V6(Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0)),
                    len: 1,
                },
            ],
        }
    }
}

/// The protocol a [`PolicyRule`] matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyProto {
    /// Any protocol.
    Any,
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// ICMP or ICMPv6 only.
    Icmp,
}

impl std::str::FromStr for PolicyProto {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "" => Ok(Self::Any),
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" | "icmpv6" => Ok(Self::Icmp),
            _ => Err(PolicyError(format!(
                "bad protocol {s:?} (any, tcp, udp, icmp)"
            ))),
        }
    }
}

/// One allowed destination: a prefix, a protocol, and destination port ranges (inclusive; empty
/// = every port). A rule with port ranges matches only TCP/UDP packets whose ports are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// Destination prefix.
    pub cidr: Cidr,
    /// Protocol.
    pub protocol: PolicyProto,
    /// Destination port ranges `(first, last)`, at most [`MAX_PORT_RANGES`].
    pub ports: Vec<(u16, u16)>,
}

impl PolicyRule {
    /// Builds a rule from the policy file's strings: `cidr`, `protocol` (`any`/`tcp`/`udp`/
    /// `icmp`), `ports` like `"22, 80, 8000-8100"`.
    ///
    /// # Errors
    /// A field does not parse, a range is reversed, too many ranges.
    pub fn parse(cidr: &str, protocol: &str, ports: &str) -> Result<Self, PolicyError> {
        let cidr: Cidr = cidr.parse()?;
        let protocol: PolicyProto = protocol.parse()?;
        let mut ranges = Vec::new();
        for part in ports.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || PolicyError(format!("bad port range {part:?}"));
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            ranges.push((a, b));
        }
        if ranges.len() > MAX_PORT_RANGES {
            return Err(PolicyError(format!(
                "more than {MAX_PORT_RANGES} port ranges in one rule"
            )));
        }
        if !ranges.is_empty() && matches!(protocol, PolicyProto::Icmp) {
            return Err(PolicyError("ICMP rules take no ports".into()));
        }
        Ok(Self {
            cidr,
            protocol,
            ports: ranges,
        })
    }

    /// Whether the packet matches.
    pub fn matches(&self, p: &IpPacket) -> bool {
        if !self.cidr.contains(&p.dst) {
            return false;
        }
        let proto_ok = match self.protocol {
            PolicyProto::Any => true,
            PolicyProto::Tcp => p.protocol == proto::TCP,
            PolicyProto::Udp => p.protocol == proto::UDP,
            PolicyProto::Icmp => p.protocol == proto::ICMP || p.protocol == proto::ICMPV6,
        };
        if !proto_ok {
            return false;
        }
        if self.ports.is_empty() {
            return true;
        }
        p.ports
            .is_some_and(|(_, d)| self.ports.iter().any(|&(a, b)| a <= d && d <= b))
    }
}

/// The exit's policy: with no policy file every destination is allowed ([`ExitPolicy::allow_all`]);
/// with one, only destinations matching one of its rules (deny by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitPolicy {
    /// Allow packets no rule matches.
    pub default_allow: bool,
    /// Allowed destinations, at most [`MAX_POLICY_RULES`].
    pub rules: Vec<PolicyRule>,
}

impl ExitPolicy {
    /// Everything allowed.
    pub fn allow_all() -> Self {
        Self {
            default_allow: true,
            rules: Vec::new(),
        }
    }

    /// Only `rules` allowed.
    ///
    /// # Errors
    /// More than [`MAX_POLICY_RULES`] rules.
    pub fn allow_only(rules: Vec<PolicyRule>) -> Result<Self, PolicyError> {
        if rules.len() > MAX_POLICY_RULES {
            return Err(PolicyError(format!(
                "more than {MAX_POLICY_RULES} rules in the exit policy"
            )));
        }
        Ok(Self {
            default_allow: false,
            rules,
        })
    }

    /// Whether the packet may leave through the exit.
    pub fn allows(&self, p: &IpPacket) -> bool {
        self.default_allow || self.rules.iter().any(|r| r.matches(p))
    }
}

/// Exit control messages, carried in a net_crypto lossless custom packet (reliable, in order):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | [`EXIT_CONTROL_PACKET_ID`] (170) |
/// | 1 | 1 | type: 1 = request, 2 = assign, 3 = refuse, 4 = release |
/// | 2 | … | body |
///
/// Bodies: request and release: none (2 bytes in all). Assign (24 bytes in all): IPv4 address
/// (4), IPv4 prefix length (1, = [`CLIENT_POOL_V4_LEN`]), IPv6 address (16, the client's mesh
/// address), IPv6 prefix length (1, 128). Refuse (3 bytes): reason (1): 1 = not an exit,
/// 2 = full. Client → exit: request, release. Exit → client: assign, refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitControl {
    /// Client asks for addresses.
    Request,
    /// Exit's answer: the client's tunnel addresses.
    Assign {
        /// IPv4 address.
        v4: Ipv4Addr,
        /// IPv4 prefix length, bits.
        v4_len: u8,
        /// IPv6 address.
        v6: Ipv6Addr,
        /// IPv6 prefix length, bits.
        v6_len: u8,
    },
    /// Exit refuses (reason code, see the table).
    Refuse(u8),
    /// Client gives its addresses back.
    Release,
}

/// [`ExitControl::Refuse`] reason: this node is not an exit.
pub const REFUSE_NOT_EXIT: u8 = 1;
/// [`ExitControl::Refuse`] reason: the client table is full.
pub const REFUSE_FULL: u8 = 2;

impl ExitControl {
    /// Encodes with the packet id first (the layout in the type docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![EXIT_CONTROL_PACKET_ID];
        match self {
            Self::Request => v.push(1),
            Self::Assign {
                v4,
                v4_len,
                v6,
                v6_len,
            } => {
                v.push(2);
                v.extend_from_slice(&v4.octets());
                v.push(*v4_len);
                v.extend_from_slice(&v6.octets());
                v.push(*v6_len);
            }
            Self::Refuse(r) => v.extend_from_slice(&[3, *r]),
            Self::Release => v.push(4),
        }
        v
    }

    /// Decodes a whole packet (id byte first), exact lengths.
    ///
    /// # Errors
    /// Wrong id, unknown type, wrong length, prefix length out of range.
    pub fn decode(d: &[u8]) -> Result<Self, PolicyError> {
        let bad = || PolicyError("bad exit control message".into());
        match d {
            [EXIT_CONTROL_PACKET_ID, 1] => Ok(Self::Request),
            [EXIT_CONTROL_PACKET_ID, 4] => Ok(Self::Release),
            [EXIT_CONTROL_PACKET_ID, 3, r] => Ok(Self::Refuse(*r)),
            [EXIT_CONTROL_PACKET_ID, 2, rest @ ..] if rest.len() == 22 => {
                let v4 = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
                let v4_len = rest[4];
                let mut a = [0u8; 16];
                a.copy_from_slice(&rest[5..21]);
                let v6_len = rest[21];
                if v4_len > 32 || v6_len > 128 {
                    return Err(bad());
                }
                Ok(Self::Assign {
                    v4,
                    v4_len,
                    v6: Ipv6Addr::from(a),
                    v6_len,
                })
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Client {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    last_active: Instant,
}

/// The exit's client table: address pool and return routes (destination address → client
/// key). Capped at [`MAX_EXIT_CLIENTS`]; eviction: the least recently active client idle for
/// ≥ [`CLIENT_IDLE_EVICT`], when a new client asks and the table is full.
#[derive(Clone, Debug)]
pub struct ExitTable {
    policy: ExitPolicy,
    by_key: HashMap<PublicKey, Client>,
    by_v4: HashMap<Ipv4Addr, PublicKey>,
    by_v6: HashMap<Ipv6Addr, PublicKey>,
    cursor: u32,
    /// Counters.
    pub counters: ExitCounters,
}

impl ExitTable {
    /// An empty table enforcing `policy`.
    pub fn new(policy: ExitPolicy) -> Self {
        Self {
            policy,
            by_key: HashMap::new(),
            by_v4: HashMap::new(),
            by_v6: HashMap::new(),
            cursor: 0,
            counters: ExitCounters::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &ExitPolicy {
        &self.policy
    }

    /// Number of clients with addresses.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No clients.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Clients and their (IPv4, IPv6) addresses, in no particular order.
    pub fn clients(&self) -> impl Iterator<Item = (&PublicKey, Ipv4Addr, Ipv6Addr)> {
        self.by_key.iter().map(|(k, c)| (k, c.v4, c.v6))
    }

    /// Handles a control message from friend `from`; returns the answer to send, if any.
    pub fn on_control(
        &mut self,
        now: Instant,
        from: PublicKey,
        msg: ExitControl,
    ) -> Option<ExitControl> {
        match msg {
            ExitControl::Request => Some(match self.assign(now, from) {
                Some((v4, v6)) => ExitControl::Assign {
                    v4,
                    v4_len: CLIENT_POOL_V4_LEN,
                    v6,
                    v6_len: 128,
                },
                None => ExitControl::Refuse(REFUSE_FULL),
            }),
            ExitControl::Release => {
                self.release(&from);
                None
            }
            ExitControl::Assign { .. } | ExitControl::Refuse(_) => None,
        }
    }

    /// The addresses of `key` (the same ones again if it has some); `None` when full and no
    /// client can be evicted.
    pub fn assign(&mut self, now: Instant, key: PublicKey) -> Option<(Ipv4Addr, Ipv6Addr)> {
        if let Some(c) = self.by_key.get_mut(&key) {
            c.last_active = now;
            return Some((c.v4, c.v6));
        }
        if self.by_key.len() >= MAX_EXIT_CLIENTS {
            let victim = self
                .by_key
                .iter()
                .filter(|(_, c)| now.saturating_duration_since(c.last_active) >= CLIENT_IDLE_EVICT)
                .min_by_key(|(_, c)| c.last_active)
                .map(|(k, _)| *k)?;
            self.release(&victim);
        }
        let v6 = mesh_address(&key);
        if self.by_v6.contains_key(&v6) {
            return None;
        }
        let base = u32::from(EXIT_GATEWAY_V4) + 1;
        let mut v4 = None;
        for _ in 0..POOL_SIZE {
            let a = Ipv4Addr::from(base + self.cursor);
            self.cursor = (self.cursor + 1) % POOL_SIZE;
            if !self.by_v4.contains_key(&a) {
                v4 = Some(a);
                break;
            }
        }
        let v4 = v4?;
        self.by_key.insert(
            key,
            Client {
                v4,
                v6,
                last_active: now,
            },
        );
        self.by_v4.insert(v4, key);
        self.by_v6.insert(v6, key);
        Some((v4, v6))
    }

    /// Forgets `key`'s addresses; returns whether it had some.
    pub fn release(&mut self, key: &PublicKey) -> bool {
        match self.by_key.remove(key) {
            Some(c) => {
                self.by_v4.remove(&c.v4);
                self.by_v6.remove(&c.v6);
                true
            }
            None => false,
        }
    }

    /// A packet from client `from` to go out of the uplink: it must parse, come from an
    /// address assigned to `from`, and be allowed by the policy. Counts the outcome.
    ///
    /// # Errors
    /// [`ExitDrop::Malformed`], [`ExitDrop::NoClient`], [`ExitDrop::BadSource`],
    /// [`ExitDrop::Policy`].
    pub fn check_from_client(
        &mut self,
        now: Instant,
        from: &PublicKey,
        packet: &[u8],
    ) -> Result<IpPacket, ExitDrop> {
        let r = self.check_from_client_inner(now, from, packet);
        match r {
            Ok(_) => self.counters.forwarded += 1,
            Err(e) => self.counters.count_drop(e),
        }
        r
    }

    fn check_from_client_inner(
        &mut self,
        now: Instant,
        from: &PublicKey,
        packet: &[u8],
    ) -> Result<IpPacket, ExitDrop> {
        let p = IpPacket::parse(packet)?;
        let c = self.by_key.get_mut(from).ok_or(ExitDrop::NoClient)?;
        let own = match p.src {
            IpAddr::V4(a) => a == c.v4,
            IpAddr::V6(a) => a == c.v6,
        };
        if !own {
            return Err(ExitDrop::BadSource);
        }
        // The exit forwards to the outside world only: never back into the mesh prefix or to
        // another client's tunnel address.
        let inside = match p.dst {
            IpAddr::V4(a) => Cidr {
                addr: IpAddr::V4(CLIENT_POOL_V4),
                len: CLIENT_POOL_V4_LEN,
            }
            .contains(&IpAddr::V4(a)),
            IpAddr::V6(a) => is_mesh_address(&a),
        };
        if inside || !self.policy.allows(&p) {
            return Err(ExitDrop::Policy);
        }
        c.last_active = now;
        Ok(p)
    }

    /// The client a packet read from the exit's TUN device (return traffic) goes to: the owner
    /// of its destination address. Counts the outcome.
    ///
    /// # Errors
    /// [`ExitDrop::Malformed`], [`ExitDrop::NoRoute`].
    pub fn route_to_client(&mut self, now: Instant, packet: &[u8]) -> Result<PublicKey, ExitDrop> {
        let r = IpPacket::parse(packet).and_then(|p| {
            match p.dst {
                IpAddr::V4(a) => self.by_v4.get(&a),
                IpAddr::V6(a) => self.by_v6.get(&a),
            }
            .copied()
            .ok_or(ExitDrop::NoRoute)
        });
        match r {
            Ok(k) => {
                self.counters.returned += 1;
                if let Some(c) = self.by_key.get_mut(&k) {
                    c.last_active = now;
                }
            }
            Err(e) => self.counters.count_drop(e),
        }
        r
    }

    /// Whether `addr` is a client's (IPv4 or IPv6) address.
    pub fn is_client_address(&self, addr: &IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.by_v4.contains_key(a),
            IpAddr::V6(a) => self.by_v6.contains_key(a),
        }
    }
}

/// A client's side of an exit: which TUN packets go to the exit (anything IPv4 from our
/// assigned address, anything IPv6 from our mesh address to a non-mesh destination) and which
/// packets from the exit may be written to our TUN device (from the exit's session, to our
/// addresses).
#[derive(Clone, Debug)]
pub struct ExitClient {
    /// The exit's long-term key.
    pub exit: PublicKey,
    /// Our addresses, once assigned: (IPv4, IPv4 prefix length, IPv6).
    pub assigned: Option<(Ipv4Addr, u8, Ipv6Addr)>,
    /// Counters.
    pub counters: ExitCounters,
    /// Reached through an anonymous circuit (`tunnel up --via`): the exit does not know our
    /// long-term key, so it assigns the mesh address of a per-circuit pseudonym as our IPv6
    /// address instead of our own.
    pub pseudonymous: bool,
}

impl ExitClient {
    /// Not yet assigned.
    pub fn new(exit: PublicKey) -> Self {
        Self {
            exit,
            assigned: None,
            counters: ExitCounters::default(),
            pseudonymous: false,
        }
    }

    /// Not yet assigned, reached through an anonymous circuit ([`ExitClient::pseudonymous`]).
    pub fn new_pseudonymous(exit: PublicKey) -> Self {
        Self {
            pseudonymous: true,
            ..Self::new(exit)
        }
    }

    /// Takes an [`ExitControl::Assign`] from `from`; returns whether it was accepted (from our
    /// exit, and the IPv6 address is our own mesh address `own_v6`, or, when
    /// [`ExitClient::pseudonymous`], any address in the mesh prefix).
    pub fn on_assign(&mut self, from: &PublicKey, msg: ExitControl, own_v6: Ipv6Addr) -> bool {
        match msg {
            ExitControl::Assign { v4, v4_len, v6, .. }
                if *from == self.exit
                    && (v6 == own_v6 || (self.pseudonymous && is_mesh_address(&v6))) =>
            {
                self.assigned = Some((v4, v4_len, v6));
                true
            }
            _ => false,
        }
    }

    /// Whether a packet read from our TUN device goes to the exit: IPv4 from our assigned
    /// address, or IPv6 from our mesh address to a destination outside the mesh prefix.
    /// Returns `None` for packets that are not the exit's business (mesh traffic), `Some(Err)`
    /// for exit traffic to drop.
    pub fn route_outbound(&mut self, packet: &[u8]) -> Option<Result<PublicKey, ExitDrop>> {
        let p = match IpPacket::parse(packet) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if let IpAddr::V6(d) = p.dst
            && is_mesh_address(&d)
        {
            return None;
        }
        let r = match (self.assigned, p.src) {
            (None, _) => Err(ExitDrop::NoClient),
            (Some((v4, _, _)), IpAddr::V4(s)) if s == v4 => Ok(self.exit),
            (Some((_, _, v6)), IpAddr::V6(s)) if s == v6 => Ok(self.exit),
            _ => Err(ExitDrop::BadSource),
        };
        match r {
            Ok(_) => self.counters.forwarded += 1,
            Err(e) => self.counters.count_drop(e),
        }
        Some(r)
    }

    /// Whether a packet from friend `from` is exit return traffic for us: `None` when it is not
    /// from the exit or is plain mesh traffic (source in the mesh prefix); `Some(Ok)` to write
    /// it to the TUN device; `Some(Err)` to drop it.
    pub fn check_inbound(
        &mut self,
        from: &PublicKey,
        packet: &[u8],
    ) -> Option<Result<(), ExitDrop>> {
        if *from != self.exit {
            return None;
        }
        let p = match IpPacket::parse(packet) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if let IpAddr::V6(s) = p.src
            && is_mesh_address(&s)
        {
            return None;
        }
        let r = match (self.assigned, p.dst) {
            (None, _) => Err(ExitDrop::NoClient),
            (Some((v4, _, _)), IpAddr::V4(d)) if d == v4 => Ok(()),
            (Some((_, _, v6)), IpAddr::V6(d)) if d == v6 => Ok(()),
            _ => Err(ExitDrop::BadSource),
        };
        match r {
            Ok(()) => self.counters.returned += 1,
            Err(e) => self.counters.count_drop(e),
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests;
