//! Command-line interface.

use alloy_primitives::Address;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, num::NonZeroUsize, path::PathBuf};

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
    /// Write a new validator key file (mode 0600) and print its public key and address.
    Keygen(KeygenArgs),
    /// Write a genesis and one config and key per validator for a testnet on this host.
    InitTestnet(InitTestnetArgs),
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
    /// Where the database lives.
    #[arg(long, value_name = "DIR", default_value = "./kestrel-data")]
    pub datadir: PathBuf,
    /// JSON-RPC listen address.
    #[arg(long, default_value = "127.0.0.1")]
    pub http_addr: std::net::IpAddr,
    /// JSON-RPC port.
    #[arg(long, default_value_t = 8545)]
    pub http_port: u16,
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
    /// This validator's key file (hex secp256k1 secret, mode 0600; `kestrel keygen` writes one).
    #[arg(long, value_name = "FILE")]
    pub validator_key: Option<PathBuf>,
    /// Validator p2p listen address (default: this validator's address in the genesis).
    #[arg(long, value_name = "ADDR:PORT")]
    pub p2p_listen: Option<SocketAddr>,
    /// Validator p2p peers, comma-separated (default: the other validators in the genesis).
    #[arg(long, value_name = "ADDR:PORT", value_delimiter = ',')]
    pub p2p_peers: Vec<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key; an existing file is never overwritten.
    #[arg(long, value_name = "FILE", default_value = "validator.key")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitTestnetArgs {
    /// Number of validators.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::testnet::VALIDATORS_MAX)))]
    pub validators: u16,
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

fn available_cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}
