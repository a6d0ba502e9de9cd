//! Datadirs from before the store's archive keep bodies and receipts in the MDBX tables
//! `Bodies` and `Receipts` (block number → the same encodings the archive records hold). The
//! first open moves them into the archive in block order, waits until they are durable, then
//! empties both tables in one write transaction. A crash midway leaves the rows and a prefix of
//! them in the archive: the next open goes on after the archive's last block.

use crate::{
    Env, StorageError,
    archive::{Archive, RecordKind},
    codec,
};
use libmdbx::Database;
use std::borrow::Cow;

/// Block number → body, in datadirs from before the archive.
const BODIES: &str = "Bodies";
/// Block number → receipts, in datadirs from before the archive.
const RECEIPTS: &str = "Receipts";

pub(super) fn legacy_tables(db: &Database<Env>, archive: &mut Archive) -> Result<(), StorageError> {
    let txn = db.begin_ro_txn()?;
    let (bodies, receipts) = match (txn.open_table(Some(BODIES)), txn.open_table(Some(RECEIPTS))) {
        (Ok(bodies), Ok(receipts)) => (bodies, receipts),
        // A datadir made with the archive never had them.
        (Err(libmdbx::Error::NotFound), _) | (_, Err(libmdbx::Error::NotFound)) => return Ok(()),
        (Err(err), _) | (_, Err(err)) => return Err(err.into()),
    };
    if txn.table_stat(&bodies)?.entries() == 0 {
        return Ok(());
    }
    let mut moved = 0u64;
    let mut cursor = txn.cursor(&bodies)?;
    for entry in cursor.iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>() {
        let (key, body) = entry?;
        let number = codec::decode_number(BODIES, &key)?;
        let next = archive.last_block().map_or(0, |last| last + 1);
        if number < next {
            continue; // moved by an open that crashed before emptying the tables
        }
        if number != next {
            return Err(StorageError::Corrupt {
                table: BODIES,
                reason: format!("block {number} where block {next} was due"),
            });
        }
        let receipt_bytes =
            txn.get::<Cow<'_, [u8]>>(&receipts, &key)?
                .ok_or_else(|| StorageError::Corrupt {
                    table: RECEIPTS,
                    reason: format!("no receipts for block {number}"),
                })?;
        archive.append(
            number,
            &[
                (RecordKind::Body, &body),
                (RecordKind::Receipts, &receipt_bytes),
            ],
        )?;
        moved += 1;
    }
    drop(cursor);
    drop(txn);
    archive.sync()?;
    let txn = db.begin_rw_txn()?;
    txn.clear_table(&txn.open_table(Some(BODIES))?)?;
    txn.clear_table(&txn.open_table(Some(RECEIPTS))?)?;
    txn.commit()?;
    tracing::info!(target: "storage::blocks", moved, last = ?archive.last_block(), "moved bodies and receipts from the database into the block archive");
    Ok(())
}
