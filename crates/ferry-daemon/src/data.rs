//! The DHT value store, usernames and offline messages in `ferry up` (issue 9; `data-layer.md`):
//! the daemon's host for the sans-IO [`ferry_data`] crate.
//!
//! * Datagrams 0xe0–0xe4 arrive as [`NodeEvent::ExtensionDatagram`](ferry_proto::node::NodeEvent)
//!   and go to [`StoreHost::handle_datagram`]; replies and lookup requests leave by
//!   [`Node::send_extension_datagram`].
//! * Once a second ([`DataShared::tick`], run inside the node task): store and lookup timeouts,
//!   hello probes to close DHT nodes not probed in the last [`PROBE_INTERVAL`], holder republish,
//!   owner re-puts, mail retries and mailbox collection (every [`COLLECT_INTERVAL`], and as soon
//!   as the first store-capable peer is known).
//! * What the node holds for others is snapshotted to `<profile>/store.snap` (written at most
//!   every [`SAVE_DEBOUNCE`] after a change, and on shutdown) and restored at start, bounded by
//!   the `[store]` table of `<profile>/config.toml` ([`StoreSettings`]). Items this node put
//!   itself (`ferry dht put`, names) are kept in `<profile>/owned.bin` and re-put while it runs
//!   and after a restart; the store-capable peers of the last run (in `mail.json`) are probed
//!   first at start.
//!
//! # Offline messages (`data-layer.md` §3.3)
//!
//! Friends that are ferry nodes say so with a lossless custom packet ([`MAIL_PACKET_ID`]) when
//! they come online; the set is kept in `<profile>/mail.json`. A message to such a friend while
//! it is offline is sealed ([`mailbox::seal`]) with a per-friend sequence number and put at the
//! friend's daily mailbox ([`mailbox::friend_mailbox`]). The friend's node collects its
//! mailboxes (the last 7 days at start, today's and yesterday's afterwards), delivers what it has
//! not delivered yet in sequence order per sender (a per-sender high-water mark, persisted),
//! deletes what it fetched ([`Item::MailDelete`]) and acknowledges the high-water mark to the
//! sender (`ack` packet when online, else in the next `hello`). A mailed message is not resent
//! by net_crypto when the friend comes online: the sender resends the ones above the friend's
//! high-water mark as `direct` packets, which go through the same high-water mark (exactly once).
//!
//! Mail control packet, `[183][kind u8]…` (integers big-endian):
//!
//! | kind | body | meaning |
//! |---|---|---|
//! | 0 hello | `[hw u64]` | I am a ferry node; I delivered your mail up to `hw` |
//! | 1 ack | `[hw u64]` | I delivered your mail up to `hw` |
//! | 2 direct | `[seq u64][flags u8][text]` | mail `seq` sent directly (flags bit 0: action) |
//!
//! Friend requests are also left in the recipient's request mailbox
//! ([`mailbox::request_mailbox`]: its key and nospam); a node collects its own request mailbox
//! with its friends' mailboxes and handles what it finds like a request from the onion.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_api::ApiError;
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PrecomputedCache, PublicKey};
use ferry_data::host::{StoreHost, probe};
use ferry_data::item::{Item, MAX_MAIL_TTL, MutableItem, PutError, Target};
use ferry_data::lookup::{K, Lookup, LookupEvent, Operation};
use ferry_data::mailbox::{self, MailMessage};
use ferry_data::name;
use ferry_data::store::{Store, StoreConfig};
use ferry_data::wire::{Found, StoreMessage};
use ferry_net::NodeHandle;
use ferry_proto::node::Node;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::chat::ChatShared;

/// Lossless custom packet id of the mail control packets (see the module docs).
pub const MAIL_PACKET_ID: u8 = 183;
/// Snapshot file of the store, in the profile.
pub const SNAPSHOT_FILE: &str = "store.snap";
/// Offline-message bookkeeping file, in the profile.
pub const MAIL_FILE: &str = "mail.json";
/// A close DHT node is (re)probed with a hello this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Mailboxes are collected this often.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(15);
/// A changed store is written at most this often.
pub const SAVE_DEBOUNCE: Duration = Duration::from_secs(5);
/// Holder republish is checked this often.
const REPUBLISH_CHECK: Duration = Duration::from_secs(60);
/// Holder re-puts started per tick (second) at most.
const REPUBLISH_PER_TICK: usize = 16;
/// A mail put that reached no node is retried after this long, at most [`MAIL_RETRIES`] times.
const MAIL_RETRY: Duration = Duration::from_secs(5);
const MAIL_RETRIES: u32 = 60;
/// Most lookups running at once (further starts are refused).
const MAX_LOOKUPS: usize = 256;
/// Most mailed-but-unacknowledged messages remembered.
const MAX_MAILED: usize = 4096;
/// Longest wait of an API lookup.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an API lookup waits for a first store-capable peer.
const CAPABLE_WAIT: Duration = Duration::from_secs(15);

/// The `[store]` table of `<profile>/config.toml`.
///
/// ```toml
/// [store]
/// quota_bytes = 8388608   # bytes held for others (default 8 MiB)
/// max_items = 8192        # items held for others, mail included (default 8192)
/// puts_per_minute = 16    # puts accepted per source /24 (IPv4) or /48 (IPv6) per minute
/// per_source_items = 64   # items held per source prefix
/// ```
///
/// Every node of a loopback test network is one source (127.0.0.0/24): such networks raise
/// the per-source limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Bytes of items held for others (the disk quota: the snapshot is about this size).
    pub quota_bytes: u64,
    /// Items held for others.
    pub max_items: u64,
    /// Puts accepted per source prefix per minute.
    pub puts_per_minute: u32,
    /// Items held per source prefix.
    pub per_source_items: u64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let c = StoreConfig::default();
        Self {
            quota_bytes: c.max_bytes as u64,
            max_items: c.max_items as u64,
            puts_per_minute: c.puts_per_minute,
            per_source_items: c.per_source_items as u64,
        }
    }
}

impl StoreSettings {
    /// Reads the `[store]` table (defaults when the file or table is missing).
    ///
    /// # Errors
    /// Unreadable file, TOML syntax, wrong types, unknown keys.
    pub fn load(profile_dir: &Path) -> anyhow::Result<Self> {
        let path = profile_dir.join(crate::market::CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The `[store]` table of a config file's text.
    ///
    /// # Errors
    /// TOML syntax, wrong types, unknown keys.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        match table.remove("store") {
            None => Ok(Self::default()),
            Some(v) => Ok(v.try_into()?),
        }
    }

