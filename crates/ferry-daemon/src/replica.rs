//! Replication of pinned content in `ferry up` (issue 10 item 2; `data-layer.md` §3.5): the
//! daemon's host for the sans-IO [`ReplicaManager`] of `ferry-swarm`.
//!
//! # Opting in (`config.toml`)
//! ```toml
//! [content]
//! store_for_others = true     # hold pinned content for publishers (default false)
//! replica_quota_mib = 1024    # bytes held for others stay below this (default 1024)
//! replica_check_secs = 300    # pins check each other this often (default 300; tests lower it)
//! replica_downloads_per_replica = 20  # one replica per this many downloads per hour (default 20)
//! replica_extra_ttl_secs = 1800       # an extra replica lives this long unrenewed (default 1800)
//! replica_demand_bucket_secs = 600    # demand bucket; six make the window (default 600)
//! ```
//! `ferry up --store-content` turns `store_for_others` on for one run. Check timeouts are
//! `min(5 s, interval / 3)`; each item keeps 3 + 1 spare pins ([`ReplicaConfig`] defaults).
//! The demand knobs go into [`ReplicaConfig`] (`downloads_per_replica`, `extra_ttl`,
//! `demand_bucket`); tests lower them to see extras come and go within a minute.
//!
//! # Demand
//! Real downloads are content `get`s (packets 188/189, [`crate::content`]), not
//! [`ReplicaMsg::Fetch`]es, so the host counts them ([`ReplicaShared::on_download`]): when this
//! node queues a `get` for the manifest blob of an item (the blob whose id is the content id,
//! the first thing every fetch asks for), the fetching peer counts once per
//! [`DOWNLOAD_DEDUP`] (≤ [`MAX_RECENT`] peer/item pairs remembered); a peer this node knows as
//! a holder of the item (fetching its replica) does not count. A holder feeds the count
//! to its manager ([`ReplicaManager::record_download`]), which reports it to the leader in its
//! checks. The publisher holds no replica in its manager, so it forwards the count as a
//! [`ReplicaMsg::Fetch`] to the pin with the lowest key it placed (the likely leader; any pin
//! passes it on in its checks); the pin's answer is ignored.
//!
//! # Storer records
//! A storer announces itself at the value-store target `BLAKE3-derive("ferry v1 content
//! storers", "")` with the same multi-writer mail-envelope record as a content provider
//! ([`crate::content::ProviderRecord`]: long-term key, DHT key, address), TTL
//! [`STORER_TTL`], re-put every [`STORER_INTERVAL`] (the first [`STORER_EARLY_PUTS`] every
//! [`STORER_EARLY_INTERVAL`], while the DHT forms) and, sooner, whenever the target's closest
//! nodes changed or a directory read missed the record ([`RecordSchedule`]). One well-known
//! target holds at most 64 storers (the mail-envelope cap): enough for small meshes; a sharded
//! directory (target per key prefix) is the follow-up. Candidates for an item are the storers whose long-term key is
//! closest (XOR) to the content id.
//!
//! # Wire
//! [`ReplicaMsg`] datagrams travel as net_crypto lossless custom packets with id
//! [`REPLICA_PACKET_ID`] (176) followed by the message. The manager addresses peers by
//! [`PackedNode`]: here `public_key` is the peer's **long-term** key and `addr` a synthetic
//! IPv6 address made from that key ([`synth_addr`]) that this module maps back to the key.
//! Sessions are made like content sessions: the sender adds the peer with
//! `add_friend_norequest` + `set_friend_dht_key` (from its storer record) and a storer accepts
//! unknown peers as guests; packets wait (≤ [`MAX_QUEUED`] per peer) until the session is up.
//!
//! # Holding
//! A storer that accepts a [`ReplicaMsg::Store`] fetches the content with the content layer's
//! fetch job into `<profile>/replicas/<id>/` (retrying while another job runs); once fetched it
//! serves and announces it as a provider like any download. `ferry unpin ID` on a holder
//! releases the item (later checks answer "not holding", so the leader repairs elsewhere); on
//! the publisher it forgets the pin list (pins lapse at their keep time, [`PIN_KEEP`]).
//!
//! # Caps
//! Peers with queued packets ≤ [`MAX_PEERS`]; packets per peer ≤ [`MAX_QUEUED`]; address map
//! ≤ [`MAX_ADDRS`] (cleared when full); guests accepted ≤ [`MAX_PEERS`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::ApiError;
use ferry_content::ContentId;
use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_data::item::{Item, MailEnvelope, Target};
use ferry_data::lookup::Operation;
use ferry_net::NodeHandle;
use ferry_proto::node::Node;
use ferry_proto::{Destination, Endpoint};
use ferry_swarm::replica::{ReplicaConfig, ReplicaEvent, ReplicaManager};
use ferry_swarm::wire::{ReplicaMsg, Role};
use ferry_wire::node::PackedNode;
use serde::Deserialize;

