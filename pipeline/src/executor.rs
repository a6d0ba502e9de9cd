//! Block execution behind one trait, so the sequential executor here and the parallel one that
//! follows are drop-ins for each other and can be compared on the same blocks.

use crate::{
    collision::StorageCollisions,
    deposits::{self, DepositLayoutError},
    evm::{BlockHashes, Hardforks, StateDb, bundle_to_changes, evm_env},
};
use alloy_consensus::{Header, ReceiptEnvelope};
use alloy_eips::{eip2935::HISTORY_STORAGE_ADDRESS, eip4895::Withdrawal};
use alloy_evm::{
    Evm, EvmFactory,
    block::{BlockExecutionError, BlockExecutionResult, BlockExecutor, BlockValidationError},
    eth::{
        EthBlockExecutionCtx, EthBlockExecutor, EthEvmFactory, receipt_builder::AlloyReceiptBuilder,
    },
};
use alloy_hardforks::EthereumHardforks;
use alloy_primitives::B256;
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{ChainSpec, RecoveredTx, StateChanges, state::KECCAK_EMPTY};
use revm::{
    context::result::InvalidTransaction,
    database::{State, states::bundle_state::BundleRetention},
};
use std::borrow::Cow;

/// What to do with a transaction that cannot be included (bad nonce, cannot pay, gas beyond what
/// is left in the block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidTxPolicy {
    /// Leave it out of the block (the node's own blocks: ordering happens before execution).
    Skip,
    /// Reject the whole block (importing someone else's executed block, e.g. conformance tests).
    Reject,
}

/// One block to execute.
pub struct BlockInput<'a> {
    /// Number, timestamp, beneficiary, gas limit, base fee, mix hash, blob and beacon-root fields
    /// must be final; parent hash and roots are not read.
    pub header: &'a Header,
    pub txs: &'a [RecoveredTx],
    pub withdrawals: &'a [Withdrawal],
    pub policy: InvalidTxPolicy,
}

/// The result of executing one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOutput {
    pub changes: StateChanges,
    /// One per included transaction.
    pub receipts: Vec<ReceiptEnvelope>,
    /// Indexes into the input of the transactions included, in order.
    pub included: Vec<usize>,
    /// Transactions left out under [`InvalidTxPolicy::Skip`].
    pub dropped: Vec<Dropped>,
    pub gas_used: u64,
    pub blob_gas_used: u64,
    /// EIP-7685 requests hash (Prague and later).
    pub requests_hash: Option<B256>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("transaction {index} invalid: {reason}")]
    InvalidTx { index: usize, reason: TxInvalid },
    #[error("block invalid: {0}")]
    InvalidBlock(String),
    #[error(transparent)]
    DepositLayout(#[from] DepositLayoutError),
    #[error("execution failed: {0}")]
    Internal(String),
}

/// Why a transaction cannot be included in a block. Typed, so that block import can tell the
/// reasons apart (e.g. to match the Ethereum tests' expected exceptions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxInvalid {
    /// revm's checks: nonce, fees, balance, intrinsic gas, blob fields.
    #[error(transparent)]
    Evm(InvalidTransaction),
    /// Its gas limit is more than the gas the block has left.
    #[error("gas limit {gas_limit} is more than the block's remaining {available}")]
    BlockGasExceeded { gas_limit: u64, available: u64 },
    /// Any other reason the block executor gives.
    #[error("{0}")]
    Other(String),
}

impl From<BlockValidationError> for TxInvalid {
    fn from(err: BlockValidationError) -> Self {
        match err {
            BlockValidationError::InvalidTx { error, .. } => match error.as_invalid_tx_err() {
                Some(invalid) => Self::Evm(invalid.clone()),
                None => Self::Other(error.to_string()),
            },
            BlockValidationError::TransactionGasLimitMoreThanAvailableBlockGas {
                transaction_gas_limit,
                block_available_gas,
            } => Self::BlockGasExceeded {
                gas_limit: transaction_gas_limit,
                available: block_available_gas,
            },
            err => Self::Other(err.to_string()),
        }
    }
}

pub trait Executor: Send {
    fn execute(
        &mut self,
        spec: &ChainSpec,
        input: BlockInput<'_>,
        state: &dyn StateView,
        hashes: &dyn BlockHashes,
    ) -> Result<BlockOutput, ExecError>;
}

/// Executes transactions one after another with revm (through alloy-evm's Ethereum block
/// executor, which also applies the system calls and withdrawals of each fork).
#[derive(Debug, Default)]
pub struct SequentialExecutor;

