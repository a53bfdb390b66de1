//! TAP mode of the tunnel (issue 7 item 5, `ferry tunnel up --tap`): a TAP device (`tun-rs`
//! `Layer::L2`, no offloads, so reads and writes are plain Ethernet frames) whose frames go to
//! friends as net_crypto lossy packets with id [`TAP_PACKET_ID`] (224), forwarded by the
//! learning bridge [`ferry_tunnel::tap::TapBridge`]. Put the device into a Linux bridge with a
//! LAN port and two LANs are one Ethernet segment.
//!
//! - **TAP → friends**: a task reads frames (one awaited read, then non-blocking reads up to
//!   [`READ_BATCH`]), routes them under one lock (unicast to the friend that owns the destination
//!   MAC; broadcast, multicast and unknown destinations flooded to every friend known to run
//!   TAP) and hands them to the node task in one [`NodeHandle::call`] that sends each with
//!   [`ferry_proto::node::Node::send_custom`]. (The IP tunnel owns the node's single frame
//!   channel; TAP traffic is light, so this plain path is enough.)
//! - **friends → TAP**: the event handler passes id-224 lossy packets to
//!   [`TapDriver::on_packet`]: checked by the bridge (length, group source; the source MAC is
//!   learnt) and written to the device without blocking (a full queue drops, counted). Frames
//!   from friends are never sent on to other friends (split horizon).
//! - **Who runs TAP**: an empty TAP packet (`[0xE0]`, no frame) is a hello. The task sends one
//!   to every online friend when TAP comes up and every [`HELLO_INTERVAL`]; a node with TAP up
//!   answers a hello from a friend it did not know yet, so both sides learn each other at once.
//!   A friend is a flood target while it was heard (hello or frame) within [`PEER_TIMEOUT`] and
//!   is online; nodes without TAP ignore the packets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{ApiError, TapStatus};
use ferry_crypto::PublicKey;
use ferry_net::{FrameBatch, NodeHandle};
use ferry_proto::node::{Connection, Node};
use ferry_tunnel::tap::{Mac, TAP_MTU, TAP_PACKET_ID, TapBridge, TapRoute, decode_tap_frame};
use tun_rs::{AsyncDevice, Layer};

/// Default TAP device name.
pub const DEFAULT_TAP_DEVICE: &str = "ferrytap0";
/// Time between two hellos to every online friend: 5 s.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(5);
/// A friend not heard from (hello or frame) for this long is no flood target: 15 s.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// Most friends remembered as running TAP (remote input: capped, the longest silent evicted):
/// 1024.
pub const MAX_TAP_PEERS: usize = 1024;
/// Frames read before the batch goes to the node task: 32.
pub const READ_BATCH: usize = 32;
/// Consecutive failed TAP reads after which the reader gives up: 64.
const MAX_READ_ERRORS: u32 = 64;

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    tx_frames: u64,
    tx_bytes: u64,
    rx_frames: u64,
    rx_bytes: u64,
    drop_send: u64,
}

struct TapRunning {
    dev: Arc<AsyncDevice>,
    device: String,
    mac: Option<Mac>,
    bridge: TapBridge,
    peers: TapPeers,
    counters: Counters,
    task: tokio::task::JoinHandle<()>,
}

/// Friends known to run TAP and when each was last heard (hello or frame); at most
/// [`MAX_TAP_PEERS`], the longest silent evicted.
#[derive(Debug, Default)]
struct TapPeers(HashMap<PublicKey, Instant>);

