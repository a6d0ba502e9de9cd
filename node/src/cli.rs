//! Command-line interface.

use alloy_primitives::Address;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kestrel_rpc::{RpcLimits, limits};
use kestrel_storage::HistoryWindow;
use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};

#[derive(Debug, Parser)]
#[command(
    name = "kestrel",
    version,
    about = "Kestrel: a pipelined EVM validator node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node. Boxed: the node's options dwarf the other commands'.
    Node(Box<NodeArgs>),
    /// Write a new validator key as an encrypted keystore (mode 0600) and print its public key
    /// and address.
    Keygen(KeygenArgs),
    /// Write a genesis and one config and key per validator for a testnet on this host.
    InitTestnet(InitTestnetArgs),
    /// Check a stopped node's datadir: the block log's hash chain, certificates and commit
    /// proofs, and that the database holds their execution. Prints one JSON line; exits non-zero
    /// on the first disagreement.
    CheckDatadir(CheckArgs),
    /// Re-execute committed blocks of a stopped node's datadir on the historical state before
    /// each and compare gas, receipts, logs bloom and every changed account and slot with what
    /// was committed. Prints mismatches and `N blocks matched, N mismatched`; exits non-zero on
    /// any mismatch.
    Replay(ReplayArgs),
    /// The database and the block archive of a stopped node's datadir.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Entries and bytes per MDBX table and per block-archive segment.
    Stats(DbStatsArgs),
}

