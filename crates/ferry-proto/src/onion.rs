//! The Tox onion as a sans-IO state machine, wire- and behaviour-compatible with c-toxcore 0.2.18
//! (`tox-protocol.md` §4; c-toxcore `onion.c`, `onion_announce.c`, `onion_client.c`).
//!
//! One [`Onion`] holds both halves a Tox node runs:
//!
//! * **Relay / announce server** (every node, `relay` submodule): forwards onion requests
//!   0x80 → 0x81 → 0x82 → plain and responses 0x8c → 0x8d → 0x8e → client, sealing the way back
//!   into return blobs under a `SymmetricKey` rotated every [`KEY_REFRESH_INTERVAL`]; applies
//!   0.2.18's kind filter (only 0x83/0x85 leave node C, only 0x84/0x86 travel back); stores
//!   announcements (0x83 → 0x84) with a keyed-MAC ping id valid 300–600 s, at most
//!   [`ONION_ANNOUNCE_MAX_ENTRIES`] entries closest to our DHT key, [`ONION_ANNOUNCE_TIMEOUT`]
//!   each; forwards data requests 0x85 as 0x86 down the stored return path.
//! * **Client** (`client` submodule): keeps [`NUMBER_ONION_PATHS`] paths of 3 nodes for
//!   announcing and as many for searching, announces our long-term key (with a temporary data key
//!   pair) to the [`MAX_ONION_CLIENTS_ANNOUNCE`] nodes closest to it, reports "connected" like
//!   c-toxcore (3 s warm-up, half the live announce nodes store us for 3 consecutive seconds),
//!   searches friends' long-term keys with c-toxcore's backoff, sends onion data (friend requests,
//!   DHT-PK every [`ONION_DHTPK_SEND_INTERVAL`] and over the DHT every
//!   [`DHT_DHTPK_SEND_INTERVAL`]) and reports what arrives as [`OnionEvent`]s.
//!
//! # Composition
//!
//! The owner (the lead's `Node`) dispatches datagrams by first byte: `0x80..=0x8e` go to
//! [`Onion::handle_packet`], the rest to the [`Dht`]. DHT requests `0x20` with id `0x9c`
//! (DHT-PK over the DHT, [`DhtEvent::DhtRequest`](crate::dht::DhtEvent::DhtRequest)) go to
//! [`Onion::handle_dht_pk_request`]. The run loop is the crate's: after any call drain
//! [`Onion::poll_transmit`] and [`Onion::poll_event`], and call [`Onion::handle_timeout`] at
//! [`Onion::poll_timeout`] (once per second, as c-toxcore's `do_onion_client`).
//!
//! # Not (yet) here
//!
//! Onion over TCP relays (TCP packets 8/9), group announces 0x87/0x88 (ignored, as 0.2.18
//! relays drop them), bootstrap-only path nodes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, KeySource, PrecomputedCache, PublicKey};
use ferry_wire::kind;
use ferry_wire::node::{PackedNode, normalize};

use crate::dht::Dht;
use crate::{Destination, Transmit};

mod client;
mod relay;

