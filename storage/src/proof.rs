//! EIP-1186 Merkle proofs of an account and its storage slots against the state the store
//! holds (the committed head's): what `eth_getProof` answers.

use crate::{
    Reader, StateView, StorageError, read_hashed_account,
    trie::{self, Leaves, TrieCursors},
};
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_trie::{EMPTY_ROOT_HASH, Nibbles, proof::ProofNodes};
use kestrel_types::AccountInfo;

/// An account with the proof of its leaf (or of its absence) in the state trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountProof {
    pub address: Address,
    /// `None`: the account does not exist (its proof shows the absence).
    pub info: Option<AccountInfo>,
    pub storage_root: B256,
    /// The trie nodes from the root towards the account's key, root first.
    pub proof: Vec<Bytes>,
    pub storage: Vec<StorageProof>,
}

/// A slot's value with the proof of it in the account's storage trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageProof {
    pub slot: B256,
    pub value: U256,
    pub proof: Vec<Bytes>,
}

/// The nodes proving `key`, root first.
fn nodes_for(nodes: &ProofNodes, key: &B256) -> Vec<Bytes> {
    nodes
        .matching_nodes_sorted(&Nibbles::unpack(key))
        .into_iter()
        .map(|(_, node)| node)
        .collect()
}

impl Reader<'_> {
    /// The proof of `address` and of each of `slots` at the head's state, and the state root
    /// they prove against.
    pub fn proof(
        &self,
        address: Address,
        slots: &[B256],
    ) -> Result<(B256, AccountProof), StorageError> {
        let hashed_address = keccak256(address);
        let mut cursors = TrieCursors {
            hashed: self.txn.cursor(&self.tables.hashed_accounts)?,
            nodes: self.txn.cursor(&self.tables.account_trie)?,
            fresh: trie::Fresh::View(self.fresh.clone()),
        };
        let (state_root, nodes) =
            trie::proof(&mut cursors, Leaves::Accounts, &[], &[hashed_address])?;
        let record = read_hashed_account(self.txn, &self.tables.hashed_accounts, &hashed_address)?;
        let storage_root = record.map_or(EMPTY_ROOT_HASH, |r| r.storage_root);

        let mut hashed_slots: Vec<B256> = slots.iter().map(keccak256).collect();
        hashed_slots.sort_unstable();
        hashed_slots.dedup();
        let storage_nodes = if record.is_some() && storage_root != EMPTY_ROOT_HASH {
            let mut cursors = TrieCursors {
                hashed: self.txn.cursor(&self.tables.hashed_storage)?,
                nodes: self.txn.cursor(&self.tables.storage_trie)?,
                fresh: trie::Fresh::Nothing,
            };
            let (root, nodes) = trie::proof(
                &mut cursors,
                Leaves::Storage,
                hashed_address.as_slice(),
                &hashed_slots,
            )?;
            assert_eq!(
                root, storage_root,
                "storage trie of {address} differs from its account's storage root"
            );
            Some(nodes)
        } else {
            None
        };
        let mut storage = Vec::with_capacity(slots.len());
        for slot in slots {
            storage.push(StorageProof {
                slot: *slot,
                value: self.storage(address, U256::from_be_bytes(slot.0))?,
                proof: storage_nodes
                    .as_ref()
                    .map_or_else(Vec::new, |nodes| nodes_for(nodes, &keccak256(slot))),
            });
        }
        Ok((
            state_root,
            AccountProof {
                address,
                info: record.map(|r| r.info),
                storage_root,
                proof: nodes_for(&nodes, &hashed_address),
                storage,
            },
        ))
    }
}
