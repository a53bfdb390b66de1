//! Live streams (`data-layer.md` §1.7, §3.7, §4 item 11): signed segments, a two-stripe push tree
//! chosen by measured RTT and spare upload, pull repair, start-up and stall accounting.
//!
//! # Segments and signatures
//!
//! The streamer cuts the stream into segments of [`StreamConfig::segment`] (~1 s). For each it
//! signs stream id ‖ seq ‖ BLAKE3(segment) ‖ ts_ms with its Ed25519 key (the stream id *is* the
//! verifying key), so any peer may relay a segment with its signature (PPSPP's "munro" idea) and
//! every receiver verifies it. A segment whose hash or signature does not verify is dropped
//! ([`StreamStats::tampered`]); the peer that pushed it loses its child (the receiver detaches
//! and marks it bad) and the gap is pulled from someone else.
//!
//! # Tree
//!
//! Segment `seq` belongs to stripe `seq % 2`. Every viewer keeps one parent per stripe (split
//! stream, 2 parents), so a parent feeds each child half the stream and one parent's departure
//! costs half the segments until repair. A node offers
//! `floor(upload_share · upload / (rate / 2))` stripe slots (the fan-out rule `floor(spare_upload
//! / bitrate)` counted in half-rate stripes); the streamer offers `root_copies` copies of the
//! stream (6 stripe slots for 3 copies).
//!
//! Joining: the viewer sends [`StreamMsg::Join`] to the streamer, which also acts as the tracker:
//! it answers with [`StreamMsg::Peers`] (viewers that reported free slots, shallowest first, and
//! itself while it has slots). The viewer pings them ([`StreamMsg::Ping`], RTT measured) and
//! attaches each stripe to the candidate with the best score `rtt_ms + 100 · depth − 10 ·
//! min(free, 8)` that has a free slot and is not its own child in that stripe. Depths are
//! advisory: a node that loses its parent keeps its subtree and re-attaches wherever the score
//! is best, so a stale depth can, rarely, close a loop; a loop receives nothing, so its members
//! time out and re-attach elsewhere (loops heal within the parent timeout).
//! A new child gets the parent's newest segment of its stripe at once (fast start).
//!
//! Children send [`StreamMsg::Alive`] to their parents every second (parents drop a child silent
//! for [`StreamConfig::child_timeout`]) and to the streamer every 5 s (its peer registry); parents
//! send it to their children every 500 ms (their depth rides along). A parent not heard from for
//! [`StreamConfig::parent_timeout`] (1.8 s) is gone; one that lives but pushed nothing for
//! [`StreamConfig::starve_timeout`] (6 s) is starved; either way the stripe re-attaches. An
//! orphaned parent keeps its subtree, which waits (pulling gaps) while it re-attaches.
//!
//! # Pull repair and playback
//!
//! A missing segment is wanted ([`StreamMsg::Want`]) from another peer (parents and probed
//! candidates, never the parent that failed to push it) when a segment two past it has arrived or
//! its play deadline is less than [`StreamConfig::repair_lead`] away; unanswered wants are
//! retried elsewhere after [`StreamConfig::want_timeout`]. Peers with at least the stream rate of
//! upload serve wants; the streamer serves them from a budget of
//! [`StreamConfig::streamer_repair_copies`].
//!
//! Playback starts once [`StreamConfig::startup_segments`] (3) consecutive segments are buffered
//! (start-up delay = join → first play). Then one segment plays per segment duration; a missing segment stalls playback until it
//! arrives, or is skipped after [`StreamConfig::max_stall`] if later ones are there. Segments
//! older than the live discard window (30 s) behind the newest are dropped. The stall ratio is
//! stalled time / time since playback started.
//!
//! # Caps
//!
//! Buffer ≤ window / segment + 8 segments; candidates ≤ [`MAX_CANDIDATES`]; children ≤
//! [`MAX_CHILDREN`]; tracker registry ≤ [`MAX_REGISTRY`] (stalest evicted); wants in flight ≤
//! [`MAX_WANTS`]; arrivals log ≤ [`MAX_ARRIVALS`]; outbound queue ≤ [`MAX_OUT`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_proto::{Destination, Endpoint, Transmit};
use ferry_wire::node::PackedNode;

use crate::wire::{PeerEntry, Segment, StreamId, StreamMsg};

/// Most candidates a viewer keeps.
pub const MAX_CANDIDATES: usize = 32;
/// Most children a node feeds.
pub const MAX_CHILDREN: usize = 64;
/// Most viewers in the streamer's registry.
pub const MAX_REGISTRY: usize = 4096;
/// Most wants in flight.
pub const MAX_WANTS: usize = 16;
/// Most arrivals logged (for glass-to-glass figures).
pub const MAX_ARRIVALS: usize = 100_000;
/// Most datagrams queued.
pub const MAX_OUT: usize = 16_384;
/// Depth meaning "not attached".
pub const NO_DEPTH: u8 = 255;
/// Deepest a node may attach (a longer chain is a loop being formed).
const MAX_DEPTH: u8 = 32;
/// Stripe slots a viewer needs to attach directly to the streamer.
pub const ROOT_MIN_CAPACITY: u8 = 6;
/// Peers the tracker returns per join.
const PEERS_PER_JOIN: usize = 16;
/// Candidates pinged per round.
const PING_FANOUT: usize = 8;
/// How long to wait for pongs before choosing parents.
const PROBE_WAIT: Duration = Duration::from_millis(400);
/// Viewer → streamer status interval.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// Viewer → parents keep-alive interval.
const ALIVE_EVERY: Duration = Duration::from_secs(1);
/// Parent → children keep-alive interval.
const CHILD_ALIVE_EVERY: Duration = Duration::from_millis(500);
/// Housekeeping tick.
const TICK: Duration = Duration::from_millis(100);
/// A registry entry not refreshed this long is dropped.
const REGISTRY_TTL: Duration = Duration::from_secs(15);

