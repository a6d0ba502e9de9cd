//! Ingress against the pool: which transactions' senders are recovered, and which are taken
//! from the pool.

use super::*;

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

/// Recovery asks the cache again before each chunk and leaves each chunk's senders in it, so
/// a transaction met again later in the same batch (or by the payload decoder meanwhile) is
/// not recovered twice.
#[test]
fn a_sender_recovered_earlier_in_a_batch_is_not_recovered_again() {
    use kestrel_types::DecodedTx;
    let decoded = |tx: &RecoveredTx| DecodedTx::from(tx.tx().clone());
    let pool = TxPool::new();
    let repeated = signed(24, 0, 1, 100);
    let mut txs = vec![decoded(&repeated)];
    txs.extend((1..200).map(|n| decoded(&signed(25, n, 1, 100))));
    txs.push(decoded(&repeated));
    let (out, recovered) = recover_reusing(txs, Some(&pool));
    assert_eq!(recovered, 200, "the repeat came from the cache");
    assert_eq!(out.len(), 201);
    assert_eq!(out[200].as_ref().unwrap(), &repeated);
    // Without a pool every sender is recovered.
    let (_, recovered) = recover_reusing(vec![decoded(&repeated); 2], None);
    assert_eq!(recovered, 2);
}
