//! `EmbeddedEvm`: the channel contract's real bytecode in an in-process revm (payments.md §4.5).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy_sol_types::SolCall;
use revm::context::result::{ExecutionResult, Output};
use revm::context::{BlockEnv, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::primitives::hardfork::SpecId;
use revm::state::{AccountInfo, Bytecode};
use revm::{Context, DatabaseCommit, DatabaseRef, ExecuteEvm, MainBuilder, MainContext};
use serde::{Deserialize, Serialize};

use crate::contract::{ContractError, IUniChannels, initcode};
use crate::{
    AccountKey, BackendInfo, BackendKind, ChannelState, DevChain, PayError, PaymentBackend, Voucher,
};

/// Default chain id of the embedded chain (`0x66657272`, "ferr").
pub const DEFAULT_CHAIN_ID: u64 = 0x6665_7272;
/// Default gas price: 1 gwei (10^9 wei per gas).
pub const DEFAULT_GAS_PRICE: u64 = 1_000_000_000;
/// Default genesis time: 2026-01-01T00:00:00Z, in seconds since the Unix epoch.
pub const DEFAULT_START_TIME: u64 = 1_767_225_600;
/// Gas limit of every call transaction (unused gas is not charged).
pub const CALL_GAS_LIMIT: u64 = 1_000_000;
/// Gas limit of the contract deployment.
const DEPLOY_GAS_LIMIT: u64 = 5_000_000;
/// Block gas limit.
const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// Snapshot format tag.
const SNAPSHOT_FORMAT: &str = "ferry-embedded-evm v1";

/// Parameters of an embedded chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddedConfig {
    /// EIP-155 chain id seen by the contract as `block.chainid` (bound into every voucher).
    pub chain_id: u64,
    /// Gas price in wei per gas, charged on every transaction (also the block base fee, so the
    /// whole fee is burnt and no coinbase earns it).
    pub gas_price: u64,
    /// Chain time at genesis, seconds since the Unix epoch.
    pub start_time: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            chain_id: DEFAULT_CHAIN_ID,
            gas_price: DEFAULT_GAS_PRICE,
            start_time: DEFAULT_START_TIME,
        }
    }
}

/// Gas accounting of one executed transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Gas used (after refunds), as a real chain's receipt reports it.
    pub gas_used: u64,
    /// Effective gas price in wei per gas.
    pub gas_price: u64,
    /// Fee the sender paid: `gas_used × gas_price` wei.
    pub fee: U256,
    /// Whether the call succeeded (a reverted call still pays its fee).
    pub success: bool,
    /// Block number the transaction was executed in.
    pub block: u64,
}

struct Ledger {
    db: CacheDB<EmptyDB>,
    time: u64,
    number: u64,
    last: Option<Receipt>,
}

/// The default settlement backend (payments.md §4.5): a private EVM ledger in the process that
/// runs the committed `UniChannels` initcode in revm (spec Prague), with real gas accounting
/// (every transaction pays `gas_used × gas_price` wei), a dev clock for block timestamps, and
/// optional persistence to a JSON snapshot file so a restarted node sees the same ledger.
///
/// In-process multi-node tests share one `Arc<EmbeddedEvm>`; it is `Send + Sync` (one mutex).
pub struct EmbeddedEvm {
    ledger: Mutex<Ledger>,
    config: EmbeddedConfig,
    hub: Address,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedEvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEvm")
            .field("config", &self.config)
            .field("hub", &self.hub)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: String,
    config: EmbeddedConfig,
    hub: Address,
    time: u64,
    number: u64,
    accounts: Vec<AccountSnap>,
}

#[derive(Serialize, Deserialize)]
struct AccountSnap {
    address: Address,
    balance: U256,
    nonce: u64,
    #[serde(default, skip_serializing_if = "no_code")]
    code: Bytes,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    storage: Vec<(U256, U256)>,
}

fn no_code(code: &Bytes) -> bool {
    code.is_empty()
}

