//! Wire round trips, malformed input, and what verification rejects.

use super::*;
use crate::Round;
use crate::error::{DecodeError, VerifyError};
use alloy_primitives::B256;
use kestrel_types::ExecutionResult;
use proptest::prelude::*;

fn key(i: u64) -> ValidatorKey {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&(i + 1).to_be_bytes());
    ValidatorKey::new(secp256k1::SecretKey::from_byte_array(&bytes).unwrap())
}

fn set(n: u64) -> ValidatorSet {
    ValidatorSet::new((0..n).map(|i| (key(i).id(), 1)).collect()).unwrap()
}

fn b256() -> impl Strategy<Value = B256> {
    any::<[u8; 32]>().prop_map(B256::from)
}

fn sig() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut s = [0u8; 64];
        s[..32].copy_from_slice(&a);
        s[32..].copy_from_slice(&b);
        Signature(s)
    })
}

fn qc() -> impl Strategy<Value = QuorumCert> {
    (
        any::<u64>(),
        any::<u64>(),
        b256(),
        prop::collection::vec((any::<u16>(), sig()), 0..5),
    )
        .prop_map(|(round, height, id, sigs)| QuorumCert {
            round: Round(round),
            height,
            block_id: BlockId(id),
            signatures: sigs
                .into_iter()
                .map(|(s, signature)| SignerSig {
                    signer: ValidatorIndex(s),
                    signature,
                })
                .collect(),
        })
}

fn tc() -> impl Strategy<Value = TimeoutCert> {
    (
        any::<u64>(),
        qc(),
        prop::collection::vec((any::<u16>(), any::<u64>(), sig()), 0..5),
    )
        .prop_map(|(round, high_qc, sigs)| TimeoutCert {
            round: Round(round),
            high_qc,
            signatures: sigs
                .into_iter()
                .map(|(s, r, signature)| TimeoutSig {
                    signer: ValidatorIndex(s),
                    high_qc_round: Round(r),
                    signature,
                })
                .collect(),
        })
}

fn block() -> impl Strategy<Value = Block> {
    (
        (any::<u64>(), any::<u64>(), any::<u16>(), any::<u64>()),
        b256(),
        qc(),
        prop::option::of((any::<u64>(), b256(), b256(), b256())),
    )
        .prop_map(|((round, height, author, ts), payload_hash, qc, r)| Block {
            round: Round(round),
            height,
            author: ValidatorIndex(author),
            timestamp_ms: ts,
            payload_hash,
            qc,
            delayed_result: r.map(|(number, block_hash, state_root, receipts_root)| {
                ExecutionResult {
                    number,
                    block_hash,
                    state_root,
                    receipts_root,
                }
            }),
        })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (block(), sig(), prop::option::of(tc())).prop_map(|(block, signature, last_tc)| {
            Message::Proposal(Proposal {
                block,
                signature,
                last_tc,
            })
        }),
        (any::<u64>(), any::<u64>(), b256(), any::<u16>(), sig()).prop_map(
            |(round, height, id, signer, signature)| Message::Vote(Vote {
                round: Round(round),
                height,
                block_id: BlockId(id),
                signer: ValidatorIndex(signer),
                signature,
            })
        ),
        (
            any::<u64>(),
            qc(),
            any::<u16>(),
            sig(),
            prop::option::of(tc())
        )
            .prop_map(
                |(round, high_qc, signer, signature, last_tc)| Message::Timeout(Timeout {
                    round: Round(round),
                    high_qc,
                    signer: ValidatorIndex(signer),
                    signature,
                    last_tc,
                })
            ),
        (b256(), any::<u16>()).prop_map(|(id, count)| Message::BlockRequest(BlockRequest {
            block_id: BlockId(id),
            count,
        })),
        prop::collection::vec(block(), 0..3).prop_map(Message::Blocks),
        qc().prop_map(Message::Certificate),
        tc().prop_map(Message::TimeoutCertificate),
    ]
}

proptest! {
    #[test]
    fn encode_decode_is_identity(msg in message()) {
        let bytes = msg.encode_to_vec();
        let back = Unverified::decode(&bytes).unwrap();
        prop_assert_eq!(back.peek(), &msg);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Unverified::decode(&bytes);
    }
}

