//! The account trie's update on several threads.
//!
//! A block of transfers changes keys under every child of the account trie's root, and the walk
//! under each child (the stored nodes read, the unchanged leaves beside the changed ones read and
//! hashed) is as independent of the other children's as the subtrees are. So the children's
//! subtrees are built by several walks at once, each with a hash builder of its own that sees
//! the subtree as a trie (its keys without their first nibble): that trie's root is the node at
//! the child, and its hash is what the root branch holds for the child. The root's own walk
//! then feeds each child's hash in place of descending into it, which is what feeding its leaves
//! would give (the trie walker's rule for every unchanged stored branch), so the root and every
//! stored node come out as the single walk's.
//!
//! MDBX's write transaction can be read only by its own thread, so helper threads read the last
//! commit (a read transaction; the block's writer holds the only write transaction, so nothing
//! was committed since it began) with the block's new account records laid over its hashed table
//! ([`TrieInput::overlay`]). The writer's thread writes those records meanwhile, then each
//! subtree's nodes as it is built (only the writer may); it walks none itself, as reads through
//! the write transaction cost more (each page looked up in its dirty-page list). A subtree whose
//! top is not a branch at the child (a single leaf, or an extension below it: only in small
//! tries) has no hash to feed; then the whole trie is walked again on one thread, over the
//! subtrees' nodes already written, which are right for the new state.

use super::{
    InPlace, Leaves, NodeWrites, TrieCursors, TrieInput, TrieUpdate, Walk,
    bottom_cache::{BottomCache, CachedTop},
    deferred::{Fresh, Pending, View},
    key_range,
};
use crate::{Env, StorageError, codec::AccountRecord, tables};
use alloy_primitives::B256;
use alloy_trie::{HashBuilder, Nibbles};
use libmdbx::{Database, RW, Table, Transaction, TransactionKind};
use std::{
    ops::Range,
    sync::{Arc, OnceLock},
};

/// New account records by hashed address (`None`: deleted), sorted.
pub(crate) type Overlay = Vec<(B256, Option<AccountRecord>)>;

/// The new records of a run of changed accounts, and which of them changed in place
/// ([`TrieInput::in_place`]).
#[derive(Debug)]
pub(crate) struct Records {
    overlay: Overlay,
    in_place: Vec<Option<InPlace>>,
}

impl Records {
    pub fn with_capacity(len: usize) -> Self {
        Self {
            overlay: Vec::with_capacity(len),
            in_place: Vec::with_capacity(len),
        }
    }

    pub fn push(&mut self, key: B256, record: Option<AccountRecord>, in_place: Option<InPlace>) {
        self.overlay.push((key, record));
        self.in_place.push(in_place);
    }
}

/// Fewer changed accounts than this are walked on one thread: the helper's start and its read
/// transaction would cost more than it saves.
#[cfg(not(test))]
const PARALLEL_CHANGED_MIN: usize = 1_000;
/// The tests' blocks change a few accounts.
#[cfg(test)]
const PARALLEL_CHANGED_MIN: usize = 1;

/// At most this many helper threads walk (one a core).
const WALKERS_MAX: usize = 8;

/// How [`update_accounts`] walked the account trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walked {
    /// On the writer's thread alone: few changes, a small trie, or one core.
    OneThread,
    /// The subtrees under the root's changed children on several threads.
    Parallel,
    /// On several threads, then again on one: a child's top was not a branch.
    Again,
}

impl Walked {
    pub fn label(self) -> &'static str {
        match self {
            Walked::OneThread => "one_thread",
            Walked::Parallel => "parallel",
            Walked::Again => "again",
        }
    }
}

/// What the root's walk feeds for a child whose subtree another walk built.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Top {
    /// No key is left under the child.
    Empty,
    /// A branch exactly at the child, its hash, and whether it is stored (the root's tree-mask
    /// bit).
    Branch { hash: B256, stored: bool },
}

/// One child's subtree, built: its top (`None`: neither empty nor a branch at the child) and
/// its node-table changes.
struct Subtree {
    nibble: u8,
    top: Option<Top>,
    writes: NodeWrites,
    /// The bottom subtrees' top branches its walk built ([`bottom_cache`](super::bottom_cache)).
    tops: Vec<(Nibbles, CachedTop)>,
}

/// What [`update_accounts`] did: the new root and node writes, how it walked, and the bottom
/// subtrees' top branches its helpers built, for `cache` once the block commits.
pub(crate) struct AccountsUpdate {
    pub update: TrieUpdate,
    pub walked: Walked,
    pub tops: Vec<(Nibbles, CachedTop)>,
}

/// The account trie's two tables, and its deferred branches ([`deferred`](super::deferred)):
/// the write transaction's, and the last commit's, which the helpers read.
pub(crate) struct AccountTables<'a, 't> {
    pub hashed: &'a Table<'t>,
    pub nodes: &'a Table<'t>,
    pub pending: &'a Pending,
    pub committed: &'a Arc<View>,
}

