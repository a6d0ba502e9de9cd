//! One block's write transaction: [`BlockWriter::apply_state`] writes the state and updates the
//! tries incrementally, [`BlockWriter::insert_block`] the block and its history (its body and
//! receipts to the block archive), and [`BlockWriter::commit`] commits both at once.

use crate::{
    Env, HistoryWindow, StorageError,
    blocks::Blocks,
    codec::{self, AccountRecord},
    history::{self, ChangeRecorder},
    preimages, read_block_hash, read_head,
    state_cache::{CacheWrite, StateCache},
    sync::Writing,
    tables::{self, HEAD_KEY, Tables},
    trie::{self, InPlace, Leaves, Records, TrieCursors, TrieInput, Walked},
    tx_index::RecentTxs,
};
use alloy_consensus::ReceiptEnvelope;
use alloy_primitives::{Address, B256, keccak256};
use alloy_rlp::Encodable;
use alloy_trie::EMPTY_ROOT_HASH;
use kestrel_types::{AccountInfo, BlockNumber, RecoveredTx, SealedBlock, StateChanges};
use libmdbx::{Database, RW, Table, Transaction, WriteFlags};
use std::{borrow::Cow, collections::BTreeMap, time::Instant};

/// One block's write transaction: state, trie and block data commit atomically. Dropping it
/// without [`BlockWriter::commit`] discards everything written through it.
pub struct BlockWriter<'s> {
    pub(crate) txn: Transaction<'s, RW, Env>,
    pub(crate) db: &'s Database<Env>,
    pub(crate) archive: &'s Blocks,
    /// The last block whose body and receipts this writer appended to the archive: the MDBX
    /// commit waits until it is durable there.
    pub(crate) appended: Option<u64>,
    pub(crate) history: HistoryWindow,
    /// What [`BlockWriter::apply_state`] overwrote, stored by [`BlockWriter::insert_block`] as
    /// the history of the block it inserts (not stored for a block never inserted).
    pub(crate) recorder: Option<ChangeRecorder>,
    pub(crate) tx_index: &'s RecentTxs,
    /// The transaction hashes of the blocks inserted, for the index once committed.
    pub(crate) inserted: Vec<(BlockNumber, Vec<B256>)>,
    /// Keeps the sync thread off MDBX's writer lock, which this transaction holds.
    pub(crate) writing: Writing<'s>,
    /// Whether [`BlockWriter::apply_state`] wrote state in this transaction: the account trie's
    /// helper threads read the last commit, so they may only serve the first block.
    pub(crate) state_written: bool,
    /// The account trie's bottom subtrees' top branches as of the last commit, and what each
    /// block of this transaction does to them, applied once it commits.
    pub(crate) bottoms: &'s std::sync::Arc<trie::BottomCache>,
    pub(crate) block_tops: Vec<trie::BlockTops>,
    /// The account trie's branches whose writes wait in memory: the views of the commits, the
    /// last commit's (which this transaction started from), and this transaction's.
    pub(crate) deferred: &'s trie::DeferredNodes,
    pub(crate) committed_view: std::sync::Arc<trie::View>,
    pub(crate) pending: trie::Pending,
    /// The readers' cache of recent values, and what this transaction's blocks wrote, in order:
    /// it takes them as the transaction commits.
    pub(crate) state_cache: &'s StateCache,
    pub(crate) cache_writes: Vec<CacheWrite>,
}

/// What a block does to an account's record.
enum AccountChange<'a> {
    /// Sets its fields (`None`: deletes it and its storage); its storage root is the one its
    /// storage changes gave, else its old one.
    Set(Option<&'a AccountInfo>),
    /// Only its storage changed: its new storage root beside its old fields.
    StorageRoot,
}

/// Deletes every entry whose key starts with `prefix`; returns how many there were.
pub(crate) fn delete_prefix(
    txn: &Transaction<'_, RW, Env>,
    table: &Table<'_>,
    prefix: &[u8],
) -> Result<usize, StorageError> {
    let mut cursor = txn.cursor(table)?;
    let mut entry = cursor.set_range::<Cow<'_, [u8]>, ()>(prefix)?;
    let mut deleted = 0;
    while let Some((key, ())) = entry {
        if !key.starts_with(prefix) {
            break;
        }
        cursor.del(WriteFlags::empty())?;
        deleted += 1;
        // After a deletion MDBX's next step lands on the entry that followed the deleted one.
        entry = cursor.next()?;
    }
    Ok(deleted)
}

