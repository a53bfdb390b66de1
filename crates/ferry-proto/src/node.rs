//! A whole Tox node, sans-IO: [`Dht`] + [`Onion`] + [`NetCrypto`] glued by friend_connection and
//! messenger (`tox-protocol.md` §7; c-toxcore 0.2.18 `friend_connection.c`, `friend_requests.c`,
//! `Messenger.c`). This is the unit the driver (`ferry-net`) and the simulator run.
//!
//! # Flow per friend
//! 1. [`Node::add_friend`] (or accepting a request) registers the long-term key with the onion
//!    (search for the friend's announcement) and net_crypto (accept sessions from it).
//! 2. The onion delivers the friend's DHT-PK (their current DHT key and nodes near them): the DHT
//!    starts searching that key, and net_crypto learns it.
//! 3. When the DHT finds the friend's address, net_crypto does cookie → handshake → session.
//! 4. On the session: ONLINE both ways makes the friend online; then name, status message and
//!    user status are sent; ALIVE every 8 s, dead after 32 s of silence.
//! 5. Messages are net_crypto lossless packets (split at 1372 bytes); a message's receipt fires
//!    when the friend's node has acknowledged every packet of it (net_crypto `Delivered`).
//!
//! Friend requests go by onion data (id 0x20) and are resent with exponential backoff (5 s,
//! doubling, capped at 10 min) until the friend comes online; received ones are checked
//! against our nospam, existing friends and a ring of recent senders.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PublicKey};
use ferry_wire::kind;
use ferry_wire::messenger::{
    self as mp, MAX_CUSTOM_PACKET_SIZE, MAX_MESSAGE_LENGTH, MAX_NAME_LENGTH,
    MAX_STATUS_MESSAGE_LENGTH, MessengerPacket, UserStatus,
};
use ferry_wire::toxid::ToxId;

use crate::dataplane::{self, DataPlane};
use crate::dht::{Dht, DhtConfig, DhtEvent};
use crate::net_crypto::{NetCrypto, NetCryptoConfig, NetCryptoEvent, Path};
use crate::onion::{Onion, OnionConfig, OnionEvent};
use crate::tcp_connection::{RelayInfo, TcpCommand, TcpConnections, TcpEvent, TcpId};
use crate::{Destination, Endpoint, Transmit};
use ferry_wire::node::{PackedNode, Transport};

pub mod file;
pub use file::{FileCommand, FileDirection, FileEvent, FileInfo, FileNumber, PeerControl};

/// friend_connection keepalive interval (`FRIEND_PING_INTERVAL`).
pub const ALIVE_INTERVAL: Duration = Duration::from_secs(8);
/// A session without any packet for this long is dropped (`FRIEND_CONNECTION_TIMEOUT`, 4 × 8 s).
pub const FRIEND_TIMEOUT: Duration = Duration::from_secs(32);
/// First friend-request resend delay (`FRIENDREQUEST_TIMEOUT`); doubles per try.
pub const FRIEND_REQUEST_RETRY: Duration = Duration::from_secs(5);
/// Longest friend-request resend delay (ferry's cap).
pub const FRIEND_REQUEST_MAX_RETRY: Duration = Duration::from_secs(600);
/// While the friend is not found by the onion yet, a request is retried this often.
pub const FRIEND_REQUEST_NOT_FOUND_RETRY: Duration = Duration::from_millis(250);
/// Most friends (cap on a table; c-toxcore has none).
pub const MAX_FRIENDS: usize = 4096;
/// Senders remembered to drop duplicate friend requests (c-toxcore `MAX_RECEIVED_STORED`).
pub const RECENT_REQUESTS: usize = 32;
/// Most message receipts awaited per friend; older ones are forgotten (no receipt fires).
pub const MAX_PENDING_RECEIPTS: usize = 4096;
/// Longest friend-request message, bytes (`TOX_MAX_FRIEND_REQUEST_LENGTH`).
pub const MAX_FRIEND_REQUEST_LENGTH: usize = 1016;
/// Most undrained events kept; older ones are dropped (and counted).
pub const MAX_QUEUED_EVENTS: usize = 65_536;
/// How often the node re-checks friends' DHT addresses and request timers.
pub const FRIEND_TICK: Duration = Duration::from_millis(100);
/// Share-relays packet (messenger id 17) interval per online friend (`SHARE_RELAYS_INTERVAL`).
pub const SHARE_RELAYS_INTERVAL: Duration = Duration::from_secs(120);
/// Relays in a share-relays packet (`MAX_SHARED_RELAYS`).
pub const MAX_SHARED_RELAYS: usize = 3;
/// TCP relays at the front of our DHT-PK announcements (`tox-protocol.md` §4.4).
pub const DHT_PK_RELAYS: usize = 2;

/// Configuration of a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The DHT layer.
    pub dht: DhtConfig,
    /// The onion layer.
    pub onion: OnionConfig,
    /// The net_crypto layer.
    pub net_crypto: NetCryptoConfig,
    /// Send UDP at all (`false` = c-toxcore's `udp_enabled = false`: every UDP transmit is
    /// dropped, friends are reached through TCP relays only).
    pub udp_enabled: bool,
}

/// How long a full node runs the onion's fast start ([`OnionConfig::fast_start`]) after start
/// and after adding a friend.
pub const FAST_START: Duration = Duration::from_secs(30);

impl Default for NodeConfig {
    /// c-toxcore's timers everywhere, except the onion's bounded [`FAST_START`].
    fn default() -> Self {
        Self {
            dht: DhtConfig::default(),
            onion: OnionConfig {
                fast_start: Some(FAST_START),
                ..OnionConfig::default()
            },
            net_crypto: NetCryptoConfig::default(),
            udp_enabled: true,
        }
    }
}

/// How a friend is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Not online.
    None,
    /// Online over direct UDP.
    Udp,
    /// Online through a TCP relay.
    Tcp,
}

