use super::{
    parts::{self, Assembly, StatePart},
    verify::{SnapshotError, expected_subtries, verify_chunk},
    *,
};
use crate::{ChainView as _, Durability, StateView as _, Store, snapshot::restore::RestoreError};
use alloy_primitives::{Bytes, U256, keccak256};
use kestrel_types::{AccountInfo, ChainSpec, StateChanges, StorageChange, chain::GenesisAlloc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

/// A store whose genesis holds `accounts` random accounts; every 50th has code and storage (one
/// of them 2,000 slots, like a token).
fn store_with(accounts: usize, seed: u64) -> (tempfile::TempDir, Store, B256) {
    store_with_token(accounts, seed, 2_000)
}

/// As [`store_with`], the token's slots `token_slots`.
fn store_with_token(
    accounts: usize,
    seed: u64,
    token_slots: usize,
) -> (tempfile::TempDir, Store, B256) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut spec = ChainSpec::dev();
    for i in 0..accounts {
        let address = Address::from(rng.random::<[u8; 20]>());
        let (code, storage) = match i % 50 {
            0 => {
                let code = Bytes::from(vec![0x60, i as u8, 0x60, 0x00, 0x55]);
                let slots = if i == 0 { token_slots } else { 1 + i % 7 };
                let storage: BTreeMap<U256, U256> = (0..slots)
                    .map(|_| {
                        (
                            U256::from(rng.random::<u64>()),
                            U256::from(1 + rng.random::<u32>()),
                        )
                    })
                    .collect();
                (Some(code), storage)
            }
            _ => (None, BTreeMap::new()),
        };
        let info = AccountInfo {
            nonce: rng.random_range(0..5),
            balance: U256::from(rng.random::<u64>()),
            code_hash: code.as_ref().map_or(KECCAK_EMPTY, keccak256),
        };
        spec.alloc.insert(
            address,
            GenesisAlloc {
                info,
                code,
                storage,
            },
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    let root = store.init_genesis(&spec).unwrap().header.state_root;
    (dir, store, root)
}

fn snapshot(store: &Store, depth: u8) -> (B256, Vec<Bytes>, Vec<StateChunk>) {
    store
        .view(|r| {
            let (root, top) = r.snapshot_top(depth).unwrap();
            let mut chunks = Vec::new();
            r.snapshot_chunks::<StorageError>(depth, |c| {
                chunks.push(c);
                Ok(())
            })
            .unwrap();
            (root, top, chunks)
        })
        .unwrap()
}

#[test]
fn every_chunk_checks_out_against_the_state_root_at_each_depth() {
    let (_dir, store, root) = store_with(3_000, 1);
    // The dev accounts besides the 3,000.
    let accounts = store.view(|r| r.snapshot_accounts().unwrap()).unwrap();
    assert_eq!(accounts, 3_000 + ChainSpec::dev().alloc.len() as u64);
    for depth in 0..=2 {
        let (served_root, top, chunks) = snapshot(&store, depth);
        assert_eq!(served_root, root);
        assert_eq!(chunks.len() as u32, chunk_count(depth));
        let expected = expected_subtries(root, depth, &top).unwrap();
        let mut accounts = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            verify_chunk(depth, i as u32, expected[i], chunk)
                .unwrap_or_else(|e| panic!("depth {depth}: {e}"));
            accounts += chunk.accounts.len();
        }
        // The dev genesis's own accounts, and the random ones.
        assert_eq!(
            accounts,
            ChainSpec::dev().alloc.len() + 3_000,
            "depth {depth}"
        );
        // A chunk survives the wire.
        let bytes = alloy_rlp::encode(&chunks[0]);
        assert_eq!(
            <StateChunk as alloy_rlp::Decodable>::decode(&mut bytes.as_slice()).unwrap(),
            chunks[0]
        );
    }
}

#[test]
fn a_bad_chunk_is_caught() {
    let (_dir, store, root) = store_with(3_000, 2);
    let depth = 2;
    let (_, top, chunks) = snapshot(&store, depth);
    let expected = expected_subtries(root, depth, &top).unwrap();
    let with_storage = chunks
        .iter()
        .position(|c| c.accounts.iter().any(|a| a.storage.len() > 1))
        .unwrap();
    type Damage = fn(&mut StateChunk);
    let damages: [(&str, Damage); 6] = [
        ("a balance", |c| c.accounts[0].balance += U256::from(1)),
        ("a nonce", |c| c.accounts[0].nonce += 1),
        ("an account left out", |c| {
            c.accounts.pop();
        }),
        ("two accounts swapped", |c| c.accounts.swap(0, 1)),
        ("a code byte", |c| {
            let a = c.accounts.iter_mut().find(|a| !a.code.is_empty()).unwrap();
            a.code = Bytes::from([a.code.as_ref(), &[0]].concat());
        }),
        ("a slot's value", |c| {
            let a = c.accounts.iter_mut().find(|a| a.storage.len() > 1).unwrap();
            a.storage[1].value += U256::from(1);
        }),
    ];
    for (what, damage) in damages {
        let mut bad = chunks[with_storage].clone();
        damage(&mut bad);
        let err =
            verify_chunk(depth, with_storage as u32, expected[with_storage], &bad).expect_err(what);
        assert!(
            matches!(
                err,
                SnapshotError::SubtrieMismatch { .. } | SnapshotError::Order { .. }
            ),
            "{what}: {err}"
        );
    }
    // An account moved into another chunk does not belong there.
    let mut other = chunks[with_storage ^ 1].clone();
    other
        .accounts
        .push(chunks[with_storage].accounts[0].clone());
    assert!(
        verify_chunk(
            depth,
            (with_storage ^ 1) as u32,
            expected[with_storage ^ 1],
            &other
        )
        .is_err()
    );
    // A zero slot is never stored, so never served.
    let mut zero = chunks[with_storage].clone();
    let a = zero
        .accounts
        .iter_mut()
        .find(|a| !a.storage.is_empty())
        .unwrap();
    a.storage[0].value = U256::ZERO;
    assert!(matches!(
        verify_chunk(depth, with_storage as u32, expected[with_storage], &zero),
        Err(SnapshotError::SlotOrder { .. })
    ));
    // The right chunk under the wrong index.
    assert!(matches!(
        verify_chunk(depth, 7, expected[7], &chunks[8]),
        Err(SnapshotError::WrongChunk { .. })
    ));
}

#[test]
fn a_top_that_does_not_hash_to_the_trusted_root_is_refused() {
    let (_dir, store, root) = store_with(3_000, 3);
    let (_, mut top, _) = snapshot(&store, 2);
    // Another state's root: none of these nodes hashes to it.
    assert!(matches!(
        expected_subtries(keccak256(b"another state"), 2, &top),
        Err(SnapshotError::MissingTopNode(..))
    ));
    // A node of the top left out.
    top.pop();
    assert!(matches!(
        expected_subtries(root, 2, &top),
        Err(SnapshotError::MissingTopNode(..))
    ));
}

#[test]
fn a_sparse_top_is_too_deep_for_that_many_chunks() {
    let (_dir, store, root) = store_with(40, 4);
    let (_, top, _) = snapshot(&store, 3);
    assert!(matches!(
        expected_subtries(root, 3, &top),
        Err(SnapshotError::TooDeep(3, _))
    ));
    assert_eq!(depth_for(40), 0);
    assert_eq!(depth_for(1_000_000), 2);
    assert_eq!(depth_for(10_000_000), 3);
    assert_eq!(depth_for(u64::MAX), SNAPSHOT_DEPTH_MAX);
}

#[test]
fn chunk_of_takes_the_first_nibbles() {
    let key = B256::from_slice(&[0xab; 32]);
    assert_eq!(chunk_of(0, &key), 0);
    assert_eq!(chunk_of(1, &key), 0xa);
    assert_eq!(chunk_of(2, &key), 0xab);
    assert_eq!(chunk_of(4, &key), 0xabab);
    for depth in 0..=SNAPSHOT_DEPTH_MAX {
        for index in [0, chunk_count(depth) - 1] {
            assert_eq!(chunk_of(depth, &chunk_first_key(depth, index)), index);
        }
    }
}

/// After blocks that change, create, delete and wipe accounts and set and clear slots (the
/// incrementally updated trie), the chunks still check out, and hold the whole state: a genesis
/// made of them has the same root (what a syncing node rebuilds).
#[test]
fn chunks_after_blocks_rebuild_the_same_state() {
    let (_dir, store, genesis_root) = store_with(2_000, 5);
    let mut rng = StdRng::seed_from_u64(6);
    let (_, _, chunks) = snapshot(&store, 1);
    let existing: Vec<ChunkAccount> = chunks.into_iter().flat_map(|c| c.accounts).collect();
    let mut parent = store
        .view(|r| r.block(0).unwrap().unwrap())
        .unwrap()
        .as_ref()
        .clone();
    for _ in 0..3 {
        let mut changes = StateChanges::default();
        for _ in 0..200 {
            let a = &existing[rng.random_range(0..existing.len())];
            let info = (rng.random_range(0..10) > 0).then(|| AccountInfo {
                nonce: a.nonce + 1,
                balance: U256::from(rng.random::<u64>()),
                code_hash: if a.code.is_empty() {
                    KECCAK_EMPTY
                } else {
                    keccak256(&a.code)
                },
            });
            changes.accounts.insert(a.address, info);
            if let (Some(_), false) = (info, a.storage.is_empty()) {
                let mut slots: BTreeMap<U256, U256> = a
                    .storage
                    .iter()
                    .take(3)
                    .map(|s| (U256::from_be_bytes(s.slot.0), U256::ZERO))
                    .collect();
                slots.insert(U256::from(rng.random::<u64>()), U256::from(7));
                let wiped = rng.random_range(0..4) == 0;
                changes
                    .storage
                    .insert(a.address, StorageChange { wiped, slots });
            }
        }
        for _ in 0..50 {
            let info = AccountInfo {
                nonce: 0,
                balance: U256::from(1 + rng.random::<u32>()),
                code_hash: KECCAK_EMPTY,
            };
            changes
                .accounts
                .insert(Address::from(rng.random::<[u8; 20]>()), Some(info));
        }
        let block = parent.empty_child();
        let mut writer = store.begin_block().unwrap();
        writer.apply_state(&changes).unwrap();
        writer.insert_block(&block).unwrap();
        writer.commit().unwrap();
        parent = block;
    }
    let (root, top, chunks) = snapshot(&store, 1);
    assert_ne!(root, genesis_root, "the blocks changed the state");
    let expected = expected_subtries(root, 1, &top).unwrap();
    let mut alloc = BTreeMap::new();
    for (i, chunk) in chunks.iter().enumerate() {
        verify_chunk(1, i as u32, expected[i], chunk).unwrap();
        for a in &chunk.accounts {
            let code = (!a.code.is_empty()).then(|| a.code.clone());
            let info = AccountInfo {
                nonce: a.nonce,
                balance: a.balance,
                code_hash: code.as_ref().map_or(KECCAK_EMPTY, keccak256),
            };
            let storage = a
                .storage
                .iter()
                .map(|s| (U256::from_be_bytes(s.slot.0), s.value))
                .collect();
            alloc.insert(
                a.address,
                GenesisAlloc {
                    info,
                    code,
                    storage,
                },
            );
        }
    }
    assert_eq!(crate::state_root_from_alloc(&alloc), root);
}

/// A source store at block 3 (genesis and three blocks that change state), its head's header
/// and the hashes of blocks 0..3.
fn source_at_block_3() -> (tempfile::TempDir, Store, alloy_consensus::Header, Vec<B256>) {
    source_at_block_3_with_token(2_000)
}

/// As [`source_at_block_3`], the token's slots `token_slots`.
fn source_at_block_3_with_token(
    token_slots: usize,
) -> (tempfile::TempDir, Store, alloy_consensus::Header, Vec<B256>) {
    let (dir, store, _) = store_with_token(3_000, 11, token_slots);
    let mut parent = store.view(|r| r.block(0).unwrap().unwrap()).unwrap();
    let mut hashes = vec![parent.hash];
    for n in 1..=3u64 {
        let mut changes = StateChanges::default();
        changes.accounts.insert(
            Address::repeat_byte(n as u8),
            Some(AccountInfo {
                nonce: n,
                balance: U256::from(n),
                code_hash: KECCAK_EMPTY,
            }),
        );
        let mut writer = store.begin_block().unwrap();
        let root = writer.apply_state(&changes).unwrap();
        let block = with_root(parent.empty_child(), root);
        writer.insert_block(&block).unwrap();
        writer.commit().unwrap();
        parent = store.view(|r| r.block(n).unwrap().unwrap()).unwrap();
        hashes.push(parent.hash);
    }
    let header = parent.header.clone();
    hashes.pop();
    (dir, store, header, hashes)
}

fn with_root(mut block: crate::SealedBlock, root: B256) -> crate::SealedBlock {
    block.header.state_root = root;
    block.hash = block.header.hash_slow();
    block
}

fn state_tables(store: &Store) -> Vec<(&'static str, u64)> {
    let state = [
        crate::tables::ACCOUNT_PREIMAGES,
        crate::tables::SLOT_PREIMAGES,
        crate::tables::BYTECODES,
        crate::tables::HASHED_ACCOUNTS,
        crate::tables::HASHED_STORAGE,
        crate::tables::ACCOUNT_TRIE,
        crate::tables::STORAGE_TRIE,
    ];
    let stats = store.view(|r| r.table_stats().unwrap()).unwrap();
    stats
        .into_iter()
        .filter(|t| state.contains(&t.table))
        .map(|t| (t.table, t.entries))
        .collect()
}

/// State sync's store: chunks written across a restart, then the base block. It holds the
/// source's state (same root, same entries in every state table), no body or state before its
/// base, and takes the next block as any store does.
#[test]
fn a_restored_store_holds_the_state_from_its_base_block_on() {
    use crate::snapshot::restore::RestoreTarget;
    let (_src_dir, source, header, ancestors) = source_at_block_3();
    let depth = 1;
    let (root, _, chunks) = snapshot(&source, depth);
    assert_eq!(root, header.state_root);
    let target = RestoreTarget {
        number: 3,
        state_root: root,
        depth,
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
        store.restore_start(target).unwrap();
        assert_eq!(store.restore_chunks(&chunks[..3]).unwrap(), 3);
        assert_eq!(store.restore_chunks(&chunks[3..7]).unwrap(), 7);
    }
    // Reopened as after a restart: the restore goes on after chunk 6.
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    let progress = store.restore_progress().unwrap().unwrap();
    assert_eq!((progress.target, progress.chunks_done), (target, 7));
    assert!(matches!(
        store.restore_chunks(&chunks[8..9]),
        Err(RestoreError::OutOfOrder {
            want: 7,
            got: 8,
            ..
        })
    ));
    assert!(matches!(
        store.restore_finish(&header, &ancestors),
        Err(RestoreError::Incomplete { done: 7, count: 16 })
    ));
    assert_eq!(store.restore_chunks(&chunks[7..]).unwrap(), 16);
    store.restore_finish(&header, &ancestors).unwrap();
    assert_eq!(store.restore_progress().unwrap(), None);
    assert_eq!(state_tables(&store), state_tables(&source));

    store
        .view(|r| {
            assert_eq!((r.head().unwrap(), r.base().unwrap()), (Some(3), 3));
            assert_eq!(r.state_root_from_scratch().unwrap(), root);
            assert_eq!(r.header(3).unwrap(), Some(header.clone()));
            assert_eq!(r.block_hash(1).unwrap(), Some(ancestors[1]));
            assert_eq!(r.header(2).unwrap(), None, "only hashes below the base");
            assert!(
                r.block(3).unwrap().is_none(),
                "the base block has no body here"
            );
            assert!(r.receipts(3).unwrap().is_none());
            assert!(matches!(
                r.state_at(2).err(),
                Some(StorageError::HistoryPruned {
                    requested: 2,
                    oldest: 3
                })
            ));
        })
        .unwrap();
    assert!(matches!(
        store.restore_start(target),
        Err(RestoreError::HasHead(3))
    ));

    // The next block goes on as on any store, and survives a reopen (the archive starts after
    // the base).
    let base = crate::SealedBlock {
        hash: header.hash_slow(),
        header,
        txs: Vec::new(),
        receipts: Vec::new(),
    };
    let mut changes = StateChanges::default();
    let address = Address::repeat_byte(0xee);
    let info = AccountInfo {
        nonce: 1,
        balance: U256::from(5),
        code_hash: KECCAK_EMPTY,
    };
    changes.accounts.insert(address, Some(info));
    let mut writer = store.begin_block().unwrap();
    let next_root = writer.apply_state(&changes).unwrap();
    let next = with_root(base.empty_child(), next_root);
    writer.insert_block(&next).unwrap();
    writer.commit().unwrap();
    drop(store);
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    store
        .view(|r| {
            assert_eq!(r.block(4).unwrap().unwrap().hash, next.hash);
            assert_eq!(r.state_root_from_scratch().unwrap(), next_root);
            assert_eq!(r.account(address).unwrap(), Some(info));
            let before = r.state_at(3).unwrap();
            assert_eq!(crate::StateView::account(&before, address).unwrap(), None);
        })
        .unwrap();
}

/// A chunk damaged after it was checked (a bug, or the disk) is caught by the whole-root check.
#[test]
fn the_whole_root_is_checked_at_the_end() {
    use crate::snapshot::restore::RestoreTarget;
    let (_src_dir, source, header, ancestors) = source_at_block_3();
    let (root, _, mut chunks) = snapshot(&source, 0);
    chunks[0].accounts[10].balance += U256::from(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    store
        .restore_start(RestoreTarget {
            number: 3,
            state_root: root,
            depth: 0,
        })
        .unwrap();
    store.restore_chunks(&chunks).unwrap();
    assert!(matches!(
        store.restore_finish(&header, &ancestors),
        Err(RestoreError::RootMismatch { want, .. }) if want == root
    ));
    assert_eq!(store.view(|r| r.head().unwrap()).unwrap(), None);
}

/// The parts of every chunk of `chunks` at `budget` bytes, each encoded and decoded again.
fn cut_all(chunks: &[StateChunk], budget: usize) -> Vec<Vec<StatePart>> {
    chunks
        .iter()
        .map(|chunk| {
            let parts = parts::cut(chunk.clone(), budget).unwrap();
            parts
                .iter()
                .map(|part| {
                    let bytes = alloy_rlp::encode(part);
                    assert!(bytes.len() <= budget, "{} bytes", bytes.len());
                    <StatePart as alloy_rlp::Decodable>::decode(&mut bytes.as_slice()).unwrap()
                })
                .collect()
        })
        .collect()
}

/// Puts `parts` together; the chunk, or the first error.
fn assemble(depth: u8, index: u32, parts: Vec<StatePart>) -> Result<StateChunk, SnapshotError> {
    let mut assembly = Assembly::new(depth, index);
    for part in parts {
        if let Some(chunk) = assembly.add(part)? {
            return Ok(chunk);
        }
    }
    panic!("no last part");
}

const PART_BUDGET_BYTES: usize = 64 << 10;

/// An account of 20,000 slots (about 1.4 MB) does not fit a 64 KiB part: its chunk is cut into
/// parts under the budget, the same way each time, its storage running on across parts; put
/// back together, every chunk checks out against its subtrie and the restored state has the
/// trusted root.
#[test]
fn an_account_larger_than_a_part_round_trips_through_parts() {
    use crate::snapshot::restore::RestoreTarget;
    let (_src_dir, source, header, ancestors) = source_at_block_3_with_token(20_000);
    let depth = 1;
    let (root, top, chunks) = snapshot(&source, depth);
    let expected = expected_subtries(root, depth, &top).unwrap();
    let all_parts = cut_all(&chunks, PART_BUDGET_BYTES);
    assert_eq!(all_parts, cut_all(&chunks, PART_BUDGET_BYTES), "cut alike");
    let (big, big_parts) = all_parts
        .iter()
        .enumerate()
        .max_by_key(|(_, p)| p.len())
        .unwrap();
    let big_bytes = alloy_rlp::encode(&chunks[big]).len();
    assert!(
        big_parts.len() >= big_bytes / PART_BUDGET_BYTES,
        "{} parts",
        big_parts.len()
    );
    assert!(
        big_parts.len() <= big_bytes / (PART_BUDGET_BYTES * 9 / 10) + 1,
        "parts filled: {} parts for {big_bytes} bytes",
        big_parts.len()
    );
    // The token starts a part (or follows the accounts before it) and runs on through the rest.
    let continued = big_parts.iter().filter(|p| p.continues).count();
    assert!(
        continued + 2 >= big_parts.len(),
        "the token runs on: {continued}"
    );
    let mut assembled = Vec::new();
    for (i, parts) in all_parts.into_iter().enumerate() {
        let chunk = assemble(depth, i as u32, parts).unwrap();
        assert_eq!(chunk, chunks[i]);
        verify_chunk(depth, i as u32, expected[i], &chunk).unwrap();
        assembled.push(chunk);
    }

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), Durability::Unsynced).unwrap();
    store
        .restore_start(RestoreTarget {
            number: 3,
            state_root: root,
            depth,
        })
        .unwrap();
    assert_eq!(store.restore_chunks(&assembled).unwrap(), 16);
    store.restore_finish(&header, &ancestors).unwrap();
    assert_eq!(
        store
            .view(|r| r.state_root_from_scratch().unwrap())
            .unwrap(),
        root
    );
    assert_eq!(state_tables(&store), state_tables(&source));
}

