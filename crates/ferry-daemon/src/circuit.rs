//! Driver of the tunnel's multi-hop circuits ([`ferry_tunnel::circuit`], issue 7 item 4): owns
//! the node's [`Circuits`] table and moves its cells over net_crypto custom packets
//! (control cells lossless id [`CIRCUIT_CONTROL_ID`] = 180, data cells lossy id
//! [`CIRCUIT_DATA_ID`] = 230), so every circuit link is a friend's net_crypto session.
//!
//! - **Relay** (`ferry up --relay-node`): CREATE/data cells arrive in the node task's event
//!   handler ([`CircuitDriver::on_cell`]); the table rewrites the circuit id and the cell goes
//!   straight back out with [`Node::send_custom`] in the same call: no task hop, no crypto.
//!   A next hop that is not an online friend makes `send_custom` fail, and the table answers
//!   DESTROY(Unreachable) towards the client.
//! - **Client** (`ferry tunnel up --via PK,... --exit PK`): [`CircuitDriver::build`] checks the
//!   first hop is an online friend, sends the CREATE and waits for CREATED; then packets the TUN
//!   reader reads for the far end's mesh address go through the circuit
//!   ([`CircuitDriver::outbound`]) instead of a friend session. A host route with MTU
//!   [`CIRCUIT_MTU`] to that address keeps packets within what a data cell carries; a larger
//!   packet (e.g. the far end's reply before its kernel knows) is answered with an ICMPv6
//!   Packet Too Big written into the TUN device ([`packet_too_big`]), which sets the kernel's
//!   path MTU (RFC 8201).
//! - **Far end** (tunnel up): circuits are accepted in identified mode only (the CREATE proves the
//!   client's long-term key); packets out of them are written to the TUN device if their source
//!   is that client's mesh address and the destination ours, and replies to the client's mesh
//!   address go back through the circuit.
//!
//! - **Exit through a circuit** (`ferry tunnel up --via R1,... --exit E [--route CIDR]...`,
//!   [`CircuitDriver::build_exit`]): the circuit is *anonymous* (E's layer carries no client
//!   key), so E learns only its previous hop. An exit node ([`CircuitDriver::set_exit_node`])
//!   accepts it and names the client by a random per-circuit pseudonym key (never sent
//!   anywhere); the exit control exchange (`ExitControl`, id byte 170 first, which no IP
//!   packet starts with) and all routed IPv4/IPv6 packets ride in the circuit's data cells,
//!   keyed by the far end's key on the client and by the pseudonym on the exit
//!   ([`Delivery::Keyed`], [`CircuitDriver::outbound_keyed`]), so the exit's address pool,
//!   policy and spoof checks ([`crate::exit`]) treat it exactly like a direct client.
//!
//! - **Paid relaying** ([`crate::market`], `ferry up --market`): every data cell is metered
//!   on the link it crosses, against the neighbour that pays for that link (the previous hop
//!   pays the next): cells from a previous hop in [`CircuitDriver::on_cell`] (dropped when the
//!   market gates them), cells to a previous or next hop in `meter_out` before they are sent,
//!   cells from a next hop after they authenticated (where we built the circuit). The end of
//!   every circuit counts the data-cell bytes it received on it and reports the count to the
//!   client inside the circuit every 256 KiB and once a second ([`DELIVERY_COUNT_ID`],
//!   [`CircuitDriver::report_delivery`]), whatever its market state; the client pays its first
//!   relay for upstream cells by these counts.
//!
//! Timeouts and keepalives: a task calls [`Circuits::handle_timeout`] every
//! [`TICK_INTERVAL`].

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::{ApiError, TunnelCircuit};
use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, PublicKey};
use ferry_net::NodeHandle;
use ferry_proto::node::{Connection, Node, NodeError};
use ferry_tunnel::circuit::{
    CIRCUIT_CONTROL_ID, CIRCUIT_DATA_ID, CIRCUIT_MTU, Cell, CellRef, CircuitConfig, CircuitEvent,
    CircuitState, Circuits, DataRoute, DestroyReason, Dir, MAX_RELAYS, Role,
};
use ferry_tunnel::{Ipv6Header, mesh_address};

/// Period of the timeout/keepalive task: 1 s.
pub const TICK_INTERVAL: Duration = Duration::from_secs(1);
/// How long `tunnel up --via` waits for CREATED: 10 s (the table's setup timeout).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// Most open/closed results kept for [`CircuitDriver::build`] to collect: 1024 (then cleared).
pub const MAX_UNCOLLECTED: usize = 1024;