/// Stream parameters.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Stream rate, bytes/s.
    pub rate_bytes_per_s: u64,
    /// This node's upload capacity, bytes/s.
    pub upload_bytes_per_s: u64,
    /// Share of the upload offered to the tree (0.8); the rest serves repair and control.
    pub upload_share: f64,
    /// Streamer only: tree capacity in copies of the stream (3.0 = 6 stripe slots).
    pub root_copies: f64,
    /// Streamer only: pull-repair budget in copies of the stream (0.5).
    pub streamer_repair_copies: f64,
    /// Segment duration (1 s).
    pub segment: Duration,
    /// Live discard window (30 s).
    pub window: Duration,
    /// A parent not heard from at all (segments or its 500 ms keep-alives) this long is gone.
    pub parent_timeout: Duration,
    /// A parent that is alive but has pushed no segment this long is given up (it is starved).
    pub starve_timeout: Duration,
    /// A child silent this long is dropped.
    pub child_timeout: Duration,
    /// An unanswered want is retried elsewhere after this long.
    pub want_timeout: Duration,
    /// Want a missing segment when its play deadline is this close.
    pub repair_lead: Duration,
    /// Playback starts once this many consecutive segments are buffered (3: ~2 s of slack
    /// behind the newest, enough to pull a stripe's gap while an orphaned parent re-attaches).
    pub startup_segments: u64,
    /// Skip a missing segment after stalling this long on it, if later ones are buffered.
    pub max_stall: Duration,
    /// Test hook: flip a byte in every segment this node forwards (a malicious relay).
    pub tamper: bool,
}

impl StreamConfig {
    /// Defaults for a stream of `rate_bytes_per_s` and a node uploading `upload_bytes_per_s`.
    pub fn new(rate_bytes_per_s: u64, upload_bytes_per_s: u64) -> Self {
        Self {
            rate_bytes_per_s: rate_bytes_per_s.max(1),
            upload_bytes_per_s,
            upload_share: 0.8,
            root_copies: 3.0,
            streamer_repair_copies: 0.5,
            segment: Duration::from_secs(1),
            window: Duration::from_secs(30),
            parent_timeout: Duration::from_millis(1800),
            starve_timeout: Duration::from_secs(6),
            child_timeout: Duration::from_secs(5),
            want_timeout: Duration::from_millis(800),
            repair_lead: Duration::from_millis(1200),
            max_stall: Duration::from_secs(3),
            startup_segments: 3,
            tamper: false,
        }
    }

    fn window_segments(&self) -> u64 {
        (self.window.as_millis() / self.segment.as_millis().max(1)).max(1) as u64
    }
}

/// What a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// Playback started (viewers): `startup` after [`StreamNode::start`].
    Playing {
        /// Start-up delay.
        startup: Duration,
        /// First segment played.
        seq: u64,
    },
    /// A parent was given up (silent past the timeout, or pushed a tampered segment).
    ParentLost {
        /// Stripe.
        stripe: u8,
    },
    /// A stripe got its first pushed segment from a new parent after a loss.
    ParentRestored {
        /// Stripe.
        stripe: u8,
        /// Time since the loss was detected.
        after: Duration,
        /// When the segment arrived.
        at: Instant,
    },
}

/// Counters and playback figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Segments accepted (verified, new).
    pub received: u64,
    /// Of those, by pull repair.
    pub repaired: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Segments rejected: bad hash/signature (tampered).
    pub tampered: u64,
    /// Segments outside the live window dropped.
    pub stale: u64,
    /// Wants sent.
    pub wants: u64,
    /// Wants served.
    pub wants_served: u64,
    /// Segment bytes sent (pushes and repairs).
    pub segment_bytes_sent: u64,
    /// All bytes sent.
    pub bytes_sent: u64,
    /// Segments played.
    pub played: u64,
    /// Segments skipped after a stall.
    pub skipped: u64,
    /// Stall episodes.
    pub stalls: u64,
    /// Stalled time, ms.
    pub stalled_ms: u64,
    /// Parents lost.
    pub parents_lost: u64,
    /// Undecodable datagrams.
    pub malformed: u64,
}

#[derive(Clone, Debug)]
struct Cand {
    node: PackedNode,
    free: u8,
    depth: [u8; 2],
    rtt: Option<Duration>,
    ping: Option<(u64, Instant)>,
    bad: bool,
}

