//! Client and server state machines against each other in memory (`payments.md` §5 groups 2–6
//! and the off-chain half of group 1). The ledger is modelled by the harness (channels as
//! plain records); vouchers are signed by a test wallet standing in for the secp256k1 account
//! key, whose real signature and on-chain rules are tested in `ferry-pay`.

use std::collections::HashMap;
use std::net::IpAddr;

use ferry_market::client::{Client, ClientConfig, ClientContractState, ClientEvent};
use ferry_market::msg::{Address, ChannelId, Envelope, Message, Proposal, Settlement};
use ferry_market::server::{ReceiptIssuer, Server, ServerConfig, ServerEvent, Verdict};
use ferry_market::{
    ChannelInfo, MarketError, NodeSigner, PeerId, VoucherSigner, VoucherVerifier, due,
};
use sha2::{Digest, Sha256};

/// Test wallet: account = SHA-256(secret)[..20]; signature = SHA-256(secret ‖ channel ‖ amount).
struct Wallet {
    secrets: HashMap<Address, [u8; 32]>,
    mine: [u8; 32],
}

impl Wallet {
    fn new(seed: u8) -> Self {
        let mine = [seed; 32];
        let mut secrets = HashMap::new();
        secrets.insert(Self::address_of(&mine), mine);
        Self { secrets, mine }
    }
    fn address_of(secret: &[u8; 32]) -> Address {
        let d = Sha256::digest(secret);
        let mut a = [0u8; 20];
        a.copy_from_slice(&d[..20]);
        a
    }
    fn address(&self) -> Address {
        Self::address_of(&self.mine)
    }
    fn sig(secret: &[u8; 32], channel: &ChannelId, cumulative: u128) -> [u8; 65] {
        let mut h = Sha256::new();
        h.update(secret);
        h.update(channel);
        h.update(cumulative.to_be_bytes());
        let d = h.finalize();
        let mut s = [0u8; 65];
        s[..32].copy_from_slice(&d);
        s
    }
}

impl VoucherSigner for Wallet {
    fn sign(&self, channel: &ChannelId, cumulative: u128) -> [u8; 65] {
        Self::sig(&self.mine, channel, cumulative)
    }
}

impl VoucherVerifier for Wallet {
    fn verify(
        &self,
        channel: &ChannelId,
        cumulative: u128,
        sig: &[u8; 65],
        payer: &Address,
    ) -> Result<(), String> {
        let secret = self.secrets.get(payer).ok_or("unknown payer")?;
        if Self::sig(secret, channel, cumulative) == *sig {
            Ok(())
        } else {
            Err("signature does not match".into())
        }
    }
}

const S: PeerId = [0xaa; 32];
const C: PeerId = [0xcc; 32];
const HUB: Address = [0x11; 20];
const MTU: u64 = 1500;

/// One client, one server (an exit: it also issues receipts), a ledger of channels.
struct Pair {
    now: u64,
    server: Server,
    client: Client,
    receipts: ReceiptIssuer,
    wallet: Wallet,
    channels: HashMap<ChannelId, ChannelInfo>,
    /// Drop every voucher the client sends (a client that stops paying).
    withhold_vouchers: bool,
    /// Fraction of forwarded packets the exit loses before delivery (0..=1), deterministic.
    loss_every: Option<u64>,
    forwarded_packets: u64,
    server_events: Vec<ServerEvent>,
    client_events: Vec<ClientEvent>,
    server_errors: Vec<MarketError>,
}

fn server_config() -> ServerConfig {
    ServerConfig {
        price_per_kib: 1000,
        min_price_per_kib: 500,
        contract_data_kib: 1024,
        contract_time_s: 3600,
        grace_kib: 256,
        max_credit: u128::MAX,
        gas_reserve: 0,
        settlement: Settlement {
            chain_id: 31337,
            hub: HUB,
            receiver: [0x22; 20],
            min_deposit: 1_000_000,
        },
        unsecured_kib_per_peer: 64,
        unsecured_bucket_kib: 1024,
        unsecured_refill_kib_per_hour: 0,
        proposal_ttl_s: 60,
        usage_interval_s: 10,
        channel_margin_s: 60,
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        max_price_per_kib: 2000,
        data_renewal_kib: 128,
        time_renewal_s: 60,
        voucher_kib: 64,
        inflight_allowance_kib: 0,
        max_unreceipted_kib: 1024,
        deposit: 100_000_000,
    }
}

