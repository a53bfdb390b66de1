//! The client half of [`Onion`] (c-toxcore `onion_client.c`): paths, self announce, friend
//! search, onion data.
//!
//! * **Path nodes**: a ring of [`MAX_PATH_NODES`] nodes, fed every tick with random good nodes
//!   of the [`Dht`] (`populate_path_nodes`) and with every node that answers us. Paths take 3
//!   distinct nodes from it.
//! * **Paths** (`random_path`): 6 for announcing, 6 for searching and data. A path times out
//!   when used [`ONION_PATH_MAX_NO_RESPONSE_USES`] times without a response and then silent for
//!   4 s (never confirmed) or 10 s (confirmed), and always after 1200 s.
//! * **Self announce** (`do_announce`): the 12 nodes closest to our long-term key, re-announced
//!   every 3 s until they store us, then every 15 s, every 120 s once stable (90 s); a node that
//!   missed 3 responses is dropped after 15 s. While half the list is empty, 6 random path nodes
//!   get an announce request each tick.
//! * **Friends** (`do_friend`): 8 nodes closest to each friend's long-term key, searched with
//!   the friend's own temporary key every 3 s for the first runs, then with exponential backoff
//!   up to 1 h; none while the friend is online. Once found (a node answers is_stored = 1 with
//!   the friend's data key) DHT-PK goes out every 30 s by onion and every 20 s by DHT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_crypto::{KeyPair, Nonce, PrecomputedCache, PrecomputedKey, PublicKey};
use ferry_wire::WireError;
use ferry_wire::node::{PackedNode, ip_is_lan};
use ferry_wire::onion::{
    AnnounceRequest, AnnounceRequestPayload, AnnounceResponse, AnnounceStatus, DATA_ID_DHT_PK,
    DataInner, DataRequest, DataResponse, DhtPk, DhtPkEnvelope, IpPort, MAX_ANNOUNCE_NODES,
    MAX_FRIEND_REQUEST_MESSAGE, ONION_CLIENT_MAX_DATA_SIZE, ONION_MAX_PACKET_SIZE, OnionData,
    OnionExit, OnionLayer, OnionRequest, PING_ID_SIZE,
};

use super::{
    ANNOUNCE_ARRAY_SIZE, ANNOUNCE_TIMEOUT, Bounded, DHT_DHTPK_SEND_INTERVAL, MAX_ONION_CLIENTS,
    MAX_ONION_CLIENTS_ANNOUNCE, MAX_PATH_NODES, NUMBER_ONION_PATHS, ONION_CONNECTED_TIMEOUT,
    ONION_CONNECTION_SECONDS, ONION_DHTPK_SEND_INTERVAL, ONION_NODE_MAX_PINGS,
    ONION_NODE_PING_INTERVAL, ONION_NODE_TIMEOUT, ONION_OFFLINE_TIMEOUT, ONION_PATH_FIRST_TIMEOUT,
    ONION_PATH_MAX_LIFETIME, ONION_PATH_MAX_NO_RESPONSE_USES, ONION_PATH_TIMEOUT, Onion,
    OnionError, OnionEvent,
};
use crate::dht::Dht;

/// Re-announce to nodes not storing us yet (`ANNOUNCE_INTERVAL_NOT_ANNOUNCED`, 3 s).
const ANNOUNCE_INTERVAL_NOT_ANNOUNCED: Duration = Duration::from_secs(3);
/// A node and its path count as stable after this (`TIME_TO_STABLE`, 90 s).
const TIME_TO_STABLE: Duration = Duration::from_secs(15 * 6);
/// Re-announce interval to stable nodes (`ANNOUNCE_INTERVAL_STABLE`, 120 s).
const ANNOUNCE_INTERVAL_STABLE: Duration = Duration::from_secs(15 * 8);
/// Search interval for new friends (`ANNOUNCE_FRIEND_NEW_INTERVAL`, 3 s).
const ANNOUNCE_FRIEND_NEW_INTERVAL: u64 = 3;
/// A friend counts as new for this many runs (`ANNOUNCE_FRIEND_RUN_COUNT_BEGINNING`).
const ANNOUNCE_FRIEND_RUN_COUNT_BEGINNING: u32 = 5;
/// Node lists are refilled at least this often (`ANNOUNCE_POPULATE_TIMEOUT`, 600 s).
const ANNOUNCE_POPULATE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest search interval per node (`ANNOUNCE_FRIEND_MAX_INTERVAL`, 1 h in 0.2.18).
const ANNOUNCE_FRIEND_MAX_INTERVAL: u64 = 3600;
/// Cap of the backoff exponent (`MAX_RUN_COUNT_EXPONENT`).
const MAX_RUN_COUNT_EXPONENT: u32 = 12;
/// Recently pinged nodes remembered per list (`MAX_STORED_PINGED_NODES`).
const MAX_STORED_PINGED_NODES: usize = 9;
/// A node is not pinged again from a response within this (`MIN_NODE_PING_TIME`, 10 s).
const MIN_NODE_PING_TIME: Duration = Duration::from_secs(10);
/// Recent onion data nonces remembered to drop the copies of one send.
const RECENT_DATA: usize = 256;
/// Precomputed keys cached per friend's temporary search key.
const FRIEND_KEY_CACHE: usize = 64;

/// A node of our announce list or of a friend's search list (`Onion_Node`).
#[derive(Debug, Clone)]
pub(super) struct ClientNode {
    pub(super) public_key: PublicKey,
    addr: SocketAddr,
    ping_id: [u8; PING_ID_SIZE],
    data_pk: PublicKey,
    /// 0 not stored, 1 the searched key is stored there (friend lists: the friend is found),
    /// 2 we are stored there.
    pub(super) is_stored: u8,
    added: Instant,
    last_pinged: Option<Instant>,
    /// Self announce skips a new node's first tick (c-toxcore's `last_pinged = 1`).
    skipped_first: bool,
    pings: u8,
    path_used: u32,
}

impl ClientNode {
    /// `onion_node_timed_out`: 3 unanswered pings and 15 s since the last.
    pub(super) fn timed_out(&self, now: Instant) -> bool {
        self.pings >= ONION_NODE_MAX_PINGS
            && self
                .last_pinged
                .is_none_or(|t| now.saturating_duration_since(t) >= ONION_NODE_TIMEOUT)
    }
}

