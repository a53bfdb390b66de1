//! What a DHT node needs to host the value store (`data-layer.md` §3.1): the table of peers known
//! to support the extension, and the datagram path (decrypt → [`Store::handle`] → encrypt).
//!
//! Capability is learned, never assumed: a peer becomes capable when it sends any valid,
//! authenticated store packet (a hello response to our probe, a get response, a request of its
//! own). A c-toxcore peer ignores 0xe0–0xe4 and never enters the table. Entries not heard from for
//! [`CAPABLE_TIMEOUT`] are dropped; the table holds at most [`MAX_CAPABLE`] nodes (when full, the
//! one heard from longest ago goes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_crypto::{Nonce, PrecomputedCache, PublicKey};
use ferry_wire::node::PackedNode;

use crate::item::Target;
use crate::store::Store;
use crate::wire::{Hello, StoreEnvelope, StoreMessage};

/// Most capable peers remembered.
pub const MAX_CAPABLE: usize = 1024;
/// A capable peer not heard from for this long is forgotten (as c-toxcore's kill timeout for
/// DHT nodes, 182 s, `tox-protocol.md` §3).
pub const CAPABLE_TIMEOUT: Duration = Duration::from_secs(182);

#[derive(Clone, Copy, Debug)]
struct Entry {
    node: PackedNode,
    last_seen: Instant,
    accepts: bool,
}

/// Peers known to support the store extension.
#[derive(Clone, Debug, Default)]
pub struct CapableNodes {
    nodes: HashMap<PublicKey, Entry>,
}

impl CapableNodes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `node` spoke the store protocol at `now`; `accepts` from its hello/get flags.
    ///
    /// One UDP address is one node: a key not known yet that speaks from an address held under
    /// another key replaces that entry. DHT keys are new at every start, so this is a node that
    /// restarted on the same address (e.g. after a crash, on its usual port); the old entry
    /// would only cost lookups a [`crate::lookup::REQUEST_TIMEOUT`] until [`CAPABLE_TIMEOUT`]
    /// (issue 9 offline-delivery benchmark, `bench/offline.sh cold`). It also bounds what one
    /// source address can add to the table to one entry.
    pub fn mark(&mut self, node: PackedNode, now: Instant, accepts: bool) {
        if !self.nodes.contains_key(&node.public_key) {
            self.nodes.retain(|_, e| e.node.addr != node.addr);
        }
        if !self.nodes.contains_key(&node.public_key)
            && self.nodes.len() >= MAX_CAPABLE
            && let Some(oldest) = self
                .nodes
                .iter()
                .min_by_key(|(k, e)| (e.last_seen, **k))
                .map(|(k, _)| *k)
        {
            self.nodes.remove(&oldest);
        }
        self.nodes.insert(
            node.public_key,
            Entry {
                node,
                last_seen: now,
                accepts,
            },
        );
    }

    /// Whether `key` is known capable.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.nodes.contains_key(key)
    }

    /// Number of capable peers known (the density metric of `data-layer.md` §3.1 is this over
    /// the DHT's close-list size).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Up to `n` capable peers closest to `target` that accept puts, closest first: seeds for a
    /// [`crate::lookup::Lookup`] and the nodes of our get responses.
    pub fn closest(&self, target: &Target, n: usize) -> Vec<PackedNode> {
        let mut v: Vec<PackedNode> = self
            .nodes
            .values()
            .filter(|e| e.accepts)
            .map(|e| e.node)
            .collect();
        let t = target.key();
        v.sort_by(|a, b| t.distance_cmp(&a.public_key, &b.public_key));
        v.truncate(n);
        v
    }

    /// Forgets peers silent for [`CAPABLE_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        self.nodes
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < CAPABLE_TIMEOUT);
    }
}

/// A hello probe for a newly seen DHT node (sealed by the host like any other message); a
/// capable node answers, a legacy one stays silent.
pub fn probe(rng: &mut FerryRng) -> StoreMessage {
    StoreMessage::Hello(Hello {
        is_response: false,
        request_id: rng.next_u64().to_be_bytes(),
        accepts: true,
    })
}

