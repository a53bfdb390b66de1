//! Paid forwarding in the daemon (issue 8, `payments.md` §4): runs the sans-IO market
//! ([`ferry_market::server::Server`] on relays and exits, [`ferry_market::client::Client`] on
//! tunnel clients) beside the tunnel and settles through a [`PaymentBackend`] (`ferry-pay`).
//!
//! - **Messages** travel as net_crypto lossless custom packets `[175][envelope]`
//!   ([`MARKET_PACKET_ID`]) between friends; [`Market::on_packet`] routes them by kind to the
//!   server or client state machine (bindings, declines and closes to both).
//! - **Metering and gating** on the forwarding path, both directions: an exit meters every
//!   client packet it forwards to its uplink and drops the ones the market gates
//!   ([`Market::server_forward`], called from [`crate::exit::check_inbound`]'s caller), and,
//!   being the destination, issues the delivery receipts; it meters and gates the replies it
//!   sends back the same way ([`Market::server_reply`]). An exit client meters every packet
//!   it hands to the link ([`Market::client_sent`]) and every reply it gets back
//!   ([`Market::client_received`]), and pays for both.
//! - **Settlement**: vouchers are signed with an [`AccountKey`] derived from the long-term
//!   secret key (`ferry-pay` `AccountKey::from_seed`), over the pair's unidirectional channel;
//!   the server claims the newest voucher ([`Market::claim_all`], every [`CLAIM_INTERVAL`]).
//! - **Backend**: [`Ledger`] is the seam (an enum, because [`PaymentBackend`]'s methods return
//!   `impl Future` and are not object safe): `embedded` is [`EmbeddedEvm`] with the ledger file
//!   `<profile>/market/ledger.json`; `json-rpc` is [`JsonRpcEvm`] at `rpc_url` (e.g. one
//!   `ferry chain serve` shared by several processes, or Hardhat).
//! - **Persistence**: the server's accounts ([`Server::snapshot`]) and the claimed totals go to
//!   `<profile>/market/server.json` every [`SAVE_INTERVAL`] and on shutdown.
//! - **Priority** (`ferry_market::priority`, not wired): the daemon has no per-packet queue of
//!   forwarded frames to reorder. On an exit the forwarded packets go into
//!   [`crate::tunnel_io::Inbound`] batches, and a whole batch is dropped when the TUN writer is
//!   [`crate::tunnel_io::INBOUND_QUEUE_DEPTH`] batches behind; the TUN reader hands batches to
//!   the node task's bounded frame channel. The place for a `PriorityQueue` is
//!   `Inbound::push`/`flush`: one batch per [`Verdict::Forward`] class, and when the writer is
//!   behind, drop free before grace before paid.
//! - **Circuit relaying** (`crate::circuit`, `ferry tunnel up --via R1,... --exit E`): paid
//!   hop by hop, each hop by its neighbours only. On every link of a circuit the hop nearer
//!   the client is the market client and the other the server, over their own friend
//!   session: the client pays R1, R1 pays R2, …, the last relay pays E (an Althea-style
//!   chain; a relay's margin is its price minus its next hop's). Nobody pays or is paid by a
//!   hop it cannot see, so E never learns the client's key or account. What is metered is
//!   the data cell (the whole custom packet, 29 bytes over the sealed IP packet), counted
//!   identically on both ends of a link: the server meters the cells it receives from its
//!   previous hop ([`Market::circuit_forward`], gated before they are relayed or opened) and
//!   the cells it sends back to it ([`Market::circuit_reply`], gated before they go); the
//!   client meters the cells it hands to the link ([`Market::circuit_sent`]) and the ones it
//!   gets back ([`Market::circuit_received`]). All circuit traffic with one neighbour falls
//!   under contracts for the pseudo-destination [`CIRCUIT_DEST`] (`::/128`). Control cells
//!   (CREATE, CREATED, DESTROY) are not metered.
//!   - *Downstream* cells (towards the client) are paid without receipts, as replies are: the
//!     payer counts what reached it. On a circuit it built the client counts a cell only once
//!     it authenticated under the end-to-end key, so a relay cannot bill forged or replayed
//!     cells. A relay cannot authenticate, so it pays its next hop for whatever arrives on the
//!     circuit; if that is junk the client will not pay it, and the relay's loss is bounded by
//!     the credit line it gives its previous hop.
//!   - *Upstream* cells are paid only as far as delivery is confirmed. On the client's own
//!     link the confirmation is the far end's count: the end of every circuit counts the
//!     data-cell bytes it received on it (cells keep their length on every hop) and sends the
//!     count back inside the circuit every 256 KiB and once a second, sealed under the
//!     end-to-end key (`crate::circuit::DELIVERY_COUNT_ID`), so no relay can forge or inflate
//!     it; the client
//!     sums these counts over its circuits through one first hop and pays that hop up to the
//!     sum ([`MarketCore::circuit_confirmed`], receipt source [`far_source`]). Until the first
//!     count arrives (and for a far end too old to send one) the first relay's own receipts
//!     serve. Between relays, and from the last relay to the end, the next hop's signed
//!     receipts confirm: the end receipts what it receives (with or without the server role),
//!     and a relay receipts its previous hop only as its next hop receipts it
//!     ([`ferry_market::chain::ReceiptChain`], which shares each growth of the next hop's
//!     cumulative receipt among the previous hops in proportion to the bytes forwarded for
//!     each). So a relay that drops (or black-holes) the upstream earns nothing for it, and the
//!     client stops getting service after one grace. Each hop adds up to one receipt interval
//!     (1 s) before upstream bytes can be paid, so the credit line must cover that too.
//!   - Limits: a middle relay running modified software can receipt upstream bytes it never
//!     forwarded, to the relay before it (only the client checks the far end's count). A relay
//!     that drops the far end's count cells (38-byte backward cells, recognisable by size and
//!     rhythm) from the start keeps the client on its own receipts; once a count has arrived
//!     the client never goes back. A next hop off the market (no binding) sends no receipts,
//!     so the relay before it confirms upstream cells on arrival (a hop receipt). A relay's
//!     next hop receipts every byte it metered from the relay, including the relay's own
//!     traffic to it (its own circuits, or the next hop as its paid exit); that raises the
//!     ratio for the previous hops (capped at what they sent). Downstream cells the client
//!     never receives (lost on its link, or dropped by a lying relay) are paid by the relay to
//!     its next hop and not by the client: each relay carries its link's loss. The far end's
//!     counts of circuits that closed stay in the sum; at most [`MAX_COUNTED_CIRCUITS`] live
//!     per first hop.
//! - **Not metered**: direct mesh frames between friends (nothing is forwarded for a third
//!   party), and IP packets of exit circuits at the exit (the exit is paid for the cells by its
//!   previous hop instead).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_api::{ApiError, Earnings, MarketContract, Wallet, WalletChannel};
use ferry_crypto::PublicKey;
use ferry_market::chain::ReceiptChain;
use ferry_market::client::{Client, ClientConfig, ClientEvent};
use ferry_market::msg::{Address as MAddress, ChannelId, Settlement, VoucherMsg};
use ferry_market::server::{ReceiptIssuer, Server, ServerConfig, ServerEvent, Verdict};
use ferry_market::{
    ChannelInfo, MARKET_PACKET_ID, NodeSigner, PeerId, VoucherSigner, VoucherVerifier,
};
use ferry_pay::{
    AccountKey, Address, B256, BackendInfo, ChannelState, DevChain, EmbeddedConfig, EmbeddedEvm,
    JsonRpcEvm, PayError, PaymentBackend, U256, Voucher,
};
use serde::{Deserialize, Serialize};

