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
//! ([`TrieInput::overlay`]). The writer's thread writes those records meanwhile, then walks
//! subtrees too, through its own transaction. A subtree whose top is not a branch at the child
//! (a single leaf, or an extension below it: only in small tries) has no hash to feed; then the
//! whole trie is walked again on one thread.

use super::{NodeWrites, TrieCursors, TrieInput, TrieUpdate, Walk, key_range};
use crate::{Env, StorageError, tables};
use alloy_primitives::B256;
use alloy_trie::{HashBuilder, Nibbles};
use libmdbx::{Database, RW, Table, Transaction, TransactionKind};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fewer changed accounts than this are walked on one thread: the helper's start and its read
/// transaction would cost more than it saves.
#[cfg(not(test))]
const PARALLEL_CHANGED_MIN: usize = 1_000;
/// The tests' blocks change a few accounts.
#[cfg(test)]
const PARALLEL_CHANGED_MIN: usize = 1;

/// At most this many threads walk, the writer's included.
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
}

/// Writes the account records (`write_leaves`, the new records being `input.overlay`) and
/// updates the account trie's stored nodes, the subtrees under the root's changed children
/// walked on several threads when the block changed enough accounts. Returns the new root and
/// how the trie was walked.
pub(crate) fn update_accounts(
    db: &Database<Env>,
    txn: &Transaction<'_, RW, Env>,
    nodes_table: &Table<'_>,
    hashed_table: &Table<'_>,
    input: &TrieInput<'_>,
    write_leaves: impl FnOnce() -> Result<(), StorageError>,
) -> Result<(TrieUpdate, Walked), StorageError> {
    let cursors = || -> Result<_, StorageError> {
        Ok(TrieCursors {
            hashed: txn.cursor(hashed_table)?,
            nodes: txn.cursor(nodes_table)?,
        })
    };
    let walkers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(WALKERS_MAX);
    let jobs = if walkers > 1 && input.changed.len() >= PARALLEL_CHANGED_MIN {
        changed_stored_children(&mut cursors()?, input)?
    } else {
        Vec::new()
    };
    if jobs.len() < 2 {
        write_leaves()?;
        let update = super::update(txn, nodes_table, &mut cursors()?, input)?;
        return Ok((update, Walked::OneThread));
    }

    let next_job = AtomicUsize::new(0);
    let mut subtrees = std::thread::scope(|scope| -> Result<Vec<Subtree>, StorageError> {
        let helpers = (1..walkers.min(jobs.len()))
            .map(|_| {
                std::thread::Builder::new()
                    .name("state-root".into())
                    .spawn_scoped(scope, || {
                        let snapshot = db.begin_ro_txn()?;
                        let mut cursors = TrieCursors {
                            hashed: snapshot
                                .cursor(&snapshot.open_table(Some(tables::HASHED_ACCOUNTS))?)?,
                            nodes: snapshot
                                .cursor(&snapshot.open_table(Some(tables::ACCOUNT_TRIE))?)?,
                        };
                        build_subtrees(&mut cursors, input, &jobs, &next_job)
                    })
                    .map_err(StorageError::RootThread)
            })
            .collect::<Result<Vec<_>, _>>()?;
        write_leaves()?;
        let mut subtrees = build_subtrees(&mut cursors()?, input, &jobs, &next_job)?;
        for helper in helpers {
            match helper.join() {
                Ok(built) => subtrees.extend(built?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(subtrees)
    })?;
    assert_eq!(subtrees.len(), jobs.len(), "every changed child built once");

    let mut cursors = cursors()?;
    if subtrees.iter().any(|subtree| subtree.top.is_none()) {
        let update = super::update(txn, nodes_table, &mut cursors, input)?;
        return Ok((update, Walked::Again));
    }
    let mut walk = Walk::new(
        &mut cursors,
        input,
        HashBuilder::default().with_updates(true),
    );
    for subtree in &subtrees {
        walk.subtrees[usize::from(subtree.nibble)] = subtree.top;
    }
    walk.descend(Nibbles::default())?;
    assert!(
        walk.subtrees.iter().all(Option::is_none),
        "the root's walk fed every subtree built"
    );
    let root = walk.hb.root();
    let mut nodes_written = walk.node_writes(|path| path).apply(txn, nodes_table)?;
    // In key order: the root's node first, then the subtrees'.
    subtrees.sort_unstable_by_key(|subtree| subtree.nibble);
    for subtree in &subtrees {
        nodes_written += subtree.writes.apply(txn, nodes_table)?;
    }
    let update = TrieUpdate {
        root,
        nodes_written,
    };
    Ok((update, Walked::Parallel))
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

/// Builds the subtrees of `jobs` that no other thread took.
fn build_subtrees<K: TransactionKind>(
    cursors: &mut TrieCursors<'_, K>,
    input: &TrieInput<'_>,
    jobs: &[u8],
    next_job: &AtomicUsize,
) -> Result<Vec<Subtree>, StorageError> {
    let mut built = Vec::new();
    while let Some(&nibble) = jobs.get(next_job.fetch_add(1, Ordering::Relaxed)) {
        built.push(build_subtree(cursors, input, nibble)?);
    }
    Ok(built)
}

/// Walks the subtree under the root's child `nibble` as a trie of its own.
fn build_subtree<K: TransactionKind>(
    cursors: &mut TrieCursors<'_, K>,
    input: &TrieInput<'_>,
    nibble: u8,
) -> Result<Subtree, StorageError> {
    let child = Nibbles::from_nibbles_unchecked([nibble]);
    let mut walk = Walk::new(cursors, input, HashBuilder::default().with_updates(true));
    walk.strip = 1;
    walk.descend(child)?;
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
    Ok(Subtree {
        nibble,
        top,
        writes,
    })
}
