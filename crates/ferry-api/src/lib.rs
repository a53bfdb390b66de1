//! ferry's control API, version 1: HTTP/1.1 + JSON on a Unix socket in the profile directory
//! (`<profile>/ferry.sock`, mode 0600). Every CLI command other than `init`, `id` and `up` is a
//! client of it; the web dashboard will be another.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | – | [`Status`] |
//! | GET | `/v1/dht/nodes` | – | `[`[`DhtNode`]`]` (the close list, closest first) |
//! | POST | `/v1/dht/bootstrap` | [`BootstrapRequest`] | [`Ok`] |
//! | POST | `/v1/dht/lookup` | [`LookupRequest`] | [`LookupResult`] (waits up to `timeout_ms`) |
//! | POST | `/v1/shutdown` | – | [`Ok`] |
//! | GET | `/v1/self` | – | [`SelfInfo`] |
//! | POST | `/v1/self` | [`SelfUpdate`] | [`SelfInfo`] |
//! | GET | `/v1/friends` | – | `[`[`Friend`]`]` |
//! | POST | `/v1/friends/add` | [`AddFriend`] | [`Friend`] |
//! | GET | `/v1/friends/requests` | – | `[`[`FriendRequest`]`]` |
//! | POST | `/v1/friends/accept` | [`FriendKey`] | [`Friend`] |
//! | POST | `/v1/friends/reject` | [`FriendKey`] | [`Ok`] |
//! | POST | `/v1/friends/remove` | [`FriendKey`] | [`Ok`] |
//! | POST | `/v1/friends/packet` | [`CustomPacket`] | [`Ok`] |
//! | POST | `/v1/friends/typing` | [`Typing`] | [`Ok`] |
//! | POST | `/v1/messages/send` | [`SendMessage`] | [`Message`] |
//! | POST | `/v1/messages/list` | [`ListMessages`] | `[`[`Message`]`]` (long-polls up to `wait_ms`) |
//! | POST | `/v1/packets/list` | [`ListPackets`] | `[`[`ReceivedPacket`]`]` (long-polls up to `wait_ms`) |
//!
//! Errors answer with a 4xx/5xx status and [`ErrorBody`]. New fields may be added to any answer
//! within v1; none is removed or renamed.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

mod client;
pub use client::{Client, ClientError};

/// The API version prefix.
pub const API_PREFIX: &str = "/v1";
/// File name of the control socket inside the profile directory.
pub const SOCKET_NAME: &str = "ferry.sock";

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The node's DHT public key, 64 hex (new at every start).
    pub dht_public_key: String,
    /// The long-term public key, 64 hex.
    pub public_key: String,
    /// The Tox ID, 76 hex.
    pub tox_id: String,
    /// The bound UDP port.
    pub udp_port: u16,
    /// `"none"`, `"udp"` or `"tcp"`: how the node reaches the network.
    pub connection: String,
    /// Announced through the onion (friends can find us; c-toxcore's "connected").
    #[serde(default)]
    pub onion_connected: bool,
    /// Good nodes in the DHT close list.
    pub close_nodes: usize,
    /// Known TCP relays (ours and friends').
    #[serde(default)]
    pub relays: Vec<TcpRelay>,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Datagrams received since start.
    pub packets_in: u64,
    /// Datagrams sent since start.
    pub packets_out: u64,
    /// Malformed datagrams dropped since start.
    pub malformed_dropped: u64,
    /// ferry's version.
    pub version: String,
}

/// A TCP relay of `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TcpRelay {
    /// `IP:PORT:KEY` (the `--relay-peer` syntax).
    pub relay: String,
    /// The relay connection is up (handshake done).
    pub connected: bool,
    /// One of our own relays (announced to friends), not only a friend's.
    pub own: bool,
}

/// One close-list entry of `GET /v1/dht/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtNode {
    /// DHT public key, 64 hex.
    pub public_key: String,
    /// `IP:PORT` (IPv6 as `[IP]:PORT`).
    pub address: String,
    /// Milliseconds since its last response.
    pub last_seen_ms: u64,
}

/// `POST /v1/dht/bootstrap`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapRequest {
    /// `IP:PORT`.
    pub address: String,
    /// DHT public key, 64 hex.
    pub public_key: String,
}

/// `POST /v1/dht/lookup`: find a DHT key's IP address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupRequest {
    /// DHT public key, 64 hex.
    pub public_key: String,
    /// How long to wait, in ms (default 30 000, at most 600 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Answer of `POST /v1/dht/lookup`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LookupResult {
    /// The key looked up.
    pub public_key: String,
    /// Whether its address was found in time.
    pub found: bool,
    /// `IP:PORT` when found.
    pub address: Option<String>,
    /// Milliseconds the lookup took (or waited).
    pub elapsed_ms: u64,
}

/// A plain success answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ok {
    /// Always `true`.
    pub ok: bool,
}

/// Error answer body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A message a person understands.
    pub error: String,
}

/// An error a [`Backend`] returns: an HTTP status and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code (400 bad input, 404 unknown, 503 node stopped, …).
    pub status: u16,
    /// A message a person understands.
    pub message: String,
}

impl ApiError {
    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
        }
    }
    /// A 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            message: message.into(),
        }
    }
    /// A 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }
    /// A 503 Service Unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

/// Our own profile as friends see it, plus settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SelfInfo {
    /// Long-term public key, 64 hex digits.
    pub public_key: String,
    /// Tox ID, 76 hex digits.
    pub tox_id: String,
    /// Nospam, 8 hex digits.
    pub nospam: String,
    /// Our name.
    pub name: String,
    /// Our status message.
    pub status_message: String,
    /// Friend requests are accepted automatically.
    pub auto_accept: bool,
    /// Files from friends are accepted automatically into this directory (`None` = ask).
    #[serde(default)]
    pub auto_accept_files: Option<String>,
}

/// Changes to [`SelfInfo`]; absent fields stay.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SelfUpdate {
    /// New name (≤ 128 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New status message (≤ 1007 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// New nospam: 8 hex digits, or `"random"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nospam: Option<String>,
    /// Accept friend requests automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_accept: Option<bool>,
    /// Accept files automatically into this directory; `""` turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_accept_files: Option<String>,
}

