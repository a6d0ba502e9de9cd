//! The pool's state behind its lock: per-sender queues, the transactions in flight and the
//! indexes over them; admission (`insert`) and ordering (`take_block`) on it, and the invariants
//! that tie the indexes together.

use super::in_flight::{InFlight, InFlightTxs};
use super::{
    ADMITTED_HASHES_MAX, BalanceOf, BlockRules, EVICTED, FRESH_TXS_MAX, PoolConfig, PoolError,
    REPLACE_BUMP_PERCENT, REPLACED, RETURNED, UNPAYABLE, check_static, max_cost,
};

const EVICTED_POOL_FULL: &str = "pool_full";
const EVICTED_SENDER_FULL: &str = "sender_full";
use alloy_consensus::Transaction;
use alloy_primitives::{
    Address, B256, U256,
    map::{HashMap, HashSet},
};
use kestrel_types::{BlockNumber, RecoveredTx};
use std::{
    collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque},
    time::Instant,
};

#[derive(Debug)]
pub(super) struct Pooled {
    pub(super) tx: RecoveredTx,
    pub(super) admitted_at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct SenderQueue {
    /// The next nonce ordering will take from this sender.
    pub(super) next_nonce: u64,
    pub(super) txs: BTreeMap<u64, Pooled>,
    /// Highest proposed block holding one of this sender's transactions, until it commits.
    pub(super) in_flight_until: Option<BlockNumber>,
    /// The nonce after this sender's last finalized transaction, until its blocks commit: a
    /// transaction coming back below it waits for the commit without moving the next nonce.
    pub(super) finalized_next: u64,
    /// `pending_len()` as last added to `Inner::pending` (`Inner::recount`).
    pub(super) counted_pending: usize,
}

impl SenderQueue {
    /// The nonce after the pending run: the one that fills the sender's gap.
    pub(super) fn pending_end(&self) -> u64 {
        let mut n = self.next_nonce;
        while self.txs.contains_key(&n) {
            n += 1;
        }
        n
    }

    pub(super) fn pending_len(&self) -> usize {
        (self.pending_end() - self.next_nonce) as usize
    }

    /// The highest queued nonce, if any transaction waits behind a gap, or below the next
    /// nonce (another leader proposed a later nonce over a gap; the commit sorts it out).
    pub(super) fn highest_queued(&self) -> Option<u64> {
        let (&last, _) = self.txs.last_key_value()?;
        if last > self.pending_end() {
            return Some(last);
        }
        self.txs
            .range(..self.next_nonce)
            .next_back()
            .map(|(n, _)| *n)
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) config: PoolConfig,
    pub(super) by_hash: HashMap<B256, Address>,
    pub(super) senders: HashMap<Address, SenderQueue>,
    /// Transactions in a proposal, until that block commits (so RPC can still find them) or
    /// loses (then they come back).
    pub(super) in_flight: InFlightTxs,
    /// Every (hash, sender) marked in flight, under the block it was marked for, until that
    /// block commits: lets commits and finality visit only the blocks in flight, not the pool.
    /// Entries may be stale (the transaction moved to a later block or left); readers check.
    pub(super) by_block: BTreeMap<BlockNumber, Vec<(B256, Address)>>,
    /// The blocks of `by_block` that may list a transaction in flight in no final block: the
    /// only ones finality looks at for proposals that lost, where it walked every block in
    /// flight (four blocks' transactions at every finalization under load).
    pub(super) unfinalized: BTreeSet<BlockNumber>,
    /// Admitted since the last `take_fresh`, oldest first: sender, nonce, hash.
    pub(super) fresh: VecDeque<(Address, u64, B256)>,
    /// The latest admitted hashes, oldest first, and how many were admitted before the first.
    pub(super) admitted: VecDeque<B256>,
    pub(super) admitted_before: u64,
    /// When queued transactions are next looked at for expiry.
    pub(super) expiry_due: Option<Instant>,
    /// The pending transactions of all senders (each sender's `counted_pending`): kept as
    /// queues change so that `TxPool::size` does not walk every sender under the lock (a walk
    /// of 100,000 senders took milliseconds, four times a second, blocking admission).
    pub(super) pending: usize,
    /// The senders with a pending transaction (one at their next nonce), kept with `pending`:
    /// ordering starts from these, not from every sender tracked (most are only in flight).
    pub(super) ready: HashSet<Address>,
}

impl Inner {
    /// Brings `pending` up to date with `sender`'s queue. Called after every change to a
    /// queue's transactions or next nonce; calling it again changes nothing, and a missed call
    /// fails `assert_invariants`.
    pub(super) fn recount(&mut self, sender: Address) {
        if let Some(q) = self.senders.get_mut(&sender) {
            let now = q.pending_len();
            self.pending = self.pending + now - q.counted_pending;
            q.counted_pending = now;
            if now > 0 {
                self.ready.insert(sender);
            } else {
                self.ready.remove(&sender);
            }
        }
    }

