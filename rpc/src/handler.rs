//! The methods of [`EthApiServer`] over the node's store, pool and ingress stage.
//!
//! Store reads (MDBX read transactions) and EVM runs block, so they run on tokio's blocking pool,
//! at most [`RpcLimits::db_readers_max`] at once (more wait: MDBX fails a reader past its table).
//! EVM runs and log scans, which can take long, take an execution slot as well, and EVM runs stop
//! at their time limit. One IP address holds only its share of either ([`FairSlots`]).

use crate::{
    RpcContext, RpcLimits, access_list,
    api::EthApiServer,
    call::{self, CallContext, ChainHashes, Deadline},
    chain::{self, state_block},
    error::RpcError,
    fees::{self, SUGGESTED_TIP_WEI},
    filters,
    limits::CALLER_IP,
    limits::Caller,
    logs,
    metrics::{self as m, Rejection},
    slots::{ExecutionBudget, FairPermit, FairSlots},
};
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, U64, U128, U256};
use alloy_rpc_types_eth::{
    AccessListResult, Block, EIP1186AccountProofResponse, FeeHistory, Filter, FilterChanges, Index,
    Log, SyncStatus, Transaction, TransactionReceipt, TransactionRequest,
};
use alloy_serde::JsonStorageKey;
use jsonrpsee::{
    Extensions,
    core::{RpcResult, async_trait},
};
use kestrel_pipeline::status::ChainStatus;
use kestrel_storage::{ChainView, Reader, StateView};
use kestrel_types::{AccountInfo, state::KECCAK_EMPTY};
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

/// Storage keys one `eth_getProof` may ask for: each costs a walk down the account's storage
/// trie, and a response of up to a few KB.
pub const PROOF_KEYS_MAX: usize = 1024;

/// The client of calls that did not come through `server` (tests calling the module directly).
const ANONYMOUS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Cheap to clone: the `debug` namespace (`debug.rs`) shares its slots and limits.
#[derive(Clone)]
pub(crate) struct EthRpc {
    pub(crate) ctx: RpcContext,
    readers: Arc<FairSlots>,
    executions: Arc<FairSlots>,
    call_timeout: Duration,
    batch_execution_budget: Duration,
    filters: Arc<filters::Filters>,
}

impl EthRpc {
    pub fn new(ctx: RpcContext, limits: &RpcLimits) -> Self {
        Self {
            ctx,
            readers: FairSlots::new(limits.db_readers_max, limits.db_readers_max.div_ceil(2)),
            executions: FairSlots::new(limits.executions_max, limits.executions_per_ip_max),
            call_timeout: limits.call_timeout,
            batch_execution_budget: limits.batch_execution_budget,
            filters: Arc::default(),
        }
    }

    /// Runs `f` over one store snapshot on the blocking pool, once one of the caller's readers
    /// is free.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, RpcError> + Send + 'static,
    {
        let started = Instant::now();
        let ip = CALLER_IP.try_with(|ip| *ip).unwrap_or(ANONYMOUS);
        let reader = self.readers.acquire(ip).await;
        m::db_reader_wait(started.elapsed());
        let store = self.ctx.store.clone();
        tokio::task::spawn_blocking(move || {
            let _reader = reader;
            store.view(f)
        })
        .await
        .map_err(|err| RpcError::Internal(err.to_string()))??
    }

    /// Waits for one of the caller's execution slots.
    async fn execution_slot(&self, caller: &Caller) -> FairPermit {
        let started = Instant::now();
        let permit = self.executions.acquire(caller.ip).await;
        m::execution_wait(started.elapsed());
        permit
    }

