//! The live-stream scenario (issue 10 item 5, `data-layer.md` §3.7 and §4 item 11): one streamer
//! and N viewers run the real [`StreamNode`] from `ferry-swarm` on the simulated network.
//!
//! # Model
//!
//! The stream is simulated at the segment level: one datagram per ~1 s segment (62.5 KB at
//! 500 kbit/s), not per packet. The network's per-node uplink ([`Network::set_uplink`]) gives each
//! datagram a serialization delay of `size / upload`, and datagrams queue behind each other, so a
//! parent feeding k children of a stripe delivers the last copy k · size / upload after the first;
//! this is what limits fan-out. Latency is 50–200 ms one way by distance (plus 5 ms jitter).
//!
//! * Viewers' upload is log-uniform in [`StreamScenario::upload_range`] × the stream rate (0.5–20×);
//!   the streamer's uplink is [`StreamScenario::streamer_upload`] × the rate, of which it gives
//!   the tree 3 copies (6 stripe slots) and pull repair 0.5 copies.
//! * Viewers join at uniform random times in the join window; start-up delay = join → first play.
//! * [`StreamScenario::tamperers`] viewers (with a high upload, so they get children) flip one
//!   byte in every segment they forward; their children must reject those segments.
//! * At [`StreamScenario::leave_at`], [`StreamScenario::leavers`] random viewers among those
//!   feeding children leave without a word; recovery = departure → first segment pushed by a new parent,
//!   per orphaned stripe.
//! * Glass-to-glass latency = arrival − the moment the streamer cut the segment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_swarm::stream::{StreamConfig, StreamEvent, StreamNode};
use ferry_wire::node::PackedNode;
use serde::Serialize;

use crate::net::{LinkConfig, Network, NodeId, unit};

/// Parameters of a stream run.
#[derive(Clone, Debug)]
pub struct StreamScenario {
    /// Viewers.
    pub viewers: usize,
    /// Stream rate, kbit/s.
    pub bitrate_kbps: u64,
    /// Streaming time, from the first segment.
    pub duration: Duration,
    /// Viewers join at uniform random times in `[2 s, 2 s + join_window)`.
    pub join_window: Duration,
    /// Viewer upload, multiples of the stream rate (log-uniform).
    pub upload_range: (f64, f64),
    /// Streamer uplink, multiples of the stream rate.
    pub streamer_upload: f64,
    /// Viewers that tamper with what they forward.
    pub tamperers: usize,
    /// When the leavers leave (after the first segment); `None`: nobody leaves.
    pub leave_at: Option<Duration>,
    /// Viewers with children (chosen at random) that leave at `leave_at`.
    pub leavers: usize,
    /// Segments buffered before playback starts.
    pub startup_segments: u64,
    /// Links.
    pub link: LinkConfig,
    /// Seed.
    pub seed: u64,
}

impl StreamScenario {
    /// `viewers` viewers of a 500 kbit/s stream for `seconds`: uploads 0.5–20×, streamer uplink
    /// 5×, joins over 10 s, 1 tamperer, 3 leavers at half time, playback after 3 buffered
    /// segments, latency 50–200 ms.
    pub fn new(viewers: usize, seconds: u64, seed: u64) -> Self {
        Self {
            viewers,
            bitrate_kbps: 500,
            duration: Duration::from_secs(seconds.max(10)),
            join_window: Duration::from_secs(10),
            upload_range: (0.5, 20.0),
            streamer_upload: 5.0,
            tamperers: 1.min(viewers),
            leave_at: Some(Duration::from_secs(seconds.max(10) / 2)),
            leavers: 3.min(viewers / 4),
            startup_segments: 3,
            link: LinkConfig {
                latency_min_ms: 50.0,
                latency_max_ms: 200.0,
                jitter_ms: 5.0,
                loss: 0.0,
                uplink_bytes_per_s: None,
            },
            seed,
        }
    }
}

/// What a run measured. `--json` of `ferry sim stream` prints this.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StreamReport {
    /// Viewers.
    pub viewers: usize,
    /// Seed.
    pub seed: u64,
    /// Stream rate, kbit/s.
    pub bitrate_kbps: u64,
    /// Streamed seconds.
    pub seconds: f64,
    /// Viewers that started playing.
    pub playing: usize,
    /// Median start-up delay (join → first play), ms.
    pub startup_median_ms: u64,
    /// 95th percentile start-up delay, ms.
    pub startup_p95_ms: u64,
    /// Largest start-up delay, ms.
    pub startup_max_ms: u64,
    /// Stalled time / play time over all viewers.
    pub stall_ratio: f64,
    /// Highest single viewer's stall ratio.
    pub stall_ratio_max: f64,
    /// Stall episodes over all viewers.
    pub stalls: u64,
    /// Segments skipped after a stall, over all viewers.
    pub skipped: u64,
    /// Streamer upload in copies of the stream rate (all its bytes / (rate × seconds)).
    pub streamer_copies: f64,
    /// Median glass-to-glass latency (cut → arrival), ms.
    pub latency_median_ms: u64,
    /// 95th percentile glass-to-glass latency, ms.
    pub latency_p95_ms: u64,
    /// Tampered segments rejected by viewers.
    pub tampered_rejected: u64,
    /// Segments received by pull repair.
    pub repaired: u64,
    /// Viewers that left at `leave_at`.
    pub left: usize,
    /// Stripes orphaned by them.
    pub orphaned_stripes: usize,
    /// Orphaned stripes fed again by a new parent before the end.
    pub recovered_stripes: usize,
    /// Median recovery (departure → first push from a new parent), ms.
    pub recovery_median_ms: u64,
    /// Largest recovery, ms.
    pub recovery_max_ms: u64,
    /// Stalled time of the orphaned viewers in the 10 s after the departure, ms.
    pub orphan_stall_ms: u64,
    /// Deepest tree depth at the end.
    pub max_depth: u8,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Runs a scenario.
