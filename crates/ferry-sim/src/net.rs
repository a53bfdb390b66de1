//! The simulated network: a virtual clock, an event queue and seeded links, generic over any
//! sans-IO [`Endpoint`]. Anchors: quinn-proto's `Pair` driver (drive endpoints by hand, no
//! sockets), str0m's seeded `netem` (loss, latency, bandwidth from one seed), FoundationDB-style
//! determinism (seeded RNGs, totally ordered events, no wall clock in the logic).
//!
//! # Link model
//!
//! Every node gets a random position in a unit square. One-way latency between two nodes is
//! `min + (max − min) × distance / √2` plus uniform jitter, so latency is a property of the pair
//! and roughly obeys the triangle inequality, as on the internet. Each datagram is lost with
//! probability [`LinkConfig::loss`]. A node's uplink sends at most
//! [`LinkConfig::uplink_bytes_per_s`]: datagrams queue behind each other (serialization delay).
//!
//! # Determinism
//!
//! Every event has a total, schedule-independent key: (virtual time, receiving node, sending node,
//! the sender's sequence number); timers are events a node sends itself. Loss and jitter are drawn
//! from the *sender's* link RNG, node RNGs and link RNGs are forked from the run's RNG when a node
//! is added. So each node sees the same inputs in the same order however the nodes are spread
//! over threads: the same seed gives the same run, bit for bit, with 1 thread or many.
//!
//! # Threads (conservative parallel discrete-event simulation)
//!
//! With `threads > 1` the nodes are split into shards (node id mod shards), each with its own
//! event queue, advanced by its own thread. Nothing sent can arrive sooner than the minimum link
//! latency ([`LinkConfig::latency_min_ms`], the lookahead), so each shard publishes a bound, the
//! time before which it will send nothing more (its next event or the others' bounds, whichever
//! is earlier, plus the lookahead), and runs its own events up to the least of the others'
//! bounds (Chandy–Misra–Bryant null messages, as shared-memory atomics). A shard hands its
//! datagrams for another shard to that shard's inbox before it publishes a bound, every few
//! events, so the shards run side by side, at most one lookahead apart, with no barrier and no
//! thread that moves datagrams for the others. Commands ([`Network::with_node`], adding and
//! removing nodes) happen between [`Network::run_until`] calls, when all threads are stopped.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as Atomic};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_proto::{Destination, Endpoint};

/// Link parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way latency between the closest nodes, in ms. It is also the lookahead of a run with
    /// several threads: how far one shard may run ahead of another (a smaller value means more
    /// synchronisation).
    pub latency_min_ms: f64,
    /// One-way latency between the farthest nodes, in ms.
    pub latency_max_ms: f64,
    /// Uniform jitter added per datagram, in ms.
    pub jitter_ms: f64,
    /// Probability that a datagram is lost (0.0–1.0).
    pub loss: f64,
    /// Uplink capacity per node in bytes/s; `None` = unlimited.
    pub uplink_bytes_per_s: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency_min_ms: 10.0,
            latency_max_ms: 150.0,
            jitter_ms: 5.0,
            loss: 0.0,
            uplink_bytes_per_s: None,
        }
    }
}

impl LinkConfig {
    /// The least one-way delay any datagram can have, in ns (the lookahead of the parallel
    /// simulation; 0 = none, which forces one thread).
    fn lookahead_ns(&self) -> u64 {
        let ms = self.latency_min_ms.min(self.latency_max_ms) + self.jitter_ms.min(0.0);
        if ms.is_finite() && ms > 0.0 {
            (ms * 1_000_000.0) as u64
        } else {
            0
        }
    }
}

/// Network-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Bytes handed to the network.
    pub sent_bytes: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams lost by the loss model.
    pub lost: u64,
    /// Datagrams to an address with no live node (departed, never existed, or broadcast).
    pub undeliverable: u64,
}

impl NetStats {
    fn add(&mut self, o: &Self) {
        self.sent += o.sent;
        self.sent_bytes += o.sent_bytes;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.undeliverable += o.undeliverable;
    }
}

/// Per-node traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
}

