//! `kestrel replay`: re-executes committed blocks of a stopped node's datadir on the historical
//! state before each (`--history-blocks`), with the executor chosen, and compares the outcome
//! with what was committed: gas used, receipts root and logs bloom against the header, and every
//! account and slot the execution changed against the state the database holds after that block.
//! It is how a new executor or an upgrade is checked against a real chain.
//!
//! The state root itself is not recomputed: the trie holds only the head's state. Comparing each
//! changed value with the historical state after the block checks the same transition, key by
//! key, and names the key that differs.

use crate::cli::{ExecutorKind, ReplayArgs};
use alloy_consensus::proofs::calculate_receipt_root;
use alloy_primitives::{Address, B256, Bloom, U256};
use eyre::{WrapErr, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use kestrel_pipeline::{
    Executor, ParallelExecutor, SequentialExecutor,
    evm::BlockHashes,
    executor::{BlockInput, InvalidTxPolicy},
};
use kestrel_storage::{ChainView, Reader, StateView, StorageError, Store};
use kestrel_types::{ChainSpec, SealedBlock, StateChanges};

/// `BLOCKHASH` during a replay: every ancestor of a committed block is committed.
struct StoredHashes<'a, 's>(&'a Reader<'s>);

impl BlockHashes for StoredHashes<'_, '_> {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError> {
        Ok(self.0.block_hash(number)?.unwrap_or_default())
    }
}

pub fn run(args: &ReplayArgs) -> eyre::Result<()> {
    let spec = match &args.genesis {
        Some(path) => ChainSpec::from_genesis_file(path)?,
        None => ChainSpec::dev(),
    };
    let store = Store::open(&args.datadir).wrap_err("opening the database")?;
    let mut executor: Box<dyn Executor> = match args.executor {
        ExecutorKind::Sequential => Box::new(SequentialExecutor),
        ExecutorKind::Parallel => Box::new(ParallelExecutor::new(args.threads)),
    };
    let (head, oldest) = store.view(|r| -> Result<_, StorageError> {
        Ok((r.head()?.unwrap_or(0), r.history_oldest()?))
    })??;
    let from = args.from.max(1);
    let to = args.to.unwrap_or(head);
    ensure!(from <= to, "--from {from} is after --to {to}");
    ensure!(to <= head, "--to {to} is past the head, {head}");
    ensure!(
        from > oldest,
        "block {from} needs the state after block {}, but history starts at block {oldest}",
        from - 1
    );

    let progress = ProgressBar::new(to - from + 1).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} blocks, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    if args.quiet {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut matched, mut mismatched, mut txs) = (0u64, 0u64, 0usize);
    for number in from..=to {
        let problems =
            store.view(|reader| replay_block(&spec, executor.as_mut(), reader, number))??;
        txs += problems.1;
        if problems.0.is_empty() {
            matched += 1;
        } else {
            mismatched += 1;
            for problem in problems.0 {
                progress.suspend(|| println!("block {number}: {problem}"));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!("{matched} blocks matched, {mismatched} mismatched ({txs} transactions)");
    if mismatched > 0 {
        bail!("{mismatched} blocks differ from what was committed");
    }
    Ok(())
}

/// Re-executes block `number`; returns what differs from what was committed, and its
/// transaction count.
fn replay_block(
    spec: &ChainSpec,
    executor: &mut dyn Executor,
    reader: &Reader<'_>,
    number: u64,
) -> eyre::Result<(Vec<String>, usize)> {
    let block = reader
        .block(number)?
        .ok_or_else(|| eyre::eyre!("block {number} is not in the database"))?;
    let before = reader.state_at(number - 1)?;
    let hashes = StoredHashes(reader);
    let input = BlockInput {
        header: &block.header,
        txs: &block.txs,
        withdrawals: &[],
        policy: InvalidTxPolicy::Reject,
    };
    let output = executor
        .execute(spec, input, &before, &hashes)
        .wrap_err_with(|| format!("executing block {number}"))?;
    let mut problems = header_problems(&block, &output.receipts, output.gas_used);
    let after = reader.state_at(number)?;
    problems.extend(state_problems(&output.changes, &after)?);
    Ok((problems, block.txs.len()))
}

fn header_problems(
    block: &SealedBlock,
    receipts: &[alloy_consensus::ReceiptEnvelope],
    gas_used: u64,
) -> Vec<String> {
    let header = &block.header;
    let mut problems = Vec::new();
    if gas_used != header.gas_used {
        problems.push(format!(
            "gas used {gas_used}, committed {}",
            header.gas_used
        ));
    }
    let root = calculate_receipt_root(receipts);
    if root != header.receipts_root {
        problems.push(format!(
            "receipts root {root}, committed {}",
            header.receipts_root
        ));
    }
    let bloom = receipts
        .iter()
        .fold(Bloom::default(), |bloom, r| bloom | r.logs_bloom());
    if bloom != header.logs_bloom {
        problems.push("logs bloom differs".to_string());
    }
    problems
}

/// Each account and slot the replay changed, against the state after the block.
fn state_problems(
    changes: &StateChanges,
    after: &dyn StateView,
) -> Result<Vec<String>, StorageError> {
    let mut problems = Vec::new();
    for (address, account) in &changes.accounts {
        let committed = after.account(*address)?;
        if committed != *account {
            problems.push(format!(
                "account {address}: {account:?}, committed {committed:?}"
            ));
        }
    }
    for (address, change) in &changes.storage {
        if changes.accounts.get(address) == Some(&None) {
            continue;
        }
        for (slot, value) in &change.slots {
            check_slot(after, address, slot, value, &mut problems)?;
        }
    }
    Ok(problems)
}

fn check_slot(
    after: &dyn StateView,
    address: &Address,
    slot: &U256,
    value: &U256,
    problems: &mut Vec<String>,
) -> Result<(), StorageError> {
    let committed = after.storage(*address, *slot)?;
    if committed != *value {
        problems.push(format!(
            "slot {slot} of {address}: {value}, committed {committed}"
        ));
    }
    Ok(())
}
