//! A walk's changes to a trie's node table, written through one cursor; the account trie's
//! in-place updates of deferrable branches kept in memory instead ([`deferred`]).

use super::{
    NodeEntry,
    deferred::{self, Pending},
};
use crate::StorageError;
use libmdbx::{DatabaseKind, RW, Table, Transaction, WriteFlags};

/// What a walk changes in the node table: the nodes it visited that are gone (keys), and the
/// nodes the hash builder rebuilt; each sorted by key.
pub(crate) struct NodeWrites {
    deleted: Vec<Vec<u8>>,
    written: Vec<NodeEntry>,
    /// Whether each of `written` replaces a node the walk read from the table.
    replaces: Vec<bool>,
}

impl NodeWrites {
    /// The writes of `deleted` keys and `written` nodes (each with whether it replaces a node
    /// the walk read), in any order.
    pub fn new(mut deleted: Vec<Vec<u8>>, mut written: Vec<(NodeEntry, bool)>) -> Self {
        written.sort_unstable_by(|((a, _), _), ((b, _), _)| a.cmp(b));
        deleted.sort_unstable();
        let (written, replaces) = written.into_iter().unzip();
        Self {
            deleted,
            written,
            replaces,
        }
    }

    /// Writes them; returns their number. Through one cursor, in key order: a key on the page
    /// the one before it left the cursor on is found without a search from the tree's root
    /// (at 10,000,000 accounts a block rewrites some 20,000 nodes, a few to a page). With
    /// `pending` (the account trie's, in a block's write transaction), an in-place update of a
    /// deferrable branch waits there instead ([`deferred`]).
    pub fn apply<E: DatabaseKind>(
        &self,
        txn: &Transaction<'_, RW, E>,
        nodes_table: &Table<'_>,
        pending: Option<&Pending>,
    ) -> Result<u64, StorageError> {
        debug_assert!(
            self.deleted.is_sorted() && self.written.is_sorted_by(|(a, _), (b, _)| a < b)
        );
        let mut cursor = txn.cursor(nodes_table)?;
        for key in &self.deleted {
            let existed = cursor.set::<()>(key)?.is_some();
            assert!(existed, "visited trie node {key:x?} vanished");
            cursor.del(WriteFlags::empty())?;
            if let Some(pending) = pending {
                deferred::deleted(pending, key);
            }
        }
        for ((key, value), replaces) in self.written.iter().zip(&self.replaces) {
            let deferred = match pending {
                Some(pending) => deferred::defer(&mut cursor, pending, key, value, *replaces)?,
                None => false,
            };
            if !deferred {
                cursor.put(key, value, WriteFlags::UPSERT)?;
            }
        }
        Ok((self.deleted.len() + self.written.len()) as u64)
    }
}
