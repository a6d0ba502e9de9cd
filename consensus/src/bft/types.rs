//! Consensus messages and certificates, their signing digests and their verification.
//!
//! Everything arriving from the network is an [`Unverified`] message; only
//! [`Unverified::verify`] turns it into a [`Verified`] one, which is all the state machine acts
//! on.

use super::validators::{Signature, ValidatorIndex, ValidatorKey, ValidatorSet};
use super::{SYNC_BLOCKS_MAX, wire};
use crate::Round;
use crate::error::VerifyError;
use alloy_primitives::{B256, keccak256};
use alloy_rlp::{Encodable, RlpDecodable, RlpEncodable};
use kestrel_types::{BlockNumber, ExecutionResult};
use std::collections::HashSet;

/// Domain tags keep a signature over one kind of message from being valid for another.
const PROPOSAL_TAG: &[u8] = b"kestrel-bft-proposal-v1";
const VOTE_TAG: &[u8] = b"kestrel-bft-vote-v1";
const TIMEOUT_TAG: &[u8] = b"kestrel-bft-timeout-v1";

/// Hash of a block's encoding: what votes and certificates name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockId(pub B256);

/// One validator's signature inside a certificate.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct SignerSig {
    pub signer: ValidatorIndex,
    pub signature: Signature,
}

/// A quorum certificate: signatures of more than two thirds of the stake on one block of one
/// round. `height` is signed with it so a leader can extend a QC whose block it has not seen.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct QuorumCert {
    pub round: Round,
    pub height: BlockNumber,
    pub block_id: BlockId,
    /// Strictly increasing by signer.
    pub signatures: Vec<SignerSig>,
}

/// One validator's timeout inside a timeout certificate, with the round of its highest QC.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct TimeoutSig {
    pub signer: ValidatorIndex,
    pub high_qc_round: Round,
    pub signature: Signature,
}

/// A timeout certificate: a quorum gave up on `round`. It carries the highest QC any of them
/// had, which the next leader must extend (this is what keeps a committed block from being
/// abandoned after a timeout).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct TimeoutCert {
    pub round: Round,
    pub high_qc: QuorumCert,
    /// Strictly increasing by signer.
    pub signatures: Vec<TimeoutSig>,
}

/// A block as consensus sees it: the payload (transactions) is opaque and named by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub round: Round,
    pub height: BlockNumber,
    pub author: ValidatorIndex,
    pub timestamp_ms: u64,
    pub payload_hash: B256,
    /// Certifies the parent; `qc.block_id` is the parent's id.
    pub qc: QuorumCert,
    /// The author's execution result of block `height − D` (Monad's delayed execution result),
    /// or `None` when its execution had not got there yet.
    pub delayed_result: Option<ExecutionResult>,
}

/// A leader's block for its round, signed, with the timeout certificate that let it skip the
/// previous round (if it did).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
#[rlp(trailing)]
pub struct Proposal {
    pub block: Block,
    pub signature: Signature,
    pub last_tc: Option<TimeoutCert>,
}

/// A vote for a block, sent to the next round's leader.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct Vote {
    pub round: Round,
    pub height: BlockNumber,
    pub block_id: BlockId,
    pub signer: ValidatorIndex,
    pub signature: Signature,
}

/// "I give up on `round`", with the sender's highest QC (and the TC that brought it into
/// `round`, which lets validators that missed it catch up).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
#[rlp(trailing)]
pub struct Timeout {
    pub round: Round,
    pub high_qc: QuorumCert,
    pub signer: ValidatorIndex,
    pub signature: Signature,
    pub last_tc: Option<TimeoutCert>,
}

/// Evidence that a block is final under the two-chain commit rule (see `Bft::try_commit`): a
/// quorum certified its child, and the child was proposed in the round right after the block's
/// own certificate. A certificate alone does not suffice: a certified block can still be
/// abandoned if the next round times out and the chain goes on from another block.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct CommitProof {
    /// Certifies the committed block (`child.qc`) and extends it in the next round.
    pub child: Block,
    /// Certifies `child`.
    pub child_qc: QuorumCert,
}