/// The relay's return-blob key changes this often (`KEY_REFRESH_INTERVAL`, 2 h).
pub const KEY_REFRESH_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// Most announcements a node stores (`ONION_ANNOUNCE_MAX_ENTRIES`).
pub const ONION_ANNOUNCE_MAX_ENTRIES: usize = 160;
/// An announcement lives this long without renewal (`ONION_ANNOUNCE_TIMEOUT`, 300 s). The ping
/// id's time window is the same, so a ping id stays valid 300–600 s.
pub const ONION_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Onion paths kept for announcing, and as many for searching (`NUMBER_ONION_PATHS`).
pub const NUMBER_ONION_PATHS: usize = 6;
/// An unconfirmed path times out after this (`ONION_PATH_FIRST_TIMEOUT`, 4 s).
pub const ONION_PATH_FIRST_TIMEOUT: Duration = Duration::from_secs(4);
/// A confirmed path times out after this without a response (`ONION_PATH_TIMEOUT`, 10 s).
pub const ONION_PATH_TIMEOUT: Duration = Duration::from_secs(10);
/// A path is replaced after this whatever happens (`ONION_PATH_MAX_LIFETIME`, 1200 s).
pub const ONION_PATH_MAX_LIFETIME: Duration = Duration::from_secs(1200);
/// Uses without a response before a path may time out (`ONION_PATH_MAX_NO_RESPONSE_USES`).
pub const ONION_PATH_MAX_NO_RESPONSE_USES: u32 = 4;
/// Nodes we announce ourselves to (`MAX_ONION_CLIENTS_ANNOUNCE`).
pub const MAX_ONION_CLIENTS_ANNOUNCE: usize = 12;
/// Nodes kept per searched friend (`MAX_ONION_CLIENTS`).
pub const MAX_ONION_CLIENTS: usize = 8;
/// Announce nodes are pinged at least this often once we are stored (`ONION_NODE_PING_INTERVAL`).
pub const ONION_NODE_PING_INTERVAL: Duration = Duration::from_secs(15);
/// A node that missed [`ONION_NODE_MAX_PINGS`] responses is dead this long after the last ping.
pub const ONION_NODE_TIMEOUT: Duration = ONION_NODE_PING_INTERVAL;
/// Unanswered pings before a node counts as dead (`ONION_NODE_MAX_PINGS`).
pub const ONION_NODE_MAX_PINGS: u8 = 3;
/// Without any announce response for this long we are offline (`ONION_OFFLINE_TIMEOUT`, 75 s).
pub const ONION_OFFLINE_TIMEOUT: Duration = Duration::from_secs(15 * 5);
/// DHT-PK by onion every 30 s (`ONION_DHTPK_SEND_INTERVAL`).
pub const ONION_DHTPK_SEND_INTERVAL: Duration = Duration::from_secs(30);
/// DHT-PK by DHT request every 20 s (`DHT_DHTPK_SEND_INTERVAL`).
pub const DHT_DHTPK_SEND_INTERVAL: Duration = Duration::from_secs(20);
/// No announcing during the first 3 s, and "connected" needs 3 consecutive connected seconds
/// (`ONION_CONNECTION_SECONDS`).
pub const ONION_CONNECTION_SECONDS: u32 = 3;
/// Friend run counts reset when we were disconnected this long (`ONION_CONNECTED_TIMEOUT`).
pub const ONION_CONNECTED_TIMEOUT: Duration = Duration::from_secs(10);
/// Path nodes remembered (`MAX_PATH_NODES`).
pub const MAX_PATH_NODES: usize = 32;
/// Outstanding announce requests remembered by sendback (`ANNOUNCE_ARRAY_SIZE`).
pub const ANNOUNCE_ARRAY_SIZE: usize = 256;
/// An announce response counts only this long after its request (`ANNOUNCE_TIMEOUT`, 10 s).
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client runs once per second (`do_onion_client`).
pub const TICK: Duration = Duration::from_secs(1);

/// Configuration of an [`Onion`].
#[derive(Clone, Debug)]
pub struct OnionConfig {
    /// Most friends searched at once (cap on a table keyed by user input).
    pub max_friends: usize,
    /// Most announcements stored for others ([`ONION_ANNOUNCE_MAX_ENTRIES`] in c-toxcore).
    pub max_announce_entries: usize,
    /// Most datagrams queued before new ones are dropped (and counted).
    pub max_queued_transmits: usize,
    /// Most events queued before the oldest is dropped.
    pub max_queued_events: usize,
    /// Peers whose precomputed `crypto_box` keys are cached, per key of ours.
    pub key_cache_size: usize,
    /// Where precomputed keys come from; `None` = compute them (the simulator shares a memo).
    pub key_source: Option<Arc<dyn KeySource>>,
    /// Added to the seconds since [`Onion::new`] to form DHT-PK `no_replay` values. c-toxcore
    /// sends its monotonic clock; the driver should pass the Unix time in seconds so values keep
    /// growing across restarts.
    pub no_replay_base: u64,
    /// Also send DHT-PK every [`DHT_DHTPK_SEND_INTERVAL`] as a DHT request, as c-toxcore does
    /// (default). Tests turn it off to prove the onion path alone.
    pub dht_pk_over_dht: bool,
    /// ferry's fast start (`None` = c-toxcore's timing exactly). For this long after start and
    /// after each [`Onion::add_friend`], the client runs every [`FAST_TICK`] instead of every
    /// second, announces without the 3-s warm-up, re-announces and searches not-yet-found friends
    /// every [`FAST_INTERVAL`] instead of 3 s, and searches friends before it counts as
    /// "connected". Only timing changes, never a packet, so c-toxcore peers are unaffected; the
    /// extra traffic is bounded by the window. The full node uses 30 s.
    pub fast_start: Option<Duration>,
}

