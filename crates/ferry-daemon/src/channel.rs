//! Channels in `ferry up` (issue 10 item 3): the daemon's host for the sans-IO
//! [`ferry_data::channel`] module, over the DHT value store ([`crate::data`]).
//!
//! * Everything a channel is lives in the value store (layout in [`ferry_data::channel`]): the
//!   founder-signed state, roster pages and members' key bundles, each author's head, and the
//!   posts as immutable items. This node re-puts what it published (state, roster, bundles, its
//!   head and its newest [`OWNED_POSTS`] posts per channel) through the data layer's owned items,
//!   so they outlive holders' lifetimes; older posts expire from the store (≤ 2 h without a
//!   re-put) but stay in the readers' local history.
//! * Delivery is by polling: every [`SYNC_INTERVAL`] (and on `ferry channel read`) a node fetches
//!   the state, its key bundle, the roster and every author's head, then the posts it lacks,
//!   walking each author's `prev` chain, at most [`MAX_HISTORY`] posts per channel. A member that
//!   was offline catches up on its next sync. Live push is a poke: after a post, the author sends
//!   `[`[`POKE_PACKET_ID`]`][channel id 32]` (lossless custom packet) to its online friends that
//!   are known members (private channel) or to all its online friends (public channel); a friend
//!   that joined the channel syncs it at once (at most one queued sync per channel).
//! * Private channels: `join` seals a join request ([`JoinRequest`]) to the founder's box key in
//!   the channel's join mailbox ([`join_mailbox`], a mail target of the value store); the founder
//!   collects it on its syncs and lists it under `members` as `pending`; `approve` issues the
//!   membership certificate, adds the member to the roster and seals the epoch keys to it;
//!   `remove` rotates the epoch key and re-seals it to the remaining members. Only the founder
//!   approves and removes in this version (other admins would need a shared roster).
//! * Joined channels, keys, our posts' chain and the history are kept in
//!   `<profile>/channels.json` (written after each change), so they survive a restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ferry_api::{
    ApiError, ChannelCreate, ChannelInfo, ChannelMember, ChannelMemberRequest, ChannelMembers,
    ChannelMessage, ChannelPost, ChannelPostResult, ChannelRead, ChannelRef,
};
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PublicKey};
use ferry_data::channel::{
    Admin, ChannelId, ChannelState, Content, EpochKeys, Head, History, JoinRequest, KeyBundle,
    MAX_BODY, MAX_HISTORY, MAX_PRIVATE_CONTENT, MemberCert, Post, ROLE_MEMBER, Removed, Roster,
    STATE_SALT, head_salt, head_target, join_mailbox, key_salt, roster_salt, state_target,
};
use ferry_data::item::{Item, MAX_MAIL_TTL, MAX_TTL, MutableItem, OwnerKey, Target};
use ferry_data::lookup::Operation;
use ferry_data::mailbox;
use ferry_net::NodeHandle;
use serde::{Deserialize, Serialize};

use crate::data::DataShared;

/// Lossless custom packet id of a channel poke (`[186][channel id 32]`: "something new here").
pub const POKE_PACKET_ID: u8 = 186;
/// Joined channels, in the profile.
pub const CHANNELS_FILE: &str = "channels.json";
/// Every joined channel is synced this often.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);
/// Own posts per channel kept alive in the value store (re-put); older ones expire there.
pub const OWNED_POSTS: usize = 64;
/// Most channels a node joins.
pub const MAX_CHANNELS: usize = 64;
/// Most join requests waiting per channel.
const MAX_PENDING: usize = 64;
/// Membership certificates are issued for this long.
const CERT_LIFETIME_S: u64 = 365 * 86_400;
/// Others' items a node re-puts per channel (state, roster pages, heads, newest posts).
const MAX_KEPT: usize = 128;
/// A pending join request is sent again this often (seconds).
const JOIN_RESEND_S: u64 = 600;
/// Posts fetched along `prev` chains per sync.
const WALK_PER_SYNC: usize = 64;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn parse_key(s: &str, what: &str) -> Result<[u8; 32], ApiError> {
    hex::decode(s.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be 64 hex digits")))
}

/// A member as the founder keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Member {
    box_hex: String,
    cert_hex: String,
}

/// One channel in `channels.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Chan {
    /// Founder: the channel key's seed, hex.
    channel_secret: Option<String>,
    /// Newest verified state value, hex, and its version.
    state_hex: String,
    state_seq: u64,
    /// Epoch keys, hex.
    keys: BTreeMap<u32, String>,
    /// Our membership certificate, hex (private channels, members).
    cert_hex: Option<String>,
    /// Last sequence number of the founder's roster and bundle items (ms since 1970, rising).
    item_seq: u64,
    /// Our last post seq and newest post ids (hex, newest first).
    my_seq: u64,
    my_posts: Vec<String>,
    /// Founder: members by author key hex.
    members: BTreeMap<String, Member>,
    /// Founder: join requests, author key hex → box key hex.
    pending: BTreeMap<String, String>,
    /// Members as the roster last said (author key hex).
    roster: Vec<String>,
    /// Authors' certificates from their heads (author hex → cert hex).
    certs: BTreeMap<String, String>,
    /// Others' items this node re-puts for the channel (targets, hex; ≤ [`MAX_KEPT`]).
    kept: Vec<String>,
    /// When our last join request was sent (Unix seconds); resent every [`JOIN_RESEND_S`]
    /// while pending.
    join_sent_unix: u64,
    /// History: encoded posts, hex, oldest first (written from the in-memory history).
    posts: Vec<String>,
}

impl Chan {
    fn state(&self) -> Option<ChannelState> {
        ChannelState::decode(&hex::decode(&self.state_hex).ok()?).ok()
    }

    fn epoch_keys(&self) -> EpochKeys {
        let mut k = EpochKeys::default();
        for (e, h) in &self.keys {
            if let Some(key) = hex::decode(h).ok().and_then(|b| b.try_into().ok()) {
                k.insert(*e, key);
            }
        }
        k
    }

