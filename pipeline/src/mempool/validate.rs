//! Admission checks, in geth's order and with geth's errors.

use super::PoolError;
use alloy_consensus::{Transaction, TxEnvelope};
use alloy_primitives::U256;
use kestrel_types::{AccountInfo, ChainSpec, Fork, RecoveredTx};
use revm::context_interface::cfg::gas::calculate_initial_tx_gas;
use revm::primitives::hardfork::SpecId;
use std::sync::Arc;

/// Largest transaction accepted, encoded (geth's `txMaxSize`).
pub const TX_SIZE_MAX: usize = 128 * 1024;
/// EIP-3860: largest init code of a contract creation.
pub const INITCODE_SIZE_MAX: usize = 2 * 24_576;

#[derive(Debug, Clone)]
pub struct Validator {
    spec: Arc<ChainSpec>,
    block_gas_limit: u64,
}

impl Validator {
    pub fn new(spec: Arc<ChainSpec>, block_gas_limit: u64) -> Self {
        Self {
            spec,
            block_gas_limit,
        }
    }

    /// Checks that need no state. `now_secs` picks the fork; `base_fee` is the next block's.
    pub fn check_stateless(
        &self,
        tx: &TxEnvelope,
        encoded_len: usize,
        now_secs: u64,
        base_fee: u64,
    ) -> Result<(), PoolError> {
        if encoded_len > TX_SIZE_MAX {
            return Err(PoolError::Oversized);
        }
        let fork = self.spec.fork_at(now_secs);
        match tx {
            TxEnvelope::Eip4844(_) => return Err(PoolError::TxTypeNotSupported),
            TxEnvelope::Eip7702(_) if fork < Fork::Prague => {
                return Err(PoolError::TxTypeNotSupported);
            }
            _ => {}
        }
        match tx.chain_id() {
            Some(id) if id == self.spec.chain_id => {}
            Some(_) => return Err(PoolError::InvalidChainId),
            None => return Err(PoolError::Unprotected),
        }
        if tx.is_create() && tx.input().len() > INITCODE_SIZE_MAX {
            return Err(PoolError::InitcodeTooLarge {
                size: tx.input().len(),
                limit: INITCODE_SIZE_MAX,
            });
        }
        if tx.gas_limit() > self.block_gas_limit {
            return Err(PoolError::ExceedsBlockGasLimit);
        }
        if tx.gas_limit() < intrinsic_gas(tx, fork) {
            return Err(PoolError::IntrinsicGasTooLow);
        }
        if let Some(tip) = tx.max_priority_fee_per_gas()
            && tip > tx.max_fee_per_gas()
        {
            return Err(PoolError::TipAboveFeeCap);
        }
        if tx.max_fee_per_gas() < u128::from(base_fee) {
            return Err(PoolError::Underpriced);
        }
        Ok(())
    }

    /// Checks against the sender's account in the latest state; returns the state nonce.
    pub fn check_state(
        &self,
        tx: &RecoveredTx,
        account: Option<AccountInfo>,
    ) -> Result<u64, PoolError> {
        let account = account.unwrap_or_default();
        if tx.nonce() < account.nonce {
            return Err(PoolError::NonceTooLow);
        }
        let max_cost =
            U256::from(tx.gas_limit()) * U256::from(tx.tx().max_fee_per_gas()) + tx.tx().value();
        if account.balance < max_cost {
            return Err(PoolError::InsufficientFunds);
        }
        Ok(account.nonce)
    }
}

/// Intrinsic gas including the EIP-7623 calldata floor (Prague).
fn intrinsic_gas(tx: &TxEnvelope, fork: Fork) -> u64 {
    let spec = match fork {
        Fork::Cancun => SpecId::CANCUN,
        Fork::Prague => SpecId::PRAGUE,
    };
    let (accounts, slots) = tx.access_list().map_or((0, 0), |list| {
        let slots: usize = list.iter().map(|item| item.storage_keys.len()).sum();
        (list.len() as u64, slots as u64)
    });
    let auths = tx.authorization_list().map_or(0, |l| l.len() as u64);
    let gas = calculate_initial_tx_gas(
        spec,
        tx.input(),
        tx.is_create(),
        accounts,
        slots,
        auths,
        None,
    );
    (gas.initial_regular_gas + gas.initial_state_gas).max(gas.floor_gas)
}
