//! File transfer for `ferry up`: the node's file events (inside the node task) and the control
//! API behind `ferry file …` (`tox-protocol.md` §7.3; the protocol is `ferry_proto::node::file`).
//!
//! # Guarantees
//! * Every transfer is a [`TransferRecord`] in the profile's store (file id, friend, name, size,
//!   bytes done, state, path, hash), so it survives restarts.
//! * Incoming data is written at its offset into `<dest>.part`; the prefix on disk is what a
//!   resume seeks to. A file is reported `done` only when every byte up to the announced size
//!   arrived, was written and synced; then `.part` is renamed and the BLAKE3 of what was
//!   written (hashed as written, the kept prefix re-read on resume) is recorded. A short or
//!   failed transfer stays `broken`/`failed`, never `done`.
//! * Resume (c-toxcore style): when a friend comes online, every unfinished outgoing transfer
//!   is offered again with the same file id; a receiver that knows the file id seeks to the
//!   length of its `.part` file and accepts without asking.
//! * Outgoing chunks are read from the source with positioned reads when the node asks for
//!   them (`FileEvent::ChunkRequest`), so at most net_crypto's queue budget is in memory.
//! * Avatars (kind 1): ours is offered to every friend that comes online (file id = SHA-256 of
//!   the image, as `tox_hash`); a friend's is accepted automatically into
//!   `<profile>/avatars/<key>` (size 0 removes it).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{ApiError, FileAction, FileTransfer, SendFile};
use ferry_crypto::PublicKey;
use ferry_net::NodeHandle;
use ferry_proto::node::{
    FileCommand, FileDirection, FileEvent, FileNumber, Node, NodeError, PeerControl,
};
use ferry_store::{Direction, TransferRecord, TransferState};
use ferry_wire::messenger::{FILE_KIND_AVATAR, FILE_KIND_DATA, FILE_SIZE_UNKNOWN};

use crate::chat::{ChatShared, now_ms};

/// Largest avatar accepted from a friend, bytes (qTox and toxic use 64 KiB).
pub const MAX_AVATAR_SIZE: u64 = 1 << 20;
/// How often progress (bytes done) of a running transfer is written to the store.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(2);
/// Size of the per-transfer write buffer (incoming: contiguous chunks are written and hashed in
/// one go) and read-ahead buffer (outgoing: chunks are served from one positioned read), bytes.
/// One 1,371-byte chunk per syscall and per BLAKE3 update cost the receiver a quarter of its CPU
/// (BLAKE3 only uses its SIMD multi-chunk path on long inputs).
pub const IO_BUFFER: usize = 1 << 20;
/// Incoming bytes written between two early writebacks of a received file (32 MiB): see
/// `Sink::early_writeback`.
pub const WRITEBACK_EVERY: u64 = 32 << 20;
/// Full write buffers ([`IO_BUFFER`] bytes each) an incoming transfer may queue for its writer
/// thread: how far the node task runs ahead of the disk and the hash before it waits.
pub const WRITER_QUEUE: usize = 2;

/// An open transfer (friend online, file open).
#[derive(Debug)]
struct Open {
    friend: PublicKey,
    file: FileNumber,
    handle: File,
    /// Incoming: BLAKE3 of bytes `0..hashed` written so far (kept by the writer thread while
    /// it runs, back here after [`Open::finish`]).
    hasher: Option<blake3::Hasher>,
    hashed: u64,
    /// Incoming: the thread that writes and hashes the buffers ([`Writer`]).
    writer: Option<Writer>,
    /// Incoming: received bytes not written yet, which belong at `buf_at`; outgoing: bytes of
    /// the source read ahead from `buf_at`. At most [`IO_BUFFER`] bytes.
    buf: Vec<u8>,
    buf_at: u64,
    bytes: u64,
    rate_bytes: u64,
    rate_at: Instant,
    rate: f64,
    saved_at: Instant,
}

/// Incoming: what the writer thread owns: the file, the running hash and the writeback state.
#[derive(Debug)]
struct Sink {
    handle: File,
    hasher: Option<blake3::Hasher>,
    hashed: u64,
    /// Bytes written since the last early writeback started.
    unsynced: u64,
    /// Set while a background `sync_data` of this file runs (at most one at a time).
    syncing: Arc<AtomicBool>,
}

/// Incoming: a received file's writer thread. The node task hands it full buffers (at most
/// [`WRITER_QUEUE`] waiting); it writes each at its offset, hashes it when it extends the hashed
/// prefix and starts early writebacks, so that neither the `pwrite` (which can block on
/// dirty-page throttling) nor the BLAKE3 (about a fifth of a receiving node task's time at
/// 200 MiB/s) runs on the node task. Buffers come back through `spare` for reuse. The first
/// failure is kept in `failed` and reported at the next hand-over or at [`Open::finish`].
#[derive(Debug)]
struct Writer {
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    spare: Receiver<Vec<u8>>,
    failed: Arc<Mutex<Option<String>>>,
    join: Option<std::thread::JoinHandle<Sink>>,
}

