//! Outstanding requests awaiting a response, keyed by their random 8-byte ping id
//! (c-toxcore `ping_array.c`: 512 entries, 5 s timeout, oldest overwritten when full).

use std::collections::VecDeque;

// hashbrown's map (foldhash): a lookup per nodes and ping response, cheaper than std's SipHash.
// The ids are ours (drawn from the node's RNG), so a peer cannot aim at collisions.
use hashbrown::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;

#[derive(Debug, Clone, Copy)]
struct Pending {
    public_key: PublicKey,
    addr: SocketAddr,
    sent: Instant,
}

/// A bounded table of requests sent, so a response counts only if it answers one of ours, from
/// the same key and address, in time.
#[derive(Debug)]
pub(crate) struct PingArray {
    entries: HashMap<[u8; 8], Pending>,
    order: VecDeque<[u8; 8]>,
    capacity: usize,
    timeout: Duration,
}

impl PingArray {
    pub(crate) fn new(capacity: usize, timeout: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            timeout,
        }
    }

    /// Records a request sent to `public_key` at `addr` under `id`; evicts the oldest when full.
    pub(crate) fn insert(
        &mut self,
        id: [u8; 8],
        public_key: PublicKey,
        addr: SocketAddr,
        now: Instant,
    ) {
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        if self
            .entries
            .insert(
                id,
                Pending {
                    public_key,
                    addr,
                    sent: now,
                },
            )
            .is_none()
        {
            self.order.push_back(id);
        }
        // Keep `order` from growing with ids already answered.
        if self.order.len() > self.capacity * 2 {
            let entries = &self.entries;
            self.order.retain(|id| entries.contains_key(id));
        }
    }

    /// Consumes the entry for `id` (one-shot, as c-toxcore) and says whether it matches the
    /// responder's key and address and is younger than the timeout.
    pub(crate) fn take(
        &mut self,
        id: &[u8; 8],
        public_key: &PublicKey,
        addr: SocketAddr,
        now: Instant,
    ) -> bool {
        match self.entries.remove(id) {
            Some(p) => {
                p.public_key == *public_key
                    && p.addr == addr
                    && now.saturating_duration_since(p.sent) < self.timeout
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
mod tests {
    use super::*;

    #[test]
    fn one_shot_matching_and_timeout() {
        let now = Instant::now();
        let pk = PublicKey([1; 32]);
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mut a = PingArray::new(2, Duration::from_secs(5));
        a.insert([1; 8], pk, addr, now);
        assert!(!a.take(&[1; 8], &PublicKey([2; 32]), addr, now));
        assert!(
            !a.take(&[1; 8], &pk, addr, now),
            "consumed by the failed check"
        );
        a.insert([2; 8], pk, addr, now);
        assert!(!a.take(&[2; 8], &pk, addr, now + Duration::from_secs(5)));
        a.insert([3; 8], pk, addr, now);
        assert!(a.take(&[3; 8], &pk, addr, now + Duration::from_secs(4)));
        for i in 0..10u8 {
            a.insert([i; 8], pk, addr, now);
        }
        assert_eq!(a.len(), 2);
        assert!(a.take(&[9; 8], &pk, addr, now));
        assert!(!a.take(&[0; 8], &pk, addr, now));
    }
}
