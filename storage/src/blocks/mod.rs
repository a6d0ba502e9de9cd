//! Committed blocks' bodies and receipts, kept in a block archive of the store's own
//! (`<database dir>/blocks/`, [`crate::archive`]) rather than in MDBX, so that the commit
//! transaction holds state and indexes only: headers, canonical hashes, block numbers,
//! transaction locations, history and the head stay in MDBX.
//!
//! A block's records (`Body`, then `Receipts`, the last one flagged: a block is whole or absent)
//! are appended by [`crate::BlockWriter::insert_block`], or earlier by
//! [`crate::BlockWriter::append_body`]; the archive's writer stage writes and fsyncs them while
//! the commit thread goes on, and [`crate::BlockWriter::commit`] waits for
//! them just before the MDBX commit. So the archive never lacks a committed block, and may hold
//! blocks past the database's head only after a crash (or a writer dropped uncommitted): those
//! are cut at open ([`Blocks::open`]) or before the block is appended again.

mod migrate;
pub(crate) mod receipts;

use crate::{
    Env, StorageError,
    archive::{Archive, ArchiveConfig, RecordKind},
    codec, read_head,
    snapshot::restore::read_base,
    tables::Tables,
};
use alloy_consensus::ReceiptEnvelope;
use kestrel_types::{BlockNumber, RecoveredTx};
use libmdbx::Database;
use parking_lot::RwLock;
use std::{path::Path, time::Instant};

/// The archive's directory, inside the database's.
pub const ARCHIVE_DIR: &str = "blocks";
/// Names of the records in [`StorageError::Corrupt`].
pub(crate) const BODY: &str = "archive Body records";
pub(crate) const RECEIPTS: &str = "archive Receipts records";

const APPEND_BYTES: &str = "kestrel_storage_archive_append_bytes_total";
const WAIT_SECONDS: &str = "kestrel_storage_archive_wait_seconds";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        APPEND_BYTES,
        metrics::Unit::Bytes,
        "Bytes of committed blocks' bodies and receipts appended to the state store's archive"
    );
    metrics::describe_histogram!(
        WAIT_SECONDS,
        metrics::Unit::Seconds,
        "Time the commit thread waited for a write transaction's blocks to be durable in the archive before the MDBX commit"
    );
}

/// The store's archive. Appends and cuts take the lock exclusively (the commit thread only, for
/// the time to checksum and queue a block); reads share it.
pub(crate) struct Blocks {
    archive: RwLock<Archive>,
}

impl Blocks {
    /// Opens the archive in `db_dir` and brings it level with the database's head (it holds the
    /// blocks from genesis, or those after a state-synced store's base): blocks past the head are
    /// cut, the bodies and receipts of a datadir from before the archive are moved
    /// into it, and an archive still behind the head is an error (blocks committed are gone).
    pub fn open(
        db_dir: &Path,
        config: ArchiveConfig,
        db: &Database<Env>,
    ) -> Result<Self, StorageError> {
        let dir = db_dir.join(ARCHIVE_DIR);
        let config = ArchiveConfig {
            label: ARCHIVE_DIR,
            ..config
        };
        let (mut archive, _) = Archive::open(&dir, config)?;
        let (head, base) = {
            let txn = db.begin_ro_txn()?;
            let tables = Tables::open(&txn)?;
            (read_head(&txn, &tables)?, read_base(&txn, &tables)?)
        };
        // Appended, then the process died before the database committed them.
        archive.truncate_after(head)?;
        migrate::legacy_tables(db, &mut archive)?;
        let holds = archive.first(RecordKind::Body).zip(archive.last_block());
        // Genesis has a body; a state-synced store's base block has none (`snapshot::restore`).
        let first = if base == 0 { 0 } else { base + 1 };
        if holds != head.filter(|head| *head >= first).map(|head| (first, head)) {
            return Err(StorageError::ArchiveBehind { dir, head, holds });
        }
        Ok(Self {
            archive: RwLock::new(archive),
        })
    }

    /// Queues block `number`'s body and receipts for the writer stage; durable after
    /// [`Blocks::wait_durable`]. The caller's transaction has the block's parent as its head (or
    /// appended it just before).
    pub fn append(
        &self,
        number: BlockNumber,
        txs: &[RecoveredTx],
        receipts: &[ReceiptEnvelope],
    ) -> Result<(), StorageError> {
        let body = codec::encode_body(txs);
        let receipts = receipts::encode(receipts);
        let mut archive = self.archive.write();
        if archive.last_block().is_some_and(|last| last >= number) {
            // Appended by a writer dropped without committing: never part of the chain.
            archive.truncate_after(number.checked_sub(1))?;
        }
        archive.append(
            number,
            &[(RecordKind::Body, &body), (RecordKind::Receipts, &receipts)],
        )?;
        metrics::counter!(APPEND_BYTES).increment((body.len() + receipts.len()) as u64);
        Ok(())
    }

    /// Blocks until block `number` (and every one before it) is durable.
    pub fn wait_durable(&self, number: u64) -> Result<(), StorageError> {
        let started = Instant::now();
        self.archive.read().wait_durable(number)?;
        metrics::histogram!(WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Block `number`'s encoded body (`codec::decode_body`), which must be committed.
    pub fn body(&self, number: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.archive.read().read(RecordKind::Body, number)?)
    }

    /// Block `number`'s encoded receipts (`receipts::decode`), which must be committed.
    pub fn receipts(&self, number: u64) -> Result<Vec<u8>, StorageError> {
        Ok(self.archive.read().read(RecordKind::Receipts, number)?)
    }
}
