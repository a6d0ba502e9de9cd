//! The consensus driver: owns the [`Bft`] state machine and carries out its commands with a
//! [`Clock`] (the wall clock, or the simulation's virtual one: `sim/`), a [`Transport`], the pool
//! and the pipeline. It keeps the event loop, whose body is `step(Input)` (`inbound.rs`), and
//! `apply(Command)`;
//! the rest is in parts of its own (after monad-bft's executors), each returning what to send:
//! the payload cache (`payloads.rs`), finality and the block log (`finality.rs`), block sync
//! (`sync.rs`) and transaction forwarding (`forward.rs`). What a restart needs (persisting the
//! safety state and the blocks voted for; block sync, then rebuilding the state machine) is
//! `impl Driver` too, in `recovery.rs`.
//!
//! Payloads travel with their proposal and are decoded on a thread of their own; a proposal
//! whose payload does not decode (or whose base fee is not the parent's successor) never reaches
//! consensus, so a validator votes only for blocks it can execute. A validator that is behind (at
//! start, or when a certificate it sees is far ahead of its log) stops feeding consensus and
//! syncs, then restarts the state machine from its new head.

#[path = "inbound.rs"]
mod inbound;
#[path = "recovery.rs"]
mod recovery;
#[cfg(test)]
#[path = "sim/hooks.rs"]
mod sim_hooks;

use super::{
    Wiring,
    builder::{Build, Builder},
    clock::Clock,
    finality::Finality,
    forward::{FORWARD_LEADERS, Forwarder},
    metrics::{EARLY_TIMEOUTS, PARENT_PAYLOAD_REQUESTS},
    payload::{Decoder, Payload},
    payloads::PayloadCache,
    rounds::RoundWatch,
    store::SafetyFile,
    sync::{BlockSync, SyncStep},
    transport::Transport,
    wire::ConsensusEnvelope,
};
use crossbeam_channel::Receiver;
pub(super) use inbound::Input;
use kestrel_consensus::{
    Round,
    bft::{
        Bft, Block, BlockId, Command, Config, Event, Message, SafetyState, Unverified,
        ValidatorIndex, ValidatorKey, ValidatorSet,
    },
};
use kestrel_net::{Inbound, Kind, PeerId};
use kestrel_pipeline::{
    mempool::TxPool,
    status::{BlockProgress, CommitState},
};
use kestrel_storage::Store;
use kestrel_types::{ExecutionResult, ParentFees};
use recovery::restore_payloads;
use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// Longest sleep of the loop, so shutdown is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// The loop's wait while logged blocks wait for room in the execution queue.
const BUSY_WAIT: Duration = Duration::from_millis(10);

/// A proposal whose payload is being decoded, to hand to consensus once it is.
pub struct Pending {
    from: ValidatorIndex,
    message: Unverified<Message>,
}

/// The validator set and this validator's place and key in it.
pub struct Membership {
    pub key: ValidatorKey,
    pub set: ValidatorSet,
    /// Transport ids, by validator index.
    pub ids: Vec<PeerId>,
}

pub struct Driver {
    bft: Bft,
    config: Config,
    members: Membership,
    net: Box<dyn Transport>,
    inbound: Receiver<Inbound>,
    results: Receiver<ExecutionResult>,
    pool: Arc<TxPool>,
    store: Arc<Store>,
    stop: Arc<AtomicBool>,
    safety_file: SafetyFile,
    safety: SafetyState,
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    builder: Builder,
    watch: RoundWatch,
    payloads: PayloadCache,
    finality: Finality,
    sync: Option<BlockSync>,
    forwarder: Option<Forwarder>,
    decoder: Option<Decoder<Pending>>,
    clock: Clock,
    /// Where state sync requests go, on a validator that serves snapshots.
    snapshots: Option<super::statesync::serve::SnapshotServer>,
}

impl Driver {
    /// On `Clock::Wall` payloads decode and forwarded transactions are admitted on threads of
    /// their own; on a virtual clock (the simulation) inline, so that every step is
    /// deterministic.
    pub fn new(
        members: Membership,
        net: Box<dyn Transport>,
        inbound: Receiver<Inbound>,
        dir: &Path,
        w: Wiring,
        clock: Clock,
    ) -> eyre::Result<Self> {
        let finality = Finality::open(dir, &w.store, w.pool.clone(), w.status, w.proposals)?;
        let mut safety_file = SafetyFile::new(dir);
        let (safety, voted) = safety_file.load()?;
        let config = Config {
            // Long enough for a block time, a round trip and execution of the delayed block.
            round_timeout_ms: (3 * w.block_time_ms).max(2_000),
            execution_delay: w.execution_delay,
        };
        let bft = Bft::new(
            config.clone(),
            members.key.clone(),
            members.set.clone(),
            finality.head().clone(),
            safety.clone(),
        )?;
        let mut payloads = PayloadCache::new();
        restore_payloads(&mut payloads, &w.pool, &voted, finality.height());
        let decoder = match clock {
            Clock::Wall => Decoder::spawn(w.spec.clone(), w.pool.clone())?,
            Clock::Virtual(_) => Decoder::inline(w.spec.clone(), w.pool.clone()),
        };
        Ok(Self {
            bft,
            config,
            members,
            net,
            inbound,
            results: w.results,
            pool: w.pool.clone(),
            store: w.store,
            stop: w.stop,
            safety_file,
            safety,
            timers: BinaryHeap::new(),
            builder: Builder::new(
                w.beneficiary,
                w.block_time_ms,
                w.spec.clone(),
                w.pool,
                w.state,
            ),
            watch: RoundWatch::default(),
            payloads,
            finality,
            sync: None,
            forwarder: Some(match clock {
                Clock::Wall => Forwarder::spawn(w.ingress)?,
                Clock::Virtual(_) => Forwarder::inline(w.ingress)?,
            }),
            decoder: Some(decoder),
            clock,
            snapshots: None,
        })
    }

