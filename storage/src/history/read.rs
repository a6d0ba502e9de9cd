//! Reading the state after a past block: from the history tables, and from the change sets of
//! the blocks not moved into them yet.

use super::{history_from, index};
use crate::{
    Reader, StateView, StorageError,
    codec::{self, AccountRecord},
    tables,
};
use alloy_primitives::{Address, B256, Bytes, U256};
use kestrel_types::{AccountInfo, BlockNumber};
use libmdbx::{Cursor, Table, TransactionKind};
use std::{borrow::Cow, ops::RangeInclusive};

/// The state after block `block`, read from the history tables where a later block changed it
/// and from the current state where none did.
pub struct StateAt<'a, 's> {
    reader: &'a Reader<'s>,
    /// `None`: the head's state, read directly.
    past: Option<Past>,
}

/// A block before the head, and the blocks whose change sets may hold rows not in the history
/// tables yet.
struct Past {
    block: BlockNumber,
    unmoved: RangeInclusive<BlockNumber>,
}

impl<'s> Reader<'s> {
    /// The state after block `block` (the head's or within the history window).
    pub fn state_at(&self, block: BlockNumber) -> Result<StateAt<'_, 's>, StorageError> {
        let head = crate::read_head(self.txn, &self.tables)?.unwrap_or(0);
        if block >= head {
            return Ok(StateAt {
                reader: self,
                past: None,
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
            past: Some(Past {
                block,
                unmoved: index::unmoved(self.txn, &self.tables, head)?,
            }),
        })
    }

    /// The oldest block whose state [`Reader::state_at`] reads.
    pub fn history_oldest(&self) -> Result<BlockNumber, StorageError> {
        history_from(self.txn, &self.tables)
    }
}

impl StateAt<'_, '_> {
    /// What `key` (an address, or `address ‖ slot`) held after block `block`, if a later block
    /// changed it: the value before the first such block. That block is the earlier of the first
    /// in the history table after `block` and the first unmoved block with a change-set row.
    fn first_change(
        &self,
        (name, history): (&'static str, &Table<'_>),
        changes: &Table<'_>,
        key: &[u8],
        past: &Past,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Past { block, unmoved } = past;
        let txn = self.reader.txn;
        let mut seek = key.to_vec();
        seek.extend_from_slice(&(block + 1).to_be_bytes());
        let mut cursor = txn.cursor(history)?;
        let moved = cursor
            .set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(&seek)?
            .filter(|(found, _)| found.starts_with(key))
            .map(|(found, value)| {
                let at = codec::decode_number(name, &found[key.len()..]);
                at.map(|at| (at, value.into_owned()))
            })
            .transpose()?;
        let first = (block + 1).max(*unmoved.start());
        let last = moved.as_ref().map_or(*unmoved.end(), |(at, _)| at - 1);
        let mut row = vec![0u8; 8 + key.len()];
        row[8..].copy_from_slice(key);
        for n in first..=last.min(*unmoved.end()) {
            row[..8].copy_from_slice(&n.to_be_bytes());
            if let Some(old) = txn.get::<Vec<u8>>(changes, &row)? {
                return Ok(Some(old));
            }
        }
        Ok(moved.map(|(_, old)| old))
    }

    fn slot_at(&self, past: &Past, address: &Address, slot: &U256) -> Result<U256, StorageError> {
        let tables = &self.reader.tables;
        let key = codec::plain_slot_key(address, slot);
        match self.first_change(
            (tables::STORAGE_HISTORY, &tables.storage_history),
            &tables.storage_changes,
            &key,
            past,
        )? {
            Some(old) if old.is_empty() => Ok(U256::ZERO),
            Some(old) => codec::decode_slot_value(tables::STORAGE_HISTORY, &old),
            None => self.reader.storage(*address, *slot),
        }
    }

    /// Every slot of `address` with a history entry or a change-set row.
    fn changed_slots(
        &self,
        past: &Past,
        address: &Address,
        slots: &mut Vec<U256>,
    ) -> Result<(), StorageError> {
        let txn = self.reader.txn;
        let tables = &self.reader.tables;
        let mut cursor = txn.cursor(&tables.storage_history)?;
        prefixed_slots(&mut cursor, address.as_slice(), slots)?;
        let mut cursor = txn.cursor(&tables.storage_changes)?;
        let mut prefix = [0u8; 28];
        prefix[8..].copy_from_slice(address.as_slice());
        for n in past.unmoved.clone() {
            prefix[..8].copy_from_slice(&n.to_be_bytes());
            prefixed_slots(&mut cursor, &prefix, slots)?;
        }
        Ok(())
    }
}

impl StateView for StateAt<'_, '_> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        let Some(past) = &self.past else {
            return self.reader.account(address);
        };
        let tables = &self.reader.tables;
        let changed = self.first_change(
            (tables::ACCOUNT_HISTORY, &tables.account_history),
            &tables.account_changes,
            address.as_slice(),
            past,
        )?;
        match changed {
            Some(old) if old.is_empty() => Ok(None),
            Some(old) => Ok(Some(
                AccountRecord::decode(tables::ACCOUNT_HISTORY, &old)?.info,
            )),
            None => self.reader.account(address),
        }
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        match &self.past {
            None => self.reader.storage(address, slot),
            Some(past) => self.slot_at(past, &address, &slot),
        }
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        // Code is never deleted, and a hash names one code.
        self.reader.code(code_hash)
    }

    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        let Some(past) = &self.past else {
            return self.reader.has_storage(address);
        };
        // A slot set then is either set now or changed since: check the slots of both kinds
        // (only contract creations at a past block ask, and most targets have neither).
        let mut slots = Vec::new();
        self.changed_slots(past, &address, &mut slots)?;
        let now = crate::preimages::slots_of(
            self.reader.txn,
            &self.reader.tables,
            &alloy_primitives::keccak256(address),
        )?;
        slots.extend(now.into_iter().map(|(slot, _)| slot));
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            if !self.slot_at(past, &address, &slot)?.is_zero() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The slots of every key that starts with `prefix` (an address, or a block and an address):
/// the 32 bytes after the prefix.
fn prefixed_slots<K: TransactionKind>(
    cursor: &mut Cursor<'_, K>,
    prefix: &[u8],
    slots: &mut Vec<U256>,
) -> Result<(), StorageError> {
    let mut entry = cursor.set_range::<Cow<'_, [u8]>, ()>(prefix)?;
    while let Some((key, ())) = entry {
        if !key.starts_with(prefix) {
            break;
        }
        slots.push(U256::from_be_slice(&key[prefix.len()..prefix.len() + 32]));
        entry = cursor.next()?;
    }
    Ok(())
}
