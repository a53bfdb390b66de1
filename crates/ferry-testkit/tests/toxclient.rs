//! The scriptable c-toxcore client works: two `toxpeer` processes on loopback, bootstrapped only
//! to each other, become friends, chat, exchange custom packets, and survive a save/load round
//! trip (plain and toxencryptsave-encrypted).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ferry_testkit::{ToxClient, ToxClientOptions};

const LONG: Duration = Duration::from_secs(90);

#[test]
fn two_c_toxcore_clients_befriend_chat_and_reload() {
    let mut a = ToxClient::spawn(&ToxClientOptions::default()).expect("a");
    let mut b = ToxClient::spawn(&ToxClientOptions {
        auto_accept: true,
        bootstrap: vec![a.as_bootstrap()],
        ..Default::default()
    })
    .expect("b");
    let (ip, port, key) = b.as_bootstrap();
    a.request(&format!("BOOTSTRAP {ip} {port} {key}"), "OK")
        .expect("bootstrap");
    a.request("NAME alice", "OK").expect("name");
    let started = std::time::Instant::now();
    let n = a.add_friend(&b.address, "hello from a").expect("add");
    assert_eq!(n, 0);

    let req = b.wait_for("FRIEND_REQUEST ", LONG).expect("request");
    assert_eq!(
        req,
        format!("FRIEND_REQUEST {} hello from a", a.public_key())
    );
    assert_eq!(b.wait_for("FRIEND_ADDED ", LONG).unwrap(), "FRIEND_ADDED 0");
    a.wait_for("FRIEND_CONNECTION 0 udp", LONG)
        .expect("a sees b");
    b.wait_for("FRIEND_CONNECTION 0 udp", LONG)
        .expect("b sees a");
    eprintln!("MEASURE friends online after {:?}", started.elapsed());
    assert_eq!(
        b.wait_for("FRIEND_NAME 0", LONG).unwrap(),
        "FRIEND_NAME 0 alice"
    );

    let sent = a.request("SEND 0 hi there", "SENT ").expect("send");
    let id = sent.rsplit(' ').next().unwrap().to_string();
    assert_eq!(
        b.wait_for("MESSAGE 0", LONG).unwrap(),
        "MESSAGE 0 normal hi there"
    );
    a.wait_for(&format!("RECEIPT 0 {id}"), LONG)
        .expect("receipt");
    b.request("ACTION 0 waves", "SENT ").expect("action");
    assert_eq!(
        a.wait_for("MESSAGE 0", LONG).unwrap(),
        "MESSAGE 0 action waves"
    );

    a.request("LOSSLESS 0 A0DEADBEEF", "OK").expect("lossless");
    assert_eq!(
        b.wait_for("LOSSLESS 0", LONG).unwrap(),
        "LOSSLESS 0 A0DEADBEEF"
    );
    b.request("LOSSLESS 0 BF00", "OK").expect("lossless back");
    assert_eq!(a.wait_for("LOSSLESS 0", LONG).unwrap(), "LOSSLESS 0 BF00");

    // Save (plain and encrypted) and reload: same Tox ID, same friend.
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.tox");
    let enc = dir.path().join("a-enc.tox");
    a.save(&plain, None).expect("save");
    a.save(&enc, Some("correct horse")).expect("save encrypted");
    let friends = a.friends().expect("friends");
    assert_eq!(friends.len(), 1);
    assert_eq!(friends[0].public_key, b.public_key());
    assert_eq!(friends[0].connection, "udp");
    let a_address = a.address.clone();
    drop(a);
    for (path, pass) in [(&plain, None), (&enc, Some("correct horse".to_string()))] {
        let mut again = ToxClient::spawn(&ToxClientOptions {
            load: Some(path.clone()),
            passphrase: pass,
            ..Default::default()
        })
        .expect("reload");
        assert_eq!(again.address, a_address);
        let f = again.friends().expect("friends");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].public_key, b.public_key());
    }
    let wrong = ToxClient::spawn(&ToxClientOptions {
        load: Some(enc.clone()),
        passphrase: Some("wrong".into()),
        ..Default::default()
    });
    assert!(wrong.is_err());
}

/// `--udp-disabled` with a TCP relay: a UDP-less client reaches a friend through a TCP relay
/// server (`--tcp-port`) and chats over `tcp`. Its bootstrap entries only seed onion paths.
#[test]
fn udp_less_client_chats_through_tcp_relay() {
    let tcp_port = ferry_testkit::free_tcp_port();
    let relay = ToxClient::spawn(&ToxClientOptions {
        tcp_port: Some(tcp_port),
        ..Default::default()
    })
    .expect("relay");
    let mut a = ToxClient::spawn(&ToxClientOptions {
        auto_accept: true,
        bootstrap: vec![relay.as_bootstrap()],
        ..Default::default()
    })
    .expect("a");
    let c = ToxClient::spawn(&ToxClientOptions {
        bootstrap: vec![relay.as_bootstrap(), a.as_bootstrap()],
        ..Default::default()
    })
    .expect("c");
    let mut b = ToxClient::spawn(&ToxClientOptions {
        udp_disabled: true,
        bootstrap: vec![relay.as_bootstrap(), a.as_bootstrap(), c.as_bootstrap()],
        tcp_relays: vec![("127.0.0.1".into(), tcp_port, relay.dht_id.clone())],
        ..Default::default()
    })
    .expect("b");
    assert_eq!(b.port, 0);
    b.add_friend(&a.address, "over tcp").expect("add");
    a.wait_for("FRIEND_REQUEST ", LONG).expect("request");
    b.wait_for("FRIEND_CONNECTION 0 tcp", LONG)
        .expect("b sees a");
    a.wait_for("FRIEND_CONNECTION 0", LONG).expect("a sees b");
    b.request("SEND 0 via relay", "SENT ").expect("send");
    assert_eq!(
        a.wait_for("MESSAGE 0", LONG).unwrap(),
        "MESSAGE 0 normal via relay"
    );
}
