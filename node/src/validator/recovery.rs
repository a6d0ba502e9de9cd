//! The driver's crash recovery. What it persists before a vote or timeout leaves: the safety
//! state and the blocks voted for above the log head, with their payloads. How it rejoins: block
//! sync at start (or when a certificate shows it far behind), then a state machine restarted
//! from the log head with the persisted safety state, recent execution results and the blocks
//! voted for (their payloads back in the cache), so that a network whose validators all
//! restarted still holds the block its high QC certifies. Also the answers to peers' sync
//! requests.

use super::Driver;
use crate::validator::{
    fatal,
    finality::recent_results,
    metrics::{SAFETY_PERSIST_BYTES, SAFETY_PERSIST_SECONDS, SYNC_ACTIVE, SYNC_BLOCKS_TOTAL},
    payload::Payload,
    payloads::PayloadCache,
    store::VotedBlock,
    sync::{BlockSync, answer},
    wire::{SyncResponse, SyncedBlock},
};
use alloy_primitives::keccak256;
use kestrel_consensus::bft::{Bft, Block, Event, SafetyState};
use kestrel_net::{Kind, PeerId};
use kestrel_pipeline::mempool::TxPool;
use std::time::Instant;

/// A certificate more than this many blocks above our log means consensus alone (which fetches
/// missing blocks one request at a time, from memory) is the slow way back: sync instead.
const SYNC_GAP_BLOCKS: u64 = 8;

impl Driver {
    /// A block about to be voted for, with its payload if here: written with the next state.
    pub(super) fn keep_voted(&mut self, block: Block) {
        let payload = self.payloads.get(&block.payload_hash);
        let payload = payload.map(|p| p.bytes().clone()).unwrap_or_default();
        self.safety_file.keep(VotedBlock { block, payload });
    }

