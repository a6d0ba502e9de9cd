//! The end-of-run checks: every transaction the node accepted is in a block, and a sample of
//! accounts holds exactly the ETH, token balance and nonce its included transactions imply.

use crate::{
    client::{Client, quantity, quantity_u256},
    setup::read_each,
    track::{ACCEPTED, REJECTED, Tracker},
    workload::{Account, Kind, Spec},
};
use alloy_primitives::{Address, B256, U256, map::HashMap};
use eyre::eyre;
use rand::{SeedableRng, rngs::StdRng, seq::index};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;

/// Most problems spelled out one by one (the rest are counted).
const PROBLEMS_LISTED_MAX: usize = 10;
/// `balanceOf(address)`.
const BALANCE_OF_SELECTOR: &str = "70a08231";

/// The hot accounts and a seeded random choice of the others, as account indices.
pub fn sample(accounts: &[Account], n: usize, hot: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5a5a);
    let mut out: Vec<usize> = (0..hot.min(accounts.len())).collect();
    out.extend(index::sample(
        &mut rng,
        accounts.len(),
        n.min(accounts.len()),
    ));
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    pub balance: U256,
    pub nonce: u64,
    pub token: U256,
}

pub async fn read_state(
    client: &mut Client,
    accounts: &[Account],
    sample: &[usize],
    token: Address,
) -> eyre::Result<Vec<AccountState>> {
    let addresses: Vec<Address> = sample.iter().map(|&i| accounts[i].address).collect();
    let balances = read_each(
        client,
        "eth_getBalance",
        addresses.iter().map(|a| json!([a, "latest"])),
    )
    .await?;
    let nonces = read_each(
        client,
        "eth_getTransactionCount",
        addresses.iter().map(|a| json!([a, "latest"])),
    )
    .await?;
    let tokens = read_each(
        client,
        "eth_call",
        addresses.iter().map(|a| {
            let data = format!(
                "0x{BALANCE_OF_SELECTOR}{:0>64}",
                alloy_primitives::hex::encode(a)
            );
            json!([{"to": token, "data": data}, "latest"])
        }),
    )
    .await?;
    (0..addresses.len())
        .map(|i| {
            Ok(AccountState {
                balance: quantity_u256(&balances[i])?,
                nonce: quantity(&nonces[i])?,
                token: quantity_u256(&tokens[i]).unwrap_or_default(),
            })
        })
        .collect()
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Accepted by the node, never included, and unknown to it at the end.
    pub lost: u64,
    /// Accepted, not included by the end of the run, still held by the node (it fell behind).
    pub pending: u64,
    /// Accepted, not included, behind a refused transaction of the same sender (a nonce gap the
    /// node rightly keeps waiting on).
    pub stranded: u64,
    pub checked_accounts: usize,
    pub problems: Vec<String>,
}

pub struct Inputs<'a> {
    pub tracker: &'a Tracker,
    pub specs: &'a [Spec],
    pub accounts: &'a [Account],
    pub nonces: &'a [u64],
    pub sample: &'a [usize],
    pub before: &'a [AccountState],
    pub token: Address,
}