/// The profile's configuration file, whose `[market]` table [`MarketConfig`] reads.
pub const CONFIG_FILE: &str = "config.toml";
/// Directory in the profile for the market's files (ledger, server state).
pub const MARKET_DIR: &str = "market";
/// How often the driver runs the state machines' timers and sends what they queued.
pub const TICK: Duration = Duration::from_millis(200);
/// How often the server redeems its newest vouchers on the ledger.
pub const CLAIM_INTERVAL: Duration = Duration::from_secs(60);
/// How long `ferry up` waits on shutdown for the last claims.
pub const SHUTDOWN_CLAIM_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the server state is written to the profile.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a binding is valid, s; re-sent to every peer at half that.
pub const BINDING_TTL_S: u64 = 86_400;
/// Receipts go out every this many bytes delivered (or every second). Each costs an Ed25519
/// signature and a strict verification; at 16 KiB they cost more CPU than the tunnel's own
/// encryption (`bench/paid.sh`).
pub const RECEIPT_EVERY_BYTES: u64 = 256 * 1024;
/// Vouchers go out every this many KiB receipted (or on a timer): each costs a secp256k1
/// signature and a public-key recovery.
pub const VOUCHER_KIB: u64 = 512;
/// What the embedded dev chain credits a fresh account with, wei (1 ETH; dev ledgers only).
pub const DEV_FUNDS: u128 = 1_000_000_000_000_000_000;
/// How much longer than the contract that asks for it a channel is opened for, s.
pub const CHANNEL_EXTRA_S: u64 = 86_400;
/// Most packets queued for sending between two driver ticks.
const MAX_OUT: usize = 4096;

/// Which settlement backend (`backend` in `[market]`, `--market-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendChoice {
    /// The channel contract in an in-process revm, ledger file in the profile.
    #[default]
    #[serde(rename = "embedded")]
    Embedded,
    /// An Ethereum JSON-RPC endpoint (`rpc_url`, `chain_id`): `ferry chain serve` or a real chain.
    #[serde(rename = "json-rpc")]
    JsonRpc,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "json-rpc" => Ok(Self::JsonRpc),
            other => Err(format!(
                "unknown market backend {other:?} (embedded or json-rpc)"
            )),
        }
    }
}

/// The `[market]` table of `<profile>/config.toml` (issue 8 point 6; seed 003's settings).
/// Amounts are in wei (the chain's base unit), sizes in KiB (1024 bytes of IP packets), times in
/// seconds. Every key is optional; the defaults are the values below.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// Take part in the market at all (default `false`: forwarding stays free and unmetered).
    pub enabled: bool,
    /// Price asked per KiB forwarded as a relay or exit (default 1 gwei = 1e9 wei).
    pub price_per_kib: u64,
    /// Highest price per KiB accepted as a client (default 2e9 wei).
    pub max_price_per_kib: u64,
    /// Data one contract covers (default 1048576 KiB = 1 GiB).
    pub contract_data_kib: u64,
    /// How long one contract lasts (default 3600 s).
    pub contract_time_s: u64,
    /// A client renews when less data than this is left (default 65536 KiB).
    pub data_renewal_kib: u64,
    /// A client renews when less time than this is left (default 300 s).
    pub time_renewal_s: u64,
    /// Credit a server extends before payment (default 4096 KiB).
    pub grace_kib: u64,
    /// `"embedded"` (default) or `"json-rpc"`.
    pub backend: BackendChoice,
    /// JSON-RPC endpoint (`backend = "json-rpc"`; default `http://127.0.0.1:8545`).
    pub rpc_url: String,
    /// EVM chain id (default 1717924466 = 0x66657272, the embedded chain's; Hardhat: 31337).
    pub chain_id: u64,
    /// `backend = "json-rpc"`: address of the deployed `UniChannels` contract, `0x…` (default:
    /// none, ask the endpoint with `ferry_hub`, which `ferry chain serve` answers).
    pub hub: Option<String>,
}

impl Default for MarketConfig {
    fn default() -> Self {
        let s = ServerConfig::default();
        let c = ClientConfig::default();
        Self {
            enabled: false,
            price_per_kib: u64::try_from(s.price_per_kib).unwrap_or(u64::MAX),
            max_price_per_kib: u64::try_from(c.max_price_per_kib).unwrap_or(u64::MAX),
            contract_data_kib: s.contract_data_kib,
            contract_time_s: s.contract_time_s,
            data_renewal_kib: c.data_renewal_kib,
            time_renewal_s: c.time_renewal_s,
            grace_kib: s.grace_kib,
            backend: BackendChoice::Embedded,
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: ferry_pay::DEFAULT_CHAIN_ID,
            hub: None,
        }
    }
}

/// `ferry up` flags over the `[market]` table (`None`: keep the file's value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MarketFlags {
    /// `--market`.
    pub enabled: Option<bool>,
    /// `--price-per-kib`.
    pub price_per_kib: Option<u64>,
    /// `--max-price-per-kib`.
    pub max_price_per_kib: Option<u64>,
    /// `--contract-data-kib`.
    pub contract_data_kib: Option<u64>,
    /// `--contract-time-s`.
    pub contract_time_s: Option<u64>,
    /// `--data-renewal-kib`.
    pub data_renewal_kib: Option<u64>,
    /// `--time-renewal-s`.
    pub time_renewal_s: Option<u64>,
    /// `--grace-kib`.
    pub grace_kib: Option<u64>,
    /// `--market-backend`.
    pub backend: Option<BackendChoice>,
    /// `--rpc-url`.
    pub rpc_url: Option<String>,
    /// `--chain-id`.
    pub chain_id: Option<u64>,
    /// `--hub`.
    pub hub: Option<String>,
}

impl MarketConfig {
    /// The `[market]` table of `<profile_dir>/config.toml` (defaults when the file or the table
    /// is missing; other tables are ignored).
    ///
    /// # Errors
    /// The file cannot be read or the table does not parse (unknown keys included).
    pub fn load(profile_dir: &Path) -> anyhow::Result<Self> {
        let path = profile_dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The `[market]` table of a config file's text.
    ///
    /// # Errors
    /// TOML syntax, wrong types, unknown keys.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        match table.remove("market") {
            None => Ok(Self::default()),
            Some(v) => Ok(v.try_into()?),
        }
    }

    /// Applies `ferry up` flags over the file's values.
    pub fn apply(&mut self, f: &MarketFlags) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &f.$field {
                    self.$field = v.clone();
                }
            )*};
        }
        set!(
            enabled,
            price_per_kib,
            max_price_per_kib,
            contract_data_kib,
            contract_time_s,
            data_renewal_kib,
            time_renewal_s,
            grace_kib,
            backend,
            rpc_url,
            chain_id
        );
        if f.hub.is_some() {
            self.hub.clone_from(&f.hub);
        }
    }

    /// The server's terms ([`ServerConfig`]) with these settings and `settlement`.
    pub fn server_config(&self, settlement: Settlement) -> ServerConfig {
        let price = u128::from(self.price_per_kib);
        ServerConfig {
            price_per_kib: price,
            min_price_per_kib: price / 2,
            contract_data_kib: self.contract_data_kib,
            contract_time_s: self.contract_time_s,
            grace_kib: self.grace_kib,
            settlement,
            ..ServerConfig::default()
        }
    }

    /// The client's limits ([`ClientConfig`]) with these settings.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            max_price_per_kib: u128::from(self.max_price_per_kib),
            data_renewal_kib: self.data_renewal_kib,
            time_renewal_s: self.time_renewal_s,
            voucher_kib: VOUCHER_KIB,
            ..ClientConfig::default()
        }
    }
}

