//! The value-store scenario (issue 9, `data-layer.md` §4 test 1): every node runs the real
//! [`Dht`] and a [`StoreHost`] from `ferry-data`, wired as its `lib.rs` "Hosting" section says.
//!
//! * **Hosting** ([`StoreNode`]): datagrams 0xe0–0xe4 go to [`StoreHost::handle_datagram`] (the
//!   reply back to the sender; responses to the node's [`Lookup`]s), everything else to the DHT.
//!   Every 10 s each good close-list node not heard from over the store protocol for
//!   [`REPROBE_AFTER`] gets a [`probe`] hello, so [`StoreHost::capable`] holds the DHT's
//!   neighbourhood (which seeds lookups, k = 8). Every 10 s: [`Store::handle_timeout`], capable
//!   expiry and holder republish ([`Store::due_republish`], 30 min ± 25 %, a put lookup each).
//! * **Owners** re-put their items with the longest TTL ([`MAX_TTL`], 2 h) after
//!   [`owner_republish_after`] the lifetimes the holders granted (60 min, sooner when young
//!   holders granted less); a mutable item gets a new sequence number at every other re-put. An owner that leaves (churn) hands its items to the fresh node that
//!   replaces it, as a user who comes back at a new address with the same keys would.
//! * **Offline messages**: a sender seals a message ([`mailbox::seal`]) to a recipient's mailbox
//!   target and puts it once, retrying only while no holder stored it; the sender never re-puts
//!   and the recipient stays offline, so the message lives only through holder republish
//!   (mail TTL 7 days).
//! * **Droppers**: a fraction of nodes answer puts "stored" and discard what they got
//!   ([`Store::remove`] right after the put).
//! * **Checks**: every [`StoreScenario::check_every`] and at the end, every live item (one whose
//!   first put was stored) and every message is fetched by a get lookup from a random live node
//!   that knows at least 8 capable peers. An item is retrievable when the lookup returns it at
//!   the newest sequence number whose put was stored; a message when its envelope comes back.
//!   Churn stops for the final check (2 minutes of virtual time).
//!
//! Nodes get one /24 each ([`Network::set_addr_stride`]): ferry-data's per-/24 quotas and its
//! "at most 2 holders per /24" rule would otherwise treat the simulated internet as a few
//! operators. The nodes present at the start are given an uptime drawn from the churn's
//! stationary distribution (exponential, mean 1 / churn, or 24 h without churn), since a
//! storer grants at most uptime / 4 of TTL. Mail proof of work is lowered to
//! [`SIM_MAIL_POW_BITS`] (it costs CPU, not protocol behaviour).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_crypto::{KeyPair, KeySource, PrecomputedCache, PublicKey};
use ferry_data::host::{StoreHost, probe};
use ferry_data::item::{
    Item, MAX_TTL, MutableItem, OWNER_REPUBLISH_INTERVAL, Target, delete_hash,
    owner_republish_after,
};
use ferry_data::lookup::{K, Lookup, LookupEvent, Operation};
use ferry_data::mailbox;
use ferry_data::store::{Store, StoreConfig};
use ferry_data::wire::{StoreEnvelope, StoreMessage};
use ferry_proto::dht::{Dht, DhtConfig};
use ferry_proto::{Destination, Endpoint, Transmit};
use serde::Serialize;

use crate::dht::{HashedKeys, peak_rss_bytes};
use crate::net::{LinkConfig, Network, NodeId, exp_delay, unit};

/// A close-list node not heard from over the store protocol for this long is probed again
/// (below the capable table's 182 s timeout, so a live neighbour stays capable).
pub const REPROBE_AFTER: Duration = Duration::from_secs(90);
/// Mail proof of work the simulated storers require (production: 16 bits).
pub const SIM_MAIL_POW_BITS: u32 = 4;
/// How often a node runs its store housekeeping (probes, expiry, holder republish).
const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// A message put that no holder stored is retried after this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Capable peers a node must know before it publishes or checks.
const MIN_CAPABLE: usize = K;
/// Most concurrent lookups per node (holder republish bursts are queued beyond this).
const MAX_LOOKUPS: usize = 64;

/// Parameters of a store run.
#[derive(Clone, Debug)]
pub struct StoreScenario {
    /// Nodes at any moment (seeds included).
    pub nodes: usize,
    /// Seed (bootstrap) nodes; they never leave.
    pub seeds: usize,
    /// Fraction of the nodes replaced per hour (0.3 = 30 %/h).
    pub churn_per_hour: f64,
    /// Fraction of the nodes that accept stores and drop them.
    pub droppers: f64,
    /// Links.
    pub link: LinkConfig,
    /// Total simulated time (the final check runs after it).
    pub duration: Duration,
    /// Warm-up before puts and churn start.
    pub warmup: Duration,
    /// Window in which the non-seed nodes join.
    pub join_window: Duration,
    /// Items put over the run (half immutable, half mutable), at uniform random moments between
    /// the warm-up and the last check interval.
    pub items: usize,
    /// Offline messages put over the run, same moments.
    pub messages: usize,
    /// Periodic check interval (`None`: only the final check).
    pub check_every: Option<Duration>,
    /// Run seed: same seed, same run.
    pub seed: u64,
    /// Threads advancing the nodes (the report is the same for any count).
    pub threads: usize,
}

