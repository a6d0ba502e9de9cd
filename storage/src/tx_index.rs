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
//! **A batch is written in [`PARTS`] commits**, one range of hashes each: written whole, a batch
//! of 16 blocks at 20,000 transactions a second (160,000 puts) held up its commit by 100–230 ms
//! every 8 s, which showed as the finality p99. A range of hashes is a range of the table's
//! pages, so each page is still written once a batch. A batch still unfinished when the next one
//! closes (a commit of many blocks) is finished in that commit.
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
    tables::Tables,
};
use alloy_primitives::{B256, map::HashMap};
use kestrel_types::BlockNumber;
use libmdbx::{RW, Transaction, TransactionKind, WriteFlags};
use parking_lot::RwLock;
use std::{collections::BTreeMap, time::Instant};

/// Metadata key: the first block whose locations are not in `TxLocations` (absent in a store
/// written before batches, whose table holds every committed block's).
pub(crate) const TX_INDEX_NEXT_KEY: &[u8] = b"tx_index_next";
/// Blocks whose locations go into `TxLocations` in one sorted batch: 8 s of 500 ms blocks, about
/// 80,000 locations (6 MB of memory) at 10,000 transactions a second.
pub(crate) const BATCH_BLOCKS: u64 = 16;
/// Commits a batch is written in, by the top bits of the hash; fewer than [`BATCH_BLOCKS`], so
/// that at one block a commit a batch is done before the next one closes.
pub(crate) const PARTS: u8 = 8;
const _: () = assert!(PARTS.is_power_of_two() && (PARTS as u64) < BATCH_BLOCKS);

/// Which of the [`PARTS`] ranges of hashes `hash` is in.
pub(crate) fn part_of(hash: &B256) -> u8 {
    hash[0] >> (8 - PARTS.trailing_zeros())
}

const BATCH_SECONDS: &str = "kestrel_storage_tx_index_batch_seconds";
const IN_MEMORY: &str = "kestrel_storage_tx_index_memory_locations";

pub(crate) fn describe_metrics() {
    metrics::describe_histogram!(
        BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Time to put one part (a range of hashes) of a sorted batch of blocks' transaction locations into the index table"
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
    /// The batch being written: the blocks from `next` up to here, and how many parts are in.
    writing: Option<Progress>,
}

/// How far a commit took the batch ending (exclusive) at `end`: its first `parts` ranges of
/// hashes are in the table, all of them once `parts` is [`PARTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    end: BlockNumber,
    parts: u8,
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

    /// Writes the next part of the batch of blocks since the last one, in `txn` (the commit of
    /// `inserted`, the blocks it inserts, in order), once they span a batch. Returns what to
    /// hand [`RecentTxs::committed`]: `None` when nothing was written.
    pub(crate) fn write_batch(
        &self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        inserted: &[(BlockNumber, Vec<B256>)],
    ) -> Result<Option<Progress>, StorageError> {
        let (Some((first, _)), Some((last, _))) = (inserted.first(), inserted.last()) else {
            return Ok(None);
        };
        let Some(next) = read_next(txn, tables)? else {
            // The first commit of batches on this store: every block before this commit's is in
            // the table (a store written before batches) or has no body (genesis' parent, a
            // state-synced store's base).
            put_next(txn, tables, *first)?;
            return Ok(Some(Progress {
                end: *first,
                parts: PARTS,
            }));
        };
        let recent = self.0.read();
        let Progress { end, parts: done } = match recent.writing {
            Some(progress) => progress,
            None if last + 1 - next >= BATCH_BLOCKS => Progress {
                end: last + 1,
                parts: 0,
            },
            None => return Ok(None),
        };
        // One part a commit, unless the next batch has closed too: then all that is left.
        let parts = if last + 1 - end >= BATCH_BLOCKS {
            PARTS
        } else {
            done + 1
        };
        let started = Instant::now();
        let mut batch: Vec<(B256, BlockNumber, u32)> = Vec::new();
        let memory = recent.blocks.range(next..end).map(|(n, h)| (*n, h));
        let this_commit = inserted
            .iter()
            .filter(|(n, _)| *n < end)
            .map(|(n, h)| (*n, h));
        for (number, hashes) in memory.chain(this_commit) {
            batch.extend(hashes.iter().enumerate().filter_map(|(index, hash)| {
                (done..parts)
                    .contains(&part_of(hash))
                    .then_some((*hash, number, index as u32))
            }));
        }
        drop(recent);
        batch.sort_unstable_by_key(|(hash, ..)| *hash);
        let mut cursor = txn.cursor(&tables.tx_locations)?;
        for (hash, number, index) in batch {
            let location = codec::encode_tx_location(number, index);
            cursor.put(hash.as_slice(), &location, WriteFlags::UPSERT)?;
        }
        if parts == PARTS {
            put_next(txn, tables, end)?;
        }
        metrics::histogram!(BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(Some(Progress { end, parts }))
    }

    /// After the commit of `inserted`: indexes them in memory and takes the batch as far as
    /// that commit did (`progress`). Once a batch is all in, forgets the batch before it (the
    /// one just written stays until the next, for readers whose snapshots predate its commit).
    pub(crate) fn committed(
        &self,
        inserted: Vec<(BlockNumber, Vec<B256>)>,
        progress: Option<Progress>,
    ) {
        let mut recent = self.0.write();
        for (number, hashes) in inserted {
            recent.add(number, hashes);
        }
        match progress {
            Some(Progress { end, parts: PARTS }) => {
                let previous = std::mem::replace(&mut recent.next, end);
                recent.drop_below(previous);
                recent.writing = None;
            }
            Some(progress) => recent.writing = Some(progress),
            None => {}
        }
        metrics::gauge!(IN_MEMORY).set(recent.locations.len() as f64);
    }
}

fn read_next<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<BlockNumber>, StorageError> {
    crate::reader::read_metadata_number(txn, tables, TX_INDEX_NEXT_KEY)
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
