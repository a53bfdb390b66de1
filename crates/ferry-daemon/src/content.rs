//! Content publish and fetch in `ferry up` (issue 10 item 1; `data-layer.md` §3.4, §3.5): the
//! daemon's host for the sans-IO [`ferry_content`] crate.
//!
//! # Store (`<profile>/content/`)
//! * `index.json`: the blobs this node serves (id, length, the file they live in) and the
//!   content ids (manifests) it announces. Files are served **in place** (from the published
//!   path, or from where a fetch wrote them), not copied: a blob whose file changed length is
//!   dropped when it is next read. `obao/<id>`: each blob's bao outboard (64 B per 16 KiB
//!   group); `manifests/<id>`: manifest blobs.
//! * Quota: the bytes of all blobs served stay ≤ [`DEFAULT_QUOTA`] (or `[content] quota_mib`
//!   in `config.toml`); a publish or fetch beyond it is refused. `[content] upload_kib_s` caps
//!   the rate this node serves content at (all fetchers together; default: no cap).
//!
//! # Provider records in the DHT (`data-layer.md` §3.5)
//! A provider announces content id `C` by putting a record at the value-store target
//! `BLAKE3-derive("ferry v1 content providers", C)` as a multi-writer *mail envelope*
//! ([`Item::Mail`], so up to 64 providers per target share it, each with the store's
//! proof-of-work and per-source quotas). The envelope's `sealed` bytes are the plain record
//! (public content has nothing to hide), `delete_hash = BLAKE3-derive("ferry v1 content
//! provider record", record)` so a re-put of the same record only refreshes it:
//!
//! | field | size |
//! |---|---|
//! | version | 1 (= 1) |
//! | long-term key | 32 |
//! | DHT key | 32 |
//! | address family | 1 (0 none, 4, 6) |
//! | IP | 0, 4 or 16 |
//! | UDP port | 2 (BE, absent with family 0) |
//!
//! TTL [`PROVIDER_TTL`] (2 h); providers re-announce every [`ANNOUNCE_INTERVAL`], and within
//! seconds when the target's closest nodes change ([`RecordSchedule`]). Records are
//! not signed: a false record only costs a fetcher a failed session (the net_crypto handshake
//! proves the long-term key, and every byte is verified against the content id).
//!
//! # Transfer
//! Fetcher and provider talk over a net_crypto session with the lossless custom packets 188
//! and 189 ([`ferry_content::wire`]). Sessions are friend-only in Tox, so the fetcher adds each
//! provider with [`Node::add_friend_norequest`] and [`Node::set_friend_dht_key`] (key and
//! address from the record), and a node serving content accepts a handshake from an unknown
//! key ([`NodeEvent::UnknownPeer`](ferry_proto::node::NodeEvent)) the same way, as a *guest*
//! (at most [`MAX_GUESTS`], removed after [`GUEST_IDLE`] without content packets; guests are
//! not stored in the profile). The provider answers each `get` with the bao range response
//! paced by net_crypto's send budget ([`ferry_proto::net_crypto::NetCrypto::send_budget`]);
//! the fetcher runs one [`Fetch`] per blob (first the manifest, then each file), writes verified
//! groups at their offset and renames each file into place when complete. Fetched files are
//! then served in place and announced (downloaders become providers).
//!
//! One fetch job runs at a time. `FERRY_TEST_CORRUPT_CONTENT=1` (tests only) makes this node
//! flip a byte in every file group it serves.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{ApiError, ContentJob};
use ferry_content::blob::{Outboard, group_bytes};
use ferry_content::fetch::{Fetch, FetchConfig, FetchEvent};
use ferry_content::manifest::{Entry, Kind, Manifest};
use ferry_content::wire::{ContentPacket, MAX_DATA_CHUNK, WHOLE};
use ferry_content::{ContentId, group_count};
use ferry_crypto::PublicKey;
use ferry_data::item::{Item, MailEnvelope, Target};
use ferry_data::lookup::Operation;
use ferry_net::NodeHandle;
use ferry_proto::node::{Connection, Node};
use serde::{Deserialize, Serialize};

use crate::data::{DataShared, RecordSchedule};

/// Directory of the content store, in the profile.
pub const CONTENT_DIR: &str = "content";
/// Default quota on the bytes of all blobs served: 64 GiB.
pub const DEFAULT_QUOTA: u64 = 64 << 30;
/// Lifetime asked for provider records: 2 h (`data-layer.md` §3.5).
pub const PROVIDER_TTL: Duration = Duration::from_secs(2 * 3600);
/// Providers re-announce this often: 30 min.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Most guests (unknown peers accepted to fetch from us) at once: 64.
pub const MAX_GUESTS: usize = 64;
/// A guest without content packets for this long is removed: 120 s.
pub const GUEST_IDLE: Duration = Duration::from_secs(120);
/// Most queued `get`s per peer (more are answered `missing`): 512.
pub const MAX_SERVE_QUEUE: usize = 512;
/// Most providers one fetch connects to: 16.
pub const MAX_FETCH_PROVIDERS: usize = 16;
/// Provider records are checked for a due put this often (3 s: [`RecordSchedule`]).
pub const REANNOUNCE_CHECK: Duration = Duration::from_secs(3);
/// A provider record no node stored yet is tried again this often (60 s).
pub const UNSTORED_RETRY: Duration = Duration::from_secs(60);
/// A fetch fails when no provider is found or serves for this long: 60 s.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A running fetch that made no progress for this long reads the provider records again and
/// adds providers it did not know (3 s; issue 10: a fetch that first found only providers that
/// had left waited out [`STALL_TIMEOUT`] although live ones had announced since).
pub const PROVIDER_REREAD: Duration = Duration::from_secs(3);
/// Most finished jobs kept for `/v1/content/job`: 64.
pub const MAX_JOBS_KEPT: usize = 64;
/// Pump period while transfers run: 1 ms.
pub const TICK: Duration = Duration::from_millis(1);

/// Value-store target of content `id`'s provider records.
pub fn provider_target(id: &ContentId) -> Target {
    Target(blake3::derive_key("ferry v1 content providers", &id.0))
}

/// A provider record (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRecord {
    /// Long-term key.
    pub public_key: PublicKey,
    /// DHT key (new at every start).
    pub dht_pk: PublicKey,
    /// UDP address, if the provider knows a specific one.
    pub addr: Option<SocketAddr>,
}

impl ProviderRecord {
    /// Encodes (layout in the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![1];
        b.extend_from_slice(&self.public_key.0);
        b.extend_from_slice(&self.dht_pk.0);
        match self.addr {
            None => b.push(0),
            Some(SocketAddr::V4(a)) => {
                b.push(4);
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.port().to_be_bytes());
            }
            Some(SocketAddr::V6(a)) => {
                b.push(6);
                b.extend_from_slice(&a.ip().octets());
                b.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        b
    }

