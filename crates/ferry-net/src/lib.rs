//! ferry's I/O layer: one tokio task per node owns the UDP socket and the sans-IO [`Node`], and runs
//! the run loop documented in `ferry-proto` (feed input, drain transmits and events, sleep until
//! the next timeout). Everything else talks to that task through a [`NodeHandle`] over a bounded
//! channel (architecture.md house rule 7: one owner per state).
//!
//! This is the only place (with the daemon) that reads the clock, the OS RNG and sockets.
//!
//! # Batched socket I/O (issue 6 point 4)
//!
//! Per-datagram syscalls, not crypto alone, bound a userspace data path (`tunnel.md`). The
//! driver therefore uses `quinn-udp`: receives come in `recvmmsg` batches of up to 32 datagrams
//! (with UDP GRO, each may hold several coalesced datagrams of one sender), and consecutive
//! transmits to one address with the same size go out as one UDP GSO `sendmsg` of up to 64
//! segments (the kernel splits them; on the wire they are ordinary datagrams, so c-toxcore peers
//! see no difference). Without GSO/GRO support the same code sends and receives one datagram per
//! call. After each received batch, command or timer, events are handled first and then every
//! datagram the node queued is sent. Socket buffers are 4 MiB (capped by `rmem_max`/`wmem_max`).

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, os_seed};
use ferry_crypto::{KeyPair, PublicKey};
use ferry_proto::dht::{CloseNode, DhtConfig, DhtError, DhtEvent, DhtStats, SearchStatus};
use ferry_proto::node::{Node, NodeConfig, NodeEvent};
use ferry_proto::tcp_connection::{TcpCommand, TcpId};
use ferry_proto::{Destination, Endpoint};
use ferry_wire::MAX_UDP_PACKET_SIZE;
use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

pub mod relay;
pub use relay::{RelayServerHandle, spawn_relay_server};

/// The default UDP port range tried when no port is given (c-toxcore: 33445..=33545).
pub const DEFAULT_PORT_RANGE: (u16, u16) = (33445, 33545);
/// Capacity of a node's command channel.
pub const COMMAND_QUEUE: usize = 256;
/// Requested UDP socket buffer size, bytes (the kernel caps it at `rmem_max`/`wmem_max`).
pub const SOCKET_BUFFER: usize = 4 << 20;
/// Receive buffer per batch slot: room for a GRO-coalesced group of datagrams.
const RECV_SLOT: usize = 64 * 1024;
/// Most `recvmmsg` batches handled before the driver flushes its transmits.
const RECV_BATCHES_PER_FLUSH: usize = 4;
/// Most queued commands run back to back before the driver flushes.
const COMMANDS_PER_FLUSH: usize = 64;
/// Largest GSO send, bytes (UDP payload limit with room for headers).
const GSO_MAX_BYTES: usize = 65_000;

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
    // Large buffers: a DHT node answers bursts of requests, net_crypto sends bulk data in bursts
    // of a pacing quantum.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
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
    /// Whether the onion reports us announced (c-toxcore's "connected").
    pub onion_connected: bool,
    /// Good nodes in the close list.
    pub close_nodes: usize,
    /// Counters.
    pub stats: DhtStats,
    /// Time since the node started.
    pub uptime: Duration,
    /// Known TCP relays (ours and friends'), with their connection state.
    pub tcp_relays: Vec<ferry_proto::tcp_connection::RelayInfo>,
}

/// Receives the node's events inside the node task, with the node at hand, before the
/// datagrams that the same input produced are sent. A handler that persists a received message
/// here therefore commits it before net_crypto's acknowledgement leaves the host (issue 4:
/// nothing acknowledged is lost on `kill -9`).
pub trait EventHandler: Send + Sync + 'static {
    /// One event. `node` may be commanded (e.g. accept a request, resend queued messages).
    fn on_event(&mut self, node: &mut Node, now: Instant, event: NodeEvent);

    /// Called once after each round of events (one per received datagram batch, command batch
    /// or timer), before that round's datagrams are sent: a handler that buffers data-path
    /// output per event (the IP tunnel's packets for its TUN device) hands the batch on here.
    fn on_flush(&mut self) {}
}

