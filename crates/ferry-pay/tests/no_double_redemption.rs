//! payments.md §5 group 1: no double redemption, on `EmbeddedEvm`.

#[macro_use]
mod common;

use common::{Chain, Setup, block_on, eth};
use ferry_pay::{
    AccountKey, Address, ContractError, EmbeddedConfig, EmbeddedEvm, JsonRpcEvm, PayError,
    PaymentBackend, U256, Voucher,
};

fn reverted(r: Result<impl std::fmt::Debug, PayError>) -> ContractError {
    match r {
        Err(PayError::Reverted(e)) => e,
        other => panic!("expected a revert, got {other:?}"),
    }
}

fn same_voucher_twice_pays_once<C: Chain>(s: Setup<C>) {
    let ch = s.open(eth(1), 3600);
    let v = s.voucher(ch, 1_000);
    let r0 = s.balance(&s.relay);
    assert_eq!(
        block_on(s.evm.claim(&s.relay, &v)).expect("claim"),
        U256::from(1_000)
    );
    let fee1 = s.fee();
    let r1 = s.balance(&s.relay);
    assert_eq!(r1, r0 + U256::from(1_000) - fee1);

    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v))),
        ContractError::NothingToClaim
    );
    let fee2 = s.fee();
    assert_eq!(s.balance(&s.relay), r1 - fee2, "a replay pays nothing");
    let st = block_on(s.evm.channel(ch)).expect("read").expect("exists");
    assert_eq!(st.claimed, U256::from(1_000));
}

fn older_voucher_rejected<C: Chain>(s: Setup<C>) {
    let ch = s.open(eth(1), 3600);
    let old = s.voucher(ch, 500);
    let new = s.voucher(ch, 900);
    assert_eq!(
        block_on(s.evm.claim(&s.relay, &new)).expect("claim"),
        U256::from(900)
    );
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &old))),
        ContractError::NothingToClaim
    );
    // A newer voucher still pays only the difference.
    let newer = s.voucher(ch, 1_000);
    assert_eq!(
        block_on(s.evm.claim(&s.relay, &newer)).expect("claim"),
        U256::from(100)
    );
    // Closing with the old voucher pays nothing more and refunds the rest.
    let (paid, refunded) = block_on(s.evm.close(&s.relay, ch, Some(&old))).expect("close");
    assert_eq!(paid, U256::ZERO);
    assert_eq!(refunded, eth(1) - U256::from(1_000));
}

fn voucher_useless_on_another_channel<C: Chain>(s: Setup<C>) {
    let ch1 = s.open(eth(1), 3600);
    let ch2 = s.open(eth(1), 3600);
    assert_ne!(ch1, ch2);
    let mut v = s.voucher(ch1, 1_000);
    v.channel = ch2;
    assert_ne!(
        v.signer(s.chain_id(), s.hub()).ok(),
        Some(s.client.address())
    );
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v))),
        ContractError::BadSignature
    );
    assert_eq!(
        reverted(block_on(s.evm.close(&s.relay, ch2, Some(&v)))),
        ContractError::BadSignature
    );
}

fn voucher_useless_on_another_hub<C: Chain>(s: Setup<C>) {
    let ch = s.open(eth(1), 3600);
    let other_hub = Address::repeat_byte(0x42);
    let v = Voucher::sign(&s.client, s.chain_id(), other_hub, ch, U256::from(1_000)).expect("sign");
    assert_eq!(
        v.signer(s.chain_id(), other_hub).expect("recover"),
        s.client.address()
    );
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v))),
        ContractError::BadSignature
    );
}

#[test]
fn voucher_useless_on_another_chain() {
    // Two chains with the same hub address and the same channel id (same sender, receiver and
    // nonce): only the chain id tells the vouchers apart.
    let a = Setup::new();
    let b = Setup::with(
        EmbeddedEvm::new(EmbeddedConfig {
            chain_id: 7,
            ..EmbeddedConfig::default()
        })
        .expect("chain b"),
    );
    assert_eq!(a.evm.hub(), b.evm.hub());
    let ch_a = a.open(eth(1), 3600);
    let ch_b = b.open(eth(1), 3600);
    assert_eq!(ch_a, ch_b, "same id on both chains");
    let v_a = a.voucher(ch_a, 1_000);
    assert_eq!(
        reverted(block_on(b.evm.claim(&b.relay, &v_a))),
        ContractError::BadSignature
    );
    assert_eq!(
        block_on(a.evm.claim(&a.relay, &v_a)).expect("claim on its own chain"),
        U256::from(1_000)
    );
}

