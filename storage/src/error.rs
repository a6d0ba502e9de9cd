#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("mdbx: {0}")]
    Mdbx(#[from] libmdbx::Error),
    #[error("corrupt record in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
    /// The state of a block before the history window.
    #[error("state at block {requested} is pruned: the oldest block with state is {oldest}")]
    HistoryPruned { requested: u64, oldest: u64 },
    #[error("block archive: {0}")]
    Archive(#[from] crate::archive::ArchiveError),
    /// The block archive lacks blocks the database committed: corruption (a damaged, replaced
    /// or deleted archive directory), not a crash's leftovers.
    #[error(
        "the block archive in {dir} holds blocks {holds:?} (first, last) but the database's head is {head:?}: committed blocks are missing from it; restore the datadir from a backup"
    )]
    ArchiveBehind {
        dir: std::path::PathBuf,
        head: Option<u64>,
        holds: Option<(u64, u64)>,
    },
    /// The sync thread could not make commits durable: the store takes no more blocks.
    #[error("database sync failed: {0}")]
    SyncFailed(String),
    #[error("starting the database sync thread: {0}")]
    SyncStart(std::io::Error),
    #[error("re-reading the database file into the page cache: {0}")]
    Recache(String),
    #[error("starting a state-root thread: {0}")]
    RootThread(std::io::Error),
    /// Another process (or another open store in this one) has the directory open.
    #[error(
        "{dir} is in use: another kestrel process has it open (stop it first; `kestrel db` commands read a stopped node's datadir)"
    )]
    InUse { dir: std::path::PathBuf },
    #[error("locking {path}: {source}")]
    Lock {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database holds a different genesis (stored {stored}, expected {expected})")]
    GenesisMismatch {
        stored: alloy_primitives::B256,
        expected: alloy_primitives::B256,
    },
}
