//! The TCP relay server (issue 5, `tox-protocol.md` §6) against real c-toxcore 0.2.18 clients:
//! two UDP-disabled `toxpeer`s that know only a ferry relay (plus UDP bootstrap nodes, which
//! c-toxcore then uses only as onion path nodes) become friends and chat through it. Everything
//! runs on 127.0.0.1. Timings are printed (run with `--no-capture`).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_testkit::{FerryUp, Infra, ToxClient, ToxClientOptions, free_tcp_port};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(120);

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn udp_disabled_c_toxcore_friends_chat_through_a_ferry_relay() {
    let infra = Infra::new(3).expect("infra");
    let port = free_tcp_port();
    let tap_dir = tempfile::tempdir().expect("tempdir");
    let tap = tap_dir.path().join("tap.bin");
    let mut args = infra.ferry_args();
    args.extend([
        "--tcp-relay".to_string(),
        port.to_string(),
        "--relay-tap-file".to_string(),
        tap.display().to_string(),
    ]);
    let relay = FerryUp::start(ferry(), &args).expect("ferry up --tcp-relay");
    let status = relay
        .json(&["relay", "status", "--json"])
        .expect("relay status");
    assert_eq!(status["enabled"], true);
    assert_eq!(status["ports"][0].as_u64(), Some(u64::from(port)));
    let relay_key = status["public_key"].as_str().expect("key").to_string();
    // The relay's key is the node's DHT key (c-toxcore: new_tcp_server gets the DHT secret key).
    let node = relay.json(&["status", "--json"]).expect("status");
    assert_eq!(node["dht_public_key"].as_str(), Some(relay_key.as_str()));

    let client = |auto_accept| {
        ToxClient::spawn(&ToxClientOptions {
            udp_disabled: true,
            bootstrap: infra.tox_bootstrap(),
            tcp_relays: vec![("127.0.0.1".to_string(), port, relay_key.clone())],
            auto_accept,
            seconds: Some(300),
            ..ToxClientOptions::default()
        })
        .expect("toxpeer")
    };
    let start = Instant::now();
    let mut a = client(false);
    let mut b = client(true);
    let n = a
        .add_friend(&b.address, "friend request through a relay")
        .expect("ADD");
    let line = a
        .wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("a sees b online");
    b.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("b sees a");
    let online = start.elapsed();
    assert!(
        line.ends_with("tcp"),
        "UDP is off, so the path is TCP: {line}"
    );
    let secret = "relay-plaintext-canary-7f3a9c";
    a.send_command(&format!("SEND {n} {secret}")).expect("SEND");
    b.wait_for(&format!("MESSAGE 0 normal {secret}"), STEP)
        .expect("b gets the message");
    b.send_command(&format!("SEND 0 {secret}-reply"))
        .expect("SEND");
    a.wait_for(&format!("MESSAGE {n} normal {secret}-reply"), STEP)
        .expect("a gets the reply");
    let chat = start.elapsed();

    let s = relay
        .json(&["relay", "status", "--json"])
        .expect("relay status");
    println!("friends online through the ferry relay after {online:?}, chat done after {chat:?}");
    println!("relay status: {s}");
    assert!(s["clients"].as_u64() >= Some(2), "{s}");
    assert!(s["links"].as_u64() >= Some(1), "{s}");
    assert!(s["bytes_relayed"].as_u64() > Some(0), "{s}");
    assert!(s["onion_requests"].as_u64() > Some(0), "{s}");
    assert!(relay.stop().expect("stop"), "clean stop");

    // What the relay itself could read of the payloads it forwarded: net_crypto ciphertext only.
    let seen = std::fs::read(&tap).expect("tap file");
    println!("relay saw {} payload bytes", seen.len());
    assert!(!seen.is_empty());
    assert!(
        !contains(&seen, secret.as_bytes()),
        "plaintext visible to the relay"
    );
    assert!(!contains(&seen, b"friend request through a relay"));
}
