//! Importing a block built by someone else: Ethereum's header rules against the parent, the body
//! checks, execution that rejects the whole block on any invalid transaction, and the comparison
//! of what execution produced with what the header claims.
//!
//! The state root is the one thing checked outside: it exists only once storage has applied the
//! changes (`BlockWriter::apply_state` returns it), so the caller compares it with
//! [`check_state_root`] before committing.
//!
//! The rules are Ethereum mainnet's for the forks Kestrel runs (Cancun, Prague). Kestrel's own
//! dev-chain blocks follow the delayed-execution rules of docs/ARCHITECTURE.md instead (equal
//! timestamps, base fee from committed gas) and do not go through here.

use crate::mempool::{TxPool, recover_reusing};
use crate::{
    deposits::DepositLayoutError,
    evm::{BlockHashes, blob_params},
    executor::{BlockInput, BlockOutput, ExecError, Executor, InvalidTxPolicy, TxInvalid},
    tx_encoding::{self, TxEncodingError},
};
use alloy_consensus::{
    Block, EMPTY_OMMER_ROOT_HASH, Header, Transaction, TxEnvelope, TxReceipt, TxType, proofs,
};
use alloy_eips::{eip1559::BaseFeeParams, eip4844::DATA_GAS_PER_BLOB};
use alloy_primitives::{B64, B256, Bloom, U256};
use alloy_rlp::Decodable;
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{ChainSpec, DecodedTx, Fork, RecoveredTx, TxError};
use revm::context::result::InvalidTransaction;

/// Largest `extra_data` a header may carry (Yellow Paper, eq. 57).
pub const EXTRA_DATA_MAX_BYTES: usize = 32;
/// Smallest gas limit a block may have.
pub const GAS_LIMIT_MIN: u64 = 5000;
/// Largest gas limit a block may have (geth's `MaxGasLimit`: 2^63 − 1).
pub const GAS_LIMIT_MAX: u64 = i64::MAX as u64;
/// A block's gas limit moves by less than `parent_gas_limit / GAS_LIMIT_BOUND_DIVISOR`.
pub const GAS_LIMIT_BOUND_DIVISOR: u64 = 1024;

/// Why a block was not imported. Every variant but [`ImportError::Storage`] and
/// [`ImportError::Internal`] is an invalid block, an outcome to report to whoever sent it;
/// those two are failures of this node.
///
/// Where two numbers or hashes disagree, `header` is what the block says and `computed` what
/// Kestrel derives from the parent or from executing the block.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("block rlp: {0}")]
    Decode(alloy_rlp::Error),
    #[error("transaction {index}: {reason}")]
    TxEncoding {
        index: usize,
        reason: TxEncodingError,
    },
    #[error("unknown parent {0}")]
    UnknownParent(B256),
    #[error("parent hash {header}, parent is {computed}")]
    ParentHash { header: B256, computed: B256 },
    #[error("block number {header}, expected {computed}")]
    Number { header: u64, computed: u64 },
    #[error("timestamp {header} not after the parent's {parent}")]
    Timestamp { header: u64, parent: u64 },
    #[error("extra data of {0} bytes, at most {EXTRA_DATA_MAX_BYTES}")]
    ExtraDataTooLong(usize),
    #[error("gas limit {0} above the maximum {GAS_LIMIT_MAX}")]
    GasLimitTooBig(u64),
    #[error("gas limit {header} out of bounds for parent gas limit {parent}")]
    GasLimit { header: u64, parent: u64 },
    #[error("gas used {gas_used} above gas limit {gas_limit}")]
    GasUsedAboveLimit { gas_used: u64, gas_limit: u64 },
    #[error("difficulty {0}, must be 0 after the merge")]
    Difficulty(U256),
    #[error("nonce {0}, must be 0 after the merge")]
    Nonce(B64),
    #[error("ommers after the merge")]
    Ommers,
    #[error("base fee {header}, expected {computed}")]
    BaseFee { header: u64, computed: u64 },
    #[error("header lacks {0}")]
    MissingField(&'static str),
    #[error("{0} present before its fork")]
    UnexpectedField(&'static str),
    #[error("blob gas used {header} above the block maximum {max}")]
    BlobGasUsedAboveMax { header: u64, max: u64 },
    #[error("blob gas used {0} is not a multiple of the blob gas per blob")]
    BlobGasUsedNotMultiple(u64),
    #[error("excess blob gas {header}, expected {computed}")]
    ExcessBlobGas { header: u64, computed: u64 },
    #[error("transactions root {header}, computed {computed}")]
    TransactionsRoot { header: B256, computed: B256 },
    #[error("withdrawals root {header}, computed {computed}")]
    WithdrawalsRoot { header: B256, computed: B256 },
    #[error("header has a withdrawals root, the body no withdrawals")]
    MissingWithdrawals,
    #[error("the block's blobs need {computed} blob gas, at most {max}")]
    BlockBlobGasExceeded { computed: u64, max: u64 },
    #[error("transaction {index}: invalid signature: {reason}")]
    Signature { index: usize, reason: String },
    #[error("transaction {index}: {reason}")]
    Tx { index: usize, reason: TxInvalid },
    #[error("execution: {0}")]
    Execution(String),
    #[error(transparent)]
    DepositLayout(DepositLayoutError),
    #[error("gas used {header}, computed {computed}")]
    GasUsed { header: u64, computed: u64 },
    #[error("blob gas used {header}, computed {computed}")]
    BlobGasUsed { header: u64, computed: u64 },
    #[error("receipts root {header}, computed {computed}")]
    ReceiptsRoot { header: B256, computed: B256 },
    #[error("logs bloom {header}, computed {computed}")]
    LogsBloom {
        header: Box<Bloom>,
        computed: Box<Bloom>,
    },
    #[error("requests hash {header:?}, computed {computed:?}")]
    RequestsHash {
        header: Option<B256>,
        computed: Option<B256>,
    },
    #[error("state root {header}, computed {computed}")]
    StateRoot { header: B256, computed: B256 },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("execution failed: {0}")]
    Internal(String),
}