impl Writer {
    /// Starts the thread for `sink`.
    fn start(sink: Sink) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(WRITER_QUEUE);
        let (spare_tx, spare) = std::sync::mpsc::sync_channel(WRITER_QUEUE + 1);
        let failed = Arc::new(Mutex::new(None));
        let fail = Arc::clone(&failed);
        let join = std::thread::Builder::new()
            .name("file-writer".into())
            .spawn(move || {
                let mut sink = sink;
                for (at, mut buf) in rx {
                    if lock(&fail).is_some() {
                        continue;
                    }
                    if let Err(e) = sink.write(at, &buf) {
                        *lock(&fail) = Some(e.to_string());
                    }
                    buf.clear();
                    let _ = spare_tx.try_send(buf);
                }
                sink
            })?;
        Ok(Self {
            tx: Some(tx),
            spare,
            failed,
            join: Some(join),
        })
    }

    fn check(&self) -> std::io::Result<()> {
        match lock(&self.failed).as_ref() {
            Some(e) => Err(std::io::Error::other(e.clone())),
            None => Ok(()),
        }
    }
}

impl Sink {
    /// Writes `buf` at `at`, hashing it when it extends the hashed prefix (any gap or failure
    /// drops the hash: the file is then hashed from disk at the end).
    fn write(&mut self, at: u64, buf: &[u8]) -> std::io::Result<()> {
        let r = self.handle.write_all_at(buf, at);
        if r.is_ok() {
            self.unsynced += buf.len() as u64;
            self.early_writeback();
        }
        if r.is_ok() && at == self.hashed {
            if let Some(h) = self.hasher.as_mut() {
                h.update(buf);
            }
            self.hashed += buf.len() as u64;
        } else {
            self.hasher = None;
        }
        r
    }

    /// Once [`WRITEBACK_EVERY`] bytes were written since the last one, starts a
    /// `sync_data` of the file on a short-lived thread (never two at once), so the page cache
    /// goes to disk while the transfer runs and the `sync_all` that completes a transfer finds
    /// little left to write (a 256 MiB file left dirty to the end took ~0.4 s to sync on this
    /// project's VM disk, a quarter of the transfer). Failures are ignored here: the final
    /// `sync_all` reports them.
    fn early_writeback(&mut self) {
        if self.unsynced < WRITEBACK_EVERY || self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = self.handle.try_clone() else {
            self.syncing.store(false, Ordering::Release);
            return;
        };
        self.unsynced = 0;
        let flag = Arc::clone(&self.syncing);
        let spawned = std::thread::Builder::new()
            .name("file-writeback".into())
            .spawn(move || {
                let _ = handle.sync_data();
                flag.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.syncing.store(false, Ordering::Release);
        }
    }
}

/// In-memory state of the running transfers (the store holds the rest).
#[derive(Debug, Default)]
pub struct FileState {
    live: HashMap<(PublicKey, FileNumber), u64>,
    open: HashMap<u64, Open>,
    /// Incoming offers not accepted yet: id → (friend, number).
    offered: HashMap<u64, (PublicKey, u8)>,
}

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
        NodeError::NotFriend | NodeError::NoSuchFile => ApiError::not_found(e.to_string()),
        NodeError::Congested(_) | NodeError::NotOnline => ApiError::unavailable(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}

fn stopped(e: ferry_net::NetError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// BLAKE3 of a whole file, hex.
///
/// # Errors
/// I/O errors.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// A file name safe to create in a directory: the last path component, no leading dots, no
/// separators or control characters; `file` when nothing is left.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim_start_matches('.')
        .to_string();
    if clean.is_empty() {
        "file".to_string()
    } else {
        clean
    }
}

fn part_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    if !p.exists() && !part_path(&p).exists() {
        return p;
    }
    for i in 1.. {
        let q = dir.join(format!("{name}.{i}"));
        if !q.exists() && !part_path(&q).exists() {
            return q;
        }
    }
    p
}

impl ChatShared {
    fn files_dir(&self) -> PathBuf {
        self.profile_dir().join("downloads")
    }

    fn avatar_path(&self, friend: &PublicKey) -> PathBuf {
        self.profile_dir().join("avatars").join(friend.to_hex())
    }

