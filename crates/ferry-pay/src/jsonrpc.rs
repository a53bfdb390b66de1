//! `JsonRpcEvm`: the channel contract on any EVM chain reached over Ethereum JSON-RPC 2.0 (HTTP),
//! payments.md §4.5. Works against `ferry chain serve`, Hardhat, anvil or a real node.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_sol_types::{SolCall, SolEvent};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use crate::contract::{ContractError, IUniChannels, initcode};
use crate::{
    AccountKey, BackendInfo, BackendKind, CALL_GAS_LIMIT, ChannelState, DevChain, PayError,
    PaymentBackend, Receipt, Voucher,
};

/// Gas limit of the contract deployment sent by [`JsonRpcEvm::connect`].
pub const RPC_DEPLOY_GAS_LIMIT: u64 = 3_000_000;
/// Largest JSON-RPC response accepted, bytes (a bigger one is [`PayError::Rpc`]).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Timeout of one HTTP request, ms.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// How long a transaction may stay unmined before [`PayError::Rpc`], ms.
pub const RECEIPT_TIMEOUT_MS: u64 = 120_000;

/// A JSON-RPC endpoint URL: `http://HOST[:PORT][/PATH]` (plain HTTP only; `https` is refused
/// with [`PayError::Rpc`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct HttpUrl {
    host: String,
    port: u16,
    path: String,
    text: String,
}

impl HttpUrl {
    fn parse(url: &str) -> Result<Self, PayError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            PayError::Rpc(format!(
                "{url:?}: only http:// URLs are supported (use a local TLS proxy for https)"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| PayError::Rpc(format!("{url:?}: bad IPv6 host")))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => p.parse().ok(),
                None if tail.is_empty() => Some(80),
                None => None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()),
                None => (authority.to_string(), Some(80)),
            }
        };
        let port = port.ok_or_else(|| PayError::Rpc(format!("{url:?}: bad port")))?;
        if host.is_empty() {
            return Err(PayError::Rpc(format!("{url:?}: no host")));
        }
        Ok(Self {
            host,
            port,
            path: path.to_string(),
            text: url.to_string(),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One HTTP/1.1 POST of a JSON body; returns the response body. A new connection per request
/// (the nodes this talks to are local or behind a proxy; simplicity over throughput).
async fn http_post(url: &HttpUrl, body: Vec<u8>) -> Result<Vec<u8>, PayError> {
    let fut = async {
        let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| PayError::Rpc(format!("{}: connect: {e}", url.text)))?;
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| PayError::Rpc(format!("{}: {e}", url.text)))?;
        let req = hyper::Request::post(url.path.as_str())
            .header(hyper::header::HOST, url.authority())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| PayError::Rpc(format!("request: {e}")))?;
        let exchange = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| PayError::Rpc(format!("{}: {e}", url.text)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| PayError::Rpc(format!("{}: response body: {e}", url.text)))?
                .to_bytes();
            if !status.is_success() && bytes.is_empty() {
                return Err(PayError::Rpc(format!("{}: HTTP {status}", url.text)));
            }
            Ok(bytes.to_vec())
        };
        tokio::pin!(exchange);
        tokio::pin!(conn);
        tokio::select! {
            r = &mut exchange => r,
            c = &mut conn => match c {
                Err(e) => Err(PayError::Rpc(format!("{}: connection: {e}", url.text))),
                Ok(()) => exchange.await,
            },
        }
    };
    tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), fut)
        .await
        .map_err(|_| PayError::Rpc(format!("{}: timed out", url.text)))?
}

/// A JSON-RPC error object returned by the node.
#[derive(Clone, Debug)]
struct RpcFailure {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcFailure {
    /// Revert data carried by the error (geth/anvil: `data: "0x…"`; Hardhat:
    /// `data: {data: "0x…", txHash}`).
    fn revert_data(&self) -> Option<Bytes> {
        let v = self.data.as_ref()?;
        let s = match v {
            Value::String(s) => s.as_str(),
            Value::Object(o) => o.get("data")?.as_str()?,
            _ => return None,
        };
        s.parse::<Bytes>().ok()
    }

