//! The transaction index in batches: every committed transaction is found, from memory before
//! its batch is written and from the table after, across reopening, by readers older than a
//! batch, and in a store written before batches.

use super::{
    store::{child, commit_block, transfer},
    temp_store,
};
use crate::{
    ChainView, Durability, Store, codec, tables,
    tx_index::{BATCH_BLOCKS, TX_INDEX_NEXT_KEY},
};
use alloy_primitives::B256;
use kestrel_types::{ChainSpec, SealedBlock, StateChanges};
use libmdbx::WriteFlags;

/// Commits `count` blocks of two transfers each on `parent`; returns them.
fn commit_blocks(store: &Store, parent: &SealedBlock, count: u64) -> Vec<SealedBlock> {
    let mut blocks: Vec<SealedBlock> = Vec::new();
    for _ in 0..count {
        let parent = blocks.last().unwrap_or(parent);
        let nonce = 2 * parent.header.number;
        let block = child(parent, vec![transfer(nonce), transfer(nonce + 1)]);
        commit_block(store, &block, &StateChanges::default());
        blocks.push(block);
    }
    blocks
}

fn assert_all_found(store: &Store, blocks: &[SealedBlock]) {
    store
        .view(|reader| {
            for block in blocks {
                for (index, tx) in block.txs.iter().enumerate() {
                    let found = reader.tx_location(tx.hash()).unwrap();
                    assert_eq!(found, Some((block.header.number, index as u32)));
                }
            }
            assert_eq!(reader.tx_location(B256::repeat_byte(5)).unwrap(), None);
        })
        .unwrap();
}

fn table_entries(store: &Store) -> u64 {
    store
        .view(|reader| {
            let stats = reader.table_stats().unwrap();
            stats
                .iter()
                .find(|s| s.table == tables::TX_LOCATIONS)
                .unwrap()
                .entries
        })
        .unwrap()
}

#[test]
fn locations_are_written_in_batches_and_found_before_and_after() {
    let (dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    // Genesis (no transactions) is the first batch's first block.
    let blocks = commit_blocks(&store, &genesis, BATCH_BLOCKS - 2);
    assert_eq!(table_entries(&store), 0, "no batch yet: all in memory");
    assert_all_found(&store, &blocks);

    let more = commit_blocks(&store, blocks.last().unwrap(), 1);
    let blocks = [blocks, more].concat();
    assert_eq!(table_entries(&store), 2 * (BATCH_BLOCKS - 1));
    assert_all_found(&store, &blocks);

    let more = commit_blocks(&store, blocks.last().unwrap(), BATCH_BLOCKS + 3);
    let blocks = [blocks, more].concat();
    assert_eq!(table_entries(&store), 2 * (2 * BATCH_BLOCKS - 1));
    assert_all_found(&store, &blocks);

    // Reopened, the three blocks after the last batch are read back from the archive.
    drop(store);
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert_all_found(&store, &blocks);
    let more = commit_blocks(&store, blocks.last().unwrap(), BATCH_BLOCKS);
    let blocks = [blocks, more].concat();
    assert_eq!(table_entries(&store), 2 * (3 * BATCH_BLOCKS - 1));
    assert_all_found(&store, &blocks);
}

/// A batch stays in memory until the next one: a reader whose snapshot began before the batch's
/// commit does not see it in the table, and still finds its blocks.
#[test]
fn a_reader_older_than_a_batch_still_finds_its_blocks() {
    let (_dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let blocks = commit_blocks(&store, &genesis, BATCH_BLOCKS - 2);
    let (store, blocks) = (&store, &blocks);
    std::thread::scope(|scope| {
        let (opened, open) = std::sync::mpsc::channel();
        let (batched, batch) = std::sync::mpsc::channel();
        let old_reader = scope.spawn(move || {
            store
                .view(|reader| {
                    opened.send(()).unwrap();
                    batch.recv().unwrap();
                    for block in blocks {
                        let tx = &block.txs[1];
                        let found = reader.tx_location(tx.hash()).unwrap();
                        assert_eq!(found, Some((block.header.number, 1)));
                    }
                })
                .unwrap();
        });
        open.recv().unwrap();
        let more = commit_blocks(store, blocks.last().unwrap(), 1);
        assert_eq!(
            table_entries(store),
            2 * (BATCH_BLOCKS - 1),
            "the batch is written"
        );
        // Not visible to the old reader: a block after its head.
        store
            .view(|reader| assert!(reader.tx_location(more[0].txs[0].hash()).unwrap().is_some()))
            .unwrap();
        batched.send(()).unwrap();
        old_reader.join().unwrap();
    });
}

/// A store written before batches has every location in the table and no batch record: its
/// first commit starts the batches at its own block.
#[test]
fn a_store_written_before_batches_keeps_its_locations() {
    let (dir, store) = temp_store();
    let genesis = store.init_genesis(&ChainSpec::dev()).unwrap();
    let blocks = commit_blocks(&store, &genesis, 3);
    // What the old layout held: every location in the table, no record of batches.
    let txn = store.db.begin_rw_txn().unwrap();
    let tables = tables::Tables::open(&txn).unwrap();
    for block in &blocks {
        for (index, tx) in block.txs.iter().enumerate() {
            let location = codec::encode_tx_location(block.header.number, index as u32);
            let hash = tx.hash();
            txn.put(&tables.tx_locations, hash, location, WriteFlags::UPSERT)
                .unwrap();
        }
    }
    txn.del(&tables.metadata, TX_INDEX_NEXT_KEY, None).unwrap();
    txn.commit().unwrap();
    drop(store);
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    assert_all_found(&store, &blocks);
    let more = commit_blocks(&store, blocks.last().unwrap(), BATCH_BLOCKS);
    let blocks = [blocks, more].concat();
    assert_eq!(table_entries(&store), 2 * (3 + BATCH_BLOCKS));
    assert_all_found(&store, &blocks);
}
