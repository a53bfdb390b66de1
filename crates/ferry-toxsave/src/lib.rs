//! The Tox save format ("state file", `.tox`) of c-toxcore 0.2.18 and its passphrase encryption
//! (toxencryptsave): parse, emit, encrypt, decrypt. This is how a Tox profile (qTox, toxic, uTox…)
//! moves into ferry and back.
//!
//! # Layout (c-toxcore `tox.c` `tox_get_savedata`, `state.c`, `Messenger.c`)
//!
//! | bytes | field |
//! |---|---|
//! | 4 | zero |
//! | 4 | cookie `0x15ed1b1f`, little-endian |
//! | … | sections, each: length `u32` LE, then `u32` LE = `0x01ce << 16 \| type`, then `length` bytes |
//!
//! c-toxcore 0.2.18 writes the sections in this order, which [`ToxSave::encode`] follows:
//!
//! | type | section | body |
//! |---|---|---|
//! | 1 | NOSPAMKEYS | nospam (4, as in the Tox ID) ‖ long-term public key (32) ‖ secret key (32) |
//! | 2 | DHT | `0x0159000d` LE ‖ sub-sections with cookie `0x11ce`; type 4 holds packed DHT nodes |
//! | 3 | FRIENDS | [`FRIEND_ENTRY_SIZE`]-byte entries, see [`SavedFriend`] |
//! | 4 | NAME | own name, ≤ 128 bytes |
//! | 5 | STATUSMESSAGE | own status message, ≤ 1007 bytes |
//! | 6 | STATUS | 1 byte user status |
//! | 10 | TCP_RELAY | packed nodes (TCP relays, ≤ 8) |
//! | 11 | PATH_NODE | packed nodes (onion path nodes, ≤ 8) |
//! | 20 | CONFERENCES | old-style conferences (kept as bytes, not parsed) |
//! | 255 | END | empty |
//!
//! Sections of any other type (e.g. NGC groups, type 21, from c-toxcore ≥ 0.2.19) are kept
//! verbatim in [`ToxSave::unknown_sections`] and written back before END, so a load → save round
//! trip preserves them. Packed nodes use the DHT packed-node format ([`PackedNode`]).
//!
//! # Strictness
//!
//! The decoder never panics and rejects what c-toxcore rejects (bad header or section cookie,
//! truncated sections, a NOSPAMKEYS section of the wrong size or whose public key is not the
//! secret key's, a FRIENDS section that is not a whole number of entries, END with a body). It
//! is also strict where c-toxcore silently skips (a DHT section that does not parse, a STATUS
//! section not 1 byte long, unparsable node lists, duplicated sections): an import should fail
//! loudly rather than lose data. Bytes after END are ignored, as c-toxcore does: its own saves
//! end with up to 816 zero bytes there (`tox_get_savedata_size` reserves room for 8 TCP relays
//! and 8 path nodes as IPv6 and zero-fills what is not used); [`ToxSave::encode`] writes none. A save without NOSPAMKEYS is rejected
//! (c-toxcore would make a new identity).
//!
//! Encrypted saves: see [`encrypt`](mod@encrypt) ([`is_encrypted`], [`encrypt()`],
//! [`decrypt()`]); [`ToxSave::load`] takes either kind.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::fmt;

use ferry_crypto::{KEY_SIZE, PublicKey, SecretKey, ct_eq};
use ferry_wire::Reader;
use ferry_wire::node::PackedNode;
use ferry_wire::toxid::ToxId;

pub mod encrypt;

pub use encrypt::{ENCRYPTION_EXTRA_LENGTH, decrypt, encrypt, is_encrypted};

