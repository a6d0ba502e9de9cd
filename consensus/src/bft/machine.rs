//! The BFT state machine: events in, commands out; voting and safety rules, vote aggregation,
//! the two-chain commit rule and the delayed execution result check. The pacemaker (rounds,
//! timeouts, timeout certificates) is in `pacemaker.rs`, the block tree and fetching missing
//! blocks in `tree.rs`.

#[path = "pacemaker.rs"]
mod pacemaker;
#[path = "tree.rs"]
mod tree;

pub use pacemaker::ROUND_TIMEOUT_MAX_FACTOR;
use pacemaker::RoundTimeouts;

use super::metrics as m;
use super::types::{
    Block, BlockId, CertCache, CommitProof, Message, Proposal, QuorumCert, SignerSig, TimeoutCert,
    Unverified, Vote,
};
use super::validators::{ValidatorIndex, ValidatorKey, ValidatorSet};
use crate::Round;
use crate::error::ValidatorSetError;
use alloy_primitives::B256;
use kestrel_types::{BlockNumber, ExecutionResult};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Votes and timeouts further than this many rounds ahead are dropped, so a Byzantine validator
/// cannot fill memory with far-future rounds.
const ROUNDS_AHEAD_MAX: u64 = 1_000;
/// Committed blocks kept to answer sync requests (deeper sync is the driver's, from storage).
const COMMITTED_KEPT: usize = 256;
/// Own execution results and unchecked claims kept.
const RESULTS_KEPT: usize = 256;
/// A block timestamped further than this ahead of our clock gets no vote: leaders' clocks may
/// drift a little, but a far-future timestamp would drag every later block's along.
pub const TIMESTAMP_AHEAD_MAX_MS: u64 = 5_000;

#[derive(Debug, Clone)]
pub struct Config {
    /// How long a round waits for progress before this validator times out, while rounds get
    /// QCs; doubled for each round in a row without one (at most 3 times: `pacemaker.rs`).
    pub round_timeout_ms: u64,
    /// D: the block at height N carries the execution result of block N − D.
    pub execution_delay: u64,
}

/// What must be on disk before a vote or timeout leaves the node, so a restarted validator
/// never votes twice in a round nor reports a lower QC than one it acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyState {
    /// Highest round this validator voted or timed out in; it never votes at or below it again.
    pub highest_voted_round: Round,
    pub high_qc: QuorumCert,
}

impl SafetyState {
    pub fn genesis() -> Self {
        Self {
            highest_voted_round: Round(0),
            high_qc: QuorumCert::genesis(),
        }
    }
}

/// A finalized block with a certificate for it (its child's QC): enough to restart from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedBlock {
    pub block: Block,
    pub qc: QuorumCert,
}

impl CommittedBlock {
    pub fn genesis() -> Self {
        Self {
            block: Block::genesis(),
            qc: QuorumCert::genesis(),
        }
    }
}

// Events are moved once into `update` and dropped; boxing messages would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First event after construction: starts the round timer (and proposes, if leader).
    Start,
    /// A message from validator `from`, as decoded from the network.
    Message {
        from: ValidatorIndex,
        message: Unverified<Message>,
    },
    /// A `ScheduleTimeout` came due.
    Timeout { round: Round },
    /// The payload asked for by `RequestPayload` is built (and available to peers).
    PayloadReady { round: Round, payload_hash: B256 },
    /// Execution finished a committed block.
    Executed(ExecutionResult),
    /// After a restart, before `Start`: the blocks this validator voted for above its root, as
    /// persisted for `PersistBlock` (any order). They are held again, so the high QC's block can
    /// be extended and served to peers, and a commit they complete is emitted again.
    Restore(Vec<Block>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Make this durable before carrying out any later command of the same `update`.
    PersistSafety(SafetyState),
    /// The block this validator is about to vote for: make it (with its payload) durable with
    /// the `PersistSafety` that follows, keep it until its height is final, and hand it back
    /// with `Event::Restore` after a restart. Without it, a network whose validators all
    /// restarted holds a QC for a block none of them has, and halts.
    PersistBlock(Block),
    /// Send to every other validator.
    Broadcast(Message),
    SendTo(ValidatorIndex, Message),
    /// Deliver `Event::Timeout { round }` at `at_ms` (stale timers are ignored, so no cancel).
    ScheduleTimeout {
        round: Round,
        at_ms: u64,
    },
    /// This validator leads `round`: build a payload on `parent` and answer with `PayloadReady`.
    RequestPayload {
        round: Round,
        height: BlockNumber,
        parent: BlockId,
    },
    /// These blocks are final, in height order: execute them and persist the last as the root.
    /// `proof` shows the last one final (the others are its ancestors, linked by hash); block
    /// sync serves it so a syncing node need not trust the peer.
    Commit {
        blocks: Vec<CommittedBlock>,
        proof: CommitProof,
    },
    /// A block carried an execution result different from ours. `certified`: the block was
    /// finalized anyway, so our own execution is the odd one out and we stopped voting.
    ExecutionMismatch {
        ours: ExecutionResult,
        theirs: ExecutionResult,
        certified: bool,
    },
    /// A block joined the tree (a proposal, ours or a peer's, or an ancestor fetched for one),
    /// once: what subscribers see as proposed.
    Proposed(Block),
    /// A finalized block carried this delayed execution result and it equals ours: the block
    /// it is for is verified.
    Verified(ExecutionResult),
}