use crate::content::{ContentShared, ProviderRecord};
use crate::data::{DataShared, RecordSchedule};

/// Lossless custom packet id of replica messages.
pub const REPLICA_PACKET_ID: u8 = 176;
/// Storer records live this long: 2 h.
pub const STORER_TTL: Duration = Duration::from_secs(2 * 3600);
/// Storers re-put their record this often: 30 min.
pub const STORER_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// The first [`STORER_EARLY_PUTS`] storer-record puts come this often (10 s): a put made while
/// the DHT is still forming lands on nodes that are not the target's closest once it has
/// formed, and lookups then miss the record until the next put.
pub const STORER_EARLY_INTERVAL: Duration = Duration::from_secs(10);
/// Storer-record puts made at [`STORER_EARLY_INTERVAL`] before [`STORER_INTERVAL`] applies.
pub const STORER_EARLY_PUTS: u32 = 4;
/// Pins are asked to keep an item this long: 30 days.
pub const PIN_KEEP: Duration = Duration::from_secs(30 * 86_400);
/// Most peers with queued packets or accepted as replica guests.
pub const MAX_PEERS: usize = 256;
/// Most packets queued per peer while its session comes up.
pub const MAX_QUEUED: usize = 64;
/// Most synthetic addresses mapped.
pub const MAX_ADDRS: usize = 4096;
/// Directory of fetched replicas, in the profile.
pub const REPLICA_DIR: &str = "replicas";
/// A peer's download of one item is counted again only after this long: 5 min.
pub const DOWNLOAD_DEDUP: Duration = Duration::from_secs(300);
/// Most (fetching peer, item) pairs remembered for [`DOWNLOAD_DEDUP`] (expired pairs are
/// evicted when full, then all).
pub const MAX_RECENT: usize = 4096;
/// Timer period: 100 ms.
const TICK: Duration = Duration::from_millis(100);

/// Value-store target of the storer directory.
pub fn storer_target() -> Target {
    Target(blake3::derive_key("ferry v1 content storers", b""))
}

/// The synthetic address standing for long-term key `pk` in the manager: IPv6 from key bytes
/// 0..16, port from bytes 16..18 (big-endian).
pub fn synth_addr(pk: &PublicKey) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&pk.0[..16]);
    let port = u16::from_be_bytes([pk.0[16], pk.0[17]]);
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    content: ReplicaFileConfig,
}

#[derive(Debug, Default, Deserialize)]
struct ReplicaFileConfig {
    store_for_others: Option<bool>,
    replica_quota_mib: Option<u64>,
    replica_check_secs: Option<u64>,
    replica_downloads_per_replica: Option<u32>,
    replica_extra_ttl_secs: Option<u64>,
    replica_demand_bucket_secs: Option<u64>,
}

