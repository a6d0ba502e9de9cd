//! The parallel executor: transactions run speculatively on worker threads, each reading the
//! writes of earlier transactions from a multi-version memory, and are validated and committed
//! in block order by the calling thread.
//!
//! This first increment is optimistic concurrency with in-order commit (the Block-STM execution
//! and validation split without its concurrent scheduler):
//!
//! - Workers take transactions in block order and execute each once with revm, through a
//!   `Database` that reads the latest earlier write from [`mv::MvMemory`], else the block's
//!   starting state, and records every account and slot value it read.
//! - The calling thread owns alloy-evm's `EthBlockExecutor` over revm's `State`, exactly as the
//!   sequential executor does: it runs the pre-execution system calls, then for each transaction
//!   in order validates the recorded reads *by value* against the state the block has reached.
//!   If all match, the speculative result is what sequential execution would produce and is
//!   committed as is; otherwise the transaction is re-executed right there, sequentially, and
//!   its writes replace the stale ones for the workers that follow. Withdrawals and the Prague
//!   requests run after the last transaction, again through the same executor. Receipts, gas and
//!   the state changes therefore come from the same code as the sequential executor's.
//! - The beneficiary's fee credit is deferred (a commutative delta added at commit); a
//!   transaction that reads the beneficiary's account any other way is re-executed at commit.
//! - Only the calling thread reads the block's `StateView`, which the `Executor` trait does not
//!   require to be `Sync`: workers ask it for base-state values it did not prefetch.
//!
//! Not yet: ESTIMATE markers and dependency waits (a transaction that reads a location an
//! earlier, still-running transaction writes is simply re-executed at commit), and concurrent
//! validation.

mod mv;
mod worker;

use crate::{
    evm::{BlockHashes, DbError, Hardforks, StateDb, evm_env},
    executor::{
        BlockInput, BlockOutput, ExecError, Executor, InvalidTxPolicy, SequentialExecutor,
        block_output, block_state, execution_ctx, fatal_or_block, parent_hash_for_history,
    },
};
use alloy_consensus::{Transaction, transaction::Recovered};
use alloy_evm::{
    Evm, EvmEnv, EvmFactory,
    block::{BlockExecutionError, BlockExecutor},
    eth::{EthBlockExecutor, EthEvmFactory, EthTxResult, receipt_builder::AlloyReceiptBuilder},
};
use alloy_primitives::{Address, B256, U256, map::HashMap};
use crossbeam_channel::{Receiver, Sender};
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{ChainSpec, RecoveredTx, state::KECCAK_EMPTY};
use parking_lot::Mutex;
use revm::{
    Database,
    bytecode::Bytecode,
    context::{Cfg, result::ResultAndState},
    database::State,
    database_interface::bal::EvmDatabaseError,
    primitives::hardfork::SpecId,
    state::{Account, AccountInfo, EvmState, TransactionId},
};
use std::{
    num::NonZeroUsize,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};
use worker::{Answer, Ask, Outcome, Read, Speculative, ToMain};

/// Blocks with fewer transactions run sequentially: below this, spawning workers and validating
/// costs more than it saves (see BENCHMARKS.md).
pub const PARALLEL_MIN_TXS: usize = 64;

/// Executes a block's transactions on `threads` workers; see the module documentation.
#[derive(Debug, Clone)]
pub struct ParallelExecutor {
    threads: NonZeroUsize,
    min_txs: usize,
}

impl ParallelExecutor {
    pub fn new(threads: NonZeroUsize) -> Self {
        Self {
            threads,
            min_txs: PARALLEL_MIN_TXS,
        }
    }

    /// Runs blocks of at least `min_txs` transactions in parallel (tests use 0 to exercise the
    /// parallel path on small blocks).
    pub fn with_min_txs(mut self, min_txs: usize) -> Self {
        self.min_txs = min_txs;
        self
    }
}

impl Executor for ParallelExecutor {
    fn execute(
        &mut self,
        spec: &ChainSpec,
        input: BlockInput<'_>,
        state: &dyn StateView,
        hashes: &dyn BlockHashes,
    ) -> Result<BlockOutput, ExecError> {
        if input.txs.is_empty() || input.txs.len() < self.min_txs {
            metrics::counter!("kestrel_execution_sequential_fallback_total").increment(1);
            return SequentialExecutor.execute(spec, input, state, hashes);
        }
        execute_parallel(self.threads, spec, input, state, hashes)
    }
}

