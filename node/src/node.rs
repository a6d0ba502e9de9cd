//! Wiring: opens the database, starts the stages, RPC and metrics, and shuts them down in order.

use crate::cli::{ExecutorKind, NodeArgs, SyncMode};
use crate::{disk::DiskMonitor, validator};
use alloy_primitives::B256;
use crossbeam_channel::{Receiver, Sender};
use eyre::{WrapErr, bail};
use kestrel_pipeline::{
    Executor, ParallelExecutor, SequentialExecutor,
    mempool::{IngressStage, PoolConfig, TxPool, Validator},
    stages::{
        COMMIT_QUEUE_MAX, CommitStage, EXECUTION_QUEUE_MAX, ExecutionStage, RESULTS_QUEUE_MAX,
        RecentHashes,
    },
    state::LatestState,
    status::ChainStatus,
};
use kestrel_storage::{ChainView, Durability, Overlay, Store};
use kestrel_types::{ChainSpec, ExecutionResult, OrderedBlock};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// Allocations from this size on log the progress of their write into a new datadir.
const GENESIS_PROGRESS_ACCOUNTS_MIN: u64 = 1_000_000;

/// Histogram buckets for every `_seconds` metric: 100 µs to 30 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

pub fn run(args: NodeArgs) -> eyre::Result<()> {
    let mut spec = match (&args.genesis, args.dev) {
        (Some(path), _) => ChainSpec::from_genesis_file(path)?,
        (None, true) => ChainSpec::dev(),
        (None, false) => bail!("give --dev or --genesis FILE"),
    };
    if let Some(gas_limit) = args.gas_limit {
        spec.gas_limit = gas_limit;
    }
    // Every chain runs BFT consensus; the dev chain's validator set is this node alone.
    let setup = validator::Setup::load(&args)?;
    let beneficiary = args.beneficiary.unwrap_or(setup.address());
    let spec = Arc::new(spec);

    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(args.metrics)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &SECONDS_BUCKETS,
        )?
        .install()
        .wrap_err_with(|| format!("starting metrics on {}", args.metrics))?;
    describe_metrics();
    let archive_io = validator::configure_archive(args.archive_io.into())?;
    metrics::gauge!("kestrel_node_info", "version" => env!("CARGO_PKG_VERSION"), "chain_id" => spec.chain_id.to_string(), "archive_io" => archive_io.label()).set(1.0);
    crate::memory::spawn_watchdog().wrap_err("starting the memory watchdog")?;

    std::fs::create_dir_all(&args.datadir).wrap_err("creating datadir")?;
    let store = Arc::new(
        Store::open_with_archive(
            &args.datadir,
            Durability::Durable,
            validator::store::archive_config(),
        )
        .wrap_err("opening database")?
        .with_history(args.history_blocks),
    );
    // Genesis goes in before RPC answers (RPC serves committed blocks only), unless state sync
    // fills the database: RPC answers meanwhile, so that `/health` says so (503, `syncing`).
    let sync_state = state_sync_wanted(&args, &store)?;
    if !sync_state {
        init_genesis(&store, &spec)?;
    }
    let status = Arc::new(ChainStatus::default());
    let connected = validator::connect(setup, spec.chain_id, &status)?;
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("rpc")
        .on_thread_park(crate::memory::collect_on_idle)
        .build()?;
    let signal = {
        let stop = stop.clone();
        runtime.spawn(async move {
            wait_for_signal().await;
            stop.store(true, Ordering::Release);
        })
    };
    let pool = Arc::new(TxPool::with_config(PoolConfig {
        txs_max: args.txpool_txs_max,
        sender_txs_max: args.txpool_sender_txs_max,
        queued_lifetime: Duration::from_secs(args.txpool_queued_lifetime_s),
    }));
    let state = LatestState {
        store: store.clone(),
        overlay: Arc::new(Overlay::default()),
    };
    let (ingress, ingress_threads) = IngressStage {
        pool: pool.clone(),
        validator: Validator::new(spec.clone(), spec.gas_limit),
        state: state.clone(),
        status: status.clone(),
    }
    .spawn(args.ingress_threads);
    let config = kestrel_rpc::RpcConfig {
        addr: SocketAddr::new(args.http_addr, args.http_port),
        // `/health` judges the head's age in block intervals.
        block_time_ms: args.block_time_ms,
        limits: args.rpc_limits(),
        ws: args.ws(),
        ..Default::default()
    };
    let ctx = kestrel_rpc::RpcContext {
        store: store.clone(),
        spec: spec.clone(),
        pool: pool.clone(),
        ingress: ingress.clone(),
        status: status.clone(),
    };
    let (bound, server) = runtime
        .block_on(kestrel_rpc::start(config, ctx))
        .wrap_err("starting JSON-RPC")?;
    tracing::info!(target: "node", %bound, "JSON-RPC listening");

    if sync_state {
        let min_height = match args.sync {
            SyncMode::Auto => args.sync_state_distance,
            _ => 0,
        };
        validator::state_sync(&connected, &store, &args.datadir, &stop, min_height)?;
        if stop.load(Ordering::Acquire) {
            tracing::info!(target: "node", "stopped during state sync; a restart resumes it");
            return Ok(());
        }
        // `--sync auto` on a short chain.
        if store.view(|r| r.head())??.is_none() {
            init_genesis(&store, &spec)?;
        }
    }
    let head_number = store.view(|r| r.head())??.unwrap_or(0);
    let head_hash = store
        .view(|r| r.block_hash(head_number))??
        .expect("head hash exists");
    tracing::info!(target: "node", chain_id = spec.chain_id, head = head_number, %head_hash, "database open");
    for field in [&status.proposed, &status.executed, &status.committed] {
        ChainStatus::set(field, head_number);
    }

    let disk = DiskMonitor {
        datadir: args.datadir.clone(),
        min_free_bytes: args.min_free_disk_mb.saturating_mul(1 << 20),
        status: status.clone(),
        stop: stop.clone(),
    };
    let disk = spawn("disk", move || disk.run());

    let executor = match args.executor {
        ExecutorKind::Sequential => Box::new(SequentialExecutor) as Box<dyn Executor>,
        ExecutorKind::Parallel => Box::new(ParallelExecutor::new(args.exec_threads)),
    };
    let stages = Stages::start(&spec, executor, &state, &pool, &status, head_hash);

    let mut threads = vec![validator::start(
        connected,
        validator::Wiring {
            spec: spec.clone(),
            store: store.clone(),
            state: state.clone(),
            pool: pool.clone(),
            ingress,
            status: status.clone(),
            results: stages.results,
            proposals: stages.blocks,
            stop: stop.clone(),
            datadir: args.datadir.clone(),
            beneficiary,
            block_time_ms: args.block_time_ms,
            execution_delay: args.execution_delay,
        },
    )?];
    threads.extend(stages.threads);

    runtime.block_on(async {
        // Until a signal: the stages run on their threads, RPC on the runtime's.
        signal.await.ok();
        tracing::info!(target: "node", "shutting down: finishing in-flight blocks");
        server.stop().ok();
        server.stopped().await;
    });
    drop(runtime);
    // The driver stops ordering; execution and commit drain what was finalized, then hang up.
    stop.store(true, Ordering::Release);
    for t in threads.into_iter().chain(ingress_threads).chain([disk]) {
        if t.join().is_err() {
            bail!("a stage panicked");
        }
    }
    let committed = store.view(|r| r.head())??.unwrap_or(0);
    // Durable before exit, whoever still holds the store: a clean stop loses nothing even to a
    // power loss right after it.
    let durable = store.sync().wrap_err("syncing the database")?.unwrap_or(0);
    drop(state);
    drop(store);
    tracing::info!(target: "node", committed, durable, "database closed");
    Ok(())
}

