//! Live streams in `ferry up` (issue 10 item 5; `data-layer.md` §3.7): the daemon's host for
//! the sans-IO [`ferry_swarm::stream::StreamNode`] (signed segments, two-stripe push tree, pull
//! repair, playback accounting).
//!
//! # Keys and ids
//! A stream published under `NAME` is signed by the Ed25519 key
//! `BLAKE3-derive("ferry v1 stream key", long-term secret ‖ NAME)`; its verifying key is the
//! stream id (64 hex digits), so the same node re-publishing the same name keeps its id.
//!
//! # Discovery (DHT value store)
//! The streamer puts an announcement as a multi-writer mail envelope (as content provider
//! records do, [`crate::content`]) at two targets: `BLAKE3-derive("ferry v1 stream name", NAME)`
//! (so `watch NAME` finds it) and `BLAKE3-derive("ferry v1 stream", id)` (`watch ID`), TTL 2 h
//! (not re-announced: a stream that runs longer is watched by peers that already joined).
//!
//! | field | size |
//! |---|---|
//! | version | 1 (= 1) |
//! | stream id | 32 |
//! | name length | 1 |
//! | name | 0..=64 |
//! | provider record of the streamer ([`ProviderRecord`]) | 68..=84 |
//!
//! Announcements are not signed: a false one only leads a viewer to another stream (every
//! segment is verified against the id the viewer joined). `watch NAME` takes the first valid
//! announcement found: names are not unique; `watch ID` is exact.
//!
//! # Transport
//! The streamer is the tracker. [`StreamMsg`]s travel as net_crypto lossless custom packets
//! `[STREAM_PACKET_ID = 178][kind u8][bytes]` (≤ 1373 B) over sessions to non-friends opened the
//! way the content layer does it ([`Node::add_friend_norequest`] + [`Node::set_friend_dht_key`];
//! a node hosting a stream accepts unknown peers as guests, at most [`MAX_PEERS`]):
//! * kind 1: a non-final fragment of a message; kind 0: the final fragment (a message is the
//!   concatenation of its fragments; sessions are ordered and reliable, and a message's
//!   fragments are queued back to back, so no ids are needed; ≤ [`MAX_MESSAGE`] bytes);
//! * kind 2: contacts, `[count u8]` then per contact `[len u8][ProviderRecord]`: sent by the
//!   tracker just before a `Peers` message so the viewer can open sessions to the listed peers.
//!
//! `StreamNode` addresses peers by `SocketAddr`; the host gives each long-term key a synthetic
//! IPv6 address ([`peer_addr`]) and maps it back.
//!
//! # Output (viewers)
//! A viewer writes verified segments in order from the first segment it can play: the segment
//! its playback starts at (the newest run of 3 buffered segments), extended back over the
//! contiguous run of segments already buffered before it (pushed or pulled while starting). A
//! viewer that joined before the stream began therefore gets it from seq 0; a late joiner gets
//! it from a segment boundary near the live edge, at most the 30 s live window back (in the
//! loopback test a viewer joining 3 segments into an 8 s stream got all of it). A segment its
//! playback skipped (missing past the 3 s stall limit) is left out and counted as a gap. The
//! streamer ends the stream by pushing an empty segment.
//!
//! # Caps
//! Hosted streams ≤ [`MAX_STREAMS`]; peers ≤ [`MAX_PEERS`]; contacts ≤ [`MAX_CONTACTS`]; queued
//! bytes per peer ≤ [`MAX_PEER_QUEUE`] and in all ≤ [`MAX_QUEUED`] (whole messages beyond it
//! are dropped; pull repair recovers segments; a peer's queue is cleared when its session
//! goes down); unread output per viewer ≤ [`MAX_OUTPUT`] (oldest bytes dropped and
//! counted as gaps).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ferry_api::{ApiError, StreamChunk, StreamInfo, StreamStatus};
use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;
use ferry_data::item::{Item, MailEnvelope, Target};
use ferry_net::NodeHandle;
use ferry_proto::Endpoint;
use ferry_proto::node::Node;
use ferry_swarm::stream::{StreamConfig, StreamEvent, StreamNode};
use ferry_swarm::wire::{StreamId, StreamMsg};
use ferry_wire::node::PackedNode;
use tokio::sync::Notify;

use crate::content::ProviderRecord;
use crate::data::DataShared;