impl Connection {
    /// `"none"`, `"udp"` or `"tcp"` (the CLI/JSON spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// Errors of node commands (remote input never errors; it is counted and dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The key is our own.
    #[error("that is your own Tox ID")]
    OwnKey,
    /// Already a friend.
    #[error("already a friend")]
    AlreadyFriend,
    /// Not a friend.
    #[error("not a friend")]
    NotFriend,
    /// The friend is not online.
    #[error("friend is not online")]
    NotOnline,
    /// Too many friends.
    #[error("friend list is full ({MAX_FRIENDS})")]
    TooManyFriends,
    /// A text or packet is too long or empty.
    #[error("{what} must be {min}..={max} bytes, got {len}")]
    BadLength {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A custom packet id outside its range.
    #[error("custom packet id {0} is outside 160..=191 (lossless) / 200..=254 (lossy)")]
    BadPacketId(u8),
    /// The session refused the packet (send queue full).
    #[error("send queue full: {0}")]
    Congested(String),
    /// All 256 outgoing file numbers for this friend are in use.
    #[error("too many file transfers with this friend (256)")]
    TooManyFiles,
    /// No such file transfer.
    #[error("no such file transfer")]
    NoSuchFile,
    /// The file transfer is not in a state that allows this.
    #[error("file transfer: {0}")]
    FileState(&'static str),
}

/// What the node tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A DHT event (searches, bootstrap info).
    Dht(DhtEvent),
    /// Our onion "connected" status changed (announced to enough nodes).
    SelfConnection(bool),
    /// Someone asked to be our friend (nospam matched).
    FriendRequest {
        /// Their long-term key.
        public_key: PublicKey,
        /// Their message bytes (UTF-8 expected).
        message: Vec<u8>,
    },
    /// A friend's connection changed.
    FriendConnection {
        /// The friend.
        public_key: PublicKey,
        /// New state.
        connection: Connection,
    },
    /// An online friend's path changed (direct UDP ↔ TCP relay); [`NodeEvent::FriendConnection`]
    /// reports coming online/offline (with the first path) only.
    FriendPath {
        /// The friend.
        public_key: PublicKey,
        /// [`Connection::Udp`] or [`Connection::Tcp`].
        connection: Connection,
        /// With [`Connection::Tcp`]: the relay (its key and TCP address), when known.
        relay: Option<(PublicKey, SocketAddr)>,
    },
    /// A chat message arrived.
    Message {
        /// From whom.
        public_key: PublicKey,
        /// ACTION instead of MESSAGE.
        action: bool,
        /// The text bytes (≤ 1372).
        text: Vec<u8>,
    },
    /// Every packet of message `message_id` (from [`Node::send_message`]) was acknowledged.
    Receipt {
        /// The friend.
        public_key: PublicKey,
        /// The id returned when sending.
        message_id: u64,
    },
    /// A friend's name changed.
    FriendName {
        /// The friend.
        public_key: PublicKey,
        /// The name bytes.
        name: Vec<u8>,
    },
    /// A friend's status message changed.
    FriendStatusMessage {
        /// The friend.
        public_key: PublicKey,
        /// The text bytes.
        text: Vec<u8>,
    },
    /// A friend started/stopped typing.
    FriendTyping {
        /// The friend.
        public_key: PublicKey,
        /// Typing or not.
        typing: bool,
    },
    /// A file-transfer event ([`file`]).
    File(FileEvent),
    /// A custom lossless (160–191) or lossy (200–254) packet, id byte first.
    CustomPacket {
        /// The friend.
        public_key: PublicKey,
        /// Lossless or lossy.
        lossless: bool,
        /// The packet.
        data: Vec<u8>,
    },
    /// A valid net_crypto handshake from a long-term key that is not a friend (dropped by the
    /// node). The owner may accept such peers (ferry's content providers, issue 10) by adding
    /// them with [`Node::add_friend_norequest`] and [`Node::set_friend_dht_key`].
    UnknownPeer {
        /// Its long-term key.
        public_key: PublicKey,
        /// Its DHT key.
        dht_pk: PublicKey,
        /// Where the handshake came from (a relay placeholder for TCP paths).
        addr: SocketAddr,
    },
    /// A UDP datagram of an extension kind ([`EXTENSION_KINDS`], 0xe0–0xe4: ferry's value
    /// store, `data-layer.md` §3.1) that c-toxcore does not use; the owner handles it and
    /// answers with [`Node::send_extension_datagram`].
    ExtensionDatagram {
        /// The sender's address (normalized).
        from: SocketAddr,
        /// The whole datagram, kind byte first.
        data: Vec<u8>,
    },
}

/// Datagram kinds handed to the owner as [`NodeEvent::ExtensionDatagram`] (0xe0–0xe4, unused by
/// c-toxcore 0.2.18, which drops them).
pub const EXTENSION_KINDS: std::ops::RangeInclusive<u8> = 0xe0..=0xe4;

/// A friend as [`Node::friends`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendInfo {
    /// Long-term key.
    pub public_key: PublicKey,
    /// Name (as last received).
    pub name: Vec<u8>,
    /// Status message (as last received).
    pub status_message: Vec<u8>,
    /// Connection.
    pub connection: Connection,
    /// Our request to them is still being sent.
    pub request_pending: bool,
    /// Their current DHT key, if known.
    pub dht_key: Option<PublicKey>,
    /// When [`Connection::Tcp`]: the relay carrying the session (its key and TCP address).
    pub relay: Option<(PublicKey, SocketAddr)>,
    /// The friend's UDP endpoint as last learned (DHT search or session), if any; the tunnel
    /// pins a host route to it so a default route into the tunnel does not capture it.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug)]
struct PendingRequest {
    nospam: [u8; 4],
    message: Vec<u8>,
    next_send: Instant,
    backoff: Duration,
}

#[derive(Debug)]
struct Friend {
    dht_pk: Option<PublicKey>,
    addr: Option<SocketAddr>,
    request: Option<PendingRequest>,
    session: bool,
    online: bool,
    last_recv: Instant,
    last_alive_sent: Instant,
    name: Vec<u8>,
    status_message: Vec<u8>,
    typing_out: bool,
    /// (highest net_crypto packet number of a message, message id), in send order.
    receipts: VecDeque<(u32, u64)>,
    /// Path reported while online (Udp or Tcp).
    path: Connection,
    last_share: Option<Instant>,
}

/// A Tox node: DHT, onion, net_crypto, friend_connection and messenger.
#[derive(Debug)]
pub struct Node {
    dht: Dht,
    onion: Onion,
    crypto: NetCrypto,
    real_pk: PublicKey,
    nospam: [u8; 4],
    name: Vec<u8>,
    status_message: Vec<u8>,
    user_status: UserStatus,
    /// Ordered, so iteration (and with it randomness use) is the same in every run.
    friends: BTreeMap<PublicKey, Friend>,
    recent_requests: VecDeque<PublicKey>,
    next_message_id: u64,
    next_tick: Instant,
    events: VecDeque<NodeEvent>,
    events_dropped: u64,
    self_connected: bool,
    tcp: TcpConnections,
    udp_enabled: bool,
    /// TCP port of the relay this node hosts itself (`ferry up --tcp-relay`), if any.
    hosted_relay: Option<u16>,
    /// File transfers per friend (only friends with some).
    files: BTreeMap<PublicKey, file::FriendFiles>,
    /// The tunnel's fast data plane with ferry friends ([`crate::dataplane`]).
    dataplane: DataPlane,
    /// Sealed data plane datagrams waiting for [`Endpoint::poll_transmit`].
    dp_out: VecDeque<Transmit>,
    /// Data plane handshakes tried per friend: (last try, unanswered tries).
    dp_tries: BTreeMap<PublicKey, (Instant, u32)>,
}

/// After this many unanswered data plane handshakes (a c-toxcore friend, or an older ferry),
/// a friend is asked again only every [`DATAPLANE_BACKOFF`].
const DATAPLANE_TRIES: u32 = 3;
/// Wait between data plane handshakes once [`DATAPLANE_TRIES`] went unanswered.
const DATAPLANE_BACKOFF: Duration = Duration::from_secs(300);
/// Most sealed datagrams queued for the socket (beyond: sent by net_crypto instead).
const MAX_DATAPLANE_QUEUE: usize = 4096;

impl Node {
    /// A node with long-term keys `real_keys` and Tox ID nospam `nospam`, a fresh DHT key pair
    /// `dht_keys`, randomness `rng`.
    pub fn new(
        config: NodeConfig,
        real_keys: KeyPair,
        dht_keys: KeyPair,
        nospam: u32,
        mut rng: FerryRng,
        now: Instant,
    ) -> Self {
        let real_pk = real_keys.public;
        let dp_secret = real_keys.secret.to_bytes();
        let dht = Dht::new(config.dht, dht_keys.clone(), rng.fork(), now);
        let onion = Onion::new(
            config.onion,
            real_keys.clone(),
            dht_keys.clone(),
            rng.fork(),
            now,
        );
        let crypto = NetCrypto::new(
            config.net_crypto,
            real_keys,
            dht_keys.clone(),
            rng.fork(),
            now,
        );
        let tcp = TcpConnections::new(dht_keys, rng.fork());
        let dataplane = DataPlane::new(dp_secret, rng.fork());
        Self {
            dht,
            onion,
            crypto,
            real_pk,
            nospam: nospam.to_be_bytes(),
            name: Vec::new(),
            status_message: Vec::new(),
            user_status: UserStatus::Online,
            friends: BTreeMap::new(),
            recent_requests: VecDeque::new(),
            next_message_id: 1,
            next_tick: now,
            events: VecDeque::new(),
            events_dropped: 0,
            self_connected: false,
            tcp,
            udp_enabled: config.udp_enabled,
            hosted_relay: None,
            files: BTreeMap::new(),
            dataplane,
            dp_out: VecDeque::new(),
            dp_tries: BTreeMap::new(),
        }
    }

