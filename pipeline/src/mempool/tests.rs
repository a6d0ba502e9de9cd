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

/// Ingress takes the sender of a transaction the pool holds, pooled or in flight, from the pool
/// instead of recovering it: the hash is of the exact signed bytes. Different bytes (the same
/// transaction signed with the other parity, or a broken signature) hash differently, so they
/// are recovered, and get their own sender or none. Senders recovered are remembered after the
/// transaction leaves the pool, or when it never entered it; admission still decides as before.
#[test]
fn ingress_recovers_only_transactions_the_pool_does_not_know() {
    use alloy_eips::eip2718::Encodable2718;
    let pool = TxPool::new();
    let (pooled, in_flight, new) = (
        signed(21, 0, 1, 100),
        signed(22, 0, 1, 100),
        signed(23, 0, 1, 100),
    );
    pool.insert(pooled.clone(), 0, Instant::now()).unwrap();
    pool.on_proposed(1, std::slice::from_ref(&in_flight));
    let TxEnvelope::Eip1559(signed_tx) = pooled.tx().clone() else {
        unreachable!()
    };
    let sig = *signed_tx.signature();
    let resigned = |sig: Signature| -> alloy_primitives::Bytes {
        TxEnvelope::Eip1559(signed_tx.tx().clone().into_signed(sig))
            .encoded_2718()
            .into()
    };
    let other_parity = resigned(Signature::new(sig.r(), sig.s(), !sig.v()));
    let broken = resigned(Signature::new(sig.r(), U256::ZERO, sig.v()));
    let validator = Validator::new(
        std::sync::Arc::new(kestrel_types::ChainSpec::dev()),
        30_000_000,
    );
    let check = |raws: Vec<alloy_primitives::Bytes>| {
        ingress::recover_batch(
            &validator,
            &pool,
            raws.into_iter(),
            false,
            ingress::unix_secs(),
            1,
        )
    };
    let (results, recoveries) = check(vec![
        pooled.encoded(),
        in_flight.encoded(),
        new.encoded(),
        other_parity,
        broken,
    ]);
    assert_eq!(recoveries, 3, "the new one and the two with other bytes");
    assert_eq!(results[0], Ok(pooled.clone()));
    assert_eq!(results[1], Ok(in_flight));
    assert_eq!(results[2], Ok(new.clone()));
    let flipped = results[3].clone().unwrap();
    assert_ne!(flipped.hash(), pooled.hash());
    assert_ne!(flipped.sender(), pooled.sender());
    assert_eq!(results[4], Err(PoolError::InvalidSender));
    // The pool still refuses what it holds.
    assert_eq!(
        pool.insert(pooled, 0, Instant::now()),
        Err(PoolError::AlreadyKnown)
    );

    // `new` was not admitted (say its sender was unfunded then). Sent again, its sender is
    // remembered, and it is admitted now.
    let (results, recoveries) = check(vec![new.encoded()]);
    assert_eq!((&results, recoveries), (&vec![Ok(new.clone())], 0));
    pool.insert(new.clone(), 0, Instant::now()).unwrap();
    // Proposed and committed: gone from the pool. A late forwarded copy still needs no
    // recovery, and the state's nonce refuses it.
    pool.take_block(2, &rules(1_000_000, 1), 10, &Rich);
    pool.on_committed_reading(2, |_| 1);
    assert_eq!(pool.get(&new.hash()), None);
    let (results, recoveries) = check(vec![new.encoded()]);
    assert_eq!((&results, recoveries), (&vec![Ok(new.clone())], 0));
    assert_eq!(
        pool.insert(new, 1, Instant::now()),
        Err(PoolError::NonceTooLow)
    );
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