impl Pair {
    fn new(sc: ServerConfig, cc: ClientConfig) -> Self {
        let server_account = sc.settlement.receiver;
        let mut p = Self {
            now: 1_000_000,
            server: Server::new(sc, NodeSigner::from_long_term_secret(&[1; 32])),
            client: Client::new(cc, NodeSigner::from_long_term_secret(&[2; 32]), C),
            receipts: ReceiptIssuer::new(NodeSigner::from_long_term_secret(&[1; 32]), 16 * 1024, 1),
            wallet: Wallet::new(9),
            channels: HashMap::new(),
            withhold_vouchers: false,
            loss_every: None,
            forwarded_packets: 0,
            server_events: Vec::new(),
            client_events: Vec::new(),
            server_errors: Vec::new(),
        };
        // Bindings, as the daemon sends them when the session comes up.
        let b = p.server.binding(server_account, p.now + 86_400);
        p.client
            .handle_message(p.now, S, &b, &p.wallet)
            .expect("server binding");
        let b = p.client.binding(p.wallet.address(), 31337, p.now + 86_400);
        p.server
            .handle_message(p.now, C, &b, &p.wallet)
            .expect("client binding");
        p
    }

    /// Moves messages both ways and plays the ledger until nothing is left.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            while let Some((to, bytes)) = self.server.poll_transmit() {
                assert_eq!(to, C);
                moved = true;
                self.client
                    .handle_message(self.now, S, &bytes, &self.wallet)
                    .ok();
            }
            while let Some((to, bytes)) = self.receipts.poll_transmit() {
                assert_eq!(to, C);
                moved = true;
                self.client
                    .handle_message(self.now, S, &bytes, &self.wallet)
                    .expect("receipt");
            }
            while let Some((to, bytes)) = self.client.poll_transmit() {
                assert_eq!(to, S);
                moved = true;
                let is_voucher = matches!(
                    Envelope::decode(&bytes).map(|e| e.msg),
                    Ok(Message::Voucher(_))
                );
                if is_voucher && self.withhold_vouchers {
                    continue;
                }
                if let Err(e) = self
                    .server
                    .handle_message(self.now, C, &bytes, &self.wallet)
                {
                    self.server_errors.push(e);
                }
            }
            while let Some(ev) = self.client.poll_event() {
                moved = true;
                if let ClientEvent::OpenChannel {
                    server,
                    receiver,
                    deposit,
                    expiry,
                } = &ev
                {
                    let mut id = [0u8; 32];
                    id[0] = self.channels.len() as u8 + 1;
                    self.channels.insert(
                        id,
                        ChannelInfo {
                            id,
                            sender: self.wallet.address(),
                            receiver: *receiver,
                            deposit: *deposit,
                            claimed: 0,
                            expiry: expiry + 86_400,
                        },
                    );
                    self.client.channel_opened(*server, Some((id, *deposit)));
                }
                self.client_events.push(ev);
            }
            while let Some(ev) = self.server.poll_event() {
                moved = true;
                if let ServerEvent::CheckChannel { peer, channel_id } = &ev {
                    let info = self.channels.get(channel_id).copied();
                    self.server.channel_checked(self.now, *peer, info);
                }
                self.server_events.push(ev);
            }
            if !moved {
                return;
            }
        }
        panic!("messages kept flowing");
    }

    /// The client sends one packet; the server decides; the exit delivers (maybe).
    fn packet(&mut self, dest: IpAddr, len: u32) -> Verdict {
        self.client
            .on_sent(self.now, S, dest, len, &self.wallet)
            .expect("on_sent");
        let v = self.server.on_packet(self.now, C, dest, len);
        if let Verdict::Forward(_) = v {
            self.forwarded_packets += 1;
            let lost = self
                .loss_every
                .is_some_and(|k| self.forwarded_packets.is_multiple_of(k));
            if !lost {
                self.receipts.on_delivered(self.now, C, u64::from(len));
            }
        }
        self.pump();
        v
    }

    /// Runs every side's once-a-second timers for `secs` seconds.
    fn tick(&mut self, secs: u64) {
        for _ in 0..secs {
            self.now += 1;
            self.server.handle_timeout(self.now);
            self.receipts.handle_timeout(self.now);
            self.client.handle_timeout(self.now, &self.wallet);
            self.pump();
        }
    }

    /// The destination replies with one packet: the server meters and forwards it back (maybe);
    /// the client counts what it receives.
    fn reply(&mut self, src: IpAddr, len: u32) -> Verdict {
        let v = self.server.on_packet(self.now, C, src, len);
        if let Verdict::Forward(_) = v {
            self.client
                .on_received(self.now, S, src, len, &self.wallet)
                .expect("on_received");
        }
        self.pump();
        v
    }

    fn forwarded(&self) -> u64 {
        self.server
            .account(&C)
            .map_or(0, |a| a.contracts.iter().map(|c| c.forwarded_bytes).sum())
    }
}