    pub(super) fn remove_tx(&mut self, sender: Address, nonce: u64) -> Option<RecoveredTx> {
        let queue = self.senders.get_mut(&sender)?;
        let tx = queue.txs.remove(&nonce)?.tx;
        self.by_hash.remove(&tx.hash());
        self.recount(sender);
        self.forget_if_idle(sender);
        Some(tx)
    }

    /// A sender with nothing pooled and nothing in flight is not tracked.
    pub(super) fn forget_if_idle(&mut self, sender: Address) {
        if self
            .senders
            .get(&sender)
            .is_some_and(|q| q.txs.is_empty() && q.in_flight_until.is_none())
        {
            let q = self.senders.remove(&sender).expect("checked above");
            self.pending -= q.counted_pending;
            self.ready.remove(&sender);
        }
    }

    /// `tx` is in a proposal for block `number` (`finalized`: a final one): it leaves the queue,
    /// and its sender's next nonce moves past it.
    pub(super) fn mark_in_flight(
        &mut self,
        number: BlockNumber,
        tx: &RecoveredTx,
        finalized: bool,
    ) {
        let (sender, nonce, hash) = (tx.sender(), tx.nonce(), tx.hash());
        let queue = self.senders.entry(sender).or_default();
        queue.next_nonce = queue.next_nonce.max(nonce + 1);
        queue.in_flight_until = Some(queue.in_flight_until.map_or(number, |n| n.max(number)));
        if finalized {
            queue.finalized_next = queue.finalized_next.max(nonce + 1);
            // Its nonce is this transaction's now (a pooled one there is a copy or was replaced).
            // Lower pooled nonces stay until the commit: a leader may have proposed this one
            // without them (while they were in flight in a proposal that lost), and then
            // execution drops it and they are still needed.
            self.remove_tx(sender, nonce);
        } else if self.senders[&sender]
            .txs
            .get(&nonce)
            .is_some_and(|t| t.tx.hash() == hash)
        {
            self.remove_tx(sender, nonce);
        }
        let (entry, inserted) = self
            .in_flight
            .get_or_insert(hash, || InFlight::new(number, tx.clone(), finalized));
        let listed_under = (!inserted).then_some(entry.number);
        if finalized {
            (entry.number, entry.finalized) = (number, true);
        } else if !entry.finalized {
            entry.number = entry.number.max(number);
        }
        // Listed once under the block it is in flight for: a leader's own block, taken and then
        // finalized, was listed when taken (a second entry doubled the commit's work).
        if listed_under != Some(entry.number) {
            let (number, finalized) = (entry.number, entry.finalized);
            self.list(number, hash, sender, finalized);
        }
        self.recount(sender);
    }

    /// Lists a transaction in flight under block `number` (`finalized`: in that final block).
    fn list(&mut self, number: BlockNumber, hash: B256, sender: Address, finalized: bool) {
        self.by_block
            .entry(number)
            .or_default()
            .push((hash, sender));
        if !finalized {
            self.unfinalized.insert(number);
        }
    }