/// Index of a node slot in the network.
pub type NodeId = usize;

struct Slot<N> {
    node: N,
    addr: SocketAddr,
    /// This node's uplink, bytes/s, overriding [`LinkConfig::uplink_bytes_per_s`].
    uplink: Option<u64>,
    uplink_free_at: u64,
    timer_at: Option<u64>,
    traffic: NodeTraffic,
    /// Loss and jitter of this node's datagrams.
    link_rng: FerryRng,
    /// Sequence number of this node's last event (datagram sent or timer armed).
    seq: u64,
}

/// What an event carries. The sender's address is not stored: it is `Ctx::addrs[src]` (addresses
/// are never reused), which keeps events small for the queue's moves.
enum Payload {
    Deliver(Vec<u8>),
    Timer,
}

/// An event, ordered by (time, receiver, sender, sender's sequence number): a key that does not
/// depend on how nodes are spread over shards. `BinaryHeap` is a max-heap, so `Ord` is reversed.
struct Event {
    at: u64,
    to: NodeId,
    src: NodeId,
    seq: u64,
    payload: Payload,
}

impl Event {
    fn key(&self) -> (u64, NodeId, NodeId, u64) {
        (self.at, self.to, self.src, self.seq)
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

/// What every shard reads and nobody writes while a window runs.
struct Ctx<'a> {
    base: Instant,
    config: LinkConfig,
    by_addr: &'a HashMap<SocketAddr, NodeId>,
    pos: &'a [(f64, f64)],
    /// Address of every node ever added, by id.
    addrs: &'a [SocketAddr],
    shards: usize,
}

/// The nodes `id ≡ index (mod shards)` and their pending events.
struct Shard<N> {
    index: usize,
    /// Slot of node `id` at `id / shards`.
    slots: Vec<Option<Slot<N>>>,
    queue: BinaryHeap<Event>,
    /// Datagrams for other shards, by shard (this shard's own entry stays empty).
    outboxes: Vec<Vec<Event>>,
    stats: NetStats,
}

impl<N: Endpoint> Shard<N> {
    /// Runs this shard's events due before `end` (ns, exclusive).
    fn run(&mut self, end: u64, ctx: &Ctx<'_>) {
        while self.step(end, ctx) {}
    }

    /// Runs this shard's first event if it is due before `end` (ns, exclusive); `false` if none
    /// is.
    fn step(&mut self, end: u64, ctx: &Ctx<'_>) -> bool {
        if self.queue.peek().is_none_or(|e| e.at >= end) {
            return false;
        }
        let Some(ev) = self.queue.pop() else {
            return false;
        };
        let now = ctx.base + Duration::from_nanos(ev.at);
        let Some(slot) = self
            .slots
            .get_mut(ev.to / ctx.shards)
            .and_then(Option::as_mut)
        else {
            if matches!(ev.payload, Payload::Deliver(_)) {
                self.stats.undeliverable += 1;
            }
            return true;
        };
        match ev.payload {
            Payload::Deliver(bytes) => {
                slot.traffic.received += 1;
                let from = ctx.addrs[ev.src];
                slot.node.handle_datagram(now, from, &bytes);
                self.stats.delivered += 1;
            }
            Payload::Timer => {
                if slot.timer_at != Some(ev.at) {
                    return true; // superseded
                }
                slot.timer_at = None;
                slot.node.handle_timeout(now);
            }
        }
        self.after_input(ev.to, ev.at, ctx);
        true
    }

