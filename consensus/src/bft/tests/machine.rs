//! What the state machine does: votes, finality, timeouts and their back-off, catching up.

use super::*;

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

/// A validator missing the block a QC names asks the QC's signers in turn, one per request, also
/// while its round cannot end. Rotating with the round, the timeouts of a round without a quorum
/// (each bringing the QC again) asked the same signer each time: with two of four validators
/// down, a third stayed two blocks behind the fourth, which held the block (testnet, netns).
#[test]
fn a_missing_block_is_asked_of_each_signer_in_turn_while_the_round_stands_still() {
    let s = set(4);
    let mut behind = started_at_genesis(1, &s, 0);
    let b1 = block_at(1, QuorumCert::genesis(), &s);
    let qc1 = certify(&b1, &[0, 2, 3]);
    let mut asked = Vec::new();
    for (i, now) in (0..6).zip((10..).step_by(1_000)) {
        // Validator 0 alone times out round 2, again and again: no quorum, the round stays.
        let timeout = Timeout::new(Round(2), qc1.clone(), None, ValidatorIndex(0), &key(0));
        let out = behind.update(
            now,
            Event::Message {
                from: ValidatorIndex(0),
                message: Unverified::new(Message::Timeout(timeout)),
            },
        );
        assert_eq!(behind.round(), Round(2), "timeout {i}");
        asked.extend(out.iter().filter_map(|c| match c {
            Command::SendTo(to, Message::BlockRequest(r)) if r.block_id == b1.id() => Some(to.0),
            _ => None,
        }));
    }
    assert_eq!(asked.len(), 6, "one request a timeout: {asked:?}");
    for signer in [0, 2, 3] {
        assert_eq!(
            asked.iter().filter(|to| **to == signer).count(),
            2,
            "each signer asked twice in six requests: {asked:?}"
        );
    }
}
