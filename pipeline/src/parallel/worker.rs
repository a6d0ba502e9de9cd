//! Speculative execution and validation, the two kinds of Block-STM task: a transaction runs
//! with revm through a `Database` that reads the multi-version memory, records every account
//! and slot value it read, publishes its writes and builds its receipt (bloom included); a
//! validation re-reads those values and aborts the execution if any changed.

use super::{
    Shared,
    mv::{CreditFound, Found, Loc, Val, Write, credited},
    scheduler::Task,
};
use crate::evm::revm_account;
use alloy_consensus::{Eip658Value, ReceiptEnvelope, Transaction as _, TxType};
use alloy_evm::{
    FromRecoveredTx, eth::EthEvmBuilder, eth::EthEvmContext, precompiles::PrecompilesMap,
};
use alloy_primitives::{Address, B256, U256, map::HashMap};
use kestrel_types::{AccountInfo, RecoveredTx, state::KECCAK_EMPTY};
use revm::{
    ExecuteEvm,
    bytecode::Bytecode,
    context::{
        Block, Cfg, ContextSetters, ContextTr, Evm as RevmEvm, Transaction, TxEnv,
        result::{EVMError, ExecutionResult, HaltReason, InvalidTransaction, ResultGas},
    },
    database::DBErrorMarker,
    handler::{EthFrame, FrameResult, Handler, instructions::EthInstructions},
    inspector::NoOpInspector,
    interpreter::interpreter::EthInterpreter,
    primitives::hardfork::SpecId,
    state::{Account, EvmState},
};
use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

/// A value a transaction read. `from_base`: no earlier transaction had written it, so
/// validation need not read the base state again if that is still so.
#[derive(Debug, Clone, Copy)]
pub(super) enum Read {
    Basic {
        address: Address,
        seen: Option<AccountInfo>,
        from_base: bool,
    },
    Storage {
        address: Address,
        slot: U256,
        seen: U256,
        from_base: bool,
    },
    /// The recipient of a plain value transfer: only existence, nonce and code hash matter,
    /// because the transaction adds to its balance and nothing reads it. Balance-only conflicts
    /// on hot recipients then cost nothing (pevm's lazy balance updates, Monad's relaxed merge).
    Credit {
        address: Address,
        seen: Option<(u64, B256)>,
        from_base: bool,
    },
}

/// What a valid execution contributes to the block besides its writes. Its resulting state is
/// not kept: the writes are in the multi-version memory, and keeping a block's worth of revm
/// states costs more (fresh memory for every transaction) than executing them.
pub(super) struct Speculative {
    pub(super) gas: ResultGas,
    /// The receipt with its bloom; the cumulative gas is filled in in block order. Taken out
    /// then, so the rest is freed off the block's path.
    pub(super) receipt: Option<ReceiptEnvelope>,
    /// No account created, self-destructed or cleared, and no code set: the block's final
    /// writes can then be taken from the multi-version memory (see `finish`).
    pub(super) simple: bool,
    /// Credit reads that found an earlier credit (for the metric), counted while the reads are
    /// in cache.
    pub(super) relaxed_merges: u32,
}

/// The latest execution of a transaction.
pub(super) struct Outcome {
    pub(super) reads: Vec<Read>,
    /// `None`: the block is left to the sequential executor: the transaction was invalid (so
    /// the error is reported exactly as the sequential executor reports it), read code deployed
    /// in this block, hit a storage error or overflowed a balance.
    pub(super) speculative: Option<Speculative>,
}

