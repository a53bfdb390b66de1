//! Sans-IO logic of ferry's IP tunnel (issue 7, seeds 000/003), first slice: mesh addresses,
//! IPv6 header checks and the routing decision between the TUN device and friends' net_crypto
//! sessions. No sockets, clocks or devices here; the daemon (`ferry-daemon/src/tunnel.rs`) owns
//! the TUN device and the node. Exit nodes (address pool, policy, control messages, return
//! routing) are in [`exit`].
//!
//! # net_crypto custom packet ids the tunnel uses
//! | id | class | what |
//! |---|---|---|
//! | 222 | lossy | one-hop tunnel frame ([`TUNNEL_PACKET_ID`]) |
//! | 230 | lossy | multi-hop circuit data cell ([`circuit::CIRCUIT_DATA_ID`]) |
//! | 180 | lossless | circuit CREATE/CREATED/DESTROY ([`circuit::CIRCUIT_CONTROL_ID`]) |
//! | 170 | lossless | exit control: address request/assignment ([`exit::EXIT_CONTROL_PACKET_ID`]) |
//!
//! # Mesh addresses
//! Every node has one IPv6 address in [`MESH_PREFIX`] (`fd54:6f78::/32`, a ULA prefix: `fd` =
//! locally assigned, then `54 6f 78` = ASCII "Tox"), derived from its long-term (real) public key
//! as Yggdrasil (200::/7) and cjdns (fc00::/8) derive theirs:
//!
//! | bytes | content |
//! |---|---|
//! | 0..4 | `fd 54 6f 78` ([`MESH_PREFIX`]) |
//! | 4..16 | first 12 bytes of `SHA-512("ferry mesh address v1" ‖ long-term public key (32))` |
//!
//! **Ownership.** The address is a name, not a credential: anyone can compute any key's address.
//! What makes "a packet to that address can only be read by the key's owner" true is the routing
//! rule, not the hash: the daemon sends a packet for mesh address *A* only inside the net_crypto
//! session of the friend whose key hashes to *A* ([`MeshRouter::route_outbound`]); that session
//! was authenticated to that long-term key in the handshake (`tox-protocol.md` §net_crypto), and
//! its payload is encrypted to it. Inbound, a packet is accepted only if its source address is
//! the mesh address of the key of the session it arrived on ([`MeshRouter::check_inbound`]), so
//! a friend cannot spoof another node's address.
//!
//! **Collisions.** 96 hash bits: a random collision between two given keys has probability
//! 2⁻⁹⁶; among *n* keys ≈ n²/2⁹⁷ (10⁹ keys: ~6·10⁻¹²). A deliberate collision with a chosen
//! victim's address (second preimage) costs ~2⁹⁶ key generations. Even then the attacker gains
//! nothing without being the user's friend: routes exist only for friends, and
//! [`MeshRouter::insert`] refuses a second key for an address already taken (first friend wins),
//! so no packet meant for one friend can be redirected to another.
//!
//! # Data plane
//! One IP packet per net_crypto lossy packet with id [`TUNNEL_PACKET_ID`]: `[0xDE][IP packet]`
//! ([`encode_frame`]). Lossy packets are encrypted with the session's precomputed shared key and
//! nonce counter (no per-packet public-key operation) and are not retransmitted, so TCP inside
//! the tunnel sees plain IP loss semantics. [`TUNNEL_MTU`] = 1372 bytes makes every packet fit.

#![forbid(unsafe_code)]

pub mod circuit;
pub mod exit;
pub mod tap;

use std::collections::HashMap;
use std::net::Ipv6Addr;

use ferry_crypto::{PublicKey, sha512};
use ferry_wire::net_crypto::MAX_CRYPTO_DATA_SIZE;

/// The mesh prefix `fd54:6f78::/32`: the first [`MESH_PREFIX_LEN`] bits of every mesh address.
pub const MESH_PREFIX: [u8; 4] = [0xfd, 0x54, 0x6f, 0x78];
/// Length of [`MESH_PREFIX`] in bits (32).
pub const MESH_PREFIX_LEN: u8 = 32;
/// Domain-separation label hashed before the key in [`mesh_address`].
pub const MESH_ADDRESS_LABEL: &[u8] = b"ferry mesh address v1";

