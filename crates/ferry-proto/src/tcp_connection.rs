//! TCP_connection: the set of TCP relay connections of one node (`tox-protocol.md` §6; c-toxcore
//! 0.2.18 `TCP_connection.c`). Sans-IO: it owns a [`RelayClient`] per open relay stream and tells
//! the driver which streams to open, what to write and what to close through
//! [`TcpCommand`]s; the driver feeds back [`TcpConnections::handle_connected`],
//! [`TcpConnections::handle_bytes`] and [`TcpConnections::handle_closed`].
//!
//! # What it does
//! * Keeps up to [`RECOMMENDED_FRIEND_TCP_CONNECTIONS`] (3) of our own relays ("base" relays:
//!   `--relay-peer`, `tox_add_tcp_relay`) connected at all times (they are the relays our DHT-PK
//!   announcements and share-relays packets advertise), plus up to 3 relays a friend told us it
//!   sits on while that friend needs a relayed route; at most [`MAX_CONNECTIONS`] streams in all.
//! * For every *active* friend (by DHT key: no direct UDP path) it sends a routing request on
//!   every ready relay; the relay links the two once the friend asks for us too.
//! * [`TcpConnections::send`] carries a net_crypto packet to a friend's DHT key: as data on a
//!   linked relay; otherwise as an OOB packet (cookie requests/handshakes before any link, as
//!   c-toxcore's `send_packet_tcp_connection` does) on the relay we last heard the peer on, or
//!   on every ready relay.
//! * A friend made inactive (direct UDP works) gets disconnect notifications on every relay: its
//!   relayed route is dropped (seed 004).
//! * Onion requests (TCP id 8) go out on one ready relay; onion responses come back as events.
//!
//! Failed relays are retried after 5 s, doubling up to 2 min.
//!
//! # Caps
//! Known relays ≤ [`MAX_KNOWN_RELAYS`] (oldest non-base, unconnected one evicted); relays per
//! friend ≤ [`MAX_FRIEND_RELAYS`]; friends ≤ [`MAX_TCP_FRIENDS`]; queued commands and events are
//! capped at [`MAX_QUEUED`] (oldest `Send`s/events dropped).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PublicKey};

use crate::tcp_client::{RelayClient, RelayClientEvent};

/// Relays kept connected per friend / of our own (`RECOMMENDED_FRIEND_TCP_CONNECTIONS`).
pub const RECOMMENDED_FRIEND_TCP_CONNECTIONS: usize = 3;
/// Relays remembered per friend (`MAX_FRIEND_TCP_CONNECTIONS`).
pub const MAX_FRIEND_RELAYS: usize = 6;
/// Relay streams open at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Relays known (configured + learnt).
pub const MAX_KNOWN_RELAYS: usize = 64;
/// Friends tracked by DHT key.
pub const MAX_TCP_FRIENDS: usize = 4096;
/// Queued commands / events.
pub const MAX_QUEUED: usize = 65_536;
/// First retry delay after a relay stream failed (doubles up to [`MAX_RETRY`]).
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(120);
/// Peers whose last OOB relay is remembered (for answering on the same relay).
const MAX_OOB_MEMORY: usize = 1024;

/// Where to reach a TCP relay a friend told us about (share-relays packet, messenger id 17, or
/// the TCP nodes of its DHT-PK announcement), as c-toxcore 0.2.18 `friend_connection.c`
/// `friend_add_tcp_relay` decides it; `None` = do not use it.
///
/// * A relay whose key is the friend's DHT key `friend_dht` is one the friend hosts itself;
///   c-toxcore announces its own relay as `127.0.0.1:PORT`. When that address is loopback, or
///   LAN while the friend's own address is not, the relay is at the friend's IP
///   (`friend_addr`, the address the DHT or the session knows it at) on the announced port.
///   With no address known for the friend such a loopback relay is dropped (c-toxcore keeps it
///   and clears `hosting_tcp_relay`; it would only reach our own host).
/// * Any other loopback relay is on the friend's host: kept only if the friend itself is on
///   loopback (or its address is unknown, as c-toxcore keeps it).
/// * Everything else is kept as announced.
pub fn shared_relay_addr(
    addr: SocketAddr,
    relay_pk: &PublicKey,
    friend_dht: &PublicKey,
    friend_addr: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let loopback = addr.ip().to_canonical().is_loopback();
    let friend_loopback = friend_addr.map(|a| a.ip().to_canonical().is_loopback());
    if relay_pk == friend_dht {
        let local = loopback
            || (ferry_wire::node::ip_is_lan(addr.ip())
                && friend_addr.is_some_and(|a| !ferry_wire::node::ip_is_lan(a.ip())));
        if !local {
            return Some(addr);
        }
        return match friend_addr {
            Some(f) => Some(SocketAddr::new(f.ip(), addr.port())),
            None if loopback => None,
            None => Some(addr),
        };
    }
    if loopback && friend_loopback == Some(false) {
        return None;
    }
    Some(addr)
}