    /// Hash of a transaction the node mined although it reverted (Hardhat reports these as
    /// errors of `eth_sendRawTransaction`).
    fn tx_hash(&self) -> Option<B256> {
        self.data.as_ref()?.get("txHash")?.as_str()?.parse().ok()
    }

    fn is_revert(&self) -> bool {
        self.code == 3 || self.message.contains("revert") || self.revert_data().is_some()
    }
}

fn quantity(v: &Value) -> Result<U256, PayError> {
    match v {
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) if !hex.is_empty() => U256::from_str_radix(hex, 16).ok(),
            Some(_) => Some(U256::ZERO),
            None => U256::from_str_radix(s, 10).ok(),
        },
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
    .ok_or_else(|| PayError::Decode(format!("not a quantity: {v}")))
}

fn quantity_u64(v: &Value) -> Result<u64, PayError> {
    let q = quantity(v)?;
    u64::try_from(q).map_err(|_| PayError::Decode(format!("quantity too large: {v}")))
}

fn hex_q(n: impl Into<U256>) -> String {
    format!("{:#x}", n.into())
}

fn decode_err(e: alloy_sol_types::Error) -> PayError {
    PayError::Decode(e.to_string())
}

/// A log of a mined transaction (address, topics, data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcLog {
    /// Emitting contract.
    pub address: Address,
    /// Indexed topics (topic 0 = event signature hash).
    pub topics: Vec<B256>,
    /// Non-indexed data (ABI-encoded).
    pub data: Bytes,
}

/// What a mined, successful transaction sent by [`JsonRpcEvm::transact`] left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcTxResult {
    /// Transaction hash.
    pub hash: B256,
    /// Gas used, effective gas price, fee in wei, success, block number.
    pub receipt: Receipt,
    /// Event logs.
    pub logs: Vec<RpcLog>,
    /// Created contract, for a deployment.
    pub contract_address: Option<Address>,
}

/// Settlement on any EVM chain over Ethereum JSON-RPC 2.0 / HTTP (payments.md §4.5): the
/// `UniChannels` contract at a known address ("hub"), transactions built as EIP-1559 (or legacy,
/// EIP-155, when the latest block has no `baseFeePerGas`) and signed locally with the payer's
/// [`AccountKey`]; every state-changing call waits for its receipt (polling
/// `eth_getTransactionReceipt`, up to [`RECEIPT_TIMEOUT_MS`]).
///
/// Return values come from the contract's events (`Opened`, `Claimed`, `Closed`, `Refunded`);
/// a reverted transaction (mined, fee paid) is [`PayError::Reverted`] with the custom error
/// decoded from the node's error data or, failing that, from replaying the call with
/// `eth_call` at the previous block. A transaction the node refuses outright (bad nonce, funds
/// below `gas × price + value`) is [`PayError::Evm`]; transport and protocol failures are
/// [`PayError::Rpc`].
///
/// Every call transaction has gas limit [`CALL_GAS_LIMIT`] (as on [`crate::EmbeddedEvm`]:
/// no `eth_estimateGas`, so a call that will revert is still sent and reverts on chain).
/// Transactions from one `JsonRpcEvm` are sent one at a time (nonce from
/// `eth_getTransactionCount(addr, "pending")`), so share one instance per process.
///
/// The futures need a Tokio runtime (I/O and timers). [`DevChain`] (dev chains only:
/// `ferry chain serve`, Hardhat, anvil) blocks the calling thread on a private runtime.
#[derive(Debug)]
pub struct JsonRpcEvm {
    url: HttpUrl,
    chain_id: u64,
    hub: Address,
    next_id: AtomicU64,
    send_lock: tokio::sync::Mutex<()>,
    last: Mutex<Option<Receipt>>,
    legacy: bool,
}

