//! Multi-hop circuits for the IP tunnel (issue 7 item 4, `ferry tunnel up --via`): sans-IO.
//!
//! A client picks relays R1..Rn (0 ≤ n ≤ [`MAX_RELAYS`]) and a far end E (the destination mesh
//! peer, later an exit). Every link between neighbours is a net_crypto session (authenticated to
//! both long-term keys, `tox-protocol.md` §net_crypto); circuit cells ride on it as custom
//! packets. Like Tor, each relay keeps `(prev, circ_in) ↔ (next, circ_out)` where every link has
//! its own random 31-bit circuit id, so ids do not link the hops of one circuit.
//!
//! # Who knows what
//! - **Relay Ri** learns the long-term keys of its neighbours (it has net_crypto sessions with
//!   them anyway) and the two circuit ids. It never holds a key that opens data cells, and it
//!   never sees the client's or E's key unless that node is its neighbour: the next hop's key is
//!   inside Ri's own onion layer, every other key is under layers only later hops can open.
//!   The client pads E's layer with random bytes so that every CREATE leaving the client is
//!   [`CREATE_SIZE`] bytes whatever the path length and mode: a relay cannot tell how many hops
//!   follow it (nor whether its next hop is E). The onion still shrinks by
//!   [`RELAY_LAYER_OVERHEAD`] bytes per hop, so a relay can tell how many hops precede it
//!   (Sphinx-style re-padding by relays would hide that too; not done).
//! - **E** learns the end-to-end key and the previous hop. In *identified* mode (what the mesh
//!   peer case needs, since E must check that the inner IPv6 source address belongs to the
//!   sender) the E layer also carries the client's long-term key and a box from the client's
//!   long-term key to E's binding it to the e2e key; in anonymous mode (exits) E learns nothing
//!   about the client.
//! - **The client** knows everything about its circuit.
//!
//! # Crypto
//! Setup: for each hop the client generates an ephemeral X25519 key pair ([`KeyPair::generate`]
//! from the injected [`FerryRng`]) and seals that hop's layer with `crypto_box` to the hop's
//! long-term key ([`PrecomputedKey`], X25519 + XSalsa20-Poly1305). Data: one
//! `crypto_secretbox` ([`SymmetricKey`], XSalsa20-Poly1305) under the end-to-end key the client
//! chose and sent inside E's layer. Relays only rewrite the 4-byte circuit id of data cells: no
//! public-key operation and no decryption per packet, the forwarding style `tunnel.md` measured
//! at ~12 % per hop against ~50 % for decrypt-and-re-encrypt hubs. Nonces: byte 0 = direction
//! (0 forward, 1 backward), bytes 16..24 = the cell's 64-bit counter (big-endian), rest zero;
//! each key is fresh per circuit, so (direction, counter) never repeats. A 64-packet sliding
//! window refuses replays. No forward secrecy against a later compromise of E's long-term key
//! (as the Tox onion).
//!
//! # Wire format
//! Control cells are net_crypto **lossless** custom packets with id [`CIRCUIT_CONTROL_ID`]
//! (180, in `CUSTOM_LOSSLESS` 160..=191); data cells are **lossy** custom packets with id
//! [`CIRCUIT_DATA_ID`] (230, in `CUSTOM_LOSSY` 200..=254; 222 is the one-hop tunnel frame).
//! `circ` is a big-endian u32 whose top bit is the direction ([`BACKWARD_BIT`]: set = towards the
//! client) and whose low 31 bits are the circuit id the sender of the CREATE on that link chose.
//!
//! Control: `[180][type (1)][circ (4)][body]`
//!
//! | type | name | direction | body |
//! |---|---|---|---|
//! | 1 | CREATE | forward | onion layer (below) |
//! | 2 | CREATED | backward | counter 0 (8, BE) ‖ secretbox(e2e, nonce(backward, 0), empty) = MAC (16) |
//! | 3 | DESTROY | either | reason (1, [`DestroyReason`]) |
//!
//! Onion layer: `[ephemeral public key (32)][nonce (24)][crypto_box(layer plaintext) = MAC (16) ‖ ct]`.
//! Layer plaintext of a relay: `[1][next hop long-term key (32)][next layer]`
//! ([`RELAY_LAYER_OVERHEAD`] = 105 bytes per relay). Of E:
//! `[2][flags (1)][e2e key (32)]` and, when `flags & 1` (identified),
//! `[client long-term key (32)][nonce (24)][crypto_box(client → E, e2e key) (48)]`, then random
//! padding (ignored by E) up to `138 + (8 − relays) × 105` bytes, so every CREATE leaves the
//! client at [`CREATE_SIZE`] = 1056 bytes.
//!
//! Data: `[230][circ (4)][counter (8, BE)][secretbox(e2e, nonce(dir, counter), IP packet) =
//! MAC (16) ‖ ct]`: [`DATA_OVERHEAD`] = 29 bytes, so [`CIRCUIT_MTU`] = 1373 − 29 = 1344. An empty
//! plaintext is a keepalive; E echoes it, which gives the client its RTT.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{
    KEY_SIZE, KeyPair, MAC_SIZE, NONCE_SIZE, Nonce, PrecomputedKey, PublicKey, SymmetricKey, ct_eq,
};
use ferry_wire::WireError;
use ferry_wire::net_crypto::MAX_CRYPTO_DATA_SIZE;