    /// Drains a node's transmits into the network and (re)arms its timer.
    fn after_input(&mut self, id: NodeId, now_ns: u64, ctx: &Ctx<'_>) {
        let Self {
            index,
            slots,
            queue,
            outboxes,
            stats,
        } = self;
        let Some(slot) = slots.get_mut(id / ctx.shards).and_then(Option::as_mut) else {
            return;
        };
        let c = ctx.config;
        let pos = ctx.pos[id];
        while let Some(t) = slot.node.poll_transmit() {
            stats.sent += 1;
            stats.sent_bytes += t.payload.len() as u64;
            let Destination::Addr(to_addr) = t.destination else {
                // No LAN in the simulated internet.
                stats.undeliverable += 1;
                continue;
            };
            slot.traffic.sent += 1;
            let depart = match slot.uplink.or(c.uplink_bytes_per_s) {
                Some(bw) if bw > 0 => {
                    let start = slot.uplink_free_at.max(now_ns);
                    let done = start + (t.payload.len() as u64 * 1_000_000_000) / bw;
                    slot.uplink_free_at = done;
                    done
                }
                _ => now_ns,
            };
            if c.loss > 0.0 && unit(&mut slot.link_rng) < c.loss {
                stats.lost += 1;
                continue;
            }
            let Some(&to) = ctx.by_addr.get(&to_addr) else {
                stats.undeliverable += 1;
                continue;
            };
            let to_pos = ctx.pos[to];
            let dist = ((pos.0 - to_pos.0).powi(2) + (pos.1 - to_pos.1).powi(2)).sqrt()
                / std::f64::consts::SQRT_2;
            let ms = c.latency_min_ms
                + (c.latency_max_ms - c.latency_min_ms) * dist
                + c.jitter_ms * unit(&mut slot.link_rng);
            slot.seq += 1;
            let ev = Event {
                at: depart + (ms * 1_000_000.0) as u64,
                to,
                src: id,
                seq: slot.seq,
                payload: Payload::Deliver(t.payload),
            };
            let shard = to % ctx.shards;
            if shard == *index {
                queue.push(ev);
            } else if let Some(out) = outboxes.get_mut(shard) {
                out.push(ev);
            }
        }
        let deadline = (slot
            .node
            .poll_timeout()
            .saturating_duration_since(ctx.base)
            .as_nanos() as u64)
            .max(now_ns);
        if slot.timer_at.is_none_or(|t| deadline < t) {
            slot.timer_at = Some(deadline);
            slot.seq += 1;
            queue.push(Event {
                at: deadline,
                to: id,
                src: id,
                seq: slot.seq,
                payload: Payload::Timer,
            });
        }
    }
}

/// A simulated network of endpoints of type `N`.
pub struct Network<N> {
    base: Instant,
    now_ns: u64,
    rng: FerryRng,
    config: LinkConfig,
    shards: Vec<Shard<N>>,
    by_addr: HashMap<SocketAddr, NodeId>,
    /// Position of every node ever added, by id.
    pos: Vec<(f64, f64)>,
    /// Address of every node ever added, by id.
    addrs: Vec<SocketAddr>,
    next_ip: u32,
    addr_stride: u32,
}

impl<N> std::fmt::Debug for Network<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("now_ns", &self.now_ns)
            .field("live", &self.by_addr.len())
            .field("threads", &self.shards.len())
            .finish()
    }
}

/// First simulated address: 11.0.0.1 (outside every LAN range, so nodes behave as on the
/// internet). Simulated addresses are never sent to by a real socket.
const FIRST_IP: u32 = 0x0B00_0001;
/// The port every simulated node uses.
pub const SIM_PORT: u16 = 33445;

impl<N: Endpoint + Send> Network<N> {
    /// An empty network run by one thread. `base` is the `Instant` that virtual time 0 maps to
    /// (any value works: only differences matter to the endpoints).
    pub fn new(config: LinkConfig, rng: FerryRng, base: Instant) -> Self {
        Self::with_threads(config, rng, base, 1)
    }

    /// An empty network whose nodes are advanced by `threads` threads (at least 1; 1 when the
    /// links have no minimum latency). The run is the same, bit for bit, for any thread count.
    pub fn with_threads(config: LinkConfig, rng: FerryRng, base: Instant, threads: usize) -> Self {
        let threads = if config.lookahead_ns() == 0 {
            1
        } else {
            threads.max(1)
        };
        Self {
            base,
            now_ns: 0,
            rng,
            config,
            shards: (0..threads)
                .map(|index| Shard {
                    index,
                    slots: Vec::new(),
                    queue: BinaryHeap::new(),
                    outboxes: (0..threads).map(|_| Vec::new()).collect(),
                    stats: NetStats::default(),
                })
                .collect(),
            by_addr: HashMap::new(),
            pos: Vec::new(),
            addrs: Vec::new(),
            next_ip: FIRST_IP,
            addr_stride: 1,
        }
    }

