//! A full node's driver: block sync that never stops, and no consensus at all.
//!
//! A full node holds no validator key, so it cannot vote, propose or time a round out: it has no
//! state machine to feed. It asks the validators it follows, one after another, for the finalized
//! blocks after its log head (the same `SyncRequest::Blocks` a validator catching up sends),
//! checks each answer against a commit proof and the hash chain (`sync::verify_chain`) before
//! anything is logged, and hands the blocks to execution through the same `Finality` a validator
//! uses, so a full node's datadir is a validator's (log, archive, database) and restarts the same
//! way. Transactions its RPC admits are forwarded to the leaders of the rounds after its head.
//! Its own execution results are checked against those the finalized blocks carry (block N + D
//! carries N's, which a quorum voted for), so a full node whose state diverged says so.
//!
//! Polling rather than being pushed blocks: a validator keeps no per-follower state, an answer is
//! the validator's ordinary sync answer from its log, and a follower that fell behind (restart,
//! a slow disk) needs the very same path. While blocks keep coming it asks again at once; an
//! empty answer means it is at the head, and it asks again `POLL_INTERVAL_MS` later.

use super::{
    Wiring,
    finality::Finality,
    forward::{FULL_NODE_FORWARD_ROUNDS, Forwarder},
    metrics::{FULL_NODE_LAG_SECONDS, FULL_NODE_RESULTS_CHECKED, SYNC_BLOCKS_TOTAL},
    statesync,
    sync::{REQUEST_RETRY_MS, Unproven, blocks_request},
    transport::Transport,
    wire::SyncResponse,
};
use crossbeam_channel::Receiver;
use kestrel_consensus::{
    Round,
    bft::{ValidatorSet, metrics::RESULT_MISMATCH},
};
use kestrel_net::{Inbound, Kind, PeerClass, PeerId};
use kestrel_pipeline::mempool::TxPool;
use kestrel_types::ExecutionResult;
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// After an answer with nothing newer, ask again this much later: a fraction of a block time,
/// so a full node trails the validators by a few tens of milliseconds, at a few requests a
/// second per validator (far under `full_node_requests_per_s`).
const POLL_INTERVAL_MS: u64 = 50;
/// Longest sleep of the loop, so shutdown and forwarding are noticed.
const IDLE_WAIT: Duration = Duration::from_millis(25);

/// Results waiting for their counterpart (ours for a certified one, or the other way round);
/// past it the oldest is dropped unchecked. Certified results arrive D blocks after the block,
/// ours when it is executed: the two are a few blocks apart, unless execution falls far behind.
const RESULTS_PENDING_MAX: usize = 4_096;

/// Our execution results against the ones the validators certified.
#[derive(Debug, Default)]
struct ResultCheck {
    certified: BTreeMap<u64, ExecutionResult>,
    ours: BTreeMap<u64, ExecutionResult>,
}

impl ResultCheck {
    /// A result a finalized block carries; the pair if ours for that block differs.
    fn certified(&mut self, result: ExecutionResult) -> Option<(ExecutionResult, ExecutionResult)> {
        Self::pair(&mut self.ours, &mut self.certified, result)
    }

    /// Our own result; the pair (ours, certified) if it differs from the certified one.
    fn executed(&mut self, result: ExecutionResult) -> Option<(ExecutionResult, ExecutionResult)> {
        Self::pair(&mut self.certified, &mut self.ours, result)
            .map(|(certified, ours)| (ours, certified))
    }

    /// Matches `result` with its counterpart in `other`, or keeps it in `mine` until it comes.
    /// Returns (counterpart, result) when they differ.
    fn pair(
        other: &mut BTreeMap<u64, ExecutionResult>,
        mine: &mut BTreeMap<u64, ExecutionResult>,
        result: ExecutionResult,
    ) -> Option<(ExecutionResult, ExecutionResult)> {
        let Some(counterpart) = other.remove(&result.number) else {
            mine.insert(result.number, result);
            if mine.len() > RESULTS_PENDING_MAX {
                mine.pop_first();
            }
            return None;
        };
        metrics::counter!(FULL_NODE_RESULTS_CHECKED).increment(1);
        (counterpart != result).then_some((counterpart, result))
    }
}