fn dest(i: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, i])
}

/// Group 6: packets of known sizes, including many over 255 bytes (ngp counted `tot_len >> 8`):
/// both counters are exact and the dues agree.
#[test]
fn exact_metering_on_both_sides() {
    let mut p = Pair::new(server_config(), client_config());
    let sizes = [40u32, 256, 300, 576, 1280, 1500, 1499, 65_535, 20, 1024];
    let mut total = 0u64;
    for i in 0..500 {
        let len = sizes[i % sizes.len()];
        assert!(matches!(p.packet(dest(1), len), Verdict::Forward(_)));
        total += u64::from(len);
    }
    p.tick(2);
    let acct = p.server.account(&C).expect("account");
    assert_eq!(p.forwarded(), total);
    let c = p.client.account(&S).expect("client account");
    assert_eq!(c.contracted_bytes(), total);
    let server_due = acct.due();
    // Each contract (renewed every 1024 KiB) rounds up once.
    let per_contract: u128 = acct
        .contracts
        .iter()
        .map(|c| due(c.forwarded_bytes, 1000))
        .sum();
    assert_eq!(server_due, per_contract);
    assert!(server_due >= due(total, 1000));
    assert!(server_due <= due(total, 1000) + acct.contracts.len() as u128);
    let (payable, owed) = p.client.payable(&S);
    assert_eq!(payable, total, "everything was receipted");
    assert_eq!(owed, server_due, "client and server dues agree");
    assert_eq!(acct.paid, server_due, "the timer voucher paid everything");
}

/// Downloads are metered too: a request up, 20× its size back. Both sides count the replies
/// under the destination's contract, the client pays for them (no receipt needed: it is their
/// destination) and the dues agree; a client that does not pay for its downloads is cut off.
#[test]
fn downloads_are_metered_and_paid() {
    let mut p = Pair::new(server_config(), client_config());
    let (mut up, mut down) = (0u64, 0u64);
    for _ in 0..200 {
        assert!(matches!(p.packet(dest(1), 100), Verdict::Forward(_)));
        up += 100;
        for _ in 0..2 {
            assert!(matches!(p.reply(dest(1), 1000), Verdict::Forward(_)));
            down += 1000;
        }
    }
    p.tick(2);
    assert_eq!(
        p.forwarded(),
        up + down,
        "the server meters both directions"
    );
    let acct = p.server.account(&C).expect("account");
    let c = p.client.account(&S).expect("client account");
    let received: u64 = c.contracts.iter().map(|c| c.received_bytes).sum();
    assert_eq!(received, down);
    let (payable, owed) = p.client.payable(&S);
    assert_eq!(payable, up + down);
    assert_eq!(owed, acct.due(), "client and server dues agree");
    assert_eq!(acct.paid, acct.due(), "the vouchers paid the downloads too");
    assert!(acct.paid >= due(up + down, 1000));

    // A client that withholds vouchers is cut off on the download path as well.
    let mut p = Pair::new(server_config(), client_config());
    p.withhold_vouchers = true;
    p.packet(dest(2), 100);
    let mut gated = false;
    for _ in 0..100_000 {
        if p.reply(dest(2), 1400) == Verdict::PaymentRequired {
            gated = true;
            break;
        }
    }
    assert!(gated, "replies flowed unpaid forever");
    assert_eq!(p.server.account(&C).expect("acct").paid, 0);
}

