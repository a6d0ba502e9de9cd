//! The readers' cache of recently committed accounts and slots (`state_cache`): every read
//! answers what the reader's own commit holds (the plain model's state at that commit), through
//! later commits, concurrent commits, writers that never commit and a cache too small to keep
//! what the blocks write.

use super::{
    model::{Model, Pools, random_block},
    temp_store,
};
use crate::{StateView, Store, reader::Reader, state_cache::StateCache};
use parking_lot::Mutex;
use rand::{SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;

/// Every pool account and slot as `reader` reads them, against `model`.
fn assert_reads(reader: &Reader<'_>, pools: &Pools, model: &Model, context: &str) {
    for address in &pools.addresses {
        assert_eq!(
            reader.account(*address).unwrap(),
            model.accounts.get(address).copied(),
            "{context}: account {address}"
        );
        for slot in &pools.slots {
            let expected = (model.storage.get(address))
                .and_then(|slots| slots.get(slot).copied())
                .unwrap_or_default();
            assert_eq!(
                reader.storage(*address, *slot).unwrap(),
                expected,
                "{context}: slot {slot} of {address}"
            );
        }
    }
}

/// Commits one random block to `store` and `model`.
fn commit_block(store: &Store, model: &mut Model, rng: &mut StdRng, pools: &Pools) {
    let changes = random_block(rng, pools, model, 40);
    let mut writer = store.begin_block().unwrap();
    writer.apply_state(&changes).unwrap();
    writer.commit().unwrap();
    model.apply(&changes);
}

/// After each commit every read matches the model, and most reads come from the cache.
#[test]
fn reads_after_each_commit_match_the_model_and_hit_the_cache() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 200, 4);
        let (_dir, store) = temp_store();
        let mut model = Model::default();
        for block in 0..40 {
            commit_block(&store, &mut model, &mut rng, &pools);
            store
                .view(|reader| {
                    assert_reads(
                        reader,
                        &pools,
                        &model,
                        &format!("seed {seed} block {block}"),
                    )
                })
                .unwrap();
        }
        let lookups = store.state_cache.lookups();
        assert!(
            lookups.account_hits > lookups.account_misses / 4 && lookups.slot_hits > 0,
            "seed {seed}: the cache served reads: {lookups:?}"
        );
    }
}

/// A reader of commit N reads N's values while later blocks commit (from another thread) and
/// replace them in the cache.
#[test]
fn a_reader_keeps_its_commits_values_through_later_commits() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 200, 4);
        let (_dir, store) = temp_store();
        let mut model = Model::default();
        for _ in 0..20 {
            commit_block(&store, &mut model, &mut rng, &pools);
        }
        store
            .view(|reader| {
                assert_reads(reader, &pools, &model, &format!("seed {seed} before"));
                let mut later = model.clone();
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for _ in 0..20 {
                            commit_block(&store, &mut later, &mut rng, &pools);
                        }
                    });
                });
                assert_reads(reader, &pools, &model, &format!("seed {seed} after"));
                store
                    .view(|now| assert_reads(now, &pools, &later, &format!("seed {seed} now")))
                    .unwrap();
            })
            .unwrap();
    }
}

/// Readers on two threads, each checking its commit against the model of that commit, while a
/// third commits blocks: a value cached after MDBX made its commit visible would be caught.
#[test]
fn concurrent_readers_read_their_own_commit() {
    let mut rng = StdRng::seed_from_u64(7);
    let pools = Pools::new(&mut rng, 100, 3);
    let (_dir, store) = temp_store();
    let mut model = Model::default();
    commit_block(&store, &mut model, &mut rng, &pools);
    // The model of each commit by its transaction id, recorded before the commit.
    let models = Mutex::new(BTreeMap::from([(
        store.view(|reader| reader.txn_id).unwrap(),
        model.clone(),
    )]));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    store
                        .view(|reader| {
                            let model = {
                                let models = models.lock();
                                let (_, model) =
                                    models.range(..=reader.txn_id).next_back().unwrap();
                                model.clone()
                            };
                            assert_reads(
                                reader,
                                &pools,
                                &model,
                                &format!("commit {}", reader.txn_id),
                            );
                        })
                        .unwrap();
                    reads += 1;
                }
            });
        }
        for _ in 0..150 {
            let changes = random_block(&mut rng, &pools, &model, 20);
            let mut writer = store.begin_block().unwrap();
            writer.apply_state(&changes).unwrap();
            model.apply(&changes);
            models.lock().insert(writer.txn.id(), model.clone());
            writer.commit().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// A writer dropped without committing leaves nothing in the cache: the next transaction, with
/// the same id, commits other values.
#[test]
fn a_writer_that_never_commits_caches_nothing() {
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools::new(&mut rng, 100, 3);
        let (_dir, store) = temp_store();
        let mut model = Model::default();
        for block in 0..20 {
            let abandoned = random_block(&mut rng, &pools, &model, 40);
            let mut writer = store.begin_block().unwrap();
            writer.apply_state(&abandoned).unwrap();
            drop(writer);
            commit_block(&store, &mut model, &mut rng, &pools);
            store
                .view(|reader| {
                    assert_reads(
                        reader,
                        &pools,
                        &model,
                        &format!("seed {seed} block {block}"),
                    )
                })
                .unwrap();
        }
    }
}

/// A cache far smaller than what the blocks write stays within its bound and still answers
/// right.
#[test]
fn a_small_cache_stays_bounded_and_answers_right() {
    let mut rng = StdRng::seed_from_u64(3);
    let pools = Pools::new(&mut rng, 300, 4);
    let (_dir, mut store) = temp_store();
    store.state_cache = StateCache::new(256);
    let mut model = Model::default();
    for block in 0..40 {
        commit_block(&store, &mut model, &mut rng, &pools);
        store
            .view(|reader| assert_reads(reader, &pools, &model, &format!("block {block}")))
            .unwrap();
        let lookups = store.state_cache.lookups();
        assert!(
            lookups.accounts <= 256 && lookups.slots <= 256,
            "block {block}: {lookups:?}"
        );
    }
    assert!(store.state_cache.lookups().account_hits > 0);
}
