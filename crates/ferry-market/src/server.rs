//! The selling side of paid forwarding: a relay or exit that proposes contracts, meters what it
//! forwards, gates on credit and takes vouchers (`payments.md` §4.1–4.4; seed 003's server).
//!
//! Sans-IO: every call takes `now` in Unix seconds; outgoing messages are queued for
//! [`Server::poll_transmit`] and ledger work is asked for with [`ServerEvent`]s.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::identity::NodeSigner;
use crate::msg::{
    Binding, ChannelId, ContractId, Decline, DeclineReason, Envelope, Message, PaymentRequired,
    Prefix, Proposal, Receipt, Settlement, Usage, VoucherMsg,
};
use crate::priority::Class;
use crate::{
    ChannelInfo, MAX_CONTRACTS_PER_PEER, MAX_PEERS, MAX_ROUNDS, MarketError, PeerId,
    VoucherVerifier, due, marginal_due,
};

/// How often a suspended peer is sent [`PaymentRequired`] again, s.
pub const PAYMENT_REMINDER_S: u64 = 5;

/// A server's terms and limits (the `[market]` table of `config.toml`, seed 003's settings).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// Price per KiB of IP packets forwarded, base units (`price_per_kib`).
    pub price_per_kib: u128,
    /// Lowest counter price per KiB the server takes, base units (≤ `price_per_kib`).
    pub min_price_per_kib: u128,
    /// Data a contract covers, KiB (`contract_data_kib`).
    pub contract_data_kib: u64,
    /// How long a contract lasts, s (`contract_time_s`).
    pub contract_time_s: u64,
    /// Credit extended before payment, KiB (`grace_kib`): size it ≥ the bandwidth-delay
    /// product plus the client's voucher interval, or throughput stalls.
    pub grace_kib: u64,
    /// Hard cap on any peer's unpaid amount, base units.
    pub max_credit: u128,
    /// Part of a channel's deposit kept back to pay for the claim's gas, base units.
    pub gas_reserve: u128,
    /// Settlement terms offered in every proposal.
    pub settlement: Settlement,
    /// One-time allowance per new identity without a channel, KiB.
    pub unsecured_kib_per_peer: u64,
    /// Global budget shared by all peers without a channel (Sybil bound), KiB; refilled at
    /// `unsecured_refill_kib_per_hour`.
    pub unsecured_bucket_kib: u64,
    /// Refill rate of the global unsecured budget, KiB per hour.
    pub unsecured_refill_kib_per_hour: u64,
    /// How long a proposal may be accepted, s.
    pub proposal_ttl_s: u64,
    /// How often an invoice ([`Usage`]) goes out per active contract, s.
    pub usage_interval_s: u64,
    /// A channel must outlive the contract by this much, s.
    pub channel_margin_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            price_per_kib: 1_000_000_000, // 1 gwei per KiB ≈ 0.001 ETH per GiB
            min_price_per_kib: 500_000_000,
            contract_data_kib: 1 << 20, // 1 GiB
            contract_time_s: 3600,
            grace_kib: 4096, // 4 MiB: 320 ms at 100 Mbit/s plus a 64 KiB voucher interval
            max_credit: 10_000_000_000_000_000, // 0.01 ETH
            gas_reserve: 0,
            settlement: Settlement {
                chain_id: 0,
                hub: [0; 20],
                receiver: [0; 20],
                min_deposit: 0,
            },
            unsecured_kib_per_peer: 256,
            unsecured_bucket_kib: 16 * 1024,
            unsecured_refill_kib_per_hour: 16 * 1024,
            proposal_ttl_s: 60,
            usage_interval_s: 10,
            channel_margin_s: 600,
        }
    }
}

/// What to do with one packet ([`Server::on_packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it in this class; its bytes are counted.
    Forward(Class),
    /// Drop it: the peer's credit is used up ([`PaymentRequired`] was sent).
    PaymentRequired,
    /// Drop it: the server's peer table is full.
    TableFull,
}