    fn config(&self) -> StoreConfig {
        StoreConfig {
            max_bytes: usize::try_from(self.quota_bytes).unwrap_or(usize::MAX),
            max_items: usize::try_from(self.max_items).unwrap_or(usize::MAX),
            puts_per_minute: self.puts_per_minute,
            per_source_items: usize::try_from(self.per_source_items).unwrap_or(usize::MAX),
            ..StoreConfig::default()
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A message mailed to an offline friend, kept until the friend acknowledges it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Mailed {
    friend: String,
    seq: u64,
    action: bool,
    text: String,
}

/// `<profile>/mail.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct MailBook {
    /// Friends (hex keys) known to be ferry nodes.
    ferry_friends: BTreeSet<String>,
    /// Last mail sequence number used per friend.
    next_out: BTreeMap<String, u64>,
    /// History sequence number → mailed message, until acknowledged.
    mailed: BTreeMap<u64, Mailed>,
    /// Highest mail sequence number delivered per sender.
    inbox_hw: BTreeMap<String, u64>,
    /// Names this node registered (renewed after each start).
    names: BTreeSet<String>,
    /// Store-capable peers last known (`IP:PORT`, DHT key hex), probed first after a restart.
    peers: Vec<(String, String)>,
}

/// Items this node put (`ferry dht put`, names), re-put after a restart.
pub const OWNED_FILE: &str = "owned.bin";
/// Most owned items kept alive.
const MAX_OWNED: usize = 1024;

/// `owned.bin`: `"FDO1"[count u32]` then per item `[target 32][ttl_s u32][item]`.
fn encode_owned(owned: &HashMap<Target, Owned>) -> Vec<u8> {
    let mut out = b"FDO1".to_vec();
    out.extend_from_slice(&(owned.len() as u32).to_be_bytes());
    for (t, o) in owned {
        out.extend_from_slice(&t.0);
        out.extend_from_slice(&o.ttl_s.to_be_bytes());
        o.item.encode(&mut out);
    }
    out
}

fn decode_owned(
    bytes: &[u8],
    next: Instant,
) -> Result<HashMap<Target, Owned>, ferry_wire::WireError> {
    let mut r = ferry_wire::Reader::new(bytes);
    if &r.array::<4>("owned magic")? != b"FDO1" {
        return Err(ferry_wire::WireError::InvalidValue {
            what: "owned magic",
            value: 0,
        });
    }
    let n = r.u32_be("owned count")?;
    let mut out = HashMap::new();
    for _ in 0..n.min(MAX_OWNED as u32) {
        let target = Target(r.array("owned target")?);
        let ttl_s = r.u32_be("owned ttl")?;
        let item = Item::decode(&mut r)?;
        out.insert(target, Owned { item, ttl_s, next });
    }
    Ok(out)
}

/// Most capable peers remembered across restarts.
const SAVED_PEERS: usize = 64;

/// What a finished lookup collected.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Verified values (newest last) or mail envelopes.
    pub items: Vec<Item>,
    /// Puts acknowledged.
    pub stored: usize,
    /// Refusals.
    pub refused: Vec<PutError>,
    /// Smallest granted lifetime, s.
    pub min_ttl: Option<u32>,
    /// DHT keys of the nodes that stored the put (acknowledged it), in answer order.
    pub stored_on: Vec<PublicKey>,
}

enum Purpose {
    Api(Option<oneshot::Sender<Outcome>>),
    Background,
    Owned(Target),
    MailPut(MailPut),
    MailCollect {
        friend: PublicKey,
        target: Target,
        round: u64,
    },
    RequestCollect {
        target: Target,
    },
}

struct Running {
    lookup: Lookup,
    purpose: Purpose,
    out: Outcome,
}

/// Soonest re-put of an announced record after its target's closest nodes changed or a read
/// missed it (3 s); doubled per consecutive re-put that still leaves a closest node without the
/// record ([`RecordSchedule`]).
pub const FOLLOW_REPUT: Duration = Duration::from_secs(3);

/// When this node puts a record it announces at a target (storer records,
/// [`crate::replica`]; content provider records, [`crate::content`]). Sans-IO: the host passes
/// `now` and the target's current placement (DHT keys, [`DataShared::placement`]).
///
/// A put is due:
/// * first, then every `early_interval` for `early_puts` puts, then every `interval`;
/// * when a node of the current placement did not store the last put (a closer node joined, a
///   holder left or timed out during the put), or a read did not find the record,
///   [`FOLLOW_REPUT`] after the last put, doubling per consecutive such re-put (cap `interval`),
///   back to [`FOLLOW_REPUT`] once a put reaches the whole placement.
///
/// Issue 10: records sat on the 2 loopback holders of their target; once the closest pair
/// changed (a node started closer, a holder stopped, a holder timed out under load) readers
/// asked nodes without some records, and nothing re-put them for 30 min.
#[derive(Clone, Debug)]
pub struct RecordSchedule {
    early_puts: u32,
    early_interval: Duration,
    interval: Duration,
    last_put: Option<Instant>,
    puts: u32,
    stored_on: Vec<PublicKey>,
    /// Consecutive re-puts that left the placement short (backoff exponent).
    misses: u32,
    /// A directory read did not find our record since the last put.
    missing: bool,
}

impl RecordSchedule {
    /// A schedule with `early_puts` puts every `early_interval`, then every `interval`.
    pub fn new(early_puts: u32, early_interval: Duration, interval: Duration) -> Self {
        Self {
            early_puts,
            early_interval,
            interval,
            last_put: None,
            puts: 0,
            stored_on: Vec::new(),
            misses: 0,
            missing: false,
        }
    }

    /// Wait before a follow-up re-put after `misses` short ones.
    fn follow_wait(&self, misses: u32) -> Duration {
        FOLLOW_REPUT
            .saturating_mul(1u32 << misses.min(16))
            .min(self.interval)
    }

    fn regular(&self) -> Duration {
        if self.puts < self.early_puts {
            self.early_interval
        } else {
            self.interval
        }
    }

    /// Whether the record should be put at `now`, the target's placement being `placement`.
    pub fn due(&self, now: Instant, placement: &[PublicKey]) -> bool {
        let Some(last) = self.last_put else {
            return true;
        };
        let since = now.saturating_duration_since(last);
        if since >= self.regular() {
            return true;
        }
        let short = placement.iter().any(|k| !self.stored_on.contains(k));
        (short || self.missing) && since >= self.follow_wait(self.misses)
    }

    /// A put at `now` was stored by `stored_on` (DHT keys, non-empty) while the placement was
    /// `placement`.
    pub fn on_put(&mut self, now: Instant, placement: &[PublicKey], stored_on: Vec<PublicKey>) {
        let regular = self.regular();
        let follow = self
            .last_put
            .is_some_and(|t| now.saturating_duration_since(t) < regular);
        let reached = placement.iter().all(|k| stored_on.contains(k));
        self.misses = if reached {
            0
        } else if follow {
            self.misses.saturating_add(1)
        } else {
            self.misses
        };
        if !follow {
            self.puts = self.puts.saturating_add(1);
        }
        self.last_put = Some(now);
        self.stored_on = stored_on;
        self.missing = false;
    }

    /// A read of the target found (`true`) or missed our record; ignored before the first put.
    pub fn on_read(&mut self, found: bool) {
        if self.last_put.is_some() && !found {
            self.missing = true;
        }
    }

    /// Regular puts made so far (follow-ups not counted).
    pub fn puts(&self) -> u32 {
        self.puts
    }
}

/// An item this node owns and keeps alive by re-putting.
struct Owned {
    item: Item,
    ttl_s: u32,
    next: Instant,
}

struct Collect {
    round: u64,
    remaining: usize,
    found: Vec<(MailMessage, Target)>,
}

struct State {
    host: StoreHost,
    rng: FerryRng,
    lookups: HashMap<u64, Running>,
    next_id: u64,
    probed: HashMap<PublicKey, Instant>,
    next_republish: Instant,
    /// Holder re-puts waiting to start.
    republish: std::collections::VecDeque<ferry_data::store::Republish>,
    owned: HashMap<Target, Owned>,
    /// Mail puts that stored nowhere, with when to try again.
    mail_retry: Vec<(Instant, MailPut)>,
    book: MailBook,
    book_dirty: bool,
    collect_at: Option<Instant>,
    collected_once: bool,
    collects: HashMap<PublicKey, Collect>,
    next_round: u64,
    saved_sig: (usize, usize, u64, u64),
    /// Capable peers of the last run, probed on the first tick.
    saved_peers: Vec<(SocketAddr, PublicKey)>,
    last_save: Option<Instant>,
}

/// The data layer of a running node: shared by the node task (datagrams, ticks) and the API.
pub struct DataShared {
    profile_dir: PathBuf,
    identity: KeyPair,
    settings: StoreSettings,
    state: Mutex<State>,
}

impl std::fmt::Debug for DataShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataShared")
            .field("profile_dir", &self.profile_dir)
            .finish_non_exhaustive()
    }
}

