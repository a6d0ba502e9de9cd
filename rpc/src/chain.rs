//! Committed blocks, transactions and receipts in their JSON-RPC shapes, and what block a tag or
//! id names.
//!
//! # Block tags
//!
//! RPC serves only *committed* blocks: executed, their state root computed, and durably written.
//! Kestrel's single-validator ordering finalizes a block when it proposes it (there is no fork to
//! choose between), so `latest`, `pending`, `safe` and `finalized` all name the committed head;
//! `earliest` is genesis. Only the state after the head is kept: state queries for any other
//! block answer "historical state not available".

use crate::error::RpcError;
use alloy_consensus::{Sealed, Transaction as _, TxEnvelope, transaction::Recovered};
use alloy_consensus::transaction::TransactionInfo;
use alloy_eips::{BlockId, BlockNumberOrTag, eip4895::Withdrawals};
use alloy_primitives::{B256, U256};
use alloy_rlp::Encodable;
use alloy_rpc_types_eth::{Block, BlockTransactions, Header, Log, Transaction, TransactionReceipt};
use kestrel_storage::{ChainView, StorageError};
use kestrel_types::{BlockNumber, RecoveredTx, SealedBlock};

/// The committed head. The node writes genesis before it serves RPC, so an empty store is a bug.
pub(crate) fn head(chain: &impl ChainView) -> Result<BlockNumber, RpcError> {
    chain.head()?.ok_or_else(|| RpcError::Internal("no committed block".into()))
}

/// The block number a tag names (see the module docs); may be past the head.
pub(crate) fn resolve_tag(tag: BlockNumberOrTag, head: BlockNumber) -> BlockNumber {
    match tag {
        BlockNumberOrTag::Latest
        | BlockNumberOrTag::Pending
        | BlockNumberOrTag::Safe
        | BlockNumberOrTag::Finalized => head,
        BlockNumberOrTag::Earliest => 0,
        BlockNumberOrTag::Number(n) => n,
    }
}

/// The committed block `id` names, `None` if there is none (unknown hash, number past the head).
pub(crate) fn block_number(
    chain: &impl ChainView,
    id: BlockId,
    head: BlockNumber,
) -> Result<Option<BlockNumber>, StorageError> {
    match id {
        BlockId::Number(tag) => Ok(Some(resolve_tag(tag, head)).filter(|n| *n <= head)),
        BlockId::Hash(hash) => chain.block_number(hash.block_hash),
    }
}

/// Checks that a state query (balance, nonce, code, storage, call) is for the state the store
/// holds: the committed head's, whose number it returns. A missing id means `latest`.
pub(crate) fn check_state_block(
    chain: &impl ChainView,
    id: Option<BlockId>,
) -> Result<BlockNumber, RpcError> {
    let head = head(chain)?;
    match block_number(chain, id.unwrap_or_default(), head)? {
        None => Err(RpcError::HeaderNotFound),
        Some(n) if n == head => Ok(head),
        Some(_) => Err(RpcError::HistoricalState),
    }
}

/// A committed block by id, with its transactions and receipts.
pub(crate) fn find_block(chain: &impl ChainView, id: BlockId) -> Result<Option<SealedBlock>, RpcError> {
    let head = head(chain)?;
    Ok(match block_number(chain, id, head)? {
        Some(n) => chain.block(n)?,
        None => None,
    })
}

/// A block as `eth_getBlockBy*` returns it: full transactions or their hashes.
pub(crate) fn rpc_block(block: &SealedBlock, full: bool) -> Block {
    let withdrawals = block.header.withdrawals_root.map(|_| Withdrawals::default());
    let transactions = if full {
        BlockTransactions::Full((0..block.txs.len()).map(|i| rpc_transaction(block, i)).collect())
    } else {
        BlockTransactions::Hashes(block.txs.iter().map(RecoveredTx::hash).collect())
    };
    let header = Header::from_consensus(
        Sealed::new_unchecked(block.header.clone(), block.hash),
        // Post-merge chains report zero (execution-apis#570 deprecates the field).
        Some(U256::ZERO),
        Some(U256::from(block_size(block, withdrawals.as_ref()))),
    );
    Block { header, uncles: Vec::new(), transactions, withdrawals }
}

