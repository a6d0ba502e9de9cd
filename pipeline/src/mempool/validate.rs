//! Admission checks, in geth's order and with geth's errors.
//!
//! The static rules ([`check_static`]) are the ones a transaction must meet for execution to
//! charge it at all, knowing only the chain and the block: under delayed execution a transaction
//! that ordering includes but execution drops takes block space (and raises the base fee) for
//! free. So they are checked three times: at admission, when a block is built from the pool
//! (the fork, the base fee or the gas limit may have moved since), and by every validator on a
//! received proposal, which is not voted for if one of its transactions breaks them.

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

/// What a block's transactions are checked against without state: the chain's rules at the
/// block's time, its gas limit and its base fee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRules {
    pub chain_id: u64,
    pub fork: Fork,
    pub gas_limit: u64,
    pub base_fee: u64,
}

impl BlockRules {
    /// The rules of a block of `spec` stamped `timestamp_secs`.
    pub fn new(spec: &ChainSpec, timestamp_secs: u64, gas_limit: u64, base_fee: u64) -> Self {
        Self {
            chain_id: spec.chain_id,
            fork: spec.fork_at(timestamp_secs),
            gas_limit,
            base_fee,
        }
    }
}

/// Every rule execution would drop `tx` for that needs no state, in geth's order: if this
/// passes, execution charges the sender (or finds its nonce or balance wrong, which the pool's
/// nonce tracking and reserve balance cover).
pub fn check_static(tx: &TxEnvelope, rules: &BlockRules) -> Result<(), PoolError> {
    match tx {
        TxEnvelope::Eip4844(_) => return Err(PoolError::TxTypeNotSupported),
        TxEnvelope::Eip7702(_) if rules.fork < Fork::Prague => {
            return Err(PoolError::TxTypeNotSupported);
        }
        // EIP-7702: "the transaction is also considered invalid when the length of
        // authorization_list is zero". A missing `to` and out-of-range tuple fields (chain id
        // ≥ 2^256, nonce ≥ 2^64, y parity ≥ 2^8) cannot be decoded into `TxEip7702` at all; a
        // tuple with a wrong chain id or nonce is skipped at execution, which still charges.
        TxEnvelope::Eip7702(signed) if signed.tx().authorization_list.is_empty() => {
            return Err(PoolError::EmptyAuthList);
        }
        _ => {}
    }
    match tx.chain_id() {
        Some(id) if id == rules.chain_id => {}
        Some(_) => return Err(PoolError::InvalidChainId),
        None => return Err(PoolError::Unprotected),
    }
    // EIP-2681: the nonce of an account never reaches 2^64 - 1.
    if tx.nonce() == u64::MAX {
        return Err(PoolError::NonceMax);
    }
    if tx.is_create() && tx.input().len() > INITCODE_SIZE_MAX {
        return Err(PoolError::InitcodeTooLarge {
            size: tx.input().len(),
            limit: INITCODE_SIZE_MAX,
        });
    }
    if tx.gas_limit() > rules.gas_limit {
        return Err(PoolError::ExceedsBlockGasLimit);
    }
    if tx.gas_limit() < intrinsic_gas(tx, rules.fork) {
        return Err(PoolError::IntrinsicGasTooLow);
    }
    if let Some(tip) = tx.max_priority_fee_per_gas()
        && tip > tx.max_fee_per_gas()
    {
        return Err(PoolError::TipAboveFeeCap);
    }
    if tx.max_fee_per_gas() < u128::from(rules.base_fee) {
        return Err(PoolError::Underpriced);
    }
    Ok(())
}

