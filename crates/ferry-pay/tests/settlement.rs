//! payments.md §5 group 7: settlement end to end on `EmbeddedEvm`, with exact wei balances
//! (every transaction's fee = gas used × gas price is accounted).

#[macro_use]
mod common;

use common::{Chain, Setup, block_on, eth};
use ferry_pay::{AccountKey, Bytes, ContractError, JsonRpcEvm, PayError, PaymentBackend, U256};

fn reverted(r: Result<impl std::fmt::Debug, PayError>) -> ContractError {
    match r {
        Err(PayError::Reverted(e)) => e,
        other => panic!("expected a revert, got {other:?}"),
    }
}

fn open_vouchers_claim_close_moves_exact_wei<C: Chain>(s: Setup<C>) {
    let (c0, r0) = (s.balance(&s.client), s.balance(&s.relay));
    let deposit = eth(1);
    let ch = s.open(deposit, 86_400);
    let (open_fee, open_gas) = (s.fee(), s.gas());
    assert_eq!(s.balance(&s.client), c0 - deposit - open_fee);
    assert_eq!(s.hub_balance(), deposit);
    let st = block_on(s.evm.channel(ch)).expect("read").expect("open");
    assert_eq!(st.sender, s.client.address());
    assert_eq!(st.receiver, s.relay.address());
    assert_eq!(
        (st.deposit, st.claimed, st.closed),
        (deposit, U256::ZERO, false)
    );

    // Off-chain: a voucher every "64 KiB" at 1 gwei/KiB; the relay keeps the newest.
    let price = 1_000_000_000u128 * 64;
    let vouchers: Vec<_> = (1..=20).map(|i| s.voucher(ch, i * price)).collect();
    for v in &vouchers {
        assert_eq!(
            v.signer(s.chain_id(), s.hub()).expect("recover"),
            s.client.address()
        );
    }
    let mid = &vouchers[9];
    let paid = block_on(s.evm.claim(&s.relay, mid)).expect("claim");
    let (claim_fee, claim_gas) = (s.fee(), s.gas());
    assert_eq!(paid, U256::from(10 * price));
    assert_eq!(s.balance(&s.relay), r0 + paid - claim_fee);

    let last = &vouchers[19];
    let (paid2, refunded) = block_on(s.evm.close(&s.relay, ch, Some(last))).expect("close");
    let (close_fee, close_gas) = (s.fee(), s.gas());
    assert_eq!(paid2, U256::from(10 * price));
    assert_eq!(refunded, deposit - U256::from(20 * price));
    // Totals: the relay got exactly the newest cumulative minus its two fees; the client paid
    // exactly that cumulative plus its open fee; nothing is left in the contract.
    let total = U256::from(20 * price);
    assert_eq!(s.balance(&s.relay), r0 + total - claim_fee - close_fee);
    assert_eq!(s.balance(&s.client), c0 - total - open_fee);
    assert_eq!(s.hub_balance(), U256::ZERO);
    let st = block_on(s.evm.channel(ch)).expect("read").expect("kept");
    assert!(st.closed);
    assert_eq!(st.claimed, total);

    eprintln!("gas: open {open_gas}, first claim {claim_gas}, close {close_gas}");
    // Sanity bounds: a regression that blows the gas up shows here.
    assert!(open_gas < 130_000, "open used {open_gas}");
    assert!(claim_gas < 70_000, "claim used {claim_gas}");
    assert!(close_gas < 80_000, "close used {close_gas}");
}

fn close_without_voucher_refunds_everything<C: Chain>(s: Setup<C>) {
    let c0 = s.balance(&s.client);
    let ch = s.open(eth(2), 3600);
    let open_fee = s.fee();
    let (paid, refunded) = block_on(s.evm.close(&s.relay, ch, None)).expect("close");
    assert_eq!((paid, refunded), (U256::ZERO, eth(2)));
    assert_eq!(s.balance(&s.client), c0 - open_fee);
}

