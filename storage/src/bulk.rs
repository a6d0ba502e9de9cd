//! A whole state written at once into empty tables: the genesis allocation.
//!
//! [`BlockWriter::apply_state`](crate::BlockWriter::apply_state) puts each key where it belongs,
//! a B-tree search and a random page per key, and keeps the whole state's dirty pages in one
//! transaction: fine for a block, gigabytes of memory for 10,000,000 accounts. Here
//! every table is filled in key order with MDBX's `APPEND` (a put at the end of the last page:
//! no search, pages filled full): the hashed tables, their preimages and both tries together in
//! hashed order, the trie nodes built by a [`SortedTrie`] as the leaves go by. The work is cut
//! into transactions of [`CHUNK_ACCOUNTS`] accounts, so the dirty pages held at once stay
//! bounded. What it writes is what `apply_state` writes over empty tables, byte for
//! byte (`tests::bulk` compares the two).
//!
//! The state is not visible until the genesis block's transaction moves the head (a store
//! without a head has no state), so a crash midway leaves tables that [`write_state`] empties
//! before it starts again.

use crate::{
    Env, StorageError,
    codec::{self, AccountRecord},
    tables::Tables,
    trie::{NodeEntry, SortedTrie},
};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use kestrel_types::{AccountInfo, chain::GenesisAlloc};
use libmdbx::{Cursor, Database, RW, Transaction, WriteFlags};
use std::collections::BTreeMap;

/// Accounts per write transaction: some 40 MB of dirty pages with the tries and preimages
/// (funded accounts without storage), and few enough commits (40 for 10,000,000 accounts) that
/// their fsyncs do not matter.
pub(crate) const CHUNK_ACCOUNTS: usize = 250_000;

/// How far a bulk state write has come: `done` of `total` accounts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenesisProgress {
    pub done: u64,
    pub total: u64,
}

/// Writes `alloc` into the state tables of a store without a head (emptying them first) and
/// returns its state root, `chunk_accounts` accounts per transaction ([`CHUNK_ACCOUNTS`] but in
/// tests). Reports progress after each transaction.
pub(crate) fn write_state(
    db: &Database<Env>,
    alloc: &BTreeMap<Address, GenesisAlloc>,
    chunk_accounts: usize,
    progress: &mut dyn FnMut(GenesisProgress),
) -> Result<B256, StorageError> {
    let total = alloc.len() as u64;
    let txn = db.begin_rw_txn()?;
    {
        clear_state(&txn, &Tables::open(&txn)?)?;
    }
    txn.commit()?;

    // Hashed state and tries, in hashed order.
    let mut hashed: Vec<(B256, &Address, &GenesisAlloc)> = alloc
        .iter()
        .map(|(address, account)| (keccak256(address), address, account))
        .collect();
    hashed.sort_unstable_by_key(|(hashed_address, ..)| *hashed_address);
    let mut account_trie = SortedTrie::new(&[]);
    let mut account_nodes = NodeAppender::default();
    let mut storage_nodes = NodeAppender::default();
    let mut nodes = Vec::new();
    let mut slots = Vec::new();
    let mut leaf = Vec::with_capacity(128);
    let mut codes = BTreeMap::<B256, &Bytes>::new();
    let mut done = 0;
    for chunk in hashed.chunks(chunk_accounts) {
        let txn = db.begin_rw_txn()?;
        {
            let tables = Tables::open(&txn)?;
            let mut cursors = HashedCursors::open(&txn, &tables, &mut storage_nodes)?;
            let mut account_trie_table = txn.cursor(&tables.account_trie)?;
            for (hashed_address, address, account) in chunk {
                if let Some(code) = &account.code {
                    let hash = keccak256(code);
                    assert_eq!(
                        hash, account.info.code_hash,
                        "genesis code of {address} has another hash"
                    );
                    // As `StateChanges::insert_code`: empty code is not stored.
                    if !code.is_empty() {
                        codes.insert(hash, code);
                    }
                }
                slots.clear();
                slots.extend(
                    nonzero(&account.storage)
                        .map(|(slot, value)| (keccak256(slot.to_be_bytes::<32>()), *slot, *value)),
                );
                slots.sort_unstable_by_key(|(hashed_slot, ..)| *hashed_slot);
                let record =
                    cursors.put(hashed_address, address, account.info, &slots, &mut nodes)?;
                record.trie_rlp(&mut leaf);
                account_trie.add_leaf(*hashed_address, &leaf, &mut nodes);
                account_nodes.put(&mut account_trie_table, &mut nodes)?;
                done += 1;
            }
        }
        txn.commit()?;
        progress(GenesisProgress { done, total });
    }
    let root = account_trie.finish(&mut nodes);
    let txn = db.begin_rw_txn()?;
    {
        let tables = Tables::open(&txn)?;
        account_nodes.put(&mut txn.cursor(&tables.account_trie)?, &mut nodes)?;
        let mut bytecodes = txn.cursor(&tables.bytecodes)?;
        for (hash, code) in codes {
            bytecodes.put(hash.as_slice(), code, WriteFlags::APPEND)?;
        }
    }
    txn.commit()?;
    Ok(root)
}