#[derive(Debug, Args)]
pub struct DbStatsArgs {
    /// The node's datadir (the node must be stopped).
    #[arg(long, value_name = "DIR")]
    pub datadir: PathBuf,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The node's datadir (the node must be stopped).
    #[arg(long, value_name = "DIR")]
    pub datadir: PathBuf,
    /// The chain's genesis file (default: the dev chain's).
    #[arg(long, value_name = "FILE")]
    pub genesis: Option<PathBuf>,
    /// First block to replay (its parent's state must be in the history window).
    #[arg(long)]
    pub from: u64,
    /// Last block to replay (default: the head).
    #[arg(long)]
    pub to: Option<u64>,
    #[arg(long, value_enum, default_value_t = ExecutorKind::Parallel)]
    pub executor: ExecutorKind,
    /// Worker threads of the parallel executor.
    #[arg(long, default_value_t = available_cores())]
    pub threads: NonZeroUsize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The node's datadir (the node must be stopped).
    #[arg(long, value_name = "DIR")]
    pub datadir: PathBuf,
    /// The chain's genesis, if it names the validator set; without it (the dev chain) the set is
    /// the datadir's own validator key.
    #[arg(long, value_name = "FILE")]
    pub genesis: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// A TOML config file (docs/CONFIG.md); flags given here override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run the built-in single-validator dev chain (chain id 1337, ten funded dev accounts).
    #[arg(long, conflicts_with = "genesis")]
    pub dev: bool,
    /// A geth-style genesis JSON file.
    #[arg(long, value_name = "FILE")]
    pub genesis: Option<PathBuf>,
    /// Run as a full node: no validator key; follow the genesis validators (`--p2p-peers`),
    /// execute the finalized blocks they serve, serve JSON-RPC, forward transactions to them.
    #[arg(long, conflicts_with = "dev")]
    pub full: bool,
    /// How a full node with an empty datadir gets the chain: `full` executes every block from
    /// genesis; `state` fetches the state of a recent finalized block from the validators, then
    /// the blocks after it; `auto` does `state` when that block is more than
    /// `--sync-state-distance` blocks past genesis.
    #[arg(long, value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,
    /// With `--sync auto`: the least height of the validators' snapshot for which state sync
    /// beats executing the blocks from genesis.
    #[arg(long, value_name = "BLOCKS", default_value_t = 10_000)]
    pub sync_state_distance: u64,
    /// Where the database lives.
    #[arg(long, value_name = "DIR", default_value = "./kestrel-data")]
    pub datadir: PathBuf,
    /// Below this much free space on the datadir's disk, new transactions are refused (the
    /// blocks already ordered still commit); 0 turns the check off.
    #[arg(long, value_name = "MB", default_value_t = 128)]
    pub min_free_disk_mb: u64,
    /// Blocks whose state RPC can read besides the head's (balances, storage, calls at past
    /// blocks, tracing), or `all` for an archive node; older history is pruned.
    #[arg(long, value_name = "N|all", default_value_t = HistoryWindow::default())]
    pub history_blocks: HistoryWindow,
    /// JSON-RPC listen address.
    #[arg(long, default_value = "127.0.0.1")]
    pub http_addr: std::net::IpAddr,
    /// JSON-RPC port.
    #[arg(long, default_value_t = 8545)]
    pub http_port: u16,
    /// Most open JSON-RPC connections; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = limits::CONNECTIONS_MAX)]
    pub rpc_connections_max: u32,
    /// Most open JSON-RPC connections from one IP address; more are answered 429 and closed.
    #[arg(long, value_name = "N", default_value_t = limits::CONNECTIONS_PER_IP_MAX)]
    pub rpc_connections_per_ip: u32,
    /// Time to send a request's headers, from connect or the previous answer (closes idle
    /// connections too).
    #[arg(long, value_name = "MS", default_value_t = limits::HEADER_TIMEOUT.as_millis() as u64)]
    pub rpc_header_timeout_ms: u64,
    /// Time to send a request's body once its headers are in; later: 408, connection closed.
    #[arg(long, value_name = "MS", default_value_t = limits::BODY_TIMEOUT.as_millis() as u64)]
    pub rpc_body_timeout_ms: u64,
    /// Bytes of request bodies held at once over all connections; past it: 503.
    #[arg(long, value_name = "BYTES", default_value_t = limits::BODY_BUDGET_BYTES)]
    pub rpc_body_budget_bytes: u64,
    /// Of those, how many one IP address may hold; past it: 429.
    #[arg(long, value_name = "BYTES", default_value_t = limits::BODY_BUDGET_PER_IP_BYTES)]
    pub rpc_body_budget_per_ip_bytes: u64,
    /// JSON-RPC calls per second per IP address, each call of a batch counted (0: no limit).
    #[arg(long, value_name = "N", default_value_t = limits::CALLS_PER_S_PER_IP)]
    pub rpc_ip_calls_per_s: u32,
    /// EVM time of one eth_call or eth_estimateGas.
    #[arg(long, value_name = "MS", default_value_t = limits::CALL_TIMEOUT.as_millis() as u64)]
    pub rpc_call_timeout_ms: u64,
    /// EVM time of all the calls of one request (a batch) together.
    #[arg(long, value_name = "MS", default_value_t = limits::BATCH_EXECUTION_BUDGET.as_millis() as u64)]
    pub rpc_batch_timeout_ms: u64,
    /// EVM runs and block scans (eth_call, eth_estimateGas, eth_getLogs, eth_feeHistory) at once.
    #[arg(long, value_name = "N", default_value_t = limits::EXECUTIONS_MAX)]
    pub rpc_executions_max: usize,
    /// Of those, how many one IP address may hold.
    #[arg(long, value_name = "N", default_value_t = limits::EXECUTIONS_PER_IP_MAX)]
    pub rpc_executions_per_ip: usize,
    /// Database read transactions JSON-RPC holds at once; more wait.
    #[arg(long, value_name = "N", default_value_t = limits::DB_READERS_MAX)]
    pub rpc_db_readers_max: usize,
    /// WebSocket JSON-RPC port on `--http-addr` (every method, plus `eth_subscribe`); off
    /// without it.
    #[arg(long, value_name = "PORT")]
    pub ws_port: Option<u16>,
    /// Most open WebSocket connections.
    #[arg(long, value_name = "N", default_value_t = kestrel_rpc::WS_CONNECTIONS_MAX)]
    pub ws_connections_max: u32,
    /// Most subscriptions one WebSocket connection may hold.
    #[arg(long, value_name = "N", default_value_t = kestrel_rpc::WS_SUBSCRIPTIONS_PER_CONNECTION_MAX)]
    pub ws_subscriptions_max: u32,
    /// Messages queued to one WebSocket connection; a subscription that finds the queue full is
    /// closed as too slow.
    #[arg(long, value_name = "N", default_value_t = kestrel_rpc::WS_BUFFER_MESSAGES)]
    pub ws_buffer_messages: u32,
    /// Prometheus metrics listen address (serves /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    pub metrics: SocketAddr,
    /// Time between blocks.
    #[arg(long, default_value_t = 500)]
    pub block_time_ms: u64,
    /// Block gas limit (default: the genesis file's, or 200,000,000).
    #[arg(long)]
    pub gas_limit: Option<u64>,
    /// D: proposal N carries the execution result of block N − D.
    #[arg(long, default_value_t = 3)]
    pub execution_delay: u64,
    /// Fee recipient of produced blocks (default: the validator key's address, or 0x0).
    #[arg(long)]
    pub beneficiary: Option<Address>,
    /// Threads recovering senders of incoming transactions.
    #[arg(long, default_value_t = 2)]
    pub ingress_threads: usize,
    /// Most transactions the pool holds (pending and queued).
    #[arg(long, default_value_t = kestrel_pipeline::mempool::POOL_TXS_MAX)]
    pub txpool_txs_max: usize,
    /// Most transactions one sender may have in the pool.
    #[arg(long, default_value_t = kestrel_pipeline::mempool::SENDER_TXS_MAX)]
    pub txpool_sender_txs_max: usize,
    /// Seconds a queued transaction (one behind a nonce gap) waits for the gap to fill.
    #[arg(long, value_name = "SECS", default_value_t = kestrel_pipeline::mempool::QUEUED_LIFETIME_DEFAULT.as_secs())]
    pub txpool_queued_lifetime_s: u64,
    /// How blocks are executed. Parallel by default: blocks it cannot run faster (small,
    /// contended) fall back to sequential on their own (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Parallel)]
    pub executor: ExecutorKind,
    /// Worker threads of the parallel executor (default: the available cores).
    #[arg(long, default_value_t = available_cores())]
    pub exec_threads: NonZeroUsize,
    /// This validator's key: an encrypted keystore (`kestrel keygen` writes one), mode 0600.
    #[arg(long, value_name = "FILE")]
    pub validator_key: Option<PathBuf>,
    /// The keystore's password: the file's first line. Mode 0600 (or 0400), like the keystore.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Validator p2p listen address (default: this validator's address in the genesis).
    #[arg(long, value_name = "ADDR:PORT")]
    pub p2p_listen: Option<SocketAddr>,
    /// Validator p2p peers, comma-separated, in genesis order (default: the other validators
    /// in the genesis; on a full node, all of them).
    #[arg(long, alias = "peers", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub p2p_peers: Vec<SocketAddr>,
    /// Full nodes (keys outside the validator set) this node accepts connections from at once;
    /// 0 refuses them all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub p2p_full_nodes_max: usize,
    /// Largest message a full node may send (bytes); a larger one closes its connection.
    #[arg(long, value_name = "BYTES", default_value_t = kestrel_net::FULL_NODE_FRAME_MAX_BYTES_DEFAULT)]
    pub p2p_full_node_frame_max_bytes: u32,
    /// Sync requests a second one full node may send; more close its connection.
    #[arg(long, value_name = "N", default_value_t = kestrel_net::FULL_NODE_REQUESTS_PER_S_DEFAULT)]
    pub p2p_full_node_requests_per_s: u32,
    /// Forwarded-transaction bytes a second one full node may send; more close its connection.
    #[arg(long, value_name = "BYTES", default_value_t = kestrel_net::FULL_NODE_TX_BYTES_PER_S_DEFAULT)]
    pub p2p_full_node_tx_bytes_per_s: u32,
    /// Accepted p2p connections still in their handshake, from addresses other than the
    /// validators' (which have reserved slots); more are closed at once.
    #[arg(long, value_name = "N", default_value_t = kestrel_net::PREAUTH_MAX_DEFAULT)]
    pub p2p_preauth_max: usize,
    /// Of those, from one address (IPv4, or IPv6 /64).
    #[arg(long, value_name = "N", default_value_t = kestrel_net::PREAUTH_PER_IP_MAX_DEFAULT)]
    pub p2p_preauth_per_ip: usize,
    /// Time for a p2p handshake; an accepted connection not authenticated by then is closed.
    #[arg(long, value_name = "MS", default_value_t = kestrel_net::HANDSHAKE_TIMEOUT_DEFAULT.as_millis() as u64)]
    pub p2p_handshake_timeout_ms: u64,
    /// How the block archive reaches the disk: io_uring when the kernel allows it (`auto`),
    /// io_uring or refuse to start (`io_uring`), or plain pwrite/pread and fdatasync (`pwrite`).
    #[arg(long, value_enum, default_value_t = ArchiveIo::Auto)]
    pub archive_io: ArchiveIo,
}

