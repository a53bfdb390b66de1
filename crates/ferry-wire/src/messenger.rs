//! friend_connection and messenger packets: the first byte of a net_crypto lossless/lossy
//! data packet and what follows it (`tox-protocol.md` §7.1, §7.3, §7.4; c-toxcore 0.2.18
//! `friend_connection.c`, `Messenger.c`).
//!
//! | id | packet | payload |
//! |---|---|---|
//! | 16 | friend_connection ALIVE | empty, every 8 s |
//! | 17 | SHARE_RELAYS | ≤ 3 packed TCP nodes |
//! | 18 | FRIEND_REQUEST over a session | `[nospam 4][message]` |
//! | 0x18 / 0x19 | ONLINE / OFFLINE | empty |
//! | 0x30 / 0x31 | NICKNAME / STATUSMESSAGE | UTF-8, ≤ 128 / ≤ 1007 B |
//! | 0x32 / 0x33 | USERSTATUS / TYPING | u8 |
//! | 0x40 / 0x41 | MESSAGE / ACTION | UTF-8, 1..=1372 B |
//! | 0x50 | FILE_SENDREQUEST | [`FileSendRequest`] |
//! | 0x51 | FILE_CONTROL | [`FileControl`] |
//! | 0x52 | FILE_DATA | `[file number u8][chunk ≤ 1371]` |
//! | 160–191 | custom lossless | app bytes, ≤ 1373 B with the id |
//! | 200–254 | custom lossy | app bytes, ≤ 1373 B with the id |

use crate::WireError;

/// friend_connection keepalive (every 8 s; the connection dies after 32 s without one).
pub const ALIVE: u8 = 16;
/// friend_connection: share TCP relays.
pub const SHARE_RELAYS: u8 = 17;
/// friend_connection: friend request over an existing session.
pub const FRIEND_REQUEST: u8 = 18;
/// Messenger: we are online (a friend shows online only after this arrives).
pub const ONLINE: u8 = 0x18;
/// Messenger: we go offline.
pub const OFFLINE: u8 = 0x19;
/// Messenger: our name.
pub const NICKNAME: u8 = 0x30;
/// Messenger: our status message.
pub const STATUS_MESSAGE: u8 = 0x31;
/// Messenger: our user status (0 online, 1 away, 2 busy).
pub const USER_STATUS: u8 = 0x32;
/// Messenger: typing (0/1).
pub const TYPING: u8 = 0x33;
/// Messenger: a normal chat message.
pub const MESSAGE: u8 = 0x40;
/// Messenger: an action message.
pub const ACTION: u8 = 0x41;

/// Messenger: offer a file (`PACKET_ID_FILE_SENDREQUEST`).
pub const FILE_SENDREQUEST: u8 = 0x50;
/// Messenger: accept / pause / kill / seek a file (`PACKET_ID_FILE_CONTROL`).
pub const FILE_CONTROL: u8 = 0x51;
/// Messenger: one chunk of a file (`PACKET_ID_FILE_DATA`); the only congestion-controlled
/// messenger packet.
pub const FILE_DATA: u8 = 0x52;

/// Transfers per direction per friend (`MAX_CONCURRENT_FILE_PIPES`): file numbers 0..=255.
pub const MAX_CONCURRENT_FILE_PIPES: usize = 256;
/// File id length, bytes (`FILE_ID_LENGTH`, `TOX_FILE_ID_LENGTH`).
pub const FILE_ID_LENGTH: usize = 32;
/// Longest file name, bytes (`MAX_FILENAME_LENGTH`).
pub const MAX_FILENAME_LENGTH: usize = 255;
/// Largest chunk of file data, bytes (`MAX_FILE_DATA_SIZE` = 1373 − 2). A chunk shorter than
/// this ends the transfer.
pub const MAX_FILE_DATA_SIZE: usize = 1371;
/// File size meaning "unknown / stream" (`UINT64_MAX`); such a transfer ends on a short chunk.
pub const FILE_SIZE_UNKNOWN: u64 = u64::MAX;
/// File kind: plain data (`TOX_FILE_KIND_DATA`).
pub const FILE_KIND_DATA: u32 = 0;
/// File kind: avatar (`TOX_FILE_KIND_AVATAR`): file id = SHA-256 of the image, size 0 = "no
/// avatar".
pub const FILE_KIND_AVATAR: u32 = 1;

