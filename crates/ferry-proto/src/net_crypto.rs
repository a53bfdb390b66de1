//! net_crypto: one encrypted, reliable (lossless) and unreliable (lossy) session per friend, as a
//! sans-IO manager of all sessions of a node, wire- and behaviour-compatible with c-toxcore 0.2.18
//! (`tox-protocol.md` §5; c-toxcore `net_crypto.c`, the retry loop of `friend_connection.c`).
//!
//! # Flow
//!
//! Sessions are keyed by the peer's long-term (real) public key; only registered peers
//! ([`NetCrypto::add_peer`], i.e. friends) get one. Handshakes from other keys are dropped and
//! reported as [`NetCryptoEvent::UnknownPeer`].
//!
//! 1. **Cookie request** (0x18) once the peer's DHT key ([`NetCrypto::set_peer_dht_key`]) and an
//!    address ([`NetCrypto::set_peer_addr`]) are known, boxed between the two DHT keys. Any node
//!    answers any cookie request statelessly with a **cookie response** (0x19): a cookie is our
//!    secretbox of `(time, requester real pk, requester DHT pk)`, valid 15 s.
//! 2. **Handshake** (0x1a) carrying the peer's cookie, boxed between the long-term keys: our base
//!    nonce, our fresh session key, the cookie's hash and a cookie we made for the peer (so the
//!    peer can answer with its own handshake without a cookie request). Cookie requests and
//!    handshakes are resent every 1 s; after 8 sends the attempt is dropped and a new one starts
//!    at once (c-toxcore's `friend_connection` retry loop), as long as the DHT key is known.
//! 3. With both handshakes exchanged the session is *not confirmed*; the first valid **data**
//!    packet (0x1b) makes it **established** ([`NetCryptoEvent::Established`]).
//!
//! TRAP (§5.2): each side picks its own *sending* base nonce and announces it in its handshake;
//! received packets carry the low 16 bits of the sender's nonce and are rebuilt with the
//! 43690/21845 rule ([`ferry_wire::net_crypto::reconstruct_nonce`]).
//!
//! A handshake from a peer whose cookie names a different DHT key than the session's kills and
//! replaces the session (the peer restarted); so does, beyond c-toxcore, a valid handshake with a
//! new session key for an established session (again: the peer restarted and lost its state).
//!
//! # Reliability (lossless packets, ids 16–191)
//!
//! Lossless packets get consecutive u32 numbers and sit in a send buffer (32768 slots) until the
//! peer's `buffer_start` (carried by every data packet: a cumulative ACK) passes them; each
//! number passed is reported as [`NetCryptoEvent::Delivered`] (read receipts). The receiver
//! keeps a receive buffer of the same size, hands packets up strictly in order
//! ([`NetCryptoEvent::Lossless`]) and sends **packet requests** (`[1][distances…]`) naming the
//! numbers it lacks; the sender retransmits requested packets last sent more than one RTT ago and
//! frees the ones the request skips over (received). Lossy packets (192–254), requests and kills
//! carry the sender's next lossless number so the receiver learns of tail losses.
//!
//! Latency: nothing waits for a periodic tick. Data goes out inside [`NetCrypto::send_lossless`]
//! when the congestion controller has a token (it always has for interactive traffic, see
//! below); a receiver acknowledges after [`NetCryptoConfig::ack_delay`] (default 1 ms, so a
//! reply sent meanwhile carries the ACK for free) and asks for gaps at once. Packet requests also
//! go out every 1 s (c-toxcore's `CRYPTO_SEND_PACKET_INTERVAL`, doubling as keepalive), and every
//! `clamp(4 × RTT, 50 ms, 1 s)` while data of ours is unacknowledged, so the peer learns of lost
//! tails quickly.
//!
//! # Congestion control
//!
//! A model-based controller after BBR v1 (Cardwell et al., ACM Queue 2016) in the `cc`
//! submodule, fed only by what c-toxcore's wire format already carries, so c-toxcore peers
//! interoperate unchanged (they see ordinary data packets and packet requests):
//!
//! * **Delivered** packets: slots freed by the peer's `buffer_start` (cumulative ACK) or stepped
//!   over by its packet requests (selective ACK). Every round (`max(srtt, 4 ms)`) the delivery
//!   rate is one sample; the bottleneck bandwidth is the maximum of the last 10.
//! * **RTT** from first sends to the ACK that frees them (Karn's rule); srtt/rttvar per RFC 6298,
//!   min_rtt over 10 s.
//! * **Loss** (RACK, RFC 8985): a packet a request names is resent when a packet sent after it
//!   (minus min_rtt/4 reordering allowance) is known received, or, when nothing sent after it
//!   is known received (a lost tail), when it is older than `2 srtt + 4 rttvar + 5 ms`. Resends go first (the send scan restarts at the lowest
//!   requested slot): fast retransmission straight from packet requests. Random loss does not
//!   lower the rate; a round losing more than 20 % of its packets scales the model by 0.7.
//! * **Sending**: pacing at `gain × bottleneck bandwidth` (token bucket of 32 packets + 2 ms),
//!   at most `cwnd = gain × bandwidth × (min_rtt + 2 ms) + 64` (+ an ACK-aggregation allowance)
//!   packets in flight; Startup at gain 2.89 until the bandwidth stops growing by 25 %/round for
//!   3 rounds or a round loses > 2 %, one Drain round, then the ProbeBw gain cycle 1.25, 0.75,
//!   1 × 6 (0.75 while a round's smallest RTT sample shows a standing queue, which also caps the
//!   aggregation allowance; see the `cc` module).
//! * **Priority packets** — every lossless id except file data (0x52) and custom lossless
//!   packets (160–191), as c-toxcore's `congestion_control = false` sends — leave at once when
//!   nothing is queued ahead of them, window or not (ferry measured a back-to-back chat round trip
//!   of 2.3 ms when messages waited for tokens, 0.08 ms without); their retransmissions are paced.
//! * **Queueing**: packets beyond the window and pacing stay queued (numbered, counted in the
//!   32768-slot send buffer). Lossless packets are delivered in order, so a chat message queued
//!   behind bulk data waits for it: a bulk sender (file transfer) should queue only what
//!   [`NetCrypto::send_budget`] allows (the window plus about 2 ms of pacing), which keeps a chat
//!   message behind at most about one RTT + 2 ms. [`NetCrypto::send_lossless`] fails with
//!   [`NetCryptoError::QueueFull`] only when the send buffer is full.
//!
//! c-toxcore 0.2.18 instead sets a packet rate from the queue drain of the last 1.2 s (×1.25
//! headroom, held after congestion events), which measured 6.1–6.4 MiB/s on loopback (issue 6);
//! ferry's first port of that scheme measured 1.1 MiB/s in `bench/throughput.sh`.
//!
//! # Timeouts
//!
//! c-toxcore's net_crypto never times out an established session itself; its
//! `friend_connection` kills it after 32 s without an alive packet (`FRIEND_CONNECTION_TIMEOUT`).
//! Here the session dies after [`NetCryptoConfig::session_timeout`] (32 s) without any valid
//! data packet; as both sides send a packet request at least every second, only a dead path
//! triggers it. A killed or timed-out session sends a kill packet (id 2) when established.
//!
//! # Caps
//!
//! Registered peers (hence sessions) ≤ [`NetCryptoConfig::max_sessions`] (1024); the address
//! index holds ≤ 2 addresses per session; send and receive buffers hold ≤ 32768 packets each (an
//! authenticated friend can make us buffer up to 32768 × 1373 B ≈ 45 MB, as in c-toxcore);
//! queued transmits and events are capped; shared keys for cookie requests sit in a 256-entry LRU.
//! Tables are ordered maps, so a seeded simulator run replays identically.
//!
//! # Transport
//!
//! Packets are addressed to a [`Path`]: direct UDP, or TCP relays to the peer's DHT key
//! ([`Path::Relay`], only with [`NetCrypto::set_relay_fallback`]). As c-toxcore's
//! `send_packet_to`: while we heard the peer over UDP within 8 s (`UDP_DIRECT_TIMEOUT`) packets
//! go by UDP only; otherwise by relay, and cookie requests, handshakes and, every 4 s, one small
//! (< 96 bytes) data packet also try UDP, so a direct path is found (and preferred) as soon as
//! it works.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{
    KeyPair, MAC_SIZE, Nonce, PrecomputedCache, PrecomputedKey, PublicKey, SymmetricKey,
};
use ferry_wire::kind;
use ferry_wire::net_crypto::{
    CRYPTO_MAX_PADDING, Cookie, CookiePlain, CookieRequest, CookieRequestPayload, CookieResponse,
    CookieResponsePayload, CryptoData, CryptoDataPayload, DATA_NUM_THRESHOLD, DataKind, Handshake,
    HandshakePayload, MAX_CRYPTO_DATA_SIZE, PACKET_ID_KILL, PacketRequest, nonce_add, nonce_low16,
    reconstruct_nonce,
};
use ferry_wire::node::{ip_is_lan, normalize};