/// Groups 2 and 3: a client that stops paying gets at most one grace allowance plus one MTU;
/// the server drops, suspends, says PaymentRequired; one valid voucher resumes forwarding.
#[test]
fn a_client_that_stops_paying_is_cut_off_after_one_grace() {
    let sc = server_config();
    let grace_bytes = sc.grace_kib * 1024;
    let mut p = Pair::new(sc, client_config());
    for _ in 0..200 {
        p.packet(dest(1), 1400);
    }
    // One second delivers the last receipt, the next pays for it.
    p.tick(2);
    let paid_bytes = p.forwarded();
    assert_eq!(
        p.server.account(&C).expect("acct").paid,
        due(paid_bytes, 1000)
    );
    p.withhold_vouchers = true;
    let mut dropped = 0;
    for _ in 0..2000 {
        if p.packet(dest(1), 1400) == Verdict::PaymentRequired {
            dropped += 1;
        }
    }
    let unpaid_bytes = p.forwarded() - paid_bytes;
    assert!(
        unpaid_bytes <= grace_bytes + MTU,
        "forwarded {unpaid_bytes} unpaid bytes"
    );
    assert!(unpaid_bytes + MTU > grace_bytes, "the grace was usable");
    assert!(dropped > 1000);
    let acct = p.server.account(&C).expect("acct");
    assert!(acct.suspended);
    assert_eq!(acct.dropped_packets, dropped);
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, ServerEvent::Suspended { .. }))
    );
    assert!(
        p.client.account(&S).expect("c").payment_required
            || p.client.account(&S).expect("c").vouchered > 0
    );
    // The client pays again: one voucher and traffic flows.
    p.withhold_vouchers = false;
    p.tick(ferry_market::server::PAYMENT_REMINDER_S);
    assert!(!p.server.account(&C).expect("acct").suspended);
    assert!(matches!(p.packet(dest(1), 1400), Verdict::Forward(_)));
}

/// Group 2: across renewals, 10 parallel destinations and a server restart, the total unpaid
/// stays within one grace allowance (the credit line is per peer and persisted).
#[test]
fn grace_is_one_per_peer_across_destinations_renewals_and_restarts() {
    let sc = server_config();
    let grace = due(sc.grace_kib * 1024, sc.price_per_kib);
    let mut p = Pair::new(sc.clone(), client_config());
    for round in 0..20 {
        for d in 0..10 {
            p.packet(dest(d), 1400);
        }
        if round == 10 {
            p.tick(1);
        }
    }
    p.withhold_vouchers = true;
    for i in 0..3000u32 {
        p.packet(dest((i % 10) as u8), 1400);
        if i == 1500 {
            // Restart: the server comes back from its snapshot (what the daemon persists).
            let snap = p.server.snapshot();
            let json = serde_json::to_string(&snap).expect("serialises");
            let back = serde_json::from_str(&json).expect("parses");
            p.server = Server::restore(
                sc.clone(),
                NodeSigner::from_long_term_secret(&[1; 32]),
                back,
            );
        }
    }
    let acct = p.server.account(&C).expect("acct");
    let unpaid = acct.unpaid();
    assert!(
        unpaid <= grace + due(MTU, 1000),
        "unpaid {unpaid} > grace {grace}"
    );
    assert!(acct.contracts.len() >= 10, "one contract per destination");
    // Renewals: the 1024-KiB contracts of the busiest destinations were renewed by threshold.
    assert!(
        p.client_events
            .iter()
            .filter(|e| matches!(e, ClientEvent::ContractActive { .. }))
            .count()
            >= 10
    );
}

/// Group 2: K fresh identities without channels together get at most the global unsecured
/// budget.
#[test]
fn sybil_identities_share_one_unsecured_budget() {
    let sc = server_config();
    let budget = sc.unsecured_bucket_kib * 1024;
    let mut server = Server::new(sc, NodeSigner::from_long_term_secret(&[1; 32]));
    let mut forwarded = 0u64;
    for k in 0..200u32 {
        let mut peer = [0u8; 32];
        peer[..4].copy_from_slice(&k.to_be_bytes());
        for _ in 0..100 {
            if let Verdict::Forward(_) = server.on_packet(1000, peer, dest(1), 1400) {
                forwarded += 1400;
            }
        }
    }
    assert!(forwarded <= budget, "{forwarded} > {budget}");
    assert!(forwarded + 1400 > budget, "the budget was usable");
}

