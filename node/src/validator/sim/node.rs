//! One simulated validator process: the real driver, its datadir (MDBX database, safety file,
//! block log), its pool, ingress workers and the execution and commit stages (`node::Stages`),
//! wired as `node.rs` wires them but without RPC, metrics and the network. The simulation decides when
//! logged blocks reach execution (`execute`), and `crash` drops the process like `kill -9`.

use super::net::{Port, SimTransport};
use crate::{
    node::Stages,
    validator::{
        Wiring,
        clock::Clock,
        driver::{Driver, Membership},
    },
};
use alloy_primitives::{Address, B256, Bytes};
use crossbeam_channel::{Receiver, Sender};
use kestrel_pipeline::{
    SequentialExecutor,
    mempool::{IngressHandle, IngressStage, PoolError, TxPool, Validator},
    stages::EXECUTION_QUEUE_MAX,
    state::LatestState,
    status::ChainStatus,
};
use kestrel_storage::{ChainView, Durability, Overlay, Store};
use kestrel_types::{ChainSpec, ExecutionResult, OrderedBlock, SealedBlock};
use std::{
    path::Path,
    sync::{Arc, atomic::AtomicU64},
    thread::JoinHandle,
    time::{Duration, Instant},
};
use tokio::sync::broadcast::{self, error::TryRecvError};

/// Execution and commit of a handful of small blocks take milliseconds; this long means a stage
/// died or hung.
const EXECUTION_WAIT: Duration = Duration::from_secs(60);

/// What a validator is started with, the same at every restart.
pub struct Params<'a> {
    pub dir: &'a Path,
    pub spec: &'a Arc<ChainSpec>,
    pub clock: &'a Arc<AtomicU64>,
    pub block_time_ms: u64,
    pub execution_delay: u64,
}

pub struct Process {
    pub driver: Driver,
    pub store: Arc<Store>,
    ingress: IngressHandle,
    runtime: tokio::runtime::Runtime,
    /// Blocks the driver logged, on their way to execution.
    logged: Receiver<OrderedBlock>,
    execute: Sender<OrderedBlock>,
    results: Receiver<ExecutionResult>,
    /// Blocks as the commit stage publishes them (`execute` waits for them).
    committed: broadcast::Receiver<Arc<SealedBlock>>,
    threads: Vec<JoinHandle<()>>,
}

impl Process {
    pub fn start(p: &Params<'_>, members: Membership, port: Port) -> eyre::Result<Self> {
        // A crash here is a process crash, not a power cut: unsynced commits are in the page
        // cache when the database is reopened, and fsyncs would dominate the run time.
        let store = Arc::new(Store::open_with(p.dir, Durability::Unsynced)?);
        store.init_genesis(p.spec)?;
        let head = store.view(|r| r.head())??.unwrap_or(0);
        let head_hash = store.view(|r| r.block_hash(head))??.expect("head hash");
        let status = Arc::new(ChainStatus::default());
        for field in [&status.proposed, &status.executed, &status.committed] {
            ChainStatus::set(field, head);
        }
        let committed = status.committed_blocks.subscribe();
        let pool = Arc::new(TxPool::new());
        let state = LatestState {
            store: store.clone(),
            overlay: Arc::new(Overlay::default()),
        };
        let (proposals, logged) = crossbeam_channel::bounded(EXECUTION_QUEUE_MAX);
        let (ingress, mut threads) = IngressStage {
            pool: pool.clone(),
            validator: Validator::new(p.spec.clone(), p.spec.gas_limit),
            state: state.clone(),
            status: status.clone(),
        }
        .spawn(1);
        let executor = Box::new(SequentialExecutor);
        let stages = Stages::start(p.spec, executor, &state, &pool, &status, head_hash);
        threads.extend(stages.threads);
        let dir = p.dir.join(crate::validator::CONSENSUS_DIR);
        std::fs::create_dir_all(&dir)?;
        let wiring = Wiring {
            spec: p.spec.clone(),
            store: store.clone(),
            state,
            pool,
            ingress: ingress.clone(),
            status,
            // The simulation hands the results over (`execute`), at a time it chooses.
            results: crossbeam_channel::never(),
            proposals,
            stop: Default::default(),
            datadir: p.dir.to_path_buf(),
            beneficiary: Address::ZERO,
            block_time_ms: p.block_time_ms,
            execution_delay: p.execution_delay,
        };
        let clock = Clock::Virtual(p.clock.clone());
        let net = Box::new(SimTransport(port));
        let never = crossbeam_channel::never();
        let driver = Driver::new(members, net, never, &dir, wiring, clock)?;
        Ok(Self {
            driver,
            store,
            ingress,
            runtime: tokio::runtime::Builder::new_current_thread().build()?,
            logged,
            execute: stages.blocks,
            results: stages.results,
            committed,
            threads,
        })
    }

    /// True when the driver has logged blocks that have not gone to execution.
    pub fn has_logged(&self) -> bool {
        !self.logged.is_empty()
    }

    /// Executes and commits the blocks the driver logged; their results, in order.
    pub fn execute(&mut self) -> Vec<ExecutionResult> {
        let mut sent = 0;
        while let Ok(block) = self.logged.try_recv() {
            self.execute.send(block).expect("execution stage running");
            sent += 1;
        }
        let results: Vec<ExecutionResult> = (0..sent)
            .map(|_| {
                self.results
                    .recv_timeout(EXECUTION_WAIT)
                    .expect("execution and commit answer")
            })
            .collect();
        // Results reach ordering before the commit; the simulation goes on once the blocks are
        // committed (readable, the pool's nonces advanced), so that a run does not depend on
        // the commit thread's timing.
        if let Some(last) = results.last() {
            self.wait_committed(last.number);
        }
        results
    }

    /// Waits until the commit stage has published block `number`.
    fn wait_committed(&mut self, number: u64) {
        let deadline = Instant::now() + EXECUTION_WAIT;
        loop {
            match self.committed.try_recv() {
                Ok(block) if block.header.number >= number => return,
                Ok(_) | Err(TryRecvError::Lagged(_)) => continue,
                Err(TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "block {number} not committed");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TryRecvError::Closed) => panic!("the commit stage is gone"),
            }
        }
    }

    /// Submits a raw transaction through the ingress stage, as RPC does.
    pub fn submit(&self, raw: Bytes) -> Result<B256, PoolError> {
        self.runtime.block_on(self.ingress.submit(raw))
    }

    /// Stops like `kill -9` between two driver steps: what is not in the datadir is lost (the
    /// pool, blocks logged but not executed, the state machine's memory). The stage threads are
    /// joined so that the database is closed before it is reopened.
    pub fn crash(self) {
        let Self {
            driver,
            store,
            ingress,
            runtime,
            logged,
            execute,
            results,
            committed,
            threads,
        } = self;
        drop((driver, ingress, logged, execute, runtime));
        for t in threads {
            t.join().expect("a stage panicked");
        }
        drop((results, committed));
        assert_eq!(Arc::strong_count(&store), 1, "the database is still open");
    }
}
