//! What a node holds for others (`data-layer.md` §3.1, §3.3): a sans-IO store a DHT node hosts.
//!
//! * **Write tokens**: `token = BLAKE3-keyed(secret, ip 16 ‖ port u16 ‖ requester DHT pk ‖ target)`
//!   (IPv4 as IPv4-mapped IPv6). The secret rotates every [`TOKEN_ROTATION`] (5 min); a token
//!   from the current or the previous secret is accepted, so a token lives 5–10 min (BEP 5). A
//!   token binds the address the get came from, so a put from a spoofed address fails.
//! * **Caps** ([`StoreConfig`]): total bytes (8 MiB) and items (8192); per source (/24 for IPv4,
//!   /48 for IPv6) items (64), bytes (80 KiB) and puts per minute (16); per mailbox envelopes
//!   (64) and bytes (64 KiB).
//! * **Eviction** when the store is full: expired items first, then the item farthest from our
//!   DHT key among those of the source holding the most items, and only when that source holds
//!   more than the newcomer's source would after the put (fair share). A source can therefore
//!   evict only its own items or those of sources larger than itself; it never pushes smaller
//!   sources out. Otherwise the put is refused ([`PutError::Full`]).
//! * **Lifetimes**: granted TTL = min(requested, class max) where class max is [`MAX_TTL`] (2 h)
//!   for immutable/mutable items, further capped at max(uptime / 4, [`MIN_TTL`]) (announce.c's
//!   rule: a fresh Sybil grants little); [`MAX_CLAIM_TTL`] (30 d) for claimed items and
//!   [`MAX_MAIL_TTL`] (7 d) for mail, which carry their own cost (proof of work, quotas).
//! * **Claims** (names): a claimed target is bound to its first owner key while held and for
//!   [`CLAIM_SEMI_EXPIRY`] (7 d) after it expires unrenewed (it stops resolving; only the owner
//!   can renew it). A claim evicted for space loses its binding at this storer.
//! * **Republish**: [`Store::due_republish`] hands the host the items to re-put to the current
//!   k closest every [`HOLDER_REPUBLISH_INTERVAL`] ± 25 % jitter.
//! * **Persistence**: [`Store::snapshot`] / [`Store::restore`] (format in [`Store::snapshot`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::{FerryRng, RngCore};
use ferry_wire::node::{PackedNode, normalize};
use ferry_wire::{Reader, WireError};

use crate::item::{
    CLAIM_POW_BITS, HOLDER_REPUBLISH_INTERVAL, Item, MAIL_POW_BITS, MAX_CLAIM_TTL, MAX_MAIL_TTL,
    MAX_TTL, OwnerKey, PutError, Target, delete_hash,
};
use crate::wire::{
    Found, GetRequest, GetResponse, Hello, MAX_RESPONSE_NODES, PutRequest, PutResponse,
    StoreMessage, Token,
};

/// How often the token secret rotates (5 min; tokens are accepted for two rotations, BEP 5).
pub const TOKEN_ROTATION: Duration = Duration::from_secs(300);
/// Smallest TTL a storer grants regardless of its uptime (60 s).
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Most sources whose put rate is tracked at once; when full, windows older than a minute are
/// dropped, then the oldest window (a flood of fresh sources cannot grow the table).
pub const MAX_RATE_SOURCES: usize = 4096;
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// After a claimed item (name record) expires unrenewed, its target stays bound to the owner key
/// for this long (7 days of "semi-expiry", `data-layer.md` §3.2, the Namecoin lesson): it no
/// longer resolves, but another key cannot take it; the owner can still renew.
pub const CLAIM_SEMI_EXPIRY: Duration = Duration::from_secs(7 * 86_400);

