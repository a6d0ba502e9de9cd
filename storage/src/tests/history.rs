//! Historical state: reads at every block of the window against snapshots of a plain model.
//!
//! Random blocks (the state root test's: account writes and deletions, slot writes, clears and
//! wipes) are committed one per write transaction or two together, as the commit stage groups
//! them; after each the model's state is kept. Then, for random blocks in the window and random
//! keys, `state_at` must read what the model held after that block, blocks before the window
//! must answer `HistoryPruned`, and the window must start exactly where its size says. Failures
//! print the case (its `seed` replays it); `SEED=<u64>` fixes proptest's own seed.

use super::{
    model::{Model, Pools, random_block},
    store::{child, commit_block},
    temp_store,
};
use crate::{
    Durability, HistoryWindow, StateView, StorageError, Store, history::INDEX_BATCH_BLOCKS, tables,
};
use alloy_primitives::{Address, U256};
use kestrel_types::{AccountInfo, ChainSpec, SealedBlock, StateChanges, StorageChange};
use libmdbx::WriteFlags;
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

type Snapshot = (
    BTreeMap<Address, AccountInfo>,
    BTreeMap<Address, BTreeMap<U256, U256>>,
);

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    accounts: usize,
    slots: usize,
    blocks: u64,
    window: HistoryWindow,
}

fn check_block(
    store: &Store,
    snapshot: &Snapshot,
    block: u64,
    pools: &Pools,
    rng: &mut StdRng,
) -> Result<(), TestCaseError> {
    store
        .view(|reader| -> Result<(), TestCaseError> {
            let state = reader.state_at(block).unwrap();
            for _ in 0..8 {
                let address = pools.addresses[rng.random_range(0..pools.addresses.len())];
                let account = snapshot.0.get(&address).copied();
                prop_assert_eq!(
                    state.account(address).unwrap(),
                    account,
                    "account {} after block {}",
                    address,
                    block
                );
                let slots = snapshot.1.get(&address);
                prop_assert_eq!(
                    state.has_storage(address).unwrap(),
                    slots.is_some_and(|s| !s.is_empty()),
                    "has_storage({}) after block {}",
                    address,
                    block
                );
                for slot in &pools.slots {
                    let value = slots.and_then(|s| s.get(slot)).copied().unwrap_or_default();
                    prop_assert_eq!(
                        state.storage(address, *slot).unwrap(),
                        value,
                        "slot {} of {} after block {}",
                        slot,
                        address,
                        block
                    );
                }
            }
            Ok(())
        })
        .unwrap()
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(case.seed);
    let pools = Pools::new(&mut rng, case.accounts, case.slots);
    let (dir, store) = temp_store();
    let mut store = store.with_history(case.window);
    let mut parent = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut model = Model::default();
    let mut snapshots: Vec<Snapshot> = vec![(BTreeMap::new(), BTreeMap::new())];
    let reopen_at = rng.random_range(1..=case.blocks);
    while parent.number() < case.blocks {
        let mut writer = store.begin_block().unwrap();
        let grouped = if rng.random_ratio(1, 4) { 2 } else { 1 };
        for _ in 0..grouped.min(case.blocks - parent.number()) {
            // Sometimes a block's state arrives in two parts, as when execution hands over
            // more than one batch of changes: the first value of each key is its history.
            let parts = if rng.random_ratio(1, 8) { 2 } else { 1 };
            for _ in 0..parts {
                let changes: StateChanges = random_block(&mut rng, &pools, &model, 8);
                writer.apply_state(&changes).unwrap();
                model.apply(&changes);
            }
            let block = parent.empty_child();
            writer.insert_block(&block).unwrap();
            snapshots.push((model.accounts.clone(), model.storage.clone()));
            parent = block;
        }
        writer.commit().unwrap();
        if parent.number() >= reopen_at && reopen_at > 0 {
            drop(store);
            store = Store::open_with(dir.path(), Durability::Unsynced)
                .unwrap()
                .with_history(case.window);
        }
    }

    let head = parent.number();
    let oldest = match case.window {
        HistoryWindow::Blocks(n) => head.saturating_sub(n),
        HistoryWindow::All => 0,
    };
    let stored_oldest = store.view(|r| r.history_oldest().unwrap()).unwrap();
    prop_assert_eq!(
        stored_oldest,
        oldest,
        "oldest block with state, head {}",
        head
    );
    for block in oldest..=head {
        check_block(&store, &snapshots[block as usize], block, &pools, &mut rng)?;
    }
    if oldest > 0 {
        let pruned = store.view(|r| r.state_at(oldest - 1).err()).unwrap();
        let matched = matches!(
            pruned,
            Some(StorageError::HistoryPruned { requested, oldest: o }) if requested == oldest - 1 && o == oldest
        );
        prop_assert!(
            matched,
            "block {} before the window: {:?}",
            oldest - 1,
            pruned
        );
    }
    Ok(())
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1usize..=12,
        1usize..=8,
        20u64..=80,
        prop_oneof![
            (0u64..=40).prop_map(HistoryWindow::Blocks),
            Just(HistoryWindow::All)
        ],
    )
        .prop_map(|(seed, accounts, slots, blocks, window)| Case {
            seed,
            accounts,
            slots,
            blocks,
            window,
        })
}

