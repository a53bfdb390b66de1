//! NAT hole punching for searched DHT keys (`tox-protocol.md` §3.4; c-toxcore 0.2.18 `DHT.c`
//! `returnedip_ports`, `friend_iplist`, `send_NATping`, `handle_NATping`, `nat_commonip`,
//! `nat_getports`, `punch_holes`, `do_NAT`).
//!
//! # Flow (per searched key, "friend")
//!
//! 1. **Reports**: every nodes response that lists the friend's key is a *report*: the responder,
//!    if it is in the friend's search list, says "the friend is at ip:port" (`ret_ip_port`).
//!    One report per (responder, address family), fresh for [`super::BAD_NODE_TIMEOUT`].
//! 2. **NAT ping**: while the friend itself has not answered us (no direct connectivity) but at
//!    least [`MIN_REPORTS`] (= 8 / 2) search-list nodes report it, a NAT ping request
//!    (DHT request 0x20, id 0xfe, `[0][ping id 8]`) goes to the friend through every node of its
//!    search list, every [`PUNCH_INTERVAL`]. The friend answers with a NAT ping response
//!    (`[1][same ping id]`) through one random node of *its* search list for us.
//! 3. **Punch**: a matching response (our current ping id; then a fresh id is drawn) arms one
//!    punch. It fires when the last punch is at least [`PUNCH_INTERVAL`] old, a NAT ping
//!    *request* from the friend arrived within 2 × [`PUNCH_INTERVAL`] (both sides punch at
//!    once), and at least [`MIN_REPORTS`] reports share one IP. Then DHT ping requests go to
//!    that IP: to the one port if all reports agree (cone NAT), else [`MAX_PUNCHING_PORTS`]
//!    guesses alternating `port ± delta` over the reported ports with a growing delta
//!    ([`guess_ports`]); after more than [`MAX_NORMAL_PUNCHING_TRIES`] rounds also
//!    [`MAX_PUNCHING_PORTS`] ports counting up from 1024 (each round moves on by half as many).
//!    Counters reset when the last punch is more than [`PUNCH_RESET_TIME`] old.
//! 4. **Success** is an ordinary ping response from the friend's key at a punched address: the
//!    DHT lists the friend, its search resolves ([`super::DhtEvent::Found`]) and
//!    [`super::Dht::address_of`] returns the punched address, which the node hands to net_crypto.
//!
//! c-toxcore compares whole seconds (`t + 3 < now`), so its interval is 3–4 s; ferry acts at
//! ≥ 3 s.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_crypto::PublicKey;
use ferry_crypto::rng::FerryRng;

use super::{BAD_NODE_TIMEOUT, Client, SEARCH_LIST_SIZE};

/// Spacing of NAT ping requests and of punching rounds per friend (`PUNCH_INTERVAL` = 3 s).
pub const PUNCH_INTERVAL: Duration = Duration::from_secs(3);
/// Punching counters reset after this long without a punch (`PUNCH_RESET_TIME` = 40 s).
pub const PUNCH_RESET_TIME: Duration = Duration::from_secs(40);
/// DHT pings per guessing round (`MAX_PUNCHING_PORTS` = 48).
pub const MAX_PUNCHING_PORTS: u32 = 48;
/// Rounds of guessing around the reported ports before the sweep from port 1024 joins in
/// (`MAX_NORMAL_PUNCHING_TRIES` = 5; the sweep starts on the 7th round, `tries > 5`).
pub const MAX_NORMAL_PUNCHING_TRIES: u32 = 5;
/// Reports needed to NAT-ping, and reports at one IP needed to punch (`MAX_FRIEND_CLIENTS / 2`).
pub const MIN_REPORTS: usize = SEARCH_LIST_SIZE / 2;
/// First port of the upward sweep.
pub const SWEEP_START_PORT: u16 = 1024;
/// NAT ping type byte of a request (`NAT_PING_REQUEST`).
pub const NAT_PING_REQUEST: u8 = 0;
/// NAT ping type byte of a response (`NAT_PING_RESPONSE`).
pub const NAT_PING_RESPONSE: u8 = 1;

/// One report: `reporter` said the searched key is at `addr`.
#[derive(Clone, Copy, Debug)]
struct Report {
    reporter: PublicKey,
    addr: SocketAddr,
    at: Instant,
}