/// Replication settings of this node (from `config.toml`).
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// Whether this node stores for others.
    pub store_for_others: bool,
    /// Quota for held items, bytes.
    pub quota_bytes: u64,
    /// Check interval.
    pub check_interval: Duration,
    /// One replica per this many downloads in the demand window (≥ 1).
    pub downloads_per_replica: u32,
    /// Lifetime of an extra replica after its last renewal (≥ 1 s).
    pub extra_ttl: Duration,
    /// Width of one demand bucket; six make the window (≥ 1 s).
    pub demand_bucket: Duration,
}

impl ReplicaSettings {
    /// Reads `[content]` from `<profile>/config.toml` (defaults when absent).
    pub fn load(profile_dir: &Path) -> Self {
        let c = std::fs::read_to_string(profile_dir.join("config.toml"))
            .ok()
            .and_then(|t| toml::from_str::<ConfigFile>(&t).ok())
            .map(|c| c.content)
            .unwrap_or_default();
        Self {
            store_for_others: c.store_for_others.unwrap_or(false),
            quota_bytes: c.replica_quota_mib.unwrap_or(1024) << 20,
            check_interval: Duration::from_secs(c.replica_check_secs.unwrap_or(300).max(1)),
            downloads_per_replica: c.replica_downloads_per_replica.unwrap_or(20).max(1),
            extra_ttl: Duration::from_secs(c.replica_extra_ttl_secs.unwrap_or(1800).max(1)),
            demand_bucket: Duration::from_secs(c.replica_demand_bucket_secs.unwrap_or(600).max(1)),
        }
    }
}

#[derive(Debug, Default)]
struct Fetching {
    /// Content fetch job running for it.
    job: Option<u64>,
    /// Done (content on disk and served).
    done: bool,
    /// Our provider record for it was stored.
    announced: bool,
}

#[derive(Debug)]
struct State {
    mgr: ReplicaManager,
    addrs: HashMap<SocketAddr, PublicKey>,
    storers: HashMap<PublicKey, ProviderRecord>,
    queued: HashMap<PublicKey, VecDeque<Vec<u8>>>,
    online: HashSet<PublicKey>,
    guests: HashSet<PublicKey>,
    /// Items we published with a pin, and the pins placed so far.
    published: HashMap<ContentId, Vec<PublicKey>>,
    fetching: HashMap<ContentId, Fetching>,
    need_candidates: Vec<ContentId>,
    /// Downloads counted lately: (fetching peer, item) → when.
    recent: HashMap<(PublicKey, ContentId), Instant>,
    /// When our storer record is put.
    schedule: RecordSchedule,
    /// Our storer record and its envelope (proof of work done once per record).
    storer_env: Option<(Vec<u8>, MailEnvelope)>,
}

/// Replication host state (one per daemon).
#[derive(Debug)]
pub struct ReplicaShared {
    settings: ReplicaSettings,
    own_pk: PublicKey,
    dir: PathBuf,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn xor_dist(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for i in 0..32 {
        d[i] = a[i] ^ b[i];
    }
    d
}

impl ReplicaShared {
    /// A replication host for the node with long-term key `own_pk`.
    /// `store_content` (`ferry up --store-content`) turns storing on over the config file.
    pub fn new(
        profile_dir: &Path,
        store_content: bool,
        own_pk: PublicKey,
        rng: FerryRng,
    ) -> Arc<Self> {
        let mut settings = ReplicaSettings::load(profile_dir);
        settings.store_for_others |= store_content;
        let config = ReplicaConfig {
            check_interval: settings.check_interval,
            check_timeout: (settings.check_interval / 3).min(Duration::from_secs(5)),
            quota_bytes: settings.quota_bytes,
            capable: settings.store_for_others,
            downloads_per_replica: settings.downloads_per_replica,
            extra_ttl: settings.extra_ttl,
            demand_bucket: settings.demand_bucket,
            ..ReplicaConfig::default()
        };
        let our = PackedNode::udp(synth_addr(&own_pk), own_pk);
        let mgr = ReplicaManager::new(config, our, rng, Instant::now());
        Arc::new(Self {
            settings,
            own_pk,
            dir: profile_dir.join(REPLICA_DIR),
            state: Mutex::new(State {
                mgr,
                addrs: HashMap::new(),
                storers: HashMap::new(),
                queued: HashMap::new(),
                online: HashSet::new(),
                guests: HashSet::new(),
                published: HashMap::new(),
                fetching: HashMap::new(),
                need_candidates: Vec::new(),
                recent: HashMap::new(),
                schedule: RecordSchedule::new(
                    STORER_EARLY_PUTS,
                    STORER_EARLY_INTERVAL,
                    STORER_INTERVAL,
                ),
                storer_env: None,
            }),
        })
    }

