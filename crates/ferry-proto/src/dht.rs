//! The Tox DHT as a sans-IO state machine, wire- and behaviour-compatible with c-toxcore 0.2.18
//! (`tox-protocol.md` §3; c-toxcore `DHT.c`, `ping.c`, `LAN_discovery.c`; seed 001).
//!
//! # Flow
//!
//! * **Close list**: 128 buckets × 8 nodes, bucket = leading bits shared with our DHT key (capped
//!   at 127). A node enters only after it answered one of our requests (a ping response or a
//!   non-empty nodes response whose ping id we issued, from the same key and address, within 5 s).
//!   Good nodes are never evicted; a slot is reused only when its node went bad (122 s silent).
//! * **Search lists** ("friends' close lists"): for each DHT key we look for, the 8 nodes closest to
//!   it. A search *resolves* when the key's own node answers us: then we know its IP address.
//!   Two random "fake friend" searches run always, as in c-toxcore, to widen the view.
//! * **Requests we answer**: ping → ping response; nodes request → the 4 closest good nodes we know
//!   (LAN addresses only to LAN requesters); both also queue the requester for a ping if it would fit
//!   our close list (≤ 32 every 2 s).
//! * **Timers** (once a second): nodes request to each node every 60 s as liveness check; every
//!   20 s (and on the first 5 ticks) a nodes request to a random good node of each list; nodes
//!   returned in responses that would fit a list get a nodes request on the next tick.
//!
//! # Where c-toxcore's values differ from seed 001's, c-toxcore's are used
//!
//! | what | seed 001 | here (c-toxcore 0.2.18) |
//! |---|---|---|
//! | close list | 32 entries | 128 buckets × 8 = 1024 ([`BUCKETS`], [`BUCKET_SIZE`]) |
//! | node bad after | 130 s | 122 s ([`BAD_NODE_TIMEOUT`]) |
//! | node dropped after | 300 s | 182 s ([`KILL_NODE_TIMEOUT`]) |
//! | liveness check | ping every 60 s | nodes request every 60 s ([`PING_INTERVAL`]) |
//! | nodes per response | 8 | 4 ([`ferry_wire::dht::MAX_SENT_NODES`]) |
//! | pending requests | expire after 5 s | 512 per kind, 5 s ([`PING_TIMEOUT`]) |
//! | random nodes request | every 20 s | every 20 s, first 5 on consecutive ticks ([`GET_NODE_INTERVAL`]) |
//! | ids | 32-bit client id = hash of key | 256-bit DHT public key, 8-byte ping ids, encrypted packets |
//!
//! # Rate limits (as c-toxcore)
//!
//! Requesters are pinged back through a queue of at most [`MAX_TO_PING`] nodes flushed every
//! [`TIME_TO_PING`]; outstanding requests are capped at [`PING_ARRAY_SIZE`] per kind; nodes taken
//! from responses are queued at most [`MAX_CLOSE_TO_BOOTSTRAP_NODES`] (close list) and
//! [`MAX_FRIEND_TO_BOOTSTRAP_NODES`] per search per tick. ferry adds caps of its own on every
//! table keyed by remote input (searches, bootstrap nodes, the transmit and event queues).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PrecomputedCache, PublicKey};
use ferry_wire::WireError;
use ferry_wire::dht::{
    BootstrapInfo, DhtEnvelope, DhtKind, DhtRequest, LanDiscovery, MAX_SENT_NODES, NatPing,
    NodesRequestPayload, NodesResponsePayload, Packet, PingPayload,
};
use ferry_wire::node::{PackedNode, ip_is_lan, normalize};

use crate::ping_array::PingArray;
use crate::{Destination, Endpoint, Transmit};

pub mod nat;

/// Number of close-list buckets (`LCLIENT_LENGTH`).
pub const BUCKETS: usize = 128;
/// Nodes per bucket (`LCLIENT_NODES`).
pub const BUCKET_SIZE: usize = 8;
/// Nodes kept per search list (`MAX_FRIEND_CLIENTS`).
pub const SEARCH_LIST_SIZE: usize = 8;
/// A node is bad after this long without a response (`BAD_NODE_TIMEOUT` = 122 s).
pub const BAD_NODE_TIMEOUT: Duration = Duration::from_secs(122);
/// A node is no longer checked, and is dropped, after this long (`KILL_NODE_TIMEOUT` = 182 s).
pub const KILL_NODE_TIMEOUT: Duration = Duration::from_secs(182);
/// Liveness nodes request to each listed node (`PING_INTERVAL` = 60 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(60);
/// Nodes request to a random good node of each list (`GET_NODE_INTERVAL` = 20 s).
pub const GET_NODE_INTERVAL: Duration = Duration::from_secs(20);
/// Quick random nodes requests for a fresh list (`MAX_BOOTSTRAP_TIMES` = 5).
pub const MAX_BOOTSTRAP_TIMES: u32 = 5;
/// Pending ping / nodes requests expire after 5 s (`PING_TIMEOUT`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending requests kept per kind (`PING_NUM_MAX`, `DHT_PING_ARRAY_SIZE` = 512).
pub const PING_ARRAY_SIZE: usize = 512;
/// Requesters queued for a ping-back (`MAX_TO_PING` = 32).
pub const MAX_TO_PING: usize = 32;
/// The ping-back queue is flushed every 2 s (`TIME_TO_PING`).
pub const TIME_TO_PING: Duration = Duration::from_secs(2);
/// Nodes from responses queued for the close list per tick (`MAX_CLOSE_TO_BOOTSTRAP_NODES` = 8).
pub const MAX_CLOSE_TO_BOOTSTRAP_NODES: usize = 8;
/// Nodes from responses queued per search list per tick (4 in c-toxcore).
pub const MAX_FRIEND_TO_BOOTSTRAP_NODES: usize = 4;
/// LAN discovery interval (`LAN_DISCOVERY_INTERVAL` = 10 s).
pub const LAN_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// The default Tox port, always probed by LAN discovery (`TOX_PORT_DEFAULT`).
pub const TOX_PORT_DEFAULT: u16 = 33445;
/// LAN discovery also probes this many ports per round, cycling through 33446..33545.
pub const PORTS_PER_DISCOVERY: u16 = 10;
/// Random "fake friend" searches kept to widen the view (`DHT_FAKE_FRIEND_NUMBER` = 2).
pub const FAKE_FRIENDS: usize = 2;
/// The state machine's tick.
pub const TICK: Duration = Duration::from_secs(1);
/// Shortest spacing of "to bootstrap" flushes (nodes requests for new close-list and search
/// candidates, e.g. right after [`Dht::add_search`]). c-toxcore sends them on its next
/// iteration (~50 ms); ferry wakes only while some are pending.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// While no close node is good, bootstrap nodes are asked again this often (ferry's choice:
/// c-toxcore leaves re-bootstrapping to the client).
pub const REBOOTSTRAP_INTERVAL: Duration = Duration::from_secs(10);
/// Version reported in bootstrap info responses (ferry 0.1.0 in tox-bootstrapd's numbering).
pub const BOOTSTRAP_INFO_VERSION: u32 = 1_000_001_000;

/// Configuration of a [`Dht`].
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// Send LAN discovery broadcasts every 10 s and answer LAN discovery from LAN addresses.
    pub lan_discovery: bool,
    /// Answer bootstrap info (0xf0) requests with this MOTD (≤ 256 bytes); `None` = stay silent,
    /// as a plain c-toxcore node does.
    pub motd: Option<Vec<u8>>,
    /// Most user searches at once (cap on a table keyed by user input).
    pub max_searches: usize,
    /// Most bootstrap nodes remembered for re-bootstrapping.
    pub max_bootstrap_nodes: usize,
    /// Most datagrams queued for the driver before new ones are dropped (and counted).
    pub max_queued_transmits: usize,
    /// Most events queued before the oldest is dropped.
    pub max_queued_events: usize,
    /// Peers whose precomputed `crypto_box` key is cached (c-toxcore: 256 × 4 slots).
    pub key_cache_size: usize,
    /// Where keys missing from that cache come from; `None` = compute them (the simulator
    /// shares one memo between all its nodes).
    pub key_source: Option<std::sync::Arc<dyn ferry_crypto::KeySource>>,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            lan_discovery: true,
            motd: None,
            max_searches: 4096,
            max_bootstrap_nodes: 64,
            max_queued_transmits: 16_384,
            max_queued_events: 4096,
            key_cache_size: 1024,
            key_source: None,
        }
    }
}

/// What the DHT tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DhtEvent {
    /// A searched DHT key answered us from this address: its IP address is known.
    Found {
        /// The searched DHT key.
        public_key: PublicKey,
        /// Where it answered from.
        addr: SocketAddr,
    },
    /// A routed DHT request (0x20) for us arrived: `[request id][data]` decrypted.
    DhtRequest {
        /// Sender's DHT key.
        sender: PublicKey,
        /// Where the packet came from (the node that routed it).
        from: SocketAddr,
        /// Request id (0xfe NAT ping, 0x9c DHT-PK, …).
        id: u8,
        /// The rest of the plaintext.
        data: Vec<u8>,
    },
    /// A bootstrap info response arrived.
    BootstrapInfo {
        /// Sender address.
        from: SocketAddr,
        /// Its version.
        version: u32,
        /// Its message of the day.
        motd: Vec<u8>,
    },
}

