#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("mdbx: {0}")]
    Mdbx(#[from] libmdbx::Error),
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The state of a block before the history window.
    #[error("state at block {requested} is pruned: the oldest block with state is {oldest}")]
    HistoryPruned { requested: u64, oldest: u64 },
    #[error("database holds a different genesis (stored {stored}, expected {expected})")]
    GenesisMismatch {
        stored: alloy_primitives::B256,
        expected: alloy_primitives::B256,
    },
}
