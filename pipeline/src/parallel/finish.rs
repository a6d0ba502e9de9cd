//! The block's result from the multi-version memory once every transaction is validated
//! (Block-STM's commit): the last write of each location, compared with the starting state, on
//! all threads; the post-block system calls and withdrawals through alloy-evm over revm's
//! `State`, reading those final writes; receipts' cumulative gas in block order.
//!
//! Taken only when it is exactly what revm's bundle would hold after committing every
//! transaction in turn: no account created, self-destructed or cleared (their storage wipes and
//! deletions depend on the order of transitions), no code set, and the system calls and
//! withdrawals touching no account a transaction changed. Otherwise `from_memory` returns
//! `None` and the block goes to the sequential executor.

use super::{
    Outcome,
    mv::{Found, Loc, MvMemory, SHARDS, Val, credited},
    scheduler::Padded,
};
use crate::{
    deposits,
    evm::{BlockHashes, DbError, Hardforks, StateDb, bundle_to_changes, revm_account},
    executor::{BlockInput, BlockOutput, ExecError, fatal_or_block},
};
use alloy_consensus::{Header, Transaction};
use alloy_eips::{
    eip4895::Withdrawal,
    eip7002::{SYSTEM_ADDRESS, WITHDRAWAL_REQUEST_PREDEPLOY_ADDRESS},
    eip7251::CONSOLIDATION_REQUEST_PREDEPLOY_ADDRESS,
};
use alloy_evm::{Evm, block::BlockExecutor, eth::EthBlockExecutor};
use alloy_hardforks::EthereumHardforks;
use alloy_primitives::{Address, B256, U256, map::HashMap};
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{AccountInfo, StorageChange};
use parking_lot::Mutex;
use revm::{
    bytecode::Bytecode,
    database::{State, states::bundle_state::BundleRetention},
};
use std::collections::{BTreeMap, btree_map};

/// revm's `Database` for the block: the starting state, and once the transactions are done,
/// their final writes over it (for the post-block system calls and withdrawals).
pub(super) struct FinalDb<'a> {
    inner: StateDb<'a>,
    mv: &'a MvMemory,
    /// Set once the final writes are readable.
    finals: bool,
}

impl std::fmt::Debug for FinalDb<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FinalDb")
    }
}

impl revm::Database for FinalDb<'_> {
    type Error = DbError;

    fn basic(&mut self, address: Address) -> Result<Option<revm::state::AccountInfo>, DbError> {
        if !self.finals {
            return self.inner.basic(address);
        }
        let info = match self.mv.final_value(&Loc::Basic(address)) {
            Found::Base => self.inner.state.account(address)?,
            Found::Val(Val::Basic(info)) => info,
            Found::BaseCredited(credit) => credited(self.inner.state.account(address)?, credit)
                .expect("overflowing credits send the block to the sequential executor"),
            found => unreachable!("final account value {found:?}"),
        };
        Ok(info.map(revm_account))
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, DbError> {
        self.inner.code_by_hash(code_hash)
    }

    fn storage(&mut self, address: Address, slot: U256) -> Result<U256, DbError> {
        if !self.finals {
            return self.inner.storage(address, slot);
        }
        match self.mv.final_value(&Loc::Storage(address, slot)) {
            Found::Base => self.inner.storage(address, slot),
            Found::Val(Val::Storage(value)) => Ok(value),
            found => unreachable!("final slot value {found:?}"),
        }
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, DbError> {
        self.inner.block_hash(number)
    }
}

pub(super) type FinalState<'a> = State<FinalDb<'a>>;

/// revm's `State` over the block's starting state, tracking the bundle of the system calls.
pub(super) fn final_state<'a>(
    state: &'a dyn StateView,
    hashes: &'a dyn BlockHashes,
    mv: &'a MvMemory,
) -> FinalState<'a> {
    State::builder()
        .with_database(FinalDb {
            inner: StateDb { state, hashes },
            mv,
            finals: false,
        })
        .with_bundle_update()
        .build()
}

