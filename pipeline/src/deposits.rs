//! EIP-6110: a deposit event must have exactly the deposit contract's layout, or the block is
//! invalid. alloy-evm decodes deposit events as ABI, which accepts other offsets and sizes and so
//! builds requests of another length (a requests-hash mismatch, not the spec's
//! `InvalidDepositEventLayout`). The spec's check (`extract_deposit_data`) runs first, here.

use alloy_consensus::ReceiptEnvelope;
use alloy_evm::eth::eip6110::{DepositEvent, MAINNET_DEPOSIT_CONTRACT_ADDRESS};
use alloy_primitives::U256;
use alloy_sol_types::SolEvent;

/// Length of a deposit event's data: five offsets, five sizes, five padded fields.
const DEPOSIT_EVENT_BYTES: usize = 576;
/// Each field's (offset of its size word, size): pubkey, withdrawal credentials, amount,
/// signature, index.
const FIELDS: [(usize, usize); 5] = [(160, 48), (256, 32), (320, 8), (384, 96), (512, 8)];

/// Why a deposit event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deposit event in transaction {tx}: {reason}")]
pub struct DepositLayoutError {
    pub tx: usize,
    pub reason: &'static str,
}

/// Checks every deposit event of the block's receipts (Prague and later).
pub(crate) fn check_layouts(receipts: &[ReceiptEnvelope]) -> Result<(), DepositLayoutError> {
    for (tx, receipt) in receipts.iter().enumerate() {
        let deposits = receipt.logs().iter().filter(|log| {
            log.address == MAINNET_DEPOSIT_CONTRACT_ADDRESS
                && log.topics().first() == Some(&DepositEvent::SIGNATURE_HASH)
        });
        for log in deposits {
            check_layout(&log.data.data).map_err(|reason| DepositLayoutError { tx, reason })?;
        }
    }
    Ok(())
}

fn check_layout(data: &[u8]) -> Result<(), &'static str> {
    if data.len() != DEPOSIT_EVENT_BYTES {
        return Err("data is not 576 bytes");
    }
    let word = |at: usize| U256::from_be_slice(&data[at..at + 32]);
    for (i, (offset, size)) in FIELDS.into_iter().enumerate() {
        if word(i * 32) != U256::from(offset) {
            return Err("a field's offset is not the deposit contract's");
        }
        if word(offset) != U256::from(size) {
            return Err("a field's size is not the deposit contract's");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deposit event's data as the deposit contract emits it.
    fn valid() -> Vec<u8> {
        let mut data = vec![0u8; DEPOSIT_EVENT_BYTES];
        let mut put = |at: usize, value: usize| {
            data[at..at + 32].copy_from_slice(&U256::from(value).to_be_bytes::<32>());
        };
        for (i, (offset, size)) in FIELDS.into_iter().enumerate() {
            put(i * 32, offset);
            put(offset, size);
        }
        data
    }

    #[test]
    fn the_contracts_layout_passes_and_others_fail() {
        assert_eq!(check_layout(&valid()), Ok(()));
        assert!(check_layout(&valid()[..575]).is_err());
        let mut moved = valid();
        moved[31] = 161;
        assert!(check_layout(&moved).is_err());
        let mut resized = valid();
        resized[160 + 31] = 47;
        assert!(check_layout(&resized).is_err());
    }
}
