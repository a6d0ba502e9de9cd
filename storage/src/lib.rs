//! Kestrel's state store on MDBX: flat state (by hashed key, with preimages), trie branch nodes,
//! headers and indexes, plus the in-memory overlay of executed-but-uncommitted blocks; block
//! bodies and receipts in a block archive beside the database ([`blocks`]).
//!
//! One block is one MDBX write transaction: [`BlockWriter::apply_state`] writes the state and
//! updates the tries incrementally (see [`trie`]), [`BlockWriter::insert_block`] the block (its
//! body and receipts appended to the archive), and [`BlockWriter::commit`] commits both: the
//! archive durable first, then the database's transaction, which the store's sync thread makes
//! durable while the next block goes on ([`sync`]; [`Store::durable_head`]).

pub mod archive;
mod blocks;
mod bulk;
mod codec;
pub mod error;
mod genesis;
mod history;
pub mod overlay;
mod page_cache;
mod preimages;
mod proof;
mod reader;
pub mod snapshot;
mod state_cache;
mod sync;
mod tables;
mod trie;
mod tx_index;
mod writer;

#[cfg(test)]
mod tests;

pub use blocks::ARCHIVE_DIR;
pub use blocks::receipts::IndexedReceipt;
pub use bulk::GenesisProgress;
pub use error::StorageError;
pub use genesis::{genesis_changes, genesis_header, state_root_from_alloc};
pub use history::{HISTORY_BLOCKS_DEFAULT, HistoryWindow, StateAt};
pub use overlay::{Layer, Overlay, OverlayView};
pub use proof::{AccountProof, StorageProof};
pub use reader::{Reader, TableStats};
pub(crate) use reader::{read_block_hash, read_hashed_account, read_head};
pub use sync::{SyncStats, UNSYNCED_COMMITS_MAX};
pub use writer::BlockWriter;
pub(crate) use writer::delete_prefix;

use crate::{
    archive::ArchiveConfig, blocks::Blocks, sync::Syncer, tables::Tables, tx_index::RecentTxs,
};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_primitives::{Address, B256, Bytes, U256};
use kestrel_types::{AccountInfo, BlockNumber, ChainSpec, RecoveredTx, SealedBlock};
use libmdbx::{Database, DatabaseOptions, Mode, PageSize, ReadWriteOptions, SyncMode};
use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

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
pub(crate) fn indexed_receipt(block: &SealedBlock, index: usize) -> Option<IndexedReceipt> {
    let receipt = block.receipts.get(index)?.clone();
    let before = &block.receipts[..index];
    Some(IndexedReceipt {
        receipt,
        gas_used_before: before.last().map_or(0, |r| r.cumulative_gas_used()),
        logs_before: before.iter().map(|r| r.logs().len() as u64).sum(),
    })
}

/// Largest database file: 4 TiB, 40 times a 100 GiB state with its history, and half of what
/// MDBX can address with 4 KiB pages (2^31 pages). Only address space until used.
const DB_SIZE_MAX_BYTES: isize = 4 << 40;
/// Bounds of the step by which the file grows (it shrinks when twice the step is free at its
/// end). MDBX allocates each step on disk at once (`fallocate`), so a large fixed step would cost
/// every small database (each test's) gigabytes; a small fixed one would extend a file past
/// 100 GiB hundreds of times, each a commit that also pays for the extension, and leave it in as
/// many extents. So the step is a sixteenth of the file as it is at open, within these bounds:
/// 128 MiB for a new database, 4 GiB from 64 GiB on.
const DB_GROWTH_STEP_MIN_BYTES: u64 = 128 << 20;
const DB_GROWTH_STEP_MAX_BYTES: u64 = 4 << 30;
/// The growth step of a database whose file is `file_bytes` long (see
/// [`DB_GROWTH_STEP_MIN_BYTES`]), in whole MiB.
fn growth_step_bytes(file_bytes: u64) -> u64 {
    ((file_bytes / 16) >> 20 << 20).clamp(DB_GROWTH_STEP_MIN_BYTES, DB_GROWTH_STEP_MAX_BYTES)
}