impl JsonRpcEvm {
    /// Connects to the node at `url` (`http://HOST:PORT[/PATH]`).
    ///
    /// - `chain_id`: the expected chain id; `None` takes the node's `eth_chainId`; a mismatch is
    ///   [`PayError::Rpc`].
    /// - `hub`: the deployed `UniChannels` address (checked to hold code); if `None` and
    ///   `deployer` is given, the committed initcode is deployed from `deployer` (which pays the
    ///   gas); if both are `None` the node is asked with `ferry_hub` (`ferry chain serve`).
    pub async fn connect(
        url: &str,
        chain_id: Option<u64>,
        hub: Option<Address>,
        deployer: Option<&AccountKey>,
    ) -> Result<Self, PayError> {
        let url = HttpUrl::parse(url)?;
        let mut me = Self {
            url,
            chain_id: 0,
            hub: Address::ZERO,
            next_id: AtomicU64::new(1),
            send_lock: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            legacy: false,
        };
        let node_chain = quantity_u64(&me.request("eth_chainId", json!([])).await?)?;
        if let Some(want) = chain_id
            && want != node_chain
        {
            return Err(PayError::Rpc(format!(
                "{}: chain id is {node_chain}, expected {want}",
                me.url.text
            )));
        }
        me.chain_id = node_chain;
        me.hub = match (hub, deployer) {
            (Some(hub), _) => {
                if me.code(hub).await?.is_empty() {
                    return Err(PayError::Rpc(format!(
                        "{}: no contract at hub {hub}",
                        me.url.text
                    )));
                }
                hub
            }
            (None, Some(key)) => me.deploy(key, initcode()?, U256::ZERO).await?,
            (None, None) => {
                let v = me.request("ferry_hub", json!([])).await?;
                serde_json::from_value(v)
                    .map_err(|e| PayError::Decode(format!("ferry_hub: {e}")))?
            }
        };
        Ok(me)
    }

    /// Sends legacy (type 0, EIP-155) transactions priced at `eth_gasPrice` even when the chain
    /// supports EIP-1559 (for nodes or tooling that want them).
    pub fn with_legacy_transactions(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
    }

    /// The endpoint URL.
    pub fn url(&self) -> &str {
        &self.url.text
    }

    /// The chain id (EIP-155).
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// Address of the `UniChannels` contract this backend settles on.
    pub fn hub(&self) -> Address {
        self.hub
    }