/// The state of one contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContractState {
    /// Proposed, not yet accepted (traffic flows on the unsecured allowance).
    Proposed,
    /// Accepted; the ledger is being asked about the channel.
    AwaitingChannel,
    /// In force.
    Active,
    /// Over: expired, used up, declined or closed.
    Ended,
}

/// Things the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Look `channel_id` up on the ledger and call [`Server::channel_checked`].
    CheckChannel {
        /// The client.
        peer: PeerId,
        /// The channel it named.
        channel_id: ChannelId,
    },
    /// A contract came into force.
    ContractActive {
        /// The client.
        peer: PeerId,
        /// The contract.
        contract_id: ContractId,
    },
    /// A newer voucher was accepted: persist it before forwarding more (it is what the server
    /// redeems on the ledger).
    VoucherAccepted {
        /// The client.
        peer: PeerId,
        /// The voucher.
        voucher: VoucherMsg,
    },
    /// The peer ran out of credit; its traffic is dropped until it pays.
    Suspended {
        /// The client.
        peer: PeerId,
        /// Total due, base units.
        due: u128,
        /// Paid so far, base units.
        paid: u128,
    },
    /// A contract ended.
    ContractEnded {
        /// The client.
        peer: PeerId,
        /// The contract.
        contract_id: ContractId,
    },
}

/// One contract as the server keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerContract {
    /// The terms last proposed (and, once active, accepted).
    pub terms: Proposal,
    /// Hash of the signed proposal envelope the client must name.
    pub proposal_hash: [u8; 32],
    /// State.
    pub state: ContractState,
    /// IP-packet bytes forwarded under it, both directions (client → destination and the
    /// replies back).
    pub forwarded_bytes: u64,
    /// `forwarded_bytes` at the last invoice.
    pub invoiced_bytes: u64,
    /// Unix time (s) of the last invoice.
    pub invoiced_at: u64,
    /// Unix time (s) the proposal was made.
    pub proposed_at: u64,
}

/// The server's accounting for one client, persisted across restarts.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PeerAccount {
    /// The client's binding (signing key and account), once received.
    pub binding: Option<(crate::SigKey, crate::msg::Address, u64)>,
    /// Contracts in creation order (at most [`MAX_CONTRACTS_PER_PEER`]).
    pub contracts: Vec<ServerContract>,
    /// What contracts dropped from the table made due, base units.
    pub history_due: u128,
    /// The client's channel, once checked on the ledger.
    pub channel: Option<ChannelInfo>,
    /// A channel named in an acceptance, being checked.
    pub pending_channel: Option<ChannelId>,
    /// Cumulative amount of the best voucher, base units.
    pub paid: u128,
    /// The best voucher (what to redeem).
    pub best_voucher: Option<(u128, Vec<u8>)>,
    /// Bytes forwarded on the unsecured allowance.
    pub unsecured_bytes: u64,
    /// Whether the peer is cut off for lack of payment.
    pub suspended: bool,
    /// Unix time (s) [`PaymentRequired`] was last sent.
    pub required_at: u64,
    /// Packets dropped for lack of payment.
    pub dropped_packets: u64,
    /// Bytes dropped for lack of payment.
    pub dropped_bytes: u64,
}

impl PeerAccount {
    /// Total due over all contracts, base units.
    pub fn due(&self) -> u128 {
        self.contracts
            .iter()
            .map(|c| due(c.forwarded_bytes, c.terms.price_per_kib))
            .fold(self.history_due, u128::saturating_add)
    }

    /// Due minus paid, base units.
    pub fn unpaid(&self) -> u128 {
        self.due().saturating_sub(self.paid)
    }
}

/// What [`Server::snapshot`] saves and [`Server::restore`] loads.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerSnapshot {
    /// Accounts by peer.
    pub peers: Vec<(PeerId, PeerAccount)>,
    /// Next contract serial.
    pub next_serial: u64,
    /// Global unsecured budget left, bytes.
    pub bucket_bytes: u64,
}