    /// Adds one of our own TCP relays (`tox_add_tcp_relay`, `--relay-peer`): kept connected,
    /// announced to friends, used to reach friends without a direct UDP path. Drain
    /// [`Node::poll_tcp_command`] afterwards.
    pub fn add_tcp_relay(&mut self, now: Instant, addr: SocketAddr, public_key: PublicKey) -> bool {
        self.tcp.add_relay(now, addr, public_key, true)
    }

    /// Tells the node it hosts a TCP relay on `port` (`ferry up --tcp-relay`; the relay's key is
    /// our DHT key). As c-toxcore (which adds its own server as `127.0.0.1:PORT`), it is then the
    /// first relay of our share-relays packets and DHT-PK announcements, as `127.0.0.1:PORT`;
    /// friends put our IP in its place ([`crate::tcp_connection::shared_relay_addr`]).
    pub fn set_hosted_relay(&mut self, port: Option<u16>) {
        self.hosted_relay = port;
    }

    /// Relays we tell friends about, at most `n`: the one we host (as `127.0.0.1:PORT` with our
    /// DHT key), then our ready base relays.
    fn shared_relays(&self, n: usize) -> Vec<(SocketAddr, PublicKey)> {
        let mut v: Vec<(SocketAddr, PublicKey)> = self
            .hosted_relay
            .map(|port| {
                (
                    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
                    self.dht.public_key(),
                )
            })
            .into_iter()
            .collect();
        v.extend(self.tcp.announced_relays(n.saturating_sub(v.len())));
        v.truncate(n);
        v
    }

    /// Every known TCP relay (ours and friends').
    pub fn tcp_relays(&self) -> Vec<RelayInfo> {
        self.tcp.relays()
    }

    /// The next TCP stream command for the driver (open, write, close). Drain after every
    /// input, after [`Endpoint::poll_transmit`].
    pub fn poll_tcp_command(&mut self) -> Option<TcpCommand> {
        self.tcp.poll_command()
    }

    /// The driver opened TCP stream `id`.
    pub fn handle_tcp_connected(&mut self, now: Instant, id: TcpId) {
        self.tcp.handle_connected(now, id);
        self.pump(now);
    }

    /// Bytes read from TCP stream `id`.
    pub fn handle_tcp_bytes(&mut self, now: Instant, id: TcpId, bytes: &[u8]) {
        self.tcp.handle_bytes(now, id, bytes);
        self.pump(now);
    }

    /// TCP stream `id` failed to open or ended.
    pub fn handle_tcp_closed(&mut self, now: Instant, id: TcpId) {
        self.tcp.handle_closed(now, id);
        self.pump(now);
    }

    fn on_tcp_event(&mut self, now: Instant, e: TcpEvent) {
        match e {
            TcpEvent::Packet { peer, data, .. } => {
                if let Some(&k) = data.first()
                    && (kind::COOKIE_REQUEST..=kind::CRYPTO_DATA).contains(&k)
                {
                    self.crypto
                        .handle_path_packet(now, Path::Relay(peer), &data);
                }
            }
            TcpEvent::RelayStatus { .. } => {
                self.crypto.set_relay_fallback(self.tcp.any_ready());
                self.update_onion_relays(now);
                self.next_tick = now;
            }
            TcpEvent::OnionResponse { relay, data } => {
                if matches!(
                    data.first(),
                    Some(&(kind::ANNOUNCE_RESPONSE | kind::DATA_RESPONSE))
                ) && let Some(addr) = self.tcp.relay_addr(&relay)
                {
                    self.onion.handle_packet(now, addr, &data, &mut self.dht);
                }
            }
        }
    }

    /// Ready relays become onion first hops when UDP is off or the DHT has no good node (UDP
    /// blocked): onion over TCP, as c-toxcore does when not UDP-connected.
    fn update_onion_relays(&mut self, now: Instant) {
        let relays: Vec<PackedNode> = self
            .tcp
            .relays()
            .into_iter()
            .filter(|r| r.ready)
            .map(|r| PackedNode {
                transport: Transport::Tcp,
                addr: r.addr,
                public_key: r.public_key,
            })
            .collect();
        let first_hop = !relays.is_empty() && (!self.udp_enabled || !self.dht.is_connected(now));
        self.onion.set_tcp_relays(relays, first_hop);
    }

    /// Adds a node to build onion paths from (`onion_add_bs_path_node`): with UDP off the DHT
    /// stays empty, so bootstrap nodes are the first path nodes behind a relay.
    pub fn add_onion_path_node(&mut self, addr: SocketAddr, public_key: PublicKey) {
        self.onion.add_path_node(PackedNode::udp(addr, public_key));
    }

    /// The path of a friend's session: UDP when heard directly within 8 s, else TCP.
    fn session_path(&self, pk: &PublicKey) -> Connection {
        match self.crypto.session_state(pk) {
            Some(st) if st.direct || !self.tcp.any_ready() => Connection::Udp,
            Some(_) => Connection::Tcp,
            None => Connection::None,
        }
    }

    /// The DHT layer (bootstrap, searches, close list).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// The DHT layer, mutable (bootstrap, searches). Drain transmits afterwards as usual.
    pub fn dht_mut(&mut self) -> &mut Dht {
        &mut self.dht
    }

    /// The onion layer.
    pub fn onion(&self) -> &Onion {
        &self.onion
    }

