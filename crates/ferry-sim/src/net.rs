//! The simulated network: a virtual clock, an event queue and seeded links, generic over any
//! sans-IO [`Endpoint`]. Anchors: quinn-proto's `Pair` driver (drive endpoints by hand, no
//! sockets), str0m's seeded `netem` (loss, latency, bandwidth from one seed), FoundationDB-style
//! determinism (one RNG, one ordered event queue, no wall clock in the logic).
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
//! Events are ordered by (virtual time, sequence number); all randomness comes from one
//! [`FerryRng`] seeded by the run seed; node RNGs are forked from it. The same seed gives the same
//! run, bit for bit, whatever the machine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_proto::{Destination, Endpoint};

/// Link parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way latency between the closest nodes, in ms.
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
    pos: (f64, f64),
    uplink_free_at: u64,
    timer_at: Option<u64>,
    traffic: NodeTraffic,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver {
        to: NodeId,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Timer {
        node: NodeId,
    },
}

/// A simulated network of endpoints of type `N`.
pub struct Network<N> {
    base: Instant,
    now_ns: u64,
    seq: u64,
    rng: FerryRng,
    config: LinkConfig,
    slots: Vec<Option<Slot<N>>>,
    by_addr: HashMap<SocketAddr, NodeId>,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    next_ip: u32,
    stats: NetStats,
}