/// Updates the account trie's stored nodes after the accounts at the hashed addresses `changed`
/// (sorted) changed; returns the new root and how the trie was walked. `records(range)` writes
/// the new records of `changed[range]` (`None`: deleted) and returns them; it is called for
/// consecutive ranges, in key order, before any walk through `txn`.
///
/// With `snapshot` (the database of `txn`, when its last commit is the state `txn` began from)
/// and enough changes, the subtrees under the root's changed children are walked on several
/// helper threads: each starts on a subtree as soon as its records are known, while this thread
/// gets the rest, then writes each subtree's nodes as it is built. The helpers rehash bottom
/// subtrees from `cache`'s top branches (as of the last commit, which they read).
pub(crate) fn update_accounts<'a>(
    txn: &'a Transaction<'_, RW, Env>,
    snapshot: Option<&Database<Env>>,
    cache: &Arc<BottomCache>,
    tables: &AccountTables<'a, '_>,
    changed: &[B256],
    mut records: impl FnMut(Range<usize>) -> Result<Records, StorageError>,
) -> Result<AccountsUpdate, StorageError> {
    let cursors = || -> Result<_, StorageError> {
        Ok(TrieCursors {
            hashed: txn.cursor(tables.hashed)?,
            nodes: txn.cursor(tables.nodes)?,
            fresh: Fresh::Pending(tables.pending),
        })
    };
    let input = TrieInput {
        leaves: Leaves::Accounts,
        prefix: &[],
        changed,
        overlay: &[],
        in_place: &[],
    };
    let walkers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(WALKERS_MAX);
    let jobs = match snapshot {
        Some(_) if walkers > 1 && changed.len() >= PARALLEL_CHANGED_MIN => {
            changed_stored_children(&mut cursors()?, &input)?
        }
        _ => Vec::new(),
    };
    let (Some(db), 2..) = (snapshot, jobs.len()) else {
        let records = records(0..changed.len())?;
        let input = TrieInput {
            in_place: &records.in_place,
            ..input
        };
        let update = super::update(txn, tables.nodes, &mut cursors()?, &input)?;
        return Ok(AccountsUpdate {
            update,
            walked: Walked::OneThread,
            tops: Vec::new(),
        });
    };

    // The changed keys under each of the root's children, and their records once known.
    let under: [Range<usize>; 16] = std::array::from_fn(|nibble| {
        let first =
            |nibble: usize| changed.partition_point(|key| usize::from(key[0] >> 4) < nibble);
        first(nibble)..first(nibble + 1)
    });
    let overlays: [OnceLock<Records>; 16] = Default::default();
    let subtree_input = |nibble: u8| {
        let nibble = usize::from(nibble);
        let records = overlays[nibble]
            .get()
            .expect("a subtree is sent once its records are known");
        TrieInput {
            leaves: Leaves::Accounts,
            prefix: &[],
            changed: &changed[under[nibble].clone()],
            overlay: &records.overlay,
            in_place: &records.in_place,
        }
    };
    let (ready, jobs_ready) = crossbeam_channel::unbounded::<u8>();
    let (built, built_ready) = crossbeam_channel::unbounded::<Subtree>();
    // Each subtree's node writes are applied as it comes in, while the helpers walk on (a
    // subtree's nodes lie under its child alone, where no other walk reads). The root's walk
    // reads only the root's node, written last.
    let mut nodes_written = 0;
    let mut tops: [Option<Option<Top>>; 16] = Default::default();
    let mut cached_tops = Vec::new();
    let committed = tables.committed;
    let mut take = |mut subtree: Subtree| -> Result<(), StorageError> {
        nodes_written += subtree
            .writes
            .apply(txn, tables.nodes, Some(tables.pending))?;
        cached_tops.append(&mut subtree.tops);
        let top = &mut tops[usize::from(subtree.nibble)];
        assert!(top.is_none(), "child {} built twice", subtree.nibble);
        *top = Some(subtree.top);
        Ok(())
    };
    std::thread::scope(|scope| -> Result<(), StorageError> {
        let helpers = (0..walkers.min(jobs.len()))
            .map(|_| {
                let (jobs_ready, built) = (jobs_ready.clone(), built.clone());
                std::thread::Builder::new()
                    .name("state-root".into())
                    .spawn_scoped(scope, || {
                        let built = built;
                        let snapshot = db.begin_ro_txn()?;
                        let mut cursors = TrieCursors {
                            hashed: snapshot
                                .cursor(&snapshot.open_table(Some(tables::HASHED_ACCOUNTS))?)?,
                            nodes: snapshot
                                .cursor(&snapshot.open_table(Some(tables::ACCOUNT_TRIE))?)?,
                            fresh: Fresh::View(committed.clone()),
                        };
                        for nibble in jobs_ready {
                            let subtree =
                                build_subtree(&mut cursors, &subtree_input(nibble), nibble, cache)?;
                            // The receiver lives until every helper is joined.
                            built.send(subtree).expect("the writer takes every subtree");
                        }
                        Ok::<_, StorageError>(())
                    })
                    .map_err(StorageError::RootThread)
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(built);
        // Dropped on every way out of this scope, so that the helpers stop.
        let ready = ready;
        for (nibble, overlay) in overlays.iter().enumerate() {
            let records = records(under[nibble].clone())?;
            overlay.set(records).expect("each child's records once");
            let nibble = nibble as u8;
            if jobs.contains(&nibble) {
                ready.send(nibble).expect("a receiver is held below");
            }
        }
        drop(ready);
        // Until every helper is done (each drops its sender then).
        built_ready.iter().try_for_each(&mut take)?;
        for helper in helpers {
            match helper.join() {
                Ok(done) => done?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })?;
    let subtrees: Vec<(u8, Option<Top>)> = (0..16u8)
        .filter_map(|nibble| Some((nibble, tops[usize::from(nibble)]?)))
        .collect();
    assert_eq!(subtrees.len(), jobs.len(), "every changed child built once");

    let mut cursors = cursors()?;
    if subtrees.iter().any(|(_, top)| top.is_none()) {
        // The subtrees' nodes written above are right for the new state, which is all the
        // walk asks of the nodes it reads: it rebuilds every node on a changed path. No leaf is
        // fed in place on this path, which only small tries take.
        let mut update = super::update(txn, tables.nodes, &mut cursors, &input)?;
        update.nodes_written += nodes_written;
        return Ok(AccountsUpdate {
            update,
            walked: Walked::Again,
            tops: cached_tops,
        });
    }
    let mut walk = Walk::new(
        &mut cursors,
        &input,
        HashBuilder::default().with_updates(true),
    );
    for (nibble, top) in &subtrees {
        walk.subtrees[usize::from(*nibble)] = *top;
    }
    walk.descend(Nibbles::default())?;
    assert!(
        walk.subtrees.iter().all(Option::is_none),
        "the root's walk fed every subtree built"
    );
    let root = walk.hb.root();
    nodes_written +=
        (walk.node_writes(|path| path)).apply(txn, tables.nodes, Some(tables.pending))?;
    let update = TrieUpdate {
        root,
        nodes_written,
    };
    Ok(AccountsUpdate {
        update,
        walked: Walked::Parallel,
        tops: cached_tops,
    })
}

/// The root's children with a changed key below them and a stored node (tree-mask bit set), if
/// the root is a stored branch: the subtrees to build apart.
fn changed_stored_children<K: TransactionKind>(
    cursors: &mut TrieCursors<'_, K>,
    input: &TrieInput<'_>,
) -> Result<Vec<u8>, StorageError> {
    let mut walk = Walk::new(cursors, input, HashBuilder::default());
    let root = Nibbles::default();
    let Some((path, node)) = walk.first_node_under(&root)? else {
        return Ok(Vec::new());
    };
    if path != root {
        return Ok(Vec::new());
    }
    Ok((0..16u8)
        .filter(|nibble| {
            let (lo, hi) = key_range(&Nibbles::from_nibbles_unchecked([*nibble]));
            node.branch.tree_mask.is_bit_set(*nibble) && walk.any_changed(&lo, &hi)
        })
        .collect())
}

/// Walks the subtree under the root's child `nibble` as a trie of its own.
fn build_subtree<K: TransactionKind>(
    cursors: &mut TrieCursors<'_, K>,
    input: &TrieInput<'_>,
    nibble: u8,
    cache: &Arc<BottomCache>,
) -> Result<Subtree, StorageError> {
    let child = Nibbles::from_nibbles_unchecked([nibble]);
    let mut walk = Walk::new(cursors, input, HashBuilder::default().with_updates(true));
    walk.use_bottom_cache(cache.clone());
    walk.strip = 1;
    walk.descend(child)?;
    walk.count_in_place();
    let hash = walk.hb.root();
    let top = match walk.fed_under.count_ones() {
        0 => Some(Top::Empty),
        // One element fed, or all under one grandchild: a leaf or an extension at the child.
        1 => None,
        _ => Some(Top::Branch {
            hash,
            stored: walk
                .hb
                .updated_branch_nodes
                .as_ref()
                .is_some_and(|updates| updates.contains_key(&Nibbles::default())),
        }),
    };
    let writes = walk.node_writes(|path| child.join(&path));
    let tops = walk.rehashed.map(|r| r.tops).unwrap_or_default();
    Ok(Subtree {
        nibble,
        top,
        writes,
        tops,
    })
}
