//! The consensus driver: owns the [`Bft`] state machine and carries out its commands with a real
//! clock, the validator network, the pool, the block log and the execution stage.
//!
//! Payloads travel with their proposal and are decoded on a thread of their own; a proposal
//! whose payload does not decode (or whose base fee is not the parent's successor) never reaches
//! consensus, so a validator votes only for blocks it can execute. Finalized blocks go to the
//! block log (fsync) and then to execution; execution results come back as `Event::Executed`.
//! A validator that is behind (at start, or when a certificate it sees is far ahead of its log)
//! stops feeding consensus and fetches finalized blocks from peers, checks them against a commit
//! proof, executes them, and then restarts the state machine from its new head.

use super::{
    Wiring,
    forward::{self, Admitter, FORWARD_TXS_MAX},
    payload::{Decoder, Payload, PayloadError, Rejected},
    store::{ChainLog, SafetyFile},
    transport::Transport,
    wire::{ConsensusEnvelope, SyncRequest, SyncResponse, SyncedBlock},
};
use alloy_primitives::{Address, B256, Bytes, keccak256};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use kestrel_consensus::{
    Round,
    bft::{
        self, Bft, Block, BlockId, Command, CommitProof, Config, Event, Message, SYNC_BLOCKS_MAX,
        SafetyState, Unverified, ValidatorIndex, ValidatorKey, ValidatorSet,
    },
};
use kestrel_net::{Inbound, Kind, PeerId};
use kestrel_pipeline::{
    mempool::{BlockRules, TxPool},
    state::LatestState,
    status::ChainStatus,
};
use kestrel_storage::{ChainView, Store};
use kestrel_types::{
    BLOCK_TXS_MAX, ChainSpec, ExecutionResult, OrderedBlock, ParentFees, next_base_fee, now_ms,
};
use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

const SYNC_BLOCKS_TOTAL: &str = "kestrel_sync_blocks_total";
const SYNC_ACTIVE: &str = "kestrel_sync_active";
const PAYLOADS_REJECTED: &str = "kestrel_consensus_payloads_rejected_total";
const EARLY_TIMEOUTS: &str = "kestrel_consensus_early_timeouts_total";

/// A certificate more than this many blocks above our log means consensus alone (which fetches
/// missing blocks one request at a time, from memory) is the slow way back: sync instead.
const SYNC_GAP_BLOCKS: u64 = 8;
/// Ask another peer when one has not answered a sync or payload request in this long.
const REQUEST_RETRY_MS: u64 = 1_000;
/// With no answer at all for this long (no peer up), start consensus anyway: it cannot
/// finalize without a quorum, and when peers come back their certificates trigger a sync.
const SYNC_ALONE_MS: u64 = 3_000;
/// Bytes of blocks in one sync response (the frame cap is 16 MiB).
const SYNC_RESPONSE_BYTES_MAX: usize = 8 << 20;
/// Payloads and block facts kept for blocks this far below the log head (peers fetching a
/// payload consensus gave them without one ask for recent blocks).
const PAYLOADS_KEPT_BLOCKS: u64 = 256;
/// Payloads held for blocks not yet finalized; beyond this the cache is pruned to the log head.
const PAYLOADS_MAX: usize = 4_096;
/// Own execution results handed to a restarted state machine (it checks delayed results
/// against them: D blocks back at least).
const RESULTS_REPLAYED: u64 = 64;
/// How often newly admitted transactions are forwarded to the next leaders.
const FORWARD_INTERVAL_MS: u64 = 50;
/// Transactions go to the leaders of the current and this many next rounds.
const FORWARD_LEADERS: u64 = 3;
/// Hashes of transactions received by forwarding that are remembered, so they are not forwarded
/// again; when full the set is cleared (a transaction forwarded twice is refused as known).
const FORWARDED_IN_MAX: usize = 65_536;
/// Longest sleep of the loop, so shutdown is noticed.
/// Proposals for rounds up to this far ahead of ours are tracked for `return_abandoned`.
const ROUNDS_AHEAD_TRACKED: u64 = 16;
/// How often a round's leaders' connections are checked once the round is a block time old.
const REACHABLE_CHECK_MS: u64 = 50;
const IDLE_WAIT: Duration = Duration::from_millis(100);

pub fn describe_metrics() {
    metrics::describe_counter!(
        SYNC_BLOCKS_TOTAL,
        "Finalized blocks fetched from peers by block sync"
    );
    metrics::describe_gauge!(
        SYNC_ACTIVE,
        "1 while this validator is catching up by block sync instead of taking part in consensus"
    );
    metrics::describe_counter!(
        PAYLOADS_REJECTED,
        "Proposals not passed to consensus because their payload was invalid, by reason"
    );
    metrics::describe_counter!(
        EARLY_TIMEOUTS,
        "Rounds timed out after a block time because their leader or the next leader was not connected"
    );
    metrics::counter!(EARLY_TIMEOUTS).absolute(0);
    // Exists from start-up at 0, so an alert on its increase sees the first mismatch.
    metrics::counter!(bft::metrics::RESULT_MISMATCH).absolute(0);
    metrics::gauge!(bft::metrics::HALTED).set(0.0);
}

/// What the driver knows of a block it saw proposed: when (to pace the next block) and its fees
/// (for the next base fee).
struct Known {
    height: u64,
    timestamp_ms: u64,
    fees: ParentFees,
}

/// A payload to build once the block time since the parent has passed.
struct Build {
    round: Round,
    height: u64,
    parent: BlockId,
}

struct Sync {
    /// Rotates through the connected peers.
    turn: usize,
    asked_at_ms: u64,
    started_ms: u64,
    answered: bool,
}

