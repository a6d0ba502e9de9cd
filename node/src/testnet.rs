//! The validator set in a genesis file, and `kestrel init-testnet`, which writes a genesis, one
//! directory per validator (config, keystore, its password file) and one per full node (config;
//! its node key is generated at its first start) for a testnet on one host.
//!
//! The validator set sits in a top-level `kestrel` section of the geth-style genesis, which
//! geth-style parsers (alloy's included) ignore:
//! `"kestrel": {"validators": [{"pubkey", "address", "stake", "p2p"}]}`.

use crate::{
    cli::InitTestnetArgs,
    config::{Config, MetricsSection, P2pSection, Role, RpcSection, ValidatorSection},
    keys::{self, KeyError, ValidatorKey, ValidatorPubkey},
};
use alloy_primitives::{Address, U256, keccak256};
use kestrel_types::chain::{GAS_LIMIT_DEFAULT, GENESIS_BASE_FEE, address_of_key, dev_accounts};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

/// Most validators a genesis may list (and `init-testnet --validators` accepts).
pub const VALIDATORS_MAX: u16 = 100;
/// Most full nodes `init-testnet --full-nodes` writes.
pub const FULL_NODES_MAX: u16 = 100;
/// Most prefunded accounts `init-testnet --accounts` writes.
pub const ACCOUNTS_MAX: u32 = 10_000;
/// Each testnet validator's stake (equal stakes: 1,000,000 ETH in wei).
const TESTNET_STAKE_ETH: u64 = 1_000_000;
/// Each prefunded account's balance (as the dev chain: 10,000 ETH).
const ACCOUNT_BALANCE_ETH: u64 = 10_000;
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One validator of the genesis validator set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisValidator {
    pub pubkey: ValidatorPubkey,
    /// Derived from `pubkey`; written out so operators can fund or look up the validator.
    pub address: Address,
    /// Stake in wei.
    pub stake: U256,
    pub p2p: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KestrelSection {
    validators: Vec<GenesisValidator>,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidatorSetError {
    #[error("reading genesis file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("genesis file {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("genesis file {path}: kestrel.validators: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The validator set of a genesis file; `None` when it has no `kestrel` section.
pub fn read_validators(path: &Path) -> Result<Option<Vec<GenesisValidator>>, ValidatorSetError> {
    let text = std::fs::read_to_string(path).map_err(|source| ValidatorSetError::Io {
        path: path.to_owned(),
        source,
    })?;
    let json_err = |source| ValidatorSetError::Json {
        path: path.to_owned(),
        source,
    };
    let mut genesis: serde_json::Value = serde_json::from_str(&text).map_err(json_err)?;
    let Some(section) = genesis.get_mut("kestrel").map(serde_json::Value::take) else {
        return Ok(None);
    };
    let section: KestrelSection = serde_json::from_value(section).map_err(json_err)?;
    let invalid = |reason: String| ValidatorSetError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let validators = section.validators;
    if validators.is_empty() || validators.len() > usize::from(VALIDATORS_MAX) {
        return Err(invalid(format!(
            "{} validators; between 1 and {VALIDATORS_MAX} are allowed",
            validators.len()
        )));
    }
    let mut seen = HashSet::new();
    for v in &validators {
        if v.address != v.pubkey.address() {
            return Err(invalid(format!(
                "address {} is not the address of {} ({})",
                v.address,
                v.pubkey,
                v.pubkey.address()
            )));
        }
        if v.stake.is_zero() {
            return Err(invalid(format!("{} has no stake", v.pubkey)));
        }
        if !seen.insert(v.pubkey) {
            return Err(invalid(format!("{} is listed twice", v.pubkey)));
        }
    }
    Ok(Some(validators))
}

#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: already exists; refusing to overwrite a testnet")]
    Exists { path: PathBuf },
    #[error("ports: {0}")]
    Ports(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What `init-testnet` wrote for one validator.
#[derive(Debug)]
pub struct TestnetValidator {
    pub dir: PathBuf,
    pub validator: GenesisValidator,
    pub rpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// What `init-testnet` wrote for one full node.
#[derive(Debug)]
pub struct TestnetFullNode {
    pub dir: PathBuf,
    pub rpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// Writes the testnet and prints where each validator listens.
pub fn run(args: &InitTestnetArgs) -> Result<(), TestnetError> {
    let (validators, full_nodes) = write(args)?;
    println!(
        "wrote {}: chain id {}, {} validators, {} prefunded accounts",
        args.out.join("genesis.json").display(),
        args.chain_id,
        validators.len(),
        args.accounts
    );
    for v in &validators {
        println!(
            "{}  pubkey {}  address {}  p2p {}  rpc {}  metrics {}",
            v.dir.display(),
            v.validator.pubkey,
            v.validator.address,
            v.validator.p2p,
            v.rpc,
            v.metrics
        );
    }
    for f in &full_nodes {
        println!(
            "{}  full node  rpc {}  metrics {}",
            f.dir.display(),
            f.rpc,
            f.metrics
        );
    }
    if let Some(first) = validators.first() {
        println!(
            "start a validator with: kestrel node --config {}",
            first.dir.join("config.toml").display()
        );
    }
    Ok(())
}

/// File names in each validator's directory.
pub const KEYSTORE_FILE: &str = "keystore.json";
pub const PASSWORD_FILE: &str = "password.txt";

/// Writes DIR/genesis.json, DIR/accounts.json,
/// DIR/validator-<i>/{config.toml, keystore.json, password.txt} and DIR/full-<j>/config.toml.
pub fn write(
    args: &InitTestnetArgs,
) -> Result<(Vec<TestnetValidator>, Vec<TestnetFullNode>), TestnetError> {
    let n = args.validators;
    // Full nodes take the RPC and metrics ports after the validators'; they need no p2p port
    // (nobody dials a full node).
    let nodes = n + args.full_nodes;
    let ports = |base: u16, count: u16, what: &str| {
        (0..count)
            .map(|i| {
                base.checked_add(i)
                    .map(|port| SocketAddr::new(LOOPBACK, port))
                    .ok_or_else(|| {
                        TestnetError::Ports(format!("{what} port {base} + {i} is over 65535"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let p2p = ports(args.base_p2p_port, n, "p2p")?;
    let mut rpc = ports(args.base_rpc_port, nodes, "rpc")?;
    let mut metrics = ports(args.base_metrics_port, nodes, "metrics")?;
    let distinct: HashSet<u16> = p2p
        .iter()
        .chain(&rpc)
        .chain(&metrics)
        .map(|a| a.port())
        .collect();
    if distinct.len() != usize::from(n) + 2 * usize::from(nodes) {
        return Err(TestnetError::Ports(
            "the p2p, rpc and metrics port ranges overlap; choose bases further apart".into(),
        ));
    }

    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TestnetError::Io { path, source }
    };
    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let genesis_path = args.out.join("genesis.json");
    if genesis_path.exists() {
        return Err(TestnetError::Exists { path: genesis_path });
    }

    let full_rpc = rpc.split_off(usize::from(n));
    let full_metrics = metrics.split_off(usize::from(n));
    let write_config = |dir: &Path, config: &Config| {
        let text = format!(
            "# Written by `kestrel init-testnet`; docs/CONFIG.md lists every option.\n{}",
            toml::to_string(config).expect("the config serializes")
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, text).map_err(io_err(&config_path))
    };
    let mut written = Vec::with_capacity(usize::from(n));
    for (i, ((p2p, rpc), metrics)) in p2p.into_iter().zip(rpc).zip(metrics).enumerate() {
        let dir = args.out.join(format!("validator-{i}"));
        create_node_dir(&dir)?;
        let key = ValidatorKey::generate();
        // A random password per validator, beside its keystore: on one host the pair protects
        // nothing the directory's mode does not, but the nodes start the way production ones do.
        let password = alloy_primitives::hex::encode(rand::random::<[u8; 16]>());
        keys::write_private(&dir.join(PASSWORD_FILE), password.as_bytes())?;
        key.write_keystore(
            &dir.join(KEYSTORE_FILE),
            password.as_bytes(),
            keys::scrypt_params(args.scrypt_light),
        )?;
        let config = Config {
            validator: ValidatorSection {
                key_file: Some(KEYSTORE_FILE.into()),
                password_file: Some(PASSWORD_FILE.into()),
            },
            p2p: P2pSection {
                full_nodes_max: (args.full_nodes > 0).then_some(usize::from(args.full_nodes)),
                ..P2pSection::default()
            },
            ..node_config(rpc, metrics)
        };
        write_config(&dir, &config)?;
        let pubkey = key.public_key();
        written.push(TestnetValidator {
            dir,
            validator: GenesisValidator {
                pubkey,
                address: pubkey.address(),
                stake: ether(TESTNET_STAKE_ETH),
                p2p,
            },
            rpc,
            metrics,
        });
    }

    let mut full_nodes = Vec::with_capacity(usize::from(args.full_nodes));
    for (j, (rpc, metrics)) in full_rpc.into_iter().zip(full_metrics).enumerate() {
        let dir = args.out.join(format!("full-{j}"));
        create_node_dir(&dir)?;
        let config = Config {
            role: Some(Role::Full),
            ..node_config(rpc, metrics)
        };
        write_config(&dir, &config)?;
        full_nodes.push(TestnetFullNode { dir, rpc, metrics });
    }

    let accounts = testnet_accounts(args.accounts);
    let balance = ether(ACCOUNT_BALANCE_ETH);
    let alloc: serde_json::Map<String, serde_json::Value> = accounts
        .iter()
        .map(|(address, _)| {
            (
                address.to_string(),
                serde_json::json!({ "balance": balance }),
            )
        })
        .collect();
    let validators: Vec<&GenesisValidator> = written.iter().map(|v| &v.validator).collect();
    let genesis = serde_json::json!({
        "config": {
            "chainId": args.chain_id,
            "homesteadBlock": 0, "eip150Block": 0, "eip155Block": 0, "eip158Block": 0,
            "byzantiumBlock": 0, "constantinopleBlock": 0, "petersburgBlock": 0,
            "istanbulBlock": 0, "berlinBlock": 0, "londonBlock": 0,
            "mergeNetsplitBlock": 0, "terminalTotalDifficulty": 0,
            "shanghaiTime": 0, "cancunTime": 0, "pragueTime": 0,
        },
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": "0x",
        "gasLimit": format!("{GAS_LIMIT_DEFAULT:#x}"),
        "baseFeePerGas": format!("{GENESIS_BASE_FEE:#x}"),
        "difficulty": "0x0",
        "alloc": alloc,
        "kestrel": { "validators": validators },
    });
    let text = serde_json::to_string_pretty(&genesis).expect("the genesis serializes");
    std::fs::write(&genesis_path, text + "\n").map_err(io_err(&genesis_path))?;

    // These keys are public (Hardhat's, or derived from a fixed string): dev funds only.
    let listed: Vec<_> = accounts
        .iter()
        .map(|(address, key)| serde_json::json!({ "address": address, "privateKey": key }))
        .collect();
    let accounts_path = args.out.join("accounts.json");
    let text = serde_json::to_string_pretty(&listed).expect("the accounts serialize");
    std::fs::write(&accounts_path, text + "\n").map_err(io_err(&accounts_path))?;
    Ok((written, full_nodes))
}

/// A node's directory, private to its user, which must not exist yet.
fn create_node_dir(dir: &Path) -> Result<(), TestnetError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => TestnetError::Exists {
                path: dir.to_owned(),
            },
            _ => TestnetError::Io {
                path: dir.to_owned(),
                source,
            },
        })
}

/// The first `count` dev accounts: Hardhat's ten, then keys derived from a fixed string.
fn testnet_accounts(count: u32) -> Vec<(Address, alloy_primitives::B256)> {
    let hardhat = dev_accounts();
    let derived = (hardhat.len()..).map(|i| {
        let key = keccak256(format!("kestrel testnet account {i}"));
        (address_of_key(&key), key)
    });
    hardhat
        .into_iter()
        .chain(derived)
        .take(count as usize)
        .collect()
}

fn ether(eth: u64) -> U256 {
    U256::from(eth) * U256::from(10u64).pow(U256::from(18u64))
}

/// What every node of a testnet has in its config: the shared genesis and its own datadir,
/// JSON-RPC and metrics ports. Paths are relative to the config file, so the testnet directory
/// can be moved.
fn node_config(rpc: SocketAddr, metrics: SocketAddr) -> Config {
    Config {
        genesis: Some("../genesis.json".into()),
        datadir: Some("data".into()),
        rpc: RpcSection {
            http_addr: Some(rpc.ip()),
            http_port: Some(rpc.port()),
            ..RpcSection::default()
        },
        metrics: MetricsSection {
            listen: Some(metrics),
        },
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_types::ChainSpec;

    fn args(out: &Path, validators: u16) -> InitTestnetArgs {
        InitTestnetArgs {
            validators,
            out: out.to_owned(),
            chain_id: 4242,
            base_p2p_port: 30303,
            base_rpc_port: 8545,
            base_metrics_port: 9100,
            accounts: 12,
            scrypt_light: true,
            full_nodes: 0,
        }
    }

    #[test]
    fn testnet_genesis_is_a_chain_spec_with_its_validator_set() {
        let dir = tempfile::tempdir().unwrap();
        let (written, full_nodes) = write(&InitTestnetArgs {
            full_nodes: 2,
            ..args(dir.path(), 3)
        })
        .unwrap();
        let genesis = dir.path().join("genesis.json");
        let spec = ChainSpec::from_genesis_file(&genesis).unwrap();
        assert_eq!(spec.chain_id, 4242);
        assert_eq!(spec.alloc.len(), 12);
        assert!(spec.alloc.contains_key(&dev_accounts()[0].0));
        let set = read_validators(&genesis).unwrap().unwrap();
        let expected: Vec<_> = written.iter().map(|v| v.validator.clone()).collect();
        assert_eq!(set, expected);
        for (i, v) in written.iter().enumerate() {
            let key =
                ValidatorKey::load(&v.dir.join(KEYSTORE_FILE), Some(&v.dir.join(PASSWORD_FILE)))
                    .unwrap();
            assert_eq!(key.public_key(), set[i].pubkey);
            let config = Config::load(&v.dir.join("config.toml")).unwrap();
            assert_eq!(config.genesis, Some(v.dir.join("../genesis.json")));
            assert_eq!(config.rpc.http_port, Some(8545 + i as u16));
            assert_eq!(config.p2p.full_nodes_max, Some(2));
        }
        // Full nodes: no key, the ports after the validators'.
        for (j, f) in full_nodes.iter().enumerate() {
            let config = Config::load(&f.dir.join("config.toml")).unwrap();
            assert_eq!(config.role, Some(Role::Full));
            assert_eq!(config.validator.key_file, None);
            assert_eq!(config.rpc.http_port, Some(8548 + j as u16));
            assert_eq!(config.metrics.listen.unwrap().port(), 9103 + j as u16);
        }
        let err = write(&args(dir.path(), 1)).unwrap_err();
        assert!(matches!(err, TestnetError::Exists { .. }), "{err}");
    }

    #[test]
    fn overlapping_port_ranges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path(), 4);
        a.base_metrics_port = 8547;
        assert!(matches!(write(&a), Err(TestnetError::Ports(_))));
        a.base_metrics_port = 65534;
        assert!(matches!(write(&a), Err(TestnetError::Ports(_))));
    }

    #[test]
    fn validator_set_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("genesis.json");
        let key = ValidatorKey::generate().public_key();
        let entry = |address: Address| serde_json::json!({"pubkey": key, "address": address, "stake": "0x1", "p2p": "127.0.0.1:1"});
        let check = |validators: serde_json::Value| {
            let genesis = serde_json::json!({"config": {"chainId": 1}, "kestrel": {"validators": validators}});
            std::fs::write(&path, genesis.to_string()).unwrap();
            read_validators(&path)
        };
        assert_eq!(
            check(serde_json::json!([entry(key.address())]))
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        let err = check(serde_json::json!([entry(Address::ZERO)])).unwrap_err();
        assert!(err.to_string().contains("is not the address of"), "{err}");
        let err = check(serde_json::json!([
            entry(key.address()),
            entry(key.address())
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let err = check(serde_json::json!([])).unwrap_err();
        assert!(err.to_string().contains("0 validators"), "{err}");
        std::fs::write(&path, r#"{"config": {"chainId": 1}}"#).unwrap();
        assert_eq!(read_validators(&path).unwrap(), None);
    }
}
