use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ferry_wire::node::{Transport, normalize};
use proptest::prelude::*;

use super::*;

fn node() -> impl Strategy<Value = PackedNode> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 4]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(tcp, v6, a4, a6, port, pk)| {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from(a6))
            } else {
                IpAddr::V4(Ipv4Addr::from(a4))
            };
            PackedNode {
                transport: if tcp { Transport::Tcp } else { Transport::Udp },
                addr: normalize(SocketAddr::new(ip, port)),
                public_key: PublicKey(pk),
            }
        })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn friend() -> impl Strategy<Value = SavedFriend> {
    (
        any::<u8>(),
        any::<[u8; 32]>(),
        bytes(SAVED_FRIEND_REQUEST_SIZE),
        bytes(MAX_NAME_LENGTH),
        bytes(MAX_STATUSMESSAGE_LENGTH),
        any::<u8>(),
        any::<[u8; 4]>(),
        any::<u64>(),
    )
        .prop_map(
            |(st, pk, req, name, sm, us, nospam, last_seen)| SavedFriend {
                status: FriendStatus::from_byte(st),
                real_pk: PublicKey(pk),
                request_message: req,
                name,
                status_message: sm,
                user_status: UserStatus::from_byte(us),
                nospam,
                last_seen,
            },
        )
}

fn save() -> impl Strategy<Value = ToxSave> {
    (
        (
            any::<[u8; 32]>(),
            any::<[u8; 4]>(),
            bytes(200),
            bytes(200),
            any::<u8>(),
        ),
        proptest::collection::vec(friend(), 0..4),
        proptest::collection::vec(node(), 0..6),
        proptest::collection::vec(node(), 0..4),
        proptest::collection::vec(node(), 0..4),
        bytes(64),
        proptest::collection::vec(
            (
                any::<u16>().prop_filter("not a known section", |k| section::name(*k) == "unknown"),
                bytes(64),
            )
                .prop_map(|(kind, data)| RawSection { kind, data }),
            0..3,
        ),
    )
        .prop_map(
            |((sk, nospam, name, sm, st), friends, dht, tcp, path, conf, unknown)| ToxSave {
                secret_key: SecretKey::from_bytes(sk),
                nospam,
                name,
                status_message: sm,
                status: UserStatus::from_byte(st),
                friends,
                dht_nodes: dht,
                tcp_relays: tcp,
                path_nodes: path,
                conferences: conf,
                unknown_sections: unknown,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip(s in save()) {
        let bytes = s.encode();
        let back = ToxSave::decode(&bytes).expect("decode");
        prop_assert_eq!(&back, &s);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn friend_round_trip(f in friend()) {
        let mut b = Vec::new();
        f.encode(&mut b);
        prop_assert_eq!(b.len(), FRIEND_ENTRY_SIZE);
        prop_assert_eq!(SavedFriend::decode(&b).expect("decode"), f);
    }

    #[test]
    fn decode_never_panics(data in bytes(600)) {
        let _ = ToxSave::decode(&data);
    }

    #[test]
    fn prefixes_are_rejected_not_panicking(s in save(), cut in 0usize..2000) {
        let bytes = s.encode();
        let cut = cut % bytes.len();
        // Every prefix short of the whole file either fails or (when it ends exactly on a section
        // boundary before END) decodes to a save missing the later sections.
        let _ = ToxSave::decode(&bytes[..cut]);
    }
}

fn sample() -> ToxSave {
    let mut s = ToxSave::new(SecretKey::from_bytes([7; 32]), [1, 2, 3, 4]);
    s.name = b"alice".to_vec();
    s.friends.push(SavedFriend::confirmed(PublicKey([9; 32])));
    s
}

#[test]
fn friend_entry_is_2216_bytes() {
    assert_eq!(FRIEND_ENTRY_SIZE, 2216);
}

#[test]
fn header_and_first_section_layout() {
    let b = sample().encode();
    assert_eq!(&b[..8], &[0, 0, 0, 0, 0x1f, 0x1b, 0xed, 0x15]);
    // NOSPAMKEYS: length 68 LE, type 1, cookie 0x01ce.
    assert_eq!(&b[8..16], &[68, 0, 0, 0, 1, 0, 0xce, 0x01]);
    assert_eq!(&b[16..20], &[1, 2, 3, 4]);
    // END is the last 8 bytes.
    assert_eq!(&b[b.len() - 8..], &[0, 0, 0, 0, 0xff, 0, 0xce, 0x01]);
    let id = sample().tox_id();
    assert_eq!(id.nospam, [1, 2, 3, 4]);
}

#[test]
fn errors_are_specific() {
    let good = sample().encode();
    assert_eq!(ToxSave::decode(b"hello"), Err(SaveError::NotToxSave));
    assert_eq!(ToxSave::decode(b"toxEsave0123"), Err(SaveError::Encrypted));
    assert!(matches!(
        ToxSave::decode(&good[..good.len() - 12]),
        Err(SaveError::Truncated(_))
    ));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    assert_eq!(ToxSave::decode(&trailing).expect("trailing"), sample());
    let mut garbled = good.clone();
    garbled[14] = 0xcf;
    assert_eq!(
        ToxSave::decode(&garbled),
        Err(SaveError::Garbled {
            offset: 8,
            cookie: 0x01cf
        })
    );
    let mut mismatch = good.clone();
    mismatch[20] ^= 1; // a byte of the public key
    assert_eq!(ToxSave::decode(&mismatch), Err(SaveError::KeyMismatch));
    // No END: accepted, as c-toxcore does.
    assert_eq!(
        ToxSave::decode(&good[..good.len() - 8]).expect("no END"),
        sample()
    );
    // Only the header: no identity.
    assert_eq!(ToxSave::decode(&good[..8]), Err(SaveError::NoKeys));
}

#[test]
fn friend_length_beyond_array_is_rejected() {
    let mut b = Vec::new();
    SavedFriend::confirmed(PublicKey([1; 32])).encode(&mut b);
    // name_length sits after status, pk, info, padding, info_size, name.
    let at = 1 + 32 + 1024 + 1 + 2 + 128;
    b[at..at + 2].copy_from_slice(&129u16.to_be_bytes());
    assert!(matches!(
        SavedFriend::decode(&b),
        Err(SaveError::BadSection { .. })
    ));
}

#[test]
fn load_takes_plain_and_encrypted() {
    let mut rng = ferry_crypto::rng::FerryRng::from_u64(1);
    let s = sample();
    let enc = s.encode_encrypted(b"pw", &mut rng).expect("encrypt");
    assert_eq!(ToxSave::load(&enc, Some(b"pw")).expect("load"), s);
    assert_eq!(ToxSave::load(&enc, None), Err(SaveError::Encrypted));
    assert_eq!(
        ToxSave::load(&enc, Some(b"nope")),
        Err(SaveError::WrongPassphrase)
    );
    assert_eq!(ToxSave::load(&s.encode(), Some(b"pw")).expect("plain"), s);
}
