//! The transaction pool and the ingress stage in front of it.
//!
//! Per-sender queues ordered by nonce: the run of nonces starting at the sender's next nonce is
//! *pending* (executable), the rest is *queued* (waiting for a gap to fill). Ordering takes pending
//! transactions by tip; a taken transaction is *in flight* until the block holding it commits.
//!
//! With several validators a proposal is not final when made: the transactions of any leader's
//! proposal are in flight here too ([`TxPool::on_proposed`]), a finalized block advances its
//! senders' nonces ([`TxPool::on_finalized`]), and the transactions of proposals that lost
//! (another block was finalized at their height) come back to the pool.
//!
//! Limits: [`POOL_TXS_MAX`] transactions in all, [`SENDER_TXS_MAX`] per sender. When the pool is
//! full, a new transaction evicts the queued transaction with the highest nonce of the sender with
//! the most queued ones; if nothing is queued, the new transaction is refused (`txpool is full`).

mod error;
mod ingress;
mod validate;

pub use error::PoolError;
pub use ingress::{INGRESS_QUEUE_MAX, IngressHandle, IngressStage};
pub use validate::{TX_SIZE_MAX, Validator};

use alloy_consensus::Transaction;
use alloy_primitives::{Address, B256, map::HashMap};
use kestrel_types::{BlockNumber, RecoveredTx};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Most transactions the pool holds.
pub const POOL_TXS_MAX: usize = 500_000;
/// Most transactions one sender may have in the pool.
pub const SENDER_TXS_MAX: usize = 4_096;
/// A replacement must raise both fee cap and tip by this many percent.
pub const REPLACE_BUMP_PERCENT: u128 = 10;
/// Admitted transactions remembered for [`TxPool::take_fresh`]; beyond it the oldest are
/// forgotten (they stay in the pool, only they are not forwarded).
pub const FRESH_TXS_MAX: usize = 65_536;

#[derive(Debug, Default)]
struct SenderQueue {
    /// The next nonce ordering will take from this sender.
    next_nonce: u64,
    txs: BTreeMap<u64, RecoveredTx>,
    /// Highest proposed block holding one of this sender's transactions, until it commits.
    in_flight_until: Option<BlockNumber>,
    /// The nonce after this sender's last finalized transaction: an abandoned proposal's
    /// transaction below it is stale and does not come back.
    finalized_next: u64,
}

impl SenderQueue {
    fn pending_len(&self) -> usize {
        let mut n = self.next_nonce;
        while self.txs.contains_key(&n) {
            n += 1;
        }
        (n - self.next_nonce) as usize
    }
}

#[derive(Debug)]
struct InFlight {
    /// The highest block proposed with it, or the block that finalized it.
    number: BlockNumber,
    tx: RecoveredTx,
    finalized: bool,
}

#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<B256, Address>,
    senders: HashMap<Address, SenderQueue>,
    /// Transactions in a proposal, until that block commits (so RPC can still find them) or
    /// loses (then they come back).
    in_flight: HashMap<B256, InFlight>,
    /// Every (hash, sender) marked in flight, under the block it was marked for, until that
    /// block commits: lets commits and finality visit only the blocks in flight, not the pool.
    /// Entries may be stale (the transaction moved to a later block or left); readers check.
    by_block: BTreeMap<BlockNumber, Vec<(B256, Address)>>,
    /// Admitted since the last `take_fresh`, oldest first: sender, nonce, hash.
    fresh: VecDeque<(Address, u64, B256)>,
}

impl Inner {
    fn remove_tx(&mut self, sender: Address, nonce: u64) -> Option<RecoveredTx> {
        let queue = self.senders.get_mut(&sender)?;
        let tx = queue.txs.remove(&nonce)?;
        self.by_hash.remove(&tx.hash());
        if queue.txs.is_empty() && queue.in_flight_until.is_none() {
            self.senders.remove(&sender);
        }
        Some(tx)
    }

