//! The commit thread's storage work per block, by history window (`kestrel-bench commit`): the
//! same random blocks (accounts changed, as transfers change senders and recipients, and slots
//! of one token contract, as ERC-20 transfers change balances) are applied, inserted and durably
//! committed into one store per window, the stores taking turns block by block so that a busy
//! machine slows each alike. Reported per window: the time per block (median and p90), the median of
//! its state part (changes applied and state root computed, `apply_state`), and the
//! bytes the commit wrote (what this process passed to write calls, `wchar` in `/proc/self/io`:
//! MDBX's pages, and separately the bytes appended to the block archive, `<store>/blocks/`), and
//! the database's size at the end. With `txs_per_block` 0 the blocks are empty: the state and
//! history side of the commit only; otherwise each block carries that many transactions and
//! receipts (an ERC-20 transfer's: one log), whose bytes go to the block archive.

use crate::store::{mdbx_share, written_bytes};
use alloy_consensus::{
    Eip658Value, Receipt, ReceiptEnvelope, ReceiptWithBloom, SignableTransaction, TxEip1559,
    TxEnvelope,
};
use alloy_primitives::{Address, B256, Bytes, Log, Signature, TxKind, U256, keccak256};
use kestrel_storage::{ARCHIVE_DIR, HistoryWindow, Store};
use kestrel_types::{
    AccountInfo, ChainSpec, RecoveredTx, SealedBlock, StateChanges, StorageChange,
    chain::GenesisAlloc,
};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::index::sample};
use serde_json::{Value, json};
use std::{collections::BTreeMap, path::Path, time::Instant};

/// What the blocks look like.
#[derive(Debug, Clone)]
pub struct Params {
    /// Funded accounts in the genesis state.
    pub accounts: usize,
    /// Accounts each block changes.
    pub accounts_per_block: usize,
    /// Token slots each block changes.
    pub slots_per_block: usize,
    /// Transactions (and receipts) each block carries.
    pub txs_per_block: usize,
    pub blocks: u64,
}

/// The token contract whose slots the blocks change.
const TOKEN: Address = Address::repeat_byte(0x70);

pub(crate) fn account(i: usize) -> Address {
    Address::from_word(keccak256((i as u64).to_be_bytes()))
}

fn genesis(params: &Params) -> ChainSpec {
    let mut spec = ChainSpec::dev();
    let balance = U256::from(10u64).pow(U256::from(21u64));
    for i in 0..params.accounts {
        spec.alloc.insert(
            account(i),
            GenesisAlloc {
                info: AccountInfo::with_balance(balance),
                code: None,
                storage: BTreeMap::new(),
            },
        );
    }
    let code = Bytes::from_static(&[0x60, 0x00, 0x54, 0x00]);
    spec.alloc.insert(
        TOKEN,
        GenesisAlloc {
            info: AccountInfo {
                code_hash: keccak256(&code),
                ..AccountInfo::default()
            },
            code: Some(code),
            storage: BTreeMap::new(),
        },
    );
    spec
}

/// Block `number`'s changes: distinct random accounts with a new nonce and balance, and random
/// token slots set.
fn changes(params: &Params, rng: &mut StdRng, number: u64) -> StateChanges {
    let mut out = StateChanges::default();
    for i in sample(
        rng,
        params.accounts,
        params.accounts_per_block.min(params.accounts),
    ) {
        let info = AccountInfo {
            nonce: number,
            balance: U256::from(rng.random::<u64>()),
            ..AccountInfo::default()
        };
        out.accounts.insert(account(i), Some(info));
    }
    let slots = (0..params.slots_per_block)
        .map(|_| {
            let holder = account(rng.random_range(0..params.accounts));
            (
                U256::from_be_bytes(holder.into_word().0),
                U256::from(rng.random::<u64>() | 1),
            )
        })
        .collect();
    out.storage.insert(
        TOKEN,
        StorageChange {
            wiped: false,
            slots,
        },
    );
    out
}

