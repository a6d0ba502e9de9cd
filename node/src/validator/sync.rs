//! Block sync: how a validator that is behind (at start, or when a certificate it sees is far
//! ahead of its log) fetches finalized blocks from peers, checks them against a commit proof and
//! the hash chain before anything executes, and how it serves its own block log to others.
//! Requests rotate through the connected peers; a peer that does not answer in time is passed
//! over for the next.

use super::{
    payload::Payload,
    payloads::PayloadCache,
    store::{ChainLog, StoreError},
    wire::{SyncRequest, SyncResponse, SyncedBlock},
};
use alloy_primitives::{B256, keccak256};
use kestrel_consensus::bft::{self, SYNC_BLOCKS_MAX, ValidatorSet};
use kestrel_net::PeerId;
use kestrel_pipeline::mempool::TxPool;

/// Ask another peer when one has not answered a sync or payload request in this long.
pub const REQUEST_RETRY_MS: u64 = 1_000;
/// With no answer at all for this long (no peer up), start consensus anyway: it cannot
/// finalize without a quorum, and when peers come back their certificates trigger a sync.
const SYNC_ALONE_MS: u64 = 3_000;
/// Bytes of blocks in one sync response (the frame cap is 16 MiB).
const SYNC_RESPONSE_BYTES_MAX: usize = 8 << 20;

/// Asks one connected peer after another, a retry interval apart.
#[derive(Debug, Default)]
pub struct Rotation {
    turn: usize,
    asked_at_ms: u64,
}

impl Rotation {
    /// The peer to ask now, if the last one has had its time; `peers` in a stable order.
    pub fn next(&mut self, now: u64, peers: &[PeerId]) -> Option<PeerId> {
        if self.asked_at_ms != 0 && self.asked_at_ms + REQUEST_RETRY_MS > now {
            return None;
        }
        self.asked_at_ms = now;
        let peer = *peers.get(self.turn % peers.len().max(1))?;
        self.turn += 1;
        Some(peer)
    }
}

/// A payload consensus named (by a block) that never reached us, asked of one connected peer
/// after another until it comes.
#[derive(Debug)]
pub struct PayloadWanted {
    hash: B256,
    rotation: Rotation,
}

impl PayloadWanted {
    pub fn new(hash: B256) -> Self {
        Self {
            hash,
            rotation: Rotation::default(),
        }
    }

    pub fn hash(&self) -> B256 {
        self.hash
    }

    /// The request to send now, if the last peer asked has had its time.
    pub fn ask(&mut self, now: u64, peers: &[PeerId]) -> Option<(PeerId, Vec<u8>)> {
        let peer = self.rotation.next(now, peers)?;
        Some((peer, SyncRequest::Payload(self.hash).encode()))
    }
}

/// What block sync wants done next.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Send this request to this peer.
    Ask(PeerId, Vec<u8>),
    /// Nobody answered at all: join consensus without syncing.
    GiveUp,
    Wait,
}

/// A catch-up in progress.
#[derive(Debug)]
pub struct BlockSync {
    rotation: Rotation,
    started_ms: u64,
    answered: bool,
    /// The certified height that showed us behind (0 for the sync at start).
    certified: u64,
    /// Peers that answered they have nothing after our log since the last blocks came.
    nothing_newer: usize,
    unproven: Unproven,
}

impl BlockSync {
    pub fn start(now: u64, certified: u64) -> Self {
        Self {
            rotation: Rotation::default(),
            started_ms: now,
            answered: false,
            certified,
            nothing_newer: 0,
            unproven: Unproven::default(),
        }
    }

    /// A peer has nothing after our log (`log_height`); whether the sync is over. A peer that
    /// is behind too answers so, and two validators behind could otherwise end each other's
    /// syncs for ever (the simulation found this: `docs/CONSENSUS.md`). So while the log is
    /// more than `gap` below the certified height that started the sync, the next peer is
    /// asked, until each of the `peers` connected ones has answered that.
    pub fn on_nothing_newer(&mut self, log_height: u64, gap: u64, peers: usize) -> bool {
        self.answered = true;
        self.nothing_newer += 1;
        let over = log_height + gap >= self.certified || self.nothing_newer >= peers;
        if !over {
            self.rotation.asked_at_ms = 0;
        }
        over
    }

