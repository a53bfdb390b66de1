//! `ferry tunnel up|down|status`: the IP tunnel's driver (issue 7, first slice). Owns a TUN
//! device (`tun-rs`) carrying our mesh address ([`ferry_tunnel::mesh_address`]) with the mesh
//! prefix route (`fd54:6f78::/32` on the device), and pumps packets between it and the node:
//!
//! - **TUN → friend**: a task reads one packet at a time, asks the [`MeshRouter`] which friend
//!   owns the destination mesh address, and hands `[TUNNEL_PACKET_ID][packet]` to
//!   [`ferry_proto::node::Node::send_custom`] (a net_crypto lossy packet; the frame buffer goes
//!   into the node task and comes back, so no allocation per packet).
//! - **friend → TUN**: the daemon's event handler ([`crate::chat::ChatHandler`]) passes lossy
//!   packets with id [`ferry_tunnel::TUNNEL_PACKET_ID`] to [`TunnelShared::on_packet`], which writes them to
//!   the TUN device only if their source address is the sending friend's mesh address and the
//!   destination ours (non-blocking write; a full device queue drops and counts).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{ApiError, TunnelPeer, TunnelStatus};
use ferry_crypto::PublicKey;
use ferry_net::{FrameBatch, NodeHandle};
use ferry_tunnel::{
    DropReason, MESH_PREFIX_LEN, MeshRouter, TUNNEL_MTU, TUNNEL_PACKET_ID, TunnelCounters,
    decode_frame, mesh_address,
};
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::tunnel_io::Inbound;

/// Default TUN device name.
pub const DEFAULT_DEVICE: &str = "ferry0";
/// Longest TUN device name, bytes (Linux `IFNAMSIZ` − 1).
pub const MAX_DEVICE_NAME: usize = 15;
/// Least time between two refreshes of the route table from the friend list after a miss.
pub const ROUTE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

struct Running {
    /// The device (the reader and the inbound writer hold their own handles).
    #[allow(dead_code)]
    dev: Arc<AsyncDevice>,
    device: String,
    router: MeshRouter,
    counters: TunnelCounters,
    task: tokio::task::JoinHandle<()>,
    /// Exit node / exit client role ([`crate::exit`]).
    exit: crate::exit::ExitHook,
    /// Friend → TUN batches and their writer task ([`crate::tunnel_io`]).
    inbound: Inbound,
    /// Paid forwarding ([`crate::market`]; off unless `ferry up --market`).
    market: crate::market::Market,
}

impl Running {
    /// The friend a TUN packet goes to: the exit role first, then the mesh router; `true` with
    /// it when the exit role routed it (exit traffic, metered by the market).
    fn route_outbound(&mut self, pkt: &[u8]) -> Result<(PublicKey, bool), DropReason> {
        match crate::exit::route_outbound(&mut self.exit, pkt) {
            Some(r) => r.map(|k| (k, true)),
            None => self.router.route_outbound(pkt).map(|k| (k, false)),
        }
    }

    /// Exit traffic going straight to `peer` (not into a circuit, whose cells the circuit
    /// driver meters per hop), for the market ([`crate::market`]): an exit client meters what
    /// it sends to its paid exit; an exit meters the reply it sends back to its client and says
    /// whether it may go (`false`: the market gated it).
    fn meter_exit_route(&self, peer: &PublicKey, pkt: &[u8]) -> bool {
        match self.exit {
            crate::exit::ExitHook::Client { .. } => {
                self.market.client_sent(peer, pkt);
                true
            }
            crate::exit::ExitHook::Exit(_) => self.market.server_reply(peer, pkt),
            crate::exit::ExitHook::None => true,
        }
    }

