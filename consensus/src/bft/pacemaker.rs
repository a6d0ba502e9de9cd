//! The pacemaker: entering rounds, round timeouts with back-off, timeouts and their
//! certificates, and helping a validator that is rounds behind.

use super::{Bft, Command, ROUNDS_AHEAD_MAX, m};
use crate::Round;
use crate::bft::{
    Message, QuorumCert, SafetyState, Timeout, TimeoutCert, TimeoutSig, ValidatorIndex,
};

/// Rounds in a row without a QC, beyond [`TIMEOUT_GRACE_ROUNDS`], double the round timeout, up to
/// this many times: a chain whose blocks take longer to propose, check, persist and vote for
/// than the timeout (a leader after a stall proposes the whole backlog) would otherwise time out
/// every round for ever.
const TIMEOUT_DOUBLINGS_MAX: u64 = 3;
/// Rounds without a QC before the back-off starts: a crashed validator costs two such rounds per
/// turn of the leader rotation (its own and the one whose votes go to it), which a longer
/// timeout would not help.
const TIMEOUT_GRACE_ROUNDS: u64 = 2;
/// The longest a round waits, as a multiple of the configured timeout.
pub const ROUND_TIMEOUT_MAX_FACTOR: u64 = 1 << TIMEOUT_DOUBLINGS_MAX;

#[derive(Debug)]
pub(super) struct RoundTimeouts {
    pub(super) sigs: Vec<TimeoutSig>,
    pub(super) stake: u64,
    pub(super) high_qc: QuorumCert,
    pub(super) done: bool,
}

impl Bft {
    /// The current round's timeout: the configured one while rounds get QCs, doubled for each
    /// further round without one (exponential back-off, as in HotStuff's and DiemBFT's
    /// pacemakers), so that slow rounds eventually last long enough to finish.
    pub(super) fn round_timeout_ms(&self) -> u64 {
        let without_qc = self.round.0.saturating_sub(self.high_qc.round.0 + 1);
        let doublings = without_qc.saturating_sub(TIMEOUT_GRACE_ROUNDS);
        self.config.round_timeout_ms << doublings.min(TIMEOUT_DOUBLINGS_MAX)
    }

    pub(super) fn enter_round(&mut self, now: u64, out: &mut Vec<Command>) {
        metrics::gauge!(m::ROUND).set(self.round.0 as f64);
        out.push(Command::ScheduleTimeout {
            round: self.round,
            at_ms: now + self.round_timeout_ms(),
        });
        if self.round <= self.safety.highest_voted_round {
            // Restarted in a round we voted or timed out in before the stop: we may neither
            // vote nor propose here again, so our timeout is all we can give the round, and it
            // goes now. After an outage of every validator, each such round otherwise cost the
            // whole network a round timeout, backed off (simulation seed 5,902: 18 s).
            self.on_local_timeout(now, self.round, out);
            return;
        }
        if !self.halted && self.validators.leader(self.round) == self.me {
            out.push(Command::RequestPayload {
                round: self.round,
                height: self.high_qc.height + 1,
                parent: self.high_qc.block_id,
            });
        }
    }

    pub(super) fn advance(
        &mut self,
        now: u64,
        round: Round,
        tc: Option<TimeoutCert>,
        out: &mut Vec<Command>,
    ) {
        if round <= self.round {
            return;
        }
        self.round = round;
        self.last_tc = tc;
        self.votes.retain(|r, _| r.0.saturating_add(1) >= round.0);
        self.timeouts.retain(|r, _| *r >= round);
        self.enter_round(now, out);
    }

    pub(super) fn process_tc(&mut self, now: u64, tc: &TimeoutCert, out: &mut Vec<Command>) {
        self.process_qc(now, &tc.high_qc, out);
        if tc.round >= self.round {
            self.advance(now, tc.round.next(), Some(tc.clone()), out);
        }
    }

    pub(super) fn on_timeout(&mut self, now: u64, t: Timeout, out: &mut Vec<Command>) {
        if t.round < self.round && t.signer != self.me {
            self.help_catch_up(t.signer, out);
        }
        self.process_qc(now, &t.high_qc, out);
        if let Some(tc) = &t.last_tc {
            self.process_tc(now, tc, out);
        }
        if t.round < self.round || t.round.0 > self.round.0.saturating_add(ROUNDS_AHEAD_MAX) {
            return;
        }
        let quorum = self.validators.quorum_stake();
        let stake = self.validators.stake(t.signer);
        let rt = self
            .timeouts
            .entry(t.round)
            .or_insert_with(|| RoundTimeouts {
                sigs: Vec::new(),
                stake: 0,
                high_qc: t.high_qc.clone(),
                done: false,
            });
        if rt.done || rt.sigs.iter().any(|s| s.signer == t.signer) {
            return;
        }
        rt.sigs.push(TimeoutSig {
            signer: t.signer,
            high_qc_round: t.high_qc.round,
            signature: t.signature,
        });
        rt.stake += stake;
        if t.high_qc.round > rt.high_qc.round {
            rt.high_qc = t.high_qc;
        }
        if rt.stake < quorum {
            // f+1 timeouts include an honest one: the round is lost, so join now rather than
            // wait out our own timer (Bracha-style; it keeps validators that entered the round
            // late from costing everyone a second timeout).
            let joined = rt.sigs.iter().any(|s| s.signer == self.me);
            if !joined && t.round == self.round && rt.stake >= self.validators.validity_stake() {
                self.on_local_timeout(now, t.round, out);
            }
            return;
        }
        rt.done = true;
        let mut signatures = rt.sigs.clone();
        signatures.sort_by_key(|s| s.signer);
        let tc = TimeoutCert {
            round: t.round,
            high_qc: rt.high_qc.clone(),
            signatures,
        };
        metrics::counter!(m::TCS).increment(1);
        self.process_tc(now, &tc, out);
    }

    /// `behind` timed out a round before ours: the certificate that moved us into our round
    /// (the previous round's TC, or the QC our round follows) goes to it. It re-sends its
    /// timeout until its round ends, so one answer a timeout is enough.
    pub(super) fn help_catch_up(&self, behind: ValidatorIndex, out: &mut Vec<Command>) {
        let message = match &self.last_tc {
            Some(tc) if tc.round.next() == self.round => Message::TimeoutCertificate(tc.clone()),
            _ if self.high_qc.round.next() == self.round => {
                Message::Certificate(self.high_qc.clone())
            }
            _ => return,
        };
        out.push(Command::SendTo(behind, message));
    }

    pub(super) fn on_local_timeout(&mut self, now: u64, round: Round, out: &mut Vec<Command>) {
        if round != self.round || self.halted {
            return;
        }
        if self.safety.highest_voted_round < round {
            metrics::counter!(m::TIMEOUTS).increment(1);
            if self.proposal_seen < round {
                metrics::counter!(m::LEADER_FAILURES).increment(1);
            }
        }
        // Timing out counts as voting: no vote in this round afterwards.
        self.safety = SafetyState {
            highest_voted_round: self.safety.highest_voted_round.max(round),
            high_qc: self.high_qc.clone(),
        };
        out.push(Command::PersistSafety(self.safety.clone()));
        let last_tc = self.last_tc.clone().filter(|tc| tc.round.next() == round);
        let t = Timeout::new(round, self.high_qc.clone(), last_tc, self.me, &self.key);
        out.push(Command::Broadcast(Message::Timeout(t.clone())));
        // Keep re-sending until the round ends: a partition may have eaten this one.
        out.push(Command::ScheduleTimeout {
            round,
            at_ms: now + self.round_timeout_ms(),
        });
        self.on_timeout(now, t, out);
    }
}