/// An [`EventHandler`] that forwards DHT events to a channel (dropped when full) and ignores the
/// rest: enough for DHT-only uses (devnet, tests).
#[derive(Debug)]
pub struct DhtEvents(pub Option<mpsc::Sender<DhtEvent>>);

impl EventHandler for DhtEvents {
    fn on_event(&mut self, _node: &mut Node, _now: Instant, event: NodeEvent) {
        if let (Some(tx), NodeEvent::Dht(ev)) = (&self.0, event) {
            let _ = tx.try_send(ev);
        }
    }
}

type Job = Box<dyn FnOnce(&mut Node, Instant) + Send>;

enum Command {
    Run(Job),
    SetTcpOnion(mpsc::Sender<(SocketAddr, Vec<u8>)>),
    SetLossyFrames(LossyFrames),
    Shutdown,
}

/// Suggested size of a [`FrameBatch`], frames: 64 (≈ 88 KB of 1373-byte frames, one UDP GSO
/// send of 64 segments). Not enforced: the driver sends every frame of a batch it takes, then
/// flushes after at most 4 batches.
pub const FRAME_BATCH_MAX: usize = 64;
/// Most [`FrameBatch`]es the driver takes from the frame channel before it flushes.
const FRAME_BATCHES_PER_FLUSH: usize = 4;

/// A batch of custom lossy packets for friends (`[id 200..=254][payload]`, each ≤ 1373 bytes),
/// queued to the node task by a data-path producer (the IP tunnel's TUN reader) without a
/// closure or a reply per packet. The frames lie back to back in one buffer, so a batch that
/// comes back through the return channel is refilled without allocating.
///
/// The node task sends each frame with [`Node::send_custom`] and counts the outcome in
/// [`FrameBatch::sent`] / [`FrameBatch::failed`] (frames are never retried: lossy).
#[derive(Debug, Default)]
pub struct FrameBatch {
    buf: Vec<u8>,
    frames: Vec<(PublicKey, usize, usize)>,
    /// Frames the node accepted (encrypted and queued for the socket), set by the node task.
    pub sent: u32,
    /// Frames refused (friend offline, no session, bad id/length), set by the node task.
    pub failed: u32,
    /// Bytes of the refused frames without their id byte, set by the node task.
    pub failed_bytes: u64,
}

impl FrameBatch {
    /// Appends the frame `[id][body]` for friend `to`.
    pub fn push(&mut self, to: PublicKey, id: u8, body: &[u8]) {
        let start = self.buf.len();
        self.buf.push(id);
        self.buf.extend_from_slice(body);
        self.frames.push((to, start, self.buf.len()));
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Empties the batch (keeping its buffers) and zeroes the counters.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.frames.clear();
        self.sent = 0;
        self.failed = 0;
        self.failed_bytes = 0;
    }

    /// The frames: friend and `[id][body]`.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &[u8])> {
        self.frames
            .iter()
            .map(|(k, a, b)| (k, self.buf.get(*a..*b).unwrap_or_default()))
    }
}

/// The node task's side of a frame channel ([`NodeHandle::frame_channel`]).
struct LossyFrames {
    rx: mpsc::Receiver<FrameBatch>,
    back: mpsc::Sender<FrameBatch>,
}

/// The producer's side of a frame channel: full batches go in through `tx` (bounded: a full
/// channel means the node task is behind, and the producer should drop rather than queue), and
/// sent batches, with their counters, come back through `back` for reuse.
#[derive(Debug)]
pub struct FrameChannel {
    /// Batches to send.
    pub tx: mpsc::Sender<FrameBatch>,
    /// Sent batches, counters filled in, for the producer to clear and refill.
    pub back: mpsc::Receiver<FrameBatch>,
}

