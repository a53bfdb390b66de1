//! ferry's persistence: one embedded [redb](https://www.redb.org) database per profile
//! (`<profile>/ferry.redb`) holding what a chat user expects to survive a restart or a crash
//! (issue 4 point 4): the friend list, pending friend requests, the message history (with
//! delivery state, so undelivered outgoing messages are resent after a restart) and settings
//! (name, status message, auto-accept).
//!
//! The identity itself (long-term secret key, nospam) stays in `identity.toml` (ferry-daemon).
//!
//! # Durability
//! Every mutating call is one redb write transaction committed before it returns (redb's default
//! durability: fsync on commit). The daemon stores an incoming message before the node sends the
//! net_crypto acknowledgement for it, and acknowledges a `ferry send` to the user only after the
//! outgoing message is committed, so no message acknowledged to anyone is lost on `kill -9`.
//! Incoming messages take a faster way to the same guarantee: the node task writes them to the
//! inbox journal (`ferry.journal`, one `write(2)`, no `fsync`) and a committer applies them to
//! the history in batches (see [`journal`]).
//!
//! # Caps
//! Friend requests come from strangers: at most [`MAX_REQUESTS`] are kept (the oldest is
//! evicted). History is capped at [`MAX_MESSAGES`] (the oldest are pruned).

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::Path;
use std::sync::Mutex;

pub mod journal;
pub use journal::{Journaled, journal_path};

use ferry_crypto::PublicKey;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// Most pending friend requests kept; a new one beyond it evicts the oldest.
pub const MAX_REQUESTS: usize = 256;
/// Most history entries kept; older ones are pruned.
pub const MAX_MESSAGES: u64 = 1_000_000;

const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const FRIENDS: TableDefinition<&[u8], &str> = TableDefinition::new("friends");
const REQUESTS: TableDefinition<&[u8], &str> = TableDefinition::new("friend_requests");
const MESSAGES: TableDefinition<u64, &str> = TableDefinition::new("messages");
const TRANSFERS: TableDefinition<u64, &str> = TableDefinition::new("file_transfers");
/// Most file transfer records kept; the oldest finished ones are pruned beyond it.
pub const MAX_TRANSFERS: usize = 10_000;

/// State of a file transfer record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    /// Incoming, offered, not accepted yet.
    Offered,
    /// Outgoing, offered, not accepted yet (or being offered again after a break).
    Waiting,
    /// Data flowing.
    Active,
    /// Paused by us.
    Paused,
    /// The friend went offline (or we restarted) mid-way; resumes when the friend is back.
    Broken,
    /// Complete (incoming: every byte written, synced and hashed).
    Done,
    /// Cancelled by either side.
    Cancelled,
    /// An I/O error.
    Failed,
}

impl TransferState {
    /// Lower-case name (the API spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offered => "offered",
            Self::Waiting => "waiting",
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Broken => "broken",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    /// Done, cancelled or failed.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled | Self::Failed)
    }
}

/// One file transfer, persisted so it resumes after a restart (tox-protocol.md §7.3: resume =
/// the same file id offered again, the receiver seeks to the prefix it has).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// Local id (key).
    pub id: u64,
    /// The friend's long-term key, 64 hex digits.
    pub friend: String,
    /// In or out.
    pub direction: Direction,
    /// Tox file kind (0 data, 1 avatar).
    pub kind: u32,
    /// The Tox file id, 64 hex digits.
    pub file_id: String,
    /// Name as offered.
    pub name: String,
    /// Size, bytes (`u64::MAX` unknown).
    pub size: u64,
    /// Bytes done as of the last save (incoming: the file on disk is authoritative).
    pub bytes_done: u64,
    /// State.
    pub state: TransferState,
    /// Source (out) or destination (in) path; empty before an incoming file is accepted.
    pub path: String,
    /// BLAKE3 hex: of the source (out); of what was written, once done (in).
    #[serde(default)]
    pub hash: Option<String>,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub error: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or written.
    #[error("database {0}")]
    Db(String),
    /// A stored record does not decode (corruption or a newer format).
    #[error("stored record does not decode: {0}")]
    Corrupt(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Our own profile fields that friends see, plus local settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Our name (≤ 128 bytes UTF-8, messenger NICKNAME).
    #[serde(default)]
    pub name: String,
    /// Our status message (≤ 1007 bytes UTF-8).
    #[serde(default)]
    pub status_message: String,
    /// Accept every friend request automatically.
    #[serde(default)]
    pub auto_accept: bool,
    /// Accept files from friends automatically into this directory.
    #[serde(default)]
    pub auto_accept_files: Option<String>,
    /// Path of our avatar image, if set.
    #[serde(default)]
    pub avatar: Option<String>,
}