/// Client period during [`OnionConfig::fast_start`].
pub const FAST_TICK: Duration = Duration::from_millis(100);
/// Re-announce / new-friend search interval during [`OnionConfig::fast_start`].
pub const FAST_INTERVAL: Duration = Duration::from_millis(500);

impl Default for OnionConfig {
    fn default() -> Self {
        Self {
            max_friends: 1024,
            max_announce_entries: ONION_ANNOUNCE_MAX_ENTRIES,
            max_queued_transmits: 4096,
            max_queued_events: 1024,
            key_cache_size: 512,
            key_source: None,
            no_replay_base: 0,
            dht_pk_over_dht: true,
            fast_start: None,
        }
    }
}

/// What the onion tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnionEvent {
    /// A friend request arrived by onion data (id 0x20). The owner checks the nospam against its
    /// own, drops existing friends and repeats (c-toxcore resends until the friend is online).
    FriendRequest {
        /// The sender's long-term key.
        real_pk: PublicKey,
        /// The nospam the sender used.
        nospam: [u8; 4],
        /// The message, 1..=1016 bytes.
        message: Vec<u8>,
    },
    /// A friend told us its current DHT key (DHT-PK 0x9c, by onion or DHT), with up to 4 nodes
    /// where it can be reached (TCP relays first). The owner starts a DHT search for `dht_pk`
    /// and net_crypto.
    FriendDhtPk {
        /// The friend's long-term key.
        real_pk: PublicKey,
        /// Its DHT key.
        dht_pk: PublicKey,
        /// UDP DHT nodes close to it and/or its TCP relays.
        nodes: Vec<PackedNode>,
    },
    /// Our onion connection status changed (c-toxcore's `onion_connection_status` != NONE).
    Connected(bool),
}

/// Errors of onion commands (not of remote input, which is counted and dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OnionError {
    /// The key is not in the friend list ([`Onion::add_friend`] first).
    #[error("not a friend of the onion client")]
    UnknownFriend,
    /// The friend list is full ([`OnionConfig::max_friends`]).
    #[error("too many friends (limit {0})")]
    TooManyFriends(usize),
    /// The friend was not found announced anywhere yet (or too few of its nodes store it); retry.
    #[error("friend not found on the onion yet")]
    NotFound,
    /// No onion path could be built (too few DHT nodes).
    #[error("no onion path available")]
    NoPath,
    /// Friend request message empty or longer than 1016 bytes.
    #[error("friend request message must be 1..=1016 bytes, got {0}")]
    BadMessage(usize),
}

/// Counters, for `ferry status`, metrics and the simulator. All counts since start unless marked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OnionStats {
    /// Onion datagrams received.
    pub rx_packets: u64,
    /// Malformed datagrams dropped (bad length, bad field, failed decryption, kind filter).
    pub malformed: u64,
    /// Onion kinds we do not handle (0x87, 0x88, …), ignored.
    pub unknown_kind: u64,
    /// Requests relayed (0x80/0x81/0x82 forwarded).
    pub relayed_requests: u64,
    /// Responses relayed (0x8c/0x8d/0x8e forwarded).
    pub relayed_responses: u64,
    /// Announce requests answered.
    pub announce_requests: u64,
    /// Data requests forwarded to a stored announcement.
    pub data_forwarded: u64,
    /// Announce responses without a matching outstanding request.
    pub unsolicited: u64,
    /// Onion packets we sent as a client (announce and data requests).
    pub client_requests: u64,
    /// Onion data packets (0x86) that decrypted and parsed (any id).
    pub data_received: u64,
    /// Copies of onion data already received (one send goes to each node storing us).
    pub data_duplicates: u64,
    /// Friend requests received by onion data.
    pub friend_requests_received: u64,
    /// DHT-PK accepted from friends by onion data (0x86).
    pub dht_pk_via_onion: u64,
    /// DHT-PK accepted from friends by DHT request (0x20 / 0x9c).
    pub dht_pk_via_dht: u64,
    /// DHT-PK dropped: a replayed `no_replay`, or not from a friend.
    pub dht_pk_dropped: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub tx_dropped: u64,
    /// Announcements we store for others (now).
    pub announce_entries: u64,
    /// Live nodes of our announce list (now).
    pub announce_nodes: u64,
    /// Of those, the ones storing us (now).
    pub announced_to: u64,
    /// Friends searched (now).
    pub friends: u64,
}