/// The server state machine.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    signer: NodeSigner,
    peers: HashMap<PeerId, PeerAccount>,
    next_serial: u64,
    bucket_bytes: u64,
    bucket_at: Option<u64>,
    out: VecDeque<(PeerId, Vec<u8>)>,
    events: VecDeque<ServerEvent>,
}

impl Server {
    /// A server with no accounts yet.
    pub fn new(config: ServerConfig, signer: NodeSigner) -> Self {
        let bucket_bytes = config.unsecured_bucket_kib.saturating_mul(1024);
        Self {
            config,
            signer,
            peers: HashMap::new(),
            next_serial: 0,
            bucket_bytes,
            bucket_at: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A server that continues from a snapshot (after a restart: credit lines and vouchers
    /// survive).
    pub fn restore(config: ServerConfig, signer: NodeSigner, snap: ServerSnapshot) -> Self {
        let mut s = Self::new(config, signer);
        s.peers = snap.peers.into_iter().take(MAX_PEERS).collect();
        s.next_serial = snap.next_serial;
        s.bucket_bytes = snap.bucket_bytes;
        s
    }

    /// Everything to persist.
    pub fn snapshot(&self) -> ServerSnapshot {
        ServerSnapshot {
            peers: self.peers.iter().map(|(k, v)| (*k, v.clone())).collect(),
            next_serial: self.next_serial,
            bucket_bytes: self.bucket_bytes,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// A peer's account.
    pub fn account(&self, peer: &PeerId) -> Option<&PeerAccount> {
        self.peers.get(peer)
    }

    /// All accounts.
    pub fn accounts(&self) -> impl Iterator<Item = (&PeerId, &PeerAccount)> {
        self.peers.iter()
    }

    /// The next message to send: (peer, bytes without the packet id).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, peer: PeerId, msg: Message) {
        let env = Envelope::seal(msg, &self.signer);
        self.out.push_back((peer, env.encode()));
    }

    fn refill(&mut self, now: u64) {
        let cap = self.config.unsecured_bucket_kib.saturating_mul(1024);
        if let Some(at) = self.bucket_at {
            let add = now.saturating_sub(at).saturating_mul(
                self.config
                    .unsecured_refill_kib_per_hour
                    .saturating_mul(1024),
            ) / 3600;
            if add > 0 {
                self.bucket_bytes = self.bucket_bytes.saturating_add(add).min(cap);
                self.bucket_at = Some(now);
            }
        } else {
            self.bucket_at = Some(now);
        }
    }

    fn new_contract_id(&mut self, peer: &PeerId) -> ContractId {
        self.next_serial += 1;
        let mut h = Sha256::new();
        h.update(b"ferry contract id");
        h.update(self.signer.public().0);
        h.update(peer);
        h.update(self.next_serial.to_be_bytes());
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        id
    }

    /// Proposes a fresh contract for `dest` to `peer`; returns its index.
    fn propose(&mut self, now: u64, peer: PeerId, dest: Prefix) -> Option<usize> {
        let contract_id = self.new_contract_id(&peer);
        let terms = Proposal {
            contract_id,
            dest,
            price_per_kib: self.config.price_per_kib,
            data_limit_kib: self.config.contract_data_kib,
            expires_at: now.saturating_add(self.config.contract_time_s),
            grace_kib: self.config.grace_kib,
            settlement: self.config.settlement,
            round: 0,
        };
        let env = Envelope::seal(Message::Proposal(terms.clone()), &self.signer);
        let acct = self.peers.get_mut(&peer)?;
        if acct.contracts.len() >= MAX_CONTRACTS_PER_PEER {
            // Forget the oldest ended contract; what it made due stays in the history.
            let idx = acct
                .contracts
                .iter()
                .position(|c| c.state == ContractState::Ended)?;
            let old = acct.contracts.remove(idx);
            acct.history_due = acct
                .history_due
                .saturating_add(due(old.forwarded_bytes, old.terms.price_per_kib));
        }
        acct.contracts.push(ServerContract {
            terms,
            proposal_hash: env.hash(),
            state: ContractState::Proposed,
            forwarded_bytes: 0,
            invoiced_bytes: 0,
            invoiced_at: now,
            proposed_at: now,
        });
        let i = acct.contracts.len() - 1;
        self.out.push_back((peer, env.encode()));
        Some(i)
    }

    /// A packet of `len` bytes (the whole IP packet) between `peer` and the remote host `dest`
    /// wants to be forwarded at `now` (Unix s): the client's packet toward `dest`, or `dest`'s
    /// reply going back to the client (then `dest` is the reply's source). Both directions are
    /// metered under the contract covering `dest` and gated by the same credit line. Counts it
    /// if it may go. The first packet toward a destination no contract covers makes a proposal
    /// and flows on the unsecured allowance.
    pub fn on_packet(&mut self, now: u64, peer: PeerId, dest: IpAddr, len: u32) -> Verdict {
        self.refill(now);
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= MAX_PEERS {
                return Verdict::TableFull;
            }
            self.peers.insert(peer, PeerAccount::default());
        }
        let len = u64::from(len);
        let Some(acct) = self.peers.get_mut(&peer) else {
            return Verdict::TableFull;
        };
        // Contracts past their time or data end here.
        for c in &mut acct.contracts {
            if c.state != ContractState::Ended && now >= c.terms.expires_at {
                c.state = ContractState::Ended;
                self.events.push_back(ServerEvent::ContractEnded {
                    peer,
                    contract_id: c.terms.contract_id,
                });
            }
        }
        let fits = |c: &ServerContract| {
            c.state != ContractState::Ended
                && c.terms.dest.contains(dest)
                && c.forwarded_bytes.saturating_add(len)
                    <= c.terms.data_limit_kib.saturating_mul(1024)
        };
        let idx = match acct.contracts.iter().position(fits) {
            Some(i) => i,
            None => match self.propose(now, peer, Prefix::host(dest)) {
                Some(i) => i,
                None => return Verdict::TableFull,
            },
        };
        let Some(acct) = self.peers.get_mut(&peer) else {
            return Verdict::TableFull;
        };
        let c = &acct.contracts[idx];
        let price = c.terms.price_per_kib;
        let cost = marginal_due(c.forwarded_bytes, len, price);
        // Once the peer has a channel, all its traffic (new destinations included) draws on
        // its one credit line; before that, on the unsecured allowance.
        let secured = acct.channel.is_some();
        let active = c.state == ContractState::Active;
        let allowed = if secured {
            let deposit = acct.channel.map_or(0, |ch| ch.deposit);
            let limit =
                due(self.config.grace_kib.saturating_mul(1024), price).min(self.config.max_credit);
            let total = acct.due().saturating_add(cost);
            total.saturating_sub(acct.paid) <= limit
                && total <= deposit.saturating_sub(self.config.gas_reserve)
        } else {
            acct.unsecured_bytes.saturating_add(len)
                <= self.config.unsecured_kib_per_peer.saturating_mul(1024)
                && self.bucket_bytes >= len
                && acct.due().saturating_add(cost).saturating_sub(acct.paid)
                    <= self.config.max_credit
        };
        if !allowed {
            acct.dropped_packets += 1;
            acct.dropped_bytes = acct.dropped_bytes.saturating_add(len);
            if !acct.suspended {
                acct.suspended = true;
                acct.required_at = now;
                let (d, p) = (acct.due(), acct.paid);
                self.events.push_back(ServerEvent::Suspended {
                    peer,
                    due: d,
                    paid: p,
                });
                self.send(
                    peer,
                    Message::PaymentRequired(PaymentRequired { due: d, paid: p }),
                );
            }
            return Verdict::PaymentRequired;
        }
        acct.contracts[idx].forwarded_bytes += len;
        if !secured {
            acct.unsecured_bytes += len;
            self.bucket_bytes -= len;
        }
        Verdict::Forward(if secured && active && acct.paid > 0 {
            Class::Paid
        } else {
            Class::Grace
        })
    }

    /// A market message from `peer` (bytes after the packet id) at `now` (Unix s).
    ///
    /// # Errors
    /// [`MarketError`]: malformed, badly signed, unknown contract, wrong state, refused voucher.
    /// Nothing changes when an error is returned.
    pub fn handle_message(
        &mut self,
        now: u64,
        peer: PeerId,
        bytes: &[u8],
        verifier: &dyn VoucherVerifier,
    ) -> Result<(), MarketError> {
        let env = Envelope::decode(bytes)?;
        if let Message::Binding(b) = &env.msg {
            env.verify(&b.sig_key)?;
            return self.on_binding(now, peer, b.clone());
        }
        if let Message::Quote(q) = &env.msg {
            self.refill(now);
            if !self.peers.contains_key(&peer) {
                if self.peers.len() >= MAX_PEERS {
                    return Err(MarketError::Full("peers"));
                }
                self.peers.insert(peer, PeerAccount::default());
            }
            self.propose(now, peer, q.dest)
                .ok_or(MarketError::Full("contracts"))?;
            return Ok(());
        }
        let acct = self.peers.get(&peer).ok_or(MarketError::NoBinding)?;
        let (key, account, _) = acct.binding.ok_or(MarketError::NoBinding)?;
        env.verify(&key)?;
        match env.msg {
            Message::Acceptance(a) => self.on_acceptance(now, peer, a),
            Message::Rejection(r) => self.on_rejection(now, peer, r),
            Message::Voucher(v) => self.on_voucher(peer, account, v, verifier),
            Message::Close(c) => {
                let acct = self.peers.get_mut(&peer).ok_or(MarketError::NoBinding)?;
                let c = acct
                    .contracts
                    .iter_mut()
                    .find(|x| x.terms.contract_id == c.contract_id)
                    .ok_or(MarketError::UnknownContract)?;
                if c.state != ContractState::Ended {
                    c.state = ContractState::Ended;
                    self.events.push_back(ServerEvent::ContractEnded {
                        peer,
                        contract_id: c.terms.contract_id,
                    });
                }
                Ok(())
            }
            Message::Decline(d) => {
                let acct = self.peers.get_mut(&peer).ok_or(MarketError::NoBinding)?;
                if let Some(c) = acct
                    .contracts
                    .iter_mut()
                    .find(|x| x.terms.contract_id == d.contract_id)
                {
                    c.state = ContractState::Ended;
                }
                Ok(())
            }
            _ => Err(MarketError::Unexpected("message for a client")),
        }
    }

    fn on_binding(&mut self, now: u64, peer: PeerId, b: Binding) -> Result<(), MarketError> {
        if b.expires_at <= now {
            return Err(MarketError::Expired);
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return Err(MarketError::Full("peers"));
        }
        let acct = self.peers.entry(peer).or_default();
        if let Some(ch) = &acct.channel
            && ch.sender != b.account
        {
            return Err(MarketError::Unexpected("binding to another account"));
        }
        acct.binding = Some((b.sig_key, b.account, b.expires_at));
        Ok(())
    }

    fn on_acceptance(
        &mut self,
        now: u64,
        peer: PeerId,
        a: crate::msg::Acceptance,
    ) -> Result<(), MarketError> {
        let acct = self.peers.get_mut(&peer).ok_or(MarketError::NoBinding)?;
        let known_channel = acct.channel.map(|c| c.id);
        let c = acct
            .contracts
            .iter_mut()
            .find(|x| x.terms.contract_id == a.contract_id)
            .ok_or(MarketError::UnknownContract)?;
        if c.state != ContractState::Proposed {
            return Err(MarketError::Unexpected("acceptance"));
        }
        if c.proposal_hash != a.proposal_hash {
            return Err(MarketError::Unexpected("acceptance of another proposal"));
        }
        if now >= c.proposed_at.saturating_add(self.config.proposal_ttl_s)
            || now >= c.terms.expires_at
        {
            return Err(MarketError::Expired);
        }
        if known_channel == Some(a.channel_id) {
            c.state = ContractState::Active;
            self.events.push_back(ServerEvent::ContractActive {
                peer,
                contract_id: a.contract_id,
            });
            return Ok(());
        }
        c.state = ContractState::AwaitingChannel;
        acct.pending_channel = Some(a.channel_id);
        self.events.push_back(ServerEvent::CheckChannel {
            peer,
            channel_id: a.channel_id,
        });
        Ok(())
    }

    /// The ledger's answer to [`ServerEvent::CheckChannel`] (`None`: no such channel). A
    /// channel is taken if it pays this server's account from the peer's bound account, covers
    /// the minimum deposit, is open and outlives every awaiting contract by the margin; its
    /// contracts then come into force. Otherwise they end with a decline.
    pub fn channel_checked(&mut self, now: u64, peer: PeerId, info: Option<ChannelInfo>) {
        let Some(acct) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(pending) = acct.pending_channel.take() else {
            return;
        };
        let payer = acct.binding.map(|b| b.1);
        let latest_end = acct
            .contracts
            .iter()
            .filter(|c| c.state == ContractState::AwaitingChannel)
            .map(|c| c.terms.expires_at)
            .max()
            .unwrap_or(now);
        let ok = info.filter(|ch| {
            ch.id == pending
                && Some(ch.sender) == payer
                && ch.receiver == self.config.settlement.receiver
                && ch.deposit >= self.config.settlement.min_deposit
                && ch.deposit > ch.claimed
                && ch.expiry >= latest_end.saturating_add(self.config.channel_margin_s)
        });
        let mut declined = Vec::new();
        let mut active = Vec::new();
        if let Some(ch) = ok {
            // A new channel for the same pair carries over what the old one was paid only if
            // it is the same id.
            if acct.channel.map(|c| c.id) != Some(ch.id) {
                acct.paid = acct.paid.max(ch.claimed);
            }
            acct.channel = Some(ch);
        }
        for c in &mut acct.contracts {
            if c.state == ContractState::AwaitingChannel {
                if ok.is_some() {
                    c.state = ContractState::Active;
                    active.push(c.terms.contract_id);
                } else {
                    c.state = ContractState::Ended;
                    declined.push(c.terms.contract_id);
                }
            }
        }
        for contract_id in active {
            self.events
                .push_back(ServerEvent::ContractActive { peer, contract_id });
        }
        for contract_id in declined {
            self.send(
                peer,
                Message::Decline(Decline {
                    contract_id,
                    reason: DeclineReason::Channel as u8,
                }),
            );
        }
    }

    /// The ledger's newer view of the peer's channel (a top-up or a claim).
    pub fn channel_updated(&mut self, peer: PeerId, info: ChannelInfo) {
        if let Some(acct) = self.peers.get_mut(&peer)
            && acct.channel.map(|c| c.id) == Some(info.id)
        {
            acct.channel = Some(info);
        }
    }

    fn on_rejection(
        &mut self,
        now: u64,
        peer: PeerId,
        r: crate::msg::Rejection,
    ) -> Result<(), MarketError> {
        let min_price = self.config.min_price_per_kib;
        let acct = self.peers.get_mut(&peer).ok_or(MarketError::NoBinding)?;
        let c = acct
            .contracts
            .iter_mut()
            .find(|x| x.terms.contract_id == r.contract_id)
            .ok_or(MarketError::UnknownContract)?;
        if c.state != ContractState::Proposed || c.terms.round != r.round {
            return Err(MarketError::Unexpected("rejection"));
        }
        let next_round = r.round.saturating_add(1);
        let price = r.counter_price_per_kib.max(min_price);
        let reason = if next_round >= MAX_ROUNDS {
            Some(DeclineReason::RoundsExhausted)
        } else if price >= c.terms.price_per_kib {
            // Nothing lower to offer.
            Some(DeclineReason::PriceTooLow)
        } else {
            None
        };
        if let Some(reason) = reason {
            c.state = ContractState::Ended;
            let contract_id = c.terms.contract_id;
            self.send(
                peer,
                Message::Decline(Decline {
                    contract_id,
                    reason: reason as u8,
                }),
            );
            return Ok(());
        }
        c.terms.price_per_kib = price;
        c.terms.round = next_round;
        c.proposed_at = now;
        let env = Envelope::seal(Message::Proposal(c.terms.clone()), &self.signer);
        c.proposal_hash = env.hash();
        self.out.push_back((peer, env.encode()));
        Ok(())
    }

    fn on_voucher(
        &mut self,
        peer: PeerId,
        payer: crate::msg::Address,
        v: VoucherMsg,
        verifier: &dyn VoucherVerifier,
    ) -> Result<(), MarketError> {
        let acct = self.peers.get_mut(&peer).ok_or(MarketError::NoBinding)?;
        let ch = acct
            .channel
            .ok_or_else(|| MarketError::Voucher("no channel".into()))?;
        if v.channel_id != ch.id {
            return Err(MarketError::Voucher("another channel".into()));
        }
        if v.cumulative == acct.paid {
            // The same voucher again: credited once.
            return Ok(());
        }
        if v.cumulative < acct.paid {
            return Err(MarketError::Voucher("older than the best one".into()));
        }
        if v.cumulative > ch.deposit {
            return Err(MarketError::Voucher("more than the deposit".into()));
        }
        if ch.sender != payer {
            return Err(MarketError::Voucher("channel of another account".into()));
        }
        verifier
            .verify(&v.channel_id, v.cumulative, &v.signature, &payer)
            .map_err(MarketError::Voucher)?;
        acct.paid = v.cumulative;
        acct.best_voucher = Some((v.cumulative, v.signature.to_vec()));
        let limit = due(
            self.config.grace_kib.saturating_mul(1024),
            self.config.price_per_kib,
        )
        .min(self.config.max_credit);
        if acct.suspended && acct.unpaid() <= limit {
            acct.suspended = false;
        }
        self.events
            .push_back(ServerEvent::VoucherAccepted { peer, voucher: v });
        Ok(())
    }

    /// Timers at `now` (Unix s): contracts and stale proposals end, invoices go out. Call about
    /// once a second.
    pub fn handle_timeout(&mut self, now: u64) {
        self.refill(now);
        let ttl = self.config.proposal_ttl_s;
        let every = self.config.usage_interval_s.max(1);
        let mut invoices = Vec::new();
        let mut nags = Vec::new();
        for (peer, acct) in &mut self.peers {
            // A suspended peer is reminded every PAYMENT_REMINDER_S (its voucher may have been
            // lost, or this server restarted).
            if acct.suspended && now >= acct.required_at.saturating_add(PAYMENT_REMINDER_S) {
                acct.required_at = now;
                nags.push((
                    *peer,
                    PaymentRequired {
                        due: acct.due(),
                        paid: acct.paid,
                    },
                ));
            }
            for c in &mut acct.contracts {
                let stale_proposal = c.state == ContractState::Proposed
                    && c.forwarded_bytes == 0
                    && now >= c.proposed_at.saturating_add(ttl);
                if c.state != ContractState::Ended && (now >= c.terms.expires_at || stale_proposal)
                {
                    c.state = ContractState::Ended;
                    self.events.push_back(ServerEvent::ContractEnded {
                        peer: *peer,
                        contract_id: c.terms.contract_id,
                    });
                }
                if c.state == ContractState::Active
                    && c.forwarded_bytes != c.invoiced_bytes
                    && now >= c.invoiced_at.saturating_add(every)
                {
                    c.invoiced_bytes = c.forwarded_bytes;
                    c.invoiced_at = now;
                    invoices.push((
                        *peer,
                        Usage {
                            contract_id: c.terms.contract_id,
                            forwarded_bytes: c.forwarded_bytes,
                            due: due(c.forwarded_bytes, c.terms.price_per_kib),
                        },
                    ));
                }
            }
        }
        for (peer, u) in invoices {
            self.send(peer, Message::Usage(u));
        }
        for (peer, r) in nags {
            self.send(peer, Message::PaymentRequired(r));
        }
    }

    /// The signed binding to send to a peer when its session comes up.
    pub fn binding(&self, account: crate::msg::Address, expires_at: u64) -> Vec<u8> {
        Envelope::seal(
            Message::Binding(Binding {
                sig_key: self.signer.public(),
                account,
                chain_id: self.config.settlement.chain_id,
                expires_at,
            }),
            &self.signer,
        )
        .encode()
    }
}

/// Issues signed delivery receipts as a destination (an exit, or a node receiving on its mesh
/// address): bytes received from each client, every `every_bytes` or `every_s` seconds.
#[derive(Debug)]
pub struct ReceiptIssuer {
    signer: NodeSigner,
    flows: HashMap<PeerId, (u64, u64, u64, u64)>,
    every_bytes: u64,
    every_s: u64,
    out: VecDeque<(PeerId, Vec<u8>)>,
}

impl ReceiptIssuer {
    /// Receipts every `every_bytes` bytes or `every_s` seconds, whichever comes first.
    pub fn new(signer: NodeSigner, every_bytes: u64, every_s: u64) -> Self {
        Self {
            signer,
            flows: HashMap::new(),
            every_bytes: every_bytes.max(1),
            every_s: every_s.max(1),
            out: VecDeque::new(),
        }
    }

    /// The flow id of `client`'s traffic to the node with signing key `dest`: the first 16
    /// bytes of SHA-256("ferry flow" ‖ client ‖ dest key).
    pub fn flow_id(client: &PeerId, dest: &crate::SigKey) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(b"ferry flow");
        h.update(client);
        h.update(dest.0);
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        id
    }

    /// `len` bytes of IP packets from `client` arrived at `now` (Unix s).
    pub fn on_delivered(&mut self, now: u64, client: PeerId, len: u64) {
        if !self.flows.contains_key(&client) && self.flows.len() >= MAX_PEERS {
            return;
        }
        let f = self.flows.entry(client).or_insert((0, 0, 0, now));
        f.0 = f.0.saturating_add(len);
        if f.0 >= f.1.saturating_add(self.every_bytes) {
            self.issue(now, client);
        }
    }

    fn issue(&mut self, now: u64, client: PeerId) {
        let key = self.signer.public();
        let Some(f) = self.flows.get_mut(&client) else {
            return;
        };
        f.1 = f.0;
        f.2 += 1;
        f.3 = now;
        let r = Receipt {
            flow_id: Self::flow_id(&client, &key),
            cumulative_bytes: f.0,
            seq: f.2,
        };
        let bytes = Envelope::seal(Message::Receipt(r), &self.signer).encode();
        self.out.push_back((client, bytes));
    }

    /// Timers: flows with unreceipted bytes older than `every_s` get a receipt.
    pub fn handle_timeout(&mut self, now: u64) {
        let due: Vec<PeerId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.0 != f.1 && now >= f.3.saturating_add(self.every_s))
            .map(|(k, _)| *k)
            .collect();
        for c in due {
            self.issue(now, c);
        }
    }

    /// The next receipt to send: (client, bytes without the packet id).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.out.pop_front()
    }
}