/// Options of a node task.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// DHT configuration.
    pub dht: DhtConfig,
    /// Bootstrap nodes contacted at start.
    pub bootstrap: Vec<(SocketAddr, PublicKey)>,
    /// Long-term key pair; `None` = a throwaway one (DHT-only uses).
    pub real_keys: Option<KeyPair>,
    /// Nospam of our Tox ID.
    pub nospam: u32,
    /// Our own TCP relays (`--relay-peer`, `tox_add_tcp_relay`): address and public key.
    pub relays: Vec<(SocketAddr, PublicKey)>,
    /// Send no UDP at all (c-toxcore `udp_enabled = false`): friends only through relays.
    pub no_udp: bool,
    /// TCP port of the relay this node hosts (`--tcp-relay`), announced to friends
    /// ([`Node::set_hosted_relay`]).
    pub hosted_relay_port: Option<u16>,
}

/// A cheap, cloneable handle to a running node task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    local_addr: SocketAddr,
    started: Instant,
}

impl NodeHandle {
    /// Routes onion responses for TCP relay clients (transmits to [`relay::tcp_client_addr`]
    /// addresses) to `sink` instead of the UDP socket (full sink: dropped).
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the node has stopped.
    pub async fn set_tcp_onion_sink(
        &self,
        sink: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) -> Result<(), NetError> {
        self.tx
            .send(Command::SetTcpOnion(sink))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Opens the node task's frame channel for a data-path producer (replacing any earlier
    /// one): up to `depth` [`FrameBatch`]es (of about [`FRAME_BATCH_MAX`] frames) queue in the
    /// task, which sends them in order, flushing after every few batches (UDP GSO), and returns
    /// each batch through [`FrameChannel::back`].
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the node has stopped.
    pub async fn frame_channel(&self, depth: usize) -> Result<FrameChannel, NetError> {
        let depth = depth.max(1);
        let (tx, rx) = mpsc::channel(depth);
        // Room for every batch in flight, so returning one never fails while the producer lives.
        let (back_tx, back) = mpsc::channel(depth + 2);
        self.tx
            .send(Command::SetLossyFrames(LossyFrames { rx, back: back_tx }))
            .await
            .map_err(|_| NetError::Stopped)?;
        Ok(FrameChannel { tx, back })
    }

    /// Runs `f` on the node inside its task (then the task drains transmits and events as
    /// usual) and returns its result. This is how every command reaches the node (house rule 7:
    /// one owner per state).
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the node has stopped.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Node, Instant) -> T + Send + 'static,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |node, now| {
            let _ = tx.send(f(node, now));
        });
        self.tx
            .send(Command::Run(job))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Adds a bootstrap node (`tox_bootstrap`).
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the node has stopped.
    pub async fn bootstrap(&self, addr: SocketAddr, public_key: PublicKey) -> Result<(), NetError> {
        self.call(move |n, now| n.dht_mut().bootstrap(now, addr, public_key))
            .await
    }

    /// The node's status.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn status(&self) -> Result<NodeStatus, NetError> {
        let (local_addr, started) = (self.local_addr, self.started);
        self.call(move |n, now| NodeStatus {
            dht_public_key: n.dht().public_key(),
            local_addr,
            connected: n.dht().is_connected(now),
            onion_connected: n.is_connected(),
            close_nodes: n.dht().good_close_count(now),
            stats: n.dht().stats(),
            uptime: now.saturating_duration_since(started),
            tcp_relays: n.tcp_relays(),
        })
        .await
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The close list, closest first.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn close_nodes(&self) -> Result<Vec<CloseNode>, NetError> {
        self.call(|n, now| n.dht().close_nodes(now)).await
    }

    /// Starts searching for a DHT key's address.
    ///
    /// # Errors
    /// [`NetError::Stopped`]; the inner result carries the DHT's refusal.
    pub async fn add_search(&self, pk: PublicKey) -> Result<Result<(), DhtError>, NetError> {
        self.call(move |n, now| n.dht_mut().add_search(now, pk))
            .await
    }

    /// Where a search stands.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn search_status(&self, pk: PublicKey) -> Result<Option<SearchStatus>, NetError> {
        self.call(move |n, now| n.dht().search_status(now, &pk))
            .await
    }

    /// Stops a search.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn remove_search(&self, pk: PublicKey) -> Result<(), NetError> {
        self.call(move |n, _| n.dht_mut().remove_search(&pk)).await
    }

    /// Asks the node task to stop; it returns after its loop ends.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
}