/// Seals `msg` to `to` with our DHT key pair (via `keys`, whose secret is our DHT secret key).
pub fn seal_to(
    our_pk: PublicKey,
    keys: &mut PrecomputedCache,
    to: &PublicKey,
    msg: &StoreMessage,
    rng: &mut FerryRng,
) -> Option<Vec<u8>> {
    StoreEnvelope::seal(our_pk, Nonce::random(rng), keys.get(to), msg)
        .ok()
        .map(|e| e.encode())
}

/// What [`StoreHost::handle_datagram`] made of a datagram.
#[derive(Debug)]
pub struct Handled {
    /// The sender's DHT key.
    pub from_key: PublicKey,
    /// The decrypted message (responses go to the host's lookups).
    pub message: StoreMessage,
    /// Our sealed reply to send back to the sender's address, if the message was a request.
    pub reply: Option<Vec<u8>>,
}

/// A DHT node's store side: our DHT key, the store, the capable-peer table and the
/// precomputed-key cache (whose secret is our DHT secret key; the host may share its DHT cache).
#[derive(Debug)]
pub struct StoreHost {
    /// Our DHT public key.
    pub our_pk: PublicKey,
    /// What we hold for others.
    pub store: Store,
    /// Peers known to support the extension.
    pub capable: CapableNodes,
    /// crypto_box precomputation per peer.
    pub keys: PrecomputedCache,
}

impl StoreHost {
    /// Bundles the parts.
    pub fn new(our_pk: PublicKey, store: Store, keys: PrecomputedCache) -> Self {
        Self {
            our_pk,
            store,
            capable: CapableNodes::new(),
            keys,
        }
    }

    /// Seals `msg` to the peer with DHT key `to`.
    pub fn seal(
        &mut self,
        to: &PublicKey,
        msg: &StoreMessage,
        rng: &mut FerryRng,
    ) -> Option<Vec<u8>> {
        seal_to(self.our_pk, &mut self.keys, to, msg, rng)
    }

