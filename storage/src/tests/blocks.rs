//! Bodies and receipts in the store's block archive: read back like any block, consistent with
//! the database's head across crashes, and moved there from datadirs that had them in MDBX.

use super::{
    store::{child, commit_block, transfer},
    temp_store,
};
use crate::{
    ARCHIVE_DIR, ChainView, Durability, StorageError, Store,
    archive::{Archive, ArchiveConfig, RecordKind},
};
use kestrel_types::{ChainSpec, SealedBlock, StateChanges};
use std::path::Path;

/// Genesis and `count` blocks of `txs` transfers each, the last three in one write transaction
/// with their bodies appended before their state roots (as the commit stage does).
fn commit_chain(store: &Store, count: u64, txs: u64) -> Vec<SealedBlock> {
    let mut chain = vec![store.init_genesis(&ChainSpec::dev()).unwrap()];
    let mut nonce = 0;
    let mut next = |parent: &SealedBlock| {
        let block = child(parent, (nonce..nonce + txs).map(transfer).collect());
        nonce += txs;
        block
    };
    for _ in 0..count.saturating_sub(3) {
        let block = next(chain.last().unwrap());
        commit_block(store, &block, &StateChanges::default());
        chain.push(block);
    }
    let mut writer = store.begin_block().unwrap();
    for _ in 0..count.min(3) {
        let block = next(chain.last().unwrap());
        writer
            .append_body(block.number(), &block.txs, &block.receipts)
            .unwrap();
        writer.apply_state(&StateChanges::default()).unwrap();
        writer.insert_block(&block).unwrap();
        chain.push(block);
    }
    writer.commit().unwrap();
    chain
}

/// Every block of `chain` reads back whole, transaction by transaction and receipt by receipt,
/// and nothing past it.
fn assert_chain(store: &Store, chain: &[SealedBlock]) {
    store
        .view(|reader| {
            let head = chain.len() as u64 - 1;
            assert_eq!(reader.head().unwrap(), Some(head));
            for block in chain {
                let n = block.number();
                // Single ones first: decoded from the archive, not from the block cache.
                for (i, tx) in block.txs.iter().enumerate() {
                    assert_eq!(reader.transaction(n, i).unwrap().as_ref(), Some(tx));
                    let receipt = reader.receipt(n, i).unwrap().unwrap();
                    assert_eq!(receipt.receipt, block.receipts[i]);
                }
                assert_eq!(reader.receipts(n).unwrap().as_ref(), Some(&block.receipts));
                let stored = reader.block(n).unwrap().unwrap();
                assert_eq!(
                    (stored.hash, &stored.header, &stored.txs, &stored.receipts),
                    (block.hash, &block.header, &block.txs, &block.receipts)
                );
            }
            assert!(reader.block(head + 1).unwrap().is_none());
            assert_eq!(reader.receipts(head + 1).unwrap(), None);
            assert_eq!(reader.transaction(head + 1, 0).unwrap(), None);
            assert_eq!(reader.receipt(head + 1, 0).unwrap(), None);
        })
        .unwrap();
}

/// The archive as the store left it (the store closed), read-only.
fn archive_last_block(db_dir: &Path) -> Option<u64> {
    let (archive, _) =
        Archive::open_read_only(&db_dir.join(ARCHIVE_DIR), ArchiveConfig::default()).unwrap();
    archive.last_block()
}

#[test]
fn bodies_and_receipts_round_trip_through_the_archive_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let chain = {
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        let chain = commit_chain(&store, 6, 4);
        assert_chain(&store, &chain);
        let tables = store.view(|r| r.table_stats()).unwrap().unwrap();
        assert!(
            tables
                .iter()
                .all(|t| t.table != "Bodies" && t.table != "Receipts"),
            "bodies and receipts are not in MDBX"
        );
        chain
    };
    assert_eq!(archive_last_block(dir.path()), Some(6));
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert_chain(&store, &chain);
}

/// A crash between the archive append and the MDBX commit: the archive holds block N+1, the
/// database's head is N. Reopened, the store cuts N+1 from the archive, and N+1 commits again.
#[test]
fn archive_records_past_the_head_are_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, uncommitted) = {
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        let chain = commit_chain(&store, 2, 2);
        let next = child(chain.last().unwrap(), vec![transfer(90)]);
        let mut writer = store.begin_block().unwrap();
        writer.apply_state(&StateChanges::default()).unwrap();
        writer.insert_block(&next).unwrap();
        // The process dies here: the database never commits, the archive writer finishes.
        drop(writer);
        (chain, next)
    };
    assert_eq!(
        archive_last_block(dir.path()),
        Some(3),
        "block 3 was appended"
    );
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert_eq!(archive_last_block(dir.path()), Some(2), "and cut at open");
    assert_chain(&store, &chain);
    commit_and_check(&store, chain, uncommitted);
}

