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
    /// Run a node.
    Node(NodeArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
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
    /// Fee recipient of produced blocks.
    #[arg(long, default_value_t = Address::ZERO)]
    pub beneficiary: Address,
    /// Threads recovering senders of incoming transactions.
    #[arg(long, default_value_t = 2)]
    pub ingress_threads: usize,
    /// How blocks are executed. Sequential is the default until the parallel executor is faster
    /// than it (BENCHMARKS.md).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Sequential)]
    pub executor: ExecutorKind,
    /// Worker threads of the parallel executor (default: the available cores).
    #[arg(long, default_value_t = available_cores())]
    pub exec_threads: NonZeroUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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