/// FILE_SENDREQUEST (0x50) payload (c-toxcore 0.2.18 `file_sendrequest`,
/// `tox-protocol.md` §7.3).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | file number (0..=255, the sender's outgoing slot) |
/// | 1 | 4 | kind, u32 BE (0 data, 1 avatar; others passed through) |
/// | 5 | 8 | size in bytes, u64 BE ([`FILE_SIZE_UNKNOWN`] = stream) |
/// | 13 | 32 | file id |
/// | 45 | 0..=255 | file name bytes (UTF-8 expected, not checked) |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSendRequest {
    /// The sender's file number.
    pub file_number: u8,
    /// Kind ([`FILE_KIND_DATA`], [`FILE_KIND_AVATAR`], …).
    pub kind: u32,
    /// Size, bytes ([`FILE_SIZE_UNKNOWN`] = unknown).
    pub size: u64,
    /// File id: random per file, kept across resumes (c-toxcore: random unless the app sets it).
    pub file_id: [u8; FILE_ID_LENGTH],
    /// File name bytes, ≤ 255.
    pub name: Vec<u8>,
}

/// The fixed part of a [`FileSendRequest`], bytes.
pub const FILE_SENDREQUEST_HEAD: usize = 1 + 4 + 8 + FILE_ID_LENGTH;

impl FileSendRequest {
    /// Parses the payload after the 0x50 id.
    ///
    /// # Errors
    /// [`WireError::Truncated`] below 45 bytes, [`WireError::BadLength`] for a name over 255.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < FILE_SENDREQUEST_HEAD {
            return Err(WireError::Truncated("file send request"));
        }
        let name = &b[FILE_SENDREQUEST_HEAD..];
        if name.len() > MAX_FILENAME_LENGTH {
            return Err(WireError::BadLength {
                what: "file name",
                len: name.len(),
            });
        }
        let mut k = [0u8; 4];
        k.copy_from_slice(&b[1..5]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[5..13]);
        let mut file_id = [0u8; FILE_ID_LENGTH];
        file_id.copy_from_slice(&b[13..FILE_SENDREQUEST_HEAD]);
        Ok(Self {
            file_number: b[0],
            kind: u32::from_be_bytes(k),
            size: u64::from_be_bytes(s),
            file_id,
            name: name.to_vec(),
        })
    }

    /// Appends the payload (without the id byte) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.file_number);
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.file_id);
        out.extend_from_slice(&self.name);
    }
}

/// What a [`FileControl`] asks (`FILECONTROL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileControlKind {
    /// 0: accept an offered file, or resume one we paused.
    Accept,
    /// 1: pause.
    Pause,
    /// 2: kill (cancel); also the answer to a control for an unknown file.
    Kill,
    /// 3: seek to a byte position (u64 BE follows): only the receiver, only before accepting;
    /// the position must be below the size.
    Seek(u64),
}

/// FILE_CONTROL (0x51) payload (c-toxcore 0.2.18 `send_file_control_packet`,
/// `handle_filecontrol`).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | send_receive: 1 = the sender of this packet *receives* the file, 0 = it sends it |
/// | 1 | 1 | file number (the file sender's number) |
/// | 2 | 1 | control: 0 accept, 1 pause, 2 kill, 3 seek |
/// | 3 | 8 | seek only: position, u64 BE |
///
/// So a control with `receiving == true` names one of the *recipient's outgoing* files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileControl {
    /// The packet's sender is the file's receiver (byte 0 = 1).
    pub receiving: bool,
    /// File number.
    pub file_number: u8,
    /// The control.
    pub control: FileControlKind,
}

