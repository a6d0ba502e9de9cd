//! The plain model of the state the storage property tests check against, and the random
//! blocks they apply: a [`Model`] of plain maps (each storage trie rebuilt from scratch when its
//! storage changes), key [`Pools`] with clustered hashes, and [`random_block`].

use crate::{
    Store,
    codec::{self, StoredNode},
};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_trie::{
    BranchNodeCompact, EMPTY_ROOT_HASH, HashBuilder, Nibbles, TrieAccount, nodes::LeafNodeRef,
};
use kestrel_types::{AccountInfo, StateChanges, state::KECCAK_EMPTY};
use rand::{Rng, rngs::StdRng};
use std::collections::{BTreeMap, BTreeSet};

pub(super) type Nodes = BTreeMap<Nibbles, BranchNodeCompact>;
pub(super) type StoredNodes = BTreeMap<Nibbles, StoredNode>;

/// A trie built from scratch: its root, the branch nodes the hash builder asks to store, and its
/// leaves (hashed key → leaf value).
#[derive(Clone)]
pub(super) struct ScratchTrie {
    pub(super) root: B256,
    pub(super) nodes: Nodes,
    pub(super) leaves: BTreeMap<B256, Vec<u8>>,
}

/// Checks the stored nodes of a trie against the trie built from scratch: the same branch nodes,
/// and every stored leaf hash the hash of the one leaf below that child.
pub(super) fn check_nodes(stored: &StoredNodes, scratch: &ScratchTrie) -> Result<(), String> {
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
pub(super) fn scratch_trie(leaves: BTreeMap<B256, Vec<u8>>) -> ScratchTrie {
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
#[derive(Default, Clone)]
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

    pub(super) fn storage_root(&self, address: &Address) -> B256 {
        self.storage_tries
            .get(address)
            .map_or(EMPTY_ROOT_HASH, |trie| trie.root)
    }

    pub(super) fn state_trie(&self) -> ScratchTrie {
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
    pub(super) fn check_storage_nodes(
        &self,
        stored: &BTreeMap<B256, StoredNodes>,
    ) -> Result<(), String> {
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

/// Every stored trie node: the account trie's (a branch whose write waits in memory with the
/// value kept there) and, by hashed address, the storage tries'.
pub(super) fn stored_nodes(store: &Store) -> (StoredNodes, BTreeMap<B256, StoredNodes>) {
    store
        .view(|reader| {
            let mut accounts = StoredNodes::new();
            let mut cursor = reader.txn.cursor(&reader.tables.account_trie).unwrap();
            for entry in cursor.iter_start::<Vec<u8>, Vec<u8>>() {
                let (key, value) = entry.unwrap();
                let path = codec::node_path("test", &key).unwrap();
                let value = reader
                    .fresh
                    .get(&path)
                    .map_or(value, |fresh| fresh.to_vec());
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
