//! The account trie's bottom subtrees' top branches, kept in memory between blocks.
//!
//! A subtree the node table keeps nothing of is rebuilt from its leaves whenever a key under it
//! changes ([`bottom`](super::bottom)): at 10,000,000 accounts each changed account's ten or so
//! neighbours are read and hashed again, two thirds of the state-root helpers' time. When the
//! change is a value change under a child that is a single leaf (a transfer's sender and
//! recipient), the subtree's top branch needs only that leaf's new hash beside its other
//! children's hashes, which did not change. So the walks keep each top branch they build here,
//! with the branches under it (a child of two or three leaves), and the next value change under
//! it costs one leaf hash and a branch hash a level, without a read. At 10,000,000 accounts that
//! is about 3 million branches (a million tops), some 1 GB.
//!
//! The cache holds the top branches as of the last commit, and only walks that read the last
//! commit use it: the account trie's helpers ([`update_accounts`](super::update_accounts)), on
//! the first block of a write transaction. A walk's new tops are its block's; they enter the
//! cache when the transaction commits ([`BottomCache::commit`]), each block's after every entry
//! over a key that block changed is dropped, so that no entry outlives a change under it. A
//! transaction dropped uncommitted leaves the cache as it was. Every bulk write of the state
//! (genesis, a state sync's restore) starts from an empty cache.

use super::{Fresh, Leaves, TrieCursors, TrieInput, Walk};
use crate::{Env, StorageError, codec, tables};
use alloy_primitives::{B256, map::HashMap};
use alloy_trie::{HashBuilder, Nibbles, TrieMask};
use libmdbx::Database;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// At most this many branches are kept (about 400 bytes each: 1.6 GB at most; a
/// 10,000,000-account trie has about 1.4 million: a million top branches and the branches
/// under them). Past it, new ones are not kept; the kept ones stay up to date.
const ENTRIES_MAX: usize = 1 << 22;

/// A branch of a bottom subtree (its top, or one under it): its children, their hashes, and
/// which are single leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CachedTop {
    pub state_mask: TrieMask,
    /// Children that are single leaves: a value change under one is that leaf's.
    pub leaf_mask: TrieMask,
    /// Whether the hash builder would set the parent's tree-mask bit for it
    /// ([`TopBranch::marked`](super::bottom::TopBranch)).
    pub marked: bool,
    /// The children's hashes, in nibble order.
    pub hashes: Box<[B256]>,
}

/// One block's part in a transaction: the accounts it changed (hashed) and the tops its walks
/// built.
#[derive(Debug, Default)]
pub(crate) struct BlockTops {
    pub changed: Vec<B256>,
    pub tops: Vec<(Nibbles, CachedTop)>,
}

#[derive(Default)]
pub(crate) struct BottomCache {
    inner: RwLock<Inner>,
    /// Lookups that found their top branch, for the tests.
    #[cfg(test)]
    pub found: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Inner {
    tops: HashMap<Nibbles, CachedTop>,
    /// Bit `i` set when an entry's path is `i` nibbles long: the prefixes of a changed key that
    /// can have one.
    lengths: u64,
}

impl BottomCache {
    /// `f` of the top branch at `path` as of the last commit, if kept.
    pub fn get<R>(&self, path: &Nibbles, f: impl FnOnce(&CachedTop) -> R) -> Option<R> {
        let found = self.inner.read().tops.get(path).map(f);
        #[cfg(test)]
        if found.is_some() {
            self.found
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }

    /// After a transaction of `blocks` committed: for each block in order, drops the entries
    /// over the keys it changed, then keeps the branches it built. A key under a top branch the
    /// block built changed in place, and every kept branch on its path was rebuilt with it (the
    /// walk keeps all of a top's or none, `Walk::rehash_cached`), so only the other keys drop
    /// the entries over them.
    pub fn commit(&self, blocks: Vec<BlockTops>) {
        let mut inner = self.inner.write();
        for mut block in blocks {
            block.tops.sort_unstable_by_key(|(path, _)| *path);
            let mut next = 0;
            for key in &block.changed {
                while next < block.tops.len() && super::key_range(&block.tops[next].0).1 < *key {
                    next += 1;
                }
                let covered = block.tops.get(next).is_some_and(|(path, _)| {
                    let (lo, hi) = super::key_range(path);
                    lo <= *key && *key <= hi
                });
                if covered {
                    continue;
                }
                let key = Nibbles::unpack(key);
                let mut lengths = inner.lengths;
                while lengths != 0 {
                    let len = lengths.trailing_zeros() as usize;
                    lengths &= lengths - 1;
                    inner.tops.remove(&key.slice(..len));
                }
            }
            debug_assert!(
                (block.tops.iter()).all(|(path, _)| built_where_changed(&block, path)),
                "a top is built where a key changed, or under one that is"
            );
            for (path, top) in block.tops {
                if inner.tops.len() < ENTRIES_MAX || inner.tops.contains_key(&path) {
                    inner.lengths |= 1 << path.len();
                    inner.tops.insert(path, top);
                }
            }
        }
        metrics::gauge!("kestrel_storage_trie_bottom_cache_entries").set(inner.tops.len() as f64);
    }

    /// Forgets every entry: the state was written otherwise than by blocks.
    pub fn clear(&self) {
        *self.inner.write() = Inner::default();
        metrics::gauge!("kestrel_storage_trie_bottom_cache_entries").set(0.0);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.read().tops.len()
    }

    #[cfg(test)]
    pub fn entries(&self) -> HashMap<Nibbles, CachedTop> {
        self.inner.read().tops.clone()
    }
}

impl BottomCache {
    /// Keeps `tops`, up to [`ENTRIES_MAX`] entries.
    fn extend(&self, tops: Vec<(Nibbles, CachedTop)>) {
        let mut inner = self.inner.write();
        for (path, top) in tops {
            if inner.tops.len() >= ENTRIES_MAX {
                break;
            }
            inner.lengths |= 1 << path.len();
            inner.tops.insert(path, top);
        }
        metrics::gauge!("kestrel_storage_trie_bottom_cache_entries").set(inner.tops.len() as f64);
    }

