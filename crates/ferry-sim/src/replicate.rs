//! The replication scenario (issue 10 item 2, `data-layer.md` §3.5 and §4 item 9): every node
//! runs the real [`ReplicaManager`] from `ferry-swarm` on the simulated network ([`Network`]:
//! latency, jitter, loss, churn); its replica messages travel as datagrams.
//!
//! * **Nodes**: a fraction [`ReplicateScenario::capable`] opted to store; each has a disk quota
//!   drawn uniformly from [`ReplicateScenario::quota_bytes`]. Nodes that never store still fetch.
//! * **Items**: [`ReplicateScenario::items`] items (sizes uniform in
//!   [`ReplicateScenario::item_bytes`]) are published by random nodes during the warm-up, pinned
//!   for a week.
//! * **Candidates** ([`ReplicaEvent::NeedCandidates`]): answered at the next 10-second tick with the
//!   32 store-capable live nodes closest (XOR) to the content id that do not hold it. This stands
//!   for the DHT lookup (the value-store scenario, [`crate::store`], tests lookups under churn;
//!   here the subject is the replication logic), so candidates are exact but arrive up to 10 s
//!   late.
//! * **Churn**: after the warm-up, departures form a Poisson process of rate `churn × nodes` per
//!   hour; a departing node leaves without a word (no hand-off) and a fresh, empty node with a new
//!   key and address replaces it.
//! * **Demand**: every item is fetched [`ReplicateScenario::background_per_hour`] times an hour
//!   (Poisson); during the spike, the first [`ReplicateScenario::spike_items`] items are fetched
//!   [`ReplicateScenario::spike_per_hour`] times an hour each. A fetch goes from a random live node
//!   to a random live holder (as found by provider records), which counts it.
//! * **Samples**: every [`ReplicateScenario::sample_every`], the live holders of every item are
//!   counted from the nodes' state. An item is healthy when at least `min_replicas` (3) live nodes
//!   hold it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_swarm::replica::{ReplicaConfig, ReplicaEvent, ReplicaManager};
use ferry_swarm::wire::ContentId;
use ferry_wire::node::PackedNode;
use serde::Serialize;

use crate::net::{LinkConfig, Network, NodeId, exp_delay, unit};

/// How often the scenario drives commands (candidates, fetches, churn).
const TICK: Duration = Duration::from_secs(10);
/// Candidates returned per lookup.
const CANDIDATES: usize = 32;

/// Parameters of a replication run.
#[derive(Clone, Debug)]
pub struct ReplicateScenario {
    /// Nodes at any moment.
    pub nodes: usize,
    /// Fraction of the nodes replaced per hour (0.3 = 30 %/h).
    pub churn_per_hour: f64,
    /// Measured time after the warm-up.
    pub duration: Duration,
    /// Warm-up: items are published in its first half; churn starts after it.
    pub warmup: Duration,
    /// Items pinned.
    pub items: usize,
    /// Item sizes, bytes (uniform).
    pub item_bytes: (u64, u64),
    /// Fraction of nodes that store for others.
    pub capable: f64,
    /// Disk quota per capable node, bytes (uniform).
    pub quota_bytes: (u64, u64),
    /// Items that get the demand spike.
    pub spike_items: usize,
    /// Spike start, after the warm-up.
    pub spike_start: Duration,
    /// Spike length.
    pub spike_len: Duration,
    /// Fetches per hour of each spike item during the spike.
    pub spike_per_hour: f64,
    /// Fetches per hour of every item, all the time.
    pub background_per_hour: f64,
    /// Sampling interval.
    pub sample_every: Duration,
    /// Links.
    pub link: LinkConfig,
    /// Replication parameters (quota and capability are set per node).
    pub replica: ReplicaConfig,
    /// Run seed.
    pub seed: u64,
}

impl ReplicateScenario {
    /// `nodes` nodes for `hours` measured hours at `churn_per_hour`: one item per node, 90 %
    /// capable nodes with 0.25–2 GiB quotas, items of 1–64 MiB, a 10-minute warm-up, a 2-hour
    /// spike of 800 fetches/h on 10 items starting at hour 4 (or a quarter of the run when it is
    /// shorter than 12 h), 1 fetch per item per hour in the background, samples every minute,
    /// links of 10–150 ms with 1 % loss.
    pub fn new(nodes: usize, hours: f64, churn_per_hour: f64, seed: u64) -> Self {
        let duration = Duration::from_secs_f64((hours * 3600.0).max(600.0));
        let spike_start = if hours >= 12.0 {
            Duration::from_secs(4 * 3600)
        } else {
            duration / 4
        };
        Self {
            nodes,
            churn_per_hour,
            duration,
            warmup: Duration::from_secs(600),
            items: nodes,
            item_bytes: (1 << 20, 64 << 20),
            capable: 0.9,
            quota_bytes: (256 << 20, 2 << 30),
            spike_items: 10.min(nodes),
            spike_start,
            spike_len: Duration::from_secs(2 * 3600).min(duration / 4),
            spike_per_hour: 800.0,
            background_per_hour: 1.0,
            sample_every: Duration::from_secs(60),
            link: LinkConfig {
                loss: 0.01,
                ..LinkConfig::default()
            },
            replica: ReplicaConfig::default(),
            seed,
        }
    }
}

