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

#[path = "../kestrel-loadgen/client.rs"]
#[allow(dead_code)]
mod client;

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

/// Notifications and answers as the node sends them; only the fields the checks read.
#[derive(Deserialize)]
struct Incoming<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<Notification<'a>>,
}

#[derive(Deserialize)]
struct Notification<'a> {
    subscription: &'a str,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct HeadFields<'a> {
    number: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogFields<'a> {
    block_number: &'a str,
    log_index: &'a str,
    transaction_hash: B256,
}

fn hex_u64(s: &str) -> eyre::Result<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).wrap_err_with(|| format!("quantity {s}"))
}

/// Where the WebSocket endpoint is: socket address, Host header, path.
struct Endpoint {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> eyre::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| eyre!("only ws:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
            .next()
            .ok_or_else(|| eyre!("{host} resolves to nothing"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    async fn connect(&self, rcvbuf: Option<u32>) -> eyre::Result<(Sender<Ws>, Receiver<Ws>)> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bytes) = rcvbuf {
            // Before connecting, so the window the node sees is small from the start.
            socket.set_recv_buffer_size(bytes)?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Handshake::new(stream.compat(), &self.host, &self.path);
        match client.handshake().await? {
            ServerResponse::Accepted { .. } => Ok(client.into_builder().finish()),
            ServerResponse::Redirect { status_code, .. } => bail!("redirected ({status_code})"),
            ServerResponse::Rejected { status_code } => bail!("rejected ({status_code})"),
        }
    }
}

async fn subscribe(
    tx: &mut Sender<Ws>,
    rx: &mut Receiver<Ws>,
    id: u64,
    params: Value,
) -> eyre::Result<String> {
    let call = json!({"jsonrpc": "2.0", "id": id, "method": "eth_subscribe", "params": params});
    tx.send_text(call.to_string()).await?;
    tx.flush().await?;
    let mut buf = Vec::new();
    // Nothing else can arrive before the answer: every earlier subscription's answer was read.
    rx.receive_data(&mut buf).await?;
    let msg: Incoming = serde_json::from_slice(&buf)?;
    match (msg.id, msg.result, msg.error) {
        (Some(got), Some(result), None) if got == id => Ok(serde_json::from_str(result.get())?),
        _ => bail!("eth_subscribe {params}: {}", String::from_utf8_lossy(&buf)),
    }
}

/// Held by a subscriber until it has subscribed: a place in the connection burst, and the
/// main task's count of subscribers not yet ready.
type Ready = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::mpsc::Sender<()>,
);

/// One subscriber: `logs` first, then `newHeads`, so every block whose head it is sent has its
/// logs sent too (both read the node's feed; the logs one started reading first).
async fn subscriber(
    endpoint: Arc<Endpoint>,
    follow: Follow,
    token: Address,
    record: Arc<Mutex<Record>>,
    ready: Ready,
) {
    if let Err(err) = subscriber_inner(&endpoint, &follow, token, &record, ready).await {
        record.lock().problems.push(format!("{err:#}"));
    }
}

async fn subscriber_inner(
    endpoint: &Endpoint,
    follow: &Follow,
    token: Address,
    record: &Mutex<Record>,
    ready: Ready,
) -> eyre::Result<()> {
    let (mut tx, mut rx) = endpoint.connect(None).await?;
    let logs_id = subscribe(&mut tx, &mut rx, 1, json!(["logs", follow.filter(token)])).await?;
    let heads_id = subscribe(&mut tx, &mut rx, 2, json!(["newHeads"])).await?;
    drop(ready);
    let mut buf = Vec::new();
    // Until the main task has what it needs and aborts this task.
    loop {
        buf.clear();
        let received = rx.receive_data(&mut buf).await;
        let at = Instant::now();
        received.wrap_err("receiving")?;
        let msg: Incoming = serde_json::from_slice(&buf)
            .wrap_err_with(|| format!("parsing {}", String::from_utf8_lossy(&buf)))?;
        let Some(note) = msg.params else {
            bail!("unexpected message: {}", String::from_utf8_lossy(&buf));
        };
        if let Some(err) = note.error {
            bail!("subscription {} closed: {}", note.subscription, err.get());
        }
        let result = note
            .result
            .ok_or_else(|| eyre!("notification without result"))?;
        if note.subscription == heads_id {
            let head: HeadFields = serde_json::from_str(result.get())?;
            let number = hex_u64(head.number)?;
            record.lock().heads.push((number, at));
        } else if note.subscription == logs_id {
            let log: LogFields = serde_json::from_str(result.get())?;
            record.lock().logs.push(LogKey {
                block: hex_u64(log.block_number)?,
                log_index: hex_u64(log.log_index)?,
                tx: log.transaction_hash,
            });
        } else {
            bail!(
                "notification for an unknown subscription {}",
                note.subscription
            );
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct SlowReport {
    subscriptions: usize,
    /// Subscriptions the node closed, with their reason.
    closed: Vec<String>,
    /// Notifications read once the run was over (its backlog).
    backlog_messages: u64,
    passed: bool,
}

/// The slow subscriber: subscribes to everything, never reads until `stop`, then reads its
/// backlog and reports which subscriptions the node closed and why.
async fn slow_subscriber(
    endpoint: Arc<Endpoint>,
    pending_subscriptions: usize,
    stop: tokio::sync::oneshot::Receiver<()>,
    problems: Arc<Mutex<Vec<String>>>,
) -> SlowReport {
    let mut report = SlowReport::default();
    let run = async {
        let (mut tx, mut rx) = endpoint.connect(Some(SLOW_RCVBUF_BYTES)).await?;
        let mut ids = Vec::new();
        let pending = std::iter::repeat_n(
            json!(["newPendingTransactions", true]),
            pending_subscriptions,
        );
        let all = pending.chain([json!(["logs", {}]), json!(["newHeads"])]);
        for (id, params) in all.enumerate() {
            ids.push(subscribe(&mut tx, &mut rx, id as u64 + 1, params).await?);
        }
        report.subscriptions = ids.len();
        let _ = stop.await;
        let mut buf = Vec::new();
        let mut closed: HashMap<String, String> = HashMap::new();
        let draining = Instant::now();
        while closed.len() < ids.len() && draining.elapsed() < SLOW_DRAIN_MAX {
            let Ok(received) = tokio::time::timeout(SLOW_DRAIN_IDLE, {
                buf.clear();
                rx.receive_data(&mut buf)
            })
            .await
            else {
                break;
            };
            received.wrap_err("reading the slow subscriber's backlog")?;
            report.backlog_messages += 1;
            let msg: Incoming = serde_json::from_slice(&buf)?;
            let note = msg
                .params
                .ok_or_else(|| eyre!("unexpected: {}", String::from_utf8_lossy(&buf)))?;
            if let Some(reason) = closed.get(note.subscription) {
                bail!(
                    "subscription {} sent a notification after its close ({reason})",
                    note.subscription
                );
            }
            if let Some(err) = note.error {
                closed.insert(note.subscription.to_string(), err.get().to_string());
            }
        }
        report.closed = closed.into_values().collect();
        report.closed.sort();
        eyre::Ok(())
    };
    if let Err(err) = run.await {
        problems.lock().push(format!("slow subscriber: {err:#}"));
    }
    report.passed = !report.closed.is_empty()
        && report
            .closed
            .iter()
            .all(|r| r.contains("subscriber too slow"));
    if !report.passed {
        problems.lock().push(format!(
            "slow subscriber: expected its subscriptions closed as too slow, got {:?}",
            report.closed
        ));
    }
    report
}

/// When the poller first saw each block number (`eth_blockNumber` at or past it).
#[derive(Default)]
struct Seen {
    at: BTreeMap<u64, Instant>,
    /// Blocks the poller did not see as the head (it saw a later one first): no latency sample.
    skipped: Vec<u64>,
    head: u64,
}

async fn poller(mut http: Client, every: Duration, seen: Arc<Mutex<Seen>>) -> eyre::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let head = quantity(&http.call("eth_blockNumber", json!([])).await?)?;
        let at = Instant::now();
        let mut seen = seen.lock();
        if seen.at.is_empty() {
            seen.at.insert(head, at);
            seen.head = head;
            continue;
        }
        if head > seen.head {
            for n in seen.head + 1..head {
                seen.skipped.push(n);
            }
            seen.at.insert(head, at);
            seen.head = head;
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct Memory {
    /// (seconds since start, VmRSS kB, RssAnon kB)
    samples: Vec<(f64, u64, u64)>,
    vm_rss_max_kb: u64,
    rss_anon_max_kb: u64,
    vm_rss_start_kb: u64,
    vm_rss_end_kb: u64,
}

fn read_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

async fn sample_memory(pid: u32, start: Instant, memory: Arc<Mutex<Memory>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some((rss, anon)) = read_rss(pid) else {
            return;
        };
        let mut m = memory.lock();
        m.samples.push((start.elapsed().as_secs_f64(), rss, anon));
        m.vm_rss_max_kb = m.vm_rss_max_kb.max(rss);
        m.rss_anon_max_kb = m.rss_anon_max_kb.max(anon);
        if m.vm_rss_start_kb == 0 {
            m.vm_rss_start_kb = rss;
        }
        m.vm_rss_end_kb = rss;
    }
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut us: Vec<i64>) -> Option<Self> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        Some(Self {
            samples: us.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

#[derive(Debug, Default, Serialize)]
struct Report {
    subscribers: usize,
    connected: usize,
    seconds: f64,
    /// The blocks every subscriber was checked over: from when all were subscribed to the stop.
    first_block: u64,
    last_block: u64,
    heads_expected: u64,
    heads_received: u64,
    subscribers_heads_ok: usize,
    logs_expected: u64,
    logs_received: u64,
    subscribers_logs_ok: usize,
    exact_log_checks: usize,
    /// Head notification received minus when the HTTP poller first saw the block, over every
    /// subscriber and block (blocks the poller skipped have no sample).
    head_latency: Option<Latency>,
    /// Per block: (number, fastest, median, slowest subscriber) in ms. A block whose fastest
    /// subscriber is late was late leaving the node's feed; one with a wide spread, in the
    /// sending (or in this client).
    head_latency_by_block: Vec<(u64, f64, f64, f64)>,
    poller_skipped_blocks: usize,
    slow: Option<SlowReport>,
    memory: Option<Memory>,
    problems_total: usize,
    problems: Vec<String>,
    passed: bool,
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

fn signed_us(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_micros() as i64,
        None => -(earlier.duration_since(later).as_micros() as i64),
    }
}

fn summary(r: &Report) -> String {
    let latency = r.head_latency.as_ref().map_or("-".into(), |l| {
        format!("p50 {:.1} ms p99 {:.1} ms", l.p50_ms, l.p99_ms)
    });
    let slow = r.slow.as_ref().map_or("none".into(), |s| {
        if s.passed {
            format!("closed ({} subscriptions)", s.closed.len())
        } else {
            "NOT closed".into()
        }
    });
    let memory = r.memory.as_ref().map_or("-".into(), |m| {
        format!(
            "VmRSS max {} MiB, RssAnon max {} MiB",
            m.vm_rss_max_kb / 1024,
            m.rss_anon_max_kb / 1024
        )
    });
    format!(
        "wsbench: {} {}/{} subscribers, blocks {}..={}, heads in order {}/{} ({} of {}), logs {}/{} \
         ({} of {}), head latency {latency}, slow subscriber {slow}, node {memory}",
        if r.passed { "PASS" } else { "FAIL" },
        r.connected,
        r.subscribers,
        r.first_block,
        r.last_block,
        r.subscribers_heads_ok,
        r.subscribers,
        r.heads_received,
        r.heads_expected,
        r.subscribers_logs_ok,
        r.subscribers,
        r.logs_received,
        r.logs_expected,
    )
}

type Expected = HashMap<(Side, Address), Vec<LogKey>>;

/// `eth_getLogs` for every follower of one side at once (a topic position with all their
/// accounts), split by account: each follower's expected logs, in chain order.
async fn expected_logs(
    http: &mut Client,
    args: &Args,
    follows: &[Follow],
    from: u64,
    to: u64,
) -> eyre::Result<Expected> {
    let mut expected = Expected::new();
    if to < from {
        return Ok(expected);
    }
    for side in [Side::Sender, Side::Recipient] {
        let accounts: Vec<B256> = follows
            .iter()
            .filter(|f| f.side == side)
            .map(|f| B256::left_padding_from(f.account.as_slice()))
            .collect();
        if accounts.is_empty() {
            continue;
        }
        let topics = match side {
            Side::Sender => json!([transfer_topic(), accounts]),
            Side::Recipient => json!([transfer_topic(), null, accounts]),
        };
        let filter = json!({"address": args.token, "topics": topics,
            "fromBlock": format!("{from:#x}"), "toBlock": format!("{to:#x}")});
        let logs = http.call("eth_getLogs", json!([filter])).await?;
        for log in logs
            .as_array()
            .ok_or_else(|| eyre!("eth_getLogs: not a list"))?
        {
            let topic = &log["topics"][if side == Side::Sender { 1 } else { 2 }];
            let who: B256 = serde_json::from_value(topic.clone())?;
            expected
                .entry((side, Address::from_word(who)))
                .or_default()
                .push(log_key(log)?);
        }
    }
    Ok(expected)
}

fn log_key(log: &Value) -> eyre::Result<LogKey> {
    Ok(LogKey {
        block: quantity(&log["blockNumber"])?,
        log_index: quantity(&log["logIndex"])?,
        tx: serde_json::from_value(log["transactionHash"].clone())?,
    })
}

/// The first `--exact-checks` followers' own filters, queried as they are: the union query and
/// its local split must agree with them.
async fn exact_checks(
    http: &mut Client,
    args: &Args,
    follows: &[Follow],
    expected: &Expected,
    from: u64,
    to: u64,
    problems: &Mutex<Vec<String>>,
) -> eyre::Result<usize> {
    let mut done = 0;
    for follow in follows.iter().take(args.exact_checks) {
        if to < from {
            break;
        }
        let mut filter = follow.filter(args.token);
        filter["fromBlock"] = json!(format!("{from:#x}"));
        filter["toBlock"] = json!(format!("{to:#x}"));
        let logs = http.call("eth_getLogs", json!([filter])).await?;
        let got = logs
            .as_array()
            .ok_or_else(|| eyre!("eth_getLogs: not a list"))?
            .iter()
            .map(log_key)
            .collect::<eyre::Result<Vec<_>>>()?;
        let want = expected
            .get(&(follow.side, follow.account))
            .cloned()
            .unwrap_or_default();
        if got != want {
            problems.lock().push(format!(
                "eth_getLogs for {:?} {} gave {got:?}, the union query {want:?}",
                follow.side, follow.account
            ));
        }
        done += 1;
    }
    Ok(done)
}