impl TapPeers {
    /// Flood targets at `now`: friends heard within [`PEER_TIMEOUT`], in key order.
    fn live(&self, now: Instant) -> Vec<PublicKey> {
        let mut v: Vec<PublicKey> = self
            .0
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) < PEER_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable_by_key(|k| k.0);
        v
    }

    /// Notes that `from` runs TAP; `true` when it was not known (or had timed out), i.e. a
    /// hello from it deserves an answer.
    fn heard(&mut self, from: PublicKey, now: Instant) -> bool {
        let new = self
            .0
            .get(&from)
            .is_none_or(|t| now.saturating_duration_since(*t) >= PEER_TIMEOUT);
        if !self.0.contains_key(&from)
            && self.0.len() >= MAX_TAP_PEERS
            && let Some(old) = self.0.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.0.remove(&old);
        }
        self.0.insert(from, now);
        new
    }

    /// Removes and returns the friends silent for 4 × [`PEER_TIMEOUT`] at `now`.
    fn expire(&mut self, now: Instant) -> Vec<PublicKey> {
        let stale: Vec<PublicKey> = self
            .0
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) >= 4 * PEER_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            self.0.remove(k);
        }
        stale
    }

    fn remove(&mut self, k: &PublicKey) {
        self.0.remove(k);
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for TapRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapRunning")
            .field("device", &self.device)
            .field("macs", &self.bridge.len())
            .field("peers", &self.peers.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Drop for TapRunning {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// TAP mode's state, shared by the API backend, the reader task and the event handler
/// (a field of [`crate::tunnel::TunnelShared`]).
#[derive(Debug, Default)]
pub struct TapDriver {
    inner: Arc<Mutex<Option<TapRunning>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The TAP device name to use: `device` or [`DEFAULT_TAP_DEVICE`].
///
/// # Errors
/// 400 unless 1..=15 bytes of ASCII letters, digits, `-`, `_`, `.`.
pub fn check_name(device: Option<String>) -> Result<String, ApiError> {
    let device = device.unwrap_or_else(|| DEFAULT_TAP_DEVICE.to_string());
    if device.is_empty()
        || device.len() > crate::tunnel::MAX_DEVICE_NAME
        || !device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ApiError::bad_request(format!(
            "bad TAP device name {device:?}"
        )));
    }
    Ok(device)
}

impl TapDriver {
    /// Opens TAP device `device` (default [`DEFAULT_TAP_DEVICE`]; MTU [`TAP_MTU`], link up, no
    /// address) and starts the reader, which greets every online friend at once.
    ///
    /// # Errors
    /// 409 when TAP is up already, 400 for a bad name, 500 when the device cannot be created.
    pub async fn up(&self, node: &NodeHandle, device: Option<String>) -> Result<(), ApiError> {
        let device = check_name(device)?;
        if lock(&self.inner).is_some() {
            return Err(ApiError::conflict("TAP already up"));
        }
        let dev = tun_rs::DeviceBuilder::new()
            .name(device.clone())
            .layer(Layer::L2)
            .mtu(TAP_MTU as u16)
            .build_async()
            .map_err(|e| ApiError {
                status: 500,
                message: format!("creating TAP device {device}: {e}"),
            })?;
        let mac = dev.mac_address().ok();
        let dev = Arc::new(dev);
        let task = tokio::spawn(reader(
            Arc::clone(&dev),
            node.clone(),
            Arc::clone(&self.inner),
        ));
        let mut g = lock(&self.inner);
        if g.is_some() {
            task.abort();
            return Err(ApiError::conflict("TAP already up"));
        }
        *g = Some(TapRunning {
            dev,
            device: device.clone(),
            mac,
            bridge: TapBridge::new(),
            peers: TapPeers::default(),
            counters: Counters::default(),
            task,
        });
        tracing::info!(%device, mac = ?mac.as_ref().map(format_mac), "TAP up");
        Ok(())
    }

    /// Stops the reader and closes the device (the kernel removes it). `false` if TAP was down.
    pub fn down(&self) -> bool {
        let r = lock(&self.inner).take();
        if let Some(r) = &r {
            tracing::info!(device = %r.device, "TAP down");
        }
        r.is_some()
    }

    /// A TAP packet (`data`, id byte first) from friend `from`, in the node task: a hello
    /// (answered when `from` was not known to run TAP) or a frame, checked and written to the
    /// device without blocking. Ignored while TAP is down.
    pub fn on_packet(&self, node: &mut Node, now: Instant, from: PublicKey, data: &[u8]) {
        let mut g = lock(&self.inner);
        let Some(r) = g.as_mut() else { return };
        let Ok(frame) = decode_tap_frame(data) else {
            return;
        };
        let new = r.peers.heard(from, now);
        if frame.is_empty() {
            if new {
                let _ = node.send_custom(now, &from, &[TAP_PACKET_ID]);
            }
            return;
        }
        if r.bridge.check_inbound(now, from, frame).is_err() {
            return;
        }
        match r.dev.try_send(frame) {
            Ok(_) => {
                r.counters.rx_frames += 1;
                r.counters.rx_bytes += frame.len() as u64;
            }
            Err(e) => {
                tracing::debug!("TAP write: {e}");
                r.counters.drop_send += 1;
            }
        }
    }

    /// Friend `pk` came online: greet it (if TAP is up).
    pub fn peer_online(&self, node: &mut Node, now: Instant, pk: PublicKey) {
        if lock(&self.inner).is_some() {
            let _ = node.send_custom(now, &pk, &[TAP_PACKET_ID]);
        }
    }

    /// Friend `pk` went offline: no flood target, its MACs forgotten.
    pub fn peer_gone(&self, pk: &PublicKey) {
        if let Some(r) = lock(&self.inner).as_mut() {
            r.peers.remove(pk);
            r.bridge.forget(pk);
        }
    }

    /// The `tap` part of `ferry tunnel status`; `None` while TAP is down.
    pub fn status(&self) -> Option<TapStatus> {
        let g = lock(&self.inner);
        let r = g.as_ref()?;
        let c = r.counters;
        let d = r.bridge.dropped;
        // d: bad length, group source, not TAP, no route.
        let dropped = d.iter().sum::<u64>() + c.drop_send;
        let now = Instant::now();
        Some(TapStatus {
            device: r.device.clone(),
            mtu: TAP_MTU as u32,
            mac: r.mac.as_ref().map(format_mac).unwrap_or_default(),
            macs: r.bridge.len() as u64,
            macs_evicted: r.bridge.evicted,
            peers: r.peers.live(now).iter().map(PublicKey::to_hex).collect(),
            tx_frames: c.tx_frames,
            tx_bytes: c.tx_bytes,
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            dropped,
            dropped_bad_length: d[0],
            dropped_group_source: d[1],
            dropped_no_route: d[3],
            dropped_send: c.drop_send,
        })
    }
}

/// Routes one frame read from the device into `batch`.
fn route(r: &mut TapRunning, now: Instant, peers: &[PublicKey], frame: &[u8], b: &mut FrameBatch) {
    let mut push = |k: PublicKey, c: &mut Counters| {
        b.push(k, TAP_PACKET_ID, frame);
        c.tx_frames += 1;
        c.tx_bytes += frame.len() as u64;
    };
    match r.bridge.route_outbound(now, frame, peers) {
        Ok(TapRoute::One(k)) => push(k, &mut r.counters),
        Ok(TapRoute::Flood(ks)) => {
            for k in ks {
                push(k, &mut r.counters);
            }
        }
        Err(_) => {} // counted by the bridge
    }
}

/// Sends `batch` in the node task; refused frames (friend offline) are counted as dropped.
async fn send(
    node: &NodeHandle,
    inner: &Mutex<Option<TapRunning>>,
    batch: FrameBatch,
) -> Option<FrameBatch> {
    let mut b = node
        .call(move |n, now| {
            let (mut failed, mut failed_bytes) = (0u32, 0u64);
            for (k, f) in batch.iter() {
                // Hellos (`[0xE0]` alone) are not counted as frames.
                if n.send_custom(now, k, f).is_err() && f.len() > 1 {
                    failed += 1;
                    failed_bytes += f.len().saturating_sub(1) as u64;
                }
            }
            let mut batch = batch;
            batch.failed = failed;
            batch.failed_bytes = failed_bytes;
            batch
        })
        .await
        .ok()?;
    if let Some(r) = lock(inner).as_mut() {
        let c = &mut r.counters;
        c.tx_frames = c.tx_frames.saturating_sub(u64::from(b.failed));
        c.tx_bytes = c.tx_bytes.saturating_sub(b.failed_bytes);
        c.drop_send += u64::from(b.failed);
    }
    b.clear();
    Some(b)
}

/// TAP → friends pump, and the periodic hello; ends when the device fails or the node stops.
async fn reader(dev: Arc<AsyncDevice>, node: NodeHandle, inner: Arc<Mutex<Option<TapRunning>>>) {
    // Room for any frame the device hands us (longer ones are dropped by the bridge).
    let mut buf = vec![0u8; 65536];
    let mut hello = tokio::time::interval(HELLO_INTERVAL);
    hello.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = FrameBatch::default();
    let mut errors = 0u32;
    loop {
        tokio::select! {
            r = dev.recv(&mut buf) => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        errors += 1;
                        if errors >= MAX_READ_ERRORS {
                            tracing::warn!("TAP read: {e}");
                            return;
                        }
                        continue;
                    }
                };
                errors = 0;
                let now = Instant::now();
                let mut g = lock(&inner);
                let Some(r) = g.as_mut() else { return };
                let peers = r.peers.live(now);
                route(r, now, &peers, buf.get(..n).unwrap_or_default(), &mut batch);
                for _ in 1..READ_BATCH {
                    match dev.try_recv(&mut buf) {
                        Ok(n) => route(r, now, &peers, buf.get(..n).unwrap_or_default(), &mut batch),
                        Err(_) => break,
                    }
                }
            }
            _ = hello.tick() => {
                let Ok(friends) = node.call(|n, _| n.friends()).await else { return };
                let now = Instant::now();
                if let Some(r) = lock(&inner).as_mut() {
                    // Forget long-silent peers (and their MACs).
                    for k in r.peers.expire(now) {
                        r.bridge.forget(&k);
                    }
                }
                for f in friends.iter().filter(|f| f.connection != Connection::None) {
                    batch.push(f.public_key, TAP_PACKET_ID, &[]);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let full = std::mem::take(&mut batch);
        match send(&node, &inner, full).await {
            Some(b) => batch = b,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_peers_time_out_answer_once_and_are_capped() {
        let t0 = Instant::now();
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut p = TapPeers::default();
        // The first hello deserves an answer, the next one not (no ping-pong).
        assert!(p.heard(b, t0));
        assert!(!p.heard(b, t0 + Duration::from_secs(1)));
        assert!(p.heard(a, t0));
        assert_eq!(p.live(t0), vec![a, b]);
        // Silent for PEER_TIMEOUT: no flood target, and a new hello is answered again.
        let late = t0 + Duration::from_secs(1) + PEER_TIMEOUT;
        assert_eq!(p.live(late), Vec::<PublicKey>::new());
        assert!(p.heard(b, late));
        assert_eq!(p.live(late), vec![b]);
        // Expiry after 4 × PEER_TIMEOUT of silence returns the forgotten.
        assert_eq!(p.expire(t0 + 4 * PEER_TIMEOUT), vec![a]);
        assert_eq!(p.len(), 1);
        p.remove(&b);
        assert_eq!(p.len(), 0);
        // Capped: the longest silent is evicted.
        for i in 0..(MAX_TAP_PEERS as u32 + 5) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            p.heard(PublicKey(k), t0 + Duration::from_millis(u64::from(i)));
        }
        assert_eq!(p.len(), MAX_TAP_PEERS);
        assert!(!p.0.contains_key(&PublicKey([0; 32])));
    }
}
