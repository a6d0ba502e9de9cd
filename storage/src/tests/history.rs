//! Historical state: reads at every block of the window against snapshots of a plain model.
//!
//! Random blocks (the state root test's: account writes and deletions, slot writes, clears and
//! wipes) are committed one per write transaction or two together, as the commit stage groups
//! them; after each the model's state is kept. Then, for random blocks in the window and random
//! keys, `state_at` must read what the model held after that block, blocks before the window
//! must answer `HistoryPruned`, and the window must start exactly where its size says. Failures
//! print the case (its `seed` replays it); `SEED=<u64>` fixes proptest's own seed.

use super::{
    state_root::{Model, Pools, random_block},
    temp_store,
};
use crate::{Durability, HistoryWindow, StateView, StorageError, Store};
use alloy_primitives::{Address, U256};
use kestrel_types::{AccountInfo, ChainSpec, StateChanges};
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
