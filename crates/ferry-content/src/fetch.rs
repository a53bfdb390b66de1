//! The multi-provider fetch scheduler for one blob (`data-layer.md` §3.4), sans-IO.
//!
//! The blob is cut into 16 KiB groups ([`crate::GROUP_SIZE`]); every request asks one provider
//! for one group ([`ContentPacket::Get`]) and the response is verified against the blob id
//! ([`crate::blob::verify_response`]) as soon as its last byte arrives, so nothing unverified
//! is ever handed out and a bad provider is caught after at most 16 KiB.
//!
//! * Each live provider keeps up to [`FetchConfig::window`] requests in flight; the least
//!   loaded provider gets the next group, so faster providers serve more.
//! * A request older than the provider's timeout (4 × its smoothed response time, clamped to
//!   [`FetchConfig::min_timeout`]..[`FetchConfig::max_timeout`]) is cancelled and its group
//!   reassigned; a provider that times out [`FetchConfig::max_strikes`] times in a row is
//!   dropped ([`DropReason::Slow`]).
//! * A response that fails verification, is longer than the range, or a data packet for a
//!   request that provider does not own drops the provider at once ([`DropReason::Corrupt`])
//!   and reassigns its groups; `missing` drops it with [`DropReason::Missing`].
//! * Endgame: when no group is left to assign, an idle provider duplicates the oldest request
//!   of another provider (at most 2 copies of a group); the first verified copy wins and the
//!   other is cancelled.
//! * A blob whose length is not known yet (a manifest) is fetched whole from one provider at a
//!   time (`end` = [`WHOLE`], the provider sends its size first, capped by
//!   [`FetchConfig::max_whole_len`]); the last group proves the length.
//!
//! Drive it with [`Fetch::poll_transmit`] (packets to send), [`Fetch::on_packet`] (packets
//! received), [`Fetch::handle_timeout`] at [`Fetch::poll_timeout`], and read
//! [`Fetch::poll_event`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::blob::{group_bytes, response_len, verify_response};
use crate::wire::{ContentPacket, WHOLE};
use crate::{ContentId, group_count};

/// Scheduler limits.
#[derive(Clone, Debug)]
pub struct FetchConfig {
    /// Requests in flight per provider (each one 16 KiB group): default 32 (512 KiB).
    pub window: usize,
    /// Shortest request timeout: default 2 s.
    pub min_timeout: Duration,
    /// Longest request timeout (also the first, before any response time is known): 15 s.
    pub max_timeout: Duration,
    /// Timeouts in a row that drop a provider: 3.
    pub max_strikes: u32,
    /// Most providers tracked: 64 (more are ignored).
    pub max_providers: usize,
    /// Largest length accepted for a whole-blob fetch, bytes: 8 MiB.
    pub max_whole_len: u64,
    /// First request id (default 1). Consecutive fetches over the same sessions should continue
    /// from the previous one's [`Fetch::next_req`], so late data of a cancelled request is never
    /// taken for a new one.
    pub first_req: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            window: 32,
            min_timeout: Duration::from_secs(2),
            max_timeout: Duration::from_secs(15),
            max_strikes: 3,
            max_providers: 64,
            max_whole_len: crate::manifest::MAX_MANIFEST_SIZE,
            first_req: 1,
        }
    }
}

/// Why a provider was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It sent bytes that failed verification (or a malformed response).
    Corrupt,
    /// It said it does not have the blob.
    Missing,
    /// It timed out [`FetchConfig::max_strikes`] times in a row.
    Slow,
    /// The owner removed it (session closed).
    Gone,
}

/// What the scheduler tells its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent<P> {
    /// Verified bytes at `offset` of the blob (each byte exactly once).
    Data {
        /// Offset in the blob, bytes.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The blob's length became known (whole-blob fetch), proved by its last group.
    Length(u64),
    /// A provider was dropped; its groups go to others.
    ProviderDropped {
        /// The provider.
        provider: P,
        /// Why.
        reason: DropReason,
    },
    /// Every byte was delivered.
    Done,
    /// Work remains but no live provider is left (add one to go on).
    NoProviders,
}

