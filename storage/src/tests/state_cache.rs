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
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
};

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

/// A fresh store, its model and the random blocks' generator for `seed`, over `accounts` accounts
/// with `slots` slots each.
struct Case {
    rng: StdRng,
    pools: Pools,
    _dir: tempfile::TempDir,
    store: Store,
    model: Model,
}

fn case(seed: u64, accounts: usize, slots: usize) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let pools = Pools::new(&mut rng, accounts, slots);
    let (_dir, store) = temp_store();
    Case {
        rng,
        pools,
        _dir,
        store,
        model: Model::default(),
    }
}

impl Case {
    fn commit_block(&mut self) {
        commit_block(&self.store, &mut self.model, &mut self.rng, &self.pools);
    }

    /// [`assert_reads`] on a reader of the store's last commit.
    fn assert_latest(&self, context: &str) {
        assert_latest(&self.store, &self.pools, &self.model, context);
    }
}

/// [`assert_reads`] on a reader of `store`'s last commit.
fn assert_latest(store: &Store, pools: &Pools, model: &Model, context: &str) {
    store
        .view(|reader| assert_reads(reader, pools, model, context))
        .unwrap();
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
        let mut c = case(seed, 200, 4);
        for block in 0..40 {
            c.commit_block();
            c.assert_latest(&format!("seed {seed} block {block}"));
        }
        let lookups = c.store.state_cache.lookups();
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
        let mut c = case(seed, 200, 4);
        for _ in 0..20 {
            c.commit_block();
        }
        c.store
            .view(|reader| {
                assert_reads(reader, &c.pools, &c.model, &format!("seed {seed} before"));
                let mut later = c.model.clone();
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for _ in 0..20 {
                            commit_block(&c.store, &mut later, &mut c.rng, &c.pools);
                        }
                    });
                });
                assert_reads(reader, &c.pools, &c.model, &format!("seed {seed} after"));
                assert_latest(&c.store, &c.pools, &later, &format!("seed {seed} now"));
            })
            .unwrap();
    }
}

/// Readers on two threads, each checking its commit against the model of that commit, while a
/// third commits blocks: a value cached after MDBX made its commit visible would be caught.
#[test]
fn concurrent_readers_read_their_own_commit() {
    let mut c = case(7, 100, 3);
    c.commit_block();
    let Case {
        rng,
        pools,
        store,
        model,
        ..
    } = &mut c;
    // The model of each commit by its transaction id, recorded before the commit.
    let models = Mutex::new(BTreeMap::from([(
        store.view(|reader| reader.txn_id).unwrap(),
        model.clone(),
    )]));
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) || reads == 0 {
                    store
                        .view(|reader| {
                            let model = {
                                let models = models.lock();
                                let (_, model) =
                                    models.range(..=reader.txn_id).next_back().unwrap();
                                model.clone()
                            };
                            let context = format!("commit {}", reader.txn_id);
                            assert_reads(reader, pools, &model, &context);
                        })
                        .unwrap();
                    reads += 1;
                }
            });
        }
        for _ in 0..150 {
            let changes = random_block(rng, pools, model, 20);
            let mut writer = store.begin_block().unwrap();
            writer.apply_state(&changes).unwrap();
            model.apply(&changes);
            models.lock().insert(writer.txn.id(), model.clone());
            writer.commit().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
}

/// A writer dropped without committing leaves nothing in the cache: the next transaction, with
/// the same id, commits other values.
#[test]
fn a_writer_that_never_commits_caches_nothing() {
    for seed in 0..8u64 {
        let mut c = case(seed, 100, 3);
        for block in 0..20 {
            let abandoned = random_block(&mut c.rng, &c.pools, &c.model, 40);
            let mut writer = c.store.begin_block().unwrap();
            writer.apply_state(&abandoned).unwrap();
            drop(writer);
            c.commit_block();
            c.assert_latest(&format!("seed {seed} block {block}"));
        }
    }
}

/// A cache far smaller than what the blocks write stays within its bound and still answers
/// right.
#[test]
fn a_small_cache_stays_bounded_and_answers_right() {
    let mut c = case(3, 300, 4);
    c.store.state_cache = StateCache::new(256);
    for block in 0..40 {
        c.commit_block();
        c.assert_latest(&format!("block {block}"));
        let lookups = c.store.state_cache.lookups();
        assert!(
            lookups.accounts <= 256 && lookups.slots <= 256,
            "block {block}: {lookups:?}"
        );
    }
    assert!(c.store.state_cache.lookups().account_hits > 0);
}
