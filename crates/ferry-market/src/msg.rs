//! Market messages and their wire format (`payments.md` §4.3).
//!
//! Every message travels as one net_crypto lossless packet with id [`MARKET_PACKET_ID`] inside
//! the session (or circuit end-to-end channel) of the two nodes it concerns:
//!
//! | bytes | content |
//! |---|---|
//! | 1 | [`MARKET_PACKET_ID`] (175) — added and stripped by the driver, not part of [`Envelope`] |
//! | 1 | message kind ([`Message::kind`]) |
//! | n | body, fixed layout per kind (below), integers big-endian |
//! | 64 | Ed25519 signature over `"ferry market v1" ‖ kind ‖ body`, for signed kinds |
//!
//! Bodies (sizes in bytes):
//! * `0x01` [`Binding`] (signed by the key it names): sig_key 32, account 20, chain_id 8,
//!   expires_at 8 (Unix s).
//! * `0x02` [`Quote`] (unsigned request): dest [`Prefix`] 18.
//! * `0x03` [`Proposal`] (server): contract_id 16, dest 18, price_per_kib 16, data_limit_kib 8,
//!   expires_at 8, grace_kib 8, chain_id 8, hub 20, receiver 20, min_deposit 16, round 1.
//! * `0x04` [`Acceptance`] (client): contract_id 16, proposal_hash 32, channel_id 32.
//! * `0x05` [`Rejection`] (client): contract_id 16, round 1, counter_price_per_kib 16
//!   (0 = no counter price).
//! * `0x06` [`Decline`] (either side): contract_id 16, reason 1.
//! * `0x07` [`VoucherMsg`] (client, authenticated by its secp256k1 signature, not Ed25519):
//!   channel_id 32, cumulative 16, signature 65.
//! * `0x08` [`Usage`] (server invoice): contract_id 16, forwarded_bytes 8, due 16.
//! * `0x09` [`PaymentRequired`] (server): due 16, paid 16.
//! * `0x0a` [`Receipt`] (destination): flow_id 16, cumulative_bytes 8, seq 8.
//! * `0x0b` [`Close`] (either side): contract_id 16.
//!
//! Amounts are in the settlement chain's base unit (wei for an EVM chain) as u128.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferry_wire::{Reader, WireError};
use sha2::{Digest, Sha256};

use crate::MarketError;
use crate::identity::{NodeSigner, SIGNATURE_SIZE, SigKey};

/// net_crypto lossless custom packet id of market messages (in 160..=191; see the table in
/// `ferry-tunnel`'s crate docs for the other ids).
pub const MARKET_PACKET_ID: u8 = 175;
/// Signature domain prefix.
pub const SIGN_DOMAIN: &[u8] = b"ferry market v1";
/// A contract id (16 random bytes chosen by the server).
pub type ContractId = [u8; 16];
/// A payment channel id on the ledger (32 bytes).
pub type ChannelId = [u8; 32];
/// An EVM address (20 bytes).
pub type Address = [u8; 20];

/// A destination prefix: an address and a prefix length, host bits zero. Encoded in 18 bytes:
/// family (4 or 6), 16 address bytes (IPv4 in the first 4, the rest zero), length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Prefix {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub len: u8,
}

impl Prefix {
    /// Encoded size in bytes.
    pub const SIZE: usize = 18;

    /// The prefix of `addr` with `len` bits kept (host bits cleared); `len` is capped at the
    /// family's width.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(len))
                };
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    len,
                }
            }
        }
    }

    /// The host prefix of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self::new(addr, 128)
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        Self::new(addr, self.len) == *self
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self.addr {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
                out.extend_from_slice(&[0; 12]);
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.push(self.len);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let family = r.u8("prefix family")?;
        let bytes: [u8; 16] = r.array("prefix address")?;
        let len = r.u8("prefix length")?;
        let addr = match family {
            4 => {
                if bytes[4..] != [0; 12] {
                    return Err(WireError::InvalidValue {
                        what: "IPv4 prefix padding",
                        value: 1,
                    });
                }
                if len > 32 {
                    return Err(WireError::InvalidValue {
                        what: "IPv4 prefix length",
                        value: len.into(),
                    });
                }
                IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
            }
            6 => {
                if len > 128 {
                    return Err(WireError::InvalidValue {
                        what: "IPv6 prefix length",
                        value: len.into(),
                    });
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            f => {
                return Err(WireError::InvalidValue {
                    what: "prefix family",
                    value: f.into(),
                });
            }
        };
        let p = Self { addr, len };
        if Self::new(addr, len) != p {
            return Err(WireError::InvalidValue {
                what: "prefix host bits",
                value: 1,
            });
        }
        Ok(p)
    }
}

/// Binds a node's Ed25519 signing key and EVM account to the session it arrives on (kind 0x01).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Ed25519 key that signs this node's market messages.
    pub sig_key: SigKey,
    /// The node's EVM account (voucher signer or payee).
    pub account: Address,
    /// Chain the account is meant for.
    pub chain_id: u64,
    /// Unix time (s) after which the binding must be renewed.
    pub expires_at: u64,
}

