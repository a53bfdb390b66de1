//! Benchmarks of issue 4, run by `bench/friends.sh` (ignored in CI; they measure, they do not
//! assert speed):
//!
//! * time from start to "friend online" for two nodes that are already friends, for
//!   ferry↔ferry, ferry↔c-toxcore and c-toxcore↔c-toxcore, in one run on one network of ferry
//!   infrastructure nodes on loopback;
//! * message round trip ferry↔ferry (in-process nodes over real UDP sockets: A sends, B's
//!   handler echoes at once, A measures until the echo arrives).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use ferry_net::{EventHandler, NodeOptions, PortSpec, bind_udp, spawn_node};
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::{Connection, Node, NodeEvent};
use ferry_testkit::{FerryUp, Infra, ToxClient, ToxClientOptions};

fn ferry() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

const STEP: Duration = Duration::from_secs(120);

fn online(up: &FerryUp, pk: &str) -> bool {
    up.json(&["friend", "list", "--json"])
        .map(|l| {
            l.as_array().is_some_and(|a| {
                a.iter().any(|f| {
                    f["public_key"]
                        .as_str()
                        .is_some_and(|k| k.eq_ignore_ascii_case(pk))
                        && f["connection"].as_str() != Some("none")
                })
            })
        })
        .unwrap_or(false)
}