fn refund_after_expiry_not_before<C: Chain>(s: Setup<C>) {
    let c0 = s.balance(&s.client);
    let deposit = eth(1);
    let ch = s.open(deposit, 3600);
    let mut fees = s.fee();
    let claimed = U256::from(123_456_789u64);
    assert_eq!(
        block_on(s.evm.claim(&s.relay, &s.voucher(ch, 123_456_789))).expect("claim"),
        claimed
    );

    assert_eq!(
        reverted(block_on(s.evm.refund(&s.client, ch))),
        ContractError::NotExpired
    );
    fees += s.fee();
    // Exactly at the boundary on chains whose clock only moves when told (slack 0).
    s.advance(3599 - s.slack);
    assert_eq!(
        reverted(block_on(s.evm.refund(&s.client, ch))),
        ContractError::NotExpired
    );
    fees += s.fee();
    // Only the sender may refund, even after expiry.
    s.advance(1 + s.slack);
    assert_eq!(
        reverted(block_on(s.evm.refund(&s.relay, ch))),
        ContractError::NotSender
    );
    let refunded = block_on(s.evm.refund(&s.client, ch)).expect("refund at expiry");
    fees += s.fee();
    assert_eq!(refunded, deposit - claimed);
    assert_eq!(s.balance(&s.client), c0 - claimed - fees);
    assert_eq!(s.hub_balance(), U256::ZERO);
    // Refunded = closed: the receiver can no longer claim a newer voucher.
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &s.voucher(ch, 200_000_000)))),
        ContractError::ChannelClosed
    );
    assert_eq!(
        reverted(block_on(s.evm.refund(&s.client, ch))),
        ContractError::ChannelClosed
    );
}

fn top_up_adds_deposit_and_extends_expiry<C: Chain>(s: Setup<C>) {
    let c0 = s.balance(&s.client);
    let ch = s.open(U256::from(1_000_000u64), 3600);
    let mut fees = s.fee();
    let expiry = block_on(s.evm.channel(ch))
        .expect("read")
        .expect("open")
        .expiry;

    let over = s.voucher(ch, 1_500_000);
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &over))),
        ContractError::OverDeposit
    );
    assert_eq!(
        reverted(block_on(s.evm.top_up(
            &s.client,
            ch,
            U256::from(1),
            expiry - 1
        ))),
        ContractError::BadExpiry,
        "expiry never shrinks"
    );
    fees += s.fee();
    assert_eq!(
        reverted(block_on(s.evm.top_up(
            &s.relay,
            ch,
            U256::from(1),
            expiry + 10
        ))),
        ContractError::NotSender
    );
    block_on(
        s.evm
            .top_up(&s.client, ch, U256::from(1_000_000u64), expiry + 7200),
    )
    .expect("top up");
    fees += s.fee();
    let st = block_on(s.evm.channel(ch)).expect("read").expect("open");
    assert_eq!(st.deposit, U256::from(2_000_000u64));
    assert_eq!(st.expiry, expiry + 7200);
    // Extending only (no value) is allowed too.
    block_on(s.evm.top_up(&s.client, ch, U256::ZERO, expiry + 7200)).expect("same expiry");
    fees += s.fee();

    assert_eq!(
        block_on(s.evm.claim(&s.relay, &over)).expect("now within deposit"),
        U256::from(1_500_000u64)
    );
    // The old expiry no longer allows a refund; the new one does.
    s.evm.advance_time(3600);
    assert_eq!(
        reverted(block_on(s.evm.refund(&s.client, ch))),
        ContractError::NotExpired
    );
    fees += s.fee();
    s.evm.advance_time(7200);
    assert_eq!(
        block_on(s.evm.refund(&s.client, ch)).expect("refund"),
        U256::from(500_000u64)
    );
    fees += s.fee();
    assert_eq!(s.balance(&s.client), c0 - U256::from(1_500_000u64) - fees);
}

