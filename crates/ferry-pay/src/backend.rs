//! The settlement backend trait and the channel record (payments.md §4.5).

use std::future::Future;

use alloy_primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

use crate::{AccountKey, PayError, Voucher};

/// A channel as the contract stores it (`UniChannels.channels(id)`), payments.md §4.5.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    /// The payer (client); vouchers must be signed by this address.
    pub sender: Address,
    /// The payee (relay or exit); the only address that may claim or close.
    pub receiver: Address,
    /// Total escrowed so far, in wei (open value plus top-ups).
    pub deposit: U256,
    /// Highest cumulative amount already paid out to the receiver, in wei.
    pub claimed: U256,
    /// Block timestamp (seconds) from which the sender may `refund`.
    pub expiry: u64,
    /// Closed by `close` or `refund`; a closed channel can never be used again.
    pub closed: bool,
}

impl ChannelState {
    /// What is still escrowed and unclaimed: `deposit - claimed` wei (0 once closed).
    pub fn unclaimed(&self) -> U256 {
        if self.closed {
            U256::ZERO
        } else {
            self.deposit.saturating_sub(self.claimed)
        }
    }
}

/// Which kind of ledger a backend settles on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendKind {
    /// [`crate::EmbeddedEvm`]: the contract's bytecode in an in-process revm.
    Embedded,
    /// [`crate::JsonRpcEvm`]: an EVM chain over JSON-RPC.
    JsonRpc,
}

/// What a backend settles on: the kind, the chain id and the channel contract ("hub") address,
/// which together with the channel id are what a voucher signs (payments.md §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Embedded or JSON-RPC.
    pub kind: BackendKind,
    /// EIP-155 chain id (`block.chainid`).
    pub chain_id: u64,
    /// Address of the `UniChannels` contract.
    pub hub: Address,
}

/// A settlement backend (payments.md §4.5): the on-chain half of the payment channel scheme.
/// All amounts are in wei (the chain's base unit); times are chain timestamps in seconds.
/// Every state-changing call is one transaction, whose gas the caller pays.
///
/// The futures are `Send`, so generic code can run them on a multi-threaded runtime;
/// implementations may write the methods as `async fn`.
pub trait PaymentBackend: Send + Sync {
    /// Kind, chain id and contract address.
    fn info(&self) -> BackendInfo;

    /// Opens a channel from `payer` to `receiver` escrowing `deposit` wei until `expiry`
    /// (seconds); returns the new channel id.
    fn open(
        &self,
        payer: &AccountKey,
        receiver: Address,
        deposit: U256,
        expiry: u64,
    ) -> impl Future<Output = Result<B256, PayError>> + Send;

    /// Adds `add` wei to channel `ch` and moves its expiry to `new_expiry` (never earlier).
    fn top_up(
        &self,
        payer: &AccountKey,
        ch: B256,
        add: U256,
        new_expiry: u64,
    ) -> impl Future<Output = Result<(), PayError>> + Send;

    /// Reads channel `ch`; `None` if it was never opened.
    fn channel(
        &self,
        ch: B256,
    ) -> impl Future<Output = Result<Option<ChannelState>, PayError>> + Send;

    /// Redeems voucher `v` as the channel's receiver; returns the wei paid now
    /// (`v.cumulative - claimed`). A voucher not above `claimed` fails with
    /// [`crate::ContractError::NothingToClaim`].
    fn claim(
        &self,
        receiver: &AccountKey,
        v: &Voucher,
    ) -> impl Future<Output = Result<U256, PayError>> + Send;

    /// Closes channel `ch` as its receiver, redeeming `v` first if given; returns
    /// `(paid to receiver now, refunded to sender)` in wei.
    fn close(
        &self,
        receiver: &AccountKey,
        ch: B256,
        v: Option<&Voucher>,
    ) -> impl Future<Output = Result<(U256, U256), PayError>> + Send;

    /// Takes back `deposit - claimed` wei as the sender once the channel has expired; returns
    /// the amount refunded.
    fn refund(
        &self,
        payer: &AccountKey,
        ch: B256,
    ) -> impl Future<Output = Result<U256, PayError>> + Send;

    /// Balance of `who` in wei.
    fn balance(&self, who: Address) -> impl Future<Output = Result<U256, PayError>> + Send;

    /// The chain's current time (seconds; the timestamp the next transaction executes at).
    fn now(&self) -> impl Future<Output = Result<u64, PayError>> + Send;
}

/// Development-chain controls, for tests and `ferry chain fund` (never on a real chain).
pub trait DevChain {
    /// Adds `amount` wei to the balance of `who`.
    fn fund(&self, who: Address, amount: U256);
    /// Moves the chain clock forward by `secs` seconds.
    fn advance_time(&self, secs: u64);
}
