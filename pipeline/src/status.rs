//! Progress of the stages, shared with RPC and metrics. Each field is written by one stage only.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

#[derive(Debug, Default)]
pub struct ChainStatus {
    /// Number of the last block ordering proposed.
    pub proposed: AtomicU64,
    /// Number of the last block execution finished.
    pub executed: AtomicU64,
    /// Number of the last block committed to the database (what RPC serves as `latest`).
    pub committed: AtomicU64,
    /// Base fee of the next block to be proposed (what `eth_gasPrice` builds on).
    pub next_base_fee: AtomicU64,
    /// The datadir's disk is below its free-space threshold: new transactions are refused, so
    /// that the blocks already ordered can still be committed (written by the node's disk
    /// monitor).
    pub disk_low: AtomicBool,
    /// Validators connected to this one (written by the validator network).
    pub peers: Arc<AtomicUsize>,
}

impl ChainStatus {
    pub fn get(field: &AtomicU64) -> u64 {
        field.load(Ordering::Acquire)
    }
    pub fn set(field: &AtomicU64, value: u64) {
        field.store(value, Ordering::Release)
    }
    pub fn disk_low(&self) -> bool {
        self.disk_low.load(Ordering::Relaxed)
    }
}