type FinalExec<'e, 'db, 'a> = EthBlockExecutor<
    'e,
    alloy_evm::eth::EthEvm<
        &'db mut FinalState<'a>,
        revm::inspector::NoOpInspector,
        alloy_evm::precompiles::PrecompilesMap,
    >,
    Hardforks,
    alloy_evm::eth::receipt_builder::AlloyReceiptBuilder,
>;

/// The block's inputs the finish needs.
pub(super) struct Finish<'x, 'a> {
    pub(super) header: &'x Header,
    pub(super) input: &'x BlockInput<'a>,
    pub(super) state: &'x dyn StateView,
    pub(super) pre: &'x HashMap<Loc, Val>,
    /// What the system calls and withdrawals touch ([`system_accounts`]).
    pub(super) system: &'x [Address],
    pub(super) forks: &'x Hardforks,
    pub(super) gas_limit_cap: u64,
}

/// The block's output from the multi-version memory, or `None` if it would not be exact (then
/// the receipts taken from `outcomes` are dropped with the executor).
pub(super) fn from_memory(
    f: Finish<'_, '_>,
    mut executor: FinalExec<'_, '_, '_>,
    outcomes: &mut [Padded<Mutex<Option<Outcome>>>],
    parts: Vec<PartResult>,
) -> Result<Option<BlockOutput>, ExecError> {
    let txs = f.input.txs;
    let beneficiary = f.header.beneficiary;
    // Every transaction speculated, simple, and fitting in the gas the block has left; one pass
    // that also hands the receipts over in block order, with their cumulative gas.
    let cancun = f.forks.is_cancun_active_at_timestamp(f.header.timestamp);
    let mut gas_used = 0u64;
    let mut relaxed_merges = 0u64;
    executor.receipts.reserve(txs.len());
    for (tx, outcome) in txs.iter().zip(outcomes.iter_mut()) {
        let Some(Outcome {
            speculative: Some(speculative),
            ..
        }) = outcome.0.get_mut()
        else {
            return Ok(None);
        };
        let fits = tx.tx().gas_limit().min(f.gas_limit_cap) <= f.header.gas_limit - gas_used;
        if !speculative.simple || !fits {
            return Ok(None);
        }
        relaxed_merges += u64::from(speculative.relaxed_merges);
        let gas = speculative.gas;
        gas_used += gas.tx_gas_used();
        executor.block_regular_gas_used += gas.block_regular_gas_used();
        executor.block_state_gas_used += gas.block_state_gas_used();
        executor.cumulative_tx_gas_used += gas.tx_gas_used();
        if cancun {
            let blob_gas = tx.tx().blob_gas_used().unwrap_or_default();
            executor.blob_gas_used = executor.blob_gas_used.saturating_add(blob_gas);
        }
        let mut receipt = speculative.receipt.take().expect("taken once");
        receipt
            .as_receipt_with_bloom_mut()
            .expect("Ethereum receipts have a bloom")
            .receipt
            .cumulative_gas_used = executor.cumulative_tx_gas_used;
        executor.receipts.push(receipt);
    }
    // Every transaction touches the beneficiary.
    if f.system.contains(&beneficiary) {
        return Ok(None);
    }
    let Some(mut writes) = merge(parts)? else {
        return Ok(None);
    };
    let beneficiary_changed =
        writes.accounts.contains_key(&beneficiary) || writes.storage.contains_key(&beneficiary);
    if !beneficiary_changed {
        // Touched, unchanged: if it is empty (or does not exist) the bundle clears it.
        let base = match f.pre.get(&Loc::Basic(beneficiary)) {
            Some(Val::Basic(info)) => *info,
            _ => f.state.account(beneficiary)?,
        };
        if base.is_none_or(|info| info.is_empty()) {
            return Ok(None);
        }
    }
    // Exact from here on.
    metrics::counter!("kestrel_execution_relaxed_merges_total").increment(relaxed_merges);
    if f.forks.is_prague_active_at_timestamp(f.header.timestamp) {
        deposits::check_layouts(&executor.receipts)?;
    }
    executor.evm_mut().db_mut().database.finals = true;
    let (evm, result) = executor.finish().map_err(fatal_or_block)?;
    let (db, _env) = evm.finish();
    db.merge_transitions(BundleRetention::PlainState);
    let bundle = db.take_bundle();
    if bundle.state.keys().any(|a| {
        *a == beneficiary || writes.accounts.contains_key(a) || writes.storage.contains_key(a)
    }) {
        // The system calls touched what transactions wrote, which `system` did not foresee.
        return Ok(None);
    }
    let mut changes = bundle_to_changes(bundle);
    // The system calls' few changes into the transactions' many (the keys are disjoint, checked
    // above): `BTreeMap::append` would rebuild both trees.
    writes
        .accounts
        .extend(std::mem::take(&mut changes.accounts));
    writes.storage.extend(std::mem::take(&mut changes.storage));
    changes.accounts = writes.accounts;
    changes.storage = writes.storage;
    let requests_hash = f
        .forks
        .is_prague_active_at_timestamp(f.header.timestamp)
        .then(|| result.requests.requests_hash());
    Ok(Some(BlockOutput {
        changes,
        receipts: result.receipts,
        included: (0..txs.len()).collect(),
        dropped: Vec::new(),
        gas_used: result.gas_used,
        blob_gas_used: result.blob_gas_used,
        requests_hash,
    }))
}

