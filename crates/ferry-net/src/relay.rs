//! The tokio driver of the TCP relay server ([`ferry_relay::RelayServer`], `tox-protocol.md` §6).
//!
//! One task owns the state machine. Each listener has an accept task; each accepted stream has a
//! reader task (bytes → the server task over a bounded channel, so a fast sender is paced by
//! TCP) and a writer task fed by a bounded queue of [`WRITE_QUEUE`] frames. When that queue is
//! full the frame is dropped, as c-toxcore drops non-priority packets when a client's socket
//! buffer is full; net_crypto above retransmits.
//!
//! Run loop: after every input (new stream, bytes, EOF, command, timer) the task drains
//! `poll_output` until empty, then sleeps until the next input or `poll_timeout`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use ferry_crypto::rng::{FerryRng, os_seed};
use ferry_crypto::{PublicKey, SecretKey};
use ferry_relay::{ConnId, Output, RelayConfig, RelayServer, RelayStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{NetError, NodeHandle};

/// The synthetic address under which the node's onion layer knows TCP relay client `conn`:
/// `[100::<conn>]:1`, in the IPv6 discard-only prefix 100::/64 (RFC 6666), so it can never be a
/// real peer. The node driver hands transmits to such addresses back to the relay task.
pub fn tcp_client_addr(conn: ConnId) -> std::net::SocketAddr {
    let mut b = [0u8; 16];
    b[0] = 0x01;
    b[8..].copy_from_slice(&conn.to_be_bytes());
    std::net::SocketAddr::new(std::net::Ipv6Addr::from(b).into(), 1)
}

/// The relay client of a [`tcp_client_addr`] address.
pub fn tcp_client_conn(addr: std::net::SocketAddr) -> Option<ConnId> {
    let std::net::IpAddr::V6(ip) = addr.ip() else {
        return None;
    };
    let b = ip.octets();
    if b[..8] != [0x01, 0, 0, 0, 0, 0, 0, 0] || addr.port() != 1 {
        return None;
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&b[8..]);
    Some(u64::from_be_bytes(c))
}

/// Frames queued per stream before new ones are dropped.
pub const WRITE_QUEUE: usize = 256;
/// Bytes read from a stream at once.
const READ_CHUNK: usize = 4096;
/// Onion requests queued from relay clients to the node task before new ones are dropped.
const ONION_QUEUE: usize = 256;
/// Inputs (bytes, EOF, accepts) queued to the server task.
const EVENT_QUEUE: usize = 1024;

enum Event {
    Accepted(TcpStream),
    OnionResponse(ConnId, Vec<u8>),
    Bytes(ConnId, Vec<u8>),
    Eof(ConnId),
}

enum Command {
    Stats(oneshot::Sender<RelayStats>),
    Shutdown,
}

/// A handle on a running relay server task; cheap to clone.
#[derive(Clone, Debug)]
pub struct RelayServerHandle {
    tx: mpsc::Sender<Command>,
    ports: Vec<u16>,
    public_key: PublicKey,
    link_rate: u32,
}

impl RelayServerHandle {
    /// TCP ports listened on.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The relay's public key (the node's DHT key).
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// The per-link limit, bytes/s (0 = none).
    pub fn link_rate(&self) -> u32 {
        self.link_rate
    }

    /// The server's counters.
    ///
    /// # Errors
    /// [`NetError::Stopped`] when the task has ended.
    pub async fn stats(&self) -> Result<RelayStats, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Stops the task and closes every stream.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
}

struct Stream {
    write: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
}

/// Starts a relay server on `listeners` with the node's DHT secret key. With `tap_file`, what
/// the relay could read of the payloads it forwards (at most `config.tap_bytes`) is appended to
/// that file once a second (a test hook).
///
/// # Errors
/// [`NetError::Rng`] when the OS RNG fails, [`NetError::Io`] for a listener without an address.
/// With `node`, onion requests from clients go to that node's onion layer (it is onion node A
/// for them) and its responses come back to the clients; without, they are dropped.
pub fn spawn_relay_server(
    listeners: Vec<TcpListener>,
    dht_secret: SecretKey,
    mut config: RelayConfig,
    tap_file: Option<PathBuf>,
    node: Option<NodeHandle>,
) -> Result<(RelayServerHandle, JoinHandle<()>), NetError> {
    config.onion = node.is_some();
    let seed = os_seed().map_err(|e| NetError::Rng(e.to_string()))?;
    let mut ports = Vec::new();
    for l in &listeners {
        ports.push(l.local_addr()?.port());
    }
    let link_rate = config.link_rate;
    let server = RelayServer::new(config, dht_secret, FerryRng::from_seed(seed));
    let public_key = server.public_key();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let mut acceptors = Vec::new();
    for l in listeners {
        let tx = ev_tx.clone();
        acceptors.push(tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        if tx.send(Event::Accepted(s)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("relay accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    if let Some(node) = &node {
        let (otx, mut orx) = mpsc::channel::<(std::net::SocketAddr, Vec<u8>)>(EVENT_QUEUE);
        let tx = ev_tx.clone();
        let node = node.clone();
        acceptors.push(tokio::spawn(async move {
            if node.set_tcp_onion_sink(otx).await.is_err() {
                return;
            }
            while let Some((addr, data)) = orx.recv().await {
                if let Some(conn) = tcp_client_conn(addr)
                    && tx.send(Event::OnionResponse(conn, data)).await.is_err()
                {
                    return;
                }
            }
        }));
    }
    let onion_tx = node.map(|node| {
        let (q, mut qr) = mpsc::channel::<(std::net::SocketAddr, Vec<u8>)>(ONION_QUEUE);
        acceptors.push(tokio::spawn(async move {
            while let Some((from, body)) = qr.recv().await {
                if node
                    .call(move |n, now| n.handle_tcp_onion_request(now, from, &body))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
        q
    });
    let (tx, rx) = mpsc::channel(16);
    let task = RelayTask {
        onion_tx,
        server,
        streams: HashMap::new(),
        next_id: 1,
        ev_tx,
        tap_file,
    };
    let join = tokio::spawn(async move {
        task.run(ev_rx, rx).await;
        for a in acceptors {
            a.abort();
        }
    });
    Ok((
        RelayServerHandle {
            tx,
            ports,
            public_key,
            link_rate,
        },
        join,
    ))
}

struct RelayTask {
    onion_tx: Option<mpsc::Sender<(std::net::SocketAddr, Vec<u8>)>>,
    server: RelayServer,
    streams: HashMap<ConnId, Stream>,
    next_id: ConnId,
    ev_tx: mpsc::Sender<Event>,
    tap_file: Option<PathBuf>,
}

impl RelayTask {
    async fn run(mut self, mut ev_rx: mpsc::Receiver<Event>, mut rx: mpsc::Receiver<Command>) {
        loop {
            let deadline = self
                .server
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                ev = ev_rx.recv() => match ev {
                    Some(Event::Accepted(s)) => self.accepted(s),
                    Some(Event::OnionResponse(id, data)) => self.server.send_onion_response(id, data),
                    Some(Event::Bytes(id, b)) => self.server.handle_bytes(Instant::now(), id, &b),
                    Some(Event::Eof(id)) => {
                        self.server.closed(id);
                        self.drop_stream(id);
                    }
                    None => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(Command::Stats(tx)) => { let _ = tx.send(self.server.stats()); }
                    Some(Command::Shutdown) | None => break,
                },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.server.handle_timeout(Instant::now());
                    self.flush_tap();
                }
            }
            self.drain();
        }
        self.flush_tap();
        for (_, s) in self.streams.drain() {
            s.reader.abort();
        }
    }

    fn accepted(&mut self, s: TcpStream) {
        let id = self.next_id;
        self.next_id += 1;
        let _ = s.set_nodelay(true);
        let (mut read, mut write) = s.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        tokio::spawn(async move {
            while let Some(frame) = wrx.recv().await {
                if write.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        let ev = self.ev_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = ev.send(Event::Eof(id)).await;
                        return;
                    }
                    Ok(n) => {
                        if ev.send(Event::Bytes(id, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        self.streams.insert(id, Stream { write: wtx, reader });
        self.server.accept(Instant::now(), id);
    }

    fn drop_stream(&mut self, id: ConnId) {
        if let Some(s) = self.streams.remove(&id) {
            s.reader.abort();
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.server.poll_output() {
            match o {
                Output::Send(id, bytes) => {
                    if let Some(s) = self.streams.get(&id) {
                        // Full queue: drop, like a full c-toxcore socket buffer.
                        let _ = s.write.try_send(bytes);
                    }
                }
                Output::Close(id) => self.drop_stream(id),
                Output::OnionRequest(id, body) => {
                    // The node task owns the onion; a bounded queue keeps the relay from
                    // waiting on it (full: dropped, the client's onion retries).
                    if let Some(q) = &self.onion_tx {
                        let _ = q.try_send((tcp_client_addr(id), body));
                    }
                }
            }
        }
    }

    fn flush_tap(&mut self) {
        let tap = self.server.take_tap();
        let Some(path) = &self.tap_file else {
            return;
        };
        if tap.is_empty() {
            return;
        }
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(&tap));
        if let Err(e) = r {
            tracing::warn!("relay tap file {}: {e}", path.display());
        }
    }
}
