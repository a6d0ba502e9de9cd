//! The anchor: nothing in a snapshot's top is trusted until the finalized blocks from its block
//! on, checked as block sync checks them, reach the block that carries its execution result
//! (step 2 of the module above).

use super::{StateSync, StateSyncError};
use crate::validator::{
    sync::{REQUEST_RETRY_MS, SyncError, verify_chain},
    wire::{SnapshotTop, SyncRequest, SyncResponse, SyncedBlock},
};
use alloy_primitives::B256;
use kestrel_consensus::bft::SYNC_BLOCKS_MAX;
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
        let mut base: Option<SyncedBlock> = None;
        let mut tip: Option<SyncedBlock> = None;
        let mut turn = 0;
        let mut unanswered = 0;
        loop {
            let live: Vec<&PeerId> = peers.iter().filter(|p| !self.dropped.contains(p)).collect();
            if live.is_empty() || unanswered > ANCHOR_UNANSWERED_MAX {
                return Ok(None);
            }
            let peer = *live[turn % live.len()];
            turn += 1;
            let from = tip.as_ref().map_or(top.height, |t| t.block.height + 1);
            let request = SyncRequest::Blocks {
                from,
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
            let Some(mut blocks) = blocks else {
                unanswered += 1;
                continue;
            };
            if blocks.is_empty() {
                // Nothing final after our tip yet: the result comes D blocks later.
                std::thread::sleep(Duration::from_millis(ANCHOR_POLL_MS));
                continue;
            }
            let checked = match &tip {
                None => {
                    let first = blocks.remove(0);
                    if first.block.height != top.height {
                        self.drop_peer(
                            &peer,
                            &Lie::WrongFirst {
                                want: top.height,
                                got: first.block.height,
                            }
                            .to_string(),
                        );
                        continue;
                    }
                    let proven = match (&first.proof, blocks.is_empty()) {
                        (Some(proof), _) => {
                            proof.verify(&first.block, self.set).map_err(|source| {
                                SyncError::BadCommitProof {
                                    height: first.block.height,
                                    source,
                                }
                            })
                        }
                        (None, true) => Err(SyncError::NoCommitProof {
                            height: first.block.height,
                        }),
                        (None, false) => Ok(()),
                    };
                    proven
                        .and_then(|()| verify_chain(&first.committed(), &blocks, self.set, None))
                        .map(|_| Some(first))
                }
                Some(tip) => verify_chain(&tip.committed(), &blocks, self.set, None).map(|_| None),
            };
            match checked {
                Ok(first) => {
                    if let Some(first) = first {
                        base = Some(first);
                    }
                }
                Err(err) => {
                    self.drop_peer(&peer, &Lie::Chain(err).to_string());
                    continue;
                }
            }
            let result = blocks
                .iter()
                .filter_map(|b| b.block.delayed_result)
                .find(|r| r.number == top.height);
            if let Some(result) = result {
                let base = base.expect("set with the first answer");
                tracing::info!(target: "node::statesync", block = top.height, root = %result.state_root, "the snapshot's block is final and its result certified");
                return Ok(Some((base, result)));
            }
            if let Some(last) = blocks.pop() {
                tip = Some(last);
            } else if tip.is_none() {
                tip = base.clone();
            }
        }
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
    use alloy_consensus::Header;

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
