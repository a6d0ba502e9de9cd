//! Moving change sets into the history tables: a batch of [`INDEX_BATCH_BLOCKS`] blocks at a
//! time, one address range of it per commit.
//!
//! A batch's rows for one range of addresses land close together in the history tables (their
//! keys start with the address), so each commit dirties a range's worth of pages instead of a
//! page per row; and as many ranges as blocks per batch keep the moving in step with the chain at
//! one range per block, so no commit pays for a whole batch.
//!
//! Accounts change at most once a block each, so equal ranges of addresses hold about equal
//! rows. Slots do not: one busy contract (a token) changes thousands of its slots every block,
//! all under one address, and with ranges of addresses its range moved 700,000 rows in one
//! commit (1-2.5 s at 20,000 tx/s, a finality stall every 64 blocks). So the ranges of storage
//! rows are cut at the slot keys (`address ‖ slot`) of one block of the batch, the sample, at
//! equal counts: a busy contract's slots are spread over many ranges like everything else.

use super::{account_key, slot_key};
use crate::{
    Env, StorageError,
    tables::{self, HISTORY_INDEXED_KEY, Tables},
};
use alloy_primitives::{Address, U256};
use kestrel_types::BlockNumber;
use libmdbx::{RW, Table, Transaction, TransactionKind, WriteFlags};
use std::{borrow::Cow, ops::RangeInclusive};

/// Blocks whose change sets move together. Reads look through the change sets of up to twice
/// this many blocks (the batch being moved and the one filling), one point lookup each.
#[cfg(not(test))]
pub(crate) const INDEX_BATCH_BLOCKS: u64 = 64;
/// Small in the unit tests, so that their 20-80 block chains cross many batches and ranges.
#[cfg(test)]
pub(crate) const INDEX_BATCH_BLOCKS: u64 = 4;

/// Address ranges a batch moves in: one per block keeps up with the chain.
const RANGES: u64 = INDEX_BATCH_BLOCKS;

/// How far the moving has come: every block up to `through` is in the history tables, and the
/// first `range` address ranges of the batch after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    through: BlockNumber,
    range: u64,
}

impl Progress {
    fn read<K: TransactionKind>(
        txn: &Transaction<'_, K, Env>,
        tables: &Tables<'_>,
    ) -> Result<Option<Self>, StorageError> {
        let Some(bytes) = txn.get::<Cow<'_, [u8]>>(&tables.metadata, HISTORY_INDEXED_KEY)? else {
            return Ok(None);
        };
        let corrupt = || StorageError::Corrupt {
            table: tables::METADATA,
            reason: format!("bad history progress of {} bytes", bytes.len()),
        };
        let (through, range) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
        let range: [u8; 8] = range.try_into().map_err(|_| corrupt())?;
        Ok(Some(Self {
            through: u64::from_be_bytes(*through),
            range: u64::from_be_bytes(range),
        }))
    }

    fn write(
        self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
    ) -> Result<(), StorageError> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.through.to_be_bytes());
        bytes[8..].copy_from_slice(&self.range.to_be_bytes());
        txn.put(
            &tables.metadata,
            HISTORY_INDEXED_KEY,
            bytes,
            WriteFlags::UPSERT,
        )?;
        Ok(())
    }

    fn batch(self) -> RangeInclusive<BlockNumber> {
        self.through + 1..=self.through + INDEX_BATCH_BLOCKS
    }
}

/// Starts the moving after `head` in a database that has no change sets yet (a new one, or one
/// whose history was written straight into the history tables).
pub(super) fn init(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    head: BlockNumber,
) -> Result<(), StorageError> {
    if Progress::read(txn, tables)?.is_none() {
        Progress {
            through: head,
            range: 0,
        }
        .write(txn, tables)?;
    }
    Ok(())
}

/// Starts the moving after `base`, whatever was recorded (a store that state sync fills).
pub(super) fn start_at(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    base: BlockNumber,
) -> Result<(), StorageError> {
    Progress {
        through: base,
        range: 0,
    }
    .write(txn, tables)
}

/// The blocks whose change sets may still hold rows: those after the last whole batch moved.
pub(super) fn unmoved<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
    head: BlockNumber,
) -> Result<RangeInclusive<BlockNumber>, StorageError> {
    let through = Progress::read(txn, tables)?.map_or(head, |p| p.through);
    Ok(through + 1..=head)
}

/// Moves the next address range of the oldest complete batch, now that `head` is inserted: two
/// ranges when more than a batch behind (after an upgrade, or a window made larger), so that the
/// moving catches up.
pub(super) fn step(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    head: BlockNumber,
) -> Result<(), StorageError> {
    let Some(mut progress) = Progress::read(txn, tables)? else {
        return Ok(()); // `init` runs at open; a store opened read-only does not write
    };
    let before = progress;
    let ranges = if head >= progress.through + 2 * INDEX_BATCH_BLOCKS {
        2
    } else {
        1
    };
    for _ in 0..ranges {
        if head < *progress.batch().end() {
            break; // the batch is still filling
        }
        move_range(txn, tables, progress.batch(), progress.range)?;
        progress.range += 1;
        if progress.range == RANGES {
            progress = Progress {
                through: *progress.batch().end(),
                range: 0,
            };
        }
    }
    if progress != before {
        progress.write(txn, tables)?;
    }
    Ok(())
}

/// The first address byte of range `range`, and of the next (`None` after the last).
fn range_bounds(range: u64) -> (u8, Option<u8>) {
    let start = |r: u64| r * 256 / RANGES;
    let end = start(range + 1);
    (start(range) as u8, (end < 256).then_some(end as u8))
}

