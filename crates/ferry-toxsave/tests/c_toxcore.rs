//! Interop with a real c-toxcore 0.2.18 (Debian `libtoxcore-dev`) through the test peer
//! (`ferry-testkit`'s `toxpeer`): saves written by c-toxcore decode in ferry (plain and
//! toxencryptsave-encrypted, byte-exact re-encoding), and saves written by ferry load in
//! c-toxcore with the same Tox ID, friends, names.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use ferry_crypto::KeyPair;
use ferry_crypto::rng::FerryRng;
use ferry_testkit::{ToxClient, ToxClientOptions};
use ferry_toxsave::{FriendStatus, SaveError, SavedFriend, ToxSave, UserStatus, decrypt};
use ferry_wire::node::PackedNode;
use ferry_wire::toxid::ToxId;

fn offline_client(load: Option<(&std::path::Path, Option<&str>)>) -> ToxClient {
    ToxClient::spawn(&ToxClientOptions {
        load: load.map(|(p, _)| p.to_path_buf()),
        passphrase: load.and_then(|(_, pw)| pw.map(str::to_string)),
        seconds: Some(120),
        ..Default::default()
    })
    .expect("toxpeer")
}

#[test]
fn c_toxcore_saves_decode_in_ferry() {
    let mut rng = FerryRng::from_u64(11);
    let dir = tempfile::tempdir().unwrap();
    let mut c = offline_client(None);
    c.request("NAME Alice ünïcode", "OK").unwrap();
    c.request("STATUS_MESSAGE testing saves", "OK").unwrap();
    c.request("USER_STATUS away", "OK").unwrap();
    c.request("NOSPAM 0A0B0C0D", "OK").unwrap();
    let address = c.request("ADDRESS", "ADDRESS ").unwrap()["ADDRESS ".len()..].to_string();
    let ids: Vec<ToxId> = (0..2)
        .map(|i| ToxId::new(KeyPair::generate(&mut rng).public, 0x1000 + i))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let n = c
            .add_friend(&id.to_string(), &format!("please add me {i}"))
            .unwrap();
        assert_eq!(n as usize, i);
    }
    let accepted = KeyPair::generate(&mut rng).public;
    c.request(&format!("ACCEPT {}", accepted.to_hex()), "FRIEND_ADDED 2")
        .unwrap();

    let plain_path = dir.path().join("c.tox");
    let enc_path = dir.path().join("c-enc.tox");
    c.save(&plain_path, None).unwrap();
    c.save(&enc_path, Some("sekrit passphrase")).unwrap();
    let plain = std::fs::read(&plain_path).unwrap();
    let enc = std::fs::read(&enc_path).unwrap();

    let save = ToxSave::decode(&plain).expect("decode c-toxcore save");
    assert_eq!(save.tox_id().to_string(), address);
    assert_eq!(save.nospam, [0x0a, 0x0b, 0x0c, 0x0d]);
    assert_eq!(save.name, "Alice ünïcode".as_bytes());
    assert_eq!(save.status_message, b"testing saves");
    assert_eq!(save.status, UserStatus::Away);
    assert_eq!(save.friends.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let f = &save.friends[i];
        assert_eq!(f.real_pk, id.public_key);
        assert_eq!(f.status, FriendStatus::Added);
        assert_eq!(f.request_message, format!("please add me {i}").as_bytes());
        assert_eq!(f.nospam, id.nospam);
    }
    assert_eq!(save.friends[2].real_pk, accepted);
    assert_eq!(save.friends[2].status, FriendStatus::Confirmed);
    assert!(save.unknown_sections.is_empty(), "{save:?}");
    // Byte-exact: ferry writes what c-toxcore wrote, less the zero padding c-toxcore leaves after
    // END.
    let ours = save.encode();
    assert_eq!(ours[..], plain[..ours.len()]);
    assert!(plain[ours.len()..].iter().all(|&b| b == 0));

    // The encrypted save: same content, exact c-toxcore key derivation.
    assert!(ferry_toxsave::is_encrypted(&enc));
    let dec = decrypt(&enc, b"sekrit passphrase").expect("decrypt c-toxcore encrypted save");
    assert_eq!(ToxSave::decode(&dec).expect("decode"), save);
    assert_eq!(
        ToxSave::load(&enc, Some(b"sekrit passphrase")).unwrap(),
        save
    );
    assert_eq!(
        decrypt(&enc, b"wrong passphrase"),
        Err(SaveError::WrongPassphrase)
    );
    assert_eq!(ToxSave::load(&enc, None), Err(SaveError::Encrypted));
}

