//! `kestrel-bench` end to end (the real binary), and the result check it relies on: a block
//! result that is wrong in any of the ways the check looks at must be rejected.

use kestrel_benches::{
    FakeHashes,
    workload::{Bench, HOT, Params, TOKEN_A, Workload},
};
use kestrel_pipeline::{BlockInput, BlockOutput, Executor, InvalidTxPolicy, SequentialExecutor};
use serde_json::Value;
use std::process::Command;

/// Runs the real binary and parses every line it prints as JSON.
fn kestrel_bench_lines(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel-bench"))
        .args(args)
        .output()
        .expect("kestrel-bench runs");
    assert!(
        out.status.success(),
        "kestrel-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn kestrel_bench(args: &[&str]) -> Value {
    let mut lines = kestrel_bench_lines(args);
    assert_eq!(lines.len(), 1, "--json prints one line: {lines:?}");
    lines.pop().expect("one line")
}

#[test]
fn exec_prints_one_verified_json_line_per_workload() {
    for workload in ["raw", "erc20", "uniswap", "hot"] {
        let mut gas = Vec::new();
        for executor in ["sequential", "parallel"] {
            let line = kestrel_bench(&[
                "exec",
                "--workload",
                workload,
                "--txs",
                "300",
                "--accounts",
                "400",
                "--threads",
                "2",
                "--executor",
                executor,
                "--runs",
                "1",
                "--json",
            ]);
            assert_eq!(line["workload"], workload);
            assert_eq!(line["executor"], executor);
            assert_eq!(line["txs"], 300);
            assert_eq!(line["threads"], 2);
            assert_eq!(line["verified"], true);
            assert!(line["txs_per_s"].as_f64().expect("txs_per_s") > 0.0);
            assert!(line["gas_per_s"].as_f64().expect("gas_per_s") > 0.0);
            assert!(line["wall_time_s"].as_f64().expect("wall_time_s") > 0.0);
            assert!(line["reexecutions"].is_u64(), "{line}");
            gas.push(line["gas_used"].as_u64().expect("gas_used"));
        }
        assert_eq!(
            gas[0], gas[1],
            "{workload}: both executors spend the same gas"
        );
    }
}

#[test]
fn fully_contended_block_continues_sequentially() {
    let line = kestrel_bench(&[
        "compare",
        "--workload",
        "uniswap",
        "--pairs",
        "1",
        "--txs",
        "300",
        "--accounts",
        "400",
        "--runs",
        "1",
        "--json",
    ]);
    // Whether the block is abandoned depends on how the two threads interleave on a shared
    // machine (one thread running ahead meets few conflicts). What the rule guarantees: a block
    // that was not abandoned did not run its transactions about twice each (each re-execution
    // follows an abort, and more than a third of executions aborted abandons the block).
    let fell_back = line["parallel"]["sequential_fallback"] == true;
    let reexecutions = line["parallel"]["reexecutions"]
        .as_u64()
        .expect("reexecutions");
    assert!(fell_back || reexecutions < 300, "{line}");
    assert_eq!(line["verified"], true, "{line}");
    assert!(line["parallel_over_sequential"].as_f64().is_some());
}

fn executed(workload: Workload) -> (Bench, BlockOutput) {
    let bench = Bench::new(Params {
        workload,
        txs: 50,
        accounts: 60,
        hot_ratio: 0.5,
        pairs: 3,
    });
    let input = BlockInput {
        header: &bench.header,
        txs: &bench.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let out = SequentialExecutor
        .execute(&bench.spec, input, &bench.state, &FakeHashes)
        .expect("block executes");
    (bench, out)
}

#[test]
fn verify_rejects_wrong_results() {
    for workload in [
        Workload::Raw,
        Workload::Erc20,
        Workload::Uniswap,
        Workload::Hot,
    ] {
        let (bench, out) = executed(workload);
        bench.verify(&out).expect("the sequential result is right");

        let mut missing = out.clone();
        missing.included.pop();
        assert!(
            bench.verify(&missing).is_err(),
            "{workload:?}: a missing transaction"
        );
    }

    // One wei more for the hot account: ETH from nowhere.
    let (bench, mut out) = executed(Workload::Hot);
    let hot = out
        .changes
        .accounts
        .get_mut(&HOT)
        .expect("hot account paid")
        .as_mut()
        .expect("exists");
    hot.balance += alloy_primitives::U256::from(1);
    assert!(bench.verify(&out).is_err(), "minted ETH");

    // One token more for some holder: supply changed.
    let (bench, mut out) = executed(Workload::Uniswap);
    let slots = &mut out
        .changes
        .storage
        .get_mut(&TOKEN_A)
        .expect("token A moved")
        .slots;
    let value = slots.values_mut().next().expect("a changed balance");
    *value += alloy_primitives::U256::from(1);
    assert!(bench.verify(&out).is_err(), "minted tokens");
}

/// `kestrel-bench archive` prints one verified line per record size, pattern and I/O path,
/// with io_uring's lines only where io_uring is there.
#[test]
fn archive_prints_one_verified_json_line_per_size_pattern_and_io_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 temp dir");
    let lines = kestrel_bench_lines(&[
        "archive",
        "--record-bytes",
        "300,20000",
        "--blocks",
        "50",
        "--runs",
        "1",
        "--dir",
        dir,
        "--json",
    ]);
    let uring = kestrel_benches::archive::uring_available();
    assert_eq!(lines.len(), if uring { 8 } else { 4 }, "{lines:?}");
    for line in &lines {
        assert_eq!(line["bench"], "archive");
        assert_eq!(line["verified"], true);
        assert_eq!(line["blocks"], 50);
        assert!(line["appends_per_s"].as_f64().expect("appends_per_s") > 0.0);
        let fsyncs = line["fsyncs"].as_u64().expect("fsyncs");
        match line["pattern"].as_str() {
            // Each block waited for: one group each, plus the segment header's.
            Some("sync_each") => assert!((50..=51).contains(&fsyncs), "{line}"),
            Some("grouped") => assert!((1..=51).contains(&fsyncs), "{line}"),
            other => panic!("pattern {other:?}"),
        }
    }
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["io"].as_str()).collect();
    assert!(paths.contains(&"pwrite"));
    assert_eq!(paths.contains(&"io_uring"), uring);
}