use crate::{Destination, Endpoint, Transmit};

mod cc;
use cc::Bbr;

/// Cookie lifetime (`COOKIE_TIMEOUT` = 15 s).
pub const COOKIE_TIMEOUT: Duration = Duration::from_secs(15);
/// Cookie request / handshake resend interval, and the packet request keepalive interval
/// (`CRYPTO_SEND_PACKET_INTERVAL` = 1000 ms).
pub const CRYPTO_SEND_PACKET_INTERVAL: Duration = Duration::from_secs(1);
/// Sends of one cookie request or handshake before the attempt is dropped
/// (`MAX_NUM_SENDPACKET_TRIES` = 8).
pub const MAX_NUM_SENDPACKET_TRIES: u32 = 8;
/// Slots of the send and receive buffers (`CRYPTO_PACKET_BUFFER_SIZE` = 32768).
pub const CRYPTO_PACKET_BUFFER_SIZE: u32 = 32768;
/// An address we heard from within this long counts as direct (`UDP_DIRECT_TIMEOUT` = 8 s).
pub const UDP_DIRECT_TIMEOUT: Duration = Duration::from_secs(8);
/// Session timeout without valid data (c-toxcore `FRIEND_CONNECTION_TIMEOUT` = 32 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(32);
/// RTT assumed before the first sample (`DEFAULT_PING_CONNECTION` = 1000 ms).
pub const DEFAULT_RTT: Duration = Duration::from_secs(1);
/// When nothing is due, [`NetCrypto::poll_timeout`] is this far ahead.
const IDLE: Duration = Duration::from_secs(3600);

/// Configuration of a [`NetCrypto`].
#[derive(Clone, Debug)]
pub struct NetCryptoConfig {
    /// Most registered peers, hence most sessions (cap on [`NetCrypto::add_peer`]).
    pub max_sessions: usize,
    /// Send and receive buffer slots per session (c-toxcore: 32768; at most that).
    pub buffer_slots: u32,
    /// Cookie lifetime (15 s).
    pub cookie_timeout: Duration,
    /// Cookie request / handshake resend interval (1 s).
    pub resend_interval: Duration,
    /// Sends of a cookie request or handshake before the attempt is dropped (8).
    pub max_handshake_tries: u32,
    /// An established or not-confirmed session dies after this long without valid data (32 s).
    pub session_timeout: Duration,
    /// Packet requests (ACK + gaps, keepalive) at least this often (1 s).
    pub request_interval: Duration,
    /// A received lossless packet is acknowledged after at most this long (1 ms) unless a data
    /// packet of ours carries the ACK first.
    pub ack_delay: Duration,
    /// An address counts as direct this long after we last heard from it (8 s).
    pub udp_direct_timeout: Duration,
    /// Most datagrams queued for the driver; beyond, new ones are dropped (and counted).
    pub max_queued_transmits: usize,
    /// Most events queued; beyond, the oldest is dropped (and counted).
    pub max_queued_events: usize,
    /// Peers' DHT keys whose shared key (for cookie requests) is cached.
    pub dht_key_cache_size: usize,
}

impl Default for NetCryptoConfig {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            buffer_slots: CRYPTO_PACKET_BUFFER_SIZE,
            cookie_timeout: COOKIE_TIMEOUT,
            resend_interval: CRYPTO_SEND_PACKET_INTERVAL,
            max_handshake_tries: MAX_NUM_SENDPACKET_TRIES,
            session_timeout: SESSION_TIMEOUT,
            request_interval: CRYPTO_SEND_PACKET_INTERVAL,
            ack_delay: Duration::from_millis(1),
            udp_direct_timeout: UDP_DIRECT_TIMEOUT,
            max_queued_transmits: 16_384,
            max_queued_events: 65_536,
            dht_key_cache_size: 256,
        }
    }
}

/// Where a net_crypto packet goes or came from (`tox-protocol.md` §5.2, §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Path {
    /// Direct UDP to/from this address.
    Udp(SocketAddr),
    /// Through TCP relays to/from the node with this DHT key (the TCP connection layer picks
    /// the relay: linked data, else OOB).
    Relay(PublicKey),
}

/// While relayed, a small data packet also tries UDP this often (`UDP_DIRECT_TIMEOUT` / 2).
pub const RELAYED_UDP_TRY: Duration = Duration::from_secs(4);
/// Data packets below this size may try UDP while relayed (c-toxcore: 96 bytes).
const RELAYED_UDP_TRY_SIZE: usize = 96;

/// The address events report for packets that came over a relay (`0.0.0.0:0`).
pub const RELAY_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Phase of a session (`Crypto_Conn_State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionStatus {
    /// Sending cookie requests.
    CookieRequesting,
    /// Sending handshakes, none received yet.
    HandshakeSent,
    /// Handshakes exchanged, no data received yet.
    NotConfirmed,
    /// Data flowed: the session is up.
    Established,
}

/// A snapshot of one peer's session ([`NetCrypto::session_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionState {
    /// The phase.
    pub status: SessionStatus,
    /// `status == Established`.
    pub established: bool,
    /// The UDP address packets go to now, if any.
    pub addr: Option<SocketAddr>,
    /// Whether we heard from that address within 8 s (c-toxcore "direct connected").
    pub direct: bool,
    /// Not direct, and the peer was heard over a TCP relay within 8 s: packets go by relay.
    pub relayed: bool,
    /// The peer's DHT key this session was made with.
    pub dht_pk: PublicKey,
    /// Lossless packets sent but not yet acknowledged (or not yet sent).
    pub send_queue: u32,
    /// Packets waiting for a gap before them to fill.
    pub recv_queue: u32,
    /// Smallest RTT of the last 10 s (1 s before the first sample).
    pub rtt: Duration,
    /// Congestion controller pacing rate, packets/s.
    pub send_rate: f64,
    /// Congestion controller bottleneck bandwidth estimate, packets/s.
    pub btl_bw: f64,
    /// Congestion window, packets.
    pub cwnd: u32,
    /// Lossless packets sent and not yet known received.
    pub inflight: u32,
}

/// Why a session ended ([`NetCryptoEvent::Closed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// No valid data for [`NetCryptoConfig::session_timeout`].
    Timeout,
    /// The peer sent a kill packet.
    KillReceived,
    /// A new handshake from the peer (new DHT key or new session key) replaced it.
    Replaced,
    /// [`NetCrypto::remove_peer`].
    Removed,
    /// [`NetCrypto::close_all`]: this node is stopping.
    Shutdown,
}

/// What net_crypto tells its owner (drain with [`NetCrypto::poll_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetCryptoEvent {
    /// The session with `peer` is up.
    Established {
        /// Peer's long-term key.
        peer: PublicKey,
        /// Where its first data packet came from.
        addr: SocketAddr,
    },
    /// An established session ended (attempts that never got established end silently).
    Closed {
        /// Peer's long-term key.
        peer: PublicKey,
        /// Why.
        reason: CloseReason,
    },
    /// A lossless packet, in order, exactly once (first byte 16..=191).
    Lossless {
        /// Peer's long-term key.
        peer: PublicKey,
        /// The packet, id byte first.
        data: Vec<u8>,
    },
    /// A lossy packet (first byte 192..=254): unordered, may be lost or duplicated.
    Lossy {
        /// Peer's long-term key.
        peer: PublicKey,
        /// The packet, id byte first.
        data: Vec<u8>,
    },
    /// The peer's `buffer_start` passed this packet number: it received it (read receipts).
    Delivered {
        /// Peer's long-term key.
        peer: PublicKey,
        /// The number [`NetCrypto::send_lossless`] returned.
        packet_number: u32,
    },
    /// A valid handshake from a long-term key we did not register.
    UnknownPeer {
        /// Its long-term key.
        real_pk: PublicKey,
        /// Its DHT key (from our cookie).
        dht_pk: PublicKey,
        /// Where it came from.
        addr: SocketAddr,
    },
}

/// Errors of send commands (remote input is counted and dropped, never an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetCryptoError {
    /// No session with that key is established.
    #[error("no established session with that peer")]
    NotEstablished,
    /// The first byte is outside the id range of the call.
    #[error("data id {0} is outside the allowed range")]
    BadId(u8),
    /// Empty or longer than 1373 bytes.
    #[error("bad packet length {0} (1..=1373)")]
    BadLength(usize),
    /// The send buffer is full.
    #[error("send buffer full")]
    QueueFull,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCryptoStats {
    /// Datagrams handled.
    pub rx_packets: u64,
    /// Bytes handled.
    pub rx_bytes: u64,
    /// Datagrams queued for sending.
    pub tx_packets: u64,
    /// Bytes queued for sending.
    pub tx_bytes: u64,
    /// Datagrams that did not parse (bad kind, length, field).
    pub malformed: u64,
    /// Datagrams that did not authenticate.
    pub decrypt_failed: u64,
    /// Cookie responses and data from addresses without a session, or for a session in the
    /// wrong phase.
    pub unexpected: u64,
    /// Handshakes whose cookie was older than 15 s.
    pub stale_cookies: u64,
    /// Valid handshakes from unregistered keys.
    pub unknown_peer: u64,
    /// Cookie requests answered.
    pub cookies_issued: u64,
    /// Lossless packets received twice.
    pub duplicates: u64,
    /// Lossless packets sent again on request.
    pub retransmissions: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub tx_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Sessions that got established.
    pub established: u64,
    /// Established sessions that ended.
    pub closed: u64,
    /// [`NetCrypto::add_peer`] calls refused because [`NetCryptoConfig::max_sessions`] was reached.
    pub peers_rejected: u64,
}

