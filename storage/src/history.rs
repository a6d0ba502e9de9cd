//! Historical state: what every account and storage slot held before each block that changed
//! it, for a window of recent blocks.
//!
//! Each change is one entry keyed by what changed, then the block: `address ‖ block` in
//! `AccountHistory`, `address ‖ slot ‖ block` in `StorageHistory`, the value before that block as
//! the flat tables store it (empty: absent, or zero). So the state after block `b` is, for each
//! key, the entry of the first block after `b` that changed it, or the current value if none
//! did: one seek, no separate index to keep in step (reth keeps change sets by block plus
//! sharded indexes of blocks by key; this layout is both at once, at the cost of keys that do not
//! arrive in order, which the flat tables already pay). `HistoryChanges` lists each block's keys,
//! so that pruning a block costs its own entries and nothing else.
//!
//! The window: state is answerable from block [`history_from`] (the metadata key
//! [`HISTORY_FROM_KEY`]) to the head. Pruning deletes the oldest block's entries and moves it up,
//! a few blocks per commit, never inside the configured window.

use crate::{
    Env, Reader, StateView, StorageError,
    codec::{self, AccountRecord},
    tables::{self, HISTORY_FROM_KEY, Tables},
};
use alloy_primitives::{Address, B256, Bytes, U256};
use kestrel_types::{AccountInfo, BlockNumber};
use libmdbx::{RW, Transaction, TransactionKind, WriteFlags};
use std::{borrow::Cow, collections::BTreeMap};

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
}

/// The first block whose state is answerable.
pub(crate) fn history_from<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<BlockNumber, StorageError> {
    Ok(txn
        .get::<Cow<'_, [u8]>>(&tables.metadata, HISTORY_FROM_KEY)?
        .map(|bytes| codec::decode_number(tables::METADATA, &bytes))
        .transpose()?
        .unwrap_or(0))
}

