//! Kestrel's Ethereum JSON-RPC server (HTTP), answering as geth does so that wallets and tools
//! (web3.py, viem, ethers, Foundry, MetaMask) work unchanged.
//!
//! It serves committed blocks and the state after any block of the history window from the
//! store, pending transactions and nonces from the pool, and hands raw transactions to the
//! ingress stage.
//!
//! Block tags: RPC serves only *committed* blocks (finalized, executed, state root computed,
//! durably written), so `latest`, `pending`, `safe` and `finalized` all name the committed head;
//! `earliest` is genesis. State queries for a block before the history window (`--history-blocks`)
//! answer "historical state not available" with the oldest block that has state.

mod access_list;
mod api;
mod call;
mod chain;
mod debug;
pub mod error;
mod fees;
mod filters;
mod handler;
mod health;
pub mod limits;
mod logs;
mod metrics;
mod progress;
mod pubsub;
mod raw_batch;
mod server;
mod slots;
mod trace;
mod txpool;

pub use call::CALL_GAS_CAP;
pub use error::RpcError;
pub use fees::{FEE_HISTORY_BLOCKS_MAX, FEE_HISTORY_PERCENTILES_MAX, SUGGESTED_TIP_WEI};
pub use health::{HEALTH_PATH, STALL_BLOCK_TIMES};
pub use limits::RpcLimits;
pub use metrics::describe_metrics;

use jsonrpsee::{
    Methods, RpcModule,
    server::{
        BatchRequestConfig, Server, ServerConfig, ServerHandle, middleware::rpc::RpcServiceBuilder,
        stop_channel,
    },
};
use kestrel_pipeline::{
    mempool::{IngressHandle, IngressStage, TxPool, Validator},
    state::LatestState,
    status::ChainStatus,
};
use pubsub::EthPubSubApiServer as _;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use txpool::TxpoolApiServer as _;

/// Default listen address: localhost only, geth's port.
pub const ADDR_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8545);
/// Largest request body accepted (a batch, or one transaction of up to 128 KiB, hex-encoded).
pub const REQUEST_BODY_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Largest response body sent (a block with full transactions, a batch, a log query).
pub const RESPONSE_BODY_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Most calls in one batch.
pub const BATCH_LEN_MAX: u32 = 10_000;
/// Most blocks one `eth_getLogs` scans.
pub const BLOCK_RANGE_MAX: u64 = 10_000;
/// Most logs one `eth_getLogs` returns.
pub const LOGS_MAX: usize = 10_000;
/// Block interval `/health` judges the head's age by, unless the node says otherwise.
pub const BLOCK_TIME_MS_DEFAULT: u64 = 500;
/// `eth_sendRawTransactionSync`: how long it waits for the receipt without a timeout given,
/// and the longest it waits with one.
pub const SYNC_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
pub const SYNC_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// How often a waiting `eth_sendRawTransactionSync` looks at the committed head.
const SYNC_POLL: Duration = Duration::from_millis(10);

/// What the RPC server reads and writes.
#[derive(Clone)]
pub struct RpcContext {
    pub store: Arc<kestrel_storage::Store>,
    pub spec: Arc<kestrel_types::ChainSpec>,
    pub pool: Arc<TxPool>,
    pub ingress: IngressHandle,
    pub status: Arc<ChainStatus>,
}

impl RpcContext {
    /// A context over `store` alone, without the node's pipeline: an empty pool, a fresh status
    /// and one ingress thread (its handle is returned; it stops once the context is dropped).
    /// For tests and tools that serve a store.
    pub fn standalone(
        store: Arc<kestrel_storage::Store>,
        spec: Arc<kestrel_types::ChainSpec>,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let pool = Arc::new(TxPool::new());
        let status = Arc::new(ChainStatus::default());
        let (ingress, mut threads) = IngressStage {
            pool: pool.clone(),
            validator: Validator::new(spec.clone(), spec.gas_limit),
            state: LatestState {
                store: store.clone(),
                overlay: Arc::new(kestrel_storage::Overlay::default()),
            },
            status: status.clone(),
        }
        .spawn(1);
        let ctx = Self {
            store,
            spec,
            pool,
            ingress,
            status,
        };
        (ctx, threads.pop().expect("one ingress thread"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    pub addr: SocketAddr,
    pub max_request_body_bytes: u32,
    pub max_response_body_bytes: u32,
    pub max_batch_len: u32,
    /// The node's block interval: `/health` answers 503 once the head is
    /// [`STALL_BLOCK_TIMES`] intervals old.
    pub block_time_ms: u64,
    /// Connections, request bodies, call rates and execution time (docs/SECURITY.md).
    pub limits: RpcLimits,
    /// The WebSocket server (`--ws-port`), if on.
    pub ws: Option<WsConfig>,
}

/// The WebSocket server: every method, plus `eth_subscribe` (`pubsub.rs`). jsonrpsee's own
/// server, bounded by its limits below; the HTTP server's per-IP limits do not apply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    pub addr: SocketAddr,
    /// Open WebSocket connections at once.
    pub connections_max: u32,
    /// Subscriptions one connection may hold.
    pub subscriptions_per_connection_max: u32,
    /// Messages queued to one connection; a subscription that finds it full is closed.
    pub buffer_messages: u32,
}

pub const WS_CONNECTIONS_MAX: u32 = 1_000;
pub const WS_SUBSCRIPTIONS_PER_CONNECTION_MAX: u32 = 64;
pub const WS_BUFFER_MESSAGES: u32 = 4_096;

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            addr: ADDR_DEFAULT,
            max_request_body_bytes: REQUEST_BODY_BYTES_MAX,
            max_response_body_bytes: RESPONSE_BODY_BYTES_MAX,
            max_batch_len: BATCH_LEN_MAX,
            block_time_ms: BLOCK_TIME_MS_DEFAULT,
            limits: RpcLimits::default(),
            ws: None,
        }
    }
}