/// `Last_Pinged` ring: nodes pinged from responses in the last 10 s.
#[derive(Debug, Default)]
struct PingedRing {
    slots: Vec<(PublicKey, Instant)>,
    index: usize,
}

impl PingedRing {
    /// `good_to_ping`: false if `pk` was pinged within 10 s, else records it.
    fn good_to_ping(&mut self, pk: PublicKey, now: Instant) -> bool {
        if self
            .slots
            .iter()
            .any(|(k, t)| *k == pk && now.saturating_duration_since(*t) < MIN_NODE_PING_TIME)
        {
            return false;
        }
        if self.slots.len() < MAX_STORED_PINGED_NODES {
            self.slots.push((pk, now));
        } else {
            self.slots[self.index % MAX_STORED_PINGED_NODES] = (pk, now);
        }
        self.index = self.index.wrapping_add(1);
        true
    }
}

/// One onion path: three nodes and the keys of its layers (`Onion_Path`).
#[derive(Debug)]
struct Path {
    nodes: [PackedNode; 3],
    pk2: PublicKey,
    key2: PrecomputedKey,
    pk3: PublicKey,
    key3: PrecomputedKey,
    path_num: u32,
    created: Instant,
    last_success: Instant,
    last_used: Instant,
    used_times: u32,
}

impl Path {
    /// `path_timed_out`.
    fn timed_out(&self, now: Instant) -> bool {
        let timeout = if self.last_success == self.created {
            ONION_PATH_FIRST_TIMEOUT
        } else {
            ONION_PATH_TIMEOUT
        };
        (self.used_times >= ONION_PATH_MAX_NO_RESPONSE_USES
            && now.saturating_duration_since(self.last_used) >= timeout)
            || now.saturating_duration_since(self.created) >= ONION_PATH_MAX_LIFETIME
    }
}

/// Which path set a request uses: self announce, or searching / data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathSet {
    Announce,
    Friends,
}

/// What an announce request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    SelfAnnounce,
    Friend(PublicKey),
}

/// An outstanding announce request, found again by its 8-byte sendback.
#[derive(Debug, Clone, Copy)]
struct Sendback {
    target: Target,
    node_pk: PublicKey,
    node_addr: SocketAddr,
    path_num: u32,
    sent: Instant,
}

/// A friend we search for (`Onion_Friend`).
#[derive(Debug)]
pub(super) struct Friend {
    temp_keys: KeyPair,
    temp_cache: PrecomputedCache,
    clients: Vec<ClientNode>,
    pinged: PingedRing,
    is_online: bool,
    pub(super) dht_pk: Option<PublicKey>,
    last_dht_pk_onion_sent: Option<Instant>,
    last_dht_pk_dht_sent: Option<Instant>,
    last_no_replay: u64,
    last_populated: Option<Instant>,
    time_last_pinged: Option<Instant>,
    run_count: u32,
    pings: u32,
}

#[derive(Debug)]
pub(super) struct ClientState {
    data_keys: KeyPair,
    pub(super) announce_list: Vec<ClientNode>,
    pinged: PingedRing,
    self_paths: Vec<Option<Path>>,
    friend_paths: Vec<Option<Path>>,
    path_nodes: Vec<PackedNode>,
    path_nodes_index: usize,
    sendbacks: Bounded<[u8; 8], Sendback>,
    /// (sender, nonce) of recent onion data: the copies a sender sends to each of our announce
    /// nodes share one nonce, so only the first is reported.
    recent_data: Bounded<(PublicKey, [u8; 24]), ()>,
    pub(super) friends: BTreeMap<PublicKey, Friend>,
    last_announce: Option<Instant>,
    last_populated: Option<Instant>,
    last_packet_recv: Option<Instant>,
    last_time_connected: Option<Instant>,
    pub(super) connected_seconds: u32,
    first_run: Instant,
    pub(super) last_run: Instant,
    dht_pk_nodes: Vec<PackedNode>,
    last_no_replay_sent: u64,
    /// Ready TCP relays usable as a path's first node (onion over TCP).
    tcp_relays: Vec<PackedNode>,
    /// Build paths whose first node is a TCP relay (UDP unusable).
    tcp_first_hop: bool,
    /// Onion requests for relays: (relay key, TCP packet 8 body).
    pub(super) tcp_requests: std::collections::VecDeque<(PublicKey, Vec<u8>)>,
}

impl ClientState {
    pub(super) fn new(rng: &mut FerryRng, now: Instant) -> Self {
        Self {
            data_keys: KeyPair::generate(rng),
            announce_list: Vec::new(),
            pinged: PingedRing::default(),
            self_paths: (0..NUMBER_ONION_PATHS).map(|_| None).collect(),
            friend_paths: (0..NUMBER_ONION_PATHS).map(|_| None).collect(),
            path_nodes: Vec::new(),
            path_nodes_index: 0,
            sendbacks: Bounded::new(ANNOUNCE_ARRAY_SIZE),
            recent_data: Bounded::new(RECENT_DATA),
            friends: BTreeMap::new(),
            last_announce: None,
            last_populated: None,
            last_packet_recv: None,
            last_time_connected: None,
            connected_seconds: 0,
            first_run: now,
            last_run: now,
            dht_pk_nodes: Vec::new(),
            last_no_replay_sent: 0,
            tcp_relays: Vec::new(),
            tcp_first_hop: false,
            tcp_requests: std::collections::VecDeque::new(),
        }
    }

    fn paths(&mut self, set: PathSet) -> &mut Vec<Option<Path>> {
        match set {
            PathSet::Announce => &mut self.self_paths,
            PathSet::Friends => &mut self.friend_paths,
        }
    }

    /// `onion_add_path_node`: a ring of [`MAX_PATH_NODES`] distinct nodes (UDP nodes only).
    fn add_path_node(&mut self, node: PackedNode) {
        if node.transport != ferry_wire::node::Transport::Udp {
            return;
        }
        if self
            .path_nodes
            .iter()
            .any(|n| n.public_key == node.public_key)
        {
            return;
        }
        if self.path_nodes.len() < MAX_PATH_NODES {
            self.path_nodes.push(node);
        } else {
            self.path_nodes[self.path_nodes_index % MAX_PATH_NODES] = node;
        }
        self.path_nodes_index = self.path_nodes_index.wrapping_add(1);
    }