    /// Asks for the blocks after `log_height`, or gives up when no peer ever answered.
    pub fn step(&mut self, now: u64, peers: &[PeerId], log_height: u64) -> SyncStep {
        if !self.answered && self.started_ms + SYNC_ALONE_MS <= now {
            return SyncStep::GiveUp;
        }
        match self.rotation.next(now, peers) {
            Some(peer) => SyncStep::Ask(peer, blocks_request(self.unproven.after(log_height))),
            None => SyncStep::Wait,
        }
    }

    /// Checks a peer's answer against our log head; the blocks to log and execute, in order,
    /// with their decoded payloads (none yet if they wait for a proof). An empty answer means
    /// the peer has nothing newer.
    pub fn on_blocks(
        &mut self,
        head: &bft::CommittedBlock,
        blocks: Vec<SyncedBlock>,
        set: &ValidatorSet,
        pool: &TxPool,
    ) -> Result<Vec<(SyncedBlock, Payload)>, SyncError> {
        self.answered = true;
        let checked = self.unproven.add(head, blocks, set, Some(pool))?;
        self.nothing_newer = 0;
        // Until a peer has nothing more, ask again at once: an answer may be short of
        // SYNC_BLOCKS_MAX (its size bound) and the chain grows meanwhile.
        self.rotation.asked_at_ms = 0;
        Ok(checked)
    }
}

/// A request for the finalized blocks after `log_height`, as many as an answer may hold.
pub fn blocks_request(log_height: u64) -> Vec<u8> {
    SyncRequest::Blocks {
        from: log_height + 1,
        count: SYNC_BLOCKS_MAX as u16,
    }
    .encode()
}

/// Our answer to a peer's sync request: blocks from our log, or a payload we hold. None for a
/// request we cannot or will not answer.
pub fn answer(
    request: &[u8],
    log: &ChainLog,
    payloads: &PayloadCache,
) -> Result<Option<SyncResponse>, StoreError> {
    Ok(match SyncRequest::decode(request) {
        Ok(SyncRequest::Blocks { from, count }) => {
            Some(serve_blocks(log, from, count, SYNC_RESPONSE_BYTES_MAX)?)
        }
        Ok(SyncRequest::Payload(hash)) => payloads
            .get(&hash)
            .map(|payload| SyncResponse::Payload(payload.bytes().clone())),
        // The snapshot thread's (`statesync::serve`), where this node serves snapshots.
        Ok(SyncRequest::SnapshotTop { .. } | SyncRequest::StatePart { .. }) => None,
        Err(err) => {
            tracing::debug!(target: "node::validator", %err, "undecodable sync request");
            None
        }
    })
}

/// Blocks one archive read for a sync answer asks for at most.
const SERVE_READ_BATCH_MAX: usize = 16;

/// Our answer to a peer's request for blocks `from..from + count` of the log. The count is
/// soft: past it the answer goes on to a block with a commit proof (every commit's last block,
/// so at the latest the log head), so that the asker can log what it gets. The size is not:
/// blocks finalized together (one proof, on the last) after a stall can be larger than a frame,
/// so an answer stops before `bytes_max` of payloads (with one block at least), proof or not,
/// and the asker keeps the blocks until the proof comes ([`Unproven`]).
fn serve_blocks(
    log: &ChainLog,
    from: u64,
    count: u16,
    bytes_max: usize,
) -> Result<SyncResponse, StoreError> {
    let count = usize::from(count).min(SYNC_BLOCKS_MAX);
    let mut blocks: Vec<SyncedBlock> = Vec::new();
    let mut size = 0;
    let mut next = from.max(1);
    // Read from the archive in batches of what is still wanted (one at a time once the count
    // is reached, to reach a proof), so that a batch never reads much past the limits.
    'answer: while next <= log.height() {
        let wanted = count
            .saturating_sub(blocks.len())
            .clamp(1, SERVE_READ_BATCH_MAX);
        let to = (next + wanted as u64 - 1).min(log.height());
        for block in log.read_range(next, to)? {
            let counted = blocks.len() >= count && blocks.last().is_some_and(|b| b.proof.is_some());
            let sized = !blocks.is_empty() && size + block.payload.len() > bytes_max;
            if counted || sized {
                break 'answer;
            }
            size += block.payload.len();
            blocks.push(block);
        }
        next = to + 1;
    }
    Ok(SyncResponse::Blocks(blocks))
}

