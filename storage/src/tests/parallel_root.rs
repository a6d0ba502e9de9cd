//! The account trie walked on several threads against the same blocks walked on one: the same
//! roots and, byte for byte, the same stored nodes.

use super::{
    model::{Model, Pools, random_block, stored_nodes},
    temp_store,
};
use crate::{Store, trie::Walked};
use alloy_primitives::{Address, U256, keccak256};
use kestrel_types::{AccountInfo, StateChanges};
use rand::{SeedableRng, rngs::StdRng};
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