/// The global cookie after the 4 zero bytes at the start of a plain save (`STATE_COOKIE_GLOBAL`).
pub const SAVE_COOKIE: u32 = 0x15ed_1b1f;
/// The cookie in the upper 16 bits of every section's type word (`STATE_COOKIE_TYPE`).
pub const SECTION_COOKIE: u16 = 0x01ce;
/// The DHT section's own global cookie (`DHT_STATE_COOKIE_GLOBAL`).
pub const DHT_COOKIE: u32 = 0x0159_000d;
/// The cookie of the DHT section's sub-sections (`DHT_STATE_COOKIE_TYPE`).
pub const DHT_SECTION_COOKIE: u16 = 0x11ce;
/// The DHT sub-section type holding packed nodes (`DHT_STATE_TYPE_NODES`).
pub const DHT_TYPE_NODES: u16 = 4;

/// Section types (`state.h` `State_Type`).
pub mod section {
    /// Nospam, long-term public and secret key.
    pub const NOSPAMKEYS: u16 = 1;
    /// DHT nodes.
    pub const DHT: u16 = 2;
    /// Friend list.
    pub const FRIENDS: u16 = 3;
    /// Own name.
    pub const NAME: u16 = 4;
    /// Own status message.
    pub const STATUSMESSAGE: u16 = 5;
    /// Own user status.
    pub const STATUS: u16 = 6;
    /// TCP relays.
    pub const TCP_RELAY: u16 = 10;
    /// Onion path nodes.
    pub const PATH_NODE: u16 = 11;
    /// Old-style conferences.
    pub const CONFERENCES: u16 = 20;
    /// End marker.
    pub const END: u16 = 255;

    /// The section's name as in `state.h`, or `"unknown"`.
    pub fn name(kind: u16) -> &'static str {
        match kind {
            NOSPAMKEYS => "NOSPAMKEYS",
            DHT => "DHT",
            FRIENDS => "FRIENDS",
            NAME => "NAME",
            STATUSMESSAGE => "STATUSMESSAGE",
            STATUS => "STATUS",
            TCP_RELAY => "TCP_RELAY",
            PATH_NODE => "PATH_NODE",
            CONFERENCES => "CONFERENCES",
            END => "END",
            _ => "unknown",
        }
    }
}

/// Largest name c-toxcore keeps, in bytes (`MAX_NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 128;
/// Largest status message c-toxcore keeps, in bytes (`MAX_STATUSMESSAGE_LENGTH`).
pub const MAX_STATUSMESSAGE_LENGTH: usize = 1007;
/// Room for a friend request message in a friend entry, in bytes (`SAVED_FRIEND_REQUEST_SIZE`).
pub const SAVED_FRIEND_REQUEST_SIZE: usize = 1024;
/// Size of one FRIENDS entry, in bytes (`friend_size()` in `Messenger.c`).
pub const FRIEND_ENTRY_SIZE: usize = 1
    + KEY_SIZE
    + SAVED_FRIEND_REQUEST_SIZE
    + 1
    + 2
    + MAX_NAME_LENGTH
    + 2
    + MAX_STATUSMESSAGE_LENGTH
    + 1
    + 2
    + 1
    + 3
    + 4
    + 8;
/// Size of the NOSPAMKEYS section body, in bytes.
pub const NOSPAMKEYS_SIZE: usize = 4 + 2 * KEY_SIZE;