impl FileControl {
    /// Parses the payload after the 0x51 id.
    ///
    /// # Errors
    /// [`WireError::Truncated`] below 3 bytes; [`WireError::InvalidValue`] for send_receive > 1
    /// or an unknown control; [`WireError::BadLength`] for trailing bytes (or a seek without
    /// exactly 8 position bytes).
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() < 3 {
            return Err(WireError::Truncated("file control"));
        }
        let receiving = match b[0] {
            0 => false,
            1 => true,
            v => {
                return Err(WireError::InvalidValue {
                    what: "file control send_receive",
                    value: u64::from(v),
                });
            }
        };
        let rest = &b[3..];
        let bad_len = || WireError::BadLength {
            what: "file control",
            len: b.len(),
        };
        let control = match b[2] {
            0..=2 if !rest.is_empty() => return Err(bad_len()),
            0 => FileControlKind::Accept,
            1 => FileControlKind::Pause,
            2 => FileControlKind::Kill,
            3 => {
                let p: [u8; 8] = rest.try_into().map_err(|_| bad_len())?;
                FileControlKind::Seek(u64::from_be_bytes(p))
            }
            v => {
                return Err(WireError::InvalidValue {
                    what: "file control type",
                    value: u64::from(v),
                });
            }
        };
        Ok(Self {
            receiving,
            file_number: b[1],
            control,
        })
    }

    /// Appends the payload (without the id byte) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.receiving));
        out.push(self.file_number);
        match self.control {
            FileControlKind::Accept => out.push(0),
            FileControlKind::Pause => out.push(1),
            FileControlKind::Kill => out.push(2),
            FileControlKind::Seek(p) => {
                out.push(3);
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
    }
}

/// Builds a whole FILE_DATA packet `[0x52][file number][chunk]` (chunk ≤ 1371 bytes; the caller
/// checks).
pub fn encode_file_data(file_number: u8, chunk: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + chunk.len());
    v.push(FILE_DATA);
    v.push(file_number);
    v.extend_from_slice(chunk);
    v
}

/// Longest name, bytes (`TOX_MAX_NAME_LENGTH`).
pub const MAX_NAME_LENGTH: usize = 128;
/// Longest status message, bytes (`TOX_MAX_STATUS_MESSAGE_LENGTH`).
pub const MAX_STATUS_MESSAGE_LENGTH: usize = 1007;
/// Longest message per packet, bytes (`TOX_MAX_MESSAGE_LENGTH`); longer texts are split.
pub const MAX_MESSAGE_LENGTH: usize = 1372;
/// Longest custom packet including its id byte, bytes (`TOX_MAX_CUSTOM_PACKET_SIZE`).
pub const MAX_CUSTOM_PACKET_SIZE: usize = 1373;
/// Custom lossless packet ids (`tox_friend_send_lossless_packet`).
pub const CUSTOM_LOSSLESS: std::ops::RangeInclusive<u8> = 160..=191;
/// Custom lossy packet ids usable by apps (192–199 are routed to A/V by c-toxcore).
pub const CUSTOM_LOSSY: std::ops::RangeInclusive<u8> = 200..=254;

/// User status (messenger USERSTATUS payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserStatus {
    /// Online, available.
    Online,
    /// Away.
    Away,
    /// Busy.
    Busy,
}

impl UserStatus {
    fn from_u8(v: u8) -> Result<Self, WireError> {
        match v {
            0 => Ok(Self::Online),
            1 => Ok(Self::Away),
            2 => Ok(Self::Busy),
            _ => Err(WireError::InvalidValue {
                what: "user status",
                value: u64::from(v),
            }),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Online => 0,
            Self::Away => 1,
            Self::Busy => 2,
        }
    }
}

