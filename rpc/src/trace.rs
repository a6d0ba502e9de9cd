//! geth's tracers for `debug_traceTransaction`, `debug_traceBlockByNumber`/`ByHash` and
//! `debug_traceCall`, from revm-inspectors (the crate reth serves them with): `callTracer`,
//! `prestateTracer` (and its `diffMode`), `4byteTracer`, `flatCallTracer`, `muxTracer`,
//! `noopTracer`, and the default opcode logger (`structLogs`).
//!
//! A committed transaction is traced by replaying its block on the state after the block's
//! parent (historical state, so only blocks in the history window): the block's system calls,
//! then its transactions in order, each committed before the next, the ones before the traced
//! one untraced. Replays run in an execution slot with the call time limit, and the opcode
//! logger stops at [`STRUCT_LOGS_MAX`] steps per transaction.

use crate::{
    call::{self, CallContext, Deadline, DeadlineInspector},
    error::RpcError,
};
use alloy_evm::{
    Evm, EvmFactory, FromRecoveredTx,
    block::BlockExecutor,
    eth::{EthBlockExecutor, EthEvmFactory, receipt_builder::AlloyReceiptBuilder},
};
use alloy_rpc_types_eth::TransactionRequest;
use alloy_rpc_types_trace::geth::{GethDebugTracingOptions, GethTrace, TraceResult};
use kestrel_pipeline::{
    evm::{BlockHashes, Hardforks, evm_env},
    executor::{BlockInput, InvalidTxPolicy, execution_ctx, parent_hash_for_history},
};
use kestrel_storage::StateView;
use kestrel_types::{ChainSpec, SealedBlock};
use revm::{DatabaseCommit, context::TxEnv};
use revm_inspectors::tracing::{DebugInspector, TransactionContext};

/// Opcode steps the default opcode logger records for one transaction or call: each is a
/// `structLogs` entry with its stack (hundreds of bytes, more with memory), so an unbounded log
/// of a 30M-gas loop would take gigabytes. Past it the trace fails with a clear error; the other
/// tracers record per call, not per step, and are bounded by gas.
pub const STRUCT_LOGS_MAX: u64 = 100_000;

/// A committed block to replay: its transactions run on the state after its parent.
pub(crate) struct BlockReplay<'a> {
    pub spec: &'a ChainSpec,
    pub block: &'a SealedBlock,
    pub parent_state: &'a dyn StateView,
    pub hashes: &'a dyn BlockHashes,
    pub deadline: Deadline,
}

type Tracer = (DebugInspector, DeadlineInspector);

/// The tracer `opts` asks for, with the time limit, and the step limit if it logs opcodes.
fn tracer(opts: &GethDebugTracingOptions, deadline: Deadline) -> Result<Tracer, RpcError> {
    let logs_opcodes = opts.tracer.as_ref().is_none_or(|t| t.as_str().is_empty());
    let debug = DebugInspector::new(opts.clone()).map_err(|e| RpcError::Tracer(e.to_string()))?;
    let mut limit = DeadlineInspector::new(deadline);
    if logs_opcodes {
        limit = limit.with_steps_max(STRUCT_LOGS_MAX);
    }
    Ok((debug, limit))
}

/// Traces the block's transactions, or only transaction `only` (those before it still run).
pub(crate) fn trace_block(
    replay: &BlockReplay<'_>,
    opts: &GethDebugTracingOptions,
    only: Option<usize>,
) -> Result<Vec<TraceResult>, RpcError> {
    let block = replay.block;
    let header = &block.header;
    let forks = Hardforks::new(replay.spec);
    let parent_hash = parent_hash_for_history(&forks, header, replay.parent_state, replay.hashes)
        .map_err(|e| RpcError::Internal(e.to_string()))?;
    let mut db = call::state_db(replay.parent_state, replay.hashes);
    let evm = EthEvmFactory::default().create_evm_with_inspector(
        &mut db,
        evm_env(replay.spec, header),
        tracer(opts, replay.deadline)?,
    );
    let input = BlockInput {
        header,
        txs: &block.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let mut executor = EthBlockExecutor::new(
        evm,
        execution_ctx(&input, parent_hash),
        forks,
        AlloyReceiptBuilder::default(),
    );
    // The system calls (beacon root, block hashes) are not the transactions': untraced.
    executor.evm_mut().set_inspector_enabled(false);
    executor
        .apply_pre_execution_changes()
        .map_err(|e| RpcError::Internal(format!("replaying block {}: {e}", header.number)))?;
    let evm = executor.evm_mut();
    let block_env = evm.block().clone();
    let last = only.unwrap_or(block.txs.len().saturating_sub(1));
    let mut traces = Vec::with_capacity(if only.is_some() { 1 } else { block.txs.len() });
    for (index, tx) in block.txs.iter().enumerate().take(last + 1) {
        let traced = only.is_none_or(|i| i == index);
        let tx_env = TxEnv::from_recovered_tx(tx.tx(), tx.sender());
        evm.set_inspector_enabled(traced);
        let result = evm.transact(tx_env.clone()).map_err(call::evm_error);
        let (db, (debug, limit), _) = evm.components_mut();
        if !traced && limit.check_now() {
            return Err(RpcError::ExecutionTimeout(replay.deadline.limit()));
        }
        let result = limit.outcome(result)?;
        if traced {
            let context = TransactionContext {
                block_hash: Some(block.hash),
                tx_index: Some(index),
                tx_hash: Some(tx.hash()),
            };
            let trace = debug
                .get_result(Some(context), &tx_env, &block_env, &result, &mut **db)
                .map_err(|e| RpcError::Internal(e.to_string()))?;
            debug.fuse().map_err(|e| RpcError::Tracer(e.to_string()))?;
            traces.push(TraceResult::Success {
                result: trace,
                tx_hash: Some(tx.hash()),
            });
        }
        db.commit(result.state);
    }
    Ok(traces)
}

/// Traces `request` run as `eth_call` runs it (same environment, gas cap and checks).
pub(crate) fn trace_call(
    ctx: &CallContext<'_>,
    request: TransactionRequest,
    opts: &GethDebugTracingOptions,
) -> Result<GethTrace, RpcError> {
    let env = call::call_env(ctx);
    let tx = call::tx_env(call::capped(request), &env)?;
    let mut db = call::state_db(ctx.state, ctx.hashes);
    let mut evm = EthEvmFactory::default().create_evm_with_inspector(
        &mut db,
        env,
        tracer(opts, ctx.deadline)?,
    );
    let block_env = evm.block().clone();
    let caller = tx.caller;
    let result = evm
        .transact(tx.clone())
        .map_err(|err| call::run_error(err, caller));
    let (db, (debug, limit), _) = evm.components_mut();
    let result = limit.outcome(result)?;
    debug
        .get_result(None, &tx, &block_env, &result, &mut **db)
        .map_err(|e| RpcError::Internal(e.to_string()))
}