fn wait_ferry_online(up: &FerryUp, pk: &str) -> Duration {
    let start = Instant::now();
    while !online(up, pk) {
        assert!(start.elapsed() < STEP, "never online");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn id_of(up: &FerryUp) -> (String, String) {
    let v = up.json(&["id", "--json"]).expect("id");
    (
        v["tox_id"].as_str().expect("id").to_string(),
        v["public_key"].as_str().expect("pk").to_string(),
    )
}

#[test]
#[ignore = "benchmark: run bench/friends.sh"]
fn bench_time_to_friend_online() {
    let infra = Infra::new(8).expect("infra");
    let boot = infra.ferry_args();
    let tox_boot = infra.tox_bootstrap();
    let dir = tempfile::tempdir().expect("dir");
    let mut rows: Vec<(&str, Duration)> = Vec::new();

    // ferry <-> ferry: befriend, stop both, start both at once.
    let a = FerryUp::start(ferry(), &boot).expect("a");
    let b = FerryUp::start(ferry(), &boot).expect("b");
    let (_, a_pk) = id_of(&a);
    let (b_id, b_pk) = id_of(&b);
    assert!(
        b.cli(&["set", "auto-accept", "on"])
            .expect("set")
            .status
            .success()
    );
    assert!(
        a.cli(&["friend", "add", &b_id, "hi"])
            .expect("add")
            .status
            .success()
    );
    wait_ferry_online(&a, &b_pk);
    let pa = a.stop_keep_profile().expect("stop a");
    let pb = b.stop_keep_profile().expect("stop b");
    let start = Instant::now();
    let a = FerryUp::start_with_profile(ferry(), pa, &boot).expect("a again");
    let b = FerryUp::start_with_profile(ferry(), pb, &boot).expect("b again");
    wait_ferry_online(&a, &b_pk);
    wait_ferry_online(&b, &a_pk);
    rows.push(("ferry <-> ferry", start.elapsed()));
    drop(b);

    // ferry <-> c-toxcore: befriend, save c-toxcore, stop both, start both at once.
    let opts = |load: Option<std::path::PathBuf>| ToxClientOptions {
        port: ferry_testkit::free_udp_port(),
        bootstrap: tox_boot.clone(),
        auto_accept: true,
        seconds: Some(300),
        load,
        ..ToxClientOptions::default()
    };
    let mut t = ToxClient::spawn(&opts(None)).expect("toxpeer");
    let t_pk = t.public_key().to_string();
    assert!(
        a.cli(&["friend", "add", &t.address.clone(), "hi"])
            .expect("add")
            .status
            .success()
    );
    wait_ferry_online(&a, &t_pk);
    let t_save = dir.path().join("t.tox");
    t.save(&t_save, None).expect("save");
    drop(t);
    let pa = a.stop_keep_profile().expect("stop a");
    let start = Instant::now();
    let a = FerryUp::start_with_profile(ferry(), pa, &boot).expect("a again");
    let mut t = ToxClient::spawn(&opts(Some(t_save.clone()))).expect("toxpeer again");
    wait_ferry_online(&a, &t_pk);
    t.wait_for("FRIEND_CONNECTION ", STEP)
        .expect("c-toxcore sees ferry");
    rows.push(("ferry <-> c-toxcore", start.elapsed()));
    drop(t);
    drop(a);

    // c-toxcore <-> c-toxcore.
    let mut x = ToxClient::spawn(&opts(None)).expect("x");
    let mut y = ToxClient::spawn(&opts(None)).expect("y");
    let n = x.add_friend(&y.address.clone(), "hi").expect("add");
    x.wait_for(&format!("FRIEND_CONNECTION {n} "), STEP)
        .expect("online");
    y.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("online");
    let (xs, ys) = (dir.path().join("x.tox"), dir.path().join("y.tox"));
    x.save(&xs, None).expect("save");
    y.save(&ys, None).expect("save");
    drop(x);
    drop(y);
    let start = Instant::now();
    let mut x = ToxClient::spawn(&opts(Some(xs))).expect("x again");
    let mut y = ToxClient::spawn(&opts(Some(ys))).expect("y again");
    x.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("x online");
    y.wait_for("FRIEND_CONNECTION 0 ", STEP).expect("y online");
    rows.push(("c-toxcore <-> c-toxcore", start.elapsed()));

    println!(
        "\ntime from start to friend online (both sides), loopback, 8 ferry infrastructure nodes"
    );
    let base = rows[2].1.as_secs_f64();
    for (name, d) in &rows {
        println!(
            "{name:<26} {:>6.2} s   ({:.2}x c-toxcore <-> c-toxcore)",
            d.as_secs_f64(),
            d.as_secs_f64() / base
        );
    }
}

/// Echoes messages (bob) or reports their arrival (alice) from inside the node task.
#[derive(Debug)]
struct Echo {
    echo: bool,
    tx: std_mpsc::SyncSender<(Instant, String)>,
}

impl EventHandler for Echo {
    fn on_event(&mut self, node: &mut Node, now: Instant, event: NodeEvent) {
        match event {
            NodeEvent::FriendRequest { public_key, .. } => {
                let _ = node.add_friend_norequest(now, public_key);
            }
            NodeEvent::FriendConnection { connection, .. } if connection != Connection::None => {
                let _ = self.tx.try_send((Instant::now(), "online".into()));
            }
            NodeEvent::Message {
                public_key, text, ..
            } => {
                let text = String::from_utf8_lossy(&text).into_owned();
                if self.echo {
                    let _ = node.send_message(now, &public_key, false, &text);
                } else {
                    let _ = self.tx.try_send((Instant::now(), text));
                }
            }
            _ => {}
        }
    }
}

#[test]
#[ignore = "benchmark: run bench/friends.sh"]
fn bench_message_round_trip() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let infra = Infra::new(6).expect("infra");
    let (a_tx, a_rx) = std_mpsc::sync_channel(4096);
    let (b_tx, _b_rx) = std_mpsc::sync_channel(4096);
    let seed = (infra.nodes[0].1, infra.nodes[0].2);
    let (alice, bob) = rt.block_on(async {
        let mut hs = Vec::new();
        for (echo, tx) in [(false, a_tx), (true, b_tx)] {
            let socket =
                bind_udp(IpAddr::V4(Ipv4Addr::LOCALHOST), PortSpec::Exact(0)).expect("bind");
            let mut rng =
                ferry_crypto::rng::FerryRng::from_seed(ferry_crypto::rng::os_seed().expect("seed"));
            let keys = ferry_crypto::KeyPair::generate(&mut rng);
            let (h, _) = spawn_node(
                socket,
                NodeOptions {
                    dht: DhtConfig {
                        lan_discovery: false,
                        ..DhtConfig::default()
                    },
                    bootstrap: vec![seed],
                    real_keys: Some(keys),
                    nospam: 1,
                    ..NodeOptions::default()
                },
                Echo { echo, tx },
            )
            .expect("spawn");
            hs.push(h);
        }
        let bob_id = hs[1].call(|n, _| n.tox_id()).await.expect("id");
        hs[0]
            .call(move |n, now| n.add_friend(now, &bob_id, b"hi"))
            .await
            .expect("call")
            .expect("add");
        (hs[0].clone(), hs[1].clone())
    });
    let (t, _) = a_rx.recv_timeout(STEP).expect("online");
    let _ = t;
    let bob_pk = rt
        .block_on(bob.call(|n, _| n.tox_id().public_key))
        .expect("pk");
    let mut rtts = Vec::new();
    for i in 0..500 {
        // Chat-like spacing: each message starts from a quiet session.
        std::thread::sleep(Duration::from_millis(0));
        let text = format!("ping {i}");
        let sent = Instant::now();
        let t2 = text.clone();
        rt.block_on(alice.call(move |n, now| n.send_message(now, &bob_pk, false, &t2)))
            .expect("call")
            .expect("send");
        loop {
            let (at, got) = a_rx.recv_timeout(Duration::from_secs(5)).expect("echo");
            if got == text {
                rtts.push(at.duration_since(sent));
                break;
            }
        }
    }
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "\nmessage round trip ferry <-> ferry (loopback UDP, {} messages): median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        rtts.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    rt.block_on(async {
        alice.shutdown().await;
        bob.shutdown().await;
    });
}