/// One friend_connection or messenger packet carried in net_crypto (the data after padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessengerPacket {
    /// 16: keepalive.
    Alive,
    /// 17: shared relays, raw packed nodes (parsed by the relay layer).
    ShareRelays(Vec<u8>),
    /// 18: friend request over a session.
    FriendRequest {
        /// The nospam of the receiver's Tox ID.
        nospam: [u8; 4],
        /// The request message.
        message: Vec<u8>,
    },
    /// 0x18.
    Online,
    /// 0x19.
    Offline,
    /// 0x30: name bytes (UTF-8 expected; ≤ 128 B).
    Nickname(Vec<u8>),
    /// 0x31: status message bytes (≤ 1007 B).
    StatusMessage(Vec<u8>),
    /// 0x32.
    UserStatus(UserStatus),
    /// 0x33.
    Typing(bool),
    /// 0x40 (normal) / 0x41 (action): message bytes, 1..=1372 B.
    Message {
        /// Whether this is an action (0x41).
        action: bool,
        /// The text bytes.
        text: Vec<u8>,
    },
    /// 0x50: a file offer.
    FileSendRequest(FileSendRequest),
    /// 0x51: a file control.
    FileControl(FileControl),
    /// 0x52: a file chunk (≤ 1371 bytes; empty ends a transfer of unknown size).
    FileData {
        /// The sender's file number.
        file_number: u8,
        /// The chunk.
        data: Vec<u8>,
    },
    /// 160–191: custom lossless, whole packet including the id.
    CustomLossless(Vec<u8>),
    /// 200–254 (and 192–199): custom lossy, whole packet including the id.
    CustomLossy(Vec<u8>),
    /// Any other id (files, conferences, MSI…): kept raw for later layers, including the id.
    Other(Vec<u8>),
}

impl MessengerPacket {
    /// Parses the data of one net_crypto packet (id byte first).
    ///
    /// # Errors
    /// [`WireError`] for an empty packet, an over-long field, a message of length 0, or an
    /// invalid user status / typing byte.
    pub fn decode(data: &[u8]) -> Result<Self, WireError> {
        let (&id, rest) = data
            .split_first()
            .ok_or(WireError::Truncated("messenger id"))?;
        let limit = |max: usize, what: &'static str| {
            if rest.len() > max {
                Err(WireError::BadLength {
                    what,
                    len: rest.len(),
                })
            } else {
                Ok(rest.to_vec())
            }
        };
        let one = |what: &'static str| -> Result<u8, WireError> {
            match rest {
                [b] => Ok(*b),
                _ => Err(WireError::BadLength {
                    what,
                    len: rest.len(),
                }),
            }
        };
        Ok(match id {
            ALIVE => Self::Alive,
            SHARE_RELAYS => Self::ShareRelays(rest.to_vec()),
            FRIEND_REQUEST => {
                if rest.len() < 5 {
                    return Err(WireError::Truncated("friend request"));
                }
                let mut nospam = [0u8; 4];
                nospam.copy_from_slice(&rest[..4]);
                Self::FriendRequest {
                    nospam,
                    message: rest[4..].to_vec(),
                }
            }
            ONLINE => Self::Online,
            OFFLINE => Self::Offline,
            NICKNAME => Self::Nickname(limit(MAX_NAME_LENGTH, "nickname")?),
            STATUS_MESSAGE => {
                Self::StatusMessage(limit(MAX_STATUS_MESSAGE_LENGTH, "status message")?)
            }
            USER_STATUS => Self::UserStatus(UserStatus::from_u8(one("user status")?)?),
            TYPING => match one("typing")? {
                0 => Self::Typing(false),
                1 => Self::Typing(true),
                v => {
                    return Err(WireError::InvalidValue {
                        what: "typing",
                        value: u64::from(v),
                    });
                }
            },
            MESSAGE | ACTION => {
                if rest.is_empty() {
                    return Err(WireError::BadLength {
                        what: "message",
                        len: 0,
                    });
                }
                Self::Message {
                    action: id == ACTION,
                    text: limit(MAX_MESSAGE_LENGTH, "message")?,
                }
            }
            FILE_SENDREQUEST => Self::FileSendRequest(FileSendRequest::decode(rest)?),
            FILE_CONTROL => Self::FileControl(FileControl::decode(rest)?),
            FILE_DATA => {
                let (&file_number, chunk) = rest
                    .split_first()
                    .ok_or(WireError::Truncated("file data"))?;
                if chunk.len() > MAX_FILE_DATA_SIZE {
                    return Err(WireError::BadLength {
                        what: "file data",
                        len: chunk.len(),
                    });
                }
                Self::FileData {
                    file_number,
                    data: chunk.to_vec(),
                }
            }
            160..=191 => Self::CustomLossless(data.to_vec()),
            192..=254 => Self::CustomLossy(data.to_vec()),
            _ => Self::Other(data.to_vec()),
        })
    }

    /// Emits the packet, id byte first.
    pub fn encode(&self) -> Vec<u8> {
        let with = |id: u8, body: &[u8]| {
            let mut v = Vec::with_capacity(1 + body.len());
            v.push(id);
            v.extend_from_slice(body);
            v
        };
        match self {
            Self::Alive => vec![ALIVE],
            Self::ShareRelays(b) => with(SHARE_RELAYS, b),
            Self::FriendRequest { nospam, message } => {
                let mut v = with(FRIEND_REQUEST, nospam);
                v.extend_from_slice(message);
                v
            }
            Self::Online => vec![ONLINE],
            Self::Offline => vec![OFFLINE],
            Self::Nickname(b) => with(NICKNAME, b),
            Self::StatusMessage(b) => with(STATUS_MESSAGE, b),
            Self::UserStatus(s) => vec![USER_STATUS, s.to_u8()],
            Self::Typing(t) => vec![TYPING, u8::from(*t)],
            Self::Message { action, text } => with(if *action { ACTION } else { MESSAGE }, text),
            Self::FileSendRequest(r) => {
                let mut v = Vec::with_capacity(1 + FILE_SENDREQUEST_HEAD + r.name.len());
                v.push(FILE_SENDREQUEST);
                r.encode_into(&mut v);
                v
            }
            Self::FileControl(c) => {
                let mut v = Vec::with_capacity(12);
                v.push(FILE_CONTROL);
                c.encode_into(&mut v);
                v
            }
            Self::FileData { file_number, data } => encode_file_data(*file_number, data),
            Self::CustomLossless(b) | Self::CustomLossy(b) | Self::Other(b) => b.clone(),
        }
    }
}