/// Hole-punching state of one search (c-toxcore `NAT` in `DHT_Friend`).
#[derive(Clone, Debug)]
pub(super) struct NatState {
    /// At most one per (search-list node, address family): ≤ 2 × [`SEARCH_LIST_SIZE`].
    reports: Vec<Report>,
    /// Id of our outstanding NAT ping (`nat_ping_id`), drawn when first needed.
    pub(super) ping_id: Option<[u8; 8]>,
    /// Last NAT ping request sent (`nat_ping_timestamp`).
    pub(super) last_nat_ping: Option<Instant>,
    /// Last NAT ping request received from the friend (`recv_nat_ping_timestamp`).
    pub(super) last_recv_nat_ping: Option<Instant>,
    /// A matching NAT ping response armed a punch (`hole_punching`).
    pub(super) armed: bool,
    /// Last punching round (`punching_timestamp`).
    pub(super) last_punch: Option<Instant>,
    /// Rounds since the last reset (`tries`).
    pub(super) tries: u32,
    /// Position in the guessing sequence (`punching_index`).
    pub(super) punching_index: u32,
    /// Position of the sweep from port 1024 (`punching_index2`).
    pub(super) punching_index2: u32,
}

/// What [`NatState::plan`] decided for one search at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Send a NAT ping request with this id now.
    pub(super) nat_ping: Option<[u8; 8]>,
    /// DHT-ping the friend at these addresses now.
    pub(super) punch: Vec<SocketAddr>,
    /// When this search next needs a look (`None`: only after new input).
    pub(super) next: Option<Instant>,
}

impl NatState {
    pub(super) fn new() -> Self {
        Self {
            reports: Vec::new(),
            ping_id: None,
            last_nat_ping: None,
            last_recv_nat_ping: None,
            armed: false,
            last_punch: None,
            tries: 0,
            punching_index: 0,
            punching_index2: 0,
        }
    }

    /// Records that `reporter` (which must be in `clients`, the search list) reported the
    /// searched key at `addr` (`returnedip_ports`). Returns whether this is a new report (not a
    /// refresh of the same one). Reports of nodes that left the list are dropped.
    pub(super) fn report(
        &mut self,
        clients: &[Client],
        reporter: PublicKey,
        addr: SocketAddr,
        now: Instant,
    ) -> bool {
        if !clients.iter().any(|c| c.public_key == reporter) {
            return false;
        }
        self.reports
            .retain(|r| clients.iter().any(|c| c.public_key == r.reporter));
        if let Some(r) = self
            .reports
            .iter_mut()
            .find(|r| r.reporter == reporter && r.addr.is_ipv4() == addr.is_ipv4())
        {
            let new = r.addr != addr;
            r.addr = addr;
            r.at = now;
            return new;
        }
        if self.reports.len() < 2 * SEARCH_LIST_SIZE {
            self.reports.push(Report {
                reporter,
                addr,
                at: now,
            });
        }
        true
    }

    /// `friend_iplist`: the fresh reported addresses of the larger family (IPv6 on a tie), from
    /// nodes still in `clients`; `Err(until)` while the searched key itself is in the list and
    /// good (direct connectivity, good until `until`).
    pub(super) fn iplist(
        &self,
        clients: &[Client],
        target: &PublicKey,
        now: Instant,
    ) -> Result<Vec<SocketAddr>, Instant> {
        if let Some(c) = clients.iter().find(|c| c.public_key == *target)
            && let Some(a) = c.best(now)
        {
            return Err(a.last_resp + BAD_NODE_TIMEOUT);
        }
        let fresh = |r: &&Report| {
            now.saturating_duration_since(r.at) < BAD_NODE_TIMEOUT
                && clients.iter().any(|c| c.public_key == r.reporter)
        };
        let v4: Vec<SocketAddr> = self
            .reports
            .iter()
            .filter(fresh)
            .filter(|r| r.addr.is_ipv4())
            .map(|r| r.addr)
            .collect();
        let v6: Vec<SocketAddr> = self
            .reports
            .iter()
            .filter(fresh)
            .filter(|r| r.addr.is_ipv6())
            .map(|r| r.addr)
            .collect();
        Ok(if v6.len() >= v4.len() { v6 } else { v4 })
    }