fn closed_channel_cannot_be_reopened_or_claimed<C: Chain>(s: Setup<C>) {
    let ch = s.open(eth(1), 3600);
    let v1 = s.voucher(ch, 1_000);
    let (paid, refunded) = block_on(s.evm.close(&s.relay, ch, Some(&v1))).expect("close");
    assert_eq!(
        (paid, refunded),
        (U256::from(1_000), eth(1) - U256::from(1_000))
    );
    let v2 = s.voucher(ch, 2_000);
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v2))),
        ContractError::ChannelClosed
    );
    assert_eq!(
        reverted(block_on(s.evm.close(&s.relay, ch, Some(&v2)))),
        ContractError::ChannelClosed
    );
    assert_eq!(
        reverted(block_on(s.evm.top_up(
            &s.client,
            ch,
            eth(1),
            s.now() + 7200
        ))),
        ContractError::ChannelClosed
    );
    s.evm.advance_time(7200);
    assert_eq!(
        reverted(block_on(s.evm.refund(&s.client, ch))),
        ContractError::ChannelClosed
    );
    // A new open never yields the closed id again.
    let ch2 = s.open(eth(1), 3600);
    assert_ne!(ch2, ch);
    let st = block_on(s.evm.channel(ch)).expect("read").expect("kept");
    assert!(st.closed);
    assert_eq!(st.claimed, U256::from(1_000));
    assert_eq!(st.unclaimed(), U256::ZERO);
}

#[test]
fn reclaim_after_reload_pays_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.json");
    let (ch, v, relay_after, hub_after) = {
        let s = Setup::with(
            EmbeddedEvm::open_file(&path, EmbeddedConfig::default()).expect("new ledger"),
        );
        let ch = s.open(eth(1), 3600);
        let v = s.voucher(ch, 5_000);
        assert_eq!(
            block_on(s.evm.claim(&s.relay, &v)).expect("claim"),
            U256::from(5_000)
        );
        (ch, v, s.balance(&s.relay), s.hub_balance())
    };
    // "Restart": a new EmbeddedEvm from the file.
    let s = Setup::with(EmbeddedEvm::open_file(&path, EmbeddedConfig::default()).expect("reload"));
    assert_eq!(s.balance(&s.relay), relay_after);
    assert_eq!(s.hub_balance(), hub_after);
    let st = block_on(s.evm.channel(ch))
        .expect("read")
        .expect("persisted");
    assert_eq!(st.claimed, U256::from(5_000));
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v))),
        ContractError::NothingToClaim
    );
    assert_eq!(s.balance(&s.relay), relay_after - s.fee());
    // The sender's nonce survived too: the next channel gets a fresh id.
    assert_ne!(s.open(eth(1), 3600), ch);
    // And the reloaded ledger saves and loads again (plain save/load, no autosave).
    let copy = dir.path().join("copy.json");
    s.evm.save(&copy).expect("save");
    let again = EmbeddedEvm::load(&copy).expect("load");
    assert_eq!(again.hub(), s.hub());
    assert_eq!(
        block_on(again.balance(s.relay.address())).expect("balance"),
        s.balance(&s.relay)
    );
}

fn forged_signature_rejected<C: Chain>(s: Setup<C>) {
    let ch = s.open(eth(1), 3600);
    let mallory = AccountKey::from_seed(&[9u8; 32]);
    for forger in [&mallory, &s.relay] {
        let v = Voucher::sign(forger, s.chain_id(), s.hub(), ch, U256::from(1_000)).expect("sign");
        assert_eq!(
            v.signer(s.chain_id(), s.hub()).expect("recover"),
            forger.address()
        );
        assert_eq!(
            reverted(block_on(s.evm.claim(&s.relay, &v))),
            ContractError::BadSignature
        );
    }
    // Garbage and truncated-looking signatures: errors, never a panic, never a payout.
    let mut junk = s.voucher(ch, 1_000);
    junk.sig = [0u8; 65];
    assert!(junk.signer(s.chain_id(), s.hub()).is_err());
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &junk))),
        ContractError::BadSignature
    );
}

fn malleable_high_s_signature_rejected<C: Chain>(s: Setup<C>) {
    // secp256k1 group order n.
    let n = U256::from_str_radix(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141",
        16,
    )
    .expect("n");
    let ch = s.open(eth(1), 3600);
    let mut v = s.voucher(ch, 1_000);
    let low_s = U256::from_be_slice(&v.sig[32..64]);
    v.sig[32..64].copy_from_slice(&(n - low_s).to_be_bytes::<32>());
    v.sig[64] ^= 1; // 27 <-> 28: the same point, the mirrored signature
    assert!(matches!(
        v.signer(s.chain_id(), s.hub()),
        Err(PayError::BadSignature)
    ));
    assert_eq!(s.evm.voucher_signer(&v), Address::ZERO);
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &v))),
        ContractError::BadSignature
    );
}

