//! The bulk genesis writer against the incremental path: the same random allocation written by
//! `init_genesis` (bulk) and by `apply_state` over empty tables must leave every table the same,
//! byte for byte. `SEED=<u64>` replays one allocation; a failure prints its seed.

use super::temp_store;
use crate::{Store, bulk, genesis_changes, genesis_header, state_root_from_alloc, tables};
use alloy_primitives::{Address, Bytes, U256, keccak256};
use kestrel_types::{AccountInfo, ChainSpec, SealedBlock, chain::GenesisAlloc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{borrow::Cow, collections::BTreeMap};

/// Every entry (key, value) of every table, by table.
pub(super) type Tables = BTreeMap<&'static str, Vec<(Vec<u8>, Vec<u8>)>>;

pub(super) fn dump(store: &Store) -> Tables {
    let txn = store.db.begin_ro_txn().unwrap();
    tables::ALL
        .iter()
        .map(|name| {
            let table = txn.open_table(Some(name)).unwrap();
            let mut cursor = txn.cursor(&table).unwrap();
            let entries = cursor
                .iter_start::<Cow<'_, [u8]>, Cow<'_, [u8]>>()
                .map(|entry| {
                    let (key, value) = entry.unwrap();
                    (key.into_owned(), value.into_owned())
                })
                .collect();
            (*name, entries)
        })
        .collect()
}

/// A random allocation of `accounts` accounts: funded ones, empty ones, contracts with code
/// and storage (some slots zero, which store nothing), a few with large storage tries, and
/// accounts with storage but no code.
pub(super) fn random_spec(rng: &mut StdRng, accounts: usize) -> ChainSpec {
    let mut spec = ChainSpec::dev();
    spec.alloc.clear();
    for _ in 0..accounts {
        let address = Address::from(rng.random::<[u8; 20]>());
        let mut account = GenesisAlloc {
            info: AccountInfo::default(),
            code: None,
            storage: BTreeMap::new(),
        };
        match rng.random_range(0..10) {
            0 => {}
            1..=6 => {
                account.info.balance = U256::from(rng.random::<u64>());
                account.info.nonce = rng.random_range(0..3);
            }
            _ => {
                if rng.random_bool(0.7) {
                    let code = Bytes::from(rng.random::<[u8; 12]>().to_vec());
                    account.info.code_hash = keccak256(&code);
                    account.code = Some(code);
                }
                let slots = if rng.random_bool(0.1) {
                    rng.random_range(100..600)
                } else {
                    rng.random_range(0..20)
                };
                for _ in 0..slots {
                    let slot = U256::from(rng.random_range(0..1_000u64));
                    let value = match rng.random_range(0..8) {
                        0 => U256::ZERO,
                        // One-byte values: leaves short enough to be inlined in their parent.
                        1..=3 => U256::from(rng.random_range(1..100u64)),
                        _ => U256::from_be_bytes(rng.random::<[u8; 32]>()),
                    };
                    account.storage.insert(slot, value);
                }
            }
        }
        spec.alloc.insert(address, account);
    }
    spec
}

/// Genesis written the incremental way: the allocation's state changes applied as one block.
fn incremental_genesis(store: &Store, spec: &ChainSpec) -> SealedBlock {
    let header = genesis_header(spec);
    let mut writer = store.begin_block().unwrap();
    let root = writer.apply_state(&genesis_changes(spec)).unwrap();
    assert_eq!(root, header.state_root);
    let block = SealedBlock {
        hash: header.hash_slow(),
        header,
        txs: Vec::new(),
        receipts: Vec::new(),
    };
    writer.insert_block(&block).unwrap();
    writer.commit().unwrap();
    block
}

fn seeds() -> Vec<u64> {
    match std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..12).collect(),
    }
}

#[test]
fn bulk_genesis_writes_what_the_incremental_path_writes() {
    for seed in seeds() {
        let mut rng = StdRng::seed_from_u64(seed);
        // Empty, one account, a few (first nibbles alone in their subtree), and enough for
        // branches several levels deep.
        let accounts = [0, 1, 2, 5, 40, 300, 3_000][seed as usize % 7];
        let spec = random_spec(&mut rng, accounts);

        let (_a, incremental) = temp_store();
        let expected = incremental_genesis(&incremental, &spec);

        let (_b, bulk) = temp_store();
        let mut reported = Vec::new();
        let genesis = bulk
            .init_genesis_with_progress(&spec, &mut |p| reported.push(p))
            .unwrap();
        assert_eq!(genesis.hash, expected.hash, "seed {seed}: genesis hash");
        assert_eq!(
            genesis.header, expected.header,
            "seed {seed}: genesis header"
        );
        assert_eq!(
            genesis.header.state_root,
            state_root_from_alloc(&spec.alloc)
        );
        assert!(
            dump(&bulk) == dump(&incremental),
            "seed {seed}: tables differ"
        );
        let last = reported.last().copied();
        if accounts > 0 {
            assert_eq!(
                last.map(|p| (p.done, p.total)),
                Some((accounts as u64, accounts as u64))
            );
        }
    }
}

/// Transactions far smaller than the allocation: the tries' nodes cross transaction boundaries,
/// and a state left by a write that stopped midway (no head, so no genesis) is replaced.
#[test]
fn bulk_state_in_small_transactions_over_leftovers() {
    for seed in seeds() {
        let mut rng = StdRng::seed_from_u64(seed);
        let spec = random_spec(&mut rng, 500);
        let leftover = random_spec(&mut rng, 200);

        let (_a, incremental) = temp_store();
        incremental_genesis(&incremental, &spec);

        let (_b, bulk) = temp_store();
        bulk::write_state(&bulk.db, &leftover.alloc, 13, &mut |_| {}).unwrap();
        let root = bulk::write_state(&bulk.db, &spec.alloc, 7, &mut |_| {}).unwrap();
        assert_eq!(root, state_root_from_alloc(&spec.alloc), "seed {seed}");
        let (bulk_tables, incremental_tables) = (dump(&bulk), dump(&incremental));
        for table in [
            tables::ACCOUNT_PREIMAGES,
            tables::SLOT_PREIMAGES,
            tables::BYTECODES,
            tables::HASHED_ACCOUNTS,
            tables::HASHED_STORAGE,
            tables::ACCOUNT_TRIE,
            tables::STORAGE_TRIE,
        ] {
            assert!(
                bulk_tables[table] == incremental_tables[table],
                "seed {seed}: {table} differs"
            );
        }
    }
}
