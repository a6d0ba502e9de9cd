//! The end-of-run checks: every transaction the node accepted is in a block, and a sample of
//! accounts holds exactly the ETH, token balances and nonce its included transactions imply.
//! For swaps, the included swaps are replayed on each pair in the order the chain executed them
//! (Pair.sol's constant-product formula, from the reserves before the run): that gives each
//! swap's output, hence the sampled senders' balances, and each pair's reserves at the end,
//! which must also equal the pair's token balances and keep the constant product from shrinking.

use crate::{
    client::{Client, quantity, quantity_u256},
    setup::read_each,
    track::{ACCEPTED, REJECTED, Tracker},
    workload::{Account, Contracts, Kind, Spec},
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
/// Pair.sol's `getReserves()`.
const GET_RESERVES_SELECTOR: &str = "0x0902f1ac";

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
    /// The token's balance (`swap`: token A's, token0 of every pair).
    pub token: U256,
    /// `swap`: token B's balance (token1 of every pair).
    pub token_b: U256,
}

/// The sampled accounts' state: ETH, nonce, and their balances of the workload's tokens.
pub async fn read_state(
    client: &mut Client,
    accounts: &[Account],
    sample: &[usize],
    contracts: &Contracts,
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
    let swap = !contracts.pairs.is_empty();
    let tokens = if swap {
        balances_of(client, contracts.token_a, &addresses).await?
    } else {
        balances_of(client, contracts.token, &addresses).await?
    };
    let tokens_b = if swap {
        balances_of(client, contracts.token_b, &addresses).await?
    } else {
        vec![U256::ZERO; addresses.len()]
    };
    (0..addresses.len())
        .map(|i| {
            Ok(AccountState {
                balance: quantity_u256(&balances[i])?,
                nonce: quantity(&nonces[i])?,
                token: tokens[i],
                token_b: tokens_b[i],
            })
        })
        .collect()
}

/// `token.balanceOf(holder)` of each holder (0 where `token` has no code).
async fn balances_of(
    client: &mut Client,
    token: Address,
    holders: &[Address],
) -> eyre::Result<Vec<U256>> {
    let answers = read_each(
        client,
        "eth_call",
        holders.iter().map(|a| {
            let data = format!(
                "0x{BALANCE_OF_SELECTOR}{:0>64}",
                alloy_primitives::hex::encode(a)
            );
            json!([{"to": token, "data": data}, "latest"])
        }),
    )
    .await?;
    Ok(answers
        .iter()
        .map(|a| quantity_u256(a).unwrap_or_default())
        .collect())
}

/// A pair's reserves of token0 and token1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Reserves {
    pub reserve0: U256,
    pub reserve1: U256,
}

impl Reserves {
    /// Pair.sol's output for `amount_in` (0.3% fee, constant product), and the reserves after.
    pub fn swap(self, amount_in: U256, zero_for_one: bool) -> (U256, Self) {
        let (reserve_in, reserve_out) = if zero_for_one {
            (self.reserve0, self.reserve1)
        } else {
            (self.reserve1, self.reserve0)
        };
        let in_with_fee = amount_in * U256::from(997);
        let out = in_with_fee * reserve_out / (reserve_in * U256::from(1000) + in_with_fee);
        let (reserve_in, reserve_out) = (reserve_in + amount_in, reserve_out - out);
        let after = if zero_for_one {
            Self {
                reserve0: reserve_in,
                reserve1: reserve_out,
            }
        } else {
            Self {
                reserve0: reserve_out,
                reserve1: reserve_in,
            }
        };
        (out, after)
    }

    fn product(self) -> U256 {
        self.reserve0 * self.reserve1
    }
}

