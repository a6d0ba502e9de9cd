//! The genesis block of a chain specification, computed without a database (also used by the
//! conformance tests for their pre-state roots).

use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Header};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{Address, B256, Bloom};
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

/// The genesis header of `spec`; its hash is the chain's genesis hash. Every field a genesis file
/// sets comes from `spec.genesis`; the rest is what geth derives for a Cancun or Prague block 0.
pub fn genesis_header(spec: &ChainSpec) -> Header {
    genesis_header_with_root(spec, state_root_from_alloc(&spec.alloc))
}

/// The genesis header of `spec` with `state_root`, the root of its allocation computed
/// elsewhere (by the bulk writer, which computes it as it writes the state).
pub(crate) fn genesis_header_with_root(spec: &ChainSpec, state_root: B256) -> Header {
    let fields = &spec.genesis;
    let prague = spec.fork_at(fields.timestamp) >= Fork::Prague;
    Header {
        parent_hash: fields.parent_hash,
        ommers_hash: EMPTY_OMMER_ROOT_HASH,
        beneficiary: fields.coinbase,
        state_root,
        transactions_root: EMPTY_ROOT_HASH,
        receipts_root: EMPTY_ROOT_HASH,
        logs_bloom: Bloom::ZERO,
        difficulty: fields.difficulty,
        number: 0,
        gas_limit: spec.gas_limit,
        gas_used: fields.gas_used,
        timestamp: fields.timestamp,
        extra_data: fields.extra_data.clone(),
        mix_hash: fields.mix_hash,
        nonce: fields.nonce,
        base_fee_per_gas: Some(fields.base_fee),
        withdrawals_root: Some(EMPTY_ROOT_HASH),
        blob_gas_used: Some(fields.blob_gas_used),
        excess_blob_gas: Some(fields.excess_blob_gas),
        parent_beacon_block_root: Some(fields.parent_beacon_block_root),
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{B64, U256, b256};

    /// Every header field a genesis file sets reaches block 0.
    #[test]
    fn genesis_file_fields_reach_the_header() {
        let spec = ChainSpec::from_genesis_json(
            r#"{
                "config": {"chainId": 7, "cancunTime": 0},
                "nonce": "0x42", "timestamp": "0x10", "extraData": "0x0102",
                "gasLimit": "0x1c9c380", "gasUsed": "0x5", "difficulty": "0x3",
                "mixHash": "0x0000000000000000000000000000000000000000000000000000000000020000",
                "coinbase": "0x2adc25665018aa1fe0e6bc666dac8fc2697ff9ba",
                "parentHash": "0x1111111111111111111111111111111111111111111111111111111111111111",
                "baseFeePerGas": "0xb", "blobGasUsed": "0x20000", "excessBlobGas": "0x60000",
                "parentBeaconBlockRoot":
                    "0x2222222222222222222222222222222222222222222222222222222222222222",
                "alloc": {}
            }"#,
        )
        .unwrap();
        let header = genesis_header(&spec);
        assert_eq!(header.nonce, B64::from(0x42u64));
        assert_eq!(header.timestamp, 0x10);
        assert_eq!(header.extra_data.as_ref(), [1, 2]);
        assert_eq!(header.gas_used, 5);
        assert_eq!(header.difficulty, U256::from(3));
        assert_eq!(header.mix_hash, B256::left_padding_from(&[2, 0, 0]));
        assert_eq!(
            header.parent_hash,
            b256!("1111111111111111111111111111111111111111111111111111111111111111")
        );
        assert_eq!(header.base_fee_per_gas, Some(0xb));
        assert_eq!(header.blob_gas_used, Some(0x20000));
        assert_eq!(header.excess_blob_gas, Some(0x60000));
        assert_eq!(
            header.parent_beacon_block_root,
            Some(b256!(
                "2222222222222222222222222222222222222222222222222222222222222222"
            ))
        );
        assert_eq!(header.requests_hash, None, "Cancun only");
    }

    #[test]
    fn a_genesis_that_is_not_block_zero_is_refused() {
        let err = ChainSpec::from_genesis_json(r#"{"config": {"chainId": 7}, "number": "0x5"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("block 0"), "{err}");
    }
}