    /// A transaction that left for a block and did not make it into the chain (its proposal
    /// was abandoned or lost, or execution dropped it) goes back to its sender's queue, unless
    /// a newer transaction took its nonce, or the pool or the sender is full: the reason it
    /// leaves is counted. Below its sender's finalized nonce it does not move the next nonce
    /// back: it waits for the commit of that block to tell whether the nonce executed (then it
    /// goes as stale) or execution dropped the finalized transaction (then it is proposed again).
    pub(super) fn put_back(&mut self, tx: RecoveredTx, reason: &'static str) {
        let (sender, nonce, hash) = (tx.sender(), tx.nonce(), tx.hash());
        let full = self.by_hash.len() >= self.config.txs_max;
        let sender_max = self.config.sender_txs_max;
        let queue = self.senders.entry(sender).or_default();
        if queue.txs.contains_key(&nonce) {
            // A newer transaction took its nonce while this one was away: it stands for it.
            metrics::counter!(REPLACED).increment(1);
            self.forget_if_idle(sender);
            return;
        }
        let evicted = if full {
            Some(EVICTED_POOL_FULL)
        } else if queue.txs.len() >= sender_max {
            Some(EVICTED_SENDER_FULL)
        } else {
            None
        };
        if let Some(evicted) = evicted {
            tracing::debug!(target: "pipeline::mempool", %sender, nonce, evicted, "not put back");
            metrics::counter!(EVICTED, "reason" => evicted).increment(1);
            self.forget_if_idle(sender);
            return;
        }
        if nonce >= queue.finalized_next {
            queue.next_nonce = queue.next_nonce.min(nonce);
        }
        queue.txs.insert(
            nonce,
            Pooled {
                tx,
                admitted_at: Instant::now(),
            },
        );
        self.by_hash.insert(hash, sender);
        self.recount(sender);
        metrics::counter!(RETURNED, "reason" => reason).increment(1);
    }

    /// An admission: listed for subscribers and, if our clients sent it (`fresh`), for
    /// forwarding to the next leaders.
    pub(super) fn remember_admitted(
        &mut self,
        sender: Address,
        nonce: u64,
        hash: B256,
        fresh: bool,
    ) {
        if fresh {
            if self.fresh.len() >= FRESH_TXS_MAX {
                self.fresh.pop_front();
            }
            self.fresh.push_back((sender, nonce, hash));
        }
        if self.admitted.len() >= ADMITTED_HASHES_MAX {
            self.admitted.pop_front();
            self.admitted_before += 1;
        }
        self.admitted.push_back(hash);
    }

    /// Makes room for one transaction when full: the highest queued nonce of the sender with
    /// the most queued transactions goes. False if nothing is queued.
    pub(super) fn evict_one(&mut self) -> bool {
        let victim = self
            .senders
            .iter()
            .map(|(addr, q)| (q.txs.len() - q.pending_len(), *addr))
            .filter(|(queued, _)| *queued > 0)
            .max();
        let Some((_, sender)) = victim else {
            return false;
        };
        let nonce = self.senders[&sender]
            .highest_queued()
            .expect("queued tx exists");
        self.remove_tx(sender, nonce);
        metrics::counter!(EVICTED, "reason" => EVICTED_POOL_FULL).increment(1);
        true
    }

    /// Panics if the pool's indexes disagree (reth's `TxPool::assert_invariants`). Walks the
    /// whole pool: run after every mutation in debug builds and by the tests.
    #[cfg(any(test, debug_assertions))]
    pub(super) fn assert_invariants(&self) {
        let mut pooled = 0;
        for (sender, q) in &self.senders {
            assert!(
                !q.txs.is_empty() || q.in_flight_until.is_some(),
                "idle empty queue of {sender}"
            );
            assert!(
                q.txs.len() <= self.config.sender_txs_max,
                "sender over its limit"
            );
            for (nonce, p) in &q.txs {
                assert_eq!(
                    (p.tx.sender(), p.tx.nonce()),
                    (*sender, *nonce),
                    "misfiled tx"
                );
                // Below the next nonce only while blocks are in flight: another leader may
                // propose a later nonce over a gap, and the commit resets the next nonce.
                assert!(
                    *nonce >= q.next_nonce || q.in_flight_until.is_some(),
                    "pooled tx below the next nonce"
                );
                assert_eq!(self.by_hash.get(&p.tx.hash()), Some(sender), "unindexed tx");
                assert!(
                    !self.in_flight.contains_key(&p.tx.hash()),
                    "pooled and in flight"
                );
            }
            pooled += q.txs.len();
            assert_eq!(
                q.counted_pending,
                q.pending_len(),
                "uncounted change of {sender}"
            );
        }
        assert_eq!(self.by_hash.len(), pooled, "stale hash index");
        let pending: usize = self.senders.values().map(|q| q.counted_pending).sum();
        assert_eq!(self.pending, pending, "pending count");
        let ready: HashSet<Address> = self
            .senders
            .iter()
            .filter(|(_, q)| q.txs.contains_key(&q.next_nonce))
            .map(|(sender, _)| *sender)
            .collect();
        assert_eq!(self.ready, ready, "ready senders");
        assert!(pooled <= self.config.txs_max, "pool over its limit");
        let marked: std::collections::HashSet<(BlockNumber, B256)> = self
            .by_block
            .iter()
            .flat_map(|(number, txs)| txs.iter().map(|(hash, _)| (*number, *hash)))
            .collect();
        self.in_flight.assert_invariants();
        for (hash, f) in self.in_flight.iter() {
            let q = self.senders.get(&f.tx().sender());
            assert!(
                q.is_some_and(|q| q.in_flight_until.is_some()),
                "in-flight {hash} of an untracked sender"
            );
            assert!(
                f.finalized || self.unfinalized.contains(&f.number),
                "in-flight {hash} of no final block, in a block finality skips"
            );
            assert!(
                marked.contains(&(f.number, *hash)),
                "in-flight {hash} not listed under its block {}",
                f.number
            );
        }
        for (sender, q) in &self.senders {
            // While blocks are in flight nothing resets the next nonce below what was finalized
            // (a commit may, when execution dropped a finalized transaction).
            assert!(
                q.in_flight_until.is_none() || q.next_nonce >= q.finalized_next,
                "next nonce of {sender} behind its finalized nonce"
            );
        }
    }

