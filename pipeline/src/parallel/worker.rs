//! Speculative execution: one transaction with revm, reading through the multi-version memory,
//! recording what it read so the committing thread can validate it, and building its receipt
//! (bloom included) off the committing thread.

use super::{
    super::evm::revm_account,
    Shared,
    mv::{Loc, Val, writes_of},
};
use alloy_consensus::{Eip658Value, ReceiptEnvelope, Transaction as _, TxType};
use alloy_evm::{
    FromRecoveredTx, eth::EthEvmBuilder, eth::EthEvmContext, precompiles::PrecompilesMap,
};
use alloy_primitives::{Address, B256, U256, map::HashMap};
use kestrel_types::{RecoveredTx, state::KECCAK_EMPTY};
use revm::{
    ExecuteEvm,
    bytecode::Bytecode,
    context::{
        Block, Cfg, ContextSetters, ContextTr, Evm as RevmEvm, Transaction, TxEnv,
        result::{EVMError, ExecutionResult, HaltReason, InvalidTransaction},
    },
    database::DBErrorMarker,
    handler::{EthFrame, FrameResult, Handler, instructions::EthInstructions},
    inspector::NoOpInspector,
    interpreter::interpreter::EthInterpreter,
    primitives::hardfork::SpecId,
    state::{AccountInfo, EvmState},
};
use std::sync::atomic::Ordering;

/// A read as the transaction saw it; validated by value against the committed state.
#[derive(Debug)]
pub(super) enum Read {
    /// `(nonce, balance, code_hash)`, `None` if the account did not exist.
    Basic(Address, Option<(u64, U256, B256)>),
    Storage(Address, U256, U256),
    /// The recipient of a plain value transfer: only `(nonce, code_hash)` and existence matter,
    /// because the transaction adds to its balance and nothing reads it. If the balance changed
    /// before commit, the credit is re-applied to the new balance instead of re-executing
    /// (pevm's lazy balance updates, Monad's relaxed merge): balance-only conflicts on hot
    /// recipients cost nothing.
    Credit(Address, Option<(u64, B256)>),
}

/// A speculative execution that may be committed if its reads are still valid.
pub(super) struct Speculative {
    pub(super) result: ExecutionResult<HaltReason>,
    /// Without the beneficiary's fee credit: the committing thread adds `reward`.
    pub(super) state: EvmState,
    pub(super) reads: Vec<Read>,
    pub(super) reward: U256,
    /// The receipt with its bloom; the committing thread fills in the cumulative gas.
    pub(super) receipt: ReceiptEnvelope,
}

pub(super) enum Outcome {
    Executed(Box<Speculative>),
    /// Must be re-executed by the committing thread: it touched the beneficiary, read code not
    /// yet committed, hit a storage error, or was invalid (so the error is reported exactly as
    /// the sequential executor reports it).
    Replay,
}

/// Why a speculative execution stopped early. Any of these means [`Outcome::Replay`].
#[derive(Debug, thiserror::Error)]
pub(super) enum Speculation {
    #[error("read the beneficiary")]
    Beneficiary,
    #[error("code not yet committed")]
    MissingCode,
    #[error("base state read failed")]
    Failed,
}
impl DBErrorMarker for Speculation {}

/// revm requires its database to be `Debug`.
impl std::fmt::Debug for WorkerDb<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDb")
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

pub(super) struct WorkerDb<'s, 'a> {
    shared: &'s Shared<'a>,
    tx: usize,
    /// The recipient whose read becomes a [`Read::Credit`], if the transaction is a plain
    /// value transfer.
    credit_to: Option<Address>,
    reads: Vec<Read>,
    reward: U256,
    /// Code is content-addressed, so what one transaction loaded is valid for every other.
    codes: HashMap<B256, Bytecode>,
}

impl WorkerDb<'_, '_> {
    /// The value at `loc` before this transaction: the latest earlier write in the block, else
    /// the pre-execution system calls' write, else the block's starting state.
    fn before(&self, loc: &Loc) -> Option<Val> {
        self.shared
            .mv
            .read(loc, self.tx)
            .or_else(|| self.shared.pre.get(loc).cloned())
    }
}