/// Where storage range `range` of `blocks` starts and ends (`None`: the first range's start, or
/// the last one's end), as slot keys (`address ‖ slot`, [`SLOT_KEY_LEN`] bytes).
///
/// The cuts are the slot keys at every [`RANGES`]th of the sample's: the batch's last block with
/// a change list (every step of a batch reads the same one, so its ranges meet end to end). A
/// batch without one (its lists pruned by a window shorter than a batch, or no slot changed)
/// falls back to ranges of addresses.
fn storage_bounds(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    blocks: &RangeInclusive<BlockNumber>,
    range: u64,
) -> Result<(Option<SlotKey>, Option<SlotKey>), StorageError> {
    for block in blocks.clone().rev() {
        let Some(list) = txn.get::<Cow<'_, [u8]>>(&tables.history_changes, block.to_be_bytes())?
        else {
            continue;
        };
        let (_, slots) = super::split_changes(&list)?;
        let count = slots.len() / SLOT_KEY_LEN;
        if count == 0 {
            continue;
        }
        let cut = |r: u64| -> Option<SlotKey> {
            (r > 0 && r < RANGES).then(|| {
                let at = (r as usize * count / RANGES as usize) * SLOT_KEY_LEN;
                slots[at..at + SLOT_KEY_LEN]
                    .try_into()
                    .expect("a whole key")
            })
        };
        return Ok((cut(range), cut(range + 1)));
    }
    let (first, end) = range_bounds(range);
    let key = |byte: u8| {
        let mut key = [0u8; SLOT_KEY_LEN];
        key[0] = byte;
        key
    };
    Ok(((range > 0).then(|| key(first)), end.map(key)))
}

/// A change-set row's key after its block number: `address ‖ slot` for storage.
const SLOT_KEY_LEN: usize = 52;
type SlotKey = [u8; SLOT_KEY_LEN];

/// Moves the rows of `blocks` whose address (for storage rows, whose slot key; see
/// [`storage_bounds`]) is in `range` from the change sets into the history tables, keys sorted
/// so that neighbours share pages.
fn move_range(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    blocks: RangeInclusive<BlockNumber>,
    range: u64,
) -> Result<(), StorageError> {
    let (first, end) = range_bounds(range);
    let account_bounds = ((range > 0).then_some([first]), end.map(|end| [end]));
    let mut slot_bounds = storage_bounds(txn, tables, &blocks, range)?;
    if range == RANGES - 1 {
        // The last step takes every storage row the batch still has, not only those from the
        // last cut on: a batch half moved by a version that cut storage by address ranges would
        // otherwise leave rows between its cut and ours behind, which no read looks for once
        // the batch is done. Rows before the cut are gone already, so the seek costs nothing.
        slot_bounds.0 = None;
    }
    let mut accounts = Vec::new();
    let mut slots = Vec::new();
    let (account_bounds, slot_bounds) = (slices(&account_bounds), slices(&slot_bounds));
    for block in blocks {
        for (key, old) in take_rows(txn, &tables.account_changes, block, account_bounds)? {
            let address = Address::from_slice(&key[8..]);
            accounts.push((account_key(&address, block), old));
        }
        for (key, old) in take_rows(txn, &tables.storage_changes, block, slot_bounds)? {
            let address = Address::from_slice(&key[8..28]);
            let slot = U256::from_be_slice(&key[28..]);
            slots.push((slot_key(&address, &slot, block), old));
        }
    }
    accounts.sort_unstable_by_key(|row| row.0);
    slots.sort_unstable_by_key(|row| row.0);
    for (key, old) in accounts {
        txn.put(&tables.account_history, key, old, WriteFlags::UPSERT)?;
    }
    for (key, old) in slots {
        txn.put(&tables.storage_history, key, old, WriteFlags::UPSERT)?;
    }
    Ok(())
}

/// A range's bounds as [`take_rows`] takes them.
fn slices<const N: usize>(
    (start, end): &(Option<[u8; N]>, Option<[u8; N]>),
) -> (Option<&[u8]>, Option<&[u8]>) {
    (start.as_ref().map(|k| &k[..]), end.as_ref().map(|k| &k[..]))
}

/// A change-set row: its key and the value before the block.
type Row = (Vec<u8>, Vec<u8>);

/// Deletes and returns the rows of `block` in a change-set table whose key after the block
/// number is at or after `start` and before `end` (compared on their length; `None`: open).
fn take_rows(
    txn: &Transaction<'_, RW, Env>,
    table: &Table<'_>,
    block: BlockNumber,
    (start, end): (Option<&[u8]>, Option<&[u8]>),
) -> Result<Vec<Row>, StorageError> {
    let number = block.to_be_bytes();
    let mut seek = Vec::with_capacity(8 + SLOT_KEY_LEN);
    seek.extend_from_slice(&number);
    seek.extend_from_slice(start.unwrap_or_default());
    let mut rows = Vec::new();
    let mut cursor = txn.cursor(table)?;
    let mut entry = cursor.set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(&seek)?;
    while let Some((key, value)) = entry {
        if !key.starts_with(&number) || end.is_some_and(|end| key[8..8 + end.len()] >= *end) {
            break;
        }
        rows.push((key.into_owned(), value.into_owned()));
        cursor.del(WriteFlags::empty())?;
        // After a deletion MDBX's next step lands on the entry that followed the deleted one.
        entry = cursor.next()?;
    }
    Ok(rows)
}