    /// Serves state sync's snapshot requests through `server`.
    pub fn serve_snapshots(&mut self, server: super::statesync::serve::SnapshotServer) {
        self.snapshots = Some(server);
    }

    /// Runs until `stop` is set; then the execution queue's sender is dropped, so execution and
    /// commit drain and exit.
    pub fn run(mut self) {
        let (inbound, results) = (self.inbound.clone(), self.results.clone());
        let decoded = self.decoder.as_ref().expect("running").results().clone();
        self.catch_up();
        while !self.stop.load(Ordering::Acquire) && self.finality.flush() {
            let now = self.now();
            let wait = Duration::from_millis(self.next_wake_ms(now).saturating_sub(now)).min(
                if self.finality.behind() {
                    BUSY_WAIT
                } else {
                    IDLE_WAIT
                },
            );
            let input = crossbeam_channel::select! {
                recv(inbound) -> msg => match msg {
                    Ok(msg) => Some(Input::Inbound(msg)),
                    Err(_) => break,
                },
                recv(results) -> result => match result {
                    Ok(result) => Some(Input::Executed(result)),
                    Err(_) => break,
                },
                recv(decoded) -> done => match done {
                    Ok((pending, result)) => Some(Input::Decoded(pending, result)),
                    Err(_) => break,
                },
                default(wait) => None,
            };
            self.step(input);
        }
        self.finality.drain();
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.shutdown();
        }
        if let Some(decoder) = self.decoder.take() {
            decoder.shutdown();
        }
        tracing::info!(target: "node::validator", height = self.finality.height(), "consensus driver stopped");
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn next_wake_ms(&self, now: u64) -> u64 {
        let mut at = now + IDLE_WAIT.as_millis() as u64;
        if let Some(Reverse((t, _))) = self.timers.peek() {
            at = at.min(*t);
        }
        if let Some(due) = self.builder.due_ms(|p| self.parent_known(p)) {
            at = at.min(due);
        }
        at
    }

    fn on_tick(&mut self, now: u64) {
        while let Some(Reverse((at, round))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.sync.is_none() {
                if round == self.bft.round().0 {
                    let leader = self.members.set.leader(Round(round)).0;
                    tracing::info!(target: "node::validator", round, leader, height = self.finality.height(), "round timed out");
                }
                self.feed(Event::Timeout {
                    round: Round(round),
                });
            }
        }
        if self.watch.entered(self.bft.round(), now) {
            // Proposals of rounds that ended without a QC for them are abandoned: their
            // transactions go back to the pool (see `TxPool::on_abandoned`).
            for lost in self
                .payloads
                .abandoned(self.bft.round(), self.bft.high_qc_round())
            {
                self.pool.on_abandoned(lost.txs());
            }
        }
        let (round, me) = (self.bft.round(), self.bft.me());
        if self.sync.is_none()
            && self.watch.cut_short(
                now,
                round,
                self.builder.block_time_ms,
                &self.members.set,
                me,
                &self.members.ids,
                || self.net.connected_peers(),
            )
        {
            metrics::counter!(EARLY_TIMEOUTS).increment(1);
            self.feed(Event::Timeout { round });
        }
        let (payloads, finality) = (&self.payloads, &self.finality);
        let parent_known = |p| payloads.parent_known(finality.head(), finality.head_fees(), p);
        if let Some((build, payload)) = self.builder.build_due(now, round, parent_known) {
            let hash = payload.hash();
            self.payloads.insert_own(build.round, build.height, payload);
            self.feed(Event::PayloadReady {
                round: build.round,
                payload_hash: hash,
            });
        }
        self.forward_txs(now);
        let peers = self.connected();
        if let Some((peer, request)) = self.finality.ask_payload(now, &peers) {
            self.net.send(&peer, Kind::SyncRequest, request.into());
        }
        self.fetch_parent(now, &peers);
        let step = match &mut self.sync {
            Some(sync) => sync.step(now, &peers, self.finality.height()),
            None => SyncStep::Wait,
        };
        match step {
            SyncStep::Ask(peer, request) => self.net.send(&peer, Kind::SyncRequest, request.into()),
            SyncStep::GiveUp => {
                tracing::info!(target: "node::validator", "no peer answered block sync; joining consensus");
                self.finish_sync();
            }
            SyncStep::Wait => {}
        }
    }

