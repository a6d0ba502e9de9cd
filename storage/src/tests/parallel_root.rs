//! The account trie walked on several threads against the same blocks walked on one: the same
//! roots and, byte for byte, the same stored nodes.

use super::{
    model::{Model, Pools, random_block, stored_nodes},
    temp_store,
};
use crate::{Store, trie::Walked};
use alloy_primitives::{Address, U256, keccak256};
use kestrel_types::{AccountInfo, StateChanges};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

/// Applies `changes` to `parallel` as the first block of its transaction (its account trie may
/// be walked on several threads), and to `single` after an empty block in the same transaction
/// (which keeps it on one thread); checks both give the same root and nodes.
fn apply_both(parallel: &Store, single: &Store, changes: &StateChanges) -> Walked {
    let mut writer = parallel.begin_block().unwrap();
    let (root, walked) = writer.apply_state_walked(changes).unwrap();
    writer.commit().unwrap();

    let mut writer = single.begin_block().unwrap();
    writer.apply_state(&StateChanges::default()).unwrap();
    let (single_root, single_walked) = writer.apply_state_walked(changes).unwrap();
    writer.commit().unwrap();

    assert_eq!(single_walked, Walked::OneThread);
    assert_eq!(
        root, single_root,
        "roots walked {walked:?} and on one thread"
    );
    assert_eq!(
        stored_nodes(parallel),
        stored_nodes(single),
        "nodes walked {walked:?} and on one thread"
    );
    walked
}

#[test]
fn random_blocks_walked_in_parallel_store_what_one_thread_stores() {
    let mut walks = BTreeMap::<&str, usize>::new();
    for seed in 0..8 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 300, 8);
        let (_a, parallel) = temp_store();
        let (_b, single) = temp_store();
        let mut model = Model::default();
        for _ in 0..40 {
            let changes = random_block(&mut rng, &pools, &model, 60);
            model.apply(&changes);
            *walks
                .entry(apply_both(&parallel, &single, &changes).label())
                .or_default() += 1;
        }
    }
    assert!(walks["parallel"] > 100, "walks: {walks:?}");
}

/// An address whose hashed key starts with the nibbles `prefix`, found by trying addresses in
/// order from `from`.
fn address_under(prefix: &[u8], from: &mut u64) -> Address {
    loop {
        *from += 1;
        let address = Address::left_padding_from(&from.to_be_bytes());
        let hashed = keccak256(address);
        let nibbles = hashed.iter().flat_map(|byte| [byte >> 4, byte & 0x0f]);
        if nibbles.take(prefix.len()).eq(prefix.iter().copied()) {
            return address;
        }
    }
}

fn accounts(changes: impl IntoIterator<Item = (Address, Option<u64>)>) -> StateChanges {
    let mut block = StateChanges::default();
    for (address, balance) in changes {
        let info = balance.map(|balance| AccountInfo::with_balance(U256::from(balance)));
        block.accounts.insert(address, info);
    }
    block
}

#[test]
fn a_subtree_left_with_one_leaf_is_walked_again_on_one_thread() {
    let mut from = 0;
    // Under the root's child 1: a branch at 1,2 (two leaves) beside a leaf at 1,3; the same
    // under child 2. Each child's branch has a hashed branch below it, so the root's tree mask
    // has both: both are subtrees to build apart.
    let [a, b, c, d, e, f] = [[1, 2], [1, 2], [1, 3], [2, 5], [2, 5], [2, 6]]
        .map(|prefix| address_under(&prefix, &mut from));
    let (_a, parallel) = temp_store();
    let (_b, single) = temp_store();
    let genesis = accounts([a, b, c, d, e, f].map(|address| (address, Some(1))));
    apply_both(&parallel, &single, &genesis);

    let changed = accounts([(a, Some(2)), (d, Some(2)), (e, Some(3))]);
    assert_eq!(apply_both(&parallel, &single, &changed), Walked::Parallel);

    // Child 1 keeps only `a`: a leaf, not a branch, at the child.
    let collapse = accounts([(b, None), (c, None), (d, Some(4))]);
    assert_eq!(apply_both(&parallel, &single, &collapse), Walked::Again);

    let grown = accounts([(b, Some(5)), (c, Some(5)), (e, Some(6))]);
    apply_both(&parallel, &single, &grown);
    let emptied = accounts([(a, None), (b, None), (c, None), (f, Some(7))]);
    let walked = apply_both(&parallel, &single, &emptied);
    assert_eq!(
        walked,
        Walked::Parallel,
        "an emptied child is fed as nothing"
    );
}

