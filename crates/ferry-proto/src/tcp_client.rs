//! One connection to a Tox TCP relay, client side (`tox-protocol.md` §6; c-toxcore 0.2.18
//! `TCP_client.c`). Sans-IO: the driver opens the TCP stream, writes what
//! [`RelayClient::poll_output`] gives, feeds what it reads to [`RelayClient::handle_bytes`], and
//! calls [`RelayClient::handle_timeout`] at [`RelayClient::poll_timeout`]; events come from
//! [`RelayClient::poll_event`]. After each call drain outputs and events.
//!
//! Flow: [`RelayClient::new`] queues the 128-byte handshake (our DHT key, a fresh temporary key
//! and base nonce). On the 96-byte reply the session is up ([`RelayClientEvent::Ready`]) and a
//! ping confirms us to the server. [`RelayClient::routing_request`] asks the relay to link us
//! with a peer's DHT key; the peer must ask for ours too, then [`RelayClientEvent::Connected`]
//! arrives and [`RelayClient::send_data`] carries net_crypto packets. OOB packets reach any
//! client of the same relay by DHT key. Pings every 30 s; no pong within 10 s, or no handshake
//! reply within 10 s, ends the connection ([`RelayClientEvent::Closed`]).
//!
//! [`crate::tcp_connection::TcpConnections`] owns these, one per relay stream, for the node.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ferry_crypto::rng::FerryRng;
use ferry_crypto::{KeyPair, Nonce, PublicKey, SecretKey};
use ferry_wire::relay::{
    ClientHandshake, FrameReader, HandshakePlain, NUM_RESERVED_IDS, RelayPacket, RelaySession,
    SERVER_HANDSHAKE_SIZE, ServerHandshake,
};

/// Ping interval (`TCP_PING_FREQUENCY`, 30 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Pong and handshake timeout (`TCP_PING_TIMEOUT` / `TCP_CONNECTION_TIMEOUT`, 10 s).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a relay connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// No handshake reply in time.
    HandshakeTimeout,
    /// No pong in time.
    PingTimeout,
    /// The server sent something that does not decrypt or parse.
    Protocol,
    /// [`RelayClient::close`] was called.
    Local,
}

/// What happened on a relay connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayClientEvent {
    /// Handshake done: requests can be sent.
    Ready,
    /// The relay reserved `conn_id` for `pk`, or refused (`None`).
    RoutingResponse {
        /// The requested DHT key.
        pk: PublicKey,
        /// 16–255, `None` = refused.
        conn_id: Option<u8>,
    },
    /// `pk` asked for us too: data can flow.
    Connected {
        /// The peer's DHT key.
        pk: PublicKey,
    },
    /// The link to `pk` went away (the reservation stays; it comes back with `Connected`).
    Disconnected {
        /// The peer's DHT key.
        pk: PublicKey,
    },
    /// Data from linked peer `pk` (a net_crypto packet in Tox).
    Data {
        /// The peer's DHT key.
        pk: PublicKey,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Out-of-band data from `src`.
    Oob {
        /// The sender's DHT key.
        src: PublicKey,
        /// The bytes.
        data: Vec<u8>,
    },
    /// An onion response for us (TCP id 9).
    OnionResponse(Vec<u8>),
    /// The connection is over; the driver closes the stream.
    Closed(CloseReason),
}

#[derive(Debug)]
struct Link {
    pk: PublicKey,
    connected: bool,
}

#[derive(Debug)]
enum State {
    Handshake {
        temp: KeyPair,
        base: Nonce,
        secret: SecretKey,
    },
    Ready {
        session: RelaySession,
        /// By wire conn id.
        links: BTreeMap<u8, Link>,
    },
    Closed,
}

/// One client connection to a TCP relay.
#[derive(Debug)]
pub struct RelayClient {
    relay_pk: PublicKey,
    state: State,
    reader: FrameReader,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<RelayClientEvent>,
    rng: FerryRng,
    started: Instant,
    last_ping: Instant,
    ping_id: Option<[u8; 8]>,
}