/// Group 4: a relay that forwards nothing earns nothing; a 50 % dropper earns about half;
/// the client abandons after `max_unreceipted`.
#[test]
fn paid_for_delivered_bytes_only() {
    // Black hole: the exit never delivers (no receipts).
    let mut p = Pair::new(server_config(), client_config());
    p.loss_every = Some(1);
    for _ in 0..1000 {
        p.packet(dest(1), 1400);
        if !p.client.may_send(&S) {
            break;
        }
    }
    p.tick(2);
    assert_eq!(p.client.payable(&S), (0, 0));
    assert_eq!(p.server.account(&C).expect("acct").paid, 0, "nothing paid");
    assert!(
        p.client_events
            .contains(&ClientEvent::Abandoned { server: S })
    );
    assert!(!p.client.may_send(&S));

    // Half the packets lost after the relay: paid for the delivered half only.
    let mut p = Pair::new(
        server_config(),
        ClientConfig {
            max_unreceipted_kib: 1 << 30,
            ..client_config()
        },
    );
    p.loss_every = Some(2);
    for _ in 0..2000 {
        p.packet(dest(1), 1000);
    }
    p.tick(2);
    // The server forwarded until the unpaid half filled its credit line; it was paid for the
    // delivered half of what it forwarded, to the base unit.
    let acct = p.server.account(&C).expect("acct");
    let forwarded = p.forwarded();
    let delivered = p.client.receipted(&S);
    assert_eq!(delivered, forwarded / 2, "every second packet lost");
    assert_eq!(acct.paid, due(delivered, 1000));
    assert!(
        acct.dropped_packets > 0,
        "the unpaid half ran the credit line out"
    );
}

/// Group 4: receipts signed by any key but the destination's are refused.
#[test]
fn forged_receipts_are_ignored() {
    let mut p = Pair::new(server_config(), client_config());
    p.loss_every = Some(1);
    for _ in 0..50 {
        p.packet(dest(1), 1400);
    }
    let mut forger = ReceiptIssuer::new(NodeSigner::from_long_term_secret(&[66; 32]), 1, 1);
    forger.on_delivered(p.now, C, 70_000);
    let (_, bytes) = forger.poll_transmit().expect("a receipt");
    let r = p.client.handle_message(p.now, S, &bytes, &p.wallet);
    assert!(
        matches!(
            r,
            Err(MarketError::BadSignature) | Err(MarketError::Unexpected(_))
        ),
        "{r:?}"
    );
    assert_eq!(p.client.receipted(&S), 0);
    p.tick(2);
    assert_eq!(p.server.account(&C).expect("acct").paid, 0);
}

/// Group 1 (off-chain): the same voucher twice credits once; an older one is refused; a
/// voucher for another channel or signed by another key is refused.
#[test]
fn vouchers_credit_once_and_only_newer() {
    let mut p = Pair::new(server_config(), client_config());
    for _ in 0..200 {
        p.packet(dest(1), 1400);
    }
    p.tick(1);
    let acct = p.server.account(&C).expect("acct");
    let paid = acct.paid;
    let channel = acct.channel.expect("channel").id;
    assert!(paid > 0);
    let voucher = |cum: u128, w: &Wallet, ch: ChannelId| {
        Envelope::unsigned(Message::Voucher(ferry_market::msg::VoucherMsg {
            channel_id: ch,
            cumulative: cum,
            signature: w.sign(&ch, cum),
        }))
        .encode()
    };
    let w = Wallet::new(9);
    // Same amount again: accepted, credits nothing.
    p.server
        .handle_message(p.now, C, &voucher(paid, &w, channel), &p.wallet)
        .expect("duplicate is fine");
    assert_eq!(p.server.account(&C).expect("acct").paid, paid);
    // Older: refused.
    assert!(
        p.server
            .handle_message(p.now, C, &voucher(paid - 1, &w, channel), &p.wallet)
            .is_err()
    );
    // Another channel: refused.
    assert!(
        p.server
            .handle_message(p.now, C, &voucher(paid + 10, &w, [7; 32]), &p.wallet)
            .is_err()
    );
    // Another key: refused.
    assert!(
        p.server
            .handle_message(
                p.now,
                C,
                &voucher(paid + 10, &Wallet::new(10), channel),
                &p.wallet
            )
            .is_err()
    );
    // More than the deposit: refused.
    assert!(
        p.server
            .handle_message(p.now, C, &voucher(u128::MAX, &w, channel), &p.wallet)
            .is_err()
    );
    assert_eq!(p.server.account(&C).expect("acct").paid, paid);
    // A newer one: credited.
    p.server
        .handle_message(p.now, C, &voucher(paid + 10, &w, channel), &p.wallet)
        .expect("newer");
    assert_eq!(p.server.account(&C).expect("acct").paid, paid + 10);
}