/// Which validator to ask next, and when.
#[derive(Debug, Default)]
struct Poll {
    turn: usize,
    /// The request in flight: whom we asked, and when.
    asked: Option<(PeerId, u64)>,
    next_ms: u64,
}

impl Poll {
    /// The peer to ask now, if any: none while a request is in flight (unless it had its time)
    /// or before the next poll is due.
    fn next(&mut self, now: u64, peers: &[PeerId]) -> Option<PeerId> {
        if let Some((_, at)) = self.asked {
            if at + REQUEST_RETRY_MS > now {
                return None;
            }
            // Unanswered: the next peer in turn is asked now.
            self.asked = None;
        } else if now < self.next_ms {
            return None;
        }
        let peer = *peers.get(self.turn % peers.len().max(1))?;
        self.turn += 1;
        self.asked = Some((peer, now));
        Some(peer)
    }

    /// `peer` answered: again at once if it had blocks for us, else after the poll interval.
    fn answered(&mut self, peer: PeerId, had_blocks: bool, now: u64) {
        if self.asked.is_some_and(|(asked, _)| asked == peer) {
            self.asked = None;
        }
        self.next_ms = if had_blocks {
            now
        } else {
            now + POLL_INTERVAL_MS
        };
    }
}

/// A follower whose newest block is older than this is catching up rather than following.
const CATCH_UP_LAG_MS: u64 = 5_000;
/// How often a catch-up logs its rate.
const CATCH_UP_LOG_MS: u64 = 10_000;

/// Whether the follower is catching up (its newest block seconds old) or at the head, for
/// `kestrel_sync_mode` and a progress line with the rate while catching up.
#[derive(Debug, Default)]
struct CatchUp {
    catching_up: bool,
    /// Since the last progress line: when it was, and the blocks followed.
    since_ms: u64,
    blocks: u64,
}

impl CatchUp {
    fn followed(&mut self, count: u64, height: u64, lag_ms: u64, now: u64) {
        if lag_ms < CATCH_UP_LAG_MS {
            self.at_head();
            return;
        }
        if !self.catching_up {
            *self = Self {
                catching_up: true,
                since_ms: now,
                blocks: 0,
            };
            statesync::set_mode("blocks");
        }
        self.blocks += count;
        let elapsed_ms = now.saturating_sub(self.since_ms);
        if elapsed_ms >= CATCH_UP_LOG_MS {
            let blocks_per_s = self.blocks as f64 * 1_000.0 / elapsed_ms as f64;
            tracing::info!(target: "node::full", height, blocks_per_s, "catching up by block sync");
            (self.since_ms, self.blocks) = (now, 0);
        }
    }

    fn at_head(&mut self) {
        if self.catching_up || self.since_ms == 0 {
            statesync::set_mode("following");
        }
        self.catching_up = false;
        self.since_ms = 1;
    }
}

pub struct Follower {
    set: ValidatorSet,
    /// Transport ids, by validator index.
    ids: Vec<PeerId>,
    net: Box<dyn Transport>,
    inbound: Receiver<Inbound>,
    results: Receiver<ExecutionResult>,
    pool: Arc<TxPool>,
    stop: Arc<AtomicBool>,
    finality: Finality,
    forwarder: Option<Forwarder>,
    poll: Poll,
    unproven: Unproven,
    results_check: ResultCheck,
    progress: CatchUp,
}

impl Follower {
    pub fn new(
        set: ValidatorSet,
        ids: Vec<PeerId>,
        net: Box<dyn Transport>,
        inbound: Receiver<Inbound>,
        dir: &Path,
        w: Wiring,
    ) -> eyre::Result<Self> {
        let finality = Finality::open(dir, &w.store, w.pool.clone(), w.status, w.proposals)?;
        Ok(Self {
            set,
            ids,
            net,
            inbound,
            results: w.results,
            pool: w.pool,
            stop: w.stop,
            finality,
            forwarder: Some(Forwarder::spawn(w.ingress)?),
            poll: Poll::default(),
            unproven: Unproven::default(),
            results_check: ResultCheck::default(),
            progress: CatchUp::default(),
        })
    }