    /// Decodes; `None` on any malformation.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let mut r = ferry_wire::Reader::new(b);
        if r.u8("version").ok()? != 1 {
            return None;
        }
        let public_key = PublicKey(r.array::<32>("pk").ok()?);
        let dht_pk = PublicKey(r.array::<32>("dht").ok()?);
        let addr = match r.u8("family").ok()? {
            0 => None,
            4 => {
                let ip = IpAddr::from(r.array::<4>("ip").ok()?);
                Some(SocketAddr::new(ip, r.u16_be("port").ok()?))
            }
            6 => {
                let ip = IpAddr::from(r.array::<16>("ip").ok()?);
                Some(SocketAddr::new(ip, r.u16_be("port").ok()?))
            }
            _ => return None,
        };
        r.finish().ok()?;
        Some(Self {
            public_key,
            dht_pk,
            addr,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IndexBlob {
    id: String,
    len: u64,
    path: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Index {
    blobs: Vec<IndexBlob>,
    contents: Vec<String>,
}

#[derive(Debug)]
struct Blob {
    len: u64,
    /// The file it lives in (`None`: a manifest held in memory).
    path: Option<PathBuf>,
    /// Manifest bytes.
    bytes: Option<Arc<Vec<u8>>>,
    outboard: Arc<Outboard>,
    file: Option<Arc<File>>,
}

#[derive(Debug, Default)]
struct Serving {
    queue: VecDeque<(u32, ContentId, u64, u64)>,
    /// Request id, encoded response, bytes sent.
    current: Option<(u32, Vec<u8>, usize)>,
}

#[derive(Debug)]
enum Phase {
    Finding,
    Manifest(Fetch<PublicKey>, Vec<u8>),
    Files {
        manifest: Manifest,
        index: usize,
        fetch: Fetch<PublicKey>,
        file: File,
        tmp: PathBuf,
    },
    Done,
    Failed,
}

#[derive(Debug)]
struct Job {
    id: u64,
    content: ContentId,
    to: PathBuf,
    started: Instant,
    first_live: Option<Instant>,
    /// When it finished (done or failed).
    ended: Option<Instant>,
    last_progress: Instant,
    phase: Phase,
    error: Option<String>,
    name: String,
    total: u64,
    /// Bytes of files completed before the current one.
    done_bytes: u64,
    providers: Vec<ProviderRecord>,
    used: HashSet<PublicKey>,
    dropped: HashSet<PublicKey>,
    /// Providers added as friends by this job (removed at the end).
    added: HashSet<PublicKey>,
    /// Files written, for serving afterwards: (blob, len, path).
    written: Vec<(ContentId, u64, PathBuf)>,
    /// The manifest, once verified (kept, served and announced when the job is done).
    manifest_bytes: Option<Vec<u8>>,
    /// Next request id (continues across the job's blobs and jobs).
    next_req: u32,
}

#[derive(Debug, Default)]
struct State {
    blobs: HashMap<ContentId, Blob>,
    contents: BTreeSet<ContentId>,
    serving: HashMap<PublicKey, Serving>,
    guests: HashMap<PublicKey, Instant>,
    online: HashSet<PublicKey>,
    job: Option<Job>,
    finished: VecDeque<ContentJob>,
    next_job: u64,
    next_req: u32,
    /// Provider-record put schedule per content id (≤ one per id in `contents`).
    schedules: HashMap<ContentId, RecordSchedule>,
    /// A re-announce round is running.
    announcing: bool,
    /// Last round that tried ids never stored yet (they are retried every
    /// [`UNSTORED_RETRY`]).
    unstored_try: Option<Instant>,
    /// Upload token bucket (bytes) and when it was last filled.
    bucket: (f64, Option<Instant>),
}

/// The content store and transfers of one node.
#[derive(Debug)]
pub struct ContentShared {
    dir: PathBuf,
    quota: u64,
    /// Upload cap for serving, bytes/s (0 = none).
    upload_rate: u64,
    corrupt: bool,
    own_pk: PublicKey,
    state: Mutex<State>,
    /// Credits ([`ferry_content::credit`]): what each peer served us (verified), what we
    /// served it; busy serving goes by it. Locked after `state` when both are held.
    ledger: Mutex<ferry_content::credit::Ledger>,
    /// Signs the credit receipts this node gives its providers (the market's node key).
    signer: std::sync::OnceLock<ferry_market::NodeSigner>,
}

/// The credit ledger's file in the content directory.
pub const CREDITS_FILE: &str = "credits.bin";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A DHT record (provider or storer record) as a mail envelope at `target`: its delete hash
/// derived from `context` and the record bytes, its proof of work (`bits` leading zero bits,
/// the data layer's anti-spam cost) solved on a blocking thread.
///
/// # Errors
/// [`ApiError`] unavailable when the blocking task was cancelled.
pub(crate) async fn record_envelope(
    context: &'static str,
    record: Vec<u8>,
    target: Target,
    bits: u32,
) -> Result<MailEnvelope, ApiError> {
    tokio::task::spawn_blocking(move || {
        let mut env = MailEnvelope {
            delete_hash: blake3::derive_key(context, &record),
            pow: 0,
            sealed: record,
        };
        env.solve_pow(&target, bits);
        env
    })
    .await
    .map_err(unavailable)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(e.to_string())
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    content: ContentConfig,
}

#[derive(Debug, Default, Deserialize)]
struct ContentConfig {
    quota_mib: Option<u64>,
    upload_kib_s: Option<u64>,
}

impl ContentShared {
    /// Opens (creating) `<profile>/content` and loads the index.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(profile_dir: &Path, own_pk: PublicKey) -> anyhow::Result<Arc<Self>> {
        let dir = profile_dir.join(CONTENT_DIR);
        std::fs::create_dir_all(dir.join("obao"))?;
        std::fs::create_dir_all(dir.join("manifests"))?;
        let config = std::fs::read_to_string(profile_dir.join("config.toml"))
            .ok()
            .and_then(|t| toml::from_str::<ConfigFile>(&t).ok())
            .map(|c| c.content)
            .unwrap_or_default();
        let quota = config.quota_mib.map_or(DEFAULT_QUOTA, |m| m << 20);
        let me = Arc::new(Self {
            dir,
            quota,
            upload_rate: config.upload_kib_s.unwrap_or(0).saturating_mul(1024),
            corrupt: std::env::var("FERRY_TEST_CORRUPT_CONTENT").is_ok_and(|v| v == "1"),
            own_pk,
            state: Mutex::new(State::default()),
            ledger: Mutex::new(
                std::fs::read(profile_dir.join(CONTENT_DIR).join(CREDITS_FILE))
                    .ok()
                    .and_then(|b| ferry_content::credit::Ledger::restore(own_pk.0, &b).ok())
                    .unwrap_or_else(|| ferry_content::credit::Ledger::new(own_pk.0)),
            ),
            signer: std::sync::OnceLock::new(),
        });
        me.load();
        Ok(me)
    }

    fn load(&self) {
        let Ok(text) = std::fs::read_to_string(self.dir.join("index.json")) else {
            return;
        };
        let Ok(index) = serde_json::from_str::<Index>(&text) else {
            tracing::warn!("content index unreadable; starting empty");
            return;
        };
        let mut st = lock(&self.state);
        for b in index.blobs {
            let Some(id) = ContentId::from_hex(&b.id) else {
                continue;
            };
            let Ok(ob) = std::fs::read(self.dir.join("obao").join(&b.id)) else {
                continue;
            };
            let Some(outboard) = Outboard::from_parts(id, b.len, ob) else {
                continue;
            };
            st.blobs.insert(
                id,
                Blob {
                    len: b.len,
                    path: Some(b.path),
                    bytes: None,
                    outboard: Arc::new(outboard),
                    file: None,
                },
            );
        }
        for c in index.contents {
            let Some(id) = ContentId::from_hex(&c) else {
                continue;
            };
            let Ok(bytes) = std::fs::read(self.dir.join("manifests").join(&c)) else {
                continue;
            };
            if ContentId::of(&bytes) != id {
                continue;
            }
            let Ok(ob) = Outboard::create(&bytes[..], bytes.len() as u64) else {
                continue;
            };
            st.blobs.insert(
                id,
                Blob {
                    len: bytes.len() as u64,
                    path: None,
                    bytes: Some(Arc::new(bytes)),
                    outboard: Arc::new(ob),
                    file: None,
                },
            );
            st.contents.insert(id);
        }
    }

    fn save_index(&self, st: &State) {
        let index = Index {
            blobs: st
                .blobs
                .iter()
                .filter_map(|(id, b)| {
                    b.path.as_ref().map(|p| IndexBlob {
                        id: id.to_hex(),
                        len: b.len,
                        path: p.clone(),
                    })
                })
                .collect(),
            contents: st.contents.iter().map(ContentId::to_hex).collect(),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&index) {
            let tmp = self.dir.join("index.json.tmp");
            if std::fs::write(&tmp, json).is_ok() {
                let _ = std::fs::rename(tmp, self.dir.join("index.json"));
            }
        }
        let credits = lock(&self.ledger).snapshot();
        let tmp = self.dir.join("credits.bin.tmp");
        if std::fs::write(&tmp, credits).is_ok() {
            let _ = std::fs::rename(tmp, self.dir.join(CREDITS_FILE));
        }
    }

    fn used(st: &State) -> u64 {
        st.blobs
            .values()
            .filter(|b| b.path.is_some())
            .map(|b| b.len)
            .sum()
    }

    /// Registers a served file blob (outboard written to disk).
    fn add_blob(&self, st: &mut State, ob: Outboard, path: PathBuf) -> Result<(), ApiError> {
        let id = ob.id();
        if st.blobs.contains_key(&id) {
            // Already served (maybe from another path): keep the first.
            return Ok(());
        }
        if Self::used(st) + ob.len() > self.quota {
            return Err(ApiError::bad_request(format!(
                "content quota of {} bytes exceeded",
                self.quota
            )));
        }
        std::fs::write(self.dir.join("obao").join(id.to_hex()), ob.as_bytes())
            .map_err(unavailable)?;
        st.blobs.insert(
            id,
            Blob {
                len: ob.len(),
                path: Some(path),
                bytes: None,
                outboard: Arc::new(ob),
                file: None,
            },
        );
        Ok(())
    }

    fn add_manifest(&self, st: &mut State, bytes: Vec<u8>) -> Result<ContentId, ApiError> {
        let ob = Outboard::create(&bytes[..], bytes.len() as u64).map_err(unavailable)?;
        let id = ob.id();
        std::fs::write(self.dir.join("manifests").join(id.to_hex()), &bytes)
            .map_err(unavailable)?;
        st.blobs.insert(
            id,
            Blob {
                len: bytes.len() as u64,
                path: None,
                bytes: Some(Arc::new(bytes)),
                outboard: Arc::new(ob),
                file: None,
            },
        );
        st.contents.insert(id);
        Ok(id)
    }

    /// Where this node holds file `rel` of content `id_hex` (a directory's entry path; any
    /// `rel` for single-file content), with its length: `None` when the manifest or that file
    /// is not here (whole and unchanged). `Some(Err(()))`: the manifest is here and has no
    /// such entry.
    pub fn local_file(&self, id_hex: &str, rel: &str) -> Option<Result<(PathBuf, u64), ()>> {
        let id = ContentId::from_hex(id_hex)?;
        let st = lock(&self.state);
        let bytes = st.blobs.get(&id)?.bytes.clone()?;
        let m = Manifest::decode(&bytes).ok()?;
        let entry = match m.kind {
            Kind::File => m.entries.first(),
            Kind::Directory => m.entries.iter().find(|e| e.path == rel),
        };
        let Some(e) = entry else {
            return Some(Err(()));
        };
        let path = st.blobs.get(&e.blob)?.path.clone()?;
        let len = std::fs::metadata(&path).ok()?.len();
        (len == e.len).then_some(Ok((path, e.len)))
    }

    /// Sets the key that signs this node's credit receipts (once, at start).
    pub fn set_signer(&self, signer: ferry_market::NodeSigner) {
        let _ = self.signer.set(signer);
    }

    /// Sends `provider` the receipt this node owes it, if one is due (`force`: for anything
    /// not receipted yet): lossless packet `[190][receipt 176]`.
    fn send_receipt(&self, n: &mut Node, now: Instant, provider: PublicKey, force: bool) {
        use ferry_content::credit::{RECEIPT_DOMAIN, RECEIPT_PACKET_ID};
        let Some(signer) = self.signer.get() else {
            return;
        };
        let Some(mut r) =
            lock(&self.ledger).receipt_due(&provider.0, signer.public().0, unix_now(), force)
        else {
            return;
        };
        r.signature = signer.sign(RECEIPT_DOMAIN, &r.signed_bytes());
        let mut pkt = vec![RECEIPT_PACKET_ID];
        pkt.extend_from_slice(&r.encode());
        if let Err(e) = n.send_custom(now, &provider, &pkt) {
            tracing::debug!(peer = %provider, "credit receipt: {e}");
        }
    }

    /// A credit receipt (`data`, id 190 first) from `from` for content we served it: kept
    /// when newer and signed by the key it names.
    pub fn on_receipt(&self, from: PublicKey, data: &[u8]) {
        let Some(r) = data
            .get(1..)
            .and_then(|b| ferry_content::credit::Receipt::decode(b).ok())
        else {
            return;
        };
        let verify = |r: &ferry_content::credit::Receipt| {
            ferry_market::SigKey(r.consumer_key)
                .verify(
                    ferry_content::credit::RECEIPT_DOMAIN,
                    &r.signed_bytes(),
                    &r.signature,
                )
                .is_ok()
        };
        if let Err(e) = lock(&self.ledger).on_receipt(from.0, r, unix_now(), verify) {
            tracing::debug!(peer = %from, "credit receipt refused: {e}");
        }
    }

    /// `GET /v1/content/credits`: every account of the credit ledger, most credit first.
    pub fn credits(&self) -> Vec<ferry_api::CreditAccount> {
        let l = lock(&self.ledger);
        let mut v: Vec<ferry_api::CreditAccount> = l
            .accounts()
            .map(|(k, a)| ferry_api::CreditAccount {
                peer: PublicKey(*k).to_hex(),
                credit_bytes: a.credit(),
                received_bytes: a.received,
                stored_bytes: a.stored,
                served_bytes: a.served,
                receipted_bytes: a.best_receipt.as_ref().map_or(0, |r| r.cumulative),
            })
            .collect();
        v.sort_by(|a, b| {
            b.credit_bytes
                .cmp(&a.credit_bytes)
                .then(a.peer.cmp(&b.peer))
        });
        v
    }

    /// Total bytes of content `id` when this node serves it (published or fetched), for
    /// replication ([`crate::replica`]).
    pub fn content_size(&self, id: &ContentId) -> Option<u64> {
        if !lock(&self.state).contents.contains(id) {
            return None;
        }
        let bytes = std::fs::read(self.dir.join("manifests").join(id.to_hex())).ok()?;
        Manifest::decode(&bytes).ok().map(|m| m.total_len())
    }

    /// Puts our provider record for `id` now (a replica just fetched, [`crate::replica`]);
    /// how many nodes stored it.
    ///
    /// # Errors
    /// As the value-store put.
    pub async fn announce_now(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: &Arc<DataShared>,
        id: ContentId,
    ) -> Result<usize, ApiError> {
        self.announce(node, data, id).await
    }

    /// `POST /v1/content/publish`.
    ///
    /// # Errors
    /// Unreadable path, invalid names, quota.
    pub async fn publish(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: Option<Arc<DataShared>>,
        req: ferry_api::ContentPublish,
    ) -> Result<ferry_api::ContentPublished, ApiError> {
        let root = PathBuf::from(&req.path);
        let root = root
            .canonicalize()
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", req.path)))?;
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| ferry_content::manifest::valid_name(n))
            .ok_or_else(|| ApiError::bad_request("the path has no usable file name"))?
            .to_string();
        let r2 = root.clone();
        let hashed = tokio::task::spawn_blocking(move || hash_tree(&r2))
            .await
            .map_err(unavailable)?
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let kind = if root.is_dir() {
            Kind::Directory
        } else {
            Kind::File
        };
        let manifest = Manifest {
            kind,
            name: name.clone(),
            entries: hashed
                .iter()
                .map(|(rel, ob, _)| Entry {
                    path: rel.clone(),
                    blob: ob.id(),
                    len: ob.len(),
                })
                .collect(),
        };
        manifest
            .validate()
            .map_err(|e| ApiError::bad_request(format!("cannot publish: {e}")))?;
        let id = {
            let mut st = lock(&self.state);
            for (_, ob, path) in hashed {
                self.add_blob(&mut st, ob, path)?;
            }
            let id = self.add_manifest(&mut st, manifest.encode())?;
            self.save_index(&st);
            id
        };
        let announced = match data {
            Some(d) => self.announce(node, &d, id).await.unwrap_or(0),
            None => 0,
        };
        Ok(ferry_api::ContentPublished {
            id: id.to_hex(),
            name,
            files: manifest.entries.len() as u64,
            bytes: manifest.total_len(),
            announced: announced as u64,
        })
    }

    /// Puts our provider record for `id`; returns how many nodes stored it.
    async fn announce(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: &Arc<DataShared>,
        id: ContentId,
    ) -> Result<usize, ApiError> {
        let status = node.status().await.map_err(unavailable)?;
        let addr = Some(status.local_addr).filter(|a| !a.ip().is_unspecified());
        let record = ProviderRecord {
            public_key: self.own_pk,
            dht_pk: status.dht_public_key,
            addr,
        }
        .encode();
        let target = provider_target(&id);
        let placement = data.placement(&target);
        let bits = data.mail_pow_bits();
        let env = record_envelope("ferry v1 content provider record", record, target, bits).await?;
        let out = data
            .run(
                node,
                target,
                Operation::Put {
                    item: Item::Mail(env),
                    ttl_s: PROVIDER_TTL.as_secs() as u32,
                    cas: None,
                },
            )
            .await?;
        let n = out.stored;
        tracing::info!(content = %id, stored = n, "provider record announced");
        if n > 0 {
            lock(&self.state)
                .schedules
                .entry(id)
                .or_insert_with(provider_schedule)
                .on_put(Instant::now(), &placement, out.stored_on);
        }
        Ok(n)
    }

    /// Re-announces the content ids whose provider record is due ([`RecordSchedule`]: every
    /// [`ANNOUNCE_INTERVAL`], and [`crate::data::FOLLOW_REPUT`] after the target's closest nodes
    /// changed); one round at a time (timer task).
    async fn maybe_reannounce(self: &Arc<Self>, node: &NodeHandle, data: &Arc<DataShared>) {
        let ids: Vec<ContentId> = {
            let mut st = lock(&self.state);
            if st.announcing {
                return;
            }
            st.announcing = true;
            let State {
                contents,
                schedules,
                ..
            } = &mut *st;
            schedules.retain(|id, _| contents.contains(id));
            contents.iter().copied().collect()
        };
        // Placements first (the data layer's lock), then the schedules (ours).
        let placed: Vec<(ContentId, Vec<PublicKey>)> = ids
            .into_iter()
            .map(|id| (id, data.placement(&provider_target(&id))))
            .collect();
        let due: Vec<ContentId> = {
            let mut st = lock(&self.state);
            let now = Instant::now();
            let unstored = st
                .unstored_try
                .is_none_or(|t| now.saturating_duration_since(t) >= UNSTORED_RETRY);
            if unstored {
                st.unstored_try = Some(now);
            }
            placed
                .into_iter()
                .filter(|(id, p)| match st.schedules.get(id) {
                    Some(s) => s.due(now, p),
                    None => unstored,
                })
                .map(|(id, _)| id)
                .collect()
        };
        for id in due {
            let _ = self.announce(node, data, id).await;
        }
        lock(&self.state).announcing = false;
    }

    /// `POST /v1/content/fetch`: starts a job.
    ///
    /// # Errors
    /// Bad id or directory, a job already running, no value store.
    pub async fn fetch(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: Option<Arc<DataShared>>,
        req: ferry_api::ContentFetch,
    ) -> Result<ContentJob, ApiError> {
        let content = ContentId::from_hex(&req.id)
            .ok_or_else(|| ApiError::bad_request("content id must be 64 hex digits"))?;
        let to = PathBuf::from(&req.to);
        std::fs::create_dir_all(&to)
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", req.to)))?;
        let data = data.ok_or_else(|| ApiError::not_found("this node has no value store"))?;
        let job = {
            let mut st = lock(&self.state);
            if st
                .job
                .as_ref()
                .is_some_and(|j| !matches!(j.phase, Phase::Done | Phase::Failed))
            {
                return Err(ApiError::conflict("a fetch is already running"));
            }
            st.next_job += 1;
            let now = Instant::now();
            let j = Job {
                id: st.next_job,
                content,
                to,
                started: now,
                first_live: None,
                ended: None,
                last_progress: now,
                phase: Phase::Finding,
                error: None,
                name: String::new(),
                total: 0,
                done_bytes: 0,
                providers: Vec::new(),
                used: HashSet::new(),
                dropped: HashSet::new(),
                added: HashSet::new(),
                written: Vec::new(),
                manifest_bytes: None,
                next_req: st.next_req,
            };
            let id = j.id;
            if let Some(old) = st.job.take() {
                let s = job_status(&old, now);
                push_finished(&mut st, s);
            }
            st.job = Some(j);
            id
        };
        let me = Arc::clone(self);
        let node2 = node.clone();
        tokio::spawn(async move { me.find_providers(node2, data, job).await });
        self.job(job)
    }

    /// `POST /v1/content/job`.
    ///
    /// # Errors
    /// Unknown job.
    pub fn job(&self, job: u64) -> Result<ContentJob, ApiError> {
        let st = lock(&self.state);
        let now = Instant::now();
        if let Some(j) = st.job.as_ref().filter(|j| j.id == job) {
            return Ok(job_status(j, now));
        }
        st.finished
            .iter()
            .find(|j| j.job == job)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no fetch job {job}")))
    }

    fn fail(&self, job: u64, why: String) {
        let mut st = lock(&self.state);
        if let Some(j) = st.job.as_mut().filter(|j| j.id == job)
            && !matches!(j.phase, Phase::Done | Phase::Failed)
        {
            tracing::warn!(content = %j.content, error = %why, "fetch failed");
            if let Phase::Files { tmp, .. } = &j.phase {
                let _ = std::fs::remove_file(tmp);
            }
            j.phase = Phase::Failed;
            j.error = Some(why);
            j.ended = Some(Instant::now());
        }
    }

    /// Looks providers up in the DHT (retrying) and connects to them.
    async fn find_providers(self: Arc<Self>, node: NodeHandle, data: Arc<DataShared>, job: u64) {
        let target = {
            let st = lock(&self.state);
            match st.job.as_ref() {
                Some(j) if j.id == job => provider_target(&j.content),
                _ => return,
            }
        };
        let started = Instant::now();
        let mut known: Vec<ProviderRecord> = Vec::new();
        loop {
            match data.get_items(&node, target).await {
                Ok(items) => {
                    for i in items {
                        let Item::Mail(env) = i else { continue };
                        let Some(r) = ProviderRecord::decode(&env.sealed) else {
                            continue;
                        };
                        if r.public_key == self.own_pk {
                            continue;
                        }
                        // The newest record per key wins (a restart changes the DHT key).
                        known.retain(|k| k.public_key != r.public_key);
                        known.push(r);
                    }
                }
                Err(e) => tracing::debug!(error = %e.message, "provider lookup"),
            }
            known.truncate(MAX_FETCH_PROVIDERS);
            if !known.is_empty() {
                break;
            }
            if started.elapsed() > STALL_TIMEOUT {
                self.fail(job, "no provider found in the DHT".into());
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tracing::info!(providers = known.len(), "content providers found");
        let me = Arc::clone(&self);
        let _ = node
            .call(move |n, now| me.connect(n, now, job, known))
            .await;
        // While the job runs without progress, read the records again (at most until the
        // stall timeout fails it: STALL_TIMEOUT / PROVIDER_REREAD rounds).
        let rounds = STALL_TIMEOUT.as_secs() / PROVIDER_REREAD.as_secs().max(1) + 1;
        for _ in 0..rounds {
            tokio::time::sleep(PROVIDER_REREAD).await;
            let stuck = {
                let st = lock(&self.state);
                match st.job.as_ref().filter(|j| j.id == job) {
                    Some(j) if matches!(j.phase, Phase::Manifest(..) | Phase::Files { .. }) => {
                        Some(j.last_progress.elapsed() >= PROVIDER_REREAD)
                    }
                    _ => None,
                }
            };
            match stuck {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
            let Ok(items) = data.get_items(&node, target).await else {
                continue;
            };
            let found: Vec<ProviderRecord> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Mail(env) => ProviderRecord::decode(&env.sealed),
                    _ => None,
                })
                .filter(|r| r.public_key != self.own_pk)
                .collect();
            let me = Arc::clone(&self);
            let _ = node
                .call(move |n, now| me.add_providers(n, now, job, found))
                .await;
        }
    }

    /// Adds providers found by a later read to a running job (newest record per key; at most
    /// [`MAX_FETCH_PROVIDERS`] in all).
    fn add_providers(&self, n: &mut Node, now: Instant, job: u64, found: Vec<ProviderRecord>) {
        let mut st = lock(&self.state);
        let online = st.online.clone();
        let Some(j) = st.job.as_mut().filter(|j| j.id == job) else {
            return;
        };
        let mut added = 0usize;
        for r in found {
            if j.providers.contains(&r) {
                continue;
            }
            let known = j.providers.iter().any(|k| k.public_key == r.public_key);
            if !known && j.providers.len() >= MAX_FETCH_PROVIDERS {
                continue;
            }
            if n.add_friend_norequest(now, r.public_key).is_ok() {
                j.added.insert(r.public_key);
            }
            if j.added.contains(&r.public_key) {
                let _ = n.set_friend_dht_key(now, &r.public_key, r.dht_pk, r.addr);
            }
            if online.contains(&r.public_key) && !j.dropped.contains(&r.public_key) {
                match &mut j.phase {
                    Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } => {
                        f.add_provider(r.public_key);
                    }
                    _ => {}
                }
            }
            j.providers.retain(|k| k.public_key != r.public_key);
            j.providers.push(r);
            added += 1;
        }
        if added > 0 {
            tracing::info!(
                added,
                providers = j.providers.len(),
                "content providers re-read"
            );
            self.pump_job(&mut st, n, now);
        }
    }

    fn connect(&self, n: &mut Node, now: Instant, job: u64, known: Vec<ProviderRecord>) {
        let mut st = lock(&self.state);
        let online: Vec<PublicKey> = n
            .friends()
            .into_iter()
            .filter(|f| f.connection != Connection::None)
            .map(|f| f.public_key)
            .collect();
        let Some(j) = st.job.as_mut().filter(|j| j.id == job) else {
            return;
        };
        let mut fetch = Fetch::new(j.content, None, fetch_config(j.next_req));
        for r in &known {
            if n.add_friend_norequest(now, r.public_key).is_ok() {
                j.added.insert(r.public_key);
            }
            if j.added.contains(&r.public_key) {
                let _ = n.set_friend_dht_key(now, &r.public_key, r.dht_pk, r.addr);
            }
            if online.contains(&r.public_key) {
                fetch.add_provider(r.public_key);
            }
        }
        j.providers = known;
        j.last_progress = now;
        j.phase = Phase::Manifest(fetch, Vec::new());
        for pk in online {
            st.online.insert(pk);
        }
        self.pump_job(&mut st, n, now);
    }

    /// A friend's (or guest's) session came up or went down.
    pub fn peer_connection(&self, n: &mut Node, now: Instant, pk: PublicKey, online: bool) {
        let mut st = lock(&self.state);
        if online {
            st.online.insert(pk);
            if let Some(j) = st.job.as_mut()
                && j.providers.iter().any(|r| r.public_key == pk)
                && !j.dropped.contains(&pk)
            {
                match &mut j.phase {
                    Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } => f.add_provider(pk),
                    _ => {}
                }
            }
            self.pump_job(&mut st, n, now);
        } else {
            st.online.remove(&pk);
            st.serving.remove(&pk);
            if let Some(j) = st.job.as_mut() {
                match &mut j.phase {
                    Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } => {
                        f.remove_provider(pk);
                    }
                    _ => {}
                }
            }
        }
    }

