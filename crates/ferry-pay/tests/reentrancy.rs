//! UniChannels is reentrancy-safe (checks-effects-interactions): a receiver or sender contract
//! that calls back into the hub while being paid is never paid twice. The attacker is
//! `tests/contracts/Reenter.sol` (bytecode checked by `scripts/check-contract`).

mod common;

use alloy_sol_types::{SolCall, SolValue, sol};
use common::{Setup, block_on, eth};
use ferry_pay::{Address, B256, Bytes, DevChain, PaymentBackend, U256};

sol! {
    interface IReenter {
        function attackClaim(bytes32 i, uint256 c, bytes s) external;
        function attackClose(bytes32 i, uint256 c, bytes s) external;
        function openAsSender(address receiver, uint64 expiry) external payable returns (bytes32);
        function attackRefund(bytes32 i) external;
        function reentries() external view returns (uint256);
        function reentrySuccesses() external view returns (uint256);
    }
}

const REENTER_HEX: &str = include_str!("contracts/Reenter.bin");

fn deploy_attacker(s: &Setup) -> Address {
    let mut code = hex::decode(REENTER_HEX.trim()).expect("hex");
    code.extend_from_slice(&s.evm.hub().abi_encode());
    s.evm
        .deploy(&s.relay, Bytes::from(code), U256::ZERO)
        .expect("deploy attacker")
}

fn counter(s: &Setup, attacker: Address, data: Vec<u8>) -> U256 {
    let out = s.evm.call(attacker, data.into()).expect("view");
    U256::abi_decode(&out).expect("uint")
}

fn balance(s: &Setup, who: Address) -> U256 {
    block_on(s.evm.balance(who)).expect("balance")
}

/// The client opens a 1 ETH channel to the attacker contract and signs a voucher for 1000 wei.
fn channel_to_attacker(s: &Setup, attacker: Address) -> (B256, Bytes) {
    let expiry = s.now() + 3600;
    let ch = block_on(s.evm.open(&s.client, attacker, eth(1), expiry)).expect("open");
    let v = s.voucher(ch, 1_000);
    (ch, Bytes::copy_from_slice(&v.sig))
}

#[test]
fn receiver_reentering_claim_is_paid_once() {
    let s = Setup::new();
    let attacker = deploy_attacker(&s);
    let (ch, sig) = channel_to_attacker(&s, attacker);
    let c0 = s.balance(&s.client);
    let call = IReenter::attackClaimCall {
        i: ch,
        c: U256::from(1_000),
        s: sig,
    };
    s.evm
        .transact(&s.relay, attacker, U256::ZERO, call.abi_encode().into())
        .expect("attack runs");
    assert!(counter(&s, attacker, IReenter::reentriesCall {}.abi_encode()) >= U256::from(1));
    // Paid exactly the voucher once; the reentrant close (allowed to the receiver) refunded the
    // rest to the client; nothing is left in the hub.
    assert_eq!(balance(&s, attacker), U256::from(1_000));
    assert_eq!(s.hub_balance(), U256::ZERO);
    assert_eq!(s.balance(&s.client), c0 + eth(1) - U256::from(1_000));
    let st = block_on(s.evm.channel(ch)).expect("read").expect("exists");
    assert_eq!(st.claimed, U256::from(1_000));
}

#[test]
fn receiver_reentering_close_is_paid_once() {
    let s = Setup::new();
    let attacker = deploy_attacker(&s);
    let (ch, sig) = channel_to_attacker(&s, attacker);
    let call = IReenter::attackCloseCall {
        i: ch,
        c: U256::from(1_000),
        s: sig,
    };
    s.evm
        .transact(&s.relay, attacker, U256::ZERO, call.abi_encode().into())
        .expect("attack runs");
    assert_eq!(
        counter(&s, attacker, IReenter::reentriesCall {}.abi_encode()),
        U256::from(1)
    );
    assert_eq!(
        counter(&s, attacker, IReenter::reentrySuccessesCall {}.abi_encode()),
        U256::ZERO,
        "every reentrant call failed"
    );
    assert_eq!(balance(&s, attacker), U256::from(1_000));
    assert_eq!(s.hub_balance(), U256::ZERO);
}

#[test]
fn sender_reentering_refund_is_refunded_once() {
    let s = Setup::new();
    let attacker = deploy_attacker(&s);
    let expiry = s.now() + 60;
    let open = IReenter::openAsSenderCall {
        receiver: s.relay.address(),
        expiry,
    };
    let out = s
        .evm
        .transact(&s.client, attacker, eth(1), open.abi_encode().into())
        .expect("open through the attacker");
    let ch = IReenter::openAsSenderCall::abi_decode_returns(&out).expect("id");
    let st = block_on(s.evm.channel(ch)).expect("read").expect("exists");
    assert_eq!(st.sender, attacker);
    s.evm.advance_time(60);
    let refund = IReenter::attackRefundCall { i: ch };
    s.evm
        .transact(&s.client, attacker, U256::ZERO, refund.abi_encode().into())
        .expect("attack runs");
    assert_eq!(
        counter(&s, attacker, IReenter::reentriesCall {}.abi_encode()),
        U256::from(1)
    );
    assert_eq!(
        counter(&s, attacker, IReenter::reentrySuccessesCall {}.abi_encode()),
        U256::ZERO
    );
    assert_eq!(balance(&s, attacker), eth(1));
    assert_eq!(s.hub_balance(), U256::ZERO);
}