/// The settlement backend seam: one variant per [`PaymentBackend`] implementation.
#[derive(Debug, Clone)]
pub enum Ledger {
    /// [`EmbeddedEvm`] (shared, so tests can run two endpoints on one ledger).
    Embedded(Arc<EmbeddedEvm>),
    /// [`JsonRpcEvm`]: `ferry chain serve`, Hardhat, anvil or a real EVM chain (one instance per
    /// process: it sends this node's transactions one at a time).
    JsonRpc(Arc<JsonRpcEvm>),
}

macro_rules! ledger_call {
    ($self:expr, $b:ident => $e:expr) => {
        match $self {
            Ledger::Embedded($b) => $e,
            Ledger::JsonRpc($b) => $e,
        }
    };
}

impl Ledger {
    /// Opens the backend `config` names: `embedded` keeps its ledger in `<dir>/ledger.json`;
    /// `json-rpc` connects to `config.rpc_url`, checks that its chain id is `config.chain_id`
    /// and takes the channel contract from `config.hub` (checked to hold code) or, without
    /// one, from the endpoint's `ferry_hub` (`ferry chain serve`).
    ///
    /// # Errors
    /// The ledger file is unreadable; the endpoint is unreachable, on another chain, has no
    /// contract at `hub`, or cannot name its hub. The message says which and what to set.
    pub async fn open(config: &MarketConfig, dir: &Path) -> anyhow::Result<Self> {
        match config.backend {
            BackendChoice::Embedded => {
                let evm = EmbeddedEvm::open_file(
                    dir.join("ledger.json"),
                    EmbeddedConfig {
                        chain_id: config.chain_id,
                        ..EmbeddedConfig::default()
                    },
                )?;
                Ok(Self::Embedded(Arc::new(evm)))
            }
            BackendChoice::JsonRpc => Ok(Self::JsonRpc(Arc::new(connect_rpc(config).await?))),
        }
    }

    /// Kind, chain id and hub.
    pub fn info(&self) -> BackendInfo {
        ledger_call!(self, b => b.info())
    }

    /// [`PaymentBackend::open`].
    ///
    /// # Errors
    /// [`PayError`].
    pub async fn open_channel(
        &self,
        payer: &AccountKey,
        receiver: Address,
        deposit: U256,
        expiry: u64,
    ) -> Result<B256, PayError> {
        ledger_call!(self, b => b.open(payer, receiver, deposit, expiry).await)
    }

    /// [`PaymentBackend::top_up`].
    ///
    /// # Errors
    /// [`PayError`].
    pub async fn top_up(
        &self,
        payer: &AccountKey,
        ch: B256,
        add: U256,
        new_expiry: u64,
    ) -> Result<(), PayError> {
        ledger_call!(self, b => b.top_up(payer, ch, add, new_expiry).await)
    }

    /// [`PaymentBackend::channel`].
    ///
    /// # Errors
    /// [`PayError`].
    pub async fn channel(&self, ch: B256) -> Result<Option<ChannelState>, PayError> {
        ledger_call!(self, b => b.channel(ch).await)
    }

    /// [`PaymentBackend::claim`].
    ///
    /// # Errors
    /// [`PayError`].
    pub async fn claim(&self, receiver: &AccountKey, v: &Voucher) -> Result<U256, PayError> {
        ledger_call!(self, b => b.claim(receiver, v).await)
    }

    /// [`PaymentBackend::balance`].
    ///
    /// # Errors
    /// [`PayError`].
    pub async fn balance(&self, who: Address) -> Result<U256, PayError> {
        ledger_call!(self, b => b.balance(who).await)
    }

    /// Dev ledgers only: credits `who` with [`DEV_FUNDS`] if its balance is zero (the embedded
    /// chain has no faucet; a real chain is funded by its owner).
    pub async fn dev_fund_if_empty(&self, who: Address) {
        match self {
            Self::Embedded(b) => {
                if b.balance(who).await.is_ok_and(|x| x.is_zero()) {
                    b.fund(who, U256::from(DEV_FUNDS));
                }
            }
            // Accounts on a JSON-RPC chain are funded by their owner (`ferry chain fund`).
            Self::JsonRpc(_) => {}
        }
    }
}

/// [`JsonRpcEvm::connect`] with the `[market]` settings and errors that say what to fix.
async fn connect_rpc(config: &MarketConfig) -> anyhow::Result<JsonRpcEvm> {
    let url = config.rpc_url.as_str();
    let hub = match config.hub.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) => Some(h.parse::<Address>().map_err(|e| {
            anyhow::anyhow!("market: hub {h:?} is not a 0x-prefixed 20-byte address: {e}")
        })?),
    };
    JsonRpcEvm::connect(url, Some(config.chain_id), hub, None)
        .await
        .map_err(|e| {
            let hint = match &e {
                PayError::Rpc(m) if m.contains("connect") || m.contains("timed out") => {
                    " (is the endpoint up? start one with `ferry chain serve`, or set rpc_url / \
                     --rpc-url)"
                }
                PayError::Rpc(m) if m.contains("chain id") => {
                    " (set chain_id / --chain-id to the endpoint's chain)"
                }
                PayError::Rpc(m) if m.contains("ferry_hub") || m.contains("-32601") => {
                    " (this endpoint is not `ferry chain serve`: set hub / --hub to the deployed \
                     UniChannels address)"
                }
                _ => "",
            };
            anyhow::anyhow!("market backend json-rpc at {url}: {e}{hint}")
        })
}

/// Checks vouchers with `ferry-pay`'s [`Voucher::signer`] for one chain and hub.
#[derive(Debug, Clone, Copy)]
pub struct PayVerifier {
    /// Chain id.
    pub chain_id: u64,
    /// Channel contract.
    pub hub: Address,
}

