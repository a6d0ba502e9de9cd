//! `eth_subscribe("kestrelNewHeads")`: each block as this node sees it proposed, voted for,
//! finalized, and verified (a later finalized block carried its execution result and it equals
//! ours), like Monad's `monadNewHeads` commit states. The first three are consensus blocks (an id,
//! not yet an Ethereum block hash: execution follows finality); `Verified` names the executed
//! block by its hash and roots.

use alloy_primitives::U64;
use kestrel_pipeline::status::{BlockProgress, CommitState};
use serde_json::{Value, json};

/// The notification for one step.
pub(crate) fn notification(progress: &BlockProgress) -> Value {
    match progress {
        BlockProgress::Ordered {
            state,
            number,
            round,
            block_id,
            parent_id,
            author,
            timestamp_ms,
        } => json!({
            "commitState": match state {
                CommitState::Proposed => "Proposed",
                CommitState::Voted => "Voted",
                CommitState::Finalized => "Finalized",
            },
            "blockNumber": U64::from(*number),
            "round": U64::from(*round),
            "blockId": block_id,
            "parentBlockId": parent_id,
            "author": U64::from(*author),
            "timestamp": U64::from(timestamp_ms / 1_000),
            "timestampMs": U64::from(*timestamp_ms),
        }),
        BlockProgress::Verified(result) => json!({
            "commitState": "Verified",
            "blockNumber": U64::from(result.number),
            "hash": result.block_hash,
            "stateRoot": result.state_root,
            "receiptsRoot": result.receipts_root,
        }),
    }
}