/// What workers share: read-only inputs, the multi-version memory and the outcome slots.
pub(super) struct Shared<'a> {
    txs: &'a [RecoveredTx],
    env: EvmEnv<SpecId>,
    hashes: &'a dyn BlockHashes,
    beneficiary: Address,
    mv: mv::MvMemory,
    /// Accounts of the senders and recipients, and the recipients' code, read before the workers
    /// start (after the system calls), so most workers never wait for the calling thread.
    accounts: Prefetched,
    codes: HashMap<B256, Bytecode>,
    next_tx: AtomicUsize,
    /// Set when the block is rejected: workers stop taking transactions.
    abandoned: AtomicBool,
    outcomes: Box<[Mutex<Option<Outcome>>]>,
}

type BlockDb<'a> = State<StateDb<'a>>;

/// Accounts read before the workers start, `None` where the account does not exist.
type Prefetched = HashMap<Address, Option<AccountInfo>>;

fn execute_parallel(
    threads: NonZeroUsize,
    spec: &ChainSpec,
    input: BlockInput<'_>,
    state: &dyn StateView,
    hashes: &dyn BlockHashes,
) -> Result<BlockOutput, ExecError> {
    let header = input.header;
    let forks = Hardforks::new(spec);
    let parent_hash = parent_hash_for_history(&forks, header, state, hashes)?;
    let mut db = block_state(state, hashes);
    let env = evm_env(spec, header);
    let gas_limit_cap = env.cfg_env.tx_gas_limit_cap();
    let evm = EthEvmFactory::default().create_evm(&mut db, env.clone());
    let ctx = execution_ctx(&input, parent_hash);
    let mut executor = EthBlockExecutor::new(evm, ctx, forks, AlloyReceiptBuilder::default());
    executor
        .apply_pre_execution_changes()
        .map_err(fatal_or_block)?;

    let (accounts, codes) = prefetch(executor.evm_mut().db_mut(), input.txs, header.beneficiary)?;
    let shared = Shared {
        txs: input.txs,
        env,
        hashes,
        beneficiary: header.beneficiary,
        mv: mv::MvMemory::new(input.txs.len()),
        accounts,
        codes,
        next_tx: AtomicUsize::new(0),
        abandoned: AtomicBool::new(false),
        outcomes: input.txs.iter().map(|_| Mutex::default()).collect(),
    };
    let mut committer = Committer {
        shared: &shared,
        policy: input.policy,
        block_gas_limit: header.gas_limit,
        gas_limit_cap,
        gas_used: 0,
        included: Vec::with_capacity(input.txs.len()),
        dropped: Vec::new(),
        validate_time: Duration::ZERO,
        commit_time: Duration::ZERO,
    };
    let workers = threads.get().min(input.txs.len());
    let started = Instant::now();
    let (to_main, from_workers) = crossbeam_channel::unbounded();
    let committed = std::thread::scope(|scope| {
        let mut answers = Vec::with_capacity(workers);
        for index in 0..workers {
            // One outstanding question per worker: it waits for the answer.
            let (answer_tx, answer_rx) = crossbeam_channel::bounded(1);
            answers.push(answer_tx);
            let (shared, to_main) = (&shared, to_main.clone());
            scope.spawn(move || worker::run(shared, index, to_main, answer_rx));
        }
        drop(to_main);
        let committed = committer.commit_all(&mut executor, &from_workers, &answers);
        if committed.is_err() {
            shared.abandoned.store(true, Ordering::Relaxed);
        }
        // Workers still running may be waiting for an answer: serve them until all have left.
        for message in from_workers.iter() {
            if let ToMain::Ask { worker, ask } = message {
                let answer = serve(executor.evm_mut().db_mut(), ask);
                // A worker that has left no longer needs its answer.
                let _ = answers[worker].send(answer);
            }
        }
        committed
    });
    let execute_time = started.elapsed();
    committed?;

    let finishing = Instant::now();
    let (_evm, result) = executor.finish().map_err(fatal_or_block)?;
    let output = block_output(
        &forks,
        header,
        &mut db,
        result,
        committer.included,
        committer.dropped,
    );
    let commit_time = committer.commit_time + finishing.elapsed();

    let phase = |name: &'static str, time: Duration| {
        metrics::histogram!("kestrel_execution_parallel_phase_seconds", "phase" => name)
            .record(time.as_secs_f64());
    };
    phase(
        "execute",
        execute_time.saturating_sub(committer.validate_time + committer.commit_time),
    );
    phase("validate", committer.validate_time);
    phase("commit", commit_time);
    Ok(output)
}