    fn save(&self, r: &TransferRecord) -> u64 {
        match self.store.put_transfer(r) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "storing file transfer");
                r.id
            }
        }
    }

    fn set_state(&self, id: u64, state: TransferState, f: impl FnOnce(&mut TransferRecord)) {
        if let Ok(Some(mut r)) = self.store.transfer(id) {
            r.state = state;
            f(&mut r);
            self.save(&r);
        }
    }

    /// After a restart nothing is live: running transfers become `broken` (resumed when the
    /// friend comes online).
    pub(crate) fn files_restore(&self) {
        for mut r in self.store.transfers().unwrap_or_default() {
            if matches!(r.state, TransferState::Active | TransferState::Paused) {
                r.state = TransferState::Broken;
                self.save(&r);
            }
        }
    }

    fn api_record(&self, r: TransferRecord, st: &FileState) -> FileTransfer {
        let open = st.open.get(&r.id);
        let (bytes, rate) = open.map_or((r.bytes_done, 0), |o| {
            let rate = if o.rate_at.elapsed() > Duration::from_secs(3) {
                0.0
            } else {
                o.rate
            };
            (o.bytes, rate as u64)
        });
        FileTransfer {
            id: r.id,
            friend: r.friend,
            direction: match r.direction {
                Direction::In => "in",
                Direction::Out => "out",
            }
            .to_string(),
            kind: if r.kind == FILE_KIND_AVATAR {
                "avatar"
            } else {
                "data"
            }
            .to_string(),
            name: r.name,
            size: r.size,
            bytes_done: bytes,
            rate,
            state: r.state.as_str().to_string(),
            file_id: r.file_id,
            path: r.path,
            hash: r.hash,
            error: r.error,
        }
    }

    fn transfer_json(&self, id: u64) -> Result<FileTransfer, ApiError> {
        let r = self
            .store
            .transfer(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("no file transfer {id}")))?;
        Ok(self.api_record(r, &lock(&self.files)))
    }

    /// `GET /v1/files`.
    pub fn files_list(&self) -> Result<Vec<FileTransfer>, ApiError> {
        let recs = self.store.transfers().map_err(internal)?;
        let st = lock(&self.files);
        // Avatar offers repeat at every reconnect: list only the live or received ones.
        Ok(recs
            .into_iter()
            .filter(|r| {
                r.kind != FILE_KIND_AVATAR
                    || !r.state.is_final()
                    || (r.direction == Direction::In && r.state == TransferState::Done)
            })
            .map(|r| self.api_record(r, &st))
            .collect())
    }

    /// `POST /v1/files/send`: hashes the source, records the transfer and offers it now if the
    /// friend is online (else when it comes online).
    pub async fn files_send(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: SendFile,
    ) -> Result<FileTransfer, ApiError> {
        let pk = self.resolve_friend(&req.friend)?;
        let path = PathBuf::from(&req.path);
        let meta = std::fs::metadata(&path)
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ApiError::bad_request(format!(
                "{} is not a file",
                path.display()
            )));
        }
        let p2 = path.clone();
        let hash = tokio::task::spawn_blocking(move || hash_file(&p2))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let seed = ferry_crypto::rng::os_seed().map_err(internal)?;
        let file_id: [u8; 32] = ferry_crypto::rng::FerryRng::from_seed(seed).bytes();
        let name = safe_name(
            &path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
        let rec = TransferRecord {
            id: 0,
            friend: pk.to_hex(),
            direction: Direction::Out,
            kind: FILE_KIND_DATA,
            file_id: hex::encode(file_id),
            name: name.chars().take(255).collect(),
            size: meta.len(),
            bytes_done: 0,
            state: TransferState::Waiting,
            path: path.to_string_lossy().into_owned(),
            hash: Some(hash),
            error: None,
            created_ms: now_ms(),
        };
        let id = self.store.put_transfer(&rec).map_err(internal)?;
        let me = Arc::clone(self);
        node.call(move |n, now| me.offer(n, now, pk, id))
            .await
            .map_err(stopped)?;
        self.transfer_json(id)
    }

    /// Offers outgoing record `id` to `pk` if it is online (inside the node task).
    fn offer(&self, n: &mut Node, now: Instant, pk: PublicKey, id: u64) {
        let Ok(Some(r)) = self.store.transfer(id) else {
            return;
        };
        let Ok(file_id) = ferry_crypto::decode_hex_array::<32>(&r.file_id) else {
            return;
        };
        let handle = match File::open(&r.path) {
            Ok(h) => h,
            Err(e) => {
                self.set_state(id, TransferState::Failed, |r| {
                    r.error = Some(format!("source: {e}"));
                });
                return;
            }
        };
        match n.file_send(now, &pk, r.kind, r.size, file_id, r.name.as_bytes()) {
            Ok(number) => {
                let file = FileNumber::outgoing(number);
                // Outgoing: no writer thread, nothing that can fail.
                let Ok(open) = new_open(pk, file, handle, None, 0) else {
                    return;
                };
                let mut st = lock(&self.files);
                st.live.insert((pk, file), id);
                st.open.insert(id, open);
                drop(st);
                if r.state != TransferState::Waiting {
                    self.set_state(id, TransferState::Waiting, |_| {});
                }
            }
            Err(NodeError::NotOnline) => {}
            Err(e) => tracing::warn!(id, error = %e, "offering file"),
        }
    }

    fn live_of(&self, id: u64) -> Result<(PublicKey, FileNumber), ApiError> {
        let st = lock(&self.files);
        st.live
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| *k)
            .ok_or_else(|| ApiError::unavailable("that transfer is not live (friend offline?)"))
    }

    /// `POST /v1/files/accept`.
    pub async fn files_accept(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: FileAction,
    ) -> Result<FileTransfer, ApiError> {
        let r = self
            .store
            .transfer(req.id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("no file transfer {}", req.id)))?;
        if r.state != TransferState::Offered {
            return Err(ApiError::conflict(format!(
                "transfer {} is {}, not offered",
                r.id,
                r.state.as_str()
            )));
        }
        let dir = match req.to {
            Some(d) => PathBuf::from(d),
            None => self.auto_dir().unwrap_or_else(|| self.files_dir()),
        };
        let me = Arc::clone(self);
        node.call(move |n, now| me.accept_into(n, now, req.id, &dir))
            .await
            .map_err(stopped)??;
        self.transfer_json(req.id)
    }

    fn auto_dir(&self) -> Option<PathBuf> {
        self.store
            .settings()
            .ok()
            .and_then(|s| s.auto_accept_files)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    }

    /// Accepts offered record `id` into `dir` (inside the node task).
    fn accept_into(&self, n: &mut Node, now: Instant, id: u64, dir: &Path) -> Result<(), ApiError> {
        let Some((pk, number)) = lock(&self.files).offered.get(&id).copied() else {
            return Err(ApiError::unavailable(
                "the offer is no longer live (friend offline?)",
            ));
        };
        let Ok(Some(r)) = self.store.transfer(id) else {
            return Err(ApiError::not_found("no such transfer"));
        };
        std::fs::create_dir_all(dir).map_err(|e| internal(format!("{}: {e}", dir.display())))?;
        let path = if r.kind == FILE_KIND_AVATAR {
            dir.join(pk.to_hex())
        } else {
            unique_path(dir, &safe_name(&r.name))
        };
        let handle = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .truncate(true)
            .open(part_path(&path))
            .map_err(|e| internal(format!("{}: {e}", path.display())))?;
        let file = FileNumber::incoming(number);
        let open = new_open(pk, file, handle, Some(blake3::Hasher::new()), 0)
            .map_err(|e| internal(format!("starting the file writer: {e}")))?;
        n.file_control(now, &pk, file, FileCommand::Accept)
            .map_err(node_err)?;
        let mut st = lock(&self.files);
        st.offered.remove(&id);
        st.live.insert((pk, file), id);
        st.open.insert(id, open);
        drop(st);
        self.set_state(id, TransferState::Active, |r| {
            r.path = path.to_string_lossy().into_owned();
            r.bytes_done = 0;
        });
        Ok(())
    }

    /// `POST /v1/files/{cancel,pause,resume}`.
    pub async fn files_control(
        self: &Arc<Self>,
        node: &NodeHandle,
        id: u64,
        command: FileCommand,
    ) -> Result<FileTransfer, ApiError> {
        let r = self
            .store
            .transfer(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("no file transfer {id}")))?;
        if r.state.is_final() {
            return Err(ApiError::conflict(format!(
                "transfer {id} is {}",
                r.state.as_str()
            )));
        }
        let live = self.live_of(id).ok().or_else(|| {
            lock(&self.files)
                .offered
                .get(&id)
                .map(|(pk, n)| (*pk, FileNumber::incoming(*n)))
        });
        match (live, command) {
            (Some((pk, file)), _) => {
                node.call(move |n, now| n.file_control(now, &pk, file, command))
                    .await
                    .map_err(stopped)?
                    .map_err(node_err)?;
            }
            (None, FileCommand::Kill) => {}
            (None, _) => {
                return Err(ApiError::unavailable(
                    "that transfer is not live (friend offline?)",
                ));
            }
        }
        match command {
            FileCommand::Kill => {
                self.close(id);
                let part = (r.direction == Direction::In && !r.path.is_empty())
                    .then(|| part_path(Path::new(&r.path)));
                if let Some(p) = part {
                    let _ = std::fs::remove_file(p);
                }
                self.set_state(id, TransferState::Cancelled, |r| {
                    r.error = Some("cancelled by us".into());
                });
            }
            FileCommand::Pause => self.set_state(id, TransferState::Paused, |_| {}),
            FileCommand::Accept => self.set_state(id, TransferState::Active, |_| {}),
        }
        self.transfer_json(id)
    }

    /// `POST /v1/files/avatar`.
    pub async fn files_set_avatar(
        self: &Arc<Self>,
        node: &NodeHandle,
        path: String,
    ) -> Result<(), ApiError> {
        let mut s = self.store.settings().map_err(internal)?;
        if path.is_empty() {
            s.avatar = None;
        } else {
            let meta = std::fs::metadata(&path)
                .map_err(|e| ApiError::bad_request(format!("{path}: {e}")))?;
            if meta.len() > MAX_AVATAR_SIZE {
                return Err(ApiError::bad_request("avatar larger than 1 MiB"));
            }
            let dst = self.profile_dir().join("avatar");
            std::fs::copy(&path, &dst).map_err(internal)?;
            s.avatar = Some(dst.to_string_lossy().into_owned());
        }
        self.store.set_settings(&s).map_err(internal)?;
        let me = Arc::clone(self);
        node.call(move |n, now| {
            for f in n.friends() {
                if f.connection != ferry_proto::node::Connection::None {
                    me.send_avatar(n, now, f.public_key);
                }
            }
        })
        .await
        .map_err(stopped)?;
        Ok(())
    }

    fn send_avatar(&self, n: &mut Node, now: Instant, pk: PublicKey) {
        let avatar = self.store.settings().ok().and_then(|s| s.avatar);
        let data = avatar
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .unwrap_or_default();
        let path = avatar.unwrap_or_default();
        let rec = TransferRecord {
            id: 0,
            friend: pk.to_hex(),
            direction: Direction::Out,
            kind: FILE_KIND_AVATAR,
            file_id: hex::encode(ferry_crypto::sha256(&data)),
            name: "avatar".into(),
            size: data.len() as u64,
            bytes_done: 0,
            state: TransferState::Waiting,
            path: path.clone(),
            hash: Some(blake3::hash(&data).to_hex().to_string()),
            error: None,
            created_ms: now_ms(),
        };
        let id = self.save(&rec);
        if path.is_empty() {
            // "No avatar": an offer of size 0 (the receiver kills it).
            let _ = n.file_send(now, &pk, FILE_KIND_AVATAR, 0, [0; 32], b"");
            self.set_state(id, TransferState::Done, |_| {});
        } else {
            self.offer(n, now, pk, id);
        }
    }

    fn close(&self, id: u64) -> Option<Open> {
        let mut st = lock(&self.files);
        st.live.retain(|_, v| *v != id);
        st.offered.remove(&id);
        let mut o = st.open.remove(&id)?;
        if o.file.direction == FileDirection::Incoming
            && let Err(e) = o.finish()
        {
            tracing::warn!(id, error = %e, "writing buffered file data");
        }
        Some(o)
    }

    fn kill(&self, n: &mut Node, now: Instant, id: u64, state: TransferState, why: String) {
        if let Some(o) = self.close(id) {
            let _ = n.file_control(now, &o.friend, o.file, FileCommand::Kill);
        }
        tracing::warn!(id, error = %why, "file transfer ended");
        self.set_state(id, state, |r| r.error = Some(why));
    }

    /// A friend came online: offer unfinished outgoing transfers again (resume) and our avatar.
    pub(crate) fn files_friend_online(&self, n: &mut Node, now: Instant, pk: PublicKey) {
        let hex = pk.to_hex();
        let recs = self.store.transfers().unwrap_or_default();
        for r in recs {
            if r.friend == hex
                && r.direction == Direction::Out
                && r.kind == FILE_KIND_DATA
                && matches!(
                    r.state,
                    TransferState::Waiting
                        | TransferState::Active
                        | TransferState::Paused
                        | TransferState::Broken
                )
            {
                self.offer(n, now, pk, r.id);
            }
        }
        if self.store.settings().ok().and_then(|s| s.avatar).is_some() {
            self.send_avatar(n, now, pk);
        }
    }

    /// A file event from the node (inside the node task).
    pub(crate) fn on_file_event(&self, n: &mut Node, now: Instant, e: FileEvent) {
        match e {
            FileEvent::Recv {
                friend,
                number,
                kind,
                size,
                file_id,
                name,
            } => self.on_recv(n, now, friend, number, kind, size, file_id, &name),
            FileEvent::Chunk {
                friend,
                number,
                position,
                data,
            } => self.on_chunk(n, now, friend, number, position, &data),
            FileEvent::ChunkRequest {
                friend,
                number,
                position,
                length,
            } => {
                let file = FileNumber::outgoing(number);
                let Some(id) = lock(&self.files).live.get(&(friend, file)).copied() else {
                    return;
                };
                if length == 0 {
                    self.close(id);
                    self.set_state(id, TransferState::Done, |r| r.bytes_done = position);
                    tracing::info!(id, bytes = position, "file sent");
                    return;
                }
                let read = {
                    let mut st = lock(&self.files);
                    st.open.get_mut(&id).map(|o| {
                        o.read_chunk(position, usize::from(length)).map(|buf| {
                            n.file_send_chunk(now, &friend, number, position, buf)
                                .is_ok()
                        })
                    })
                };
                match read {
                    Some(Ok(true)) => {
                        self.progress(id, position + u64::from(length));
                    }
                    Some(Err(e)) => self.kill(
                        n,
                        now,
                        id,
                        TransferState::Failed,
                        format!("reading source: {e}"),
                    ),
                    _ => {}
                }
            }
            FileEvent::Control {
                friend,
                file,
                control,
            } => {
                let Some(id) = lock(&self.files).live.get(&(friend, file)).copied() else {
                    return;
                };
                match control {
                    PeerControl::Accept | PeerControl::Resume => {
                        self.set_state(id, TransferState::Active, |_| {});
                    }
                    PeerControl::Pause => self.set_state(id, TransferState::Paused, |_| {}),
                    PeerControl::Seek(pos) => {
                        if let Some(o) = lock(&self.files).open.get_mut(&id) {
                            o.bytes = pos;
                        }
                        self.set_state(id, TransferState::Waiting, |r| r.bytes_done = pos);
                    }
                    PeerControl::Kill => {
                        self.close(id);
                        self.set_state(id, TransferState::Cancelled, |r| {
                            r.error = Some("cancelled by the friend".into());
                        });
                    }
                }
            }
            FileEvent::Broken {
                friend,
                file,
                transferred,
            } => {
                let id = lock(&self.files).live.get(&(friend, file)).copied();
                let offered = {
                    let mut st = lock(&self.files);
                    let k = st
                        .offered
                        .iter()
                        .find(|(_, v)| **v == (friend, file.number))
                        .map(|(k, _)| *k);
                    if file.direction == FileDirection::Incoming {
                        k.and_then(|k| st.offered.remove(&k).map(|_| k))
                    } else {
                        None
                    }
                };
                if offered.is_some() {
                    return;
                }
                let Some(id) = id else {
                    return;
                };
                let o = self.close(id);
                if let Some(o) = &o {
                    let _ = o.handle.sync_data();
                }
                if let Ok(Some(r)) = self.store.transfer(id)
                    && !r.state.is_final()
                {
                    let next = if r.kind == FILE_KIND_AVATAR {
                        TransferState::Cancelled
                    } else if r.state == TransferState::Waiting && r.direction == Direction::Out {
                        TransferState::Waiting
                    } else {
                        TransferState::Broken
                    };
                    self.set_state(id, next, |r| {
                        r.bytes_done = o.map_or(transferred, |o| o.bytes);
                    });
                }
            }
        }
    }

    fn progress(&self, id: u64, bytes: u64) {
        let save = {
            let mut st = lock(&self.files);
            let Some(o) = st.open.get_mut(&id) else {
                return;
            };
            o.bytes = bytes;
            let el = o.rate_at.elapsed();
            if el >= Duration::from_millis(500) {
                o.rate = (bytes.saturating_sub(o.rate_bytes)) as f64 / el.as_secs_f64();
                o.rate_bytes = bytes;
                o.rate_at = Instant::now();
            }
            if o.saved_at.elapsed() >= SAVE_INTERVAL {
                o.saved_at = Instant::now();
                true
            } else {
                false
            }
        };
        if save && let Ok(Some(mut r)) = self.store.transfer(id) {
            r.bytes_done = bytes;
            self.save(&r);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_recv(
        &self,
        n: &mut Node,
        now: Instant,
        friend: PublicKey,
        number: u8,
        kind: u32,
        size: u64,
        file_id: [u8; 32],
        name: &[u8],
    ) {
        let name = String::from_utf8_lossy(name).into_owned();
        let fid = hex::encode(file_id);
        let hex = friend.to_hex();
        let file = FileNumber::incoming(number);
        if kind == FILE_KIND_AVATAR {
            let path = self.avatar_path(&friend);
            if size == 0 {
                let _ = std::fs::remove_file(&path);
                let _ = n.file_control(now, &friend, file, FileCommand::Kill);
                return;
            }
            let same = std::fs::read(&path)
                .map(|d| ferry_crypto::sha256(&d) == file_id)
                .unwrap_or(false);
            if same || size > MAX_AVATAR_SIZE {
                let _ = n.file_control(now, &friend, file, FileCommand::Kill);
                return;
            }
        }
        let recs = self.store.transfers().unwrap_or_default();
        // Resume: an accepted, unfinished transfer of the same file from the same friend.
        if kind == FILE_KIND_DATA
            && let Some(r) = recs.iter().rev().find(|r| {
                r.friend == hex
                    && r.direction == Direction::In
                    && r.file_id == fid
                    && r.size == size
                    && !r.path.is_empty()
                    && matches!(
                        r.state,
                        TransferState::Active | TransferState::Paused | TransferState::Broken
                    )
            })
        {
            self.resume_incoming(n, now, friend, number, r);
            return;
        }
        // Offered again before we accepted: same record, new number.
        if let Some(r) = recs.iter().rev().find(|r| {
            r.friend == hex
                && r.direction == Direction::In
                && r.file_id == fid
                && r.state == TransferState::Offered
        }) {
            lock(&self.files).offered.insert(r.id, (friend, number));
            return;
        }
        let rec = TransferRecord {
            id: 0,
            friend: hex,
            direction: Direction::In,
            kind,
            file_id: fid,
            name,
            size,
            bytes_done: 0,
            state: TransferState::Offered,
            path: String::new(),
            hash: None,
            error: None,
            created_ms: now_ms(),
        };
        let id = self.save(&rec);
        lock(&self.files).offered.insert(id, (friend, number));
        tracing::info!(id, from = %friend, size, "file offered");
        let auto = if kind == FILE_KIND_AVATAR {
            Some(self.profile_dir().join("avatars"))
        } else {
            self.auto_dir()
        };
        if let Some(dir) = auto
            && let Err(e) = self.accept_into(n, now, id, &dir)
        {
            tracing::warn!(id, error = %e.message, "auto-accepting file");
        }
    }

    fn resume_incoming(
        &self,
        n: &mut Node,
        now: Instant,
        friend: PublicKey,
        number: u8,
        r: &TransferRecord,
    ) {
        let file = FileNumber::incoming(number);
        let part = part_path(Path::new(&r.path));
        let handle = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .truncate(false)
            .open(&part);
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                let _ = n.file_control(now, &friend, file, FileCommand::Kill);
                self.set_state(r.id, TransferState::Failed, |r| {
                    r.error = Some(format!("{}: {e}", part.display()));
                });
                return;
            }
        };
        let mut prefix = handle.metadata().map_or(0, |m| m.len());
        if r.size != FILE_SIZE_UNKNOWN && prefix >= r.size {
            prefix = 0;
        }
        if r.size == FILE_SIZE_UNKNOWN {
            // A stream cannot seek (c-toxcore: position < size); start over.
            prefix = 0;
        }
        let _ = handle.set_len(prefix);
        // Re-hash the prefix kept on disk.
        let mut hasher = blake3::Hasher::new();
        let mut left = prefix;
        let mut off = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let k = left.min(buf.len() as u64) as usize;
            if handle.read_exact_at(&mut buf[..k], off).is_err() {
                break;
            }
            hasher.update(&buf[..k]);
            off += k as u64;
            left -= k as u64;
        }
        let prefix = off;
        let _ = handle.set_len(prefix);
        if prefix > 0
            && let Err(e) = n.file_seek(now, &friend, number, prefix)
        {
            tracing::warn!(id = r.id, error = %e, "seek for resume");
            return;
        }
        let open = match new_open(friend, file, handle, Some(hasher), prefix) {
            Ok(o) => o,
            Err(e) => {
                let _ = n.file_control(now, &friend, file, FileCommand::Kill);
                self.set_state(r.id, TransferState::Failed, |r| {
                    r.error = Some(format!("starting the file writer: {e}"));
                });
                return;
            }
        };
        if let Err(e) = n.file_control(now, &friend, file, FileCommand::Accept) {
            tracing::warn!(id = r.id, error = %e, "accept for resume");
            return;
        }
        tracing::info!(id = r.id, prefix, "resuming incoming file");
        let mut st = lock(&self.files);
        st.live.insert((friend, file), r.id);
        st.open.insert(r.id, open);
        drop(st);
        self.set_state(r.id, TransferState::Active, |r| r.bytes_done = prefix);
    }

    fn on_chunk(
        &self,
        n: &mut Node,
        now: Instant,
        friend: PublicKey,
        number: u8,
        position: u64,
        data: &[u8],
    ) {
        let file = FileNumber::incoming(number);
        let Some(id) = lock(&self.files).live.get(&(friend, file)).copied() else {
            return;
        };
        if !data.is_empty() {
            let res = {
                let mut st = lock(&self.files);
                let Some(o) = st.open.get_mut(&id) else {
                    return;
                };
                o.write_chunk(position, data)
            };
            match res {
                Ok(()) => self.progress(id, position + data.len() as u64),
                Err(e) => self.kill(n, now, id, TransferState::Failed, format!("writing: {e}")),
            }
            return;
        }
        // The end: complete only with every byte up to the size written and synced.
        let Some(o) = self.close(id) else {
            return;
        };
        let Ok(Some(r)) = self.store.transfer(id) else {
            return;
        };
        let fail = |why: String| {
            tracing::warn!(id, error = %why, "incoming file incomplete");
            self.set_state(id, TransferState::Failed, |r| {
                r.bytes_done = position;
                r.error = Some(why);
            });
        };
        if r.size != FILE_SIZE_UNKNOWN && position != r.size {
            return fail(format!("ended at {position} of {} bytes", r.size));
        }
        if let Err(e) = o.handle.sync_all() {
            return fail(format!("sync: {e}"));
        }
        let on_disk = o.handle.metadata().map_or(0, |m| m.len());
        if on_disk != position {
            return fail(format!("{on_disk} bytes on disk, expected {position}"));
        }
        let part = part_path(Path::new(&r.path));
        let hash = match o.hasher {
            Some(h) if o.hashed == position => h.finalize().to_hex().to_string(),
            _ => match hash_file(&part) {
                Ok(h) => h,
                Err(e) => return fail(format!("hashing: {e}")),
            },
        };
        if let Err(e) = std::fs::rename(&part, &r.path) {
            return fail(format!("rename: {e}"));
        }
        tracing::info!(id, bytes = position, %hash, "file received");
        self.set_state(id, TransferState::Done, |r| {
            r.bytes_done = position;
            r.hash = Some(hash);
        });
    }
}

