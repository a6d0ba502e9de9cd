//! `kestrel-loadgen`: a load generator for any Ethereum JSON-RPC node (Kestrel, anvil, geth...).
//!
//! It derives sender accounts from a seed, funds them (from a dev account, or through a genesis it
//! writes with `--genesis-out`), deploys the workload's contracts (an ERC-20 token; for `swap`, two
//! tokens and Uniswap-V2-style pairs of them), pre-signs every transaction, sends them at an offered rate over
//! batched JSON-RPC, follows the chain to time inclusion and finality of each one, then checks that
//! nothing was lost and that sampled balances (and, for `swap`, the pairs' reserves) are what the
//! transactions imply. Exits non-zero if a transaction the node accepted never made it into a
//! block, or a balance is off.

mod client;
mod follow;
mod report;
mod send;
mod setup;
mod track;
mod verify;
mod workload;

use clap::Parser;
use eyre::{WrapErr, bail};
use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};
use track::Tracker;
use workload::{Contracts, Fees, PlanParams, Workload};

#[derive(Parser, Debug)]
#[command(name = "kestrel-loadgen", version, about)]
struct Args {
    /// JSON-RPC endpoint; repeat to spread the load over several nodes (the first is followed).
    #[arg(long = "rpc", default_value = "http://127.0.0.1:8545")]
    rpc: Vec<String>,
    #[arg(long, value_enum, default_value = "transfer")]
    workload: Workload,
    /// Offered rate in transactions per second; 0 sends as fast as the nodes answer.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the sending phase at `--rate` (sets the transaction count unless `--txs`).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Transactions to send (default: rate × duration; required with `--rate 0`).
    #[arg(long)]
    txs: Option<usize>,
    /// `swap`: Uniswap-V2-style pairs; sender `i` swaps on pair `i % pairs` (1: every swap
    /// contends on one pair).
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// HTTP connections sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Transactions per JSON-RPC batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Sender accounts.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Seed of the sender keys and of the workload.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of transactions whose recipient is one of `--hot-accounts` accounts (`swap`: share
    /// of swaps sent to pair 0 instead of the sender's own pair).
    #[arg(long, default_value_t = 0.0)]
    hot_ratio: f64,
    #[arg(long, default_value_t = 10)]
    hot_accounts: usize,
    /// Write a geth genesis funding the senders (and holding the token with their balances;
    /// with `--workload swap`, also the two tokens and `--pairs` pairs, approved by every
    /// sender), then exit. Start the node with it and run with `--genesis-funded`.
    #[arg(long)]
    genesis_out: Option<PathBuf>,
    /// Gas limit written into `--genesis-out`.
    #[arg(long, default_value_t = 2_000_000_000)]
    genesis_gas_limit: u64,
    /// Funded accounts `--genesis-out` adds beside the senders, which the load never touches:
    /// the state's size around them (e.g. 9,900,000 with 100,000 senders for a
    /// 10,000,000-account state).
    #[arg(long, default_value_t = 0)]
    genesis_extra_accounts: u64,
    /// Chain id for `--genesis-out` (a run asks the node).
    #[arg(long, default_value_t = 1337)]
    chain_id: u64,
    /// The senders and the contracts come from a genesis written by `--genesis-out` (with the
    /// same `--accounts`, `--seed` and, for `swap`, at least as many `--pairs`).
    #[arg(long)]
    genesis_funded: bool,
    /// Key that funds the senders and deploys the contracts when not `--genesis-funded`
    /// (default: the first Hardhat dev key).
    #[arg(long)]
    funder_key: Option<String>,
    /// Wei each sender gets from the funder.
    #[arg(long, default_value_t = 1_000_000_000_000_000_000)]
    fund_wei: u128,
    #[arg(long, default_value_t = 50)]
    max_fee_gwei: u64,
    #[arg(long, default_value_t = 1_000_000_000)]
    tip_wei: u128,
    /// How long to wait, after sending, for the chain to make progress on what is left.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Accounts whose balances and nonces are checked at the end.
    #[arg(long, default_value_t = 200)]
    verify_sample: usize,
    #[arg(long)]
    report: Option<PathBuf>,
    /// SVG chart of TPS and latency over time.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Label of this run in the report and chart.
    #[arg(long, default_value = "kestrel")]
    label: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> eyre::Result<()> {
    let args = Args::parse();
    if args.workload == Workload::Swap && args.pairs == 0 {
        bail!("--pairs must be positive");
    }
    if !(0.0..=1.0).contains(&args.hot_ratio) {
        bail!("--hot-ratio must be within [0, 1]");
    }
    if args.accounts == 0 || args.batch == 0 || args.concurrency == 0 {
        bail!("--accounts, --batch and --concurrency must be positive");
    }
    if let Some(path) = &args.genesis_out {
        let accounts = workload::derive_accounts(args.seed, args.accounts);
        setup::write_genesis(
            path,
            &accounts,
            args.workload,
            args.pairs,
            args.chain_id,
            args.genesis_gas_limit,
            args.genesis_extra_accounts,
        )?;
        println!(
            "wrote {} with {} funded senders and the token at {}",
            path.display(),
            accounts.len(),
            kestrel_benches::TOKEN
        );
        if args.workload == Workload::Swap {
            println!(
                "  and {} pairs of tokens {} and {} at {}...",
                args.pairs,
                kestrel_benches::workload::TOKEN_A,
                kestrel_benches::workload::TOKEN_B,
                kestrel_benches::workload::pair(0),
            );
        }
        return Ok(());
    }
    let txs = match (args.txs, args.rate) {
        (Some(n), _) => n,
        (None, r) if r > 0.0 => (r * args.duration).round() as usize,
        (None, _) => bail!("--rate 0 (open loop) needs --txs"),
    };
    if txs == 0 {
        bail!("nothing to send");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ok = runtime.block_on(run(args, txs))?;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args, txs: usize) -> eyre::Result<bool> {
    let mut client = client::Client::new(&args.rpc[0])?;
    let chain_id = client::quantity(&client.call("eth_chainId", serde_json::json!([])).await?)?;
    let started = Instant::now();
    let accounts = workload::derive_accounts(args.seed, args.accounts);
    eprintln!(
        "derived {} accounts in {:.1}s",
        accounts.len(),
        started.elapsed().as_secs_f64()
    );
    let fees = Fees {
        max_fee_per_gas: u128::from(args.max_fee_gwei) * 1_000_000_000,
        max_priority_fee_per_gas: args.tip_wei,
    };
    let swap = args.workload == Workload::Swap;
    let pairs = if swap { args.pairs } else { 0 };
    let contracts = if args.genesis_funded {
        Contracts::genesis(pairs)
    } else {
        let funder = setup::funder(args.funder_key.as_deref())?;
        let plan = setup::FundPlan {
            funder: &funder,
            accounts: &accounts,
            workload: args.workload,
            pairs,
            chain_id,
            fees,
            fund_wei: args.fund_wei,
        };
        let contracts = setup::fund(&mut client, &plan).await?;
        if swap {
            let hot = args.hot_ratio > 0.0;
            setup::approve_pairs(&mut client, &accounts, &contracts, hot, chain_id, fees).await?;
        }
        contracts
    };
    let reserves_before = if swap {
        setup::check_swap_contracts(&mut client, &contracts).await?;
        let reserves = verify::read_reserves(&mut client, &contracts.pairs).await?;
        if let Some(i) = reserves
            .iter()
            .position(|r| r.reserve0.is_zero() || r.reserve1.is_zero())
        {
            bail!("pair {} has no reserves", contracts.pairs[i]);
        }
        reserves
    } else {
        Vec::new()
    };
    let nonces = setup::nonces(&mut client, &accounts).await?;

    let specs = workload::plan(&PlanParams {
        workload: args.workload,
        txs,
        accounts: accounts.len(),
        hot_ratio: args.hot_ratio,
        hot_accounts: args.hot_accounts,
        pairs,
        seed: args.seed,
    });
    let signing = Instant::now();
    let k = accounts.len();
    let signed = workload::parallel_map(0..specs.len(), |j| {
        let spec = &specs[j];
        let nonce = nonces[spec.sender as usize] + (j / k) as u64;
        let tx = workload::build(spec, &accounts, nonce, chain_id, fees, &contracts);
        workload::sign(&accounts[spec.sender as usize].key, tx)
    });
    let signing_seconds = signing.elapsed().as_secs_f64();
    eprintln!(
        "signed {} transactions in {signing_seconds:.1}s ({:.0}/s)",
        signed.len(),
        signed.len() as f64 / signing_seconds
    );
    let sample = verify::sample(&accounts, args.verify_sample, args.hot_accounts, args.seed);
    let before = verify::read_state(&mut client, &accounts, &sample, &contracts).await?;

    let hashes: Vec<_> = signed.iter().map(|s| s.hash).collect();
    let raw_hex: Vec<String> = signed.into_iter().map(|s| s.raw_hex).collect();
    let tracker = Arc::new(Tracker::new(&hashes));
    let head = client::quantity(
        &client
            .call("eth_blockNumber", serde_json::json!([]))
            .await?,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(
        follow::Follower {
            client: client::Client::new(&args.rpc[0])?,
            tracker: tracker.clone(),
            from: head + 1,
        }
        .run(stop.clone()),
    );
    let progress = progress(&tracker, args.quiet);
    send::run(
        send::SendPlan {
            urls: args.rpc.clone(),
            raw_hex: Arc::new(raw_hex),
            accounts: accounts.len(),
            batch: args.batch,
            concurrency: args.concurrency,
            rate: args.rate,
        },
        tracker.clone(),
    )
    .await?;
    drain(&tracker, Duration::from_secs_f64(args.drain_timeout)).await;
    stop.store(true, Ordering::Release);
    let blocks = follower.await??;
    progress.abort();

    let offered = (args.rate > 0.0).then_some(args.rate);
    let figures = report::figures(&tracker, offered);
    let outcome = verify::check(
        &mut client,
        &verify::Inputs {
            tracker: &tracker,
            specs: &specs,
            accounts: &accounts,
            nonces: &nonces,
            sample: &sample,
            before: &before,
            contracts: &contracts,
            reserves_before: &reserves_before,
            other_rpcs: &args.rpc[1..],
        },
    )
    .await?;
    let mut summary = serde_json::json!({
        "label": args.label,
        "rpc": args.rpc,
        "workload": args.workload,
        "accounts": accounts.len(),
        "hot_ratio": args.hot_ratio,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "chain_id": chain_id,
        "signing_seconds": signing_seconds,
        "signing_tps": figures.txs as f64 / signing_seconds,
        "figures": figures,
        "verify": outcome,
        "blocks": blocks,
    });
    if swap {
        summary["pairs"] = serde_json::json!(pairs);
        summary["contracts"] = serde_json::json!({
            "token_a": contracts.token_a,
            "token_b": contracts.token_b,
            "pairs": contracts.pairs,
        });
    }
    print_summary(&args.label, &summary);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .wrap_err_with(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.chart {
        let title = format!("{}: {:?} workload", args.label, args.workload);
        report::chart(path, &title, &figures.timeline)?;
    }
    for problem in &outcome.problems {
        eprintln!("FAILED: {problem}");
    }
    Ok(outcome.problems.is_empty())
}

/// Waits until every accepted transaction is final, or the chain made no progress on them for
/// `patience`.
async fn drain(tracker: &Tracker, patience: Duration) {
    let c = &tracker.counters;
    let mut last = (0, Instant::now());
    loop {
        let done = c.finalized.load(Ordering::Relaxed) + c.rejected.load(Ordering::Relaxed);
        if done >= tracker.len() as u64 {
            return;
        }
        if done > last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > patience {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn progress(tracker: &Arc<Tracker>, quiet: bool) -> tokio::task::JoinHandle<()> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(tracker.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} sent  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let tracker = tracker.clone();
    tokio::spawn(async move {
        loop {
            let c = &tracker.counters;
            bar.set_position(c.submitted.load(Ordering::Relaxed));
            bar.set_message(format!(
                "accepted {} rejected {} included {} final {}",
                c.accepted.load(Ordering::Relaxed),
                c.rejected.load(Ordering::Relaxed),
                c.included.load(Ordering::Relaxed),
                c.finalized.load(Ordering::Relaxed),
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

fn print_summary(label: &str, summary: &serde_json::Value) {
    let f = &summary["figures"];
    let r = &f["rates"];
    let lat = |k: &str, p: &str| f[k][p].as_f64().unwrap_or(f64::NAN);
    println!(
        "{label}: txs {} accepted {} included {} finalized {} | TPS offered {} submitted {:.0} included {:.0} finalized {:.0} | to inclusion p50/p95/p99 {:.0}/{:.0}/{:.0} ms | to finality p50/p95/p99 {:.0}/{:.0}/{:.0} ms | signing {:.0} tx/s",
        f["txs"],
        f["accepted"],
        f["included"],
        f["finalized"],
        r["offered_tps"],
        r["submitted_tps"].as_f64().unwrap_or(0.0),
        r["included_tps"].as_f64().unwrap_or(0.0),
        r["finalized_tps"].as_f64().unwrap_or(0.0),
        lat("latency_to_inclusion", "p50_ms"),
        lat("latency_to_inclusion", "p95_ms"),
        lat("latency_to_inclusion", "p99_ms"),
        lat("latency_to_finality", "p50_ms"),
        lat("latency_to_finality", "p95_ms"),
        lat("latency_to_finality", "p99_ms"),
        summary["signing_tps"].as_f64().unwrap_or(0.0),
    );
    if let Some(errors) = f["errors"].as_object().filter(|e| !e.is_empty()) {
        println!(
            "{label}: errors {}",
            serde_json::Value::Object(errors.clone())
        );
    }
}
