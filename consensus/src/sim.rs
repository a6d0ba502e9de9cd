//! Deterministic simulation of a validator network (monad-bft's mock swarm, TigerBeetle's VOPR):
//! a virtual clock, a seeded RNG, messages through the real wire encoding with random delay,
//! drops and reordering, partitions that heal, crash-restarts from persisted state, an
//! equivocating validator run as two twins (monad-bft's twins), forged, tampered and replayed
//! messages, and an executor that diverges. After every run it checks safety (no two honest
//! validators commit different blocks at a height) and liveness (after the faults stop, every
//! honest validator commits new blocks within a bounded time).
//!
//! `KESTREL_SIM_RUNS=N` sets the number of seeded runs (default 1,000); `KESTREL_SIM_SEED=S`
//! replays one seed.

use crate::Round;
use crate::bft::{
    Bft, Block, BlockId, Command, CommittedBlock, Config, Event, Message, Proposal, QuorumCert,
    ROUND_TIMEOUT_MAX_FACTOR, SafetyState, SignerSig, Timeout, Unverified, ValidatorIndex,
    ValidatorKey, ValidatorSet, Vote,
};
use alloy_primitives::{B256, keccak256};
use kestrel_types::ExecutionResult;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BinaryHeap};

const TIMEOUT_MS: u64 = 1_000;
const EXECUTION_DELAY: u64 = 3;
/// After the faults stop, every honest validator must commit this many blocks beyond the
/// highest height any had reached...
const LIVENESS_BLOCKS: u64 = 3;
/// ...within this many round timeouts.
const LIVENESS_TIMEOUTS: u64 = 8;
/// Captured messages kept for replay.
const CAPTURED_MAX: usize = 256;

fn key(i: usize) -> ValidatorKey {
    let secret = keccak256(format!("kestrel-sim-validator-{i}"));
    ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&secret.0).expect("valid key"))
}

fn validator_set(n: usize) -> ValidatorSet {
    ValidatorSet::new((0..n).map(|i| (key(i).id(), 1)).collect()).expect("valid set")
}

/// What goes wrong in one run. Every fault stops at `heal_ms`.
#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    n: usize,
    delay_max_ms: u64,
    drop_prob: f64,
    heal_ms: u64,
    /// [start, end) and each validator's side.
    partition: Option<(u64, u64, Vec<bool>)>,
    /// (validator, crash at, restart at); `u64::MAX` never restarts.
    crashes: Vec<(usize, u64, u64)>,
    /// A Byzantine validator run as two instances with one key, each talking to one side.
    twin: Option<(usize, Vec<bool>)>,
    forgeries: bool,
    buggy_executor: Option<usize>,
    quorum_override: Option<u64>,
    /// Restart without the blocks voted for (`PersistBlock`): what a driver that persists only
    /// the safety state does.
    forget_voted: bool,
}

impl Scenario {
    fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let n = if seed.is_multiple_of(2) { 4 } else { 7 };
        let f = (n - 1) / 3;
        let heal_ms = 5_000;
        let twin = rng.random_bool(0.5).then(|| {
            (
                rng.random_range(0..n),
                (0..n).map(|_| rng.random_bool(0.5)).collect(),
            )
        });
        // One Byzantine-behaving validator at most (twin or diverging executor): with two,
        // a 7-validator cycle has only ~one committing pair of rounds and the liveness window
        // would have to grow. Crash-restarts (up to f) come on top.
        let buggy_executor =
            (twin.is_none() && rng.random_bool(0.2)).then(|| rng.random_range(0..n));
        let partition = rng.random_bool(0.5).then(|| {
            let start = rng.random_range(0..heal_ms / 2);
            let end = rng.random_range(start..heal_ms);
            (start, end, (0..n).map(|_| rng.random_bool(0.5)).collect())
        });
        let crashes = (0..rng.random_range(0..=f))
            .map(|_| {
                let at = rng.random_range(0..heal_ms - 1_000);
                (
                    rng.random_range(0..n),
                    at,
                    rng.random_range(at + 1..heal_ms),
                )
            })
            .filter(|c| Some(c.0) != buggy_executor)
            .collect();
        Scenario {
            seed,
            n,
            delay_max_ms: rng.random_range(60..300),
            drop_prob: rng.random_range(0.0..0.2),
            heal_ms,
            partition,
            crashes,
            twin,
            forgeries: rng.random_bool(0.5),
            buggy_executor,
            quorum_override: None,
            forget_voted: false,
        }
    }

    fn calm(seed: u64, n: usize) -> Self {
        Scenario {
            seed,
            n,
            delay_max_ms: 50,
            drop_prob: 0.0,
            heal_ms: 0,
            partition: None,
            crashes: Vec::new(),
            twin: None,
            forgeries: false,
            buggy_executor: None,
            quorum_override: None,
            forget_voted: false,
        }
    }

    /// Healed, a validator may still be in a round whose timeout backed off to the longest.
    fn end_ms(&self) -> u64 {
        self.heal_ms + (ROUND_TIMEOUT_MAX_FACTOR + LIVENESS_TIMEOUTS) * TIMEOUT_MS
    }
}

