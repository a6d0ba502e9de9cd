//! Writing a state that state sync fetched into an empty store, whose first block is then the
//! synced one (its *base*): no block before it has a body, receipts or state here.
//!
//! Chunks are written in index order, so in hashed-address order: the hashed tables and every
//! account's storage trie and the keys' preimages go in with MDBX appends
//! (`bulk::HashedCursors`, the genesis writer's), code with ordinary puts.
//! Each call's chunks and the count of chunks written commit in one transaction, so a restart
//! resumes after the last chunk written ([`Store::restore_progress`]). The account trie spans
//! every chunk, so it is built once they are all in ([`Store::restore_finish`]), in one pass over
//! the hashed accounts, and its root is checked against the trusted one: the whole-root check
//! after the per-chunk checks.

use super::{StateChunk, chunk_count};
use crate::{
    Env, StorageError,
    bulk::{self, HashedCursors, NodeAppender},
    codec, read_head,
    tables::{self, HEAD_KEY, Tables},
};
use alloy_consensus::Header;
use alloy_primitives::{B256, U256, keccak256};
use alloy_rlp::Encodable;
use kestrel_types::{AccountInfo, BlockNumber, state::KECCAK_EMPTY};
use libmdbx::{RW, Transaction, TransactionKind, WriteFlags};
use std::borrow::Cow;

/// Metadata key of a restore in progress: its [`RestoreTarget`] and the chunks written.
const RESTORE_KEY: &[u8] = b"snapshot_restore";
/// Metadata key of the base block of a store made by state sync (absent: genesis).
pub(crate) const BASE_KEY: &[u8] = b"base";
/// Ancestors' hashes kept below the base: what `BLOCKHASH` reaches back.
pub const BASE_ANCESTORS: u64 = 256;

/// The state a restore writes: block `number`'s, whose state root is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreTarget {
    pub number: BlockNumber,
    pub state_root: B256,
    /// The chunking (`snapshot::depth_for`).
    pub depth: u8,
}

/// A restore in progress: its target and how many chunks (from 0) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProgress {
    pub target: RestoreTarget,
    pub chunks_done: u32,
}

