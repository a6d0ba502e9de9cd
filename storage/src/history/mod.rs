//! Historical state: what every account and storage slot held before each block that changed
//! it, for a window of recent blocks.
//!
//! A block's commit appends its change set, keyed by block first (`AccountChangeSets`:
//! `block ‖ address`, `StorageChangeSets`: `block ‖ address ‖ slot`, the value before the block
//! as the flat tables store it, empty for absent or zero), so its rows land at the end of the
//! tables and dirty few pages ([`record`]). Batches of [`INDEX_BATCH_BLOCKS`] blocks are then
//! moved, one address range per commit, into the history tables keyed by what changed
//! (`AccountHistory`: `address ‖ block`, `StorageHistory`: `address ‖ slot ‖ block`), where the
//! state after block `b` is one seek: the entry of the first block after `b` that changed the
//! key ([`index`]). Written there directly, each block's rows would land all over the tables and
//! dirty a page each, which doubled the commit thread's time per block at 10,000 TPS
//! (BENCHMARKS.md, "History"); moved a range at a time, a batch's rows for a range share pages.
//! A read looks in both: the history tables, and the change sets of the few blocks not moved yet
//! ([`read`]). This is reth's layout (change sets by block, indexes by key) with the index holding
//! the values, so a read needs no second lookup. `HistoryChanges` lists each block's keys, so that
//! pruning a block costs its own entries and nothing else.
//!
//! The window: state is answerable from block [`history_from`] (the metadata key
//! [`HISTORY_FROM_KEY`]) to the head. Pruning deletes the oldest block's entries and moves it up,
//! a few blocks per commit, never inside the configured window.

mod index;
mod read;
mod record;

#[cfg(test)]
pub(crate) use index::INDEX_BATCH_BLOCKS;
pub use read::StateAt;
pub(crate) use record::ChangeRecorder;

use crate::{
    Env, StorageError, codec,
    tables::{self, HISTORY_FROM_KEY, Tables},
};
use alloy_primitives::{Address, U256};
use kestrel_types::BlockNumber;
use libmdbx::{RW, Transaction, TransactionKind, WriteFlags};
use std::borrow::Cow;

/// Blocks of history kept when the operator does not say: at 500 ms blocks about 14 hours.
pub const HISTORY_BLOCKS_DEFAULT: u64 = 100_000;

/// Blocks pruned at most per commit: twice the one that leaves the window each block, so a
/// window made smaller catches up without one commit paying for all of it.
const PRUNE_BLOCKS_PER_COMMIT: u64 = 2;

/// How much history to keep. `Blocks(0)` records none (the head's state only, the cheapest
/// commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryWindow {
    /// The state after each of the last `n` blocks (and the head's).
    Blocks(u64),
    /// Every block's: an archive node.
    All,
}

impl Default for HistoryWindow {
    fn default() -> Self {
        Self::Blocks(HISTORY_BLOCKS_DEFAULT)
    }
}

impl HistoryWindow {
    /// Whether blocks record history at all: a window of 0 keeps only the head's state.
    pub(crate) fn records(self) -> bool {
        self != Self::Blocks(0)
    }

    /// The oldest block whose state a head of `head` keeps.
    fn oldest(self, head: BlockNumber) -> BlockNumber {
        match self {
            Self::Blocks(n) => head.saturating_sub(n),
            Self::All => 0,
        }
    }
}

impl std::fmt::Display for HistoryWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Blocks(n) => write!(f, "{n}"),
            Self::All => f.write_str("all"),
        }
    }
}

impl std::str::FromStr for HistoryWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            n => n
                .parse()
                .map(Self::Blocks)
                .map_err(|_| format!("`{s}`: a number of blocks, or `all`")),
        }
    }
}

/// Metric names of the history tables.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "kestrel_history_oldest_block",
        "Oldest block whose state historical queries can read"
    );
    metrics::describe_counter!(
        "kestrel_history_rows_written_total",
        "Account and storage values recorded as they were before the block that changed them"
    );
    metrics::describe_counter!(
        "kestrel_history_rows_pruned_total",
        "History entries deleted because their block left the history window"
    );
    metrics::describe_histogram!(
        SECONDS,
        metrics::Unit::Seconds,
        "Time a block's commit spends on history: writing its change set (step=record), moving change sets into the history tables and pruning (step=move)"
    );
}

/// Histogram of the history's share of a block's commit, by `step`.
pub(crate) const SECONDS: &str = "kestrel_history_seconds";