/// One packet of a send buffer.
#[derive(Debug)]
struct Outgoing {
    data: Vec<u8>,
    /// When last sent; `None` = not sent yet, or requested again.
    sent_at: Option<Instant>,
    /// The controller's delivery state when last sent (delivery-rate sampling, see `cc`).
    rate: cc::SendState,
    /// Times sent.
    tries: u32,
}

/// Send buffer: numbers `start .. start + slots.len()`; `None` = known received.
#[derive(Debug, Default)]
struct SendBuffer {
    start: u32,
    slots: VecDeque<Option<Outgoing>>,
    /// Packets waiting to be sent (new or requested again).
    unsent: usize,
    /// No slot below this index waits to be sent (keeps [`Ctx::flush`] linear overall).
    scan: usize,
    /// Slots known received (`None`) that `buffer_start` has not passed yet.
    freed: usize,
    /// Latest first-send time of a packet known received (RACK loss rule, see `cc`).
    newest_delivered_sent: Option<Instant>,
}

impl SendBuffer {
    fn end(&self) -> u32 {
        self.start.wrapping_add(self.slots.len() as u32)
    }

    /// Packets sent and not known received.
    fn inflight(&self) -> usize {
        self.slots.len() - self.unsent - self.freed
    }

    fn note_delivered(&mut self, o: &Outgoing) {
        if let Some(t) = o.sent_at {
            self.newest_delivered_sent = Some(self.newest_delivered_sent.map_or(t, |x| x.max(t)));
        }
    }
}

/// Receive buffer: numbers `start .. start + slots.len()`; `None` = not received.
#[derive(Debug, Default)]
struct RecvBuffer {
    start: u32,
    slots: VecDeque<Option<Vec<u8>>>,
}

impl RecvBuffer {
    /// Moves the known end forward to `num` (`set_buffer_end`); false if out of range.
    fn set_end(&mut self, num: u32, cap: u32) -> bool {
        let want = num.wrapping_sub(self.start);
        if want > cap || (want as usize) < self.slots.len() {
            return false;
        }
        self.slots.resize_with(want as usize, || None);
        true
    }

    fn missing(&self) -> PacketRequest {
        let missing: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(i, _)| i as u32)
            .take(MAX_CRYPTO_DATA_SIZE)
            .collect();
        PacketRequest {
            covered: missing.last().map_or(0, |m| m + 1),
            missing,
        }
    }

    fn has_gap(&self) -> bool {
        !self.slots.is_empty()
    }
}

/// Whether a lossless packet bypasses the token bucket on its first send: everything except file
/// data (0x52) and custom lossless packets (160–191), which are bulk traffic.
fn is_priority(data: &[u8]) -> bool {
    !matches!(data.first(), Some(0x52 | 160..=191))
}

/// One session's state (`Crypto_Connection`).
#[derive(Debug)]
struct Session {
    status: SessionStatus,
    dht_pk: PublicKey,
    keys: KeyPair,
    sent_nonce: Nonce,
    recv_nonce: Nonce,
    peer_session_pk: Option<PublicKey>,
    shared: Option<PrecomputedKey>,
    /// DHT shared key of the cookie request (ours ↔ peer DHT key).
    cookie_shared: Option<PrecomputedKey>,
    echo_id: [u8; 8],
    /// Cookie request or handshake being resent.
    temp: Option<Vec<u8>>,
    temp_sent_at: Option<Instant>,
    temp_tries: u32,
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
    v4_recv: Option<Instant>,
    v6_recv: Option<Instant>,
    send: SendBuffer,
    recv: RecvBuffer,
    last_recv: Instant,
    last_request: Option<Instant>,
    request_due: Option<Instant>,
    cc: Bbr,
    /// Last packet from the peer over a relay.
    relay_recv: Option<Instant>,
    /// Last UDP try while relayed.
    udp_try: Option<Instant>,
}

impl Session {
    fn new(now: Instant, dht_pk: PublicKey, rng: &mut FerryRng) -> Self {
        Self {
            status: SessionStatus::CookieRequesting,
            dht_pk,
            keys: KeyPair::generate(rng),
            sent_nonce: Nonce::random(rng),
            recv_nonce: Nonce([0; 24]),
            peer_session_pk: None,
            shared: None,
            cookie_shared: None,
            echo_id: rng.bytes::<8>(),
            temp: None,
            temp_sent_at: None,
            temp_tries: 0,
            v4: None,
            v6: None,
            v4_recv: None,
            v6_recv: None,
            send: SendBuffer::default(),
            recv: RecvBuffer::default(),
            last_recv: now,
            last_request: None,
            request_due: None,
            cc: Bbr::new(now),
            relay_recv: None,
            udp_try: None,
        }
    }

    fn connected(&self) -> bool {
        matches!(
            self.status,
            SessionStatus::NotConfirmed | SessionStatus::Established
        )
    }

    fn fresh(&self, t: Option<Instant>, now: Instant, timeout: Duration) -> bool {
        t.is_some_and(|t| now.saturating_duration_since(t) < timeout)
    }

    /// c-toxcore `return_ip_port_connection`: fresh LAN IPv4, fresh IPv6, fresh IPv4, then any
    /// in the same order.
    fn addr(&self, now: Instant, timeout: Duration) -> Option<SocketAddr> {
        let v4f = self.fresh(self.v4_recv, now, timeout);
        let v6f = self.fresh(self.v6_recv, now, timeout);
        let v4_lan = self.v4.filter(|a| ip_is_lan(a.ip()));
        if v4f && v4_lan.is_some() {
            return v4_lan;
        }
        if v6f && self.v6.is_some() {
            return self.v6;
        }
        if v4f && self.v4.is_some() {
            return self.v4;
        }
        v4_lan.or(self.v6).or(self.v4)
    }

    /// Whether we heard the peer over UDP within `timeout` (c-toxcore "direct connected").
    fn direct(&self, now: Instant, timeout: Duration) -> bool {
        self.fresh(self.v4_recv, now, timeout) || self.fresh(self.v6_recv, now, timeout)
    }

    fn addrs(&self) -> impl Iterator<Item = SocketAddr> {
        self.v4.into_iter().chain(self.v6)
    }
}

/// A registered peer (friend).
#[derive(Debug)]
struct Peer {
    /// Our real sk ↔ its real pk, for handshakes.
    real_key: PrecomputedKey,
    dht_pk: Option<PublicKey>,
    addr: Option<SocketAddr>,
    session: Option<Session>,
}

/// Everything a session operation may touch besides the session.
struct Ctx<'a> {
    config: &'a NetCryptoConfig,
    rng: &'a mut FerryRng,
    cookie_key: &'a SymmetricKey,
    real: &'a KeyPair,
    dht: &'a KeyPair,
    epoch: Instant,
    transmits: &'a mut VecDeque<(Path, Vec<u8>)>,
    events: &'a mut VecDeque<NetCryptoEvent>,
    stats: &'a mut NetCryptoStats,
    by_addr: &'a mut BTreeMap<SocketAddr, PublicKey>,
    relay: bool,
}