/// Each pair's `getReserves()`.
pub async fn read_reserves(client: &mut Client, pairs: &[Address]) -> eyre::Result<Vec<Reserves>> {
    let answers = read_each(
        client,
        "eth_call",
        pairs
            .iter()
            .map(|p| json!([{"to": p, "data": GET_RESERVES_SELECTOR}, "latest"])),
    )
    .await?;
    pairs
        .iter()
        .zip(&answers)
        .map(|(p, a)| {
            let hex = a.as_str().unwrap_or_default();
            let bytes = alloy_primitives::hex::decode(hex)
                .ok()
                .filter(|b| b.len() >= 64)
                .ok_or_else(|| eyre!("getReserves() of {p} answered {a}"))?;
            Ok(Reserves {
                reserve0: U256::from_be_slice(&bytes[..32]),
                reserve1: U256::from_be_slice(&bytes[32..64]),
            })
        })
        .collect()
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    /// Accepted by a node, never included, and unknown to every node at the end.
    pub lost: u64,
    /// Accepted, not included by the end of the run, still held by a node (it fell behind).
    pub pending: u64,
    /// Accepted, not included, behind a refused transaction of the same sender (a nonce gap the
    /// node rightly keeps waiting on).
    pub stranded: u64,
    pub checked_accounts: usize,
    /// `swap`: pairs whose reserves were checked.
    pub checked_pairs: usize,
    pub problems: Vec<String>,
}

pub struct Inputs<'a> {
    pub tracker: &'a Tracker,
    pub specs: &'a [Spec],
    pub accounts: &'a [Account],
    pub nonces: &'a [u64],
    pub sample: &'a [usize],
    pub before: &'a [AccountState],
    pub contracts: &'a Contracts,
    /// `swap`: each pair's reserves before the run.
    pub reserves_before: &'a [Reserves],
    /// The other nodes' RPCs (the client asks the first): a transaction not included is lost
    /// only if none of them knows it.
    pub other_rpcs: &'a [String],
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
    // A node that still has the transaction fell behind; it is lost only if no node knows it.
    // (With several nodes, one that took a transaction may hold it unforwarded until it leads.)
    let mut lost = missing.clone();
    for node in 0..=inp.other_rpcs.len() {
        if lost.is_empty() {
            break;
        }
        let mut other;
        let node_client = match node {
            0 => &mut *client,
            i => {
                other = Client::new(&inp.other_rpcs[i - 1])?;
                &mut other
            }
        };
        let known = read_each(
            node_client,
            "eth_getTransactionByHash",
            lost.iter().map(|&j| json!([t.hashes[j]])),
        )
        .await?;
        lost = lost
            .iter()
            .zip(&known)
            .filter(|(_, tx)| tx.is_null())
            .map(|(&j, _)| j)
            .collect();
    }
    out.lost = lost.len() as u64;
    out.pending = (missing.len() - lost.len()) as u64;
    if out.lost > 0 {
        let examples: Vec<String> = lost
            .iter()
            .take(3)
            .map(|&j| t.hashes[j].to_string())
            .collect();
        out.problems.push(format!(
            "lost {} transactions: a node accepted them, none included them and none knows them (e.g. {})",
            out.lost,
            examples.join(", ")
        ));
    }
    if out.stranded > 0 {
        // The load generator sends each sender's nonces in order, so a gap is its own doing or
        // a refusal it could not resend: either way the run did not get its load through.
        out.problems.push(format!(
            "{} accepted transactions were stranded behind a refused transaction of the same sender",
            out.stranded
        ));
    }
    if out.pending > 0 {
        out.problems.push(format!(
            "{} accepted transactions were still pending in a node when the run ended (--drain-timeout)",
            out.pending
        ));
    }
    if !missing.is_empty() {
        // Balances cannot be predicted while transactions are missing.
        return Ok(out);
    }
    let swaps = replay_swaps(inp);
    check_balances(client, inp, &swaps, &mut out).await?;
    check_pairs(client, inp, &swaps, &mut out).await?;
    Ok(out)
}

/// What the included swaps did, replayed: each one's output (by transaction index) and each
/// pair's reserves after the last.
struct Swaps {
    outputs: HashMap<usize, U256>,
    reserves: Vec<Reserves>,
}