    /// Whether this node stores for others.
    pub fn store_for_others(&self) -> bool {
        self.settings.store_for_others
    }

    fn map(st: &mut State, pk: PublicKey) -> SocketAddr {
        let a = synth_addr(&pk);
        if st.addrs.len() >= MAX_ADDRS && !st.addrs.contains_key(&a) {
            st.addrs.clear();
        }
        st.addrs.insert(a, pk);
        a
    }

    /// A replica packet (176) from a friend or guest.
    pub fn on_packet(&self, n: &mut Node, now: Instant, pk: PublicKey, data: &[u8]) {
        let Some(body) = data.get(1..) else { return };
        let mut st = lock(&self.state);
        if let Ok(msg) = ReplicaMsg::decode(body) {
            let holders = match &msg {
                ReplicaMsg::Store(s) => s.holders.clone(),
                ReplicaMsg::Check(c) => c.holders.clone(),
                ReplicaMsg::StoreAck(a) => {
                    if a.accepted
                        && let Some(pins) = st.published.get_mut(&ContentId(a.id))
                        && !pins.contains(&pk)
                        && pins.len() < MAX_PEERS
                    {
                        pins.push(pk);
                    }
                    Vec::new()
                }
                _ => Vec::new(),
            };
            for h in holders {
                let k = h.node.public_key;
                if synth_addr(&k) == h.node.addr {
                    Self::map(&mut st, k);
                }
            }
        }
        let from = Self::map(&mut st, pk);
        st.mgr.handle_datagram(now, from, body);
        self.drive(&mut st, n, now);
    }

    /// The content layer queued a `get` of `blob` for `fetcher` (see "Demand" in the module
    /// docs): counts a download of `blob` when it is an item this node holds or published with a
    /// pin and `fetcher` was not counted for it in the last [`DOWNLOAD_DEDUP`].
    pub fn on_download(&self, n: &mut Node, now: Instant, fetcher: PublicKey, blob: ContentId) {
        let mut st = lock(&self.state);
        let held = st.mgr.holding(&blob.0).is_some();
        let pin = if held {
            None
        } else {
            st.published
                .get(&blob)
                .and_then(|p| p.iter().min().copied())
        };
        // A holder fetching its own replica is not demand.
        let holder = if held {
            st.mgr.holders(&blob.0).contains(&fetcher)
        } else {
            st.published
                .get(&blob)
                .is_some_and(|p| p.contains(&fetcher))
        };
        if (!held && pin.is_none()) || holder {
            return;
        }
        let key = (fetcher, blob);
        if st
            .recent
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < DOWNLOAD_DEDUP)
        {
            return;
        }
        if st.recent.len() >= MAX_RECENT && !st.recent.contains_key(&key) {
            st.recent
                .retain(|_, t| now.saturating_duration_since(*t) < DOWNLOAD_DEDUP);
            if st.recent.len() >= MAX_RECENT {
                st.recent.clear();
            }
        }
        st.recent.insert(key, now);
        if held {
            let counted = st.mgr.record_download(now, &blob.0, fetcher);
            tracing::info!(content = %blob, peer = %fetcher, counted, "replica download");
        } else if let Some(pin) = pin {
            let to = Self::map(&mut st, pin);
            st.mgr.fetch(blob.0, to);
            tracing::info!(content = %blob, peer = %fetcher, pin = %pin, "download forwarded to a pin");
        }
        self.drive(&mut st, n, now);
    }

