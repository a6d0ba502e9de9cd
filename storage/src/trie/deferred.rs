//! The account trie's depth-4 branches, written to the node table every few commits, not every
//! block.
//!
//! At 10,000,000 accounts a block of 10,000 transfers changes keys under most of the 65,536
//! depth-4 branches, and each rewrite dirties a node page of its own: some 6,000 of a block's
//! 33,000 pages (23.5 MiB, BENCHMARKS.md). The next block rewrites most of them again. So an
//! in-place update of an existing depth-4 branch (its key already in the table) is kept in
//! memory and written only at every [`CHECKPOINT_COMMITS`]-th commit, and at a clean close; a
//! branch created or deleted goes to the table at once, so which keys the table holds is always
//! the trie's, and a walk's `set_range` finds the same node it would find with every value
//! written. A read of a deferred branch takes the value kept here in place of the table's.
//!
//! The values as of each commit form a [`View`]. A read transaction takes the view of the commit
//! it reads, by MDBX transaction id ([`DeferredNodes::view_at`]): a reader at commit N must not
//! see N+1's branches over N's leaves. The write transaction reads and extends its own pending
//! view ([`Pending`]), published under its transaction id before MDBX commits it (readers of
//! older commits do not pick it) and withdrawn if the commit fails.
//!
//! A crash between checkpoints leaves stale depth-4 values in the table. Every commit that
//! leaves values deferred has [`DEFERRED_KEY`] in its metadata; an open that finds it rebuilds
//! the account trie from the hashed accounts ([`repair`]: one pass over them, as a state sync's
//! restore builds its trie) and checks the root against the head's header before anything reads
//! the trie.

use crate::{
    Env, StorageError, bulk, codec,
    tables::{self, DEFERRED_KEY, Tables},
};
use alloy_consensus::Header;
use alloy_primitives::B256;
use alloy_rlp::Decodable;
use alloy_trie::Nibbles;
use libmdbx::{Cursor, Database, RW, Transaction, TransactionKind, WriteFlags};
use parking_lot::Mutex;
use std::{borrow::Cow, cell::RefCell, collections::VecDeque, sync::Arc};

/// The depth of the account-trie branches whose in-place updates wait for a checkpoint.
#[cfg(not(test))]
pub(crate) const DEFERRED_DEPTH: usize = 4;
/// The tests' tries hold hundreds of keys: depth-1 branches are their stored branches below the
/// root.
#[cfg(test)]
pub(crate) const DEFERRED_DEPTH: usize = 1;

/// Every this many commits, the deferred values are written to the node table. Each branch is
/// then written at most once in this many blocks; a crash costs a rebuild of the account trie.
#[cfg(not(test))]
const CHECKPOINT_COMMITS: u32 = 8;
#[cfg(test)]
const CHECKPOINT_COMMITS: u32 = 3;

/// Views kept for read transactions that begin while commits go on: a reader looks its view up
/// right after it begins, so it needs one of the last few.
const VIEWS_KEPT: usize = 8;

/// Slots in a view: one per path of length [`DEFERRED_DEPTH`].
const SLOTS: usize = 1 << (4 * DEFERRED_DEPTH);

/// The deferred values as of one commit: the encoded node by path ([`slot`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Empty when nothing is deferred, else [`SLOTS`] long.
    nodes: Vec<Option<Arc<[u8]>>>,
    deferred: usize,
}

impl View {
    /// The deferred value of the account-trie branch at `path`, if any.
    pub fn get(&self, path: &Nibbles) -> Option<Arc<[u8]>> {
        if path.len() != DEFERRED_DEPTH {
            return None;
        }
        self.nodes.get(slot(path.iter()))?.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.deferred == 0
    }

    fn set(&mut self, slot: usize, value: Option<Arc<[u8]>>) {
        if self.nodes.is_empty() {
            if value.is_none() {
                return;
            }
            self.nodes.resize(SLOTS, None);
        }
        let old = std::mem::replace(&mut self.nodes[slot], value);
        match (old.is_some(), self.nodes[slot].is_some()) {
            (false, true) => self.deferred += 1,
            (true, false) => self.deferred -= 1,
            _ => {}
        }
    }

    /// The deferred values with their node-table keys, in key order.
    fn entries(&self) -> impl Iterator<Item = (Vec<u8>, &Arc<[u8]>)> {
        (self.nodes.iter().enumerate())
            .filter_map(|(slot, value)| Some((slot_key(slot), value.as_ref()?)))
    }
}

/// The slot of a path of [`DEFERRED_DEPTH`] nibbles.
fn slot(nibbles: impl Iterator<Item = u8>) -> usize {
    nibbles.fold(0, |slot, nibble| (slot << 4) | usize::from(nibble))
}