    fn live_counts(list: &[ClientNode], now: Instant) -> (usize, usize) {
        let live = list.iter().filter(|n| !n.timed_out(now));
        let mut num = 0;
        let mut stored = 0;
        for n in live {
            num += 1;
            if n.is_stored != 0 {
                stored += 1;
            }
        }
        (num, stored)
    }
}

/// `id_closest` on a list: is `pk` closer to `reference` than the farthest live node, or is
/// there room?
fn worth_adding(
    list: &[ClientNode],
    cap: usize,
    reference: &PublicKey,
    pk: &PublicKey,
    now: Instant,
) -> bool {
    let live: Vec<&ClientNode> = list.iter().filter(|n| !n.timed_out(now)).collect();
    if live.len() < cap {
        return true;
    }
    live.iter()
        .any(|n| reference.distance_cmp(pk, &n.public_key).is_lt())
}

impl Onion {
    // ----- public commands -----

    /// Starts searching for a friend's long-term key (`onion_addfriend`; a fresh temporary key
    /// pair is used for its searches). Searching starts on the next tick once we are connected,
    /// as in c-toxcore (`now` is kept for symmetry with the other commands). Adding a friend
    /// twice, or our own key, is not an error.
    ///
    /// # Errors
    /// [`OnionError::TooManyFriends`] past [`super::OnionConfig::max_friends`].
    pub fn add_friend(&mut self, now: Instant, real_pk: PublicKey) -> Result<(), OnionError> {
        if real_pk == self.real_keys.public || self.client.friends.contains_key(&real_pk) {
            return Ok(());
        }
        // The search runs from `handle_timeout`; a fast start reopens its window.
        if let Some(d) = self.config.fast_start {
            self.fast_until = Some(self.fast_until.map_or(now + d, |t| t.max(now + d)));
            self.next_tick = self.next_tick.min(now + super::FAST_TICK);
        }
        if self.client.friends.len() >= self.config.max_friends {
            return Err(OnionError::TooManyFriends(self.config.max_friends));
        }
        let temp_keys = KeyPair::generate(&mut self.rng);
        let temp_cache = PrecomputedCache::with_source(
            temp_keys.secret.clone(),
            FRIEND_KEY_CACHE,
            self.config.key_source.clone(),
        );
        self.client.friends.insert(
            real_pk,
            Friend {
                temp_keys,
                temp_cache,
                clients: Vec::new(),
                pinged: PingedRing::default(),
                is_online: false,
                dht_pk: None,
                last_dht_pk_onion_sent: None,
                last_dht_pk_dht_sent: None,
                last_no_replay: 0,
                last_populated: None,
                time_last_pinged: None,
                run_count: 0,
                pings: 0,
            },
        );
        Ok(())
    }

    /// Stops searching for a friend (`onion_delfriend`). Unknown keys are ignored.
    pub fn remove_friend(&mut self, real_pk: &PublicKey) {
        self.client.friends.remove(real_pk);
    }

    /// Tells the onion whether a friend is connected (`onion_set_friend_online`): online friends
    /// are not searched and get no DHT-PK; going offline resets the replay counter and the
    /// search backoff.
    pub fn set_friend_online(&mut self, real_pk: &PublicKey, online: bool) {
        if let Some(f) = self.client.friends.get_mut(real_pk) {
            f.is_online = online;
            if !online {
                f.last_no_replay = 0;
                f.run_count = 0;
            }
        }
    }

    /// The nodes our DHT-PK packets advertise (at most 4: TCP relays first, then DHT nodes).
    /// With none given, the 4 DHT nodes closest to our DHT key are sent (c-toxcore
    /// `closelist_nodes`).
    pub fn set_dht_pk_nodes(&mut self, nodes: Vec<PackedNode>) {
        let mut nodes = nodes;
        nodes.truncate(MAX_ANNOUNCE_NODES);
        self.client.dht_pk_nodes = nodes;
    }

    /// Onion over TCP (`tox-protocol.md` §4.1, §6): `relays` are the ready TCP relays; with
    /// `first_hop` set, new paths start at one of them (the relay acts as node A) and the
    /// requests come out of [`Onion::poll_tcp_request`] instead of UDP transmits.
    pub fn set_tcp_relays(&mut self, relays: Vec<PackedNode>, first_hop: bool) {
        if first_hop != self.client.tcp_first_hop {
            // Paths of the other kind are useless now.
            self.client.self_paths.iter_mut().for_each(|p| *p = None);
            self.client.friend_paths.iter_mut().for_each(|p| *p = None);
        }
        self.client.tcp_relays = relays;
        self.client.tcp_first_hop = first_hop;
    }

    /// Adds a node for building onion paths (`onion_add_bs_path_node`): how a node without UDP
    /// DHT learns its first path nodes (bootstrap nodes).
    pub fn add_path_node(&mut self, node: PackedNode) {
        self.client.add_path_node(node);
    }

    /// The next onion request for a TCP relay: (relay key, body of TCP packet 8).
    pub fn poll_tcp_request(&mut self) -> Option<(PublicKey, Vec<u8>)> {
        self.client.tcp_requests.pop_front()
    }

    /// The DHT key a friend last told us (DHT-PK), if any.
    pub fn friend_dht_pk(&self, real_pk: &PublicKey) -> Option<PublicKey> {
        self.client.friends.get(real_pk)?.dht_pk
    }

    /// Whether a friend was found (as of the last tick): at least one of its search nodes stores
    /// its announcement, so [`Onion::send_friend_request`] can succeed.
    pub fn is_friend_found(&self, real_pk: &PublicKey) -> bool {
        let now = self.client.last_run;
        self.client.friends.get(real_pk).is_some_and(|f| {
            f.clients
                .iter()
                .any(|n| !n.timed_out(now) && n.is_stored != 0)
        })
    }