impl Ctx<'_> {
    fn emit(&mut self, e: NetCryptoEvent) {
        if self.events.len() >= self.config.max_queued_events {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    fn transmit(&mut self, path: Path, bytes: Vec<u8>) {
        if self.transmits.len() >= self.config.max_queued_transmits {
            self.stats.tx_dropped += 1;
            return;
        }
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += bytes.len() as u64;
        self.transmits.push_back((path, bytes));
    }

    fn secs(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn cookie(&mut self, now: Instant, real_pk: PublicKey, dht_pk: PublicKey) -> Option<Cookie> {
        let plain = CookiePlain {
            time: self.secs(now),
            real_pk,
            dht_pk,
        };
        Cookie::seal(self.cookie_key, &Nonce::random(self.rng), &plain).ok()
    }

    /// Builds our handshake answering `their_cookie`, makes it the session's temp packet and
    /// sends it.
    fn send_handshake(
        &mut self,
        now: Instant,
        peer_pk: PublicKey,
        peer: &mut Peer,
        their_cookie: Cookie,
    ) {
        let Some(s) = peer.session.as_mut() else {
            return;
        };
        let Some(other_cookie) = self.cookie(now, peer_pk, s.dht_pk) else {
            return;
        };
        let payload = HandshakePayload {
            base_nonce: s.sent_nonce,
            session_pk: s.keys.public,
            cookie_hash: their_cookie.hash(),
            other_cookie,
        };
        let nonce = Nonce::random(self.rng);
        if let Ok(h) = Handshake::seal(their_cookie, nonce, &peer.real_key, &payload) {
            s.temp = Some(h.encode());
            s.temp_sent_at = None;
            s.temp_tries = 0;
            self.send_temp(now, s);
        }
    }

    /// Sends one packet to the session's peer (c-toxcore `send_packet_to`, see the module
    /// docs): false when there is no path at all.
    fn send_to(&mut self, now: Instant, s: &mut Session, bytes: Vec<u8>, handshake: bool) -> bool {
        let timeout = self.config.udp_direct_timeout;
        let addr = s.addr(now, timeout);
        if !self.relay || s.direct(now, timeout) {
            let Some(addr) = addr else {
                return false;
            };
            self.transmit(Path::Udp(addr), bytes);
            return true;
        }
        if let Some(addr) = addr
            && (handshake
                || (bytes.len() < RELAYED_UDP_TRY_SIZE
                    && s.udp_try
                        .is_none_or(|t| now.saturating_duration_since(t) >= RELAYED_UDP_TRY)))
        {
            s.udp_try = Some(now);
            self.transmit(Path::Udp(addr), bytes.clone());
        }
        self.transmit(Path::Relay(s.dht_pk), bytes);
        true
    }

    /// Whether the session has any path to send on.
    fn can_send(&self, now: Instant, s: &Session) -> bool {
        self.relay || s.addr(now, self.config.udp_direct_timeout).is_some()
    }

    fn send_temp(&mut self, now: Instant, s: &mut Session) {
        let Some(bytes) = s.temp.clone() else {
            return;
        };
        if !self.send_to(now, s, bytes, true) {
            return;
        }
        s.temp_sent_at = Some(now);
        s.temp_tries += 1;
    }

    /// Encrypts and sends one data packet (`send_data_packet_helper`).
    fn send_data(&mut self, now: Instant, s: &mut Session, num: u32, data: &[u8]) -> bool {
        if !self.can_send(now, s) {
            return false;
        }
        let Some(key) = &s.shared else {
            return false;
        };
        let Some(pkt) = seal_data(key, &mut s.sent_nonce, s.recv.start, num, data) else {
            return false;
        };
        let sent = self.send_to(now, s, pkt, false);
        if sent && !s.recv.has_gap() {
            // The ACK rode along.
            s.request_due = None;
        }
        sent
    }

    /// Builds the 0x1b datagram in one buffer, encrypting in place (no per-packet copies but
    /// the one into the datagram): `[0x1b][nonce low 2][MAC 16][buffer_start][packet number]
    /// [padding][data]`, padding as in [`CryptoDataPayload::encode`].
    fn send_request(&mut self, now: Instant, s: &mut Session) {
        let req = s.recv.missing().encode();
        let end = s.send.end();
        // Timers move on even if nothing could be sent, so poll_timeout never stays in the past.
        self.send_data(now, s, end, &req);
        s.last_request = Some(now);
        s.request_due = None;
    }

    fn send_kill(&mut self, now: Instant, s: &mut Session) {
        let end = s.send.end();
        self.send_data(now, s, end, &[PACKET_ID_KILL]);
    }

    /// Sends queued and requested lossless packets while tokens last.
    fn flush(&mut self, now: Instant, s: &mut Session) {
        if s.status != SessionStatus::Established {
            return;
        }
        s.cc.update(now);
        let start = s.send.start;
        let mut i = s.send.scan;
        while i < s.send.slots.len() {
            if s.send.unsent == 0 || !s.cc.can_send(s.send.inflight()) {
                break;
            }
            let num = start.wrapping_add(i as u32);
            if !self.can_send(now, s) {
                break;
            }
            let Some(key) = &s.shared else {
                break;
            };
            let data = match &s.send.slots[i] {
                Some(o) if o.sent_at.is_none() => &o.data,
                _ => {
                    i += 1;
                    continue;
                }
            };
            let Some(pkt) = seal_data(key, &mut s.sent_nonce, s.recv.start, num, data) else {
                break;
            };
            if !self.send_to(now, s, pkt, false) {
                break;
            }
            if !s.recv.has_gap() {
                s.request_due = None;
            }
            let mut resend = false;
            let state = s.cc.send_state();
            if let Some(Some(o)) = s.send.slots.get_mut(i) {
                o.sent_at = Some(now);
                o.rate = state;
                resend = o.tries > 0;
                o.tries += 1;
            }
            if resend {
                self.stats.retransmissions += 1;
            }
            s.send.unsent -= 1;
            s.cc.on_sent();
            i += 1;
        }
        s.send.scan = i;
        if s.send.unsent == 0 && !s.cc.window_full(s.send.inflight()) {
            s.cc.set_app_limited();
        }
    }

    fn set_addr(
        &mut self,
        peer_pk: PublicKey,
        s: &mut Session,
        addr: SocketAddr,
        heard: Option<Instant>,
    ) {
        let (slot, recv) = if addr.is_ipv4() {
            (&mut s.v4, &mut s.v4_recv)
        } else {
            (&mut s.v6, &mut s.v6_recv)
        };
        if *slot != Some(addr) {
            if let Some(old) = slot.take()
                && self.by_addr.get(&old) == Some(&peer_pk)
            {
                self.by_addr.remove(&old);
            }
            *slot = Some(addr);
            self.by_addr.insert(addr, peer_pk);
        }
        if heard.is_some() {
            *recv = heard;
        }
    }

    /// The peer was heard on `from`: a UDP address is recorded (and counts as direct), a relay
    /// is noted.
    fn heard(&mut self, now: Instant, peer_pk: PublicKey, s: &mut Session, from: Path) {
        match from {
            Path::Udp(a) => self.set_addr(peer_pk, s, a, Some(now)),
            Path::Relay(_) => s.relay_recv = Some(now),
        }
    }

    /// Ends a session: kill packet if established, `Closed` if established, index cleanup.
    fn close(
        &mut self,
        now: Instant,
        peer_pk: PublicKey,
        s: &mut Session,
        reason: Option<CloseReason>,
    ) {
        if s.status == SessionStatus::Established {
            if reason != Some(CloseReason::KillReceived) {
                self.send_kill(now, s);
            }
            self.stats.closed += 1;
            if let Some(reason) = reason {
                self.emit(NetCryptoEvent::Closed {
                    peer: peer_pk,
                    reason,
                });
            }
        }
        for a in s.addrs() {
            if self.by_addr.get(&a) == Some(&peer_pk) {
                self.by_addr.remove(&a);
            }
        }
    }

    /// Starts a cookie request attempt when the peer has a DHT key and no session.
    fn start(&mut self, now: Instant, peer_pk: PublicKey, peer: &mut Peer) {
        if peer.session.is_some() {
            return;
        }
        let Some(dht_pk) = peer.dht_pk else {
            return;
        };
        let mut s = Session::new(now, dht_pk, self.rng);
        let key = PrecomputedKey::new(&self.dht.secret, &dht_pk);
        let payload = CookieRequestPayload {
            real_pk: self.real.public,
            echo_id: s.echo_id,
        };
        if let Ok(req) =
            CookieRequest::seal(self.dht.public, Nonce::random(self.rng), &key, &payload)
        {
            s.temp = Some(req.encode());
        }
        s.cookie_shared = Some(key);
        if let Some(addr) = peer.addr {
            self.set_addr(peer_pk, &mut s, addr, None);
        }
        self.send_temp(now, &mut s);
        peer.session = Some(s);
    }
}

/// The net_crypto manager: every session of one node (see the module docs).
///
/// Run loop as in the crate docs: after any call, drain [`NetCrypto::poll_transmit`] and
/// [`NetCrypto::poll_event`], then sleep until [`NetCrypto::poll_timeout`].
#[derive(Debug)]
pub struct NetCrypto {
    config: NetCryptoConfig,
    real: KeyPair,
    dht: KeyPair,
    rng: FerryRng,
    epoch: Instant,
    last_now: Instant,
    cookie_key: SymmetricKey,
    dht_cache: PrecomputedCache,
    peers: BTreeMap<PublicKey, Peer>,
    by_addr: BTreeMap<SocketAddr, PublicKey>,
    transmits: VecDeque<(Path, Vec<u8>)>,
    events: VecDeque<NetCryptoEvent>,
    stats: NetCryptoStats,
    relay_fallback: bool,
}

impl Ctx<'_> {
    /// Runs whatever is due for one peer: resends, timeouts, packet requests, queued data, and
    /// (re)starts an attempt when it has none.
    fn service(&mut self, now: Instant, pk: PublicKey, peer: &mut Peer) {
        let Some(s) = peer.session.as_mut() else {
            self.start(now, pk, peer);
            return;
        };
        if s.status != SessionStatus::Established && s.temp.is_some() {
            let due = s
                .temp_sent_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.resend_interval);
            if due && self.can_send(now, s) {
                if s.temp_tries >= self.config.max_handshake_tries {
                    if let Some(mut old) = peer.session.take() {
                        self.close(now, pk, &mut old, None);
                    }
                    self.start(now, pk, peer);
                    return;
                }
                self.send_temp(now, s);
            }
        }
        if s.connected() {
            if now.saturating_duration_since(s.last_recv) >= self.config.session_timeout {
                if let Some(mut old) = peer.session.take() {
                    self.close(now, pk, &mut old, Some(CloseReason::Timeout));
                }
                self.start(now, pk, peer);
                return;
            }
            let every = request_every(self.config, s);
            let due = s.request_due.is_some_and(|t| t <= now)
                || s.last_request
                    .is_none_or(|t| now.saturating_duration_since(t) >= every);
            if due {
                self.send_request(now, s);
            }
            self.flush(now, s);
        }
    }

    /// Accepts a handshake as a new session (`accept_crypto_connection`).
    fn accept(
        &mut self,
        now: Instant,
        pk: PublicKey,
        peer: &mut Peer,
        p: &HandshakePayload,
        dht_pk: PublicKey,
        from: Path,
    ) {
        peer.dht_pk = Some(dht_pk);
        if let Path::Udp(a) = from {
            peer.addr = Some(a);
        }
        let mut s = Session::new(now, dht_pk, self.rng);
        s.status = SessionStatus::NotConfirmed;
        s.recv_nonce = p.base_nonce;
        s.peer_session_pk = Some(p.session_pk);
        s.shared = Some(PrecomputedKey::new(&s.keys.secret, &p.session_pk));
        if let Some(a) = peer.addr
            && from != Path::Udp(a)
        {
            self.set_addr(pk, &mut s, a, None);
        }
        self.heard(now, pk, &mut s, from);
        peer.session = Some(s);
        self.send_handshake(now, pk, peer, p.other_cookie);
        if let Some(s) = peer.session.as_mut() {
            self.send_request(now, s);
        }
    }

    /// A decrypted data packet for an existing session (`handle_data_packet_core`).
    fn on_data(
        &mut self,
        now: Instant,
        pk: PublicKey,
        peer: &mut Peer,
        from: Path,
        payload: CryptoDataPayload,
    ) {
        let Some(s) = peer.session.as_mut() else {
            return;
        };
        let cap = self.config.buffer_slots.min(CRYPTO_PACKET_BUFFER_SIZE);
        if payload.buffer_start != s.send.start {
            let adv = payload.buffer_start.wrapping_sub(s.send.start);
            if adv as usize > s.send.slots.len() {
                self.stats.malformed += 1;
                return;
            }
            // RTT sample: the newest packet this ACK covers, unless a retransmission in the
            // covered range may have held `buffer_start` back (Karn).
            let mut sample: Option<Instant> = None;
            let mut clean = true;
            let mut delivered = 0;
            for _ in 0..adv {
                match s.send.slots.pop_front() {
                    Some(Some(o)) => {
                        delivered += 1;
                        if o.sent_at.is_none() {
                            s.send.unsent -= 1;
                        }
                        if o.tries > 1 {
                            clean = false;
                        } else if let Some(t) = o.sent_at {
                            sample = Some(sample.map_or(t, |x| x.max(t)));
                        }
                        s.send.note_delivered(&o);
                        if let Some(t) = o.sent_at {
                            s.cc.on_packet_delivered(now, o.rate, t);
                        }
                    }
                    Some(None) => s.send.freed -= 1,
                    None => {}
                }
                let number = s.send.start;
                s.send.start = s.send.start.wrapping_add(1);
                self.emit(NetCryptoEvent::Delivered {
                    peer: pk,
                    packet_number: number,
                });
            }
            s.send.scan = s.send.scan.saturating_sub(adv as usize);
            s.cc.on_delivered(now, delivered);
            if clean && let Some(t) = sample {
                s.cc.on_rtt_sample(now, now.saturating_duration_since(t));
            }
        }
        s.last_recv = now;
        self.heard(now, pk, s, from);
        let Some(&id) = payload.data.first() else {
            return;
        };
        let kind = DataKind::of(id);
        match kind {
            DataKind::Kill => {
                if let Some(mut old) = peer.session.take() {
                    self.close(now, pk, &mut old, Some(CloseReason::KillReceived));
                }
                self.start(now, pk, peer);
                return;
            }
            DataKind::Padding | DataKind::Reserved | DataKind::Invalid => {
                self.stats.malformed += 1;
                return;
            }
            DataKind::Request | DataKind::Lossless | DataKind::Lossy => {}
        }
        if s.status == SessionStatus::NotConfirmed {
            s.status = SessionStatus::Established;
            s.temp = None;
            s.temp_sent_at = None;
            s.request_due = Some(now);
            s.cc = Bbr::new(now);
            self.stats.established += 1;
            self.emit(NetCryptoEvent::Established {
                peer: pk,
                addr: match from {
                    Path::Udp(a) => a,
                    Path::Relay(_) => RELAY_ADDR,
                },
            });
        }
        match kind {
            DataKind::Request => {
                let Ok(req) = PacketRequest::decode(&payload.data) else {
                    self.stats.malformed += 1;
                    return;
                };
                apply_request(now, s, &req);
                let before = s.recv.slots.len();
                if s.recv.set_end(payload.packet_number, cap) && s.recv.slots.len() > before {
                    s.request_due = Some(now);
                }
            }
            DataKind::Lossless => {
                let off = payload.packet_number.wrapping_sub(s.recv.start);
                if off >= cap {
                    self.stats.duplicates += 1;
                } else {
                    let off = off as usize;
                    let old_len = s.recv.slots.len();
                    if off < old_len && s.recv.slots[off].is_some() {
                        self.stats.duplicates += 1;
                    } else {
                        if off >= old_len {
                            s.recv.slots.resize_with(off + 1, || None);
                        }
                        s.recv.slots[off] = Some(payload.data);
                        while let Some(Some(_)) = s.recv.slots.front() {
                            if let Some(Some(data)) = s.recv.slots.pop_front() {
                                s.recv.start = s.recv.start.wrapping_add(1);
                                self.emit(NetCryptoEvent::Lossless { peer: pk, data });
                            }
                        }
                    }
                    let ack_at = if s.recv.has_gap() && off > old_len {
                        now
                    } else {
                        now + self.config.ack_delay
                    };
                    s.request_due = Some(s.request_due.map_or(ack_at, |t| t.min(ack_at)));
                }
            }
            DataKind::Lossy => {
                let before = s.recv.slots.len();
                if s.recv.set_end(payload.packet_number, cap) && s.recv.slots.len() > before {
                    s.request_due = Some(now);
                }
                self.emit(NetCryptoEvent::Lossy {
                    peer: pk,
                    data: payload.data,
                });
            }
            _ => {}
        }
        self.service(now, pk, peer);
    }
}