    /// Gas accounting of the last transaction this instance got mined (success or revert).
    pub fn last_receipt(&self) -> Option<Receipt> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one JSON-RPC request and returns its `result`. A JSON-RPC error is
    /// [`PayError::Rpc`] carrying the code and message.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, PayError> {
        self.request_raw(method, params)
            .await?
            .map_err(|f| PayError::Rpc(format!("{method}: error {}: {}", f.code, f.message)))
    }

    async fn request_raw(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Result<Value, RpcFailure>, PayError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let body = serde_json::to_vec(&body).map_err(|e| PayError::Decode(e.to_string()))?;
        let resp = http_post(&self.url, body).await?;
        let v: Value = serde_json::from_slice(&resp).map_err(|e| {
            PayError::Rpc(format!(
                "{method}: not JSON-RPC: {e}: {}",
                String::from_utf8_lossy(&resp[..resp.len().min(200)])
            ))
        })?;
        if let Some(err) = v.get("error") {
            return Ok(Err(RpcFailure {
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                data: err.get("data").cloned(),
            }));
        }
        match v.get("result") {
            Some(r) => Ok(Ok(r.clone())),
            None => Err(PayError::Rpc(format!("{method}: response without result"))),
        }
    }

    /// Deployed code at `who` (`eth_getCode`, latest block).
    pub async fn code(&self, who: Address) -> Result<Bytes, PayError> {
        let v = self.request("eth_getCode", json!([who, "latest"])).await?;
        serde_json::from_value(v).map_err(|e| PayError::Decode(format!("eth_getCode: {e}")))
    }

    /// Read-only call of `to` with `data` (`eth_call`, latest block); a revert is
    /// [`PayError::Reverted`].
    pub async fn call(&self, to: Address, data: Bytes) -> Result<Bytes, PayError> {
        self.call_at(json!({"to": to, "data": data}), "latest".into())
            .await
    }

    async fn call_at(&self, call: Value, block: Value) -> Result<Bytes, PayError> {
        match self.request_raw("eth_call", json!([call, block])).await? {
            Ok(v) => {
                serde_json::from_value(v).map_err(|e| PayError::Decode(format!("eth_call: {e}")))
            }
            Err(f) if f.is_revert() => Err(PayError::Reverted(ContractError::from_revert_data(
                &f.revert_data().unwrap_or_default(),
            ))),
            Err(f) => Err(PayError::Rpc(format!(
                "eth_call: error {}: {}",
                f.code, f.message
            ))),
        }
    }

    /// Deploys `initcode` from `from` with `value` wei (gas limit [`RPC_DEPLOY_GAS_LIMIT`]);
    /// returns the contract address.
    pub async fn deploy(
        &self,
        from: &AccountKey,
        initcode: Bytes,
        value: U256,
    ) -> Result<Address, PayError> {
        let r = self
            .transact(from, None, value, initcode, RPC_DEPLOY_GAS_LIMIT)
            .await?;
        r.contract_address
            .ok_or_else(|| PayError::Evm("deployment created no contract".into()))
    }

    /// Builds, signs (with `from`), sends a transaction to `to` (`None` = contract creation)
    /// and waits for its receipt. A reverted transaction is [`PayError::Reverted`] (its fee is
    /// recorded in [`JsonRpcEvm::last_receipt`]).
    pub async fn transact(
        &self,
        from: &AccountKey,
        to: Option<Address>,
        value: U256,
        data: Bytes,
        gas_limit: u64,
    ) -> Result<RpcTxResult, PayError> {
        let _guard = self.send_lock.lock().await;
        let addr = from.address();
        let nonce = quantity_u64(
            &self
                .request("eth_getTransactionCount", json!([addr, "pending"]))
                .await?,
        )?;
        let latest = self
            .request("eth_getBlockByNumber", json!(["latest", false]))
            .await?;
        let kind = match to {
            Some(a) => TxKind::Call(a),
            None => TxKind::Create,
        };
        let base_fee = latest
            .get("baseFeePerGas")
            .filter(|v| !v.is_null() && !self.legacy);
        let envelope: TxEnvelope = match base_fee {
            Some(base) => {
                let base = u128::try_from(quantity(base)?)
                    .map_err(|_| PayError::Decode("base fee too large".into()))?;
                let tip = match self.request("eth_maxPriorityFeePerGas", json!([])).await {
                    Ok(v) => u128::try_from(quantity(&v)?).unwrap_or(0),
                    Err(_) => 0,
                };
                let tx = TxEip1559 {
                    chain_id: self.chain_id,
                    nonce,
                    gas_limit,
                    max_fee_per_gas: base.saturating_mul(2).saturating_add(tip),
                    max_priority_fee_per_gas: tip,
                    to: kind,
                    value,
                    access_list: Default::default(),
                    input: data.clone(),
                };
                let sig = from.sign_tx_hash(tx.signature_hash())?;
                tx.into_signed(sig).into()
            }
            None => {
                let price =
                    u128::try_from(quantity(&self.request("eth_gasPrice", json!([])).await?)?)
                        .map_err(|_| PayError::Decode("gas price too large".into()))?;
                let tx = TxLegacy {
                    chain_id: Some(self.chain_id),
                    nonce,
                    gas_price: price,
                    gas_limit,
                    to: kind,
                    value,
                    input: data.clone(),
                };
                let sig = from.sign_tx_hash(tx.signature_hash())?;
                tx.into_signed(sig).into()
            }
        };
        let raw = Bytes::from(envelope.encoded_2718());
        let own_hash = *envelope.tx_hash();
        let (hash, error) = match self
            .request_raw("eth_sendRawTransaction", json!([raw]))
            .await?
        {
            Ok(v) => (serde_json::from_value::<B256>(v).unwrap_or(own_hash), None),
            // Hardhat mines a reverting transaction and then reports it as an error.
            Err(f) if f.tx_hash().is_some() => (f.tx_hash().unwrap_or(own_hash), Some(f)),
            Err(f) => {
                return Err(PayError::Evm(format!(
                    "transaction refused: {} (code {})",
                    f.message, f.code
                )));
            }
        };
        let receipt = self.wait_receipt(hash).await?;
        let parsed = parse_receipt(&receipt, hash)?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(parsed.receipt);
        if parsed.receipt.success {
            return Ok(parsed);
        }
        let data_bytes = match error.as_ref().and_then(RpcFailure::revert_data) {
            Some(d) => d,
            None => {
                // Replay the call on the state before its block to get the revert data.
                let mut call = json!({"from": addr, "value": hex_q(value), "data": data,
                    "gas": hex_q(U256::from(gas_limit))});
                if let Some(to) = to {
                    call["to"] = json!(to);
                }
                let before = hex_q(U256::from(parsed.receipt.block.saturating_sub(1)));
                match self.call_at(call, Value::String(before)).await {
                    Err(PayError::Reverted(e)) => return Err(PayError::Reverted(e)),
                    _ => Bytes::new(),
                }
            }
        };
        Err(PayError::Reverted(ContractError::from_revert_data(
            &data_bytes,
        )))
    }

    async fn wait_receipt(&self, hash: B256) -> Result<Value, PayError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(RECEIPT_TIMEOUT_MS);
        let mut pause = Duration::from_millis(10);
        loop {
            let v = self
                .request("eth_getTransactionReceipt", json!([hash]))
                .await?;
            if !v.is_null() {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PayError::Rpc(format!(
                    "transaction {hash} not mined within {RECEIPT_TIMEOUT_MS} ms"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn send(
        &self,
        from: &AccountKey,
        value: U256,
        data: Vec<u8>,
    ) -> Result<RpcTxResult, PayError> {
        self.transact(from, Some(self.hub), value, data.into(), CALL_GAS_LIMIT)
            .await
    }

    fn event<E: SolEvent>(&self, r: &RpcTxResult) -> Result<E, PayError> {
        r.logs
            .iter()
            .filter(|l| l.address == self.hub && l.topics.first() == Some(&E::SIGNATURE_HASH))
            .find_map(|l| E::decode_raw_log(l.topics.iter().copied(), &l.data).ok())
            .ok_or_else(|| {
                PayError::Decode(format!("receipt {} has no {} event", r.hash, E::SIGNATURE))
            })
    }

    /// Asks the contract which address signed `v` (`UniChannels.voucherSigner`; zero if
    /// invalid).
    pub async fn contract_voucher_signer(&self, v: &Voucher) -> Result<Address, PayError> {
        let data = IUniChannels::voucherSignerCall {
            id: v.channel,
            cumulative: v.cumulative,
            sig: Bytes::copy_from_slice(&v.sig),
        }
        .abi_encode();
        let out = self.call(self.hub, data.into()).await?;
        IUniChannels::voucherSignerCall::abi_decode_returns(&out).map_err(decode_err)
    }

    /// Dev chains only: adds `amount` wei to `who` with `ferry_fund` (`ferry chain serve`),
    /// else `hardhat_setBalance` / `anvil_setBalance` (read, add, set).
    pub async fn dev_fund(&self, who: Address, amount: U256) -> Result<(), PayError> {
        match self
            .request_raw("ferry_fund", json!([who, hex_q(amount)]))
            .await?
        {
            Ok(_) => return Ok(()),
            Err(f) if f.code != -32601 && !f.message.contains("not supported") => {
                return Err(PayError::Rpc(format!("ferry_fund: {}", f.message)));
            }
            Err(_) => {}
        }
        let bal = self.balance(who).await?.saturating_add(amount);
        let mut last = String::new();
        for method in ["hardhat_setBalance", "anvil_setBalance"] {
            match self.request_raw(method, json!([who, hex_q(bal)])).await? {
                Ok(_) => return Ok(()),
                Err(f) => last = format!("{method}: {}", f.message),
            }
        }
        Err(PayError::Rpc(format!("node cannot fund accounts ({last})")))
    }

    /// Dev chains only: moves the clock forward by `secs` seconds (`evm_increaseTime`) and
    /// mines a block (`evm_mine`), so the latest block's timestamp shows the new time.
    pub async fn dev_increase_time(&self, secs: u64) -> Result<(), PayError> {
        self.request("evm_increaseTime", json!([secs])).await?;
        self.request("evm_mine", json!([])).await?;
        Ok(())
    }

    /// Runs `fut` to completion on a private current-thread runtime in a scoped thread (for the
    /// synchronous [`DevChain`] methods, callable inside or outside a runtime).
    fn run_blocking<T: Send>(&self, fut: impl Future<Output = T> + Send) -> Option<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()
                    .map(|rt| rt.block_on(fut))
            })
            .join()
            .ok()
            .flatten()
        })
    }
}