/// Why a speculative execution stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum Speculation {
    #[error("code not yet committed")]
    MissingCode,
    #[error("base state read failed or balance overflow")]
    Failed,
    #[error("read an estimate of transaction {0}")]
    Estimate(usize),
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
    /// The recipient read as a [`Read::Credit`], with the nonce and code hash it keeps.
    credited: Option<(Address, u64, B256)>,
    reads: Vec<Read>,
    /// The values read from the starting state, full accounts included where the read records
    /// less (a transfer's recipient), handed to the multi-version memory with the writes.
    bases: Vec<(Loc, Val)>,
    reward: U256,
    /// Code is content-addressed, so what one transaction loaded is valid for every other.
    codes: HashMap<B256, Bytecode>,
    /// This thread's empty code, given to accounts without code: revm otherwise clones its
    /// static empty bytecode for them (checking the sender, calling an account), and that
    /// reference count's cache line moved between the threads a few times per transaction.
    no_code: Bytecode,
}

impl WorkerDb<'_, '_> {
    fn account(&self, info: AccountInfo) -> revm::state::AccountInfo {
        let mut account = revm_account(info);
        if info.code_hash == KECCAK_EMPTY {
            account.code = Some(self.no_code.clone());
        }
        account
    }
}

/// The account at `address` before the block's transactions.
fn base_account(shared: &Shared<'_>, address: Address) -> Result<Option<AccountInfo>, Speculation> {
    if shared.storage_only.binary_search(&address).is_ok() {
        return Err(Speculation::Failed);
    }
    match shared.pre.get(&Loc::Basic(address)) {
        Some(Val::Basic(info)) => Ok(*info),
        Some(Val::Storage(_)) => unreachable!("account locations hold account values"),
        None => shared
            .base
            .account(address)
            .map_err(|_| Speculation::Failed),
    }
}

/// The slot before the block's transactions.
fn base_storage(shared: &Shared<'_>, address: Address, slot: U256) -> Result<U256, Speculation> {
    match shared.pre.get(&Loc::Storage(address, slot)) {
        Some(Val::Storage(value)) => Ok(*value),
        Some(Val::Basic(_)) => unreachable!("storage locations hold slot values"),
        None => shared
            .base
            .storage(address, slot)
            .map_err(|_| Speculation::Failed),
    }
}

/// The account at `address` as transaction `tx` sees it; `true` if from the base state.
fn read_account(
    shared: &Shared<'_>,
    address: Address,
    tx: usize,
) -> Result<(Option<AccountInfo>, bool), Speculation> {
    account_from(shared, address, shared.mv.read(&Loc::Basic(address), tx))
}

/// The account at `address` given what the multi-version memory has.
fn account_from(
    shared: &Shared<'_>,
    address: Address,
    found: Found,
) -> Result<(Option<AccountInfo>, bool), Speculation> {
    match found {
        Found::Base => Ok((base_account(shared, address)?, true)),
        Found::Val(Val::Basic(info)) => Ok((info, false)),
        Found::BaseCredited(credit) => credited(base_account(shared, address)?, credit)
            .map(|info| (info, false))
            .ok_or(Speculation::Failed),
        Found::Estimate(writer) => Err(Speculation::Estimate(writer)),
        Found::Overflow => Err(Speculation::Failed),
        Found::Val(Val::Storage(_)) => unreachable!("account locations hold account values"),
    }
}

/// The recipient of a plain transfer as transaction `tx` sees it, and whether from the base
/// state. After an earlier credit only nonce and code hash are known: the balance is left at
/// zero, which the transfer's result does not depend on (its credit is applied to the real
/// balance when the block's writes are taken).
fn read_recipient(
    shared: &Shared<'_>,
    address: Address,
    tx: usize,
) -> Result<(Option<AccountInfo>, bool), Speculation> {
    recipient_from(shared, address, shared.mv.read_credit(address, tx))
}

fn recipient_from(
    shared: &Shared<'_>,
    address: Address,
    found: CreditFound,
) -> Result<(Option<AccountInfo>, bool), Speculation> {
    match found {
        CreditFound::Base => Ok((base_account(shared, address)?, true)),
        CreditFound::Val(info) => Ok((info, false)),
        CreditFound::Credited(nonce, code_hash) => Ok((
            Some(AccountInfo {
                nonce,
                balance: U256::ZERO,
                code_hash,
            }),
            false,
        )),
        CreditFound::Estimate(writer) => Err(Speculation::Estimate(writer)),
    }
}

