//! Encoding a 5,000-transaction block the ways the node does: the validator payload (the RLP list
//! `node/src/validator/payload.rs` builds, transactions as their EIP-2718 bytes) and the
//! transactions root (`pipeline/src/stages/execution.rs`). Each twice, side by side: re-encoding
//! every transaction (what the node did before transactions kept the bytes they arrived as) and
//! from the kept bytes (what it does now).
//!
//! Deterministic: the signed transfers of `transfer_block`; both ways are checked to give the same
//! bytes and the same root. Besides criterion's report, prints one JSON line (`{"bench":...}`) with
//! the median of 21 runs of each.
//!
//! `cargo bench -p kestrel-benches --bench encode`

use alloy_consensus::proofs::calculate_transaction_root;
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, Bytes};
use alloy_rlp::{Encodable, RlpEncodable};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kestrel_benches::{funded_state, transfer_block};
use kestrel_types::{RecoveredTx, transactions_root};
use std::{hint::black_box, time::Instant};

const TXS: usize = 5_000;
const RUNS: usize = 21;

/// The payload's wire layout (`PayloadWire` in node/src/validator/payload.rs).
#[derive(RlpEncodable)]
struct PayloadWire {
    beneficiary: Address,
    gas_limit: u64,
    base_fee: u64,
    txs: Vec<Bytes>,
}

fn payload(txs: &[RecoveredTx], tx_bytes: impl Fn(&RecoveredTx) -> Bytes) -> Vec<u8> {
    let wire = PayloadWire {
        beneficiary: Address::with_last_byte(1),
        gas_limit: 150_000_000,
        base_fee: 7,
        txs: txs.iter().map(tx_bytes).collect(),
    };
    let mut bytes = Vec::with_capacity(wire.length());
    wire.encode(&mut bytes);
    bytes
}

fn payload_reencoded(txs: &[RecoveredTx]) -> Vec<u8> {
    payload(txs, |tx| tx.tx().encoded_2718().into())
}

fn payload_kept(txs: &[RecoveredTx]) -> Vec<u8> {
    payload(txs, RecoveredTx::encoded)
}

/// As execution computed it before: the envelopes cloned out, each encoded into the trie.
fn root_reencoded(txs: &[RecoveredTx]) -> B256 {
    calculate_transaction_root(&txs.iter().map(|t| t.tx().clone()).collect::<Vec<_>>())
}

fn median_us<T>(f: impl Fn() -> T) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            black_box(f());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn block() -> Vec<RecoveredTx> {
    let (_, accounts) = funded_state(TXS as u64);
    let txs = transfer_block(&accounts, TXS, 7);
    assert_eq!(payload_reencoded(&txs), payload_kept(&txs));
    assert_eq!(root_reencoded(&txs), transactions_root(&txs));
    txs
}

fn side_by_side(_: &mut Criterion) {
    let txs = block();
    let figures = serde_json::json!({
        "bench": "encode_block",
        "txs": TXS,
        "payload_reencoded_us": median_us(|| payload_reencoded(&txs)).round(),
        "payload_kept_us": median_us(|| payload_kept(&txs)).round(),
        "tx_root_reencoded_us": median_us(|| root_reencoded(&txs)).round(),
        "tx_root_kept_us": median_us(|| transactions_root(&txs)).round(),
    });
    println!("{figures}");
}

fn criterion_groups(c: &mut Criterion) {
    let txs = block();
    let mut group = c.benchmark_group("encode_block");
    group.throughput(Throughput::Elements(TXS as u64));
    group.bench_function("payload_reencoded", |b| {
        b.iter(|| payload_reencoded(black_box(&txs)))
    });
    group.bench_function("payload_kept", |b| b.iter(|| payload_kept(black_box(&txs))));
    group.bench_function("tx_root_reencoded", |b| {
        b.iter(|| root_reencoded(black_box(&txs)))
    });
    group.bench_function("tx_root_kept", |b| {
        b.iter(|| transactions_root(black_box(&txs)))
    });
    group.finish();
}

criterion_group!(no_criterion_group, side_by_side);
criterion_group!(benches, criterion_groups);
criterion_main!(no_criterion_group, benches);
