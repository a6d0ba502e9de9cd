//! The state is stored by hashed key only (`HashedAccounts`, `HashedStorage`), the tables the
//! state root is computed over; reads hash the address and slot (about 250 ns each). What needs
//! the plain key back (the history's rows, which are keyed by address and slot, and the state
//! snapshots, whose chunks carry them) finds it in the preimage tables.
//!
//! A preimage is written once, when its account is created or its slot first set, not on every
//! change: a block of transfers between existing accounts writes none. Keeping a plain copy of
//! the state beside the hashed one, as the store did before, wrote a second random page per
//! changed account (a third of the MDBX bytes of a 10,000-transfer block at 1,000,000 accounts,
//! BENCHMARKS.md). Preimages of deleted accounts and slots stay: they say nothing about the
//! state, and a key set again gets the same one.

use crate::{
    Env, StorageError, codec,
    tables::{self, Tables},
};
use alloy_primitives::{Address, B256, U256};
use libmdbx::{RW, Table, Transaction, TransactionKind, WriteFlags};
use std::borrow::Cow;

/// The tables of the layout before preimages (address-keyed copies of the state), migrated by
/// [`migrate_plain_tables`].
const PLAIN_ACCOUNTS: &str = "PlainAccounts";
const PLAIN_STORAGE: &str = "PlainStorage";

pub(crate) fn put_account(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    hashed: &B256,
    address: &Address,
) -> Result<(), StorageError> {
    txn.put(
        &tables.account_preimages,
        hashed,
        address,
        WriteFlags::UPSERT,
    )?;
    Ok(())
}

pub(crate) fn put_slot(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    hashed_key: &[u8; 64],
    slot: &U256,
) -> Result<(), StorageError> {
    let slot = slot.to_be_bytes::<32>();
    txn.put(&tables.slot_preimages, hashed_key, slot, WriteFlags::UPSERT)?;
    Ok(())
}

/// The address whose hash is `hashed`, which must be an account's.
pub(crate) fn address_of<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
    hashed: &B256,
) -> Result<Address, StorageError> {
    let bytes = txn
        .get::<Cow<'_, [u8]>>(&tables.account_preimages, hashed)?
        .ok_or_else(|| missing(tables::ACCOUNT_PREIMAGES, hashed.as_slice()))?;
    Address::try_from(bytes.as_ref()).map_err(|_| StorageError::Corrupt {
        table: tables::ACCOUNT_PREIMAGES,
        reason: format!("preimage of {} bytes", bytes.len()),
    })
}

/// Every set slot of the account hashed to `hashed_address`, with its stored value, in
/// hashed-slot order.
pub(crate) fn slots_of<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
    hashed_address: &B256,
) -> Result<Vec<(U256, Vec<u8>)>, StorageError> {
    let mut storage = txn.cursor(&tables.hashed_storage)?;
    let mut slots = Vec::new();
    let prefix = hashed_address.as_slice();
    let mut entry = storage.set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(prefix)?;
    while let Some((key, value)) = entry {
        if !key.starts_with(prefix) {
            break;
        }
        slots.push((
            slot_of(txn, &tables.slot_preimages, &key)?,
            value.into_owned(),
        ));
        entry = storage.next()?;
    }
    Ok(slots)
}

fn slot_of<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    preimages: &Table<'_>,
    hashed_key: &[u8],
) -> Result<U256, StorageError> {
    let bytes = txn
        .get::<Cow<'_, [u8]>>(preimages, hashed_key)?
        .ok_or_else(|| missing(tables::SLOT_PREIMAGES, hashed_key))?;
    if bytes.len() != 32 {
        return Err(StorageError::Corrupt {
            table: tables::SLOT_PREIMAGES,
            reason: format!("preimage of {} bytes", bytes.len()),
        });
    }
    Ok(U256::from_be_slice(&bytes))
}

fn missing(table: &'static str, key: &[u8]) -> StorageError {
    StorageError::Corrupt {
        table,
        reason: format!("no preimage of {}", alloy_primitives::hex::encode(key)),
    }
}

/// Moves a store of the earlier layout to this one: the preimages from its plain tables (which
/// held exactly the state's keys), then the plain tables dropped. Nothing to do on a store
/// without them. One transaction: a crash midway leaves the earlier layout, migrated again at
/// the next open.
pub(crate) fn migrate_plain_tables(txn: &Transaction<'_, RW, Env>) -> Result<(), StorageError> {
    let plain_accounts = match txn.open_table(Some(PLAIN_ACCOUNTS)) {
        Ok(table) => table,
        Err(libmdbx::Error::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let plain_storage = txn.open_table(Some(PLAIN_STORAGE))?;
    let tables = Tables::open(txn)?;
    // Sorted by hash, the preimages go in as appends.
    let mut accounts = Vec::new();
    for entry in txn
        .cursor(&plain_accounts)?
        .iter_start::<Cow<'_, [u8]>, ()>()
    {
        let (key, ()) = entry?;
        let address = Address::try_from(key.as_ref()).map_err(|_| StorageError::Corrupt {
            table: PLAIN_ACCOUNTS,
            reason: format!("key of {} bytes", key.len()),
        })?;
        accounts.push((alloy_primitives::keccak256(address), address));
    }
    accounts.sort_unstable();
    let mut cursor = txn.cursor(&tables.account_preimages)?;
    for (hashed, address) in &accounts {
        cursor.put(hashed.as_slice(), address.as_slice(), WriteFlags::APPEND)?;
    }
    let mut slots = Vec::new();
    for entry in txn
        .cursor(&plain_storage)?
        .iter_start::<Cow<'_, [u8]>, ()>()
    {
        let (key, ()) = entry?;
        if key.len() != 52 {
            return Err(StorageError::Corrupt {
                table: PLAIN_STORAGE,
                reason: format!("key of {} bytes", key.len()),
            });
        }
        let address = Address::from_slice(&key[..20]);
        let slot = U256::from_be_slice(&key[20..]);
        let hashed_slot = alloy_primitives::keccak256(slot.to_be_bytes::<32>());
        let key = codec::hashed_slot_key(&alloy_primitives::keccak256(address), &hashed_slot);
        slots.push((key, slot));
    }
    slots.sort_unstable();
    let mut cursor = txn.cursor(&tables.slot_preimages)?;
    for (key, slot) in &slots {
        cursor.put(key, &slot.to_be_bytes::<32>(), WriteFlags::APPEND)?;
    }
    // SAFETY: no other handle to these tables is open in this transaction or elsewhere (the
    // store is being opened), and they are not used after.
    unsafe {
        txn.drop_table(plain_accounts)?;
        txn.drop_table(plain_storage)?;
    }
    tracing::info!(
        target: "storage",
        accounts = accounts.len(),
        slots = slots.len(),
        "moved the state to the hashed-only layout: preimages written, plain tables dropped"
    );
    Ok(())
}
