//! `kestrel-bench`: executor benchmarks from the command line.
//!
//! ```text
//! kestrel-bench exec --workload raw|erc20|uniswap|hot --txs N --threads T \
//!     --executor sequential|parallel [--hot-ratio R] [--pairs P] [--runs K] --json
//! kestrel-bench compare --workload ... --txs N --threads T [--runs K] --json
//! kestrel-bench archive [--record-bytes 300,600000] [--blocks N] [--runs K] [--dir DIR] --json
//! kestrel-bench store [--accounts 1000000,10000000] [--txs-per-block N] [--blocks N] [--dir DIR] --json
//! kestrel-bench recover [--txs N] [--runs K] --json
//! kestrel-bench pool [--senders N] [--block-txs N] [--backlog N] [--blocks N] [--window N] --json
//! ```
//!
//! `exec` builds a deterministic block and state (100,000 funded accounts by default), executes
//! the block `--runs` times, checks every result without trusting the executor (balances, token
//! supply, pair reserves) and prints the median run. `compare` runs sequential and parallel
//! alternately on the same block and prints both with their ratio, so that a noisy machine
//! affects both alike. `archive` measures the block archive's appends and fsyncs per second,
//! io_uring against the pwrite fallback, alternately in one run (benches/src/archive.rs), and
//! prints one line per record size, pattern and I/O path. `store` writes a state of each size with
//! the bulk genesis writer, commits blocks of random transfers on it and prints, per size, the
//! time to write the state and the state root and durable commit time per block
//! (benches/src/store.rs). `recover` measures sender recovery on one thread as ingress does it
//! (benches/src/recover.rs). `pool` drives the transaction pool block by block as a loaded
//! validator does and reports the time `take_block` holds the pool's lock per block
//! (benches/src/pool.rs).

use clap::{Args, Parser, Subcommand, ValueEnum};
use kestrel_benches::{
    FakeHashes,
    workload::{Bench, Params, Workload},
};
use kestrel_pipeline::{
    BlockInput, BlockOutput, Executor, InvalidTxPolicy, ParallelExecutor, SequentialExecutor,
};
use serde_json::json;
use std::{num::NonZeroUsize, process::ExitCode, time::Instant};

/// The node's allocator (node/src/main.rs), so the executors are measured as the node runs them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "kestrel-bench", about = "Kestrel executor benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Execute one block with one executor and report its throughput.
    Exec {
        #[command(flatten)]
        block: BlockArgs,
        #[arg(long, value_enum, default_value_t = ExecutorKind::Parallel)]
        executor: ExecutorKind,
    },
    /// Execute one block with the sequential and the parallel executor, alternately.
    Compare {
        #[command(flatten)]
        block: BlockArgs,
    },
    /// The block archive's appends and fsyncs per second, io_uring vs the pwrite fallback.
    Archive(ArchiveArgs),
    /// The commit's state and history work per block (time, bytes written), by history window.
    Commit(CommitArgs),
    /// State root and commit per block of transfers (with the sync thread's flushes), by state size.
    Store(StoreArgs),
    /// Sender recovery per second on one thread, as ingress recovers.
    Recover(RecoverArgs),
    /// The transaction pool block by block as a loaded validator drives it: `take_block` per block.
    Pool(PoolArgs),
}