fn read_slot(
    shared: &Shared<'_>,
    address: Address,
    slot: U256,
    tx: usize,
) -> Result<(U256, bool), Speculation> {
    slot_from(
        shared,
        address,
        slot,
        shared.mv.read(&Loc::Storage(address, slot), tx),
    )
}

fn slot_from(
    shared: &Shared<'_>,
    address: Address,
    slot: U256,
    found: Found,
) -> Result<(U256, bool), Speculation> {
    match found {
        Found::Base => Ok((base_storage(shared, address, slot)?, true)),
        Found::Val(Val::Storage(value)) => Ok((value, false)),
        Found::Estimate(writer) => Err(Speculation::Estimate(writer)),
        Found::Val(Val::Basic(_)) | Found::BaseCredited(_) | Found::Overflow => {
            unreachable!("storage locations hold slot values")
        }
    }
}

impl revm::Database for WorkerDb<'_, '_> {
    type Error = Speculation;

    fn basic(&mut self, address: Address) -> Result<Option<revm::state::AccountInfo>, Speculation> {
        let (info, from_base) = if self.credit_to == Some(address) {
            let (info, from_base) = read_recipient(self.shared, address, self.tx)?;
            match info {
                Some(i) if i.code_hash != KECCAK_EMPTY => {
                    // A contract: its code runs, so it is an ordinary read.
                    read_account(self.shared, address, self.tx)?
                }
                _ => {
                    if from_base {
                        self.bases.push((Loc::Basic(address), Val::Basic(info)));
                    }
                    let seen = info.map(|i| (i.nonce, i.code_hash));
                    let (nonce, code_hash) = seen.unwrap_or((0, KECCAK_EMPTY));
                    self.credited = Some((address, nonce, code_hash));
                    self.reads.push(Read::Credit {
                        address,
                        seen,
                        from_base,
                    });
                    return Ok(info.map(|info| self.account(info)));
                }
            }
        } else {
            read_account(self.shared, address, self.tx)?
        };
        if from_base {
            self.bases.push((Loc::Basic(address), Val::Basic(info)));
        }
        self.reads.push(Read::Basic {
            address,
            seen: info,
            from_base,
        });
        Ok(info.map(|info| self.account(info)))
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
            // Deployed by a transaction of this block: left to the sequential executor.
            .ok_or(Speculation::MissingCode)?;
        let code = Bytecode::new_raw(code);
        self.codes.insert(code_hash, code.clone());
        Ok(code)
    }

    fn storage(&mut self, address: Address, slot: U256) -> Result<U256, Speculation> {
        let (seen, from_base) = read_slot(self.shared, address, slot, self.tx)?;
        if from_base {
            self.bases
                .push((Loc::Storage(address, slot), Val::Storage(seen)));
        }
        self.reads.push(Read::Storage {
            address,
            slot,
            seen,
            from_base,
        });
        Ok(seen)
    }

    fn block_hash(&mut self, number: u64) -> Result<B256, Speculation> {
        // Hashes of earlier blocks do not change within a block: no read to validate.
        self.shared
            .hashes
            .block_hash(number)
            .map_err(|_| Speculation::Failed)
    }
}

