//! Incremental Merkle-Patricia roots over the hashed tables.
//!
//! The trie tables keep, by nibble path, the branch nodes the [`HashBuilder`] asks to store
//! ([`BranchNodeCompact`]: which children exist, which are stored branches, and the hashes of the
//! branch children), plus the hashes of the children that are single leaves. A stored node at
//! path `p` depends only on the keys under `p`, so after a block it is still right unless a
//! changed key lies under `p`.
//!
//! To update a root, the walk visits the stored nodes that have a changed key below them, depth
//! first and in key order, and feeds the hash builder: for a child with no change below, its
//! stored hash (one element standing for the whole subtree, or for the leaf); for a changed child
//! that is a stored branch, that branch's children, recursively; for any other child (a changed
//! leaf, a branch of leaves, or new keys), the leaves read from the hashed table. The hash
//! builder then rebuilds exactly the nodes on the changed paths and reports them; the visited
//! nodes it no longer reports are gone from the trie and are deleted. This is reth's design
//! (`TrieWalker` + `TrieNodeIter`), written as a recursion over the stored nodes, with leaf
//! hashes added: without them every unchanged leaf beside a changed one (about ten per changed
//! account in a 1M-account trie) is read and hashed again.
//!
//! Deep nodes that only sit above leaves are not stored at all ([`is_stored`]): they are rebuilt
//! from the leaves under them, which lie side by side in the hashed table, and hashed apart from
//! the hash builder, which is fed their hash ([`bottom`]).

use crate::{
    StorageError,
    codec::{self, AccountRecord, StoredNode},
    tables,
};
use alloy_primitives::{B256, U256};
use alloy_trie::{
    BranchNodeCompact, HashBuilder, Nibbles, TrieMask,
    proof::{ProofNodes, ProofRetainer},
};
use libmdbx::{Cursor, DatabaseKind, RW, Table, Transaction, TransactionKind};
use std::borrow::Cow;

/// What the leaves of a trie are, and so how a hashed-table value becomes a leaf value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Leaves {
    /// Hashed account records; the leaf is the RLP of the trie account.
    Accounts,
    /// Storage values; the leaf is the RLP of the value.
    Storage,
}

impl Leaves {
    fn table(self) -> &'static str {
        match self {
            Leaves::Accounts => tables::HASHED_ACCOUNTS,
            Leaves::Storage => tables::HASHED_STORAGE,
        }
    }

    fn nodes_table(self) -> &'static str {
        match self {
            Leaves::Accounts => tables::ACCOUNT_TRIE,
            Leaves::Storage => tables::STORAGE_TRIE,
        }
    }

    fn leaf_value(self, stored: &[u8], out: &mut Vec<u8>) -> Result<(), StorageError> {
        match self {
            Leaves::Accounts => AccountRecord::decode(self.table(), stored)?.trie_rlp(out),
            Leaves::Storage => {
                let value = codec::decode_slot_value(self.table(), stored)?;
                out.clear();
                alloy_rlp::Encodable::encode(&value, out);
            }
        }
        Ok(())
    }
}

mod bottom;
mod bottom_cache;
mod deferred;
mod fed;
mod leaves;
mod parallel;
mod rehash;
use bottom::Bottom;
use fed::Fed;
use rehash::Rehashed;
mod scratch;
mod sorted;
mod writes;
pub(crate) use bottom_cache::{BlockTops, BottomCache};
pub(crate) use deferred::{DeferredNodes, Fresh, Pending, View, repair as repair_deferred};
pub(crate) use parallel::{AccountTables, AccountsUpdate, Records, Walked, update_accounts};
pub(crate) use scratch::state_root_from_scratch;
pub(crate) use sorted::{NodeEntry, SortedTrie};
use writes::NodeWrites;

