//! The parallel executor: transactions run speculatively on `threads` threads, each reading
//! the writes of earlier transactions from a multi-version memory, and are validated and
//! committed in block order by the calling thread.
//!
//! Optimistic concurrency with in-order commit (Block-STM's execution/validation split; the
//! committing thread is Block-STM's ordered commit, and re-executes what fails validation once
//! its dependencies are committed instead of spinning on them):
//!
//! - Threads take transactions in block order and execute each once with revm, through a
//!   `Database` that reads the latest earlier write from [`mv::MvMemory`], else what the
//!   pre-execution system calls wrote, else the block's starting `StateView` (read directly:
//!   `StateView` is `Sync`), and records every account and slot value it read. They also build
//!   the receipt (bloom included, a third of a swap's sequential cost).
//! - The calling thread owns alloy-evm's `EthBlockExecutor` over revm's `State`, exactly as the
//!   sequential executor does: it runs the pre-execution system calls, then for each transaction
//!   in order validates the recorded reads *by value* against the state the block has reached.
//!   If all match, the speculative result is what sequential execution would produce and is
//!   committed as is; otherwise the transaction is re-executed right there, sequentially, and
//!   its writes replace the stale ones for the threads that follow. While the next transaction
//!   to commit is still running elsewhere, the calling thread speculates too. Withdrawals and the
//!   Prague requests run after the last transaction through the same executor, so receipts, gas
//!   and state changes come from the same code as the sequential executor's.
//! - Hot spots: the beneficiary's fee credit is deferred (summed, and added before anything that
//!   may read the beneficiary and at the end); a transaction that reads the beneficiary is
//!   re-executed at commit. The recipient of a plain value transfer is validated on existence,
//!   nonce and code only, and its credit re-applied to the current balance (relaxed merge).
//! - Adaptive: blocks under [`PARALLEL_MIN_TXS`] run sequentially, and a block whose commits
//!   re-execute more than half of a window of [`ADAPT_WINDOW`] transactions continues
//!   sequentially (a contended block would otherwise pay for speculation and re-execution).

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
    eth::{EthBlockExecutor, EthEvmFactory, receipt_builder::AlloyReceiptBuilder},
};
use alloy_hardforks::EthereumHardforks;
use alloy_primitives::{Address, U256, map::HashMap};
use crossbeam_channel::Receiver;
use kestrel_storage::StateView;
use kestrel_types::{ChainSpec, RecoveredTx};
use mv::{Loc, MvMemory, Val};
use parking_lot::Mutex;
use revm::{
    Database, DatabaseCommit,
    context::Cfg,
    database::State,
    database_interface::bal::EvmDatabaseError,
    primitives::hardfork::SpecId,
    state::{Account, EvmState, TransactionId},
};
use std::{
    num::NonZeroUsize,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};
use worker::{Outcome, Read, Speculative, Speculator};

/// Blocks with fewer transactions run sequentially: below this, spawning workers and validating
/// costs more than it saves (see BENCHMARKS.md).
pub const PARALLEL_MIN_TXS: usize = 64;

/// Executes a block's transactions on `threads` workers; see the module documentation.
#[derive(Debug, Clone)]
pub struct ParallelExecutor {
    threads: NonZeroUsize,
    min_txs: usize,
    last_block: Option<BlockStats>,
}

/// What the parallel executor did with the last block it executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStats {
    pub txs: usize,
    /// Executions beyond the first of each transaction.
    pub reexecutions: usize,
    /// The block (or its rest, after too many re-executions) ran sequentially.
    pub sequential: bool,
}

impl ParallelExecutor {
    pub fn new(threads: NonZeroUsize) -> Self {
        Self {
            threads,
            min_txs: PARALLEL_MIN_TXS,
            last_block: None,
        }
    }

    /// Runs blocks of at least `min_txs` transactions in parallel (tests use 0 to exercise the
    /// parallel path on small blocks).
    pub fn with_min_txs(mut self, min_txs: usize) -> Self {
        self.min_txs = min_txs;
        self
    }

    /// What happened to the last block executed (`None` before the first, or if it failed).
    pub fn last_block(&self) -> Option<BlockStats> {
        self.last_block
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
        self.last_block = None;
        let txs = input.txs.len();
        if txs == 0 || txs < self.min_txs {
            metrics::counter!("kestrel_execution_sequential_fallback_total", "reason" => "small")
                .increment(1);
            let output = SequentialExecutor.execute(spec, input, state, hashes)?;
            self.last_block = Some(BlockStats {
                txs,
                reexecutions: 0,
                sequential: true,
            });
            return Ok(output);
        }
        let (output, stats) = execute_parallel(self.threads, spec, input, state, hashes)?;
        self.last_block = Some(stats);
        Ok(output)
    }
}