impl<N> std::fmt::Debug for Network<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("now_ns", &self.now_ns)
            .field("live", &self.by_addr.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// First simulated address: 11.0.0.1 (outside every LAN range, so nodes behave as on the
/// internet). Simulated addresses are never sent to by a real socket.
const FIRST_IP: u32 = 0x0B00_0001;
/// The port every simulated node uses.
pub const SIM_PORT: u16 = 33445;

impl<N: Endpoint> Network<N> {
    /// An empty network. `base` is the `Instant` that virtual time 0 maps to (any value works:
    /// only differences matter to the endpoints).
    pub fn new(config: LinkConfig, rng: FerryRng, base: Instant) -> Self {
        Self {
            base,
            now_ns: 0,
            seq: 0,
            rng,
            config,
            slots: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            next_ip: FIRST_IP,
            stats: NetStats::default(),
        }
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
        self.stats
    }

    /// The next free address; every node ever added gets a new one.
    pub fn next_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.next_ip)), SIM_PORT)
    }

    /// Adds a node built by `make(address)`; returns its id.
    pub fn add(&mut self, make: impl FnOnce(SocketAddr, &mut FerryRng) -> N) -> NodeId {
        let addr = self.next_addr();
        self.next_ip += 1;
        let node = make(addr, &mut self.rng);
        let pos = (unit(&mut self.rng), unit(&mut self.rng));
        let id = self.slots.len();
        self.slots.push(Some(Slot {
            node,
            addr,
            pos,
            uplink_free_at: self.now_ns,
            timer_at: None,
            traffic: NodeTraffic::default(),
        }));
        self.by_addr.insert(addr, id);
        self.after_input(id);
        id
    }

    /// Removes a node (it leaves without a word); datagrams in flight to it are dropped.
    pub fn remove(&mut self, id: NodeId) -> Option<N> {
        let slot = self.slots.get_mut(id)?.take()?;
        self.by_addr.remove(&slot.addr);
        Some(slot.node)
    }

    /// The node with id `id`, if live.
    pub fn node(&self, id: NodeId) -> Option<&N> {
        self.slots.get(id)?.as_ref().map(|s| &s.node)
    }

    /// Runs `f` on a live node, then drains its output (call this for every command).
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut N, Instant) -> R) -> Option<R> {
        let now = self.now();
        let slot = self.slots.get_mut(id)?.as_mut()?;
        let r = f(&mut slot.node, now);
        self.after_input(id);
        Some(r)
    }

    /// A node's address.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.slots.get(id)?.as_ref().map(|s| s.addr)
    }

    /// A node's traffic counters.
    pub fn traffic(&self, id: NodeId) -> Option<NodeTraffic> {
        self.slots.get(id)?.as_ref().map(|s| s.traffic)
    }

    /// Ids of the live nodes, in ascending order.
    pub fn live(&self) -> Vec<NodeId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    /// Number of live nodes.
    pub fn live_count(&self) -> usize {
        self.by_addr.len()
    }

    /// Runs events until virtual time `until`, calling `observe(id, node)` after each input to a
    /// node (drain its events there).
    pub fn run_until(&mut self, until: Duration, mut observe: impl FnMut(NodeId, &mut N, Instant)) {
        let until_ns = until.as_nanos() as u64;
        while let Some(Reverse((t, _, _))) = self.queue.peek() {
            if *t > until_ns {
                break;
            }
            let Some(Reverse((t, _, ev))) = self.queue.pop() else {
                break;
            };
            self.now_ns = t;
            let now = self.now();
            match ev {
                Event::Deliver { to, from, bytes } => {
                    let Some(slot) = self.slots.get_mut(to).and_then(Option::as_mut) else {
                        self.stats.undeliverable += 1;
                        continue;
                    };
                    slot.traffic.received += 1;
                    slot.node.handle_datagram(now, from, &bytes);
                    self.stats.delivered += 1;
                    observe(to, &mut slot.node, now);
                    self.after_input(to);
                }
                Event::Timer { node } => {
                    let Some(slot) = self.slots.get_mut(node).and_then(Option::as_mut) else {
                        continue;
                    };
                    if slot.timer_at != Some(t) {
                        continue; // superseded
                    }
                    slot.timer_at = None;
                    slot.node.handle_timeout(now);
                    observe(node, &mut slot.node, now);
                    self.after_input(node);
                }
            }
        }
        self.now_ns = self.now_ns.max(until_ns);
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, ev)));
    }

    /// Drains a node's transmits into the network and (re)arms its timer.
    fn after_input(&mut self, id: NodeId) {
        let now_ns = self.now_ns;
        let mut out = Vec::new();
        let (deadline, from, pos) = {
            let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
                return;
            };
            while let Some(t) = slot.node.poll_transmit() {
                out.push(t);
            }
            let d = slot
                .node
                .poll_timeout()
                .saturating_duration_since(self.base)
                .as_nanos() as u64;
            (d.max(now_ns), slot.addr, slot.pos)
        };
        for t in out {
            self.stats.sent += 1;
            self.stats.sent_bytes += t.payload.len() as u64;
            let Destination::Addr(to_addr) = t.destination else {
                // No LAN in the simulated internet.
                self.stats.undeliverable += 1;
                continue;
            };
            let depart = {
                let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
                    return;
                };
                slot.traffic.sent += 1;
                match self.config.uplink_bytes_per_s {
                    Some(bw) if bw > 0 => {
                        let start = slot.uplink_free_at.max(now_ns);
                        let done = start + (t.payload.len() as u64 * 1_000_000_000) / bw;
                        slot.uplink_free_at = done;
                        done
                    }
                    _ => now_ns,
                }
            };
            if self.config.loss > 0.0 && unit(&mut self.rng) < self.config.loss {
                self.stats.lost += 1;
                continue;
            }
            let Some(&to) = self.by_addr.get(&to_addr) else {
                self.stats.undeliverable += 1;
                continue;
            };
            let to_pos = self.slots[to].as_ref().map(|s| s.pos).unwrap_or(pos);
            let dist = ((pos.0 - to_pos.0).powi(2) + (pos.1 - to_pos.1).powi(2)).sqrt()
                / std::f64::consts::SQRT_2;
            let c = self.config;
            let ms = c.latency_min_ms
                + (c.latency_max_ms - c.latency_min_ms) * dist
                + c.jitter_ms * unit(&mut self.rng);
            let arrive = depart + (ms * 1_000_000.0) as u64;
            self.push(
                arrive,
                Event::Deliver {
                    to,
                    from,
                    bytes: t.payload,
                },
            );
        }
        let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if slot.timer_at.is_none_or(|t| deadline < t) {
            slot.timer_at = Some(deadline);
            self.push(deadline, Event::Timer { node: id });
        }
    }
}

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
        net.run_until(Duration::from_secs(100), |_, _, _| {});
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
        net.run_until(Duration::from_secs(10), |_, _, _| {});
        let got = net.node(rx).expect("rx").received.len();
        assert!((990..=1000).contains(&got), "{got} arrived in 10 s");
        // Unlimited: the first datagram arrives after the pair's latency, 10..=150 ms.
        let (mut net, _, rx) = pair(LinkConfig::default(), Duration::from_secs(1), 10);
        let base = net.now();
        net.run_until(Duration::from_millis(200), |_, _, _| {});
        let first = net.node(rx).expect("rx").received[0].duration_since(base);
        assert!(
            first >= Duration::from_millis(10) && first <= Duration::from_millis(155),
            "{first:?}"
        );
    }
}
