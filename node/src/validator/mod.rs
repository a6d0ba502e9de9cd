//! Multi-validator mode: when the genesis lists more than one validator, a driver thread runs
//! the BFT state machine over the validator network in place of the single-validator ordering
//! stage, and hands finalized blocks to the same execution and commit stages.
//!
//! ```text
//!  net (monoio) ──Inbound──▶ driver (Bft, timers, payloads, block log, sync) ──Proposal──▶ execution
//!        ▲                        │  ▲                                                      │
//!        └── send / broadcast ────┘  └────────── ExecutionResult ◀── commit ◀──────────────┘
//! ```

mod driver;
mod forward;
mod payload;
mod store;
mod wire;

use crate::{cli::NodeArgs, keys::ValidatorKey, testnet};
use alloy_primitives::{Address, U256};
use eyre::{WrapErr, bail, eyre};
use kestrel_consensus::bft::{self, ValidatorId, ValidatorSet};
use kestrel_net::{NetConfig, Network, PeerConfig, PeerId};
use kestrel_pipeline::{
    mempool::{IngressHandle, TxPool},
    state::LatestState,
    status::ChainStatus,
};
use kestrel_storage::Store;
use kestrel_types::{ChainSpec, ExecutionResult, Proposal};
use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    thread,
};

/// Stakes enter consensus in gwei: the genesis gives wei, which overflows u64 at 18 ETH.
const STAKE_UNIT_WEI: u64 = 1_000_000_000;
/// Directory under the datadir for the safety state and the block log.
const CONSENSUS_DIR: &str = "consensus";

/// This node's place in a multi-validator genesis.
pub struct Setup {
    key: ValidatorKey,
    validators: Vec<testnet::GenesisValidator>,
    me: usize,
    listen: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// `--p2p-preauth-max`, `--p2p-preauth-per-ip`, `--p2p-handshake-timeout-ms`.
    preauth_max: usize,
    preauth_per_ip_max: usize,
    handshake_timeout: std::time::Duration,
}

impl Setup {
    /// `Some` when the genesis lists more than one validator; the key must be one of them.
    pub fn load(args: &NodeArgs) -> eyre::Result<Option<Self>> {
        let Some(path) = &args.genesis else {
            return Ok(None);
        };
        let validators = match testnet::read_validators(path)? {
            Some(set) if set.len() > 1 => set,
            _ => return Ok(None),
        };
        let key_path = args.validator_key.as_deref().ok_or_else(|| {
            eyre!(
                "the genesis lists {} validators: give this validator's key with \
                 --validator-key FILE or [validator] key_file",
                validators.len()
            )
        })?;
        let key = ValidatorKey::load(key_path)?;
        let me = validators
            .iter()
            .position(|v| v.pubkey == key.public_key())
            .ok_or_else(|| {
                eyre!(
                    "the validator key {} is not in the genesis validator set",
                    key.public_key()
                )
            })?;
        let mut addrs: Vec<SocketAddr> = validators.iter().map(|v| v.p2p).collect();
        // `--p2p-peers` gives the other validators' addresses in genesis order (e.g. behind NAT
        // or in another network namespace than the genesis says).
        if !args.p2p_peers.is_empty() {
            if args.p2p_peers.len() != validators.len() - 1 {
                bail!(
                    "--p2p-peers lists {} addresses; the genesis has {} other validators",
                    args.p2p_peers.len(),
                    validators.len() - 1
                );
            }
            let mut given = args.p2p_peers.iter();
            for (i, addr) in addrs.iter_mut().enumerate() {
                if i != me {
                    *addr = *given.next().expect("counted above");
                }
            }
        }
        let listen = args.p2p_listen.unwrap_or(addrs[me]);
        tracing::info!(target: "node::validator", index = me, validators = validators.len(), address = %key.address(), pubkey = %key.public_key(), %listen, "validator key loaded");
        Ok(Some(Self {
            key,
            validators,
            me,
            listen,
            addrs,
            preauth_max: args.p2p_preauth_max,
            preauth_per_ip_max: args.p2p_preauth_per_ip,
            handshake_timeout: std::time::Duration::from_millis(args.p2p_handshake_timeout_ms),
        }))
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    fn validator_set(&self) -> eyre::Result<ValidatorSet> {
        let members = self
            .validators
            .iter()
            .map(|v| {
                let stake = u64::try_from(v.stake / U256::from(STAKE_UNIT_WEI))
                    .wrap_err_with(|| format!("stake of {} overflows u64 gwei", v.pubkey))?;
                Ok((ValidatorId(v.pubkey.to_bytes()), stake))
            })
            .collect::<eyre::Result<Vec<_>>>()?;
        Ok(ValidatorSet::new(members)?)
    }
}

/// The pipeline ends the driver connects to.
pub struct Wiring {
    pub spec: Arc<ChainSpec>,
    pub store: Arc<Store>,
    /// Where the reserve balance rule reads senders' balances when this validator leads.
    pub state: LatestState,
    pub pool: Arc<TxPool>,
    /// Where transactions forwarded by other validators are admitted.
    pub ingress: IngressHandle,
    pub status: Arc<ChainStatus>,
    pub results: crossbeam_channel::Receiver<ExecutionResult>,
    pub proposals: crossbeam_channel::Sender<Proposal>,
    pub stop: Arc<AtomicBool>,
    pub datadir: std::path::PathBuf,
    pub beneficiary: Address,
    pub block_time_ms: u64,
    pub execution_delay: u64,
}

/// Starts the validator network and the driver thread. Call after the metrics recorder is
/// installed (the network takes its per-peer metric handles at start).
pub fn start(setup: Setup, wiring: Wiring) -> eyre::Result<thread::JoinHandle<()>> {
    bft::metrics::describe();
    kestrel_net::describe_metrics();
    driver::describe_metrics();
    forward::describe_metrics();
    let set = setup.validator_set()?;
    let secret = setup.key.secret_key();
    let peers = setup
        .validators
        .iter()
        .zip(&setup.addrs)
        .enumerate()
        .filter(|(i, _)| *i != setup.me)
        .map(|(_, (v, addr))| {
            let id = PeerId::from_slice(&v.pubkey.to_bytes()).expect("a validated public key");
            PeerConfig { id, addr: *addr }
        })
        .collect();
    let mut config = NetConfig::new(secret, wiring.spec.chain_id, setup.listen, peers);
    config.preauth_max = setup.preauth_max;
    config.preauth_per_ip_max = setup.preauth_per_ip_max;
    config.handshake_timeout = setup.handshake_timeout;
    let (network, inbound) = Network::start(config)
        .wrap_err_with(|| format!("starting the validator network on {}", setup.listen))?;
    tracing::info!(target: "node::validator", listen = %network.local_addr(), driver = ?network.driver(), "validator network started");
    let dir = wiring.datadir.join(CONSENSUS_DIR);
    std::fs::create_dir_all(&dir).wrap_err("creating the consensus directory")?;
    let ids = setup
        .validators
        .iter()
        .map(|v| PeerId::from_slice(&v.pubkey.to_bytes()).expect("a validated public key"))
        .collect();
    let driver = driver::Driver::new(
        bft::ValidatorKey::new(secret),
        set,
        ids,
        network,
        inbound,
        &dir,
        wiring,
    )?;
    Ok(thread::Builder::new()
        .name("consensus".into())
        .spawn(move || driver.run())?)
}
