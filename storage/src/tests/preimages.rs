//! The store before preimages kept a plain copy of the state (`PlainAccounts`, `PlainStorage`)
//! beside the hashed one; opening such a store moves it to preimages.

use super::bulk::{dump, random_spec};
use crate::{
    Durability, StateView, Store,
    codec::{self, AccountRecord},
    tables::Tables,
};
use alloy_trie::EMPTY_ROOT_HASH;
use libmdbx::{TableFlags, WriteFlags};
use rand::{SeedableRng, rngs::StdRng};

/// A store of the plain layout opens with the preimages its plain tables give, which are what
/// the store would have written itself, and without the plain tables; its state reads the same.
#[test]
fn a_store_with_plain_tables_opens_with_preimages_instead() {
    let spec = random_spec(&mut StdRng::seed_from_u64(7), 300);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    store.init_genesis(&spec).unwrap();
    let written = dump(&store);
    // Back to the earlier layout: the plain tables, no preimages.
    let txn = store.db.begin_rw_txn().unwrap();
    let accounts = txn
        .create_table(Some("PlainAccounts"), TableFlags::default())
        .unwrap();
    let storage = txn
        .create_table(Some("PlainStorage"), TableFlags::default())
        .unwrap();
    let mut slots = 0;
    for (address, account) in &spec.alloc {
        let record = AccountRecord {
            info: account.info,
            storage_root: EMPTY_ROOT_HASH,
        };
        let (bytes, len) = record.encode();
        txn.put(&accounts, address, &bytes[..len], WriteFlags::UPSERT)
            .unwrap();
        for (slot, value) in account.storage.iter().filter(|(_, v)| !v.is_zero()) {
            let (bytes, len) = codec::encode_slot_value(value);
            let key = codec::plain_slot_key(address, slot);
            txn.put(&storage, key, &bytes[..len], WriteFlags::UPSERT)
                .unwrap();
            slots += 1;
        }
    }
    assert!(slots > 0, "the allocation has storage");
    let tables = Tables::open(&txn).unwrap();
    txn.clear_table(&tables.account_preimages).unwrap();
    txn.clear_table(&tables.slot_preimages).unwrap();
    txn.commit().unwrap();
    assert!(dump(&store) != written, "the preimages are gone");
    drop(store);

    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert!(dump(&store) == written, "the preimages are back");
    let txn = store.db.begin_ro_txn().unwrap();
    for name in ["PlainAccounts", "PlainStorage"] {
        assert!(
            matches!(txn.open_table(Some(name)), Err(libmdbx::Error::NotFound)),
            "{name} dropped"
        );
    }
    drop(txn);
    store
        .view(|state| {
            for (address, account) in &spec.alloc {
                let info = state.account(*address).unwrap().unwrap();
                assert_eq!(info, account.info, "{address}");
                for (slot, value) in &account.storage {
                    assert_eq!(state.storage(*address, *slot).unwrap(), *value);
                }
                let has_storage = account.storage.values().any(|v| !v.is_zero());
                assert_eq!(state.has_storage(*address).unwrap(), has_storage);
            }
        })
        .unwrap();
}
