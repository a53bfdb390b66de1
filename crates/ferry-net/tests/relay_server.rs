//! The TCP relay server driver over real loopback TCP: a bandwidth cap measurement and a load
//! test (many clients and linked pairs). Figures are printed (run with `--nocapture`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PublicKey};
use ferry_net::spawn_relay_server;
use ferry_relay::RelayConfig;
use ferry_wire::relay::{
    ClientHandshake, FrameReader, HandshakePlain, RelayPacket, RelaySession, SERVER_HANDSHAKE_SIZE,
    ServerHandshake,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

struct Rx {
    read: OwnedReadHalf,
    reader: FrameReader,
    session: RelaySession,
}

struct Tx {
    write: OwnedWriteHalf,
    session: RelaySession,
}

impl Rx {
    async fn recv(&mut self) -> Option<RelayPacket> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(body) = self.reader.next_frame().expect("frame") {
                let plain = self.session.open(&body).expect("open");
                return Some(RelayPacket::decode(&plain).expect("decode"));
            }
            let n = self.read.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            self.reader.push(&buf[..n]);
        }
    }
}

impl Tx {
    async fn send(&mut self, p: &RelayPacket) {
        let f = self.session.seal_packet(p).expect("seal");
        self.write.write_all(&f).await.expect("write");
    }
}

async fn connect(addr: SocketAddr, server: PublicKey, seed: u64) -> (PublicKey, Tx, Rx) {
    let mut rng = FerryRng::from_u64(seed);
    let keys = KeyPair::generate(&mut rng);
    let temp = KeyPair::generate(&mut rng);
    let base = Nonce::random(&mut rng);
    let hs = ClientHandshake::seal(
        &keys.secret,
        &server,
        Nonce::random(&mut rng),
        &HandshakePlain {
            temp_pk: temp.public,
            base_nonce: base,
        },
    )
    .expect("seal");
    let s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let (mut read, mut write) = s.into_split();
    write.write_all(&hs.encode()).await.expect("write");
    let mut reply = [0u8; SERVER_HANDSHAKE_SIZE];
    read.read_exact(&mut reply).await.expect("server handshake");
    let plain = ServerHandshake::decode(&reply)
        .expect("decode")
        .open(&keys.secret, &server)
        .expect("open");
    let mk = || RelaySession::new(&temp.secret, &plain.temp_pk, base, plain.base_nonce);
    let mut tx = Tx {
        write,
        session: mk(),
    };
    let rx = Rx {
        read,
        reader: FrameReader::new(),
        session: mk(),
    };
    // Each half keeps one direction's nonce: the writer's receive nonce and the reader's send
    // nonce are never used.
    tx.send(&RelayPacket::Ping { ping_id: [1; 8] }).await;
    (keys.public, tx, rx)
}

async fn expect(rx: &mut Rx, pred: impl Fn(&RelayPacket) -> bool) -> RelayPacket {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let p = rx.recv().await.expect("stream open");
            if pred(&p) {
                return p;
            }
        }
    })
    .await
    .expect("packet in time")
}

async fn link(a: &mut (PublicKey, Tx, Rx), b: &mut (PublicKey, Tx, Rx)) {
    a.1.send(&RelayPacket::RoutingRequest { pk: b.0 }).await;
    b.1.send(&RelayPacket::RoutingRequest { pk: a.0 }).await;
    expect(&mut a.2, |p| {
        matches!(p, RelayPacket::ConnectNotification { .. })
    })
    .await;
    expect(&mut b.2, |p| {
        matches!(p, RelayPacket::ConnectNotification { .. })
    })
    .await;
}