    /// An onion request from a client of this node's TCP relay server (TCP id 8): see
    /// [`Onion::handle_tcp_onion_request`]. Drain transmits afterwards as usual.
    pub fn handle_tcp_onion_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        body: &[u8],
    ) -> bool {
        self.onion.handle_tcp_onion_request(now, from, body)
    }

    /// The net_crypto layer.
    pub fn net_crypto(&self) -> &NetCrypto {
        &self.crypto
    }

    /// Our Tox ID.
    pub fn tox_id(&self) -> ToxId {
        ToxId::new(self.real_pk, u32::from_be_bytes(self.nospam))
    }

    /// Whether the onion reports us announced (c-toxcore's "connected").
    pub fn is_connected(&self) -> bool {
        self.self_connected
    }

    /// Changes the nospam (old Tox IDs stop working for new requests).
    pub fn set_nospam(&mut self, nospam: u32) {
        self.nospam = nospam.to_be_bytes();
    }

    /// Sets our name (≤ 128 bytes) and sends it to online friends.
    ///
    /// # Errors
    /// [`NodeError::BadLength`] beyond 128 bytes.
    pub fn set_name(&mut self, now: Instant, name: &[u8]) -> Result<(), NodeError> {
        check_len("name", name.len(), 0, MAX_NAME_LENGTH)?;
        self.name = name.to_vec();
        self.broadcast(now, &MessengerPacket::Nickname(self.name.clone()));
        Ok(())
    }

    /// Sets our status message (≤ 1007 bytes) and sends it to online friends.
    ///
    /// # Errors
    /// [`NodeError::BadLength`] beyond 1007 bytes.
    pub fn set_status_message(&mut self, now: Instant, text: &[u8]) -> Result<(), NodeError> {
        check_len("status message", text.len(), 0, MAX_STATUS_MESSAGE_LENGTH)?;
        self.status_message = text.to_vec();
        self.broadcast(
            now,
            &MessengerPacket::StatusMessage(self.status_message.clone()),
        );
        Ok(())
    }

    /// Sets our user status and sends it to online friends.
    pub fn set_user_status(&mut self, now: Instant, status: UserStatus) {
        self.user_status = status;
        self.broadcast(now, &MessengerPacket::UserStatus(status));
    }

    fn broadcast(&mut self, now: Instant, p: &MessengerPacket) {
        let online: Vec<PublicKey> = self
            .friends
            .iter()
            .filter(|(_, f)| f.online)
            .map(|(k, _)| *k)
            .collect();
        let data = p.encode();
        for pk in online {
            let _ = self.crypto.send_lossless(now, &pk, &data);
        }
    }

    /// Adds a friend by Tox ID and sends them a friend request with `message` (1..=1016 bytes)
    /// until they come online.
    ///
    /// # Errors
    /// [`NodeError::OwnKey`], [`NodeError::AlreadyFriend`], [`NodeError::BadLength`],
    /// [`NodeError::TooManyFriends`].
    pub fn add_friend(
        &mut self,
        now: Instant,
        id: &ToxId,
        message: &[u8],
    ) -> Result<(), NodeError> {
        check_len(
            "friend request message",
            message.len(),
            1,
            MAX_FRIEND_REQUEST_LENGTH,
        )?;
        self.insert_friend(now, id.public_key)?;
        if let Some(f) = self.friends.get_mut(&id.public_key) {
            f.request = Some(PendingRequest {
                nospam: id.nospam,
                message: message.to_vec(),
                next_send: now,
                backoff: FRIEND_REQUEST_RETRY,
            });
        }
        self.next_tick = now;
        Ok(())
    }

    /// Adds a friend without sending a request: accepting their request, or restoring a saved
    /// friend list.
    ///
    /// # Errors
    /// [`NodeError::OwnKey`], [`NodeError::AlreadyFriend`], [`NodeError::TooManyFriends`].
    pub fn add_friend_norequest(&mut self, now: Instant, pk: PublicKey) -> Result<(), NodeError> {
        self.insert_friend(now, pk)
    }

    /// Tells the node a friend's DHT key and, optionally, a UDP address, as an onion DHT-PK
    /// announcement (`tox-protocol.md` §4.4) would: net_crypto starts its cookie request at once.
    /// For peers known out of band (benchmarks, tests, static LAN peers).
    ///
    /// # Errors
    /// [`NodeError::NotFriend`].
    pub fn set_friend_dht_key(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        dht_pk: PublicKey,
        addr: Option<SocketAddr>,
    ) -> Result<(), NodeError> {
        let f = self.friends.get_mut(pk).ok_or(NodeError::NotFriend)?;
        if f.dht_pk != Some(dht_pk) {
            if let Some(old) = f.dht_pk.replace(dht_pk) {
                self.dht.remove_search(&old);
            }
            f.addr = None;
            let _ = self.dht.add_search(now, dht_pk);
            self.crypto.set_peer_dht_key(now, pk, dht_pk);
        }
        if let Some(addr) = addr {
            self.set_friend_addr(now, *pk, addr);
        }
        self.pump(now);
        Ok(())
    }

    fn insert_friend(&mut self, now: Instant, pk: PublicKey) -> Result<(), NodeError> {
        if pk == self.real_pk {
            return Err(NodeError::OwnKey);
        }
        if self.friends.contains_key(&pk) {
            return Err(NodeError::AlreadyFriend);
        }
        if self.friends.len() >= MAX_FRIENDS {
            return Err(NodeError::TooManyFriends);
        }
        self.friends.insert(
            pk,
            Friend {
                dht_pk: None,
                addr: None,
                request: None,
                session: false,
                online: false,
                last_recv: now,
                last_alive_sent: now,
                name: Vec::new(),
                status_message: Vec::new(),
                typing_out: false,
                receipts: VecDeque::new(),
                path: Connection::None,
                last_share: None,
            },
        );
        // The onion's only refusal here is its own friend cap.
        if self.onion.add_friend(now, pk).is_err() {
            self.friends.remove(&pk);
            return Err(NodeError::TooManyFriends);
        }
        self.crypto.add_peer(now, pk);
        self.recent_requests.retain(|k| *k != pk);
        Ok(())
    }

    /// Removes a friend, closing the session.
    ///
    /// # Errors
    /// [`NodeError::NotFriend`].
    pub fn remove_friend(&mut self, now: Instant, pk: &PublicKey) -> Result<(), NodeError> {
        let f = self.friends.remove(pk).ok_or(NodeError::NotFriend)?;
        self.files.remove(pk);
        if f.online {
            let _ = self
                .crypto
                .send_lossless(now, pk, &MessengerPacket::Offline.encode());
        }
        self.crypto.remove_peer(now, pk);
        self.onion.remove_friend(pk);
        if let Some(d) = f.dht_pk {
            self.dht.remove_search(&d);
            self.tcp.remove_friend(now, &d);
        }
        Ok(())
    }

    /// Before the process stops: ends every net_crypto session with a kill packet
    /// ([`NetCrypto::close_all`]), so friends see this node offline at once. Call it, then send
    /// the datagrams it queued ([`Node::poll_transmit`]), then stop.
    pub fn close_sessions(&mut self, now: Instant) {
        self.crypto.close_all(now);
    }

