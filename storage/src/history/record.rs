//! Recording a block's change set: the values it is about to overwrite, appended at the end of
//! the change-set tables when the block is inserted.

use crate::{Env, StorageError, codec, tables::Tables};
use alloy_primitives::{Address, U256};
use kestrel_types::BlockNumber;
use libmdbx::{RW, Transaction, WriteFlags};
use std::{borrow::Cow, collections::BTreeMap};

/// The values one block is about to overwrite, taken from the flat tables before it writes and
/// appended to the change sets at its end ([`ChangeRecorder::write`]). Only the first value of each key counts: a slot
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

    /// Appends the recorded values to the change sets and stores the block's list of keys, once
    /// `block` is inserted.
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
        // Keys in order within the block, blocks in order: every row goes at the end of its
        // table (MDBX's append path: no search, pages filled).
        let number = self.block.to_be_bytes();
        let mut keys = Vec::with_capacity(4 + 20 * self.accounts.len() + 52 * self.slots.len());
        keys.extend_from_slice(&(self.accounts.len() as u32).to_be_bytes());
        let mut key = [0u8; 8 + 52];
        key[..8].copy_from_slice(&number);
        for (address, old) in &self.accounts {
            key[8..28].copy_from_slice(address.as_slice());
            txn.put(&tables.account_changes, &key[..28], old, WriteFlags::APPEND)?;
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