/// net_crypto lossy packet id of tunnel data: 222 (0xDE), inside the custom lossy range
/// 200..=254 (`PACKET_ID_RANGE_LOSSY_CUSTOM_START..END`, c-toxcore `Messenger.h`). c-toxcore's
/// A/V uses 192..=199 only (RTP audio 192, video 193, bandwidth controller 196, toxav
/// `rtp.h`/`bwcontroller.c`), and c-toxcore delivers custom ids to the client's
/// `tox_callback_friend_lossy_packet`, which clients without a tunnel ignore.
pub const TUNNEL_PACKET_ID: u8 = 222;

/// TUN MTU, bytes: 1372. A net_crypto data packet is at most 1400 bytes of UDP payload
/// (`MAX_CRYPTO_PACKET_SIZE`); its overhead is 27 bytes: kind 0x1b (1), nonce low bytes (2),
/// MAC (16), buffer start (4) and packet number (4), leaving 1373 data bytes
/// (`MAX_CRYPTO_DATA_SIZE`), of which 1 is the packet id [`TUNNEL_PACKET_ID`]: 1373 − 1 = 1372.
/// Padding (`(1373 − len) mod 8`) never pushes a packet past 1373. Over IPv6/UDP the outer
/// packet is ≤ 1400 + 8 + 40 = 1448 bytes, under a 1500-byte Ethernet MTU; 1372 ≥ 1280, the
/// IPv6 minimum link MTU (RFC 8200 §5).
pub const TUNNEL_MTU: usize = MAX_CRYPTO_DATA_SIZE - 1;

/// Fixed IPv6 header size, bytes (RFC 8200 §3).
pub const IPV6_HEADER_SIZE: usize = 40;

/// Most routes (friends) a [`MeshRouter`] holds: 4096. Past it [`MeshRouter::insert`] refuses
/// new keys (friends are added by the user, so nothing is evicted silently).
pub const MAX_ROUTES: usize = 4096;

/// The mesh address of a long-term public key (table in the crate docs).
pub fn mesh_address(long_term_key: &PublicKey) -> Ipv6Addr {
    let mut input = [0u8; MESH_ADDRESS_LABEL.len() + 32];
    input[..MESH_ADDRESS_LABEL.len()].copy_from_slice(MESH_ADDRESS_LABEL);
    input[MESH_ADDRESS_LABEL.len()..].copy_from_slice(long_term_key.as_bytes());
    let h = sha512(&input);
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&MESH_PREFIX);
    a[4..].copy_from_slice(&h[..12]);
    Ipv6Addr::from(a)
}

/// Label hashed with a key into a service node's nospam.
pub const SERVICE_NOSPAM_LABEL: &[u8] = b"ferry service nospam v1";

/// The nospam of a **service node** (`ferry up --relay-node` or `--exit-node`): the first 4
/// bytes, big-endian, of SHA-512(`"ferry service nospam v1"` ‖ long-term key (32 bytes)).
///
/// A Tox friend request must carry the receiver's nospam (`tox-protocol.md` §7.1), which
/// normally only its owner hands out. Relays and exits serve anyone, so their nospam is public
/// by construction: anyone who knows the key can compute the full Tox ID
/// ([`service_tox_id`]) and befriend the node, which accepts every request. Tunnel hops and
/// circuits ride on the net_crypto sessions such friendships give.
pub fn service_nospam(long_term_key: &PublicKey) -> u32 {
    let mut input = [0u8; SERVICE_NOSPAM_LABEL.len() + 32];
    input[..SERVICE_NOSPAM_LABEL.len()].copy_from_slice(SERVICE_NOSPAM_LABEL);
    input[SERVICE_NOSPAM_LABEL.len()..].copy_from_slice(long_term_key.as_bytes());
    let h = sha512(&input);
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

/// The Tox ID of a service node: its key with [`service_nospam`] (38 bytes, 76 hex digits).
pub fn service_tox_id(long_term_key: &PublicKey) -> ferry_wire::toxid::ToxId {
    ferry_wire::toxid::ToxId::new(*long_term_key, service_nospam(long_term_key))
}

/// Whether `addr` lies in [`MESH_PREFIX`].
pub fn is_mesh_address(addr: &Ipv6Addr) -> bool {
    addr.octets()[..4] == MESH_PREFIX
}

/// Why a packet was dropped; each has a counter in [`TunnelCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Shorter than 40 bytes, longer than [`TUNNEL_MTU`], or the payload length field does not
    /// match the packet length (jumbograms included).
    #[error("bad length")]
    BadLength,
    /// Not IPv6 (version nibble ≠ 6); IPv4 comes with exit nodes.
    #[error("not IPv6")]
    NotIpv6,
    /// Destination outside [`MESH_PREFIX`] (e.g. link-local router solicitations, multicast).
    #[error("destination not a mesh address")]
    NotMesh,
    /// Outbound: source is not our mesh address. Inbound: source is not the sending friend's
    /// mesh address (spoofed).
    #[error("source address does not belong to the sender")]
    BadSource,
    /// Inbound: destination is not our mesh address.
    #[error("destination is not our address")]
    NotForUs,
    /// Outbound: no friend has this mesh address. Inbound: the sender is not in the table.
    #[error("no route")]
    NoRoute,
    /// Not a tunnel frame (empty, or id ≠ [`TUNNEL_PACKET_ID`]).
    #[error("not a tunnel frame")]
    NotTunnel,
}

