//! Iterative get/put over store-capable nodes (Kademlia; `data-layer.md` §3.1): k = [`K`] (8),
//! α = [`ALPHA`] (3).
//!
//! A [`Lookup`] starts from the closest capable nodes the host knows and asks them for the target
//! ([`GetRequest`]); each get response carries up to 8 closer capable nodes, a write token and
//! what is stored. The search converges when the [`K`] closest nodes not known to have failed
//! have all answered. A put then sends the item with each answerer's token to those k nodes.
//! Mailbox targets are paged: a holder that returned a mail envelope in slot `s` is asked again
//! from `s + 1` (at most [`MAX_MAIL_PAGES`] per holder). Responses whose item fails verification
//! (signature, proof of work, target) mark the node failed (down-ranked).
//!
//! Sans-IO: the host seals the [`StoreMessage`]s from [`Lookup::poll_transmit`] into
//! [`crate::wire::StoreEnvelope`]s to the node's DHT key, feeds decrypted responses to
//! [`Lookup::handle_response`], calls [`Lookup::handle_timeout`] at [`Lookup::poll_timeout`] and
//! reads [`LookupEvent`]s. A node that never answers (a legacy c-toxcore node ignores 0xe0–0xe4)
//! times out after [`REQUEST_TIMEOUT`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_wire::node::PackedNode;

use crate::item::{CLAIM_POW_BITS, Item, PutError, Target};
use crate::store::SourceKey;
use crate::wire::{Found, GetRequest, PutRequest, RequestId, StoreMessage, Token};

/// Replication factor: items live on the k closest capable nodes.
pub const K: usize = 8;
/// Parallel requests in flight per lookup.
pub const ALPHA: usize = 3;
/// A request unanswered after this long counts as failed (3 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Most candidate nodes a lookup tracks (the farthest are dropped).
pub const MAX_CANDIDATES: usize = 64;
/// Most of the k holders chosen from one /24 (IPv4) or /48 (IPv6) (`data-layer.md` §3.1).
pub const MAX_PER_PREFIX: usize = 2;
/// Most mail pages asked of one holder in one lookup (= the per-mailbox envelope cap).
pub const MAX_MAIL_PAGES: u64 = 64;

/// What the lookup does at the end of the search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Get (BEP 44 get-with-seq when `seq` is set; for a mailbox: first slot).
    Get {
        /// Skip values not newer than this seq.
        seq: Option<u64>,
    },
    /// Put `item` on the k closest.
    Put {
        /// The item.
        item: Item,
        /// Requested lifetime, in seconds.
        ttl_s: u32,
        /// Compare-and-swap seq.
        cas: Option<u64>,
    },
}

/// Progress and results of a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupEvent {
    /// A verified value newer than any seen before in this lookup.
    Value {
        /// Who returned it.
        from: PublicKey,
        /// The item.
        item: Item,
    },
    /// A mail envelope not seen before in this lookup.
    Mail {
        /// Who returned it.
        from: PublicKey,
        /// The envelope ([`Item::Mail`]).
        item: Item,
    },
    /// A node stored our put.
    Stored {
        /// The holder.
        node: PackedNode,
        /// Granted lifetime, in seconds.
        ttl_s: u32,
    },
    /// A node refused our put.
    Refused {
        /// The node.
        node: PackedNode,
        /// Why.
        error: PutError,
    },
    /// The lookup is over (emitted once, last).
    Finished {
        /// The up to k closest nodes that answered, closest first.
        closest: Vec<PackedNode>,
        /// Puts acknowledged.
        stored: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    Waiting(RequestId, Instant),
    Answered,
    Failed,
    PutWaiting(RequestId, Instant),
    PutDone,
}

#[derive(Clone, Debug)]
struct Candidate {
    node: PackedNode,
    state: State,
    token: Option<Token>,
    next_seq: Option<u64>,
    pages: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Search,
    Put,
    Done,
}

/// One iterative get or put. See the module docs.
#[derive(Debug)]
pub struct Lookup {
    self_key: PublicKey,
    target: Target,
    op: Operation,
    pow_bits: u32,
    candidates: Vec<Candidate>,
    phase: Phase,
    best_seq: Option<u64>,
    mail_seen: HashSet<[u8; 32]>,
    stored: usize,
    events: VecDeque<LookupEvent>,
}

impl Lookup {
    /// A lookup by the node `self_key` for `target`, starting from `seeds` (the closest capable
    /// nodes the host knows).
    pub fn new(
        self_key: PublicKey,
        target: Target,
        op: Operation,
        seeds: impl IntoIterator<Item = PackedNode>,
    ) -> Self {
        let mut l = Self {
            self_key,
            target,
            op,
            pow_bits: CLAIM_POW_BITS,
            candidates: Vec::new(),
            phase: Phase::Search,
            best_seq: None,
            mail_seen: HashSet::new(),
            stored: 0,
            events: VecDeque::new(),
        };
        for n in seeds {
            l.add_candidate(n);
        }
        l
    }