/// One file transfer (`ferry file list`, `GET /v1/files`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileTransfer {
    /// Local transfer id (stable across restarts and resumes).
    pub id: u64,
    /// The friend's long-term public key, 64 hex digits.
    pub friend: String,
    /// `"in"` or `"out"`.
    pub direction: String,
    /// `"data"` or `"avatar"`.
    pub kind: String,
    /// File name as offered.
    pub name: String,
    /// Size in bytes (`u64::MAX` = unknown).
    pub size: u64,
    /// Bytes received (in) or handed to the session (out).
    pub bytes_done: u64,
    /// Current rate, bytes/s (0 when idle).
    pub rate: u64,
    /// `offered` (in, waiting for accept), `waiting` (out, waiting for the friend), `active`,
    /// `paused`, `broken` (friend offline; resumes when it is back), `done`, `cancelled`,
    /// `failed`.
    pub state: String,
    /// The Tox file id, 64 hex digits.
    pub file_id: String,
    /// Local path (source for out, destination for in; empty before accepting).
    pub path: String,
    /// BLAKE3 of the file, 64 hex digits: for out, of the source; for in, of what was written,
    /// set only when complete.
    pub hash: Option<String>,
    /// Why it failed or was cancelled, if known.
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /v1/files/send`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendFile {
    /// Friend: public key, unique key prefix or name.
    pub friend: String,
    /// Path of the file on the daemon's machine (absolute).
    pub path: String,
}

/// `POST /v1/files/{accept,cancel,pause,resume}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileAction {
    /// Transfer id.
    pub id: u64,
    /// accept only: directory to save into (default: the auto-accept directory, else the
    /// profile's `downloads/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `POST /v1/files/avatar`: our avatar (sent to every friend as they come online).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetAvatar {
    /// Path of the image (≤ 64 KiB, as c-toxcore clients expect); `""` removes it.
    pub path: String,
}

/// One friend (`ferry friend list`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Friend {
    /// Long-term public key, 64 hex digits.
    pub public_key: String,
    /// Their name.
    pub name: String,
    /// Their status message.
    pub status_message: String,
    /// `"none"`, `"udp"` or `"tcp"`.
    pub connection: String,
    /// With `"tcp"`: the relay carrying the session, `IP:PORT:KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Our friend request to them is still being sent (they have not come online yet).
    #[serde(default)]
    pub request_pending: bool,
    /// Last time seen online, ms since the Unix epoch (0 = never).
    #[serde(default)]
    pub last_seen_ms: u64,
}

/// `POST /v1/friends/add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddFriend {
    /// Their Tox ID, 76 hex digits.
    pub tox_id: String,
    /// Request message, 1..=1016 bytes.
    pub message: String,
}

/// A body naming one key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FriendKey {
    /// Long-term public key, 64 hex digits.
    pub public_key: String,
}

/// A pending friend request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FriendRequest {
    /// Requester's long-term public key.
    pub public_key: String,
    /// Their message.
    pub message: String,
    /// When received, ms since the Unix epoch.
    pub time_ms: u64,
}

/// `POST /v1/friends/packet`: a custom packet to an online friend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CustomPacket {
    /// Friend: public key or name.
    pub friend: String,
    /// Packet bytes in hex, first byte the id (160–191 lossless, 200–254 lossy), ≤ 1373 bytes.
    pub data_hex: String,
}

/// `POST /v1/friends/typing`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Typing {
    /// Friend: public key or name.
    pub friend: String,
    /// Typing or not.
    pub typing: bool,
}

/// `POST /v1/messages/send`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendMessage {
    /// Friend: public key or name.
    pub friend: String,
    /// Text (split at 1372 bytes on the wire).
    pub text: String,
    /// `"normal"` (default) or `"action"`.
    #[serde(default = "normal")]
    pub kind: String,
}

fn normal() -> String {
    "normal".into()
}

/// `GET /v1/relay/status`: the TCP relay server this node offers (`ferry up --tcp-relay`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayStatus {
    /// Whether a relay server runs.
    pub enabled: bool,
    /// The relay's public key (the node's DHT key; clients need it), hex.
    pub public_key: String,
    /// TCP ports listened on.
    pub ports: Vec<u16>,
    /// Confirmed clients now.
    pub clients: usize,
    /// Streams still in the handshake now.
    pub unconfirmed: usize,
    /// Linked client pairs now.
    pub links: usize,
    /// Payload bytes forwarded between clients (data and OOB), total.
    pub bytes_relayed: u64,
    /// Packets forwarded between clients, total.
    pub packets_relayed: u64,
    /// Payload bytes dropped by the per-link bandwidth limit, total.
    pub bytes_rate_limited: u64,
    /// Per-link bandwidth limit, bytes/s each direction (0 = unlimited).
    pub link_rate: u32,
    /// Onion requests over TCP dropped, total.
    pub onion_dropped: u64,
    /// Onion requests over TCP handed to the node (it is onion node A for its clients), total.
    pub onion_requests: u64,
    /// Streams closed for protocol errors, total.
    pub protocol_errors: u64,
}

/// `POST /v1/messages/list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListMessages {
    /// Only this friend (public key or name).
    #[serde(default)]
    pub friend: Option<String>,
    /// Only entries with `seq` greater than this.
    #[serde(default)]
    pub after: u64,
    /// At most this many (default 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// When nothing matches yet, wait up to this long for new entries, ms (≤ 60000).
    #[serde(default)]
    pub wait_ms: u64,
}

/// `POST /v1/packets/list`: custom packets received from friends (kept in memory, the last
/// 1024).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListPackets {
    /// Only entries with `seq` greater than this.
    #[serde(default)]
    pub after: u64,
    /// When nothing matches yet, wait up to this long, ms (≤ 60000).
    #[serde(default)]
    pub wait_ms: u64,
}

/// A custom packet received from a friend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedPacket {
    /// The friend's public key.
    pub friend: String,
    /// Lossless (160–191) or lossy (200–254).
    pub lossless: bool,
    /// The packet in hex, id byte first.
    pub data_hex: String,
    /// Sequence number in this daemon run (for `after`).
    pub seq: u64,
}

/// One history entry (`ferry messages` JSON line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    /// Friend's public key.
    pub friend: String,
    /// `"in"` or `"out"`.
    pub direction: String,
    /// `"normal"` or `"action"`.
    pub kind: String,
    /// The text.
    pub text: String,
    /// Sent/received time, ms since the Unix epoch.
    pub time_ms: u64,
    /// History sequence number (for `after`).
    pub seq: u64,
    /// Outgoing: acknowledged by the friend's node. Incoming: true.
    pub delivered: bool,
    /// Outgoing, not delivered yet: sealed into the offline friend's mailbox at the DHT nodes
    /// nearest it (issue 9), to be read when the friend is back.
    #[serde(default)]
    pub mailed: bool,
}

/// The tunnel data plane's counters (`tunnel status` key `dataplane`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataPlaneStatus {
    /// Established sessions (current and previous key per friend).
    pub sessions: u64,
    /// Handshakes completed since start.
    pub handshakes: u64,
    /// Datagrams refused (unknown session, bad tag, replay, malformed).
    pub dropped: u64,
}

