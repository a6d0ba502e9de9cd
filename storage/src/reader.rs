//! Reading the store: [`Reader`], one MDBX read transaction, and what it answers (state,
//! blocks, receipts, transactions by hash, table sizes).

use crate::{
    BlockCache, ChainView, Env, IndexedReceipt, StateView, StorageError,
    blocks::{self, Blocks},
    codec::{self, AccountRecord},
    indexed_receipt, snapshot,
    state_cache::StateCache,
    tables::{self, HEAD_KEY, Tables},
    trie,
    tx_index::RecentTxs,
};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_rlp::Decodable;
use kestrel_types::{AccountInfo, BlockNumber, RecoveredTx, SealedBlock};
use libmdbx::{RO, Table, Transaction, TransactionKind};
use std::{borrow::Cow, sync::Arc};

/// A consistent read snapshot (one MDBX read transaction).
pub struct Reader<'s> {
    pub(crate) txn: &'s Transaction<'s, RO, Env>,
    pub(crate) tables: Tables<'s>,
    pub(crate) archive: &'s Blocks,
    pub(crate) blocks: &'s BlockCache,
    pub(crate) tx_index: &'s RecentTxs,
    /// The account trie's deferred branches as of this snapshot's commit.
    pub(crate) fresh: Arc<trie::View>,
    /// Recently committed accounts and slots, and this snapshot's commit (`txn`'s id), which
    /// says which of them it may take.
    pub(crate) state_cache: &'s StateCache,
    pub(crate) txn_id: u64,
}

/// One MDBX table's size: what `kestrel db stats` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableStats {
    pub table: &'static str,
    pub entries: u64,
    /// Bytes of its pages (leaf, branch and overflow).
    pub bytes: u64,
}

impl Reader<'_> {
    /// Whether block `number` is committed in this snapshot: the archive may hold a block the
    /// database has not committed yet (appended before its commit).
    /// Blocks at or before a state-synced store's base have no body ([`Reader::base`]).
    fn committed(&self, number: BlockNumber) -> Result<bool, StorageError> {
        let base = snapshot::restore::read_base(self.txn, &self.tables)?;
        Ok(snapshot::restore::has_body(base, self.head()?, number))
    }

    /// The first block whose state this store holds: 0, or the block a state sync started
    /// from, before which it has no state, bodies or receipts (and headers only for its own).
    pub fn base(&self) -> Result<BlockNumber, StorageError> {
        snapshot::restore::read_base(self.txn, &self.tables)
    }

    /// Entries and bytes of every table.
    pub fn table_stats(&self) -> Result<Vec<TableStats>, StorageError> {
        tables::ALL
            .iter()
            .map(|name| {
                let table = self.txn.open_table(Some(name))?;
                let stat = self.txn.table_stat(&table)?;
                Ok(TableStats {
                    table: name,
                    entries: stat.entries() as u64,
                    bytes: stat.total_size(),
                })
            })
            .collect()
    }

    /// The state root computed from the flat hashed state alone, without the stored trie nodes
    /// or the storage roots kept with the accounts. Reads the whole state (seconds for millions
    /// of accounts): a check of the incremental root, not something to call per block.
    pub fn state_root_from_scratch(&self) -> Result<B256, StorageError> {
        trie::state_root_from_scratch(self.txn, &self.tables)
    }

    /// The root of `address`'s storage trie (`None` if the account does not exist).
    pub fn storage_root(&self, address: Address) -> Result<Option<B256>, StorageError> {
        let hashed = keccak256(address);
        Ok(
            read_hashed_account(self.txn, &self.tables.hashed_accounts, &hashed)?
                .map(|record| record.storage_root),
        )
    }
}

impl Reader<'_> {
    fn read_account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        let hashed = keccak256(address);
        Ok(read_hashed_account(self.txn, &self.tables.hashed_accounts, &hashed)?.map(|r| r.info))
    }

    fn read_slot(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        let key = codec::hashed_slot_key(&keccak256(address), &keccak256(slot.to_be_bytes::<32>()));
        match self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.hashed_storage, key)?
        {
            Some(bytes) => codec::decode_slot_value(tables::HASHED_STORAGE, &bytes),
            None => Ok(U256::ZERO),
        }
    }
}

impl Reader<'_> {
    /// A value the state cache served for `what`: tests and debug builds check it against the
    /// database (`read`).
    fn served<T: PartialEq + std::fmt::Debug>(
        &self,
        cached: T,
        read: impl FnOnce() -> Result<T, StorageError>,
        what: std::fmt::Arguments<'_>,
    ) -> Result<T, StorageError> {
        #[cfg(debug_assertions)]
        assert_eq!(
            cached,
            read()?,
            "state cache: {what} at commit {}",
            self.txn_id
        );
        #[cfg(not(debug_assertions))]
        let _ = (read, what);
        Ok(cached)
    }
}

