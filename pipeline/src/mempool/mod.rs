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
//! Ordering includes only what execution will charge ([`TxPool::take_block`]): each transaction
//! meets the static rules of the block ([`check_static`]) and its sender's balance, as last
//! executed, covers the maximum cost of all its transactions in flight plus this one (the
//! reserve balance rule, `docs/CONSENSUS.md`).
//!
//! Limits ([`PoolConfig`], `docs/SECURITY.md`): `txs_max` transactions in all, `sender_txs_max`
//! per sender; a queued transaction expires `queued_lifetime` after its admission. Eviction
//! order: a transaction that extends its sender's pending run (the gap-filling nonce) and finds
//! the sender at its limit evicts that sender's highest queued nonce; any new transaction that
//! finds the pool full evicts the highest queued nonce of the sender with the most queued ones.
//! Pending transactions are never evicted: with nothing queued, the sender limit answers
//! `account limit exceeded` and a full pool `txpool is full`.

mod error;
mod ingress;
mod validate;

pub use error::PoolError;
pub use ingress::{INGRESS_QUEUE_MAX, IngressHandle, IngressStage, decode_and_check};
pub use validate::{BlockRules, TX_SIZE_MAX, Validator, check_static, max_cost};

use crate::state::LatestState;
use alloy_consensus::Transaction;
use alloy_primitives::{Address, B256, U256, map::HashMap};
use kestrel_types::{BlockNumber, RecoveredTx};
use parking_lot::Mutex;
use std::{
    collections::{BTreeMap, BinaryHeap, VecDeque},
    time::{Duration, Instant},
};

/// Most transactions the pool holds.
pub const POOL_TXS_MAX: usize = 500_000;
/// Most transactions one sender may have in the pool.
pub const SENDER_TXS_MAX: usize = 4_096;
/// How long a queued (gapped) transaction waits for its gap to fill. geth keeps one 3 h on 12 s
/// blocks; at Kestrel's sub-second blocks a gap a wallet has not filled in 10 minutes (over a
/// thousand blocks) is abandoned, and holding it only feeds jams and memory.
pub const QUEUED_LIFETIME_DEFAULT: Duration = Duration::from_secs(600);
/// Queued transactions are looked at for expiry at most this often (it walks every sender).
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);
/// A replacement must raise both fee cap and tip by this many percent.
pub const REPLACE_BUMP_PERCENT: u128 = 10;
/// Admitted transactions remembered for [`TxPool::take_fresh`]; beyond it the oldest are
/// forgotten (they stay in the pool, only they are not forwarded).
pub const FRESH_TXS_MAX: usize = 65_536;
/// Hashes of the latest admitted transactions kept for pending-transaction filters
/// ([`TxPool::admitted_since`]); a filter polled less often misses the oldest.
pub const ADMITTED_HASHES_MAX: usize = 16_384;

/// The pool's limits (`--txpool-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    pub txs_max: usize,
    pub sender_txs_max: usize,
    pub queued_lifetime: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            txs_max: POOL_TXS_MAX,
            sender_txs_max: SENDER_TXS_MAX,
            queued_lifetime: QUEUED_LIFETIME_DEFAULT,
        }
    }
}

/// A sender's balance in one view of the state.
pub type BalanceOf<'a> = &'a dyn Fn(Address) -> U256;