    /// A handshake from an unknown key: accepted as a guest when we serve content.
    pub fn on_unknown_peer(
        &self,
        n: &mut Node,
        now: Instant,
        pk: PublicKey,
        dht_pk: PublicKey,
        addr: SocketAddr,
    ) {
        let mut st = lock(&self.state);
        if st.contents.is_empty() || st.guests.contains_key(&pk) || st.guests.len() >= MAX_GUESTS {
            return;
        }
        if n.add_friend_norequest(now, pk).is_ok() {
            st.guests.insert(pk, now);
            let addr = Some(addr).filter(|a| *a != ferry_proto::net_crypto::RELAY_ADDR);
            let _ = n.set_friend_dht_key(now, &pk, dht_pk, addr);
            tracing::info!(peer = %pk, "content guest accepted");
        }
    }

    /// A content packet (188/189) from a friend or guest. Returns the blob of a `get` this node
    /// queued for serving (the host counts downloads of replicated content from it,
    /// [`crate::replica::ReplicaShared::on_download`]), `None` for anything else.
    pub fn on_packet(
        &self,
        n: &mut Node,
        now: Instant,
        pk: PublicKey,
        data: &[u8],
    ) -> Option<ContentId> {
        let Ok(p) = ContentPacket::decode(data) else {
            return None;
        };
        let mut st = lock(&self.state);
        if let Some(t) = st.guests.get_mut(&pk) {
            *t = now;
        }
        match p {
            ContentPacket::Get {
                req,
                blob,
                start,
                end,
            } => {
                let has = st.blobs.contains_key(&blob);
                let s = st.serving.entry(pk).or_default();
                if !has || s.queue.len() >= MAX_SERVE_QUEUE {
                    let _ = n.send_custom(now, &pk, &ContentPacket::Missing { req }.encode());
                    return None;
                }
                s.queue.push_back((req, blob, start, end));
                self.serve(&mut st, n, now, pk);
                return Some(blob);
            }
            ContentPacket::Cancel { req } => {
                if let Some(s) = st.serving.get_mut(&pk) {
                    s.queue.retain(|(r, ..)| *r != req);
                    if s.current.as_ref().is_some_and(|(r, ..)| *r == req) {
                        // Stop mid-response: the fetcher ignores the rest anyway.
                        s.current = None;
                    }
                }
            }
            other => {
                if let Some(j) = st.job.as_mut() {
                    match &mut j.phase {
                        Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } => {
                            f.on_packet(now, pk, other);
                        }
                        _ => {}
                    }
                }
                self.pump_job(&mut st, n, now);
            }
        }
        None
    }

    /// Encodes the next queued response for `pk` (reading the file), or `None`.
    fn next_response(&self, st: &mut State, pk: PublicKey) -> Option<(u32, Vec<u8>, Option<u64>)> {
        {
            let (req, blob, start, end) = st.serving.get_mut(&pk)?.queue.pop_front()?;
            let Some(b) = st.blobs.get_mut(&blob) else {
                return Some((req, Vec::new(), None));
            };
            let whole = end == WHOLE;
            let (s, e) = if whole {
                (0, group_count(b.len))
            } else {
                (start, end.min(start.saturating_add(64)))
            };
            let (from, to) = group_bytes(b.len, s, e);
            let mut buf = vec![0u8; (to - from) as usize];
            let ok = match (&b.bytes, &b.path) {
                (Some(bytes), _) => {
                    buf.copy_from_slice(&bytes[from as usize..to as usize]);
                    true
                }
                (None, Some(path)) => {
                    if b.file.is_none() {
                        b.file = File::open(path).ok().map(Arc::new);
                    }
                    b.file.as_ref().is_some_and(|f| {
                        f.metadata().is_ok_and(|m| m.len() == b.len)
                            && f.read_exact_at(&mut buf, from).is_ok()
                    })
                }
                (None, None) => false,
            };
            if !ok {
                tracing::warn!(blob = %blob, "served file unreadable or changed; dropped");
                st.blobs.remove(&blob);
                self.save_index(st);
                return Some((req, Vec::new(), None));
            }
            let mut enc = Vec::new();
            if b.outboard.encode(s, e, &buf, &mut enc).is_err() {
                return Some((req, Vec::new(), None));
            }
            if self.corrupt && b.path.is_some() && !enc.is_empty() {
                let i = enc.len() - 1;
                enc[i] ^= 0x5a;
            }
            Some((req, enc, whole.then_some(b.len)))
        }
    }

    /// Sends queued responses to `pk` within net_crypto's send budget.
    fn serve(&self, st: &mut State, n: &mut Node, now: Instant, pk: PublicKey) {
        let mut budget = n.net_crypto().send_budget(&pk);
        if self.upload_rate > 0 {
            // Token bucket: `upload_rate` bytes/s, bursts of 20 ms.
            let rate = self.upload_rate as f64;
            let (tokens, at) = st.bucket;
            let dt = at.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            let tokens = (tokens + dt * rate).min(rate * 0.02);
            st.bucket = (tokens, Some(now));
            budget = budget.min((tokens / (MAX_DATA_CHUNK + 5) as f64) as u32);
            st.bucket.0 -= f64::from(budget) * (MAX_DATA_CHUNK + 5) as f64;
        }
        while budget > 0 {
            let cur = st.serving.get_mut(&pk).and_then(|s| s.current.take());
            let (req, enc, mut pos) = match cur {
                Some(c) => c,
                None => match self.next_response(st, pk) {
                    None => return,
                    Some((req, enc, _)) if enc.is_empty() => {
                        let _ = n.send_custom(now, &pk, &ContentPacket::Missing { req }.encode());
                        budget -= 1;
                        continue;
                    }
                    Some((req, enc, size)) => {
                        if let Some(len) = size {
                            let _ =
                                n.send_custom(now, &pk, &ContentPacket::Size { req, len }.encode());
                            budget -= 1;
                        }
                        (req, enc, 0)
                    }
                },
            };
            while pos < enc.len() && budget > 0 {
                let end = (pos + MAX_DATA_CHUNK).min(enc.len());
                let pkt = ContentPacket::Data {
                    req,
                    bytes: enc[pos..end].to_vec(),
                };
                if n.send_custom(now, &pk, &pkt.encode()).is_err() {
                    budget = 0;
                    break;
                }
                lock(&self.ledger).on_served(pk.0, (end - pos) as u64, unix_now());
                pos = end;
                budget -= 1;
            }
            if pos < enc.len()
                && let Some(s) = st.serving.get_mut(&pk)
            {
                s.current = Some((req, enc, pos));
                return;
            }
        }
    }

    /// Drives the running job: sends requests, handles verified data and phase changes.
    fn pump_job(&self, st: &mut State, n: &mut Node, now: Instant) {
        let Some(j) = st.job.as_mut() else {
            return;
        };
        for _ in 0..4 {
            let (Phase::Manifest(f, _) | Phase::Files { fetch: f, .. }) = &mut j.phase else {
                return;
            };
            if f.poll_timeout().is_some_and(|t| t <= now) {
                f.handle_timeout(now);
            }
            while let Some((pk, pkt)) = f.poll_transmit(now) {
                let _ = n.send_custom(now, &pk, &pkt.encode());
            }
            if f.live_providers() > 0 && j.first_live.is_none() {
                j.first_live = Some(now);
            }
            let mut events = Vec::new();
            while let Some(e) = f.poll_event() {
                events.push(e);
            }
            if events.is_empty() {
                return;
            }
            let mut done = false;
            for e in events {
                match e {
                    FetchEvent::Data { offset, bytes } => {
                        j.last_progress = now;
                        match &mut j.phase {
                            Phase::Manifest(_, buf) => {
                                let end = offset as usize + bytes.len();
                                if buf.len() < end {
                                    buf.resize(end, 0);
                                }
                                buf[offset as usize..end].copy_from_slice(&bytes);
                            }
                            Phase::Files { file, .. } => {
                                if let Err(e) = file.write_all_at(&bytes, offset) {
                                    j.error = Some(format!("writing: {e}"));
                                    j.phase = Phase::Failed;
                                    j.ended = Some(now);
                                    return;
                                }
                            }
                            _ => {}
                        }
                    }
                    FetchEvent::ProviderDropped { provider, reason } => {
                        tracing::warn!(provider = %provider, ?reason, "content provider dropped");
                        j.dropped.insert(provider);
                    }
                    FetchEvent::Done => done = true,
                    FetchEvent::Length(_) | FetchEvent::NoProviders => {}
                }
            }
            if let Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } = &j.phase {
                for (pk, s) in f.providers() {
                    if s.bytes > 0 {
                        j.used.insert(*pk);
                        if done {
                            // What each provider served of this blob, verified: its credit.
                            lock(&self.ledger).on_received(pk.0, s.bytes, unix_now());
                            self.send_receipt(n, now, *pk, false);
                        }
                    }
                }
            }
            if done && let Err(e) = advance(j, &st.online) {
                j.error = Some(e);
                j.phase = Phase::Failed;
            }
            if matches!(j.phase, Phase::Done | Phase::Failed) {
                j.ended = Some(now);
            }
            if matches!(j.phase, Phase::Done) {
                self.job_done(st, n, now);
                return;
            }
        }
    }

    /// A job finished: serve what it wrote, drop the providers it added.
    fn job_done(&self, st: &mut State, n: &mut Node, now: Instant) {
        let Some(j) = st.job.as_mut() else {
            return;
        };
        let written = std::mem::take(&mut j.written);
        let manifest = j.manifest_bytes.take();
        let next_req = j.next_req.wrapping_add(1 << 16).max(1);
        let added: Vec<PublicKey> = j.added.drain().collect();
        let content = j.content;
        let used: Vec<PublicKey> = j.used.iter().copied().collect();
        tracing::info!(content = %content, "fetch complete");
        // Receipts for everything received, before the sessions to added providers close.
        for pk in used {
            self.send_receipt(n, now, pk, true);
        }
        for pk in added {
            let _ = n.remove_friend(now, &pk);
        }
        let mut st2 = std::mem::take(st);
        for (id, len, path) in written {
            if !st2.blobs.contains_key(&id)
                && let Ok(ob) = File::open(&path).and_then(|f| Outboard::create(f, len))
                && ob.id() == id
            {
                let _ = self.add_blob(&mut st2, ob, path);
            }
        }
        // The manifest too: the content can be opened here (gateway) and served onwards.
        if let Some(m) = manifest
            && ContentId::of(&m) == content
        {
            let _ = self.add_manifest(&mut st2, m);
        }
        self.save_index(&st2);
        st2.next_req = next_req;
        *st = st2;
    }

    /// Periodic work (every [`TICK`]): serving, the job, guest expiry. Returns whether
    /// transfers are active (the caller ticks fast then).
    pub fn tick(&self, n: &mut Node, now: Instant) -> bool {
        let mut st = lock(&self.state);
        let waiting: Vec<[u8; 32]> = st
            .serving
            .iter()
            .filter(|(_, s)| s.current.is_some() || !s.queue.is_empty())
            .map(|(k, _)| k.0)
            .collect();
        // More credit, served first (with an optimistic slot for newcomers).
        let peers: Vec<PublicKey> = if waiting.len() > 1 {
            lock(&self.ledger).order(&waiting, unix_now())
        } else {
            waiting
        }
        .into_iter()
        .map(PublicKey)
        .collect();
        for pk in &peers {
            self.serve(&mut st, n, now, *pk);
        }
        let running = st
            .job
            .as_ref()
            .is_some_and(|j| matches!(j.phase, Phase::Manifest(..) | Phase::Files { .. }));
        if running {
            self.pump_job(&mut st, n, now);
            let stalled = st.job.as_ref().and_then(|j| {
                let (Phase::Manifest(f, _) | Phase::Files { fetch: f, .. }) = &j.phase else {
                    return None;
                };
                (now.duration_since(j.last_progress) > STALL_TIMEOUT
                    || (f.live_providers() == 0
                        && j.providers
                            .iter()
                            .all(|r| j.dropped.contains(&r.public_key))))
                .then_some(j.id)
            });
            if let Some(id) = stalled {
                drop(st);
                self.fail(id, "no provider serves it (all dropped or silent)".into());
                return true;
            }
        }
        let expired: Vec<PublicKey> = st
            .guests
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > GUEST_IDLE)
            .map(|(k, _)| *k)
            .collect();
        for pk in expired {
            st.guests.remove(&pk);
            st.serving.remove(&pk);
            let _ = n.remove_friend(now, &pk);
        }
        running || !peers.is_empty()
    }
}

