//! Recording a block's change set: the values it is about to overwrite, appended at the end of
//! the change-set tables when the block is inserted.

use crate::{
    Env, StorageError,
    codec::{self, AccountRecord},
    preimages,
    tables::Tables,
};
use alloy_primitives::{Address, U256, keccak256};
use alloy_trie::EMPTY_ROOT_HASH;
use kestrel_types::{AccountInfo, BlockNumber};
use libmdbx::{RW, Transaction, WriteFlags};
use std::collections::BTreeMap;

/// The values one block is about to overwrite, taken from the flat tables before it writes and
/// appended to the change sets at its end ([`ChangeRecorder::write`]). Only the first value of
/// each key counts: a slot wiped and then set in the same block had, before the block, what the
/// wipe found.
pub(crate) struct ChangeRecorder {
    block: BlockNumber,
    /// In the order recorded (the writer's hashed order), sorted once at the end: a block's
    /// 20,000 accounts go in without a search or an allocation each.
    accounts: Vec<(Address, Option<AccountInfo>)>,
    slots: BTreeMap<(Address, U256), Vec<u8>>,
}

impl ChangeRecorder {
    pub fn new(block: BlockNumber) -> Self {
        Self {
            block,
            accounts: Vec::new(),
            slots: BTreeMap::new(),
        }
    }

    /// `address`'s value before the block: `old`, its stored record (`None`: it did not exist),
    /// kept as the history stores accounts, without the storage root.
    pub fn account(&mut self, address: &Address, old: Option<&AccountRecord>) {
        self.accounts.push((*address, old.map(|old| old.info)));
    }

    /// The slot's value before the block: `old`, its stored value (`None`: zero).
    pub fn slot(&mut self, address: &Address, slot: &U256, old: Option<&[u8]>) {
        self.slots
            .entry((*address, *slot))
            .or_insert_with(|| old.map_or_else(Vec::new, <[u8]>::to_vec));
    }

    /// Every slot `address` holds: its storage is about to be wiped.
    pub fn all_slots(
        &mut self,
        txn: &Transaction<'_, RW, Env>,
        tables: &Tables<'_>,
        address: &Address,
    ) -> Result<(), StorageError> {
        for (slot, value) in preimages::slots_of(txn, tables, &keccak256(address))? {
            self.slots.entry((*address, slot)).or_insert(value);
        }
        Ok(())
    }

    /// Appends the recorded values to the change sets and stores the block's list of keys, once
    /// `block` is inserted.
    pub fn write(
        mut self,
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
        // Stable: of an address recorded twice, the first value stays.
        self.accounts.sort_by_key(|(address, _)| *address);
        self.accounts.dedup_by_key(|(address, _)| *address);
        // Keys in order within the block, blocks in order: every row goes at the end of its
        // table (MDBX's append path: no search, pages filled).
        let number = self.block.to_be_bytes();
        let mut keys = Vec::with_capacity(4 + 20 * self.accounts.len() + 52 * self.slots.len());
        keys.extend_from_slice(&(self.accounts.len() as u32).to_be_bytes());
        let mut key = [0u8; 8 + 52];
        key[..8].copy_from_slice(&number);
        for (address, old) in &self.accounts {
            key[8..28].copy_from_slice(address.as_slice());
            // As the history stores accounts: without the storage root; none, empty.
            let (bytes, len) = match old {
                Some(info) => AccountRecord {
                    info: *info,
                    storage_root: EMPTY_ROOT_HASH,
                }
                .encode(),
                None => ([0; codec::ACCOUNT_RECORD_LEN_MAX], 0),
            };
            txn.put(
                &tables.account_changes,
                &key[..28],
                &bytes[..len],
                WriteFlags::APPEND,
            )?;
            keys.extend_from_slice(address.as_slice());
        }
        for ((address, slot), old) in &self.slots {
            key[8..].copy_from_slice(&codec::plain_slot_key(address, slot));
            txn.put(&tables.storage_changes, key, old, WriteFlags::APPEND)?;
            keys.extend_from_slice(&key[8..]);
        }
        txn.put(&tables.history_changes, number, keys, WriteFlags::UPSERT)?;
        metrics::counter!("kestrel_history_rows_written_total")
            .increment((self.accounts.len() + self.slots.len()) as u64);
        Ok(())
    }
}
