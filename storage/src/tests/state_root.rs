//! The incremental state root against roots computed from scratch.
//!
//! The property test applies random blocks and, after each, checks the root returned by
//! `apply_state` and every stored trie node against a [`HashBuilder`] run over the whole state
//! kept in a plain in-memory model. Failures print the generated case (its `seed` replays it);
//! `SEED=<u64>` fixes proptest's own seed, `PROPTEST_CASES` changes the number of cases.

use super::temp_store;
use crate::{
    ChainView, Durability, StateView, Store, codec, codec::StoredNode, genesis_header,
    state_root_from_alloc,
};
use alloy_primitives::{Address, B256, Bytes, U256, address, keccak256};
use alloy_trie::{
    BranchNodeCompact, EMPTY_ROOT_HASH, HashBuilder, Nibbles, TrieAccount,
    nodes::{LeafNode, LeafNodeRef, RlpNode},
    root::{state_root_unhashed, storage_root_unhashed},
};
use kestrel_types::{
    AccountInfo, ChainSpec, StateChanges, StorageChange, chain::GenesisAlloc, state::KECCAK_EMPTY,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};

type Nodes = BTreeMap<Nibbles, BranchNodeCompact>;
type StoredNodes = BTreeMap<Nibbles, StoredNode>;

/// A trie built from scratch: its root, the branch nodes the hash builder asks to store, and its
/// leaves (hashed key → leaf value).
struct ScratchTrie {
    root: B256,
    nodes: Nodes,
    leaves: BTreeMap<B256, Vec<u8>>,
}

/// Checks the stored nodes of a trie against the trie built from scratch: the same branch nodes,
/// and every stored leaf hash the hash of the one leaf below that child.
fn check_nodes(stored: &StoredNodes, scratch: &ScratchTrie) -> Result<(), String> {
    let branches: Nodes = stored
        .iter()
        .map(|(path, node)| (*path, node.branch.clone()))
        .collect();
    if branches != scratch.nodes {
        return Err(format!("stored {branches:?}\nscratch {:?}", scratch.nodes));
    }
    for (path, node) in stored {
        for nibble in node.leaf_mask.iter() {
            let mut child = *path;
            child.push(nibble);
            let under: Vec<_> = scratch
                .leaves
                .iter()
                .filter(|(key, _)| Nibbles::unpack(key).starts_with(&child))
                .collect();
            let [(key, value)] = under[..] else {
                return Err(format!(
                    "leaf hash at {child:?} over {} leaves",
                    under.len()
                ));
            };
            let suffix = Nibbles::unpack(key).slice(child.len()..);
            let mut rlp = Vec::new();
            let expected = LeafNodeRef::new(&suffix, value).rlp(&mut rlp).as_hash();
            if expected != Some(node.leaf_hash(nibble)) {
                return Err(format!("leaf hash at {child:?}"));
            }
        }
    }
    Ok(())
}

/// `leaves` sorted by key.
fn scratch_trie(leaves: BTreeMap<B256, Vec<u8>>) -> ScratchTrie {
    let mut hb = HashBuilder::default().with_updates(true);
    for (key, value) in &leaves {
        hb.add_leaf(Nibbles::unpack(key), value);
    }
    let root = hb.root();
    let (_, nodes) = hb.split();
    let nodes = nodes
        .into_iter()
        .filter(|(path, branch)| crate::trie::is_stored(path, branch))
        .collect();
    ScratchTrie {
        root,
        nodes,
        leaves,
    }
}

fn scratch_storage_trie(slots: &BTreeMap<U256, U256>) -> ScratchTrie {
    let leaves: BTreeMap<B256, Vec<u8>> = slots
        .iter()
        .map(|(slot, value)| {
            (
                keccak256(slot.to_be_bytes::<32>()),
                alloy_rlp::encode(value),
            )
        })
        .collect();
    scratch_trie(leaves)
}

/// The state as plain maps, with each account's storage trie rebuilt from scratch whenever the
/// account's storage changes.
#[derive(Default)]
pub(super) struct Model {
    pub(super) accounts: BTreeMap<Address, AccountInfo>,
    pub(super) storage: BTreeMap<Address, BTreeMap<U256, U256>>,
    storage_tries: BTreeMap<Address, ScratchTrie>,
}