/// Moves a job to its next phase after a blob completed.
fn advance(j: &mut Job, online: &HashSet<PublicKey>) -> Result<(), String> {
    let providers: Vec<PublicKey> = j
        .providers
        .iter()
        .map(|r| r.public_key)
        .filter(|k| online.contains(k) && !j.dropped.contains(k))
        .collect();
    if let Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } = &j.phase {
        j.next_req = f.next_req();
    }
    let (manifest, next) = match std::mem::replace(&mut j.phase, Phase::Finding) {
        Phase::Manifest(_, buf) => {
            let m = Manifest::decode(&buf).map_err(|e| format!("bad manifest: {e}"))?;
            j.manifest_bytes = Some(buf);
            j.name = m.name.clone();
            j.total = m.total_len();
            let root = j.to.join(&m.name);
            if m.kind == Kind::Directory {
                std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
            }
            (m, 0)
        }
        Phase::Files {
            manifest,
            index,
            file,
            tmp,
            ..
        } => {
            file.sync_all().map_err(|e| format!("sync: {e}"))?;
            drop(file);
            let e = &manifest.entries[index];
            let dest = entry_path(&j.to, &manifest, e);
            std::fs::rename(&tmp, &dest).map_err(|x| format!("{}: {x}", dest.display()))?;
            j.done_bytes += e.len;
            j.written.push((e.blob, e.len, dest));
            (manifest, index + 1)
        }
        other => {
            j.phase = other;
            return Ok(());
        }
    };
    // Empty files need no transfer.
    let mut index = next;
    while let Some(e) = manifest.entries.get(index) {
        let dest = entry_path(&j.to, &manifest, e);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|x| format!("{}: {x}", parent.display()))?;
        }
        if e.len > 0 {
            break;
        }
        if e.blob != ContentId::of(&[]) {
            return Err(format!("{}: empty file with a non-empty id", e.path));
        }
        File::create(&dest).map_err(|x| format!("{}: {x}", dest.display()))?;
        index += 1;
    }
    let Some(e) = manifest.entries.get(index) else {
        j.phase = Phase::Done;
        return Ok(());
    };
    let dest = entry_path(&j.to, &manifest, e);
    let tmp = dest.with_file_name(format!(
        ".{}.ferry-part",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let file = File::create(&tmp).map_err(|x| format!("{}: {x}", tmp.display()))?;
    file.set_len(e.len)
        .map_err(|x| format!("{}: {x}", tmp.display()))?;
    let mut fetch = Fetch::new(e.blob, Some(e.len), fetch_config(j.next_req));
    for p in providers {
        fetch.add_provider(p);
    }
    j.phase = Phase::Files {
        manifest,
        index,
        fetch,
        file,
        tmp,
    };
    Ok(())
}

fn fetch_config(first_req: u32) -> FetchConfig {
    FetchConfig {
        first_req,
        ..FetchConfig::default()
    }
}

fn entry_path(to: &Path, m: &Manifest, e: &Entry) -> PathBuf {
    let mut p = to.join(&m.name);
    if !e.path.is_empty() {
        for c in e.path.split('/') {
            p.push(c);
        }
    }
    p
}

fn push_finished(st: &mut State, s: ContentJob) {
    if st.finished.len() >= MAX_JOBS_KEPT {
        st.finished.pop_front();
    }
    st.finished.push_back(s);
}

fn job_status(j: &Job, now: Instant) -> ContentJob {
    let (state, current) = match &j.phase {
        Phase::Finding => ("finding", 0),
        Phase::Manifest(..) => ("manifest", 0),
        Phase::Files { fetch, .. } => ("fetching", fetch.verified_bytes()),
        Phase::Done => ("done", 0),
        Phase::Failed => ("failed", 0),
    };
    let verified = j.done_bytes + current;
    let live = match &j.phase {
        Phase::Manifest(f, _) | Phase::Files { fetch: f, .. } => f.live_providers() as u64,
        _ => 0,
    };
    let end = j.ended.unwrap_or(now);
    let rate_secs = j
        .first_live
        .map_or(0.0, |t| end.duration_since(t).as_secs_f64());
    ContentJob {
        job: j.id,
        state: state.into(),
        error: j.error.clone(),
        name: j.name.clone(),
        path: if j.name.is_empty() {
            String::new()
        } else {
            j.to.join(&j.name).display().to_string()
        },
        total_bytes: j.total,
        verified_bytes: verified,
        providers_known: j.providers.len() as u64,
        providers_live: live,
        providers_used: j.used.len() as u64,
        providers_dropped: j.dropped.len() as u64,
        seconds: end.duration_since(j.started).as_secs_f64(),
        rate: if rate_secs > 0.0 {
            verified as f64 / rate_secs
        } else {
            0.0
        },
    }
}

/// Hashes a file or every file under a directory (sorted, symlinks not followed):
/// `(relative path, outboard, absolute path)`.
fn hash_tree(root: &Path) -> std::io::Result<Vec<(String, Outboard, PathBuf)>> {
    let meta = std::fs::metadata(root)?;
    let mut files = Vec::new();
    if meta.is_file() {
        files.push((String::new(), root.to_path_buf()));
    } else {
        let mut stack = vec![(String::new(), root.to_path_buf())];
        while let Some((rel, dir)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for e in entries {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let t = e.file_type()?;
                if t.is_dir() {
                    stack.push((r, e.path()));
                } else if t.is_file() {
                    files.push((r, e.path()));
                }
                if files.len() > ferry_content::manifest::MAX_ENTRIES {
                    return Err(std::io::Error::other("too many files"));
                }
            }
        }
        files.sort();
    }
    files
        .into_iter()
        .map(|(rel, path)| {
            let f = File::open(&path)?;
            let len = f.metadata()?.len();
            let ob = Outboard::create(std::io::BufReader::with_capacity(1 << 20, f), len)?;
            Ok((rel, ob, path))
        })
        .collect()
}

/// Starts the pump task: [`ContentShared::tick`] every [`TICK`] while transfers run (every
/// 50 ms otherwise), and re-announces every [`ANNOUNCE_INTERVAL`].
pub fn spawn_timer(
    content: Arc<ContentShared>,
    data: Arc<DataShared>,
    node: NodeHandle,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_announce_check = Instant::now();
        loop {
            let c = Arc::clone(&content);
            let Ok(active) = node.call(move |n, now| c.tick(n, now)).await else {
                return;
            };
            tokio::time::sleep(if active {
                TICK
            } else {
                Duration::from_millis(50)
            })
            .await;
            if last_announce_check.elapsed() > REANNOUNCE_CHECK {
                last_announce_check = Instant::now();
                let (c, d, n) = (Arc::clone(&content), Arc::clone(&data), node.clone());
                tokio::spawn(async move { c.maybe_reannounce(&n, &d).await });
            }
        }
    })
}