/// A proposal whose payload is being decoded, to hand to consensus once it is.
struct Pending {
    from: ValidatorIndex,
    message: Unverified<Message>,
}

struct WantedPayload {
    hash: B256,
    turn: usize,
    asked_at_ms: u64,
}

pub struct Driver {
    bft: Bft,
    config: Config,
    key: ValidatorKey,
    set: ValidatorSet,
    /// Transport ids, by validator index.
    ids: Vec<PeerId>,
    net: Box<dyn Transport>,
    inbound: Receiver<Inbound>,
    results: Receiver<ExecutionResult>,
    proposals: Sender<OrderedBlock>,
    pool: Arc<TxPool>,
    /// Where the reserve balance rule reads balances when this validator builds a payload.
    state: LatestState,
    spec: Arc<ChainSpec>,
    status: Arc<ChainStatus>,
    store: Arc<Store>,
    stop: Arc<AtomicBool>,
    log: ChainLog,
    safety_file: SafetyFile,
    safety: SafetyState,
    beneficiary: Address,
    gas_limit: u64,
    block_time_ms: u64,
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    payloads: HashMap<B256, (u64, Payload)>,
    known: HashMap<BlockId, Known>,
    /// Fees of the log head's block.
    head_fees: ParentFees,
    building: Option<Build>,
    /// Finalized by consensus, waiting for their payload; the last of each commit with its proof.
    commits: VecDeque<(bft::CommittedBlock, Option<CommitProof>)>,
    /// Logged, waiting for room in the execution queue.
    executing: VecDeque<OrderedBlock>,
    wanted: Option<WantedPayload>,
    sync: Option<Sync>,
    admitter: Option<Admitter>,
    decoder: Option<Decoder<Pending>>,
    last_forward_ms: u64,
    forwarded_in: HashSet<B256>,
    /// The current round and when this driver first saw it.
    round_since: (Round, u64),
    /// Last check of the current round's leaders' connections (see `skip_unreachable_round`).
    reachable_checked_ms: u64,
    /// The last round timed out early.
    skipped: Round,
    /// Payload hash of the proposal seen (or made) in each round not yet over.
    round_payloads: BTreeMap<Round, B256>,
}

impl Driver {
    pub fn new(
        key: ValidatorKey,
        set: ValidatorSet,
        ids: Vec<PeerId>,
        net: Box<dyn Transport>,
        inbound: Receiver<Inbound>,
        dir: &Path,
        w: Wiring,
    ) -> eyre::Result<Self> {
        let log = ChainLog::open(dir)?;
        let safety_file = SafetyFile::new(dir);
        let safety = safety_file.load()?;
        let db_head = w.store.view(|r| r.head())??.unwrap_or(0);
        if log.height() < db_head {
            eyre::bail!(
                "the block log in {} ends at block {} but the database at {db_head}: this \
                 datadir was not written by this validator",
                dir.display(),
                log.height()
            );
        }
        // Finalized and logged but not committed before the last stop: execute them again.
        let mut executing = VecDeque::new();
        let mut head_fees = None;
        for height in db_head + 1..=log.height() {
            let synced = log.read(height)?;
            let payload = Payload::decode(synced.payload.clone())?;
            executing.push_back(payload.ordered_block(&synced.block));
        }
        if log.height() > 0 {
            let synced = log.read(log.height())?;
            head_fees = Some(Payload::decode(synced.payload)?.fees());
        }
        let head_fees = match head_fees {
            Some(fees) => fees,
            None => {
                ParentFees::of_header(&w.store.view(|r| r.header(0))??.expect("genesis header"))
            }
        };
        ChainStatus::set(&w.status.next_base_fee, next_base_fee(head_fees));
        if !executing.is_empty() {
            tracing::info!(target: "node::validator", from = db_head + 1, to = log.height(), "re-executing finalized blocks after a restart");
        }
        let config = Config {
            // Long enough for a block time, a round trip and execution of the delayed block.
            round_timeout_ms: (3 * w.block_time_ms).max(2_000),
            execution_delay: w.execution_delay,
        };
        let bft = Bft::new(
            config.clone(),
            key.clone(),
            set.clone(),
            log.head().clone(),
            safety.clone(),
        )?;
        Ok(Self {
            bft,
            config,
            key,
            set,
            ids,
            net,
            inbound,
            results: w.results,
            proposals: w.proposals,
            pool: w.pool,
            status: w.status,
            store: w.store,
            stop: w.stop,
            log,
            safety_file,
            safety,
            beneficiary: w.beneficiary,
            gas_limit: w.spec.gas_limit,
            block_time_ms: w.block_time_ms,
            timers: BinaryHeap::new(),
            payloads: HashMap::new(),
            known: HashMap::new(),
            head_fees,
            building: None,
            commits: VecDeque::new(),
            executing,
            wanted: None,
            sync: None,
            admitter: Some(Admitter::spawn(w.ingress)?),
            decoder: Some(Decoder::spawn(w.spec.clone())?),
            spec: w.spec,
            state: w.state,
            last_forward_ms: 0,
            round_since: (Round(0), 0),
            reachable_checked_ms: 0,
            skipped: Round(0),
            round_payloads: BTreeMap::new(),
            forwarded_in: HashSet::new(),
        })
    }

