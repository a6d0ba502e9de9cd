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

/// Consensus seen by one pool, with forks: this node's proposals and other leaders' (of any
/// pooled transactions), a proposal finalized at its height (the others up to it lose),
/// abandoned rounds, and execution in order (a transaction executes only at its sender's
/// nonce, else it is dropped).
#[derive(Debug, Clone)]
enum ForkEvent {
    Insert(usize, u64),
    Take,
    Proposed(Vec<(usize, u64)>),
    /// Finalizes the open proposal with this index (modulo how many are open).
    Finalize(usize),
    AbandonLast,
    Commit,
}

fn fork_event() -> impl Strategy<Value = ForkEvent> {
    let txs = || proptest::collection::vec((0..SENDERS, 0u64..7), 0..4);
    prop_oneof![
        4 => (0..SENDERS, 0u64..7).prop_map(|(s, n)| ForkEvent::Insert(s, n)),
        2 => Just(ForkEvent::Take),
        2 => txs().prop_map(ForkEvent::Proposed),
        2 => (0usize..8).prop_map(ForkEvent::Finalize),
        1 => Just(ForkEvent::AbandonLast),
        1 => Just(ForkEvent::Commit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Whatever fork each proposal is on, an admitted transaction stays findable in the pool
    /// (pooled or in flight) until its sender's executed nonce passes it: none is lost.
    #[test]
    fn no_admitted_transaction_is_lost_whatever_forks_leaders_build_on(
        events in proptest::collection::vec(fork_event(), 1..100)
    ) {
        // Limits out of reach and no expiry: nothing may leave for room or age.
        let pool = TxPool::new();
        let keys = [60u8, 61, 62];
        let tx = |(s, n): (usize, u64)| signed(keys[s], n, 1, 100);
        let addrs: Vec<Address> = keys.iter().map(|k| signed(*k, 0, 1, 1).sender()).collect();
        let sender = |a: Address| addrs.iter().position(|x| *x == a).expect("a test sender");
        let mut block = 0u64;
        // Proposals not finalized yet (height, transactions), finalized blocks not executed.
        let mut open: Vec<(u64, Vec<RecoveredTx>)> = Vec::new();
        let mut finalized: Vec<(u64, Vec<RecoveredTx>)> = Vec::new();
        let mut last: Vec<RecoveredTx> = Vec::new();
        let mut state = [0u64; SENDERS];
        let mut admitted: HashSet<(usize, u64)> = HashSet::new();
        for event in events {
            match event {
                ForkEvent::Insert(s, n) => {
                    if pool.insert(tx((s, n)), state[s], Instant::now()).is_ok() {
                        admitted.insert((s, n));
                    }
                }
                ForkEvent::Take => {
                    block += 1;
                    last = pool.take_block(block, &rules(u64::MAX / 2, 1), 1_000, &Rich);
                    open.push((block, last.clone()));
                }
                ForkEvent::Proposed(txs) => {
                    block += 1;
                    last = txs.into_iter().map(tx).collect();
                    pool.on_proposed(block, &last);
                    open.push((block, last.clone()));
                }
                ForkEvent::Finalize(i) => {
                    if open.is_empty() {
                        continue;
                    }
                    let (height, txs) = open.remove(i % open.len());
                    open.retain(|(h, _)| *h > height);
                    pool.on_finalized(height, &txs);
                    finalized.push((height, txs));
                }
                ForkEvent::AbandonLast => pool.on_abandoned(&std::mem::take(&mut last)),
                ForkEvent::Commit => {
                    for (height, txs) in finalized.drain(..) {
                        for t in &txs {
                            let s = sender(t.sender());
                            if t.nonce() == state[s] {
                                state[s] += 1;
                            }
                        }
                        pool.on_committed_reading(height, |a| state[sender(a)]);
                    }
                }
            }
            pool.assert_invariants();
            for &(s, n) in &admitted {
                prop_assert!(
                    n < state[s] || pool.get(&tx((s, n)).hash()).is_some(),
                    "sender {} nonce {} lost (state nonce {})", s, n, state[s]
                );
            }
        }
    }
}
