//! `kestrel-wsbench`: many WebSocket subscribers against one node while it is under load.
//!
//! It opens `--subscribers` connections to `--ws`, each subscribing to `logs` (the ERC-20 Transfer
//! events of one `kestrel-loadgen` account, as sender or as recipient, so each gets a few) and then
//! `newHeads`, plus one deliberately slow subscriber that subscribes to everything and never reads
//! its socket. An HTTP poller (`eth_blockNumber` every `--poll-ms`) timestamps when each block
//! became readable. On SIGTERM/SIGINT (or after `--duration`) it takes the poller's head as the
//! last block and checks that
//! - every subscriber received every head from its first up to the last, once and in order;
//! - every subscriber received exactly the logs of its filter in those blocks, in order, compared
//!   with `eth_getLogs` over HTTP (one query for the union of the filters, split locally, plus
//!   `--exact-checks` subscribers' own filters queried as they are);
//! - the slow subscriber's subscriptions were closed with the node's "subscriber too slow" reason
//!   (read once the run is over), and no other subscription was closed;
//!
//! and reports head delivery latency (notification received minus first seen by the poller,
//! p50/p99) and the node's memory (`--pid`: VmRSS and RssAnon sampled every second). Writes a JSON
//! report (`--report`), prints one summary line, exits non-zero if a check failed.

mod checks;
#[path = "../kestrel-loadgen/client.rs"]
#[allow(dead_code)]
mod client;
mod report;
mod ws;