/// net_crypto lossless custom packet id of circuit control cells (CREATE/CREATED/DESTROY): 180.
pub const CIRCUIT_CONTROL_ID: u8 = 180;
/// net_crypto lossy custom packet id of circuit data cells: 230.
pub const CIRCUIT_DATA_ID: u8 = 230;
/// Top bit of the circuit field: set on cells travelling towards the client.
pub const BACKWARD_BIT: u32 = 0x8000_0000;
/// Most relays in one circuit (E not counted): 8.
pub const MAX_RELAYS: usize = 8;
/// Bytes a data cell adds to the IP packet: id (1) + circ (4) + counter (8) + MAC (16) = 29.
pub const DATA_OVERHEAD: usize = 1 + 4 + 8 + MAC_SIZE;
/// Largest IP packet a circuit carries: 1373 − 29 = 1344 bytes (≥ 1280, the IPv6 minimum MTU).
pub const CIRCUIT_MTU: usize = MAX_CRYPTO_DATA_SIZE - DATA_OVERHEAD;
/// Control header: id (1) + type (1) + circ (4).
pub const CONTROL_HEADER: usize = 6;
/// Sealing overhead of one onion layer: ephemeral key (32) + nonce (24) + MAC (16) = 72 bytes.
pub const LAYER_OVERHEAD: usize = KEY_SIZE + NONCE_SIZE + MAC_SIZE;
/// What each relay adds to the onion: 72 + kind (1) + next key (32) = 105 bytes.
pub const RELAY_LAYER_OVERHEAD: usize = LAYER_OVERHEAD + 1 + KEY_SIZE;
/// E's layer plaintext, anonymous: kind (1) + flags (1) + e2e key (32) = 34 bytes.
pub const END_PLAIN_ANON: usize = 2 + KEY_SIZE;
/// E's layer plaintext, identified: 34 + client key (32) + nonce (24) + box of the key (48) = 138.
pub const END_PLAIN_IDENT: usize = END_PLAIN_ANON + KEY_SIZE + NONCE_SIZE + KEY_SIZE + MAC_SIZE;
/// Size of every CREATE the client sends, bytes: header (6) + 8 relay layers (840) + E's
/// layer padded to the identified size (72 + 138) = 1056.
pub const CREATE_SIZE: usize =
    CONTROL_HEADER + MAX_RELAYS * RELAY_LAYER_OVERHEAD + LAYER_OVERHEAD + END_PLAIN_IDENT;

/// Body of a CREATED cell: counter (8) + MAC (16).
pub const CREATED_BODY: usize = 8 + MAC_SIZE;

const TYPE_CREATE: u8 = 1;
const TYPE_CREATED: u8 = 2;
const TYPE_DESTROY: u8 = 3;
const KIND_RELAY: u8 = 1;
const KIND_END: u8 = 2;
const FLAG_IDENTIFIED: u8 = 1;
const REPLAY_WINDOW: u64 = 64;

/// Which way a cell travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// From the client towards E.
    Forward,
    /// From E towards the client.
    Backward,
}

impl Dir {
    fn bit(self) -> u32 {
        match self {
            Self::Forward => 0,
            Self::Backward => BACKWARD_BIT,
        }
    }
    fn byte(self) -> u8 {
        match self {
            Self::Forward => 0,
            Self::Backward => 1,
        }
    }
}

/// Why a circuit was torn down (the DESTROY reason byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DestroyReason {
    /// 0: an end asked for it (`tunnel down`).
    #[error("requested")]
    Requested,
    /// 1: a relay could not reach its next hop (not a friend, offline, congested).
    #[error("next hop unreachable")]
    Unreachable,
    /// 2: a circuit table was full.
    #[error("circuit table full")]
    Full,
    /// 3: setup or idle timeout.
    #[error("timeout")]
    Timeout,
    /// 4: a layer did not decrypt or parse, or a cell broke the protocol.
    #[error("protocol error")]
    Protocol,
    /// 5: the hop does not relay (`ferry up` without `--relay-node`).
    #[error("not a relay node")]
    NotRelay,
    /// 6: the far end does not accept circuits (tunnel down).
    #[error("far end does not accept circuits")]
    NotAccepting,
    /// 7: a neighbour's net_crypto session went away.
    #[error("neighbour offline")]
    PeerGone,
    /// Any other byte.
    #[error("unknown reason")]
    Unknown,
}

impl DestroyReason {
    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Requested => 0,
            Self::Unreachable => 1,
            Self::Full => 2,
            Self::Timeout => 3,
            Self::Protocol => 4,
            Self::NotRelay => 5,
            Self::NotAccepting => 6,
            Self::PeerGone => 7,
            Self::Unknown => 255,
        }
    }
    /// From the wire byte (unknown values map to [`DestroyReason::Unknown`]).
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Requested,
            1 => Self::Unreachable,
            2 => Self::Full,
            3 => Self::Timeout,
            4 => Self::Protocol,
            5 => Self::NotRelay,
            6 => Self::NotAccepting,
            7 => Self::PeerGone,
            _ => Self::Unknown,
        }
    }
}

/// A decoded cell (borrowing the packet bytes). Layouts in the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellRef<'a> {
    /// CREATE (forward): `onion` is this hop's layer.
    Create {
        /// Circuit id on this link (31 bits).
        id: u32,
        /// The onion layer, ≥ 72 + 34 bytes.
        onion: &'a [u8],
    },
    /// CREATED (backward): E's proof that it opened its layer.
    Created {
        /// Circuit id on this link.
        id: u32,
        /// `counter (8) ‖ MAC (16)`.
        body: &'a [u8; CREATED_BODY],
    },
    /// DESTROY, either direction.
    Destroy {
        /// Circuit id on this link.
        id: u32,
        /// Direction of travel.
        dir: Dir,
        /// Why.
        reason: DestroyReason,
    },
    /// A data cell.
    Data {
        /// Circuit id on this link.
        id: u32,
        /// Direction of travel.
        dir: Dir,
        /// Nonce counter.
        counter: u64,
        /// `MAC ‖ ciphertext`, ≥ 16 bytes.
        sealed: &'a [u8],
    },
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn split_circ(c: u32) -> (u32, Dir) {
    let dir = if c & BACKWARD_BIT != 0 {
        Dir::Backward
    } else {
        Dir::Forward
    };
    (c & !BACKWARD_BIT, dir)
}