impl StoreScenario {
    /// `nodes` nodes over `hours` simulated hours: 3 seeds, 10-minute warm-up (joins in the first
    /// 2 minutes), one item per node, one message per two nodes, checks every 6 h, no churn, no
    /// loss, no droppers, one thread.
    pub fn new(nodes: usize, hours: f64, seed: u64) -> Self {
        let duration = Duration::from_secs_f64((hours * 3600.0).max(1200.0));
        Self {
            nodes,
            seeds: 3,
            churn_per_hour: 0.0,
            droppers: 0.0,
            link: LinkConfig::default(),
            duration,
            warmup: Duration::from_secs(600),
            join_window: Duration::from_secs(120),
            items: nodes,
            messages: nodes / 2,
            check_every: Some(Duration::from_secs(6 * 3600)),
            seed,
            threads: 1,
        }
    }
}

/// What a run measured. `--json` of `ferry sim store` prints this.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StoreReport {
    /// Nodes (at any moment).
    pub nodes: usize,
    /// Run seed.
    pub seed: u64,
    /// Churn, fraction per hour.
    pub churn_per_hour: f64,
    /// Loss rate.
    pub loss: f64,
    /// Fraction of dropper nodes.
    pub droppers: f64,
    /// Simulated hours.
    pub hours: f64,
    /// Items put (immutable + mutable) whose first put was stored by at least one node.
    pub items_put: u64,
    /// Items whose first put no node stored (never counted as live).
    pub items_unstored: u64,
    /// Item checks over the run (periodic and final).
    pub item_checks: u64,
    /// Item checks that returned the item at its newest stored sequence number.
    pub item_checks_ok: u64,
    /// `item_checks_ok / item_checks` (1.0 when none).
    pub items_retrievable: f64,
    /// Items checked at the end.
    pub final_items: u64,
    /// Of those, retrievable.
    pub final_items_ok: u64,
    /// Final item retrievability.
    pub final_items_retrievable: f64,
    /// Messages put whose put was stored.
    pub messages_put: u64,
    /// Message checks over the run.
    pub message_checks: u64,
    /// Message checks that returned the envelope.
    pub message_checks_ok: u64,
    /// `message_checks_ok / message_checks`.
    pub messages_retrievable: f64,
    /// Messages checked at the end.
    pub final_messages: u64,
    /// Of those, retrievable.
    pub final_messages_ok: u64,
    /// Final message retrievability.
    pub final_messages_retrievable: f64,
    /// Store lookups started (owner puts, holder republish, message puts, checks).
    pub lookups: u64,
    /// Nodes replaced by churn.
    pub churned: u64,
    /// Datagrams sent per node per minute after the warm-up (DHT and store).
    pub packets_per_node_minute: f64,
    /// Bytes sent per node per minute after the warm-up (DHT and store).
    pub bytes_per_node_minute: f64,
    /// Store datagrams (0xe0–0xe4) sent per node per minute after the warm-up.
    pub store_packets_per_node_minute: f64,
    /// Store bytes sent per node per minute after the warm-up.
    pub store_bytes_per_node_minute: f64,
    /// Mean items (mail included) held per live honest node at the end.
    pub held_per_node: f64,
    /// Simulated seconds (final check included).
    pub simulated_seconds: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// Peak resident memory of this process, bytes (Linux `VmHWM`; 0 elsewhere).
    pub peak_rss_bytes: u64,
    /// Threads that advanced the nodes.
    pub threads: usize,
}

/// Why a node runs a lookup.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    /// Owner (re-)put of item `idx` at `seq`.
    Owner { idx: usize, seq: u64 },
    /// Sender's put of message `idx`.
    Message { idx: usize },
    /// Holder republish.
    Holder,
    /// Check `id`.
    Check { id: u64 },
}

#[derive(Debug)]
struct Active {
    lookup: Lookup,
    purpose: Purpose,
    best_seq: Option<u64>,
    mail_found: bool,
    want_mail: Option<[u8; 32]>,
    /// Lifetimes granted to a put, seconds.
    granted: Vec<u32>,
}

/// What the scenario learns from a node.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Owner {
        idx: usize,
        seq: u64,
        stored: usize,
    },
    Message {
        idx: usize,
        stored: usize,
    },
    Check {
        id: u64,
        seq: Option<u64>,
        mail: bool,
    },
}

/// An item a node owns and re-puts.
#[derive(Debug, Clone)]
struct Owned {
    idx: usize,
    kind: OwnedKind,
    next_put: Instant,
    /// Whether a put of it was ever stored (the first seq bump waits for it).
    stored_once: bool,
}

#[derive(Debug, Clone)]
enum OwnedKind {
    Immutable(Vec<u8>),
    Mutable {
        key: [u8; 32],
        salt: Vec<u8>,
        seq: u64,
        value: Vec<u8>,
    },
}