    /// Threads that advance the nodes.
    pub fn threads(&self) -> usize {
        self.shards.len()
    }

    /// The current virtual time as an `Instant`.
    pub fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.now_ns)
    }

    /// Virtual time elapsed since start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now_ns)
    }

    /// The network's RNG (scenarios draw from it so a run stays one deterministic stream).
    pub fn rng(&mut self) -> &mut FerryRng {
        &mut self.rng
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        let mut s = NetStats::default();
        for shard in &self.shards {
            s.add(&shard.stats);
        }
        s
    }

    /// The next free address; every node ever added gets a new one.
    pub fn next_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.next_ip)), SIM_PORT)
    }

    fn slot(&self, id: NodeId) -> Option<&Slot<N>> {
        let n = self.shards.len();
        self.shards[id % n].slots.get(id / n)?.as_ref()
    }

    fn slot_mut(&mut self, id: NodeId) -> Option<&mut Slot<N>> {
        let n = self.shards.len();
        self.shards[id % n].slots.get_mut(id / n)?.as_mut()
    }

    /// Spaces the addresses of nodes added from now on `stride` apart (default 1). A stride of 256
    /// gives every node its own /24, for protocols with per-prefix rules (the value store's
    /// per-/24 quotas and holder diversity).
    pub fn set_addr_stride(&mut self, stride: u32) {
        self.addr_stride = stride.max(1);
    }

    /// Adds a node built by `make(address)`; returns its id.
    pub fn add(&mut self, make: impl FnOnce(SocketAddr, &mut FerryRng) -> N) -> NodeId {
        let addr = self.next_addr();
        self.next_ip = self.next_ip.wrapping_add(self.addr_stride);
        let node = make(addr, &mut self.rng);
        let pos = (unit(&mut self.rng), unit(&mut self.rng));
        let link_rng = self.rng.fork();
        let id = self.pos.len();
        self.pos.push(pos);
        self.addrs.push(addr);
        let n = self.shards.len();
        let shard = &mut self.shards[id % n];
        debug_assert_eq!(shard.slots.len(), id / n, "ids are dealt round-robin");
        shard.slots.push(Some(Slot {
            node,
            addr,
            uplink: None,
            uplink_free_at: self.now_ns,
            timer_at: None,
            traffic: NodeTraffic::default(),
            link_rng,
            seq: 0,
        }));
        self.by_addr.insert(addr, id);
        self.input_done(id);
        id
    }

    /// Removes a node (it leaves without a word); datagrams in flight to it are dropped.
    pub fn remove(&mut self, id: NodeId) -> Option<N> {
        let n = self.shards.len();
        let slot = self.shards[id % n].slots.get_mut(id / n)?.take()?;
        self.by_addr.remove(&slot.addr);
        Some(slot.node)
    }

    /// The node with id `id`, if live.
    pub fn node(&self, id: NodeId) -> Option<&N> {
        self.slot(id).map(|s| &s.node)
    }

    /// The node with id `id`, if live, for changes that send nothing (else use
    /// [`Network::with_node`]).
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut N> {
        self.slot_mut(id).map(|s| &mut s.node)
    }

    /// Runs `f` on a live node, then drains its output (call this for every command).
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut N, Instant) -> R) -> Option<R> {
        let now = self.now();
        let slot = self.slot_mut(id)?;
        let r = f(&mut slot.node, now);
        self.input_done(id);
        Some(r)
    }

    /// Gives node `id` its own uplink capacity in bytes/s (heterogeneous upload), overriding
    /// [`LinkConfig::uplink_bytes_per_s`]; `None` returns it to the network-wide setting.
    pub fn set_uplink(&mut self, id: NodeId, bytes_per_s: Option<u64>) {
        if let Some(slot) = self.slot_mut(id) {
            slot.uplink = bytes_per_s;
        }
    }

    /// A node's address.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.slot(id).map(|s| s.addr)
    }

    /// A node's traffic counters.
    pub fn traffic(&self, id: NodeId) -> Option<NodeTraffic> {
        self.slot(id).map(|s| s.traffic)
    }

    /// Ids of the live nodes, in ascending order.
    pub fn live(&self) -> Vec<NodeId> {
        (0..self.pos.len())
            .filter(|&i| self.slot(i).is_some())
            .collect()
    }

    /// Number of live nodes.
    pub fn live_count(&self) -> usize {
        self.by_addr.len()
    }

    /// Drains a node's output after a command (outside [`Network::run_until`]).
    fn input_done(&mut self, id: NodeId) {
        let ctx = Ctx {
            base: self.base,
            config: self.config,
            by_addr: &self.by_addr,
            pos: &self.pos,
            addrs: &self.addrs,
            shards: self.shards.len(),
        };
        let n = self.shards.len();
        self.shards[id % n].after_input(id, self.now_ns, &ctx);
        let moved: Vec<Event> = self
            .shards
            .iter_mut()
            .flat_map(|s| s.outboxes.iter_mut().flat_map(std::mem::take))
            .collect();
        for ev in moved {
            self.shards[ev.to % n].queue.push(ev);
        }
    }

    /// Runs every event due at or before virtual time `until`.
    pub fn run_until(&mut self, until: Duration) {
        let until_ns = until.as_nanos() as u64;
        if self.shards.len() == 1 {
            let ctx = Ctx {
                base: self.base,
                config: self.config,
                by_addr: &self.by_addr,
                pos: &self.pos,
                addrs: &self.addrs,
                shards: 1,
            };
            self.shards[0].run(until_ns.saturating_add(1), &ctx);
        } else {
            self.run_parallel(until_ns);
        }
        self.now_ns = self.now_ns.max(until_ns);
    }

    /// Conservative parallel run without a global barrier (Chandy–Misra–Bryant style bounds on
    /// shared memory): shard `k`, on its own thread (this one runs shard 0), publishes
    /// `bound[k]`, a time before which it will send nothing more: `min(its next event, the
    /// others' bounds) + lookahead`. It pushes its datagrams for shard `j` into `j`'s inbox
    /// *before* publishing the bound, so once shard `j` has read every other bound `b` and then
    /// drained its inbox, it holds every event for its nodes due before `b` and may run them.
    /// The shards run side by side, each at most one lookahead ahead of the slowest, and wait
    /// only when they catch up with it; no thread moves datagrams for the others.
    fn run_parallel(&mut self, until_ns: u64) {
        let lookahead = self.config.lookahead_ns();
        let n = self.shards.len();
        let stop = until_ns.saturating_add(1);
        let first = self
            .shards
            .iter()
            .filter_map(|s| s.queue.peek().map(|e| e.at))
            .min();
        if first.is_none_or(|t| t >= stop) {
            return;
        }
        let start = first.unwrap_or(stop).saturating_add(lookahead);
        let ports: Vec<Port> = (0..n)
            .map(|_| Port {
                bound: Padded(AtomicU64::new(start)),
                inbox: Padded(Mutex::new(Vec::new())),
            })
            .collect();
        let ctx = Ctx {
            base: self.base,
            config: self.config,
            by_addr: &self.by_addr,
            pos: &self.pos,
            addrs: &self.addrs,
            shards: n,
        };
        let failed = AtomicBool::new(false);
        let mut shards = std::mem::take(&mut self.shards).into_iter();
        let Some(mut first_shard) = shards.next() else {
            return;
        };
        let done: Vec<Shard<N>> = std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(n - 1);
            let mut threads = vec![std::thread::current()];
            for shard in shards {
                let (ctx, ports, failed) = (&ctx, &ports, &failed);
                let (tx, rx) = std::sync::mpsc::channel::<Vec<std::thread::Thread>>();
                let handle = scope.spawn(move || {
                    let mut shard = shard;
                    let _guard = PanicFlag(failed);
                    let threads = rx.recv().unwrap_or_default();
                    shard.run_async(stop, lookahead, ctx, ports, &threads, failed);
                    shard
                });
                threads.push(handle.thread().clone());
                handles.push((handle, tx));
            }
            for (_, tx) in &handles {
                // A worker that cannot get the list runs with no one to wake (it still ends).
                let _ = tx.send(threads.clone());
            }
            {
                let _guard = PanicFlag(&failed);
                first_shard.run_async(stop, lookahead, &ctx, &ports, &threads, &failed);
            }
            let mut done = vec![first_shard];
            for (handle, _) in handles {
                match handle.join() {
                    Ok(shard) => done.push(shard),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            done
        });
        self.shards = done;
        // Datagrams sent to a shard after it had finished (all due after `until_ns`).
        for (shard, port) in self.shards.iter_mut().zip(&ports) {
            let mut inbox = port.inbox.0.lock().unwrap_or_else(PoisonError::into_inner);
            shard.queue.extend(inbox.drain(..));
        }
    }
}