impl NetCrypto {
    /// A manager with our long-term (`real_keys`) and DHT (`dht_keys`) key pairs.
    pub fn new(
        config: NetCryptoConfig,
        real_keys: KeyPair,
        dht_keys: KeyPair,
        mut rng: FerryRng,
        now: Instant,
    ) -> Self {
        let cookie_key = SymmetricKey::generate(&mut rng);
        let dht_cache = PrecomputedCache::new(dht_keys.secret.clone(), config.dht_key_cache_size);
        Self {
            config,
            real: real_keys,
            dht: dht_keys,
            rng,
            epoch: now,
            last_now: now,
            cookie_key,
            dht_cache,
            peers: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: NetCryptoStats::default(),
            relay_fallback: false,
        }
    }

    /// Lets sessions fall back to TCP relays ([`Path::Relay`]) whenever the peer was not heard
    /// over UDP within 8 s (off by default: UDP only). The owner then drains
    /// [`NetCrypto::poll_path_transmit`] and hands relay packets to its TCP connections.
    pub fn set_relay_fallback(&mut self, on: bool) {
        self.relay_fallback = on;
    }

    fn parts(&mut self) -> (&mut BTreeMap<PublicKey, Peer>, Ctx<'_>) {
        let ctx = Ctx {
            config: &self.config,
            rng: &mut self.rng,
            cookie_key: &self.cookie_key,
            real: &self.real,
            dht: &self.dht,
            epoch: self.epoch,
            transmits: &mut self.transmits,
            events: &mut self.events,
            stats: &mut self.stats,
            by_addr: &mut self.by_addr,
            relay: self.relay_fallback,
        };
        (&mut self.peers, ctx)
    }

    /// Our long-term public key.
    pub fn real_public_key(&self) -> PublicKey {
        self.real.public
    }

    /// Our DHT public key (the one cookie requests are boxed to).
    pub fn dht_public_key(&self) -> PublicKey {
        self.dht.public
    }