/// Errors of DHT commands (not of remote input, which is counted and dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhtError {
    /// The search table is full ([`DhtConfig::max_searches`]).
    #[error("too many searches at once (limit {0})")]
    TooManySearches(usize),
    /// Searching for our own key makes no sense.
    #[error("that is this node's own DHT key")]
    OwnKey,
}

/// Counters, for `ferry status`, metrics and the simulator. All counts since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Datagrams received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Datagrams queued for sending.
    pub tx_packets: u64,
    /// Bytes queued for sending.
    pub tx_bytes: u64,
    /// Datagrams of kinds this layer does not handle, ignored silently.
    pub unknown_kind: u64,
    /// Malformed datagrams dropped (bad length, bad field, failed decryption).
    pub malformed: u64,
    /// Responses dropped because no matching request of ours was outstanding.
    pub unsolicited: u64,
    /// Routed DHT requests forwarded to a close node.
    pub forwarded: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub tx_dropped: u64,
    /// Shared keys computed (X25519), i.e. misses of the precomputed-key cache.
    pub keys_computed: u64,
    /// NAT ping requests and responses sent (one per routing node), [`nat`].
    pub nat_pings: u64,
    /// DHT ping requests sent by hole punching ([`nat`]).
    pub punch_pings: u64,
}

/// One node's address of one family and its timestamps.
#[derive(Clone, Copy, Debug)]
struct Assoc {
    addr: SocketAddr,
    last_resp: Instant,
    last_pinged: Instant,
}

impl Assoc {
    fn good(&self, now: Instant) -> bool {
        self.good_by(Cutoffs::at(now))
    }
    /// [`Assoc::good`] against precomputed cutoffs (hot loops compute them once).
    fn good_by(&self, cut: Cutoffs) -> bool {
        cut.bad_before.is_none_or(|b| self.last_resp > b)
    }
    fn killed_by(&self, cut: Cutoffs) -> bool {
        cut.kill_before.is_some_and(|k| self.last_resp <= k)
    }
}

/// The liveness cutoffs of one moment `now`: an association is good while its last response is
/// later than `now - BAD_NODE_TIMEOUT`, and killed once it is at or before
/// `now - KILL_NODE_TIMEOUT` (the same tests as `now - last_resp < timeout`, without a
/// subtraction per entry). `None`: `now` is closer to the clock's origin than the timeout, so
/// nothing can be that old.
#[derive(Clone, Copy, Debug)]
struct Cutoffs {
    bad_before: Option<Instant>,
    kill_before: Option<Instant>,
}

impl Cutoffs {
    fn at(now: Instant) -> Self {
        Self {
            bad_before: now.checked_sub(BAD_NODE_TIMEOUT),
            kill_before: now.checked_sub(KILL_NODE_TIMEOUT),
        }
    }
}

/// A listed node: a DHT key with an IPv4 and/or IPv6 association.
#[derive(Clone, Debug)]
struct Client {
    public_key: PublicKey,
    v4: Option<Assoc>,
    v6: Option<Assoc>,
}

impl Client {
    fn new(public_key: PublicKey, addr: SocketAddr, now: Instant) -> Self {
        let mut c = Self {
            public_key,
            v4: None,
            v6: None,
        };
        *c.slot(addr) = Some(Assoc {
            addr,
            last_resp: now,
            last_pinged: now,
        });
        c
    }
    fn slot(&mut self, addr: SocketAddr) -> &mut Option<Assoc> {
        if addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        }
    }
    fn assocs(&self) -> impl Iterator<Item = &Assoc> {
        self.v4.iter().chain(self.v6.iter())
    }
    fn good(&self, now: Instant) -> bool {
        self.good_by(Cutoffs::at(now))
    }
    fn good_by(&self, cut: Cutoffs) -> bool {
        self.assocs().any(|a| a.good_by(cut))
    }
    /// The most recently heard-from good association.
    fn best(&self, now: Instant) -> Option<&Assoc> {
        self.best_by(Cutoffs::at(now))
    }
    fn best_by(&self, cut: Cutoffs) -> Option<&Assoc> {
        // `max_by_key` over the good ones, written out (a hot path of `get_close_nodes`): on a
        // tie the later one, v6, wins, as `max_by_key` would pick it.
        let v4 = self.v4.as_ref().filter(|a| a.good_by(cut));
        let v6 = self.v6.as_ref().filter(|a| a.good_by(cut));
        match (v4, v6) {
            (Some(a), Some(b)) => Some(if b.last_resp >= a.last_resp { b } else { a }),
            (a, b) => a.or(b),
        }
    }
    fn has_addr(&self, addr: SocketAddr) -> bool {
        self.assocs().any(|a| a.addr == addr)
    }
    /// Records a response from `addr`. Like c-toxcore's `update_client`, a LAN address does not
    /// replace a known non-LAN one.
    fn update(&mut self, addr: SocketAddr, now: Instant) {
        let slot = self.slot(addr);
        match slot {
            Some(a) if a.addr == addr => a.last_resp = now,
            Some(a) if ip_is_lan(addr.ip()) && !ip_is_lan(a.addr.ip()) && a.good(now) => {}
            _ => {
                *slot = Some(Assoc {
                    addr,
                    last_resp: now,
                    last_pinged: now,
                })
            }
        }
    }
    /// Drops associations past the kill timeout; `false` when none is left.
    fn prune(&mut self, cut: Cutoffs) -> bool {
        if self.v4.is_some_and(|a| a.killed_by(cut)) {
            self.v4 = None;
        }
        if self.v6.is_some_and(|a| a.killed_by(cut)) {
            self.v6 = None;
        }
        self.v4.is_some() || self.v6.is_some()
    }
}

/// The close list: [`BUCKETS`] × [`BUCKET_SIZE`].
#[derive(Debug)]
struct CloseList {
    own: PublicKey,
    buckets: Vec<Vec<Client>>,
    /// Per bucket, what its last walk by [`Dht::scan`] found (`None`: changed since, walk it).
    scanned: Vec<Option<ListScan>>,
    /// Per bucket, its length (0..=[`BUCKET_SIZE`]), kept in step with `buckets` by
    /// [`CloseList::resync`]: `get_close_nodes` skips empty buckets without loading them.
    lens: [u8; BUCKETS],
    /// Per bucket, [`key_head`] of each client's key in list order (the first `lens[i]` are
    /// valid): `get_close_nodes` tests a client's distance head without loading the ~160-byte
    /// [`Client`] (issue 3, simulator speed).
    heads: Vec<Heads>,
    /// Per bucket, a 64-bit Bloom filter ([`addr_bits`]) over the addresses of its clients, a
    /// superset at all times: [`CloseList::resync`] recomputes it and every address entering the
    /// bucket sets its bits. The sweep for a restarted node's address in [`CloseList::add`]
    /// walks only the buckets whose filter holds the address (issue 3, simulator speed).
    addr_bloom: Vec<u64>,
}

/// The key heads of one list ([`BUCKET_SIZE`] = [`SEARCH_LIST_SIZE`] = 8), one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(64))]
struct Heads([u64; BUCKET_SIZE]);

// A search list's heads fit in one `Heads`.
const _: () = assert!(SEARCH_LIST_SIZE <= BUCKET_SIZE);