fn parse_receipt(v: &Value, hash: B256) -> Result<RpcTxResult, PayError> {
    let get = |k: &str| {
        v.get(k)
            .filter(|x| !x.is_null())
            .ok_or_else(|| PayError::Decode(format!("receipt without {k}")))
    };
    let gas_used = quantity_u64(get("gasUsed")?)?;
    let gas_price = match v.get("effectiveGasPrice").filter(|x| !x.is_null()) {
        Some(p) => quantity_u64(p)?,
        None => 0,
    };
    let success = match v.get("status").filter(|x| !x.is_null()) {
        Some(s) => quantity(s)? == U256::from(1),
        None => true,
    };
    let block = quantity_u64(get("blockNumber")?)?;
    let mut logs = Vec::new();
    if let Some(Value::Array(items)) = v.get("logs") {
        for l in items {
            logs.push(RpcLog {
                address: serde_json::from_value(l.get("address").cloned().unwrap_or_default())
                    .map_err(|e| PayError::Decode(format!("log address: {e}")))?,
                topics: serde_json::from_value(l.get("topics").cloned().unwrap_or_default())
                    .map_err(|e| PayError::Decode(format!("log topics: {e}")))?,
                data: serde_json::from_value(l.get("data").cloned().unwrap_or_default())
                    .map_err(|e| PayError::Decode(format!("log data: {e}")))?,
            });
        }
    }
    let contract_address = v
        .get("contractAddress")
        .and_then(|a| serde_json::from_value(a.clone()).ok());
    Ok(RpcTxResult {
        hash,
        receipt: Receipt {
            gas_used,
            gas_price,
            fee: U256::from(gas_used) * U256::from(gas_price),
            success,
            block,
        },
        logs,
        contract_address,
    })
}