    /// Sets the proof-of-work bits claimed items must reach (tests and simulators lower it).
    pub fn with_pow_bits(mut self, bits: u32) -> Self {
        self.pow_bits = bits;
        self
    }

    /// The target.
    pub fn target(&self) -> Target {
        self.target
    }

    /// Whether [`LookupEvent::Finished`] has been emitted (or is queued).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn add_candidate(&mut self, node: PackedNode) {
        if node.public_key == self.self_key
            || self
                .candidates
                .iter()
                .any(|c| c.node.public_key == node.public_key)
        {
            return;
        }
        let t = self.target.key();
        let pos = self
            .candidates
            .partition_point(|c| t.distance_cmp(&c.node.public_key, &node.public_key).is_lt());
        if pos >= MAX_CANDIDATES {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                node,
                state: State::Fresh,
                token: None,
                next_seq: None,
                pages: 0,
            },
        );
        self.candidates.truncate(MAX_CANDIDATES);
    }

    /// Indices of the k closest candidates not failed, at most [`MAX_PER_PREFIX`] per /24
    /// (/48): one operator's subnet cannot take all k slots around a target.
    fn closest_live(&self) -> Vec<usize> {
        let mut cap = prefix_cap();
        self.candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state != State::Failed)
            .filter(|(_, c)| cap(c.node.addr))
            .take(K)
            .map(|(i, _)| i)
            .collect()
    }

    /// The next request to send, if any: `(to, message)`. Call until `None` after every input.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        rng: &mut FerryRng,
    ) -> Option<(PackedNode, StoreMessage)> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Search => {
                    let live = self.closest_live();
                    let waiting = self
                        .candidates
                        .iter()
                        .filter(|c| matches!(c.state, State::Waiting(..)))
                        .count();
                    if waiting >= ALPHA {
                        return None;
                    }
                    if let Some(&i) = live
                        .iter()
                        .find(|&&i| self.candidates[i].state == State::Fresh)
                    {
                        let id = new_id(rng);
                        let c = &mut self.candidates[i];
                        c.state = State::Waiting(id, now);
                        // A put's search only wants tokens and closer nodes: seq = u64::MAX
                        // makes holders omit mutable values and mail (BEP 44 get-with-seq).
                        let seq = c.next_seq.or(match self.op {
                            Operation::Get { seq } => seq,
                            Operation::Put { .. } => Some(u64::MAX),
                        });
                        return Some((
                            c.node,
                            StoreMessage::Get(GetRequest {
                                request_id: id,
                                target: self.target,
                                seq,
                            }),
                        ));
                    }
                    if live
                        .iter()
                        .any(|&i| matches!(self.candidates[i].state, State::Waiting(..)))
                    {
                        return None;
                    }
                    self.phase = match self.op {
                        Operation::Get { .. } => {
                            self.finish();
                            Phase::Done
                        }
                        Operation::Put { .. } => Phase::Put,
                    };
                }
                Phase::Put => {
                    let Operation::Put { item, ttl_s, cas } = &self.op else {
                        self.finish();
                        return None;
                    };
                    let live = self.closest_live();
                    if let Some(&i) = live.iter().find(|&&i| {
                        self.candidates[i].state == State::Answered
                            && self.candidates[i].token.is_some()
                    }) {
                        let id = new_id(rng);
                        let c = &mut self.candidates[i];
                        c.state = State::PutWaiting(id, now);
                        return Some((
                            c.node,
                            StoreMessage::Put(PutRequest {
                                request_id: id,
                                token: c.token.unwrap_or_default(),
                                ttl_s: *ttl_s,
                                cas: *cas,
                                target: self.target,
                                item: item.clone(),
                            }),
                        ));
                    }
                    if self
                        .candidates
                        .iter()
                        .any(|c| matches!(c.state, State::PutWaiting(..)))
                    {
                        return None;
                    }
                    self.finish();
                    return None;
                }
            }
        }
    }

    fn finish(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let closest = self
            .candidates
            .iter()
            .filter(|c| {
                matches!(
                    c.state,
                    State::Answered | State::PutWaiting(..) | State::PutDone
                )
            })
            .take(K)
            .map(|c| c.node)
            .collect();
        self.events.push_back(LookupEvent::Finished {
            closest,
            stored: self.stored,
        });
        self.phase = Phase::Done;
    }

    /// Feeds a decrypted response from the node with DHT key `from` (the envelope's sender).
    /// Returns whether it belonged to this lookup.
    pub fn handle_response(&mut self, from: &PublicKey, msg: &StoreMessage) -> bool {
        let id = msg.request_id();
        let Some(i) = self.candidates.iter().position(|c| {
            c.node.public_key == *from
                && matches!(c.state, State::Waiting(x, _) | State::PutWaiting(x, _) if x == id)
        }) else {
            return false;
        };
        match (msg, self.candidates[i].state) {
            (StoreMessage::GetResponse(g), State::Waiting(..)) => {
                if !self.take_found(i, &g.found) {
                    self.candidates[i].state = State::Failed;
                    return true;
                }
                let node = &mut self.candidates[i];
                node.token = Some(g.token);
                // A mail holder with more pages is asked again; anyone else has answered.
                node.state = if node.next_seq.is_some() && matches!(g.found, Found::Mail { .. }) {
                    State::Fresh
                } else {
                    State::Answered
                };
                for n in &g.nodes {
                    self.add_candidate(*n);
                }
            }
            (StoreMessage::PutResponse(p), State::PutWaiting(..)) => {
                let node = self.candidates[i].node;
                self.candidates[i].state = State::PutDone;
                match p.result {
                    Ok(ttl_s) => {
                        self.stored += 1;
                        self.events.push_back(LookupEvent::Stored { node, ttl_s });
                    }
                    Err(error) => self.events.push_back(LookupEvent::Refused { node, error }),
                }
            }
            _ => self.candidates[i].state = State::Failed,
        }
        true
    }

    /// Handles what a get found; `false` when the node returned something invalid.
    fn take_found(&mut self, i: usize, found: &Found) -> bool {
        let from = self.candidates[i].node.public_key;
        match found {
            Found::Nothing | Found::SeqOnly(_) => true,
            Found::Item(item) => {
                if item.verify_with_pow(self.pow_bits).is_err()
                    || item.implied_target() != Some(self.target)
                {
                    return false;
                }
                let newer = match (item, self.best_seq) {
                    (Item::Mutable(_) | Item::Claimed(_), Some(s)) => item.seq() > s,
                    (_, None) => true,
                    _ => false,
                };
                if newer {
                    self.best_seq = Some(item.seq());
                    self.events.push_back(LookupEvent::Value {
                        from,
                        item: item.clone(),
                    });
                }
                true
            }
            Found::Mail { slot, item } => {
                let Item::Mail(env) = item else {
                    return false;
                };
                if item.verify().is_err() {
                    return false;
                }
                if self.mail_seen.insert(env.delete_hash) {
                    self.events.push_back(LookupEvent::Mail {
                        from,
                        item: item.clone(),
                    });
                }
                let paging = matches!(self.op, Operation::Get { .. });
                let c = &mut self.candidates[i];
                c.pages += 1;
                c.next_seq = (paging && c.pages < MAX_MAIL_PAGES).then(|| slot.saturating_add(1));
                true
            }
        }
    }

    /// Fails requests older than [`REQUEST_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for c in &mut self.candidates {
            if let State::Waiting(_, at) | State::PutWaiting(_, at) = c.state
                && now.saturating_duration_since(at) >= REQUEST_TIMEOUT
            {
                c.state = State::Failed;
            }
        }
    }

    /// When the oldest outstanding request times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter_map(|c| match c.state {
                State::Waiting(_, at) | State::PutWaiting(_, at) => Some(at + REQUEST_TIMEOUT),
                _ => None,
            })
            .min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LookupEvent> {
        self.events.pop_front()
    }
}