impl CloseList {
    fn new(own: PublicKey) -> Self {
        Self {
            own,
            buckets: vec![Vec::new(); BUCKETS],
            scanned: vec![None; BUCKETS],
            lens: [0; BUCKETS],
            heads: vec![Heads::default(); BUCKETS],
            addr_bloom: vec![0; BUCKETS],
        }
    }
    /// Refreshes `lens[idx]` and `heads[idx]` after bucket `idx` gained, lost or replaced clients.
    fn resync(&mut self, idx: usize) {
        let bucket = &self.buckets[idx];
        // A bucket never holds more than BUCKET_SIZE clients (`add`), so this never truncates.
        self.lens[idx] = bucket.len().min(BUCKET_SIZE) as u8;
        for (h, c) in self.heads[idx].0.iter_mut().zip(bucket) {
            *h = key_head(&c.public_key.0);
        }
        self.addr_bloom[idx] = bucket
            .iter()
            .flat_map(Client::assocs)
            .fold(0, |bloom, a| bloom | addr_bits(a.addr));
    }
    /// Whether `lens` and `heads` match `buckets` and `addr_bloom` holds every address
    /// (checked in debug builds).
    fn heads_in_sync(&self) -> bool {
        self.buckets.iter().enumerate().all(|(i, b)| {
            usize::from(self.lens[i]) == b.len()
                && b.iter().flat_map(Client::assocs).all(|a| {
                    let bits = addr_bits(a.addr);
                    self.addr_bloom[i] & bits == bits
                })
                && b.iter()
                    .zip(&self.heads[i].0)
                    .all(|(c, h)| key_head(&c.public_key.0) == *h)
        })
    }
    fn bucket_of(&self, pk: &PublicKey) -> usize {
        (self.own.common_prefix_bits(pk) as usize).min(BUCKETS - 1)
    }
    fn find(&self, pk: &PublicKey) -> Option<&Client> {
        let idx = self.bucket_of(pk);
        let bucket = &self.buckets[idx];
        position_by_head(&self.heads[idx], bucket, pk).and_then(|i| bucket.get(i))
    }
    fn iter(&self) -> impl Iterator<Item = &Client> {
        self.buckets.iter().flatten()
    }
    /// Whether a response from `pk` at `addr` would be stored (`node_addable_to_close_list`).
    fn addable(&self, pk: &PublicKey, addr: SocketAddr, now: Instant) -> bool {
        if *pk == self.own {
            return false;
        }
        let idx = self.bucket_of(pk);
        let bucket = &self.buckets[idx];
        if let Some(c) = position_by_head(&self.heads[idx], bucket, pk).and_then(|i| bucket.get(i))
        {
            // Known: worth a ping unless already good at this very address.
            return !(c.good(now) && c.has_addr(addr));
        }
        bucket.len() < BUCKET_SIZE
            || (!ListScan::all_good_at(self.scanned[idx], now)
                && bucket.iter().any(|c| !c.good(now)))
    }
    /// Adds or refreshes a node that answered us (`add_to_close`).
    fn add(&mut self, pk: PublicKey, addr: SocketAddr, now: Instant) -> Insert {
        if pk == self.own {
            return Insert::No;
        }
        let idx = self.bucket_of(&pk);
        if let Some(c) = position_by_head(&self.heads[idx], &self.buckets[idx], &pk)
            .and_then(|i| self.buckets[idx].get_mut(i))
        {
            c.update(addr, now);
            self.addr_bloom[idx] |= addr_bits(addr);
            self.scanned[idx] = None;
            return Insert::Refreshed;
        }
        // A different key at the same address: that node restarted with a new DHT key.
        let bits = addr_bits(addr);
        for i in 0..BUCKETS {
            // No client of bucket `i` has `addr` (empty buckets have an empty filter).
            if self.addr_bloom[i] & bits != bits {
                continue;
            }
            let bucket = &mut self.buckets[i];
            let before = bucket.len();
            bucket.retain(|c| !c.has_addr(addr));
            if bucket.len() != before {
                self.scanned[i] = None;
                self.resync(i);
            }
        }
        let bucket = &mut self.buckets[idx];
        if bucket.len() < BUCKET_SIZE {
            bucket.push(Client::new(pk, addr, now));
            self.scanned[idx] = None;
            self.resync(idx);
            return Insert::New;
        }
        if let Some(slot) = bucket.iter_mut().find(|c| !c.good(now)) {
            *slot = Client::new(pk, addr, now);
            self.scanned[idx] = None;
            self.resync(idx);
            return Insert::New;
        }
        Insert::No
    }
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }
}

/// A search list: the nodes closest to one DHT key we look for.
#[derive(Debug)]
struct Search {
    clients: Vec<Client>,
    /// [`key_head`] of each client's key, in list order (the first `clients.len()`, kept in step
    /// by [`Search::resync`]): `get_close_nodes` tests distances without loading each [`Client`].
    heads: Heads,
    last_get_node: Option<Instant>,
    bootstrap_times: u32,
    to_bootstrap: Vec<(PublicKey, SocketAddr)>,
    fake: bool,
    found: Option<SocketAddr>,
    started: Instant,
    requests: u32,
    nat: nat::NatState,
    /// What the last walk of `clients` by [`Dht::scan`] found (`None`: changed since).
    scanned: Option<ListScan>,
}

impl Search {
    fn new(now: Instant, fake: bool) -> Self {
        Self {
            clients: Vec::new(),
            heads: Heads::default(),
            last_get_node: None,
            bootstrap_times: 0,
            to_bootstrap: Vec::new(),
            fake,
            found: None,
            started: now,
            requests: 0,
            nat: nat::NatState::new(),
            scanned: None,
        }
    }

    /// Refreshes `heads` after `clients` gained, lost or replaced clients.
    fn resync(&mut self) {
        for (h, c) in self.heads.0.iter_mut().zip(&self.clients) {
            *h = key_head(&c.public_key.0);
        }
    }
    /// Whether `heads` matches `clients` (checked in debug builds).
    fn heads_in_sync(&self) -> bool {
        self.clients.len() <= SEARCH_LIST_SIZE
            && self
                .clients
                .iter()
                .zip(&self.heads.0)
                .all(|(c, h)| key_head(&c.public_key.0) == *h)
    }

    /// The slot `pk` would take (`store_node_ok` on the worst entry): an empty one, a bad one, or
    /// the farthest one if `pk` is closer to `target`.
    fn worst_replaceable(&self, target: &PublicKey, pk: &PublicKey, now: Instant) -> Option<usize> {
        // The maximum of (bad, distance to `target`): bad before good, then farthest first. One
        // pass, each client's liveness computed once (a hot path of every nodes response).
        let mut worst: Option<(usize, bool)> = None;
        let cut = Cutoffs::at(now);
        for (i, c) in self.clients.iter().enumerate() {
            let bad = !c.good_by(cut);
            let further = worst.is_none_or(|(w, w_bad)| {
                bad.cmp(&w_bad)
                    .then(target.distance_cmp(&c.public_key, &self.clients[w].public_key))
                    .is_ge()
            });
            if further {
                worst = Some((i, bad));
            }
        }
        let (w, w_bad) = worst?;
        if w_bad || target.distance_cmp(pk, &self.clients[w].public_key).is_lt() {
            Some(w)
        } else {
            None
        }
    }

    fn would_store(&self, target: &PublicKey, pk: &PublicKey, now: Instant) -> bool {
        if let Some(c) =
            position_by_head(&self.heads, &self.clients, pk).and_then(|i| self.clients.get(i))
        {
            return !c.good(now);
        }
        if self.clients.len() < SEARCH_LIST_SIZE {
            return true;
        }
        if ListScan::all_good_at(self.scanned, now) {
            // Every client is good, so the worst is the farthest from `target`, and `pk` takes
            // its slot if it is closer. The key heads decide unless `pk`'s head ties the
            // farthest head (issue 3, simulator speed: no client is loaded).
            let t = key_head(&target.0);
            let own = key_head(&pk.0) ^ t;
            let farthest = self
                .heads
                .0
                .iter()
                .take(self.clients.len())
                .map(|h| h ^ t)
                .max()
                .unwrap_or(0);
            if own != farthest {
                return own < farthest;
            }
        }
        self.worst_replaceable(target, pk, now).is_some()
    }

    /// Adds or refreshes `pk` (`replace_all`).
    fn add(&mut self, target: &PublicKey, pk: PublicKey, addr: SocketAddr, now: Instant) -> Insert {
        if let Some(c) =
            position_by_head(&self.heads, &self.clients, &pk).and_then(|i| self.clients.get_mut(i))
        {
            c.update(addr, now);
            self.scanned = None;
            return Insert::Refreshed;
        }
        if self.clients.len() < SEARCH_LIST_SIZE {
            if let Some(h) = self.heads.0.get_mut(self.clients.len()) {
                *h = key_head(&pk.0);
            }
            self.clients.push(Client::new(pk, addr, now));
            self.scanned = None;
            return Insert::New;
        }
        match self.worst_replaceable(target, &pk, now) {
            Some(i) => {
                self.clients[i] = Client::new(pk, addr, now);
                if let Some(h) = self.heads.0.get_mut(i) {
                    *h = key_head(&pk.0);
                }
                self.scanned = None;
                Insert::New
            }
            None => Insert::No,
        }
    }
}

/// What adding a node to a list did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Insert {
    /// Not listed (our own key, or no slot it may take).
    No,
    /// Already listed; its timestamps were refreshed.
    Refreshed,
    /// Newly listed.
    New,
}

/// A node of the close list as reported by [`Dht::close_nodes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseNode {
    /// Its DHT public key.
    pub public_key: PublicKey,
    /// Its most recently heard-from address.
    pub addr: SocketAddr,
    /// Time since its last response.
    pub last_seen: Duration,
    /// Whether it answered within [`BAD_NODE_TIMEOUT`].
    pub good: bool,
}

/// State of one search, as reported by [`Dht::search_status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchStatus {
    /// The searched key's address, once it answered us.
    pub found: Option<SocketAddr>,
    /// Nodes in the search list.
    pub nodes: usize,
    /// Time since the search started.
    pub age: Duration,
    /// Nodes requests sent for this search so far.
    pub requests: u32,
}

