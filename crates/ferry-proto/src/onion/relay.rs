//! The relay and announce-server half of [`Onion`] (c-toxcore `onion.c`, `onion_announce.c`).
//!
//! * Requests: each relay opens its layer with our DHT secret key, checks the next IP_Port, and
//!   sends the rest on with a return blob `[nonce 24][secretbox(IP_Port of the previous hop ‖
//!   previous blob)]` appended. Node C forwards only announce (0x83) and data (0x85) requests.
//! * Responses: each relay opens its own blob, finds the previous hop and sends the response on
//!   with the inner blob in front; only announce (0x84) and data (0x86) responses pass.
//! * Announce store: the ping id is HMAC-SHA-256(key, time bucket ‖ requester pk ‖ source
//!   IP_Port) with 300-s buckets; the current and the previous bucket are accepted, so a ping id
//!   lives 300–600 s (c-toxcore `timed_auth.c` uses HMAC-SHA-512-256 the same way; only its
//!   creator checks it, so the MAC choice does not affect interoperability).

use std::net::SocketAddr;
use std::time::Instant;

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KEY_SIZE, NONCE_SIZE, Nonce, PublicKey, SymmetricKey, ct_eq, sha256};
use ferry_wire::Reader;
use ferry_wire::node::ip_is_lan;
use ferry_wire::onion::{
    AnnounceRequest, AnnounceResponse, AnnounceResponsePayload, AnnounceStatus, DataRequest,
    IP_PORT_SIZE, IpPort, OnionExit, OnionLayer, OnionRequest, OnionResponse, PING_ID_SIZE,
    RETURN_3_SIZE, Return3,
};

use super::{KEY_REFRESH_INTERVAL, ONION_ANNOUNCE_TIMEOUT, Onion};
use crate::dht::Dht;
use ferry_wire::kind;

/// HMAC-SHA-256 (RFC 2104) over ferry-crypto's SHA-256, with a 32-byte key.
pub(super) fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut inner = Vec::with_capacity(BLOCK + msg.len());
    let mut outer = Vec::with_capacity(BLOCK + 32);
    for i in 0..BLOCK {
        let k = key.get(i).copied().unwrap_or(0);
        inner.push(k ^ 0x36);
        outer.push(k ^ 0x5c);
    }
    inner.extend_from_slice(msg);
    outer.extend_from_slice(&sha256(&inner));
    sha256(&outer)
}

/// One stored announcement (`Onion_Announce_Entry`).
#[derive(Debug, Clone)]
pub(super) struct AnnounceEntry {
    pub(super) public_key: PublicKey,
    pub(super) ret_addr: SocketAddr,
    pub(super) ret: Return3,
    pub(super) data_pk: PublicKey,
    pub(super) announced: Instant,
}

impl AnnounceEntry {
    fn live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.announced) < ONION_ANNOUNCE_TIMEOUT
    }
}

#[derive(Debug)]
pub(super) struct RelayState {
    sym_key: SymmetricKey,
    sym_key_made: Instant,
    hmac_key: [u8; 32],
    pub(super) entries: Vec<AnnounceEntry>,
}

impl RelayState {
    pub(super) fn new(rng: &mut FerryRng, now: Instant) -> Self {
        Self {
            sym_key: SymmetricKey::generate(rng),
            sym_key_made: now,
            hmac_key: rng.bytes(),
            entries: Vec::new(),
        }
    }