/// Whether `id` is a circuit cell's custom packet id.
pub fn is_circuit_packet(id: Option<&u8>) -> bool {
    matches!(id, Some(&CIRCUIT_CONTROL_ID | &CIRCUIT_DATA_ID))
}

#[derive(Debug)]
struct State {
    table: Circuits,
    /// Far end's mesh address → circuit handle (client side: E; E side: identified client).
    routes: HashMap<Ipv6Addr, u64>,
    /// Handle → (far end key, its mesh address), for circuits we end.
    far: HashMap<u64, (PublicKey, Ipv6Addr)>,
    /// Handles whose CREATED arrived / that closed (with reason), for `build`.
    opened: HashMap<u64, Result<(), DestroyReason>>,
    /// Our mesh address.
    own_addr: Ipv6Addr,
    /// Circuit packets dropped (bad source/destination, unknown circuit, TUN full).
    dropped: u64,
    /// TUN device while circuits may end here (tunnel up).
    device: Option<String>,
    /// Clients of new circuits ending here whose host route MTU the tick task sets (cap
    /// [`MAX_PENDING_ROUTES`]).
    pending_routes: Vec<PublicKey>,
    /// Control cells (CREATE) held for a next hop we just befriended as a service node, until
    /// it comes online or the deadline passes (cap [`MAX_HELD_CELLS`]).
    held: Vec<(Cell, Instant)>,
    /// Keyed circuits (exit routing, module docs): key → handle. Client side: the exit's key;
    /// exit side: the client's pseudonym. At most one entry per circuit (bounded by the table).
    by_key: HashMap<PublicKey, u64>,
    /// Handle → key of keyed circuits.
    keyed: HashMap<u64, PublicKey>,
    /// This node is an exit: accepts anonymous circuits.
    exit_node: bool,
    /// Pseudonyms of keyed circuits that closed on this exit, for the exit table to release
    /// (cap [`MAX_PENDING_ROUTES`]; beyond it the idle eviction frees them).
    released: Vec<PublicKey>,
    /// Pseudonym source.
    rng: FerryRng,
    /// Paid relaying ([`crate::market`]; a handle that is off unless `ferry up --market`).
    market: crate::market::Market,
    /// Data cells the market gated (either direction).
    gated: u64,
    /// Circuits we built → their first hop (whose payment the far end's counts confirm).
    first_hop: HashMap<u64, PublicKey>,
    /// Circuits ending here → (data-cell bytes received on them, the count last reported back
    /// to their client: [`DELIVERY_COUNT_ID`]).
    end_rx: HashMap<u64, (u64, u64)>,
}

/// What came out of a circuit ending here ([`CircuitDriver::on_cell`]).
#[derive(Debug)]
pub enum Delivery {
    /// A mesh IPv6 packet, already checked (source = the far end's mesh address, destination
    /// ours): write it to the TUN device.
    Mesh(Vec<u8>),
    /// A payload of a keyed (exit) circuit, to be handled as if it came from friend `key` (the
    /// exit on a client, the client's pseudonym on an exit): an exit control message (first
    /// byte 170) or an IP packet for the exit role's checks.
    Keyed(PublicKey, Vec<u8>),
}

/// First byte of the in-circuit payload by which a circuit's far end reports the data-cell
/// bytes it received on it: 175 ([`ferry_market::MARKET_PACKET_ID`]; no IP packet starts with
/// it, version nibble 10). Payload: `[175][cumulative bytes (8, BE)]`, every
/// [`DELIVERY_REPORT_BYTES`] and once a second while data arrives
/// ([`CircuitDriver::report_delivery`]). The client pays its first relay for the
/// upstream cells only as far as these counts confirm them ([`crate::market`]).
pub const DELIVERY_COUNT_ID: u8 = ferry_market::MARKET_PACKET_ID;

/// A circuit end reports its count every this many bytes received (and every
/// [`TICK_INTERVAL`]): 256 KiB, so the client's payment for upstream cells lags by at most that
/// much plus one round trip, well inside a server's credit line.
pub const DELIVERY_REPORT_BYTES: u64 = 256 * 1024;

/// The delivery report payload for `cumulative` bytes ([`DELIVERY_COUNT_ID`]).
pub fn delivery_report(cumulative: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = DELIVERY_COUNT_ID;
    p[1..].copy_from_slice(&cumulative.to_be_bytes());
    p
}