/// The Tox DHT state machine. See the module docs for the protocol flow and constants.
#[derive(Debug)]
pub struct Dht {
    keys: KeyPair,
    cache: PrecomputedCache,
    rng: FerryRng,
    config: DhtConfig,
    close: CloseList,
    searches: BTreeMap<PublicKey, Search>,
    pings: PingArray,
    nodes_requests: PingArray,
    to_ping: Vec<(PublicKey, SocketAddr)>,
    to_bootstrap: Vec<(PublicKey, SocketAddr)>,
    bootstrap_nodes: Vec<(PublicKey, SocketAddr)>,
    close_last_get_node: Option<Instant>,
    close_bootstrap_times: u32,
    last_to_ping: Instant,
    last_rebootstrap: Option<Instant>,
    last_lan: Option<Instant>,
    next_lan_port: u16,
    last_tick: Instant,
    next_scan: Instant,
    last_scan: Instant,
    last_flush: Instant,
    to_bootstrap_pending: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DhtEvent>,
    stats: DhtStats,
    /// When hole punching ([`nat`]) next needs a look; `None` until some search has reports.
    next_nat: Option<Instant>,
    /// Buffers [`Dht::scan`] reuses (empty between scans), so a scan allocates nothing: it runs
    /// about once a second and collects every listed node as a candidate.
    scan_sends: Vec<(SocketAddr, PublicKey, PublicKey)>,
    scan_candidates: Vec<(SocketAddr, PublicKey)>,
}

impl Dht {
    /// A DHT node with DHT key pair `keys` (fresh per start, as c-toxcore does), randomness `rng`
    /// and the clock reading `now`.
    pub fn new(config: DhtConfig, keys: KeyPair, mut rng: FerryRng, now: Instant) -> Self {
        let cache = PrecomputedCache::with_source(
            keys.secret.clone(),
            config.key_cache_size,
            config.key_source.clone(),
        );
        let own = keys.public;
        let mut searches = BTreeMap::new();
        for _ in 0..FAKE_FRIENDS {
            searches.insert(PublicKey(rng.bytes()), Search::new(now, true));
        }
        Self {
            keys,
            cache,
            rng,
            config,
            close: CloseList::new(own),
            searches,
            pings: PingArray::new(PING_ARRAY_SIZE, PING_TIMEOUT),
            nodes_requests: PingArray::new(PING_ARRAY_SIZE, PING_TIMEOUT),
            to_ping: Vec::new(),
            to_bootstrap: Vec::new(),
            bootstrap_nodes: Vec::new(),
            close_last_get_node: None,
            close_bootstrap_times: 0,
            last_to_ping: now,
            last_rebootstrap: None,
            last_lan: None,
            next_lan_port: TOX_PORT_DEFAULT + 1,
            last_tick: now,
            next_scan: now,
            last_scan: now.checked_sub(TICK).unwrap_or(now),
            last_flush: now.checked_sub(TICK).unwrap_or(now),
            to_bootstrap_pending: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DhtStats::default(),
            next_nat: None,
            scan_sends: Vec::new(),
            scan_candidates: Vec::new(),
        }
    }