impl Open {
    /// Incoming: hands the buffered bytes to the writer thread (waiting while it has
    /// [`WRITER_QUEUE`] buffers queued).
    ///
    /// # Errors
    /// The writer's first failure, or its absence.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(w) = self.writer.as_ref() else {
            return Err(std::io::Error::other("no writer for an incoming file"));
        };
        w.check()?;
        let next = w
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(IO_BUFFER));
        let full = std::mem::replace(&mut self.buf, next);
        w.tx.as_ref()
            .ok_or_else(|| std::io::Error::other("file writer closed"))?
            .send((self.buf_at, full))
            .map_err(|_| std::io::Error::other("file writer stopped"))
    }

    /// Incoming: flushes, waits until the writer thread wrote everything and takes the hash
    /// state back into `hasher`/`hashed`.
    ///
    /// # Errors
    /// The writer's first failure.
    fn finish(&mut self) -> std::io::Result<()> {
        let flushed = self.flush();
        let Some(mut w) = self.writer.take() else {
            return flushed;
        };
        w.tx = None;
        if let Some(sink) = w.join.take().and_then(|j| j.join().ok()) {
            self.hasher = sink.hasher;
            self.hashed = sink.hashed;
        } else {
            self.hasher = None;
        }
        flushed?;
        w.check()
    }

    /// Incoming: buffers a chunk, flushing first when it does not continue the buffer or the
    /// buffer is full.
    fn write_chunk(&mut self, position: u64, data: &[u8]) -> std::io::Result<()> {
        if self.buf.capacity() < IO_BUFFER {
            self.buf.reserve_exact(IO_BUFFER - self.buf.len());
        }
        if position != self.buf_at + self.buf.len() as u64
            || self.buf.len() + data.len() > IO_BUFFER
        {
            self.flush()?;
        }
        if self.buf.is_empty() {
            self.buf_at = position;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Outgoing: `length` bytes of the source at `position`, from the read-ahead buffer (refilled
    /// with one positioned read of up to [`IO_BUFFER`] bytes when it does not hold them).
    fn read_chunk(&mut self, position: u64, length: usize) -> std::io::Result<&[u8]> {
        let end = position + length as u64;
        if position < self.buf_at || end > self.buf_at + self.buf.len() as u64 {
            self.buf.resize(IO_BUFFER.max(length), 0);
            let mut got = 0;
            while got < self.buf.len() {
                match self
                    .handle
                    .read_at(&mut self.buf[got..], position + got as u64)
                {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.clear();
                        return Err(e);
                    }
                }
            }
            self.buf.truncate(got);
            self.buf_at = position;
            if got < length {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let from = usize::try_from(position - self.buf_at).map_err(std::io::Error::other)?;
        Ok(&self.buf[from..from + length])
    }
}

/// An open transfer; an incoming one (`hasher` given: the hash of the `bytes` already on disk)
/// gets its [`Writer`] thread.
///
/// # Errors
/// The writer thread cannot be started or the file handle not duplicated.
fn new_open(
    friend: PublicKey,
    file: FileNumber,
    handle: File,
    hasher: Option<blake3::Hasher>,
    bytes: u64,
) -> std::io::Result<Open> {
    let now = Instant::now();
    let writer = match hasher {
        Some(h) => Some(Writer::start(Sink {
            handle: handle.try_clone()?,
            hasher: Some(h),
            hashed: bytes,
            unsynced: 0,
            syncing: Arc::new(AtomicBool::new(false)),
        })?),
        None => None,
    };
    Ok(Open {
        friend,
        file,
        handle,
        hasher: None,
        hashed: bytes,
        writer,
        buf: Vec::new(),
        buf_at: 0,
        bytes,
        rate_bytes: bytes,
        rate_at: now,
        rate: 0.0,
        saved_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name(".hidden"), "hidden");
        assert_eq!(safe_name(""), "file");
        assert_eq!(safe_name("a\\b\nc"), "bc");
        assert_eq!(safe_name("ok.txt"), "ok.txt");
    }

    fn incoming(handle: File, prefix: &[u8]) -> Open {
        let mut h = blake3::Hasher::new();
        h.update(prefix);
        let friend = PublicKey::from_slice(&[7; 32]).expect("key");
        new_open(
            friend,
            FileNumber::incoming(0),
            handle,
            Some(h),
            prefix.len() as u64,
        )
        .expect("writer")
    }

    #[test]
    fn the_writer_thread_writes_and_hashes_what_the_node_task_hands_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.part");
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(7) >> 3) as u8)
            .collect();
        // A resumed transfer: 5,000 bytes already on disk and hashed.
        std::fs::write(&path, &data[..5000]).expect("prefix");
        let handle = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&path)
            .expect("open");
        let mut o = incoming(handle, &data[..5000]);
        for (i, c) in data[5000..].chunks(1371).enumerate() {
            o.write_chunk(5000 + (i * 1371) as u64, c).expect("chunk");
        }
        o.finish().expect("finish");
        assert_eq!(o.hashed, data.len() as u64);
        let hash = o.hasher.take().expect("hash kept").finalize();
        assert_eq!(hash, blake3::hash(&data));
        assert!(std::fs::read(&path).expect("read") == data, "file content");
    }

    #[test]
    fn a_gap_drops_the_running_hash_and_a_write_failure_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.part");
        let handle = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&path)
            .expect("open");
        let mut o = incoming(handle, b"");
        o.write_chunk(0, &[1; 100]).expect("chunk");
        o.write_chunk(4096, &[2; 100]).expect("chunk after a gap");
        o.finish().expect("finish");
        assert!(o.hasher.is_none(), "the end hashes from disk instead");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 4196);
        // A handle that cannot write: the failure comes back, not a silent loss.
        let mut o = incoming(File::open(&path).expect("read-only"), b"");
        o.write_chunk(0, &[3; 100]).expect("handed over");
        assert!(o.finish().is_err(), "write failure reported");
    }
}