/// The length of the block's RLP encoding, which `size` reports.
fn block_size(block: &SealedBlock, withdrawals: Option<&Withdrawals>) -> usize {
    let body = alloy_consensus::BlockBody::<TxEnvelope> {
        transactions: block.txs.iter().map(|tx| tx.tx().clone()).collect(),
        ommers: Vec::new(),
        withdrawals: withdrawals.cloned(),
    };
    alloy_consensus::Block { header: block.header.clone(), body }.length()
}

/// Transaction `index` of a committed block.
pub(crate) fn rpc_transaction(block: &SealedBlock, index: usize) -> Transaction {
    let tx = &block.txs[index];
    let info = TransactionInfo {
        hash: Some(tx.hash()),
        index: Some(index as u64),
        block_hash: Some(block.hash),
        block_number: Some(block.number()),
        base_fee: block.header.base_fee_per_gas,
        block_timestamp: None,
    };
    Transaction::from_transaction(Recovered::new_unchecked(tx.tx().clone(), tx.sender()), info)
}

/// A transaction still in the pool: no block fields; `gasPrice` is what it would pay at
/// `next_base_fee` (as geth reports pending transactions).
pub(crate) fn pending_transaction(tx: &RecoveredTx, next_base_fee: u64) -> Transaction {
    let info = TransactionInfo {
        hash: Some(tx.hash()),
        base_fee: Some(next_base_fee),
        ..TransactionInfo::default()
    };
    Transaction::from_transaction(Recovered::new_unchecked(tx.tx().clone(), tx.sender()), info)
}

/// The receipts of all of a committed block's transactions.
pub(crate) fn rpc_receipts(block: &SealedBlock) -> Vec<TransactionReceipt> {
    let mut first_log_index = 0;
    (0..block.txs.len())
        .map(|i| {
            let receipt = rpc_receipt_at(block, i, first_log_index);
            first_log_index += block.receipts[i].logs().len() as u64;
            receipt
        })
        .collect()
}

/// The receipt of transaction `index` of a committed block.
pub(crate) fn rpc_receipt(block: &SealedBlock, index: usize) -> TransactionReceipt {
    let first_log_index = block.receipts[..index].iter().map(|r| r.logs().len() as u64).sum();
    rpc_receipt_at(block, index, first_log_index)
}

/// `first_log_index`: logs of the block's earlier transactions (log indexes are block-wide).
fn rpc_receipt_at(block: &SealedBlock, index: usize, first_log_index: u64) -> TransactionReceipt {
    assert_eq!(block.txs.len(), block.receipts.len(), "block {} receipts", block.number());
    let tx = &block.txs[index];
    let receipt = &block.receipts[index];
    let cumulative_before = index.checked_sub(1).map_or(0, |i| block.receipts[i].cumulative_gas_used());
    let mut log_index = first_log_index;
    let inner = receipt.clone().map_logs(|inner| {
        let log = Log {
            inner,
            block_hash: Some(block.hash),
            block_number: Some(block.number()),
            block_timestamp: Some(block.header.timestamp),
            transaction_hash: Some(tx.hash()),
            transaction_index: Some(index as u64),
            log_index: Some(log_index),
            removed: false,
        };
        log_index += 1;
        log
    });
    TransactionReceipt {
        inner,
        transaction_hash: tx.hash(),
        transaction_index: Some(index as u64),
        block_hash: Some(block.hash),
        block_number: Some(block.number()),
        gas_used: receipt.cumulative_gas_used() - cumulative_before,
        effective_gas_price: tx.tx().effective_gas_price(block.header.base_fee_per_gas),
        blob_gas_used: None,
        blob_gas_price: None,
        from: tx.sender(),
        to: tx.tx().to(),
        contract_address: tx.tx().is_create().then(|| tx.sender().create(tx.nonce())),
    }
}

/// Where a committed transaction is: its block and index.
pub(crate) fn find_transaction(
    chain: &impl ChainView,
    hash: B256,
) -> Result<Option<(SealedBlock, usize)>, RpcError> {
    let Some((number, index)) = chain.tx_location(hash)? else { return Ok(None) };
    let block = chain.block(number)?.ok_or_else(|| {
        RpcError::Internal(format!("transaction {hash} indexed in missing block {number}"))
    })?;
    Ok(Some((block, index as usize)))
}
