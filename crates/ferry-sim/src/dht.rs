//! DHT scenarios over the real [`Dht`] state machine: bootstrap, lookup, churn and idle traffic
//! (issue 3).
//!
//! A run has two phases:
//!
//! 1. **Warm-up** ([`DhtScenario::warmup`]): 3 seed nodes, then every other node joins at a uniform
//!    random moment of the join window, bootstrapping from the seeds. Every 10 s the good
//!    close-list entries of all nodes are summed; the *bootstrap time* is the first moment after
//!    which every node has a full-enough close list and the sum moves less than 1 % for 60 s.
//!    The last [`DhtScenario::idle_window`] of the warm-up, with no lookups, measures the idle
//!    chatter per node.
//! 2. **Lookups and churn**: each node starts lookups at Poisson moments
//!    ([`DhtScenario::lookups_per_node_hour`]) for the DHT key of a random live node — Tox's
//!    friend-search path ([`Dht::add_search`]); a lookup succeeds when the target answers the
//!    searcher directly, within [`DhtScenario::lookup_timeout`]. Lookups whose target leaves
//!    before the deadline are not counted. Churn replaces a random non-seed node by a fresh one
//!    (new keys, new address, bootstrapping from the seeds) at `churn_per_hour × nodes` per hour.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, KeySource, PrecomputedKey, PublicKey, SecretKey};
use ferry_proto::Endpoint;
use ferry_proto::Transmit;
use ferry_proto::dht::{Dht, DhtConfig, DhtEvent};
use serde::Serialize;
use std::net::SocketAddr;

use crate::net::{LinkConfig, Network, NodeId, exp_delay};

/// Parameters of a DHT run.
#[derive(Clone, Debug)]
pub struct DhtScenario {
    /// Nodes at any moment (seeds included).
    pub nodes: usize,
    /// Seed (bootstrap) nodes; they never leave.
    pub seeds: usize,
    /// Fraction of the nodes replaced per hour (0.3 = 30 %/h).
    pub churn_per_hour: f64,
    /// Links.
    pub link: LinkConfig,
    /// Total simulated time.
    pub duration: Duration,
    /// Warm-up before lookups and churn start.
    pub warmup: Duration,
    /// Window in which the non-seed nodes join.
    pub join_window: Duration,
    /// Last part of the warm-up over which idle traffic is measured.
    pub idle_window: Duration,
    /// Lookups each node starts per hour.
    pub lookups_per_node_hour: f64,
    /// A lookup not resolved within this time fails.
    pub lookup_timeout: Duration,
    /// Run seed: same seed, same run.
    pub seed: u64,
    /// Threads advancing the nodes (the report is the same for any count).
    pub threads: usize,
    /// How a pair of nodes derives its shared `crypto_box` key (the report is the same either
    /// way; only the wall time differs).
    pub key_agreement: KeyAgreement,
}

/// How simulated nodes derive the `crypto_box` key of a pair (`crypto_box_beforenm`).
///
/// A run's protocol results do not depend on the choice: every packet is still encrypted and
/// authenticated with XSalsa20-Poly1305 by the real code, both ends still agree on one key per
/// pair, and a node still counts a key-cache miss where it would run X25519; the test
/// `key_agreement_does_not_change_the_run` checks that the reports are equal. X25519 costs
/// ≈ 40–90 µs on this machine and a 10,000-node hour meets millions of pairs, so the hashed
/// agreement is the default ([`DhtScenario::new`], `ferry sim dht`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAgreement {
    /// Real X25519 + HSalsa20, computed once per pair for the whole network ([`PairMemo`]).
    X25519,
    /// The first 32 bytes of SHA-512(`"ferry-sim beforenm"` ‖ lower public key ‖ higher public
    /// key) ([`HashedKeys`]): no X25519, ≈ 1 µs per pair. The default.
    #[default]
    Hashed,
}

