//! Blocks, durability and the overlay.

use super::temp_store;
use crate::{ChainView, Overlay, OverlayView, StateView, StorageError, Store, genesis_header};
use alloy_consensus::{
    Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, SignableTransaction, TxEip1559,
    TxEnvelope,
};
use alloy_primitives::{Address, B256, Bytes, Log, Signature, TxKind, U256, address};
use kestrel_types::{AccountInfo, ChainSpec, RecoveredTx, SealedBlock, StateChanges};
use std::sync::Arc;

pub(super) fn transfer(nonce: u64) -> RecoveredTx {
    let tx = TxEip1559 {
        chain_id: 1337,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1,
        to: TxKind::Call(Address::with_last_byte(7)),
        value: U256::from(nonce + 1),
        ..Default::default()
    };
    let tx = TxEnvelope::from(tx.into_signed(Signature::test_signature()));
    RecoveredTx::recover(tx).expect("test signature recovers")
}

pub(super) fn receipt(cumulative_gas_used: u64) -> ReceiptEnvelope {
    let log = Log::new_unchecked(
        Address::with_last_byte(9),
        vec![B256::repeat_byte(1)],
        Bytes::from_static(b"data"),
    );
    let receipt = Receipt {
        status: Eip658Value::Eip658(true),
        cumulative_gas_used,
        logs: vec![log],
    };
    ReceiptEnvelope::Eip1559(ReceiptWithBloom::from(receipt))
}

/// The child of `parent` with `txs` and one receipt per transaction.
pub(super) fn child(parent: &SealedBlock, txs: Vec<RecoveredTx>) -> SealedBlock {
    let receipts = (1..=txs.len() as u64)
        .map(|i| receipt(21_000 * i))
        .collect();
    SealedBlock {
        txs,
        receipts,
        ..parent.empty_child()
    }
}

pub(super) fn commit_block(store: &Store, block: &SealedBlock, changes: &StateChanges) {
    let mut writer = store.begin_block().unwrap();
    writer.apply_state(changes).unwrap();
    writer.insert_block(block).unwrap();
    writer.commit().unwrap();
}

#[test]
fn blocks_receipts_and_tx_index_round_trip() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let block = child(&genesis, vec![transfer(0), transfer(1), transfer(2)]);
    commit_block(&store, &block, &StateChanges::default());

    store
        .view(|reader| {
            assert_eq!(reader.head().unwrap(), Some(1));
            assert_eq!(reader.header(1).unwrap(), Some(block.header.clone()));
            assert_eq!(reader.block_hash(1).unwrap(), Some(block.hash));
            assert_eq!(reader.block_number(block.hash).unwrap(), Some(1));
            assert_eq!(reader.block_number(genesis.hash).unwrap(), Some(0));
            let stored = reader.block(1).unwrap().unwrap();
            // Decoded once, then served from the block cache.
            assert!(Arc::ptr_eq(&stored, &reader.block(1).unwrap().unwrap()));
            assert_eq!(stored.hash, block.hash);
            assert_eq!(stored.header, block.header);
            assert_eq!(stored.txs, block.txs);
            assert_eq!(stored.receipts, block.receipts);
            assert_eq!(reader.receipts(1).unwrap(), Some(block.receipts.clone()));
            for (index, tx) in block.txs.iter().enumerate() {
                assert_eq!(
                    reader.tx_location(tx.hash()).unwrap(),
                    Some((1, index as u32))
                );
            }
            assert_eq!(reader.tx_location(B256::repeat_byte(5)).unwrap(), None);
            assert!(reader.block(2).unwrap().is_none());
            assert!(reader.receipts(2).unwrap().is_none());
        })
        .unwrap();
}

#[test]
fn a_block_cached_at_commit_is_served_as_committed() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let block = child(&genesis, vec![transfer(0), transfer(1)]);
    commit_block(&store, &block, &StateChanges::default());
    let committed = Arc::new(block.clone());
    store.cache_committed(committed.clone());

    store
        .view(|reader| {
            // The commit's own block, not one decoded from the archive.
            assert!(Arc::ptr_eq(&committed, &reader.block(1).unwrap().unwrap()));
            assert_eq!(
                reader.transaction(1, 1).unwrap().as_ref(),
                Some(&block.txs[1])
            );
            let receipt = reader.receipt(1, 1).unwrap().unwrap();
            assert_eq!(receipt.receipt, block.receipts[1]);
            assert_eq!(receipt.gas_used_before, 21_000);
            assert_eq!(reader.receipts(1).unwrap(), Some(block.receipts.clone()));
        })
        .unwrap();
}

