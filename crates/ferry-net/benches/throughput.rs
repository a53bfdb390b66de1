//! Bulk lossless throughput of net_crypto between two ferry nodes (issue 6 point 4), run by
//! `bench/throughput.sh`. Not a CI test: it measures, it asserts nothing about speed.
//!
//! The sender pushes custom lossless packets (id 160, 1373 bytes: the largest net_crypto data
//! packet) through [`Node::send_custom`] as fast as [`NetCrypto::send_budget`] allows; every
//! `--chat-ms` it also sends a chat message stamped with the wall clock, and the receiver
//! reports how long those took (issue 6 goal: < 50 ms during a transfer on loopback).
//!
//! Modes:
//! * `both` (default): both nodes in this process on 127.0.0.1.
//! * `send --bind A --peer B` / `recv --bind B --peer A`: one node each, e.g. in two network
//!   namespaces. Keys are derived from fixed seeds, so the two processes know each other.
//!
//! Options: `--mib N` (default 256), `--chat-ms N` (default 20, 0 = none), `--time-limit S`.
//! `FERRY_BENCH_VERBOSE=1` prints the sender's session state (rate, window, in flight) every
//! 250 ms. Without arguments (as `cargo test --benches` runs it) it does nothing.
//! Output: one line `RESULT mode=.. mib=.. secs=.. mib_per_s=.. chat_n=.. chat_p50_ms=..
//! chat_max_ms=.. retransmissions=..`.
//!
//! [`NetCrypto::send_budget`]: ferry_proto::net_crypto::NetCrypto::send_budget

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_crypto::KeyPair;
use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_net::{
    EventHandler, NodeHandle, NodeOptions, PortSpec, bind_udp, spawn_node_with_dht_keys,
};
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::{Connection, Node, NodeEvent};

const PACKET: usize = 1373;

struct Keys {
    real: KeyPair,
    dht: KeyPair,
}

fn keys(seed: u64) -> Keys {
    let mut rng = FerryRng::from_u64(seed);
    Keys {
        real: KeyPair::generate(&mut rng),
        dht: KeyPair::generate(&mut rng),
    }
}

#[derive(Default)]
struct Shared {
    bytes: AtomicU64,
    online: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
    chat: Mutex<Vec<f64>>,
}