#[test]
fn ferry_saves_load_in_c_toxcore() {
    let mut rng = FerryRng::from_u64(12);
    let dir = tempfile::tempdir().unwrap();
    let me = KeyPair::generate(&mut rng);
    let mut save = ToxSave::new(me.secret.clone(), [0xde, 0xad, 0xbe, 0xef]);
    save.name = b"ferry user".to_vec();
    save.status_message = b"moved from ferry".to_vec();
    save.status = UserStatus::Busy;
    let bob = KeyPair::generate(&mut rng).public;
    let mut confirmed = SavedFriend::confirmed(bob);
    confirmed.name = b"bob".to_vec();
    confirmed.status_message = b"bob's status".to_vec();
    confirmed.last_seen = 1_700_000_000;
    save.friends.push(confirmed);
    let carol = ToxId::new(KeyPair::generate(&mut rng).public, 0x01020304);
    save.friends
        .push(SavedFriend::requested(&carol, b"hi carol, it's ferry"));
    // Nodes on loopback only (c-toxcore will try them).
    let relay: SocketAddr = "127.0.0.1:9".parse().unwrap();
    save.tcp_relays.push(PackedNode {
        transport: ferry_wire::node::Transport::Tcp,
        addr: relay,
        public_key: KeyPair::generate(&mut rng).public,
    });
    save.dht_nodes.push(PackedNode::udp(
        "127.0.0.1:9".parse().unwrap(),
        KeyPair::generate(&mut rng).public,
    ));

    let plain_path = dir.path().join("f.tox");
    let enc_path = dir.path().join("f-enc.tox");
    std::fs::write(&plain_path, save.encode()).unwrap();
    std::fs::write(
        &enc_path,
        save.encode_encrypted(b"ferry pass", &mut rng).unwrap(),
    )
    .unwrap();

    for (path, pw) in [(&plain_path, None), (&enc_path, Some("ferry pass"))] {
        let mut c = offline_client(Some((path, pw)));
        assert_eq!(c.address, save.tox_id().to_string(), "{path:?}");
        let friends = c.friends().unwrap();
        assert_eq!(friends.len(), 2, "{friends:?}");
        assert_eq!(friends[0].public_key, bob.to_hex());
        assert_eq!(friends[0].name, "bob");
        assert_eq!(friends[1].public_key, carol.public_key.to_hex());
        // c-toxcore saves it back with the same identity, profile and friends.
        let again_path = dir.path().join("again.tox");
        c.save(&again_path, None).unwrap();
        let again = ToxSave::decode(&std::fs::read(&again_path).unwrap()).unwrap();
        assert_eq!(again.tox_id(), save.tox_id());
        assert_eq!(again.name, save.name);
        assert_eq!(again.status_message, save.status_message);
        assert_eq!(again.status, save.status);
        assert_eq!(again.friends, save.friends);
        // (TCP relays are not compared: c-toxcore hands loaded relays to net_crypto on its first
        // iteration and saves only connected ones afterwards.)
    }

    // c-toxcore refuses the wrong passphrase for a ferry-encrypted save.
    let wrong = ToxClient::spawn(&ToxClientOptions {
        load: Some(enc_path.clone()),
        passphrase: Some("not it".into()),
        ..Default::default()
    });
    assert!(wrong.is_err());
}
