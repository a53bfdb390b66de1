//! The buying side of paid forwarding: a client that accepts or counters proposals, meters what
//! it sends, renews contracts by threshold and pays with vouchers capped by delivery receipts
//! (`payments.md` §4.3–4.4; seed 003's client).
//!
//! Sans-IO: every call takes `now` in Unix seconds; messages go out through
//! [`Client::poll_transmit`]; opening a channel on the ledger is asked for with
//! [`ClientEvent::OpenChannel`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use crate::identity::NodeSigner;
use crate::msg::{
    Acceptance, Address, Binding, ChannelId, Close, ContractId, Envelope, Message, Prefix,
    Proposal, Quote, Rejection, VoucherMsg,
};
use crate::server::ReceiptIssuer;
use crate::{MAX_CONTRACTS_PER_PEER, MAX_PEERS, MarketError, PeerId, SigKey, VoucherSigner, due};

/// A client's limits (the `[market]` table of `config.toml`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientConfig {
    /// Highest price per KiB accepted, base units (`max_price_per_kib`, `--max-price`).
    pub max_price_per_kib: u128,
    /// Renew when a contract has less than this much data left, KiB (`data_renewal_kib`).
    pub data_renewal_kib: u64,
    /// Renew when a contract has less than this much time left, s (`time_renewal_s`).
    pub time_renewal_s: u64,
    /// Send a voucher every this many KiB of payable traffic.
    pub voucher_kib: u64,
    /// Bytes sent but not yet receipted that are paid for anyway, KiB (0: pay only what the
    /// destination confirmed).
    pub inflight_allowance_kib: u64,
    /// Close a server's contracts when this much sent data stays unreceipted, KiB.
    pub max_unreceipted_kib: u64,
    /// Deposit to lock when opening a channel, base units (at least the server's minimum).
    pub deposit: u128,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_price_per_kib: 2_000_000_000,
            data_renewal_kib: 64 * 1024,
            time_renewal_s: 300,
            voucher_kib: 64,
            inflight_allowance_kib: 0,
            max_unreceipted_kib: 8 * 1024,
            deposit: 10_000_000_000_000_000, // 0.01 ETH
        }
    }
}

/// The state of a contract on the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientContractState {
    /// Accepted, waiting for the channel to be opened.
    AwaitingChannel,
    /// Accepted and in force.
    Active,
    /// Countered; waiting for a new proposal.
    Negotiating,
    /// Over.
    Ended,
}

/// One contract as the client keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientContract {
    /// The accepted (or last proposed) terms.
    pub terms: Proposal,
    /// State.
    pub state: ClientContractState,
    /// IP-packet bytes sent under it.
    pub sent_bytes: u64,
    /// IP-packet bytes received under it: replies from the destination that the server
    /// forwarded back (the client's own count; they need no receipt, the client is their
    /// destination). They count toward the data limit and are paid like sent bytes.
    #[serde(default)]
    pub received_bytes: u64,
    /// A renewal quote went out for it.
    pub renewing: bool,
}

/// The client's view of one server.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerAccount {
    /// The server's binding (signing key, account).
    pub binding: Option<(SigKey, Address)>,
    /// The channel paying this server: id and deposit.
    pub channel: Option<(ChannelId, u128)>,
    /// Contracts in creation order.
    pub contracts: Vec<ClientContract>,
    /// Bytes sent toward destinations no contract covers yet, by destination.
    pub uncontracted: Vec<(IpAddr, u64)>,
    /// Bytes received from sources no contract covers yet, by source (moved under the
    /// contract that comes to cover them, as the server counted them there).
    #[serde(default)]
    pub uncontracted_received: Vec<(IpAddr, u64)>,
    /// Who signs the receipts that pay this server (the flow's destination; the server itself
    /// for a one-hop exit).
    pub receipt_source: Option<PeerId>,
    /// Cumulative amount of the last voucher sent, base units.
    pub vouchered: u128,
    /// Payable bytes at the last voucher.
    pub vouchered_bytes: u64,
    /// The server asked for payment and has not been paid since.
    pub payment_required: bool,
    /// Contracts were closed because too much went unreceipted.
    pub abandoned: bool,
    /// An [`ClientEvent::OpenChannel`] is outstanding.
    pub channel_requested: bool,
    /// Bytes of contracts dropped from the table.
    pub history_bytes: u64,
    /// What those bytes cost, base units.
    pub history_due: u128,
}