/// The driver's id of one relay stream.
pub type TcpId = u64;

/// What the driver must do with TCP streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpCommand {
    /// Open a TCP stream to `addr` and report [`TcpConnections::handle_connected`] (or
    /// [`TcpConnections::handle_closed`] on failure; give up after 10 s).
    Connect {
        /// Stream id.
        id: TcpId,
        /// The relay's address.
        addr: SocketAddr,
    },
    /// Write these bytes to stream `id`, in order.
    Send {
        /// Stream id.
        id: TcpId,
        /// The bytes (handshake or frames).
        bytes: Vec<u8>,
    },
    /// Close stream `id` (no further callbacks for it are needed).
    Close {
        /// Stream id.
        id: TcpId,
    },
}

/// What came in over relays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpEvent {
    /// A packet from the node with DHT key `peer` (a net_crypto packet in Tox), as relayed data
    /// or OOB.
    Packet {
        /// The relay's public key.
        relay: PublicKey,
        /// The sender's DHT key.
        peer: PublicKey,
        /// The packet, kind byte first.
        data: Vec<u8>,
        /// Out-of-band (no routing link) rather than linked data.
        oob: bool,
    },
    /// An onion response (TCP id 9) for our onion client.
    OnionResponse {
        /// The relay's public key.
        relay: PublicKey,
        /// The response (first byte 0x84 or 0x86).
        data: Vec<u8>,
    },
    /// A relay connection became ready or went away.
    RelayStatus {
        /// The relay's public key.
        relay: PublicKey,
        /// Ready now.
        ready: bool,
    },
}

/// A relay as [`TcpConnections::relays`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayInfo {
    /// The relay's public key.
    pub public_key: PublicKey,
    /// Its TCP address.
    pub addr: SocketAddr,
    /// Handshake done, stream open.
    pub ready: bool,
    /// One of our own relays (configured), not just a friend's.
    pub base: bool,
}

#[derive(Debug)]
struct Relay {
    addr: SocketAddr,
    base: bool,
    /// Order of learning (lower = older), for eviction and stable choice.
    seq: u64,
    conn: Option<(TcpId, RelayClient)>,
    /// Stream connected (handshake sent).
    open: bool,
    /// Friends' DHT keys routing-requested on the current connection.
    requested: BTreeSet<PublicKey>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug, Default)]
struct FriendRoute {
    active: bool,
    relays: Vec<PublicKey>,
}

/// All TCP relay connections of a node (see the module docs).
#[derive(Debug)]
pub struct TcpConnections {
    dht_keys: KeyPair,
    rng: FerryRng,
    relays: BTreeMap<PublicKey, Relay>,
    by_id: BTreeMap<TcpId, PublicKey>,
    friends: BTreeMap<PublicKey, FriendRoute>,
    last_oob: BTreeMap<PublicKey, PublicKey>,
    next_id: TcpId,
    next_seq: u64,
    commands: VecDeque<TcpCommand>,
    events: VecDeque<TcpEvent>,
    onion_wanted: bool,
    dropped: u64,
}