/// Starts a node task on `socket` with a fresh DHT key pair from the OS RNG (as c-toxcore makes a
/// new DHT key at every start). `handler` receives every event inside the task.
///
/// # Errors
/// [`NetError::Rng`] when the OS RNG fails, [`NetError::Io`] when the socket has no local address.
pub fn spawn_node(
    socket: UdpSocket,
    options: NodeOptions,
    handler: impl EventHandler,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), NetError> {
    let seed = os_seed().map_err(|e| NetError::Rng(e.to_string()))?;
    let dht_keys = KeyPair::generate(&mut FerryRng::from_seed(seed));
    spawn_node_with_dht_keys(socket, options, dht_keys, handler)
}

/// As [`spawn_node`] with a DHT key pair chosen by the caller (a node that also runs a TCP relay
/// server needs the DHT secret key: it is the relay's key, `tox-protocol.md` §6).
///
/// # Errors
/// As [`spawn_node`].
pub fn spawn_node_with_dht_keys(
    socket: UdpSocket,
    options: NodeOptions,
    dht_keys: KeyPair,
    handler: impl EventHandler,
) -> Result<(NodeHandle, tokio::task::JoinHandle<()>), NetError> {
    let seed = os_seed().map_err(|e| NetError::Rng(e.to_string()))?;
    let mut rng = FerryRng::from_seed(seed);
    let real_keys = options
        .real_keys
        .unwrap_or_else(|| KeyPair::generate(&mut rng));
    let now = Instant::now();
    let mut config = NodeConfig {
        dht: options.dht,
        udp_enabled: !options.no_udp,
        ..NodeConfig::default()
    };
    // DHT-PK `no_replay` must grow across restarts (friends drop smaller ones): Unix seconds,
    // as c-toxcore uses.
    config.onion.no_replay_base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut node = Node::new(config, real_keys, dht_keys, options.nospam, rng, now);
    for (addr, pk) in options.bootstrap {
        node.dht_mut().bootstrap(now, addr, pk);
        // As c-toxcore's `onion_add_bs_path_node`: the first onion path nodes, which a node
        // whose UDP is off or blocked reaches through a relay.
        node.add_onion_path_node(addr, pk);
    }
    for (addr, pk) in options.relays {
        node.add_tcp_relay(now, addr, pk);
    }
    node.set_hosted_relay(options.hosted_relay_port);
    let local_addr = socket.local_addr()?;
    let state = UdpSocketState::new((&socket).into())?;
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (tcp_tx, tcp_rx) = mpsc::channel(TCP_EVENT_QUEUE);
    let driver = Driver {
        tcp_tx,
        tcp_rx,
        tcp_streams: std::collections::HashMap::new(),
        socket,
        state,
        gso: Vec::with_capacity(GSO_MAX_BYTES),
        local_addr,
        node,
        rx,
        handler: Box::new(handler),
        broadcast: Vec::new(),
        broadcast_at: None,
        tcp_onion: None,
        frames: None,
    };
    let join = tokio::spawn(driver.run());
    Ok((
        NodeHandle {
            tx,
            local_addr,
            started: now,
        },
        join,
    ))
}

/// Inputs from relay client streams to the node task.
enum TcpIo {
    Connected(TcpId, mpsc::Sender<Vec<u8>>),
    Bytes(TcpId, Vec<u8>),
    Closed(TcpId),
}