/// A damaged part spoils its whole chunk's check; parts out of order, of another chunk, with
/// another count, or a continuation that continues nothing are refused as they come; a claimed
/// count past the bound is refused at the first part; an account that cannot fit a part at all
/// is not cut.
#[test]
fn a_bad_part_is_caught() {
    let (_dir, store, root) = store_with_token(3_000, 12, 20_000);
    let depth = 1;
    let (_, top, chunks) = snapshot(&store, depth);
    let expected = expected_subtries(root, depth, &top).unwrap();
    let all_parts = cut_all(&chunks, PART_BUDGET_BYTES);
    let big = (0..all_parts.len())
        .max_by_key(|i| all_parts[*i].len())
        .unwrap();
    let parts = &all_parts[big];
    let index = big as u32;
    assert!(parts.len() > 3);
    let middle = parts.len() / 2;

    type Damage = fn(&mut Vec<StatePart>, usize);
    type Expect = fn(&SnapshotError) -> bool;
    let framing: [(&str, Damage, Expect); 6] = [
        (
            "a part left out",
            |p, m| {
                p.remove(m);
            },
            |e| matches!(e, SnapshotError::PartOrder { .. }),
        ),
        (
            "a part twice",
            |p, m| p.insert(m, p[m].clone()),
            |e| matches!(e, SnapshotError::PartOrder { .. }),
        ),
        (
            "another count",
            |p, m| p[m].parts += 1,
            |e| matches!(e, SnapshotError::PartCount { .. }),
        ),
        (
            "a part of another chunk",
            |p, m| p[m].index ^= 1,
            |e| matches!(e, SnapshotError::WrongChunk { .. }),
        ),
        (
            "a continuation of another account",
            |p, m| p[m].accounts[0].address = Address::repeat_byte(7),
            |e| matches!(e, SnapshotError::BadContinuation { .. }),
        ),
        (
            "a continuation carrying a balance",
            |p, m| p[m].accounts[0].balance = U256::from(1),
            |e| matches!(e, SnapshotError::BadContinuation { .. }),
        ),
    ];
    for (what, damage, expect) in framing {
        let mut bad = parts.clone();
        damage(&mut bad, middle);
        let err = assemble(depth, index, bad).expect_err(what);
        assert!(expect(&err), "{what}: {err}");
    }

    // A slot's value in a middle part: the parts fit together, the chunk does not check out.
    let mut bad = parts.clone();
    bad[middle].accounts[0].storage[0].value += U256::from(1);
    let chunk = assemble(depth, index, bad).unwrap();
    assert!(matches!(
        verify_chunk(depth, index, expected[big], &chunk),
        Err(SnapshotError::SubtrieMismatch { .. })
    ));
    // The slots split elsewhere between two parts is the same chunk: only the whole is judged.
    let mut moved = parts.clone();
    let slot = moved[middle].accounts[0].storage.remove(0);
    moved[middle - 1]
        .accounts
        .last_mut()
        .unwrap()
        .storage
        .push(slot);
    assert_eq!(assemble(depth, index, moved).unwrap(), chunks[big]);

    // A lying count is refused before anything is held for it.
    let mut first = parts[0].clone();
    first.parts = parts::STATE_PARTS_MAX + 1;
    assert!(matches!(
        Assembly::new(depth, index).add(first),
        Err(SnapshotError::TooManyParts { .. })
    ));
    let mut starts_continued = parts[0].clone();
    starts_continued.continues = true;
    assert!(matches!(
        Assembly::new(depth, index).add(starts_continued),
        Err(SnapshotError::BadContinuation { .. })
    ));
    assert!(matches!(
        parts::cut(chunks[big].clone(), 100),
        Err(SnapshotError::AccountTooLarge { .. })
    ));
    // A chunk that fits is one part of exactly its accounts.
    let small = parts::cut(chunks[big].clone(), 64 << 20).unwrap();
    assert_eq!(small.len(), 1);
    assert_eq!(small[0].accounts, chunks[big].accounts);
}