    /// [`Self::read`] for the long-running requests, in one of the caller's execution slots.
    async fn read_heavy<T, F>(&self, ext: &Extensions, f: F) -> Result<T, RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>) -> Result<T, RpcError> + Send + 'static,
    {
        let _permit = self.execution_slot(&self.caller(ext)).await;
        self.read(f).await
    }

    /// Who sent the call: `server` says so on every request. A call made some other way (in
    /// tests, through the module directly) counts as one anonymous client with a fresh budget.
    fn caller(&self, ext: &Extensions) -> Caller {
        ext.get::<Caller>().cloned().unwrap_or_else(|| Caller {
            ip: ANONYMOUS,
            budget: ExecutionBudget::new(self.batch_execution_budget),
        })
    }

    /// Runs `f` over one store snapshot in one of the caller's execution slots and within its
    /// time: [`RpcLimits::call_timeout`], or what is left of its request's budget if less.
    pub(crate) async fn with_execution<T, F>(&self, ext: &Extensions, f: F) -> Result<T, RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>, Deadline) -> Result<T, RpcError> + Send + 'static,
    {
        let caller = self.caller(ext);
        let _permit = self.execution_slot(&caller).await;
        let limit = self.call_timeout.min(caller.budget.remaining());
        if limit.is_zero() {
            m::rejected(Rejection::BatchTimeout);
            return Err(RpcError::RequestTimeout);
        }
        let started = Instant::now();
        let deadline = Deadline::new(started, limit);
        let result = self.read(move |reader| f(reader, deadline)).await;
        caller.budget.spend(started.elapsed());
        if matches!(result, Err(RpcError::ExecutionTimeout(_))) {
            m::rejected(Rejection::CallTimeout);
        }
        result
    }

    /// Runs `f` with the call context of the block `block` names (its header, the state after
    /// it), under [`Self::with_execution`]'s limits.
    pub(crate) async fn with_call_context<T, F>(
        &self,
        ext: &Extensions,
        block: Option<BlockId>,
        f: F,
    ) -> Result<T, RpcError>
    where
        T: Send + 'static,
        F: FnOnce(&CallContext<'_>) -> Result<T, RpcError> + Send + 'static,
    {
        let spec = self.ctx.spec.clone();
        self.with_execution(ext, move |reader, deadline| {
            let number = state_block(reader, block)?;
            let state = reader.state_at(number)?;
            let header = reader.header(number)?.ok_or(RpcError::HeaderNotFound)?;
            let hashes = ChainHashes(reader);
            f(&CallContext {
                spec: &spec,
                header: &header,
                state: &state,
                hashes: &hashes,
                deadline,
            })
        })
        .await
    }

    /// The base fee of the next block: what ordering will charge, or the head's until ordering
    /// has published one (zero: a base fee never falls to zero once above it).
    fn next_base_fee(&self, head_base_fee: u64) -> u64 {
        match ChainStatus::get(&self.ctx.status.next_base_fee) {
            0 => head_base_fee,
            fee => fee,
        }
    }

    async fn head_base_fee(&self) -> Result<u64, RpcError> {
        self.read(|reader| {
            let head = chain::head(reader)?;
            let header = reader.header(head)?.ok_or(RpcError::HeaderNotFound)?;
            Ok(header.base_fee_per_gas.unwrap_or_default())
        })
        .await
    }

    async fn account_field<T, F>(
        &self,
        address: Address,
        block: Option<BlockId>,
        f: F,
    ) -> RpcResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader<'_>, Option<AccountInfo>) -> Result<T, RpcError> + Send + 'static,
    {
        let value = self
            .read(move |reader| {
                let state = reader.state_at(state_block(reader, block)?)?;
                let account = state.account(address)?;
                f(reader, account)
            })
            .await?;
        Ok(value)
    }

    async fn block_by_id(&self, id: BlockId, full: bool) -> RpcResult<Option<Block>> {
        let block = self
            .read(move |reader| {
                Ok(chain::find_block(reader, id)?.map(|b| chain::rpc_block(&b, full)))
            })
            .await?;
        Ok(block)
    }

    async fn transaction_count_by_id(&self, id: BlockId) -> RpcResult<Option<U64>> {
        let count = self
            .read(move |reader| Ok(chain::find_block(reader, id)?.map(|b| U64::from(b.txs.len()))))
            .await?;
        Ok(count)
    }

    async fn transaction_by_id_and_index(
        &self,
        id: BlockId,
        index: Index,
    ) -> RpcResult<Option<Transaction>> {
        let tx = self
            .read(move |reader| {
                let block = chain::find_block(reader, id)?;
                Ok(block
                    .filter(|b| index.0 < b.txs.len())
                    .map(|b| chain::rpc_transaction(&b, index.0)))
            })
            .await?;
        Ok(tx)
    }
}

