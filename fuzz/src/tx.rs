//! Target `tx_ingress`: raw bytes as `eth_sendRawTransaction` hands them to the ingress stage.

use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Bytes, U256, keccak256};
use kestrel_pipeline::mempool::{
    BlockRules, PoolError, Validator, check_static, decode_and_check, max_cost,
};
use kestrel_types::{AccountInfo, ChainSpec, RecoveredTx};
use std::sync::{Arc, LazyLock};

/// The dev chain's next block: Prague, its gas limit, a 1 gwei base fee.
pub const NOW_SECS: u64 = 1_800_000_000;
pub const BASE_FEE: u64 = 1_000_000_000;

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let spec = ChainSpec::dev();
    let gas_limit = spec.gas_limit;
    Validator::new(Arc::new(spec), gas_limit)
});

pub fn rules() -> BlockRules {
    VALIDATOR.rules(NOW_SECS, BASE_FEE)
}

pub fn ingress(raw: &[u8]) {
    let tx = match decode_and_check(&VALIDATOR, Bytes::copy_from_slice(raw), NOW_SECS, BASE_FEE) {
        Ok(tx) => tx,
        Err(_) => {
            // Refused somewhere on the way; the decoder alone must not panic either, and what it
            // accepts must pass or fail the static rules without panicking.
            if let Ok(tx) = RecoveredTx::decode(Bytes::copy_from_slice(raw)) {
                let _ = check_static(tx.tx(), &rules());
                assert_cost_does_not_wrap(tx.tx());
            }
            return;
        }
    };
    // Keep what you received: the bytes a block carries and the hash the client computed are
    // those of the encoding it sent, so decoding must accept only the canonical one.
    assert_eq!(tx.raw(), raw, "did not keep the bytes it received");
    assert_eq!(
        tx.tx().encoded_2718(),
        raw,
        "accepted a non-canonical encoding"
    );
    assert_eq!(tx.hash(), keccak256(raw));
    assert_eq!(tx.encoded_len(), raw.len());
    // What ingress admitted, a block built at the same rules admits (validate.rs, payload.rs).
    check_static(tx.tx(), &rules()).expect("admitted but statically invalid");
    assert_cost_does_not_wrap(tx.tx());
    // The state check: a sender with nothing, one with a little, one with everything.
    for balance in [
        U256::ZERO,
        U256::from(10u64).pow(U256::from(22u64)),
        U256::MAX,
    ] {
        let account = AccountInfo {
            nonce: 0,
            balance,
            code_hash: kestrel_types::state::KECCAK_EMPTY,
        };
        match VALIDATOR.check_state(&tx, Some(account)) {
            Ok(_) => assert!(
                exact_cost(tx.tx()).is_some_and(|cost| cost <= balance),
                "admitted a transaction its sender cannot pay"
            ),
            Err(PoolError::InsufficientFunds | PoolError::NonceTooLow) => {}
            Err(err) => panic!("unexpected state error {err}"),
        }
    }
}

/// `gas_limit * max_fee + value` without wrapping; `None` above 2^256 - 1.
fn exact_cost(tx: &alloy_consensus::TxEnvelope) -> Option<U256> {
    use alloy_consensus::Transaction;
    U256::from(tx.gas_limit())
        .checked_mul(U256::from(tx.max_fee_per_gas()))?
        .checked_add(tx.value())
}

/// The pool's cost must never come out lower than the real one (a wrapped sum would let a
/// sender with nothing pass the balance check, and execution then drop the transaction unpaid).
fn assert_cost_does_not_wrap(tx: &alloy_consensus::TxEnvelope) {
    let cost = max_cost(tx);
    match exact_cost(tx) {
        Some(exact) => assert_eq!(cost, exact),
        None => assert_eq!(cost, U256::MAX, "the cost wrapped"),
    }
}