/// A power loss after commits the sync thread had not made durable: MDBX reopens at the last
/// steady commit, several blocks behind the archive (durable before each commit). Here the
/// blocks past the head are a dropped write transaction of three. The archive is cut to the
/// head, and the blocks commit again (the node re-executes them from consensus' block log).
#[test]
fn archive_blocks_several_past_the_head_are_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, lost) = {
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        let chain = commit_chain(&store, 2, 2);
        let mut lost = vec![child(chain.last().unwrap(), vec![transfer(90)])];
        for nonce in 91..93 {
            lost.push(child(lost.last().unwrap(), vec![transfer(nonce)]));
        }
        let mut writer = store.begin_block().unwrap();
        for block in &lost {
            writer
                .append_body(block.number(), &block.txs, &block.receipts)
                .unwrap();
            writer.apply_state(&StateChanges::default()).unwrap();
            writer.insert_block(block).unwrap();
        }
        drop(writer);
        (chain, lost)
    };
    assert_eq!(archive_last_block(dir.path()), Some(5));
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert_eq!(archive_last_block(dir.path()), Some(2), "cut to the head");
    assert_chain(&store, &chain);
    let mut chain = chain;
    for block in lost {
        commit_block(&store, &block, &StateChanges::default());
        chain.push(block);
    }
    assert_chain(&store, &chain);
}

/// A writer dropped after `insert_block` (a block rejected late) leaves its archive records;
/// they are not served, and the block's next append replaces them.
#[test]
fn records_of_a_dropped_writer_are_not_served_and_are_replaced() {
    let (_dir, store) = temp_store();
    let chain = commit_chain(&store, 1, 1);
    let rejected = child(&chain[1], vec![transfer(50), transfer(51)]);
    let mut writer = store.begin_block().unwrap();
    writer.insert_block(&rejected).unwrap();
    drop(writer);
    assert_chain(&store, &chain);
    let accepted = child(&chain[1], vec![transfer(1)]);
    commit_and_check(&store, chain, accepted);
}

/// Commits `block` on top of `chain` and checks the store serves the longer chain.
fn commit_and_check(store: &Store, mut chain: Vec<SealedBlock>, block: SealedBlock) {
    commit_block(store, &block, &StateChanges::default());
    chain.push(block);
    assert_chain(store, &chain);
}

#[test]
fn an_archive_missing_committed_blocks_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        commit_chain(&store, 4, 1);
    }
    let (mut archive, _) =
        Archive::open(&dir.path().join(ARCHIVE_DIR), ArchiveConfig::default()).unwrap();
    archive.truncate_after(Some(2)).unwrap();
    drop(archive);
    match Store::open_with(dir.path(), Durability::Unsynced) {
        Err(StorageError::ArchiveBehind { head, holds, .. }) => {
            assert_eq!((head, holds), (Some(4), Some((0, 2))));
        }
        other => panic!("opened: {:?}", other.map(|_| ())),
    }
}

/// A datadir from before the archive (bodies and receipts in MDBX tables) is moved into the
/// archive at open, also when an earlier open crashed midway through the move.
#[test]
fn bodies_and_receipts_in_mdbx_move_into_the_archive() {
    for moved_before_crash in [None, Some(2)] {
        let dir = tempfile::tempdir().unwrap();
        let chain = {
            let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
            let chain = commit_chain(&store, 5, 3);
            // The rows an older version wrote: the same encodings, keyed by block number.
            let txn = store.db.begin_rw_txn().unwrap();
            for (name, kind) in [
                ("Bodies", RecordKind::Body),
                ("Receipts", RecordKind::Receipts),
            ] {
                let table = txn
                    .create_table(Some(name), libmdbx::TableFlags::default())
                    .unwrap();
                for block in &chain {
                    let n = block.number();
                    let bytes = match kind {
                        RecordKind::Body => store.archive.body(n).unwrap(),
                        _ => store.archive.receipts(n).unwrap(),
                    };
                    txn.put(&table, n.to_be_bytes(), bytes, libmdbx::WriteFlags::UPSERT)
                        .unwrap();
                }
            }
            txn.commit().unwrap();
            chain
        };
        let archive_dir = dir.path().join(ARCHIVE_DIR);
        match moved_before_crash {
            None => std::fs::remove_dir_all(&archive_dir).unwrap(),
            Some(last) => {
                let (mut archive, _) =
                    Archive::open(&archive_dir, ArchiveConfig::default()).unwrap();
                archive.truncate_after(Some(last)).unwrap();
            }
        }
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        assert_chain(&store, &chain);
        let txn = store.db.begin_ro_txn().unwrap();
        for name in ["Bodies", "Receipts"] {
            let table = txn.open_table(Some(name)).unwrap();
            assert_eq!(
                txn.table_stat(&table).unwrap().entries(),
                0,
                "{name} emptied"
            );
        }
    }
}