struct Handler(Arc<Shared>);

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl EventHandler for Handler {
    fn on_event(&mut self, _node: &mut Node, _now: Instant, event: NodeEvent) {
        match event {
            NodeEvent::CustomPacket {
                lossless: true,
                data,
                ..
            } => {
                let now = Instant::now();
                let mut first = self.0.first.lock().expect("lock");
                if first.is_none() {
                    *first = Some(now);
                }
                *self.0.last.lock().expect("lock") = Some(now);
                self.0.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            NodeEvent::Message { text, .. } => {
                if let Some(ns) = std::str::from_utf8(&text)
                    .ok()
                    .and_then(|t| t.strip_prefix("chat "))
                    .and_then(|t| t.parse::<u128>().ok())
                {
                    let ms = wall_ns().saturating_sub(ns) as f64 / 1e6;
                    self.0.chat.lock().expect("lock").push(ms);
                }
            }
            NodeEvent::FriendConnection { connection, .. } => {
                let on = u64::from(connection != Connection::None);
                self.0.online.store(on, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

struct Args {
    mode: String,
    bind: SocketAddr,
    peer: Option<SocketAddr>,
    mib: u64,
    chat_ms: u64,
    time_limit: Duration,
}

fn args() -> Args {
    let mut a = Args {
        mode: "both".into(),
        bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        peer: None,
        mib: 256,
        chat_ms: 20,
        time_limit: Duration::from_secs(120),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = || it.next().expect("option value");
        match x.as_str() {
            "both" | "send" | "recv" => a.mode = x,
            "--bind" => a.bind = val().parse().expect("--bind addr"),
            "--peer" => a.peer = Some(val().parse().expect("--peer addr")),
            "--mib" => a.mib = val().parse().expect("--mib"),
            "--chat-ms" => a.chat_ms = val().parse().expect("--chat-ms"),
            "--time-limit" => a.time_limit = Duration::from_secs(val().parse().expect("secs")),
            // cargo bench passes --bench; ignore unknown flags.
            _ => {}
        }
    }
    a
}

async fn start(me: &Keys, bind: SocketAddr, shared: Arc<Shared>) -> NodeHandle {
    let socket = bind_udp(bind.ip(), PortSpec::Exact(bind.port())).expect("bind");
    let (h, _) = spawn_node_with_dht_keys(
        socket,
        NodeOptions {
            dht: DhtConfig {
                lan_discovery: false,
                ..DhtConfig::default()
            },
            bootstrap: Vec::new(),
            real_keys: Some(me.real.clone()),
            nospam: 1,
            ..NodeOptions::default()
        },
        me.dht.clone(),
        Handler(shared),
    )
    .expect("spawn");
    h
}

async fn befriend(h: &NodeHandle, other: &Keys, addr: SocketAddr) {
    let (pk, dht) = (other.real.public, other.dht.public);
    h.call(move |n, now| {
        let _ = n.add_friend_norequest(now, pk);
        n.set_friend_dht_key(now, &pk, dht, Some(addr))
            .expect("friend");
    })
    .await
    .expect("call");
}

async fn wait_online(shared: &Shared, limit: Duration) {
    let t = Instant::now();
    while shared.online.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed() < limit, "friend never came online");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Pushes `total` bytes; returns when everything was acknowledged.
async fn send_all(h: &NodeHandle, peer: PublicKey, total: u64, chat_ms: u64) -> u64 {
    let mut left = total.div_ceil(PACKET as u64);
    let mut next_chat = Instant::now();
    let mut idle_spins = 0u32;
    let mut all_sent: Option<Instant> = None;
    let verbose = std::env::var_os("FERRY_BENCH_VERBOSE").is_some();
    let mut next_log = Instant::now();
    loop {
        if verbose && Instant::now() >= next_log {
            next_log = Instant::now() + Duration::from_millis(250);
            let line = h
                .call(move |n, _| {
                    let st = n.net_crypto().session_state(&peer);
                    format!("{st:?} {:?}", n.net_crypto().stats())
                })
                .await
                .expect("call");
            eprintln!("STATE {line}");
        }
        let chat = chat_ms > 0 && left > 0 && Instant::now() >= next_chat;
        if chat {
            next_chat = Instant::now() + Duration::from_millis(chat_ms);
        }
        let l = left;
        let (sent, drained, retrans) = h
            .call(move |n, now| {
                if chat {
                    let text = format!("chat {}", wall_ns());
                    let _ = n.send_message(now, &peer, false, &text);
                }
                let budget = u64::from(n.net_crypto().send_budget(&peer)).min(l);
                let mut buf = [0u8; PACKET];
                buf[0] = 160;
                let mut sent = 0;
                for _ in 0..budget {
                    if n.send_custom(now, &peer, &buf).is_err() {
                        break;
                    }
                    sent += 1;
                }
                let st = n.net_crypto().session_state(&peer);
                let drained = st.as_ref().is_some_and(|s| s.send_queue == 0);
                (sent, drained, n.net_crypto().stats().retransmissions)
            })
            .await
            .expect("call");
        left -= sent;
        if left == 0 && drained {
            return retrans;
        }
        if left == 0 && all_sent.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5)
        {
            eprintln!("send queue did not drain within 5 s of the last packet");
            return retrans;
        }
        if sent == 0 {
            idle_spins += 1;
            if idle_spins > 4 {
                tokio::time::sleep(Duration::from_micros(200)).await;
            } else {
                tokio::task::yield_now().await;
            }
        } else {
            idle_spins = 0;
        }
    }
}

/// CPU seconds (user + system) this process used so far, from `/proc/self/stat`.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the ")"; 100 ticks/s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn report(mode: &str, shared: &Shared, total: u64, retrans: u64, cpu: f64) {
    let first = shared.first.lock().expect("lock").expect("no data");
    let last = shared.last.lock().expect("lock").expect("no data");
    let secs = last.duration_since(first).as_secs_f64().max(1e-9);
    let mib = total as f64 / (1024.0 * 1024.0);
    let mut chat = shared.chat.lock().expect("lock").clone();
    chat.sort_by(f64::total_cmp);
    let p = |q: f64| {
        if chat.is_empty() {
            f64::NAN
        } else {
            chat[((chat.len() - 1) as f64 * q) as usize]
        }
    };
    println!(
        "RESULT mode={mode} mib={mib:.0} secs={secs:.3} mib_per_s={:.1} cpu_s={cpu:.2} mib_per_cpu_s={:.1} chat_n={} chat_p50_ms={:.2} chat_p99_ms={:.2} chat_max_ms={:.2} retransmissions={retrans}",
        mib / secs,
        mib / cpu.max(1e-9),
        chat.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

async fn wait_bytes(shared: &Shared, total: u64, limit: Duration) {
    let t = Instant::now();
    while shared.bytes.load(Ordering::Relaxed) < total {
        assert!(t.elapsed() < limit, "transfer did not finish in time");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn main() {
    // `cargo test --benches` runs this without arguments: do nothing there (`cargo bench` passes
    // `--bench`, bench/throughput.sh a mode).
    if std::env::args().len() <= 1 {
        println!("throughput: pass a mode (both | send | recv) or run via cargo bench");
        return;
    }
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let (ka, kb) = (keys(0xA11CE), keys(0xB0B));
    let total = a.mib * 1024 * 1024 / PACKET as u64 * PACKET as u64;
    rt.block_on(async {
        match a.mode.as_str() {
            "both" => {
                let (sa, sb) = (Arc::new(Shared::default()), Arc::new(Shared::default()));
                let ha = start(&ka, a.bind, sa.clone()).await;
                let hb = start(&kb, a.bind, sb.clone()).await;
                befriend(&ha, &kb, hb.local_addr()).await;
                befriend(&hb, &ka, ha.local_addr()).await;
                wait_online(&sa, Duration::from_secs(20)).await;
                let cpu0 = cpu_secs();
                let retrans = send_all(&ha, kb.real.public, total, a.chat_ms).await;
                wait_bytes(&sb, total, a.time_limit).await;
                report("both", &sb, total, retrans, cpu_secs() - cpu0);
            }
            "send" => {
                let s = Arc::new(Shared::default());
                let h = start(&ka, a.bind, s.clone()).await;
                befriend(&h, &kb, a.peer.expect("--peer")).await;
                wait_online(&s, Duration::from_secs(30)).await;
                let cpu0 = cpu_secs();
                let retrans = send_all(&h, kb.real.public, total, a.chat_ms).await;
                println!(
                    "SENT retransmissions={retrans} sender_cpu_s={:.2}",
                    cpu_secs() - cpu0
                );
                // Let the last acknowledgements and the receiver's report settle.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            "recv" => {
                let s = Arc::new(Shared::default());
                let h = start(&kb, a.bind, s.clone()).await;
                befriend(&h, &ka, a.peer.expect("--peer")).await;
                wait_online(&s, Duration::from_secs(30)).await;
                let cpu0 = cpu_secs();
                wait_bytes(&s, total, a.time_limit).await;
                report("recv", &s, total, 0, cpu_secs() - cpu0);
                // Stay up a moment so the last acknowledgements reach the sender.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            m => panic!("unknown mode {m}"),
        }
    });
}