/// The account that deploys the contract (nonce 0, so the hub is `deployer.create(0)`).
fn deployer() -> Address {
    Address::from_slice(&keccak256(b"ferry embedded evm deployer")[12..])
}

impl EmbeddedEvm {
    /// A fresh in-memory chain with the contract deployed at genesis (deployment is free).
    pub fn new(config: EmbeddedConfig) -> Result<Self, PayError> {
        let mut ledger = Ledger {
            db: CacheDB::new(EmptyDB::default()),
            time: config.start_time,
            number: 1,
            last: None,
        };
        let out = exec(
            &mut ledger,
            &config,
            deployer(),
            TxKind::Create,
            U256::ZERO,
            initcode()?,
            Mode::Free,
        )?;
        let Output::Create(_, Some(hub)) = out else {
            return Err(PayError::Evm("deployment created no contract".into()));
        };
        Ok(Self {
            ledger: Mutex::new(ledger),
            config,
            hub,
            path: None,
        })
    }

    /// Opens a persistent chain: loads the snapshot at `path` if it exists (its stored config
    /// wins over `config`), else creates a new chain and writes it there. Every state change
    /// (transaction, [`DevChain::fund`], [`DevChain::advance_time`]) is then saved to `path`.
    pub fn open_file(path: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, PayError> {
        let path = path.as_ref();
        let mut evm = if path.exists() {
            Self::load(path)?
        } else {
            let evm = Self::new(config)?;
            evm.save(path)?;
            evm
        };
        evm.path = Some(path.to_path_buf());
        Ok(evm)
    }

    /// Loads a snapshot written by [`EmbeddedEvm::save`] (not persistent: see `open_file`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, PayError> {
        let text = std::fs::read(path)?;
        let snap: Snapshot = serde_json::from_slice(&text)
            .map_err(|e| PayError::Decode(format!("ledger snapshot: {e}")))?;
        if snap.format != SNAPSHOT_FORMAT {
            return Err(PayError::Decode(format!(
                "ledger snapshot format {:?}, expected {SNAPSHOT_FORMAT:?}",
                snap.format
            )));
        }
        let mut db = CacheDB::new(EmptyDB::default());
        for acc in snap.accounts {
            let info = if acc.code.is_empty() {
                AccountInfo {
                    balance: acc.balance,
                    nonce: acc.nonce,
                    ..AccountInfo::default()
                }
            } else {
                let code = Bytecode::new_raw(acc.code);
                AccountInfo::new(acc.balance, acc.nonce, code.hash_slow(), code)
            };
            db.insert_account_info(acc.address, info);
            for (slot, value) in acc.storage {
                db.insert_account_storage(acc.address, slot, value)
                    .map_err(|e| PayError::Evm(format!("{e:?}")))?;
            }
        }
        Ok(Self {
            ledger: Mutex::new(Ledger {
                db,
                time: snap.time,
                number: snap.number,
                last: None,
            }),
            config: snap.config,
            hub: snap.hub,
            path: None,
        })
    }

