//! The leader's side of ordering: when consensus asks for a payload, build it a block time after
//! the parent block, from the pool, under the static and reserve balance rules of the block. A
//! parent whose payload never reached us has it fetched from peers.

use super::{payload::Payload, sync::PayloadWanted};
use alloy_primitives::{Address, B256};
use kestrel_consensus::{
    Round,
    bft::{Block, BlockId},
};
use kestrel_net::PeerId;
use kestrel_pipeline::{
    mempool::{BlockRules, TxPool},
    state::LatestState,
};
use kestrel_types::{BLOCK_TXS_MAX, ChainSpec, ParentFees, next_base_fee};
use std::{sync::Arc, time::Instant};

/// A payload to build once the block time since the parent has passed.
pub struct Build {
    pub round: Round,
    pub height: u64,
    pub parent: BlockId,
}

pub struct Builder {
    pending: Option<Build>,
    /// The pending build's parent, while its payload is asked of one peer after another.
    parent_wanted: Option<(Block, PayloadWanted)>,
    pub beneficiary: Address,
    pub block_time_ms: u64,
    pub spec: Arc<ChainSpec>,
    pub pool: Arc<TxPool>,
    /// Where the reserve balance rule reads senders' balances.
    pub state: LatestState,
}

impl Builder {
    pub fn new(
        beneficiary: Address,
        block_time_ms: u64,
        spec: Arc<ChainSpec>,
        pool: Arc<TxPool>,
        state: LatestState,
    ) -> Self {
        Self {
            pending: None,
            parent_wanted: None,
            beneficiary,
            block_time_ms,
            spec,
            pool,
            state,
        }
    }

    pub fn request(&mut self, build: Build) {
        self.pending = Some(build);
        self.parent_wanted = None;
    }

    pub fn cancel(&mut self) {
        self.pending = None;
        self.parent_wanted = None;
    }

    /// The pending build's parent when its payload is not here (`parent` as for `due_ms`).
    pub fn missing_parent(
        &self,
        parent: impl Fn(BlockId) -> Option<(u64, ParentFees)>,
    ) -> Option<BlockId> {
        let b = self.pending.as_ref()?;
        parent(b.parent).is_none().then_some(b.parent)
    }

    /// A request for the payload of `parent` (the pending build's, held by consensus without
    /// its payload) to the next peer, if the last one has had its time. Its proposal never
    /// reached us (we were down or cut off when it was certified, or consensus fetched the
    /// block as an ancestor, without its payload); waiting would cost the whole round, backed
    /// off up to 16 s, so we ask, as finality asks for a finalized block's payload.
    pub fn ask_parent(
        &mut self,
        now: u64,
        peers: &[PeerId],
        parent: &Block,
    ) -> Option<(PeerId, Vec<u8>)> {
        if self
            .parent_wanted
            .as_ref()
            .is_none_or(|(b, _)| b.id() != parent.id())
        {
            let wanted = PayloadWanted::new(parent.payload_hash);
            self.parent_wanted = Some((parent.clone(), wanted));
        }
        let (_, wanted) = self.parent_wanted.as_mut().expect("set above");
        wanted.ask(now, peers)
    }

    /// The parent block whose payload is named `hash`, if we are asking for it.
    pub fn wants(&self, hash: B256) -> Option<&Block> {
        let (block, _) = self.parent_wanted.as_ref()?;
        (block.payload_hash == hash).then_some(block)
    }

    /// When the pending build is due: a block time after its parent. None while the parent's
    /// payload is not here (`parent` gives its timestamp and fees): its votes can form the QC
    /// that made us leader before our decoder finishes it, and the base fee depends on it, so we
    /// wait for it (the driver asks peers for it meanwhile, `ask_parent`) rather than propose
    /// on a parent we cannot execute.
    pub fn due_ms(&self, parent: impl Fn(BlockId) -> Option<(u64, ParentFees)>) -> Option<u64> {
        let b = self.pending.as_ref()?;
        parent(b.parent).map(|(timestamp_ms, _)| timestamp_ms + self.block_time_ms)
    }

    /// The payload of the pending build if it is due at `now`; a build for another round than
    /// `round` (ours) is dropped.
    pub fn build_due(
        &mut self,
        now: u64,
        round: Round,
        parent: impl Fn(BlockId) -> Option<(u64, ParentFees)>,
    ) -> Option<(Build, Payload)> {
        if self.pending.as_ref().is_some_and(|b| b.round != round) {
            self.cancel();
        }
        let (timestamp_ms, fees) = parent(self.pending.as_ref()?.parent)?;
        if timestamp_ms + self.block_time_ms > now {
            return None;
        }
        let build = self.pending.take().expect("checked");
        self.parent_wanted = None;
        let started = Instant::now();
        let base_fee = next_base_fee(fees);
        let gas_limit = self.spec.gas_limit;
        // Consensus stamps the block at least now: that picks the fork of its rules.
        let rules = BlockRules::new(&self.spec, now / 1000, gas_limit, base_fee);
        self.pool.expire_queued(Instant::now());
        let txs = self
            .pool
            .take_block(build.height, &rules, BLOCK_TXS_MAX, &self.state);
        let payload = Payload::build(self.beneficiary, gas_limit, base_fee, txs);
        metrics::counter!(super::metrics::ORDERED_TXS).increment(payload.tx_count() as u64);
        metrics::histogram!(super::metrics::PROPOSE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Some((build, payload))
    }
}