/// Lossless custom packet id of stream messages: 178.
pub const STREAM_PACKET_ID: u8 = 178;
/// Largest custom packet (id included): 1373 B.
const MAX_PACKET: usize = 1373;
/// Most bytes of one reassembled message: 1 MiB + 4 KiB.
pub const MAX_MESSAGE: usize = (1 << 20) + 4096;
/// Most hosted streams (published or watched) at once: 8.
pub const MAX_STREAMS: usize = 8;
/// Most peers with stream sessions: 256.
pub const MAX_PEERS: usize = 256;
/// Most known contacts: 4096.
pub const MAX_CONTACTS: usize = 4096;
/// Most bytes queued to one peer: 8 MiB.
pub const MAX_PEER_QUEUE: usize = 8 << 20;
/// Most bytes queued to all peers: 64 MiB.
pub const MAX_QUEUED: usize = 64 << 20;
/// Most unread output bytes per watched stream: 64 MiB.
pub const MAX_OUTPUT: usize = 64 << 20;
/// Most bytes of one `read` answer: 512 KiB.
pub const MAX_READ: usize = 512 << 10;
/// Largest segment a streamer takes: 256 KiB.
pub const MAX_SEGMENT: usize = 256 << 10;
/// Nominal stream rate for the tree's slot rule: 256 KiB/s.
pub const NOMINAL_RATE: u64 = 256 << 10;
/// Upload this node offers to the tree: 8 MiB/s.
pub const UPLOAD: u64 = 8 << 20;
/// Announcement lifetime: 2 h.
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(2 * 3600);
/// `watch` looks for the announcement this long: 30 s.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pump period: 5 ms.
pub const TICK: Duration = Duration::from_millis(5);

/// The synthetic address [`StreamNode`] knows peer `pk` by (IPv6 from the key's first 16
/// bytes, port from the next 2).
pub fn peer_addr(pk: &PublicKey) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&pk.0[..16]);
    let port = u16::from_be_bytes([pk.0[16], pk.0[17]]).max(1);
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
}

/// Announcement target for `name`.
pub fn name_target(name: &str) -> Target {
    Target(blake3::derive_key("ferry v1 stream name", name.as_bytes()))
}

/// Announcement target for a stream id.
pub fn id_target(id: &StreamId) -> Target {
    Target(blake3::derive_key("ferry v1 stream", id))
}

/// A streamer's DHT announcement (layout in the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Stream id.
    pub id: StreamId,
    /// Stream name.
    pub name: String,
    /// How to reach the streamer.
    pub streamer: ProviderRecord,
}

impl Announcement {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![1];
        b.extend_from_slice(&self.id);
        b.push(self.name.len() as u8);
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&self.streamer.encode());
        b
    }

    /// Decodes; `None` on any malformation.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 34 || b[0] != 1 {
            return None;
        }
        let id: StreamId = b[1..33].try_into().ok()?;
        let n = usize::from(b[33]);
        let name = std::str::from_utf8(b.get(34..34 + n)?).ok()?.to_string();
        let streamer = ProviderRecord::decode(b.get(34 + n..)?)?;
        Some(Self { id, name, streamer })
    }
}

#[derive(Clone, Copy)]
struct Contact {
    pk: PublicKey,
    dht_pk: Option<PublicKey>,
    addr: Option<SocketAddr>,
}

#[derive(Default)]
struct Peer {
    online: bool,
    added: bool,
    dialed: bool,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    rx: Vec<u8>,
}

struct Viewer {
    next_out: Option<u64>,
    out: VecDeque<u8>,
    segments: u64,
    bytes: u64,
    gaps: u64,
    startup_ms: Option<u64>,
    ended: bool,
}

struct Hosted {
    node: StreamNode,
    viewer: Option<Viewer>,
    pushed: u64,
    pushed_bytes: u64,
}

#[derive(Default)]
struct State {
    streams: HashMap<StreamId, Hosted>,
    contacts: HashMap<SocketAddr, Contact>,
    peers: HashMap<PublicKey, Peer>,
}

/// The daemon's streams (shared by the API, the packet handler and the pump task).
pub struct StreamShared {
    own_pk: PublicKey,
    secret: [u8; 32],
    state: Mutex<State>,
    changed: Notify,
}

impl std::fmt::Debug for StreamShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamShared")
            .field("own_pk", &self.own_pk)
            .field("streams", &lock(&self.state).streams.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(e.to_string())
}

fn parse_id(s: &str) -> Option<StreamId> {
    let b = hex::decode(s.trim()).ok()?;
    b.try_into().ok()
}

