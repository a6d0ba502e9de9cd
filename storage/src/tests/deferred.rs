//! The account trie's branches whose writes wait in memory between checkpoints
//! (`trie::deferred`): readers of an older commit keep its values, a crash between checkpoints
//! is repaired at open, a checkpoint leaves the table current.

use super::{
    model::{Model, Pools, check_nodes, random_block, stored_nodes},
    temp_store,
};
use crate::{Durability, Store};
use alloy_trie::Nibbles;
use rand::{SeedableRng, rngs::StdRng};
use std::sync::Arc;

/// Commits random blocks to `store` (and `model`) until the last commit left branch values in
/// memory; returns how many it took.
fn commit_until_deferred(
    store: &Store,
    model: &mut Model,
    rng: &mut StdRng,
    pools: &Pools,
) -> usize {
    for blocks in 1..=200 {
        let changes = random_block(rng, pools, model, 40);
        let mut writer = store.begin_block().unwrap();
        let root = writer.apply_state(&changes).unwrap();
        writer.commit().unwrap();
        model.apply(&changes);
        assert_eq!(root, model.state_trie().root);
        if store.view(|reader| !reader.fresh.is_empty()).unwrap() {
            return blocks;
        }
    }
    panic!("200 blocks and no branch update deferred");
}

/// A store of 300 accounts whose last commit left branch values in memory, its model, and the
/// random blocks' generator.
fn deferring_store(seed: u64) -> (tempfile::TempDir, Store, Model, StdRng, Pools) {
    let mut rng = StdRng::seed_from_u64(seed);
    let pools = Pools::new(&mut rng, 300, 4);
    let (dir, store) = temp_store();
    let mut model = Model::default();
    commit_until_deferred(&store, &mut model, &mut rng, &pools);
    (dir, store, model, rng, pools)
}

fn stale(store: &Store) -> bool {
    store
        .view(|reader| {
            let marker = reader
                .txn
                .get::<()>(&reader.tables.metadata, crate::tables::DEFERRED_KEY);
            marker.unwrap().is_some()
        })
        .unwrap()
}

fn assert_nodes_match(store: &Store, model: &Model, when: &str) {
    let (accounts, _) = stored_nodes(store);
    if let Err(err) = check_nodes(&accounts, &model.state_trie()) {
        panic!("account trie {when}: {err}");
    }
}

/// A reader of commit N proves against N's root while later blocks defer branch updates and a
/// checkpoint writes them into the table.
#[test]
fn a_reader_keeps_its_commits_branches_through_later_commits_and_checkpoints() {
    for seed in 0..8u64 {
        let (_dir, store, mut model, mut rng, pools) = deferring_store(seed);
        let root = model.state_trie().root;
        store
            .view(|reader| {
                let proofs: Vec<_> = (pools.addresses.iter().take(20))
                    .map(|address| reader.proof(*address, &[]).unwrap())
                    .collect();
                assert!(
                    proofs.iter().all(|(proved, _)| *proved == root),
                    "seed {seed}"
                );
                // Later blocks, from another thread, while this snapshot stays open: enough to
                // pass a checkpoint and more views than are kept.
                let mut later = model.clone();
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for _ in 0..24 {
                            let changes = random_block(&mut rng, &pools, &later, 40);
                            let mut writer = store.begin_block().unwrap();
                            writer.apply_state(&changes).unwrap();
                            writer.commit().unwrap();
                            later.apply(&changes);
                        }
                    });
                });
                assert_ne!(
                    later.state_trie().root,
                    root,
                    "seed {seed}: the state moved on"
                );
                for (address, before) in pools.addresses.iter().zip(&proofs) {
                    assert_eq!(&reader.proof(*address, &[]).unwrap(), before, "seed {seed}");
                }
                let (top_root, _) = reader.snapshot_top(2).unwrap();
                assert_eq!(top_root, root, "seed {seed}");
                model = later;
            })
            .unwrap();
        assert_nodes_match(&store, &model, &format!("seed {seed} at the end"));
    }
}

/// A crash between checkpoints leaves stale branches in the table, marked: the next open
/// rebuilds the account trie, and blocks go on from it.
#[test]
fn a_crash_between_checkpoints_rebuilds_the_account_trie_at_open() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 300, 4);
        let dir = tempfile::tempdir().unwrap();
        let mut model = Model::default();
        {
            let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
            commit_until_deferred(&store, &mut model, &mut rng, &pools);
            assert!(
                stale(&store),
                "seed {seed}: the commit marks the table stale"
            );
            let deferred = store
                .view(|reader| {
                    (0..16u8)
                        .filter(|nibble| {
                            let path = Nibbles::from_nibbles([*nibble]);
                            reader.fresh.get(&path).is_some()
                        })
                        .count()
                })
                .unwrap();
            assert!(deferred > 0, "seed {seed}");
            // The process dies: what memory held is gone, the clean close writes nothing.
            store.deferred.reset();
        }
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        assert!(!stale(&store), "seed {seed}: repaired at open");
        assert_nodes_match(&store, &model, &format!("seed {seed} after the repair"));
        let root = model.state_trie().root;
        let proved = store
            .view(|reader| reader.proof(pools.addresses[0], &[]).unwrap().0)
            .unwrap();
        assert_eq!(proved, root, "seed {seed}");
        for _ in 0..8 {
            let changes = random_block(&mut rng, &pools, &model, 40);
            let mut writer = store.begin_block().unwrap();
            let root = writer.apply_state(&changes).unwrap();
            writer.commit().unwrap();
            model.apply(&changes);
            assert_eq!(root, model.state_trie().root, "seed {seed}");
        }
        assert_nodes_match(&store, &model, &format!("seed {seed} after more blocks"));
    }
}

/// A checkpoint (every few commits, and at a clean close) writes every deferred value: the
/// table alone is the trie again, unmarked.
#[test]
fn a_checkpoint_leaves_the_table_current() {
    let (_dir, store, model, _, _) = deferring_store(7);
    store.deferred.checkpoint(&store.db).unwrap();
    assert!(!stale(&store));
    assert!(store.view(|reader| reader.fresh.is_empty()).unwrap());
    assert!(store.deferred.latest().is_empty());
    assert_nodes_match(&store, &model, "after the checkpoint");
}

/// A commit's view is published before MDBX commits it: a reader that begins meanwhile reads
/// the last commit and gets the last commit's view, and a failed commit's view is withdrawn.
#[test]
fn a_reader_beginning_during_a_commit_gets_the_last_commits_view() {
    let (_dir, store, model, mut rng, pools) = deferring_store(3);
    let before = store.view(|reader| reader.fresh.clone()).unwrap();
    let mut writer = store.begin_block().unwrap();
    loop {
        writer
            .apply_state(&random_block(&mut rng, &pools, &model, 40))
            .unwrap();
        if !Arc::ptr_eq(&writer.pending.borrow(), &writer.committed_view) {
            break;
        }
    }
    let pending = writer.pending.borrow().clone();
    (store.deferred)
        .prepare(&writer.txn, &writer.committed_view, pending)
        .unwrap();
    let during = store.view(|reader| reader.fresh.clone()).unwrap();
    assert!(Arc::ptr_eq(&during, &before), "the last commit's view");
    store.deferred.committed(false);
    drop(writer);
    assert!(Arc::ptr_eq(&store.deferred.latest(), &before), "withdrawn");
    assert_nodes_match(&store, &model, "after the withdrawn commit");
}