/// One friend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRecord {
    /// The friend's long-term public key (64 hex digits).
    pub public_key: String,
    /// Their name as they last sent it.
    #[serde(default)]
    pub name: String,
    /// Their status message as they last sent it.
    #[serde(default)]
    pub status_message: String,
    /// `Some((nospam, message))` while our friend request to them is unanswered (they are not
    /// yet known to have added us); `None` once confirmed or when added from their request.
    #[serde(default)]
    pub request: Option<(u32, String)>,
    /// When added, ms since the Unix epoch.
    pub added_ms: u64,
    /// When last seen online, ms since the Unix epoch (0 = never).
    #[serde(default)]
    pub last_seen_ms: u64,
}

/// A friend request we received and have not answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The requester's long-term public key (64 hex digits).
    pub public_key: String,
    /// Their message (≤ 1016 bytes).
    pub message: String,
    /// When received, ms since the Unix epoch.
    pub time_ms: u64,
}

/// Direction of a history entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the friend to us.
    In,
    /// From us to the friend.
    Out,
}

/// Kind of a chat message (messenger MESSAGE 0x40 / ACTION 0x41).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A normal message.
    Normal,
    /// An action ("/me waves").
    Action,
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The friend's long-term public key (64 hex digits).
    pub friend: String,
    /// In or out.
    pub direction: Direction,
    /// Normal or action.
    pub kind: MessageKind,
    /// The text (UTF-8; outgoing texts over 1372 bytes are split into several packets on the
    /// wire but stored once).
    pub text: String,
    /// When sent or received, ms since the Unix epoch.
    pub time_ms: u64,
    /// Outgoing: the friend's node acknowledged every packet of it (read receipt). Incoming:
    /// always true.
    #[serde(default)]
    pub delivered: bool,
}