impl OwnedKind {
    fn target(&self) -> Target {
        match self {
            Self::Immutable(v) => Target::immutable(v),
            Self::Mutable { key, salt, .. } => Target::mutable(
                &SigningKey::from_bytes(key).verifying_key().to_bytes(),
                salt,
            ),
        }
    }
}

/// A message a node still has to get stored.
#[derive(Debug, Clone)]
struct Outgoing {
    idx: usize,
    target: Target,
    item: Item,
    next_put: Instant,
}

/// Per-node store traffic.
#[derive(Clone, Copy, Debug, Default)]
struct StoreTraffic {
    sent: u64,
    sent_bytes: u64,
    lookups: u64,
}

/// One simulated node: the real [`Dht`] and [`StoreHost`], the lookups it runs, the items it owns
/// and the messages it sends. Nodes share nothing, so several threads can advance them.
#[derive(Debug)]
pub struct StoreNode {
    dht: Dht,
    host: StoreHost,
    rng: FerryRng,
    dropper: bool,
    out: VecDeque<Transmit>,
    lookups: Vec<Active>,
    queued: VecDeque<(Target, Operation, Purpose, Option<[u8; 32]>)>,
    next_housekeeping: Instant,
    heard: HashMap<PublicKey, Instant>,
    probed: HashMap<PublicKey, Instant>,
    owned: Vec<Owned>,
    outgoing: Vec<Outgoing>,
    outcomes: Vec<Outcome>,
    traffic: StoreTraffic,
}

impl StoreNode {
    fn new(
        rng: &mut FerryRng,
        now: Instant,
        uptime: Duration,
        dropper: bool,
        source: &Arc<dyn KeySource>,
    ) -> Self {
        let mut node_rng = rng.fork();
        let keys = KeyPair::generate(&mut node_rng);
        let config = DhtConfig {
            lan_discovery: false,
            key_cache_size: 512,
            key_source: Some(source.clone()),
            ..DhtConfig::default()
        };
        let store_config = StoreConfig {
            mail_pow_bits: SIM_MAIL_POW_BITS,
            ..StoreConfig::default()
        };
        let started = now.checked_sub(uptime).unwrap_or(now);
        let store = Store::new(keys.public, store_config, started, &mut node_rng);
        let cache = PrecomputedCache::with_source(keys.secret.clone(), 1024, Some(source.clone()));
        let host = StoreHost::new(keys.public, store, cache);
        let dht_rng = node_rng.fork();
        Self {
            dht: Dht::new(config, keys, dht_rng, now),
            host,
            rng: node_rng,
            dropper,
            out: VecDeque::new(),
            lookups: Vec::new(),
            queued: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING,
            heard: HashMap::new(),
            probed: HashMap::new(),
            owned: Vec::new(),
            outgoing: Vec::new(),
            outcomes: Vec::new(),
            traffic: StoreTraffic::default(),
        }
    }

    /// The node's DHT state machine.
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// The node's store side.
    pub fn host(&self) -> &StoreHost {
        &self.host
    }

    /// Whether this node drops what it is asked to store.
    pub fn is_dropper(&self) -> bool {
        self.dropper
    }

    fn send(&mut self, to: SocketAddr, payload: Vec<u8>) {
        self.traffic.sent += 1;
        self.traffic.sent_bytes += payload.len() as u64;
        self.out.push_back(Transmit {
            destination: Destination::Addr(to),
            payload,
        });
    }

    fn start_lookup(&mut self, target: Target, op: Operation, purpose: Purpose) {
        self.start_lookup_for(target, op, purpose, None);
    }

    /// Starts a lookup (or queues it while [`MAX_LOOKUPS`] run); `want_mail`: the envelope a
    /// check looks for.
    fn start_lookup_for(
        &mut self,
        target: Target,
        op: Operation,
        purpose: Purpose,
        want_mail: Option<[u8; 32]>,
    ) {
        if self.lookups.len() >= MAX_LOOKUPS {
            self.queued.push_back((target, op, purpose, want_mail));
            return;
        }
        let seeds = self.host.capable.closest(&target, 2 * K);
        self.traffic.lookups += 1;
        self.lookups.push(Active {
            lookup: Lookup::new(self.host.our_pk, target, op, seeds),
            purpose,
            best_seq: None,
            mail_found: false,
            want_mail,
            granted: Vec::new(),
        });
    }

    fn start_check(&mut self, id: u64, target: Target, mail: Option<[u8; 32]>) {
        self.start_lookup_for(
            target,
            Operation::Get { seq: None },
            Purpose::Check { id },
            mail,
        );
    }