/// One trie to update: its leaves, its key prefix in both the hashed table and the node table
/// (empty for the account trie, the hashed address for a storage trie), and the keys (hashed,
/// below the prefix) that changed since the stored nodes were written, sorted.
pub(crate) struct TrieInput<'a> {
    pub leaves: Leaves,
    pub prefix: &'a [u8],
    pub changed: &'a [B256],
    /// The new account records of `changed` (`None`: deleted), sorted by key, when the hashed
    /// table read is a snapshot from before they were written ([`update_accounts`]): the walk
    /// reads them in place of the table's. Empty when the table already holds them.
    pub overlay: &'a [(B256, Option<AccountRecord>)],
    /// The new leaf of each key of `changed` that was in the trie before and still is, indexed
    /// as `changed` (`None` for a key added or deleted); empty when the caller does not know.
    /// Such a key, alone in a child its branch stored as a single leaf, is that leaf: the walk
    /// feeds it without reading the hashed table ([`Walk::feed_in_place`]).
    pub in_place: &'a [Option<InPlace>],
}

/// A changed key's new leaf, for a key whose value alone changed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InPlace {
    Slot(U256),
    Account(AccountRecord),
}

impl InPlace {
    /// The leaf's value as the trie holds it: what [`Leaves::leaf_value`] makes of the record.
    fn leaf_value(&self, out: &mut Vec<u8>) {
        match self {
            InPlace::Slot(value) => {
                out.clear();
                alloy_rlp::Encodable::encode(value, out);
            }
            InPlace::Account(record) => record.trie_rlp(out),
        }
    }
}

/// The cursors a trie update reads through: over the hashed table of the leaves, and over the
/// node table, with the account trie's branches whose writes wait in memory ([`deferred`]).
pub(crate) struct TrieCursors<'t, K: TransactionKind> {
    pub hashed: Cursor<'t, K>,
    pub nodes: Cursor<'t, K>,
    pub fresh: Fresh<'t>,
}

/// The new root and the number of node writes and deletions.
pub(crate) struct TrieUpdate {
    pub root: B256,
    pub nodes_written: u64,
}

/// Below this depth every node the hash builder reports is stored.
#[cfg(not(test))]
const SPARSE_DEPTH: usize = 5;
/// The tests' tries hold hundreds of keys, not millions: at depth 1 both kinds of level, stored
/// whole and left out, occur in them.
#[cfg(test)]
const SPARSE_DEPTH: usize = 1;

/// Whether the branch the hash builder reports at `path` goes into the node table.
///
/// A node at depth `SPARSE_DEPTH` or deeper with no stored node among its children is left out:
/// the walk finds no node there and feeds the leaves under it instead, a dozen neighbours in the
/// hashed table, on the page the changed leaf's own update dirties anyway. Such nodes are the
/// trie's bottom level once a trie holds millions of keys (16^5 = 1,048,576 paths at depth 5),
/// so many that a block's changed keys each dirty a node page of their own: at 10,000,000
/// accounts about 18,000 of a block's pages. Shallower levels have at most 65,536 nodes, whose
/// pages a block's changes share, and they keep their nodes and the leaf hashes stored in them.
///
/// Leaving a node out never hides a stored node below it (its children are not stored, so
/// neither is anything under them), so the walk's rule holds: the first stored node under a path
/// is the branch at that path or the one an extension from it leads to.
pub(crate) fn is_stored(path: &Nibbles, branch: &BranchNodeCompact) -> bool {
    path.len() < SPARSE_DEPTH || !branch.tree_mask.is_empty()
}

/// Updates the stored nodes of one trie after its hashed table changed at `input.changed`, and
/// returns its root.
pub(crate) fn update<E: DatabaseKind>(
    txn: &Transaction<'_, RW, E>,
    nodes_table: &Table<'_>,
    cursors: &mut TrieCursors<'_, RW>,
    input: &TrieInput<'_>,
) -> Result<TrieUpdate, StorageError> {
    assert!(input.changed.is_sorted(), "changed keys must be sorted");
    let mut walk = Walk::new(cursors, input, HashBuilder::default().with_updates(true));
    walk.descend(Nibbles::default())?;
    walk.count_in_place();
    let root = walk.hb.root();
    let writes = walk.node_writes(|path| path);
    let pending = match cursors.fresh {
        Fresh::Pending(pending) => Some(pending),
        _ => None,
    };
    Ok(TrieUpdate {
        root,
        nodes_written: writes.apply(txn, nodes_table, pending)?,
    })
}