fn rng() -> Result<FerryRng, ApiError> {
    Ok(FerryRng::from_seed(
        ferry_crypto::rng::os_seed().map_err(unavailable)?,
    ))
}

impl StreamShared {
    /// A host for the node whose long-term key pair is (`own_pk`, `secret`).
    pub fn new(own_pk: PublicKey, secret: [u8; 32]) -> Arc<Self> {
        Arc::new(Self {
            own_pk,
            secret,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn signing_key(&self, name: &str) -> SigningKey {
        let mut m = self.secret.to_vec();
        m.extend_from_slice(name.as_bytes());
        SigningKey::from_bytes(&blake3::derive_key("ferry v1 stream key", &m))
    }

    fn our(&self) -> PackedNode {
        PackedNode::udp(peer_addr(&self.own_pk), self.own_pk)
    }

    /// `POST /v1/stream/publish`.
    ///
    /// # Errors
    /// Bad name, too many streams, no value store.
    pub async fn publish(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: Option<Arc<DataShared>>,
        name: String,
    ) -> Result<StreamInfo, ApiError> {
        if name.is_empty() || name.len() > 64 {
            return Err(ApiError::bad_request("a stream name has 1..=64 bytes"));
        }
        let key = self.signing_key(&name);
        let id = key.verifying_key().to_bytes();
        let r = rng()?;
        let me = Arc::clone(self);
        node.call(move |_n, now| {
            let mut st = lock(&me.state);
            if st.streams.contains_key(&id) {
                return Ok(());
            }
            if st.streams.len() >= MAX_STREAMS {
                return Err(ApiError::unavailable("too many streams"));
            }
            let config = StreamConfig::new(NOMINAL_RATE, UPLOAD);
            let sn = StreamNode::streamer(config, key, me.our(), r, now);
            st.streams.insert(
                id,
                Hosted {
                    node: sn,
                    viewer: None,
                    pushed: 0,
                    pushed_bytes: 0,
                },
            );
            Ok(())
        })
        .await
        .map_err(unavailable)??;
        let announced = match data {
            Some(d) => self.announce(node, &d, id, &name).await.unwrap_or(0),
            None => 0,
        };
        tracing::info!(stream = %hex::encode(id), %name, announced, "stream published");
        Ok(StreamInfo {
            id: hex::encode(id),
            name,
            announced: announced as u64,
        })
    }

    async fn announce(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: &Arc<DataShared>,
        id: StreamId,
        name: &str,
    ) -> Result<usize, ApiError> {
        let status = node.status().await.map_err(unavailable)?;
        let addr = Some(status.local_addr).filter(|a| !a.ip().is_unspecified());
        let rec = Announcement {
            id,
            name: name.to_string(),
            streamer: ProviderRecord {
                public_key: self.own_pk,
                dht_pk: status.dht_public_key,
                addr,
            },
        }
        .encode();
        let bits = data.mail_pow_bits();
        let mut stored = 0;
        for target in [name_target(name), id_target(&id)] {
            let rec = rec.clone();
            let env = tokio::task::spawn_blocking(move || {
                let mut env = MailEnvelope {
                    delete_hash: blake3::derive_key("ferry v1 stream announcement", &rec),
                    pow: 0,
                    sealed: rec,
                };
                env.solve_pow(&target, bits);
                env
            })
            .await
            .map_err(unavailable)?;
            stored += data
                .put_item(node, target, Item::Mail(env), ANNOUNCE_TTL.as_secs() as u32)
                .await?;
        }
        Ok(stored)
    }

    /// `POST /v1/stream/push`: one segment (or the end).
    ///
    /// # Errors
    /// Unknown stream, not the streamer, bad hex, too large.
    pub async fn push(
        self: &Arc<Self>,
        node: &NodeHandle,
        req: ferry_api::StreamPush,
    ) -> Result<StreamStatus, ApiError> {
        let id = parse_id(&req.id).ok_or_else(|| ApiError::bad_request("bad stream id"))?;
        let bytes = if req.end {
            Vec::new()
        } else {
            hex::decode(&req.data_hex).map_err(|e| ApiError::bad_request(e.to_string()))?
        };
        if bytes.len() > MAX_SEGMENT {
            return Err(ApiError::bad_request("a segment has at most 256 KiB"));
        }
        if !req.end && bytes.is_empty() {
            return Err(ApiError::bad_request("empty segment (use end)"));
        }
        let me = Arc::clone(self);
        node.call(move |n, now| {
            let mut st = lock(&me.state);
            let h = st
                .streams
                .get_mut(&id)
                .ok_or_else(|| ApiError::not_found("no such stream"))?;
            let len = bytes.len() as u64;
            h.node
                .push_segment(now, bytes)
                .ok_or_else(|| ApiError::bad_request("not the streamer of this stream"))?;
            h.pushed += 1;
            h.pushed_bytes += len;
            me.drive(&mut st, n, now);
            Ok(status_of(&id, st.streams.get(&id).expect("just used"), now))
        })
        .await
        .map_err(unavailable)?
    }

    /// `POST /v1/stream/watch`: finds the announcement and joins.
    ///
    /// # Errors
    /// Not found in time, too many streams.
    pub async fn watch(
        self: &Arc<Self>,
        node: &NodeHandle,
        data: Option<Arc<DataShared>>,
        stream: String,
    ) -> Result<StreamInfo, ApiError> {
        let data = data.ok_or_else(|| ApiError::not_found("this node has no value store"))?;
        let by_id = parse_id(&stream);
        let target = by_id.map_or_else(|| name_target(&stream), |id| id_target(&id));
        let started = Instant::now();
        let ann = loop {
            if let Ok(items) = data.get_items(node, target).await {
                let found = items.into_iter().find_map(|i| {
                    let Item::Mail(env) = i else { return None };
                    Announcement::decode(&env.sealed).filter(|a| match by_id {
                        Some(id) => a.id == id,
                        None => a.name == stream,
                    })
                });
                if let Some(a) = found {
                    break a;
                }
            }
            if started.elapsed() > LOOKUP_TIMEOUT {
                return Err(ApiError::not_found(format!(
                    "no announcement of stream {stream} found in the DHT"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let id = ann.id;
        let r = rng()?;
        let me = Arc::clone(self);
        let rec = ann.streamer.clone();
        node.call(move |n, now| {
            let mut st = lock(&me.state);
            if st.streams.contains_key(&id) {
                return Ok(());
            }
            if st.streams.len() >= MAX_STREAMS {
                return Err(ApiError::unavailable("too many streams"));
            }
            let tracker = peer_addr(&rec.public_key);
            insert_contact(
                &mut st,
                Contact {
                    pk: rec.public_key,
                    dht_pk: Some(rec.dht_pk),
                    addr: rec.addr,
                },
            );
            let config = StreamConfig::new(NOMINAL_RATE, UPLOAD);
            let mut sn = StreamNode::viewer(config, id, me.our(), tracker, r, now);
            sn.start(now);
            st.streams.insert(
                id,
                Hosted {
                    node: sn,
                    viewer: Some(Viewer {
                        next_out: None,
                        out: VecDeque::new(),
                        segments: 0,
                        bytes: 0,
                        gaps: 0,
                        startup_ms: None,
                        ended: false,
                    }),
                    pushed: 0,
                    pushed_bytes: 0,
                },
            );
            me.drive(&mut st, n, now);
            Ok(())
        })
        .await
        .map_err(unavailable)??;
        tracing::info!(stream = %hex::encode(id), streamer = %ann.streamer.public_key, "watching stream");
        Ok(StreamInfo {
            id: hex::encode(id),
            name: ann.name,
            announced: 0,
        })
    }

    /// `POST /v1/stream/read`: long-poll for the next bytes.
    ///
    /// # Errors
    /// Unknown stream.
    pub async fn read(&self, req: ferry_api::StreamRead) -> Result<StreamChunk, ApiError> {
        let id = parse_id(&req.id).ok_or_else(|| ApiError::bad_request("bad stream id"))?;
        let deadline = Instant::now() + Duration::from_millis(req.wait_ms.min(10_000));
        loop {
            let notified = self.changed.notified();
            {
                let mut st = lock(&self.state);
                let now = Instant::now();
                let h = st
                    .streams
                    .get_mut(&id)
                    .ok_or_else(|| ApiError::not_found("no such stream"))?;
                let v = h
                    .viewer
                    .as_mut()
                    .ok_or_else(|| ApiError::bad_request("not watching this stream"))?;
                if !v.out.is_empty() || v.ended || now >= deadline {
                    let n = v.out.len().min(MAX_READ);
                    let bytes: Vec<u8> = v.out.drain(..n).collect();
                    let ended = v.ended && v.out.is_empty();
                    let status = status_of(&id, h, now);
                    return Ok(StreamChunk {
                        data_hex: hex::encode(bytes),
                        ended,
                        status,
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// `POST /v1/stream/status`.
    ///
    /// # Errors
    /// Unknown stream.
    pub fn status(&self, id: &str) -> Result<StreamStatus, ApiError> {
        let id = parse_id(id).ok_or_else(|| ApiError::bad_request("bad stream id"))?;
        let st = lock(&self.state);
        let h = st
            .streams
            .get(&id)
            .ok_or_else(|| ApiError::not_found("no such stream"))?;
        Ok(status_of(&id, h, Instant::now()))
    }

    /// `POST /v1/stream/close`: stops hosting the stream (peers added for streams are dropped
    /// when no stream is left).
    ///
    /// # Errors
    /// Unknown stream.
    pub async fn close(self: &Arc<Self>, node: &NodeHandle, id: &str) -> Result<(), ApiError> {
        let id = parse_id(id).ok_or_else(|| ApiError::bad_request("bad stream id"))?;
        let me = Arc::clone(self);
        node.call(move |n, now| {
            let mut st = lock(&me.state);
            st.streams
                .remove(&id)
                .ok_or_else(|| ApiError::not_found("no such stream"))?;
            if st.streams.is_empty() {
                for (pk, p) in std::mem::take(&mut st.peers) {
                    if p.added {
                        let _ = n.remove_friend(now, &pk);
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(unavailable)?
    }

    /// A handshake from an unknown key: accepted as a guest while we host a stream.
    pub fn on_unknown_peer(
        &self,
        n: &mut Node,
        now: Instant,
        pk: PublicKey,
        dht_pk: PublicKey,
        addr: SocketAddr,
    ) {
        let mut st = lock(&self.state);
        if st.streams.is_empty() || st.peers.len() >= MAX_PEERS {
            return;
        }
        let addr = Some(addr).filter(|a| *a != ferry_proto::net_crypto::RELAY_ADDR);
        insert_contact(
            &mut st,
            Contact {
                pk,
                dht_pk: Some(dht_pk),
                addr,
            },
        );
        let added = n.add_friend_norequest(now, pk).is_ok();
        if added {
            let _ = n.set_friend_dht_key(now, &pk, dht_pk, addr);
            tracing::debug!(peer = %pk, "stream guest accepted");
        }
        let p = st.peers.entry(pk).or_default();
        p.added |= added;
        p.dialed = true;
    }

    /// A friend's (or guest's) session came up or went down.
    pub fn peer_connection(&self, n: &mut Node, now: Instant, pk: PublicKey, online: bool) {
        let mut st = lock(&self.state);
        if let Some(p) = st.peers.get_mut(&pk) {
            if p.online && !online {
                p.out.clear();
                p.out_bytes = 0;
                // Re-dialed on the next message (the friend entry may be gone, e.g. a content
                // guest expired by the content layer).
                p.dialed = false;
            }
            p.online = online;
            p.rx.clear();
            if online {
                self.drive(&mut st, n, now);
            }
        }
    }

    /// A stream packet (178) from a peer.
    pub fn on_packet(&self, n: &mut Node, now: Instant, pk: PublicKey, data: &[u8]) {
        let mut st = lock(&self.state);
        if st.streams.is_empty() || data.len() < 2 {
            return;
        }
        if !st.peers.contains_key(&pk) && st.peers.len() >= MAX_PEERS {
            return;
        }
        let from = peer_addr(&pk);
        if !st.contacts.contains_key(&from) {
            insert_contact(
                &mut st,
                Contact {
                    pk,
                    dht_pk: None,
                    addr: None,
                },
            );
        }
        let p = st.peers.entry(pk).or_default();
        p.online = true;
        match data[1] {
            0 | 1 => {
                if p.rx.len() + data.len() - 2 > MAX_MESSAGE {
                    p.rx.clear();
                    return;
                }
                p.rx.extend_from_slice(&data[2..]);
                if data[1] == 1 {
                    return;
                }
                let msg = std::mem::take(&mut p.rx);
                for h in st.streams.values_mut() {
                    h.node.handle_datagram(now, from, &msg);
                }
                self.drive(&mut st, n, now);
            }
            2 => {
                let mut b = &data[2..];
                let Some((&count, rest)) = b.split_first() else {
                    return;
                };
                b = rest;
                for _ in 0..count {
                    let Some((&len, rest)) = b.split_first() else {
                        return;
                    };
                    let Some(rec) = rest.get(..usize::from(len)) else {
                        return;
                    };
                    if let Some(r) = ProviderRecord::decode(rec)
                        && r.public_key != self.own_pk
                    {
                        insert_contact(
                            &mut st,
                            Contact {
                                pk: r.public_key,
                                dht_pk: Some(r.dht_pk),
                                addr: r.addr,
                            },
                        );
                    }
                    b = &rest[usize::from(len)..];
                }
            }
            _ => {}
        }
    }

    /// Periodic work: timers, transmits, output, queues. Returns whether anything is hosted.
    pub fn tick(&self, n: &mut Node, now: Instant) -> bool {
        let mut st = lock(&self.state);
        if st.streams.is_empty() {
            return false;
        }
        for h in st.streams.values_mut() {
            if now >= h.node.poll_timeout() {
                h.node.handle_timeout(now);
            }
        }
        self.drive(&mut st, n, now);
        true
    }

    /// Flushes every stream node's transmits and events, copies viewer output, pumps queues.
    fn drive(&self, st: &mut State, n: &mut Node, now: Instant) {
        let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        let mut woke = false;
        for h in st.streams.values_mut() {
            while let Some(t) = h.node.poll_transmit() {
                if let ferry_proto::Destination::Addr(a) = t.destination {
                    sends.push((a, t.payload));
                }
            }
            while let Some(e) = h.node.poll_event() {
                if let (StreamEvent::Playing { startup, seq }, Some(v)) = (e, h.viewer.as_mut()) {
                    v.startup_ms = Some(startup.as_millis() as u64);
                    if v.next_out.is_none() {
                        let mut s = seq;
                        while s > 0 && h.node.segment_data(s - 1).is_some() {
                            s -= 1;
                        }
                        v.next_out = Some(s);
                    }
                }
            }
            if let Some(v) = h.viewer.as_mut() {
                woke |= copy_out(&h.node, v);
            }
        }
        if woke {
            self.changed.notify_waiters();
        }
        for (to, payload) in sends {
            let Some(c) = st.contacts.get(&to).copied() else {
                continue;
            };
            if let Ok(StreamMsg::Peers { peers, .. }) = StreamMsg::decode(&payload) {
                let recs: Vec<Vec<u8>> = peers
                    .iter()
                    .filter_map(|e| st.contacts.get(&e.node.addr))
                    .filter_map(|k| {
                        Some(
                            ProviderRecord {
                                public_key: k.pk,
                                dht_pk: k.dht_pk?,
                                addr: k.addr,
                            }
                            .encode(),
                        )
                    })
                    .collect();
                for chunk in recs.chunks(14) {
                    let mut pkt = vec![STREAM_PACKET_ID, 2, chunk.len() as u8];
                    for r in chunk {
                        pkt.push(r.len() as u8);
                        pkt.extend_from_slice(r);
                    }
                    enqueue(st, n, now, c, vec![pkt]);
                }
            }
            let body = MAX_PACKET - 2;
            let count = payload.len().div_ceil(body).max(1);
            let pkts: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let part = &payload[i * body..((i + 1) * body).min(payload.len())];
                    let mut p = Vec::with_capacity(part.len() + 2);
                    p.push(STREAM_PACKET_ID);
                    p.push(u8::from(i + 1 < count));
                    p.extend_from_slice(part);
                    p
                })
                .collect();
            enqueue(st, n, now, c, pkts);
        }
        for (pk, p) in &mut st.peers {
            if !p.online {
                continue;
            }
            while let Some(front) = p.out.front() {
                match n.send_custom(now, pk, front) {
                    Ok(()) => {
                        p.out_bytes -= front.len();
                        p.out.pop_front();
                    }
                    Err(ferry_proto::node::NodeError::NotOnline) => {
                        p.online = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

/// Queues a message's packets to contact `c`, dialing it if needed.
fn enqueue(st: &mut State, n: &mut Node, now: Instant, c: Contact, pkts: Vec<Vec<u8>>) {
    if !st.peers.contains_key(&c.pk) && st.peers.len() >= MAX_PEERS {
        return;
    }
    let len: usize = pkts.iter().map(Vec::len).sum();
    let queued: usize = st.peers.values().map(|p| p.out_bytes).sum();
    if queued + len > MAX_QUEUED {
        return;
    }
    let p = st.peers.entry(c.pk).or_default();
    if !p.dialed {
        p.dialed = true;
        if n.add_friend_norequest(now, c.pk).is_ok() {
            p.added = true;
        }
        if let Some(dht) = c.dht_pk {
            let _ = n.set_friend_dht_key(now, &c.pk, dht, c.addr);
        }
        p.online = n
            .friends()
            .iter()
            .any(|f| f.public_key == c.pk && f.connection != ferry_proto::node::Connection::None);
    }
    if p.out_bytes + len > MAX_PEER_QUEUE {
        return;
    }
    p.out_bytes += len;
    p.out.extend(pkts);
}

fn insert_contact(st: &mut State, c: Contact) {
    let a = peer_addr(&c.pk);
    if !st.contacts.contains_key(&a) && st.contacts.len() >= MAX_CONTACTS {
        // Evict a contact we hold no session with.
        let victim = st
            .contacts
            .iter()
            .find(|(_, k)| !st.peers.contains_key(&k.pk))
            .map(|(a, _)| *a);
        match victim {
            Some(v) => {
                st.contacts.remove(&v);
            }
            None => return,
        }
    }
    let e = st.contacts.entry(a).or_insert(c);
    if c.dht_pk.is_some() {
        *e = c;
    }
}

/// Copies in-order segments to the viewer's output; returns whether anything changed.
fn copy_out(node: &StreamNode, v: &mut Viewer) -> bool {
    let Some(mut next) = v.next_out else {
        return false;
    };
    let mut changed = false;
    while !v.ended {
        match node.segment_data(next) {
            Some([]) => {
                v.ended = true;
                changed = true;
            }
            Some(d) => {
                v.out.extend(d.iter().copied());
                v.segments += 1;
                v.bytes += d.len() as u64;
                next += 1;
                changed = true;
                while v.out.len() > MAX_OUTPUT {
                    v.out.pop_front();
                    v.gaps += 1;
                }
            }
            None if node.play_seq() > next => {
                // Playback skipped it: a gap.
                v.gaps += 1;
                next += 1;
                changed = true;
            }
            None => break,
        }
    }
    v.next_out = Some(next);
    changed
}

fn status_of(id: &StreamId, h: &Hosted, now: Instant) -> StreamStatus {
    let s = h.node.stats();
    let mut out = StreamStatus {
        id: hex::encode(id),
        repaired: s.repaired,
        viewers: h.node.registered() as u64,
        children: h.node.children().len() as u64,
        parents: h.node.parents().iter().flatten().count() as u64,
        bytes_sent: s.bytes_sent,
        ..StreamStatus::default()
    };
    match &h.viewer {
        None => {
            out.role = "streamer".into();
            out.segments = h.pushed;
            out.bytes = h.pushed_bytes;
        }
        Some(v) => {
            out.role = "viewer".into();
            out.segments = v.segments;
            out.bytes = v.bytes;
            out.gaps = v.gaps;
            out.startup_ms = v.startup_ms;
            out.stalls = s.stalls;
            out.stalled_ms = h.node.stalled(now).as_millis() as u64;
            out.ended = v.ended;
        }
    }
    out
}

/// Starts the pump task: [`StreamShared::tick`] every [`TICK`] while streams are hosted (every
/// 100 ms otherwise).
pub fn spawn_timer(streams: Arc<StreamShared>, node: NodeHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = Arc::clone(&streams);
            let Ok(active) = node.call(move |n, now| s.tick(n, now)).await else {
                return;
            };
            tokio::time::sleep(if active {
                TICK
            } else {
                Duration::from_millis(100)
            })
            .await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_round_trip_and_peer_addr_is_stable() {
        let a = Announcement {
            id: [7; 32],
            name: "live".into(),
            streamer: ProviderRecord {
                public_key: PublicKey([1; 32]),
                dht_pk: PublicKey([2; 32]),
                addr: Some("127.0.0.1:33445".parse().expect("addr")),
            },
        };
        assert_eq!(Announcement::decode(&a.encode()), Some(a.clone()));
        assert_eq!(Announcement::decode(&a.encode()[..40]), None);
        assert_eq!(
            peer_addr(&PublicKey([1; 32])),
            peer_addr(&PublicKey([1; 32]))
        );
        assert_ne!(
            peer_addr(&PublicKey([1; 32])),
            peer_addr(&PublicKey([2; 32]))
        );
    }
}