/// One hour of a run.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReplicateRow {
    /// Hour after the warm-up (1 = the first hour).
    pub hour: u32,
    /// Mean over the hour's samples of the share of items with ≥ 3 live replicas.
    pub healthy: f64,
    /// Lowest sample in the hour.
    pub healthy_min: f64,
    /// Mean live replicas of the non-spike items.
    pub mean_replicas: f64,
    /// Mean live replicas of the spike items.
    pub spike_replicas: f64,
    /// Items with no live replica at the hour's last sample.
    pub lost: u64,
}

/// What a run measured. `--json` of `ferry sim replicate` prints this.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReplicateReport {
    /// Nodes.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Churn per hour.
    pub churn_per_hour: f64,
    /// Measured hours.
    pub hours: f64,
    /// Items pinned.
    pub items: usize,
    /// Items whose publish reached all pins (`min_replicas + spare_pins`).
    pub published_full: u64,
    /// Per-hour table.
    pub rows: Vec<ReplicateRow>,
    /// Share of (item, sample) pairs with ≥ 3 live replicas over the whole run.
    pub healthy: f64,
    /// Lowest share in any sample.
    pub healthy_min: f64,
    /// Items with no live replica at the end.
    pub lost: u64,
    /// Mean live replicas of the spike items in the hour before the spike.
    pub spike_before: f64,
    /// Highest hourly mean of the spike items' replicas.
    pub spike_peak: f64,
    /// Mean live replicas of the spike items in the last hour.
    pub spike_end: f64,
    /// Fetches made.
    pub fetches: u64,
    /// Nodes replaced by churn.
    pub churned: u64,
    /// Stores sent to recruit replicas (publish and repair).
    pub recruit_stores: u64,
    /// Stores refused (quota or not capable).
    pub stores_refused: u64,
    /// Datagrams sent per node per minute (replica protocol).
    pub packets_per_node_minute: f64,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

