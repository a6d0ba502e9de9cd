//! Fee suggestions: `eth_gasPrice`, `eth_maxPriorityFeePerGas` and `eth_feeHistory`.

use crate::{
    chain::{head, resolve_tag},
    error::RpcError,
};
use alloy_consensus::Transaction as _;
use alloy_eips::BlockNumberOrTag;
use alloy_rpc_types_eth::FeeHistory;
use kestrel_storage::ChainView;
use kestrel_types::SealedBlock;

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
        return Err(RpcError::BeyondHead { requested: newest, head });
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
            history.reward.as_mut().expect("set with percentiles").push(rewards);
            block.header
        } else {
            chain.header(number)?.ok_or(RpcError::HeaderNotFound)?
        };
        history.base_fee_per_gas.push(header.base_fee_per_gas.unwrap_or_default().into());
        history.gas_used_ratio.push(if header.gas_limit == 0 {
            0.0
        } else {
            header.gas_used as f64 / header.gas_limit as f64
        });
    }
    let next = if newest < head {
        chain.header(newest + 1)?.ok_or(RpcError::HeaderNotFound)?.base_fee_per_gas.unwrap_or_default()
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
            return Err(RpcError::InvalidParams(format!("invalid reward percentile: {p}")));
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
            (gas_used, tx.tx().effective_tip_per_gas(base_fee).unwrap_or_default())
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