/// Why bytes are not a usable Tox save.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    /// The data does not start with the plain save header (4 zero bytes, cookie `0x15ed1b1f`).
    #[error("not a Tox save (no 00000000 1f1bed15 header)")]
    NotToxSave,
    /// A plain save was expected but this one is encrypted (starts with `toxEsave`).
    #[error("the Tox save is encrypted: a passphrase is needed")]
    Encrypted,
    /// A decryption was asked of data without the `toxEsave` magic.
    #[error("not an encrypted Tox save (no toxEsave magic)")]
    NotEncrypted,
    /// The encrypted save does not authenticate: wrong passphrase, or a damaged file.
    #[error("wrong passphrase (or the encrypted save is damaged)")]
    WrongPassphrase,
    /// The data ends inside a header or section.
    #[error("truncated Tox save: {0}")]
    Truncated(String),
    /// A section header's cookie is not `0x01ce` (c-toxcore: "state file garbled").
    #[error(
        "garbled Tox save: section header at byte {offset} has cookie {cookie:#06x}, not 0x01ce"
    )]
    Garbled {
        /// Byte offset of the section header in the save.
        offset: usize,
        /// The cookie found.
        cookie: u16,
    },
    /// A known section's body is malformed.
    #[error("bad {section} section: {reason}")]
    BadSection {
        /// The section's name ([`section::name`]).
        section: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The NOSPAMKEYS section's public key is not the one of its secret key.
    #[error("the saved public key does not belong to the saved secret key")]
    KeyMismatch,
    /// There is no NOSPAMKEYS section, so no identity.
    #[error("the Tox save has no NOSPAMKEYS section (no identity)")]
    NoKeys,
    /// scrypt refused its parameters (not expected).
    #[error("passphrase key derivation failed")]
    KeyDerivation,
    /// The plain save is beyond what XSalsa20 can encrypt (not expected).
    #[error("save too large to encrypt")]
    TooLarge,
}

fn bad(section_kind: u16, reason: impl Into<String>) -> SaveError {
    SaveError::BadSection {
        section: section::name(section_kind),
        reason: reason.into(),
    }
}

/// A friend's state in the friend list (`Friend_Status` in `Messenger.h`, the first byte of an
/// entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FriendStatus {
    /// 1 (`FRIEND_ADDED`): added by us, friend request not yet sent.
    Added,
    /// 2 (`FRIEND_REQUESTED`): friend request sent, not yet accepted.
    Requested,
    /// 3 (`FRIEND_CONFIRMED`): an established friend (c-toxcore saves online friends as this).
    Confirmed,
    /// Any other byte: 0 (an empty slot, which c-toxcore skips on load) or ≥ 4 (loaded as
    /// confirmed). Kept so that a round trip preserves it.
    Other(u8),
}

impl FriendStatus {
    /// The status byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Added => 1,
            Self::Requested => 2,
            Self::Confirmed => 3,
            Self::Other(b) => b,
        }
    }

    /// The status of a byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => Self::Added,
            2 => Self::Requested,
            3 => Self::Confirmed,
            b => Self::Other(b),
        }
    }

    /// Whether c-toxcore loads this entry as an established friend (status ≥ 3).
    pub fn is_confirmed(self) -> bool {
        self.to_byte() >= 3
    }
}

/// A user status (`Tox_User_Status`): own (STATUS section) or a friend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum UserStatus {
    /// 0: online, available.
    #[default]
    None,
    /// 1: away.
    Away,
    /// 2: busy.
    Busy,
    /// Any other byte (c-toxcore ignores it), kept for round trips.
    Other(u8),
}

impl UserStatus {
    /// The status byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Away => 1,
            Self::Busy => 2,
            Self::Other(b) => b,
        }
    }

    /// The status of a byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::None,
            1 => Self::Away,
            2 => Self::Busy,
            b => Self::Other(b),
        }
    }
}

/// One FRIENDS entry (`struct Saved_Friend` in `Messenger.c`), [`FRIEND_ENTRY_SIZE`] = 2216 bytes:
///
/// | bytes | field |
/// |---|---|
/// | 1 | status ([`FriendStatus`]) |
/// | 32 | real (long-term) public key |
/// | 1024 | friend request message, zero-padded |
/// | 1 | padding |
/// | 2 | request message length, big-endian |
/// | 128 | name, zero-padded |
/// | 2 | name length, big-endian |
/// | 1007 | status message, zero-padded |
/// | 1 | padding |
/// | 2 | status message length, big-endian |
/// | 1 | user status |
/// | 3 | padding |
/// | 4 | nospam the request was sent to (bytes as in the Tox ID) |
/// | 8 | last seen, Unix seconds, big-endian |
///
/// c-toxcore fills the request message and nospam only for status < 3 and the name, status
/// message, user status and last seen only for confirmed friends; ferry writes every field as
/// given. Padding is written as zeros and ignored on read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedFriend {
    /// Where the friendship stands.
    pub status: FriendStatus,
    /// The friend's long-term public key.
    pub real_pk: PublicKey,
    /// The friend request message we sent (≤ 1024 bytes; c-toxcore sends ≤ 1016).
    pub request_message: Vec<u8>,
    /// The friend's name (≤ 128 bytes, normally UTF-8).
    pub name: Vec<u8>,
    /// The friend's status message (≤ 1007 bytes, normally UTF-8).
    pub status_message: Vec<u8>,
    /// The friend's user status.
    pub user_status: UserStatus,
    /// The nospam of the Tox ID the request was sent to (4 bytes as in the Tox ID).
    pub nospam: [u8; 4],
    /// When the friend was last online, Unix seconds (0: never).
    pub last_seen: u64,
}

