//! The tunnel's fast data plane between two ferry nodes (issue 7 points 6–7): a Noise IK
//! handshake over the nodes' long-term X25519 keys (`snow`), then WireGuard-style transport
//! packets straight on ferry's UDP socket, with explicit 64-bit counters as nonces and a
//! sliding replay window. Sans-IO: time is passed in, randomness comes from an injected
//! [`FerryRng`], bytes go in and out.
//!
//! Why not net_crypto lossy packets: net_crypto (XSalsa20-Poly1305, Tox wire format) must stay
//! as c-toxcore has it, and its portable XSalsa20 is the tunnel's main cost. Between two ferry
//! nodes the tunnel can use ChaCha20-Poly1305 (ring's assembly, via snow's ring resolver) at
//! about 2–3× the speed for 1400-byte packets. net_crypto lossy packets stay the fallback for
//! relayed (TCP) paths and peers without a data plane session.
//!
//! # Handshake (inside the net_crypto session, lossless packet id [`HANDSHAKE_PACKET_ID`])
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`, prologue [`PROLOGUE`]; static keys are the long-term
//! (real) keys that net_crypto authenticated, and the responder checks that the initiator's
//! static key is the key of the session the message arrived on.
//!
//! | bytes | content |
//! |---|---|
//! | 1 | [`HANDSHAKE_PACKET_ID`] (171) |
//! | 1 | 1 = initiation (96-byte Noise message), 2 = response (48 bytes) |
//! | 4 | sender's session index (big-endian): what the sender wants to see in transport headers |
//! | 48 or 96 | Noise handshake message (empty payload) |
//!
//! # Transport (a UDP datagram of its own kind, which c-toxcore ignores)
//! | bytes | content |
//! |---|---|
//! | 1 | [`TRANSPORT_KIND`] (0xd4) |
//! | 4 | receiver's session index (big-endian) |
//! | 8 | counter (big-endian), the Noise nonce; never reused, at most [`REJECT_AFTER_MESSAGES`] |
//! | n + 16 | ChaCha20-Poly1305 of the payload (an IP packet) |
//!
//! Counters are checked against a [`REPLAY_WINDOW`]-packet sliding window (RFC 6479's scheme,
//! as WireGuard does) after the tag verifies. A session is used for sending for
//! [`REKEY_AFTER`] and accepted for [`REJECT_AFTER`]; the initiator re-handshakes before that
//! ([`DataPlane::handle_timeout`]), and the previous session keeps being accepted meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use rand_core::RngCore;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Noise prologue: binds the handshake to this protocol and version.
pub const PROLOGUE: &[u8] = b"ferry dataplane v1";
/// net_crypto lossless packet id of handshake messages.
pub const HANDSHAKE_PACKET_ID: u8 = 171;
/// First byte of transport datagrams on the UDP socket.
pub const TRANSPORT_KIND: u8 = 0xd4;
/// Transport header: kind, receiver index, counter (13 bytes).
pub const HEADER_SIZE: usize = 1 + 4 + 8;
/// Poly1305 tag (16 bytes).
pub const TAG_SIZE: usize = 16;
/// Bytes a transport datagram adds to its payload (29).
pub const OVERHEAD: usize = HEADER_SIZE + TAG_SIZE;
/// Largest payload: the UDP datagram stays within ferry's 2048-byte receive slots.
pub const MAX_PAYLOAD: usize = 2048 - OVERHEAD;
/// A session sends for this long, then the initiator makes a new one (WireGuard's 120 s).
pub const REKEY_AFTER: Duration = Duration::from_secs(120);
/// A session is dropped after this long (WireGuard's 180 s).
pub const REJECT_AFTER: Duration = Duration::from_secs(180);
/// A handshake without an answer is dropped after this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Counters at or above this are refused (the nonce space never wraps).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// Width of the replay window in packets.
pub const REPLAY_WINDOW: u64 = 2048;
/// Most sessions (established and pending) kept; the oldest are evicted.
pub const MAX_SESSIONS: usize = 4096;

const INIT: u8 = 1;
const RESP: u8 = 2;
const INIT_NOISE_LEN: usize = 96;
const RESP_NOISE_LEN: usize = 48;

/// Why a data plane call failed. Remote input errors are counted and dropped by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataPlaneError {
    /// Truncated, overlong or of an unknown type.
    #[error("malformed data plane packet")]
    Malformed,
    /// No session with that index (or for that peer).
    #[error("no session")]
    NoSession,
    /// The handshake failed (wrong key, bad message) or came from another peer's key.
    #[error("handshake refused")]
    Handshake,
    /// The tag did not verify.
    #[error("decryption failed")]
    Decrypt,
    /// A replayed or too old counter.
    #[error("replayed packet")]
    Replay,
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload too large")]
    TooLarge,
}

/// snow's RNG, fed from an injected seed (no OS randomness in protocol code).
struct SeededRandom(FerryRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// ring for ChaCha20-Poly1305, snow's defaults for X25519 and BLAKE2s, and a seeded RNG.
struct Resolver {
    seed: [u8; 32],
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(FerryRng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver
            .resolve_cipher(choice)
            .or_else(|| DefaultResolver.resolve_cipher(choice))
    }
}

/// RFC 6479-style sliding window over the last [`REPLAY_WINDOW`] counters.
#[derive(Debug, Clone)]
struct ReplayWindow {
    /// Highest counter accepted + 1 (0: none yet).
    next: u64,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn new() -> Self {
        Self {
            next: 0,
            bits: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }

    /// Whether `counter` could be new (checked before decrypting).
    fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        if counter >= self.next {
            return true;
        }
        if self.next - counter > REPLAY_WINDOW - 64 {
            return false;
        }
        let (word, bit) = Self::pos(counter);
        self.bits[word] & (1 << bit) == 0
    }

    /// Marks `counter` seen (after the tag verified); false if it was replayed meanwhile.
    fn mark(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the words the window slides into: those after the newest seen counter's.
            let start = if self.next == 0 {
                0
            } else {
                (self.next - 1) / 64 + 1
            };
            let to = counter / 64;
            let words = self.bits.len() as u64;
            if to >= start && to - start >= words {
                self.bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for w in start..=to {
                    self.bits[(w % words) as usize] = 0;
                }
            }
            self.next = counter + 1;
        }
        let (word, bit) = Self::pos(counter);
        self.bits[word] |= 1 << bit;
        true
    }

    fn pos(counter: u64) -> (usize, u32) {
        let words = REPLAY_WINDOW / 64;
        (((counter / 64) % words) as usize, (counter % 64) as u32)
    }
}

/// An established session.
struct Session {
    peer: PublicKey,
    remote_index: u32,
    transport: StatelessTransportState,
    created: Instant,
    initiator: bool,
    send_counter: u64,
    window: ReplayWindow,
}

/// A handshake we started and wait to hear back on.
struct Pending {
    peer: PublicKey,
    state: HandshakeState,
    started: Instant,
}

/// Per peer: the session to send on, and the one before it (still accepted).
#[derive(Debug, Clone, Copy, Default)]
struct PeerSessions {
    current: Option<u32>,
    previous: Option<u32>,
    pending: Option<u32>,
}

/// Counters for status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataPlaneStats {
    /// Established sessions.
    pub sessions: usize,
    /// Handshakes completed (both roles).
    pub handshakes: u64,
    /// Packets refused: unknown index, bad tag, replay, malformed.
    pub dropped: u64,
}

/// The data plane of one node: sessions with its friends, keyed by our session index.
pub struct DataPlane {
    static_secret: [u8; 32],
    rng: FerryRng,
    params: NoiseParams,
    sessions: HashMap<u32, Session>,
    pending: HashMap<u32, Pending>,
    peers: HashMap<PublicKey, PeerSessions>,
    stats: DataPlaneStats,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("sessions", &self.sessions.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// A data plane for the node with long-term secret key `static_secret` (32 bytes);
    /// ephemeral keys and session indices come from `rng`.
    pub fn new(static_secret: [u8; 32], rng: FerryRng) -> Self {
        Self {
            static_secret,
            rng,
            params: NOISE_PARAMS
                .parse()
                .expect("NOISE_PARAMS is a valid Noise protocol name"),
            sessions: HashMap::new(),
            pending: HashMap::new(),
            peers: HashMap::new(),
            stats: DataPlaneStats::default(),
        }
    }

    fn builder(&mut self) -> snow::Builder<'_> {
        let seed = self.rng.bytes::<32>();
        snow::Builder::with_resolver(self.params.clone(), Box::new(Resolver { seed }))
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.next_u32();
            if !self.sessions.contains_key(&i) && !self.pending.contains_key(&i) {
                return i;
            }
        }
    }

    fn make_room(&mut self) {
        while self.sessions.len() + self.pending.len() >= MAX_SESSIONS {
            let oldest_pending = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(i, _)| *i);
            if let Some(i) = oldest_pending {
                self.pending.remove(&i);
                continue;
            }
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(i, _)| *i);
            match oldest {
                Some(i) => self.remove_session(i),
                None => return,
            }
        }
    }

    fn remove_session(&mut self, index: u32) {
        if let Some(s) = self.sessions.remove(&index)
            && let Some(p) = self.peers.get_mut(&s.peer)
        {
            if p.current == Some(index) {
                p.current = p.previous.take();
            } else if p.previous == Some(index) {
                p.previous = None;
            }
        }
    }

    /// Starts a handshake with `peer` (its long-term key): the bytes to send as a net_crypto
    /// lossless packet (id included). Replaces an earlier unanswered one.
    ///
    /// # Errors
    /// [`DataPlaneError::Handshake`] if the key is unusable.
    pub fn initiate(&mut self, now: Instant, peer: &PublicKey) -> Result<Vec<u8>, DataPlaneError> {
        self.make_room();
        let secret = self.static_secret;
        let mut state = self
            .builder()
            .local_private_key(&secret)
            .and_then(|b| b.remote_public_key(peer.as_bytes()))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|_| DataPlaneError::Handshake)?;
        let index = self.fresh_index();
        let mut out = vec![HANDSHAKE_PACKET_ID, INIT];
        out.extend_from_slice(&index.to_be_bytes());
        let mut msg = [0u8; INIT_NOISE_LEN];
        let n = state
            .write_message(&[], &mut msg)
            .map_err(|_| DataPlaneError::Handshake)?;
        out.extend_from_slice(&msg[..n]);
        let entry = self.peers.entry(*peer).or_default();
        if let Some(old) = entry.pending.replace(index) {
            self.pending.remove(&old);
        }
        self.pending.insert(
            index,
            Pending {
                peer: *peer,
                state,
                started: now,
            },
        );
        Ok(out)
    }

    /// A handshake packet (id included) from `peer`, whose net_crypto session it came on.
    /// Returns the response to send back, if any (for an initiation).
    ///
    /// # Errors
    /// [`DataPlaneError::Malformed`], [`DataPlaneError::Handshake`] (bad message, or the
    /// initiator's static key is not `peer`), [`DataPlaneError::NoSession`] (a response to no
    /// pending handshake).
    pub fn handle_handshake(
        &mut self,
        now: Instant,
        peer: &PublicKey,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, DataPlaneError> {
        if bytes.len() < 6 || bytes[0] != HANDSHAKE_PACKET_ID {
            return Err(DataPlaneError::Malformed);
        }
        let sender_index = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let noise = &bytes[6..];
        match bytes[1] {
            INIT if noise.len() == INIT_NOISE_LEN => {
                self.make_room();
                let secret = self.static_secret;
                let mut state = self
                    .builder()
                    .local_private_key(&secret)
                    .and_then(|b| b.prologue(PROLOGUE))
                    .and_then(|b| b.build_responder())
                    .map_err(|_| DataPlaneError::Handshake)?;
                let mut payload = [0u8; 64];
                state
                    .read_message(noise, &mut payload)
                    .map_err(|_| DataPlaneError::Handshake)?;
                if state.get_remote_static() != Some(peer.as_bytes().as_slice()) {
                    return Err(DataPlaneError::Handshake);
                }
                let index = self.fresh_index();
                let mut out = vec![HANDSHAKE_PACKET_ID, RESP];
                out.extend_from_slice(&index.to_be_bytes());
                let mut msg = [0u8; RESP_NOISE_LEN];
                let n = state
                    .write_message(&[], &mut msg)
                    .map_err(|_| DataPlaneError::Handshake)?;
                out.extend_from_slice(&msg[..n]);
                let transport = state
                    .into_stateless_transport_mode()
                    .map_err(|_| DataPlaneError::Handshake)?;
                self.establish(now, *peer, index, sender_index, transport, false);
                Ok(Some(out))
            }
            RESP if noise.len() == RESP_NOISE_LEN => {
                let index = self
                    .peers
                    .get(peer)
                    .and_then(|p| p.pending)
                    .ok_or(DataPlaneError::NoSession)?;
                let mut pending = self
                    .pending
                    .remove(&index)
                    .ok_or(DataPlaneError::NoSession)?;
                if pending.peer != *peer {
                    return Err(DataPlaneError::Handshake);
                }
                let mut payload = [0u8; 64];
                let ok = pending.state.read_message(noise, &mut payload).is_ok();
                if !ok {
                    // Keep waiting: this may have been a forgery.
                    self.pending.insert(index, pending);
                    return Err(DataPlaneError::Handshake);
                }
                if let Some(p) = self.peers.get_mut(peer) {
                    p.pending = None;
                }
                let transport = pending
                    .state
                    .into_stateless_transport_mode()
                    .map_err(|_| DataPlaneError::Handshake)?;
                self.establish(now, *peer, index, sender_index, transport, true);
                Ok(None)
            }
            _ => Err(DataPlaneError::Malformed),
        }
    }

    fn establish(
        &mut self,
        now: Instant,
        peer: PublicKey,
        index: u32,
        remote_index: u32,
        transport: StatelessTransportState,
        initiator: bool,
    ) {
        self.sessions.insert(
            index,
            Session {
                peer,
                remote_index,
                transport,
                created: now,
                initiator,
                send_counter: 0,
                window: ReplayWindow::new(),
            },
        );
        self.stats.handshakes += 1;
        let p = self.peers.entry(peer).or_default();
        let old_previous = p.previous;
        p.previous = p.current.replace(index);
        if let Some(old) = old_previous
            && Some(old) != p.previous
        {
            self.sessions.remove(&old);
        }
    }

    /// Whether `peer` has a session to send on.
    pub fn has_session(&self, peer: &PublicKey) -> bool {
        self.peers.get(peer).and_then(|p| p.current).is_some()
    }

    /// Encrypts `payload` for `peer` into `out` (cleared first; no allocation once `out` has
    /// room for `payload.len() + OVERHEAD` bytes): a whole transport datagram.
    ///
    /// # Errors
    /// [`DataPlaneError::NoSession`] (none, or its counter is used up),
    /// [`DataPlaneError::TooLarge`].
    pub fn seal(
        &mut self,
        peer: &PublicKey,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DataPlaneError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DataPlaneError::TooLarge);
        }
        let index = self
            .peers
            .get(peer)
            .and_then(|p| p.current)
            .ok_or(DataPlaneError::NoSession)?;
        let s = self
            .sessions
            .get_mut(&index)
            .ok_or(DataPlaneError::NoSession)?;
        if s.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(DataPlaneError::NoSession);
        }
        let counter = s.send_counter;
        s.send_counter += 1;
        out.clear();
        out.push(TRANSPORT_KIND);
        out.extend_from_slice(&s.remote_index.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.resize(HEADER_SIZE + payload.len() + TAG_SIZE, 0);
        let n = s
            .transport
            .write_message(counter, payload, &mut out[HEADER_SIZE..])
            .map_err(|_| DataPlaneError::TooLarge)?;
        out.truncate(HEADER_SIZE + n);
        Ok(())
    }

    /// Decrypts a transport datagram into `out` (cleared first) and returns the peer it came
    /// from (authenticated by the session key).
    ///
    /// # Errors
    /// [`DataPlaneError::Malformed`], [`DataPlaneError::NoSession`],
    /// [`DataPlaneError::Decrypt`], [`DataPlaneError::Replay`]; each counted in
    /// [`DataPlaneStats::dropped`].
    pub fn open(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<PublicKey, DataPlaneError> {
        let r = self.open_inner(now, datagram, out);
        if r.is_err() {
            self.stats.dropped += 1;
        }
        r
    }

    fn open_inner(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<PublicKey, DataPlaneError> {
        if datagram.len() < OVERHEAD || datagram[0] != TRANSPORT_KIND {
            return Err(DataPlaneError::Malformed);
        }
        let index = u32::from_be_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&datagram[5..HEADER_SIZE]);
        let counter = u64::from_be_bytes(c);
        let s = self
            .sessions
            .get_mut(&index)
            .ok_or(DataPlaneError::NoSession)?;
        if now.saturating_duration_since(s.created) >= REJECT_AFTER {
            return Err(DataPlaneError::NoSession);
        }
        if !s.window.check(counter) {
            return Err(DataPlaneError::Replay);
        }
        let ct = &datagram[HEADER_SIZE..];
        out.clear();
        out.resize(ct.len() - TAG_SIZE, 0);
        let n = s
            .transport
            .read_message(counter, ct, out)
            .map_err(|_| DataPlaneError::Decrypt)?;
        out.truncate(n);
        if !s.window.mark(counter) {
            return Err(DataPlaneError::Replay);
        }
        Ok(s.peer)
    }

    /// Timers at `now`: drops sessions older than [`REJECT_AFTER`] and handshakes older than
    /// [`HANDSHAKE_TIMEOUT`]; returns the peers to re-handshake with (sessions we initiated that
    /// are older than [`REKEY_AFTER`]), for the caller to [`DataPlane::initiate`].
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<PublicKey> {
        let dead: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.created) >= REJECT_AFTER)
            .map(|(i, _)| *i)
            .collect();
        for i in dead {
            self.remove_session(i);
        }
        let stale: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= HANDSHAKE_TIMEOUT)
            .map(|(i, _)| *i)
            .collect();
        for i in stale {
            if let Some(p) = self.pending.remove(&i)
                && let Some(ps) = self.peers.get_mut(&p.peer)
            {
                ps.pending = None;
            }
        }
        let mut rekey = Vec::new();
        for (peer, ps) in &self.peers {
            if ps.pending.is_some() {
                continue;
            }
            if let Some(s) = ps.current.and_then(|i| self.sessions.get(&i))
                && s.initiator
                && now.saturating_duration_since(s.created) >= REKEY_AFTER
            {
                rekey.push(*peer);
            }
        }
        self.peers
            .retain(|_, p| p.current.is_some() || p.previous.is_some() || p.pending.is_some());
        rekey
    }

    /// Forgets every session with `peer` (it went offline or was removed).
    pub fn remove_peer(&mut self, peer: &PublicKey) {
        if let Some(p) = self.peers.remove(peer) {
            for i in [p.current, p.previous].into_iter().flatten() {
                self.sessions.remove(&i);
            }
            if let Some(i) = p.pending {
                self.pending.remove(&i);
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> DataPlaneStats {
        DataPlaneStats {
            sessions: self.sessions.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crypto::KeyPair;
    use proptest::prelude::*;

    fn node(seed: u64) -> (DataPlane, PublicKey) {
        let mut rng = FerryRng::from_u64(seed);
        let kp = KeyPair::generate(&mut rng);
        (DataPlane::new(kp.secret.to_bytes(), rng.fork()), kp.public)
    }

    fn pair() -> (DataPlane, PublicKey, DataPlane, PublicKey, Instant) {
        #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
        let now = Instant::now();
        let (mut a, a_pk) = node(1);
        let (mut b, b_pk) = node(2);
        let init = a.initiate(now, &b_pk).expect("initiate");
        let resp = b
            .handle_handshake(now, &a_pk, &init)
            .expect("responder")
            .expect("a response");
        assert_eq!(
            a.handle_handshake(now, &b_pk, &resp).expect("initiator"),
            None
        );
        (a, a_pk, b, b_pk, now)
    }

    #[test]
    fn handshake_then_both_ways() {
        let (mut a, a_pk, mut b, b_pk, now) = pair();
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        for i in 0..100u32 {
            let msg = vec![i as u8; 1 + i as usize * 13];
            a.seal(&b_pk, &msg, &mut wire).expect("seal");
            assert_eq!(wire.len(), msg.len() + OVERHEAD);
            assert_eq!(b.open(now, &wire, &mut plain).expect("open"), a_pk);
            assert_eq!(plain, msg);
            b.seal(&a_pk, &msg, &mut wire).expect("seal back");
            assert_eq!(a.open(now, &wire, &mut plain).expect("open back"), b_pk);
            assert_eq!(plain, msg);
        }
        assert_eq!(a.stats().handshakes, 1);
    }

    #[test]
    fn replays_tampering_and_reordering() {
        let (mut a, _, mut b, b_pk, now) = pair();
        let (mut plain, mut packets) = (Vec::new(), Vec::new());
        for i in 0..3000u32 {
            let mut w = Vec::new();
            a.seal(&b_pk, &i.to_be_bytes(), &mut w).expect("seal");
            packets.push(w);
        }
        // In order: fine; again: replay.
        assert!(b.open(now, &packets[0], &mut plain).is_ok());
        assert_eq!(
            b.open(now, &packets[0], &mut plain),
            Err(DataPlaneError::Replay)
        );
        // Reordered within the window: fine, once.
        assert!(b.open(now, &packets[2000], &mut plain).is_ok());
        assert!(b.open(now, &packets[1000], &mut plain).is_ok());
        assert_eq!(
            b.open(now, &packets[1000], &mut plain),
            Err(DataPlaneError::Replay)
        );
        // Beyond the window behind the newest: refused.
        assert!(b.open(now, &packets[2999], &mut plain).is_ok());
        assert_eq!(
            b.open(now, &packets[10], &mut plain),
            Err(DataPlaneError::Replay)
        );
        // Tampered: the tag fails, and the counter is not burnt.
        let mut bad = packets[2998].clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(b.open(now, &bad, &mut plain), Err(DataPlaneError::Decrypt));
        assert!(b.open(now, &packets[2998], &mut plain).is_ok());
        // Unknown index, short packet.
        let mut other = packets[5].clone();
        other[1] ^= 0xff;
        assert_eq!(
            b.open(now, &other, &mut plain),
            Err(DataPlaneError::NoSession)
        );
        assert_eq!(
            b.open(now, &packets[5][..20], &mut plain),
            Err(DataPlaneError::Malformed)
        );
        assert!(b.stats().dropped >= 6);
    }

    #[test]
    fn initiation_from_another_key_is_refused() {
        #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
        let now = Instant::now();
        let (mut a, _) = node(1);
        let (mut b, b_pk) = node(2);
        let (_, c_pk) = node(3);
        let init = a.initiate(now, &b_pk).expect("initiate");
        // It arrives on C's session: refused (A's static key is not C's).
        assert_eq!(
            b.handle_handshake(now, &c_pk, &init),
            Err(DataPlaneError::Handshake)
        );
        // A handshake meant for someone else cannot be read.
        let (mut d, _) = node(4);
        let (_, a_pk) = node(1);
        assert_eq!(
            d.handle_handshake(now, &a_pk, &init),
            Err(DataPlaneError::Handshake)
        );
    }

    #[test]
    fn rekey_keeps_the_previous_session_and_expires_old_ones() {
        let (mut a, a_pk, mut b, b_pk, now) = pair();
        let mut old = Vec::new();
        a.seal(&b_pk, b"before", &mut old).expect("seal");
        let later = now + REKEY_AFTER;
        assert_eq!(a.handle_timeout(later), vec![b_pk]);
        let init = a.initiate(later, &b_pk).expect("rekey");
        let resp = b
            .handle_handshake(later, &a_pk, &init)
            .expect("resp")
            .expect("some");
        a.handle_handshake(later, &b_pk, &resp).expect("done");
        let (mut new, mut plain) = (Vec::new(), Vec::new());
        a.seal(&b_pk, b"after", &mut new).expect("seal");
        assert!(b.open(later, &new, &mut plain).is_ok());
        assert!(
            b.open(later, &old, &mut plain).is_ok(),
            "previous still accepted"
        );
        // After REJECT_AFTER the first session is gone.
        let end = now + REJECT_AFTER;
        b.handle_timeout(end);
        let mut old2 = Vec::new();
        assert_eq!(b.open(end, &old, &mut old2), Err(DataPlaneError::NoSession));
        assert_eq!(b.stats().sessions, 1);
    }

    #[test]
    fn window_slides_over_large_jumps() {
        let mut w = ReplayWindow::new();
        assert!(w.mark(0));
        assert!(w.mark(5000));
        assert!(!w.mark(5000));
        assert!(!w.check(0));
        assert!(w.mark(4999));
        assert!(w.mark(1 << 40));
        assert!(w.mark((1 << 40) - 100));
        assert!(!w.check(REJECT_AFTER_MESSAGES));
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, _, mut b, _, now) = pair();
            let mut out = Vec::new();
            let _ = b.open(now, &bytes, &mut out);
            let _ = b.handle_handshake(now, &PublicKey([1; 32]), &bytes);
        }

        #[test]
        fn window_accepts_each_counter_once(counters in proptest::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::new();
            let mut seen = std::collections::HashSet::new();
            let mut max = 0u64;
            for c in counters {
                let fresh = !seen.contains(&c);
                let in_window = c + (REPLAY_WINDOW - 64) > max;
                let accepted = w.mark(c);
                if accepted {
                    prop_assert!(fresh, "counter {} accepted twice", c);
                    seen.insert(c);
                    max = max.max(c);
                } else {
                    prop_assert!(!fresh || !in_window, "fresh counter {} in window refused", c);
                }
            }
        }
    }
}
