//! Sans-IO Tox TCP relay **server** (`tox-protocol.md` §6; c-toxcore 0.2.18 `TCP_server.c`).
//!
//! The driver owns the TCP sockets and gives each accepted stream an opaque [`ConnId`]. It calls
//! [`RelayServer::accept`] for a new stream, [`RelayServer::handle_bytes`] with whatever bytes
//! the stream delivered (any split; this crate does the framing), [`RelayServer::closed`] when
//! the stream ends, and [`RelayServer::handle_timeout`] when [`RelayServer::poll_timeout`] is
//! due. After each of these calls it drains [`RelayServer::poll_output`] until `None`: each
//! [`Output`] is bytes to write to one stream, or a request to close it.
//!
//! Protocol flow per stream:
//! 1. *Incoming*: wait for the raw 128-byte client handshake, answer with the 96-byte server
//!    handshake (the relay's long-term key is the node's **DHT** key, as c-toxcore's
//!    `new_tcp_server(.., dht_get_self_secret_key(dht), ..)`).
//! 2. *Unconfirmed*: the first valid frame confirms the client (it is then also handled).
//!    Incoming and unconfirmed streams live in bounded rings (oldest evicted) and time out after
//!    [`RelayConfig::handshake_timeout`].
//! 3. *Confirmed*: one client per DHT pk (a newer stream replaces an older one). Routing
//!    requests reserve a connection id 16–255 per requested pk; two clients are *linked* only
//!    when both requested each other, and both get a connect notification. Data on a linked id
//!    goes to the other side under its own id, limited by a per-direction token bucket
//!    ([`RelayConfig::link_rate`]); data over the limit is dropped (net_crypto above
//!    retransmits and slows down, as it does when a c-toxcore relay's socket buffer is full).
//!    OOB packets go to any connected client by pk. The server pings every 30 s and drops a
//!    client that has not answered within 10 s.
//!
//! Onion requests over TCP (id 8) go to the driver ([`Output::OnionRequest`]), which hands them
//! to the node's onion layer as node A; responses come back through
//! [`RelayServer::send_onion_response`] (id 9). With [`RelayConfig::onion`] off they are counted
//! and dropped, as c-toxcore without an onion does. Forward requests (id 10) close the stream,
//! as c-toxcore without forwarding does.
//!
//! Remote input never panics the server: a malformed frame closes its stream.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PublicKey, SecretKey};
use ferry_wire::relay::{
    CLIENT_HANDSHAKE_SIZE, ClientHandshake, FrameReader, HandshakePlain, NUM_CLIENT_CONNECTIONS,
    NUM_RESERVED_IDS, RelayPacket, RelaySession, ServerHandshake,
};

/// The driver's opaque id of one TCP stream.
pub type ConnId = u64;

/// Ping interval, `TCP_PING_FREQUENCY` (30 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Time to answer a ping, `TCP_PING_TIMEOUT` (10 s).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-direction bandwidth of one relayed link: 32 KiB/s (see [`RelayConfig::link_rate`]).
pub const DEFAULT_LINK_RATE: u32 = 32 * 1024;

