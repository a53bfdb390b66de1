//! Interop with a real c-toxcore 0.2.18 (Debian `libtoxcore-dev`), through the small C peer in
//! `crates/ferry-testkit/c/toxpeer.c`. Everything runs on 127.0.0.1; LAN discovery is off on
//! both sides. Timings are printed (run with `--no-capture` to see them).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_net::{NodeOptions, PortSpec, bind_udp, spawn_node};
use ferry_proto::dht::DhtConfig;
use ferry_testkit::{FerryUp, ToxPeer, free_udp_port};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

/// `ferry id` prints exactly what c-toxcore's `tox_self_get_address` computes for the same
/// long-term secret key and nospam.
#[test]
fn tox_id_matches_c_toxcore() {
    for _ in 0..3 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = std::process::Command::new(ferry())
            .arg("--profile")
            .arg(tmp.path())
            .arg("init")
            .output()
            .expect("init");
        assert!(o.status.success());
        let ours = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let id = ferry_daemon::profile::load(tmp.path()).expect("load");
        let sk_hex = id.long_term.secret.to_hex();
        let theirs = ToxPeer::address_of(&sk_hex, &format!("{:08X}", id.nospam)).expect("toxpeer");
        assert_eq!(ours, theirs);
    }
}

/// (a) ferry bootstraps from c-toxcore and lists it in its close list.
#[test]
fn ferry_bootstraps_from_c_toxcore() {
    let tox = ToxPeer::start(free_udp_port(), &[]).expect("toxpeer");
    let started = Instant::now();
    let node = FerryUp::start(
        ferry(),
        &[
            "--bootstrap".into(),
            format!("127.0.0.1:{}:{}", tox.port, tox.dht_id),
        ],
    )
    .expect("ferry up");
    loop {
        let nodes = node.json(&["dht", "nodes", "--json"]).expect("nodes");
        let listed = nodes.as_array().expect("array").iter().any(|n| {
            n["public_key"]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case(&tox.dht_id))
                && n["address"] == format!("127.0.0.1:{}", tox.port)
        });
        if listed {
            eprintln!(
                "MEASURE ferry learned the c-toxcore node after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ferry never listed c-toxcore: {nodes}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // c-toxcore parsed our packets: it answered our nodes request (0x02) and ping (0x00).
    assert!(
        tox.received_from(node.port, 0x02),
        "{:?}",
        tox.lines.snapshot()
    );
    let status = node.json(&["status", "--json"]).expect("status");
    assert_eq!(status["connection"], "udp");
}

/// (b) Two c-toxcore nodes given only a ferry node to bootstrap from end up exchanging DHT
/// packets with each other: each receives a *response* (ping 0x01 or nodes 0x04) from the other,
/// which it only gets after sending a request to an address it can have learned only from
/// ferry's nodes responses.
#[test]
fn c_toxcore_nodes_meet_through_ferry() {
    let node = FerryUp::start(ferry(), &[]).expect("ferry up");
    let key = node.json(&["status", "--json"]).expect("status")["dht_public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let started = Instant::now();
    let a = ToxPeer::start(free_udp_port(), &[(node.port, key.clone())]).expect("a");
    let b = ToxPeer::start(free_udp_port(), &[(node.port, key)]).expect("b");
    let met =
        |x: &ToxPeer, y: &ToxPeer| x.received_from(y.port, 0x01) || x.received_from(y.port, 0x04);
    loop {
        if met(&a, &b) && met(&b, &a) {
            eprintln!(
                "MEASURE c-toxcore nodes met through ferry after {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "c-toxcore nodes never met; a: {:?}\nb: {:?}",
            a.lines.snapshot(),
            b.lines.snapshot()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both also talked to ferry, and ferry lists both.
    assert!(a.received_from(node.port, 0x04) && b.received_from(node.port, 0x04));
    let nodes = node.json(&["dht", "nodes", "--json"]).expect("nodes");
    for p in [&a, &b] {
        assert!(
            nodes
                .as_array()
                .expect("array")
                .iter()
                .any(|n| n["public_key"]
                    .as_str()
                    .is_some_and(|k| k.eq_ignore_ascii_case(&p.dht_id))),
            "{nodes}"
        );
    }
}

/// A loopback network of 20 ferry nodes and 2 c-toxcore nodes in which every ferry node finds
/// every other node's IP address by its DHT public key (20 × 21 = 420 lookups).
#[test]
fn twenty_ferry_and_two_c_toxcore_nodes_find_everyone() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let n = 20;
        let mut ferry_nodes = Vec::new();
        let mut joins = Vec::new();
        for _ in 0..n {
            let socket =
                bind_udp(IpAddr::V4(Ipv4Addr::LOCALHOST), PortSpec::Exact(0)).expect("bind");
            let dht = DhtConfig {
                lan_discovery: false,
                ..DhtConfig::default()
            };
            let (h, j) = spawn_node(
                socket,
                NodeOptions {
                    dht,
                    ..NodeOptions::default()
                },
                ferry_net::DhtEvents(None),
            )
            .expect("spawn");
            let s = h.status().await.expect("status");
            ferry_nodes.push((h, s.local_addr, s.dht_public_key));
            joins.push(j);
        }
        let seed = (ferry_nodes[0].1, ferry_nodes[0].2);
        // The c-toxcore nodes bootstrap from two different ferry nodes.
        let tox_a =
            ToxPeer::start(free_udp_port(), &[(seed.0.port(), seed.1.to_hex())]).expect("tox a");
        let tox_b = ToxPeer::start(
            free_udp_port(),
            &[(ferry_nodes[1].1.port(), ferry_nodes[1].2.to_hex())],
        )
        .expect("tox b");
        let started = Instant::now();
        for (i, (h, _, _)) in ferry_nodes.iter().enumerate() {
            if i > 0 {
                h.bootstrap(seed.0, seed.1).await.expect("bootstrap");
            }
        }
        let mut targets: Vec<(PublicKey, SocketAddr)> =
            ferry_nodes.iter().map(|(_, a, k)| (*k, *a)).collect();
        for t in [&tox_a, &tox_b] {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), t.port);
            targets.push((PublicKey::from_hex(&t.dht_id).expect("key"), addr));
        }
        for (h, _, own) in &ferry_nodes {
            for (k, _) in &targets {
                if k != own {
                    h.add_search(*k).await.expect("alive").expect("search");
                }
            }
        }
        let total = n * (targets.len() - 1);
        loop {
            let mut resolved = 0;
            for (h, _, own) in &ferry_nodes {
                for (k, addr) in &targets {
                    if k == own {
                        continue;
                    }
                    if let Some(found) = h
                        .search_status(*k)
                        .await
                        .expect("alive")
                        .and_then(|s| s.found)
                    {
                        assert_eq!(found, *addr, "wrong address for {k}");
                        resolved += 1;
                    }
                }
            }
            if resolved == total {
                eprintln!(
                    "MEASURE 20 ferry + 2 c-toxcore: all {total} lookups resolved after {:?}",
                    started.elapsed()
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "only {resolved}/{total} lookups resolved"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (h, _, _) in &ferry_nodes {
            h.shutdown().await;
        }
        for j in joins {
            j.await.expect("join");
        }
    });
}