/// The fields of a fixed IPv6 header the tunnel looks at (RFC 8200 §3):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 bits | version (6) |
/// | 4 | 2 | payload length, big-endian (bytes after the 40-byte header) |
/// | 6 | 1 | next header |
/// | 7 | 1 | hop limit |
/// | 8 | 16 | source address |
/// | 24 | 16 | destination address |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Header {
    /// Payload length field, bytes.
    pub payload_len: u16,
    /// Next header (protocol) number.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
}

impl Ipv6Header {
    /// Parses the header of a whole packet and checks lengths exactly: `40 ≤ len ≤`
    /// [`TUNNEL_MTU`] and `40 + payload length == len` (so jumbograms, payload length 0 with a
    /// longer packet, are refused). Never panics.
    ///
    /// # Errors
    /// [`DropReason::NotIpv6`], [`DropReason::BadLength`].
    pub fn parse(packet: &[u8]) -> Result<Self, DropReason> {
        let first = *packet.first().ok_or(DropReason::BadLength)?;
        if first >> 4 != 6 {
            return Err(DropReason::NotIpv6);
        }
        if packet.len() < IPV6_HEADER_SIZE || packet.len() > TUNNEL_MTU {
            return Err(DropReason::BadLength);
        }
        let payload_len = u16::from_be_bytes([packet[4], packet[5]]);
        if IPV6_HEADER_SIZE + usize::from(payload_len) != packet.len() {
            return Err(DropReason::BadLength);
        }
        let addr = |off: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&packet[off..off + 16]);
            Ipv6Addr::from(a)
        };
        Ok(Self {
            payload_len,
            next_header: packet[6],
            hop_limit: packet[7],
            src: addr(8),
            dst: addr(24),
        })
    }
}

/// Writes the tunnel frame `[TUNNEL_PACKET_ID][packet]` into `out` (cleared first; reuse one
/// buffer to avoid an allocation per packet).
pub fn encode_frame(packet: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(packet.len() + 1);
    out.push(TUNNEL_PACKET_ID);
    out.extend_from_slice(packet);
}

/// The IP packet inside a tunnel frame (the lossy packet's data, id byte first).
///
/// # Errors
/// [`DropReason::NotTunnel`] when empty or the id is not [`TUNNEL_PACKET_ID`].
pub fn decode_frame(data: &[u8]) -> Result<&[u8], DropReason> {
    match data.split_first() {
        Some((&TUNNEL_PACKET_ID, rest)) => Ok(rest),
        _ => Err(DropReason::NotTunnel),
    }
}

/// Why [`MeshRouter::insert`] refused a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// [`MAX_ROUTES`] reached.
    #[error("route table full ({MAX_ROUTES})")]
    Full,
    /// Another key already has this mesh address (or it is our own).
    #[error("mesh address collision")]
    Collision,
}

/// The routing table: mesh address ↔ friend's long-term key, plus our own address. Capped at
/// [`MAX_ROUTES`]; entries leave only by [`MeshRouter::remove`] (friend removed).
#[derive(Clone, Debug)]
pub struct MeshRouter {
    own_key: PublicKey,
    own_addr: Ipv6Addr,
    by_addr: HashMap<Ipv6Addr, PublicKey>,
    by_key: HashMap<PublicKey, Ipv6Addr>,
}