    /// Registers a peer we accept sessions with (a friend). Idempotent. Beyond
    /// [`NetCryptoConfig::max_sessions`] peers the call is ignored and counted
    /// ([`NetCryptoStats::peers_rejected`]).
    pub fn add_peer(&mut self, now: Instant, real_pk: PublicKey) {
        self.last_now = self.last_now.max(now);
        if self.peers.contains_key(&real_pk) || real_pk == self.real.public {
            return;
        }
        if self.peers.len() >= self.config.max_sessions {
            self.stats.peers_rejected += 1;
            return;
        }
        let real_key = PrecomputedKey::new(&self.real.secret, &real_pk);
        self.peers.insert(
            real_pk,
            Peer {
                real_key,
                dht_pk: None,
                addr: None,
                session: None,
            },
        );
    }

    /// Forgets a peer, killing its session (a kill packet goes out if it was established, and
    /// [`NetCryptoEvent::Closed`] with [`CloseReason::Removed`] is reported).
    pub fn remove_peer(&mut self, now: Instant, real_pk: &PublicKey) {
        self.last_now = self.last_now.max(now);
        let (peers, mut ctx) = self.parts();
        if let Some(mut peer) = peers.remove(real_pk)
            && let Some(mut s) = peer.session.take()
        {
            ctx.close(now, *real_pk, &mut s, Some(CloseReason::Removed));
        }
    }

    /// Ends every session, keeping the peers: an established one with a kill packet (id 2),
    /// reported as [`NetCryptoEvent::Closed`] with [`CloseReason::Shutdown`]; an attempt
    /// silently. For a node about to stop, as c-toxcore's `kill_messenger` kills each friend
    /// connection (`crypto_kill`): friends see it offline at once instead of after the 32 s
    /// friend_connection timeout (`tox-protocol.md` §net_crypto). Sessions to the peers start
    /// again on the next [`NetCrypto::handle_timeout`] if the node goes on.
    pub fn close_all(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let (peers, mut ctx) = self.parts();
        for (pk, peer) in peers.iter_mut() {
            if let Some(mut s) = peer.session.take() {
                ctx.close(now, *pk, &mut s, Some(CloseReason::Shutdown));
            }
        }
    }

    /// The peer's current DHT public key (from the onion, DHT-PK packets, or its handshake).
    /// Starts the cookie request → handshake when no session exists; a different key than the
    /// session's kills the session (reported as [`CloseReason::Replaced`] if established) and
    /// starts over with the new key.
    pub fn set_peer_dht_key(&mut self, now: Instant, real_pk: &PublicKey, dht_pk: PublicKey) {
        self.last_now = self.last_now.max(now);
        let (peers, mut ctx) = self.parts();
        let Some(peer) = peers.get_mut(real_pk) else {
            return;
        };
        peer.dht_pk = Some(dht_pk);
        if peer.session.as_ref().is_some_and(|s| s.dht_pk != dht_pk)
            && let Some(mut old) = peer.session.take()
        {
            ctx.close(now, *real_pk, &mut old, Some(CloseReason::Replaced));
        }
        ctx.service(now, *real_pk, peer);
    }

    /// Stops new attempts for a peer whose DHT key went stale (c-toxcore forgets it 122 s after
    /// the last announcement); an existing session is kept.
    pub fn clear_peer_dht_key(&mut self, now: Instant, real_pk: &PublicKey) {
        self.last_now = self.last_now.max(now);
        let (peers, mut ctx) = self.parts();
        if let Some(peer) = peers.get_mut(real_pk) {
            peer.dht_pk = None;
            if peer.session.as_ref().is_some_and(|s| !s.connected())
                && let Some(mut old) = peer.session.take()
            {
                ctx.close(now, *real_pk, &mut old, None);
            }
        }
    }

    /// A UDP address of the peer (from the DHT). Used for the next packets (c-toxcore keeps one
    /// IPv4 and one IPv6 address per session and prefers the one it heard from last).
    pub fn set_peer_addr(&mut self, now: Instant, real_pk: &PublicKey, addr: SocketAddr) {
        self.last_now = self.last_now.max(now);
        let addr = normalize(addr);
        let (peers, mut ctx) = self.parts();
        let Some(peer) = peers.get_mut(real_pk) else {
            return;
        };
        peer.addr = Some(addr);
        if let Some(s) = peer.session.as_mut() {
            ctx.set_addr(*real_pk, s, addr, Some(now));
        }
        ctx.service(now, *real_pk, peer);
    }

    /// A UDP address to *try* for a peer whose session runs over a relay: recorded (packets
    /// from it are accepted, small packets probe it every 4 s) but, unlike
    /// [`NetCrypto::set_peer_addr`], not counted as heard, so the relay stays in use until the
    /// peer really answers over UDP.
    pub fn add_peer_addr_candidate(&mut self, now: Instant, real_pk: &PublicKey, addr: SocketAddr) {
        self.last_now = self.last_now.max(now);
        let addr = normalize(addr);
        let (peers, mut ctx) = self.parts();
        let Some(peer) = peers.get_mut(real_pk) else {
            return;
        };
        peer.addr = Some(addr);
        if let Some(s) = peer.session.as_mut() {
            ctx.set_addr(*real_pk, s, addr, None);
        }
    }