impl CommitProof {
    /// Checks that this proves `block` final. Needs only the validator set, so a node syncing
    /// finalized blocks from an untrusted peer can check them.
    pub fn verify(&self, block: &Block, set: &ValidatorSet) -> Result<(), VerifyError> {
        let (child, cert) = (&self.child, &self.child.qc);
        if cert.block_id != block.id() || cert.round != block.round || cert.height != block.height {
            return Err(VerifyError::NotFinal(
                "the child does not certify the block",
            ));
        }
        if !follows(cert.round.0, child.round.0) || !follows(block.height, child.height) {
            return Err(VerifyError::NotFinal(
                "the child is not in the round right after the block's",
            ));
        }
        let qc = &self.child_qc;
        if qc.block_id != child.id() || qc.round != child.round || qc.height != child.height {
            return Err(VerifyError::NotFinal("the QC is not for the child"));
        }
        let mut cache = CertCache::default();
        cache.check_qc(cert, set)?;
        cache.check_qc(qc, set)
    }
}

/// Ask a peer for `block_id` and up to `count − 1` of its ancestors (block sync).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct BlockRequest {
    pub block_id: BlockId,
    pub count: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Proposal(Proposal),
    Vote(Vote),
    Timeout(Timeout),
    /// A QC, broadcast by the next leader as soon as it assembles it: the others learn a block
    /// is certified (and its parent final) a block time before the next proposal would tell
    /// them, which is that much off submission-to-finality.
    Certificate(QuorumCert),
    /// A TC, sent to a validator whose timeout shows it rounds behind: the certificate that
    /// moved us into our round moves it too, rather than its waiting for our next timeouts (a
    /// validator that restarts or was cut off while a TC went round would otherwise wait out
    /// whole backed-off rounds).
    TimeoutCertificate(TimeoutCert),
    BlockRequest(BlockRequest),
    /// Answer to a [`BlockRequest`], newest first. Blocks are authenticated by hash against a
    /// certified id, not by signature, so the state machine checks them, not `verify`.
    Blocks(Vec<Block>),
}

/// A message whose signatures have not been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified<M>(M);

/// A message whose signatures and certificates were checked against the validator set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<M>(M);

impl<M> Unverified<M> {
    pub fn new(message: M) -> Self {
        Self(message)
    }

    /// Read the message without trusting it (e.g. to log or route it).
    pub fn peek(&self) -> &M {
        &self.0
    }
}

impl<M> Verified<M> {
    pub fn into_inner(self) -> M {
        self.0
    }
}

impl<M> std::ops::Deref for Verified<M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.0
    }
}

impl BlockId {
    /// Id of the genesis block every chain starts from.
    pub fn genesis() -> Self {
        Block::genesis().id()
    }
}

impl Block {
    /// Height 0, round 0; its certificate is [`QuorumCert::genesis`], which needs no signatures.
    pub fn genesis() -> Self {
        Block {
            round: Round(0),
            height: 0,
            author: ValidatorIndex(0),
            timestamp_ms: 0,
            payload_hash: B256::ZERO,
            qc: QuorumCert {
                round: Round(0),
                height: 0,
                block_id: BlockId(B256::ZERO),
                signatures: Vec::new(),
            },
            delayed_result: None,
        }
    }

    pub fn id(&self) -> BlockId {
        let mut buf = Vec::with_capacity(self.length());
        self.encode(&mut buf);
        BlockId(keccak256(buf))
    }

    pub fn parent(&self) -> BlockId {
        self.qc.block_id
    }
}

impl QuorumCert {
    pub fn genesis() -> Self {
        QuorumCert {
            round: Round(0),
            height: 0,
            block_id: BlockId::genesis(),
            signatures: Vec::new(),
        }
    }

    /// Checks the signatures and the quorum against `set` (a node holding only the validator
    /// set can check a certificate it got from anyone).
    pub fn verify(&self, set: &ValidatorSet) -> Result<(), VerifyError> {
        CertCache::default().check_qc(self, set)
    }

    /// Validators that voted, so are known to hold this QC's block.
    pub fn signers(&self) -> impl Iterator<Item = ValidatorIndex> + '_ {
        self.signatures.iter().map(|s| s.signer)
    }

    fn digest(&self) -> B256 {
        let mut buf = Vec::new();
        self.encode(&mut buf);
        keccak256(buf)
    }
}

pub(crate) fn vote_digest(round: Round, height: BlockNumber, block_id: BlockId) -> B256 {
    let mut buf = VOTE_TAG.to_vec();
    round.encode(&mut buf);
    height.encode(&mut buf);
    block_id.encode(&mut buf);
    keccak256(buf)
}