/// Whether every value in `reads` is still what transaction `tx` would read now (Block-STM's
/// validation, by value: a re-execution that wrote the same value does not invalidate).
pub(super) fn still_valid(shared: &Shared<'_>, tx: usize, reads: &[Read]) -> bool {
    reads.iter().all(|read| match *read {
        Read::Basic {
            address,
            seen,
            from_base,
        } => match shared.mv.read(&Loc::Basic(address), tx) {
            Found::Base if from_base => true,
            found => account_from(shared, address, found).is_ok_and(|(now, _)| now == seen),
        },
        Read::Storage {
            address,
            slot,
            seen,
            from_base,
        } => match shared.mv.read(&Loc::Storage(address, slot), tx) {
            Found::Base if from_base => true,
            found => slot_from(shared, address, slot, found).is_ok_and(|(now, _)| now == seen),
        },
        Read::Credit {
            address,
            seen,
            from_base,
        } => match shared.mv.read_credit(address, tx) {
            CreditFound::Base if from_base => true,
            found => recipient_from(shared, address, found)
                .is_ok_and(|(now, _)| now.map(|i| (i.nonce, i.code_hash)) == seen),
        },
    })
}

type WorkerCtx<'s, 'a> = EthEvmContext<WorkerDb<'s, 'a>>;
pub(super) type WorkerEvm<'s, 'a> = RevmEvm<
    WorkerCtx<'s, 'a>,
    NoOpInspector,
    EthInstructions<EthInterpreter, WorkerCtx<'s, 'a>>,
    PrecompilesMap,
    EthFrame,
>;

/// revm's mainnet handler except that the beneficiary's fee is computed, not applied: it is the
/// same expression as `revm::handler::post_execution::reward_beneficiary`, and is published as
/// the transaction's fee ([`beneficiary_write`]). Without this every transaction would read and
/// write the beneficiary and conflict with every other.
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

/// What a transaction leaves at the beneficiary.
enum Reward {
    /// Its fee alone, published beside its writes (so that the fees of a block do not make
    /// every transaction depend on the one before).
    Fee(U256),
    /// It touched the beneficiary itself: the account it left plus its fee, as revm's
    /// `reward_beneficiary` and `State` make it (cleared if touched while empty), and whether
    /// that is simple.
    Account(Write, bool),
}

fn beneficiary_write(touched: Option<&Account>, fee: U256) -> Result<Reward, Speculation> {
    let Some(account) = touched.filter(|a| a.is_touched()) else {
        return Ok(Reward::Fee(fee));
    };
    let info = AccountInfo {
        nonce: account.info.nonce,
        balance: account
            .info
            .balance
            .checked_add(fee)
            .ok_or(Speculation::Failed)?,
        code_hash: account.info.code_hash,
    };
    let gone = account.is_selfdestructed() || info.is_empty();
    let simple = !gone && !account.is_created();
    Ok(Reward::Account(
        Write::Val(Val::Basic((!gone).then_some(info))),
        simple,
    ))
}

/// One thread's side of the block: a revm instance reused across its transactions.
pub(super) struct Speculator<'s, 'a> {
    shared: &'s Shared<'a>,
    evm: WorkerEvm<'s, 'a>,
    /// Reused for every transaction's writes.
    writes: Vec<(Loc, Write)>,
    pub(super) counts: Counts,
}

/// What one thread did, for the block's stats and metrics.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) reexecutions: usize,
    pub(super) validation_failures: usize,
    pub(super) dependency_waits: usize,
    pub(super) validate_time: Duration,
}

impl Counts {
    pub(super) fn add(&mut self, other: &Self) {
        self.reexecutions += other.reexecutions;
        self.validation_failures += other.validation_failures;
        self.dependency_waits += other.dependency_waits;
        self.validate_time += other.validate_time;
    }
}

/// Empty polls of the scheduler before a thread gives up its core. Tasks usually appear within
/// microseconds (the other thread finishing a transaction); yielding sooner on a busy machine
/// loses the core for a whole time slice.
const IDLE_SPINS: u32 = 1 << 12;

/// How an execution ended.
enum Executed {
    /// Published, with Block-STM's `wrote_new_location`.
    Done(bool),
    /// Read an estimate of this transaction.
    Blocked(usize),
}

