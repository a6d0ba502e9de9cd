//! Progress of the stages, shared with RPC and metrics. Each field is written by one stage only.

use alloy_primitives::B256;
use kestrel_types::{BlockNumber, ExecutionResult, SealedBlock};
use parking_lot::Mutex;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
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

    /// Publishes that `result` is verified (written by the validator driver), once its block is
    /// committed: `Verified` names a block RPC serves, and ordering learns a result before the
    /// commit that makes it readable.
    pub fn verified(&self, result: ExecutionResult) {
        let mut waiting = self.progress.verified_waiting.lock();
        if result.number <= Self::get(&self.committed) {
            self.progress.publish(BlockProgress::Verified(result));
            return;
        }
        waiting.insert(result.number, result);
        // A result exists only for a block executed and not yet committed: one commit group.
        debug_assert!(
            waiting.len() <= VERIFIED_WAITING_MAX,
            "{} waiting",
            waiting.len()
        );
    }

    /// Block `number` is committed (written by the commit stage): RPC serves it from now on, and
    /// a `Verified` that waited for it is published.
    pub fn committed(&self, number: BlockNumber) {
        // Set before the lock, so that `verified` either sees it or leaves its result for the
        // drain below.
        Self::set(&self.committed, number);
        let mut waiting = self.progress.verified_waiting.lock();
        while let Some(entry) = waiting.first_entry()
            && *entry.key() <= number
        {
            self.progress
                .publish(BlockProgress::Verified(entry.remove()));
        }
    }
}

/// Bound on verified results waiting for their commit (debug check): far above a commit group.
const VERIFIED_WAITING_MAX: usize = 64;

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
pub struct ProgressFeed {
    sender: broadcast::Sender<BlockProgress>,
    /// Verified results of blocks not yet committed ([`ChainStatus::verified`]).
    verified_waiting: Mutex<BTreeMap<BlockNumber, ExecutionResult>>,
}

impl Default for ProgressFeed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(PROGRESS_BACKLOG).0,
            verified_waiting: Mutex::default(),
        }
    }
}

impl ProgressFeed {
    pub fn publish(&self, progress: BlockProgress) {
        // No subscriber is not an error.
        let _ = self.sender.send(progress);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BlockProgress> {
        self.sender.subscribe()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result(number: BlockNumber) -> ExecutionResult {
        ExecutionResult {
            number,
            block_hash: B256::with_last_byte(number as u8),
            state_root: B256::ZERO,
            receipts_root: B256::ZERO,
        }
    }

    fn published(feed: &mut broadcast::Receiver<BlockProgress>) -> Vec<BlockNumber> {
        std::iter::from_fn(|| feed.try_recv().ok())
            .map(|progress| match progress {
                BlockProgress::Verified(result) => result.number,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_verified_result_is_published_once_its_block_is_committed() {
        let status = ChainStatus::default();
        let mut feed = status.progress.subscribe();
        status.committed(5);
        status.verified(result(5));
        assert_eq!(published(&mut feed), [5], "committed already: at once");
        status.verified(result(7));
        status.verified(result(6));
        assert_eq!(
            published(&mut feed),
            [] as [BlockNumber; 0],
            "not readable yet"
        );
        status.committed(6);
        assert_eq!(published(&mut feed), [6]);
        status.committed(7);
        assert_eq!(published(&mut feed), [7]);
        status.committed(8);
        assert_eq!(published(&mut feed), [] as [BlockNumber; 0]);
    }
}