/// MDBX's data file in a database directory.
const DB_FILE: &str = "mdbx.dat";
/// Page size of a new database. 4 KiB, not the OS page size MDBX defaults to (16 or 64 KiB on
/// some ARM kernels): a block changes keys scattered over the whole state, each a dirty page
/// written at commit, so the page is what a changed key costs in bytes written (263 MiB a block
/// of 10,000 transfers at 10,000,000 accounts, BENCHMARKS.md); and DB_SIZE_MAX_BYTES stays within
/// what MDBX addresses with them.
const DB_PAGE_BYTES: usize = 4096;
/// Page buffers MDBX keeps for the next write transaction instead of freeing them at commit
/// (`MDBX_opt_dp_reserve_limit`; its default is about a thousand). A block of 10,000 transfers
/// over 10,000,000 accounts dirties about 32,000 pages, each copied into a buffer: freed and
/// allocated again every block, they cost page faults and the kernel's zeroing, 2-13 % of a
/// block's root and commit there (BENCHMARKS.md). The buffers held add about 210 MiB of RSS
/// once a block has dirtied that many pages (128 MiB of pages, and the allocator's share).
const DB_DIRTY_PAGES_KEPT: u64 = 32_768;
/// Concurrent read snapshots (RPC handlers, execution, state root). A reader past this fails
/// (`MDBX_READERS_FULL`), so RPC bounds its own readers below it.
pub const READERS_MAX: u32 = 256;
/// Tables and the slack MDBX needs to open them.
const TABLES_MAX: u64 = 32;

/// How MDBX writes: dirty pages are buffered in the heap and written at commit. Writing through
/// the memory map instead (`WriteMap`) took a page fault per newly dirtied page, which cost more
/// than the copy at commit.
type Env = libmdbx::NoWriteMap;

/// How commits reach the disk. Either way a commit returns once its pages are in the OS page
/// cache (MDBX's `SafeNoSync`): a process crash loses nothing committed, and the database stays
/// consistent whatever happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The store's sync thread makes each commit durable while the next block goes on
    /// ([`sync`]): a power loss takes back at most the commits after [`Store::durable_head`].
    #[default]
    Durable,
    /// No sync thread: commits reach the disk at [`Store::sync`], at close, or when the kernel
    /// writes them back. Only for tests and benchmarks.
    Unsynced,
}

/// Decoded blocks kept for readers (see [`BlockCache`]).
const CACHED_BLOCKS_MAX: usize = 32;

/// The database. Cheap to share behind an `Arc`; many readers, one writer at a time.
pub struct Store {
    db: Arc<Database<Env>>,
    /// MDBX's data file, in the store's directory.
    data_file: PathBuf,
    /// The account trie's bottom subtrees' top branches as of the last commit.
    bottoms: Arc<trie::BottomCache>,
    /// The account trie's branches whose writes wait in memory for a checkpoint.
    deferred: trie::DeferredNodes,
    /// Recently committed accounts and slots, for readers.
    state_cache: state_cache::StateCache,
    archive: Blocks,
    blocks: BlockCache,
    history: HistoryWindow,
    syncer: Arc<Syncer>,
    /// The sync thread (`Durability::Durable`), joined at drop.
    sync_thread: Option<JoinHandle<()>>,
    tx_index: RecentTxs,
    /// Held until the store is dropped (after `Drop::drop` ran), see [`LOCK_FILE`].
    _lock: File,
}

/// The file in a store's directory that an open store holds an exclusive lock on: a second
/// process (a second node, `kestrel db stats` on a running node's datadir) would otherwise
/// write into the same database and archive, e.g. rebuild the account trie under the running
/// node at open (`trie::deferred`) or cut archive records it has just appended.
pub const LOCK_FILE: &str = "kestrel.lock";