#[derive(Debug)]
enum Violation {
    /// Two honest validators committed different blocks at `height`.
    Safety { height: u64 },
    /// A validator committed heights out of order.
    Gap { instance: usize, height: u64 },
    /// An honest validator did not commit enough after the faults stopped.
    Liveness {
        instance: usize,
        height: u64,
        needed: u64,
    },
    /// A validator whose execution diverged kept voting, or an honest one stopped.
    Halt { instance: usize, halted: bool },
    /// A state machine panicked (e.g. its own conflicting-commit assertion).
    Panic(String),
    /// A commit came with a proof that does not check.
    BadCommitProof { height: u64 },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Safety { height } => {
                write!(f, "safety: conflicting commits at height {height}")
            }
            Violation::BadCommitProof { height } => {
                write!(f, "commit of height {height} with an invalid commit proof")
            }
            Violation::Gap { instance, height } => {
                write!(
                    f,
                    "instance {instance} committed height {height} out of order"
                )
            }
            Violation::Liveness {
                instance,
                height,
                needed,
            } => write!(
                f,
                "liveness: instance {instance} reached height {height}, needed {needed} after healing"
            ),
            Violation::Halt { instance, halted } => {
                write!(
                    f,
                    "instance {instance} halted={halted}, expected the opposite"
                )
            }
            Violation::Panic(msg) => write!(f, "state machine panicked: {msg}"),
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    height: u64,
    mismatch_alarms: usize,
    rounds: u64,
}

/// One running copy of a validator. A twin validator has two.
struct Instance {
    validator: usize,
    /// For twins: which side it talks to.
    side: bool,
    honest: bool,
    sm: Option<Bft>,
    incarnation: u32,
    safety: SafetyState,
    /// Blocks voted for above `root`, as the driver persists them with the safety state.
    voted: Vec<Block>,
    root: CommittedBlock,
    committed: u64,
    /// State root of this instance's last executed block.
    exec_root: B256,
    /// Its latest execution results, as storage would keep them across a crash.
    results: BTreeMap<u64, ExecutionResult>,
}

enum Ev {
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Timer {
        to: usize,
        inc: u32,
        round: Round,
    },
    Payload {
        to: usize,
        inc: u32,
        round: Round,
    },
    Executed {
        to: usize,
        inc: u32,
        result: ExecutionResult,
    },
    Crash(usize),
    Restart(usize),
    Heal,
    Forge(usize),
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

struct Sim {
    sc: Scenario,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    set: ValidatorSet,
    instances: Vec<Instance>,
    canonical: BTreeMap<u64, BlockId>,
    captured: Vec<Vec<u8>>,
    heal_height: Option<u64>,
    outcome: Outcome,
}

impl Sim {
    fn new(sc: Scenario) -> Self {
        let mut set = validator_set(sc.n);
        if let Some(q) = sc.quorum_override {
            set.quorum_stake = q;
        }
        let mut instances = Vec::new();
        for v in 0..sc.n {
            let twin = sc.twin.as_ref().is_some_and(|t| t.0 == v);
            for side in if twin { vec![false, true] } else { vec![false] } {
                instances.push(Instance {
                    validator: v,
                    side,
                    honest: !twin,
                    sm: None,
                    incarnation: 0,
                    safety: SafetyState::genesis(),
                    voted: Vec::new(),
                    root: CommittedBlock::genesis(),
                    committed: 0,
                    exec_root: B256::ZERO,
                    results: BTreeMap::new(),
                });
            }
        }
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(sc.seed),
            sc,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            set,
            instances,
            canonical: BTreeMap::new(),
            captured: Vec::new(),
            heal_height: None,
            outcome: Outcome::default(),
        };
        for i in 0..sim.instances.len() {
            sim.push(0, Ev::Restart(i));
        }
        for (v, at, back) in sim.sc.crashes.clone() {
            for i in sim.instances_of(v) {
                sim.push(at, Ev::Crash(i));
                if back != u64::MAX {
                    sim.push(back, Ev::Restart(i));
                }
            }
        }
        sim.push(sim.sc.heal_ms, Ev::Heal);
        if sim.sc.forgeries {
            for _ in 0..20 {
                let at = sim.rng.random_range(0..sim.sc.heal_ms.max(1));
                let to = sim.rng.random_range(0..sim.instances.len());
                sim.push(at, Ev::Forge(to));
            }
        }
        sim
    }

