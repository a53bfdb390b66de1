//! ferry's I/O layer: one tokio task per node owns the UDP socket and the sans-IO [`Dht`], and runs
//! the run loop documented in `ferry-proto` (feed input, drain transmits and events, sleep until
//! the next timeout). Everything else talks to that task through a [`NodeHandle`] over a bounded
//! channel (architecture.md house rule 7: one owner per state).
//!
//! This is the only place (with the daemon) that reads the clock, the OS RNG and sockets.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, os_seed};
use ferry_crypto::{KeyPair, PublicKey};
use ferry_proto::dht::{CloseNode, Dht, DhtConfig, DhtError, DhtEvent, DhtStats, SearchStatus};
use ferry_proto::{Destination, Endpoint};
use ferry_wire::MAX_UDP_PACKET_SIZE;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// The default UDP port range tried when no port is given (c-toxcore: 33445..=33545).
pub const DEFAULT_PORT_RANGE: (u16, u16) = (33445, 33545);
/// Capacity of a node's command channel.
pub const COMMAND_QUEUE: usize = 256;

/// Errors of the driver layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The requested UDP port is taken.
    #[error("UDP port {port} is already in use on {ip}; pick another with --udp-port")]
    PortInUse {
        /// The address.
        ip: IpAddr,
        /// The port.
        port: u16,
    },
    /// No port of the default range was free.
    #[error("no free UDP port in {0}..={1}; pass --udp-port")]
    NoFreePort(u16, u16),
    /// Another socket error.
    #[error("UDP socket: {0}")]
    Io(#[from] io::Error),
    /// The OS RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
    /// The node task has stopped.
    #[error("the node has stopped")]
    Stopped,
}

/// Which UDP port to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Exactly this port (0 = any free port the OS picks).
    Exact(u16),
    /// The first free port of 33445..=33545, as c-toxcore does.
    DefaultRange,
}

/// Binds the node's one UDP socket on `ip` (use `::` for dual-stack IPv4+IPv6, as c-toxcore
/// does; IPv4-mapped peers then appear as IPv4 after normalization).
///
/// # Errors
/// [`NetError::PortInUse`] for a taken exact port, [`NetError::NoFreePort`] when the whole default
/// range is taken, [`NetError::Io`] otherwise.
pub fn bind_udp(ip: IpAddr, port: PortSpec) -> Result<UdpSocket, NetError> {
    let ports: Vec<u16> = match port {
        PortSpec::Exact(p) => vec![p],
        PortSpec::DefaultRange => (DEFAULT_PORT_RANGE.0..=DEFAULT_PORT_RANGE.1).collect(),
    };
    for p in &ports {
        match bind_one(SocketAddr::new(ip, *p)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(NetError::Io(e)),
        }
    }
    match port {
        PortSpec::Exact(p) => Err(NetError::PortInUse { ip, port: p }),
        PortSpec::DefaultRange => Err(NetError::NoFreePort(
            DEFAULT_PORT_RANGE.0,
            DEFAULT_PORT_RANGE.1,
        )),
    }
}

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_broadcast(true)?;
    // Large buffers: a DHT node answers bursts of requests.
    let _ = socket.set_recv_buffer_size(1 << 20);
    let _ = socket.set_send_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A snapshot of a node, for the control API.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// The node's DHT public key (fresh each start).
    pub dht_public_key: PublicKey,
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    /// Whether at least one close node is good.
    pub connected: bool,
    /// Good nodes in the close list.
    pub close_nodes: usize,
    /// Counters.
    pub stats: DhtStats,
    /// Time since the node started.
    pub uptime: Duration,
}

enum Command {
    Bootstrap(SocketAddr, PublicKey),
    Status(oneshot::Sender<NodeStatus>),
    CloseNodes(oneshot::Sender<Vec<CloseNode>>),
    AddSearch(PublicKey, oneshot::Sender<Result<(), DhtError>>),
    SearchStatus(PublicKey, oneshot::Sender<Option<SearchStatus>>),
    RemoveSearch(PublicKey),
    Shutdown,
}

/// Options of a node task.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// DHT configuration.
    pub dht: DhtConfig,
    /// Bootstrap nodes contacted at start.
    pub bootstrap: Vec<(SocketAddr, PublicKey)>,
}

/// A cheap, cloneable handle to a running node task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
}

impl NodeHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Adds a bootstrap node (`tox_bootstrap`).
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the node has stopped.
    pub async fn bootstrap(&self, addr: SocketAddr, public_key: PublicKey) -> Result<(), NetError> {
        self.tx
            .send(Command::Bootstrap(addr, public_key))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn status(&self) -> Result<NodeStatus, NetError> {
        self.ask(Command::Status).await
    }

    /// The close list, closest first.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn close_nodes(&self) -> Result<Vec<CloseNode>, NetError> {
        self.ask(Command::CloseNodes).await
    }

    /// Starts searching for a DHT key's address.
    ///
    /// # Errors
    /// [`NetError::Stopped`]; the inner result carries the DHT's refusal.
    pub async fn add_search(&self, pk: PublicKey) -> Result<Result<(), DhtError>, NetError> {
        self.ask(|tx| Command::AddSearch(pk, tx)).await
    }

    /// Where a search stands.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn search_status(&self, pk: PublicKey) -> Result<Option<SearchStatus>, NetError> {
        self.ask(|tx| Command::SearchStatus(pk, tx)).await
    }

    /// Stops a search.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn remove_search(&self, pk: PublicKey) -> Result<(), NetError> {
        self.tx
            .send(Command::RemoveSearch(pk))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Asks the node task to stop; it returns after its loop ends.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
}