pub(crate) fn timeout_digest(round: Round, high_qc_round: Round) -> B256 {
    let mut buf = TIMEOUT_TAG.to_vec();
    round.encode(&mut buf);
    high_qc_round.encode(&mut buf);
    keccak256(buf)
}

fn proposal_digest(id: BlockId) -> B256 {
    let mut buf = PROPOSAL_TAG.to_vec();
    buf.extend_from_slice(id.0.as_slice());
    keccak256(buf)
}

impl Proposal {
    pub fn new(block: Block, last_tc: Option<TimeoutCert>, key: &ValidatorKey) -> Self {
        let signature = key.sign(proposal_digest(block.id()));
        Self {
            block,
            signature,
            last_tc,
        }
    }
}

impl Vote {
    pub fn new(
        round: Round,
        height: BlockNumber,
        block_id: BlockId,
        signer: ValidatorIndex,
        key: &ValidatorKey,
    ) -> Self {
        Self {
            round,
            height,
            block_id,
            signer,
            signature: key.sign(vote_digest(round, height, block_id)),
        }
    }
}

impl Timeout {
    pub fn new(
        round: Round,
        high_qc: QuorumCert,
        last_tc: Option<TimeoutCert>,
        signer: ValidatorIndex,
        key: &ValidatorKey,
    ) -> Self {
        Self {
            signature: key.sign(timeout_digest(round, high_qc.round)),
            round,
            high_qc,
            signer,
            last_tc,
        }
    }
}

/// Certificates already checked, by digest: a QC reaches a validator in the proposal, in
/// timeouts and in TCs, and checking its signatures once is enough.
#[derive(Debug, Default)]
pub struct CertCache {
    verified: HashSet<B256>,
}

/// Bound on [`CertCache`]; when full it is cleared (re-checking is only slower, never wrong).
const CERT_CACHE_MAX: usize = 4096;

impl CertCache {
    fn check_qc(&mut self, qc: &QuorumCert, set: &ValidatorSet) -> Result<(), VerifyError> {
        if qc.round == Round(0) {
            return if *qc == QuorumCert::genesis() {
                Ok(())
            } else {
                Err(VerifyError::FakeGenesis)
            };
        }
        let digest = qc.digest();
        if self.verified.contains(&digest) {
            return Ok(());
        }
        check_signers(set, qc.signatures.iter().map(|s| s.signer))?;
        let d = vote_digest(qc.round, qc.height, qc.block_id);
        for s in &qc.signatures {
            if !set.verify(s.signer, d, &s.signature) {
                return Err(VerifyError::BadSignature(s.signer));
            }
        }
        self.remember(digest);
        Ok(())
    }

    fn check_tc(&mut self, tc: &TimeoutCert, set: &ValidatorSet) -> Result<(), VerifyError> {
        let digest = {
            let mut buf = Vec::new();
            tc.encode(&mut buf);
            keccak256(buf)
        };
        if self.verified.contains(&digest) {
            return Ok(());
        }
        let max_round = tc.signatures.iter().map(|s| s.high_qc_round).max();
        if max_round != Some(tc.high_qc.round) {
            return Err(VerifyError::HighQcMismatch);
        }
        if tc.high_qc.round >= tc.round {
            return Err(VerifyError::BadStructure("TC high QC not below its round"));
        }
        check_signers(set, tc.signatures.iter().map(|s| s.signer))?;
        for s in &tc.signatures {
            if !set.verify(
                s.signer,
                timeout_digest(tc.round, s.high_qc_round),
                &s.signature,
            ) {
                return Err(VerifyError::BadSignature(s.signer));
            }
        }
        self.check_qc(&tc.high_qc, set)?;
        self.remember(digest);
        Ok(())
    }

    fn remember(&mut self, digest: B256) {
        if self.verified.len() >= CERT_CACHE_MAX {
            self.verified.clear();
        }
        self.verified.insert(digest);
    }
}

/// Signers strictly increasing (so none counts twice), all in the set, together a quorum.
fn check_signers(
    set: &ValidatorSet,
    signers: impl Iterator<Item = ValidatorIndex>,
) -> Result<(), VerifyError> {
    let mut last = None;
    let mut stake = 0u64;
    for s in signers {
        if last.is_some_and(|l| s <= l) {
            return Err(VerifyError::UnsortedSigners);
        }
        if usize::from(s.0) >= set.len() {
            return Err(VerifyError::UnknownSigner(s));
        }
        last = Some(s);
        stake += set.stake(s);
    }
    if stake < set.quorum_stake() {
        return Err(VerifyError::NoQuorum {
            got: stake,
            quorum: set.quorum_stake(),
        });
    }
    Ok(())
}