/// Per-provider counters, for progress and summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Verified bytes it delivered.
    pub bytes: u64,
    /// Requests in flight.
    pub inflight: usize,
    /// Dropped (and why).
    pub dropped: Option<DropReason>,
    /// Smoothed response time.
    pub srtt: Option<Duration>,
    strikes: u32,
}

#[derive(Debug)]
struct Inflight<P> {
    provider: P,
    start: u64,
    end: u64,
    sent: Instant,
    deadline: Instant,
    want: u64,
    buf: Vec<u8>,
}

/// Fetches one blob from many providers (see the module docs).
#[derive(Debug)]
pub struct Fetch<P> {
    blob: ContentId,
    len: Option<u64>,
    cfg: FetchConfig,
    groups: u64,
    done: Vec<bool>,
    done_count: u64,
    next: u64,
    retry: VecDeque<u64>,
    copies: HashMap<u64, u8>,
    inflight: BTreeMap<u32, Inflight<P>>,
    providers: BTreeMap<P, ProviderStats>,
    order: Vec<P>,
    next_req: u32,
    out: VecDeque<(P, ContentPacket)>,
    events: VecDeque<FetchEvent<P>>,
    finished: bool,
    starved: bool,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Fetch<P> {
    /// A fetch of `blob`; `len` from a verified manifest, or `None` for a whole-blob fetch.
    pub fn new(blob: ContentId, len: Option<u64>, cfg: FetchConfig) -> Self {
        let first_req = cfg.first_req;
        let groups = len.map_or(1, group_count);
        let mut f = Self {
            blob,
            len,
            cfg,
            groups,
            done: vec![false; usize::try_from(groups).unwrap_or(0)],
            done_count: 0,
            next: 0,
            retry: VecDeque::new(),
            copies: HashMap::new(),
            inflight: BTreeMap::new(),
            providers: BTreeMap::new(),
            order: Vec::new(),
            next_req: first_req.max(1),
            out: VecDeque::new(),
            events: VecDeque::new(),
            finished: false,
            starved: false,
        };
        if len == Some(0) {
            // The empty blob: nothing to transfer, but its id must be the empty hash.
            f.done_count = f.groups;
            f.next = f.groups;
            if blob == ContentId::of(&[]) {
                f.finish();
            } else {
                f.finished = true;
                f.done_count = 0;
            }
        }
        f
    }

    /// The blob.
    pub fn blob(&self) -> ContentId {
        self.blob
    }

    /// The blob's length, once known.
    pub fn blob_len(&self) -> Option<u64> {
        self.len
    }

    /// The request id the next request would use.
    pub fn next_req(&self) -> u32 {
        self.next_req
    }

    /// Verified bytes so far.
    pub fn verified_bytes(&self) -> u64 {
        self.providers.values().map(|p| p.bytes).sum()
    }

    /// Whether every byte was delivered.
    pub fn is_done(&self) -> bool {
        self.finished && self.done_count == self.groups
    }

    /// Providers and their counters.
    pub fn providers(&self) -> &BTreeMap<P, ProviderStats> {
        &self.providers
    }

    /// Live (not dropped) providers.
    pub fn live_providers(&self) -> usize {
        self.providers
            .values()
            .filter(|p| p.dropped.is_none())
            .count()
    }

    /// Adds a provider (ignored when known, dropped before, or beyond the cap).
    pub fn add_provider(&mut self, p: P) {
        if self.providers.contains_key(&p) || self.providers.len() >= self.cfg.max_providers {
            return;
        }
        self.providers.insert(p, ProviderStats::default());
        self.order.push(p);
        self.starved = false;
    }

    /// Removes a provider (its session closed): its requests are reassigned.
    pub fn remove_provider(&mut self, p: P) {
        self.drop_provider(p, DropReason::Gone);
    }

    /// The next packet to send.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<(P, ContentPacket)> {
        if self.out.is_empty() {
            self.fill(now);
        }
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<FetchEvent<P>> {
        self.events.pop_front()
    }

    /// Earliest request deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.inflight.values().map(|i| i.deadline).min()
    }