    /// Whether a packet from friend `from` may be written to the TUN device: the exit role
    /// first, then the mesh router.
    ///
    /// `paid`: `from` is a friend's session, so an exit meters the packet and drops it if the
    /// market gates it ([`crate::market`]); packets from circuits (pseudonymous clients) are
    /// not: their cells were metered per hop by the circuit driver.
    fn check_inbound(
        &mut self,
        from: &PublicKey,
        pkt: &[u8],
        paid: bool,
    ) -> Result<(), DropReason> {
        match crate::exit::check_inbound(&mut self.exit, &self.router, from, pkt) {
            // An exit meters what it forwards for clients and drops what the market gates.
            Some(Ok(())) if paid && matches!(self.exit, crate::exit::ExitHook::Exit(_)) => {
                if self.market.server_forward(from, pkt) {
                    Ok(())
                } else {
                    // Counted as "not for us" here (not `NoRoute`, which `on_packet` retries
                    // after a route refresh, metering twice); the market counts it as gated.
                    Err(DropReason::NotForUs)
                }
            }
            // An exit client meters the replies its paid exit sends back.
            Some(Ok(())) if paid && matches!(self.exit, crate::exit::ExitHook::Client { .. }) => {
                self.market.client_received(from, pkt);
                Ok(())
            }
            Some(r) => r,
            None => self.router.check_inbound(from, pkt),
        }
    }
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("device", &self.device)
            .field("routes", &self.router.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// The tunnel's state shared by the API backend, the TUN reader task and the event handler.
#[derive(Debug, Default)]
pub struct TunnelShared {
    inner: Arc<Mutex<Option<Running>>>,
    /// Multi-hop circuits ([`crate::circuit`]).
    pub circuits: Arc<crate::circuit::CircuitDriver>,
    /// TAP mode ([`crate::tap`], `--tap`).
    pub tap: crate::tap::TapDriver,
    /// Paid forwarding ([`crate::market`]).
    pub market: crate::market::Market,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: 500,
        message: e.to_string(),
    }
}

impl TunnelShared {
    /// A lossy tunnel frame (`data`, id byte first) from friend `from`: checked and queued for
    /// the TUN device ([`TunnelShared::flush_inbound`] hands the batch on). Called in the node
    /// task; never blocks.
    pub fn on_packet(&self, from: &PublicKey, data: &[u8]) {
        let mut g = lock(&self.inner);
        let Some(r) = g.as_mut() else { return };
        let pkt = match decode_frame(data) {
            Ok(p) => p,
            Err(e) => return r.counters.count_drop(e),
        };
        let mut check = r.check_inbound(from, pkt, true);
        if check == Err(DropReason::NoRoute) {
            // net_crypto sessions exist only with friends: a friend added after `tunnel up`.
            if r.router.insert(*from).is_ok() {
                check = r.check_inbound(from, pkt, true);
            }
        }
        if let Err(e) = check {
            return r.counters.count_drop(e);
        }
        r.counters.rx_packets += 1;
        r.counters.rx_bytes += pkt.len() as u64;
        let dropped = r.inbound.push(pkt);
        uncount_rx(&mut r.counters, dropped);
    }

    /// Hands the packets [`TunnelShared::on_packet`] collected in this round of node events to
    /// the TUN writer task. Called in the node task after each round
    /// ([`ferry_net::EventHandler::on_flush`]); never blocks (a writer that is behind makes the
    /// batch drop, counted).
    pub fn flush_inbound(&self) {
        let mut g = lock(&self.inner);
        if let Some(r) = g.as_mut() {
            let dropped = r.inbound.flush();
            uncount_rx(&mut r.counters, dropped);
        }
    }

