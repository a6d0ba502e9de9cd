//! Deterministic workloads for Kestrel's benchmarks: funded accounts, signed blocks, and an
//! in-memory state to execute them on (so executor benches measure execution, not disk).

pub mod archive;
pub mod commit;
pub mod pool;
pub mod recover;
pub mod store;
pub mod workload;

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, map::HashMap};
use kestrel_pipeline::evm::BlockHashes;
use kestrel_storage::{StateView, StorageError};
use kestrel_types::{AccountInfo, RecoveredTx};

/// Chain id of the bench chain.
pub const CHAIN_ID: u64 = 1337;

/// Accounts and code held in memory.
#[derive(Debug, Default, Clone)]
pub struct MemState {
    pub accounts: HashMap<Address, AccountInfo>,
    pub storage: HashMap<(Address, U256), U256>,
    pub codes: HashMap<B256, Bytes>,
}

impl StateView for MemState {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StorageError> {
        Ok(self.accounts.get(&address).copied())
    }
    fn storage(&self, address: Address, slot: U256) -> Result<U256, StorageError> {
        Ok(self
            .storage
            .get(&(address, slot))
            .copied()
            .unwrap_or_default())
    }
    fn code(&self, code_hash: B256) -> Result<Option<Bytes>, StorageError> {
        Ok(self.codes.get(&code_hash).cloned())
    }
    fn has_storage(&self, address: Address) -> Result<bool, StorageError> {
        Ok(self
            .storage
            .iter()
            .any(|((owner, _), value)| *owner == address && !value.is_zero()))
    }
}

/// The nearest-rank `q` quantile of `values` (sorts them): the figure the benches report as
/// p50, p90 or max.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Block hashes for benches: a pure function of the number.
pub struct FakeHashes;
impl BlockHashes for FakeHashes {
    fn block_hash(&self, number: u64) -> Result<B256, StorageError> {
        Ok(alloy_primitives::keccak256(number.to_be_bytes()))
    }
}

/// The private key of bench account `i` (never zero).
pub fn key(i: u64) -> secp256k1::SecretKey {
    let mut bytes = [0u8; 32];
    bytes[24..].copy_from_slice(&(i + 1).to_be_bytes());
    bytes[0] = 0x42;
    secp256k1::SecretKey::from_slice(&bytes).expect("valid key")
}

pub fn address(i: u64) -> Address {
    let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &key(i));
    Address::from_raw_public_key(&public.serialize_uncompressed()[1..])
}

/// `kestrel-loadgen`'s account `i` of a run seeded with `seed`: key keccak256(seed ‖ i), so a run
/// is reproducible from its seed and `kestrel-wsbench` can follow the same accounts' events.
pub fn seeded_key(seed: u64, i: u64) -> secp256k1::SecretKey {
    let mut preimage = [0u8; 16];
    preimage[..8].copy_from_slice(&seed.to_be_bytes());
    preimage[8..].copy_from_slice(&i.to_be_bytes());
    secp256k1::SecretKey::from_slice(alloy_primitives::keccak256(preimage).as_slice())
        .expect("a keccak output is a valid key with overwhelming probability")
}

/// The address of [`seeded_key`].
pub fn seeded_address(seed: u64, i: u64) -> Address {
    let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &seeded_key(seed, i));
    Address::from_raw_public_key(&public.serialize_uncompressed()[1..])
}

/// Signs an EIP-1559 transaction with account `i`'s key.
pub fn sign(i: u64, tx: TxEip1559) -> RecoveredTx {
    let msg = secp256k1::Message::from_digest(tx.signature_hash().0);
    let (rec, bytes) = secp256k1::SECP256K1
        .sign_ecdsa_recoverable(&msg, &key(i))
        .serialize_compact();
    let sig = Signature::from_bytes_and_parity(&bytes, i32::from(rec) != 0);
    RecoveredTx::new_unchecked(TxEnvelope::Eip1559(tx.into_signed(sig)), address(i))
}

/// `n` funded accounts (each 1,000 ETH) and their addresses.
pub fn funded_state(n: u64) -> (MemState, Vec<Address>) {
    let mut state = MemState::default();
    let balance = U256::from(1_000u64) * U256::from(10u64).pow(U256::from(18));
    let addresses: Vec<Address> = (0..n).map(address).collect();
    for a in &addresses {
        state
            .accounts
            .insert(*a, AccountInfo::with_balance(balance));
    }
    (state, addresses)
}

