//! Friends and messages for `ferry up`: the node's event handler (persists what arrives, resends
//! what is queued) and the control-API operations behind `ferry friend …`, `ferry send`,
//! `ferry messages` and `ferry set …`.
//!
//! # Delivery guarantees
//! * An incoming message is written to the store's inbox journal ([`ferry_store::journal`], one
//!   `write(2)`) inside the node task before the datagrams of the same step (among them
//!   net_crypto's acknowledgement) are sent: what the peer sees as delivered survives `kill -9`.
//!   A committer thread applies it to the history at once (a commit without `fsync`, which
//!   readers see) and makes it durable when messages pause ([`INBOX_SYNC_AFTER`]) or at least
//!   every [`INBOX_SYNC_EVERY`]: the node task never waits for a disk flush (it did, 1–50 ms per
//!   message while a file transfer kept the disk busy; issue 6).
//! * `ferry send` answers only after the outgoing message is committed (`delivered: false`);
//!   it is handed to net_crypto while the commit runs, so the commit's fsync does not delay it.
//!   It is marked delivered (off the node task) when the friend's node acknowledges every packet
//!   of it. Undelivered messages are (re)sent each time the friend comes online, also after a
//!   restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_api::{ApiError, Friend, FriendRequest, Message, SelfInfo};
use ferry_crypto::PublicKey;
use ferry_net::{EventHandler, NodeHandle};
use ferry_proto::node::{Connection, Node, NodeError, NodeEvent};
use ferry_store::{
    Direction, FriendRecord, Journaled, MessageKind, MessageRecord, RequestRecord, Settings, Store,
};
use ferry_wire::toxid::ToxId;
use tokio::sync::Notify;

use crate::profile::{self, Identity};

/// Longest long-poll of `POST /v1/messages/list`, ms.
pub const MAX_WAIT_MS: u64 = 60_000;

/// The inbox committer makes the history durable (one `fsync`) once no incoming message came
/// for this long after the last non-durable commit.
pub const INBOX_SYNC_AFTER: Duration = Duration::from_millis(200);
/// … and at least this often while messages keep coming: the longest a power loss (not a crash
/// of the daemon, which loses nothing journaled) can take back.
pub const INBOX_SYNC_EVERY: Duration = Duration::from_secs(1);
/// Most journaled messages applied in one commit.
pub const INBOX_BATCH: usize = 256;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Outgoing messages handed to net_crypto and waiting for their receipt. `ferry send` hands a
/// message to net_crypto while it is being committed, so a receipt can arrive before the message
/// has its history sequence number: it is kept in `early` until the commit ends. Entries of
/// `committing` and `early` live only for the duration of one `ferry send` call.
#[derive(Debug, Default)]
struct Pending {
    /// (friend, node message id) → history sequence number.
    seqs: HashMap<(PublicKey, u64), u64>,
    /// Handed to net_crypto, commit not finished yet.
    committing: std::collections::HashSet<(PublicKey, u64)>,
    /// Receipts of messages in `committing`.
    early: std::collections::HashSet<(PublicKey, u64)>,
}

/// State shared by the node task's handler and the API.
#[derive(Debug)]
pub struct ChatShared {
    /// The profile database.
    pub store: Arc<Store>,
    profile_dir: PathBuf,
    identity: Mutex<Identity>,
    /// Outgoing messages handed to net_crypto and waiting for their receipt.
    pending: Mutex<Pending>,
    /// Wakes long-polls when history changes.
    changed: Arc<Notify>,
    /// Journaled incoming messages for the inbox committer ([`inbox_committer`]).
    inbox: Mutex<Sender<Journaled>>,
    /// Received custom packets, the last [`MAX_PACKETS`].
    packets: Mutex<(u64, std::collections::VecDeque<ferry_api::ReceivedPacket>)>,
    packets_changed: Notify,
    /// Running file transfers ([`crate::files`]).
    pub(crate) files: Mutex<crate::files::FileState>,
    /// The IP tunnel ([`crate::tunnel`]).
    pub tunnel: crate::tunnel::TunnelShared,
    /// Service node: accept every friend request ([`crate::up::UpOptions::service`]).
    service: std::sync::atomic::AtomicBool,
    /// The DHT value store, names and offline messages ([`crate::data`]), once started.
    pub data: std::sync::OnceLock<Arc<crate::data::DataShared>>,
    /// Channels ([`crate::channel`]), once started: friends' pokes trigger a sync.
    pub channels: std::sync::OnceLock<Arc<crate::channel::ChannelShared>>,
    /// Content publish/fetch ([`crate::content`]), once started.
    pub content: std::sync::OnceLock<Arc<crate::content::ContentShared>>,
    /// Live streams ([`crate::stream`]), once started.
    pub stream: std::sync::OnceLock<Arc<crate::stream::StreamShared>>,
    /// Replication of pinned content ([`crate::replica`]), once started.
    pub replica: std::sync::OnceLock<Arc<crate::replica::ReplicaShared>>,
}

/// The friend request message a node sends a service node it befriends by key
/// ([`ChatShared::ensure_service_friend`]).
pub const SERVICE_REQUEST_MESSAGE: &[u8] = b"ferry tunnel";

/// Received custom packets kept for `POST /v1/packets/list`.
pub const MAX_PACKETS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: 500,
        message: e.to_string(),
    }
}