    /// A session came up or went down.
    pub fn peer_connection(&self, n: &mut Node, now: Instant, pk: PublicKey, online: bool) {
        let mut st = lock(&self.state);
        if online {
            st.online.insert(pk);
            if let Some(q) = st.queued.remove(&pk) {
                for p in q {
                    let _ = n.send_custom(now, &pk, &p);
                }
            }
        } else {
            st.online.remove(&pk);
        }
    }

    /// A handshake from an unknown key: accepted as a guest when we store for others (pins check
    /// each other, publishers push stores).
    pub fn on_unknown_peer(
        &self,
        n: &mut Node,
        now: Instant,
        pk: PublicKey,
        dht_pk: PublicKey,
        addr: SocketAddr,
    ) {
        if !self.settings.store_for_others {
            return;
        }
        let mut st = lock(&self.state);
        if st.guests.len() >= MAX_PEERS {
            return;
        }
        if n.add_friend_norequest(now, pk).is_ok() {
            st.guests.insert(pk);
            let addr = Some(addr).filter(|a| *a != ferry_proto::net_crypto::RELAY_ADDR);
            let _ = n.set_friend_dht_key(now, &pk, dht_pk, addr);
            tracing::info!(peer = %pk, "replica guest accepted");
        }
    }

    fn send(&self, st: &mut State, n: &mut Node, now: Instant, pk: PublicKey, payload: &[u8]) {
        let mut pkt = Vec::with_capacity(payload.len() + 1);
        pkt.push(REPLICA_PACKET_ID);
        pkt.extend_from_slice(payload);
        if st.online.contains(&pk) && n.send_custom(now, &pk, &pkt).is_ok() {
            return;
        }
        if !n.friends().iter().any(|f| f.public_key == pk) {
            let _ = n.add_friend_norequest(now, pk);
        }
        if let Some(r) = st.storers.get(&pk) {
            let _ = n.set_friend_dht_key(now, &pk, r.dht_pk, r.addr);
        }
        if st.queued.len() >= MAX_PEERS && !st.queued.contains_key(&pk) {
            return;
        }
        let q = st.queued.entry(pk).or_default();
        if q.len() < MAX_QUEUED {
            q.push_back(pkt);
        }
    }

    /// Runs the manager's timers, sends its datagrams and collects its events.
    fn drive(&self, st: &mut State, n: &mut Node, now: Instant) {
        if st.mgr.poll_timeout() <= now {
            st.mgr.handle_timeout(now);
        }
        while let Some(t) = st.mgr.poll_transmit() {
            let Destination::Addr(a) = t.destination else {
                continue;
            };
            let Some(&pk) = st.addrs.get(&a) else {
                continue;
            };
            self.send(st, n, now, pk, &t.payload);
        }
        while let Some(ev) = st.mgr.poll_event() {
            match ev {
                ReplicaEvent::NeedCandidates { id } => {
                    let id = ContentId(id);
                    if !st.need_candidates.contains(&id) {
                        st.need_candidates.push(id);
                    }
                }
                ReplicaEvent::Published { id, pins } => {
                    tracing::info!(content = %ContentId(id), pins, "pinned");
                }
                ReplicaEvent::Holding { id, role } => {
                    let id = ContentId(id);
                    tracing::info!(content = %id, ?role, "holding a replica");
                    st.fetching.entry(id).or_default();
                }
                ReplicaEvent::Dropped { id } => {
                    st.fetching.remove(&ContentId(id));
                }
                ReplicaEvent::Fetched { .. } => {}
            }
        }
    }

