//! The executor workloads of `kestrel-bench exec` and the criterion benches: a deterministic
//! state of funded accounts, one block of signed transactions over it, and a check of the block's
//! result that does not trust the executor (balances, token supply, pair invariants).

use crate::{
    CHAIN_ID, MemState, TOKEN, TOKEN_BALANCE, address, deploy_token_at, erc20_block, funded_state,
    sign, token_balance_slot, transfer_block,
};
use alloy_consensus::{Header, Transaction, TxEip1559};
use alloy_primitives::{Address, Bytes, TxKind, U256, keccak256};
use kestrel_pipeline::BlockOutput;
use kestrel_types::{AccountInfo, ChainSpec, RecoveredTx, StateChanges};
use std::collections::BTreeMap;

/// Base fee of every bench block.
pub const BASE_FEE: u64 = 7;
/// Gas limit of every bench block: large enough never to bind.
pub const GAS_LIMIT: u64 = 10_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// ETH transfers, every sender and nearly every recipient distinct.
    Raw,
    /// ERC-20 `transfer`s of one token, every sender distinct.
    Erc20,
    /// Uniswap-V2-style swaps spread over `pairs` pairs (1 pair: fully contended).
    Uniswap,
    /// ETH transfers of which a fraction `hot_ratio` pay one hot account.
    Hot,
}

#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub workload: Workload,
    pub txs: usize,
    pub accounts: u64,
    /// `Hot`: the fraction of transactions paying the hot account.
    pub hot_ratio: f64,
    /// `Uniswap`: the number of independent pairs.
    pub pairs: u64,
}

/// A block ready to execute and the state it executes on.
pub struct Bench {
    pub params: Params,
    pub spec: ChainSpec,
    pub header: Header,
    pub state: MemState,
    pub txs: Vec<RecoveredTx>,
}

/// Block 1 of the dev chain (Prague) at [`BASE_FEE`], with no blobs or withdrawals.
pub fn header(gas_limit: u64, beneficiary: Address) -> Header {
    Header {
        number: 1,
        beneficiary,
        gas_limit,
        base_fee_per_gas: Some(BASE_FEE),
        timestamp: 1,
        withdrawals_root: Some(alloy_consensus::constants::EMPTY_WITHDRAWALS),
        blob_gas_used: Some(0),
        excess_blob_gas: Some(0),
        parent_beacon_block_root: Some(Default::default()),
        ..Default::default()
    }
}

/// Runtime code of `tests/e2e/contracts/Pair.sol` (solc 0.8.37, optimizer 200 runs, Prague);
/// regenerate with `node compile.mjs --contract Pair` in tests/e2e.
pub const PAIR_RUNTIME_HEX: &str = include_str!("pair.hex");
/// The pairs' two tokens.
pub const TOKEN_A: Address = Address::new([0x71; 20]);
pub const TOKEN_B: Address = Address::new([0x72; 20]);
/// Storage slot of `allowance` in Token.sol's layout.
const ALLOWANCE_SLOT: u64 = 4;
/// Reserve of each token every pair starts with.
pub const PAIR_RESERVE: u64 = 1_000_000_000_000;
/// Pair.sol's slot holding reserve0 (low 112 bits), reserve1 and the timestamp.
const RESERVES_SLOT: u64 = 2;
/// The hot account of the `Hot` workload (not one of the funded accounts).
pub const HOT: Address = Address::new([0x48; 20]);

/// Address of pair `i`.
pub fn pair(i: u64) -> Address {
    let mut bytes = [0x73; 20];
    bytes[12..].copy_from_slice(&i.to_be_bytes());
    Address::new(bytes)
}

fn mapping_slot(key: Address, slot: U256) -> U256 {
    let mut preimage = [0u8; 64];
    preimage[12..32].copy_from_slice(key.as_slice());
    preimage[32..].copy_from_slice(&slot.to_be_bytes::<32>());
    U256::from_be_bytes(keccak256(preimage).0)
}

/// The slot of `allowance[owner][spender]`.
pub fn allowance_slot(owner: Address, spender: Address) -> U256 {
    mapping_slot(spender, mapping_slot(owner, U256::from(ALLOWANCE_SLOT)))
}

impl Bench {
    pub fn new(params: Params) -> Self {
        assert!(
            params.txs as u64 <= params.accounts,
            "one transaction per sender: --accounts must be at least --txs"
        );
        let (mut state, accounts) = funded_state(params.accounts);
        let txs = match params.workload {
            Workload::Raw => transfer_block(&accounts, params.txs, BASE_FEE),
            Workload::Erc20 => {
                deploy_token_at(&mut state, TOKEN, &accounts);
                erc20_block(&accounts, params.txs, BASE_FEE)
            }
            Workload::Uniswap => {
                assert!(params.pairs > 0, "at least one pair");
                deploy_pairs(&mut state, &accounts, params.txs, params.pairs);
                swap_block(params.txs, params.pairs)
            }
            Workload::Hot => hot_block(&accounts, params.txs, params.hot_ratio),
        };
        Self {
            params,
            spec: ChainSpec::dev(),
            header: header(GAS_LIMIT, Address::ZERO),
            state,
            txs,
        }
    }