#[test]
fn single_transactions_and_receipts_match_the_decoded_block() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut block = child(&genesis, (0..5).map(transfer).collect());
    // Legacy and typed receipts with 0, 1 and 3 logs: log indexes and gas run across them.
    for (i, receipt) in block.receipts.iter_mut().enumerate() {
        let mut inner = receipt.as_receipt().unwrap().clone();
        inner.logs = vec![inner.logs[0].clone(); [0, 1, 3][i % 3]];
        let inner = ReceiptWithBloom::from(inner);
        *receipt = match i % 2 {
            0 => ReceiptEnvelope::Legacy(inner),
            _ => ReceiptEnvelope::Eip1559(inner),
        };
    }
    commit_block(&store, &block, &StateChanges::default());

    // Cold (decoded one at a time from the tables), then with the block cached: the same.
    for _ in 0..2 {
        store
            .view(|reader| {
                let mut logs_before = 0;
                for (i, receipt) in block.receipts.iter().enumerate() {
                    assert_eq!(
                        reader.transaction(1, i).unwrap().as_ref(),
                        Some(&block.txs[i])
                    );
                    let found = reader.receipt(1, i).unwrap().unwrap();
                    assert_eq!(&found.receipt, receipt);
                    assert_eq!(found.logs_before, logs_before, "receipt {i}");
                    assert_eq!(found.gas_used_before, 21_000 * i as u64, "receipt {i}");
                    logs_before += receipt.logs().len() as u64;
                }
                assert_eq!(reader.transaction(1, 5).unwrap(), None);
                assert_eq!(reader.receipt(1, 5).unwrap(), None);
                assert_eq!(reader.receipt(2, 0).unwrap(), None);
                reader.block(1).unwrap().unwrap();
            })
            .unwrap();
    }
}

#[test]
fn reopened_store_sees_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    let address = address!("0x00000000000000000000000000000000000000aa");
    let genesis;
    {
        let store = Store::open(dir.path()).unwrap();
        genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
        let mut changes = StateChanges::default();
        changes
            .accounts
            .insert(address, Some(AccountInfo::with_balance(U256::from(5))));
        changes
            .storage
            .entry(address)
            .or_default()
            .slots
            .insert(U256::from(1), U256::from(9));
        commit_block(&store, &child(&genesis, vec![transfer(0)]), &changes);
    }
    let store = Store::open(dir.path()).unwrap();
    // Opening again is idempotent and keeps what was there.
    assert_eq!(
        store.init_genesis(&ChainSpec::dev()).unwrap().hash,
        genesis.hash
    );
    store
        .view(|reader| {
            assert_eq!(reader.head().unwrap(), Some(1));
            assert_eq!(
                reader.account(address).unwrap().unwrap().balance,
                U256::from(5)
            );
            assert_eq!(
                reader.storage(address, U256::from(1)).unwrap(),
                U256::from(9)
            );
        })
        .unwrap();
}

#[test]
fn dropped_writer_leaves_nothing() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let address = address!("0x00000000000000000000000000000000000000bb");
    let block = child(&genesis, vec![transfer(0)]);
    {
        let mut changes = StateChanges::default();
        changes
            .accounts
            .insert(address, Some(AccountInfo::with_balance(U256::from(1))));
        let mut writer = store.begin_block().unwrap();
        let root = writer.apply_state(&changes).unwrap();
        assert_ne!(root, genesis.header.state_root);
        writer.insert_block(&block).unwrap();
    }
    store
        .view(|reader| {
            assert_eq!(reader.head().unwrap(), Some(0));
            assert_eq!(reader.account(address).unwrap(), None);
            assert_eq!(reader.block_number(block.hash).unwrap(), None);
            assert_eq!(reader.tx_location(block.txs[0].hash()).unwrap(), None);
        })
        .unwrap();
    // The next writer starts from the committed state.
    let mut writer = store.begin_block().unwrap();
    assert_eq!(
        writer.apply_state(&StateChanges::default()).unwrap(),
        genesis.header.state_root
    );
}

#[test]
fn other_genesis_is_rejected() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut other = ChainSpec::dev();
    other.gas_limit += 1;
    let err = store.init_genesis(&other).unwrap_err();
    let expected = genesis_header(&other).hash_slow();
    assert!(
        matches!(err, StorageError::GenesisMismatch { stored, expected: e }
            if stored == genesis.hash && e == expected),
        "{err}"
    );
}