use alloy_primitives::{Address, B256, keccak256};
use clap::Parser;
use client::{Client, quantity};
use eyre::{WrapErr, bail, eyre};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use soketto::{
    connection::{Receiver, Sender},
    handshake::{Client as Handshake, ServerResponse},
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{net::TcpSocket, task::JoinSet};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use checks::*;
use report::*;
use ws::*;

type Ws = Compat<tokio::net::TcpStream>;

/// Connections opened at once while setting up (a burst of a thousand handshakes is not what is
/// measured).
const CONNECT_CONCURRENCY: usize = 32;
/// After the stop, how long subscribers have to receive the last head.
const END_WAIT: Duration = Duration::from_secs(30);
/// Once every subscriber has the last head, how long they keep reading for that block's logs
/// (the node's `logs` and `newHeads` subscriptions are separate tasks; their order is not fixed).
const LOGS_GRACE: Duration = Duration::from_millis(1_000);
/// The slow subscriber's receive buffer: small, so its connection's send buffer fills soon.
const SLOW_RCVBUF_BYTES: u32 = 4_096;
/// Reading the slow subscriber's backlog ends once all its subscriptions are closed, after this
/// much silence, or after [`SLOW_DRAIN_MAX`] (one never closed keeps sending heads).
const SLOW_DRAIN_IDLE: Duration = Duration::from_secs(3);
const SLOW_DRAIN_MAX: Duration = Duration::from_secs(20);
/// Problems listed in the report (their count is always complete).
const PROBLEMS_LISTED_MAX: usize = 50;

#[derive(Parser, Debug)]
#[command(name = "kestrel-wsbench", version, about)]
struct Args {
    /// WebSocket endpoint (`--ws-port` of the node).
    #[arg(long, default_value = "ws://127.0.0.1:8546")]
    ws: String,
    /// HTTP JSON-RPC endpoint (the poller and `eth_getLogs`).
    #[arg(long, default_value = "http://127.0.0.1:8545")]
    rpc: String,
    /// Subscribers (connections), besides the slow one.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// `kestrel-loadgen`'s `--accounts` and `--seed`: the accounts whose Transfer events the
    /// subscribers follow.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The ERC-20 token whose events are followed (`kestrel-loadgen --genesis-out` puts it here).
    #[arg(long, default_value_t = kestrel_benches::TOKEN)]
    token: Address,
    /// The HTTP poller's interval.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Stop after this many seconds (default: at SIGTERM or SIGINT).
    #[arg(long)]
    duration: Option<f64>,
    /// Also open the slow subscriber (0: none).
    #[arg(long, default_value_t = 1)]
    slow: u8,
    /// The slow subscriber's `newPendingTransactions` (full transactions) subscriptions: more
    /// fill its connection's buffer sooner under a light load.
    #[arg(long, default_value_t = 1)]
    slow_pending_subscriptions: usize,
    /// Subscribers whose own filter is also queried with `eth_getLogs` as it is.
    #[arg(long, default_value_t = 4)]
    exact_checks: usize,
    /// The node's process id: its memory is sampled into the report.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
enum Side {
    Sender,
    Recipient,
}

/// One subscriber's `logs` filter: Transfer events of `account` on one side.
#[derive(Debug, Clone)]
struct Follow {
    account: Address,
    side: Side,
}

impl Follow {
    /// Follower `index` of `--subscribers`, spread over the accounts; even ones follow a sender,
    /// odd ones a recipient. `mixed` sends transaction `j` from account `j % accounts` and makes
    /// the odd ones ERC-20 transfers, so a sender followed is an odd account.
    fn of(index: usize, args: &Args) -> Self {
        let i = index as u64 * args.accounts / args.subscribers.max(1) as u64;
        let (i, side) = if index.is_multiple_of(2) {
            ((i | 1).min(args.accounts.saturating_sub(1)), Side::Sender)
        } else {
            (i, Side::Recipient)
        };
        Self {
            account: kestrel_benches::seeded_address(args.seed, i),
            side,
        }
    }

    fn filter(&self, token: Address) -> Value {
        let who = B256::left_padding_from(self.account.as_slice());
        match self.side {
            Side::Sender => json!({"address": token, "topics": [transfer_topic(), who]}),
            Side::Recipient => {
                json!({"address": token, "topics": [transfer_topic(), null, who]})
            }
        }
    }
}

fn transfer_topic() -> B256 {
    keccak256("Transfer(address,address,uint256)")
}

/// A log by its position, which is what a subscriber and `eth_getLogs` must agree on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
struct LogKey {
    block: u64,
    log_index: u64,
    tx: B256,
}

/// What one subscriber received, written as it goes (so a subscriber that never finishes still
/// has its record read).
#[derive(Default)]
struct Record {
    heads: Vec<(u64, Instant)>,
    logs: Vec<LogKey>,
    problems: Vec<String>,
}

#[tokio::main]
async fn main() -> eyre::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let endpoint = Arc::new(Endpoint::parse(&args.ws)?);
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let poll = tokio::spawn(poller(
        Client::new(&args.rpc)?,
        Duration::from_millis(args.poll_ms),
        seen.clone(),
    ));
    let memory = args.pid.map(|pid| {
        let memory: Arc<Mutex<Memory>> = Arc::default();
        tokio::spawn(sample_memory(pid, start, memory.clone()));
        memory
    });

    // The slow one first, so its buffer has the whole run to fill.
    let (stop_slow, slow_stopped) = tokio::sync::oneshot::channel();
    let slow = (args.slow > 0).then(|| {
        tokio::spawn(slow_subscriber(
            endpoint.clone(),
            args.slow_pending_subscriptions,
            slow_stopped,
            problems.clone(),
        ))
    });

    let follows: Vec<Follow> = (0..args.subscribers)
        .map(|i| Follow::of(i, &args))
        .collect();
    let records: Vec<Arc<Mutex<Record>>> = (0..args.subscribers).map(|_| Arc::default()).collect();
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    for (follow, record) in follows.iter().zip(&records) {
        let (endpoint, follow, record, ready) = (
            endpoint.clone(),
            follow.clone(),
            record.clone(),
            ready_tx.clone(),
        );
        let gate = gate.clone();
        let token = args.token;
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await.expect("never closed");
            subscriber(endpoint, follow, token, record, (permit, ready)).await;
        });
    }
    drop(ready_tx);
    // Every subscriber has subscribed (or failed) once all `ready` senders are gone.
    let _ = ready_rx.recv().await;
    let connected = records
        .iter()
        .filter(|r| r.lock().problems.is_empty())
        .count();
    // A block the poller has not seen yet may already be in the feed: the one after is the first
    // every subscriber must have.
    let first_block = seen.lock().head + 2;
    eprintln!(
        "wsbench: {connected}/{} subscribers ready in {:.1}s, checking from block {first_block}",
        args.subscribers,
        start.elapsed().as_secs_f64()
    );

    match args.duration {
        Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
        None => {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    if poll.is_finished() {
        poll.await??;
        bail!("the HTTP poller stopped");
    }
    let last_block = seen.lock().head;
    let seconds = start.elapsed().as_secs_f64();
    eprintln!("wsbench: stopping at block {last_block}");
    // Every subscriber that is still running gets the last head, then that block's logs.
    let waiting = Instant::now();
    while waiting.elapsed() < END_WAIT
        && !tasks.is_empty()
        && records.iter().any(|r| {
            let r = r.lock();
            r.problems.is_empty() && r.heads.last().is_none_or(|(n, _)| *n < last_block)
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(LOGS_GRACE).await;
    tasks.abort_all();
    poll.abort();
    let _ = stop_slow.send(());
    let slow = match slow {
        Some(task) => Some(task.await?),
        None => None,
    };

    let mut http = Client::new(&args.rpc)?;
    let mut report = Report {
        subscribers: args.subscribers,
        connected,
        seconds,
        first_block,
        last_block,
        ..Default::default()
    };
    if last_block < first_block {
        problems
            .lock()
            .push(format!("no block between {first_block} and the stop"));
    }
    // Expected logs: one query per side for the union of the accounts, split by account here.
    let expected = expected_logs(&mut http, &args, &follows, first_block, last_block).await?;
    let seen = std::mem::take(&mut *seen.lock());
    let mut latencies = Vec::new();
    let mut by_block: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for (i, (follow, record)) in follows.iter().zip(&records).enumerate() {
        let record = record.lock();
        let problem = |p: String| problems.lock().push(format!("subscriber {i}: {p}"));
        for p in &record.problems {
            problem(p.clone());
        }
        if record.heads.last().is_none_or(|(n, _)| *n < last_block) {
            problem(format!("never received the last head {last_block}"));
        }
        let numbers: Vec<u64> = record.heads.iter().map(|(n, _)| *n).collect();
        let want: Vec<u64> = match numbers.first() {
            Some(&first) if first <= first_block => {
                (first..=last_block.max(*numbers.last().unwrap())).collect()
            }
            first => {
                problem(format!(
                    "first head {first:?}, wanted {first_block} or earlier"
                ));
                Vec::new()
            }
        };
        report.heads_expected += (first_block..=last_block).count() as u64;
        report.heads_received += numbers
            .iter()
            .filter(|n| (first_block..=last_block).contains(n))
            .count() as u64;
        if !want.is_empty() && numbers == want {
            report.subscribers_heads_ok += 1;
        } else if !want.is_empty() {
            problem(format!("heads {numbers:?}, wanted {want:?}"));
        }
        for (n, at) in &record.heads {
            if let Some(polled) = seen.at.get(n).filter(|_| *n >= first_block) {
                latencies.push(signed_us(*at, *polled));
                by_block
                    .entry(*n)
                    .or_default()
                    .push(signed_us(*at, *polled));
            }
        }
        let got: Vec<&LogKey> = record
            .logs
            .iter()
            .filter(|l| (first_block..=last_block).contains(&l.block))
            .collect();
        let want: Vec<&LogKey> = expected
            .get(&(follow.side, follow.account))
            .map_or(Vec::new(), |logs| logs.iter().collect());
        report.logs_expected += want.len() as u64;
        report.logs_received += got.len() as u64;
        if got == want {
            report.subscribers_logs_ok += 1;
        } else {
            problem(format!("logs {got:?}, wanted {want:?}"));
        }
    }
    report.poller_skipped_blocks = seen
        .skipped
        .iter()
        .filter(|n| (first_block..=last_block).contains(*n))
        .count();
    report.exact_log_checks = exact_checks(
        &mut http,
        &args,
        &follows,
        &expected,
        first_block,
        last_block,
        &problems,
    )
    .await?;
    report.head_latency = Latency::of(latencies);
    report.head_latency_by_block = by_block
        .into_iter()
        .map(|(n, mut us)| {
            us.sort_unstable();
            let ms = |i: usize| us[i] as f64 / 1e3;
            (n, ms(0), ms(us.len() / 2), ms(us.len() - 1))
        })
        .collect();
    report.slow = slow;
    report.memory = memory.map(|m| std::mem::take(&mut *m.lock()));
    let problems = std::mem::take(&mut *problems.lock());
    report.problems_total = problems.len();
    report.problems = problems.into_iter().take(PROBLEMS_LISTED_MAX).collect();
    report.passed = report.problems_total == 0;

    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .wrap_err_with(|| format!("writing {}", path.display()))?;
    }
    for p in &report.problems {
        eprintln!("wsbench: problem: {p}");
    }
    println!("{}", summary(&report));
    if !report.passed {
        bail!("{} problems", report.problems_total);
    }
    Ok(())
}