/// `POST /v1/tunnel/up` request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelUp {
    /// TUN device name (default `ferry0`, ≤ 15 bytes).
    #[serde(default)]
    pub device: Option<String>,
    /// Exit node (long-term public key, hex). Without `via`: non-mesh traffic for `routes`
    /// goes there (a friend, or a service node befriended by key). With `via`: the far end of
    /// a multi-hop circuit; traffic to its mesh address goes through the circuit.
    #[serde(default)]
    pub exit: Option<String>,
    /// Prefixes routed into the tunnel towards the exit (`10.0.0.0/8`, `0.0.0.0/0`, `::/0`).
    #[serde(default)]
    pub routes: Vec<String>,
    /// Relays of a multi-hop circuit to `exit`, in order (long-term keys, hex; `--via`).
    #[serde(default)]
    pub via: Vec<String>,
    /// TAP mode (`--tap`): also open a TAP device and bridge Ethernet frames with friends that
    /// run TAP too (`ferry_tunnel::tap`; the TUN device comes up as without it).
    #[serde(default)]
    pub tap: bool,
    /// TAP device name (default `ferrytap0`, ≤ 15 bytes; with `tap`).
    #[serde(default)]
    pub tap_device: Option<String>,
    /// Highest price per KiB this client accepts from paid relays and exits, wei as a decimal
    /// string (`--max-price`; default: the `[market]` table's `max_price_per_kib`).
    #[serde(default)]
    pub max_price: Option<String>,
}

/// TAP mode in [`TunnelStatus`] (`ferry_tunnel::tap`: a learning bridge over friends, frames as
/// net_crypto lossy packets id 224).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TapStatus {
    /// TAP device name.
    pub device: String,
    /// TAP device MTU, bytes (1358: a 1372-byte frame minus the 14-byte Ethernet header).
    pub mtu: u32,
    /// The TAP device's own MAC address (`aa:bb:..`; empty if unknown).
    pub mac: String,
    /// MAC addresses learnt from friends (at most 4096).
    pub macs: u64,
    /// Learnt MACs evicted because the table was full (least recently seen first).
    pub macs_evicted: u64,
    /// Friends known to run TAP (heard from within the last 15 s), long-term keys, hex.
    pub peers: Vec<String>,
    /// Frames sent to friends (a flooded frame counts once per friend).
    pub tx_frames: u64,
    /// Bytes of those frames (Ethernet header included).
    pub tx_bytes: u64,
    /// Frames received from friends and written to the TAP device.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames dropped, any reason (the sum of the `dropped_*` keys).
    pub dropped: u64,
    /// Dropped: shorter than the 14-byte header or longer than 1372 bytes.
    pub dropped_bad_length: u64,
    /// Dropped: received with a group (multicast/broadcast) source MAC.
    pub dropped_group_source: u64,
    /// Dropped: read from the device with no friend running TAP to send it to.
    pub dropped_no_route: u64,
    /// Dropped: the node refused the send (friend offline) or the device write failed.
    pub dropped_send: u64,
}

/// Exit packet counters (exit node or exit client), drops by reason.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitDrops {
    /// Client → outside packets passed (exit: written to TUN; client: sent to the exit).
    pub forwarded: u64,
    /// Outside → client packets passed (exit: sent to clients; client: written to TUN).
    pub returned: u64,
    /// Dropped: malformed IP packet.
    pub malformed: u64,
    /// Dropped: source address not assigned to the sender (or not addressed to us).
    pub bad_source: u64,
    /// Dropped: forbidden by the exit policy.
    pub policy: u64,
    /// Dropped: client without an address.
    pub no_client: u64,
    /// Dropped: return traffic to an address no client holds.
    pub no_route: u64,
}

/// A friend reachable through the tunnel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelPeer {
    /// The friend's long-term public key.
    pub public_key: String,
    /// Its mesh address.
    pub address: String,
}

/// `POST /v1/tunnel/down` request (no fields).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TunnelDown {}

/// `GET /v1/tunnel/status` (also the answer to `POST /v1/tunnel/up`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelStatus {
    /// Whether the tunnel is up.
    pub up: bool,
    /// TUN device name (empty when down).
    pub device: String,
    /// Our mesh address (shown even when down).
    pub address: String,
    /// The mesh prefix, e.g. `fd54:6f78::/32`.
    pub prefix: String,
    /// TUN MTU, bytes.
    pub mtu: u32,
    /// IP packets sent to friends.
    pub tx_packets: u64,
    /// IP bytes sent to friends.
    pub tx_bytes: u64,
    /// IP packets received from friends (written to TUN).
    pub rx_packets: u64,
    /// IP bytes received from friends.
    pub rx_bytes: u64,
    /// Packets dropped (any reason).
    pub dropped: u64,
    /// Dropped because a source address did not belong to its sender (spoofed).
    pub dropped_bad_source: u64,
    /// Friends with a route.
    pub peers: Vec<TunnelPeer>,
    /// Client: the exit's long-term public key.
    #[serde(default)]
    pub exit: Option<String>,
    /// Client: our IPv4 address in the tunnel, assigned by the exit.
    #[serde(default)]
    pub client_address_v4: Option<String>,
    /// Client: our IPv6 source address through the exit (our mesh address).
    #[serde(default)]
    pub client_address_v6: Option<String>,
    /// Client: prefixes routed into the tunnel (defaults split in two /1s).
    #[serde(default)]
    pub routes: Vec<String>,
    /// This node is an exit.
    #[serde(default)]
    pub exit_node: bool,
    /// Exit: clients holding addresses.
    #[serde(default)]
    pub exit_clients: u64,
    /// Exit or exit client: packets passed and dropped by reason.
    #[serde(default)]
    pub exit_counters: Option<ExitDrops>,
    /// Multi-hop circuits this node builds, relays or ends (`--via`, `--relay-node`).
    #[serde(default)]
    pub circuits: Vec<TunnelCircuit>,
    /// TAP mode, when up (`--tap`).
    #[serde(default)]
    pub tap: Option<TapStatus>,
    /// The fast data plane (Noise IK + ChaCha20-Poly1305 datagrams between ferry nodes on a
    /// direct UDP path; net_crypto lossy packets otherwise).
    #[serde(default)]
    pub dataplane: DataPlaneStatus,
    /// Exit client through a multi-hop circuit (`tunnel up --via ... --exit ...`): that
    /// circuit (hops, bytes and packets each way, RTT), the path of all exit traffic.
    #[serde(default)]
    pub exit_circuit: Option<TunnelCircuit>,
}

/// One multi-hop circuit in [`TunnelStatus`] (`ferry_tunnel::circuit`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelCircuit {
    /// Local handle (not on the wire).
    pub id: u64,
    /// `client` (we built it), `relay` (we forward it) or `end` (it ends here).
    pub role: String,
    /// Long-term keys (hex): client: relays then the far end; relay: `[previous, next]`;
    /// end: `[previous]`. A relay knows nothing beyond its neighbours.
    pub hops: Vec<String>,
    /// Client: the far end's key; end: the client's key (identified circuits).
    #[serde(default)]
    pub far_end: Option<String>,
    /// `pending` (no CREATED yet) or `open`.
    pub state: String,
    /// Bytes sent (client/end: IP bytes; relay: cell bytes forwarded towards the far end).
    pub tx_bytes: u64,
    /// Bytes received (relay: cell bytes forwarded towards the client).
    pub rx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Client: last round-trip time through the circuit (setup or keepalive echo), ms.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
}