    /// A circuit cell (control or data custom packet) from neighbour `from`: relayed, or, on
    /// circuits ending here, decrypted, checked and written to the TUN device. Node task.
    pub fn on_circuit_cell(
        &self,
        node: &mut ferry_proto::node::Node,
        now: Instant,
        from: PublicKey,
        data: Vec<u8>,
    ) {
        let packets = self.circuits.on_cell(node, now, from, data);
        let released = self.circuits.take_released();
        if !released.is_empty() {
            self.with_exit(|h, _| {
                if let crate::exit::ExitHook::Exit(t) = h {
                    for k in &released {
                        t.release(k);
                    }
                }
            });
        }
        if packets.is_empty() {
            return;
        }
        let mut replies = Vec::new();
        {
            let mut g = lock(&self.inner);
            for d in packets {
                let Some(r) = g.as_mut() else {
                    self.circuits.count_dropped();
                    continue;
                };
                let pkt = match d {
                    crate::circuit::Delivery::Mesh(p) => p,
                    // Exit circuits: control messages and the exit role's checks, exactly as
                    // for a friend's session.
                    crate::circuit::Delivery::Keyed(k, p) => {
                        if p.first() == Some(&ferry_tunnel::exit::EXIT_CONTROL_PACKET_ID) {
                            if let Some(m) =
                                crate::exit::control_reply(&mut r.exit, &r.router, now, &k, &p)
                            {
                                replies.push((k, m.encode()));
                            }
                            continue;
                        }
                        if let Err(e) = r.check_inbound(&k, &p, false) {
                            r.counters.count_drop(e);
                            continue;
                        }
                        p
                    }
                };
                // Through the writer task (offloads need the virtio-net header), flushed at
                // the end of this round of node events.
                r.counters.rx_packets += 1;
                r.counters.rx_bytes += pkt.len() as u64;
                let dropped = r.inbound.push(&pkt);
                uncount_rx(&mut r.counters, dropped);
            }
        }
        for (k, m) in replies {
            self.circuits.send_keyed(node, now, &k, &m);
        }
    }

    /// `POST /v1/tunnel/up`: creates the TUN device `device` with our mesh address/32, adds every
    /// current friend to the route table and starts the TUN reader.
    ///
    /// # Errors
    /// 409 when already up, 400 for a bad name, 500 when the device cannot be created (not root,
    /// no `/dev/net/tun`).
    pub async fn up(
        &self,
        node: &NodeHandle,
        own_key: PublicKey,
        device: Option<String>,
    ) -> Result<TunnelStatus, ApiError> {
        self.up_with(node, own_key, device, crate::exit::ExitHook::None)
            .await
    }