/// Limits of a relay server.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Most confirmed clients; a confirming client beyond this is closed. Default 2048.
    pub max_clients: usize,
    /// Most streams still in the handshake or unconfirmed (each ring; the oldest is closed when
    /// a new one arrives). Default 256 (`MAX_INCOMING_CONNECTIONS`).
    pub max_unconfirmed: usize,
    /// Most connection ids (routing requests) per client, ≤ 240. Default 240.
    pub max_links_per_client: usize,
    /// Bytes per second one client may send over one relayed link (each direction has its own
    /// bucket). Default [`DEFAULT_LINK_RATE`] = 32 KiB/s: enough for chat, net_crypto
    /// handshakes, keepalives and a slow file trickle (≈ 24 full 1373-byte packets/s), but 30–
    /// 1000× below a direct path, so relaying is a fallback nobody keeps by choice (seed 004,
    /// docs/Routing.txt: "severely limits the speed"), and 100 relayed pairs cost a relay at most
    /// 6.4 MiB/s. `0` = unlimited.
    pub link_rate: u32,
    /// Token bucket depth in bytes (a burst allowed above the rate). Default 16 KiB.
    pub link_burst: u32,
    /// Bytes per second of OOB data one client may send (per client, all destinations).
    /// Default 32 KiB/s.
    pub oob_rate: u32,
    /// Time a stream may spend before its handshake and first frame. Default 10 s.
    pub handshake_timeout: Duration,
    /// Keep a copy of the (relay-decrypted) payloads it forwards, up to this many bytes (a test
    /// hook to prove the relay never sees plaintext; 0 = off).
    pub tap_bytes: usize,
    /// Hand onion requests (id 8) to the driver as [`Output::OnionRequest`] (the node then acts
    /// as onion node A, answering with [`RelayServer::send_onion_response`]); when false they
    /// are counted and dropped. Default true.
    pub onion: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_clients: 2048,
            max_unconfirmed: 256,
            max_links_per_client: NUM_CLIENT_CONNECTIONS,
            link_rate: DEFAULT_LINK_RATE,
            link_burst: 16 * 1024,
            oob_rate: DEFAULT_LINK_RATE,
            handshake_timeout: Duration::from_secs(10),
            tap_bytes: 0,
            onion: true,
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the stream.
    Send(ConnId, Vec<u8>),
    /// Close the stream (after writing what was queued before); the server has forgotten it.
    Close(ConnId),
    /// An onion request from this client for the node's onion layer: the packet after the id,
    /// `[nonce 24][IP_Port of B 19][pk 32][box for B]` (c-toxcore `onion_send_1`).
    OnionRequest(ConnId, Vec<u8>),
}

/// Counters of a relay server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Confirmed clients now.
    pub clients: usize,
    /// Streams in the handshake or unconfirmed now.
    pub unconfirmed: usize,
    /// Linked client pairs now.
    pub links: usize,
    /// Payload bytes forwarded between clients (data and OOB), total.
    pub bytes_relayed: u64,
    /// Packets forwarded between clients (data and OOB), total.
    pub packets_relayed: u64,
    /// Payload bytes dropped by the bandwidth limit, total.
    pub bytes_rate_limited: u64,
    /// Onion requests received and dropped (onion off), total.
    pub onion_dropped: u64,
    /// Onion requests handed to the node, total.
    pub onion_requests: u64,
    /// Onion responses sent to clients, total.
    pub onion_responses: u64,
    /// Streams closed for protocol errors, total.
    pub protocol_errors: u64,
    /// Stream bytes received, total.
    pub bytes_in: u64,
    /// Stream bytes sent, total.
    pub bytes_out: u64,
}

/// A token bucket in bytes (`rate` bytes/s, `burst` bytes deep).
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(now: Instant, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn take(&mut self, now: Instant, n: usize, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst.max(1)));
        #[allow(clippy::cast_precision_loss)]
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Slot {
    pk: PublicKey,
    /// (other client, its slot index) when linked.
    link: Option<(ConnId, u8)>,
    bucket: Bucket,
}

#[derive(Debug)]
struct Client {
    pk: PublicKey,
    session: RelaySession,
    /// Slot index 0..240 (wire id = index + 16).
    slots: BTreeMap<u8, Slot>,
    last_pinged: Instant,
    ping_id: Option<[u8; 8]>,
    oob_bucket: Bucket,
}

#[derive(Debug)]
enum State {
    Incoming,
    Unconfirmed {
        pk: PublicKey,
        session: RelaySession,
    },
    Confirmed(Box<Client>),
}

#[derive(Debug)]
struct Conn {
    state: State,
    reader: FrameReader,
    since: Instant,
}