impl PaymentBackend for JsonRpcEvm {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::JsonRpc,
            chain_id: self.chain_id,
            hub: self.hub,
        }
    }

    async fn open(
        &self,
        payer: &AccountKey,
        receiver: Address,
        deposit: U256,
        expiry: u64,
    ) -> Result<B256, PayError> {
        let data = IUniChannels::openCall { receiver, expiry }.abi_encode();
        let r = self.send(payer, deposit, data).await?;
        Ok(self.event::<IUniChannels::Opened>(&r)?.id)
    }

    async fn top_up(
        &self,
        payer: &AccountKey,
        ch: B256,
        add: U256,
        new_expiry: u64,
    ) -> Result<(), PayError> {
        let data = IUniChannels::topUpCall {
            id: ch,
            newExpiry: new_expiry,
        }
        .abi_encode();
        self.send(payer, add, data).await?;
        Ok(())
    }

    async fn channel(&self, ch: B256) -> Result<Option<ChannelState>, PayError> {
        let data = IUniChannels::channelsCall { id: ch }.abi_encode();
        let out = self.call(self.hub, data.into()).await?;
        let r = IUniChannels::channelsCall::abi_decode_returns(&out).map_err(decode_err)?;
        if r.sender == Address::ZERO {
            return Ok(None);
        }
        Ok(Some(ChannelState {
            sender: r.sender,
            receiver: r.receiver,
            deposit: r.deposit,
            claimed: r.claimed,
            expiry: r.expiry,
            closed: r.closed,
        }))
    }

    async fn claim(&self, receiver: &AccountKey, v: &Voucher) -> Result<U256, PayError> {
        let data = IUniChannels::claimCall {
            id: v.channel,
            cumulative: v.cumulative,
            sig: Bytes::copy_from_slice(&v.sig),
        }
        .abi_encode();
        let r = self.send(receiver, U256::ZERO, data).await?;
        Ok(self.event::<IUniChannels::Claimed>(&r)?.paid)
    }

    async fn close(
        &self,
        receiver: &AccountKey,
        ch: B256,
        v: Option<&Voucher>,
    ) -> Result<(U256, U256), PayError> {
        let (cumulative, sig) = match v {
            Some(v) if v.channel != ch => {
                return Err(PayError::Decode("voucher is for another channel".into()));
            }
            Some(v) => (v.cumulative, Bytes::copy_from_slice(&v.sig)),
            None => (U256::ZERO, Bytes::new()),
        };
        let data = IUniChannels::closeCall {
            id: ch,
            cumulative,
            sig,
        }
        .abi_encode();
        let r = self.send(receiver, U256::ZERO, data).await?;
        let e = self.event::<IUniChannels::Closed>(&r)?;
        Ok((e.paid, e.refunded))
    }

    async fn refund(&self, payer: &AccountKey, ch: B256) -> Result<U256, PayError> {
        let data = IUniChannels::refundCall { id: ch }.abi_encode();
        let r = self.send(payer, U256::ZERO, data).await?;
        Ok(self.event::<IUniChannels::Refunded>(&r)?.refunded)
    }

    async fn balance(&self, who: Address) -> Result<U256, PayError> {
        quantity(
            &self
                .request("eth_getBalance", json!([who, "latest"]))
                .await?,
        )
    }

    /// The latest block's timestamp, seconds (the next transaction executes at or after it).
    async fn now(&self) -> Result<u64, PayError> {
        let b = self
            .request("eth_getBlockByNumber", json!(["latest", false]))
            .await?;
        quantity_u64(
            b.get("timestamp")
                .ok_or_else(|| PayError::Decode("block without timestamp".into()))?,
        )
    }
}