    /// Feeds one received datagram of kind 0x18..=0x1b that came over direct UDP. Malformed or
    /// unexpected input is counted ([`NetCrypto::stats`]) and dropped; this never panics.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.handle_path_packet(now, Path::Udp(from), bytes);
    }

    /// [`NetCrypto::handle_packet`] for any [`Path`].
    pub fn handle_path_packet(&mut self, now: Instant, path: Path, bytes: &[u8]) {
        self.last_now = self.last_now.max(now);
        let from = match path {
            Path::Udp(a) => Path::Udp(normalize(a)),
            relay => relay,
        };
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += bytes.len() as u64;
        match bytes.first() {
            Some(&kind::COOKIE_REQUEST) => self.on_cookie_request(now, from, bytes),
            Some(&kind::COOKIE_RESPONSE) => self.on_cookie_response(now, from, bytes),
            Some(&kind::CRYPTO_HANDSHAKE) => self.on_handshake(now, from, bytes),
            Some(&kind::CRYPTO_DATA) => self.on_data(now, from, bytes),
            _ => self.stats.malformed += 1,
        }
    }

    fn on_cookie_request(&mut self, now: Instant, from: Path, bytes: &[u8]) {
        let Ok(req) = CookieRequest::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let key = self.dht_cache.get(&req.sender_dht_pk);
        let Ok(p) = req.open(key) else {
            self.stats.decrypt_failed += 1;
            return;
        };
        let plain = CookiePlain {
            time: now.saturating_duration_since(self.epoch).as_secs(),
            real_pk: p.real_pk,
            dht_pk: req.sender_dht_pk,
        };
        let Ok(cookie) = Cookie::seal(&self.cookie_key, &Nonce::random(&mut self.rng), &plain)
        else {
            return;
        };
        let payload = CookieResponsePayload {
            cookie,
            echo_id: p.echo_id,
        };
        let nonce = Nonce::random(&mut self.rng);
        let key = self.dht_cache.get(&req.sender_dht_pk);
        let Ok(resp) = CookieResponse::seal(nonce, key, &payload) else {
            return;
        };
        self.stats.cookies_issued += 1;
        let (_, mut ctx) = self.parts();
        // Over a relay the answer goes back to the requester's DHT key.
        let to = match from {
            Path::Relay(_) => Path::Relay(req.sender_dht_pk),
            udp => udp,
        };
        ctx.transmit(to, resp.encode());
    }

    fn on_cookie_response(&mut self, now: Instant, from: Path, bytes: &[u8]) {
        let Ok(resp) = CookieResponse::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let (peers, mut ctx) = self.parts();
        let Some(pk) = peer_of(peers, ctx.by_addr, from) else {
            ctx.stats.unexpected += 1;
            return;
        };
        let Some(peer) = peers.get_mut(&pk) else {
            ctx.stats.unexpected += 1;
            return;
        };
        let Some(s) = peer.session.as_mut() else {
            ctx.stats.unexpected += 1;
            return;
        };
        if s.status != SessionStatus::CookieRequesting {
            ctx.stats.unexpected += 1;
            return;
        }
        let Some(Ok(p)) = s.cookie_shared.as_ref().map(|k| resp.open(k)) else {
            ctx.stats.decrypt_failed += 1;
            return;
        };
        if p.echo_id != s.echo_id {
            ctx.stats.unexpected += 1;
            return;
        }
        s.status = SessionStatus::HandshakeSent;
        ctx.send_handshake(now, pk, peer, p.cookie);
    }

    fn on_handshake(&mut self, now: Instant, from: Path, bytes: &[u8]) {
        let Ok(h) = Handshake::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(plain) = h.cookie.open(&self.cookie_key) else {
            self.stats.decrypt_failed += 1;
            return;
        };
        let secs = now.saturating_duration_since(self.epoch).as_secs();
        if secs < plain.time
            || plain
                .time
                .saturating_add(self.config.cookie_timeout.as_secs())
                < secs
        {
            self.stats.stale_cookies += 1;
            return;
        }
        let real_pk = plain.real_pk;
        if real_pk == self.real.public {
            self.stats.malformed += 1;
            return;
        }
        let (peers, mut ctx) = self.parts();
        let Some(peer) = peers.get_mut(&real_pk) else {
            let key = PrecomputedKey::new(&ctx.real.secret, &real_pk);
            if h.open_checked(&key).is_err() {
                ctx.stats.decrypt_failed += 1;
                return;
            }
            ctx.stats.unknown_peer += 1;
            ctx.emit(NetCryptoEvent::UnknownPeer {
                real_pk,
                dht_pk: plain.dht_pk,
                addr: match from {
                    Path::Udp(a) => a,
                    Path::Relay(_) => RELAY_ADDR,
                },
            });
            return;
        };
        let Ok(p) = h.open_checked(&peer.real_key) else {
            ctx.stats.decrypt_failed += 1;
            return;
        };
        let replace = match &peer.session {
            None => false,
            Some(s) if s.dht_pk != plain.dht_pk => true,
            Some(s) if s.status == SessionStatus::Established => {
                if s.peer_session_pk == Some(p.session_pk) {
                    // A resend of the handshake that set this session up.
                    return;
                }
                true
            }
            Some(_) => {
                // Our attempt meets theirs (or their resend): adopt their nonce and key.
                let Some(s) = peer.session.as_mut() else {
                    return;
                };
                s.recv_nonce = p.base_nonce;
                s.peer_session_pk = Some(p.session_pk);
                s.shared = Some(PrecomputedKey::new(&s.keys.secret, &p.session_pk));
                s.last_recv = now;
                ctx.heard(now, real_pk, s, from);
                let was = s.status;
                s.status = SessionStatus::NotConfirmed;
                if let Path::Udp(a) = from {
                    peer.addr = Some(a);
                }
                if was != SessionStatus::NotConfirmed {
                    ctx.send_handshake(now, real_pk, peer, p.other_cookie);
                }
                if let Some(s) = peer.session.as_mut() {
                    ctx.send_request(now, s);
                }
                return;
            }
        };
        if replace && let Some(mut old) = peer.session.take() {
            ctx.close(now, real_pk, &mut old, Some(CloseReason::Replaced));
        }
        ctx.accept(now, real_pk, peer, &p, plain.dht_pk, from);
    }

    fn on_data(&mut self, now: Instant, from: Path, bytes: &[u8]) {
        let Ok((nonce_low, ciphertext)) = CryptoData::split(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let (peers, mut ctx) = self.parts();
        let Some(pk) = peer_of(peers, ctx.by_addr, from) else {
            ctx.stats.unexpected += 1;
            return;
        };
        let Some(peer) = peers.get_mut(&pk) else {
            ctx.stats.unexpected += 1;
            return;
        };
        let Some(s) = peer.session.as_mut().filter(|s| s.connected()) else {
            ctx.stats.unexpected += 1;
            return;
        };
        let Some(key) = s.shared.as_ref() else {
            ctx.stats.unexpected += 1;
            return;
        };
        let (nonce, diff) = reconstruct_nonce(&s.recv_nonce, nonce_low);
        let Ok(plain) = key.decrypt(&nonce, ciphertext) else {
            ctx.stats.decrypt_failed += 1;
            return;
        };
        if diff > 2 * DATA_NUM_THRESHOLD {
            nonce_add(&mut s.recv_nonce, u32::from(DATA_NUM_THRESHOLD));
        }
        let Ok(payload) = CryptoDataPayload::decode_vec(plain) else {
            ctx.stats.malformed += 1;
            return;
        };
        ctx.on_data(now, pk, peer, from, payload);
    }

    /// Sends a lossless packet: `data[0]` must be a lossless id (16..=191), 1..=1373 bytes.
    /// Returns its packet number (see [`NetCryptoEvent::Delivered`]). The packet goes out at once
    /// (in [`NetCrypto::poll_transmit`]) unless the congestion controller holds it back.
    ///
    /// # Errors
    /// [`NetCryptoError::BadId`], [`NetCryptoError::BadLength`], [`NetCryptoError::NotEstablished`],
    /// [`NetCryptoError::QueueFull`] (32768 packets unacknowledged).
    pub fn send_lossless(
        &mut self,
        now: Instant,
        real_pk: &PublicKey,
        data: &[u8],
    ) -> Result<u32, NetCryptoError> {
        self.last_now = self.last_now.max(now);
        check_data(data, DataKind::Lossless)?;
        let cap = self.config.buffer_slots.min(CRYPTO_PACKET_BUFFER_SIZE) as usize;
        let (peers, mut ctx) = self.parts();
        let s = peers
            .get_mut(real_pk)
            .and_then(|p| p.session.as_mut())
            .filter(|s| s.status == SessionStatus::Established)
            .ok_or(NetCryptoError::NotEstablished)?;
        if s.send.slots.len() >= cap {
            return Err(NetCryptoError::QueueFull);
        }
        let num = s.send.end();
        // Priority packets (everything but file data and custom lossless packets, as in
        // c-toxcore's `write_cryptpacket(.., congestion_control = false)`) leave at once, even
        // without a token; they still count towards the measured rate. Retransmissions of them
        // are paced like any other.
        if is_priority(data) && s.send.unsent == 0 {
            s.send.slots.push_back(Some(Outgoing {
                data: data.to_vec(),
                sent_at: Some(now),
                rate: s.cc.send_state(),
                tries: 1,
            }));
            s.cc.update(now);
            if ctx.send_data(now, s, num, data) {
                s.cc.on_sent();
            } else if let Some(Some(o)) = s.send.slots.back_mut() {
                // Could not send now: leave it to the paced path.
                o.sent_at = None;
                o.tries = 0;
                s.send.unsent += 1;
            }
            return Ok(num);
        }
        s.send.slots.push_back(Some(Outgoing {
            data: data.to_vec(),
            sent_at: None,
            rate: s.cc.send_state(),
            tries: 0,
        }));
        s.send.unsent += 1;
        ctx.flush(now, s);
        Ok(num)
    }

    /// Sends a lossy packet: `data[0]` must be a lossy id (192..=254), 1..=1373 bytes. Not
    /// congestion controlled, never retransmitted.
    ///
    /// # Errors
    /// [`NetCryptoError::BadId`], [`NetCryptoError::BadLength`], [`NetCryptoError::NotEstablished`].
    pub fn send_lossy(
        &mut self,
        now: Instant,
        real_pk: &PublicKey,
        data: &[u8],
    ) -> Result<(), NetCryptoError> {
        self.last_now = self.last_now.max(now);
        check_data(data, DataKind::Lossy)?;
        let (peers, mut ctx) = self.parts();
        let s = peers
            .get_mut(real_pk)
            .and_then(|p| p.session.as_mut())
            .filter(|s| s.status == SessionStatus::Established)
            .ok_or(NetCryptoError::NotEstablished)?;
        let end = s.send.end();
        ctx.send_data(now, s, end, data);
        Ok(())
    }

    /// Free send buffer slots for `real_pk` (0 without an established session): a bulk sender
    /// (file transfer) keeps below this (`crypto_num_free_sendqueue_slots`).
    pub fn send_queue_free(&self, real_pk: &PublicKey) -> u32 {
        let cap = self.config.buffer_slots.min(CRYPTO_PACKET_BUFFER_SIZE);
        self.peers
            .get(real_pk)
            .and_then(|p| p.session.as_ref())
            .filter(|s| s.status == SessionStatus::Established)
            .map_or(0, |s| cap.saturating_sub(s.send.slots.len() as u32))
    }

    /// How many bulk lossless packets (file data, custom 160–191) to hand to
    /// [`NetCrypto::send_lossless`] now: enough to keep the path full, few enough that a chat
    /// message queued after them is not held up (packets are delivered in order): at most about
    /// 2 ms of pacing (≥ 32 packets) waiting to be sent, and in flight plus waiting at most the
    /// congestion window plus that. 0 without an established session. A bulk sender (file
    /// transfer) calls this before each batch and again when packets are delivered or after
    /// about 1 ms.
    pub fn send_budget(&self, real_pk: &PublicKey) -> u32 {
        let cap = self.config.buffer_slots.min(CRYPTO_PACKET_BUFFER_SIZE);
        self.peers
            .get(real_pk)
            .and_then(|p| p.session.as_ref())
            .filter(|s| s.status == SessionStatus::Established)
            .map_or(0, |s| {
                let free = cap.saturating_sub(s.send.slots.len() as u32);
                // About 2 ms of pacing waiting to be sent, and no more than the window plus
                // that in flight and queued: a chat message queued behind waits for little more
                // than the window ahead of it.
                let queue = (s.cc.pacing_rate() * 0.002).max(32.0) as u32;
                let target = s.cc.cwnd() as u32 + queue;
                let have = (s.send.inflight() + s.send.unsent) as u32;
                let unsent = s.send.unsent as u32;
                free.min(target.saturating_sub(have))
                    .min(queue.saturating_sub(unsent))
            })
    }

    /// The peer's session, if it has one (any phase).
    pub fn session_state(&self, real_pk: &PublicKey) -> Option<SessionState> {
        let s = self.peers.get(real_pk)?.session.as_ref()?;
        let now = self.last_now;
        let addr = s.addr(now, self.config.udp_direct_timeout);
        let direct = [(s.v4, s.v4_recv), (s.v6, s.v6_recv)].iter().any(|(a, t)| {
            a.is_some() && *a == addr && s.fresh(*t, now, self.config.udp_direct_timeout)
        });
        Some(SessionState {
            status: s.status,
            established: s.status == SessionStatus::Established,
            addr,
            direct,
            relayed: !direct
                && self.relay_fallback
                && s.fresh(s.relay_recv, now, self.config.udp_direct_timeout),
            dht_pk: s.dht_pk,
            send_queue: s.send.slots.len() as u32,
            recv_queue: s.recv.slots.iter().filter(|x| x.is_some()).count() as u32,
            rtt: s.cc.min_rtt.unwrap_or(DEFAULT_RTT),
            send_rate: s.cc.pacing_rate(),
            btl_bw: s.cc.btl_bw(),
            cwnd: s.cc.cwnd() as u32,
            inflight: s.send.inflight() as u32,
        })
    }

    /// Registered peers.
    pub fn peers(&self) -> impl Iterator<Item = &PublicKey> {
        self.peers.keys()
    }

    /// Runs the timers due at `now` (resends, packet requests, queued data, timeouts).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let (peers, mut ctx) = self.parts();
        for (pk, peer) in peers.iter_mut() {
            ctx.service(now, *pk, peer);
        }
    }

    /// When [`NetCrypto::handle_timeout`] must next run: the earliest timer of any session, or
    /// an hour ahead when nothing is pending.
    pub fn poll_timeout(&self) -> Instant {
        let now = self.last_now;
        let ctx_config = &self.config;
        let mut t = now + IDLE;
        for peer in self.peers.values() {
            if let Some(s) = &peer.session {
                if let Some(x) = next_timeout(ctx_config, self.relay_fallback, now, s) {
                    t = t.min(x);
                }
            } else if peer.dht_pk.is_some() {
                t = t.min(now);
            }
        }
        t
    }

    /// The next datagram to send, if any. Drain after every call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        loop {
            let (path, payload) = self.poll_path_transmit()?;
            if let Path::Udp(a) = path {
                return Some(Transmit {
                    destination: Destination::Addr(a),
                    payload,
                });
            }
            // Relay paths only exist with relay fallback on; their owner drains
            // `poll_path_transmit` instead.
        }
    }

    /// The next datagram with its [`Path`].
    pub fn poll_path_transmit(&mut self) -> Option<(Path, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// The next event, if any. Drain after every call.
    pub fn poll_event(&mut self) -> Option<NetCryptoEvent> {
        self.events.pop_front()
    }

    /// Counters since start.
    pub fn stats(&self) -> NetCryptoStats {
        self.stats
    }
}