#[derive(Debug, Args)]
struct PoolArgs {
    /// Senders, used round-robin.
    #[arg(long, default_value_t = 100_000)]
    senders: usize,
    /// Transactions admitted and taken each block (20,000 tx/s at 400 ms blocks: 8,000).
    #[arg(long, default_value_t = 8_000)]
    block_txs: usize,
    /// Pending transactions beyond a block's worth, waiting throughout.
    #[arg(long, default_value_t = 0)]
    backlog: usize,
    #[arg(long, default_value_t = 60)]
    blocks: u64,
    /// Blocks a finalized block stays in flight before its commit.
    #[arg(long, default_value_t = 3)]
    window: u64,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RecoverArgs {
    /// Signed transfers (distinct senders) recovered in each run.
    #[arg(long, default_value_t = 20_000)]
    txs: usize,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// State sizes (funded accounts), one store each, measured one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000usize, 10_000_000])]
    accounts: Vec<usize>,
    /// Transfers in each block (each changes its sender and its recipient).
    #[arg(long, default_value_t = 10_000)]
    txs_per_block: usize,
    #[arg(long, default_value_t = 30)]
    blocks: u64,
    /// History window of the stores (`--history-blocks`).
    #[arg(long, default_value_t = kestrel_storage::HistoryWindow::default())]
    history_blocks: kestrel_storage::HistoryWindow,
    /// Where the stores are written (the disk measured; default: the temp directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// One JSON line per state size instead of text (and no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CommitArgs {
    /// Funded accounts in the genesis state.
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// Accounts each block changes (a 5,000-transaction transfer/ERC-20 block: about 7,500).
    #[arg(long, default_value_t = 7_500)]
    accounts_per_block: usize,
    /// Token slots each block changes (the same block: about 5,000).
    #[arg(long, default_value_t = 5_000)]
    slots_per_block: usize,
    /// Transactions and receipts each block carries (their bytes go to the block archive; 0:
    /// empty blocks, the state and history side alone).
    #[arg(long, default_value_t = 5_000)]
    txs_per_block: usize,
    #[arg(long, default_value_t = 200)]
    blocks: u64,
    /// History windows to compare (`--history-blocks` values), one store each, same blocks.
    #[arg(long, value_delimiter = ',', default_values_t = [
        kestrel_storage::HistoryWindow::Blocks(0),
        kestrel_storage::HistoryWindow::default(),
    ])]
    windows: Vec<kestrel_storage::HistoryWindow>,
    /// Where the stores are written (the disk measured; default: the temp directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct ArchiveArgs {
    /// Record sizes in bytes: an empty block's record is ~300 B, a 5,000-transaction block's
    /// ~600 KB.
    #[arg(long, value_delimiter = ',', default_values_t = [300usize, 600_000])]
    record_bytes: Vec<usize>,
    /// Blocks per run (default: per pattern and size, `Pattern::blocks`).
    #[arg(long)]
    blocks: Option<u64>,
    /// Runs of each; the median (by write time) is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where the archives are written (the disk measured; default: the temp directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// One JSON line per result instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BlockArgs {
    #[arg(long, value_enum)]
    workload: Workload,
    /// Transactions in the block.
    #[arg(long, default_value_t = 10_000)]
    txs: usize,
    /// Funded accounts in the state.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Worker threads of the parallel executor.
    #[arg(long, default_value_t = NonZeroUsize::new(2).expect("non-zero"))]
    threads: NonZeroUsize,
    /// `hot`: fraction of transactions paying the one hot account.
    #[arg(long, default_value_t = 0.5)]
    hot_ratio: f64,
    /// `uniswap`: independent pairs the swaps spread over (1: all on one pair).
    #[arg(long, default_value_t = 100)]
    pairs: u64,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorKind {
    Sequential,
    Parallel,
}

impl ExecutorKind {
    fn name(self) -> &'static str {
        match self {
            Self::Sequential => "sequential",
            Self::Parallel => "parallel",
        }
    }
}

/// The median run of one executor.
struct Measured {
    executor: ExecutorKind,
    wall_s: f64,
    gas_used: u64,
    reexecutions: usize,
    sequential_fallback: bool,
}