impl Model {
    pub(super) fn apply(&mut self, changes: &StateChanges) {
        for (address, account) in &changes.accounts {
            match account {
                None => {
                    self.accounts.remove(address);
                    self.storage.remove(address);
                    self.storage_tries.remove(address);
                }
                Some(info) => {
                    self.accounts.insert(*address, *info);
                }
            }
        }
        for (address, change) in &changes.storage {
            if changes.accounts.get(address) == Some(&None) {
                continue;
            }
            let slots = self.storage.entry(*address).or_default();
            if change.wiped {
                slots.clear();
            }
            for (slot, value) in &change.slots {
                if value.is_zero() {
                    slots.remove(slot);
                } else {
                    slots.insert(*slot, *value);
                }
            }
            self.storage_tries
                .insert(*address, scratch_storage_trie(slots));
        }
    }

    fn storage_root(&self, address: &Address) -> B256 {
        self.storage_tries
            .get(address)
            .map_or(EMPTY_ROOT_HASH, |trie| trie.root)
    }

    fn state_trie(&self) -> ScratchTrie {
        let leaves: BTreeMap<B256, Vec<u8>> = self
            .accounts
            .iter()
            .map(|(address, info)| {
                let account = TrieAccount::new(
                    info.nonce,
                    info.balance,
                    self.storage_root(address),
                    info.code_hash,
                );
                (keccak256(address), alloy_rlp::encode(account))
            })
            .collect();
        scratch_trie(leaves)
    }

    /// Checks the stored storage tries, by hashed address, against the ones built from scratch.
    fn check_storage_nodes(&self, stored: &BTreeMap<B256, StoredNodes>) -> Result<(), String> {
        let mut unchecked: BTreeSet<&B256> = stored.keys().collect();
        for (address, trie) in &self.storage_tries {
            let hashed = keccak256(address);
            unchecked.remove(&hashed);
            let nodes = stored.get(&hashed).cloned().unwrap_or_default();
            check_nodes(&nodes, trie).map_err(|e| format!("storage of {address}: {e}"))?;
        }
        match unchecked.first() {
            Some(hashed) => Err(format!("nodes of a storage trie that is gone: {hashed}")),
            None => Ok(()),
        }
    }
}

/// Every stored trie node: the account trie's and, by hashed address, the storage tries'.
fn stored_nodes(store: &Store) -> (StoredNodes, BTreeMap<B256, StoredNodes>) {
    store
        .view(|reader| {
            let mut accounts = StoredNodes::new();
            let mut cursor = reader.txn.cursor(&reader.tables.account_trie).unwrap();
            for entry in cursor.iter_start::<Vec<u8>, Vec<u8>>() {
                let (key, value) = entry.unwrap();
                let path = codec::node_path("test", &key).unwrap();
                accounts.insert(path, codec::decode_node("test", &value).unwrap());
            }
            let mut storage = BTreeMap::<B256, StoredNodes>::new();
            let mut cursor = reader.txn.cursor(&reader.tables.storage_trie).unwrap();
            for entry in cursor.iter_start::<Vec<u8>, Vec<u8>>() {
                let (key, value) = entry.unwrap();
                let path = codec::node_path("test", &key[32..]).unwrap();
                let node = codec::decode_node("test", &value).unwrap();
                let hashed = B256::from_slice(&key[..32]);
                storage.entry(hashed).or_default().insert(path, node);
            }
            (accounts, storage)
        })
        .unwrap()
}

/// The keys a case draws from. Some keys are chosen so that their hashes share a 2- or 3-nibble
/// prefix: few random keys would rarely make extension nodes, and these make them split and
/// collapse as keys come and go.
pub(super) struct Pools {
    pub(super) addresses: Vec<Address>,
    pub(super) slots: Vec<U256>,
    codes: Vec<Bytes>,
}

/// Keys sharing a 3-nibble hash prefix cost ~4096 hashes each to find; a few are enough.
const DEEP_CLUSTER_MAX: usize = 6;

impl Pools {
    pub(super) fn new(rng: &mut StdRng, accounts: usize, slots: usize) -> Self {
        let prefix: [u8; 3] = [
            rng.random_range(0..16),
            rng.random_range(0..16),
            rng.random_range(0..16),
        ];
        let (mut deep_accounts, mut deep_slots) = (0, 0);
        let mut addresses = Vec::with_capacity(accounts);
        for i in 0..accounts {
            let shared = shared_nibbles(i, &mut deep_accounts);
            addresses.push(find(rng, &prefix[..shared], |rng| {
                Address::from(rng.random::<[u8; 20]>())
            }));
        }
        let mut slot_pool = Vec::with_capacity(slots);
        for i in 0..slots {
            let shared = shared_nibbles(i, &mut deep_slots);
            slot_pool.push(find(rng, &prefix[..shared], |rng| {
                if rng.random_bool(0.5) {
                    U256::from(rng.random_range(0..64u64))
                } else {
                    U256::from_be_bytes(rng.random::<[u8; 32]>())
                }
            }));
        }
        slot_pool.sort();
        slot_pool.dedup();
        let codes = (1..4u8).map(|n| Bytes::from(vec![0x60, n, 0x00])).collect();
        Self {
            addresses,
            slots: slot_pool,
            codes,
        }
    }
}

