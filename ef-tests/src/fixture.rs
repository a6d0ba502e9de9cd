//! The BlockchainTests JSON format (ethereum/tests `BlockchainTests`, execution-spec-tests
//! `blockchain_tests`), the parts Kestrel reads.

use alloy_primitives::{Address, B256, Bytes, U64, U256, keccak256};
use kestrel_types::{AccountInfo, Fork, chain::GenesisAlloc, state::KECCAK_EMPTY};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One test: a genesis state, blocks to import on it, and the expected outcome.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockchainTest {
    pub network: String,
    pub genesis_block_header: HeaderHash,
    /// The whole genesis block; its header carries the fields Kestrel's chain spec is built from.
    #[serde(rename = "genesisRLP")]
    pub genesis_rlp: Bytes,
    pub pre: BTreeMap<Address, Account>,
    pub blocks: Vec<FixtureBlock>,
    /// The state after the last valid block; some tests give only its root.
    pub post_state: Option<BTreeMap<Address, Account>>,
    pub post_state_hash: Option<B256>,
    pub lastblockhash: B256,
}

/// Of a fixture header, only the hash is compared; the fields come from the RLP.
#[derive(Debug, Deserialize)]
pub struct HeaderHash {
    pub hash: B256,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureBlock {
    pub rlp: Bytes,
    /// Present on blocks that must be rejected: one class or several separated by `|`.
    pub expect_exception: Option<String>,
    /// Present on valid blocks.
    pub block_header: Option<HeaderHash>,
    /// The block's number as the test names it (decimal), for messages.
    pub blocknumber: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Account {
    pub balance: U256,
    pub nonce: U64,
    pub code: Bytes,
    pub storage: BTreeMap<U256, U256>,
}

impl Account {
    pub fn code_hash(&self) -> B256 {
        if self.code.is_empty() {
            KECCAK_EMPTY
        } else {
            keccak256(&self.code)
        }
    }

    /// As an account of a geth genesis file's `alloc`.
    pub fn to_genesis_json(&self) -> serde_json::Value {
        let storage: serde_json::Map<String, serde_json::Value> = self
            .storage
            .iter()
            .map(|(slot, value)| {
                let word = |n: &U256| B256::from(*n).to_string();
                (word(slot), word(value).into())
            })
            .collect();
        serde_json::json!({
            "balance": format!("{:#x}", self.balance),
            "nonce": format!("{:#x}", self.nonce),
            "code": self.code,
            "storage": storage,
        })
    }

    /// As a genesis allocation (zero storage values dropped: they are not in the trie).
    pub fn to_alloc(&self) -> GenesisAlloc {
        GenesisAlloc {
            info: AccountInfo {
                nonce: self.nonce.to(),
                balance: self.balance,
                code_hash: self.code_hash(),
            },
            code: (!self.code.is_empty()).then(|| self.code.clone()),
            storage: self
                .storage
                .iter()
                .filter(|(_, value)| !value.is_zero())
                .map(|(slot, value)| (*slot, *value))
                .collect(),
        }
    }
}

/// The Kestrel fork a test network name stands for; `None` for networks Kestrel does not run
/// (everything before Cancun and the transition networks such as `ShanghaiToCancunAtTime15k`).
pub fn fork_of_network(network: &str) -> Option<Fork> {
    match network {
        "Cancun" => Some(Fork::Cancun),
        "Prague" => Some(Fork::Prague),
        _ => None,
    }
}

/// The class names of `expectException`.
pub fn expected_exceptions(expect: &str) -> impl Iterator<Item = &str> {
    expect.split('|').map(str::trim)
}