    /// `POST /v1/content/pin`: pins (`pin`) or unpins content `id`.
    ///
    /// # Errors
    /// Bad id; content this node does not serve.
    pub async fn pin(
        self: &Arc<Self>,
        node: &NodeHandle,
        content: &Arc<ContentShared>,
        req: ferry_api::ContentPin,
    ) -> Result<ferry_api::PinStatus, ApiError> {
        let id = ContentId::from_hex(&req.id)
            .ok_or_else(|| ApiError::bad_request("content id must be 64 hex digits"))?;
        if !req.pin {
            let me = Arc::clone(self);
            let _ = node
                .call(move |n, now| {
                    let mut st = lock(&me.state);
                    st.published.remove(&id);
                    st.fetching.remove(&id);
                    st.mgr.release(&id.0);
                    me.drive(&mut st, n, now);
                })
                .await;
            return Ok(ferry_api::PinStatus {
                id: id.to_hex(),
                role: "none".into(),
                ..ferry_api::PinStatus::default()
            });
        }
        let size = content
            .content_size(&id)
            .ok_or_else(|| ApiError::not_found("publish the content on this node first"))?;
        let me = Arc::clone(self);
        let _ = node
            .call(move |n, now| {
                let mut st = lock(&me.state);
                st.published.entry(id).or_default();
                st.mgr.publish(now, id.0, size, PIN_KEEP);
                me.drive(&mut st, n, now);
            })
            .await;
        Ok(self
            .pins()
            .into_iter()
            .find(|p| p.id == id.to_hex())
            .unwrap_or_default())
    }

    /// `GET /v1/content/pins`: items this node published with a pin or holds for others.
    pub fn pins(&self) -> Vec<ferry_api::PinStatus> {
        let st = lock(&self.state);
        let mut v = Vec::new();
        for (id, pins) in st.published.iter() {
            let holders: Vec<String> = pins.iter().map(PublicKey::to_hex).collect();
            v.push(ferry_api::PinStatus {
                id: id.to_hex(),
                role: "publisher".into(),
                holders,
                fetched: true,
            });
        }
        for (id, role) in st.mgr.held() {
            let cid = ContentId(*id);
            let mut holders: Vec<String> =
                st.mgr.holders(id).into_iter().map(|k| k.to_hex()).collect();
            holders.push(self.own_pk.to_hex());
            holders.sort();
            v.push(ferry_api::PinStatus {
                id: cid.to_hex(),
                role: match role {
                    Role::Pin => "pin".into(),
                    Role::Extra => "extra".into(),
                },
                holders,
                fetched: st.fetching.get(&cid).is_some_and(|f| f.done && f.announced),
            });
        }
        v.sort_by(|a, b| a.id.cmp(&b.id).then(a.role.cmp(&b.role)));
        v
    }

    /// Puts our storer record; returns the DHT keys of the nodes that stored it.
    async fn announce(
        &self,
        node: &NodeHandle,
        data: &Arc<DataShared>,
    ) -> Result<Vec<PublicKey>, ApiError> {
        let status = node
            .status()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let addr = Some(status.local_addr).filter(|a| !a.ip().is_unspecified());
        let record = ProviderRecord {
            public_key: self.own_pk,
            dht_pk: status.dht_public_key,
            addr,
        }
        .encode();
        let target = storer_target();
        let cached = lock(&self.state)
            .storer_env
            .as_ref()
            .filter(|(r, _)| *r == record)
            .map(|(_, e)| e.clone());
        let env = match cached {
            Some(e) => e,
            None => {
                let bits = data.mail_pow_bits();
                let rec = record.clone();
                let env = crate::content::record_envelope(
                    "ferry v1 content storer record",
                    rec,
                    target,
                    bits,
                )
                .await?;
                lock(&self.state).storer_env = Some((record, env.clone()));
                env
            }
        };
        let out = data
            .run(
                node,
                target,
                Operation::Put {
                    item: Item::Mail(env),
                    ttl_s: STORER_TTL.as_secs() as u32,
                    cas: None,
                },
            )
            .await?;
        Ok(out.stored_on)
    }