impl VoucherVerifier for PayVerifier {
    fn verify(
        &self,
        channel: &ChannelId,
        cumulative: u128,
        signature: &[u8; 65],
        payer: &MAddress,
    ) -> Result<(), String> {
        let v = Voucher {
            channel: B256::from(*channel),
            cumulative: U256::from(cumulative),
            sig: *signature,
        };
        match v.signer(self.chain_id, self.hub) {
            Ok(a) if a == Address::from(*payer) => Ok(()),
            Ok(a) => Err(format!("signed by {a}, not the channel's sender")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Signs vouchers with the node's [`AccountKey`] ([`Voucher::sign`]).
#[derive(Debug, Clone)]
pub struct PaySigner {
    /// The account key.
    pub key: AccountKey,
    /// Chain id.
    pub chain_id: u64,
    /// Channel contract.
    pub hub: Address,
}

impl VoucherSigner for PaySigner {
    fn sign(&self, channel: &ChannelId, cumulative: u128) -> [u8; 65] {
        // Signing a 32-byte digest with a valid key cannot fail; a zero signature would only be
        // refused by the server.
        Voucher::sign(
            &self.key,
            self.chain_id,
            self.hub,
            B256::from(*channel),
            U256::from(cumulative),
        )
        .map(|v| v.sig)
        .unwrap_or([0; 65])
    }
}

/// Ledger work the state machines asked for, done by the driver outside the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LedgerTask {
    Open {
        server: PeerId,
        receiver: MAddress,
        deposit: u128,
        expiry: u64,
    },
    Check {
        peer: PeerId,
        channel: ChannelId,
    },
}

/// What the server persists besides its snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    server: Option<ferry_market::server::ServerSnapshot>,
    /// Claimed on the ledger per client (hex key → wei, decimal).
    claimed: HashMap<String, String>,
}

/// The market state of one node: both state machines, the receipt issuer and the keys.
#[derive(Debug)]
pub struct MarketCore {
    config: MarketConfig,
    server: Option<Server>,
    client: Client,
    receipts: ReceiptIssuer,
    /// Relays: what each previous hop sent through each next hop, confirmed as the next hop
    /// receipts it.
    chain: ReceiptChain,
    /// Circuit clients: the far ends' delivery counts by first hop, per circuit handle
    /// (count, Unix s of the last report; at most [`MAX_COUNTED_CIRCUITS`] per first hop, the
    /// stalest forgotten first), and their sum.
    far_counts: HashMap<PeerId, FarCounts>,
    signer: PaySigner,
    verifier: PayVerifier,
    ledger: Ledger,
    out: Vec<(PeerId, Vec<u8>)>,
    tasks: Vec<LedgerTask>,
    /// Peers sent our server binding, and when (relays and exits send it to every friend whose
    /// session comes up).
    server_bound: HashMap<PeerId, u64>,
    /// Peers sent our client binding, and when (only servers: on their binding or our first
    /// packet through them, so plain friends never see market packets).
    client_bound: HashMap<PeerId, u64>,
    claimed: HashMap<PeerId, u128>,
    last_tick: u64,
    /// The long-term secret key (the node signer is rebuilt from it on restore).
    secret: ferry_crypto::SecretKey,
    /// Packets dropped because the market gated them (server side).
    pub gated_packets: u64,
    dirty: bool,
}

/// Unix time, seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn role_of_kind(kind: u8) -> (bool, bool) {
    // (to server, to client)
    match kind {
        0x01 | 0x06 | 0x0b => (true, true),
        0x02 | 0x04 | 0x05 | 0x07 => (true, false),
        _ => (false, true),
    }
}

impl MarketCore {
    /// A node's market with long-term secret `secret`: a server too when `serve` (relays and
    /// exits); `ledger` settles.
    pub fn new(config: MarketConfig, secret: &[u8; 32], serve: bool, ledger: Ledger) -> Self {
        let me = ferry_crypto::SecretKey::from_bytes(*secret).public_key();
        let info = ledger.info();
        let key = AccountKey::from_seed(secret);
        let settlement = Settlement {
            chain_id: info.chain_id,
            hub: info.hub.into_array(),
            receiver: key.address().into_array(),
            min_deposit: 0,
        };
        let node = || NodeSigner::from_long_term_secret(secret);
        let server = serve.then(|| Server::new(config.server_config(settlement), node()));
        let mut client_cfg = config.client_config();
        // A deposit that covers at least one contract's worth at our highest price.
        client_cfg.deposit = client_cfg.deposit.max(ferry_market::due(
            config.contract_data_kib.saturating_mul(1024),
            u128::from(config.max_price_per_kib),
        ));
        Self {
            client: Client::new(client_cfg, node(), me.0),
            receipts: ReceiptIssuer::new(node(), RECEIPT_EVERY_BYTES, 1),
            chain: ReceiptChain::new(),
            far_counts: HashMap::new(),
            signer: PaySigner {
                key,
                chain_id: info.chain_id,
                hub: info.hub,
            },
            verifier: PayVerifier {
                chain_id: info.chain_id,
                hub: info.hub,
            },
            config,
            server,
            ledger,
            out: Vec::new(),
            tasks: Vec::new(),
            server_bound: HashMap::new(),
            client_bound: HashMap::new(),
            claimed: HashMap::new(),
            last_tick: 0,
            secret: ferry_crypto::SecretKey::from_bytes(*secret),
            gated_packets: 0,
            dirty: false,
        }
    }

    /// The account address (voucher signer, channel receiver).
    pub fn address(&self) -> Address {
        self.signer.key.address()
    }

    /// The server state machine (relays and exits).
    pub fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }

    /// The client state machine.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A server sends its binding to `peer` (when its session comes up, and again at half the
    /// binding's TTL); a node without the server role sends nothing.
    pub fn peer_online(&mut self, now: u64, peer: PeerId) {
        let Some(s) = &self.server else { return };
        let b = s.binding(self.signer.key.address().into_array(), now + BINDING_TTL_S);
        self.queue(peer, b);
        if self.server_bound.len() < ferry_market::MAX_PEERS
            || self.server_bound.contains_key(&peer)
        {
            self.server_bound.insert(peer, now);
        }
    }

    /// Sends our client binding to server `peer` (its binding came, or we send through it).
    fn bind_client(&mut self, now: u64, peer: PeerId) {
        let account = self.signer.key.address().into_array();
        let b = self
            .client
            .binding(account, self.signer.chain_id, now + BINDING_TTL_S);
        self.queue(peer, b);
        if self.client_bound.len() < ferry_market::MAX_PEERS
            || self.client_bound.contains_key(&peer)
        {
            self.client_bound.insert(peer, now);
        }
    }

    /// The session with `peer` went down: it gets fresh bindings when it comes back.
    pub fn peer_gone(&mut self, peer: &PeerId) {
        self.server_bound.remove(peer);
        self.client_bound.remove(peer);
    }

    fn queue(&mut self, peer: PeerId, msg: Vec<u8>) {
        if self.out.len() >= MAX_OUT {
            return;
        }
        let mut v = Vec::with_capacity(msg.len() + 1);
        v.push(MARKET_PACKET_ID);
        v.extend_from_slice(&msg);
        self.out.push((peer, v));
    }