/// The node-table key (the nibbles, a byte each) of `slot`.
fn slot_key(slot: usize) -> Vec<u8> {
    (0..DEFERRED_DEPTH)
        .rev()
        .map(|i| ((slot >> (4 * i)) & 0xf) as u8)
        .collect()
}

/// The deferrable slot of a node-table key of the account trie, if it is one.
fn key_slot(key: &[u8]) -> Option<usize> {
    (key.len() == DEFERRED_DEPTH).then(|| slot(key.iter().copied()))
}

/// The deferred values a walk reads the account trie's nodes with.
pub(crate) enum Fresh<'a> {
    /// None: a storage trie, or a walk over a table with nothing deferred.
    Nothing,
    /// A read transaction's, or the last commit's for a write transaction's helpers.
    View(Arc<View>),
    /// The write transaction's own.
    Pending(&'a Pending),
}

impl Fresh<'_> {
    /// The deferred value of the branch at `path`, if any.
    pub fn get(&self, path: &Nibbles) -> Option<Arc<[u8]>> {
        match self {
            Fresh::Nothing => None,
            Fresh::View(view) => view.get(path),
            Fresh::Pending(pending) => pending.borrow().get(path),
        }
    }
}

/// A write transaction's view: the last commit's, plus what its blocks deferred. Read and
/// extended on the writer's thread only.
pub(crate) type Pending = RefCell<Arc<View>>;

/// The views of the last commits, and how many commits since the last checkpoint.
#[derive(Default)]
pub(crate) struct DeferredNodes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By the MDBX transaction id of the commit, ascending.
    views: VecDeque<(u64, Arc<View>)>,
    since_checkpoint: u32,
}

impl DeferredNodes {
    /// The view of the commit a read transaction with id `txn_id` reads: the newest published
    /// at or before it. `None` if that one is no longer kept (the reader began long before it
    /// asked): begin a new transaction.
    pub fn view_at(&self, txn_id: u64) -> Option<Arc<View>> {
        let inner = self.inner.lock();
        match inner.views.iter().rev().find(|(id, _)| *id <= txn_id) {
            Some((_, view)) => Some(view.clone()),
            // Nothing published yet: nothing is deferred.
            None if inner.views.is_empty() => Some(Arc::default()),
            None => None,
        }
    }

    /// The view of the last commit: where a write transaction starts.
    pub fn latest(&self) -> Arc<View> {
        let inner = self.inner.lock();
        inner
            .views
            .back()
            .map(|(_, view)| view.clone())
            .unwrap_or_default()
    }

    /// Forgets every view: the node table was written whole (genesis, a state sync's restore),
    /// its every value current.
    pub fn reset(&self) {
        *self.inner.lock() = Inner::default();
        metrics::gauge!("kestrel_storage_trie_deferred_nodes").set(0.0);
    }

    /// Before `txn` (a block's write transaction, which started from `base`) commits: writes
    /// the deferred values to the node table if a checkpoint is due, else keeps them and marks
    /// the table stale, and publishes the view of the commit. Then commit and call
    /// [`DeferredNodes::committed`] with the outcome.
    pub fn prepare(
        &self,
        txn: &Transaction<'_, RW, Env>,
        base: &Arc<View>,
        pending: Arc<View>,
    ) -> Result<(), StorageError> {
        let due = self.inner.lock().since_checkpoint + 1 >= CHECKPOINT_COMMITS;
        self.publish(txn, base, pending, due)
    }

    /// [`DeferredNodes::prepare`], writing the values if `checkpoint`.
    fn publish(
        &self,
        txn: &Transaction<'_, RW, Env>,
        base: &Arc<View>,
        pending: Arc<View>,
        checkpoint: bool,
    ) -> Result<(), StorageError> {
        let tables = Tables::open(txn)?;
        let written = match checkpoint {
            true => pending.deferred,
            false => 0,
        };
        // Every commit, so that the counter is exported from the start.
        metrics::counter!("kestrel_storage_trie_deferred_written_total").increment(written as u64);
        let view = if checkpoint && !pending.is_empty() {
            let mut cursor = txn.cursor(&tables.account_trie)?;
            for (key, value) in pending.entries() {
                // A deferred branch's key stays in the table until the branch is deleted, which
                // also ends its deferral.
                let existed = cursor.set::<()>(&key)?.is_some();
                assert!(existed, "deferred trie node {key:x?} not in the table");
                cursor.put(&key, value, WriteFlags::CURRENT)?;
            }
            Arc::default()
        } else {
            pending
        };
        match (base.is_empty(), view.is_empty()) {
            (true, false) => txn.put(&tables.metadata, DEFERRED_KEY, [], WriteFlags::UPSERT)?,
            (false, true) => txn.del(&tables.metadata, DEFERRED_KEY, None).map(drop)?,
            _ => {}
        }
        let mut inner = self.inner.lock();
        if inner.views.is_empty() {
            // The last commit's, for the readers that begin while this one commits.
            inner.views.push_back((txn.id() - 1, base.clone()));
        }
        if inner.views.len() == VIEWS_KEPT {
            inner.views.pop_front();
        }
        metrics::gauge!("kestrel_storage_trie_deferred_nodes").set(view.deferred as f64);
        inner.views.push_back((txn.id(), view));
        Ok(())
    }