/// `GET /v1/wallet` (`ferry wallet`): this node's settlement account (issue 8). Amounts are
/// decimal strings in the chain's base unit (wei).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wallet {
    /// The secp256k1 account address (`0x` + 40 hex digits), derived from the long-term key.
    pub address: String,
    /// The account's balance on the ledger, wei.
    pub balance: String,
    /// Payment channels this node pays into (as a client) or is paid through (as a server).
    pub channels: Vec<WalletChannel>,
}

/// One payment channel in [`Wallet`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalletChannel {
    /// The other side's long-term public key, hex.
    pub peer: String,
    /// The channel id on the ledger (`0x` + 64 hex digits).
    pub channel_id: String,
    /// Escrowed deposit, wei.
    pub deposit: String,
    /// Cumulative amount of the newest voucher (sent as client, accepted as server), wei.
    pub cumulative: String,
    /// Already paid out to the receiver on the ledger, wei.
    pub claimed: String,
}

/// `POST /v1/wallet/deposit` (`ferry wallet deposit PEER AMOUNT`): add to the channel paying
/// `peer` (opening one if there is none).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WalletDeposit {
    /// The paid relay or exit (long-term public key, hex).
    pub peer: String,
    /// Amount to add, wei (decimal string).
    pub amount: String,
}

/// `GET /v1/store/status` (`ferry store status`): what this node holds for others in the DHT
/// value store (issue 9; `data-layer.md` §3.1).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreStatus {
    /// Items held (mail envelopes included).
    pub items: u64,
    /// Bytes held (encoded items).
    pub bytes: u64,
    /// The configured quota (`[store] quota_bytes`), bytes.
    pub quota_bytes: u64,
    /// The configured item cap (`[store] max_items`).
    pub max_items: u64,
    /// Peers known to speak the store extension.
    pub capable_nodes: u64,
    /// Puts accepted since start.
    pub puts_accepted: u64,
    /// Puts refused since start.
    pub puts_refused: u64,
    /// Items evicted to make room since start.
    pub evicted: u64,
}

/// `POST /v1/dht/put` (`ferry dht put VALUE [--salt S] [--seq N]`): store a value on the k = 8
/// closest store-capable nodes. Without `salt` the item is immutable (target = its hash); with
/// it, mutable (signed by this node's item key; target = hash(key ‖ salt)).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtPut {
    /// The value, UTF-8 (≤ 1000 bytes).
    pub value: String,
    /// Salt of a mutable item (≤ 64 bytes).
    #[serde(default)]
    pub salt: Option<String>,
    /// Sequence number of a mutable item (default: Unix seconds now).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Result of [`DhtPut`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtPutResult {
    /// The target, 64 hex digits (what `ferry dht get` takes).
    pub target: String,
    /// Nodes that acknowledged the put.
    pub stored: u64,
    /// The sequence number (mutable items).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `POST /v1/dht/get` (`ferry dht get TARGET`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtGet {
    /// The target, 64 hex digits.
    pub target: String,
}

/// Result of [`DhtGet`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtGetResult {
    /// The target asked for.
    pub target: String,
    /// Whether a verified value was found.
    pub found: bool,
    /// `immutable`, `mutable`, `claimed` or empty.
    pub kind: String,
    /// The value as UTF-8 (lossy).
    pub value: String,
    /// The value, hex.
    pub value_hex: String,
    /// Sequence number (mutable and claimed items).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// `POST /v1/content/publish` (`ferry publish PATH`): a file or directory becomes content
/// (issue 10 item 1); the node serves it and announces itself as a provider in the DHT.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentPublish {
    /// Absolute path of the file or directory.
    pub path: String,
}

/// `POST /v1/content/pin` (`ferry publish --pin`, `ferry unpin`): pin content this node
/// published on storers (`pin`), or let it go (`!pin`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentPin {
    /// The content id, 64 hex digits.
    pub id: String,
    /// Pin (true) or unpin (false).
    pub pin: bool,
}

/// One row of `GET /v1/content/pins` (`ferry pins`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinStatus {
    /// The content id, 64 hex digits.
    pub id: String,
    /// This node's part: "publisher" (it pinned the item), "pin" or "extra" (it holds a
    /// replica), "none" (after unpin).
    pub role: String,
    /// Long-term keys (hex) of the replicas this node knows live: the pins that accepted
    /// (publisher), or the holder set including this node (holders).
    pub holders: Vec<String>,
    /// Whether this node has the content on disk (holders: replica fetched and announced as a
    /// provider).
    pub fetched: bool,
}

/// Result of [`ContentPublish`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentPublished {
    /// The content id (manifest BLAKE3), 64 hex digits.
    pub id: String,
    /// The published name (file or directory name).
    pub name: String,
    /// Files in it.
    pub files: u64,
    /// Bytes in all files.
    pub bytes: u64,
    /// DHT nodes that stored our provider record (0: announce failed, retried later).
    pub announced: u64,
}

/// One account of `GET /v1/content/credits` (`ferry credits`): what a peer contributed to
/// this node and what this node served it (issue 10 item 6).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreditAccount {
    /// The peer's long-term public key (64 hex digits).
    pub peer: String,
    /// Its credit here: `received_bytes + stored_bytes`.
    pub credit_bytes: u64,
    /// Verified content bytes it served this node.
    pub received_bytes: u64,
    /// Bytes of this node's content it stores.
    pub stored_bytes: u64,
    /// Content bytes this node served it.
    pub served_bytes: u64,
    /// Of those, what it confirmed in its best signed receipt.
    #[serde(default)]
    pub receipted_bytes: u64,
}

/// `POST /v1/site/publish` (`ferry site publish DIR --name NAME`): publishes the directory as
/// content and binds the username NAME (registered by this node) to it, the site's latest
/// version (issue 10 item 4).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SitePublish {
    /// The username (registered by this node with `ferry name register`).
    pub name: String,
    /// Absolute path of the directory.
    pub path: String,
}

/// A site: what [`SitePublish`] bound, or what `POST /v1/site/resolve` (a [`NameRequest`])
/// found.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SiteInfo {
    /// The normalized name.
    pub name: String,
    /// Content id of the latest version, 64 hex digits.
    pub id: String,
    /// The owner's Tox ID (from the name record).
    pub tox_id: String,
    /// The name owner's key fingerprint (16 hex digits), as `ferry name resolve` shows it.
    pub fingerprint: String,
    /// When the latest version was published, Unix s.
    pub published_unix: u64,
}

/// `POST /v1/stream/publish` (`ferry stream publish NAME`): starts hosting a live stream whose
/// key is derived from the node's long-term secret and `name`, and announces it in the DHT.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamPublish {
    /// Stream name (1..=64 bytes of UTF-8).
    pub name: String,
}

/// A hosted or watched stream (answer of `/v1/stream/publish` and `/v1/stream/watch`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamInfo {
    /// Stream id: the streamer's Ed25519 verifying key, 64 hex digits.
    pub id: String,
    /// Stream name (as published; empty when watched by id).
    pub name: String,
    /// DHT nodes that stored the announcement (publish only).
    pub announced: u64,
}

