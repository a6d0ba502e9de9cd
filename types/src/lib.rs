//! Types shared by every Kestrel crate: the chain specification and genesis, what ordering hands to
//! execution (an [`OrderedBlock`]), what execution hands to the state root and commit stages, and the
//! state changes one block makes.

pub mod block;
pub mod chain;
pub mod fees;
pub mod state;
pub mod tx;

pub use block::{ExecutedBlock, ExecutionResult, OrderedBlock, SealedBlock};
pub use chain::{ChainSpec, Fork, GenesisError, GenesisHeader};
pub use fees::{BLOCK_TXS_MAX, ParentFees, next_base_fee, now_ms};
pub use state::{AccountInfo, StateChanges, StorageChange};
pub use tx::{DecodedTx, RecoveredTx, TxError, transactions_root};

/// Height of a block in the chain (the genesis block is 0).
pub type BlockNumber = u64;
