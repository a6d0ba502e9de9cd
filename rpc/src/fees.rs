//! Fee suggestions: `eth_gasPrice`, `eth_maxPriorityFeePerGas`, `eth_feeHistory` and
//! `eth_blobBaseFee`.

use crate::{
    chain::{head, resolve_tag},
    error::RpcError,
};
use alloy_consensus::Transaction as _;
use alloy_eips::{BlockNumberOrTag, eip7840::BlobParams};
use alloy_rpc_types_eth::FeeHistory;
use kestrel_storage::ChainView;
use kestrel_types::{ChainSpec, Fork, SealedBlock};

/// The priority fee Kestrel suggests (1 gwei). Ordering takes transactions by tip, but a
/// single-validator chain with room in its blocks has no auction to price in.
pub const SUGGESTED_TIP_WEI: u128 = 1_000_000_000;
/// Most blocks one `eth_feeHistory` covers (geth's `maxBlockHistory`).
pub const FEE_HISTORY_BLOCKS_MAX: u64 = 1024;
/// Most reward percentiles one `eth_feeHistory` may ask for.
pub const FEE_HISTORY_PERCENTILES_MAX: usize = 100;

/// `eth_feeHistory` over committed blocks. `next_base_fee` is the base fee after the head,
/// reported as the last `baseFeePerGas` entry when `newest` is the head. Kestrel does not take
/// blob transactions, so the blob fields are zero.
pub(crate) fn fee_history(
    chain: &impl ChainView,
    block_count: u64,
    newest: BlockNumberOrTag,
    percentiles: Option<&[f64]>,
    next_base_fee: u64,
) -> Result<FeeHistory, RpcError> {
    if let Some(percentiles) = percentiles {
        check_percentiles(percentiles)?;
    }
    let head = head(chain)?;
    let newest = resolve_tag(newest, head);
    if newest > head {
        return Err(RpcError::BeyondHead {
            requested: newest,
            head,
        });
    }
    let count = block_count.min(FEE_HISTORY_BLOCKS_MAX).min(newest + 1);
    if count == 0 {
        return Ok(FeeHistory::default());
    }
    let oldest = newest + 1 - count;

    let mut history = FeeHistory {
        oldest_block: oldest,
        reward: percentiles.map(|_| Vec::new()),
        ..FeeHistory::default()
    };
    for number in oldest..=newest {
        let header = if let Some(percentiles) = percentiles {
            let block = chain.block(number)?.ok_or(RpcError::HeaderNotFound)?;
            let rewards = block_rewards(&block, percentiles);
            history
                .reward
                .as_mut()
                .expect("set with percentiles")
                .push(rewards);
            block.header.clone()
        } else {
            chain.header(number)?.ok_or(RpcError::HeaderNotFound)?
        };
        history
            .base_fee_per_gas
            .push(header.base_fee_per_gas.unwrap_or_default().into());
        history.gas_used_ratio.push(if header.gas_limit == 0 {
            0.0
        } else {
            header.gas_used as f64 / header.gas_limit as f64
        });
    }
    let next = if newest < head {
        chain
            .header(newest + 1)?
            .ok_or(RpcError::HeaderNotFound)?
            .base_fee_per_gas
            .unwrap_or_default()
    } else {
        next_base_fee
    };
    history.base_fee_per_gas.push(next.into());
    history.base_fee_per_blob_gas = vec![0; count as usize + 1];
    history.blob_gas_used_ratio = vec![0.0; count as usize];
    Ok(history)
}

/// geth's rules: at most [`FEE_HISTORY_PERCENTILES_MAX`], each in 0..=100, strictly increasing.
fn check_percentiles(percentiles: &[f64]) -> Result<(), RpcError> {
    if percentiles.len() > FEE_HISTORY_PERCENTILES_MAX {
        return Err(RpcError::InvalidParams(format!(
            "too many reward percentiles: at most {FEE_HISTORY_PERCENTILES_MAX}"
        )));
    }
    for (i, p) in percentiles.iter().enumerate() {
        if !(0.0..=100.0).contains(p) || (i > 0 && *p <= percentiles[i - 1]) {
            return Err(RpcError::InvalidParams(format!(
                "invalid reward percentile: {p}"
            )));
        }
    }
    Ok(())
}

/// The tip paid at each percentile of the block's gas.
fn block_rewards(block: &SealedBlock, percentiles: &[f64]) -> Vec<u128> {
    let base_fee = block.header.base_fee_per_gas.unwrap_or_default();
    let mut cumulative_before = 0;
    let mut txs: Vec<(u64, u128)> = block
        .txs
        .iter()
        .zip(&block.receipts)
        .map(|(tx, receipt)| {
            let gas_used = receipt.cumulative_gas_used() - cumulative_before;
            cumulative_before = receipt.cumulative_gas_used();
            (
                gas_used,
                tx.tx().effective_tip_per_gas(base_fee).unwrap_or_default(),
            )
        })
        .collect();
    reward_percentiles(&mut txs, block.header.gas_used, percentiles)
}