fn open_is_validated<C: Chain>(s: Setup<C>) {
    let now = s.now();
    let relay = s.relay.address();
    assert_eq!(
        reverted(block_on(s.evm.open(&s.client, relay, U256::ZERO, now + 10))),
        ContractError::NoDeposit
    );
    assert_eq!(
        reverted(block_on(s.evm.open(&s.client, relay, U256::from(1), now))),
        ContractError::BadExpiry
    );
    assert_eq!(
        reverted(block_on(s.evm.open(
            &s.client,
            s.client.address(),
            U256::from(1),
            now + 10
        ))),
        ContractError::BadReceiver
    );
    // A deposit larger than the balance is refused by the EVM before execution.
    assert!(matches!(
        block_on(s.evm.open(&s.client, relay, eth(1_000), now + 10)),
        Err(PayError::Evm(_))
    ));
}

fn repeated_claims_gas_and_conservation<C: Chain>(s: Setup<C>) {
    let supply = s.balance(&s.client) + s.balance(&s.relay);
    let mut fees = U256::ZERO;
    let ch = s.open(eth(1), 3600);
    fees += s.fee();
    let mut gas = Vec::new();
    for i in 1..=5u128 {
        block_on(s.evm.claim(&s.relay, &s.voucher(ch, i * 1_000_000))).expect("claim");
        fees += s.fee();
        gas.push(s.gas());
    }
    // A second channel between the same pair (the sender's nonce slot is warm now).
    let ch2 = s.open(eth(1), 3600);
    let open2 = s.gas();
    fees += s.fee();
    block_on(s.evm.close(&s.relay, ch2, None)).expect("close");
    fees += s.fee();
    eprintln!("gas: claims {gas:?}, second open {open2}");
    assert!(
        gas[1..].iter().all(|&g| g < gas[0]),
        "later claims are cheaper"
    );
    // Wei are conserved: what the two accounts hold plus the escrow plus the burnt fees is what
    // they were funded with.
    assert_eq!(
        s.balance(&s.client) + s.balance(&s.relay) + s.hub_balance() + fees,
        supply
    );
}

fn shared_between_threads<C: Chain>(s: Setup<C>) {
    let s = std::sync::Arc::new(s);
    let ch = s.open(eth(1), 3600);
    let handles: Vec<_> = (1..=4u128)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || block_on(s.evm.claim(&s.relay, &s.voucher(ch, i * 10))))
        })
        .collect();
    let mut paid = U256::ZERO;
    for h in handles {
        if let Ok(p) = h.join().expect("thread") {
            paid += p;
        }
    }
    // Whatever the interleaving, the total paid is the highest voucher.
    assert_eq!(paid, U256::from(40));
    let st = block_on(s.evm.channel(ch)).expect("read").expect("exists");
    assert_eq!(st.claimed, U256::from(40));
}

/// Generic code can drive any backend's futures on a multi-threaded runtime.
fn backend_futures_are_send<C: Chain>(s: Setup<C>) {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    async fn settle<B: PaymentBackend>(
        b: &B,
        relay: &AccountKey,
        v: &ferry_pay::Voucher,
    ) -> Result<(U256, U256), PayError> {
        let paid = assert_send(b.claim(relay, v)).await?;
        let (rest, refunded) = assert_send(b.close(relay, v.channel, None)).await?;
        Ok((paid + rest, refunded))
    }
    let ch = s.open(U256::from(1_000u64), 3600);
    let v = s.voucher(ch, 600);
    let fut = assert_send(settle(&s.evm, &s.relay, &v));
    assert_eq!(
        block_on(fut).expect("settle"),
        (U256::from(600u64), U256::from(400u64))
    );
}

on_every_backend!(
    open_vouchers_claim_close_moves_exact_wei,
    close_without_voucher_refunds_everything,
    refund_after_expiry_not_before,
    top_up_adds_deposit_and_extends_expiry,
    open_is_validated,
    repeated_claims_gas_and_conservation,
    shared_between_threads,
    backend_futures_are_send,
);

