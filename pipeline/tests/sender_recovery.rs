//! Sender recovery of a block's transactions: parallel for large blocks, with the same senders
//! in block order and the first bad signature reported by its index.

use alloy_consensus::{Signed, TxEip1559, TxEnvelope};
use alloy_primitives::{Signature, U256};
use kestrel_benches::{address, funded_state, transfer_block};
use kestrel_pipeline::import::{ImportError, recover_senders};
use kestrel_types::DecodedTx;

fn block(txs: usize) -> Vec<DecodedTx> {
    let (_, accounts) = funded_state(txs as u64);
    transfer_block(&accounts, txs, 7)
        .into_iter()
        .map(|tx| tx.tx().clone().into())
        .collect()
}

/// The same transaction with its signature's `s` changed: it recovers to someone else or not
/// at all, so its `r` is also zeroed to make recovery fail outright.
fn corrupt(tx: &DecodedTx) -> DecodedTx {
    let TxEnvelope::Eip1559(signed) = tx.tx() else {
        unreachable!("bench transfers are EIP-1559")
    };
    let sig = Signature::new(U256::ZERO, signed.signature().s(), signed.signature().v());
    let unsigned: TxEip1559 = signed.tx().clone();
    TxEnvelope::Eip1559(Signed::new_unhashed(unsigned, sig)).into()
}

#[test]
fn recovers_every_sender_in_block_order() {
    for txs in [1, 63, 64, 257] {
        let recovered = recover_senders(&block(txs)).expect("valid signatures");
        let senders: Vec<_> = recovered.iter().map(|tx| tx.sender()).collect();
        let expected: Vec<_> = (0..txs as u64).map(address).collect();
        assert_eq!(senders, expected, "{txs} transactions");
    }
}

#[test]
fn reports_the_first_bad_signature() {
    let mut txs = block(300);
    txs[250] = corrupt(&txs[250]);
    txs[170] = corrupt(&txs[170]);
    match recover_senders(&txs) {
        Err(ImportError::Signature { index, .. }) => assert_eq!(index, 170),
        other => panic!("expected a signature error, got {other:?}"),
    }
}