/// The first block whose state is answerable.
pub(crate) fn history_from<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<BlockNumber, StorageError> {
    Ok(crate::reader::read_metadata_number(txn, tables, HISTORY_FROM_KEY)?.unwrap_or(0))
}

/// Marks where history starts in a database that did not record it: at its head, whose state
/// is the current one. Databases made since record from genesis.
pub(crate) fn init(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
) -> Result<(), StorageError> {
    let head = crate::read_head(txn, tables)?.unwrap_or(0);
    if txn
        .get::<Cow<'_, [u8]>>(&tables.metadata, HISTORY_FROM_KEY)?
        .is_none()
    {
        txn.put(
            &tables.metadata,
            HISTORY_FROM_KEY,
            head.to_be_bytes(),
            WriteFlags::UPSERT,
        )?;
    }
    index::init(txn, tables, head)
}

/// Makes `base` the first block with history in a database whose state starts there (state
/// sync's): nothing before it is answerable, and change sets are moved from the blocks after it.
pub(crate) fn start_at(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    base: BlockNumber,
) -> Result<(), StorageError> {
    txn.put(
        &tables.metadata,
        HISTORY_FROM_KEY,
        base.to_be_bytes(),
        WriteFlags::UPSERT,
    )?;
    index::start_at(txn, tables, base)
}

fn account_key(address: &Address, block: BlockNumber) -> [u8; 28] {
    let mut key = [0u8; 28];
    key[..20].copy_from_slice(address.as_slice());
    key[20..].copy_from_slice(&block.to_be_bytes());
    key
}

fn slot_key(address: &Address, slot: &U256, block: BlockNumber) -> [u8; 60] {
    let mut key = [0u8; 60];
    key[..52].copy_from_slice(&codec::plain_slot_key(address, slot));
    key[52..].copy_from_slice(&block.to_be_bytes());
    key
}

/// Moves one step of change sets into the history tables, then deletes the entries of blocks
/// that left `window` now that `head` is committed, at most [`PRUNE_BLOCKS_PER_COMMIT`] blocks
/// of them.
pub(crate) fn prune(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    window: HistoryWindow,
    head: BlockNumber,
) -> Result<(), StorageError> {
    if window.records() {
        index::step(txn, tables, head)?;
    }
    let from = history_from(txn, tables)?;
    let target = window.oldest(head).min(from + PRUNE_BLOCKS_PER_COMMIT);
    let mut rows = 0;
    // The state after `from` needs the entries of the blocks after it, so pruning block `b`
    // makes `b` the oldest answerable block.
    for block in from + 1..=target {
        let key = block.to_be_bytes();
        let Some(list) = txn.get::<Cow<'_, [u8]>>(&tables.history_changes, key)? else {
            continue; // a block recorded before history was (genesis, or an upgraded database)
        };
        let (accounts, slots) = split_changes(&list)?;
        for address in accounts.chunks_exact(20) {
            let address = Address::from_slice(address);
            txn.del(&tables.account_history, account_key(&address, block), None)?;
        }
        for slot in slots.chunks_exact(52) {
            let mut entry = [0u8; 60];
            entry[..52].copy_from_slice(slot);
            entry[52..].copy_from_slice(&key);
            txn.del(&tables.storage_history, entry, None)?;
        }
        rows += (accounts.len() / 20 + slots.len() / 52) as u64;
        txn.del(&tables.history_changes, key, None)?;
        // The block's rows not moved into the history tables yet (a window shorter than a
        // batch prunes them first).
        crate::delete_prefix(txn, &tables.account_changes, &key)?;
        crate::delete_prefix(txn, &tables.storage_changes, &key)?;
    }
    if target > from {
        txn.put(
            &tables.metadata,
            HISTORY_FROM_KEY,
            target.to_be_bytes(),
            WriteFlags::UPSERT,
        )?;
    }
    metrics::counter!("kestrel_history_rows_pruned_total").increment(rows);
    metrics::gauge!("kestrel_history_oldest_block").set(target.max(from) as f64);
    Ok(())
}

/// A `HistoryChanges` value: its account addresses and its `address ‖ slot` keys.
fn split_changes(list: &[u8]) -> Result<(&[u8], &[u8]), StorageError> {
    let corrupt = || StorageError::Corrupt {
        table: tables::HISTORY_CHANGES,
        reason: format!("bad change list of {} bytes", list.len()),
    };
    let (count, rest) = list.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let accounts = 20 * u32::from_be_bytes(*count) as usize;
    if rest.len() < accounts || !(rest.len() - accounts).is_multiple_of(52) {
        return Err(corrupt());
    }
    Ok(rest.split_at(accounts))
}
