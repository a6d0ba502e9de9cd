//! What the simulation (`validator/sim`) needs of a driver besides `step`: the start, the inline
//! decoder's results, the hand-off to execution, the next wake-up and read access to its log.
//! A child of `driver` so that the driver's fields stay private to it.

use super::{BUSY_WAIT, Driver, IDLE_WAIT, Input};
use crate::validator::store::ChainLog;

impl Driver {
    /// What `run` does before its loop.
    pub(in crate::validator) fn sim_start(&mut self) {
        self.catch_up();
    }

    /// Feeds the decoded payloads (with the inline decoder, ready once submitted) to consensus
    /// and hands logged blocks to execution; false once execution is gone.
    pub(in crate::validator) fn sim_settle(&mut self) -> bool {
        loop {
            let decoder = self.decoder.as_ref().expect("running");
            let Ok((pending, result)) = decoder.results().try_recv() else {
                break;
            };
            self.step(Some(Input::Decoded(pending, result)));
        }
        self.finality.flush()
    }

    /// When `run` would wake up next with no input.
    pub(in crate::validator) fn sim_wake_ms(&self) -> u64 {
        let now = self.now();
        let wait = if self.finality.behind() {
            BUSY_WAIT
        } else {
            IDLE_WAIT
        };
        self.next_wake_ms(now).min(now + wait.as_millis() as u64)
    }

    pub(in crate::validator) fn sim_log(&self) -> &ChainLog {
        self.finality.log()
    }
}
