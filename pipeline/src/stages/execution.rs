//! The execution stage: executes each proposal on top of the overlay of executed-but-uncommitted
//! blocks, so it never waits for the state root or the database.

use crate::{
    executor::{BlockInput, Executor, InvalidTxPolicy},
    stages::RecentHashes,
    state::LatestState,
    status::ChainStatus,
};
use alloy_consensus::{
    EMPTY_OMMER_ROOT_HASH, Header, TxReceipt, constants::EMPTY_WITHDRAWALS, proofs,
};
use alloy_primitives::{B256, Bloom, keccak256};
use crossbeam_channel::{Receiver, Sender};
use kestrel_types::{ChainSpec, ExecutedBlock, Fork, OrderedBlock};
use std::{sync::Arc, time::Instant};

pub struct ExecutionStage {
    pub spec: Arc<ChainSpec>,
    pub executor: Box<dyn Executor>,
    pub state: LatestState,
    pub hashes: Arc<RecentHashes>,
    pub status: Arc<ChainStatus>,
    pub blocks: Receiver<OrderedBlock>,
    pub executed: Sender<ExecutedBlock>,
}

impl ExecutionStage {
    /// Runs until the consensus driver hangs up and every proposal is executed.
    pub fn run(mut self) {
        while let Ok(proposal) = self.blocks.recv() {
            let started = Instant::now();
            let block = match self.execute(&proposal) {
                Ok(block) => block,
                Err(err) => {
                    // Our own proposals execute by construction; failing here means the state
                    // is unreadable, and going on would fork.
                    tracing::error!(target: "pipeline::execution", number = proposal.number, %err, "execution failed");
                    panic!("execution of block {} failed: {err}", proposal.number);
                }
            };
            self.state.overlay.push(proposal.number, &block.changes);
            ChainStatus::set(&self.status.executed, proposal.number);
            metrics::histogram!("kestrel_execution_block_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("kestrel_execution_blocks_total").increment(1);
            metrics::counter!("kestrel_execution_txs_total").increment(block.txs.len() as u64);
            metrics::counter!("kestrel_execution_gas_total").increment(block.header.gas_used);
            metrics::gauge!("kestrel_commit_queue_depth").set(self.executed.len() as f64);
            if self.executed.send(block).is_err() {
                return;
            }
        }
    }

    fn execute(&mut self, proposal: &OrderedBlock) -> Result<ExecutedBlock, crate::ExecError> {
        let mut header = proposal_header(&self.spec, proposal);
        let (spec, hashes, executor) = (&self.spec, &*self.hashes, &mut self.executor);
        let output = self.state.with_view(|view| {
            let input = BlockInput {
                header: &header,
                txs: &proposal.txs,
                withdrawals: &[],
                policy: InvalidTxPolicy::Skip,
            };
            executor.execute(spec, input, view, hashes)
        })??;
        let txs: Vec<_> = output
            .included
            .iter()
            .map(|&i| proposal.txs[i].clone())
            .collect();
        for d in &output.dropped {
            tracing::debug!(target: "pipeline::execution", tx = %proposal.txs[d.index].hash(), reason = %d.reason, "dropped at execution");
            metrics::counter!("kestrel_execution_dropped_txs_total", "reason" => d.kind)
                .increment(1);
        }
        header.gas_used = output.gas_used;
        header.blob_gas_used = header.blob_gas_used.map(|_| output.blob_gas_used);
        header.requests_hash = output.requests_hash;
        header.receipts_root = proofs::calculate_receipt_root(&output.receipts);
        header.transactions_root = kestrel_types::transactions_root(&txs);
        header.logs_bloom = output
            .receipts
            .iter()
            .fold(Bloom::ZERO, |bloom, r| bloom | r.bloom());
        let dropped = output
            .dropped
            .iter()
            .map(|d| (proposal.txs[d.index].hash(), d.reason.clone()))
            .collect();
        Ok(ExecutedBlock {
            header,
            txs,
            receipts: output.receipts,
            changes: output.changes,
            dropped,
        })
    }
}

/// The Ethereum header of an ordered block, minus what execution and the state root fill in.
pub fn proposal_header(spec: &ChainSpec, proposal: &OrderedBlock) -> Header {
    let timestamp = proposal.timestamp_secs();
    let fork = spec.fork_at(timestamp);
    Header {
        parent_hash: B256::ZERO,
        ommers_hash: EMPTY_OMMER_ROOT_HASH,
        beneficiary: proposal.beneficiary,
        number: proposal.number,
        gas_limit: proposal.gas_limit,
        timestamp,
        // Post-merge randomness; derived from the proposal so every validator agrees on it.
        mix_hash: keccak256(
            [
                proposal.round.to_be_bytes(),
                proposal.timestamp_ms.to_be_bytes(),
            ]
            .concat(),
        ),
        base_fee_per_gas: Some(proposal.base_fee),
        withdrawals_root: Some(EMPTY_WITHDRAWALS),
        blob_gas_used: Some(0),
        excess_blob_gas: Some(0),
        parent_beacon_block_root: Some(B256::ZERO),
        requests_hash: (fork >= Fork::Prague).then_some(alloy_eips::eip7685::EMPTY_REQUESTS_HASH),
        ..Default::default()
    }
}