impl TcpConnections {
    /// An empty set; relay handshakes use our DHT key pair `dht_keys`.
    pub fn new(dht_keys: KeyPair, rng: FerryRng) -> Self {
        Self {
            dht_keys,
            rng,
            relays: BTreeMap::new(),
            by_id: BTreeMap::new(),
            friends: BTreeMap::new(),
            last_oob: BTreeMap::new(),
            next_id: 1,
            next_seq: 0,
            commands: VecDeque::new(),
            events: VecDeque::new(),
            onion_wanted: false,
            dropped: 0,
        }
    }

    /// Adds a relay (`tox_add_tcp_relay`). `base` = one of our own relays (kept connected and
    /// announced); otherwise a relay learnt from a friend, used for that friend only. Returns
    /// false when the table is full of relays that cannot be evicted.
    pub fn add_relay(&mut self, now: Instant, addr: SocketAddr, pk: PublicKey, base: bool) -> bool {
        if pk == self.dht_keys.public {
            return false;
        }
        if let Some(r) = self.relays.get_mut(&pk) {
            r.base |= base;
            if r.conn.is_none() {
                r.addr = addr;
            }
            self.maintain(now);
            return true;
        }
        if self.relays.len() >= MAX_KNOWN_RELAYS {
            let victim = self
                .relays
                .iter()
                .filter(|(_, r)| !r.base && r.conn.is_none())
                .min_by_key(|(_, r)| r.seq)
                .map(|(k, _)| *k);
            let Some(v) = victim else {
                return false;
            };
            self.relays.remove(&v);
        }
        self.next_seq += 1;
        self.relays.insert(
            pk,
            Relay {
                addr,
                base,
                seq: self.next_seq,
                conn: None,
                open: false,
                requested: BTreeSet::new(),
                retry_at: None,
                backoff: FIRST_RETRY,
            },
        );
        self.maintain(now);
        true
    }

    /// Records that the friend with DHT key `friend` sits on relay `pk` at `addr` (from its
    /// DHT-PK announcement or a share-relays packet); at most [`MAX_FRIEND_RELAYS`] kept.
    pub fn add_friend_relay(
        &mut self,
        now: Instant,
        friend: PublicKey,
        addr: SocketAddr,
        pk: PublicKey,
    ) {
        if !self.add_relay(now, addr, pk, false) {
            return;
        }
        if let Some(f) = self.friends.get_mut(&friend)
            && !f.relays.contains(&pk)
        {
            if f.relays.len() >= MAX_FRIEND_RELAYS {
                f.relays.remove(0);
            }
            f.relays.push(pk);
        }
        self.maintain(now);
    }

    /// Tracks a friend by DHT key (idempotent). `active` = it needs a relayed route (no direct
    /// UDP path): routing requests go out on every ready relay. Making a friend inactive sends
    /// disconnect notifications (drops the relayed route). Returns false when the table is full.
    pub fn set_friend(&mut self, now: Instant, friend: PublicKey, active: bool) -> bool {
        if !self.friends.contains_key(&friend) && self.friends.len() >= MAX_TCP_FRIENDS {
            return false;
        }
        let f = self.friends.entry(friend).or_default();
        if f.active == active {
            return true;
        }
        f.active = active;
        if !active {
            for r in self.relays.values_mut() {
                if r.requested.remove(&friend)
                    && let Some((_, c)) = r.conn.as_mut()
                {
                    c.disconnect(&friend);
                }
            }
        }
        self.maintain(now);
        self.pump(now);
        true
    }

    /// Forgets a friend (its routes are dropped).
    pub fn remove_friend(&mut self, now: Instant, friend: &PublicKey) {
        self.set_friend(now, *friend, false);
        self.friends.remove(friend);
        self.last_oob.remove(friend);
        self.maintain(now);
    }

    /// Whether onion requests should be possible over relays (UDP unusable): keeps base relays
    /// connected even without friends (they always are today; reserved for sleeping).
    pub fn set_onion_wanted(&mut self, wanted: bool) {
        self.onion_wanted = wanted;
    }

