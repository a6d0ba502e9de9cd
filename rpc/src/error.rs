//! Errors of the RPC server: failing to start, and the outcomes of single requests with their
//! JSON-RPC codes and messages (geth's, which tools match on).

use crate::{BLOCK_RANGE_MAX, LOGS_MAX};
use alloy_primitives::Bytes;
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
/// geth's code for a reverted call; `data` carries the revert bytes.
pub const CODE_EXECUTION_REVERTED: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("binding the RPC server: {0}")]
    Bind(#[source] std::io::Error),
    #[error("registering RPC methods: {0}")]
    Register(#[from] jsonrpsee::core::RegisterMethodError),

    /// A state query for a block after the committed head, or an unknown block hash.
    #[error("header not found")]
    HeaderNotFound,
    /// Only the state after the committed head is kept.
    #[error("historical state not available")]
    HistoricalState,
    #[error("request beyond head block: requested {requested}, head {head}")]
    BeyondHead { requested: u64, head: u64 },
    #[error("unknown block")]
    UnknownBlock,
    #[error("invalid block range params")]
    InvalidBlockRange,
    #[error("block range too large: at most {BLOCK_RANGE_MAX} blocks per query")]
    BlockRangeTooLarge,
    #[error("query returned more than {LOGS_MAX} results")]
    TooManyLogs,
    #[error("{0}")]
    InvalidParams(String),

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
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RpcError {
    pub fn code(&self) -> i32 {
        match self {
            Self::Reverted(_) => CODE_EXECUTION_REVERTED,
            Self::TooManyLogs => CODE_LIMIT_EXCEEDED,
            Self::InvalidParams(_) => CODE_INVALID_PARAMS,
            Self::Storage(_) | Self::Internal(_) | Self::Bind(_) | Self::Register(_) => {
                CODE_INTERNAL
            }
            _ => CODE_SERVER_ERROR,
        }
    }
}

impl From<RpcError> for ErrorObjectOwned {
    fn from(err: RpcError) -> Self {
        let data = match &err {
            RpcError::Reverted(data) => Some(data.clone()),
            _ => None,
        };
        ErrorObjectOwned::owned(err.code(), err.to_string(), data)
    }
}