    fn cert_of(&self, author: &OwnerKey) -> Option<MemberCert> {
        let h = self.certs.get(&hex::encode(author))?;
        let b = hex::decode(h).ok()?;
        MemberCert::decode(&mut ferry_wire::Reader::new(&b)).ok()
    }

    fn channel_key(&self) -> Option<SigningKey> {
        let seed: [u8; 32] = hex::decode(self.channel_secret.as_ref()?)
            .ok()?
            .try_into()
            .ok()?;
        Some(SigningKey::from_bytes(&seed))
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    channels: BTreeMap<String, Chan>,
}

struct Book {
    saved: Saved,
    histories: HashMap<ChannelId, History>,
    /// Post ids that did not verify or open ([`MAX_DROPPED`]).
    dropped: HashMap<ChannelId, HashSet<[u8; 32]>>,
    /// BLAKE3 of what `channels.json` holds (no rewrite when nothing changed).
    saved_hash: [u8; 32],
}

/// The channels of a running node.
pub struct ChannelShared {
    profile_dir: PathBuf,
    identity: KeyPair,
    author: SigningKey,
    data: Arc<DataShared>,
    node: NodeHandle,
    book: Mutex<Book>,
    rng: Mutex<FerryRng>,
    sync_lock: tokio::sync::Mutex<()>,
    /// Channels poked by friends, synced by [`spawn_sync`]'s task.
    poke_tx: tokio::sync::mpsc::Sender<ChannelId>,
    poke_rx: Mutex<Option<tokio::sync::mpsc::Receiver<ChannelId>>>,
}

impl std::fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelShared")
            .field("profile_dir", &self.profile_dir)
            .finish_non_exhaustive()
    }
}

/// Gets every item at `target`: from the network, and what this node holds itself.
async fn fetch(data: Arc<DataShared>, node: NodeHandle, target: Target) -> Vec<Item> {
    let mut items = data.local(&target);
    match data.run(&node, target, Operation::Get { seq: None }).await {
        Ok(o) => items.extend(o.items),
        Err(e) => tracing::debug!(error = %e.message, "channel get"),
    }
    items
}

/// Lookups a sync runs at once.
const FETCH_PARALLEL: usize = 32;
/// Post fetches per sync (heads' lists plus `prev` walks).
const FETCH_PER_SYNC: usize = 256;
/// Post ids remembered as undecodable or refused per channel (cleared when keys or the state
/// change, so a new member retries what it could not open before).
const MAX_DROPPED: usize = 4096;

/// Gets every item at each target, [`FETCH_PARALLEL`] lookups at a time.
async fn fetch_many<K: Send + 'static>(
    data: &Arc<DataShared>,
    node: &NodeHandle,
    targets: Vec<(K, Target)>,
) -> Vec<(K, Vec<Item>)> {
    let mut out = Vec::with_capacity(targets.len());
    let mut set = tokio::task::JoinSet::new();
    let mut todo = targets.into_iter();
    loop {
        while set.len() < FETCH_PARALLEL {
            let Some((k, t)) = todo.next() else { break };
            let (d, n) = (Arc::clone(data), node.clone());
            set.spawn(async move { (k, fetch(d, n, t).await) });
        }
        match set.join_next().await {
            Some(Ok(r)) => out.push(r),
            Some(Err(_)) => {}
            None => return out,
        }
    }
}

/// The newest verified mutable item at `target` owned by `owner` with `salt`.
fn newest_mutable(items: Vec<Item>, owner: &OwnerKey, salt: &[u8]) -> Option<MutableItem> {
    items
        .into_iter()
        .filter_map(|i| match i {
            Item::Mutable(m) if &m.pk == owner && m.salt == salt && m.verify().is_ok() => Some(m),
            _ => None,
        })
        .max_by_key(|m| m.seq)
}

