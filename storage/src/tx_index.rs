//! The transaction index (hash → block number and position), written to `TxLocations` in
//! sorted batches of [`BATCH_BLOCKS`] blocks rather than with each block's commit.
//!
//! **Why.** Transaction hashes are random keys, so each block's put of its hashes dirtied about
//! one `TxLocations` page per transaction: in the end-to-end benchmark a 5,000-transaction block
//! dirtied ~3,700 of the index's pages against ~2,700 for the whole state, and every dirty page
//! is copied, written and flushed at the commit. Put in one sorted batch, the hashes of 16
//! blocks share those pages: in an index of a few million transactions each page is written
//! once a batch instead of once a block. (In an index much larger than a batch, a batch's keys
//! again fall on distinct pages; a per-segment sorted index beside the block archive is the way
//! past that, and the in-memory part below is its first half.)
//!
//! **Where a location is meanwhile.** The blocks after the last batch ([`TX_INDEX_NEXT_KEY`] in
//! the metadata: every block below it is in `TxLocations`) are indexed in memory
//! ([`RecentTxs`]), filled after each commit, and rebuilt at open from the bodies in the block
//! archive, which the commit already made durable. A lookup asks memory, then the table. A batch
//! stays in memory until the next batch is written, so that a reader whose snapshot began before
//! a batch's commit still finds its blocks (a reader would have to outlive a whole batch of
//! blocks to miss one).

use crate::{
    Env, StorageError,
    blocks::{self, Blocks},
    codec,
    tables::{self, Tables},
};
use alloy_primitives::{B256, map::HashMap};
use kestrel_types::BlockNumber;
use libmdbx::{RW, Transaction, TransactionKind, WriteFlags};
use parking_lot::RwLock;
use std::{borrow::Cow, collections::BTreeMap, time::Instant};

/// Metadata key: the first block whose locations are not in `TxLocations` (absent in a store
/// written before batches, whose table holds every committed block's).
pub(crate) const TX_INDEX_NEXT_KEY: &[u8] = b"tx_index_next";
/// Blocks whose locations go into `TxLocations` in one sorted batch: 8 s of 500 ms blocks, about
/// 80,000 locations (6 MB of memory) at 10,000 transactions a second.
pub(crate) const BATCH_BLOCKS: u64 = 16;

const BATCH_SECONDS: &str = "kestrel_storage_tx_index_batch_seconds";
const IN_MEMORY: &str = "kestrel_storage_tx_index_memory_locations";

pub(crate) fn describe_metrics() {
    metrics::describe_histogram!(
        BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time to put one sorted batch of blocks' transaction locations into the index table"
    );
    metrics::describe_gauge!(
        IN_MEMORY,
        "Transaction locations of recent blocks indexed in memory (not yet, or just, written to the table)"
    );
}

/// The locations of the blocks since the batch before last, by hash.
#[derive(Default)]
pub(crate) struct RecentTxs(RwLock<Recent>);

#[derive(Default)]
struct Recent {
    locations: HashMap<B256, (BlockNumber, u32)>,
    /// Each block's hashes, to write a batch and to drop it.
    blocks: BTreeMap<BlockNumber, Vec<B256>>,
    /// The first block not in the table.
    next: BlockNumber,
}

impl Recent {
    fn add(&mut self, number: BlockNumber, hashes: Vec<B256>) {
        for (index, hash) in hashes.iter().enumerate() {
            self.locations.insert(*hash, (number, index as u32));
        }
        let replaced = self.blocks.insert(number, hashes);
        assert!(replaced.is_none(), "block {number} indexed twice");
    }

    /// Forgets the blocks below `number`.
    fn drop_below(&mut self, number: BlockNumber) {
        let kept = self.blocks.split_off(&number);
        for hashes in std::mem::replace(&mut self.blocks, kept).into_values() {
            for hash in hashes {
                self.locations.remove(&hash);
            }
        }
    }
}