/// How many hash nibbles the `i`th key of a pool shares with the case's prefix.
fn shared_nibbles(i: usize, deep: &mut usize) -> usize {
    match i % 4 {
        2 => 2,
        3 if *deep < DEEP_CLUSTER_MAX => {
            *deep += 1;
            3
        }
        _ => 0,
    }
}

/// A key whose hash starts with `prefix` (nibbles).
fn find<K: HashKey>(rng: &mut StdRng, prefix: &[u8], mut draw: impl FnMut(&mut StdRng) -> K) -> K {
    let prefix = Nibbles::from_nibbles(prefix);
    loop {
        let key = draw(rng);
        if Nibbles::unpack(key.hash()).starts_with(&prefix) {
            return key;
        }
    }
}

/// How a key is hashed into its trie.
trait HashKey {
    fn hash(&self) -> B256;
}

impl HashKey for Address {
    fn hash(&self) -> B256 {
        keccak256(self)
    }
}

impl HashKey for U256 {
    fn hash(&self) -> B256 {
        keccak256(self.to_be_bytes::<32>())
    }
}

fn random_value(rng: &mut StdRng) -> U256 {
    match rng.random_range(0..3) {
        0 => U256::from(rng.random_range(1..256u64)),
        1 => U256::from(rng.random::<u64>() | 1),
        _ => U256::from_be_bytes(rng.random::<[u8; 32]>()) | U256::from(1),
    }
}

fn random_info(rng: &mut StdRng, pools: &Pools, changes: &mut StateChanges) -> AccountInfo {
    let code_hash = if rng.random_bool(0.2) {
        let code = pools.codes[rng.random_range(0..pools.codes.len())].clone();
        changes.insert_code(code)
    } else {
        KECCAK_EMPTY
    };
    let nonce = if rng.random_bool(0.5) {
        rng.random_range(0..4)
    } else {
        rng.random()
    };
    let balance = if rng.random_bool(0.2) {
        U256::ZERO
    } else {
        random_value(rng)
    };
    AccountInfo {
        nonce,
        balance,
        code_hash,
    }
}

/// One block of random changes over the pools. Storage goes only to accounts that exist after
/// the block, except that some blocks write slots of an account they delete (deletion wins).
pub(super) fn random_block(
    rng: &mut StdRng,
    pools: &Pools,
    model: &Model,
    ops_max: usize,
) -> StateChanges {
    let mut changes = StateChanges::default();
    for _ in 0..rng.random_range(1..=ops_max) {
        let address = pools.addresses[rng.random_range(0..pools.addresses.len())];
        let slot = pools.slots[rng.random_range(0..pools.slots.len())];
        match rng.random_range(0..100) {
            0..30 => {
                let info = random_info(rng, pools, &mut changes);
                changes.accounts.insert(address, Some(info));
            }
            30..38 => {
                changes.accounts.insert(address, None);
            }
            38..43 => {
                changes
                    .accounts
                    .insert(address, Some(AccountInfo::with_balance(U256::ZERO)));
            }
            43..80 => {
                let value = random_value(rng);
                changes
                    .storage
                    .entry(address)
                    .or_default()
                    .slots
                    .insert(slot, value);
            }
            80..93 => {
                changes
                    .storage
                    .entry(address)
                    .or_default()
                    .slots
                    .insert(slot, U256::ZERO);
            }
            _ => {
                let change = changes.storage.entry(address).or_default();
                change.wiped = true;
                change.slots.clear();
            }
        }
    }
    let orphans: Vec<Address> = changes
        .storage
        .keys()
        .filter(|a| !changes.accounts.contains_key(*a) && !model.accounts.contains_key(*a))
        .copied()
        .collect();
    for address in orphans {
        let info = random_info(rng, pools, &mut changes);
        changes.accounts.insert(address, Some(info));
    }
    changes
}

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
