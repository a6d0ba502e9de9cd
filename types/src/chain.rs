//! Chain specification: chain id, fork schedule, block gas limit and the genesis allocation.
//! Built in for `--dev`, or read from a geth-style genesis JSON.

use crate::state::{AccountInfo, KECCAK_EMPTY};
use alloy_genesis::Genesis;
use alloy_primitives::{Address, B64, B256, Bytes, U64, U256, keccak256};
use std::{collections::BTreeMap, path::Path, sync::OnceLock};

/// Default block gas limit of a Kestrel chain.
pub const GAS_LIMIT_DEFAULT: u64 = 200_000_000;
/// Base fee of the genesis block when the genesis file does not give one (1 gwei, as geth).
pub const GENESIS_BASE_FEE: u64 = 1_000_000_000;
/// Chain id of the built-in dev chain (as geth `--dev`, Hardhat and anvil).
pub const DEV_CHAIN_ID: u64 = 1337;

/// Private keys of the ten accounts of the mnemonic
/// `test test test test test test test test test test test junk` (m/44'/60'/0'/0/i), the accounts
/// Hardhat, anvil and their tutorials use.
pub const DEV_PRIVATE_KEYS: [&str; 10] = [
    "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "dbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
];

/// The forks Kestrel executes. Earlier forks are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fork {
    Cancun,
    Prague,
}

#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("reading genesis file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing genesis file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("genesis config: {0}")]
    Config(String),
}

/// One account of the genesis allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisAlloc {
    pub info: AccountInfo,
    pub code: Option<Bytes>,
    pub storage: BTreeMap<U256, U256>,
}

/// The genesis block's header fields that a genesis file sets: every field of geth's `Genesis`
/// that reaches its block 0, plus `parentBeaconBlockRoot`. The rest of the header (roots, gas
/// limit, requests hash) follows from the chain spec, so two clients given the same file build
/// the same block 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenesisHeader {
    pub timestamp: u64,
    pub base_fee: u64,
    pub extra_data: Bytes,
    pub coinbase: Address,
    pub parent_hash: B256,
    pub mix_hash: B256,
    pub nonce: B64,
    pub difficulty: U256,
    pub gas_used: u64,
    pub blob_gas_used: u64,
    pub excess_blob_gas: u64,
    pub parent_beacon_block_root: B256,
}

impl Default for GenesisHeader {
    /// What geth gives a genesis file that sets none of them, but for the base fee (1 gwei).
    fn default() -> Self {
        Self {
            timestamp: 0,
            base_fee: GENESIS_BASE_FEE,
            extra_data: Bytes::new(),
            coinbase: Address::ZERO,
            parent_hash: B256::ZERO,
            mix_hash: B256::ZERO,
            nonce: B64::ZERO,
            difficulty: U256::ZERO,
            gas_used: 0,
            blob_gas_used: 0,
            excess_blob_gas: 0,
            parent_beacon_block_root: B256::ZERO,
        }
    }
}

/// The genesis-file keys geth reads that alloy's `Genesis` does not carry.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenesisFileExtra {
    gas_used: Option<U64>,
    parent_beacon_block_root: Option<B256>,
    #[serde(default)]
    config: ChainIdOnly,
}

/// Whether the file's `config` names a chain id (alloy's `ChainConfig` defaults a missing one).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainIdOnly {
    chain_id: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    pub chain_id: u64,
    /// Activation timestamp of Cancun; `None` means active from genesis if Prague is not.
    pub cancun_time: Option<u64>,
    /// Activation timestamp of Prague.
    pub prague_time: Option<u64>,
    pub gas_limit: u64,
    pub genesis: GenesisHeader,
    pub alloc: BTreeMap<Address, GenesisAlloc>,
    storage_only: StorageOnly,
}

/// [`ChainSpec::storage_only_accounts`], found once: executors ask for every block, and the walk
/// over a 10,000,000-account allocation took a third of a block's execution time.
#[derive(Debug, Default)]
struct StorageOnly(OnceLock<Box<[Address]>>);

/// A clone starts without the cache, so that its `alloc` may still be changed.
impl Clone for StorageOnly {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A cache of `alloc`, which the specs' equality compares.
impl PartialEq for StorageOnly {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for StorageOnly {}

impl ChainSpec {
    /// The built-in dev chain: chain id 1337, Prague from genesis, ten dev accounts with 10,000 ETH.
    pub fn dev() -> Self {
        let balance = U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18u64));
        let alloc = dev_accounts()
            .into_iter()
            .map(|(addr, _)| {
                let alloc = GenesisAlloc {
                    info: AccountInfo::with_balance(balance),
                    code: None,
                    storage: BTreeMap::new(),
                };
                (addr, alloc)
            })
            .collect();
        Self {
            chain_id: DEV_CHAIN_ID,
            cancun_time: Some(0),
            prague_time: Some(0),
            gas_limit: GAS_LIMIT_DEFAULT,
            genesis: GenesisHeader::default(),
            alloc,
            storage_only: StorageOnly::default(),
        }
    }

