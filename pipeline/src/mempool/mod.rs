//! The transaction pool and the ingress stage in front of it.
//!
//! Per-sender queues ordered by nonce: the run of nonces starting at the sender's next nonce is
//! *pending* (executable), the rest is *queued* (waiting for a gap to fill). Ordering takes pending
//! transactions by tip; a taken transaction is *in flight* until the block holding it commits.
//!
//! With several validators a proposal is not final when made: the transactions of any leader's
//! proposal are in flight here too ([`TxPool::on_proposed`]), a finalized block advances its
//! senders' nonces ([`TxPool::on_finalized`]), and the transactions of proposals that lost
//! (another block was finalized at their height) come back to the pool. A transaction leaves
//! for good only when a commit shows its nonce executed ([`TxPool::on_committed`]): one that a
//! committed block did not execute comes back, so no leader's choice of fork loses it.
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
mod in_flight;
mod ingress;
mod inner;
mod senders;
mod validate;

pub use error::PoolError;
pub use ingress::{INGRESS_QUEUE_MAX, IngressHandle, IngressStage, decode_and_check};
pub use senders::{SENDER_CACHE_SLOTS, recover_reusing};
pub use validate::{BlockRules, TX_SIZE_MAX, Validator, check_static, max_cost};

use crate::state::LatestState;
use alloy_primitives::{Address, B256, U256};
use in_flight::InFlight;
use inner::{Inner, SenderQueue};
use kestrel_types::{BlockNumber, RecoveredTx};
use parking_lot::Mutex;
use senders::SenderCache;
use std::time::{Duration, Instant};

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

/// Transactions ordering left out because their sender's balance, less the maximum cost of its
/// transactions in flight, does not cover them, by `action`: `waits` or `dropped`.
pub const UNPAYABLE: &str = "kestrel_ordering_unpayable_txs_total";