/// Marks where history starts in a database that did not record it: at its head, whose state
/// is the current one. Databases made since record from genesis.
pub(crate) fn init(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
) -> Result<(), StorageError> {
    if txn
        .get::<Cow<'_, [u8]>>(&tables.metadata, HISTORY_FROM_KEY)?
        .is_some()
    {
        return Ok(());
    }
    let head = crate::read_head(txn, tables)?.unwrap_or(0);
    txn.put(
        &tables.metadata,
        HISTORY_FROM_KEY,
        head.to_be_bytes(),
        WriteFlags::UPSERT,
    )?;
    Ok(())
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

/// The values one block is about to overwrite, taken from the flat tables before it writes and
/// stored at its end ([`ChangeRecorder::write`]). Only the first value of each key counts: a slot
/// wiped and then set in the same block had, before the block, what the wipe found.
pub(crate) struct ChangeRecorder {
    block: BlockNumber,
    accounts: BTreeMap<Address, Vec<u8>>,
    slots: BTreeMap<(Address, U256), Vec<u8>>,
}

impl ChangeRecorder {
    pub fn new(block: BlockNumber) -> Self {
        Self {
            block,
            accounts: BTreeMap::new(),
            slots: BTreeMap::new(),
        }
    }

    pub fn account(
        &mut self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        address: &Address,
    ) -> Result<(), StorageError> {
        if self.accounts.contains_key(address) {
            return Ok(());
        }
        let old = txn.get::<Cow<'_, [u8]>>(&tables.plain_accounts, address)?;
        self.accounts
            .insert(*address, old.map_or_else(Vec::new, Cow::into_owned));
        Ok(())
    }

    pub fn slot(
        &mut self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        address: &Address,
        slot: &U256,
    ) -> Result<(), StorageError> {
        if self.slots.contains_key(&(*address, *slot)) {
            return Ok(());
        }
        let key = codec::plain_slot_key(address, slot);
        let old = txn.get::<Cow<'_, [u8]>>(&tables.plain_storage, key)?;
        self.slots.insert(
            (*address, *slot),
            old.map_or_else(Vec::new, Cow::into_owned),
        );
        Ok(())
    }

    /// Every slot `address` holds: its storage is about to be wiped.
    pub fn all_slots(
        &mut self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        address: &Address,
    ) -> Result<(), StorageError> {
        let mut cursor = txn.cursor(&tables.plain_storage)?;
        let mut entry = cursor.set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(address.as_slice())?;
        while let Some((key, value)) = entry {
            if !key.starts_with(address.as_slice()) {
                break;
            }
            let slot = U256::from_be_slice(&key[20..]);
            self.slots
                .entry((*address, slot))
                .or_insert_with(|| value.into_owned());
            entry = cursor.next()?;
        }
        Ok(())
    }

    /// Stores the recorded values and the block's list of keys, once `block` is inserted.
    pub fn write(
        self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        block: BlockNumber,
    ) -> Result<(), StorageError> {
        assert_eq!(
            self.block, block,
            "state applied for block {} but block {block} inserted",
            self.block
        );
        if self.accounts.is_empty() && self.slots.is_empty() {
            return Ok(()); // nothing to prune later either
        }
        let mut keys = Vec::with_capacity(4 + 20 * self.accounts.len() + 52 * self.slots.len());
        keys.extend_from_slice(&(self.accounts.len() as u32).to_be_bytes());
        for (address, old) in &self.accounts {
            let key = account_key(address, self.block);
            txn.put(&tables.account_history, key, old, WriteFlags::UPSERT)?;
            keys.extend_from_slice(address.as_slice());
        }
        for ((address, slot), old) in &self.slots {
            let key = slot_key(address, slot, self.block);
            txn.put(&tables.storage_history, key, old, WriteFlags::UPSERT)?;
            keys.extend_from_slice(&key[..52]);
        }
        txn.put(
            &tables.history_changes,
            self.block.to_be_bytes(),
            keys,
            WriteFlags::UPSERT,
        )?;
        metrics::counter!("kestrel_history_rows_written_total")
            .increment((self.accounts.len() + self.slots.len()) as u64);
        Ok(())
    }
}

/// Deletes the entries of blocks that left `window` now that `head` is committed, at most
/// [`PRUNE_BLOCKS_PER_COMMIT`] blocks of them.
pub(crate) fn prune(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    window: HistoryWindow,
    head: BlockNumber,
) -> Result<(), StorageError> {
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

/// The state after block `block`, read from the history tables where a later block changed it
/// and from the current state where none did.
pub struct StateAt<'a, 's> {
    reader: &'a Reader<'s>,
    /// `None`: the head's state, read directly.
    after: Option<BlockNumber>,
}

impl<'s> Reader<'s> {
    /// The state after block `block` (the head's or within the history window).
    pub fn state_at(&self, block: BlockNumber) -> Result<StateAt<'_, 's>, StorageError> {
        let head = crate::read_head(self.txn, &self.tables)?.unwrap_or(0);
        if block >= head {
            return Ok(StateAt {
                reader: self,
                after: None,
            });
        }
        let oldest = history_from(self.txn, &self.tables)?;
        if block < oldest {
            return Err(StorageError::HistoryPruned {
                requested: block,
                oldest,
            });
        }
        Ok(StateAt {
            reader: self,
            after: Some(block),
        })
    }

    /// The oldest block whose state [`Reader::state_at`] reads.
    pub fn history_oldest(&self) -> Result<BlockNumber, StorageError> {
        history_from(self.txn, &self.tables)
    }

    /// The value of the first history entry at or after `key` that shares its first
    /// `prefix_len` bytes: what the key held before the first block after the one asked for
    /// that changed it. `None`: no later block changed it.
    fn history_entry(
        &self,
        table: &libmdbx::Table<'_>,
        key: &[u8],
        prefix_len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let mut cursor = self.txn.cursor(table)?;
        Ok(cursor
            .set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(key)?
            .filter(|(found, _)| found[..prefix_len] == key[..prefix_len])
            .map(|(_, value)| value.into_owned()))
    }
}

impl StateAt<'_, '_> {
    fn slot_at(
        &self,
        block: BlockNumber,
        address: &Address,
        slot: &U256,
    ) -> Result<U256, StorageError> {
        let key = slot_key(address, slot, block + 1);
        match self
            .reader
            .history_entry(&self.reader.tables.storage_history, &key, 52)?
        {
            Some(old) if old.is_empty() => Ok(U256::ZERO),
            Some(old) => codec::decode_slot_value(tables::STORAGE_HISTORY, &old),
            None => self.reader.storage(*address, *slot),
        }
    }
}

impl StateView for StateAt<'_, '_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        let Some(block) = self.after else {
            return self.reader.account(address);
        };
        let key = account_key(&address, block + 1);
        match self
            .reader
            .history_entry(&self.reader.tables.account_history, &key, 20)?
        {
            Some(old) if old.is_empty() => Ok(None),
            Some(old) => Ok(Some(
                AccountRecord::decode(tables::ACCOUNT_HISTORY, &old)?.info,
            )),
            None => self.reader.account(address),
        }
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        match self.after {
            None => self.reader.storage(address, slot),
            Some(block) => self.slot_at(block, &address, &slot),
        }
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        // Code is never deleted, and a hash names one code.
        self.reader.code(code_hash)
    }

    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        let Some(block) = self.after else {
            return self.reader.has_storage(address);
        };
        // A slot set then is either set now or changed since: check the slots of both kinds
        // (only contract creations at a past block ask, and most targets have neither).
        let mut slots = Vec::new();
        let mut cursor = self
            .reader
            .txn
            .cursor(&self.reader.tables.storage_history)?;
        let mut entry = cursor.set_range::<Cow<'_, [u8]>, ()>(address.as_slice())?;
        while let Some((key, ())) = entry {
            if !key.starts_with(address.as_slice()) {
                break;
            }
            slots.push(U256::from_be_slice(&key[20..52]));
            entry = cursor.next()?;
        }
        let mut cursor = self.reader.txn.cursor(&self.reader.tables.plain_storage)?;
        let mut entry = cursor.set_range::<Cow<'_, [u8]>, ()>(address.as_slice())?;
        while let Some((key, ())) = entry {
            if !key.starts_with(address.as_slice()) {
                break;
            }
            slots.push(U256::from_be_slice(&key[20..]));
            entry = cursor.next()?;
        }
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            if !self.slot_at(block, &address, &slot)?.is_zero() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