async fn server(config: RelayConfig) -> (ferry_net::RelayServerHandle, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut rng = FerryRng::from_u64(99);
    let keys = KeyPair::generate(&mut rng);
    let (h, _) = spawn_relay_server(vec![l], keys.secret, config, None, None).expect("spawn");
    (h, addr)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A sender pushing as fast as TCP allows gets the configured rate (+ the burst) through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_bandwidth_is_capped() {
    let (h, addr) = server(RelayConfig::default()).await;
    let mut a = connect(addr, h.public_key(), 1).await;
    let mut b = connect(addr, h.public_key(), 2).await;
    link(&mut a, &mut b).await;
    let secs = 4.0;
    let (_, mut atx, _arx) = a;
    let sender = tokio::spawn(async move {
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            atx.send(&RelayPacket::Data {
                conn_id: 16,
                data: vec![0x1b; 1373],
            })
            .await;
            tokio::task::yield_now().await;
        }
    });
    let start = Instant::now();
    let mut got = 0usize;
    let mut brx = b.2;
    while start.elapsed().as_secs_f64() < secs + 0.5 {
        match tokio::time::timeout(Duration::from_millis(200), brx.recv()).await {
            Ok(Some(RelayPacket::Data { data, .. })) => got += data.len(),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    sender.await.expect("sender");
    let s = h.stats().await.expect("stats");
    #[allow(clippy::cast_precision_loss)]
    let rate = (got as f64 - 16.0 * 1024.0) / secs / 1024.0;
    println!(
        "link cap: {got} bytes in {secs} s = {rate:.1} KiB/s beyond the 16 KiB burst (limit 32 KiB/s); {} bytes dropped by the limit",
        s.bytes_rate_limited
    );
    assert!(rate > 26.0 && rate < 36.0, "{rate} KiB/s");
    assert!(s.bytes_rate_limited > 0);
}

/// Issue 5's relay load test: 200 clients in 100 linked pairs, each pair sending a 200-byte
/// message every 50 ms (4 KB/s, under the link cap) for 60 s (`FERRY_RELAY_LOAD_SECS` overrides):
/// no pair loses or reorders a message and the process's RSS stays bounded while it runs (sampled
/// every second; growth after setup under 64 MiB). Memory per client is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_one_hundred_pairs() {
    let (h, addr) = server(RelayConfig::default()).await;
    let before = rss_kib();
    let mut pairs = Vec::new();
    for i in 0..100u64 {
        let mut a = connect(addr, h.public_key(), 1000 + 2 * i).await;
        let mut b = connect(addr, h.public_key(), 1001 + 2 * i).await;
        link(&mut a, &mut b).await;
        pairs.push((a, b));
    }
    let s = h.stats().await.expect("stats");
    assert_eq!((s.clients, s.links), (200, 100));
    let after = rss_kib();
    println!(
        "200 clients / 100 links: RSS {before} -> {after} KiB (test clients included): ≤ {:.1} KiB per client",
        (after.saturating_sub(before)) as f64 / 200.0
    );
    let secs: u64 = std::env::var("FERRY_RELAY_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let rounds = (secs * 20) as usize;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(after));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (a, b) in pairs {
        tasks.push(tokio::spawn(async move {
            // Both clients answer the relay's pings (every 30 s, 10 s to answer) as real
            // clients do; a's reader only does that, b's also counts the messages.
            let (_, atx, mut arx) = a;
            let (_, mut btx, mut brx) = b;
            let atx = std::sync::Arc::new(tokio::sync::Mutex::new(atx));
            let pong_a = {
                let atx = atx.clone();
                tokio::spawn(async move {
                    while let Some(p) = arx.recv().await {
                        if let RelayPacket::Ping { ping_id } = p {
                            atx.lock().await.send(&RelayPacket::Pong { ping_id }).await;
                        }
                    }
                })
            };
            let recv = tokio::spawn(async move {
                let mut n = 0usize;
                while n < rounds {
                    match tokio::time::timeout(Duration::from_secs(10), brx.recv()).await {
                        Ok(Some(RelayPacket::Data { data, .. })) => {
                            assert_eq!(data, vec![n as u8; 200]);
                            n += 1;
                        }
                        Ok(Some(RelayPacket::Ping { ping_id })) => {
                            btx.send(&RelayPacket::Pong { ping_id }).await;
                        }
                        Ok(Some(_)) => {}
                        _ => break,
                    }
                }
                n
            });
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for r in 0..rounds {
                tick.tick().await;
                atx.lock()
                    .await
                    .send(&RelayPacket::Data {
                        conn_id: 16,
                        data: vec![r as u8; 200],
                    })
                    .await;
            }
            let got = recv.await.expect("recv");
            pong_a.abort();
            got
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("pair"), rounds, "a pair lost messages");
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{rounds} messages per pair over {:.1} s; RSS after setup {after} KiB, peak {peak} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak.saturating_sub(after) < 64 * 1024,
        "RSS grew from {after} to {peak} KiB under load"
    );
    let s = h.stats().await.expect("stats");
    assert_eq!(s.packets_relayed, 100 * rounds as u64);
    assert_eq!(s.bytes_rate_limited, 0);
    println!(
        "relayed {} packets, {} bytes",
        s.packets_relayed, s.bytes_relayed
    );
}
