//! Sender accounts derived from a seed, the transactions of a workload, and their signatures.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use rand::{Rng, SeedableRng, rngs::StdRng};
use secp256k1::{SECP256K1, SecretKey};

/// Gas limit of an ETH transfer.
pub const TRANSFER_GAS: u64 = 21_000;
/// Gas limit of an ERC-20 `transfer` (~52k to a fresh holder). Kestrel fills blocks by gas
/// limit, so a tight limit means more transactions per block.
pub const ERC20_GAS: u64 = 65_000;
/// `transfer(address,uint256)`.
const TRANSFER_SELECTOR: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Transfer,
    Erc20,
    Swap,
    Mixed,
}

impl Workload {
    pub fn needs_token(self) -> bool {
        !matches!(self, Workload::Transfer)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Transfer,
    Erc20,
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
        let mut preimage = [0u8; 16];
        preimage[..8].copy_from_slice(&seed.to_be_bytes());
        preimage[8..].copy_from_slice(&(i as u64).to_be_bytes());
        let key = SecretKey::from_slice(keccak256(preimage).as_slice())
            .expect("a keccak output is a valid key with overwhelming probability");
        Account::from_key(key)
    })
}

/// One planned transaction: who pays whom what.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub sender: u32,
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
    pub seed: u64,
}

/// Transaction `j` is sent by account `j % accounts` (so a sender's nonces go out in order and
/// far apart). Its recipient is one of the first `hot_accounts` with probability `hot_ratio`
/// (contention on a few balances), else a spread-out other account.
pub fn plan(p: &PlanParams) -> Vec<Spec> {
    let mut rng = StdRng::seed_from_u64(p.seed);
    let n = p.accounts as u64;
    (0..p.txs as u64)
        .map(|j| {
            let sender = j % n;
            let to = if rng.random_bool(p.hot_ratio) {
                rng.random_range(0..p.hot_accounts.max(1) as u64)
            } else {
                (sender * 7919 + 1 + j / n) % n
            };
            let kind = match p.workload {
                Workload::Transfer => Kind::Transfer,
                Workload::Erc20 | Workload::Swap => Kind::Erc20,
                Workload::Mixed if j % 2 == 0 => Kind::Transfer,
                Workload::Mixed => Kind::Erc20,
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
    let mut data = Vec::with_capacity(68);
    data.extend_from_slice(&TRANSFER_SELECTOR);
    data.extend_from_slice(&[0u8; 12]);
    data.extend_from_slice(to.as_slice());
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
    token: Address,
) -> TxEip1559 {
    let to = accounts[spec.to as usize].address;
    let (kind, gas_limit, value, input) = match spec.kind {
        Kind::Transfer => (
            TxKind::Call(to),
            TRANSFER_GAS,
            U256::from(spec.amount),
            Bytes::new(),
        ),
        Kind::Erc20 => (
            TxKind::Call(token),
            ERC20_GAS,
            U256::ZERO,
            erc20_transfer_input(to, U256::from(spec.amount)),
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
    const TOTAL_SUPPLY_SLOT: u8 = 2;
    let slot = kestrel_benches::token_balance_slot(holder);
    let mut code = Vec::with_capacity(runtime.len() + 128);
    // PUSH32 supply, PUSH1 2, SSTORE
    code.push(0x7f);
    code.extend_from_slice(&supply.to_be_bytes::<32>());
    code.extend_from_slice(&[0x60, TOTAL_SUPPLY_SLOT, 0x55]);
    // PUSH32 supply, PUSH32 slot, SSTORE
    code.push(0x7f);
    code.extend_from_slice(&supply.to_be_bytes::<32>());
    code.push(0x7f);
    code.extend_from_slice(&slot.to_be_bytes::<32>());
    code.push(0x55);
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
            build(&spec, &accounts, 4, 1337, fees, Address::ZERO),
        );
        let raw = alloy_primitives::hex::decode(&signed.raw_hex).unwrap();
        let tx =
            kestrel_types::RecoveredTx::recover(kestrel_types::RecoveredTx::decode(&raw).unwrap())
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
            seed: 1,
        };
        let specs = plan(&p);
        assert!(specs.iter().all(|s| s.sender < 1_000 && s.to < 1_000));
        let hot = specs.iter().filter(|s| s.to < 4).count();
        assert!((4_500..5_500).contains(&hot), "{hot} hot of 10,000");
        let erc20 = specs.iter().filter(|s| s.kind == Kind::Erc20).count();
        assert_eq!(erc20, 5_000);
    }
}