/// Starts a node task on `socket` with a fresh DHT key pair from the OS RNG (as c-toxcore makes a
/// new DHT key at every start). `events`, if given, receives DHT events (dropped when full).
///
/// # Errors
/// [`NetError::Rng`] when the OS RNG fails, [`NetError::Io`] when the socket has no local address.
pub fn spawn_node(
    socket: UdpSocket,
    options: NodeOptions,
    events: Option<mpsc::Sender<DhtEvent>>,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), NetError> {
    let seed = os_seed().map_err(|e| NetError::Rng(e.to_string()))?;
    let mut rng = FerryRng::from_seed(seed);
    let keys = KeyPair::generate(&mut rng);
    let now = Instant::now();
    let mut dht = Dht::new(options.dht, keys, rng, now);
    for (addr, pk) in options.bootstrap {
        dht.bootstrap(now, addr, pk);
    }
    let local_addr = socket.local_addr()?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let driver = Driver {
        socket,
        local_addr,
        dht,
        rx,
        events,
        started: now,
        broadcast: Vec::new(),
        broadcast_at: None,
    };
    let join = tokio::spawn(driver.run());
    Ok((NodeHandle { tx }, join))
}

struct Driver {
    socket: UdpSocket,
    local_addr: SocketAddr,
    dht: Dht,
    rx: mpsc::Receiver<Command>,
    events: Option<mpsc::Sender<DhtEvent>>,
    started: Instant,
    broadcast: Vec<IpAddr>,
    broadcast_at: Option<Instant>,
}

impl Driver {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_UDP_PACKET_SIZE + 1];
        tracing::info!(dht_public_key = %self.dht.public_key(), addr = %self.local_addr, "DHT node started");
        loop {
            self.flush().await;
            let deadline = tokio::time::Instant::from_std(self.dht.poll_timeout());
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if n <= MAX_UDP_PACKET_SIZE {
                            self.dht.handle_datagram(Instant::now(), from, &buf[..n]);
                        }
                    }
                    // ICMP port-unreachable and similar surface here on Linux; keep going.
                    Err(e) => tracing::debug!(error = %e, "recv_from"),
                },
                cmd = self.rx.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.command(cmd),
                },
                _ = tokio::time::sleep_until(deadline) => self.dht.handle_timeout(Instant::now()),
            }
        }
        tracing::info!("DHT node stopped");
    }

    fn command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Bootstrap(addr, pk) => self.dht.bootstrap(now, addr, pk),
            Command::Status(tx) => {
                let _ = tx.send(NodeStatus {
                    dht_public_key: self.dht.public_key(),
                    local_addr: self.local_addr,
                    connected: self.dht.is_connected(now),
                    close_nodes: self.dht.good_close_count(now),
                    stats: self.dht.stats(),
                    uptime: now.saturating_duration_since(self.started),
                });
            }
            Command::CloseNodes(tx) => {
                let _ = tx.send(self.dht.close_nodes(now));
            }
            Command::AddSearch(pk, tx) => {
                let _ = tx.send(self.dht.add_search(now, pk));
            }
            Command::SearchStatus(pk, tx) => {
                let _ = tx.send(self.dht.search_status(now, &pk));
            }
            Command::RemoveSearch(pk) => self.dht.remove_search(&pk),
            Command::Shutdown => {}
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.dht.poll_transmit() {
            match t.destination {
                Destination::Addr(addr) => self.send(addr, &t.payload).await,
                Destination::LanBroadcast { port } => {
                    for ip in self.broadcast_addrs() {
                        self.send(SocketAddr::new(ip, port), &t.payload).await;
                    }
                }
            }
        }
        while let Some(ev) = self.dht.poll_event() {
            tracing::debug!(?ev, "DHT event");
            if let Some(tx) = &self.events {
                let _ = tx.try_send(ev);
            }
        }
    }

    async fn send(&self, addr: SocketAddr, payload: &[u8]) {
        let dest = match (self.local_addr, addr) {
            // A dual-stack socket reaches IPv4 peers through IPv4-mapped addresses.
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (SocketAddr::V4(_), SocketAddr::V6(_)) => return,
            _ => addr,
        };
        if let Err(e) = self.socket.send_to(payload, dest).await {
            tracing::debug!(error = %e, %dest, "send_to");
        }
    }

    /// LAN discovery targets: every IPv4 interface broadcast address, 255.255.255.255 and, on an
    /// IPv6 socket, ff02::1 (`LAN_discovery.c`). Refreshed at most once a minute.
    fn broadcast_addrs(&mut self) -> Vec<IpAddr> {
        let now = Instant::now();
        if self
            .broadcast_at
            .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(60))
        {
            let mut v: Vec<IpAddr> = Vec::new();
            if let Ok(ifaces) = if_addrs::get_if_addrs() {
                for i in ifaces {
                    if let if_addrs::IfAddr::V4(a) = i.addr
                        && let Some(b) = a.broadcast
                        && !a.ip.is_loopback()
                        && !v.contains(&IpAddr::V4(b))
                    {
                        v.push(IpAddr::V4(b));
                    }
                }
            }
            v.push(IpAddr::V4(Ipv4Addr::BROADCAST));
            if self.local_addr.is_ipv6() {
                v.push(IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)));
            }
            self.broadcast = v;
            self.broadcast_at = Some(now);
        }
        self.broadcast.clone()
    }
}
