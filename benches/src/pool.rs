//! `kestrel-bench pool`: the transaction pool in the steady state of a loaded validator, one
//! block at a time as the node drives it: a block's worth of transfers admitted, the block taken
//! (`TxPool::take_block`, under the pool's lock, which holds ingress off meanwhile), finalized,
//! and the block `window` heights below committed. Senders are used round-robin, each with its
//! nonces in order, as `kestrel-loadgen` sends; `backlog` more pending transactions than a block
//! holds wait in the pool throughout (an overloaded chain). Balances come from memory, so the
//! figure is the pool's own work, not the state reads behind it.
//!
//! Transactions carry a fixed dummy signature and their sender set directly: the pool trusts the
//! sender ingress recovered, and signing hundreds of thousands would take longer than the run.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_primitives::{Address, Signature, TxKind, U256, map::HashMap};
use kestrel_pipeline::mempool::{BalanceOf, Balances, BlockRules, TxPool};
use kestrel_types::{BlockNumber, Fork, RecoveredTx};
use std::time::{Duration, Instant};

/// What the run simulates.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub senders: usize,
    pub block_txs: usize,
    /// Pending transactions beyond a block's worth, waiting throughout.
    pub backlog: usize,
    pub blocks: u64,
    /// Blocks between a block's finality and its commit (in flight meanwhile).
    pub window: u64,
}

/// Each block's time in `take_block`, in finality and commit (`on_finalized`, `on_committed`
/// of the block `window` below), and in the whole cycle (admission included).
#[derive(Debug, Default)]
pub struct PoolRun {
    pub take: Vec<Duration>,
    pub settle: Vec<Duration>,
    pub cycle: Vec<Duration>,
}

const BASE_FEE: u64 = 7;

struct MemBalances(U256);

impl Balances for MemBalances {
    fn with_balances(&self, f: &mut dyn FnMut(BalanceOf<'_>)) {
        f(&|_| self.0)
    }
}

fn sender(i: usize) -> Address {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    Address::from(bytes)
}

fn sender_index(sender: Address) -> usize {
    u64::from_be_bytes(sender[..8].try_into().expect("eight bytes")) as usize - 1
}

fn transfer(from: Address, nonce: u64, tip: u128) -> RecoveredTx {
    let tx = TxEip1559 {
        chain_id: crate::CHAIN_ID,
        nonce,
        gas_limit: 21_000,
        max_fee_per_gas: u128::from(BASE_FEE) * 2 + tip,
        max_priority_fee_per_gas: tip,
        to: TxKind::Call(from),
        value: U256::from(1),
        ..Default::default()
    };
    let sig = Signature::new(U256::from(1), U256::from(1), false);
    RecoveredTx::new_unchecked(TxEnvelope::Eip1559(tx.into_signed(sig)), from)
}

/// Runs the simulation; every block must take exactly `block_txs` transactions.
pub fn run(p: &Params) -> eyre::Result<PoolRun> {
    eyre::ensure!(
        p.senders > p.block_txs * (p.window as usize + 1) + p.backlog,
        "too few senders: each must be out of flight before it sends again"
    );
    let pool = TxPool::new();
    let balances = MemBalances(U256::from(10).pow(U256::from(21)));
    let rules = BlockRules {
        chain_id: crate::CHAIN_ID,
        fork: Fork::Prague,
        gas_limit: 21_000 * p.block_txs as u64,
        base_fee: BASE_FEE,
    };
    // Each sender's next nonce to send, and its nonce in the last committed state.
    let mut nonces = vec![0u64; p.senders];
    let mut state_nonces = vec![0u64; p.senders];
    let mut next_sender = 0usize;
    let mut admit = |count: usize, state_nonces: &[u64], now: Instant| -> eyre::Result<()> {
        for _ in 0..count {
            let i = next_sender;
            next_sender = (next_sender + 1) % p.senders;
            // Tips spread over a few values, so the heap orders across senders.
            let tx = transfer(sender(i), nonces[i], 1 + (i % 13) as u128);
            pool.insert(tx, state_nonces[i], now)
                .map_err(|e| eyre::eyre!("sender {i}: {e}"))?;
            nonces[i] += 1;
        }
        Ok(())
    };
    admit(p.backlog, &state_nonces, Instant::now())?;
    let mut blocks: HashMap<BlockNumber, Vec<RecoveredTx>> = HashMap::default();
    let mut run = PoolRun::default();
    for number in 1..=p.blocks {
        let started = Instant::now();
        admit(p.block_txs, &state_nonces, started)?;
        let take = Instant::now();
        let txs = pool.take_block(number, &rules, usize::MAX, &balances);
        run.take.push(take.elapsed());
        eyre::ensure!(
            txs.len() == p.block_txs,
            "block {number} took {} of {}",
            txs.len(),
            p.block_txs
        );
        let settle = Instant::now();
        pool.on_finalized(number, &txs);
        blocks.insert(number, txs);
        if let Some(done) = number.checked_sub(p.window).filter(|n| *n > 0) {
            let txs = blocks.remove(&done).expect("block taken");
            let after: HashMap<Address, u64> =
                txs.iter().map(|tx| (tx.sender(), tx.nonce() + 1)).collect();
            let committed = pool.on_committed(
                done,
                |s| after.get(&s).copied(),
                |_| unreachable!("every sender in flight under the block is in it"),
            );
            eyre::ensure!(committed, "commit of block {done} refused");
            for (sender, nonce) in after {
                state_nonces[sender_index(sender)] = nonce;
            }
        }
        run.settle.push(settle.elapsed());
        run.cycle.push(started.elapsed());
    }
    let size = pool.size();
    eyre::ensure!(
        size.pending == p.backlog && size.queued == 0,
        "pool ended with {size:?}, not the backlog of {}",
        p.backlog
    );
    Ok(run)
}