    /// After the commit [`DeferredNodes::prepare`] prepared: withdraws its view if it failed.
    pub fn committed(&self, ok: bool) {
        let mut inner = self.inner.lock();
        if !ok {
            inner.views.pop_back();
            return;
        }
        let checkpoint = inner.views.back().is_some_and(|(_, view)| view.is_empty());
        inner.since_checkpoint = match checkpoint {
            true => 0,
            false => inner.since_checkpoint + 1,
        };
    }

    /// At a clean close: writes the deferred values, so that the next open finds the table
    /// current.
    pub fn checkpoint(&self, db: &Database<Env>) -> Result<(), StorageError> {
        let base = self.latest();
        if base.is_empty() {
            return Ok(());
        }
        let txn = db.begin_rw_txn()?;
        self.publish(&txn, &base, base.clone(), true)?;
        let committed = txn.commit();
        self.committed(committed.is_ok());
        committed?;
        Ok(())
    }
}

/// Keeps one written node of the account trie (key, value) in `pending` when it is a deferrable
/// branch that `replaces` one the walk read from the table (so its key is there); returns
/// whether it did. Else the caller writes it, and a value kept for its key is dropped.
pub(crate) fn defer(
    cursor: &mut Cursor<'_, RW>,
    pending: &Pending,
    key: &[u8],
    value: &[u8],
    replaces: bool,
) -> Result<bool, StorageError> {
    let Some(slot) = key_slot(key) else {
        return Ok(false);
    };
    if !replaces {
        deleted(pending, key);
        return Ok(false);
    }
    debug_assert!(cursor.set::<()>(key)?.is_some(), "{key:x?} was read");
    Arc::make_mut(&mut pending.borrow_mut()).set(slot, Some(Arc::from(value)));
    Ok(true)
}

/// Forgets the deferred value of an account-trie node deleted or written, if it had one.
pub(crate) fn deleted(pending: &Pending, key: &[u8]) {
    if let Some(slot) = key_slot(key)
        && pending
            .borrow()
            .nodes
            .get(slot)
            .is_some_and(Option::is_some)
    {
        Arc::make_mut(&mut pending.borrow_mut()).set(slot, None);
    }
}

/// At open: if the last commit left depth-[`DEFERRED_DEPTH`] values deferred (a crash, not a
/// clean close), rebuilds the account trie from the hashed accounts and checks its root against
/// the head's header. Returns whether it did.
pub(crate) fn repair(db: &Database<Env>) -> Result<bool, StorageError> {
    let head_root = {
        let txn = db.begin_ro_txn()?;
        let tables = Tables::open(&txn)?;
        if txn.get::<()>(&tables.metadata, DEFERRED_KEY)?.is_none() {
            return Ok(false);
        }
        head_state_root(&txn, &tables)?
    };
    tracing::warn!(
        target: "storage",
        "the last commit before a crash left account-trie branches in memory: rebuilding the account trie"
    );
    let started = std::time::Instant::now();
    let txn = db.begin_rw_txn()?;
    txn.clear_table(&Tables::open(&txn)?.account_trie)?;
    txn.commit()?;
    let root = bulk::account_trie(db)?;
    if let Some(head_root) = head_root
        && head_root != root
    {
        return Err(codec::corrupt(
            tables::ACCOUNT_TRIE,
            format!("rebuilt account trie's root {root} is not the head's state root {head_root}"),
        ));
    }
    let txn = db.begin_rw_txn()?;
    txn.del(&Tables::open(&txn)?.metadata, DEFERRED_KEY, None)?;
    txn.commit()?;
    tracing::info!(
        target: "storage",
        %root,
        seconds = started.elapsed().as_secs_f64(),
        "account trie rebuilt"
    );
    Ok(true)
}

/// The state root in the head's header (`None` without a head).
fn head_state_root<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<B256>, StorageError> {
    let Some(head) = crate::read_head(txn, tables)? else {
        return Ok(None);
    };
    let Some(bytes) = txn.get::<Cow<'_, [u8]>>(&tables.headers, &head.to_be_bytes())? else {
        return Ok(None);
    };
    let header = Header::decode(&mut bytes.as_ref())
        .map_err(|err| codec::corrupt(tables::HEADERS, format!("head header: {err}")))?;
    Ok(Some(header.state_root))
}