/// The peer a packet from `from` belongs to: by UDP address, or by the session's DHT key.
fn peer_of(
    peers: &BTreeMap<PublicKey, Peer>,
    by_addr: &BTreeMap<SocketAddr, PublicKey>,
    from: Path,
) -> Option<PublicKey> {
    match from {
        Path::Udp(a) => by_addr.get(&a).copied(),
        Path::Relay(d) => peers
            .iter()
            .find(|(_, p)| p.session.as_ref().is_some_and(|s| s.dht_pk == d))
            .map(|(k, _)| *k),
    }
}

fn next_timeout(
    config: &NetCryptoConfig,
    relay: bool,
    now: Instant,
    s: &Session,
) -> Option<Instant> {
    let mut t: Option<Instant> = None;
    let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
    if s.status != SessionStatus::Established
        && s.temp.is_some()
        && (relay || s.addr(now, config.udp_direct_timeout).is_some())
    {
        min(s.temp_sent_at.map_or(now, |x| x + config.resend_interval));
    }
    if s.connected() {
        min(s.last_recv + config.session_timeout);
        if let Some(d) = s.request_due {
            min(d);
        }
        min(s.last_request.map_or(now, |x| x + request_every(config, s)));
        if s.status == SessionStatus::Established
            && s.send.unsent > 0
            && !s.cc.window_full(s.send.inflight())
        {
            min(s.cc.next_token());
        }
    }
    t
}

/// Applies a packet request to our send buffer (`handle_request_packet`): packets stepped over
/// are freed (received; counted as delivered), named packets are queued again when lost: sent
/// before a packet the peer already has (RACK), or longer ago than the retransmission timeout
/// (see `cc`).
fn apply_request(now: Instant, s: &mut Session, req: &PacketRequest) {
    let n = (req.covered as usize).min(s.send.slots.len());
    // The timeout from before this request's own RTT sample.
    let rto = s.cc.rto();
    let mut missing = req.missing.iter().copied().peekable();
    let mut delivered = 0;
    let mut sample: Option<Instant> = None;
    for i in 0..n {
        if missing.peek() == Some(&(i as u32)) {
            missing.next();
            continue;
        }
        if let Some(slot) = s.send.slots.get_mut(i)
            && let Some(o) = slot.take()
        {
            s.send.freed += 1;
            delivered += 1;
            if o.sent_at.is_none() {
                s.send.unsent -= 1;
            } else if o.tries == 1 {
                sample = sample.max(o.sent_at);
            }
            s.send.note_delivered(&o);
            if let Some(t) = o.sent_at {
                s.cc.on_packet_delivered(now, o.rate, t);
            }
        }
    }
    s.cc.on_delivered(now, delivered);
    if let Some(t) = sample {
        s.cc.on_rtt_sample(now, now.saturating_duration_since(t));
    }
    let newest = s
        .send
        .newest_delivered_sent
        .map(|t| t.checked_sub(s.cc.reorder_window()).unwrap_or(t));
    let mut lost = 0;
    for &m in &req.missing {
        let i = m as usize;
        if i >= n {
            break;
        }
        if let Some(Some(o)) = s.send.slots.get_mut(i)
            && let Some(t) = o.sent_at
            && match newest {
                Some(x) if t < x => true,
                // Nothing sent after it is known received: only a timeout tells.
                _ => now.saturating_duration_since(t) > rto,
            }
        {
            o.sent_at = None;
            s.send.unsent += 1;
            s.send.scan = s.send.scan.min(i);
            lost += 1;
        }
    }
    s.cc.on_lost(lost);
}

fn request_every(config: &NetCryptoConfig, s: &Session) -> Duration {
    if s.send.slots.is_empty() {
        config.request_interval
    } else {
        (s.cc.srtt.unwrap_or(DEFAULT_RTT) * 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
            .min(config.request_interval)
    }
}

fn check_data(data: &[u8], want: DataKind) -> Result<(), NetCryptoError> {
    let Some(&id) = data.first() else {
        return Err(NetCryptoError::BadLength(0));
    };
    if data.len() > MAX_CRYPTO_DATA_SIZE {
        return Err(NetCryptoError::BadLength(data.len()));
    }
    if DataKind::of(id) != want {
        return Err(NetCryptoError::BadId(id));
    }
    Ok(())
}

impl Endpoint for NetCrypto {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.handle_packet(now, from, bytes);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Self::handle_timeout(self, now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Self::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Instant {
        Self::poll_timeout(self)
    }
}

/// Builds and encrypts one data packet in a single buffer (`send_data_packet_helper`): kind,
/// low 16 bits of `nonce`, then MAC ‖ ciphertext of buffer_start (u32 BE) ‖ `num` (u32 BE) ‖
/// zero padding ‖ `data`; the padding rounds the plaintext as c-toxcore does. Increments
/// `nonce`. `None` if `data` is empty or over [`MAX_CRYPTO_DATA_SIZE`] bytes.
fn seal_data(
    key: &PrecomputedKey,
    nonce: &mut Nonce,
    buffer_start: u32,
    num: u32,
    data: &[u8],
) -> Option<Vec<u8>> {
    const HEADER: usize = 3;
    if data.is_empty() || data.len() > MAX_CRYPTO_DATA_SIZE {
        return None;
    }
    let padding = (MAX_CRYPTO_DATA_SIZE - data.len()) % CRYPTO_MAX_PADDING;
    let mut pkt = Vec::with_capacity(HEADER + MAC_SIZE + 8 + padding + data.len());
    pkt.push(kind::CRYPTO_DATA);
    pkt.extend_from_slice(&nonce_low16(nonce).to_be_bytes());
    pkt.extend_from_slice(&[0; MAC_SIZE]);
    pkt.extend_from_slice(&buffer_start.to_be_bytes());
    pkt.extend_from_slice(&num.to_be_bytes());
    pkt.resize(pkt.len() + padding, 0);
    pkt.extend_from_slice(data);
    key.encrypt_in_place(nonce, &mut pkt, HEADER).ok()?;
    nonce.increment();
    Some(pkt)
}

#[cfg(test)]
mod tests;