fn only_the_receiver_claims_and_never_over_deposit<C: Chain>(s: Setup<C>) {
    let ch = s.open(U256::from(10_000), 3600);
    let v = s.voucher(ch, 1_000);
    let mallory = AccountKey::from_seed(&[9u8; 32]);
    s.evm.fund(mallory.address(), eth(1));
    assert_eq!(
        reverted(block_on(s.evm.claim(&mallory, &v))),
        ContractError::NotReceiver
    );
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.client, &v))),
        ContractError::NotReceiver
    );
    let over = s.voucher(ch, 10_001);
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &over))),
        ContractError::OverDeposit
    );
    assert_eq!(
        reverted(block_on(s.evm.close(&s.relay, ch, Some(&over)))),
        ContractError::OverDeposit
    );
    let unknown = s.voucher([0xEE; 32].into(), 1);
    assert_eq!(
        reverted(block_on(s.evm.claim(&s.relay, &unknown))),
        ContractError::UnknownChannel
    );
    assert_eq!(
        block_on(s.evm.channel([0xEE; 32].into())).expect("read"),
        None
    );
}

#[test]
fn corrupt_or_missing_ledger_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.json");
    assert!(matches!(EmbeddedEvm::load(&path), Err(PayError::Io(_))));
    std::fs::write(&path, b"{ not json").expect("write");
    assert!(matches!(EmbeddedEvm::load(&path), Err(PayError::Decode(_))));
    assert!(EmbeddedEvm::open_file(&path, EmbeddedConfig::default()).is_err());
    std::fs::write(&path, br#"{"format":"other","config":{"chain_id":1,"gas_price":1,"start_time":1},"hub":"0x0000000000000000000000000000000000000000","time":1,"number":1,"accounts":[]}"#).expect("write");
    assert!(matches!(EmbeddedEvm::load(&path), Err(PayError::Decode(_))));
}

on_every_backend!(
    same_voucher_twice_pays_once,
    older_voucher_rejected,
    voucher_useless_on_another_channel,
    voucher_useless_on_another_hub,
    closed_channel_cannot_be_reopened_or_claimed,
    forged_signature_rejected,
    malleable_high_s_signature_rejected,
    only_the_receiver_claims_and_never_over_deposit,
);

/// Separate processes share one ledger: payer and relay each talk to one `ferry chain serve`
/// server through their own `JsonRpcEvm`; a server started again from the ledger file (a
/// restart) still refuses the redeemed voucher, and a voucher of a vanished hub is useless.
#[test]
fn served_ledger_reclaim_after_restart_pays_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.json");
    let url =
        common::serve(EmbeddedEvm::open_file(&path, EmbeddedConfig::default()).expect("ledger"));
    let payer =
        Setup::with(block_on(JsonRpcEvm::connect(&url, None, None, None)).expect("connect"));
    let relay_side = block_on(JsonRpcEvm::connect(
        &url,
        Some(payer.chain_id()),
        Some(payer.hub()),
        None,
    ))
    .expect("relay connects with a known hub");
    let ch = payer.open(eth(1), 3600);
    let v = payer.voucher(ch, 5_000);
    assert_eq!(
        block_on(relay_side.claim(&payer.relay, &v)).expect("claim"),
        U256::from(5_000)
    );
    let relay_after = payer.balance(&payer.relay);

    let url2 =
        common::serve(EmbeddedEvm::open_file(&path, EmbeddedConfig::default()).expect("reload"));
    assert_ne!(url, url2);
    let again =
        Setup::with(block_on(JsonRpcEvm::connect(&url2, None, None, None)).expect("connect"));
    assert_eq!(again.hub(), payer.hub());
    assert_eq!(again.balance(&again.relay), relay_after);
    assert_eq!(
        reverted(block_on(again.evm.claim(&again.relay, &v))),
        ContractError::NothingToClaim
    );
    let st = block_on(again.evm.channel(ch))
        .expect("read")
        .expect("persisted");
    assert_eq!(st.claimed, U256::from(5_000));
    // Wrong chain id or a hub without code: refused at connect.
    assert!(block_on(JsonRpcEvm::connect(&url2, Some(1), None, None)).is_err());
    assert!(
        block_on(JsonRpcEvm::connect(
            &url2,
            None,
            Some(Address::repeat_byte(0x42)),
            None
        ))
        .is_err()
    );
    assert!(matches!(
        block_on(JsonRpcEvm::connect("http://127.0.0.1:1", None, None, None)),
        Err(PayError::Rpc(_))
    ));
}
