/// Why a transaction was not admitted. The messages are geth's, which wallets and tools match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("rlp: {0}")]
    Decode(String),
    #[error("invalid sender")]
    InvalidSender,
    #[error("invalid chain id")]
    InvalidChainId,
    #[error("only replay-protected (EIP-155) transactions allowed over RPC")]
    Unprotected,
    #[error("transaction type not supported")]
    TxTypeNotSupported,
    #[error("max initcode size exceeded: code size {size}, limit {limit}")]
    InitcodeTooLarge { size: usize, limit: usize },
    #[error("EIP-7702 transaction with empty auth list")]
    EmptyAuthList,
    #[error("nonce has max value")]
    NonceMax,
    #[error("oversized data")]
    Oversized,
    #[error("intrinsic gas too low")]
    IntrinsicGasTooLow,
    #[error("exceeds block gas limit")]
    ExceedsBlockGasLimit,
    #[error("max fee per gas less than block base fee")]
    FeeCapBelowBaseFee,
    #[error("transaction underpriced")]
    Underpriced,
    #[error("max priority fee per gas higher than max fee per gas")]
    TipAboveFeeCap,
    #[error("nonce too low")]
    NonceTooLow,
    #[error("nonce too high")]
    NonceTooHigh,
    #[error("insufficient funds for gas * price + value")]
    InsufficientFunds,
    #[error("already known")]
    AlreadyKnown,
    #[error("replacement transaction underpriced")]
    ReplacementUnderpriced,
    #[error("txpool is full")]
    PoolFull,
    #[error("account limit exceeded")]
    SenderLimit,
    #[error("node is busy: ingress queue full")]
    Busy,
    #[error("node is low on disk space: not accepting transactions")]
    DiskLow,
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}
