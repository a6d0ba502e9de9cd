//! The state changes of one block, as execution produces them and storage applies them.

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use std::collections::BTreeMap;

/// keccak256 of empty code.
pub const KECCAK_EMPTY: B256 =
    alloy_primitives::b256!("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470");

/// An account as the flat state stores it. The storage root lives in the trie, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountInfo {
    pub nonce: u64,
    pub balance: U256,
    pub code_hash: B256,
}

impl AccountInfo {
    pub fn with_balance(balance: U256) -> Self {
        Self {
            nonce: 0,
            balance,
            code_hash: KECCAK_EMPTY,
        }
    }
    /// EIP-161 empty: no nonce, no balance, no code.
    pub fn is_empty(&self) -> bool {
        self.nonce == 0 && self.balance.is_zero() && self.code_hash == KECCAK_EMPTY
    }
}

/// Storage writes of one account in one block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageChange {
    /// All storage that existed before this block is gone (self-destruct, or re-creation).
    pub wiped: bool,
    /// New slot values; zero deletes the slot.
    pub slots: BTreeMap<U256, U256>,
}

/// Everything one block changed. Sorted maps keep iteration (and so writes) deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateChanges {
    /// `None`: the account no longer exists (self-destructed or touched while empty).
    pub accounts: BTreeMap<Address, Option<AccountInfo>>,
    pub storage: BTreeMap<Address, StorageChange>,
    /// New contract code by its hash.
    pub codes: BTreeMap<B256, Bytes>,
}

impl StateChanges {
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty() && self.storage.is_empty() && self.codes.is_empty()
    }

    /// Adds code and returns its hash.
    pub fn insert_code(&mut self, code: Bytes) -> B256 {
        let hash = keccak256(&code);
        if !code.is_empty() {
            self.codes.insert(hash, code);
        }
        hash
    }
}
