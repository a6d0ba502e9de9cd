//! Consensus orders blocks; it never executes them. This crate is a pure state machine in the
//! shape of monad-bft (`update(event) -> Vec<Command>`): no sockets, clocks, threads or disk.
//! Time, messages and execution results come in as events; proposals, votes, timers and commits
//! go out as commands, and a driver carries them out. Every chain runs [`bft`], the dev chain
//! too: it is a BFT chain of one validator.

pub mod bft;
pub mod error;
#[cfg(test)]
mod sim;

/// Round of consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Round(pub u64);

impl Round {
    pub fn next(self) -> Round {
        Round(self.0 + 1)
    }
}

pub use kestrel_types::ExecutionResult;
