//! What flows between the stages: ordered (finalized) blocks from consensus, executed blocks from execution, sealed
//! blocks from the state root stage.

use crate::{BlockNumber, RecoveredTx, StateChanges};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_primitives::{Address, B256};

/// The execution result of an earlier block, carried by a later proposal (Monad's delayed
/// execution result): proposal N carries block N−D's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionResult {
    pub number: BlockNumber,
    pub block_hash: B256,
    pub state_root: B256,
    pub receipts_root: B256,
}

/// A block as consensus finalized it, on its way to execution. Everything here is known without
/// executing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedBlock {
    pub number: BlockNumber,
    pub round: u64,
    pub timestamp_ms: u64,
    pub beneficiary: Address,
    pub gas_limit: u64,
    /// EIP-1559 base fee, computed at proposal time from the parent proposal (see
    /// docs/ARCHITECTURE.md, "Base fee").
    pub base_fee: u64,
    /// Sum of the gas limits of `txs`; the next proposal's base fee follows from it.
    pub gas_committed: u64,
    pub txs: Vec<RecoveredTx>,
    pub delayed_result: Option<ExecutionResult>,
}

impl OrderedBlock {
    /// Ethereum timestamps are seconds; several blocks can share one at sub-second block times.
    pub fn timestamp_secs(&self) -> u64 {
        self.timestamp_ms / 1000
    }
}

/// A block after execution, before its state root is known. `header` has every field but
/// `parent_hash` and `state_root`.
#[derive(Debug, Clone)]
pub struct ExecutedBlock {
    pub header: Header,
    /// The transactions that made it into the block, in order.
    pub txs: Vec<RecoveredTx>,
    pub receipts: Vec<ReceiptEnvelope>,
    pub changes: StateChanges,
    /// Transactions left out because they were invalid at execution time (hash, reason).
    pub dropped: Vec<(B256, String)>,
}

/// A complete Ethereum block with its receipts, as committed and served over RPC.
#[derive(Debug, Clone)]
pub struct SealedBlock {
    pub hash: B256,
    pub header: Header,
    pub txs: Vec<RecoveredTx>,
    pub receipts: Vec<ReceiptEnvelope>,
}

impl SealedBlock {
    /// The next block after this one, with no transactions and the header otherwise copied
    /// (timestamp one second later): for tests and benchmarks that store blocks without
    /// building them.
    pub fn empty_child(&self) -> SealedBlock {
        let mut header = self.header.clone();
        header.number += 1;
        header.parent_hash = self.hash;
        header.timestamp += 1;
        SealedBlock {
            hash: header.hash_slow(),
            header,
            txs: Vec::new(),
            receipts: Vec::new(),
        }
    }

    pub fn number(&self) -> BlockNumber {
        self.header.number
    }
    pub fn result(&self) -> ExecutionResult {
        ExecutionResult {
            number: self.header.number,
            block_hash: self.hash,
            state_root: self.header.state_root,
            receipts_root: self.header.receipts_root,
        }
    }
}