/// The relay server state machine (see the crate docs for the driver contract).
#[derive(Debug)]
pub struct RelayServer {
    config: RelayConfig,
    secret: SecretKey,
    public: PublicKey,
    rng: FerryRng,
    conns: HashMap<ConnId, Conn>,
    by_pk: HashMap<PublicKey, ConnId>,
    incoming: VecDeque<ConnId>,
    unconfirmed: VecDeque<ConnId>,
    out: VecDeque<Output>,
    stats: RelayStats,
    next_tick: Option<Instant>,
    tap: Vec<u8>,
    tap_total: usize,
}

fn is_pong_zero(id: &[u8; 8]) -> bool {
    id.iter().all(|b| *b == 0)
}

impl RelayServer {
    /// A relay with the node's DHT secret key `dht_secret` (its identity for clients).
    pub fn new(config: RelayConfig, dht_secret: SecretKey, rng: FerryRng) -> Self {
        Self {
            public: dht_secret.public_key(),
            secret: dht_secret,
            config,
            rng,
            conns: HashMap::new(),
            by_pk: HashMap::new(),
            incoming: VecDeque::new(),
            unconfirmed: VecDeque::new(),
            out: VecDeque::new(),
            stats: RelayStats::default(),
            next_tick: None,
            tap: Vec::new(),
            tap_total: 0,
        }
    }