impl Executor for SequentialExecutor {
    fn execute(
        &mut self,
        spec: &ChainSpec,
        input: BlockInput<'_>,
        state: &dyn StateView,
        hashes: &dyn BlockHashes,
    ) -> Result<BlockOutput, ExecError> {
        let header = input.header;
        let forks = Hardforks::new(spec);
        let parent_hash = parent_hash_for_history(&forks, header, state, hashes)?;
        let mut db = block_state(state, hashes);
        let mut evm = EthEvmFactory::default().create_evm_with_inspector(
            &mut db,
            evm_env(spec, header),
            StorageCollisions::new(state),
        );
        evm.set_inspector_enabled(StorageCollisions::needed(spec));
        let ctx = execution_ctx(&input, parent_hash);
        let mut executor = EthBlockExecutor::new(evm, ctx, forks, AlloyReceiptBuilder::default());
        executor
            .apply_pre_execution_changes()
            .map_err(fatal_or_block)?;

        let mut included = Vec::with_capacity(input.txs.len());
        let mut dropped = Vec::new();
        for (index, tx) in input.txs.iter().enumerate() {
            let recovered =
                alloy_consensus::transaction::Recovered::new_unchecked(tx.tx(), tx.sender());
            match executor.execute_transaction(recovered) {
                Ok(_) => included.push(index),
                Err(BlockExecutionError::Validation(err)) => match input.policy {
                    InvalidTxPolicy::Skip => dropped.push(Dropped::new(index, &err)),
                    InvalidTxPolicy::Reject => {
                        return Err(ExecError::InvalidTx {
                            index,
                            reason: err.into(),
                        });
                    }
                },
                Err(err) => return Err(ExecError::Internal(err.to_string())),
            }
        }
        if forks.is_prague_active_at_timestamp(header.timestamp) {
            deposits::check_layouts(executor.receipts())?;
        }
        let (mut evm, result) = executor.finish().map_err(fatal_or_block)?;
        if let Some(err) = evm.inspector_mut().take_error() {
            return Err(ExecError::Storage(err));
        }
        Ok(block_output(
            &forks, header, &mut db, result, included, dropped,
        ))
    }
}

/// revm's `State` over `state`, tracking the bundle both executors turn into [`StateChanges`].
pub(crate) fn block_state<'a>(
    state: &'a dyn StateView,
    hashes: &'a dyn BlockHashes,
) -> State<StateDb<'a>> {
    State::builder()
        .with_database(StateDb { state, hashes })
        .with_bundle_update()
        .build()
}

/// The [`BlockOutput`] of a finished block: alloy-evm's result plus the state changes in `db`.
/// A transaction execution left out: its index in the block's input, the kind of error (a
/// metric label) and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub index: usize,
    /// `nonce_too_low` (a copy, or a nonce another transaction took), `nonce_too_high` (proposed
    /// over a gap) or `other`.
    pub kind: &'static str,
    pub reason: String,
}

impl Dropped {
    /// Every `kind`.
    pub const KINDS: [&'static str; 3] = ["nonce_too_low", "nonce_too_high", "other"];

    fn new(index: usize, err: &BlockValidationError) -> Self {
        let [too_low, too_high, other] = Dropped::KINDS;
        let kind = match err {
            BlockValidationError::InvalidTx { error, .. } if error.is_nonce_too_low() => too_low,
            BlockValidationError::InvalidTx { error, .. }
                if matches!(
                    error.as_invalid_tx_err(),
                    Some(InvalidTransaction::NonceTooHigh { .. })
                ) =>
            {
                too_high
            }
            _ => other,
        };
        Dropped {
            index,
            kind,
            reason: err.to_string(),
        }
    }
}

pub(crate) fn block_output(
    forks: &Hardforks,
    header: &Header,
    db: &mut State<StateDb<'_>>,
    result: BlockExecutionResult<ReceiptEnvelope>,
    included: Vec<usize>,
    dropped: Vec<Dropped>,
) -> BlockOutput {
    let requests_hash = forks
        .is_prague_active_at_timestamp(header.timestamp)
        .then(|| result.requests.requests_hash());
    db.merge_transitions(BundleRetention::PlainState);
    BlockOutput {
        changes: bundle_to_changes(db.take_bundle()),
        receipts: result.receipts,
        included,
        dropped,
        gas_used: result.gas_used,
        blob_gas_used: result.blob_gas_used,
        requests_hash,
    }
}

/// alloy-evm's context for executing `input`; shared with the parallel executor and tracing so
/// all run the same system calls and withdrawals.
pub fn execution_ctx<'a>(input: &BlockInput<'a>, parent_hash: B256) -> EthBlockExecutionCtx<'a> {
    let header = input.header;
    EthBlockExecutionCtx {
        parent_hash,
        parent_beacon_block_root: header.parent_beacon_block_root,
        ommers: &[],
        withdrawals: header
            .withdrawals_root
            .map(|_| Cow::Borrowed(input.withdrawals)),
        extra_data: header.extra_data.clone(),
        tx_count_hint: Some(input.txs.len()),
        slot_number: None,
    }
}

/// The parent hash the EIP-2935 system call stores. Reading it can mean waiting for the state
/// root stage, so it is read only when the history contract exists (otherwise the call has no
/// effect whatever its input).
pub fn parent_hash_for_history(
    forks: &Hardforks,
    header: &Header,
    state: &dyn StateView,
    hashes: &dyn BlockHashes,
) -> Result<B256, ExecError> {
    if header.number == 0 || !forks.is_prague_active_at_timestamp(header.timestamp) {
        return Ok(B256::ZERO);
    }
    let has_code = state
        .account(HISTORY_STORAGE_ADDRESS)?
        .is_some_and(|a| a.code_hash != KECCAK_EMPTY);
    if has_code {
        Ok(hashes.block_hash(header.number - 1)?)
    } else {
        Ok(B256::ZERO)
    }
}

pub(crate) fn fatal_or_block(err: BlockExecutionError) -> ExecError {
    match err {
        BlockExecutionError::Validation(err) => ExecError::InvalidBlock(err.to_string()),
        err => ExecError::Internal(err.to_string()),
    }
}