impl ImportError {
    /// `true` for failures of this node rather than of the block.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Storage(_) | Self::Internal(_))
    }

    /// The Ethereum tests' name for this rejection (`expectException` in the BlockchainTests,
    /// execution-spec-tests' `BlockException` / `TransactionException`), where one exists.
    pub fn exception(&self) -> Option<&'static str> {
        Some(match self {
            Self::Decode(_) => "BlockException.RLP_STRUCTURES_ENCODING",
            Self::TxEncoding { reason, .. } => match reason {
                TxEncodingError::ContractCreation(TxType::Eip7702) => {
                    "TransactionException.TYPE_4_TX_CONTRACT_CREATION"
                }
                TxEncodingError::ContractCreation(_) => {
                    "TransactionException.TYPE_3_TX_CONTRACT_CREATION"
                }
                TxEncodingError::ValueOverflow(_) => "TransactionException.RLP_INVALID_VALUE",
            },
            Self::UnknownParent(hash) if hash.is_zero() => "BlockException.UNKNOWN_PARENT_ZERO",
            Self::UnknownParent(_) | Self::ParentHash { .. } => "BlockException.UNKNOWN_PARENT",
            Self::Number { .. } => "BlockException.INVALID_BLOCK_NUMBER",
            Self::Timestamp { .. } => "BlockException.INVALID_BLOCK_TIMESTAMP_OLDER_THAN_PARENT",
            Self::ExtraDataTooLong(_) => "BlockException.EXTRA_DATA_TOO_BIG",
            Self::GasLimitTooBig(_) => "BlockException.GASLIMIT_TOO_BIG",
            Self::GasLimit { .. } => "BlockException.INVALID_GASLIMIT",
            Self::GasUsedAboveLimit { .. } => "BlockException.GAS_USED_OVERFLOW",
            Self::Difficulty(_) => "BlockException.IMPORT_IMPOSSIBLE_DIFFICULTY_OVER_PARIS",
            Self::Nonce(_) | Self::MissingField(_) | Self::UnexpectedField(_) => {
                "BlockException.INCORRECT_BLOCK_FORMAT"
            }
            Self::Ommers => "BlockException.IMPORT_IMPOSSIBLE_UNCLES_OVER_PARIS",
            Self::BaseFee { .. } => "BlockException.INVALID_BASEFEE_PER_GAS",
            Self::BlobGasUsedAboveMax { .. } => "BlockException.BLOB_GAS_USED_ABOVE_LIMIT",
            Self::BlobGasUsedNotMultiple(_) | Self::BlobGasUsed { .. } => {
                "BlockException.INCORRECT_BLOB_GAS_USED"
            }
            Self::ExcessBlobGas { .. } => "BlockException.INCORRECT_EXCESS_BLOB_GAS",
            Self::TransactionsRoot { .. } => "BlockException.INVALID_TRANSACTIONS_ROOT",
            Self::WithdrawalsRoot { .. } => "BlockException.INVALID_WITHDRAWALS_ROOT",
            Self::MissingWithdrawals => "BlockException.RLP_WITHDRAWALS_NOT_READ",
            Self::BlockBlobGasExceeded { .. } => {
                "TransactionException.TYPE_3_TX_MAX_BLOB_GAS_ALLOWANCE_EXCEEDED"
            }
            Self::Signature { .. } => "TransactionException.INVALID_SIGNATURE_VRS",
            Self::Tx { reason, .. } => return tx_exception(reason),
            Self::GasUsed { .. } => "BlockException.INVALID_GAS_USED",
            Self::ReceiptsRoot { .. } => "BlockException.INVALID_RECEIPTS_ROOT",
            Self::LogsBloom { .. } => "BlockException.INVALID_LOG_BLOOM",
            Self::RequestsHash { .. } => "BlockException.INVALID_REQUESTS",
            Self::DepositLayout(_) => "BlockException.INVALID_DEPOSIT_EVENT_LAYOUT",
            Self::StateRoot { .. } => "BlockException.INVALID_STATE_ROOT",
            Self::Execution(_) | Self::Storage(_) | Self::Internal(_) => return None,
        })
    }
}