    /// Sends a packet to the node with DHT key `peer`: linked data if a relay links us, else OOB
    /// (on the relay we last heard it on, else on its known relays that are ready, else on every
    /// ready relay). False when no relay could take it.
    pub fn send(&mut self, peer: &PublicKey, data: Vec<u8>) -> bool {
        let linked = self
            .relays
            .iter()
            .filter_map(|(k, r)| r.conn.as_ref().map(|(_, c)| (k, c)))
            .find(|(_, c)| c.is_connected(peer))
            .map(|(k, _)| *k);
        let sent = if let Some(k) = linked {
            self.relays
                .get_mut(&k)
                .and_then(|r| r.conn.as_mut())
                .is_some_and(|(_, c)| c.send_data(peer, data))
        } else {
            let mut targets: Vec<PublicKey> = Vec::new();
            if let Some(k) = self.last_oob.get(peer)
                && self.is_ready(k)
            {
                targets.push(*k);
            } else {
                if let Some(f) = self.friends.get(peer) {
                    targets.extend(f.relays.iter().filter(|k| self.is_ready(k)));
                }
                if targets.is_empty() {
                    targets.extend(
                        self.relays
                            .iter()
                            .filter(|(_, r)| r.conn.as_ref().is_some_and(|(_, c)| c.is_ready()))
                            .map(|(k, _)| *k),
                    );
                }
            }
            let mut any = false;
            for k in targets.into_iter().take(MAX_FRIEND_RELAYS) {
                if let Some((_, c)) = self.relays.get_mut(&k).and_then(|r| r.conn.as_mut()) {
                    any |= c.send_oob(*peer, data.clone());
                }
            }
            any
        };
        self.drain_outputs();
        sent
    }

    /// Sends an onion request through relay `relay` if it is ready, else through any
    /// ([`Self::send_onion_request`]).
    pub fn send_onion_request_via(&mut self, relay: &PublicKey, body: Vec<u8>) -> bool {
        if self.is_ready(relay) {
            let ok = self
                .relays
                .get_mut(relay)
                .and_then(|r| r.conn.as_mut())
                .is_some_and(|(_, c)| c.send_onion_request(body));
            self.drain_outputs();
            return ok;
        }
        self.send_onion_request(body)
    }

    /// The TCP address of a known relay.
    pub fn relay_addr(&self, relay: &PublicKey) -> Option<SocketAddr> {
        self.relays.get(relay).map(|r| r.addr)
    }

    /// Sends an onion request (TCP id 8: `[nonce][IP_Port of node B][PK1][box_B(...)]`) through
    /// one ready relay (chosen at random). False when none is ready.
    pub fn send_onion_request(&mut self, body: Vec<u8>) -> bool {
        let ready: Vec<PublicKey> = self
            .relays
            .iter()
            .filter(|(_, r)| r.conn.as_ref().is_some_and(|(_, c)| c.is_ready()))
            .map(|(k, _)| *k)
            .collect();
        if ready.is_empty() {
            return false;
        }
        let k = ready[self.rng.below(ready.len())];
        let ok = self
            .relays
            .get_mut(&k)
            .and_then(|r| r.conn.as_mut())
            .is_some_and(|(_, c)| c.send_onion_request(body));
        self.drain_outputs();
        ok
    }

    fn is_ready(&self, k: &PublicKey) -> bool {
        self.relays
            .get(k)
            .and_then(|r| r.conn.as_ref())
            .is_some_and(|(_, c)| c.is_ready())
    }

    /// The relay that currently links us with `peer` (DHT key), or the one we last heard it on
    /// out of band.
    pub fn route_of(&self, peer: &PublicKey) -> Option<(PublicKey, SocketAddr)> {
        self.relays
            .iter()
            .find(|(_, r)| r.conn.as_ref().is_some_and(|(_, c)| c.is_connected(peer)))
            .or_else(|| {
                self.last_oob
                    .get(peer)
                    .and_then(|k| self.relays.get_key_value(k))
            })
            .map(|(k, r)| (*k, r.addr))
    }

    /// Whether any relay links us with `peer` right now.
    pub fn is_linked(&self, peer: &PublicKey) -> bool {
        self.relays
            .values()
            .any(|r| r.conn.as_ref().is_some_and(|(_, c)| c.is_connected(peer)))
    }

