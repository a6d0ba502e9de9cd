//! The payload cache: decoded payloads of the blocks this validator saw proposed (or built), the
//! timestamp and fees of those blocks (to pace and price their children), and which payload each
//! open round proposed (to return a lost round's transactions to the pool).

use super::payload::Payload;
use alloy_primitives::B256;
use kestrel_consensus::{
    Round,
    bft::{Block, BlockId, CommittedBlock},
};
use kestrel_types::{ParentFees, next_base_fee};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Payloads and block facts kept for blocks this far below the log head: a peer fetching a
/// payload consensus gave it without one asks for a block it is about to finalize, and a peer
/// further behind than `recovery::SYNC_GAP_BLOCKS` (8) syncs blocks from the archive instead.
/// Each payload holds its block's transactions decoded (about 3 MB at 5,000 transactions): 256
/// blocks' worth was 0.8 GB of a node's memory under load.
const PAYLOADS_KEPT_BLOCKS: u64 = 32;
/// Payloads held for blocks not yet finalized; beyond this the cache is pruned to the log head.
const PAYLOADS_MAX: usize = 4_096;
/// Proposals for rounds up to this far ahead of ours are tracked for `abandoned`.
const ROUNDS_AHEAD_TRACKED: u64 = 16;

/// Why a decoded payload was not accepted (the `reason` label of
/// `kestrel_consensus_payloads_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its base fee is not the one its parent implies.
    BaseFee { got: u64, expected: u64 },
    /// `PAYLOADS_MAX` payloads of blocks not yet final are held.
    Full,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::BaseFee { .. } => "base_fee",
            Refused::Full => "full",
        }
    }
}

/// What the driver knows of a block it saw proposed: when (to pace the next block) and its fees
/// (for the next base fee).
struct Known {
    height: u64,
    timestamp_ms: u64,
    fees: ParentFees,
}

pub struct PayloadCache {
    by_hash: HashMap<B256, (u64, Payload)>,
    known: HashMap<BlockId, Known>,
    /// Payload hash of the proposal seen (or made) in each round not yet over.
    by_round: BTreeMap<Round, B256>,
    /// Payloads that came with a proposal and are with the decoder: not to be fetched again.
    decoding: HashSet<B256>,
}

impl PayloadCache {
    pub fn new() -> Self {
        Self {
            by_hash: HashMap::new(),
            known: HashMap::new(),
            by_round: BTreeMap::new(),
            decoding: HashSet::new(),
        }
    }

    pub fn get(&self, hash: &B256) -> Option<&Payload> {
        self.by_hash.get(hash).map(|(_, payload)| payload)
    }

    pub fn contains(&self, hash: &B256) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// A proposal's payload went to the decoder.
    pub fn decoder_took(&mut self, hash: B256) {
        self.decoding.insert(hash);
    }

    /// A proposal's payload came back from the decoder (decoded or rejected).
    pub fn decoder_returned(&mut self, hash: &B256) {
        self.decoding.remove(hash);
    }

    /// With the decoder: a request for it would only bring a copy.
    pub fn is_decoding(&self, hash: &B256) -> bool {
        self.decoding.contains(hash)
    }

    /// A payload this validator built as leader of `round`.
    pub fn insert_own(&mut self, round: Round, height: u64, payload: Payload) {
        self.by_round.insert(round, payload.hash());
        self.by_hash.insert(payload.hash(), (height, payload));
    }

    /// A finalized block's payload fetched from a peer (its hash was checked against the block).
    pub fn insert_fetched(&mut self, height: u64, payload: Payload) {
        self.by_hash.insert(payload.hash(), (height, payload));
    }