    /// Durable before the next command: voting on without the state on disk could make us vote
    /// twice after a crash.
    pub(super) fn persist_safety(&mut self, state: SafetyState) {
        let started = Instant::now();
        match self.safety_file.store(&state) {
            Ok(bytes) => {
                metrics::histogram!(SAFETY_PERSIST_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(SAFETY_PERSIST_BYTES).increment(bytes as u64);
            }
            Err(err) => fatal(&format!("persisting the consensus safety state: {err}")),
        }
        self.safety = state;
    }

    /// At start: sync from peers first; a chain of one validator has nobody to sync from and its
    /// whole history here.
    pub(super) fn catch_up(&mut self) {
        if self.members.ids.len() > 1 {
            self.begin_sync(self.now(), 0);
        } else {
            self.finish_sync();
        }
    }

    /// A message certifies `height`: far above our log, sync instead of feeding consensus.
    pub(super) fn check_behind(&mut self, height: u64) {
        if self.sync.is_none() && height > self.finality.height() + SYNC_GAP_BLOCKS {
            tracing::info!(target: "node::validator", ours = self.finality.height(), certified = height, "behind the network; syncing blocks");
            self.begin_sync(self.now(), height);
        }
    }

    fn begin_sync(&mut self, now: u64, certified: u64) {
        metrics::gauge!(SYNC_ACTIVE).set(1.0);
        self.builder.cancel();
        self.sync = Some(BlockSync::start(now, certified));
    }

    /// Caught up (as far as a peer knows): restart the state machine from the log head, with our
    /// persisted safety state, recent execution results and the blocks we voted for above the
    /// head, and join consensus.
    pub(super) fn finish_sync(&mut self) {
        self.sync = None;
        metrics::gauge!(SYNC_ACTIVE).set(0.0);
        self.timers.clear();
        self.finality.clear_waiting();
        self.bft = Bft::new(
            self.config.clone(),
            self.members.key.clone(),
            self.members.set.clone(),
            self.finality.head().clone(),
            self.safety.clone(),
        )
        .expect("the validator set was accepted at start");
        for result in recent_results(&self.store) {
            self.feed(Event::Executed(result));
        }
        let head = self.finality.height();
        let voted = self.safety_file.voted().iter();
        let voted = voted
            .filter(|v| v.block.height > head)
            .map(|v| v.block.clone());
        self.feed(Event::Restore(voted.collect()));
        tracing::info!(target: "node::validator", height = self.finality.height(), round = self.bft.round().0, "joining consensus");
        self.feed(Event::Start);
    }

    /// A validator's or a full node's request.
    pub(super) fn on_sync_request(&mut self, from: &PeerId, bytes: &[u8]) {
        if self
            .snapshots
            .as_ref()
            .is_some_and(|s| s.offer(from, bytes))
        {
            return;
        }
        match answer(bytes, self.finality.log(), &self.payloads) {
            Ok(Some(response)) => self
                .net
                .send(from, Kind::SyncResponse, response.encode().into()),
            Ok(None) => {}
            Err(err) => fatal(&format!("reading the block log: {err}")),
        }
    }

    pub(super) fn on_sync_response(&mut self, bytes: &[u8]) {
        match SyncResponse::decode(bytes) {
            Ok(SyncResponse::Payload(bytes)) => self.on_fetched_payload(bytes),
            Ok(SyncResponse::Blocks(blocks)) => self.on_synced_blocks(blocks),
            // State sync's answers: a validator never asks (only a full node state-syncs).
            Ok(
                SyncResponse::SnapshotTop(_)
                | SyncResponse::StatePart(_)
                | SyncResponse::SnapshotGone { .. },
            ) => {}
            Err(err) => {
                tracing::debug!(target: "node::validator", %err, "undecodable sync response")
            }
        }
    }

    /// A payload asked for because its proposal never arrived: a finalized block's (for the
    /// log) or the block a build waits on (for the build). Its transactions reached the pool
    /// all the same (forwarded, or by our RPC).
    fn on_fetched_payload(&mut self, bytes: alloy_primitives::Bytes) {
        let hash = keccak256(&bytes);
        let finalized = self.finality.wants(hash);
        let parent = self.builder.wants(hash).cloned();
        if finalized.is_none() && parent.is_none() {
            return;
        }
        let payload = match Payload::decode_reusing(bytes, Some(&self.pool)) {
            Ok(payload) => payload,
            // A certified block's payload was checked by a quorum: a bad one is the peer's
            // fault, so the next peer is asked.
            Err(err) => {
                return tracing::warn!(target: "node::validator", %err, "peer sent an invalid payload");
            }
        };
        if let Some(block) = parent {
            tracing::info!(target: "node::validator", height = block.height, "fetched the payload of the block to build on");
            self.keep_payload(&block, payload.clone());
        }
        if let Some(height) = finalized {
            self.payloads.insert_fetched(height, payload);
            self.process_commits();
        }
    }

    fn on_synced_blocks(&mut self, blocks: Vec<SyncedBlock>) {
        let Some(sync) = &mut self.sync else { return };
        if blocks.is_empty() {
            let (height, peers) = (self.finality.height(), self.net.connected_peers().len());
            if sync.on_nothing_newer(height, SYNC_GAP_BLOCKS, peers) {
                self.finish_sync();
            }
            return;
        }
        let (head, set) = (self.finality.head(), &self.members.set);
        let checked = match sync.on_blocks(head, blocks, set, &self.pool) {
            Ok(checked) => checked,
            Err(err) => {
                tracing::warn!(target: "node::validator", %err, "rejected a block sync response");
                return;
            }
        };
        let count = checked.len();
        if count == 0 {
            return;
        }
        for (block, payload) in checked {
            self.finality.append(block, &payload);
        }
        self.finality.sync_log();
        self.payloads.prune(self.finality.height());
        self.safety_file.prune(self.finality.height());
        metrics::counter!(SYNC_BLOCKS_TOTAL).increment(count as u64);
        tracing::info!(target: "node::validator", height = self.finality.height(), blocks = count, "synced finalized blocks");
    }
}

/// The payloads of the blocks we voted for above the log head, back in the cache (their
/// children are built on them and peers fetch them from us) and in flight in the pool.
pub(super) fn restore_payloads(
    payloads: &mut PayloadCache,
    pool: &TxPool,
    voted: &[VotedBlock],
    head: u64,
) {
    for v in voted.iter().filter(|v| v.block.height > head) {
        if v.payload.is_empty() {
            continue;
        }
        match Payload::decode(v.payload.clone()) {
            Ok(payload) if payload.hash() == v.block.payload_hash => {
                pool.on_proposed(v.block.height, payload.txs());
                payloads.insert_fetched(v.block.height, payload);
                payloads.remember(&v.block);
            }
            Ok(_) => {
                tracing::warn!(target: "node::validator", height = v.block.height, "a kept payload is not its block's")
            }
            Err(err) => {
                tracing::warn!(target: "node::validator", height = v.block.height, %err, "a kept payload does not decode")
            }
        }
    }
    if !voted.is_empty() {
        tracing::info!(target: "node::validator", blocks = voted.len(), head, "restored the blocks voted for before the restart");
    }
}