#[test]
fn malformed_input_gets_typed_errors() {
    let vote = Message::Vote(Vote::new(
        Round(3),
        2,
        BlockId(B256::repeat_byte(1)),
        ValidatorIndex(0),
        &key(0),
    ));
    let good = vote.encode_to_vec();
    assert_eq!(Unverified::decode(&[]), Err(DecodeError::Empty));
    let mut v = good.clone();
    v[0] = 9;
    assert_eq!(Unverified::decode(&v), Err(DecodeError::UnknownVersion(9)));
    let mut k = good.clone();
    k[1] = 77;
    assert_eq!(Unverified::decode(&k), Err(DecodeError::UnknownKind(77)));
    let mut t = good.clone();
    t.push(0);
    assert_eq!(Unverified::decode(&t), Err(DecodeError::TrailingBytes(1)));
    assert!(matches!(
        Unverified::decode(&good[..good.len() - 3]),
        Err(DecodeError::Rlp(_))
    ));
    let huge = vec![WIRE_VERSION; MESSAGE_BYTES_MAX + 1];
    assert_eq!(
        Unverified::decode(&huge),
        Err(DecodeError::TooLarge(MESSAGE_BYTES_MAX + 1))
    );
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

#[test]
fn verification_accepts_honest_and_rejects_forged_messages() {
    let s = set(4);
    let b1 = block_at(1, QuorumCert::genesis(), &s);
    let leader1 = u64::from(s.leader(Round(1)).0);
    let good = Proposal::new(b1.clone(), None, &key(leader1));
    assert!(verify(&s, Message::Proposal(good.clone())).is_ok());

    // Signed by someone else than the leader it names.
    let forged = Proposal::new(b1.clone(), None, &key(leader1 + 1));
    assert_eq!(
        verify(&s, Message::Proposal(forged)),
        Err(VerifyError::BadSignature(b1.author))
    );
    // A block changed after signing.
    let mut tampered = good.clone();
    tampered.block.payload_hash = B256::ZERO;
    assert!(matches!(
        verify(&s, Message::Proposal(tampered)),
        Err(VerifyError::BadSignature(_))
    ));
    // A non-leader proposing.
    let mut not_leader = b1.clone();
    not_leader.author = ValidatorIndex(((leader1 + 1) % 4) as u16);
    assert!(matches!(
        verify(
            &s,
            Message::Proposal(Proposal::new(not_leader, None, &key(leader1 + 1)))
        ),
        Err(VerifyError::NotLeader { .. })
    ));

    // QCs: a quorum is 3 of 4, each signer once, in order, each signature its own.
    let b2 = block_at(2, certify(&b1, &[0, 1, 2]), &s);
    let leader2 = u64::from(s.leader(Round(2)).0);
    assert!(
        verify(
            &s,
            Message::Proposal(Proposal::new(b2.clone(), None, &key(leader2)))
        )
        .is_ok()
    );
    let with_qc = |qc: QuorumCert| {
        let mut b = b2.clone();
        b.qc = qc;
        verify(&s, Message::Proposal(Proposal::new(b, None, &key(leader2))))
    };
    assert_eq!(
        with_qc(certify(&b1, &[0, 1])),
        Err(VerifyError::NoQuorum { got: 2, quorum: 3 })
    );
    assert_eq!(
        with_qc(certify(&b1, &[0, 1, 1])),
        Err(VerifyError::UnsortedSigners)
    );
    let mut stolen = certify(&b1, &[0, 1, 2]);
    stolen.signatures[2].signature = stolen.signatures[1].signature;
    assert_eq!(
        with_qc(stolen),
        Err(VerifyError::BadSignature(ValidatorIndex(2)))
    );
    let mut fake_genesis = QuorumCert::genesis();
    fake_genesis.block_id = BlockId(B256::repeat_byte(5));
    let mut b = b1.clone();
    b.qc = fake_genesis;
    assert_eq!(
        verify(&s, Message::Proposal(Proposal::new(b, None, &key(leader1)))),
        Err(VerifyError::FakeGenesis)
    );

    // Skipping a round needs a TC for the round before.
    let b3 = block_at(3, certify(&b1, &[0, 1, 2]), &s);
    let leader3 = u64::from(s.leader(Round(3)).0);
    assert!(matches!(
        verify(
            &s,
            Message::Proposal(Proposal::new(b3.clone(), None, &key(leader3)))
        ),
        Err(VerifyError::BadStructure(_))
    ));
    let timeouts: Vec<Timeout> = [0u64, 2, 3]
        .iter()
        .map(|i| {
            Timeout::new(
                Round(2),
                certify(&b1, &[0, 1, 2]),
                None,
                ValidatorIndex(*i as u16),
                &key(*i),
            )
        })
        .collect();
    let tc = TimeoutCert {
        round: Round(2),
        high_qc: certify(&b1, &[0, 1, 2]),
        signatures: timeouts
            .iter()
            .map(|t| TimeoutSig {
                signer: t.signer,
                high_qc_round: t.high_qc.round,
                signature: t.signature,
            })
            .collect(),
    };
    assert!(
        verify(
            &s,
            Message::Proposal(Proposal::new(b3.clone(), Some(tc.clone()), &key(leader3)))
        )
        .is_ok()
    );
    // A TC claiming a lower high QC than its signers reported.
    let mut lying = tc.clone();
    lying.high_qc = QuorumCert::genesis();
    assert_eq!(
        verify(
            &s,
            Message::Proposal(Proposal::new(b3, Some(lying), &key(leader3)))
        ),
        Err(VerifyError::HighQcMismatch)
    );

    // Votes and timeouts: only the named signer's key will do.
    let vote = Vote::new(Round(1), 1, b1.id(), ValidatorIndex(3), &key(2));
    assert_eq!(
        verify(&s, Message::Vote(vote)),
        Err(VerifyError::BadSignature(ValidatorIndex(3)))
    );
    let outsider = Vote::new(Round(1), 1, b1.id(), ValidatorIndex(9), &key(9));
    assert_eq!(
        verify(&s, Message::Vote(outsider)),
        Err(VerifyError::UnknownSigner(ValidatorIndex(9)))
    );
    assert!(verify(&s, Message::Timeout(timeouts[0].clone())).is_ok());
    let mut replayed_elsewhere = timeouts[0].clone();
    replayed_elsewhere.round = Round(7);
    assert!(matches!(
        verify(&s, Message::Timeout(replayed_elsewhere)),
        Err(VerifyError::BadSignature(_))
    ));
    assert_eq!(
        verify(
            &s,
            Message::BlockRequest(BlockRequest {
                block_id: b1.id(),
                count: SYNC_BLOCKS_MAX as u16 + 1
            })
        ),
        Err(VerifyError::RequestTooLarge(SYNC_BLOCKS_MAX as u16 + 1))
    );
}

#[test]
fn commit_proof_needs_a_certified_child_in_the_next_round() {
    let s = set(4);
    let b1 = block_at(1, QuorumCert::genesis(), &s);
    let qc1 = certify(&b1, &[0, 1, 2]);
    // b2 extends b1 in the very next round and is certified: b1 is final.
    let b2 = block_at(2, qc1.clone(), &s);
    let proof = CommitProof {
        child: b2.clone(),
        child_qc: certify(&b2, &[1, 2, 3]),
    };
    assert_eq!(proof.verify(&b1, &s), Ok(()));
    // It proves nothing about another block, nor about the child itself.
    let other = block_at(1, QuorumCert::genesis(), &s);
    let other = Block {
        timestamp_ms: 1,
        ..other
    };
    assert!(matches!(
        proof.verify(&other, &s),
        Err(VerifyError::NotFinal(_))
    ));
    assert!(matches!(
        proof.verify(&b2, &s),
        Err(VerifyError::NotFinal(_))
    ));

    // Certified but not committed: round 2 timed out and b3 extends b1 in round 3. b1 has a QC
    // and a certified child, but a TC for round 2 could still carry a higher QC elsewhere.
    let b3 = block_at(3, qc1.clone(), &s);
    let gapped = CommitProof {
        child: b3.clone(),
        child_qc: certify(&b3, &[0, 1, 2]),
    };
    assert!(matches!(
        gapped.verify(&b1, &s),
        Err(VerifyError::NotFinal(_))
    ));
    // A block's own QC (what sync used to accept) is no proof: the child's is missing.
    let uncertified_child = CommitProof {
        child: b2.clone(),
        child_qc: certify(&b2, &[1, 2]),
    };
    assert!(matches!(
        uncertified_child.verify(&b1, &s),
        Err(VerifyError::NoQuorum { .. })
    ));
    // A QC that names the child but is for another round.
    let mut wrong_round = proof.clone();
    wrong_round.child_qc.round = Round(5);
    assert!(matches!(
        wrong_round.verify(&b1, &s),
        Err(VerifyError::NotFinal(_))
    ));
    // Forged signatures on the child's QC.
    let mut forged = proof.clone();
    forged.child_qc.signatures[0].signature = forged.child_qc.signatures[1].signature;
    assert!(matches!(
        forged.verify(&b1, &s),
        Err(VerifyError::BadSignature(_))
    ));
    // A child with a forged certificate for b1.
    let fake_qc1 = QuorumCert {
        signatures: qc1.signatures[..1].to_vec(),
        ..qc1
    };
    let b2_fake = block_at(2, fake_qc1, &s);
    let fake = CommitProof {
        child: b2_fake.clone(),
        child_qc: certify(&b2_fake, &[0, 1, 2]),
    };
    assert!(matches!(
        fake.verify(&b1, &s),
        Err(VerifyError::NoQuorum { .. })
    ));
}

/// Validator `me` of `set`, started at genesis at `now`.
fn started_at_genesis(me: u64, set: &ValidatorSet, now: u64) -> Bft {
    let mut bft = Bft::new(
        Config {
            round_timeout_ms: 1_000,
            execution_delay: 3,
        },
        key(me),
        set.clone(),
        CommittedBlock::genesis(),
        SafetyState::genesis(),
    )
    .unwrap();
    bft.update(now, Event::Start);
    bft
}

#[test]
fn no_vote_for_a_timestamp_not_after_the_parent_or_too_far_ahead() {
    let s = set(4);
    let leader = s.leader(Round(1));
    // Neither this round's leader nor the next (whom the vote is sent to).
    let me = (0..4)
        .find(|i| ![leader, s.leader(Round(2))].contains(&ValidatorIndex(*i as u16)))
        .unwrap();
    let now = 10_000;
    let voted = |timestamp_ms: u64| {
        let mut bft = started_at_genesis(me, &s, now);
        let block = Block {
            timestamp_ms,
            ..block_at(1, QuorumCert::genesis(), &s)
        };
        let proposal = Proposal::new(block, None, &key(u64::from(leader.0)));
        let message = Unverified::new(Message::Proposal(proposal));
        bft.update(
            now,
            Event::Message {
                from: leader,
                message,
            },
        )
        .iter()
        .any(|c| matches!(c, Command::SendTo(_, Message::Vote(_))))
    };
    assert!(voted(now - 500), "a past timestamp after the parent's");
    assert!(
        voted(now + TIMESTAMP_AHEAD_MAX_MS),
        "within the allowed drift"
    );
    // Genesis is at 0: not after the parent.
    assert!(!voted(0));
    assert!(!voted(now + TIMESTAMP_AHEAD_MAX_MS + 1));
}

#[test]
fn a_broadcast_certificate_finalizes_the_parent_before_the_next_proposal() {
    let s = set(4);
    // Not the leader of rounds 1-3, so it learns of QCs only from others' messages.
    let me = (0..4)
        .find(|i| (1..=3).all(|r| s.leader(Round(r)) != ValidatorIndex(*i as u16)))
        .unwrap_or(3);
    let mut bft = started_at_genesis(me, &s, 0);
    let deliver = |bft: &mut Bft, message: Message| {
        let from = ValidatorIndex(0);
        bft.update(
            1,
            Event::Message {
                from,
                message: Unverified::new(message),
            },
        )
    };
    let b1 = block_at(1, QuorumCert::genesis(), &s);
    let qc1 = certify(&b1, &[0, 1, 2]);
    let b2 = block_at(2, qc1, &s);
    for b in [&b1, &b2] {
        let leader = key(u64::from(b.author.0));
        deliver(
            &mut bft,
            Message::Proposal(Proposal::new(b.clone(), None, &leader)),
        );
    }
    assert_eq!(bft.root().block.height, 0, "b1 is certified, not yet final");
    // A forged certificate for b2 (one signature) changes nothing.
    let forged = QuorumCert {
        signatures: certify(&b2, &[0]).signatures,
        ..certify(&b2, &[0, 1, 2])
    };
    assert!(deliver(&mut bft, Message::Certificate(forged)).is_empty());
    assert_eq!(bft.round(), Round(2));
    // The real one, broadcast by round 3's leader: b1 is final and the round moves on now.
    let out = deliver(&mut bft, Message::Certificate(certify(&b2, &[0, 1, 2])));
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Commit { blocks, .. } if blocks[0].block == b1))
    );
    assert_eq!(bft.root().block.height, 1);
    assert_eq!(bft.round(), Round(3));
}