#[derive(Debug, Default)]
struct RoundVotes {
    voters: HashSet<ValidatorIndex>,
    by_block: HashMap<BlockId, (BlockNumber, Vec<SignerSig>, u64)>,
    done: bool,
}

/// One validator's consensus state machine.
#[derive(Debug)]
pub struct Bft {
    config: Config,
    key: ValidatorKey,
    me: ValidatorIndex,
    validators: ValidatorSet,
    certs: CertCache,
    round: Round,
    safety: SafetyState,
    high_qc: QuorumCert,
    /// The TC that ended the previous round, if one did.
    last_tc: Option<TimeoutCert>,
    /// Last round this validator proposed in.
    proposed: Round,
    /// Last round a valid proposal arrived for.
    proposal_seen: Round,
    root: CommittedBlock,
    root_id: BlockId,
    /// The root and the blocks above it that connect to it.
    blocks: HashMap<BlockId, Block>,
    /// Blocks waiting for their parent, by parent id.
    orphans: HashMap<BlockId, Vec<Block>>,
    orphan_count: usize,
    /// Ids requested from peers; only these are accepted from a `Blocks` answer.
    wanted: HashSet<BlockId>,
    /// Block requests sent: picks the QC signer asked next (`request_block`).
    block_requests: usize,
    history: HashMap<BlockId, Block>,
    history_order: VecDeque<BlockId>,
    votes: BTreeMap<Round, RoundVotes>,
    timeouts: BTreeMap<Round, RoundTimeouts>,
    own_results: BTreeMap<BlockNumber, ExecutionResult>,
    /// Results carried by committed blocks that our execution has not reached yet.
    committed_claims: BTreeMap<BlockNumber, ExecutionResult>,
    /// A current-round block waiting for our own execution result before we vote.
    pending_vote: Option<BlockId>,
    halted: bool,
}

impl Bft {
    /// `root` is the last committed block and `safety` the last persisted safety state (both
    /// `genesis()` on a fresh chain).
    pub fn new(
        config: Config,
        key: ValidatorKey,
        validators: ValidatorSet,
        root: CommittedBlock,
        safety: SafetyState,
    ) -> Result<Self, ValidatorSetError> {
        assert!(
            config.round_timeout_ms > 0,
            "round timeout must be positive"
        );
        let me = validators
            .index_of(&key.id())
            .ok_or(ValidatorSetError::NotAMember)?;
        let high_qc = if safety.high_qc.round >= root.qc.round {
            safety.high_qc.clone()
        } else {
            root.qc.clone()
        };
        let root_id = root.block.id();
        let mut history = HashMap::new();
        history.insert(root_id, root.block.clone());
        Ok(Self {
            config,
            key,
            me,
            validators,
            certs: CertCache::default(),
            round: high_qc.round.next(),
            safety,
            high_qc,
            last_tc: None,
            proposed: Round(0),
            proposal_seen: Round(0),
            blocks: HashMap::from([(root_id, root.block.clone())]),
            root,
            root_id,
            orphans: HashMap::new(),
            orphan_count: 0,
            wanted: HashSet::new(),
            block_requests: 0,
            history,
            history_order: VecDeque::from([root_id]),
            votes: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            own_results: BTreeMap::new(),
            committed_claims: BTreeMap::new(),
            pending_vote: None,
            halted: false,
        })
    }

    pub fn round(&self) -> Round {
        self.round
    }

    pub fn me(&self) -> ValidatorIndex {
        self.me
    }

    /// The round of the highest QC this node holds.
    pub fn high_qc_round(&self) -> Round {
        self.high_qc.round
    }

    /// A block held in the tree above the root (or the root): the driver reads a parent's
    /// payload hash here to fetch a payload it never received.
    pub fn block(&self, id: BlockId) -> Option<&Block> {
        self.blocks.get(&id)
    }

