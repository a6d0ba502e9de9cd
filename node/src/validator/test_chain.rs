//! Chains of finalized blocks with real certificates, for the validator's sync tests.

use super::{payload::Payload, wire::SyncedBlock};
use alloy_primitives::{Address, B256};
use kestrel_consensus::{
    Round,
    bft::{
        Block, CommitProof, QuorumCert, SignerSig, ValidatorIndex, ValidatorKey, ValidatorSet, Vote,
    },
};
use kestrel_types::ExecutionResult;

/// Blocks carry the execution result of the block this many below them.
pub const DELAY: u64 = 3;

pub fn keys() -> Vec<ValidatorKey> {
    (1..=4u8)
        .map(|i| ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&[i; 32]).unwrap()))
        .collect()
}

pub fn set(keys: &[ValidatorKey]) -> ValidatorSet {
    ValidatorSet::new(keys.iter().map(|k| (k.id(), 1)).collect()).unwrap()
}

pub fn qc_for(block: &Block, signers: &[usize], keys: &[ValidatorKey]) -> QuorumCert {
    QuorumCert {
        round: block.round,
        height: block.height,
        block_id: block.id(),
        signatures: signers
            .iter()
            .map(|&i| {
                let index = ValidatorIndex(i as u16);
                let vote = Vote::new(block.round, block.height, block.id(), index, &keys[i]);
                SignerSig {
                    signer: index,
                    signature: vote.signature,
                }
            })
            .collect(),
    }
}

/// The execution result that block `height + DELAY` carries for block `height`.
pub fn result_of(height: u64) -> ExecutionResult {
    ExecutionResult {
        number: height,
        block_hash: B256::repeat_byte(height as u8),
        state_root: B256::repeat_byte(0x80 | height as u8),
        receipts_root: B256::ZERO,
    }
}

fn block(round: u64, height: u64, qc: QuorumCert, payload: &Payload) -> Block {
    Block {
        round: Round(round),
        height,
        author: ValidatorIndex((round % 4) as u16),
        timestamp_ms: round * 1_000,
        payload_hash: payload.hash(),
        qc,
        delayed_result: height.checked_sub(DELAY).filter(|h| *h > 0).map(result_of),
    }
}

/// `len` blocks on genesis in rounds 1, 2, ..., each certified by the next one's QC; the last
/// with a commit proof: a child in `child_round` whose QC `child_signers` signed.
pub fn chain(
    keys: &[ValidatorKey],
    len: u64,
    child_round: u64,
    child_signers: &[usize],
) -> Vec<SyncedBlock> {
    let payload = Payload::build(Address::ZERO, 30_000_000, 1_000_000_000, Vec::new());
    let mut qc = QuorumCert::genesis();
    let mut blocks: Vec<Block> = Vec::new();
    for height in 1..=len {
        let b = block(height, height, qc.clone(), &payload);
        qc = qc_for(&b, &[0, 1, 2], keys);
        blocks.push(b);
    }
    let child = block(child_round, len + 1, qc, &payload);
    let proof = CommitProof {
        child_qc: qc_for(&child, child_signers, keys),
        child,
    };
    let n = blocks.len();
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| SyncedBlock {
            block: b.clone(),
            qc: match blocks.get(i + 1) {
                Some(next) => next.qc.clone(),
                None => proof.child.qc.clone(),
            },
            payload: payload.bytes().clone(),
            proof: (i == n - 1).then(|| proof.clone()),
        })
        .collect()
}
