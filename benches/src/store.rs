//! The store at scale (`kestrel-bench store`), per state size: a state of that many funded
//! accounts written by the bulk genesis writer (timed, its peak RSS read), then blocks of random
//! transfers committed as the commit stage commits them. Each transfer's sender and recipient
//! are drawn from the whole state (so a block of 10,000 changes about 20,000 accounts, plus the
//! fee recipient); the block's body is appended to the block archive first, then
//! `apply_state` writes the state and computes the incremental root ("root"), then
//! `insert_block` and the MDBX commit ("commit"), whose archive wait is included. The commit
//! returns with its pages in the page cache; the store's sync thread flushes them during the
//! next blocks, and `begin_block` ("begin", not in root or commit) waits when it is
//! `UNSYNCED_COMMITS_MAX` commits behind. Reported with it: the sync thread's flushes (count,
//! mean, longest), the steady commits it made, and the final sync after the last block.
//!
//! Reported per size: the time to build the allocation and to write it, the root, commit and
//! root-plus-commit time per block (median and p90), the MDBX bytes written per block (this
//! process's write calls, less the archive's growth where the archive writes through them), the peak RSS of the state's write, the
//! largest RSS after a block (and what is resident at the end, split into heap and mapped
//! database pages), and the datadir's size on disk. The last block's root is
//! checked against a root computed from scratch over the whole state.

use crate::commit::{account, dir_size};
use alloy_consensus::{
    Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, SignableTransaction, TxEip1559,
    TxEnvelope,
};
use alloy_primitives::{Address, Signature, TxKind, U256};
use kestrel_storage::{
    ARCHIVE_DIR, GenesisProgress, HistoryWindow, StateView, Store,
    archive::{IoChoice, IoMode},
};
use kestrel_types::{
    AccountInfo, ChainSpec, RecoveredTx, SealedBlock, StateChanges, chain::GenesisAlloc,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

/// What the state and the blocks look like.
#[derive(Debug, Clone)]
pub struct Params {
    /// Funded accounts in the state.
    pub accounts: usize,
    /// Transfers in each block.
    pub txs_per_block: usize,
    pub blocks: u64,
    pub history: HistoryWindow,
    /// Draw a progress bar on stderr while the state is written.
    pub progress: bool,
}

/// What each account holds at genesis: 1,000 ETH, never spent in a run.
const BALANCE_WEI: u64 = 1_000_000_000_000_000_000;
const GAS_PRICE_WEI: u64 = 1_000_000_000;
const TRANSFER_GAS: u64 = 21_000;
/// Fee recipient of every block (not in the genesis state: block 1 creates it).
const BENEFICIARY: Address = Address::repeat_byte(0xbe);

fn genesis(accounts: usize) -> ChainSpec {
    let mut spec = ChainSpec::dev();
    spec.alloc.clear();
    let info = AccountInfo::with_balance(U256::from(BALANCE_WEI) * U256::from(1000));
    for i in 0..accounts {
        let alloc = GenesisAlloc {
            info,
            code: None,
            storage: BTreeMap::new(),
        };
        spec.alloc.insert(account(i), alloc);
    }
    spec
}

/// One block of random transfers over the state in `store`: its transactions, receipts and
/// state changes (the touched accounts read from the committed state).
fn block(
    store: &Store,
    params: &Params,
    rng: &mut StdRng,
) -> eyre::Result<(Vec<RecoveredTx>, Vec<ReceiptEnvelope>, StateChanges)> {
    let transfers: Vec<(Address, Address, U256)> = (0..params.txs_per_block)
        .map(|_| {
            let from = account(rng.random_range(0..params.accounts));
            let to = account(rng.random_range(0..params.accounts));
            (from, to, U256::from(rng.random_range(1..1_000_000_000u64)))
        })
        .collect();
    let mut accounts = BTreeMap::<Address, AccountInfo>::new();
    store.view(|reader| -> eyre::Result<()> {
        for address in transfers
            .iter()
            .flat_map(|(from, to, _)| [*from, *to])
            .chain([BENEFICIARY])
        {
            if let std::collections::btree_map::Entry::Vacant(entry) = accounts.entry(address) {
                entry.insert(reader.account(address)?.unwrap_or_default());
            }
        }
        Ok(())
    })??;
    let fee = U256::from(TRANSFER_GAS * GAS_PRICE_WEI);
    let mut txs = Vec::with_capacity(transfers.len());
    let mut receipts = Vec::with_capacity(transfers.len());
    for (i, (from, to, value)) in transfers.into_iter().enumerate() {
        let sender = accounts.get_mut(&from).expect("read above");
        let tx = TxEip1559 {
            chain_id: 1337,
            nonce: sender.nonce,
            gas_limit: TRANSFER_GAS,
            max_fee_per_gas: GAS_PRICE_WEI.into(),
            max_priority_fee_per_gas: 0,
            to: TxKind::Call(to),
            value,
            ..Default::default()
        };
        sender.nonce += 1;
        sender.balance -= value + fee;
        accounts.get_mut(&to).expect("read above").balance += value;
        accounts.get_mut(&BENEFICIARY).expect("read above").balance += fee;
        let tx = TxEnvelope::from(tx.into_signed(Signature::test_signature()));
        // The sender is taken as given: the commit stores what execution verified.
        txs.push(RecoveredTx::new_unchecked(tx, from));
        let receipt = Receipt {
            status: Eip658Value::Eip658(true),
            cumulative_gas_used: TRANSFER_GAS * (i as u64 + 1),
            logs: Vec::new(),
        };
        receipts.push(ReceiptEnvelope::Eip1559(ReceiptWithBloom::from(receipt)));
    }
    let mut changes = StateChanges::default();
    changes
        .accounts
        .extend(accounts.into_iter().map(|(a, info)| (a, Some(info))));
    Ok((txs, receipts, changes))
}

/// Whether the block archive's appends are in [`written_bytes`]: only on the pwrite fallback.
/// The archive writes through io_uring where it can (the store opens it with
/// [`IoChoice::Auto`], resolved the same way here), and the kernel counts an io_uring write in no
/// process's `wchar`.
pub(crate) fn archive_in_written_bytes() -> bool {
    IoMode::resolve(IoChoice::Auto).is_ok_and(|mode| mode == IoMode::Pwrite)
}

/// MDBX's share of `written` bytes, of which the archive grew by `archived`.
pub(crate) fn mdbx_share(written: u64, archived: u64) -> u64 {
    match archive_in_written_bytes() {
        true => written.saturating_sub(archived),
        false => written,
    }
}

/// Bytes this process has passed to write calls (`wchar`). Not `write_bytes`: that counts what
/// ext4 writes back, which for pages MDBX rewrites in place within fallocated space came to 4 to
/// 5 times the bytes MDBX wrote (`strace` of the pwrites of a 10,000,000-account block: 285 MiB;
/// `write_bytes`: 1,560 MiB).
pub(crate) fn written_bytes() -> eyre::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| eyre::eyre!("no wchar in /proc/self/io"))
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> eyre::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .ok_or_else(|| eyre::eyre!("no {field} in /proc/self/status"))
}