    /// `tx` is in a proposal for block `number` (`finalized`: a final one): it leaves the queue,
    /// and its sender's next nonce moves past it.
    fn mark_in_flight(&mut self, number: BlockNumber, tx: &RecoveredTx, finalized: bool) {
        let (sender, nonce, hash) = (tx.sender(), tx.nonce(), tx.hash());
        let queue = self.senders.entry(sender).or_default();
        queue.next_nonce = queue.next_nonce.max(nonce + 1);
        queue.in_flight_until = Some(queue.in_flight_until.map_or(number, |n| n.max(number)));
        if finalized {
            queue.finalized_next = queue.finalized_next.max(nonce + 1);
            // Included, or replaced by what was included: either way stale now.
            let stale: Vec<u64> = queue.txs.range(..=nonce).map(|(n, _)| *n).collect();
            for n in stale {
                self.remove_tx(sender, n);
            }
        } else if self.senders[&sender]
            .txs
            .get(&nonce)
            .is_some_and(|t| t.hash() == hash)
        {
            self.remove_tx(sender, nonce);
        }
        self.by_block
            .entry(number)
            .or_default()
            .push((hash, sender));
        let entry = self.in_flight.entry(hash).or_insert_with(|| InFlight {
            number,
            tx: tx.clone(),
            finalized,
        });
        if finalized {
            (entry.number, entry.finalized) = (number, true);
        } else if !entry.finalized {
            entry.number = entry.number.max(number);
        }
    }

    /// An abandoned proposal's transaction goes back to its sender's queue, unless a finalized
    /// transaction or a newer one took its nonce, or the pool is full.
    fn put_back(&mut self, tx: RecoveredTx) {
        let (sender, nonce, hash) = (tx.sender(), tx.nonce(), tx.hash());
        let full = self.by_hash.len() >= POOL_TXS_MAX;
        let queue = self.senders.entry(sender).or_default();
        if nonce < queue.finalized_next || queue.txs.contains_key(&nonce) || full {
            if queue.txs.is_empty() && queue.in_flight_until.is_none() {
                self.senders.remove(&sender);
            }
            return;
        }
        queue.next_nonce = queue.next_nonce.min(nonce);
        queue.txs.insert(nonce, tx);
        self.by_hash.insert(hash, sender);
        metrics::counter!("kestrel_mempool_returned_total").increment(1);
    }

    fn remember_fresh(&mut self, sender: Address, nonce: u64, hash: B256) {
        if self.fresh.len() >= FRESH_TXS_MAX {
            self.fresh.pop_front();
        }
        self.fresh.push_back((sender, nonce, hash));
    }

    /// Makes room for one transaction when full; false if nothing can be evicted.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .senders
            .iter()
            .map(|(addr, q)| (q.txs.len() - q.pending_len(), *addr))
            .filter(|(queued, _)| *queued > 0)
            .max();
        let Some((_, sender)) = victim else {
            return false;
        };
        let nonce = *self.senders[&sender]
            .txs
            .keys()
            .next_back()
            .expect("queued tx exists");
        self.remove_tx(sender, nonce);
        metrics::counter!("kestrel_mempool_evicted_total").increment(1);
        true
    }
}

/// Counts of pending and queued transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSize {
    pub pending: usize,
    pub queued: usize,
}

#[derive(Debug, Default)]
pub struct TxPool {
    inner: Mutex<Inner>,
}

