//! `ef-tests`: runs the Ethereum BlockchainTests through Kestrel's block import (header rules,
//! execution, state root, commit to MDBX) and compares the final head and state.
//!
//! Prints `FAIL <test>: block <n>: <field>: expected <x>, got <y>` for each failing test, then
//! `N passed, N failed, N skipped`; exits with 1 if any test failed, 2 on a usage error.

mod fixture;
mod runner;

use crate::{
    fixture::BlockchainTest,
    runner::{Failure, Outcome},
};
use clap::{Parser, ValueEnum};
use eyre::WrapErr;
use kestrel_pipeline::{Executor, ParallelExecutor, SequentialExecutor};
use std::{
    cell::Cell,
    collections::BTreeMap,
    num::NonZeroUsize,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
};

#[derive(Debug, Parser)]
#[command(
    name = "ef-tests",
    about = "Run Ethereum BlockchainTests through Kestrel's block import"
)]
struct Args {
    /// Which executor runs the blocks.
    #[arg(long, value_enum, default_value_t = ExecutorKind::Sequential)]
    executor: ExecutorKind,
    /// Test-runner worker threads; each runs whole test files.
    #[arg(long, default_value_t = default_threads())]
    threads: NonZeroUsize,
    /// Threads the parallel executor runs each block on (default: `--threads`).
    #[arg(long)]
    exec_threads: Option<NonZeroUsize>,
    /// With `--executor parallel`: blocks with fewer transactions run sequentially. The
    /// fixtures' blocks are small, so the default 0 sends every block through the parallel path.
    #[arg(long, default_value_t = 0)]
    parallel_min_txs: usize,
    /// Run only the tests whose name or file path contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Test files or folders (searched recursively for `.json` files).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExecutorKind {
    Sequential,
    Parallel,
}

fn default_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

fn executor(args: &Args) -> Box<dyn Executor> {
    match args.executor {
        ExecutorKind::Sequential => Box::new(SequentialExecutor),
        ExecutorKind::Parallel => Box::new(
            ParallelExecutor::new(args.exec_threads.unwrap_or(args.threads))
                .with_min_txs(args.parallel_min_txs),
        ),
    }
}

/// The result of one test, in the order the tests are reported.
struct Report {
    name: String,
    outcome: Outcome,
}

fn main() -> eyre::Result<ExitCode> {
    let args = Args::parse();
    let mut files = Vec::new();
    for path in &args.paths {
        collect_json(path, &mut files).wrap_err_with(|| format!("reading {}", path.display()))?;
    }
    files.sort();

    let reports = run_files(&files, &args)?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for report in reports.iter().flatten() {
        match &report.outcome {
            Outcome::Passed => passed += 1,
            Outcome::Skipped => skipped += 1,
            Outcome::Failed(Failure {
                block,
                field,
                expected,
                got,
            }) => {
                failed += 1;
                println!(
                    "FAIL {}: block {block}: {field}: expected {expected}, got {got}",
                    report.name
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `path` if it is a file, else every `.json` file below it.
fn collect_json(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        files.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let path = entry?.path();
        if path.is_dir() || path.extension().is_some_and(|e| e == "json") {
            collect_json(&path, files)?;
        }
    }
    Ok(())
}

/// Runs the files on `args.threads` workers, each taking the next file not yet taken. Returns
/// the reports per file, in the order of `files`.
fn run_files(files: &[PathBuf], args: &Args) -> eyre::Result<Vec<Vec<Report>>> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<eyre::Result<Vec<Report>>>> = Vec::new();
    results.resize_with(files.len(), || None);
    let done = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads.get())
            .map(|_| {
                scope.spawn(|| {
                    let mut executor = executor(args);
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(index) else {
                            return done;
                        };
                        done.push((
                            index,
                            run_file(file, args.filter.as_deref(), &mut *executor),
                        ));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("worker threads catch test panics"))
            .collect::<Vec<_>>()
    });
    for (index, result) in done {
        results[index] = Some(result);
    }
    results
        .into_iter()
        .map(|result| result.expect("every file is run"))
        .collect()
}

/// Runs the tests of one file (in name order) that match `filter`.
fn run_file(
    file: &Path,
    filter: Option<&str>,
    executor: &mut dyn Executor,
) -> eyre::Result<Vec<Report>> {
    let text =
        std::fs::read_to_string(file).wrap_err_with(|| format!("reading {}", file.display()))?;
    let tests: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&text).wrap_err_with(|| format!("parsing {}", file.display()))?;
    let path = file.to_string_lossy();
    let mut reports = Vec::new();
    for (name, value) in tests {
        if filter.is_some_and(|f| !name.contains(f) && !path.contains(f)) {
            continue;
        }
        let test: BlockchainTest = serde_json::from_value(value)
            .wrap_err_with(|| format!("parsing test {name} in {}", file.display()))?;
        let outcome = run_catching_panics(&test, executor);
        reports.push(Report { name, outcome });
    }
    Ok(reports)
}

/// A panic (a broken invariant in Kestrel) fails the test it happened in, not the whole run.
fn run_catching_panics(test: &BlockchainTest, executor: &mut dyn Executor) -> Outcome {
    let progress = Cell::new(0);
    catch_unwind(AssertUnwindSafe(|| runner::run(test, executor, &progress))).unwrap_or_else(
        |panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("non-string panic");
            Outcome::Failed(Failure {
                block: progress.get(),
                field: "panic".into(),
                expected: "no panic".into(),
                got: message.into(),
            })
        },
    )
}