impl BlockWriter<'_> {
    /// Applies one block's state changes (hashed state, preimages of new keys, code), updates
    /// the trie incrementally and returns the new state root.
    ///
    /// An account set to `None` loses its storage too, whatever slots the changes list for it.
    /// A storage change for an account the changes do not set must be to an existing account.
    ///
    /// Records the values it overwrites as the history of the head's next block (none for
    /// genesis: nothing was before it), which `insert_block` stores.
    pub fn apply_state(&mut self, changes: &StateChanges) -> Result<B256, StorageError> {
        self.apply_state_walked(changes).map(|(root, _)| root)
    }

    /// [`BlockWriter::apply_state`], and how it walked the account trie.
    pub(crate) fn apply_state_walked(
        &mut self,
        changes: &StateChanges,
    ) -> Result<(B256, Walked), StorageError> {
        let started = Instant::now();
        let txn = &self.txn;
        let tables = Tables::open(txn)?;
        let mut nodes_written = 0;
        if self.recorder.is_none() && self.history.records() {
            self.recorder = read_head(txn, &tables)?.map(|head| ChangeRecorder::new(head + 1));
        }
        let history = &mut self.recorder;
        let cache_writes = &mut self.cache_writes;
        // At most one a changed account and slot: no reallocations of some 4 MiB a block.
        cache_writes.reserve(
            changes.accounts.len()
                + changes.storage.len()
                + changes
                    .storage
                    .values()
                    .map(|change| change.slots.len())
                    .sum::<usize>(),
        );

        for (hash, code) in &changes.codes {
            txn.put(&tables.bytecodes, hash, code, WriteFlags::UPSERT)?;
        }

        // Storage first: the account leaves need the new storage roots.
        let mut cursors = TrieCursors {
            hashed: txn.cursor(&tables.hashed_storage)?,
            nodes: txn.cursor(&tables.storage_trie)?,
            fresh: trie::Fresh::Nothing,
        };
        let mut storage_roots = BTreeMap::new();
        let (mut slots, mut changed_slots, mut in_place) = (Vec::new(), Vec::new(), Vec::new());
        for (address, change) in &changes.storage {
            if changes.accounts.get(address) == Some(&None) {
                continue;
            }
            let hashed_address = keccak256(address);
            if change.wiped {
                if let Some(history) = history {
                    history.all_slots(txn, &tables, address)?;
                }
                if wipe_storage(txn, &tables, &hashed_address)? {
                    cache_writes.push(CacheWrite::WipedStorage);
                }
            }
            // In hashed order, each through the cursor its old value's read left on it: one
            // B-tree search for both, on pages the slot before has mostly just visited.
            slots.clear();
            slots.extend(
                (change.slots.iter())
                    .map(|(slot, value)| (keccak256(slot.to_be_bytes::<32>()), slot, value)),
            );
            slots.sort_unstable_by_key(|(hashed_slot, ..)| *hashed_slot);
            changed_slots.clear();
            in_place.clear();
            for &(hashed_slot, slot, value) in &slots {
                let hashed_key = codec::hashed_slot_key(&hashed_address, &hashed_slot);
                let old = cursors.hashed.set::<Cow<'_, [u8]>>(hashed_key.as_slice())?;
                let existed = old.is_some();
                if let Some(history) = history {
                    history.slot(address, slot, old.as_deref());
                }
                drop(old);
                if value.is_zero() {
                    if existed {
                        cursors.hashed.del(WriteFlags::empty())?;
                    }
                } else {
                    if !existed {
                        preimages::put_slot(txn, &tables, &hashed_key, slot)?;
                    }
                    let (bytes, len) = codec::encode_slot_value(value);
                    let flags = match existed {
                        true => WriteFlags::CURRENT,
                        false => WriteFlags::UPSERT,
                    };
                    cursors
                        .hashed
                        .put(hashed_key.as_slice(), &bytes[..len], flags)?;
                }
                cache_writes.push(CacheWrite::Slot(*address, *slot, *value));
                changed_slots.push(hashed_slot);
                in_place.push((existed && !value.is_zero()).then_some(InPlace::Slot(*value)));
            }
            let input = TrieInput {
                leaves: Leaves::Storage,
                prefix: hashed_address.as_slice(),
                changed: &changed_slots,
                overlay: &[],
                in_place: &in_place,
            };
            let update = trie::update(txn, &tables.storage_trie, &mut cursors, &input)?;
            nodes_written += update.nodes_written;
            storage_roots.insert(*address, update.root);
        }
        drop(cursors);

        // Accounts, in hashed order: records are read, written and walked front to back.
        let mut accounts: Vec<(B256, &Address, AccountChange<'_>)> = changes
            .accounts
            .iter()
            .map(|(address, info)| (address, AccountChange::Set(info.as_ref())))
            .chain(
                (storage_roots.keys())
                    .filter(|address| !changes.accounts.contains_key(*address))
                    .map(|address| (address, AccountChange::StorageRoot)),
            )
            .map(|(address, change)| (keccak256(address), address, change))
            .collect();
        accounts.sort_unstable_by_key(|(hashed, ..)| *hashed);
        let changed_accounts: Vec<B256> = accounts.iter().map(|(hashed, ..)| *hashed).collect();
        // Writes the new records of a run of `accounts` (their history and preimages recorded)
        // and returns them. Each is written through the cursor its old record's read left on
        // it: one B-tree search for both.
        let mut cursor = txn.cursor(&tables.hashed_accounts)?;
        let records = |range: std::ops::Range<usize>| -> Result<Records, StorageError> {
            let mut records = Records::with_capacity(range.len());
            for (hashed_address, address, change) in &accounts[range] {
                let old = cursor
                    .set::<Cow<'_, [u8]>>(hashed_address.as_slice())?
                    .map(|bytes| AccountRecord::decode(tables::HASHED_ACCOUNTS, &bytes))
                    .transpose()?;
                let record = match change {
                    AccountChange::Set(account) => {
                        if let Some(history) = history.as_mut() {
                            history.account(address, old.as_ref());
                            if account.is_none() {
                                history.all_slots(txn, &tables, address)?;
                            }
                        }
                        match account {
                            None => {
                                if wipe_storage(txn, &tables, hashed_address)? {
                                    cache_writes.push(CacheWrite::WipedStorage);
                                }
                                None
                            }
                            Some(info) => {
                                if old.is_none() {
                                    preimages::put_account(txn, &tables, hashed_address, address)?;
                                }
                                let storage_root = match storage_roots.get(*address) {
                                    Some(root) => *root,
                                    None => old.map_or(EMPTY_ROOT_HASH, |old| old.storage_root),
                                };
                                Some(AccountRecord {
                                    info: **info,
                                    storage_root,
                                })
                            }
                        }
                    }
                    AccountChange::StorageRoot => {
                        let Some(old) = old else {
                            panic!("storage changed for {address}, which does not exist");
                        };
                        Some(AccountRecord {
                            storage_root: storage_roots[*address],
                            ..old
                        })
                    }
                };
                match &record {
                    Some(record) => {
                        let (bytes, len) = record.encode();
                        let flags = match old {
                            Some(_) => WriteFlags::CURRENT,
                            None => WriteFlags::UPSERT,
                        };
                        cursor.put(hashed_address.as_slice(), &bytes[..len], flags)?;
                    }
                    None if old.is_some() => cursor.del(WriteFlags::empty())?,
                    None => {}
                }
                cache_writes.push(CacheWrite::Account(**address, record.map(|r| r.info)));
                let in_place = match (&old, &record) {
                    (Some(_), Some(record)) => Some(InPlace::Account(*record)),
                    _ => None,
                };
                records.push(*hashed_address, record, in_place);
            }
            Ok(records)
        };
        let accounts_tables = trie::AccountTables {
            hashed: &tables.hashed_accounts,
            nodes: &tables.account_trie,
            pending: &self.pending,
            committed: &self.committed_view,
        };
        // Helper threads read the last commit, which lacks this transaction's earlier blocks.
        let snapshot = (!self.state_written).then_some(self.db);
        let trie::AccountsUpdate {
            update,
            walked,
            tops,
        } = trie::update_accounts(
            txn,
            snapshot,
            self.bottoms,
            &accounts_tables,
            &changed_accounts,
            records,
        )?;
        self.block_tops.push(trie::BlockTops {
            changed: changed_accounts,
            tops,
        });
        self.state_written = true;
        nodes_written += update.nodes_written;
        metrics::counter!("kestrel_storage_account_trie_walks_total", "walk" => walked.label())
            .increment(1);
        metrics::counter!("kestrel_storage_trie_nodes_updated_total").increment(nodes_written);
        metrics::histogram!("kestrel_storage_state_root_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok((update.root, walked))
    }

    /// Appends block `number`'s body and receipts to the block archive ahead of its
    /// [`BlockWriter::insert_block`], whose append it then is: the commit stage has them before
    /// the block's state root, so the archive's write and fsync run while
    /// [`BlockWriter::apply_state`] computes it. `number` is the head's next block (or the one
    /// after the last appended, for a transaction of several blocks).
    pub fn append_body(
        &mut self,
        number: BlockNumber,
        txs: &[RecoveredTx],
        receipts: &[ReceiptEnvelope],
    ) -> Result<(), StorageError> {
        self.archive.append(number, txs, receipts)?;
        self.appended = Some(number);
        Ok(())
    }

    /// Stores header and tx index, and moves the committed head to this block; appends body and
    /// receipts to the block archive (unless [`BlockWriter::append_body`] did), whose writer
    /// stage writes and syncs them while this transaction goes on.
    ///
    /// Blocks are inserted in order: genesis first, then each child of the head.
    pub fn insert_block(&mut self, block: &SealedBlock) -> Result<(), StorageError> {
        let txn = &self.txn;
        let tables = Tables::open(txn)?;
        let number = block.number();
        match read_head(txn, &tables)? {
            None => assert_eq!(number, 0, "the first block inserted must be genesis"),
            Some(head) => {
                assert_eq!(number, head + 1, "block {number} inserted on head {head}");
                let parent = read_block_hash(txn, &tables, head)?;
                assert_eq!(
                    parent,
                    Some(block.header.parent_hash),
                    "block {number}'s parent"
                );
            }
        }
        if self.appended != Some(number) {
            self.archive.append(number, &block.txs, &block.receipts)?;
            self.appended = Some(number);
        }
        let key = number.to_be_bytes();
        let mut header = Vec::with_capacity(block.header.length());
        block.header.encode(&mut header);
        txn.put(&tables.headers, key, &header, WriteFlags::UPSERT)?;
        txn.put(
            &tables.canonical_hashes,
            key,
            block.hash,
            WriteFlags::UPSERT,
        )?;
        txn.put(&tables.block_numbers, block.hash, key, WriteFlags::UPSERT)?;
        // The transaction index takes them in batches (`tx_index`).
        self.inserted
            .push((number, block.txs.iter().map(|tx| tx.hash()).collect()));
        txn.put(&tables.metadata, HEAD_KEY, key, WriteFlags::UPSERT)?;
        let started = Instant::now();
        if let Some(recorder) = self.recorder.take() {
            recorder.write(txn, &tables, number)?;
            metrics::histogram!(history::SECONDS, "step" => "record")
                .record(started.elapsed().as_secs_f64());
        }
        let started = Instant::now();
        history::prune(txn, &tables, self.history, number)?;
        metrics::histogram!(history::SECONDS, "step" => "move")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Commits everything written through this writer: the blocks' archive records durable
    /// first (a database head never runs ahead of the archive, even after a power loss), then
    /// the MDBX transaction, into the OS page cache: the store's sync thread makes it durable
    /// ([`crate::sync`]) while the next block goes on.
    pub fn commit(self) -> Result<(), StorageError> {
        if let Some(number) = self.appended {
            self.archive.wait_durable(number)?;
        }
        let progress = {
            let tables = Tables::open(&self.txn)?;
            self.tx_index
                .write_batch(&self.txn, &tables, &self.inserted)?
        };
        let started = Instant::now();
        let deferred = self.deferred;
        deferred.prepare(&self.txn, &self.committed_view, self.pending.into_inner())?;
        // The caches' inserts run beside MDBX's page writes, which keep one core in the kernel:
        // the bottom cache's (some 40,000 rebuilt branches a block at 10,000,000 accounts), which
        // no walk reads before this returns (only a later write transaction's helpers do), and
        // the state cache's, whose readers of this commit read MDBX until they are in.
        let (state_cache, cache_writes, txn_id) =
            (self.state_cache, self.cache_writes, self.txn.id());
        state_cache.begin_apply(txn_id);
        let (bottoms, block_tops) = (self.bottoms, self.block_tops);
        let committed = std::thread::scope(|scope| {
            let kept = std::thread::Builder::new()
                .name("commit-caches".into())
                .spawn_scoped(scope, move || {
                    bottoms.commit(block_tops);
                    state_cache.apply(txn_id, &cache_writes);
                })
                .map_err(StorageError::RootThread)?;
            let committed = self.txn.commit();
            if let Err(panic) = kept.join() {
                std::panic::resume_unwind(panic);
            }
            committed.map_err(StorageError::from)
        });
        deferred.committed(committed.is_ok());
        state_cache.committed(committed.is_ok());
        if committed.is_err() {
            // It now holds branches of a state that never committed.
            bottoms.clear();
        }
        committed?;
        self.writing
            .committed(self.inserted.last().map(|(number, _)| *number));
        metrics::histogram!("kestrel_storage_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        self.tx_index.committed(self.inserted, progress);
        let size = self.db.info()?.geometry().current_size();
        metrics::gauge!("kestrel_storage_db_size_bytes").set(size as f64);
        Ok(())
    }
}

/// Deletes all storage of an account: its slots and its storage trie (not the slots' preimages).
/// Returns whether it had any slot.
fn wipe_storage(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    hashed_address: &B256,
) -> Result<bool, StorageError> {
    let slots = delete_prefix(txn, &tables.hashed_storage, hashed_address.as_slice())?;
    delete_prefix(txn, &tables.storage_trie, hashed_address.as_slice())?;
    Ok(slots > 0)
}
