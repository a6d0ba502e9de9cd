//! The incremental state root against roots computed from scratch.
//!
//! The property test applies random blocks and, after each, checks the root returned by
//! `apply_state` and every stored trie node against a [`HashBuilder`] run over the whole state
//! kept in a plain in-memory model. Failures print the generated case (its `seed` replays it);
//! `SEED=<u64>` fixes proptest's own seed, `PROPTEST_CASES` changes the number of cases.

use super::{
    model::{Model, Pools, StoredNodes, check_nodes, random_block, stored_nodes},
    temp_store,
};
use crate::{ChainView, Durability, StateView, Store, genesis_header, state_root_from_alloc};
use alloy_primitives::{Address, B256, Bytes, U256, address, keccak256};
use alloy_trie::{
    EMPTY_ROOT_HASH, Nibbles, TrieAccount,
    nodes::{LeafNode, RlpNode},
    root::{state_root_unhashed, storage_root_unhashed},
};
use kestrel_types::{
    AccountInfo, ChainSpec, StateChanges, StorageChange, chain::GenesisAlloc, state::KECCAK_EMPTY,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};

/// One generated case: the seed of its blocks, the pool sizes, and how many blocks.
#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    accounts: usize,
    slots: usize,
    blocks: usize,
    ops_max: usize,
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(case.seed);
    let pools = Pools::new(&mut rng, case.accounts, case.slots);
    let (dir, mut store) = temp_store();
    let mut model = Model::default();
    let reopen_at = rng.random_range(0..case.blocks);
    for number in 0..case.blocks {
        let changes = random_block(&mut rng, &pools, &model, case.ops_max);
        if rng.random_ratio(1, 16) {
            // A writer dropped without commit leaves nothing behind.
            let mut writer = store.begin_block().unwrap();
            writer.apply_state(&changes).unwrap();
        }
        let mut writer = store.begin_block().unwrap();
        let root = writer.apply_state(&changes).unwrap();
        model.apply(&changes);
        let mut applied = vec![changes];
        // Sometimes a second block joins the write transaction, as when the commit stage
        // commits blocks that queued up behind it together.
        if rng.random_ratio(1, 4) {
            prop_assert_eq!(
                root,
                model.state_trie().root,
                "state root after block {}",
                number
            );
            let next = random_block(&mut rng, &pools, &model, case.ops_max);
            let root = writer.apply_state(&next).unwrap();
            model.apply(&next);
            prop_assert_eq!(
                root,
                model.state_trie().root,
                "state root of a second block in the write transaction of block {}",
                number
            );
            applied.push(next);
        }
        writer.commit().unwrap();

        let expected = model.state_trie();
        if applied.len() == 1 {
            prop_assert_eq!(root, expected.root, "state root after block {}", number);
        }
        let (account_nodes, storage_nodes) = stored_nodes(&store);
        let checked = check_nodes(&account_nodes, &expected)
            .and_then(|()| model.check_storage_nodes(&storage_nodes));
        prop_assert!(
            checked.is_ok(),
            "trie nodes after block {}: {}",
            number,
            checked.unwrap_err()
        );
        let scratch = store
            .view(|reader| reader.state_root_from_scratch().unwrap())
            .unwrap();
        prop_assert_eq!(
            scratch,
            expected.root,
            "scratch root from the database after block {}",
            number
        );
        let touched: BTreeSet<&Address> = applied
            .iter()
            .flat_map(|changes| changes.accounts.keys().chain(changes.storage.keys()))
            .collect();
        store
            .view(|reader| -> Result<(), TestCaseError> {
                for address in touched {
                    let info = model.accounts.get(address).copied();
                    prop_assert_eq!(reader.account(*address).unwrap(), info);
                    let root = info.map(|_| model.storage_root(address));
                    prop_assert_eq!(reader.storage_root(*address).unwrap(), root);
                    for slot in &pools.slots {
                        let value = model
                            .storage
                            .get(address)
                            .and_then(|slots| slots.get(slot))
                            .copied()
                            .unwrap_or_default();
                        prop_assert_eq!(reader.storage(*address, *slot).unwrap(), value);
                    }
                }
                Ok(())
            })
            .unwrap()?;

        if number == reopen_at {
            if rng.random_bool(0.5) {
                // A crash: the branch values kept in memory are lost, not written at close.
                store.deferred.reset();
            }
            drop(store);
            store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        }
    }
    Ok(())
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![
        // Few keys, many blocks: the same paths are split, collapsed and rebuilt over and over.
        (any::<u64>(), 1usize..=6, 1usize..=8, 100usize..=300).prop_map(
            |(seed, accounts, slots, blocks)| Case {
                seed,
                accounts,
                slots,
                blocks,
                ops_max: 4
            }
        ),
        // More keys: deeper tries, where most of each root comes from stored hashes.
        (any::<u64>(), 20usize..=300, 1usize..=64, 50usize..=100).prop_map(
            |(seed, accounts, slots, blocks)| Case {
                seed,
                accounts,
                slots,
                blocks,
                ops_max: 40
            }
        ),
    ]
}

proptest! {
    #![proptest_config(super::proptest_config(256))]

    #[test]
    fn incremental_root_matches_scratch_root(case in case()) {
        run_case(&case)?;
    }
}

fn apply(store: &Store, changes: &StateChanges) -> B256 {
    let mut writer = store.begin_block().unwrap();
    let root = writer.apply_state(changes).unwrap();
    writer.commit().unwrap();
    root
}