impl Measured {
    fn json(&self, txs: usize) -> serde_json::Value {
        json!({
            "executor": self.executor.name(),
            "wall_time_s": self.wall_s,
            "txs_per_s": (txs as f64 / self.wall_s).round(),
            "gas_per_s": (self.gas_used as f64 / self.wall_s).round(),
            "gas_used": self.gas_used,
            "reexecutions": self.reexecutions,
            "sequential_fallback": self.sequential_fallback,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (block, executors) = match &cli.command {
        Command::Exec { block, executor } => (block, vec![*executor]),
        Command::Compare { block } => (
            block,
            vec![ExecutorKind::Sequential, ExecutorKind::Parallel],
        ),
        Command::Commit(args) => return exit_code(commit(args)),
        Command::Archive(args) => return exit_code(archive(args)),
        Command::Store(args) => return exit_code(store(args)),
        Command::Recover(args) => return exit_code(recover(args)),
        Command::Pool(args) => return exit_code(pool(args)),
    };
    if block.runs == 0 {
        eprintln!("error: --runs must be at least 1");
        return ExitCode::FAILURE;
    }
    let bench = Bench::new(Params {
        workload: block.workload,
        txs: block.txs,
        accounts: block.accounts,
        hot_ratio: block.hot_ratio,
        pairs: block.pairs,
    });
    let mut runs: Vec<Vec<Measured>> = executors.iter().map(|_| Vec::new()).collect();
    // One executor for all runs, as a node keeps one (with its helper threads) for all blocks.
    let mut parallel = ParallelExecutor::new(block.threads);
    for _ in 0..block.runs {
        // Alternate so that a slow phase of a noisy machine hits every executor alike.
        for (kind, measured) in executors.iter().zip(&mut runs) {
            match run(&bench, *kind, &mut parallel) {
                Ok(m) => measured.push(m),
                Err(err) => {
                    eprintln!("error: {} executor: {err}", kind.name());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    // Each run of one executor next to the other's run of the same round: on a machine whose
    // speed drifts within seconds, the median of these ratios is steadier than the ratio of the
    // medians, which can come from different phases.
    let paired = (runs.len() == 2).then(|| {
        let mut ratios: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(sequential, parallel)| sequential.wall_s / parallel.wall_s)
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios[ratios.len() / 2]
    });
    let medians: Vec<Measured> = runs
        .into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
            v.swap_remove(v.len() / 2)
        })
        .collect();
    report(&bench, block, &medians, paired);
    ExitCode::SUCCESS
}

/// Executes the block once and checks the result.
fn run(
    bench: &Bench,
    kind: ExecutorKind,
    parallel: &mut ParallelExecutor,
) -> Result<Measured, String> {
    let input = BlockInput {
        header: &bench.header,
        txs: &bench.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let executor: &mut dyn Executor = match kind {
        ExecutorKind::Sequential => &mut SequentialExecutor,
        ExecutorKind::Parallel => parallel,
    };
    let started = Instant::now();
    let out: BlockOutput = executor
        .execute(&bench.spec, input, &bench.state, &FakeHashes)
        .map_err(|e| e.to_string())?;
    let wall_s = started.elapsed().as_secs_f64();
    bench
        .verify(&out)
        .map_err(|e| format!("wrong result: {e}"))?;
    let stats = match kind {
        ExecutorKind::Sequential => None,
        ExecutorKind::Parallel => parallel.last_block(),
    };
    Ok(Measured {
        executor: kind,
        wall_s,
        gas_used: out.gas_used,
        reexecutions: stats.map_or(0, |s| s.reexecutions),
        sequential_fallback: stats.is_some_and(|s| s.sequential),
    })
}

fn report(bench: &Bench, block: &BlockArgs, medians: &[Measured], paired: Option<f64>) {
    let txs = bench.txs.len();
    let mut line = json!({
        "workload": block.workload,
        "txs": txs,
        "accounts": block.accounts,
        "threads": block.threads.get(),
        "runs": block.runs,
        "verified": true,
    });
    match block.workload {
        Workload::Hot => line["hot_ratio"] = json!(block.hot_ratio),
        Workload::Uniswap => line["pairs"] = json!(block.pairs),
        Workload::Raw | Workload::Erc20 => {}
    }
    if let [one] = medians {
        merge(&mut line, one.json(txs));
    } else {
        for m in medians {
            line[m.executor.name()] = m.json(txs);
        }
        let ratio = medians[0].wall_s / medians[1].wall_s;
        line["parallel_over_sequential"] = json!(rounded(ratio));
        if let Some(paired) = paired {
            line["paired_ratio_median"] = json!(rounded(paired));
        }
    }
    if block.json {
        println!("{line}");
        return;
    }
    println!(
        "{:?}: {} transactions, {} threads, median of {} runs, result verified",
        block.workload, txs, block.threads, block.runs
    );
    for m in medians {
        println!(
            "  {:<10} {:>10.0} tx/s {:>8.1} Mgas/s {:>8.2} ms  {} re-executions{}",
            m.executor.name(),
            txs as f64 / m.wall_s,
            m.gas_used as f64 / m.wall_s / 1e6,
            m.wall_s * 1e3,
            m.reexecutions,
            if m.sequential_fallback {
                " (ran sequentially)"
            } else {
                ""
            },
        );
    }
    if let Some(ratio) = line.get("parallel_over_sequential") {
        println!("  parallel / sequential: {ratio}x (ratio of the medians)");
    }
    if let Some(paired) = line.get("paired_ratio_median") {
        println!("  parallel / sequential: {paired}x (median of the runs' ratios)");
    }
}

fn rounded(ratio: f64) -> f64 {
    (ratio * 1000.0).round() / 1000.0
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// `kestrel-bench archive`: for each record size and pattern, io_uring and pwrite runs
/// alternate (so a drifting machine hits both alike); the median run of each is printed.
fn exit_code(result: eyre::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn commit(args: &CommitArgs) -> eyre::Result<()> {
    let params = kestrel_benches::commit::Params {
        accounts: args.accounts,
        accounts_per_block: args.accounts_per_block,
        slots_per_block: args.slots_per_block,
        txs_per_block: args.txs_per_block,
        blocks: args.blocks,
    };
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    for line in kestrel_benches::commit::run(&dir, &args.windows, &params)? {
        println!("{line}");
    }
    Ok(())
}

fn recover(args: &RecoverArgs) -> eyre::Result<()> {
    eyre::ensure!(
        args.runs > 0 && args.txs > 0,
        "--runs and --txs must be at least 1"
    );
    let mut runs = kestrel_benches::recover::run(args.txs, args.runs)?;
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let (median, fastest) = (runs[runs.len() / 2], runs[0]);
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "recover",
                "txs": args.txs,
                "runs": args.runs,
                "recoveries_per_s_median": median.per_second().round(),
                "us_each_median": (median.micros_each() * 100.0).round() / 100.0,
                "us_each_fastest": (fastest.micros_each() * 100.0).round() / 100.0,
            })
        );
    } else {
        println!(
            "{} senders recovered a second on one thread ({:.2} µs each; fastest run {:.2} µs), \
             median of {} runs of {} transfers",
            median.per_second().round(),
            median.micros_each(),
            fastest.micros_each(),
            args.runs,
            args.txs
        );
    }
    Ok(())
}

fn pool(args: &PoolArgs) -> eyre::Result<()> {
    let params = kestrel_benches::pool::Params {
        senders: args.senders,
        block_txs: args.block_txs,
        backlog: args.backlog,
        blocks: args.blocks,
        window: args.window,
    };
    let run = kestrel_benches::pool::run(&params)?;
    let micros = |d: &[std::time::Duration], q: f64| {
        let mut v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        kestrel_benches::quantile(&mut v, q).round()
    };
    // The first blocks fill the pipeline (nothing committed yet): left out.
    let steady = (params.window as usize + 1).min(run.take.len() - 1);
    let (take, settle, cycle) = (
        &run.take[steady..],
        &run.settle[steady..],
        &run.cycle[steady..],
    );
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "pool",
                "senders": args.senders,
                "block_txs": args.block_txs,
                "backlog": args.backlog,
                "blocks": take.len(),
                "take_block_us_p50": micros(take, 0.5),
                "take_block_us_p90": micros(take, 0.9),
                "finalize_commit_us_p50": micros(settle, 0.5),
                "cycle_us_p50": micros(cycle, 0.5),
            })
        );
    } else {
        println!(
            "take_block: {} µs p50, {} µs p90 a block of {} ({} senders, backlog {}); finality \
             and commit {} µs p50; whole cycle {} µs p50, over {} blocks",
            micros(take, 0.5),
            micros(take, 0.9),
            args.block_txs,
            args.senders,
            args.backlog,
            micros(settle, 0.5),
            micros(cycle, 0.5),
            take.len()
        );
    }
    Ok(())
}