/// Asks a server for a proposal toward `dest` (kind 0x02; a renewal starts with one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The destination prefix the client wants to reach.
    pub dest: Prefix,
}

/// Where and how a contract is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settlement {
    /// EVM chain id.
    pub chain_id: u64,
    /// The channel contract's address ("hub").
    pub hub: Address,
    /// The server's account, the channel's receiver.
    pub receiver: Address,
    /// Smallest channel deposit the server accepts, base units.
    pub min_deposit: u128,
}

/// A server's offer (kind 0x03, seed 003's `propose`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    /// Contract id chosen by the server.
    pub contract_id: ContractId,
    /// Destinations the contract covers.
    pub dest: Prefix,
    /// Price per KiB (1024 bytes of IP packets), base units.
    pub price_per_kib: u128,
    /// Data the contract covers, KiB.
    pub data_limit_kib: u64,
    /// Unix time (s) the contract ends.
    pub expires_at: u64,
    /// Credit the server extends before payment, KiB.
    pub grace_kib: u64,
    /// Settlement terms.
    pub settlement: Settlement,
    /// Negotiation round, 0 for the first proposal.
    pub round: u8,
}

/// The client's acceptance (kind 0x04).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// The accepted contract.
    pub contract_id: ContractId,
    /// SHA-256 of the whole signed proposal envelope accepted ([`Envelope::hash`]).
    pub proposal_hash: [u8; 32],
    /// The channel the client pays through.
    pub channel_id: ChannelId,
}

/// The client's refusal with an optional counter-offer (kind 0x05, seed 003's `reject`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The refused contract.
    pub contract_id: ContractId,
    /// The round of the refused proposal.
    pub round: u8,
    /// The price per KiB the client would pay, base units (0: none).
    pub counter_price_per_kib: u128,
}

/// Why a negotiation ended without a contract (kind 0x06).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decline {
    /// The contract.
    pub contract_id: ContractId,
    /// The reason ([`DeclineReason`] as u8).
    pub reason: u8,
}

/// Reasons in [`Decline::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DeclineReason {
    /// The rounds ran out ([`crate::MAX_ROUNDS`]).
    RoundsExhausted = 1,
    /// The counter price is below what the server accepts.
    PriceTooLow = 2,
    /// The proposal expired or its terms are unusable.
    BadTerms = 3,
    /// The channel does not cover the server's minimum deposit.
    Channel = 4,
}

/// An off-chain payment: the cumulative amount the client owes on a channel, signed with its
/// secp256k1 account key (kind 0x07; `payments.md` §4.3 `Voucher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoucherMsg {
    /// The channel.
    pub channel_id: ChannelId,
    /// Cumulative amount over all contracts of the pair, base units; strictly increasing.
    pub cumulative: u128,
    /// 65-byte recoverable secp256k1 signature (r ‖ s ‖ v) over the ledger's voucher digest.
    pub signature: [u8; 65],
}

/// The server's invoice for a contract (kind 0x08).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The contract.
    pub contract_id: ContractId,
    /// IP-packet bytes forwarded under it so far.
    pub forwarded_bytes: u64,
    /// What those bytes cost, base units.
    pub due: u128,
}

/// Sent when the server starts gating a peer's traffic (kind 0x09).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentRequired {
    /// Total due over all the peer's contracts, base units.
    pub due: u128,
    /// Best voucher so far, base units.
    pub paid: u128,
}

/// A destination's signed statement of bytes received from a client (kind 0x0a).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The flow (one per client and destination).
    pub flow_id: [u8; 16],
    /// IP-packet bytes received on the flow so far.
    pub cumulative_bytes: u64,
    /// Receipt sequence number, increasing.
    pub seq: u64,
}

/// Ends a contract (kind 0x0b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The contract.
    pub contract_id: ContractId,
}

