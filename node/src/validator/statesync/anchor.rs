//! The anchor: nothing in a snapshot's top is trusted until the finalized blocks from its block
//! on, checked as block sync checks them, reach the block that carries its execution result
//! (step 2 of the module above).

use super::{StateSync, StateSyncError};
use crate::validator::{
    sync::{REQUEST_RETRY_MS, SyncError, Unproven},
    wire::{SnapshotTop, SyncRequest, SyncResponse, SyncedBlock},
};
use alloy_primitives::B256;
use kestrel_consensus::bft::{CommittedBlock, SYNC_BLOCKS_MAX, ValidatorSet};
use kestrel_net::{Kind, PeerId};
use kestrel_storage::snapshot::{
    restore::BASE_ANCESTORS,
    verify::{SnapshotError, expected_subtries},
};
use kestrel_types::ExecutionResult;
use std::time::{Duration, Instant};

/// Block requests for the anchor that may go unanswered before the snapshot is given up (and
/// tops asked again).
const ANCHOR_UNANSWERED_MAX: usize = 16;
/// Ask again this long after an answer with no block past our tip.
const ANCHOR_POLL_MS: u64 = 50;

/// Why a validator's answer is not believed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Lie {
    #[error("blocks from the snapshot's block: {0}")]
    Chain(#[from] SyncError),
    #[error("the first block answered is {got}, not the snapshot's {want}")]
    WrongFirst { want: u64, got: u64 },
    #[error("the top's state root is {top}, the finalized result says {result}")]
    Root { top: B256, result: B256 },
    #[error("the top's headers do not end on the finalized block {0} or do not chain")]
    Headers(u64),
    #[error("the top: {0}")]
    Top(#[from] SnapshotError),
}

impl StateSync<'_> {
    /// The finalized blocks from the snapshot's block to the one carrying its execution result,
    /// checked; the snapshot's block and that result. `None` if none of `peers` gave them.
    pub(super) fn anchor(
        &mut self,
        top: &SnapshotTop,
        peers: &[PeerId],
    ) -> Result<Option<(SyncedBlock, ExecutionResult)>, StateSyncError> {
        let mut chain = AnchorChain::new(top.height);
        let mut turn = 0;
        let mut unanswered = 0;
        loop {
            let live: Vec<&PeerId> = peers.iter().filter(|p| !self.dropped.contains(p)).collect();
            if live.is_empty() || unanswered > ANCHOR_UNANSWERED_MAX {
                return Ok(None);
            }
            let peer = *live[turn % live.len()];
            turn += 1;
            let request = SyncRequest::Blocks {
                from: chain.next_from(),
                count: SYNC_BLOCKS_MAX as u16,
            };
            self.net
                .send(&peer, Kind::SyncRequest, request.encode().into());
            let until = Instant::now() + Duration::from_millis(REQUEST_RETRY_MS);
            let blocks = loop {
                match self.next_answer(until)? {
                    Some((from_peer, SyncResponse::Blocks(blocks))) if from_peer == peer => {
                        break Some(blocks);
                    }
                    Some(_) => continue,
                    None => break None,
                }
            };
            let Some(blocks) = blocks else {
                unanswered += 1;
                continue;
            };
            if blocks.is_empty() {
                // Nothing final after our tip yet: the result comes D blocks later.
                std::thread::sleep(Duration::from_millis(ANCHOR_POLL_MS));
                continue;
            }
            match chain.add(blocks, self.set) {
                Ok(Some((base, result))) => {
                    tracing::info!(target: "node::statesync", block = top.height, root = %result.state_root, "the snapshot's block is final and its result certified");
                    return Ok(Some((base, result)));
                }
                Ok(None) => {}
                Err(lie) => self.drop_peer(&peer, &lie.to_string()),
            }
        }
    }
}

/// The chain from the snapshot's block as answers bring it. The block is believed once a commit
/// proof covers it (its own, or a later block's through the hash links); blocks after the last
/// final one wait for a proof (an answer stops at a size bound, not always on a proof:
/// `sync::Unproven`), until a final block carries the snapshot block's execution result.
struct AnchorChain {
    height: u64,
    /// The snapshot's block, as the first answer gave it.
    base: Option<SyncedBlock>,
    /// The last block known final, from the base on.
    tip: Option<CommittedBlock>,
    unproven: Unproven,
}

impl AnchorChain {
    fn new(height: u64) -> Self {
        Self {
            height,
            base: None,
            tip: None,
            unproven: Unproven::default(),
        }
    }

    /// The first block to ask for.
    fn next_from(&self) -> u64 {
        match (&self.tip, &self.base) {
            (Some(tip), _) => self.unproven.after(tip.block.height) + 1,
            (None, Some(base)) => self.unproven.after(base.block.height) + 1,
            (None, None) => self.height,
        }
    }