fn client_version() -> String {
    format!(
        "kestrel/v{}/{}-{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

#[async_trait]
impl EthApiServer for EthRpc {
    fn client_version(&self) -> RpcResult<String> {
        Ok(client_version())
    }

    fn net_version(&self) -> RpcResult<String> {
        Ok(self.ctx.spec.chain_id.to_string())
    }

    fn net_listening(&self) -> RpcResult<bool> {
        Ok(true)
    }

    fn net_peer_count(&self) -> RpcResult<U64> {
        let peers = self
            .ctx
            .status
            .peers
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(U64::from(peers))
    }

    fn sha3(&self, data: Bytes) -> RpcResult<B256> {
        Ok(alloy_primitives::keccak256(&data))
    }

    async fn blob_base_fee(&self) -> RpcResult<U256> {
        let spec = self.ctx.spec.clone();
        let fee = self
            .read(move |reader| {
                let head = chain::head(reader)?;
                let header = reader.header(head)?.ok_or(RpcError::HeaderNotFound)?;
                Ok(fees::next_blob_base_fee(&spec, &header))
            })
            .await?;
        Ok(U256::from(fee))
    }

    fn chain_id(&self) -> RpcResult<U64> {
        Ok(U64::from(self.ctx.spec.chain_id))
    }

    async fn block_number(&self) -> RpcResult<U64> {
        Ok(U64::from(self.read(|reader| chain::head(reader)).await?))
    }

    fn syncing(&self) -> RpcResult<SyncStatus> {
        Ok(SyncStatus::None)
    }

    fn accounts(&self) -> RpcResult<Vec<Address>> {
        Ok(Vec::new())
    }

    async fn balance(&self, address: Address, block: Option<BlockId>) -> RpcResult<U256> {
        self.account_field(address, block, |_, account| {
            Ok(account.map_or(U256::ZERO, |a| a.balance))
        })
        .await
    }

    async fn transaction_count(&self, address: Address, block: Option<BlockId>) -> RpcResult<U64> {
        let nonce = self
            .account_field(address, block, |_, account| {
                Ok(account.map_or(0, |a| a.nonce))
            })
            .await?;
        let pending = matches!(block, Some(BlockId::Number(BlockNumberOrTag::Pending)));
        let pool_nonce = pending
            .then(|| self.ctx.pool.pending_nonce(address))
            .flatten();
        Ok(U64::from(pool_nonce.map_or(nonce, |n| n.max(nonce))))
    }

    async fn code(&self, address: Address, block: Option<BlockId>) -> RpcResult<Bytes> {
        self.account_field(address, block, |reader, account| match account {
            Some(account) if account.code_hash != KECCAK_EMPTY => {
                Ok(reader.code(account.code_hash)?.unwrap_or_default())
            }
            _ => Ok(Bytes::new()),
        })
        .await
    }

    async fn storage_at(
        &self,
        address: Address,
        slot: U256,
        block: Option<BlockId>,
    ) -> RpcResult<B256> {
        let value = self
            .read(move |reader| {
                let state = reader.state_at(state_block(reader, block)?)?;
                Ok(state.storage(address, slot)?)
            })
            .await?;
        Ok(B256::from(value))
    }

    async fn call(
        &self,
        ext: &Extensions,
        request: TransactionRequest,
        block: Option<BlockId>,
    ) -> RpcResult<Bytes> {
        Ok(self
            .with_call_context(ext, block, move |ctx| call::call(ctx, request))
            .await?)
    }

    async fn estimate_gas(
        &self,
        ext: &Extensions,
        request: TransactionRequest,
        block: Option<BlockId>,
    ) -> RpcResult<U64> {
        let gas = self
            .with_call_context(ext, block, move |ctx| call::estimate_gas(ctx, request))
            .await?;
        Ok(U64::from(gas))
    }

    async fn create_access_list(
        &self,
        ext: &Extensions,
        request: TransactionRequest,
        block: Option<BlockId>,
    ) -> RpcResult<AccessListResult> {
        Ok(self
            .with_call_context(ext, block, move |ctx| {
                access_list::create_access_list(ctx, request)
            })
            .await?)
    }

    async fn proof(
        &self,
        address: Address,
        keys: Vec<JsonStorageKey>,
        block: Option<BlockId>,
    ) -> RpcResult<EIP1186AccountProofResponse> {
        if keys.len() > PROOF_KEYS_MAX {
            return Err(RpcError::InvalidParams(format!(
                "too many storage keys: at most {PROOF_KEYS_MAX} per proof"
            ))
            .into());
        }
        let proof = self
            .read(move |reader| {
                let number = state_block(reader, block)?;
                if number != chain::head(reader)? {
                    return Err(RpcError::ProofNotAtHead(number));
                }
                let slots: Vec<B256> = keys.iter().map(JsonStorageKey::as_b256).collect();
                let (_, proof) = reader.proof(address, &slots)?;
                Ok(chain::rpc_proof(proof, keys))
            })
            .await?;
        Ok(proof)
    }

    async fn gas_price(&self) -> RpcResult<U256> {
        let head_base_fee = self.head_base_fee().await?;
        // The committed head lags ordering by the pipeline's depth: the larger of the two base
        // fees keeps a legacy transaction priced this way valid in either block.
        let base_fee = head_base_fee.max(self.next_base_fee(head_base_fee));
        Ok(U256::from(u128::from(base_fee) + SUGGESTED_TIP_WEI))
    }

    fn max_priority_fee_per_gas(&self) -> RpcResult<U256> {
        Ok(U256::from(SUGGESTED_TIP_WEI))
    }

    async fn fee_history(
        &self,
        ext: &Extensions,
        block_count: U64,
        newest_block: BlockNumberOrTag,
        reward_percentiles: Option<Vec<f64>>,
    ) -> RpcResult<FeeHistory> {
        let head_base_fee = self.head_base_fee().await?;
        let next_base_fee = self.next_base_fee(head_base_fee);
        let history = self
            .read_heavy(ext, move |reader| {
                fees::fee_history(
                    reader,
                    block_count.to(),
                    newest_block,
                    reward_percentiles.as_deref(),
                    next_base_fee,
                )
            })
            .await?;
        Ok(history)
    }

    async fn send_raw_transaction(&self, raw: Bytes) -> RpcResult<B256> {
        Ok(self.ctx.ingress.submit(raw).await.map_err(RpcError::Pool)?)
    }

    async fn send_raw_transaction_sync(
        &self,
        raw: Bytes,
        timeout_ms: Option<U64>,
    ) -> RpcResult<TransactionReceipt> {
        let waited = timeout_ms.map_or(crate::SYNC_TIMEOUT_DEFAULT, |ms| {
            Duration::from_millis(ms.to()).min(crate::SYNC_TIMEOUT_MAX)
        });
        let hash = self.ctx.ingress.submit(raw).await.map_err(RpcError::Pool)?;
        let deadline = Instant::now() + waited;
        // Read the receipt only when a block was committed since the last look.
        let mut seen = None;
        loop {
            let committed = ChainStatus::get(&self.ctx.status.committed);
            if seen != Some(committed) {
                seen = Some(committed);
                let receipt = self
                    .read(move |reader| chain::transaction_receipt(reader, hash))
                    .await?;
                if let Some(receipt) = receipt {
                    return Ok(receipt);
                }
            }
            if Instant::now() >= deadline {
                return Err(RpcError::SyncTimeout { hash, waited }.into());
            }
            tokio::time::sleep(crate::SYNC_POLL).await;
        }
    }

    async fn transaction_by_hash(&self, hash: B256) -> RpcResult<Option<Transaction>> {
        let committed = self
            .read(move |reader| chain::transaction_by_hash(reader, hash))
            .await?;
        if committed.is_some() {
            return Ok(committed);
        }
        let Some(tx) = self.ctx.pool.get(&hash) else {
            return Ok(None);
        };
        let head_base_fee = self.head_base_fee().await?;
        Ok(Some(chain::pending_transaction(
            &tx,
            self.next_base_fee(head_base_fee),
        )))
    }

    async fn transaction_receipt(&self, hash: B256) -> RpcResult<Option<TransactionReceipt>> {
        let receipt = self
            .read(move |reader| chain::transaction_receipt(reader, hash))
            .await?;
        Ok(receipt)
    }

    async fn block_receipts(&self, block: BlockId) -> RpcResult<Option<Vec<TransactionReceipt>>> {
        let receipts = self
            .read(move |reader| {
                Ok(chain::find_block(reader, block)?.map(|b| chain::rpc_receipts(&b)))
            })
            .await?;
        Ok(receipts)
    }

    async fn block_by_number(
        &self,
        block: BlockNumberOrTag,
        full: bool,
    ) -> RpcResult<Option<Block>> {
        self.block_by_id(BlockId::Number(block), full).await
    }

    async fn block_by_hash(&self, hash: B256, full: bool) -> RpcResult<Option<Block>> {
        self.block_by_id(BlockId::from(hash), full).await
    }

    async fn block_transaction_count_by_number(
        &self,
        block: BlockNumberOrTag,
    ) -> RpcResult<Option<U64>> {
        self.transaction_count_by_id(BlockId::Number(block)).await
    }

    async fn block_transaction_count_by_hash(&self, hash: B256) -> RpcResult<Option<U64>> {
        self.transaction_count_by_id(BlockId::from(hash)).await
    }

    async fn transaction_by_block_number_and_index(
        &self,
        block: BlockNumberOrTag,
        index: Index,
    ) -> RpcResult<Option<Transaction>> {
        self.transaction_by_id_and_index(BlockId::Number(block), index)
            .await
    }

    async fn transaction_by_block_hash_and_index(
        &self,
        hash: B256,
        index: Index,
    ) -> RpcResult<Option<Transaction>> {
        self.transaction_by_id_and_index(BlockId::from(hash), index)
            .await
    }

    async fn logs(&self, ext: &Extensions, filter: Filter) -> RpcResult<Vec<Log>> {
        Ok(self
            .read_heavy(ext, move |reader| logs::get_logs(reader, &filter))
            .await?)
    }

    async fn new_filter(&self, filter: Filter) -> RpcResult<U128> {
        let head = self.read(|reader| chain::head(reader)).await?;
        Ok(self
            .filters
            .install(filters::Kind::Logs(Box::new(filter)), head + 1)?)
    }

    async fn new_block_filter(&self) -> RpcResult<U128> {
        let head = self.read(|reader| chain::head(reader)).await?;
        Ok(self.filters.install(filters::Kind::Blocks, head + 1)?)
    }

    fn new_pending_transaction_filter(&self) -> RpcResult<U128> {
        let (_, seen) = self.ctx.pool.admitted_since(u64::MAX);
        Ok(self.filters.install(filters::Kind::PendingTxs, seen)?)
    }

    async fn filter_changes(&self, ext: &Extensions, id: U128) -> RpcResult<FilterChanges> {
        let (kind, next) = self.filters.get(id)?;
        let (changes, next) = match kind {
            filters::Kind::PendingTxs => {
                let (hashes, seen) = self.ctx.pool.admitted_since(next);
                (FilterChanges::Hashes(hashes), seen)
            }
            kind => {
                self.read_heavy(ext, move |reader| filters::changes(reader, &kind, next))
                    .await?
            }
        };
        self.filters.advance(id, next);
        Ok(changes)
    }

    async fn filter_logs(&self, ext: &Extensions, id: U128) -> RpcResult<Vec<Log>> {
        let filters::Kind::Logs(filter) = self.filters.get(id)?.0 else {
            return Err(RpcError::FilterNotFound.into());
        };
        Ok(self
            .read_heavy(ext, move |reader| logs::get_logs(reader, &filter))
            .await?)
    }

    fn uninstall_filter(&self, id: U128) -> RpcResult<bool> {
        Ok(self.filters.uninstall(id))
    }
}
