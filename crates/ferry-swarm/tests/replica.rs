//! Replication state machine on a tiny hand-driven network (`data-layer.md` §4 item 9): pins
//! after publish, repair after two pins die, extras follow demand and fall back, quotas refuse.

#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_proto::{Destination, Endpoint};
use ferry_swarm::replica::{ReplicaConfig, ReplicaEvent, ReplicaManager};
use ferry_swarm::wire::{ContentId, Role};
use ferry_wire::node::PackedNode;

/// Nodes on a 10 ms network; the test answers candidate lookups with every live node.
struct Net {
    base: Instant,
    now: Instant,
    nodes: HashMap<SocketAddr, (PackedNode, ReplicaManager)>,
    order: Vec<SocketAddr>,
    in_flight: Vec<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
}

impl Net {
    fn new(n: usize, cfg: &ReplicaConfig) -> Self {
        let base = Instant::now();
        let mut net = Self {
            base,
            now: base,
            nodes: HashMap::new(),
            order: Vec::new(),
            in_flight: Vec::new(),
        };
        for i in 0..n {
            net.add(i, cfg.clone());
        }
        net
    }

    fn add(&mut self, i: usize, cfg: ReplicaConfig) -> SocketAddr {
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1)),
            1000,
        );
        let mut rng = FerryRng::from_u64(i as u64 + 1);
        let pk = PublicKey(rng.bytes::<32>());
        let node = PackedNode::udp(addr, pk);
        self.nodes
            .insert(addr, (node, ReplicaManager::new(cfg, node, rng, self.now)));
        self.order.push(addr);
        addr
    }

    fn kill(&mut self, addr: SocketAddr) {
        self.nodes.remove(&addr);
        self.order.retain(|a| *a != addr);
    }

    fn pump(&mut self) {
        // Twice: answering a lookup queues stores.
        self.pump_once();
        self.pump_once();
    }

    fn pump_once(&mut self) {
        let now = self.now;
        let order = self.order.clone();
        for a in order {
            let Some((_, n)) = self.nodes.get_mut(&a) else {
                continue;
            };
            while let Some(t) = n.poll_transmit() {
                if let Destination::Addr(to) = t.destination {
                    self.in_flight
                        .push((now + Duration::from_millis(10), a, to, t.payload));
                }
            }
            let mut lookups = Vec::new();
            while let Some(ev) = n.poll_event() {
                if let ReplicaEvent::NeedCandidates { id } = ev {
                    lookups.push(id);
                }
            }
            for id in lookups {
                let cands: Vec<PackedNode> = self
                    .order
                    .iter()
                    .filter(|x| **x != a)
                    .filter_map(|x| self.nodes.get(x).map(|(p, _)| *p))
                    .collect();
                if let Some((_, n)) = self.nodes.get_mut(&a) {
                    n.handle_candidates(now, id, &cands);
                }
            }
        }
    }

    /// Runs until `until` (relative to the start).
    fn run(&mut self, until: Duration) {
        let end = self.base + until;
        loop {
            self.pump();
            let next_msg = self.in_flight.iter().map(|m| m.0).min();
            let next_timer = self.nodes.values().map(|(_, n)| n.poll_timeout()).min();
            let next = [next_msg, next_timer].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= end) else {
                self.now = end;
                return;
            };
            self.now = next.max(self.now);
            let now = self.now;
            let due: Vec<_> = {
                let (due, rest): (Vec<_>, Vec<_>) =
                    self.in_flight.drain(..).partition(|m| m.0 <= now);
                self.in_flight = rest;
                due
            };
            for (_, from, to, bytes) in due {
                if let Some((_, n)) = self.nodes.get_mut(&to) {
                    n.handle_datagram(now, from, &bytes);
                }
            }
            for a in self.order.clone() {
                if let Some((_, n)) = self.nodes.get_mut(&a)
                    && n.poll_timeout() <= now
                {
                    n.handle_timeout(now);
                }
            }
        }
    }

    fn holders(&self, id: &ContentId) -> Vec<(SocketAddr, Role)> {
        self.order
            .iter()
            .filter_map(|a| {
                self.nodes
                    .get(a)
                    .and_then(|(_, n)| n.holding(id).map(|r| (*a, r)))
            })
            .collect()
    }

    fn with(&mut self, a: SocketAddr, f: impl FnOnce(&mut ReplicaManager, Instant)) {
        let now = self.now;
        if let Some((_, n)) = self.nodes.get_mut(&a) {
            f(n, now);
        }
    }
}