fn tx_exception(reason: &TxInvalid) -> Option<&'static str> {
    use InvalidTransaction as E;
    let invalid = match reason {
        TxInvalid::Evm(invalid) => invalid,
        TxInvalid::BlockGasExceeded { .. } => {
            return Some("TransactionException.GAS_ALLOWANCE_EXCEEDED");
        }
        TxInvalid::Other(_) => return None,
    };
    Some(match invalid {
        E::PriorityFeeGreaterThanMaxFee => {
            "TransactionException.PRIORITY_GREATER_THAN_MAX_FEE_PER_GAS"
        }
        E::GasPriceLessThanBasefee => "TransactionException.INSUFFICIENT_MAX_FEE_PER_GAS",
        E::CallerGasLimitMoreThanBlock => "TransactionException.GAS_ALLOWANCE_EXCEEDED",
        E::CallGasCostMoreThanGasLimit { .. } => "TransactionException.INTRINSIC_GAS_TOO_LOW",
        E::GasFloorMoreThanGasLimit { .. } => {
            "TransactionException.INTRINSIC_GAS_BELOW_FLOOR_GAS_COST"
        }
        E::RejectCallerWithCode => "TransactionException.SENDER_NOT_EOA",
        E::LackOfFundForMaxFee { .. } => "TransactionException.INSUFFICIENT_ACCOUNT_FUNDS",
        E::OverflowPaymentInTransaction => "TransactionException.GASLIMIT_PRICE_PRODUCT_OVERFLOW",
        E::NonceOverflowInTransaction => "TransactionException.NONCE_IS_MAX",
        E::NonceTooHigh { .. } => "TransactionException.NONCE_MISMATCH_TOO_HIGH",
        E::NonceTooLow { .. } => "TransactionException.NONCE_MISMATCH_TOO_LOW",
        E::CreateInitCodeSizeLimit => "TransactionException.INITCODE_SIZE_EXCEEDED",
        E::InvalidChainId | E::MissingChainId => "TransactionException.INVALID_CHAINID",
        E::TxGasLimitGreaterThanCap { .. } => "TransactionException.GAS_LIMIT_EXCEEDS_MAXIMUM",
        E::BlobGasPriceGreaterThanMax { .. } => {
            "TransactionException.INSUFFICIENT_MAX_FEE_PER_BLOB_GAS"
        }
        E::EmptyBlobs => "TransactionException.TYPE_3_TX_ZERO_BLOBS",
        E::BlobCreateTransaction => "TransactionException.TYPE_3_TX_CONTRACT_CREATION",
        E::TooManyBlobs { .. } => "TransactionException.TYPE_3_TX_BLOB_COUNT_EXCEEDED",
        E::BlobVersionNotSupported => "TransactionException.TYPE_3_TX_INVALID_BLOB_VERSIONED_HASH",
        E::EmptyAuthorizationList => "TransactionException.TYPE_4_EMPTY_AUTHORIZATION_LIST",
        E::Eip4844NotSupported
        | E::BlobVersionedHashesNotSupported
        | E::MaxFeePerBlobGasNotSupported => "TransactionException.TYPE_3_TX_PRE_FORK",
        E::Eip7702NotSupported | E::AuthorizationListNotSupported => {
            "TransactionException.TYPE_4_TX_PRE_FORK"
        }
        _ => return None,
    })
}

impl From<ExecError> for ImportError {
    fn from(err: ExecError) -> Self {
        match err {
            ExecError::Storage(err) => Self::Storage(err),
            ExecError::InvalidTx { index, reason } => Self::Tx { index, reason },
            ExecError::InvalidBlock(reason) => Self::Execution(reason),
            ExecError::DepositLayout(err) => Self::DepositLayout(err),
            ExecError::Internal(reason) => Self::Internal(reason),
        }
    }
}

/// Decodes a block as the network and the Ethereum tests carry it (RLP of header, transactions,
/// ommers and, from Shanghai, withdrawals), refusing trailing bytes. A block that does not decode
/// because of a transaction rule (`tx_encoding`) is refused for that rule.
pub fn decode_block(rlp: &[u8]) -> Result<Block<TxEnvelope>, ImportError> {
    let whole = rlp;
    let mut rlp = rlp;
    let block = Block::decode(&mut rlp).map_err(|err| match tx_encoding::first_invalid(whole) {
        Some((index, reason)) => ImportError::TxEncoding { index, reason },
        None => ImportError::Decode(err),
    })?;
    if !rlp.is_empty() {
        return Err(ImportError::Decode(alloy_rlp::Error::Custom(
            "trailing bytes after the block",
        )));
    }
    Ok(block)
}

