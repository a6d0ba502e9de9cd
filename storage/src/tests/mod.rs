//! Tests over a real MDBX database in a temporary directory.

mod blocks;
mod bulk;
mod deferred;
mod history;
mod model;
mod parallel_root;
mod preimages;
mod proof;
mod state_cache;
mod state_root;
mod store;
mod sync;
mod tx_index;

use crate::{Durability, Store};
use tempfile::TempDir;

/// A fresh store; commits are not flushed (the tests do not crash the machine).
fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path(), Durability::Unsynced).expect("open store");
    (dir, store)
}

/// proptest's config for the storage property tests: `cases` cases, and `SEED=<u64>` fixes
/// proptest's own seed (each case prints its own seed, which replays it).
fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    let mut config = proptest::test_runner::Config::with_cases(cases);
    if let Some(seed) = std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(seed);
    }
    config
}
