//! Kestrel's state store on MDBX: flat state (plain and hashed), trie branch nodes, blocks,
//! receipts and indexes, plus the in-memory overlay of executed-but-uncommitted blocks.
//!
//! One block is one MDBX write transaction: [`BlockWriter::apply_state`] writes the state and
//! updates the tries incrementally (see [`trie`]), [`BlockWriter::insert_block`] the block, and
//! [`BlockWriter::commit`] makes both durable at once.

pub mod archive;
mod codec;
pub mod error;
mod genesis;
mod history;
pub mod overlay;
mod proof;
mod tables;
mod trie;

#[cfg(test)]
mod tests;

pub use codec::IndexedReceipt;
pub use error::StorageError;
pub use genesis::{genesis_changes, genesis_header, state_root_from_alloc};
pub use history::{HISTORY_BLOCKS_DEFAULT, HistoryWindow, StateAt};
pub use overlay::{Layer, Overlay, OverlayView};
pub use proof::{AccountProof, StorageProof};

use crate::{
    codec::AccountRecord,
    history::ChangeRecorder,
    tables::{HEAD_KEY, Tables},
    trie::{Leaves, TrieCursors, TrieInput},
};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_rlp::{Decodable, Encodable};
use alloy_trie::EMPTY_ROOT_HASH;
use kestrel_types::{AccountInfo, BlockNumber, ChainSpec, RecoveredTx, SealedBlock, StateChanges};
use libmdbx::{
    Database, DatabaseOptions, Mode, RO, RW, ReadWriteOptions, SyncMode, Table, Transaction,
    TransactionKind, WriteFlags,
};
use parking_lot::Mutex;
use std::{borrow::Cow, collections::BTreeMap, path::Path, sync::Arc, time::Instant};

/// Reads of account state. Implemented by a database snapshot, by the overlay, and by test fakes.
/// `Sync`: the parallel executor's threads read the block's starting state directly.
pub trait StateView: Sync {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError>;
    /// Zero when the slot is unset.
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError>;
    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError>;
    /// Whether any slot of `address` is set. EIP-7610 asks it of a contract creation's target
    /// address; only creations ask, so it may cost a seek.
    fn has_storage(&self, address: Address) -> Result<bool, StorageError>;
}

/// Reads of committed blocks.
pub trait ChainView {
    /// The last committed block number (`None` before genesis is written).
    fn head(&self) -> Result<Option<BlockNumber>, StorageError>;
    fn header(&self, number: BlockNumber) -> Result<Option<Header>, StorageError>;
    fn block_hash(&self, number: BlockNumber) -> Result<Option<B256>, StorageError>;
    fn block_number(&self, hash: B256) -> Result<Option<BlockNumber>, StorageError>;
    /// Header, transactions (with senders) and receipts. Shared: a block of 10k transactions
    /// costs milliseconds to decode, and clients ask for the same recent blocks over and over.
    fn block(&self, number: BlockNumber) -> Result<Option<Arc<SealedBlock>>, StorageError>;
    fn receipts(&self, number: BlockNumber) -> Result<Option<Vec<ReceiptEnvelope>>, StorageError>;
    /// Block number and index of a committed transaction.
    fn tx_location(&self, hash: B256) -> Result<Option<(BlockNumber, u32)>, StorageError>;
    /// Transaction `index` of block `number`. The store decodes only that transaction (unless
    /// the block is cached): one lookup must not cost a whole block.
    fn transaction(
        &self,
        number: BlockNumber,
        index: usize,
    ) -> Result<Option<RecoveredTx>, StorageError> {
        Ok(self.block(number)?.and_then(|b| b.txs.get(index).cloned()))
    }
    /// Receipt `index` of block `number`, with the gas and logs before it. The store decodes
    /// only that receipt (unless the block is cached).
    fn receipt(
        &self,
        number: BlockNumber,
        index: usize,
    ) -> Result<Option<IndexedReceipt>, StorageError> {
        Ok(self.block(number)?.and_then(|b| indexed_receipt(&b, index)))
    }
}