/// Checks `header` against its parent with Ethereum's rules for the header's fork. Everything
/// here is known without executing the block.
pub fn validate_header(
    spec: &ChainSpec,
    parent: &Header,
    header: &Header,
) -> Result<(), ImportError> {
    let parent_hash = parent.hash_slow();
    if header.parent_hash != parent_hash {
        return Err(ImportError::ParentHash {
            header: header.parent_hash,
            computed: parent_hash,
        });
    }
    if header.number != parent.number + 1 {
        return Err(ImportError::Number {
            header: header.number,
            computed: parent.number + 1,
        });
    }
    if header.timestamp <= parent.timestamp {
        return Err(ImportError::Timestamp {
            header: header.timestamp,
            parent: parent.timestamp,
        });
    }
    if header.extra_data.len() > EXTRA_DATA_MAX_BYTES {
        return Err(ImportError::ExtraDataTooLong(header.extra_data.len()));
    }
    validate_gas_limit(parent.gas_limit, header.gas_limit)?;
    if header.gas_used > header.gas_limit {
        return Err(ImportError::GasUsedAboveLimit {
            gas_used: header.gas_used,
            gas_limit: header.gas_limit,
        });
    }

    // Proof of stake (EIP-3675): no work, no ommers.
    if !header.difficulty.is_zero() {
        return Err(ImportError::Difficulty(header.difficulty));
    }
    if header.nonce != B64::ZERO {
        return Err(ImportError::Nonce(header.nonce));
    }
    if header.ommers_hash != EMPTY_OMMER_ROOT_HASH {
        return Err(ImportError::Ommers);
    }

    // London (EIP-1559). Kestrel chains start after London, so the parent always has a base fee.
    let header_base_fee = header
        .base_fee_per_gas
        .ok_or(ImportError::MissingField("base fee"))?;
    let parent_base_fee = parent
        .base_fee_per_gas
        .ok_or(ImportError::MissingField("parent base fee"))?;
    let base_fee = alloy_eips::calc_next_block_base_fee(
        parent.gas_used,
        parent.gas_limit,
        parent_base_fee,
        BaseFeeParams::ethereum(),
    );
    if header_base_fee != base_fee {
        return Err(ImportError::BaseFee {
            header: header_base_fee,
            computed: base_fee,
        });
    }

    // Shanghai (EIP-4895).
    if header.withdrawals_root.is_none() {
        return Err(ImportError::MissingField("withdrawals root"));
    }

    // Cancun (EIP-4844, EIP-4788); every fork Kestrel runs includes it.
    let fork = spec.fork_at(header.timestamp);
    validate_blob_gas(fork, parent, header)?;
    if header.parent_beacon_block_root.is_none() {
        return Err(ImportError::MissingField("parent beacon block root"));
    }

    // Prague (EIP-7685).
    match (fork >= Fork::Prague, header.requests_hash.is_some()) {
        (true, false) => return Err(ImportError::MissingField("requests hash")),
        (false, true) => return Err(ImportError::UnexpectedField("requests hash")),
        _ => {}
    }
    // Amsterdam fields: no fork Kestrel runs has them.
    if header.block_access_list_hash.is_some() {
        return Err(ImportError::UnexpectedField("block access list hash"));
    }
    if header.slot_number.is_some() {
        return Err(ImportError::UnexpectedField("slot number"));
    }
    Ok(())
}

fn validate_gas_limit(parent: u64, header: u64) -> Result<(), ImportError> {
    if header > GAS_LIMIT_MAX {
        return Err(ImportError::GasLimitTooBig(header));
    }
    let bound = parent / GAS_LIMIT_BOUND_DIVISOR;
    if header.abs_diff(parent) >= bound || header < GAS_LIMIT_MIN {
        return Err(ImportError::GasLimit { header, parent });
    }
    Ok(())
}

/// The blob fields against the parent. The header's blob gas used is checked with the body
/// ([`validate_body`]): the specs reach a transaction's blob rules first.
fn validate_blob_gas(fork: Fork, parent: &Header, header: &Header) -> Result<(), ImportError> {
    if header.blob_gas_used.is_none() {
        return Err(ImportError::MissingField("blob gas used"));
    }
    let excess_blob_gas = header
        .excess_blob_gas
        .ok_or(ImportError::MissingField("excess blob gas"))?;
    let params = blob_params(fork);
    // A parent before Cancun counts as having no blob gas (EIP-4844). Before Osaka the blob base
    // cost is zero, which reduces the Osaka formula to EIP-4844's with this fork's target.
    let computed = params.next_block_excess_blob_gas_osaka(
        parent.excess_blob_gas.unwrap_or(0),
        parent.blob_gas_used.unwrap_or(0),
        parent.base_fee_per_gas.unwrap_or(0),
    );
    if excess_blob_gas != computed {
        return Err(ImportError::ExcessBlobGas {
            header: excess_blob_gas,
            computed,
        });
    }
    Ok(())
}

