//! `ferry devnet`: N ferry nodes on loopback in this process, bootstrapped from each other, with
//! every node looking up every other node's DHT key; prints a live summary once a second.
//!
//! Only loopback is used: nodes bind `127.0.0.1`, LAN discovery is off and the public bootstrap
//! list is not used. Later layers (friends, files, tunnel) extend this demo.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_crypto::PublicKey;
use ferry_net::{NodeHandle, NodeOptions, PortSpec, bind_udp, spawn_node};
use ferry_proto::dht::DhtConfig;
use ferry_proto::node::{Connection, FileCommand, FileEvent, FileNumber, Node, NodeEvent};
use ferry_wire::messenger::FILE_KIND_DATA;
use serde::Serialize;

/// Options of `ferry devnet`.
#[derive(Clone, Debug)]
pub struct DevnetOptions {
    /// Number of nodes (≥ 2).
    pub nodes: usize,
    /// Stop after this many seconds; `None` = run until Ctrl-C.
    pub seconds: Option<u64>,
    /// Stop as soon as every lookup has resolved.
    pub until_resolved: bool,
}

/// Final figures of a devnet run (`--json` prints this).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DevnetReport {
    /// Nodes run.
    pub nodes: usize,
    /// Lookups started: every node looks up every other node (n × (n − 1)).
    pub lookups: usize,
    /// Lookups that found the address.
    pub lookups_resolved: usize,
    /// Milliseconds until every lookup had resolved, if they all did.
    pub all_resolved_ms: Option<u64>,
    /// Fewest good close-list nodes of any node at the end.
    pub close_nodes_min: usize,
    /// Most good close-list nodes of any node at the end.
    pub close_nodes_max: usize,
    /// Wall-clock seconds the devnet ran.
    pub seconds: f64,
    /// Milliseconds from start until nodes 0 and 1 ("alice" and "bob") were friends online.
    pub friends_online_ms: Option<u64>,
    /// Chat messages delivered between alice and bob (both directions).
    pub messages_delivered: usize,
    /// Bytes of alice's file bob received (the devnet sends [`DEVNET_FILE_SIZE`] bytes).
    pub file_bytes: u64,
    /// Milliseconds the file took from offer to bob's last byte.
    pub file_ms: Option<u64>,
    /// Bob's BLAKE3 of what he received equals alice's.
    pub file_hash_ok: bool,
    /// alice's net_crypto: lossless packets sent again on request, of datagrams sent.
    pub alice_retransmissions: u64,
    /// alice's net_crypto datagrams sent.
    pub alice_packets_sent: u64,
}

/// Size of the file alice sends bob on the devnet, bytes.
pub const DEVNET_FILE_SIZE: usize = 16 << 20;

