//! Committed blocks, transactions and receipts in their JSON-RPC shapes, and what block a tag or
//! id names (the crate docs explain the tags).

use crate::error::RpcError;
use alloy_consensus::{
    Sealed, Transaction as _,
    transaction::{Recovered, TransactionInfo},
};
use alloy_eips::{BlockId, BlockNumberOrTag, eip4895::Withdrawals};
use alloy_primitives::{B256, U256};
use alloy_rlp::Encodable;
use alloy_rpc_types_eth::{Block, BlockTransactions, Header, Log, Transaction, TransactionReceipt};
use kestrel_storage::{ChainView, IndexedReceipt, StorageError};
use kestrel_types::{BlockNumber, RecoveredTx, SealedBlock};
use std::sync::Arc;

/// The committed head; none only while state sync fills the database (the node writes genesis
/// before it serves RPC).
pub(crate) fn head(chain: &impl ChainView) -> Result<BlockNumber, RpcError> {
    chain.head()?.ok_or(RpcError::Syncing)
}

/// The block number a tag names (see the crate docs); may be past the head.
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

/// The committed block whose state a query (balance, nonce, code, storage, call) asks for. A
/// missing id means `latest`. Whether its state is still kept is the store's to say
/// (`Reader::state_at`).
pub(crate) fn state_block(
    chain: &impl ChainView,
    id: Option<BlockId>,
) -> Result<BlockNumber, RpcError> {
    let head = head(chain)?;
    block_number(chain, id.unwrap_or_default(), head)?.ok_or(RpcError::HeaderNotFound)
}

/// A committed block by id, with its transactions and receipts.
pub(crate) fn find_block(
    chain: &impl ChainView,
    id: BlockId,
) -> Result<Option<Arc<SealedBlock>>, RpcError> {
    let head = head(chain)?;
    Ok(match block_number(chain, id, head)? {
        Some(n) => chain.block(n)?,
        None => None,
    })
}

/// A block as `eth_getBlockBy*` returns it: full transactions or their hashes.
pub(crate) fn rpc_block(block: &SealedBlock, full: bool) -> Block {
    let withdrawals = block
        .header
        .withdrawals_root
        .map(|_| Withdrawals::default());
    let transactions = if full {
        BlockTransactions::Full(
            (0..block.txs.len())
                .map(|i| rpc_transaction(block, i))
                .collect(),
        )
    } else {
        BlockTransactions::Hashes(block.txs.iter().map(RecoveredTx::hash).collect())
    };
    let header = Header::from_consensus(
        Sealed::new_unchecked(block.header.clone(), block.hash),
        // Post-merge chains report zero (execution-apis#570 deprecates the field).
        Some(U256::ZERO),
        Some(U256::from(block_size(block, withdrawals.as_ref()))),
    );
    Block {
        header,
        uncles: Vec::new(),
        transactions,
        withdrawals,
    }
}

/// The length of the block's RLP encoding, which `size` reports, from the transactions' kept
/// bytes: in a block body a legacy transaction is its encoding (an RLP list), a typed one is its
/// encoding wrapped in an RLP string.
fn block_size(block: &SealedBlock, withdrawals: Option<&Withdrawals>) -> usize {
    let txs: usize = block
        .txs
        .iter()
        .map(|tx| match tx.tx().is_legacy() {
            true => tx.encoded_len(),
            false => alloy_rlp::length_of_length(tx.encoded_len()) + tx.encoded_len(),
        })
        .sum();
    // The empty ommers list: one byte.
    let payload = block.header.length()
        + alloy_rlp::length_of_length(txs)
        + txs
        + 1
        + withdrawals.map_or(0, Encodable::length);
    alloy_rlp::length_of_length(payload) + payload
}

/// What a transaction's and a receipt's JSON take from their block.
pub(crate) struct BlockInfo {
    pub hash: B256,
    pub number: BlockNumber,
    pub timestamp: u64,
    pub base_fee: Option<u64>,
}

impl BlockInfo {
    fn new(hash: B256, header: &alloy_consensus::Header) -> Self {
        Self {
            hash,
            number: header.number,
            timestamp: header.timestamp,
            base_fee: header.base_fee_per_gas,
        }
    }

    fn of(block: &SealedBlock) -> Self {
        Self::new(block.hash, &block.header)
    }
}

/// Transaction `index` of a committed block.
pub(crate) fn rpc_transaction(block: &SealedBlock, index: usize) -> Transaction {
    rpc_transaction_at(&block.txs[index], &BlockInfo::of(block), index)
}