impl StateView for Reader<'_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        match self.state_cache.account(&address, self.txn_id) {
            Some(cached) => self.served(
                cached,
                || self.read_account(address),
                format_args!("account {address}"),
            ),
            None => self.read_account(address),
        }
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        match self.state_cache.slot(&address, slot, self.txn_id) {
            Some(cached) => self.served(
                cached,
                || self.read_slot(address, slot),
                format_args!("slot {slot} of {address}"),
            ),
            None => self.read_slot(address, slot),
        }
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.bytecodes, code_hash)?
            .map(|code| Bytes::copy_from_slice(&code)))
    }

    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        // Hashed slot keys start with the hashed address, and zero values are deleted, not
        // stored.
        let prefix = keccak256(address);
        let mut cursor = self.txn.cursor(&self.tables.hashed_storage)?;
        let first = cursor.set_range::<Cow<'_, [u8]>, ()>(prefix.as_slice())?;
        Ok(first.is_some_and(|(key, ())| key.starts_with(prefix.as_slice())))
    }
}

impl ChainView for Reader<'_> {
    fn head(&self) -> Result<Option<BlockNumber>, StorageError> {
        read_head(self.txn, &self.tables)
    }

    fn header(&self, number: BlockNumber) -> Result<Option<Header>, StorageError> {
        let Some(bytes) = self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.headers, number.to_be_bytes())?
        else {
            return Ok(None);
        };
        let header = Header::decode(&mut bytes.as_ref()).map_err(|e| StorageError::Corrupt {
            table: tables::HEADERS,
            reason: e.to_string(),
        })?;
        Ok(Some(header))
    }

    fn block_hash(&self, number: BlockNumber) -> Result<Option<B256>, StorageError> {
        read_block_hash(self.txn, &self.tables, number)
    }

    fn block_number(&self, hash: B256) -> Result<Option<BlockNumber>, StorageError> {
        self.txn
            .get::<Cow<'_, [u8]>>(&self.tables.block_numbers, hash)?
            .map(|bytes| codec::decode_number(tables::BLOCK_NUMBERS, &bytes))
            .transpose()
    }

    fn block(&self, number: BlockNumber) -> Result<Option<Arc<SealedBlock>>, StorageError> {
        if let Some(block) = self.blocks.get(number) {
            return Ok(Some(block));
        }
        if !self.committed(number)? {
            return Ok(None);
        }
        let Some(header) = self.header(number)? else {
            return Ok(None);
        };
        let missing = |table| StorageError::Corrupt {
            table,
            reason: format!("block {number}"),
        };
        let hash = self
            .block_hash(number)?
            .ok_or_else(|| missing(tables::CANONICAL_HASHES))?;
        let txs = codec::decode_body(blocks::BODY, &self.archive.body(number)?)?;
        let receipts = blocks::receipts::decode(blocks::RECEIPTS, &self.archive.receipts(number)?)?;
        let block = Arc::new(SealedBlock {
            hash,
            header,
            txs,
            receipts,
        });
        self.blocks.insert(block.clone());
        Ok(Some(block))
    }

    fn receipts(&self, number: BlockNumber) -> Result<Option<Vec<ReceiptEnvelope>>, StorageError> {
        if !self.committed(number)? {
            return Ok(None);
        }
        let bytes = self.archive.receipts(number)?;
        blocks::receipts::decode(blocks::RECEIPTS, &bytes).map(Some)
    }

    fn tx_location(&self, hash: B256) -> Result<Option<(BlockNumber, u32)>, StorageError> {
        let Some(head) = self.head()? else {
            return Ok(None);
        };
        if let Some(location) = self.tx_index.get(&hash, head) {
            return Ok(Some(location));
        }
        self.txn
            .get::<Cow<'_, [u8]>>(&self.tables.tx_locations, hash)?
            .map(|bytes| codec::decode_tx_location(tables::TX_LOCATIONS, &bytes))
            .transpose()
    }

    fn transaction(
        &self,
        number: BlockNumber,
        index: usize,
    ) -> Result<Option<RecoveredTx>, StorageError> {
        if let Some(block) = self.blocks.get(number) {
            return Ok(block.txs.get(index).cloned());
        }
        if !self.committed(number)? {
            return Ok(None);
        }
        codec::decode_body_tx(blocks::BODY, &self.archive.body(number)?, index)
    }

    fn receipt(
        &self,
        number: BlockNumber,
        index: usize,
    ) -> Result<Option<IndexedReceipt>, StorageError> {
        if let Some(block) = self.blocks.get(number) {
            return Ok(indexed_receipt(&block, index));
        }
        if !self.committed(number)? {
            return Ok(None);
        }
        let bytes = self.archive.receipts(number)?;
        blocks::receipts::decode_indexed(blocks::RECEIPTS, &bytes, index)
    }
}

pub(crate) fn read_head<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<BlockNumber>, StorageError> {
    read_metadata_number(txn, tables, HEAD_KEY)
}

/// The block number the metadata table holds at `key`, if any.
pub(crate) fn read_metadata_number<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
    key: &[u8],
) -> Result<Option<BlockNumber>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(&tables.metadata, key)?
        .map(|bytes| codec::decode_number(tables::METADATA, &bytes))
        .transpose()
}

pub(crate) fn read_block_hash<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
    number: BlockNumber,
) -> Result<Option<B256>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(&tables.canonical_hashes, number.to_be_bytes())?
        .map(|bytes| codec::decode_hash(tables::CANONICAL_HASHES, &bytes))
        .transpose()
}

pub(crate) fn read_hashed_account<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    table: &Table<'_>,
    hashed_address: &B256,
) -> Result<Option<AccountRecord>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(table, hashed_address)?
        .map(|bytes| AccountRecord::decode(tables::HASHED_ACCOUNTS, &bytes))
        .transpose()
}