    /// Reads a geth-style genesis JSON (`config.chainId`, `cancunTime`, `pragueTime`, `alloc`,
    /// `gasLimit` and every header field of [`GenesisHeader`]). Without fork times, Prague is
    /// active from genesis.
    pub fn from_genesis_file(path: &Path) -> Result<Self, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_genesis_json(&text)
    }

    pub fn from_genesis_json(text: &str) -> Result<Self, GenesisError> {
        // alloy's `ChainConfig` defaults a missing chain id to mainnet's 1; a genesis file that
        // forgets it must be refused, not silently become chain 1.
        //
        // Each reads the text itself, skipping what it does not need: a JSON document of the
        // whole file (and a copy of it) took 16 GiB for a 10,000,000-account genesis of 715 MB.
        let extra: GenesisFileExtra = serde_json::from_str(text)?;
        if extra.config.chain_id.is_none() {
            return Err(GenesisError::Config("config.chainId must be set".into()));
        }
        let genesis: Genesis = serde_json::from_str(text)?;
        let mut spec = Self::from_genesis(genesis)?;
        if let Some(gas_used) = extra.gas_used {
            spec.genesis.gas_used = gas_used.to();
        }
        if let Some(root) = extra.parent_beacon_block_root {
            spec.genesis.parent_beacon_block_root = root;
        }
        Ok(spec)
    }

    pub fn from_genesis(genesis: Genesis) -> Result<Self, GenesisError> {
        let cfg = &genesis.config;
        if cfg.chain_id == 0 {
            return Err(GenesisError::Config(
                "config.chainId must be set and non-zero".into(),
            ));
        }
        let (cancun_time, prague_time) = match (cfg.cancun_time, cfg.prague_time) {
            (None, None) => (Some(0), Some(0)),
            (None, Some(_)) => {
                return Err(GenesisError::Config("pragueTime without cancunTime".into()));
            }
            (c, p) => (c, p),
        };
        if cancun_time.is_some_and(|t| t > genesis.timestamp) {
            return Err(GenesisError::Config(
                "Kestrel starts at Cancun: cancunTime must be at or before the genesis timestamp"
                    .into(),
            ));
        }
        // Kestrel's chain starts at block 0: its store, sync and RPC count from there.
        if genesis.number.is_some_and(|n| n != 0) {
            return Err(GenesisError::Config(
                "number: Kestrel's genesis is block 0".into(),
            ));
        }
        let base_fee = match genesis.base_fee_per_gas {
            None => GENESIS_BASE_FEE,
            Some(fee) => u64::try_from(fee)
                .map_err(|_| GenesisError::Config("baseFeePerGas above 2^64 - 1".into()))?,
        };
        let gas_limit = if genesis.gas_limit == 0 {
            GAS_LIMIT_DEFAULT
        } else {
            genesis.gas_limit
        };
        let alloc = genesis
            .alloc
            .into_iter()
            .map(|(addr, acc)| {
                let code = acc.code.filter(|c| !c.is_empty());
                let info = AccountInfo {
                    nonce: acc.nonce.unwrap_or(0),
                    balance: acc.balance,
                    code_hash: code.as_ref().map_or(KECCAK_EMPTY, keccak256),
                };
                let storage = acc
                    .storage
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (U256::from_be_bytes(k.0), U256::from_be_bytes(v.0)))
                    .filter(|(_, v)| !v.is_zero())
                    .collect();
                (
                    addr,
                    GenesisAlloc {
                        info,
                        code,
                        storage,
                    },
                )
            })
            .collect();
        Ok(Self {
            chain_id: cfg.chain_id,
            cancun_time,
            prague_time,
            gas_limit,
            genesis: GenesisHeader {
                timestamp: genesis.timestamp,
                base_fee,
                extra_data: genesis.extra_data,
                coinbase: genesis.coinbase,
                parent_hash: genesis.parent_hash.unwrap_or_default(),
                mix_hash: genesis.mix_hash,
                nonce: B64::from(genesis.nonce),
                difficulty: genesis.difficulty,
                gas_used: 0,
                blob_gas_used: genesis.blob_gas_used.unwrap_or(0),
                excess_blob_gas: genesis.excess_blob_gas.unwrap_or(0),
                parent_beacon_block_root: B256::ZERO,
            },
            alloc,
            storage_only: StorageOnly::default(),
        })
    }

    /// The allocation's accounts with storage but no code and nonce 0, in address order.
    /// Creating a contract at one collides (EIP-7610), and no transaction can make another: an
    /// account gets storage by running code, which needs code or a delegation (a nonce).
    ///
    /// Found at the first call: `alloc` is not to change after it (checked in debug builds).
    pub fn storage_only_accounts(&self) -> &[Address] {
        let found = self
            .storage_only
            .0
            .get_or_init(|| self.find_storage_only().collect());
        debug_assert!(
            found.iter().copied().eq(self.find_storage_only()),
            "the allocation changed after its storage-only accounts were found"
        );
        found
    }

    fn find_storage_only(&self) -> impl Iterator<Item = Address> + '_ {
        self.alloc
            .iter()
            .filter(|(_, account)| {
                account.code.is_none() && account.info.nonce == 0 && !account.storage.is_empty()
            })
            .map(|(address, _)| *address)
    }

    /// The fork in force for a block with this timestamp.
    pub fn fork_at(&self, timestamp: u64) -> Fork {
        match self.prague_time {
            Some(t) if timestamp >= t => Fork::Prague,
            _ => Fork::Cancun,
        }
    }
}

