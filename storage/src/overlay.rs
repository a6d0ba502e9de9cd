//! Executed-but-uncommitted blocks, newest last. Reads fall through newest → oldest → database.

use crate::{StateView, StorageError};
use alloy_primitives::{
    Address, B256, Bytes, U256,
    map::{AddressHashMap, B256HashMap, HashMap},
};
use kestrel_types::{AccountInfo, BlockNumber, StateChanges};
use parking_lot::RwLock;
use std::sync::Arc;

/// Shared between the execution stage (pushes) and the commit stage (removes after commit).
#[derive(Default)]
pub struct Overlay {
    layers: RwLock<Vec<(BlockNumber, Arc<Layer>)>>,
}

/// One executed block's changes, hashed for reads. Every read of the latest state (execution,
/// ingress checks, the pool) probes each uncommitted block in turn, and when blocks queue up
/// behind the commit thread a B-tree walk per block cost more than the read itself.
#[derive(Debug, Default)]
pub struct Layer {
    /// `None`: the account no longer exists.
    accounts: AddressHashMap<Option<AccountInfo>>,
    storage: AddressHashMap<LayerStorage>,
    codes: B256HashMap<Bytes>,
}

#[derive(Debug, Default)]
struct LayerStorage {
    /// Slots not listed read as zero (storage cleared before the listed writes).
    wiped: bool,
    slots: HashMap<U256, U256>,
}

impl Layer {
    pub fn new(changes: &StateChanges) -> Self {
        Self {
            accounts: changes
                .accounts
                .iter()
                .map(|(a, info)| (*a, *info))
                .collect(),
            storage: changes
                .storage
                .iter()
                .map(|(address, change)| {
                    let slots = change.slots.iter().map(|(k, v)| (*k, *v)).collect();
                    let storage = LayerStorage {
                        wiped: change.wiped,
                        slots,
                    };
                    (*address, storage)
                })
                .collect(),
            codes: changes.codes.iter().map(|(h, c)| (*h, c.clone())).collect(),
        }
    }
}

impl Overlay {
    pub fn push(&self, number: BlockNumber, changes: &StateChanges) {
        let layer = Arc::new(Layer::new(changes));
        self.layers.write().push((number, layer));
    }
    /// Drops layers of blocks up to and including `number`; call only after they are committed.
    pub fn remove_through(&self, number: BlockNumber) {
        self.layers.write().retain(|(n, _)| *n > number);
    }
    /// Take the snapshot BEFORE opening the database snapshot: then a block missing here is
    /// already visible in the database.
    pub fn snapshot(&self) -> Vec<Arc<Layer>> {
        self.layers.read().iter().map(|(_, c)| c.clone()).collect()
    }
    pub fn len(&self) -> usize {
        self.layers.read().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A state view of `layers` (oldest first) over `base`.
pub struct OverlayView<'a, V> {
    pub layers: &'a [Arc<Layer>],
    pub base: &'a V,
}

impl<V: StateView> StateView for OverlayView<'_, V> {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        for layer in self.layers.iter().rev() {
            if let Some(acc) = layer.accounts.get(&address) {
                return Ok(*acc);
            }
        }
        self.base.account(address)
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        for layer in self.layers.iter().rev() {
            // A deleted account has no storage, whatever slots the layer lists for it (as
            // `BlockWriter::apply_state` applies it).
            if layer.accounts.get(&address) == Some(&None) {
                return Ok(U256::ZERO);
            }
            if let Some(change) = layer.storage.get(&address) {
                if let Some(value) = change.slots.get(&slot) {
                    return Ok(*value);
                }
                if change.wiped {
                    return Ok(U256::ZERO);
                }
            }
        }
        self.base.storage(address, slot)
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        for layer in self.layers.iter().rev() {
            if let Some(code) = layer.codes.get(&code_hash) {
                return Ok(Some(code.clone()));
            }
        }
        self.base.code(code_hash)
    }

    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        // Slots set to zero by a newer layer are not subtracted from the older layers' and the
        // base's: exact for the accounts EIP-7610 asks about (no code, nonce 0), whose storage
        // no transaction can change, and a contract's creation collides on its code anyway.
        for layer in self.layers.iter().rev() {
            if layer.accounts.get(&address) == Some(&None) {
                return Ok(false);
            }
            if let Some(change) = layer.storage.get(&address) {
                if change.slots.values().any(|value| !value.is_zero()) {
                    return Ok(true);
                }
                if change.wiped {
                    return Ok(false);
                }
            }
        }
        self.base.has_storage(address)
    }
}
