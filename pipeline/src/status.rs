//! Progress of the stages, shared with RPC and metrics. Each field is written by one stage only.

use alloy_primitives::B256;
use kestrel_types::{BlockNumber, ExecutionResult, SealedBlock};
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};
use tokio::sync::broadcast;

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
    /// Each block's commit states as they happen (written by the validator driver).
    pub progress: ProgressFeed,
    /// Each block once it is committed, so readable by RPC (written by the commit stage).
    pub committed_blocks: CommittedFeed,
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

/// Where a block is between its proposal and a verified execution result: the commit states of
/// `eth_subscribe("kestrelNewHeads")` (Monad's `monadNewHeads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// This node has the block (its leader's proposal, with its payload).
    Proposed,
    /// This node voted for it.
    Voted,
    /// Final: it and its ancestors are ordered for good, on their way to execution.
    Finalized,
}

/// One step of one block, published by the validator driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockProgress {
    /// A consensus block reached `state`.
    Ordered {
        state: CommitState,
        number: BlockNumber,
        round: u64,
        /// The consensus block's id (the Ethereum block hash comes with execution).
        block_id: B256,
        parent_id: B256,
        /// The proposing validator's index in the validator set.
        author: u16,
        timestamp_ms: u64,
    },
    /// A later finalized block carried this block's execution result, and it equals ours.
    Verified(ExecutionResult),
}

/// Blocks a subscriber may fall behind the feed before it loses the oldest steps.
pub const PROGRESS_BACKLOG: usize = 1_024;

/// Blocks' progress for subscribers. Publishing never waits and costs nothing without
/// subscribers.
#[derive(Debug)]
pub struct ProgressFeed(broadcast::Sender<BlockProgress>);

impl Default for ProgressFeed {
    fn default() -> Self {
        Self(broadcast::channel(PROGRESS_BACKLOG).0)
    }
}

impl ProgressFeed {
    pub fn publish(&self, progress: BlockProgress) {
        // No subscriber is not an error.
        let _ = self.0.send(progress);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BlockProgress> {
        self.0.subscribe()
    }
}

/// Committed blocks a subscriber may fall behind before it loses the oldest: the subscriber
/// (the WebSocket feed) then reads those from the store.
pub const COMMITTED_BACKLOG: usize = 16;

/// Blocks as the commit stage sealed them, for those who would otherwise read each new block
/// back from the store and decode it (the WebSocket feed). Publishing never waits and costs
/// nothing without subscribers; a block is kept only until every subscriber has read it.
#[derive(Debug)]
pub struct CommittedFeed(broadcast::Sender<Arc<SealedBlock>>);

impl Default for CommittedFeed {
    fn default() -> Self {
        Self(broadcast::channel(COMMITTED_BACKLOG).0)
    }
}

impl CommittedFeed {
    pub fn publish(&self, block: Arc<SealedBlock>) {
        // No subscriber is not an error.
        let _ = self.0.send(block);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SealedBlock>> {
        self.0.subscribe()
    }
}