/// Inputs queued from relay client streams to the node task.
const TCP_EVENT_QUEUE: usize = 1024;
/// Writes queued per relay client stream before new ones are dropped (net_crypto retransmits).
const TCP_WRITE_QUEUE: usize = 512;
/// Time allowed for a relay TCP connect.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One relay client stream: its writer queue (once connected) and its I/O task.
struct TcpStreamIo {
    writer: Option<mpsc::Sender<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Opens a relay client stream and pumps it (`tox-protocol.md` §6); reports to the node task.
async fn tcp_stream_task(id: TcpId, addr: SocketAddr, events: mpsc::Sender<TcpIo>) {
    let Ok(Ok(stream)) = tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(addr)).await
    else {
        let _ = events.send(TcpIo::Closed(id)).await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(TCP_WRITE_QUEUE);
    if events.send(TcpIo::Connected(id, wtx)).await.is_err() {
        return;
    }
    let writer = async move {
        while let Some(b) = wrx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let ev = events.clone();
    let reader = async move {
        let mut buf = vec![0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ev.send(TcpIo::Bytes(id, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = writer => {},
        () = reader => {},
    }
    let _ = events.send(TcpIo::Closed(id)).await;
}

struct Driver {
    tcp_tx: mpsc::Sender<TcpIo>,
    tcp_rx: mpsc::Receiver<TcpIo>,
    tcp_streams: std::collections::HashMap<TcpId, TcpStreamIo>,
    socket: UdpSocket,
    state: UdpSocketState,
    /// The GSO batch being built: payloads of equal size back to back.
    gso: Vec<u8>,
    local_addr: SocketAddr,
    node: Node,
    rx: mpsc::Receiver<Command>,
    handler: Box<dyn EventHandler>,
    broadcast: Vec<IpAddr>,
    broadcast_at: Option<Instant>,
    tcp_onion: Option<mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    /// The data path's frame channel, if one is open.
    frames: Option<LossyFrames>,
}

/// The next batch of the frame channel, or never when none is open.
async fn next_batch(frames: &mut Option<LossyFrames>) -> Option<FrameBatch> {
    match frames {
        Some(f) => f.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Receive buffers and metadata for one `recvmmsg` batch, reused across batches.
struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl RecvBufs {
    fn new() -> Self {
        Self {
            bufs: (0..quinn_udp::BATCH_SIZE)
                .map(|_| vec![0u8; RECV_SLOT])
                .collect(),
            meta: vec![RecvMeta::default(); quinn_udp::BATCH_SIZE],
        }
    }
}

/// A GSO batch: where it goes and the size of each segment.
#[derive(Clone, Copy)]
struct Batch {
    dest: SocketAddr,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the batch (it may only be the last segment).
    closed: bool,
}

impl Driver {
    async fn run(mut self) {
        let mut rx = RecvBufs::new();
        tracing::info!(dht_public_key = %self.node.dht().public_key(), addr = %self.local_addr, "node started");
        loop {
            // Let the tasks this one woke run now: a task woken from a runtime worker waits in
            // that worker's LIFO slot, which other workers do not take, until the waker's task
            // yields. A node task kept busy by a transfer finds the socket readable at every
            // turn and would yield only when tokio's cooperative budget runs out (about 128
            // turns, 10–15 ms): an API long-poll woken by an incoming chat message (`ferry
            // messages --follow`) waited that long (issue 6, chat during a transfer).
            tokio::task::yield_now().await;
            self.flush().await;
            let deadline = tokio::time::Instant::from_std(self.node.poll_timeout());
            tokio::select! {
                r = self.socket.readable() => match r {
                    Ok(()) => self.recv_batches(&mut rx),
                    Err(e) => tracing::debug!(error = %e, "readable"),
                },
                cmd = self.rx.recv() => {
                    let mut cmd = cmd;
                    let mut n = 0;
                    loop {
                        match cmd {
                            None | Some(Command::Shutdown) => {
                                // Friends see us go at once (kill packets), not after 32 s.
                                self.node.close_sessions(Instant::now());
                                self.flush().await;
                                for (_, s) in self.tcp_streams.drain() {
                                    s.task.abort();
                                }
                                tracing::info!("node stopped");
                                return;
                            }
                            Some(Command::Run(job)) => job(&mut self.node, Instant::now()),
                            Some(Command::SetTcpOnion(sink)) => self.tcp_onion = Some(sink),
                            Some(Command::SetLossyFrames(f)) => self.frames = Some(f),
                        }
                        n += 1;
                        if n >= COMMANDS_PER_FLUSH {
                            break;
                        }
                        match self.rx.try_recv() {
                            Ok(c) => cmd = Some(c),
                            Err(_) => break,
                        }
                    }
                },
                batch = next_batch(&mut self.frames) => match batch {
                    Some(b) => self.send_frames(b),
                    // The producer went away.
                    None => self.frames = None,
                },
                io = self.tcp_rx.recv() => match io {
                    Some(TcpIo::Connected(id, w)) => {
                        if let Some(s) = self.tcp_streams.get_mut(&id) {
                            s.writer = Some(w);
                            self.node.handle_tcp_connected(Instant::now(), id);
                        }
                    }
                    Some(TcpIo::Bytes(id, b)) if self.tcp_streams.contains_key(&id) => {
                        self.node.handle_tcp_bytes(Instant::now(), id, &b);
                    }
                    Some(TcpIo::Closed(id)) if self.tcp_streams.remove(&id).is_some() => {
                        self.node.handle_tcp_closed(Instant::now(), id);
                    }
                    _ => {}
                },
                _ = tokio::time::sleep_until(deadline) => self.node.handle_timeout(Instant::now()),
            }
        }
    }

    /// Sends the frames of `first` and of up to [`FRAME_BATCHES_PER_FLUSH`] − 1 more queued
    /// batches through the node (each frame one net_crypto lossy packet), returning every batch.
    fn send_frames(&mut self, first: FrameBatch) {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(mut b) = next.take() {
            let now = Instant::now();
            let (mut sent, mut failed, mut bytes) = (0u32, 0u32, 0u64);
            for (to, frame) in b.iter() {
                match self.node.send_custom(now, to, frame) {
                    Ok(()) => sent += 1,
                    Err(_) => {
                        failed += 1;
                        bytes += frame.len().saturating_sub(1) as u64;
                    }
                }
            }
            b.sent = sent;
            b.failed = failed;
            b.failed_bytes = bytes;
            n += 1;
            let Some(f) = self.frames.as_mut() else {
                return;
            };
            // The return channel has room for every batch in flight; if the producer is gone
            // the batch is simply dropped.
            let _ = f.back.try_send(b);
            if n < FRAME_BATCHES_PER_FLUSH {
                next = f.rx.try_recv().ok();
            }
        }
    }

    /// Reads up to [`RECV_BATCHES_PER_FLUSH`] `recvmmsg` batches and feeds every datagram (GRO
    /// groups split at their stride) to the node.
    fn recv_batches(&mut self, rx: &mut RecvBufs) {
        for _ in 0..RECV_BATCHES_PER_FLUSH {
            let mut slices: Vec<IoSliceMut<'_>> =
                rx.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let (socket, state) = (&self.socket, &self.state);
            let r = socket.try_io(Interest::READABLE, || {
                state.recv(socket.into(), &mut slices, &mut rx.meta)
            });
            drop(slices);
            let n = match r {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP port-unreachable and similar surface here on Linux; keep going.
                Err(e) => {
                    tracing::debug!(error = %e, "recv");
                    continue;
                }
            };
            let now = Instant::now();
            for (meta, buf) in rx.meta[..n].iter().zip(&rx.bufs) {
                let stride = meta.stride.max(1);
                for dgram in buf[..meta.len.min(buf.len())].chunks(stride) {
                    if dgram.len() <= MAX_UDP_PACKET_SIZE {
                        self.node.handle_datagram(now, meta.addr, dgram);
                    }
                }
            }
            if n < quinn_udp::BATCH_SIZE {
                return;
            }
        }
    }

    /// Events first (the handler may persist them and command the node), then datagrams,
    /// coalesced into GSO batches where consecutive ones share address and size.
    async fn flush(&mut self) {
        let now = Instant::now();
        while let Some(ev) = self.node.poll_event() {
            tracing::debug!(?ev, "node event");
            self.handler.on_event(&mut self.node, now, ev);
        }
        self.handler.on_flush();
        let max_segments = self.state.max_gso_segments().max(1);
        let mut batch: Option<Batch> = None;
        while let Some(t) = self.node.poll_transmit() {
            match t.destination {
                Destination::Addr(addr) if relay::tcp_client_conn(addr).is_some() => {
                    if let Some(sink) = &self.tcp_onion {
                        let _ = sink.try_send((addr, t.payload));
                    }
                }
                Destination::Addr(addr) => {
                    let Some(dest) = self.map_dest(addr) else {
                        continue;
                    };
                    let len = t.payload.len();
                    let fits = batch.is_some_and(|b| {
                        b.dest == dest
                            && !b.closed
                            && b.count < max_segments
                            && len <= b.segment
                            && self.gso.len() + len <= GSO_MAX_BYTES
                    });
                    if !fits {
                        if let Some(b) = batch.take() {
                            self.send_batch(b).await;
                        }
                        batch = Some(Batch {
                            dest,
                            segment: len,
                            count: 0,
                            closed: false,
                        });
                    }
                    if let Some(b) = batch.as_mut() {
                        self.gso.extend_from_slice(&t.payload);
                        b.count += 1;
                        b.closed = len < b.segment;
                    }
                }
                Destination::LanBroadcast { port } => {
                    for ip in self.broadcast_addrs() {
                        if let Some(dest) = self.map_dest(SocketAddr::new(ip, port)) {
                            self.gso.clear();
                            self.gso.extend_from_slice(&t.payload);
                            let b = Batch {
                                dest,
                                segment: t.payload.len(),
                                count: 1,
                                closed: true,
                            };
                            self.send_batch(b).await;
                        }
                    }
                }
            }
        }
        if let Some(b) = batch.take() {
            self.send_batch(b).await;
        }
        while let Some(c) = self.node.poll_tcp_command() {
            match c {
                TcpCommand::Connect { id, addr } => {
                    let task = tokio::spawn(tcp_stream_task(id, addr, self.tcp_tx.clone()));
                    self.tcp_streams
                        .insert(id, TcpStreamIo { writer: None, task });
                }
                TcpCommand::Send { id, bytes } => {
                    if let Some(w) = self.tcp_streams.get(&id).and_then(|s| s.writer.as_ref()) {
                        // Full queue: dropped, as c-toxcore drops when the socket buffer is full.
                        let _ = w.try_send(bytes);
                    }
                }
                TcpCommand::Close { id } => {
                    if let Some(s) = self.tcp_streams.remove(&id) {
                        s.task.abort();
                    }
                }
            }
        }
    }

    /// A dual-stack socket reaches IPv4 peers through IPv4-mapped addresses; an IPv4 socket
    /// cannot reach IPv6 ones.
    fn map_dest(&self, addr: SocketAddr) -> Option<SocketAddr> {
        match (self.local_addr, addr) {
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => Some(SocketAddr::new(
                IpAddr::V6(v4.ip().to_ipv6_mapped()),
                v4.port(),
            )),
            (SocketAddr::V4(_), SocketAddr::V6(_)) => None,
            _ => Some(addr),
        }
    }

    /// Sends the batch in `self.gso` (one datagram, or a GSO group) and empties it; waits while
    /// the socket buffer is full.
    async fn send_batch(&mut self, b: Batch) {
        let transmit = quinn_udp::Transmit {
            destination: b.dest,
            ecn: None,
            contents: &self.gso,
            segment_size: (b.count > 1).then_some(b.segment),
            src_ip: None,
        };
        loop {
            let (socket, state) = (&self.socket, &self.state);
            match socket.try_io(Interest::WRITABLE, || {
                state.try_send(socket.into(), &transmit)
            }) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = self.socket.writable().await {
                        tracing::debug!(error = %e, "writable");
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, dest = %b.dest, "send");
                    break;
                }
            }
        }
        self.gso.clear();
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