impl<'a> CellRef<'a> {
    /// Decodes a custom packet (id byte first). Never panics; exact lengths.
    ///
    /// # Errors
    /// [`WireError`] for a foreign id, truncation, wrong lengths or directions, unknown types.
    pub fn decode(data: &'a [u8]) -> Result<Self, WireError> {
        let (&id, rest) = data.split_first().ok_or(WireError::Truncated("cell id"))?;
        match id {
            CIRCUIT_DATA_ID => {
                if rest.len() < 4 + 8 + MAC_SIZE {
                    return Err(WireError::Truncated("circuit data cell"));
                }
                let (id, dir) = split_circ(be_u32(&rest[..4]));
                Ok(Self::Data {
                    id,
                    dir,
                    counter: be_u64(&rest[4..12]),
                    sealed: &rest[12..],
                })
            }
            CIRCUIT_CONTROL_ID => {
                if rest.len() < 5 {
                    return Err(WireError::Truncated("circuit control cell"));
                }
                let ty = rest[0];
                let (id, dir) = split_circ(be_u32(&rest[1..5]));
                let body = &rest[5..];
                match (ty, dir) {
                    (TYPE_CREATE, Dir::Forward) => {
                        if body.len() < LAYER_OVERHEAD + END_PLAIN_ANON {
                            return Err(WireError::BadLength {
                                what: "CREATE",
                                len: body.len(),
                            });
                        }
                        Ok(Self::Create { id, onion: body })
                    }
                    (TYPE_CREATED, Dir::Backward) => {
                        let body: &[u8; CREATED_BODY] =
                            body.try_into().map_err(|_| WireError::BadLength {
                                what: "CREATED",
                                len: body.len(),
                            })?;
                        Ok(Self::Created { id, body })
                    }
                    (TYPE_DESTROY, _) => match body {
                        [r] => Ok(Self::Destroy {
                            id,
                            dir,
                            reason: DestroyReason::from_byte(*r),
                        }),
                        _ => Err(WireError::BadLength {
                            what: "DESTROY",
                            len: body.len(),
                        }),
                    },
                    _ => Err(WireError::InvalidValue {
                        what: "circuit cell type/direction",
                        value: u64::from(ty),
                    }),
                }
            }
            other => Err(WireError::InvalidValue {
                what: "circuit packet id",
                value: u64::from(other),
            }),
        }
    }
}

fn control(ty: u8, id: u32, dir: Dir, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTROL_HEADER + body.len());
    v.push(CIRCUIT_CONTROL_ID);
    v.push(ty);
    v.extend_from_slice(&(id | dir.bit()).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Rewrites the circuit field of a data or control cell in place (a relay's whole per-packet
/// work). Returns `false` when `cell` is too short.
pub fn rewrite_circ(cell: &mut [u8], id: u32, dir: Dir) -> bool {
    let at = match cell.first() {
        Some(&CIRCUIT_DATA_ID) => 1,
        Some(&CIRCUIT_CONTROL_ID) => 2,
        _ => return false,
    };
    match cell.get_mut(at..at + 4) {
        Some(s) => {
            s.copy_from_slice(&(id | dir.bit()).to_be_bytes());
            true
        }
        None => false,
    }
}

fn data_nonce(dir: Dir, counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_SIZE];
    n[0] = dir.byte();
    n[16..].copy_from_slice(&counter.to_be_bytes());
    Nonce(n)
}

/// A cell to send to a neighbour as a net_crypto custom packet (`data[0]` is
/// [`CIRCUIT_CONTROL_ID`] → lossless, or [`CIRCUIT_DATA_ID`] → lossy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// The neighbour's long-term key.
    pub to: PublicKey,
    /// The packet, id byte first.
    pub data: Vec<u8>,
}

/// What the owner of [`Circuits`] hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CircuitEvent {
    /// Our (client) circuit got its CREATED from E.
    Open {
        /// Local handle.
        handle: u64,
    },
    /// A circuit ends at us (we are E).
    Incoming {
        /// Local handle.
        handle: u64,
        /// The client's long-term key, in identified mode only (checked proof).
        client: Option<PublicKey>,
    },
    /// An IP packet arrived on a circuit we end (client or E).
    Data {
        /// Local handle.
        handle: u64,
        /// The decrypted IP packet.
        packet: Vec<u8>,
    },
    /// A circuit we end (client or E) was torn down.
    Closed {
        /// Local handle.
        handle: u64,
        /// Why.
        reason: DestroyReason,
    },
}

/// Why [`Circuits::create`] or [`Circuits::send`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError {
    /// More than [`MAX_RELAYS`] relays, a repeated hop, or ourselves in the path.
    #[error("bad path")]
    BadPath,
    /// A table cap was reached.
    #[error("circuit table full")]
    Full,
    /// No such circuit, or not one we end.
    #[error("no such circuit")]
    NoCircuit,
    /// The circuit is not open yet.
    #[error("circuit not open")]
    NotOpen,
    /// Packet larger than [`CIRCUIT_MTU`].
    #[error("packet too large")]
    TooLarge,
    /// Encryption failed (never for valid sizes).
    #[error("crypto failure")]
    Crypto,
}

/// Tunables; sizes are counts, times durations.
#[derive(Clone, Debug)]
pub struct CircuitConfig {
    /// Whether we forward for others (`ferry up --relay-node`).
    pub relay: bool,
    /// Whether circuits may end at us (tunnel up).
    pub accept_end: bool,
    /// Most circuits in the table, all roles: 4096.
    pub max_total: usize,
    /// Most circuits whose previous hop is one peer: 256.
    pub max_per_peer: usize,
    /// Most circuits we originate: 16.
    pub max_client: usize,
    /// CREATE without CREATED for this long → DESTROY(Timeout): 10 s.
    pub setup_timeout: Duration,
    /// No cell either way for this long → DESTROY(Timeout): 120 s.
    pub idle_timeout: Duration,
    /// Client keepalive period (E echoes; RTT sample): 15 s.
    pub keepalive_interval: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            relay: false,
            accept_end: false,
            max_total: 4096,
            max_per_peer: 256,
            max_client: 16,
            setup_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(15),
        }
    }
}

/// Byte and packet counters of one circuit (IP bytes at the ends, cell bytes at relays).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CircuitCounters {
    /// Sent (client/E) or forwarded forward (relay).
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Received (client/E) or forwarded backward (relay).
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
}

/// Our role in a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We built it.
    Client,
    /// We forward it.
    Relay,
    /// It ends here.
    End,
}

/// A circuit's state as `tunnel status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// CREATE sent/forwarded, no CREATED yet.
    Pending,
    /// Data flows.
    Open,
}

/// One circuit as the status API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitInfo {
    /// Local handle.
    pub handle: u64,
    /// Our role.
    pub role: Role,
    /// State.
    pub state: CircuitState,
    /// Client: relays then E. Relay: `[prev, next]`. E: `[prev]`.
    pub hops: Vec<PublicKey>,
    /// Client: E's key; E: the client's key when identified.
    pub far_end: Option<PublicKey>,
    /// Counters.
    pub counters: CircuitCounters,
    /// Client: last RTT sample (setup or keepalive), ms.
    pub rtt_ms: Option<f64>,
}