    /// Reads the storer directory from the DHT.
    async fn refresh_storers(&self, node: &NodeHandle, data: &Arc<DataShared>) {
        let Ok(items) = data.get_items(node, storer_target()).await else {
            return;
        };
        let mut st = lock(&self.state);
        let mut own = false;
        for i in items {
            let Item::Mail(env) = i else { continue };
            let Some(r) = ProviderRecord::decode(&env.sealed) else {
                continue;
            };
            if r.public_key == self.own_pk {
                own = true;
                continue;
            }
            Self::map(&mut st, r.public_key);
            if st.storers.len() < MAX_PEERS || st.storers.contains_key(&r.public_key) {
                st.storers.insert(r.public_key, r);
            }
        }
        if self.settings.store_for_others {
            if !own && st.schedule.puts() > 0 {
                tracing::info!("own storer record not in the directory read: re-putting");
            }
            st.schedule.on_read(own);
        }
    }

    /// Answers the manager's candidate requests from the storer directory.
    async fn answer_candidates(self: &Arc<Self>, node: &NodeHandle, data: &Arc<DataShared>) {
        let ids: Vec<ContentId> = std::mem::take(&mut lock(&self.state).need_candidates);
        if ids.is_empty() {
            return;
        }
        self.refresh_storers(node, data).await;
        for id in ids {
            let mut nodes: Vec<PackedNode> = {
                let st = lock(&self.state);
                st.storers
                    .keys()
                    .map(|k| PackedNode::udp(synth_addr(k), *k))
                    .collect()
            };
            nodes.sort_by_key(|p| xor_dist(&p.public_key.0, &id.0));
            tracing::info!(content = %id, candidates = nodes.len(), "replica candidates");
            let me = Arc::clone(self);
            let _ = node
                .call(move |n, now| {
                    let mut st = lock(&me.state);
                    st.mgr.handle_candidates(now, id.0, &nodes);
                    me.drive(&mut st, n, now);
                })
                .await;
        }
    }

    /// Starts or follows the content fetches of held items.
    async fn fetch_held(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: &Arc<DataShared>,
        content: &Arc<ContentShared>,
    ) {
        let to_announce: Vec<ContentId> = {
            let st = lock(&self.state);
            st.fetching
                .iter()
                .filter(|(_, f)| f.done && !f.announced)
                .map(|(id, _)| *id)
                .collect()
        };
        for id in to_announce {
            if let Ok(n) = content.announce_now(node, data, id).await
                && n > 0
                && let Some(f) = lock(&self.state).fetching.get_mut(&id)
            {
                f.announced = true;
            }
        }
        let work: Vec<(ContentId, Option<u64>)> = {
            let st = lock(&self.state);
            st.fetching
                .iter()
                .filter(|(_, f)| !f.done)
                .map(|(id, f)| (*id, f.job))
                .collect()
        };
        for (id, job) in work {
            if let Some(job) = job {
                let state = content.job(job).map(|j| j.state).unwrap_or_default();
                let mut st = lock(&self.state);
                if let Some(f) = st.fetching.get_mut(&id) {
                    match state.as_str() {
                        "done" => {
                            tracing::info!(content = %id, "replica fetched");
                            f.done = true;
                        }
                        "failed" | "" => f.job = None,
                        _ => {}
                    }
                }
                continue;
            }
            if content.content_size(&id).is_some() {
                if let Some(f) = lock(&self.state).fetching.get_mut(&id) {
                    f.done = true;
                }
                continue;
            }
            let to = self.dir.join(id.to_hex());
            let req = ferry_api::ContentFetch {
                id: id.to_hex(),
                to: to.display().to_string(),
            };
            if let Ok(j) = content.fetch(node, Some(Arc::clone(data)), req).await
                && let Some(f) = lock(&self.state).fetching.get_mut(&id)
            {
                f.job = Some(j.job);
            }
        }
    }
}

