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

fn flush(stream: &mut std::net::TcpStream, client: &mut ferry_proto::tcp_client::RelayClient) {
    use std::io::Write;
    while let Some(b) = client.poll_output() {
        stream.write_all(&b).expect("write");
    }
}

/// Drives a sans-IO relay client over a blocking loopback stream until `want` returns a value.
fn drive<T>(
    stream: &mut std::net::TcpStream,
    client: &mut ferry_proto::tcp_client::RelayClient,
    mut want: impl FnMut(&ferry_proto::tcp_client::RelayClientEvent) -> Option<T>,
) -> T {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(b) = client.poll_output() {
            stream.write_all(&b).expect("write");
        }
        while let Some(ev) = client.poll_event() {
            if let Some(v) = want(&ev) {
                return v;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "relay too slow");
        match stream.read(&mut buf) {
            Ok(0) => panic!("relay closed the stream"),
            Ok(n) => client.handle_bytes(Instant::now(), &buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// ferry's relay client speaks c-toxcore's TCP relay protocol: two ferry clients handshake with a
/// c-toxcore 0.2.18 relay (toxpeer --tcp-port, key = its DHT key), get linked, exchange data
/// and an OOB packet.
#[test]
fn ferry_relay_clients_through_a_c_toxcore_relay() {
    use ferry_crypto::KeyPair;
    use ferry_crypto::rng::FerryRng;
    use ferry_proto::tcp_client::{RelayClient, RelayClientEvent};

    let port = free_tcp_port();
    let relay = ToxClient::spawn(&ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        tcp_port: Some(port),
        seconds: Some(120),
        ..ToxClientOptions::default()
    })
    .expect("toxpeer relay");
    let relay_pk: ferry_crypto::PublicKey = relay.dht_id.parse().expect("DHT key");
    let mut rng = FerryRng::from_u64(0x7e1a);
    let ka = KeyPair::generate(&mut rng);
    let kb = KeyPair::generate(&mut rng);
    let open = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        s
    };
    let (mut sa, mut sb) = (open(), open());
    let mut a = RelayClient::new(Instant::now(), &ka, relay_pk, rng.fork());
    let mut b = RelayClient::new(Instant::now(), &kb, relay_pk, rng.fork());
    let ready = |e: &RelayClientEvent| matches!(e, RelayClientEvent::Ready).then_some(());
    drive(&mut sa, &mut a, ready);
    drive(&mut sb, &mut b, ready);
    a.routing_request(kb.public);
    drive(&mut sa, &mut a, |e| {
        matches!(
            e,
            RelayClientEvent::RoutingResponse {
                conn_id: Some(_),
                ..
            }
        )
        .then_some(())
    });
    b.routing_request(ka.public);
    let connected =
        |e: &RelayClientEvent| matches!(e, RelayClientEvent::Connected { .. }).then_some(());
    drive(&mut sb, &mut b, connected);
    drive(&mut sa, &mut a, connected);
    assert!(a.send_data(&kb.public, vec![0x1b; 80]));
    flush(&mut sa, &mut a);
    let got = drive(&mut sb, &mut b, |e| match e {
        RelayClientEvent::Data { pk, data } => Some((*pk, data.clone())),
        _ => None,
    });
    assert_eq!(got, (ka.public, vec![0x1b; 80]));
    assert!(b.send_oob(ka.public, vec![0x18; 145]));
    flush(&mut sb, &mut b);
    let got = drive(&mut sa, &mut a, |e| match e {
        RelayClientEvent::Oob { src, data } => Some((*src, data.clone())),
        _ => None,
    });
    assert_eq!(got, (kb.public, vec![0x18; 145]));
    drop(relay);
}

/// Baseline for the figure above: the same two UDP-disabled c-toxcore friends through a
/// c-toxcore 0.2.18 relay (a toxpeer with `--tcp-port`, bootstrapped into the same ferry
/// network). Run with `--ignored --nocapture` to compare times.
#[test]
#[ignore = "timing baseline, run by hand"]
fn baseline_udp_disabled_c_toxcore_friends_through_a_c_toxcore_relay() {
    let infra = Infra::new(3).expect("infra");
    let port = free_tcp_port();
    let relay = ToxClient::spawn(&ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        tcp_port: Some(port),
        bootstrap: infra.tox_bootstrap(),
        seconds: Some(300),
        ..ToxClientOptions::default()
    })
    .expect("toxpeer relay");
    // Let the relay join the DHT first, as a long-running ferry relay would have.
    std::thread::sleep(Duration::from_secs(8));
    let client = |auto_accept| {
        ToxClient::spawn(&ToxClientOptions {
            udp_disabled: true,
            bootstrap: infra.tox_bootstrap(),
            tcp_relays: vec![("127.0.0.1".to_string(), port, relay.dht_id.clone())],
            auto_accept,
            seconds: Some(300),
            ..ToxClientOptions::default()
        })
        .expect("toxpeer")
    };
    let start = Instant::now();
    let mut a = client(false);
    let mut b = client(true);
    let n = a.add_friend(&b.address, "hello").expect("ADD");
    a.wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("a sees b online");
    b.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("b sees a");
    println!(
        "c-toxcore relay: friends online after {:?}",
        start.elapsed()
    );
}