    /// Sends what the lookups want sent, handles their events, retires finished ones.
    fn drive(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.lookups.len() {
            while let Some((to, msg)) = self.lookups[i].lookup.poll_transmit(now, &mut self.rng) {
                if let Some(bytes) = self.host.seal(&to.public_key, &msg, &mut self.rng) {
                    self.send(to.addr, bytes);
                }
            }
            let mut finished = None;
            while let Some(ev) = self.lookups[i].lookup.poll_event() {
                let a = &mut self.lookups[i];
                match ev {
                    LookupEvent::Value { item, .. } => {
                        a.best_seq = Some(a.best_seq.map_or(item.seq(), |s| s.max(item.seq())));
                    }
                    LookupEvent::Mail { item, .. } => {
                        if let (Item::Mail(env), Some(want)) = (&item, a.want_mail)
                            && env.delete_hash == want
                        {
                            a.mail_found = true;
                        }
                    }
                    LookupEvent::Finished { stored, .. } => finished = Some(stored),
                    LookupEvent::Stored { ttl_s, .. } => a.granted.push(ttl_s),
                    LookupEvent::Refused { .. } => {}
                }
            }
            let Some(stored) = finished else {
                i += 1;
                continue;
            };
            let a = self.lookups.swap_remove(i);
            match a.purpose {
                Purpose::Owner { idx, seq } => {
                    if let Some(o) = self.owned.iter_mut().find(|o| o.idx == idx) {
                        o.stored_once |= stored > 0;
                        o.next_put = now + owner_republish_after(&a.granted);
                    }
                    self.outcomes.push(Outcome::Owner { idx, seq, stored });
                }
                Purpose::Message { idx } => {
                    if stored > 0 {
                        self.outgoing.retain(|m| m.idx != idx);
                    } else if let Some(m) = self.outgoing.iter_mut().find(|m| m.idx == idx) {
                        m.next_put = now + RETRY_AFTER;
                    }
                    self.outcomes.push(Outcome::Message { idx, stored });
                }
                Purpose::Check { id } => self.outcomes.push(Outcome::Check {
                    id,
                    seq: a.best_seq,
                    mail: a.mail_found,
                }),
                Purpose::Holder => {}
            }
            if let Some((t, op, p, w)) = self.queued.pop_front() {
                self.start_lookup_for(t, op, p, w);
            }
        }
    }

    /// Owner re-puts and message puts that are due.
    fn publish_due(&mut self, now: Instant) {
        if self.host.capable.len() < MIN_CAPABLE {
            return;
        }
        let ttl_s = MAX_TTL.as_secs() as u32;
        for k in 0..self.owned.len() {
            if self.owned[k].next_put > now {
                continue;
            }
            let bump = self.rng.next_u64() & 1 == 1;
            let o = &mut self.owned[k];
            o.next_put = now + OWNER_REPUBLISH_INTERVAL;
            let idx = o.idx;
            let target = o.kind.target();
            let (item, seq) = match &mut o.kind {
                OwnedKind::Immutable(v) => (Item::Immutable(v.clone()), 0),
                OwnedKind::Mutable {
                    key,
                    salt,
                    seq,
                    value,
                } => {
                    if bump && o.stored_once {
                        *seq += 1;
                    }
                    let m = MutableItem::sign(&SigningKey::from_bytes(key), salt, *seq, value);
                    (Item::Mutable(m), *seq)
                }
            };
            self.start_lookup(
                target,
                Operation::Put {
                    item,
                    ttl_s,
                    cas: None,
                },
                Purpose::Owner { idx, seq },
            );
        }
        let mail_ttl = ferry_data::item::MAX_MAIL_TTL.as_secs() as u32;
        for k in 0..self.outgoing.len() {
            if self.outgoing[k].next_put > now {
                continue;
            }
            let m = &mut self.outgoing[k];
            // Far future until the put finishes (then done, or retried).
            m.next_put = now + OWNER_REPUBLISH_INTERVAL;
            let (idx, target, item) = (m.idx, m.target, m.item.clone());
            self.start_lookup(
                target,
                Operation::Put {
                    item,
                    ttl_s: mail_ttl,
                    cas: None,
                },
                Purpose::Message { idx },
            );
        }
    }

    /// Probes, expiry, holder republish.
    fn housekeeping(&mut self, now: Instant) {
        self.host.store.handle_timeout(now, &mut self.rng);
        self.host.capable.expire(now);
        let horizon = ferry_data::host::CAPABLE_TIMEOUT;
        self.heard
            .retain(|_, t| now.saturating_duration_since(*t) < horizon);
        self.probed
            .retain(|_, t| now.saturating_duration_since(*t) < horizon);
        for c in self.dht.close_nodes(now) {
            if !c.good {
                continue;
            }
            let fresh = |m: &HashMap<PublicKey, Instant>, within: Duration| {
                m.get(&c.public_key)
                    .is_some_and(|t| now.saturating_duration_since(*t) < within)
            };
            if fresh(&self.heard, REPROBE_AFTER) || fresh(&self.probed, REPROBE_AFTER / 3) {
                continue;
            }
            self.probed.insert(c.public_key, now);
            let hello = probe(&mut self.rng);
            if let Some(bytes) = self.host.seal(&c.public_key, &hello, &mut self.rng) {
                self.send(c.addr, bytes);
            }
        }
        if !self.dropper {
            for r in self.host.store.due_republish(now, &mut self.rng) {
                self.start_lookup(
                    r.target,
                    Operation::Put {
                        item: r.item,
                        ttl_s: r.ttl_s,
                        cas: None,
                    },
                    Purpose::Holder,
                );
            }
        }
        self.publish_due(now);
    }

