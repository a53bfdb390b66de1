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
use ferry_net::NodeHandle;
use ferry_tunnel::{
    DropReason, MESH_PREFIX_LEN, MeshRouter, TUNNEL_MTU, TunnelCounters, decode_frame,
    encode_frame, mesh_address,
};
use tun_rs::AsyncDevice;

/// Default TUN device name.
pub const DEFAULT_DEVICE: &str = "ferry0";
/// Longest TUN device name, bytes (Linux `IFNAMSIZ` − 1).
pub const MAX_DEVICE_NAME: usize = 15;
/// Least time between two refreshes of the route table from the friend list after a miss.
pub const ROUTE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

struct Running {
    dev: Arc<AsyncDevice>,
    device: String,
    router: MeshRouter,
    counters: TunnelCounters,
    task: tokio::task::JoinHandle<()>,
    /// Exit node / exit client role ([`crate::exit`]).
    exit: crate::exit::ExitHook,
}

impl Running {
    /// The friend a TUN packet goes to: the exit role first, then the mesh router.
    fn route_outbound(&mut self, pkt: &[u8]) -> Result<PublicKey, DropReason> {
        match crate::exit::route_outbound(&mut self.exit, pkt) {
            Some(r) => r,
            None => self.router.route_outbound(pkt),
        }
    }

    /// Whether a packet from friend `from` may be written to the TUN device: the exit role
    /// first, then the mesh router.
    fn check_inbound(&mut self, from: &PublicKey, pkt: &[u8]) -> Result<(), DropReason> {
        match crate::exit::check_inbound(&mut self.exit, &self.router, from, pkt) {
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
    /// A lossy tunnel frame (`data`, id byte first) from friend `from`: checked and written to
    /// the TUN device. Called in the node task; never blocks.
    pub fn on_packet(&self, from: &PublicKey, data: &[u8]) {
        let mut g = lock(&self.inner);
        let Some(r) = g.as_mut() else { return };
        let pkt = match decode_frame(data) {
            Ok(p) => p,
            Err(e) => return r.counters.count_drop(e),
        };
        let mut check = r.check_inbound(from, pkt);
        if check == Err(DropReason::NoRoute) {
            // net_crypto sessions exist only with friends: a friend added after `tunnel up`.
            if r.router.insert(*from).is_ok() {
                check = r.check_inbound(from, pkt);
            }
        }
        if let Err(e) = check {
            return r.counters.count_drop(e);
        }
        match r.dev.try_send(pkt) {
            Ok(_) => {
                r.counters.rx_packets += 1;
                r.counters.rx_bytes += pkt.len() as u64;
            }
            Err(_) => r.counters.drop_send += 1,
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
        if packets.is_empty() {
            return;
        }
        let mut g = lock(&self.inner);
        for pkt in packets {
            match g.as_mut().map(|r| (r.dev.try_send(&pkt).is_ok(), r)) {
                Some((true, r)) => {
                    r.counters.rx_packets += 1;
                    r.counters.rx_bytes += pkt.len() as u64;
                }
                Some((false, r)) => r.counters.drop_send += 1,
                None => self.circuits.count_dropped(),
            }
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
        let dev = tun_rs::DeviceBuilder::new()
            .name(device.clone())
            .ipv6(addr, MESH_PREFIX_LEN)
            .mtu(TUNNEL_MTU as u16)
            .build_async()
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
        let task = tokio::spawn(reader(
            Arc::clone(&dev),
            node.clone(),
            Arc::clone(&self.inner),
            Arc::clone(&self.circuits),
        ));
        {
            let mut g = lock(&self.inner);
            if g.is_some() {
                task.abort();
                return Err(ApiError::conflict("tunnel already up"));
            }
            *g = Some(Running {
                dev,
                device: device.clone(),
                router,
                counters: TunnelCounters::default(),
                task,
                exit,
            });
        }
        tracing::info!(%device, %addr, "tunnel up");
        Ok(self.status(own_key))
    }

    /// `POST /v1/tunnel/down`: stops the reader and closes the device (the kernel removes it and
    /// its routes).
    ///
    /// # Errors
    /// 404 when the tunnel is not up.
    pub fn down(&self) -> Result<(), ApiError> {
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

/// TUN → friend pump; ends when the device fails or the node stops.
async fn reader(
    dev: Arc<AsyncDevice>,
    node: NodeHandle,
    inner: Arc<Mutex<Option<Running>>>,
    circuits: Arc<crate::circuit::CircuitDriver>,
) {
    let mut buf = vec![0u8; 65536];
    let mut frame: Vec<u8> = Vec::with_capacity(TUNNEL_MTU + 1);
    let mut last_refresh: Option<Instant> = None;
    loop {
        let n = match dev.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("tunnel read: {e}");
                return;
            }
        };
        let pkt = &buf[..n];
        // Multi-hop circuits first: their far ends need not be friends.
        match circuits.outbound(pkt) {
            crate::circuit::Outbound::NotCircuit => {}
            crate::circuit::Outbound::Dropped => {
                if let Some(r) = lock(&inner).as_mut() {
                    r.counters.drop_send += 1;
                }
                continue;
            }
            crate::circuit::Outbound::TooBig(icmp) => {
                let _ = dev.try_send(&icmp);
                if let Some(r) = lock(&inner).as_mut() {
                    r.counters.drop_send += 1;
                }
                continue;
            }
            crate::circuit::Outbound::Send(cell) => {
                crate::circuit::CircuitDriver::send(&node, cell).await;
                if let Some(r) = lock(&inner).as_mut() {
                    r.counters.tx_packets += 1;
                    r.counters.tx_bytes += n as u64;
                }
                continue;
            }
        }
        let mut route = lock(&inner).as_mut().map(|r| r.route_outbound(pkt));
        if route == Some(Err(DropReason::NoRoute))
            && last_refresh.is_none_or(|t| t.elapsed() >= ROUTE_REFRESH_INTERVAL)
        {
            // A friend added since `tunnel up`: refresh from the node's friend list.
            last_refresh = Some(Instant::now());
            let Ok(friends) = node.call(|n, _| n.friends()).await else {
                return;
            };
            let mut g = lock(&inner);
            if let Some(r) = g.as_mut() {
                for f in friends {
                    let _ = r.router.insert(f.public_key);
                }
                route = Some(r.route_outbound(pkt));
            }
        }
        let dest = match route {
            None => return,
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                if let Some(r) = lock(&inner).as_mut() {
                    r.counters.count_drop(e);
                }
                continue;
            }
        };
        encode_frame(pkt, &mut frame);
        let out = std::mem::take(&mut frame);
        let Ok((res, back)) = node
            .call(move |n, now| {
                let r = n.send_custom(now, &dest, &out);
                (r, out)
            })
            .await
        else {
            return;
        };
        frame = back;
        if let Some(r) = lock(&inner).as_mut() {
            match res {
                Ok(()) => {
                    r.counters.tx_packets += 1;
                    r.counters.tx_bytes += n as u64;
                }
                Err(_) => r.counters.drop_send += 1,
            }
        }
    }
}
