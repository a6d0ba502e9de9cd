//! What a walk fed the hash builder, and the stored nodes built from it.

use super::{key_range, leaves::Leaves};
use crate::codec::StoredNode;
use alloy_primitives::B256;
use alloy_trie::{BranchNodeCompact, Nibbles, TrieMask, nodes::LeafNodeRef};

/// What the walk fed the hash builder, in key order: to tell afterwards which children of each
/// rebuilt node are single leaves, and their hashes.
#[derive(Default)]
pub(super) struct Fed {
    pub leaves: Leaves,
    /// Paths of the hashes fed in place of subtrees (branches, and leaves with a stored hash).
    pub hashes: Vec<Nibbles>,
    /// The paths in `hashes` that are leaves.
    pub leaf_hashes: Vec<Nibbles>,
}

impl Fed {
    /// The node to store for a branch the hash builder rebuilt: its hash mask keeps only branch
    /// children (a stored leaf hash was fed as a hash, so the hash builder counted it), and the
    /// hashes of its single-leaf children go beside it.
    pub fn stored_node(
        &self,
        path: &Nibbles,
        branch: BranchNodeCompact,
        rlp: &mut Vec<u8>,
    ) -> StoredNode {
        let (mut hash_mask, mut hashes) = (TrieMask::default(), Vec::new());
        let (mut leaf_mask, mut leaf_hashes) = (TrieMask::default(), Vec::new());
        let mut branch_hashes = branch.hashes.iter();
        let under = self.under(path);
        for nibble in branch.state_mask.iter() {
            let mut child = *path;
            child.push_unchecked(nibble);
            if branch.hash_mask.is_bit_set(nibble) {
                let hash = *branch_hashes.next().expect("a hash per hash-mask bit");
                if self.leaf_hashes[under.leaf_hashes.clone()]
                    .binary_search(&child)
                    .is_ok()
                {
                    leaf_mask.set_bit(nibble);
                    leaf_hashes.push(hash);
                } else {
                    hash_mask.set_bit(nibble);
                    hashes.push(hash);
                }
            } else if !branch.tree_mask.is_bit_set(nibble)
                && let Some(hash) = self.single_leaf_hash(&child, &under, rlp)
            {
                leaf_mask.set_bit(nibble);
                leaf_hashes.push(hash);
            }
        }
        let branch = BranchNodeCompact::new(
            branch.state_mask,
            branch.tree_mask,
            hash_mask,
            hashes,
            branch.root_hash,
        );
        StoredNode {
            branch,
            leaf_mask,
            leaf_hashes,
        }
    }

    /// Where the leaves and hashes fed under `path` lie in `leaves`, `hashes` and
    /// `leaf_hashes` (each sorted, so each set is one run). A node's sixteen children are looked
    /// up in these runs of a few entries: searched in the whole vectors, tens of thousands of
    /// entries for a block, each lookup was a chain of cache misses, a tenth of the root's time
    /// at 10,000,000 accounts.
    fn under(&self, path: &Nibbles) -> Under {
        let (lo, hi) = key_range(path);
        let leaf_keys = self.leaves.keys();
        let first = leaf_keys.partition_point(|key| *key < lo);
        let keys = first..first + leaf_keys[first..].partition_point(|key| *key <= hi);
        let run = |paths: &[Nibbles]| {
            let first = paths.partition_point(|p| p < path);
            first..first + paths[first..].partition_point(|p| p.starts_with(path))
        };
        Under {
            keys,
            hashes: run(&self.hashes),
            leaf_hashes: run(&self.leaf_hashes),
        }
    }

    /// The hash of the leaf node at `child`, if the only element fed under `child` was a leaf
    /// (and its node is referenced by hash, not inlined). `under` is [`Fed::under`] of
    /// `child`'s parent.
    fn single_leaf_hash(&self, child: &Nibbles, under: &Under, rlp: &mut Vec<u8>) -> Option<B256> {
        let (lo, hi) = key_range(child);
        let keys = &self.leaves.keys()[under.keys.clone()];
        let at = keys.partition_point(|key| *key < lo);
        if at == keys.len() || keys[at] > hi {
            return None;
        }
        if keys.get(at + 1).is_some_and(|key| *key <= hi) {
            return None;
        }
        let hashes = &self.hashes[under.hashes.clone()];
        let hashed = hashes.partition_point(|hashed| hashed < child);
        if hashes
            .get(hashed)
            .is_some_and(|hashed| hashed.starts_with(child))
        {
            return None;
        }
        let (key, value) = self.leaves.leaf(under.keys.start + at);
        let key = Nibbles::unpack(key).slice(child.len()..);
        rlp.clear();
        LeafNodeRef::new(&key, value).rlp(rlp).as_hash()
    }
}

/// Index ranges of what was fed under one path ([`Fed::under`]).
struct Under {
    keys: std::ops::Range<usize>,
    hashes: std::ops::Range<usize>,
    leaf_hashes: std::ops::Range<usize>,
}
