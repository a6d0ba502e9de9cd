//! State root of one block over a 1,000,000-account state in MDBX: the incremental update and the
//! durable commit, next to the from-scratch root over the same state and raw keccak throughput.
//!
//! Deterministic: the state and every block come from fixed seeds, and each measured block's
//! incremental root is checked against the from-scratch root. Besides criterion's report, each
//! measurement prints one JSON line (`{"bench":...}`) on stdout.
//!
//! `cargo bench -p kestrel-benches --bench state_root`

use alloy_primitives::{Address, U256, keccak256};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kestrel_storage::Store;
use kestrel_types::{AccountInfo, StateChanges};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

const ACCOUNTS: u64 = 1_000_000;
/// Accounts written per block while building the state (one block per chunk, to show progress).
const BUILD_CHUNK: u64 = 100_000;
/// The first accounts are contracts with storage.
const CONTRACTS: u64 = 1_000;
const SLOTS_PER_CONTRACT: u64 = 16;
/// One block of ~5,000 transfers: 10,000 balances change.
const BALANCE_UPDATES: usize = 10_000;
/// ... and some contract storage.
const STORAGE_UPDATES: usize = 1_000;

fn address(i: u64) -> Address {
    Address::from_slice(&keccak256(i.to_be_bytes())[12..])
}

fn build_state(store: &Store) {
    let started = Instant::now();
    for chunk in 0..ACCOUNTS / BUILD_CHUNK {
        let mut changes = StateChanges::default();
        for i in chunk * BUILD_CHUNK..(chunk + 1) * BUILD_CHUNK {
            let info = AccountInfo {
                nonce: i % 7,
                ..AccountInfo::with_balance(U256::from(i))
            };
            changes.accounts.insert(address(i), Some(info));
            if i < CONTRACTS {
                let slots = &mut changes.storage.entry(address(i)).or_default().slots;
                for slot in 0..SLOTS_PER_CONTRACT {
                    slots.insert(U256::from(slot), U256::from(i * 100 + slot + 1));
                }
            }
        }
        let mut writer = store.begin_block().expect("begin");
        writer.apply_state(&changes).expect("apply");
        writer.commit().expect("commit");
        eprintln!(
            "built {} of {ACCOUNTS} accounts ({:.1} s)",
            (chunk + 1) * BUILD_CHUNK,
            started.elapsed().as_secs_f64()
        );
    }
}

/// One block: `BALANCE_UPDATES` accounts get a new balance and a higher nonce, and
/// `STORAGE_UPDATES` contract slots a new value.
fn random_block(rng: &mut StdRng) -> StateChanges {
    let mut changes = StateChanges::default();
    while changes.accounts.len() < BALANCE_UPDATES {
        let i = rng.random_range(0..ACCOUNTS);
        let info = AccountInfo {
            nonce: rng.random(),
            ..AccountInfo::with_balance(U256::from(rng.random::<u64>()))
        };
        changes.accounts.insert(address(i), Some(info));
    }
    for _ in 0..STORAGE_UPDATES {
        let contract = address(rng.random_range(0..CONTRACTS));
        let slot = U256::from(rng.random_range(0..2 * SLOTS_PER_CONTRACT));
        let value = U256::from(rng.random_range(0..4u64));
        changes
            .storage
            .entry(contract)
            .or_default()
            .slots
            .insert(slot, value);
    }
    changes
}

/// CPU time of this thread: `apply_state` runs on the calling thread, so this is its cost
/// without the time other processes on a shared machine take from it, less the account trie's
/// helper threads' (`kestrel_storage`'s parallel walk), which this does not count.
fn thread_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let nanos: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("ns");
    nanos as f64 / 1e9
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn state_root(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open");
    build_state(&store);
    let mut rng = StdRng::seed_from_u64(7);

    // Incremental root and commit of one block each iteration; the state moves on with every
    // block, so each iteration times fresh work.
    let (mut root_seconds, mut root_cpu_seconds, mut commit_seconds) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut group = c.benchmark_group("state_root");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    group.bench_function("incremental_10k_accounts_1k_slots", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let changes = random_block(&mut rng);
                let mut writer = store.begin_block().expect("begin");
                let (started, cpu_started) = (Instant::now(), thread_cpu_seconds());
                black_box(writer.apply_state(&changes).expect("apply"));
                let root_done = Instant::now();
                root_cpu_seconds.push(thread_cpu_seconds() - cpu_started);
                writer.commit().expect("commit");
                total += root_done - started;
                root_seconds.push((root_done - started).as_secs_f64());
                commit_seconds.push(root_done.elapsed().as_secs_f64());
            }
            total
        })
    });

    let mut scratch_seconds = Vec::new();
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("from_scratch_1m_accounts", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                let root = store.view(|r| r.state_root_from_scratch().expect("root"));
                black_box(root.expect("view"));
            }
            let elapsed = started.elapsed();
            scratch_seconds.push(elapsed.as_secs_f64() / iters as f64);
            elapsed
        })
    });
    group.finish();

    // The incremental root of the state after the last block equals the scratch root.
    let mut check = store.begin_block().expect("begin");
    let incremental = check.apply_state(&StateChanges::default()).expect("apply");
    drop(check);
    let scratch = store.view(|r| r.state_root_from_scratch().expect("root"));
    assert_eq!(
        incremental,
        scratch.expect("view"),
        "incremental root differs from scratch root"
    );

    for (bench, samples) in [
        ("state_root_incremental", &mut root_seconds),
        ("state_root_incremental_cpu", &mut root_cpu_seconds),
        ("state_root_commit", &mut commit_seconds),
    ] {
        if samples.is_empty() {
            continue; // filtered out
        }
        println!(
            r#"{{"bench":"{bench}","accounts":{ACCOUNTS},"updates":{BALANCE_UPDATES},"storage_updates":{STORAGE_UPDATES},"samples":{},"seconds":{:.6}}}"#,
            samples.len(),
            median(samples)
        );
    }
    if !scratch_seconds.is_empty() {
        println!(
            r#"{{"bench":"state_root_from_scratch","accounts":{ACCOUNTS},"slots":{},"seconds":{:.6}}}"#,
            CONTRACTS * SLOTS_PER_CONTRACT,
            median(&mut scratch_seconds)
        );
    }
}

fn keccak(c: &mut Criterion) {
    // Sizes of what the trie hashes: a key, an account leaf, a full branch node.
    let mut group = c.benchmark_group("keccak256");
    for size in [32usize, 110, 532] {
        let input = vec![0xabu8; size];
        const HASHES: u64 = 10_000;
        group.throughput(Throughput::Elements(HASHES));
        let mut per_hash = Vec::new();
        group.bench_function(format!("{size}B"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    for _ in 0..HASHES {
                        black_box(keccak256(black_box(&input)));
                    }
                }
                let elapsed = started.elapsed();
                per_hash.push(elapsed.as_secs_f64() / (iters * HASHES) as f64);
                elapsed
            })
        });
        if !per_hash.is_empty() {
            println!(
                r#"{{"bench":"keccak256","bytes":{size},"hashes_per_second":{:.0}}}"#,
                1.0 / median(&mut per_hash)
            );
        }
    }
    group.finish();
}

criterion_group!(benches, state_root, keccak);
criterion_main!(benches);