/// Where ordering reads senders' balances: the latest executed state.
pub trait Balances {
    /// Calls `f` once with a reader of balances from one consistent view of the state.
    fn with_balances(&self, f: &mut dyn FnMut(BalanceOf<'_>));
}

impl Balances for LatestState {
    fn with_balances(&self, f: &mut dyn FnMut(BalanceOf<'_>)) {
        let viewed = self.with_view(|view| {
            f(&|sender| {
                // Unreadable reads as empty: the sender's transactions wait rather than go
                // into a block unpaid.
                view.account(sender)
                    .ok()
                    .flatten()
                    .map_or(U256::ZERO, |a| a.balance)
            })
        });
        if let Err(err) = viewed {
            tracing::error!(target: "pipeline::mempool", %err, "state unreadable: no balances, block left empty");
            f(&|_| U256::ZERO);
        }
    }
}

#[derive(Debug)]
struct Pooled {
    tx: RecoveredTx,
    admitted_at: Instant,
}

#[derive(Debug, Default)]
struct SenderQueue {
    /// The next nonce ordering will take from this sender.
    next_nonce: u64,
    txs: BTreeMap<u64, Pooled>,
    /// Highest proposed block holding one of this sender's transactions, until it commits.
    in_flight_until: Option<BlockNumber>,
    /// The nonce after this sender's last finalized transaction: an abandoned proposal's
    /// transaction below it is stale and does not come back.
    finalized_next: u64,
}

impl SenderQueue {
    /// The nonce after the pending run: the one that fills the sender's gap.
    fn pending_end(&self) -> u64 {
        let mut n = self.next_nonce;
        while self.txs.contains_key(&n) {
            n += 1;
        }
        n
    }

    fn pending_len(&self) -> usize {
        (self.pending_end() - self.next_nonce) as usize
    }

    /// The highest queued nonce, if any transaction waits behind a gap, or below the next
    /// nonce (another leader proposed a later nonce over a gap; the commit sorts it out).
    fn highest_queued(&self) -> Option<u64> {
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

#[derive(Debug)]
struct InFlight {
    /// The highest block proposed with it, or the block that finalized it.
    number: BlockNumber,
    tx: RecoveredTx,
    finalized: bool,
}

#[derive(Debug, Default)]
struct Inner {
    config: PoolConfig,
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
    /// The latest admitted hashes, oldest first, and how many were admitted before the first.
    admitted: VecDeque<B256>,
    admitted_before: u64,
    /// When queued transactions are next looked at for expiry.
    expiry_due: Option<Instant>,
}

impl Inner {
    fn remove_tx(&mut self, sender: Address, nonce: u64) -> Option<RecoveredTx> {
        let queue = self.senders.get_mut(&sender)?;
        let tx = queue.txs.remove(&nonce)?.tx;
        self.by_hash.remove(&tx.hash());
        self.forget_if_idle(sender);
        Some(tx)
    }

    /// A sender with nothing pooled and nothing in flight is not tracked.
    fn forget_if_idle(&mut self, sender: Address) {
        if self
            .senders
            .get(&sender)
            .is_some_and(|q| q.txs.is_empty() && q.in_flight_until.is_none())
        {
            self.senders.remove(&sender);
        }
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
            .is_some_and(|t| t.tx.hash() == hash)
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
    /// transaction or a newer one took its nonce, or the pool or the sender is full.
    fn put_back(&mut self, tx: RecoveredTx) {
        let (sender, nonce, hash) = (tx.sender(), tx.nonce(), tx.hash());
        let full = self.by_hash.len() >= self.config.txs_max;
        let sender_max = self.config.sender_txs_max;
        let queue = self.senders.entry(sender).or_default();
        if nonce < queue.finalized_next
            || queue.txs.contains_key(&nonce)
            || full
            || queue.txs.len() >= sender_max
        {
            self.forget_if_idle(sender);
            return;
        }
        queue.next_nonce = queue.next_nonce.min(nonce);
        queue.txs.insert(
            nonce,
            Pooled {
                tx,
                admitted_at: Instant::now(),
            },
        );
        self.by_hash.insert(hash, sender);
        metrics::counter!("kestrel_mempool_returned_total").increment(1);
    }

    fn remember_fresh(&mut self, sender: Address, nonce: u64, hash: B256) {
        if self.fresh.len() >= FRESH_TXS_MAX {
            self.fresh.pop_front();
        }
        self.fresh.push_back((sender, nonce, hash));
        if self.admitted.len() >= ADMITTED_HASHES_MAX {
            self.admitted.pop_front();
            self.admitted_before += 1;
        }
        self.admitted.push_back(hash);
    }

    /// Makes room for one transaction when full: the highest queued nonce of the sender with
    /// the most queued transactions goes. False if nothing is queued.
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
        let nonce = self.senders[&sender]
            .highest_queued()
            .expect("queued tx exists");
        self.remove_tx(sender, nonce);
        metrics::counter!(EVICTED, "reason" => "pool_full").increment(1);
        true
    }

    /// The maximum cost of each sender's transactions in flight: what blocks not yet executed
    /// may still take from its balance.
    fn reserved(&self) -> HashMap<Address, U256> {
        let mut reserved: HashMap<Address, U256> = HashMap::default();
        for f in self.in_flight.values() {
            let reserve = reserved.entry(f.tx.sender()).or_default();
            *reserve = reserve.saturating_add(max_cost(f.tx.tx()));
        }
        reserved
    }

    /// Panics if the pool's indexes disagree (reth's `TxPool::assert_invariants`). Walks the
    /// whole pool: run after every mutation in debug builds and by the tests.
    #[cfg(any(test, debug_assertions))]
    fn assert_invariants(&self) {
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
        }
        assert_eq!(self.by_hash.len(), pooled, "stale hash index");
        assert!(pooled <= self.config.txs_max, "pool over its limit");
        let marked: std::collections::HashSet<(BlockNumber, B256)> = self
            .by_block
            .iter()
            .flat_map(|(number, txs)| txs.iter().map(|(hash, _)| (*number, *hash)))
            .collect();
        for (hash, f) in &self.in_flight {
            let q = self.senders.get(&f.tx.sender());
            assert!(
                q.is_some_and(|q| q.in_flight_until.is_some()),
                "in-flight {hash} of an untracked sender"
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
    fn debug_check(&self) {
        self.assert_invariants();
    }

    #[cfg(not(debug_assertions))]
    fn debug_check(&self) {}
}

/// Transactions ordering left out because their sender's balance, less the maximum cost of its
/// transactions in flight, does not cover them, by `action`: `waits` or `dropped`.
pub const UNPAYABLE: &str = "kestrel_ordering_unpayable_txs_total";

/// Evicted transactions, by `reason`: `gap_fill` (a sender at its limit sent its next nonce)
/// or `pool_full`.
const EVICTED: &str = "kestrel_mempool_evicted_total";

/// The pooled transactions (`TxPool::content`), each sender's in nonce order.
#[derive(Debug, Clone, Default)]
pub struct PoolContent {
    pub pending: Vec<RecoveredTx>,
    pub queued: Vec<RecoveredTx>,
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

    pub fn with_config(config: PoolConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                config,
                ..Inner::default()
            }),
        }
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
            .find(|p| p.tx.hash() == *hash)
            .map(|p| p.tx.clone())
    }

    /// The senders of the transactions with these hashes that are waiting in the pool or in
    /// flight (`None` for the others), under one lock: each was recovered by ingress when the
    /// transaction was admitted.
    pub fn known_senders(&self, hashes: &[B256]) -> Vec<Option<Address>> {
        let inner = self.inner.lock();
        hashes
            .iter()
            .map(|hash| {
                inner
                    .by_hash
                    .get(hash)
                    .copied()
                    .or_else(|| inner.in_flight.get(hash).map(|f| f.tx.sender()))
            })
            .collect()
    }

    /// The nonce the sender's next transaction should carry, counting its pending and in-flight
    /// transactions; `None` if the pool knows nothing of this sender.
    pub fn pending_nonce(&self, sender: Address) -> Option<u64> {
        let inner = self.inner.lock();
        Some(inner.senders.get(&sender)?.pending_end())
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

    /// Hashes admitted after the first `seen` admissions (at most the latest
    /// [`ADMITTED_HASHES_MAX`]), oldest first, and how many admissions there were in all: the
    /// `seen` of the next call.
    pub fn admitted_since(&self, seen: u64) -> (Vec<B256>, u64) {
        let inner = self.inner.lock();
        let total = inner.admitted_before + inner.admitted.len() as u64;
        let skip = seen.saturating_sub(inner.admitted_before) as usize;
        (inner.admitted.iter().skip(skip).copied().collect(), total)
    }

    /// The pooled transactions of every sender, or of `sender` alone, split as [`TxPool::size`]
    /// splits them: pending (the sender's run from its next nonce) or queued (behind a gap). In
    /// flight ones are in blocks already and not listed, as geth lists no mined ones.
    pub fn content(&self, sender: Option<Address>) -> PoolContent {
        let inner = self.inner.lock();
        let mut content = PoolContent::default();
        let mut add = |q: &SenderQueue| {
            let end = q.pending_end();
            for (nonce, p) in &q.txs {
                let list = if (q.next_nonce..end).contains(nonce) {
                    &mut content.pending
                } else {
                    &mut content.queued
                };
                list.push(p.tx.clone());
            }
        };
        match sender {
            Some(sender) => inner.senders.get(&sender).into_iter().for_each(&mut add),
            None => inner.senders.values().for_each(&mut add),
        }
        content
    }

    /// Inserts a validated transaction admitted at `now`. `state_nonce` is the sender's nonce
    /// in the latest state.
    pub(crate) fn insert(
        &self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
    ) -> Result<B256, PoolError> {
        let mut inner = self.inner.lock();
        let sender = tx.sender();
        let result = inner.insert(tx, state_nonce, now);
        if result.is_err() {
            inner.forget_if_idle(sender);
        }
        // Cheap always-on subset of the invariants: the limits hold.
        assert!(inner.by_hash.len() <= inner.config.txs_max);
        inner.debug_check();
        result
    }

    /// Takes pending transactions for block `number` under `rules`: highest tip first across
    /// senders, each sender's in nonce order, while their gas limits fit in the block and their
    /// fee cap covers its base fee. Only what execution will charge goes in: a transaction
    /// breaking the static rules leaves the pool, and one whose sender's balance (read from
    /// `balances` after the pool is locked, so no commit falls between the two) does not cover
    /// it on top of the sender's transactions in flight waits (or leaves, with none in flight). Taken transactions leave the
    /// pool and are in flight until `on_committed`.
    pub fn take_block(
        &self,
        number: BlockNumber,
        rules: &BlockRules,
        max_txs: usize,
        balances: &dyn Balances,
    ) -> Vec<RecoveredTx> {
        let mut inner = self.inner.lock();
        let mut taken = Vec::new();
        balances.with_balances(&mut |balance_of| {
            taken = inner.take_block(number, rules, max_txs, balance_of);
        });
        inner.debug_check();
        taken
    }

    /// Drops queued transactions admitted more than the configured lifetime before `now`;
    /// walks the pool at most once per second, however often it is called.
    pub fn expire_queued(&self, now: Instant) {
        let mut inner = self.inner.lock();
        if inner.expiry_due.is_some_and(|due| now < due) {
            return;
        }
        inner.expiry_due = Some(now + EXPIRY_INTERVAL);
        let lifetime = inner.config.queued_lifetime;
        let expired: Vec<(Address, u64)> = inner
            .senders
            .iter()
            .flat_map(|(sender, q)| {
                q.txs
                    .range(q.pending_end()..)
                    .filter(|(_, p)| now.saturating_duration_since(p.admitted_at) >= lifetime)
                    .map(|(nonce, _)| (*sender, *nonce))
            })
            .collect();
        for (sender, nonce) in &expired {
            inner.remove_tx(*sender, *nonce);
        }
        if !expired.is_empty() {
            metrics::counter!("kestrel_mempool_expired_total").increment(expired.len() as u64);
        }
        inner.debug_check();
    }

    /// Another validator proposed block `number` with `txs`: in flight here too, as if taken,
    /// so this node neither proposes them again nor waits on their nonces.
    pub fn on_proposed(&self, number: BlockNumber, txs: &[RecoveredTx]) {
        let mut inner = self.inner.lock();
        for tx in txs {
            inner.mark_in_flight(number, tx, false);
        }
        inner.debug_check();
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
        inner.debug_check();
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
        inner.debug_check();
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
            if let Some(p) = inner
                .senders
                .get(&sender)
                .and_then(|q| q.txs.get(&nonce))
                .filter(|p| p.tx.hash() == hash)
            {
                out.push(p.tx.clone());
            }
        }
        out
    }

    /// Block `number` is committed: senders whose last in-flight block it was go back to their
    /// nonce after it, which also un-sticks senders whose transactions were dropped at execution;
    /// transactions below that nonce are gone for good. Their reserved costs are released with
    /// them: the state now shows what they spent.
    ///
    /// `block_nonce` is a sender's nonce from the block's own state changes (`None`: the block did
    /// not change its account); `state_nonces` reads the others' from the state, once for all of
    /// them, and is not called when there are none. If it fails (`None`) nothing changes: the
    /// senders stay in flight and the next commit takes them up. Returns whether it succeeded.
    pub fn on_committed(
        &self,
        number: BlockNumber,
        block_nonce: impl Fn(Address) -> Option<u64>,
        state_nonces: impl FnOnce(&[Address]) -> Option<Vec<u64>>,
    ) -> bool {
        let mut inner = self.inner.lock();
        // Every in-flight transaction and every sender's `in_flight_until` at or below `number`
        // was marked under that block, so these are all candidates; a sender listed twice is
        // done once.
        let mut done = Vec::new();
        let mut seen: alloy_primitives::map::HashSet<Address> = Default::default();
        for (_, sender) in inner
            .by_block
            .range(..=number)
            .flat_map(|(_, marked)| marked)
        {
            if inner
                .senders
                .get(sender)
                .is_some_and(|q| q.in_flight_until.is_some_and(|n| n <= number))
                && seen.insert(*sender)
            {
                done.push(*sender);
            }
        }
        let mut nonces: Vec<Option<u64>> = done.iter().map(|&s| block_nonce(s)).collect();
        let unseen: Vec<Address> = done
            .iter()
            .zip(&nonces)
            .filter(|(_, n)| n.is_none())
            .map(|(s, _)| *s)
            .collect();
        if !unseen.is_empty() {
            let Some(read) = state_nonces(&unseen) else {
                return false;
            };
            assert_eq!(read.len(), unseen.len(), "one state nonce a sender");
            let mut read = read.into_iter();
            for nonce in nonces.iter_mut().filter(|n| n.is_none()) {
                *nonce = read.next();
            }
        }
        let later = inner.by_block.split_off(&(number + 1));
        let marked = std::mem::replace(&mut inner.by_block, later);
        for (hash, _) in marked.into_values().flatten() {
            if inner
                .in_flight
                .get(&hash)
                .is_some_and(|f| f.number <= number)
            {
                inner.in_flight.remove(&hash);
            }
        }
        for (sender, nonce) in done.into_iter().zip(nonces) {
            let state_nonce = nonce.expect("every sender's nonce resolved");
            let queue = inner.senders.get_mut(&sender).expect("listed sender");
            queue.in_flight_until = None;
            queue.next_nonce = state_nonce;
            let stale: Vec<u64> = queue.txs.range(..state_nonce).map(|(n, _)| *n).collect();
            for nonce in stale {
                inner.remove_tx(sender, nonce);
            }
            inner.forget_if_idle(sender);
        }
        inner.debug_check();
        true
    }

    /// [`Self::on_committed`] with every nonce read from `nonce_of`, as from the state.
    #[cfg(test)]
    fn on_committed_reading(&self, number: BlockNumber, nonce_of: impl Fn(Address) -> u64) {
        assert!(self.on_committed(
            number,
            |_| None,
            |senders| Some(senders.iter().map(|&s| nonce_of(s)).collect())
        ));
    }

    /// Panics if the pool's indexes disagree; see `Inner::assert_invariants`.
    #[cfg(test)]
    fn assert_invariants(&self) {
        self.inner.lock().assert_invariants();
    }
}

impl Inner {
    fn insert(
        &mut self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
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
            self.remember_fresh(sender, nonce, hash);
            metrics::counter!("kestrel_mempool_replaced_total").increment(1);
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
        self.remember_fresh(sender, nonce, hash);
        metrics::counter!("kestrel_mempool_admitted_total").increment(1);
        Ok(hash)
    }

    fn take_block(
        &mut self,
        number: BlockNumber,
        rules: &BlockRules,
        max_txs: usize,
        balance_of: BalanceOf<'_>,
    ) -> Vec<RecoveredTx> {
        let mut reserved = self.reserved();
        // Read once per sender per block.
        let mut balances: HashMap<Address, U256> = HashMap::default();
        // Heap of each sender's next executable transaction, by tip then arrival of the sender.
        // A fee cap below the base fee leaves a sender out here (it may fit a later block), so
        // the static check below never refuses a transaction for that.
        let mut heads: BinaryHeap<(u128, std::cmp::Reverse<u64>, Address)> = self
            .senders
            .iter()
            .filter_map(|(addr, q)| {
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
            let reserve = reserved.entry(sender).or_default();
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
            *reserve += cost;
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
            self.by_block
                .entry(number)
                .or_default()
                .push((tx.hash(), sender));
            self.in_flight.insert(
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
mod tests;