    /// Keeps the top branch of every bottom subtree of the account trie that `db`'s last commit
    /// holds (the children of stored branches that are branches kept by hash with nothing
    /// stored under them), so that blocks find them from the first: at open, and after a bulk write. Reads
    /// the node table and, in effect, the whole hashed table, the root's children shared out
    /// over one thread a core. Returns how many it keeps.
    pub fn fill(&self, db: &Database<Env>) -> Result<usize, StorageError> {
        self.clear();
        let next = AtomicU8::new(0);
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        std::thread::scope(|scope| {
            let fillers: Vec<_> = (0..threads)
                .map(|_| scope.spawn(|| fill_children(db, &next).map(|tops| self.extend(tops))))
                .collect();
            fillers
                .into_iter()
                .try_for_each(|filler| filler.join().expect("a filler panicked"))
        })?;
        Ok(self.inner.read().tops.len())
    }
}

/// Whether the branch at `path`, one of `block`'s tops (sorted), lies under one of them (or is
/// one) with a changed key below it: a walk rebuilds a changed subtree whole, and keeps the
/// branches under its top whether or not a key below them changed.
fn built_where_changed(block: &BlockTops, path: &Nibbles) -> bool {
    (0..=path.len()).any(|len| {
        let prefix = path.slice(..len);
        let (lo, _) = super::key_range(&prefix);
        let at = block.changed.partition_point(|key| *key < lo);
        block
            .tops
            .binary_search_by_key(&prefix, |(top, _)| *top)
            .is_ok()
            && (block.changed.get(at)).is_some_and(|key| Nibbles::unpack(key).starts_with(&prefix))
    })
}

/// The bottom subtrees' top branches under the root's children taken from `next`, one child at
/// a time until all 16 are taken.
fn fill_children(
    db: &Database<Env>,
    next: &AtomicU8,
) -> Result<Vec<(Nibbles, CachedTop)>, StorageError> {
    let txn = db.begin_ro_txn()?;
    let nodes_table = txn.open_table(Some(tables::ACCOUNT_TRIE))?;
    let mut cursors = TrieCursors {
        hashed: txn.cursor(&txn.open_table(Some(tables::HASHED_ACCOUNTS))?)?,
        nodes: txn.cursor(&nodes_table)?,
        // Filled where nothing is deferred: at open, after a bulk write.
        fresh: Fresh::Nothing,
    };
    let mut nodes = txn.cursor(&nodes_table)?;
    let input = TrieInput {
        leaves: Leaves::Accounts,
        prefix: &[],
        changed: &[],
        overlay: &[],
        in_place: &[],
    };
    let mut walk = Walk::new(
        &mut cursors,
        &input,
        HashBuilder::default().with_updates(true),
    );
    let mut tops = Vec::new();
    let mut key = Vec::new();
    loop {
        let nibble = next.fetch_add(1, Ordering::Relaxed);
        if nibble >= 16 {
            return Ok(tops);
        }
        codec::node_key(&[], &Nibbles::from_nibbles_unchecked([nibble]), &mut key);
        let mut entry = nodes.set_range::<Vec<u8>, Vec<u8>>(&key)?;
        while let Some((stored, value)) = entry.filter(|(stored, _)| stored.starts_with(&key)) {
            let path = codec::node_path(tables::ACCOUNT_TRIE, &stored)?;
            let node = codec::decode_node(tables::ACCOUNT_TRIE, &value)?;
            // As `Walk::rehash_child` finds them: branch children kept by hash with no stored
            // node under them, whatever their tree-mask bit.
            for child_nibble in node.branch.hash_mask.iter() {
                let mut child = path;
                child.push_unchecked(child_nibble);
                let marked = node.branch.tree_mask.is_bit_set(child_nibble);
                if marked && walk.first_node_under(&child)?.is_some() {
                    continue;
                }
                walk.gather_leaves(&child)?;
                let bottom = walk.bottom.as_mut().expect("an updating walk has one");
                if bottom
                    .top_branch_recorded(child.len())
                    .is_some_and(|top| top.marked == marked)
                {
                    tops.append(&mut bottom.recorded);
                }
            }
            entry = nodes.next()?;
        }
    }
}