/// The root of one trie and the nodes on the paths to `targets` (hashed keys, sorted): each
/// target's Merkle proof is the nodes whose paths are prefixes of it. The walk is the update's,
/// with the targets as the changed keys: it rebuilds the nodes on their paths from the leaves
/// and the stored hashes beside them, and writes nothing.
pub(crate) fn proof<K: TransactionKind>(
    cursors: &mut TrieCursors<'_, K>,
    leaves: Leaves,
    prefix: &[u8],
    targets: &[B256],
) -> Result<(B256, ProofNodes), StorageError> {
    assert!(targets.is_sorted(), "proof targets must be sorted");
    let input = TrieInput {
        leaves,
        prefix,
        changed: targets,
        overlay: &[],
        in_place: &[],
    };
    let retainer = ProofRetainer::new(targets.iter().map(Nibbles::unpack).collect());
    let mut walk = Walk::new(
        cursors,
        &input,
        HashBuilder::default().with_proof_retainer(retainer),
    );
    walk.descend(Nibbles::default())?;
    let root = walk.hb.root();
    Ok((root, walk.hb.take_proof_nodes()))
}

/// A hashed-table entry read without allocating.
type HashedEntry = (
    codec::Buf<{ codec::HASHED_KEY_LEN_MAX }>,
    codec::Buf<{ codec::HASHED_VALUE_LEN_MAX }>,
);

/// Where the hashed cursor stopped: on `next`, the first entry after key `to`.
struct Scanned {
    to: B256,
    next: Option<HashedEntry>,
}

/// How many entries a scan steps over before it seeks instead: a few leaves, or a branch of
/// leaves whose hash the walk took from its parent.
const STEPS_BEFORE_SEEK: usize = 4;

struct Walk<'a, 'c, 't, K: TransactionKind> {
    cursors: &'a mut TrieCursors<'t, K>,
    /// Where the last leaf scan left the hashed cursor (`None` after the cursor moved otherwise).
    scanned: Option<Scanned>,
    input: &'a TrieInput<'c>,
    hb: HashBuilder,
    fed: Fed,
    /// Paths of the stored nodes whose children were fed to the hash builder.
    visited: Vec<Nibbles>,
    /// Leading nibbles the hash builder does not see: 1 when it builds the subtree under one
    /// child of the root as a trie of its own ([`parallel`]), else 0.
    strip: usize,
    /// The nibbles at index `strip` of the paths fed to the hash builder: with `strip` 1, two or
    /// more mean the subtree's top node is a branch at the stripped nibble.
    fed_under: TrieMask,
    /// The results of the subtrees under the root's children that other walks built
    /// ([`parallel`]), fed in place of descending into them.
    subtrees: [Option<parallel::Top>; 16],
    /// Where the leaves of a subtree at or past [`SPARSE_DEPTH`] are gathered to be hashed
    /// whole ([`bottom`]); `None` in a walk that keeps proof nodes, which needs every node.
    bottom: Option<Bottom>,
    /// Whether the leaves scanned go to `bottom` rather than to the hash builder.
    gathering: bool,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Leaves fed by [`Walk::feed_in_place`], for the metric.
    fed_in_place: u64,
    /// The stored branches rehashed without the hash builder ([`rehash`]); `None` in a walk
    /// that keeps proof nodes.
    rehashed: Option<Rehashed>,
}

impl<'a, 'c, 't, K: TransactionKind> Walk<'a, 'c, 't, K> {
    fn new(cursors: &'a mut TrieCursors<'t, K>, input: &'a TrieInput<'c>, hb: HashBuilder) -> Self {
        assert!(
            input.in_place.is_empty() || input.in_place.len() == input.changed.len(),
            "in-place leaves are indexed as the changed keys"
        );
        let rehashed = (hb.updated_branch_nodes.is_some()).then(|| Rehashed::new(input.in_place));
        Self {
            fed_in_place: 0,
            rehashed,
            cursors,
            scanned: None,
            input,
            fed: Fed::default(),
            visited: Vec::new(),
            strip: 0,
            fed_under: TrieMask::default(),
            subtrees: Default::default(),
            bottom: hb.updated_branch_nodes.is_some().then(Bottom::default),
            gathering: false,
            hb,
            key: Vec::with_capacity(input.prefix.len() + 64),
            value: Vec::with_capacity(128),
        }
    }