    /// Runs until `stop` is set; then what was logged goes to execution and the stages drain.
    pub fn run(mut self) {
        tracing::info!(target: "node::full", height = self.finality.height(), validators = self.set.len(), "following the validators");
        let (inbound, results) = (self.inbound.clone(), self.results.clone());
        while !self.stop.load(Ordering::Acquire) && self.finality.flush() {
            crossbeam_channel::select! {
                recv(inbound) -> msg => match msg {
                    Ok(msg) => self.on_inbound(msg),
                    Err(_) => break,
                },
                recv(results) -> result => match result {
                    Ok(result) => {
                        let mismatch = self.results_check.executed(result);
                        report(mismatch);
                    }
                    Err(_) => break,
                },
                default(IDLE_WAIT) => {}
            }
            self.tick(kestrel_types::now_ms());
        }
        self.finality.drain();
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.shutdown();
        }
        tracing::info!(target: "node::full", height = self.finality.height(), "full node stopped");
    }

    fn tick(&mut self, now: u64) {
        let peers: Vec<PeerId> = self.net.connected_peers().into_iter().collect();
        if let Some(peer) = self.poll.next(now, &peers) {
            let request = blocks_request(self.unproven.after(self.finality.height()));
            self.net.send(&peer, Kind::SyncRequest, request.into());
        }
        self.forward(now);
    }

    /// Transactions our RPC admitted go to the leaders of the rounds after our head's: the
    /// head trails the validators' round by a few rounds, so more of them than a validator
    /// forwards to (with a handful of validators, all of them).
    fn forward(&mut self, now: u64) {
        let round = Round(self.finality.head().block.round.0 + 1);
        let forwarder = self.forwarder.as_mut().expect("running");
        let Some((targets, messages)) = forwarder.outgoing(
            now,
            &self.pool,
            &self.set,
            round,
            None,
            FULL_NODE_FORWARD_ROUNDS,
        ) else {
            return;
        };
        for to in targets {
            for message in &messages {
                let peer = &self.ids[usize::from(to.0)];
                self.net.send(peer, Kind::TxForward, message.0.clone());
            }
        }
    }

    fn on_inbound(&mut self, msg: Inbound) {
        // We admit no full nodes of our own (`full_nodes_max` is for validators), and the nodes
        // we follow have nothing for us but answers.
        if msg.class != PeerClass::Validator || msg.kind != Kind::SyncResponse {
            return;
        }
        let now = kestrel_types::now_ms();
        let blocks = match SyncResponse::decode(&msg.payload) {
            Ok(SyncResponse::Blocks(blocks)) => blocks,
            // Late answers to state sync, and payloads: nothing a follower asks for.
            Ok(_) => return,
            Err(err) => {
                tracing::debug!(target: "node::full", peer = %msg.peer, %err, "undecodable sync response");
                self.poll.answered(msg.peer, false, now);
                return;
            }
        };
        // Answers to requests that timed out, or raced a newer one, may start below our head.
        let height = self.finality.height();
        let blocks: Vec<_> = blocks
            .into_iter()
            .skip_while(|b| b.block.height <= height)
            .collect();
        if blocks.is_empty() {
            self.poll.answered(msg.peer, false, now);
            self.progress.at_head();
            return;
        }
        // The transactions our RPC admitted keep the senders ingress recovered.
        let head = self.finality.head();
        let checked = match self.unproven.add(head, blocks, &self.set, Some(&self.pool)) {
            Ok(checked) => checked,
            Err(err) => {
                tracing::warn!(target: "node::full", peer = %msg.peer, %err, "rejected a block sync answer");
                self.poll.answered(msg.peer, false, now);
                return;
            }
        };
        let count = checked.len() as u64;
        for (block, payload) in checked {
            if let Some(result) = block.block.delayed_result {
                report(self.results_check.certified(result));
            }
            self.finality.append(block, &payload);
        }
        self.finality.sync_log();
        metrics::counter!(SYNC_BLOCKS_TOTAL).increment(count);
        self.poll.answered(msg.peer, true, now);
        let lag_ms = now.saturating_sub(self.finality.head().block.timestamp_ms);
        self.progress
            .followed(count, self.finality.height(), lag_ms, now);
        metrics::gauge!(FULL_NODE_LAG_SECONDS).set(lag_ms as f64 / 1_000.0);
        tracing::debug!(target: "node::full", height = self.finality.height(), blocks = count, "followed finalized blocks");
    }
}