fn poisson(rng: &mut FerryRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 50.0 {
        // Normal approximation.
        let u1 = unit(rng).max(1e-12);
        let u2 = unit(rng);
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= unit(rng);
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn xor_cmp(id: &ContentId, a: &PublicKey, b: &PublicKey) -> std::cmp::Ordering {
    let da = a.0.iter().zip(id).map(|(x, k)| x ^ k);
    let db = b.0.iter().zip(id).map(|(x, k)| x ^ k);
    da.cmp(db)
}

struct Sim {
    net: Network<ReplicaManager>,
    info: HashMap<NodeId, (PackedNode, bool)>,
    base: Instant,
}

impl Sim {
    fn add_node(&mut self, s: &ReplicateScenario) -> NodeId {
        let capable = unit(self.net.rng()) < s.capable;
        let (lo, hi) = s.quota_bytes;
        let quota = lo + (unit(self.net.rng()) * (hi.saturating_sub(lo)) as f64) as u64;
        let mut cfg = s.replica.clone();
        cfg.capable = capable;
        cfg.quota_bytes = quota;
        let now = self.net.now();
        let mut our = None;
        let id = self.net.add(|addr, rng| {
            let pk = PublicKey(rng.bytes::<32>());
            let node = PackedNode::udp(addr, pk);
            our = Some(node);
            ReplicaManager::new(cfg, node, rng.fork(), now)
        });
        if let Some(node) = our {
            self.info.insert(id, (node, capable));
        }
        id
    }

    /// Holders per item, from the live nodes' state.
    fn holders(&self) -> HashMap<ContentId, Vec<NodeId>> {
        let mut m: HashMap<ContentId, Vec<NodeId>> = HashMap::new();
        for id in self.net.live() {
            if let Some(n) = self.net.node(id) {
                for (cid, _) in n.held() {
                    m.entry(*cid).or_default().push(id);
                }
            }
        }
        m
    }

    fn candidates(&self, cid: &ContentId, holders: &[NodeId]) -> Vec<PackedNode> {
        let mut v: Vec<PackedNode> = self
            .info
            .iter()
            .filter(|(id, (_, capable))| *capable && !holders.contains(id))
            .map(|(_, (n, _))| *n)
            .collect();
        v.sort_by(|a, b| xor_cmp(cid, &a.public_key, &b.public_key));
        v.truncate(CANDIDATES);
        v
    }
}

/// Runs a scenario. `progress(simulated, total)` is called every simulated minute.
pub fn run(s: &ReplicateScenario, mut progress: impl FnMut(Duration, Duration)) -> ReplicateReport {
    #[allow(clippy::disallowed_methods)] // the simulator's own wall clock, for the report only
    let wall = Instant::now();
    let base = wall;
    let mut rng = FerryRng::from_u64(s.seed);
    let net_rng = rng.fork();
    let mut sim = Sim {
        net: Network::new(s.link, net_rng, base),
        info: HashMap::new(),
        base,
    };
    let _ = sim.base;
    for _ in 0..s.nodes {
        sim.add_node(s);
    }
    // Items: id, size, publisher, publish time.
    let mut items: Vec<(ContentId, u64)> = Vec::with_capacity(s.items);
    let mut publish_at: Vec<(Duration, usize)> = Vec::with_capacity(s.items);
    for k in 0..s.items {
        let id: ContentId = rng.bytes::<32>();
        let (lo, hi) = s.item_bytes;
        let size = lo + (unit(&mut rng) * hi.saturating_sub(lo) as f64) as u64;
        items.push((id, size));
        let at = Duration::from_secs_f64(unit(&mut rng) * s.warmup.as_secs_f64() / 2.0);
        publish_at.push((at, k));
    }
    publish_at.sort_by_key(|p| p.0);
    let item_index: HashMap<ContentId, usize> = items
        .iter()
        .enumerate()
        .map(|(k, (id, _))| (*id, k))
        .collect();
    let total = s.warmup + s.duration;
    let keep = Duration::from_secs(7 * 24 * 3600);
    let mut next_pub = 0;
    let mut next_churn = s.warmup
        + if s.churn_per_hour > 0.0 {
            exp_delay(
                &mut rng,
                Duration::from_secs_f64(3600.0 / (s.churn_per_hour * s.nodes as f64)),
            )
        } else {
            Duration::MAX / 4
        };
    let mut next_sample = s.warmup + s.sample_every;
    let mut t = Duration::ZERO;
    let mut churned = 0u64;
    let mut fetches = 0u64;
    let mut published_full = 0u64;
    let mut rows: Vec<ReplicateRow> = Vec::new();
    let mut hour_acc: Vec<(f64, f64, f64, u64)> = Vec::new();
    let mut all_ok = 0u64;
    let mut all_n = 0u64;
    let mut healthy_min = 1.0f64;
    let mut last_minute = 0;
    let spike: Vec<usize> = (0..s.spike_items.min(s.items)).collect();
    let sent_at_warmup = std::cell::Cell::new(0u64);
    let min_r = s.replica.min_replicas;
    while t < total {
        t += TICK;
        sim.net.run_until(t);
        if t.as_secs() / 60 != last_minute {
            last_minute = t.as_secs() / 60;
            progress(t, total);
        }
        // Publishes due.
        while next_pub < publish_at.len() && publish_at[next_pub].0 <= t {
            let k = publish_at[next_pub].1;
            next_pub += 1;
            let live = sim.net.live();
            let who = live[rng.below(live.len())];
            let (cid, size) = items[k];
            sim.net
                .with_node(who, |n, now| n.publish(now, cid, size, keep));
        }
        // Events: candidate lookups.
        let mut lookups: Vec<(NodeId, ContentId)> = Vec::new();
        for id in sim.net.live() {
            let Some(n) = sim.net.node_mut(id) else {
                continue;
            };
            while let Some(ev) = n.poll_event() {
                match ev {
                    ReplicaEvent::NeedCandidates { id: cid } => lookups.push((id, cid)),
                    ReplicaEvent::Published { pins, .. } if pins >= s.replica.pins() => {
                        published_full += 1;
                    }
                    _ => {}
                }
            }
        }
        let need_holders = !lookups.is_empty() || t > s.warmup;
        let holders = if need_holders {
            sim.holders()
        } else {
            HashMap::new()
        };
        for (id, cid) in lookups {
            let hs = holders.get(&cid).map_or(&[][..], Vec::as_slice);
            let c = sim.candidates(&cid, hs);
            sim.net
                .with_node(id, |n, now| n.handle_candidates(now, cid, &c));
        }
        if t == s.warmup {
            sent_at_warmup.set(sim.net.stats().sent);
        }
        if t <= s.warmup {
            continue;
        }
        let since = t - s.warmup;
        // Demand.
        let tick_h = TICK.as_secs_f64() / 3600.0;
        let mut want: Vec<usize> = Vec::new();
        let bg = poisson(&mut rng, s.background_per_hour * s.items as f64 * tick_h);
        for _ in 0..bg {
            want.push(rng.below(s.items.max(1)));
        }
        if since >= s.spike_start && since < s.spike_start + s.spike_len {
            for &k in &spike {
                for _ in 0..poisson(&mut rng, s.spike_per_hour * tick_h) {
                    want.push(k);
                }
            }
        }
        let live = sim.net.live();
        for k in want {
            let Some(hs) = holders.get(&items[k].0) else {
                continue;
            };
            if hs.is_empty() {
                continue;
            }
            let h = hs[rng.below(hs.len())];
            let Some(addr) = sim.net.addr(h) else {
                continue;
            };
            let who = live[rng.below(live.len())];
            let cid = items[k].0;
            fetches += 1;
            sim.net.with_node(who, |n, _| n.fetch(cid, addr));
        }
        // Churn.
        while next_churn <= t {
            next_churn += exp_delay(
                &mut rng,
                Duration::from_secs_f64(3600.0 / (s.churn_per_hour * s.nodes as f64)),
            );
            let live = sim.net.live();
            let gone = live[rng.below(live.len())];
            sim.net.remove(gone);
            sim.info.remove(&gone);
            sim.add_node(s);
            churned += 1;
        }
        // Samples.
        if t >= next_sample {
            next_sample += s.sample_every;
            let mut ok = 0u64;
            let mut sum = 0usize;
            let mut n_norm = 0usize;
            let mut spike_sum = 0usize;
            let mut lost = 0u64;
            for (k, (cid, _)) in items.iter().enumerate() {
                let c = holders.get(cid).map_or(0, Vec::len);
                if c >= min_r {
                    ok += 1;
                }
                if c == 0 {
                    lost += 1;
                }
                if k < spike.len() {
                    spike_sum += c;
                } else {
                    sum += c;
                    n_norm += 1;
                }
            }
            let frac = ok as f64 / items.len().max(1) as f64;
            all_ok += ok;
            all_n += items.len() as u64;
            healthy_min = healthy_min.min(frac);
            hour_acc.push((
                frac,
                sum as f64 / n_norm.max(1) as f64,
                spike_sum as f64 / spike.len().max(1) as f64,
                lost,
            ));
            // Samples at (h, h + 1] hours belong to row h + 1.
            let hour = (since.as_secs().saturating_sub(1) / 3600) as u32;
            let end_of_hour =
                since.as_secs().is_multiple_of(3600) || since + s.sample_every > s.duration;
            if end_of_hour && !hour_acc.is_empty() {
                let n = hour_acc.len() as f64;
                rows.push(ReplicateRow {
                    hour: hour + 1,
                    healthy: hour_acc.iter().map(|r| r.0).sum::<f64>() / n,
                    healthy_min: hour_acc.iter().map(|r| r.0).fold(1.0, f64::min),
                    mean_replicas: hour_acc.iter().map(|r| r.1).sum::<f64>() / n,
                    spike_replicas: hour_acc.iter().map(|r| r.2).sum::<f64>() / n,
                    lost: hour_acc.last().map_or(0, |r| r.3),
                });
                hour_acc.clear();
            }
        }
    }
    let _ = item_index;
    let mut recruit_stores = 0;
    let mut stores_refused = 0;
    for id in sim.net.live() {
        if let Some(n) = sim.net.node(id) {
            let st = n.stats();
            recruit_stores += st.recruit_sent;
            stores_refused += st.stores_refused;
        }
    }
    let spike_hour = (s.spike_start.as_secs() / 3600) as usize;
    let spike_before = if spike_hour >= 1 {
        rows.get(spike_hour - 1).map_or(0.0, |r| r.spike_replicas)
    } else {
        rows.first().map_or(0.0, |r| r.spike_replicas)
    };
    let spike_peak = rows.iter().map(|r| r.spike_replicas).fold(0.0, f64::max);
    let minutes = s.duration.as_secs_f64() / 60.0;
    let sent = sim.net.stats().sent.saturating_sub(sent_at_warmup.get());
    ReplicateReport {
        nodes: s.nodes,
        seed: s.seed,
        churn_per_hour: s.churn_per_hour,
        hours: s.duration.as_secs_f64() / 3600.0,
        items: s.items,
        published_full,
        healthy: if all_n == 0 {
            1.0
        } else {
            all_ok as f64 / all_n as f64
        },
        healthy_min,
        lost: rows.last().map_or(0, |r| r.lost),
        spike_before,
        spike_peak,
        spike_end: rows.last().map_or(0.0, |r| r.spike_replicas),
        rows,
        fetches,
        churned,
        recruit_stores,
        stores_refused,
        packets_per_node_minute: sent as f64 / s.nodes.max(1) as f64 / minutes.max(1.0),
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}