/// Sliding replay window over 64-bit counters.
#[derive(Clone, Copy, Debug, Default)]
struct Replay {
    top: u64,
    bits: u64,
    any: bool,
}

impl Replay {
    /// Whether `c` is new; records it.
    fn check(&mut self, c: u64) -> bool {
        if !self.any {
            self.any = true;
            self.top = c;
            self.bits = 1;
            return true;
        }
        if c > self.top {
            let shift = c - self.top;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = c;
            true
        } else {
            let back = self.top - c;
            if back >= REPLAY_WINDOW || self.bits & (1 << back) != 0 {
                return false;
            }
            self.bits |= 1 << back;
            true
        }
    }
}

struct EndKey {
    key: SymmetricKey,
    tx_counter: u64,
    replay: Replay,
}

impl EndKey {
    fn seal(&mut self, dir: Dir, id: u32, packet: &[u8]) -> Result<Vec<u8>, CircuitError> {
        self.tx_counter += 1;
        let c = self.tx_counter;
        let sealed = self
            .key
            .encrypt(&data_nonce(dir, c), packet)
            .map_err(|_| CircuitError::Crypto)?;
        let mut v = Vec::with_capacity(DATA_OVERHEAD + packet.len());
        v.push(CIRCUIT_DATA_ID);
        v.extend_from_slice(&(id | dir.bit()).to_be_bytes());
        v.extend_from_slice(&c.to_be_bytes());
        v.extend_from_slice(&sealed);
        Ok(v)
    }
    fn open(&mut self, dir: Dir, counter: u64, sealed: &[u8]) -> Option<Vec<u8>> {
        let pt = self.key.decrypt(&data_nonce(dir, counter), sealed).ok()?;
        self.replay.check(counter).then_some(pt)
    }
}

enum Kind {
    Client {
        hops: Vec<PublicKey>,
        next: PublicKey,
        id_out: u32,
        end: EndKey,
        created_at: Instant,
        keepalive_sent: Option<Instant>,
        last_keepalive: Instant,
        rtt: Option<Duration>,
    },
    Relay {
        prev: PublicKey,
        id_in: u32,
        next: PublicKey,
        id_out: u32,
    },
    End {
        prev: PublicKey,
        id_in: u32,
        end: EndKey,
        client: Option<PublicKey>,
    },
}

struct Circuit {
    kind: Kind,
    open: bool,
    created: Instant,
    last: Instant,
    counters: CircuitCounters,
}

impl Circuit {
    fn prev(&self) -> Option<PublicKey> {
        match &self.kind {
            Kind::Relay { prev, .. } | Kind::End { prev, .. } => Some(*prev),
            Kind::Client { .. } => None,
        }
    }
}

/// Where a received data cell goes ([`Circuits::data_cell_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRoute {
    /// [`Dir::Forward`]: it came from the circuit's previous hop; [`Dir::Backward`]: from its
    /// next hop.
    pub dir: Dir,
    /// The hop it is relayed to when it travels forward through a circuit we relay (`None`
    /// when the circuit ends here, or it travels backward).
    pub next: Option<PublicKey>,
    /// The circuit's handle in this table.
    pub handle: u64,
}

/// Counters of cells the table refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CircuitDrops {
    /// Undecodable cells.
    pub malformed: u64,
    /// Cells for a circuit we do not know.
    pub unknown: u64,
    /// Data cells that failed authentication or were replays.
    pub auth: u64,
    /// CREATEs refused (any reason).
    pub refused: u64,
}

/// The circuit table of one node, in all three roles (client, relay, end). Sans-IO: feed cells
/// with [`Circuits::handle_cell`], drain [`Circuits::poll_transmit`] and
/// [`Circuits::poll_event`], call [`Circuits::handle_timeout`] at [`Circuits::poll_timeout`].
/// Caps: [`CircuitConfig::max_total`] circuits, [`CircuitConfig::max_per_peer`] per previous
/// hop, [`CircuitConfig::max_client`] of ours; when full, new CREATEs get DESTROY(Full) (nothing
/// is evicted; idle circuits leave after [`CircuitConfig::idle_timeout`]).
pub struct Circuits {
    own: KeyPair,
    config: CircuitConfig,
    rng: FerryRng,
    circuits: HashMap<u64, Circuit>,
    /// (prev, circ id) of cells travelling forward → handle.
    fwd: HashMap<(PublicKey, u32), u64>,
    /// (next, circ id) of cells travelling backward → handle.
    bwd: HashMap<(PublicKey, u32), u64>,
    per_peer: HashMap<PublicKey, usize>,
    next_handle: u64,
    out: VecDeque<Cell>,
    events: VecDeque<CircuitEvent>,
    drops: CircuitDrops,
}