/// `POST /v1/stream/push`: the streamer's next segment (≤ 256 KiB); `end` pushes the empty
/// end-of-stream segment instead.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamPush {
    /// Stream id (hex).
    pub id: String,
    /// Segment bytes, hex.
    pub data_hex: String,
    /// End of stream (`data_hex` is ignored).
    #[serde(default)]
    pub end: bool,
}

/// `POST /v1/stream/watch` (`ferry stream watch NAME|ID`): finds the streamer in the DHT and
/// joins its tree.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamWatch {
    /// A stream name, or a stream id (64 hex digits).
    pub stream: String,
}

/// `POST /v1/stream/read`: takes the watched stream's verified bytes in order (long-poll up to
/// `wait_ms`, ≤ 10 000 ms).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamRead {
    /// Stream id (hex).
    pub id: String,
    /// Longest wait for data, ms.
    pub wait_ms: u64,
}

/// `POST /v1/stream/status` and `/v1/stream/close`: a stream by id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamQuery {
    /// Stream id (hex).
    pub id: String,
}

/// A stream's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamStatus {
    /// Stream id (hex).
    pub id: String,
    /// "streamer" or "viewer".
    pub role: String,
    /// Segments pushed (streamer) or written out in order (viewer).
    pub segments: u64,
    /// Bytes of those segments.
    pub bytes: u64,
    /// Viewer: join → first segment playable (3 buffered), ms.
    pub startup_ms: Option<u64>,
    /// Viewer: playback stalls and their total time, ms.
    pub stalls: u64,
    /// Stalled time, ms.
    pub stalled_ms: u64,
    /// Viewer: segments never received, skipped in the output.
    pub gaps: u64,
    /// Segments received by pull repair.
    pub repaired: u64,
    /// Streamer: viewers in its tracker registry.
    pub viewers: u64,
    /// Children fed (stripe slots in use).
    pub children: u64,
    /// Viewer: parents attached (0..=2).
    pub parents: u64,
    /// Bytes of stream messages sent.
    pub bytes_sent: u64,
    /// Viewer: the end-of-stream segment was reached.
    pub ended: bool,
}

/// Answer of `POST /v1/stream/read`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StreamChunk {
    /// Next bytes of the stream, hex (≤ 512 KiB).
    pub data_hex: String,
    /// No more bytes will come (end segment reached and everything read).
    pub ended: bool,
    /// Figures.
    pub status: StreamStatus,
}

/// `POST /v1/content/fetch` (`ferry fetch ID --to DIR`): starts a fetch job; poll it with
/// `POST /v1/content/job`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentFetch {
    /// The content id, 64 hex digits.
    pub id: String,
    /// Absolute directory the file or directory is written into.
    pub to: String,
}

/// `POST /v1/content/job`: a fetch job's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentJobQuery {
    /// The job id from [`ContentJob::job`].
    pub job: u64,
}

/// A fetch job's progress (answer of `/v1/content/fetch` and `/v1/content/job`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContentJob {
    /// Job id.
    pub job: u64,
    /// `finding`, `manifest`, `fetching`, `done` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The published name (once the manifest is in).
    pub name: String,
    /// Where it is written.
    pub path: String,
    /// Bytes in all files (once the manifest is in).
    pub total_bytes: u64,
    /// Verified bytes written.
    pub verified_bytes: u64,
    /// Providers known from the DHT.
    pub providers_known: u64,
    /// Providers connected and serving now.
    pub providers_live: u64,
    /// Providers that delivered verified bytes.
    pub providers_used: u64,
    /// Providers dropped (corrupt data, missing, too slow).
    pub providers_dropped: u64,
    /// Seconds since the job started.
    pub seconds: f64,
    /// Verified bytes per second since the first provider connected.
    pub rate: f64,
}

/// `POST /v1/names/register` and `/v1/names/resolve` (`ferry name register|resolve NAME`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameRequest {
    /// The name (`a-z 0-9 . _ -`, 1–63 bytes; a leading `@` is ignored).
    pub name: String,
}

/// A name and what it resolves to.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameInfo {
    /// The normalized name.
    pub name: String,
    /// The owner's Tox ID (76 hex digits).
    pub tox_id: String,
    /// Fingerprint of the record's owner key (first 8 bytes, hex): tells look-alike names apart.
    pub fingerprint: String,
    /// When the record stops resolving unless renewed (Unix seconds).
    pub expires_unix: u64,
}

/// `POST /v1/channels/create` (`ferry channel create [--private] [--name N]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelCreate {
    /// Private: posts encrypted, members approved by the founder.
    #[serde(default)]
    pub private: bool,
    /// Display name (≤ 48 bytes).
    #[serde(default)]
    pub name: String,
}

/// A channel by id (`join`, `members`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRef {
    /// Channel id: the founder's Ed25519 channel key, 64 hex digits.
    pub id: String,
}

/// A channel as this node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Channel id, 64 hex digits.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Private channel.
    pub private: bool,
    /// `founder`, `member` (holds a certificate and the epoch key), `pending` (join request
    /// sent), `reader` (public channel) or `removed`.
    pub status: String,
    /// This node's member (author) key, 64 hex digits: what `ferry channel approve` takes.
    pub member_key: String,
    /// Current key epoch (private channels).
    pub epoch: u32,
}

/// `POST /v1/channels/post` (`ferry channel post ID TEXT|--file PATH`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelPost {
    /// Channel id.
    pub id: String,
    /// Text of a text post.
    #[serde(default)]
    pub text: String,
    /// File name of a file post (then `file_hex` holds the bytes).
    #[serde(default)]
    pub file_name: Option<String>,
    /// File bytes, hex.
    #[serde(default)]
    pub file_hex: String,
    /// Testing: publish even when this node may not post (members drop it).
    #[serde(default)]
    pub unchecked: bool,
}

/// Result of [`ChannelPost`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelPostResult {
    /// The post id (its value-store target), hex.
    pub post_id: String,
    /// The author's sequence number of the post.
    pub seq: u64,
    /// Nodes that stored the post.
    pub stored: u64,
}

/// `POST /v1/channels/read` (`ferry channel read ID`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelRead {
    /// Channel id.
    pub id: String,
    /// Fetch from the network first (else: what this node holds).
    #[serde(default)]
    pub sync: bool,
}

/// One post of [`ChannelRead`]'s answer (oldest first).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelMessage {
    /// Post id, hex.
    pub post_id: String,
    /// Author (member key), hex.
    pub author: String,
    /// Author's sequence number.
    pub seq: u64,
    /// Sent at (the author's clock), Unix seconds.
    pub sent_unix: u64,
    /// Text (text posts).
    pub text: String,
    /// File name (file posts).
    #[serde(default)]
    pub file_name: Option<String>,
    /// File bytes, hex (file posts).
    #[serde(default)]
    pub file_hex: String,
}