impl DhtScenario {
    /// A scenario of `nodes` nodes over `hours` simulated hours with the defaults:
    /// 3 seeds, a 10-minute warm-up (joins in the first 2 minutes, idle measured over the last 5),
    /// 6 lookups per node and hour, 60 s lookup timeout, no churn, no loss, one thread, hashed key
    /// agreement.
    pub fn new(nodes: usize, hours: f64, seed: u64) -> Self {
        let duration = Duration::from_secs_f64((hours * 3600.0).max(60.0));
        let warmup = Duration::from_secs(600).min(duration / 2);
        Self {
            nodes,
            seeds: 3,
            churn_per_hour: 0.0,
            link: LinkConfig::default(),
            duration,
            warmup,
            join_window: Duration::from_secs(120).min(warmup / 3),
            idle_window: Duration::from_secs(300).min(warmup / 3),
            lookups_per_node_hour: 6.0,
            lookup_timeout: Duration::from_secs(60),
            seed,
            // One thread unless asked: tests run side by side under nextest, and a sharded run
            // stalls whenever another process takes a core (`ferry sim dht` picks the idle cores).
            threads: 1,
            key_agreement: KeyAgreement::Hashed,
        }
    }
}

/// The default [`DhtScenario::threads`]: the machine's cores that are not already busy (cores
/// minus the 1-minute load average, rounded; at least 1). The threads run at most 10 ms of
/// virtual time apart (the links' minimum latency), so a thread that has to share its core with
/// another process stalls the others: on a loaded machine one thread is faster, on an idle one
/// two are 1.4–1.9× faster at 1,000 nodes (bench/RESULTS.md). The thread count never changes a
/// run's result.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let busy = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .filter(|l| l.is_finite() && *l >= 0.0)
        .map_or(0, |l| l.round() as usize);
    cores.saturating_sub(busy).max(1)
}

/// What a run measured. `--json` of `ferry sim dht` prints this.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DhtReport {
    /// Nodes (at any moment).
    pub nodes: usize,
    /// Run seed.
    pub seed: u64,
    /// Churn, fraction per hour.
    pub churn_per_hour: f64,
    /// Loss rate.
    pub loss: f64,
    /// Lookups counted (target still live at the deadline or found).
    pub lookups: u64,
    /// Lookups that resolved.
    pub lookups_resolved: u64,
    /// `lookups_resolved / lookups` (1.0 when no lookup ran).
    pub lookup_success_rate: f64,
    /// Median time to resolve, ms.
    pub median_lookup_ms: f64,
    /// 99th percentile time to resolve, ms.
    pub p99_lookup_ms: f64,
    /// Mean nodes requests sent per resolved lookup.
    pub requests_per_lookup: f64,
    /// Datagrams sent plus received per node per minute during the idle window.
    pub idle_packets_per_node_minute: f64,
    /// Datagrams sent per node per minute during the idle window.
    pub idle_sent_per_node_minute: f64,
    /// Seconds until every close list was full and stable (`None`: not within the warm-up).
    pub bootstrap_stable_s: Option<f64>,
    /// Mean good close-list size at the end of the warm-up.
    pub close_list_mean: f64,
    /// Nodes replaced by churn.
    pub churned: u64,
    /// Mean shared keys (X25519) each live node computed over the run: its distinct peers.
    pub keys_computed_per_node: f64,
    /// Datagrams the whole network carried (sent).
    pub packets_sent: u64,
    /// Simulated seconds.
    pub simulated_seconds: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// Peak resident memory of this process, bytes (Linux `VmHWM`; 0 elsewhere).
    pub peak_rss_bytes: u64,
    /// Threads that advanced the nodes.
    pub threads: usize,
    /// How pairs derived their keys ([`KeyAgreement`]).
    pub key_agreement: KeyAgreement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Join,
    Sample,
    LookupStart(NodeId),
    LookupDeadline(NodeId, u64),
    Churn,
}

#[derive(Debug)]
struct Lookup {
    id: u64,
    target: PublicKey,
    target_node: NodeId,
    started: Instant,
}

#[derive(Debug, Default)]
struct Tally {
    durations_ms: Vec<f64>,
    requests: u64,
    failed: u64,
    next_lookup_id: u64,
}

impl Tally {
    /// Takes the lookups a node resolved (when it leaves, and at the end of the run).
    fn absorb(&mut self, node: &mut SimNode) {
        self.durations_ms.append(&mut node.durations_ms);
        self.requests += std::mem::take(&mut node.requests);
    }
}