/// Receipt `index` of a decoded block.
fn indexed_receipt(block: &SealedBlock, index: usize) -> Option<IndexedReceipt> {
    let receipt = block.receipts.get(index)?.clone();
    let before = &block.receipts[..index];
    Some(IndexedReceipt {
        receipt,
        gas_used_before: before.last().map_or(0, |r| r.cumulative_gas_used()),
        logs_before: before.iter().map(|r| r.logs().len() as u64).sum(),
    })
}

/// Largest database file: far above what a node needs, and only address space until used.
const DB_SIZE_MAX_BYTES: isize = 4 << 40;
/// Step by which the file grows (it shrinks when twice this is free at its end): large enough
/// that a block rarely remaps the file, small enough for test databases.
const DB_GROWTH_STEP_BYTES: isize = 128 << 20;
/// Concurrent read snapshots (RPC handlers, execution, state root). A reader past this fails
/// (`MDBX_READERS_FULL`), so RPC bounds its own readers below it.
pub const READERS_MAX: u32 = 256;
/// Tables and the slack MDBX needs to open them.
const TABLES_MAX: u64 = 32;

/// How MDBX writes: dirty pages are buffered in the heap and written at commit. Writing through
/// the memory map instead (`WriteMap`) took a page fault per newly dirtied page, which cost more
/// than the copy at commit.
type Env = libmdbx::NoWriteMap;

/// How commits reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `commit` returns once the block is on disk: a crash at any moment loses nothing
    /// committed.
    #[default]
    Durable,
    /// Commits are not flushed, so a crash may lose the latest ones (the database stays
    /// consistent). Only for tests and benchmarks.
    Unsynced,
}

/// Decoded blocks kept for readers (see [`BlockCache`]).
const CACHED_BLOCKS_MAX: usize = 32;

/// The database. Cheap to share behind an `Arc`; many readers, one writer at a time.
pub struct Store {
    db: Database<Env>,
    blocks: BlockCache,
    history: HistoryWindow,
}

/// The most recent decoded blocks, by number. A committed block never changes (only finalized
/// blocks are written), so an entry stays valid for every later snapshot. Blocks older than every
/// cached one are not kept: a scan over old blocks would otherwise evict the recent ones that
/// followers and receipt pollers ask for.
#[derive(Default)]
struct BlockCache(Mutex<BTreeMap<BlockNumber, Arc<SealedBlock>>>);

impl BlockCache {
    fn get(&self, number: BlockNumber) -> Option<Arc<SealedBlock>> {
        self.0.lock().get(&number).cloned()
    }

    fn insert(&self, block: Arc<SealedBlock>) {
        let mut blocks = self.0.lock();
        blocks.insert(block.header.number, block);
        if blocks.len() > CACHED_BLOCKS_MAX {
            blocks.pop_first();
        }
    }
}

/// A consistent read snapshot (one MDBX read transaction).
pub struct Reader<'s> {
    txn: &'s Transaction<'s, RO, Env>,
    tables: Tables<'s>,
    blocks: &'s BlockCache,
}

/// One block's write transaction: state, trie and block data commit atomically. Dropping it
/// without [`BlockWriter::commit`] discards everything written through it.
pub struct BlockWriter<'s> {
    txn: Transaction<'s, RW, Env>,
    db: &'s Database<Env>,
    history: HistoryWindow,
    /// What [`BlockWriter::apply_state`] overwrote, stored by [`BlockWriter::insert_block`] as
    /// the history of the block it inserts (not stored for a block never inserted).
    recorder: Option<ChangeRecorder>,
}