    /// Checks `out` against what the workload must do, from the starting state and the
    /// transactions alone: every transaction included and successful, ETH conserved up to the
    /// burnt base fee, and per workload the recipients' balances, the token supply or the pairs'
    /// reserves and constant product.
    pub fn verify(&self, out: &BlockOutput) -> Result<(), String> {
        if out.included.len() != self.txs.len() {
            return Err(format!(
                "{} of {} transactions included",
                out.included.len(),
                self.txs.len()
            ));
        }
        if let Some(i) = out.receipts.iter().position(|r| !r.status()) {
            return Err(format!("transaction {i} failed"));
        }
        let changes = &out.changes;
        let balance = |a: &Address| -> U256 {
            match changes.accounts.get(a) {
                Some(info) => info.map(|i| i.balance).unwrap_or_default(),
                None => self.account(a).balance,
            }
        };
        // ETH: what changed accounts gained equals what they lost minus the burnt base fee.
        let before: U256 = changes
            .accounts
            .keys()
            .map(|a| self.account(a).balance)
            .sum();
        let after: U256 = changes.accounts.keys().map(balance).sum();
        let burnt = U256::from(out.gas_used) * U256::from(BASE_FEE);
        if after + burnt != before {
            return Err(format!(
                "ETH not conserved: {before} before, {after} + {burnt} burnt after"
            ));
        }
        match self.params.workload {
            Workload::Raw | Workload::Hot => {
                // Every account's balance moved by exactly what it received minus what it sent
                // and paid in fees.
                let mut net: BTreeMap<Address, (U256, U256)> = BTreeMap::new();
                for (i, tx) in self.txs.iter().enumerate() {
                    let gas = out.receipts[i].cumulative_gas_used()
                        - i.checked_sub(1)
                            .map_or(0, |p| out.receipts[p].cumulative_gas_used());
                    let fee =
                        U256::from(gas) * U256::from(tx.tx().effective_gas_price(Some(BASE_FEE)));
                    net.entry(tx.sender()).or_default().1 += tx.tx().value() + fee;
                    net.entry(tx.tx().to().expect("a transfer")).or_default().0 += tx.tx().value();
                }
                for (a, (gained, lost)) in net {
                    let expected = self.account(&a).balance + gained - lost;
                    if balance(&a) != expected {
                        return Err(format!("{a} holds {} instead of {expected}", balance(&a)));
                    }
                }
                Ok(())
            }
            Workload::Erc20 => self.verify_token(TOKEN, changes),
            Workload::Uniswap => {
                self.verify_token(TOKEN_A, changes)?;
                self.verify_token(TOKEN_B, changes)?;
                self.verify_pairs(changes)
            }
        }
    }

    fn account(&self, a: &Address) -> AccountInfo {
        self.state.accounts.get(a).copied().unwrap_or_default()
    }

    fn slot(&self, changes: &StateChanges, contract: Address, slot: U256) -> U256 {
        changes
            .storage
            .get(&contract)
            .and_then(|s| s.slots.get(&slot))
            .copied()
            .unwrap_or_else(|| {
                self.state
                    .storage
                    .get(&(contract, slot))
                    .copied()
                    .unwrap_or_default()
            })
    }

    /// The token's changed balances add up to what they held before (transfers and swaps move
    /// tokens, they never mint or burn).
    fn verify_token(&self, token: Address, changes: &StateChanges) -> Result<(), String> {
        let Some(storage) = changes.storage.get(&token) else {
            return Err(format!("token {token} unchanged"));
        };
        let before: U256 = storage
            .slots
            .keys()
            .map(|s| {
                self.state
                    .storage
                    .get(&(token, *s))
                    .copied()
                    .unwrap_or_default()
            })
            .sum();
        let after: U256 = storage.slots.values().sum();
        // Swaps spend allowances of U256::MAX, which Token.sol leaves unchanged, so every changed
        // slot is a balance.
        if before != after {
            return Err(format!("token {token} supply changed: {before} → {after}"));
        }
        Ok(())
    }

    /// Each pair's reserves equal its token balances, and its constant product did not shrink.
    fn verify_pairs(&self, changes: &StateChanges) -> Result<(), String> {
        for p in (0..self.params.pairs).map(pair) {
            let packed = self.slot(changes, p, U256::from(RESERVES_SLOT));
            let mask = (U256::from(1) << 112) - U256::from(1);
            let (r0, r1) = (packed & mask, (packed >> 112) & mask);
            let b0 = self.slot(changes, TOKEN_A, token_balance_slot(p));
            let b1 = self.slot(changes, TOKEN_B, token_balance_slot(p));
            if (r0, r1) != (b0, b1) {
                return Err(format!(
                    "pair {p}: reserves ({r0}, {r1}), balances ({b0}, {b1})"
                ));
            }
            let k0 = U256::from(PAIR_RESERVE) * U256::from(PAIR_RESERVE);
            if r0 * r1 < k0 {
                return Err(format!("pair {p}: constant product shrank"));
            }
        }
        Ok(())
    }
}

