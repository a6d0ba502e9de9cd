//! Watching the current round: when it began, and whether it cannot succeed because its leader
//! (who proposes) or the next leader (who collects the votes) is not connected to us. Then the
//! driver times it out after a block time instead of the full round timeout: a crashed validator
//! costs its two rounds a few block times per turn, not two round timeouts. Timing out early is
//! always safe (it only gives up our vote in this round); a TC needs a quorum doing the same.

use kestrel_consensus::{
    Round,
    bft::{ValidatorIndex, ValidatorSet},
};
use kestrel_net::PeerId;
use std::collections::BTreeSet;

/// How often a round's leaders' connections are checked once the round is a block time old.
const REACHABLE_CHECK_MS: u64 = 50;

#[derive(Default)]
pub struct RoundWatch {
    /// The current round and when this driver first saw it.
    since: (Round, u64),
    /// Last check of the current round's leaders' connections.
    checked_ms: u64,
    /// The last round timed out early.
    skipped: Round,
}

impl RoundWatch {
    /// True when `round` is new since the last call.
    pub fn entered(&mut self, round: Round, now: u64) -> bool {
        if self.since.0 == round {
            return false;
        }
        self.since = (round, now);
        true
    }

    /// Whether to time `round` out now. `connected` is asked only when a check is due.
    #[allow(clippy::too_many_arguments)]
    pub fn cut_short(
        &mut self,
        now: u64,
        round: Round,
        block_time_ms: u64,
        set: &ValidatorSet,
        me: ValidatorIndex,
        ids: &[PeerId],
        connected: impl FnOnce() -> BTreeSet<PeerId>,
    ) -> bool {
        if self.skipped == round
            || now < self.since.1 + block_time_ms
            || now < self.checked_ms + REACHABLE_CHECK_MS
        {
            return false;
        }
        self.checked_ms = now;
        let connected = connected();
        let unreachable = [round, round.next()].into_iter().any(|r| {
            let leader = set.leader(r);
            leader != me && !connected.contains(&ids[usize::from(leader.0)])
        });
        if unreachable {
            self.skipped = round;
        }
        unreachable
    }
}
