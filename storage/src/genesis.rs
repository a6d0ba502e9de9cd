//! The genesis block of a chain specification, computed without a database (also used by the
//! conformance tests for their pre-state roots).

use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Header};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{Address, B64, B256, Bloom, U256};
use alloy_trie::{
    EMPTY_ROOT_HASH, TrieAccount,
    root::{state_root_unhashed, storage_root_unhashed},
};
use kestrel_types::{ChainSpec, Fork, StateChanges, StorageChange, chain::GenesisAlloc};
use std::collections::BTreeMap;

/// The state root of an allocation, computed from scratch (zero storage values are ignored).
pub fn state_root_from_alloc(alloc: &BTreeMap<Address, GenesisAlloc>) -> B256 {
    state_root_unhashed(alloc.iter().map(|(address, account)| {
        let storage = account
            .storage
            .iter()
            .filter(|(_, value)| !value.is_zero())
            .map(|(slot, value)| (B256::from(*slot), *value));
        let storage_root = storage_root_unhashed(storage);
        let info = account.info;
        (
            *address,
            TrieAccount::new(info.nonce, info.balance, storage_root, info.code_hash),
        )
    }))
}

/// The genesis header of `spec`; its hash is the chain's genesis hash.
pub fn genesis_header(spec: &ChainSpec) -> Header {
    let prague = spec.fork_at(spec.genesis_timestamp) >= Fork::Prague;
    Header {
        parent_hash: B256::ZERO,
        ommers_hash: EMPTY_OMMER_ROOT_HASH,
        beneficiary: spec.genesis_coinbase,
        state_root: state_root_from_alloc(&spec.alloc),
        transactions_root: EMPTY_ROOT_HASH,
        receipts_root: EMPTY_ROOT_HASH,
        logs_bloom: Bloom::ZERO,
        difficulty: U256::ZERO,
        number: 0,
        gas_limit: spec.gas_limit,
        gas_used: 0,
        timestamp: spec.genesis_timestamp,
        extra_data: spec.genesis_extra_data.clone(),
        mix_hash: B256::ZERO,
        nonce: B64::ZERO,
        base_fee_per_gas: Some(spec.genesis_base_fee),
        withdrawals_root: Some(EMPTY_ROOT_HASH),
        blob_gas_used: Some(0),
        excess_blob_gas: Some(0),
        parent_beacon_block_root: Some(B256::ZERO),
        requests_hash: prague.then_some(EMPTY_REQUESTS_HASH),
        ..Default::default()
    }
}

/// The allocation as the state changes of block 0.
pub fn genesis_changes(spec: &ChainSpec) -> StateChanges {
    let mut changes = StateChanges::default();
    for (address, account) in &spec.alloc {
        changes.accounts.insert(*address, Some(account.info));
        if let Some(code) = &account.code {
            let hash = changes.insert_code(code.clone());
            assert_eq!(
                hash, account.info.code_hash,
                "genesis code of {address} has another hash"
            );
        }
        if !account.storage.is_empty() {
            let change = StorageChange {
                wiped: false,
                slots: account.storage.clone(),
            };
            changes.storage.insert(*address, change);
        }
    }
    changes
}