/// Tokens A and B and `pairs` pairs of them, each with [`PAIR_RESERVE`] of both; the first
/// `txs` accounts hold both tokens and have approved the pair they swap on (`i % pairs`).
/// Also the state `kestrel-loadgen --workload swap --genesis-out` writes into its genesis.
pub fn deploy_pairs(state: &mut MemState, accounts: &[Address], txs: usize, pairs: u64) {
    let traders = &accounts[..txs];
    let pair_addresses: Vec<Address> = (0..pairs).map(pair).collect();
    for token in [TOKEN_A, TOKEN_B] {
        deploy_token_at(state, token, traders);
        for p in &pair_addresses {
            state
                .storage
                .insert((token, token_balance_slot(*p)), U256::from(PAIR_RESERVE));
        }
        for (i, trader) in traders.iter().enumerate() {
            let p = pair(i as u64 % pairs);
            state
                .storage
                .insert((token, allowance_slot(*trader, p)), U256::MAX);
        }
        let supply = U256::from(TOKEN_BALANCE) * U256::from(traders.len())
            + U256::from(PAIR_RESERVE) * U256::from(pairs);
        state.storage.insert((token, U256::from(2)), supply);
    }
    let code =
        Bytes::from(alloy_primitives::hex::decode(PAIR_RUNTIME_HEX.trim()).expect("pair hex"));
    let code_hash = keccak256(&code);
    state.codes.insert(code_hash, code);
    let reserves = U256::from(PAIR_RESERVE) | (U256::from(PAIR_RESERVE) << 112);
    for p in pair_addresses {
        state.accounts.insert(
            p,
            AccountInfo {
                nonce: 1,
                balance: U256::ZERO,
                code_hash,
            },
        );
        let word = |a: Address| U256::from_be_slice(a.as_slice());
        state.storage.insert((p, U256::ZERO), word(TOKEN_A));
        state.storage.insert((p, U256::from(1)), word(TOKEN_B));
        state
            .storage
            .insert((p, U256::from(RESERVES_SLOT)), reserves);
    }
}

/// Trader `i` swaps on pair `i % pairs`, alternating directions, receiving the output itself.
fn swap_block(txs: usize, pairs: u64) -> Vec<RecoveredTx> {
    (0..txs as u64)
        .map(|i| {
            let data = swap_input(U256::from(1_000 + i % 100), i % 2 == 1, address(i));
            sign(
                i,
                TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce: 0,
                    gas_limit: 200_000,
                    max_fee_per_gas: u128::from(BASE_FEE) * 2,
                    max_priority_fee_per_gas: 1,
                    to: TxKind::Call(pair(i % pairs)),
                    value: U256::ZERO,
                    input: data,
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Pair.sol's `swap(amountIn, zeroForOne, to)` call: pulls `amount_in` of token0 (token1 if not
/// `zero_for_one`) from the caller, who approved the pair, and sends the output to `to`.
pub fn swap_input(amount_in: U256, zero_for_one: bool, to: Address) -> Bytes {
    let mut data = Vec::with_capacity(100);
    data.extend_from_slice(&keccak256("swap(uint256,bool,address)")[..4]);
    data.extend_from_slice(&amount_in.to_be_bytes::<32>());
    data.extend_from_slice(&U256::from(u8::from(zero_for_one)).to_be_bytes::<32>());
    data.extend_from_slice(&[0u8; 12]);
    data.extend_from_slice(to.as_slice());
    data.into()
}

/// Transfers from distinct senders; transaction `i` pays [`HOT`] when `i * ratio` crosses an
/// integer (evenly spread, deterministic), else an account of its own.
fn hot_block(accounts: &[Address], txs: usize, hot_ratio: f64) -> Vec<RecoveredTx> {
    assert!(
        (0.0..=1.0).contains(&hot_ratio),
        "--hot-ratio is a fraction"
    );
    let mut block = transfer_block(accounts, txs, BASE_FEE);
    for (i, tx) in block.iter_mut().enumerate() {
        let hot = ((i + 1) as f64 * hot_ratio).floor() > (i as f64 * hot_ratio).floor();
        if hot {
            let alloy_consensus::TxEnvelope::Eip1559(signed) = tx.tx() else {
                unreachable!("bench transfers are EIP-1559")
            };
            let mut unsigned = signed.tx().clone();
            unsigned.to = TxKind::Call(HOT);
            *tx = sign(i as u64, unsigned);
        }
    }
    block
}