/// Hardhat's public dev account #19 (a well-known key, funded at genesis) deploys the hub and
/// pays the client and relay with plain transfers; then a channel settles with exact wei.
#[test]
fn hardhat_default_account_deploys_and_pays() {
    let Some(url) = common::hardhat_url() else {
        return;
    };
    let mut secret = [0u8; 32];
    hex::decode_to_slice(
        "df57089febbacf7ba0bc227dafbffa9fc08a93fdc68e1e42411a14efcf23656e",
        &mut secret,
    )
    .expect("hex");
    let dev = AccountKey::from_secret_bytes(&secret).expect("key");
    let evm = block_on(JsonRpcEvm::connect(&url, Some(31337), None, Some(&dev)))
        .expect("deploy from the dev account");
    assert_eq!(evm.info().chain_id, 31337);
    let (client, relay) = (common::fresh_key(), common::fresh_key());
    for (who, amount) in [(&client, eth(2)), (&relay, eth(1))] {
        block_on(evm.transact(&dev, Some(who.address()), amount, Bytes::new(), 21_000))
            .expect("transfer");
    }
    let mut s = Setup::with_keys(evm, client, relay);
    s.slack = 120;
    assert_eq!(s.balance(&s.client), eth(2));
    let ch = s.open(eth(1), 3600);
    let open_fee = s.fee();
    let (paid, refunded) =
        block_on(s.evm.close(&s.relay, ch, Some(&s.voucher(ch, 777)))).expect("close");
    assert_eq!(
        (paid, refunded),
        (U256::from(777), eth(1) - U256::from(777))
    );
    assert_eq!(s.balance(&s.client), eth(2) - U256::from(777) - open_fee);
}

/// `ferry chain serve` takes legacy (EIP-155) transactions as well as EIP-1559 ones, and refuses
/// a replayed transaction, one signed for another chain, and garbage.
#[test]
fn served_legacy_transactions_and_refusals() {
    use alloy_consensus::{SignableTransaction, TxEnvelope, TxLegacy};
    use alloy_eips::eip2718::Encodable2718;
    let url = common::serve(ferry_pay::EmbeddedEvm::new(Default::default()).expect("chain"));
    let evm = block_on(JsonRpcEvm::connect(&url, None, None, None))
        .expect("connect")
        .with_legacy_transactions(true);
    let s = Setup::with(evm);
    let ch = s.open(U256::from(10_000u64), 3600);
    let open_fee = s.fee();
    assert_eq!(
        block_on(s.evm.claim(&s.relay, &s.voucher(ch, 4_000))).expect("claim"),
        U256::from(4_000)
    );
    assert_eq!(
        s.evm.last_receipt().expect("receipt").gas_price,
        ferry_pay::DEFAULT_GAS_PRICE
    );
    assert!(open_fee > U256::ZERO);

    let sign = |chain_id: u64, nonce: u64| {
        let tx = TxLegacy {
            chain_id: Some(chain_id),
            nonce,
            gas_price: 1_000_000_000,
            gas_limit: 21_000,
            to: ferry_pay::Address::repeat_byte(7).into(),
            value: U256::from(1),
            input: Bytes::new(),
        };
        let sig = s.client.sign_tx_hash(tx.signature_hash()).expect("sign");
        let env: TxEnvelope = tx.into_signed(sig).into();
        Bytes::from(env.encoded_2718())
    };
    let nonce = u64::try_from(
        U256::from_str_radix(
            block_on(s.evm.request(
                "eth_getTransactionCount",
                serde_json::json!([s.client.address(), "pending"]),
            ))
            .expect("count")
            .as_str()
            .expect("hex")
            .trim_start_matches("0x"),
            16,
        )
        .expect("quantity"),
    )
    .expect("u64");
    let good = sign(s.chain_id(), nonce);
    block_on(
        s.evm
            .request("eth_sendRawTransaction", serde_json::json!([good])),
    )
    .expect("send");
    for bad in [
        good.clone(),                      // replay
        sign(s.chain_id() + 1, nonce + 1), // another chain
        Bytes::from_static(b"\x02\xc0"),   // garbage
    ] {
        assert!(matches!(
            block_on(
                s.evm
                    .request("eth_sendRawTransaction", serde_json::json!([bad]))
            ),
            Err(PayError::Rpc(_))
        ));
    }
}
