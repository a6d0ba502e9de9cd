//! Consensus metrics, recorded through the `metrics` facade (recording is not I/O: without an
//! installed recorder it does nothing, which is what the simulation runs with).

pub const ROUND: &str = "kestrel_consensus_round";
pub const HEIGHT: &str = "kestrel_consensus_height";
pub const PROPOSALS: &str = "kestrel_consensus_proposals_total";
pub const VOTES: &str = "kestrel_consensus_votes_total";
pub const QCS: &str = "kestrel_consensus_qcs_created_total";
pub const TCS: &str = "kestrel_consensus_tcs_created_total";
pub const TIMEOUTS: &str = "kestrel_consensus_timeouts_total";
pub const LEADER_FAILURES: &str = "kestrel_consensus_leader_failures_total";
pub const COMMIT_LATENCY: &str = "kestrel_consensus_commit_latency_seconds";
pub const INVALID_MESSAGES: &str = "kestrel_consensus_invalid_messages_total";
pub const RESULT_MISMATCH: &str = "kestrel_consensus_execution_result_mismatch_total";
pub const RESULTS_VERIFIED: &str = "kestrel_consensus_delayed_results_verified_total";
pub const HALTED: &str = "kestrel_consensus_halted";
pub const BAD_TIMESTAMPS: &str = "kestrel_consensus_bad_timestamps_total";

/// Declare names and help texts; a driver calls this once after installing its recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(ROUND, "Current consensus round");
    describe_gauge!(HEIGHT, "Height of the last committed (finalized) block");
    describe_counter!(PROPOSALS, "Proposals this validator made as leader");
    describe_counter!(VOTES, "Votes this validator sent");
    describe_counter!(
        QCS,
        "Quorum certificates this validator assembled as next leader"
    );
    describe_counter!(TCS, "Timeout certificates this validator assembled");
    describe_counter!(TIMEOUTS, "Rounds this validator timed out in");
    describe_counter!(
        LEADER_FAILURES,
        "Rounds that timed out without a proposal from their leader"
    );
    describe_histogram!(
        COMMIT_LATENCY,
        metrics::Unit::Seconds,
        "From a block's proposal timestamp to its commit here"
    );
    describe_counter!(
        INVALID_MESSAGES,
        "Messages dropped because verification failed"
    );
    describe_counter!(
        RESULT_MISMATCH,
        "Delayed execution results in proposals that differ from this node's own"
    );
    describe_counter!(
        RESULTS_VERIFIED,
        "Delayed execution results in proposals that equal this node's own"
    );
    describe_counter!(
        BAD_TIMESTAMPS,
        "Proposals not voted for because their timestamp was not after their parent's or too far ahead of our clock"
    );
    describe_gauge!(
        HALTED,
        "1 once a certified block carried an execution result differing from ours: this node stopped voting"
    );
}