    /// Our DHT public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public
    }

    /// Counters since start.
    pub fn stats(&self) -> DhtStats {
        DhtStats {
            keys_computed: self.cache.computed(),
            ..self.stats
        }
    }

    /// Bootstraps from a known node: sends it a nodes request for our own key now and remembers it
    /// (up to [`DhtConfig::max_bootstrap_nodes`]) to ask again every [`REBOOTSTRAP_INTERVAL`]
    /// while no close node is good. Our own key is ignored.
    pub fn bootstrap(&mut self, now: Instant, addr: SocketAddr, public_key: PublicKey) {
        let addr = normalize(addr);
        if public_key == self.keys.public {
            return;
        }
        if !self
            .bootstrap_nodes
            .iter()
            .any(|(k, a)| *k == public_key && *a == addr)
            && self.bootstrap_nodes.len() < self.config.max_bootstrap_nodes
        {
            self.bootstrap_nodes.push((public_key, addr));
        }
        self.last_rebootstrap = Some(now);
        let own = self.keys.public;
        self.send_nodes_request(now, addr, public_key, own);
    }

    /// Starts looking for the IP address of the node with DHT key `target` (the friend-search
    /// path of the Tox DHT, `dht_addfriend`). The search list is seeded with the 4 closest nodes
    /// we know. Adding a key twice is not an error.
    ///
    /// # Errors
    /// [`DhtError::OwnKey`], or [`DhtError::TooManySearches`] past [`DhtConfig::max_searches`].
    pub fn add_search(&mut self, now: Instant, target: PublicKey) -> Result<(), DhtError> {
        if target == self.keys.public {
            return Err(DhtError::OwnKey);
        }
        if let Some(s) = self.searches.get_mut(&target) {
            s.fake = false;
            return Ok(());
        }
        if self.searches.values().filter(|s| !s.fake).count() >= self.config.max_searches {
            return Err(DhtError::TooManySearches(self.config.max_searches));
        }
        let mut search = Search::new(now, false);
        for n in self.get_close_nodes(&target, true, now) {
            search.to_bootstrap.push((n.public_key, n.addr));
        }
        self.to_bootstrap_pending |= !search.to_bootstrap.is_empty();
        self.next_scan = self.next_scan.min(now);
        self.searches.insert(target, search);
        Ok(())
    }

    /// Stops a search started with [`Dht::add_search`]. Unknown keys are ignored.
    pub fn remove_search(&mut self, target: &PublicKey) {
        if self.searches.get(target).is_some_and(|s| !s.fake) {
            self.searches.remove(target);
        }
    }

    /// Where a search stands; `None` if `target` is not searched.
    pub fn search_status(&self, now: Instant, target: &PublicKey) -> Option<SearchStatus> {
        let s = self.searches.get(target).filter(|s| !s.fake)?;
        Some(SearchStatus {
            found: s.found,
            nodes: s.clients.len(),
            age: now.saturating_duration_since(s.started),
            requests: s.requests,
        })
    }

    /// The address of the node with DHT key `pk` if we know it from a response of its own
    /// (close list or any search list), else `None`.
    pub fn address_of(&self, now: Instant, pk: &PublicKey) -> Option<SocketAddr> {
        if let Some(c) = self.close.find(pk)
            && let Some(a) = c.best(now)
        {
            return Some(a.addr);
        }
        self.searches
            .values()
            .flat_map(|s| s.clients.iter())
            .find(|c| c.public_key == *pk)?
            .best(now)
            .map(|a| a.addr)
    }

    /// Every node of the close list, closest to our key first.
    pub fn close_nodes(&self, now: Instant) -> Vec<CloseNode> {
        let mut out: Vec<CloseNode> = self
            .close
            .iter()
            .filter_map(|c| {
                let a = c.assocs().max_by_key(|a| a.last_resp)?;
                Some(CloseNode {
                    public_key: c.public_key,
                    addr: a.addr,
                    last_seen: now.saturating_duration_since(a.last_resp),
                    good: c.good(now),
                })
            })
            .collect();
        let own = self.keys.public;
        out.sort_by(|a, b| own.distance_cmp(&a.public_key, &b.public_key));
        out
    }

    /// Up to 4 (`MAX_SENT_NODES`) good nodes closest to `target` from the close list and the
    /// search lists, as a nodes response would carry them: what an onion announce response
    /// returns (`tox-protocol.md` §4.2). LAN addresses are left out unless `requester_is_lan`.
    pub fn closest_nodes(
        &self,
        now: Instant,
        target: &PublicKey,
        requester_is_lan: bool,
    ) -> Vec<PackedNode> {
        self.get_close_nodes(target, requester_is_lan, now)
    }

    /// Up to `count` distinct good nodes picked at random from the close list and the search
    /// lists: candidates for onion path nodes (c-toxcore `random_nodes_path`).
    pub fn random_good_nodes(&mut self, now: Instant, count: usize) -> Vec<PackedNode> {
        let mut pool: Vec<PackedNode> = self
            .close
            .iter()
            .chain(self.searches.values().flat_map(|s| s.clients.iter()))
            .filter(|c| c.good(now))
            .filter_map(|c| {
                let a = c.assocs().max_by_key(|a| a.last_resp)?;
                Some(PackedNode::udp(a.addr, c.public_key))
            })
            .collect();
        pool.sort_by_key(|n| n.public_key.0);
        pool.dedup_by(|a, b| a.public_key == b.public_key);
        let mut out = Vec::with_capacity(count.min(pool.len()));
        while out.len() < count && !pool.is_empty() {
            let i = self.rng.below(pool.len());
            out.push(pool.swap_remove(i));
        }
        out
    }

    /// Number of good nodes in the close list.
    pub fn good_close_count(&self, now: Instant) -> usize {
        self.close.iter().filter(|c| c.good(now)).count()
    }

    /// Whether at least one close node is good (the DHT is "connected" over UDP).
    pub fn is_connected(&self, now: Instant) -> bool {
        self.close.iter().any(|c| c.good(now))
    }

    /// The next event, if any. Drain after every input, like [`Endpoint::poll_transmit`].
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// Routes a DHT request (0x20) for `receiver` through a close node that knows it, or sends it
    /// directly if `receiver` itself is listed. Returns whether it was sent.
    pub fn send_dht_request(
        &mut self,
        now: Instant,
        receiver: PublicKey,
        id: u8,
        data: &[u8],
    ) -> bool {
        let Some(addr) = self.address_of(now, &receiver) else {
            return false;
        };
        let nonce = Nonce::random(&mut self.rng);
        let mut plain = Vec::with_capacity(1 + data.len());
        plain.push(id);
        plain.extend_from_slice(data);
        let Ok(ciphertext) = self.cache.get(&receiver).encrypt(&nonce, &plain) else {
            return false;
        };
        let req = DhtRequest {
            receiver,
            sender: self.keys.public,
            nonce,
            ciphertext,
        };
        self.queue(Destination::Addr(addr), req.encode());
        true
    }

    // ----- internals -----

    fn queue(&mut self, destination: Destination, payload: Vec<u8>) {
        if self.transmits.len() >= self.config.max_queued_transmits {
            self.stats.tx_dropped += 1;
            return;
        }
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += payload.len() as u64;
        self.transmits.push_back(Transmit {
            destination,
            payload,
        });
    }

    fn emit(&mut self, event: DhtEvent) {
        if self.events.len() >= self.config.max_queued_events {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn seal(&mut self, kind: DhtKind, to: &PublicKey, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::random(&mut self.rng);
        let own = self.keys.public;
        let key = self.cache.get(to);
        DhtEnvelope::seal_datagram(kind, own, nonce, key, plain).ok()
    }

    /// Encrypts `plain` to `to` as a DHT packet of `kind` and queues it for `addr`.
    fn send_sealed(&mut self, kind: DhtKind, to: &PublicKey, addr: SocketAddr, plain: &[u8]) {
        if let Some(bytes) = self.seal(kind, to, plain) {
            self.queue(Destination::Addr(addr), bytes);
        }
    }

    /// `dht_getnodes`: a nodes request for `target` to `pk` at `addr`.
    fn send_nodes_request(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        pk: PublicKey,
        target: PublicKey,
    ) {
        if pk == self.keys.public {
            return;
        }
        let ping_id: [u8; 8] = self.rng.bytes();
        self.nodes_requests.insert(ping_id, pk, addr, now);
        let plain = NodesRequestPayload { target, ping_id }.encode();
        self.send_sealed(DhtKind::NodesRequest, &pk, addr, &plain);
    }

    fn send_ping_request(&mut self, now: Instant, addr: SocketAddr, pk: PublicKey) {
        let ping_id: [u8; 8] = self.rng.bytes();
        self.pings.insert(ping_id, pk, addr, now);
        let plain = PingPayload {
            is_response: false,
            ping_id,
        }
        .encode();
        self.send_sealed(DhtKind::PingRequest, &pk, addr, &plain);
    }

    /// `ping_add`: queue a requester for a ping-back if it would fit our close list.
    fn ping_add(&mut self, now: Instant, pk: PublicKey, addr: SocketAddr) {
        if !self.close.addable(&pk, addr, now) {
            return;
        }
        if self.searches.get(&pk).is_some_and(|s| !s.fake) {
            // A node we search for: ping it at once.
            self.send_ping_request(now, addr, pk);
            return;
        }
        if self.to_ping.iter().any(|(k, _)| *k == pk) {
            return;
        }
        if self.to_ping.len() < MAX_TO_PING {
            self.to_ping.push((pk, addr));
            return;
        }
        let own = self.keys.public;
        if let Some((i, _)) = self
            .to_ping
            .iter()
            .enumerate()
            .max_by(|a, b| own.distance_cmp(&a.1.0, &b.1.0))
            && own.distance_cmp(&pk, &self.to_ping[i].0).is_lt()
        {
            self.to_ping[i] = (pk, addr);
        }
    }

    /// `addto_lists`: a node proved itself by answering; put it into every list it fits.
    fn add_to_lists(&mut self, now: Instant, pk: PublicKey, addr: SocketAddr) {
        let mut new = self.close.add(pk, addr, now) == Insert::New;
        let mut found = None;
        for (target, search) in &mut self.searches {
            let ins = search.add(target, pk, addr, now);
            new |= ins == Insert::New;
            if ins != Insert::No && *target == pk && !search.fake && search.found != Some(addr) {
                search.found = Some(addr);
                found = Some(addr);
            }
        }
        if new {
            // A fresh entry may make a random nodes request due (at most one scan per tick).
            self.next_scan = self.next_scan.min(self.last_scan + TICK);
        }
        if let Some(addr) = found {
            self.emit(DhtEvent::Found {
                public_key: pk,
                addr,
            });
        }
    }

    /// `get_close_nodes`: the [`MAX_SENT_NODES`] good nodes closest to `target` over the close
    /// list and every search list; LAN addresses only for LAN requesters.
    fn get_close_nodes(
        &self,
        target: &PublicKey,
        requester_is_lan: bool,
        now: Instant,
    ) -> Vec<PackedNode> {
        // (XOR distance, node, from a search list), closest first. A distance is four big-endian
        // 64-bit words, which compare as the 32-byte big-endian number does, in four integer
        // comparisons.
        //
        // The result is the MAX_SENT_NODES smallest distinct distances over every eligible
        // (good, LAN-filtered) listed client, each given by the first eligible client in the
        // order search lists (map order), then the close list; any order of consideration gives
        // the same distances. The close list goes first here (its nearest buckets prune the
        // rest hardest) and a search-list client then takes over an equal distance found in the
        // close list, which yields exactly the representatives of the search-first order.
        let mut best: Vec<(Dist, PackedNode, bool)> = Vec::with_capacity(MAX_SENT_NODES + 1);
        let cut = Cutoffs::at(now);
        let target_words = key_words(&target.0);
        // `c_head` is [`key_head`] of the client's key, from the list's `heads`, so a client
        // whose head already loses is never loaded.
        let consider = |best: &mut Vec<(Dist, PackedNode, bool)>,
                        c_head: u64,
                        c: &Client,
                        from_search: bool| {
            // Cheapest tests first: the distance's first word, the whole distance, duplicates
            // (equal distances to one target mean equal keys), then liveness.
            let full = best.len() == MAX_SENT_NODES;
            let worst = best.last().map(|(d, _, _)| *d);
            let head = c_head ^ target_words[0];
            if full && worst.is_some_and(|w| head > w[0]) {
                return;
            }
            let dist = xor_words(&target_words, &c.public_key.0);
            // An equal distance may still take over a close-list entry (below).
            if full && worst.is_some_and(|w| dist > w) {
                return;
            }
            let dup = best.iter().position(|(d, _, _)| *d == dist);
            if dup.is_some_and(|i| !from_search || best[i].2) {
                return;
            }
            let Some(a) = c.best_by(cut) else { return };
            if !requester_is_lan && ip_is_lan(a.addr.ip()) {
                return;
            }
            let node = PackedNode::udp(a.addr, c.public_key);
            if let Some(i) = dup {
                best[i] = (dist, node, true);
                return;
            }
            let pos = best.partition_point(|(d, _, _)| *d < dist);
            best.insert(pos, (dist, node, from_search));
            best.truncate(MAX_SENT_NODES);
        };
        debug_assert!(self.close.heads_in_sync());
        debug_assert!(self.searches.values().all(Search::heads_in_sync));
        let close = &self.close;
        let consider_bucket = |best: &mut Vec<(Dist, PackedNode, bool)>, i: usize| {
            let n = usize::from(close.lens[i]);
            if n == 0 {
                return;
            }
            for (k, &h) in close.heads[i].0[..n].iter().enumerate() {
                if let Some(c) = close.buckets[i].get(k) {
                    consider(best, h, c, false);
                }
            }
        };
        // The close list in order of closeness to `target`: with b = the bucket `target` falls
        // in, bucket b's nodes share more than b leading bits with it, buckets above b share
        // exactly b, and bucket j < b shares exactly j; stop once no later bucket can do better.
        let b = self.close.bucket_of(target);
        let beaten = |best: &Vec<(Dist, PackedNode, bool)>, shared: usize| {
            best.len() == MAX_SENT_NODES
                && best
                    .last()
                    .is_some_and(|(d, _, _)| dist_leading_zero_bits(d) > shared)
        };
        consider_bucket(&mut best, b);
        if !beaten(&best, b) {
            for i in b + 1..BUCKETS {
                consider_bucket(&mut best, i);
            }
        }
        for j in (0..b).rev() {
            if beaten(&best, j) {
                break;
            }
            consider_bucket(&mut best, j);
        }
        for s in self.searches.values() {
            for (&h, c) in s.heads.0.iter().zip(&s.clients) {
                consider(&mut best, h, c, true);
            }
        }
        best.into_iter().map(|(_, n, _)| n).collect()
    }

    fn handle_envelope(&mut self, now: Instant, from: SocketAddr, mut env: DhtEnvelope) {
        if env.sender == self.keys.public {
            self.stats.malformed += 1;
            return;
        }
        let (kind, sender) = (env.kind, env.sender);
        let Ok(plain) = env.open_in_place(self.cache.get(&sender)) else {
            self.stats.malformed += 1;
            return;
        };
        let result = match kind {
            DhtKind::PingRequest => self.on_ping_request(now, from, sender, plain),
            DhtKind::PingResponse => self.on_ping_response(now, from, sender, plain),
            DhtKind::NodesRequest => self.on_nodes_request(now, from, sender, plain),
            DhtKind::NodesResponse => self.on_nodes_response(now, from, sender, plain),
        };
        if result.is_err() {
            self.stats.malformed += 1;
        }
    }

    fn on_ping_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: PublicKey,
        plain: &[u8],
    ) -> Result<(), WireError> {
        let p = PingPayload::decode(plain)?;
        if p.is_response {
            return Err(WireError::InvalidValue {
                what: "ping type in request",
                value: 1,
            });
        }
        let resp = PingPayload {
            is_response: true,
            ping_id: p.ping_id,
        }
        .encode();
        self.send_sealed(DhtKind::PingResponse, &sender, from, &resp);
        self.ping_add(now, sender, from);
        Ok(())
    }

    fn on_ping_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: PublicKey,
        plain: &[u8],
    ) -> Result<(), WireError> {
        let p = PingPayload::decode(plain)?;
        if !p.is_response {
            return Err(WireError::InvalidValue {
                what: "ping type in response",
                value: 0,
            });
        }
        if !self.pings.take(&p.ping_id, &sender, from, now) {
            self.stats.unsolicited += 1;
            return Ok(());
        }
        self.add_to_lists(now, sender, from);
        Ok(())
    }

    fn on_nodes_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: PublicKey,
        plain: &[u8],
    ) -> Result<(), WireError> {
        let req = NodesRequestPayload::decode(plain)?;
        let nodes = self.get_close_nodes(&req.target, ip_is_lan(from.ip()), now);
        let resp = NodesResponsePayload {
            nodes,
            ping_id: req.ping_id,
        }
        .encode();
        self.send_sealed(DhtKind::NodesResponse, &sender, from, &resp);
        self.ping_add(now, sender, from);
        Ok(())
    }

    fn on_nodes_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: PublicKey,
        plain: &[u8],
    ) -> Result<(), WireError> {
        let resp = NodesResponsePayload::decode(plain)?;
        if !self.nodes_requests.take(&resp.ping_id, &sender, from, now) {
            self.stats.unsolicited += 1;
            return Ok(());
        }
        if resp.nodes.is_empty() {
            // c-toxcore rejects zero-node responses and does not add the responder.
            return Ok(());
        }
        self.add_to_lists(now, sender, from);
        for node in resp.nodes {
            let addr = normalize(node.addr);
            if node.public_key == self.keys.public || addr.port() == 0 || addr.ip().is_unspecified()
            {
                continue;
            }
            self.consider_returned_node(now, node.public_key, addr);
            self.nat_report(now, sender, node.public_key, addr);
        }
        Ok(())
    }

    /// `ping_node_from_getnodes_ok`: queue a node learned from a response for a nodes request on
    /// the next tick, for the close list and for each search list it would fit.
    fn consider_returned_node(&mut self, now: Instant, pk: PublicKey, addr: SocketAddr) {
        let own = self.keys.public;
        let in_close_good = self.close.find(&pk).is_some_and(|c| c.good(now));
        if !in_close_good
            && self.close.addable(&pk, addr, now)
            && !self.to_bootstrap.iter().any(|(k, _)| *k == pk)
        {
            if self.to_bootstrap.len() < MAX_CLOSE_TO_BOOTSTRAP_NODES {
                self.to_bootstrap.push((pk, addr));
                self.to_bootstrap_pending = true;
            } else if let Some((i, _)) = self
                .to_bootstrap
                .iter()
                .enumerate()
                .max_by(|a, b| own.distance_cmp(&a.1.0, &b.1.0))
                && own.distance_cmp(&pk, &self.to_bootstrap[i].0).is_lt()
            {
                self.to_bootstrap[i] = (pk, addr);
            }
        }
        for (target, search) in &mut self.searches {
            if search.would_store(target, &pk, now)
                && !search.to_bootstrap.iter().any(|(k, _)| *k == pk)
                && search.to_bootstrap.len() < MAX_FRIEND_TO_BOOTSTRAP_NODES
            {
                search.to_bootstrap.push((pk, addr));
                self.to_bootstrap_pending = true;
            }
        }
    }

    fn handle_dht_request(&mut self, now: Instant, from: SocketAddr, req: DhtRequest, raw: &[u8]) {
        if req.receiver != self.keys.public {
            // Forward unchanged, but only to a node in our close list (c-toxcore `route_packet`).
            let to = self
                .close
                .find(&req.receiver)
                .and_then(|c| c.best(now))
                .map(|a| a.addr);
            if let Some(addr) = to {
                self.stats.forwarded += 1;
                self.queue(Destination::Addr(addr), raw.to_vec());
            }
            return;
        }
        if req.sender == self.keys.public {
            self.stats.malformed += 1;
            return;
        }
        match self
            .cache
            .get(&req.sender)
            .decrypt(&req.nonce, &req.ciphertext)
        {
            Ok(plain) if plain.first() == Some(&NatPing::REQUEST_ID) => {
                self.handle_nat_ping(now, req.sender, &plain);
            }
            Ok(plain) if !plain.is_empty() => {
                let id = plain[0];
                let data = plain[1..].to_vec();
                self.emit(DhtEvent::DhtRequest {
                    sender: req.sender,
                    from,
                    id,
                    data,
                });
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn handle_lan_discovery(&mut self, now: Instant, from: SocketAddr, lan: LanDiscovery) {
        if !self.config.lan_discovery || !ip_is_lan(from.ip()) || lan.public_key == self.keys.public
        {
            return;
        }
        let own = self.keys.public;
        self.send_nodes_request(now, from, lan.public_key, own);
    }

    /// Sends the queued nodes requests for nodes learned from responses (`to_bootstrap` of the
    /// close list and of every search list), at most once per [`FLUSH_INTERVAL`].
    fn flush_to_bootstrap(&mut self, now: Instant) {
        if !self.to_bootstrap_pending
            || now.saturating_duration_since(self.last_flush) < FLUSH_INTERVAL
        {
            return;
        }
        self.to_bootstrap_pending = false;
        self.last_flush = now;
        let own = self.keys.public;
        for (pk, addr) in std::mem::take(&mut self.to_bootstrap) {
            self.send_nodes_request(now, addr, pk, own);
        }
        let mut sends = Vec::new();
        for (target, s) in &mut self.searches {
            for (pk, addr) in s.to_bootstrap.drain(..) {
                s.requests = s.requests.saturating_add(1);
                sends.push((addr, pk, *target));
            }
        }
        for (addr, pk, target) in sends {
            self.send_nodes_request(now, addr, pk, target);
        }
    }

    /// `do_close` + `do_dht_friends`: liveness requests every [`PING_INTERVAL`] to each listed
    /// node, and a nodes request to a random good node of each list every
    /// [`GET_NODE_INTERVAL`] (on consecutive ticks for the first [`MAX_BOOTSTRAP_TIMES`]).
    /// Also computes when the next such action is due, so idle ticks cost nothing.
    ///
    /// O(due), not O(listed): a list (a close-list bucket, a search list) is walked only when it
    /// changed since its last walk or something in it is due by `now` (a ping, a good node
    /// turning bad, a bad one dying; [`ListScan::until`]), or when its random nodes request may
    /// fire (then every good node is a candidate, in list order). Any other list would yield no
    /// sends, no pruning and the same timestamps, liveness and candidate count as its last walk,
    /// so the cached [`ListScan`] stands in for it: the result is the same as walking everything.
    fn scan(&mut self, now: Instant) {
        let own = self.keys.public;
        let mut next = now + PING_INTERVAL;
        let cut = ScanCut::at(now);
        let mut until: Option<Instant> = None;
        let mut sends = std::mem::take(&mut self.scan_sends);
        let mut candidates = std::mem::take(&mut self.scan_candidates);
        sends.clear();
        candidates.clear();
        let pick_due = get_node_due(self.close_last_get_node, self.close_bootstrap_times, now);
        let mut good = 0usize;
        for i in 0..BUCKETS {
            if self.close.lens[i] == 0 {
                continue;
            }
            let walked = scan_list(
                &mut self.close.buckets[i],
                &mut self.close.scanned[i],
                pick_due,
                now,
                cut,
                own,
                &mut sends,
                &mut candidates,
            );
            // A walk only ever removes clients (order kept), so an unchanged length means
            // unchanged keys.
            if self.close.buckets[i].len() != usize::from(self.close.lens[i]) {
                self.close.resync(i);
            }
            good += walked.good as usize;
            until = min_opt(until, walked.until);
        }
        let pick = random_get_node(
            &mut self.rng,
            good,
            &mut self.close_last_get_node,
            &mut self.close_bootstrap_times,
            now,
            &mut next,
        );
        sends.extend(
            pick.and_then(|i| candidates.get(i))
                .map(|&(addr, pk)| (addr, pk, own)),
        );
        for (target, s) in &mut self.searches {
            candidates.clear();
            let before = sends.len();
            let pick_due = get_node_due(s.last_get_node, s.bootstrap_times, now);
            let before_len = s.clients.len();
            let walked = scan_list(
                &mut s.clients,
                &mut s.scanned,
                pick_due,
                now,
                cut,
                *target,
                &mut sends,
                &mut candidates,
            );
            // A walk only ever removes clients (order kept).
            if s.clients.len() != before_len {
                s.resync();
            }
            until = min_opt(until, walked.until);
            // Pinging changes no `last_resp`, so the target's liveness is the same before and
            // after the survivor's share of the scan.
            if s.found.is_some() && !walked.target_good {
                s.found = None;
            }
            let pick = random_get_node(
                &mut self.rng,
                walked.good as usize,
                &mut s.last_get_node,
                &mut s.bootstrap_times,
                now,
                &mut next,
            );
            sends.extend(
                pick.and_then(|i| candidates.get(i))
                    .map(|&(addr, pk)| (addr, pk, *target)),
            );
            s.requests = s.requests.saturating_add((sends.len() - before) as u32);
        }
        if let Some(t) = until {
            next = next.min(t);
        }
        self.last_scan = now;
        self.next_scan = next.max(now + TICK);
        for &(addr, pk, target) in &sends {
            self.send_nodes_request(now, addr, pk, target);
        }
        sends.clear();
        candidates.clear();
        self.scan_sends = sends;
        self.scan_candidates = candidates;
    }

    fn do_to_ping(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_to_ping) < TIME_TO_PING {
            return;
        }
        self.last_to_ping = now;
        let queue = std::mem::take(&mut self.to_ping);
        for (pk, addr) in queue {
            if self.close.addable(&pk, addr, now) {
                self.send_ping_request(now, addr, pk);
            }
        }
    }

    fn do_rebootstrap(&mut self, now: Instant) {
        if self.bootstrap_nodes.is_empty()
            || self
                .last_rebootstrap
                .is_some_and(|t| now.saturating_duration_since(t) < REBOOTSTRAP_INTERVAL)
        {
            return;
        }
        // Checked every REBOOTSTRAP_INTERVAL; acts only while no close node is good.
        self.last_rebootstrap = Some(now);
        if self.is_connected(now) {
            return;
        }
        let own = self.keys.public;
        for (pk, addr) in self.bootstrap_nodes.clone() {
            self.send_nodes_request(now, addr, pk, own);
        }
    }

    fn do_lan_discovery(&mut self, now: Instant) {
        if !self.config.lan_discovery {
            return;
        }
        if self
            .last_lan
            .is_some_and(|t| now.saturating_duration_since(t) < LAN_DISCOVERY_INTERVAL)
        {
            return;
        }
        self.last_lan = Some(now);
        let packet = LanDiscovery {
            public_key: self.keys.public,
        }
        .encode();
        self.queue(
            Destination::LanBroadcast {
                port: TOX_PORT_DEFAULT,
            },
            packet.clone(),
        );
        const LAST_PORT: u16 = TOX_PORT_DEFAULT + 100; // 33545, exclusive as in c-toxcore
        let end = self
            .next_lan_port
            .saturating_add(PORTS_PER_DISCOVERY)
            .min(LAST_PORT);
        for port in self.next_lan_port..end {
            self.queue(Destination::LanBroadcast { port }, packet.clone());
        }
        self.next_lan_port = if end >= LAST_PORT {
            TOX_PORT_DEFAULT + 1
        } else {
            end
        };
    }
}

/// Hole punching ([`nat`]): reports, NAT pings, punching rounds.
impl Dht {
    /// `returnedip_ports`: node `reporter` answered a nodes request listing `pk` at `addr`.
    fn nat_report(&mut self, now: Instant, reporter: PublicKey, pk: PublicKey, addr: SocketAddr) {
        let Some(s) = self.searches.get_mut(&pk).filter(|s| !s.fake) else {
            return;
        };
        if s.nat.report(&s.clients, reporter, addr, now) {
            self.next_nat = Some(self.next_nat.map_or(now, |t| t.min(now)));
        }
    }

    /// `handle_NATping`: a NAT ping from a searched key. A request is answered through one
    /// random node of that key's search list and noted (the friend punches too); a response
    /// with our current ping id arms one punch and draws a new id.
    fn handle_nat_ping(&mut self, now: Instant, sender: PublicKey, plain: &[u8]) {
        let Ok(ping) = NatPing::decode(plain) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(s) = self.searches.get_mut(&sender).filter(|s| !s.fake) else {
            return;
        };
        if !ping.is_response {
            s.nat.last_recv_nat_ping = Some(now);
            let relays: Vec<SocketAddr> = s
                .clients
                .iter()
                .filter_map(|c| c.assocs().max_by_key(|a| a.last_resp).map(|a| a.addr))
                .collect();
            self.next_nat = Some(self.next_nat.map_or(now, |t| t.min(now)));
            if relays.is_empty() {
                return;
            }
            let relay = relays[self.rng.below(relays.len())];
            let reply = NatPing {
                is_response: true,
                id: ping.id,
            };
            self.send_nat_ping(sender, &[relay], reply);
        } else if s.nat.ping_id == Some(ping.id) {
            s.nat.ping_id = Some(self.rng.bytes());
            s.nat.armed = true;
            self.next_nat = Some(self.next_nat.map_or(now, |t| t.min(now)));
        }
    }

    /// Encrypts a NAT ping to `receiver` as a DHT request (0x20) and sends it to each of `via`,
    /// which route it to `receiver` (`send_NATping`).
    fn send_nat_ping(&mut self, receiver: PublicKey, via: &[SocketAddr], ping: NatPing) {
        let nonce = Nonce::random(&mut self.rng);
        let Ok(ciphertext) = self.cache.get(&receiver).encrypt(&nonce, &ping.encode()) else {
            return;
        };
        let bytes = DhtRequest {
            receiver,
            sender: self.keys.public,
            nonce,
            ciphertext,
        }
        .encode();
        for &addr in via {
            self.stats.nat_pings += 1;
            self.queue(Destination::Addr(addr), bytes.clone());
        }
    }

    /// `do_NAT`: for every search, NAT pings and punching rounds that are due; schedules the
    /// next look.
    fn do_nat(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut actions = Vec::new();
        for (target, s) in &mut self.searches {
            if s.fake {
                continue;
            }
            let plan = s.nat.plan(&s.clients, target, now, &mut self.rng);
            if let Some(n) = plan.next {
                next = Some(next.map_or(n, |t| t.min(n)));
            }
            if plan.nat_ping.is_some() || !plan.punch.is_empty() {
                // Route through every node of the list (`route_to_friend`).
                let via: Vec<SocketAddr> = s
                    .clients
                    .iter()
                    .filter_map(|c| c.assocs().max_by_key(|a| a.last_resp).map(|a| a.addr))
                    .collect();
                actions.push((*target, plan, via));
            }
        }
        // Never busy-loop: look again no sooner than one tick from now.
        self.next_nat = next.map(|n| n.max(now + TICK));
        for (target, plan, via) in actions {
            if let Some(id) = plan.nat_ping {
                let ping = NatPing {
                    is_response: false,
                    id,
                };
                self.send_nat_ping(target, &via, ping);
            }
            for addr in plan.punch {
                self.stats.punch_pings += 1;
                self.send_ping_request(now, addr, target);
            }
        }
    }
}

/// The index of `pk` in a list (a close-list bucket or a search list) whose [`key_head`]s are
/// `heads`: a client is loaded only when its head matches, so a miss reads the one line of heads
/// instead of every ~160-byte [`Client`] (issue 3, simulator speed).
fn position_by_head(heads: &Heads, clients: &[Client], pk: &PublicKey) -> Option<usize> {
    let h = key_head(&pk.0);
    heads
        .0
        .iter()
        .zip(clients)
        .position(|(&x, c)| x == h && c.public_key == *pk)
}

/// Two bits of a 64-bit Bloom filter for `addr` (`CloseList::addr_bloom`): from a
/// multiplicative hash of its address and port (a filter, never a decision: a false positive
/// costs one bucket walk).
fn addr_bits(addr: SocketAddr) -> u64 {
    let x = match addr {
        SocketAddr::V4(a) => (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()),
        SocketAddr::V6(a) => {
            let ip = a.ip().to_bits();
            (ip as u64) ^ ((ip >> 64) as u64).rotate_left(17) ^ (u64::from(a.port()) << 48)
        }
    };
    let h = x
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (1u64 << (h >> 58)) | (1u64 << ((h >> 52) & 63))
}

/// The first 8 bytes of a key or XOR distance as a big-endian number: distances compare as
/// big-endian byte strings, so a larger head means a larger distance.
fn key_head(k: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k[..8]);
    u64::from_be_bytes(b)
}