impl RelayClient {
    /// Starts a connection to the relay whose (DHT) public key is `relay_pk`, identified by our
    /// DHT key pair; queues the 128-byte handshake.
    pub fn new(now: Instant, dht_keys: &KeyPair, relay_pk: PublicKey, mut rng: FerryRng) -> Self {
        let temp = KeyPair::generate(&mut rng);
        let base = Nonce::random(&mut rng);
        let mut out = VecDeque::new();
        let plain = HandshakePlain {
            temp_pk: temp.public,
            base_nonce: base,
        };
        let state = match ClientHandshake::seal(
            &dht_keys.secret,
            &relay_pk,
            Nonce::random(&mut rng),
            &plain,
        ) {
            Ok(hs) => {
                out.push_back(hs.encode().to_vec());
                State::Handshake {
                    temp,
                    base,
                    secret: dht_keys.secret.clone(),
                }
            }
            Err(_) => State::Closed,
        };
        Self {
            relay_pk,
            state,
            reader: FrameReader::new(),
            out,
            events: VecDeque::new(),
            rng,
            started: now,
            last_ping: now,
            ping_id: None,
        }
    }

    /// The relay's public key.
    pub fn relay_pk(&self) -> PublicKey {
        self.relay_pk
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Whether `pk` is linked (data can be sent to it).
    pub fn is_connected(&self, pk: &PublicKey) -> bool {
        match &self.state {
            State::Ready { links, .. } => links.values().any(|l| l.pk == *pk && l.connected),
            _ => false,
        }
    }

    /// Bytes to write to the stream, in order.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RelayClientEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] is due (`None` once closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshake { .. } => Some(self.started + TIMEOUT),
            State::Ready { .. } => Some(if self.ping_id.is_some() {
                self.last_ping + TIMEOUT
            } else {
                self.last_ping + PING_INTERVAL
            }),
            State::Closed => None,
        }
    }

    /// Handshake timeout, pings and pong timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Handshake { .. } if now >= self.started + TIMEOUT => {
                self.close_with(CloseReason::HandshakeTimeout);
            }
            State::Ready { .. } => {
                if self.ping_id.is_some() {
                    if now >= self.last_ping + TIMEOUT {
                        self.close_with(CloseReason::PingTimeout);
                    }
                } else if now >= self.last_ping + PING_INTERVAL {
                    self.ping(now);
                }
            }
            _ => {}
        }
    }

    /// Stream bytes from the relay (any split).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.reader.push(bytes);
        if let State::Handshake { temp, base, secret } = &self.state {
            let Some(raw) = self.reader.take_raw(SERVER_HANDSHAKE_SIZE) else {
                return;
            };
            let Ok(plain) =
                ServerHandshake::decode(&raw).and_then(|h| h.open(secret, &self.relay_pk))
            else {
                self.close_with(CloseReason::Protocol);
                return;
            };
            let session = RelaySession::new(&temp.secret, &plain.temp_pk, *base, plain.base_nonce);
            self.state = State::Ready {
                session,
                links: BTreeMap::new(),
            };
            self.events.push_back(RelayClientEvent::Ready);
            // Our first frame confirms us to the server.
            self.ping(now);
        }
        loop {
            let State::Ready { session, .. } = &mut self.state else {
                return;
            };
            let body = match self.reader.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(_) => {
                    self.close_with(CloseReason::Protocol);
                    return;
                }
            };
            let Ok(p) = session.open(&body).and_then(|pl| RelayPacket::decode(&pl)) else {
                self.close_with(CloseReason::Protocol);
                return;
            };
            if !self.handle_packet(now, p) {
                self.close_with(CloseReason::Protocol);
                return;
            }
        }
    }

    fn ping(&mut self, now: Instant) {
        let mut id: [u8; 8] = self.rng.bytes();
        if id == [0; 8] {
            id[0] = 1;
        }
        self.ping_id = Some(id);
        self.last_ping = now;
        self.send(&RelayPacket::Ping { ping_id: id });
    }

    fn send(&mut self, p: &RelayPacket) -> bool {
        let State::Ready { session, .. } = &mut self.state else {
            return false;
        };
        match session.seal_packet(p) {
            Ok(f) => {
                self.out.push_back(f);
                true
            }
            Err(_) => false,
        }
    }

    /// Asks the relay to link us with `pk` (a peer's DHT key).
    pub fn routing_request(&mut self, pk: PublicKey) -> bool {
        self.send(&RelayPacket::RoutingRequest { pk })
    }

    /// Sends `data` to linked peer `pk`; false when not linked.
    pub fn send_data(&mut self, pk: &PublicKey, data: Vec<u8>) -> bool {
        let State::Ready { links, .. } = &self.state else {
            return false;
        };
        let Some((&conn_id, _)) = links.iter().find(|(_, l)| l.pk == *pk && l.connected) else {
            return false;
        };
        self.send(&RelayPacket::Data { conn_id, data })
    }

    /// Sends out-of-band `data` (1..=1024 bytes) to `dest` if it is on the relay.
    pub fn send_oob(&mut self, dest: PublicKey, data: Vec<u8>) -> bool {
        self.send(&RelayPacket::OobSend { dest, data })
    }

    /// Sends an onion request (TCP id 8) for the relay to forward as onion node A.
    pub fn send_onion_request(&mut self, body: Vec<u8>) -> bool {
        self.send(&RelayPacket::OnionRequest(body))
    }

    /// Drops the reservation for `pk` (a disconnect notification to the relay).
    pub fn disconnect(&mut self, pk: &PublicKey) -> bool {
        let State::Ready { links, .. } = &mut self.state else {
            return false;
        };
        let Some((&conn_id, _)) = links.iter().find(|(_, l)| l.pk == *pk) else {
            return false;
        };
        links.remove(&conn_id);
        self.send(&RelayPacket::DisconnectNotification { conn_id })
    }

    /// Ends the connection.
    pub fn close(&mut self) {
        self.close_with(CloseReason::Local);
    }

    fn close_with(&mut self, why: CloseReason) {
        if !matches!(self.state, State::Closed) {
            self.state = State::Closed;
            self.events.push_back(RelayClientEvent::Closed(why));
        }
    }

    fn handle_packet(&mut self, now: Instant, p: RelayPacket) -> bool {
        let State::Ready { links, .. } = &mut self.state else {
            return false;
        };
        match p {
            RelayPacket::RoutingResponse { conn_id, pk } => {
                if conn_id == 0 {
                    self.events
                        .push_back(RelayClientEvent::RoutingResponse { pk, conn_id: None });
                } else if conn_id >= NUM_RESERVED_IDS {
                    links.insert(
                        conn_id,
                        Link {
                            pk,
                            connected: false,
                        },
                    );
                    self.events.push_back(RelayClientEvent::RoutingResponse {
                        pk,
                        conn_id: Some(conn_id),
                    });
                } else {
                    return false;
                }
            }
            RelayPacket::ConnectNotification { conn_id } => {
                if let Some(l) = links.get_mut(&conn_id) {
                    l.connected = true;
                    self.events
                        .push_back(RelayClientEvent::Connected { pk: l.pk });
                }
            }
            RelayPacket::DisconnectNotification { conn_id } => {
                if let Some(l) = links.get_mut(&conn_id)
                    && l.connected
                {
                    l.connected = false;
                    self.events
                        .push_back(RelayClientEvent::Disconnected { pk: l.pk });
                }
            }
            RelayPacket::Ping { ping_id } => {
                self.send(&RelayPacket::Pong { ping_id });
            }
            RelayPacket::Pong { ping_id } if self.ping_id == Some(ping_id) => {
                self.ping_id = None;
                self.last_ping = now;
            }
            RelayPacket::OobRecv { src, data } => {
                self.events.push_back(RelayClientEvent::Oob { src, data });
            }
            RelayPacket::OnionResponse(d) => {
                self.events.push_back(RelayClientEvent::OnionResponse(d));
            }
            RelayPacket::Data { conn_id, data } => {
                if let Some(l) = links.get(&conn_id)
                    && l.connected
                {
                    self.events
                        .push_back(RelayClientEvent::Data { pk: l.pk, data });
                }
            }
            // Server-bound packets and forwarding: ignored.
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_relay::{Output, RelayConfig, RelayServer};

    fn pump(server: &mut RelayServer, now: Instant, clients: &mut [(u64, &mut RelayClient)]) {
        loop {
            let mut moved = false;
            for (id, c) in clients.iter_mut() {
                while let Some(b) = c.poll_output() {
                    server.handle_bytes(now, *id, &b);
                    moved = true;
                }
            }
            while let Some(o) = server.poll_output() {
                moved = true;
                if let Output::Send(id, b) = o
                    && let Some((_, c)) = clients.iter_mut().find(|(i, _)| *i == id)
                {
                    c.handle_bytes(now, &b);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn events(c: &mut RelayClient) -> Vec<RelayClientEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
    fn two_clients_link_through_the_server() {
        let now = Instant::now();
        let mut rng = FerryRng::from_u64(5);
        let relay = KeyPair::generate(&mut rng);
        let mut server = RelayServer::new(RelayConfig::default(), relay.secret.clone(), rng.fork());
        let ka = KeyPair::generate(&mut rng);
        let kb = KeyPair::generate(&mut rng);
        let mut a = RelayClient::new(now, &ka, relay.public, rng.fork());
        let mut b = RelayClient::new(now, &kb, relay.public, rng.fork());
        server.accept(now, 1);
        server.accept(now, 2);
        pump(&mut server, now, &mut [(1, &mut a), (2, &mut b)]);
        assert_eq!(events(&mut a), vec![RelayClientEvent::Ready]);
        assert_eq!(events(&mut b), vec![RelayClientEvent::Ready]);
        assert_eq!(server.stats().clients, 2);
        a.routing_request(kb.public);
        b.routing_request(ka.public);
        pump(&mut server, now, &mut [(1, &mut a), (2, &mut b)]);
        assert!(events(&mut a).contains(&RelayClientEvent::Connected { pk: kb.public }));
        assert!(events(&mut b).contains(&RelayClientEvent::Connected { pk: ka.public }));
        assert!(a.send_data(&kb.public, vec![0x1b; 60]));
        assert!(b.send_oob(ka.public, vec![0x18; 145]));
        pump(&mut server, now, &mut [(1, &mut a), (2, &mut b)]);
        assert_eq!(
            events(&mut b),
            vec![RelayClientEvent::Data {
                pk: ka.public,
                data: vec![0x1b; 60]
            }]
        );
        assert_eq!(
            events(&mut a),
            vec![RelayClientEvent::Oob {
                src: kb.public,
                data: vec![0x18; 145]
            }]
        );
        // Server pings are answered; a client ping unanswered for 10 s closes it.
        let later = now + PING_INTERVAL;
        server.handle_timeout(later);
        a.handle_timeout(later);
        pump(&mut server, later, &mut [(1, &mut a), (2, &mut b)]);
        server.handle_timeout(later + TIMEOUT);
        assert_eq!(
            server.stats().clients,
            2,
            "both answered the server's pings"
        );
        b.handle_timeout(later + TIMEOUT);
        assert!(b.is_ready(), "b's ping came back");
        let mut c = RelayClient::new(now, &kb, relay.public, rng.fork());
        c.handle_timeout(now + TIMEOUT);
        assert_eq!(
            events(&mut c),
            vec![RelayClientEvent::Closed(CloseReason::HandshakeTimeout)]
        );
    }
}