    /// Cancels requests past their deadline and reassigns their groups.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        for req in late {
            let Some(i) = self.take_inflight(req) else {
                continue;
            };
            // A whole-blob request has no groups to requeue (its `start..end` holds the
            // claimed length, or `0..WHOLE` before the size came): `fill` asks the next
            // provider once nothing is in flight.
            if self.len.is_some() {
                self.requeue(i.start, i.end);
            }
            self.out
                .push_back((i.provider, ContentPacket::Cancel { req }));
            let strikes = self.providers.get_mut(&i.provider).map(|s| {
                s.strikes += 1;
                s.strikes
            });
            if strikes.is_some_and(|s| s >= self.cfg.max_strikes) {
                self.drop_provider(i.provider, DropReason::Slow);
            }
        }
    }

    /// A content packet from `from`.
    pub fn on_packet(&mut self, now: Instant, from: P, packet: ContentPacket) {
        if self
            .providers
            .get(&from)
            .is_none_or(|p| p.dropped.is_some())
        {
            return;
        }
        match packet {
            ContentPacket::Data { req, bytes } => self.on_data(now, from, req, &bytes),
            ContentPacket::Missing { req } => {
                if self.inflight.get(&req).is_some_and(|i| i.provider == from) {
                    self.drop_provider(from, DropReason::Missing);
                }
            }
            ContentPacket::Size { req, len } => {
                let Some(i) = self.inflight.get_mut(&req).filter(|i| i.provider == from) else {
                    return;
                };
                if self.len.is_some()
                    || i.end != WHOLE
                    || !i.buf.is_empty()
                    || len > self.cfg.max_whole_len
                    || len == 0
                {
                    self.drop_provider(from, DropReason::Corrupt);
                } else {
                    i.want = response_len(len, 0, group_count(len));
                    i.end = group_count(len);
                    i.buf.reserve(usize::try_from(i.want).unwrap_or(0));
                    i.start = len; // remembered claimed length (start is 0 for whole fetches)
                }
            }
            ContentPacket::Get { .. } | ContentPacket::Cancel { .. } => {}
        }
    }

    fn on_data(&mut self, now: Instant, from: P, req: u32, bytes: &[u8]) {
        let Some(i) = self.inflight.get_mut(&req) else {
            // A cancelled or finished request: late bytes are harmless.
            return;
        };
        if i.provider != from {
            self.drop_provider(from, DropReason::Corrupt);
            return;
        }
        if i.want == 0 || i.buf.len() + bytes.len() > i.want as usize {
            // Data before the size of a whole fetch, or more than the range.
            self.drop_provider(from, DropReason::Corrupt);
            return;
        }
        i.buf.extend_from_slice(bytes);
        if i.buf.len() as u64 != i.want {
            return;
        }
        let Some(i) = self.take_inflight(req) else {
            return;
        };
        let whole = self.len.is_none();
        let (len, start, end) = if whole {
            (i.start, 0, i.end)
        } else {
            (self.len.unwrap_or(0), i.start, i.end)
        };
        match verify_response(self.blob, len, start, end, &i.buf) {
            Ok(pieces) => {
                let rtt = now.saturating_duration_since(i.sent);
                if let Some(s) = self.providers.get_mut(&from) {
                    s.strikes = 0;
                    s.srtt = Some(s.srtt.map_or(rtt, |old| (old * 7 + rtt) / 8));
                }
                if whole {
                    self.len = Some(len);
                    self.groups = group_count(len);
                    self.done = vec![true; usize::try_from(self.groups).unwrap_or(0)];
                    self.done_count = self.groups;
                    self.next = self.groups;
                    self.events.push_back(FetchEvent::Length(len));
                    let n: u64 = pieces.iter().map(|(_, d)| d.len() as u64).sum();
                    if let Some(s) = self.providers.get_mut(&from) {
                        s.bytes += n;
                    }
                    for (offset, bytes) in pieces {
                        self.events.push_back(FetchEvent::Data { offset, bytes });
                    }
                    self.finish();
                    return;
                }
                for g in start..end {
                    let idx = usize::try_from(g).unwrap_or(usize::MAX);
                    if self.done.get(idx).copied().unwrap_or(true) {
                        continue;
                    }
                    self.done[idx] = true;
                    self.done_count += 1;
                    let (from_b, to_b) = group_bytes(len, g, g + 1);
                    for (off, d) in &pieces {
                        let dend = off + d.len() as u64;
                        let s = from_b.max(*off);
                        let e = to_b.min(dend);
                        if s < e {
                            let piece = d[(s - off) as usize..(e - off) as usize].to_vec();
                            if let Some(st) = self.providers.get_mut(&from) {
                                st.bytes += piece.len() as u64;
                            }
                            self.events.push_back(FetchEvent::Data {
                                offset: s,
                                bytes: piece,
                            });
                        }
                    }
                    self.cancel_copies(g);
                }
                if self.done_count == self.groups {
                    self.finish();
                }
            }
            Err(_) => {
                if whole {
                    self.requeue(0, 1);
                } else {
                    self.requeue(start, end);
                }
                self.drop_provider(from, DropReason::Corrupt);
            }
        }
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.events.push_back(FetchEvent::Done);
            let reqs: Vec<u32> = self.inflight.keys().copied().collect();
            for req in reqs {
                if let Some(i) = self.take_inflight(req) {
                    self.out
                        .push_back((i.provider, ContentPacket::Cancel { req }));
                }
            }
        }
    }

    /// Cancels other copies of group `g` still in flight (endgame duplicates).
    fn cancel_copies(&mut self, g: u64) {
        if self.copies.get(&g).copied().unwrap_or(0) == 0 {
            return;
        }
        let reqs: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.start == g)
            .map(|(r, _)| *r)
            .collect();
        for req in reqs {
            if let Some(i) = self.take_inflight(req) {
                self.out
                    .push_back((i.provider, ContentPacket::Cancel { req }));
            }
        }
    }

    fn take_inflight(&mut self, req: u32) -> Option<Inflight<P>> {
        let i = self.inflight.remove(&req)?;
        if let Some(s) = self.providers.get_mut(&i.provider) {
            s.inflight = s.inflight.saturating_sub(1);
        }
        if self.len.is_some()
            && let Some(c) = self.copies.get_mut(&i.start)
        {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.copies.remove(&i.start);
            }
        }
        Some(i)
    }

    /// Puts groups `start..end` (clamped to the blob's groups) that are neither done nor in
    /// flight back in the queue.
    fn requeue(&mut self, start: u64, end: u64) {
        for g in start..end.min(self.groups) {
            let idx = usize::try_from(g).unwrap_or(usize::MAX);
            if !self.done.get(idx).copied().unwrap_or(true)
                && self.copies.get(&g).copied().unwrap_or(0) == 0
            {
                self.retry.push_back(g);
            }
        }
    }

    fn drop_provider(&mut self, p: P, reason: DropReason) {
        let Some(s) = self.providers.get_mut(&p) else {
            return;
        };
        if s.dropped.is_some() {
            return;
        }
        s.dropped = Some(reason);
        self.events.push_back(FetchEvent::ProviderDropped {
            provider: p,
            reason,
        });
        let reqs: Vec<u32> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.provider == p)
            .map(|(r, _)| *r)
            .collect();
        for req in reqs {
            if let Some(i) = self.take_inflight(req) {
                if self.len.is_some() {
                    self.requeue(i.start, i.end);
                }
                if reason != DropReason::Gone {
                    self.out.push_back((p, ContentPacket::Cancel { req }));
                }
            }
        }
        self.order.retain(|x| *x != p);
    }

    fn timeout_for(&self, p: &P) -> Duration {
        let t = self
            .providers
            .get(p)
            .and_then(|s| s.srtt)
            .map_or(self.cfg.max_timeout, |r| r * 4);
        t.clamp(self.cfg.min_timeout, self.cfg.max_timeout)
    }

    fn send_get(&mut self, now: Instant, p: P, start: u64, end: u64) {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let want = match self.len {
            Some(len) => response_len(len, start, end),
            None => 0,
        };
        let deadline = now + self.timeout_for(&p);
        self.inflight.insert(
            req,
            Inflight {
                provider: p,
                start,
                end,
                sent: now,
                deadline,
                want,
                buf: Vec::new(),
            },
        );
        if self.len.is_some() {
            *self.copies.entry(start).or_insert(0) += 1;
        }
        if let Some(s) = self.providers.get_mut(&p) {
            s.inflight += 1;
        }
        self.out.push_back((
            p,
            ContentPacket::Get {
                req,
                blob: self.blob,
                start,
                end: if self.len.is_none() { WHOLE } else { end },
            },
        ));
    }

    fn fill(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if self.order.is_empty() {
            if !self.starved {
                self.starved = true;
                self.events.push_back(FetchEvent::NoProviders);
            }
            return;
        }
        if self.len.is_none() {
            if self.inflight.is_empty() {
                let p = self.order[0];
                self.send_get(now, p, 0, WHOLE);
            }
            return;
        }
        loop {
            // The least loaded live provider with room.
            let Some(p) = self
                .order
                .iter()
                .filter_map(|p| self.providers.get(p).map(|s| (s.inflight, *p)))
                .filter(|(n, _)| *n < self.cfg.window)
                .min_by_key(|(n, _)| *n)
                .map(|(_, p)| p)
            else {
                return;
            };
            let g = loop {
                if let Some(g) = self.retry.pop_front() {
                    let idx = usize::try_from(g).unwrap_or(usize::MAX);
                    if self.done.get(idx).copied().unwrap_or(true)
                        || self.copies.get(&g).copied().unwrap_or(0) > 0
                    {
                        continue;
                    }
                    break Some(g);
                }
                if self.next < self.groups {
                    self.next += 1;
                    break Some(self.next - 1);
                }
                break None;
            };
            if let Some(g) = g {
                self.send_get(now, p, g, g + 1);
                continue;
            }
            // Endgame: duplicate the oldest single-copy request of another provider.
            let dup = self
                .inflight
                .values()
                .filter(|i| i.provider != p && self.copies.get(&i.start).copied() == Some(1))
                .min_by_key(|i| i.sent)
                .map(|i| i.start);
            match dup {
                Some(g) => self.send_get(now, p, g, g + 1),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Outboard;
    use crate::wire::MAX_DATA_CHUNK;

    /// A simulated provider: answers Gets from its copy of the data.
    struct Prov {
        data: Vec<u8>,
        ob: Outboard,
        corrupt: bool,
        has: bool,
    }

    impl Prov {
        fn answer(&self, p: &ContentPacket) -> Vec<ContentPacket> {
            let ContentPacket::Get {
                req, start, end, ..
            } = *p
            else {
                return vec![];
            };
            if !self.has {
                return vec![ContentPacket::Missing { req }];
            }
            let len = self.data.len() as u64;
            let mut out = vec![];
            let (s, e) = if end == WHOLE {
                out.push(ContentPacket::Size { req, len });
                (0, group_count(len))
            } else {
                (start, end)
            };
            let (from, to) = group_bytes(len, s, e);
            let mut enc = Vec::new();
            self.ob
                .encode(s, e, &self.data[from as usize..to as usize], &mut enc)
                .expect("encode");
            if self.corrupt {
                let n = enc.len();
                enc[n - 1] ^= 0x55;
            }
            for c in enc.chunks(MAX_DATA_CHUNK) {
                out.push(ContentPacket::Data {
                    req,
                    bytes: c.to_vec(),
                });
            }
            out
        }
    }

    fn run(
        data: &[u8],
        provs: &[Prov],
        whole: bool,
        skip: &[usize],
    ) -> (Vec<u8>, Vec<(usize, DropReason)>, Vec<u64>) {
        let id = ContentId::of(data);
        let len = if whole { None } else { Some(data.len() as u64) };
        let mut f: Fetch<usize> = Fetch::new(id, len, FetchConfig::default());
        for i in 0..provs.len() {
            f.add_provider(i);
        }
        let mut out = vec![0u8; data.len()];
        let mut written = vec![false; data.len()];
        let mut drops = vec![];
        #[allow(clippy::disallowed_methods)] // a test's base time
        let mut now = Instant::now();
        for _ in 0..100_000 {
            let mut sent = false;
            while let Some((p, pkt)) = f.poll_transmit(now) {
                sent = true;
                if skip.contains(&p) {
                    continue;
                }
                for r in provs[p].answer(&pkt) {
                    f.on_packet(now, p, r);
                }
            }
            while let Some(e) = f.poll_event() {
                match e {
                    FetchEvent::Data { offset, bytes } => {
                        for (k, b) in bytes.iter().enumerate() {
                            let o = offset as usize + k;
                            assert!(!written[o], "byte {o} twice");
                            written[o] = true;
                            out[o] = *b;
                        }
                    }
                    FetchEvent::ProviderDropped { provider, reason } => {
                        drops.push((provider, reason));
                    }
                    FetchEvent::Done | FetchEvent::NoProviders | FetchEvent::Length(_) => {}
                }
            }
            if f.is_done() || f.live_providers() == 0 {
                break;
            }
            if !sent {
                now += Duration::from_secs(1);
                f.handle_timeout(now);
            }
        }
        let per = (0..provs.len())
            .map(|i| f.providers()[&i].bytes)
            .collect::<Vec<_>>();
        (out, drops, per)
    }

    fn prov(data: &[u8], corrupt: bool, has: bool) -> Prov {
        Prov {
            data: data.to_vec(),
            ob: Outboard::create(data, data.len() as u64).expect("hash"),
            corrupt,
            has,
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + i / 977) as u8).collect()
    }

    #[test]
    fn three_providers_share() {
        let d = data(1_000_003);
        let ps = [
            prov(&d, false, true),
            prov(&d, false, true),
            prov(&d, false, true),
        ];
        let (out, drops, per) = run(&d, &ps, false, &[]);
        assert_eq!(out, d);
        assert!(drops.is_empty());
        assert!(per.iter().all(|b| *b > 100_000), "{per:?}");
    }

    #[test]
    fn corrupt_provider_dropped_output_intact() {
        let d = data(500_000);
        let ps = [
            prov(&d, false, true),
            prov(&d, true, true),
            prov(&d, false, false),
        ];
        let (out, drops, per) = run(&d, &ps, false, &[]);
        assert_eq!(out, d);
        assert!(drops.contains(&(1, DropReason::Corrupt)), "{drops:?}");
        assert!(drops.contains(&(2, DropReason::Missing)), "{drops:?}");
        assert_eq!(per[1], 0);
    }

    #[test]
    fn silent_provider_times_out() {
        let d = data(300_000);
        let ps = [prov(&d, false, true), prov(&d, false, true)];
        // The endgame finishes the fetch through the live provider.
        let (out, _, per) = run(&d, &ps, false, &[1]);
        assert_eq!(out, d);
        assert_eq!(per[1], 0);
        // Alone, the silent provider is dropped after 3 timeouts.
        let (_, drops, _) = run(&d, &ps[1..], false, &[0]);
        assert_eq!(drops, vec![(0, DropReason::Slow)]);
    }

    #[test]
    fn whole_fetch_and_bad_first() {
        let d = data(40_000);
        let ps = [prov(&d, true, true), prov(&d, false, true)];
        let (out, drops, _) = run(&d, &ps, true, &[]);
        assert_eq!(out, d);
        assert_eq!(drops, vec![(0, DropReason::Corrupt)]);
    }

    #[test]
    fn whole_fetch_from_silent_providers_ends() {
        // Regression (fuzz): a whole-blob request timing out before its size arrived once
        // requeued groups `0..WHOLE`, a loop of 2^64 steps.
        let d = data(40_000);
        let ps = [prov(&d, false, true), prov(&d, false, true)];
        let (_, drops, _) = run(&d, &ps, true, &[0, 1]);
        assert_eq!(
            drops,
            vec![(0, DropReason::Slow), (1, DropReason::Slow)],
            "both silent providers dropped after their strikes"
        );
        // One silent provider, then a good one: the fetch completes through the second.
        let (out, drops, _) = run(&d, &ps, true, &[0]);
        assert_eq!(out, d);
        assert_eq!(drops, vec![(0, DropReason::Slow)]);
    }

    #[test]
    fn empty_blob() {
        let mut f: Fetch<u8> = Fetch::new(ContentId::of(&[]), Some(0), FetchConfig::default());
        assert!(f.is_done());
        assert_eq!(f.poll_event(), Some(FetchEvent::Done));
    }
}
