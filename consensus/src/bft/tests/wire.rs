//! Wire round trips, malformed input, and what verification rejects.

use super::*;
use crate::error::DecodeError;
use kestrel_types::ExecutionResult;
use proptest::prelude::*;

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