    /// Takes the leaf at `key` a scan found, its value in `self.value`: gathers it when the scan
    /// is of a subtree to hash whole, else feeds it.
    fn take_leaf(&mut self, key: B256) {
        match &mut self.bottom {
            Some(bottom) if self.gathering => bottom.push(key, &self.value),
            _ => self.feed_leaf(key),
        }
    }

    /// Feeds the subtree at `path`, under which nothing is stored: as its top branch's hash
    /// when [`Bottom`] may hash it, else leaf by leaf. Not the hash builder's own root (a
    /// subtree walk's `path` itself), which it must build.
    fn emit_subtree(&mut self, path: Nibbles) -> Result<(), StorageError> {
        let (lo, hi) = key_range(&path);
        let hashable = path.len() >= SPARSE_DEPTH && path.len() > self.strip;
        match &mut self.bottom {
            Some(bottom) if hashable => bottom.clear(),
            _ => return self.emit_leaves(lo, hi),
        }
        self.gathering = true;
        let scanned = self.emit_leaves(lo, hi);
        self.gathering = false;
        scanned?;
        let mut bottom = self.bottom.take().expect("matched above");
        match bottom.top_branch(path.len()) {
            Some(top) => self.feed_hash(path, top.hash, top.marked, false),
            None => {
                for i in 0..bottom.len() {
                    let (key, value) = bottom.leaf(i);
                    self.value.clear();
                    self.value.extend_from_slice(value);
                    self.feed_leaf(key);
                }
            }
        }
        self.bottom = Some(bottom);
        Ok(())
    }

    /// Feeds the leaf at `key`, its value in `self.value`.
    fn feed_leaf(&mut self, key: B256) {
        let path = Nibbles::unpack(key);
        self.fed_under.set_bit(path.get_unchecked(self.strip));
        self.hb.add_leaf(path.slice(self.strip..), &self.value);
        self.fed.leaves.push(key, &self.value);
    }

    fn count_in_place(&self) {
        metrics::counter!("kestrel_storage_trie_leaves_in_place_total")
            .increment(self.fed_in_place);
        let rehashed = self.rehashed.as_ref().map_or(0, |r| r.nodes.len());
        metrics::counter!("kestrel_storage_trie_nodes_rehashed_total").increment(rehashed as u64);
        let hits = self.rehashed.as_ref().map_or(0, |r| r.cache_hits);
        metrics::counter!("kestrel_storage_trie_bottom_cache_hits_total").increment(hits);
    }

    /// Feeds `hash` for the subtree at `path`; `leaf` if it is the hash of a leaf node.
    fn feed_hash(&mut self, path: Nibbles, hash: B256, stored_below: bool, leaf: bool) {
        self.fed_under.set_bit(path.get_unchecked(self.strip));
        self.hb
            .add_branch(path.slice(self.strip..), hash, stored_below);
        self.fed.hashes.push(path);
        if leaf {
            self.fed.leaf_hashes.push(path);
        }
    }