    /// Writes the whole ledger (accounts, balances, nonces, code, storage, clock) to `path` as
    /// JSON, atomically (temporary file, fsync, rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), PayError> {
        let ledger = self.lock();
        self.save_locked(&ledger, path.as_ref())
    }

    fn save_locked(&self, ledger: &Ledger, path: &Path) -> Result<(), PayError> {
        let mut accounts = Vec::new();
        for (address, acc) in &ledger.db.cache.accounts {
            let Some(info) = acc.info() else { continue };
            let code = ledger
                .db
                .cache
                .contracts
                .get(&info.code_hash)
                .map(|c| c.original_bytes())
                .unwrap_or_default();
            let mut storage: Vec<(U256, U256)> = acc
                .storage
                .iter()
                .filter(|(_, v)| !v.is_zero())
                .map(|(k, v)| (*k, *v))
                .collect();
            storage.sort();
            accounts.push(AccountSnap {
                address: *address,
                balance: info.balance,
                nonce: info.nonce,
                code,
                storage,
            });
        }
        accounts.sort_by_key(|a| a.address);
        let snap = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            config: self.config,
            hub: self.hub,
            time: ledger.time,
            number: ledger.number,
            accounts,
        };
        let bytes = serde_json::to_vec_pretty(&snap)
            .map_err(|e| PayError::Decode(format!("ledger snapshot: {e}")))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// The chain's parameters.
    pub fn config(&self) -> EmbeddedConfig {
        self.config
    }

    /// Address of the deployed `UniChannels` contract.
    pub fn hub(&self) -> Address {
        self.hub
    }

    /// Gas accounting of the last transaction sent through this backend (success or revert).
    pub fn last_receipt(&self) -> Option<Receipt> {
        self.lock().last
    }

    /// Transaction count (nonce) of `who`.
    pub fn nonce(&self, who: Address) -> u64 {
        let ledger = self.lock();
        match ledger.db.basic_ref(who) {
            Ok(Some(info)) => info.nonce,
            _ => 0,
        }
    }

    /// Asks the contract itself for a voucher's digest (`UniChannels.voucherDigest`), to check
    /// [`Voucher::digest`] against the EVM.
    pub fn contract_voucher_digest(&self, ch: B256, cumulative: U256) -> Result<B256, PayError> {
        let data = IUniChannels::voucherDigestCall { id: ch, cumulative }.abi_encode();
        let out = self.view(data)?;
        IUniChannels::voucherDigestCall::abi_decode_returns(&out)
            .map_err(|e| PayError::Decode(e.to_string()))
    }

    /// Asks the contract which address signed `v` (`UniChannels.voucherSigner`; zero if invalid).
    pub fn contract_voucher_signer(&self, v: &Voucher) -> Result<Address, PayError> {
        let data = IUniChannels::voucherSignerCall {
            id: v.channel,
            cumulative: v.cumulative,
            sig: Bytes::copy_from_slice(&v.sig),
        }
        .abi_encode();
        let out = self.view(data)?;
        IUniChannels::voucherSignerCall::abi_decode_returns(&out)
            .map_err(|e| PayError::Decode(e.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a read-only call of `to` with calldata `data` (no fee, nothing committed, caller
    /// the zero address) and returns its output; a revert is [`PayError::Reverted`].
    pub fn call(&self, to: Address, data: Bytes) -> Result<Bytes, PayError> {
        let mut ledger = self.lock();
        let out = exec(
            &mut ledger,
            &self.config,
            Address::ZERO,
            TxKind::Call(to),
            U256::ZERO,
            data,
            Mode::View,
        )?;
        Ok(out.into_data())
    }

    /// Sends a fee-paying transaction from `from` to `to` carrying `value` wei and calldata
    /// `data` (gas limit [`CALL_GAS_LIMIT`]) and returns its output. A reverted call is
    /// committed (fee and nonce stand) and returned as [`PayError::Reverted`].
    pub fn transact(
        &self,
        from: &AccountKey,
        to: Address,
        value: U256,
        data: Bytes,
    ) -> Result<Bytes, PayError> {
        self.commit_tx(from, TxKind::Call(to), value, data)
            .map(Output::into_data)
    }

    /// Deploys a contract from `from` (fee-paying) with `initcode` and `value` wei; returns its
    /// address. For dev tooling and tests (e.g. contracts that interact with the channel hub).
    pub fn deploy(
        &self,
        from: &AccountKey,
        initcode: Bytes,
        value: U256,
    ) -> Result<Address, PayError> {
        match self.commit_tx(from, TxKind::Create, value, initcode)? {
            Output::Create(_, Some(addr)) => Ok(addr),
            _ => Err(PayError::Evm("deployment created no contract".into())),
        }
    }

    fn commit_tx(
        &self,
        from: &AccountKey,
        kind: TxKind,
        value: U256,
        data: Bytes,
    ) -> Result<Output, PayError> {
        let mut ledger = self.lock();
        let res = exec(
            &mut ledger,
            &self.config,
            from.address(),
            kind,
            value,
            data,
            Mode::Charge,
        );
        if let Some(path) = &self.path {
            self.save_locked(&ledger, path)?;
        }
        res
    }

    /// Executes a fee-paying transaction (what `eth_sendRawTransaction` does after the server
    /// has checked the signature and chain id). Fails, changing nothing, when the EVM refuses it
    /// (wrong nonce, balance below `gas_limit × gas_price + value`, gas limit below the
    /// intrinsic gas); a reverted or halted call is committed (fee and nonce stand) and reported
    /// in [`TxOutcome::receipt`]`.success == false`.
    pub fn execute(&self, req: &TxRequest) -> Result<TxOutcome, PayError> {
        let mut ledger = self.lock();
        let timestamp = ledger.time;
        let result = run(&mut ledger, &self.config, req, Mode::Charge)?;
        let receipt = ledger
            .last
            .ok_or_else(|| PayError::Evm("no receipt recorded".into()))?;
        if let Some(path) = &self.path {
            self.save_locked(&ledger, path)?;
        }
        Ok(outcome(result, receipt, timestamp))
    }

    /// Runs `req` without committing anything and without a fee (`eth_call`,
    /// `eth_estimateGas`); the receipt carries the gas it would use.
    pub fn simulate(&self, req: &TxRequest) -> Result<TxOutcome, PayError> {
        let mut ledger = self.lock();
        let (timestamp, block) = (ledger.time, ledger.number);
        let result = run(&mut ledger, &self.config, req, Mode::View)?;
        let receipt = Receipt {
            gas_used: result.gas().tx_gas_used(),
            gas_price: 0,
            fee: U256::ZERO,
            success: result.is_success(),
            block,
        };
        Ok(outcome(result, receipt, timestamp))
    }

    /// Number of the latest block (every committed transaction is one block; the genesis
    /// deployment is block 1).
    pub fn block_number(&self) -> u64 {
        self.lock().number.saturating_sub(1)
    }

    /// The chain clock, seconds: the timestamp of the next block (and of the latest one, since
    /// only [`DevChain::advance_time`] moves it).
    pub fn time(&self) -> u64 {
        self.lock().time
    }

    /// Deployed code of `who` (empty for an account without code).
    pub fn code(&self, who: Address) -> Bytes {
        let ledger = self.lock();
        let Ok(Some(info)) = ledger.db.basic_ref(who) else {
            return Bytes::new();
        };
        if let Some(code) = &info.code {
            return code.original_bytes();
        }
        ledger
            .db
            .cache
            .contracts
            .get(&info.code_hash)
            .map(|c| c.original_bytes())
            .unwrap_or_default()
    }

    /// Balance of `who` in wei (the synchronous form of [`PaymentBackend::balance`]).
    pub fn balance_of(&self, who: Address) -> U256 {
        let ledger = self.lock();
        match ledger.db.basic_ref(who) {
            Ok(Some(info)) => info.balance,
            _ => U256::ZERO,
        }
    }

    fn view(&self, data: Vec<u8>) -> Result<Bytes, PayError> {
        self.call(self.hub, data.into())
    }

    fn send(&self, from: &AccountKey, value: U256, data: Vec<u8>) -> Result<Bytes, PayError> {
        self.transact(from, self.hub, value, data.into())
    }

    fn persist(&self, ledger: &Ledger) {
        if let Some(path) = &self.path {
            // DevChain has no error channel; a failed save shows up at the next transaction.
            let _ = self.save_locked(ledger, path);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Committed, no fee (genesis deployment).
    Free,
    /// Committed, fee charged at the configured gas price.
    Charge,
    /// Not committed, no fee.
    View,
}

/// Executes one transaction on the ledger. Committed modes commit even a reverted call (its fee
/// and nonce stand, as on a real chain) and then return [`PayError::Reverted`].
fn exec(
    ledger: &mut Ledger,
    config: &EmbeddedConfig,
    caller: Address,
    kind: TxKind,
    value: U256,
    data: Bytes,
    mode: Mode,
) -> Result<Output, PayError> {
    let gas_limit = if kind == TxKind::Create {
        DEPLOY_GAS_LIMIT
    } else {
        CALL_GAS_LIMIT
    };
    let req = TxRequest {
        caller,
        kind,
        value,
        data,
        gas_limit,
        nonce: None,
    };
    result_output(run(ledger, config, &req, mode)?)
}

/// Executes `req` on the ledger and returns revm's result; committed modes commit the state
/// (also of a reverted call), record the receipt and move to the next block.
fn run(
    ledger: &mut Ledger,
    config: &EmbeddedConfig,
    req: &TxRequest,
    mode: Mode,
) -> Result<ExecutionResult, PayError> {
    let gas_price = if mode == Mode::Charge {
        config.gas_price
    } else {
        0
    };
    let nonce = match req.nonce {
        Some(n) => n,
        None => match ledger.db.basic_ref(req.caller) {
            Ok(Some(info)) => info.nonce,
            _ => 0,
        },
    };
    let block = BlockEnv {
        number: U256::from(ledger.number),
        timestamp: U256::from(ledger.time),
        basefee: gas_price,
        gas_limit: BLOCK_GAS_LIMIT,
        ..BlockEnv::default()
    };
    let tx = TxEnv::builder()
        .tx_type(Some(0))
        .caller(req.caller)
        .kind(req.kind)
        .value(req.value)
        .data(req.data.clone())
        .nonce(nonce)
        .gas_limit(req.gas_limit.min(BLOCK_GAS_LIMIT))
        .gas_price(u128::from(gas_price))
        .chain_id(Some(config.chain_id))
        .build()
        .map_err(|e| PayError::Evm(format!("transaction: {e}")))?;
    let chain_id = config.chain_id;
    let mut evm = Context::mainnet()
        .modify_cfg_chained(|cfg| {
            cfg.set_spec_and_mainnet_gas_params(SpecId::PRAGUE);
            cfg.chain_id = chain_id;
        })
        .with_block(block)
        .with_ref_db(&ledger.db)
        .build_mainnet();
    let out = evm.transact(tx);
    drop(evm);
    let out = out.map_err(|e| PayError::Evm(e.to_string()))?;
    if mode == Mode::View {
        return Ok(out.result);
    }
    ledger.db.commit(out.state);
    let gas_used = out.result.gas().tx_gas_used();
    ledger.last = Some(Receipt {
        gas_used,
        gas_price,
        fee: U256::from(gas_used) * U256::from(gas_price),
        success: out.result.is_success(),
        block: ledger.number,
    });
    ledger.number += 1;
    Ok(out.result)
}

/// A transaction (or read-only call) for [`EmbeddedEvm::execute`] and
/// [`EmbeddedEvm::simulate`], as the JSON-RPC server (`ferry chain serve`) decodes it from a
/// signed transaction or an `eth_call` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxRequest {
    /// The sender (recovered from the transaction's signature by the caller of `execute`).
    pub caller: Address,
    /// A call of an address, or a contract creation with `data` as initcode.
    pub kind: TxKind,
    /// Wei sent with the call.
    pub value: U256,
    /// Calldata (or initcode).
    pub data: Bytes,
    /// Gas limit (capped at the block gas limit, 30 000 000).
    pub gas_limit: u64,
    /// The nonce the transaction carries (must equal the sender's); `None` = the sender's
    /// current nonce.
    pub nonce: Option<u64>,
}

/// What [`EmbeddedEvm::execute`] or [`EmbeddedEvm::simulate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxOutcome {
    /// Gas used, gas price, fee (wei), success and block (the block is the one the transaction
    /// went into; for a simulation, the block it would have gone into, with fee 0).
    pub receipt: Receipt,
    /// Return data of a successful call; the revert data (ABI-encoded error) of a reverted one.
    pub output: Bytes,
    /// Address of the created contract (a successful creation).
    pub created: Option<Address>,
    /// Event logs (empty unless successful).
    pub logs: Vec<alloy_primitives::Log>,
    /// Why the EVM halted (out of gas, invalid opcode...), if it did.
    pub halt: Option<String>,
    /// Block timestamp the transaction executed at, seconds.
    pub timestamp: u64,
}

fn outcome(result: ExecutionResult, receipt: Receipt, timestamp: u64) -> TxOutcome {
    let (output, created, logs, halt) = match result {
        ExecutionResult::Success { output, logs, .. } => match output {
            Output::Create(code, addr) => (code, addr, logs, None),
            Output::Call(data) => (data, None, logs, None),
        },
        ExecutionResult::Revert { output, .. } => (output, None, Vec::new(), None),
        ExecutionResult::Halt { reason, .. } => {
            (Bytes::new(), None, Vec::new(), Some(format!("{reason:?}")))
        }
    };
    TxOutcome {
        receipt,
        output,
        created,
        logs,
        halt,
        timestamp,
    }
}

fn result_output(result: ExecutionResult) -> Result<Output, PayError> {
    match result {
        ExecutionResult::Success { output, .. } => Ok(output),
        ExecutionResult::Revert { output, .. } => {
            Err(PayError::Reverted(ContractError::from_revert_data(&output)))
        }
        ExecutionResult::Halt { reason, .. } => Err(PayError::Evm(format!("halt: {reason:?}"))),
    }
}

fn decode_err(e: alloy_sol_types::Error) -> PayError {
    PayError::Decode(e.to_string())
}

impl PaymentBackend for EmbeddedEvm {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Embedded,
            chain_id: self.config.chain_id,
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
        let out = self.send(payer, deposit, data)?;
        IUniChannels::openCall::abi_decode_returns(&out).map_err(decode_err)
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
        self.send(payer, add, data)?;
        Ok(())
    }

    async fn channel(&self, ch: B256) -> Result<Option<ChannelState>, PayError> {
        let out = self.view(IUniChannels::channelsCall { id: ch }.abi_encode())?;
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
        let out = self.send(receiver, U256::ZERO, data)?;
        IUniChannels::claimCall::abi_decode_returns(&out).map_err(decode_err)
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
        let out = self.send(receiver, U256::ZERO, data)?;
        let r = IUniChannels::closeCall::abi_decode_returns(&out).map_err(decode_err)?;
        Ok((r.paid, r.refunded))
    }

    async fn refund(&self, payer: &AccountKey, ch: B256) -> Result<U256, PayError> {
        let out = self.send(
            payer,
            U256::ZERO,
            IUniChannels::refundCall { id: ch }.abi_encode(),
        )?;
        IUniChannels::refundCall::abi_decode_returns(&out).map_err(decode_err)
    }

    async fn balance(&self, who: Address) -> Result<U256, PayError> {
        let ledger = self.lock();
        match ledger.db.basic_ref(who) {
            Ok(info) => Ok(info.map(|i| i.balance).unwrap_or_default()),
            Err(e) => Err(PayError::Evm(format!("{e:?}"))),
        }
    }

    async fn now(&self) -> Result<u64, PayError> {
        Ok(self.lock().time)
    }
}

impl DevChain for EmbeddedEvm {
    fn fund(&self, who: Address, amount: U256) {
        let mut ledger = self.lock();
        let mut info = match ledger.db.basic_ref(who) {
            Ok(Some(info)) => info,
            _ => AccountInfo::default(),
        };
        info.balance = info.balance.saturating_add(amount);
        ledger.db.insert_account_info(who, info);
        self.persist(&ledger);
    }

    fn advance_time(&self, secs: u64) {
        let mut ledger = self.lock();
        ledger.time = ledger.time.saturating_add(secs);
        self.persist(&ledger);
    }
}