    #[cfg(debug_assertions)]
    pub(super) fn debug_check(&self) {
        self.assert_invariants();
    }

    #[cfg(not(debug_assertions))]
    pub(super) fn debug_check(&self) {}
}

impl Inner {
    /// Admits `tx` (`state_nonce`: its sender's nonce in the latest state; `fresh`: our
    /// clients sent it, so it is to be forwarded) or says why not.
    pub(super) fn insert(
        &mut self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
        fresh: bool,
    ) -> Result<B256, PoolError> {
        let sender = tx.sender();
        let result = self.admit(tx, state_nonce, now, fresh);
        // The next nonce may have moved even when `tx` was refused.
        self.recount(sender);
        result
    }

    fn admit(
        &mut self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
        fresh: bool,
    ) -> Result<B256, PoolError> {
        let (hash, sender, nonce) = (tx.hash(), tx.sender(), tx.nonce());
        if self.by_hash.contains_key(&hash) {
            return Err(PoolError::AlreadyKnown);
        }
        let sender_max = self.config.sender_txs_max;
        let queue = self.senders.entry(sender).or_default();
        if queue.in_flight_until.is_none() {
            queue.next_nonce = queue.next_nonce.max(state_nonce);
        }
        let pooled = Pooled {
            tx,
            admitted_at: now,
        };
        if nonce < queue.next_nonce {
            return Err(PoolError::NonceTooLow);
        }
        // In flight above the next nonce (an earlier proposal was abandoned): a copy pooled
        // again would be proposed twice.
        if self.in_flight.contains_key(&hash) {
            return Err(PoolError::AlreadyKnown);
        }
        let next_nonce = queue.next_nonce;
        if let Some(old) = queue.txs.get(&nonce) {
            if !is_sufficient_bump(&old.tx, &pooled.tx) {
                return Err(PoolError::ReplacementUnderpriced);
            }
            let old_hash = old.tx.hash();
            queue.txs.insert(nonce, pooled);
            self.by_hash.remove(&old_hash);
            self.by_hash.insert(hash, sender);
            self.remember_admitted(sender, nonce, hash, fresh);
            metrics::counter!(REPLACED).increment(1);
            return Ok(hash);
        }
        if queue.txs.len() >= sender_max {
            // The sender's next nonce always gets in: it is what lets the sender's transactions
            // execute, and the ones it displaces are the furthest from executing.
            let victim = queue
                .highest_queued()
                .filter(|_| nonce == queue.pending_end());
            let Some(victim) = victim else {
                return Err(PoolError::SenderLimit);
            };
            self.remove_tx(sender, victim);
            metrics::counter!(EVICTED, "reason" => "gap_fill").increment(1);
        }
        if self.by_hash.len() >= self.config.txs_max && !self.evict_one() {
            return Err(PoolError::PoolFull);
        }
        // Evictions may have dropped the sender's queue: it comes back at the same next nonce.
        let queue = self.senders.entry(sender).or_default();
        queue.next_nonce = queue.next_nonce.max(next_nonce);
        queue.txs.insert(nonce, pooled);
        self.by_hash.insert(hash, sender);
        self.remember_admitted(sender, nonce, hash, fresh);
        metrics::counter!("kestrel_mempool_admitted_total").increment(1);
        Ok(hash)
    }