/// What the threads share: read-only inputs, the multi-version memory and the outcome slots.
pub(super) struct Shared<'a> {
    txs: &'a [RecoveredTx],
    env: EvmEnv<SpecId>,
    /// The block's starting state; workers read it directly.
    base: &'a dyn StateView,
    hashes: &'a dyn BlockHashes,
    /// What the pre-execution system calls wrote (beacon roots, block hash history).
    pre: HashMap<Loc, Val>,
    beneficiary: Address,
    mv: MvMemory,
    next_tx: AtomicUsize,
    /// Set when the rest of the block runs sequentially (or the block is rejected): workers stop
    /// taking transactions.
    abandoned: AtomicBool,
    outcomes: Box<[Mutex<Option<Outcome>>]>,
}

type BlockDb<'a> = State<StateDb<'a>>;

/// Commits are judged in windows of this many transactions ...
const ADAPT_WINDOW: usize = 32;
/// ... and if more than this many of a window had to be re-executed, parallel execution costs
/// more than it saves (every re-execution is sequential work after speculative work): the rest of
/// the block runs sequentially.
const ADAPT_MAX_REEXECUTIONS: usize = ADAPT_WINDOW / 2;

fn execute_parallel(
    threads: NonZeroUsize,
    spec: &ChainSpec,
    input: BlockInput<'_>,
    state: &dyn StateView,
    hashes: &dyn BlockHashes,
) -> Result<(BlockOutput, BlockStats), ExecError> {
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

    let shared = Shared {
        txs: input.txs,
        env,
        base: state,
        hashes,
        pre: pre_execution_writes(executor.evm_mut().db_mut()),
        beneficiary: header.beneficiary,
        mv: MvMemory::new(input.txs.len()),
        next_tx: AtomicUsize::new(0),
        abandoned: AtomicBool::new(false),
        outcomes: input.txs.iter().map(|_| Mutex::default()).collect(),
    };
    let mut committer = Committer {
        shared: &shared,
        policy: input.policy,
        block_gas_limit: header.gas_limit,
        gas_limit_cap,
        cancun: forks.is_cancun_active_at_timestamp(header.timestamp),
        gas_used: 0,
        included: Vec::with_capacity(input.txs.len()),
        dropped: Vec::new(),
        reward: None,
        sequential: false,
        window_reexecutions: 0,
        stats: BlockStats {
            txs: input.txs.len(),
            ..BlockStats::default()
        },
        validate_time: Duration::ZERO,
        commit_time: Duration::ZERO,
    };
    // The calling thread is one of the `threads`: it commits, and speculates while it waits.
    let workers = threads.get().min(input.txs.len()) - 1;
    let started = Instant::now();
    let committed = std::thread::scope(|scope| {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for _ in 0..workers {
            let (shared, done_tx) = (&shared, done_tx.clone());
            scope.spawn(move || worker::run(shared, done_tx));
        }
        drop(done_tx);
        let committed = committer.commit_all(&mut executor, &done_rx);
        // Workers still running finish the transaction in hand and leave.
        shared.abandoned.store(true, Ordering::Relaxed);
        committed
    });
    let execute_time = started.elapsed();
    let Committer {
        included,
        dropped,
        stats,
        validate_time,
        commit_time,
        ..
    } = committer;
    // Freeing a block's worth of speculative writes takes a while: not on the block's path.
    let Shared { mv, outcomes, .. } = shared;
    std::thread::spawn(move || drop((mv, outcomes)));
    committed?;

    let finishing = Instant::now();
    let (_evm, result) = executor.finish().map_err(fatal_or_block)?;
    let output = block_output(&forks, header, &mut db, result, included, dropped);
    let finish_time = finishing.elapsed();

    let phase = |name: &'static str, time: Duration| {
        metrics::histogram!("kestrel_execution_parallel_phase_seconds", "phase" => name)
            .record(time.as_secs_f64());
    };
    phase(
        "execute",
        execute_time.saturating_sub(validate_time + commit_time),
    );
    phase("validate", validate_time);
    phase("commit", commit_time + finish_time);
    Ok((output, stats))
}

