//! The parallel executor: Block-STM (Gelashvili et al., PPoPP 2023) over revm, with the block's
//! final writes taken from the multi-version memory instead of committing every transaction into
//! revm's `State` on one thread.
//!
//! - **Execute and validate on every thread** ([`scheduler`]): a thread takes the next task,
//!   executing a transaction or validating one, from the lower of two indexes. An execution
//!   reads the latest earlier write from [`mv::MvMemory`], else what the pre-execution system
//!   calls wrote, else the block's starting `StateView` (which is `Sync`), records the values it
//!   read, publishes its writes and builds its receipt. A validation re-reads those values; if
//!   one changed, the execution is aborted, its writes become estimates, and it runs again.
//!   A transaction that reads an estimate waits for its writer (a dependency) instead of
//!   reading a value about to change. When every transaction is executed and validated, each
//!   one's result is what sequential execution produces.
//! - **Finish from the multi-version memory** ([`finish`]): the last write of each location,
//!   compared with the starting state, is the block's state change, computed on all threads.
//!   Only the pre- and post-block system calls and withdrawals run through alloy-evm's block
//!   executor over revm's `State` (reading the final writes through [`finish::FinalDb`]), so
//!   their effects and the requests hash come from the same code as the sequential executor's.
//!   Receipts' cumulative gas is filled in in block order.
//! - **Sequential executor when that is not exact**: if a transaction was invalid, did not fit
//!   in the block's gas, read code deployed in the block, created, self-destructed or cleared an
//!   account, or the system calls touch what transactions changed, the block runs on the
//!   sequential executor (the speculative states are not kept: holding a block's worth of them
//!   cost more than re-executing such rare blocks).
//! - **Hot spots**: a transaction's fee to the beneficiary is kept in its own slot, and a plain
//!   value transfer's to its recipient is written as a credit: fees and credits to one account
//!   do not conflict with each other, only a transaction that reads the account's balance
//!   depends on them (relaxed merge, deferred beneficiary fees).
//! - **Adaptive**: blocks under [`PARALLEL_MIN_TXS`] run sequentially, and a block whose
//!   executions are aborted too often ([`ADAPT_MIN_EXECUTIONS`], [`ADAPT_ABORTS_DIVISOR`]) is
//!   abandoned to the sequential executor (a contended block would pay for speculation and
//!   re-execution).

mod finish;
mod mv;
mod scheduler;
mod worker;

use crate::{
    evm::{BlockHashes, Hardforks, evm_env},
    executor::{
        BlockInput, BlockOutput, ExecError, Executor, SequentialExecutor, execution_ctx,
        fatal_or_block, parent_hash_for_history,
    },
};
use alloy_evm::{
    Evm, EvmEnv, EvmFactory,
    block::BlockExecutor,
    eth::{EthBlockExecutor, EthEvmFactory, receipt_builder::AlloyReceiptBuilder},
};
use alloy_primitives::{Address, map::HashMap};
use kestrel_storage::StateView;
use kestrel_types::{AccountInfo, ChainSpec, RecoveredTx};
use mv::{Loc, MvMemory, Val};
use parking_lot::Mutex;
use revm::{Database, context::Cfg, database::State, primitives::hardfork::SpecId};
use scheduler::{Padded, Scheduler};
use std::{
    num::NonZeroUsize,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};
use worker::{Counts, Outcome, Speculator};

/// Blocks with fewer transactions run sequentially: below this, spawning workers and validating
/// costs more than it saves (see BENCHMARKS.md).
pub const PARALLEL_MIN_TXS: usize = 64;

/// Executes a block's transactions on `threads` threads; see the module documentation.
pub struct ParallelExecutor {
    /// The `threads - 1` helpers, kept across blocks: a thread spawned per block started every
    /// block on a cold allocator heap, faulting in fresh pages for its speculative state.
    helpers: Option<rayon::ThreadPool>,
    /// Emptied for each block, its allocations kept.
    mv: MvMemory,
    min_txs: usize,
    last_block: Option<BlockStats>,
}

/// What the parallel executor did with the last block it executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStats {
    pub txs: usize,
    /// Executions beyond the first of each transaction.
    pub reexecutions: usize,
    /// The block ran on the sequential executor (too small, too many aborts, or not exact from
    /// the multi-version memory).
    pub sequential: bool,
}

impl ParallelExecutor {
    pub fn new(threads: NonZeroUsize) -> Self {
        // Zero threads means one per core to rayon: one thread needs no pool.
        let helpers = (threads.get() > 1).then(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads.get() - 1)
                .thread_name(|i| format!("kestrel-exec-{}", i + 1))
                .build()
                .expect("spawning the executor's helper threads")
        });
        Self {
            helpers,
            mv: MvMemory::new(),
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

impl std::fmt::Debug for ParallelExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelExecutor")
            .field("helpers", &self.helpers)
            .field("min_txs", &self.min_txs)
            .field("last_block", &self.last_block)
            .finish_non_exhaustive()
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
        let (output, stats) = execute_parallel(
            self.helpers.as_ref(),
            &mut self.mv,
            spec,
            input,
            state,
            hashes,
        )?;
        self.last_block = Some(stats);
        Ok(output)
    }
}