    /// Sends a friend request `[0x20][nospam][message]` by onion data to every node storing the
    /// friend's announcement. The friend must have been added with [`Onion::add_friend`] and be
    /// found; c-toxcore resends with exponential backoff (base 5 s) until the friend comes
    /// online, which is the caller's job.
    ///
    /// # Errors
    /// [`OnionError::BadMessage`] for an empty or over-long message, [`OnionError::UnknownFriend`],
    /// [`OnionError::NotFound`] while the friend is not found, [`OnionError::NoPath`].
    pub fn send_friend_request(
        &mut self,
        now: Instant,
        real_pk: &PublicKey,
        nospam: [u8; 4],
        message: &[u8],
    ) -> Result<(), OnionError> {
        if message.is_empty() || message.len() > MAX_FRIEND_REQUEST_MESSAGE {
            return Err(OnionError::BadMessage(message.len()));
        }
        let data = OnionData::FriendRequest {
            nospam,
            message: message.to_vec(),
        }
        .encode();
        self.send_onion_data(now, real_pk, &data).map(|_| ())
    }

    /// Sends `[id][payload]` (≤ 1021 bytes) to a found friend by onion data
    /// (`send_onion_data`): one data request per node storing the friend, each over a random
    /// search path. Returns how many were sent.
    ///
    /// # Errors
    /// As [`Onion::send_friend_request`]; [`OnionError::BadMessage`] for a bad length.
    pub fn send_onion_data(
        &mut self,
        now: Instant,
        real_pk: &PublicKey,
        data: &[u8],
    ) -> Result<usize, OnionError> {
        if data.is_empty() || data.len() > ONION_CLIENT_MAX_DATA_SIZE {
            return Err(OnionError::BadMessage(data.len()));
        }
        let friend = self
            .client
            .friends
            .get(real_pk)
            .ok_or(OnionError::UnknownFriend)?;
        let live: Vec<&ClientNode> = friend
            .clients
            .iter()
            .filter(|n| !n.timed_out(now))
            .collect();
        let good: Vec<(SocketAddr, PublicKey)> = live
            .iter()
            .filter(|n| n.is_stored != 0)
            .map(|n| (n.addr, n.data_pk))
            .collect();
        if live.is_empty() || good.len() < (live.len() - 1) / 4 + 1 {
            return Err(OnionError::NotFound);
        }
        let nonce = Nonce::random(&mut self.rng);
        let Ok(inner_ct) = self.real_cache.get(real_pk).encrypt(&nonce, data) else {
            return Err(OnionError::NoPath);
        };
        let inner = DataInner {
            sender: self.real_keys.public,
            ciphertext: inner_ct,
        }
        .encode();
        let mut sent = 0;
        for (addr, data_pk) in good {
            let Some(slot) = self.random_path(now, PathSet::Friends, None) else {
                continue;
            };
            let tmp = KeyPair::generate(&mut self.rng);
            let Ok(ct) = PrecomputedKey::new(&tmp.secret, &data_pk).encrypt(&nonce, &inner) else {
                continue;
            };
            let req = DataRequest {
                destination: *real_pk,
                nonce,
                temp_pk: tmp.public,
                ciphertext: ct,
            };
            if self.send_via_path(PathSet::Friends, slot, addr, &req.encode()) {
                sent += 1;
            }
        }
        if sent == 0 {
            return Err(OnionError::NoPath);
        }
        Ok(sent)
    }

    /// Builds our DHT-PK for a friend whose DHT key we know, as the data of a DHT request
    /// (0x20) with id [`DATA_ID_DHT_PK`]: returns the friend's DHT key and that data
    /// (`[our long-term pk][nonce][box(DHT-PK plaintext)]`). [`Onion::handle_timeout`] already
    /// sends it every 20 s through `Dht::send_dht_request`; this is for the owner's own use.
    pub fn build_dht_pk_request(
        &mut self,
        now: Instant,
        real_pk: &PublicKey,
        dht: &Dht,
    ) -> Option<(PublicKey, Vec<u8>)> {
        let friend_dht = self.client.friends.get(real_pk)?.dht_pk?;
        let plain = self.dht_pk_plaintext(now, dht);
        let nonce = Nonce::random(&mut self.rng);
        let ct = self.real_cache.get(real_pk).encrypt(&nonce, &plain).ok()?;
        let env = DhtPkEnvelope {
            sender: self.real_keys.public,
            nonce,
            ciphertext: ct,
        };
        Some((friend_dht, env.encode()))
    }

    /// Feeds a DHT request with id 0x9c (`DhtEvent::DhtRequest { sender, id: 0x9c, data }`):
    /// DHT-PK sent over the DHT (`handle_dht_dhtpk`). The DHT key inside must be `sender`'s;
    /// replays and non-friends are dropped. Returns whether it was accepted.
    pub fn handle_dht_pk_request(&mut self, sender_dht_pk: &PublicKey, data: &[u8]) -> bool {
        let Ok(env) = DhtPkEnvelope::decode(data) else {
            self.stats.malformed += 1;
            return false;
        };
        let Ok(plain) = self
            .real_cache
            .get(&env.sender)
            .decrypt(&env.nonce, &env.ciphertext)
        else {
            self.stats.malformed += 1;
            return false;
        };
        match OnionData::decode(&plain) {
            Ok(OnionData::DhtPk(p)) if p.dht_pk == *sender_dht_pk => {
                self.accept_dht_pk(env.sender, p, true)
            }
            _ => {
                self.stats.malformed += 1;
                false
            }
        }
    }

    // ----- timers -----

    /// `do_onion_client`, once per second.
    pub(super) fn do_client(&mut self, now: Instant, dht: &mut Dht) {
        self.client.last_run = now;
        let was = self.is_connected();
        let fast = self.is_fast(now);
        if fast
            || now.saturating_duration_since(self.client.first_run)
                >= Duration::from_secs(ONION_CONNECTION_SECONDS.into())
        {
            for n in dht.random_good_nodes(now, MAX_ONION_CLIENTS) {
                self.client.add_path_node(n);
            }
            self.do_announce(now);
        }
        if self.raw_connected(now) {
            if self
                .client
                .last_time_connected
                .is_none_or(|t| now.saturating_duration_since(t) >= ONION_CONNECTED_TIMEOUT)
            {
                for f in self.client.friends.values_mut() {
                    f.run_count = 0;
                }
            }
            self.client.last_time_connected = Some(now);
            if self.client.connected_seconds < ONION_CONNECTION_SECONDS * 2 {
                self.client.connected_seconds += 1;
            }
        } else {
            self.client.last_populated = None;
            self.client.connected_seconds = self.client.connected_seconds.saturating_sub(1);
        }
        let is = self.is_connected();
        if is != was {
            self.emit(OnionEvent::Connected(is));
        }
        if is || (fast && !self.client.path_nodes.is_empty()) {
            let friends: Vec<PublicKey> = self.client.friends.keys().copied().collect();
            for pk in friends {
                self.do_friend(now, pk, dht);
            }
        }
    }