/// One simulated DHT node: the real [`Dht`] plus the scenario's record of the lookups it started,
/// which it resolves itself as `Found` events come out, so nodes share nothing and can be
/// advanced by several threads.
#[derive(Debug)]
pub struct SimNode {
    dht: Dht,
    pending: Vec<Lookup>,
    durations_ms: Vec<f64>,
    requests: u64,
}

impl SimNode {
    /// The node's DHT state machine.
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// Drains the DHT's events after each input: a `Found` for a pending lookup resolves it.
    fn observe(&mut self, now: Instant) {
        while let Some(ev) = self.dht.poll_event() {
            let DhtEvent::Found { public_key, .. } = ev else {
                continue;
            };
            let Some(pos) = self.pending.iter().position(|l| l.target == public_key) else {
                continue;
            };
            let l = self.pending.swap_remove(pos);
            self.requests += self
                .dht
                .search_status(now, &public_key)
                .map_or(0, |s| u64::from(s.requests));
            self.durations_ms
                .push(now.saturating_duration_since(l.started).as_secs_f64() * 1000.0);
            if !self.pending.iter().any(|o| o.target == public_key) {
                self.dht.remove_search(&public_key);
            }
        }
    }
}

impl Endpoint for SimNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.dht.handle_datagram(now, from, bytes);
        self.observe(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.dht.handle_timeout(now);
        self.observe(now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.dht.poll_transmit()
    }
    fn poll_timeout(&self) -> Instant {
        self.dht.poll_timeout()
    }
}

fn new_node(rng: &mut FerryRng, now: Instant, source: &Arc<dyn KeySource>) -> SimNode {
    let mut node_rng = rng.fork();
    let keys = KeyPair::generate(&mut node_rng);
    let source = source.clone();
    let config = DhtConfig {
        lan_discovery: false,
        key_cache_size: 512,
        key_source: Some(source),
        ..DhtConfig::default()
    };
    SimNode {
        dht: Dht::new(config, keys, node_rng, now),
        pending: Vec::new(),
        durations_ms: Vec::new(),
        requests: 0,
    }
}

type Pair = (PublicKey, PublicKey);

/// The simulator's shared-key memo: both ends of a pair derive the same `crypto_box` key, so it
/// is computed once per pair for the whole simulated network instead of once per node, and again
/// only after it aged out.
///
/// Bounded by two generations: keys live in the current map; when it reaches the capacity it
/// becomes the previous map (and the old previous one is dropped); a key found in the previous
/// map moves back to the current one. So at most `2 × capacity` keys are held, and a pair in use
/// within the last `capacity` insertions is never recomputed. Which keys are held never changes a
/// run's result (every node still counts its own cache misses), only how often X25519 runs.
#[derive(Debug)]
pub struct PairMemo {
    capacity: usize,
    generations: Mutex<[HashMap<Pair, Arc<PrecomputedKey>>; 2]>,
}

impl Default for PairMemo {
    /// A memo of 1,000,000 pairs per generation (about 150 MB each).
    fn default() -> Self {
        Self::with_capacity(1_000_000)
    }
}

impl PairMemo {
    /// A memo holding `capacity` (at least 1) pairs per generation.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            generations: Mutex::new([HashMap::new(), HashMap::new()]),
        }
    }

    /// Pairs held now (both generations).
    pub fn len(&self) -> usize {
        let g = self.lock();
        g[0].len() + g[1].len()
    }

    /// Whether no pair is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [HashMap<Pair, Arc<PrecomputedKey>>; 2]> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, pair: Pair, key: Arc<PrecomputedKey>) -> Arc<PrecomputedKey> {
        let mut g = self.lock();
        if g[0].len() >= self.capacity {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].entry(pair).or_insert(key).clone()
    }
}

impl KeySource for PairMemo {
    fn precompute(
        &self,
        ours: &SecretKey,
        our_public: &PublicKey,
        theirs: &PublicKey,
    ) -> Arc<PrecomputedKey> {
        let pair = if our_public <= theirs {
            (*our_public, *theirs)
        } else {
            (*theirs, *our_public)
        };
        let aged = {
            let mut g = self.lock();
            if let Some(k) = g[0].get(&pair) {
                return k.clone();
            }
            g[1].remove(&pair)
        };
        // X25519 outside the lock, so other threads' lookups do not wait for it.
        let key = aged.unwrap_or_else(|| Arc::new(PrecomputedKey::new(ours, theirs)));
        self.insert(pair, key)
    }
}

