//! The state root from scratch: the reference the incremental root is checked against.

use super::Leaves;
use crate::{
    StorageError,
    codec::AccountRecord,
    tables::{self, Tables},
};
use alloy_primitives::B256;
use alloy_trie::{HashBuilder, Nibbles};
use libmdbx::{DatabaseKind, Transaction, TransactionKind};
use std::borrow::Cow;

/// The state root computed from the hashed tables alone, as if no trie node were stored and no
/// account record kept its storage root: the reference the incremental root must equal. Reads
/// the whole state.
pub(crate) fn state_root_from_scratch<K: TransactionKind, E: DatabaseKind>(
    txn: &Transaction<'_, K, E>,
    tables: &Tables<'_>,
) -> Result<B256, StorageError> {
    let mut accounts = txn.cursor(&tables.hashed_accounts)?;
    let mut storage = txn.cursor(&tables.hashed_storage)?;
    let mut slot = storage.first::<Cow<'_, [u8]>, Cow<'_, [u8]>>()?;
    let mut hb = HashBuilder::default();
    let mut leaf = Vec::with_capacity(128);
    for entry in accounts.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
        let (hashed_address, value) = entry?;
        let mut record = AccountRecord::decode(tables::HASHED_ACCOUNTS, &value)?;
        // Both tables are sorted by hashed address, so this account's slots come next.
        let mut storage_hb = HashBuilder::default();
        while let Some((key, value)) = &slot {
            if key.len() != 64 || key[..32] < hashed_address[..] {
                return Err(StorageError::Corrupt {
                    table: tables::HASHED_STORAGE,
                    reason: format!(
                        "slot without account {}",
                        alloy_primitives::hex::encode(key)
                    ),
                });
            }
            if key[..32] != hashed_address[..] {
                break;
            }
            Leaves::Storage.leaf_value(value, &mut leaf)?;
            storage_hb.add_leaf(Nibbles::unpack(&key[32..]), &leaf);
            slot = storage.next()?;
        }
        record.storage_root = storage_hb.root();
        record.trie_rlp(&mut leaf);
        hb.add_leaf(Nibbles::unpack(&hashed_address), &leaf);
    }
    if let Some((key, _)) = slot {
        return Err(StorageError::Corrupt {
            table: tables::HASHED_STORAGE,
            reason: format!(
                "slot without account {}",
                alloy_primitives::hex::encode(key)
            ),
        });
    }
    Ok(hb.root())
}
