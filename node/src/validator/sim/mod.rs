//! Deterministic simulation of validators running the real driver (`consensus/src/sim.rs`
//! simulates only the state machine). Each validator is the driver with its payload cache,
//! finality, block sync, forwarding, builder and recovery, over a real datadir (MDBX database,
//! safety file, block log, in a temporary directory), a real pool and ingress, and the real
//! execution and commit stages. Validators talk through a simulated network under a virtual
//! clock, and a seeded RNG draws every fault: message delay (so reordering), drops, duplicates,
//! a partition that heals, and crashes with a restart from the datadir (the driver and its
//! pipeline dropped between two steps, or in the middle of one at a send: `net::Port::fuse`,
//! then reopened from the same directory).
//!
//! What is simulated and what is real: the clock is virtual (`Clock::Virtual`, read by the
//! driver and its state machine; block timestamps are virtual too); the network is the event
//! queue below; the driver runs on the simulation's thread, stepped as its loop would step it,
//! with the payload decoder and the admission of forwarded transactions inline rather than on
//! threads of their own. Execution, commit and ingress run on their real threads, but the
//! simulation waits for their answers, so that nothing depends on thread timing: logged blocks
//! reach execution at a drawn virtual time, and the driver sees each result before the next
//! event. A crash is a process crash (the database is opened with unsynced commits: no power cut
//! is simulated), and loses the pool, the blocks logged but not yet executed and everything in
//! memory.
//!
//! Checked after every step: no two validators log different blocks at a height (agreement),
//! a validator's log never shrinks, across restarts too (monotonic finality), the committed
//! blocks and state roots agree, and no transaction is in two committed blocks. At the end:
//! after the faults stop, every validator finalizes and commits `LIVENESS_BLOCKS` beyond the
//! highest height reached by then, within `LIVENESS_WINDOW_MS` (liveness); in a run where no
//! validator went down, every accepted transaction is committed in that window (nothing lost).
//!
//! `KESTREL_SIM_SEEDS=N` runs N seeds (default 1,000); `KESTREL_SIM_SEED=S` replays one. A
//! failing seed panics with the command that replays it.

mod checks;
mod net;
mod node;
mod runner;
mod scenario;

use super::{
    driver::{Input, Membership},
    payload::Payload,
};
use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use checks::{Violation, panicked};
use kestrel_consensus::bft::{BlockId, ValidatorKey, ValidatorSet};
use kestrel_net::{Inbound, Kind, PeerClass, PeerId};
use kestrel_storage::ChainView;
use kestrel_types::{ChainSpec, RecoveredTx, chain::dev_accounts};
use net::{Blown, Port};
use node::{Params, Process};
use rand::{Rng, SeedableRng, rngs::StdRng};
use scenario::Scenario;
use std::{
    collections::{BTreeMap, BinaryHeap, HashMap},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

/// Virtual time starts here (a Unix time in ms): block timestamps are virtual too.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// After the faults stop, every validator must finalize and commit this many blocks beyond the
/// highest height any had finalized...
const LIVENESS_BLOCKS: u64 = 3;
/// ...within this long (ten round timeouts at the sim's block times).
const LIVENESS_WINDOW_MS: u64 = 20_000;
const EXECUTION_DELAY: u64 = 3;

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        incarnation: u32,
        from: usize,
        kind: Kind,
        bytes: alloy_rlp::Bytes,
    },
    Wake {
        to: usize,
    },
    Execute {
        to: usize,
        incarnation: u32,
    },
    Crash(usize),
    Restart(usize),
    Submit {
        to: usize,
        tx: usize,
    },
    Partition(bool),
    Heal,
}

impl Ev {
    fn validator(&self) -> Option<usize> {
        match self {
            Ev::Deliver { to, .. }
            | Ev::Wake { to }
            | Ev::Execute { to, .. }
            | Ev::Submit { to, .. } => Some(*to),
            Ev::Crash(v) | Ev::Restart(v) => Some(*v),
            Ev::Partition(_) | Ev::Heal => None,
        }
    }
}

struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    // Min-heap on (time, insertion order): ties resolve deterministically.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One validator as the simulation sees it: a process while it is up, and what outlives it.
struct Member {
    process: Option<Process>,
    dir: PathBuf,
    port: Port,
    incarnation: u32,
    /// The earliest wake-up queued for the driver.
    wake_at: u64,
    execute_queued: bool,
    /// Highest log height seen (finalized), and last block committed.
    finalized: u64,
    committed: u64,
}

/// What a run did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    height: u64,
    submitted: usize,
    included: usize,
    /// Transactions in two finalized payloads (the second dropped at execution).
    ordered_twice: usize,
    restarts: usize,
    /// Crashes in the middle of a step (a blown fuse).
    mid_step: usize,
    events: u64,
    /// Virtual time from the end of the faults until every validator was live (and, where
    /// no pool was lost, every transaction committed): how long the faults' effects lasted.
    recovered_ms: u64,
    /// Of the finalized blocks and the execution results: equal when a seed is replayed.
    digest: B256,
}

struct Sim {
    sc: Scenario,
    rng: StdRng,
    clock: Arc<AtomicU64>,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    spec: Arc<ChainSpec>,
    set: ValidatorSet,
    keys: Vec<ValidatorKey>,
    ids: Vec<PeerId>,
    nodes: Vec<Member>,
    partitioned: bool,
    faulty: bool,
    /// The finalized chain: block id by height, and execution's (block hash, state root).
    canonical: BTreeMap<u64, BlockId>,
    results: BTreeMap<u64, (B256, B256)>,
    /// Transactions in finalized blocks' payloads, and in committed blocks, with the height.
    ordered: HashMap<B256, u64>,
    included: HashMap<B256, u64>,
    txs: Vec<Bytes>,
    /// Indexes of the transactions a validator accepted.
    accepted: Vec<usize>,
    liveness_target: Option<u64>,
    outcome: Outcome,
    _dir: tempfile::TempDir,
}

fn key(i: usize) -> ValidatorKey {
    let secret = keccak256(format!("kestrel-sim-validator-{i}"));
    ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&secret.0).expect("valid key"))
}

fn peer_id(key: &ValidatorKey) -> PeerId {
    PeerId::from_slice(&key.id().0).expect("a compressed public key")
}