/// A member in [`ChannelMembers`].
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelMember {
    /// Member (author) key, hex.
    pub member_key: String,
    /// Box key (the node's Tox long-term public key), hex, when known.
    pub box_key: String,
    /// `admin`, `member` or `pending`.
    pub role: String,
}

/// `POST /v1/channels/members` answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelMembers {
    /// The channel.
    pub info: ChannelInfo,
    /// Admins, members (private), and join requests waiting (founder only).
    pub members: Vec<ChannelMember>,
    /// Removed member keys.
    pub removed: Vec<String>,
}

/// `POST /v1/channels/approve|remove` (`ferry channel approve|remove ID KEY`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelMemberRequest {
    /// Channel id.
    pub id: String,
    /// Member key or box (Tox public) key, hex.
    pub key: String,
}

/// One market contract in `GET /v1/contracts` (`ferry contracts`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MarketContract {
    /// The other side's long-term public key, hex.
    pub peer: String,
    /// `client` (we pay) or `server` (we forward and are paid).
    pub role: String,
    /// Agreed price per KiB, wei.
    pub price_per_kib: String,
    /// IP bytes metered on this contract so far, both directions (client → destination and
    /// the replies back).
    pub data_used_bytes: u64,
    /// Data the contract covers, bytes.
    pub data_limit_bytes: u64,
    /// Unix time (s) the contract ends.
    pub expires_at: u64,
    /// Paid by vouchers for the pair (client: vouchered; server: accepted), wei.
    pub paid: String,
    /// Due and not yet paid for the pair, wei.
    pub owed: String,
    /// `proposed`, `awaiting_channel`, `active` or `ended` (client: `negotiating`, `active`,
    /// `ended`, ...).
    pub state: String,
}

/// `GET /v1/earnings` (`ferry earnings`): what this node earned forwarding (issue 8), wei.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Earnings {
    /// Paid by accepted vouchers, over all peers.
    pub total: String,
    /// Redeemed on the ledger.
    pub claimed: String,
    /// `total - claimed`.
    pub unclaimed: String,
}

/// A boxed `Send` future, the return type of [`Backend`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the daemon implements to serve the API.
pub trait Backend: Send + Sync + 'static {
    /// `GET /v1/status`.
    fn status(&self) -> BoxFuture<'_, Result<Status, ApiError>>;
    /// `GET /v1/dht/nodes`.
    fn dht_nodes(&self) -> BoxFuture<'_, Result<Vec<DhtNode>, ApiError>>;
    /// `POST /v1/dht/bootstrap`.
    fn bootstrap(&self, req: BootstrapRequest) -> BoxFuture<'_, Result<(), ApiError>>;
    /// `POST /v1/dht/lookup`.
    fn lookup(&self, req: LookupRequest) -> BoxFuture<'_, Result<LookupResult, ApiError>>;
    /// `POST /v1/shutdown`: begin an orderly stop.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// `GET /v1/self`.
    fn self_info(&self) -> BoxFuture<'_, Result<SelfInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/self`.
    fn set_self(&self, _req: SelfUpdate) -> BoxFuture<'_, Result<SelfInfo, ApiError>> {
        unsupported()
    }
    /// `GET /v1/friends`.
    fn friends(&self) -> BoxFuture<'_, Result<Vec<Friend>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/add`.
    fn add_friend(&self, _req: AddFriend) -> BoxFuture<'_, Result<Friend, ApiError>> {
        unsupported()
    }
    /// `GET /v1/friends/requests`.
    fn friend_requests(&self) -> BoxFuture<'_, Result<Vec<FriendRequest>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/accept`.
    fn accept_friend(&self, _req: FriendKey) -> BoxFuture<'_, Result<Friend, ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/reject`.
    fn reject_friend(&self, _req: FriendKey) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/remove`.
    fn remove_friend(&self, _req: FriendKey) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/packet`.
    fn custom_packet(&self, _req: CustomPacket) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `POST /v1/friends/typing`.
    fn typing(&self, _req: Typing) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `POST /v1/messages/send`.
    fn send_message(&self, _req: SendMessage) -> BoxFuture<'_, Result<Message, ApiError>> {
        unsupported()
    }
    /// `POST /v1/messages/list`.
    fn messages(&self, _req: ListMessages) -> BoxFuture<'_, Result<Vec<Message>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/packets/list`.
    fn packets(&self, _req: ListPackets) -> BoxFuture<'_, Result<Vec<ReceivedPacket>, ApiError>> {
        unsupported()
    }
    /// `GET /v1/relay/status`.
    fn relay_status(&self) -> BoxFuture<'_, Result<RelayStatus, ApiError>> {
        Box::pin(async { Ok(RelayStatus::default()) })
    }
    /// `GET /v1/files`.
    fn files(&self) -> BoxFuture<'_, Result<Vec<FileTransfer>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/send`.
    fn send_file(&self, _req: SendFile) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/accept`.
    fn accept_file(&self, _req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/cancel`.
    fn cancel_file(&self, _req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/pause`.
    fn pause_file(&self, _req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/resume`.
    fn resume_file(&self, _req: FileAction) -> BoxFuture<'_, Result<FileTransfer, ApiError>> {
        unsupported()
    }
    /// `POST /v1/tunnel/up`.
    fn tunnel_up(&self, _req: TunnelUp) -> BoxFuture<'_, Result<TunnelStatus, ApiError>> {
        unsupported()
    }
    /// `POST /v1/tunnel/down`.
    fn tunnel_down(&self, _req: TunnelDown) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `GET /v1/tunnel/status`.
    fn tunnel_status(&self) -> BoxFuture<'_, Result<TunnelStatus, ApiError>> {
        unsupported()
    }
    /// `POST /v1/files/avatar`.
    fn set_avatar(&self, _req: SetAvatar) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `GET /v1/wallet`.
    fn wallet(&self) -> BoxFuture<'_, Result<Wallet, ApiError>> {
        unsupported()
    }
    /// `POST /v1/wallet/deposit`.
    fn wallet_deposit(&self, _req: WalletDeposit) -> BoxFuture<'_, Result<Wallet, ApiError>> {
        unsupported()
    }
    /// `GET /v1/contracts`.
    fn contracts(&self) -> BoxFuture<'_, Result<Vec<MarketContract>, ApiError>> {
        unsupported()
    }
    /// `GET /v1/earnings`.
    fn earnings(&self) -> BoxFuture<'_, Result<Earnings, ApiError>> {
        unsupported()
    }
    /// `GET /v1/store/status`.
    fn store_status(&self) -> BoxFuture<'_, Result<StoreStatus, ApiError>> {
        unsupported()
    }
    /// `POST /v1/dht/put`.
    fn dht_put(&self, _req: DhtPut) -> BoxFuture<'_, Result<DhtPutResult, ApiError>> {
        unsupported()
    }
    /// `POST /v1/dht/get`.
    fn dht_get(&self, _req: DhtGet) -> BoxFuture<'_, Result<DhtGetResult, ApiError>> {
        unsupported()
    }
    /// `POST /v1/names/register`.
    fn name_register(&self, _req: NameRequest) -> BoxFuture<'_, Result<NameInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/names/resolve`.
    fn name_resolve(&self, _req: NameRequest) -> BoxFuture<'_, Result<NameInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/create`.
    fn channel_create(&self, _req: ChannelCreate) -> BoxFuture<'_, Result<ChannelInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/join`.
    fn channel_join(&self, _req: ChannelRef) -> BoxFuture<'_, Result<ChannelInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/post`.
    fn channel_post(
        &self,
        _req: ChannelPost,
    ) -> BoxFuture<'_, Result<ChannelPostResult, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/read`.
    fn channel_read(
        &self,
        _req: ChannelRead,
    ) -> BoxFuture<'_, Result<Vec<ChannelMessage>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/members`.
    fn channel_members(&self, _req: ChannelRef) -> BoxFuture<'_, Result<ChannelMembers, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/approve`.
    fn channel_approve(
        &self,
        _req: ChannelMemberRequest,
    ) -> BoxFuture<'_, Result<ChannelMembers, ApiError>> {
        unsupported()
    }
    /// `POST /v1/channels/remove`.
    fn channel_remove(
        &self,
        _req: ChannelMemberRequest,
    ) -> BoxFuture<'_, Result<ChannelMembers, ApiError>> {
        unsupported()
    }
    /// `POST /v1/content/publish`.
    fn content_publish(
        &self,
        _req: ContentPublish,
    ) -> BoxFuture<'_, Result<ContentPublished, ApiError>> {
        unsupported()
    }
    /// `POST /v1/content/fetch`.
    fn content_fetch(&self, _req: ContentFetch) -> BoxFuture<'_, Result<ContentJob, ApiError>> {
        unsupported()
    }
    /// `POST /v1/content/job`.
    fn content_job(&self, _req: ContentJobQuery) -> BoxFuture<'_, Result<ContentJob, ApiError>> {
        unsupported()
    }
    /// `POST /v1/content/pin`.
    fn content_pin(&self, _req: ContentPin) -> BoxFuture<'_, Result<PinStatus, ApiError>> {
        unsupported()
    }
    /// `GET /v1/content/pins`.
    fn content_pins(&self) -> BoxFuture<'_, Result<Vec<PinStatus>, ApiError>> {
        unsupported()
    }
    /// `GET /v1/content/credits`.
    fn content_credits(&self) -> BoxFuture<'_, Result<Vec<CreditAccount>, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/publish`.
    fn stream_publish(&self, _req: StreamPublish) -> BoxFuture<'_, Result<StreamInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/push`.
    fn stream_push(&self, _req: StreamPush) -> BoxFuture<'_, Result<StreamStatus, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/watch`.
    fn stream_watch(&self, _req: StreamWatch) -> BoxFuture<'_, Result<StreamInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/read`.
    fn stream_read(&self, _req: StreamRead) -> BoxFuture<'_, Result<StreamChunk, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/status`.
    fn stream_status(&self, _req: StreamQuery) -> BoxFuture<'_, Result<StreamStatus, ApiError>> {
        unsupported()
    }
    /// `POST /v1/stream/close`.
    fn stream_close(&self, _req: StreamQuery) -> BoxFuture<'_, Result<(), ApiError>> {
        unsupported()
    }
    /// `POST /v1/site/publish`.
    fn site_publish(&self, _req: SitePublish) -> BoxFuture<'_, Result<SiteInfo, ApiError>> {
        unsupported()
    }
    /// `POST /v1/site/resolve`.
    fn site_resolve(&self, _req: NameRequest) -> BoxFuture<'_, Result<SiteInfo, ApiError>> {
        unsupported()
    }
}