fn devnet_file() -> Vec<u8> {
    (0..DEVNET_FILE_SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// The chat pair of the devnet: node 0 ("alice") befriends node 1 ("bob"), who accepts and
/// echoes every message; every event becomes a line of the live output.
#[derive(Debug)]
struct DevnetChat {
    name: &'static str,
    peer: &'static str,
    echo: bool,
    tx: tokio::sync::mpsc::Sender<ChatLine>,
    /// alice: the file she sends; bob: the hash of what he received so far.
    file: Option<std::sync::Arc<Vec<u8>>>,
    hasher: blake3::Hasher,
}

#[derive(Debug)]
enum ChatLine {
    Text(String),
    Online,
    Delivered,
    FileProgress(u64),
    FileDone(String),
}

impl ferry_net::EventHandler for DevnetChat {
    fn on_event(&mut self, node: &mut Node, now: Instant, event: NodeEvent) {
        let say = |tx: &tokio::sync::mpsc::Sender<ChatLine>, l: ChatLine| {
            let _ = tx.try_send(l);
        };
        match event {
            NodeEvent::FriendRequest {
                public_key,
                message,
            } => {
                say(
                    &self.tx,
                    ChatLine::Text(format!(
                        "{} got a friend request from {}: {:?}; accepting",
                        self.name,
                        self.peer,
                        String::from_utf8_lossy(&message)
                    )),
                );
                let _ = node.add_friend_norequest(now, public_key);
            }
            NodeEvent::FriendConnection { connection, .. } => {
                say(
                    &self.tx,
                    ChatLine::Text(format!(
                        "{} sees {} {}",
                        self.name,
                        self.peer,
                        if connection == Connection::None {
                            "offline".to_string()
                        } else {
                            format!("online ({})", connection.as_str())
                        }
                    )),
                );
                if connection != Connection::None && !self.echo {
                    say(&self.tx, ChatLine::Online);
                }
            }
            NodeEvent::Message {
                public_key, text, ..
            } => {
                let text = String::from_utf8_lossy(&text).into_owned();
                say(
                    &self.tx,
                    ChatLine::Text(format!("{} <- {}: {text}", self.name, self.peer)),
                );
                say(&self.tx, ChatLine::Delivered);
                if self.echo {
                    let _ = node.send_message(now, &public_key, false, &format!("echo: {text}"));
                }
            }
            NodeEvent::File(e) => self.on_file(node, now, e),
            _ => {}
        }
    }
}

impl DevnetChat {
    fn on_file(&mut self, node: &mut Node, now: Instant, e: FileEvent) {
        match e {
            FileEvent::Recv {
                friend,
                number,
                size,
                name,
                ..
            } => {
                let _ = self.tx.try_send(ChatLine::Text(format!(
                    "{} is offered {:?} ({size} bytes) by {}; accepting",
                    self.name,
                    String::from_utf8_lossy(&name),
                    self.peer
                )));
                let _ = node.file_control(
                    now,
                    &friend,
                    FileNumber::incoming(number),
                    FileCommand::Accept,
                );
            }
            FileEvent::ChunkRequest {
                friend,
                number,
                position,
                length,
            } if length > 0 => {
                if let Some(d) = &self.file {
                    let start = position as usize;
                    if let Some(chunk) = d.get(start..start + usize::from(length)) {
                        let _ = node.file_send_chunk(now, &friend, number, position, chunk);
                    }
                }
            }
            FileEvent::Chunk { position, data, .. } => {
                if data.is_empty() {
                    let h = std::mem::take(&mut self.hasher)
                        .finalize()
                        .to_hex()
                        .to_string();
                    let _ = self.tx.try_send(ChatLine::FileDone(h));
                } else {
                    self.hasher.update(&data);
                    let end = position + data.len() as u64;
                    if end % (1 << 20) < data.len() as u64 {
                        let _ = self.tx.try_send(ChatLine::FileProgress(end));
                    }
                }
            }
            _ => {}
        }
    }
}

/// One line of the live summary.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Time since start.
    pub elapsed: Duration,
    /// Good close nodes per node.
    pub close: Vec<usize>,
    /// Lookups resolved so far.
    pub resolved: usize,
    /// Lookups started.
    pub lookups: usize,
    /// Chat lines (friend request, online, messages) since the previous snapshot.
    pub chat: Vec<String>,
}

impl Snapshot {
    /// The summary line: `t=3.0s nodes=8 close min/avg/max=3/5.1/7 lookups 40/56`.
    pub fn line(&self) -> String {
        let n = self.close.len().max(1);
        let min = self.close.iter().min().copied().unwrap_or(0);
        let max = self.close.iter().max().copied().unwrap_or(0);
        let avg = self.close.iter().sum::<usize>() as f64 / n as f64;
        format!(
            "t={:>5.1}s  nodes={}  close list min/avg/max={}/{:.1}/{}  lookups resolved {}/{}",
            self.elapsed.as_secs_f64(),
            self.close.len(),
            min,
            avg,
            max,
            self.resolved,
            self.lookups
        )
    }
}

/// Runs the devnet, calling `on_tick` with a snapshot once a second.
///
/// # Errors
/// Socket or task failures.
pub async fn run_devnet(
    opts: DevnetOptions,
    mut on_tick: impl FnMut(&Snapshot),
) -> anyhow::Result<DevnetReport> {
    anyhow::ensure!(opts.nodes >= 2, "a devnet needs at least 2 nodes");
    anyhow::ensure!(
        opts.nodes <= 1000,
        "at most 1000 devnet nodes in one process"
    );
    let started = Instant::now();
    let mut nodes: Vec<(NodeHandle, SocketAddr, PublicKey)> = Vec::with_capacity(opts.nodes);
    let mut joins = Vec::new();
    let (chat_tx, mut chat_rx) = tokio::sync::mpsc::channel::<ChatLine>(1024);
    let mut bob_id = None;
    let file = std::sync::Arc::new(devnet_file());
    for i in 0..opts.nodes {
        let socket = bind_udp(IpAddr::V4(Ipv4Addr::LOCALHOST), PortSpec::Exact(0))
            .context("binding a loopback port")?;
        let dht = DhtConfig {
            lan_discovery: false,
            ..DhtConfig::default()
        };
        let options = NodeOptions {
            dht,
            ..NodeOptions::default()
        };
        let (handle, join) = if i < 2 {
            let handler = DevnetChat {
                name: ["alice", "bob"][i],
                peer: ["bob", "alice"][i],
                echo: i == 1,
                tx: chat_tx.clone(),
                file: (i == 0).then(|| std::sync::Arc::clone(&file)),
                hasher: blake3::Hasher::new(),
            };
            spawn_node(socket, options, handler)?
        } else {
            spawn_node(socket, options, ferry_net::DhtEvents(None))?
        };
        if i == 1 {
            bob_id = Some(handle.call(|n, _| n.tox_id()).await?);
        }
        let status = handle.status().await?;
        nodes.push((handle, status.local_addr, status.dht_public_key));
        joins.push(join);
    }
    // Node 0 seeds everybody; each node also knows its predecessor, so the seed is no bottleneck.
    for i in 1..nodes.len() {
        let (seed_addr, seed_pk) = (nodes[0].1, nodes[0].2);
        nodes[i].0.bootstrap(seed_addr, seed_pk).await?;
        if i > 1 {
            let (prev_addr, prev_pk) = (nodes[i - 1].1, nodes[i - 1].2);
            nodes[i].0.bootstrap(prev_addr, prev_pk).await?;
        }
    }
    for (i, (handle, _, _)) in nodes.iter().enumerate() {
        for (j, (_, _, pk)) in nodes.iter().enumerate() {
            if i != j {
                handle.add_search(*pk).await?.context("adding a search")?;
            }
        }
    }
    if let Some(bob) = bob_id {
        nodes[0]
            .0
            .call(move |n, now| n.add_friend(now, &bob, b"hi bob, this is alice on the devnet"))
            .await?
            .context("alice adds bob")?;
    }
    let mut online_at = None;
    let file_hash = blake3::hash(&file).to_hex().to_string();
    let mut file_started: Option<Instant> = None;
    let mut file_bytes = 0u64;
    let mut file_ms = None;
    let mut file_hash_ok = false;
    let mut delivered = 0usize;
    let mut sent = 0usize;
    let lookups = opts.nodes * (opts.nodes - 1);
    let mut all_resolved = None;
    let deadline = opts.seconds.map(|s| started + Duration::from_secs(s));
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut last;
    loop {
        let mut close = Vec::with_capacity(nodes.len());
        let mut resolved = 0;
        for (handle, _, own) in &nodes {
            close.push(handle.status().await?.close_nodes);
            for (_, _, pk) in &nodes {
                if pk != own
                    && handle
                        .search_status(*pk)
                        .await?
                        .and_then(|s| s.found)
                        .is_some()
                {
                    resolved += 1;
                }
            }
        }
        if resolved == lookups && all_resolved.is_none() {
            all_resolved = Some(started.elapsed());
        }
        let mut chat = Vec::new();
        while let Ok(line) = chat_rx.try_recv() {
            match line {
                ChatLine::Text(t) => chat.push(t),
                ChatLine::Online => {
                    online_at.get_or_insert(started.elapsed());
                }
                ChatLine::Delivered => delivered += 1,
                ChatLine::FileProgress(b) => file_bytes = file_bytes.max(b),
                ChatLine::FileDone(h) => {
                    file_bytes = DEVNET_FILE_SIZE as u64;
                    file_hash_ok = h == file_hash;
                    let el = file_started.map_or(Duration::ZERO, |t| t.elapsed());
                    file_ms = Some(el.as_millis() as u64);
                    chat.push(format!(
                        "bob received alice's file: {} MiB in {:.2} s ({:.1} MiB/s), BLAKE3 {} {}",
                        DEVNET_FILE_SIZE >> 20,
                        el.as_secs_f64(),
                        DEVNET_FILE_SIZE as f64 / 1048576.0 / el.as_secs_f64().max(1e-6),
                        &h[..16],
                        if file_hash_ok { "matches" } else { "MISMATCH" }
                    ));
                }
            }
        }
        if let Some(t) = file_started
            && file_ms.is_none()
        {
            let el = t.elapsed().as_secs_f64().max(1e-6);
            chat.push(format!(
                "alice -> bob: devnet.bin {:.1}/{} MiB ({:.1} MiB/s)",
                file_bytes as f64 / 1048576.0,
                DEVNET_FILE_SIZE >> 20,
                file_bytes as f64 / 1048576.0 / el
            ));
        }
        if delivered >= 2 && file_started.is_none() {
            let bob_pk = nodes[1].0.call(|n, _| n.tox_id().public_key).await?;
            let size = DEVNET_FILE_SIZE as u64;
            let r = nodes[0]
                .0
                .call(move |n, now| {
                    n.file_send(now, &bob_pk, FILE_KIND_DATA, size, [7; 32], b"devnet.bin")
                })
                .await?;
            if r.is_ok() {
                file_started = Some(Instant::now());
                chat.push(format!(
                    "alice offers bob devnet.bin ({} MiB)",
                    DEVNET_FILE_SIZE >> 20
                ));
            }
        }
        if online_at.is_some() && sent < 1000 {
            sent += 1;
            let text = format!("hello #{sent}");
            let alice = &nodes[0].0;
            let bob_pk = nodes[1].0.call(|n, _| n.tox_id().public_key).await?;
            alice
                .call(move |n, now| n.send_message(now, &bob_pk, false, &text).ok())
                .await?;
        }
        last = Snapshot {
            elapsed: started.elapsed(),
            close,
            resolved,
            lookups,
            chat,
        };
        on_tick(&last);
        if opts.until_resolved && all_resolved.is_some() && delivered >= 2 && file_ms.is_some() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = &mut ctrl_c => break,
        }
    }
    let alice_stats = nodes[0].0.call(|n, _| n.net_crypto().stats()).await?;
    for (handle, _, _) in &nodes {
        handle.shutdown().await;
    }
    for j in joins {
        let _ = j.await;
    }
    Ok(DevnetReport {
        nodes: opts.nodes,
        lookups,
        lookups_resolved: last.resolved,
        all_resolved_ms: all_resolved.map(|d| d.as_millis() as u64),
        close_nodes_min: last.close.iter().min().copied().unwrap_or(0),
        close_nodes_max: last.close.iter().max().copied().unwrap_or(0),
        seconds: started.elapsed().as_secs_f64(),
        friends_online_ms: online_at.map(|d| d.as_millis() as u64),
        messages_delivered: delivered,
        file_bytes,
        file_ms,
        file_hash_ok,
        alice_retransmissions: alice_stats.retransmissions,
        alice_packets_sent: alice_stats.tx_packets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_nodes_resolve_every_lookup() {
        let opts = DevnetOptions {
            nodes: 8,
            seconds: Some(60),
            until_resolved: true,
        };
        let report = run_devnet(opts, |_| {}).await.expect("devnet");
        assert_eq!(report.lookups, 56);
        assert_eq!(report.lookups_resolved, 56, "{report:?}");
        assert!(report.all_resolved_ms.is_some());
        assert!(report.close_nodes_min >= 1);
        assert!(report.friends_online_ms.is_some(), "{report:?}");
        assert!(report.messages_delivered >= 2, "{report:?}");
        assert!(report.file_hash_ok, "{report:?}");
        assert_eq!(report.file_bytes, DEVNET_FILE_SIZE as u64);
    }
}