/// The cursors that one account's hashed entries, preimages and storage trie go through, in
/// hashed-address order from one account to the next: the genesis writer's hashed pass, and
/// state sync's chunks (`snapshot::restore`), write accounts alike.
pub(crate) struct HashedCursors<'t, 'a> {
    accounts: Cursor<'t, RW>,
    storage: Cursor<'t, RW>,
    account_preimages: Cursor<'t, RW>,
    slot_preimages: Cursor<'t, RW>,
    storage_trie: Cursor<'t, RW>,
    storage_nodes: &'a mut NodeAppender,
}

/// A slot as [`HashedCursors::put`] takes it: its hash, the slot, its value (not zero).
pub(crate) type HashedSlot = (B256, U256, U256);

impl<'t, 'a> HashedCursors<'t, 'a> {
    pub fn open(
        txn: &'t Transaction<'_, RW, Env>,
        tables: &Tables<'t>,
        storage_nodes: &'a mut NodeAppender,
    ) -> Result<Self, StorageError> {
        Ok(Self {
            accounts: txn.cursor(&tables.hashed_accounts)?,
            storage: txn.cursor(&tables.hashed_storage)?,
            account_preimages: txn.cursor(&tables.account_preimages)?,
            slot_preimages: txn.cursor(&tables.slot_preimages)?,
            storage_trie: txn.cursor(&tables.storage_trie)?,
            storage_nodes,
        })
    }

    /// Appends `address`, at `hashed_address` (after every one put before), with its `slots`
    /// (in hashed-slot order), their preimages and its storage trie's nodes; returns its record,
    /// with the storage root. `nodes` is scratch space.
    pub fn put(
        &mut self,
        hashed_address: &B256,
        address: &Address,
        info: AccountInfo,
        slots: &[HashedSlot],
        nodes: &mut Vec<NodeEntry>,
    ) -> Result<AccountRecord, StorageError> {
        let mut storage_trie = SortedTrie::new(hashed_address.as_slice());
        let mut leaf = Vec::with_capacity(33);
        for (hashed_slot, slot, value) in slots {
            let (bytes, len) = codec::encode_slot_value(value);
            let key = codec::hashed_slot_key(hashed_address, hashed_slot);
            self.storage.put(&key, &bytes[..len], WriteFlags::APPEND)?;
            (self.slot_preimages).put(&key, &slot.to_be_bytes::<32>(), WriteFlags::APPEND)?;
            leaf.clear();
            alloy_rlp::Encodable::encode(value, &mut leaf);
            storage_trie.add_leaf(*hashed_slot, &leaf, nodes);
            self.storage_nodes.put(&mut self.storage_trie, nodes)?;
        }
        let storage_root = storage_trie.finish(nodes);
        self.storage_nodes.put(&mut self.storage_trie, nodes)?;
        let record = AccountRecord { info, storage_root };
        let (bytes, len) = record.encode();
        self.accounts
            .put(hashed_address.as_slice(), &bytes[..len], WriteFlags::APPEND)?;
        (self.account_preimages).put(
            hashed_address.as_slice(),
            address.as_slice(),
            WriteFlags::APPEND,
        )?;
        Ok(record)
    }
}