/// The provider-record schedule: every [`ANNOUNCE_INTERVAL`], plus placement follow-ups.
fn provider_schedule() -> RecordSchedule {
    RecordSchedule::new(0, ANNOUNCE_INTERVAL, ANNOUNCE_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_record_round_trip() {
        for addr in [
            None,
            Some("127.0.0.1:33445".parse().expect("addr")),
            Some("[::1]:9".parse().expect("addr")),
        ] {
            let r = ProviderRecord {
                public_key: PublicKey([1; 32]),
                dht_pk: PublicKey([2; 32]),
                addr,
            };
            assert_eq!(ProviderRecord::decode(&r.encode()), Some(r.clone()));
            let mut b = r.encode();
            b.push(0);
            assert_eq!(ProviderRecord::decode(&b), None);
        }
        assert_eq!(ProviderRecord::decode(&[]), None);
    }

    #[test]
    fn tree_hash_quota_and_index_reload() {
        let profile = tempfile::tempdir().expect("dir");
        std::fs::write(
            profile.path().join("config.toml"),
            "[store]\nmax_items = 10\n[content]\nquota_mib = 1\n",
        )
        .expect("config");
        let src = tempfile::tempdir().expect("src");
        std::fs::create_dir_all(src.path().join("d/e")).expect("mkdir");
        std::fs::write(src.path().join("d/e/x"), vec![7u8; 600_000]).expect("w");
        std::fs::write(src.path().join("d/y"), b"y").expect("w");
        let t = hash_tree(&src.path().join("d")).expect("hash");
        let names: Vec<&str> = t.iter().map(|(r, ..)| r.as_str()).collect();
        assert_eq!(names, ["e/x", "y"]);
        assert_eq!(t[0].1.id(), ContentId::of(&[7u8; 600_000]));
        let c = ContentShared::open(profile.path(), PublicKey([1; 32])).expect("open");
        assert_eq!(c.quota, 1 << 20);
        {
            let mut st = lock(&c.state);
            for (_, ob, path) in t.clone() {
                c.add_blob(&mut st, ob, path).expect("within quota");
            }
            // A second 600 kB blob passes the 1 MiB quota.
            let big = Outboard::create(&[8u8; 600_000][..], 600_000).expect("hash");
            assert!(c.add_blob(&mut st, big, src.path().join("z")).is_err());
            c.add_manifest(&mut st, b"FCM1 not parsed here".to_vec())
                .expect("manifest");
            c.save_index(&st);
        }
        let again = ContentShared::open(profile.path(), PublicKey([1; 32])).expect("reopen");
        let st = lock(&again.state);
        assert_eq!(st.blobs.len(), 3);
        assert_eq!(st.contents.len(), 1);
    }
}