/// Value changes to accounts that exist (a transfer's): the changes the bottom subtrees' kept
/// top branches serve.
fn balance_changes(rng: &mut StdRng, model: &Model, count: usize) -> StateChanges {
    let existing: Vec<(&Address, &AccountInfo)> = model.accounts.iter().collect();
    let mut block = StateChanges::default();
    for _ in 0..count.min(existing.len()) {
        let (address, info) = existing[rng.random_range(0..existing.len())];
        let info = AccountInfo {
            balance: U256::from(rng.random::<u64>()),
            nonce: info.nonce + 1,
            ..*info
        };
        block.accounts.insert(*address, Some(info));
    }
    block
}

/// Block `i` of a run: every third one random (creations, deletions, storage), the others
/// value changes to existing accounts.
fn mixed_block(rng: &mut StdRng, pools: &Pools, model: &Model, i: usize) -> StateChanges {
    match i % 3 {
        0 => random_block(rng, pools, model, 60),
        _ => balance_changes(rng, model, 40),
    }
}

/// The bottom subtrees' top branches kept between blocks (`trie::bottom_cache`) against a store
/// walked on one thread, which never uses them: the same roots and nodes, through blocks dropped
/// uncommitted (their tops never kept) and transactions of two blocks (the second walked on one
/// thread, its changes dropping the tops over them); and the kept tops are used.
#[test]
fn kept_top_branches_give_what_the_leaves_give() {
    let mut found = 0;
    for seed in 0..6 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let pools = Pools::new(&mut rng, 300, 8);
        let (_a, cached) = temp_store();
        let (_b, single) = temp_store();
        let mut model = Model::default();
        for i in 0..60 {
            let changes = mixed_block(&mut rng, &pools, &model, i);
            match i % 7 {
                5 => {
                    let mut writer = cached.begin_block().unwrap();
                    writer.apply_state(&changes).unwrap();
                    drop(writer);
                }
                6 => {
                    model.apply(&changes);
                    let next = balance_changes(&mut rng, &model, 40);
                    model.apply(&next);
                    let mut writer = cached.begin_block().unwrap();
                    writer.apply_state(&changes).unwrap();
                    let cached_root = writer.apply_state(&next).unwrap();
                    writer.commit().unwrap();
                    let mut writer = single.begin_block().unwrap();
                    writer.apply_state(&StateChanges::default()).unwrap();
                    writer.apply_state(&changes).unwrap();
                    let single_root = writer.apply_state(&next).unwrap();
                    writer.commit().unwrap();
                    let roots = [cached_root, single_root];
                    assert_eq!(roots[0], roots[1], "seed {seed} block {i}: two-block root");
                    assert_eq!(stored_nodes(&cached), stored_nodes(&single), "seed {seed}");
                }
                _ => {
                    model.apply(&changes);
                    apply_both(&cached, &single, &changes);
                }
            }
        }
        assert_eq!(
            cached
                .view(|reader| reader.state_root_from_scratch().unwrap())
                .unwrap(),
            model.state_trie().root
        );
        found += cached
            .bottoms
            .found
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(cached.bottoms.len() > 0, "seed {seed}: no top branch kept");
    }
    assert!(found > 200, "kept top branches found {found} times");
}

/// The top branches a store fills at open (`BottomCache::fill`, from the node and hashed tables)
/// are the ones its blocks kept, and more: every kept one is found, equal, among them.
#[test]
fn top_branches_filled_at_open_are_the_ones_blocks_kept() {
    let mut rng = StdRng::seed_from_u64(9);
    let pools = Pools::new(&mut rng, 300, 8);
    let (dir, store) = temp_store();
    let mut model = Model::default();
    for i in 0..40 {
        let changes = mixed_block(&mut rng, &pools, &model, i);
        model.apply(&changes);
        let mut writer = store.begin_block().unwrap();
        writer.apply_state(&changes).unwrap();
        writer.commit().unwrap();
    }
    let kept = store.bottoms.entries();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let filled = store.bottoms.entries();
    assert!(kept.len() > 3, "{} kept", kept.len());
    assert!(filled.len() >= kept.len());
    for (path, top) in &kept {
        assert_eq!(filled.get(path), Some(top), "at {path:?}");
    }
}
