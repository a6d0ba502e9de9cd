//! The JSON-RPC methods Kestrel serves, with geth's names and parameter shapes.

use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, U64, U128, U256};
use alloy_rpc_types_eth::{
    AccessListResult, Block, EIP1186AccountProofResponse, FeeHistory, Filter, FilterChanges, Index,
    Log, SyncStatus, Transaction, TransactionReceipt, TransactionRequest,
};
use alloy_serde::JsonStorageKey;
use jsonrpsee::{core::RpcResult, proc_macros::rpc};

/// A missing block parameter means `latest`.
#[rpc(server)]
pub trait EthApi {
    #[method(name = "web3_clientVersion")]
    fn client_version(&self) -> RpcResult<String>;

    /// The chain id in decimal.
    #[method(name = "net_version")]
    fn net_version(&self) -> RpcResult<String>;

    /// Always true: a node that answers is listening.
    #[method(name = "net_listening")]
    fn net_listening(&self) -> RpcResult<bool>;

    /// Validators connected to this one (0 on a chain of one).
    #[method(name = "net_peerCount")]
    fn net_peer_count(&self) -> RpcResult<U64>;

    /// keccak256 of the given bytes.
    #[method(name = "web3_sha3")]
    fn sha3(&self, data: Bytes) -> RpcResult<B256>;

    /// The blob base fee of the next block (the minimum, 1 wei, while no block carries blobs).
    #[method(name = "eth_blobBaseFee")]
    async fn blob_base_fee(&self) -> RpcResult<U256>;

    #[method(name = "eth_chainId")]
    fn chain_id(&self) -> RpcResult<U64>;

    /// The committed head.
    #[method(name = "eth_blockNumber")]
    async fn block_number(&self) -> RpcResult<U64>;

    /// Always `false`: a single validator has nothing to sync from.
    #[method(name = "eth_syncing")]
    fn syncing(&self) -> RpcResult<SyncStatus>;

    /// Always empty: the node holds no keys.
    #[method(name = "eth_accounts")]
    fn accounts(&self) -> RpcResult<Vec<Address>>;

    #[method(name = "eth_getBalance")]
    async fn balance(&self, address: Address, block: Option<BlockId>) -> RpcResult<U256>;

    /// With `pending`, counts the sender's transactions in the pool.
    #[method(name = "eth_getTransactionCount")]
    async fn transaction_count(&self, address: Address, block: Option<BlockId>) -> RpcResult<U64>;

    #[method(name = "eth_getCode")]
    async fn code(&self, address: Address, block: Option<BlockId>) -> RpcResult<Bytes>;

    #[method(name = "eth_getStorageAt")]
    async fn storage_at(
        &self,
        address: Address,
        slot: U256,
        block: Option<BlockId>,
    ) -> RpcResult<B256>;

    #[method(name = "eth_call", with_extensions)]
    async fn call(&self, request: TransactionRequest, block: Option<BlockId>) -> RpcResult<Bytes>;

    #[method(name = "eth_estimateGas", with_extensions)]
    async fn estimate_gas(
        &self,
        request: TransactionRequest,
        block: Option<BlockId>,
    ) -> RpcResult<U64>;

    /// The addresses and slots the call touches, and the gas it uses with them listed.
    #[method(name = "eth_createAccessList", with_extensions)]
    async fn create_access_list(
        &self,
        request: TransactionRequest,
        block: Option<BlockId>,
    ) -> RpcResult<AccessListResult>;

    /// EIP-1186 proofs of an account and slots, at the committed head only.
    #[method(name = "eth_getProof")]
    async fn proof(
        &self,
        address: Address,
        keys: Vec<JsonStorageKey>,
        block: Option<BlockId>,
    ) -> RpcResult<EIP1186AccountProofResponse>;

    /// The next block's base fee plus the suggested tip.
    #[method(name = "eth_gasPrice")]
    async fn gas_price(&self) -> RpcResult<U256>;