#[test]
fn empty_state_has_the_empty_root() {
    let (_dir, store) = temp_store();
    assert_eq!(apply(&store, &StateChanges::default()), EMPTY_ROOT_HASH);
    // And back to empty after something came and went.
    let address = address!("0x1000000000000000000000000000000000000001");
    let mut changes = StateChanges::default();
    changes
        .accounts
        .insert(address, Some(AccountInfo::with_balance(U256::from(1))));
    changes
        .storage
        .entry(address)
        .or_default()
        .slots
        .insert(U256::from(1), U256::from(2));
    assert_ne!(apply(&store, &changes), EMPTY_ROOT_HASH);
    let mut changes = StateChanges::default();
    changes.accounts.insert(address, None);
    assert_eq!(apply(&store, &changes), EMPTY_ROOT_HASH);
    assert_eq!(stored_nodes(&store), (StoredNodes::new(), BTreeMap::new()));
}

#[test]
fn single_account_root_is_its_leaf_hash() {
    let (_dir, store) = temp_store();
    let address = address!("0x1000000000000000000000000000000000000001");
    let info = AccountInfo {
        nonce: 1,
        balance: U256::from(10),
        code_hash: KECCAK_EMPTY,
    };
    let mut changes = StateChanges::default();
    changes.accounts.insert(address, Some(info));
    // A one-leaf trie is the leaf node itself, keyed by the full hashed address.
    let account = TrieAccount::new(1, U256::from(10), EMPTY_ROOT_HASH, KECCAK_EMPTY);
    let leaf = LeafNode::new(
        Nibbles::unpack(keccak256(address)),
        alloy_rlp::encode(account),
    );
    let mut buf = Vec::new();
    let rlp: RlpNode = leaf.as_ref().rlp(&mut buf);
    assert!(
        rlp.is_hash(),
        "a leaf of 32 bytes or more is referenced by its hash"
    );
    assert_eq!(apply(&store, &changes), keccak256(&buf));
}

#[test]
fn small_state_matches_alloy_roots() {
    let (_dir, store) = temp_store();
    let mut changes = StateChanges::default();
    let mut reference = Vec::new();
    for i in 1..=20u64 {
        let address = Address::with_last_byte(i as u8);
        let info = AccountInfo {
            nonce: i,
            balance: U256::from(i * 1000),
            code_hash: KECCAK_EMPTY,
        };
        changes.accounts.insert(address, Some(info));
        let slots: BTreeMap<U256, U256> = (0..i % 5)
            .map(|s| (U256::from(s), U256::from(i * 7 + s)))
            .collect();
        let storage_root = storage_root_unhashed(
            slots
                .iter()
                .map(|(slot, value)| (B256::from(slot.to_be_bytes::<32>()), *value)),
        );
        if !slots.is_empty() {
            changes.storage.insert(
                address,
                StorageChange {
                    wiped: false,
                    slots,
                },
            );
        }
        reference.push((
            address,
            TrieAccount::new(i, U256::from(i * 1000), storage_root, KECCAK_EMPTY),
        ));
    }
    let storage_roots: Vec<B256> = reference
        .iter()
        .map(|(_, account)| account.storage_root)
        .collect();
    assert_eq!(apply(&store, &changes), state_root_unhashed(reference));
    store
        .view(|reader| {
            for (i, root) in storage_roots.iter().enumerate() {
                let address = Address::with_last_byte(i as u8 + 1);
                assert_eq!(reader.storage_root(address).unwrap(), Some(*root));
            }
        })
        .unwrap();
}

/// The dev chain's genesis hash. Pinned so that any change to the genesis header or state root
/// computation shows up here; the state root itself is checked against alloy's from-scratch
/// root by `tests::bulk` and below.
const DEV_GENESIS_HASH: B256 =
    alloy_primitives::b256!("0x7db882e2f96aeb3bd0f37b980147e815f2f14e47dbf9483a306a97a2a6d5c2f9");

#[test]
fn dev_genesis_is_deterministic() {
    let spec = ChainSpec::dev();
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&spec).unwrap();
    assert_eq!(genesis.hash, genesis_header(&spec).hash_slow());
    assert_eq!(genesis.hash, DEV_GENESIS_HASH);
    let (_dir2, other) = temp_store();
    assert_eq!(other.init_genesis(&spec).unwrap().hash, genesis.hash);
    store
        .view(|reader| {
            assert_eq!(reader.head().unwrap(), Some(0));
            assert_eq!(reader.block_hash(0).unwrap(), Some(genesis.hash));
            assert_eq!(
                reader.header(0).unwrap().unwrap().state_root,
                genesis.header.state_root
            );
        })
        .unwrap();
}

#[test]
fn genesis_with_code_and_storage_matches_scratch_root() {
    let mut spec = ChainSpec::dev();
    let code = Bytes::from_static(&[0x60, 0x01, 0x60, 0x00, 0x55]);
    let storage = (0..10u64)
        .map(|s| (U256::from(s), U256::from(s + 1)))
        .collect();
    let info = AccountInfo {
        nonce: 1,
        balance: U256::ZERO,
        code_hash: keccak256(&code),
    };
    let contract = address!("0x4242424242424242424242424242424242424242");
    spec.alloc.insert(
        contract,
        GenesisAlloc {
            info,
            code: Some(code.clone()),
            storage,
        },
    );
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&spec).unwrap();
    assert_eq!(
        genesis.header.state_root,
        state_root_from_alloc(&spec.alloc)
    );
    assert_ne!(
        genesis.header.state_root,
        genesis_header(&ChainSpec::dev()).state_root
    );
    store
        .view(|reader| {
            assert_eq!(reader.code(info.code_hash).unwrap(), Some(code));
            assert_eq!(
                reader.storage(contract, U256::from(3)).unwrap(),
                U256::from(4)
            );
        })
        .unwrap();
}