/// Found by the `consensus_machine` fuzz target: one Byzantine validator's signed vote for round
/// 2^64 - 1 overflowed `Round::next` in every honest validator's `on_vote` (a panic with
/// overflow checks on, a silent wrap to round 0 without). Rounds and heights a peer wrote never
/// reach arithmetic that can overflow: the vote is outside the round window, and a proposal,
/// timeout or commit proof whose round or height is 2^64 - 1 fails verification.
#[test]
fn rounds_and_heights_at_u64_max_from_a_byzantine_validator_do_not_overflow() {
    let s = set(4);
    let byzantine = 3;
    let mut bft = started_at_genesis(0, &s, 10_000);
    let vote = Vote::new(
        Round(u64::MAX),
        u64::MAX,
        BlockId::genesis(),
        ValidatorIndex(byzantine),
        &key(byzantine.into()),
    );
    let message = verify(&s, Message::Vote(vote)).expect("a well-signed vote");
    let commands = bft.update(
        10_000,
        Event::Message {
            from: ValidatorIndex(byzantine),
            message: Unverified::new(message),
        },
    );
    assert!(
        commands.is_empty(),
        "a far-future vote is dropped: {commands:?}"
    );
    assert_eq!(bft.round(), Round(1));

    // A proposal on a QC at height 2^64 - 1, and one whose TC is for round 2^64 - 1.
    let leader = u64::from(s.leader(Round(2)).0);
    let qc_at_max = QuorumCert {
        height: u64::MAX,
        ..QuorumCert::genesis()
    };
    let block = Block {
        qc: qc_at_max,
        ..block_at(2, QuorumCert::genesis(), &s)
    };
    let proposal = Proposal::new(block, None, &key(leader));
    assert!(matches!(
        verify(&s, Message::Proposal(proposal)),
        Err(VerifyError::BadStructure(_))
    ));
    let tc_at_max = TimeoutCert {
        round: Round(u64::MAX),
        high_qc: QuorumCert::genesis(),
        signatures: Vec::new(),
    };
    let block = block_at(2, QuorumCert::genesis(), &s);
    let proposal = Proposal::new(block, Some(tc_at_max.clone()), &key(leader));
    assert!(matches!(
        verify(&s, Message::Proposal(proposal)),
        Err(VerifyError::BadStructure(_))
    ));
    let timeout = Timeout::new(
        Round(5),
        QuorumCert::genesis(),
        Some(tc_at_max),
        ValidatorIndex(byzantine),
        &key(byzantine.into()),
    );
    assert!(matches!(
        verify(&s, Message::Timeout(timeout)),
        Err(VerifyError::BadStructure(_))
    ));

    // A commit proof for a block at height 2^64 - 1.
    let top = Block {
        height: u64::MAX,
        ..Block::genesis()
    };
    let proof = CommitProof {
        child: Block {
            qc: certify(&top, &[0, 1, 2]),
            ..block_at(1, QuorumCert::genesis(), &s)
        },
        child_qc: QuorumCert::genesis(),
    };
    assert!(matches!(
        proof.verify(&top, &s),
        Err(VerifyError::NotFinal(_))
    ));
}

