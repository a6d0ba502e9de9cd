//! The transactions in proposed blocks that have not committed yet, and what each sender's of
//! them may still cost: the reserve that ordering holds back from the sender's balance.
//!
//! The reserve is kept as transactions enter and leave flight. Summed afresh at every proposal
//! it walked every transaction in flight (three to four blocks' worth under load) and filled a
//! map of every sender: a quarter of `take_block` (`kestrel-bench pool`).

use super::max_cost;
use alloy_primitives::{
    Address, B256, U256, U512,
    map::{Entry, HashMap},
};
use kestrel_types::{BlockNumber, RecoveredTx};

#[derive(Debug)]
pub(super) struct InFlight {
    /// The highest block proposed with it, or the block that finalized it.
    pub(super) number: BlockNumber,
    tx: RecoveredTx,
    pub(super) finalized: bool,
}

impl InFlight {
    pub(super) fn new(number: BlockNumber, tx: RecoveredTx, finalized: bool) -> Self {
        Self {
            number,
            tx,
            finalized,
        }
    }

    /// Fixed while in flight: the reserve counts its cost.
    pub(super) fn tx(&self) -> &RecoveredTx {
        &self.tx
    }

    pub(super) fn into_tx(self) -> RecoveredTx {
        self.tx
    }
}

#[derive(Debug, Default)]
pub(super) struct InFlightTxs {
    txs: HashMap<B256, InFlight>,
    /// Per sender with transactions in flight, their count and maximum costs.
    reserved: HashMap<Address, Reserve>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Reserve {
    txs: usize,
    /// Wider than a balance so that adding and removing are exact (costs are not bounded by any
    /// balance: a leader's proposal may carry anything).
    cost: U512,
}

impl Reserve {
    fn add(&mut self, tx: &RecoveredTx) {
        self.txs += 1;
        self.cost += U512::from(max_cost(tx.tx()));
    }
}

impl InFlightTxs {
    pub(super) fn get(&self, hash: &B256) -> Option<&InFlight> {
        self.txs.get(hash)
    }

    pub(super) fn contains_key(&self, hash: &B256) -> bool {
        self.txs.contains_key(hash)
    }

    #[cfg(any(test, debug_assertions))]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&B256, &InFlight)> {
        self.txs.iter()
    }

    /// The entry of `hash`, put in flight by `new` if it was not (then true).
    pub(super) fn get_or_insert(
        &mut self,
        hash: B256,
        new: impl FnOnce() -> InFlight,
    ) -> (&mut InFlight, bool) {
        let mut inserted = false;
        let entry = self.txs.entry(hash).or_insert_with(|| {
            let f = new();
            self.reserved.entry(f.tx.sender()).or_default().add(&f.tx);
            inserted = true;
            f
        });
        (entry, inserted)
    }

    /// Puts `f` in flight; its hash was not.
    pub(super) fn insert(&mut self, hash: B256, f: InFlight) {
        self.reserved.entry(f.tx.sender()).or_default().add(&f.tx);
        let old = self.txs.insert(hash, f);
        assert!(old.is_none(), "{hash} was in flight already");
    }

    pub(super) fn remove(&mut self, hash: &B256) -> Option<InFlight> {
        self.remove_if(hash, |_| true)
    }

    /// Removes the entry of `hash` if `leaves` says so (one lookup for both).
    pub(super) fn remove_if(
        &mut self,
        hash: &B256,
        leaves: impl FnOnce(&InFlight) -> bool,
    ) -> Option<InFlight> {
        let Entry::Occupied(entry) = self.txs.entry(*hash) else {
            return None;
        };
        if !leaves(entry.get()) {
            return None;
        }
        let f = entry.remove();
        let sender = f.tx.sender();
        let reserve = self.reserved.get_mut(&sender).expect("sender in flight");
        reserve.txs -= 1;
        reserve.cost -= U512::from(max_cost(f.tx.tx()));
        if reserve.txs == 0 {
            self.reserved.remove(&sender);
        }
        Some(f)
    }

    /// The maximum cost of `sender`'s transactions in flight: what blocks not yet executed may
    /// still take from its balance (past `U256::MAX` it reads as that).
    pub(super) fn reserved(&self, sender: Address) -> U256 {
        self.reserved
            .get(&sender)
            .map_or(U256::ZERO, |r| U256::saturating_from(r.cost))
    }

    /// Panics unless every reserve is the sum of its sender's costs in flight.
    #[cfg(any(test, debug_assertions))]
    pub(super) fn assert_invariants(&self) {
        let mut summed: HashMap<Address, Reserve> = HashMap::default();
        for f in self.txs.values() {
            summed.entry(f.tx.sender()).or_default().add(&f.tx);
        }
        assert_eq!(
            summed, self.reserved,
            "reserves out of step with the txs in flight"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy_primitives::{Signature, TxKind};

    fn tx(nonce: u64, value: U256) -> RecoveredTx {
        let tx = TxEip1559 {
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: 10,
            to: TxKind::Call(Address::with_last_byte(1)),
            value,
            ..Default::default()
        };
        let sig = Signature::new(U256::from(1), U256::from(1), false);
        RecoveredTx::new_unchecked(
            TxEnvelope::Eip1559(tx.into_signed(sig)),
            Address::with_last_byte(7),
        )
    }

    #[test]
    fn reserves_past_a_balance_read_as_the_most_and_come_back_exactly() {
        let sender = Address::with_last_byte(7);
        let (small, huge) = (tx(0, U256::from(5)), tx(1, U256::MAX - U256::from(1)));
        let mut in_flight = InFlightTxs::default();
        in_flight.insert(small.hash(), InFlight::new(1, small.clone(), false));
        assert_eq!(in_flight.reserved(sender), max_cost(small.tx()));
        let (_, inserted) =
            in_flight.get_or_insert(huge.hash(), || InFlight::new(2, huge.clone(), false));
        assert!(inserted);
        assert_eq!(
            in_flight.reserved(sender),
            U256::MAX,
            "saturates, not wraps"
        );
        in_flight.assert_invariants();
        assert!(in_flight.remove(&huge.hash()).is_some());
        assert_eq!(
            in_flight.reserved(sender),
            max_cost(small.tx()),
            "exact after"
        );
        assert!(in_flight.remove(&small.hash()).is_some());
        assert_eq!(in_flight.reserved(sender), U256::ZERO);
        assert!(in_flight.reserved.is_empty(), "no sender left behind");
        in_flight.assert_invariants();
    }
}