impl NodeArgs {
    /// The JSON-RPC server's limits (docs/SECURITY.md).
    pub fn rpc_limits(&self) -> RpcLimits {
        RpcLimits {
            connections_max: self.rpc_connections_max,
            connections_per_ip_max: self.rpc_connections_per_ip,
            header_timeout: Duration::from_millis(self.rpc_header_timeout_ms),
            body_timeout: Duration::from_millis(self.rpc_body_timeout_ms),
            body_budget_bytes: self.rpc_body_budget_bytes,
            body_budget_per_ip_bytes: self.rpc_body_budget_per_ip_bytes,
            calls_per_s_per_ip: self.rpc_ip_calls_per_s,
            call_timeout: Duration::from_millis(self.rpc_call_timeout_ms),
            batch_execution_budget: Duration::from_millis(self.rpc_batch_timeout_ms),
            executions_max: self.rpc_executions_max,
            executions_per_ip_max: self.rpc_executions_per_ip,
            db_readers_max: self.rpc_db_readers_max,
        }
    }

    /// The WebSocket server, if `--ws-port` is given.
    pub fn ws(&self) -> Option<kestrel_rpc::WsConfig> {
        self.ws_port.map(|port| kestrel_rpc::WsConfig {
            addr: SocketAddr::new(self.http_addr, port),
            connections_max: self.ws_connections_max,
            subscriptions_per_connection_max: self.ws_subscriptions_max,
            buffer_messages: self.ws_buffer_messages,
        })
    }
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the keystore; an existing file is never overwritten.
    #[arg(long, value_name = "FILE", default_value = "keystore.json")]
    pub out: PathBuf,
    /// The password to encrypt the key with: the file's first line; the file must have mode
    /// 0600 (or 0400). `kestrel node --password-file` reads the same file.
    #[arg(long, value_name = "FILE")]
    pub password_file: PathBuf,
    /// Encrypt this plain hex key file (what keygen wrote before keystores) instead of a new key.
    #[arg(long, value_name = "FILE")]
    pub from_hex: Option<PathBuf>,
    /// geth's light scrypt parameters (n=4096, p=6: milliseconds, 4 MiB) instead of its standard
    /// ones (n=262144, p=1: about a second, 256 MiB). For test networks only: a light keystore
    /// is 64x cheaper to brute-force.
    #[arg(long)]
    pub scrypt_light: bool,
}

