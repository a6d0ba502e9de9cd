//! State snapshots for state sync (issue 16): the state at the head split into chunks, each of
//! which a syncing node can check on its own, so that a peer serving a bad chunk is caught at
//! that chunk and the chunk asked of another peer.
//!
//! **Chunks.** Chunk `i` of depth `d` holds every account whose hashed address starts with the
//! `d` nibbles of `i` (16^d chunks), in hashed-key order, each with its code and all its storage
//! slots: plain keys (address, slot), because the store keeps plain tables beside the hashed
//! ones and a synced node must fill both.
//!
//! **What a chunk is checked against.** The *top* of the account trie, its nodes on paths
//! shorter than `d` ([`Reader::snapshot_top`]), hashes up to the state root of a block the
//! syncing node already trusts (finalized, with its certificate). Walking the top from the root
//! gives the hash of the subtrie under each chunk's prefix ([`verify::expected_subtries`]); a
//! chunk is good if the trie built from its accounts, keyed below the prefix, has that hash
//! ([`verify::verify_chunk`]), with every storage root computed from the slots it carries and
//! every code hash from its code. Nothing in a chunk is taken on trust, and no chunk depends on
//! another, so chunks can come from different peers in any order.

pub mod restore;
pub mod verify;

#[cfg(test)]
mod tests;

use crate::{
    Reader, StorageError, codec,
    trie::{self, Leaves, TrieCursors},
};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
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

/// A chunk's accounts with their hashed addresses, before sorting.
type Hashed = Vec<(B256, ChunkAccount)>;

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
    /// The state root of this snapshot and the account trie's nodes on paths shorter than
    /// `depth` (RLP, sorted by path): what [`verify::expected_subtries`] checks chunks against.
    pub fn snapshot_top(&self, depth: u8) -> Result<(B256, Vec<Bytes>), StorageError> {
        let targets: Vec<B256> = (0..chunk_count(depth))
            .map(|i| chunk_first_key(depth, i))
            .collect();
        let mut cursors = TrieCursors {
            hashed: self.txn.cursor(&self.tables.hashed_accounts)?,
            nodes: self.txn.cursor(&self.tables.account_trie)?,
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

    /// Every chunk of depth `depth` of this snapshot, in index order, handed to `each`. One pass
    /// over the plain tables; the accounts are held in memory until the pass ends, so a state
    /// too large for that is to be exported a range of chunks at a time (not needed yet).
    pub fn snapshot_chunks<E: From<StorageError>>(
        &self,
        depth: u8,
        mut each: impl FnMut(StateChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        for (index, mut accounts) in self.accounts_by_chunk(depth)?.into_iter().enumerate() {
            accounts.sort_unstable_by_key(|(hashed, _)| *hashed);
            each(StateChunk {
                depth,
                index: index as u32,
                accounts: accounts.into_iter().map(|(_, a)| a).collect(),
            })?;
        }
        Ok(())
    }

    /// Every account with its hashed address, in the chunk of depth `depth` it belongs to.
    fn accounts_by_chunk(&self, depth: u8) -> Result<Vec<Hashed>, StorageError> {
        let mut chunks: Vec<Hashed> = (0..chunk_count(depth)).map(|_| Vec::new()).collect();
        let mut storage = self.plain_slots()?;
        let mut accounts = self.txn.cursor(&self.tables.plain_accounts)?;
        for entry in accounts.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
            let (key, value) = entry?;
            let address = Address::try_from(key.as_ref()).map_err(|_| StorageError::Corrupt {
                table: crate::tables::PLAIN_ACCOUNTS,
                reason: format!("key of {} bytes", key.len()),
            })?;
            let info = codec::AccountRecord::decode(crate::tables::PLAIN_ACCOUNTS, &value)?.info;
            let code = match info.code_hash {
                KECCAK_EMPTY => Bytes::new(),
                hash => self.code_of(hash)?,
            };
            let mut slots = storage.remove(&address).unwrap_or_default();
            slots.sort_by_cached_key(|s| keccak256(s.slot));
            let hashed = keccak256(address);
            chunks[chunk_of(depth, &hashed) as usize].push((
                hashed,
                ChunkAccount {
                    address,
                    nonce: info.nonce,
                    balance: info.balance,
                    code,
                    storage: slots,
                },
            ));
        }
        assert!(
            storage.is_empty(),
            "storage of accounts that do not exist: {:?}",
            storage.keys().take(3).collect::<Vec<_>>()
        );
        Ok(chunks)
    }

    /// Every set slot, by account.
    fn plain_slots(
        &self,
    ) -> Result<alloy_primitives::map::HashMap<Address, Vec<ChunkSlot>>, StorageError> {
        let mut slots: alloy_primitives::map::HashMap<Address, Vec<ChunkSlot>> = Default::default();
        let mut cursor = self.txn.cursor(&self.tables.plain_storage)?;
        for entry in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
            let (key, value) = entry?;
            if key.len() != 52 {
                return Err(StorageError::Corrupt {
                    table: crate::tables::PLAIN_STORAGE,
                    reason: format!("key of {} bytes", key.len()),
                });
            }
            slots
                .entry(Address::from_slice(&key[..20]))
                .or_default()
                .push(ChunkSlot {
                    slot: B256::from_slice(&key[20..]),
                    value: codec::decode_slot_value(crate::tables::PLAIN_STORAGE, &value)?,
                });
        }
        Ok(slots)
    }

    fn code_of(&self, hash: B256) -> Result<Bytes, StorageError> {
        crate::StateView::code(self, hash)?.ok_or_else(|| StorageError::Corrupt {
            table: crate::tables::BYTECODES,
            reason: format!("no code {hash}"),
        })
    }
}