/// Group 5: accept at or below the maximum price; reject → counter → new proposal; bounded
/// rounds ending in a decline.
#[test]
fn negotiation_accepts_counters_and_ends() {
    // Server asks 3000, client pays at most 2000, server goes as low as 500: the counter-offer
    // is taken at 2000.
    let mut p = Pair::new(
        ServerConfig {
            price_per_kib: 3000,
            ..server_config()
        },
        client_config(),
    );
    p.packet(dest(1), 1000);
    let c = p.client.account(&S).expect("acct");
    let contract = &c.contracts[0];
    assert_eq!(contract.state, ClientContractState::Active);
    assert_eq!(contract.terms.price_per_kib, 2000);
    assert_eq!(contract.terms.round, 1);
    assert_eq!(
        contract.sent_bytes, 1000,
        "the first packet counts under the contract"
    );
    assert_eq!(p.forwarded(), 1000);

    // Server's floor (2500) is above the client's ceiling (2000): it declines; rounds bounded.
    let mut p = Pair::new(
        ServerConfig {
            price_per_kib: 3000,
            min_price_per_kib: 2500,
            ..server_config()
        },
        client_config(),
    );
    p.packet(dest(1), 1000);
    let proposals = p
        .client
        .account(&S)
        .expect("acct")
        .contracts
        .iter()
        .filter(|c| c.state == ClientContractState::Ended)
        .count();
    assert_eq!(proposals, 1);
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Declined { .. }))
    );
    assert!(
        p.server
            .account(&C)
            .expect("acct")
            .contracts
            .iter()
            .all(|c| c.terms.round < ferry_market::MAX_ROUNDS)
    );
}

/// Group 5: expired and unsigned (or wrongly signed) proposals are refused.
#[test]
fn expired_and_unsigned_proposals_are_refused() {
    let mut p = Pair::new(server_config(), client_config());
    let server_signer = NodeSigner::from_long_term_secret(&[1; 32]);
    let terms = Proposal {
        contract_id: [5; 16],
        dest: ferry_market::Prefix::host(dest(1)),
        price_per_kib: 10,
        data_limit_kib: 100,
        expires_at: p.now - 1,
        grace_kib: 10,
        settlement: server_config().settlement,
        round: 0,
    };
    let expired = Envelope::seal(Message::Proposal(terms.clone()), &server_signer).encode();
    assert_eq!(
        p.client.handle_message(p.now, S, &expired, &p.wallet),
        Err(MarketError::Expired)
    );
    let fresh = Proposal {
        expires_at: p.now + 100,
        ..terms
    };
    let mut unsigned = Envelope::seal(Message::Proposal(fresh.clone()), &server_signer);
    unsigned.sig = Some([0; 64]);
    assert_eq!(
        p.client
            .handle_message(p.now, S, &unsigned.encode(), &p.wallet),
        Err(MarketError::BadSignature)
    );
    let other = Envelope::seal(
        Message::Proposal(fresh),
        &NodeSigner::from_long_term_secret(&[3; 32]),
    )
    .encode();
    assert_eq!(
        p.client.handle_message(p.now, S, &other, &p.wallet),
        Err(MarketError::BadSignature)
    );
    assert!(p.client.account(&S).expect("acct").contracts.is_empty());
}

/// Group 5: renewal fires at `data_renewal_kib` and at `time_renewal_s`; traffic moves to the
/// new contract with both sides agreeing on each contract's bytes.
#[test]
fn renewal_by_data_and_by_time() {
    let mut p = Pair::new(server_config(), client_config());
    // 1024-KiB contracts, renewal under 128 KiB left: the quote goes out after 896 KiB.
    for _ in 0..1000 {
        p.packet(dest(1), 1400);
    }
    let c = p.client.account(&S).expect("acct");
    assert!(c.contracts.len() >= 2, "renewed by data");
    assert!(c.contracts[0].renewing);
    let s = p.server.account(&C).expect("acct");
    for (cc, sc) in c.contracts.iter().zip(&s.contracts) {
        assert_eq!(cc.terms.contract_id, sc.terms.contract_id);
        assert_eq!(
            cc.sent_bytes, sc.forwarded_bytes,
            "both sides count the same bytes per contract"
        );
    }
    // By time: 3600-s contracts, renewal under 60 s left.
    let before = p.client.account(&S).expect("acct").contracts.len();
    p.tick(3550);
    p.packet(dest(1), 1400);
    assert!(
        p.client.account(&S).expect("acct").contracts.len() > before,
        "renewed by time"
    );
}