/// An XOR distance as four big-endian 64-bit words, most significant first: `Ord` on it is the
/// order of the 256-bit number (the order of the 32-byte big-endian string).
type Dist = [u64; 4];

/// A 32-byte key as four big-endian 64-bit words.
fn key_words(k: &[u8; 32]) -> Dist {
    let mut w = [0u64; 4];
    for (word, chunk) in w.iter_mut().zip(k.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_be_bytes(b);
    }
    w
}

/// The XOR distance between a key given as words and a key given as bytes.
fn xor_words(a: &Dist, k: &[u8; 32]) -> Dist {
    let b = key_words(k);
    [a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]
}

/// Number of leading zero bits of a distance (0..=256): the bits both keys share.
fn dist_leading_zero_bits(d: &Dist) -> usize {
    d.iter()
        .position(|&x| x != 0)
        .map_or(256, |i| i * 64 + d[i].leading_zeros() as usize)
}

/// The cutoffs of one list scan at `now` ([`Cutoffs`] plus the ping cutoff).
#[derive(Clone, Copy, Debug)]
struct ScanCut {
    live: Cutoffs,
    /// An association last pinged at or before this is due a ping (`None`: none can be).
    ping_before: Option<Instant>,
}

impl ScanCut {
    fn at(now: Instant) -> Self {
        Self {
            live: Cutoffs::at(now),
            ping_before: now.checked_sub(PING_INTERVAL),
        }
    }
}

