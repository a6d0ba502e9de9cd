//! An in-memory chain and state for testing the RPC logic without a database.

use alloy_consensus::{
    Header, Receipt, ReceiptEnvelope, ReceiptWithBloom, SignableTransaction, TxEip1559, TxEnvelope,
    TxLegacy,
};
use alloy_primitives::{
    Address, B256, Bloom, Bytes, Log, LogData, Signature, TxKind, U256, keccak256,
};
use kestrel_storage::{ChainView, StateView, StorageError};
use kestrel_types::{AccountInfo, BlockNumber, RecoveredTx, SealedBlock};
use std::{collections::HashMap, sync::Arc};

pub const GAS_LIMIT: u64 = 30_000_000;
pub const BASE_FEE: u64 = 1_000_000_000;

#[derive(Default)]
pub struct FakeChain {
    pub blocks: Vec<SealedBlock>,
    pub accounts: HashMap<Address, AccountInfo>,
    pub storage: HashMap<(Address, U256), U256>,
    pub codes: HashMap<B256, Bytes>,
}

/// One transaction of a test block: what it is and what its receipt says.
pub struct TestTx {
    pub tx: RecoveredTx,
    pub gas_used: u64,
    pub logs: Vec<Log>,
}

impl FakeChain {
    /// A chain holding only an empty genesis block.
    pub fn new() -> Self {
        let mut chain = Self::default();
        chain.push_block(Vec::new());
        chain
    }

    /// Appends a block holding `txs` (successful, with their gas and logs); returns its number.
    pub fn push_block(&mut self, txs: Vec<TestTx>) -> BlockNumber {
        let number = self.blocks.len() as u64;
        let mut cumulative = 0;
        let mut bloom = Bloom::default();
        let receipts: Vec<ReceiptEnvelope> = txs
            .iter()
            .map(|t| {
                cumulative += t.gas_used;
                let receipt = Receipt {
                    status: true.into(),
                    cumulative_gas_used: cumulative,
                    logs: t.logs.clone(),
                };
                let logs_bloom = receipt.bloom_slow();
                bloom.accrue_bloom(&logs_bloom);
                ReceiptEnvelope::from_typed(
                    t.tx.tx().tx_type(),
                    ReceiptWithBloom {
                        receipt,
                        logs_bloom,
                    },
                )
            })
            .collect();
        let header = Header {
            parent_hash: self.blocks.last().map_or(B256::ZERO, |b| b.hash),
            number,
            timestamp: 1_700_000_000 + number,
            gas_limit: GAS_LIMIT,
            gas_used: cumulative,
            base_fee_per_gas: Some(BASE_FEE),
            logs_bloom: bloom,
            withdrawals_root: Some(alloy_consensus::EMPTY_ROOT_HASH),
            blob_gas_used: Some(0),
            excess_blob_gas: Some(0),
            parent_beacon_block_root: Some(B256::ZERO),
            requests_hash: Some(B256::ZERO),
            ..Header::default()
        };
        let hash = header.hash_slow();
        let txs = txs.into_iter().map(|t| t.tx).collect();
        self.blocks.push(SealedBlock {
            hash,
            header,
            txs,
            receipts,
        });
        number
    }

    pub fn set_account(&mut self, address: Address, balance: U256, code: Option<Bytes>) {
        let code_hash = code
            .as_ref()
            .map_or(kestrel_types::state::KECCAK_EMPTY, keccak256);
        if let Some(code) = code {
            self.codes.insert(code_hash, code);
        }
        self.accounts.insert(
            address,
            AccountInfo {
                nonce: 0,
                balance,
                code_hash,
            },
        );
    }
}

impl StateView for FakeChain {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        Ok(self.accounts.get(&address).copied())
    }
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        Ok(self
            .storage
            .get(&(address, slot))
            .copied()
            .unwrap_or_default())
    }
    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        Ok(self.codes.get(&code_hash).cloned())
    }
    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        Ok(self
            .storage
            .iter()
            .any(|((owner, _), value)| *owner == address && !value.is_zero()))
    }
}

impl ChainView for FakeChain {
    fn head(&self) -> Result<Option<BlockNumber>, StorageError> {
        Ok(self.blocks.len().checked_sub(1).map(|n| n as u64))
    }
    fn header(&self, number: BlockNumber) -> Result<Option<Header>, StorageError> {
        Ok(self.blocks.get(number as usize).map(|b| b.header.clone()))
    }
    fn block_hash(&self, number: BlockNumber) -> Result<Option<B256>, StorageError> {
        Ok(self.blocks.get(number as usize).map(|b| b.hash))
    }
    fn block_number(&self, hash: B256) -> Result<Option<BlockNumber>, StorageError> {
        Ok(self
            .blocks
            .iter()
            .position(|b| b.hash == hash)
            .map(|n| n as u64))
    }
    fn block(&self, number: BlockNumber) -> Result<Option<Arc<SealedBlock>>, StorageError> {
        Ok(self.blocks.get(number as usize).cloned().map(Arc::new))
    }
    fn receipts(&self, number: BlockNumber) -> Result<Option<Vec<ReceiptEnvelope>>, StorageError> {
        Ok(self.blocks.get(number as usize).map(|b| b.receipts.clone()))
    }
    fn tx_location(&self, hash: B256) -> Result<Option<(BlockNumber, u32)>, StorageError> {
        Ok(self.blocks.iter().enumerate().find_map(|(n, b)| {
            let index = b.txs.iter().position(|tx| tx.hash() == hash)?;
            Some((n as u64, index as u32))
        }))
    }
}

/// A dummy signature: the sender is given, not recovered, so any valid-looking one will do.
fn signature() -> Signature {
    Signature::new(U256::from(1), U256::from(1), false)
}

/// An EIP-1559 transaction from `sender`.
pub fn tx_1559(sender: Address, nonce: u64, to: TxKind, max_fee: u128, tip: u128) -> RecoveredTx {
    let tx = TxEip1559 {
        chain_id: 1337,
        nonce,
        gas_limit: 100_000,
        max_fee_per_gas: max_fee,
        max_priority_fee_per_gas: tip,
        to,
        ..TxEip1559::default()
    };
    RecoveredTx::new_unchecked(TxEnvelope::Eip1559(tx.into_signed(signature())), sender)
}

/// A legacy transaction from `sender`.
pub fn tx_legacy(sender: Address, nonce: u64, to: TxKind, gas_price: u128) -> RecoveredTx {
    let tx = TxLegacy {
        chain_id: Some(1337),
        nonce,
        gas_limit: 100_000,
        gas_price,
        to,
        ..TxLegacy::default()
    };
    RecoveredTx::new_unchecked(TxEnvelope::Legacy(tx.into_signed(signature())), sender)
}

/// A distinct topic value per `n`.
pub fn topic(n: u8) -> B256 {
    B256::with_last_byte(n)
}

pub fn log(address: Address, topics: Vec<B256>) -> Log {
    Log {
        address,
        data: LogData::new_unchecked(topics, Bytes::new()),
    }
}