/// Replays the included swaps on each pair in the order the chain executed them.
fn replay_swaps(inp: &Inputs<'_>) -> Swaps {
    let t = inp.tracker;
    let mut included: Vec<(u64, usize)> = inp
        .specs
        .iter()
        .enumerate()
        .filter(|(j, s)| {
            matches!(s.kind, Kind::Swap { .. }) && Tracker::get(&t.included_us, *j).is_some()
        })
        .map(|(j, _)| (t.position[j].load(Relaxed), j))
        .collect();
    included.sort_unstable();
    let mut swaps = Swaps {
        outputs: HashMap::default(),
        reserves: inp.reserves_before.to_vec(),
    };
    for (_, j) in included {
        let spec = &inp.specs[j];
        let Kind::Swap { zero_for_one } = spec.kind else {
            unreachable!("only swaps")
        };
        let pair = &mut swaps.reserves[spec.to as usize];
        let (out, after) = pair.swap(U256::from(spec.amount), zero_for_one);
        *pair = after;
        swaps.outputs.insert(j, out);
    }
    swaps
}

/// Each pair's reserves are what the replayed swaps leave, equal its token balances, and their
/// product did not shrink.
async fn check_pairs(
    client: &mut Client,
    inp: &Inputs<'_>,
    swaps: &Swaps,
    out: &mut Outcome,
) -> eyre::Result<()> {
    let pairs = &inp.contracts.pairs;
    if pairs.is_empty() {
        return Ok(());
    }
    let got = read_reserves(client, pairs).await?;
    let held0 = balances_of(client, inp.contracts.token_a, pairs).await?;
    let held1 = balances_of(client, inp.contracts.token_b, pairs).await?;
    out.checked_pairs = pairs.len();
    for (i, p) in pairs.iter().enumerate() {
        let (want, got) = (swaps.reserves[i], got[i]);
        if got != want {
            out.problems.push(format!(
                "pair {p} has reserves {got:?}, its included swaps imply {want:?}"
            ));
        }
        if (got.reserve0, got.reserve1) != (held0[i], held1[i]) {
            out.problems.push(format!(
                "pair {p} has reserves {got:?} but holds {} and {} of its tokens",
                held0[i], held1[i]
            ));
        }
        if got.product() < inp.reserves_before[i].product() {
            out.problems
                .push(format!("pair {p}: the constant product shrank"));
        }
    }
    Ok(())
}

/// Expected state of each sampled account from the included transactions, against the node's.
async fn check_balances(
    client: &mut Client,
    inp: &Inputs<'_>,
    swaps: &Swaps,
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
            let e = &mut expected[p];
            match spec.kind {
                Kind::Transfer => e.balance -= amount,
                Kind::Erc20 => e.token -= amount,
                Kind::Swap { zero_for_one } => {
                    let output = swaps.outputs[&j];
                    if zero_for_one {
                        (e.token, e.token_b) = (e.token - amount, e.token_b + output);
                    } else {
                        (e.token, e.token_b) = (e.token + output, e.token_b - amount);
                    }
                }
            }
            paid.push((p, t.hashes[j]));
        }
        if let Some(&p) = pos.get(&spec.to) {
            match spec.kind {
                Kind::Transfer => expected[p].balance += amount,
                Kind::Erc20 => expected[p].token += amount,
                // `to` is the pair; the output went back to the sender.
                Kind::Swap { .. } => {}
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
    let after = read_state(client, inp.accounts, inp.sample, inp.contracts).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_follows_pair_sol_and_keeps_the_product() {
        let r = Reserves {
            reserve0: U256::from(1_000_000_000_000u64),
            reserve1: U256::from(1_000_000_000_000u64),
        };
        let (out, after) = r.swap(U256::from(1_000), true);
        // 1,000 in at 0.3% fee against equal reserves: 996 out (rounded down).
        assert_eq!(out, U256::from(996));
        assert_eq!(after.reserve0, U256::from(1_000_000_001_000u64));
        assert_eq!(after.reserve1, U256::from(999_999_999_004u64));
        assert!(after.product() > r.product());
        let (back, again) = after.swap(U256::from(996), false);
        assert!(back < U256::from(1_000));
        assert_eq!(again.reserve1, r.reserve1);
    }
}
