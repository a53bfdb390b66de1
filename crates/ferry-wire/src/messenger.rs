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
        fn split_reassembles(text in ".{0,3000}", max in 4usize..2000) {
            let parts = split_message(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            for p in parts {
                prop_assert!(!p.is_empty() && p.len() <= max);
            }
        }
    }
}