    /// The node-table changes for the nodes the hash builder rebuilt, their paths mapped by
    /// `full` from the hash builder's (stripped) to the trie's.
    fn node_writes(&mut self, full: impl Fn(Nibbles) -> Nibbles) -> NodeWrites {
        let (_, updates) = std::mem::take(&mut self.hb).split();
        let prefix = self.input.prefix;
        let mut updates: Vec<(Nibbles, BranchNodeCompact)> = updates
            .into_iter()
            .map(|(path, branch)| (full(path), branch))
            .filter(|(path, branch)| is_stored(path, branch))
            .collect();
        updates.sort_unstable_by_key(|(path, _)| *path);
        let node_key = |path: &Nibbles| {
            let mut key = Vec::with_capacity(prefix.len() + 64);
            codec::node_key(prefix, path, &mut key);
            key
        };
        let deleted: Vec<Vec<u8>> = self
            .visited
            .iter()
            .filter(|path| {
                updates
                    .binary_search_by(|(updated, _)| updated.cmp(path))
                    .is_err()
            })
            .map(node_key)
            .collect();
        let mut rlp = Vec::with_capacity(128);
        // The walk visits in key order.
        debug_assert!(self.visited.is_sorted());
        let visited = &self.visited;
        let written = updates
            .into_iter()
            .map(|(path, mut branch)| {
                // The top of a subtree built as a trie of its own is that trie's root.
                branch.root_hash = branch.root_hash.filter(|_| path.is_empty());
                let replaces = visited.binary_search(&path).is_ok();
                (
                    path,
                    self.fed.stored_node(&path, branch, &mut rlp),
                    replaces,
                )
            })
            // A rehashed branch is one the walk read.
            .chain(
                (self.rehashed.iter_mut())
                    .flat_map(|r| r.nodes.drain(..).map(|(p, n)| (p, n, true))),
            )
            .map(|(path, node, replaces)| {
                let mut value = Vec::with_capacity(8 + 17 * 32);
                codec::encode_node(&node, &mut value);
                ((node_key(&path), value), replaces)
            })
            .collect();
        NodeWrites::new(deleted, written)
    }

    /// Feeds every key under `path` to the hash builder, given that a stored branch may lie at or
    /// below `path` (the root, or a child whose tree-mask bit is set).
    fn descend(&mut self, path: Nibbles) -> Result<(), StorageError> {
        let (lo, hi) = key_range(&path);
        let Some((node_path, node)) = self.first_node_under(&path)? else {
            return self.emit_subtree(path);
        };
        if node_path.len() == path.len() {
            if let Some(hash) = self.rehash(node_path, &node)? {
                // A stored branch: its parent's tree-mask bit stays set.
                self.feed_hash(node_path, hash, true, false);
                return Ok(());
            }
            return self.visit(node_path, node);
        }
        // An extension led from `path` to the branch at `node_path`: every key under `path` was
        // under the branch, so only keys added by this block can lie beside it.
        let (node_lo, node_hi) = key_range(&node_path);
        if node_lo > lo {
            let before = B256::from(U256::from_be_bytes(node_lo.0) - U256::from(1));
            if self.any_changed(&lo, &before) {
                self.emit_leaves(lo, before)?;
            }
        }
        self.visit(node_path, node)?;
        if node_hi < hi {
            let after = B256::from(U256::from_be_bytes(node_hi.0) + U256::from(1));
            if self.any_changed(&after, &hi) {
                self.emit_leaves(after, hi)?;
            }
        }
        Ok(())
    }

    /// Feeds the children of the stored branch at `path`.
    fn visit(&mut self, path: Nibbles, node: StoredNode) -> Result<(), StorageError> {
        self.visited.push(path);
        let branch = &node.branch;
        let changed = self.changed_children(&path);
        // A stored leaf hash holds only while its leaf stays a child of this branch, and feeding
        // it as a hash must not change what the hash builder stores. An unchanged branch child
        // with a hash guarantees both: with the leaf, two children survive, so the branch stays,
        // and its hash mask is not empty, so it is stored as it would be without leaf hashes.
        let leaf_hashes_hold = *branch.hash_mask & !*changed != 0;
        for nibble in 0..16u8 {
            let mut child = path;
            child.push_unchecked(nibble);
            let changed = changed.is_bit_set(nibble);
            if !branch.state_mask.is_bit_set(nibble) {
                if changed {
                    self.emit_subtree(child)?;
                }
            } else if !changed && branch.hash_mask.is_bit_set(nibble) {
                // The hash is of a branch exactly at `child` (the hash builder clears the bit of
                // an extension child), so it stays valid wherever the parent ends up.
                let stored_below = branch.tree_mask.is_bit_set(nibble);
                self.feed_hash(child, branch.hash_for_nibble(nibble), stored_below, false);
            } else if !changed && leaf_hashes_hold && node.leaf_mask.is_bit_set(nibble) {
                self.feed_hash(child, node.leaf_hash(nibble), false, true);
            } else if changed && node.leaf_mask.is_bit_set(nibble) && self.feed_in_place(&child) {
                // The single leaf, its new value fed without a read.
            } else if branch.tree_mask.is_bit_set(nibble) {
                match self.subtrees[usize::from(nibble)].take() {
                    // Built by another walk: feeding its top branch's hash is feeding its leaves.
                    Some(parallel::Top::Branch { hash, stored }) => {
                        self.feed_hash(child, hash, stored, false)
                    }
                    Some(parallel::Top::Empty) => {}
                    None => self.descend(child)?,
                }
            } else {
                self.emit_subtree(child)?;
            }
        }
        Ok(())
    }