/// Declares the storage metrics; call once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "kestrel_storage_commit_seconds",
        metrics::Unit::Seconds,
        "Time to durably commit one block's write transaction"
    );
    metrics::describe_histogram!(
        "kestrel_storage_state_root_seconds",
        metrics::Unit::Seconds,
        "Time to apply one block's state changes and compute its state root incrementally"
    );
    metrics::describe_counter!(
        "kestrel_storage_trie_nodes_updated_total",
        "Trie branch nodes written or deleted by state root updates"
    );
    metrics::describe_gauge!(
        "kestrel_storage_db_size_bytes",
        metrics::Unit::Bytes,
        "Size of the database file after the last commit"
    );
    history::describe_metrics();
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, Durability::Durable)
    }

    /// Opens the database with the given commit durability.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Self, StorageError> {
        let sync_mode = match durability {
            Durability::Durable => SyncMode::Durable,
            Durability::Unsynced => SyncMode::SafeNoSync,
        };
        let options = DatabaseOptions {
            max_tables: Some(TABLES_MAX),
            max_readers: Some(READERS_MAX),
            mode: Mode::ReadWrite(ReadWriteOptions {
                sync_mode,
                min_size: None,
                max_size: Some(DB_SIZE_MAX_BYTES),
                growth_step: Some(DB_GROWTH_STEP_BYTES),
                shrink_threshold: Some(2 * DB_GROWTH_STEP_BYTES),
            }),
            ..Default::default()
        };
        let db = Database::<Env>::open_with_options(dir, options)?;
        let txn = db.begin_rw_txn()?;
        tables::create_all(&txn)?;
        history::init(&txn, &Tables::open(&txn)?)?;
        txn.commit()?;
        Ok(Self {
            db,
            blocks: BlockCache::default(),
            history: HistoryWindow::default(),
        })
    }

    /// Keeps the state of `window`'s blocks (default [`HISTORY_BLOCKS_DEFAULT`]); older history
    /// is pruned as blocks commit.
    pub fn with_history(mut self, window: HistoryWindow) -> Self {
        self.history = window;
        self
    }

    /// Writes the genesis block and state if the database is empty; otherwise checks that the
    /// stored genesis is this spec's (`StorageError::GenesisMismatch` if not). Returns genesis.
    pub fn init_genesis(&self, spec: &ChainSpec) -> Result<SealedBlock, StorageError> {
        let header = genesis_header(spec);
        let expected = header.hash_slow();
        if let Some(stored) = self.view(|r| r.block_hash(0))?? {
            if stored != expected {
                return Err(StorageError::GenesisMismatch { stored, expected });
            }
            let block = self.view(|r| r.block(0))??;
            let block = block.expect("genesis hash is stored, so is its block");
            return Ok(Arc::unwrap_or_clone(block));
        }
        let mut writer = self.begin_block()?;
        let root = writer.apply_state(&genesis::genesis_changes(spec))?;
        assert_eq!(
            root, header.state_root,
            "incremental genesis root differs from scratch root"
        );
        let block = SealedBlock {
            hash: expected,
            header,
            txs: Vec::new(),
            receipts: Vec::new(),
        };
        writer.insert_block(&block)?;
        writer.commit()?;
        Ok(block)
    }

    /// Runs `f` over one consistent snapshot.
    pub fn view<R>(&self, f: impl FnOnce(&Reader<'_>) -> R) -> Result<R, StorageError> {
        let txn = self.db.begin_ro_txn()?;
        let reader = Reader {
            txn: &txn,
            tables: Tables::open(&txn)?,
            blocks: &self.blocks,
        };
        Ok(f(&reader))
    }

    /// Starts the write transaction of the next block; waits while another one is open.
    pub fn begin_block(&self) -> Result<BlockWriter<'_>, StorageError> {
        Ok(BlockWriter {
            txn: self.db.begin_rw_txn()?,
            db: &self.db,
            history: self.history,
            recorder: None,
        })
    }
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