impl RecentTxs {
    /// The index of a store whose head is `head`: the blocks after the last batch, read back
    /// from the archive.
    pub(crate) fn open<K: TransactionKind>(
        txn: &Transaction<'_, K, Env>,
        tables: &Tables<'_>,
        archive: &Blocks,
        head: Option<BlockNumber>,
    ) -> Result<Self, StorageError> {
        let mut recent = Recent::default();
        let Some(head) = head else {
            return Ok(Self::default());
        };
        recent.next = read_next(txn, tables)?.unwrap_or(head + 1);
        for number in recent.next..=head {
            let txs = codec::decode_body(blocks::BODY, &archive.body(number)?)?;
            recent.add(number, txs.iter().map(|tx| tx.hash()).collect());
        }
        metrics::gauge!(IN_MEMORY).set(recent.locations.len() as f64);
        Ok(Self(RwLock::new(recent)))
    }

    /// Where the transaction `hash` is, if a block up to `head` (the asking reader's) has it.
    /// `None` may still be in the table.
    pub(crate) fn get(&self, hash: &B256, head: BlockNumber) -> Option<(BlockNumber, u32)> {
        self.0
            .read()
            .locations
            .get(hash)
            .copied()
            .filter(|(number, _)| *number <= head)
    }

    /// Writes the locations of the blocks since the last batch, and of `inserted` (the blocks
    /// the commit that `txn` belongs to inserts, in order), into the table in `txn` once they
    /// span a batch. Returns the batch's end for [`RecentTxs::committed`]: `Some(next)` when a
    /// batch or the first record of the table's extent was written.
    pub(crate) fn write_batch(
        &self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        inserted: &[(BlockNumber, Vec<B256>)],
    ) -> Result<Option<BlockNumber>, StorageError> {
        let (Some((first, _)), Some((last, _))) = (inserted.first(), inserted.last()) else {
            return Ok(None);
        };
        let Some(next) = read_next(txn, tables)? else {
            // The first commit of batches on this store: every block before this commit's is in
            // the table (a store written before batches) or has no body (genesis' parent, a
            // state-synced store's base).
            put_next(txn, tables, *first)?;
            return Ok(Some(*first));
        };
        if last + 1 - next < BATCH_BLOCKS {
            return Ok(None);
        }
        let started = Instant::now();
        let mut batch: Vec<(B256, BlockNumber, u32)> = Vec::new();
        {
            let recent = self.0.read();
            let memory = recent.blocks.range(next..).map(|(n, h)| (*n, h));
            let this_commit = inserted.iter().map(|(n, h)| (*n, h));
            for (number, hashes) in memory.chain(this_commit) {
                batch.extend(
                    hashes
                        .iter()
                        .enumerate()
                        .map(|(index, hash)| (*hash, number, index as u32)),
                );
            }
        }
        batch.sort_unstable_by_key(|(hash, ..)| *hash);
        let mut cursor = txn.cursor(&tables.tx_locations)?;
        for (hash, number, index) in batch {
            let location = codec::encode_tx_location(number, index);
            cursor.put(hash.as_slice(), &location, WriteFlags::UPSERT)?;
        }
        put_next(txn, tables, last + 1)?;
        metrics::histogram!(BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Some(last + 1))
    }

    /// After the commit of `inserted`: indexes them in memory, and, if that commit wrote a batch
    /// ending before `batch_end`, forgets the batch before it (the one just written stays until
    /// the next, for readers whose snapshots predate its commit).
    pub(crate) fn committed(
        &self,
        inserted: Vec<(BlockNumber, Vec<B256>)>,
        batch_end: Option<BlockNumber>,
    ) {
        let mut recent = self.0.write();
        for (number, hashes) in inserted {
            recent.add(number, hashes);
        }
        if let Some(end) = batch_end {
            let previous = std::mem::replace(&mut recent.next, end);
            recent.drop_below(previous);
        }
        metrics::gauge!(IN_MEMORY).set(recent.locations.len() as f64);
    }
}

fn read_next<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<BlockNumber>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(&tables.metadata, TX_INDEX_NEXT_KEY)?
        .map(|bytes| codec::decode_number(tables::METADATA, &bytes))
        .transpose()
}

fn put_next(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    next: BlockNumber,
) -> Result<(), StorageError> {
    txn.put(
        &tables.metadata,
        TX_INDEX_NEXT_KEY,
        next.to_be_bytes(),
        WriteFlags::UPSERT,
    )?;
    Ok(())
}