const ID: ContentId = [7; 32];
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

#[test]
fn publish_pins_and_repair_within_one_interval() {
    let cfg = ReplicaConfig::default();
    let mut net = Net::new(20, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        assert!(n.publish(now, ID, 1 << 20, WEEK));
    });
    net.run(Duration::from_secs(5));
    let h = net.holders(&ID);
    assert_eq!(h.len(), cfg.pins(), "{h:?}");
    assert!(h.iter().all(|x| x.1 == Role::Pin));
    // Kill two pins: back to 4 within one check interval (plus timeouts).
    net.kill(h[0].0);
    net.kill(h[1].0);
    net.run(Duration::from_secs(5) + cfg.check_interval * 11 / 10 + Duration::from_secs(30));
    let h = net.holders(&ID);
    assert_eq!(h.len(), cfg.pins(), "not repaired: {h:?}");
}

#[test]
fn demand_adds_extras_and_they_expire() {
    let cfg = ReplicaConfig::default();
    let mut net = Net::new(60, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        n.publish(now, ID, 1 << 20, WEEK);
    });
    net.run(Duration::from_secs(5));
    // 40 minutes of 1200 downloads/h → target 60 replicas.
    let mut t = Duration::from_secs(5);
    for k in 0..800u32 {
        t += Duration::from_secs(3);
        net.run(t);
        let h = net.holders(&ID);
        let (holder, _) = h[k as usize % h.len()];
        let fetcher = net.order[(k as usize * 7) % net.order.len()];
        net.with(fetcher, |n, _| n.fetch(ID, holder));
    }
    net.run(t + cfg.check_interval * 2);
    let peak = net.holders(&ID).len();
    assert!(peak >= 40, "demand did not add replicas: {peak}");
    assert!(peak <= cfg.max_replicas + cfg.spare_pins, "{peak}");
    // Demand stops: after the hour's window and the extras' TTL, back to the pins.
    net.run(t + Duration::from_secs(3600) + cfg.extra_ttl + cfg.check_interval * 3);
    let after = net.holders(&ID);
    assert_eq!(
        after.len(),
        cfg.pins(),
        "extras did not fall away: {after:?}"
    );
}

#[test]
fn recorded_downloads_add_extras_once_per_fetcher_and_they_expire() {
    let cfg = ReplicaConfig {
        downloads_per_replica: 1,
        check_interval: Duration::from_secs(10),
        check_timeout: Duration::from_secs(2),
        extra_ttl: Duration::from_secs(60),
        demand_bucket: Duration::from_secs(30),
        ..ReplicaConfig::default()
    };
    let mut net = Net::new(20, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        assert!(n.publish(now, ID, 1 << 20, WEEK));
    });
    net.run(Duration::from_secs(5));
    let h = net.holders(&ID);
    assert_eq!(h.len(), cfg.pins(), "{h:?}");
    // Not held: not counted.
    net.with(publisher, |n, now| {
        assert!(!n.record_download(now, &ID, PublicKey([1; 32])));
    });
    // Seven fetchers download from two holders (each fetcher once per holder, and again within
    // the bucket, which does not count): target max(4, 7) = 7 replicas.
    let (a, b) = (h[0].0, h[1].0);
    for k in 0..7u8 {
        let holder = if k % 2 == 0 { a } else { b };
        net.with(holder, |n, now| {
            assert!(n.record_download(now, &ID, PublicKey([k + 1; 32])));
            assert!(!n.record_download(now, &ID, PublicKey([k + 1; 32])));
        });
    }
    net.run(Duration::from_secs(5) + cfg.check_interval * 3);
    let peak = net.holders(&ID);
    assert_eq!(peak.len(), 7, "demand did not add extras: {peak:?}");
    assert_eq!(peak.iter().filter(|x| x.1 == Role::Extra).count(), 3);
    // No more downloads: after six buckets and the extras' TTL, back to the pins.
    net.run(
        Duration::from_secs(5)
            + cfg.check_interval * 3
            + cfg.demand_bucket * 6
            + cfg.extra_ttl
            + cfg.check_interval * 3,
    );
    let after = net.holders(&ID);
    assert_eq!(
        after.len(),
        cfg.pins(),
        "extras did not fall away: {after:?}"
    );
}

