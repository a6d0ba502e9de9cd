//! Stored nodes rehashed in place, without the hash builder.
//!
//! When every changed key under a stored branch was in the trie before and stays
//! ([`TrieInput::in_place`](super::TrieInput::in_place)), the trie under it keeps its shape: the
//! same keys, so the same nodes at the same paths with the same masks; only hashes change. The
//! branch's new hash is then its children's references hashed together, the unchanged ones
//! taken from the node as stored and the changed ones computed the same way below. Fed to the
//! hash builder, every unchanged child of every branch on a changed path cost a trip through its
//! stack (a quarter of a walk), and each rebuilt node a search of what was fed; here a branch
//! costs its own RLP and one keccak. The walk feeds the hash builder the branch's new hash, as
//! for an unchanged stored child, and writes the rehashed nodes itself.
//!
//! A child whose reference the node does not keep (an extension, or an inlined node) is hashed
//! from its leaves, if nothing under it is stored. A branch with any other child the node keeps
//! nothing of is left to the hash builder, and so are the branches above it; its children
//! rehashed on the way are kept (`memo`), and the walk feeds their hashes when it visits it.

use super::{
    Walk,
    bottom_cache::{BottomCache, CachedTop},
    key_range,
};
use crate::{StorageError, codec::StoredNode};
use alloy_primitives::{B256, map::HashMap};
use alloy_trie::{
    BranchNodeCompact, Nibbles,
    nodes::{BranchNodeRef, LeafNodeRef, RlpNode},
};
use libmdbx::TransactionKind;
use std::sync::Arc;

/// A walk's rehashed nodes and the buffers their hashing reuses.
#[derive(Default)]
pub(super) struct Rehashed {
    /// The nodes rehashed, by path, to be written.
    pub nodes: Vec<(Nibbles, StoredNode)>,
    /// Each stored branch tried: its new hash, or `None` if left to the hash builder.
    memo: HashMap<Nibbles, Option<B256>>,
    /// Changed keys that are not in place, counted over `changed`: `moved[i]` of the first `i`.
    moved: Vec<u32>,
    stack: Vec<RlpNode>,
    rlp: Vec<u8>,
    /// The bottom subtrees' top branches as of the last commit, in a walk that reads it.
    cache: Option<Arc<BottomCache>>,
    /// The top branches this walk built, for the cache once the block commits.
    pub tops: Vec<(Nibbles, CachedTop)>,
    /// Top branches rehashed from the cache, for the metric.
    pub cache_hits: u64,
}

impl Rehashed {
    /// For a walk whose changed keys' in-place leaves are `in_place` (indexed as the keys).
    pub fn new(in_place: &[Option<super::InPlace>]) -> Self {
        let mut moved = Vec::with_capacity(in_place.len() + 1);
        moved.push(0);
        let mut count = 0;
        for leaf in in_place {
            count += u32::from(leaf.is_none());
            moved.push(count);
        }
        Self {
            moved,
            ..Self::default()
        }
    }
}

