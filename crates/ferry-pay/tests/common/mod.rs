//! Shared helpers of the ferry-pay integration tests (all on `EmbeddedEvm`).
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use ferry_pay::{
    AccountKey, B256, DevChain, EmbeddedConfig, EmbeddedEvm, PaymentBackend, U256, Voucher,
};

/// 1 ether in wei.
pub const ETH: u128 = 1_000_000_000_000_000_000;

pub fn eth(n: u128) -> U256 {
    U256::from(n * ETH)
}

/// Drives a future to completion; `EmbeddedEvm`'s futures never wait on anything.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

pub struct Setup {
    pub evm: EmbeddedEvm,
    pub client: AccountKey,
    pub relay: AccountKey,
}

impl Setup {
    pub fn new() -> Self {
        Self::with(EmbeddedEvm::new(EmbeddedConfig::default()).expect("embedded chain"))
    }

    /// Funds the standard client and relay keys with 10 ETH each on `evm`.
    pub fn with(evm: EmbeddedEvm) -> Self {
        let client = AccountKey::from_seed(&[1u8; 32]);
        let relay = AccountKey::from_seed(&[2u8; 32]);
        if block_on(evm.balance(client.address())).expect("balance") == U256::ZERO {
            evm.fund(client.address(), eth(10));
            evm.fund(relay.address(), eth(10));
        }
        Self { evm, client, relay }
    }

    pub fn chain_id(&self) -> u64 {
        self.evm.config().chain_id
    }

    pub fn now(&self) -> u64 {
        block_on(self.evm.now()).expect("now")
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
            self.evm.hub(),
            ch,
            U256::from(cumulative),
        )
        .expect("sign")
    }

    pub fn balance(&self, who: &AccountKey) -> U256 {
        block_on(self.evm.balance(who.address())).expect("balance")
    }

    pub fn hub_balance(&self) -> U256 {
        block_on(self.evm.balance(self.evm.hub())).expect("balance")
    }

    /// Fee of the last transaction, in wei.
    pub fn fee(&self) -> U256 {
        self.evm.last_receipt().expect("a transaction ran").fee
    }

    pub fn gas(&self) -> u64 {
        self.evm.last_receipt().expect("a transaction ran").gas_used
    }
}