/// Builds the account trie of the hashed accounts a store holds (its table empty) and returns
/// the state root: one pass in hashed order, [`CHUNK_ACCOUNTS`] accounts per transaction. State
/// sync writes accounts a chunk at a time, resumably, and their trie once all are in.
pub(crate) fn account_trie(db: &Database<Env>) -> Result<B256, StorageError> {
    let mut trie = SortedTrie::new(&[]);
    let mut appender = NodeAppender::default();
    let (mut nodes, mut leaf) = (Vec::new(), Vec::with_capacity(128));
    let mut after: Option<B256> = None;
    loop {
        let txn = db.begin_rw_txn()?;
        let mut read = 0;
        {
            let tables = Tables::open(&txn)?;
            let mut table = txn.cursor(&tables.account_trie)?;
            let mut accounts = txn.cursor(&tables.hashed_accounts)?;
            let start = after.unwrap_or_default();
            let mut entry = accounts
                .set_range::<std::borrow::Cow<'_, [u8]>, std::borrow::Cow<'_, [u8]>>(
                    start.as_slice(),
                )?;
            while let Some((key, value)) = entry {
                let hashed = B256::try_from(key.as_ref()).map_err(|_| {
                    codec::corrupt(crate::tables::HASHED_ACCOUNTS, "key not 32 bytes")
                })?;
                if after != Some(hashed) {
                    if read == CHUNK_ACCOUNTS {
                        break;
                    }
                    AccountRecord::decode(crate::tables::HASHED_ACCOUNTS, &value)?
                        .trie_rlp(&mut leaf);
                    trie.add_leaf(hashed, &leaf, &mut nodes);
                    appender.put(&mut table, &mut nodes)?;
                    after = Some(hashed);
                    read += 1;
                }
                entry = accounts.next()?;
            }
        }
        txn.commit()?;
        if read < CHUNK_ACCOUNTS {
            break;
        }
    }
    let root = trie.finish(&mut nodes);
    let txn = db.begin_rw_txn()?;
    {
        let tables = Tables::open(&txn)?;
        appender.put(&mut txn.cursor(&tables.account_trie)?, &mut nodes)?;
    }
    txn.commit()?;
    Ok(root)
}

/// Empties every state table: what a write of a whole state starts from, whatever a write that
/// stopped midway left.
pub(crate) fn clear_state(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
) -> Result<(), StorageError> {
    for table in [
        &tables.account_preimages,
        &tables.slot_preimages,
        &tables.bytecodes,
        &tables.hashed_accounts,
        &tables.hashed_storage,
        &tables.account_trie,
        &tables.storage_trie,
    ] {
        txn.clear_table(table)?;
    }
    // The account trie is written whole: none of its values wait in memory.
    txn.del(&tables.metadata, crate::tables::DEFERRED_KEY, None)?;
    Ok(())
}

/// The slots `apply_state` would store: a zero value is no entry.
fn nonzero(storage: &BTreeMap<U256, U256>) -> impl Iterator<Item = (&U256, &U256)> {
    storage.iter().filter(|(_, value)| !value.is_zero())
}

/// Writes a trie's nodes to its table, appending all but its root: a trie hands its root node
/// out last, but it sorts first under the trie's prefix, so it is the one put in place.
#[derive(Default)]
pub(crate) struct NodeAppender {
    /// The greatest key written so far.
    last: Vec<u8>,
}

impl NodeAppender {
    pub fn put(
        &mut self,
        table: &mut Cursor<'_, RW>,
        nodes: &mut Vec<NodeEntry>,
    ) -> Result<(), StorageError> {
        for (key, value) in nodes.drain(..) {
            if key > self.last {
                table.put(&key, &value, WriteFlags::APPEND)?;
                self.last = key;
            } else {
                table.put(&key, &value, WriteFlags::UPSERT)?;
            }
        }
        Ok(())
    }
}