    /// Every known relay.
    pub fn relays(&self) -> Vec<RelayInfo> {
        self.relays
            .iter()
            .map(|(k, r)| RelayInfo {
                public_key: *k,
                addr: r.addr,
                ready: r.conn.as_ref().is_some_and(|(_, c)| c.is_ready()),
                base: r.base,
            })
            .collect()
    }

    /// Ready base relays, oldest first (what we announce to friends), at most `n`.
    pub fn announced_relays(&self, n: usize) -> Vec<(SocketAddr, PublicKey)> {
        let mut v: Vec<(&u64, SocketAddr, PublicKey)> = self
            .relays
            .iter()
            .filter(|(_, r)| r.base && r.conn.as_ref().is_some_and(|(_, c)| c.is_ready()))
            .map(|(k, r)| (&r.seq, r.addr, *k))
            .collect();
        v.sort_by_key(|x| *x.0);
        v.into_iter().take(n).map(|(_, a, k)| (a, k)).collect()
    }

    /// Whether at least one relay stream is ready.
    pub fn any_ready(&self) -> bool {
        self.relays
            .values()
            .any(|r| r.conn.as_ref().is_some_and(|(_, c)| c.is_ready()))
    }

    /// The driver opened stream `id`: the handshake goes out.
    pub fn handle_connected(&mut self, now: Instant, id: TcpId) {
        if let Some(r) = self.by_id.get(&id).and_then(|k| self.relays.get_mut(k)) {
            r.open = true;
        }
        self.pump(now);
    }

    /// Bytes read from stream `id`.
    pub fn handle_bytes(&mut self, now: Instant, id: TcpId, bytes: &[u8]) {
        if let Some(r) = self.by_id.get(&id).and_then(|k| self.relays.get_mut(k))
            && let Some((_, c)) = r.conn.as_mut()
        {
            c.handle_bytes(now, bytes);
        }
        self.pump(now);
    }

    /// Stream `id` failed or ended.
    pub fn handle_closed(&mut self, now: Instant, id: TcpId) {
        if let Some(k) = self.by_id.remove(&id) {
            self.drop_conn(now, k, false);
        }
        self.maintain(now);
        self.pump(now);
    }

    fn drop_conn(&mut self, now: Instant, k: PublicKey, send_close: bool) {
        let Some(r) = self.relays.get_mut(&k) else {
            return;
        };
        let Some((id, c)) = r.conn.take() else {
            return;
        };
        self.by_id.remove(&id);
        if send_close {
            push_capped(
                &mut self.commands,
                TcpCommand::Close { id },
                &mut self.dropped,
            );
        }
        let was_ready = c.is_ready();
        r.open = false;
        r.requested.clear();
        r.retry_at = Some(now + r.backoff);
        r.backoff = (r.backoff * 2).min(MAX_RETRY);
        if was_ready {
            push_capped(
                &mut self.events,
                TcpEvent::RelayStatus {
                    relay: k,
                    ready: false,
                },
                &mut self.dropped,
            );
        }
    }

    /// Which relays should have a stream: the first 3 usable base relays, and the first 3 usable
    /// relays of every active friend; at most [`MAX_CONNECTIONS`].
    fn wanted(&self, now: Instant) -> BTreeSet<PublicKey> {
        let usable = |r: &Relay| r.conn.is_some() || r.retry_at.is_none_or(|t| now >= t);
        let mut base: Vec<(&PublicKey, &Relay)> = self
            .relays
            .iter()
            .filter(|(_, r)| r.base && usable(r))
            .collect();
        base.sort_by_key(|(_, r)| (r.conn.is_none(), r.seq));
        let mut want: BTreeSet<PublicKey> = base
            .into_iter()
            .take(RECOMMENDED_FRIEND_TCP_CONNECTIONS)
            .map(|(k, _)| *k)
            .collect();
        for f in self.friends.values().filter(|f| f.active) {
            let mut n = 0;
            for k in &f.relays {
                if n >= RECOMMENDED_FRIEND_TCP_CONNECTIONS || want.len() >= MAX_CONNECTIONS {
                    break;
                }
                if self.relays.get(k).is_some_and(usable) {
                    want.insert(*k);
                    n += 1;
                }
            }
        }
        want
    }