impl std::fmt::Debug for Circuits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Circuits")
            .field("own", &self.own.public)
            .field("circuits", &self.circuits.len())
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl Circuits {
    /// A table for the node with long-term key pair `own`.
    pub fn new(own: KeyPair, config: CircuitConfig, rng: FerryRng) -> Self {
        Self {
            own,
            config,
            rng,
            circuits: HashMap::new(),
            fwd: HashMap::new(),
            bwd: HashMap::new(),
            per_peer: HashMap::new(),
            next_handle: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            drops: CircuitDrops::default(),
        }
    }

    /// The configuration (to toggle `relay`/`accept_end` at run time).
    pub fn config_mut(&mut self) -> &mut CircuitConfig {
        &mut self.config
    }

    /// The configuration.
    pub fn config(&self) -> &CircuitConfig {
        &self.config
    }

    /// Refused-cell counters.
    pub fn drops(&self) -> CircuitDrops {
        self.drops
    }

    /// Which way a data cell (custom packet, id byte first) from neighbour `from` travels, if
    /// it belongs to a circuit this table knows ([`DataRoute`]). `None` for control cells,
    /// malformed cells and unknown circuits. Does not authenticate the cell (relays cannot).
    /// Lets the driver meter data cells per link before handling them (paid relaying, issue 8).
    pub fn data_cell_route(&self, from: &PublicKey, data: &[u8]) -> Option<DataRoute> {
        match CellRef::decode(data).ok()? {
            CellRef::Data { id, dir, .. } => {
                let map = match dir {
                    Dir::Forward => &self.fwd,
                    Dir::Backward => &self.bwd,
                };
                let handle = *map.get(&(*from, id))?;
                let c = self.circuits.get(&handle)?;
                let next = match (&c.kind, dir) {
                    (Kind::Relay { next, .. }, Dir::Forward) => Some(*next),
                    _ => None,
                };
                Some(DataRoute { dir, next, handle })
            }
            _ => None,
        }
    }

    /// Number of circuits (all roles).
    pub fn len(&self) -> usize {
        self.circuits.len()
    }

    /// No circuits.
    pub fn is_empty(&self) -> bool {
        self.circuits.is_empty()
    }

    /// The next cell to send.
    pub fn poll_transmit(&mut self) -> Option<Cell> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CircuitEvent> {
        self.events.pop_front()
    }

    fn fresh_id(&mut self, next: &PublicKey) -> u32 {
        loop {
            let id = u32::from_be_bytes(self.rng.bytes::<4>()) & !BACKWARD_BIT;
            if id != 0 && !self.bwd.contains_key(&(*next, id)) {
                return id;
            }
        }
    }

    fn insert(&mut self, c: Circuit) -> u64 {
        let h = self.next_handle;
        self.next_handle += 1;
        if let Some(p) = c.prev() {
            *self.per_peer.entry(p).or_insert(0) += 1;
        }
        self.circuits.insert(h, c);
        h
    }

    fn remove(&mut self, h: u64) -> Option<Circuit> {
        let c = self.circuits.remove(&h)?;
        match &c.kind {
            Kind::Client { next, id_out, .. } => {
                self.bwd.remove(&(*next, *id_out));
            }
            Kind::Relay {
                prev,
                id_in,
                next,
                id_out,
            } => {
                self.fwd.remove(&(*prev, *id_in));
                self.bwd.remove(&(*next, *id_out));
            }
            Kind::End { prev, id_in, .. } => {
                self.fwd.remove(&(*prev, *id_in));
            }
        }
        if let Some(p) = c.prev()
            && let Some(n) = self.per_peer.get_mut(&p)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&p);
            }
        }
        Some(c)
    }

    /// Builds a circuit through `relays` to `end` and queues its CREATE; returns the handle.
    /// `identified` puts our long-term key and its proof in E's layer (needed when E checks the
    /// inner source address, i.e. E is a mesh peer; exits can take anonymous circuits).
    ///
    /// # Errors
    /// [`CircuitError::BadPath`], [`CircuitError::Full`], [`CircuitError::Crypto`].
    pub fn create(
        &mut self,
        now: Instant,
        relays: &[PublicKey],
        end: PublicKey,
        identified: bool,
    ) -> Result<u64, CircuitError> {
        let mut hops: Vec<PublicKey> = relays.to_vec();
        hops.push(end);
        if relays.len() > MAX_RELAYS || hops.contains(&self.own.public) {
            return Err(CircuitError::BadPath);
        }
        for (i, h) in hops.iter().enumerate() {
            if hops[..i].contains(h) {
                return Err(CircuitError::BadPath);
            }
        }
        let ours = self
            .circuits
            .values()
            .filter(|c| matches!(c.kind, Kind::Client { .. }))
            .count();
        if ours >= self.config.max_client || self.circuits.len() >= self.config.max_total {
            return Err(CircuitError::Full);
        }
        // E's layer.
        let key_bytes: [u8; KEY_SIZE] = self.rng.bytes();
        let mut plain = Vec::with_capacity(END_PLAIN_IDENT);
        plain.push(KIND_END);
        plain.push(if identified { FLAG_IDENTIFIED } else { 0 });
        plain.extend_from_slice(&key_bytes);
        if identified {
            let nonce = Nonce::random(&mut self.rng);
            let proof = PrecomputedKey::new(&self.own.secret, &end)
                .encrypt(&nonce, &key_bytes)
                .map_err(|_| CircuitError::Crypto)?;
            plain.extend_from_slice(self.own.public.as_bytes());
            plain.extend_from_slice(&nonce.0);
            plain.extend_from_slice(&proof);
        }
        // Pad so that the CREATE has the same size for every path length and mode.
        let target = END_PLAIN_IDENT + (MAX_RELAYS - relays.len()) * RELAY_LAYER_OVERHEAD;
        while plain.len() < target {
            let chunk: [u8; 32] = self.rng.bytes();
            let n = (target - plain.len()).min(chunk.len());
            plain.extend_from_slice(&chunk[..n]);
        }
        let mut onion = self.seal_layer(&end, &plain)?;
        for (i, r) in relays.iter().enumerate().rev() {
            let next = hops[i + 1];
            let mut p = Vec::with_capacity(1 + KEY_SIZE + onion.len());
            p.push(KIND_RELAY);
            p.extend_from_slice(next.as_bytes());
            p.extend_from_slice(&onion);
            onion = self.seal_layer(r, &p)?;
        }
        let first = hops[0];
        let id_out = self.fresh_id(&first);
        let h = self.insert(Circuit {
            kind: Kind::Client {
                hops,
                next: first,
                id_out,
                end: EndKey {
                    key: SymmetricKey::from_bytes(key_bytes),
                    tx_counter: 0,
                    replay: Replay::default(),
                },
                created_at: now,
                keepalive_sent: None,
                last_keepalive: now,
                rtt: None,
            },
            open: false,
            created: now,
            last: now,
            counters: CircuitCounters::default(),
        });
        self.bwd.insert((first, id_out), h);
        self.out.push_back(Cell {
            to: first,
            data: control(TYPE_CREATE, id_out, Dir::Forward, &onion),
        });
        Ok(h)
    }

    fn seal_layer(&mut self, to: &PublicKey, plain: &[u8]) -> Result<Vec<u8>, CircuitError> {
        let eph = KeyPair::generate(&mut self.rng);
        let nonce = Nonce::random(&mut self.rng);
        let sealed = PrecomputedKey::new(&eph.secret, to)
            .encrypt(&nonce, plain)
            .map_err(|_| CircuitError::Crypto)?;
        let mut v = Vec::with_capacity(LAYER_OVERHEAD + plain.len());
        v.extend_from_slice(eph.public.as_bytes());
        v.extend_from_slice(&nonce.0);
        v.extend_from_slice(&sealed);
        Ok(v)
    }

    /// Sends IP `packet` on a circuit we end (client → E forward, E → client backward).
    ///
    /// # Errors
    /// [`CircuitError::NoCircuit`], [`CircuitError::NotOpen`], [`CircuitError::TooLarge`].
    pub fn send(&mut self, now: Instant, handle: u64, packet: &[u8]) -> Result<(), CircuitError> {
        if packet.len() > CIRCUIT_MTU {
            return Err(CircuitError::TooLarge);
        }
        let cell = self.seal_on(handle, packet)?;
        if let Some(c) = self.circuits.get_mut(&handle) {
            c.counters.tx_packets += 1;
            c.counters.tx_bytes += packet.len() as u64;
            c.last = c.last.max(now);
        }
        self.out.push_back(cell);
        Ok(())
    }

    fn seal_on(&mut self, handle: u64, packet: &[u8]) -> Result<Cell, CircuitError> {
        let c = self
            .circuits
            .get_mut(&handle)
            .ok_or(CircuitError::NoCircuit)?;
        if !c.open {
            return Err(CircuitError::NotOpen);
        }
        match &mut c.kind {
            Kind::Client {
                next, id_out, end, ..
            } => Ok(Cell {
                to: *next,
                data: end.seal(Dir::Forward, *id_out, packet)?,
            }),
            Kind::End {
                prev, id_in, end, ..
            } => Ok(Cell {
                to: *prev,
                data: end.seal(Dir::Backward, *id_in, packet)?,
            }),
            Kind::Relay { .. } => Err(CircuitError::NoCircuit),
        }
    }

    /// Tears down a circuit we are part of, sending DESTROY both ways as applicable.
    pub fn destroy(&mut self, handle: u64, reason: DestroyReason) {
        let Some(c) = self.remove(handle) else { return };
        match c.kind {
            Kind::Client { next, id_out, .. } => {
                self.out.push_back(Cell {
                    to: next,
                    data: control(TYPE_DESTROY, id_out, Dir::Forward, &[reason.to_byte()]),
                });
                self.events
                    .push_back(CircuitEvent::Closed { handle, reason });
            }
            Kind::Relay {
                prev,
                id_in,
                next,
                id_out,
            } => {
                self.out.push_back(Cell {
                    to: next,
                    data: control(TYPE_DESTROY, id_out, Dir::Forward, &[reason.to_byte()]),
                });
                self.out.push_back(Cell {
                    to: prev,
                    data: control(TYPE_DESTROY, id_in, Dir::Backward, &[reason.to_byte()]),
                });
            }
            Kind::End { prev, id_in, .. } => {
                self.out.push_back(Cell {
                    to: prev,
                    data: control(TYPE_DESTROY, id_in, Dir::Backward, &[reason.to_byte()]),
                });
                self.events
                    .push_back(CircuitEvent::Closed { handle, reason });
            }
        }
    }

    /// The owner could not send `cell` (neighbour not a friend, offline, congested). A failed
    /// CREATE or DESTROY... tears the circuit down towards the other side with
    /// [`DestroyReason::Unreachable`]; a failed data cell is just a loss.
    pub fn send_failed(&mut self, cell: &Cell) {
        if cell.data.first() != Some(&CIRCUIT_CONTROL_ID) {
            return;
        }
        let Ok(c) = CellRef::decode(&cell.data) else {
            return;
        };
        let (id, dir) = match c {
            CellRef::Create { id, .. } => (id, Dir::Forward),
            CellRef::Created { id, .. } => (id, Dir::Backward),
            CellRef::Destroy { .. } | CellRef::Data { .. } => return,
        };
        let key = (cell.to, id);
        let h = match dir {
            Dir::Forward => self.bwd.get(&key),
            Dir::Backward => self.fwd.get(&key),
        };
        let Some(&h) = h else { return };
        // Tell only the side we can reach.
        let Some(c) = self.remove(h) else { return };
        let toward = match dir {
            Dir::Forward => Dir::Backward,
            Dir::Backward => Dir::Forward,
        };
        self.pass_destroy(h, c, toward, DestroyReason::Unreachable);
    }

    /// After circuit `h` was removed: a relay passes DESTROY(`reason`) on `toward` its previous
    /// ([`Dir::Backward`]) or next ([`Dir::Forward`]) hop; an end point reports it closed.
    fn pass_destroy(&mut self, h: u64, c: Circuit, toward: Dir, reason: DestroyReason) {
        match c.kind {
            Kind::Relay {
                prev,
                id_in,
                next,
                id_out,
            } => {
                let (to, id) = match toward {
                    Dir::Forward => (next, id_out),
                    Dir::Backward => (prev, id_in),
                };
                self.out.push_back(Cell {
                    to,
                    data: control(TYPE_DESTROY, id, toward, &[reason.to_byte()]),
                });
            }
            Kind::Client { .. } | Kind::End { .. } => {
                self.events
                    .push_back(CircuitEvent::Closed { handle: h, reason });
            }
        }
    }

    /// Neighbour `peer`'s session went away: every circuit through it is torn down towards
    /// the other side with [`DestroyReason::PeerGone`].
    pub fn peer_gone(&mut self, peer: &PublicKey) {
        let hs: Vec<u64> = self
            .circuits
            .iter()
            .filter(|(_, c)| match &c.kind {
                Kind::Client { next, .. } => next == peer,
                Kind::Relay { prev, next, .. } => prev == peer || next == peer,
                Kind::End { prev, .. } => prev == peer,
            })
            .map(|(h, _)| *h)
            .collect();
        for h in hs {
            self.destroy(h, DestroyReason::PeerGone);
        }
        // DESTROYs to the gone peer cannot be delivered; drop them.
        self.out
            .retain(|c| !(c.to == *peer && c.data.first() == Some(&CIRCUIT_CONTROL_ID)));
    }

    /// A circuit cell (custom packet, id byte first) from neighbour `from`. Malformed or
    /// unknown cells are dropped and counted ([`Circuits::drops`]).
    pub fn handle_cell(&mut self, now: Instant, from: PublicKey, mut data: Vec<u8>) {
        let Ok(cell) = CellRef::decode(&data) else {
            self.drops.malformed += 1;
            return;
        };
        match cell {
            CellRef::Data {
                id,
                dir,
                counter,
                sealed,
            } => {
                let map = match dir {
                    Dir::Forward => &self.fwd,
                    Dir::Backward => &self.bwd,
                };
                let Some(&h) = map.get(&(from, id)) else {
                    self.drops.unknown += 1;
                    return;
                };
                let Some(c) = self.circuits.get_mut(&h) else {
                    return;
                };
                c.last = c.last.max(now);
                match (&mut c.kind, dir) {
                    (
                        Kind::Relay {
                            prev,
                            id_in,
                            next,
                            id_out,
                        },
                        _,
                    ) => {
                        let (to, nid) = match dir {
                            Dir::Forward => (*next, *id_out),
                            Dir::Backward => (*prev, *id_in),
                        };
                        let n = data.len() as u64;
                        if dir == Dir::Forward {
                            c.counters.tx_packets += 1;
                            c.counters.tx_bytes += n;
                        } else {
                            c.counters.rx_packets += 1;
                            c.counters.rx_bytes += n;
                        }
                        if c.open && rewrite_circ(&mut data, nid, dir) {
                            self.out.push_back(Cell { to, data });
                        }
                    }
                    (
                        Kind::End {
                            end, prev, id_in, ..
                        },
                        Dir::Forward,
                    ) => {
                        let Some(pt) = end.open(Dir::Forward, counter, sealed) else {
                            self.drops.auth += 1;
                            return;
                        };
                        c.counters.rx_packets += 1;
                        c.counters.rx_bytes += pt.len() as u64;
                        if pt.is_empty() {
                            // Keepalive: echo.
                            let (to, id) = (*prev, *id_in);
                            if let Ok(d) = end.seal(Dir::Backward, id, &[]) {
                                self.out.push_back(Cell { to, data: d });
                            }
                        } else {
                            self.events.push_back(CircuitEvent::Data {
                                handle: h,
                                packet: pt,
                            });
                        }
                    }
                    (
                        Kind::Client {
                            end,
                            keepalive_sent,
                            rtt,
                            ..
                        },
                        Dir::Backward,
                    ) => {
                        let Some(pt) = end.open(Dir::Backward, counter, sealed) else {
                            self.drops.auth += 1;
                            return;
                        };
                        if pt.is_empty() {
                            if let Some(t) = keepalive_sent.take() {
                                *rtt = Some(now.saturating_duration_since(t));
                            }
                        } else {
                            c.counters.rx_packets += 1;
                            c.counters.rx_bytes += pt.len() as u64;
                            self.events.push_back(CircuitEvent::Data {
                                handle: h,
                                packet: pt,
                            });
                        }
                    }
                    _ => self.drops.unknown += 1,
                }
            }
            CellRef::Create { id, onion } => self.on_create(now, from, id, onion),
            CellRef::Created { id, body } => {
                let Some(&h) = self.bwd.get(&(from, id)) else {
                    self.drops.unknown += 1;
                    return;
                };
                let Some(c) = self.circuits.get_mut(&h) else {
                    return;
                };
                if c.open {
                    self.drops.unknown += 1;
                    return;
                }
                match &mut c.kind {
                    Kind::Relay { prev, id_in, .. } => {
                        let (to, nid) = (*prev, *id_in);
                        c.open = true;
                        c.last = c.last.max(now);
                        if rewrite_circ(&mut data, nid, Dir::Backward) {
                            self.out.push_back(Cell { to, data });
                        }
                    }
                    Kind::Client {
                        end,
                        created_at,
                        rtt,
                        ..
                    } => {
                        let counter = be_u64(&body[..8]);
                        if counter != 0 || end.open(Dir::Backward, 0, &body[8..]).is_none() {
                            self.drops.auth += 1;
                            self.destroy(h, DestroyReason::Protocol);
                            return;
                        }
                        *rtt = Some(now.saturating_duration_since(*created_at));
                        c.open = true;
                        c.last = c.last.max(now);
                        self.events.push_back(CircuitEvent::Open { handle: h });
                    }
                    Kind::End { .. } => self.drops.unknown += 1,
                }
            }
            CellRef::Destroy { id, dir, reason } => {
                let map = match dir {
                    Dir::Forward => &self.fwd,
                    Dir::Backward => &self.bwd,
                };
                let Some(&h) = map.get(&(from, id)) else {
                    self.drops.unknown += 1;
                    return;
                };
                let Some(c) = self.remove(h) else { return };
                self.pass_destroy(h, c, dir, reason);
            }
        }
    }

    fn refuse(&mut self, to: PublicKey, id: u32, reason: DestroyReason) {
        self.drops.refused += 1;
        self.out.push_back(Cell {
            to,
            data: control(TYPE_DESTROY, id, Dir::Backward, &[reason.to_byte()]),
        });
    }

    fn on_create(&mut self, now: Instant, prev: PublicKey, id: u32, onion: &[u8]) {
        if self.fwd.contains_key(&(prev, id)) {
            self.drops.malformed += 1;
            return;
        }
        if self.circuits.len() >= self.config.max_total
            || self.per_peer.get(&prev).copied().unwrap_or(0) >= self.config.max_per_peer
        {
            return self.refuse(prev, id, DestroyReason::Full);
        }
        let Some(eph) = PublicKey::from_slice(&onion[..KEY_SIZE]) else {
            return self.refuse(prev, id, DestroyReason::Protocol);
        };
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&onion[KEY_SIZE..KEY_SIZE + NONCE_SIZE]);
        let Ok(plain) = PrecomputedKey::new(&self.own.secret, &eph)
            .decrypt(&Nonce(nonce), &onion[KEY_SIZE + NONCE_SIZE..])
        else {
            return self.refuse(prev, id, DestroyReason::Protocol);
        };
        match plain.first() {
            Some(&KIND_RELAY) => {
                if !self.config.relay {
                    return self.refuse(prev, id, DestroyReason::NotRelay);
                }
                let inner = plain.get(1 + KEY_SIZE..).unwrap_or(&[]);
                let next = PublicKey::from_slice(plain.get(1..1 + KEY_SIZE).unwrap_or(&[]));
                let Some(next) = next.filter(|n| *n != prev && *n != self.own.public) else {
                    return self.refuse(prev, id, DestroyReason::Protocol);
                };
                if inner.len() < LAYER_OVERHEAD + END_PLAIN_ANON {
                    return self.refuse(prev, id, DestroyReason::Protocol);
                }
                let id_out = self.fresh_id(&next);
                let h = self.insert(Circuit {
                    kind: Kind::Relay {
                        prev,
                        id_in: id,
                        next,
                        id_out,
                    },
                    open: false,
                    created: now,
                    last: now,
                    counters: CircuitCounters::default(),
                });
                self.fwd.insert((prev, id), h);
                self.bwd.insert((next, id_out), h);
                self.out.push_back(Cell {
                    to: next,
                    data: control(TYPE_CREATE, id_out, Dir::Forward, inner),
                });
            }
            Some(&KIND_END) => {
                if !self.config.accept_end {
                    return self.refuse(prev, id, DestroyReason::NotAccepting);
                }
                let identified = plain.get(1) == Some(&FLAG_IDENTIFIED);
                let want = if identified {
                    END_PLAIN_IDENT
                } else {
                    END_PLAIN_ANON
                };
                // Longer is padding (module docs).
                if plain.len() < want || plain.get(1).is_some_and(|f| *f > FLAG_IDENTIFIED) {
                    return self.refuse(prev, id, DestroyReason::Protocol);
                }
                let mut key_bytes = [0u8; KEY_SIZE];
                key_bytes.copy_from_slice(&plain[2..2 + KEY_SIZE]);
                let mut client = None;
                if identified {
                    let at = END_PLAIN_ANON;
                    let ck = PublicKey::from_slice(&plain[at..at + KEY_SIZE]);
                    let mut n = [0u8; NONCE_SIZE];
                    n.copy_from_slice(&plain[at + KEY_SIZE..at + KEY_SIZE + NONCE_SIZE]);
                    let ok = ck.is_some_and(|ck| {
                        PrecomputedKey::new(&self.own.secret, &ck)
                            .decrypt(&Nonce(n), &plain[at + KEY_SIZE + NONCE_SIZE..want])
                            .is_ok_and(|k| ct_eq(&k, &key_bytes))
                    });
                    if !ok {
                        return self.refuse(prev, id, DestroyReason::Protocol);
                    }
                    client = ck;
                }
                let key = SymmetricKey::from_bytes(key_bytes);
                let Ok(mac) = key.encrypt(&data_nonce(Dir::Backward, 0), &[]) else {
                    return self.refuse(prev, id, DestroyReason::Protocol);
                };
                let h = self.insert(Circuit {
                    kind: Kind::End {
                        prev,
                        id_in: id,
                        end: EndKey {
                            key,
                            tx_counter: 0,
                            replay: Replay::default(),
                        },
                        client,
                    },
                    open: true,
                    created: now,
                    last: now,
                    counters: CircuitCounters::default(),
                });
                self.fwd.insert((prev, id), h);
                let mut body = [0u8; CREATED_BODY];
                body[8..].copy_from_slice(&mac);
                self.out.push_back(Cell {
                    to: prev,
                    data: control(TYPE_CREATED, id, Dir::Backward, &body),
                });
                self.events
                    .push_back(CircuitEvent::Incoming { handle: h, client });
            }
            _ => self.refuse(prev, id, DestroyReason::Protocol),
        }
    }

    /// When [`Circuits::handle_timeout`] next has work (setup/idle timeouts, keepalives).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.circuits
            .values()
            .map(|c| {
                let idle = c.last + self.config.idle_timeout;
                let mut t = if c.open {
                    idle
                } else {
                    idle.min(c.created + self.config.setup_timeout)
                };
                if let Kind::Client { last_keepalive, .. } = &c.kind
                    && c.open
                {
                    t = t.min(*last_keepalive + self.config.keepalive_interval);
                }
                t
            })
            .min()
    }

    /// Timeouts (DESTROY(Timeout) both ways) and client keepalives.
    pub fn handle_timeout(&mut self, now: Instant) {
        let setup = self.config.setup_timeout;
        let idle = self.config.idle_timeout;
        let dead: Vec<u64> = self
            .circuits
            .iter()
            .filter(|(_, c)| (!c.open && now >= c.created + setup) || now >= c.last + idle)
            .map(|(h, _)| *h)
            .collect();
        for h in dead {
            self.destroy(h, DestroyReason::Timeout);
        }
        let ka = self.config.keepalive_interval;
        let due: Vec<u64> = self
            .circuits
            .iter()
            .filter(|(_, c)| {
                c.open
                    && matches!(&c.kind, Kind::Client { last_keepalive, .. }
                        if now >= *last_keepalive + ka)
            })
            .map(|(h, _)| *h)
            .collect();
        for h in due {
            if let Ok(cell) = self.seal_on(h, &[]) {
                self.out.push_back(cell);
            }
            if let Some(Circuit {
                kind:
                    Kind::Client {
                        keepalive_sent,
                        last_keepalive,
                        ..
                    },
                ..
            }) = self.circuits.get_mut(&h)
            {
                *keepalive_sent = Some(now);
                *last_keepalive = now;
            }
        }
    }

    /// Every circuit, for status (sorted by handle).
    pub fn info(&self) -> Vec<CircuitInfo> {
        let mut v: Vec<CircuitInfo> = self
            .circuits
            .iter()
            .map(|(h, c)| {
                let (role, hops, far_end, rtt) = match &c.kind {
                    Kind::Client { hops, rtt, .. } => {
                        (Role::Client, hops.clone(), hops.last().copied(), *rtt)
                    }
                    Kind::Relay { prev, next, .. } => (Role::Relay, vec![*prev, *next], None, None),
                    Kind::End { prev, client, .. } => (Role::End, vec![*prev], *client, None),
                };
                CircuitInfo {
                    handle: *h,
                    role,
                    state: if c.open {
                        CircuitState::Open
                    } else {
                        CircuitState::Pending
                    },
                    hops,
                    far_end,
                    counters: c.counters,
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                }
            })
            .collect();
        v.sort_by_key(|c| c.handle);
        v
    }

    /// Every byte string this table stores about relayed circuits: neighbour keys and circuit
    /// ids (what a relay knows). For tests asserting what a relay learns.
    pub fn relay_view(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for c in self.circuits.values() {
            if let Kind::Relay {
                prev,
                id_in,
                next,
                id_out,
            } = &c.kind
            {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(&id_in.to_be_bytes());
                v.extend_from_slice(next.as_bytes());
                v.extend_from_slice(&id_out.to_be_bytes());
            }
        }
        v
    }
}

#[cfg(test)]
#[path = "circuit_tests.rs"]
mod tests;
