//! Property: whatever sequence of vouchers a receiver redeems, the channel never pays out more
//! than the largest cumulative it was given, never more than the deposit, and the contract's
//! `claimed` equals what was paid (payments.md §5 group 1).

mod common;

use common::{Setup, block_on};
use ferry_pay::{ContractError, PayError, PaymentBackend, U256};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn claims_never_exceed_max_cumulative_or_deposit(
        deposit in 1u64..1_000_000,
        cumulatives in proptest::collection::vec(0u64..2_000_000, 1..10),
        close_at_end in any::<bool>(),
    ) {
        let s = Setup::new();
        let ch = s.open(U256::from(deposit), 3600);
        let r0 = s.balance(&s.relay);
        let mut paid_total = U256::ZERO;
        let mut fees = U256::ZERO;
        let mut best = 0u64; // highest cumulative accepted so far
        for &c in &cumulatives {
            let res = block_on(s.evm.claim(&s.relay, &s.voucher(ch, u128::from(c))));
            fees += s.fee();
            match res {
                Ok(paid) => {
                    prop_assert!(c > best && c <= deposit);
                    prop_assert_eq!(paid, U256::from(c - best));
                    best = c;
                    paid_total += paid;
                }
                Err(PayError::Reverted(ContractError::NothingToClaim)) => prop_assert!(c <= best),
                Err(PayError::Reverted(ContractError::OverDeposit)) => prop_assert!(c > deposit),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        if close_at_end {
            let last = *cumulatives.last().unwrap_or(&0);
            let v = s.voucher(ch, u128::from(last));
            match block_on(s.evm.close(&s.relay, ch, Some(&v))) {
                Ok((paid, refunded)) => {
                    paid_total += paid;
                    best = best.max(last);
                    prop_assert_eq!(refunded, U256::from(deposit - best));
                }
                Err(PayError::Reverted(ContractError::OverDeposit)) => prop_assert!(last > deposit),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
            fees += s.fee();
        }
        let max_c = *cumulatives.iter().max().unwrap_or(&0);
        prop_assert!(paid_total <= U256::from(max_c));
        prop_assert!(paid_total <= U256::from(deposit));
        prop_assert_eq!(paid_total, U256::from(best));
        let st = block_on(s.evm.channel(ch)).expect("read").expect("exists");
        prop_assert_eq!(st.claimed, paid_total);
        prop_assert_eq!(s.balance(&s.relay), r0 + paid_total - fees);
    }
}
