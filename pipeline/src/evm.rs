//! The bridge between Kestrel's state and revm: a revm `Database` over any [`StateView`], the
//! chain's hardfork schedule for alloy-evm, and conversion of revm's bundle into
//! [`StateChanges`].

use alloy_consensus::Header;
use alloy_eips::eip7840::BlobParams;
use alloy_evm::{EvmEnv, eth::spec::EthExecutorSpec};
use alloy_hardforks::{EthereumHardfork, EthereumHardforks, ForkCondition};
use alloy_primitives::{Address, B256, U256};
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{AccountInfo, ChainSpec, Fork, StateChanges, StorageChange};
use revm::{
    DatabaseRef as _,
    bytecode::Bytecode,
    database::{BundleState, DBErrorMarker},
    primitives::hardfork::SpecId,
};

/// The hardfork schedule of a Kestrel chain: everything through Shanghai from genesis, Cancun and
/// Prague at the spec's timestamps, nothing later.
#[derive(Debug, Clone, Copy)]
pub struct Hardforks {
    cancun_time: Option<u64>,
    prague_time: Option<u64>,
}

impl Hardforks {
    pub fn new(spec: &ChainSpec) -> Self {
        Self {
            cancun_time: spec.cancun_time,
            prague_time: spec.prague_time,
        }
    }
}

impl EthereumHardforks for Hardforks {
    fn ethereum_fork_activation(&self, fork: EthereumHardfork) -> ForkCondition {
        let at = |t: Option<u64>| t.map_or(ForkCondition::Never, ForkCondition::Timestamp);
        match fork {
            EthereumHardfork::Cancun => at(self.cancun_time),
            EthereumHardfork::Prague => at(self.prague_time),
            EthereumHardfork::Shanghai => ForkCondition::Timestamp(0),
            EthereumHardfork::Paris => ForkCondition::TTD {
                activation_block_number: 0,
                fork_block: Some(0),
                total_difficulty: U256::ZERO,
            },
            fork if fork < EthereumHardfork::Paris => ForkCondition::Block(0),
            _ => ForkCondition::Never,
        }
    }
}

impl EthExecutorSpec for Hardforks {
    /// Kestrel chains have no beacon-chain deposit contract.
    fn deposit_contract_address(&self) -> Option<Address> {
        None
    }
}

/// The revm environment for executing `header` (its number, timestamp, beneficiary, gas limit,
/// base fee and blob fields must be set; hashes need not be).
pub fn evm_env(spec: &ChainSpec, header: &Header) -> EvmEnv<SpecId> {
    let blob_params = blob_params(spec.fork_at(header.timestamp));
    let mut env = EvmEnv::for_eth_block(
        header,
        Hardforks::new(spec),
        spec.chain_id,
        Some(blob_params),
    );
    // Kestrel blocks carry their randomness in `mix_hash` as Ethereum post-merge blocks do.
    env.block_env.prevrandao = Some(header.mix_hash);
    env
}

/// The blob limits and fee parameters of a fork (EIP-4844, raised by EIP-7691 in Prague).
pub fn blob_params(fork: Fork) -> BlobParams {
    match fork {
        Fork::Cancun => BlobParams::cancun(),
        Fork::Prague => BlobParams::prague(),
    }
}

/// Hashes of earlier blocks, for `BLOCKHASH` and the EIP-2935 history contract. Execution runs
/// ahead of the state root stage, so the hash of a recent block may not exist yet: implementations
/// in the node wait for it.
pub trait BlockHashes: Sync {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError>;
}

/// revm's error type for our database.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DbError(#[from] pub StorageError);
impl DBErrorMarker for DbError {}

/// A revm `Database` over a [`StateView`].
pub struct StateDb<'a> {
    pub state: &'a dyn StateView,
    pub hashes: &'a dyn BlockHashes,
}

impl std::fmt::Debug for StateDb<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateDb")
    }
}

/// Reads need no `&mut`: the views are snapshots. Tracers read the state before a transaction
/// through `DatabaseRef` (revm-inspectors' prestate tracer).
impl revm::DatabaseRef for StateDb<'_> {
    type Error = DbError;

    fn basic_ref(&self, address: Address) -> Result<Option<revm::state::AccountInfo>, DbError> {
        Ok(self.state.account(address)?.map(revm_account))
    }

    fn code_by_hash_ref(&self, code_hash: B256) -> Result<Bytecode, DbError> {
        Ok(self
            .state
            .code(code_hash)?
            .map(Bytecode::new_raw)
            .unwrap_or_default())
    }

    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, DbError> {
        Ok(self.state.storage(address, index)?)
    }

    fn block_hash_ref(&self, number: u64) -> Result<B256, DbError> {
        Ok(self.hashes.block_hash(number)?)
    }
}

impl revm::Database for StateDb<'_> {
    type Error = DbError;

    fn basic(&mut self, address: Address) -> Result<Option<revm::state::AccountInfo>, DbError> {
        self.basic_ref(address)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, DbError> {
        self.code_by_hash_ref(code_hash)
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, DbError> {
        self.storage_ref(address, index)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, DbError> {
        self.block_hash_ref(number)
    }
}

/// revm's view of a stored account: the code is loaded by hash when needed.
pub(crate) fn revm_account(a: AccountInfo) -> revm::state::AccountInfo {
    // Built from a copy of an account without code: revm's `Default` clones its static empty
    // bytecode, an atomic reference count on one cache line that every account load of every
    // executor thread then wrote.
    static NO_CODE: std::sync::LazyLock<revm::state::AccountInfo> =
        std::sync::LazyLock::new(|| revm::state::AccountInfo::default().without_code());
    let mut info = NO_CODE.copy_without_code();
    info.balance = a.balance;
    info.nonce = a.nonce;
    info.code_hash = a.code_hash;
    info
}

/// Converts what revm's `State` accumulated over a block into Kestrel's [`StateChanges`].
pub fn bundle_to_changes(bundle: BundleState) -> StateChanges {
    let mut changes = StateChanges::default();
    for (hash, code) in bundle.contracts {
        let bytes = code.original_bytes();
        if !bytes.is_empty() {
            changes.codes.insert(hash, bytes);
        }
    }
    for (address, account) in bundle.state {
        let wiped = account.was_destroyed();
        let info = account.info.as_ref().map(|i| AccountInfo {
            nonce: i.nonce,
            balance: i.balance,
            code_hash: i.code_hash,
        });
        if account.is_info_changed() || wiped || info.is_none() {
            changes
                .accounts
                .insert(address, info.filter(|i| !i.is_empty()));
        }
        let slots: std::collections::BTreeMap<U256, U256> = account
            .storage
            .into_iter()
            .filter(|(_, slot)| wiped || slot.is_changed())
            .map(|(key, slot)| (key, slot.present_value))
            .collect();
        if wiped || !slots.is_empty() {
            changes
                .storage
                .insert(address, StorageChange { wiped, slots });
        }
    }
    changes
}