/// Writes the genesis block and state into an empty database, or checks the stored genesis.
fn init_genesis(store: &Store, spec: &ChainSpec) -> eyre::Result<()> {
    let genesis = store
        .init_genesis_with_progress(spec, &mut |p| {
            // Logged for large allocations only: 1,000,000 accounts take a few seconds, 10
            // million most of a minute, and a node silent that long looks stuck.
            if p.total >= GENESIS_PROGRESS_ACCOUNTS_MIN {
                tracing::info!(target: "node", done = p.done, total = p.total, "writing the genesis state");
            }
        })
        .wrap_err("initialising genesis")?;
    tracing::info!(target: "node", genesis = %genesis.hash, "genesis");
    Ok(())
}

/// Whether this start fills the database by state sync: a restore was under way when the node
/// stopped (whatever the flags now say: the datadir is half written), or `--sync state|auto`
/// on a full node whose database is empty.
fn state_sync_wanted(args: &NodeArgs, store: &Store) -> eyre::Result<bool> {
    if store.restore_progress()?.is_some() {
        tracing::info!(target: "node", "a state sync was under way: resuming it");
        return Ok(true);
    }
    if !args.full && args.sync != SyncMode::Full {
        bail!("--sync state|auto is for full nodes (--full): a validator syncs by blocks");
    }
    let empty = store.view(|r| r.head())??.is_none();
    Ok(empty && args.sync != SyncMode::Full)
}

/// Execution and commit on their threads: finalized blocks in, execution results out.
pub(crate) struct Stages {
    pub blocks: Sender<OrderedBlock>,
    pub results: Receiver<ExecutionResult>,
    pub threads: Vec<thread::JoinHandle<()>>,
}

impl Stages {
    /// The stages of a database whose head is `head_hash`.
    pub(crate) fn start(
        spec: &Arc<ChainSpec>,
        executor: Box<dyn Executor>,
        state: &LatestState,
        pool: &Arc<TxPool>,
        status: &Arc<ChainStatus>,
        head_hash: B256,
    ) -> Self {
        let hashes = Arc::new(RecentHashes::new(state.store.clone()));
        let (blocks, blocks_rx) = crossbeam_channel::bounded(EXECUTION_QUEUE_MAX);
        let (executed_tx, executed_rx) = crossbeam_channel::bounded(COMMIT_QUEUE_MAX);
        let (results_tx, results) = crossbeam_channel::bounded(RESULTS_QUEUE_MAX);
        let execution = ExecutionStage {
            spec: spec.clone(),
            executor,
            state: state.clone(),
            hashes: hashes.clone(),
            status: status.clone(),
            blocks: blocks_rx,
            executed: executed_tx,
        };
        let commit = CommitStage {
            state: state.clone(),
            hashes,
            pool: pool.clone(),
            status: status.clone(),
            executed: executed_rx,
            results: results_tx,
            parent_hash: head_hash,
        };
        let threads = vec![
            spawn("execution", move || execution.run()),
            spawn("commit", move || commit.run()),
        ];
        Self {
            blocks,
            results,
            threads,
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("spawn stage thread")
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "kestrel_node_info",
        "Node version, chain id and the block archive's I/O path in labels (always 1)"
    );
    kestrel_storage::describe_metrics();
    kestrel_storage::archive::describe_metrics();
    crate::disk::describe_metrics();
    crate::memory::describe_metrics();
    kestrel_rpc::describe_metrics();
    kestrel_pipeline::describe_metrics();
}