impl SavedFriend {
    /// An established friend with this long-term public key and nothing else known.
    pub fn confirmed(real_pk: PublicKey) -> Self {
        Self {
            status: FriendStatus::Confirmed,
            real_pk,
            request_message: Vec::new(),
            name: Vec::new(),
            status_message: Vec::new(),
            user_status: UserStatus::None,
            nospam: [0; 4],
            last_seen: 0,
        }
    }

    /// A friend we sent (or will send) a request to, by Tox ID, with this message.
    pub fn requested(id: &ToxId, request_message: &[u8]) -> Self {
        Self {
            status: FriendStatus::Added,
            nospam: id.nospam,
            request_message: request_message.to_vec(),
            ..Self::confirmed(id.public_key)
        }
    }

    /// Reads one [`FRIEND_ENTRY_SIZE`]-byte entry.
    ///
    /// # Errors
    /// [`SaveError::BadSection`] for a length field beyond its array, or a wrong size.
    pub fn decode(entry: &[u8]) -> Result<Self, SaveError> {
        const F: u16 = section::FRIENDS;
        if entry.len() != FRIEND_ENTRY_SIZE {
            return Err(bad(F, format!("entry of {} bytes", entry.len())));
        }
        let mut r = Reader::new(entry);
        let wire = |e: ferry_wire::WireError| bad(F, e.to_string());
        let status = FriendStatus::from_byte(r.u8("status").map_err(wire)?);
        let real_pk = PublicKey(r.array("real_pk").map_err(wire)?);
        let info = r.take(SAVED_FRIEND_REQUEST_SIZE, "info").map_err(wire)?;
        r.take(1, "padding").map_err(wire)?;
        let info_len = usize::from(r.u16_be("info_size").map_err(wire)?);
        let name = r.take(MAX_NAME_LENGTH, "name").map_err(wire)?;
        let name_len = usize::from(r.u16_be("name_length").map_err(wire)?);
        let sm = r
            .take(MAX_STATUSMESSAGE_LENGTH, "statusmessage")
            .map_err(wire)?;
        r.take(1, "padding").map_err(wire)?;
        let sm_len = usize::from(r.u16_be("statusmessage_length").map_err(wire)?);
        let user_status = UserStatus::from_byte(r.u8("userstatus").map_err(wire)?);
        r.take(3, "padding").map_err(wire)?;
        let nospam = r.array("friendrequest_nospam").map_err(wire)?;
        let last_seen = u64::from_be_bytes(r.array("last_seen_time").map_err(wire)?);
        r.finish().map_err(wire)?;
        let field = |data: &[u8], len: usize, what: &str| -> Result<Vec<u8>, SaveError> {
            data.get(..len).map(<[u8]>::to_vec).ok_or_else(|| {
                bad(
                    F,
                    format!("{what} length {len} exceeds its {} bytes", data.len()),
                )
            })
        };
        Ok(Self {
            status,
            real_pk,
            request_message: field(info, info_len, "request message")?,
            name: field(name, name_len, "name")?,
            status_message: field(sm, sm_len, "status message")?,
            user_status,
            nospam,
            last_seen,
        })
    }