/// `txs` ETH transfers, sender `i` pays account `(i * 7919 + 1) % accounts`, all senders distinct.
pub fn transfer_block(accounts: &[Address], txs: usize, base_fee: u64) -> Vec<RecoveredTx> {
    assert!(txs <= accounts.len(), "one transfer per sender");
    (0..txs as u64)
        .map(|i| {
            let to = accounts[((i * 7919 + 1) % accounts.len() as u64) as usize];
            sign(
                i,
                TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce: 0,
                    gas_limit: 21_000,
                    max_fee_per_gas: u128::from(base_fee) * 2,
                    max_priority_fee_per_gas: 1,
                    to: TxKind::Call(to),
                    value: U256::from(1_000 + i),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Runtime code of `tests/e2e/contracts/Token.sol` (solc 0.8.37, optimizer 200 runs, Prague);
/// regenerate with `node -e "import('./compile.mjs').then(m => console.log(m.compileToken().deployedBytecode))"`
/// in tests/e2e.
pub const TOKEN_RUNTIME_HEX: &str = include_str!("token.hex");
/// Where the bench token lives.
pub const TOKEN: Address = Address::new([0x70; 20]);
/// Storage slot of `balanceOf` in Token.sol's layout (name, symbol, totalSupply, balanceOf).
const BALANCE_OF_SLOT: u64 = 3;
/// Token balance every holder starts with.
pub const TOKEN_BALANCE: u64 = 1_000_000;

/// The storage slot of `balanceOf[holder]`.
pub fn token_balance_slot(holder: Address) -> U256 {
    let mut preimage = [0u8; 64];
    preimage[12..32].copy_from_slice(holder.as_slice());
    preimage[32..].copy_from_slice(&U256::from(BALANCE_OF_SLOT).to_be_bytes::<32>());
    U256::from_be_bytes(alloy_primitives::keccak256(preimage).0)
}

/// Deploys the token at [`TOKEN`] into `state` with every account in `holders` holding
/// [`TOKEN_BALANCE`].
pub fn deploy_token(state: &mut MemState, holders: &[Address]) {
    deploy_token_at(state, TOKEN, holders);
}

/// Deploys Token.sol at `token` with every account in `holders` holding [`TOKEN_BALANCE`].
pub fn deploy_token_at(state: &mut MemState, token: Address, holders: &[Address]) {
    let code =
        Bytes::from(alloy_primitives::hex::decode(TOKEN_RUNTIME_HEX.trim()).expect("token hex"));
    let code_hash = alloy_primitives::keccak256(&code);
    state.codes.insert(code_hash, code);
    state.accounts.insert(
        token,
        AccountInfo {
            nonce: 1,
            balance: U256::ZERO,
            code_hash,
        },
    );
    for h in holders {
        state
            .storage
            .insert((token, token_balance_slot(*h)), U256::from(TOKEN_BALANCE));
    }
    // totalSupply, so the token's own view of itself is consistent.
    state.storage.insert(
        (token, U256::from(2)),
        U256::from(TOKEN_BALANCE) * U256::from(holders.len()),
    );
}

/// `txs` ERC-20 `transfer`s of the token, sender `i` to account `(i * 7919 + 1) % accounts`.
pub fn erc20_block(accounts: &[Address], txs: usize, base_fee: u64) -> Vec<RecoveredTx> {
    assert!(txs <= accounts.len(), "one transfer per sender");
    (0..txs as u64)
        .map(|i| {
            let to = accounts[((i * 7919 + 1) % accounts.len() as u64) as usize];
            let mut data = Vec::with_capacity(68);
            data.extend_from_slice(&[0xa9, 0x05, 0x9c, 0xbb]);
            data.extend_from_slice(&[0u8; 12]);
            data.extend_from_slice(to.as_slice());
            data.extend_from_slice(&U256::from(1 + i % 100).to_be_bytes::<32>());
            sign(
                i,
                TxEip1559 {
                    chain_id: CHAIN_ID,
                    nonce: 0,
                    gas_limit: 80_000,
                    max_fee_per_gas: u128::from(base_fee) * 2,
                    max_priority_fee_per_gas: 1,
                    to: TxKind::Call(TOKEN),
                    value: U256::ZERO,
                    input: data.into(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// Lets bare revm (`CacheDB<&MemState>`) read the same state the Kestrel executor reads.
impl revm::DatabaseRef for MemState {
    type Error = std::convert::Infallible;

    fn basic_ref(&self, address: Address) -> Result<Option<revm::state::AccountInfo>, Self::Error> {
        Ok(self
            .accounts
            .get(&address)
            .map(|a| revm::state::AccountInfo {
                balance: a.balance,
                nonce: a.nonce,
                code_hash: a.code_hash,
                code: None,
                ..Default::default()
            }))
    }
    fn code_by_hash_ref(&self, code_hash: B256) -> Result<revm::bytecode::Bytecode, Self::Error> {
        Ok(self
            .codes
            .get(&code_hash)
            .cloned()
            .map(revm::bytecode::Bytecode::new_raw)
            .unwrap_or_default())
    }
    fn storage_ref(&self, address: Address, index: U256) -> Result<U256, Self::Error> {
        Ok(self
            .storage
            .get(&(address, index))
            .copied()
            .unwrap_or_default())
    }
    fn block_hash_ref(&self, number: u64) -> Result<B256, Self::Error> {
        Ok(alloy_primitives::keccak256(number.to_be_bytes()))
    }
}