/// The onion state machine: relay, announce store and client. See the module docs.
#[derive(Debug)]
pub struct Onion {
    config: OnionConfig,
    real_keys: KeyPair,
    dht_keys: KeyPair,
    rng: FerryRng,
    start: Instant,
    /// crypto_box keys between our DHT secret key and others (relay layers, announce store,
    /// path layer 1).
    dht_cache: PrecomputedCache,
    /// crypto_box keys between our long-term secret key and others (self announce, onion data).
    real_cache: PrecomputedCache,
    relay: relay::RelayState,
    client: client::ClientState,
    next_tick: Instant,
    /// End of the fast-start window, if any.
    fast_until: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<OnionEvent>,
    stats: OnionStats,
}

impl Onion {
    /// An onion with our long-term keys `real_keys` (the Tox ID's), our current DHT keys
    /// `dht_keys` (the [`Dht`]'s), randomness `rng` and the clock reading `now`.
    pub fn new(
        config: OnionConfig,
        real_keys: KeyPair,
        dht_keys: KeyPair,
        mut rng: FerryRng,
        now: Instant,
    ) -> Self {
        let fast_until = config.fast_start.map(|d| now + d);
        let dht_cache = PrecomputedCache::with_source(
            dht_keys.secret.clone(),
            config.key_cache_size,
            config.key_source.clone(),
        );
        let real_cache = PrecomputedCache::with_source(
            real_keys.secret.clone(),
            config.key_cache_size,
            config.key_source.clone(),
        );
        let relay = relay::RelayState::new(&mut rng, now);
        let client = client::ClientState::new(&mut rng, now);
        Self {
            config,
            real_keys,
            dht_keys,
            rng,
            start: now,
            dht_cache,
            real_cache,
            relay,
            client,
            next_tick: now,
            fast_until,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: OnionStats::default(),
        }
    }

    /// Our long-term public key (what we announce).
    pub fn real_public_key(&self) -> PublicKey {
        self.real_keys.public
    }