    /// Feeds the leaf under `child`, a child its branch stored as a single leaf, when the only
    /// changed key under it was in the trie before and still is: the child then holds that key
    /// alone (the one key it held is the only key under it that was in the trie), with its new
    /// value. The hash builder gets what scanning the child would give it, without the scan's
    /// seek in the hashed table. Returns whether it did.
    fn feed_in_place(&mut self, child: &Nibbles) -> bool {
        let in_place = self.input.in_place;
        if in_place.is_empty() {
            return false;
        }
        let (lo, hi) = key_range(child);
        let changed = self.input.changed;
        let first = changed.partition_point(|key| *key < lo);
        let alone = changed.get(first + 1).is_none_or(|next| *next > hi);
        let leaf = match in_place.get(first) {
            Some(Some(leaf)) if alone => *leaf,
            _ => return false,
        };
        debug_assert!(
            (lo..=hi).contains(&changed[first]),
            "a changed key under the child"
        );
        leaf.leaf_value(&mut self.value);
        self.feed_leaf(changed[first]);
        self.fed_in_place += 1;
        true
    }

    /// The stored node with the smallest path starting with `path`: the branch at `path`, or the
    /// branch an extension at `path` leads to.
    fn first_node_under(
        &mut self,
        path: &Nibbles,
    ) -> Result<Option<(Nibbles, StoredNode)>, StorageError> {
        let table = self.input.leaves.nodes_table();
        codec::node_key(self.input.prefix, path, &mut self.key);
        match self
            .cursors
            .nodes
            .set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(&self.key)?
        {
            Some((key, value)) if key.starts_with(&self.key) => {
                let node_path = codec::node_path(table, &key[self.input.prefix.len()..])?;
                let node = match self.cursors.fresh.get(&node_path) {
                    Some(fresh) => codec::decode_node(table, &fresh)?,
                    None => codec::decode_node(table, &value)?,
                };
                Ok(Some((node_path, node)))
            }
            _ => Ok(None),
        }
    }

    /// Feeds the leaves with keys in `lo..=hi` from the hashed table, and from the overlay in
    /// place of the table's where it has them.
    fn emit_leaves(&mut self, lo: B256, hi: B256) -> Result<(), StorageError> {
        let overlay = self.input.overlay;
        let mut new = overlay.partition_point(|(key, _)| *key < lo);
        let mut entry = self.first_entry_from(&lo)?;
        loop {
            let stored = match &entry {
                Some((key, _)) => self.hashed_key(key)?.filter(|key| *key <= hi),
                None => None,
            };
            let next_new = overlay.get(new).filter(|(key, _)| *key <= hi);
            let stored_first = match (stored, next_new) {
                (None, None) => break,
                (Some(key), next_new) => next_new.is_none_or(|(new_key, _)| key < *new_key),
                (None, Some(_)) => false,
            };
            if stored_first {
                let key = stored.expect("a stored key");
                let (_, value) = entry.as_ref().expect("a stored key has an entry");
                self.input.leaves.leaf_value(value, &mut self.value)?;
                self.take_leaf(key);
                entry = self.cursors.hashed.next()?;
            } else {
                let (key, record) = next_new.expect("an overlay key");
                if stored == Some(*key) {
                    entry = self.cursors.hashed.next()?;
                }
                new += 1;
                if let Some(record) = record {
                    record.trie_rlp(&mut self.value);
                    self.take_leaf(*key);
                }
            }
        }
        self.scanned = Some(Scanned {
            to: hi,
            next: entry,
        });
        Ok(())
    }