/// Transactions dropped for room, by `reason`: `gap_fill` (a sender at its limit sent its next
/// nonce), `pool_full` or `sender_full` (one coming back from a block finds no room).
const EVICTED: &str = "kestrel_mempool_evicted_total";
const REPLACED: &str = "kestrel_mempool_replaced_total";
/// Transactions back in the pool after leaving for a block that did not take them, by reason.
const RETURNED: &str = "kestrel_mempool_returned_total";

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
    /// Senders of transactions recovered lately, also after they left the pool.
    recent: SenderCache,
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
            recent: SenderCache::default(),
        }
    }

    /// A transaction waiting in the pool or in a proposed block that has not committed yet.
    pub fn get(&self, hash: &B256) -> Option<RecoveredTx> {
        let inner = self.inner.lock();
        if let Some(f) = inner.in_flight.get(hash) {
            return Some(f.tx().clone());
        }
        let sender = inner.by_hash.get(hash)?;
        inner.senders[sender]
            .txs
            .values()
            .find(|p| p.tx.hash() == *hash)
            .map(|p| p.tx.clone())
    }

    /// The senders of the transactions with these hashes that are waiting in the pool or in
    /// flight, or were recovered lately ([`TxPool::remember_senders`]); `None` for the others.
    /// Each was recovered from the very bytes the hash is of (`senders.rs` says why that is
    /// safe).
    pub fn known_senders(&self, hashes: &[B256]) -> Vec<Option<Address>> {
        let mut senders: Vec<Option<Address>> = {
            let inner = self.inner.lock();
            hashes
                .iter()
                .map(|hash| {
                    inner
                        .by_hash
                        .get(hash)
                        .copied()
                        .or_else(|| inner.in_flight.get(hash).map(|f| f.tx().sender()))
                })
                .collect()
        };
        self.recent.fill(hashes, &mut senders);
        senders
    }

    /// Remembers the senders of `txs`, just recovered, for [`TxPool::known_senders`] after the
    /// transactions have left the pool (or never entered it: another leader's proposal).
    pub fn remember_senders<'a>(&self, txs: impl IntoIterator<Item = &'a RecoveredTx>) {
        self.recent
            .insert(txs.into_iter().map(|tx| (tx.hash(), tx.sender())));
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
        PoolSize {
            pending: inner.pending,
            queued: inner.by_hash.len() - inner.pending,
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

    /// Inserts a validated transaction our clients sent, admitted at `now`. `state_nonce` is
    /// the sender's nonce in the latest state. It is fresh: `take_fresh` gives it out once for
    /// forwarding.
    pub fn insert(
        &self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
    ) -> Result<B256, PoolError> {
        self.admit(tx, state_nonce, now, true)
    }

    /// As [`Self::insert`], for a transaction another node forwarded: not forwarded again (its
    /// sender forwarded it to the leaders it had to reach; sending it on would bring every
    /// other validator a second copy).
    pub(crate) fn insert_forwarded(
        &self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
    ) -> Result<B256, PoolError> {
        self.admit(tx, state_nonce, now, false)
    }

    fn admit(
        &self,
        tx: RecoveredTx,
        state_nonce: u64,
        now: Instant,
        fresh: bool,
    ) -> Result<B256, PoolError> {
        let mut inner = self.inner.lock();
        let sender = tx.sender();
        let result = inner.insert(tx, state_nonce, now, fresh);
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
            if let Some(f) = inner.in_flight.remove_if(&tx.hash(), |f| !f.finalized) {
                inner.put_back(f.into_tx(), "abandoned");
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
        // Every transaction in flight in no final block is listed under a block of
        // `unfinalized`; at or below `number` none is left after this.
        let later = inner.unfinalized.split_off(&(number + 1));
        let unfinalized = std::mem::replace(&mut inner.unfinalized, later);
        let lost: Vec<B256> = unfinalized
            .iter()
            .filter_map(|n| inner.by_block.get(n))
            .flatten()
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
                inner.put_back(f.into_tx(), "lost");
            }
        }
        inner.debug_check();
    }

    /// Up to `max` transactions our clients sent (`insert`) admitted since the last call and
    /// still waiting in the pool, oldest first (to forward them to the next leaders).
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

    /// Block `number` is committed: its transactions and any other in flight under it leave
    /// flight. One execution did not take (it dropped it, or it was in a proposal that lost and
    /// is still here) goes back to the pool while its nonce is ahead of its sender's, so that
    /// no leader's choice loses a transaction; pooled nonces below the sender's are gone for
    /// good. Senders whose last in-flight block it was go back to their nonce after it, which
    /// also un-sticks senders whose transactions were dropped at execution. Reserved costs are
    /// released with the transactions: the state now shows what they spent.
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
        // was marked under that block, so these are all candidates (entries may be stale); a
        // sender listed twice is resolved once.
        let mut senders = Vec::new();
        let mut seen: alloy_primitives::map::HashSet<Address> = Default::default();
        for (hash, sender) in inner
            .by_block
            .range(..=number)
            .flat_map(|(_, marked)| marked)
        {
            let leaves = || {
                inner
                    .in_flight
                    .get(hash)
                    .is_some_and(|f| f.number <= number)
            };
            let done = || {
                inner
                    .senders
                    .get(sender)
                    .is_some_and(|q| q.in_flight_until.is_some_and(|n| n <= number))
            };
            if !seen.contains(sender) && (leaves() || done()) {
                seen.insert(*sender);
                senders.push(*sender);
            }
        }
        let mut nonces: Vec<Option<u64>> = senders.iter().map(|&s| block_nonce(s)).collect();
        let unseen: Vec<Address> = senders
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
        let nonce_of: alloy_primitives::map::HashMap<Address, u64> = senders
            .into_iter()
            .zip(
                nonces
                    .into_iter()
                    .map(|n| n.expect("every sender's nonce resolved")),
            )
            .collect();
        let later = inner.by_block.split_off(&(number + 1));
        let marked = std::mem::replace(&mut inner.by_block, later);
        // Whatever is listed at or below `number` leaves flight below.
        inner.unfinalized = inner.unfinalized.split_off(&(number + 1));
        let mut left = Vec::new();
        for (hash, _) in marked.into_values().flatten() {
            left.extend(
                inner
                    .in_flight
                    .remove_if(&hash, |f| f.number <= number)
                    .map(InFlight::into_tx),
            );
        }
        for (&sender, &state_nonce) in &nonce_of {
            let queue = inner.senders.get_mut(&sender).expect("listed sender");
            if queue.in_flight_until.is_some_and(|n| n <= number) {
                queue.in_flight_until = None;
                queue.next_nonce = state_nonce;
                queue.finalized_next = state_nonce;
            }
            let stale: Vec<u64> = queue.txs.range(..state_nonce).map(|(n, _)| *n).collect();
            inner.recount(sender);
            for nonce in stale {
                inner.remove_tx(sender, nonce);
            }
        }
        for tx in left {
            if tx.nonce() >= nonce_of[&tx.sender()] {
                inner.put_back(tx, "not_executed");
            }
        }
        for sender in nonce_of.keys() {
            inner.forget_if_idle(*sender);
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

#[cfg(test)]
mod tests;