    /// Takes a (non-empty) answer to `next_from`; the snapshot's block and its certified result
    /// once a final block carries it. On a lie, what was not final is forgotten, to be asked of
    /// the next peer.
    fn add(
        &mut self,
        mut blocks: Vec<SyncedBlock>,
        set: &ValidatorSet,
    ) -> Result<Option<(SyncedBlock, ExecutionResult)>, Lie> {
        if self.base.is_none() {
            let first = blocks.remove(0);
            if first.block.height != self.height {
                return Err(Lie::WrongFirst {
                    want: self.height,
                    got: first.block.height,
                });
            }
            if let Some(proof) = &first.proof {
                proof
                    .verify(&first.block, set)
                    .map_err(|source| SyncError::BadCommitProof {
                        height: first.block.height,
                        source,
                    })?;
                self.tip = Some(first.committed());
            }
            self.base = Some(first);
        }
        let base = self.base.as_ref().expect("set above");
        let head = self.tip.clone().unwrap_or_else(|| base.committed());
        let proven = match self.unproven.add(&head, blocks, set, None) {
            Ok(proven) => proven,
            Err(err) => {
                if self.tip.is_none() {
                    self.base = None;
                }
                return Err(err.into());
            }
        };
        let Some((last, _)) = proven.last() else {
            return Ok(None);
        };
        self.tip = Some(last.committed());
        let result = proven
            .iter()
            .filter_map(|(b, _)| b.block.delayed_result)
            .find(|r| r.number == self.height);
        Ok(result.map(|r| (base.clone(), r)))
    }
}

/// Checks a top against the finalized result of its block; each chunk's expected subtrie hash.
pub(super) fn check_top(
    top: &SnapshotTop,
    result: &ExecutionResult,
) -> Result<Vec<Option<B256>>, Lie> {
    if top.state_root != result.state_root {
        return Err(Lie::Root {
            top: top.state_root,
            result: result.state_root,
        });
    }
    let headers = &top.headers;
    let bad = || Lie::Headers(top.height);
    let newest = headers.last().ok_or_else(bad)?;
    let wanted = BASE_ANCESTORS.min(top.height) as usize + 1;
    if headers.len() != wanted
        || newest.number != top.height
        || newest.hash_slow() != result.block_hash
        || newest.state_root != result.state_root
    {
        return Err(bad());
    }
    for pair in headers.windows(2) {
        if pair[1].parent_hash != pair[0].hash_slow() || pair[1].number != pair[0].number + 1 {
            return Err(bad());
        }
    }
    Ok(expected_subtries(result.state_root, top.depth, &top.top)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validator::test_chain::{chain, keys, result_of, set};
    use alloy_consensus::Header;

    /// The blocks from the snapshot's block to the one with its result may come in several
    /// answers, the first ending without a proof (answers stop at a size bound): the anchor
    /// waits for the proof rather than drop the peer as a liar. A block off the chain drops
    /// what was not final.
    #[test]
    fn the_anchor_waits_for_a_proof_that_comes_in_a_later_answer() {
        let keys = keys();
        let set = set(&keys);
        // Block 4 carries block 1's result; block 5 has the commit proof.
        let blocks = chain(&keys, 5, 6, &[1, 2, 3]);
        let mut anchor = AnchorChain::new(1);
        assert_eq!(anchor.next_from(), 1);
        assert!(anchor.add(blocks[..2].to_vec(), &set).unwrap().is_none());
        assert_eq!(anchor.next_from(), 3);
        let (base, result) = anchor
            .add(blocks[2..].to_vec(), &set)
            .unwrap()
            .expect("block 4 is final and carries the result");
        assert_eq!(base.block, blocks[0].block);
        assert_eq!(result, result_of(1));

        let mut anchor = AnchorChain::new(1);
        assert!(anchor.add(blocks[..1].to_vec(), &set).unwrap().is_none());
        assert_eq!(anchor.next_from(), 2);
        assert!(matches!(
            anchor.add(blocks[2..].to_vec(), &set),
            Err(Lie::Chain(_))
        ));
        assert_eq!(
            anchor.next_from(),
            1,
            "the unproven first block is forgotten"
        );

        let mut anchor = AnchorChain::new(2);
        assert!(matches!(
            anchor.add(blocks.clone(), &set),
            Err(Lie::WrongFirst { want: 2, got: 1 })
        ));
    }

    fn headers(n: u64) -> Vec<Header> {
        let mut out: Vec<Header> = Vec::new();
        for number in 0..=n {
            out.push(Header {
                number,
                parent_hash: out.last().map_or(B256::ZERO, |h| h.hash_slow()),
                state_root: B256::repeat_byte(number as u8),
                ..Default::default()
            });
        }
        out
    }

    /// A top is believed only as far as the certified result of its block: its root, its
    /// newest header's hash, and the older headers' hash chain.
    #[test]
    fn a_top_must_match_the_certified_result() {
        let headers = headers(5);
        let newest = headers.last().unwrap();
        let result = ExecutionResult {
            number: 5,
            block_hash: newest.hash_slow(),
            state_root: newest.state_root,
            receipts_root: B256::ZERO,
        };
        let top = SnapshotTop {
            height: 5,
            state_root: newest.state_root,
            depth: 0,
            top: Vec::new(),
            headers: headers.clone(),
        };
        assert_eq!(
            check_top(&top, &result).unwrap(),
            vec![Some(newest.state_root)]
        );

        let wrong_root = SnapshotTop {
            state_root: B256::repeat_byte(0xaa),
            ..top.clone()
        };
        assert!(matches!(
            check_top(&wrong_root, &result),
            Err(Lie::Root { .. })
        ));
        let mut broken = top.clone();
        broken.headers[2].gas_limit += 1;
        assert!(matches!(check_top(&broken, &result), Err(Lie::Headers(5))));
        let mut short = top.clone();
        short.headers.remove(0);
        assert!(matches!(check_top(&short, &result), Err(Lie::Headers(5))));
        let other_block = ExecutionResult {
            block_hash: B256::repeat_byte(1),
            ..result
        };
        assert!(matches!(
            check_top(&top, &other_block),
            Err(Lie::Headers(5))
        ));
    }
}