/// Storer limits (`data-layer.md` §3.1, §3.3). All sizes in bytes of encoded items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Total bytes held (default 8 MiB; the disk quota of issue 9 §4).
    pub max_bytes: usize,
    /// Total items held, mail envelopes included (default 8192).
    pub max_items: usize,
    /// Items per source /24 (IPv4) or /48 (IPv6) (default 64).
    pub per_source_items: usize,
    /// Bytes per source (default 80 KiB).
    pub per_source_bytes: usize,
    /// Envelopes per mailbox target (default 64).
    pub mailbox_items: usize,
    /// Bytes per mailbox target (default 64 KiB).
    pub mailbox_bytes: usize,
    /// Proof-of-work bits required of claimed items (default [`CLAIM_POW_BITS`]).
    pub claim_pow_bits: u32,
    /// Hashcash bits each mail envelope must carry (default [`MAIL_POW_BITS`]).
    pub mail_pow_bits: u32,
    /// Puts (accepted or not, token valid) per source per minute (default 16,
    /// `data-layer.md` §3.1). Counted in fixed one-minute windows.
    pub puts_per_minute: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: 8 << 20,
            max_items: 8192,
            per_source_items: 64,
            per_source_bytes: 80 << 10,
            mailbox_items: 64,
            mailbox_bytes: 64 << 10,
            claim_pow_bits: CLAIM_POW_BITS,
            mail_pow_bits: MAIL_POW_BITS,
            puts_per_minute: 16,
        }
    }
}

/// A put's source for quotas: the sender's /24 (IPv4) or /48 (IPv6) prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey(pub [u8; 8]);

impl SourceKey {
    /// The prefix of `addr` (tag byte 4 or 6, then 3 or 6 address bytes).
    pub fn of(addr: SocketAddr) -> Self {
        let mut k = [0; 8];
        match normalize(addr).ip() {
            IpAddr::V4(ip) => {
                k[0] = 4;
                k[1..4].copy_from_slice(&ip.octets()[..3]);
            }
            IpAddr::V6(ip) => {
                k[0] = 6;
                k[1..7].copy_from_slice(&ip.octets()[..6]);
            }
        }
        Self(k)
    }
}

#[derive(Clone, Debug)]
struct Held {
    item: Item,
    source: SourceKey,
    expires: Instant,
    cost: usize,
    republish_at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    items: usize,
    bytes: usize,
}

#[derive(Clone, Debug, Default)]
struct Mailbox {
    next_slot: u64,
    bytes: usize,
    envelopes: BTreeMap<u64, Held>,
}

/// Counters for `ferry store status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Items held (mail envelopes included).
    pub items: usize,
    /// Bytes held.
    pub bytes: usize,
    /// Configured byte quota.
    pub max_bytes: usize,
    /// Distinct sources holding items.
    pub sources: usize,
    /// Puts accepted since start.
    pub puts_accepted: u64,
    /// Puts refused since start.
    pub puts_refused: u64,
    /// Items evicted to make room.
    pub evicted: u64,
}

/// An item the host should re-put to the target's current k closest (holder republish).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Republish {
    /// Where.
    pub target: Target,
    /// What.
    pub item: Item,
    /// Lifetime left, in seconds (the re-put's requested TTL).
    pub ttl_s: u32,
}

/// The value store of one node. See the module docs for its rules.
#[derive(Debug)]
pub struct Store {
    self_key: PublicKey,
    config: StoreConfig,
    started: Instant,
    secret: [u8; 32],
    previous_secret: [u8; 32],
    rotate_at: Instant,
    items: HashMap<Target, Held>,
    mail: HashMap<Target, Mailbox>,
    usage: HashMap<SourceKey, Usage>,
    rate: HashMap<SourceKey, (Instant, u32)>,
    /// Semi-expired claims: target → (owner key, until). At most `max_items` entries.
    claim_holds: HashMap<Target, (OwnerKey, Instant)>,
    stats: StoreStats,
}

fn rng32(rng: &mut FerryRng) -> [u8; 32] {
    let mut b = [0; 32];
    rng.fill_bytes(&mut b);
    b
}

fn jitter(rng: &mut FerryRng, base: Duration) -> Duration {
    // base × [0.75, 1.25)
    let ms = base.as_millis() as u64;
    Duration::from_millis(ms * 3 / 4 + rng.next_u64() % (ms / 2).max(1))
}