    /// Every friend.
    pub fn friends(&self) -> Vec<FriendInfo> {
        let mut v: Vec<FriendInfo> = self
            .friends
            .iter()
            .map(|(pk, f)| FriendInfo {
                public_key: *pk,
                name: f.name.clone(),
                status_message: f.status_message.clone(),
                connection: if f.online { f.path } else { Connection::None },
                request_pending: f.request.is_some(),
                dht_key: f.dht_pk,
                relay: match (
                    f.online,
                    f.path,
                    f.dht_pk
                        .or_else(|| self.crypto.session_state(pk).map(|s| s.dht_pk)),
                ) {
                    (true, Connection::Tcp, Some(d)) => self.tcp.route_of(&d),
                    _ => None,
                },
                addr: f.addr,
            })
            .collect();
        v.sort_by_key(|f| f.public_key.0);
        v
    }

    /// Sends a chat message (split into ≤ 1372-byte packets). Returns the message id that a
    /// later [`NodeEvent::Receipt`] names.
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`], [`NodeError::BadLength`] (empty),
    /// [`NodeError::Congested`].
    pub fn send_message(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        action: bool,
        text: &str,
    ) -> Result<u64, NodeError> {
        check_len("message", text.len(), 1, usize::MAX)?;
        let f = self.friends.get(pk).ok_or(NodeError::NotFriend)?;
        if !f.online {
            return Err(NodeError::NotOnline);
        }
        let mut last = 0;
        for part in mp::split_message(text, MAX_MESSAGE_LENGTH) {
            let p = MessengerPacket::Message {
                action,
                text: part.as_bytes().to_vec(),
            };
            last = self
                .crypto
                .send_lossless(now, pk, &p.encode())
                .map_err(|e| NodeError::Congested(e.to_string()))?;
        }
        let id = self.next_message_id;
        self.next_message_id += 1;
        if let Some(f) = self.friends.get_mut(pk) {
            if f.receipts.len() >= MAX_PENDING_RECEIPTS {
                f.receipts.pop_front();
            }
            f.receipts.push_back((last, id));
        }
        Ok(id)
    }

    /// Tells a friend we are (not) typing.
    ///
    /// # Errors
    /// [`NodeError::NotFriend`], [`NodeError::NotOnline`].
    pub fn set_typing(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        typing: bool,
    ) -> Result<(), NodeError> {
        let f = self.friends.get_mut(pk).ok_or(NodeError::NotFriend)?;
        f.typing_out = typing;
        if !f.online {
            return Err(NodeError::NotOnline);
        }
        self.crypto
            .send_lossless(now, pk, &MessengerPacket::Typing(typing).encode())
            .map_err(|e| NodeError::Congested(e.to_string()))?;
        Ok(())
    }

    /// Sends a custom packet (`data[0]` in 160..=191 lossless or 200..=254 lossy, ≤ 1373 bytes
    /// in all): the app channel later layers (tunnel, payments) ride on.
    ///
    /// # Errors
    /// [`NodeError::BadPacketId`], [`NodeError::BadLength`], [`NodeError::NotFriend`],
    /// [`NodeError::NotOnline`], [`NodeError::Congested`].
    pub fn send_custom(
        &mut self,
        now: Instant,
        pk: &PublicKey,
        data: &[u8],
    ) -> Result<(), NodeError> {
        check_len("custom packet", data.len(), 1, MAX_CUSTOM_PACKET_SIZE)?;
        let id = data[0];
        let lossless = mp::CUSTOM_LOSSLESS.contains(&id);
        if !lossless && !mp::CUSTOM_LOSSY.contains(&id) {
            return Err(NodeError::BadPacketId(id));
        }
        let f = self.friends.get(pk).ok_or(NodeError::NotFriend)?;
        if !f.online {
            return Err(NodeError::NotOnline);
        }
        let r = if lossless {
            self.crypto.send_lossless(now, pk, data).map(|_| ())
        } else {
            if let Some(t) = self.dataplane_seal(now, pk, data) {
                self.dp_out.push_back(t);
                return Ok(());
            }
            self.crypto.send_lossy(now, pk, data)
        };
        r.map_err(|e| NodeError::Congested(e.to_string()))
    }

    /// A lossy packet as a data plane datagram to `pk`'s direct UDP address, if the friend has
    /// a data plane session and a direct path; otherwise starts a handshake (rate-limited) and
    /// returns `None` (the packet then goes by net_crypto).
    fn dataplane_seal(&mut self, now: Instant, pk: &PublicKey, data: &[u8]) -> Option<Transmit> {
        if self.dp_out.len() >= MAX_DATAPLANE_QUEUE {
            return None;
        }
        let st = self.crypto.session_state(pk)?;
        let addr = st.addr.filter(|_| st.direct)?;
        if self.dataplane.has_session(pk) {
            let mut out = Vec::with_capacity(data.len() + dataplane::OVERHEAD);
            self.dataplane.seal(pk, data, &mut out).ok()?;
            return Some(Transmit {
                destination: Destination::Addr(addr),
                payload: out,
            });
        }
        self.dataplane_initiate(now, pk);
        None
    }

    fn dataplane_initiate(&mut self, now: Instant, pk: &PublicKey) {
        let (last, tries) = self.dp_tries.get(pk).copied().unwrap_or((now, 0));
        let wait = if tries >= DATAPLANE_TRIES {
            DATAPLANE_BACKOFF
        } else {
            dataplane::HANDSHAKE_TIMEOUT
        };
        if tries > 0 && now < last + wait {
            return;
        }
        self.dp_tries.insert(*pk, (now, tries.saturating_add(1)));
        if let Ok(msg) = self.dataplane.initiate(now, pk) {
            let _ = self.crypto.send_lossless(now, pk, &msg);
        }
    }

    /// The data plane's counters.
    pub fn dataplane_stats(&self) -> dataplane::DataPlaneStats {
        self.dataplane.stats()
    }

    fn on_dataplane(&mut self, now: Instant, bytes: &[u8]) {
        let mut out = Vec::with_capacity(bytes.len());
        let Ok(peer) = self.dataplane.open(now, bytes, &mut out) else {
            return;
        };
        if self.friends.get(&peer).is_some_and(|f| f.online)
            && out.first().is_some_and(|id| mp::CUSTOM_LOSSY.contains(id))
        {
            self.emit(NodeEvent::CustomPacket {
                public_key: peer,
                lossless: false,
                data: out,
            });
        }
    }

    fn emit(&mut self, e: NodeEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// Events dropped because the owner did not drain [`Node::poll_event`] (cap
    /// [`MAX_QUEUED_EVENTS`]).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Queues an extension datagram (first byte in [`EXTENSION_KINDS`]) to `to` over UDP;
    /// returns `false` (dropped) for another kind or when the outgoing queue is full (4096).
    pub fn send_extension_datagram(&mut self, to: SocketAddr, payload: Vec<u8>) -> bool {
        if !payload.first().is_some_and(|k| EXTENSION_KINDS.contains(k))
            || self.dp_out.len() >= MAX_DATAPLANE_QUEUE
        {
            return false;
        }
        self.dp_out.push_back(Transmit {
            destination: Destination::Addr(to),
            payload,
        });
        true
    }

    /// The next event, if any. Drain after every input.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// Moves every sub-layer event into the glue logic. Called after each input.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(e) = self.dht.poll_event() {
                progressed = true;
                self.on_dht_event(now, e);
            }
            while let Some(e) = self.onion.poll_event() {
                progressed = true;
                self.on_onion_event(now, e);
            }
            while let Some(e) = self.crypto.poll_event() {
                progressed = true;
                self.on_crypto_event(now, e);
            }
            while let Some(e) = self.tcp.poll_event() {
                progressed = true;
                self.on_tcp_event(now, e);
            }
            if !progressed {
                break;
            }
        }
        self.file_request_chunks(now);
    }

    fn on_dht_event(&mut self, now: Instant, e: DhtEvent) {
        match e {
            DhtEvent::Found { public_key, addr } => {
                let real = self
                    .friends
                    .iter()
                    .find(|(_, f)| f.dht_pk == Some(public_key))
                    .map(|(k, _)| *k);
                if let Some(real) = real {
                    self.set_friend_addr(now, real, addr);
                } else {
                    self.events
                        .push_back(NodeEvent::Dht(DhtEvent::Found { public_key, addr }));
                }
            }
            DhtEvent::DhtRequest {
                sender, id, data, ..
            } if id == ferry_wire::onion::DATA_ID_DHT_PK => {
                self.onion.handle_dht_pk_request(&sender, &data);
            }
            other => self.emit(NodeEvent::Dht(other)),
        }
    }

    fn set_friend_addr(&mut self, now: Instant, real: PublicKey, addr: SocketAddr) {
        let relayed = self
            .crypto
            .session_state(&real)
            .is_some_and(|s| s.established && !s.direct && self.tcp.any_ready());
        if let Some(f) = self.friends.get_mut(&real)
            && f.addr != Some(addr)
        {
            f.addr = Some(addr);
            if relayed {
                // Probe it; the relay stays until the friend answers over UDP.
                self.crypto.add_peer_addr_candidate(now, &real, addr);
            } else {
                self.crypto.set_peer_addr(now, &real, addr);
            }
        }
    }

    /// The friend's current DHT key, learnt from its DHT-PK or from its handshake (a session
    /// made over a relay can come first): the DHT searches its address, relays route to it.
    fn learn_dht_pk(&mut self, now: Instant, real: PublicKey, dht_pk: PublicKey) {
        let Some(f) = self.friends.get_mut(&real) else {
            return;
        };
        if f.dht_pk == Some(dht_pk) {
            return;
        }
        if let Some(old) = f.dht_pk.replace(dht_pk) {
            self.dht.remove_search(&old);
            self.tcp.remove_friend(now, &old);
        }
        f.addr = None;
        let _ = self.dht.add_search(now, dht_pk);
        self.tcp.set_friend(now, dht_pk, true);
    }

    fn on_onion_event(&mut self, now: Instant, e: OnionEvent) {
        match e {
            OnionEvent::Connected(c) if c != self.self_connected => {
                self.self_connected = c;
                self.emit(NodeEvent::SelfConnection(c));
            }
            OnionEvent::FriendRequest {
                real_pk,
                nospam,
                message,
            } => {
                if nospam != self.nospam
                    || real_pk == self.real_pk
                    || self.friends.contains_key(&real_pk)
                    || self.recent_requests.contains(&real_pk)
                {
                    return;
                }
                if self.recent_requests.len() >= RECENT_REQUESTS {
                    self.recent_requests.pop_front();
                }
                self.recent_requests.push_back(real_pk);
                self.emit(NodeEvent::FriendRequest {
                    public_key: real_pk,
                    message,
                });
            }
            OnionEvent::FriendDhtPk {
                real_pk,
                dht_pk,
                nodes,
            } => {
                let Some(f) = self.friends.get_mut(&real_pk) else {
                    return;
                };
                if f.dht_pk != Some(dht_pk) {
                    self.learn_dht_pk(now, real_pk, dht_pk);
                    self.crypto.set_peer_dht_key(now, &real_pk, dht_pk);
                }
                let friend_addr = self.friend_udp_addr(now, &real_pk, &dht_pk);
                for n in nodes {
                    match n.transport {
                        Transport::Udp => self.dht.bootstrap(now, n.addr, n.public_key),
                        Transport::Tcp => {
                            if let Some(addr) = crate::tcp_connection::shared_relay_addr(
                                n.addr,
                                &n.public_key,
                                &dht_pk,
                                friend_addr,
                            ) {
                                self.tcp.add_friend_relay(now, dht_pk, addr, n.public_key);
                            }
                        }
                    }
                }
                if let Some(addr) = self.dht.address_of(now, &dht_pk) {
                    self.set_friend_addr(now, real_pk, addr);
                }
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn on_crypto_event(&mut self, now: Instant, e: NetCryptoEvent) {
        match e {
            NetCryptoEvent::Established { peer, .. } => {
                if let Some(d) = self.crypto.session_state(&peer).map(|s| s.dht_pk) {
                    self.learn_dht_pk(now, peer, d);
                }
                if let Some(f) = self.friends.get_mut(&peer) {
                    f.session = true;
                    f.last_recv = now;
                    f.last_alive_sent = now;
                    f.request = None;
                    let _ =
                        self.crypto
                            .send_lossless(now, &peer, &MessengerPacket::Online.encode());
                }
            }
            NetCryptoEvent::Closed { peer, .. } => self.session_down(now, peer),
            NetCryptoEvent::UnknownPeer {
                real_pk,
                dht_pk,
                addr,
            } => self.events.push_back(NodeEvent::UnknownPeer {
                public_key: real_pk,
                dht_pk,
                addr,
            }),
            NetCryptoEvent::Lossless { peer, data } => self.on_packet(now, peer, &data, true),
            NetCryptoEvent::Lossy { peer, data } => self.on_packet(now, peer, &data, false),
            NetCryptoEvent::Delivered {
                peer,
                packet_number,
            } => {
                self.on_file_delivered(peer, packet_number);
                let Some(f) = self.friends.get_mut(&peer) else {
                    return;
                };
                let mut done = Vec::new();
                while let Some(&(pn, id)) = f.receipts.front() {
                    // Packet numbers wrap (u32); "at or before" in wrapping order.
                    if packet_number.wrapping_sub(pn) < u32::MAX / 2 {
                        f.receipts.pop_front();
                        done.push(id);
                    } else {
                        break;
                    }
                }
                for id in done {
                    self.emit(NodeEvent::Receipt {
                        public_key: peer,
                        message_id: id,
                    });
                }
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn session_down(&mut self, _now: Instant, peer: PublicKey) {
        let Some(f) = self.friends.get_mut(&peer) else {
            return;
        };
        f.session = false;
        f.addr = None;
        self.dataplane.remove_peer(&peer);
        self.dp_tries.remove(&peer);
        if f.online {
            f.online = false;
            f.receipts.clear();
            self.on_file_friend_offline(peer);
            self.onion.set_friend_online(&peer, false);
            self.emit(NodeEvent::FriendConnection {
                public_key: peer,
                connection: Connection::None,
            });
        }
    }

    fn on_packet(&mut self, now: Instant, peer: PublicKey, data: &[u8], lossless: bool) {
        let Some(f) = self.friends.get_mut(&peer) else {
            return;
        };
        f.last_recv = now;
        let Ok(p) = MessengerPacket::decode(data) else {
            return;
        };
        match p {
            MessengerPacket::Online if !f.online => {
                f.online = true;
                f.request = None;
                let typing = f.typing_out;
                self.onion.set_friend_online(&peer, true);
                let path = self.session_path(&peer);
                if let Some(f) = self.friends.get_mut(&peer) {
                    f.path = path;
                }
                self.emit(NodeEvent::FriendConnection {
                    public_key: peer,
                    connection: path,
                });
                for p in [
                    MessengerPacket::Nickname(self.name.clone()),
                    MessengerPacket::StatusMessage(self.status_message.clone()),
                    MessengerPacket::UserStatus(self.user_status),
                    MessengerPacket::Typing(typing),
                ] {
                    let _ = self.crypto.send_lossless(now, &peer, &p.encode());
                }
            }
            MessengerPacket::Offline if f.online => {
                f.online = false;
                self.dataplane.remove_peer(&peer);
                self.dp_tries.remove(&peer);
                self.on_file_friend_offline(peer);
                self.onion.set_friend_online(&peer, false);
                self.emit(NodeEvent::FriendConnection {
                    public_key: peer,
                    connection: Connection::None,
                });
            }
            MessengerPacket::Nickname(name) if f.name != name => {
                f.name.clone_from(&name);
                self.emit(NodeEvent::FriendName {
                    public_key: peer,
                    name,
                });
            }
            MessengerPacket::StatusMessage(text) if f.status_message != text => {
                f.status_message.clone_from(&text);
                self.emit(NodeEvent::FriendStatusMessage {
                    public_key: peer,
                    text,
                });
            }
            MessengerPacket::ShareRelays(bytes) => {
                let Some(d) = f.dht_pk else {
                    return;
                };
                let friend_addr = self.friend_udp_addr(now, &peer, &d);
                let mut r = ferry_wire::Reader::new(&bytes);
                for _ in 0..MAX_SHARED_RELAYS {
                    let Ok(n) = PackedNode::decode(&mut r) else {
                        break;
                    };
                    if n.transport != Transport::Tcp {
                        continue;
                    }
                    // A relay the friend hosts itself comes as 127.0.0.1 from c-toxcore.
                    if let Some(addr) = crate::tcp_connection::shared_relay_addr(
                        n.addr,
                        &n.public_key,
                        &d,
                        friend_addr,
                    ) {
                        self.tcp.add_friend_relay(now, d, addr, n.public_key);
                    }
                }
            }
            MessengerPacket::Typing(typing) => self.emit(NodeEvent::FriendTyping {
                public_key: peer,
                typing,
            }),
            MessengerPacket::Message { action, text } if f.online => {
                self.emit(NodeEvent::Message {
                    public_key: peer,
                    action,
                    text,
                });
            }
            p @ (MessengerPacket::FileSendRequest(_)
            | MessengerPacket::FileControl(_)
            | MessengerPacket::FileData { .. })
                if lossless && f.online =>
            {
                self.on_file_packet(now, peer, p);
            }
            MessengerPacket::CustomLossless(data)
                if lossless
                    && f.online
                    && data.first() == Some(&dataplane::HANDSHAKE_PACKET_ID) =>
            {
                match self.dataplane.handle_handshake(now, &peer, &data) {
                    Ok(Some(reply)) => {
                        let _ = self.crypto.send_lossless(now, &peer, &reply);
                    }
                    Ok(None) => {
                        self.dp_tries.remove(&peer);
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "data plane handshake"),
                }
            }
            MessengerPacket::CustomLossless(data) if lossless && f.online => {
                self.emit(NodeEvent::CustomPacket {
                    public_key: peer,
                    lossless: true,
                    data,
                });
            }
            MessengerPacket::CustomLossy(data)
                if !lossless
                    && f.online
                    && data.first().is_some_and(|id| mp::CUSTOM_LOSSY.contains(id)) =>
            {
                self.emit(NodeEvent::CustomPacket {
                    public_key: peer,
                    lossless: false,
                    data,
                });
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) {
        // Data plane sessions we initiated re-key before they expire.
        for pk in self.dataplane.handle_timeout(now) {
            if self.friends.get(&pk).is_some_and(|f| f.online)
                && let Ok(msg) = self.dataplane.initiate(now, &pk)
            {
                let _ = self.crypto.send_lossless(now, &pk, &msg);
            }
        }
        let keys: Vec<PublicKey> = self.friends.keys().copied().collect();
        for pk in keys {
            let Some(f) = self.friends.get_mut(&pk) else {
                continue;
            };
            // Friend requests until online.
            if let Some(req) = f.request.as_mut()
                && !f.online
                && now >= req.next_send
            {
                match self
                    .onion
                    .send_friend_request(now, &pk, req.nospam, &req.message)
                {
                    Ok(()) => {
                        req.next_send = now + req.backoff;
                        req.backoff = (req.backoff * 2).min(FRIEND_REQUEST_MAX_RETRY);
                    }
                    Err(_) => req.next_send = now + FRIEND_REQUEST_NOT_FOUND_RETRY,
                }
            }
            // Keepalive and timeout.
            if f.session {
                if now.saturating_duration_since(f.last_recv) >= FRIEND_TIMEOUT {
                    self.crypto.remove_peer(now, &pk);
                    self.crypto.add_peer(now, pk);
                    if let Some(d) = f.dht_pk {
                        self.crypto.set_peer_dht_key(now, &pk, d);
                    }
                    self.session_down(now, pk);
                    continue;
                }
                if now.saturating_duration_since(f.last_alive_sent) >= ALIVE_INTERVAL {
                    f.last_alive_sent = now;
                    let _ = self
                        .crypto
                        .send_lossless(now, &pk, &MessengerPacket::Alive.encode());
                }
                let dht_pk = f.dht_pk;
                self.relay_tick(now, pk);
                // The DHT may find the friend's address while the session runs over a relay.
                if let Some(d) = dht_pk
                    && let Some(addr) = self.dht.address_of(now, &d)
                {
                    self.set_friend_addr(now, pk, addr);
                }
            } else if let Some(d) = f.dht_pk {
                // No session: a relayed route may be needed to make one.
                self.tcp.set_friend(now, d, true);
                if let Some(addr) = self.dht.address_of(now, &d) {
                    self.set_friend_addr(now, pk, addr);
                }
            }
        }
        let mut nodes: Vec<PackedNode> = self
            .shared_relays(DHT_PK_RELAYS)
            .into_iter()
            .map(|(addr, public_key)| PackedNode {
                transport: Transport::Tcp,
                addr,
                public_key,
            })
            .collect();
        nodes.extend(self.dht.closest_nodes(now, &self.dht.public_key(), false));
        self.onion.set_dht_pk_nodes(nodes);
        self.update_onion_relays(now);
    }

    /// The UDP address a friend is known at (c-toxcore's `dht_ip_port`): where the DHT last
    /// saw its DHT key `dht_pk`, else its session's address.
    fn friend_udp_addr(
        &self,
        now: Instant,
        real_pk: &PublicKey,
        dht_pk: &PublicKey,
    ) -> Option<SocketAddr> {
        self.dht
            .address_of(now, dht_pk)
            .or_else(|| self.crypto.session_state(real_pk).and_then(|s| s.addr))
    }

    /// Per established friend: the reported path (UDP/TCP; a change is an event), whether the
    /// relayed route is wanted (dropped while direct UDP works), and share-relays every 120 s.
    fn relay_tick(&mut self, now: Instant, pk: PublicKey) {
        let path = self.session_path(&pk);
        let session_dht = self.crypto.session_state(&pk).map(|s| s.dht_pk);
        let Some(f) = self.friends.get_mut(&pk) else {
            return;
        };
        // A session accepted from the friend's handshake may come before its DHT-PK.
        if let Some(d) = session_dht.or(f.dht_pk) {
            let direct = path == Connection::Udp
                && self
                    .crypto
                    .session_state(&pk)
                    .is_some_and(|s| s.direct && s.established);
            self.tcp.set_friend(now, d, !direct);
        }
        if f.online && path != Connection::None && f.path != path {
            f.path = path;
            let relay = match (path, session_dht) {
                (Connection::Tcp, Some(d)) => self.tcp.route_of(&d),
                _ => None,
            };
            self.emit(NodeEvent::FriendPath {
                public_key: pk,
                connection: path,
                relay,
            });
        }
        let relays = self.shared_relays(MAX_SHARED_RELAYS);
        let Some(f) = self.friends.get_mut(&pk) else {
            return;
        };
        if f.online
            && f.last_share
                .is_none_or(|t| now.saturating_duration_since(t) >= SHARE_RELAYS_INTERVAL)
        {
            if relays.is_empty() {
                return;
            }
            f.last_share = Some(now);
            let mut b = Vec::new();
            for (addr, public_key) in relays {
                PackedNode {
                    transport: Transport::Tcp,
                    addr,
                    public_key,
                }
                .encode(&mut b);
            }
            let _ = self
                .crypto
                .send_lossless(now, &pk, &MessengerPacket::ShareRelays(b).encode());
        }
    }
}

fn check_len(what: &'static str, len: usize, min: usize, max: usize) -> Result<(), NodeError> {
    if len < min || len > max {
        Err(NodeError::BadLength {
            what,
            len,
            min,
            max,
        })
    } else {
        Ok(())
    }
}

impl Endpoint for Node {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if !self.udp_enabled {
            return;
        }
        let from = ferry_wire::node::normalize(from);
        match bytes.first() {
            Some(&k) if (kind::COOKIE_REQUEST..=kind::CRYPTO_DATA).contains(&k) => {
                self.crypto.handle_packet(now, from, bytes);
            }
            Some(0x80..=0x8e) => self.onion.handle_packet(now, from, bytes, &mut self.dht),
            Some(&dataplane::TRANSPORT_KIND) => self.on_dataplane(now, bytes),
            Some(k) if EXTENSION_KINDS.contains(k) => self.emit(NodeEvent::ExtensionDatagram {
                from,
                data: bytes.to_vec(),
            }),
            _ => self.dht.handle_datagram(now, from, bytes),
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.dht.poll_timeout() {
            self.dht.handle_timeout(now);
        }
        if now >= self.onion.poll_timeout() {
            self.onion.handle_timeout(now, &mut self.dht);
        }
        if now >= self.crypto.poll_timeout() {
            self.crypto.handle_timeout(now);
        }
        if self.tcp.poll_timeout().is_some_and(|t| now >= t) {
            self.tcp.handle_timeout(now);
        }
        self.pump(now);
        if now >= self.next_tick {
            self.next_tick = now + FRIEND_TICK;
            self.tick(now);
            self.pump(now);
        }
    }

    /// Datagrams only; net_crypto packets for relays go to the TCP connections here (drain
    /// [`Node::poll_tcp_command`] afterwards). With UDP disabled everything UDP is dropped.
    fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.dp_out.pop_front()
            && self.udp_enabled
        {
            return Some(t);
        }
        loop {
            let t = match self.crypto.poll_path_transmit() {
                Some((Path::Udp(a), payload)) => Transmit {
                    destination: Destination::Addr(a),
                    payload,
                },
                Some((Path::Relay(pk), payload)) => {
                    self.tcp.send(&pk, payload);
                    continue;
                }
                None => {
                    while let Some((relay, body)) = self.onion.poll_tcp_request() {
                        self.tcp.send_onion_request_via(&relay, body);
                    }
                    self.onion
                        .poll_transmit()
                        .or_else(|| self.dht.poll_transmit())?
                }
            };
            if self.udp_enabled {
                return Some(t);
            }
        }
    }

    fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        for other in [
            self.dht.poll_timeout(),
            self.onion.poll_timeout(),
            self.crypto.poll_timeout(),
        ] {
            t = t.min(other);
        }
        if let Some(x) = self.tcp.poll_timeout() {
            t = t.min(x);
        }
        t
    }
}

#[cfg(test)]
mod extension_tests {
    use super::*;
    use crate::Endpoint;

    /// Datagrams 0xe0–0xe4 reach the owner as events; it answers through the node's UDP queue;
    /// other kinds cannot be sent that way.
    #[test]
    fn extension_datagrams_go_to_the_owner_and_back() {
        #[allow(clippy::disallowed_methods)] // a test clock origin
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(3);
        let real = KeyPair::generate(&mut rng);
        let dht = KeyPair::generate(&mut rng);
        let mut n = Node::new(NodeConfig::default(), real, dht, 1, rng.fork(), now);
        while n.poll_event().is_some() {}
        let from: SocketAddr = "127.0.0.1:4000".parse().expect("addr");
        n.handle_datagram(now, from, &[0xe1, 1, 2, 3]);
        let mut got = None;
        while let Some(e) = n.poll_event() {
            if let NodeEvent::ExtensionDatagram { from: f, data } = e {
                got = Some((f, data));
            }
        }
        assert_eq!(got, Some((from, vec![0xe1, 1, 2, 3])));
        while n.poll_transmit().is_some() {}
        assert!(!n.send_extension_datagram(from, vec![0x02, 0]));
        assert!(!n.send_extension_datagram(from, Vec::new()));
        assert!(n.send_extension_datagram(from, vec![0xe2, 9]));
        let t = n.poll_transmit().expect("queued");
        assert_eq!(t.destination, Destination::Addr(from));
        assert_eq!(t.payload, vec![0xe2, 9]);
    }
}