#[derive(Debug, Args)]
pub struct InitTestnetArgs {
    /// Number of validators.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::testnet::VALIDATORS_MAX)))]
    pub validators: u16,
    /// Number of full nodes (DIR/full-<j>, RPC and metrics on the ports after the validators');
    /// the validators admit as many full-node connections.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=i64::from(crate::testnet::FULL_NODES_MAX)))]
    pub full_nodes: u16,
    /// Directory to write into; it must not hold a testnet already.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Chain id of the genesis.
    #[arg(long, default_value_t = 1337)]
    pub chain_id: u64,
    /// Validator i listens for p2p on 127.0.0.1:(BASE + i).
    #[arg(long, value_name = "BASE", default_value_t = 30303)]
    pub base_p2p_port: u16,
    /// Validator i serves JSON-RPC on 127.0.0.1:(BASE + i).
    #[arg(long, value_name = "BASE", default_value_t = 8545)]
    pub base_rpc_port: u16,
    /// Validator i serves metrics on 127.0.0.1:(BASE + i).
    #[arg(long, value_name = "BASE", default_value_t = 9100)]
    pub base_metrics_port: u16,
    /// Prefunded dev accounts: the ten Hardhat ones first, then deterministic ones (their keys
    /// are written to DIR/accounts.json).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::testnet::ACCOUNTS_MAX)))]
    pub accounts: u32,
    /// Encrypt the validators' keystores with geth's light scrypt parameters (as `keygen
    /// --scrypt-light`): validators that restart often (tests) start in milliseconds, not ~1 s.
    #[arg(long)]
    pub scrypt_light: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// One transaction after another.
    Sequential,
    /// Speculatively on `--exec-threads` workers, committed in block order (blocks under 64
    /// transactions still run sequentially).
    Parallel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Every block from genesis.
    Full,
    /// The state of a recent finalized block, then the blocks after it.
    State,
    /// `state` when the chain is longer than `--sync-state-distance`, else `full`.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveIo {
    /// io_uring if the kernel allows it, else pwrite.
    Auto,
    /// io_uring, or the node does not start.
    #[value(name = "io_uring")]
    IoUring,
    /// pwrite/pread and fdatasync.
    Pwrite,
}

impl From<ArchiveIo> for kestrel_storage::archive::IoChoice {
    fn from(io: ArchiveIo) -> Self {
        match io {
            ArchiveIo::Auto => Self::Auto,
            ArchiveIo::IoUring => Self::IoUring,
            ArchiveIo::Pwrite => Self::Pwrite,
        }
    }
}

fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