    /// `do_NAT` for one search: whether to NAT-ping and where to punch now, and when to look
    /// again. Updates the timestamps and counters as if the plan is carried out.
    pub(super) fn plan(
        &mut self,
        clients: &[Client],
        target: &PublicKey,
        now: Instant,
        rng: &mut FerryRng,
    ) -> Plan {
        let mut plan = Plan::default();
        let list = match self.iplist(clients, target, now) {
            Ok(list) => list,
            Err(until) => {
                plan.next = Some(until);
                return plan;
            }
        };
        if list.len() < MIN_REPORTS {
            return plan;
        }
        if self
            .last_nat_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= PUNCH_INTERVAL)
        {
            plan.nat_ping = Some(*self.ping_id.get_or_insert_with(|| rng.bytes()));
            self.last_nat_ping = Some(now);
        }
        let mut next = self.last_nat_ping.map_or(now, |t| t + PUNCH_INTERVAL);
        let heard = self
            .last_recv_nat_ping
            .is_some_and(|t| now.saturating_duration_since(t) <= 2 * PUNCH_INTERVAL);
        if self.armed && heard {
            let due = self.last_punch.map_or(now, |t| t + PUNCH_INTERVAL);
            if due <= now
                && let Some(ip) = common_ip(&list, MIN_REPORTS)
            {
                if self
                    .last_punch
                    .is_none_or(|t| now.saturating_duration_since(t) > PUNCH_RESET_TIME)
                {
                    self.tries = 0;
                    self.punching_index = 0;
                    self.punching_index2 = 0;
                }
                let ports: Vec<u16> = list
                    .iter()
                    .filter(|a| a.ip() == ip)
                    .map(|a| a.port())
                    .collect();
                plan.punch = self
                    .punch_ports(&ports)
                    .into_iter()
                    .map(|p| SocketAddr::new(ip, p))
                    .collect();
                self.last_punch = Some(now);
                self.armed = false;
            } else if due > now {
                next = next.min(due);
            }
        }
        plan.next = Some(next);
        plan
    }

    /// `punch_holes`: the ports of one punching round for the `ports` reported at one IP
    /// (1..=8 of them); advances the guessing counters.
    pub(super) fn punch_ports(&mut self, ports: &[u16]) -> Vec<u16> {
        let Some(&first) = ports.first() else {
            return Vec::new();
        };
        if ports.len() > SEARCH_LIST_SIZE {
            return Vec::new();
        }
        let mut out = Vec::new();
        if ports.iter().all(|&p| p == first) {
            out.push(first);
        } else {
            out.extend(guess_ports(ports, self.punching_index));
            self.punching_index = self.punching_index.wrapping_add(MAX_PUNCHING_PORTS);
        }
        if self.tries > MAX_NORMAL_PUNCHING_TRIES {
            out.extend((0..MAX_PUNCHING_PORTS).map(|i| {
                // Port arithmetic is modulo 2^16, as c-toxcore's `uint16_t` addition.
                SWEEP_START_PORT.wrapping_add(self.punching_index2.wrapping_add(i) as u16)
            }));
            self.punching_index2 = self
                .punching_index2
                .wrapping_add(MAX_PUNCHING_PORTS - MAX_PUNCHING_PORTS / 2);
        }
        self.tries = self.tries.saturating_add(1);
        out
    }
}

/// One round of port guesses starting at position `index` of c-toxcore's sequence: position
/// `it` targets reported port number `(it / 2) % n` plus `delta = it / (2n)`, added for even
/// `it` and subtracted for odd `it` (modulo 2^16). So with n ports each is tried as reported
/// (twice), then ±1, ±2, …
pub fn guess_ports(ports: &[u16], index: u32) -> Vec<u16> {
    let n = ports.len() as u32;
    if n == 0 {
        return Vec::new();
    }
    (0..MAX_PUNCHING_PORTS)
        .map(|i| {
            let it = index.wrapping_add(i);
            let delta = (it / (2 * n)) as u16;
            let port = ports[((it / 2) % n) as usize];
            if it % 2 == 0 {
                port.wrapping_add(delta)
            } else {
                port.wrapping_sub(delta)
            }
        })
        .collect()
}