/// What one walk of a list (a close-list bucket or a search list) by [`Dht::scan`] found. It
/// stays true until `until` as long as the list is not changed: before then no association is
/// due a ping, turns bad or dies, so a later walk would send nothing and find the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ListScan {
    /// The earliest of: the oldest `last_pinged` + [`PING_INTERVAL`], the oldest response of a
    /// good association + [`BAD_NODE_TIMEOUT`] and of a bad one + [`KILL_NODE_TIMEOUT`]; `None`
    /// when the list is empty.
    until: Option<Instant>,
    /// Good associations (random nodes request candidates).
    good: u32,
    /// Whether the list's target (search lists) is listed and good.
    target_good: bool,
    /// Whether every client of the list had a good association.
    all_good: bool,
}

impl ListScan {
    /// Whether `scanned` (a list's last walk) shows that every client of the list is good at
    /// `now`: the list has not changed since the walk (every change resets it to `None`), every
    /// client was good then, and `now` is before `until`, so no good association has turned
    /// bad since. `false` when unknown.
    fn all_good_at(scanned: Option<Self>, now: Instant) -> bool {
        scanned.is_some_and(|s| s.all_good && s.until.is_some_and(|u| now < u))
    }
}

/// The earlier of two optional instants (`None` is "never").
fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Whether a list's random nodes request may fire at `now` (see [`random_get_node`]).
fn get_node_due(last_get_node: Option<Instant>, bootstrap_times: u32, now: Instant) -> bool {
    bootstrap_times < MAX_BOOTSTRAP_TIMES
        || last_get_node.is_none_or(|t| now.saturating_duration_since(t) >= GET_NODE_INTERVAL)
}

