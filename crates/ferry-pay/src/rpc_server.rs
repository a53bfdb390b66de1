//! `ferry chain serve`: an [`EmbeddedEvm`] exposed as an Ethereum JSON-RPC 2.0 endpoint over
//! HTTP, so separate processes (nodes of a devnet, a wallet, ethers/viem/alloy scripts) settle on
//! one shared ledger (payments.md §4.5).
//!
//! Every accepted transaction is mined at once into its own block (block number + 1, timestamp
//! = the chain clock, which only `evm_increaseTime` moves). Fees: every transaction pays
//! `gas_used × base fee` ([`crate::EmbeddedConfig::gas_price`], reported as `eth_gasPrice` and
//! `baseFeePerGas`; `eth_maxPriorityFeePerGas` is 0 and tips are not charged).
//!
//! Methods: `eth_chainId`, `net_version`, `web3_clientVersion`, `eth_blockNumber`,
//! `eth_getBalance`, `eth_getTransactionCount`, `eth_getCode`, `eth_gasPrice`,
//! `eth_maxPriorityFeePerGas`, `eth_feeHistory`, `eth_estimateGas`, `eth_call`,
//! `eth_sendRawTransaction` (EIP-2718 legacy with EIP-155, EIP-2930 or EIP-1559, signature
//! recovered with alloy-consensus), `eth_getTransactionReceipt`, `eth_getTransactionByHash`,
//! `eth_getBlockByNumber`, `eth_accounts` (empty), `eth_syncing` (false); dev methods
//! `evm_increaseTime [secs]`, `evm_mine`, `ferry_fund [address, wei]` (adds wei; returns the
//! new balance) and `ferry_hub` (the `UniChannels` address, deployed at genesis at the
//! deterministic address [`EmbeddedEvm::hub`]). Batches (up to [`MAX_BATCH`]) are accepted.
//!
//! Errors are JSON-RPC errors, never a panic: -32700 parse error, -32600 invalid request,
//! -32601 unknown method, -32602 bad params, -32000 transaction refused (nonce, funds, gas,
//! chain id), 3 `execution reverted` with the revert data as `data` (`eth_call`,
//! `eth_estimateGas`). A reverted transaction is still mined (fee and nonce stand) and has
//! receipt `status` 0x0. Request bodies are capped at [`MAX_BODY_BYTES`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{Transaction, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, B256, Bloom, Bytes, TxKind, U256, keccak256};
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use serde_json::{Value, json};

use crate::{DevChain, EmbeddedEvm, PayError, TxOutcome, TxRequest};

/// Largest accepted request body, bytes (a larger one gets HTTP 413).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Most requests in one batch.
pub const MAX_BATCH: usize = 100;
/// Transactions remembered for `eth_getTransactionReceipt`/`ByHash`; the oldest are forgotten.
pub const MAX_REMEMBERED_TXS: usize = 10_000;
/// Default listen address of `ferry chain serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8545";
/// Block gas limit reported and used for `eth_call`/`eth_estimateGas`.
const BLOCK_GAS_LIMIT: u64 = 30_000_000;

/// A mined transaction as the server remembers it.
#[derive(Clone, Debug)]
struct TxRecord {
    hash: B256,
    from: Address,
    to: Option<Address>,
    nonce: u64,
    value: U256,
    input: Bytes,
    gas: u64,
    ty: u8,
    max_fee: u128,
    max_priority: Option<u128>,
    outcome: TxOutcome,
}

#[derive(Debug, Default)]
struct TxStore {
    by_hash: HashMap<B256, TxRecord>,
    order: VecDeque<B256>,
    by_block: HashMap<u64, B256>,
}

impl TxStore {
    fn insert(&mut self, rec: TxRecord) {
        if self.order.len() >= MAX_REMEMBERED_TXS
            && let Some(old) = self.order.pop_front()
            && let Some(r) = self.by_hash.remove(&old)
        {
            self.by_block.remove(&r.outcome.receipt.block);
        }
        self.order.push_back(rec.hash);
        self.by_block.insert(rec.outcome.receipt.block, rec.hash);
        self.by_hash.insert(rec.hash, rec);
    }
}

#[derive(Debug)]
struct ServerState {
    evm: EmbeddedEvm,
    txs: Mutex<TxStore>,
}

