//! State snapshots for state sync (issue 16): the state at the head split into chunks, each of
//! which a syncing node can check on its own, so that a peer serving a bad chunk is caught at
//! that chunk and the chunk asked of another peer.
//!
//! **Chunks.** Chunk `i` of depth `d` holds every account whose hashed address starts with the
//! `d` nibbles of `i` (16^d chunks), in hashed-key order, each with its code and all its storage
//! slots: plain keys (address, slot), read from the store's preimages, because a synced node
//! keys its history by them and must fill its own preimages.
//!
//! **What a chunk is checked against.** The *top* of the account trie, its nodes on paths
//! shorter than `d` ([`Reader::snapshot_top`]), hashes up to the state root of a block the
//! syncing node already trusts (finalized, with its certificate). Walking the top from the root
//! gives the hash of the subtrie under each chunk's prefix ([`verify::expected_subtries`]); a
//! chunk is good if the trie built from its accounts, keyed below the prefix, has that hash
//! ([`verify::verify_chunk`]), with every storage root computed from the slots it carries and
//! every code hash from its code. Nothing in a chunk is taken on trust, and no chunk depends on
//! another, so chunks can come from different peers in any order.
//!
//! **Parts.** A chunk travels in parts of at most a message's bytes ([`parts`]), an account's
//! storage running on from one part into the next when it does not fit one: the chunking goes
//! by address, so one account of a million slots is one chunk however deep the cut.

pub mod parts;
pub mod restore;
pub mod verify;

#[cfg(test)]
mod tests;

use crate::{
    Reader, StorageError, codec, preimages,
    trie::{self, Leaves, TrieCursors},
};
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_rlp::{RlpDecodable, RlpEncodable};
use kestrel_types::state::KECCAK_EMPTY;
use std::borrow::Cow;

/// Deepest chunking: 65,536 chunks, about 15,000 accounts each at a billion accounts.
pub const SNAPSHOT_DEPTH_MAX: u8 = 4;
/// Accounts a chunk is meant to hold at most ([`depth_for`]): about 0.4 MB of transfers'
/// accounts, one network message.
pub const CHUNK_ACCOUNTS_TARGET: u64 = 4_096;

/// One storage slot of a [`ChunkAccount`] (never zero: zero slots are not stored).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct ChunkSlot {
    pub slot: B256,
    pub value: U256,
}

/// An account as a chunk carries it: everything needed to rebuild its trie leaf.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct ChunkAccount {
    pub address: Address,
    pub nonce: u64,
    pub balance: U256,
    /// Empty for an account without code.
    pub code: Bytes,
    /// In hashed-slot order.
    pub storage: Vec<ChunkSlot>,
}

/// Chunk `index` of a snapshot of depth `depth`.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct StateChunk {
    pub depth: u8,
    pub index: u32,
    /// In hashed-address order.
    pub accounts: Vec<ChunkAccount>,
}

/// How many chunks a snapshot of `depth` has.
pub fn chunk_count(depth: u8) -> u32 {
    assert!(depth <= SNAPSHOT_DEPTH_MAX, "snapshot depth {depth}");
    1 << (4 * depth)
}

/// The chunk of depth `depth` that the hashed key `key` falls in: its first `depth` nibbles.
pub fn chunk_of(depth: u8, key: &B256) -> u32 {
    let first = u32::from_be_bytes(key[..4].try_into().expect("4 bytes"));
    match depth {
        0 => 0,
        d => first >> (32 - 4 * u32::from(d)),
    }
}

/// The smallest hashed key of chunk `index`.
fn chunk_first_key(depth: u8, index: u32) -> B256 {
    let mut key = B256::ZERO;
    if depth > 0 {
        let first = index << (32 - 4 * u32::from(depth));
        key[..4].copy_from_slice(&first.to_be_bytes());
    }
    key
}

/// The depth whose chunks hold about [`CHUNK_ACCOUNTS_TARGET`] accounts of a state of
/// `accounts`: 0 (one chunk, checked against the root itself) for small states.
pub fn depth_for(accounts: u64) -> u8 {
    let mut depth = 0;
    while depth < SNAPSHOT_DEPTH_MAX && accounts >> (4 * u32::from(depth)) > CHUNK_ACCOUNTS_TARGET {
        depth += 1;
    }
    depth
}