/// `kestrel-bench store` prints one line per state size, each with the state written, blocks
/// committed on it and its last root equal to the root from scratch (else it fails).
#[test]
fn store_prints_one_checked_json_line_per_state_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 temp dir");
    let lines = kestrel_bench_lines(&[
        "store",
        "--accounts",
        "3000,20000",
        "--txs-per-block",
        "500",
        "--blocks",
        "3",
        "--dir",
        dir,
        "--json",
    ]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, accounts) in lines.iter().zip([3000, 20000]) {
        assert_eq!(line["bench"], "store");
        assert_eq!(line["accounts"], accounts);
        assert_eq!(line["blocks"], 3);
        for field in ["root_ms_p50", "commit_ms_p50", "root_commit_ms_p90"] {
            assert!(line[field].as_f64().expect(field) > 0.0, "{line}");
        }
        // 500 transfers change about 1,000 accounts: some pages at least.
        assert!(line["mdbx_written_mib_per_block"].as_f64().expect("mib") > 0.0);
        assert!(line["blocks_rss_max_mib"].as_u64().expect("rss") > 0);
    }
    // Two different states.
    assert_ne!(lines[0]["state_root"], lines[1]["state_root"]);
    // Each store is removed once measured.
    assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 0);
}

/// `kestrel-bench pool` drives the pool block by block and fails unless every block takes a
/// block's worth and the pool ends holding exactly its backlog; it prints one line.
#[test]
fn pool_prints_one_json_line_after_its_own_checks() {
    let line = kestrel_bench(&[
        "pool",
        "--senders",
        "6000",
        "--block-txs",
        "500",
        "--backlog",
        "1000",
        "--blocks",
        "12",
        "--json",
    ]);
    assert_eq!(line["bench"], "pool");
    assert_eq!(line["block_txs"], 500);
    // The first window + 1 blocks fill the pipeline and are left out.
    assert_eq!(line["blocks"], 8, "{line}");
    let us = |field: &str| {
        line[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{field}: {line}"))
    };
    for field in [
        "take_block_us_p50",
        "finalize_commit_us_p50",
        "cycle_us_p50",
    ] {
        assert!(us(field) > 0.0, "{line}");
    }
    assert!(us("take_block_us_p50") <= us("take_block_us_p90"), "{line}");
    assert!(us("take_block_us_p50") < us("cycle_us_p50"), "{line}");
}

/// Senders that would send again while still in flight make no steady state: refused, with
/// the reason, rather than measured.
#[test]
fn pool_refuses_too_few_senders() {
    let out = Command::new(env!("CARGO_BIN_EXE_kestrel-bench"))
        .args(["pool", "--senders", "1000", "--block-txs", "500", "--json"])
        .output()
        .expect("kestrel-bench runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too few senders"), "{stderr}");
    assert!(out.stdout.is_empty(), "no figure printed");
}

/// `kestrel-bench recover` checks every recovered sender against its signer and prints one line.
#[test]
fn recover_prints_one_checked_json_line() {
    let line = kestrel_bench(&["recover", "--txs", "300", "--runs", "3", "--json"]);
    assert_eq!(line["bench"], "recover");
    assert_eq!(line["txs"], 300);
    let (median, fastest) = (
        line["us_each_median"].as_f64().expect("median"),
        line["us_each_fastest"].as_f64().expect("fastest"),
    );
    assert!(fastest > 0.0 && fastest <= median, "{line}");
}
