//! Tests over a real MDBX database in a temporary directory.

mod history;
mod proof;
mod state_root;
mod store;

use crate::{Durability, Store};
use tempfile::TempDir;

/// A fresh store; commits are not flushed (the tests do not crash the machine).
fn temp_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path(), Durability::Unsynced).expect("open store");
    (dir, store)
}