/// One list's share of a scan at `now`. Walks `clients` if `scanned` is stale (`None`, or due
/// by `now`) or `collect` is set: prunes dead associations, queues a ping (a nodes request for
/// `target`) to each one due, appends the good ones to `candidates` (only when `collect`), and
/// records the walk in `scanned`. Otherwise returns `scanned` as it is.
#[allow(clippy::too_many_arguments)]
fn scan_list(
    clients: &mut Vec<Client>,
    scanned: &mut Option<ListScan>,
    collect: bool,
    now: Instant,
    cut: ScanCut,
    target: PublicKey,
    sends: &mut Vec<(SocketAddr, PublicKey, PublicKey)>,
    candidates: &mut Vec<(SocketAddr, PublicKey)>,
) -> ListScan {
    if !collect && let Some(s) = scanned.filter(|s| s.until.is_none_or(|u| now < u)) {
        return s;
    }
    let mut walked = ListScan {
        all_good: true,
        ..ListScan::default()
    };
    clients.retain_mut(|c| {
        if !c.prune(cut.live) {
            return false;
        }
        let pk = c.public_key;
        let mut good = false;
        for a in [c.v4.as_mut(), c.v6.as_mut()].into_iter().flatten() {
            if cut.ping_before.is_some_and(|p| a.last_pinged <= p) {
                a.last_pinged = now;
                sends.push((a.addr, pk, target));
            }
            let mut t = a.last_pinged + PING_INTERVAL;
            if a.good_by(cut.live) {
                good = true;
                walked.good += 1;
                if collect {
                    candidates.push((a.addr, pk));
                }
                t = t.min(a.last_resp + BAD_NODE_TIMEOUT);
            } else {
                t = t.min(a.last_resp + KILL_NODE_TIMEOUT);
            }
            walked.until = min_opt(walked.until, Some(t));
        }
        walked.target_good |= good && pk == target;
        walked.all_good &= good;
        true
    });
    *scanned = Some(walked);
    walked
}

/// The random nodes request of one list with `candidates` good associations: every
/// [`GET_NODE_INTERVAL`], or on each tick while the list has had fewer than
/// [`MAX_BOOTSTRAP_TIMES`]. Returns the index of the candidate to ask; lowers `next` to when the
/// next one is due.
fn random_get_node(
    rng: &mut FerryRng,
    candidates: usize,
    last_get_node: &mut Option<Instant>,
    bootstrap_times: &mut u32,
    now: Instant,
    next: &mut Instant,
) -> Option<usize> {
    if candidates == 0 {
        return None;
    }
    let due = last_get_node.is_none_or(|t| now.saturating_duration_since(t) >= GET_NODE_INTERVAL);
    let pick = if due || *bootstrap_times < MAX_BOOTSTRAP_TIMES {
        *last_get_node = Some(now);
        *bootstrap_times = bootstrap_times.saturating_add(1);
        Some(rng.below(candidates))
    } else {
        None
    };
    let again = if *bootstrap_times < MAX_BOOTSTRAP_TIMES {
        now + TICK
    } else {
        now + GET_NODE_INTERVAL
    };
    *next = (*next).min(last_get_node.map_or(again, |t| (t + GET_NODE_INTERVAL).min(again)));
    pick
}

impl Endpoint for Dht {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let from = normalize(from);
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += bytes.len() as u64;
        match Packet::decode(bytes) {
            Ok(Packet::Dht(env)) => self.handle_envelope(now, from, env),
            Ok(Packet::DhtRequest(req)) => self.handle_dht_request(now, from, req, bytes),
            Ok(Packet::LanDiscovery(lan)) => self.handle_lan_discovery(now, from, lan),
            Ok(Packet::BootstrapInfo(BootstrapInfo::Request)) => {
                if let Some(motd) = self.config.motd.clone() {
                    let resp = BootstrapInfo::Response {
                        version: BOOTSTRAP_INFO_VERSION,
                        motd,
                    };
                    self.queue(Destination::Addr(from), resp.encode());
                }
            }
            Ok(Packet::BootstrapInfo(BootstrapInfo::Response { version, motd })) => {
                self.emit(DhtEvent::BootstrapInfo {
                    from,
                    version,
                    motd,
                });
            }
            Err(WireError::UnknownKind(_)) => self.stats.unknown_kind += 1,
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now < self.poll_timeout() {
            return;
        }
        self.last_tick = now;
        self.do_rebootstrap(now);
        self.flush_to_bootstrap(now);
        if now >= self.next_scan {
            self.scan(now);
        }
        self.do_to_ping(now);
        self.do_lan_discovery(now);
        if self.next_nat.is_some_and(|t| now >= t) {
            self.do_nat(now);
        }
        debug_assert!(
            self.poll_timeout() > now,
            "handle_timeout must move the deadline forward"
        );
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The earliest of: the next list scan, the next flush of queued nodes requests (≤ 1 per
    /// [`FLUSH_INTERVAL`]), the ping-back queue ([`TIME_TO_PING`]), LAN discovery
    /// ([`LAN_DISCOVERY_INTERVAL`]), re-bootstrapping ([`REBOOTSTRAP_INTERVAL`]) and hole
    /// punching ([`nat::PUNCH_INTERVAL`]). An idle node wakes only when something is due
    /// (c-toxcore wakes every 50 ms to check).
    fn poll_timeout(&self) -> Instant {
        let mut t = self.next_scan;
        if let Some(n) = self.next_nat {
            t = t.min(n);
        }
        if self.to_bootstrap_pending {
            t = t.min(self.last_flush + FLUSH_INTERVAL);
        }
        if !self.to_ping.is_empty() {
            t = t.min(self.last_to_ping + TIME_TO_PING);
        }
        if self.config.lan_discovery {
            t = t.min(
                self.last_lan
                    .map_or(self.last_tick, |l| l + LAN_DISCOVERY_INTERVAL),
            );
        }
        if !self.bootstrap_nodes.is_empty() {
            t = t.min(
                self.last_rebootstrap
                    .map_or(self.last_tick, |l| l + REBOOTSTRAP_INTERVAL),
            );
        }
        t
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
mod tests;