    /// `change_symmetric_key`: a fresh return-blob key every 2 h, so old paths expire.
    pub(super) fn maybe_rotate(&mut self, rng: &mut FerryRng, now: Instant) {
        if now.saturating_duration_since(self.sym_key_made) >= KEY_REFRESH_INTERVAL {
            self.sym_key = SymmetricKey::generate(rng);
            self.sym_key_made = now;
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.entries.retain(|e| e.live(now));
    }

    pub(super) fn live_entries(&self, now: Instant) -> usize {
        self.entries.iter().filter(|e| e.live(now)).count()
    }

    /// Seals `[IP_Port of prev][prev blob]` into a new blob.
    fn seal_return(&self, rng: &mut FerryRng, prev: SocketAddr, inner: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::random(rng);
        let mut plain = Vec::with_capacity(IP_PORT_SIZE + inner.len());
        IpPort(prev).encode(&mut plain);
        plain.extend_from_slice(inner);
        let ct = self.sym_key.encrypt(&nonce, &plain).ok()?;
        let mut out = Vec::with_capacity(NONCE_SIZE + ct.len());
        out.extend_from_slice(&nonce.0);
        out.extend_from_slice(&ct);
        Some(out)
    }

    /// Opens one of our blobs: the previous hop and the inner blob.
    fn open_return(&self, blob: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
        if blob.len() < NONCE_SIZE {
            return None;
        }
        let (n, ct) = blob.split_at(NONCE_SIZE);
        let nonce = Nonce(n.try_into().ok()?);
        let plain = self.sym_key.decrypt(&nonce, ct).ok()?;
        let mut r = Reader::new(&plain);
        let prev = IpPort::decode(&mut r).ok()?;
        Some((prev.0, r.rest().to_vec()))
    }

    /// The timed ping id for `bucket` (see the module docs).
    fn ping_id(
        &self,
        bucket: u64,
        requester: &PublicKey,
        source: SocketAddr,
    ) -> [u8; PING_ID_SIZE] {
        let mut msg = Vec::with_capacity(8 + KEY_SIZE + IP_PORT_SIZE);
        msg.extend_from_slice(&bucket.to_be_bytes());
        msg.extend_from_slice(requester.as_bytes());
        IpPort(source).encode(&mut msg);
        hmac_sha256(&self.hmac_key, &msg)
    }

    fn entry_index(&self, pk: &PublicKey, now: Instant) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.live(now) && e.public_key == *pk)
    }

    /// `add_to_entries`: renew, take a free or expired slot, or replace the entry farthest from
    /// `own` if the new key is closer. Returns the entry's index.
    fn add_entry(
        &mut self,
        own: &PublicKey,
        cap: usize,
        entry: AnnounceEntry,
        now: Instant,
    ) -> Option<usize> {
        if let Some(i) = self.entry_index(&entry.public_key, now) {
            self.entries[i] = entry;
            return Some(i);
        }
        if let Some(i) = self.entries.iter().position(|e| !e.live(now)) {
            self.entries[i] = entry;
            return Some(i);
        }
        if self.entries.len() < cap {
            self.entries.push(entry);
            return Some(self.entries.len() - 1);
        }
        let (far, _) = self
            .entries
            .iter()
            .enumerate()
            .max_by(|a, b| own.distance_cmp(&a.1.public_key, &b.1.public_key))?;
        if own
            .distance_cmp(&entry.public_key, &self.entries[far].public_key)
            .is_lt()
        {
            self.entries[far] = entry;
            return Some(far);
        }
        None
    }
}

impl Onion {
    /// 0x80/0x81/0x82 at relay A/B/C (`handle_send_initial`, `handle_send_1`, `handle_send_2`).
    pub(super) fn handle_onion_request(&mut self, from: SocketAddr, bytes: &[u8]) -> bool {
        let Ok(req) = OnionRequest::decode(bytes) else {
            return false;
        };
        let Ok(plain) = self
            .dht_cache
            .get(&req.public_key)
            .decrypt(&req.nonce, &req.ciphertext)
        else {
            return false;
        };
        if req.layer < 2 {
            let Ok(layer) = OnionLayer::decode(&plain) else {
                return false;
            };
            let Some(ret) = self.relay.seal_return(&mut self.rng, from, &req.ret) else {
                return false;
            };
            let next = OnionRequest {
                layer: req.layer + 1,
                nonce: req.nonce,
                public_key: layer.public_key,
                ciphertext: layer.ciphertext,
                ret,
            };
            self.stats.relayed_requests += 1;
            self.queue(layer.next.0, next.encode());
            return true;
        }
        // Node C: the 0.2.18 kind filter, then `data ‖ ret3` in the clear to D.
        let Ok(exit) = OnionExit::decode(&plain) else {
            return false;
        };
        if !matches!(exit.data[0], kind::ANNOUNCE_REQUEST | kind::DATA_REQUEST) {
            return false;
        }
        let Some(ret) = self.relay.seal_return(&mut self.rng, from, &req.ret) else {
            return false;
        };
        let mut out = exit.data;
        out.extend_from_slice(&ret);
        self.stats.relayed_requests += 1;
        self.queue(exit.destination.0, out);
        true
    }

    /// An onion request from a TCP relay client (TCP id 8; c-toxcore `onion_send_1`): we are node
    /// A and the client already did A's decryption. `body` = `[nonce 24][IP_Port of B 19][pk 32]
    /// [box for B]`; `from` is the driver's synthetic address of that client, sealed into the
    /// return blob like a UDP source.
    pub(super) fn handle_tcp_onion_request_inner(&mut self, from: SocketAddr, body: &[u8]) -> bool {
        let Some((n, plain)) = body.split_at_checked(NONCE_SIZE) else {
            return false;
        };
        let Ok(nonce) = n.try_into().map(Nonce) else {
            return false;
        };
        let Ok(layer) = OnionLayer::decode(plain) else {
            return false;
        };
        let Some(ret) = self.relay.seal_return(&mut self.rng, from, &[]) else {
            return false;
        };
        let next = OnionRequest {
            layer: 1,
            nonce,
            public_key: layer.public_key,
            ciphertext: layer.ciphertext,
            ret,
        };
        self.stats.relayed_requests += 1;
        self.queue(layer.next.0, next.encode());
        true
    }