/// The transactions' changes to accounts and storage, as the bundle would hold them (or one
/// thread's share of them).
pub(super) struct FinalWrites {
    accounts: BTreeMap<Address, Option<AccountInfo>>,
    storage: BTreeMap<Address, StorageChange>,
}

impl FinalWrites {
    /// From sorted accounts and slots.
    fn from_sorted(
        accounts: Vec<(Address, Option<AccountInfo>)>,
        slots: &[(Address, U256, U256)],
    ) -> Self {
        let storage = slots
            .chunk_by(|a, b| a.0 == b.0)
            .map(|chunk| {
                let change = StorageChange {
                    wiped: false,
                    slots: chunk
                        .iter()
                        .map(|(_, slot, value)| (*slot, *value))
                        .collect(),
                };
                (chunk[0].0, change)
            })
            .collect();
        Self {
            accounts: accounts.into_iter().collect(),
            storage,
        }
    }

    /// Adds another thread's share: its accounts are not in this one (an account is in one
    /// shard), a contract's slots can be in both.
    fn append(&mut self, mut other: Self) {
        self.accounts.append(&mut other.accounts);
        for (address, mut change) in other.storage {
            match self.storage.entry(address) {
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(change);
                }
                btree_map::Entry::Occupied(mut entry) => {
                    entry.get_mut().slots.append(&mut change.slots);
                }
            }
        }
    }
}

/// One thread's share of the final writes ([`part`]).
pub(super) type PartResult = Result<Option<FinalWrites>, StorageError>;

/// The final writes from every thread's share; `None` if one is not exact.
fn merge(parts: Vec<PartResult>) -> Result<Option<FinalWrites>, ExecError> {
    let mut merged: Option<FinalWrites> = None;
    for part in parts {
        let Some(part) = part? else {
            return Ok(None);
        };
        match &mut merged {
            Some(merged) => merged.append(part),
            None => merged = Some(part),
        }
    }
    Ok(Some(merged.expect("one share a thread")))
}