/// `next` comes right after `prev` (a round or a height). Both are whatever a peer wrote, so
/// `prev + 1` must not overflow: a Byzantine validator can sign a round or height of 2^64 - 1.
fn follows(prev: u64, next: u64) -> bool {
    prev.checked_add(1) == Some(next)
}

fn check_signer(set: &ValidatorSet, signer: ValidatorIndex) -> Result<(), VerifyError> {
    if usize::from(signer.0) < set.len() {
        Ok(())
    } else {
        Err(VerifyError::UnknownSigner(signer))
    }
}

impl Unverified<Message> {
    /// Decode a message received from the network (see [`wire`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, crate::error::DecodeError> {
        wire::decode(bytes).map(Unverified)
    }

    /// Check every signature and certificate in the message against `set`. What it cannot check
    /// (whether a block extends one this node knows, whether the round is current) is the state
    /// machine's business.
    pub fn verify(
        self,
        set: &ValidatorSet,
        cache: &mut CertCache,
    ) -> Result<Verified<Message>, VerifyError> {
        match &self.0 {
            Message::Proposal(p) => {
                let b = &p.block;
                check_signer(set, b.author)?;
                if set.leader(b.round) != b.author {
                    return Err(VerifyError::NotLeader {
                        round: b.round.0,
                        author: b.author,
                    });
                }
                if b.round <= b.qc.round || !follows(b.qc.height, b.height) {
                    return Err(VerifyError::BadStructure("block round or height vs its QC"));
                }
                // A block must justify its round: either it follows its QC's round directly,
                // or a TC shows the round before it was abandoned.
                match &p.last_tc {
                    Some(tc) if !follows(tc.round.0, b.round.0) => {
                        return Err(VerifyError::BadStructure(
                            "TC is not for the previous round",
                        ));
                    }
                    None if !follows(b.qc.round.0, b.round.0) => {
                        return Err(VerifyError::BadStructure("round skipped without a TC"));
                    }
                    _ => {}
                }
                if !set.verify(b.author, proposal_digest(b.id()), &p.signature) {
                    return Err(VerifyError::BadSignature(b.author));
                }
                cache.check_qc(&b.qc, set)?;
                if let Some(tc) = &p.last_tc {
                    cache.check_tc(tc, set)?;
                }
            }
            Message::Vote(v) => {
                check_signer(set, v.signer)?;
                if !set.verify(
                    v.signer,
                    vote_digest(v.round, v.height, v.block_id),
                    &v.signature,
                ) {
                    return Err(VerifyError::BadSignature(v.signer));
                }
            }
            Message::Timeout(t) => {
                check_signer(set, t.signer)?;
                if t.high_qc.round >= t.round {
                    return Err(VerifyError::BadStructure(
                        "timeout high QC not below its round",
                    ));
                }
                if t.last_tc
                    .as_ref()
                    .is_some_and(|tc| !follows(tc.round.0, t.round.0))
                {
                    return Err(VerifyError::BadStructure(
                        "TC is not for the previous round",
                    ));
                }
                if !set.verify(
                    t.signer,
                    timeout_digest(t.round, t.high_qc.round),
                    &t.signature,
                ) {
                    return Err(VerifyError::BadSignature(t.signer));
                }
                cache.check_qc(&t.high_qc, set)?;
                if let Some(tc) = &t.last_tc {
                    cache.check_tc(tc, set)?;
                }
            }
            Message::Certificate(qc) => cache.check_qc(qc, set)?,
            Message::TimeoutCertificate(tc) => cache.check_tc(tc, set)?,
            Message::BlockRequest(r) => {
                if r.count == 0 {
                    return Err(VerifyError::BadStructure("block request for no blocks"));
                }
                if usize::from(r.count) > SYNC_BLOCKS_MAX {
                    return Err(VerifyError::RequestTooLarge(r.count));
                }
            }
            Message::Blocks(blocks) => {
                if blocks.len() > SYNC_BLOCKS_MAX {
                    return Err(VerifyError::ResponseTooLarge(blocks.len()));
                }
            }
        }
        Ok(Verified(self.0))
    }
}
