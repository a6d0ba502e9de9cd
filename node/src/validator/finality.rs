//! What happens to a block once consensus finalizes it: it waits for its payload (fetched from
//! peers if this validator never got it), goes into the block log with its commit proof, durably,
//! and only then to execution. The log is also where a restart resumes: blocks logged but not
//! committed to the database before a stop are executed again.

use super::{
    payload::Payload, payloads::PayloadCache, store::ChainLog, sync::PayloadWanted,
    wire::SyncedBlock,
};
use alloy_primitives::B256;
use crossbeam_channel::{Sender, TrySendError};
use kestrel_consensus::bft::{CommitProof, CommittedBlock};
use kestrel_net::PeerId;
use kestrel_pipeline::{mempool::TxPool, status::ChainStatus};
use kestrel_storage::{ChainView, Store};
use kestrel_types::{ExecutionResult, OrderedBlock, ParentFees, next_base_fee};
use std::{collections::VecDeque, path::Path, sync::Arc};

/// Own execution results handed to a restarted state machine.
const RESULTS_REPLAYED: u64 = 64;

pub struct Finality {
    log: ChainLog,
    /// Finalized by consensus, waiting for their payload; the last of each commit with its proof.
    commits: VecDeque<(CommittedBlock, Option<CommitProof>)>,
    /// Logged, waiting for room in the execution queue.
    executing: VecDeque<OrderedBlock>,
    blocks: Sender<OrderedBlock>,
    /// The payload of the first waiting commit, asked of one peer after another.
    wanted: Option<PayloadWanted>,
    /// Fees of the log head's block.
    head_fees: ParentFees,
    pool: Arc<TxPool>,
    status: Arc<ChainStatus>,
}

impl Finality {
    /// What RPC and metrics see of the chain's progress.
    pub fn status(&self) -> &ChainStatus {
        &self.status
    }

    /// Opens the block log in `dir`; queues for execution what it holds beyond the database.
    pub fn open(
        dir: &Path,
        store: &Store,
        pool: Arc<TxPool>,
        status: Arc<ChainStatus>,
        blocks: Sender<OrderedBlock>,
    ) -> eyre::Result<Self> {
        let log = ChainLog::open(dir)?;
        let db_head = store.view(|r| r.head())??.unwrap_or(0);
        if log.height() < db_head {
            eyre::bail!(
                "the block log in {} ends at block {} but the database at {db_head}: this \
                 datadir was not written by this validator",
                dir.display(),
                log.height()
            );
        }
        // Finalized and logged but not committed before the last stop: execute them again.
        let mut executing = VecDeque::new();
        for height in db_head + 1..=log.height() {
            let synced = log.read(height)?;
            let payload = Payload::decode(synced.payload.clone())?;
            executing.push_back(payload.ordered_block(&synced.block));
        }
        if !executing.is_empty() {
            tracing::info!(target: "node::validator", from = db_head + 1, to = log.height(), "re-executing finalized blocks after a restart");
        }
        let head_fees = if log.height() > 0 {
            Payload::decode(log.read(log.height())?.payload)?.fees()
        } else {
            ParentFees::of_header(&store.view(|r| r.header(0))??.expect("genesis header"))
        };
        ChainStatus::set(&status.next_base_fee, next_base_fee(head_fees));
        Ok(Self {
            log,
            commits: VecDeque::new(),
            executing,
            blocks,
            wanted: None,
            head_fees,
            pool,
            status,
        })
    }

    pub fn log(&self) -> &ChainLog {
        &self.log
    }

    pub fn head(&self) -> &CommittedBlock {
        self.log.head()
    }

    pub fn height(&self) -> u64 {
        self.log.height()
    }

    pub fn head_fees(&self) -> ParentFees {
        self.head_fees
    }

    /// Blocks consensus finalized, in order; the last carries the commit's proof.
    pub fn push(&mut self, blocks: Vec<CommittedBlock>, proof: CommitProof) {
        let last = blocks.len() - 1;
        self.commits.extend(
            blocks
                .into_iter()
                .enumerate()
                .map(|(i, c)| (c, (i == last).then(|| proof.clone()))),
        );
    }

