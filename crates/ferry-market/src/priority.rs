//! Priority classes under congestion (issue 8 point 5; seed 000 "get ahead", seed 002 credits;
//! `payments.md` §4.6): paid traffic before grace traffic before the free tier, the free tier
//! rate-limited, and a local credit score that raises a peer's free-tier share.

use std::collections::{HashMap, VecDeque};

use crate::{MAX_PEERS, PeerId};

/// The class a forwarded packet travels in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Class {
    /// Under a contract in good standing with at least one voucher accepted.
    Paid,
    /// On credit: before the first voucher, or from the unsecured allowance.
    Grace,
    /// No contract (a node that does not sell, or a peer it serves for free).
    Free,
}

/// Bytes a peer provably forwarded for us (from delivery receipts), per peer; capped at
/// [`MAX_PEERS`] (the smallest score is evicted). Never money: it only raises the peer's share
/// of the free tier ([`PriorityQueue`]).
#[derive(Debug, Default, Clone)]
pub struct CreditScores {
    bytes: HashMap<PeerId, u64>,
}

impl CreditScores {
    /// Adds `bytes` receipted for traffic `peer` forwarded for us.
    pub fn credit(&mut self, peer: PeerId, bytes: u64) {
        if !self.bytes.contains_key(&peer)
            && self.bytes.len() >= MAX_PEERS
            && let Some((&low, _)) = self.bytes.iter().min_by_key(|(_, b)| **b)
        {
            self.bytes.remove(&low);
        }
        let b = self.bytes.entry(peer).or_default();
        *b = b.saturating_add(bytes);
    }

    /// The peer's free-tier weight: 1 plus one per doubling of MiB forwarded for us
    /// (1 MiB → 2, 2 MiB → 3, 1 GiB → 12), at most 16.
    pub fn weight(&self, peer: &PeerId) -> u32 {
        let mib = self.bytes.get(peer).copied().unwrap_or(0) >> 20;
        if mib == 0 {
            1
        } else {
            (2 + mib.ilog2()).min(16)
        }
    }
}

/// A bounded egress queue with three classes, served strictly paid → grace → free, the free
/// class limited by a token bucket (bytes per second, burst one second) whose share per peer
/// follows [`CreditScores::weight`]. Sans-IO: `now_ms` is passed in.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    queues: [VecDeque<(PeerId, u32, T)>; 3],
    cap: usize,
    free_rate: u64,
    tokens: u64,
    last_ms: Option<u64>,
    dropped: [u64; 3],
}

impl<T> PriorityQueue<T> {
    /// A queue of at most `cap` packets per class; the free tier gets `free_rate` bytes/s.
    pub fn new(cap: usize, free_rate: u64) -> Self {
        Self {
            queues: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            cap,
            free_rate,
            tokens: free_rate,
            last_ms: None,
            dropped: [0; 3],
        }
    }

    fn index(class: Class) -> usize {
        match class {
            Class::Paid => 0,
            Class::Grace => 1,
            Class::Free => 2,
        }
    }

    /// Queues a packet of `len` bytes; returns it back when its class is full (tail drop).
    ///
    /// # Errors
    /// The packet, when the class queue holds `cap` packets already.
    pub fn push(&mut self, class: Class, peer: PeerId, len: u32, item: T) -> Result<(), T> {
        let i = Self::index(class);
        if self.queues[i].len() >= self.cap {
            self.dropped[i] += 1;
            return Err(item);
        }
        self.queues[i].push_back((peer, len, item));
        Ok(())
    }

    /// The next packet to send at `now_ms`, if any may go: paid first, then grace, then free
    /// while the bucket has tokens. A free packet of a peer with weight *w* costs `len / w`
    /// tokens.
    pub fn pop(&mut self, now_ms: u64, scores: &CreditScores) -> Option<(Class, PeerId, T)> {
        if let Some(last) = self.last_ms {
            let add = now_ms.saturating_sub(last).saturating_mul(self.free_rate) / 1000;
            self.tokens = self.tokens.saturating_add(add).min(self.free_rate.max(1));
        }
        self.last_ms = Some(now_ms);
        for (i, class) in [(0, Class::Paid), (1, Class::Grace)] {
            if let Some((peer, _, item)) = self.queues[i].pop_front() {
                return Some((class, peer, item));
            }
        }
        let (peer, len, _) = self.queues[2].front()?;
        let cost = u64::from(*len) / u64::from(scores.weight(peer));
        if self.tokens < cost {
            return None;
        }
        self.tokens -= cost;
        self.queues[2]
            .pop_front()
            .map(|(p, _, t)| (Class::Free, p, t))
    }

    /// Packets waiting per class (paid, grace, free).
    pub fn len(&self) -> [usize; 3] {
        [
            self.queues[0].len(),
            self.queues[1].len(),
            self.queues[2].len(),
        ]
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Packets tail-dropped per class (paid, grace, free).
    pub fn dropped(&self) -> [u64; 3] {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `payments.md` §5 group 8: under congestion a paid flow gets at least its share over a
    /// free flow. A link that drains 100 packets per ms tick is offered 200 paid and 200 free
    /// packets per tick: every paid packet goes; free packets get only the bucket.
    #[test]
    fn paid_traffic_goes_first_under_congestion() {
        let mut q = PriorityQueue::new(10_000, 100_000); // free tier 100 kB/s
        let scores = CreditScores::default();
        let (payer, freeloader) = ([1; 32], [2; 32]);
        let (mut paid_sent, mut free_sent) = (0u64, 0u64);
        for tick in 0..1000u64 {
            for _ in 0..200 {
                let _ = q.push(Class::Paid, payer, 1000, ());
                let _ = q.push(Class::Free, freeloader, 1000, ());
            }
            for _ in 0..100 {
                match q.pop(tick, &scores) {
                    Some((Class::Paid, _, ())) => paid_sent += 1,
                    Some((_, _, ())) => free_sent += 1,
                    None => break,
                }
            }
        }
        // The link carried 100 packets a tick; paid traffic always had a backlog.
        assert_eq!(paid_sent, 100_000);
        assert_eq!(free_sent, 0);
        assert!(q.dropped()[2] > 0);
    }

    #[test]
    fn free_tier_is_rate_limited_and_credit_raises_a_share() {
        let mut scores = CreditScores::default();
        let (helper, stranger) = ([3; 32], [4; 32]);
        scores.credit(helper, 8 << 20); // 8 MiB forwarded for us: weight 5
        assert_eq!(scores.weight(&helper), 5);
        assert_eq!(scores.weight(&stranger), 1);
        let sent = |peer: PeerId| {
            let mut q = PriorityQueue::new(100_000, 10_000); // 10 kB/s
            for _ in 0..10_000 {
                let _ = q.push(Class::Free, peer, 1000, ());
            }
            let mut n = 0;
            for ms in 0..=10_000u64 {
                while q.pop(ms, &scores).is_some() {
                    n += 1;
                }
            }
            n
        };
        let (h, s) = (sent(helper), sent(stranger));
        // 10 s at 10 kB/s plus one second of burst: ~110 packets of 1000 bytes.
        assert!((100..=120).contains(&s), "stranger sent {s}");
        assert!((500..=600).contains(&h), "helper sent {h}");
    }
}
