//! geth's `debug` tracing methods (`trace.rs` runs the tracers): `debug_traceTransaction`,
//! `debug_traceBlockByNumber`, `debug_traceBlockByHash` and `debug_traceCall`, at any block whose
//! parent's state is in the history window. They share `eth_call`'s execution slots and time
//! limit.

use crate::{
    call::ChainHashes,
    chain,
    error::RpcError,
    handler::EthRpc,
    trace::{self, BlockReplay},
};
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::B256;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_rpc_types_trace::geth::{
    GethDebugTracingCallOptions, GethDebugTracingOptions, GethTrace, TraceResult,
};
use jsonrpsee::{
    Extensions,
    core::{RpcResult, async_trait},
    proc_macros::rpc,
};
use kestrel_storage::{ChainView, Reader};
use kestrel_types::BlockNumber;

#[rpc(server, namespace = "debug")]
pub trait DebugApi {
    #[method(name = "traceTransaction", with_extensions)]
    async fn trace_transaction(
        &self,
        hash: B256,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<GethTrace>;

    #[method(name = "traceBlockByNumber", with_extensions)]
    async fn trace_block_by_number(
        &self,
        block: BlockNumberOrTag,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<Vec<TraceResult>>;

    #[method(name = "traceBlockByHash", with_extensions)]
    async fn trace_block_by_hash(
        &self,
        hash: B256,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<Vec<TraceResult>>;

    /// State and block overrides and `txIndex` are not supported (an error says so).
    #[method(name = "traceCall", with_extensions)]
    async fn trace_call(
        &self,
        request: TransactionRequest,
        block: Option<BlockId>,
        opts: Option<GethDebugTracingCallOptions>,
    ) -> RpcResult<GethTrace>;
}

impl EthRpc {
    /// Replays block `number` and traces its transactions, or only `only`.
    async fn trace_committed(
        &self,
        ext: &Extensions,
        number: BlockNumber,
        opts: GethDebugTracingOptions,
        only: Option<usize>,
    ) -> Result<Vec<TraceResult>, RpcError> {
        let spec = self.ctx.spec.clone();
        self.with_execution(ext, move |reader, deadline| {
            let block = reader.block(number)?.ok_or(RpcError::UnknownBlock)?;
            if block.txs.is_empty() {
                return Ok(Vec::new());
            }
            // A block with transactions is not genesis: it has a parent.
            let parent_state = reader.state_at(number - 1)?;
            let hashes = ChainHashes(reader);
            let replay = BlockReplay {
                spec: &spec,
                block: &block,
                parent_state: &parent_state,
                hashes: &hashes,
                deadline,
            };
            trace::trace_block(&replay, &opts, only)
        })
        .await
    }

    async fn block_number_of(&self, id: BlockId) -> Result<BlockNumber, RpcError> {
        self.read(move |reader: &Reader<'_>| {
            let head = chain::head(reader)?;
            chain::block_number(reader, id, head)?.ok_or(RpcError::UnknownBlock)
        })
        .await
    }
}

#[async_trait]
impl DebugApiServer for EthRpc {
    async fn trace_transaction(
        &self,
        ext: &Extensions,
        hash: B256,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<GethTrace> {
        let location = self
            .read(move |reader| Ok(reader.tx_location(hash)?))
            .await?;
        let Some((number, index)) = location else {
            return Err(RpcError::TransactionNotFound(hash).into());
        };
        let mut traces = self
            .trace_committed(ext, number, opts.unwrap_or_default(), Some(index as usize))
            .await?;
        match traces.pop() {
            Some(TraceResult::Success { result, .. }) => Ok(result),
            Some(TraceResult::Error { error, .. }) => Err(RpcError::Tracer(error).into()),
            None => Err(RpcError::TransactionNotFound(hash).into()),
        }
    }

    async fn trace_block_by_number(
        &self,
        ext: &Extensions,
        block: BlockNumberOrTag,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<Vec<TraceResult>> {
        let number = self.block_number_of(BlockId::Number(block)).await?;
        Ok(self
            .trace_committed(ext, number, opts.unwrap_or_default(), None)
            .await?)
    }

    async fn trace_block_by_hash(
        &self,
        ext: &Extensions,
        hash: B256,
        opts: Option<GethDebugTracingOptions>,
    ) -> RpcResult<Vec<TraceResult>> {
        let number = self.block_number_of(BlockId::from(hash)).await?;
        Ok(self
            .trace_committed(ext, number, opts.unwrap_or_default(), None)
            .await?)
    }

    async fn trace_call(
        &self,
        ext: &Extensions,
        request: TransactionRequest,
        block: Option<BlockId>,
        opts: Option<GethDebugTracingCallOptions>,
    ) -> RpcResult<GethTrace> {
        let opts = opts.unwrap_or_default();
        if opts.state_overrides.is_some()
            || opts.block_overrides.is_some()
            || opts.tx_index.is_some()
        {
            return Err(RpcError::InvalidParams(
                "stateOverrides, blockOverrides and txIndex are not supported".into(),
            )
            .into());
        }
        let tracing = opts.tracing_options;
        Ok(self
            .with_call_context(ext, block, move |ctx| {
                trace::trace_call(ctx, request, &tracing)
            })
            .await?)
    }
}