/// Reads the accounts every transaction certainly loads (sender, recipient) and the recipients'
/// code. The beneficiary is left out: workers must never see it (see [`worker::Speculation`]).
fn prefetch(
    db: &mut BlockDb<'_>,
    txs: &[RecoveredTx],
    beneficiary: Address,
) -> Result<(Prefetched, HashMap<B256, Bytecode>), ExecError> {
    let mut accounts = HashMap::default();
    let mut codes = HashMap::default();
    for tx in txs {
        for address in [Some(tx.sender()), tx.tx().to()].into_iter().flatten() {
            if address == beneficiary || accounts.contains_key(&address) {
                continue;
            }
            let info = db.basic(address).map_err(db_error)?;
            if let Some(info) = &info
                && info.code_hash != KECCAK_EMPTY
                && !codes.contains_key(&info.code_hash)
                && let Some(code) = committed_code(db, info.code_hash)?
            {
                codes.insert(info.code_hash, code);
            }
            accounts.insert(address, info);
        }
    }
    Ok((accounts, codes))
}

/// Code by hash as far as the committed transactions know it, without caching a miss in `State`
/// (the code may be deployed by a transaction not committed yet).
fn committed_code(db: &BlockDb<'_>, code_hash: B256) -> Result<Option<Bytecode>, StorageError> {
    if let Some(code) = db.cache.contracts.get(&code_hash) {
        return Ok(Some(code.clone()));
    }
    Ok(db.database.state.code(code_hash)?.map(Bytecode::new_raw))
}

/// Answers a worker's base-state read from the state the block has reached so far.
fn serve(db: &mut BlockDb<'_>, ask: Ask) -> Answer {
    let answer = match ask {
        Ask::Basic(address) => db.basic(address).map(Answer::Basic).ok(),
        Ask::Storage(address, slot) => db.storage(address, slot).map(Answer::Storage).ok(),
        Ask::Code(code_hash) => committed_code(db, code_hash).map(Answer::Code).ok(),
    };
    // The worker gives up and the committing thread re-executes the transaction, reading the
    // same state itself, so the error is reported from there.
    answer.unwrap_or(Answer::Failed)
}

/// The calling thread's side: validation and commit in block order.
struct Committer<'s, 'a> {
    shared: &'s Shared<'a>,
    policy: InvalidTxPolicy,
    block_gas_limit: u64,
    gas_limit_cap: u64,
    gas_used: u64,
    included: Vec<usize>,
    dropped: Vec<(usize, String)>,
    validate_time: Duration,
    commit_time: Duration,
}

/// alloy-evm's Ethereum block executor over the block's revm `State`, as the sequential
/// executor builds it.
type BlockExec<'e, 'db, 'a> = EthBlockExecutor<
    'e,
    alloy_evm::eth::EthEvm<
        &'db mut BlockDb<'a>,
        revm::inspector::NoOpInspector,
        alloy_evm::precompiles::PrecompilesMap,
    >,
    Hardforks,
    AlloyReceiptBuilder,
>;

impl Committer<'_, '_> {
    /// Commits every transaction in block order, waiting for the workers' outcomes and answering
    /// their questions meanwhile.
    fn commit_all(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        from_workers: &Receiver<ToMain>,
        answers: &[Sender<Answer>],
    ) -> Result<(), ExecError> {
        let txs = self.shared.txs.len();
        let mut done = vec![false; txs];
        for index in 0..txs {
            while !done[index] {
                match from_workers.recv() {
                    Ok(ToMain::Done(finished)) => done[finished] = true,
                    Ok(ToMain::Ask { worker, ask }) => {
                        let answer = serve(executor.evm_mut().db_mut(), ask);
                        answers[worker]
                            .send(answer)
                            .expect("a worker waits for its answer");
                    }
                    Err(_) => panic!("workers left before finishing transaction {index}"),
                }
            }
            let outcome = self.shared.outcomes[index]
                .lock()
                .take()
                .expect("a finished transaction has an outcome");
            self.commit(executor, index, outcome)?;
        }
        Ok(())
    }

