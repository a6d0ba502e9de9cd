//! Tests of the BFT messages and state machine: `wire` (round trips, malformed input, what
//! verification rejects), `machine` (what the state machine does with them). Helpers both use
//! are here.

use super::*;
use crate::Round;
use crate::error::VerifyError;
use alloy_primitives::B256;

mod machine;
mod wire;

fn key(i: u64) -> ValidatorKey {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&(i + 1).to_be_bytes());
    ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&bytes).unwrap())
}

fn set(n: u64) -> ValidatorSet {
    ValidatorSet::new((0..n).map(|i| (key(i).id(), 1)).collect()).unwrap()
}

fn verify(set: &ValidatorSet, msg: Message) -> Result<Message, VerifyError> {
    Unverified::new(msg)
        .verify(set, &mut CertCache::default())
        .map(Verified::into_inner)
}

/// A QC for `block` signed by validators `signers`.
fn certify(block: &Block, signers: &[u64]) -> QuorumCert {
    let id = block.id();
    QuorumCert {
        round: block.round,
        height: block.height,
        block_id: id,
        signatures: signers
            .iter()
            .map(|i| SignerSig {
                signer: ValidatorIndex(*i as u16),
                signature: Vote::new(
                    block.round,
                    block.height,
                    id,
                    ValidatorIndex(*i as u16),
                    &key(*i),
                )
                .signature,
            })
            .collect(),
    }
}

fn block_at(round: u64, qc: QuorumCert, set: &ValidatorSet) -> Block {
    Block {
        round: Round(round),
        height: qc.height + 1,
        author: set.leader(Round(round)),
        timestamp_ms: 0,
        payload_hash: B256::repeat_byte(round as u8),
        qc,
        delayed_result: None,
    }
}
