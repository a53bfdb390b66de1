//! Shared helpers of the ferry-pay integration tests. The payments.md §5 suites (no double
//! redemption, settlement end to end) are generic over [`Chain`] and run on three backends
//! (`on_every_backend!`): `EmbeddedEvm` in process, `JsonRpcEvm` against `ferry chain serve`'s
//! server started in process on 127.0.0.1:0, and `JsonRpcEvm` against a Hardhat node at
//! `FERRY_HARDHAT_URL` (skipped with a printed reason when unset, unless
//! `FERRY_REQUIRE_HARDHAT=1`, then failed).
#![allow(dead_code, unreachable_pub, missing_docs, unused_macros)]

use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_pay::rpc_server::ChainServer;
use ferry_pay::{
    AccountKey, Address, B256, DevChain, EmbeddedConfig, EmbeddedEvm, JsonRpcEvm, PaymentBackend,
    Receipt, U256, Voucher,
};

/// 1 ether in wei.
pub const ETH: u128 = 1_000_000_000_000_000_000;

pub fn eth(n: u128) -> U256 {
    U256::from(n * ETH)
}

/// One multi-threaded Tokio runtime per test process: it drives `JsonRpcEvm`'s I/O and the
/// in-process JSON-RPC servers.
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

/// Drives a future to completion on the test runtime (from any non-runtime thread).
pub fn block_on<F: Future>(f: F) -> F::Output {
    RT.block_on(f)
}

/// A backend under test: the settlement trait plus the dev controls and introspection the
/// suites need.
pub trait Chain: PaymentBackend + DevChain + Send + Sync + 'static {
    fn hub_address(&self) -> Address;
    fn chain_id_of(&self) -> u64;
    fn last(&self) -> Option<Receipt>;
    fn voucher_signer(&self, v: &Voucher) -> Address;
}

impl Chain for EmbeddedEvm {
    fn hub_address(&self) -> Address {
        self.hub()
    }
    fn chain_id_of(&self) -> u64 {
        self.config().chain_id
    }
    fn last(&self) -> Option<Receipt> {
        self.last_receipt()
    }
    fn voucher_signer(&self, v: &Voucher) -> Address {
        self.contract_voucher_signer(v).expect("view")
    }
}

impl Chain for JsonRpcEvm {
    fn hub_address(&self) -> Address {
        self.hub()
    }
    fn chain_id_of(&self) -> u64 {
        self.chain_id()
    }
    fn last(&self) -> Option<Receipt> {
        self.last_receipt()
    }
    fn voucher_signer(&self, v: &Voucher) -> Address {
        block_on(self.contract_voucher_signer(v)).expect("view")
    }
}

pub struct Setup<C = EmbeddedEvm> {
    pub evm: C,
    pub client: AccountKey,
    pub relay: AccountKey,
    /// Seconds by which the next transaction's timestamp may exceed `now()` (0 on chains whose
    /// clock only moves when told to; Hardhat's follows the wall clock and mines every
    /// transaction at least one second after the previous block).
    pub slack: u64,
}

impl Setup<EmbeddedEvm> {
    pub fn new() -> Self {
        Self::embedded()
    }

    pub fn embedded() -> Self {
        Self::with(EmbeddedEvm::new(EmbeddedConfig::default()).expect("embedded chain"))
    }
}

/// A fresh key per call (unique across test processes).
pub fn fresh_key() -> AccountKey {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&std::process::id().to_be_bytes());
    seed[4..12].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    seed[12..28].copy_from_slice(&nanos.to_be_bytes());
    AccountKey::from_seed(&seed)
}

impl Setup<JsonRpcEvm> {
    /// `ferry chain serve`'s server (a fresh embedded chain) on 127.0.0.1:0 in this process,
    /// reached through `JsonRpcEvm`, which discovers the hub with `ferry_hub`.
    pub fn served() -> Self {
        let url = serve(EmbeddedEvm::new(EmbeddedConfig::default()).expect("chain"));
        let evm = block_on(JsonRpcEvm::connect(&url, None, None, None)).expect("connect");
        Self::with(evm)
    }

    /// A Hardhat node at `FERRY_HARDHAT_URL`: fresh client, relay and deployer keys (funded with
    /// `hardhat_setBalance`), and a fresh `UniChannels` deployed by the deployer, so tests
    /// running in parallel on one node never share an account or a hub. `None` (with the
    /// reason printed) when the variable is unset, unless `FERRY_REQUIRE_HARDHAT=1`.
    pub fn hardhat() -> Option<Self> {
        let url = hardhat_url()?;
        let deployer = fresh_key();
        block_on(fund_raw(&url, deployer.address(), eth(10)));
        let evm = block_on(JsonRpcEvm::connect(&url, None, None, Some(&deployer)))
            .expect("connect to hardhat and deploy UniChannels");
        let mut s = Self::with_keys(evm, fresh_key(), fresh_key());
        s.slack = 120;
        Some(s)
    }
}