impl Store {
    /// An empty store for the node whose DHT key is `self_key`.
    pub fn new(self_key: PublicKey, config: StoreConfig, now: Instant, rng: &mut FerryRng) -> Self {
        Self {
            self_key,
            config,
            started: now,
            secret: rng32(rng),
            previous_secret: rng32(rng),
            rotate_at: now + TOKEN_ROTATION,
            items: HashMap::new(),
            mail: HashMap::new(),
            usage: HashMap::new(),
            rate: HashMap::new(),
            claim_holds: HashMap::new(),
            stats: StoreStats::default(),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.usage.values().map(|u| u.items).sum(),
            bytes: self.usage.values().map(|u| u.bytes).sum(),
            max_bytes: self.config.max_bytes,
            sources: self.usage.len(),
            ..self.stats
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn token_with(secret: &[u8; 32], from: SocketAddr, requester: &PublicKey, t: &Target) -> Token {
        let addr = normalize(from);
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let mut h = blake3::Hasher::new_keyed(secret);
        h.update(&ip);
        h.update(&addr.port().to_be_bytes());
        h.update(requester.as_bytes());
        h.update(&t.0);
        *h.finalize().as_bytes()
    }

    /// The write token we hand `requester` at `from` for `target`.
    pub fn token(&self, from: SocketAddr, requester: &PublicKey, target: &Target) -> Token {
        Self::token_with(&self.secret, from, requester, target)
    }

    /// Whether `token` is valid now (current or previous secret; constant-time compare).
    pub fn check_token(
        &self,
        from: SocketAddr,
        requester: &PublicKey,
        target: &Target,
        token: &Token,
    ) -> bool {
        let a = Self::token_with(&self.secret, from, requester, target);
        let b = Self::token_with(&self.previous_secret, from, requester, target);
        // Evaluate both: no early exit on which secret matched.
        let ok_a = ferry_crypto::ct_eq(&a, token);
        let ok_b = ferry_crypto::ct_eq(&b, token);
        ok_a | ok_b
    }

    /// Whether a put would be accepted on space grounds right now (not full).
    pub fn would_accept(&self) -> bool {
        let s = self.stats();
        s.items < self.config.max_items && s.bytes < self.config.max_bytes
    }

    /// Handles one decrypted store message from `requester` at `from`; returns the response to
    /// send back, if any. `closest` gives up to 8 capable nodes the host knows closest to a
    /// target (for get responses). Responses (get/put responses, hello responses) return `None`:
    /// they belong to a [`crate::lookup::Lookup`].
    pub fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        requester: &PublicKey,
        msg: &StoreMessage,
        closest: impl FnOnce(&Target) -> Vec<PackedNode>,
    ) -> Option<StoreMessage> {
        match msg {
            StoreMessage::Hello(h) if !h.is_response => Some(StoreMessage::Hello(Hello {
                is_response: true,
                request_id: h.request_id,
                accepts: self.would_accept(),
            })),
            StoreMessage::Get(g) => {
                let mut nodes = closest(&g.target);
                nodes.truncate(MAX_RESPONSE_NODES);
                Some(StoreMessage::GetResponse(
                    self.get(now, from, requester, g, nodes),
                ))
            }
            StoreMessage::Put(p) => Some(StoreMessage::PutResponse(PutResponse {
                request_id: p.request_id,
                result: self.put(now, from, requester, p),
            })),
            _ => None,
        }
    }

    /// Answers a get: token, what is stored (BEP 44 get-with-seq; mailbox paging by slot).
    pub fn get(
        &self,
        now: Instant,
        from: SocketAddr,
        requester: &PublicKey,
        req: &GetRequest,
        nodes: Vec<PackedNode>,
    ) -> GetResponse {
        GetResponse {
            request_id: req.request_id,
            token: self.token(from, requester, &req.target),
            would_accept: self.would_accept(),
            nodes,
            found: self.lookup(now, &req.target, req.seq),
        }
    }

    /// What a get for `target` with `seq` finds now.
    pub fn lookup(&self, now: Instant, target: &Target, seq: Option<u64>) -> Found {
        if let Some(h) = self.items.get(target).filter(|h| h.expires > now) {
            return match (&h.item, seq) {
                (Item::Mutable(_) | Item::Claimed(_), Some(s)) if h.item.seq() <= s => {
                    Found::SeqOnly(h.item.seq())
                }
                _ => Found::Item(h.item.clone()),
            };
        }
        if let Some(mb) = self.mail.get(target) {
            let first = seq.unwrap_or(0);
            if let Some((slot, h)) = mb.envelopes.range(first..).find(|(_, h)| h.expires > now) {
                return Found::Mail {
                    slot: *slot,
                    item: h.item.clone(),
                };
            }
        }
        Found::Nothing
    }

    fn grant_ttl(&self, now: Instant, item: &Item, requested_s: u32) -> Duration {
        let requested = Duration::from_secs(u64::from(requested_s));
        let cap = match item {
            Item::Claimed(_) => MAX_CLAIM_TTL,
            Item::Mail(_) | Item::MailDelete(_) => MAX_MAIL_TTL,
            Item::Immutable(_) | Item::Mutable(_) => {
                let uptime = now.saturating_duration_since(self.started);
                MAX_TTL.min((uptime / 4).max(MIN_TTL))
            }
        };
        requested.min(cap)
    }

    /// Applies a put from `requester` at `from`. Returns the granted lifetime in seconds.
    ///
    /// # Errors
    /// The [`PutError`] refusing it (token, item rules, BEP 44 ordering, claims, quotas).
    pub fn put(
        &mut self,
        now: Instant,
        from: SocketAddr,
        requester: &PublicKey,
        req: &PutRequest,
    ) -> Result<u32, PutError> {
        let r = self.put_inner(now, from, requester, req);
        if r.is_ok() {
            self.stats.puts_accepted += 1;
        } else {
            self.stats.puts_refused += 1;
        }
        r
    }

    fn put_inner(
        &mut self,
        now: Instant,
        from: SocketAddr,
        requester: &PublicKey,
        req: &PutRequest,
    ) -> Result<u32, PutError> {
        if !self.check_token(from, requester, &req.target, &req.token) {
            return Err(PutError::BadToken);
        }
        let source = SourceKey::of(from);
        if !self.rate_ok(now, source) {
            return Err(PutError::Quota);
        }
        self.put_trusted(now, source, req, true)
    }

    /// Counts a put from `source`; `false` when over [`StoreConfig::puts_per_minute`].
    fn rate_ok(&mut self, now: Instant, source: SourceKey) -> bool {
        if !self.rate.contains_key(&source) && self.rate.len() >= MAX_RATE_SOURCES {
            self.rate
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
            if self.rate.len() >= MAX_RATE_SOURCES
                && let Some(oldest) = self
                    .rate
                    .iter()
                    .min_by_key(|(k, w)| (w.0, **k))
                    .map(|(k, _)| *k)
            {
                self.rate.remove(&oldest);
            }
        }
        let w = self.rate.entry(source).or_insert((now, 0));
        if now.saturating_duration_since(w.0) >= RATE_WINDOW {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= self.config.puts_per_minute
    }

    /// A put whose token was checked (or that comes from ourselves / a snapshot).
    /// `check_work`: verify proof of work (skipped on restore: the work was checked on the
    /// original put, and a raised difficulty applies to new puts only).
    fn put_trusted(
        &mut self,
        now: Instant,
        source: SourceKey,
        req: &PutRequest,
        check_work: bool,
    ) -> Result<u32, PutError> {
        let item = &req.item;
        let claim_bits = if check_work {
            self.config.claim_pow_bits
        } else {
            0
        };
        item.verify_with_pow(claim_bits)?;
        if let Some(t) = item.implied_target()
            && t != req.target
        {
            return Err(PutError::WrongTarget);
        }
        // Only this target is expired here (O(1) per put); the whole store is swept in
        // handle_timeout and when a put finds the store full.
        self.expire_target(now, &req.target);
        let ttl = self.grant_ttl(now, item, req.ttl_s);
        let ttl_s = ttl.as_secs() as u32;
        let expires = now + ttl;
        match item {
            Item::MailDelete(d) => {
                let h = delete_hash(d);
                let mb = self.mail.get_mut(&req.target).ok_or(PutError::NotFound)?;
                let slot = mb
                    .envelopes
                    .iter()
                    .find(|(_, e)| matches!(&e.item, Item::Mail(m) if m.delete_hash == h))
                    .map(|(s, _)| *s)
                    .ok_or(PutError::NotFound)?;
                self.remove_mail(&req.target, slot);
                Ok(0)
            }
            Item::Mail(m) => {
                if check_work && m.pow_bits(&req.target) < self.config.mail_pow_bits {
                    return Err(PutError::Pow);
                }
                let cost = item.cost();
                if let Some(mb) = self.mail.get_mut(&req.target) {
                    // Dedup: the same envelope again refreshes its lifetime.
                    if let Some(e) = mb.envelopes.values_mut().find(
                        |e| matches!(&e.item, Item::Mail(x) if x.delete_hash == m.delete_hash),
                    ) {
                        if e.item != *item {
                            return Err(PutError::SeqTooLow);
                        }
                        e.expires = e.expires.max(expires);
                        return Ok(ttl_s);
                    }
                    if mb.envelopes.len() >= self.config.mailbox_items
                        || mb.bytes + cost > self.config.mailbox_bytes
                    {
                        return Err(PutError::Quota);
                    }
                }
                self.admit(now, source, cost)?;
                let republish_at = now + HOLDER_REPUBLISH_INTERVAL;
                let u = self.usage.entry(source).or_default();
                u.items += 1;
                u.bytes += cost;
                let mb = self.mail.entry(req.target).or_default();
                let slot = mb.next_slot;
                mb.next_slot += 1;
                mb.bytes += cost;
                mb.envelopes.insert(
                    slot,
                    Held {
                        item: item.clone(),
                        source,
                        expires,
                        cost,
                        republish_at,
                    },
                );
                Ok(ttl_s)
            }
            Item::Immutable(_) | Item::Mutable(_) | Item::Claimed(_) => {
                if let Some(old) = self.items.get_mut(&req.target) {
                    if let (Item::Claimed(a), Item::Claimed(b)) = (&old.item, item)
                        && a.pk != b.pk
                    {
                        return Err(PutError::Claimed);
                    }
                    if let Some(cas) = req.cas
                        && old.item.seq() != cas
                    {
                        return Err(PutError::CasMismatch);
                    }
                    let (old_seq, new_seq) = (old.item.seq(), item.seq());
                    if new_seq < old_seq || (new_seq == old_seq && old.item != *item) {
                        return Err(PutError::SeqTooLow);
                    }
                    if new_seq == old_seq {
                        // Same item again (anyone may re-put): refresh the lifetime.
                        old.expires = old.expires.max(expires);
                        return Ok(ttl_s);
                    }
                    // A newer version replaces the old one; charge it to the new source.
                    let old = self.remove_item(&req.target);
                    if let Err(e) = self.admit(now, source, item.cost()) {
                        if let Some(old) = old {
                            self.insert_item(req.target, old);
                        }
                        return Err(e);
                    }
                } else {
                    if let (Item::Claimed(c), Some((owner, until))) =
                        (item, self.claim_holds.get(&req.target))
                        && c.pk != *owner
                        && *until > now
                    {
                        return Err(PutError::Claimed);
                    }
                    if req.cas.is_some_and(|c| c != 0) {
                        return Err(PutError::CasMismatch);
                    }
                    self.admit(now, source, item.cost())?;
                }
                let republish_at = now + HOLDER_REPUBLISH_INTERVAL;
                self.claim_holds.remove(&req.target);
                self.insert_item(
                    req.target,
                    Held {
                        item: item.clone(),
                        source,
                        expires,
                        cost: item.cost(),
                        republish_at,
                    },
                );
                Ok(ttl_s)
            }
        }
    }

    fn insert_item(&mut self, target: Target, h: Held) {
        let u = self.usage.entry(h.source).or_default();
        u.items += 1;
        u.bytes += h.cost;
        self.items.insert(target, h);
    }

    fn unaccount(&mut self, source: SourceKey, cost: usize) {
        if let Some(u) = self.usage.get_mut(&source) {
            u.items = u.items.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(cost);
            if u.items == 0 {
                self.usage.remove(&source);
            }
        }
    }

    fn remove_item(&mut self, target: &Target) -> Option<Held> {
        let h = self.items.remove(target)?;
        self.unaccount(h.source, h.cost);
        Some(h)
    }

    fn remove_mail(&mut self, target: &Target, slot: u64) {
        let Some(mb) = self.mail.get_mut(target) else {
            return;
        };
        let Some(h) = mb.envelopes.remove(&slot) else {
            return;
        };
        mb.bytes = mb.bytes.saturating_sub(h.cost);
        if mb.envelopes.is_empty() {
            self.mail.remove(target);
        }
        self.unaccount(h.source, h.cost);
    }

    /// Checks quotas for `cost` more bytes from `source`, evicting by the fair-share rule; the
    /// caller inserts (and charges) the item.
    fn admit(&mut self, now: Instant, source: SourceKey, cost: usize) -> Result<(), PutError> {
        let mine = self.usage.get(&source).copied().unwrap_or_default();
        if mine.items + 1 > self.config.per_source_items
            || mine.bytes + cost > self.config.per_source_bytes
        {
            return Err(PutError::Quota);
        }
        let mut swept = false;
        loop {
            let s = self.stats();
            if s.items < self.config.max_items && s.bytes + cost <= self.config.max_bytes {
                return Ok(());
            }
            if !swept {
                swept = true;
                self.expire(now);
                continue;
            }
            // The largest other source, if it holds more than we will after this put.
            let mine_after = self.usage.get(&source).map_or(0, |u| u.items) + 1;
            let victim_source = self
                .usage
                .iter()
                .filter(|(k, u)| **k != source && u.items > mine_after)
                .max_by_key(|(k, u)| (u.items, u.bytes, **k))
                .map(|(k, _)| *k);
            let Some(vs) = victim_source else {
                return Err(PutError::Full);
            };
            self.evict_farthest_of(vs);
            self.stats.evicted += 1;
        }
    }

    fn evict_farthest_of(&mut self, source: SourceKey) {
        let me = self.self_key;
        let far_item = self
            .items
            .iter()
            .filter(|(_, h)| h.source == source)
            .map(|(t, _)| *t)
            .max_by(|a, b| me.distance_cmp(&a.key(), &b.key()));
        let far_mail = self
            .mail
            .iter()
            .flat_map(|(t, mb)| {
                mb.envelopes
                    .iter()
                    .filter(|(_, h)| h.source == source)
                    .map(move |(s, _)| (*t, *s))
            })
            .max_by(|a, b| me.distance_cmp(&a.0.key(), &b.0.key()).then(b.1.cmp(&a.1)));
        match (far_item, far_mail) {
            (Some(i), Some((m, slot))) => {
                if me.distance_cmp(&i.key(), &m.key()).is_ge() {
                    self.remove_item(&i);
                } else {
                    self.remove_mail(&m, slot);
                }
            }
            (Some(i), None) => {
                self.remove_item(&i);
            }
            (None, Some((m, slot))) => self.remove_mail(&m, slot),
            (None, None) => {}
        }
    }

    /// Drops what is expired at one target (item or mail envelopes), keeping claim holds.
    fn expire_target(&mut self, now: Instant, target: &Target) {
        if self.items.get(target).is_some_and(|h| h.expires <= now) {
            self.expire_item(*target);
        }
        let dead: Vec<u64> = self.mail.get(target).map_or_else(Vec::new, |mb| {
            mb.envelopes
                .iter()
                .filter(|(_, h)| h.expires <= now)
                .map(|(s, _)| *s)
                .collect()
        });
        for slot in dead {
            self.remove_mail(target, slot);
        }
    }

    fn expire_item(&mut self, t: Target) {
        if let Some(Held {
            item: Item::Claimed(c),
            expires,
            ..
        }) = self.remove_item(&t)
        {
            self.hold_claim(t, c.pk, expires + CLAIM_SEMI_EXPIRY);
        }
    }

    /// Drops everything held for `target` (its item and every mail envelope of its mailbox):
    /// an operator purge, or a simulated node that accepts stores and discards them. A claim's
    /// binding (semi-expiry) is kept. Returns the number of entries dropped.
    pub fn remove(&mut self, target: &Target) -> usize {
        let mut n = usize::from(self.remove_item(target).is_some());
        let slots: Vec<u64> = self
            .mail
            .get(target)
            .map(|mb| mb.envelopes.keys().copied().collect())
            .unwrap_or_default();
        for s in slots {
            self.remove_mail(target, s);
            n += 1;
        }
        n
    }

    /// Drops everything expired at `now`.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<Target> = self
            .items
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in dead {
            self.expire_item(t);
        }
        self.claim_holds.retain(|_, (_, until)| *until > now);
        let dead: Vec<(Target, u64)> = self
            .mail
            .iter()
            .flat_map(|(t, mb)| {
                mb.envelopes
                    .iter()
                    .filter(|(_, h)| h.expires <= now)
                    .map(move |(s, _)| (*t, *s))
            })
            .collect();
        for (t, s) in dead {
            self.remove_mail(&t, s);
        }
    }

    fn hold_claim(&mut self, target: Target, owner: OwnerKey, until: Instant) {
        if !self.claim_holds.contains_key(&target)
            && self.claim_holds.len() >= self.config.max_items
            && let Some(first) = self
                .claim_holds
                .iter()
                .min_by_key(|(k, (_, u))| (*u, **k))
                .map(|(k, _)| *k)
        {
            self.claim_holds.remove(&first);
        }
        self.claim_holds.insert(target, (owner, until));
    }

    /// Timers: rotates the token secret every [`TOKEN_ROTATION`] and expires items.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut FerryRng) {
        while now >= self.rotate_at {
            self.previous_secret = self.secret;
            self.secret = rng32(rng);
            self.rotate_at += TOKEN_ROTATION;
            if now >= self.rotate_at + TOKEN_ROTATION {
                // Long sleep: both secrets are stale anyway.
                self.previous_secret = rng32(rng);
                self.rotate_at = now + TOKEN_ROTATION;
            }
        }
        self.expire(now);
    }