/// Most bytes of payloads kept waiting for their commit proof: far more than any run of blocks
/// finalized together should hold, and bounded so a peer cannot fill our memory with blocks
/// that never get one.
const UNPROVEN_BYTES_MAX: usize = 512 << 20;

/// Blocks after our log head that came without their commit proof yet (an answer stops at a
/// size bound, not always at a proof: [`serve_blocks`]). Their hash links are checked as they
/// come; they are logged once a block with a proof comes after them.
#[derive(Debug, Default)]
pub struct Unproven {
    blocks: Vec<SyncedBlock>,
}

impl Unproven {
    /// The height after which to ask for blocks: past those waiting here.
    pub fn after(&self, log_height: u64) -> u64 {
        self.blocks.last().map_or(log_height, |b| b.block.height)
    }

    /// Takes an answer's `blocks` (any at or below what we hold are skipped: answers to older
    /// requests) after our log `head`: the blocks now proven final, checked and with their
    /// decoded payloads, in order; the rest waits. On an error nothing waits any more (the
    /// blocks are asked for again, from the next peer).
    pub fn add(
        &mut self,
        head: &bft::CommittedBlock,
        blocks: Vec<SyncedBlock>,
        set: &ValidatorSet,
        pool: Option<&TxPool>,
    ) -> Result<Vec<(SyncedBlock, Payload)>, SyncError> {
        let after = self.after(head.block.height);
        let mut chain = std::mem::take(&mut self.blocks);
        chain.extend(blocks.into_iter().skip_while(|b| b.block.height <= after));
        let proven = chain
            .iter()
            .rposition(|b| b.proof.is_some())
            .map_or(0, |i| i + 1);
        let waiting = chain.split_off(proven);
        let parent = chain.last().map_or(&head.block, |b| &b.block);
        check_links(parent, &waiting, set, false)?;
        let bytes: usize = waiting.iter().map(|b| b.payload.len()).sum();
        if bytes > UNPROVEN_BYTES_MAX {
            return Err(SyncError::TooMuchUnproven { bytes });
        }
        let payloads = verify_chain(head, &chain, set, pool)?;
        self.blocks = waiting;
        Ok(chain.into_iter().zip(payloads).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
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
    #[error("{bytes} bytes of blocks without a commit proof")]
    TooMuchUnproven { bytes: usize },
}

/// Blocks from sync must extend `head` one by one (hash links), and the last must carry a valid
/// commit proof: a certificate alone would let a peer serve a block that was certified but then
/// abandoned. Every block below it is final too, authenticated by the chain of hashes (each
/// block's id covers its parent's QC). Any other proof is checked as well, since it is logged
/// and served to others. Returns the decoded payloads; the senders of transactions `pool` holds
/// are taken from it rather than recovered again (a full node's own submissions, a validator's
/// forwarded ones: `Payload::decode_reusing`).
pub fn verify_chain(
    head: &bft::CommittedBlock,
    blocks: &[SyncedBlock],
    set: &ValidatorSet,
    pool: Option<&TxPool>,
) -> Result<Vec<Payload>, SyncError> {
    check_links(&head.block, blocks, set, true)?;
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
            Payload::decode_reusing(b.payload.clone(), pool).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// `blocks` extend `parent` one by one, each certified by the next (or by its proof, checked);
/// with `proof_at_end`, the last must have a proof.
fn check_links(
    parent: &bft::Block,
    blocks: &[SyncedBlock],
    set: &ValidatorSet,
    proof_at_end: bool,
) -> Result<(), SyncError> {
    let mut parent = parent;
    for (i, b) in blocks.iter().enumerate() {
        let height = b.block.height;
        if height != parent.height + 1 || b.block.parent() != parent.id() {
            return Err(SyncError::NotOurChain { height });
        }
        // A block's certificate is its child's QC (the next block's, or the proof's).
        let child = match (blocks.get(i + 1), &b.proof) {
            (_, Some(proof)) => &proof.child,
            (Some(next), None) => &next.block,
            (None, None) if proof_at_end => return Err(SyncError::NoCommitProof { height }),
            (None, None) => break,
        };
        if child.qc != b.qc {
            return Err(SyncError::WrongCertificate { height });
        }
        if let Some(proof) = &b.proof {
            proof
                .verify(&b.block, set)
                .map_err(|source| SyncError::BadCommitProof { height, source })?;
        }
        parent = &b.block;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::test_chain::{keys, qc_for, set};
    use alloy_primitives::Bytes;
    use kestrel_consensus::bft::{ValidatorIndex, ValidatorKey, Vote};

    /// Three blocks on genesis, finalized by a child in `child_round` that `child_signers`
    /// certified.
    fn chain(keys: &[ValidatorKey], child_round: u64, child_signers: &[usize]) -> Vec<SyncedBlock> {
        crate::validator::test_chain::chain(keys, 3, child_round, child_signers)
    }

    #[test]
    fn behind_a_certificate_an_empty_answer_sends_us_to_the_next_peer() {
        let peers: Vec<PeerId> = keys()
            .iter()
            .map(|k| PeerId::from_slice(&k.id().0).unwrap())
            .collect();
        let ask = |sync: &mut BlockSync, now| match sync.step(now, &peers[..3], 0) {
            SyncStep::Ask(peer, _) => peer,
            other => panic!("{other:?}"),
        };
        // At start, the first peer with nothing newer ends it.
        let mut sync = BlockSync::start(1, 0);
        ask(&mut sync, 1);
        assert!(sync.on_nothing_newer(0, 8, 3));
        // Shown behind by a certificate at 20: the next peer is asked at once...
        let mut sync = BlockSync::start(1, 20);
        let first = ask(&mut sync, 1);
        assert!(!sync.on_nothing_newer(0, 8, 3));
        let second = ask(&mut sync, 2);
        assert_ne!(first, second);
        assert!(!sync.on_nothing_newer(0, 8, 3));
        // ...until every connected peer said it has nothing newer,
        ask(&mut sync, 3);
        assert!(sync.on_nothing_newer(0, 8, 3));
        // or the log is near the certified height.
        let mut sync = BlockSync::start(1, 20);
        ask(&mut sync, 1);
        assert!(sync.on_nothing_newer(12, 8, 3));
    }

    #[test]
    fn a_wanted_payload_is_asked_of_the_next_peer_when_one_does_not_answer() {
        let peers: Vec<PeerId> = keys()
            .iter()
            .map(|k| PeerId::from_slice(&k.id().0).unwrap())
            .collect();
        let hash = B256::repeat_byte(7);
        let mut wanted = PayloadWanted::new(hash);
        let (first, request) = wanted.ask(1_000, &peers).expect("asked at once");
        assert_eq!(
            SyncRequest::decode(&request).unwrap(),
            SyncRequest::Payload(hash)
        );
        let retry = 1_000 + REQUEST_RETRY_MS;
        assert!(
            wanted.ask(retry - 1, &peers).is_none(),
            "the peer has its time"
        );
        let (second, _) = wanted.ask(retry, &peers).expect("the next peer");
        assert_ne!(first, second);
        assert!(
            PayloadWanted::new(hash).ask(0, &[]).is_none(),
            "nobody to ask"
        );
    }

    /// Blocks finalized together can come in several answers (each under the size bound): they
    /// wait until the one with the proof comes, then are logged together; an answer to an older
    /// request is skipped, and a block off our chain drops what waited.
    #[test]
    fn blocks_without_their_proof_wait_for_it_across_answers() {
        let keys = keys();
        let set = set(&keys);
        let genesis = bft::CommittedBlock::genesis();
        let good = chain(&keys, 4, &[1, 2, 3]);
        let mut unproven = Unproven::default();
        let got = unproven
            .add(&genesis, good[..1].to_vec(), &set, None)
            .unwrap();
        assert!(got.is_empty());
        assert_eq!(unproven.after(0), 1);
        let got = unproven
            .add(&genesis, good[..2].to_vec(), &set, None)
            .unwrap();
        assert!(
            got.is_empty(),
            "block 1 again is skipped, block 2 waits too"
        );
        assert_eq!(unproven.after(0), 2);
        let got = unproven
            .add(&genesis, good[2..].to_vec(), &set, None)
            .unwrap();
        let heights: Vec<u64> = got.iter().map(|(b, _)| b.block.height).collect();
        assert_eq!(heights, [1, 2, 3]);
        assert_eq!(unproven.after(3), 3);

        // A block that does not extend what waits: refused, and nothing waits any more.
        let mut unproven = Unproven::default();
        unproven
            .add(&genesis, good[..1].to_vec(), &set, None)
            .unwrap();
        assert!(matches!(
            unproven.add(&genesis, good[2..].to_vec(), &set, None),
            Err(SyncError::WrongCertificate { height: 1 })
        ));
        assert_eq!(unproven.after(0), 0);
    }

    /// Blocks finalized under one proof that do not fit in one answer come in several, from the
    /// served log to the asker's, and are logged when the proof comes; with room, one answer
    /// goes past its count to the proof.
    #[test]
    fn a_run_of_blocks_larger_than_an_answer_comes_in_several() {
        let keys = keys();
        let set = set(&keys);
        let good = chain(&keys, 4, &[1, 2, 3]);
        let dir = tempfile::tempdir().unwrap();
        let mut log = ChainLog::open(dir.path()).unwrap();
        for b in &good {
            log.append(b).unwrap();
        }
        let serve = |from, count, bytes_max| match serve_blocks(&log, from, count, bytes_max) {
            Ok(SyncResponse::Blocks(blocks)) => blocks,
            other => panic!("{other:?}"),
        };
        let one_block = good[0].payload.len();
        let genesis = bft::CommittedBlock::genesis();
        let mut unproven = Unproven::default();
        let mut logged = Vec::new();
        for _ in 0..3 {
            let blocks = serve(unproven.after(0) + 1, 32, one_block);
            assert_eq!(blocks.len(), 1, "one block an answer");
            logged.extend(unproven.add(&genesis, blocks, &set, None).unwrap());
        }
        let heights: Vec<u64> = logged.iter().map(|(b, _)| b.block.height).collect();
        assert_eq!(heights, [1, 2, 3]);
        assert_eq!(
            serve(1, 1, SYNC_RESPONSE_BYTES_MAX),
            good,
            "on to the proof"
        );
        assert_eq!(serve(1, 1, 2 * one_block).len(), 2, "but not past the size");
    }

    #[test]
    fn synced_blocks_need_a_commit_proof_and_hash_links_to_our_head() {
        let keys = keys();
        let set = set(&keys);
        let genesis = bft::CommittedBlock::genesis();
        let good = chain(&keys, 4, &[1, 2, 3]);
        assert_eq!(verify_chain(&genesis, &good, &set, None).unwrap().len(), 3);

        // Certified but not final: the child that certifies the last block is two rounds
        // later (round 4 timed out), so another branch may have been finalized instead.
        let abandoned = chain(&keys, 5, &[1, 2, 3]);
        assert!(matches!(
            verify_chain(&genesis, &abandoned, &set, None),
            Err(SyncError::BadCommitProof { height: 3, .. })
        ));
        // Only a QC on the last block, as sync used to accept.
        let mut certified_only = good.clone();
        certified_only[2].proof = None;
        assert!(matches!(
            verify_chain(&genesis, &certified_only, &set, None),
            Err(SyncError::NoCommitProof { height: 3 })
        ));
        // Two of four signatures on the child are not a quorum.
        let weak = chain(&keys, 4, &[0, 3]);
        assert!(matches!(
            verify_chain(&genesis, &weak, &set, None),
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
            verify_chain(&genesis, &forged, &set, None),
            Err(SyncError::BadCommitProof { .. })
        ));
        // The logged certificate must be the one the proof's child carries.
        let mut other_qc = good.clone();
        other_qc[2].qc = qc_for(&good[2].block, &[0, 1, 3], &keys);
        assert!(matches!(
            verify_chain(&genesis, &other_qc, &set, None),
            Err(SyncError::WrongCertificate { height: 3 })
        ));
        // A tampered middle block breaks the hash chain to the certified top.
        let mut tampered = good.clone();
        tampered[1].block.timestamp_ms += 1;
        assert!(verify_chain(&genesis, &tampered, &set, None).is_err());
        // Blocks that do not start on our head.
        assert!(matches!(
            verify_chain(&genesis, &good[1..], &set, None),
            Err(SyncError::NotOurChain { height: 2 })
        ));
        // A payload that is not the one the block names.
        let mut swapped = good.clone();
        swapped[0].payload = Bytes::from_static(b"\xc0");
        assert!(matches!(
            verify_chain(&genesis, &swapped, &set, None),
            Err(SyncError::BadPayload { height: 1, .. })
        ));
    }
}