impl ServerState {
    fn txs(&self) -> MutexGuard<'_, TxStore> {
        self.txs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A JSON-RPC error: code, message, optional data.
#[derive(Debug)]
struct RpcErr {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcErr {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
    fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }
}

type RpcResult = Result<Value, RpcErr>;

/// The JSON-RPC server of `ferry chain serve`: bound, not yet serving.
#[derive(Debug)]
pub struct ChainServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<ServerState>,
}

impl ChainServer {
    /// Binds `listen` (port 0 picks a free port) for the chain `evm`.
    pub async fn bind(listen: SocketAddr, evm: EmbeddedEvm) -> Result<Self, PayError> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state: Arc::new(ServerState {
                evm,
                txs: Mutex::new(TxStore::default()),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The chain id (EIP-155).
    pub fn chain_id(&self) -> u64 {
        self.state.evm.config().chain_id
    }

    /// Address of the `UniChannels` contract (also returned by `ferry_hub`).
    pub fn hub(&self) -> Address {
        self.state.evm.hub()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), PayError> {
        let app = axum::Router::new()
            .route("/", post(handle))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(PayError::Io)
    }

    /// Spawns [`ChainServer::serve`] (no shutdown) on the current Tokio runtime and returns the
    /// URL; for tests and embedding.
    pub fn spawn(self) -> String {
        let url = self.url();
        tokio::spawn(self.serve(std::future::pending()));
        url
    }
}

async fn handle(State(st): State<Arc<ServerState>>, body: axum::body::Bytes) -> axum::Json<Value> {
    axum::Json(handle_body(&st, &body))
}

fn handle_body(st: &ServerState, body: &[u8]) -> Value {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(
                Value::Null,
                RpcErr::new(-32700, format!("parse error: {e}")),
            );
        }
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            error_response(Value::Null, RpcErr::new(-32600, "empty batch"))
        }
        Value::Array(items) if items.len() > MAX_BATCH => error_response(
            Value::Null,
            RpcErr::new(-32600, format!("batch larger than {MAX_BATCH}")),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|i| handle_one(st, i)).collect()),
        other => handle_one(st, &other),
    }
}

fn error_response(id: Value, e: RpcErr) -> Value {
    let mut err = json!({"code": e.code, "message": e.message});
    if let Some(d) = e.data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

fn handle_one(st: &ServerState, req: &Value) -> Value {
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = req.get("method").and_then(Value::as_str) else {
        return error_response(id, RpcErr::new(-32600, "invalid request: no method"));
    };
    let params = match req.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return error_response(id, RpcErr::params("params must be an array")),
    };
    match dispatch(st, method, &params) {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_response(id, e),
    }
}

fn hexq(n: impl Into<U256>) -> Value {
    Value::String(format!("{:#x}", n.into()))
}

