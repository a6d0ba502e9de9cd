//! Byzantine-fault-tolerant consensus for N = 3f+1 validators: pipelined two-chain HotStuff in
//! the style of MonadBFT / HotStuff-2 / Jolteon. See `docs/CONSENSUS.md` for the protocol, the
//! commit rule and the signature scheme.
//!
//! [`Bft`] is a pure state machine: `update(now_ms, Event) -> Vec<Command>`. It owns no socket,
//! clock, thread or file; a driver delivers network messages, timers, payloads and execution
//! results as [`Event`]s and carries out the [`Command`]s.

mod machine;
pub mod metrics;
#[cfg(test)]
mod tests;
mod types;
mod validators;
mod wire;

pub use machine::{
    Bft, Command, CommittedBlock, Config, Event, ROUND_TIMEOUT_MAX_FACTOR, SafetyState,
    TIMESTAMP_AHEAD_MAX_MS,
};
pub use types::{
    Block, BlockId, BlockRequest, CertCache, CommitProof, Message, Proposal, QuorumCert, SignerSig,
    Timeout, TimeoutCert, TimeoutSig, Unverified, Verified, Vote,
};
pub use validators::{
    Signature, VALIDATORS_MAX, ValidatorId, ValidatorIndex, ValidatorKey, ValidatorSet,
};
pub use wire::WIRE_VERSION;

/// Largest encoded message accepted from the network.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;

/// Most blocks one sync request asks for, or one response carries.
pub const SYNC_BLOCKS_MAX: usize = 32;
