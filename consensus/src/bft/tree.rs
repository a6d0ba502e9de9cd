//! The block tree above the root: blocks joining it (proposals, and ancestors fetched for a QC
//! whose block is missing, which wait as orphans until their parent is in), and answering
//! peers' requests for blocks.

use super::{Bft, Command};
use crate::bft::{Block, BlockRequest, Message, QuorumCert, SYNC_BLOCKS_MAX, ValidatorIndex};

/// Uncommitted blocks held. A Byzantine leader can sign any number of blocks for its round, so
/// beyond this new ones are dropped until a commit prunes the tree.
const BLOCKS_MAX: usize = 4_096;
/// Blocks held whose parent is still being fetched.
const ORPHANS_MAX: usize = 256;
/// Block ids being fetched.
const WANTED_MAX: usize = 1_024;

impl Bft {
    /// A block that is either signed by its leader or hash-linked to a certified id.
    pub(super) fn receive_block(&mut self, now: u64, block: Block, out: &mut Vec<Command>) {
        if block.height <= self.root.block.height {
            return;
        }
        if self.blocks.contains_key(&block.parent()) {
            self.insert_blocks(now, block, out);
        } else if self.orphan_count < ORPHANS_MAX {
            // Its parent was requested when its QC was processed.
            self.orphan_count += 1;
            self.orphans.entry(block.parent()).or_default().push(block);
        }
    }

    /// Insert `block` (whose parent is held) and every orphan that now connects.
    pub(super) fn insert_blocks(&mut self, now: u64, block: Block, out: &mut Vec<Command>) {
        let mut work = vec![block];
        while let Some(b) = work.pop() {
            let id = b.id();
            let Some(parent) = self.blocks.get(&b.parent()) else {
                continue; // pruned by a commit on another branch meanwhile
            };
            if b.height != parent.height + 1
                || b.height <= self.root.block.height
                || self.blocks.len() >= BLOCKS_MAX
            {
                continue;
            }
            if self.blocks.insert(id, b.clone()).is_some() {
                continue;
            }
            out.push(Command::Proposed(b.clone()));
            self.wanted.remove(&id);
            if let Some(children) = self.orphans.remove(&id) {
                self.orphan_count -= children.len();
                work.extend(children);
            }
            self.process_qc(now, &b.qc, out);
            self.maybe_vote(now, &b, id, out);
        }
        let high_qc = self.high_qc.clone();
        self.try_commit(now, &high_qc, out);
    }

    /// Ask a signer of `qc` (it voted, so it holds the block) for the block and its ancestors.
    pub(super) fn request_block(&mut self, qc: &QuorumCert, out: &mut Vec<Command>) {
        if self.wanted.len() >= WANTED_MAX {
            self.wanted.clear();
        }
        self.wanted.insert(qc.block_id);
        let signers: Vec<_> = qc.signers().filter(|s| *s != self.me).collect();
        if signers.is_empty() {
            return;
        }
        // Rotate through the signers with each request, so a silent one does not stall sync.
        // Not with the round: a round without a quorum does not end, and its timeouts (whose
        // high QC brings us here again) would ask the same dead signer each time while a live
        // one holds the block (two of four validators down: a third stayed two blocks behind).
        let peer = signers[self.block_requests % signers.len()];
        self.block_requests = self.block_requests.wrapping_add(1);
        let count = (qc.height - self.root.block.height).min(SYNC_BLOCKS_MAX as u64) as u16;
        out.push(Command::SendTo(
            peer,
            Message::BlockRequest(BlockRequest {
                block_id: qc.block_id,
                count,
            }),
        ));
    }

    pub(super) fn on_block_request(
        &mut self,
        from: ValidatorIndex,
        r: BlockRequest,
        out: &mut Vec<Command>,
    ) {
        let mut blocks = Vec::new();
        let mut id = r.block_id;
        while blocks.len() < usize::from(r.count) {
            let Some(b) = self.blocks.get(&id).or_else(|| self.history.get(&id)) else {
                break;
            };
            id = b.parent();
            blocks.push(b.clone());
        }
        if !blocks.is_empty() {
            out.push(Command::SendTo(from, Message::Blocks(blocks)));
        }
    }

    pub(super) fn on_blocks(
        &mut self,
        now: u64,
        from: ValidatorIndex,
        blocks: Vec<Block>,
        out: &mut Vec<Command>,
    ) {
        let mut lowest_missing = None;
        for block in blocks {
            let id = block.id();
            // Only ids we asked for (named by a verified QC, or parents of such blocks, which
            // the hash chain authenticates) are accepted: a forged block has another id.
            if !self.wanted.remove(&id) || block.height <= self.root.block.height {
                continue;
            }
            if self.blocks.contains_key(&block.parent()) {
                self.insert_blocks(now, block, out);
            } else {
                self.wanted.insert(block.parent());
                lowest_missing = Some((block.parent(), block.height - 1));
                self.receive_block(now, block, out);
            }
        }
        // The answer stopped short of a block we hold: ask the same peer for the rest.
        if let Some((id, height)) = lowest_missing
            && !self.blocks.contains_key(&id)
            && height > self.root.block.height
        {
            let count = (height - self.root.block.height).min(SYNC_BLOCKS_MAX as u64) as u16;
            out.push(Command::SendTo(
                from,
                Message::BlockRequest(BlockRequest {
                    block_id: id,
                    count,
                }),
            ));
        }
    }
}
