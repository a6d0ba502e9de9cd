//! The leader's side of ordering: when consensus asks for a payload, build it a block time after
//! the parent block, from the pool, under the static and reserve balance rules of the block.

use super::payload::Payload;
use alloy_primitives::Address;
use kestrel_consensus::{Round, bft::BlockId};
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
            beneficiary,
            block_time_ms,
            spec,
            pool,
            state,
        }
    }

    pub fn request(&mut self, build: Build) {
        self.pending = Some(build);
    }

    pub fn cancel(&mut self) {
        self.pending = None;
    }

    /// When the pending build is due: a block time after its parent. None while the parent's
    /// payload is not here (`parent` gives its timestamp and fees): its votes can form the QC
    /// that made us leader before our decoder finishes it, and the base fee depends on it, so we
    /// wait (until the round ends) rather than let the round time out.
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
            self.pending = None;
        }
        let (timestamp_ms, fees) = parent(self.pending.as_ref()?.parent)?;
        if timestamp_ms + self.block_time_ms > now {
            return None;
        }
        let build = self.pending.take().expect("checked");
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