    fn store_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Some(h) = self.host.handle_datagram(now, from, bytes, &mut self.rng) else {
            return;
        };
        self.heard.insert(h.from_key, now);
        if let Some(reply) = h.reply {
            self.send(from, reply);
        }
        match &h.message {
            StoreMessage::Put(p) if self.dropper => {
                self.host.store.remove(&p.target);
            }
            StoreMessage::GetResponse(_) | StoreMessage::PutResponse(_) => {
                for a in &mut self.lookups {
                    if a.lookup.handle_response(&h.from_key, &h.message) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

impl Endpoint for StoreNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if bytes
            .first()
            .is_some_and(|&b| StoreEnvelope::is_store_kind(b))
        {
            self.store_datagram(now, from, bytes);
        } else {
            self.dht.handle_datagram(now, from, bytes);
            while self.dht.poll_event().is_some() {}
        }
        self.drive(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.dht.poll_timeout() {
            self.dht.handle_timeout(now);
            while self.dht.poll_event().is_some() {}
        }
        for a in &mut self.lookups {
            a.lookup.handle_timeout(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.housekeeping(now);
        }
        self.drive(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front().or_else(|| self.dht.poll_transmit())
    }

    fn poll_timeout(&self) -> Instant {
        self.lookups
            .iter()
            .filter_map(|a| a.lookup.poll_timeout())
            .fold(
                self.dht.poll_timeout().min(self.next_housekeeping),
                Instant::min,
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Join,
    Sample,
    PutItem,
    PutMessage,
    Churn,
    Check,
}

#[derive(Debug)]
struct ItemRec {
    owner: NodeId,
    target: Target,
    /// Newest sequence number whose put was stored (`None`: never stored).
    seq: Option<u64>,
}

#[derive(Debug)]
struct MessageRec {
    target: Target,
    delete_hash: [u8; 32],
    stored: bool,
}

#[derive(Debug, Default)]
struct Tally {
    item_checks: u64,
    item_ok: u64,
    message_checks: u64,
    message_ok: u64,
    final_items: u64,
    final_items_ok: u64,
    final_messages: u64,
    final_messages_ok: u64,
}

#[derive(Debug, Clone, Copy)]
struct PendingCheck {
    /// Item or message index.
    item: Option<(usize, u64)>,
    message: Option<usize>,
    last: bool,
}

/// Runs a scenario. `progress(simulated, total)` is called every simulated minute.
pub fn run(s: &StoreScenario, progress: impl FnMut(Duration, Duration)) -> StoreReport {
    run_observed(s, progress, |_| {})
}

/// As [`run`], and `interim(report)` every simulated hour after the warm-up: the checks done so
/// far (the `final_*` fields stay empty), traffic so far, `hours` = the time of the report.
pub fn run_observed(
    s: &StoreScenario,
    mut progress: impl FnMut(Duration, Duration),
    mut interim: impl FnMut(&StoreReport),
) -> StoreReport {
    let wall = Instant::now();
    // Virtual time 0 is a week after the wall clock, so initial nodes can have a past.
    let base = wall + Duration::from_secs(7 * 86_400);
    let mut rng = FerryRng::from_u64(s.seed);
    let mut net: Network<StoreNode> = Network::with_threads(s.link, rng.fork(), base, s.threads);
    net.set_addr_stride(256);
    let source: Arc<dyn KeySource> = Arc::new(HashedKeys);
    let mean_uptime_h = if s.churn_per_hour > 0.0 {
        (1.0 / s.churn_per_hour).min(24.0)
    } else {
        24.0
    };
    let make = |rng: &mut FerryRng, now: Instant, initial: bool| {
        let uptime = if initial {
            exp_delay(rng, Duration::from_secs_f64(mean_uptime_h * 3600.0))
        } else {
            Duration::ZERO
        };
        let dropper = unit(rng) < s.droppers;
        StoreNode::new(rng, now, uptime, dropper, &source)
    };
    let mut keys: HashMap<NodeId, PublicKey> = HashMap::new();
    let mut seeds = Vec::new();
    for _ in 0..s.seeds.min(s.nodes) {
        let id = net.add(|_, r| {
            let mut n = make(r, base, true);
            n.dropper = false;
            n
        });
        if let Some(n) = net.node(id) {
            keys.insert(id, n.dht.public_key());
        }
        seeds.push(id);
    }
    for &a in &seeds {
        for &b in &seeds {
            if a != b
                && let (Some(addr), Some(pk)) = (net.addr(b), keys.get(&b).copied())
            {
                net.with_node(a, |n, now| n.dht.bootstrap(now, addr, pk));
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
        let at = s.join_window.mul_f64(unit(&mut rng));
        push(&mut steps, at, Step::Join);
    }
    let mut t = Duration::ZERO;
    while t <= s.duration {
        push(&mut steps, t, Step::Sample);
        t += Duration::from_secs(60);
    }
    // Puts between the warm-up and the last check interval (or the last hour).
    let put_end = s
        .duration
        .saturating_sub(s.check_every.unwrap_or(Duration::from_secs(3600)))
        .max(s.warmup + Duration::from_secs(60));
    let put_span = put_end.saturating_sub(s.warmup);
    for _ in 0..s.items {
        let at = s.warmup + put_span.mul_f64(unit(&mut rng));
        push(&mut steps, at, Step::PutItem);
    }
    for _ in 0..s.messages {
        let at = s.warmup + put_span.mul_f64(unit(&mut rng));
        push(&mut steps, at, Step::PutMessage);
    }
    if let Some(every) = s.check_every.filter(|d| !d.is_zero()) {
        let mut t = s.warmup + every;
        while t < s.duration {
            push(&mut steps, t, Step::Check);
            t += every;
        }
    }
    let churn_mean = (s.churn_per_hour > 0.0 && s.nodes > s.seeds)
        .then(|| Duration::from_secs_f64(3600.0 / (s.churn_per_hour * s.nodes as f64)));
    if let Some(mean) = churn_mean {
        push(
            &mut steps,
            s.warmup + exp_delay(&mut rng, mean),
            Step::Churn,
        );
    }

    let mut items: Vec<ItemRec> = Vec::new();
    let mut messages: Vec<MessageRec> = Vec::new();
    let mut checks: HashMap<u64, PendingCheck> = HashMap::new();
    let mut next_check = 0u64;
    let mut tally = Tally::default();
    let mut churned = 0u64;
    let mut departed = StoreTraffic::default();
    let mut traffic_at_warmup: Option<(u64, u64, u64, u64)> = None;
    let mut recipients: Vec<KeyPair> = Vec::new();
    let mut immutable_next = true;

    let collect = |net: &mut Network<StoreNode>,
                   items: &mut Vec<ItemRec>,
                   messages: &mut Vec<MessageRec>,
                   checks: &mut HashMap<u64, PendingCheck>,
                   tally: &mut Tally| {
        for id in net.live() {
            let Some(n) = net.node_mut(id) else { continue };
            for o in std::mem::take(&mut n.outcomes) {
                apply(o, items, messages, checks, tally);
            }
        }
    };

    while let Some(Reverse((at, _, step))) = steps.pop() {
        if at > s.duration {
            break;
        }
        net.run_until(at);
        match step {
            Step::Join => {
                let id = net.add(|_, r| make(r, base, true));
                if let Some(n) = net.node(id) {
                    keys.insert(id, n.dht.public_key());
                }
                bootstrap_from_seeds(&mut net, id, &seeds, &keys);
            }
            Step::Sample => {
                progress(at, s.duration);
                collect(&mut net, &mut items, &mut messages, &mut checks, &mut tally);
                if traffic_at_warmup.is_none() && at >= s.warmup {
                    let st = net.stats();
                    let (ss, sb) = store_traffic(&net, departed);
                    traffic_at_warmup = Some((st.sent, st.sent_bytes, ss, sb));
                }
                if at > s.warmup && at.as_secs() % 3600 == 0 {
                    let st = net.stats();
                    let (ss, sb) = store_traffic(&net, departed);
                    let counters = Counters {
                        churned,
                        departed,
                        at_warmup: traffic_at_warmup.unwrap_or_default(),
                        at_end: (st.sent, st.sent_bytes, ss, sb),
                    };
                    interim(&build_report(
                        s, &net, &items, &messages, &tally, &counters, at, at, wall,
                    ));
                }
            }
            Step::PutItem => {
                let Some(owner) = pick_ready(&net, &net.live(), &mut rng) else {
                    continue;
                };
                let idx = items.len();
                let mut value = vec![0u8; 64 + rng.below(128)];
                rng.fill_bytes(&mut value);
                let kind = if immutable_next {
                    OwnedKind::Immutable(value)
                } else {
                    let mut key = [0u8; 32];
                    rng.fill_bytes(&mut key);
                    let mut salt = vec![0u8; 8];
                    rng.fill_bytes(&mut salt);
                    OwnedKind::Mutable {
                        key,
                        salt,
                        seq: 1,
                        value,
                    }
                };
                immutable_next = !immutable_next;
                items.push(ItemRec {
                    owner,
                    target: kind.target(),
                    seq: None,
                });
                net.with_node(owner, |n, now| {
                    n.owned.push(Owned {
                        idx,
                        kind,
                        next_put: now,
                        stored_once: false,
                    });
                    n.publish_due(now);
                    n.drive(now);
                });
            }
            Step::PutMessage => {
                let Some(sender) = pick_ready(&net, &net.live(), &mut rng) else {
                    continue;
                };
                // Recipients: a pool of one per two messages, so some mailboxes hold several.
                if recipients.len() < s.messages.div_ceil(2).max(1) {
                    recipients.push(KeyPair::generate(&mut rng));
                }
                let r = recipients[rng.below(recipients.len())].clone();
                let mut mb = [0u8; 32];
                mb.copy_from_slice(&ferry_crypto::sha256(r.public.as_bytes())[..32]);
                let target = Target(mb);
                let sender_keys = KeyPair::generate(&mut rng);
                let Ok((mut env, msg)) = mailbox::seal(
                    &sender_keys,
                    &r.public,
                    &target,
                    SIM_MAIL_POW_BITS,
                    1,
                    at.as_secs(),
                    b"offline message from the simulator",
                    &mut rng,
                ) else {
                    continue;
                };
                env.solve_pow(&target, SIM_MAIL_POW_BITS);
                let idx = messages.len();
                messages.push(MessageRec {
                    target,
                    delete_hash: delete_hash(&msg.delete_secret),
                    stored: false,
                });
                net.with_node(sender, |n, now| {
                    n.outgoing.push(Outgoing {
                        idx,
                        target,
                        item: Item::Mail(env),
                        next_put: now,
                    });
                    n.publish_due(now);
                    n.drive(now);
                });
            }
            Step::Churn => {
                let live: Vec<NodeId> = net
                    .live()
                    .into_iter()
                    .filter(|i| !seeds.contains(i))
                    .collect();
                if !live.is_empty() {
                    let gone = live[rng.below(live.len())];
                    let mut handed = Vec::new();
                    if let Some(mut node) = net.remove(gone) {
                        for o in std::mem::take(&mut node.outcomes) {
                            apply(o, &mut items, &mut messages, &mut checks, &mut tally);
                        }
                        departed.sent += node.traffic.sent;
                        departed.sent_bytes += node.traffic.sent_bytes;
                        departed.lookups += node.traffic.lookups;
                        handed = node.owned;
                    }
                    keys.remove(&gone);
                    let id = net.add(|_, r| make(r, base, false));
                    if let Some(n) = net.node(id) {
                        keys.insert(id, n.dht.public_key());
                    }
                    bootstrap_from_seeds(&mut net, id, &seeds, &keys);
                    for o in &handed {
                        if let Some(rec) = items.get_mut(o.idx) {
                            rec.owner = id;
                        }
                    }
                    net.with_node(id, |n, now| {
                        for mut o in handed {
                            o.next_put = now;
                            n.owned.push(o);
                        }
                    });
                    churned += 1;
                }
                if let Some(mean) = churn_mean {
                    push(&mut steps, at + exp_delay(&mut rng, mean), Step::Churn);
                }
            }
            Step::Check => {
                collect(&mut net, &mut items, &mut messages, &mut checks, &mut tally);
                start_checks(
                    &mut net,
                    &mut rng,
                    &items,
                    &messages,
                    &mut checks,
                    &mut next_check,
                    false,
                );
            }
        }
    }
    net.run_until(s.duration);
    collect(&mut net, &mut items, &mut messages, &mut checks, &mut tally);
    // Traffic over the run after the warm-up, before the final check.
    let st = net.stats();
    let (ss, sb) = store_traffic(&net, departed);
    start_checks(
        &mut net,
        &mut rng,
        &items,
        &messages,
        &mut checks,
        &mut next_check,
        true,
    );
    let end = s.duration + Duration::from_secs(120);
    net.run_until(end);
    collect(&mut net, &mut items, &mut messages, &mut checks, &mut tally);
    let end_traffic = (st.sent, st.sent_bytes, ss, sb);
    let counters = Counters {
        churned,
        departed,
        at_warmup: traffic_at_warmup.unwrap_or_default(),
        at_end: end_traffic,
    };
    build_report(
        s, &net, &items, &messages, &tally, &counters, s.duration, end, wall,
    )
}

/// Run-wide counters a report needs.
#[derive(Clone, Copy, Debug)]
struct Counters {
    churned: u64,
    departed: StoreTraffic,
    /// (packets, bytes, store packets, store bytes) sent by then.
    at_warmup: (u64, u64, u64, u64),
    at_end: (u64, u64, u64, u64),
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    s: &StoreScenario,
    net: &Network<StoreNode>,
    items: &[ItemRec],
    messages: &[MessageRec],
    tally: &Tally,
    c: &Counters,
    traffic_until: Duration,
    simulated: Duration,
    wall: Instant,
) -> StoreReport {
    let (p0, b0, s0, sb0) = c.at_warmup;
    let (p1, b1, s1, sb1) = c.at_end;
    let minutes = traffic_until.saturating_sub(s.warmup).as_secs_f64() / 60.0;
    let per = |x: u64| {
        if minutes > 0.0 {
            x as f64 / s.nodes.max(1) as f64 / minutes
        } else {
            0.0
        }
    };
    let live = net.live();
    let lookups_total = live
        .iter()
        .filter_map(|&i| net.node(i).map(|n| n.traffic.lookups))
        .sum::<u64>()
        + c.departed.lookups;
    let honest: Vec<usize> = live
        .iter()
        .filter_map(|&i| net.node(i))
        .filter(|n| !n.dropper)
        .map(|n| n.host.store.stats().items)
        .collect();
    let rate = |ok: u64, n: u64| if n == 0 { 1.0 } else { ok as f64 / n as f64 };
    StoreReport {
        nodes: s.nodes,
        seed: s.seed,
        churn_per_hour: s.churn_per_hour,
        loss: s.link.loss,
        droppers: s.droppers,
        hours: traffic_until.as_secs_f64() / 3600.0,
        items_put: items.iter().filter(|i| i.seq.is_some()).count() as u64,
        items_unstored: items.iter().filter(|i| i.seq.is_none()).count() as u64,
        item_checks: tally.item_checks,
        item_checks_ok: tally.item_ok,
        items_retrievable: rate(tally.item_ok, tally.item_checks),
        final_items: tally.final_items,
        final_items_ok: tally.final_items_ok,
        final_items_retrievable: rate(tally.final_items_ok, tally.final_items),
        messages_put: messages.iter().filter(|m| m.stored).count() as u64,
        message_checks: tally.message_checks,
        message_checks_ok: tally.message_ok,
        messages_retrievable: rate(tally.message_ok, tally.message_checks),
        final_messages: tally.final_messages,
        final_messages_ok: tally.final_messages_ok,
        final_messages_retrievable: rate(tally.final_messages_ok, tally.final_messages),
        lookups: lookups_total,
        churned: c.churned,
        packets_per_node_minute: per(p1 - p0),
        bytes_per_node_minute: per(b1 - b0),
        store_packets_per_node_minute: per(s1 - s0),
        store_bytes_per_node_minute: per(sb1 - sb0),
        held_per_node: honest.iter().sum::<usize>() as f64 / honest.len().max(1) as f64,
        simulated_seconds: simulated.as_secs_f64(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        peak_rss_bytes: peak_rss_bytes(),
        threads: net.threads(),
    }
}

fn apply(
    o: Outcome,
    items: &mut [ItemRec],
    messages: &mut [MessageRec],
    checks: &mut HashMap<u64, PendingCheck>,
    tally: &mut Tally,
) {
    match o {
        Outcome::Owner { idx, seq, stored } => {
            if stored > 0
                && let Some(rec) = items.get_mut(idx)
            {
                rec.seq = Some(rec.seq.map_or(seq, |s| s.max(seq)));
            }
        }
        Outcome::Message { idx, stored } => {
            if stored > 0
                && let Some(m) = messages.get_mut(idx)
            {
                m.stored = true;
            }
        }
        Outcome::Check { id, seq, mail } => {
            let Some(c) = checks.remove(&id) else { return };
            if let Some((_, want)) = c.item {
                let ok = seq.is_some_and(|s| s >= want);
                tally.item_checks += 1;
                tally.item_ok += u64::from(ok);
                if c.last {
                    tally.final_items += 1;
                    tally.final_items_ok += u64::from(ok);
                }
            }
            if c.message.is_some() {
                tally.message_checks += 1;
                tally.message_ok += u64::from(mail);
                if c.last {
                    tally.final_messages += 1;
                    tally.final_messages_ok += u64::from(mail);
                }
            }
        }
    }
}

/// Starts a get lookup for every live item and every stored message, each from a random ready
/// node.
fn start_checks(
    net: &mut Network<StoreNode>,
    rng: &mut FerryRng,
    items: &[ItemRec],
    messages: &[MessageRec],
    checks: &mut HashMap<u64, PendingCheck>,
    next_check: &mut u64,
    last: bool,
) {
    let live = net.live();
    for (idx, rec) in items.iter().enumerate() {
        let Some(seq) = rec.seq else { continue };
        if net.node(rec.owner).is_none() {
            continue;
        }
        let Some(by) = pick_ready(net, &live, rng) else {
            continue;
        };
        *next_check += 1;
        let id = *next_check;
        checks.insert(
            id,
            PendingCheck {
                item: Some((idx, seq)),
                message: None,
                last,
            },
        );
        net.with_node(by, |n, now| {
            n.start_check(id, rec.target, None);
            n.drive(now);
        });
    }
    for (idx, m) in messages.iter().enumerate() {
        if !m.stored {
            continue;
        }
        let Some(by) = pick_ready(net, &live, rng) else {
            continue;
        };
        *next_check += 1;
        let id = *next_check;
        checks.insert(
            id,
            PendingCheck {
                item: None,
                message: Some(idx),
                last,
            },
        );
        net.with_node(by, |n, now| {
            n.start_check(id, m.target, Some(m.delete_hash));
            n.drive(now);
        });
    }
}

/// A random live node that knows at least [`MIN_CAPABLE`] capable peers (up to 32 tries).
fn pick_ready(net: &Network<StoreNode>, live: &[NodeId], rng: &mut FerryRng) -> Option<NodeId> {
    if live.is_empty() {
        return None;
    }
    for _ in 0..32 {
        let id = live[rng.below(live.len())];
        if net
            .node(id)
            .is_some_and(|n| n.host.capable.len() >= MIN_CAPABLE)
        {
            return Some(id);
        }
    }
    None
}

/// Store datagrams and bytes sent by every node so far (live and departed).
fn store_traffic(net: &Network<StoreNode>, departed: StoreTraffic) -> (u64, u64) {
    net.live()
        .iter()
        .filter_map(|&i| net.node(i))
        .fold((departed.sent, departed.sent_bytes), |(a, b), n| {
            (a + n.traffic.sent, b + n.traffic.sent_bytes)
        })
}

fn bootstrap_from_seeds(
    net: &mut Network<StoreNode>,
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