/// The profile database. Cheap to share behind an `Arc` (redb serializes writers itself).
#[derive(Debug)]
pub struct Store {
    db: Database,
    /// The inbox journal ([`journal`]).
    journal: Mutex<journal::Journal>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Appends `m` to the history table and returns its sequence number (last + 1), pruning the
/// oldest entry beyond [`MAX_MESSAGES`].
fn insert_message(
    t: &mut redb::Table<'_, u64, &'static str>,
    m: &MessageRecord,
) -> Result<u64, StoreError> {
    let v = encode(m)?;
    let seq = match t.last()? {
        Some((k, _)) => k.value() + 1,
        None => 1,
    };
    t.insert(seq, v.as_str())?;
    if t.len()? > MAX_MESSAGES {
        let first = t.first()?.map(|(k, _)| k.value());
        if let Some(first) = first {
            t.remove(first)?;
        }
    }
    Ok(seq)
}

fn key(pk: &PublicKey) -> &[u8] {
    pk.as_bytes()
}

fn decode<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file is not a redb database, is locked by another running
    /// process, or cannot be created.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            tx.open_table(SETTINGS)?;
            tx.open_table(FRIENDS)?;
            tx.open_table(REQUESTS)?;
            tx.open_table(MESSAGES)?;
            tx.open_table(TRANSFERS)?;
        }
        tx.commit()?;
        let journal = Mutex::new(journal::Journal::open(&db, path)?);
        Ok(Self { db, journal })
    }

    /// Inserts or replaces a transfer record (id 0 = assign the next id). Returns its id.
    /// Beyond [`MAX_TRANSFERS`] records the oldest final ones are pruned.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn put_transfer(&self, r: &TransferRecord) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let id;
        {
            let mut t = tx.open_table(TRANSFERS)?;
            id = if r.id == 0 {
                t.last()?.map_or(1, |(k, _)| k.value() + 1)
            } else {
                r.id
            };
            let mut rec = r.clone();
            rec.id = id;
            t.insert(id, encode(&rec)?.as_str())?;
            if t.len()? as usize > MAX_TRANSFERS {
                let mut old = Vec::new();
                for row in t.iter()? {
                    let (k, v) = row?;
                    let rec: TransferRecord = decode(v.value())?;
                    if rec.state.is_final() {
                        old.push(k.value());
                        if old.len() >= 16 {
                            break;
                        }
                    }
                }
                for k in old {
                    t.remove(k)?;
                }
            }
        }
        tx.commit()?;
        Ok(id)
    }

    /// One transfer record.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn transfer(&self, id: u64) -> Result<Option<TransferRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TRANSFERS)?;
        match t.get(id)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every transfer record, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TRANSFERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The settings (defaults when never written).
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn settings(&self) -> Result<Settings, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SETTINGS)?;
        match t.get("settings")? {
            Some(v) => decode(v.value()),
            None => Ok(Settings::default()),
        }
    }

    /// Replaces the settings.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn set_settings(&self, s: &Settings) -> Result<(), StoreError> {
        let v = encode(s)?;
        let tx = self.db.begin_write()?;
        tx.open_table(SETTINGS)?.insert("settings", v.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Every friend, in key order.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn friends(&self) -> Result<Vec<FriendRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(FRIENDS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Inserts or replaces a friend.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when `public_key` is not 64 hex digits; I/O failures.
    pub fn put_friend(&self, f: &FriendRecord) -> Result<(), StoreError> {
        let pk = PublicKey::from_hex(&f.public_key)
            .map_err(|e| StoreError::Corrupt(format!("friend key: {e}")))?;
        let v = encode(f)?;
        let tx = self.db.begin_write()?;
        tx.open_table(FRIENDS)?.insert(key(&pk), v.as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a friend (history stays). Returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn remove_friend(&self, pk: &PublicKey) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        let existed = tx.open_table(FRIENDS)?.remove(key(pk))?.is_some();
        tx.commit()?;
        Ok(existed)
    }

    /// Pending friend requests, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn requests(&self) -> Result<Vec<RequestRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REQUESTS)?;
        let mut out: Vec<RequestRecord> = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode(v.value())?);
        }
        out.sort_by_key(|r| r.time_ms);
        Ok(out)
    }

    /// Records a received friend request (replacing an earlier one from the same key), evicting
    /// the oldest beyond [`MAX_REQUESTS`].
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a bad key.
    pub fn put_request(&self, r: &RequestRecord) -> Result<(), StoreError> {
        let pk = PublicKey::from_hex(&r.public_key)
            .map_err(|e| StoreError::Corrupt(format!("request key: {e}")))?;
        let mut all = self.requests()?;
        all.retain(|x| x.public_key != r.public_key);
        let v = encode(r)?;
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(REQUESTS)?;
            while all.len() >= MAX_REQUESTS {
                let old = all.remove(0);
                if let Ok(k) = PublicKey::from_hex(&old.public_key) {
                    t.remove(key(&k))?;
                }
            }
            t.insert(key(&pk), v.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes a pending request; returns it if it existed.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn take_request(&self, pk: &PublicKey) -> Result<Option<RequestRecord>, StoreError> {
        let tx = self.db.begin_write()?;
        let old = match tx.open_table(REQUESTS)?.remove(key(pk))? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        tx.commit()?;
        Ok(old)
    }

    /// Appends a history entry and returns its sequence number (1, 2, 3…; increasing, never
    /// reused).
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn append_message(&self, m: &MessageRecord) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let seq = insert_message(&mut tx.open_table(MESSAGES)?, m)?;
        tx.commit()?;
        Ok(seq)
    }

    /// Marks an outgoing entry delivered. Unknown sequence numbers are ignored.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn mark_delivered(&self, seq: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(MESSAGES)?;
            let current: Option<MessageRecord> = match t.get(seq)? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            };
            if let Some(mut m) = current {
                m.delivered = true;
                let v = encode(&m)?;
                t.insert(seq, v.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// History entries with sequence number > `after`, oldest first, at most `limit`, for one
    /// friend (public key hex) or all.
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn messages(
        &self,
        friend: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for row in t.range(after.saturating_add(1)..)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let m: MessageRecord = decode(v.value())?;
            if friend.is_none_or(|f| f.eq_ignore_ascii_case(&m.friend)) {
                out.push((k.value(), m));
            }
        }
        Ok(out)
    }

    /// Outgoing entries not yet delivered, oldest first (resent when the friend comes online).
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure or a corrupt record.
    pub fn undelivered(&self) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let m: MessageRecord = decode(v.value())?;
            if m.direction == Direction::Out && !m.delivered {
                out.push((k.value(), m));
            }
        }
        Ok(out)
    }

    /// The highest history sequence number (0 when empty).
    ///
    /// # Errors
    /// [`StoreError`] on I/O failure.
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        Ok(t.last()?.map_or(0, |(k, _)| k.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(b: u8) -> String {
        PublicKey([b; 32]).to_hex()
    }

    fn msg(friend: &str, dir: Direction, text: &str) -> MessageRecord {
        MessageRecord {
            friend: friend.into(),
            direction: dir,
            kind: MessageKind::Normal,
            text: text.into(),
            time_ms: 1,
            delivered: dir == Direction::In,
        }
    }

    #[test]
    fn everything_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ferry.redb");
        {
            let s = Store::open(&path).expect("open");
            s.set_settings(&Settings {
                name: "alice".into(),
                status_message: "hi".into(),
                auto_accept: true,
                auto_accept_files: Some("/tmp/in".into()),
                avatar: None,
            })
            .expect("settings");
            let t = TransferRecord {
                id: 0,
                friend: pk(1),
                direction: Direction::In,
                kind: 0,
                file_id: "ab".repeat(32),
                name: "f.bin".into(),
                size: 10,
                bytes_done: 4,
                state: TransferState::Broken,
                path: "/tmp/in/f.bin".into(),
                hash: None,
                error: None,
                created_ms: 1,
            };
            assert_eq!(s.put_transfer(&t).expect("transfer"), 1);
            assert_eq!(s.put_transfer(&t).expect("transfer"), 2);
            s.put_friend(&FriendRecord {
                public_key: pk(1),
                name: "bob".into(),
                status_message: String::new(),
                request: Some((7, "hello".into())),
                added_ms: 5,
                last_seen_ms: 0,
            })
            .expect("friend");
            s.put_request(&RequestRecord {
                public_key: pk(2),
                message: "let me in".into(),
                time_ms: 9,
            })
            .expect("request");
            assert_eq!(
                s.append_message(&msg(&pk(1), Direction::Out, "a"))
                    .expect("m"),
                1
            );
            assert_eq!(
                s.append_message(&msg(&pk(1), Direction::In, "b"))
                    .expect("m"),
                2
            );
            assert_eq!(
                s.append_message(&msg(&pk(3), Direction::Out, "c"))
                    .expect("m"),
                3
            );
            s.mark_delivered(1).expect("delivered");
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.settings().expect("settings").name, "alice");
        let tr = s.transfers().expect("transfers");
        assert_eq!(tr.len(), 2);
        assert_eq!(
            (tr[1].id, tr[1].bytes_done, tr[1].state),
            (2, 4, TransferState::Broken)
        );
        assert_eq!(
            s.transfer(1).expect("t").map(|t| t.name),
            Some("f.bin".into())
        );
        assert_eq!(s.friends().expect("friends")[0].name, "bob");
        assert_eq!(s.requests().expect("requests")[0].message, "let me in");
        let all = s.messages(None, 0, 100).expect("messages");
        assert_eq!(all.len(), 3);
        assert!(all[0].1.delivered);
        assert_eq!(s.messages(Some(&pk(1)), 1, 100).expect("m").len(), 1);
        let und = s.undelivered().expect("undelivered");
        assert_eq!(und.len(), 1);
        assert_eq!(und[0].1.text, "c");
        assert_eq!(s.last_seq().expect("seq"), 3);
        let k = PublicKey::from_hex(&pk(2)).expect("key");
        assert!(s.take_request(&k).expect("take").is_some());
        assert!(s.requests().expect("requests").is_empty());
        let k1 = PublicKey::from_hex(&pk(1)).expect("key");
        assert!(s.remove_friend(&k1).expect("remove"));
        assert!(!s.remove_friend(&k1).expect("remove"));
    }

    #[test]
    fn requests_are_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        for i in 0..(MAX_REQUESTS as u64 + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_be_bytes());
            s.put_request(&RequestRecord {
                public_key: PublicKey(k).to_hex(),
                message: String::new(),
                time_ms: i,
            })
            .expect("put");
        }
        let all = s.requests().expect("requests");
        assert_eq!(all.len(), MAX_REQUESTS);
        assert_eq!(all[0].time_ms, 10);
    }

    #[test]
    fn a_second_open_while_held_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let _a = Store::open(&path).expect("open");
        let err = Store::open(&path).expect_err("locked");
        assert!(matches!(err, StoreError::Db(_)), "{err}");
    }
}