fn store(args: &StoreArgs) -> eyre::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    for &accounts in &args.accounts {
        let params = kestrel_benches::store::Params {
            accounts,
            txs_per_block: args.txs_per_block,
            blocks: args.blocks,
            history: args.history_blocks,
            progress: !args.json,
        };
        let r = kestrel_benches::store::run(&dir, &params)?;
        if args.json {
            println!("{r}");
        } else {
            println!(
                "{accounts} accounts: state written in {} s (allocation built in {} s, peak RSS \
                 {} MiB, {} MiB on disk); per block of {} transfers: root {} / {} ms, commit \
                 {} / {} ms, root + commit {} / {} ms (p50 / p90), MDBX {} MiB written; RSS up to \
                 {} MiB (at the end: heap {} MiB, mapped database {} MiB); datadir {} MiB",
                r["build_s"],
                r["alloc_s"],
                r["build_peak_rss_mib"],
                r["build_disk_mib"],
                args.txs_per_block,
                r["root_ms_p50"],
                r["root_ms_p90"],
                r["commit_ms_p50"],
                r["commit_ms_p90"],
                r["root_commit_ms_p50"],
                r["root_commit_ms_p90"],
                r["mdbx_written_mib_per_block"],
                r["blocks_rss_max_mib"],
                r["end_rss_anon_mib"],
                r["end_rss_file_mib"],
                r["disk_mib"],
            );
        }
    }
    Ok(())
}