/// The timeout we broadcast among `out`.
fn broadcast_timeout(out: &[Command]) -> Timeout {
    out.iter()
        .find_map(|c| match c {
            Command::Broadcast(Message::Timeout(t)) => Some(t.clone()),
            _ => None,
        })
        .expect("we time out")
}

/// Validator `signer` times out as `ours` did (same round, high QC and TC); `bft` hears it.
fn times_out_too(bft: &mut Bft, ours: &Timeout, signer: u64, now: u64) -> Vec<Command> {
    let from = ValidatorIndex(signer as u16);
    let theirs = Timeout::new(
        ours.round,
        ours.high_qc.clone(),
        ours.last_tc.clone(),
        from,
        &key(signer),
    );
    let message = Unverified::new(Message::Timeout(theirs));
    bft.update(now, Event::Message { from, message })
}

/// Rounds that end in a timeout certificate, one after another, each wait twice as long as the
/// one before (after two at the configured timeout, up to 8x it). Without the back-off, blocks that take longer than the timeout to propose and vote
/// for (a leader proposing the backlog after a stall) time out every round for ever.
#[test]
fn round_timeouts_double_while_rounds_end_without_a_qc() {
    let s = set(4);
    let mut bft = started_at_genesis(0, &s, 0);
    let mut now = 0;
    let mut waits = Vec::new();
    for round in 1..=6 {
        let mut out = bft.update(
            now,
            Event::Timeout {
                round: Round(round),
            },
        );
        let ours = broadcast_timeout(&out);
        // Two others time out as we did: with ours, a quorum, so a TC and the next round.
        for signer in [1, 2] {
            out.extend(times_out_too(&mut bft, &ours, signer, now));
        }
        let next = out
            .iter()
            .find_map(|c| match c {
                Command::ScheduleTimeout { round: r, at_ms } if *r == Round(round + 1) => {
                    Some(*at_ms)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("round {} not entered: {out:?}", round + 1));
        waits.push(next - now);
        now += 10;
    }
    assert_eq!(waits, [1_000, 1_000, 2_000, 4_000, 8_000, 8_000]);
}

/// Validator 0 is at round 2 through the TC of round 1; validator 3, rounds behind (it
/// restarted inside round 1 and missed the TC), times out round 1 again. Validator 0 answers with
/// the TC, and validator 3, fed it, enters round 2 at once rather than waiting for round 2's
/// timeouts.
#[test]
fn a_validator_rounds_behind_gets_the_certificate_that_moved_the_others_on() {
    let s = set(4);
    let mut ahead = started_at_genesis(0, &s, 0);
    let mut out = ahead.update(0, Event::Timeout { round: Round(1) });
    let ours = broadcast_timeout(&out);
    let timeout = |signer: u64| {
        Timeout::new(
            Round(1),
            ours.high_qc.clone(),
            None,
            ValidatorIndex(signer as u16),
            &key(signer),
        )
    };
    for signer in [1, 2] {
        let message = Unverified::new(Message::Timeout(timeout(signer)));
        let from = ValidatorIndex(signer as u16);
        out.extend(ahead.update(0, Event::Message { from, message }));
    }
    assert_eq!(ahead.round(), Round(2));
    let behind = ValidatorIndex(3);
    let answer = ahead.update(
        10,
        Event::Message {
            from: behind,
            message: Unverified::new(Message::Timeout(timeout(3))),
        },
    );
    let tc = answer
        .iter()
        .find_map(|c| match c {
            Command::SendTo(to, Message::TimeoutCertificate(tc)) if *to == behind => {
                Some(tc.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TC for the validator behind: {answer:?}"));
    assert_eq!(tc.round, Round(1));
    // Validator 3 restarted at genesis; the TC moves it to round 2.
    let mut lagging = started_at_genesis(3, &s, 0);
    let message = Unverified::new(Message::TimeoutCertificate(tc));
    lagging.update(
        20,
        Event::Message {
            from: ValidatorIndex(0),
            message,
        },
    );
    assert_eq!(lagging.round(), Round(2));
}

/// Restarted in rounds it voted or timed out in before the stop (its safety state says round
/// 2), a validator can give those rounds only its timeout: it sends it on entering each, and as
/// the leader of one asks for no payload (a second block there would equivocate). Round 3 is
/// new to it and runs as usual.
#[test]
fn a_validator_restarted_in_rounds_it_voted_in_times_them_out_at_once() {
    let s = set(4);
    let me = u64::from(s.leader(Round(1)).0);
    let safety = SafetyState {
        highest_voted_round: Round(2),
        high_qc: QuorumCert::genesis(),
    };
    let config = Config {
        round_timeout_ms: 1_000,
        execution_delay: 3,
    };
    let mut bft = Bft::new(
        config,
        key(me),
        s.clone(),
        CommittedBlock::genesis(),
        safety,
    )
    .unwrap();
    let mut out = bft.update(0, Event::Start);
    for round in 1..=2 {
        let ours = broadcast_timeout(&out);
        assert_eq!(ours.round, Round(round), "{out:?}");
        assert!(
            !out.iter()
                .any(|c| matches!(c, Command::RequestPayload { .. })),
            "no payload asked for in round {round}"
        );
        out.clear();
        for signer in (0..4).filter(|i| *i != me).take(2) {
            out.extend(times_out_too(&mut bft, &ours, signer, 10 * round));
        }
    }
    assert_eq!(bft.round(), Round(3));
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Broadcast(Message::Timeout(t)) if t.round == Round(3))),
        "round 3 waits for its proposal: {out:?}"
    );
}