impl Reader<'_> {
    /// How many accounts this snapshot holds (from the table's statistics: no walk), for
    /// [`depth_for`].
    pub fn snapshot_accounts(&self) -> Result<u64, StorageError> {
        Ok(self.txn.table_stat(&self.tables.hashed_accounts)?.entries() as u64)
    }

    /// The state root of this snapshot and the account trie's nodes on paths shorter than
    /// `depth` (RLP, sorted by path): what [`verify::expected_subtries`] checks chunks against.
    pub fn snapshot_top(&self, depth: u8) -> Result<(B256, Vec<Bytes>), StorageError> {
        let targets: Vec<B256> = (0..chunk_count(depth))
            .map(|i| chunk_first_key(depth, i))
            .collect();
        let mut cursors = TrieCursors {
            hashed: self.txn.cursor(&self.tables.hashed_accounts)?,
            nodes: self.txn.cursor(&self.tables.account_trie)?,
            fresh: trie::Fresh::View(self.fresh.clone()),
        };
        let (root, nodes) = trie::proof(&mut cursors, Leaves::Accounts, &[], &targets)?;
        let top = nodes
            .into_nodes_sorted()
            .into_iter()
            .filter(|(path, _)| path.len() < usize::from(depth))
            .map(|(_, node)| node)
            .collect();
        Ok((root, top))
    }

    /// Every chunk of depth `depth` of this snapshot, in index order, handed to `each`: one walk
    /// over the hashed tables in key order, a chunk in memory at a time.
    pub fn snapshot_chunks<E: From<StorageError>>(
        &self,
        depth: u8,
        mut each: impl FnMut(StateChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        for index in 0..chunk_count(depth) {
            each(self.snapshot_chunk(depth, index)?)?;
        }
        Ok(())
    }

    /// Chunk `index` of depth `depth` of this snapshot: the accounts under its prefix, read in
    /// hashed order with the preimages of their addresses and slots.
    pub fn snapshot_chunk(&self, depth: u8, index: u32) -> Result<StateChunk, StorageError> {
        assert!(index < chunk_count(depth), "chunk {index} of depth {depth}");
        let mut accounts = Vec::new();
        let mut cursor = self.txn.cursor(&self.tables.hashed_accounts)?;
        let first = chunk_first_key(depth, index);
        let mut entry = cursor.set_range::<Cow<'_, [u8]>, Cow<'_, [u8]>>(first.as_slice())?;
        while let Some((key, value)) = entry {
            let hashed = B256::try_from(key.as_ref()).map_err(|_| StorageError::Corrupt {
                table: crate::tables::HASHED_ACCOUNTS,
                reason: format!("key of {} bytes", key.len()),
            })?;
            if chunk_of(depth, &hashed) != index {
                break;
            }
            let info = codec::AccountRecord::decode(crate::tables::HASHED_ACCOUNTS, &value)?.info;
            let code = match info.code_hash {
                KECCAK_EMPTY => Bytes::new(),
                hash => self.code_of(hash)?,
            };
            let storage = preimages::slots_of(self.txn, &self.tables, &hashed)?
                .into_iter()
                .map(|(slot, value)| {
                    Ok(ChunkSlot {
                        slot: B256::from(slot),
                        value: codec::decode_slot_value(crate::tables::HASHED_STORAGE, &value)?,
                    })
                })
                .collect::<Result<_, StorageError>>()?;
            accounts.push(ChunkAccount {
                address: preimages::address_of(self.txn, &self.tables, &hashed)?,
                nonce: info.nonce,
                balance: info.balance,
                code,
                storage,
            });
            entry = cursor.next()?;
        }
        Ok(StateChunk {
            depth,
            index,
            accounts,
        })
    }

    fn code_of(&self, hash: B256) -> Result<Bytes, StorageError> {
        crate::StateView::code(self, hash)?.ok_or_else(|| StorageError::Corrupt {
            table: crate::tables::BYTECODES,
            reason: format!("no code {hash}"),
        })
    }
}
