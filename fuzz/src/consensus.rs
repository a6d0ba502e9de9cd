//! Target `consensus_machine`: three honest `Bft` machines and one Byzantine validator whose
//! every move, and the network's, comes from the fuzz input (a byte-driven generator over
//! `arbitrary::Unstructured`): which message is delivered, dropped or delivered twice, which timer
//! fires, when payloads and execution results arrive, and what the Byzantine validator signs
//! (proposals on any parent it knows, votes, timeouts with any QC it saw, equivocations, block
//! answers, raw bytes). With f = 1 of 4 Byzantine, after every step:
//! - no two honest validators commit different blocks at a height, and each one's commits
//!   extend its previous ones, with a commit proof that verifies;
//! - no honest validator votes twice in a round, and each persists its safety state before it
//!   votes; its round never goes back;
//! - no honest validator sees a *certified* execution mismatch (execution here is deterministic).

use alloy_primitives::{B256, keccak256};
use kestrel_consensus::Round;
use kestrel_consensus::bft::{
    Bft, Block, BlockId, BlockRequest, Command, CommittedBlock, Config, Event, Message, Proposal,
    QuorumCert, SafetyState, Timeout, TimeoutCert, Unverified, ValidatorIndex, ValidatorKey,
    ValidatorSet, Vote,
};
use kestrel_types::ExecutionResult;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use std::collections::BTreeMap;

const HONEST: usize = 3;
const BYZANTINE: u16 = 3;
const TIMEOUT_MS: u64 = 1_000;
const EXECUTION_DELAY: u64 = 2;
/// Steps per input: enough for tens of rounds, few enough to keep executions fast.
const STEPS_MAX: usize = 600;
/// Messages in flight; the generator stops sending when it is full.
const IN_FLIGHT_MAX: usize = 512;
/// Steps of the calm network after the script: enough for a few commits.
const HEAL_STEPS: usize = 150;
/// Blocks, QCs and TCs the Byzantine validator remembers to build on.
const KNOWN_MAX: usize = 64;

pub fn key(i: u16) -> ValidatorKey {
    let mut bytes = [0u8; 32];
    bytes[30..].copy_from_slice(&(i + 1).to_be_bytes());
    bytes[0] = 0x4b; // 'K': keys of their own, not the unit tests'
    ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&bytes).expect("valid key"))
}

pub fn validator_set() -> ValidatorSet {
    ValidatorSet::new((0..=BYZANTINE).map(|i| (key(i).id(), 1)).collect()).expect("valid set")
}

/// What execution returns for a block: a function of its id, as every honest node computes.
fn result_of(height: u64, id: BlockId) -> ExecutionResult {
    ExecutionResult {
        number: height,
        block_hash: id.0,
        state_root: keccak256(id.0),
        receipts_root: keccak256(keccak256(id.0)),
    }
}

struct Node {
    bft: Bft,
    round: Round,
    voted: Round,
    persisted: Round,
    committed: (u64, BlockId),
    /// Committed heights waiting for their `Executed` event, lowest first.
    to_execute: Vec<(u64, BlockId)>,
}

struct Sim {
    set: ValidatorSet,
    byzantine: ValidatorKey,
    now: u64,
    nodes: Vec<Node>,
    in_flight: Vec<(usize, u16, Message)>,
    timers: Vec<(usize, Round, u64)>,
    payloads: Vec<(usize, Round)>,
    /// Every honest commit, by height: the agreement check.
    finalized: BTreeMap<u64, BlockId>,
    blocks: Vec<Block>,
    qcs: Vec<QuorumCert>,
    tcs: Vec<TimeoutCert>,
}

pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut sim = Sim::new();
    for _ in 0..STEPS_MAX {
        if u.is_empty() || sim.step(&mut u).is_err() {
            break;
        }
    }
    // Then the network heals and the Byzantine validator goes quiet: whatever state the script
    // left, the honest validators go on from it (and the checks keep running) for a while.
    for _ in 0..HEAL_STEPS {
        sim.heal_step();
    }
    // To check that a corpus gets somewhere (run the target with -runs=0 on it): how far each
    // honest validator got.
    if *SHOW_PROGRESS {
        let rounds: Vec<u64> = sim.nodes.iter().map(|n| n.round.0).collect();
        let heights: Vec<u64> = sim.nodes.iter().map(|n| n.committed.0).collect();
        eprintln!("consensus_machine: rounds {rounds:?} committed heights {heights:?}");
    }
}

static SHOW_PROGRESS: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var_os("KESTREL_FUZZ_PROGRESS").is_some());

impl Sim {
    fn new() -> Self {
        let set = validator_set();
        let config = Config {
            round_timeout_ms: TIMEOUT_MS,
            execution_delay: EXECUTION_DELAY,
        };
        let genesis = CommittedBlock::genesis();
        let nodes = (0..HONEST as u16)
            .map(|i| Node {
                bft: Bft::new(
                    config.clone(),
                    key(i),
                    set.clone(),
                    genesis.clone(),
                    SafetyState::genesis(),
                )
                .expect("a member"),
                round: Round(0),
                voted: Round(0),
                persisted: Round(0),
                committed: (0, genesis.block.id()),
                to_execute: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
            set,
            byzantine: key(BYZANTINE),
            now: 1_700_000_000_000,
            nodes,
            in_flight: Vec::new(),
            timers: Vec::new(),
            payloads: Vec::new(),
            finalized: BTreeMap::from([(0, genesis.block.id())]),
            blocks: vec![genesis.block.clone()],
            qcs: vec![QuorumCert::genesis()],
            tcs: Vec::new(),
        };
        for n in 0..HONEST {
            sim.update(n, Event::Start);
        }
        sim
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=17)? {
            // The network: deliver (most often), drop or duplicate a message.
            0..=8 if !self.in_flight.is_empty() => {
                let i = u.choose_index(self.in_flight.len())?;
                let (to, from, message) = self.in_flight.swap_remove(i);
                self.deliver(to, from, message);
            }
            9 if !self.in_flight.is_empty() => {
                let i = u.choose_index(self.in_flight.len())?;
                if u.arbitrary()? {
                    self.in_flight.swap_remove(i);
                } else {
                    let (to, from, message) = self.in_flight[i].clone();
                    self.deliver(to, from, message);
                }
            }
            // Time: a timer fires (the clock jumps to it), or the clock moves a little.
            10 if !self.timers.is_empty() => {
                let i = u.choose_index(self.timers.len())?;
                let (n, round, at) = self.timers.swap_remove(i);
                self.now = self.now.max(at);
                self.update(n, Event::Timeout { round });
            }
            11 if !self.payloads.is_empty() => {
                let i = u.choose_index(self.payloads.len())?;
                let (n, round) = self.payloads.swap_remove(i);
                let payload_hash = B256::from(u.arbitrary::<[u8; 32]>()?);
                self.update(
                    n,
                    Event::PayloadReady {
                        round,
                        payload_hash,
                    },
                );
            }
            12 => {
                let n = u.choose_index(HONEST)?;
                if !self.nodes[n].to_execute.is_empty() {
                    let (height, id) = self.nodes[n].to_execute.remove(0);
                    self.update(n, Event::Executed(result_of(height, id)));
                }
            }
            13 => self.now += u64::from(u.int_in_range(1u16..=2_000)?),
            // The Byzantine validator.
            14 => {
                let message = self.byzantine_proposal(u)?;
                self.byzantine_send(u, message)?;
            }
            15 => {
                let message = self.byzantine_vote_or_timeout(u)?;
                self.byzantine_send(u, message)?;
            }
            16 => {
                let message = if u.arbitrary()? {
                    let count = u.arbitrary()?;
                    let block_id = self.choose_block_id(u)?;
                    Message::BlockRequest(BlockRequest { block_id, count })
                } else {
                    let count = u.int_in_range(0..=4)?;
                    let blocks = (0..count)
                        .map(|_| u.choose(&self.blocks).cloned())
                        .collect::<Result<Vec<_>>>()?;
                    Message::Blocks(blocks)
                };
                self.byzantine_send(u, message)?;
            }
            _ => {
                // Raw bytes off the wire, as if the Byzantine validator sent them.
                let len = u.int_in_range(0..=256)?;
                let bytes = u.bytes(len)?;
                if let Ok(message) = Unverified::<Message>::decode(bytes) {
                    let to = u.choose_index(HONEST)?;
                    self.update(
                        to,
                        Event::Message {
                            from: ValidatorIndex(BYZANTINE),
                            message,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// One step of a calm network: the oldest message is delivered, else payloads are built and
    /// blocks executed, else the earliest timer fires.
    fn heal_step(&mut self) {
        if !self.in_flight.is_empty() {
            let (to, from, message) = self.in_flight.remove(0);
            if from != BYZANTINE {
                self.deliver(to, from, message);
            }
        } else if let Some((n, round)) = self.payloads.pop() {
            let payload_hash = keccak256(round.0.to_be_bytes());
            self.update(
                n,
                Event::PayloadReady {
                    round,
                    payload_hash,
                },
            );
        } else if let Some(n) = (0..HONEST).find(|n| !self.nodes[*n].to_execute.is_empty()) {
            let (height, id) = self.nodes[n].to_execute.remove(0);
            self.update(n, Event::Executed(result_of(height, id)));
        } else if let Some(i) = (0..self.timers.len()).min_by_key(|i| self.timers[*i].2) {
            let (n, round, at) = self.timers.swap_remove(i);
            self.now = self.now.max(at);
            self.update(n, Event::Timeout { round });
        }
    }

    /// A round near where the honest validators are, or now and then any round at all.
    fn choose_round(&self, u: &mut Unstructured<'_>) -> Result<Round> {
        Ok(match u.int_in_range(0..=9)? {
            0 => Round(u.arbitrary()?),
            1 => Round(u64::MAX),
            _ => {
                let base = self.nodes[u.choose_index(HONEST)?].round.0;
                Round(base.saturating_add_signed(i64::from(u.int_in_range(-2i8..=3)?)))
            }
        })
    }

    fn choose_block_id(&self, u: &mut Unstructured<'_>) -> Result<BlockId> {
        Ok(if u.ratio(1, 8)? {
            BlockId(B256::from(u.arbitrary::<[u8; 32]>()?))
        } else {
            u.choose(&self.blocks)?.id()
        })
    }

    fn byzantine_proposal(&self, u: &mut Unstructured<'_>) -> Result<Message> {
        let qc = u.choose(&self.qcs)?.clone();
        // Its own round when it leads one soon, else any round (verification refuses those).
        let round = if u.ratio(3, 4)? {
            let from = qc.round.0.saturating_add(1);
            (from..from.saturating_add(8))
                .map(Round)
                .find(|r| self.set.leader(*r) == ValidatorIndex(BYZANTINE))
                .unwrap_or(Round(from))
        } else {
            self.choose_round(u)?
        };
        let last_tc = if u.arbitrary()? {
            self.tcs
                .iter()
                .find(|tc| tc.round.0.checked_add(1) == Some(round.0))
                .cloned()
        } else {
            None
        };
        let delayed_result = if u.arbitrary()? {
            let height = qc.height.saturating_add(1).saturating_sub(EXECUTION_DELAY);
            let id = self.finalized.get(&height).copied().unwrap_or_default();
            let mut result = result_of(height, id);
            if u.ratio(1, 4)? {
                result.state_root = B256::from(u.arbitrary::<[u8; 32]>()?); // a lie
            }
            Some(result)
        } else {
            None
        };
        let parent_ms = self
            .blocks
            .iter()
            .find(|b| b.id() == qc.block_id)
            .map_or(0, |b| b.timestamp_ms);
        let timestamp_ms = match u.int_in_range(0..=5)? {
            0 => u.arbitrary()?,
            1 => parent_ms,
            _ => self.now.max(parent_ms + 1),
        };
        let block = Block {
            round,
            height: qc.height.saturating_add(1),
            author: ValidatorIndex(BYZANTINE),
            timestamp_ms,
            payload_hash: B256::from(u.arbitrary::<[u8; 32]>()?),
            qc,
            delayed_result,
        };
        Ok(Message::Proposal(Proposal::new(
            block,
            last_tc,
            &self.byzantine,
        )))
    }

    fn byzantine_vote_or_timeout(&self, u: &mut Unstructured<'_>) -> Result<Message> {
        if u.arbitrary()? {
            let block = u.choose(&self.blocks)?;
            let round = if u.ratio(3, 4)? {
                block.round
            } else {
                self.choose_round(u)?
            };
            Ok(Message::Vote(Vote::new(
                round,
                block.height,
                block.id(),
                ValidatorIndex(BYZANTINE),
                &self.byzantine,
            )))
        } else {
            let round = self.choose_round(u)?;
            let high_qc = u.choose(&self.qcs)?.clone();
            let last_tc = if u.arbitrary()? && !self.tcs.is_empty() {
                Some(u.choose(&self.tcs)?.clone())
            } else {
                None
            };
            Ok(Message::Timeout(Timeout::new(
                round,
                high_qc,
                last_tc,
                ValidatorIndex(BYZANTINE),
                &self.byzantine,
            )))
        }
    }

    /// To one honest validator, or to each (an equivocation is two sends of different messages).
    fn byzantine_send(&mut self, u: &mut Unstructured<'_>, message: Message) -> Result<()> {
        if u.arbitrary()? {
            self.deliver(u.choose_index(HONEST)?, BYZANTINE, message);
        } else {
            for to in 0..HONEST {
                self.send(to, BYZANTINE, message.clone());
            }
        }
        Ok(())
    }

    fn send(&mut self, to: usize, from: u16, message: Message) {
        if self.in_flight.len() < IN_FLIGHT_MAX {
            self.in_flight.push((to, from, message));
        }
    }

    /// Through the wire encoding, as the driver hands messages over.
    fn deliver(&mut self, to: usize, from: u16, message: Message) {
        let message =
            Unverified::<Message>::decode(&message.encode_to_vec()).expect("own encoding decodes");
        self.update(
            to,
            Event::Message {
                from: ValidatorIndex(from),
                message,
            },
        );
    }

    fn learn(&mut self, message: &Message) {
        let remember_qc = |qcs: &mut Vec<QuorumCert>, qc: &QuorumCert| {
            if !qcs.contains(qc) {
                if qcs.len() >= KNOWN_MAX {
                    qcs.remove(1); // genesis stays
                }
                qcs.push(qc.clone());
            }
        };
        let remember_tc = |tcs: &mut Vec<TimeoutCert>, tc: &TimeoutCert| {
            if !tcs.contains(tc) {
                if tcs.len() >= KNOWN_MAX {
                    tcs.remove(0);
                }
                tcs.push(tc.clone());
            }
        };
        match message {
            Message::Proposal(p) => {
                remember_qc(&mut self.qcs, &p.block.qc);
                if !self.blocks.contains(&p.block) {
                    if self.blocks.len() >= KNOWN_MAX {
                        self.blocks.remove(1);
                    }
                    self.blocks.push(p.block.clone());
                }
                if let Some(tc) = &p.last_tc {
                    remember_tc(&mut self.tcs, tc);
                }
            }
            Message::Certificate(qc) => remember_qc(&mut self.qcs, qc),
            Message::TimeoutCertificate(tc) => remember_tc(&mut self.tcs, tc),
            Message::Timeout(t) => {
                remember_qc(&mut self.qcs, &t.high_qc);
                if let Some(tc) = &t.last_tc {
                    remember_tc(&mut self.tcs, tc);
                }
            }
            Message::Vote(_) | Message::BlockRequest(_) | Message::Blocks(_) => {}
        }
    }

    fn update(&mut self, n: usize, event: Event) {
        let commands = self.nodes[n].bft.update(self.now, event);
        let node = &mut self.nodes[n];
        assert!(node.bft.round() >= node.round, "node {n}: round went back");
        node.round = node.bft.round();
        let mut persisted_now = node.persisted;
        for command in commands {
            match command {
                Command::PersistSafety(SafetyState {
                    highest_voted_round,
                    ..
                }) => {
                    let node = &mut self.nodes[n];
                    assert!(
                        highest_voted_round >= node.persisted,
                        "node {n}: safety state went back"
                    );
                    node.persisted = highest_voted_round;
                    persisted_now = highest_voted_round;
                }
                // Kept with the safety state; this harness never restarts a node.
                Command::PersistBlock(_) => {}
                Command::Broadcast(message) => {
                    self.check_sent(n, persisted_now, &message);
                    self.learn(&message);
                    for to in (0..HONEST).filter(|to| *to != n) {
                        self.send(to, n as u16, message.clone());
                    }
                }
                Command::SendTo(to, message) => {
                    self.check_sent(n, persisted_now, &message);
                    self.learn(&message);
                    if usize::from(to.0) < HONEST {
                        self.send(usize::from(to.0), n as u16, message);
                    }
                }
                Command::ScheduleTimeout { round, at_ms } => {
                    assert!(at_ms > self.now, "node {n}: timer in the past");
                    self.timers.push((n, round, at_ms));
                }
                Command::RequestPayload { round, .. } => self.payloads.push((n, round)),
                Command::Commit { blocks, proof } => self.check_commit(n, &blocks, &proof),
                Command::ExecutionMismatch { certified, .. } => {
                    assert!(!certified, "node {n}: a certified execution mismatch");
                }
                Command::Proposed(_) | Command::Verified(_) => {}
            }
        }
    }

    /// An honest validator's own vote or timeout: one per round, persisted first.
    fn check_sent(&mut self, n: usize, persisted: Round, message: &Message) {
        let node = &mut self.nodes[n];
        match message {
            Message::Vote(v) if v.signer.0 == n as u16 => {
                assert!(
                    v.round > node.voted,
                    "node {n}: voted twice at or below {:?}",
                    v.round
                );
                assert!(v.round <= persisted, "node {n}: voted before persisting");
                node.voted = v.round;
            }
            Message::Timeout(t) if t.signer.0 == n as u16 => {
                assert!(
                    t.round <= persisted,
                    "node {n}: timed out before persisting"
                );
            }
            _ => {}
        }
    }

    fn check_commit(
        &mut self,
        n: usize,
        blocks: &[CommittedBlock],
        proof: &kestrel_consensus::bft::CommitProof,
    ) {
        let last = blocks.last().expect("a commit has blocks");
        proof
            .verify(&last.block, &self.set)
            .expect("commit proof verifies");
        let node = &mut self.nodes[n];
        let (mut height, mut id) = node.committed;
        for c in blocks {
            assert_eq!(
                c.block.parent(),
                id,
                "node {n}: commit does not extend its root"
            );
            assert_eq!(
                c.block.height,
                height + 1,
                "node {n}: commit skips a height"
            );
            (height, id) = (c.block.height, c.block.id());
            let agreed = *self.finalized.entry(height).or_insert(id);
            assert_eq!(
                agreed, id,
                "two honest validators finalized different blocks at {height}"
            );
            node.to_execute.push((height, id));
        }
        node.committed = (height, id);
    }
}
