//! The ordering stage: drives the consensus state machine with a clock and execution results,
//! and turns its `Propose` commands into proposals filled from the pool.

use crate::{
    mempool::{BlockRules, TxPool},
    state::LatestState,
    status::ChainStatus,
};
use alloy_eips::eip1559::BaseFeeParams;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use kestrel_consensus::{Command, Config, Event, SingleValidator};
use kestrel_types::{ChainSpec, ExecutionResult, Proposal};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Most transactions in one block (a bound on work per block besides gas).
pub const BLOCK_TXS_MAX: usize = 50_000;

#[derive(Debug, Clone)]
pub struct OrderingConfig {
    pub block_time_ms: u64,
    pub gas_limit: u64,
    pub execution_delay: u64,
    pub beneficiary: alloy_primitives::Address,
}

/// What the next proposal's base fee is computed from.
#[derive(Debug, Clone, Copy)]
pub struct ParentFees {
    pub gas_limit: u64,
    pub gas_committed: u64,
    pub base_fee: u64,
}

/// The base fee of the block after `parent`. Execution lags ordering, so gas *used* is unknown at
/// proposal time; Kestrel applies the EIP-1559 rule to the gas the parent *committed* (the sum of
/// its transactions' gas limits), which is known when it is proposed.
pub fn next_base_fee(parent: ParentFees) -> u64 {
    alloy_eips::calc_next_block_base_fee(
        parent.gas_committed.min(parent.gas_limit),
        parent.gas_limit,
        parent.base_fee,
        BaseFeeParams::ethereum(),
    )
}

/// The fees of an already committed block, as the parent of the next proposal (after a restart).
/// Its gas used stands in for the gas it committed.
pub fn ordering_parent(header: &alloy_consensus::Header) -> ParentFees {
    ParentFees {
        gas_limit: header.gas_limit,
        gas_committed: header.gas_used,
        base_fee: header.base_fee_per_gas.unwrap_or_default(),
    }
}

pub struct OrderingStage {
    pub config: OrderingConfig,
    pub spec: Arc<ChainSpec>,
    pub pool: Arc<TxPool>,
    /// Where the reserve balance rule reads senders' balances.
    pub state: LatestState,
    pub status: Arc<ChainStatus>,
    pub results: Receiver<ExecutionResult>,
    pub proposals: Sender<Proposal>,
    pub stop: Arc<AtomicBool>,
}

impl OrderingStage {
    /// Runs until `stop` is set; `head` is the last committed block and `parent` its fees.
    pub fn run(self, head: u64, mut parent: ParentFees) {
        let mut sm = SingleValidator::new(
            Config {
                block_time_ms: self.config.block_time_ms,
                execution_delay: self.config.execution_delay,
            },
            head,
        );
        ChainStatus::set(&self.status.next_base_fee, next_base_fee(parent));
        let mut wake_at_ms = now_ms();
        while !self.stop.load(Ordering::Acquire) {
            let wait = wake_at_ms.saturating_sub(now_ms());
            let event = match self.results.recv_timeout(Duration::from_millis(wait)) {
                Ok(result) => Event::Executed(result),
                Err(RecvTimeoutError::Timeout) => Event::Tick { now_ms: now_ms() },
                Err(RecvTimeoutError::Disconnected) => break,
            };
            for command in sm.update(event) {
                match command {
                    Command::ScheduleTick { at_ms } => wake_at_ms = at_ms,
                    Command::Propose {
                        number,
                        round,
                        timestamp_ms,
                        delayed_result,
                    } => {
                        let started = Instant::now();
                        let base_fee = next_base_fee(parent);
                        let rules = BlockRules::new(
                            &self.spec,
                            timestamp_ms / 1000,
                            self.config.gas_limit,
                            base_fee,
                        );
                        self.pool.expire_queued(Instant::now());
                        let txs = self
                            .pool
                            .take_block(number, &rules, BLOCK_TXS_MAX, &self.state);
                        let gas_committed = txs.iter().map(|t| t.gas_limit()).sum();
                        let proposal = Proposal {
                            number,
                            round: round.0,
                            timestamp_ms,
                            beneficiary: self.config.beneficiary,
                            gas_limit: self.config.gas_limit,
                            base_fee,
                            gas_committed,
                            txs,
                            delayed_result,
                        };
                        parent = ParentFees {
                            gas_limit: proposal.gas_limit,
                            gas_committed,
                            base_fee,
                        };
                        ChainStatus::set(&self.status.next_base_fee, next_base_fee(parent));
                        ChainStatus::set(&self.status.proposed, number);
                        metrics::counter!("kestrel_ordering_proposals_total").increment(1);
                        metrics::counter!("kestrel_ordering_txs_total")
                            .increment(proposal.txs.len() as u64);
                        metrics::histogram!("kestrel_ordering_propose_seconds")
                            .record(started.elapsed().as_secs_f64());
                        metrics::gauge!("kestrel_execution_queue_depth")
                            .set(self.proposals.len() as f64);
                        // A full execution queue blocks here: backpressure, nothing dropped.
                        if self.proposals.send(proposal).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch: the clock consensus state machines are driven with.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_fee_follows_eip1559_over_committed_gas() {
        let full = ParentFees {
            gas_limit: 200_000_000,
            gas_committed: 200_000_000,
            base_fee: 1_000_000_000,
        };
        assert_eq!(next_base_fee(full), 1_125_000_000);
        let empty = ParentFees {
            gas_committed: 0,
            ..full
        };
        assert_eq!(next_base_fee(empty), 875_000_000);
        let target = ParentFees {
            gas_committed: 100_000_000,
            ..full
        };
        assert_eq!(next_base_fee(target), 1_000_000_000);
    }
}