fn unsupported<T: Send + 'static>() -> BoxFuture<'static, Result<T, ApiError>> {
    Box::pin(async { Err(ApiError::not_found("not supported by this node")) })
}

macro_rules! handler {
    ($name:ident, get, $method:ident, $out:ty) => {
        async fn $name<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<$out>, ApiError> {
            b.$method().await.map(Json)
        }
    };
    ($name:ident, post, $method:ident, $in:ty, $out:ty) => {
        async fn $name<B: Backend>(
            State(b): State<Arc<B>>,
            Json(req): Json<$in>,
        ) -> Result<Json<$out>, ApiError> {
            b.$method(req).await.map(Json)
        }
    };
    ($name:ident, post_ok, $method:ident, $in:ty) => {
        async fn $name<B: Backend>(
            State(b): State<Arc<B>>,
            Json(req): Json<$in>,
        ) -> Result<Json<Ok>, ApiError> {
            b.$method(req).await.map(|()| Json(Ok { ok: true }))
        }
    };
}

handler!(self_info, get, self_info, SelfInfo);
handler!(set_self, post, set_self, SelfUpdate, SelfInfo);
handler!(friends, get, friends, Vec<Friend>);
handler!(add_friend, post, add_friend, AddFriend, Friend);
handler!(friend_requests, get, friend_requests, Vec<FriendRequest>);
handler!(accept_friend, post, accept_friend, FriendKey, Friend);
handler!(reject_friend, post_ok, reject_friend, FriendKey);
handler!(remove_friend, post_ok, remove_friend, FriendKey);
handler!(custom_packet, post_ok, custom_packet, CustomPacket);
handler!(typing, post_ok, typing, Typing);
handler!(send_message, post, send_message, SendMessage, Message);
handler!(messages, post, messages, ListMessages, Vec<Message>);
handler!(packets, post, packets, ListPackets, Vec<ReceivedPacket>);
handler!(relay_status, get, relay_status, RelayStatus);
handler!(files, get, files, Vec<FileTransfer>);
handler!(send_file, post, send_file, SendFile, FileTransfer);
handler!(accept_file, post, accept_file, FileAction, FileTransfer);
handler!(cancel_file, post, cancel_file, FileAction, FileTransfer);
handler!(pause_file, post, pause_file, FileAction, FileTransfer);
handler!(resume_file, post, resume_file, FileAction, FileTransfer);
handler!(set_avatar, post_ok, set_avatar, SetAvatar);
handler!(tunnel_up, post, tunnel_up, TunnelUp, TunnelStatus);
handler!(tunnel_down, post_ok, tunnel_down, TunnelDown);
handler!(tunnel_status, get, tunnel_status, TunnelStatus);
handler!(wallet, get, wallet, Wallet);
handler!(wallet_deposit, post, wallet_deposit, WalletDeposit, Wallet);
handler!(contracts, get, contracts, Vec<MarketContract>);
handler!(earnings, get, earnings, Earnings);
handler!(store_status, get, store_status, StoreStatus);
handler!(dht_put, post, dht_put, DhtPut, DhtPutResult);
handler!(dht_get, post, dht_get, DhtGet, DhtGetResult);
handler!(name_register, post, name_register, NameRequest, NameInfo);
handler!(name_resolve, post, name_resolve, NameRequest, NameInfo);
handler!(
    channel_create,
    post,
    channel_create,
    ChannelCreate,
    ChannelInfo
);
handler!(channel_join, post, channel_join, ChannelRef, ChannelInfo);
handler!(
    channel_post,
    post,
    channel_post,
    ChannelPost,
    ChannelPostResult
);
handler!(
    channel_read,
    post,
    channel_read,
    ChannelRead,
    Vec<ChannelMessage>
);
handler!(
    channel_members,
    post,
    channel_members,
    ChannelRef,
    ChannelMembers
);
handler!(
    channel_approve,
    post,
    channel_approve,
    ChannelMemberRequest,
    ChannelMembers
);
handler!(
    channel_remove,
    post,
    channel_remove,
    ChannelMemberRequest,
    ChannelMembers
);
handler!(
    content_publish,
    post,
    content_publish,
    ContentPublish,
    ContentPublished
);
handler!(content_fetch, post, content_fetch, ContentFetch, ContentJob);
handler!(content_job, post, content_job, ContentJobQuery, ContentJob);
handler!(site_publish, post, site_publish, SitePublish, SiteInfo);
handler!(content_credits, get, content_credits, Vec<CreditAccount>);
handler!(
    stream_publish,
    post,
    stream_publish,
    StreamPublish,
    StreamInfo
);
handler!(stream_push, post, stream_push, StreamPush, StreamStatus);
handler!(stream_watch, post, stream_watch, StreamWatch, StreamInfo);
handler!(stream_read, post, stream_read, StreamRead, StreamChunk);
handler!(
    stream_status,
    post,
    stream_status,
    StreamQuery,
    StreamStatus
);
handler!(stream_close, post_ok, stream_close, StreamQuery);
handler!(content_pin, post, content_pin, ContentPin, PinStatus);
handler!(content_pins, get, content_pins, Vec<PinStatus>);
handler!(site_resolve, post, site_resolve, NameRequest, SiteInfo);