impl StateView for Reader<'_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        let Some(bytes) = self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.plain_accounts, address)?
        else {
            return Ok(None);
        };
        Ok(Some(
            AccountRecord::decode(tables::PLAIN_ACCOUNTS, &bytes)?.info,
        ))
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        let key = codec::plain_slot_key(&address, &slot);
        match self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.plain_storage, key)?
        {
            Some(bytes) => codec::decode_slot_value(tables::PLAIN_STORAGE, &bytes),
            None => Ok(U256::ZERO),
        }
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        Ok(self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.bytecodes, code_hash)?
            .map(|code| Bytes::copy_from_slice(&code)))
    }

    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        // Plain slot keys start with the address, and zero values are deleted, not stored.
        let mut cursor = self.txn.cursor(&self.tables.plain_storage)?;
        let first = cursor.set_range::<Cow<'_, [u8]>, ()>(address.as_slice())?;
        Ok(first.is_some_and(|(key, ())| key.starts_with(address.as_slice())))
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
        let body = self
            .txn
            .get::<Cow<'_, [u8]>>(&self.tables.bodies, number.to_be_bytes())?
            .ok_or_else(|| missing(tables::BODIES))?;
        let txs = codec::decode_body(tables::BODIES, &body)?;
        let receipts = self
            .receipts(number)?
            .ok_or_else(|| missing(tables::RECEIPTS))?;
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
        self.txn
            .get::<Cow<'_, [u8]>>(&self.tables.receipts, number.to_be_bytes())?
            .map(|bytes| codec::decode_receipts(tables::RECEIPTS, &bytes))
            .transpose()
    }

    fn tx_location(&self, hash: B256) -> Result<Option<(BlockNumber, u32)>, StorageError> {
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
        self.txn
            .get::<Cow<'_, [u8]>>(&self.tables.bodies, number.to_be_bytes())?
            .map(|bytes| codec::decode_body_tx(tables::BODIES, &bytes, index))
            .transpose()
            .map(Option::flatten)
    }

    fn receipt(
        &self,
        number: BlockNumber,
        index: usize,
    ) -> Result<Option<IndexedReceipt>, StorageError> {
        if let Some(block) = self.blocks.get(number) {
            return Ok(indexed_receipt(&block, index));
        }
        self.txn
            .get::<Cow<'_, [u8]>>(&self.tables.receipts, number.to_be_bytes())?
            .map(|bytes| codec::decode_indexed_receipt(tables::RECEIPTS, &bytes, index))
            .transpose()
            .map(Option::flatten)
    }
}

pub(crate) fn read_head<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<BlockNumber>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(&tables.metadata, HEAD_KEY)?
        .map(|bytes| codec::decode_number(tables::METADATA, &bytes))
        .transpose()
}