#[derive(Clone, Copy, Debug)]
struct Parent {
    addr: SocketAddr,
    /// Last segment pushed by it.
    last: Instant,
    /// Last message of any kind from it.
    heard: Instant,
    /// Whether a segment has arrived from it yet.
    fed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Child {
    addr: SocketAddr,
    stripe: u8,
    last: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Want {
    sent: Instant,
    asked: [Option<SocketAddr>; 4],
    attempts: u8,
}

#[derive(Clone, Debug)]
struct Registered {
    entry: PeerEntry,
    seen: Instant,
    /// Stripe slots its declared upload allows.
    capacity: u8,
}

/// A streamer or viewer (see the module docs).
#[derive(Debug)]
pub struct StreamNode {
    config: StreamConfig,
    stream: StreamId,
    verifying: Option<VerifyingKey>,
    signing: Option<SigningKey>,
    our: PackedNode,
    tracker: Option<SocketAddr>,
    rng: FerryRng,
    epoch: Instant,
    next_seq: u64,
    segments: BTreeMap<u64, Segment>,
    newest: Option<u64>,
    parents: [Option<Parent>; 2],
    attaching: [Option<(SocketAddr, Instant)>; 2],
    lost_at: [Option<Instant>; 2],
    depth: [u8; 2],
    connected: [bool; 2],
    children: Vec<Child>,
    candidates: Vec<Cand>,
    probe_until: Option<Instant>,
    joined_at: Option<Instant>,
    join_retry: Option<Instant>,
    last_join: Option<Instant>,
    next_status: Instant,
    next_alive: Instant,
    next_child_alive: Instant,
    next_tick: Instant,
    wants: HashMap<u64, Want>,
    repair_tokens: f64,
    repair_refill: Instant,
    registry: HashMap<SocketAddr, Registered>,
    // Playback.
    play_start: Option<Instant>,
    play_seq: u64,
    play_at: Instant,
    stalled_since: Option<Instant>,
    arrivals: Vec<(u64, Instant)>,
    out: VecDeque<Transmit>,
    events: VecDeque<StreamEvent>,
    stats: StreamStats,
}

fn verify(vk: &VerifyingKey, s: &Segment) -> bool {
    let hash = blake3::hash(&s.data);
    let msg = Segment::signed_bytes(&s.stream, s.seq, hash.as_bytes(), s.ts_ms);
    vk.verify_strict(&msg, &Signature::from_bytes(&s.sig))
        .is_ok()
}

impl StreamNode {
    fn base(
        config: StreamConfig,
        stream: StreamId,
        our: PackedNode,
        rng: FerryRng,
        now: Instant,
    ) -> Self {
        let far = now + Duration::from_secs(365 * 24 * 3600);
        Self {
            config,
            stream,
            verifying: VerifyingKey::from_bytes(&stream).ok(),
            signing: None,
            our,
            tracker: None,
            rng,
            epoch: now,
            next_seq: 0,
            segments: BTreeMap::new(),
            newest: None,
            parents: [None, None],
            attaching: [None, None],
            lost_at: [None, None],
            depth: [NO_DEPTH; 2],
            connected: [false; 2],
            children: Vec::new(),
            candidates: Vec::new(),
            probe_until: None,
            joined_at: None,
            join_retry: None,
            last_join: None,
            next_status: far,
            next_alive: far,
            next_child_alive: now,
            next_tick: now + TICK,
            wants: HashMap::new(),
            repair_tokens: 0.0,
            repair_refill: now,
            registry: HashMap::new(),
            play_start: None,
            play_seq: 0,
            play_at: far,
            stalled_since: None,
            arrivals: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: StreamStats::default(),
        }
    }

    /// The streamer of a stream whose id is `key`'s verifying key.
    pub fn streamer(
        config: StreamConfig,
        key: SigningKey,
        our: PackedNode,
        rng: FerryRng,
        now: Instant,
    ) -> Self {
        let stream = key.verifying_key().to_bytes();
        let mut n = Self::base(config, stream, our, rng, now);
        n.signing = Some(key);
        n.depth = [0, 0];
        n
    }

    /// A viewer of `stream` whose streamer (tracker) is at `tracker`; call [`StreamNode::start`].
    pub fn viewer(
        config: StreamConfig,
        stream: StreamId,
        our: PackedNode,
        tracker: SocketAddr,
        rng: FerryRng,
        now: Instant,
    ) -> Self {
        let mut n = Self::base(config, stream, our, rng, now);
        n.tracker = Some(tracker);
        n
    }

    /// Starts watching: asks the tracker for peers (start-up delay counts from here).
    pub fn start(&mut self, now: Instant) {
        if self.signing.is_some() || self.joined_at.is_some() {
            return;
        }
        self.joined_at = Some(now);
        self.send_join(now);
        self.next_alive = now + ALIVE_EVERY;
        self.next_status = now + STATUS_EVERY;
    }

    /// The stream id.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Counters and playback figures.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// When the streamer's clock started (segment `ts_ms` counts from here).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Playback start, if started.
    pub fn play_start(&self) -> Option<Instant> {
        self.play_start
    }

    /// Join time, if started.
    pub fn joined_at(&self) -> Option<Instant> {
        self.joined_at
    }

    /// Stalled time so far (including a stall in progress at `now`).
    pub fn stalled(&self, now: Instant) -> Duration {
        Duration::from_millis(self.stats.stalled_ms)
            + self
                .stalled_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }

    /// First arrival time of each segment received (seq, when), at most [`MAX_ARRIVALS`].
    pub fn arrivals(&self) -> &[(u64, Instant)] {
        &self.arrivals
    }

    /// Current parents' addresses per stripe.
    pub fn parents(&self) -> [Option<SocketAddr>; 2] {
        [
            self.parents[0].map(|p| p.addr),
            self.parents[1].map(|p| p.addr),
        ]
    }

    /// Children fed (address, stripe).
    pub fn children(&self) -> Vec<(SocketAddr, u8)> {
        self.children.iter().map(|c| (c.addr, c.stripe)).collect()
    }

    /// Depth per stripe ([`NO_DEPTH`] = never attached).
    pub fn depth(&self) -> [u8; 2] {
        self.depth
    }

    /// The depth this node advertises: its depth in each stripe where its chain of parents
    /// reaches the streamer, [`NO_DEPTH`] where it is cut off (so nobody attaches below it).
    pub fn adv_depth(&self) -> [u8; 2] {
        if self.signing.is_some() {
            return [0, 0];
        }
        std::array::from_fn(|s| {
            if self.connected[s] && self.parents[s].is_some() {
                self.depth[s]
            } else {
                NO_DEPTH
            }
        })
    }

    /// A buffered segment's bytes (verified), if `seq` is still in the buffer (hosts copy
    /// segments out in order, e.g. `ferry stream watch`).
    pub fn segment_data(&self, seq: u64) -> Option<&[u8]> {
        self.segments.get(&seq).map(|s| s.data.as_slice())
    }

    /// The newest segment buffered (or pushed, on the streamer).
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// The next segment playback wants (viewers; everything below it was played or skipped).
    pub fn play_seq(&self) -> u64 {
        self.play_seq
    }

    /// Viewers in the tracker's registry (streamer).
    pub fn registered(&self) -> usize {
        self.registry.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    fn slots(&self) -> usize {
        let c = &self.config;
        let budget = if self.signing.is_some() {
            c.root_copies * c.rate_bytes_per_s as f64
        } else {
            c.upload_share * c.upload_bytes_per_s as f64
        };
        let stripe_rate = c.rate_bytes_per_s as f64 / 2.0;
        ((budget / stripe_rate).floor() as usize).min(MAX_CHILDREN)
    }

    fn free(&self) -> u8 {
        self.slots().saturating_sub(self.children.len()).min(254) as u8
    }

    fn send(&mut self, to: SocketAddr, msg: &StreamMsg) {
        if self.out.len() >= MAX_OUT {
            return;
        }
        let payload = msg.encode();
        self.stats.bytes_sent += payload.len() as u64;
        if let StreamMsg::Segment(s) = msg {
            self.stats.segment_bytes_sent += s.data.len() as u64;
        }
        self.out.push_back(Transmit {
            destination: Destination::Addr(to),
            payload,
        });
    }

    fn send_join(&mut self, now: Instant) {
        let Some(t) = self.tracker else { return };
        if self
            .last_join
            .is_some_and(|j| now.saturating_duration_since(j) < Duration::from_secs(1))
        {
            self.join_retry = Some(now + Duration::from_secs(1));
            return;
        }
        self.last_join = Some(now);
        let kbps = (self.config.upload_bytes_per_s * 8 / 1000).min(u64::from(u32::MAX)) as u32;
        self.send(
            t,
            &StreamMsg::Join {
                stream: self.stream,
                upload_kbps: kbps,
            },
        );
        self.join_retry = Some(now + Duration::from_secs(2));
    }

    /// Streamer: cuts, signs and pushes the next segment; returns its sequence number (`None`
    /// on a viewer or when `data` exceeds [`crate::wire::MAX_SEGMENT`]).
    pub fn push_segment(&mut self, now: Instant, data: Vec<u8>) -> Option<u64> {
        let key = self.signing.as_ref()?;
        if data.len() > crate::wire::MAX_SEGMENT {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let ts_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let hash = blake3::hash(&data);
        let sig = key
            .sign(&Segment::signed_bytes(
                &self.stream,
                seq,
                hash.as_bytes(),
                ts_ms,
            ))
            .to_bytes();
        let seg = Segment {
            stream: self.stream,
            seq,
            ts_ms,
            sig,
            data,
        };
        self.store_segment(seg.clone());
        self.forward(&seg);
        Some(seq)
    }

    fn store_segment(&mut self, seg: Segment) {
        let seq = seg.seq;
        self.segments.insert(seq, seg);
        self.newest = Some(self.newest.map_or(seq, |n| n.max(seq)));
        let keep = self.config.window_segments();
        if let Some(n) = self.newest {
            let floor = n.saturating_sub(keep);
            while self
                .segments
                .first_key_value()
                .is_some_and(|(&k, _)| k < floor)
            {
                self.segments.pop_first();
            }
        }
    }

    fn forward(&mut self, seg: &Segment) {
        let stripe = (seg.seq % 2) as u8;
        let targets: Vec<SocketAddr> = self
            .children
            .iter()
            .filter(|c| c.stripe == stripe)
            .map(|c| c.addr)
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut seg = seg.clone();
        if self.config.tamper && !seg.data.is_empty() {
            let i = (self.rng.next_u64() % seg.data.len() as u64) as usize;
            seg.data[i] ^= 0x01;
        }
        let msg = StreamMsg::Segment(seg);
        for t in targets {
            self.send(t, &msg);
        }
    }

    fn on_segment(&mut self, now: Instant, from: SocketAddr, seg: Segment) {
        if seg.stream != self.stream || self.signing.is_some() {
            return;
        }
        let stripe = (seg.seq % 2) as usize;
        let from_parent = self.parents[stripe].is_some_and(|p| p.addr == from);
        let Some(vk) = self.verifying else { return };
        if !verify(&vk, &seg) {
            self.stats.tampered += 1;
            // Drop the peer that sent it: as a parent, and as a candidate.
            for c in &mut self.candidates {
                if c.node.addr == from {
                    c.bad = true;
                }
            }
            for s in 0..2 {
                if self.parents[s].is_some_and(|p| p.addr == from) {
                    self.lose_parent(now, s);
                }
            }
            return;
        }
        if from_parent && let Some(p) = self.parents[stripe].as_mut() {
            p.last = now;
            p.heard = now;
            if !p.fed {
                p.fed = true;
                if let Some(at) = self.lost_at[stripe].take() {
                    self.events.push_back(StreamEvent::ParentRestored {
                        stripe: stripe as u8,
                        after: now.saturating_duration_since(at),
                        at: now,
                    });
                }
            }
        }
        let seq = seg.seq;
        if self.segments.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        let floor = self
            .newest
            .map_or(0, |n| n.saturating_sub(self.config.window_segments()));
        if seq < floor || (self.play_start.is_some() && seq < self.play_seq) {
            self.stats.stale += 1;
            return;
        }
        self.stats.received += 1;
        if self.wants.remove(&seq).is_some() && !from_parent {
            self.stats.repaired += 1;
        }
        if self.arrivals.len() < MAX_ARRIVALS {
            self.arrivals.push((seq, now));
        }
        self.store_segment(seg.clone());
        self.forward(&seg);
        self.playback(now);
    }

    fn lose_parent(&mut self, now: Instant, stripe: usize) {
        self.connected[stripe] = false;
        if let Some(p) = self.parents[stripe].take() {
            self.stats.parents_lost += 1;
            self.lost_at[stripe] = Some(now);
            self.events.push_back(StreamEvent::ParentLost {
                stripe: stripe as u8,
            });
            self.send(
                p.addr,
                &StreamMsg::Detach {
                    stream: self.stream,
                    stripe: stripe as u8,
                },
            );
            for c in &mut self.candidates {
                if c.node.addr == p.addr {
                    c.free = 0;
                }
            }
        }
        self.choose_parents(now);
    }

    /// Playback: start once two consecutive segments are buffered, then play one per segment
    /// duration, stalling on gaps.
    fn playback(&mut self, now: Instant) {
        if self.signing.is_some() || self.joined_at.is_none() {
            return;
        }
        let seg = self.config.segment;
        if self.play_start.is_none() {
            let n = self.config.startup_segments.max(1);
            let start = self
                .segments
                .keys()
                .rev()
                .find(|&&s| (1..n).all(|k| self.segments.contains_key(&(s + k))))
                .copied();
            // The newest buffered run: the lowest latency that is already safe to start.
            let Some(s0) = start else { return };
            self.play_start = Some(now);
            self.play_seq = s0;
            self.play_at = now;
            if let Some(j) = self.joined_at {
                self.events.push_back(StreamEvent::Playing {
                    startup: now.saturating_duration_since(j),
                    seq: s0,
                });
            }
        }
        loop {
            if self.play_at > now {
                return;
            }
            if self.segments.contains_key(&self.play_seq) {
                if let Some(since) = self.stalled_since.take() {
                    self.stats.stalled_ms +=
                        now.saturating_duration_since(since).as_millis() as u64;
                    self.play_at = now;
                }
                self.stats.played += 1;
                self.play_seq += 1;
                self.play_at += seg;
                continue;
            }
            let newer = self.newest.is_some_and(|n| n > self.play_seq);
            match self.stalled_since {
                None => {
                    self.stalled_since = Some(now);
                    self.stats.stalls += 1;
                    return;
                }
                Some(since)
                    if newer && now.saturating_duration_since(since) >= self.config.max_stall =>
                {
                    self.stats.skipped += 1;
                    self.play_seq += 1;
                    // Keep stalling (and counting) until the next segment is there.
                }
                Some(_) => return,
            }
        }
    }

    fn on_peers(&mut self, now: Instant, peers: Vec<PeerEntry>) {
        self.join_retry = None;
        for p in peers {
            if p.node.addr == self.our.addr {
                continue;
            }
            if let Some(c) = self
                .candidates
                .iter_mut()
                .find(|c| c.node.addr == p.node.addr)
            {
                c.free = p.free;
                c.depth = p.depth;
                continue;
            }
            if self.candidates.len() >= MAX_CANDIDATES {
                // Evict the worst: bad first, then slowest.
                if let Some(i) = (0..self.candidates.len()).max_by_key(|&i| {
                    let c = &self.candidates[i];
                    (c.bad, c.rtt.unwrap_or(Duration::MAX))
                }) {
                    self.candidates.swap_remove(i);
                }
            }
            self.candidates.push(Cand {
                node: p.node,
                free: p.free,
                depth: p.depth,
                rtt: None,
                ping: None,
                bad: false,
            });
        }
        // Ping the unmeasured ones (up to PING_FANOUT).
        let mut sent = 0;
        let mut pings = Vec::new();
        for c in &mut self.candidates {
            if sent >= PING_FANOUT {
                break;
            }
            if c.rtt.is_none() && c.ping.is_none() && !c.bad {
                let nonce = self.rng.next_u64();
                c.ping = Some((nonce, now));
                pings.push((c.node.addr, nonce));
                sent += 1;
            }
        }
        for (to, nonce) in pings {
            self.send(
                to,
                &StreamMsg::Ping {
                    stream: self.stream,
                    nonce,
                },
            );
        }
        if sent > 0 {
            self.probe_until = Some(now + PROBE_WAIT);
        } else {
            self.choose_parents(now);
        }
    }

    /// Attaches every stripe without a parent to its best candidate.
    fn choose_parents(&mut self, now: Instant) {
        if self.signing.is_some() || self.joined_at.is_none() {
            return;
        }
        for stripe in 0..2usize {
            if self.parents[stripe].is_some() || self.attaching[stripe].is_some() {
                continue;
            }
            let kids: Vec<SocketAddr> = self
                .children
                .iter()
                .filter(|c| usize::from(c.stripe) == stripe)
                .map(|c| c.addr)
                .collect();
            let other = self.parents[1 - stripe]
                .map(|p| p.addr)
                .or(self.attaching[1 - stripe].map(|a| a.0));
            let best = self
                .candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| {
                    !c.bad
                        && c.free > 0
                        && c.rtt.is_some()
                        && c.depth[stripe] < MAX_DEPTH
                        && !kids.contains(&c.node.addr)
                })
                .min_by_key(|(_, c)| {
                    let rtt = c.rtt.map_or(1000, |r| r.as_millis() as i64);
                    let same = i64::from(Some(c.node.addr) == other) * 500;
                    rtt + 100 * i64::from(c.depth[stripe]) - 10 * i64::from(c.free.min(8)) + same
                })
                .map(|(i, _)| i);
            let Some(i) = best else {
                // Nobody suitable: ask the tracker again.
                if self.join_retry.is_none() {
                    self.send_join(now);
                }
                continue;
            };
            let c = &mut self.candidates[i];
            c.free = c.free.saturating_sub(1);
            let to = c.node.addr;
            self.attaching[stripe] = Some((to, now + Duration::from_millis(1500)));
            let depth = self.adv_depth();
            self.send(
                to,
                &StreamMsg::Attach {
                    stream: self.stream,
                    stripe: stripe as u8,
                    depth,
                },
            );
        }
    }

    fn on_attach(&mut self, now: Instant, from: SocketAddr, stripe: u8, _depth: [u8; 2]) {
        let s = usize::from(stripe);
        let mine = self.adv_depth()[s];
        let existing = self
            .children
            .iter()
            .position(|c| c.addr == from && c.stripe == stripe);
        // The streamer's few slots go to viewers that can feed at least ROOT_MIN_CAPACITY
        // stripes (a wide top keeps the tree shallow and one departure cheap), unless no such
        // viewer has registered.
        let root_ok = self.signing.is_none()
            || self
                .registry
                .get(&from)
                .is_some_and(|r| r.capacity >= ROOT_MIN_CAPACITY)
            || !self
                .registry
                .values()
                .any(|r| r.capacity >= ROOT_MIN_CAPACITY);
        let ok = existing.is_some()
            || (mine < MAX_DEPTH
                && root_ok
                && self.free() > 0
                && self.parents[s].is_none_or(|p| p.addr != from));
        if ok && existing.is_none() {
            self.children.push(Child {
                addr: from,
                stripe,
                last: now,
            });
            // Our free slots changed: tell the tracker, so joiners are not sent to a full node.
            if let Some(t) = self.tracker {
                let status = StreamMsg::Alive {
                    stream: self.stream,
                    free: self.free(),
                    depth: self.adv_depth(),
                };
                self.send(t, &status);
            }
        }
        self.send(
            from,
            &StreamMsg::AttachAck {
                stream: self.stream,
                stripe,
                ok,
                depth: mine,
            },
        );
        if ok {
            // Fast start: the newest segment of this stripe right away.
            if let Some(seg) = self
                .segments
                .values()
                .rev()
                .find(|g| g.seq % 2 == u64::from(stripe))
                .cloned()
            {
                let mut seg = seg;
                if self.config.tamper && !seg.data.is_empty() {
                    seg.data[0] ^= 0x01;
                }
                self.send(from, &StreamMsg::Segment(seg));
            }
        }
    }

    fn on_attach_ack(&mut self, now: Instant, from: SocketAddr, stripe: u8, ok: bool, depth: u8) {
        let s = usize::from(stripe);
        if self.attaching[s].is_none_or(|a| a.0 != from) {
            if ok {
                // Late or unwanted: tell it to stop.
                self.send(
                    from,
                    &StreamMsg::Detach {
                        stream: self.stream,
                        stripe,
                    },
                );
            }
            return;
        }
        self.attaching[s] = None;
        if ok {
            self.parents[s] = Some(Parent {
                addr: from,
                last: now,
                heard: now,
                fed: false,
            });
            self.depth[s] = depth.saturating_add(1).min(NO_DEPTH - 1);
            self.connected[s] = depth < MAX_DEPTH;
            let alive = StreamMsg::Alive {
                stream: self.stream,
                free: self.free(),
                depth: self.adv_depth(),
            };
            self.send(from, &alive);
            // Tell the tracker at once, so later joiners can pick us.
            if let Some(t) = self.tracker {
                self.send(t, &alive);
            }
        } else {
            for c in &mut self.candidates {
                if c.node.addr == from {
                    c.free = 0;
                }
            }
            self.choose_parents(now);
        }
    }

    fn on_want(&mut self, now: Instant, from: SocketAddr, seq: u64) {
        let have = self.segments.get(&seq).cloned();
        let size = have.as_ref().map_or(0.0, |s| s.data.len() as f64);
        // Repair comes out of a token bucket: the streamer's repair copies, or a viewer's upload
        // beyond its tree share; a burst of at most two segments.
        let c = &self.config;
        let rate = if self.signing.is_some() {
            c.streamer_repair_copies * c.rate_bytes_per_s as f64
        } else {
            (1.0 - c.upload_share).max(0.0) * c.upload_bytes_per_s as f64
        };
        let dt = now
            .saturating_duration_since(self.repair_refill)
            .as_secs_f64();
        self.repair_refill = now;
        let burst = 2.0 * c.rate_bytes_per_s as f64 * c.segment.as_secs_f64();
        self.repair_tokens = (self.repair_tokens + dt * rate).min(burst);
        let can = size > 0.0 && self.repair_tokens >= size;
        if can {
            self.repair_tokens -= size;
        }
        match have {
            Some(mut seg) if can => {
                self.stats.wants_served += 1;
                if self.config.tamper && !seg.data.is_empty() {
                    seg.data[0] ^= 0x01;
                }
                self.send(from, &StreamMsg::Segment(seg));
            }
            _ => self.send(
                from,
                &StreamMsg::NotHave {
                    stream: self.stream,
                    seq,
                },
            ),
        }
    }

    fn on_join(&mut self, now: Instant, from: SocketAddr, upload_kbps: u32) {
        if self.signing.is_none() {
            return;
        }
        let rate = self.config.rate_bytes_per_s as f64 / 2.0;
        let slots = ((0.8 * f64::from(upload_kbps) * 125.0 / rate).floor() as usize).min(254) as u8;
        self.register(now, from, slots, [NO_DEPTH; 2]);
        if let Some(r) = self.registry.get_mut(&from) {
            r.capacity = slots;
        }
        let mut list: Vec<PeerEntry> = self
            .registry
            .iter()
            .filter(|(a, r)| {
                **a != from && r.entry.free > 0 && r.entry.depth.iter().any(|&d| d < MAX_DEPTH)
            })
            .map(|(_, r)| r.entry)
            .collect();
        list.sort_by_key(|e| {
            (
                e.depth[0].min(e.depth[1]),
                std::cmp::Reverse(e.free),
                e.node.addr,
            )
        });
        // Keep the shallowest half, then sample the rest at random for spread.
        let mut peers: Vec<PeerEntry> = Vec::new();
        let strong = |r: &Registered| r.capacity >= ROOT_MIN_CAPACITY;
        let offer_root =
            self.registry.get(&from).is_some_and(strong) || !self.registry.values().any(strong);
        if self.free() > 0 && offer_root {
            peers.push(PeerEntry {
                node: self.our,
                free: self.free(),
                depth: [0, 0],
            });
        }
        let head = PEERS_PER_JOIN / 2;
        peers.extend(list.iter().take(head).copied());
        let mut rest: Vec<PeerEntry> = list.iter().skip(head).copied().collect();
        while peers.len() < PEERS_PER_JOIN && !rest.is_empty() {
            let i = (self.rng.next_u64() % rest.len() as u64) as usize;
            peers.push(rest.swap_remove(i));
        }
        self.send(
            from,
            &StreamMsg::Peers {
                stream: self.stream,
                peers,
            },
        );
    }

    fn register(&mut self, now: Instant, from: SocketAddr, free: u8, depth: [u8; 2]) {
        if !self.registry.contains_key(&from)
            && self.registry.len() >= MAX_REGISTRY
            && let Some(k) = self
                .registry
                .iter()
                .min_by_key(|(a, r)| (r.seen, **a))
                .map(|(a, _)| *a)
        {
            self.registry.remove(&k);
        }
        // The key is unknown to the tracker in this model: the address identifies the viewer.
        let node = PackedNode::udp(from, ferry_crypto::PublicKey([0; 32]));
        let capacity = self.registry.get(&from).map_or(0, |r| r.capacity);
        self.registry.insert(
            from,
            Registered {
                entry: PeerEntry { node, free, depth },
                seen: now,
                capacity,
            },
        );
    }

    fn housekeeping(&mut self, now: Instant) {
        let is_streamer = self.signing.is_some();
        // Children silent too long.
        let child_timeout = self.config.child_timeout;
        self.children
            .retain(|c| now.saturating_duration_since(c.last) < child_timeout);
        if now >= self.next_child_alive {
            self.next_child_alive = now + CHILD_ALIVE_EVERY;
            let msg = StreamMsg::Alive {
                stream: self.stream,
                free: self.free(),
                depth: self.adv_depth(),
            };
            let mut to: Vec<SocketAddr> = self.children.iter().map(|c| c.addr).collect();
            to.sort();
            to.dedup();
            for a in to {
                self.send(a, &msg);
            }
        }
        if is_streamer {
            self.registry
                .retain(|_, r| now.saturating_duration_since(r.seen) < REGISTRY_TTL);
            return;
        }
        if self.joined_at.is_none() {
            return;
        }
        if self.join_retry.is_some_and(|t| t <= now) {
            self.send_join(now);
        }
        // Attach timeouts.
        for s in 0..2 {
            if let Some((addr, deadline)) = self.attaching[s]
                && deadline <= now
            {
                self.attaching[s] = None;
                for c in &mut self.candidates {
                    if c.node.addr == addr {
                        c.free = 0;
                    }
                }
            }
        }
        // Silent parents.
        for s in 0..2 {
            if self.parents[s].is_some_and(|p| {
                now.saturating_duration_since(p.heard) >= self.config.parent_timeout
                    || now.saturating_duration_since(p.last) >= self.config.starve_timeout
            }) {
                self.lose_parent(now, s);
            }
        }
        // Probing done: choose.
        if self.probe_until.is_some_and(|t| t <= now) {
            self.probe_until = None;
            for c in &mut self.candidates {
                if c.ping
                    .is_some_and(|(_, t)| now.saturating_duration_since(t) > Duration::from_secs(2))
                {
                    c.ping = None;
                    c.bad = true;
                }
            }
        }
        if self.probe_until.is_none() {
            self.choose_parents(now);
        }
        // Keep-alives and status.
        if now >= self.next_alive {
            self.next_alive = now + ALIVE_EVERY;
            let msg = StreamMsg::Alive {
                stream: self.stream,
                free: self.free(),
                depth: self.adv_depth(),
            };
            let mut to: Vec<SocketAddr> = self.parents.iter().flatten().map(|p| p.addr).collect();
            to.dedup();
            for a in to {
                self.send(a, &msg);
            }
        }
        if now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            if let Some(t) = self.tracker {
                let msg = StreamMsg::Alive {
                    stream: self.stream,
                    free: self.free(),
                    depth: self.adv_depth(),
                };
                self.send(t, &msg);
            }
        }
        self.repair(now);
        self.playback(now);
    }

    /// Wants missing segments from peers other than the stripe's parent.
    fn repair(&mut self, now: Instant) {
        let Some(newest) = self.newest else { return };
        let first = if self.play_start.is_some() {
            self.play_seq
        } else {
            // Before playback only the newest pair matters.
            newest.saturating_sub(2)
        };
        let floor = newest.saturating_sub(self.config.window_segments());
        let first = first.max(floor);
        let lead = self.config.repair_lead;
        let seg = self.config.segment;
        let mut due = Vec::new();
        for seq in first..newest {
            if self.segments.contains_key(&seq) {
                continue;
            }
            let behind = newest >= seq + 2;
            let deadline_near = self.play_start.is_some()
                && seq >= self.play_seq
                && self.play_at + seg * (seq - self.play_seq) as u32 <= now + lead;
            if !(behind || deadline_near) {
                continue;
            }
            match self.wants.get(&seq) {
                Some(w) if now.saturating_duration_since(w.sent) < self.config.want_timeout => {
                    continue;
                }
                _ => {}
            }
            due.push(seq);
            if due.len() + self.wants.len() >= MAX_WANTS + 4 {
                break;
            }
        }
        // Forget wants that fell out of range.
        self.wants.retain(|&s, _| s >= first);
        for seq in due {
            if self.wants.len() >= MAX_WANTS && !self.wants.contains_key(&seq) {
                break;
            }
            let stripe = (seq % 2) as usize;
            let failed = self.parents[stripe].map(|p| p.addr);
            let prev = self.wants.get(&seq).copied();
            let asked: Vec<SocketAddr> =
                prev.map_or(Vec::new(), |w| w.asked.iter().flatten().copied().collect());
            // Candidates: the other parent, then measured candidates by RTT, then the streamer.
            let mut pool: Vec<(u64, SocketAddr)> = Vec::new();
            if let Some(p) = self.parents[1 - stripe] {
                pool.push((0, p.addr));
            }
            for c in &self.candidates {
                if !c.bad
                    && let Some(r) = c.rtt
                    && Some(c.node.addr) != self.tracker
                {
                    // Peers last seen connected in that stripe first.
                    let cut_off = u64::from(c.depth[stripe] >= MAX_DEPTH) * 1000;
                    pool.push((
                        r.as_millis() as u64 + self.rng.next_u64() % 100 + cut_off,
                        c.node.addr,
                    ));
                }
            }
            pool.sort();
            let pick = pool
                .iter()
                .map(|p| p.1)
                .find(|a| Some(*a) != failed && !asked.contains(a))
                .or_else(|| self.tracker.filter(|t| !asked.contains(t)));
            let Some(to) = pick else {
                self.wants.remove(&seq);
                continue;
            };
            let mut w = prev.unwrap_or(Want {
                sent: now,
                asked: [None; 4],
                attempts: 0,
            });
            w.sent = now;
            w.asked[usize::from(w.attempts) % 4] = Some(to);
            w.attempts = w.attempts.saturating_add(1);
            self.wants.insert(seq, w);
            self.stats.wants += 1;
            self.send(
                to,
                &StreamMsg::Want {
                    stream: self.stream,
                    seq,
                },
            );
        }
    }

    fn message(&mut self, now: Instant, from: SocketAddr, msg: StreamMsg) {
        match msg {
            StreamMsg::Segment(s) => self.on_segment(now, from, s),
            StreamMsg::Join {
                stream,
                upload_kbps,
            } if stream == self.stream => {
                self.on_join(now, from, upload_kbps);
            }
            StreamMsg::Peers { stream, peers } if stream == self.stream => {
                self.on_peers(now, peers)
            }
            StreamMsg::Ping { stream, nonce } if stream == self.stream => {
                let (free, depth) = (self.free(), self.adv_depth());
                self.send(
                    from,
                    &StreamMsg::Pong {
                        stream,
                        nonce,
                        free,
                        depth,
                    },
                );
            }
            StreamMsg::Pong {
                stream,
                nonce,
                free,
                depth,
            } if stream == self.stream => {
                if let Some(c) = self.candidates.iter_mut().find(|c| c.node.addr == from)
                    && let Some((n, at)) = c.ping
                    && n == nonce
                {
                    c.ping = None;
                    c.rtt = Some(now.saturating_duration_since(at));
                    c.free = free;
                    c.depth = depth;
                }
                if self.candidates.iter().all(|c| c.ping.is_none()) {
                    self.probe_until = None;
                    self.choose_parents(now);
                }
            }
            StreamMsg::Attach {
                stream,
                stripe,
                depth,
            } if stream == self.stream => self.on_attach(now, from, stripe, depth),
            StreamMsg::AttachAck {
                stream,
                stripe,
                ok,
                depth,
            } if stream == self.stream => self.on_attach_ack(now, from, stripe, ok, depth),
            StreamMsg::Alive {
                stream,
                free,
                depth,
            } if stream == self.stream => {
                for c in &mut self.children {
                    if c.addr == from {
                        c.last = now;
                    }
                }
                // A parent's keep-alive: it lives, and its depth may have changed.
                for (s, &d) in depth.iter().enumerate() {
                    if let Some(p) = self.parents[s].as_mut()
                        && p.addr == from
                    {
                        p.heard = now;
                        // An orphaned parent advertises no depth: we are cut off too (and say
                        // so to our children) until it re-attaches.
                        self.connected[s] = d < MAX_DEPTH;
                        if d < MAX_DEPTH {
                            self.depth[s] = d + 1;
                        }
                    }
                }
                if self.signing.is_some() && self.registry.contains_key(&from) {
                    self.register(now, from, free, depth);
                }
            }
            StreamMsg::Want { stream, seq } if stream == self.stream => {
                self.on_want(now, from, seq)
            }
            StreamMsg::NotHave { stream, seq } if stream == self.stream => {
                // Retry elsewhere at the next tick.
                if let Some(w) = self.wants.get_mut(&seq) {
                    w.sent = now.checked_sub(self.config.want_timeout).unwrap_or(w.sent);
                }
            }
            StreamMsg::Detach { stream, stripe } if stream == self.stream => {
                self.children
                    .retain(|c| !(c.addr == from && c.stripe == stripe));
            }
            _ => {}
        }
    }
}

impl Endpoint for StreamNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match StreamMsg::decode(bytes) {
            Ok(m) => self.message(now, from, m),
            Err(_) => self.stats.malformed += 1,
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.housekeeping(now);
        }
        self.playback(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tick;
        if self.play_start.is_some() && self.stalled_since.is_none() {
            t = t.min(self.play_at);
        }
        t
    }
}