/// The v1 router over a backend.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/v1/status", get(status::<B>))
        .route("/v1/dht/nodes", get(dht_nodes::<B>))
        .route("/v1/dht/bootstrap", post(bootstrap::<B>))
        .route("/v1/dht/lookup", post(lookup::<B>))
        .route("/v1/shutdown", post(shutdown::<B>))
        .route("/v1/self", get(self_info::<B>).post(set_self::<B>))
        .route("/v1/friends", get(friends::<B>))
        .route("/v1/friends/add", post(add_friend::<B>))
        .route("/v1/friends/requests", get(friend_requests::<B>))
        .route("/v1/friends/accept", post(accept_friend::<B>))
        .route("/v1/friends/reject", post(reject_friend::<B>))
        .route("/v1/friends/remove", post(remove_friend::<B>))
        .route("/v1/friends/packet", post(custom_packet::<B>))
        .route("/v1/friends/typing", post(typing::<B>))
        .route("/v1/messages/send", post(send_message::<B>))
        .route("/v1/messages/list", post(messages::<B>))
        .route("/v1/packets/list", post(packets::<B>))
        .route("/v1/relay/status", get(relay_status::<B>))
        .route("/v1/files", get(files::<B>))
        .route("/v1/files/send", post(send_file::<B>))
        .route("/v1/files/accept", post(accept_file::<B>))
        .route("/v1/files/cancel", post(cancel_file::<B>))
        .route("/v1/files/pause", post(pause_file::<B>))
        .route("/v1/files/resume", post(resume_file::<B>))
        .route("/v1/files/avatar", post(set_avatar::<B>))
        .route("/v1/tunnel/up", post(tunnel_up::<B>))
        .route("/v1/tunnel/down", post(tunnel_down::<B>))
        .route("/v1/tunnel/status", get(tunnel_status::<B>))
        .route("/v1/wallet", get(wallet::<B>))
        .route("/v1/wallet/deposit", post(wallet_deposit::<B>))
        .route("/v1/contracts", get(contracts::<B>))
        .route("/v1/earnings", get(earnings::<B>))
        .route("/v1/store/status", get(store_status::<B>))
        .route("/v1/dht/put", post(dht_put::<B>))
        .route("/v1/dht/get", post(dht_get::<B>))
        .route("/v1/names/register", post(name_register::<B>))
        .route("/v1/names/resolve", post(name_resolve::<B>))
        .route("/v1/channels/create", post(channel_create::<B>))
        .route("/v1/channels/join", post(channel_join::<B>))
        .route("/v1/channels/post", post(channel_post::<B>))
        .route("/v1/channels/read", post(channel_read::<B>))
        .route("/v1/channels/members", post(channel_members::<B>))
        .route("/v1/channels/approve", post(channel_approve::<B>))
        .route("/v1/channels/remove", post(channel_remove::<B>))
        .route("/v1/content/publish", post(content_publish::<B>))
        .route("/v1/content/fetch", post(content_fetch::<B>))
        .route("/v1/content/job", post(content_job::<B>))
        .route("/v1/site/publish", post(site_publish::<B>))
        .route("/v1/content/credits", get(content_credits::<B>))
        .route("/v1/stream/publish", post(stream_publish::<B>))
        .route("/v1/stream/push", post(stream_push::<B>))
        .route("/v1/stream/watch", post(stream_watch::<B>))
        .route("/v1/stream/read", post(stream_read::<B>))
        .route("/v1/stream/status", post(stream_status::<B>))
        .route("/v1/stream/close", post(stream_close::<B>))
        .route("/v1/content/pin", post(content_pin::<B>))
        .route("/v1/content/pins", get(content_pins::<B>))
        .route("/v1/site/resolve", post(site_resolve::<B>))
        .with_state(backend)
}

async fn status<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Status>, ApiError> {
    b.status().await.map(Json)
}

async fn dht_nodes<B: Backend>(State(b): State<Arc<B>>) -> Result<Json<Vec<DhtNode>>, ApiError> {
    b.dht_nodes().await.map(Json)
}

async fn bootstrap<B: Backend>(
    State(b): State<Arc<B>>,
    Json(req): Json<BootstrapRequest>,
) -> Result<Json<Ok>, ApiError> {
    b.bootstrap(req).await.map(|()| Json(Ok { ok: true }))
}

async fn lookup<B: Backend>(
    State(b): State<Arc<B>>,
    Json(req): Json<LookupRequest>,
) -> Result<Json<LookupResult>, ApiError> {
    b.lookup(req).await.map(Json)
}

async fn shutdown<B: Backend>(State(b): State<Arc<B>>) -> Json<Ok> {
    b.shutdown().await;
    Json(Ok { ok: true })
}

/// Binds the control socket at `path` with mode 0600, replacing a stale socket file (one nobody
/// answers on).
///
/// # Errors
/// `AddrInUse` when a live daemon already answers on `path`; other I/O errors as they come.
pub async fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a ferry daemon is already running on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: tokio::net::UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Path of the control socket of the profile at `profile_dir`.
pub fn socket_path(profile_dir: &Path) -> PathBuf {
    profile_dir.join(SOCKET_NAME)
}