impl revm::Database for WorkerDb<'_, '_> {
    type Error = Speculation;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, Speculation> {
        // Every transaction credits the beneficiary; a transaction that also *reads* it depends
        // on every earlier one, so it is left to the committing thread.
        if address == self.shared.beneficiary {
            return Err(Speculation::Beneficiary);
        }
        let info = match self.before(&Loc::Basic(address)) {
            Some(Val::Basic(info)) => info,
            Some(Val::Storage(_)) => unreachable!("basic location holds account values"),
            None => self
                .shared
                .base
                .account(address)
                .map_err(|_| Speculation::Failed)?
                .map(revm_account),
        };
        let credit = self.credit_to == Some(address)
            && info.as_ref().is_none_or(|i| i.code_hash == KECCAK_EMPTY);
        self.reads.push(if credit {
            Read::Credit(address, info.as_ref().map(|i| (i.nonce, i.code_hash)))
        } else {
            Read::Basic(
                address,
                info.as_ref().map(|i| (i.nonce, i.balance, i.code_hash)),
            )
        });
        Ok(info)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, Speculation> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::default());
        }
        if let Some(code) = self.codes.get(&code_hash) {
            return Ok(code.clone());
        }
        let code = self
            .shared
            .base
            .code(code_hash)
            .map_err(|_| Speculation::Failed)?
            // Deployed by a transaction of this block: the committing thread knows it.
            .ok_or(Speculation::MissingCode)?;
        let code = Bytecode::new_raw(code);
        self.codes.insert(code_hash, code.clone());
        Ok(code)
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, Speculation> {
        let value = match self.before(&Loc::Storage(address, index)) {
            Some(Val::Storage(value)) => value,
            Some(Val::Basic(_)) => unreachable!("storage location holds slot values"),
            None => self
                .shared
                .base
                .storage(address, index)
                .map_err(|_| Speculation::Failed)?,
        };
        self.reads.push(Read::Storage(address, index, value));
        Ok(value)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, Speculation> {
        // Hashes of earlier blocks do not change within a block: no read to validate.
        self.shared
            .hashes
            .block_hash(number)
            .map_err(|_| Speculation::Failed)
    }
}

type WorkerCtx<'s, 'a> = EthEvmContext<WorkerDb<'s, 'a>>;
pub(super) type WorkerEvm<'s, 'a> = RevmEvm<
    WorkerCtx<'s, 'a>,
    NoOpInspector,
    EthInstructions<EthInterpreter, WorkerCtx<'s, 'a>>,
    PrecompilesMap,
    EthFrame,
>;

/// revm's mainnet handler except that the beneficiary's fee credit is computed, not applied: it
/// is the same expression as `revm::handler::post_execution::reward_beneficiary`, and the
/// committing thread adds it to the beneficiary in block order. Without this every transaction
/// would write the beneficiary and conflict with every other.
struct DeferredReward<'s, 'a>(std::marker::PhantomData<WorkerEvm<'s, 'a>>);

impl<'s, 'a> Handler for DeferredReward<'s, 'a> {
    type Evm = WorkerEvm<'s, 'a>;
    type Error = EVMError<Speculation, InvalidTransaction>;
    type HaltReason = HaltReason;

    fn reward_beneficiary(
        &self,
        evm: &mut Self::Evm,
        exec_result: &mut FrameResult,
    ) -> Result<(), Self::Error> {
        let ctx = &mut evm.ctx;
        let reward = if ctx.cfg().is_fee_charge_disabled() {
            U256::ZERO
        } else {
            let basefee = u128::from(ctx.block().basefee());
            let effective_gas_price = ctx.tx().effective_gas_price(basefee);
            let coinbase_gas_price = if ctx.cfg().spec().is_enabled_in(SpecId::LONDON) {
                effective_gas_price.saturating_sub(basefee)
            } else {
                effective_gas_price
            };
            let gas = exec_result.gas();
            let used = gas.used().saturating_sub(gas.reservoir());
            U256::from(coinbase_gas_price * u128::from(used))
        };
        ctx.db_mut().reward = reward;
        Ok(())
    }
}

/// One thread's speculative executor: a revm instance reused across transactions.
pub(super) struct Speculator<'s, 'a> {
    shared: &'s Shared<'a>,
    evm: WorkerEvm<'s, 'a>,
}

