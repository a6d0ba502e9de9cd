//! `eth_getLogs` over committed blocks, bounded in blocks scanned and logs returned.

use crate::{
    BLOCK_RANGE_MAX, LOGS_MAX,
    chain::{head, resolve_tag},
    error::RpcError,
};
use alloy_rpc_types_eth::{Filter, FilterBlockOption, Log};
use kestrel_storage::ChainView;
use kestrel_types::{BlockNumber, SealedBlock};
use std::ops::RangeInclusive;

/// The blocks a filter covers. A missing bound means `latest`; a range reaching past the head is
/// cut at the head (geth does the same), one starting past it is empty.
pub(crate) fn filter_range(
    chain: &impl ChainView,
    filter: &Filter,
) -> Result<RangeInclusive<BlockNumber>, RpcError> {
    let head = head(chain)?;
    match filter.block_option {
        FilterBlockOption::AtBlockHash(hash) => {
            let n = chain.block_number(hash)?.ok_or(RpcError::UnknownBlock)?;
            Ok(n..=n)
        }
        FilterBlockOption::Range { from_block, to_block } => {
            let from = resolve_tag(from_block.unwrap_or_default(), head);
            let to = resolve_tag(to_block.unwrap_or_default(), head);
            if from > to {
                return Err(RpcError::InvalidBlockRange);
            }
            let to = to.min(head);
            if to.saturating_sub(from) >= BLOCK_RANGE_MAX {
                return Err(RpcError::BlockRangeTooLarge);
            }
            Ok(from..=to)
        }
    }
}

/// The logs in `range` that match `filter`, in chain order.
pub(crate) fn get_logs(chain: &impl ChainView, filter: &Filter) -> Result<Vec<Log>, RpcError> {
    let mut logs = Vec::new();
    for number in filter_range(chain, filter)? {
        // The header's bloom rules out most blocks without reading their bodies.
        let Some(header) = chain.header(number)? else { continue };
        if !filter.matches_bloom(header.logs_bloom) {
            continue;
        }
        let Some(block) = chain.block(number)? else { continue };
        append_block_logs(&block, filter, &mut logs)?;
    }
    Ok(logs)
}

/// Appends the block's logs that match `filter` (address and topics), failing once more than
/// [`LOGS_MAX`] are collected.
pub(crate) fn append_block_logs(
    block: &SealedBlock,
    filter: &Filter,
    logs: &mut Vec<Log>,
) -> Result<(), RpcError> {
    let mut log_index = 0u64;
    for (tx_index, (tx, receipt)) in block.txs.iter().zip(&block.receipts).enumerate() {
        for log in receipt.logs() {
            if filter.matches(log) {
                if logs.len() == LOGS_MAX {
                    return Err(RpcError::TooManyLogs);
                }
                logs.push(Log {
                    inner: log.clone(),
                    block_hash: Some(block.hash),
                    block_number: Some(block.number()),
                    block_timestamp: Some(block.header.timestamp),
                    transaction_hash: Some(tx.hash()),
                    transaction_index: Some(tx_index as u64),
                    log_index: Some(log_index),
                    removed: false,
                });
            }
            log_index += 1;
        }
    }
    Ok(())
}