    /// Opens wanted relays, closes unwanted ones.
    fn maintain(&mut self, now: Instant) {
        // Retry delays that are over no longer hold a timer (or `poll_timeout` would stay in
        // the past for a relay nobody wants now).
        for r in self.relays.values_mut() {
            if r.retry_at.is_some_and(|t| now >= t) {
                r.retry_at = None;
            }
        }
        let want = self.wanted(now);
        let unwanted: Vec<PublicKey> = self
            .relays
            .iter()
            .filter(|(k, r)| r.conn.is_some() && !want.contains(k))
            .map(|(k, _)| *k)
            .collect();
        for k in unwanted {
            self.drop_conn(now, k, true);
            if let Some(r) = self.relays.get_mut(&k) {
                // Closed on purpose: may reopen at once when wanted again.
                r.retry_at = None;
                r.backoff = FIRST_RETRY;
            }
        }
        for k in want {
            let Some(r) = self.relays.get_mut(&k) else {
                continue;
            };
            if r.conn.is_some() {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let client = RelayClient::new(now, &self.dht_keys, k, self.rng.fork());
            r.conn = Some((id, client));
            r.open = false;
            r.retry_at = None;
            self.by_id.insert(id, k);
            push_capped(
                &mut self.commands,
                TcpCommand::Connect { id, addr: r.addr },
                &mut self.dropped,
            );
        }
    }

    /// Moves client output to commands and client events to ours; sends routing requests.
    fn pump(&mut self, now: Instant) {
        let active: Vec<PublicKey> = self
            .friends
            .iter()
            .filter(|(_, f)| f.active)
            .map(|(k, _)| *k)
            .collect();
        let mut closed = Vec::new();
        for (k, r) in self.relays.iter_mut() {
            let Some((_, c)) = r.conn.as_mut() else {
                continue;
            };
            if c.is_ready() {
                for f in &active {
                    if !r.requested.contains(f) && c.routing_request(*f) {
                        r.requested.insert(*f);
                    }
                }
            }
            while let Some(e) = c.poll_event() {
                match e {
                    RelayClientEvent::Ready => {
                        r.backoff = FIRST_RETRY;
                        push_capped(
                            &mut self.events,
                            TcpEvent::RelayStatus {
                                relay: *k,
                                ready: true,
                            },
                            &mut self.dropped,
                        );
                    }
                    RelayClientEvent::Data { pk, data } => push_capped(
                        &mut self.events,
                        TcpEvent::Packet {
                            relay: *k,
                            peer: pk,
                            data,
                            oob: false,
                        },
                        &mut self.dropped,
                    ),
                    RelayClientEvent::Oob { src, data } => {
                        if self.last_oob.len() >= MAX_OOB_MEMORY
                            && !self.last_oob.contains_key(&src)
                        {
                            self.last_oob.pop_first();
                        }
                        self.last_oob.insert(src, *k);
                        push_capped(
                            &mut self.events,
                            TcpEvent::Packet {
                                relay: *k,
                                peer: src,
                                data,
                                oob: true,
                            },
                            &mut self.dropped,
                        );
                    }
                    RelayClientEvent::OnionResponse(data) => push_capped(
                        &mut self.events,
                        TcpEvent::OnionResponse { relay: *k, data },
                        &mut self.dropped,
                    ),
                    RelayClientEvent::RoutingResponse { pk, conn_id: None } => {
                        r.requested.remove(&pk);
                    }
                    RelayClientEvent::Closed(_) => closed.push(*k),
                    _ => {}
                }
            }
        }
        self.drain_outputs();
        for k in closed {
            self.drop_conn(now, k, true);
        }
        if !self.commands.is_empty() || !self.events.is_empty() {
            self.maintain(now);
            self.drain_outputs();
        }
    }

    fn drain_outputs(&mut self) {
        for r in self.relays.values_mut() {
            let Some((id, c)) = r.conn.as_mut() else {
                continue;
            };
            if !r.open {
                continue;
            }
            while let Some(bytes) = c.poll_output() {
                push_capped(
                    &mut self.commands,
                    TcpCommand::Send { id: *id, bytes },
                    &mut self.dropped,
                );
            }
        }
    }

    /// Runs relay timers (pings, timeouts) and reconnects.
    pub fn handle_timeout(&mut self, now: Instant) {
        for r in self.relays.values_mut() {
            if let Some((_, c)) = r.conn.as_mut()
                && c.poll_timeout().is_some_and(|t| now >= t)
            {
                c.handle_timeout(now);
            }
        }
        self.pump(now);
        if self
            .relays
            .values()
            .any(|r| r.conn.is_none() && r.retry_at.is_some_and(|t| now >= t))
        {
            self.maintain(now);
        }
    }

    /// When [`Self::handle_timeout`] is due (`None`: nothing pending).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays
            .values()
            .filter_map(|r| match &r.conn {
                Some((_, c)) => c.poll_timeout(),
                None => r.retry_at,
            })
            .min()
    }