#[test]
fn no_lookup_storm_when_no_candidate_is_left() {
    // Publisher + 4 pins and nobody else: demand for 7 replicas cannot be met (the publisher
    // is the only candidate left).
    let cfg = ReplicaConfig {
        downloads_per_replica: 1,
        check_interval: Duration::from_secs(10),
        check_timeout: Duration::from_secs(2),
        ..ReplicaConfig::default()
    };
    let mut net = Net::new(5, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        assert!(n.publish(now, ID, 1 << 20, WEEK));
    });
    net.run(Duration::from_secs(5));
    let h = net.holders(&ID);
    assert_eq!(h.len(), cfg.pins());
    net.with(h[0].0, |n, now| {
        for k in 0..7u8 {
            assert!(n.record_download(now, &ID, PublicKey([k + 1; 32])));
        }
    });
    net.run(Duration::from_secs(65));
    let lookups: u64 = h
        .iter()
        .filter_map(|(a, _)| net.nodes.get(a).map(|(_, n)| n.stats().lookups))
        .sum();
    // 60 s at one lookup per 2 s at most (the 10 ms network would allow thousands).
    assert!((1..=31).contains(&lookups), "{lookups} lookups");
    assert_eq!(net.holders(&ID).len(), cfg.pins() + 1);
}

#[test]
fn recorded_downloads_are_capped_per_bucket() {
    let cfg = ReplicaConfig::default();
    let mut net = Net::new(8, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        n.publish(now, ID, 1 << 20, WEEK);
    });
    net.run(Duration::from_secs(5));
    let holder = net.holders(&ID)[0].0;
    let mut counted = 0;
    net.with(holder, |n, now| {
        for k in 0..300u32 {
            let mut pk = [0u8; 32];
            pk[..4].copy_from_slice(&k.to_be_bytes());
            if n.record_download(now, &ID, PublicKey(pk)) {
                counted += 1;
            }
        }
    });
    assert_eq!(counted, ferry_swarm::replica::MAX_FETCHERS);
    // The next bucket starts a fresh set.
    net.run(Duration::from_secs(5) + cfg.demand_bucket);
    net.with(holder, |n, now| {
        assert!(n.record_download(now, &ID, PublicKey([0; 32])));
    });
}

#[test]
fn quota_and_capability_refuse() {
    let cfg = ReplicaConfig {
        quota_bytes: 10 << 20,
        ..ReplicaConfig::default()
    };
    let mut net = Net::new(4, &cfg);
    let mut small = cfg.clone();
    small.quota_bytes = 1 << 20;
    for i in 4..8 {
        net.add(i, small.clone());
    }
    let mut legacy = cfg.clone();
    legacy.capable = false;
    for i in 8..12 {
        net.add(i, legacy.clone());
    }
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        n.publish(now, ID, 5 << 20, WEEK);
    });
    net.run(Duration::from_secs(10));
    let h = net.holders(&ID);
    // Only the 3 roomy nodes other than the publisher can hold 5 MiB.
    assert_eq!(h.len(), 3, "{h:?}");
    for (a, _) in &h {
        let i = net.order.iter().position(|x| x == a).unwrap();
        assert!(i < 4, "a small or legacy node holds it: {i}");
    }
}

/// A check interval shorter than two check timeouts still detects a silent holder (a round
/// keeps the in-flight check's deadline), and a released item is dropped and repaired around.
#[test]
fn short_interval_repairs_and_release_drops() {
    let cfg = ReplicaConfig {
        check_interval: Duration::from_secs(3),
        check_timeout: Duration::from_secs(5),
        ..ReplicaConfig::default()
    };
    let mut net = Net::new(10, &cfg);
    let publisher = net.order[0];
    net.with(publisher, |n, now| {
        assert!(n.publish(now, ID, 1 << 20, WEEK));
    });
    net.run(Duration::from_secs(5));
    let h = net.holders(&ID);
    assert_eq!(h.len(), cfg.pins(), "{h:?}");
    net.kill(h[0].0);
    net.run(Duration::from_secs(40));
    let after = net.holders(&ID);
    assert_eq!(after.len(), cfg.pins(), "not repaired: {after:?}");
    assert!(!after.iter().any(|x| x.0 == h[0].0));
    // One holder releases: it no longer holds, and the others repair without it.
    let leaving = after[0].0;
    net.with(leaving, |n, _| assert!(n.release(&ID)));
    net.with(leaving, |n, _| assert_eq!(n.used_bytes(), 0));
    net.run(Duration::from_secs(80));
    let last = net.holders(&ID);
    assert_eq!(last.len(), cfg.pins(), "{last:?}");
}
