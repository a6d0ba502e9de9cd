//! A worker: executes transactions speculatively with revm, reading through the multi-version
//! memory, and records what it read so the committing thread can validate it.

use super::{
    Shared,
    mv::{Loc, Val, writes_of},
};
use alloy_evm::{
    FromRecoveredTx, eth::EthEvmBuilder, eth::EthEvmContext, precompiles::PrecompilesMap,
};
use alloy_primitives::{Address, B256, U256, map::HashMap};
use crossbeam_channel::{Receiver, Sender};
use kestrel_types::state::KECCAK_EMPTY;
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
}

/// A base-state read the worker cannot answer itself. Only the committing thread may touch the
/// block's `StateView` (the `Executor` trait does not require it to be `Sync`).
#[derive(Debug)]
pub(super) enum Ask {
    Basic(Address),
    Storage(Address, U256),
    Code(B256),
}

#[derive(Debug)]
pub(super) enum Answer {
    Basic(Option<AccountInfo>),
    Storage(U256),
    /// `None`: the code is not known yet (deployed by a transaction not yet committed).
    Code(Option<Bytecode>),
    Failed,
}

pub(super) enum ToMain {
    Ask { worker: usize, ask: Ask },
    Done(usize),
}

/// A speculative execution that may be committed if its reads are still valid.
pub(super) struct Speculative {
    pub(super) result: ExecutionResult<HaltReason>,
    /// Without the beneficiary's fee credit: the committing thread adds `reward`.
    pub(super) state: EvmState,
    pub(super) reads: Vec<Read>,
    pub(super) reward: U256,
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

struct WorkerDb<'s, 'a> {
    shared: &'s Shared<'a>,
    worker: usize,
    to_main: Sender<ToMain>,
    answers: Receiver<Answer>,
    tx: usize,
    reads: Vec<Read>,
    reward: U256,
    /// Code is content-addressed, so what one transaction loaded is valid for every other.
    codes: HashMap<B256, Bytecode>,
}

impl WorkerDb<'_, '_> {
    fn ask(&self, ask: Ask) -> Result<Answer, Speculation> {
        let worker = self.worker;
        self.to_main
            .send(ToMain::Ask { worker, ask })
            .map_err(|_| Speculation::Failed)?;
        match self.answers.recv() {
            Ok(Answer::Failed) | Err(_) => Err(Speculation::Failed),
            Ok(answer) => Ok(answer),
        }
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
        let info = match self.shared.mv.read(&Loc::Basic(address), self.tx) {
            Some(Val::Basic(info)) => info,
            Some(Val::Storage(_)) => unreachable!("basic location holds account values"),
            None => match self.shared.accounts.get(&address) {
                Some(info) => info.clone(),
                None => match self.ask(Ask::Basic(address))? {
                    Answer::Basic(info) => info,
                    answer => unreachable!("asked for an account, got {answer:?}"),
                },
            },
        };
        let seen = info.as_ref().map(|i| (i.nonce, i.balance, i.code_hash));
        self.reads.push(Read::Basic(address, seen));
        Ok(info)
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, Speculation> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Bytecode::default());
        }
        if let Some(code) = self
            .codes
            .get(&code_hash)
            .or_else(|| self.shared.codes.get(&code_hash))
        {
            return Ok(code.clone());
        }
        match self.ask(Ask::Code(code_hash))? {
            Answer::Code(Some(code)) => {
                self.codes.insert(code_hash, code.clone());
                Ok(code)
            }
            Answer::Code(None) => Err(Speculation::MissingCode),
            answer => unreachable!("asked for code, got {answer:?}"),
        }
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, Speculation> {
        let value = match self.shared.mv.read(&Loc::Storage(address, index), self.tx) {
            Some(Val::Storage(value)) => value,
            Some(Val::Basic(_)) => unreachable!("storage location holds slot values"),
            None => match self.ask(Ask::Storage(address, index))? {
                Answer::Storage(value) => value,
                answer => unreachable!("asked for storage, got {answer:?}"),
            },
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
type WorkerEvm<'s, 'a> = RevmEvm<
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

/// Takes transactions in block order until none are left (or the block is abandoned), executing
/// each once.
pub(super) fn run(
    shared: &Shared<'_>,
    worker: usize,
    to_main: Sender<ToMain>,
    answers: Receiver<Answer>,
) {
    let db = WorkerDb {
        shared,
        worker,
        to_main: to_main.clone(),
        answers,
        tx: 0,
        reads: Vec::new(),
        reward: U256::ZERO,
        codes: HashMap::default(),
    };
    let mut evm: WorkerEvm<'_, '_> = EthEvmBuilder::new(db, shared.env.clone())
        .build()
        .into_inner();
    let mut handler = DeferredReward(std::marker::PhantomData);
    while !shared.abandoned.load(Ordering::Relaxed) {
        let index = shared.next_tx.fetch_add(1, Ordering::Relaxed);
        let Some(tx) = shared.txs.get(index) else {
            break;
        };
        {
            let db = evm.ctx.db_mut();
            db.tx = index;
            db.reads.clear();
            db.reward = U256::ZERO;
        }
        evm.ctx
            .set_tx(TxEnv::from_recovered_tx(tx.tx(), tx.sender()));
        let result = handler.run(&mut evm);
        let state = evm.finalize();
        let outcome = match result {
            Ok(result) => {
                shared
                    .mv
                    .publish(index, writes_of(&state, shared.beneficiary));
                let db = evm.ctx.db_mut();
                Outcome::Executed(Box::new(Speculative {
                    result,
                    state,
                    reads: std::mem::take(&mut db.reads),
                    reward: db.reward,
                }))
            }
            Err(_) => Outcome::Replay,
        };
        *shared.outcomes[index].lock() = Some(outcome);
        if to_main.send(ToMain::Done(index)).is_err() {
            break;
        }
    }
}