/// geth's percentile rule: sort the transactions by tip; the reward at percentile p is the tip of
/// the first transaction at which the cumulative gas used reaches p% of the block's gas used.
/// `txs` holds (gas used, effective tip) pairs. An empty block rewards zero.
pub(crate) fn reward_percentiles(
    txs: &mut [(u64, u128)],
    block_gas_used: u64,
    percentiles: &[f64],
) -> Vec<u128> {
    if txs.is_empty() {
        return vec![0; percentiles.len()];
    }
    txs.sort_by_key(|(_, tip)| *tip);
    let mut index = 0;
    let mut gas_sum = txs[0].0;
    percentiles
        .iter()
        .map(|p| {
            let threshold = (block_gas_used as f64 * p / 100.0) as u64;
            while gas_sum < threshold && index < txs.len() - 1 {
                index += 1;
                gas_sum += txs[index].0;
            }
            txs[index].1
        })
        .collect()
}

/// The blob base fee of the block after `head`, under the fork the next block runs (its
/// timestamp is at least the head's). Kestrel's blocks carry no blobs, so this is the minimum.
pub(crate) fn next_blob_base_fee(spec: &ChainSpec, head: &alloy_consensus::Header) -> u128 {
    let params = match spec.fork_at(head.timestamp) {
        Fork::Cancun => BlobParams::cancun(),
        Fork::Prague => BlobParams::prague(),
    };
    head.next_block_blob_fee(params)
        .unwrap_or(alloy_eips::eip4844::BLOB_TX_MIN_BLOB_GASPRICE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, GAS_LIMIT, TestTx, tx_1559};
    use alloy_primitives::{Address, TxKind};

    #[test]
    fn percentiles_follow_cumulative_gas() {
        // Tips 1..=4 with gas 10, 20, 30, 40 (100 total), given out of order. The threshold is
        // truncated to whole gas, as geth does.
        let mut txs = vec![(30, 3), (10, 1), (40, 4), (20, 2)];
        let rewards = reward_percentiles(
            &mut txs,
            100,
            &[0.0, 10.0, 11.0, 30.0, 31.0, 60.0, 61.0, 100.0],
        );
        assert_eq!(rewards, [1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(reward_percentiles(&mut [], 0, &[25.0, 75.0]), [0, 0]);
        assert_eq!(
            reward_percentiles(&mut [(21_000, 7)], 21_000, &[50.0, 100.0]),
            [7, 7]
        );
    }

    #[test]
    fn percentiles_are_checked() {
        assert!(check_percentiles(&[0.0, 25.0, 100.0]).is_ok());
        assert!(check_percentiles(&[]).is_ok());
        for bad in [&[-1.0][..], &[101.0], &[50.0, 50.0], &[60.0, 40.0]] {
            let err = check_percentiles(bad).unwrap_err();
            assert_eq!(err.code(), -32602, "{bad:?}");
        }
        assert!(check_percentiles(&vec![1.0; FEE_HISTORY_PERCENTILES_MAX + 1]).is_err());
    }

    #[test]
    fn history_over_committed_blocks() {
        let mut chain = FakeChain::new();
        let sender = Address::repeat_byte(1);
        // Block 1: tips 2 gwei (fee cap allows) and 5 wei.
        let tx_a = tx_1559(
            sender,
            0,
            TxKind::Call(sender),
            10 * BASE_FEE as u128,
            2 * BASE_FEE as u128,
        );
        let tx_b = tx_1559(sender, 1, TxKind::Call(sender), 2 * BASE_FEE as u128, 5);
        chain.push_block(vec![
            TestTx {
                tx: tx_a,
                gas_used: 21_000,
                logs: vec![],
            },
            TestTx {
                tx: tx_b,
                gas_used: 63_000,
                logs: vec![],
            },
        ]);
        chain.push_block(Vec::new());

        let next = 123;
        let h = fee_history(
            &chain,
            2,
            BlockNumberOrTag::Latest,
            Some(&[10.0, 90.0]),
            next,
        )
        .unwrap();
        assert_eq!(h.oldest_block, 1);
        assert_eq!(
            h.base_fee_per_gas,
            [BASE_FEE as u128, BASE_FEE as u128, next as u128]
        );
        assert_eq!(h.gas_used_ratio, [84_000.0 / GAS_LIMIT as f64, 0.0]);
        // 10% of 84,000 gas is within the cheaper tip's 63,000; 90% needs the 2 gwei one.
        assert_eq!(
            h.reward,
            Some(vec![vec![5, 2 * BASE_FEE as u128], vec![0, 0]])
        );
        assert_eq!(h.base_fee_per_blob_gas, [0, 0, 0]);
        assert_eq!(h.blob_gas_used_ratio, [0.0, 0.0]);

        // Not ending at the head: the next entry is the following block's base fee.
        let h = fee_history(&chain, 5, BlockNumberOrTag::Number(1), None, next).unwrap();
        assert_eq!(h.oldest_block, 0);
        assert_eq!(h.base_fee_per_gas.len(), 3);
        assert_eq!(h.base_fee_per_gas[2], BASE_FEE as u128);
        assert_eq!(h.reward, None);

        let err = fee_history(&chain, 1, BlockNumberOrTag::Number(3), None, next).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request beyond head block: requested 3, head 2"
        );
        let empty = fee_history(&chain, 0, BlockNumberOrTag::Latest, None, next).unwrap();
        assert!(empty.base_fee_per_gas.is_empty() && empty.gas_used_ratio.is_empty());
    }
}
