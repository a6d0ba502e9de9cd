//! Sequential executor vs parallel executor (2 workers) vs bare revm on the same blocks of 10,000
//! ETH transfers and 10,000 ERC-20 transfers over 100,000 funded accounts, in one run. Prints one
//! JSON line per workload with the medians and their ratios, then runs the criterion groups.

use alloy_consensus::{Header, Transaction};
use criterion::{BatchSize, Criterion, criterion_group};
use kestrel_benches::{
    FakeHashes, MemState, deploy_token, erc20_block, funded_state, transfer_block,
};
use kestrel_pipeline::{
    BlockInput, Executor, InvalidTxPolicy, ParallelExecutor, SequentialExecutor,
};
use kestrel_types::{ChainSpec, RecoveredTx};
use revm::{
    Context, ExecuteCommitEvm, MainBuilder, MainContext, context::TxEnv, database::CacheDB,
    primitives::TxKind,
};
use std::{num::NonZeroUsize, time::Instant};

const ACCOUNTS: u64 = 100_000;
const TXS: usize = 10_000;
const BASE_FEE: u64 = 7;
const SAMPLES: usize = 7;
/// Workers of the parallel executor (the bench machine has 2 cores).
const PARALLEL_THREADS: NonZeroUsize = NonZeroUsize::new(2).expect("non-zero");

struct Setup {
    name: &'static str,
    spec: ChainSpec,
    header: Header,
    state: MemState,
    txs: Vec<RecoveredTx>,
}

fn setup(name: &'static str) -> Setup {
    let (mut state, accounts) = funded_state(ACCOUNTS);
    let txs = match name {
        "transfers" => transfer_block(&accounts, TXS, BASE_FEE),
        "erc20" => {
            deploy_token(&mut state, &accounts);
            erc20_block(&accounts, TXS, BASE_FEE)
        }
        _ => unreachable!("unknown workload"),
    };
    let spec = ChainSpec::dev();
    let header = Header {
        number: 1,
        gas_limit: 1_000_000_000,
        base_fee_per_gas: Some(BASE_FEE),
        timestamp: 1,
        withdrawals_root: Some(alloy_consensus::constants::EMPTY_WITHDRAWALS),
        blob_gas_used: Some(0),
        excess_blob_gas: Some(0),
        parent_beacon_block_root: Some(Default::default()),
        ..Default::default()
    };
    Setup {
        name,
        spec,
        header,
        state,
        txs,
    }
}

fn parallel() -> ParallelExecutor {
    ParallelExecutor::new(PARALLEL_THREADS)
}

fn run_kestrel(s: &Setup, executor: &mut dyn Executor) -> u64 {
    let input = BlockInput {
        header: &s.header,
        txs: &s.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let out = executor
        .execute(&s.spec, input, &s.state, &FakeHashes)
        .expect("block executes");
    assert_eq!(out.receipts.len(), TXS, "every transfer included");
    assert!(
        out.receipts.iter().all(|r| r.status()),
        "every transfer succeeds"
    );
    out.gas_used
}

/// revm's own in-memory cache in front of the same state the Kestrel executor reads.
fn revm_db(s: &Setup) -> CacheDB<&MemState> {
    CacheDB::new(&s.state)
}

/// Bare revm: the same transactions through `transact_commit`, no block executor around it.
fn run_revm(s: &Setup, db: CacheDB<&MemState>) -> u64 {
    let mut evm = Context::mainnet()
        .with_db(db)
        .modify_cfg_chained(|c| c.chain_id = kestrel_benches::CHAIN_ID)
        .modify_block_chained(|b| {
            b.basefee = BASE_FEE;
            b.gas_limit = 1_000_000_000;
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
            kind: TxKind::Call(tx.tx().to().expect("transfer")),
            value: tx.tx().value(),
            data: tx.tx().input().clone(),
            nonce: tx.nonce(),
            chain_id: Some(kestrel_benches::CHAIN_ID),
            ..Default::default()
        };
        let result = evm.transact_commit(env).expect("transfer executes");
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

fn side_by_side(s: &Setup) {
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
            "bench": format!("executor_{}", s.name),
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
    for name in ["transfers", "erc20"] {
        let s = setup(name);
        side_by_side(&s);
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