/// A shard's mailbox for the parallel run: its bound (written by it only) and its inbox (written
/// by the others), on separate cache lines so that neither write slows the other's readers.
struct Port {
    bound: Padded<AtomicU64>,
    inbox: Padded<Mutex<Vec<Event>>>,
}

/// A value alone on its (pair of) cache lines: no false sharing between shards.
#[repr(align(128))]
struct Padded<T>(T);

impl<N: Endpoint> Shard<N> {
    /// This shard's part of [`Network::run_parallel`]: runs its events due before `stop` as far
    /// as the other shards' bounds allow, and every [`PUBLISH_EVERY`] events hands over its
    /// datagrams, publishes its own bound and takes the others' new bounds, so no shard waits
    /// for a whole window of another. Returns when every shard's bound has passed `stop` and
    /// nothing of its own is due before it, or when another thread panicked.
    fn run_async(
        &mut self,
        stop: u64,
        lookahead: u64,
        ctx: &Ctx<'_>,
        ports: &[Port],
        threads: &[std::thread::Thread],
        failed: &AtomicBool,
    ) {
        let k = self.index;
        let others_bound = || {
            ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != k)
                .map(|(_, p)| p.bound.0.load(Atomic::Acquire))
                .min()
                .unwrap_or(u64::MAX)
        };
        let mut published = ports[k].bound.0.load(Atomic::Acquire);
        let mut safe = 0;
        loop {
            // Bounds first, inbox second: everything due before `safe` is in the inbox now.
            let fresh = others_bound();
            if fresh != safe {
                safe = fresh;
                let mut inbox = ports[k]
                    .inbox
                    .0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                self.queue.extend(inbox.drain(..));
            }
            let mut ran = 0;
            while ran < PUBLISH_EVERY && self.step(safe.min(stop), ctx) {
                ran += 1;
            }
            for (j, out) in self.outboxes.iter_mut().enumerate() {
                if !out.is_empty() {
                    let mut inbox = ports[j]
                        .inbox
                        .0
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    inbox.append(out);
                }
            }
            let next = self.queue.peek().map_or(u64::MAX, |e| e.at);
            let bound = next.min(safe).saturating_add(lookahead);
            if bound > published {
                published = bound;
                ports[k].bound.0.store(bound, Atomic::Release);
                for (j, t) in threads.iter().enumerate() {
                    if j != k {
                        t.unpark();
                    }
                }
            }
            if ran == PUBLISH_EVERY {
                continue;
            }
            // Nothing left before `safe`: done, or wait for the others to move on.
            if next >= stop && safe >= stop {
                return;
            }
            if !wait_for(|| others_bound() != safe, failed) {
                return;
            }
        }
    }
}