/// Starts the replication task: manager timers every 100 ms, candidate lookups, replica
/// fetches, and (when storing for others) the storer record.
pub fn spawn_timer(
    replica: Arc<ReplicaShared>,
    content: Arc<ContentShared>,
    data: Arc<DataShared>,
    node: NodeHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_try: Option<Instant> = None;
        let mut last_due_check: Option<Instant> = None;
        let mut last_refresh = Instant::now();
        let mut last_fetch = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            let r = Arc::clone(&replica);
            if node
                .call(move |n, now| {
                    let mut st = lock(&r.state);
                    r.drive(&mut st, n, now);
                })
                .await
                .is_err()
            {
                return;
            }
            // The placement (a sort of up to 1,024 capable peers) is looked at once a second.
            let placement = if replica.settings.store_for_others
                && last_try.is_none_or(|t| t.elapsed() > Duration::from_secs(2))
                && last_due_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                last_due_check = Some(Instant::now());
                let p = data.placement(&storer_target());
                let due = lock(&replica.state).schedule.due(Instant::now(), &p);
                due.then_some(p)
            } else {
                None
            };
            if let Some(placement) = placement {
                last_try = Some(Instant::now());
                match replica.announce(&node, &data).await {
                    Ok(on) if !on.is_empty() => {
                        let reached = placement.iter().filter(|k| on.contains(k)).count();
                        tracing::info!(
                            stored = on.len(),
                            placement = placement.len(),
                            reached,
                            "storer record announced"
                        );
                        lock(&replica.state)
                            .schedule
                            .on_put(Instant::now(), &placement, on);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e.message, "storer record"),
                }
            }
            replica.answer_candidates(&node, &data).await;
            let unknown = {
                let st = lock(&replica.state);
                st.queued.keys().any(|k| !st.storers.contains_key(k))
            };
            if last_refresh.elapsed() > Duration::from_secs(if unknown { 2 } else { 60 }) {
                last_refresh = Instant::now();
                replica.refresh_storers(&node, &data).await;
                let r = Arc::clone(&replica);
                let _ = node
                    .call(move |n, now| {
                        let st = lock(&r.state);
                        for k in st.queued.keys() {
                            if let Some(rec) = st.storers.get(k) {
                                let _ = n.add_friend_norequest(now, *k);
                                let _ = n.set_friend_dht_key(now, k, rec.dht_pk, rec.addr);
                            }
                        }
                    })
                    .await;
            }
            if last_fetch.elapsed() > Duration::from_secs(1) {
                last_fetch = Instant::now();
                replica.fetch_held(&node, &data, &content).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_address_is_per_key() {
        let a = PublicKey([1; 32]);
        let mut b = [1u8; 32];
        b[17] = 2;
        assert_ne!(synth_addr(&a), synth_addr(&PublicKey(b)));
        assert_eq!(synth_addr(&a), synth_addr(&PublicKey([1; 32])));
    }

    #[test]
    fn settings_from_config() {
        let d = tempfile::tempdir().expect("dir");
        std::fs::write(
            d.path().join("config.toml"),
            "[content]\nstore_for_others = true\nreplica_quota_mib = 2\nreplica_check_secs = 3\n\
             replica_downloads_per_replica = 1\nreplica_extra_ttl_secs = 9\n\
             replica_demand_bucket_secs = 2\n",
        )
        .expect("write");
        let s = ReplicaSettings::load(d.path());
        assert!(s.store_for_others);
        assert_eq!(s.quota_bytes, 2 << 20);
        assert_eq!(s.check_interval, Duration::from_secs(3));
        assert_eq!(s.downloads_per_replica, 1);
        assert_eq!(s.extra_ttl, Duration::from_secs(9));
        assert_eq!(s.demand_bucket, Duration::from_secs(2));
        let d = ReplicaSettings::load(Path::new("/nonexistent"));
        assert_eq!(d.downloads_per_replica, 20);
        assert_eq!(d.demand_bucket, Duration::from_secs(600));
        assert!(!ReplicaSettings::load(Path::new("/nonexistent")).store_for_others);
    }
}