    /// The next command for the driver. Drain after every call.
    pub fn poll_command(&mut self) -> Option<TcpCommand> {
        self.commands.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<TcpEvent> {
        self.events.pop_front()
    }

    /// Commands/events dropped because queues were full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, x: T, dropped: &mut u64) {
    if q.len() >= MAX_QUEUED {
        q.pop_front();
        *dropped += 1;
    }
    q.push_back(x);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_relay::{Output, RelayConfig, RelayServer};

    /// Runs commands of both sides against one in-memory relay server.
    fn pump(server: &mut RelayServer, now: Instant, sides: &mut [&mut TcpConnections]) {
        loop {
            let mut moved = false;
            for (i, s) in sides.iter_mut().enumerate() {
                while let Some(c) = s.poll_command() {
                    moved = true;
                    // Stream ids are per side: make them unique for the server.
                    match c {
                        TcpCommand::Connect { id, .. } => {
                            server.accept(now, id * 10 + i as u64);
                            s.handle_connected(now, id);
                        }
                        TcpCommand::Send { id, bytes } => {
                            server.handle_bytes(now, id * 10 + i as u64, &bytes);
                        }
                        TcpCommand::Close { .. } => {}
                    }
                }
            }
            while let Some(o) = server.poll_output() {
                moved = true;
                if let Output::Send(sid, b) = o {
                    let (id, i) = (sid / 10, (sid % 10) as usize);
                    sides[i].handle_bytes(now, id, &b);
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn oob_then_linked_data_then_route_dropped() {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(9);
        let relay = KeyPair::generate(&mut rng);
        let mut server = RelayServer::new(RelayConfig::default(), relay.secret.clone(), rng.fork());
        let ka = KeyPair::generate(&mut rng);
        let kb = KeyPair::generate(&mut rng);
        let mut a = TcpConnections::new(ka.clone(), rng.fork());
        let mut b = TcpConnections::new(kb.clone(), rng.fork());
        let addr: SocketAddr = "127.0.0.1:33445".parse().expect("addr");
        a.add_relay(now, addr, relay.public, true);
        b.add_relay(now, addr, relay.public, true);
        pump(&mut server, now, &mut [&mut a, &mut b]);
        assert!(a.any_ready() && b.any_ready());
        assert_eq!(a.announced_relays(2), vec![(addr, relay.public)]);
        // OOB before any link.
        assert!(a.send(&kb.public, vec![0x18; 145]));
        pump(&mut server, now, &mut [&mut a, &mut b]);
        let evs: Vec<TcpEvent> = std::iter::from_fn(|| b.poll_event()).collect();
        assert!(evs.contains(&TcpEvent::Packet {
            relay: relay.public,
            peer: ka.public,
            data: vec![0x18; 145],
            oob: true
        }));
        // Both want a route: linked.
        a.set_friend(now, kb.public, true);
        b.set_friend(now, ka.public, true);
        pump(&mut server, now, &mut [&mut a, &mut b]);
        assert!(a.is_linked(&kb.public) && b.is_linked(&ka.public));
        assert_eq!(a.route_of(&kb.public), Some((relay.public, addr)));
        assert!(b.send(&ka.public, vec![0x1b; 40]));
        pump(&mut server, now, &mut [&mut a, &mut b]);
        let evs: Vec<TcpEvent> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(evs.contains(&TcpEvent::Packet {
            relay: relay.public,
            peer: kb.public,
            data: vec![0x1b; 40],
            oob: false
        }));
        // Direct UDP works for a: the route goes.
        a.set_friend(now, kb.public, false);
        pump(&mut server, now, &mut [&mut a, &mut b]);
        assert!(!a.is_linked(&kb.public));
        assert!(!b.is_linked(&ka.public));
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn failed_relays_are_retried_and_leave_no_stale_timer() {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(3);
        let me = KeyPair::generate(&mut rng);
        let relay = KeyPair::generate(&mut rng);
        let friend = KeyPair::generate(&mut rng);
        let mut t = TcpConnections::new(me, rng.fork());
        let addr: SocketAddr = "127.0.0.1:3389".parse().expect("addr");
        t.set_friend(now, friend.public, true);
        t.add_friend_relay(now, friend.public, addr, relay.public);
        let Some(TcpCommand::Connect { id, .. }) = t.poll_command() else {
            panic!("a friend's relay is opened while the friend is active");
        };
        t.handle_closed(now, id);
        assert_eq!(t.poll_timeout(), Some(now + FIRST_RETRY));
        // The friend goes direct meanwhile: nothing is wanted, nothing is due.
        t.set_friend(now, friend.public, false);
        t.handle_timeout(now + FIRST_RETRY);
        assert_eq!(t.poll_command(), None);
        assert_eq!(t.poll_timeout(), None);
        // Active again: reopened at once.
        t.set_friend(now + FIRST_RETRY, friend.public, true);
        assert!(matches!(t.poll_command(), Some(TcpCommand::Connect { .. })));
    }

    #[test]
    fn shared_relay_addresses_follow_c_toxcore() {
        let friend = PublicKey([7; 32]);
        let other = PublicKey([8; 32]);
        let sa = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let public = Some(sa("203.0.113.5:33445"));
        // The friend's own relay announced on loopback: at the friend's IP, announced port.
        assert_eq!(
            shared_relay_addr(sa("127.0.0.1:3389"), &friend, &friend, public),
            Some(sa("203.0.113.5:3389"))
        );
        // ... on a LAN address while the friend is reached publicly: the same.
        assert_eq!(
            shared_relay_addr(sa("192.168.1.4:3389"), &friend, &friend, public),
            Some(sa("203.0.113.5:3389"))
        );
        // ... on a LAN address and the friend is on the LAN too: as announced.
        assert_eq!(
            shared_relay_addr(
                sa("192.168.1.4:3389"),
                &friend,
                &friend,
                Some(sa("192.168.1.4:1"))
            ),
            Some(sa("192.168.1.4:3389"))
        );
        // ... on loopback with no address known for the friend: unusable.
        assert_eq!(
            shared_relay_addr(sa("127.0.0.1:3389"), &friend, &friend, None),
            None
        );
        // Someone else's relay on the friend's loopback: only if the friend is local.
        assert_eq!(
            shared_relay_addr(sa("127.0.0.1:3389"), &other, &friend, public),
            None
        );
        assert_eq!(
            shared_relay_addr(
                sa("127.0.0.1:3389"),
                &other,
                &friend,
                Some(sa("127.0.0.1:5"))
            ),
            Some(sa("127.0.0.1:3389"))
        );
        assert_eq!(
            shared_relay_addr(sa("127.0.0.1:3389"), &other, &friend, None),
            Some(sa("127.0.0.1:3389"))
        );
        // Public relays are used as announced.
        assert_eq!(
            shared_relay_addr(sa("198.51.100.1:443"), &other, &friend, public),
            Some(sa("198.51.100.1:443"))
        );
        assert_eq!(
            shared_relay_addr(sa("198.51.100.1:443"), &friend, &friend, public),
            Some(sa("198.51.100.1:443"))
        );
    }
}