/// Where datadirs go: `KESTREL_SIM_DIR`, else /dev/shm (the safety file and block log fsync
/// on every vote and commit; on tmpfs that costs nothing), else the temp dir.
fn scratch() -> PathBuf {
    if let Ok(dir) = std::env::var("KESTREL_SIM_DIR") {
        return dir.into();
    }
    let shm = PathBuf::from("/dev/shm");
    if tempfile::tempdir_in(&shm).is_ok() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Transfer number `k`: from dev account `k % 10`, with nonce `k / 10`.
fn transfer(spec: &ChainSpec, k: usize) -> Bytes {
    let accounts = dev_accounts();
    let (_, secret) = accounts[k % accounts.len()];
    let tx = TxEip1559 {
        chain_id: spec.chain_id,
        nonce: (k / accounts.len()) as u64,
        gas_limit: 21_000,
        max_fee_per_gas: 100_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(Address::with_last_byte(0xee)),
        value: U256::from(k + 1),
        ..Default::default()
    };
    let secret = secp256k1::SecretKey::from_byte_array(&secret.0).expect("dev key");
    let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
    let (rec, bytes) = secp256k1::SECP256K1
        .sign_ecdsa_recoverable(&msg, &secret)
        .serialize_compact();
    let sig = Signature::from_bytes_and_parity(&bytes, i32::from(rec) != 0);
    RecoveredTx::recover(TxEnvelope::Eip1559(tx.into_signed(sig)))
        .expect("signed by a dev key")
        .encoded()
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kestrel-sim-")
            .tempdir_in(scratch())
            .expect("scratch directory");
        let keys: Vec<_> = (0..sc.n).map(key).collect();
        let set = ValidatorSet::new(keys.iter().map(|k| (k.id(), 1)).collect()).expect("set");
        let spec = Arc::new(ChainSpec::dev());
        let nodes = (0..sc.n)
            .map(|i| Member {
                process: None,
                dir: dir.path().join(format!("v{i}")),
                port: Port::default(),
                incarnation: 0,
                wake_at: u64::MAX,
                execute_queued: false,
                finalized: 0,
                committed: 0,
            })
            .collect();
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(sc.seed),
            clock: Arc::new(AtomicU64::new(EPOCH_MS)),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            ids: keys.iter().map(peer_id).collect(),
            txs: (0..sc.txs).map(|k| transfer(&spec, k)).collect(),
            accepted: Vec::new(),
            spec,
            set,
            keys,
            nodes,
            partitioned: false,
            faulty: true,
            canonical: BTreeMap::new(),
            results: BTreeMap::new(),
            ordered: HashMap::new(),
            included: HashMap::new(),
            liveness_target: None,
            outcome: Outcome::default(),
            _dir: dir,
            sc,
        };
        for v in 0..sim.sc.n {
            sim.push(0, Ev::Restart(v));
        }
        let outage = sim
            .sc
            .outage
            .map(|(at, back)| (0..sim.sc.n).map(move |v| (v, at, back)));
        for (v, at, back) in sim
            .sc
            .crashes
            .clone()
            .into_iter()
            .chain(outage.into_iter().flatten())
        {
            sim.push(at, Ev::Crash(v));
            sim.push(back, Ev::Restart(v));
        }
        if let Some((start, end, _)) = sim.sc.partition {
            sim.push(start, Ev::Partition(true));
            sim.push(end, Ev::Partition(false));
        }
        let mut times: Vec<u64> = (0..sim.sc.txs)
            .map(|_| sim.rng.random_range(1..sim.sc.heal_ms))
            .collect();
        times.sort_unstable();
        for (tx, at) in times.into_iter().enumerate() {
            let to = sim.rng.random_range(0..sim.sc.n);
            sim.push(at, Ev::Submit { to, tx });
        }
        sim.push(sim.sc.heal_ms, Ev::Heal);
        sim
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        let end = self.sc.heal_ms + LIVENESS_WINDOW_MS;
        while let Some(q) = self.queue.pop() {
            if q.at > end || self.live_enough() {
                break;
            }
            self.now = q.at;
            self.clock.store(EPOCH_MS + q.at, Ordering::Release);
            self.outcome.events += 1;
            self.event(q.ev)?;
        }
        self.outcome.recovered_ms = self.now.saturating_sub(self.sc.heal_ms);
        if self.pools_kept() {
            let lost: Vec<usize> = self.not_included().collect();
            if let Some(&first) = lost.first() {
                return Err(Violation::Lost {
                    lost: lost.len(),
                    first,
                });
            }
        }
        let needed = self.liveness_target.expect("healed");
        for (validator, n) in self.nodes.iter().enumerate() {
            if n.finalized < needed || n.committed < needed {
                return Err(Violation::Liveness {
                    validator,
                    finalized: n.finalized,
                    committed: n.committed,
                    needed,
                });
            }
        }
        self.outcome.height = self.canonical.len() as u64;
        let mut digest = B256::ZERO;
        for (height, id) in &self.canonical {
            let (hash, root) = self.results.get(height).copied().unwrap_or_default();
            digest = keccak256([digest.0, id.0.0, hash.0, root.0].concat());
        }
        self.outcome.digest =
            keccak256([digest.0, B256::from(U256::from(self.outcome.events)).0].concat());
        self.outcome.included = self.included.len();
        for n in &mut self.nodes {
            if let Some(p) = n.process.take() {
                p.crash();
            }
        }
        Ok(self.outcome)
    }

    fn event(&mut self, ev: Ev) -> Result<(), Violation> {
        let _span = tracing::info_span!("sim", t = self.now, v = ev.validator()).entered();
        match ev {
            Ev::Deliver {
                to,
                incarnation,
                from,
                kind,
                bytes,
            } => {
                if self.nodes[to].incarnation == incarnation && self.reachable(from, to) {
                    let msg = Inbound {
                        peer: self.ids[from],
                        class: PeerClass::Validator,
                        kind,
                        payload: bytes,
                    };
                    self.step(to, Some(Input::Inbound(msg)))?;
                }
            }
            Ev::Wake { to } => {
                if self.nodes[to].wake_at == self.now {
                    self.nodes[to].wake_at = u64::MAX;
                    self.step(to, None)?;
                }
            }
            Ev::Execute { to, incarnation } => {
                if self.nodes[to].incarnation == incarnation {
                    self.nodes[to].execute_queued = false;
                    self.execute(to)?;
                }
            }
            Ev::Crash(v) => {
                if self.nodes[v].process.is_some() {
                    if self.rng.random_bool(0.5) {
                        // In the middle of one of its next steps (or at the restart time).
                        *self.nodes[v].port.fuse.lock() = Some(self.rng.random_range(0..4));
                    } else {
                        self.crash(v)?;
                    }
                }
            }
            Ev::Restart(v) => {
                if self.nodes[v].port.fuse.lock().take().is_some() {
                    self.crash(v)?;
                }
                if self.nodes[v].process.is_none() {
                    self.restart(v)?;
                }
            }
            Ev::Submit { to, tx } => {
                let raw = self.txs[tx].clone();
                if let Some(p) = &self.nodes[to].process
                    && p.submit(raw).is_ok()
                {
                    self.outcome.submitted += 1;
                    self.accepted.push(tx);
                    // Forwarding goes out at the driver's next turn.
                    self.step(to, None)?;
                }
            }
            Ev::Partition(on) => {
                self.partitioned = on;
                self.connect();
            }
            Ev::Heal => {
                self.faulty = false;
                self.partitioned = false;
                self.connect();
                let highest = self.nodes.iter().map(|n| n.finalized).max().unwrap_or(0);
                self.liveness_target = Some(highest + LIVENESS_BLOCKS);
            }
        }
        Ok(())
    }

    fn restart(&mut self, v: usize) -> Result<(), Violation> {
        let members = Membership {
            key: self.keys[v].clone(),
            set: self.set.clone(),
            ids: self.ids.clone(),
        };
        let params = Params {
            dir: &self.nodes[v].dir,
            spec: &self.spec,
            clock: &self.clock,
            block_time_ms: self.sc.block_time_ms,
            execution_delay: EXECUTION_DELAY,
        };
        let port = self.nodes[v].port.clone();
        let mut process =
            Process::start(&params, members, port).map_err(|e| Violation::Crashed {
                validator: v,
                what: format!("restart: {e:#}"),
            })?;
        // The database is committed up to where the log was executed before the crash.
        let committed = process.store.view(|r| r.head()).ok().and_then(|r| r.ok());
        self.nodes[v].committed = committed.flatten().unwrap_or(0);
        self.outcome.restarts += usize::from(self.nodes[v].incarnation > 0);
        self.nodes[v].incarnation += 1;
        self.guard(v, || {
            process.driver.sim_start();
            process.driver.sim_settle();
        })?;
        self.nodes[v].process = Some(process);
        self.connect();
        self.after_step(v)
    }

    /// Runs `f` on validator `v`'s behalf; a panic (an assertion in the driver, the state
    /// machine or a stage) is a violation.
    fn guard<R>(&self, v: usize, f: impl FnOnce() -> R) -> Result<R, Violation> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|e| panicked(v, e))
    }

    fn crash(&mut self, v: usize) -> Result<(), Violation> {
        *self.nodes[v].port.fuse.lock() = None;
        if let Some(p) = self.nodes[v].process.take() {
            self.guard(v, move || p.crash())?;
            self.nodes[v].incarnation += 1;
            self.nodes[v].wake_at = u64::MAX;
            self.nodes[v].execute_queued = false;
            self.connect();
        }
        Ok(())
    }

    fn step(&mut self, v: usize, input: Option<Input>) -> Result<(), Violation> {
        let Some(p) = self.nodes[v].process.as_mut() else {
            return Ok(());
        };
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.driver.step(input);
            p.driver.sim_settle();
        }));
        match stepped {
            Ok(()) => self.after_step(v),
            // What it sent before the fuse blew is out.
            Err(e) if e.is::<Blown>() => {
                self.outcome.mid_step += 1;
                self.after_step(v)?;
                self.crash(v)
            }
            Err(e) => Err(panicked(v, e)),
        }
    }

    /// Execution and commit of what `v` logged; each result goes to its driver.
    fn execute(&mut self, v: usize) -> Result<(), Violation> {
        let Some(mut p) = self.nodes[v].process.take() else {
            return Ok(());
        };
        let (p, results) = self.guard(v, move || {
            let results = p.execute();
            (p, results)
        })?;
        self.nodes[v].process = Some(p);
        for r in results {
            let first = !self.results.contains_key(&r.number);
            let known = *self
                .results
                .entry(r.number)
                .or_insert((r.block_hash, r.state_root));
            if known != (r.block_hash, r.state_root) || r.number != self.nodes[v].committed + 1 {
                return Err(Violation::StateRoot { height: r.number });
            }
            if first {
                self.count_included(v, r.number)?;
            }
            self.nodes[v].committed = r.number;
            self.step(v, Some(Input::Executed(r)))?;
        }
        self.after_step(v)
    }

    /// After a step of `v`: its messages go out, its log is checked, its next wake-up and
    /// execution are queued.
    fn after_step(&mut self, v: usize) -> Result<(), Violation> {
        let sent = std::mem::take(&mut *self.nodes[v].port.outbox.lock());
        for s in sent {
            match s.to {
                Some(peer) => {
                    if let Some(to) = self.ids.iter().position(|id| *id == peer) {
                        self.route(v, to, s.kind, s.bytes);
                    }
                }
                None => {
                    for to in (0..self.sc.n).filter(|&to| to != v) {
                        self.route(v, to, s.kind, s.bytes.clone());
                    }
                }
            }
        }
        self.check_log(v)?;
        let Some(p) = &self.nodes[v].process else {
            return Ok(());
        };
        let wake = p
            .driver
            .sim_wake_ms()
            .saturating_sub(EPOCH_MS)
            .max(self.now + 1);
        let logged = p.has_logged();
        if wake < self.nodes[v].wake_at {
            self.nodes[v].wake_at = wake;
            self.push(wake, Ev::Wake { to: v });
        }
        if logged && !self.nodes[v].execute_queued {
            self.nodes[v].execute_queued = true;
            let at = self.now + self.rng.random_range(1..=30);
            let incarnation = self.nodes[v].incarnation;
            self.push(at, Ev::Execute { to: v, incarnation });
        }
        Ok(())
    }

    fn side(&self, v: usize) -> bool {
        self.sc.partition.as_ref().is_some_and(|(_, _, s)| s[v])
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        let up = |v: usize| self.nodes[v].process.is_some();
        up(a) && up(b) && !(self.partitioned && self.side(a) != self.side(b))
    }

    /// Who each validator's transport reports connected.
    fn connect(&mut self) {
        for v in 0..self.sc.n {
            let peers = (0..self.sc.n)
                .filter(|&u| u != v && self.reachable(v, u))
                .map(|u| self.ids[u])
                .collect();
            *self.nodes[v].port.connected.lock() = peers;
        }
    }

    fn route(&mut self, from: usize, to: usize, kind: Kind, bytes: alloy_rlp::Bytes) {
        if !self.reachable(from, to) || (self.faulty && self.rng.random_bool(self.sc.drop_prob)) {
            return;
        }
        let copies = if self.faulty && self.rng.random_bool(self.sc.duplicate_prob) {
            2
        } else {
            1
        };
        let (lo, hi) = self.sc.delay_ms;
        for _ in 0..copies {
            let at = self.now + self.rng.random_range(lo..=hi);
            let incarnation = self.nodes[to].incarnation;
            let bytes = bytes.clone();
            self.push(
                at,
                Ev::Deliver {
                    to,
                    incarnation,
                    from,
                    kind,
                    bytes,
                },
            );
        }
    }
}