impl DevChain for JsonRpcEvm {
    /// [`JsonRpcEvm::dev_fund`], blocking; a failure is silently ignored (no error channel).
    fn fund(&self, who: Address, amount: U256) {
        let _ = self.run_blocking(self.dev_fund(who, amount));
    }

    /// [`JsonRpcEvm::dev_increase_time`], blocking; a failure is silently ignored.
    fn advance_time(&self, secs: u64) {
        let _ = self.run_blocking(self.dev_increase_time(secs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8545").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8545, "/")
        );
        let u = HttpUrl::parse("http://[::1]:9/rpc").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9, "/rpc")
        );
        assert_eq!(u.authority(), "[::1]:9");
        assert_eq!(HttpUrl::parse("http://node").expect("url").port, 80);
        for bad in [
            "https://x",
            "ftp://x",
            "http://:1",
            "http://h:x",
            "http://[::1",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(&json!("0x10")).expect("q"), U256::from(16));
        assert_eq!(quantity(&json!("0x")).expect("q"), U256::ZERO);
        assert_eq!(quantity(&json!("12")).expect("q"), U256::from(12));
        assert_eq!(quantity(&json!(7)).expect("q"), U256::from(7));
        assert!(quantity(&json!("0xzz")).is_err());
        assert!(quantity(&json!(null)).is_err());
        assert!(quantity_u64(&json!("0x10000000000000000")).is_err());
    }
}