/// Events a shard runs between two hand-overs in a parallel run (a smaller value lets the
/// other shards follow more closely, at the cost of more hand-overs).
const PUBLISH_EVERY: usize = 8;

/// Sets the flag when its thread unwinds, so the other threads stop waiting for it.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Atomic::Release);
        }
    }
}

/// Waits until `ready()`: spins for up to [`SPIN`] (a shard usually waits a few µs for
/// another's next hand-over), then sleeps until unparked (so a waiting thread leaves the core to
/// the one it waits for when cores are shared). `false` if another thread panicked.
fn wait_for(ready: impl Fn() -> bool, failed: &AtomicBool) -> bool {
    let mut spin_start: Option<Instant> = None;
    let mut spins = 0u32;
    while !ready() {
        if failed.load(Atomic::Acquire) {
            return false;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let started = *spin_start.get_or_insert_with(Instant::now);
        if started.elapsed() >= SPIN {
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }
    true
}

/// How long a waiting thread spins before it sleeps.
const SPIN: Duration = Duration::from_micros(100);

/// A uniform f64 in [0, 1) from the RNG (53 random bits).
pub fn unit(rng: &mut FerryRng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// An exponentially distributed delay with the given mean (Poisson process inter-arrival).
pub fn exp_delay(rng: &mut FerryRng, mean: Duration) -> Duration {
    let u = unit(rng).max(1e-12);
    Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use ferry_proto::Transmit;

    /// Sends one datagram to `to` every `every` and counts what it receives.
    struct Beacon {
        to: Option<SocketAddr>,
        next: Instant,
        every: Duration,
        size: usize,
        received: Vec<Instant>,
        out: Vec<Transmit>,
    }

    impl Endpoint for Beacon {
        fn handle_datagram(&mut self, now: Instant, _from: SocketAddr, _bytes: &[u8]) {
            self.received.push(now);
        }
        fn handle_timeout(&mut self, now: Instant) {
            if now >= self.next {
                if let Some(to) = self.to {
                    self.out.push(Transmit {
                        destination: Destination::Addr(to),
                        payload: vec![0; self.size],
                    });
                }
                self.next = now + self.every;
            }
        }
        fn poll_transmit(&mut self) -> Option<Transmit> {
            self.out.pop()
        }
        fn poll_timeout(&self) -> Instant {
            self.next
        }
    }

    fn pair(config: LinkConfig, every: Duration, size: usize) -> (Network<Beacon>, NodeId, NodeId) {
        let base = Instant::now();
        let mut net = Network::new(config, FerryRng::from_u64(5), base);
        let rx = net.add(|_, _| Beacon {
            to: None,
            next: base + Duration::from_secs(1_000_000),
            every,
            size,
            received: vec![],
            out: vec![],
        });
        let rx_addr = net.addr(rx).expect("addr");
        let tx = net.add(|_, _| Beacon {
            to: Some(rx_addr),
            next: base,
            every,
            size,
            received: vec![],
            out: vec![],
        });
        (net, tx, rx)
    }

    #[test]
    fn loss_rate_is_respected() {
        let cfg = LinkConfig {
            loss: 0.2,
            ..LinkConfig::default()
        };
        let (mut net, _, rx) = pair(cfg, Duration::from_millis(10), 10);
        net.run_until(Duration::from_secs(100));
        let got = net.node(rx).expect("rx").received.len() as f64;
        let rate = 1.0 - got / 10_000.0;
        assert!((0.18..0.22).contains(&rate), "loss {rate}");
        // Everything sent was lost or delivered, but the few still in flight at the end.
        let st = net.stats();
        assert!(st.sent - (st.lost + st.delivered) <= 20, "{st:?}");
    }

    #[test]
    fn latency_and_bandwidth() {
        // 1000-byte datagrams every 1 ms over a 100 kB/s uplink: at most 100 per second arrive.
        let cfg = LinkConfig {
            uplink_bytes_per_s: Some(100_000),
            jitter_ms: 0.0,
            ..LinkConfig::default()
        };
        let (mut net, _, rx) = pair(cfg, Duration::from_millis(1), 1000);
        net.run_until(Duration::from_secs(10));
        let got = net.node(rx).expect("rx").received.len();
        assert!((990..=1000).contains(&got), "{got} arrived in 10 s");
        // Unlimited: the first datagram arrives after the pair's latency, 10..=150 ms.
        let (mut net, _, rx) = pair(LinkConfig::default(), Duration::from_secs(1), 10);
        let base = net.now();
        net.run_until(Duration::from_millis(200));
        let first = net.node(rx).expect("rx").received[0].duration_since(base);
        assert!(
            first >= Duration::from_millis(10) && first <= Duration::from_millis(155),
            "{first:?}"
        );
    }
}