    /// `onion_isconnected`.
    fn raw_connected(&self, now: Instant) -> bool {
        let c = &self.client;
        if c.last_packet_recv
            .is_none_or(|t| now.saturating_duration_since(t) >= ONION_OFFLINE_TIMEOUT)
            || c.path_nodes.is_empty()
        {
            return false;
        }
        let (num, announced) = ClientState::live_counts(&c.announce_list, now);
        let pnodes = c.path_nodes.len().min(MAX_ONION_CLIENTS_ANNOUNCE);
        num != 0 && announced != 0 && num / 2 <= announced && pnodes / 2 <= num
    }

    /// `do_announce`.
    fn do_announce(&mut self, now: Instant) {
        self.client.announce_list.retain(|n| !n.timed_out(now));
        let count = self.client.announce_list.len();
        for i in 0..count {
            let n = self.client.announce_list[i].clone();
            if n.last_pinged.is_none() && !n.skipped_first {
                self.client.announce_list[i].skipped_first = true;
                continue;
            }
            if n.pings >= ONION_NODE_MAX_PINGS {
                continue;
            }
            let mut interval = if self.is_fast(now) {
                super::FAST_INTERVAL
            } else {
                ANNOUNCE_INTERVAL_NOT_ANNOUNCED
            };
            if n.is_stored != 0 && self.path_exists(now, PathSet::Announce, n.path_used) {
                interval = ONION_NODE_PING_INTERVAL;
                let slot = n.path_used as usize % NUMBER_ONION_PATHS;
                let path_stable = self.client.self_paths[slot].as_ref().is_some_and(|p| {
                    now.saturating_duration_since(p.created) >= TIME_TO_STABLE
                        && !(p.used_times > 0
                            && now.saturating_duration_since(p.last_used) >= ONION_PATH_TIMEOUT)
                });
                let node_stable = now.saturating_duration_since(n.added) >= TIME_TO_STABLE
                    && !(n.pings > 0
                        && n.last_pinged.is_some_and(|t| {
                            now.saturating_duration_since(t) >= ONION_NODE_TIMEOUT
                        }));
                if path_stable && node_stable {
                    interval = ANNOUNCE_INTERVAL_STABLE;
                }
            }
            let due =
                n.last_pinged
                    .is_none_or(|t| now.saturating_duration_since(t) >= interval)
                    || self.client.last_announce.is_none_or(|t| {
                        now.saturating_duration_since(t) >= ONION_NODE_PING_INTERVAL
                    });
            if !due {
                continue;
            }
            let mut path = Some(n.path_used);
            if n.pings == ONION_NODE_MAX_PINGS - 1
                && now.saturating_duration_since(n.added) >= TIME_TO_STABLE
            {
                path = None; // last chance for a long-lived node: try a random path
            }
            if self.send_announce_request(
                now,
                Target::SelfAnnounce,
                n.addr,
                n.public_key,
                n.ping_id,
                path,
            ) {
                let m = &mut self.client.announce_list[i];
                m.last_pinged = Some(now);
                m.pings += 1;
                self.client.last_announce = Some(now);
            }
        }
        if count == MAX_ONION_CLIENTS_ANNOUNCE {
            self.client.last_populated = Some(now);
            return;
        }
        let populate_due = self
            .client
            .last_populated
            .is_none_or(|t| now.saturating_duration_since(t) >= ANNOUNCE_POPULATE_TIMEOUT);
        if count <= MAX_ONION_CLIENTS_ANNOUNCE / 2 || populate_due {
            let n = self.client.path_nodes.len();
            if n == 0 {
                return;
            }
            for _ in 0..MAX_ONION_CLIENTS_ANNOUNCE / 2 {
                let node = self.client.path_nodes[self.rng.below(n)];
                self.send_announce_request(
                    now,
                    Target::SelfAnnounce,
                    node.addr,
                    node.public_key,
                    [0; PING_ID_SIZE],
                    None,
                );
            }
        }
    }