/// What the threads share: read-only inputs, the multi-version memory, the scheduler and the
/// outcome slots.
pub(super) struct Shared<'a> {
    txs: &'a [RecoveredTx],
    env: EvmEnv<SpecId>,
    /// The block's starting state; threads read it directly.
    base: &'a dyn StateView,
    hashes: &'a dyn BlockHashes,
    /// The chain's storage-only genesis accounts, sorted (none on a real chain). A transaction
    /// that reads one leaves the block to the sequential executor, which alone implements
    /// EIP-7610's storage check (`collision.rs`).
    storage_only: &'a [Address],
    /// What the pre-execution system calls wrote (beacon roots, block hash history).
    pre: HashMap<Loc, Val>,
    beneficiary: Address,
    mv: &'a MvMemory,
    scheduler: Scheduler,
    /// Set when the block is left to the sequential executor (too many aborts): threads stop.
    abandoned: AtomicBool,
    outcomes: Box<[Padded<Mutex<Option<Outcome>>>]>,
    /// Executions aborted by a failed validation or by waiting for a dependency (rare, so one
    /// shared counter; per-execution counts are kept per thread).
    aborts: Padded<AtomicUsize>,
}

/// Aborts are judged once this many executions ran ...
const ADAPT_MIN_EXECUTIONS: usize = 64;
/// ... and if more than this fraction (1 / divisor) of executions was aborted, transactions run
/// about twice each on average and two threads gain nothing: the block goes to the sequential
/// executor.
const ADAPT_ABORTS_DIVISOR: usize = 3;