    /// Records a proposed block's timestamp and fees, once its payload is here.
    pub fn remember(&mut self, block: &Block) {
        if let Some((_, payload)) = self.by_hash.get(&block.payload_hash) {
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

    /// The parent's timestamp and fees: the log head's (`head`, `head_fees`) or a block seen
    /// proposed whose payload is here.
    pub fn parent_known(
        &self,
        head: &CommittedBlock,
        head_fees: ParentFees,
        parent: BlockId,
    ) -> Option<(u64, ParentFees)> {
        if parent == head.block.id() {
            return Some((head.block.timestamp_ms, head_fees));
        }
        self.known.get(&parent).map(|k| (k.timestamp_ms, k.fees))
    }

    /// Checks and keeps a proposal's decoded payload. `parent_fees` are its parent's when known;
    /// `open` says the block is above the log head and in a round we track (`round` is ours).
    /// Returns whether the payload is new (its transactions are then in flight).
    pub fn accept(
        &mut self,
        block: &Block,
        payload: Payload,
        parent_fees: Option<ParentFees>,
        log_height: u64,
        round: Round,
    ) -> Result<bool, Refused> {
        if self.by_hash.contains_key(&block.payload_hash) {
            return Ok(false);
        }
        if let Some(fees) = parent_fees
            && payload.base_fee() != next_base_fee(fees)
        {
            return Err(Refused::BaseFee {
                got: payload.base_fee(),
                expected: next_base_fee(fees),
            });
        }
        if self.by_hash.len() >= PAYLOADS_MAX {
            self.prune(log_height);
            if self.by_hash.len() >= PAYLOADS_MAX {
                return Err(Refused::Full);
            }
        }
        // Bounded: rounds far ahead are not ours to track (consensus drops them too).
        if block.height > log_height && block.round.0 <= round.0 + ROUNDS_AHEAD_TRACKED {
            self.by_round.insert(block.round, block.payload_hash);
        }
        self.by_hash
            .insert(block.payload_hash, (block.height, payload));
        Ok(true)
    }

    /// The payloads of rounds before `current` that ended without a QC for them (`certified`
    /// is the highest certified round): their proposals lost, so their transactions go back to
    /// the pool. Forgets every round before `current`.
    pub fn abandoned(&mut self, current: Round, certified: Round) -> Vec<Payload> {
        let open = self.by_round.split_off(&current);
        let ended = std::mem::replace(&mut self.by_round, open);
        ended
            .into_iter()
            .filter(|(round, _)| *round > certified)
            .filter_map(|(_, hash)| self.get(&hash).cloned())
            .collect()
    }

    /// Forgets blocks more than `PAYLOADS_KEPT_BLOCKS` below the log head.
    pub fn prune(&mut self, log_height: u64) {
        let keep_above = log_height.saturating_sub(PAYLOADS_KEPT_BLOCKS);
        self.by_hash.retain(|_, (height, _)| *height > keep_above);
        self.known.retain(|_, k| k.height > keep_above);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::Address;
    use kestrel_consensus::bft::{QuorumCert, ValidatorIndex};

    fn payload(base_fee: u64) -> Payload {
        Payload::build(Address::ZERO, 30_000_000, base_fee, Vec::new())
    }

    fn block(round: u64, height: u64, payload: &Payload) -> Block {
        Block {
            round: Round(round),
            height,
            author: ValidatorIndex(0),
            timestamp_ms: 1_000 * round,
            payload_hash: payload.hash(),
            qc: QuorumCert::genesis(),
            delayed_result: None,
        }
    }

    #[test]
    fn a_payload_must_carry_the_base_fee_its_parent_implies() {
        let mut cache = PayloadCache::new();
        let parent = ParentFees {
            gas_limit: 30_000_000,
            gas_committed: 30_000_000,
            base_fee: 1_000_000_000,
        };
        let wrong = payload(1_000_000_000);
        let b = block(1, 1, &wrong);
        assert_eq!(
            cache.accept(&b, wrong, Some(parent), 0, Round(1)),
            Err(Refused::BaseFee {
                got: 1_000_000_000,
                expected: 1_125_000_000
            })
        );
        let right = payload(1_125_000_000);
        let b = block(1, 1, &right);
        assert_eq!(
            cache.accept(&b, right.clone(), Some(parent), 0, Round(1)),
            Ok(true)
        );
        assert_eq!(
            cache.accept(&b, right, Some(parent), 0, Round(1)),
            Ok(false)
        );
    }

    #[test]
    fn a_payload_is_decoding_from_submission_until_its_result() {
        let mut cache = PayloadCache::new();
        let hash = payload(1).hash();
        assert!(!cache.is_decoding(&hash));
        cache.decoder_took(hash);
        assert!(cache.is_decoding(&hash) && !cache.contains(&hash));
        cache.decoder_returned(&hash);
        assert!(!cache.is_decoding(&hash));
    }

    #[test]
    fn rounds_that_ended_uncertified_hand_back_their_payloads_once() {
        let mut cache = PayloadCache::new();
        let (lost, won, open) = (payload(1), payload(2), payload(3));
        cache.insert_own(Round(5), 5, lost.clone());
        for (round, p) in [(4, &won), (7, &open)] {
            let b = block(round, round, p);
            assert_eq!(cache.accept(&b, p.clone(), None, 0, Round(5)), Ok(true));
        }
        // Round 4 was certified; round 5 ended without a QC; round 7 is still ahead.
        let back = cache.abandoned(Round(6), Round(4));
        assert_eq!(
            back.iter().map(Payload::hash).collect::<Vec<_>>(),
            vec![lost.hash()]
        );
        assert!(cache.abandoned(Round(6), Round(4)).is_empty());
        assert_eq!(cache.abandoned(Round(8), Round(4)).len(), 1, "round 7");
    }

    #[test]
    fn pruning_keeps_recent_blocks_and_their_facts() {
        let mut cache = PayloadCache::new();
        let old = payload(1);
        let recent = payload(2);
        let (a, b) = (block(1, 1, &old), block(300, 300, &recent));
        cache.accept(&a, old.clone(), None, 0, Round(1)).unwrap();
        cache
            .accept(&b, recent.clone(), None, 0, Round(300))
            .unwrap();
        cache.remember(&a);
        cache.remember(&b);
        cache.prune(300);
        assert!(!cache.contains(&old.hash()) && cache.contains(&recent.hash()));
        let head = CommittedBlock::genesis();
        let fees = ParentFees {
            gas_limit: 1,
            gas_committed: 0,
            base_fee: 7,
        };
        assert!(cache.parent_known(&head, fees, a.id()).is_none());
        assert_eq!(cache.parent_known(&head, fees, b.id()).unwrap().0, 300_000);
        assert_eq!(
            cache.parent_known(&head, fees, head.block.id()),
            Some((head.block.timestamp_ms, fees))
        );
    }
}