fn rpc_transaction_at(tx: &RecoveredTx, block: &BlockInfo, index: usize) -> Transaction {
    let info = TransactionInfo {
        hash: Some(tx.hash()),
        index: Some(index as u64),
        block_hash: Some(block.hash),
        block_number: Some(block.number),
        base_fee: block.base_fee,
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
    assert_eq!(
        block.txs.len(),
        block.receipts.len(),
        "block {} receipts",
        block.number()
    );
    let info = BlockInfo::of(block);
    let (mut gas_used_before, mut logs_before) = (0, 0);
    block
        .txs
        .iter()
        .zip(&block.receipts)
        .enumerate()
        .map(|(index, (tx, receipt))| {
            let indexed = IndexedReceipt {
                receipt: receipt.clone(),
                gas_used_before,
                logs_before,
            };
            gas_used_before = receipt.cumulative_gas_used();
            logs_before += receipt.logs().len() as u64;
            rpc_receipt(tx, indexed, &info, index)
        })
        .collect()
}

/// The receipt of transaction `index` of a block.
fn rpc_receipt(
    tx: &RecoveredTx,
    indexed: IndexedReceipt,
    block: &BlockInfo,
    index: usize,
) -> TransactionReceipt {
    let IndexedReceipt {
        receipt,
        gas_used_before,
        logs_before,
    } = indexed;
    let gas_used = receipt.cumulative_gas_used() - gas_used_before;
    let mut log_index = logs_before;
    let inner = receipt.map_logs(|inner| {
        let log = Log {
            inner,
            block_hash: Some(block.hash),
            block_number: Some(block.number),
            block_timestamp: Some(block.timestamp),
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
        block_number: Some(block.number),
        gas_used,
        effective_gas_price: tx.tx().effective_gas_price(block.base_fee),
        blob_gas_used: None,
        blob_gas_price: None,
        from: tx.sender(),
        to: tx.tx().to(),
        contract_address: tx.tx().is_create().then(|| tx.sender().create(tx.nonce())),
    }
}

/// A committed transaction by hash: its block's fields, its index and the transaction, decoded
/// alone (a lookup must not decode the whole block).
fn find_transaction(
    chain: &impl ChainView,
    hash: B256,
) -> Result<Option<(BlockInfo, usize, RecoveredTx)>, RpcError> {
    let Some((number, index)) = chain.tx_location(hash)? else {
        return Ok(None);
    };
    let index = index as usize;
    // One snapshot: the index and the block it points to are written together.
    let (Some(header), Some(block_hash), Some(tx)) = (
        chain.header(number)?,
        chain.block_hash(number)?,
        chain.transaction(number, index)?,
    ) else {
        panic!("transaction {hash} indexed in missing block {number}");
    };
    Ok(Some((BlockInfo::new(block_hash, &header), index, tx)))
}

/// `eth_getTransactionByHash` for committed transactions.
pub(crate) fn transaction_by_hash(
    chain: &impl ChainView,
    hash: B256,
) -> Result<Option<Transaction>, RpcError> {
    Ok(find_transaction(chain, hash)?
        .map(|(block, index, tx)| rpc_transaction_at(&tx, &block, index)))
}

/// `eth_getTransactionReceipt`: decodes the one transaction and receipt, not the block.
pub(crate) fn transaction_receipt(
    chain: &impl ChainView,
    hash: B256,
) -> Result<Option<TransactionReceipt>, RpcError> {
    let Some((block, index, tx)) = find_transaction(chain, hash)? else {
        return Ok(None);
    };
    let indexed = chain.receipt(block.number, index)?.unwrap_or_else(|| {
        panic!(
            "transaction {hash} has no receipt in block {}",
            block.number
        )
    });
    Ok(Some(rpc_receipt(&tx, indexed, &block, index)))
}

/// An account proof as `eth_getProof` answers it; each storage proof under the key as given.
pub(crate) fn rpc_proof(
    proof: kestrel_storage::AccountProof,
    keys: Vec<alloy_serde::JsonStorageKey>,
) -> alloy_rpc_types_eth::EIP1186AccountProofResponse {
    // An absent account reads as an empty one: no code (its hash is keccak of nothing).
    let info = proof
        .info
        .unwrap_or(kestrel_types::AccountInfo::with_balance(U256::ZERO));
    alloy_rpc_types_eth::EIP1186AccountProofResponse {
        address: proof.address,
        balance: info.balance,
        code_hash: info.code_hash,
        nonce: info.nonce,
        storage_hash: proof.storage_root,
        account_proof: proof.proof,
        storage_proof: proof
            .storage
            .into_iter()
            .zip(keys)
            .map(|(slot, key)| alloy_rpc_types_eth::EIP1186StorageProof {
                key,
                value: slot.value,
                proof: slot.proof,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BASE_FEE, FakeChain, TestTx, log, tx_1559, tx_legacy};
    use alloy_eips::RpcBlockHash;
    use alloy_primitives::{Address, TxKind, address};

    const ALICE: Address = address!("00000000000000000000000000000000000a11ce");
    const BOB: Address = address!("0000000000000000000000000000000000000b0b");

    /// Genesis, then block 1: a legacy transfer (2 logs), a creation (no logs), an EIP-1559
    /// transfer (1 log).
    fn chain() -> FakeChain {
        let mut chain = FakeChain::new();
        let logs = |n: usize| {
            (0..n)
                .map(|i| log(BOB, vec![B256::with_last_byte(i as u8)]))
                .collect()
        };
        chain.push_block(vec![
            TestTx {
                tx: tx_legacy(ALICE, 0, TxKind::Call(BOB), 3 * BASE_FEE as u128),
                gas_used: 30_000,
                logs: logs(2),
            },
            TestTx {
                tx: tx_legacy(ALICE, 1, TxKind::Create, 2 * BASE_FEE as u128),
                gas_used: 50_000,
                logs: logs(0),
            },
            TestTx {
                tx: tx_1559(BOB, 7, TxKind::Call(ALICE), 5 * BASE_FEE as u128, 2),
                gas_used: 21_000,
                logs: logs(1),
            },
        ]);
        chain
    }

    /// `size` from the kept bytes is the length of the block alloy encodes, with and without
    /// withdrawals.
    #[test]
    fn block_size_is_the_encoded_length() {
        let chain = chain();
        let block = chain.block(1).unwrap().unwrap();
        let withdrawals = Withdrawals::new(vec![alloy_eips::eip4895::Withdrawal {
            index: 1,
            validator_index: 2,
            address: BOB,
            amount: 3,
        }]);
        for withdrawals in [None, Some(withdrawals)] {
            let encoded = alloy_consensus::Block {
                header: block.header.clone(),
                body: alloy_consensus::BlockBody::<alloy_consensus::TxEnvelope> {
                    transactions: block.txs.iter().map(|tx| tx.tx().clone()).collect(),
                    ommers: Vec::new(),
                    withdrawals: withdrawals.clone(),
                },
            };
            let mut out = Vec::new();
            encoded.encode(&mut out);
            assert_eq!(block_size(&block, withdrawals.as_ref()), out.len());
        }
    }

    #[test]
    fn tags_name_the_committed_head() {
        for tag in [
            BlockNumberOrTag::Latest,
            BlockNumberOrTag::Pending,
            BlockNumberOrTag::Safe,
            BlockNumberOrTag::Finalized,
        ] {
            assert_eq!(resolve_tag(tag, 42), 42, "{tag}");
        }
        assert_eq!(resolve_tag(BlockNumberOrTag::Earliest, 42), 0);
        assert_eq!(resolve_tag(BlockNumberOrTag::Number(50), 42), 50);
    }

    #[test]
    fn state_blocks_are_committed_blocks() {
        let chain = chain();
        let head_hash = chain.blocks[1].hash;
        assert_eq!(state_block(&chain, None).unwrap(), 1);
        assert_eq!(state_block(&chain, Some(BlockId::latest())).unwrap(), 1);
        assert_eq!(state_block(&chain, Some(BlockId::pending())).unwrap(), 1);
        assert_eq!(state_block(&chain, Some(BlockId::number(1))).unwrap(), 1);
        assert_eq!(
            state_block(&chain, Some(BlockId::from(head_hash))).unwrap(),
            1
        );
        assert_eq!(state_block(&chain, Some(BlockId::number(0))).unwrap(), 0);
        assert_eq!(state_block(&chain, Some(BlockId::earliest())).unwrap(), 0);
        assert!(matches!(
            state_block(&chain, Some(BlockId::number(2))),
            Err(RpcError::HeaderNotFound)
        ));
        let unknown = BlockId::Hash(RpcBlockHash::from_hash(B256::repeat_byte(7), None));
        assert!(matches!(
            state_block(&chain, Some(unknown)),
            Err(RpcError::HeaderNotFound)
        ));
        // At genesis, `earliest` is the head.
        assert_eq!(
            state_block(&FakeChain::new(), Some(BlockId::earliest())).unwrap(),
            0
        );
    }

    #[test]
    fn blocks_past_the_head_are_absent() {
        let chain = chain();
        assert!(find_block(&chain, BlockId::number(2)).unwrap().is_none());
        assert_eq!(
            find_block(&chain, BlockId::latest())
                .unwrap()
                .unwrap()
                .number(),
            1
        );
        assert_eq!(
            find_block(&chain, BlockId::earliest())
                .unwrap()
                .unwrap()
                .number(),
            0
        );
    }

    #[test]
    fn receipts_carry_positions_gas_and_prices() {
        let chain = chain();
        let block = &chain.blocks[1];
        let receipts = rpc_receipts(block);
        assert_eq!(receipts.len(), 3);
        for (i, r) in receipts.iter().enumerate() {
            assert_eq!(
                Some(r),
                transaction_receipt(&chain, block.txs[i].hash())
                    .unwrap()
                    .as_ref(),
                "single and whole-block receipts agree"
            );
            assert_eq!(r.transaction_index, Some(i as u64));
            assert_eq!(r.transaction_hash, block.txs[i].hash());
            assert_eq!(r.block_hash, Some(block.hash));
            assert_eq!(r.block_number, Some(1));
        }
        assert_eq!(
            receipts.iter().map(|r| r.gas_used).collect::<Vec<_>>(),
            [30_000, 50_000, 21_000]
        );
        // Legacy pays its gas price; EIP-1559 pays base fee + min(tip, fee cap - base fee).
        assert_eq!(receipts[0].effective_gas_price, 3 * BASE_FEE as u128);
        assert_eq!(receipts[2].effective_gas_price, BASE_FEE as u128 + 2);
        assert_eq!(
            (
                receipts[0].from,
                receipts[0].to,
                receipts[0].contract_address
            ),
            (ALICE, Some(BOB), None)
        );
        assert_eq!(receipts[1].to, None);
        assert_eq!(receipts[1].contract_address, Some(ALICE.create(1)));
        // Log indexes run across the block.
        let indexes: Vec<_> = receipts
            .iter()
            .flat_map(|r| r.inner.logs().iter().map(|l| l.log_index))
            .collect();
        assert_eq!(indexes, [Some(0), Some(1), Some(2)]);
        let last = &receipts[2].inner.logs()[0];
        assert_eq!(
            (last.transaction_index, last.transaction_hash),
            (Some(2), Some(block.txs[2].hash()))
        );
    }

    #[test]
    fn block_json_has_the_post_merge_header_fields() {
        let chain = chain();
        let block = &chain.blocks[1];
        let json = serde_json::to_value(rpc_block(block, false)).unwrap();
        for field in [
            "hash",
            "parentHash",
            "number",
            "timestamp",
            "gasLimit",
            "gasUsed",
            "baseFeePerGas",
            "withdrawalsRoot",
            "blobGasUsed",
            "excessBlobGas",
            "parentBeaconBlockRoot",
            "requestsHash",
            "size",
            "totalDifficulty",
            "logsBloom",
            "miner",
            "mixHash",
            "nonce",
            "uncles",
            "withdrawals",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(
            json["transactions"][2],
            serde_json::to_value(block.txs[2].hash()).unwrap()
        );
        assert_eq!(json["withdrawals"], serde_json::json!([]));

        let full = serde_json::to_value(rpc_block(block, true)).unwrap();
        let tx = &full["transactions"][2];
        assert_eq!(tx["blockHash"], serde_json::to_value(block.hash).unwrap());
        assert_eq!(tx["transactionIndex"], "0x2");
        assert_eq!(tx["from"], serde_json::to_value(BOB).unwrap());
        assert_eq!(tx["gasPrice"], format!("{:#x}", BASE_FEE + 2));
        // `size` is the RLP length of the whole block.
        let size = u64::from_str_radix(json["size"].as_str().unwrap().trim_start_matches("0x"), 16)
            .unwrap();
        assert!(size > alloy_rlp::encode(&block.header).len() as u64);
    }

    #[test]
    fn pending_transactions_have_no_block_fields() {
        let tx = tx_1559(ALICE, 3, TxKind::Call(BOB), 10, 1);
        let json = serde_json::to_value(pending_transaction(&tx, 5)).unwrap();
        assert_eq!(json["blockHash"], serde_json::Value::Null);
        assert_eq!(json["blockNumber"], serde_json::Value::Null);
        assert_eq!(json["transactionIndex"], serde_json::Value::Null);
        assert_eq!(json["gasPrice"], "0x6");
    }
}
