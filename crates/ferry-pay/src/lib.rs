//! # ferry-pay: the settlement layer of paid forwarding
//!
//! Implements payments.md §0 (the recommendation), §4.2 (keys) and §4.5 (the backend trait) of
//! `shared/design/payments.md`: relays and exits are paid through **unidirectional
//! (Spilman-style) payment channels** on an EVM ledger. All amounts are in **wei**, the
//! chain's base unit (`U256`); all times are chain timestamps in **seconds**.
//!
//! ## The scheme
//!
//! 1. **Open.** The client (sender) calls `UniChannels.open(receiver, expiry)` with a deposit;
//!    the contract escrows it and returns a channel id
//!    `keccak256(abi.encode(sender, receiver, nonce))` (a per-sender nonce, so ids never repeat).
//! 2. **Pay off-chain.** As traffic is delivered the client sends the relay [`Voucher`]s: a
//!    secp256k1 signature by the client's [`AccountKey`] over the *cumulative* amount owed, on
//!    the digest
//!    `keccak256("\x19Ethereum Signed Message:\n32" ‖ keccak256(abi.encode(chainId, hub, id,
//!    cumulative)))` (EIP-191). The relay checks it with [`Voucher::signer`] (same rules as the
//!    contract: low `s`, `v` ∈ {27, 28}) and keeps only the newest one.
//! 3. **Claim.** The relay redeems the newest voucher with `claim` (`cumulative ≤ deposit`); the
//!    contract pays `cumulative - claimed` and raises `claimed`. A voucher at or below
//!    `claimed` reverts with [`ContractError::NothingToClaim`], so **no voucher can be redeemed
//!    twice** and older vouchers are worthless. The chain id, contract address ("hub") and
//!    channel id are signed, so a voucher is useless on any other chain, deployment or channel.
//! 4. **Close / refund.** The relay closes with its newest voucher (paid the rest, the remainder
//!    refunded to the client); if the relay vanishes, the client takes back
//!    `deposit - claimed` with `refund` once `expiry` has passed. Closed ids stay closed.
//! 5. **Top up.** The client adds deposit and extends expiry (never shortens) with `topUp`.
//!
//! Two keys (§4.2): the Ed25519 node identity signs contracts and receipts (elsewhere); the
//! secp256k1 [`AccountKey`], derived from a 32-byte seed with HKDF-SHA256 (label
//! `"ferry account key v1"`), signs vouchers and transactions, because the EVM can only
//! `ecrecover` secp256k1.
//!
//! ## Backends
//!
//! [`PaymentBackend`] is the on-chain half. [`EmbeddedEvm`] (the default) runs the committed
//! bytecode of `contracts/UniChannels.sol` (solc 0.8.26; `scripts/check-contract` recompiles it
//! in CI and compares) inside revm, with real gas accounting, a dev clock ([`DevChain`]) and a
//! JSON snapshot file so a restarted node sees the same ledger. [`JsonRpcEvm`] settles on any
//! EVM chain over Ethereum JSON-RPC (HTTP): a real chain, Hardhat, or `ferry chain serve`
//! ([`rpc_server::ChainServer`]), which shares one embedded ledger between processes.
//!
//! ```
//! # fn main() -> Result<(), ferry_pay::PayError> {
//! use ferry_pay::{AccountKey, Voucher, U256, Address};
//! let client = AccountKey::from_seed(&[7u8; 32]);
//! let hub = Address::repeat_byte(0x11);
//! let v = Voucher::sign(&client, 1, hub, [3u8; 32].into(), U256::from(1_000u64))?;
//! assert_eq!(v.signer(1, hub)?, client.address());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backend;
mod contract;
mod embedded;
mod jsonrpc;
mod key;
pub mod rpc_server;
mod voucher;

pub use alloy_primitives::{Address, B256, Bytes, U256};
pub use backend::{BackendInfo, BackendKind, ChannelState, DevChain, PaymentBackend};
pub use contract::{
    ContractError, IUniChannels, UNI_CHANNELS_ABI_JSON, UNI_CHANNELS_INITCODE_HEX, initcode,
};
pub use embedded::{
    CALL_GAS_LIMIT, DEFAULT_CHAIN_ID, DEFAULT_GAS_PRICE, DEFAULT_START_TIME, EmbeddedConfig,
    EmbeddedEvm, Receipt, TxOutcome, TxRequest,
};
pub use jsonrpc::{
    JsonRpcEvm, MAX_RESPONSE_BYTES, RECEIPT_TIMEOUT_MS, REQUEST_TIMEOUT_MS, RPC_DEPLOY_GAS_LIMIT,
    RpcLog, RpcTxResult,
};
pub use key::{ACCOUNT_KEY_LABEL, AccountKey};
pub use voucher::{EIP191_PREFIX, Voucher};

/// Errors of the payment layer. Never a panic: malformed input, a refused transaction and
/// ledger I/O all end here.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// The 32 bytes are not a valid secp256k1 secret scalar.
    #[error("invalid secp256k1 secret key")]
    BadKey,
    /// A signature is malformed, malleable (high `s`), or cannot be recovered.
    #[error("invalid voucher signature")]
    BadSignature,
    /// The channel contract reverted the transaction (its fee was still paid).
    #[error("channel contract reverted: {0}")]
    Reverted(ContractError),
    /// The EVM refused or halted the transaction (e.g. the sender cannot pay gas plus value).
    #[error("EVM: {0}")]
    Evm(String),
    /// Bytes that do not decode (a voucher, ABI return data, a ledger snapshot).
    #[error("decode: {0}")]
    Decode(String),
    /// A JSON-RPC node could not be reached, answered with an error, or broke the protocol
    /// ([`JsonRpcEvm`]).
    #[error("JSON-RPC: {0}")]
    Rpc(String),
    /// Reading or writing the ledger snapshot file failed.
    #[error("ledger file: {0}")]
    Io(#[from] std::io::Error),
}