    /// Appends the [`FRIEND_ENTRY_SIZE`]-byte entry. Fields longer than their arrays (1024, 128,
    /// 1007 bytes) are cut to fit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn padded(out: &mut Vec<u8>, data: &[u8], size: usize) -> u16 {
            let n = data.len().min(size);
            out.extend_from_slice(&data[..n]);
            out.resize(out.len() + size - n, 0);
            u16::try_from(n).expect("n <= size <= 1024")
        }
        out.push(self.status.to_byte());
        out.extend_from_slice(self.real_pk.as_bytes());
        let info_len = padded(out, &self.request_message, SAVED_FRIEND_REQUEST_SIZE);
        out.push(0);
        out.extend_from_slice(&info_len.to_be_bytes());
        let name_len = padded(out, &self.name, MAX_NAME_LENGTH);
        out.extend_from_slice(&name_len.to_be_bytes());
        let sm_len = padded(out, &self.status_message, MAX_STATUSMESSAGE_LENGTH);
        out.push(0);
        out.extend_from_slice(&sm_len.to_be_bytes());
        out.push(self.user_status.to_byte());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.nospam);
        out.extend_from_slice(&self.last_seen.to_be_bytes());
    }
}

/// A section this crate does not interpret, kept verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawSection {
    /// The section type (lower 16 bits of the type word).
    pub kind: u16,
    /// The section body.
    pub data: Vec<u8>,
}

/// A decoded plain Tox save (see the crate docs for the layout).
#[derive(Clone)]
pub struct ToxSave {
    /// The long-term secret key (its public key is the Tox ID's key).
    pub secret_key: SecretKey,
    /// The nospam, 4 bytes as they appear in the Tox ID (`tox_self_get_nospam` reads them as a
    /// big-endian number).
    pub nospam: [u8; 4],
    /// Own name (normally UTF-8, ≤ 128 bytes).
    pub name: Vec<u8>,
    /// Own status message (normally UTF-8, ≤ 1007 bytes).
    pub status_message: Vec<u8>,
    /// Own user status.
    pub status: UserStatus,
    /// The friend list, in saved order (c-toxcore numbers friends in this order on load).
    pub friends: Vec<SavedFriend>,
    /// DHT nodes to bootstrap from (DHT section).
    pub dht_nodes: Vec<PackedNode>,
    /// TCP relays (TCP_RELAY section; c-toxcore saves up to 8).
    pub tcp_relays: Vec<PackedNode>,
    /// Onion path nodes (PATH_NODE section; c-toxcore saves up to 8).
    pub path_nodes: Vec<PackedNode>,
    /// The CONFERENCES section body, verbatim (c-toxcore writes an empty one when there are no
    /// conferences).
    pub conferences: Vec<u8>,
    /// Sections of other types, verbatim, in the order read.
    pub unknown_sections: Vec<RawSection>,
}

impl PartialEq for ToxSave {
    fn eq(&self, other: &Self) -> bool {
        ct_eq(&self.secret_key.to_bytes(), &other.secret_key.to_bytes())
            && self.nospam == other.nospam
            && self.name == other.name
            && self.status_message == other.status_message
            && self.status == other.status
            && self.friends == other.friends
            && self.dht_nodes == other.dht_nodes
            && self.tcp_relays == other.tcp_relays
            && self.path_nodes == other.path_nodes
            && self.conferences == other.conferences
            && self.unknown_sections == other.unknown_sections
    }
}

impl Eq for ToxSave {}

impl fmt::Debug for ToxSave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToxSave")
            .field("tox_id", &self.tox_id().to_string())
            .field("name", &String::from_utf8_lossy(&self.name))
            .field(
                "status_message",
                &String::from_utf8_lossy(&self.status_message),
            )
            .field("status", &self.status)
            .field("friends", &self.friends)
            .field("dht_nodes", &self.dht_nodes)
            .field("tcp_relays", &self.tcp_relays)
            .field("path_nodes", &self.path_nodes)
            .field("conferences", &self.conferences.len())
            .field("unknown_sections", &self.unknown_sections)
            .finish()
    }
}