pub async fn check(client: &mut Client, inp: &Inputs<'_>) -> eyre::Result<Outcome> {
    let t = inp.tracker;
    let k = inp.accounts.len();
    let nonce_of = |j: usize| inp.nonces[inp.specs[j].sender as usize] + (j / k) as u64;
    let mut first_refused: HashMap<u32, u64> = HashMap::default();
    for j in 0..t.len() {
        if t.outcome[j].load(Relaxed) == REJECTED {
            let lowest = first_refused.entry(inp.specs[j].sender).or_insert(u64::MAX);
            *lowest = (*lowest).min(nonce_of(j));
        }
    }
    let mut out = Outcome::default();
    let mut missing = Vec::new();
    for j in 0..t.len() {
        if t.outcome[j].load(Relaxed) != ACCEPTED || Tracker::get(&t.included_us, j).is_some() {
            continue;
        }
        let behind_refusal = first_refused
            .get(&inp.specs[j].sender)
            .is_some_and(|&n| n < nonce_of(j));
        if behind_refusal {
            out.stranded += 1;
        } else {
            missing.push(j);
        }
    }
    // A node that still has the transaction fell behind; one that does not know it lost it.
    let known = read_each(
        client,
        "eth_getTransactionByHash",
        missing.iter().map(|&j| json!([t.hashes[j]])),
    )
    .await?;
    let lost: Vec<usize> = missing
        .iter()
        .zip(&known)
        .filter(|(_, tx)| tx.is_null())
        .map(|(&j, _)| j)
        .collect();
    out.lost = lost.len() as u64;
    out.pending = (missing.len() - lost.len()) as u64;
    if out.lost > 0 {
        let examples: Vec<String> = lost
            .iter()
            .take(3)
            .map(|&j| t.hashes[j].to_string())
            .collect();
        out.problems.push(format!(
            "lost {} transactions: the node accepted them, never included them and does not know them (e.g. {})",
            out.lost,
            examples.join(", ")
        ));
    }
    if out.pending > 0 {
        out.problems.push(format!(
            "{} accepted transactions were still pending in the node when the run ended (--drain-timeout)",
            out.pending
        ));
    }
    if !missing.is_empty() {
        // Balances cannot be predicted while transactions are missing.
        return Ok(out);
    }
    check_balances(client, inp, &mut out).await?;
    Ok(out)
}

/// Expected state of each sampled account from the included transactions, against the node's.
async fn check_balances(
    client: &mut Client,
    inp: &Inputs<'_>,
    out: &mut Outcome,
) -> eyre::Result<()> {
    let t = inp.tracker;
    let pos: HashMap<u32, usize> = inp
        .sample
        .iter()
        .enumerate()
        .map(|(p, &i)| (i as u32, p))
        .collect();
    let mut expected = inp.before.to_vec();
    let mut paid: Vec<(usize, B256)> = Vec::new();
    for (j, spec) in inp.specs.iter().enumerate() {
        if Tracker::get(&t.included_us, j).is_none() {
            continue;
        }
        let amount = U256::from(spec.amount);
        if let Some(&p) = pos.get(&spec.sender) {
            expected[p].nonce += 1;
            match spec.kind {
                Kind::Transfer => expected[p].balance -= amount,
                Kind::Erc20 => expected[p].token -= amount,
            }
            paid.push((p, t.hashes[j]));
        }
        if let Some(&p) = pos.get(&spec.to) {
            match spec.kind {
                Kind::Transfer => expected[p].balance += amount,
                Kind::Erc20 => expected[p].token += amount,
            }
        }
    }
    let receipts = read_each(
        client,
        "eth_getTransactionReceipt",
        paid.iter().map(|(_, h)| json!([h])),
    )
    .await?;
    let mut failed = 0;
    for ((p, hash), receipt) in paid.iter().zip(&receipts) {
        if receipt["status"] != json!("0x1") {
            failed += 1;
            if failed <= PROBLEMS_LISTED_MAX {
                out.problems
                    .push(format!("transaction {hash} failed: {receipt}"));
            }
        }
        let gas = quantity_u256(&receipt["gasUsed"])?;
        let price = quantity_u256(&receipt["effectiveGasPrice"])
            .map_err(|e| eyre!("receipt of {hash}: {e}"))?;
        expected[*p].balance -= gas * price;
    }
    let after = read_state(client, inp.accounts, inp.sample, inp.token).await?;
    out.checked_accounts = after.len();
    let mut wrong = 0;
    for (p, (want, got)) in expected.iter().zip(&after).enumerate() {
        if want != got {
            wrong += 1;
            if wrong <= PROBLEMS_LISTED_MAX {
                out.problems.push(format!(
                    "account {} holds {got:?}, its transactions imply {want:?}",
                    inp.accounts[inp.sample[p]].address
                ));
            }
        }
    }
    if wrong > PROBLEMS_LISTED_MAX {
        out.problems.push(format!(
            "{wrong} of {} sampled accounts are off",
            after.len()
        ));
    }
    Ok(())
}