/// Below this many transactions senders are recovered on the calling thread: spawning costs
/// more than it saves.
const PARALLEL_RECOVERY_MIN_TXS: usize = 64;

/// Recovers the senders of a block's transactions, on all available cores for large blocks
/// (~30 µs each with secp256k1: more than executing a transfer). The first invalid signature
/// in block order is reported.
pub fn recover_senders(txs: &[DecodedTx]) -> Result<Vec<RecoveredTx>, ImportError> {
    recover_senders_reusing(txs.to_vec(), None).map(|(txs, _)| txs)
}

/// As [`recover_senders`], taking the senders `pool` knows from it (`recover_reusing`, on each
/// core's part); also returns how many were recovered.
pub fn recover_senders_reusing(
    txs: Vec<DecodedTx>,
    pool: Option<&TxPool>,
) -> Result<(Vec<RecoveredTx>, usize), ImportError> {
    let first_bad = |offset: usize, (txs, recovered): (Vec<Result<RecoveredTx, _>>, usize)| {
        let txs = txs.into_iter().enumerate().map(|(i, tx)| {
            tx.map_err(|err: TxError| ImportError::Signature {
                index: offset + i,
                reason: err.to_string(),
            })
        });
        Ok::<_, ImportError>((txs.collect::<Result<Vec<_>, _>>()?, recovered))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || txs.len() < PARALLEL_RECOVERY_MIN_TXS {
        return first_bad(0, recover_reusing(txs, pool));
    }
    let chunk = txs.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = txs;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        parts.push(std::mem::replace(&mut rest, tail));
    }
    parts.push(rest);
    std::thread::scope(|scope| {
        let parts: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || recover_reusing(part, pool)))
            .collect();
        let (mut all, mut recovered) = (Vec::new(), 0);
        for (c, part) in parts.into_iter().enumerate() {
            let part = part.join().expect("sender recovery does not panic");
            let (txs, n) = first_bad(c * chunk, part)?;
            all.extend(txs);
            recovered += n;
        }
        Ok((all, recovered))
    })
}

/// Checks the body against the header, recovers the senders, executes the block (any invalid
/// transaction rejects it) on `state`, and checks the results against the header. Returns the
/// output (state changes, receipts) and the transactions with their senders. The header must
/// have passed [`validate_header`]; the caller checks the state root.
pub fn execute_block(
    spec: &ChainSpec,
    executor: &mut dyn Executor,
    block: &Block<TxEnvelope>,
    state: &dyn StateView,
    hashes: &dyn BlockHashes,
) -> Result<(BlockOutput, Vec<RecoveredTx>), ImportError> {
    let header = &block.header;
    validate_body(spec, block)?;
    // A block from the Ethereum tests: decoded whole, so its transactions are encoded once more
    // here (the bytes a transaction arrived as are kept where it arrives alone: ingress, payloads).
    let decoded: Vec<DecodedTx> = block
        .body
        .transactions
        .iter()
        .cloned()
        .map(DecodedTx::from)
        .collect();
    let txs = recover_senders(&decoded)?;
    let input = BlockInput {
        header,
        txs: &txs,
        withdrawals: block
            .body
            .withdrawals
            .as_ref()
            .map_or(&[], |w| w.as_slice()),
        policy: InvalidTxPolicy::Reject,
    };
    let output = executor.execute(spec, input, state, hashes)?;
    assert_eq!(
        output.included.len(),
        txs.len(),
        "the executor left out transactions under InvalidTxPolicy::Reject"
    );
    validate_output(header, &output)?;
    Ok((output, txs))
}

/// The body checks that need no state: roots of the lists the header commits to, and the
/// block's blob budget.
fn validate_body(spec: &ChainSpec, block: &Block<TxEnvelope>) -> Result<(), ImportError> {
    let (header, body) = (&block.header, &block.body);
    if !body.ommers.is_empty() {
        return Err(ImportError::Ommers);
    }
    let transactions_root = proofs::calculate_transaction_root(&body.transactions);
    if header.transactions_root != transactions_root {
        return Err(ImportError::TransactionsRoot {
            header: header.transactions_root,
            computed: transactions_root,
        });
    }
    match (header.withdrawals_root, &body.withdrawals) {
        (Some(root), Some(withdrawals)) => {
            let computed = proofs::calculate_withdrawals_root(withdrawals);
            if root != computed {
                return Err(ImportError::WithdrawalsRoot {
                    header: root,
                    computed,
                });
            }
        }
        (Some(_), None) => return Err(ImportError::MissingWithdrawals),
        (None, Some(_)) => return Err(ImportError::UnexpectedField("withdrawals")),
        (None, None) => {}
    }
    // Per transaction, revm checks the blob count and fees; the block-wide limit is ours.
    let blob_gas: u64 = body
        .transactions
        .iter()
        .filter_map(|tx| tx.blob_gas_used())
        .sum();
    let max = blob_params(spec.fork_at(header.timestamp)).max_blob_gas_per_block();
    if blob_gas > max {
        return Err(ImportError::BlockBlobGasExceeded {
            computed: blob_gas,
            max,
        });
    }
    let blob_gas_used = header.blob_gas_used.unwrap_or(0);
    if blob_gas_used > max {
        return Err(ImportError::BlobGasUsedAboveMax {
            header: blob_gas_used,
            max,
        });
    }
    if blob_gas_used % DATA_GAS_PER_BLOB != 0 {
        return Err(ImportError::BlobGasUsedNotMultiple(blob_gas_used));
    }
    Ok(())
}