fn decode_nodes(kind: u16, body: &[u8]) -> Result<Vec<PackedNode>, SaveError> {
    let mut r = Reader::new(body);
    let mut nodes = Vec::new();
    while r.remaining() > 0 {
        nodes.push(PackedNode::decode(&mut r).map_err(|e| bad(kind, e.to_string()))?);
    }
    Ok(nodes)
}

fn encode_nodes(nodes: &[PackedNode]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        n.encode(&mut out);
    }
    out
}

/// One section: its type and body.
type Section<'a> = (u16, &'a [u8]);

/// Splits `data` into sections with the given header cookie (`state_load` in `state.c`). For the
/// top level (`top`), a wrong cookie is [`SaveError::Garbled`] and splitting stops after END
/// (what follows END is ignored); inside the DHT section errors are DHT [`SaveError::BadSection`]s.
fn split_sections(data: &[u8], cookie: u16, top: bool) -> Result<Vec<Section<'_>>, SaveError> {
    let base = if top { 8 } else { 4 };
    let err = |msg: String| {
        if top {
            SaveError::Truncated(msg)
        } else {
            bad(section::DHT, msg)
        }
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let word = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let found = (word >> 16) as u16;
        let kind = (word & 0xffff) as u16;
        if found != cookie {
            if top {
                return Err(SaveError::Garbled {
                    offset: base + at,
                    cookie: found,
                });
            }
            return Err(bad(
                section::DHT,
                format!("sub-section cookie {found:#06x}"),
            ));
        }
        let avail = data.len() - at - 8;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > avail {
            return Err(err(format!(
                "{} section at byte {} declares {len} bytes, {avail} remain",
                if top {
                    section::name(kind)
                } else {
                    "DHT nodes"
                },
                base + at
            )));
        }
        out.push((kind, &data[at + 8..at + 8 + len]));
        at += 8 + len;
        if top && kind == section::END {
            return Ok(out);
        }
    }
    if at != data.len() {
        return Err(err(format!(
            "{} bytes left at byte {}, too few for a section header",
            data.len() - at,
            base + at
        )));
    }
    Ok(out)
}

fn write_section(out: &mut Vec<u8>, cookie: u16, kind: u16, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&((u32::from(cookie) << 16) | u32::from(kind)).to_le_bytes());
    out.extend_from_slice(body);
}

impl ToxSave {
    /// A save holding only an identity (no friends, name or nodes).
    pub fn new(secret_key: SecretKey, nospam: [u8; 4]) -> Self {
        Self {
            secret_key,
            nospam,
            name: Vec::new(),
            status_message: Vec::new(),
            status: UserStatus::None,
            friends: Vec::new(),
            dht_nodes: Vec::new(),
            tcp_relays: Vec::new(),
            path_nodes: Vec::new(),
            conferences: Vec::new(),
            unknown_sections: Vec::new(),
        }
    }

    /// The long-term public key.
    pub fn public_key(&self) -> PublicKey {
        self.secret_key.public_key()
    }

    /// The Tox ID (what `tox_self_get_address` gives after loading this save).
    pub fn tox_id(&self) -> ToxId {
        ToxId {
            public_key: self.public_key(),
            nospam: self.nospam,
        }
    }

    /// Decodes a save that may be encrypted: plain saves are decoded as they are, encrypted ones
    /// are decrypted with `passphrase` first.
    ///
    /// # Errors
    /// [`SaveError::Encrypted`] for an encrypted save without a passphrase, else as [`decrypt()`]
    /// and [`ToxSave::decode`].
    pub fn load(data: &[u8], passphrase: Option<&[u8]>) -> Result<Self, SaveError> {
        match (is_encrypted(data), passphrase) {
            (true, Some(p)) => Self::decode(&decrypt(data, p)?),
            (true, None) => Err(SaveError::Encrypted),
            (false, _) => Self::decode(data),
        }
    }