    /// Feeds one datagram whose first byte is in `0x80..=0x8e`: onion requests and responses to
    /// relay (0x80–0x82, 0x8c–0x8e), announce and data requests arriving in the clear from a
    /// path's last relay (0x83, 0x85), and announce and data responses for our own client from a
    /// path's first relay (0x84, 0x86). Malformed input is counted in
    /// [`OnionStats::malformed`] and dropped; other kinds (0x87, 0x88) are ignored. `dht`
    /// supplies the nodes of announce responses.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], dht: &mut Dht) {
        let from = normalize(from);
        self.stats.rx_packets += 1;
        self.relay.maybe_rotate(&mut self.rng, now);
        let ok = match bytes.first() {
            Some(&(kind::ONION_REQUEST_0 | kind::ONION_REQUEST_1 | kind::ONION_REQUEST_2)) => {
                self.handle_onion_request(from, bytes)
            }
            Some(&(kind::ONION_RESPONSE_3 | kind::ONION_RESPONSE_2 | kind::ONION_RESPONSE_1)) => {
                self.handle_onion_response(bytes)
            }
            Some(&kind::ANNOUNCE_REQUEST) => self.handle_announce_request(now, from, bytes, dht),
            Some(&kind::DATA_REQUEST) => self.handle_data_request(now, bytes),
            Some(&kind::ANNOUNCE_RESPONSE) => self.handle_announce_response(now, from, bytes, dht),
            Some(&kind::DATA_RESPONSE) => self.handle_data_response(bytes),
            _ => {
                self.stats.unknown_kind += 1;
                true
            }
        };
        if !ok {
            self.stats.malformed += 1;
        }
    }

    /// An onion request that arrived over a TCP relay this node serves (TCP packet id 8,
    /// `tox-protocol.md` §6): we act as the path's first relay. `body` is the packet after the
    /// id, `[nonce 24][IP_Port of B 19][pk 32][box for B]`; `from` is a synthetic address the
    /// driver maps back to the TCP client: the response arrives as a transmit to `from` carrying
    /// the bare onion response data (to be sent as TCP packet id 9). Returns false (and counts
    /// it malformed) for bad input.
    pub fn handle_tcp_onion_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        body: &[u8],
    ) -> bool {
        self.stats.rx_packets += 1;
        self.relay.maybe_rotate(&mut self.rng, now);
        let ok = self.handle_tcp_onion_request_inner(from, body);
        if !ok {
            self.stats.malformed += 1;
        }
        ok
    }

    /// Runs the once-per-second client work (`do_onion_client`) and expires stored
    /// announcements. Call when `now >= poll_timeout()`; earlier calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant, dht: &mut Dht) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + if self.is_fast(now) { FAST_TICK } else { TICK };
        self.relay.maybe_rotate(&mut self.rng, now);
        self.relay.expire(now);
        self.do_client(now, dht);
    }

    /// Whether the [`OnionConfig::fast_start`] window is open at `now`.
    pub(crate) fn is_fast(&self, now: Instant) -> bool {
        self.fast_until.is_some_and(|t| now < t)
    }

    /// When [`Onion::handle_timeout`] must next be called (every [`TICK`], or [`FAST_TICK`]
    /// during the fast-start window).
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The next datagram to send, if any. Drain after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any. Drain after every input.
    pub fn poll_event(&mut self) -> Option<OnionEvent> {
        self.events.pop_front()
    }

    /// Whether we are "connected" as c-toxcore's `onion_connection_status` reports it: announced
    /// to at least half of our live announce nodes for [`ONION_CONNECTION_SECONDS`] seconds.
    pub fn is_connected(&self) -> bool {
        self.client.connected_seconds >= ONION_CONNECTION_SECONDS
    }

    /// Counters.
    pub fn stats(&self) -> OnionStats {
        let now = self.client.last_run;
        OnionStats {
            announce_entries: self.relay.live_entries(now) as u64,
            announce_nodes: self
                .client
                .announce_list
                .iter()
                .filter(|n| !n.timed_out(now))
                .count() as u64,
            announced_to: self
                .client
                .announce_list
                .iter()
                .filter(|n| !n.timed_out(now) && n.is_stored != 0)
                .count() as u64,
            friends: self.client.friends.len() as u64,
            ..self.stats
        }
    }

    // ----- internals shared by the submodules -----

    fn queue(&mut self, to: SocketAddr, payload: Vec<u8>) {
        if self.transmits.len() >= self.config.max_queued_transmits {
            self.stats.tx_dropped += 1;
            return;
        }
        self.transmits.push_back(Transmit {
            destination: Destination::Addr(to),
            payload,
        });
    }

    fn emit(&mut self, event: OnionEvent) {
        if self.events.len() >= self.config.max_queued_events {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Seconds since start plus [`OnionConfig::no_replay_base`].
    fn clock_secs(&self, now: Instant) -> u64 {
        self.config
            .no_replay_base
            .saturating_add(now.saturating_duration_since(self.start).as_secs())
    }
}

/// A small bounded map of recent items, oldest evicted first.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    cap: usize,
}

impl<K: std::hash::Hash + Eq + Copy, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn insert(&mut self, k: K, v: V) {
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        if self.map.insert(k, v).is_none() {
            self.order.push_back(k);
        }
        if self.order.len() > self.cap * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
mod tests;