fn parse_quantity(v: &Value) -> Result<U256, RpcErr> {
    match v {
        Value::String(s) => match s.strip_prefix("0x") {
            Some("") => Some(U256::ZERO),
            Some(hex) => U256::from_str_radix(hex, 16).ok(),
            None => U256::from_str_radix(s, 10).ok(),
        },
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
    .ok_or_else(|| RpcErr::params(format!("not a quantity: {v}")))
}

fn u64_of(v: &Value) -> Result<u64, RpcErr> {
    u64::try_from(parse_quantity(v)?).map_err(|_| RpcErr::params(format!("too large: {v}")))
}

fn param(params: &[Value], i: usize) -> Result<&Value, RpcErr> {
    params
        .get(i)
        .ok_or_else(|| RpcErr::params(format!("missing parameter {i}")))
}

fn typed<T: serde::de::DeserializeOwned>(params: &[Value], i: usize) -> Result<T, RpcErr> {
    serde_json::from_value(param(params, i)?.clone())
        .map_err(|e| RpcErr::params(format!("parameter {i}: {e}")))
}

fn block_hash(chain_id: u64, number: u64) -> B256 {
    let mut buf = b"ferry chain block".to_vec();
    buf.extend_from_slice(&chain_id.to_be_bytes());
    buf.extend_from_slice(&number.to_be_bytes());
    keccak256(buf)
}

fn dispatch(st: &ServerState, method: &str, p: &[Value]) -> RpcResult {
    let evm = &st.evm;
    let cfg = evm.config();
    match method {
        "eth_chainId" => Ok(hexq(U256::from(cfg.chain_id))),
        "net_version" => Ok(Value::String(cfg.chain_id.to_string())),
        "web3_clientVersion" => Ok(json!(concat!("ferry-chain/", env!("CARGO_PKG_VERSION")))),
        "eth_syncing" => Ok(Value::Bool(false)),
        "eth_accounts" => Ok(json!([])),
        "eth_blockNumber" => Ok(hexq(U256::from(evm.block_number()))),
        "eth_getBalance" => Ok(hexq(evm.balance_of(typed(p, 0)?))),
        "eth_getTransactionCount" => Ok(hexq(U256::from(evm.nonce(typed(p, 0)?)))),
        "eth_getCode" => Ok(json!(evm.code(typed(p, 0)?))),
        "eth_gasPrice" => Ok(hexq(U256::from(cfg.gas_price))),
        "eth_maxPriorityFeePerGas" => Ok(hexq(U256::ZERO)),
        "eth_feeHistory" => fee_history(st, p),
        "eth_call" => {
            let out = simulate(st, p)?;
            Ok(json!(out.output))
        }
        "eth_estimateGas" => {
            let out = simulate(st, p)?;
            // The gas used after refunds understates what the call needs; 1.5× + 10 000 covers
            // the refund cap (1/5) and the 63/64 rule for the contract's calls.
            let gas = out.receipt.gas_used.saturating_mul(3) / 2 + 10_000;
            Ok(hexq(U256::from(gas.min(BLOCK_GAS_LIMIT))))
        }
        "eth_sendRawTransaction" => send_raw(st, p),
        "eth_getTransactionReceipt" => {
            let h: B256 = typed(p, 0)?;
            Ok(st
                .txs()
                .by_hash
                .get(&h)
                .map_or(Value::Null, |r| receipt_json(cfg.chain_id, r)))
        }
        "eth_getTransactionByHash" => {
            let h: B256 = typed(p, 0)?;
            Ok(st
                .txs()
                .by_hash
                .get(&h)
                .map_or(Value::Null, |r| tx_json(cfg.chain_id, r)))
        }
        "eth_getBlockByNumber" => {
            let latest = evm.block_number();
            let number = match param(p, 0)? {
                Value::String(s)
                    if matches!(s.as_str(), "latest" | "pending" | "safe" | "finalized") =>
                {
                    latest
                }
                Value::String(s) if s == "earliest" => 0,
                v => u64_of(v)?,
            };
            if number > latest {
                return Ok(Value::Null);
            }
            let full = p.get(1).and_then(Value::as_bool).unwrap_or(false);
            Ok(block_json(st, number, full))
        }
        "eth_getBlockByHash" => {
            let h: B256 = typed(p, 0)?;
            let latest = evm.block_number();
            let full = p.get(1).and_then(Value::as_bool).unwrap_or(false);
            // Recent blocks only (a linear scan over the remembered transactions' blocks).
            let found = (latest.saturating_sub(MAX_REMEMBERED_TXS as u64)..=latest)
                .rev()
                .find(|n| block_hash(cfg.chain_id, *n) == h);
            Ok(found.map_or(Value::Null, |n| block_json(st, n, full)))
        }
        "evm_increaseTime" => {
            let secs = u64_of(param(p, 0)?)?;
            evm.advance_time(secs);
            Ok(json!(secs))
        }
        "evm_mine" => Ok(json!("0x0")),
        "ferry_fund" => {
            let who: Address = typed(p, 0)?;
            let amount = parse_quantity(param(p, 1)?)?;
            evm.fund(who, amount);
            Ok(hexq(evm.balance_of(who)))
        }
        "ferry_hub" => Ok(json!(evm.hub())),
        _ => Err(RpcErr::new(
            -32601,
            format!("method {method} not supported"),
        )),
    }
}

/// `eth_call` / `eth_estimateGas`: runs the call object without committing; a revert is error 3
/// with the revert data.
fn simulate(st: &ServerState, p: &[Value]) -> Result<TxOutcome, RpcErr> {
    let call = param(p, 0)?;
    if !call.is_object() {
        return Err(RpcErr::params("call object expected"));
    }
    let field = |k: &str| call.get(k).filter(|v| !v.is_null());
    let addr = |k: &str| -> Result<Option<Address>, RpcErr> {
        field(k)
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .map_err(|e| RpcErr::params(format!("{k}: {e}")))
    };
    let data: Bytes = match field("input").or_else(|| field("data")) {
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| RpcErr::params(format!("data: {e}")))?
        }
        None => Bytes::new(),
    };
    let value = field("value")
        .map(parse_quantity)
        .transpose()?
        .unwrap_or_default();
    let gas_limit = field("gas")
        .map(u64_of)
        .transpose()?
        .unwrap_or(BLOCK_GAS_LIMIT);
    let req = TxRequest {
        caller: addr("from")?.unwrap_or_default(),
        kind: addr("to")?.map_or(TxKind::Create, TxKind::Call),
        value,
        data,
        gas_limit,
        nonce: None,
    };
    let out = st
        .evm
        .simulate(&req)
        .map_err(|e| RpcErr::new(-32000, e.to_string()))?;
    if let Some(halt) = &out.halt {
        return Err(RpcErr::new(-32000, format!("execution halted: {halt}")));
    }
    if !out.receipt.success {
        return Err(RpcErr {
            code: 3,
            message: "execution reverted".into(),
            data: Some(json!(out.output)),
        });
    }
    Ok(out)
}