pub fn run(s: &StreamScenario) -> StreamReport {
    #[allow(clippy::disallowed_methods)] // the simulator's own wall clock, for the report only
    let wall = Instant::now();
    let base = wall;
    let mut rng = FerryRng::from_u64(s.seed);
    let mut net: Network<StreamNode> = Network::new(s.link, rng.fork(), base);
    let rate = (s.bitrate_kbps * 1000 / 8).max(1);
    let key = SigningKey::from_bytes(&rng.bytes::<32>());
    let stream_id = key.verifying_key().to_bytes();
    let scfg = StreamConfig::new(rate, (s.streamer_upload * rate as f64) as u64);
    let streamer = net.add(|addr, r| {
        let node = PackedNode::udp(addr, PublicKey(r.bytes::<32>()));
        StreamNode::streamer(scfg, key, node, r.fork(), base)
    });
    net.set_uplink(streamer, Some((s.streamer_upload * rate as f64) as u64));
    let tracker = net.addr(streamer).expect("the streamer was just added");
    // Viewers.
    let (lo, hi) = s.upload_range;
    let mut joins: Vec<(Duration, NodeId)> = Vec::new();
    let mut viewers: Vec<NodeId> = Vec::new();
    for k in 0..s.viewers {
        let tamper = k < s.tamperers;
        let mult = if tamper {
            10.0
        } else {
            (lo.ln() + unit(&mut rng) * (hi.ln() - lo.ln())).exp()
        };
        let up = (mult * rate as f64) as u64;
        let mut cfg = StreamConfig::new(rate, up);
        cfg.tamper = tamper;
        cfg.startup_segments = s.startup_segments;
        let id = net.add(|addr, r| {
            let node = PackedNode::udp(addr, PublicKey(r.bytes::<32>()));
            StreamNode::viewer(cfg, stream_id, node, tracker, r.fork(), base)
        });
        net.set_uplink(id, Some(up));
        viewers.push(id);
        // Tamperers join first, so that they get children to lie to.
        let at = Duration::from_secs(2)
            + Duration::from_secs_f64(unit(&mut rng) * s.join_window.as_secs_f64())
                * u32::from(!tamper);
        joins.push((at, id));
    }
    joins.sort_by_key(|j| j.0);
    let start = Duration::from_secs(1);
    let end = start + s.duration;
    let seg_bytes = rate as usize;
    let mut cut: HashMap<u64, Duration> = HashMap::new();
    let mut next_join = 0;
    let mut t = start;
    let mut seq_t = start;
    let mut startups: Vec<u64> = Vec::new();
    let mut restored: Vec<(NodeId, Instant)> = Vec::new();
    let mut left_at: Option<Instant> = None;
    let mut orphans: Vec<(NodeId, usize)> = Vec::new();
    let mut orphan_stall_before: HashMap<NodeId, Duration> = HashMap::new();
    let mut orphan_stall_ms = 0u64;
    let mut left = 0usize;
    let step = Duration::from_millis(100);
    while t <= end {
        // Joins due.
        while next_join < joins.len() && joins[next_join].0 <= t {
            let id = joins[next_join].1;
            next_join += 1;
            net.with_node(id, |n, now| n.start(now));
        }
        // A segment every second.
        if t >= seq_t {
            seq_t += Duration::from_secs(1);
            let mut data = vec![0u8; seg_bytes];
            let tag = rng.bytes::<16>();
            data[..16].copy_from_slice(&tag);
            if let Some(Some(seq)) = net.with_node(streamer, |n, now| n.push_segment(now, data)) {
                cut.insert(seq, t);
            }
        }
        // Departures.
        if let Some(at) = s.leave_at
            && left_at.is_none()
            && t >= start + at
        {
            let mut by_children: Vec<(usize, NodeId)> = viewers
                .iter()
                .skip(s.tamperers)
                .filter_map(|&v| net.node(v).map(|n| (n.children().len(), v)))
                .filter(|c| c.0 > 0)
                .collect();
            // A random choice among the viewers that feed children.
            for i in (1..by_children.len()).rev() {
                by_children.swap(i, rng.below(i + 1));
            }
            let now = net.now();
            for &(_, v) in by_children.iter().take(s.leavers) {
                let Some(addr) = net.addr(v) else { continue };
                let kids: Vec<(SocketAddr, u8)> =
                    net.node(v).map(|n| n.children()).unwrap_or_default();
                net.remove(v);
                left += 1;
                for (kid_addr, stripe) in kids {
                    if let Some(&kid) = viewers.iter().find(|&&w| net.addr(w) == Some(kid_addr))
                        && net
                            .node(kid)
                            .is_some_and(|n| n.parents()[usize::from(stripe)] == Some(addr))
                    {
                        orphans.push((kid, usize::from(stripe)));
                        if let Some(n) = net.node(kid) {
                            orphan_stall_before.insert(kid, n.stalled(now));
                        }
                    }
                }
            }
            left_at = Some(now);
        }
        t += step;
        net.run_until(t);
        // Events.
        for &v in &viewers {
            let Some(n) = net.node_mut(v) else { continue };
            while let Some(ev) = n.poll_event() {
                match ev {
                    StreamEvent::Playing { startup, .. } => {
                        startups.push(startup.as_millis() as u64);
                    }
                    StreamEvent::ParentRestored { at, .. } => restored.push((v, at)),
                    StreamEvent::ParentLost { .. } => {}
                }
            }
        }
        if let Some(l) = left_at
            && net.now().saturating_duration_since(l) >= Duration::from_secs(10)
            && !orphan_stall_before.is_empty()
        {
            let now = net.now();
            for (kid, before) in orphan_stall_before.drain() {
                if let Some(n) = net.node(kid) {
                    orphan_stall_ms += n.stalled(now).saturating_sub(before).as_millis() as u64;
                }
            }
        }
    }
    let now = net.now();
    // Figures.
    let mut stalled = Duration::ZERO;
    let mut played = Duration::ZERO;
    let mut stall_ratio_max = 0.0f64;
    let mut stalls = 0;
    let mut skipped = 0;
    let mut tampered = 0;
    let mut repaired = 0;
    let mut lat: Vec<u64> = Vec::new();
    let mut max_depth = 0u8;
    let mut playing = 0;
    for &v in &viewers {
        let Some(n) = net.node(v) else { continue };
        let st = n.stats();
        stalls += st.stalls;
        skipped += st.skipped;
        tampered += st.tampered;
        repaired += st.repaired;
        for d in n.depth() {
            if d != ferry_swarm::stream::NO_DEPTH {
                max_depth = max_depth.max(d);
            }
        }
        if let Some(p) = n.play_start() {
            playing += 1;
            let play = now.saturating_duration_since(p);
            let st = n.stalled(now);
            stalled += st;
            played += play;
            if play > Duration::ZERO {
                stall_ratio_max = stall_ratio_max.max(st.as_secs_f64() / play.as_secs_f64());
            }
        }
        for &(seq, at) in n.arrivals() {
            if let Some(c) = cut.get(&seq) {
                let cut_at = base + *c;
                lat.push(at.saturating_duration_since(cut_at).as_millis() as u64);
            }
        }
    }
    let streamer_bytes = net.node(streamer).map_or(0, |n| n.stats().bytes_sent);
    let streamed = s.duration.as_secs_f64();
    let mut rec: Vec<u64> = Vec::new();
    if let Some(l) = left_at {
        for &(kid, _) in &orphans {
            if let Some(&(_, at)) = restored.iter().find(|(v, at)| *v == kid && *at >= l) {
                rec.push(at.saturating_duration_since(l).as_millis() as u64);
            }
        }
    }
    let mut startups_sorted = startups.clone();
    StreamReport {
        viewers: s.viewers,
        seed: s.seed,
        bitrate_kbps: s.bitrate_kbps,
        seconds: streamed,
        playing,
        startup_median_ms: pct(&mut startups_sorted, 0.5),
        startup_p95_ms: pct(&mut startups_sorted, 0.95),
        startup_max_ms: startups.iter().copied().max().unwrap_or(0),
        stall_ratio: if played.is_zero() {
            0.0
        } else {
            stalled.as_secs_f64() / played.as_secs_f64()
        },
        stall_ratio_max,
        stalls,
        skipped,
        streamer_copies: streamer_bytes as f64 / (rate as f64 * streamed),
        latency_median_ms: pct(&mut lat, 0.5),
        latency_p95_ms: pct(&mut lat, 0.95),
        tampered_rejected: tampered,
        repaired,
        left,
        orphaned_stripes: orphans.len(),
        recovered_stripes: rec.len(),
        recovery_median_ms: pct(&mut rec.clone(), 0.5),
        recovery_max_ms: rec.iter().copied().max().unwrap_or(0),
        orphan_stall_ms,
        max_depth,
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}