impl ServerAccount {
    /// Bytes sent under contracts (in force or ended).
    pub fn contracted_bytes(&self) -> u64 {
        self.contracts.iter().map(|c| c.sent_bytes).sum()
    }
}

/// Things the daemon must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Open a channel on the ledger paying `receiver` and call [`Client::channel_opened`].
    OpenChannel {
        /// The server.
        server: PeerId,
        /// Its account.
        receiver: Address,
        /// What to lock, base units.
        deposit: u128,
        /// At least until this Unix time (s).
        expiry: u64,
    },
    /// A contract is in force.
    ContractActive {
        /// The server.
        server: PeerId,
        /// The contract.
        contract_id: ContractId,
    },
    /// A negotiation ended without a contract.
    Declined {
        /// The server.
        server: PeerId,
        /// The contract.
        contract_id: ContractId,
    },
    /// A voucher went out (persist it: it is money).
    VoucherSent {
        /// The server.
        server: PeerId,
        /// The voucher.
        voucher: VoucherMsg,
    },
    /// The server's contracts were closed: too much sent data went unreceipted.
    Abandoned {
        /// The server.
        server: PeerId,
    },
}

/// Receipts seen from one destination.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct ReceiptState {
    seq: u64,
    bytes: u64,
}

/// The client state machine.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    signer: NodeSigner,
    me: PeerId,
    servers: HashMap<PeerId, ServerAccount>,
    receipts: HashMap<PeerId, ReceiptState>,
    dest_keys: HashMap<PeerId, SigKey>,
    pending_accepts: Vec<(PeerId, ContractId, [u8; 32])>,
    out: VecDeque<(PeerId, Vec<u8>)>,
    events: VecDeque<ClientEvent>,
}

/// Most destinations tracked as uncontracted per server.
const MAX_UNCONTRACTED: usize = 64;