    /// When [`Store::handle_timeout`] next has work: the earliest of rotation and expiry.
    pub fn poll_timeout(&self) -> Instant {
        let items = self.items.values().map(|h| h.expires);
        let mail = self
            .mail
            .values()
            .flat_map(|mb| mb.envelopes.values().map(|h| h.expires));
        items.chain(mail).fold(self.rotate_at, Instant::min)
    }

    /// Items due for a holder re-put at `now` (each is rescheduled with ±25 % jitter).
    pub fn due_republish(&mut self, now: Instant, rng: &mut FerryRng) -> Vec<Republish> {
        let mut out = Vec::new();
        // (target, 0 for an item or 1 + slot for a mail envelope, held): sorted, so the jitter
        // draws do not depend on the hash maps' iteration order (which differs between
        // processes) and a seeded run repeats exactly.
        let mut entries: Vec<(Target, u128, &mut Held)> =
            self.items.iter_mut().map(|(t, h)| (*t, 0, h)).collect();
        for mb in self.mail.iter_mut() {
            let t = *mb.0;
            entries.extend(
                mb.1.envelopes
                    .iter_mut()
                    .map(|(slot, h)| (t, u128::from(*slot) + 1, h)),
            );
        }
        entries.sort_unstable_by_key(|(t, k, _)| (*t, *k));
        for (target, _, h) in entries {
            if h.republish_at <= now && h.expires > now {
                h.republish_at = now + jitter(rng, HOLDER_REPUBLISH_INTERVAL);
                out.push(Republish {
                    target,
                    item: h.item.clone(),
                    ttl_s: h.expires.saturating_duration_since(now).as_secs() as u32,
                });
            }
        }
        out.sort_by_key(|r| r.target);
        out
    }