/// A full node cannot stop voting as a validator does; it says so loudly and goes on serving
/// what it executed (its operator decides: resync, or investigate).
fn report(mismatch: Option<(ExecutionResult, ExecutionResult)>) {
    let Some((ours, certified)) = mismatch else {
        return;
    };
    metrics::counter!(RESULT_MISMATCH).increment(1);
    tracing::error!(target: "node::full", number = ours.number, ours = %ours.block_hash, certified = %certified.block_hash, ours_root = %ours.state_root, certified_root = %certified.state_root, "our execution result differs from the one the validators certified");
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::B256;

    fn result(number: u64, root: u8) -> ExecutionResult {
        ExecutionResult {
            number,
            block_hash: B256::repeat_byte(root),
            state_root: B256::repeat_byte(root),
            receipts_root: B256::ZERO,
        }
    }

    #[test]
    fn catching_up_is_told_from_following_by_the_head_s_age() {
        let mut progress = CatchUp::default();
        progress.followed(10, 10, 100, 1_000);
        assert!(!progress.catching_up);
        progress.followed(500, 510, CATCH_UP_LAG_MS, 2_000);
        assert!(progress.catching_up);
        progress.followed(500, 1_010, CATCH_UP_LAG_MS, 2_000 + CATCH_UP_LOG_MS);
        assert_eq!(progress.blocks, 0, "logged and counted afresh");
        progress.at_head();
        assert!(!progress.catching_up);
    }

    #[test]
    fn own_results_are_checked_against_certified_ones_in_either_order() {
        let mut check = ResultCheck::default();
        assert_eq!(
            check.executed(result(1, 1)),
            None,
            "waits for the certified one"
        );
        assert_eq!(check.certified(result(1, 1)), None, "equal");
        assert_eq!(check.certified(result(2, 2)), None);
        assert_eq!(
            check.executed(result(2, 9)),
            Some((result(2, 9), result(2, 2))),
            "(ours, certified)"
        );
        assert_eq!(check.executed(result(3, 3)), None);
        assert_eq!(
            check.certified(result(3, 4)),
            Some((result(3, 3), result(3, 4)))
        );
        assert!(check.ours.is_empty() && check.certified.is_empty());
        for n in 0..=RESULTS_PENDING_MAX as u64 {
            check.executed(result(10 + n, 1));
        }
        assert_eq!(check.ours.len(), RESULTS_PENDING_MAX, "bounded");
        assert!(!check.ours.contains_key(&10), "the oldest dropped");
    }

    fn peers() -> Vec<PeerId> {
        (1..=3u8)
            .map(|i| {
                let key = secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap();
                PeerId::from(secp256k1::PublicKey::from_secret_key_global(&key))
            })
            .collect()
    }

    #[test]
    fn polls_in_turn_at_once_while_blocks_come_and_slower_at_the_head() {
        let peers = peers();
        let mut poll = Poll::default();
        assert_eq!(poll.next(1_000, &[]), None, "nobody to ask");
        let first = poll.next(1_000, &peers).unwrap();
        assert_eq!(poll.next(1_001, &peers), None, "one request in flight");
        poll.answered(first, true, 1_010);
        let second = poll.next(1_010, &peers).unwrap();
        assert_ne!(first, second, "the next peer in turn");
        poll.answered(second, false, 1_020);
        assert_eq!(poll.next(1_020 + POLL_INTERVAL_MS - 1, &peers), None);
        let third = poll.next(1_020 + POLL_INTERVAL_MS, &peers).unwrap();
        // Unanswered: after the retry interval the next peer is asked.
        assert_eq!(poll.next(1_100, &peers), None);
        let fourth = poll.next(1_070 + REQUEST_RETRY_MS, &peers).unwrap();
        assert_ne!(third, fourth);
        // A late answer from a peer no longer asked does not end the request in flight.
        poll.answered(third, true, 2_100);
        assert_eq!(poll.next(2_100, &peers), None);
    }
}