impl<'s, 'a> Speculator<'s, 'a> {
    pub(super) fn new(shared: &'s Shared<'a>) -> Self {
        let db = WorkerDb {
            shared,
            tx: 0,
            credit_to: None,
            credited: None,
            reads: Vec::new(),
            bases: Vec::new(),
            reward: U256::ZERO,
            codes: HashMap::default(),
            no_code: Bytecode::new_raw(Default::default()),
        };
        let evm = EthEvmBuilder::new(db, shared.env.clone())
            .build()
            .into_inner();
        Self {
            shared,
            evm,
            writes: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Runs tasks until the block is done or abandoned.
    pub(super) fn run(&mut self) {
        let shared = self.shared;
        let mut task = None;
        let mut idle = 0u32;
        while !shared.scheduler.done() && !shared.abandoned.load(Ordering::Relaxed) {
            task = match task.take().or_else(|| shared.scheduler.next_task()) {
                Some(Task::Execute(tx, incarnation)) => {
                    idle = 0;
                    self.execute_task(tx, incarnation)
                }
                Some(Task::Validate(tx, incarnation)) => {
                    idle = 0;
                    self.validate_task(tx, incarnation)
                }
                None => {
                    // Waiting for another thread's task to end: on a shared machine, give up
                    // the core after a short spin.
                    idle += 1;
                    if idle < IDLE_SPINS {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    None
                }
            };
        }
    }

    fn execute_task(&mut self, tx: usize, incarnation: usize) -> Option<Task> {
        let shared = self.shared;
        if incarnation > 0 {
            self.counts.reexecutions += 1;
        }
        loop {
            match self.execute(tx) {
                Executed::Done(wrote_new_location) => {
                    return shared
                        .scheduler
                        .finish_execution(tx, incarnation, wrote_new_location);
                }
                Executed::Blocked(writer) => {
                    if shared.scheduler.add_dependency(tx, writer) {
                        self.counts.dependency_waits += 1;
                        shared.record_abort();
                        return None;
                    }
                    // The writer finished meanwhile: its value is there now.
                }
            }
        }
    }

    fn validate_task(&mut self, tx: usize, incarnation: usize) -> Option<Task> {
        let shared = self.shared;
        let started = Instant::now();
        let valid = {
            let outcome = shared.outcomes[tx].lock();
            let outcome = outcome
                .as_ref()
                .expect("an executed transaction has an outcome");
            still_valid(shared, tx, &outcome.reads)
        };
        let aborted = !valid && shared.scheduler.try_validation_abort(tx, incarnation);
        if aborted {
            shared.mv.mark_estimates(tx);
            self.counts.validation_failures += 1;
            shared.record_abort();
        }
        self.counts.validate_time += started.elapsed();
        shared.scheduler.finish_validation(tx, aborted)
    }

    /// Executes transaction `tx` and publishes its writes and outcome.
    fn execute(&mut self, index: usize) -> Executed {
        let shared = self.shared;
        let tx = &shared.txs[index];
        {
            let db = self.evm.ctx.db_mut();
            db.tx = index;
            db.reads.clear();
            db.bases.clear();
            db.reward = U256::ZERO;
            db.credited = None;
            db.credit_to = plain_transfer_recipient(tx, shared.beneficiary);
        }
        self.evm
            .ctx
            .set_tx(TxEnv::from_recovered_tx(tx.tx(), tx.sender()));
        let result = DeferredReward(std::marker::PhantomData).run(&mut self.evm);
        let state = self.evm.finalize();
        let db = self.evm.ctx.db_mut();
        let mut fee = None;
        let speculative = match result {
            Err(EVMError::Database(Speculation::Estimate(writer))) => {
                return Executed::Blocked(writer);
            }
            Err(_) => None,
            Ok(result) => {
                let beneficiary = shared.beneficiary;
                // EIP-7702 authorizations set code on accounts that were not created.
                let mut simple = writes_of(&state, beneficiary, &db.reads, &mut self.writes)
                    && tx.tx().tx_type() != TxType::Eip7702;
                if let Some((to, nonce, code_hash)) = db.credited {
                    // Published as a credit, so later transfers to the same account do not
                    // conflict with this one.
                    let value = tx.tx().value();
                    for (loc, write) in &mut self.writes {
                        if *loc == Loc::Basic(to) {
                            *write = Write::Credit {
                                value,
                                nonce,
                                code_hash,
                            };
                        }
                    }
                }
                let reward = beneficiary_write(state.get(&beneficiary), db.reward);
                match reward {
                    Ok(Reward::Fee(value)) => fee = Some(value),
                    Ok(Reward::Account(write, account_simple)) => {
                        simple &= account_simple;
                        self.writes.push((Loc::Basic(beneficiary), write));
                    }
                    Err(_) => simple = false,
                }
                let gas = *result.gas();
                let tx_type = tx.tx().tx_type();
                let relaxed_merges = db
                    .reads
                    .iter()
                    .filter(|r| {
                        matches!(
                            r,
                            Read::Credit {
                                from_base: false,
                                ..
                            }
                        )
                    })
                    .count() as u32;
                reward.ok().map(|_| Speculative {
                    gas,
                    receipt: Some(receipt(tx_type, result)),
                    simple,
                    relaxed_merges,
                })
            }
        };
        // An execution that failed writes nothing: later transactions must not see what an
        // earlier incarnation wrote.
        if speculative.is_none() {
            self.writes.clear();
            fee = None;
        }
        let wrote_new_location = shared.mv.publish(index, &mut self.writes, fee, &db.bases);
        // The next transaction likely reads about as much: sized so it does not regrow.
        let capacity = db.reads.len();
        let outcome = Outcome {
            reads: std::mem::replace(&mut db.reads, Vec::with_capacity(capacity)),
            speculative,
        };
        *shared.outcomes[index].lock() = Some(outcome);
        Executed::Done(wrote_new_location)
    }
}

/// Appends what a transaction's resulting state means for later transactions to `writes`: the
/// accounts it changed (as revm's `State` will see them after commit: self-destructed or empty
/// touched accounts no longer exist) and the storage slots it changed. An account touched but
/// left as it was read is not written (a token contract every transfer calls would otherwise
/// make every transfer depend on the one before), nor is `skip` (the beneficiary, see
/// [`beneficiary_write`]). Returns whether no account was created, self-destructed or cleared.
fn writes_of(
    state: &EvmState,
    skip: Address,
    reads: &[Read],
    writes: &mut Vec<(Loc, Write)>,
) -> bool {
    writes.clear();
    let mut simple = true;
    for (address, account) in state {
        if *address == skip || !account.is_touched() {
            continue;
        }
        let created = account.is_created();
        let gone = account.is_selfdestructed() || (account.is_empty() && !created);
        simple &= !gone && !created;
        let info = (!gone).then_some(AccountInfo {
            nonce: account.info.nonce,
            balance: account.info.balance,
            code_hash: account.info.code_hash,
        });
        let unchanged = !created
            && info.is_some()
            && reads.iter().any(|read| {
                matches!(read, Read::Basic { address: a, seen, .. } if a == address && *seen == info)
            });
        if !unchanged {
            writes.push((Loc::Basic(*address), Write::Val(Val::Basic(info))));
        }
        for (slot, value) in account.changed_storage_slots() {
            writes.push((
                Loc::Storage(*address, *slot),
                Write::Val(Val::Storage(value.present_value)),
            ));
        }
    }
    simple
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
fn receipt(tx_type: TxType, result: ExecutionResult<HaltReason>) -> ReceiptEnvelope {
    let receipt = alloy_consensus::Receipt {
        status: Eip658Value::Eip658(result.is_success()),
        cumulative_gas_used: 0,
        logs: result.into_logs(),
    }
    .with_bloom();
    ReceiptEnvelope::from_typed(tx_type, receipt)
}