/// Block `number`'s transactions and receipts: token transfers from distinct accounts, each
/// receipt with one `Transfer` log. The signature is a fixed one and the sender is taken as
/// given: the commit stores what execution verified, it does not recover.
fn body(params: &Params, number: u64) -> (Vec<RecoveredTx>, Vec<ReceiptEnvelope>) {
    (0..params.txs_per_block)
        .map(|i| {
            let sender = account(i % params.accounts);
            let tx = TxEip1559 {
                chain_id: 1337,
                nonce: number,
                gas_limit: 60_000,
                max_fee_per_gas: 2_000_000_000,
                max_priority_fee_per_gas: 1,
                to: TxKind::Call(TOKEN),
                // Distinct calldata, so that each transaction has its own hash (and its own
                // entry in the transaction index), as in a real block.
                input: Bytes::from([[0xa9; 60].as_slice(), &(i as u64).to_be_bytes()].concat()),
                ..Default::default()
            };
            let tx = TxEnvelope::from(tx.into_signed(Signature::test_signature()));
            let log = Log::new_unchecked(
                TOKEN,
                vec![B256::repeat_byte(0xdd), sender.into_word(), B256::ZERO],
                Bytes::from(vec![0; 32]),
            );
            let receipt = Receipt {
                status: Eip658Value::Eip658(true),
                cumulative_gas_used: 52_000 * (i as u64 + 1),
                logs: vec![log],
            };
            (
                RecoveredTx::new_unchecked(tx, sender),
                ReceiptEnvelope::Eip1559(ReceiptWithBloom::from(receipt)),
            )
        })
        .unzip()
}

struct Run {
    window: HistoryWindow,
    _dir: tempfile::TempDir,
    store: Store,
    parent: SealedBlock,
    seconds: Vec<f64>,
    /// The state changes applied and the state root computed (`apply_state`), within `seconds`.
    state_seconds: Vec<f64>,
    /// Written by the process while this store committed, the archive's appends included.
    bytes: u64,
}

/// One store per window under `dir`, the same blocks into each; one JSON value per window.
pub fn run(dir: &Path, windows: &[HistoryWindow], params: &Params) -> eyre::Result<Vec<Value>> {
    let spec = genesis(params);
    let mut runs = Vec::new();
    for &window in windows {
        let tmp = tempfile::tempdir_in(dir)?;
        let store = Store::open(tmp.path())?.with_history(window);
        let parent = store.init_genesis(&spec)?;
        runs.push(Run {
            window,
            _dir: tmp,
            store,
            parent,
            seconds: Vec::new(),
            state_seconds: Vec::new(),
            bytes: 0,
        });
    }
    let mut rng = StdRng::seed_from_u64(1);
    let count = runs.len();
    for number in 1..=params.blocks {
        let changes = changes(params, &mut rng, number);
        let (txs, receipts) = body(params, number);
        // Each block a different store goes first, so none always follows another's writeback.
        for k in 0..count {
            let run = &mut runs[(k + number as usize) % count];
            let block = SealedBlock {
                txs: txs.clone(),
                receipts: receipts.clone(),
                ..run.parent.empty_child()
            };
            let (before, started) = (written_bytes()?, Instant::now());
            let mut writer = run.store.begin_block()?;
            // As the commit stage does: the body's fsync runs during the state root.
            writer.append_body(number, &block.txs, &block.receipts)?;
            let state_started = Instant::now();
            writer.apply_state(&changes)?;
            run.state_seconds
                .push(state_started.elapsed().as_secs_f64());
            writer.insert_block(&block)?;
            writer.commit()?;
            run.seconds.push(started.elapsed().as_secs_f64());
            run.bytes += written_bytes()? - before;
            run.parent = block;
        }
    }
    Ok(runs
        .into_iter()
        .map(|mut run| {
            run.seconds.sort_by(f64::total_cmp);
            run.state_seconds.sort_by(f64::total_cmp);
            let at = |q: f64| run.seconds[((run.seconds.len() - 1) as f64 * q) as usize] * 1e3;
            let state_ms_p50 = run.state_seconds[(run.state_seconds.len() - 1) / 2] * 1e3;
            let mib_per_block = |bytes: u64| {
                (bytes as f64 / params.blocks as f64 / 1048576.0 * 100.0).round() / 100.0
            };
            let archive = dir_size(&run._dir.path().join(ARCHIVE_DIR));
            json!({
                "bench": "commit",
                "history_blocks": run.window.to_string(),
                "blocks": params.blocks,
                "accounts": params.accounts,
                "accounts_per_block": params.accounts_per_block,
                "slots_per_block": params.slots_per_block,
                "txs_per_block": params.txs_per_block,
                "block_ms_p50": (at(0.5) * 10.0).round() / 10.0,
                "block_ms_p90": (at(0.9) * 10.0).round() / 10.0,
                "state_ms_p50": (state_ms_p50 * 10.0).round() / 10.0,
                "written_mib_per_block": mib_per_block(run.bytes),
                "archive_mib_per_block": mib_per_block(archive),
                "mdbx_written_mib_per_block": mib_per_block(mdbx_share(run.bytes, archive)),
                "db_mib": dir_size(run._dir.path()) >> 20,
            })
        })
        .collect())
}

pub(crate) fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