    fn instances_of(&self, v: usize) -> Vec<usize> {
        (0..self.instances.len())
            .filter(|i| self.instances[*i].validator == v)
            .collect()
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn faulty_now(&self) -> bool {
        self.now < self.sc.heal_ms
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        let end = self.sc.end_ms();
        while let Some(q) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.step(q.ev)?;
        }
        self.check_end()?;
        Ok(self.outcome)
    }

    fn step(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Deliver { to, from, bytes } => {
                // The real decoder: tampered bytes must fail here or in verification.
                if let Ok(message) = Unverified::decode(&bytes) {
                    let from = ValidatorIndex(from as u16);
                    self.update(to, Event::Message { from, message })?;
                }
            }
            Ev::Timer { to, inc, round } => {
                if self.live(to, inc) {
                    self.update(to, Event::Timeout { round })?;
                }
            }
            Ev::Payload { to, inc, round } => {
                if self.live(to, inc) {
                    let payload_hash =
                        keccak256(format!("{to}/{}/{}", round.0, self.rng.random::<u64>()));
                    self.update(
                        to,
                        Event::PayloadReady {
                            round,
                            payload_hash,
                        },
                    )?;
                }
            }
            Ev::Executed { to, inc, result } => {
                if self.live(to, inc) {
                    self.update(to, Event::Executed(result))?;
                }
            }
            Ev::Crash(i) => {
                self.instances[i].sm = None;
                self.instances[i].incarnation += 1;
            }
            Ev::Restart(i) => {
                let inst = &mut self.instances[i];
                let config = Config {
                    round_timeout_ms: TIMEOUT_MS,
                    execution_delay: EXECUTION_DELAY,
                };
                inst.incarnation += 1;
                inst.sm = Some(
                    Bft::new(
                        config,
                        key(inst.validator),
                        self.set.clone(),
                        inst.root.clone(),
                        inst.safety.clone(),
                    )
                    .expect("member"),
                );
                let voted = if self.sc.forget_voted {
                    Vec::new()
                } else {
                    inst.voted.clone()
                };
                // A restarted driver replays the results storage has for the last blocks.
                for result in inst.results.values().copied().collect::<Vec<_>>() {
                    self.update(i, Event::Executed(result))?;
                }
                self.update(i, Event::Restore(voted))?;
                self.update(i, Event::Start)?;
            }
            Ev::Heal => {
                self.heal_height = Some(
                    self.honest()
                        .map(|i| self.instances[i].committed)
                        .max()
                        .unwrap_or(0),
                );
            }
            Ev::Forge(to) => self.forge(to),
        }
        Ok(())
    }

    fn live(&self, i: usize, inc: u32) -> bool {
        self.instances[i].sm.is_some() && self.instances[i].incarnation == inc
    }

    fn honest(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.instances.len()).filter(|i| self.instances[*i].honest)
    }

    fn update(&mut self, i: usize, event: Event) -> Result<(), Violation> {
        let now = self.now;
        let Some(sm) = self.instances[i].sm.as_mut() else {
            return Ok(());
        };
        let cmds = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sm.update(now, event)))
            .map_err(|e| {
                Violation::Panic(
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                )
            })?;
        self.outcome.rounds = self.outcome.rounds.max(sm.round().0);
        let inc = self.instances[i].incarnation;
        for cmd in cmds {
            match cmd {
                Command::PersistSafety(s) => self.instances[i].safety = s,
                Command::PersistBlock(b) => self.instances[i].voted.push(b),
                Command::Broadcast(msg) => {
                    let bytes = msg.encode_to_vec();
                    for v in 0..self.sc.n {
                        if v != self.instances[i].validator {
                            self.send(i, v, bytes.clone());
                        }
                    }
                }
                Command::SendTo(v, msg) => self.send(i, usize::from(v.0), msg.encode_to_vec()),
                Command::ScheduleTimeout { round, at_ms } => {
                    self.push(at_ms, Ev::Timer { to: i, inc, round })
                }
                Command::RequestPayload { round, .. } => {
                    let at = now + self.rng.random_range(1..5);
                    self.push(at, Ev::Payload { to: i, inc, round });
                }
                Command::Commit { blocks, proof } => {
                    let last = &blocks.last().expect("a commit has blocks").block;
                    // Checking signatures costs; one validator's commits cover the proof logic.
                    if i == 0 && proof.verify(last, &self.set).is_err() {
                        return Err(Violation::BadCommitProof {
                            height: last.height,
                        });
                    }
                    let mut at = now + self.rng.random_range(1..5);
                    for c in blocks {
                        let result = self.commit(i, &c)?;
                        at += 1;
                        self.push(at, Ev::Executed { to: i, inc, result });
                    }
                }
                Command::ExecutionMismatch { .. } => self.outcome.mismatch_alarms += 1,
                Command::Proposed(_) | Command::Verified(_) => {}
            }
        }
        Ok(())
    }

    /// Record a commit, check it against every other honest validator's, and execute it.
    fn commit(&mut self, i: usize, c: &CommittedBlock) -> Result<ExecutionResult, Violation> {
        let inst = &mut self.instances[i];
        let height = c.block.height;
        if height != inst.committed + 1 {
            return Err(Violation::Gap {
                instance: i,
                height,
            });
        }
        inst.committed = height;
        inst.root = c.clone();
        inst.voted.retain(|b| b.height > height);
        self.outcome.height = self.outcome.height.max(height);
        let id = c.block.id();
        if inst.honest {
            let known = *self.canonical.entry(height).or_insert(id);
            if known != id {
                return Err(Violation::Safety { height });
            }
        }
        // A toy execution: the state root chains the payloads. The buggy executor diverges
        // from height 2 on.
        inst.exec_root = keccak256([inst.exec_root.0, c.block.payload_hash.0].concat());
        let mut state_root = inst.exec_root;
        if self.sc.buggy_executor == Some(inst.validator) && height >= 2 {
            state_root.0[0] ^= 1;
        }
        let result = ExecutionResult {
            number: height,
            block_hash: id.0,
            state_root,
            receipts_root: B256::ZERO,
        };
        inst.results.insert(height, result);
        if inst.results.len() > 2 * EXECUTION_DELAY as usize {
            inst.results.pop_first();
        }
        Ok(result)
    }

    fn send(&mut self, from: usize, to_validator: usize, bytes: Vec<u8>) {
        if self.captured.len() < CAPTURED_MAX {
            self.captured.push(bytes.clone());
        } else {
            let slot = self.rng.random_range(0..CAPTURED_MAX);
            self.captured[slot] = bytes.clone();
        }
        let from_side = self.side_of(from);
        for to in self.instances_of(to_validator) {
            // A twin only talks to the honest validators on its side, and they only to it.
            let sender_twin = !self.instances[from].honest;
            let receiver_twin = !self.instances[to].honest;
            if (sender_twin || receiver_twin) && from_side != self.side_of(to) {
                continue;
            }
            if self.faulty_now() {
                if let Some((start, end, sides)) = &self.sc.partition
                    && (*start..*end).contains(&self.now)
                    && sides[self.instances[from].validator] != sides[to_validator]
                {
                    continue;
                }
                if self.rng.random_bool(self.sc.drop_prob) {
                    continue;
                }
            }
            // Delays spread over [max/3, max]: messages overtake each other.
            let at = self.now
                + self
                    .rng
                    .random_range(self.sc.delay_max_ms / 3..=self.sc.delay_max_ms);
            let from = self.instances[from].validator;
            self.push(
                at,
                Ev::Deliver {
                    to,
                    from,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Which side of the twin a given instance is on.
    fn side_of(&self, i: usize) -> bool {
        let inst = &self.instances[i];
        match &self.sc.twin {
            Some(_) if !inst.honest => inst.side,
            Some((_, sides)) => sides[inst.validator],
            None => false,
        }
    }

    /// Forged, tampered and replayed messages: none may change what honest validators commit.
    fn forge(&mut self, to: usize) {
        let n = self.sc.n;
        let claimed = ValidatorIndex(self.rng.random_range(0..n) as u16);
        let outsider = key(1_000 + self.rng.random_range(0..10));
        let round = Round(self.rng.random_range(1..50));
        let fake_block = Block {
            round,
            height: 1,
            author: self.set.leader(round),
            timestamp_ms: self.now,
            payload_hash: B256::repeat_byte(0xee),
            qc: QuorumCert::genesis(),
            delayed_result: None,
        };
        let bytes = match self.rng.random_range(0..5) {
            // A vote claiming to be from a validator, signed by an outsider.
            0 => Message::Vote(Vote::new(round, 1, fake_block.id(), claimed, &outsider))
                .encode_to_vec(),
            // A proposal in the leader's name, signed by an outsider.
            1 => Message::Proposal(Proposal::new(fake_block, None, &outsider)).encode_to_vec(),
            // A timeout carrying a QC "signed" by a quorum of outsiders.
            2 => {
                let id = fake_block.id();
                let qc = QuorumCert {
                    round,
                    height: 1,
                    block_id: id,
                    signatures: (0..n as u16)
                        .map(|s| SignerSig {
                            signer: ValidatorIndex(s),
                            signature: Vote::new(round, 1, id, ValidatorIndex(s), &outsider)
                                .signature,
                        })
                        .collect(),
                };
                Message::Timeout(Timeout::new(round.next(), qc, None, claimed, &outsider))
                    .encode_to_vec()
            }
            // A real message with one byte flipped.
            3 if !self.captured.is_empty() => {
                let mut bytes =
                    self.captured[self.rng.random_range(0..self.captured.len())].clone();
                let at = self.rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << self.rng.random_range(0..8);
                bytes
            }
            // A real message replayed, possibly much later and to someone else.
            _ if !self.captured.is_empty() => {
                self.captured[self.rng.random_range(0..self.captured.len())].clone()
            }
            _ => return,
        };
        let at = self.now + self.rng.random_range(1..=self.sc.delay_max_ms);
        self.push(
            at,
            Ev::Deliver {
                to,
                from: usize::from(claimed.0),
                bytes,
            },
        );
    }

    fn check_end(&self) -> Result<(), Violation> {
        let needed = self.heal_height.unwrap_or(0) + LIVENESS_BLOCKS;
        for i in self.honest() {
            let inst = &self.instances[i];
            let Some(sm) = &inst.sm else { continue };
            let buggy = self.sc.buggy_executor == Some(inst.validator);
            if sm.is_halted() != buggy {
                return Err(Violation::Halt {
                    instance: i,
                    halted: sm.is_halted(),
                });
            }
            if !buggy && inst.committed < needed {
                return Err(Violation::Liveness {
                    instance: i,
                    height: inst.committed,
                    needed,
                });
            }
        }
        Ok(())
    }
}

fn run(sc: Scenario) -> Result<Outcome, Violation> {
    Sim::new(sc).run()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

#[test]
fn seeded_runs_are_safe_and_live() {
    let seeds: Vec<u64> = match env_u64("KESTREL_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("KESTREL_SIM_RUNS").unwrap_or(1_000)).collect(),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = &seeds;
                s.spawn(move || {
                    seeds
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .filter_map(|seed| {
                            let sc = Scenario::random(*seed);
                            run(sc.clone()).err().map(|v| {
                                format!(
                                    "seed {seed} failed: {v}\n  scenario: {sc:?}\n  rerun: KESTREL_SIM_SEED={seed} cargo test -p kestrel-consensus --release seeded_runs"
                                )
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sim thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} runs failed:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn calm_network_commits_a_block_per_round() {
    for n in [4, 7] {
        let mut sc = Scenario::calm(1, n);
        sc.heal_ms = 5_000;
        let out = run(sc).expect("calm run");
        // Two-chain commit: a block is final two rounds after it is proposed, and no round
        // times out, so nearly every round commits a block.
        assert!(out.rounds >= 20, "{out:?}");
        assert!(out.height + 3 >= out.rounds, "{out:?}");
    }
}

/// A crashed validator stalls two rounds per turn, each for one timeout: the round whose votes
/// it should aggregate, and its own.
#[test]
fn a_crashed_validator_costs_two_rounds_per_turn() {
    let mut sc = Scenario::calm(2, 4);
    sc.crashes = vec![(1, 0, u64::MAX)];
    let out = run(sc).expect("one crashed validator of four is tolerated");
    // 8 s of four-round cycles, each two timeouts (2 s) plus two quick rounds, and each
    // cycle's two good rounds commit about two blocks. Were it three timeouts per cycle, only
    // ~2.5 cycles would fit.
    let cycles = LIVENESS_TIMEOUTS / 2 - 1;
    assert!(out.rounds >= 4 * cycles, "{out:?}");
    assert!(out.height >= 2 * cycles - 1, "{out:?}");
}

/// Every validator crashes and restarts with the same certified, not yet final, block in flight
/// (a calm network always has one: the newest QC's). Their blocks voted for, restored, let the
/// next leader extend it; without them no one holds the block the high QC certifies and the
/// network halts (`docs/SECURITY.md`, "Torture test").
#[test]
fn all_validators_restart_with_a_certified_block_in_flight() {
    let scenario = |seed: u64, forget_voted: bool| {
        let mut sc = Scenario::calm(seed, 4);
        // Back to back, each down for a moment, the last one back before any of them could
        // have finalized a new block.
        let at = 1_000 + seed * 37;
        sc.crashes = (0..4).map(|v| (v, at + 3 * v as u64, at + 20)).collect();
        sc.heal_ms = at + 20;
        sc.forget_voted = forget_voted;
        sc
    };
    let mut halted = 0;
    for seed in 0..10 {
        run(scenario(seed, false)).unwrap_or_else(|v| panic!("seed {seed}: {v}"));
        halted += usize::from(matches!(
            run(scenario(seed, true)),
            Err(Violation::Liveness { .. })
        ));
    }
    assert_eq!(halted, 10, "every run without the voted blocks halts");
}

#[test]
fn liveness_checker_fails_when_more_than_f_are_down() {
    let mut sc = Scenario::calm(3, 4);
    sc.crashes = vec![(1, 0, u64::MAX), (2, 0, u64::MAX)];
    assert!(matches!(run(sc), Err(Violation::Liveness { .. })));
}

#[test]
fn diverging_executor_halts_itself_and_the_rest_go_on() {
    let mut sc = Scenario::calm(4, 4);
    sc.heal_ms = 2_000;
    sc.buggy_executor = Some(2);
    // check_end requires exactly the buggy validator to be halted and the others live.
    let out = run(sc).expect("buggy executor run");
    assert!(out.mismatch_alarms > 0);
}

/// The checkers can fail: with the quorum lowered to f+1, a twin that equivocates across a
/// partition along its sides gets both sides to finalize different blocks.
#[test]
fn safety_checker_catches_a_broken_quorum() {
    let broken = |seed: u64, quorum: Option<u64>| {
        let mut sc = Scenario::calm(seed, 7);
        sc.heal_ms = 6_000;
        // Each side holds the twin and three honest validators, three of them leading
        // consecutive rounds: enough for a quorum of 3 (f+1), not for the real one of 5.
        let sides = vec![false, false, false, false, true, true, true];
        sc.twin = Some((0, sides.clone()));
        sc.partition = Some((0, 6_000, sides));
        sc.quorum_override = quorum;
        run(sc)
    };
    let caught = (0..10)
        .filter(|s| {
            matches!(
                broken(*s, Some(3)),
                Err(Violation::Safety { .. } | Violation::Panic(_))
            )
        })
        .count();
    assert!(caught > 0, "a broken quorum went unnoticed");
    for seed in 0..10 {
        broken(seed, None).expect("the correct quorum is safe");
    }
}