impl ChannelShared {
    /// The channels of a node with long-term key pair `identity`; loads `channels.json`.
    pub fn open(
        profile_dir: &Path,
        identity: KeyPair,
        data: Arc<DataShared>,
        node: NodeHandle,
        rng: FerryRng,
    ) -> Arc<Self> {
        let author = SigningKey::from_bytes(&blake3::derive_key(
            "ferry v1 channel author key",
            &identity.secret.to_bytes(),
        ));
        let saved: Saved = std::fs::read(profile_dir.join(CHANNELS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let now = unix_now();
        let mut histories = HashMap::new();
        for (id_hex, c) in &saved.channels {
            let Ok(id) = parse_key(id_hex, "id") else {
                continue;
            };
            let mut h = History::new();
            if let Some(st) = c.state() {
                let keys = c.epoch_keys();
                for p in &c.posts {
                    if let Some(post) = hex::decode(p).ok().and_then(|b| Post::decode(&b).ok()) {
                        let cert = c.cert_of(&post.author);
                        let _ = h.offer(&id, &st, cert.as_ref(), &keys, post, now);
                    }
                }
            }
            histories.insert(id, h);
        }
        let (poke_tx, poke_rx) = tokio::sync::mpsc::channel(MAX_CHANNELS);
        Arc::new(Self {
            poke_tx,
            poke_rx: Mutex::new(Some(poke_rx)),
            profile_dir: profile_dir.to_path_buf(),
            identity,
            author,
            data,
            node,
            book: Mutex::new(Book {
                saved,
                histories,
                dropped: HashMap::new(),
                saved_hash: [0; 32],
            }),
            rng: Mutex::new(rng),
            sync_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn me(&self) -> OwnerKey {
        self.author.verifying_key().to_bytes()
    }

    fn save(&self) {
        let bytes = {
            let mut b = lock(&self.book);
            let b = &mut *b;
            for (id_hex, c) in b.saved.channels.iter_mut() {
                if let Ok(id) = parse_key(id_hex, "id")
                    && let Some(h) = b.histories.get(&id)
                {
                    c.posts = h.iter().map(|a| hex::encode(a.post.encode())).collect();
                }
            }
            match serde_json::to_vec(&b.saved) {
                Ok(bytes) => {
                    let h = *blake3::hash(&bytes).as_bytes();
                    if h == b.saved_hash {
                        return;
                    }
                    b.saved_hash = h;
                    bytes
                }
                Err(_) => return,
            }
        };
        let path = self.profile_dir.join(CHANNELS_FILE);
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, "saving channels");
        }
    }

    fn chan(&self, id: &ChannelId) -> Result<Chan, ApiError> {
        lock(&self.book)
            .saved
            .channels
            .get(&hex::encode(id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("not a channel of this node (join it first)"))
    }

    fn update(&self, id: &ChannelId, f: impl FnOnce(&mut Chan)) {
        if let Some(c) = lock(&self.book).saved.channels.get_mut(&hex::encode(id)) {
            f(c);
        }
    }

    /// Puts `item` and keeps it alive (re-put by the data layer) unless it is mail.
    async fn put(&self, item: Item, ttl_s: u32) -> Result<u64, ApiError> {
        let target = item
            .implied_target()
            .ok_or_else(|| ApiError::bad_request("item has no target"))?;
        self.put_at(target, item, ttl_s).await
    }

    /// Puts `item` at `target` (mail: at its mailbox).
    async fn put_at(&self, target: Target, item: Item, ttl_s: u32) -> Result<u64, ApiError> {
        let mail = matches!(item, Item::Mail(_));
        if !mail {
            self.data.own(target, item.clone(), ttl_s, None);
        }
        let out = self
            .data
            .run(
                &self.node,
                target,
                Operation::Put {
                    item: item.clone(),
                    ttl_s,
                    cas: None,
                },
            )
            .await?;
        if !mail {
            self.data.own(target, item, ttl_s, out.min_ttl);
        }
        Ok(out.stored as u64)
    }

    async fn put_mutable(&self, key: &SigningKey, salt: &[u8], seq: u64, value: &[u8]) -> u64 {
        let item = Item::Mutable(MutableItem::sign(key, salt, seq, value));
        match self.put(item, MAX_TTL.as_secs() as u32).await {
            Ok(n) => n,
            Err(e) => {
                tracing::info!(error = %e.message, "channel put failed; re-put later");
                0
            }
        }
    }

    fn info(&self, id: &ChannelId, c: &Chan) -> ChannelInfo {
        let me = self.me();
        let st = c.state();
        let status = match &st {
            _ if c.channel_secret.is_some() => "founder",
            Some(s) if s.removal(&me).is_some() => "removed",
            Some(s) if !s.private => "reader",
            Some(s) if c.keys.contains_key(&s.epoch) => "member",
            _ => "pending",
        };
        ChannelInfo {
            id: hex::encode(id),
            name: st.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
            private: st.as_ref().is_some_and(|s| s.private),
            status: status.into(),
            member_key: hex::encode(me),
            epoch: st.map_or(0, |s| s.epoch),
        }
    }

    /// `POST /v1/channels/create`.
    pub async fn create(&self, req: ChannelCreate) -> Result<ChannelInfo, ApiError> {
        if req.name.len() > ferry_data::channel::MAX_NAME {
            return Err(ApiError::bad_request("name longer than 48 bytes"));
        }
        if lock(&self.book).saved.channels.len() >= MAX_CHANNELS {
            return Err(ApiError::conflict("too many channels"));
        }
        let (seed, epoch_key) = {
            let mut rng = lock(&self.rng);
            (rng.bytes::<32>(), rng.bytes::<32>())
        };
        let channel_key = SigningKey::from_bytes(&seed);
        let id = channel_key.verifying_key().to_bytes();
        let state = ChannelState {
            private: req.private,
            name: req.name,
            admins: vec![Admin {
                author: self.me(),
                box_pk: self.identity.public,
            }],
            epoch: u32::from(req.private),
            roster_pages: u8::from(req.private),
            removed: vec![],
        };
        let value = state
            .encode()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let mut c = Chan {
            channel_secret: Some(hex::encode(seed)),
            state_hex: hex::encode(&value),
            state_seq: 1,
            ..Chan::default()
        };
        if req.private {
            c.keys.insert(1, hex::encode(epoch_key));
        }
        {
            let mut b = lock(&self.book);
            b.saved.channels.insert(hex::encode(id), c.clone());
            b.histories.insert(id, History::new());
        }
        self.save();
        self.put_mutable(&channel_key, STATE_SALT, 1, &value).await;
        if req.private {
            self.publish_roster(&id).await;
        }
        Ok(self.info(&id, &c))
    }

    /// `POST /v1/channels/join`.
    pub async fn join(&self, req: ChannelRef) -> Result<ChannelInfo, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        let known = lock(&self.book)
            .saved
            .channels
            .contains_key(&hex::encode(id));
        if !known {
            if lock(&self.book).saved.channels.len() >= MAX_CHANNELS {
                return Err(ApiError::conflict("too many channels"));
            }
            let st = self.fetch_state(&id).await.ok_or_else(|| {
                ApiError::not_found("channel not found (no state in the value store)")
            })?;
            {
                let mut b = lock(&self.book);
                b.saved.channels.insert(
                    hex::encode(id),
                    Chan {
                        state_hex: hex::encode(st.1.value),
                        state_seq: st.1.seq,
                        ..Chan::default()
                    },
                );
                b.histories.insert(id, History::new());
            }
            self.save();
        }
        let c = self.chan(&id)?;
        let st = c
            .state()
            .ok_or_else(|| ApiError::unavailable("channel state unreadable"))?;
        if st.private && c.channel_secret.is_none() && !c.keys.contains_key(&st.epoch) {
            self.send_join_request(&id, &st).await?;
        }
        let _ = self.sync(&id).await;
        Ok(self.info(&id, &self.chan(&id)?))
    }

    async fn send_join_request(&self, id: &ChannelId, st: &ChannelState) -> Result<(), ApiError> {
        let body = JoinRequest::new(&self.author, *id, &self.identity.public).encode();
        let unix = unix_now();
        let target = join_mailbox(id, mailbox::epoch_of(unix));
        let mut stored = 0;
        for admin in &st.admins {
            let mut rng = lock(&self.rng).fork();
            let identity = self.identity.clone();
            let to = admin.box_pk;
            let body = body.clone();
            let env = tokio::task::spawn_blocking(move || {
                mailbox::seal(
                    &identity,
                    &to,
                    &target,
                    ferry_data::item::MAIL_POW_BITS,
                    1,
                    unix,
                    &body,
                    &mut rng,
                )
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .0;
            stored += self
                .put_at(target, Item::Mail(env), MAX_MAIL_TTL.as_secs() as u32)
                .await?;
        }
        if stored == 0 {
            return Err(ApiError::unavailable("no node stored the join request"));
        }
        self.update(id, |c| c.join_sent_unix = unix);
        self.save();
        Ok(())
    }

    async fn fetch_state(&self, id: &ChannelId) -> Option<(ChannelState, MutableItem)> {
        let items = fetch(Arc::clone(&self.data), self.node.clone(), state_target(id)).await;
        let m = newest_mutable(items, id, STATE_SALT)?;
        Some((ChannelState::from_item(id, &m).ok()?, m))
    }

    /// Fetches state, keys, roster, heads and posts of channel `id` (module docs).
    async fn sync(&self, id: &ChannelId) -> Result<(), ApiError> {
        let _guard = self.sync_lock.lock().await;
        if self.data.status().capable_nodes == 0 {
            // No store-capable peer yet: what we hold is all there is.
            return Ok(());
        }
        let me = self.me();
        let c = self.chan(id)?;
        let founder = c.channel_secret.is_some();
        // Items of others this node re-puts while it runs (state, roster, heads, newest posts).
        let mut keep: Vec<(Target, Item)> = Vec::new();
        // 1. State.
        let fetched = if founder {
            None
        } else {
            self.fetch_state(id).await
        };
        if let Some((_, m)) = &fetched
            && m.seq >= c.state_seq
        {
            keep.push((state_target(id), Item::Mutable(m.clone())));
        }
        if let Some((st, m)) = fetched
            && m.seq > c.state_seq
        {
            self.update(id, |c| {
                c.state_hex = hex::encode(&m.value);
                c.state_seq = m.seq;
            });
            let mut b = lock(&self.book);
            if let Some(h) = b.histories.get_mut(id) {
                h.retain_valid(&st);
            }
            b.dropped.remove(id);
        }
        let c = self.chan(id)?;
        let st = c
            .state()
            .ok_or_else(|| ApiError::unavailable("channel state unreadable"))?;
        let now = unix_now();
        // 2. Our key bundle.
        if st.private && !founder {
            let salt = key_salt(id, &me);
            let items = fetch(
                Arc::clone(&self.data),
                self.node.clone(),
                Target::mutable(id, &salt),
            )
            .await;
            if let Some(m) = newest_mutable(items, id, &salt)
                && let Ok(b) = KeyBundle::decode(&m.value)
                && b.cert.member == me
                && b.cert.verify(id, &st, now).is_ok()
                && let Ok(keys) = b.open(&self.identity.secret)
            {
                let mut cert = Vec::new();
                b.cert.encode(&mut cert);
                let mut grew = false;
                self.update(id, |c| {
                    for (e, k) in keys.0 {
                        grew |= c.keys.insert(e, hex::encode(k)).is_none();
                    }
                    c.cert_hex = Some(hex::encode(&cert));
                    c.certs.insert(hex::encode(me), hex::encode(&cert));
                });
                if grew {
                    // New keys: retry the posts that did not open.
                    lock(&self.book).dropped.remove(id);
                }
            }
        }
        // Still waiting for approval: the join request may have been lost; send it again now
        // and then.
        let c = self.chan(id)?;
        if st.private
            && !founder
            && !c.keys.contains_key(&st.epoch)
            && st.removal(&me).is_none()
            && now.saturating_sub(c.join_sent_unix) > JOIN_RESEND_S
            && let Err(e) = self.send_join_request(id, &st).await
        {
            tracing::debug!(error = %e.message, "channel join request");
        }
        // 3. Founder: join requests.
        if st.private && founder {
            self.collect_join_requests(id, &st).await;
        }
        // 4. Authors: admins, and the roster's members.
        let mut authors: Vec<OwnerKey> = st.admins.iter().map(|a| a.author).collect();
        if st.private {
            let roster: Vec<OwnerKey> = if founder {
                c.members
                    .keys()
                    .filter_map(|k| parse_key(k, "member").ok())
                    .collect()
            } else {
                let targets = (0..st.roster_pages)
                    .map(|p| (p, Target::mutable(id, &roster_salt(p))))
                    .collect();
                let got = fetch_many(&self.data, &self.node, targets).await;
                let mut pages = BTreeMap::new();
                for (p, items) in got {
                    if let Some(m) = newest_mutable(items, id, &roster_salt(p))
                        && let Ok(r) = Roster::decode(&m.value)
                    {
                        pages.insert(p, r.0);
                        keep.push((m.target(), Item::Mutable(m)));
                    }
                }
                if pages.len() == usize::from(st.roster_pages) {
                    let all: Vec<OwnerKey> = pages.into_values().flatten().collect();
                    self.update(id, |c| c.roster = all.iter().map(hex::encode).collect());
                    all
                } else {
                    // A page is missing: keep the roster we had.
                    c.roster
                        .iter()
                        .filter_map(|k| parse_key(k, "member").ok())
                        .collect()
                }
            };
            authors.extend(roster);
        }
        authors.sort_unstable();
        authors.dedup();
        authors.retain(|a| a != &me);
        // 5. Heads.
        let targets = authors.iter().map(|a| (*a, head_target(id, a))).collect();
        let heads = fetch_many(&self.data, &self.node, targets).await;
        let salt = head_salt(id);
        let mut wanted: Vec<[u8; 32]> = Vec::new();
        let mut cert_authors = vec![hex::encode(me)];
        let mut head_posts: Vec<[u8; 32]> = Vec::new();
        for (a, items) in heads {
            let Some(m) = newest_mutable(items, &a, &salt) else {
                continue;
            };
            let Ok(head) = Head::from_item(id, &m) else {
                continue;
            };
            keep.push((m.target(), Item::Mutable(m)));
            head_posts.extend(head.posts.iter().copied());
            if let Some(cert) = head.cert
                && cert.member == a
                && cert.verify(id, &st, now).is_ok()
            {
                let mut b = Vec::new();
                cert.encode(&mut b);
                self.update(id, |c| {
                    c.certs.insert(hex::encode(a), hex::encode(b));
                });
                cert_authors.push(hex::encode(a));
            }
            let book = lock(&self.book);
            let h = book.histories.get(id);
            let dropped = book.dropped.get(id);
            wanted.extend(
                head.posts
                    .iter()
                    .filter(|p| h.is_none_or(|h| !h.has_id(p)))
                    .filter(|p| dropped.is_none_or(|d| !d.contains(*p)))
                    .copied(),
            );
        }
        // Certificates of authors no longer heard from are forgotten (bounded by the roster).
        self.update(id, |c| c.certs.retain(|k, _| cert_authors.contains(k)));
        wanted.truncate(FETCH_PER_SYNC);
        // 6. Posts, then their prev chains.
        let mut budget = WALK_PER_SYNC;
        while !wanted.is_empty() {
            let targets = std::mem::take(&mut wanted)
                .into_iter()
                .map(|p| (p, Target(p)))
                .collect();
            let got = fetch_many(&self.data, &self.node, targets).await;
            let c = self.chan(id)?;
            let keys = c.epoch_keys();
            for (pid, items) in got {
                let Some(post) = items.into_iter().find_map(|i| match i {
                    Item::Immutable(v) if Target::immutable(&v).0 == pid => Post::decode(&v).ok(),
                    _ => None,
                }) else {
                    continue;
                };
                let cert = c.cert_of(&post.author);
                let prev = post.prev;
                let mut book = lock(&self.book);
                let book = &mut *book;
                let Some(h) = book.histories.get_mut(id) else {
                    continue;
                };
                match h.offer(id, &st, cert.as_ref(), &keys, post, now) {
                    Ok(Some(_)) => {
                        if prev != [0; 32]
                            && !h.has_id(&prev)
                            && budget > 0
                            && h.len() < MAX_HISTORY
                        {
                            budget -= 1;
                            wanted.push(prev);
                        }
                    }
                    // Held already, or older than a full history keeps: do not fetch it again.
                    Ok(None) => {
                        let d = book.dropped.entry(*id).or_default();
                        if d.len() >= MAX_DROPPED {
                            d.clear();
                        }
                        d.insert(pid);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "channel post dropped");
                        let d = book.dropped.entry(*id).or_default();
                        if d.len() >= MAX_DROPPED {
                            d.clear();
                        }
                        d.insert(pid);
                    }
                }
            }
        }
        // 7. Keep the channel alive for members that come back while its authors are offline.
        let c = self.chan(id)?;
        if !st.private || c.keys.contains_key(&st.epoch) {
            {
                let book = lock(&self.book);
                if let Some(h) = book.histories.get(id) {
                    for a in h.iter().filter(|a| head_posts.contains(&a.id)) {
                        keep.push((Target(a.id), Item::Immutable(a.post.encode())));
                    }
                }
            }
            keep.truncate(MAX_KEPT);
            let now_kept: Vec<String> = keep.iter().map(|(t, _)| hex::encode(t.0)).collect();
            for old in c.kept.iter().filter(|k| !now_kept.contains(k)) {
                if let Ok(t) = parse_key(old, "target") {
                    self.data.disown(&Target(t));
                }
            }
            for (t, item) in keep {
                self.data.keep(t, item, MAX_TTL.as_secs() as u32);
            }
            self.update(id, |c| c.kept = now_kept);
        }
        self.save();
        Ok(())
    }

    async fn collect_join_requests(&self, id: &ChannelId, st: &ChannelState) {
        let mut found = Vec::new();
        for e in mailbox::poll_epochs(unix_now()).take(2) {
            found.extend(
                fetch(
                    Arc::clone(&self.data),
                    self.node.clone(),
                    join_mailbox(id, e),
                )
                .await,
            );
        }
        let mut changed = false;
        for item in found {
            let Item::Mail(env) = item else { continue };
            let Ok(m) = mailbox::open(&self.identity.secret, &env) else {
                continue;
            };
            let Ok(q) = JoinRequest::decode_verify(&m.body, &m.sender) else {
                continue;
            };
            if &q.channel != id || st.removal(&q.author).is_some() || st.is_admin(&q.author) {
                continue;
            }
            let a = hex::encode(q.author);
            self.update(id, |c| {
                if !c.members.contains_key(&a)
                    && !c.pending.contains_key(&a)
                    && c.pending.len() < MAX_PENDING
                {
                    c.pending.insert(a.clone(), m.sender.to_hex());
                    changed = true;
                }
            });
            if changed {
                tracing::info!(member = %a, "channel join request");
            }
        }
    }

    /// A sequence number for the founder's next roster or bundle item: above every earlier one.
    fn next_item_seq(&self, id: &ChannelId) -> u64 {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut seq = 0;
        self.update(id, |c| {
            c.item_seq = (c.item_seq + 1).max(now_ms);
            seq = c.item_seq;
        });
        seq
    }

    /// Founder: puts the roster pages (and the state when the page count changed).
    async fn publish_roster(&self, id: &ChannelId) {
        let Ok(c) = self.chan(id) else { return };
        let Some(key) = c.channel_key() else { return };
        let members: Vec<OwnerKey> = c
            .members
            .keys()
            .filter_map(|k| parse_key(k, "member").ok())
            .collect();
        let Some(st) = c.state() else { return };
        let mut pages = ferry_data::channel::roster_pages(&members);
        while pages.len() < usize::from(st.roster_pages) {
            pages.push(Roster::default());
        }
        let seq = self.next_item_seq(id);
        for (i, p) in pages.iter().enumerate() {
            self.put_mutable(&key, &roster_salt(i as u8), seq, &p.encode())
                .await;
        }
        if pages.len() > usize::from(st.roster_pages) {
            let mut st = st;
            st.roster_pages = pages.len() as u8;
            self.publish_state(id, st).await;
        }
    }

    /// Founder: a new version of the state.
    async fn publish_state(&self, id: &ChannelId, st: ChannelState) {
        let Ok(value) = st.encode() else { return };
        let Ok(c) = self.chan(id) else { return };
        let Some(key) = c.channel_key() else { return };
        let seq = c.state_seq + 1;
        self.update(id, |c| {
            c.state_hex = hex::encode(&value);
            c.state_seq = seq;
        });
        self.save();
        self.put_mutable(&key, STATE_SALT, seq, &value).await;
    }

    /// Founder: seals the epoch keys to `member` (its bundle).
    async fn publish_bundle(&self, id: &ChannelId, member: &str) {
        let Ok(c) = self.chan(id) else { return };
        let Some(key) = c.channel_key() else { return };
        let Some(m) = c.members.get(member) else {
            return;
        };
        let Some(cert) = hex::decode(&m.cert_hex)
            .ok()
            .and_then(|b| MemberCert::decode(&mut ferry_wire::Reader::new(&b)).ok())
        else {
            return;
        };
        let bundle = KeyBundle::seal(cert, &c.epoch_keys(), &mut lock(&self.rng));
        let seq = self.next_item_seq(id);
        self.put_mutable(&key, &key_salt(id, &cert.member), seq, &bundle.encode())
            .await;
    }

    /// `POST /v1/channels/post`.
    pub async fn post(&self, req: ChannelPost) -> Result<ChannelPostResult, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        let c = self.chan(&id)?;
        let st = c
            .state()
            .ok_or_else(|| ApiError::unavailable("channel state unreadable"))?;
        let me = self.me();
        let content = match req.file_name {
            Some(name) => Content::File {
                name,
                data: hex::decode(&req.file_hex)
                    .map_err(|_| ApiError::bad_request("file_hex is not hex"))?,
            },
            None => Content::Text(req.text),
        }
        .encode();
        let limit = if st.private {
            MAX_PRIVATE_CONTENT
        } else {
            MAX_BODY
        };
        if content.len() > limit {
            return Err(ApiError::bad_request(format!(
                "post is {} bytes; a channel post carries at most {limit} bytes inline (one \
                 value-store item); publish larger files with the content layer (`ferry \
                 publish`) and post the content id",
                content.len()
            )));
        }
        let keys = c.epoch_keys();
        let epoch_key: Option<(u32, [u8; 32])> = if st.private {
            match keys.get(st.epoch) {
                Some(k) => Some((st.epoch, *k)),
                None if req.unchecked => keys
                    .newest()
                    .map(|(e, k)| (e, *k))
                    .or_else(|| Some((st.epoch, lock(&self.rng).bytes()))),
                None => {
                    return Err(ApiError::conflict(format!(
                        "not a member of this private channel (no key for epoch {}; join and \
                         wait for an admin's approval)",
                        st.epoch
                    )));
                }
            }
        } else {
            None
        };
        if !req.unchecked {
            if !st.private && !st.is_admin(&me) {
                return Err(ApiError::conflict(
                    "only the channel's admins post in a public channel",
                ));
            }
            if st.removal(&me).is_some() {
                return Err(ApiError::conflict("removed from this channel"));
            }
        }
        let seq = c.my_seq + 1;
        let prev = c
            .my_posts
            .first()
            .and_then(|p| parse_key(p, "post").ok())
            .unwrap_or([0; 32]);
        let post = Post::create(
            &self.author,
            id,
            seq,
            prev,
            unix_now(),
            &content,
            epoch_key.as_ref().map(|(e, k)| (*e, k)),
            &mut lock(&self.rng),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let pid = post.id();
        let mut my_posts = c.my_posts.clone();
        my_posts.insert(0, hex::encode(pid));
        if my_posts.len() > OWNED_POSTS {
            for old in my_posts.split_off(OWNED_POSTS) {
                if let Ok(t) = parse_key(&old, "post") {
                    self.data.disown(&Target(t));
                }
            }
        }
        let cert = c.cert_hex.as_ref().and_then(|h| {
            MemberCert::decode(&mut ferry_wire::Reader::new(&hex::decode(h).ok()?)).ok()
        });
        let head = Head {
            cert: if st.is_admin(&me) { None } else { cert },
            seq,
            posts: my_posts
                .iter()
                .take(ferry_data::channel::HEAD_POSTS)
                .filter_map(|p| parse_key(p, "post").ok())
                .collect(),
        };
        self.update(&id, |c| {
            c.my_seq = seq;
            c.my_posts = my_posts;
        });
        {
            let mut b = lock(&self.book);
            if let Some(h) = b.histories.get_mut(&id) {
                let _ = h.offer(&id, &st, cert.as_ref(), &keys, post.clone(), unix_now());
            }
        }
        self.save();
        let stored = self
            .put(Item::Immutable(post.encode()), MAX_TTL.as_secs() as u32)
            .await?;
        self.put_mutable(&self.author, &head_salt(&id), seq, &head.encode())
            .await;
        if stored == 0 {
            return Err(ApiError::unavailable(
                "no node stored the post yet (it is re-put while the daemon runs)",
            ));
        }
        self.poke(&id, &st).await;
        Ok(ChannelPostResult {
            post_id: hex::encode(pid),
            seq,
            stored,
        })
    }

    /// `POST /v1/channels/read`.
    pub async fn read(&self, req: ChannelRead) -> Result<Vec<ChannelMessage>, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        self.chan(&id)?;
        if req.sync {
            self.sync(&id).await?;
        }
        let b = lock(&self.book);
        let Some(h) = b.histories.get(&id) else {
            return Ok(vec![]);
        };
        Ok(h.iter()
            .map(|a| {
                let (text, file_name, file_hex) = match &a.content {
                    Content::Text(t) => (t.clone(), None, String::new()),
                    Content::File { name, data } => {
                        (String::new(), Some(name.clone()), hex::encode(data))
                    }
                };
                ChannelMessage {
                    post_id: hex::encode(a.id),
                    author: hex::encode(a.post.author),
                    seq: a.post.seq,
                    sent_unix: a.post.sent_unix,
                    text,
                    file_name,
                    file_hex,
                }
            })
            .collect())
    }

    /// `POST /v1/channels/members`.
    pub async fn members(&self, req: ChannelRef) -> Result<ChannelMembers, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        let _ = self.sync(&id).await;
        self.members_now(&id)
    }

    fn members_now(&self, id: &ChannelId) -> Result<ChannelMembers, ApiError> {
        let c = self.chan(id)?;
        let st = c
            .state()
            .ok_or_else(|| ApiError::unavailable("channel state unreadable"))?;
        let mut members: Vec<ChannelMember> = st
            .admins
            .iter()
            .map(|a| ChannelMember {
                member_key: hex::encode(a.author),
                box_key: a.box_pk.to_hex(),
                role: "admin".into(),
            })
            .collect();
        if c.channel_secret.is_some() {
            members.extend(c.members.iter().map(|(k, m)| ChannelMember {
                member_key: k.clone(),
                box_key: m.box_hex.clone(),
                role: "member".into(),
            }));
            members.extend(c.pending.iter().map(|(k, b)| ChannelMember {
                member_key: k.clone(),
                box_key: b.clone(),
                role: "pending".into(),
            }));
        } else {
            members.extend(c.roster.iter().map(|k| {
                ChannelMember {
                    member_key: k.clone(),
                    box_key: parse_key(k, "member")
                        .ok()
                        .and_then(|a| c.cert_of(&a))
                        .map(|x| x.box_pk.to_hex())
                        .unwrap_or_default(),
                    role: "member".into(),
                }
            }));
        }
        Ok(ChannelMembers {
            info: self.info(id, &c),
            members,
            removed: st.removed.iter().map(|r| hex::encode(r.member)).collect(),
        })
    }

    fn founder_chan(&self, id: &ChannelId) -> Result<(Chan, ChannelState), ApiError> {
        let c = self.chan(id)?;
        if c.channel_secret.is_none() {
            return Err(ApiError::conflict(
                "only the channel's founder approves and removes members",
            ));
        }
        let st = c
            .state()
            .ok_or_else(|| ApiError::unavailable("channel state unreadable"))?;
        if !st.private {
            return Err(ApiError::bad_request(
                "a public channel has no membership: anyone joins by id",
            ));
        }
        Ok((c, st))
    }

    /// `POST /v1/channels/approve`.
    pub async fn approve(&self, req: ChannelMemberRequest) -> Result<ChannelMembers, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        let key = hex::encode(parse_key(&req.key, "key")?);
        let (c, _) = self.founder_chan(&id)?;
        let found = c
            .pending
            .iter()
            .find(|(a, b)| **a == key || b.eq_ignore_ascii_case(&key))
            .map(|(a, b)| (a.clone(), b.clone()));
        let (author_hex, box_hex) = match found {
            Some(f) => f,
            None => {
                // The request may not be collected yet.
                let _ = self.sync(&id).await;
                let c = self.chan(&id)?;
                c.pending
                    .iter()
                    .find(|(a, b)| **a == key || b.eq_ignore_ascii_case(&key))
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .ok_or_else(|| {
                        ApiError::not_found(
                            "no join request from that key yet (see `ferry channel members ID`)",
                        )
                    })?
            }
        };
        let author = parse_key(&author_hex, "member")?;
        let box_pk = PublicKey(parse_key(&box_hex, "box key")?);
        let cert = MemberCert::issue(
            &self.author,
            id,
            author,
            box_pk,
            ROLE_MEMBER,
            unix_now() + CERT_LIFETIME_S,
        );
        let mut cb = Vec::new();
        cert.encode(&mut cb);
        self.update(&id, |c| {
            c.pending.remove(&author_hex);
            c.members.insert(
                author_hex.clone(),
                Member {
                    box_hex,
                    cert_hex: hex::encode(&cb),
                },
            );
            c.certs.insert(author_hex.clone(), hex::encode(&cb));
        });
        self.save();
        self.publish_bundle(&id, &author_hex).await;
        self.publish_roster(&id).await;
        tracing::info!(member = %author_hex, "channel member approved");
        self.members_now(&id)
    }

    /// `POST /v1/channels/remove`: removes a member and rotates the epoch key.
    pub async fn remove(&self, req: ChannelMemberRequest) -> Result<ChannelMembers, ApiError> {
        let id = parse_key(&req.id, "channel id")?;
        let key = hex::encode(parse_key(&req.key, "key")?);
        let _ = self.sync(&id).await;
        let (c, mut st) = self.founder_chan(&id)?;
        if c.pending.contains_key(&key) && !c.members.contains_key(&key) {
            // Only a join request: drop it, nothing to rotate.
            self.update(&id, |c| {
                c.pending.remove(&key);
            });
            self.save();
            return self.members_now(&id);
        }
        let author_hex = c
            .members
            .iter()
            .find(|(a, m)| **a == key || m.box_hex.eq_ignore_ascii_case(&key))
            .map(|(a, _)| a.clone())
            .ok_or_else(|| ApiError::not_found("not a member of this channel"))?;
        let author = parse_key(&author_hex, "member")?;
        let max_seq = lock(&self.book).histories.get(&id).map_or(0, |h| {
            h.iter()
                .filter(|a| a.post.author == author)
                .map(|a| a.post.seq)
                .max()
                .unwrap_or(0)
        });
        let new_key: [u8; 32] = lock(&self.rng).bytes();
        st.epoch += 1;
        st.push_removed(Removed {
            member: author,
            max_seq,
        });
        let epoch = st.epoch;
        self.update(&id, |c| {
            c.members.remove(&author_hex);
            c.pending.remove(&author_hex);
            c.keys.insert(epoch, hex::encode(new_key));
        });
        if let Some(h) = lock(&self.book).histories.get_mut(&id) {
            h.retain_valid(&st);
        }
        self.publish_state(&id, st).await;
        let remaining: Vec<String> = self.chan(&id)?.members.keys().cloned().collect();
        for m in remaining {
            self.publish_bundle(&id, &m).await;
        }
        self.publish_roster(&id).await;
        tracing::info!(member = %author_hex, epoch, "channel member removed; key rotated");
        self.members_now(&id)
    }

    /// A poke from friend `from` (inside the node task): queue a sync of the channel if we joined
    /// it (dropped when the queue is full).
    pub fn on_poke(&self, from: &PublicKey, data: &[u8]) {
        let Some(id) = data
            .get(1..33)
            .and_then(|b| <ChannelId>::try_from(b).ok())
            .filter(|_| data.len() == 33)
        else {
            return;
        };
        if lock(&self.book)
            .saved
            .channels
            .contains_key(&hex::encode(id))
        {
            tracing::info!(from = %from, channel = %hex::encode(id), "channel poke");
            let _ = self.poke_tx.try_send(id);
        }
    }

    /// Pokes the online friends that may read channel `id` (module docs).
    async fn poke(&self, id: &ChannelId, st: &ChannelState) {
        let Ok(c) = self.chan(id) else { return };
        let mut known: HashSet<PublicKey> = st.admins.iter().map(|a| a.box_pk).collect();
        for m in c.members.values() {
            if let Ok(k) = PublicKey::from_hex(&m.box_hex) {
                known.insert(k);
            }
        }
        for k in c.certs.keys() {
            if let Some(cert) = parse_key(k, "author").ok().and_then(|a| c.cert_of(&a)) {
                known.insert(cert.box_pk);
            }
        }
        let private = st.private;
        let mut packet = vec![POKE_PACKET_ID];
        packet.extend_from_slice(id);
        let _ = self
            .node
            .call(move |n, now| {
                for f in n.friends() {
                    if f.connection != ferry_proto::node::Connection::None
                        && (!private || known.contains(&f.public_key))
                    {
                        let _ = n.send_custom(now, &f.public_key, &packet);
                    }
                }
            })
            .await;
    }

    /// Syncs every joined channel.
    async fn sync_all(&self) {
        let ids: Vec<ChannelId> = lock(&self.book)
            .saved
            .channels
            .keys()
            .filter_map(|k| parse_key(k, "id").ok())
            .collect();
        for id in ids {
            if let Err(e) = self.sync(&id).await {
                tracing::debug!(error = %e.message, "channel sync");
            }
        }
    }
}

/// Spawns the background sync of every joined channel (every [`SYNC_INTERVAL`]).
pub fn spawn_sync(channels: Arc<ChannelShared>) -> tokio::task::JoinHandle<()> {
    let pokes = lock(&channels.poke_rx).take();
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(SYNC_INTERVAL);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let Some(mut pokes) = pokes else {
            loop {
                iv.tick().await;
                channels.sync_all().await;
            }
        };
        loop {
            tokio::select! {
                _ = iv.tick() => channels.sync_all().await,
                Some(id) = pokes.recv() => {
                    if let Err(e) = channels.sync(&id).await {
                        tracing::debug!(error = %e.message, "channel sync after a poke");
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_channel_round_trips() {
        let issuer = SigningKey::from_bytes(&[1; 32]);
        let cert = MemberCert::issue(&issuer, [2; 32], [3; 32], PublicKey([4; 32]), 2, 99);
        let mut cb = Vec::new();
        cert.encode(&mut cb);
        let st = ChannelState {
            private: true,
            name: "club".into(),
            admins: vec![Admin {
                author: issuer.verifying_key().to_bytes(),
                box_pk: PublicKey([5; 32]),
            }],
            epoch: 2,
            roster_pages: 1,
            removed: vec![],
        };
        let mut c = Chan {
            channel_secret: Some(hex::encode([6; 32])),
            state_hex: hex::encode(st.encode().expect("state")),
            state_seq: 3,
            ..Chan::default()
        };
        c.keys.insert(2, hex::encode([7; 32]));
        c.keys.insert(9, "not hex".into());
        c.certs.insert(hex::encode([3; 32]), hex::encode(&cb));
        let mut saved = Saved::default();
        saved.channels.insert(hex::encode([2; 32]), c);
        let back: Saved =
            serde_json::from_slice(&serde_json::to_vec(&saved).expect("json")).expect("parse");
        let c = back.channels.get(&hex::encode([2; 32])).expect("kept");
        assert_eq!(c.state(), Some(st));
        assert_eq!(c.epoch_keys().get(2), Some(&[7; 32]));
        assert_eq!(c.epoch_keys().0.len(), 1, "a bad key is skipped");
        assert_eq!(c.cert_of(&[3; 32]), Some(cert));
        assert_eq!(c.cert_of(&[4; 32]), None);
        assert_eq!(
            c.channel_key().map(|k| k.to_bytes()),
            Some([6; 32]),
            "founder key"
        );
        assert!(parse_key("zz", "id").is_err());
        assert!(parse_key(&hex::encode([1; 31]), "id").is_err());
    }
}
