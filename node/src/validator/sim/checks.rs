//! What the simulation checks: the violations, and the checks after each step (agreement,
//! monotonic finality, no transaction committed twice) and at the end (liveness, nothing lost).

use super::*;

#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields are read by the failure message (Debug)"
)]
pub(super) enum Violation {
    /// Two validators logged different blocks at `height`.
    Agreement { height: u64 },
    /// A validator's finalized height went down.
    Regressed {
        validator: usize,
        from: u64,
        to: u64,
    },
    /// Two validators committed different blocks or state at `height`.
    StateRoot { height: u64 },
    /// A transaction is in two committed blocks.
    Duplicate { tx: B256, heights: (u64, u64) },
    /// After the faults stopped, a validator did not get to `needed`.
    Liveness {
        validator: usize,
        finalized: u64,
        committed: u64,
        needed: u64,
    },
    /// The driver or a stage panicked, or a restart failed.
    Crashed { validator: usize, what: String },
    /// With no validator ever down (no pool lost), accepted transactions were still not
    /// committed at the end of the liveness window: `lost` of them, `first` the lowest index.
    Lost { lost: usize, first: usize },
}

impl Sim {
    /// Live, and (when no pool was lost) every accepted transaction committed.
    pub(super) fn live_enough(&self) -> bool {
        self.liveness_target.is_some_and(|needed| {
            (self.nodes.iter()).all(|n| n.finalized >= needed && n.committed >= needed)
        }) && !(self.pools_kept() && self.not_included().next().is_some())
    }

    /// No validator went down: every accepted transaction is in some pool or block until
    /// committed, so each must be committed once the faults stop.
    pub(super) fn pools_kept(&self) -> bool {
        self.sc.crashes.is_empty() && self.sc.outage.is_none()
    }

    pub(super) fn not_included(&self) -> impl Iterator<Item = usize> + '_ {
        let hash = |k: usize| keccak256(&self.txs[k]);
        (self.accepted.iter().copied()).filter(move |&k| !self.included.contains_key(&hash(k)))
    }

    /// The transactions committed in block `number` (as `v`'s database holds it): none was
    /// committed before.
    pub(super) fn count_included(&mut self, v: usize, number: u64) -> Result<(), Violation> {
        let p = self.nodes[v].process.as_ref().expect("up");
        let block = p.store.view(|r| r.block(number)).ok().and_then(|r| r.ok());
        let block = block.flatten().expect("a committed block reads back");
        for tx in &block.txs {
            if let Some(first) = self.included.insert(tx.hash(), number) {
                return Err(Violation::Duplicate {
                    tx: tx.hash(),
                    heights: (first, number),
                });
            }
        }
        Ok(())
    }

    /// Agreement and monotonic finality on `v`'s block log; the transactions of newly
    /// finalized blocks are counted once.
    pub(super) fn check_log(&mut self, v: usize) -> Result<(), Violation> {
        let Some(p) = &self.nodes[v].process else {
            return Ok(());
        };
        let log = p.driver.sim_log();
        let (from, to) = (self.nodes[v].finalized, log.height());
        if to < from {
            return Err(Violation::Regressed {
                validator: v,
                from,
                to,
            });
        }
        for height in from + 1..=to {
            let block = log.read(height).expect("a logged block reads back");
            let id = block.block.id();
            match self.canonical.get(&height) {
                Some(known) if *known != id => return Err(Violation::Agreement { height }),
                Some(_) => {}
                None => {
                    self.canonical.insert(height, id);
                    // A transaction of a block whose round ended without a QC goes back to the
                    // pool and may be proposed again; should that block be extended after all,
                    // both are final and execution drops the second copy (`on_abandoned`).
                    let payload = Payload::decode(block.payload).expect("a logged payload");
                    for tx in payload.txs() {
                        if self.ordered.insert(tx.hash(), height).is_some() {
                            self.outcome.ordered_twice += 1;
                        }
                    }
                }
            }
        }
        self.nodes[v].finalized = to;
        Ok(())
    }
}

pub(super) fn panicked(validator: usize, e: Box<dyn std::any::Any + Send>) -> Violation {
    let what = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    Violation::Crashed { validator, what }
}
