//! The IP tunnel's inbound fast path (issue 7, "Speed"): packets from friends are checked in
//! the node task ([`crate::tunnel::TunnelShared::on_packet`]) and collected into a
//! [`PacketBatch`]; once per round of node events ([`ferry_net::EventHandler::on_flush`]) the
//! batch goes to a writer task that writes it to the TUN device. The node task thus makes no
//! TUN syscall, and the writer runs on another core while the node decrypts the next batch.
//!
//! Queue management: at most [`INBOUND_QUEUE_DEPTH`] batches wait for the writer; when it is
//! behind, a new batch is dropped whole (counted) instead of queueing, so a bulk flow cannot
//! build a queue of more than a few milliseconds inside ferry.

use std::sync::Arc;

use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, GROTable, VIRTIO_NET_HDR_LEN};

/// Batches waiting for the TUN writer before new ones are dropped: 4. Measured with
/// `bench/tunnel.sh` one hop on a quiet 2-core machine (2026-11-24): depth 2 gave 689 Mbit/s and
/// 2.6 ms ping under load, 4 gave 812 Mbit/s and 4.0 ms, 8 gave 945 Mbit/s and 5.6 ms (the exit
/// node task is CPU-bound, so a deeper queue trades latency for fewer drops).
pub const INBOUND_QUEUE_DEPTH: usize = 4;
/// Most packets in one batch: 256 (a batch is handed on early when it fills).
pub const INBOUND_BATCH_MAX: usize = 256;

/// IP packets, each in its own reused buffer after [`VIRTIO_NET_HDR_LEN`] bytes of headroom
/// (room for the virtio-net header that [`AsyncDevice::send_multiple`] writes when the device
/// has offloads; it coalesces consecutive TCP segments into one write, GRO).
#[derive(Debug, Default)]
pub struct PacketBatch {
    bufs: Vec<Vec<u8>>,
    len: usize,
    bytes: usize,
}

impl PacketBatch {
    /// Appends one packet.
    pub fn push(&mut self, pkt: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs
                .push(Vec::with_capacity(VIRTIO_NET_HDR_LEN + pkt.len().max(1500)));
        }
        if let Some(b) = self.bufs.get_mut(self.len) {
            b.clear();
            b.resize(VIRTIO_NET_HDR_LEN, 0);
            b.extend_from_slice(pkt);
            self.len += 1;
            self.bytes += pkt.len();
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of all packets held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.len = 0;
        self.bytes = 0;
    }
}

/// The node task's side of the inbound path: the batch being filled, the writer's queue and
/// the batches it returned for reuse.
#[derive(Debug)]
pub struct Inbound {
    batch: PacketBatch,
    tx: mpsc::Sender<PacketBatch>,
    back: mpsc::Receiver<PacketBatch>,
    task: tokio::task::JoinHandle<()>,
}

impl Inbound {
    /// Starts the writer task for `dev` (inside a tokio runtime).
    pub fn start(dev: Arc<AsyncDevice>) -> Self {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE_DEPTH);
        let (back_tx, back) = mpsc::channel(INBOUND_QUEUE_DEPTH + 2);
        let task = tokio::spawn(writer(dev, rx, back_tx));
        Self {
            batch: PacketBatch::default(),
            tx,
            back,
            task,
        }
    }

    /// Adds a checked packet. Returns the (packets, bytes) dropped because a full batch could
    /// not be handed on.
    pub fn push(&mut self, pkt: &[u8]) -> (u64, u64) {
        let dropped = if self.batch.len() >= INBOUND_BATCH_MAX {
            self.flush()
        } else {
            (0, 0)
        };
        self.batch.push(pkt);
        dropped
    }

    /// Hands the batch to the writer. Returns the (packets, bytes) dropped because the writer
    /// is [`INBOUND_QUEUE_DEPTH`] batches behind (or gone).
    pub fn flush(&mut self) -> (u64, u64) {
        if self.batch.is_empty() {
            return (0, 0);
        }
        let next = match self.back.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => PacketBatch::default(),
        };
        let full = std::mem::replace(&mut self.batch, next);
        match self.tx.try_send(full) {
            Ok(()) => (0, 0),
            Err(
                mpsc::error::TrySendError::Full(mut b) | mpsc::error::TrySendError::Closed(mut b),
            ) => {
                let dropped = (b.len() as u64, b.bytes() as u64);
                b.clear();
                self.batch = b;
                dropped
            }
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes each batch's packets to the TUN device in order (with offloads, consecutive TCP
/// segments of one flow coalesced into one write) and returns the batch.
async fn writer(
    dev: Arc<AsyncDevice>,
    mut rx: mpsc::Receiver<PacketBatch>,
    back: mpsc::Sender<PacketBatch>,
) {
    let mut gro = GROTable::new();
    while let Some(mut b) = rx.recv().await {
        let n = b.len;
        if let Some(bufs) = b.bufs.get_mut(..n)
            && let Err(e) = dev.send_multiple(&mut gro, bufs, VIRTIO_NET_HDR_LEN).await
        {
            tracing::debug!("tunnel write: {e}");
        }
        b.clear();
        let _ = back.try_send(b);
    }
}
