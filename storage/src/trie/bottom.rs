//! Subtrees the node table keeps nothing of, hashed straight from their leaves.
//!
//! From [`SPARSE_DEPTH`](super::SPARSE_DEPTH) down, a node is stored only if a stored node lies
//! below it ([`is_stored`](super::is_stored)), so the walk rebuilds the subtree under each
//! changed child there from its leaves: at 10,000,000 accounts, a changed account's depth-5
//! node and the nine or so leaves beside it. Fed to the hash builder one by one, each of those
//! leaves went through its stack, the walk's record of fed leaves, and an update record for
//! every branch rebuilt, which [`is_stored`](super::is_stored) then dropped. [`Bottom`] hashes
//! such a subtree directly, and the walk feeds the hash builder the subtree's hash, as for an
//! unchanged stored child. The hash builder must see the same masks either way: the subtree's
//! top is a branch (its hash sets the parent's hash-mask bit), and the parent's tree-mask bit is
//! set when the hash builder would have asked to store that branch (a branch below it, see
//! [`Shape`]). A subtree with a stored node in it, or whose top is a leaf or an extension, is fed
//! leaf by leaf as before.

use super::{bottom_cache::CachedTop, leaves::Leaves};
use alloy_primitives::B256;
use alloy_trie::{
    Nibbles, TrieMask,
    nodes::{BranchNodeRef, ExtensionNodeRef, LeafNodeRef, RlpNode},
};
use std::ops::Range;

/// The leaves under one path, in key order, and the buffers their hashing reuses.
#[derive(Default)]
pub(super) struct Bottom {
    leaves: Leaves,
    /// The children of the branches being built, deepest last.
    stack: Vec<RlpNode>,
    rlp: Vec<u8>,
    /// Whether [`Bottom::top_branch`] records the branches it builds, in `recorded`, for the
    /// [`bottom_cache`](super::bottom_cache).
    recording: bool,
    pub recorded: Vec<(Nibbles, CachedTop)>,
}

/// What the hash builder's masks say of a node it built: for a branch, whether its tree or hash
/// mask has a bit set (the hash builder then asks to store it, and sets the parent's tree-mask
/// bit); for an extension, the same of the branch it leads to; nothing for a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Leaf,
    Branch { marked: bool },
    Extension { marked: bool },
}

/// A subtree's top branch, as the parent's walk feeds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TopBranch {
    pub hash: B256,
    /// Whether the hash builder would have set the parent's tree-mask bit for it.
    pub marked: bool,
}

impl Bottom {
    pub fn clear(&mut self) {
        self.leaves.clear();
    }