/// One market message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Message {
    Binding(Binding),
    Quote(Quote),
    Proposal(Proposal),
    Acceptance(Acceptance),
    Rejection(Rejection),
    Decline(Decline),
    Voucher(VoucherMsg),
    Usage(Usage),
    PaymentRequired(PaymentRequired),
    Receipt(Receipt),
    Close(Close),
}

impl Message {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Binding(_) => 0x01,
            Self::Quote(_) => 0x02,
            Self::Proposal(_) => 0x03,
            Self::Acceptance(_) => 0x04,
            Self::Rejection(_) => 0x05,
            Self::Decline(_) => 0x06,
            Self::Voucher(_) => 0x07,
            Self::Usage(_) => 0x08,
            Self::PaymentRequired(_) => 0x09,
            Self::Receipt(_) => 0x0a,
            Self::Close(_) => 0x0b,
        }
    }

    /// Whether this kind carries an Ed25519 signature.
    pub fn is_signed(&self) -> bool {
        kind_is_signed(self.kind())
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Binding(b) => {
                out.extend_from_slice(&b.sig_key.0);
                out.extend_from_slice(&b.account);
                out.extend_from_slice(&b.chain_id.to_be_bytes());
                out.extend_from_slice(&b.expires_at.to_be_bytes());
            }
            Self::Quote(q) => q.dest.encode(out),
            Self::Proposal(p) => {
                out.extend_from_slice(&p.contract_id);
                p.dest.encode(out);
                out.extend_from_slice(&p.price_per_kib.to_be_bytes());
                out.extend_from_slice(&p.data_limit_kib.to_be_bytes());
                out.extend_from_slice(&p.expires_at.to_be_bytes());
                out.extend_from_slice(&p.grace_kib.to_be_bytes());
                out.extend_from_slice(&p.settlement.chain_id.to_be_bytes());
                out.extend_from_slice(&p.settlement.hub);
                out.extend_from_slice(&p.settlement.receiver);
                out.extend_from_slice(&p.settlement.min_deposit.to_be_bytes());
                out.push(p.round);
            }
            Self::Acceptance(a) => {
                out.extend_from_slice(&a.contract_id);
                out.extend_from_slice(&a.proposal_hash);
                out.extend_from_slice(&a.channel_id);
            }
            Self::Rejection(r) => {
                out.extend_from_slice(&r.contract_id);
                out.push(r.round);
                out.extend_from_slice(&r.counter_price_per_kib.to_be_bytes());
            }
            Self::Decline(d) => {
                out.extend_from_slice(&d.contract_id);
                out.push(d.reason);
            }
            Self::Voucher(v) => {
                out.extend_from_slice(&v.channel_id);
                out.extend_from_slice(&v.cumulative.to_be_bytes());
                out.extend_from_slice(&v.signature);
            }
            Self::Usage(u) => {
                out.extend_from_slice(&u.contract_id);
                out.extend_from_slice(&u.forwarded_bytes.to_be_bytes());
                out.extend_from_slice(&u.due.to_be_bytes());
            }
            Self::PaymentRequired(p) => {
                out.extend_from_slice(&p.due.to_be_bytes());
                out.extend_from_slice(&p.paid.to_be_bytes());
            }
            Self::Receipt(r) => {
                out.extend_from_slice(&r.flow_id);
                out.extend_from_slice(&r.cumulative_bytes.to_be_bytes());
                out.extend_from_slice(&r.seq.to_be_bytes());
            }
            Self::Close(c) => out.extend_from_slice(&c.contract_id),
        }
    }

    fn decode_body(kind: u8, r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(match kind {
            0x01 => Self::Binding(Binding {
                sig_key: SigKey(r.array("sig_key")?),
                account: r.array("account")?,
                chain_id: u64_be(r, "chain_id")?,
                expires_at: u64_be(r, "expires_at")?,
            }),
            0x02 => Self::Quote(Quote {
                dest: Prefix::decode(r)?,
            }),
            0x03 => Self::Proposal(Proposal {
                contract_id: r.array("contract_id")?,
                dest: Prefix::decode(r)?,
                price_per_kib: u128_be(r, "price_per_kib")?,
                data_limit_kib: u64_be(r, "data_limit_kib")?,
                expires_at: u64_be(r, "expires_at")?,
                grace_kib: u64_be(r, "grace_kib")?,
                settlement: Settlement {
                    chain_id: u64_be(r, "chain_id")?,
                    hub: r.array("hub")?,
                    receiver: r.array("receiver")?,
                    min_deposit: u128_be(r, "min_deposit")?,
                },
                round: r.u8("round")?,
            }),
            0x04 => Self::Acceptance(Acceptance {
                contract_id: r.array("contract_id")?,
                proposal_hash: r.array("proposal_hash")?,
                channel_id: r.array("channel_id")?,
            }),
            0x05 => Self::Rejection(Rejection {
                contract_id: r.array("contract_id")?,
                round: r.u8("round")?,
                counter_price_per_kib: u128_be(r, "counter_price_per_kib")?,
            }),
            0x06 => Self::Decline(Decline {
                contract_id: r.array("contract_id")?,
                reason: r.u8("reason")?,
            }),
            0x07 => Self::Voucher(VoucherMsg {
                channel_id: r.array("channel_id")?,
                cumulative: u128_be(r, "cumulative")?,
                signature: r.array("voucher signature")?,
            }),
            0x08 => Self::Usage(Usage {
                contract_id: r.array("contract_id")?,
                forwarded_bytes: u64_be(r, "forwarded_bytes")?,
                due: u128_be(r, "due")?,
            }),
            0x09 => Self::PaymentRequired(PaymentRequired {
                due: u128_be(r, "due")?,
                paid: u128_be(r, "paid")?,
            }),
            0x0a => Self::Receipt(Receipt {
                flow_id: r.array("flow_id")?,
                cumulative_bytes: u64_be(r, "cumulative_bytes")?,
                seq: u64_be(r, "seq")?,
            }),
            0x0b => Self::Close(Close {
                contract_id: r.array("contract_id")?,
            }),
            k => return Err(WireError::UnknownKind(k)),
        })
    }
}

