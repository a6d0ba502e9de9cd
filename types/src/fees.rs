//! The base fee rule under delayed execution: what a block's successor pays is computed from
//! what the block *committed* (the sum of its transactions' gas limits), known when it is ordered,
//! not from the gas it used, known only after execution.

use alloy_eips::eip1559::BaseFeeParams;

/// What the next block's base fee is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentFees {
    pub gas_limit: u64,
    pub gas_committed: u64,
    pub base_fee: u64,
}

impl ParentFees {
    /// The fees of a block known only by its header (the genesis block): its gas used stands in
    /// for the gas it committed.
    pub fn of_header(header: &alloy_consensus::Header) -> Self {
        Self {
            gas_limit: header.gas_limit,
            gas_committed: header.gas_used,
            base_fee: header.base_fee_per_gas.unwrap_or_default(),
        }
    }
}

/// The base fee of the block after `parent`: EIP-1559 applied to the gas the parent committed.
pub fn next_base_fee(parent: ParentFees) -> u64 {
    alloy_eips::calc_next_block_base_fee(
        parent.gas_committed.min(parent.gas_limit),
        parent.gas_limit,
        parent.base_fee,
        BaseFeeParams::ethereum(),
    )
}

/// Most transactions in one block: a bound on a block's work besides its gas.
pub const BLOCK_TXS_MAX: usize = 50_000;

/// Milliseconds since the Unix epoch: the clock consensus is driven with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_fee_follows_eip1559_over_committed_gas() {
        let full = ParentFees {
            gas_limit: 200_000_000,
            gas_committed: 200_000_000,
            base_fee: 1_000_000_000,
        };
        assert_eq!(next_base_fee(full), 1_125_000_000);
        let empty = ParentFees {
            gas_committed: 0,
            ..full
        };
        assert_eq!(next_base_fee(empty), 875_000_000);
        let target = ParentFees {
            gas_committed: 100_000_000,
            ..full
        };
        assert_eq!(next_base_fee(target), 1_000_000_000);
    }
}
