//! The consensus driver's own metrics (the machine's are `bft::metrics`, the transport's
//! `kestrel_net::describe_metrics`).

use kestrel_consensus::bft;

pub const SYNC_BLOCKS_TOTAL: &str = "kestrel_sync_blocks_total";
pub const SYNC_ACTIVE: &str = "kestrel_sync_active";
pub const SYNC_MODE: &str = "kestrel_sync_mode";
pub const FULL_NODE_LAG_SECONDS: &str = "kestrel_full_node_lag_seconds";
pub const FULL_NODE_RESULTS_CHECKED: &str = "kestrel_full_node_results_checked_total";
pub const PAYLOADS_REJECTED: &str = "kestrel_consensus_payloads_rejected_total";
pub const EARLY_TIMEOUTS: &str = "kestrel_consensus_early_timeouts_total";
pub const PARENT_PAYLOAD_REQUESTS: &str = "kestrel_consensus_parent_payload_requests_total";
pub const ORDERED_TXS: &str = "kestrel_ordering_txs_total";
pub const PROPOSE_SECONDS: &str = "kestrel_ordering_propose_seconds";
pub const SAFETY_PERSIST_SECONDS: &str = "kestrel_consensus_safety_persist_seconds";
pub const SAFETY_PERSIST_BYTES: &str = "kestrel_consensus_safety_persist_bytes_total";
pub use super::payload::SENDERS_REUSED;

pub fn describe() {
    metrics::describe_counter!(
        SYNC_BLOCKS_TOTAL,
        "Finalized blocks fetched from peers by block sync (on a full node, every block it follows)"
    );
    metrics::describe_gauge!(
        FULL_NODE_LAG_SECONDS,
        "On a full node: age of its newest logged block (its proposal timestamp) when it arrived"
    );
    metrics::describe_counter!(
        FULL_NODE_RESULTS_CHECKED,
        "On a full node: its execution results compared with the ones the finalized blocks carry (a difference counts in kestrel_consensus_execution_result_mismatch_total)"
    );
    metrics::describe_gauge!(
        SYNC_ACTIVE,
        "1 while this validator is catching up by block sync instead of taking part in consensus"
    );
    metrics::describe_gauge!(
        SYNC_MODE,
        "On a full node: 1 for the way it is getting the chain now (mode: state = state sync, blocks = block sync catching up, following = at the head), 0 for the others"
    );
    metrics::describe_counter!(
        PAYLOADS_REJECTED,
        "Proposals not passed to consensus because their payload was invalid, by reason"
    );
    metrics::describe_counter!(
        EARLY_TIMEOUTS,
        "Rounds timed out after a block time because their leader or the next leader was not connected"
    );
    metrics::describe_counter!(
        PARENT_PAYLOAD_REQUESTS,
        "Requests a leader sent for the payload of the block it builds on, whose proposal never reached it"
    );
    metrics::describe_counter!(ORDERED_TXS, "Transactions ordered into proposals");
    metrics::describe_histogram!(PROPOSE_SECONDS, "Time to build one proposal's payload");
    metrics::describe_histogram!(
        SAFETY_PERSIST_SECONDS,
        "Time to make the safety state and the blocks voted for durable, before a vote or timeout"
    );
    metrics::describe_counter!(
        SAFETY_PERSIST_BYTES,
        "Bytes of safety state and blocks voted for written (each write replaces the file)"
    );
    metrics::describe_counter!(
        SENDERS_REUSED,
        "Transactions of received proposals whose sender came from this validator's pool instead of being recovered again"
    );
    metrics::counter!(EARLY_TIMEOUTS).absolute(0);
    metrics::counter!(PARENT_PAYLOAD_REQUESTS).absolute(0);
    metrics::counter!(SENDERS_REUSED).absolute(0);
    // Exists from start-up at 0, so an alert on its increase sees the first mismatch.
    metrics::counter!(bft::metrics::RESULT_MISMATCH).absolute(0);
    metrics::gauge!(bft::metrics::HALTED).set(0.0);
}