/// The accounts and slots the pre-execution system calls wrote, as the transactions must see
/// them.
fn pre_execution_writes(db: &BlockDb<'_>) -> HashMap<Loc, Val> {
    let mut pre = HashMap::default();
    let Some(transitions) = &db.transition_state else {
        return pre;
    };
    for (address, account) in &transitions.transitions {
        pre.insert(Loc::Basic(*address), Val::Basic(account.info.clone()));
        for (slot, value) in &account.storage {
            pre.insert(
                Loc::Storage(*address, *slot),
                Val::Storage(value.present_value),
            );
        }
    }
    pre
}

/// The calling thread's side: validation and commit in block order.
struct Committer<'s, 'a> {
    shared: &'s Shared<'a>,
    policy: InvalidTxPolicy,
    block_gas_limit: u64,
    gas_limit_cap: u64,
    cancun: bool,
    gas_used: u64,
    included: Vec<usize>,
    dropped: Vec<(usize, String)>,
    /// Fee credits of committed speculative transactions not yet added to the beneficiary
    /// (`None`: nothing committed since the last flush). Added in one write before anything
    /// that may read the beneficiary, and at the end: the sum is the same.
    reward: Option<U256>,
    /// The rest of the block runs sequentially (too many re-executions).
    sequential: bool,
    window_reexecutions: usize,
    stats: BlockStats,
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
    /// Commits every transaction in block order, speculating on transactions not yet taken
    /// while the next one to commit is still running elsewhere.
    fn commit_all(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        done_rx: &Receiver<usize>,
    ) -> Result<(), ExecError> {
        let shared = self.shared;
        let txs = shared.txs.len();
        let mut done = vec![false; txs];
        let mut speculator = Speculator::new(shared);
        for index in 0..txs {
            if self.sequential {
                self.replay(executor, index)?;
                continue;
            }
            while !done[index] {
                for finished in done_rx.try_iter() {
                    done[finished] = true;
                }
                if done[index] {
                    break;
                }
                if let Some(next) = speculator.take() {
                    let outcome = speculator.execute(next);
                    *shared.outcomes[next].lock() = Some(outcome);
                    done[next] = true;
                } else {
                    let finished = done_rx
                        .recv()
                        .unwrap_or_else(|_| panic!("workers left before transaction {index}"));
                    done[finished] = true;
                }
            }
            let outcome = shared.outcomes[index]
                .lock()
                .take()
                .expect("a finished transaction has an outcome");
            self.commit(executor, index, outcome)?;
            self.adapt(index);
        }
        self.flush_reward(executor)
    }

    /// Switches the rest of the block to sequential execution when the last window of commits
    /// re-executed too much.
    fn adapt(&mut self, index: usize) {
        if !(index + 1).is_multiple_of(ADAPT_WINDOW) {
            return;
        }
        if self.window_reexecutions > ADAPT_MAX_REEXECUTIONS {
            self.sequential = true;
            self.stats.sequential = true;
            self.shared.abandoned.store(true, Ordering::Relaxed);
            metrics::counter!("kestrel_execution_sequential_fallback_total", "reason" => "conflicts")
                .increment(1);
        }
        self.window_reexecutions = 0;
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
        let Outcome::Executed(speculative) = outcome else {
            return self.replay(executor, index);
        };
        if !fits {
            return self.replay(executor, index);
        }
        let Speculative {
            result,
            mut state,
            reads,
            reward,
            mut receipt,
        } = *speculative;
        let started = Instant::now();
        let validity = validate(
            executor.evm_mut().db_mut(),
            &reads,
            &mut state,
            tx.tx().value(),
        )?;
        self.validate_time += started.elapsed();
        match validity {
            Validity::Stale => {
                metrics::counter!("kestrel_execution_validation_failures_total").increment(1);
                return self.replay(executor, index);
            }
            Validity::Patched => {
                metrics::counter!("kestrel_execution_relaxed_merges_total").increment(1);
            }
            Validity::Valid => {}
        }
        let started = Instant::now();
        *self.reward.get_or_insert(U256::ZERO) += reward;
        // What alloy-evm's `commit_transaction` does, with the receipt built by the speculating
        // thread.
        let gas = result.gas();
        executor.block_regular_gas_used += gas.block_regular_gas_used();
        executor.block_state_gas_used += gas.block_state_gas_used();
        executor.cumulative_tx_gas_used += gas.tx_gas_used();
        if self.cancun {
            let blob_gas = tx.tx().blob_gas_used().unwrap_or_default();
            executor.blob_gas_used = executor.blob_gas_used.saturating_add(blob_gas);
        }
        receipt
            .as_receipt_with_bloom_mut()
            .expect("Ethereum receipts have a bloom")
            .receipt
            .cumulative_gas_used = executor.cumulative_tx_gas_used;
        executor.receipts.push(receipt);
        executor.evm_mut().db_mut().commit(state);
        self.gas_used += gas.tx_gas_used();
        self.included.push(index);
        self.commit_time += started.elapsed();
        Ok(())
    }