/// Bytes the files under `dir` occupy on disk (sparse files count what is allocated).
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn progress_bar(params: &Params) -> indicatif::ProgressBar {
    let bar = if params.progress {
        indicatif::ProgressBar::new(params.accounts as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} accounts",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn ms(seconds: f64) -> f64 {
    (seconds * 1e4).round() / 10.0
}

/// One state size in a fresh store under `dir` (removed afterwards); one JSON value.
pub fn run(dir: &Path, params: &Params) -> eyre::Result<Value> {
    eyre::ensure!(params.accounts > 0 && params.blocks > 0, "an empty run");
    let tmp = tempfile::tempdir_in(dir)?;
    let started = Instant::now();
    let spec = genesis(params.accounts);
    let alloc_s = started.elapsed().as_secs_f64();

    let store = Store::open(tmp.path())?.with_history(params.history);
    let bar = progress_bar(params);
    let started = Instant::now();
    let mut parent = store.init_genesis_with_progress(&spec, &mut |p: GenesisProgress| {
        bar.set_position(p.done);
    })?;
    let build_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let build_peak_rss = status_bytes("VmHWM")?;
    let build_disk = disk_bytes(tmp.path());
    drop(spec);

    let archive = tmp.path().join(ARCHIVE_DIR);
    let mut rng = StdRng::seed_from_u64(1);
    let (mut root_s, mut commit_s, mut total_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut begin_s = Vec::new();
    let (mut mdbx_bytes, mut blocks_rss) = (0, 0);
    let mut root = parent.header.state_root;
    for number in 1..=params.blocks {
        let (txs, receipts, changes) = block(&store, params, &mut rng)?;
        let (written, archived) = (written_bytes()?, dir_size(&archive));
        // Waits when the sync thread is `UNSYNCED_COMMITS_MAX` commits behind.
        let begun = Instant::now();
        let mut writer = store.begin_block()?;
        begin_s.push(begun.elapsed().as_secs_f64());
        // As the commit stage does: the body's write and fsync run during the state root.
        writer.append_body(number, &txs, &receipts)?;
        let started = Instant::now();
        root = writer.apply_state(&changes)?;
        let rooted = Instant::now();
        let block = SealedBlock {
            txs,
            receipts,
            ..parent.empty_child()
        };
        writer.insert_block(&block)?;
        writer.commit()?;
        let done = Instant::now();
        root_s.push((rooted - started).as_secs_f64());
        commit_s.push((done - rooted).as_secs_f64());
        total_s.push((done - started).as_secs_f64());
        mdbx_bytes += mdbx_share(written_bytes()? - written, dir_size(&archive) - archived);
        parent = block;
        // Sampled after each block rather than `VmHWM` reset after the build: the allocation's
        // freed memory is still resident for a while after it is dropped.
        blocks_rss = blocks_rss.max(status_bytes("VmRSS")?);
    }
    // The sync thread's work: its flushes overlap the next blocks; what is left at the end.
    let sync = store.sync_stats();
    let started = Instant::now();
    store.sync()?;
    let final_sync_s = started.elapsed().as_secs_f64();
    // What is resident at the end, split: the heap, and the database's pages mapped by reads
    // (which the kernel may drop under memory pressure).
    let (rss_anon, rss_file) = (status_bytes("RssAnon")?, status_bytes("RssFile")?);

    let started = Instant::now();
    let scratch = store.view(|reader| reader.state_root_from_scratch())??;
    let scratch_root_s = started.elapsed().as_secs_f64();
    eyre::ensure!(
        scratch == root,
        "incremental root {root} differs from the root from scratch {scratch}"
    );

    let quantile = |times: &mut Vec<f64>, q: f64| ms(crate::quantile(times, q));
    let mib = |bytes: u64| (bytes as f64 / 1048576.0 * 10.0).round() / 10.0;
    Ok(json!({
        "bench": "store",
        "accounts": params.accounts,
        "txs_per_block": params.txs_per_block,
        "blocks": params.blocks,
        "history_blocks": params.history.to_string(),
        "alloc_s": (alloc_s * 10.0).round() / 10.0,
        "build_s": (build_s * 10.0).round() / 10.0,
        "build_peak_rss_mib": build_peak_rss >> 20,
        "build_disk_mib": build_disk >> 20,
        "root_ms_p50": quantile(&mut root_s, 0.5),
        "root_ms_p90": quantile(&mut root_s, 0.9),
        "commit_ms_p50": quantile(&mut commit_s, 0.5),
        "commit_ms_p90": quantile(&mut commit_s, 0.9),
        "root_commit_ms_p50": quantile(&mut total_s, 0.5),
        "root_commit_ms_p90": quantile(&mut total_s, 0.9),
        "begin_ms_p50": quantile(&mut begin_s, 0.5),
        "begin_ms_max": quantile(&mut begin_s, 1.0),
        "sync_flushes": sync.flushes,
        "sync_flush_ms_mean": ms(sync.flush_seconds / sync.flushes.max(1) as f64),
        "sync_flush_ms_max": ms(sync.flush_seconds_max),
        "sync_steady": sync.steady,
        "sync_waits": sync.waits,
        "sync_wait_ms_total": ms(sync.wait_seconds),
        "final_sync_ms": ms(final_sync_s),
        "mdbx_written_mib_per_block": mib(mdbx_bytes / params.blocks),
        "blocks_rss_max_mib": blocks_rss >> 20,
        "end_rss_anon_mib": rss_anon >> 20,
        "end_rss_file_mib": rss_file >> 20,
        "disk_mib": disk_bytes(tmp.path()) >> 20,
        "scratch_root_s": (scratch_root_s * 10.0).round() / 10.0,
        "state_root": root,
    }))
}