    /// The datagram path for a store packet (first byte 0xe0–0xe4): decrypts with our DHT key,
    /// marks the sender capable, lets the store answer requests and seals the reply. `None` for
    /// anything malformed or unauthenticated (counted by the caller, no reply).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        rng: &mut FerryRng,
    ) -> Option<Handled> {
        let env = StoreEnvelope::decode(bytes).ok()?;
        if env.sender == self.our_pk {
            return None;
        }
        let message = env.open(self.keys.get(&env.sender)).ok()?;
        let accepts = match &message {
            StoreMessage::Hello(h) => h.accepts,
            StoreMessage::GetResponse(g) => g.would_accept,
            _ => true,
        };
        self.capable
            .mark(PackedNode::udp(from, env.sender), now, accepts);
        let capable = &self.capable;
        let reply = self
            .store
            .handle(now, from, &env.sender, &message, |t| {
                capable.closest(t, crate::wire::MAX_RESPONSE_NODES)
            })
            .and_then(|r| seal_to(self.our_pk, &mut self.keys, &env.sender, &r, rng));
        Some(Handled {
            from_key: env.sender,
            message,
            reply,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Item;
    use crate::store::StoreConfig;
    use crate::wire::{GetRequest, PutRequest};
    use ferry_crypto::{KeyPair, SecretKey};

    /// A new key from an address known under another key replaces the old entry (a restarted
    /// node); other addresses and a known key speaking from a new address are kept.
    #[test]
    fn new_key_at_known_address_replaces_the_old_entry() {
        let now = Instant::now();
        let key = |b: u8| KeyPair::from_secret(SecretKey::from_bytes([b; 32])).public;
        let x: SocketAddr = "127.0.0.1:33445".parse().expect("addr");
        let y: SocketAddr = "127.0.0.1:33446".parse().expect("addr");
        let mut t = CapableNodes::new();
        t.mark(PackedNode::udp(x, key(1)), now, true);
        t.mark(PackedNode::udp(y, key(2)), now, true);
        assert_eq!(t.len(), 2);
        // The node at x restarts with a new DHT key.
        t.mark(PackedNode::udp(x, key(3)), now, true);
        assert!(t.contains(&key(3)) && t.contains(&key(2)) && !t.contains(&key(1)));
        assert_eq!(t.len(), 2);
        let target = Target(key(9).0);
        assert!(
            t.closest(&target, 8).iter().all(|n| n.public_key != key(1)),
            "the old key is no longer handed out"
        );
        // A known key marked again from the same address changes nothing.
        t.mark(PackedNode::udp(x, key(3)), now, false);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn two_hosts_over_sealed_datagrams() {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(1);
        let a = KeyPair::from_secret(SecretKey::from_bytes([1; 32]));
        let b = KeyPair::from_secret(SecretKey::from_bytes([2; 32]));
        let a_addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b_addr: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let host = |kp: &KeyPair, rng: &mut FerryRng| {
            StoreHost::new(
                kp.public,
                Store::new(kp.public, StoreConfig::default(), now, rng),
                PrecomputedCache::new(kp.secret.clone(), 16),
            )
        };
        let mut ha = host(&a, &mut rng);
        let mut hb = host(&b, &mut rng);

        // A probes B; B answers; A marks B capable.
        let hello = ha
            .seal(&b.public, &probe(&mut rng), &mut rng)
            .expect("seal");
        let h = hb
            .handle_datagram(now, a_addr, &hello, &mut rng)
            .expect("valid");
        let reply = h.reply.expect("hello response");
        let r = ha
            .handle_datagram(now, b_addr, &reply, &mut rng)
            .expect("valid");
        assert!(r.reply.is_none());
        assert!(ha.capable.contains(&b.public) && hb.capable.contains(&a.public));

        // Get (for the token), then put, then the value is held.
        let item = Item::Immutable(b"stored".to_vec());
        let target = item.implied_target().expect("t");
        let get = StoreMessage::Get(GetRequest {
            request_id: [1; 8],
            target,
            seq: None,
        });
        let dg = ha.seal(&b.public, &get, &mut rng).expect("seal");
        let h = hb
            .handle_datagram(now, a_addr, &dg, &mut rng)
            .expect("valid");
        let r = ha
            .handle_datagram(now, b_addr, &h.reply.expect("reply"), &mut rng)
            .expect("valid");
        let StoreMessage::GetResponse(g) = r.message else {
            panic!("get response");
        };
        let put = StoreMessage::Put(PutRequest {
            request_id: [2; 8],
            token: g.token,
            ttl_s: 60,
            cas: None,
            target,
            item,
        });
        let dg = ha.seal(&b.public, &put, &mut rng).expect("seal");
        hb.handle_datagram(now, a_addr, &dg, &mut rng)
            .expect("valid");
        assert_eq!(hb.store.stats().items, 1);

        // Garbage and tampered datagrams: no reply, no capability.
        let mut bad = dg.clone();
        bad[80] ^= 1;
        let c_addr: SocketAddr = "127.0.0.1:3".parse().expect("addr");
        assert!(hb.handle_datagram(now, c_addr, &bad, &mut rng).is_none());
        assert!(
            hb.handle_datagram(now, c_addr, &[0xe1; 10], &mut rng)
                .is_none()
        );
    }

    #[test]
    fn capable_table_is_capped_and_expires() {
        let now = Instant::now();
        let mut t = CapableNodes::new();
        for i in 0..(MAX_CAPABLE + 10) {
            let mut k = [0; 32];
            k[..8].copy_from_slice(&(i as u64).to_be_bytes());
            // Distinct addresses: one address holds one entry.
            let addr = SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16));
            let node = PackedNode::udp(addr, PublicKey(k));
            t.mark(node, now + Duration::from_millis(i as u64), i % 2 == 0);
        }
        assert_eq!(t.len(), MAX_CAPABLE);
        assert_eq!(t.closest(&Target([0; 32]), 8).len(), 8);
        t.expire(now + CAPABLE_TIMEOUT + Duration::from_secs(2));
        assert!(t.is_empty());
    }
}