impl RestoreProgress {
    const LEN: usize = 8 + 32 + 1 + 4;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.target.number.to_be_bytes());
        out[8..40].copy_from_slice(self.target.state_root.as_slice());
        out[40] = self.target.depth;
        out[41..].copy_from_slice(&self.chunks_done.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        if bytes.len() != Self::LEN || bytes[40] > super::SNAPSHOT_DEPTH_MAX {
            return Err(codec::corrupt(
                tables::METADATA,
                "bad snapshot restore record",
            ));
        }
        Ok(Self {
            target: RestoreTarget {
                number: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                state_root: B256::from_slice(&bytes[8..40]),
                depth: bytes[40],
            },
            chunks_done: u32::from_be_bytes(bytes[41..].try_into().expect("4 bytes")),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the database already holds blocks up to {0}: state sync needs an empty datadir")]
    HasHead(BlockNumber),
    #[error("no state restore in progress")]
    NotStarted,
    #[error("chunk {got} of depth {depth} given where chunk {want} of depth {want_depth} is next")]
    OutOfOrder {
        want: u32,
        want_depth: u8,
        got: u32,
        depth: u8,
    },
    #[error("{done} of {count} chunks are written")]
    Incomplete { done: u32, count: u32 },
    #[error("the base header is block {got}, the restore is of block {want}")]
    WrongBase { want: BlockNumber, got: BlockNumber },
    #[error("the restored state's root is {got}, the trusted root {want}")]
    RootMismatch { want: B256, got: B256 },
}

impl From<libmdbx::Error> for RestoreError {
    fn from(e: libmdbx::Error) -> Self {
        Self::Storage(e.into())
    }
}

impl crate::Store {
    /// The restore in progress in this store, if any.
    pub fn restore_progress(&self) -> Result<Option<RestoreProgress>, StorageError> {
        let txn = self.db.begin_ro_txn()?;
        read_progress(&txn, &Tables::open(&txn)?)
    }

    /// Starts restoring `target`'s state into this store, which has no head: empties the state
    /// tables (a restore of another target may have left chunks) and records no chunk written.
    pub fn restore_start(&self, target: RestoreTarget) -> Result<(), RestoreError> {
        assert!(target.depth <= super::SNAPSHOT_DEPTH_MAX);
        let txn = self.db.begin_rw_txn()?;
        let tables = Tables::open(&txn)?;
        if let Some(head) = read_head(&txn, &tables)? {
            return Err(RestoreError::HasHead(head));
        }
        bulk::clear_state(&txn, &tables)?;
        let progress = RestoreProgress {
            target,
            chunks_done: 0,
        };
        write_progress(&txn, &tables, &progress)?;
        txn.commit()?;
        Ok(())
    }

    /// Writes `chunks`, the next ones in index order (each checked against the trusted root
    /// first: `verify::verify_chunk`), and counts them as written, in one transaction. Returns
    /// the chunks written so far.
    pub fn restore_chunks(&self, chunks: &[StateChunk]) -> Result<u32, RestoreError> {
        let txn = self.db.begin_rw_txn()?;
        let tables = Tables::open(&txn)?;
        let mut progress = read_progress(&txn, &tables)?.ok_or(RestoreError::NotStarted)?;
        let mut storage_nodes = NodeAppender::default();
        let mut cursors = HashedCursors::open(&txn, &tables, &mut storage_nodes)?;
        let (mut slots, mut nodes) = (Vec::new(), Vec::new());
        for chunk in chunks {
            let depth = progress.target.depth;
            if (chunk.index, chunk.depth) != (progress.chunks_done, depth) {
                return Err(RestoreError::OutOfOrder {
                    want: progress.chunks_done,
                    want_depth: depth,
                    got: chunk.index,
                    depth: chunk.depth,
                });
            }
            for account in &chunk.accounts {
                let code_hash = match account.code.is_empty() {
                    true => KECCAK_EMPTY,
                    false => {
                        let hash = keccak256(&account.code);
                        txn.put(&tables.bytecodes, hash, &account.code, WriteFlags::UPSERT)?;
                        hash
                    }
                };
                let info = AccountInfo {
                    nonce: account.nonce,
                    balance: account.balance,
                    code_hash,
                };
                slots.clear();
                slots.extend(account.storage.iter().map(|slot| {
                    (
                        keccak256(slot.slot),
                        U256::from_be_bytes(slot.slot.0),
                        slot.value,
                    )
                }));
                let hashed_address = keccak256(account.address);
                cursors.put(&hashed_address, &account.address, info, &slots, &mut nodes)?;
            }
            progress.chunks_done += 1;
        }
        write_progress(&txn, &tables, &progress)?;
        drop((cursors, tables));
        // Values the cache may hold are not this state's (the cache answers for block writes).
        self.state_cache.clear();
        txn.commit()?;
        Ok(progress.chunks_done)
    }

    /// Ends the restore once every chunk is written: builds the account trie and checks its root
    /// against the trusted one, then makes `header` (the target block's, its hash checked by the
    /// caller) the head and the base, with `ancestors`, the hashes of the blocks just before it
    /// (oldest first, at most [`BASE_ANCESTORS`]), for `BLOCKHASH`. History starts at the base.
    pub fn restore_finish(&self, header: &Header, ancestors: &[B256]) -> Result<(), RestoreError> {
        let progress = self.restore_progress()?.ok_or(RestoreError::NotStarted)?;
        let target = progress.target;
        let count = chunk_count(target.depth);
        if progress.chunks_done != count {
            return Err(RestoreError::Incomplete {
                done: progress.chunks_done,
                count,
            });
        }
        if header.number != target.number {
            return Err(RestoreError::WrongBase {
                want: target.number,
                got: header.number,
            });
        }
        // A crash after the trie's first transactions leaves nodes behind: start it afresh.
        let txn = self.db.begin_rw_txn()?;
        txn.clear_table(&Tables::open(&txn)?.account_trie)?;
        txn.commit()?;
        let root = bulk::account_trie(&self.db)?;
        if root != target.state_root || header.state_root != root {
            return Err(RestoreError::RootMismatch {
                want: target.state_root,
                got: root,
            });
        }
        let number = header.number;
        assert!(ancestors.len() as u64 <= BASE_ANCESTORS.min(number));
        let txn = self.db.begin_rw_txn()?;
        let tables = Tables::open(&txn)?;
        let first = number - ancestors.len() as u64;
        for (i, hash) in ancestors.iter().enumerate() {
            let key = (first + i as u64).to_be_bytes();
            txn.put(&tables.canonical_hashes, key, hash, WriteFlags::UPSERT)?;
        }
        let key = number.to_be_bytes();
        let hash = header.hash_slow();
        let mut encoded = Vec::with_capacity(header.length());
        header.encode(&mut encoded);
        txn.put(&tables.headers, key, &encoded, WriteFlags::UPSERT)?;
        txn.put(&tables.canonical_hashes, key, hash, WriteFlags::UPSERT)?;
        txn.put(&tables.block_numbers, hash, key, WriteFlags::UPSERT)?;
        txn.put(&tables.metadata, BASE_KEY, key, WriteFlags::UPSERT)?;
        txn.put(&tables.metadata, HEAD_KEY, key, WriteFlags::UPSERT)?;
        txn.del(&tables.metadata, RESTORE_KEY, None)?;
        crate::history::start_at(&txn, &tables, number)?;
        txn.commit()?;
        // Not a block's commit, so the sync thread does not see it: synced here, the restore
        // survives a power loss once it returns.
        self.sync()?;
        self.recache_pages()?;
        // The state came in chunks, not blocks: no top branch kept before it stands.
        self.fill_bottoms()?;
        Ok(())
    }
}

fn read_progress<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<Option<RestoreProgress>, StorageError> {
    txn.get::<Cow<'_, [u8]>>(&tables.metadata, RESTORE_KEY)?
        .map(|bytes| RestoreProgress::decode(&bytes))
        .transpose()
}

fn write_progress(
    txn: &Transaction<'_, RW, Env>,
    tables: &Tables<'_>,
    progress: &RestoreProgress,
) -> Result<(), StorageError> {
    let bytes = progress.encode();
    txn.put(&tables.metadata, RESTORE_KEY, bytes, WriteFlags::UPSERT)?;
    Ok(())
}

/// The base block: the first whose state this store has (0 unless made by state sync).
pub(crate) fn read_base<K: TransactionKind>(
    txn: &Transaction<'_, K, Env>,
    tables: &Tables<'_>,
) -> Result<BlockNumber, StorageError> {
    Ok(crate::reader::read_metadata_number(txn, tables, BASE_KEY)?.unwrap_or(0))
}

/// Whether block `number` has a body and receipts in a store whose base is `base` and head
/// `head`: the base block of a synced store has neither (its state came without them).
pub(crate) fn has_body(base: BlockNumber, head: Option<BlockNumber>, number: BlockNumber) -> bool {
    head.is_some_and(|head| number <= head) && (base == 0 || number > base)
}