/// Takes `dir`'s lock (creating `dir` if needed), or fails with [`StorageError::InUse`].
fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let lock_error = |source| StorageError::Lock {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(lock_error)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::InUse {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(lock_error(source)),
    }
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

/// Declares the storage metrics; call once after installing the recorder.
pub fn describe_metrics() {
    metrics::describe_histogram!(
        "kestrel_storage_commit_seconds",
        metrics::Unit::Seconds,
        "Time to commit one block's write transaction: its pages written to the OS page cache (the sync thread makes them durable)"
    );
    metrics::describe_histogram!(
        "kestrel_storage_sync_seconds",
        metrics::Unit::Seconds,
        "Time of the sync thread's flush of the database file (fdatasync of the pages committed since the last flush, and the steady meta page)"
    );
    metrics::describe_gauge!(
        "kestrel_storage_unsynced_blocks",
        "Blocks committed but not yet durable: what a power loss now would send back to execution"
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
    metrics::describe_counter!(
        "kestrel_storage_trie_leaves_in_place_total",
        "Changed trie leaves whose key was there before and stays (a value change), fed to the root computation without reading the hashed table"
    );
    metrics::describe_counter!(
        "kestrel_storage_trie_nodes_rehashed_total",
        "Stored trie branches rehashed from their stored children's hashes, every change under them a value change, without the hash builder"
    );
    metrics::describe_counter!(
        "kestrel_storage_trie_bottom_cache_hits_total",
        "Account-trie bottom subtrees rehashed from their top branch kept in memory, without reading their leaves"
    );
    metrics::describe_gauge!(
        "kestrel_storage_trie_bottom_cache_entries",
        "Account-trie branches kept in memory: the bottom subtrees' top branches and the branches under them"
    );
    metrics::describe_gauge!(
        "kestrel_storage_trie_deferred_nodes",
        "Account-trie depth-4 branches whose new value waits in memory for the next checkpoint (every 8th commit) instead of being written by each block"
    );
    metrics::describe_counter!(
        "kestrel_storage_trie_deferred_written_total",
        "Account-trie branches written to the database by checkpoints after waiting in memory"
    );
    metrics::describe_counter!(
        "kestrel_storage_account_trie_walks_total",
        "Account-trie updates by how they were walked: parallel (the root's subtrees on all cores), one_thread, or again (on one thread after a parallel walk found a subtree that is not a branch)"
    );
    metrics::describe_counter!(
        "kestrel_storage_state_cache_hits_total",
        "Account and slot reads of the latest state answered by the cache of recently committed values, by kind"
    );
    metrics::describe_counter!(
        "kestrel_storage_state_cache_misses_total",
        "Account and slot reads of the latest state that read the database: not cached, or changed since the reader's snapshot"
    );
    metrics::describe_gauge!(
        "kestrel_storage_state_cache_entries",
        "Accounts and slots held by the cache of recently committed values, by kind"
    );
    metrics::describe_gauge!(
        "kestrel_storage_db_size_bytes",
        metrics::Unit::Bytes,
        "Size of the database file after the last commit"
    );
    history::describe_metrics();
    blocks::describe_metrics();
    tx_index::describe_metrics();
}

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, Durability::Durable)
    }

    /// Opens the database with the given commit durability.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Self, StorageError> {
        Self::open_with_archive(dir, durability, ArchiveConfig::default())
    }

    /// Opens the database, and its block archive (in `dir`/[`ARCHIVE_DIR`]) with `archive`'s
    /// I/O choice and segment size. The archive always syncs: a commit never outruns it.
    pub fn open_with_archive(
        dir: &Path,
        durability: Durability,
        archive: ArchiveConfig,
    ) -> Result<Self, StorageError> {
        let lock = lock_dir(dir)?;
        let growth_step =
            growth_step_bytes(std::fs::metadata(dir.join(DB_FILE)).map_or(0, |m| m.len()));
        let options = DatabaseOptions {
            max_tables: Some(TABLES_MAX),
            max_readers: Some(READERS_MAX),
            page_size: Some(PageSize::Set(DB_PAGE_BYTES)),
            mode: Mode::ReadWrite(ReadWriteOptions {
                sync_mode: SyncMode::SafeNoSync,
                min_size: None,
                max_size: Some(DB_SIZE_MAX_BYTES),
                growth_step: Some(growth_step as isize),
                shrink_threshold: Some(2 * growth_step as isize),
            }),
            dp_reserve_limit: Some(DB_DIRTY_PAGES_KEPT),
            // Page faults read one page, no readahead: reads are random, and a readahead fills
            // a large folio that every later page write into it pays for (`page_cache`). reth
            // opens its MDBX the same way.
            no_rdahead: true,
            ..Default::default()
        };
        let db = Database::<Env>::open_with_options(dir, options)?;
        let txn = db.begin_rw_txn()?;
        tables::create_all(&txn)?;
        preimages::migrate_plain_tables(&txn)?;
        history::init(&txn, &Tables::open(&txn)?)?;
        txn.commit()?;
        trie::repair_deferred(&db)?;
        let archive = Blocks::open(dir, archive, &db)?;
        let tx_index = {
            let txn = db.begin_ro_txn()?;
            let tables = Tables::open(&txn)?;
            RecentTxs::open(&txn, &tables, &archive, read_head(&txn, &tables)?)?
        };
        // Everything committed before is durable from here: after a process crash MDBX keeps a
        // head that is not steady (the pages are in the page cache); this makes it steady.
        db.sync(true)?;
        let head = {
            let txn = db.begin_ro_txn()?;
            read_head(&txn, &Tables::open(&txn)?)?
        };
        let db = Arc::new(db);
        let syncer = Arc::new(Syncer::new(head));
        let sync_thread = match durability {
            Durability::Durable => {
                let data = File::open(dir.join(DB_FILE)).map_err(StorageError::SyncStart)?;
                let thread = syncer.spawn(db.clone(), data);
                Some(thread.map_err(StorageError::SyncStart)?)
            }
            Durability::Unsynced => None,
        };
        let store = Self {
            db,
            bottoms: Arc::default(),
            deferred: trie::DeferredNodes::default(),
            state_cache: state_cache::StateCache::default(),
            data_file: dir.join(DB_FILE),
            archive,
            blocks: BlockCache::default(),
            history: HistoryWindow::default(),
            syncer,
            sync_thread,
            tx_index,
            _lock: lock,
        };
        store.fill_bottoms()?;
        Ok(store)
    }

    /// The last block that survives a power loss now; the head ([`ChainView::head`]) may be
    /// up to [`UNSYNCED_COMMITS_MAX`] commits ahead of it. `None` before genesis is durable.
    pub fn durable_head(&self) -> Option<BlockNumber> {
        self.syncer.durable_head()
    }

    /// Makes everything committed durable before it returns, on the caller's thread (at
    /// shutdown; after a state sync's restore). Returns the durable head. Waits for an open
    /// [`BlockWriter`] to end: never call it while holding one.
    pub fn sync(&self) -> Result<Option<BlockNumber>, StorageError> {
        self.syncer.sync_now(&self.db)
    }

    /// What the sync thread has done since open.
    pub fn sync_stats(&self) -> SyncStats {
        self.syncer.stats()
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
        self.init_genesis_with_progress(spec, &mut |_| {})
    }

    /// [`Store::init_genesis`], reporting the progress of the state's write (a 10,000,000-account
    /// allocation takes about 25 s).
    ///
    /// The state goes in through the bulk writer (`bulk`: sorted appends, in transactions of a
    /// bounded size), which writes exactly what [`BlockWriter::apply_state`] would, then the
    /// genesis block's own transaction moves the head to it.
    pub fn init_genesis_with_progress(
        &self,
        spec: &ChainSpec,
        progress: &mut dyn FnMut(GenesisProgress),
    ) -> Result<SealedBlock, StorageError> {
        assert_eq!(
            self.view(|r| r.base())??,
            0,
            "a state-synced store has no genesis block"
        );
        if let Some(stored) = self.view(|r| r.block_hash(0))?? {
            let expected = genesis_header(spec).hash_slow();
            if stored != expected {
                return Err(StorageError::GenesisMismatch { stored, expected });
            }
            let block = self.view(|r| r.block(0))??;
            let block = block.expect("genesis hash is stored, so is its block");
            return Ok(Arc::unwrap_or_clone(block));
        }
        // The bulk writer computes the root as it writes: no second pass over the allocation.
        let root = bulk::write_state(&self.db, &spec.alloc, bulk::CHUNK_ACCOUNTS, progress)?;
        let header = genesis::genesis_header_with_root(spec, root);
        let block = SealedBlock {
            hash: header.hash_slow(),
            header,
            txs: Vec::new(),
            receipts: Vec::new(),
        };
        let mut writer = self.begin_block()?;
        writer.insert_block(&block)?;
        writer.commit()?;
        self.recache_pages()?;
        self.fill_bottoms()?;
        Ok(block)
    }

    /// Keeps the account trie's bottom subtrees' top branches as the last commit holds them
    /// (`trie::BottomCache::fill`) and empties the state cache: at open, and after the state was
    /// written otherwise than by blocks.
    pub(crate) fn fill_bottoms(&self) -> Result<(), StorageError> {
        // Every node the table holds is current: written whole, or repaired at open.
        self.deferred.reset();
        self.state_cache.clear();
        let started = std::time::Instant::now();
        let kept = self.bottoms.fill(&self.db)?;
        if kept > 0 {
            tracing::info!(
                target: "storage",
                kept,
                seconds = started.elapsed().as_secs_f64(),
                "account trie's bottom subtrees' top branches kept in memory"
            );
        }
        Ok(())
    }

    /// After a bulk write (genesis, state sync): makes it durable, then has the OS cache the
    /// database file one page a folio (`page_cache`), as the blocks after it write it. Not in a
    /// store without a sync thread (tests, the simulation): its pages stay dirty, so the kernel
    /// could not drop them anyway.
    pub(crate) fn recache_pages(&self) -> Result<(), StorageError> {
        if self.sync_thread.is_none() {
            return Ok(());
        }
        self.sync()?;
        let used = (self.db.info()?.last_pgno() as u64 + 1) * DB_PAGE_BYTES as u64;
        let done = page_cache::recache(&self.data_file, used)?;
        tracing::info!(
            target: "storage",
            mib = done.bytes >> 20,
            seconds = done.seconds,
            "database file re-read into the page cache page by page"
        );
        Ok(())
    }

    /// Runs `f` over one consistent snapshot.
    pub fn view<R>(&self, f: impl FnOnce(&Reader<'_>) -> R) -> Result<R, StorageError> {
        // The account trie's deferred branches as of the commit it reads: kept for the last
        // few commits, so a transaction that began before several more committed begins again.
        let (txn, fresh) = loop {
            let txn = self.db.begin_ro_txn()?;
            if let Some(fresh) = self.deferred.view_at(txn.id()) {
                break (txn, fresh);
            }
        };
        let reader = Reader {
            fresh,
            state_cache: &self.state_cache,
            txn_id: txn.id(),
            txn: &txn,
            tables: Tables::open(&txn)?,
            archive: &self.archive,
            blocks: &self.blocks,
            tx_index: &self.tx_index,
        };
        Ok(f(&reader))
    }

    /// Keeps `block`, just committed, decoded for readers, as if one had read it (see
    /// [`BlockCache`]).
    pub fn cache_committed(&self, block: Arc<SealedBlock>) {
        self.blocks.insert(block);
    }

    /// Starts the write transaction of the next block; waits while another one is open, and
    /// while the sync thread is behind by [`UNSYNCED_COMMITS_MAX`] commits (see [`sync`]).
    pub fn begin_block(&self) -> Result<BlockWriter<'_>, StorageError> {
        let writing = self.syncer.begin()?;
        let txn = self.db.begin_rw_txn()?;
        // The last commit's: no other write transaction can commit while this one is open.
        let committed_view = self.deferred.latest();
        Ok(BlockWriter {
            txn,
            db: &self.db,
            archive: &self.archive,
            appended: None,
            history: self.history,
            recorder: None,
            writing,
            state_written: false,
            tx_index: &self.tx_index,
            inserted: Vec::new(),
            bottoms: &self.bottoms,
            block_tops: Vec::new(),
            deferred: &self.deferred,
            pending: std::cell::RefCell::new(committed_view.clone()),
            committed_view,
            state_cache: &self.state_cache,
            cache_writes: Vec::new(),
        })
    }
}

impl Drop for Store {
    /// A clean stop loses nothing even to a power loss after it: the sync thread makes the last
    /// commits durable before it exits, and the final sync covers transactions outside blocks
    /// (genesis' bulk writes, a restore's chunks).
    fn drop(&mut self) {
        self.syncer.stop();
        if let Some(thread) = self.sync_thread.take() {
            thread.join().expect("the database sync thread panicked");
        }
        // Spares the next open the account trie's rebuild.
        if let Err(err) = self.deferred.checkpoint(&self.db) {
            tracing::error!(target: "storage", %err, "writing the deferred account-trie branches failed");
        }
        if let Err(err) = self.sync() {
            tracing::error!(target: "storage::sync", %err, "final database sync failed");
        }
    }
}