impl DataShared {
    /// The data layer for a node with DHT key pair `dht_keys` and long-term key pair `identity`;
    /// restores `<profile>/store.snap` and `<profile>/mail.json` when present.
    ///
    /// # Errors
    /// Unreadable config; a bad snapshot is logged and ignored.
    pub fn open(
        profile_dir: &Path,
        identity: KeyPair,
        dht_keys: &KeyPair,
        mut rng: FerryRng,
    ) -> anyhow::Result<Arc<Self>> {
        let settings = StoreSettings::load(profile_dir)?;
        let now = Instant::now();
        let config = settings.config();
        let store = match std::fs::read(profile_dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                match Store::restore(dht_keys.public, config.clone(), &bytes, now, &mut rng) {
                    Ok(s) => {
                        tracing::info!(items = s.stats().items, "store restored");
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "store snapshot unreadable; starting empty");
                        Store::new(dht_keys.public, config, now, &mut rng)
                    }
                }
            }
            Err(_) => Store::new(dht_keys.public, config, now, &mut rng),
        };
        let book: MailBook = std::fs::read(profile_dir.join(MAIL_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        // Our own items: re-put a few seconds after start (once peers are known).
        let owned = std::fs::read(profile_dir.join(OWNED_FILE))
            .ok()
            .and_then(|b| decode_owned(&b, now + Duration::from_secs(5)).ok())
            .unwrap_or_default();
        let saved_peers = book
            .peers
            .iter()
            .filter_map(|(a, k)| Some((a.parse().ok()?, PublicKey::from_hex(k).ok()?)))
            .take(SAVED_PEERS)
            .collect();
        let stats = store.stats();
        let host = StoreHost::new(
            dht_keys.public,
            store,
            PrecomputedCache::new(dht_keys.secret.clone(), 256),
        );
        Ok(Arc::new(Self {
            profile_dir: profile_dir.to_path_buf(),
            identity,
            settings,
            state: Mutex::new(State {
                host,
                rng,
                lookups: HashMap::new(),
                next_id: 0,
                probed: HashMap::new(),
                next_republish: now + REPUBLISH_CHECK,
                republish: std::collections::VecDeque::new(),
                owned,
                mail_retry: Vec::new(),
                book,
                book_dirty: false,
                collect_at: Some(now),
                collected_once: false,
                collects: HashMap::new(),
                next_round: 0,
                saved_sig: (stats.items, stats.bytes, 0, 0),
                saved_peers,
                last_save: None,
            }),
        }))
    }

    /// `GET /v1/store/status`.
    pub fn status(&self) -> ferry_api::StoreStatus {
        let st = lock(&self.state);
        let s = st.host.store.stats();
        ferry_api::StoreStatus {
            items: s.items as u64,
            bytes: s.bytes as u64,
            quota_bytes: self.settings.quota_bytes,
            max_items: self.settings.max_items,
            capable_nodes: st.host.capable.len() as u64,
            puts_accepted: s.puts_accepted,
            puts_refused: s.puts_refused,
            evicted: s.evicted,
        }
    }

    /// Writes the snapshot (and the mail book) if anything changed, at most every
    /// [`SAVE_DEBOUNCE`] unless `force`.
    pub fn save(&self, force: bool) {
        let now = Instant::now();
        let (snap, book) = {
            let mut st = lock(&self.state);
            let s = st.host.store.stats();
            let sig = (s.items, s.bytes, s.puts_accepted, s.evicted);
            let due = force
                || st
                    .last_save
                    .is_none_or(|t| now.saturating_duration_since(t) >= SAVE_DEBOUNCE);
            let snap = (sig != st.saved_sig && due).then(|| {
                st.saved_sig = sig;
                st.last_save = Some(now);
                st.host.store.snapshot(now)
            });
            let book = st
                .book_dirty
                .then(|| serde_json::to_vec_pretty(&st.book).ok())
                .flatten();
            st.book_dirty = false;
            (snap, book)
        };
        if let Some(b) = snap {
            write_atomic(&self.profile_dir.join(SNAPSHOT_FILE), &b);
        }
        if let Some(b) = book {
            write_atomic(&self.profile_dir.join(MAIL_FILE), &b);
        }
    }

    /// A store datagram (0xe0–0xe4) from `from`, inside the node task.
    pub fn on_datagram(
        &self,
        chat: &ChatShared,
        node: &mut Node,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) {
        let mut g = lock(&self.state);
        let st = &mut *g;
        let was_empty = st.host.capable.is_empty();
        let Some(h) = st.host.handle_datagram(now, from, data, &mut st.rng) else {
            return;
        };
        if let Some(r) = h.reply {
            node.send_extension_datagram(from, r);
        }
        if matches!(
            h.message,
            StoreMessage::GetResponse(_) | StoreMessage::PutResponse(_)
        ) {
            for r in st.lookups.values_mut() {
                if r.lookup.handle_response(&h.from_key, &h.message) {
                    break;
                }
            }
        }
        if was_empty && !st.host.capable.is_empty() {
            // The first store-capable peer: collect the mailboxes now.
            st.collect_at = Some(now);
            self.maybe_collect(st, chat, now);
        }
        self.drive(st, chat, node, now);
    }

    /// Timers, once a second, inside the node task.
    pub fn tick(&self, chat: &ChatShared, node: &mut Node, now: Instant) {
        let mut g = lock(&self.state);
        let st = &mut *g;
        if now >= st.host.store.poll_timeout() {
            st.host.store.handle_timeout(now, &mut st.rng);
        }
        for r in st.lookups.values_mut() {
            r.lookup.handle_timeout(now);
        }
        st.host.capable.expire(now);
        // Hello probes to close DHT nodes.
        st.probed
            .retain(|_, t| now.saturating_duration_since(*t) < PROBE_INTERVAL);
        let mut probes = 0;
        for (addr, key) in std::mem::take(&mut st.saved_peers) {
            let msg = probe(&mut st.rng);
            if let Some(b) = st.host.seal(&key, &msg, &mut st.rng) {
                node.send_extension_datagram(addr, b);
                probes += 1;
            }
        }
        let close = node.dht().close_nodes(now);
        for c in &close {
            if !c.good || st.probed.contains_key(&c.public_key) {
                continue;
            }
            st.probed.insert(c.public_key, now);
            let msg = probe(&mut st.rng);
            if let Some(b) = st.host.seal(&c.public_key, &msg, &mut st.rng) {
                node.send_extension_datagram(c.addr, b);
                probes += 1;
            }
        }
        if probes > 0 {
            tracing::debug!(
                probes,
                close = close.len(),
                capable = st.host.capable.len(),
                "store probes sent"
            );
        }
        // Holder republish.
        if now >= st.next_republish {
            st.next_republish = now + REPUBLISH_CHECK;
            let due = st.host.store.due_republish(now, &mut st.rng);
            let room = st.host.store.config().max_items;
            for r in due {
                if st.republish.len() < room {
                    st.republish.push_back(r);
                }
            }
        }
        // A few re-puts per second, so a full store does not start thousands of lookups at once.
        for _ in 0..REPUBLISH_PER_TICK {
            if st.lookups.len() >= MAX_LOOKUPS / 2 {
                break;
            }
            let Some(r) = st.republish.pop_front() else {
                break;
            };
            let op = Operation::Put {
                item: r.item,
                ttl_s: r.ttl_s,
                cas: None,
            };
            start(st, now, r.target, op, Purpose::Background);
        }
        // Owner re-puts.
        let due: Vec<(Target, Item, u32)> = st
            .owned
            .iter_mut()
            .filter(|(_, o)| now >= o.next)
            .map(|(t, o)| {
                o.next = now + Duration::from_secs(3600);
                (*t, o.item.clone(), o.ttl_s)
            })
            .collect();
        for (t, item, ttl_s) in due {
            let op = Operation::Put {
                item,
                ttl_s,
                cas: None,
            };
            start(st, now, t, op, Purpose::Owned(t));
        }
        // Mail retries.
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.mail_retry)
            .into_iter()
            .partition(|(at, _)| now >= *at);
        st.mail_retry = keep;
        for (_, put) in due {
            start_mail_put(st, now, put);
        }
        self.maybe_collect(st, chat, now);
        self.drive(st, chat, node, now);
    }

    /// Starts a collection round of every friend's mailboxes when due and a capable peer is
    /// known.
    fn maybe_collect(&self, st: &mut State, chat: &ChatShared, now: Instant) {
        if st.host.capable.is_empty() || st.collect_at.is_none_or(|t| now < t) {
            return;
        }
        st.collect_at = Some(now + COLLECT_INTERVAL);
        let epochs: Vec<u64> = if st.collected_once {
            mailbox::poll_epochs(unix_now()).take(2).collect()
        } else {
            mailbox::poll_epochs(unix_now()).collect()
        };
        st.collected_once = true;
        let nospam = chat.nospam().to_be_bytes();
        for e in &epochs {
            let target = mailbox::request_mailbox(&self.identity.public, nospam, *e);
            let p = Purpose::RequestCollect { target };
            start(st, now, target, Operation::Get { seq: None }, p);
        }
        // Only ferry friends can have left mail (they said hello at least once).
        let friends: Vec<_> = chat
            .store
            .friends()
            .unwrap_or_default()
            .into_iter()
            .filter(|f| {
                st.book
                    .ferry_friends
                    .contains(&f.public_key.to_ascii_uppercase())
            })
            .collect();
        tracing::debug!(
            friends = friends.len(),
            capable = st.host.capable.len(),
            epochs = epochs.len(),
            "collecting mailboxes"
        );
        for f in friends {
            let Ok(pk) = PublicKey::from_hex(&f.public_key) else {
                continue;
            };
            if st.collects.contains_key(&pk) {
                continue;
            }
            st.next_round += 1;
            let round = st.next_round;
            let mut n = 0;
            for e in &epochs {
                let target =
                    mailbox::friend_mailbox(&self.identity.secret, &pk, &self.identity.public, *e);
                let p = Purpose::MailCollect {
                    friend: pk,
                    target,
                    round,
                };
                if start(st, now, target, Operation::Get { seq: None }, p) {
                    n += 1;
                }
            }
            if n > 0 {
                st.collects.insert(
                    pk,
                    Collect {
                        round,
                        remaining: n,
                        found: Vec::new(),
                    },
                );
            }
        }
    }

    /// Sends every lookup's requests, collects events, and handles finished lookups (which may
    /// start others) until nothing more happens.
    fn drive(&self, st: &mut State, chat: &ChatShared, node: &mut Node, now: Instant) {
        for _ in 0..8 {
            let mut done = Vec::new();
            let mut mail = Vec::new();
            let mut requests = Vec::new();
            for (id, r) in st.lookups.iter_mut() {
                while let Some((to, msg)) = r.lookup.poll_transmit(now, &mut st.rng) {
                    if let Some(b) = st.host.seal(&to.public_key, &msg, &mut st.rng) {
                        node.send_extension_datagram(to.addr, b);
                    }
                }
                while let Some(ev) = r.lookup.poll_event() {
                    match ev {
                        LookupEvent::Mail { item, .. } => match &r.purpose {
                            Purpose::MailCollect { friend, target, .. } => {
                                mail.push((*friend, *target, item));
                            }
                            Purpose::RequestCollect { target } => requests.push((*target, item)),
                            // Multi-writer records read through the API path (content
                            // provider records, `crate::content`) and channel join requests
                            // (mail, `crate::channel`).
                            Purpose::Api(_) => r.out.items.push(item),
                            _ => {}
                        },
                        LookupEvent::Value { item, .. } => r.out.items.push(item),
                        LookupEvent::Stored { ttl_s, node } => {
                            r.out.stored += 1;
                            r.out.stored_on.push(node.public_key);
                            r.out.min_ttl = Some(r.out.min_ttl.map_or(ttl_s, |m| m.min(ttl_s)));
                        }
                        LookupEvent::Refused { error, .. } => r.out.refused.push(error),
                        LookupEvent::Finished { .. } => done.push(*id),
                    }
                }
            }
            // Mail is delivered as it arrives when it is the next in sequence (no waiting for
            // the slowest lookup of the round).
            let mut touched = BTreeSet::new();
            for (friend, target, item) in mail {
                if let Item::Mail(env) = &item
                    && let Ok(m) = mailbox::open(&self.identity.secret, env)
                    && m.sender == friend
                    && let Some(c) = st.collects.get_mut(&friend)
                {
                    c.found.push((m, target));
                    touched.insert(friend.0);
                }
            }
            for f in touched {
                self.deliver_mail(st, chat, node, now, PublicKey(f), false);
            }
            for (target, item) in requests {
                let Item::Mail(env) = &item else {
                    continue;
                };
                let Ok(m) = mailbox::open(&self.identity.secret, env) else {
                    continue;
                };
                if !chat.is_friend(&m.sender) {
                    tracing::info!(from = %m.sender, "friend request from the request mailbox");
                    chat.on_friend_request(node, now, m.sender, &m.body);
                }
                let op = Operation::Put {
                    item: m.delete_item(),
                    ttl_s: MAX_MAIL_TTL.as_secs() as u32,
                    cas: None,
                };
                start(st, now, target, op, Purpose::Background);
            }
            if done.is_empty() {
                return;
            }
            for id in done {
                if let Some(r) = st.lookups.remove(&id) {
                    self.finished(st, chat, node, now, r);
                }
            }
        }
    }

    fn finished(
        &self,
        st: &mut State,
        chat: &ChatShared,
        node: &mut Node,
        now: Instant,
        r: Running,
    ) {
        match r.purpose {
            Purpose::Api(tx) => {
                if let Some(tx) = tx {
                    let _ = tx.send(r.out);
                }
            }
            Purpose::Background | Purpose::RequestCollect { .. } => {}
            Purpose::Owned(t) => {
                if let Some(o) = st.owned.get_mut(&t) {
                    // Re-put at half the shortest lifetime granted (young storers grant 60 s);
                    // refused everywhere (e.g. a newer version exists): every 10 min.
                    let wait = if r.out.stored == 0 && !r.out.refused.is_empty() {
                        600
                    } else {
                        r.out.min_ttl.map_or(30, |t| (t / 2).max(30)).min(3600)
                    };
                    o.next = now + Duration::from_secs(u64::from(wait));
                }
            }
            Purpose::MailPut(put) => {
                if r.out.stored == 0 && put.tries < MAIL_RETRIES {
                    let tries = put.tries + 1;
                    st.mail_retry
                        .push((now + MAIL_RETRY, MailPut { tries, ..put }));
                } else if put.request {
                    tracing::info!(stored = r.out.stored, "offline friend request stored");
                } else {
                    tracing::info!(stored = r.out.stored, "offline message stored");
                }
            }
            Purpose::MailCollect { friend, round, .. } => {
                let Some(c) = st.collects.get_mut(&friend).filter(|c| c.round == round) else {
                    return;
                };
                c.remaining = c.remaining.saturating_sub(1);
                tracing::debug!(friend = %friend, left = c.remaining, "mailbox lookup done");
                if c.remaining == 0 {
                    self.deliver_mail(st, chat, node, now, friend, true);
                    st.collects.remove(&friend);
                }
            }
        }
    }

    /// Delivers collected mail from `friend` above the high-water mark in sequence order: the
    /// next expected ones at once, the rest (after a gap) when the round ends (`round_over`).
    /// Deletes what was delivered (and duplicates) at the holders and acknowledges.
    fn deliver_mail(
        &self,
        st: &mut State,
        chat: &ChatShared,
        node: &mut Node,
        now: Instant,
        friend: PublicKey,
        round_over: bool,
    ) {
        let Some(c) = st.collects.get_mut(&friend) else {
            return;
        };
        let mut found = std::mem::take(&mut c.found);
        if found.is_empty() {
            return;
        }
        found.sort_by_key(|(m, _)| m.seq);
        let hex = friend.to_hex();
        let old_hw = st.book.inbox_hw.get(&hex).copied().unwrap_or(0);
        let mut hw = old_hw;
        let mut keep = Vec::new();
        let mut deletes = Vec::new();
        for (m, target) in found {
            if m.seq > hw && (m.seq == hw + 1 || round_over) {
                let (action, text) = decode_body(&m.body);
                chat.deliver_offline(&friend, action, &text, m.sent_unix.saturating_mul(1000));
                hw = m.seq;
                tracing::info!(from = %friend, seq = m.seq, "offline message delivered");
            }
            if m.seq <= hw {
                deletes.push((target, m.delete_item()));
            } else {
                keep.push((m, target));
            }
        }
        if let Some(c) = st.collects.get_mut(&friend) {
            c.found = keep;
        }
        for (target, item) in deletes {
            let op = Operation::Put {
                item,
                ttl_s: MAX_MAIL_TTL.as_secs() as u32,
                cas: None,
            };
            start(st, now, target, op, Purpose::Background);
        }
        if hw > old_hw {
            st.book.inbox_hw.insert(hex.clone(), hw);
            st.book.ferry_friends.insert(hex);
            self.save_book(st);
            let _ = node.send_custom(now, &friend, &control(1, hw));
        }
    }

    /// Writes the mail book now (inside the node task: the high-water marks must be on disk
    /// before a restart could collect the same mail again).
    fn save_book(&self, st: &mut State) {
        if let Ok(b) = serde_json::to_vec_pretty(&st.book) {
            write_atomic(&self.profile_dir.join(MAIL_FILE), &b);
            st.book_dirty = false;
        }
    }

    /// Before shutdown: tells every capable peer we no longer accept puts (a hello with
    /// `accepts = false`), so they stop handing us out as a holder while our entry ages out.
    pub fn goodbye(&self, node: &mut Node) {
        let mut g = lock(&self.state);
        let st = &mut *g;
        let peers = st
            .host
            .capable
            .closest(&Target(st.host.our_pk.0), ferry_data::host::MAX_CAPABLE);
        st.book.peers = peers
            .iter()
            .take(SAVED_PEERS)
            .map(|p| (p.addr.to_string(), p.public_key.to_hex()))
            .collect();
        st.book_dirty = true;
        for p in peers {
            let msg = StoreMessage::Hello(ferry_data::wire::Hello {
                is_response: false,
                request_id: [0; 8],
                accepts: false,
            });
            if let Some(b) = st.host.seal(&p.public_key, &msg, &mut st.rng) {
                node.send_extension_datagram(p.addr, b);
            }
        }
    }

    /// Whether history message `seq` was mailed (and is not to be resent by net_crypto).
    pub fn is_mailed(&self, seq: u64) -> bool {
        lock(&self.state).book.mailed.contains_key(&seq)
    }

    /// A friend came online: say hello (with what we delivered of its mail).
    pub fn friend_online(&self, node: &mut Node, now: Instant, friend: PublicKey) {
        let hw = lock(&self.state)
            .book
            .inbox_hw
            .get(&friend.to_hex())
            .copied()
            .unwrap_or(0);
        let _ = node.send_custom(now, &friend, &control(0, hw));
    }

    /// A mail control packet from `friend` (see the module docs).
    pub fn on_control(
        &self,
        chat: &ChatShared,
        node: &mut Node,
        now: Instant,
        friend: PublicKey,
        data: &[u8],
    ) {
        let (Some(&kind), Some(seq)) = (
            data.get(1),
            data.get(2..10)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes),
        ) else {
            return;
        };
        let hex = friend.to_hex();
        let mut st = lock(&self.state);
        if st.book.ferry_friends.insert(hex.clone()) {
            st.book_dirty = true;
        }
        match kind {
            0 | 1 => {
                let acked: Vec<u64> = st
                    .book
                    .mailed
                    .iter()
                    .filter(|(_, m)| m.friend == hex && m.seq <= seq)
                    .map(|(h, _)| *h)
                    .collect();
                for h in acked {
                    st.book.mailed.remove(&h);
                    st.book_dirty = true;
                    chat.mark_delivered_seq(h);
                }
                if kind == 0 {
                    // Resend what the friend has not got yet, directly.
                    for m in st.book.mailed.values().filter(|m| m.friend == hex) {
                        let mut p = vec![MAIL_PACKET_ID, 2];
                        p.extend_from_slice(&m.seq.to_be_bytes());
                        p.push(u8::from(m.action));
                        p.extend_from_slice(m.text.as_bytes());
                        let _ = node.send_custom(now, &friend, &p);
                    }
                }
            }
            2 => {
                let hw = st.book.inbox_hw.get(&hex).copied().unwrap_or(0);
                let mut new_hw = hw;
                if seq > hw {
                    let (action, text) = decode_body(data.get(10..).unwrap_or_default());
                    chat.deliver_offline(&friend, action, &text, crate::chat::now_ms());
                    tracing::info!(from = %friend, seq, "offline message delivered directly");
                    new_hw = seq;
                    st.book.inbox_hw.insert(hex, seq);
                    self.save_book(&mut st);
                }
                let _ = node.send_custom(now, &friend, &control(1, new_hw));
            }
            _ => {}
        }
    }

    /// Inside the node task, after `ferry send` found `friend` offline: if the friend is a
    /// ferry node, seals the message into its mailbox. Returns whether it was mailed.
    pub fn mail_out(
        &self,
        node: &mut Node,
        now: Instant,
        friend: PublicKey,
        history_seq: u64,
        action: bool,
        text: &str,
    ) -> bool {
        let hex = friend.to_hex();
        let mut g = lock(&self.state);
        let st = &mut *g;
        if !st.book.ferry_friends.contains(&hex) || st.book.mailed.len() >= MAX_MAILED {
            return false;
        }
        let mut body = vec![u8::from(action)];
        body.extend_from_slice(text.as_bytes());
        if body.len() > mailbox::MAX_BODY {
            return false;
        }
        let seq = st.book.next_out.get(&hex).copied().unwrap_or(0) + 1;
        let unix = unix_now();
        let target = mailbox::friend_mailbox(
            &self.identity.secret,
            &friend,
            &friend,
            mailbox::epoch_of(unix),
        );
        let pow = st.host.store.config().mail_pow_bits;
        let Ok((env, _)) = mailbox::seal(
            &self.identity,
            &friend,
            &target,
            pow,
            seq,
            unix,
            &body,
            &mut st.rng,
        ) else {
            return false;
        };
        st.book.next_out.insert(hex.clone(), seq);
        st.book.mailed.insert(
            history_seq,
            Mailed {
                friend: hex,
                seq,
                action,
                text: text.to_string(),
            },
        );
        st.book_dirty = true;
        start_mail_put(st, now, MailPut::first(target, env, false));
        send_requests(st, node, now);
        true
    }

    /// Inside the node task, after `ferry friend add`: seals the request into the recipient's
    /// request mailbox (its key and nospam, today's epoch), for a recipient that is offline.
    pub fn mail_request(
        &self,
        node: &mut Node,
        now: Instant,
        recipient: PublicKey,
        nospam: u32,
        message: &[u8],
    ) {
        let mut g = lock(&self.state);
        let st = &mut *g;
        let unix = unix_now();
        let target =
            mailbox::request_mailbox(&recipient, nospam.to_be_bytes(), mailbox::epoch_of(unix));
        let pow = st.host.store.config().mail_pow_bits;
        let body = &message[..message.len().min(mailbox::MAX_BODY)];
        let Ok((env, _)) = mailbox::seal(
            &self.identity,
            &recipient,
            &target,
            pow,
            1,
            unix,
            body,
            &mut st.rng,
        ) else {
            return;
        };
        start_mail_put(st, now, MailPut::first(target, env, true));
        send_requests(st, node, now);
    }

    /// Runs one lookup from the API and waits for its outcome.
    pub(crate) async fn run(
        self: &Arc<Self>,
        node: &NodeHandle,
        target: Target,
        op: Operation,
    ) -> Result<Outcome, ApiError> {
        let waited = Instant::now();
        while lock(&self.state).host.capable.is_empty() {
            if waited.elapsed() > CAPABLE_WAIT {
                return Err(ApiError::unavailable(
                    "no store-capable DHT node known yet; try again",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (tx, rx) = oneshot::channel();
        let me = Arc::clone(self);
        let started = node
            .call(move |n, now| {
                let mut st = lock(&me.state);
                let ok = start(&mut st, now, target, op, Purpose::Api(Some(tx)));
                send_requests(&mut st, n, now);
                ok
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if !started {
            return Err(ApiError::unavailable("too many lookups running"));
        }
        tokio::time::timeout(API_TIMEOUT, rx)
            .await
            .map_err(|_| ApiError::unavailable("lookup timed out"))?
            .map_err(|_| ApiError::unavailable("node stopped"))
    }

    /// Puts `item` at `target` on the k closest capable nodes (used for content provider
    /// records, [`crate::content`]); returns how many stored it.
    ///
    /// # Errors
    /// No capable node known, lookup timeout.
    pub async fn put_item(
        self: &Arc<Self>,
        node: &NodeHandle,
        target: Target,
        item: Item,
        ttl_s: u32,
    ) -> Result<usize, ApiError> {
        let out = self
            .run(
                node,
                target,
                Operation::Put {
                    item,
                    ttl_s,
                    cas: None,
                },
            )
            .await?;
        Ok(out.stored)
    }

    /// Puts `item` (which this node owns) at `target` for [`ferry_data::item::MAX_TTL`] and
    /// keeps it alive (owner re-puts, also after a restart). Returns how many nodes stored it.
    ///
    /// # Errors
    /// 503 when no node stored it (the refusals named after `what`), lookup errors.
    async fn put_owned(
        self: &Arc<Self>,
        node: &NodeHandle,
        target: Target,
        item: Item,
        what: &str,
    ) -> Result<usize, ApiError> {
        let ttl_s = ferry_data::item::MAX_TTL.as_secs() as u32;
        let out = self
            .run(
                node,
                target,
                Operation::Put {
                    item: item.clone(),
                    ttl_s,
                    cas: None,
                },
            )
            .await?;
        self.own(target, item, ttl_s, out.min_ttl);
        if out.stored == 0 {
            return Err(ApiError::unavailable(format!(
                "no node stored the {what} (refusals: {:?})",
                out.refused
            )));
        }
        Ok(out.stored)
    }

    /// Every item (or mail envelope) found at `target`.
    ///
    /// # Errors
    /// No capable node known, lookup timeout.
    pub async fn get_items(
        self: &Arc<Self>,
        node: &NodeHandle,
        target: Target,
    ) -> Result<Vec<Item>, ApiError> {
        let mut local = Vec::new();
        {
            let st = lock(&self.state);
            let now = Instant::now();
            let mut seq = None;
            for _ in 0..64 {
                match st.host.store.lookup(now, &target, seq) {
                    Found::Item(i) => {
                        local.push(i);
                        break;
                    }
                    Found::Mail { slot, item } => {
                        local.push(item);
                        seq = Some(slot + 1);
                    }
                    _ => break,
                }
            }
        }
        let mut items = self
            .run(node, target, Operation::Get { seq: None })
            .await?
            .items;
        items.extend(local);
        Ok(items)
    }

    /// DHT keys of the nodes a put to `target` would land on now, from the store-capable peers
    /// this node knows ([`ferry_data::lookup::placement`]: up to k, closest first, at most 2 per
    /// /24 or /48).
    pub fn placement(&self, target: &Target) -> Vec<PublicKey> {
        let st = lock(&self.state);
        let known = st
            .host
            .capable
            .closest(target, ferry_data::lookup::MAX_CANDIDATES);
        ferry_data::lookup::placement(&st.host.our_pk, target, &known)
            .into_iter()
            .map(|n| n.public_key)
            .collect()
    }

    /// Proof-of-work bits this node's store asks of mail envelopes.
    pub fn mail_pow_bits(&self) -> u32 {
        lock(&self.state).host.store.config().mail_pow_bits
    }

    /// `POST /v1/dht/put`.
    pub async fn dht_put(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::DhtPut,
    ) -> Result<ferry_api::DhtPutResult, ApiError> {
        let value = req.value.into_bytes();
        let (item, seq) = match req.salt {
            None => (Item::Immutable(value), None),
            Some(salt) => {
                let seq = req.seq.unwrap_or_else(unix_now);
                let key = self.item_key();
                (
                    Item::Mutable(MutableItem::sign(&key, salt.as_bytes(), seq, &value)),
                    Some(seq),
                )
            }
        };
        item.verify()
            .map_err(|e| ApiError::bad_request(format!("item refused: {e:?}")))?;
        let target = item
            .implied_target()
            .ok_or_else(|| ApiError::bad_request("item has no target"))?;
        let stored = self.put_owned(node, target, item, "item").await?;
        Ok(ferry_api::DhtPutResult {
            target: hex::encode(target.0),
            stored: stored as u64,
            seq,
        })
    }

    pub(crate) fn own(&self, target: Target, item: Item, ttl_s: u32, min_ttl: Option<u32>) {
        let half = min_ttl.map_or(30, |t| (t / 2).max(30)).min(3600);
        let bytes = {
            let mut st = lock(&self.state);
            if st.owned.len() >= MAX_OWNED && !st.owned.contains_key(&target) {
                return;
            }
            st.owned.insert(
                target,
                Owned {
                    item,
                    ttl_s,
                    next: Instant::now() + Duration::from_secs(u64::from(half)),
                },
            );
            encode_owned(&st.owned)
        };
        write_atomic(&self.profile_dir.join(OWNED_FILE), &bytes);
    }

    /// What this node itself holds at `target` (an item, or the mail envelopes there): a
    /// lookup does not ask the node that runs it.
    pub(crate) fn local(&self, target: &Target) -> Vec<Item> {
        let st = lock(&self.state);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut slot = None;
        for _ in 0..256 {
            match st.host.store.lookup(now, target, slot) {
                Found::Item(i) => {
                    out.push(i);
                    break;
                }
                Found::Mail { slot: s, item } => {
                    out.push(item);
                    slot = Some(s + 1);
                }
                _ => break,
            }
        }
        out
    }

    /// Re-puts someone else's signed or self-certifying item while this node runs (BEP 44: anyone
    /// may re-put a signed item), e.g. a channel member keeping the channel's state, heads and
    /// newest posts alive while their authors are offline. A no-op when the same item is kept
    /// already (its re-put schedule is not pushed back).
    pub(crate) fn keep(&self, target: Target, item: Item, ttl_s: u32) {
        let bytes = {
            let mut st = lock(&self.state);
            if st.owned.get(&target).is_some_and(|o| o.item == item) {
                return;
            }
            if st.owned.len() >= MAX_OWNED && !st.owned.contains_key(&target) {
                return;
            }
            st.owned.insert(
                target,
                Owned {
                    item,
                    ttl_s,
                    next: Instant::now() + Duration::from_secs(30),
                },
            );
            encode_owned(&st.owned)
        };
        write_atomic(&self.profile_dir.join(OWNED_FILE), &bytes);
    }

    /// Stops re-putting an owned item (a channel's post that left the head).
    pub(crate) fn disown(&self, target: &Target) {
        let bytes = {
            let mut st = lock(&self.state);
            if st.owned.remove(target).is_none() {
                return;
            }
            encode_owned(&st.owned)
        };
        write_atomic(&self.profile_dir.join(OWNED_FILE), &bytes);
    }

    /// The Ed25519 key that signs this node's mutable items (derived from the long-term secret).
    fn item_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&blake3::derive_key(
            "ferry v1 dht mutable item key",
            &self.identity.secret.to_bytes(),
        ))
    }

    /// `POST /v1/dht/get`.
    pub async fn dht_get(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::DhtGet,
    ) -> Result<ferry_api::DhtGetResult, ApiError> {
        let bytes: [u8; 32] = hex::decode(req.target.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ApiError::bad_request("target must be 64 hex digits"))?;
        let target = Target(bytes);
        let local = match lock(&self.state)
            .host
            .store
            .lookup(Instant::now(), &target, None)
        {
            Found::Item(i) => Some(i),
            _ => None,
        };
        let out = self.run(node, target, Operation::Get { seq: None }).await?;
        let best = out
            .items
            .into_iter()
            .chain(local)
            .filter(|i| i.implied_target() == Some(target))
            .max_by_key(Item::seq);
        let mut r = ferry_api::DhtGetResult {
            target: hex::encode(target.0),
            ..Default::default()
        };
        let Some(item) = best else {
            return Ok(r);
        };
        let (kind, value, seq) = match &item {
            Item::Immutable(v) => ("immutable", v.clone(), None),
            Item::Mutable(m) => ("mutable", m.value.clone(), Some(m.seq)),
            Item::Claimed(c) => ("claimed", c.value.clone(), Some(c.seq)),
            _ => return Ok(r),
        };
        r.found = true;
        r.kind = kind.into();
        r.value = String::from_utf8_lossy(&value).into_owned();
        r.value_hex = hex::encode(&value);
        r.seq = seq;
        Ok(r)
    }

    /// `POST /v1/names/resolve`.
    pub async fn name_resolve(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::NameRequest,
    ) -> Result<ferry_api::NameInfo, ApiError> {
        let n = name::normalize(&req.name)
            .map_err(|_| ApiError::bad_request("invalid name (a-z 0-9 . _ -, 1-63 bytes)"))?;
        let (rec, pk) = self.find_name(node, &n).await?;
        Ok(ferry_api::NameInfo {
            name: n,
            tox_id: rec.tox_id.to_string(),
            fingerprint: hex::encode(&pk[..8]),
            expires_unix: rec.expires_unix,
        })
    }

    /// The newest valid record of normalized name `n` and its owner key.
    ///
    /// # Errors
    /// 404 not registered; lookup errors.
    async fn find_name(
        self: &Arc<Self>,
        node: &NodeHandle,
        n: &str,
    ) -> Result<(name::NameRecord, [u8; 32]), ApiError> {
        let target = name::name_target(n);
        let out = self.run(node, target, Operation::Get { seq: None }).await?;
        let bits = lock(&self.state).host.store.config().claim_pow_bits;
        let now_unix = unix_now();
        out.items
            .iter()
            .filter_map(|i| name::resolve(n, i, bits, now_unix).ok())
            .max_by_key(|(r, _)| r.registered_unix)
            .ok_or_else(|| ApiError::not_found(format!("name {n:?} is not registered")))
    }

    /// `POST /v1/names/register`: first claim wins; re-registering one's own name renews it.
    pub async fn name_register(
        self: &Arc<Self>,
        node: &NodeHandle,
        tox_id: ferry_wire::toxid::ToxId,
        req: ferry_api::NameRequest,
    ) -> Result<ferry_api::NameInfo, ApiError> {
        let n = name::normalize(&req.name)
            .map_err(|_| ApiError::bad_request("invalid name (a-z 0-9 . _ -, 1-63 bytes)"))?;
        let secret = self.identity.secret.to_bytes();
        let own_pk = name::owner_key(&secret, &n).verifying_key().to_bytes();
        match self.name_resolve(node, req.clone()).await {
            Ok(info) if info.fingerprint != hex::encode(&own_pk[..8]) => {
                return Err(ApiError::conflict(format!(
                    "name {n:?} is taken (owner fingerprint {})",
                    info.fingerprint
                )));
            }
            _ => {}
        }
        let bits = lock(&self.state).host.store.config().claim_pow_bits;
        let now_unix = unix_now();
        let record = name::NameRecord::new(tox_id, now_unix);
        let seed =
            ferry_crypto::rng::os_seed().map_err(|e| ApiError::unavailable(e.to_string()))?;
        let nn = n.clone();
        let claimed = tokio::task::spawn_blocking(move || {
            let mut rng = FerryRng::from_seed(seed);
            name::register(&secret, &nn, &record, now_unix, bits, &mut rng)
        })
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|_| ApiError::bad_request("invalid name"))?;
        let item = Item::Claimed(claimed);
        let target = name::name_target(&n);
        let ttl_s = name::NAME_LIFETIME.as_secs() as u32;
        let out = self
            .run(
                node,
                target,
                Operation::Put {
                    item: item.clone(),
                    ttl_s,
                    cas: None,
                },
            )
            .await?;
        if out.stored == 0 {
            return Err(if out.refused.is_empty() {
                ApiError::unavailable("no node stored the record")
            } else {
                ApiError::conflict(format!(
                    "name {n:?} refused by its holders: {:?}",
                    out.refused
                ))
            });
        }
        self.own(target, item, ttl_s, out.min_ttl);
        {
            let mut st = lock(&self.state);
            if st.book.names.insert(n.clone()) {
                st.book_dirty = true;
            }
        }
        Ok(ferry_api::NameInfo {
            name: n,
            tox_id: record.tox_id.to_string(),
            fingerprint: hex::encode(&own_pk[..8]),
            expires_unix: record.expires_unix,
        })
    }
}

impl DataShared {
    /// Binds `name` (registered by this node) to `content_id`, the latest version of a site
    /// ([`ferry_data::site`]): puts the signed, sealed head and keeps it alive (owner re-puts).
    ///
    /// # Errors
    /// 400 invalid name; 409 the name is someone else's; 404 not registered; 503 no holder.
    pub async fn site_publish(
        self: &Arc<Self>,
        node: &NodeHandle,
        name_: &str,
        content_id: [u8; 32],
    ) -> Result<(ferry_data::site::SiteHead, ferry_api::NameInfo), ApiError> {
        let n = name::normalize(name_)
            .map_err(|_| ApiError::bad_request("invalid name (a-z 0-9 . _ -, 1-63 bytes)"))?;
        let secret = self.identity.secret.to_bytes();
        let own_pk = name::owner_key(&secret, &n).verifying_key().to_bytes();
        let info = self
            .name_resolve(node, ferry_api::NameRequest { name: n.clone() })
            .await?;
        if info.fingerprint != hex::encode(&own_pk[..8]) {
            return Err(ApiError::conflict(format!(
                "name {n:?} belongs to someone else (owner fingerprint {})",
                info.fingerprint
            )));
        }
        // Strictly newer than any head put before (two publications in one second).
        let prev = self.site_resolve(node, &n).await.ok();
        let published_unix = unix_now().max(prev.map_or(0, |(h, _)| h.published_unix + 1));
        let head = ferry_data::site::SiteHead {
            content_id,
            published_unix,
        };
        let m = {
            let mut st = lock(&self.state);
            ferry_data::site::sign_head(&secret, &n, &head, &mut st.rng)
        }
        .map_err(|_| ApiError::bad_request("invalid name"))?;
        let target = ferry_data::site::head_target(&own_pk);
        self.put_owned(node, target, Item::Mutable(m), "site head")
            .await?;
        Ok((head, info))
    }

    /// The latest head of the site under `name`, and the name's record.
    ///
    /// # Errors
    /// 400 invalid name; 404 name not registered or no site published under it.
    pub async fn site_resolve(
        self: &Arc<Self>,
        node: &NodeHandle,
        name_: &str,
    ) -> Result<(ferry_data::site::SiteHead, ferry_api::NameInfo), ApiError> {
        let n = name::normalize(name_)
            .map_err(|_| ApiError::bad_request("invalid name (a-z 0-9 . _ -, 1-63 bytes)"))?;
        let (rec, owner) = self.find_name(node, &n).await?;
        let head_target = ferry_data::site::head_target(&owner);
        let local = match lock(&self.state)
            .host
            .store
            .lookup(Instant::now(), &head_target, None)
        {
            Found::Item(i) => Some(i),
            _ => None,
        };
        let out = self
            .run(node, head_target, Operation::Get { seq: None })
            .await?;
        let head = out
            .items
            .iter()
            .chain(local.as_ref())
            .filter_map(|i| ferry_data::site::open_head(&n, &owner, i).ok())
            .max_by_key(|h| h.published_unix)
            .ok_or_else(|| ApiError::not_found(format!("no site is published under {n:?}")))?;
        let info = ferry_api::NameInfo {
            name: n,
            tox_id: rec.tox_id.to_string(),
            fingerprint: hex::encode(&owner[..8]),
            expires_unix: rec.expires_unix,
        };
        Ok((head, info))
    }
}

/// Starts a lookup seeded with the closest capable peers; `false` when too many run.
fn start(st: &mut State, _now: Instant, target: Target, op: Operation, purpose: Purpose) -> bool {
    if st.lookups.len() >= MAX_LOOKUPS {
        return false;
    }
    let seeds = st.host.capable.closest(&target, K);
    let bits = st.host.store.config().claim_pow_bits;
    let lookup = Lookup::new(st.host.our_pk, target, op, seeds).with_pow_bits(bits);
    st.next_id += 1;
    st.lookups.insert(
        st.next_id,
        Running {
            lookup,
            purpose,
            out: Outcome::default(),
        },
    );
    true
}

/// One sealed envelope on its way to a mailbox (offline message or friend request).
#[derive(Debug, Clone)]
struct MailPut {
    target: Target,
    item: Item,
    /// Earlier attempts that stored nowhere (at most [`MAIL_RETRIES`]).
    tries: u32,
    /// A friend request (request mailbox), not a message.
    request: bool,
}

impl MailPut {
    /// The first attempt to put envelope `env` at mailbox `target`.
    fn first(target: Target, env: ferry_data::item::MailEnvelope, request: bool) -> Self {
        Self {
            target,
            item: Item::Mail(env),
            tries: 0,
            request,
        }
    }
}

fn start_mail_put(st: &mut State, now: Instant, put: MailPut) {
    let op = Operation::Put {
        item: put.item.clone(),
        ttl_s: MAX_MAIL_TTL.as_secs() as u32,
        cas: None,
    };
    start(st, now, put.target, op, Purpose::MailPut(put));
}

/// Sends the lookups' pending requests (events stay queued for the next drive).
fn send_requests(st: &mut State, node: &mut Node, now: Instant) {
    for r in st.lookups.values_mut() {
        while let Some((to, msg)) = r.lookup.poll_transmit(now, &mut st.rng) {
            if let Some(b) = st.host.seal(&to.public_key, &msg, &mut st.rng) {
                node.send_extension_datagram(to.addr, b);
            }
        }
    }
}

fn control(kind: u8, hw: u64) -> Vec<u8> {
    let mut p = vec![MAIL_PACKET_ID, kind];
    p.extend_from_slice(&hw.to_be_bytes());
    p
}

fn decode_body(body: &[u8]) -> (bool, String) {
    match body.split_first() {
        Some((flags, text)) => (flags & 1 == 1, String::from_utf8_lossy(text).into_owned()),
        None => (false, String::new()),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(error = %e, path = %path.display(), "saving");
    }
}

/// Spawns the once-a-second timer (inside the node task), the debounced snapshot writer and,
/// once a store-capable peer is known, the renewal of the names this node registered.
pub fn spawn_timer(
    data: Arc<DataShared>,
    chat: Arc<ChatShared>,
    node: NodeHandle,
    tox_id: ferry_wire::toxid::ToxId,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut names_renewed = false;
        loop {
            iv.tick().await;
            if !names_renewed && !lock(&data.state).host.capable.is_empty() {
                names_renewed = true;
                let names: Vec<String> = lock(&data.state).book.names.iter().cloned().collect();
                let (d, n) = (Arc::clone(&data), node.clone());
                tokio::spawn(async move {
                    for name in names {
                        let r = d
                            .name_register(
                                &n,
                                tox_id,
                                ferry_api::NameRequest { name: name.clone() },
                            )
                            .await;
                        tracing::info!(name, ok = r.is_ok(), "name renewed");
                    }
                });
            }
            let (d, c) = (Arc::clone(&data), Arc::clone(&chat));
            if node.call(move |n, now| d.tick(&c, n, now)).await.is_err() {
                return;
            }
            let d = Arc::clone(&data);
            let _ = tokio::task::spawn_blocking(move || d.save(false)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[u8]) -> Vec<PublicKey> {
        ids.iter().map(|&i| PublicKey([i; 32])).collect()
    }

    #[test]
    fn record_follows_its_placement() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        use crate::replica::{STORER_EARLY_INTERVAL, STORER_EARLY_PUTS, STORER_INTERVAL};
        let mut s = RecordSchedule::new(STORER_EARLY_PUTS, STORER_EARLY_INTERVAL, STORER_INTERVAL);
        assert!(s.due(t0, &[]));
        // Early puts every 10 s; the put reached the placement {1, 2}.
        s.on_put(at(0), &keys(&[1, 2]), keys(&[1, 2]));
        assert!(!s.due(at(5), &keys(&[1, 2])));
        assert!(s.due(at(10), &keys(&[1, 2])));
        for i in 1..STORER_EARLY_PUTS {
            s.on_put(at(10 * u64::from(i)), &keys(&[1, 2]), keys(&[1, 2]));
        }
        assert_eq!(s.puts(), STORER_EARLY_PUTS);
        let last = 10 * u64::from(STORER_EARLY_PUTS - 1);
        // Steady: nothing changes, nothing is put until the regular interval.
        assert!(!s.due(at(last + 600), &keys(&[1, 2])));
        assert!(s.due(at(last) + STORER_INTERVAL, &keys(&[1, 2])));
        // A closer node (3) joins the placement: re-put after FOLLOW_REPUT, not before (this
        // was 30 min: the case of the issue-10 flake).
        let p = keys(&[3, 1]);
        assert!(!s.due(at(last + 1), &p));
        assert!(s.due(at(last) + FOLLOW_REPUT, &p));
        let t1 = at(last + 100);
        s.on_put(t1, &p, keys(&[3, 1]));
        assert_eq!(
            s.puts(),
            STORER_EARLY_PUTS,
            "a follow-up is not a regular put"
        );
        assert!(!s.due(t1 + Duration::from_secs(600), &p));
        // A holder (3) stops answering: 4 is in the placement but each put misses it; the
        // follow-ups back off 3, 6, 12 s.
        let p = keys(&[1, 4]);
        let mut t = t1 + FOLLOW_REPUT;
        assert!(s.due(t, &p));
        s.on_put(t, &p, keys(&[1]));
        assert!(!s.due(t + FOLLOW_REPUT, &p));
        assert!(s.due(t + 2 * FOLLOW_REPUT, &p));
        t += 2 * FOLLOW_REPUT;
        s.on_put(t, &p, keys(&[1]));
        assert!(!s.due(t + 3 * FOLLOW_REPUT, &p));
        assert!(s.due(t + 4 * FOLLOW_REPUT, &p));
        // Once a put reaches the whole placement, the backoff resets.
        t += 4 * FOLLOW_REPUT;
        s.on_put(t, &p, keys(&[1, 4]));
        assert!(!s.due(t + Duration::from_secs(60), &p));
        assert!(s.due(t + FOLLOW_REPUT, &keys(&[5, 1])));
        // A directory read that misses our record makes a put due, one that finds it does not.
        s.on_read(true);
        assert!(!s.due(t + FOLLOW_REPUT, &p));
        s.on_read(false);
        assert!(!s.due(t + Duration::from_secs(1), &p));
        assert!(s.due(t + FOLLOW_REPUT, &p));
        s.on_put(t + FOLLOW_REPUT, &p, keys(&[1, 4]));
        assert!(!s.due(t + 2 * FOLLOW_REPUT, &p));
        // The backoff is capped at the regular interval.
        assert_eq!(s.follow_wait(40), STORER_INTERVAL);
    }

    #[test]
    fn store_table_defaults_and_parses() {
        let d = StoreSettings::parse("").expect("empty");
        assert_eq!(d, StoreSettings::default());
        assert_eq!(d.quota_bytes, 8 << 20);
        let s = StoreSettings::parse("[store]\nquota_bytes = 1024\n").expect("table");
        assert_eq!(s.quota_bytes, 1024);
        assert_eq!(s.max_items, 8192);
        assert!(StoreSettings::parse("[store]\nbogus = 1\n").is_err());
    }

    #[test]
    fn owned_items_round_trip() {
        let now = Instant::now();
        let item = Item::Immutable(b"mine".to_vec());
        let t = item.implied_target().expect("target");
        let mut owned = HashMap::new();
        owned.insert(
            t,
            Owned {
                item: item.clone(),
                ttl_s: 7200,
                next: now,
            },
        );
        let back = decode_owned(&encode_owned(&owned), now).expect("decode");
        let o = back.get(&t).expect("kept");
        assert_eq!((&o.item, o.ttl_s), (&item, 7200));
        assert!(decode_owned(b"junk", now).is_err());
    }

    #[test]
    fn mail_bodies_round_trip() {
        assert_eq!(decode_body(b"\x01waves"), (true, "waves".into()));
        assert_eq!(decode_body(b"\x00hi"), (false, "hi".into()));
        assert_eq!(decode_body(b""), (false, String::new()));
        assert_eq!(
            control(1, 7),
            vec![MAIL_PACKET_ID, 1, 0, 0, 0, 0, 0, 0, 0, 7]
        );
    }
}