/// The count of a delivery report payload ([`DELIVERY_COUNT_ID`]), `None` for anything else.
pub fn delivery_count(payload: &[u8]) -> Option<u64> {
    match payload {
        [DELIVERY_COUNT_ID, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// Most control cells held for next hops coming online: 256 (more fail at once, answered with
/// DESTROY(Unreachable)).
pub const MAX_HELD_CELLS: usize = 256;
/// How long a CREATE waits for a next hop befriended by key to come online: 8 s (within the
/// client's [`BUILD_TIMEOUT`]).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(8);

/// Most far-end host routes waiting for the tick task: 64 (more are skipped; their large
/// packets are then dropped and counted).
pub const MAX_PENDING_ROUTES: usize = 64;

/// What the TUN reader does with a packet ([`CircuitDriver::outbound`]).
#[derive(Debug)]
pub enum Outbound {
    /// Not for a circuit: route it as usual.
    NotCircuit,
    /// For a circuit, but dropped (not open, bad source).
    Dropped,
    /// Larger than [`CIRCUIT_MTU`]: dropped; write this ICMPv6 Packet Too Big to the TUN
    /// device so the kernel lowers its path MTU to the far end (RFC 4443 §3.2, RFC 8201).
    TooBig(Vec<u8>),
    /// Send this cell with `send_custom`.
    Send(Cell),
}

/// The circuit table shared by the node task, the TUN reader and the API.
#[derive(Debug, Default)]
pub struct CircuitDriver {
    state: Mutex<Option<State>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CircuitDriver {
    /// Creates the table for long-term key pair `own`, forwarding for others when `relay`, and
    /// starts the tick task; data cells are metered and gated by `market` (paid relaying,
    /// [`meter_out`]). Called once by `ferry up`.
    ///
    /// # Errors
    /// OS RNG failure.
    pub fn start(
        self: &Arc<Self>,
        node: &NodeHandle,
        own: KeyPair,
        relay: bool,
        market: crate::market::Market,
    ) -> anyhow::Result<()> {
        let seed = ferry_crypto::rng::os_seed().map_err(|e| anyhow::anyhow!("OS RNG: {e}"))?;
        let own_addr = mesh_address(&own.public);
        let config = CircuitConfig {
            relay,
            ..CircuitConfig::default()
        };
        let mut rng = FerryRng::from_seed(seed);
        let pseudonyms = rng.fork();
        *lock(&self.state) = Some(State {
            table: Circuits::new(own, config, rng),
            routes: HashMap::new(),
            far: HashMap::new(),
            opened: HashMap::new(),
            own_addr,
            dropped: 0,
            device: None,
            pending_routes: Vec::new(),
            held: Vec::new(),
            by_key: HashMap::new(),
            keyed: HashMap::new(),
            exit_node: false,
            released: Vec::new(),
            rng: pseudonyms,
            market,
            gated: 0,
            first_hop: HashMap::new(),
            end_rx: HashMap::new(),
        });
        let me = Arc::clone(self);
        let node = node.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(TICK_INTERVAL);
            loop {
                iv.tick().await;
                let m = Arc::clone(&me);
                if node
                    .call(move |n, now| {
                        let _ = m.with(n, now, |t| t.handle_timeout(now));
                        m.report_delivery(n, now);
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                let routes = lock(&me.state).as_mut().and_then(|s| {
                    let d = s.device.clone()?;
                    Some((d, std::mem::take(&mut s.pending_routes)))
                });
                if let Some((device, keys)) = routes.filter(|(_, k)| !k.is_empty()) {
                    let _ = tokio::task::spawn_blocking(move || {
                        for k in keys {
                            Self::route_mtu(&device, &k);
                        }
                    })
                    .await;
                }
            }
        });
        if relay {
            tracing::info!("relay node: forwarding tunnel circuits");
        }
        Ok(())
    }

    /// Whether this node relays.
    pub fn is_relay(&self) -> bool {
        lock(&self.state)
            .as_ref()
            .is_some_and(|s| s.table.config().relay)
    }

    /// Marks this node as an exit: anonymous circuits ending here are accepted as exit
    /// clients ([`Delivery::Keyed`] with a fresh pseudonym each).
    pub fn set_exit_node(&self) {
        if let Some(s) = lock(&self.state).as_mut() {
            s.exit_node = true;
        }
    }

    /// Pseudonyms of exit circuits closed since the last call (the exit releases their
    /// addresses).
    pub fn take_released(&self) -> Vec<PublicKey> {
        lock(&self.state)
            .as_mut()
            .map(|s| std::mem::take(&mut s.released))
            .unwrap_or_default()
    }

    /// Runs `f` on the table, then sends its cells and handles its events (node task).
    /// Returns what came out of circuits ending here.
    fn with(&self, node: &mut Node, now: Instant, f: impl FnOnce(&mut Circuits)) -> Vec<Delivery> {
        let mut g = lock(&self.state);
        let Some(s) = g.as_mut() else {
            return Vec::new();
        };
        f(&mut s.table);
        flush(s, node, now)
    }

    /// A circuit cell from neighbour `from` (event handler, node task); returns what came out
    /// of circuits ending here ([`Delivery`]).
    ///
    /// Paid relaying ([`crate::market`]): a data cell from a circuit's previous hop is metered
    /// against it and dropped if the market gates it (receipted to it at once where the
    /// circuit ends here, as the next hop confirms it where we relay); one from a circuit's
    /// next hop is counted as received from it (on a circuit we built, only if it
    /// authenticates).
    pub fn on_cell(
        &self,
        node: &mut Node,
        now: Instant,
        from: PublicKey,
        data: Vec<u8>,
    ) -> Vec<Delivery> {
        let mut g = lock(&self.state);
        let Some(s) = g.as_mut() else {
            return Vec::new();
        };
        let len = data.len();
        let route = s.table.data_cell_route(&from, &data);
        if let Some(DataRoute {
            dir: Dir::Forward,
            next,
            ..
        }) = route
            && !s.market.circuit_forward(&from, next.as_ref(), len)
        {
            s.gated += 1;
            return flush(s, node, now);
        }
        let auth = s.table.drops().auth;
        s.table.handle_cell(now, from, data);
        if s.table.drops().auth == auth {
            match route {
                Some(DataRoute {
                    dir: Dir::Backward, ..
                }) => s.market.circuit_received(&from, len),
                // Delivered here: counted for the client's report ([`DELIVERY_COUNT_ID`]).
                Some(DataRoute {
                    dir: Dir::Forward,
                    next: None,
                    handle,
                }) => {
                    let e = s.end_rx.entry(handle).or_default();
                    e.0 = e.0.saturating_add(len as u64);
                    if e.0 >= e.1.saturating_add(DELIVERY_REPORT_BYTES)
                        && s.table.send(now, handle, &delivery_report(e.0)).is_ok()
                    {
                        e.1 = e.0;
                    }
                }
                _ => {}
            }
        }
        flush(s, node, now)
    }

    /// Tick: sends each client of a circuit ending here the data-cell bytes received on it,
    /// if more than at the last report, as one in-circuit payload `[DELIVERY_COUNT_ID]
    /// [cumulative (8, BE)]`, sealed under the end-to-end key like any data cell (node task).
    /// [`CircuitDriver::on_cell`] also reports every [`DELIVERY_REPORT_BYTES`].
    pub fn report_delivery(&self, node: &mut Node, now: Instant) {
        let mut g = lock(&self.state);
        let Some(s) = g.as_mut() else { return };
        let mut any = false;
        for (&h, e) in &mut s.end_rx {
            if e.0 == e.1 {
                continue;
            }
            if s.table.send(now, h, &delivery_report(e.0)).is_ok() {
                e.1 = e.0;
                any = true;
            }
        }
        if any {
            let _ = flush(s, node, now);
        }
    }

    /// Data cells the market gated so far.
    pub fn gated(&self) -> u64 {
        lock(&self.state).as_ref().map_or(0, |s| s.gated)
    }

    /// Counts a packet the TUN device refused.
    pub fn count_dropped(&self) {
        if let Some(s) = lock(&self.state).as_mut() {
            s.dropped += 1;
        }
    }

    /// Neighbour `peer` came online: control cells held for it go out.
    pub fn peer_online(&self, node: &mut Node, now: Instant) {
        let _ = self.with(node, now, |_| {});
    }

    /// Neighbour `peer` went offline.
    pub fn peer_gone(&self, node: &mut Node, now: Instant, peer: PublicKey) {
        let _ = self.with(node, now, |t| t.peer_gone(&peer));
    }

    /// Tunnel up (`Some(device)`) / down (`None`): accept circuits ending here only while the TUN device exists. Down also
    /// tears down circuits we end or built.
    pub async fn set_end(self: &Arc<Self>, node: &NodeHandle, device: Option<String>) {
        let on = device.is_some();
        if let Some(s) = lock(&self.state).as_mut() {
            s.device = device;
            s.pending_routes.clear();
        }
        let me = Arc::clone(self);
        let _ = node
            .call(move |n, now| {
                let _ = me.with(n, now, |t| {
                    t.config_mut().accept_end = on;
                    if !on {
                        for c in t.info() {
                            if c.role != Role::Relay {
                                t.destroy(c.handle, DestroyReason::Requested);
                            }
                        }
                    }
                });
            })
            .await;
    }

    /// Builds a circuit through `relays` to `end` (identified mode) and waits for CREATED.
    /// Returns the handle.
    ///
    /// # Errors
    /// 400 for a bad path, 409 when the first hop is not an online friend (until service mode
    /// befriends relays by key), 504 when no CREATED came in [`BUILD_TIMEOUT`], 502 with the
    /// DESTROY reason when a hop refused.
    pub async fn build(
        self: &Arc<Self>,
        node: &NodeHandle,
        relays: Vec<PublicKey>,
        end: PublicKey,
    ) -> Result<u64, ApiError> {
        let h = self.build_inner(node, relays, end, true).await?;
        let addr = mesh_address(&end);
        if let Some(s) = lock(&self.state).as_mut() {
            s.routes.insert(addr, h);
            s.far.insert(h, (end, addr));
        }
        Ok(h)
    }

    /// Builds an anonymous circuit through `relays` to the exit `exit` and waits for CREATED;
    /// afterwards payloads for `exit` ([`CircuitDriver::outbound_keyed`],
    /// [`CircuitDriver::send_keyed`]) go through it and its payloads come out as
    /// [`Delivery::Keyed`] from `exit`. Returns the handle.
    ///
    /// # Errors
    /// As [`CircuitDriver::build`]; 502 with reason "not accepting" when `exit` is no exit node.
    pub async fn build_exit(
        self: &Arc<Self>,
        node: &NodeHandle,
        relays: Vec<PublicKey>,
        exit: PublicKey,
    ) -> Result<u64, ApiError> {
        let h = self.build_inner(node, relays, exit, false).await?;
        if let Some(s) = lock(&self.state).as_mut() {
            if let Some(old) = s.by_key.insert(exit, h) {
                s.keyed.remove(&old);
            }
            s.keyed.insert(h, exit);
        }
        Ok(h)
    }

    /// The open exit circuit to `exit` (client side), if any.
    pub fn exit_circuit(&self, exit: &PublicKey) -> Option<TunnelCircuit> {
        let h = *lock(&self.state).as_ref()?.by_key.get(exit)?;
        self.status().into_iter().find(|c| c.id == h)
    }

    /// Sends `payload` through the keyed circuit of `key` (node task); `false` when there is
    /// none or it is not open.
    pub fn send_keyed(
        &self,
        node: &mut Node,
        now: Instant,
        key: &PublicKey,
        payload: &[u8],
    ) -> bool {
        let mut g = lock(&self.state);
        let Some(s) = g.as_mut() else {
            return false;
        };
        let ok = s
            .by_key
            .get(key)
            .is_some_and(|&h| s.table.send(now, h, payload).is_ok());
        // Sending yields no deliveries (events come from cells and timeouts, flushed there).
        let _ = flush(s, node, now);
        ok
    }

    /// TUN reader hook for a packet the exit role routed to friend `key`: `None` when `key`
    /// has no keyed circuit (send it to the friend), else what to do
    /// ([`Outbound::TooBig`] for IPv6 only; larger IPv4 packets are dropped).
    pub fn outbound_keyed(&self, key: &PublicKey, pkt: &[u8]) -> Option<Outbound> {
        let mut g = lock(&self.state);
        let s = g.as_mut()?;
        let &handle = s.by_key.get(key)?;
        if pkt.len() > CIRCUIT_MTU {
            return Some(match Ipv6Header::parse(pkt) {
                Ok(h) => Outbound::TooBig(packet_too_big(pkt, &h)),
                Err(_) => Outbound::Dropped,
            });
        }
        if s.table.send(Instant::now(), handle, pkt).is_err() {
            return Some(Outbound::Dropped);
        }
        Some(s.table.poll_transmit().map_or(Outbound::Dropped, |c| {
            if meter_out(&s.market, &c) {
                Outbound::Send(c)
            } else {
                s.gated += 1;
                Outbound::Dropped
            }
        }))
    }

    async fn build_inner(
        self: &Arc<Self>,
        node: &NodeHandle,
        relays: Vec<PublicKey>,
        end: PublicKey,
        identified: bool,
    ) -> Result<u64, ApiError> {
        if relays.len() > MAX_RELAYS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_RELAYS} relays in --via"
            )));
        }
        let first = relays.first().copied().unwrap_or(end);
        let friends = node
            .call(|n, _| n.friends())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        match friends.iter().find(|f| f.public_key == first) {
            None => {
                return Err(ApiError::conflict(format!(
                    "first hop {first} is not a friend (add it first)"
                )));
            }
            Some(f) if f.connection == Connection::None => {
                return Err(ApiError::conflict(format!("first hop {first} is offline")));
            }
            Some(_) => {}
        }
        let me = Arc::clone(self);
        let r = node
            .call(move |n, now| {
                let mut out = Err(ferry_tunnel::circuit::CircuitError::NoCircuit);
                let _ = me.with(n, now, |t| out = t.create(now, &relays, end, identified));
                out
            })
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let h = r.map_err(|e| ApiError::bad_request(format!("circuit: {e}")))?;
        if let Some(s) = lock(&self.state).as_mut() {
            s.first_hop.insert(h, first);
        }
        let start = Instant::now();
        loop {
            let res = lock(&self.state).as_mut().and_then(|s| s.opened.remove(&h));
            match res {
                Some(Ok(())) => break,
                Some(Err(reason)) => {
                    // Closed already (maybe before `first_hop` had it).
                    if let Some(s) = lock(&self.state).as_mut() {
                        s.first_hop.remove(&h);
                    }
                    return Err(ApiError {
                        status: 502,
                        message: format!("circuit refused: {reason}"),
                    });
                }
                None if start.elapsed() > BUILD_TIMEOUT + TICK_INTERVAL => {
                    if let Some(s) = lock(&self.state).as_mut() {
                        s.first_hop.remove(&h);
                    }
                    return Err(ApiError {
                        status: 504,
                        message: "circuit setup timed out".into(),
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Ok(h)
    }

    /// Adds the host route with MTU [`CIRCUIT_MTU`] for a circuit's far end on `device`
    /// (best effort: a failure only means larger packets are dropped and counted).
    pub fn route_mtu(device: &str, end: &PublicKey) {
        let addr = mesh_address(end);
        let r = std::process::Command::new("ip")
            .args([
                "-6",
                "route",
                "replace",
                &format!("{addr}/128"),
                "dev",
                device,
            ])
            .args(["mtu", &CIRCUIT_MTU.to_string()])
            .output();
        if !r.is_ok_and(|o| o.status.success()) {
            tracing::warn!(%addr, "could not set the circuit route MTU");
        }
    }

    /// TUN reader hook: the cell for `pkt` when its destination is a circuit's far end.
    pub fn outbound(&self, pkt: &[u8]) -> Outbound {
        let Ok(h) = Ipv6Header::parse(pkt) else {
            return Outbound::NotCircuit;
        };
        let mut g = lock(&self.state);
        let Some(s) = g.as_mut() else {
            return Outbound::NotCircuit;
        };
        let Some(&handle) = s.routes.get(&h.dst) else {
            return Outbound::NotCircuit;
        };
        if h.src != s.own_addr {
            return Outbound::Dropped;
        }
        if pkt.len() > CIRCUIT_MTU {
            return Outbound::TooBig(packet_too_big(pkt, &h));
        }
        if s.table.send(Instant::now(), handle, pkt).is_err() {
            return Outbound::Dropped;
        }
        s.table.poll_transmit().map_or(Outbound::Dropped, |c| {
            if meter_out(&s.market, &c) {
                Outbound::Send(c)
            } else {
                s.gated += 1;
                Outbound::Dropped
            }
        })
    }

    /// Sends a cell from [`CircuitDriver::outbound`] (TUN reader task).
    pub async fn send(node: &NodeHandle, cell: Cell) {
        let _ = node
            .call(move |n, now| n.send_custom(now, &cell.to, &cell.data))
            .await;
    }

    /// `tunnel status` rows.
    pub fn status(&self) -> Vec<TunnelCircuit> {
        let g = lock(&self.state);
        let Some(s) = g.as_ref() else {
            return Vec::new();
        };
        s.table
            .info()
            .into_iter()
            .map(|c| TunnelCircuit {
                id: c.handle,
                role: match c.role {
                    Role::Client => "client",
                    Role::Relay => "relay",
                    Role::End => "end",
                }
                .into(),
                hops: c.hops.iter().map(PublicKey::to_hex).collect(),
                far_end: c.far_end.map(|k| k.to_hex()),
                state: match c.state {
                    CircuitState::Pending => "pending",
                    CircuitState::Open => "open",
                }
                .into(),
                tx_bytes: c.counters.tx_bytes,
                rx_bytes: c.counters.rx_bytes,
                tx_packets: c.counters.tx_packets,
                rx_packets: c.counters.rx_packets,
                rtt_ms: c.rtt_ms,
            })
            .collect()
    }
}

/// Largest ICMPv6 error packet, bytes: 1280, the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
const ICMP_ERROR_MAX: usize = 1280;

/// An ICMPv6 Packet Too Big (type 2, code 0, MTU [`CIRCUIT_MTU`]) about `pkt`, from its
/// destination (the far end) to its source (us), quoting as much of `pkt` as fits in 1280
/// bytes: `[IPv6 header 40][type 2][code 0][checksum 2][MTU 4][invoking packet...]`.
pub fn packet_too_big(pkt: &[u8], h: &Ipv6Header) -> Vec<u8> {
    let quoted = &pkt[..pkt.len().min(ICMP_ERROR_MAX - 48)];
    let icmp_len = 8 + quoted.len();
    let mut v = Vec::with_capacity(40 + icmp_len);
    v.extend_from_slice(&[0x60, 0, 0, 0]);
    v.extend_from_slice(&(icmp_len as u16).to_be_bytes());
    v.push(58); // next header: ICMPv6
    v.push(64); // hop limit
    v.extend_from_slice(&h.dst.octets());
    v.extend_from_slice(&h.src.octets());
    v.extend_from_slice(&[2, 0, 0, 0]);
    v.extend_from_slice(&(CIRCUIT_MTU as u32).to_be_bytes());
    v.extend_from_slice(quoted);
    // Checksum over the pseudo-header (src, dst, length, next header) and the message.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += u32::from(w);
        }
    };
    add(&v[8..40]);
    add(&(icmp_len as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&v[40..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    v[42..44].copy_from_slice(&ck.to_be_bytes());
    v
}

/// Meters a cell about to go to its neighbour `cell.to` (paid relaying, [`crate::market`]):
/// a data cell travelling forward goes to its circuit's next hop, which we pay for it
/// ([`crate::market::Market::circuit_sent`]); one travelling backward goes to the previous hop,
/// which pays us and may be gated ([`crate::market::Market::circuit_reply`]). Control cells are
/// not metered. `false`: drop it.
fn meter_out(market: &crate::market::Market, cell: &Cell) -> bool {
    match CellRef::decode(&cell.data) {
        Ok(CellRef::Data {
            dir: Dir::Forward, ..
        }) => {
            market.circuit_sent(&cell.to, cell.data.len());
            true
        }
        Ok(CellRef::Data {
            dir: Dir::Backward, ..
        }) => market.circuit_reply(&cell.to, cell.data.len()),
        _ => true,
    }
}

/// Sends the table's cells and handles its events; returns the IP packets to write to TUN.
fn flush(s: &mut State, node: &mut Node, now: Instant) -> Vec<Delivery> {
    // Held cells whose next hop came online go first; expired ones fail.
    let mut retry = Vec::new();
    let mut i = 0;
    while i < s.held.len() {
        let online = node
            .friends()
            .iter()
            .any(|f| f.public_key == s.held[i].0.to && f.connection != Connection::None);
        if online || now >= s.held[i].1 {
            retry.push(s.held.swap_remove(i).0);
        } else {
            i += 1;
        }
    }
    for cell in retry {
        if node.send_custom(now, &cell.to, &cell.data).is_err() {
            s.table.send_failed(&cell);
        }
    }
    while let Some(cell) = s.table.poll_transmit() {
        if !meter_out(&s.market, &cell) {
            s.gated += 1;
            continue;
        }
        match node.send_custom(now, &cell.to, &cell.data) {
            Ok(()) => {}
            // A CREATE to a next hop that is no friend of ours: befriend it as a service node
            // (relays and exits accept anyone who knows their key) and hold the cell until it
            // comes online.
            Err(NodeError::NotFriend | NodeError::NotOnline)
                if cell.data.first() == Some(&CIRCUIT_CONTROL_ID)
                    && s.held.len() < MAX_HELD_CELLS =>
            {
                if !node.friends().iter().any(|f| f.public_key == cell.to) {
                    let id = ferry_tunnel::service_tox_id(&cell.to);
                    if let Err(e) = node.add_friend(now, &id, crate::chat::SERVICE_REQUEST_MESSAGE)
                    {
                        tracing::debug!(to = %cell.to, "cannot befriend next hop: {e}");
                        s.table.send_failed(&cell);
                        continue;
                    }
                    tracing::info!(next = %cell.to, "befriending next hop (service node)");
                }
                s.held.push((cell, now + HOLD_TIMEOUT));
            }
            Err(e) => {
                tracing::debug!(to = %cell.to, "circuit cell not sent: {e}");
                s.table.send_failed(&cell);
            }
        }
    }
    let mut deliver = Vec::new();
    let mut again = false;
    while let Some(e) = s.table.poll_event() {
        match e {
            CircuitEvent::Open { handle } => {
                s.opened.insert(handle, Ok(()));
            }
            CircuitEvent::Incoming { handle, client } => match client {
                Some(k) => {
                    let addr = mesh_address(&k);
                    tracing::info!(client = %k, "circuit ends here");
                    s.routes.insert(addr, handle);
                    s.far.insert(handle, (k, addr));
                    if s.pending_routes.len() < MAX_PENDING_ROUTES {
                        s.pending_routes.push(k);
                    }
                }
                None if s.exit_node => {
                    // An exit client through a circuit: known to the exit table by a fresh
                    // random pseudonym only.
                    let pseudonym = PublicKey(s.rng.bytes::<32>());
                    tracing::info!(handle, "exit circuit ends here");
                    s.by_key.insert(pseudonym, handle);
                    s.keyed.insert(handle, pseudonym);
                }
                None => {
                    // Anonymous circuits end at exits only.
                    s.table.destroy(handle, DestroyReason::NotAccepting);
                    again = true;
                }
            },
            CircuitEvent::Data { handle, packet } => {
                // The far end's delivery count on a circuit we built (paid relaying).
                if let Some(first) = s.first_hop.get(&handle)
                    && let Some(count) = delivery_count(&packet)
                {
                    s.market.circuit_confirmed(first, handle, count);
                    continue;
                }
                if let Some(&k) = s.keyed.get(&handle) {
                    deliver.push(Delivery::Keyed(k, packet));
                    continue;
                }
                let Some(&(_, far)) = s.far.get(&handle) else {
                    s.dropped += 1;
                    continue;
                };
                match Ipv6Header::parse(&packet) {
                    Ok(h) if h.src == far && h.dst == s.own_addr => {
                        deliver.push(Delivery::Mesh(packet));
                    }
                    _ => s.dropped += 1,
                }
            }
            CircuitEvent::Closed { handle, reason } => {
                tracing::info!(handle, %reason, "circuit closed");
                s.opened.insert(handle, Err(reason));
                s.first_hop.remove(&handle);
                s.end_rx.remove(&handle);
                if let Some((_, addr)) = s.far.remove(&handle)
                    && s.routes.get(&addr) == Some(&handle)
                {
                    s.routes.remove(&addr);
                }
                if let Some(k) = s.keyed.remove(&handle) {
                    if s.by_key.get(&k) == Some(&handle) {
                        s.by_key.remove(&k);
                    }
                    if s.exit_node && s.released.len() < MAX_PENDING_ROUTES {
                        s.released.push(k);
                    }
                }
            }
        }
    }
    // Forget build results nobody collected (cap).
    if s.opened.len() > MAX_UNCOLLECTED {
        s.opened.clear();
    }
    if again {
        deliver.extend(flush(s, node, now));
    }
    deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_counts_parse_exactly() {
        let mut p = delivery_report(0x0102_0304_0506_0708).to_vec();
        assert_eq!(delivery_count(&p), Some(0x0102_0304_0506_0708));
        assert_eq!(delivery_count(&p[..8]), None);
        p.push(0);
        assert_eq!(delivery_count(&p), None);
        // IP packets never parse as one.
        assert_eq!(delivery_count(&[0x45; 9]), None);
        assert_eq!(delivery_count(&[0x60; 9]), None);
        assert_eq!(delivery_count(&[]), None);
    }

    #[test]
    fn packet_too_big_checksums_and_quotes() {
        let src = mesh_address(&PublicKey([1; 32]));
        let dst = mesh_address(&PublicKey([2; 32]));
        let mut pkt = vec![0u8; 1348];
        pkt[0] = 0x60;
        pkt[4..6].copy_from_slice(&1308u16.to_be_bytes());
        pkt[6] = 58;
        pkt[8..24].copy_from_slice(&src.octets());
        pkt[24..40].copy_from_slice(&dst.octets());
        let h = Ipv6Header::parse(&pkt).expect("valid");
        let v = packet_too_big(&pkt, &h);
        assert_eq!(v.len(), 1280);
        let back = Ipv6Header::parse(&v).expect("valid ICMPv6 packet");
        assert_eq!((back.src, back.dst, back.next_header), (dst, src, 58));
        assert_eq!(&v[40..42], &[2, 0]);
        assert_eq!(&v[44..48], &(CIRCUIT_MTU as u32).to_be_bytes());
        assert_eq!(&v[48..], &pkt[..1232]);
        // The one's-complement sum over pseudo-header and message, checksum included, is 0xffff.
        let mut sum: u32 = 0;
        let words = |b: &[u8], sum: &mut u32| {
            for c in b.chunks(2) {
                *sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        words(&v[8..40], &mut sum);
        words(&((v.len() - 40) as u32).to_be_bytes(), &mut sum);
        words(&[0, 0, 0, 58], &mut sum);
        words(&v[40..], &mut sum);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