fn send_raw(st: &ServerState, p: &[Value]) -> RpcResult {
    let raw: Bytes = typed(p, 0)?;
    let env = TxEnvelope::decode_2718_exact(&raw)
        .map_err(|e| RpcErr::new(-32602, format!("bad transaction: {e}")))?;
    let ty = match &env {
        TxEnvelope::Legacy(_) => 0u8,
        TxEnvelope::Eip2930(_) => 1,
        TxEnvelope::Eip1559(_) => 2,
        _ => return Err(RpcErr::new(-32000, "transaction type not supported")),
    };
    let cfg = st.evm.config();
    if env.chain_id() != Some(cfg.chain_id) {
        return Err(RpcErr::new(
            -32000,
            format!(
                "chain id {:?}, expected {} (EIP-155 required)",
                env.chain_id(),
                cfg.chain_id
            ),
        ));
    }
    let from = env
        .recover_signer()
        .map_err(|e| RpcErr::new(-32000, format!("bad signature: {e}")))?;
    if env.max_fee_per_gas() < u128::from(cfg.gas_price) {
        return Err(RpcErr::new(
            -32000,
            format!("max fee per gas below base fee {}", cfg.gas_price),
        ));
    }
    let hash = *env.tx_hash();
    if st.txs().by_hash.contains_key(&hash) {
        return Err(RpcErr::new(-32000, "already known"));
    }
    let req = TxRequest {
        caller: from,
        kind: env.kind(),
        value: env.value(),
        data: env.input().clone(),
        gas_limit: env.gas_limit(),
        nonce: Some(env.nonce()),
    };
    let outcome = st
        .evm
        .execute(&req)
        .map_err(|e| RpcErr::new(-32000, e.to_string()))?;
    st.txs().insert(TxRecord {
        hash,
        from,
        to: env.to(),
        nonce: env.nonce(),
        value: env.value(),
        input: env.input().clone(),
        gas: env.gas_limit(),
        ty,
        max_fee: env.max_fee_per_gas(),
        max_priority: env.max_priority_fee_per_gas(),
        outcome,
    });
    Ok(json!(hash))
}

fn logs_json(chain_id: u64, r: &TxRecord) -> Value {
    let block = r.outcome.receipt.block;
    Value::Array(
        r.outcome
            .logs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                json!({
                    "address": l.address,
                    "topics": l.data.topics(),
                    "data": l.data.data,
                    "blockNumber": hexq(U256::from(block)),
                    "blockHash": block_hash(chain_id, block),
                    "transactionHash": r.hash,
                    "transactionIndex": "0x0",
                    "logIndex": hexq(U256::from(i)),
                    "removed": false,
                })
            })
            .collect(),
    )
}

fn receipt_json(chain_id: u64, r: &TxRecord) -> Value {
    let o = &r.outcome;
    let mut bloom = Bloom::ZERO;
    bloom.accrue_logs(&o.logs);
    json!({
        "transactionHash": r.hash,
        "transactionIndex": "0x0",
        "blockHash": block_hash(chain_id, o.receipt.block),
        "blockNumber": hexq(U256::from(o.receipt.block)),
        "from": r.from,
        "to": r.to,
        "contractAddress": o.created,
        "cumulativeGasUsed": hexq(U256::from(o.receipt.gas_used)),
        "gasUsed": hexq(U256::from(o.receipt.gas_used)),
        "effectiveGasPrice": hexq(U256::from(o.receipt.gas_price)),
        "status": if o.receipt.success { "0x1" } else { "0x0" },
        "type": hexq(U256::from(r.ty)),
        "logs": logs_json(chain_id, r),
        "logsBloom": bloom,
    })
}

