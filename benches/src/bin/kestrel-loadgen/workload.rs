//! Sender accounts derived from a seed, the transactions of a workload, and their signatures.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256};
use rand::{Rng, SeedableRng, rngs::StdRng};
use secp256k1::{SECP256K1, SecretKey};

/// Gas limit of an ETH transfer.
pub const TRANSFER_GAS: u64 = 21_000;
/// Gas limit of an ERC-20 `transfer` (~52k to a fresh holder). Kestrel fills blocks by gas
/// limit, so a tight limit means more transactions per block.
pub const ERC20_GAS: u64 = 65_000;
/// Gas limit of a Pair.sol `swap` (~71k: two token calls, five balance and reserve writes).
pub const SWAP_GAS: u64 = 90_000;
/// Gas limit of an ERC-20 `approve` of a new spender (~46k).
pub const APPROVE_GAS: u64 = 60_000;
/// Gas limit of a Pair.sol `sync` on a pair that holds no reserves yet (~57k).
pub const SYNC_GAS: u64 = 100_000;
/// Gas limit of a contract creation by [`init_code`] (the pair's code deposit is ~375k).
pub const DEPLOY_GAS: u64 = 1_000_000;
/// Least input of a swap: against reserves of 10^12 the output of a few units of input would
/// round down to 0 and Pair.sol would revert.
pub const SWAP_AMOUNT_MIN: u64 = 1_000;
/// `transfer(address,uint256)`.
const TRANSFER_SELECTOR: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// `approve(address,uint256)`.
const APPROVE_SELECTOR: [u8; 4] = [0x09, 0x5e, 0xa7, 0xb3];
/// Pair.sol's `sync()`.
pub const SYNC_SELECTOR: [u8; 4] = [0xff, 0xf6, 0xca, 0xe9];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// ETH transfers.
    Transfer,
    /// ERC-20 `transfer`s of one token.
    Erc20,
    /// Uniswap-V2-style swaps on `--pairs` pairs of two tokens.
    Swap,
    /// Half ETH transfers, half ERC-20 `transfer`s.
    Mixed,
}

