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
        FilterBlockOption::Range {
            from_block,
            to_block,
        } => {
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
    logs_in(chain, filter, filter_range(chain, filter)?)
}

/// The logs in the blocks `range` (committed ones) that match `filter`'s addresses and topics.
pub(crate) fn logs_in(
    chain: &impl ChainView,
    filter: &Filter,
    range: RangeInclusive<BlockNumber>,
) -> Result<Vec<Log>, RpcError> {
    let mut logs = Vec::new();
    for number in range {
        // The header's bloom rules out most blocks without reading their bodies.
        let Some(header) = chain.header(number)? else {
            continue;
        };
        if !filter.matches_bloom(header.logs_bloom) {
            continue;
        }
        let Some(block) = chain.block(number)? else {
            continue;
        };
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
    for (tx_index, log_index, log) in positioned_logs(block) {
        if filter.matches(log) {
            if logs.len() == LOGS_MAX {
                return Err(RpcError::TooManyLogs);
            }
            logs.push(rpc_log(block, tx_index, log_index, log));
        }
    }
    Ok(())
}

/// Every log of the block as RPC shows it, in block order: what the subscription feed computes
/// once per block for all its `logs` subscribers.
pub(crate) fn all_block_logs(block: &SealedBlock) -> Vec<Log> {
    positioned_logs(block)
        .map(|(tx_index, log_index, log)| rpc_log(block, tx_index, log_index, log))
        .collect()
}

/// The block's logs with their transaction's index and their index in the block.
fn positioned_logs(
    block: &SealedBlock,
) -> impl Iterator<Item = (usize, u64, &alloy_primitives::Log)> {
    block
        .receipts
        .iter()
        .enumerate()
        .flat_map(|(tx_index, receipt)| receipt.logs().iter().map(move |log| (tx_index, log)))
        .zip(0u64..)
        .map(|((tx_index, log), log_index)| (tx_index, log_index, log))
}

/// A log with the block and transaction fields RPC adds to it.
fn rpc_log(
    block: &SealedBlock,
    tx_index: usize,
    log_index: u64,
    log: &alloy_primitives::Log,
) -> Log {
    Log {
        inner: log.clone(),
        block_hash: Some(block.hash),
        block_number: Some(block.number()),
        block_timestamp: Some(block.header.timestamp),
        transaction_hash: Some(block.txs[tx_index].hash()),
        transaction_index: Some(tx_index as u64),
        log_index: Some(log_index),
        removed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, TestTx, log, topic, tx_1559};
    use alloy_primitives::{Address, B256, TxKind, address};

    const TOKEN: Address = address!("000000000000000000000000000000000000701e");
    const OTHER: Address = address!("00000000000000000000000000000000000000ff");

    fn filter(json: serde_json::Value) -> Filter {
        serde_json::from_value(json).unwrap()
    }

    /// Blocks 1..=3, each with one transaction emitting the given logs; block 2 has two
    /// transactions so log indexes span transactions.
    fn chain() -> FakeChain {
        let mut chain = FakeChain::new();
        let tx = |nonce, logs| TestTx {
            tx: tx_1559(OTHER, nonce, TxKind::Call(TOKEN), 2 * BASE_FEE as u128, 1),
            gas_used: 50_000,
            logs,
        };
        chain.push_block(vec![tx(0, vec![log(TOKEN, vec![topic(1), topic(10)])])]);
        chain.push_block(vec![
            tx(
                1,
                vec![
                    log(OTHER, vec![topic(1)]),
                    log(TOKEN, vec![topic(2), topic(10), topic(20)]),
                ],
            ),
            tx(2, vec![log(TOKEN, vec![topic(1), topic(11)])]),
        ]);
        chain.push_block(vec![tx(3, vec![log(TOKEN, vec![topic(3)])])]);
        chain
    }

    fn positions(logs: &[Log]) -> Vec<(u64, u64, u64)> {
        logs.iter()
            .map(|l| {
                (
                    l.block_number.unwrap(),
                    l.transaction_index.unwrap(),
                    l.log_index.unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn ranges_default_to_latest_and_stop_at_the_head() {
        let chain = chain();
        assert_eq!(
            filter_range(&chain, &filter(serde_json::json!({}))).unwrap(),
            3..=3
        );
        let f = filter(serde_json::json!({"fromBlock": "0x1", "toBlock": "0x64"}));
        assert_eq!(filter_range(&chain, &f).unwrap(), 1..=3);
        let f = filter(serde_json::json!({"fromBlock": "0x9", "toBlock": "0x64"}));
        assert!(filter_range(&chain, &f).unwrap().is_empty());
        let f = filter(serde_json::json!({"fromBlock": "earliest", "toBlock": "pending"}));
        assert_eq!(filter_range(&chain, &f).unwrap(), 0..=3);
        let f = filter(serde_json::json!({"blockHash": chain.blocks[2].hash}));
        assert_eq!(filter_range(&chain, &f).unwrap(), 2..=2);
    }

    #[test]
    fn bad_ranges_are_refused() {
        let chain = chain();
        let f = filter(serde_json::json!({"fromBlock": "0x3", "toBlock": "0x1"}));
        assert!(matches!(
            filter_range(&chain, &f),
            Err(RpcError::InvalidBlockRange)
        ));
        let f = filter(serde_json::json!({"blockHash": B256::repeat_byte(9)}));
        assert!(matches!(
            filter_range(&chain, &f),
            Err(RpcError::UnknownBlock)
        ));

        let mut long = FakeChain::new();
        long.blocks = (0..=BLOCK_RANGE_MAX)
            .map(|_| chain.blocks[0].clone())
            .collect();
        let f = filter(serde_json::json!({"fromBlock": "earliest"}));
        assert!(matches!(
            filter_range(&long, &f),
            Err(RpcError::BlockRangeTooLarge)
        ));
        let f = filter(serde_json::json!({"fromBlock": "0x1"}));
        assert_eq!(
            filter_range(&long, &f).unwrap().count() as u64,
            BLOCK_RANGE_MAX
        );
    }

    #[test]
    fn address_and_topic_matching() {
        let chain = chain();
        let all = serde_json::json!({"fromBlock": "earliest"});
        let query = |mut extra: serde_json::Value| {
            extra
                .as_object_mut()
                .unwrap()
                .extend(all.as_object().unwrap().clone());
            positions(&get_logs(&chain, &filter(extra)).unwrap())
        };
        assert_eq!(
            query(serde_json::json!({})),
            [(1, 0, 0), (2, 0, 0), (2, 0, 1), (2, 1, 2), (3, 0, 0)]
        );
        assert_eq!(
            query(serde_json::json!({"address": TOKEN})),
            [(1, 0, 0), (2, 0, 1), (2, 1, 2), (3, 0, 0)]
        );
        assert_eq!(
            query(serde_json::json!({"address": [OTHER, TOKEN]})).len(),
            5
        );
        // Position 0 only.
        assert_eq!(
            query(serde_json::json!({"topics": [topic(1)]})),
            [(1, 0, 0), (2, 0, 0), (2, 1, 2)]
        );
        // null is a wildcard; a position the log does not have never matches.
        assert_eq!(
            query(serde_json::json!({"topics": [null, topic(10)]})),
            [(1, 0, 0), (2, 0, 1)]
        );
        assert_eq!(
            query(serde_json::json!({"topics": [null, null, topic(20)]})),
            [(2, 0, 1)]
        );
        assert_eq!(
            query(serde_json::json!({"topics": [null, null, null, topic(20)]})),
            []
        );
        // OR within a position, AND across positions.
        assert_eq!(
            query(serde_json::json!({"topics": [[topic(1), topic(2)], [topic(10), topic(11)]]})),
            [(1, 0, 0), (2, 0, 1), (2, 1, 2)]
        );
        assert_eq!(
            query(serde_json::json!({"address": OTHER, "topics": [topic(2)]})),
            []
        );
        let by_hash =
            filter(serde_json::json!({"blockHash": chain.blocks[2].hash, "address": TOKEN}));
        let logs = get_logs(&chain, &by_hash).unwrap();
        assert_eq!(positions(&logs), [(2, 0, 1), (2, 1, 2)]);
        assert_eq!(logs[1].block_hash, Some(chain.blocks[2].hash));
        assert_eq!(
            logs[1].transaction_hash,
            Some(chain.blocks[2].txs[1].hash())
        );
        assert!(!logs[1].removed);
    }

    #[test]
    fn too_many_logs_is_an_error() {
        let mut chain = FakeChain::new();
        let logs = (0..=LOGS_MAX).map(|_| log(TOKEN, vec![])).collect();
        let tx = tx_1559(OTHER, 0, TxKind::Call(TOKEN), 2 * BASE_FEE as u128, 1);
        chain.push_block(vec![TestTx {
            tx,
            gas_used: 21_000,
            logs,
        }]);
        let err = get_logs(&chain, &filter(serde_json::json!({}))).unwrap_err();
        assert!(matches!(err, RpcError::TooManyLogs));
        assert_eq!(err.code(), -32005);
        assert_eq!(err.to_string(), "query returned more than 10000 results");
        let narrower = filter(serde_json::json!({"address": OTHER}));
        assert!(get_logs(&chain, &narrower).unwrap().is_empty());
    }
}