/// Where a put to `target` by the node `self_key` lands when every node answers: the up to
/// [`K`] of `nodes` closest to the target (XOR distance), `self_key` left out, at most
/// [`MAX_PER_PREFIX`] per /24 (IPv4) or /48 (IPv6) — the holders [`Lookup`] picks. Closest
/// first; duplicates (same key) count once.
///
/// A host compares it with the holders that acknowledged its last put (`LookupEvent::Stored`)
/// to see that the target's closest nodes changed since (a closer node joined, a holder left or
/// timed out): Kademlia's "store at the new closest" rule, without waiting for the
/// [`crate::item::HOLDER_REPUBLISH_INTERVAL`] (issue 10: a record on the 2 loopback holders of a
/// well-known target went unseen by readers after the closest pair changed).
pub fn placement(self_key: &PublicKey, target: &Target, nodes: &[PackedNode]) -> Vec<PackedNode> {
    let t = target.key();
    let mut v: Vec<PackedNode> = nodes
        .iter()
        .filter(|n| n.public_key != *self_key)
        .copied()
        .collect();
    v.sort_by(|a, b| t.distance_cmp(&a.public_key, &b.public_key));
    v.dedup_by(|a, b| a.public_key == b.public_key);
    let mut cap = prefix_cap();
    v.into_iter().filter(|n| cap(n.addr)).take(K).collect()
}

/// A filter over nodes taken closest first that lets at most [`MAX_PER_PREFIX`] through per
/// /24 (IPv4) or /48 (IPv6); shared by [`Lookup`]'s holder choice and [`placement`].
fn prefix_cap() -> impl FnMut(std::net::SocketAddr) -> bool {
    let mut per: HashMap<SourceKey, usize> = HashMap::new();
    move |addr| {
        let n = per.entry(SourceKey::of(addr)).or_default();
        *n += 1;
        *n <= MAX_PER_PREFIX
    }
}

fn new_id(rng: &mut FerryRng) -> RequestId {
    rng.next_u64().to_be_bytes()
}

#[cfg(test)]
mod tests;