fn kind_is_signed(kind: u8) -> bool {
    !matches!(kind, 0x02 | 0x07)
}

fn u64_be(r: &mut Reader<'_>, what: &'static str) -> Result<u64, WireError> {
    Ok(u64::from_be_bytes(r.array(what)?))
}

fn u128_be(r: &mut Reader<'_>, what: &'static str) -> Result<u128, WireError> {
    Ok(u128::from_be_bytes(r.array(what)?))
}

/// A message with its signature (for signed kinds), as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The message.
    pub msg: Message,
    /// Ed25519 signature over `SIGN_DOMAIN ‖ kind ‖ body` (signed kinds only).
    pub sig: Option<[u8; SIGNATURE_SIZE]>,
}

impl Envelope {
    /// Wraps `msg`, signing it with `signer` if its kind is signed.
    pub fn seal(msg: Message, signer: &NodeSigner) -> Self {
        let sig = msg.is_signed().then(|| {
            let mut body = vec![msg.kind()];
            msg.encode_body(&mut body);
            signer.sign(SIGN_DOMAIN, &body)
        });
        Self { msg, sig }
    }

    /// Wraps an unsigned kind (quote, voucher) without a signature.
    pub fn unsigned(msg: Message) -> Self {
        Self { msg, sig: None }
    }

