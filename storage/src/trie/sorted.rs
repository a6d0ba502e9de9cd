//! A trie built from nothing for a state written in bulk, its nodes handed out sorted.

use super::{Fed, is_stored};
use crate::codec;
use alloy_primitives::B256;
use alloy_trie::{HashBuilder, Nibbles};

/// A node-table entry: key (prefix ‖ nibble path) and encoded [`StoredNode`].
pub(crate) type NodeEntry = (Vec<u8>, Vec<u8>);

/// A trie built from nothing, its leaves given in key order, for a state written in bulk
/// (`bulk`): it stores exactly the nodes [`super::update`] stores when every key is new, and
/// hands them out sorted, a top-level subtree at a time, so that they can be appended to the
/// node table.
///
/// Only the leaves of the subtree being fed are kept (a node's leaf hashes come from the leaves
/// under it), plus the leaves that were alone under their first nibble: those are the root's
/// single-leaf children, whose hashes the root node needs when it is built last.
pub(crate) struct SortedTrie {
    hb: HashBuilder,
    fed: Fed,
    prefix: Vec<u8>,
    /// First nibble of the keys fed since the last hand-out.
    subtree: Option<u8>,
    /// Leaves in `fed` from earlier subtrees.
    kept: usize,
}

impl SortedTrie {
    /// An empty trie whose nodes are stored under `prefix` (see [`TrieInput::prefix`]).
    pub fn new(prefix: &[u8]) -> Self {
        Self {
            hb: HashBuilder::default().with_updates(true),
            fed: Fed::default(),
            prefix: prefix.to_vec(),
            subtree: None,
            kept: 0,
        }
    }

    /// Adds the leaf at `key` (greater than every key before it) with its RLP `value`, and moves
    /// to `out` the nodes this completes, sorted by key.
    pub fn add_leaf(&mut self, key: B256, value: &[u8], out: &mut Vec<NodeEntry>) {
        let first_nibble = key[0] >> 4;
        self.hb.add_leaf(Nibbles::unpack(key), value);
        if self.subtree != Some(first_nibble) {
            if self.subtree.is_some() {
                // A key under another first nibble completes every node of the last subtree.
                self.take_nodes(out);
                if self.fed.leaves.len() - self.kept > 1 {
                    self.fed.leaves.truncate(self.kept);
                }
                self.kept = self.fed.leaves.len();
            }
            self.subtree = Some(first_nibble);
        }
        self.fed.leaves.push(key, value);
    }

    /// The root; moves the remaining nodes to `out`, sorted by key. The root node (if the root
    /// is a branch) sorts before the nodes handed out earlier.
    pub fn finish(mut self, out: &mut Vec<NodeEntry>) -> B256 {
        let root = self.hb.root();
        self.take_nodes(out);
        root
    }

    fn take_nodes(&mut self, out: &mut Vec<NodeEntry>) {
        let Some(updates) = self.hb.updated_branch_nodes.as_mut() else {
            return;
        };
        let start = out.len();
        let mut rlp = Vec::with_capacity(128);
        for (path, branch) in updates
            .drain()
            .filter(|(path, branch)| is_stored(path, branch))
        {
            let node = self.fed.stored_node(&path, branch, &mut rlp);
            let (mut key, mut value) = (Vec::new(), Vec::new());
            codec::node_key(&self.prefix, &path, &mut key);
            codec::encode_node(&node, &mut value);
            out.push((key, value));
        }
        out[start..].sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
}