    /// The first hashed-table entry at or after `prefix ‖ lo`. The walk reads leaves in key
    /// order, and the leaf children of a branch mostly lie a few entries apart, so stepping on
    /// from where the last scan stopped usually beats a seek from the top of the B-tree.
    fn first_entry_from(&mut self, lo: &B256) -> Result<Option<HashedEntry>, StorageError> {
        if let Some(Scanned { to, next }) = self.scanned.take()
            && to < *lo
        {
            // `next` is the first entry after `to`.
            let mut entry = next;
            for _ in 0..=STEPS_BEFORE_SEEK {
                match &entry {
                    Some((key, _)) => match self.hashed_key(key)? {
                        Some(hashed_key) if hashed_key < *lo => {}
                        _ => return Ok(entry),
                    },
                    None => return Ok(None),
                }
                entry = self.cursors.hashed.next()?;
            }
        }
        self.key.clear();
        self.key.extend_from_slice(self.input.prefix);
        self.key.extend_from_slice(lo.as_slice());
        Ok(self.cursors.hashed.set_range(&self.key)?)
    }

    /// The key below this trie's prefix, or `None` if `key` lies past this trie.
    fn hashed_key(&self, key: &[u8]) -> Result<Option<B256>, StorageError> {
        let prefix = self.input.prefix;
        if !key.starts_with(prefix) {
            return Ok(None);
        }
        match B256::try_from(&key[prefix.len()..]) {
            Ok(hashed_key) => Ok(Some(hashed_key)),
            Err(_) => Err(StorageError::Corrupt {
                table: self.input.leaves.table(),
                reason: format!("key of {} bytes", key.len()),
            }),
        }
    }

    /// The children of `path` with a changed key below them: the nibble after `path` of each
    /// changed key under it (one run of the sorted keys).
    fn changed_children(&self, path: &Nibbles) -> TrieMask {
        let (lo, hi) = key_range(path);
        let mut changed = TrieMask::default();
        for key in self.changed_in(&lo, &hi) {
            changed.set_bit(bottom::nibble(key, path.len()));
        }
        changed
    }

    fn any_changed(&self, lo: &B256, hi: &B256) -> bool {
        !self.changed_in(lo, hi).is_empty()
    }

    /// The changed keys in `lo..=hi`.
    fn changed_in(&self, lo: &B256, hi: &B256) -> &'a [B256] {
        let changed = self.input.changed;
        let first = changed.partition_point(|key| key < lo);
        let changed = &changed[first..];
        &changed[..changed.partition_point(|key| key <= hi)]
    }
}

/// The smallest and the largest 32-byte key starting with `path`.
pub(super) fn key_range(path: &Nibbles) -> (B256, B256) {
    let mut lo = [0u8; 32];
    let mut hi = [0xffu8; 32];
    for (i, nibble) in path.iter().enumerate() {
        let byte = i / 2;
        if i % 2 == 0 {
            lo[byte] = nibble << 4;
            hi[byte] = (nibble << 4) | 0x0f;
        } else {
            lo[byte] |= nibble;
            hi[byte] = (hi[byte] & 0xf0) | nibble;
        }
    }
    (B256::from(lo), B256::from(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_bounds_the_prefix() {
        let (lo, hi) = key_range(&Nibbles::default());
        assert_eq!((lo, hi), (B256::ZERO, B256::repeat_byte(0xff)));
        let (lo, hi) = key_range(&Nibbles::from_nibbles([0xa, 0xb, 0xc]));
        assert_eq!(&lo[..3], &[0xab, 0xc0, 0]);
        assert_eq!(&hi[..3], &[0xab, 0xcf, 0xff]);
        assert!(lo[3..].iter().all(|b| *b == 0) && hi[3..].iter().all(|b| *b == 0xff));
    }
}