fn node_err(e: NodeError) -> ApiError {
    match e {
        NodeError::NotFriend => ApiError::not_found(e.to_string()),
        NodeError::AlreadyFriend => ApiError::conflict(e.to_string()),
        NodeError::Congested(_) => ApiError::unavailable(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

fn stopped(e: ferry_net::NetError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

impl ChatShared {
    /// Opens the store of the profile at `profile_dir`.
    ///
    /// # Errors
    /// The store cannot be opened (e.g. another daemon holds it).
    pub fn open(profile_dir: PathBuf, identity: Identity) -> anyhow::Result<Arc<Self>> {
        let store = Store::open(&profile_dir.join("ferry.redb"))
            .map_err(|e| anyhow::anyhow!("opening {}/ferry.redb: {e}", profile_dir.display()))?;
        let store = Arc::new(store);
        let changed = Arc::new(Notify::new());
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let (store, changed) = (Arc::clone(&store), Arc::clone(&changed));
            std::thread::Builder::new()
                .name("inbox-commit".into())
                .spawn(move || inbox_committer(&store, &changed, &rx))?;
        }
        Ok(Arc::new(Self {
            store,
            profile_dir,
            identity: Mutex::new(identity),
            pending: Mutex::new(Pending::default()),
            changed,
            inbox: Mutex::new(tx),
            packets: Mutex::new((0, std::collections::VecDeque::new())),
            packets_changed: Notify::new(),
            files: Mutex::new(crate::files::FileState::default()),
            tunnel: crate::tunnel::TunnelShared::default(),
            service: std::sync::atomic::AtomicBool::new(false),
            data: std::sync::OnceLock::new(),
            channels: std::sync::OnceLock::new(),
            content: std::sync::OnceLock::new(),
            stream: std::sync::OnceLock::new(),
            replica: std::sync::OnceLock::new(),
        }))
    }

    /// Turns service mode on or off: every friend request is accepted (relays and exits serve
    /// whoever befriends them by [`ferry_tunnel::service_tox_id`]).
    pub fn set_service(&self, on: bool) {
        self.service.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this node runs as a service node.
    pub fn is_service(&self) -> bool {
        self.service.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes `peer` a friend if it is not one yet, by its service Tox ID
    /// ([`ferry_tunnel::service_tox_id`]): how a tunnel client reaches an exit, or a relay its
    /// next hop, from the public key alone. The session comes up once the peer (a service node)
    /// accepts, usually within seconds.
    ///
    /// # Errors
    /// 503 when the node stopped; 400 for our own key; 507 when the friend list is full.
    pub async fn ensure_service_friend(
        &self,
        node: &NodeHandle,
        peer: PublicKey,
    ) -> Result<(), ApiError> {
        let id = ferry_tunnel::service_tox_id(&peer);
        let added = node
            .call(move |n, now| {
                if n.friends().iter().any(|f| f.public_key == peer) {
                    return Ok(false);
                }
                n.add_friend(now, &id, SERVICE_REQUEST_MESSAGE)
                    .map(|_| true)
            })
            .await
            .map_err(stopped)?
            .map_err(node_err)?;
        if added {
            self.store
                .put_friend(&FriendRecord {
                    public_key: peer.to_hex(),
                    name: String::new(),
                    status_message: String::new(),
                    request: Some((
                        id.nospam_value(),
                        String::from_utf8_lossy(SERVICE_REQUEST_MESSAGE).into_owned(),
                    )),
                    added_ms: now_ms(),
                    last_seen_ms: 0,
                })
                .map_err(internal)?;
        }
        Ok(())
    }

    /// [`ChatShared::ensure_service_friend`], then waits up to `timeout` for the peer to be
    /// online (a tunnel exit or first relay befriended by key).
    ///
    /// # Errors
    /// As [`ChatShared::ensure_service_friend`]; 504 when the peer is not online in time.
    pub async fn ensure_service_friend_online(
        &self,
        node: &NodeHandle,
        peer: PublicKey,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.ensure_service_friend(node, peer).await?;
        let start = Instant::now();
        loop {
            let online = node
                .call(move |n, _| {
                    n.friends()
                        .iter()
                        .any(|f| f.public_key == peer && f.connection != Connection::None)
                })
                .await
                .map_err(stopped)?;
            if online {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(ApiError {
                    status: 504,
                    message: format!(
                        "{peer} is not online after {timeout:?} (is it a service node: \
                         `ferry up --relay-node` or `--exit-node`?)"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Restores the node from the store: friends (with their pending requests), name, status
    /// message. Called once after the node starts.
    ///
    /// # Errors
    /// Store failures.
    pub async fn restore(self: &Arc<Self>, node: &NodeHandle) -> anyhow::Result<()> {
        self.files_restore();
        let friends = self.store.friends()?;
        let settings = self.store.settings()?;
        node.call(move |n, now| {
            let _ = n.set_name(now, settings.name.as_bytes());
            let _ = n.set_status_message(now, settings.status_message.as_bytes());
            for f in friends {
                let Ok(pk) = PublicKey::from_hex(&f.public_key) else {
                    continue;
                };
                let r = match &f.request {
                    Some((nospam, msg)) => {
                        n.add_friend(now, &ToxId::new(pk, *nospam), msg.as_bytes())
                    }
                    None => n.add_friend_norequest(now, pk),
                };
                if let Err(e) = r {
                    tracing::warn!(friend = %f.public_key, error = %e, "cannot restore friend");
                }
            }
        })
        .await?;
        Ok(())
    }

    /// The profile directory.
    pub fn profile_dir(&self) -> &std::path::Path {
        &self.profile_dir
    }

    /// Resolves a friend as `ferry send` does (key, key prefix, name).
    pub(crate) fn resolve_friend(&self, friend: &str) -> Result<PublicKey, ApiError> {
        self.resolve(friend)
    }

    /// A friend request (from the onion, or from the request mailbox, [`crate::data`]):
    /// accepted at once in service or auto-accept mode, else stored for `ferry friend requests`.
    pub(crate) fn on_friend_request(
        &self,
        node: &mut Node,
        now: Instant,
        public_key: PublicKey,
        message: &[u8],
    ) {
        let s = self;
        let text = String::from_utf8_lossy(message).into_owned();
        let auto = s.is_service() || s.store.settings().map(|x| x.auto_accept).unwrap_or(false);
        tracing::info!(from = %public_key, auto, "friend request");
        if auto {
            if node.add_friend_norequest(now, public_key).is_ok() {
                let _ = s.store.put_friend(&FriendRecord {
                    public_key: public_key.to_hex(),
                    name: String::new(),
                    status_message: String::new(),
                    request: None,
                    added_ms: now_ms(),
                    last_seen_ms: 0,
                });
            }
        } else if let Err(e) = s.store.put_request(&RequestRecord {
            public_key: public_key.to_hex(),
            message: text,
            time_ms: now_ms(),
        }) {
            tracing::error!(error = %e, "storing friend request");
        }
    }

    /// Our nospam now.
    pub(crate) fn nospam(&self) -> u32 {
        lock(&self.identity).nospam
    }

    /// Whether `pk` is a friend (or a pending outgoing request).
    pub(crate) fn is_friend(&self, pk: &PublicKey) -> bool {
        let hex = pk.to_hex();
        self.store
            .friends()
            .is_ok_and(|fs| fs.iter().any(|f| f.public_key == hex))
    }

    /// Stores a message that arrived as offline mail ([`crate::data`]).
    pub(crate) fn deliver_offline(&self, pk: &PublicKey, action: bool, text: &str, time_ms: u64) {
        let rec = MessageRecord {
            friend: pk.to_hex(),
            direction: Direction::In,
            kind: if action {
                MessageKind::Action
            } else {
                MessageKind::Normal
            },
            text: text.to_string(),
            time_ms,
            delivered: true,
        };
        if let Err(e) = self.append(&rec) {
            tracing::error!(error = %e.message, "storing offline message");
        }
    }

    /// Marks outgoing history message `seq` delivered (an offline-mail receipt).
    pub(crate) fn mark_delivered_seq(&self, seq: u64) {
        if let Err(e) = self.store.mark_delivered(seq) {
            tracing::error!(error = %e, "storing receipt");
        }
        self.changed.notify_waiters();
    }

    /// An incoming message, in the node task: journaled before net_crypto acknowledges it, then
    /// handed to the inbox committer (committed here, durably, when the journal or the committer
    /// fails). `journal_us` is how long the node task waited.
    fn receive(&self, rec: &MessageRecord) {
        let t0 = Instant::now();
        match self.store.journal_message(rec) {
            Ok(j) => {
                tracing::debug!(
                    journal_id = j.id,
                    journal_us = t0.elapsed().as_micros() as u64,
                    "incoming message journaled"
                );
                if let Err(e) = lock(&self.inbox).send(j) {
                    match self
                        .store
                        .commit_journaled(std::slice::from_ref(&e.0), true)
                    {
                        Ok(_) => self.changed.notify_waiters(),
                        Err(e) => tracing::error!(error = %e, "storing message"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "inbox journal; committing the message directly");
                if let Err(e) = self.append(rec) {
                    tracing::error!(error = %e.message, "storing message");
                }
            }
        }
    }

    fn append(&self, m: &MessageRecord) -> Result<u64, ApiError> {
        let seq = self.store.append_message(m).map_err(internal)?;
        self.changed.notify_waiters();
        Ok(seq)
    }

    /// Resolves `friend` (64-hex key, unique key prefix of ≥ 8 hex digits, or exact name) to a
    /// friend's key.
    fn resolve(&self, friend: &str) -> Result<PublicKey, ApiError> {
        if let Ok(pk) = PublicKey::from_hex(friend) {
            return Ok(pk);
        }
        let friends = self.store.friends().map_err(internal)?;
        let by_name: Vec<&FriendRecord> = friends.iter().filter(|f| f.name == friend).collect();
        let by_prefix: Vec<&FriendRecord> = if friend.len() >= 8 {
            friends
                .iter()
                .filter(|f| {
                    f.public_key
                        .to_ascii_lowercase()
                        .starts_with(&friend.to_ascii_lowercase())
                })
                .collect()
        } else {
            Vec::new()
        };
        let hits = if by_name.is_empty() {
            by_prefix
        } else {
            by_name
        };
        match hits.as_slice() {
            [f] => PublicKey::from_hex(&f.public_key).map_err(internal),
            [] => Err(ApiError::not_found(format!("no friend named {friend:?}"))),
            _ => Err(ApiError::bad_request(format!(
                "{friend:?} names several friends; use the public key"
            ))),
        }
    }

    /// `GET /v1/self`.
    pub fn self_info(&self) -> Result<SelfInfo, ApiError> {
        let s = self.store.settings().map_err(internal)?;
        let id = lock(&self.identity).clone();
        Ok(SelfInfo {
            public_key: id.public_key().to_hex(),
            tox_id: id.tox_id().to_string(),
            nospam: format!("{:08X}", id.nospam),
            name: s.name,
            status_message: s.status_message,
            auto_accept: s.auto_accept,
            auto_accept_files: s.auto_accept_files.filter(|d| !d.is_empty()),
        })
    }

    /// `POST /v1/self`.
    pub async fn set_self(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::SelfUpdate,
    ) -> Result<SelfInfo, ApiError> {
        let mut s: Settings = self.store.settings().map_err(internal)?;
        if let Some(name) = req.name {
            let bytes = name.clone().into_bytes();
            node.call(move |n, now| n.set_name(now, &bytes))
                .await
                .map_err(stopped)?
                .map_err(node_err)?;
            s.name = name;
        }
        if let Some(text) = req.status_message {
            let bytes = text.clone().into_bytes();
            node.call(move |n, now| n.set_status_message(now, &bytes))
                .await
                .map_err(stopped)?
                .map_err(node_err)?;
            s.status_message = text;
        }
        if let Some(a) = req.auto_accept {
            s.auto_accept = a;
        }
        if let Some(d) = req.auto_accept_files {
            s.auto_accept_files = if d.is_empty() {
                None
            } else {
                let p = PathBuf::from(&d);
                std::fs::create_dir_all(&p)
                    .map_err(|e| ApiError::bad_request(format!("{d}: {e}")))?;
                Some(
                    p.canonicalize()
                        .map_or(d, |p| p.to_string_lossy().into_owned()),
                )
            };
        }
        self.store.set_settings(&s).map_err(internal)?;
        if let Some(hex) = req.nospam {
            let nospam = if hex == "random" {
                let seed = ferry_crypto::rng::os_seed().map_err(internal)?;
                u32::from_be_bytes(ferry_crypto::rng::FerryRng::from_seed(seed).bytes())
            } else {
                let b: [u8; 4] = ferry_crypto::decode_hex_array(&hex)
                    .map_err(|e| ApiError::bad_request(format!("nospam: {e}")))?;
                u32::from_be_bytes(b)
            };
            let id = {
                let mut id = lock(&self.identity);
                id.nospam = nospam;
                id.clone()
            };
            profile::save(&self.profile_dir, &id).map_err(internal)?;
            node.call(move |n, _| n.set_nospam(nospam))
                .await
                .map_err(stopped)?;
        }
        self.self_info()
    }

    /// `GET /v1/friends`.
    pub async fn friends(&self, node: &NodeHandle) -> Result<Vec<Friend>, ApiError> {
        let live = node.call(|n, _| n.friends()).await.map_err(stopped)?;
        let stored: HashMap<String, FriendRecord> = self
            .store
            .friends()
            .map_err(internal)?
            .into_iter()
            .map(|f| (f.public_key.clone(), f))
            .collect();
        Ok(live
            .into_iter()
            .map(|f| {
                let key = f.public_key.to_hex();
                let rec = stored.get(&key);
                Friend {
                    name: if f.name.is_empty() {
                        rec.map(|r| r.name.clone()).unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(&f.name).into_owned()
                    },
                    status_message: if f.status_message.is_empty() {
                        rec.map(|r| r.status_message.clone()).unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(&f.status_message).into_owned()
                    },
                    connection: f.connection.as_str().to_string(),
                    relay: f.relay.map(|(pk, addr)| crate::up::format_relay(addr, &pk)),
                    request_pending: f.request_pending,
                    last_seen_ms: if f.connection == Connection::None {
                        rec.map_or(0, |r| r.last_seen_ms)
                    } else {
                        now_ms()
                    },
                    public_key: key,
                }
            })
            .collect())
    }

    fn friend_json(pk: &PublicKey, pending: bool) -> Friend {
        Friend {
            public_key: pk.to_hex(),
            name: String::new(),
            status_message: String::new(),
            connection: "none".into(),
            relay: None,
            request_pending: pending,
            last_seen_ms: 0,
        }
    }

    /// `POST /v1/friends/add`.
    pub async fn add_friend(
        &self,
        node: &NodeHandle,
        req: ferry_api::AddFriend,
    ) -> Result<Friend, ApiError> {
        // A bare public key (64 hex digits) names a service node (relay or exit), whose Tox ID
        // follows from its key.
        let id: ToxId = if req.tox_id.len() == 64 {
            let pk = PublicKey::from_hex(&req.tox_id)
                .map_err(|e| ApiError::bad_request(format!("bad public key: {e}")))?;
            ferry_tunnel::service_tox_id(&pk)
        } else {
            req.tox_id
                .parse()
                .map_err(|e| ApiError::bad_request(format!("bad Tox ID: {e}")))?
        };
        let msg = req.message.clone().into_bytes();
        node.call(move |n, now| n.add_friend(now, &id, &msg))
            .await
            .map_err(stopped)?
            .map_err(node_err)?;
        self.store
            .put_friend(&FriendRecord {
                public_key: id.public_key.to_hex(),
                name: String::new(),
                status_message: String::new(),
                request: Some((id.nospam_value(), req.message.clone())),
                added_ms: now_ms(),
                last_seen_ms: 0,
            })
            .map_err(internal)?;
        let _ = self.store.take_request(&id.public_key);
        if let Some(d) = self.data.get() {
            // Also leave the request in the recipient's request mailbox, for when it is offline.
            let (pk, nospam, msg) = (id.public_key, id.nospam_value(), req.message.into_bytes());
            let d = Arc::clone(d);
            let _ = node
                .call(move |n, now| d.mail_request(n, now, pk, nospam, &msg))
                .await;
        }
        Ok(Self::friend_json(&id.public_key, true))
    }

    /// `GET /v1/friends/requests`.
    pub fn requests(&self) -> Result<Vec<FriendRequest>, ApiError> {
        Ok(self
            .store
            .requests()
            .map_err(internal)?
            .into_iter()
            .map(|r| FriendRequest {
                public_key: r.public_key,
                message: r.message,
                time_ms: r.time_ms,
            })
            .collect())
    }

    /// `POST /v1/friends/accept`.
    pub async fn accept(&self, node: &NodeHandle, key: &str) -> Result<Friend, ApiError> {
        let pk = PublicKey::from_hex(key)
            .map_err(|e| ApiError::bad_request(format!("bad public key: {e}")))?;
        node.call(move |n, now| n.add_friend_norequest(now, pk))
            .await
            .map_err(stopped)?
            .map_err(node_err)?;
        self.store.take_request(&pk).map_err(internal)?;
        self.store
            .put_friend(&FriendRecord {
                public_key: pk.to_hex(),
                name: String::new(),
                status_message: String::new(),
                request: None,
                added_ms: now_ms(),
                last_seen_ms: 0,
            })
            .map_err(internal)?;
        Ok(Self::friend_json(&pk, false))
    }

    /// `POST /v1/friends/reject`.
    pub fn reject(&self, key: &str) -> Result<(), ApiError> {
        let pk = PublicKey::from_hex(key)
            .map_err(|e| ApiError::bad_request(format!("bad public key: {e}")))?;
        match self.store.take_request(&pk).map_err(internal)? {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found("no friend request from that key")),
        }
    }

    /// `POST /v1/friends/remove`.
    pub async fn remove(&self, node: &NodeHandle, friend: &str) -> Result<(), ApiError> {
        let pk = self.resolve(friend)?;
        let r = node
            .call(move |n, now| n.remove_friend(now, &pk))
            .await
            .map_err(stopped)?;
        let existed = self.store.remove_friend(&pk).map_err(internal)?;
        match r {
            Ok(()) => Ok(()),
            Err(_) if existed => Ok(()),
            Err(e) => Err(node_err(e)),
        }
    }

    /// `POST /v1/friends/packet`.
    pub async fn custom_packet(
        &self,
        node: &NodeHandle,
        req: ferry_api::CustomPacket,
    ) -> Result<(), ApiError> {
        let pk = self.resolve(&req.friend)?;
        let data = hex::decode(req.data_hex.trim())
            .map_err(|e| ApiError::bad_request(format!("packet hex: {e}")))?;
        node.call(move |n, now| n.send_custom(now, &pk, &data))
            .await
            .map_err(stopped)?
            .map_err(node_err)
    }

    /// `POST /v1/friends/typing`.
    pub async fn typing(&self, node: &NodeHandle, req: ferry_api::Typing) -> Result<(), ApiError> {
        let pk = self.resolve(&req.friend)?;
        let typing = req.typing;
        let r = node
            .call(move |n, now| n.set_typing(now, &pk, typing))
            .await
            .map_err(stopped)?;
        match r {
            Ok(()) | Err(NodeError::NotOnline) => Ok(()),
            Err(e) => Err(node_err(e)),
        }
    }

    /// `POST /v1/messages/send`: commit, then hand to the node (queued if the friend is
    /// offline).
    pub async fn send(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::SendMessage,
    ) -> Result<Message, ApiError> {
        let pk = self.resolve(&req.friend)?;
        let kind = match req.kind.as_str() {
            "normal" | "" => MessageKind::Normal,
            "action" => MessageKind::Action,
            other => {
                return Err(ApiError::bad_request(format!(
                    "kind must be \"normal\" or \"action\", not {other:?}"
                )));
            }
        };
        if req.text.is_empty() {
            return Err(ApiError::bad_request("empty message"));
        }
        let is_friend = self
            .store
            .friends()
            .map_err(internal)?
            .iter()
            .any(|f| f.public_key == pk.to_hex());
        if !is_friend {
            return Err(ApiError::not_found("not a friend"));
        }
        let rec = MessageRecord {
            friend: pk.to_hex(),
            direction: Direction::Out,
            kind,
            text: req.text,
            time_ms: now_ms(),
            delivered: false,
        };
        // The message goes to net_crypto while it is committed (the fsync waits for whatever
        // else the disk is writing, e.g. a file being received: 1-70 ms on this project's VM),
        // and the call answers once both are done.
        let t0 = Instant::now();
        let shared = Arc::clone(self);
        let (text, action) = (rec.text.clone(), kind == MessageKind::Action);
        let handoff = node.call(move |n, now| {
            tracing::debug!(
                wait_us = t0.elapsed().as_micros() as u64,
                "outgoing message queued"
            );
            match n.send_message(now, &pk, action, &text) {
                Ok(id) => {
                    lock(&shared.pending).committing.insert((pk, id));
                    (Some(id), false)
                }
                Err(NodeError::NotOnline) => (None, true),
                Err(e) => {
                    // Stays undelivered in the store: resent when the friend comes online.
                    tracing::warn!(error = %e, "message queued");
                    (None, false)
                }
            }
        });
        let store = Arc::clone(self);
        let commit_rec = rec.clone();
        let commit = tokio::task::spawn_blocking(move || store.append(&commit_rec));
        let (sent, committed) = tokio::join!(handoff, commit);
        let (sent, offline) = sent.map_err(stopped)?;
        let committed = committed.map_err(internal).and_then(|r| r);
        let seq = {
            let mut p = lock(&self.pending);
            // Not in `committing` any more: the session dropped meanwhile, the message stays
            // undelivered and is resent like the others.
            let live = sent.filter(|id| p.committing.remove(&(pk, *id)));
            let early = live.is_some_and(|id| p.early.remove(&(pk, id)));
            let seq = committed?;
            match live {
                Some(_) if early => {
                    drop(p);
                    self.mark_delivered_seq(seq);
                }
                Some(id) => {
                    p.seqs.insert((pk, id), seq);
                }
                None => {}
            }
            seq
        };
        tracing::debug!(
            seq,
            commit_us = t0.elapsed().as_micros() as u64,
            "outgoing message stored"
        );
        if offline {
            // Not online: the friend's mailbox (ferry friends) or the resend when it is back.
            let shared = Arc::clone(self);
            let (text, action) = (rec.text.clone(), kind == MessageKind::Action);
            node.call(move |n, now| {
                if let Some(d) = shared.data.get() {
                    d.mail_out(n, now, pk, seq, action, &text);
                }
            })
            .await
            .map_err(stopped)?;
        }
        Ok(to_api(seq, rec))
    }

    /// Inside the node task: hand one stored message to the node, remembering its id.
    /// Returns `false` when the friend is offline.
    fn send_now(
        &self,
        n: &mut Node,
        now: Instant,
        pk: PublicKey,
        seq: u64,
        action: bool,
        text: &str,
    ) -> bool {
        match n.send_message(now, &pk, action, text) {
            Ok(id) => {
                lock(&self.pending).seqs.insert((pk, id), seq);
            }
            Err(NodeError::NotOnline) => return false,
            Err(e) => tracing::warn!(error = %e, "message queued"),
        }
        true
    }

    /// `POST /v1/messages/list` (long-polls up to `wait_ms` while nothing matches).
    pub async fn list(&self, req: ferry_api::ListMessages) -> Result<Vec<Message>, ApiError> {
        let friend = match &req.friend {
            Some(f) => Some(self.resolve(f)?.to_hex()),
            None => None,
        };
        let limit = req.limit.unwrap_or(1000).clamp(1, 10_000);
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS));
        loop {
            let notified = self.changed.notified();
            let rows = self
                .store
                .messages(friend.as_deref(), req.after, limit)
                .map_err(internal)?;
            if !rows.is_empty() || Instant::now() >= deadline {
                let data = self.data.get();
                return Ok(rows
                    .into_iter()
                    .map(|(s, m)| {
                        let mut msg = to_api(s, m);
                        msg.mailed = msg.direction == "out"
                            && !msg.delivered
                            && data.is_some_and(|d| d.is_mailed(s));
                        msg
                    })
                    .collect());
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// `POST /v1/packets/list` (long-polls up to `wait_ms` while nothing matches).
    pub async fn packets(
        &self,
        req: ferry_api::ListPackets,
    ) -> Result<Vec<ferry_api::ReceivedPacket>, ApiError> {
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms.min(MAX_WAIT_MS));
        loop {
            let notified = self.packets_changed.notified();
            let rows: Vec<ferry_api::ReceivedPacket> = lock(&self.packets)
                .1
                .iter()
                .filter(|p| p.seq > req.after)
                .cloned()
                .collect();
            if !rows.is_empty() || Instant::now() >= deadline {
                return Ok(rows);
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    fn update_friend(&self, pk: &PublicKey, f: impl FnOnce(&mut FriendRecord)) {
        let Ok(all) = self.store.friends() else {
            return;
        };
        if let Some(mut rec) = all.into_iter().find(|r| r.public_key == pk.to_hex()) {
            f(&mut rec);
            if let Err(e) = self.store.put_friend(&rec) {
                tracing::error!(error = %e, "storing friend");
            }
        }
    }
}

fn to_api(seq: u64, m: MessageRecord) -> Message {
    Message {
        friend: m.friend,
        direction: match m.direction {
            Direction::In => "in",
            Direction::Out => "out",
        }
        .into(),
        kind: match m.kind {
            MessageKind::Normal => "normal",
            MessageKind::Action => "action",
        }
        .into(),
        text: m.text,
        time_ms: m.time_ms,
        seq,
        delivered: m.delivered,
        mailed: false,
    }
}

/// The inbox committer's thread ([`ChatShared::open`]): applies journaled incoming messages to
/// the history in batches of up to [`INBOX_BATCH`], each one commit without `fsync` (readers see
/// it at once), wakes the long-polls, and makes everything durable after a pause of
/// [`INBOX_SYNC_AFTER`] or every [`INBOX_SYNC_EVERY`] (see the module docs). A batch whose commit
/// fails is retried with the next one (the journal keeps it meanwhile). Ends, after a last
/// durable commit, when the [`ChatShared`] is dropped.
fn inbox_committer(store: &Store, changed: &Notify, rx: &Receiver<Journaled>) {
    let mut unsynced: Option<Instant> = None;
    let mut batch: Vec<Journaled> = Vec::new();
    let sync = |unsynced: &mut Option<Instant>| {
        let t0 = Instant::now();
        match store.sync_journal() {
            Ok(()) => {
                *unsynced = None;
                tracing::debug!(sync_us = t0.elapsed().as_micros() as u64, "inbox synced");
            }
            Err(e) => tracing::error!(error = %e, "syncing the message history"),
        }
    };
    loop {
        let next = if unsynced.is_some() || !batch.is_empty() {
            match rx.recv_timeout(INBOX_SYNC_AFTER) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            }
        };
        match next {
            Some(j) => batch.push(j),
            None if batch.is_empty() => {
                sync(&mut unsynced);
                continue;
            }
            // A failed batch: retried below.
            None => {}
        }
        while batch.len() < INBOX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let t0 = Instant::now();
        match store.commit_journaled(&batch, false) {
            Ok(seqs) => {
                tracing::debug!(
                    messages = seqs.len(),
                    last_seq = seqs.last().copied().unwrap_or(0),
                    commit_us = t0.elapsed().as_micros() as u64,
                    "incoming message stored"
                );
                batch.clear();
                changed.notify_waiters();
                let since = *unsynced.get_or_insert_with(Instant::now);
                if since.elapsed() >= INBOX_SYNC_EVERY {
                    sync(&mut unsynced);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = batch.len(), "storing messages; retrying");
                std::thread::sleep(INBOX_SYNC_AFTER);
            }
        }
    }
    if !batch.is_empty() && store.commit_journaled(&batch, true).is_ok() {
        changed.notify_waiters();
    }
    sync(&mut unsynced);
}

/// The node task's event handler: persists and reacts.
#[derive(Debug)]
pub struct ChatHandler(pub Arc<ChatShared>);

impl EventHandler for ChatHandler {
    fn on_flush(&mut self) {
        self.0.tunnel.flush_inbound();
    }

    fn on_event(&mut self, node: &mut Node, now: Instant, event: NodeEvent) {
        let s = &self.0;
        match event {
            NodeEvent::FriendRequest {
                public_key,
                message,
            } => s.on_friend_request(node, now, public_key, &message),
            NodeEvent::FriendPath {
                public_key,
                connection,
                relay,
            } => {
                tracing::info!(
                    friend = %public_key,
                    connection = connection.as_str(),
                    relay = ?relay.map(|(k, a)| crate::up::format_relay(a, &k)),
                    "friend path"
                );
            }
            NodeEvent::FriendConnection {
                public_key,
                connection,
            } => {
                tracing::info!(friend = %public_key, connection = connection.as_str(), "friend connection");
                s.update_friend(&public_key, |r| {
                    r.last_seen_ms = now_ms();
                    r.request = None;
                });
                s.tunnel
                    .market
                    .peer_connection(&public_key, connection != Connection::None);
                if let Some(c) = s.content.get() {
                    c.peer_connection(node, now, public_key, connection != Connection::None);
                }
                if let Some(c) = s.stream.get() {
                    c.peer_connection(node, now, public_key, connection != Connection::None);
                }
                if let Some(r) = s.replica.get() {
                    r.peer_connection(node, now, public_key, connection != Connection::None);
                }
                if connection == Connection::None {
                    {
                        let mut p = lock(&s.pending);
                        p.seqs.retain(|(k, _), _| *k != public_key);
                        // A message whose commit is still running stays undelivered in the
                        // store and is resent (or mailed) like the others.
                        p.committing.retain(|(k, _)| *k != public_key);
                        p.early.retain(|(k, _)| *k != public_key);
                    }
                    s.tunnel.circuits.peer_gone(node, now, public_key);
                    s.tunnel.tap.peer_gone(&public_key);
                    // Messages handed to net_crypto but never receipted went down with the
                    // session: seal them into the friend's mailbox (a ferry friend's node reads
                    // them when it is back; the mailbox's high-water mark keeps them once).
                    if let Some(d) = s.data.get() {
                        let hex = public_key.to_hex();
                        for (seq, m) in s.store.undelivered().unwrap_or_default() {
                            if m.friend == hex && !d.is_mailed(seq) {
                                d.mail_out(
                                    node,
                                    now,
                                    public_key,
                                    seq,
                                    m.kind == MessageKind::Action,
                                    &m.text,
                                );
                            }
                        }
                    }
                } else {
                    s.tunnel.circuits.peer_online(node, now);
                    s.tunnel.tap.peer_online(node, now, public_key);
                    s.files_friend_online(node, now, public_key);
                    let queued = s.store.undelivered().unwrap_or_default();
                    let hex = public_key.to_hex();
                    let data = s.data.get();
                    if let Some(d) = data {
                        d.friend_online(node, now, public_key);
                    }
                    // Mailed messages are resent by the data layer (exactly once).
                    for (seq, m) in queued.into_iter().filter(|(seq, m)| {
                        m.friend == hex && !data.is_some_and(|d| d.is_mailed(*seq))
                    }) {
                        s.send_now(
                            node,
                            now,
                            public_key,
                            seq,
                            m.kind == MessageKind::Action,
                            &m.text,
                        );
                    }
                }
            }
            NodeEvent::Message {
                public_key,
                action,
                text,
            } => {
                let rec = MessageRecord {
                    friend: public_key.to_hex(),
                    direction: Direction::In,
                    kind: if action {
                        MessageKind::Action
                    } else {
                        MessageKind::Normal
                    },
                    text: String::from_utf8_lossy(&text).into_owned(),
                    time_ms: now_ms(),
                    delivered: true,
                };
                s.receive(&rec);
            }
            NodeEvent::Receipt {
                public_key,
                message_id,
            } => {
                let seq = {
                    let mut p = lock(&s.pending);
                    let key = (public_key, message_id);
                    let seq = p.seqs.remove(&key);
                    if seq.is_none() && p.committing.contains(&key) {
                        p.early.insert(key);
                    }
                    seq
                };
                if let Some(seq) = seq {
                    // Off the node task, whose thread must not wait for the fsync. A receipt
                    // lost in a crash during those few ms means the message is sent once more
                    // after the restart.
                    match tokio::runtime::Handle::try_current() {
                        Ok(rt) => {
                            let shared = Arc::clone(s);
                            rt.spawn_blocking(move || shared.mark_delivered_seq(seq));
                        }
                        Err(_) => s.mark_delivered_seq(seq),
                    }
                }
            }
            NodeEvent::FriendName { public_key, name } => {
                let name = String::from_utf8_lossy(&name).into_owned();
                s.update_friend(&public_key, |r| r.name = name);
            }
            NodeEvent::FriendStatusMessage { public_key, text } => {
                let text = String::from_utf8_lossy(&text).into_owned();
                s.update_friend(&public_key, |r| r.status_message = text);
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: false,
                data,
            } if data.first() == Some(&ferry_tunnel::TUNNEL_PACKET_ID) => {
                s.tunnel.on_packet(&public_key, &data);
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: false,
                data,
            } if data.first() == Some(&ferry_tunnel::tap::TAP_PACKET_ID) => {
                s.tunnel.tap.on_packet(node, now, public_key, &data);
            }
            NodeEvent::CustomPacket {
                public_key, data, ..
            } if crate::circuit::is_circuit_packet(data.first()) => {
                s.tunnel.on_circuit_cell(node, now, public_key, data);
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&ferry_market::MARKET_PACKET_ID)
                && s.tunnel.market.is_on() =>
            {
                s.tunnel.market.on_packet(&public_key, &data);
                s.tunnel.market.flush(node, now);
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&ferry_tunnel::exit::EXIT_CONTROL_PACKET_ID) => {
                crate::exit::on_control(&s.tunnel, node, now, &public_key, &data);
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&crate::data::MAIL_PACKET_ID) && s.data.get().is_some() => {
                if let Some(d) = s.data.get() {
                    d.on_control(s, node, now, public_key, &data);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&crate::channel::POKE_PACKET_ID)
                && s.channels.get().is_some() =>
            {
                if let Some(c) = s.channels.get() {
                    c.on_poke(&public_key, &data);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if ferry_content::wire::ContentPacket::is_content(data.first())
                && s.content.get().is_some() =>
            {
                if let Some(c) = s.content.get()
                    && let Some(blob) = c.on_packet(node, now, public_key, &data)
                    && let Some(r) = s.replica.get()
                {
                    r.on_download(node, now, public_key, blob);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&ferry_content::credit::RECEIPT_PACKET_ID)
                && s.content.get().is_some() =>
            {
                if let Some(c) = s.content.get() {
                    c.on_receipt(public_key, &data);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&crate::stream::STREAM_PACKET_ID)
                && s.stream.get().is_some() =>
            {
                if let Some(c) = s.stream.get() {
                    c.on_packet(node, now, public_key, &data);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless: true,
                data,
            } if data.first() == Some(&crate::replica::REPLICA_PACKET_ID)
                && s.replica.get().is_some() =>
            {
                if let Some(r) = s.replica.get() {
                    r.on_packet(node, now, public_key, &data);
                }
            }
            NodeEvent::UnknownPeer {
                public_key,
                dht_pk,
                addr,
            } => {
                if let Some(c) = s.content.get() {
                    c.on_unknown_peer(node, now, public_key, dht_pk, addr);
                }
                if let Some(c) = s.stream.get() {
                    c.on_unknown_peer(node, now, public_key, dht_pk, addr);
                }
                if let Some(r) = s.replica.get() {
                    r.on_unknown_peer(node, now, public_key, dht_pk, addr);
                }
            }
            NodeEvent::CustomPacket {
                public_key,
                lossless,
                data,
            } => {
                {
                    let mut p = lock(&s.packets);
                    p.0 += 1;
                    let seq = p.0;
                    if p.1.len() >= MAX_PACKETS {
                        p.1.pop_front();
                    }
                    p.1.push_back(ferry_api::ReceivedPacket {
                        friend: public_key.to_hex(),
                        lossless,
                        data_hex: hex::encode(&data),
                        seq,
                    });
                }
                s.packets_changed.notify_waiters();
            }
            NodeEvent::ExtensionDatagram { from, data } => {
                if let Some(d) = s.data.get() {
                    d.on_datagram(s, node, now, from, &data);
                }
            }
            NodeEvent::File(e) => s.on_file_event(node, now, e),
            NodeEvent::SelfConnection(c) => tracing::info!(connected = c, "onion connection"),
            _ => {}
        }
    }
}