impl Client {
    /// A client with long-term key `me`.
    pub fn new(config: ClientConfig, signer: NodeSigner, me: PeerId) -> Self {
        Self {
            config,
            signer,
            me,
            servers: HashMap::new(),
            receipts: HashMap::new(),
            dest_keys: HashMap::new(),
            pending_accepts: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Changes the highest price per KiB accepted from now on (`ferry tunnel up --max-price`);
    /// contracts already in force keep their terms.
    pub fn set_max_price_per_kib(&mut self, max_price_per_kib: u128) {
        self.config.max_price_per_kib = max_price_per_kib;
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The client's view of `server`.
    pub fn account(&self, server: &PeerId) -> Option<&ServerAccount> {
        self.servers.get(server)
    }

    /// All servers.
    pub fn accounts(&self) -> impl Iterator<Item = (&PeerId, &ServerAccount)> {
        self.servers.iter()
    }

    /// Bytes the destination `dest` has receipted.
    pub fn receipted(&self, dest: &PeerId) -> u64 {
        self.receipts.get(dest).map_or(0, |r| r.bytes)
    }

    /// The next message to send: (peer, bytes without the packet id).
    pub fn poll_transmit(&mut self) -> Option<(PeerId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn send(&mut self, peer: PeerId, msg: Message) {
        let env = Envelope::seal(msg, &self.signer);
        self.out.push_back((peer, env.encode()));
    }

    fn account_mut(&mut self, server: PeerId) -> Result<&mut ServerAccount, MarketError> {
        if !self.servers.contains_key(&server) && self.servers.len() >= MAX_PEERS {
            return Err(MarketError::Full("servers"));
        }
        Ok(self.servers.entry(server).or_default())
    }

    /// Declares that traffic through `server` is paid by receipts from `dest` (the exit at the
    /// end of the flow; `server` itself for a one-hop exit).
    pub fn set_receipt_source(&mut self, server: PeerId, dest: PeerId) -> Result<(), MarketError> {
        self.account_mut(server)?.receipt_source = Some(dest);
        Ok(())
    }

    /// A delivery count the caller trusts without a signature: `source` (a name the caller
    /// chose, e.g. for the far end of its circuits through one relay, which counts the cells
    /// it received and sends the count back sealed under the circuit's end-to-end key, so no
    /// relay can forge it) confirmed `cumulative` bytes. Acts like a signed receipt from
    /// `source`: servers whose [`Client::set_receipt_source`] is `source` are paid up to it.
    /// Older (smaller) counts change nothing; a new `source` beyond [`MAX_PEERS`] is ignored.
    pub fn confirm_delivery(
        &mut self,
        source: PeerId,
        cumulative: u64,
        signer: &dyn VoucherSigner,
    ) {
        if !self.receipts.contains_key(&source) && self.receipts.len() >= MAX_PEERS {
            return;
        }
        let st = self.receipts.entry(source).or_default();
        if cumulative <= st.bytes {
            return;
        }
        st.bytes = cumulative;
        let paid_by_it: Vec<PeerId> = self
            .servers
            .iter()
            .filter(|(_, a)| a.receipt_source == Some(source))
            .map(|(k, _)| *k)
            .collect();
        for s in paid_by_it {
            self.check_unreceipted(s);
            self.maybe_voucher(s, false, signer);
        }
    }

    /// The signed binding to send to a server when the session comes up.
    pub fn binding(&self, account: Address, chain_id: u64, expires_at: u64) -> Vec<u8> {
        Envelope::seal(
            Message::Binding(Binding {
                sig_key: self.signer.public(),
                account,
                chain_id,
                expires_at,
            }),
            &self.signer,
        )
        .encode()
    }

    /// Whether traffic may still go through `server` (false once abandoned).
    pub fn may_send(&self, server: &PeerId) -> bool {
        self.servers.get(server).is_none_or(|a| !a.abandoned)
    }

    /// `len` bytes (a whole IP packet) toward `dest` were handed to the link to `server` at
    /// `now` (Unix s). Counts them under the contract that covers `dest` (the same rule as
    /// the server's), renews by threshold and sends a voucher when one is due.
    pub fn on_sent(
        &mut self,
        now: u64,
        server: PeerId,
        dest: IpAddr,
        len: u32,
        signer: &dyn VoucherSigner,
    ) -> Result<(), MarketError> {
        let len = u64::from(len);
        let (renew_kib, renew_s) = (self.config.data_renewal_kib, self.config.time_renewal_s);
        let (renew, quote_dest) = {
            let acct = self.account_mut(server)?;
            let fits = |c: &ClientContract| {
                matches!(
                    c.state,
                    ClientContractState::Active | ClientContractState::AwaitingChannel
                ) && now < c.terms.expires_at
                    && c.terms.dest.contains(dest)
                    && c.sent_bytes
                        .saturating_add(c.received_bytes)
                        .saturating_add(len)
                        <= c.terms.data_limit_kib.saturating_mul(1024)
            };
            match acct.contracts.iter().position(fits) {
                Some(i) => {
                    let c = &mut acct.contracts[i];
                    c.sent_bytes += len;
                    let left_kib = c.terms.data_limit_kib.saturating_sub(
                        c.sent_bytes.saturating_add(c.received_bytes).div_ceil(1024),
                    );
                    let left_s = c.terms.expires_at.saturating_sub(now);
                    let renew = !c.renewing && (left_kib < renew_kib || left_s < renew_s);
                    if renew {
                        c.renewing = true;
                    }
                    (renew, c.terms.dest)
                }
                None => {
                    if let Some(u) = acct.uncontracted.iter_mut().find(|u| u.0 == dest) {
                        u.1 += len;
                    } else if acct.uncontracted.len() < MAX_UNCONTRACTED {
                        acct.uncontracted.push((dest, len));
                    } else {
                        return Err(MarketError::Full("uncontracted destinations"));
                    }
                    (false, Prefix::host(dest))
                }
            }
        };
        if renew {
            self.out.push_back((
                server,
                Envelope::unsigned(Message::Quote(Quote { dest: quote_dest })).encode(),
            ));
        }
        self.check_unreceipted(server);
        self.maybe_voucher(server, false, signer);
        Ok(())
    }

    /// `len` bytes (a whole IP packet) from `src` arrived from `server` at `now` (Unix s): a
    /// reply the server forwarded back. Counts them under the contract whose destination
    /// covers `src` (the server meters them there too), so they are paid in the next voucher;
    /// bytes from a source no contract covers yet wait until one does. Unlike sent bytes they
    /// need no receipt: this node is their destination.
    ///
    /// # Errors
    /// [`MarketError::Full`] when the server or uncontracted-source tables are full.
    pub fn on_received(
        &mut self,
        now: u64,
        server: PeerId,
        src: IpAddr,
        len: u32,
        signer: &dyn VoucherSigner,
    ) -> Result<(), MarketError> {
        let len = u64::from(len);
        let acct = self.account_mut(server)?;
        let fits = |c: &ClientContract| {
            matches!(
                c.state,
                ClientContractState::Active | ClientContractState::AwaitingChannel
            ) && now < c.terms.expires_at
                && c.terms.dest.contains(src)
        };
        match acct.contracts.iter().position(fits) {
            Some(i) => acct.contracts[i].received_bytes += len,
            None => {
                if let Some(u) = acct.uncontracted_received.iter_mut().find(|u| u.0 == src) {
                    u.1 += len;
                } else if acct.uncontracted_received.len() < MAX_UNCONTRACTED {
                    acct.uncontracted_received.push((src, len));
                } else {
                    return Err(MarketError::Full("uncontracted sources"));
                }
                return Ok(());
            }
        }
        self.maybe_voucher(server, false, signer);
        Ok(())
    }

    /// A market message from `peer` at `now` (Unix s).
    ///
    /// # Errors
    /// [`MarketError`]: malformed, badly signed, expired, unknown contract. Nothing changes
    /// when an error is returned.
    pub fn handle_message(
        &mut self,
        now: u64,
        peer: PeerId,
        bytes: &[u8],
        signer: &dyn VoucherSigner,
    ) -> Result<(), MarketError> {
        let env = Envelope::decode(bytes)?;
        if let Message::Binding(b) = &env.msg {
            env.verify(&b.sig_key)?;
            if b.expires_at <= now {
                return Err(MarketError::Expired);
            }
            self.dest_keys.insert(peer, b.sig_key);
            if self.dest_keys.len() > MAX_PEERS {
                self.dest_keys.retain(|k, _| *k == peer);
            }
            if self.servers.contains_key(&peer) || self.servers.len() < MAX_PEERS {
                self.servers.entry(peer).or_default().binding = Some((b.sig_key, b.account));
            }
            return Ok(());
        }
        let key = *self.dest_keys.get(&peer).ok_or(MarketError::NoBinding)?;
        env.verify(&key)?;
        let hash = env.hash();
        match env.msg {
            Message::Proposal(p) => self.on_proposal(now, peer, p, hash),
            Message::Decline(d) => {
                let acct = self.account_mut(peer)?;
                let c = acct
                    .contracts
                    .iter_mut()
                    .find(|c| c.terms.contract_id == d.contract_id)
                    .ok_or(MarketError::UnknownContract)?;
                c.state = ClientContractState::Ended;
                self.events.push_back(ClientEvent::Declined {
                    server: peer,
                    contract_id: d.contract_id,
                });
                Ok(())
            }
            Message::Receipt(r) => {
                let expect = ReceiptIssuer::flow_id(&self.me, &key);
                if r.flow_id != expect {
                    return Err(MarketError::Unexpected("receipt for another flow"));
                }
                let st = self.receipts.entry(peer).or_default();
                if r.seq <= st.seq {
                    return Ok(());
                }
                st.seq = r.seq;
                st.bytes = st.bytes.max(r.cumulative_bytes);
                let paid_by_it: Vec<PeerId> = self
                    .servers
                    .iter()
                    .filter(|(k, a)| a.receipt_source.unwrap_or(**k) == peer)
                    .map(|(k, _)| *k)
                    .collect();
                for s in paid_by_it {
                    self.check_unreceipted(s);
                    self.maybe_voucher(s, false, signer);
                }
                Ok(())
            }
            Message::PaymentRequired(r) => {
                let mut resend = None;
                if let Some(a) = self.servers.get_mut(&peer) {
                    a.payment_required = true;
                    // The server has less than we sent (a voucher lost, or it restarted): send
                    // the best one again.
                    if let Some((channel_id, _)) = a.channel
                        && r.paid < a.vouchered
                    {
                        resend = Some(VoucherMsg {
                            channel_id,
                            cumulative: a.vouchered,
                            signature: signer.sign(&channel_id, a.vouchered),
                        });
                    }
                }
                if let Some(v) = resend {
                    self.out
                        .push_back((peer, Envelope::unsigned(Message::Voucher(v)).encode()));
                }
                self.maybe_voucher(peer, true, signer);
                Ok(())
            }
            Message::Usage(_) => Ok(()),
            Message::Close(c) => {
                if let Some(a) = self.servers.get_mut(&peer)
                    && let Some(x) = a
                        .contracts
                        .iter_mut()
                        .find(|x| x.terms.contract_id == c.contract_id)
                {
                    x.state = ClientContractState::Ended;
                }
                Ok(())
            }
            _ => Err(MarketError::Unexpected("message for a server")),
        }
    }

    fn on_proposal(
        &mut self,
        now: u64,
        server: PeerId,
        p: Proposal,
        hash: [u8; 32],
    ) -> Result<(), MarketError> {
        if p.expires_at <= now {
            return Err(MarketError::Expired);
        }
        let max_price = self.config.max_price_per_kib;
        let deposit = self.config.deposit.max(p.settlement.min_deposit);
        let acct = self.account_mut(server)?;
        let existing = acct
            .contracts
            .iter()
            .position(|c| c.terms.contract_id == p.contract_id);
        if let Some(i) = existing
            && acct.contracts[i].state != ClientContractState::Negotiating
        {
            return Err(MarketError::Unexpected("proposal for a settled contract"));
        }
        if existing.is_none() && acct.contracts.len() >= MAX_CONTRACTS_PER_PEER {
            // Drop the oldest ended contract whose bytes are all vouchered for.
            match acct
                .contracts
                .iter()
                .position(|c| c.state == ClientContractState::Ended)
            {
                Some(i) => {
                    let old = acct.contracts.remove(i);
                    acct.history_bytes = acct.history_bytes.saturating_add(old.sent_bytes);
                    acct.history_due = acct.history_due.saturating_add(due(
                        old.sent_bytes.saturating_add(old.received_bytes),
                        old.terms.price_per_kib,
                    ));
                }
                None => return Err(MarketError::Full("contracts")),
            }
        }
        let idx = match existing {
            Some(i) => {
                acct.contracts[i].terms = p.clone();
                i
            }
            None => {
                acct.contracts.push(ClientContract {
                    terms: p.clone(),
                    state: ClientContractState::Negotiating,
                    sent_bytes: 0,
                    received_bytes: 0,
                    renewing: false,
                });
                acct.contracts.len() - 1
            }
        };
        if p.price_per_kib > max_price {
            if p.round.saturating_add(1) >= crate::MAX_ROUNDS {
                acct.contracts[idx].state = ClientContractState::Ended;
                self.events.push_back(ClientEvent::Declined {
                    server,
                    contract_id: p.contract_id,
                });
                self.send(
                    server,
                    Message::Decline(crate::msg::Decline {
                        contract_id: p.contract_id,
                        reason: crate::msg::DeclineReason::RoundsExhausted as u8,
                    }),
                );
                return Ok(());
            }
            self.send(
                server,
                Message::Rejection(Rejection {
                    contract_id: p.contract_id,
                    round: p.round,
                    counter_price_per_kib: max_price,
                }),
            );
            return Ok(());
        }
        // Accept: bytes already sent toward destinations it covers come under it (the server
        // counted them under this contract from the first packet).
        let mut moved = 0u64;
        acct.uncontracted.retain(|(d, n)| {
            if p.dest.contains(*d) {
                moved += n;
                false
            } else {
                true
            }
        });
        acct.contracts[idx].sent_bytes += moved;
        let mut moved = 0u64;
        acct.uncontracted_received.retain(|(d, n)| {
            if p.dest.contains(*d) {
                moved += n;
                false
            } else {
                true
            }
        });
        acct.contracts[idx].received_bytes += moved;
        let receiver = p.settlement.receiver;
        let channel = acct.channel;
        match channel {
            Some((channel_id, _)) => {
                acct.contracts[idx].state = ClientContractState::Active;
                self.events.push_back(ClientEvent::ContractActive {
                    server,
                    contract_id: p.contract_id,
                });
                self.send(
                    server,
                    Message::Acceptance(Acceptance {
                        contract_id: p.contract_id,
                        proposal_hash: hash,
                        channel_id,
                    }),
                );
            }
            None => {
                acct.contracts[idx].state = ClientContractState::AwaitingChannel;
                let first = !acct.channel_requested;
                acct.channel_requested = true;
                if self.pending_accepts.len() >= MAX_PEERS {
                    return Err(MarketError::Full("pending acceptances"));
                }
                self.pending_accepts.push((server, p.contract_id, hash));
                if first {
                    self.events.push_back(ClientEvent::OpenChannel {
                        server,
                        receiver,
                        deposit,
                        expiry: p.expires_at,
                    });
                }
            }
        }
        Ok(())
    }

    /// The ledger opened (or found) the channel asked for with [`ClientEvent::OpenChannel`]
    /// (`None`: it could not; the contracts waiting for it end). Sends the waiting acceptances.
    pub fn channel_opened(&mut self, server: PeerId, channel: Option<(ChannelId, u128)>) {
        let waiting: Vec<(ContractId, [u8; 32])> = self
            .pending_accepts
            .iter()
            .filter(|p| p.0 == server)
            .map(|p| (p.1, p.2))
            .collect();
        self.pending_accepts.retain(|p| p.0 != server);
        let Some(acct) = self.servers.get_mut(&server) else {
            return;
        };
        acct.channel_requested = false;
        if let Some(ch) = channel {
            acct.channel = Some(ch);
        }
        let mut msgs = Vec::new();
        for (contract_id, hash) in waiting {
            let Some(c) = acct
                .contracts
                .iter_mut()
                .find(|c| c.terms.contract_id == contract_id)
            else {
                continue;
            };
            match channel {
                Some((channel_id, _)) => {
                    c.state = ClientContractState::Active;
                    self.events.push_back(ClientEvent::ContractActive {
                        server,
                        contract_id,
                    });
                    msgs.push(Message::Acceptance(Acceptance {
                        contract_id,
                        proposal_hash: hash,
                        channel_id,
                    }));
                }
                None => {
                    c.state = ClientContractState::Ended;
                    self.events.push_back(ClientEvent::Declined {
                        server,
                        contract_id,
                    });
                }
            }
        }
        for m in msgs {
            self.send(server, m);
        }
    }

    /// What the client owes `server` for bytes the destination receipted (plus the in-flight
    /// allowance) and for the bytes it received back through `server`: (payable bytes, due in
    /// base units), contracts taken in creation order.
    pub fn payable(&self, server: &PeerId) -> (u64, u128) {
        let Some(acct) = self.servers.get(server) else {
            return (0, 0);
        };
        let source = acct.receipt_source.unwrap_or(*server);
        let receipted = self.receipted(&source);
        let total = acct.history_bytes.saturating_add(acct.contracted_bytes());
        let payable = total
            .min(receipted.saturating_add(self.config.inflight_allowance_kib.saturating_mul(1024)));
        let mut left = payable;
        let mut owed = 0u128;
        if left >= acct.history_bytes {
            owed = acct.history_due;
            left -= acct.history_bytes;
        } else {
            left = 0;
        }
        let mut received = 0u64;
        for c in &acct.contracts {
            let b = c.sent_bytes.min(left);
            owed = owed.saturating_add(due(
                b.saturating_add(c.received_bytes),
                c.terms.price_per_kib,
            ));
            left -= b;
            received = received.saturating_add(c.received_bytes);
        }
        (payable.saturating_add(received), owed)
    }

    fn maybe_voucher(&mut self, server: PeerId, force: bool, signer: &dyn VoucherSigner) {
        let (payable, owed) = self.payable(&server);
        let every = self.config.voucher_kib.saturating_mul(1024);
        let Some(acct) = self.servers.get_mut(&server) else {
            return;
        };
        let Some((channel_id, deposit)) = acct.channel else {
            return;
        };
        let cumulative = owed.min(deposit);
        if cumulative <= acct.vouchered {
            return;
        }
        if !force && payable < acct.vouchered_bytes.saturating_add(every) {
            return;
        }
        let voucher = VoucherMsg {
            channel_id,
            cumulative,
            signature: signer.sign(&channel_id, cumulative),
        };
        acct.vouchered = cumulative;
        acct.vouchered_bytes = payable;
        acct.payment_required = false;
        self.events.push_back(ClientEvent::VoucherSent {
            server,
            voucher: voucher.clone(),
        });
        self.out.push_back((
            server,
            Envelope::unsigned(Message::Voucher(voucher)).encode(),
        ));
    }

    fn check_unreceipted(&mut self, server: PeerId) {
        let Some(acct) = self.servers.get(&server) else {
            return;
        };
        if acct.abandoned {
            return;
        }
        let source = acct.receipt_source.unwrap_or(server);
        let sent = acct.history_bytes.saturating_add(acct.contracted_bytes());
        let unreceipted = sent.saturating_sub(self.receipted(&source));
        if unreceipted <= self.config.max_unreceipted_kib.saturating_mul(1024) {
            return;
        }
        let Some(acct) = self.servers.get_mut(&server) else {
            return;
        };
        acct.abandoned = true;
        let mut closes = Vec::new();
        for c in &mut acct.contracts {
            if c.state != ClientContractState::Ended {
                c.state = ClientContractState::Ended;
                closes.push(c.terms.contract_id);
            }
        }
        self.events.push_back(ClientEvent::Abandoned { server });
        for contract_id in closes {
            self.send(server, Message::Close(Close { contract_id }));
        }
    }

    /// Timers at `now` (Unix s): a voucher for anything payable not yet paid (so payment keeps
    /// up at low rates), contracts past their time end. Call about once a second.
    pub fn handle_timeout(&mut self, now: u64, signer: &dyn VoucherSigner) {
        let servers: Vec<PeerId> = self.servers.keys().copied().collect();
        for s in servers {
            if let Some(acct) = self.servers.get_mut(&s) {
                for c in &mut acct.contracts {
                    if c.state != ClientContractState::Ended && now >= c.terms.expires_at {
                        c.state = ClientContractState::Ended;
                    }
                }
            }
            self.maybe_voucher(s, true, signer);
        }
    }
}
