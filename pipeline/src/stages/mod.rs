//! The stages of the node and the channels between them:
//!
//! ```text
//! RPC ─▶ ingress (recovery + validation) ─▶ pool ─▶ consensus driver ─▶ execution ─▶ state root + commit
//!                                            ▲               ▲                          │
//!                                            │               └──── execution results ───┤
//!                                            └──────────────── committed nonces ────────┘
//! ```
//!
//! Ordering is the consensus driver's (`kestrel-node`'s `validator` module), for the dev chain
//! too. Each stage runs on its own thread; channels are bounded, so a slow stage holds the ones
//! before it back (the driver stops handing finalized blocks to a full execution queue) instead
//! of anything being dropped.

mod commit;
mod execution;
mod hashes;

pub use commit::CommitStage;
pub use execution::ExecutionStage;
pub use hashes::RecentHashes;

/// Proposals waiting for execution.
pub const EXECUTION_QUEUE_MAX: usize = 8;
/// Executed blocks waiting for the state root and commit.
pub const COMMIT_QUEUE_MAX: usize = 8;
/// Execution results waiting for the consensus driver. Results are small and the driver drains
/// them every loop; the bound only keeps a stalled driver from growing memory (commit then waits).
pub const RESULTS_QUEUE_MAX: usize = 1_024;