/// Splits `text` into pieces of at most `max` bytes each (the messenger limit is
/// [`MAX_MESSAGE_LENGTH`]), cutting after the last newline or space that fits, else at a UTF-8
/// character boundary, so every piece is valid UTF-8 and non-empty. An empty text gives no
/// pieces. `max` below 4 is raised to 4 (one UTF-8 character always fits).
pub fn split_message(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if rest.len() <= max {
            out.push(rest);
            break;
        }
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(ws) = rest[..cut].rfind(['\n', ' '])
            && ws > 0
        {
            cut = ws + 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_packets() {
        assert_eq!(
            MessengerPacket::decode(&[0x40, b'h', b'i']).expect("message"),
            MessengerPacket::Message {
                action: false,
                text: b"hi".to_vec()
            }
        );
        assert!(MessengerPacket::decode(&[0x40]).is_err());
        assert!(MessengerPacket::decode(&[]).is_err());
        assert!(MessengerPacket::decode(&[0x33, 2]).is_err());
        assert!(MessengerPacket::decode(&[0x32, 3]).is_err());
        assert_eq!(
            MessengerPacket::decode(&[160, 1, 2]).expect("custom"),
            MessengerPacket::CustomLossless(vec![160, 1, 2])
        );
        let long = vec![b'a'; MAX_NAME_LENGTH + 1];
        assert!(MessengerPacket::decode(&[&[NICKNAME][..], &long].concat()).is_err());
    }

    #[test]
    fn file_packets_have_c_toxcore_layouts() {
        let req = MessengerPacket::FileSendRequest(FileSendRequest {
            file_number: 7,
            kind: FILE_KIND_AVATAR,
            size: 0x0102_0304_0506_0708,
            file_id: [0xaa; 32],
            name: b"a.png".to_vec(),
        });
        let b = req.encode();
        assert_eq!(b.len(), 1 + 45 + 5);
        assert_eq!(&b[..14], &[0x50, 7, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[46..], b"a.png");
        assert_eq!(MessengerPacket::decode(&b).expect("req"), req);
        // Too short, name too long.
        assert!(MessengerPacket::decode(&b[..45]).is_err());
        let mut long = b[..46].to_vec();
        long.extend_from_slice(&[b'x'; 256]);
        assert!(MessengerPacket::decode(&long).is_err());

        let seek = FileControl {
            receiving: true,
            file_number: 3,
            control: FileControlKind::Seek(1371),
        };
        let b = MessengerPacket::FileControl(seek).encode();
        assert_eq!(b, vec![0x51, 1, 3, 3, 0, 0, 0, 0, 0, 0, 5, 0x5b]);
        assert_eq!(
            MessengerPacket::decode(&b).expect("seek"),
            MessengerPacket::FileControl(seek)
        );
        assert_eq!(
            MessengerPacket::decode(&[0x51, 0, 9, 2]).expect("kill"),
            MessengerPacket::FileControl(FileControl {
                receiving: false,
                file_number: 9,
                control: FileControlKind::Kill
            })
        );
        assert!(MessengerPacket::decode(&[0x51, 0, 9]).is_err());
        assert!(MessengerPacket::decode(&[0x51, 2, 9, 0]).is_err());
        assert!(MessengerPacket::decode(&[0x51, 0, 9, 4]).is_err());
        assert!(MessengerPacket::decode(&[0x51, 0, 9, 3, 1]).is_err());

        let d = encode_file_data(5, &[1, 2, 3]);
        assert_eq!(d, vec![0x52, 5, 1, 2, 3]);
        assert_eq!(
            MessengerPacket::decode(&[0x52, 5]).expect("empty chunk"),
            MessengerPacket::FileData {
                file_number: 5,
                data: Vec::new()
            }
        );
        assert!(MessengerPacket::decode(&[0x52]).is_err());
        assert!(MessengerPacket::decode(&encode_file_data(0, &[0; 1372])).is_err());
        assert!(MessengerPacket::decode(&encode_file_data(0, &[0; 1371])).is_ok());
    }

    #[test]
    fn split_prefers_spaces_and_keeps_utf8() {
        assert!(split_message("", 10).is_empty());
        assert_eq!(
            split_message("hello world again", 12),
            vec!["hello world ", "again"]
        );
        let s = "ééééé"; // 10 bytes
        let parts = split_message(s, 5);
        assert_eq!(parts, vec!["éé", "éé", "é"]);
    }

    proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            if let Ok(p) = MessengerPacket::decode(&data) {
                prop_assert_eq!(MessengerPacket::decode(&p.encode()).expect("re-decode"), p);
            }
        }

        #[test]
        fn file_packets_round_trip(
            file_number in any::<u8>(),
            kind in any::<u32>(),
            size in any::<u64>(),
            file_id in any::<[u8; 32]>(),
            name in proptest::collection::vec(any::<u8>(), 0..=MAX_FILENAME_LENGTH),
            control in 0u8..4,
            receiving in any::<bool>(),
            pos in any::<u64>(),
            chunk in proptest::collection::vec(any::<u8>(), 0..=MAX_FILE_DATA_SIZE),
        ) {
            let packets = [
                MessengerPacket::FileSendRequest(FileSendRequest { file_number, kind, size, file_id, name }),
                MessengerPacket::FileControl(FileControl {
                    receiving,
                    file_number,
                    control: match control {
                        0 => FileControlKind::Accept,
                        1 => FileControlKind::Pause,
                        2 => FileControlKind::Kill,
                        _ => FileControlKind::Seek(pos),
                    },
                }),
                MessengerPacket::FileData { file_number, data: chunk },
            ];
            for p in packets {
                let b = p.encode();
                prop_assert!(b.len() <= MAX_CUSTOM_PACKET_SIZE);
                prop_assert_eq!(MessengerPacket::decode(&b).expect("decode"), p);
            }
        }

        #[test]
        fn split_reassembles(text in ".{0,3000}", max in 4usize..2000) {
            let parts = split_message(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            for p in parts {
                prop_assert!(!p.is_empty() && p.len() <= max);
            }
        }
    }
}