    /// The relay's public key (the node's DHT public key), which clients must be given.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        let mut s = self.stats;
        s.clients = self.by_pk.len();
        s.unconfirmed = self.incoming.len() + self.unconfirmed.len();
        s
    }

    /// Takes the tapped payloads gathered since the last call (always empty unless
    /// [`RelayConfig::tap_bytes`] > 0): what the relay itself could read of the traffic it
    /// forwarded. At most `tap_bytes` are gathered over the server's life.
    pub fn take_tap(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.tap)
    }

    /// A new stream. The oldest stream still in its handshake is closed when
    /// [`RelayConfig::max_unconfirmed`] are waiting.
    pub fn accept(&mut self, now: Instant, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            return;
        }
        while self.incoming.len() >= self.config.max_unconfirmed.max(1) {
            let Some(old) = self.incoming.pop_front() else {
                break;
            };
            self.kill(old);
        }
        self.conns.insert(
            conn,
            Conn {
                state: State::Incoming,
                reader: FrameReader::new(),
                since: now,
            },
        );
        self.incoming.push_back(conn);
        self.next_tick.get_or_insert(now + Duration::from_secs(1));
    }

    /// The stream ended (read EOF or error): its links are torn down.
    pub fn closed(&mut self, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.remove(conn);
        }
    }

    /// Next output for the driver; call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        let o = self.out.pop_front()?;
        if let Output::Send(_, b) = &o {
            self.stats.bytes_out += b.len() as u64;
        }
        Some(o)
    }

    /// When [`Self::handle_timeout`] must be called next (a 1-s tick while any stream exists).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.conns.is_empty() {
            None
        } else {
            self.next_tick
        }
    }

    /// Pings, ping timeouts and handshake timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.next_tick = Some(now + Duration::from_secs(1));
        let mut dead = Vec::new();
        let mut pings = Vec::new();
        for (&id, c) in &mut self.conns {
            match &mut c.state {
                State::Incoming | State::Unconfirmed { .. } => {
                    if now.saturating_duration_since(c.since) >= self.config.handshake_timeout {
                        dead.push(id);
                    }
                }
                State::Confirmed(cl) => {
                    let since = now.saturating_duration_since(cl.last_pinged);
                    if cl.ping_id.is_some() && since >= PING_TIMEOUT {
                        dead.push(id);
                    } else if since >= PING_INTERVAL {
                        let mut pid: [u8; 8] = self.rng.bytes();
                        if is_pong_zero(&pid) {
                            pid[7] = 1;
                        }
                        cl.ping_id = Some(pid);
                        cl.last_pinged = now;
                        pings.push((id, pid));
                    }
                }
            }
        }
        for id in dead {
            self.kill(id);
        }
        for (id, ping_id) in pings {
            self.send(id, &RelayPacket::Ping { ping_id });
        }
    }

    /// Stream bytes from `conn` (any split).
    pub fn handle_bytes(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        self.stats.bytes_in += bytes.len() as u64;
        c.reader.push(bytes);
        if matches!(c.state, State::Incoming) {
            let Some(hs) = c.reader.take_raw(CLIENT_HANDSHAKE_SIZE) else {
                return;
            };
            if self.handshake(now, conn, &hs).is_none() {
                self.protocol_error(conn);
                return;
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let body = match c.reader.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(_) => {
                    self.protocol_error(conn);
                    return;
                }
            };
            let session = match &mut c.state {
                State::Incoming => return,
                State::Unconfirmed { session, .. } => session,
                State::Confirmed(cl) => &mut cl.session,
            };
            let Ok(plain) = session.open(&body) else {
                self.protocol_error(conn);
                return;
            };
            let Ok(packet) = RelayPacket::decode(&plain) else {
                self.protocol_error(conn);
                return;
            };
            if matches!(c.state, State::Unconfirmed { .. }) && !self.confirm(now, conn) {
                return;
            }
            if !self.handle_packet(now, conn, packet) {
                self.protocol_error(conn);
                return;
            }
        }
    }

    /// Sends an onion response (TCP id 9, `data` = the bare response the node's onion layer
    /// produced for this client) if `conn` is still a confirmed client.
    pub fn send_onion_response(&mut self, conn: ConnId, data: Vec<u8>) {
        if data.is_empty() || self.client(conn).is_none() {
            return;
        }
        self.stats.onion_responses += 1;
        self.send(conn, &RelayPacket::OnionResponse(data));
    }

    fn handshake(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) -> Option<()> {
        let hs = ClientHandshake::decode(bytes).ok()?;
        let theirs = hs.open(&self.secret).ok()?;
        let temp = KeyPair::generate(&mut self.rng);
        let ours = HandshakePlain {
            temp_pk: temp.public,
            base_nonce: Nonce::random(&mut self.rng),
        };
        let reply = ServerHandshake::seal(
            &self.secret,
            &hs.client_pk,
            Nonce::random(&mut self.rng),
            &ours,
        )
        .ok()?;
        let session = RelaySession::new(
            &temp.secret,
            &theirs.temp_pk,
            ours.base_nonce,
            theirs.base_nonce,
        );
        self.incoming.retain(|c| *c != conn);
        while self.unconfirmed.len() >= self.config.max_unconfirmed.max(1) {
            let Some(old) = self.unconfirmed.pop_front() else {
                break;
            };
            self.kill(old);
        }
        let c = self.conns.get_mut(&conn)?;
        c.state = State::Unconfirmed {
            pk: hs.client_pk,
            session,
        };
        c.since = now;
        self.unconfirmed.push_back(conn);
        self.out
            .push_back(Output::Send(conn, reply.encode().to_vec()));
        Some(())
    }

    /// Moves an unconfirmed stream to the confirmed clients; false (and closed) when full.
    fn confirm(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let State::Unconfirmed { pk, .. } = &c.state else {
            return true;
        };
        let pk = *pk;
        self.unconfirmed.retain(|x| *x != conn);
        if let Some(old) = self.by_pk.get(&pk).copied() {
            self.kill(old);
        }
        if self.by_pk.len() >= self.config.max_clients {
            self.kill(conn);
            return false;
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let State::Unconfirmed { session, .. } = std::mem::replace(&mut c.state, State::Incoming)
        else {
            return false;
        };
        c.state = State::Confirmed(Box::new(Client {
            pk,
            session,
            slots: BTreeMap::new(),
            last_pinged: now,
            ping_id: None,
            oob_bucket: Bucket::new(now, self.config.link_burst),
        }));
        self.by_pk.insert(pk, conn);
        true
    }

    fn client(&mut self, conn: ConnId) -> Option<&mut Client> {
        match &mut self.conns.get_mut(&conn)?.state {
            State::Confirmed(c) => Some(c),
            _ => None,
        }
    }

    fn send(&mut self, conn: ConnId, p: &RelayPacket) {
        let Some(cl) = self.client(conn) else {
            return;
        };
        if let Ok(frame) = cl.session.seal_packet(p) {
            self.out.push_back(Output::Send(conn, frame));
        }
    }

    fn record(&mut self, data: &[u8]) {
        self.stats.bytes_relayed += data.len() as u64;
        self.stats.packets_relayed += 1;
        let room = self.config.tap_bytes.saturating_sub(self.tap_total);
        let take = room.min(data.len());
        self.tap_total += take;
        self.tap
            .extend_from_slice(data.get(..take).unwrap_or_default());
    }

    /// Handles one packet of a confirmed client; false = close the stream (as c-toxcore's
    /// `handle_TCP_packet` returning -1).
    fn handle_packet(&mut self, now: Instant, conn: ConnId, p: RelayPacket) -> bool {
        let (rate, oob_rate, burst, onion) = (
            self.config.link_rate,
            self.config.oob_rate,
            self.config.link_burst,
            self.config.onion,
        );
        let Some(cl) = self.client(conn) else {
            return false;
        };
        let me = cl.pk;
        match p {
            RelayPacket::RoutingRequest { pk } => self.routing_request(now, conn, pk),
            RelayPacket::ConnectNotification { .. } => {}
            RelayPacket::DisconnectNotification { conn_id } => {
                let Some(idx) = conn_id.checked_sub(NUM_RESERVED_IDS) else {
                    return false;
                };
                let Some(slot) = cl.slots.remove(&idx) else {
                    return false;
                };
                if let Some((other, oidx)) = slot.link {
                    self.unlink(other, oidx);
                }
            }
            RelayPacket::Ping { ping_id } => self.send(conn, &RelayPacket::Pong { ping_id }),
            RelayPacket::Pong { ping_id } => {
                if is_pong_zero(&ping_id) {
                    return false;
                }
                if cl.ping_id == Some(ping_id) {
                    cl.ping_id = None;
                }
            }
            RelayPacket::OobSend { dest, data } => {
                if !cl.oob_bucket.take(now, data.len(), oob_rate, burst) {
                    self.stats.bytes_rate_limited += data.len() as u64;
                    return true;
                }
                if let Some(&other) = self.by_pk.get(&dest) {
                    self.record(&data);
                    self.send(other, &RelayPacket::OobRecv { src: me, data });
                }
            }
            RelayPacket::OnionRequest(body) => {
                if onion {
                    self.stats.onion_requests += 1;
                    self.out.push_back(Output::OnionRequest(conn, body));
                } else {
                    self.stats.onion_dropped += 1;
                }
            }
            RelayPacket::Data { conn_id, data } => {
                let Some(idx) = conn_id.checked_sub(NUM_RESERVED_IDS) else {
                    return false;
                };
                let Some(slot) = cl.slots.get_mut(&idx) else {
                    return false;
                };
                let Some((other, oidx)) = slot.link else {
                    return true;
                };
                if !slot.bucket.take(now, data.len(), rate, burst) {
                    self.stats.bytes_rate_limited += data.len() as u64;
                    return true;
                }
                self.record(&data);
                self.send(
                    other,
                    &RelayPacket::Data {
                        conn_id: oidx + NUM_RESERVED_IDS,
                        data,
                    },
                );
            }
            RelayPacket::RoutingResponse { .. }
            | RelayPacket::OobRecv { .. }
            | RelayPacket::OnionResponse(_)
            | RelayPacket::ForwardRequest(_)
            | RelayPacket::Forwarding(_) => return false,
        }
        true
    }

    fn routing_request(&mut self, now: Instant, conn: ConnId, pk: PublicKey) {
        let max_links = self.config.max_links_per_client.min(NUM_CLIENT_CONNECTIONS);
        let burst = self.config.link_burst;
        let Some(cl) = self.client(conn) else {
            return;
        };
        let me = cl.pk;
        if pk == me {
            self.send(conn, &RelayPacket::RoutingResponse { conn_id: 0, pk });
            return;
        }
        if let Some((&idx, _)) = cl.slots.iter().find(|(_, s)| s.pk == pk) {
            let conn_id = idx + NUM_RESERVED_IDS;
            self.send(conn, &RelayPacket::RoutingResponse { conn_id, pk });
            return;
        }
        let free = (0..max_links)
            .filter_map(|i| u8::try_from(i).ok())
            .find(|i| !cl.slots.contains_key(i));
        let Some(idx) = free else {
            self.send(conn, &RelayPacket::RoutingResponse { conn_id: 0, pk });
            return;
        };
        cl.slots.insert(
            idx,
            Slot {
                pk,
                link: None,
                bucket: Bucket::new(now, burst),
            },
        );
        let conn_id = idx + NUM_RESERVED_IDS;
        self.send(conn, &RelayPacket::RoutingResponse { conn_id, pk });
        // Link when the other side already asked for us.
        let Some(&other) = self.by_pk.get(&pk) else {
            return;
        };
        let Some(ocl) = self.client(other) else {
            return;
        };
        let Some((&oidx, oslot)) = ocl
            .slots
            .iter_mut()
            .find(|(_, s)| s.pk == me && s.link.is_none())
        else {
            return;
        };
        oslot.link = Some((conn, idx));
        if let Some(slot) = self.client(conn).and_then(|c| c.slots.get_mut(&idx)) {
            slot.link = Some((other, oidx));
        }
        self.stats.links += 1;
        self.send(conn, &RelayPacket::ConnectNotification { conn_id });
        self.send(
            other,
            &RelayPacket::ConnectNotification {
                conn_id: oidx + NUM_RESERVED_IDS,
            },
        );
    }

    /// The peer of `conn`'s slot `idx` went away: the slot stays reserved, unlinked, and its
    /// owner is told.
    fn unlink(&mut self, conn: ConnId, idx: u8) {
        let Some(slot) = self.client(conn).and_then(|c| c.slots.get_mut(&idx)) else {
            return;
        };
        if slot.link.take().is_some() {
            self.stats.links = self.stats.links.saturating_sub(1);
            self.send(
                conn,
                &RelayPacket::DisconnectNotification {
                    conn_id: idx + NUM_RESERVED_IDS,
                },
            );
        }
    }

    fn protocol_error(&mut self, conn: ConnId) {
        self.stats.protocol_errors += 1;
        self.kill(conn);
    }

    /// Forgets `conn` and asks the driver to close it.
    fn kill(&mut self, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            self.remove(conn);
            self.out.push_back(Output::Close(conn));
        }
    }

    fn remove(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.incoming.retain(|x| *x != conn);
        self.unconfirmed.retain(|x| *x != conn);
        if let State::Confirmed(cl) = c.state {
            if self.by_pk.get(&cl.pk) == Some(&conn) {
                self.by_pk.remove(&cl.pk);
            }
            for slot in cl.slots.values() {
                if let Some((other, oidx)) = slot.link {
                    self.unlink(other, oidx);
                }
            }
        }
    }
}

#[cfg(test)]
impl RelayServer {
    /// Test check: every link is symmetric and counted once per pair.
    fn check_invariants(&self) {
        let mut linked = 0;
        for (&id, c) in &self.conns {
            let State::Confirmed(cl) = &c.state else {
                continue;
            };
            assert_eq!(self.by_pk.get(&cl.pk), Some(&id));
            for (&idx, slot) in &cl.slots {
                if let Some((other, oidx)) = slot.link {
                    linked += 1;
                    let Some(Conn {
                        state: State::Confirmed(ocl),
                        ..
                    }) = self.conns.get(&other)
                    else {
                        panic!("link to a missing client");
                    };
                    let back = ocl.slots.get(&oidx).and_then(|s| s.link);
                    assert_eq!(back, Some((id, idx)), "asymmetric link");
                    assert_eq!(slot.pk, ocl.pk);
                }
            }
        }
        assert_eq!(linked, 2 * self.stats.links);
    }
}

#[cfg(test)]
mod tests;