/// The most `tx` can take from its sender's balance: `gas_limit * max_fee + value`, or 2^256 - 1
/// if that is more. The value is any 256-bit number the sender signed: a wrapping sum would
/// come out small, pass the balance check and the reserve, and execution would drop the
/// transaction unpaid (found by the `tx_ingress` fuzz target's invariant).
pub fn max_cost(tx: &TxEnvelope) -> U256 {
    // At most 2^64 * 2^128: the product cannot overflow, the sum can.
    (U256::from(tx.gas_limit()) * U256::from(tx.max_fee_per_gas())).saturating_add(tx.value())
}

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

    /// The rules of the next block if it is stamped `now_secs` with `base_fee`.
    pub fn rules(&self, now_secs: u64, base_fee: u64) -> BlockRules {
        BlockRules::new(&self.spec, now_secs, self.block_gas_limit, base_fee)
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
        check_static(tx, &self.rules(now_secs, base_fee))
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
        // A saturated cost stands for one above 2^256 - 1, which no balance pays.
        let cost = max_cost(tx.tx());
        if account.balance < cost || cost == U256::MAX {
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEip7702};
    use alloy_eips::eip7702::{Authorization, SignedAuthorization};
    use alloy_primitives::{Address, Signature, TxKind};

    fn rules() -> BlockRules {
        BlockRules {
            chain_id: 1337,
            fork: Fork::Prague,
            gas_limit: 30_000_000,
            base_fee: 1_000_000_000,
        }
    }

    fn set_code(auths: Vec<SignedAuthorization>) -> TxEnvelope {
        let tx = TxEip7702 {
            chain_id: 1337,
            nonce: 0,
            gas_limit: 25_000_000,
            max_fee_per_gas: 100_000_000_000,
            max_priority_fee_per_gas: 10_000_000_000,
            to: Address::with_last_byte(1),
            authorization_list: auths,
            ..Default::default()
        };
        TxEnvelope::Eip7702(tx.into_signed(Signature::test_signature()))
    }

    fn transfer(edit: impl FnOnce(&mut TxEip1559)) -> TxEnvelope {
        let mut tx = TxEip1559 {
            chain_id: 1337,
            gas_limit: 21_000,
            max_fee_per_gas: 2_000_000_000,
            max_priority_fee_per_gas: 1_000_000_000,
            to: TxKind::Call(Address::with_last_byte(2)),
            ..Default::default()
        };
        edit(&mut tx);
        TxEnvelope::Eip1559(tx.into_signed(Signature::test_signature()))
    }

    #[test]
    fn set_code_transactions_need_an_authorization() {
        let empty = set_code(vec![]);
        assert_eq!(
            check_static(&empty, &rules()),
            Err(PoolError::EmptyAuthList)
        );
        assert_eq!(
            PoolError::EmptyAuthList.to_string(),
            "EIP-7702 transaction with empty auth list"
        );
        // A tuple for another chain or a used nonce is skipped at execution, which still
        // charges the sender: statically fine.
        let auth = Authorization {
            chain_id: U256::from(999),
            address: Address::with_last_byte(3),
            nonce: u64::MAX - 1,
        };
        let one = set_code(vec![auth.into_signed(Signature::test_signature())]);
        assert_eq!(check_static(&one, &rules()), Ok(()));
        let cancun = BlockRules {
            fork: Fork::Cancun,
            ..rules()
        };
        assert_eq!(
            check_static(&one, &cancun),
            Err(PoolError::TxTypeNotSupported)
        );
    }

    #[test]
    fn each_static_rule_refuses_with_geths_error() {
        let ok = transfer(|_| {});
        assert_eq!(check_static(&ok, &rules()), Ok(()));
        let cases: Vec<(TxEnvelope, PoolError)> = vec![
            (transfer(|t| t.chain_id = 1), PoolError::InvalidChainId),
            (transfer(|t| t.nonce = u64::MAX), PoolError::NonceMax),
            (
                transfer(|t| t.gas_limit = 30_000_001),
                PoolError::ExceedsBlockGasLimit,
            ),
            (
                transfer(|t| t.gas_limit = 20_999),
                PoolError::IntrinsicGasTooLow,
            ),
            // EIP-7623: 1,000 non-zero calldata bytes cost a 40,000 gas floor on top of 21,000.
            (
                transfer(|t| {
                    t.input = vec![1u8; 1_000].into();
                    t.gas_limit = 21_000 + 16 * 1_000;
                }),
                PoolError::IntrinsicGasTooLow,
            ),
            (
                transfer(|t| t.max_priority_fee_per_gas = 3_000_000_000),
                PoolError::TipAboveFeeCap,
            ),
            (
                transfer(|t| {
                    t.max_fee_per_gas = 999_999_999;
                    t.max_priority_fee_per_gas = 1;
                }),
                PoolError::Underpriced,
            ),
            (
                transfer(|t| {
                    t.to = TxKind::Create;
                    t.input = vec![0u8; INITCODE_SIZE_MAX + 1].into();
                    t.gas_limit = 29_000_000;
                }),
                PoolError::InitcodeTooLarge {
                    size: INITCODE_SIZE_MAX + 1,
                    limit: INITCODE_SIZE_MAX,
                },
            ),
        ];
        for (tx, err) in cases {
            assert_eq!(check_static(&tx, &rules()), Err(err));
        }
        let floor_paid = transfer(|t| {
            t.input = vec![1u8; 1_000].into();
            t.gas_limit = 21_000 + 40 * 1_000;
        });
        assert_eq!(check_static(&floor_paid, &rules()), Ok(()));
    }

    /// Found by the `tx_ingress` fuzz target (fuzz/regressions/tx_ingress/max-cost-wraps): a
    /// value just below 2^256 wrapped `gas * max_fee + value` to 1 wei, so a sender holding 1 wei
    /// passed the balance check and the reserve, and execution would drop the transaction unpaid.
    #[test]
    fn a_cost_above_2_pow_256_does_not_wrap_past_the_balance_check() {
        let (gas, fee) = (21_000u64, 2_000_000_000u128);
        let wraps_to_one = U256::MAX - U256::from(gas) * U256::from(fee) + U256::from(2);
        let tx = transfer(|t| t.value = wraps_to_one);
        assert_eq!(max_cost(&tx), U256::MAX);
        let tx = RecoveredTx::new_unchecked(tx, Address::with_last_byte(9));
        let validator = Validator::new(Arc::new(kestrel_types::ChainSpec::dev()), 30_000_000);
        let one_wei = AccountInfo {
            nonce: 0,
            balance: U256::from(1),
            code_hash: kestrel_types::state::KECCAK_EMPTY,
        };
        assert_eq!(
            validator.check_state(&tx, Some(one_wei)),
            Err(PoolError::InsufficientFunds)
        );
        let richest = AccountInfo {
            balance: U256::MAX,
            ..one_wei
        };
        assert_eq!(
            validator.check_state(&tx, Some(richest)),
            Err(PoolError::InsufficientFunds)
        );
    }
}