impl<'s, 'a> Speculator<'s, 'a> {
    pub(super) fn new(shared: &'s Shared<'a>) -> Self {
        let db = WorkerDb {
            shared,
            tx: 0,
            credit_to: None,
            reads: Vec::new(),
            reward: U256::ZERO,
            codes: HashMap::default(),
        };
        let evm = EthEvmBuilder::new(db, shared.env.clone())
            .build()
            .into_inner();
        Self { shared, evm }
    }

    /// Takes the next transaction not yet handed out, if any (and the block is still on).
    pub(super) fn take(&self) -> Option<usize> {
        if self.shared.abandoned.load(Ordering::Relaxed) {
            return None;
        }
        let index = self.shared.next_tx.fetch_add(1, Ordering::Relaxed);
        (index < self.shared.txs.len()).then_some(index)
    }

    /// Executes transaction `index` and publishes its writes to the multi-version memory.
    pub(super) fn execute(&mut self, index: usize) -> Outcome {
        let shared = self.shared;
        let tx = &shared.txs[index];
        {
            let db = self.evm.ctx.db_mut();
            db.tx = index;
            db.reads.clear();
            db.reward = U256::ZERO;
            db.credit_to = plain_transfer_recipient(tx, shared.beneficiary);
        }
        self.evm
            .ctx
            .set_tx(TxEnv::from_recovered_tx(tx.tx(), tx.sender()));
        let result = DeferredReward(std::marker::PhantomData).run(&mut self.evm);
        let state = self.evm.finalize();
        let Ok(result) = result else {
            return Outcome::Replay;
        };
        let mut writes = writes_of(&state, shared.beneficiary);
        let db = self.evm.ctx.db_mut();
        if let Some(Read::Credit(to, _)) = db.reads.iter().find(|r| matches!(r, Read::Credit(..))) {
            // A credited balance is re-applied at commit, so what this execution saw is likely
            // stale: later readers of the balance would be validated against the committed
            // value anyway, and a hot recipient's versions would only grow.
            writes.retain(|(loc, _)| *loc != Loc::Basic(*to));
        }
        shared.mv.publish(index, writes);
        let receipt = receipt(tx.tx().tx_type(), &result);
        let db = self.evm.ctx.db_mut();
        Outcome::Executed(Box::new(Speculative {
            result,
            state,
            reads: std::mem::take(&mut db.reads),
            reward: db.reward,
            receipt,
        }))
    }
}

/// The recipient of a transaction that only moves value to an account without code (checked
/// when the account is read): no input, a non-zero value (so the recipient is never left empty,
/// whatever its balance), not the sender, the beneficiary or a precompile, and no EIP-7702
/// authorizations that could give the recipient code.
fn plain_transfer_recipient(tx: &RecoveredTx, beneficiary: Address) -> Option<Address> {
    let envelope = tx.tx();
    let to = envelope.to()?;
    let precompile_range = to.0[..18].iter().all(|b| *b == 0);
    let plain = envelope.input().is_empty()
        && !envelope.value().is_zero()
        && envelope.tx_type() != TxType::Eip7702
        && to != tx.sender()
        && to != beneficiary
        && !precompile_range;
    plain.then_some(to)
}

/// The receipt alloy-evm's `AlloyReceiptBuilder` builds, with the cumulative gas left at zero.
fn receipt(tx_type: TxType, result: &ExecutionResult<HaltReason>) -> ReceiptEnvelope {
    let receipt = alloy_consensus::Receipt {
        status: Eip658Value::Eip658(result.is_success()),
        cumulative_gas_used: 0,
        logs: result.logs().to_vec(),
    }
    .with_bloom();
    ReceiptEnvelope::from_typed(tx_type, receipt)
}

/// A worker thread: executes transactions in block order until none are left or the block is
/// abandoned, storing each outcome and telling the committing thread.
pub(super) fn run(shared: &Shared<'_>, done: crossbeam_channel::Sender<usize>) {
    let mut speculator = Speculator::new(shared);
    while let Some(index) = speculator.take() {
        let outcome = speculator.execute(index);
        *shared.outcomes[index].lock() = Some(outcome);
        if done.send(index).is_err() {
            break;
        }
    }
}