    /// Runs until `stop` is set; then the execution queue's sender is dropped, so execution and
    /// commit drain and exit.
    pub fn run(mut self) {
        let (inbound, results) = (self.inbound.clone(), self.results.clone());
        let decoded = self.decoder.as_ref().expect("running").results().clone();
        if self.ids.len() > 1 {
            self.begin_sync(now_ms());
        } else {
            // Nobody to sync from: a chain of one validator has its whole history here.
            self.finish_sync();
        }
        while !self.stop.load(Ordering::Acquire) {
            if !self.flush_execution() {
                break;
            }
            let now = now_ms();
            let wait = Duration::from_millis(self.next_wake_ms(now).saturating_sub(now)).min(
                if self.executing.is_empty() {
                    IDLE_WAIT
                } else {
                    Duration::from_millis(10)
                },
            );
            crossbeam_channel::select! {
                recv(inbound) -> msg => match msg {
                    Ok(msg) => self.on_inbound(msg),
                    Err(_) => break,
                },
                recv(results) -> result => match result {
                    Ok(result) => self.feed(Event::Executed(result)),
                    Err(_) => break,
                },
                recv(decoded) -> done => match done {
                    Ok((pending, result)) => self.on_decoded(pending, result),
                    Err(_) => break,
                },
                default(wait) => {}
            }
            self.on_tick(now_ms());
        }
        // Finalized blocks not yet handed over are executed and committed before the node
        // exits (they would be re-executed from the log at the next start otherwise).
        for block in self.executing.drain(..) {
            if self.proposals.send(block).is_err() {
                break;
            }
        }
        if let Some(admitter) = self.admitter.take() {
            admitter.shutdown();
        }
        if let Some(decoder) = self.decoder.take() {
            decoder.shutdown();
        }
        tracing::info!(target: "node::validator", height = self.log.height(), "consensus driver stopped");
    }

    fn next_wake_ms(&self, now: u64) -> u64 {
        let mut at = now + IDLE_WAIT.as_millis() as u64;
        if let Some(Reverse((t, _))) = self.timers.peek() {
            at = at.min(*t);
        }
        if let Some(due) = self.building.as_ref().and_then(|b| self.build_due_ms(b)) {
            at = at.min(due);
        }
        at
    }