    #[method(name = "eth_maxPriorityFeePerGas")]
    fn max_priority_fee_per_gas(&self) -> RpcResult<U256>;

    #[method(name = "eth_feeHistory", with_extensions)]
    async fn fee_history(
        &self,
        block_count: U64,
        newest_block: BlockNumberOrTag,
        reward_percentiles: Option<Vec<f64>>,
    ) -> RpcResult<FeeHistory>;

    #[method(name = "eth_sendRawTransaction")]
    async fn send_raw_transaction(&self, raw: Bytes) -> RpcResult<B256>;

    /// Committed transactions, then pending ones (without block fields).
    /// EIP-7966: submits like `eth_sendRawTransaction`, then waits for the receipt at most
    /// `timeout` milliseconds (default and ceiling in `lib.rs`).
    #[method(name = "eth_sendRawTransactionSync")]
    async fn send_raw_transaction_sync(
        &self,
        raw: Bytes,
        timeout_ms: Option<U64>,
    ) -> RpcResult<TransactionReceipt>;

    #[method(name = "eth_getTransactionByHash")]
    async fn transaction_by_hash(&self, hash: B256) -> RpcResult<Option<Transaction>>;

    /// `null` until the transaction's block is committed.
    #[method(name = "eth_getTransactionReceipt")]
    async fn transaction_receipt(&self, hash: B256) -> RpcResult<Option<TransactionReceipt>>;

    #[method(name = "eth_getBlockReceipts")]
    async fn block_receipts(&self, block: BlockId) -> RpcResult<Option<Vec<TransactionReceipt>>>;

    #[method(name = "eth_getBlockByNumber")]
    async fn block_by_number(
        &self,
        block: BlockNumberOrTag,
        full: bool,
    ) -> RpcResult<Option<Block>>;

    #[method(name = "eth_getBlockByHash")]
    async fn block_by_hash(&self, hash: B256, full: bool) -> RpcResult<Option<Block>>;

    #[method(name = "eth_getBlockTransactionCountByNumber")]
    async fn block_transaction_count_by_number(
        &self,
        block: BlockNumberOrTag,
    ) -> RpcResult<Option<U64>>;

    #[method(name = "eth_getBlockTransactionCountByHash")]
    async fn block_transaction_count_by_hash(&self, hash: B256) -> RpcResult<Option<U64>>;

    #[method(name = "eth_getTransactionByBlockNumberAndIndex")]
    async fn transaction_by_block_number_and_index(
        &self,
        block: BlockNumberOrTag,
        index: Index,
    ) -> RpcResult<Option<Transaction>>;

    #[method(name = "eth_getTransactionByBlockHashAndIndex")]
    async fn transaction_by_block_hash_and_index(
        &self,
        hash: B256,
        index: Index,
    ) -> RpcResult<Option<Transaction>>;

    #[method(name = "eth_getLogs", with_extensions)]
    async fn logs(&self, filter: Filter) -> RpcResult<Vec<Log>>;

    /// Poll filters (`filters.rs`): ids are random 128-bit quantities.
    #[method(name = "eth_newFilter")]
    async fn new_filter(&self, filter: Filter) -> RpcResult<U128>;

    #[method(name = "eth_newBlockFilter")]
    async fn new_block_filter(&self) -> RpcResult<U128>;

    /// Hashes of transactions the pool admitted since the last poll.
    #[method(name = "eth_newPendingTransactionFilter")]
    fn new_pending_transaction_filter(&self) -> RpcResult<U128>;

    #[method(name = "eth_getFilterChanges", with_extensions)]
    async fn filter_changes(&self, id: U128) -> RpcResult<FilterChanges>;

    #[method(name = "eth_getFilterLogs", with_extensions)]
    async fn filter_logs(&self, id: U128) -> RpcResult<Vec<Log>>;

    #[method(name = "eth_uninstallFilter")]
    fn uninstall_filter(&self, id: U128) -> RpcResult<bool>;
}