    /// The last committed block.
    pub fn root(&self) -> &CommittedBlock {
        &self.root
    }

    /// True once this node's execution disagreed with a finalized block: it no longer votes,
    /// proposes or times out, and needs an operator.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    pub fn update(&mut self, now_ms: u64, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Start => self.enter_round(now_ms, &mut out),
            Event::Message { from, message } => {
                match message.verify(&self.validators, &mut self.certs) {
                    Ok(msg) => self.on_message(now_ms, from, msg.into_inner(), &mut out),
                    Err(_) => metrics::counter!(m::INVALID_MESSAGES).increment(1),
                }
            }
            Event::Timeout { round } => self.on_local_timeout(now_ms, round, &mut out),
            Event::PayloadReady {
                round,
                payload_hash,
            } => self.on_payload(now_ms, round, payload_hash, &mut out),
            Event::Executed(result) => self.on_executed(now_ms, result, &mut out),
            Event::Restore(blocks) => self.restore(now_ms, blocks, &mut out),
        }
        out
    }

    /// Blocks from our own disk (we voted for them, so they were verified then): parents
    /// first, each after its QC, so a parent missing here is requested from that QC's signers.
    fn restore(&mut self, now: u64, mut blocks: Vec<Block>, out: &mut Vec<Command>) {
        blocks.sort_by_key(|b| (b.height, b.round));
        for block in blocks {
            self.process_qc(now, &block.qc, out);
            self.receive_block(now, block, out);
        }
    }

    fn on_message(&mut self, now: u64, from: ValidatorIndex, msg: Message, out: &mut Vec<Command>) {
        match msg {
            Message::Proposal(p) => self.on_proposal(now, p, out),
            Message::Vote(v) => self.on_vote(now, v, out),
            Message::Timeout(t) => self.on_timeout(now, t, out),
            Message::Certificate(qc) => self.process_qc(now, &qc, out),
            Message::TimeoutCertificate(tc) => self.process_tc(now, &tc, out),
            Message::BlockRequest(r) => self.on_block_request(from, r, out),
            Message::Blocks(blocks) => self.on_blocks(now, from, blocks, out),
        }
    }

    /// A verified QC: raise the high QC, fetch its block if missing, commit, advance the round.
    fn process_qc(&mut self, now: u64, qc: &QuorumCert, out: &mut Vec<Command>) {
        if qc.round > self.high_qc.round {
            self.high_qc = qc.clone();
        }
        if qc.height > self.root.block.height && !self.blocks.contains_key(&qc.block_id) {
            self.request_block(qc, out);
        }
        self.try_commit(now, qc, out);
        if qc.round >= self.round {
            self.advance(now, qc.round.next(), None, out);
        }
    }

    fn on_proposal(&mut self, now: u64, p: Proposal, out: &mut Vec<Command>) {
        self.process_qc(now, &p.block.qc, out);
        if let Some(tc) = &p.last_tc {
            self.process_tc(now, tc, out);
        }
        if p.block.round == self.round {
            self.proposal_seen = self.round;
        }
        self.receive_block(now, p.block, out);
    }

    /// Voting rule (two-chain HotStuff / Jolteon): vote once per round, only in the current
    /// round, for a block that extends the previous round's QC, or, after a TC, a QC at least as
    /// high as any in the TC. The second case is what keeps a committed block from being
    /// abandoned: a quorum that voted for its child holds its QC, and any TC contains one of them.
    fn maybe_vote(&mut self, now: u64, b: &Block, id: BlockId, out: &mut Vec<Command>) {
        if self.halted || b.round != self.round || b.round <= self.safety.highest_voted_round {
            return;
        }
        let extends = b.qc.round.next() == b.round
            || self
                .last_tc
                .as_ref()
                .is_some_and(|tc| tc.round.next() == b.round && b.qc.round >= tc.high_qc.round);
        if !extends || !self.timestamp_ok(now, b) || !self.delayed_result_ok(b, id, out) {
            return;
        }
        self.safety = SafetyState {
            highest_voted_round: b.round,
            high_qc: self.high_qc.clone(),
        };
        out.push(Command::PersistBlock(b.clone()));
        out.push(Command::PersistSafety(self.safety.clone()));
        let vote = Vote::new(b.round, b.height, id, self.me, &self.key);
        metrics::counter!(m::VOTES).increment(1);
        let next = self.validators.leader(b.round.next());
        if next == self.me {
            self.on_vote(now, vote, out);
        } else {
            out.push(Command::SendTo(next, Message::Vote(vote)));
        }
    }

    /// Block time moves forward: later than the parent's timestamp, and not too far ahead of
    /// our clock (`now`, passed in by the driver).
    fn timestamp_ok(&self, now: u64, b: &Block) -> bool {
        let after_parent = self
            .blocks
            .get(&b.parent())
            .is_some_and(|p| b.timestamp_ms > p.timestamp_ms);
        let ok = after_parent && b.timestamp_ms <= now.saturating_add(TIMESTAMP_AHEAD_MAX_MS);
        if !ok {
            metrics::counter!(m::BAD_TIMESTAMPS).increment(1);
        }
        ok
    }

    /// The delayed execution result must be for height − D and equal our own result for that
    /// block. A vote vouches for the result too, so without our own result (execution behind)
    /// we do not vote (yet); a proposal without a result (its leader's execution behind) is fine.
    /// This is what lets a *committed* mismatch mean that our execution diverged (at least f+1
    /// honest voters checked it): see `check_committed_result`. Here a mismatch only refuses
    /// the vote, since the leader may be lying.
    fn delayed_result_ok(&mut self, b: &Block, id: BlockId, out: &mut Vec<Command>) -> bool {
        let Some(theirs) = b.delayed_result else {
            return true;
        };
        if theirs.number + self.config.execution_delay != b.height {
            return false;
        }
        match self.own_results.get(&theirs.number) {
            Some(ours) if *ours == theirs => {
                metrics::counter!(m::RESULTS_VERIFIED).increment(1);
                true
            }
            Some(ours) => {
                let ours = *ours;
                self.alarm(ours, theirs, false, out);
                false
            }
            // Usually execution is a moment behind the commit that this very proposal
            // completed: vote when the result arrives, if the round is still on.
            None => {
                self.pending_vote = Some(id);
                false
            }
        }
    }

    fn on_vote(&mut self, now: u64, v: Vote, out: &mut Vec<Command>) {
        // The window first: a Byzantine validator may sign a vote for round 2^64 - 1, which
        // has no next round to lead.
        if v.round.0.saturating_add(1) < self.round.0
            || v.round.0 > self.round.0.saturating_add(ROUNDS_AHEAD_MAX)
            || self.validators.leader(v.round.next()) != self.me
        {
            return;
        }
        let quorum = self.validators.quorum_stake();
        let stake = self.validators.stake(v.signer);
        let rv = self.votes.entry(v.round).or_default();
        // One vote per validator per round: an equivocator's second vote is ignored.
        if rv.done || !rv.voters.insert(v.signer) {
            return;
        }
        let (height, sigs, total) =
            rv.by_block
                .entry(v.block_id)
                .or_insert((v.height, Vec::new(), 0));
        if *height != v.height {
            return;
        }
        sigs.push(SignerSig {
            signer: v.signer,
            signature: v.signature,
        });
        *total += stake;
        if *total < quorum {
            return;
        }
        rv.done = true;
        let mut signatures = sigs.clone();
        signatures.sort_by_key(|s| s.signer);
        let qc = QuorumCert {
            round: v.round,
            height: v.height,
            block_id: v.block_id,
            signatures,
        };
        metrics::counter!(m::QCS).increment(1);
        out.push(Command::Broadcast(Message::Certificate(qc.clone())));
        self.process_qc(now, &qc, out);
    }

    fn on_payload(&mut self, now: u64, round: Round, payload_hash: B256, out: &mut Vec<Command>) {
        if round != self.round
            || self.proposed >= round
            || self.halted
            || self.validators.leader(round) != self.me
        {
            return;
        }
        self.proposed = round;
        let height = self.high_qc.height + 1;
        let last_tc = self.last_tc.clone().filter(|tc| tc.round.next() == round);
        assert!(
            self.high_qc.round.next() == round || last_tc.is_some(),
            "entered round {round:?} without a QC or TC for the round before"
        );
        // Followers vote only for a timestamp past the parent's (when we hold the parent).
        let parent_ms = self
            .blocks
            .get(&self.high_qc.block_id)
            .map_or(0, |p| p.timestamp_ms);
        let block = Block {
            round,
            height,
            author: self.me,
            timestamp_ms: now.max(parent_ms.saturating_add(1)),
            payload_hash,
            qc: self.high_qc.clone(),
            delayed_result: height
                .checked_sub(self.config.execution_delay)
                .and_then(|n| self.own_results.get(&n).copied()),
        };
        let proposal = Proposal::new(block, last_tc, &self.key);
        metrics::counter!(m::PROPOSALS).increment(1);
        out.push(Command::Broadcast(Message::Proposal(proposal.clone())));
        self.on_proposal(now, proposal, out);
    }

    /// Two-chain commit rule: a QC for block B whose own QC is for the round just before B's
    /// (B's parent P was certified in round r, B in r+1) finalizes P and its ancestors. P is
    /// speculatively final once certified; final one round later.
    fn try_commit(&mut self, now: u64, qc: &QuorumCert, out: &mut Vec<Command>) {
        let Some(b) = self.blocks.get(&qc.block_id) else {
            return;
        };
        if b.qc.round.next() != b.round {
            return;
        }
        let proof = CommitProof {
            child: b.clone(),
            child_qc: qc.clone(),
        };
        let target = b.qc.block_id;
        let target_qc = b.qc.clone();
        match self.blocks.get(&target) {
            Some(p) if p.height > self.root.block.height => {}
            _ => return,
        }
        let mut chain = Vec::new();
        let (mut id, mut qc) = (target, target_qc);
        while id != self.root_id {
            let block = match self.blocks.get(&id) {
                Some(b) if b.height > self.root.block.height => b.clone(),
                // A finalized block that does not extend our root: more than f validators are
                // Byzantine, or this code is wrong. Either way going on would fork.
                _ => panic!(
                    "conflicting commit below height {}",
                    self.root.block.height + 1
                ),
            };
            id = block.parent();
            let parent_qc = block.qc.clone();
            chain.push(CommittedBlock { block, qc });
            qc = parent_qc;
        }
        chain.reverse();
        for c in &chain {
            let latency_s = now.saturating_sub(c.block.timestamp_ms) as f64 / 1000.0;
            metrics::histogram!(m::COMMIT_LATENCY).record(latency_s);
            if let Some(theirs) = c.block.delayed_result {
                self.check_committed_result(theirs, out);
            }
            let id = c.block.id();
            self.history.insert(id, c.block.clone());
            self.history_order.push_back(id);
            if self.history_order.len() > COMMITTED_KEPT {
                let old = self.history_order.pop_front().expect("non-empty");
                self.history.remove(&old);
            }
        }
        let new_root = chain.last().expect("at least the target").clone();
        self.root_id = new_root.block.id();
        self.root = new_root;
        metrics::gauge!(m::HEIGHT).set(self.root.block.height as f64);
        let (root_round, root_height, root_id) =
            (self.root.block.round, self.root.block.height, self.root_id);
        self.blocks
            .retain(|id, b| *id == root_id || (b.round > root_round && b.height > root_height));
        self.orphans.retain(|_, children| {
            children.retain(|b| b.height > root_height);
            !children.is_empty()
        });
        self.orphan_count = self.orphans.values().map(Vec::len).sum();
        out.push(Command::Commit {
            blocks: chain,
            proof,
        });
    }

    fn check_committed_result(&mut self, theirs: ExecutionResult, out: &mut Vec<Command>) {
        match self.own_results.get(&theirs.number) {
            Some(ours) if *ours != theirs => {
                let ours = *ours;
                self.alarm(ours, theirs, true, out);
            }
            Some(_) => out.push(Command::Verified(theirs)),
            None => {
                self.committed_claims.insert(theirs.number, theirs);
                while self.committed_claims.len() > RESULTS_KEPT {
                    self.committed_claims.pop_first();
                }
            }
        }
    }

    fn on_executed(&mut self, now: u64, result: ExecutionResult, out: &mut Vec<Command>) {
        if let Some(theirs) = self.committed_claims.remove(&result.number) {
            if theirs == result {
                out.push(Command::Verified(result));
            } else {
                self.alarm(result, theirs, true, out);
            }
        }
        self.own_results.insert(result.number, result);
        while self.own_results.len() > RESULTS_KEPT {
            self.own_results.pop_first();
        }
        if let Some(id) = self.pending_vote.take()
            && let Some(block) = self.blocks.get(&id).cloned()
        {
            self.maybe_vote(now, &block, id, out);
        }
    }

    /// A quorum finalized a result we disagree with (`certified`): our execution diverged, and
    /// voting on would fork us silently, so stop. Otherwise only the proposal is refused.
    fn alarm(
        &mut self,
        ours: ExecutionResult,
        theirs: ExecutionResult,
        certified: bool,
        out: &mut Vec<Command>,
    ) {
        metrics::counter!(m::RESULT_MISMATCH).increment(1);
        if certified {
            self.halted = true;
            metrics::gauge!(m::HALTED).set(1.0);
        }
        out.push(Command::ExecutionMismatch {
            ours,
            theirs,
            certified,
        });
    }
}