impl MeshRouter {
    /// An empty table for the node with long-term key `own_key`.
    pub fn new(own_key: PublicKey) -> Self {
        Self {
            own_addr: mesh_address(&own_key),
            own_key,
            by_addr: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// Our mesh address.
    pub fn own_address(&self) -> Ipv6Addr {
        self.own_addr
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// No routes.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every route: (friend's key, its mesh address), in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = (&PublicKey, &Ipv6Addr)> {
        self.by_key.iter()
    }

    /// Whether `key` has a route.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// Adds a route to friend `key` at its mesh address; returns that address (idempotent).
    ///
    /// # Errors
    /// [`RouteError::Collision`] when the address is ours or another key's (first wins);
    /// [`RouteError::Full`] past [`MAX_ROUTES`].
    pub fn insert(&mut self, key: PublicKey) -> Result<Ipv6Addr, RouteError> {
        if let Some(a) = self.by_key.get(&key) {
            return Ok(*a);
        }
        let addr = mesh_address(&key);
        if key == self.own_key || addr == self.own_addr || self.by_addr.contains_key(&addr) {
            return Err(RouteError::Collision);
        }
        if self.by_key.len() >= MAX_ROUTES {
            return Err(RouteError::Full);
        }
        self.by_addr.insert(addr, key);
        self.by_key.insert(key, addr);
        Ok(addr)
    }

    /// Removes friend `key`'s route; returns whether it existed.
    pub fn remove(&mut self, key: &PublicKey) -> bool {
        match self.by_key.remove(key) {
            Some(a) => {
                self.by_addr.remove(&a);
                true
            }
            None => false,
        }
    }

    /// The friend a packet read from the TUN device goes to: checks the header, that the
    /// source is our mesh address and that the destination is a friend's.
    ///
    /// # Errors
    /// Any [`DropReason`] but `NotForUs`/`NotTunnel`.
    pub fn route_outbound(&self, packet: &[u8]) -> Result<PublicKey, DropReason> {
        let h = Ipv6Header::parse(packet)?;
        if !is_mesh_address(&h.dst) {
            return Err(DropReason::NotMesh);
        }
        if h.src != self.own_addr {
            return Err(DropReason::BadSource);
        }
        self.by_addr.get(&h.dst).copied().ok_or(DropReason::NoRoute)
    }

    /// Whether a packet that arrived in friend `from`'s session may be written to the TUN
    /// device: the header is valid, its source is `from`'s mesh address and its destination
    /// ours.
    ///
    /// # Errors
    /// [`DropReason::NoRoute`] (unknown sender), `BadLength`, `NotIpv6`, `BadSource`, `NotForUs`.
    pub fn check_inbound(&self, from: &PublicKey, packet: &[u8]) -> Result<(), DropReason> {
        let h = Ipv6Header::parse(packet)?;
        let addr = self.by_key.get(from).ok_or(DropReason::NoRoute)?;
        if h.src != *addr {
            return Err(DropReason::BadSource);
        }
        if h.dst != self.own_addr {
            return Err(DropReason::NotForUs);
        }
        Ok(())
    }
}

/// Packet and byte counters of one tunnel, each direction, plus drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// IP packets sent to friends.
    pub tx_packets: u64,
    /// IP bytes sent to friends (without the id byte).
    pub tx_bytes: u64,
    /// IP packets received from friends and written to the TUN device.
    pub rx_packets: u64,
    /// IP bytes received and written.
    pub rx_bytes: u64,
    /// Dropped: bad length.
    pub drop_bad_length: u64,
    /// Dropped: not IPv6.
    pub drop_not_ipv6: u64,
    /// Dropped: destination not in the mesh prefix.
    pub drop_not_mesh: u64,
    /// Dropped: source address not the sender's.
    pub drop_bad_source: u64,
    /// Dropped: inbound, not addressed to us.
    pub drop_not_for_us: u64,
    /// Dropped: no route / unknown sender.
    pub drop_no_route: u64,
    /// Dropped: not a tunnel frame.
    pub drop_not_tunnel: u64,
    /// Dropped: the node refused to send (friend offline, congested) or a queue was full.
    pub drop_send: u64,
}

impl TunnelCounters {
    /// Counts a drop.
    pub fn count_drop(&mut self, r: DropReason) {
        let c = match r {
            DropReason::BadLength => &mut self.drop_bad_length,
            DropReason::NotIpv6 => &mut self.drop_not_ipv6,
            DropReason::NotMesh => &mut self.drop_not_mesh,
            DropReason::BadSource => &mut self.drop_bad_source,
            DropReason::NotForUs => &mut self.drop_not_for_us,
            DropReason::NoRoute => &mut self.drop_no_route,
            DropReason::NotTunnel => &mut self.drop_not_tunnel,
        };
        *c += 1;
    }

    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.drop_bad_length
            + self.drop_not_ipv6
            + self.drop_not_mesh
            + self.drop_bad_source
            + self.drop_not_for_us
            + self.drop_no_route
            + self.drop_not_tunnel
            + self.drop_send
    }
}

#[cfg(test)]
mod tests;
