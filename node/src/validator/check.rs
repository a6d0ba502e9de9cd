//! `kestrel check-datadir`: checks a stopped node's datadir offline, the way block sync checks a
//! peer's blocks and the way validators check each other's execution results. The block log must
//! be one hash chain from genesis whose every certificate is its child's QC and whose every commit
//! proof verifies against the validator set; each block in the database must be the execution of
//! the logged block at its height (same timestamp, beneficiary and base fee, its transactions a
//! subsequence of the payload's: execution drops what it cannot run); and each delayed execution
//! result a logged block carries must be the database's result for that height. The crash and
//! torture tests run it after every `kill -9`.

use super::{
    CONSENSUS_DIR, OWN_KEY_FILE, payload::Payload, store::ChainLog, sync::verify_chain,
    validator_set,
};
use crate::{cli::CheckArgs, keys::ValidatorKey, testnet};
use eyre::{WrapErr, bail, ensure};
use kestrel_storage::{ChainView, Store};

/// What a clean check saw; printed as one JSON line.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub log_height: u64,
    pub db_head: u64,
    /// Bytes of a torn last record (a crash mid-append); the next start drops them.
    pub torn_tail_bytes: u64,
    pub commit_proofs: u64,
    /// Blocks after the last commit proof (a crash between a commit's records).
    pub unproven_tail_blocks: u64,
    pub delayed_results: u64,
    pub txs_in_log: u64,
    pub txs_in_db: u64,
}

pub fn run(args: &CheckArgs) -> eyre::Result<()> {
    let report = check(args)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn check(args: &CheckArgs) -> eyre::Result<Report> {
    let validators = match args
        .genesis
        .as_deref()
        .map(testnet::read_validators)
        .transpose()?
        .flatten()
    {
        Some(validators) => validators,
        None => {
            let path = args.datadir.join(OWN_KEY_FILE);
            let key = ValidatorKey::load_own(&path).wrap_err_with(|| {
                format!("reading the chain's own validator key {}", path.display())
            })?;
            vec![super::alone(&key)]
        }
    };
    let set = validator_set(&validators)?;
    let (log, torn_tail_bytes) = ChainLog::open_read_only(&args.datadir.join(CONSENSUS_DIR))?;
    let store = Store::open(&args.datadir).wrap_err("opening the database")?;
    let db_head = store.view(|r| r.head())??.unwrap_or(0);
    ensure!(
        db_head <= log.height(),
        "the database is at block {db_head} but the block log ends at {}: a block was executed \
         before it was logged",
        log.height()
    );
    let mut report = Report {
        log_height: log.height(),
        db_head,
        torn_tail_bytes,
        ..Report::default()
    };
    // Checked one commit at a time: a commit's last block carries the proof of all of them.
    let mut head = kestrel_consensus::bft::CommittedBlock::genesis();
    let mut run = Vec::new();
    for height in 1..=log.height() {
        let synced = log.read(height)?;
        let proven = synced.proof.is_some();
        run.push(synced);
        if !proven {
            continue;
        }
        let payloads = verify_chain(&head, &run, &set, None)
            .wrap_err_with(|| format!("the block log from height {}", head.block.height + 1))?;
        report.commit_proofs += 1;
        for (synced, payload) in run.iter().zip(&payloads) {
            report.txs_in_log += payload.txs().len() as u64;
            check_against_db(&store, synced, payload, &mut report)?;
        }
        head = run.pop().expect("the proven block").committed();
        run.clear();
    }
    // A crash between the records of one commit leaves its first blocks without the proof that
    // its last would have carried; the restarted node finalizes them again.
    report.unproven_tail_blocks = run.len() as u64;
    Ok(report)
}

/// The database's block at the logged block's height, if executed, must be that block's
/// execution; the logged block's delayed result must be the database's.
fn check_against_db(
    store: &Store,
    synced: &super::wire::SyncedBlock,
    payload: &Payload,
    report: &mut Report,
) -> eyre::Result<()> {
    let height = synced.block.height;
    let ordered = payload.ordered_block(&synced.block);
    if let Some(result) = &synced.block.delayed_result {
        let ours = store.view(|r| r.block(result.number))??.map(|b| b.result());
        // A result for a block not yet executed here cannot be checked (the database is behind).
        if let Some(ours) = ours {
            ensure!(
                ours == *result,
                "block {height} carries the result {result:?} for block {}, the database has \
                 {ours:?}",
                result.number
            );
            report.delayed_results += 1;
        }
    }
    let Some(executed) = store.view(|r| r.block(height))?? else {
        return Ok(());
    };
    let header = &executed.header;
    ensure!(
        header.timestamp == ordered.timestamp_ms / 1000
            && header.beneficiary == ordered.beneficiary
            && header.base_fee_per_gas == Some(ordered.base_fee),
        "the database's block {height} is not the execution of the logged block (timestamp, \
         beneficiary or base fee differ)"
    );
    let mut logged = ordered.txs.iter().map(|tx| tx.hash());
    for tx in &executed.txs {
        if !logged.any(|hash| hash == tx.hash()) {
            bail!(
                "the database's block {height} holds transaction {} that the logged payload does \
                 not (or not in that order)",
                tx.hash()
            );
        }
    }
    report.txs_in_db += executed.txs.len() as u64;
    Ok(())
}