    fn feed(&mut self, event: Event) {
        let commands = self.bft.update(self.now(), event);
        for command in commands {
            self.apply(command);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::PersistBlock(block) => {
                self.progress(CommitState::Voted, &block);
                self.keep_voted(block)
            }
            Command::Proposed(block) => self.progress(CommitState::Proposed, &block),
            Command::Verified(result) => self.finality.status().verified(result),
            Command::PersistSafety(state) => self.persist_safety(state),
            Command::Broadcast(message) => {
                if let Message::Proposal(p) = &message {
                    self.payloads.remember(&p.block);
                }
                let envelope = self.envelope(&message);
                self.net.broadcast(Kind::Consensus, envelope.into());
            }
            Command::SendTo(to, message) => {
                let envelope = self.envelope(&message);
                self.send(to, Kind::Consensus, envelope.into());
            }
            Command::ScheduleTimeout { round, at_ms } => {
                self.timers.push(Reverse((at_ms, round.0)))
            }
            Command::RequestPayload {
                round,
                height,
                parent,
            } => {
                self.builder.request(Build {
                    round,
                    height,
                    parent,
                });
            }
            Command::Commit { blocks, proof } => {
                for committed in &blocks {
                    self.progress(CommitState::Finalized, &committed.block);
                }
                self.finality.push(blocks, proof);
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

    /// Tells subscribers (`kestrelNewHeads`) that `block` reached `state`.
    fn progress(&self, state: CommitState, block: &Block) {
        self.finality
            .status()
            .progress
            .publish(BlockProgress::Ordered {
                state,
                number: block.height,
                round: block.round.0,
                block_id: block.id().0,
                parent_id: block.parent().0,
                author: block.author.0,
                timestamp_ms: block.timestamp_ms,
            });
    }

    /// Proposals carry their payload; other messages go as they are.
    fn envelope(&self, message: &Message) -> Vec<u8> {
        let payload = match message {
            Message::Proposal(p) => self.payloads.get(&p.block.payload_hash),
            _ => None,
        };
        ConsensusEnvelope::wrap(message, payload.map(Payload::bytes))
    }

    fn send(&self, to: ValidatorIndex, kind: Kind, bytes: alloy_rlp::Bytes) {
        if let Some(peer) = self.members.ids.get(usize::from(to.0)) {
            self.net.send(peer, kind, bytes);
        }
    }

    /// The parent's timestamp and fees, once its payload is here.
    fn parent_known(&self, parent: BlockId) -> Option<(u64, ParentFees)> {
        let (head, fees) = (self.finality.head(), self.finality.head_fees());
        self.payloads.parent_known(head, fees, parent)
    }

    /// The pending build's parent without its payload here: asked of peers, unless the payload
    /// came with the proposal and is still with the decoder (under load a QC can make us leader
    /// before that finishes; a copy from a peer would be decoded twice).
    fn fetch_parent(&mut self, now: u64, peers: &[PeerId]) {
        let Some(parent) = self.builder.missing_parent(|p| self.parent_known(p)) else {
            return;
        };
        let Some(block) = self.bft.block(parent) else {
            return;
        };
        if self.payloads.contains(&block.payload_hash) {
            // Fetched for finality, which does not record the block's facts.
            let block = block.clone();
            self.payloads.remember(&block);
        } else if !self.payloads.is_decoding(&block.payload_hash)
            && let Some((peer, request)) = self.builder.ask_parent(now, peers, block)
        {
            metrics::counter!(PARENT_PAYLOAD_REQUESTS).increment(1);
            self.net.send(&peer, Kind::SyncRequest, request.into());
        }
    }

    fn forward_txs(&mut self, now: u64) {
        if self.sync.is_some() || self.members.ids.len() == 1 {
            return;
        }
        let (round, me) = (self.bft.round(), self.bft.me());
        let forwarder = self.forwarder.as_mut().expect("running");
        if let Some((targets, messages)) = forwarder.outgoing(
            now,
            &self.pool,
            &self.members.set,
            round,
            Some(me),
            FORWARD_LEADERS,
        ) {
            for to in targets {
                for message in &messages {
                    self.send(to, Kind::TxForward, message.0.clone());
                }
            }
        }
    }

    /// Logs finalized blocks whose payload is here, then prunes the cache to the new head.
    fn process_commits(&mut self) {
        let peers = self.connected();
        let now = self.now();
        if let Some((peer, request)) = self.finality.process(&self.payloads, now, &peers) {
            self.net.send(&peer, Kind::SyncRequest, request.into());
        }
        self.payloads.prune(self.finality.height());
        self.safety_file.prune(self.finality.height());
    }

    /// Connected peers, in a stable order, so requests rotate through them.
    fn connected(&self) -> Vec<PeerId> {
        self.net.connected_peers().into_iter().collect()
    }
}