#[test]
fn overlay_reads_fall_through_to_the_database() {
    let (_dir, store) = temp_store();
    let kept = address!("0x0000000000000000000000000000000000000001");
    let wiped = address!("0x0000000000000000000000000000000000000002");
    let deleted = address!("0x0000000000000000000000000000000000000003");
    let code = Bytes::from_static(&[0x60, 0x00]);
    let mut base = StateChanges::default();
    let code_hash = base.insert_code(code.clone());
    for address in [kept, wiped, deleted] {
        let info = AccountInfo {
            nonce: 1,
            balance: U256::from(100),
            code_hash,
        };
        base.accounts.insert(address, Some(info));
        let slots = &mut base.storage.entry(address).or_default().slots;
        slots.insert(U256::from(1), U256::from(11));
        slots.insert(U256::from(2), U256::from(22));
    }
    let mut writer = store.begin_block().unwrap();
    writer.apply_state(&base).unwrap();
    writer.commit().unwrap();

    // Older layer: a new balance for `kept`, slot 1 of `kept` changed, `wiped` wiped with one
    // new slot, `deleted` deleted.
    let mut older = StateChanges::default();
    older.accounts.insert(
        kept,
        Some(AccountInfo {
            nonce: 2,
            balance: U256::from(50),
            code_hash,
        }),
    );
    older
        .storage
        .entry(kept)
        .or_default()
        .slots
        .insert(U256::from(1), U256::from(111));
    let change = older.storage.entry(wiped).or_default();
    change.wiped = true;
    change.slots.insert(U256::from(3), U256::from(33));
    older.accounts.insert(deleted, None);
    // Newer layer: slot 1 of `kept` cleared.
    let mut newer = StateChanges::default();
    newer
        .storage
        .entry(kept)
        .or_default()
        .slots
        .insert(U256::from(1), U256::ZERO);

    let overlay = Overlay::default();
    overlay.push(1, &older);
    overlay.push(2, &newer);
    let layers = overlay.snapshot();
    store
        .view(|reader| {
            let view = OverlayView {
                layers: &layers,
                base: reader,
            };
            assert_eq!(view.account(kept).unwrap().unwrap().balance, U256::from(50));
            assert_eq!(view.storage(kept, U256::from(1)).unwrap(), U256::ZERO);
            assert_eq!(view.storage(kept, U256::from(2)).unwrap(), U256::from(22));
            assert_eq!(
                view.account(wiped).unwrap().unwrap().balance,
                U256::from(100)
            );
            assert_eq!(view.storage(wiped, U256::from(2)).unwrap(), U256::ZERO);
            assert_eq!(view.storage(wiped, U256::from(3)).unwrap(), U256::from(33));
            assert_eq!(view.account(deleted).unwrap(), None);
            assert_eq!(view.storage(deleted, U256::from(1)).unwrap(), U256::ZERO);
            assert_eq!(view.code(code_hash).unwrap(), Some(code.clone()));
            // The database underneath is unchanged.
            assert_eq!(
                reader.storage(wiped, U256::from(2)).unwrap(),
                U256::from(22)
            );
        })
        .unwrap();
    overlay.remove_through(1);
    assert_eq!(overlay.len(), 1);
}

#[test]
fn readers_run_beside_a_writer_on_other_threads() {
    let (_dir, store) = temp_store();
    let store = Arc::new(store);
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut writer = store.begin_block().unwrap();
    writer
        .insert_block(&child(&genesis, vec![transfer(0)]))
        .unwrap();
    let reader = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.view(|r| r.head().unwrap()).unwrap())
    };
    // The snapshot does not see the open write transaction.
    assert_eq!(reader.join().unwrap(), Some(0));
    writer.commit().unwrap();
    assert_eq!(store.view(|r| r.head().unwrap()).unwrap(), Some(1));
}

#[test]
fn the_growth_step_grows_with_the_database() {
    use crate::{DB_GROWTH_STEP_MAX_BYTES, DB_GROWTH_STEP_MIN_BYTES, growth_step_bytes};
    assert_eq!(growth_step_bytes(0), DB_GROWTH_STEP_MIN_BYTES);
    assert_eq!(growth_step_bytes(1 << 30), DB_GROWTH_STEP_MIN_BYTES);
    assert_eq!(growth_step_bytes(16 << 30), 1 << 30);
    assert_eq!(growth_step_bytes((16 << 30) + 12345), 1 << 30);
    assert_eq!(growth_step_bytes(100 << 30), DB_GROWTH_STEP_MAX_BYTES);
    // A new database's file is one step: a test's store costs 128 MiB of disk, no more.
    let (dir, _store) = super::temp_store();
    let file = std::fs::metadata(dir.path().join(crate::DB_FILE)).unwrap();
    assert!(file.len() <= DB_GROWTH_STEP_MIN_BYTES, "{}", file.len());
}

/// A second open of an open store's directory fails with `InUse` and changes nothing; once the
/// first is dropped, the directory opens again.
#[test]
fn a_second_open_of_an_open_store_is_refused() {
    let (dir, store) = super::temp_store();
    let second = Store::open_with(dir.path(), crate::Durability::Unsynced);
    assert!(
        matches!(second, Err(crate::StorageError::InUse { .. })),
        "{:?}",
        second.err()
    );
    drop(store);
    Store::open_with(dir.path(), crate::Durability::Unsynced).expect("reopens once closed");
}