/// `FERRY_HARDHAT_URL`, or `None` after printing why the Hardhat tests are skipped; panics when
/// `FERRY_REQUIRE_HARDHAT=1` demands them.
pub fn hardhat_url() -> Option<String> {
    match std::env::var("FERRY_HARDHAT_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("FERRY_REQUIRE_HARDHAT").as_deref() == Ok("1") {
                panic!("FERRY_REQUIRE_HARDHAT=1 but FERRY_HARDHAT_URL is not set");
            }
            eprintln!(
                "skipped: FERRY_HARDHAT_URL is not set (start `npx hardhat node` and set it to run the Hardhat tests)"
            );
            None
        }
    }
}

/// Sets a balance on a Hardhat node with `hardhat_setBalance` (a bare JSON-RPC request over
/// std TCP, before any `JsonRpcEvm` exists).
pub async fn fund_raw(url: &str, who: Address, amount: U256) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let body = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"hardhat_setBalance",
        "params":[who, format!("{amount:#x}")]})
    .to_string();
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("connect to hardhat");
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("read");
    assert!(resp.contains("\"result\""), "hardhat_setBalance: {resp}");
}

/// Starts `ferry chain serve`'s server for `evm` on 127.0.0.1:0 on the test runtime; returns
/// its URL.
pub fn serve(evm: EmbeddedEvm) -> String {
    block_on(async {
        ChainServer::bind("127.0.0.1:0".parse().expect("addr"), evm)
            .await
            .expect("bind")
            .spawn()
    })
}

impl<C: Chain> Setup<C> {
    /// Funds the standard client and relay keys with 10 ETH each on `evm`.
    pub fn with(evm: C) -> Self {
        let client = AccountKey::from_seed(&[1u8; 32]);
        let relay = AccountKey::from_seed(&[2u8; 32]);
        Self::with_keys(evm, client, relay)
    }

    pub fn with_keys(evm: C, client: AccountKey, relay: AccountKey) -> Self {
        if block_on(evm.balance(client.address())).expect("balance") == U256::ZERO {
            evm.fund(client.address(), eth(10));
            evm.fund(relay.address(), eth(10));
        }
        Self {
            evm,
            client,
            relay,
            slack: 0,
        }
    }

    pub fn chain_id(&self) -> u64 {
        self.evm.chain_id_of()
    }

    pub fn hub(&self) -> Address {
        self.evm.hub_address()
    }

    /// The chain time; on a wall-clock chain (slack > 0) a block is mined first so the latest
    /// block's timestamp is current.
    pub fn now(&self) -> u64 {
        if self.slack > 0 {
            self.evm.advance_time(0);
        }
        block_on(self.evm.now()).expect("now")
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.evm.advance_time(secs);
    }

    /// Opens client → relay with `deposit` wei, expiring in `ttl` seconds.
    pub fn open(&self, deposit: U256, ttl: u64) -> B256 {
        let expiry = self.now() + ttl;
        block_on(
            self.evm
                .open(&self.client, self.relay.address(), deposit, expiry),
        )
        .expect("open")
    }

    /// A voucher for `cumulative` wei on `ch`, signed by the client for this chain and hub.
    pub fn voucher(&self, ch: B256, cumulative: u128) -> Voucher {
        Voucher::sign(
            &self.client,
            self.chain_id(),
            self.hub(),
            ch,
            U256::from(cumulative),
        )
        .expect("sign")
    }

    pub fn balance(&self, who: &AccountKey) -> U256 {
        block_on(self.evm.balance(who.address())).expect("balance")
    }

    pub fn hub_balance(&self) -> U256 {
        block_on(self.evm.balance(self.hub())).expect("balance")
    }

    /// Fee of the last transaction, in wei.
    pub fn fee(&self) -> U256 {
        self.evm.last().expect("a transaction ran").fee
    }

    pub fn gas(&self) -> u64 {
        self.evm.last().expect("a transaction ran").gas_used
    }
}

/// Instantiates generic suite functions `fn name<C: Chain>(s: Setup<C>)` as tests on every
/// backend: `embedded::name`, `served::name` (JSON-RPC to an in-process `ferry chain serve`) and
/// `hardhat::name` (JSON-RPC to `FERRY_HARDHAT_URL`).
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::common::Setup::embedded()); } )*
        }
        mod served {
            $( #[test] fn $name() { super::$name(super::common::Setup::served()); } )*
        }
        mod hardhat {
            $( #[test] fn $name() {
                if let Some(s) = super::common::Setup::hardhat() { super::$name(s); }
            } )*
        }
    };
}