fn read_block_hash<K: TransactionKind>(
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

/// Deletes every entry whose key starts with `prefix`.
pub(crate) fn delete_prefix(
    txn: &Transaction<'_, RW, Env>,
    table: &Table<'_>,
    prefix: &[u8],
) -> Result<(), StorageError> {
    let mut cursor = txn.cursor(table)?;
    let mut entry = cursor.set_range::<Cow<'_, [u8]>, ()>(prefix)?;
    while let Some((key, ())) = entry {
        if !key.starts_with(prefix) {
            break;
        }
        cursor.del(WriteFlags::empty())?;
        // After a deletion MDBX's next step lands on the entry that followed the deleted one.
        entry = cursor.next()?;
    }
    Ok(())
}

impl BlockWriter<'_> {
    /// Applies one block's state changes (plain + hashed state, code), updates the trie
    /// incrementally and returns the new state root.
    ///
    /// An account set to `None` loses its storage too, whatever slots the changes list for it.
    /// A storage change for an account the changes do not set must be to an existing account.
    ///
    /// Records the values it overwrites as the history of the head's next block (none for
    /// genesis: nothing was before it), which `insert_block` stores.
    pub fn apply_state(&mut self, changes: &StateChanges) -> Result<B256, StorageError> {
        let started = Instant::now();
        let txn = &self.txn;
        let tables = Tables::open(txn)?;
        let mut nodes_written = 0;
        if self.recorder.is_none() && self.history.records() {
            self.recorder = read_head(txn, &tables)?.map(|head| ChangeRecorder::new(head + 1));
        }
        let history = &mut self.recorder;

        for (hash, code) in &changes.codes {
            txn.put(&tables.bytecodes, hash, code, WriteFlags::UPSERT)?;
        }

        // Storage first: the account leaves need the new storage roots.
        let mut cursors = TrieCursors {
            hashed: txn.cursor(&tables.hashed_storage)?,
            nodes: txn.cursor(&tables.storage_trie)?,
        };
        let mut storage_roots = BTreeMap::new();
        let mut changed_slots = Vec::new();
        for (address, change) in &changes.storage {
            if changes.accounts.get(address) == Some(&None) {
                continue;
            }
            let hashed_address = keccak256(address);
            if change.wiped {
                if let Some(history) = history {
                    history.all_slots(txn, &tables, address)?;
                }
                wipe_storage(txn, &tables, address, &hashed_address)?;
            }
            changed_slots.clear();
            for (slot, value) in &change.slots {
                if let Some(history) = history {
                    history.slot(txn, &tables, address, slot)?;
                }
                let plain_key = codec::plain_slot_key(address, slot);
                let hashed_slot = keccak256(slot.to_be_bytes::<32>());
                let hashed_key = codec::hashed_slot_key(&hashed_address, &hashed_slot);
                if value.is_zero() {
                    txn.del(&tables.plain_storage, plain_key, None)?;
                    txn.del(&tables.hashed_storage, hashed_key, None)?;
                } else {
                    let (bytes, len) = codec::encode_slot_value(value);
                    txn.put(
                        &tables.plain_storage,
                        plain_key,
                        &bytes[..len],
                        WriteFlags::UPSERT,
                    )?;
                    txn.put(
                        &tables.hashed_storage,
                        hashed_key,
                        &bytes[..len],
                        WriteFlags::UPSERT,
                    )?;
                }
                changed_slots.push(hashed_slot);
            }
            changed_slots.sort_unstable();
            let input = TrieInput {
                leaves: Leaves::Storage,
                prefix: hashed_address.as_slice(),
                changed: &changed_slots,
            };
            let update = trie::update(txn, &tables.storage_trie, &mut cursors, &input)?;
            nodes_written += update.nodes_written;
            storage_roots.insert(*address, update.root);
        }
        drop(cursors);

        // Accounts, in hashed order so that writes walk the hashed table front to back.
        let mut updates = Vec::with_capacity(changes.accounts.len() + storage_roots.len());
        for (address, account) in &changes.accounts {
            let hashed_address = keccak256(address);
            if let Some(history) = history {
                history.account(txn, &tables, address)?;
                if account.is_none() {
                    history.all_slots(txn, &tables, address)?;
                }
            }
            let record = match account {
                None => {
                    txn.del(&tables.plain_accounts, address, None)?;
                    wipe_storage(txn, &tables, address, &hashed_address)?;
                    None
                }
                Some(info) => {
                    let plain = AccountRecord {
                        info: *info,
                        storage_root: EMPTY_ROOT_HASH,
                    };
                    let (bytes, len) = plain.encode();
                    txn.put(
                        &tables.plain_accounts,
                        address,
                        &bytes[..len],
                        WriteFlags::UPSERT,
                    )?;
                    let storage_root = match storage_roots.get(address) {
                        Some(root) => *root,
                        None => read_hashed_account(txn, &tables.hashed_accounts, &hashed_address)?
                            .map_or(EMPTY_ROOT_HASH, |old| old.storage_root),
                    };
                    Some(AccountRecord {
                        info: *info,
                        storage_root,
                    })
                }
            };
            updates.push((hashed_address, record));
        }
        for (address, storage_root) in &storage_roots {
            if changes.accounts.contains_key(address) {
                continue;
            }
            let hashed_address = keccak256(address);
            let old = read_hashed_account(txn, &tables.hashed_accounts, &hashed_address)?;
            let Some(old) = old else {
                panic!("storage changed for {address}, which does not exist");
            };
            updates.push((
                hashed_address,
                Some(AccountRecord {
                    storage_root: *storage_root,
                    ..old
                }),
            ));
        }
        updates.sort_unstable_by_key(|(hashed, _)| *hashed);
        let mut changed_accounts = Vec::with_capacity(updates.len());
        for (hashed_address, record) in &updates {
            match record {
                None => {
                    txn.del(&tables.hashed_accounts, hashed_address, None)?;
                }
                Some(record) => {
                    let (bytes, len) = record.encode();
                    let table = &tables.hashed_accounts;
                    txn.put(table, hashed_address, &bytes[..len], WriteFlags::UPSERT)?;
                }
            }
            changed_accounts.push(*hashed_address);
        }

        let mut cursors = TrieCursors {
            hashed: txn.cursor(&tables.hashed_accounts)?,
            nodes: txn.cursor(&tables.account_trie)?,
        };
        let input = TrieInput {
            leaves: Leaves::Accounts,
            prefix: &[],
            changed: &changed_accounts,
        };
        let update = trie::update(txn, &tables.account_trie, &mut cursors, &input)?;
        nodes_written += update.nodes_written;

        metrics::counter!("kestrel_storage_trie_nodes_updated_total").increment(nodes_written);
        metrics::histogram!("kestrel_storage_state_root_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(update.root)
    }

    /// Stores header, body, receipts, tx index, and moves the committed head to this block.
    ///
    /// Blocks are inserted in order: genesis first, then each child of the head.
    pub fn insert_block(&mut self, block: &SealedBlock) -> Result<(), StorageError> {
        let txn = &self.txn;
        let tables = Tables::open(txn)?;
        let number = block.number();
        match read_head(txn, &tables)? {
            None => assert_eq!(number, 0, "the first block inserted must be genesis"),
            Some(head) => {
                assert_eq!(number, head + 1, "block {number} inserted on head {head}");
                let parent = read_block_hash(txn, &tables, head)?;
                assert_eq!(
                    parent,
                    Some(block.header.parent_hash),
                    "block {number}'s parent"
                );
            }
        }
        let key = number.to_be_bytes();
        let mut header = Vec::with_capacity(block.header.length());
        block.header.encode(&mut header);
        txn.put(&tables.headers, key, &header, WriteFlags::UPSERT)?;
        txn.put(
            &tables.canonical_hashes,
            key,
            block.hash,
            WriteFlags::UPSERT,
        )?;
        txn.put(&tables.block_numbers, block.hash, key, WriteFlags::UPSERT)?;
        txn.put(
            &tables.bodies,
            key,
            codec::encode_body(&block.txs),
            WriteFlags::UPSERT,
        )?;
        let receipts = codec::encode_receipts(&block.receipts);
        txn.put(&tables.receipts, key, receipts, WriteFlags::UPSERT)?;
        for (index, tx) in block.txs.iter().enumerate() {
            let location = codec::encode_tx_location(number, index as u32);
            txn.put(
                &tables.tx_locations,
                tx.hash(),
                location,
                WriteFlags::UPSERT,
            )?;
        }
        txn.put(&tables.metadata, HEAD_KEY, key, WriteFlags::UPSERT)?;
        if let Some(recorder) = self.recorder.take() {
            recorder.write(txn, &tables, number)?;
        }
        history::prune(txn, &tables, self.history, number)?;
        Ok(())
    }

    /// Durably commits everything written through this writer.
    pub fn commit(self) -> Result<(), StorageError> {
        let started = Instant::now();
        self.txn.commit()?;
        metrics::histogram!("kestrel_storage_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        let size = self.db.info()?.geometry().current_size();
        metrics::gauge!("kestrel_storage_db_size_bytes").set(size as f64);
        Ok(())
    }
}

/// Deletes all storage of an account: plain, hashed, and its storage trie.
fn wipe_storage(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    address: &Address,
    hashed_address: &B256,
) -> Result<(), StorageError> {
    delete_prefix(txn, &tables.plain_storage, address.as_slice())?;
    delete_prefix(txn, &tables.hashed_storage, hashed_address.as_slice())?;
    delete_prefix(txn, &tables.storage_trie, hashed_address.as_slice())
}