impl Shared<'_> {
    fn record_abort(&self) {
        let aborts = self.aborts.fetch_add(1, Ordering::Relaxed) + 1;
        // Every abort leads to one more execution.
        let executions = self.scheduler.started() + aborts;
        if executions >= ADAPT_MIN_EXECUTIONS && aborts * ADAPT_ABORTS_DIVISOR > executions {
            self.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

fn execute_parallel(
    helpers: Option<&rayon::ThreadPool>,
    mv: &mut MvMemory,
    spec: &ChainSpec,
    input: BlockInput<'_>,
    state: &dyn StateView,
    hashes: &dyn BlockHashes,
) -> Result<(BlockOutput, BlockStats), ExecError> {
    let header = input.header;
    let forks = Hardforks::new(spec);
    let parent_hash = parent_hash_for_history(&forks, header, state, hashes)?;
    let env = evm_env(spec, header);
    mv.reset(input.txs.len(), header.beneficiary);
    let mv = &*mv;
    let mut db = finish::final_state(state, hashes, mv);
    let evm = EthEvmFactory::default().create_evm(&mut db, env.clone());
    let ctx = execution_ctx(&input, parent_hash);
    let mut executor = EthBlockExecutor::new(evm, ctx, forks, AlloyReceiptBuilder::default());
    executor
        .apply_pre_execution_changes()
        .map_err(fatal_or_block)?;
    let pre = pre_execution_writes(executor.evm_mut().db_mut());
    let system = finish::system_accounts(
        executor.evm_mut().db_mut(),
        header,
        input.withdrawals,
        &forks,
    );
    let beneficiary = match pre.get(&Loc::Basic(header.beneficiary)) {
        Some(Val::Basic(info)) => *info,
        _ => state.account(header.beneficiary)?,
    };
    if beneficiary.is_some_and(|info| info.is_empty()) {
        // The first transaction's touch clears it, which fee credits do not model.
        metrics::counter!("kestrel_execution_sequential_fallback_total", "reason" => "unsupported")
            .increment(1);
        let txs = input.txs.len();
        let output = SequentialExecutor.execute(spec, input, state, hashes)?;
        let stats = BlockStats {
            txs,
            reexecutions: 0,
            sequential: true,
        };
        return Ok((output, stats));
    }

    let shared = Shared {
        txs: input.txs,
        env,
        base: state,
        hashes,
        storage_only: spec.storage_only_accounts(),
        pre,
        beneficiary: header.beneficiary,
        mv,
        scheduler: Scheduler::new(input.txs.len()),
        abandoned: AtomicBool::new(false),
        outcomes: input.txs.iter().map(|_| Padded::default()).collect(),
        aborts: Padded::default(),
    };
    let threads = helpers
        .map_or(1, |pool| pool.current_num_threads() + 1)
        .min(input.txs.len());
    let started = Instant::now();
    // Each thread runs Block-STM tasks, then computes its share of the block's final writes
    // (wasted only if the block goes to the sequential executor).
    let task = |thread: usize| {
        // A thread that panics must not leave the others waiting for its tasks forever.
        let _stop_others = AbandonOnPanic(&shared.abandoned);
        let mut speculator = Speculator::new(&shared);
        speculator.run();
        let part = (shared.scheduler.done() && !shared.abandoned.load(Ordering::Relaxed))
            .then(|| finish::part(state, mv, (thread, threads), &system));
        (speculator.counts, part)
    };
    // The calling thread is one of the `threads`.
    let results: Vec<Mutex<Option<ThreadResult>>> =
        (0..threads).map(|_| Mutex::new(None)).collect();
    match helpers {
        Some(pool) if threads > 1 => pool.in_place_scope(|scope| {
            for (thread, result) in results.iter().enumerate().skip(1) {
                let task = &task;
                scope.spawn(move |_| *result.lock() = Some(task(thread)));
            }
            *results[0].lock() = Some(task(0));
        }),
        _ => *results[0].lock() = Some(task(0)),
    }
    let mut counts = Counts::default();
    let mut parts = Vec::with_capacity(threads);
    for result in results {
        let (thread_counts, part) = result.into_inner().expect("every thread ran its task");
        counts.add(&thread_counts);
        parts.extend(part);
    }
    let execute_time = started.elapsed();
    let abandoned = shared.abandoned.load(Ordering::Relaxed);
    metrics::counter!("kestrel_execution_reexecutions_total").increment(counts.reexecutions as u64);
    metrics::counter!("kestrel_execution_validation_failures_total")
        .increment(counts.validation_failures as u64);
    metrics::counter!("kestrel_execution_dependency_waits_total")
        .increment(counts.dependency_waits as u64);
    let mut stats = BlockStats {
        txs: input.txs.len(),
        reexecutions: counts.reexecutions,
        sequential: abandoned,
    };
    let Shared {
        outcomes,
        pre,
        scheduler,
        ..
    } = shared;
    // Read in place: moving a block's outcomes into a new vector cost a copy into fresh memory.
    let mut outcomes = outcomes;

    let finishing = Instant::now();
    let finished = if abandoned {
        metrics::counter!("kestrel_execution_sequential_fallback_total", "reason" => "conflicts")
            .increment(1);
        None
    } else {
        assert!(scheduler.done(), "Block-STM ended before every transaction");
        assert_eq!(parts.len(), threads, "every thread computed its share");
        let finished = finish::from_memory(
            finish::Finish {
                header,
                input: &input,
                state,
                pre: &pre,
                system: &system,
                forks: &forks,
                gas_limit_cap: executor.evm().cfg_env().tx_gas_limit_cap(),
            },
            executor,
            &mut outcomes,
            parts,
        )?;
        if finished.is_none() {
            metrics::counter!(
                "kestrel_execution_sequential_fallback_total", "reason" => "unsupported"
            )
            .increment(1);
        }
        finished
    };
    drop(db);
    let output = match finished {
        Some(output) => output,
        None => {
            stats.sequential = true;
            SequentialExecutor.execute(spec, input, state, hashes)?
        }
    };
    let finish_time = finishing.elapsed();
    // Freeing a block's worth of reads takes a while: not on the block's path (the writes are
    // freed when the memory is emptied for the next block, mostly single versions kept inline).
    std::thread::spawn(move || drop(outcomes));

    let phase = |name: &'static str, time: Duration| {
        metrics::histogram!("kestrel_execution_parallel_phase_seconds", "phase" => name)
            .record(time.as_secs_f64());
    };
    phase("execute", execute_time);
    phase("validate", counts.validate_time);
    phase("commit", finish_time);
    Ok((output, stats))
}

/// What a thread did, and its share of the final writes if the block is done in parallel.
type ThreadResult = (Counts, Option<finish::PartResult>);

/// Abandons the block when dropped by a panicking thread.
struct AbandonOnPanic<'a>(&'a AtomicBool);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// The accounts and slots the pre-execution system calls wrote, as the transactions must see
/// them.
fn pre_execution_writes<DB: Database>(db: &State<DB>) -> HashMap<Loc, Val> {
    let mut pre = HashMap::default();
    let Some(transitions) = &db.transition_state else {
        return pre;
    };
    for (address, account) in &transitions.transitions {
        let info = account.info.as_ref().map(|i| AccountInfo {
            nonce: i.nonce,
            balance: i.balance,
            code_hash: i.code_hash,
        });
        pre.insert(Loc::Basic(*address), Val::Basic(info));
        for (slot, value) in &account.storage {
            pre.insert(
                Loc::Storage(*address, *slot),
                Val::Storage(value.present_value),
            );
        }
    }
    pre
}