    /// Decodes a plain save.
    ///
    /// # Errors
    /// See [`SaveError`] and the crate docs' "Strictness".
    pub fn decode(data: &[u8]) -> Result<Self, SaveError> {
        if is_encrypted(data) {
            return Err(SaveError::Encrypted);
        }
        if data.len() < 8 || data[..4] != [0; 4] || data[4..8] != SAVE_COOKIE.to_le_bytes() {
            return Err(SaveError::NotToxSave);
        }
        // c-toxcore sizes its buffer for 8 TCP relays and 8 path nodes and zero-fills it, so its
        // saves carry up to 816 zero bytes after END; like c-toxcore, ignore whatever follows END.
        let sections = split_sections(&data[8..], SECTION_COOKIE, true)?;
        let mut keys = None;
        let mut save = Self::new(SecretKey::from_bytes([0; KEY_SIZE]), [0; 4]);
        let mut seen: Vec<u16> = Vec::new();
        for (kind, body) in sections {
            let known = matches!(
                kind,
                section::NOSPAMKEYS
                    | section::DHT
                    | section::FRIENDS
                    | section::NAME
                    | section::STATUSMESSAGE
                    | section::STATUS
                    | section::TCP_RELAY
                    | section::PATH_NODE
                    | section::CONFERENCES
            );
            if known {
                if seen.contains(&kind) {
                    return Err(bad(kind, "appears twice"));
                }
                seen.push(kind);
            }
            match kind {
                section::NOSPAMKEYS => {
                    if body.len() != NOSPAMKEYS_SIZE {
                        return Err(bad(
                            kind,
                            format!("{} bytes, not {NOSPAMKEYS_SIZE}", body.len()),
                        ));
                    }
                    let mut nospam = [0u8; 4];
                    nospam.copy_from_slice(&body[..4]);
                    let mut sk = [0u8; KEY_SIZE];
                    sk.copy_from_slice(&body[4 + KEY_SIZE..]);
                    let secret = SecretKey::from_bytes(sk);
                    if secret.public_key().as_bytes()[..] != body[4..4 + KEY_SIZE] {
                        return Err(SaveError::KeyMismatch);
                    }
                    keys = Some((secret, nospam));
                }
                section::DHT => save.dht_nodes = decode_dht(body)?,
                section::FRIENDS => {
                    if body.len() % FRIEND_ENTRY_SIZE != 0 {
                        return Err(bad(
                            kind,
                            format!(
                                "{} bytes is not a multiple of {FRIEND_ENTRY_SIZE}",
                                body.len()
                            ),
                        ));
                    }
                    save.friends = body
                        .chunks_exact(FRIEND_ENTRY_SIZE)
                        .map(SavedFriend::decode)
                        .collect::<Result<_, _>>()?;
                }
                section::NAME => save.name = body.to_vec(),
                section::STATUSMESSAGE => save.status_message = body.to_vec(),
                section::STATUS => {
                    let [b] = body else {
                        return Err(bad(kind, format!("{} bytes, not 1", body.len())));
                    };
                    save.status = UserStatus::from_byte(*b);
                }
                section::TCP_RELAY => save.tcp_relays = decode_nodes(kind, body)?,
                section::PATH_NODE => save.path_nodes = decode_nodes(kind, body)?,
                section::CONFERENCES => save.conferences = body.to_vec(),
                section::END => {
                    if !body.is_empty() {
                        return Err(bad(kind, format!("{} bytes, not empty", body.len())));
                    }
                }
                _ => save.unknown_sections.push(RawSection {
                    kind,
                    data: body.to_vec(),
                }),
            }
        }
        let (secret_key, nospam) = keys.ok_or(SaveError::NoKeys)?;
        save.secret_key = secret_key;
        save.nospam = nospam;
        Ok(save)
    }