fn tx_json(chain_id: u64, r: &TxRecord) -> Value {
    let o = &r.outcome;
    let mut v = json!({
        "hash": r.hash,
        "from": r.from,
        "to": r.to,
        "nonce": hexq(U256::from(r.nonce)),
        "value": hexq(r.value),
        "input": r.input,
        "gas": hexq(U256::from(r.gas)),
        "gasPrice": hexq(U256::from(o.receipt.gas_price)),
        "type": hexq(U256::from(r.ty)),
        "chainId": hexq(U256::from(chain_id)),
        "blockHash": block_hash(chain_id, o.receipt.block),
        "blockNumber": hexq(U256::from(o.receipt.block)),
        "transactionIndex": "0x0",
    });
    if r.ty == 2 {
        v["maxFeePerGas"] = hexq(U256::from(r.max_fee));
        v["maxPriorityFeePerGas"] = hexq(U256::from(r.max_priority.unwrap_or(0)));
    }
    v
}

fn block_json(st: &ServerState, number: u64, full: bool) -> Value {
    let cfg = st.evm.config();
    let txs = st.txs();
    let tx = txs.by_block.get(&number).and_then(|h| txs.by_hash.get(h));
    let (timestamp, gas_used) = match tx {
        Some(r) => (r.outcome.timestamp, r.outcome.receipt.gas_used),
        None => (st.evm.time(), 0),
    };
    let transactions: Vec<Value> = tx
        .map(|r| {
            if full {
                tx_json(cfg.chain_id, r)
            } else {
                json!(r.hash)
            }
        })
        .into_iter()
        .collect();
    let mut bloom = Bloom::ZERO;
    if let Some(r) = tx {
        bloom.accrue_logs(&r.outcome.logs);
    }
    json!({
        "number": hexq(U256::from(number)),
        "hash": block_hash(cfg.chain_id, number),
        "parentHash": if number == 0 { B256::ZERO } else { block_hash(cfg.chain_id, number - 1) },
        "timestamp": hexq(U256::from(timestamp)),
        "baseFeePerGas": hexq(U256::from(cfg.gas_price)),
        "gasLimit": hexq(U256::from(BLOCK_GAS_LIMIT)),
        "gasUsed": hexq(U256::from(gas_used)),
        "miner": Address::ZERO,
        "difficulty": "0x0",
        "totalDifficulty": "0x0",
        "extraData": "0x",
        "nonce": "0x0000000000000000",
        "mixHash": B256::ZERO,
        "sha3Uncles": B256::ZERO,
        "stateRoot": B256::ZERO,
        "transactionsRoot": B256::ZERO,
        "receiptsRoot": B256::ZERO,
        "logsBloom": bloom,
        "size": "0x0",
        "uncles": [],
        "transactions": transactions,
    })
}