impl TxPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A transaction waiting in the pool or in a proposed block that has not committed yet.
    pub fn get(&self, hash: &B256) -> Option<RecoveredTx> {
        let inner = self.inner.lock();
        if let Some(f) = inner.in_flight.get(hash) {
            return Some(f.tx.clone());
        }
        let sender = inner.by_hash.get(hash)?;
        inner.senders[sender]
            .txs
            .values()
            .find(|tx| tx.hash() == *hash)
            .cloned()
    }

    /// The nonce the sender's next transaction should carry, counting its pending and in-flight
    /// transactions; `None` if the pool knows nothing of this sender.
    pub fn pending_nonce(&self, sender: Address) -> Option<u64> {
        let inner = self.inner.lock();
        let q = inner.senders.get(&sender)?;
        Some(q.next_nonce + q.pending_len() as u64)
    }

    /// The next nonce of `sender` as far as the pool is concerned (its in-flight transactions
    /// count), if the pool tracks it.
    pub(crate) fn tracked_next_nonce(&self, sender: Address) -> Option<u64> {
        self.inner.lock().senders.get(&sender).map(|q| q.next_nonce)
    }

    pub fn size(&self) -> PoolSize {
        let inner = self.inner.lock();
        let pending: usize = inner.senders.values().map(SenderQueue::pending_len).sum();
        PoolSize {
            pending,
            queued: inner.by_hash.len() - pending,
        }
    }

    /// Inserts a validated transaction. `state_nonce` is the sender's nonce in the latest state.
    pub(crate) fn insert(&self, tx: RecoveredTx, state_nonce: u64) -> Result<B256, PoolError> {
        let hash = tx.hash();
        let sender = tx.sender();
        let mut inner = self.inner.lock();
        if inner.by_hash.contains_key(&hash) {
            return Err(PoolError::AlreadyKnown);
        }
        let queue = inner.senders.entry(sender).or_default();
        if queue.in_flight_until.is_none() {
            queue.next_nonce = queue.next_nonce.max(state_nonce);
        }
        if tx.nonce() < queue.next_nonce {
            return Err(PoolError::NonceTooLow);
        }
        if let Some(old) = queue.txs.get(&tx.nonce()) {
            if !is_sufficient_bump(old, &tx) {
                return Err(PoolError::ReplacementUnderpriced);
            }
            let (old_hash, nonce) = (old.hash(), tx.nonce());
            queue.txs.insert(nonce, tx);
            inner.by_hash.remove(&old_hash);
            inner.by_hash.insert(hash, sender);
            inner.remember_fresh(sender, nonce, hash);
            metrics::counter!("kestrel_mempool_replaced_total").increment(1);
            return Ok(hash);
        }
        if queue.txs.len() >= SENDER_TXS_MAX {
            return Err(PoolError::SenderLimit);
        }
        if inner.by_hash.len() >= POOL_TXS_MAX && !inner.evict_one() {
            return Err(PoolError::PoolFull);
        }
        let queue = inner.senders.entry(sender).or_default();
        let nonce = tx.nonce();
        queue.txs.insert(nonce, tx);
        inner.by_hash.insert(hash, sender);
        inner.remember_fresh(sender, nonce, hash);
        metrics::counter!("kestrel_mempool_admitted_total").increment(1);
        Ok(hash)
    }

    /// Takes pending transactions for block `number`: highest tip first across senders, each
    /// sender's in nonce order, while their gas limits fit in `gas_limit` and their fee cap covers
    /// `base_fee`. Taken transactions leave the pool and are in flight until `on_committed`.
    pub fn take_block(
        &self,
        number: BlockNumber,
        gas_limit: u64,
        base_fee: u64,
        max_txs: usize,
    ) -> Vec<RecoveredTx> {
        let mut inner = self.inner.lock();
        // Heap of each sender's next executable transaction, by tip then arrival of the sender.
        let mut heads: BinaryHeap<(u128, std::cmp::Reverse<u64>, Address)> = inner
            .senders
            .iter()
            .filter_map(|(addr, q)| {
                let tx = q.txs.get(&q.next_nonce)?;
                Some((tip(tx, base_fee)?, std::cmp::Reverse(q.next_nonce), *addr))
            })
            .collect();
        let mut taken = Vec::new();
        let mut gas_left = gas_limit;
        while let Some((_, _, sender)) = heads.pop() {
            if taken.len() >= max_txs {
                break;
            }
            let queue = inner.senders.get_mut(&sender).expect("sender in heap");
            let nonce = queue.next_nonce;
            let gas = queue.txs[&nonce].gas_limit();
            if gas > gas_left {
                continue;
            }
            gas_left -= gas;
            queue.next_nonce += 1;
            queue.in_flight_until = Some(queue.in_flight_until.map_or(number, |n| n.max(number)));
            if let Some(next) = queue.txs.get(&queue.next_nonce)
                && let Some(t) = tip(next, base_fee)
            {
                heads.push((t, std::cmp::Reverse(queue.next_nonce), sender));
            }
            let tx = queue.txs.remove(&nonce).expect("head tx exists");
            inner.by_hash.remove(&tx.hash());
            inner
                .by_block
                .entry(number)
                .or_default()
                .push((tx.hash(), sender));
            inner.in_flight.insert(
                tx.hash(),
                InFlight {
                    number,
                    tx: tx.clone(),
                    finalized: false,
                },
            );
            taken.push(tx);
        }
        taken
    }

    /// Another validator proposed block `number` with `txs`: in flight here too, as if taken,
    /// so this node neither proposes them again nor waits on their nonces.
    pub fn on_proposed(&self, number: BlockNumber, txs: &[RecoveredTx]) {
        let mut inner = self.inner.lock();
        for tx in txs {
            inner.mark_in_flight(number, tx, false);
        }
    }

    /// A proposal holding `txs` ended its round without a QC, so no leader will extend it: its
    /// transactions come back now rather than when its height is finalized, or a leader whose
    /// proposals keep failing (its successor is down) would hold them away from the others
    /// forever. Should the block be extended after all, a copy proposed again is dropped at
    /// execution.
    pub fn on_abandoned(&self, txs: &[RecoveredTx]) {
        let mut inner = self.inner.lock();
        for tx in txs {
            if inner
                .in_flight
                .get(&tx.hash())
                .is_some_and(|f| !f.finalized)
                && let Some(f) = inner.in_flight.remove(&tx.hash())
            {
                inner.put_back(f.tx);
            }
        }
    }

    /// Block `number` is final with `txs` (ahead of its execution): every sender in it moves
    /// past its transactions, which leave the pool with any stale ones. Proposals for `number`
    /// or below that were not finalized lost: their transactions come back to the pool.
    pub fn on_finalized(&self, number: BlockNumber, txs: &[RecoveredTx]) {
        let mut inner = self.inner.lock();
        for tx in txs {
            inner.mark_in_flight(number, tx, true);
        }
        let lost: Vec<B256> = inner
            .by_block
            .range(..=number)
            .flat_map(|(_, marked)| marked)
            .filter(|(hash, _)| {
                inner
                    .in_flight
                    .get(hash)
                    .is_some_and(|f| !f.finalized && f.number <= number)
            })
            .map(|(hash, _)| *hash)
            .collect();
        // A hash marked under several blocks is listed more than once: removed the first time.
        for hash in lost {
            if let Some(f) = inner.in_flight.remove(&hash) {
                inner.put_back(f.tx);
            }
        }
    }

    /// Up to `max` transactions admitted since the last call and still waiting in the pool,
    /// oldest first (to forward them to the next leaders).
    pub fn take_fresh(&self, max: usize) -> Vec<RecoveredTx> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some((sender, nonce, hash)) = inner.fresh.pop_front() else {
                break;
            };
            if let Some(tx) = inner
                .senders
                .get(&sender)
                .and_then(|q| q.txs.get(&nonce))
                .filter(|tx| tx.hash() == hash)
            {
                out.push(tx.clone());
            }
        }
        out
    }

    /// Block `number` is committed: senders whose last in-flight block it was go back to their
    /// state nonce (`nonce_of` reads it), which also un-sticks senders whose transactions were
    /// dropped at execution; transactions below that nonce are gone for good.
    pub fn on_committed(&self, number: BlockNumber, mut nonce_of: impl FnMut(Address) -> u64) {
        let mut inner = self.inner.lock();
        let later = inner.by_block.split_off(&(number + 1));
        let marked = std::mem::replace(&mut inner.by_block, later);
        // Every in-flight transaction and every sender's `in_flight_until` at or below `number`
        // was marked under that block, so these are all candidates.
        let mut done = Vec::new();
        for (hash, sender) in marked.into_values().flatten() {
            if inner
                .in_flight
                .get(&hash)
                .is_some_and(|f| f.number <= number)
            {
                inner.in_flight.remove(&hash);
            }
            // Cleared here, so a sender listed twice is done once.
            if let Some(q) = inner.senders.get_mut(&sender)
                && q.in_flight_until.is_some_and(|n| n <= number)
            {
                q.in_flight_until = None;
                done.push(sender);
            }
        }
        for sender in done {
            let state_nonce = nonce_of(sender);
            let queue = inner.senders.get_mut(&sender).expect("listed sender");
            queue.next_nonce = state_nonce;
            let stale: Vec<u64> = queue.txs.range(..state_nonce).map(|(n, _)| *n).collect();
            for nonce in stale {
                inner.remove_tx(sender, nonce);
            }
            if inner.senders.get(&sender).is_some_and(|q| q.txs.is_empty()) {
                inner.senders.remove(&sender);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
    use alloy_primitives::{Signature, TxKind, U256};

    /// A real secp256k1-signed EIP-1559 transfer.
    fn signed(key: u8, nonce: u64, tip: u128, fee_cap: u128) -> RecoveredTx {
        let tx = TxEip1559 {
            chain_id: 1337,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: fee_cap,
            max_priority_fee_per_gas: tip,
            to: TxKind::Call(Address::with_last_byte(0xee)),
            value: U256::from(1),
            ..Default::default()
        };
        let secret = secp256k1::SecretKey::from_slice(&[key; 32]).unwrap();
        let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
        let (rec, bytes) = secp256k1::SECP256K1
            .sign_ecdsa_recoverable(&msg, &secret)
            .serialize_compact();
        let sig = Signature::from_bytes_and_parity(&bytes, i32::from(rec) != 0);
        RecoveredTx::recover(TxEnvelope::Eip1559(tx.into_signed(sig))).unwrap()
    }

    #[test]
    fn pending_and_queued_follow_nonce_gaps() {
        let pool = TxPool::new();
        pool.insert(signed(1, 0, 1, 100), 0).unwrap();
        pool.insert(signed(1, 2, 1, 100), 0).unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 1
            }
        );
        assert_eq!(
            pool.insert(signed(1, 0, 1, 100), 0),
            Err(PoolError::AlreadyKnown)
        );
        pool.insert(signed(1, 1, 1, 100), 0).unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 3,
                queued: 0
            }
        );
        assert_eq!(pool.pending_nonce(signed(1, 0, 1, 1).sender()), Some(3));
    }

    #[test]
    fn replacement_needs_ten_percent_on_both_fees() {
        let pool = TxPool::new();
        pool.insert(signed(1, 0, 10, 100), 0).unwrap();
        assert_eq!(
            pool.insert(signed(1, 0, 10, 109), 0),
            Err(PoolError::ReplacementUnderpriced)
        );
        assert_eq!(
            pool.insert(signed(1, 0, 10, 200), 0),
            Err(PoolError::ReplacementUnderpriced)
        );
        let better = signed(1, 0, 11, 110);
        pool.insert(better.clone(), 0).unwrap();
        assert_eq!(pool.get(&better.hash()), Some(better));
        assert_eq!(pool.size().pending, 1);
    }

    #[test]
    fn take_block_orders_by_tip_keeps_nonce_order_and_respects_gas_and_base_fee() {
        let pool = TxPool::new();
        let low = signed(1, 0, 1, 100);
        let high0 = signed(2, 0, 50, 100);
        let high1 = signed(2, 1, 50, 100);
        let below_base_fee = signed(3, 0, 1, 5);
        for tx in [&low, &high0, &high1, &below_base_fee] {
            pool.insert(tx.clone(), 0).unwrap();
        }
        let taken = pool.take_block(1, 63_000, 10, 100);
        assert_eq!(taken, vec![high0.clone(), high1, low]);
        assert_eq!(
            pool.get(&high0.hash()),
            Some(high0.clone()),
            "in flight stays visible"
        );
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 0
            }
        );
        // In flight: a stale nonce is refused until the block commits.
        assert_eq!(
            pool.insert(signed(2, 1, 50, 100), 0),
            Err(PoolError::NonceTooLow)
        );
        let sender2 = high0.sender();
        assert_eq!(pool.tracked_next_nonce(sender2), Some(2));
        pool.on_committed(1, |a| if a == sender2 { 2 } else { 1 });
        assert_eq!(
            pool.get(&high0.hash()),
            None,
            "committed: served from the chain"
        );
        assert_eq!(pool.tracked_next_nonce(sender2), None);
    }

    #[test]
    fn commit_resets_senders_whose_transactions_were_dropped() {
        let pool = TxPool::new();
        let sender = signed(4, 0, 1, 100).sender();
        pool.insert(signed(4, 0, 1, 100), 0).unwrap();
        pool.insert(signed(4, 1, 1, 100), 0).unwrap();
        assert_eq!(pool.take_block(7, 1_000_000, 1, 1).len(), 1);
        // The taken transaction was dropped at execution: the state nonce is still 0.
        pool.on_committed(7, |_| 0);
        assert_eq!(pool.tracked_next_nonce(sender), Some(0));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 0,
                queued: 1
            }
        );
        // A new nonce-0 transaction fills the gap; both go out and commit.
        pool.insert(signed(4, 0, 2, 100), 0).unwrap();
        assert_eq!(pool.take_block(8, 1_000_000, 1, 10).len(), 2);
        pool.on_committed(8, |_| 2);
        assert_eq!(pool.size(), PoolSize::default());
        assert_eq!(pool.pending_nonce(sender), None);
    }

    #[test]
    fn finalized_blocks_advance_every_sender_in_them() {
        let pool = TxPool::new();
        let (s0, s1) = (signed(5, 0, 1, 100), signed(5, 1, 1, 100));
        let sender = s0.sender();
        // A replacement of nonce 1 waits here; another leader's block with nonce 0 and 1 is
        // final before this node executed it (the state nonce is still 0).
        pool.insert(signed(5, 1, 2, 200), 0).unwrap();
        pool.on_finalized(3, &[s0.clone(), s1.clone()]);
        assert_eq!(pool.tracked_next_nonce(sender), Some(2));
        assert_eq!(
            pool.size(),
            PoolSize::default(),
            "the stale replacement is gone"
        );
        assert_eq!(pool.insert(s1.clone(), 0), Err(PoolError::NonceTooLow));
        assert_eq!(pool.get(&s1.hash()), Some(s1), "visible until executed");
        pool.insert(signed(5, 2, 1, 100), 0).unwrap();
        assert_eq!(pool.take_block(4, 1_000_000, 1, 10).len(), 1);
        // Executed: the state nonce takes over.
        pool.on_committed(3, |_| 2);
        assert_eq!(pool.get(&s0.hash()), None);
        assert_eq!(pool.tracked_next_nonce(sender), Some(3));
    }

    #[test]
    fn other_leaders_proposals_are_in_flight_here() {
        let pool = TxPool::new();
        let (a0, a1, b0) = (
            signed(6, 0, 1, 100),
            signed(6, 1, 1, 100),
            signed(7, 0, 1, 100),
        );
        for tx in [&a0, &a1, &b0] {
            pool.insert(tx.clone(), 0).unwrap();
        }
        pool.on_proposed(2, std::slice::from_ref(&a0));
        // Not proposed again; the sender's next transaction is not stuck behind it.
        let taken = pool.take_block(3, 1_000_000, 1, 10);
        assert_eq!(taken.len(), 2);
        assert!(taken.contains(&a1) && taken.contains(&b0));
        assert_eq!(pool.size(), PoolSize::default());
        assert_eq!(pool.get(&a0.hash()), Some(a0));
    }

    #[test]
    fn abandoned_proposals_come_back_to_the_pool() {
        let pool = TxPool::new();
        let (a0, a1, b0) = (
            signed(8, 0, 1, 100),
            signed(8, 1, 1, 100),
            signed(9, 0, 1, 100),
        );
        let c0 = signed(10, 0, 1, 100);
        for tx in [&a0, &a1, &b0] {
            pool.insert(tx.clone(), 0).unwrap();
        }
        // This node proposed a0, a1 and b0 for height 4; another leader's proposal for height 5
        // on it carried c0.
        assert_eq!(pool.take_block(4, 1_000_000, 1, 10).len(), 3);
        pool.on_proposed(5, std::slice::from_ref(&c0));
        // Another block at height 4 won, and it holds b0 too.
        pool.on_finalized(4, std::slice::from_ref(&b0));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 2,
                queued: 0
            },
            "a0 and a1 are back, b0 is final"
        );
        assert_eq!(pool.pending_nonce(a0.sender()), Some(2));
        // Height 5 is finalized without c0: it comes back too, even to a pool that never
        // admitted it.
        pool.on_finalized(5, &[]);
        assert_eq!(pool.take_block(6, 1_000_000, 1, 10).len(), 3);
        // Proposed again and final this time: nothing comes back.
        pool.on_finalized(6, &[a0, a1, c0]);
        assert_eq!(pool.size(), PoolSize::default());
    }

    #[test]
    fn a_proposal_whose_round_failed_gives_its_transactions_back_at_once() {
        let pool = TxPool::new();
        let (a0, a1) = (signed(13, 0, 1, 100), signed(13, 1, 1, 100));
        pool.insert(a0.clone(), 0).unwrap();
        pool.insert(a1.clone(), 0).unwrap();
        // A leader whose successor is down proposed both for height 7; the round timed out.
        pool.on_proposed(7, &[a0.clone(), a1.clone()]);
        assert!(pool.take_block(7, 1_000_000, 1, 10).is_empty());
        pool.on_abandoned(&[a0.clone(), a1.clone()]);
        // The next leader proposes them without waiting for height 7 to be finalized.
        assert_eq!(
            pool.take_block(7, 1_000_000, 1, 10),
            vec![a0.clone(), a1.clone()]
        );
        // A finalized transaction never comes back, even if a copy's round failed later.
        pool.on_finalized(7, &[a0.clone(), a1.clone()]);
        pool.on_abandoned(&[a0, a1]);
        assert_eq!(pool.size(), PoolSize::default());
        assert!(pool.take_block(8, 1_000_000, 1, 10).is_empty());
    }

    #[test]
    fn fresh_transactions_are_handed_out_once() {
        let pool = TxPool::new();
        let (a0, b0) = (signed(11, 0, 1, 100), signed(12, 0, 1, 100));
        pool.insert(a0.clone(), 0).unwrap();
        pool.insert(b0.clone(), 0).unwrap();
        assert_eq!(pool.take_fresh(1), vec![a0.clone()]);
        // Taken into a block meanwhile: no longer waiting, not handed out.
        pool.take_block(1, 1_000_000, 1, 10);
        assert_eq!(pool.take_fresh(10), vec![]);
        assert_eq!(pool.get(&b0.hash()), Some(b0));
    }
}