/// The simulator's hashed key agreement ([`KeyAgreement::Hashed`]): the key of a pair is the
/// first 32 bytes of SHA-512(`"ferry-sim beforenm"` ‖ lower public key ‖ higher public key), the
/// same from both ends, without X25519. For simulation only: anyone who knows both public keys
/// knows it.
#[derive(Debug, Default)]
pub struct HashedKeys;

impl KeySource for HashedKeys {
    fn precompute(
        &self,
        _ours: &SecretKey,
        our_public: &PublicKey,
        theirs: &PublicKey,
    ) -> Arc<PrecomputedKey> {
        let (lo, hi) = if our_public <= theirs {
            (our_public, theirs)
        } else {
            (theirs, our_public)
        };
        let mut input = [0u8; 18 + 64];
        input[..18].copy_from_slice(b"ferry-sim beforenm");
        input[18..50].copy_from_slice(&lo.0);
        input[50..].copy_from_slice(&hi.0);
        let digest = ferry_crypto::sha512(&input);
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest[..32]);
        Arc::new(PrecomputedKey::from_beforenm_bytes(key))
    }
}

/// Runs a scenario. `progress(simulated, total)` is called about every 10 simulated seconds.
pub fn run(s: &DhtScenario, mut progress: impl FnMut(Duration, Duration)) -> DhtReport {
    let wall = Instant::now();
    let base = wall;
    let mut rng = FerryRng::from_u64(s.seed);
    let mut net: Network<SimNode> = Network::with_threads(s.link, rng.fork(), base, s.threads);
    let memo: Arc<dyn KeySource> = match s.key_agreement {
        KeyAgreement::X25519 => Arc::new(PairMemo::with_capacity(s.nodes.max(1000) * 256)),
        KeyAgreement::Hashed => Arc::new(HashedKeys),
    };
    let mut keys: HashMap<NodeId, PublicKey> = HashMap::new();
    let mut seeds = Vec::new();
    for _ in 0..s.seeds.min(s.nodes) {
        let id = net.add(|_, r| new_node(r, base, &memo));
        keys.insert(
            id,
            net.node(id)
                .map(|n| n.dht.public_key())
                .unwrap_or(PublicKey([0; 32])),
        );
        seeds.push(id);
    }
    for &a in &seeds {
        for &b in &seeds {
            if a != b {
                let (addr, pk) = (net.addr(b), keys.get(&b).copied());
                if let (Some(addr), Some(pk)) = (addr, pk) {
                    net.with_node(a, |n, now| n.dht.bootstrap(now, addr, pk));
                }
            }
        }
    }
    let mut steps: BinaryHeap<Reverse<(Duration, u64, Step)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push =
        |steps: &mut BinaryHeap<Reverse<(Duration, u64, Step)>>, at: Duration, step: Step| {
            seq += 1;
            steps.push(Reverse((at, seq, step)));
        };
    for _ in seeds.len()..s.nodes {
        let at = s.join_window.mul_f64(crate::net::unit(&mut rng));
        push(&mut steps, at, Step::Join);
    }
    let mut t = Duration::ZERO;
    while t <= s.duration {
        push(&mut steps, t, Step::Sample);
        t += Duration::from_secs(10);
    }
    if s.churn_per_hour > 0.0 && s.nodes > s.seeds {
        let mean = Duration::from_secs_f64(3600.0 / (s.churn_per_hour * s.nodes as f64));
        push(
            &mut steps,
            s.warmup + exp_delay(&mut rng, mean),
            Step::Churn,
        );
    }
    let lookup_mean = (s.lookups_per_node_hour > 0.0)
        .then(|| Duration::from_secs_f64(3600.0 / s.lookups_per_node_hour));

    let mut tally = Tally::default();
    let mut samples: Vec<(Duration, u64, usize)> = Vec::new();
    let idle_start = s.warmup.saturating_sub(s.idle_window);
    let mut idle_before: Option<HashMap<NodeId, (u64, u64)>> = None;
    let mut idle = (0.0, 0.0);
    let mut close_mean = 0.0;
    let mut churned = 0u64;
    let mut lookups_started = false;

    while let Some(Reverse((at, _, step))) = steps.pop() {
        if at > s.duration {
            break;
        }
        net.run_until(at);
        // Idle window bookkeeping happens at sample times.
        match step {
            Step::Join => {
                let id = net.add(|_, r| new_node(r, base, &memo));
                if let Some(pk) = net.node(id).map(|n| n.dht.public_key()) {
                    keys.insert(id, pk);
                }
                bootstrap_from_seeds(&mut net, id, &seeds, &keys);
            }
            Step::Sample => {
                progress(at, s.duration);
                if at <= s.warmup {
                    let now = net.now();
                    let live = net.live();
                    let counts: Vec<usize> = live
                        .iter()
                        .filter_map(|&i| net.node(i).map(|n| n.dht.good_close_count(now)))
                        .collect();
                    let total: u64 = counts.iter().map(|&c| c as u64).sum();
                    let min = counts.iter().copied().min().unwrap_or(0);
                    samples.push((at, total, min));
                    close_mean = total as f64 / counts.len().max(1) as f64;
                }
                if idle_before.is_none() && at >= idle_start {
                    idle_before = Some(
                        net.live()
                            .into_iter()
                            .filter_map(|i| net.traffic(i).map(|t| (i, (t.sent, t.received))))
                            .collect(),
                    );
                }
                if at >= s.warmup && !lookups_started {
                    lookups_started = true;
                    if let Some(before) = idle_before.take() {
                        let minutes = (at - idle_start).as_secs_f64() / 60.0;
                        let (mut sent, mut total, mut n) = (0u64, 0u64, 0u64);
                        for (i, (s0, r0)) in before {
                            if let Some(tr) = net.traffic(i) {
                                sent += tr.sent - s0;
                                total += (tr.sent - s0) + (tr.received - r0);
                                n += 1;
                            }
                        }
                        if n > 0 && minutes > 0.0 {
                            idle = (
                                total as f64 / n as f64 / minutes,
                                sent as f64 / n as f64 / minutes,
                            );
                        }
                    }
                    if let Some(mean) = lookup_mean {
                        for id in net.live() {
                            let d = exp_delay(&mut rng, mean);
                            push(&mut steps, at + d, Step::LookupStart(id));
                        }
                    }
                }
            }
            Step::LookupStart(id) => {
                if net.node(id).is_none() {
                    continue;
                }
                let live = net.live();
                if live.len() > 1 {
                    let mut target = live[rng.below(live.len())];
                    while target == id {
                        target = live[rng.below(live.len())];
                    }
                    if let Some(pk) = keys.get(&target).copied() {
                        let added = net
                            .with_node(id, |n, now| n.dht.add_search(now, pk).is_ok())
                            .unwrap_or(false);
                        if added {
                            tally.next_lookup_id += 1;
                            let lid = tally.next_lookup_id;
                            let started = net.now();
                            if let Some(n) = net.node_mut(id) {
                                n.pending.push(Lookup {
                                    id: lid,
                                    target: pk,
                                    target_node: target,
                                    started,
                                });
                            }
                            push(
                                &mut steps,
                                at + s.lookup_timeout,
                                Step::LookupDeadline(id, lid),
                            );
                        }
                    }
                }
                if let Some(mean) = lookup_mean {
                    push(
                        &mut steps,
                        at + exp_delay(&mut rng, mean),
                        Step::LookupStart(id),
                    );
                }
            }
            Step::LookupDeadline(id, lid) => {
                let Some(list) = net.node_mut(id).map(|n| &mut n.pending) else {
                    continue;
                };
                let Some(pos) = list.iter().position(|l| l.id == lid) else {
                    continue;
                };
                let l = list.swap_remove(pos);
                if net.node(l.target_node).is_some() {
                    tally.failed += 1;
                }
                net.with_node(id, |n, _| n.dht.remove_search(&l.target));
            }
            Step::Churn => {
                let live: Vec<NodeId> = net
                    .live()
                    .into_iter()
                    .filter(|i| !seeds.contains(i))
                    .collect();
                if !live.is_empty() {
                    let gone = live[rng.below(live.len())];
                    if let Some(mut node) = net.remove(gone) {
                        tally.absorb(&mut node);
                    }
                    keys.remove(&gone);
                    let id = net.add(|_, r| new_node(r, base, &memo));
                    if let Some(pk) = net.node(id).map(|n| n.dht.public_key()) {
                        keys.insert(id, pk);
                    }
                    bootstrap_from_seeds(&mut net, id, &seeds, &keys);
                    if let Some(mean) = lookup_mean {
                        let d = exp_delay(&mut rng, mean);
                        push(&mut steps, at + d, Step::LookupStart(id));
                    }
                    churned += 1;
                }
                let mean = Duration::from_secs_f64(3600.0 / (s.churn_per_hour * s.nodes as f64));
                push(&mut steps, at + exp_delay(&mut rng, mean), Step::Churn);
            }
        }
    }
    net.run_until(s.duration);

    let live = net.live();
    let keys_total: u64 = live
        .iter()
        .filter_map(|&i| net.node(i).map(|n| n.dht.stats().keys_computed))
        .sum();
    for &i in &live {
        if let Some(n) = net.node_mut(i) {
            tally.absorb(n);
        }
    }
    let keys_computed_per_node = keys_total as f64 / live.len().max(1) as f64;
    let resolved = tally.durations_ms.len() as u64;
    let lookups = resolved + tally.failed;
    let mut d = std::mem::take(&mut tally.durations_ms);
    d.sort_by(f64::total_cmp);
    DhtReport {
        nodes: s.nodes,
        seed: s.seed,
        churn_per_hour: s.churn_per_hour,
        loss: s.link.loss,
        lookups,
        lookups_resolved: resolved,
        lookup_success_rate: if lookups == 0 {
            1.0
        } else {
            resolved as f64 / lookups as f64
        },
        median_lookup_ms: percentile(&d, 0.5),
        p99_lookup_ms: percentile(&d, 0.99),
        requests_per_lookup: if resolved == 0 {
            0.0
        } else {
            tally.requests as f64 / resolved as f64
        },
        idle_packets_per_node_minute: idle.0,
        idle_sent_per_node_minute: idle.1,
        bootstrap_stable_s: stable_time(&samples, s.join_window, s.nodes),
        close_list_mean: close_mean,
        churned,
        keys_computed_per_node,
        packets_sent: net.stats().sent,
        simulated_seconds: s.duration.as_secs_f64(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        threads: s.threads,
        key_agreement: s.key_agreement,
    }
}

fn bootstrap_from_seeds(
    net: &mut Network<SimNode>,
    id: NodeId,
    seeds: &[NodeId],
    keys: &HashMap<NodeId, PublicKey>,
) {
    for &seed in seeds {
        if let (Some(addr), Some(pk)) = (net.addr(seed), keys.get(&seed).copied()) {
            net.with_node(id, |n, now| n.dht.bootstrap(now, addr, pk));
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// First sample time after the join window from which every node has a full-enough close list
/// (≥ min(8, nodes − 1) good entries) and the total stays within 1 % for the next 60 s.
fn stable_time(
    samples: &[(Duration, u64, usize)],
    join_window: Duration,
    nodes: usize,
) -> Option<f64> {
    let full = 8.min(nodes.saturating_sub(1));
    for (i, &(t, total, min)) in samples.iter().enumerate() {
        if t < join_window || min < full {
            continue;
        }
        let window: Vec<_> = samples[i..]
            .iter()
            .take_while(|s| s.0 <= t + Duration::from_secs(60))
            .collect();
        if window
            .last()
            .is_none_or(|s| s.0 < t + Duration::from_secs(60))
        {
            return None;
        }
        let ok = window
            .iter()
            .all(|s| (s.1 as f64 - total as f64).abs() <= total as f64 * 0.01 && s.2 >= full);
        if ok {
            return Some(t.as_secs_f64());
        }
    }
    None
}

/// Peak resident set size of this process (Linux `VmHWM`), bytes; 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