fn fee_history(st: &ServerState, p: &[Value]) -> RpcResult {
    let count = u64_of(param(p, 0)?)?.clamp(1, 1024);
    let latest = st.evm.block_number();
    let newest = match p.get(1) {
        Some(Value::String(s)) if !s.starts_with("0x") => latest,
        Some(v) => u64_of(v)?.min(latest),
        None => latest,
    };
    let count = count.min(newest + 1);
    let oldest = newest + 1 - count;
    let base = hexq(U256::from(st.evm.config().gas_price));
    let pct = match p.get(2) {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    let mut out = json!({
        "oldestBlock": hexq(U256::from(oldest)),
        "baseFeePerGas": vec![base; count as usize + 1],
        "gasUsedRatio": vec![0.0; count as usize],
    });
    if pct > 0 {
        out["reward"] = json!(vec![vec!["0x0"; pct.min(100)]; count as usize]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedConfig;

    fn state() -> ServerState {
        ServerState {
            evm: EmbeddedEvm::new(EmbeddedConfig::default()).expect("chain"),
            txs: Mutex::new(TxStore::default()),
        }
    }

    fn code_of(v: &Value) -> Option<i64> {
        v.get("error")?.get("code")?.as_i64()
    }

    #[test]
    fn bad_input_is_a_json_rpc_error() {
        let st = state();
        assert_eq!(code_of(&handle_body(&st, b"{not json")), Some(-32700));
        assert_eq!(code_of(&handle_body(&st, b"[]")), Some(-32600));
        assert_eq!(code_of(&handle_body(&st, br#"{"id":1}"#)), Some(-32600));
        assert_eq!(
            code_of(&handle_body(
                &st,
                br#"{"id":1,"method":"nope","params":[]}"#
            )),
            Some(-32601)
        );
        for bad in [
            r#"{"id":1,"method":"eth_getBalance","params":[]}"#,
            r#"{"id":1,"method":"eth_getBalance","params":["0x12"]}"#,
            r#"{"id":1,"method":"eth_getBalance","params":{"a":1}}"#,
            r#"{"id":1,"method":"eth_sendRawTransaction","params":["0x02ff"]}"#,
            r#"{"id":1,"method":"eth_sendRawTransaction","params":["zz"]}"#,
            r#"{"id":1,"method":"eth_call","params":[5]}"#,
            r#"{"id":1,"method":"eth_getBlockByNumber","params":["0xzz"]}"#,
            r#"{"id":1,"method":"ferry_fund","params":["0x0000000000000000000000000000000000000001", -1]}"#,
            r#"{"id":1,"method":"eth_feeHistory","params":["0x99999999999999999999"]}"#,
        ] {
            let r = handle_body(&st, bad.as_bytes());
            assert!(r.get("error").is_some(), "{bad}: {r}");
        }
        let batch = handle_body(
            &st,
            br#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"ferry_hub","params":[]}]"#,
        );
        assert_eq!(
            batch[0]["result"],
            json!(format!("{:#x}", st.evm.config().chain_id))
        );
        assert_eq!(batch[1]["result"], json!(st.evm.hub()));
    }

    #[test]
    fn call_revert_carries_data() {
        let st = state();
        // channels(id) of an unknown id succeeds; claim of an unknown id reverts.
        use crate::contract::IUniChannels;
        use alloy_sol_types::SolCall;
        let data = IUniChannels::claimCall {
            id: B256::repeat_byte(1),
            cumulative: U256::from(1),
            sig: Bytes::new(),
        }
        .abi_encode();
        let req = json!({"jsonrpc":"2.0","id":7,"method":"eth_call",
            "params":[{"to": st.evm.hub(), "data": Bytes::from(data)}, "latest"]});
        let r = handle_body(&st, req.to_string().as_bytes());
        assert_eq!(r["error"]["code"], json!(3), "{r}");
        let d: Bytes = serde_json::from_value(r["error"]["data"].clone()).expect("data");
        assert_eq!(
            crate::ContractError::from_revert_data(&d),
            crate::ContractError::UnknownChannel
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "0x[0-9a-fA-F]{0,80}".prop_map(Value::String),
            "[a-z0-9]{0,12}".prop_map(Value::String),
            Just(json!("latest")),
            Just(json!("0x4c864564ccce7f1e87289f46956c0affac9dccf5")),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("to".to_string()),
                            Just("from".to_string()),
                            Just("data".to_string()),
                            Just("value".to_string()),
                            Just("gas".to_string()),
                        ],
                        inner
                    ),
                    0..4
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Any method with any parameters gets a JSON-RPC answer (result or error), never a
        /// panic; arbitrary bytes too.
        #[test]
        fn never_panics(
            method in proptest::sample::select(vec![
                "eth_chainId", "eth_getBalance", "eth_getTransactionCount", "eth_getCode",
                "eth_call", "eth_estimateGas", "eth_sendRawTransaction",
                "eth_getTransactionReceipt", "eth_getTransactionByHash", "eth_getBlockByNumber",
                "eth_getBlockByHash", "eth_feeHistory", "evm_increaseTime", "evm_mine",
                "ferry_fund", "ferry_hub", "nope",
            ]),
            params in proptest::collection::vec(json_value(), 0..4),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let st = state();
            let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let r = handle_body(&st, req.to_string().as_bytes());
            proptest::prop_assert!(r.get("result").is_some() || r.get("error").is_some());
            let r = handle_body(&st, &junk);
            proptest::prop_assert!(r.get("result").is_some() || r.get("error").is_some() || r.is_array());
        }
    }
}