    /// Hands logged blocks to execution without blocking consensus on a full queue; false once
    /// execution is gone.
    fn flush_execution(&mut self) -> bool {
        while let Some(p) = self.executing.pop_front() {
            match self.proposals.try_send(p) {
                Ok(()) => {}
                Err(TrySendError::Full(p)) => {
                    self.executing.push_front(p);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        metrics::gauge!("kestrel_execution_queue_depth").set(self.proposals.len() as f64);
        true
    }

    fn on_tick(&mut self, now: u64) {
        while let Some(Reverse((at, round))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.sync.is_none() {
                if round == self.bft.round().0 {
                    let leader = self.set.leader(Round(round)).0;
                    tracing::info!(target: "node::validator", round, leader, height = self.log.height(), "round timed out");
                }
                self.feed(Event::Timeout {
                    round: Round(round),
                });
            }
        }
        if self.round_since.0 != self.bft.round() {
            self.round_since = (self.bft.round(), now);
            self.return_abandoned();
        }
        self.skip_unreachable_round(now);
        if let Some(b) = &self.building {
            if self.bft.round() != b.round {
                self.building = None;
            } else if self.build_due_ms(b).is_some_and(|due| due <= now) {
                let b = self.building.take().expect("checked");
                self.build_payload(b);
            }
        }
        if self.last_forward_ms + FORWARD_INTERVAL_MS <= now {
            self.last_forward_ms = now;
            self.forward_txs();
        }
        if let Some(w) = &self.wanted
            && w.asked_at_ms + REQUEST_RETRY_MS <= now
        {
            self.ask_payload(now);
        }
        if let Some(s) = &self.sync {
            if !s.answered && s.started_ms + SYNC_ALONE_MS <= now {
                tracing::info!(target: "node::validator", "no peer answered block sync; joining consensus");
                self.finish_sync();
            } else if s.asked_at_ms + REQUEST_RETRY_MS <= now {
                self.ask_blocks(now);
            }
        }
    }

    /// A round cannot certify a block if its leader (who proposes) or the next leader (who
    /// collects the votes) is not connected to us, so we time it out after a block time instead
    /// of the full round timeout: a crashed validator then costs its two rounds a few block times
    /// per turn, not two round timeouts. Timing out early is always safe (it only gives up our
    /// vote in this round); it needs a quorum doing the same to form a TC.
    fn skip_unreachable_round(&mut self, now: u64) {
        let round = self.bft.round();
        if self.sync.is_some()
            || self.skipped == round
            || now < self.round_since.1 + self.block_time_ms
            || now < self.reachable_checked_ms + REACHABLE_CHECK_MS
        {
            return;
        }
        self.reachable_checked_ms = now;
        let connected = self.net.connected_peers();
        let me = self.bft.me();
        let unreachable = [round, round.next()].into_iter().any(|r| {
            let leader = self.set.leader(r);
            leader != me && !connected.contains(&self.ids[usize::from(leader.0)])
        });
        if unreachable {
            self.skipped = round;
            metrics::counter!(EARLY_TIMEOUTS).increment(1);
            self.feed(Event::Timeout { round });
        }
    }

    /// Proposals of rounds that ended without a QC for them (a TC moved the round on) are
    /// abandoned: their transactions go back to the pool (see `TxPool::on_abandoned`).
    fn return_abandoned(&mut self) {
        let current = self.bft.round();
        let certified = self.bft.high_qc_round();
        let open = self.round_payloads.split_off(&current);
        let ended = std::mem::replace(&mut self.round_payloads, open);
        for (_, hash) in ended.into_iter().filter(|(round, _)| *round > certified) {
            if let Some((_, payload)) = self.payloads.get(&hash) {
                self.pool.on_abandoned(payload.txs());
            }
        }
    }

    fn feed(&mut self, event: Event) {
        let commands = self.bft.update(now_ms(), event);
        for command in commands {
            self.apply(command);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::PersistSafety(state) => {
                if let Err(err) = self.safety_file.store(&state) {
                    // Voting on without the state on disk could make us vote twice after a crash.
                    fatal(&format!("persisting the consensus safety state: {err}"));
                }
                self.safety = state;
            }
            Command::Broadcast(message) => {
                if let Message::Proposal(p) = &message {
                    self.remember(&p.block);
                }
                let envelope = self.envelope(message);
                self.net.broadcast(Kind::Consensus, envelope.into());
            }
            Command::SendTo(to, message) => {
                let envelope = self.envelope(message);
                self.send(to, Kind::Consensus, envelope);
            }
            Command::ScheduleTimeout { round, at_ms } => {
                self.timers.push(Reverse((at_ms, round.0)))
            }
            Command::RequestPayload {
                round,
                height,
                parent,
            } => {
                // A leader restarted within a round it already proposed in must not propose a
                // second block there (it voted for the first). It times the round out at once
                // (always safe: it only gives up its vote there) rather than a round timeout
                // later; for a chain of one validator that is the whole restart delay.
                if round <= self.safety.highest_voted_round {
                    self.timers.push(Reverse((0, round.0)));
                    return;
                }
                self.building = Some(Build {
                    round,
                    height,
                    parent,
                });
            }
            Command::Commit { blocks, proof } => {
                let last = blocks.len() - 1;
                self.commits.extend(
                    blocks
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| (c, (i == last).then(|| proof.clone()))),
                );
                self.process_commits();
            }
            Command::ExecutionMismatch {
                ours,
                theirs,
                certified,
            } => {
                tracing::error!(target: "node::validator", number = ours.number, ours = %ours.block_hash, theirs = %theirs.block_hash, ours_root = %ours.state_root, theirs_root = %theirs.state_root, certified, "execution result differs from a proposal's delayed result");
                if certified {
                    tracing::error!(target: "node::validator", "a quorum finalized a result our execution disagrees with: this validator stopped voting and needs an operator");
                }
            }
        }
    }

    /// Proposals carry their payload; other messages go as they are.
    fn envelope(&self, message: Message) -> Vec<u8> {
        let payload = match &message {
            Message::Proposal(p) => self.payloads.get(&p.block.payload_hash),
            _ => None,
        };
        let message = Bytes::from(message.encode_to_vec());
        match payload {
            Some((_, payload)) => ConsensusEnvelope::Proposal {
                payload: payload.bytes().clone(),
                message,
            },
            None => ConsensusEnvelope::Message(message),
        }
        .encode()
    }

    fn send(&self, to: ValidatorIndex, kind: Kind, bytes: Vec<u8>) {
        let Some(peer) = self.ids.get(usize::from(to.0)) else {
            return;
        };
        self.net.send(peer, kind, bytes.into());
    }

    fn remember(&mut self, block: &Block) {
        if let Some((_, payload)) = self.payloads.get(&block.payload_hash) {
            self.known.insert(
                block.id(),
                Known {
                    height: block.height,
                    timestamp_ms: block.timestamp_ms,
                    fees: payload.fees(),
                },
            );
        }
    }

    /// The parent's timestamp and fees, once its payload is here.
    fn parent_known(&self, parent: BlockId) -> Option<(u64, ParentFees)> {
        let head = &self.log.head().block;
        if parent == head.id() {
            return Some((head.timestamp_ms, self.head_fees));
        }
        self.known.get(&parent).map(|k| (k.timestamp_ms, k.fees))
    }

    fn parent_fees(&self, parent: BlockId) -> Option<ParentFees> {
        self.parent_known(parent).map(|(_, fees)| fees)
    }

    /// When to build the payload: a block time after the parent. None while the parent's
    /// payload is not here: its votes can form the QC that made us leader before our decoder
    /// finishes it, and the base fee depends on it, so we wait (until the round ends) rather
    /// than let the round time out.
    fn build_due_ms(&self, b: &Build) -> Option<u64> {
        self.parent_known(b.parent)
            .map(|(timestamp_ms, _)| timestamp_ms + self.block_time_ms)
    }

    fn build_payload(&mut self, b: Build) {
        let parent_fees = self
            .parent_fees(b.parent)
            .expect("due only with a known parent");
        let started = Instant::now();
        let base_fee = next_base_fee(parent_fees);
        // Consensus stamps the block at least now: that picks the fork of its rules.
        let rules = BlockRules::new(&self.spec, now_ms() / 1000, self.gas_limit, base_fee);
        self.pool.expire_queued(Instant::now());
        let txs = self
            .pool
            .take_block(b.height, &rules, BLOCK_TXS_MAX, &self.state);
        let payload = Payload::build(self.beneficiary, self.gas_limit, base_fee, txs);
        let hash = payload.hash();
        metrics::counter!("kestrel_ordering_txs_total").increment(payload.tx_count() as u64);
        self.payloads.insert(hash, (b.height, payload));
        self.round_payloads.insert(b.round, hash);
        metrics::histogram!("kestrel_ordering_propose_seconds")
            .record(started.elapsed().as_secs_f64());
        self.feed(Event::PayloadReady {
            round: b.round,
            payload_hash: hash,
        });
    }

    /// Sends the transactions this validator's RPC admitted since the last call to the leaders
    /// of the next few rounds. They stay in our pool too: if those leaders fail, we propose them
    /// when we lead, and once any leader proposes them every validator holds them in flight.
    fn forward_txs(&mut self) {
        if self.sync.is_some() || self.ids.len() == 1 {
            return;
        }
        let txs: Vec<_> = self
            .pool
            .take_fresh(FORWARD_TXS_MAX)
            .into_iter()
            .filter(|tx| !self.forwarded_in.contains(&tx.hash()))
            .collect();
        if txs.is_empty() {
            return;
        }
        let bytes = Bytes::from(forward::encode(&txs));
        for to in forward::targets(&self.set, self.bft.round(), self.bft.me(), FORWARD_LEADERS) {
            let peer = &self.ids[usize::from(to.0)];
            self.net.send(peer, Kind::TxForward, bytes.0.clone());
        }
        metrics::counter!(forward::FORWARDED_TOTAL).increment(txs.len() as u64);
    }

    fn on_inbound(&mut self, msg: Inbound) {
        let Some(from) = self.ids.iter().position(|id| *id == msg.peer) else {
            return;
        };
        let from = ValidatorIndex(from as u16);
        match msg.kind {
            Kind::Consensus => self.on_consensus(from, &msg.payload),
            Kind::SyncRequest => self.on_sync_request(from, &msg.payload),
            Kind::SyncResponse => self.on_sync_response(&msg.payload),
            Kind::TxForward => match forward::decode(&msg.payload) {
                Ok(txs) => {
                    let admitter = self.admitter.as_ref().expect("running");
                    if self.forwarded_in.len() + txs.len() > FORWARDED_IN_MAX {
                        self.forwarded_in.clear();
                    }
                    for raw in txs.into_iter().take(FORWARD_TXS_MAX) {
                        self.forwarded_in.insert(keccak256(&raw));
                        admitter.admit(raw);
                    }
                }
                Err(err) => {
                    tracing::debug!(target: "node::validator", peer = %msg.peer, %err, "undecodable forwarded transactions")
                }
            },
        }
    }

    fn on_consensus(&mut self, from: ValidatorIndex, bytes: &[u8]) {
        let (message, payload) = match ConsensusEnvelope::decode(bytes) {
            Ok(ConsensusEnvelope::Message(m)) => (m, None),
            Ok(ConsensusEnvelope::Proposal { payload, message }) => (message, Some(payload)),
            Err(err) => {
                metrics::counter!(bft::metrics::INVALID_MESSAGES).increment(1);
                tracing::debug!(target: "node::validator", %err, "undecodable consensus envelope");
                return;
            }
        };
        let message = match Unverified::<Message>::decode(&message) {
            Ok(m) => m,
            Err(err) => {
                metrics::counter!(bft::metrics::INVALID_MESSAGES).increment(1);
                tracing::debug!(target: "node::validator", %err, "undecodable consensus message");
                return;
            }
        };
        let certified_height = match message.peek() {
            Message::Proposal(p) => Some(p.block.qc.height),
            Message::Timeout(t) => Some(t.high_qc.height),
            Message::Certificate(qc) => Some(qc.height),
            _ => None,
        };
        if self.sync.is_none()
            && certified_height.is_some_and(|h| h > self.log.height() + SYNC_GAP_BLOCKS)
        {
            tracing::info!(target: "node::validator", ours = self.log.height(), certified = certified_height, "behind the network; syncing blocks");
            self.begin_sync(now_ms());
        }
        if self.sync.is_some() {
            return;
        }
        if let Message::Proposal(p) = message.peek() {
            let (hash, timestamp_ms) = (p.block.payload_hash, p.block.timestamp_ms);
            if !self.payloads.contains_key(&hash) {
                // Decoded off this thread; consensus sees the proposal when it is done.
                if let Some(bytes) = payload
                    && !self.decoder.as_ref().expect("running").submit(
                        Pending { from, message },
                        hash,
                        bytes,
                        timestamp_ms,
                    )
                {
                    metrics::counter!(PAYLOADS_REJECTED, "reason" => "busy").increment(1);
                }
                return;
            }
            let block = p.block.clone();
            self.remember(&block);
        }
        self.feed(Event::Message { from, message });
    }

    fn on_decoded(&mut self, pending: Pending, result: Result<Payload, Rejected>) {
        if self.sync.is_some() {
            return;
        }
        let Message::Proposal(p) = pending.message.peek() else {
            unreachable!("only proposals are decoded")
        };
        let block = p.block.clone();
        let accepted = match result {
            Ok(payload) => self.accept_payload(&block, payload),
            Err(err) => {
                let reason = match err {
                    Rejected::Hash => "hash",
                    Rejected::Invalid(PayloadError::StaticRule { .. }) => "static_rule",
                    Rejected::Invalid(_) => "invalid",
                };
                tracing::warn!(target: "node::validator", height = block.height, %err, "invalid payload");
                metrics::counter!(PAYLOADS_REJECTED, "reason" => reason).increment(1);
                false
            }
        };
        if accepted {
            self.remember(&block);
            self.feed(Event::Message {
                from: pending.from,
                message: pending.message,
            });
        }
    }

    /// Checks and keeps a proposal's decoded payload; false if the proposal must not reach
    /// consensus.
    fn accept_payload(&mut self, block: &Block, payload: Payload) -> bool {
        if self.payloads.contains_key(&block.payload_hash) {
            return true;
        }
        let reject = |reason: &'static str| {
            metrics::counter!(PAYLOADS_REJECTED, "reason" => reason).increment(1);
            false
        };
        if let Some(fees) = self.parent_fees(block.parent())
            && payload.base_fee() != next_base_fee(fees)
        {
            tracing::warn!(target: "node::validator", height = block.height, got = payload.base_fee(), expected = next_base_fee(fees), "payload base fee");
            return reject("base_fee");
        }
        if self.payloads.len() >= PAYLOADS_MAX {
            self.prune();
            if self.payloads.len() >= PAYLOADS_MAX {
                return reject("full");
            }
        }
        // In flight here too: not proposed again by us, and back in the pool if it loses (a
        // proposal at or below our head already lost, or is final).
        if block.height > self.log.height() {
            self.pool.on_proposed(block.height, payload.txs());
            // Bounded: rounds far ahead are not ours to track (consensus drops them too).
            if block.round.0 <= self.bft.round().0 + ROUNDS_AHEAD_TRACKED {
                self.round_payloads.insert(block.round, block.payload_hash);
            }
        }
        self.payloads
            .insert(block.payload_hash, (block.height, payload));
        true
    }

    /// Logs finalized blocks whose payload is here, in order, then hands them to execution.
    fn process_commits(&mut self) {
        while let Some((c, _)) = self.commits.front() {
            if c.block.height <= self.log.height() {
                self.commits.pop_front();
                continue;
            }
            let Some((_, payload)) = self.payloads.get(&c.block.payload_hash).cloned() else {
                let hash = c.block.payload_hash;
                if self.wanted.as_ref().is_none_or(|w| w.hash != hash) {
                    self.wanted = Some(WantedPayload {
                        hash,
                        turn: 0,
                        asked_at_ms: 0,
                    });
                    self.ask_payload(now_ms());
                }
                break;
            };
            let (c, proof) = self.commits.pop_front().expect("front exists");
            self.commit(
                SyncedBlock {
                    block: c.block,
                    qc: c.qc,
                    payload: payload.bytes().clone(),
                    proof,
                },
                &payload,
            );
        }
        if self.commits.is_empty() {
            self.wanted = None;
        }
        self.sync_log();
        self.prune();
    }

    fn commit(&mut self, block: SyncedBlock, payload: &Payload) {
        if let Err(err) = self.log.append(&block) {
            fatal(&format!("appending to the block log: {err}"));
        }
        self.pool.on_finalized(block.block.height, payload.txs());
        self.executing
            .push_back(payload.ordered_block(&block.block));
        self.head_fees = payload.fees();
        ChainStatus::set(&self.status.proposed, block.block.height);
        ChainStatus::set(&self.status.next_base_fee, next_base_fee(self.head_fees));
    }

    /// The log must be durable before its blocks reach execution (see `ChainLog::open`).
    fn sync_log(&mut self) {
        if let Err(err) = self.log.sync() {
            fatal(&format!("syncing the block log: {err}"));
        }
    }

    fn prune(&mut self) {
        let keep_above = self.log.height().saturating_sub(PAYLOADS_KEPT_BLOCKS);
        self.payloads.retain(|_, (height, _)| *height > keep_above);
        self.known.retain(|_, k| k.height > keep_above);
    }

    /// Connected peers, in a stable order, so `turn` rotates through them.
    fn connected(&self) -> Vec<PeerId> {
        self.net.connected_peers().into_iter().collect()
    }

    fn ask_payload(&mut self, now: u64) {
        let peers = self.connected();
        let Some(w) = &mut self.wanted else { return };
        w.asked_at_ms = now;
        if peers.is_empty() {
            return;
        }
        let peer = peers[w.turn % peers.len()];
        w.turn += 1;
        let request = SyncRequest::Payload(w.hash).encode();
        self.net.send(&peer, Kind::SyncRequest, request.into());
    }

    fn begin_sync(&mut self, now: u64) {
        metrics::gauge!(SYNC_ACTIVE).set(1.0);
        self.building = None;
        self.sync = Some(Sync {
            turn: 0,
            asked_at_ms: 0,
            started_ms: now,
            answered: false,
        });
        self.ask_blocks(now);
    }

    fn ask_blocks(&mut self, now: u64) {
        let peers = self.connected();
        let from = self.log.height() + 1;
        let Some(s) = &mut self.sync else { return };
        s.asked_at_ms = now;
        if peers.is_empty() {
            return;
        }
        let peer = peers[s.turn % peers.len()];
        s.turn += 1;
        let request = SyncRequest::Blocks {
            from,
            count: SYNC_BLOCKS_MAX as u16,
        }
        .encode();
        self.net.send(&peer, Kind::SyncRequest, request.into());
    }

    /// Caught up (as far as a peer knows): restart the state machine from the log head, with our
    /// persisted safety state and recent execution results, and join consensus.
    fn finish_sync(&mut self) {
        self.sync = None;
        metrics::gauge!(SYNC_ACTIVE).set(0.0);
        self.timers.clear();
        self.commits.clear();
        self.wanted = None;
        self.bft = Bft::new(
            self.config.clone(),
            self.key.clone(),
            self.set.clone(),
            self.log.head().clone(),
            self.safety.clone(),
        )
        .expect("the validator set was accepted at start");
        for result in self.recent_results() {
            self.feed(Event::Executed(result));
        }
        tracing::info!(target: "node::validator", height = self.log.height(), round = self.bft.round().0, "joining consensus");
        self.feed(Event::Start);
    }

    /// Execution results of the last committed blocks, from the database.
    fn recent_results(&self) -> Vec<ExecutionResult> {
        let read = || -> Result<Vec<ExecutionResult>, kestrel_storage::StorageError> {
            self.store.view(|r| {
                let head = r.head()?.unwrap_or(0);
                let mut out = Vec::new();
                for number in head.saturating_sub(RESULTS_REPLAYED) + 1..=head {
                    let (Some(header), Some(hash)) = (r.header(number)?, r.block_hash(number)?)
                    else {
                        continue;
                    };
                    out.push(ExecutionResult {
                        number,
                        block_hash: hash,
                        state_root: header.state_root,
                        receipts_root: header.receipts_root,
                    });
                }
                Ok(out)
            })?
        };
        read().unwrap_or_else(|err| {
            tracing::error!(target: "node::validator", %err, "reading recent execution results");
            Vec::new()
        })
    }

    fn on_sync_request(&mut self, from: ValidatorIndex, bytes: &[u8]) {
        let response = match SyncRequest::decode(bytes) {
            Ok(SyncRequest::Blocks { from: start, count }) => {
                let count = usize::from(count).min(SYNC_BLOCKS_MAX);
                let mut blocks: Vec<SyncedBlock> = Vec::new();
                let mut size = 0;
                // The limits are soft: the answer ends on a block with a commit proof (every
                // commit's last block, so at the latest the log head), since the asker checks
                // finality on the last block it gets.
                for height in start.max(1)..=self.log.height() {
                    let full = blocks.len() >= count || size >= SYNC_RESPONSE_BYTES_MAX;
                    if full && blocks.last().is_some_and(|b| b.proof.is_some()) {
                        break;
                    }
                    match self.log.read(height) {
                        Ok(b) => {
                            size += b.payload.len();
                            blocks.push(b);
                        }
                        Err(err) => fatal(&format!("reading the block log: {err}")),
                    }
                }
                SyncResponse::Blocks(blocks)
            }
            Ok(SyncRequest::Payload(hash)) => match self.payloads.get(&hash) {
                Some((_, payload)) => SyncResponse::Payload(payload.bytes().clone()),
                None => return,
            },
            Err(err) => {
                tracing::debug!(target: "node::validator", %err, "undecodable sync request");
                return;
            }
        };
        self.send(from, Kind::SyncResponse, response.encode());
    }

    fn on_sync_response(&mut self, bytes: &[u8]) {
        match SyncResponse::decode(bytes) {
            Ok(SyncResponse::Payload(bytes)) => {
                let hash = keccak256(&bytes);
                if self.wanted.as_ref().is_none_or(|w| w.hash != hash) {
                    return;
                }
                let Some(height) = self.commits.front().map(|(c, _)| c.block.height) else {
                    return;
                };
                match Payload::decode(bytes) {
                    Ok(payload) => {
                        self.payloads.insert(hash, (height, payload));
                        self.wanted = None;
                        self.process_commits();
                    }
                    // A finalized block's payload was checked by a quorum: a bad one is the
                    // peer's fault, so ask another.
                    Err(err) => {
                        tracing::warn!(target: "node::validator", %err, "peer sent an invalid payload")
                    }
                }
            }
            Ok(SyncResponse::Blocks(blocks)) => self.on_synced_blocks(blocks),
            Err(err) => {
                tracing::debug!(target: "node::validator", %err, "undecodable sync response")
            }
        }
    }

    fn on_synced_blocks(&mut self, blocks: Vec<SyncedBlock>) {
        let Some(s) = &mut self.sync else { return };
        s.answered = true;
        if blocks.is_empty() {
            self.finish_sync();
            return;
        }
        let payloads = match verify_chain(self.log.head(), &blocks, &self.set) {
            Ok(payloads) => payloads,
            Err(err) => {
                tracing::warn!(target: "node::validator", %err, "rejected a block sync response");
                return;
            }
        };
        let count = blocks.len();
        for (block, payload) in blocks.into_iter().zip(payloads) {
            self.commit(block, &payload);
        }
        self.sync_log();
        self.prune();
        metrics::counter!(SYNC_BLOCKS_TOTAL).increment(count as u64);
        tracing::info!(target: "node::validator", height = self.log.height(), blocks = count, "synced finalized blocks");
        // Until a peer has nothing more: an answer may be short of SYNC_BLOCKS_MAX (its size
        // bound) and the chain grows meanwhile.
        self.ask_blocks(now_ms());
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("block {height} does not extend our chain")]
    NotOurChain { height: u64 },
    #[error("block {height}: its certificate is for another block")]
    WrongCertificate { height: u64 },
    #[error("block {height}: the last block of an answer needs a commit proof")]
    NoCommitProof { height: u64 },
    #[error("commit proof of block {height}: {source}")]
    BadCommitProof {
        height: u64,
        source: kestrel_consensus::error::VerifyError,
    },
    #[error("block {height}: payload: {reason}")]
    BadPayload { height: u64, reason: String },
}

/// Blocks from sync must extend `head` one by one (hash links), and the last must carry a valid
/// commit proof: a certificate alone would let a peer serve a block that was certified but then
/// abandoned. Every block below it is final too, authenticated by the chain of hashes (each
/// block's id covers its parent's QC). Any other proof is checked as well, since it is logged
/// and served to others. Returns the decoded payloads.
fn verify_chain(
    head: &bft::CommittedBlock,
    blocks: &[SyncedBlock],
    set: &ValidatorSet,
) -> Result<Vec<Payload>, SyncError> {
    let mut parent = head.block.clone();
    for (i, b) in blocks.iter().enumerate() {
        let height = b.block.height;
        if height != parent.height + 1 || b.block.parent() != parent.id() {
            return Err(SyncError::NotOurChain { height });
        }
        // A block's certificate is its child's QC (the next block's, or the proof's).
        let child = match (blocks.get(i + 1), &b.proof) {
            (_, Some(proof)) => &proof.child,
            (Some(next), None) => &next.block,
            (None, None) => return Err(SyncError::NoCommitProof { height }),
        };
        if child.qc != b.qc {
            return Err(SyncError::WrongCertificate { height });
        }
        if let Some(proof) = &b.proof {
            proof
                .verify(&b.block, set)
                .map_err(|source| SyncError::BadCommitProof { height, source })?;
        }
        parent = b.block.clone();
    }
    blocks
        .iter()
        .map(|b| {
            let bad = |reason: String| SyncError::BadPayload {
                height: b.block.height,
                reason,
            };
            if keccak256(&b.payload) != b.block.payload_hash {
                return Err(bad("hash differs from the block's".into()));
            }
            Payload::decode(b.payload.clone()).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

fn fatal(what: &str) -> ! {
    crate::fatal::stop("validator", what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_consensus::bft::{QuorumCert, SignerSig, Vote};

    fn keys() -> Vec<ValidatorKey> {
        (1..=4u8)
            .map(|i| ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap()))
            .collect()
    }

    fn set(keys: &[ValidatorKey]) -> ValidatorSet {
        ValidatorSet::new(keys.iter().map(|k| (k.id(), 1)).collect()).unwrap()
    }

    fn qc_for(block: &Block, signers: &[usize], keys: &[ValidatorKey]) -> QuorumCert {
        QuorumCert {
            round: block.round,
            height: block.height,
            block_id: block.id(),
            signatures: signers
                .iter()
                .map(|&i| {
                    let index = ValidatorIndex(i as u16);
                    let vote = Vote::new(block.round, block.height, block.id(), index, &keys[i]);
                    SignerSig {
                        signer: index,
                        signature: vote.signature,
                    }
                })
                .collect(),
        }
    }

    fn block(round: u64, height: u64, qc: QuorumCert, payload: &Payload) -> Block {
        Block {
            round: Round(round),
            height,
            author: ValidatorIndex((round % 4) as u16),
            timestamp_ms: round * 1_000,
            payload_hash: payload.hash(),
            qc,
            delayed_result: None,
        }
    }

    /// Three blocks on genesis in rounds 1, 2, 3, each certified by the next one's QC; the last
    /// with a commit proof: a child in `child_round` whose QC `child_signers` signed.
    fn chain(keys: &[ValidatorKey], child_round: u64, child_signers: &[usize]) -> Vec<SyncedBlock> {
        let payload = Payload::build(Address::ZERO, 30_000_000, 1_000_000_000, Vec::new());
        let mut qc = QuorumCert::genesis();
        let mut blocks: Vec<Block> = Vec::new();
        for height in 1..=3u64 {
            let b = block(height, height, qc.clone(), &payload);
            qc = qc_for(&b, &[0, 1, 2], keys);
            blocks.push(b);
        }
        let child = block(child_round, 4, qc, &payload);
        let proof = CommitProof {
            child_qc: qc_for(&child, child_signers, keys),
            child,
        };
        let n = blocks.len();
        blocks
            .iter()
            .enumerate()
            .map(|(i, b)| SyncedBlock {
                block: b.clone(),
                qc: match blocks.get(i + 1) {
                    Some(next) => next.qc.clone(),
                    None => proof.child.qc.clone(),
                },
                payload: payload.bytes().clone(),
                proof: (i == n - 1).then(|| proof.clone()),
            })
            .collect()
    }

    #[test]
    fn synced_blocks_need_a_commit_proof_and_hash_links_to_our_head() {
        let keys = keys();
        let set = set(&keys);
        let genesis = bft::CommittedBlock::genesis();
        let good = chain(&keys, 4, &[1, 2, 3]);
        assert_eq!(verify_chain(&genesis, &good, &set).unwrap().len(), 3);

        // Certified but not final: the child that certifies the last block is two rounds
        // later (round 4 timed out), so another branch may have been finalized instead.
        let abandoned = chain(&keys, 5, &[1, 2, 3]);
        assert!(matches!(
            verify_chain(&genesis, &abandoned, &set),
            Err(SyncError::BadCommitProof { height: 3, .. })
        ));
        // Only a QC on the last block, as sync used to accept.
        let mut certified_only = good.clone();
        certified_only[2].proof = None;
        assert!(matches!(
            verify_chain(&genesis, &certified_only, &set),
            Err(SyncError::NoCommitProof { height: 3 })
        ));
        // Two of four signatures on the child are not a quorum.
        let weak = chain(&keys, 4, &[0, 3]);
        assert!(matches!(
            verify_chain(&genesis, &weak, &set),
            Err(SyncError::BadCommitProof { height: 3, .. })
        ));
        // A signature by a key outside the set.
        let mut forged = good.clone();
        let outsider = ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&[9; 32]).unwrap());
        assert!(set.index_of(&outsider.id()).is_none());
        let proof = forged[2].proof.as_mut().unwrap();
        let child = proof.child.clone();
        proof.child_qc.signatures[0].signature = Vote::new(
            child.round,
            child.height,
            child.id(),
            ValidatorIndex(1),
            &outsider,
        )
        .signature;
        assert!(matches!(
            verify_chain(&genesis, &forged, &set),
            Err(SyncError::BadCommitProof { .. })
        ));
        // The logged certificate must be the one the proof's child carries.
        let mut other_qc = good.clone();
        other_qc[2].qc = qc_for(&good[2].block, &[0, 1, 3], &keys);
        assert!(matches!(
            verify_chain(&genesis, &other_qc, &set),
            Err(SyncError::WrongCertificate { height: 3 })
        ));
        // A tampered middle block breaks the hash chain to the certified top.
        let mut tampered = good.clone();
        tampered[1].block.timestamp_ms += 1;
        assert!(verify_chain(&genesis, &tampered, &set).is_err());
        // Blocks that do not start on our head.
        assert!(matches!(
            verify_chain(&genesis, &good[1..], &set),
            Err(SyncError::NotOurChain { height: 2 })
        ));
        // A payload that is not the one the block names.
        let mut swapped = good.clone();
        swapped[0].payload = Bytes::from_static(b"\xc0");
        assert!(matches!(
            verify_chain(&genesis, &swapped, &set),
            Err(SyncError::BadPayload { height: 1, .. })
        ));
    }
}