/// Compares what execution produced with what the header claims (all but the state root).
fn validate_output(header: &Header, output: &BlockOutput) -> Result<(), ImportError> {
    if header.gas_used != output.gas_used {
        return Err(ImportError::GasUsed {
            header: header.gas_used,
            computed: output.gas_used,
        });
    }
    let blob_gas_used = header.blob_gas_used.unwrap_or(0);
    if blob_gas_used != output.blob_gas_used {
        return Err(ImportError::BlobGasUsed {
            header: blob_gas_used,
            computed: output.blob_gas_used,
        });
    }
    let receipts_root = proofs::calculate_receipt_root(&output.receipts);
    if header.receipts_root != receipts_root {
        return Err(ImportError::ReceiptsRoot {
            header: header.receipts_root,
            computed: receipts_root,
        });
    }
    let bloom = output
        .receipts
        .iter()
        .fold(Bloom::ZERO, |bloom, receipt| bloom | receipt.bloom());
    if header.logs_bloom != bloom {
        return Err(ImportError::LogsBloom {
            header: Box::new(header.logs_bloom),
            computed: Box::new(bloom),
        });
    }
    if header.requests_hash != output.requests_hash {
        return Err(ImportError::RequestsHash {
            header: header.requests_hash,
            computed: output.requests_hash,
        });
    }
    Ok(())
}