proptest! {
    #![proptest_config(super::proptest_config(64))]

    #[test]
    fn historical_reads_match_the_state_at_each_block(case in case()) {
        run_case(&case)?;
    }
}

/// A database made before history was recorded answers only its head's state from then on.
#[test]
fn history_starts_at_the_head_of_an_older_database() {
    let (dir, store) = temp_store();
    let mut parent = store.init_genesis(&ChainSpec::dev()).unwrap();
    for _ in 0..3 {
        let block = parent.empty_child();
        let mut writer = store.begin_block().unwrap();
        writer.apply_state(&StateChanges::default()).unwrap();
        writer.insert_block(&block).unwrap();
        writer.commit().unwrap();
        parent = block;
    }
    // What an older release left: no history metadata.
    let txn = store.db.begin_rw_txn().unwrap();
    let metadata = txn.open_table(Some(crate::tables::METADATA)).unwrap();
    txn.del(&metadata, crate::tables::HISTORY_FROM_KEY, None)
        .unwrap();
    txn.commit().unwrap();
    drop(store);

    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    store
        .view(|reader| {
            assert_eq!(reader.history_oldest().unwrap(), 3);
            assert!(reader.state_at(3).is_ok());
            assert!(matches!(
                reader.state_at(2),
                Err(StorageError::HistoryPruned {
                    requested: 2,
                    oldest: 3
                })
            ));
        })
        .unwrap();
}

/// Storage change-set rows not yet moved into the history tables.
fn unmoved_slot_rows(store: &Store) -> u64 {
    let stats = store.view(|reader| reader.table_stats().unwrap()).unwrap();
    let changes = stats.iter().find(|s| s.table == tables::STORAGE_CHANGES);
    changes.unwrap().entries
}

/// Slots of one contract changed by every block of the tests below: a token's balances.
const TOKEN_SLOTS: u64 = 64;

/// Commits a child of `parent` in which the token changes [`TOKEN_SLOTS`] random slots.
fn commit_token_block(store: &Store, parent: &SealedBlock, rng: &mut StdRng) -> SealedBlock {
    let token = Address::repeat_byte(0x70);
    let number = parent.header.number + 1;
    let mut changes = StateChanges::default();
    let account = AccountInfo::with_balance(U256::from(number));
    changes.accounts.insert(token, Some(account));
    let slots = (0..TOKEN_SLOTS)
        .map(|_| (U256::from(rng.random::<u64>()), U256::from(number)))
        .collect();
    let change = StorageChange {
        wiped: false,
        slots,
    };
    changes.storage.insert(token, change);
    let block = child(parent, Vec::new());
    commit_block(store, &block, &changes);
    block
}

/// One contract whose slots change by the dozen every block (a token's balances): its rows move
/// a share of the batch per commit, like everyone else's, not all in its address's one step.
#[test]
fn a_busy_contracts_slots_move_a_share_per_commit() {
    let (_dir, store) = temp_store();
    let mut parent = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut unmoved = vec![unmoved_slot_rows(&store)];
    for _ in 0..3 * INDEX_BATCH_BLOCKS {
        parent = commit_token_block(&store, &parent, &mut rng);
        unmoved.push(unmoved_slot_rows(&store));
    }
    // The first batch's blocks are written, then moved one step a commit from its last block on:
    // a batch of TOKEN_SLOTS rows a block, a quarter (in the tests, four steps) of it a step.
    let moved: Vec<u64> = unmoved
        .windows(2)
        .map(|w| w[0] + TOKEN_SLOTS - w[1])
        .collect();
    let batch = INDEX_BATCH_BLOCKS as usize;
    assert!(moved[..batch - 1].iter().all(|m| *m == 0), "{moved:?}");
    for (step, rows) in moved[batch - 1..].iter().enumerate() {
        assert!(
            (TOKEN_SLOTS / 2..=2 * TOKEN_SLOTS).contains(rows),
            "step {step} moved {rows} rows, about {TOKEN_SLOTS} expected: {moved:?}"
        );
    }
}

/// A batch's last step takes every storage row the batch still has, also one before the ranges
/// already moved (as a batch half moved by a version that cut its ranges elsewhere leaves).
#[test]
fn a_batchs_last_step_leaves_no_storage_row_behind() {
    let (_dir, store) = temp_store();
    let mut parent = store.init_genesis(&ChainSpec::dev()).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    // Blocks 1..=B are the first batch; its steps run at heads B..2B-1, the last at 2B-1.
    for _ in 0..2 * INDEX_BATCH_BLOCKS - 2 {
        parent = commit_token_block(&store, &parent, &mut rng);
    }
    let txn = store.db.begin_rw_txn().unwrap();
    let tables = tables::Tables::open(&txn).unwrap();
    let mut stray = [0u8; 60];
    stray[..8].copy_from_slice(&2u64.to_be_bytes());
    txn.put(&tables.storage_changes, stray, [], WriteFlags::UPSERT)
        .unwrap();
    txn.commit().unwrap();
    commit_token_block(&store, &parent, &mut rng);
    // Left: the rows of the blocks after the batch.
    let after = INDEX_BATCH_BLOCKS - 1;
    assert_eq!(unmoved_slot_rows(&store), after * TOKEN_SLOTS);
}