    /// [`TunnelShared::up`] with an exit role ([`crate::exit`]).
    ///
    /// # Errors
    /// As [`TunnelShared::up`].
    pub async fn up_with(
        &self,
        node: &NodeHandle,
        own_key: PublicKey,
        device: Option<String>,
        exit: crate::exit::ExitHook,
    ) -> Result<TunnelStatus, ApiError> {
        let device = device.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
        if device.is_empty()
            || device.len() > MAX_DEVICE_NAME
            || !device
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(ApiError::bad_request(format!("bad device name {device:?}")));
        }
        if lock(&self.inner).is_some() {
            return Err(ApiError::conflict("tunnel already up"));
        }
        let addr = mesh_address(&own_key);
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(device.clone())
                .ipv6(addr, MESH_PREFIX_LEN)
                .mtu(TUNNEL_MTU as u16)
                .tx_queue_len(TUN_TX_QUEUE_LEN)
                .offload(offload)
                .build_async()
        };
        // TUN offloads (IFF_VNET_HDR, TSO/GRO) where the kernel has them.
        let mut offload = true;
        let dev = build(true)
            .or_else(|e| {
                tracing::info!("TUN offloads unavailable ({e}); one packet per read/write");
                offload = false;
                build(false)
            })
            .map_err(|e| internal(format!("creating TUN device {device}: {e}")))?;
        let dev = Arc::new(dev);
        let mut router = MeshRouter::new(own_key);
        let friends = node
            .call(|n, _| n.friends())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        for f in friends {
            if let Err(e) = router.insert(f.public_key) {
                tracing::warn!(friend = %f.public_key, "no tunnel route: {e}");
            }
        }
        {
            // Holding the lock while spawning: the reader cannot look at `inner` before the
            // `Running` it needs is stored.
            let mut g = lock(&self.inner);
            if g.is_some() {
                return Err(ApiError::conflict("tunnel already up"));
            }
            let task = tokio::spawn(reader(
                Arc::clone(&dev),
                node.clone(),
                Arc::clone(&self.inner),
                Arc::clone(&self.circuits),
            ));
            *g = Some(Running {
                inbound: Inbound::start(Arc::clone(&dev)),
                dev,
                device: device.clone(),
                router,
                counters: TunnelCounters::default(),
                task,
                exit,
                market: self.market.clone(),
            });
        }
        tracing::info!(%device, %addr, offload, "tunnel up");
        Ok(self.status(own_key))
    }

    /// `POST /v1/tunnel/down`: stops the reader and closes the device (the kernel removes it and
    /// its routes).
    ///
    /// # Errors
    /// 404 when the tunnel is not up.
    pub fn down(&self) -> Result<(), ApiError> {
        self.tap.down();
        let r = lock(&self.inner)
            .take()
            .ok_or_else(|| ApiError::not_found("tunnel is not up"))?;
        r.task.abort();
        crate::exit::on_down(&r.exit);
        tracing::info!(device = %r.device, "tunnel down");
        Ok(())
    }

    /// `GET /v1/tunnel/status`.
    pub fn status(&self, own_key: PublicKey) -> TunnelStatus {
        let mut s = TunnelStatus {
            address: mesh_address(&own_key).to_string(),
            prefix: format!(
                "{}/{MESH_PREFIX_LEN}",
                std::net::Ipv6Addr::from({
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&ferry_tunnel::MESH_PREFIX);
                    a
                })
            ),
            mtu: TUNNEL_MTU as u32,
            circuits: self.circuits.status(),
            tap: self.tap.status(),
            ..TunnelStatus::default()
        };
        if let Some(r) = lock(&self.inner).as_ref() {
            let c = &r.counters;
            s.up = true;
            s.device = r.device.clone();
            s.tx_packets = c.tx_packets;
            s.tx_bytes = c.tx_bytes;
            s.rx_packets = c.rx_packets;
            s.rx_bytes = c.rx_bytes;
            s.dropped = c.dropped();
            s.dropped_bad_source = c.drop_bad_source;
            s.peers = r
                .router
                .routes()
                .map(|(k, a)| TunnelPeer {
                    public_key: k.to_hex(),
                    address: a.to_string(),
                })
                .collect();
            s.peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            crate::exit::fill_status(&r.exit, &mut s);
            if let crate::exit::ExitHook::Client { client, .. } = &r.exit {
                s.exit_circuit = self.circuits.exit_circuit(&client.exit);
            }
        }
        s
    }

    /// Runs `f` on the running tunnel's exit role and router; `None` when the tunnel is down.
    pub(crate) fn with_exit<R>(
        &self,
        f: impl FnOnce(&mut crate::exit::ExitHook, &MeshRouter) -> R,
    ) -> Option<R> {
        let mut g = lock(&self.inner);
        let r = g.as_mut()?;
        Some(f(&mut r.exit, &r.router))
    }
}

/// Batches of TUN packets queued to the node task ([`NodeHandle::frame_channel`]): 2 batches of
/// at most [`SEGMENTS`] packets (≤ 350 KB). A full queue holds the reader back, so
/// excess packets wait in the TUN device's own queue ([`TUN_TX_QUEUE_LEN`]), where the kernel
/// drops them, rather than in ferry.
pub const FRAME_QUEUE_DEPTH: usize = 2;
/// Transmit queue of the TUN device, packets (Linux default 500): at 400 Mbit/s, 128 packets
/// of 1372 bytes are ≈ 3.5 ms of queue, which bounds the latency a bulk flow adds.
pub const TUN_TX_QUEUE_LEN: u32 = 128;

/// Most packets one TUN read can yield: with offloads a read returns one TCP/UDP segment of up
/// to 64 KiB, split here at the MSS (≈ 50 packets of 1372 bytes); [`IDEAL_BATCH_SIZE`] = 128.
const SEGMENTS: usize = IDEAL_BATCH_SIZE;
/// Packets after which the reader stops reading and hands the batch on: 64 (≈ 88 KB, a bit
/// more than one offloaded 64 KiB segment).
const READ_BATCH: usize = 64;
/// Consecutive failed TUN reads after which the reader gives up: 64.
const MAX_READ_ERRORS: u32 = 64;

/// Packets read from the TUN device in one batch: one buffer per packet (tun-rs splits an
/// offloaded segment into them), `len` of them used.
struct Staged {
    /// The raw read: virtio-net header and the unsplit packet.
    raw: Vec<u8>,
    segs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    len: usize,
}