    /// A market packet (`data`, id 175 first) from `from`.
    pub fn on_packet(&mut self, now: u64, from: PeerId, data: &[u8]) {
        let Some((&MARKET_PACKET_ID, body)) = data.split_first() else {
            return;
        };
        let Some(&kind) = body.first() else { return };
        let (to_server, to_client) = role_of_kind(kind);
        if to_server && let Some(s) = &mut self.server {
            if let Err(e) = s.handle_message(now, from, body, &self.verifier) {
                tracing::debug!(peer = %hex::encode(from), "market (server): {e}");
            }
            self.dirty = true;
        }
        if to_client {
            match self.client.handle_message(now, from, body, &self.signer) {
                // A server introduced itself: answer with our client binding (once).
                Ok(()) if kind == 0x01 && !self.client_bound.contains_key(&from) => {
                    self.bind_client(now, from);
                }
                // A next hop's receipt: confirm its share to the previous hops we relay for.
                Ok(()) if kind == 0x0a => {
                    let confirmed = self.client.receipted(&from);
                    for (prev, n) in self.chain.on_confirmed(&from, confirmed) {
                        self.receipts.on_delivered(now, prev, n);
                    }
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(peer = %hex::encode(from), "market (client): {e}"),
            }
        }
        self.pump(now);
    }

    /// Server side: a packet of `len` bytes from client `from` to `dest` is about to be
    /// forwarded (exit: to the uplink, where this node is also the destination that receipts
    /// it). `false`: drop it (the market gated it).
    pub fn server_forward(&mut self, now: u64, from: PeerId, dest: IpAddr, len: u32) -> bool {
        self.server_meter(now, from, dest, len, true)
    }

    /// Server side: a reply of `len` bytes from `src` to client `to` is about to go back to it
    /// (metered under the contract covering `src`, no receipt: the client counts what it
    /// receives). `false`: drop it (the market gated it).
    pub fn server_reply(&mut self, now: u64, to: PeerId, src: IpAddr, len: u32) -> bool {
        self.server_meter(now, to, src, len, false)
    }

    fn server_meter(&mut self, now: u64, from: PeerId, dest: IpAddr, len: u32, up: bool) -> bool {
        if self.server.is_none() {
            return true;
        }
        if !self.server_bound.contains_key(&from) {
            self.peer_online(now, from);
        }
        let Some(s) = &mut self.server else {
            return true;
        };
        let v = s.on_packet(now, from, dest, len);
        let ok = matches!(v, Verdict::Forward(_));
        if ok {
            if up {
                self.receipts.on_delivered(now, from, u64::from(len));
            }
        } else {
            self.gated_packets += 1;
        }
        self.dirty = true;
        self.pump(now);
        ok
    }

    /// Circuit hop, server side: a data cell of `len` bytes from previous hop `prev` is about
    /// to be handled. Where the circuit ends here (`next` = `None`) it is receipted to `prev`
    /// at once (this node is the cells' destination); where we relay it to `next`, it is
    /// receipted only as `next`'s receipts confirm what we forwarded there
    /// ([`ferry_market::chain::ReceiptChain`]), or at once when `next` is off the market (no
    /// binding from it, so no receipts will come). A circuit end receipts even without the
    /// server role. `false`: drop it (the market gated it).
    pub fn circuit_forward(
        &mut self,
        now: u64,
        prev: PeerId,
        next: Option<PeerId>,
        len: u32,
    ) -> bool {
        let Some(next) = next else {
            if self.server.is_none() {
                // The end of a circuit receipts what it received even without the server role
                // (a mesh peer on the market as a client): the relay before it is paid only
                // as far as its next hop's receipts confirm.
                self.receipts.on_delivered(now, prev, u64::from(len));
                self.pump(now);
                return true;
            }
            return self.server_meter(now, prev, CIRCUIT_DEST, len, true);
        };
        // A next hop off the market (no binding from it) sends no receipts; what goes there is
        // confirmed on arrival here.
        let paid_next = self
            .client
            .account(&next)
            .is_some_and(|a| a.binding.is_some());
        let ok = self.server_meter(now, prev, CIRCUIT_DEST, len, !paid_next);
        if ok && paid_next {
            self.chain.on_forwarded(prev, next, u64::from(len));
        }
        ok
    }

    /// Circuit client: the far end of circuit `handle`, whose first hop is `first`, reports
    /// `cumulative` bytes of data cells received on it (sent back inside the circuit, sealed
    /// under the end-to-end key: no relay can forge it). From then on `first` is paid for the
    /// upstream cells only as far as these counts, summed over our circuits through it,
    /// confirm them ([`far_source`]), instead of by `first`'s own receipts.
    pub fn circuit_confirmed(&mut self, now: u64, first: PeerId, handle: u64, cumulative: u64) {
        if !self.far_counts.contains_key(&first) && self.far_counts.len() >= ferry_market::MAX_PEERS
        {
            return;
        }
        let (per, total) = self.far_counts.entry(first).or_default();
        if !per.contains_key(&handle)
            && per.len() >= MAX_COUNTED_CIRCUITS
            && let Some(stale) = per.iter().min_by_key(|(_, v)| v.1).map(|(h, _)| *h)
        {
            // Its count stays in the total; only a report for it would now count twice, and a
            // circuit that still reports is never the stalest.
            per.remove(&stale);
        }
        let e = per.entry(handle).or_insert((0, now));
        if cumulative > e.0 {
            *total = total.saturating_add(cumulative - e.0);
            e.0 = cumulative;
        }
        e.1 = now;
        let total = *total;
        let source = far_source(&first);
        if self.client.set_receipt_source(first, source).is_ok() {
            self.client.confirm_delivery(source, total, &self.signer);
        }
        self.pump(now);
    }

    /// Client side: a packet of `len` bytes to `dest` went to paid `server`.
    pub fn client_sent(&mut self, now: u64, server: PeerId, dest: IpAddr, len: u32) {
        if !self.client_bound.contains_key(&server) {
            self.bind_client(now, server);
        }
        if let Err(e) = self.client.on_sent(now, server, dest, len, &self.signer) {
            tracing::debug!("market (client): {e}");
        }
        self.pump(now);
    }

    /// Client side: a reply of `len` bytes from `src` came back from paid `server`.
    pub fn client_received(&mut self, now: u64, server: PeerId, src: IpAddr, len: u32) {
        if !self.client_bound.contains_key(&server) {
            self.bind_client(now, server);
        }
        if let Err(e) = self.client.on_received(now, server, src, len, &self.signer) {
            tracing::debug!("market (client): {e}");
        }
        self.pump(now);
    }

    /// Changes the client's highest price per KiB (`tunnel up --max-price`).
    pub fn set_max_price(&mut self, price: u128) {
        self.client.set_max_price_per_kib(price);
    }

    /// Runs the timers (once per second of `now`) and re-sends expiring bindings.
    pub fn tick(&mut self, now: u64) {
        if now == self.last_tick {
            return;
        }
        self.last_tick = now;
        if let Some(s) = &mut self.server {
            s.handle_timeout(now);
        }
        self.receipts.handle_timeout(now);
        self.client.handle_timeout(now, &self.signer);
        let stale = |m: &HashMap<PeerId, u64>| -> Vec<PeerId> {
            m.iter()
                .filter(|(_, t)| now.saturating_sub(**t) >= BINDING_TTL_S / 2)
                .map(|(p, _)| *p)
                .collect()
        };
        for p in stale(&self.server_bound) {
            self.peer_online(now, p);
        }
        for p in stale(&self.client_bound) {
            self.bind_client(now, p);
        }
        self.pump(now);
    }

    /// Moves what the state machines queued into the send queue and the ledger task list.
    fn pump(&mut self, _now: u64) {
        let mut msgs = Vec::new();
        if let Some(s) = &mut self.server {
            while let Some(m) = s.poll_transmit() {
                msgs.push(m);
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    ServerEvent::CheckChannel { peer, channel_id } => {
                        self.tasks.push(LedgerTask::Check {
                            peer,
                            channel: channel_id,
                        });
                    }
                    ServerEvent::VoucherAccepted { .. } => self.dirty = true,
                    ServerEvent::Suspended { peer, due, paid } => {
                        tracing::info!(peer = %hex::encode(peer), due, paid, "market: peer suspended");
                    }
                    _ => {}
                }
            }
        }
        while let Some(m) = self.receipts.poll_transmit() {
            msgs.push(m);
        }
        while let Some(m) = self.client.poll_transmit() {
            msgs.push(m);
        }
        while let Some(ev) = self.client.poll_event() {
            if let ClientEvent::OpenChannel {
                server,
                receiver,
                deposit,
                expiry,
            } = ev
            {
                self.tasks.push(LedgerTask::Open {
                    server,
                    receiver,
                    deposit,
                    expiry,
                });
            }
        }
        for (p, m) in msgs {
            self.queue(p, m);
        }
    }

    /// Takes the packets to send (`[175][envelope]` each).
    pub fn take_out(&mut self) -> Vec<(PeerId, Vec<u8>)> {
        std::mem::take(&mut self.out)
    }

    fn snapshot(&self) -> SavedState {
        SavedState {
            server: self.server.as_ref().map(Server::snapshot),
            claimed: self
                .claimed
                .iter()
                .map(|(k, v)| (hex::encode(k), v.to_string()))
                .collect(),
        }
    }

    fn restore(&mut self, saved: SavedState) {
        if let (Some(s), Some(snap)) = (&self.server, saved.server) {
            let cfg = s.config().clone();
            // The node signer is recreated from the same key the server was built with.
            let signer = NodeSigner::from_long_term_secret(&self.secret_for_restore());
            self.server = Some(Server::restore(cfg, signer, snap));
        }
        for (k, v) in saved.claimed {
            if let (Ok(k), Ok(v)) = (hex::decode(&k), v.parse::<u128>())
                && let Ok(k) = <[u8; 32]>::try_from(k.as_slice())
            {
                self.claimed.insert(k, v);
            }
        }
    }