    /// Encodes the plain save, sections in c-toxcore 0.2.18's order (NOSPAMKEYS, DHT, FRIENDS,
    /// NAME, STATUSMESSAGE, STATUS, TCP_RELAY, PATH_NODE, CONFERENCES), then
    /// [`unknown_sections`](Self::unknown_sections), then END. A save c-toxcore wrote decodes and
    /// re-encodes to the same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            512 + self.friends.len() * FRIEND_ENTRY_SIZE + self.dht_nodes.len() * 51,
        );
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&SAVE_COOKIE.to_le_bytes());
        let mut keys = Vec::with_capacity(NOSPAMKEYS_SIZE);
        keys.extend_from_slice(&self.nospam);
        keys.extend_from_slice(self.public_key().as_bytes());
        keys.extend_from_slice(&self.secret_key.to_bytes());
        write_section(&mut out, SECTION_COOKIE, section::NOSPAMKEYS, &keys);
        keys.fill(0);

        let mut dht = DHT_COOKIE.to_le_bytes().to_vec();
        write_section(
            &mut dht,
            DHT_SECTION_COOKIE,
            DHT_TYPE_NODES,
            &encode_nodes(&self.dht_nodes),
        );
        write_section(&mut out, SECTION_COOKIE, section::DHT, &dht);

        let mut friends = Vec::with_capacity(self.friends.len() * FRIEND_ENTRY_SIZE);
        for f in &self.friends {
            f.encode(&mut friends);
        }
        write_section(&mut out, SECTION_COOKIE, section::FRIENDS, &friends);
        write_section(&mut out, SECTION_COOKIE, section::NAME, &self.name);
        write_section(
            &mut out,
            SECTION_COOKIE,
            section::STATUSMESSAGE,
            &self.status_message,
        );
        write_section(
            &mut out,
            SECTION_COOKIE,
            section::STATUS,
            &[self.status.to_byte()],
        );
        write_section(
            &mut out,
            SECTION_COOKIE,
            section::TCP_RELAY,
            &encode_nodes(&self.tcp_relays),
        );
        write_section(
            &mut out,
            SECTION_COOKIE,
            section::PATH_NODE,
            &encode_nodes(&self.path_nodes),
        );
        write_section(
            &mut out,
            SECTION_COOKIE,
            section::CONFERENCES,
            &self.conferences,
        );
        for s in &self.unknown_sections {
            write_section(&mut out, SECTION_COOKIE, s.kind, &s.data);
        }
        write_section(&mut out, SECTION_COOKIE, section::END, &[]);
        out
    }

    /// Encodes and encrypts under `passphrase` (toxencryptsave, see [`encrypt()`]).
    ///
    /// # Errors
    /// As [`encrypt()`] (not expected in practice).
    pub fn encode_encrypted(
        &self,
        passphrase: &[u8],
        rng: &mut impl ferry_crypto::rng::CryptoRng,
    ) -> Result<Vec<u8>, SaveError> {
        let mut plain = self.encode();
        let out = encrypt(&plain, passphrase, rng);
        plain.fill(0);
        out
    }
}

/// DHT section body: `0x0159000d` LE, then sub-sections (cookie `0x11ce`) of which type 4 holds
/// packed nodes (several are concatenated).
fn decode_dht(body: &[u8]) -> Result<Vec<PackedNode>, SaveError> {
    const D: u16 = section::DHT;
    if body.len() < 4 || body[..4] != DHT_COOKIE.to_le_bytes() {
        return Err(bad(D, "no 0x0159000d cookie"));
    }
    let mut nodes = Vec::new();
    for (kind, data) in split_sections(&body[4..], DHT_SECTION_COOKIE, false)? {
        if kind != DHT_TYPE_NODES {
            return Err(bad(D, format!("unknown sub-section type {kind}")));
        }
        nodes.extend(decode_nodes(D, data)?);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests;
