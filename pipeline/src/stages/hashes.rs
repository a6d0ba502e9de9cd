//! Block hashes for `BLOCKHASH` while execution runs ahead of the state root stage.

use crate::evm::BlockHashes;
use alloy_primitives::B256;
use kestrel_storage::{ChainView, StorageError, Store};
use parking_lot::{Condvar, Mutex};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Hashes kept in memory; `BLOCKHASH` reaches back 256 blocks.
const RECENT_HASHES_MAX: usize = 512;
/// How long execution waits for a hash before checking for shutdown again.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// The hashes of recently sealed blocks. Execution of block N may ask for N−1's hash before the
/// state root stage has sealed it; it then waits (only blocks that use `BLOCKHASH` on an unsealed
/// block pay this).
pub struct RecentHashes {
    store: Arc<Store>,
    hashes: Mutex<BTreeMap<u64, B256>>,
    sealed: Condvar,
}

impl RecentHashes {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            hashes: Mutex::new(BTreeMap::new()),
            sealed: Condvar::new(),
        }
    }

    pub fn insert(&self, number: u64, hash: B256) {
        let mut hashes = self.hashes.lock();
        hashes.insert(number, hash);
        while hashes.len() > RECENT_HASHES_MAX {
            hashes.pop_first();
        }
        self.sealed.notify_all();
    }
}

impl BlockHashes for RecentHashes {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError> {
        loop {
            let mut hashes = self.hashes.lock();
            if let Some(hash) = hashes.get(&number) {
                return Ok(*hash);
            }
            if let Some(hash) = self.store.view(|r| r.block_hash(number))?? {
                return Ok(hash);
            }
            self.sealed.wait_for(&mut hashes, WAIT_SLICE);
        }
    }
}