impl Staged {
    fn new() -> Self {
        Self {
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + 65535],
            segs: (0..SEGMENTS).map(|_| vec![0u8; 2048]).collect(),
            sizes: vec![0; SEGMENTS],
            len: 0,
        }
    }

    /// One read into the free buffers: awaited when `wait`, else non-blocking. `Ok(false)`
    /// when nothing was pending or no buffer is free.
    async fn read(&mut self, dev: &AsyncDevice, wait: bool) -> std::io::Result<bool> {
        // Room for a whole offloaded segment.
        if self.len >= READ_BATCH || SEGMENTS - self.len < 64 {
            return Ok(false);
        }
        let (segs, sizes) = (&mut self.segs[self.len..], &mut self.sizes[self.len..]);
        let r = if wait {
            dev.recv_multiple(&mut self.raw[..], segs, sizes, 0).await
        } else {
            dev.try_recv_multiple(&mut self.raw[..], segs, sizes, 0)
        };
        match r {
            Ok(n) => {
                self.len += n;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.segs[..self.len]
            .iter()
            .zip(&self.sizes)
            .map(|(b, &n)| b.get(..n).unwrap_or_default())
    }
}

/// TUN → friend pump; ends when the device fails or the node stops. Reads packets in batches
/// (one awaited read, then non-blocking reads until the device is empty or [`READ_BATCH`]
/// packets; with offloads each read is a whole TCP segment of up to 64 KiB), routes the whole
/// batch under one lock and hands it to the node task through the frame channel: no closure,
/// reply or allocation per packet.
async fn reader(
    dev: Arc<AsyncDevice>,
    node: NodeHandle,
    inner: Arc<Mutex<Option<Running>>>,
    circuits: Arc<crate::circuit::CircuitDriver>,
) {
    let Ok(mut chan) = node.frame_channel(FRAME_QUEUE_DEPTH).await else {
        return;
    };
    let mut staged = Staged::new();
    let mut spare: Vec<FrameBatch> = Vec::new();
    let mut last_refresh: Option<Instant> = None;
    let mut errors = 0u32;
    // Indices into the staged batch that found no route (reused, ≤ SEGMENTS).
    let mut missed: Vec<usize> = Vec::with_capacity(SEGMENTS);
    loop {
        staged.len = 0;
        if let Err(e) = staged.read(&dev, true).await {
            // A malformed offloaded read is skipped; a device that keeps failing ends the pump.
            errors += 1;
            if errors >= MAX_READ_ERRORS {
                tracing::warn!("tunnel read: {e}");
                return;
            }
            tracing::debug!("tunnel read: {e}");
            continue;
        }
        errors = 0;
        loop {
            match staged.read(&dev, false).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // A malformed offloaded read: skip it.
                    tracing::debug!("tunnel read: {e}");
                    break;
                }
            }
        }
        // Batches the node task has sent: count them and keep them for reuse.
        while let Ok(b) = chan.back.try_recv() {
            spare.push(b);
        }
        let mut batch = spare.pop().unwrap_or_default();
        missed.clear();
        {
            let mut g = lock(&inner);
            let Some(r) = g.as_mut() else { return };
            for b in &mut spare {
                count_failed(&mut r.counters, b);
            }
            count_failed(&mut r.counters, &mut batch);
            for (i, pkt) in staged.packets().enumerate() {
                // Multi-hop circuits first: their far ends need not be friends.
                if circuit_out(r, &mut batch, circuits.outbound(pkt), pkt.len()) {
                    continue;
                }
                match r.route_outbound(pkt) {
                    // Exit traffic whose exit (client) or client (exit) is at a circuit's end.
                    Ok((k, exit_route)) => match circuits.outbound_keyed(&k, pkt) {
                        Some(o) => {
                            circuit_out(r, &mut batch, o, pkt.len());
                        }
                        None => {
                            if exit_route && !r.meter_exit_route(&k, pkt) {
                                r.counters.count_drop(DropReason::NotForUs);
                                continue;
                            }
                            push(&mut r.counters, &mut batch, k, pkt);
                        }
                    },
                    Err(DropReason::NoRoute) => missed.push(i),
                    Err(e) => r.counters.count_drop(e),
                }
            }
        }
        let miss = !missed.is_empty();
        if miss && last_refresh.is_none_or(|t| t.elapsed() >= ROUTE_REFRESH_INTERVAL) {
            // A friend added since `tunnel up`: refresh from the node's friend list and route
            // the missed packets again.
            last_refresh = Some(Instant::now());
            let Ok(friends) = node.call(|n, _| n.friends()).await else {
                return;
            };
            let mut g = lock(&inner);
            let Some(r) = g.as_mut() else { return };
            for f in friends {
                let _ = r.router.insert(f.public_key);
            }
            // Only the packets that missed: the others are in the batch already.
            for (i, pkt) in staged.packets().enumerate() {
                if !missed.contains(&i) {
                    continue;
                }
                match r.route_outbound(pkt) {
                    Ok((k, exit_route)) => {
                        if exit_route && !r.meter_exit_route(&k, pkt) {
                            r.counters.count_drop(DropReason::NotForUs);
                            continue;
                        }
                        push(&mut r.counters, &mut batch, k, pkt);
                    }
                    Err(e) => r.counters.count_drop(e),
                }
            }
        } else if miss && let Some(r) = lock(&inner).as_mut() {
            for _ in &missed {
                r.counters.count_drop(DropReason::NoRoute);
            }
        }
        if batch.is_empty() {
            spare.push(batch);
            continue;
        }
        // A full queue holds the reader back (the TUN device's queue then fills and the
        // kernel drops), so ferry itself never buffers more than FRAME_QUEUE_DEPTH batches.
        if chan.tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// Carries out what the circuit driver decided for a TUN packet of `len` bytes; `false` when it
/// is not circuit traffic (route it as usual).
fn circuit_out(
    r: &mut Running,
    batch: &mut FrameBatch,
    o: crate::circuit::Outbound,
    len: usize,
) -> bool {
    match o {
        crate::circuit::Outbound::NotCircuit => false,
        crate::circuit::Outbound::Dropped => {
            r.counters.drop_send += 1;
            true
        }
        crate::circuit::Outbound::TooBig(icmp) => {
            // Written back into the TUN device (through the writer: offloads need the
            // virtio-net header).
            let dropped = r.inbound.push(&icmp);
            uncount_rx(&mut r.counters, dropped);
            let dropped = r.inbound.flush();
            uncount_rx(&mut r.counters, dropped);
            r.counters.drop_send += 1;
            true
        }
        crate::circuit::Outbound::Send(cell) => {
            if let Some((&id, body)) = cell.data.split_first() {
                batch.push(cell.to, id, body);
                r.counters.tx_packets += 1;
                r.counters.tx_bytes += len as u64;
            }
            true
        }
    }
}

/// Moves (packets, bytes) that the inbound queue dropped from the received to the dropped
/// counters.
fn uncount_rx(c: &mut TunnelCounters, (packets, bytes): (u64, u64)) {
    c.rx_packets = c.rx_packets.saturating_sub(packets);
    c.rx_bytes = c.rx_bytes.saturating_sub(bytes);
    c.drop_send += packets;
}

/// Queues `pkt` for friend `to`, counting it as sent (a refusal is subtracted when the batch
/// comes back, [`count_failed`]).
fn push(c: &mut TunnelCounters, b: &mut FrameBatch, to: PublicKey, pkt: &[u8]) {
    b.push(to, TUNNEL_PACKET_ID, pkt);
    c.tx_packets += 1;
    c.tx_bytes += pkt.len() as u64;
}

/// Moves a returned batch's refused frames from the sent to the dropped counters and empties
/// the batch for reuse.
fn count_failed(c: &mut TunnelCounters, b: &mut FrameBatch) {
    c.tx_packets = c.tx_packets.saturating_sub(u64::from(b.failed));
    c.tx_bytes = c.tx_bytes.saturating_sub(b.failed_bytes);
    c.drop_send += u64::from(b.failed);
    b.clear();
}
