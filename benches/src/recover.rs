//! `kestrel-bench recover`: sender recovery on one thread, the way ingress and the payload
//! decoder recover (`kestrel_pipeline::mempool::recover_reusing`, here without a pool to reuse
//! senders from), over signed transfers of distinct senders. Recovery is half of a loaded
//! validator's CPU; this measures what one core recovers a second, for comparing builds (the C
//! flags in `.cargo/config.toml`) and machines.

use crate::{funded_state, transfer_block};
use kestrel_pipeline::mempool::recover_reusing;
use kestrel_types::RecoveredTx;
use std::time::Instant;

/// One run's result.
#[derive(Debug, Clone, Copy)]
pub struct RecoverRun {
    pub txs: usize,
    pub seconds: f64,
}

impl RecoverRun {
    pub fn per_second(&self) -> f64 {
        self.txs as f64 / self.seconds
    }
    pub fn micros_each(&self) -> f64 {
        self.seconds * 1e6 / self.txs as f64
    }
}

/// Signs `txs` transfers, then recovers their senders `runs` times from freshly decoded
/// transactions; each run's senders are checked against the signers. Returns the runs.
pub fn run(txs: usize, runs: usize) -> eyre::Result<Vec<RecoverRun>> {
    let (_, accounts) = funded_state(txs as u64);
    let signed = transfer_block(&accounts, txs, 7);
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs {
        let decoded = signed
            .iter()
            .map(|tx| RecoveredTx::decode(tx.encoded()))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        let (recovered, count) = recover_reusing(decoded, None);
        let seconds = started.elapsed().as_secs_f64();
        eyre::ensure!(count == txs, "{count} recoveries for {txs} transactions");
        for (tx, expected) in recovered.into_iter().zip(&signed) {
            let sender = tx?.sender();
            eyre::ensure!(
                sender == expected.sender(),
                "recovered {sender} for {}",
                expected.sender()
            );
        }
        results.push(RecoverRun { txs, seconds });
    }
    Ok(results)
}