/// The ten dev accounts: (address, private key).
pub fn dev_accounts() -> Vec<(Address, B256)> {
    DEV_PRIVATE_KEYS
        .iter()
        .map(|k| {
            let key = B256::from_slice(&hex_decode(k));
            (address_of_key(&key), key)
        })
        .collect()
}

/// The Ethereum address of a secp256k1 private key.
pub fn address_of_key(key: &B256) -> Address {
    let secret = secp256k1::SecretKey::from_slice(key.as_slice()).expect("valid private key");
    let public = secp256k1::PublicKey::from_secret_key(secp256k1::SECP256K1, &secret);
    Address::from_raw_public_key(&public.serialize_uncompressed()[1..])
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    /// The storage-only accounts are found once, and a clone finds its own: a spec cloned and
    /// then given such an account (as tests and benches build theirs) reports it.
    #[test]
    fn storage_only_accounts_are_found_once_per_spec() {
        let dev = ChainSpec::dev();
        assert!(dev.storage_only_accounts().is_empty());
        let mut spec = dev.clone();
        let only_storage = Address::repeat_byte(0x77);
        spec.alloc.insert(
            only_storage,
            GenesisAlloc {
                info: AccountInfo::default(),
                code: None,
                storage: BTreeMap::from([(U256::from(1), U256::from(2))]),
            },
        );
        let mut with_code = GenesisAlloc {
            info: AccountInfo::default(),
            code: Some(Bytes::from_static(&[0x00])),
            storage: BTreeMap::from([(U256::from(1), U256::from(2))]),
        };
        spec.alloc
            .insert(Address::repeat_byte(0x78), with_code.clone());
        with_code.code = None;
        with_code.info.nonce = 1;
        spec.alloc.insert(Address::repeat_byte(0x79), with_code);
        assert_eq!(spec.storage_only_accounts(), &[only_storage]);
        assert_eq!(spec.storage_only_accounts(), &[only_storage]);
        assert!(dev.storage_only_accounts().is_empty());
        assert_eq!(spec, spec.clone());
    }

    #[test]
    fn dev_accounts_are_the_hardhat_ones() {
        let accounts = dev_accounts();
        assert_eq!(
            accounts[0].0,
            address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266")
        );
        assert_eq!(
            accounts[1].0,
            address!("70997970C51812dc3A010C7d01b50e0d17dc79C8")
        );
        assert_eq!(
            accounts[9].0,
            address!("a0Ee7A142d267C1f36714E4a8F75612F20a79720")
        );
    }

    #[test]
    fn geth_genesis_parses() {
        let json = r#"{
            "config": {"chainId": 42, "cancunTime": 0},
            "gasLimit": "0x1c9c380", "timestamp": "0x10", "difficulty": "0x0",
            "alloc": {"0x1000000000000000000000000000000000000001": {
                "balance": "0x10", "nonce": "0x2", "code": "0x6001",
                "storage": {"0x01": "0x02"}}}
        }"#;
        let spec = ChainSpec::from_genesis_json(json).unwrap();
        assert_eq!(spec.chain_id, 42);
        assert_eq!(spec.gas_limit, 30_000_000);
        assert_eq!(spec.fork_at(16), Fork::Cancun);
        let acc = spec.alloc.values().next().unwrap();
        assert_eq!(acc.info.nonce, 2);
        assert_eq!(acc.storage.get(&U256::from(1)), Some(&U256::from(2)));
    }

    #[test]
    fn genesis_without_chain_id_is_rejected() {
        let err = ChainSpec::from_genesis_json(r#"{"config": {}, "alloc": {}}"#).unwrap_err();
        assert!(err.to_string().contains("chainId"), "{err}");
    }
}