/// The accounts the pre- and post-block system calls and withdrawals touch: if a transaction
/// changed one of them, their transitions and the transactions' writes are not independent
/// parts of the bundle.
pub(super) fn system_accounts(
    db: &FinalState<'_>,
    header: &Header,
    withdrawals: &[Withdrawal],
    forks: &Hardforks,
) -> Vec<Address> {
    let mut system: Vec<Address> = db.cache.accounts.keys().copied().collect();
    system.extend(withdrawals.iter().map(|w| w.address));
    if forks.is_prague_active_at_timestamp(header.timestamp) {
        system.extend([
            SYSTEM_ADDRESS,
            WITHDRAWAL_REQUEST_PREDEPLOY_ADDRESS,
            CONSOLIDATION_REQUEST_PREDEPLOY_ADDRESS,
        ]);
    }
    system
}

/// Thread `thread` of `threads`' share of the final writes: the last write of every location
/// in its shards that differs from the starting state, sorted; `None` if an account ends up
/// cleared, its credits overflow, or it is in `system`.
pub(super) fn part(
    state: &dyn StateView,
    mv: &MvMemory,
    (thread, threads): (usize, usize),
    system: &[Address],
) -> PartResult {
    let per_thread = SHARDS.div_ceil(threads);
    let shards = thread * per_thread..((thread + 1) * per_thread).min(SHARDS);
    let mut accounts = Vec::new();
    let mut slots = Vec::new();
    let mut exact = true;
    let mut error = None;
    mv.for_each_final(shards, |loc, found, base| {
        if !exact || error.is_some() {
            return;
        }
        let mut step = || -> Result<bool, StorageError> {
            let (Loc::Basic(address) | Loc::Storage(address, _)) = *loc;
            if system.contains(&address) {
                return Ok(false);
            }
            match (*loc, found) {
                (Loc::Basic(address), found) => {
                    let base = match base {
                        Some(Val::Basic(info)) => info,
                        Some(Val::Storage(_)) => unreachable!("account locations hold accounts"),
                        None => state.account(address)?,
                    };
                    let info = match found {
                        Found::Val(Val::Basic(info)) => info,
                        Found::BaseCredited(credit) => match credited(base, credit) {
                            Some(info) => info,
                            None => return Ok(false),
                        },
                        Found::Overflow => return Ok(false),
                        found => unreachable!("final account value {found:?}"),
                    };
                    match info {
                        Some(info) if !info.is_empty() => {
                            if Some(info) != base {
                                accounts.push((address, Some(info)));
                            }
                            Ok(true)
                        }
                        _ => Ok(false),
                    }
                }
                (Loc::Storage(address, slot), Found::Val(Val::Storage(value))) => {
                    let base = match base {
                        Some(Val::Storage(value)) => value,
                        Some(Val::Basic(_)) => unreachable!("storage locations hold slot values"),
                        None => state.storage(address, slot)?,
                    };
                    if value != base {
                        slots.push((address, slot, value));
                    }
                    Ok(true)
                }
                (_, found) => unreachable!("final slot value {found:?}"),
            }
        };
        match step() {
            Ok(ok) => exact = ok,
            Err(err) => error = Some(err),
        }
    });
    if let Some(err) = error {
        return Err(err);
    }
    if !exact {
        return Ok(None);
    }
    accounts.sort_unstable_by_key(|(address, _)| address_key(address));
    slots.sort_unstable_by_key(|(address, slot, _)| (address_key(address), *slot));
    // Each thread builds the trees of its share: the serial end of the block only joins them.
    Ok(Some(FinalWrites::from_sorted(accounts, &slots)))
}

/// Sorts addresses as `Address` does, by integer comparisons where `Address` compares byte
/// slices: sorting took a fifth of a thread's share of the finish, and half of it when every slot
/// is one contract's (the addresses compare equal, so all twenty bytes are compared every time).
fn address_key(address: &Address) -> (u64, u64, u32) {
    let bytes = &address.0;
    (
        u64::from_be_bytes(bytes[..8].try_into().expect("eight bytes")),
        u64::from_be_bytes(bytes[8..16].try_into().expect("eight bytes")),
        u32::from_be_bytes(bytes[16..].try_into().expect("four bytes")),
    )
}