impl<K: TransactionKind> Walk<'_, '_, '_, K> {
    /// Has this walk, which reads the last commit, rehash bottom subtrees from `cache`'s top
    /// branches and keep those it builds ([`bottom_cache`](super::bottom_cache)).
    pub(super) fn use_bottom_cache(&mut self, cache: Arc<BottomCache>) {
        if let Some(rehashed) = &mut self.rehashed {
            rehashed.cache = Some(cache);
        }
    }

    /// The new hash of the stored branch `node` at `path`, with it and the stored branches under
    /// it rehashed (recorded to be written), if every changed key under `path` is in place and
    /// every child's reference is known; else `None`, and the hash builder must build it.
    pub(super) fn rehash(
        &mut self,
        path: Nibbles,
        node: &StoredNode,
    ) -> Result<Option<B256>, StorageError> {
        let Some(rehashed) = &self.rehashed else {
            return Ok(None);
        };
        if let Some(known) = rehashed.memo.get(&path) {
            return Ok(*known);
        }
        // The top of the walk is the hash builder's own root, which it must build.
        if path.len() <= self.strip || rehashed.moved.len() != self.input.changed.len() + 1 {
            return Ok(None);
        }
        let (lo, hi) = key_range(&path);
        let changed = self.input.changed;
        let first = changed.partition_point(|key| *key < lo);
        let last = first + changed[first..].partition_point(|key| *key <= hi);
        if rehashed.moved[last] != rehashed.moved[first] {
            return Ok(None);
        }
        let base = rehashed.stack.len();
        let hash = self.rehash_branch(path, node)?;
        let rehashed = self.rehashed.as_mut().expect("checked above");
        // Left part way, the children's references pushed so far are dropped.
        rehashed.stack.truncate(base);
        rehashed.memo.insert(path, hash);
        Ok(hash)
    }

    /// [`Walk::rehash`] once the changes under `path` are known to be in place.
    fn rehash_branch(
        &mut self,
        path: Nibbles,
        node: &StoredNode,
    ) -> Result<Option<B256>, StorageError> {
        let branch = &node.branch;
        let changed = self.changed_children(&path);
        let base = self
            .rehashed
            .as_ref()
            .expect("rehash checked it")
            .stack
            .len();
        let (mut hashes, mut leaf_hashes) = (Vec::new(), Vec::new());
        for nibble in branch.state_mask.iter() {
            let mut child = path;
            child.push_unchecked(nibble);
            let changed = changed.is_bit_set(nibble);
            let reference = if branch.hash_mask.is_bit_set(nibble) {
                let hash = match changed {
                    false => Some(branch.hash_for_nibble(nibble)),
                    true => self.rehash_child(child, branch.tree_mask.is_bit_set(nibble))?,
                };
                let Some(hash) = hash else { return Ok(None) };
                hashes.push(hash);
                RlpNode::word_rlp(&hash)
            } else if node.leaf_mask.is_bit_set(nibble) {
                let hash = match changed {
                    false => Some(node.leaf_hash(nibble)),
                    true => self.in_place_leaf_hash(&child),
                };
                let Some(hash) = hash else { return Ok(None) };
                leaf_hashes.push(hash);
                RlpNode::word_rlp(&hash)
            } else {
                match self.unkept_ref(child, branch.tree_mask.is_bit_set(nibble))? {
                    Some(reference) => reference,
                    None => return Ok(None),
                }
            };
            let rehashed = self.rehashed.as_mut().expect("rehash checked it");
            rehashed.stack.push(reference);
        }
        let rehashed = self.rehashed.as_mut().expect("rehash checked it");
        rehashed.rlp.clear();
        let node_rlp =
            BranchNodeRef::new(&rehashed.stack[base..], branch.state_mask).rlp(&mut rehashed.rlp);
        rehashed.stack.truncate(base);
        let Some(hash) = node_rlp.as_hash() else {
            return Ok(None);
        };
        let stored = StoredNode {
            branch: BranchNodeCompact::new(
                branch.state_mask,
                branch.tree_mask,
                branch.hash_mask,
                hashes,
                None,
            ),
            leaf_mask: node.leaf_mask,
            leaf_hashes,
        };
        debug_assert!(
            super::is_stored(&path, &stored.branch),
            "a stored branch stays stored"
        );
        rehashed.nodes.push((path, stored));
        Ok(Some(hash))
    }

    /// The reference to the child at `child` of which its parent keeps nothing, from its leaves,
    /// if nothing under it is stored (`marked`, the parent's tree-mask bit, unset) and it is
    /// still one its parent keeps nothing of ([`unkept_ref`](super::bottom::Bottom::unkept_ref)).
    fn unkept_ref(
        &mut self,
        child: Nibbles,
        marked: bool,
    ) -> Result<Option<RlpNode>, StorageError> {
        if marked {
            return Ok(None);
        }
        self.gather_leaves(&child)?;
        let bottom = self.bottom.as_mut().expect("only an update walk rehashes");
        Ok(bottom.unkept_ref(child.len()))
    }

    /// Reads the leaves under `path` into `bottom`.
    pub(super) fn gather_leaves(&mut self, path: &Nibbles) -> Result<(), StorageError> {
        let (lo, hi) = key_range(path);
        self.bottom
            .as_mut()
            .expect("only an update walk rehashes")
            .clear();
        self.gathering = true;
        let scanned = self.emit_leaves(lo, hi);
        self.gathering = false;
        scanned
    }

    /// The new hash of the changed branch exactly at `child` (its parent's hash-mask bit):
    /// rehashed if it is stored, else hashed from its leaves. `marked`: the parent's tree-mask
    /// bit, which the subtree must still earn.
    fn rehash_child(&mut self, child: Nibbles, marked: bool) -> Result<Option<B256>, StorageError> {
        if marked && let Some((node_path, node)) = self.first_node_under(&child)? {
            if node_path != child {
                return Ok(None);
            }
            return self.rehash(child, &node);
        }
        if let Some(hash) = self.rehash_cached(&child, marked) {
            return Ok(Some(hash));
        }
        self.gather_leaves(&child)?;
        let bottom = self.bottom.as_mut().expect("only an update walk rehashes");
        let rehashed = self.rehashed.as_mut().expect("rehash checked it");
        let top = match rehashed.cache {
            Some(_) => bottom.top_branch_recorded(child.len()),
            None => bottom.top_branch(child.len()),
        };
        let Some(top) = top.filter(|top| top.marked == marked) else {
            return Ok(None);
        };
        rehashed.tops.append(&mut bottom.recorded);
        Ok(Some(top.hash))
    }

    /// The new hash of the subtree at `child` from its top branch as the cache holds it, if it
    /// does (with the parent's tree-mask bit `marked` it had) and each change under it is under
    /// a single leaf or a branch the cache also holds, recursively; the new branches are kept
    /// for the cache.
    fn rehash_cached(&mut self, child: &Nibbles, marked: bool) -> Option<B256> {
        let cache = self.rehashed.as_ref()?.cache.clone()?;
        let top = cache.get(child, CachedTop::clone)?;
        if top.marked != marked {
            return None;
        }
        // All or nothing: a key under a top this block kept must find every kept branch on its
        // path rebuilt (`BottomCache::commit` drops none over it).
        let kept = self.rehashed.as_ref().expect("checked above").tops.len();
        let hash = self.branch_hash_from(&cache, child, top);
        let rehashed = self.rehashed.as_mut().expect("checked above");
        match hash {
            Some(_) => rehashed.cache_hits += 1,
            None => rehashed.tops.truncate(kept),
        }
        hash
    }

    /// The new hash of the branch at `path` that the cache holds, from its children's: the
    /// changed ones rehashed (a leaf from its new value, a branch from the cache), the others
    /// as kept.
    fn cached_branch_hash(&mut self, cache: &BottomCache, path: &Nibbles) -> Option<B256> {
        let top = cache.get(path, CachedTop::clone)?;
        self.branch_hash_from(cache, path, top)
    }

    /// [`Walk::cached_branch_hash`] of `top`, the cache's branch at `path`, already looked up.
    fn branch_hash_from(
        &mut self,
        cache: &BottomCache,
        path: &Nibbles,
        mut top: CachedTop,
    ) -> Option<B256> {
        let changed = self.changed_children(path);
        for (i, nibble) in top.state_mask.iter().enumerate() {
            if !changed.is_bit_set(nibble) {
                continue;
            }
            let mut below = *path;
            below.push_unchecked(nibble);
            top.hashes[i] = match top.leaf_mask.is_bit_set(nibble) {
                true => self.in_place_leaf_hash(&below)?,
                false => self.cached_branch_hash(cache, &below)?,
            };
        }
        let rehashed = self.rehashed.as_mut().expect("a cached walk rehashes");
        let base = rehashed.stack.len();
        rehashed
            .stack
            .extend(top.hashes.iter().map(RlpNode::word_rlp));
        rehashed.rlp.clear();
        let hash = BranchNodeRef::new(&rehashed.stack[base..], top.state_mask)
            .rlp(&mut rehashed.rlp)
            .as_hash();
        rehashed.stack.truncate(base);
        rehashed.tops.push((*path, top));
        hash
    }

    /// The new hash of the leaf at `child`, a single-leaf child whose key changed in place; `None`
    /// if its node is now inlined.
    fn in_place_leaf_hash(&mut self, child: &Nibbles) -> Option<B256> {
        let (lo, hi) = key_range(child);
        let changed = self.input.changed;
        let first = changed.partition_point(|key| *key < lo);
        debug_assert!(
            changed.get(first + 1).is_none_or(|next| *next > hi),
            "a single leaf changed in place has one changed key under it"
        );
        let leaf = self.input.in_place[first].expect("every change here is in place");
        leaf.leaf_value(&mut self.value);
        let key = Nibbles::unpack(changed[first]).slice(child.len()..);
        let rehashed = self.rehashed.as_mut().expect("rehash checked it");
        rehashed.rlp.clear();
        LeafNodeRef::new(&key, &self.value)
            .rlp(&mut rehashed.rlp)
            .as_hash()
    }
}
