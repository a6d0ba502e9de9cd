use super::*;
use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_primitives::map::HashMap;
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
        pool.get(&b.hash()),
        Some(b),
        "not executed: back in the pool"
    );
    assert_eq!(
        pool.size(),
        PoolSize {
            pending: 3,
            queued: 0
        }
    );
    // Nothing left to read: the state is not asked.
    assert_eq!(pool.take_block(10, &rules(1_000_000, 1), 1, &Rich).len(), 1);
    assert!(pool.on_committed(10, |_| Some(2), |_| panic!("read the state")));
    pool.assert_invariants();
}

/// A transaction execution dropped comes back while its nonce is ahead of its sender's; a copy
/// whose nonce executed does not.
#[test]
fn transactions_dropped_at_execution_come_back_while_their_nonce_is_ahead() {
    let pool = TxPool::new();
    let sender = signed(4, 0, 1, 100).sender();
    let (t0, t1) = (signed(4, 0, 1, 100), signed(4, 1, 1, 100));
    pool.insert(t0.clone(), 0, Instant::now()).unwrap();
    pool.insert(t1.clone(), 0, Instant::now()).unwrap();
    assert_eq!(
        pool.take_block(7, &rules(1_000_000, 1), 1, &Rich),
        std::slice::from_ref(&t0)
    );
    // Dropped at execution: the state nonce is still 0.
    pool.on_committed_reading(7, |_| 0);
    assert_eq!(pool.tracked_next_nonce(sender), Some(0));
    assert_eq!(
        pool.size(),
        PoolSize {
            pending: 2,
            queued: 0
        }
    );
    assert_eq!(
        pool.take_block(8, &rules(1_000_000, 1), 10, &Rich),
        [t0.clone(), t1.clone()]
    );
    // Another leader proposed t0 again for block 9; block 8 executed both, block 9 drops it.
    pool.on_proposed(9, std::slice::from_ref(&t0));
    pool.on_committed_reading(8, |_| 2);
    pool.on_committed_reading(9, |_| 2);
    assert_eq!(pool.size(), PoolSize::default());
    assert_eq!(pool.pending_nonce(sender), None);
}

/// A leader takes a sender's next nonce while the one before it is in flight in a proposal of
/// another fork (its own, of a round that failed): the block is finalized, execution drops the
/// transaction (nonce too high), and the proposal's transaction comes back only when its height
/// is finalized. Neither is lost: both are proposed again.
#[test]
fn a_nonce_taken_over_a_gap_on_another_fork_loses_nothing() {
    let pool = TxPool::new();
    let (t0, t1) = (signed(14, 0, 1, 100), signed(14, 1, 1, 100));
    pool.insert(t0.clone(), 0, Instant::now()).unwrap();
    assert_eq!(
        pool.take_block(5, &rules(1_000_000, 1), 10, &Rich),
        std::slice::from_ref(&t0)
    );
    pool.insert(t1.clone(), 0, Instant::now()).unwrap();
    assert_eq!(
        pool.take_block(7, &rules(1_000_000, 1), 10, &Rich),
        std::slice::from_ref(&t1)
    );
    pool.on_finalized(5, &[]);
    pool.on_finalized(7, std::slice::from_ref(&t1));
    assert_eq!(
        pool.get(&t0.hash()),
        Some(t0.clone()),
        "waits for the commit"
    );
    pool.on_committed_reading(5, |_| 0);
    pool.on_committed_reading(7, |_| 0);
    assert_eq!(
        pool.take_block(8, &rules(1_000_000, 1), 10, &Rich),
        [t0, t1]
    );
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

#[test]
fn forwarded_transactions_are_pooled_but_not_handed_out_for_forwarding() {
    let pool = TxPool::new();
    let (a0, b0) = (signed(13, 0, 1, 100), signed(14, 0, 1, 100));
    pool.insert_forwarded(a0.clone(), 0, Instant::now())
        .unwrap();
    pool.insert(b0.clone(), 0, Instant::now()).unwrap();
    assert_eq!(
        pool.take_fresh(10),
        vec![b0.clone()],
        "only our clients' one"
    );
    assert_eq!(pool.get(&a0.hash()), Some(a0.clone()));
    // Both are admissions subscribers hear of.
    assert_eq!(pool.admitted_since(0), (vec![a0.hash(), b0.hash()], 2));
}

mod model;
mod recovery;
