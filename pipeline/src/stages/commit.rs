//! The state root and commit stage: applies each executed block to the database, computes its
//! state root incrementally, seals the Ethereum header and commits the block atomically. Then the
//! block leaves the overlay, its hash is published and the pool learns the new nonces. Ordering
//! receives each block's execution result (for a later proposal to carry) as soon as its header
//! is sealed, before the commit.

use crate::{mempool::TxPool, stages::RecentHashes, state::LatestState, status::ChainStatus};
use alloy_primitives::B256;
use crossbeam_channel::{Receiver, Sender};
use kestrel_storage::StorageError;
use kestrel_types::{ExecutedBlock, ExecutionResult, SealedBlock, StateChanges};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub struct CommitStage {
    pub state: LatestState,
    pub hashes: Arc<RecentHashes>,
    pub pool: Arc<TxPool>,
    pub status: Arc<ChainStatus>,
    pub executed: Receiver<ExecutedBlock>,
    pub results: Sender<ExecutionResult>,
    /// Hash of the last committed block.
    pub parent_hash: B256,
}

/// Most blocks committed in one write transaction. When blocks queue up behind the commit
/// thread, one durable flush serves all of them (a flush costs as much as the state root of a
/// few thousand accounts); the cap bounds how long the first of them waits to be served.
const COMMIT_GROUP_MAX: usize = 8;

impl CommitStage {
    /// Runs until execution hangs up and every executed block is committed.
    pub fn run(mut self) {
        while let Ok(first) = self.executed.recv() {
            let mut group = vec![first];
            group.extend(self.executed.try_iter().take(COMMIT_GROUP_MAX - 1));
            let (first, last) = (group[0].header.number, group[group.len() - 1].header.number);
            let committed = match self.commit(group) {
                Ok(committed) => committed,
                Err(err) => {
                    // A block we cannot persist must not be acknowledged; stop rather than diverge.
                    tracing::error!(target: "pipeline::commit", first, last, %err, "commit failed");
                    panic!("commit of blocks {first}..={last} failed: {err}");
                }
            };
            for (sealed, changes) in committed {
                // Readers find it decoded: RPC would otherwise decode every new block's body and
                // receipts from the archive for the first follower or receipt poller asking
                // (28 % of the RPC thread at 20,000 tx/s, BENCHMARKS.md). Before the head moves
                // in `committed`, so that no reader sees the head without it.
                let sealed = Arc::new(sealed);
                self.state.store.cache_committed(sealed.clone());
                self.committed(&sealed, &changes);
                self.status.committed_blocks.publish(sealed);
            }
        }
    }

    /// What follows a block's durable commit; `changes` are the block's state changes.
    fn committed(&self, sealed: &SealedBlock, changes: &StateChanges) {
        let number = sealed.header.number;
        self.state.overlay.remove_through(number);
        self.hashes.insert(number, sealed.hash);
        self.status.committed(number);
        // The pool's senders' nonces after this block. A sender with a transaction in it changed
        // its nonce here, so the block's own changes have it (`None`: the account is gone, nonce
        // 0 as the state would say). A sender can be done without one: all its transactions for
        // this height were dropped at execution (a nonce gap, a balance spent earlier in the
        // block) or were in a proposal for this height that lost. This block left its nonce as
        // it was, so it is read from the state: one view for all such senders (a view per sender
        // (a read transaction, its tables and an overlay snapshot) cost thousands per block).
        let block_nonce = |sender| {
            changes
                .accounts
                .get(&sender)
                .map(|account| account.map_or(0, |a| a.nonce))
        };
        let advanced = self.pool.on_committed(number, block_nonce, |senders| {
            let read = self.state.with_view(|view| {
                senders
                    .iter()
                    .map(|&sender| Ok(view.account(sender)?.map_or(0, |a| a.nonce)))
                    .collect::<Result<Vec<u64>, StorageError>>()
            });
            match read.and_then(|nonces| nonces) {
                Ok(nonces) => Some(nonces),
                Err(err) => {
                    tracing::error!(target: "pipeline::commit", number, %err, "state unreadable");
                    None
                }
            }
        });
        if !advanced {
            tracing::error!(target: "pipeline::commit", number, "pool nonces not advanced");
        }
        metrics::gauge!("kestrel_chain_committed_block").set(number as f64);
        tracing::info!(target: "pipeline::commit", number, hash = %sealed.hash, txs = sealed.txs.len(), gas = sealed.header.gas_used, "committed");
    }

    /// Applies the blocks in order, each with its own state root, and commits them at once.
    /// Returns each block sealed, with its state changes.
    fn commit(
        &mut self,
        group: Vec<ExecutedBlock>,
    ) -> Result<Vec<(SealedBlock, StateChanges)>, StorageError> {
        let mut writer = self.state.store.begin_block()?;
        let mut sealed_blocks = Vec::with_capacity(group.len());
        let mut writing = Duration::ZERO;
        for block in group {
            // Body and receipts first: the archive writes and syncs them during the state root.
            let started = Instant::now();
            writer.append_body(block.header.number, &block.txs, &block.receipts)?;
            writing += started.elapsed();
            let started = Instant::now();
            let state_root = writer.apply_state(&block.changes)?;
            metrics::histogram!("kestrel_stateroot_block_seconds")
                .record(started.elapsed().as_secs_f64());
            let mut header = block.header;
            header.parent_hash = self.parent_hash;
            header.state_root = state_root;
            let sealed = SealedBlock {
                hash: header.hash_slow(),
                header,
                txs: block.txs,
                receipts: block.receipts,
            };
            let started = Instant::now();
            writer.insert_block(&sealed)?;
            writing += started.elapsed();
            // Ordering learns the result now, not after the durable commit: a validator votes on
            // proposal N only once it has N−D's result, and the flush (of this block and of the
            // rest of its group) would delay that vote. The result is a function of the ordered
            // blocks alone, so a crash before the commit loses nothing consensus relied on:
            // recovery re-executes the block to the same result. A commit that fails stops the
            // node. The driver gone means shutdown; the result is then not needed.
            let _ = self.results.send(sealed.result());
            self.parent_hash = sealed.hash;
            sealed_blocks.push((sealed, block.changes));
        }
        let started = Instant::now();
        writer.commit()?;
        metrics::histogram!("kestrel_commit_block_seconds")
            .record((writing + started.elapsed()).as_secs_f64());
        metrics::histogram!("kestrel_commit_group_blocks").record(sealed_blocks.len() as f64);
        Ok(sealed_blocks)
    }
}