    pub(super) fn take_block(
        &mut self,
        number: BlockNumber,
        rules: &BlockRules,
        max_txs: usize,
        balance_of: BalanceOf<'_>,
    ) -> Vec<RecoveredTx> {
        // Read once per sender per block.
        let mut balances: HashMap<Address, U256> =
            HashMap::with_capacity_and_hasher(self.ready.len(), Default::default());
        // Heap of each sender's next executable transaction, by tip then arrival of the sender.
        // A fee cap below the base fee leaves a sender out here (it may fit a later block), so
        // the static check below never refuses a transaction for that.
        let mut heads: BinaryHeap<(u128, std::cmp::Reverse<u64>, Address)> = self
            .ready
            .iter()
            .filter_map(|addr| {
                let q = &self.senders[addr];
                let p = q.txs.get(&q.next_nonce)?;
                Some((
                    tip(&p.tx, rules.base_fee)?,
                    std::cmp::Reverse(q.next_nonce),
                    *addr,
                ))
            })
            .collect();
        let mut taken = Vec::new();
        let mut gas_left = rules.gas_limit;
        while let Some((_, _, sender)) = heads.pop() {
            if taken.len() >= max_txs {
                break;
            }
            let queue = self.senders.get_mut(&sender).expect("sender in heap");
            let nonce = queue.next_nonce;
            let tx = &queue.txs[&nonce].tx;
            if let Err(err) = check_static(tx.tx(), rules) {
                // Admitted under other rules (a fork, gas limit or bug since): never valid again
                // here. Its sender's later nonces wait behind the gap until they expire.
                tracing::debug!(target: "pipeline::mempool", %sender, nonce, %err, "statically invalid at block building");
                metrics::counter!("kestrel_ordering_invalid_txs_total").increment(1);
                self.remove_tx(sender, nonce);
                continue;
            }
            if tx.gas_limit() > gas_left {
                continue;
            }
            let cost = max_cost(tx.tx());
            let balance = *balances.entry(sender).or_insert_with(|| balance_of(sender));
            let reserve = self.in_flight.reserved(sender);
            if reserve.saturating_add(cost) > balance {
                // Execution might not be able to charge it. With the sender's blocks in flight
                // it waits for them to execute (their actual cost is often below the maximum);
                // with none, the balance is final for it and it goes, as geth drops
                // transactions their sender can no longer pay.
                let action = if reserve.is_zero() {
                    self.remove_tx(sender, nonce);
                    "dropped"
                } else {
                    "waits"
                };
                metrics::counter!(UNPAYABLE, "action" => action).increment(1);
                continue;
            }
            gas_left -= tx.gas_limit();
            queue.next_nonce += 1;
            queue.in_flight_until = Some(queue.in_flight_until.map_or(number, |n| n.max(number)));
            if let Some(next) = queue.txs.get(&queue.next_nonce)
                && let Some(t) = tip(&next.tx, rules.base_fee)
            {
                heads.push((t, std::cmp::Reverse(queue.next_nonce), sender));
            }
            let tx = queue.txs.remove(&nonce).expect("head tx exists").tx;
            self.by_hash.remove(&tx.hash());
            self.recount(sender);
            self.list(number, tx.hash(), sender, false);
            self.in_flight
                .insert(tx.hash(), InFlight::new(number, tx.clone(), false));
            taken.push(tx);
        }
        taken
    }
}

/// The effective tip of `tx` at `base_fee`, or `None` if its fee cap is below the base fee.
fn tip(tx: &RecoveredTx, base_fee: u64) -> Option<u128> {
    tx.tx().effective_tip_per_gas(base_fee)
}

fn is_sufficient_bump(old: &RecoveredTx, new: &RecoveredTx) -> bool {
    let bumped = |old: u128, new: u128| new * 100 >= old * (100 + REPLACE_BUMP_PERCENT);
    let old_tip = old
        .tx()
        .max_priority_fee_per_gas()
        .unwrap_or(old.tx().max_fee_per_gas());
    let new_tip = new
        .tx()
        .max_priority_fee_per_gas()
        .unwrap_or(new.tx().max_fee_per_gas());
    bumped(old.tx().max_fee_per_gas(), new.tx().max_fee_per_gas()) && bumped(old_tip, new_tip)
}