/// Compares the state root storage computed after applying the block with the header's.
pub fn check_state_root(header: &Header, computed: B256) -> Result<(), ImportError> {
    if header.state_root != computed {
        return Err(ImportError::StateRoot {
            header: header.state_root,
            computed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{BlockBody, constants::EMPTY_WITHDRAWALS};
    use alloy_eips::{eip4895::Withdrawals, eip7685::EMPTY_REQUESTS_HASH, eip7840::BlobParams};
    use alloy_primitives::Bytes;

    const GAS_LIMIT: u64 = 30_000_000;
    const BASE_FEE: u64 = 1_000_000_000;

    fn spec(fork: Fork) -> ChainSpec {
        let mut spec = ChainSpec::dev();
        spec.prague_time = (fork == Fork::Prague).then_some(0);
        spec
    }

    /// A Cancun block at its gas target (so the next base fee is unchanged) with no blobs.
    fn parent() -> Header {
        Header {
            number: 7,
            timestamp: 1_000,
            gas_limit: GAS_LIMIT,
            gas_used: GAS_LIMIT / 2,
            base_fee_per_gas: Some(BASE_FEE),
            withdrawals_root: Some(EMPTY_WITHDRAWALS),
            blob_gas_used: Some(0),
            excess_blob_gas: Some(0),
            parent_beacon_block_root: Some(B256::ZERO),
            ..Default::default()
        }
    }

    /// A child of `parent` that follows every rule of its fork.
    fn child(spec: &ChainSpec, parent: &Header) -> Header {
        let timestamp = parent.timestamp + 12;
        let prague = spec.fork_at(timestamp) == Fork::Prague;
        Header {
            parent_hash: parent.hash_slow(),
            number: parent.number + 1,
            timestamp,
            gas_limit: parent.gas_limit,
            base_fee_per_gas: parent.next_block_base_fee(BaseFeeParams::ethereum()),
            excess_blob_gas: parent
                .next_block_excess_blob_gas(blob_params(spec.fork_at(timestamp))),
            requests_hash: prague.then_some(EMPTY_REQUESTS_HASH),
            ..parent.clone()
        }
    }

    /// Validates `child(parent())` after `change`.
    fn check(fork: Fork, change: impl FnOnce(&mut Header)) -> Result<(), ImportError> {
        let spec = spec(fork);
        let parent = parent();
        let mut header = child(&spec, &parent);
        change(&mut header);
        validate_header(&spec, &parent, &header)
    }

    #[test]
    fn a_valid_child_passes() {
        check(Fork::Cancun, |_| {}).unwrap();
        check(Fork::Prague, |_| {}).unwrap();
    }

    #[test]
    fn parent_hash_and_number_follow_the_parent() {
        let err = check(Fork::Cancun, |h| h.parent_hash = B256::repeat_byte(1)).unwrap_err();
        assert!(matches!(err, ImportError::ParentHash { .. }), "{err}");
        let err = check(Fork::Cancun, |h| h.number += 1).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::Number {
                    header: 9,
                    computed: 8
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn timestamp_must_increase() {
        let err = check(Fork::Cancun, |h| h.timestamp = 1_000).unwrap_err();
        assert!(matches!(err, ImportError::Timestamp { .. }), "{err}");
        assert_eq!(
            err.exception(),
            Some("BlockException.INVALID_BLOCK_TIMESTAMP_OLDER_THAN_PARENT")
        );
    }

    #[test]
    fn gas_limit_moves_by_less_than_a_1024th() {
        let bound = GAS_LIMIT / GAS_LIMIT_BOUND_DIVISOR;
        check(Fork::Cancun, |h| h.gas_limit = GAS_LIMIT + bound - 1).unwrap();
        check(Fork::Cancun, |h| h.gas_limit = GAS_LIMIT - bound + 1).unwrap();
        for gas_limit in [GAS_LIMIT + bound, GAS_LIMIT - bound] {
            let err = check(Fork::Cancun, |h| h.gas_limit = gas_limit).unwrap_err();
            assert!(matches!(err, ImportError::GasLimit { .. }), "{err}");
        }
        let err = check(Fork::Cancun, |h| h.gas_limit = GAS_LIMIT_MAX + 1).unwrap_err();
        assert!(matches!(err, ImportError::GasLimitTooBig(_)), "{err}");
    }

    #[test]
    fn gas_limit_has_a_minimum() {
        let spec = spec(Fork::Cancun);
        let parent = Header {
            gas_limit: GAS_LIMIT_MIN,
            gas_used: GAS_LIMIT_MIN / 2,
            ..parent()
        };
        let mut header = child(&spec, &parent);
        header.gas_limit = GAS_LIMIT_MIN - 1;
        let err = validate_header(&spec, &parent, &header).unwrap_err();
        assert!(matches!(err, ImportError::GasLimit { .. }), "{err}");
    }

    #[test]
    fn gas_used_is_within_the_gas_limit() {
        check(Fork::Cancun, |h| h.gas_used = GAS_LIMIT).unwrap();
        let err = check(Fork::Cancun, |h| h.gas_used = GAS_LIMIT + 1).unwrap_err();
        assert!(
            matches!(err, ImportError::GasUsedAboveLimit { .. }),
            "{err}"
        );
    }

    #[test]
    fn base_fee_follows_eip_1559() {
        let err = check(Fork::Cancun, |h| h.base_fee_per_gas = Some(BASE_FEE + 1)).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::BaseFee {
                    computed: BASE_FEE,
                    ..
                }
            ),
            "{err}"
        );
        // A full parent raises the base fee by 1/8.
        let spec = spec(Fork::Cancun);
        let parent = Header {
            gas_used: GAS_LIMIT,
            ..parent()
        };
        let mut header = child(&spec, &parent);
        assert_eq!(header.base_fee_per_gas, Some(BASE_FEE + BASE_FEE / 8));
        validate_header(&spec, &parent, &header).unwrap();
        header.base_fee_per_gas = Some(BASE_FEE);
        let err = validate_header(&spec, &parent, &header).unwrap_err();
        assert!(matches!(err, ImportError::BaseFee { .. }), "{err}");
    }

    #[test]
    fn extra_data_is_at_most_32_bytes() {
        check(Fork::Cancun, |h| h.extra_data = Bytes::from(vec![1; 32])).unwrap();
        let err = check(Fork::Cancun, |h| h.extra_data = Bytes::from(vec![1; 33])).unwrap_err();
        assert!(matches!(err, ImportError::ExtraDataTooLong(33)), "{err}");
    }

    #[test]
    fn proof_of_stake_headers_have_no_work_and_no_ommers() {
        let err = check(Fork::Cancun, |h| h.difficulty = U256::from(1)).unwrap_err();
        assert!(matches!(err, ImportError::Difficulty(_)), "{err}");
        let err = check(Fork::Cancun, |h| h.nonce = B64::with_last_byte(1)).unwrap_err();
        assert!(matches!(err, ImportError::Nonce(_)), "{err}");
        let err = check(Fork::Cancun, |h| h.ommers_hash = B256::ZERO).unwrap_err();
        assert!(matches!(err, ImportError::Ommers), "{err}");
        assert_eq!(
            err.exception(),
            Some("BlockException.IMPORT_IMPOSSIBLE_UNCLES_OVER_PARIS")
        );
    }

    #[test]
    fn fork_fields_must_be_present() {
        let missing = |change: fn(&mut Header)| check(Fork::Cancun, change).unwrap_err();
        let field = |err| match err {
            ImportError::MissingField(field) => field,
            err => panic!("{err}"),
        };
        assert_eq!(field(missing(|h| h.base_fee_per_gas = None)), "base fee");
        assert_eq!(
            field(missing(|h| h.withdrawals_root = None)),
            "withdrawals root"
        );
        assert_eq!(field(missing(|h| h.blob_gas_used = None)), "blob gas used");
        assert_eq!(
            field(missing(|h| h.excess_blob_gas = None)),
            "excess blob gas"
        );
        assert_eq!(
            field(missing(|h| h.parent_beacon_block_root = None)),
            "parent beacon block root"
        );
    }

    #[test]
    fn requests_hash_exactly_from_prague() {
        let err = check(Fork::Prague, |h| h.requests_hash = None).unwrap_err();
        assert!(
            matches!(err, ImportError::MissingField("requests hash")),
            "{err}"
        );
        let err = check(Fork::Cancun, |h| {
            h.requests_hash = Some(EMPTY_REQUESTS_HASH)
        })
        .unwrap_err();
        assert!(
            matches!(err, ImportError::UnexpectedField("requests hash")),
            "{err}"
        );
    }

    /// The body checks of an empty block whose header `edit` changed.
    fn check_body(fork: Fork, edit: impl FnOnce(&mut Header)) -> Result<(), ImportError> {
        let spec = spec(fork);
        let mut block = block(&spec);
        edit(&mut block.header);
        validate_body(&spec, &block)
    }

    /// Checked with the body, after the transactions' blob rules, as the specs order them.
    #[test]
    fn blob_gas_used_is_whole_blobs_within_the_fork_maximum() {
        let cancun_max = BlobParams::cancun().max_blob_gas_per_block();
        check_body(Fork::Cancun, |h| h.blob_gas_used = Some(cancun_max)).unwrap();
        let err = check_body(Fork::Cancun, |h| {
            h.blob_gas_used = Some(cancun_max + DATA_GAS_PER_BLOB);
        })
        .unwrap_err();
        assert!(
            matches!(err, ImportError::BlobGasUsedAboveMax { .. }),
            "{err}"
        );
        // Prague raised the maximum (EIP-7691).
        check_body(Fork::Prague, |h| {
            h.blob_gas_used = Some(cancun_max + DATA_GAS_PER_BLOB);
        })
        .unwrap();
        let err = check_body(Fork::Cancun, |h| {
            h.blob_gas_used = Some(DATA_GAS_PER_BLOB + 1)
        })
        .unwrap_err();
        assert!(
            matches!(err, ImportError::BlobGasUsedNotMultiple(_)),
            "{err}"
        );
    }

    #[test]
    fn excess_blob_gas_follows_the_parent() {
        let spec = spec(Fork::Cancun);
        let target = BlobParams::cancun().target_blob_gas_per_block();
        let parent = Header {
            blob_gas_used: Some(target + DATA_GAS_PER_BLOB),
            excess_blob_gas: Some(2 * DATA_GAS_PER_BLOB),
            ..parent()
        };
        let mut header = child(&spec, &parent);
        assert_eq!(header.excess_blob_gas, Some(3 * DATA_GAS_PER_BLOB));
        validate_header(&spec, &parent, &header).unwrap();
        header.excess_blob_gas = Some(2 * DATA_GAS_PER_BLOB);
        let err = validate_header(&spec, &parent, &header).unwrap_err();
        assert!(
            matches!(err, ImportError::ExcessBlobGas { computed, .. } if computed == 3 * DATA_GAS_PER_BLOB),
            "{err}"
        );
    }

    fn block(spec: &ChainSpec) -> Block<TxEnvelope> {
        let header = child(spec, &parent());
        header.into_block(BlockBody {
            transactions: Vec::new(),
            ommers: Vec::new(),
            withdrawals: Some(Withdrawals::default()),
        })
    }

    #[test]
    fn body_must_match_the_header() {
        let spec = spec(Fork::Cancun);
        validate_body(&spec, &block(&spec)).unwrap();

        let mut without_withdrawals = block(&spec);
        without_withdrawals.body.withdrawals = None;
        let err = validate_body(&spec, &without_withdrawals).unwrap_err();
        assert!(matches!(err, ImportError::MissingWithdrawals), "{err}");

        let mut wrong_root = block(&spec);
        wrong_root.header.transactions_root = B256::repeat_byte(1);
        let err = validate_body(&spec, &wrong_root).unwrap_err();
        assert!(matches!(err, ImportError::TransactionsRoot { .. }), "{err}");

        let mut with_ommer = block(&spec);
        with_ommer.body.ommers.push(parent());
        let err = validate_body(&spec, &with_ommer).unwrap_err();
        assert!(matches!(err, ImportError::Ommers), "{err}");
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let spec = spec(Fork::Cancun);
        let mut rlp = alloy_rlp::encode(block(&spec));
        assert_eq!(decode_block(&rlp).unwrap(), block(&spec));
        rlp.push(0);
        assert!(matches!(decode_block(&rlp), Err(ImportError::Decode(_))));
    }
}
