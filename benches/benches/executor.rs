//! Sequential executor vs parallel executor (2 threads) vs bare revm on the same blocks of
//! 10,000 transactions over 100,000 funded accounts, in one run, for each workload of
//! `kestrel-bench` (ETH transfers, ERC-20 transfers, swaps over 100 pairs, transfers half of
//! which pay one hot account). Prints one JSON line per workload with the medians and their
//! ratios, then runs the criterion groups.

use alloy_consensus::Transaction;
use criterion::{BatchSize, Criterion, criterion_group};
use kestrel_benches::{
    FakeHashes, MemState,
    workload::{BASE_FEE, Bench, GAS_LIMIT, Params, Workload},
};
use kestrel_pipeline::{
    BlockInput, Executor, InvalidTxPolicy, ParallelExecutor, SequentialExecutor,
};
use revm::{
    Context, ExecuteCommitEvm, MainBuilder, MainContext, context::TxEnv, database::CacheDB,
    primitives::TxKind,
};
use std::{num::NonZeroUsize, time::Instant};

const ACCOUNTS: u64 = 100_000;
const TXS: usize = 10_000;
const SAMPLES: usize = 7;
/// Threads of the parallel executor (the bench machine has 2 cores).
const PARALLEL_THREADS: NonZeroUsize = NonZeroUsize::new(2).expect("non-zero");

fn setup(workload: Workload) -> Bench {
    Bench::new(Params {
        workload,
        txs: TXS,
        accounts: ACCOUNTS,
        hot_ratio: 0.5,
        pairs: 100,
    })
}

fn parallel() -> ParallelExecutor {
    ParallelExecutor::new(PARALLEL_THREADS)
}

fn run_kestrel(s: &Bench, executor: &mut dyn Executor) -> u64 {
    let input = BlockInput {
        header: &s.header,
        txs: &s.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let out = executor
        .execute(&s.spec, input, &s.state, &FakeHashes)
        .expect("block executes");
    out.gas_used
}

/// revm's own in-memory cache in front of the same state the Kestrel executor reads.
fn revm_db(s: &Bench) -> CacheDB<&MemState> {
    CacheDB::new(&s.state)
}

/// Bare revm: the same transactions through `transact_commit`, no block executor around it.
fn run_revm(s: &Bench, db: CacheDB<&MemState>) -> u64 {
    let mut evm = Context::mainnet()
        .with_db(db)
        .modify_cfg_chained(|c| c.chain_id = kestrel_benches::CHAIN_ID)
        .modify_block_chained(|b| {
            b.basefee = BASE_FEE;
            b.gas_limit = GAS_LIMIT;
            b.number = revm::primitives::U256::from(1);
        })
        .build_mainnet();
    let mut gas = 0;
    for tx in &s.txs {
        let env = TxEnv {
            tx_type: 2,
            caller: tx.sender(),
            gas_limit: tx.gas_limit(),
            gas_price: tx.tx().max_fee_per_gas(),
            gas_priority_fee: tx.tx().max_priority_fee_per_gas(),
            kind: TxKind::Call(tx.tx().to().expect("a call")),
            value: tx.tx().value(),
            data: tx.tx().input().clone(),
            nonce: tx.nonce(),
            chain_id: Some(kestrel_benches::CHAIN_ID),
            ..Default::default()
        };
        let result = evm.transact_commit(env).expect("transaction executes");
        assert!(result.is_success());
        gas += result.tx_gas_used();
    }
    gas
}

fn median_secs(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..SAMPLES).map(|_| f()).collect();
    v.sort_by(f64::total_cmp);
    v[SAMPLES / 2]
}

fn side_by_side(name: &str, s: &Bench) {
    // Both must spend the same gas on the same block: the cheapest check that they did the same work.
    let expected_gas = run_revm(s, revm_db(s));
    let kestrel = median_secs(|| {
        let t = Instant::now();
        assert_eq!(run_kestrel(s, &mut SequentialExecutor), expected_gas);
        t.elapsed().as_secs_f64()
    });
    let parallel = median_secs(|| {
        let mut executor = parallel();
        let t = Instant::now();
        assert_eq!(run_kestrel(s, &mut executor), expected_gas);
        t.elapsed().as_secs_f64()
    });
    let revm = median_secs(|| {
        let db = revm_db(s);
        let t = Instant::now();
        assert_eq!(run_revm(s, db), expected_gas);
        t.elapsed().as_secs_f64()
    });
    println!(
        "{}",
        serde_json::json!({
            "bench": format!("executor_{name}"),
            "accounts": ACCOUNTS,
            "txs": TXS,
            "kestrel_sequential_txs_per_s": (TXS as f64 / kestrel).round(),
            "kestrel_parallel_threads": PARALLEL_THREADS.get(),
            "kestrel_parallel_txs_per_s": (TXS as f64 / parallel).round(),
            "parallel_over_sequential": (kestrel / parallel * 1000.0).round() / 1000.0,
            "bare_revm_txs_per_s": (TXS as f64 / revm).round(),
            "kestrel_over_revm": (revm / kestrel * 1000.0).round() / 1000.0,
        })
    );
}

fn benches(c: &mut Criterion) {
    for (name, workload) in [
        ("transfers", Workload::Raw),
        ("erc20", Workload::Erc20),
        ("uniswap", Workload::Uniswap),
        ("hot", Workload::Hot),
    ] {
        let s = setup(workload);
        side_by_side(name, &s);
        let mut group = c.benchmark_group(format!("{name}_10k"));
        group.sample_size(10);
        group.bench_function("kestrel_sequential", |b| {
            b.iter(|| run_kestrel(&s, &mut SequentialExecutor))
        });
        group.bench_function("kestrel_parallel_2", |b| {
            b.iter(|| run_kestrel(&s, &mut parallel()))
        });
        group.bench_function("bare_revm", |b| {
            b.iter_batched(|| revm_db(&s), |db| run_revm(&s, db), BatchSize::LargeInput)
        });
        group.finish();
    }
}

criterion_group!(executor, benches);
criterion::criterion_main!(executor);