    /// `do_friend`.
    fn do_friend(&mut self, now: Instant, pk: PublicKey, dht: &mut Dht) {
        let Some(f) = self.client.friends.get(&pk) else {
            return;
        };
        let is_new = f.run_count <= ANNOUNCE_FRIEND_RUN_COUNT_BEGINNING;
        let interval_secs = if is_new {
            ANNOUNCE_FRIEND_NEW_INTERVAL
        } else {
            let c = 1u64 << f.run_count.saturating_sub(2).min(MAX_RUN_COUNT_EXPONENT);
            c.min(ANNOUNCE_FRIEND_MAX_INTERVAL)
        };
        if f.is_online {
            return;
        }
        // c-toxcore divides whole seconds (3 / 4 = 0 for new friends).
        let (interval, per_friend) = if is_new && self.is_fast(now) {
            (
                super::FAST_INTERVAL,
                super::FAST_INTERVAL / (MAX_ONION_CLIENTS as u32 / 2),
            )
        } else {
            (
                Duration::from_secs(interval_secs),
                Duration::from_secs(interval_secs / (MAX_ONION_CLIENTS as u64 / 2)),
            )
        };
        // During a fast start, resend every FAST_INTERVAL: an early DHT-PK may have gone to a
        // stale announcement (the friend restarted and has not re-announced yet).
        let dht_pk_interval = if self.is_fast(now) {
            super::FAST_INTERVAL
        } else {
            ONION_DHTPK_SEND_INTERVAL
        };
        let onion_due = f
            .last_dht_pk_onion_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= dht_pk_interval);
        let dht_due = f
            .last_dht_pk_dht_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= DHT_DHTPK_SEND_INTERVAL);
        if onion_due {
            let plain = self.dht_pk_plaintext(now, dht);
            if self.send_onion_data(now, &pk, &plain).is_ok()
                && let Some(f) = self.client.friends.get_mut(&pk)
            {
                f.last_dht_pk_onion_sent = Some(now);
            }
        }
        if dht_due
            && self.config.dht_pk_over_dht
            && let Some((friend_dht, data)) = self.build_dht_pk_request(now, &pk, dht)
            && dht.send_dht_request(now, friend_dht, DATA_ID_DHT_PK, &data)
            && let Some(f) = self.client.friends.get_mut(&pk)
        {
            f.last_dht_pk_dht_sent = Some(now);
        }

        let Some(f) = self.client.friends.get_mut(&pk) else {
            return;
        };
        f.clients.retain(|n| !n.timed_out(now));
        let count = f.clients.len();
        for i in 0..count {
            let Some(f) = self.client.friends.get_mut(&pk) else {
                return;
            };
            let n = &mut f.clients[i];
            let Some(last) = n.last_pinged else {
                n.last_pinged = Some(now);
                continue;
            };
            if n.pings >= ONION_NODE_MAX_PINGS
                || f.time_last_pinged
                    .is_some_and(|t| now.saturating_duration_since(t) < per_friend)
                || now.saturating_duration_since(last) < interval
            {
                continue;
            }
            let (addr, node_pk) = (n.addr, n.public_key);
            if self.send_announce_request(
                now,
                Target::Friend(pk),
                addr,
                node_pk,
                [0; PING_ID_SIZE],
                None,
            ) && let Some(f) = self.client.friends.get_mut(&pk)
            {
                f.clients[i].last_pinged = Some(now);
                f.clients[i].pings += 1;
                f.time_last_pinged = Some(now);
                f.pings += 1;
                if f.pings % (MAX_ONION_CLIENTS as u32 / 2) == 0 {
                    f.run_count += 1;
                }
            }
        }
        let Some(f) = self.client.friends.get_mut(&pk) else {
            return;
        };
        if count == MAX_ONION_CLIENTS {
            if !is_new {
                f.last_populated = Some(now);
            }
            return;
        }
        let populate_due = f
            .last_populated
            .is_none_or(|t| now.saturating_duration_since(t) >= ANNOUNCE_POPULATE_TIMEOUT);
        if count <= MAX_ONION_CLIENTS / 2 || populate_due {
            let num = self.client.path_nodes.len();
            let n = num.min(MAX_PATH_NODES / 4);
            if n == 0 {
                return;
            }
            f.last_populated = Some(now);
            for _ in 0..n {
                let node = self.client.path_nodes[self.rng.below(num)];
                self.send_announce_request(
                    now,
                    Target::Friend(pk),
                    node.addr,
                    node.public_key,
                    [0; PING_ID_SIZE],
                    None,
                );
            }
        }
    }

    // ----- packets -----

    /// 0x84 from the first node of one of our paths (`handle_announce_response`).
    pub(super) fn handle_announce_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        _dht: &Dht,
    ) -> bool {
        let Ok(resp) = AnnounceResponse::decode(bytes) else {
            return false;
        };
        let Some(sb) = self.client.sendbacks.remove(&resp.sendback) else {
            self.stats.unsolicited += 1;
            return true;
        };
        if now.saturating_duration_since(sb.sent) >= ANNOUNCE_TIMEOUT {
            self.stats.unsolicited += 1;
            return true;
        }
        let opened = match sb.target {
            Target::SelfAnnounce => resp.open(self.real_cache.get(&sb.node_pk)),
            Target::Friend(f) => match self.client.friends.get_mut(&f) {
                Some(friend) => resp.open(friend.temp_cache.get(&sb.node_pk)),
                None => return true,
            },
        };
        let Ok(payload) = opened else {
            return false;
        };
        let set = match sb.target {
            Target::SelfAnnounce => PathSet::Announce,
            Target::Friend(_) => PathSet::Friends,
        };
        let path_used = self.set_path_timeouts(now, set, sb.path_num);
        if !self.add_to_list(
            now,
            sb.target,
            sb.node_pk,
            sb.node_addr,
            payload.status,
            payload.ping_id_or_key,
            path_used,
        ) {
            return true;
        }
        self.ping_nodes(now, sb.target, &payload.nodes, from);
        self.client.last_packet_recv = Some(now);
        true
    }

    /// 0x86 from the first node of the path we announced over (`handle_data_response`).
    pub(super) fn handle_data_response(&mut self, bytes: &[u8]) -> bool {
        let Ok(resp) = DataResponse::decode(bytes) else {
            return false;
        };
        let outer = PrecomputedKey::new(&self.client.data_keys.secret, &resp.temp_pk);
        let Ok(plain) = outer.decrypt(&resp.nonce, &resp.ciphertext) else {
            return false;
        };
        let Ok(inner) = DataInner::decode(&plain) else {
            return false;
        };
        let Ok(data) = self
            .real_cache
            .get(&inner.sender)
            .decrypt(&resp.nonce, &inner.ciphertext)
        else {
            return false;
        };
        let parsed = OnionData::decode(&data);
        if parsed.is_ok() {
            self.stats.data_received += 1;
        }
        if self
            .client
            .recent_data
            .contains(&(inner.sender, resp.nonce.0))
        {
            self.stats.data_duplicates += 1;
            return true;
        }
        self.client
            .recent_data
            .insert((inner.sender, resp.nonce.0), ());
        match parsed {
            Ok(OnionData::FriendRequest { nospam, message }) => {
                self.stats.friend_requests_received += 1;
                self.emit(OnionEvent::FriendRequest {
                    real_pk: inner.sender,
                    nospam,
                    message,
                });
                true
            }
            Ok(OnionData::DhtPk(p)) => {
                self.accept_dht_pk(inner.sender, p, false);
                true
            }
            Err(WireError::UnknownKind(_)) => true,
            Err(_) => false,
        }
    }

    /// `handle_dhtpk_announce`: friends only, `no_replay` strictly increasing.
    fn accept_dht_pk(&mut self, sender: PublicKey, p: DhtPk, via_dht: bool) -> bool {
        let Some(f) = self
            .client
            .friends
            .get_mut(&sender)
            .filter(|f| p.no_replay > f.last_no_replay)
        else {
            self.stats.dht_pk_dropped += 1;
            return false;
        };
        f.last_no_replay = p.no_replay;
        f.dht_pk = Some(p.dht_pk);
        if via_dht {
            self.stats.dht_pk_via_dht += 1;
        } else {
            self.stats.dht_pk_via_onion += 1;
        }
        self.emit(OnionEvent::FriendDhtPk {
            real_pk: sender,
            dht_pk: p.dht_pk,
            nodes: p.nodes,
        });
        true
    }

    // ----- helpers -----

    /// Our DHT-PK plaintext, with a fresh strictly increasing `no_replay`.
    fn dht_pk_plaintext(&mut self, now: Instant, dht: &Dht) -> Vec<u8> {
        let no_replay = self
            .clock_secs(now)
            .max(self.client.last_no_replay_sent.saturating_add(1));
        self.client.last_no_replay_sent = no_replay;
        let nodes = if self.client.dht_pk_nodes.is_empty() {
            dht.closest_nodes(now, &dht.public_key(), true)
        } else {
            self.client.dht_pk_nodes.clone()
        };
        OnionData::DhtPk(DhtPk {
            no_replay,
            dht_pk: self.dht_keys.public,
            nodes,
        })
        .encode()
    }

    /// `client_add_to_list`. Returns false when the response must be ignored.
    #[allow(clippy::too_many_arguments)]
    fn add_to_list(
        &mut self,
        now: Instant,
        target: Target,
        node_pk: PublicKey,
        addr: SocketAddr,
        status: AnnounceStatus,
        field: [u8; PING_ID_SIZE],
        path_used: u32,
    ) -> bool {
        let mut is_stored = status.byte();
        let data_pk = self.client.data_keys.public;
        let (list, cap, reference) = match target {
            Target::SelfAnnounce => {
                if is_stored == 1 && field != data_pk.0 {
                    is_stored = 0;
                }
                (
                    &mut self.client.announce_list,
                    MAX_ONION_CLIENTS_ANNOUNCE,
                    self.real_keys.public,
                )
            }
            Target::Friend(f) => {
                if is_stored >= 2 {
                    return false;
                }
                match self.client.friends.get_mut(&f) {
                    Some(friend) => (&mut friend.clients, MAX_ONION_CLIENTS, f),
                    None => return false,
                }
            }
        };
        list.retain(|n| !n.timed_out(now));
        let index =
            match list.iter().position(|n| n.public_key == node_pk) {
                Some(i) => i,
                None => {
                    let fresh = ClientNode {
                        public_key: node_pk,
                        addr,
                        ping_id: [0; PING_ID_SIZE],
                        data_pk: PublicKey([0; 32]),
                        is_stored: 0,
                        added: now,
                        last_pinged: None,
                        skipped_first: false,
                        pings: 0,
                        path_used,
                    };
                    if list.len() < cap {
                        list.push(fresh);
                        list.len() - 1
                    } else {
                        let Some((far, _)) = list.iter().enumerate().max_by(|a, b| {
                            reference.distance_cmp(&a.1.public_key, &b.1.public_key)
                        }) else {
                            return true;
                        };
                        if reference
                            .distance_cmp(&node_pk, &list[far].public_key)
                            .is_ge()
                        {
                            return true;
                        }
                        list[far] = fresh;
                        far
                    }
                }
            };
        let n = &mut list[index];
        n.addr = addr;
        if is_stored == 1 {
            n.data_pk = PublicKey(field);
        } else {
            n.ping_id = field;
        }
        n.is_stored = is_stored;
        n.pings = 0;
        n.path_used = path_used;
        self.client.add_path_node(PackedNode::udp(addr, node_pk));
        true
    }

    /// `client_ping_nodes`: announce requests to returned nodes that would fit the list.
    fn ping_nodes(
        &mut self,
        now: Instant,
        target: Target,
        nodes: &[PackedNode],
        source: SocketAddr,
    ) {
        let lan_ok = ip_is_lan(source.ip());
        let own_dht = self.dht_keys.public;
        for node in nodes {
            if (!lan_ok && ip_is_lan(node.addr.ip())) || node.public_key == own_dht {
                continue;
            }
            let fits = match target {
                Target::SelfAnnounce => {
                    let l = &self.client.announce_list;
                    !l.iter().any(|n| n.public_key == node.public_key)
                        && worth_adding(
                            l,
                            MAX_ONION_CLIENTS_ANNOUNCE,
                            &self.real_keys.public,
                            &node.public_key,
                            now,
                        )
                        && self.client.pinged.good_to_ping(node.public_key, now)
                }
                Target::Friend(f) => match self.client.friends.get_mut(&f) {
                    Some(friend) => {
                        !friend
                            .clients
                            .iter()
                            .any(|n| n.public_key == node.public_key)
                            && worth_adding(
                                &friend.clients,
                                MAX_ONION_CLIENTS,
                                &f,
                                &node.public_key,
                                now,
                            )
                            && friend.pinged.good_to_ping(node.public_key, now)
                    }
                    None => false,
                },
            };
            if fits {
                self.send_announce_request(
                    now,
                    target,
                    node.addr,
                    node.public_key,
                    [0; PING_ID_SIZE],
                    None,
                );
            }
        }
    }

    /// `client_send_announce_request`: seal, wrap in a path and queue.
    fn send_announce_request(
        &mut self,
        now: Instant,
        target: Target,
        dest: SocketAddr,
        dest_pk: PublicKey,
        ping_id: [u8; PING_ID_SIZE],
        path_num: Option<u32>,
    ) -> bool {
        let set = match target {
            Target::SelfAnnounce => PathSet::Announce,
            Target::Friend(_) => PathSet::Friends,
        };
        let Some(slot) = self.random_path(now, set, path_num) else {
            return false;
        };
        let Some(path_num) = self.client.paths(set)[slot].as_ref().map(|p| p.path_num) else {
            return false;
        };
        let mut sendback = [0u8; 8];
        self.rng.fill_bytes(&mut sendback);
        let nonce = Nonce::random(&mut self.rng);
        let req = match target {
            Target::SelfAnnounce => {
                let payload = AnnounceRequestPayload {
                    ping_id,
                    search_pk: self.real_keys.public,
                    data_pk: self.client.data_keys.public,
                    sendback,
                };
                AnnounceRequest::seal(
                    self.real_cache.get(&dest_pk),
                    nonce,
                    self.real_keys.public,
                    &payload,
                )
            }
            Target::Friend(f) => {
                let Some(friend) = self.client.friends.get_mut(&f) else {
                    return false;
                };
                let payload = AnnounceRequestPayload {
                    ping_id,
                    search_pk: f,
                    data_pk: PublicKey([0; 32]),
                    sendback,
                };
                let temp_pk = friend.temp_keys.public;
                AnnounceRequest::seal(friend.temp_cache.get(&dest_pk), nonce, temp_pk, &payload)
            }
        };
        let Ok(req) = req else {
            return false;
        };
        if !self.send_via_path(set, slot, dest, &req.encode()) {
            return false;
        }
        self.client.sendbacks.insert(
            sendback,
            Sendback {
                target,
                node_pk: dest_pk,
                node_addr: dest,
                path_num,
                sent: now,
            },
        );
        true
    }

    /// `create_onion_packet` + send to the path's first node.
    fn send_via_path(&mut self, set: PathSet, slot: usize, dest: SocketAddr, data: &[u8]) -> bool {
        let nonce = Nonce::random(&mut self.rng);
        let own_dht = self.dht_keys.public;
        let Some(path) = self.client.paths(set)[slot].as_ref() else {
            return false;
        };
        let exit = OnionExit {
            destination: IpPort(dest),
            data: data.to_vec(),
        };
        let Ok(c3) = path.key3.encrypt(&nonce, &exit.encode()) else {
            return false;
        };
        let l2 = OnionLayer {
            next: IpPort(path.nodes[2].addr),
            public_key: path.pk3,
            ciphertext: c3,
        };
        let Ok(c2) = path.key2.encrypt(&nonce, &l2.encode()) else {
            return false;
        };
        let l1 = OnionLayer {
            next: IpPort(path.nodes[1].addr),
            public_key: path.pk2,
            ciphertext: c2,
        };
        let (a_pk, a_addr) = (path.nodes[0].public_key, path.nodes[0].addr);
        if path.nodes[0].transport == ferry_wire::node::Transport::Tcp {
            // The relay is node A: it gets layer 1 unwrapped (TCP packet 8).
            if self.client.tcp_requests.len() >= self.config.max_queued_transmits {
                self.stats.tx_dropped += 1;
                return false;
            }
            self.stats.client_requests += 1;
            let body = [nonce.0.as_slice(), &l1.encode()].concat();
            self.client.tcp_requests.push_back((a_pk, body));
            return true;
        }
        let Ok(c1) = self.dht_cache.get(&a_pk).encrypt(&nonce, &l1.encode()) else {
            return false;
        };
        let packet = OnionRequest {
            layer: 0,
            nonce,
            public_key: own_dht,
            ciphertext: c1,
            ret: Vec::new(),
        }
        .encode();
        if packet.len() > ONION_MAX_PACKET_SIZE {
            return false;
        }
        self.stats.client_requests += 1;
        self.queue(a_addr, packet);
        true
    }

    /// `random_path`: the path in slot `path_num % 6` (random slot if `None`), rebuilt from
    /// three distinct path nodes if it timed out. Returns the slot.
    fn random_path(&mut self, now: Instant, set: PathSet, path_num: Option<u32>) -> Option<usize> {
        let slot = match path_num {
            Some(n) => n as usize % NUMBER_ONION_PATHS,
            None => self.rng.below(NUMBER_ONION_PATHS),
        };
        let needs_new = self.client.paths(set)[slot]
            .as_ref()
            .is_none_or(|p| p.timed_out(now));
        if needs_new {
            let pool = self.client.path_nodes.len();
            let tcp = self.client.tcp_first_hop;
            let need = if tcp { 2 } else { 3 };
            if pool < need || (tcp && self.client.tcp_relays.is_empty()) {
                return None;
            }
            let mut picked: Vec<usize> = Vec::with_capacity(3);
            while picked.len() < need {
                let i = self.rng.below(pool);
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            let nodes = if tcp {
                let r = self.rng.below(self.client.tcp_relays.len());
                [
                    self.client.tcp_relays[r],
                    self.client.path_nodes[picked[0]],
                    self.client.path_nodes[picked[1]],
                ]
            } else {
                [
                    self.client.path_nodes[picked[0]],
                    self.client.path_nodes[picked[1]],
                    self.client.path_nodes[picked[2]],
                ]
            };
            let kp2 = KeyPair::generate(&mut self.rng);
            let kp3 = KeyPair::generate(&mut self.rng);
            let num = (self.rng.next_u32() / NUMBER_ONION_PATHS as u32) * NUMBER_ONION_PATHS as u32
                + slot as u32;
            let path = Path {
                nodes,
                pk2: kp2.public,
                key2: PrecomputedKey::new(&kp2.secret, &nodes[1].public_key),
                pk3: kp3.public,
                key3: PrecomputedKey::new(&kp3.secret, &nodes[2].public_key),
                path_num: num,
                created: now,
                last_success: now,
                last_used: now,
                used_times: ONION_PATH_MAX_NO_RESPONSE_USES / 2,
            };
            self.client.paths(set)[slot] = Some(path);
        }
        let p = self.client.paths(set)[slot].as_mut()?;
        if p.used_times < ONION_PATH_MAX_NO_RESPONSE_USES {
            p.last_used = now;
        }
        p.used_times += 1;
        Some(slot)
    }

    /// `set_path_timeouts`: a response came back over path `path_num`.
    fn set_path_timeouts(&mut self, now: Instant, set: PathSet, path_num: u32) -> u32 {
        let slot = path_num as usize % NUMBER_ONION_PATHS;
        let nodes = match self.client.paths(set)[slot].as_mut() {
            Some(p) if p.path_num == path_num => {
                p.last_success = now;
                p.used_times = 0;
                p.nodes
            }
            _ => return u32::MAX,
        };
        for n in nodes {
            self.client.add_path_node(n);
        }
        path_num
    }

    /// `path_exists`.
    fn path_exists(&mut self, now: Instant, set: PathSet, path_num: u32) -> bool {
        self.client.paths(set)[path_num as usize % NUMBER_ONION_PATHS]
            .as_ref()
            .is_some_and(|p| !p.timed_out(now) && p.path_num == path_num)
    }
}