    /// Adds the next leaf (keys come in ascending order).
    pub fn push(&mut self, key: B256, value: &[u8]) {
        self.leaves.push(key, value);
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    /// The `i`th leaf.
    pub fn leaf(&self, i: usize) -> (B256, &[u8]) {
        self.leaves.leaf(i)
    }

    /// The hash of the subtree the leaves form below depth `depth` (all keys share their first
    /// `depth` nibbles), if its top is a branch at that depth, with a hash, and nothing in it is
    /// stored: no branch in it has a tree-mask bit set, which with [`is_stored`](super::is_stored)
    /// at or past [`SPARSE_DEPTH`](super::SPARSE_DEPTH) means no node in it is written.
    pub fn top_branch(&mut self, depth: usize) -> Option<TopBranch> {
        let n = self.leaves.len();
        if n < 2
            || nibble(&self.leaves.keys()[0], depth) == nibble(&self.leaves.keys()[n - 1], depth)
        {
            return None;
        }
        self.stack.clear();
        self.recorded.clear();
        let (node, tree_mask) = self.branch(0..n, depth);
        if !tree_mask.is_empty() {
            return None;
        }
        let Shape::Branch { marked } = node.1 else {
            unreachable!("a branch is built at the first differing nibble")
        };
        Some(TopBranch {
            hash: node.0.as_hash()?,
            marked,
        })
    }

    /// [`Bottom::top_branch`], recording in `recorded` each branch it builds (the top one and
    /// those under it) whose children are all referenced by hash, as the cache keeps them.
    pub fn top_branch_recorded(&mut self, depth: usize) -> Option<TopBranch> {
        self.recording = true;
        let top = self.top_branch(depth);
        self.recording = false;
        top
    }

    /// The reference to the subtree the leaves form below depth `depth` (all keys share their
    /// first `depth` nibbles), as its parent's node holds it (inlined, or by hash), if the parent
    /// keeps no hash of it and would set no tree-mask bit for it: an extension, or a leaf or a
    /// branch short enough to be inlined, with nothing in it that the hash builder would store.
    pub fn unkept_ref(&mut self, depth: usize) -> Option<RlpNode> {
        if self.leaves.len() == 0 {
            return None;
        }
        self.stack.clear();
        let (node, shape) = self.node(0..self.leaves.len(), depth);
        match shape {
            Shape::Extension { marked: false } => Some(node),
            Shape::Leaf | Shape::Branch { marked: false } if !node.is_hash() => Some(node),
            _ => None,
        }
    }

    /// The node over `leaves` (sharing their first `depth` nibbles).
    fn node(&mut self, leaves: Range<usize>, depth: usize) -> (RlpNode, Shape) {
        let (first, last) = (leaves.start, leaves.end - 1);
        if first == last {
            let (key, value) = self.leaves.leaf(first);
            let key = Nibbles::unpack(key).slice(depth..);
            self.rlp.clear();
            let node = LeafNodeRef::new(&key, value).rlp(&mut self.rlp);
            return (node, Shape::Leaf);
        }
        let shared = (depth..64)
            .take_while(|&i| {
                nibble(&self.leaves.keys()[first], i) == nibble(&self.leaves.keys()[last], i)
            })
            .count();
        let ((child, shape), _) = self.branch(leaves, depth + shared);
        if shared == 0 {
            return (child, shape);
        }
        let Shape::Branch { marked } = shape else {
            unreachable!("a branch is built at the first differing nibble")
        };
        let key = Nibbles::unpack(self.leaves.keys()[first]).slice(depth..depth + shared);
        self.rlp.clear();
        let node = ExtensionNodeRef::new(&key, &child).rlp(&mut self.rlp);
        (node, Shape::Extension { marked })
    }

    /// The branch at depth `depth` over `leaves` (which differ in that nibble), and its tree
    /// mask as the hash builder sets it.
    fn branch(&mut self, leaves: Range<usize>, depth: usize) -> ((RlpNode, Shape), TrieMask) {
        let (mut state_mask, mut tree_mask, mut hash_mask) = (
            TrieMask::default(),
            TrieMask::default(),
            TrieMask::default(),
        );
        let base = self.stack.len();
        let mut leaf_mask = TrieMask::default();
        let mut start = leaves.start;
        while start < leaves.end {
            let n = nibble(&self.leaves.keys()[start], depth);
            let end = start
                + self.leaves.keys()[start..leaves.end]
                    .partition_point(|key| nibble(key, depth) == n);
            let (child, shape) = self.node(start..end, depth + 1);
            state_mask.set_bit(n);
            match shape {
                Shape::Leaf => leaf_mask.set_bit(n),
                // A branch child sets the hash-mask bit when referenced by hash, and the
                // tree-mask bit when the hash builder stores it; an extension clears the former
                // and passes the latter on from the branch it leads to.
                Shape::Branch { marked } => {
                    if child.is_hash() {
                        hash_mask.set_bit(n);
                    }
                    if marked {
                        tree_mask.set_bit(n);
                    }
                }
                Shape::Extension { marked } => {
                    if marked {
                        tree_mask.set_bit(n);
                    }
                }
            }
            self.stack.push(child);
            start = end;
        }
        self.rlp.clear();
        let node = BranchNodeRef::new(&self.stack[base..], state_mask).rlp(&mut self.rlp);
        let marked = !tree_mask.is_empty() || !hash_mask.is_empty();
        if self.recording
            && let Some(hashes) = self.stack[base..]
                .iter()
                .map(RlpNode::as_hash)
                .collect::<Option<Box<[B256]>>>()
        {
            let path = Nibbles::unpack(self.leaves.keys()[leaves.start]).slice(..depth);
            let top = CachedTop {
                state_mask,
                leaf_mask,
                marked,
                hashes,
            };
            self.recorded.push((path, top));
        }
        self.stack.truncate(base);
        ((node, Shape::Branch { marked }), tree_mask)
    }
}

/// The nibble of `key` at index `i`.
pub(super) fn nibble(key: &B256, i: usize) -> u8 {
    let byte = key[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_trie::HashBuilder;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Leaves sharing `depth` nibbles, some sharing more (extensions and deeper branches).
    fn leaves(rng: &mut StdRng, depth: usize) -> Vec<(B256, Vec<u8>)> {
        let base = B256::from(rng.random::<[u8; 32]>());
        let mut keys: Vec<B256> = (0..rng.random_range(1..24))
            .map(|_| {
                let mut key = B256::from(rng.random::<[u8; 32]>());
                // Share `depth` nibbles with `base`, and often a few more.
                let shared = depth + rng.random_range(0..3) * rng.random_range(0..2);
                for i in 0..shared {
                    set_nibble(&mut key, i, nibble(&base, i));
                }
                key
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let len = rng.random_range(1..40);
                (key, (0..len).map(|_| rng.random()).collect())
            })
            .collect()
    }

    fn set_nibble(key: &mut B256, i: usize, value: u8) {
        let byte = &mut key[i / 2];
        *byte = match i.is_multiple_of(2) {
            true => (*byte & 0x0f) | (value << 4),
            false => (*byte & 0xf0) | value,
        };
    }

    /// Against the hash builder fed the leaves one by one, beside a sibling leaf so that it
    /// builds a parent above the subtree: fed the top branch's hash as the walk feeds it, it
    /// gives the same root and the same parent; and the subtrees declined are the ones it would
    /// store a node of.
    #[test]
    fn top_branch_is_the_hash_builders() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut bottom = Bottom::default();
        let (mut branches, mut marked, mut declined) = (0, 0, 0);
        for case in 0..3_000 {
            let depth = rng.random_range(1..6);
            let leaves = leaves(&mut rng, depth);
            bottom.clear();
            let mut alone = HashBuilder::default().with_updates(true);
            for (key, value) in &leaves {
                bottom.push(*key, value);
                alone.add_leaf(Nibbles::unpack(key), value);
            }
            alone.root();
            let (_, alone_updates) = alone.split();
            let path = Nibbles::unpack(leaves[0].0).slice(..depth);
            let Some(top) = bottom.top_branch(depth) else {
                let (first, last) = (&leaves[0].0, &leaves[leaves.len() - 1].0);
                if leaves.len() > 1 && nibble(first, depth) != nibble(last, depth) {
                    declined += 1;
                    let node = alone_updates
                        .get(&path)
                        .expect("a branch the builder stores");
                    assert!(
                        !node.tree_mask.is_empty(),
                        "case {case}: declined a plain branch"
                    );
                }
                continue;
            };
            branches += 1;
            marked += usize::from(top.marked);
            assert_eq!(top.marked, alone_updates.contains_key(&path), "case {case}");
            let mut sibling = leaves[0].0;
            let flipped = nibble(&sibling, depth - 1) ^ 1;
            set_nibble(&mut sibling, depth - 1, flipped);
            let (mut fed, mut whole) = (
                HashBuilder::default().with_updates(true),
                HashBuilder::default().with_updates(true),
            );
            let sibling_first = sibling < leaves[0].0;
            if sibling_first {
                fed.add_leaf(Nibbles::unpack(sibling), b"sibling");
                whole.add_leaf(Nibbles::unpack(sibling), b"sibling");
            }
            fed.add_branch(path, top.hash, top.marked);
            for (key, value) in &leaves {
                whole.add_leaf(Nibbles::unpack(key), value);
            }
            if !sibling_first {
                fed.add_leaf(Nibbles::unpack(sibling), b"sibling");
                whole.add_leaf(Nibbles::unpack(sibling), b"sibling");
            }
            assert_eq!(fed.root(), whole.root(), "case {case}: root");
            let parent = path.slice(..depth - 1);
            let (_, fed_updates) = fed.split();
            let (_, whole_updates) = whole.split();
            let masks =
                |b: &alloy_trie::BranchNodeCompact| (b.state_mask, b.tree_mask, b.hash_mask);
            assert_eq!(
                fed_updates.get(&parent).map(masks),
                whole_updates.get(&parent).map(masks),
                "case {case}: the parent's masks"
            );
        }
        assert!(
            branches > 1_000 && marked > 100 && declined > 20,
            "cases: {branches} branches ({marked} marked), {declined} declined"
        );
    }
}