    /// Adds the deferred fee credits to the beneficiary, as revm's `reward_beneficiary` would
    /// have one by one: the beneficiary touched, its balance increased unless that overflows.
    fn flush_reward(&mut self, executor: &mut BlockExec<'_, '_, '_>) -> Result<(), ExecError> {
        let Some(reward) = self.reward.take() else {
            return Ok(());
        };
        let beneficiary = self.shared.beneficiary;
        let db = executor.evm_mut().db_mut();
        let mut account = match db.basic(beneficiary).map_err(db_error)? {
            Some(info) => Account::from(info),
            None => Account::new_not_existing(TransactionId::ZERO),
        };
        if let Some(balance) = account.info.balance.checked_add(reward) {
            account.info.balance = balance;
        }
        account.mark_touch();
        db.commit(std::iter::once((beneficiary, account)).collect());
        Ok(())
    }

    /// Re-executes a transaction on the calling thread exactly as the sequential executor does,
    /// and publishes its writes for the transactions still to speculate.
    fn replay(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        index: usize,
    ) -> Result<(), ExecError> {
        let started = Instant::now();
        let replayed = self.replay_inner(executor, index);
        self.commit_time += started.elapsed();
        replayed
    }

    fn replay_inner(
        &mut self,
        executor: &mut BlockExec<'_, '_, '_>,
        index: usize,
    ) -> Result<(), ExecError> {
        // The replayed transaction may read the beneficiary.
        self.flush_reward(executor)?;
        if !self.sequential {
            metrics::counter!("kestrel_execution_reexecutions_total").increment(1);
            self.stats.reexecutions += 1;
            self.window_reexecutions += 1;
        }
        let tx = &self.shared.txs[index];
        let recovered = Recovered::new_unchecked(tx.tx(), tx.sender());
        match executor.execute_transaction_without_commit(recovered) {
            Ok(output) => {
                if !self.sequential {
                    let writes = mv::writes_of(&output.result.state, self.shared.beneficiary);
                    self.shared.mv.publish(index, writes);
                }
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
}

enum Validity {
    /// Every read is what the block's state holds now: the speculative result is exactly what
    /// sequential execution would produce.
    Valid,
    /// Valid after re-applying a plain transfer's credit to the recipient's current balance.
    Patched,
    /// Must be re-executed.
    Stale,
}

/// Checks every value a speculative execution read against the block's state after the
/// transactions before it. revm is deterministic in what it reads, so if all match it would
/// produce the same result now. A [`Read::Credit`] only needs the recipient's existence, nonce
/// and code to match: its balance in `state` is then set to the current balance plus `value`.
fn validate(
    db: &mut BlockDb<'_>,
    reads: &[Read],
    state: &mut EvmState,
    value: U256,
) -> Result<Validity, ExecError> {
    let mut validity = Validity::Valid;
    for read in reads {
        let same = match read {
            Read::Basic(address, seen) => {
                let now = db.basic(*address).map_err(db_error)?;
                now.map(|i| (i.nonce, i.balance, i.code_hash)) == *seen
            }
            Read::Storage(address, slot, seen) => {
                db.storage(*address, *slot).map_err(db_error)? == *seen
            }
            Read::Credit(address, seen) => {
                let now = db.basic(*address).map_err(db_error)?;
                if now.as_ref().map(|i| (i.nonce, i.code_hash)) != *seen {
                    false
                } else if let Some(now) = now {
                    let credited = state
                        .get_mut(address)
                        .expect("a credited recipient is in the transaction's state");
                    match now.balance.checked_add(value) {
                        Some(balance) if balance == credited.info.balance => true,
                        Some(balance) => {
                            credited.info.balance = balance;
                            validity = Validity::Patched;
                            true
                        }
                        None => false,
                    }
                } else {
                    // Did not exist then and does not now: the speculative credit is right.
                    true
                }
            }
        };
        if !same {
            return Ok(Validity::Stale);
        }
    }
    Ok(validity)
}

fn db_error(err: EvmDatabaseError<DbError>) -> ExecError {
    match err {
        EvmDatabaseError::Database(err) => ExecError::Storage(err.0),
        EvmDatabaseError::Bal(err) => ExecError::Internal(err.to_string()),
    }
}