    fn secret_for_restore(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn market_off() -> ApiError {
    ApiError::not_found(
        "the market is off on this node (ferry up --market, or [market] enabled = true in config.toml)",
    )
}

fn pay_err(e: PayError) -> ApiError {
    ApiError {
        status: 502,
        message: format!("ledger: {e}"),
    }
}

fn parse_wei(s: &str) -> Result<u128, ApiError> {
    s.trim()
        .parse::<u128>()
        .map_err(|e| ApiError::bad_request(format!("amount {s:?}: {e} (wei, a decimal integer)")))
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

fn snake(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A handle on the node's market (cheap to clone; a default handle is "market off", and every
/// hook on the forwarding path is then one uncontended lock and a `None` check).
#[derive(Debug, Clone, Default)]
pub struct Market {
    inner: Arc<Mutex<Option<MarketCore>>>,
    dir: Arc<Mutex<Option<PathBuf>>>,
    /// Wakes the driver before its next [`TICK`] when ledger work is queued (opening or
    /// checking a channel gates traffic until done: every tick of delay is dropped packets).
    wake: Arc<tokio::sync::Notify>,
}

impl Market {
    /// Turns the market on with `core`; `dir` (if any) keeps its state across restarts, and the
    /// saved server state there is restored now.
    pub fn start(&self, mut core: MarketCore, dir: Option<PathBuf>) {
        if let Some(d) = &dir
            && let Ok(text) = std::fs::read(d.join("server.json"))
        {
            match serde_json::from_slice::<SavedState>(&text) {
                Ok(saved) => core.restore(saved),
                Err(e) => tracing::warn!("market state {}: {e}", d.display()),
            }
        }
        *lock(&self.inner) = Some(core);
        *lock(&self.dir) = dir;
    }

    /// Whether the market is on.
    pub fn is_on(&self) -> bool {
        lock(&self.inner).is_some()
    }

    /// Runs `f` on the core if the market is on.
    pub fn with<R>(&self, f: impl FnOnce(&mut MarketCore) -> R) -> Option<R> {
        lock(&self.inner).as_mut().map(f)
    }

    /// A market packet from `from` (node task).
    pub fn on_packet(&self, from: &PublicKey, data: &[u8]) {
        self.with(|c| {
            c.on_packet(unix_now(), from.0, data);
            self.wake_if_work(c);
        });
    }

    /// Wakes the driver if the core queued ledger work.
    fn wake_if_work(&self, c: &MarketCore) {
        if !c.tasks.is_empty() {
            self.wake.notify_one();
        }
    }

    /// A friend's session came up or went down (node task).
    pub fn peer_connection(&self, peer: &PublicKey, online: bool) {
        self.with(|c| {
            if online {
                c.peer_online(unix_now(), peer.0);
            } else {
                c.peer_gone(&peer.0);
            }
        });
    }

    /// Forwarding-path hook of a server: `false` drops the packet.
    pub fn server_forward(&self, from: &PublicKey, pkt: &[u8]) -> bool {
        let Some(dest) = packet_dest(pkt) else {
            return true;
        };
        self.with(|c| {
            let ok = c.server_forward(unix_now(), from.0, dest, pkt.len() as u32);
            // Gated with messages queued (a proposal, `PaymentRequired`): send them now.
            if !ok && !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
            ok
        })
        .unwrap_or(true)
    }

    /// Forwarding-path hook of a server: `pkt` is a reply going back to client `to`; `false`
    /// drops it.
    pub fn server_reply(&self, to: &PublicKey, pkt: &[u8]) -> bool {
        let Some(src) = packet_src(pkt) else {
            return true;
        };
        self.with(|c| {
            let ok = c.server_reply(unix_now(), to.0, src, pkt.len() as u32);
            if !ok && !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
            ok
        })
        .unwrap_or(true)
    }

    /// Forwarding-path hook of a client: `pkt` came back from paid `server`.
    pub fn client_received(&self, server: &PublicKey, pkt: &[u8]) {
        if let Some(src) = packet_src(pkt) {
            self.with(|c| {
                c.client_received(unix_now(), server.0, src, pkt.len() as u32);
                if !c.out.is_empty() {
                    self.wake.notify_one();
                }
                self.wake_if_work(c);
            });
        }
    }

    /// Forwarding-path hook of a client: `pkt` went to paid `server`.
    pub fn client_sent(&self, server: &PublicKey, pkt: &[u8]) {
        if let Some(dest) = packet_dest(pkt) {
            self.with(|c| {
                c.client_sent(unix_now(), server.0, dest, pkt.len() as u32);
                // The client queues only negotiation here (binding, quote, renewal): send it now.
                if !c.out.is_empty() {
                    self.wake.notify_one();
                }
                self.wake_if_work(c);
            });
        }
    }

    /// Circuit hop, server side: a data cell of `len` bytes (the whole custom packet) came
    /// from `prev`, the previous hop of its circuit, and is about to be handled; `next` is the
    /// hop we relay it to (`None`: the circuit ends here). Metered under `prev`'s contract for
    /// [`CIRCUIT_DEST`] ([`MarketCore::circuit_forward`]); `false`: drop it (the market gated
    /// it).
    pub fn circuit_forward(&self, prev: &PublicKey, next: Option<&PublicKey>, len: usize) -> bool {
        self.with(|c| {
            let ok = c.circuit_forward(unix_now(), prev.0, next.map(|n| n.0), cell_len(len));
            if !ok && !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
            ok
        })
        .unwrap_or(true)
    }

    /// Circuit hop, server side: a data cell of `len` bytes is about to go back to `prev`, the
    /// previous hop of its circuit. Metered like [`Market::circuit_forward`], no receipt
    /// (`prev` counts what it receives); `false`: drop it.
    pub fn circuit_reply(&self, prev: &PublicKey, len: usize) -> bool {
        self.with(|c| {
            let ok = c.server_reply(unix_now(), prev.0, CIRCUIT_DEST, cell_len(len));
            if !ok && !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
            ok
        })
        .unwrap_or(true)
    }

    /// Circuit hop, client side: a data cell of `len` bytes went to `next`, the next hop of its
    /// circuit (we built or relay it); paid once `next` receipts it.
    pub fn circuit_sent(&self, next: &PublicKey, len: usize) {
        self.with(|c| {
            c.client_sent(unix_now(), next.0, CIRCUIT_DEST, cell_len(len));
            if !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
        });
    }

    /// Circuit hop, client side: a data cell of `len` bytes came back from `next`, the next hop
    /// of its circuit (on a circuit we built: only once it authenticated); paid without a
    /// receipt, this node being where it was delivered.
    pub fn circuit_received(&self, next: &PublicKey, len: usize) {
        self.with(|c| {
            c.client_received(unix_now(), next.0, CIRCUIT_DEST, cell_len(len));
            if !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
        });
    }

    /// Circuit client: the far end of circuit `handle` through first hop `first` counted
    /// `cumulative` bytes ([`MarketCore::circuit_confirmed`]).
    pub fn circuit_confirmed(&self, first: &PublicKey, handle: u64, cumulative: u64) {
        self.with(|c| {
            c.circuit_confirmed(unix_now(), first.0, handle, cumulative);
            if !c.out.is_empty() {
                self.wake.notify_one();
            }
            self.wake_if_work(c);
        });
    }

    /// Sends what the market queued, through `node` (node task).
    pub fn flush(&self, node: &mut ferry_proto::node::Node, now: std::time::Instant) {
        let out = self.with(MarketCore::take_out).unwrap_or_default();
        for (peer, data) in out {
            if let Err(e) = node.send_custom(now, &PublicKey(peer), &data) {
                tracing::debug!(peer = %hex::encode(peer), "market send: {e}");
            }
        }
    }

    /// One driver step: timers, then the ledger work they asked for. Returns the packets to send.
    pub async fn step(&self, now: u64) -> Vec<(PeerId, Vec<u8>)> {
        let Some((tasks, ledger, key)) = self.with(|c| {
            c.tick(now);
            (
                std::mem::take(&mut c.tasks),
                c.ledger.clone(),
                c.signer.key.clone(),
            )
        }) else {
            return Vec::new();
        };
        for t in tasks {
            match t {
                LedgerTask::Open {
                    server,
                    receiver,
                    deposit,
                    expiry,
                } => {
                    // The channel outlives the contract by a day, beyond any server's margin
                    // (`channel_margin_s`), so renewals can reuse it.
                    let expiry = expiry.saturating_add(CHANNEL_EXTRA_S);
                    let r = ledger
                        .open_channel(&key, Address::from(receiver), U256::from(deposit), expiry)
                        .await;
                    let ch = match r {
                        Ok(id) => Some((id.0, deposit)),
                        Err(e) => {
                            tracing::warn!("market: opening a channel: {e}");
                            None
                        }
                    };
                    self.with(|c| {
                        c.client.channel_opened(server, ch);
                        c.pump(now);
                    });
                }
                LedgerTask::Check { peer, channel } => {
                    let info = match ledger.channel(B256::from(channel)).await {
                        Ok(Some(st)) if !st.closed => Some(ChannelInfo {
                            id: channel,
                            sender: st.sender.into_array(),
                            receiver: st.receiver.into_array(),
                            deposit: st.deposit.saturating_to::<u128>(),
                            claimed: st.claimed.saturating_to::<u128>(),
                            expiry: st.expiry,
                        }),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!("market: channel lookup: {e}");
                            None
                        }
                    };
                    self.with(|c| {
                        if let Some(s) = &mut c.server {
                            s.channel_checked(now, peer, info);
                        }
                        c.dirty = true;
                        c.pump(now);
                    });
                }
            }
        }
        self.with(MarketCore::take_out).unwrap_or_default()
    }

    /// Redeems every client's newest voucher above what was claimed; returns the wei paid now.
    pub async fn claim_all(&self) -> u128 {
        let Some((vouchers, ledger, key)) = self.with(|c| {
            let v: Vec<(PeerId, u128, VoucherMsg)> = c
                .server
                .iter()
                .flat_map(|s| s.accounts())
                .filter_map(|(p, a)| {
                    let (cum, bytes) = a.best_voucher.as_ref()?;
                    let ch = a.channel?;
                    let claimed = c.claimed.get(p).copied().unwrap_or(0);
                    if *cum <= claimed {
                        return None;
                    }
                    let sig: [u8; 65] = bytes.as_slice().try_into().ok()?;
                    Some((
                        *p,
                        claimed,
                        VoucherMsg {
                            channel_id: ch.id,
                            cumulative: *cum,
                            signature: sig,
                        },
                    ))
                })
                .collect();
            (v, c.ledger.clone(), c.signer.key.clone())
        }) else {
            return 0;
        };
        let mut total = 0u128;
        for (peer, _, v) in vouchers {
            let voucher = Voucher {
                channel: B256::from(v.channel_id),
                cumulative: U256::from(v.cumulative),
                sig: v.signature,
            };
            match ledger.claim(&key, &voucher).await {
                Ok(paid) => {
                    total = total.saturating_add(paid.saturating_to::<u128>());
                    self.with(|c| {
                        c.claimed.insert(peer, v.cumulative);
                        c.dirty = true;
                    });
                }
                Err(e) => {
                    tracing::warn!(peer = %hex::encode(peer), "market: claim: {e}");
                    // E.g. claimed before a crash lost the state file: take the ledger's word.
                    if let Ok(Some(st)) = ledger.channel(voucher.channel).await {
                        self.with(|c| {
                            c.claimed.insert(peer, st.claimed.saturating_to::<u128>());
                            c.dirty = true;
                        });
                    }
                }
            }
        }
        total
    }

    /// Writes the server state to the profile if it changed.
    pub fn save(&self) {
        let Some(dir) = lock(&self.dir).clone() else {
            return;
        };
        let Some(Some(state)) = self.with(|c| {
            if !c.dirty {
                return None;
            }
            c.dirty = false;
            Some(c.snapshot())
        }) else {
            return;
        };
        let path = dir.join("server.json");
        let tmp = dir.join(".server.json.tmp");
        let r = serde_json::to_vec(&state)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            tracing::warn!("saving {}: {e}", path.display());
        }
    }

    /// `tunnel up --max-price`.
    ///
    /// # Errors
    /// 400 for a bad amount; 404 when the market is off.
    pub fn set_max_price(&self, price: &str) -> Result<(), ApiError> {
        let p = parse_wei(price)?;
        self.with(|c| c.set_max_price(p)).ok_or_else(market_off)
    }

    /// `GET /v1/wallet`.
    ///
    /// # Errors
    /// 404 when the market is off; 502 when the ledger fails.
    pub async fn wallet(&self) -> Result<Wallet, ApiError> {
        let (ledger, address, mut rows) = self
            .with(|c| {
                let mut rows: Vec<(WalletChannel, ChannelId)> = Vec::new();
                for (p, a) in c.client.accounts() {
                    if let Some((id, deposit)) = a.channel {
                        rows.push((
                            WalletChannel {
                                peer: PublicKey(*p).to_hex(),
                                channel_id: hex0x(&id),
                                deposit: deposit.to_string(),
                                cumulative: a.vouchered.to_string(),
                                claimed: "0".into(),
                            },
                            id,
                        ));
                    }
                }
                for (p, a) in c.server.iter().flat_map(|s| s.accounts()) {
                    if let Some(ch) = a.channel {
                        let cum = a.best_voucher.as_ref().map_or(a.paid, |v| v.0);
                        rows.push((
                            WalletChannel {
                                peer: PublicKey(*p).to_hex(),
                                channel_id: hex0x(&ch.id),
                                deposit: ch.deposit.to_string(),
                                cumulative: cum.to_string(),
                                claimed: ch.claimed.to_string(),
                            },
                            ch.id,
                        ));
                    }
                }
                (c.ledger.clone(), c.address(), rows)
            })
            .ok_or_else(market_off)?;
        let balance = ledger.balance(address).await.map_err(pay_err)?;
        for (row, id) in &mut rows {
            if let Ok(Some(st)) = ledger.channel(B256::from(*id)).await {
                row.deposit = st.deposit.to_string();
                row.claimed = st.claimed.to_string();
            }
        }
        Ok(Wallet {
            address: format!("{address:#x}"),
            balance: balance.to_string(),
            channels: rows.into_iter().map(|(r, _)| r).collect(),
        })
    }

    /// `POST /v1/wallet/deposit`: tops up the channel paying `peer`, or opens one (the peer's
    /// binding names its account).
    ///
    /// # Errors
    /// 400 bad key or amount, 404 market off, 409 no binding from the peer yet, 502 ledger.
    pub async fn deposit(&self, peer: &str, amount: &str) -> Result<Wallet, ApiError> {
        let pk = PublicKey::from_hex(peer)
            .map_err(|e| ApiError::bad_request(format!("peer key: {e}")))?;
        let amount = parse_wei(amount)?;
        let now = unix_now();
        let (ledger, key, channel, receiver, expiry) = self
            .with(|c| {
                let acct = c.client.account(&pk.0);
                let channel = acct.and_then(|a| a.channel);
                let receiver = acct.and_then(|a| a.binding.as_ref().map(|b| b.1));
                let expiry = now + 2 * c.config.contract_time_s + 86_400;
                (
                    c.ledger.clone(),
                    c.signer.key.clone(),
                    channel,
                    receiver,
                    expiry,
                )
            })
            .ok_or_else(market_off)?;
        match channel {
            Some((id, deposit)) => {
                ledger
                    .top_up(&key, B256::from(id), U256::from(amount), expiry)
                    .await
                    .map_err(pay_err)?;
                self.with(|c| {
                    c.client
                        .channel_opened(pk.0, Some((id, deposit.saturating_add(amount))));
                });
            }
            None => {
                let Some(receiver) = receiver else {
                    return Err(ApiError::conflict(
                        "no binding from this peer yet (its session must be up with the market on)",
                    ));
                };
                let id = ledger
                    .open_channel(&key, Address::from(receiver), U256::from(amount), expiry)
                    .await
                    .map_err(pay_err)?;
                self.with(|c| c.client.channel_opened(pk.0, Some((id.0, amount))));
            }
        }
        self.wallet().await
    }

    /// `GET /v1/contracts`.
    ///
    /// # Errors
    /// 404 when the market is off.
    pub fn contracts(&self) -> Result<Vec<MarketContract>, ApiError> {
        self.with(|c| {
            let mut v = Vec::new();
            for (p, a) in c.client.accounts() {
                let (_, due) = c.client.payable(p);
                let owed = due.saturating_sub(a.vouchered);
                for k in &a.contracts {
                    v.push(MarketContract {
                        peer: PublicKey(*p).to_hex(),
                        role: "client".into(),
                        price_per_kib: k.terms.price_per_kib.to_string(),
                        data_used_bytes: k.sent_bytes.saturating_add(k.received_bytes),
                        data_limit_bytes: k.terms.data_limit_kib.saturating_mul(1024),
                        expires_at: k.terms.expires_at,
                        paid: a.vouchered.to_string(),
                        owed: owed.to_string(),
                        state: snake(&format!("{:?}", k.state)),
                    });
                }
            }
            for (p, a) in c.server.iter().flat_map(|s| s.accounts()) {
                for k in &a.contracts {
                    v.push(MarketContract {
                        peer: PublicKey(*p).to_hex(),
                        role: "server".into(),
                        price_per_kib: k.terms.price_per_kib.to_string(),
                        data_used_bytes: k.forwarded_bytes,
                        data_limit_bytes: k.terms.data_limit_kib.saturating_mul(1024),
                        expires_at: k.terms.expires_at,
                        paid: a.paid.to_string(),
                        owed: a.unpaid().to_string(),
                        state: snake(&format!("{:?}", k.state)),
                    });
                }
            }
            v
        })
        .ok_or_else(market_off)
    }

    /// `GET /v1/earnings`.
    ///
    /// # Errors
    /// 404 when the market is off.
    pub fn earnings(&self) -> Result<Earnings, ApiError> {
        self.with(|c| {
            let total: u128 = c
                .server
                .iter()
                .flat_map(|s| s.accounts())
                .map(|(_, a)| a.paid)
                .fold(0, u128::saturating_add);
            let claimed: u128 = c.claimed.values().fold(0, |a, b| a.saturating_add(*b));
            Earnings {
                total: total.to_string(),
                claimed: claimed.to_string(),
                unclaimed: total.saturating_sub(claimed).to_string(),
            }
        })
        .ok_or_else(market_off)
    }
}

/// The destination every circuit contract names: `::/128` (the unspecified address, which no
/// forwarded IP packet carries). A hop meters circuit data cells per neighbour, not per
/// destination: it knows only its neighbours, and the cells are sealed end to end.
pub const CIRCUIT_DEST: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// A circuit client's far-end counts through one first hop: per circuit handle (count, Unix s
/// of the last report), and their sum (bytes).
type FarCounts = (HashMap<u64, (u64, u64)>, u64);

/// Most circuits through one first hop whose far-end counts a client keeps: 4096.
pub const MAX_COUNTED_CIRCUITS: usize = 4096;

/// The receipt source a circuit client names for the far ends of its circuits through first
/// hop `first` ([`MarketCore::circuit_confirmed`]): BLAKE3("ferry far end" ‖ first), which no
/// peer's key equals.
pub fn far_source(first: &PeerId) -> PeerId {
    let mut h = blake3::Hasher::new();
    h.update(b"ferry far end");
    h.update(first);
    *h.finalize().as_bytes()
}

/// A cell length as the market counts it (a custom packet is at most 1373 bytes).
fn cell_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The destination address of an IPv4 or IPv6 packet.
pub fn packet_dest(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let b: [u8; 4] = pkt[16..20].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if pkt.len() >= 40 => {
            let b: [u8; 16] = pkt[24..40].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet (`None` for anything shorter or else).
pub fn packet_src(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let b: [u8; 4] = pkt[12..16].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if pkt.len() >= 40 => {
            let b: [u8; 16] = pkt[8..24].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// Starts the market of `ferry up` if `config.enabled`: opens the ledger in
/// `<profile>/market/`, funds a fresh dev account, restores the server state and spawns the
/// driver ([`start_with_ledger`]). Returns the driver task.
///
/// # Errors
/// The market directory or ledger cannot be opened.
pub async fn start(
    market: &Market,
    config: MarketConfig,
    profile_dir: &Path,
    secret: &[u8; 32],
    serve: bool,
    node: ferry_net::NodeHandle,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if !config.enabled {
        return Ok(None);
    }
    let dir = profile_dir.join(MARKET_DIR);
    std::fs::create_dir_all(&dir)?;
    let ledger = Ledger::open(&config, &dir).await?;
    Ok(Some(
        start_with_ledger(market, config, Some(dir), secret, serve, node, ledger).await,
    ))
}

/// Turns `market` on over `ledger` (shared by several in-process nodes in tests or a devnet),
/// funds a fresh dev account, restores the server state from `dir` and spawns the driver:
/// every [`TICK`] the timers, the ledger work, sending through `node`; claims every
/// [`CLAIM_INTERVAL`], saves every [`SAVE_INTERVAL`]. The task ends when the node stops.
pub async fn start_with_ledger(
    market: &Market,
    config: MarketConfig,
    dir: Option<PathBuf>,
    secret: &[u8; 32],
    serve: bool,
    node: ferry_net::NodeHandle,
    ledger: Ledger,
) -> tokio::task::JoinHandle<()> {
    let key = AccountKey::from_seed(secret);
    ledger.dev_fund_if_empty(key.address()).await;
    let core = MarketCore::new(config, secret, serve, ledger);
    tracing::info!(account = %key.address(), serve, "market on");
    market.start(core, dir);
    let m = market.clone();
    tokio::spawn(async move {
        let mut last_claim = std::time::Instant::now();
        let mut last_save = std::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = m.wake.notified() => {}
            }
            let out = m.step(unix_now()).await;
            let m2 = m.clone();
            let sent = node
                .call(move |n, now| {
                    for (peer, data) in out {
                        let _ = n.send_custom(now, &PublicKey(peer), &data);
                    }
                    m2.flush(n, now);
                })
                .await;
            if sent.is_err() {
                break;
            }
            if last_claim.elapsed() >= CLAIM_INTERVAL {
                last_claim = std::time::Instant::now();
                m.claim_all().await;
            }
            if last_save.elapsed() >= SAVE_INTERVAL {
                last_save = std::time::Instant::now();
                m.save();
            }
        }
        m.save();
    })
}

#[cfg(test)]
mod tests;