impl Workload {
    /// Uses the ERC-20 token of `erc20` and `mixed`.
    pub fn needs_token(self) -> bool {
        matches!(self, Workload::Erc20 | Workload::Mixed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Transfer,
    Erc20,
    /// `amount` of token0 (token1 if not `zero_for_one`) in, on pair `to`; the output goes back
    /// to the sender.
    Swap {
        zero_for_one: bool,
    },
}

/// Where the workload's contracts live: fixed addresses in a genesis written by `--genesis-out`,
/// or wherever the setup transactions deployed them.
#[derive(Clone, Debug, Default)]
pub struct Contracts {
    /// The ERC-20 of `erc20` and `mixed`.
    pub token: Address,
    /// `swap`: token0 and token1 of every pair, and the pairs.
    pub token_a: Address,
    pub token_b: Address,
    pub pairs: Vec<Address>,
}

impl Contracts {
    /// The contracts of a genesis written by `--genesis-out` with `pairs` pairs.
    pub fn genesis(pairs: usize) -> Self {
        use kestrel_benches::workload::{TOKEN_A, TOKEN_B, pair};
        Self {
            token: kestrel_benches::TOKEN,
            token_a: TOKEN_A,
            token_b: TOKEN_B,
            pairs: (0..pairs as u64).map(pair).collect(),
        }
    }
}

/// The pairs sender `sender` swaps on: its own (`sender % pairs`), and pair 0 if some swaps are
/// sent to the hot pair.
pub fn swap_pairs(sender: usize, pairs: usize, hot: bool) -> Vec<usize> {
    let own = sender % pairs;
    if hot && own != 0 {
        vec![own, 0]
    } else {
        vec![own]
    }
}

pub struct Account {
    pub key: SecretKey,
    pub address: Address,
}

impl Account {
    pub fn from_key(key: SecretKey) -> Self {
        let public = secp256k1::PublicKey::from_secret_key(SECP256K1, &key);
        let address = Address::from_raw_public_key(&public.serialize_uncompressed()[1..]);
        Self { key, address }
    }
}

/// `n` accounts: account `i`'s key is keccak256(seed ‖ i), so a run is reproducible from its seed.
pub fn derive_accounts(seed: u64, n: usize) -> Vec<Account> {
    parallel_map(0..n, |i| {
        Account::from_key(kestrel_benches::seeded_key(seed, i as u64))
    })
}

/// One planned transaction: who pays whom what.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub sender: u32,
    /// The recipient's account index; for a swap, the pair's index.
    pub to: u32,
    pub kind: Kind,
    pub amount: u64,
}

pub struct PlanParams {
    pub workload: Workload,
    pub txs: usize,
    pub accounts: usize,
    pub hot_ratio: f64,
    pub hot_accounts: usize,
    /// `swap`: the number of pairs.
    pub pairs: usize,
    pub seed: u64,
}

/// Transaction `j` is sent by account `j % accounts` (so a sender's nonces go out in order and
/// far apart). Its recipient is one of the first `hot_accounts` with probability `hot_ratio`
/// (contention on a few balances), else a spread-out other account. A swap goes to the sender's
/// own pair (`sender % pairs`), or to pair 0 with probability `hot_ratio`; a sender's swaps
/// alternate directions, so its balances of both tokens stay about level.
pub fn plan(p: &PlanParams) -> Vec<Spec> {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let n = p.accounts as u64;
    (0..p.txs as u64)
        .map(|j| {
            let sender = j % n;
            if p.workload == Workload::Swap {
                let pair = if rng.random_bool(p.hot_ratio) {
                    0
                } else {
                    sender % p.pairs as u64
                };
                return Spec {
                    sender: sender as u32,
                    to: pair as u32,
                    kind: Kind::Swap {
                        zero_for_one: (sender + j / n).is_multiple_of(2),
                    },
                    amount: SWAP_AMOUNT_MIN + j % 100,
                };
            }
            let to = if rng.random_bool(p.hot_ratio) {
                rng.random_range(0..p.hot_accounts.max(1) as u64)
            } else {
                (sender * 7919 + 1 + j / n) % n
            };
            let kind = match p.workload {
                Workload::Transfer => Kind::Transfer,
                Workload::Erc20 => Kind::Erc20,
                Workload::Mixed if j % 2 == 0 => Kind::Transfer,
                Workload::Mixed => Kind::Erc20,
                Workload::Swap => unreachable!("planned above"),
            };
            Spec {
                sender: sender as u32,
                to: to as u32,
                kind,
                amount: 1 + j % 100,
            }
        })
        .collect()
}

/// Fee caps every transaction carries.
#[derive(Clone, Copy, Debug)]
pub struct Fees {
    pub max_fee_per_gas: u128,
    pub max_priority_fee_per_gas: u128,
}

/// A signed transaction: its hash and its `0x` raw hex (ready for `eth_sendRawTransaction`).
pub struct Signed {
    pub hash: B256,
    pub raw_hex: String,
}

pub fn sign(key: &SecretKey, tx: TxEip1559) -> Signed {
    let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
    let (rec, bytes) = SECP256K1
        .sign_ecdsa_recoverable(&msg, key)
        .serialize_compact();
    let sig = Signature::from_bytes_and_parity(&bytes, i32::from(rec) != 0);
    let envelope = TxEnvelope::Eip1559(tx.into_signed(sig));
    Signed {
        hash: *envelope.tx_hash(),
        raw_hex: alloy_primitives::hex::encode_prefixed(envelope.encoded_2718()),
    }
}

pub fn erc20_transfer_input(to: Address, amount: U256) -> Bytes {
    address_amount_call(TRANSFER_SELECTOR, to, amount)
}

/// ERC-20 `approve(spender, amount)`.
pub fn approve_input(spender: Address, amount: U256) -> Bytes {
    address_amount_call(APPROVE_SELECTOR, spender, amount)
}

/// The input of a call `f(address, uint256)`.
fn address_amount_call(selector: [u8; 4], address: Address, amount: U256) -> Bytes {
    let mut data = Vec::with_capacity(68);
    data.extend_from_slice(&selector);
    data.extend_from_slice(&[0u8; 12]);
    data.extend_from_slice(address.as_slice());
    data.extend_from_slice(&amount.to_be_bytes::<32>());
    data.into()
}

/// The unsigned transaction of `spec`, at `nonce`.
pub fn build(
    spec: &Spec,
    accounts: &[Account],
    nonce: u64,
    chain_id: u64,
    fees: Fees,
    contracts: &Contracts,
) -> TxEip1559 {
    let (kind, gas_limit, value, input) = match spec.kind {
        Kind::Transfer => (
            TxKind::Call(accounts[spec.to as usize].address),
            TRANSFER_GAS,
            U256::from(spec.amount),
            Bytes::new(),
        ),
        Kind::Erc20 => (
            TxKind::Call(contracts.token),
            ERC20_GAS,
            U256::ZERO,
            erc20_transfer_input(accounts[spec.to as usize].address, U256::from(spec.amount)),
        ),
        Kind::Swap { zero_for_one } => (
            TxKind::Call(contracts.pairs[spec.to as usize]),
            SWAP_GAS,
            U256::ZERO,
            kestrel_benches::workload::swap_input(
                U256::from(spec.amount),
                zero_for_one,
                accounts[spec.sender as usize].address,
            ),
        ),
    };
    TxEip1559 {
        chain_id,
        nonce,
        gas_limit,
        max_fee_per_gas: fees.max_fee_per_gas,
        max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
        to: kind,
        value,
        input,
        ..Default::default()
    }
}

/// Init code that stores `supply` as the total supply and as `holder`'s balance in Token.sol's
/// layout, then returns `runtime`: the bench token deployed by a plain transaction on any node.
pub fn token_init_code(runtime: &[u8], holder: Address, supply: U256) -> Bytes {
    const TOTAL_SUPPLY_SLOT: u64 = 2;
    let slot = kestrel_benches::token_balance_slot(holder);
    init_code(
        runtime,
        &[(U256::from(TOTAL_SUPPLY_SLOT), supply), (slot, supply)],
    )
}

/// Init code of Pair.sol between `token0` and `token1` (its constructor's two slots); its
/// reserves come from transfers and a `sync()`.
pub fn pair_init_code(token0: Address, token1: Address) -> Bytes {
    let runtime = alloy_primitives::hex::decode(kestrel_benches::workload::PAIR_RUNTIME_HEX.trim())
        .expect("pair runtime hex");
    let word = |a: Address| U256::from_be_slice(a.as_slice());
    init_code(
        &runtime,
        &[(U256::ZERO, word(token0)), (U256::from(1), word(token1))],
    )
}

/// Init code that writes `slots` (slot, value), then returns `runtime`: a contract deployed by a
/// plain transaction on any node, with the storage its constructor would have written.
pub fn init_code(runtime: &[u8], slots: &[(U256, U256)]) -> Bytes {
    let mut code = Vec::with_capacity(runtime.len() + 66 * slots.len() + 16);
    for (slot, value) in slots {
        // PUSH32 value, PUSH32 slot, SSTORE
        code.push(0x7f);
        code.extend_from_slice(&value.to_be_bytes::<32>());
        code.push(0x7f);
        code.extend_from_slice(&slot.to_be_bytes::<32>());
        code.push(0x55);
    }
    // PUSH2 len, DUP1, PUSH2 offset, PUSH1 0, CODECOPY, PUSH1 0, RETURN
    let len = u16::try_from(runtime.len()).expect("runtime under 64 KiB");
    let offset = u16::try_from(code.len() + 13).expect("short prefix");
    code.push(0x61);
    code.extend_from_slice(&len.to_be_bytes());
    code.push(0x80);
    code.push(0x61);
    code.extend_from_slice(&offset.to_be_bytes());
    code.extend_from_slice(&[0x60, 0x00, 0x39, 0x60, 0x00, 0xf3]);
    code.extend_from_slice(runtime);
    code.into()
}

/// Maps `f` over `range` on every core (signing 100k+ transactions is CPU-bound).
pub fn parallel_map<T: Send>(
    range: std::ops::Range<usize>,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = range.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (range.start..range.end)
            .step_by(chunk)
            .map(|lo| {
                let hi = (lo + chunk).min(range.end);
                s.spawn(move || (lo..hi).map(f).collect::<Vec<T>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_transactions_recover_to_their_sender() {
        let accounts = derive_accounts(7, 3);
        let fees = Fees {
            max_fee_per_gas: 10,
            max_priority_fee_per_gas: 1,
        };
        let spec = Spec {
            sender: 1,
            to: 2,
            kind: Kind::Erc20,
            amount: 5,
        };
        let signed = sign(
            &accounts[1].key,
            build(&spec, &accounts, 4, 1337, fees, &Contracts::default()),
        );
        let raw = alloy_primitives::hex::decode(&signed.raw_hex).unwrap();
        let tx = kestrel_types::RecoveredTx::recover(
            kestrel_types::RecoveredTx::decode(raw.into()).unwrap(),
        )
        .unwrap();
        assert_eq!(tx.sender(), accounts[1].address);
        assert_eq!(tx.hash(), signed.hash);
        assert_eq!(tx.nonce(), 4);
    }

    #[test]
    fn plan_spreads_senders_and_honours_hot_ratio() {
        let p = PlanParams {
            workload: Workload::Mixed,
            txs: 10_000,
            accounts: 1_000,
            hot_ratio: 0.5,
            hot_accounts: 4,
            pairs: 1,
            seed: 1,
        };
        let specs = plan(&p);
        assert!(specs.iter().all(|s| s.sender < 1_000 && s.to < 1_000));
        let hot = specs.iter().filter(|s| s.to < 4).count();
        assert!((4_500..5_500).contains(&hot), "{hot} hot of 10,000");
        let erc20 = specs.iter().filter(|s| s.kind == Kind::Erc20).count();
        assert_eq!(erc20, 5_000);
    }

    #[test]
    fn swaps_go_to_the_senders_pair_or_the_hot_one_in_both_directions() {
        let p = PlanParams {
            workload: Workload::Swap,
            txs: 10_000,
            accounts: 1_000,
            hot_ratio: 0.3,
            hot_accounts: 4,
            pairs: 7,
            seed: 1,
        };
        let specs = plan(&p);
        let mut to_hot = 0;
        let mut zero_for_one = 0;
        for s in &specs {
            let Kind::Swap { zero_for_one: z } = s.kind else {
                panic!("not a swap: {s:?}")
            };
            assert!(swap_pairs(s.sender as usize, 7, true).contains(&(s.to as usize)));
            assert!(s.amount >= SWAP_AMOUNT_MIN);
            to_hot += usize::from(s.to == 0 && s.sender % 7 != 0);
            zero_for_one += usize::from(z);
        }
        // 30% of the 6/7 of swaps whose own pair is not 0.
        assert!((2_300..2_850).contains(&to_hot), "{to_hot} to the hot pair");
        assert_eq!(zero_for_one, 5_000);
    }

    #[test]
    fn selectors_match_their_signatures() {
        let selector =
            |sig: &str| <[u8; 4]>::try_from(&alloy_primitives::keccak256(sig)[..4]).unwrap();
        assert_eq!(selector("transfer(address,uint256)"), TRANSFER_SELECTOR);
        assert_eq!(selector("approve(address,uint256)"), APPROVE_SELECTOR);
        assert_eq!(selector("sync()"), SYNC_SELECTOR);
    }
}