    /// 0x8c/0x8d/0x8e (`handle_recv_3`, `_2`, `_1`).
    pub(super) fn handle_onion_response(&mut self, bytes: &[u8]) -> bool {
        let Ok(resp) = OnionResponse::decode(bytes) else {
            return false;
        };
        if !matches!(resp.data[0], kind::ANNOUNCE_RESPONSE | kind::DATA_RESPONSE) {
            return false;
        }
        let Some((prev, inner)) = self.relay.open_return(&resp.ret) else {
            return false;
        };
        let want = if resp.layer > 1 {
            OnionResponse::ret_len(resp.layer - 1)
        } else {
            0
        };
        if inner.len() != want {
            return false;
        }
        self.stats.relayed_responses += 1;
        if resp.layer > 1 {
            let next = OnionResponse {
                layer: resp.layer - 1,
                ret: inner,
                data: resp.data,
            };
            self.queue(prev, next.encode());
        } else {
            self.queue(prev, resp.data);
        }
        true
    }

    /// 0x83 at node D (`handle_announce_request_old`): store or look up, answer 0x84 with up to
    /// 4 nodes closest to the searched key, back through the return path.
    pub(super) fn handle_announce_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        dht: &Dht,
    ) -> bool {
        let Ok((req, ret3)) = AnnounceRequest::decode_with_return(bytes) else {
            return false;
        };
        let key = self.dht_cache.get(&req.public_key);
        let Ok(payload) = req.open(key) else {
            return false;
        };
        let bucket =
            now.saturating_duration_since(self.start).as_secs() / ONION_ANNOUNCE_TIMEOUT.as_secs();
        let fresh = self.relay.ping_id(bucket, &req.public_key, from);
        let valid = ct_eq(&payload.ping_id, &fresh)
            || (bucket > 0
                && ct_eq(
                    &payload.ping_id,
                    &self.relay.ping_id(bucket - 1, &req.public_key, from),
                ));
        let own = self.dht_keys.public;
        let index = if valid {
            let entry = AnnounceEntry {
                public_key: req.public_key,
                ret_addr: from,
                ret: ret3,
                data_pk: payload.data_pk,
                announced: now,
            };
            self.relay
                .add_entry(&own, self.config.max_announce_entries, entry, now)
        } else {
            self.relay.entry_index(&payload.search_pk, now)
        };
        let (status, field) = match index.map(|i| &self.relay.entries[i]) {
            None => (AnnounceStatus::Failed, fresh),
            Some(e) if e.public_key == req.public_key => {
                if e.data_pk == payload.data_pk {
                    (AnnounceStatus::Announced, fresh)
                } else {
                    (AnnounceStatus::Failed, fresh)
                }
            }
            Some(e) => (AnnounceStatus::Found, e.data_pk.0),
        };
        let nodes = dht.closest_nodes(now, &payload.search_pk, ip_is_lan(from.ip()));
        let response = AnnounceResponsePayload {
            status,
            ping_id_or_key: field,
            nodes,
        };
        let nonce = Nonce::random(&mut self.rng);
        let key = self.dht_cache.get(&req.public_key);
        let Ok(resp) = AnnounceResponse::seal(key, nonce, payload.sendback, &response) else {
            return false;
        };
        self.stats.announce_requests += 1;
        self.send_response(from, &ret3, resp.encode());
        true
    }

    /// 0x85 at node D (`handle_data_request`): forward as 0x86 to the stored announcement.
    pub(super) fn handle_data_request(&mut self, now: Instant, bytes: &[u8]) -> bool {
        let Ok((req, _ret3)) = DataRequest::decode_with_return(bytes) else {
            return false;
        };
        let Some(i) = self.relay.entry_index(&req.destination, now) else {
            // Not announced here: c-toxcore drops it silently too.
            return true;
        };
        let (addr, ret) = (self.relay.entries[i].ret_addr, self.relay.entries[i].ret);
        self.stats.data_forwarded += 1;
        self.send_response(addr, &ret, req.to_response().encode());
        true
    }

    /// `send_onion_response`: `[0x8c][ret3][data]` to node C.
    fn send_response(&mut self, to: SocketAddr, ret3: &[u8; RETURN_3_SIZE], data: Vec<u8>) {
        let resp = OnionResponse {
            layer: 3,
            ret: ret3.to_vec(),
            data,
        };
        self.queue(to, resp.encode());
    }
}
