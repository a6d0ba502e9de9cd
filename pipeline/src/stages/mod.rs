//! The stages of the node and the channels between them:
//!
//! ```text
//! RPC ─▶ ingress (recovery + validation) ─▶ pool ─▶ ordering ─▶ execution ─▶ state root + commit
//!                                            ▲         ▲                          │
//!                                            │         └──── execution results ───┤
//!                                            └──────────── committed nonces ──────┘
//! ```
//!
//! Each stage runs on its own thread; channels are bounded, so a slow stage holds the ones before
//! it back (ordering blocks on a full execution queue) instead of anything being dropped.

mod commit;
mod execution;
mod hashes;
mod ordering;

pub use commit::CommitStage;
pub use execution::ExecutionStage;
pub use hashes::RecentHashes;
pub use ordering::{
    OrderingConfig, OrderingStage, ParentFees, next_base_fee, now_ms, ordering_parent,
};

/// Proposals waiting for execution.
pub const EXECUTION_QUEUE_MAX: usize = 8;
/// Executed blocks waiting for the state root and commit.
pub const COMMIT_QUEUE_MAX: usize = 8;
