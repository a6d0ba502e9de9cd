//! Errors of the RPC server: failing to start, and the outcomes of single requests with their
//! JSON-RPC codes and messages (geth's, which tools match on).

use crate::{BLOCK_RANGE_MAX, LOGS_MAX};
use alloy_primitives::{B256, Bytes};
use jsonrpsee::types::ErrorObjectOwned;
use kestrel_pipeline::mempool::PoolError;
use kestrel_storage::StorageError;

/// geth's code for a request that was understood but failed (the default for everything below).
pub const CODE_SERVER_ERROR: i32 = -32000;
/// EIP-1474: the request is invalid (bad parameter values).
pub const CODE_INVALID_PARAMS: i32 = -32602;
/// An internal fault of the node (storage), not of the request.
pub const CODE_INTERNAL: i32 = -32603;
/// EIP-1474 "limit exceeded": what geth answers when a log query matches too much.
pub const CODE_LIMIT_EXCEEDED: i32 = -32005;
/// geth's code for a request that ran out of time (a batch past its execution budget).
pub const CODE_TIMEOUT: i32 = -32002;
/// geth's code for a reverted call; `data` carries the revert bytes.
pub const CODE_EXECUTION_REVERTED: i32 = 3;
/// EIP-7966: `eth_sendRawTransactionSync` timed out with the transaction in the pool.
pub const CODE_SYNC_TIMEOUT: i32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("binding the RPC server: {0}")]
    Bind(#[source] std::io::Error),
    #[error("registering RPC methods: {0}")]
    Register(#[from] jsonrpsee::core::RegisterMethodError),
    #[error("RPC limits: {0}")]
    InvalidLimits(String),

    /// The caller's IP address is over its call rate.
    #[error("rate limit exceeded: at most {0} calls per second per IP address")]
    RateLimited(u32),
    /// The call ran out of EVM time (geth's `--rpc.evmtimeout` message).
    #[error("execution aborted (timeout = {})", go_duration(*.0))]
    ExecutionTimeout(std::time::Duration),
    /// The opcode logger's log of one transaction or call passed its limit.
    #[error("trace too large: more than {0} opcode steps; use callTracer or prestateTracer")]
    TraceTooLarge(u64),
    /// An unknown tracer or a tracer config that does not fit it.
    #[error("{0}")]
    Tracer(String),
    /// The calls of the request (a batch) used up its execution budget before this one started.
    #[error("request timed out")]
    RequestTimeout,

    /// The node has no committed block yet: it is filling its database by state sync.
    #[error("the node is syncing: no block committed yet")]
    Syncing,
    /// A state query for a block after the committed head, or an unknown block hash.
    #[error("header not found")]
    HeaderNotFound,
    /// The block's state left the history window (`--history-blocks`).
    #[error(
        "historical state not available: block {requested} is older than the oldest block with state, {oldest}"
    )]
    HistoricalState { requested: u64, oldest: u64 },
    #[error("request beyond head block: requested {requested}, head {head}")]
    BeyondHead { requested: u64, head: u64 },
    #[error("unknown block")]
    UnknownBlock,
    /// Proofs need the state trie, which only the head's state has.
    #[error("proofs are served at the latest block only, not block {0}")]
    ProofNotAtHead(u64),
    /// geth's words for tracing a transaction it does not hold.
    #[error("transaction {0} not found")]
    TransactionNotFound(B256),
    #[error("invalid block range params")]
    InvalidBlockRange,
    #[error("block range too large: at most {BLOCK_RANGE_MAX} blocks per query")]
    BlockRangeTooLarge,
    #[error("query returned more than {LOGS_MAX} results")]
    TooManyLogs,
    #[error("{0}")]
    InvalidParams(String),
    /// geth's words for an unknown, uninstalled or expired filter id.
    #[error("filter not found")]
    FilterNotFound,
    #[error("too many filters: at most {0} installed at once")]
    TooManyFilters(usize),
    /// EIP-7966's words; the data is the transaction's hash.
    #[error("The transaction was added to the transaction pool but wasn't processed in {}", go_duration(*.waited))]
    SyncTimeout {
        hash: B256,
        waited: std::time::Duration,
    },

    #[error(transparent)]
    Pool(#[from] PoolError),

    /// The call ran and reverted; holds the revert data.
    #[error("{}", crate::call::revert_message(.0))]
    Reverted(Bytes),
    /// The call could not run (fees, funds, intrinsic gas) or halted (out of gas, invalid opcode).
    #[error("{0}")]
    Execution(String),
    #[error("gas required exceeds allowance ({0})")]
    GasRequiredExceedsAllowance(u64),
    #[error("insufficient funds for transfer")]
    InsufficientFundsForTransfer,

    #[error("storage: {0}")]
    Storage(StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StorageError> for RpcError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::HistoryPruned { requested, oldest } => {
                Self::HistoricalState { requested, oldest }
            }
            err => Self::Storage(err),
        }
    }
}

impl RpcError {
    pub fn code(&self) -> i32 {
        match self {
            Self::Reverted(_) => CODE_EXECUTION_REVERTED,
            Self::SyncTimeout { .. } => CODE_SYNC_TIMEOUT,
            Self::TooManyLogs | Self::RateLimited(_) | Self::TooManyFilters(_) => {
                CODE_LIMIT_EXCEEDED
            }
            Self::RequestTimeout => CODE_TIMEOUT,
            Self::InvalidParams(_) => CODE_INVALID_PARAMS,
            Self::Storage(_)
            | Self::Internal(_)
            | Self::Bind(_)
            | Self::Register(_)
            | Self::InvalidLimits(_) => CODE_INTERNAL,
            _ => CODE_SERVER_ERROR,
        }
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(err: RpcError) -> Self {
        let data = match &err {
            RpcError::Reverted(data) => Some(data.clone()),
            RpcError::SyncTimeout { hash, .. } => Some(Bytes::copy_from_slice(hash.as_slice())),
            _ => None,
        };
        ErrorObjectOwned::owned(err.code(), err.to_string(), data)
    }
}

/// A duration as Go prints one (`5s`, `1.5s`, `250ms`, `1m30s`), as geth's messages show them.
pub(crate) fn go_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}s", ms as f64 / 1_000.0),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) as f64 / 1_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_as_geth_prints_them() {
        let cases = [
            (250, "250ms"),
            (5_000, "5s"),
            (1_500, "1.5s"),
            (90_000, "1m30s"),
        ];
        for (ms, text) in cases {
            assert_eq!(go_duration(Duration::from_millis(ms)), text);
        }
        assert_eq!(
            RpcError::ExecutionTimeout(Duration::from_secs(5)).to_string(),
            "execution aborted (timeout = 5s)"
        );
    }
}
