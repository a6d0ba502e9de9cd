//! Kestrel's pipeline: the stages between an RPC request and a committed block, the executors and
//! the revm bridge.

mod collision;
pub mod deposits;
pub mod evm;
pub mod executor;
pub mod import;
pub mod mempool;
pub mod parallel;
pub mod stages;
pub mod state;
pub mod status;
pub mod tx_encoding;

pub use executor::{
    BlockInput, BlockOutput, Dropped, ExecError, Executor, InvalidTxPolicy, SequentialExecutor,
};
pub use parallel::{BlockStats, PARALLEL_MIN_TXS, ParallelExecutor};

/// Senders recovered from signatures (secp256k1, ~30 µs each), by `path`: `ingress` (RPC and
/// forwarded transactions) or `payload` (the transactions of payloads received, proposed or
/// synced, whose sender the pool did not hold).
pub const SENDER_RECOVERIES: &str = "kestrel_tx_sender_recoveries_total";

/// Declares the pipeline's metrics with their help texts (see docs/metrics.md).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "kestrel_ingress_txs_total",
        "Raw transactions received by the ingress stage"
    );
    describe_histogram!(
        "kestrel_ingress_batch_seconds",
        "Time to recover and validate one ingress batch"
    );
    describe_gauge!(
        "kestrel_ingress_queue_depth",
        "Raw transactions waiting for sender recovery, by source queue (rpc, forwarded)"
    );
    describe_counter!(
        SENDER_RECOVERIES,
        "Transaction senders recovered from their signatures, by path (ingress, payload)"
    );
    describe_counter!(
        "kestrel_mempool_admitted_total",
        "Transactions admitted to the pool"
    );
    describe_counter!(
        "kestrel_mempool_rejected_total",
        "Transactions refused, by reason"
    );
    describe_counter!(
        "kestrel_mempool_replaced_total",
        "Transactions replaced by a higher-fee one"
    );
    describe_counter!(
        "kestrel_mempool_evicted_total",
        "Transactions dropped for room, by reason: gap_fill (their sender's next nonce came), pool_full or sender_full"
    );
    describe_counter!(
        "kestrel_mempool_returned_total",
        "Transactions back in the pool after leaving for a block that did not take them, by reason (abandoned, lost, not_executed)"
    );
    describe_counter!(
        "kestrel_mempool_expired_total",
        "Queued transactions dropped because their nonce gap did not fill in their lifetime"
    );
    describe_counter!(
        "kestrel_ordering_invalid_txs_total",
        "Pooled transactions dropped at block building for breaking the block's static rules"
    );
    describe_counter!(
        mempool::UNPAYABLE,
        "Transactions left out of a block because their sender's balance does not cover them on top of its transactions in flight, by action (waits, dropped)"
    );
    // Rare events, exported from the start so dashboards and rate() see them as 0, not absent.
    for name in [
        "kestrel_mempool_expired_total",
        "kestrel_ordering_invalid_txs_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for kind in Dropped::KINDS {
        metrics::counter!("kestrel_execution_dropped_txs_total", "reason" => kind).absolute(0);
    }
    for action in ["waits", "dropped"] {
        metrics::counter!(mempool::UNPAYABLE, "action" => action).absolute(0);
    }
    // A chain of one never recovers a payload's senders: 0 rather than absent there too.
    for path in ["ingress", "payload"] {
        metrics::counter!(SENDER_RECOVERIES, "path" => path).absolute(0);
    }
    describe_gauge!(
        "kestrel_mempool_pending_txs",
        "Executable transactions in the pool"
    );
    describe_gauge!(
        "kestrel_mempool_queued_txs",
        "Transactions waiting for a nonce gap to fill"
    );
    describe_gauge!(
        "kestrel_execution_queue_depth",
        "Proposals waiting for execution"
    );
    describe_histogram!(
        "kestrel_execution_block_seconds",
        "Time to execute one block"
    );
    describe_counter!("kestrel_execution_blocks_total", "Blocks executed");
    describe_counter!(
        "kestrel_execution_txs_total",
        "Transactions included by execution"
    );
    describe_counter!(
        "kestrel_execution_dropped_txs_total",
        "Transactions left out because they were invalid at execution, by reason (nonce_too_low, nonce_too_high, other)"
    );
    describe_counter!("kestrel_execution_gas_total", "Gas used by executed blocks");
    describe_counter!(
        "kestrel_execution_reexecutions_total",
        "Transactions the parallel executor re-executed at commit (invalid reads or replay)"
    );
    describe_counter!(
        "kestrel_execution_validation_failures_total",
        "Speculative executions whose reads had changed by commit"
    );
    describe_counter!(
        "kestrel_execution_dependency_waits_total",
        "Parallel executions stopped at a read of an aborted execution's write, to wait for it"
    );
    describe_counter!(
        "kestrel_execution_sequential_fallback_total",
        "Blocks the parallel executor ran sequentially: reason=small (too few transactions) or \
         reason=conflicts (the rest of a block whose commits re-executed too much)"
    );
    describe_counter!(
        "kestrel_execution_relaxed_merges_total",
        "Plain transfers whose recipient balance changed before commit, committed by re-applying \
         the credit instead of re-executing"
    );
    describe_histogram!(
        "kestrel_execution_parallel_phase_seconds",
        "Time per block in each parallel execution phase (execute, validate, commit)"
    );
    describe_gauge!(
        "kestrel_commit_queue_depth",
        "Executed blocks waiting for the state root and commit"
    );
    describe_histogram!(
        "kestrel_stateroot_block_seconds",
        "Time to apply state and compute one block's state root"
    );
    describe_histogram!(
        "kestrel_commit_block_seconds",
        "Time to write the blocks of one write transaction and commit it (the store's sync thread then makes it durable)"
    );
    describe_histogram!(
        "kestrel_commit_group_blocks",
        "Blocks committed in one write transaction (more than one when blocks queue up)"
    );
    describe_gauge!(
        "kestrel_chain_committed_block",
        "Number of the last committed block"
    );
}