/// Binds `config.addr` and serves until the returned handle is stopped (or dropped). Returns the
/// bound address (useful with port 0).
pub async fn start(
    config: RpcConfig,
    ctx: RpcContext,
) -> Result<(SocketAddr, ServerHandle), RpcError> {
    config.limits.check()?;
    let limits = Arc::new(config.limits.clone());
    let health = health::HealthLayer {
        store: ctx.store.clone(),
        max_age_ms: config.block_time_ms.saturating_mul(STALL_BLOCK_TIMES),
        started_ms: kestrel_types::now_ms(),
    };
    let ws = match &config.ws {
        Some(ws) => Some((ws.clone(), ws_methods(ctx.clone(), &limits)?)),
        None => None,
    };
    let ingress = ctx.ingress.clone();
    let module = methods(ctx, &limits)?;
    let methods = Arc::new(metrics::MethodMetrics::new(module.method_names()));
    let module = Methods::from(module);

    let server_config = ServerConfig::builder()
        .http_only()
        .max_request_body_size(config.max_request_body_bytes)
        .max_response_body_size(config.max_response_body_bytes)
        // Connections are admitted by `server`; with HTTP/1 each has at most one request in
        // flight, so this bound (jsonrpsee's, on requests in flight) is never the one that bites.
        .max_connections(limits.connections_max)
        .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch_len))
        .build();
    let max_response_body_bytes = config.max_response_body_bytes as usize;
    let rate = Arc::new(limits::RateLimiter::new(limits.calls_per_s_per_ip));
    let raw_txs = Arc::new(raw_batch::RawTxs {
        ingress,
        limiter: rate.clone(),
    });
    let rpc_middleware = RpcServiceBuilder::new()
        .layer_fn(move |inner| metrics::RpcMetrics {
            inner,
            methods: methods.clone(),
            max_response_body_bytes,
            raw_txs: raw_txs.clone(),
        })
        .layer_fn({
            let rate = rate.clone();
            move |inner| limits::RateLimit {
                inner,
                limiter: rate.clone(),
            }
        });
    let service = Server::builder()
        .set_config(server_config)
        .set_rpc_middleware(rpc_middleware)
        .set_http_middleware(tower::ServiceBuilder::new().layer(health))
        .to_service_builder();
    let listener = server::listen(config.addr).map_err(RpcError::Bind)?;
    let addr = listener.local_addr().map_err(RpcError::Bind)?;
    let (stop, handle) = stop_channel();
    let body = server::BodyLimits::new(config.max_request_body_bytes, &limits);
    metrics::init_limit_metrics();
    tokio::spawn(server::serve(
        listener,
        move |stop| service.clone().build(module.clone(), stop),
        server::Shared::new(&limits, body, rate),
        stop,
    ));
    tracing::info!(target: "rpc::server", %addr, "JSON-RPC server listening");
    if let Some((ws, module)) = ws {
        let ws_config = ServerConfig::builder()
            .ws_only()
            .max_request_body_size(config.max_request_body_bytes)
            .max_response_body_size(config.max_response_body_bytes)
            .max_connections(ws.connections_max)
            .max_subscriptions_per_connection(ws.subscriptions_per_connection_max)
            .set_message_buffer_capacity(ws.buffer_messages)
            .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch_len))
            .set_id_provider(pubsub::HexIds)
            .build();
        let server = Server::builder()
            .set_config(ws_config)
            .build(ws.addr)
            .await
            .map_err(RpcError::Bind)?;
        let ws_addr = server.local_addr().map_err(RpcError::Bind)?;
        let ws_handle = server.start(module);
        // Stops with the HTTP server.
        let http = handle.clone();
        tokio::spawn(async move {
            http.stopped().await;
            let _ = ws_handle.stop();
            ws_handle.stopped().await;
        });
        tracing::info!(target: "rpc::server", addr = %ws_addr, "JSON-RPC WebSocket server listening");
    }
    Ok((addr, handle))
}

/// What the WebSocket server answers: every method, and the subscriptions.
fn ws_methods(ctx: RpcContext, limits: &RpcLimits) -> Result<RpcModule<()>, RpcError> {
    let mut module = methods(ctx.clone(), limits)?;
    module.merge(pubsub::PubSub::new(pubsub::Feed::start(ctx)).into_rpc())?;
    Ok(module)
}

/// Every method the server answers, without the HTTP server and its limits in front: what
/// `start` serves, and what the fuzz target (`fuzz/fuzz_targets/rpc_params.rs`) feeds raw JSON.
pub fn methods(ctx: RpcContext, limits: &RpcLimits) -> Result<RpcModule<()>, RpcError> {
    let mut module = RpcModule::new(());
    let eth = handler::EthRpc::new(ctx.clone(), limits);
    module.merge(debug::DebugApiServer::into_rpc(eth.clone()))?;
    module.merge(api::EthApiServer::into_rpc(eth))?;
    module.merge(txpool::TxpoolRpc::new(ctx).into_rpc())?;
    Ok(module)
}

#[cfg(test)]
mod test_utils;