fn archive(args: &ArchiveArgs) -> eyre::Result<()> {
    use kestrel_benches::archive::{Pattern, run};
    use kestrel_storage::archive::IoChoice;
    eyre::ensure!(args.runs > 0, "--runs must be at least 1");
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    if !kestrel_benches::archive::uring_available() {
        eprintln!("io_uring is unavailable here: only the pwrite fallback is measured");
    }
    for &bytes in &args.record_bytes {
        for pattern in [Pattern::SyncEach, Pattern::Grouped] {
            let blocks = args.blocks.unwrap_or_else(|| pattern.blocks(bytes));
            let mut results: [Vec<serde_json::Value>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..args.runs {
                for (io, out) in [IoChoice::IoUring, IoChoice::Pwrite]
                    .into_iter()
                    .zip(&mut results)
                {
                    if let Some(result) = run(&dir, io, pattern, bytes, blocks)? {
                        out.push(result);
                    }
                }
            }
            for mut runs in results.into_iter().filter(|r| !r.is_empty()) {
                let write_s = |v: &serde_json::Value| v["write_s"].as_f64().unwrap_or(f64::MAX);
                runs.sort_by(|a, b| write_s(a).total_cmp(&write_s(b)));
                let mut median = runs.swap_remove(runs.len() / 2);
                median["runs"] = json!(args.runs);
                if args.json {
                    println!("{median}");
                } else {
                    println!(
                        "{:>8} {:>9} B {:>9}: {:>8} appends/s {:>7} fsyncs/s ({} blocks/fsync, {} MB/s), reads {}/s",
                        median["io"].as_str().unwrap_or_default(),
                        bytes,
                        pattern.name(),
                        median["appends_per_s"],
                        median["fsyncs_per_s"],
                        median["blocks_per_fsync"],
                        median["write_mb_per_s"],
                        median["reads_per_s"],
                    );
                }
            }
        }
    }
    Ok(())
}
