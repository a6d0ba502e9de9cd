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

    /// Every sender can pay for anything.
    struct Rich;

    impl Balances for Rich {
        fn with_balances(&self, f: &mut dyn FnMut(BalanceOf<'_>)) {
            f(&|_| U256::MAX)
        }
    }

    /// Fixed balances; anyone else has nothing.
    struct Funds(HashMap<Address, U256>);

    impl Balances for Funds {
        fn with_balances(&self, f: &mut dyn FnMut(BalanceOf<'_>)) {
            f(&|a| self.0.get(&a).copied().unwrap_or_default())
        }
    }

    fn rules(gas_limit: u64, base_fee: u64) -> BlockRules {
        BlockRules {
            chain_id: 1337,
            fork: kestrel_types::Fork::Prague,
            gas_limit,
            base_fee,
        }
    }

    fn small(sender_txs_max: usize, txs_max: usize) -> TxPool {
        TxPool::with_config(PoolConfig {
            txs_max,
            sender_txs_max,
            queued_lifetime: Duration::from_secs(60),
        })
    }

    #[test]
    fn the_gap_filling_nonce_is_always_admitted() {
        let pool = small(4, 100);
        let now = Instant::now();
        // Nonces 1..=4 fill the sender's allowance behind a gap at 0.
        for n in 1..=4 {
            pool.insert(signed(30, n, 1, 100), 0, now).unwrap();
        }
        assert_eq!(
            pool.insert(signed(30, 5, 1, 100), 0, now),
            Err(PoolError::SenderLimit),
            "a further gapped nonce is refused"
        );
        // Nonce 0 gets in and evicts the highest queued nonce.
        pool.insert(signed(30, 0, 1, 100), 0, now).unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 4,
                queued: 0
            }
        );
        assert_eq!(pool.pending_nonce(signed(30, 0, 1, 1).sender()), Some(4));
        // All pending now: the next nonce has nothing queued to evict.
        assert_eq!(
            pool.insert(signed(30, 4, 1, 100), 0, now),
            Err(PoolError::SenderLimit)
        );
        pool.assert_invariants();
    }

    #[test]
    fn a_full_pool_evicts_queued_transactions_never_pending_ones() {
        let pool = small(10, 4);
        let now = Instant::now();
        pool.insert(signed(31, 0, 1, 100), 0, now).unwrap();
        pool.insert(signed(31, 1, 1, 100), 0, now).unwrap();
        pool.insert(signed(32, 5, 1, 100), 0, now).unwrap();
        pool.insert(signed(32, 6, 1, 100), 0, now).unwrap();
        // Full: a new transaction evicts the highest queued nonce of the most-queued sender.
        let honest = signed(33, 0, 1, 100);
        pool.insert(honest.clone(), 0, now).unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 3,
                queued: 1
            }
        );
        pool.insert(signed(34, 0, 1, 100), 0, now).unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 4,
                queued: 0
            }
        );
        // Only pending ones left: nothing to evict.
        assert_eq!(
            pool.insert(signed(35, 0, 1, 100), 0, now),
            Err(PoolError::PoolFull)
        );
        assert_eq!(pool.get(&honest.hash()), Some(honest));
        pool.assert_invariants();
    }

    #[test]
    fn queued_transactions_expire_pending_ones_do_not() {
        let pool = small(10, 100);
        let t0 = Instant::now();
        pool.insert(signed(36, 0, 1, 100), 0, t0).unwrap();
        pool.insert(signed(36, 2, 1, 100), 0, t0).unwrap();
        pool.insert(signed(36, 3, 1, 100), 0, t0 + Duration::from_secs(30))
            .unwrap();
        pool.expire_queued(t0 + Duration::from_secs(59));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 2
            }
        );
        // Checked at most once a second.
        pool.expire_queued(t0 + Duration::from_millis(59_900));
        assert_eq!(pool.size().queued, 2);
        pool.expire_queued(t0 + Duration::from_secs(61));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 1
            }
        );
        pool.expire_queued(t0 + Duration::from_secs(91));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 0
            }
        );
        pool.assert_invariants();
    }

    #[test]
    fn ordering_includes_only_what_the_sender_can_pay_across_blocks_in_flight() {
        let pool = TxPool::new();
        let (a0, a1, a2) = (
            signed(37, 0, 1, 100),
            signed(37, 1, 1, 100),
            signed(37, 2, 1, 100),
        );
        let broke = signed(38, 0, 1, 100);
        for tx in [&a0, &a1, &a2, &broke] {
            pool.insert(tx.clone(), 0, Instant::now()).unwrap();
        }
        // Enough for two transactions at their maximum cost, not three; the other sender has
        // nothing.
        let each = max_cost(a0.tx());
        let two = each * U256::from(2) + U256::from(1);
        let funds = Funds([(a0.sender(), two)].into_iter().collect());
        assert_eq!(
            pool.take_block(1, &rules(1_000_000, 1), 10, &funds),
            vec![a0.clone(), a1.clone()]
        );
        // Nothing in flight and nothing to pay with: gone, as geth drops it.
        assert_eq!(pool.get(&broke.hash()), None);
        // Block 1 is in flight: its cost stays reserved in the next block, a2 waits.
        assert!(
            pool.take_block(2, &rules(1_000_000, 1), 10, &funds)
                .is_empty()
        );
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 0
            }
        );
        // Block 1 executed: the state's balance now shows what it spent.
        pool.on_committed_reading(1, |_| 2);
        let funds = Funds([(a0.sender(), each)].into_iter().collect());
        assert_eq!(
            pool.take_block(3, &rules(1_000_000, 1), 10, &funds),
            vec![a2]
        );
        pool.assert_invariants();
    }

    #[test]
    fn block_building_drops_statically_invalid_transactions() {
        let pool = TxPool::new();
        let (a0, a1, b0) = (
            signed(38, 0, 1, 100),
            signed(38, 1, 1, 100),
            signed(39, 0, 1, 100),
        );
        for tx in [&a0, &a1, &b0] {
            pool.insert(tx.clone(), 0, Instant::now()).unwrap();
        }
        // Another chain's rules (as if the pool had admitted them under other ones).
        let other = BlockRules {
            chain_id: 1,
            ..rules(1_000_000, 1)
        };
        assert!(pool.take_block(1, &other, 10, &Rich).is_empty());
        // Each sender's head left the pool; a1 waits behind its gap.
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 0,
                queued: 1
            }
        );
        assert_eq!(pool.get(&a0.hash()), None);
        pool.assert_invariants();
    }

    #[test]
    fn pending_and_queued_follow_nonce_gaps() {
        let pool = TxPool::new();
        pool.insert(signed(1, 0, 1, 100), 0, Instant::now())
            .unwrap();
        pool.insert(signed(1, 2, 1, 100), 0, Instant::now())
            .unwrap();
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 1
            }
        );
        assert_eq!(
            pool.insert(signed(1, 0, 1, 100), 0, Instant::now()),
            Err(PoolError::AlreadyKnown)
        );
        pool.insert(signed(1, 1, 1, 100), 0, Instant::now())
            .unwrap();
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
        pool.insert(signed(1, 0, 10, 100), 0, Instant::now())
            .unwrap();
        assert_eq!(
            pool.insert(signed(1, 0, 10, 109), 0, Instant::now()),
            Err(PoolError::ReplacementUnderpriced)
        );
        assert_eq!(
            pool.insert(signed(1, 0, 10, 200), 0, Instant::now()),
            Err(PoolError::ReplacementUnderpriced)
        );
        let better = signed(1, 0, 11, 110);
        pool.insert(better.clone(), 0, Instant::now()).unwrap();
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
            pool.insert(tx.clone(), 0, Instant::now()).unwrap();
        }
        let taken = pool.take_block(1, &rules(63_000, 10), 100, &Rich);
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
            pool.insert(signed(2, 1, 50, 100), 0, Instant::now()),
            Err(PoolError::NonceTooLow)
        );
        let sender2 = high0.sender();
        assert_eq!(pool.tracked_next_nonce(sender2), Some(2));
        pool.on_committed_reading(1, |a| if a == sender2 { 2 } else { 1 });
        assert_eq!(
            pool.get(&high0.hash()),
            None,
            "committed: served from the chain"
        );
        assert_eq!(pool.tracked_next_nonce(sender2), None);
    }

    /// Committed senders take their nonce from the block's changes; only those the block did not
    /// change are read from the state, all at once; a failed read changes nothing.
    #[test]
    fn commit_takes_nonces_from_the_block_and_reads_only_the_rest() {
        let pool = TxPool::new();
        let (a, b) = (signed(6, 0, 1, 100), signed(7, 0, 1, 100));
        let (sender_a, sender_b) = (a.sender(), b.sender());
        pool.insert(a.clone(), 0, Instant::now()).unwrap();
        pool.insert(b.clone(), 0, Instant::now()).unwrap();
        assert_eq!(pool.take_block(9, &rules(1_000_000, 1), 2, &Rich).len(), 2);
        pool.insert(signed(6, 1, 1, 100), 0, Instant::now())
            .unwrap();
        pool.insert(signed(7, 1, 1, 100), 0, Instant::now())
            .unwrap();
        // `b` was dropped at execution: the block changed only `a`.
        let block_nonce = |s: Address| (s == sender_a).then_some(1);
        assert!(!pool.on_committed(9, block_nonce, |senders| {
            assert_eq!(senders, [sender_b]);
            None
        }));
        assert_eq!(
            pool.tracked_next_nonce(sender_b),
            Some(1),
            "still in flight"
        );
        pool.assert_invariants();
        let mut read = Vec::new();
        assert!(pool.on_committed(9, block_nonce, |senders| {
            read.extend_from_slice(senders);
            Some(vec![0])
        }));
        assert_eq!(read, [sender_b]);
        assert_eq!(pool.tracked_next_nonce(sender_a), Some(1));
        assert_eq!(pool.tracked_next_nonce(sender_b), Some(0));
        assert_eq!(pool.get(&a.hash()), None, "committed");
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 1,
                queued: 1
            }
        );
        // Nothing left to read: the state is not asked.
        assert_eq!(pool.take_block(10, &rules(1_000_000, 1), 1, &Rich).len(), 1);
        assert!(pool.on_committed(10, |_| Some(2), |_| panic!("read the state")));
        pool.assert_invariants();
    }

    #[test]
    fn commit_resets_senders_whose_transactions_were_dropped() {
        let pool = TxPool::new();
        let sender = signed(4, 0, 1, 100).sender();
        pool.insert(signed(4, 0, 1, 100), 0, Instant::now())
            .unwrap();
        pool.insert(signed(4, 1, 1, 100), 0, Instant::now())
            .unwrap();
        assert_eq!(pool.take_block(7, &rules(1_000_000, 1), 1, &Rich).len(), 1);
        // The taken transaction was dropped at execution: the state nonce is still 0.
        pool.on_committed_reading(7, |_| 0);
        assert_eq!(pool.tracked_next_nonce(sender), Some(0));
        assert_eq!(
            pool.size(),
            PoolSize {
                pending: 0,
                queued: 1
            }
        );
        // A new nonce-0 transaction fills the gap; both go out and commit.
        pool.insert(signed(4, 0, 2, 100), 0, Instant::now())
            .unwrap();
        assert_eq!(pool.take_block(8, &rules(1_000_000, 1), 10, &Rich).len(), 2);
        pool.on_committed_reading(8, |_| 2);
        assert_eq!(pool.size(), PoolSize::default());
        assert_eq!(pool.pending_nonce(sender), None);
    }

    #[test]
    fn admitted_hashes_come_once_per_reader_and_the_oldest_go_first() {
        let pool = TxPool::new();
        let now = Instant::now();
        let (none, seen) = pool.admitted_since(0);
        assert_eq!((none, seen), (vec![], 0));
        let a = pool.insert(signed(11, 0, 1, 100), 0, now).unwrap();
        let b = pool.insert(signed(11, 5, 1, 100), 0, now).unwrap();
        assert_eq!(pool.admitted_since(seen), (vec![a, b], 2));
        assert_eq!(pool.admitted_since(2), (vec![], 2));
        // A replacement is admitted too; a refused transaction is not.
        let c = pool.insert(signed(11, 0, 2, 200), 0, now).unwrap();
        assert!(pool.insert(signed(11, 5, 1, 100), 0, now).is_err());
        assert_eq!(pool.admitted_since(2), (vec![c], 3));
    }

    #[test]
    fn content_splits_pending_from_queued_as_size_does() {
        let pool = TxPool::new();
        let now = Instant::now();
        for nonce in [0, 1, 3] {
            pool.insert(signed(9, nonce, 1, 100), 0, now).unwrap();
        }
        pool.insert(signed(10, 2, 1, 100), 0, now).unwrap();
        let nonces = |txs: &[RecoveredTx]| txs.iter().map(|t| t.nonce()).collect::<Vec<_>>();
        let all = pool.content(None);
        assert_eq!(
            (all.pending.len(), all.queued.len()),
            (pool.size().pending, pool.size().queued)
        );
        let one = pool.content(Some(signed(9, 0, 1, 100).sender()));
        assert_eq!(
            (nonces(&one.pending), nonces(&one.queued)),
            (vec![0, 1], vec![3])
        );
        // Taken into a block, the run is in flight: in neither list.
        pool.take_block(1, &rules(u64::MAX / 2, 1), 100, &Rich);
        let after = pool.content(None);
        let mut queued = nonces(&after.queued);
        // Senders come in the pool's map order.
        queued.sort_unstable();
        assert_eq!((nonces(&after.pending), queued), (vec![], vec![2, 3]));
    }

    #[test]
    fn finalized_blocks_advance_every_sender_in_them() {
        let pool = TxPool::new();
        let (s0, s1) = (signed(5, 0, 1, 100), signed(5, 1, 1, 100));
        let sender = s0.sender();
        // A replacement of nonce 1 waits here; another leader's block with nonce 0 and 1 is
        // final before this node executed it (the state nonce is still 0).
        pool.insert(signed(5, 1, 2, 200), 0, Instant::now())
            .unwrap();
        pool.on_finalized(3, &[s0.clone(), s1.clone()]);
        assert_eq!(pool.tracked_next_nonce(sender), Some(2));
        assert_eq!(
            pool.size(),
            PoolSize::default(),
            "the stale replacement is gone"
        );
        assert_eq!(
            pool.insert(s1.clone(), 0, Instant::now()),
            Err(PoolError::NonceTooLow)
        );
        assert_eq!(pool.get(&s1.hash()), Some(s1), "visible until executed");
        pool.insert(signed(5, 2, 1, 100), 0, Instant::now())
            .unwrap();
        assert_eq!(pool.take_block(4, &rules(1_000_000, 1), 10, &Rich).len(), 1);
        // Executed: the state nonce takes over.
        pool.on_committed_reading(3, |_| 2);
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
            pool.insert(tx.clone(), 0, Instant::now()).unwrap();
        }
        pool.on_proposed(2, std::slice::from_ref(&a0));
        // Not proposed again; the sender's next transaction is not stuck behind it.
        let taken = pool.take_block(3, &rules(1_000_000, 1), 10, &Rich);
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
            pool.insert(tx.clone(), 0, Instant::now()).unwrap();
        }
        // This node proposed a0, a1 and b0 for height 4; another leader's proposal for height 5
        // on it carried c0.
        assert_eq!(pool.take_block(4, &rules(1_000_000, 1), 10, &Rich).len(), 3);
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
        assert_eq!(pool.take_block(6, &rules(1_000_000, 1), 10, &Rich).len(), 3);
        // Proposed again and final this time: nothing comes back.
        pool.on_finalized(6, &[a0, a1, c0]);
        assert_eq!(pool.size(), PoolSize::default());
    }

    #[test]
    fn a_proposal_whose_round_failed_gives_its_transactions_back_at_once() {
        let pool = TxPool::new();
        let (a0, a1) = (signed(13, 0, 1, 100), signed(13, 1, 1, 100));
        pool.insert(a0.clone(), 0, Instant::now()).unwrap();
        pool.insert(a1.clone(), 0, Instant::now()).unwrap();
        // A leader whose successor is down proposed both for height 7; the round timed out.
        pool.on_proposed(7, &[a0.clone(), a1.clone()]);
        assert!(
            pool.take_block(7, &rules(1_000_000, 1), 10, &Rich)
                .is_empty()
        );
        pool.on_abandoned(&[a0.clone(), a1.clone()]);
        // The next leader proposes them without waiting for height 7 to be finalized.
        assert_eq!(
            pool.take_block(7, &rules(1_000_000, 1), 10, &Rich),
            vec![a0.clone(), a1.clone()]
        );
        // A finalized transaction never comes back, even if a copy's round failed later.
        pool.on_finalized(7, &[a0.clone(), a1.clone()]);
        pool.on_abandoned(&[a0, a1]);
        assert_eq!(pool.size(), PoolSize::default());
        assert!(
            pool.take_block(8, &rules(1_000_000, 1), 10, &Rich)
                .is_empty()
        );
    }

    #[test]
    fn fresh_transactions_are_handed_out_once() {
        let pool = TxPool::new();
        let (a0, b0) = (signed(11, 0, 1, 100), signed(12, 0, 1, 100));
        pool.insert(a0.clone(), 0, Instant::now()).unwrap();
        pool.insert(b0.clone(), 0, Instant::now()).unwrap();
        assert_eq!(pool.take_fresh(1), vec![a0.clone()]);
        // Taken into a block meanwhile: no longer waiting, not handed out.
        pool.take_block(1, &rules(1_000_000, 1), 10, &Rich);
        assert_eq!(pool.take_fresh(10), vec![]);
        assert_eq!(pool.get(&b0.hash()), Some(b0));
    }

    mod model {
        //! The pool against a few-line reference model: per sender, the next nonce and the set
        //! of pooled nonces, with the limits and eviction order of the module docs.
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;
        use std::collections::HashSet;

        const SENDERS: usize = 3;
        const SENDER_MAX: usize = 4;
        const POOL_MAX: usize = 7;
        const LIFETIME: Duration = Duration::from_secs(60);

        #[derive(Debug, Clone)]
        enum Op {
            Insert(usize, u64),
            Take,
            Commit,
            Expire,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0..SENDERS, 0u64..7).prop_map(|(s, n)| Op::Insert(s, n)),
                1 => Just(Op::Take),
                1 => Just(Op::Commit),
                1 => Just(Op::Expire),
            ]
        }

        #[derive(Default)]
        struct Model {
            next: [u64; SENDERS],
            chain: [u64; SENDERS],
            in_flight: [bool; SENDERS],
            pooled: [BTreeSet<u64>; SENDERS],
        }

        impl Model {
            fn pending_end(&self, s: usize) -> u64 {
                let mut n = self.next[s];
                while self.pooled[s].contains(&n) {
                    n += 1;
                }
                n
            }
            fn queued(&self, s: usize) -> Vec<u64> {
                let end = self.pending_end(s);
                self.pooled[s]
                    .iter()
                    .copied()
                    .filter(|n| *n > end)
                    .collect()
            }
            fn size(&self) -> PoolSize {
                let total: usize = self.pooled.iter().map(BTreeSet::len).sum();
                let pending: usize = (0..SENDERS)
                    .map(|s| (self.pending_end(s) - self.next[s]) as usize)
                    .sum();
                PoolSize {
                    pending,
                    queued: total - pending,
                }
            }
            fn insert(&mut self, s: usize, n: u64, addrs: &[Address]) -> Result<(), PoolError> {
                if !self.in_flight[s] {
                    self.next[s] = self.next[s].max(self.chain[s]);
                }
                if n < self.next[s] {
                    return Err(PoolError::NonceTooLow);
                }
                if self.pooled[s].contains(&n) {
                    return Err(PoolError::AlreadyKnown);
                }
                if self.pooled[s].len() >= SENDER_MAX {
                    let highest = self.queued(s).last().copied();
                    match highest {
                        Some(h) if n == self.pending_end(s) => self.pooled[s].remove(&h),
                        _ => return Err(PoolError::SenderLimit),
                    };
                }
                if self.pooled.iter().map(BTreeSet::len).sum::<usize>() >= POOL_MAX {
                    let victim = (0..SENDERS)
                        .map(|v| (self.queued(v).len(), addrs[v], v))
                        .filter(|(q, _, _)| *q > 0)
                        .max();
                    let Some((_, _, v)) = victim else {
                        return Err(PoolError::PoolFull);
                    };
                    let h = *self.queued(v).last().unwrap();
                    self.pooled[v].remove(&h);
                }
                self.pooled[s].insert(n);
                Ok(())
            }
        }

        /// What consensus does to the pool besides our own blocks: other leaders' proposals,
        /// finality (of ours or theirs), lost rounds and commits, in any order.
        #[derive(Debug, Clone)]
        enum Event {
            Insert(usize, u64),
            Take,
            Proposed(Vec<(usize, u64)>),
            Finalized(Vec<(usize, u64)>),
            AbandonLast,
            Commit,
        }

        fn event() -> impl Strategy<Value = Event> {
            let txs = || proptest::collection::vec((0..SENDERS, 0u64..7), 0..4);
            prop_oneof![
                4 => (0..SENDERS, 0u64..7).prop_map(|(s, n)| Event::Insert(s, n)),
                2 => Just(Event::Take),
                2 => txs().prop_map(Event::Proposed),
                2 => txs().prop_map(Event::Finalized),
                1 => Just(Event::AbandonLast),
                1 => Just(Event::Commit),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// The invariants hold after every consensus event, and a finalized transaction
            /// never comes back to the pool.
            #[test]
            fn pool_keeps_its_invariants_through_consensus(events in proptest::collection::vec(event(), 1..80)) {
                let pool = TxPool::with_config(PoolConfig {
                    txs_max: POOL_MAX,
                    sender_txs_max: SENDER_MAX,
                    queued_lifetime: LIFETIME,
                });
                let keys = [50u8, 51, 52];
                let tx = |(s, n): (usize, u64)| signed(keys[s], n, 1, 100);
                let (mut block, mut finalized_to) = (0u64, 0u64);
                let mut last: Vec<RecoveredTx> = Vec::new();
                let mut finalized: HashSet<B256> = HashSet::new();
                // Each sender's nonce after its finalized transactions, and in the state.
                let (mut final_next, mut state) = ([0u64; SENDERS], [0u64; SENDERS]);
                let addrs: Vec<Address> = keys.iter().map(|k| signed(*k, 0, 1, 1).sender()).collect();
                for event in events {
                    match event {
                        Event::Insert(s, n) => {
                            let _ = pool.insert(tx((s, n)), state[s], Instant::now());
                        }
                        Event::Take => {
                            block += 1;
                            last = pool.take_block(block, &rules(u64::MAX / 2, 1), 1_000, &Rich);
                        }
                        Event::Proposed(txs) => {
                            // Honest leaders build on the finalized chain: no nonce below it.
                            // (A byzantine copy of a finalized transaction is dropped at
                            // execution and leaves the pool at the commit after.)
                            block += 1;
                            last = txs.into_iter().filter(|&(s, n)| n >= final_next[s]).map(tx).collect();
                            pool.on_proposed(block, &last);
                        }
                        Event::Finalized(txs) => {
                            finalized_to = finalized_to.max(block.max(1));
                            let txs: Vec<_> = txs.into_iter().filter(|&(s, n)| n >= final_next[s]).collect();
                            for &(s, n) in &txs {
                                final_next[s] = final_next[s].max(n + 1);
                            }
                            let txs: Vec<_> = txs.into_iter().map(tx).collect();
                            finalized.extend(txs.iter().map(RecoveredTx::hash));
                            pool.on_finalized(finalized_to, &txs);
                        }
                        Event::AbandonLast => pool.on_abandoned(&std::mem::take(&mut last)),
                        Event::Commit => {
                            state = final_next;
                            pool.on_committed_reading(finalized_to, |a| {
                                addrs.iter().position(|x| *x == a).map_or(0, |s| state[s])
                            });
                        }
                    }
                    pool.assert_invariants();
                    let inner = pool.inner.lock();
                    for hash in &finalized {
                        prop_assert!(!inner.by_hash.contains_key(hash), "finalized tx back in the pool");
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn pool_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
                let pool = TxPool::with_config(PoolConfig {
                    txs_max: POOL_MAX,
                    sender_txs_max: SENDER_MAX,
                    queued_lifetime: LIFETIME,
                });
                let keys = [40u8, 41, 42];
                let addrs: Vec<Address> = keys.iter().map(|k| signed(*k, 0, 1, 100).sender()).collect();
                let mut model = Model::default();
                let (mut clock, mut block) = (Instant::now(), 0);
                for op in ops {
                    match op {
                        Op::Insert(s, n) => {
                            let got = pool.insert(signed(keys[s], n, 1, 100), model.chain[s], clock);
                            prop_assert_eq!(got.map(|_| ()), model.insert(s, n, &addrs));
                        }
                        Op::Take => {
                            block += 1;
                            let mut got: Vec<(Address, u64)> = pool
                                .take_block(block, &rules(u64::MAX / 2, 1), 1_000, &Rich)
                                .iter()
                                .map(|t| (t.sender(), t.nonce()))
                                .collect();
                            let mut want = Vec::new();
                            for (s, addr) in addrs.iter().enumerate() {
                                let end = model.pending_end(s);
                                for n in model.next[s]..end {
                                    model.pooled[s].remove(&n);
                                    want.push((*addr, n));
                                }
                                if end > model.next[s] {
                                    model.in_flight[s] = true;
                                    model.next[s] = end;
                                }
                            }
                            got.sort();
                            want.sort();
                            prop_assert_eq!(got, want);
                        }
                        Op::Commit => {
                            // Every block taken so far executes all its transactions.
                            for s in 0..SENDERS {
                                if model.in_flight[s] {
                                    model.chain[s] = model.next[s];
                                    model.in_flight[s] = false;
                                }
                            }
                            let chain = model.chain;
                            pool.on_committed_reading(block, |a| {
                                chain[addrs.iter().position(|x| *x == a).unwrap()]
                            });
                        }
                        Op::Expire => {
                            clock += LIFETIME + EXPIRY_INTERVAL;
                            pool.expire_queued(clock);
                            for s in 0..SENDERS {
                                for n in model.queued(s) {
                                    model.pooled[s].remove(&n);
                                }
                            }
                        }
                    }
                    pool.assert_invariants();
                    prop_assert_eq!(pool.size(), model.size());
                    for (s, addr) in addrs.iter().enumerate() {
                        let tracked = model.in_flight[s] || !model.pooled[s].is_empty();
                        prop_assert_eq!(
                            pool.pending_nonce(*addr),
                            tracked.then(|| model.pending_end(s))
                        );
                    }
                }
            }
        }
    }
}