    fn commit(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        index: usize,
        outcome: Outcome,
    ) -> Result<(), ExecError> {
        let tx = &self.shared.txs[index];
        // alloy-evm's check before executing a transaction: its gas limit must fit in what the
        // block has left. An optimistic execution does not know the gas used before it.
        let fits =
            tx.tx().gas_limit().min(self.gas_limit_cap) <= self.block_gas_limit - self.gas_used;
        let speculative = match outcome {
            Outcome::Executed(speculative) if fits => {
                let started = Instant::now();
                let valid = reads_still_valid(executor.evm_mut().db_mut(), &speculative.reads)?;
                self.validate_time += started.elapsed();
                if !valid {
                    metrics::counter!("kestrel_execution_validation_failures_total").increment(1);
                }
                valid.then_some(speculative)
            }
            Outcome::Executed(_) | Outcome::Replay => None,
        };
        let started = Instant::now();
        let committed = match speculative {
            Some(speculative) => {
                let Speculative {
                    result,
                    mut state,
                    reward,
                    ..
                } = *speculative;
                credit_beneficiary(
                    executor.evm_mut().db_mut(),
                    &mut state,
                    self.shared.beneficiary,
                    reward,
                )?;
                self.commit_output(executor, index, tx, ResultAndState { result, state });
                Ok(())
            }
            None => self.replay(executor, index, tx),
        };
        self.commit_time += started.elapsed();
        committed
    }

    /// Re-executes a transaction on the calling thread exactly as the sequential executor does,
    /// and publishes its writes for the workers still to run.
    fn replay(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        index: usize,
        tx: &RecoveredTx,
    ) -> Result<(), ExecError> {
        metrics::counter!("kestrel_execution_reexecutions_total").increment(1);
        let recovered = Recovered::new_unchecked(tx.tx(), tx.sender());
        match executor.execute_transaction_without_commit(recovered) {
            Ok(output) => {
                let writes = mv::writes_of(&output.result.state, self.shared.beneficiary);
                self.shared.mv.publish(index, writes);
                self.gas_used += executor.commit_transaction(output).tx_gas_used();
                self.included.push(index);
                Ok(())
            }
            Err(BlockExecutionError::Validation(err)) => {
                // Left out: later transactions must not see what its speculation wrote.
                self.shared.mv.publish(index, Vec::new());
                match self.policy {
                    InvalidTxPolicy::Skip => {
                        self.dropped.push((index, err.to_string()));
                        Ok(())
                    }
                    InvalidTxPolicy::Reject => Err(ExecError::InvalidTx {
                        index,
                        reason: err.into(),
                    }),
                }
            }
            Err(err) => Err(ExecError::Internal(err.to_string())),
        }
    }

    fn commit_output(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        index: usize,
        tx: &RecoveredTx,
        result: ResultAndState,
    ) {
        let output = EthTxResult {
            result,
            blob_gas_used: tx.tx().blob_gas_used().unwrap_or_default(),
            tx_type: tx.tx().tx_type(),
        };
        self.gas_used += executor.commit_transaction(output).tx_gas_used();
        self.included.push(index);
    }
}

/// Whether every value a speculative execution read is still the value in the block's state
/// after the transactions before it. If so, revm (deterministic in what it reads) would produce
/// the same result now.
fn reads_still_valid(db: &mut BlockDb<'_>, reads: &[Read]) -> Result<bool, ExecError> {
    for read in reads {
        let same = match read {
            Read::Basic(address, seen) => {
                let now = db.basic(*address).map_err(db_error)?;
                now.map(|i| (i.nonce, i.balance, i.code_hash)) == *seen
            }
            Read::Storage(address, slot, seen) => {
                db.storage(*address, *slot).map_err(db_error)? == *seen
            }
        };
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

fn db_error(err: EvmDatabaseError<DbError>) -> ExecError {
    match err {
        EvmDatabaseError::Database(err) => ExecError::Storage(err.0),
        EvmDatabaseError::Bal(err) => ExecError::Internal(err.to_string()),
    }
}

/// Adds the deferred fee credit to a speculative result, as revm's `reward_beneficiary` would
/// have: the beneficiary as the block's state has it now, touched, its balance increased unless
/// that overflows.
fn credit_beneficiary(
    db: &mut BlockDb<'_>,
    state: &mut EvmState,
    beneficiary: Address,
    reward: U256,
) -> Result<(), ExecError> {
    assert!(
        !state.contains_key(&beneficiary),
        "a speculative execution that loads the beneficiary is replayed, not committed"
    );
    let mut account = match db.basic(beneficiary).map_err(db_error)? {
        Some(info) => Account::from(info),
        None => Account::new_not_existing(TransactionId::ZERO),
    };
    if let Some(balance) = account.info.balance.checked_add(reward) {
        account.info.balance = balance;
    }
    account.mark_touch();
    state.insert(beneficiary, account);
    Ok(())
}