    /// Serializes what is held (lifetimes relative to `now`). Format (integers big-endian):
    /// `"FDS1"[uptime_s u64][count u32]` then per entry
    /// `[target 32][source 8][remaining_s u32][item (see `crate::item`)]`, then the semi-expired
    /// claims `[count u32]` × `[target 32][owner pk 32][remaining_s u32]`. Token secrets are not
    /// saved (tokens simply expire over a restart).
    pub fn snapshot(&self, now: Instant) -> Vec<u8> {
        let mut out = b"FDS1".to_vec();
        out.extend_from_slice(
            &now.saturating_duration_since(self.started)
                .as_secs()
                .to_be_bytes(),
        );
        let mut entries: Vec<(&Target, &Held)> = self.items.iter().collect();
        for (t, mb) in &self.mail {
            entries.extend(mb.envelopes.values().map(|h| (t, h)));
        }
        let live: Vec<_> = entries
            .into_iter()
            .filter(|(_, h)| h.expires > now)
            .collect();
        out.extend_from_slice(&(live.len() as u32).to_be_bytes());
        for (t, h) in live {
            out.extend_from_slice(&t.0);
            out.extend_from_slice(&h.source.0);
            let rem = h.expires.saturating_duration_since(now).as_secs();
            out.extend_from_slice(&(rem.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            h.item.encode(&mut out);
        }
        let holds: Vec<_> = self
            .claim_holds
            .iter()
            .filter(|(_, (_, u))| *u > now)
            .collect();
        out.extend_from_slice(&(holds.len() as u32).to_be_bytes());
        for (t, (pk, until)) in holds {
            out.extend_from_slice(&t.0);
            out.extend_from_slice(pk);
            let rem = until.saturating_duration_since(now).as_secs();
            out.extend_from_slice(&(rem.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        }
        out
    }

    /// Rebuilds a store from [`Store::snapshot`] bytes at `now`. Entries are re-checked (item
    /// rules and quotas, as puts); ones that no longer fit are dropped.
    ///
    /// # Errors
    /// [`WireError`] when the bytes are not a snapshot.
    pub fn restore(
        self_key: PublicKey,
        config: StoreConfig,
        bytes: &[u8],
        now: Instant,
        rng: &mut FerryRng,
    ) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let magic = r.array::<4>("snapshot magic")?;
        if &magic != b"FDS1" {
            return Err(WireError::InvalidValue {
                what: "snapshot magic",
                value: u64::from(u32::from_be_bytes(magic)),
            });
        }
        let uptime = Duration::from_secs(u64::from_be_bytes(r.array("uptime")?));
        let mut store = Self::new(self_key, config, now, rng);
        store.started = now.checked_sub(uptime).unwrap_or(now);
        let n = r.u32_be("entry count")?;
        for _ in 0..n {
            let target = Target(r.array("target")?);
            let source = SourceKey(r.array("source")?);
            let ttl_s = r.u32_be("remaining")?;
            let item = Item::decode(&mut r)?;
            let req = PutRequest {
                request_id: [0; 8],
                token: [0; 32],
                ttl_s,
                cas: None,
                target,
                item,
            };
            // Remaining lifetimes are kept as they were (caps may have changed: re-applied).
            let _ = store.put_trusted(now, source, &req, false);
        }
        let holds = r.u32_be("hold count")?;
        for _ in 0..holds {
            let target = Target(r.array("hold target")?);
            let pk = r.array("hold owner")?;
            let rem = Duration::from_secs(u64::from(r.u32_be("hold remaining")?));
            if !store.items.contains_key(&target) {
                store.hold_claim(target, pk, now + rem.min(MAX_CLAIM_TTL + CLAIM_SEMI_EXPIRY));
            }
        }
        r.finish()?;
        store.stats = StoreStats::default();
        Ok(store)
    }
}

#[cfg(test)]
mod tests;