/// `nat_commonip`: the first IP (in list order) that at least `min` addresses share.
pub fn common_ip(list: &[SocketAddr], min: usize) -> Option<IpAddr> {
    list.iter()
        .map(SocketAddr::ip)
        .find(|ip| list.iter().filter(|a| a.ip() == *ip).count() >= min)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick a base `Instant` once
mod tests {
    use super::*;
    use crate::dht::{Dht, DhtConfig, DhtEvent};
    use crate::{Destination, Endpoint};
    use ferry_crypto::{KeyPair, Nonce, PrecomputedKey};
    use ferry_wire::dht::{DhtEnvelope, DhtKind, DhtRequest, NatPing, Packet, PingPayload};

    /// Drains `a`'s transmits as (destination, datagram).
    fn sent(a: &mut Dht) -> Vec<(SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| a.poll_transmit())
            .filter_map(|t| match t.destination {
                Destination::Addr(addr) => Some((addr, t.payload)),
                _ => None,
            })
            .collect()
    }

    /// The NAT ping inside a DHT request from `a` to the friend.
    fn open_nat_ping(bytes: &[u8], key: &PrecomputedKey) -> Option<NatPing> {
        let Ok(Packet::DhtRequest(r)) = Packet::decode(bytes) else {
            return None;
        };
        NatPing::decode(&key.decrypt(&r.nonce, &r.ciphertext).ok()?).ok()
    }

    fn nat_ping_from(
        friend: &KeyPair,
        to: &PublicKey,
        key: &PrecomputedKey,
        ping: NatPing,
    ) -> Vec<u8> {
        let nonce = Nonce([7; 24]);
        DhtRequest {
            receiver: *to,
            sender: friend.public,
            nonce,
            ciphertext: key.encrypt(&nonce, &ping.encode()).expect("encrypt"),
        }
        .encode()
    }

    /// The whole chain on one node: four search-list nodes report the friend at one IP with
    /// four ports (a symmetric NAT) → NAT ping requests through all four; the friend's NAT ping
    /// request is answered through one; the friend's response arms a punch → 48 pings around
    /// the reported ports; a ping response from a punched port makes that address the friend's
    /// (`Found`, `address_of`), and NAT pinging stops (direct connectivity).
    #[test]
    fn reports_nat_ping_punch_and_found() {
        let mut rng = FerryRng::from_u64(5);
        let now = Instant::now();
        let keys = KeyPair::generate(&mut rng);
        let friend = KeyPair::generate(&mut rng);
        let own = keys.public;
        let config = DhtConfig {
            lan_discovery: false,
            ..DhtConfig::default()
        };
        let mut a = Dht::new(config, keys, rng.fork(), now);
        let fkey = PrecomputedKey::new(&friend.secret, &own);
        a.add_search(now, friend.public).expect("search");
        let relays: Vec<(PublicKey, SocketAddr)> = (0..4u8)
            .map(|i| {
                let pk = KeyPair::generate(&mut rng).public;
                (pk, SocketAddr::from(([192, 0, 2, 10 + i], 33445)))
            })
            .collect();
        {
            let s = a.searches.get_mut(&friend.public).expect("search");
            for &(pk, addr) in &relays {
                s.clients.push(Client::new(pk, addr, now));
            }
            s.resync();
            s.scanned = None;
        }
        let ext = IpAddr::from([198, 51, 100, 7]);
        // Three reports: not enough.
        for (i, &(pk, _)) in relays.iter().enumerate().take(3) {
            a.nat_report(
                now,
                pk,
                friend.public,
                SocketAddr::new(ext, 40_000 + i as u16),
            );
        }
        a.handle_timeout(now);
        let _ = sent(&mut a);
        assert_eq!(a.stats().nat_pings, 0);
        a.nat_report(
            now,
            relays[3].0,
            friend.public,
            SocketAddr::new(ext, 40_003),
        );
        // A report from a node outside the search list does not count.
        assert!(!a.searches[&friend.public].nat.clone().report(
            &a.searches[&friend.public].clients,
            own,
            SocketAddr::new(ext, 1),
            now
        ));
        let t = now + Duration::from_millis(100);
        a.handle_timeout(t);
        let out = sent(&mut a);
        let pings: Vec<_> = out
            .iter()
            .filter_map(|(to, b)| open_nat_ping(b, &fkey).map(|p| (*to, p)))
            .collect();
        assert_eq!(pings.len(), 4, "one NAT ping request per search-list node");
        assert!(
            pings
                .iter()
                .all(|(to, p)| !p.is_response && relays.iter().any(|r| r.1 == *to))
        );
        let our_id = pings[0].1.id;
        // Not again before PUNCH_INTERVAL.
        a.handle_timeout(t + Duration::from_secs(1));
        assert!(
            sent(&mut a)
                .iter()
                .all(|(_, b)| open_nat_ping(b, &fkey).is_none())
        );

        // The friend's NAT ping request, routed to us by relay 0: answered through one relay.
        let theirs = NatPing {
            is_response: false,
            id: [9; 8],
        };
        let t = t + Duration::from_secs(1);
        a.handle_datagram(t, relays[0].1, &nat_ping_from(&friend, &own, &fkey, theirs));
        let out = sent(&mut a);
        let replies: Vec<_> = out
            .iter()
            .filter_map(|(to, b)| open_nat_ping(b, &fkey).map(|p| (*to, p)))
            .collect();
        assert_eq!(replies.len(), 1);
        assert_eq!(
            replies[0].1,
            NatPing {
                is_response: true,
                id: [9; 8]
            }
        );
        // A response with a wrong id does nothing; ours arms the punch.
        let wrong = NatPing {
            is_response: true,
            id: [1; 8],
        };
        a.handle_datagram(t, relays[1].1, &nat_ping_from(&friend, &own, &fkey, wrong));
        assert!(!a.searches[&friend.public].nat.armed);
        let resp = NatPing {
            is_response: true,
            id: our_id,
        };
        a.handle_datagram(t, relays[1].1, &nat_ping_from(&friend, &own, &fkey, resp));
        assert!(a.searches[&friend.public].nat.armed);
        assert_ne!(
            a.searches[&friend.public].nat.ping_id,
            Some(our_id),
            "fresh id"
        );
        a.handle_timeout(t);
        let out = sent(&mut a);
        let punches: Vec<(SocketAddr, [u8; 8])> = out
            .iter()
            .filter_map(|(to, b)| {
                let Ok(Packet::Dht(env)) = Packet::decode(b) else {
                    return None;
                };
                (env.kind == DhtKind::PingRequest).then_some(())?;
                let p = PingPayload::decode(&env.open(&fkey).ok()?).ok()?;
                Some((*to, p.ping_id))
            })
            .collect();
        assert_eq!(punches.len(), 48);
        assert_eq!(a.stats().punch_pings, 48);
        assert!(punches.iter().all(|(to, _)| to.ip() == ext));
        let expected = guess_ports(&[40_000, 40_001, 40_002, 40_003], 0);
        assert_eq!(
            punches.iter().map(|(to, _)| to.port()).collect::<Vec<_>>(),
            expected
        );
        // The friend answers the ping that reached port 40_005.
        let (hit, ping_id) = *punches
            .iter()
            .find(|(to, _)| to.port() == 40_005)
            .expect("40005");
        let pong = PingPayload {
            is_response: true,
            ping_id,
        }
        .encode();
        let bytes = DhtEnvelope::seal(
            DhtKind::PingResponse,
            friend.public,
            Nonce([3; 24]),
            &fkey,
            &pong,
        )
        .expect("seal")
        .encode();
        a.handle_datagram(t, hit, &bytes);
        let found = std::iter::from_fn(|| a.poll_event()).any(|e| {
            e == DhtEvent::Found {
                public_key: friend.public,
                addr: hit,
            }
        });
        assert!(found);
        assert_eq!(a.address_of(t, &friend.public), Some(hit));
        // Direct now: no more NAT pings.
        let before = a.stats().nat_pings;
        a.handle_timeout(t + Duration::from_secs(10));
        let _ = sent(&mut a);
        assert_eq!(a.stats().nat_pings, before);
    }

    #[test]
    fn guesses_follow_the_c_toxcore_sequence() {
        // Two reported ports: each twice as reported, then +1/-1 around each, then ±2 …
        let g = guess_ports(&[1000, 2000], 0);
        assert_eq!(g.len(), 48);
        assert_eq!(
            &g[..12],
            &[
                1000, 1000, 2000, 2000, 1001, 999, 2001, 1999, 1002, 998, 2002, 1998
            ]
        );
        // The next round continues where this one stopped.
        let g2 = guess_ports(&[1000, 2000], 48);
        assert_eq!(&g2[..4], &[1012, 988, 2012, 1988]);
        // Modulo 2^16 at the edges.
        let g = guess_ports(&[65535, 0], 4);
        assert_eq!(&g[..4], &[0, 65534, 1, 65535]);
    }

    #[test]
    fn one_port_is_pinged_alone_and_the_sweep_joins_after_five_tries() {
        let mut s = NatState::new();
        for round in 0..6 {
            assert_eq!(
                s.punch_ports(&[4000, 4000, 4000, 4000]),
                vec![4000],
                "{round}"
            );
        }
        // tries == 6 > 5: the sweep from 1024 joins.
        let p = s.punch_ports(&[4000; 4]);
        assert_eq!(p.len(), 49);
        assert_eq!(p[1], 1024);
        assert_eq!(p[48], 1024 + 47);
        let p = s.punch_ports(&[4000; 4]);
        assert_eq!(p[1], 1024 + 24, "each round moves on by 24");
        // Different ports: 48 guesses per round.
        let mut s = NatState::new();
        assert_eq!(s.punch_ports(&[4000, 4001, 4002, 4003]).len(), 48);
        assert_eq!(s.punching_index, 48);
        assert!(s.punch_ports(&[]).is_empty());
    }

    #[test]
    fn common_ip_needs_min_matches() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let list = [
            a("10.0.0.1:1"),
            a("10.0.0.2:2"),
            a("10.0.0.2:3"),
            a("10.0.0.2:4"),
            a("10.0.0.2:5"),
        ];
        assert_eq!(common_ip(&list, 4), Some(a("10.0.0.2:1").ip()));
        assert_eq!(common_ip(&list, 5), None);
    }
}