    /// The wire bytes (without the packet id).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.msg.kind()];
        self.msg.encode_body(&mut out);
        if let Some(sig) = &self.sig {
            out.extend_from_slice(sig);
        }
        out
    }

    /// Parses wire bytes (without the packet id). The signature is not checked here.
    ///
    /// # Errors
    /// [`WireError`] for a truncated, overlong or malformed message.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8("market kind")?;
        let msg = Message::decode_body(kind, &mut r)?;
        let sig = if kind_is_signed(kind) {
            Some(r.array::<SIGNATURE_SIZE>("market signature")?)
        } else {
            None
        };
        r.finish()?;
        Ok(Self { msg, sig })
    }

    /// Checks the signature against `key`.
    ///
    /// # Errors
    /// [`MarketError::BadSignature`] (also for a signed kind without a signature).
    pub fn verify(&self, key: &SigKey) -> Result<(), MarketError> {
        if !self.msg.is_signed() {
            return Ok(());
        }
        let sig = self.sig.as_ref().ok_or(MarketError::BadSignature)?;
        let mut body = vec![self.msg.kind()];
        self.msg.encode_body(&mut body);
        key.verify(SIGN_DOMAIN, &body, sig)
    }

    /// SHA-256 of the wire bytes (what [`Acceptance::proposal_hash`] names).
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(IpAddr::from(a), l)),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(IpAddr::from(a), l)),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<[u8; 32]>(),
                any::<[u8; 20]>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(k, a, c, e)| Message::Binding(Binding {
                    sig_key: SigKey(k),
                    account: a,
                    chain_id: c,
                    expires_at: e
                })),
            arb_prefix().prop_map(|dest| Message::Quote(Quote { dest })),
            (
                any::<[u8; 16]>(),
                arb_prefix(),
                any::<u128>(),
                any::<(u64, u64, u64, u64)>(),
                any::<([u8; 20], [u8; 20], u128, u8)>()
            )
                .prop_map(|(id, dest, price, (d, e, g, c), (hub, rcv, min, round))| {
                    Message::Proposal(Proposal {
                        contract_id: id,
                        dest,
                        price_per_kib: price,
                        data_limit_kib: d,
                        expires_at: e,
                        grace_kib: g,
                        settlement: Settlement {
                            chain_id: c,
                            hub,
                            receiver: rcv,
                            min_deposit: min,
                        },
                        round,
                    })
                }),
            (any::<[u8; 16]>(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(c, h, ch)| {
                Message::Acceptance(Acceptance {
                    contract_id: c,
                    proposal_hash: h,
                    channel_id: ch,
                })
            }),
            (any::<[u8; 16]>(), any::<u8>(), any::<u128>()).prop_map(|(c, r, p)| {
                Message::Rejection(Rejection {
                    contract_id: c,
                    round: r,
                    counter_price_per_kib: p,
                })
            }),
            (any::<[u8; 16]>(), any::<u8>()).prop_map(|(c, r)| Message::Decline(Decline {
                contract_id: c,
                reason: r
            })),
            (
                any::<[u8; 32]>(),
                any::<u128>(),
                proptest::collection::vec(any::<u8>(), 65)
            )
                .prop_map(|(c, v, s)| {
                    let mut signature = [0u8; 65];
                    signature.copy_from_slice(&s);
                    Message::Voucher(VoucherMsg {
                        channel_id: c,
                        cumulative: v,
                        signature,
                    })
                }),
            (any::<[u8; 16]>(), any::<u64>(), any::<u128>()).prop_map(|(c, b, d)| {
                Message::Usage(Usage {
                    contract_id: c,
                    forwarded_bytes: b,
                    due: d,
                })
            }),
            (any::<u128>(), any::<u128>())
                .prop_map(|(due, paid)| Message::PaymentRequired(PaymentRequired { due, paid })),
            (any::<[u8; 16]>(), any::<u64>(), any::<u64>()).prop_map(|(f, b, s)| {
                Message::Receipt(Receipt {
                    flow_id: f,
                    cumulative_bytes: b,
                    seq: s,
                })
            }),
            any::<[u8; 16]>().prop_map(|c| Message::Close(Close { contract_id: c })),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_and_signature(msg in arb_message()) {
            let signer = NodeSigner::from_long_term_secret(&[7; 32]);
            let env = Envelope::seal(msg, &signer);
            let bytes = env.encode();
            let back = Envelope::decode(&bytes).expect("decodes");
            prop_assert_eq!(&back, &env);
            prop_assert!(back.verify(&signer.public()).is_ok());
            if env.msg.is_signed() {
                let other = NodeSigner::from_long_term_secret(&[8; 32]);
                prop_assert!(back.verify(&other.public()).is_err());
                // Any flipped body bit breaks the signature or the parse.
                let mut bad = bytes.clone();
                bad[1] ^= 1;
                if let Ok(b) = Envelope::decode(&bad) {
                    prop_assert!(b.verify(&signer.public()).is_err());
                }
            }
            // Truncated or extended input never parses.
            prop_assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut long = bytes.clone();
            long.push(0);
            prop_assert!(Envelope::decode(&long).is_err());
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn prefix_contains_its_addresses(a in any::<[u8; 16]>(), len in 0u8..=128) {
            let addr = IpAddr::from(a);
            let p = Prefix::new(addr, len);
            prop_assert!(p.contains(addr));
            prop_assert!(p.contains(p.addr));
        }
    }

    #[test]
    fn prefix_rejects_host_bits_and_bad_lengths() {
        let mut out = Vec::new();
        Prefix::new("10.1.2.3".parse().expect("ip"), 8).encode(&mut out);
        assert_eq!(out.len(), Prefix::SIZE);
        assert_eq!(Prefix::decode(&mut Reader::new(&out)).expect("ok").len, 8);
        let mut host_bits = out.clone();
        host_bits[2] = 1; // 10.1.0.0/8 has host bits set
        assert!(Prefix::decode(&mut Reader::new(&host_bits)).is_err());
        let mut long = out.clone();
        long[17] = 33;
        assert!(Prefix::decode(&mut Reader::new(&long)).is_err());
        let mut fam = out;
        fam[0] = 5;
        assert!(Prefix::decode(&mut Reader::new(&fam)).is_err());
    }
}
