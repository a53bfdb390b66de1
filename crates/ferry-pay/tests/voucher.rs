//! Vouchers and account keys: the Rust digest and recovery agree with the contract's.

mod common;

use common::{Setup, eth};
use ferry_pay::{AccountKey, Address, PayError, U256, Voucher};
use proptest::prelude::*;

#[test]
fn known_address_of_secret_one() {
    let mut one = [0u8; 32];
    one[31] = 1;
    let key = AccountKey::from_secret_bytes(&one).expect("valid");
    let want: Address = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
        .parse()
        .expect("address");
    assert_eq!(key.address(), want);
    assert!(matches!(
        AccountKey::from_secret_bytes(&[0u8; 32]),
        Err(PayError::BadKey)
    ));
    assert!(matches!(
        AccountKey::from_secret_bytes(&[0xFF; 32]),
        Err(PayError::BadKey)
    ));
}

#[test]
fn seed_derivation_is_deterministic_and_separated() {
    let a = AccountKey::from_seed(&[5u8; 32]);
    let b = AccountKey::from_seed(&[5u8; 32]);
    let c = AccountKey::from_seed(&[6u8; 32]);
    assert_eq!(a.address(), b.address());
    assert_ne!(a.address(), c.address());
    // The key is not the seed itself.
    assert_ne!(*a.secret_bytes(), [5u8; 32]);
    let back = AccountKey::from_secret_bytes(&a.secret_bytes()).expect("round trip");
    assert_eq!(back.address(), a.address());
    assert!(!format!("{a:?}").contains(&hex::encode(*a.secret_bytes())));
}

#[test]
fn digest_and_signer_match_the_contract() {
    let s = Setup::new();
    let ch = s.open(eth(1), 3600);
    for cumulative in [0u128, 1, 1_000, u128::MAX] {
        let v = s.voucher(ch, cumulative);
        assert_eq!(
            v.digest(s.chain_id(), s.evm.hub()),
            s.evm
                .contract_voucher_digest(ch, U256::from(cumulative))
                .expect("view")
        );
        assert_eq!(
            s.evm.contract_voucher_signer(&v).expect("view"),
            s.client.address()
        );
        assert_eq!(
            v.signer(s.chain_id(), s.evm.hub()).expect("recover"),
            s.client.address()
        );
        assert!(v.sig[64] == 27 || v.sig[64] == 28);
    }
}

#[test]
fn voucher_bytes_round_trip_and_length_checked() {
    let key = AccountKey::from_seed(&[3u8; 32]);
    let v = Voucher::sign(
        &key,
        1,
        Address::repeat_byte(1),
        [4u8; 32].into(),
        U256::MAX,
    )
    .expect("sign");
    let bytes = v.to_bytes();
    assert_eq!(Voucher::from_bytes(&bytes).expect("decode"), v);
    assert!(Voucher::from_bytes(&bytes[..128]).is_err());
    let json = serde_json::to_string(&v).expect("json");
    assert_eq!(serde_json::from_str::<Voucher>(&json).expect("json"), v);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary signature bytes never panic, and the Rust recovery agrees with the contract's
    /// `voucherSigner` (which returns address 0 where Rust returns an error).
    #[test]
    fn arbitrary_signatures_agree_with_contract(
        r in any::<[u8; 32]>(),
        s_bytes in any::<[u8; 32]>(),
        v in prop_oneof![Just(0u8), Just(1), Just(27), Just(28), any::<u8>()],
        cumulative in any::<u64>(),
    ) {
        let setup = Setup::new();
        let mut sig = [0u8; 65];
        sig[..32].copy_from_slice(&r);
        sig[32..64].copy_from_slice(&s_bytes);
        sig[64] = v;
        let voucher = Voucher { channel: [9u8; 32].into(), cumulative: U256::from(cumulative), sig };
        let ours = voucher.signer(setup.chain_id(), setup.evm.hub()).unwrap_or(Address::ZERO);
        let theirs = setup.evm.contract_voucher_signer(&voucher).expect("view");
        prop_assert_eq!(ours, theirs);
    }
}