    /// Logs the waiting blocks whose payloads `cache` holds, in order, durably. Returns a
    /// request for the first missing payload when one is due, for the driver to send.
    pub fn process(
        &mut self,
        cache: &PayloadCache,
        now: u64,
        peers: &[PeerId],
    ) -> Option<(PeerId, Vec<u8>)> {
        let mut missing = None;
        while let Some((c, _)) = self.commits.front() {
            if c.block.height <= self.log.height() {
                self.commits.pop_front();
                continue;
            }
            let Some(payload) = cache.get(&c.block.payload_hash).cloned() else {
                missing = Some(c.block.payload_hash);
                break;
            };
            let (c, proof) = self.commits.pop_front().expect("front exists");
            let block = SyncedBlock {
                block: c.block,
                qc: c.qc,
                payload: payload.bytes().clone(),
                proof,
            };
            self.append(block, &payload);
        }
        self.sync_log();
        let hash = missing?;
        if self.wanted.as_ref().is_none_or(|w| w.hash() != hash) {
            self.wanted = Some(PayloadWanted::new(hash));
        }
        self.ask_payload(now, peers)
    }

    /// A request for the wanted payload to the next peer, if the last one has had its time.
    pub fn ask_payload(&mut self, now: u64, peers: &[PeerId]) -> Option<(PeerId, Vec<u8>)> {
        self.wanted.as_mut()?.ask(now, peers)
    }

    /// The height of the block waiting for the payload named `hash`, if it is the wanted one.
    pub fn wants(&self, hash: B256) -> Option<u64> {
        (self.wanted.as_ref()?.hash() == hash)
            .then(|| self.commits.front().map(|(c, _)| c.block.height))
            .flatten()
    }

    /// Appends a finalized block to the log (not yet durable: see `sync_log`) and queues it for
    /// execution; its transactions are final.
    pub fn append(&mut self, block: SyncedBlock, payload: &Payload) {
        if let Err(err) = self.log.append(&block) {
            super::fatal(&format!("appending to the block log: {err}"));
        }
        self.pool.on_finalized(block.block.height, payload.txs());
        self.executing
            .push_back(payload.ordered_block(&block.block));
        self.head_fees = payload.fees();
        ChainStatus::set(&self.status.proposed, block.block.height);
        ChainStatus::set(&self.status.next_base_fee, next_base_fee(self.head_fees));
    }

    /// The log must be durable before its blocks reach execution (see `ChainLog::open`).
    pub fn sync_log(&mut self) {
        if self.commits.is_empty() {
            self.wanted = None;
        }
        if let Err(err) = self.log.sync() {
            super::fatal(&format!("syncing the block log: {err}"));
        }
    }

    /// Forgets blocks consensus finalized that wait for a payload (a sync brings them).
    pub fn clear_waiting(&mut self) {
        self.commits.clear();
        self.wanted = None;
    }

    /// Hands logged blocks to execution without blocking consensus on a full queue; false once
    /// execution is gone.
    pub fn flush(&mut self) -> bool {
        while let Some(block) = self.executing.pop_front() {
            match self.blocks.try_send(block) {
                Ok(()) => {}
                Err(TrySendError::Full(block)) => {
                    self.executing.push_front(block);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        metrics::gauge!("kestrel_execution_queue_depth").set(self.blocks.len() as f64);
        true
    }

    /// Blocks are logged but not yet with execution.
    pub fn behind(&self) -> bool {
        !self.executing.is_empty()
    }

    /// At shutdown: the logged blocks go to execution (waiting for room), so they are committed
    /// before the node exits rather than re-executed at the next start.
    pub fn drain(&mut self) {
        for block in self.executing.drain(..) {
            if self.blocks.send(block).is_err() {
                break;
            }
        }
    }
}

/// Execution results of the last committed blocks, from the database: a restarted state machine
/// checks delayed results against them (D blocks back at least).
pub fn recent_results(store: &Store) -> Vec<ExecutionResult> {
    let read = || -> Result<Vec<ExecutionResult>, kestrel_storage::StorageError> {
        store.view(|r| {
            let head = r.head()?.unwrap_or(0);
            let mut out = Vec::new();
            for number in head.saturating_sub(RESULTS_REPLAYED) + 1..=head {
                let (Some(header), Some(hash)) = (r.header(number)?, r.block_hash(number)?) else {
                    continue;
                };
                out.push(ExecutionResult {
                    number,
                    block_hash: hash,
                    state_root: header.state_root,
                    receipts_root: header.receipts_root,
                });
            }
            Ok(out)
        })?
    };
    read().unwrap_or_else(|err| {
        tracing::error!(target: "node::validator", %err, "reading recent execution results");
        Vec::new()
    })
}
