//! Ordering: a driver thread runs the BFT state machine and hands finalized blocks to the
//! execution and commit stages. Every chain runs it, the dev chain too: a chain of one validator
//! is a BFT chain with no peers, whose quorum is its own vote. A full node (`--full`) runs a
//! follower instead (`follower.rs`): block sync from the validators, no state machine.
//!
//! ```text
//!  net (monoio) ──Inbound──▶ driver (Bft, timers, payloads, block log, sync) ──OrderedBlock──▶ execution
//!        ▲                        │  ▲                                                          │
//!        └── send / broadcast ────┘  └────────── ExecutionResult ◀── commit ◀──────────────────┘
//! ```

mod builder;
pub mod check;
mod clock;
mod driver;
mod finality;
mod follower;
mod forward;
mod metrics;
mod payload;
mod payloads;
mod rounds;
#[cfg(test)]
mod sim;
pub mod statesync;
pub(crate) mod store;
mod sync;
#[cfg(test)]
mod test_chain;
#[cfg(test)]
mod test_tx;
mod transport;
mod wire;

use crate::{cli::NodeArgs, keys::ValidatorKey, testnet};
use alloy_primitives::{Address, U256};
use eyre::{WrapErr, bail, eyre};
use kestrel_consensus::bft::{self, ValidatorId, ValidatorSet};
use kestrel_net::{Inbound, NetConfig, Network, NetworkHandle, PeerConfig, PeerId};
use kestrel_pipeline::{
    mempool::{IngressHandle, TxPool},
    state::LatestState,
    status::ChainStatus,
};
use kestrel_storage::Store;
use kestrel_types::{ChainSpec, ExecutionResult, OrderedBlock};
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, atomic::AtomicBool},
    thread,
    time::Duration,
};
pub use store::configure_archive;
use transport::{NetTransport, NoPeers, Transport};

/// Stakes enter consensus in gwei: the genesis gives wei, which overflows u64 at 18 ETH.
const STAKE_UNIT_WEI: u64 = 1_000_000_000;
/// Directory under the datadir for the safety state and the block log.
const CONSENSUS_DIR: &str = "consensus";

/// File under the datadir holding the key of a chain whose genesis names no validator (the dev
/// chain): generated on first start, so a restart signs as the same validator.
const OWN_KEY_FILE: &str = "validator.key";
/// File under a full node's datadir holding its node key: its identity on the transport only
/// (validators count full-node connections by it), generated on first start.
const NODE_KEY_FILE: &str = "node.key";
/// Stake of the only validator of a chain of one (any positive stake is the whole set's).
const ALONE_STAKE_WEI: u64 = STAKE_UNIT_WEI;

/// This node's place in the validator set, or outside it (a full node).
pub struct Setup {
    key: ValidatorKey,
    validators: Vec<testnet::GenesisValidator>,
    /// This validator's index in the set; `None` on a full node.
    me: Option<usize>,
    /// `None` for a set of one that admits no full nodes (no network).
    network: Option<NetworkSetup>,
}

impl Setup {
    /// The validator set from the genesis, or this node alone when the genesis names none (the
    /// dev chain, or a plain geth genesis): then the key is `--validator-key`, else the
    /// datadir's own, generated on first start.
    pub fn load(args: &NodeArgs) -> eyre::Result<Self> {
        let validators = args
            .genesis
            .as_deref()
            .map(testnet::read_validators)
            .transpose()?
            .flatten();
        if args.full {
            return Self::full_node(args, validators);
        }
        let key = match (&args.validator_key, &validators) {
            (Some(path), _) => ValidatorKey::load(path, args.password_file.as_deref())?,
            (None, Some(set)) => bail!(
                "the genesis lists {} validator(s): give its key with --validator-key FILE \
                 or [validator] key_file",
                set.len()
            ),
            (None, None) => own_key(&args.datadir, OWN_KEY_FILE)?,
        };
        let validators = validators.unwrap_or_else(|| vec![alone(&key)]);
        let me = validators
            .iter()
            .position(|v| v.pubkey == key.public_key())
            .ok_or_else(|| match validators.as_slice() {
                [only] => eyre!(
                    "the validator key is {}, not the genesis validator {}",
                    key.public_key(),
                    only.pubkey
                ),
                _ => eyre!(
                    "the validator key {} is not in the genesis validator set",
                    key.public_key()
                ),
            })?;
        let network = if validators.len() > 1 || args.p2p_full_nodes_max > 0 {
            Some(NetworkSetup::new(args, &validators, Some(me))?)
        } else {
            if args.p2p_listen.is_some() || !args.p2p_peers.is_empty() {
                tracing::warn!(target: "node::validator", "p2p listen and peers are ignored: a single validator has no peers");
            }
            None
        };
        tracing::info!(target: "node::validator", index = me, validators = validators.len(), address = %key.address(), pubkey = %key.public_key(), listen = ?network.as_ref().map(|n| n.listen), "validator key loaded");
        Ok(Self {
            key,
            validators,
            me: Some(me),
            network,
        })
    }

    /// A full node: the genesis's validators to follow, and the datadir's node key.
    fn full_node(
        args: &NodeArgs,
        validators: Option<Vec<testnet::GenesisValidator>>,
    ) -> eyre::Result<Self> {
        let Some(validators) = validators else {
            bail!(
                "a full node follows validators: give a --genesis that lists them (kestrel.validators)"
            );
        };
        if args.validator_key.is_some() {
            bail!(
                "a full node holds no validator key: drop --validator-key ([validator] key_file)"
            );
        }
        let key = own_key(&args.datadir, NODE_KEY_FILE)?;
        let network = NetworkSetup::new(args, &validators, None)?;
        tracing::info!(target: "node::full", validators = validators.len(), node_key = %key.public_key(), listen = %network.listen, "full node");
        Ok(Self {
            key,
            validators,
            me: None,
            network: Some(network),
        })
    }

    pub fn address(&self) -> Address {
        self.key.address()
    }

    fn validator_set(&self) -> eyre::Result<ValidatorSet> {
        validator_set(&self.validators)
    }
}

/// The only validator of a chain whose genesis names none.
fn alone(key: &ValidatorKey) -> testnet::GenesisValidator {
    let pubkey = key.public_key();
    testnet::GenesisValidator {
        address: pubkey.address(),
        pubkey,
        stake: U256::from(ALONE_STAKE_WEI),
        p2p: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn validator_set(validators: &[testnet::GenesisValidator]) -> eyre::Result<ValidatorSet> {
    let members = validators
        .iter()
        .map(|v| {
            let stake = u64::try_from(v.stake / U256::from(STAKE_UNIT_WEI))
                .wrap_err_with(|| format!("stake of {} overflows u64 gwei", v.pubkey))?;
            Ok((ValidatorId(v.pubkey.to_bytes()), stake))
        })
        .collect::<eyre::Result<Vec<_>>>()?;
    Ok(ValidatorSet::new(members)?)
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
    pub proposals: crossbeam_channel::Sender<OrderedBlock>,
    pub stop: Arc<AtomicBool>,
    pub datadir: std::path::PathBuf,
    pub beneficiary: Address,
    pub block_time_ms: u64,
    pub execution_delay: u64,
}

/// The network, started before the driver so that state sync can use it first.
pub struct Connected {
    set: ValidatorSet,
    /// Transport ids, by validator index.
    ids: Vec<PeerId>,
    transport: Box<dyn Transport>,
    inbound: crossbeam_channel::Receiver<Inbound>,
    /// What the snapshot thread answers through (`None` without a network).
    handle: Option<NetworkHandle>,
    secret: secp256k1::SecretKey,
    me: Option<usize>,
}

/// Starts the validator network. Call after the metrics recorder is installed (the network
/// takes its per-peer metric handles at start).
pub fn connect(setup: Setup, chain_id: u64, status: &ChainStatus) -> eyre::Result<Connected> {
    bft::metrics::describe();
    kestrel_net::describe_metrics();
    metrics::describe();
    forward::describe_metrics();
    statesync::init_metrics();
    let set = setup.validator_set()?;
    let secret = setup.key.secret_key();
    let (transport, inbound, handle): (Box<dyn Transport>, _, _) = match setup.network {
        Some(net) => {
            let (listen, addrs) = (net.listen, &net.addrs);
            let peers = setup
                .validators
                .iter()
                .zip(addrs)
                .enumerate()
                .filter(|(i, _)| Some(*i) != setup.me)
                .map(|(_, (v, addr))| PeerConfig {
                    id: peer_id(v),
                    addr: *addr,
                })
                .collect();
            let mut config = NetConfig::new(secret, chain_id, listen, peers);
            config.full_node = setup.me.is_none();
            config.full_nodes_max = net.full_nodes.max;
            config.full_node_frame_max_bytes = net.full_nodes.frame_max_bytes;
            config.full_node_requests_per_s = net.full_nodes.requests_per_s;
            config.full_node_tx_bytes_per_s = net.full_nodes.tx_bytes_per_s;
            config.preauth_max = net.preauth_max;
            config.preauth_per_ip_max = net.preauth_per_ip_max;
            config.handshake_timeout = net.handshake_timeout;
            config.connected_count = status.peers.clone();
            let (network, inbound) = Network::start(config)
                .wrap_err_with(|| format!("starting the validator network on {listen}"))?;
            tracing::info!(target: "node::validator", listen = %network.local_addr(), driver = ?network.driver(), "validator network started");
            let handle = network.handle();
            (Box::new(NetTransport::new(network)), inbound, Some(handle))
        }
        None => (Box::new(NoPeers), crossbeam_channel::never(), None),
    };
    Ok(Connected {
        set,
        ids: setup.validators.iter().map(peer_id).collect(),
        transport,
        inbound,
        handle,
        secret,
        me: setup.me,
    })
}

/// Fills the empty (or half-restored) database in `datadir` with the state of a recent
/// finalized block fetched from the validators, and starts the block log at that block
/// (`statesync/`), unless the validators' snapshots are of blocks below `min_height` (then
/// the node starts from genesis) or `stop` is set first. A full node's only.
pub fn state_sync(
    connected: &Connected,
    store: &Store,
    datadir: &Path,
    stop: &AtomicBool,
    min_height: u64,
) -> eyre::Result<()> {
    assert!(connected.me.is_none(), "state sync is a full node's");
    let dir = datadir.join(CONSENSUS_DIR);
    std::fs::create_dir_all(&dir).wrap_err("creating the consensus directory")?;
    let sync = statesync::StateSync::new(
        connected.transport.as_ref(),
        &connected.inbound,
        store,
        &connected.set,
        stop,
    );
    match sync.run(&dir, min_height) {
        Ok(_) | Err(statesync::StateSyncError::Stopped) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Starts the driver thread (a validator's consensus driver, or a full node's follower) over
/// the network `connect` started.
pub fn start(connected: Connected, wiring: Wiring) -> eyre::Result<thread::JoinHandle<()>> {
    let Connected {
        set,
        ids,
        transport,
        inbound,
        handle,
        secret,
        me,
    } = connected;
    let dir = wiring.datadir.join(CONSENSUS_DIR);
    std::fs::create_dir_all(&dir).wrap_err("creating the consensus directory")?;
    if me.is_none() {
        let follower = follower::Follower::new(set, ids, transport, inbound, &dir, wiring)?;
        return Ok(thread::Builder::new()
            .name("follower".into())
            .spawn(move || follower.run())?);
    }
    let snapshots = handle
        .map(|handle| statesync::serve::SnapshotServer::spawn(wiring.store.clone(), handle))
        .transpose()
        .wrap_err("starting the snapshot thread")?;
    let members = driver::Membership {
        key: bft::ValidatorKey::new(secret),
        set,
        ids,
    };
    let mut driver = driver::Driver::new(
        members,
        transport,
        inbound,
        &dir,
        wiring,
        clock::Clock::Wall,
    )?;
    if let Some(snapshots) = snapshots {
        driver.serve_snapshots(snapshots);
    }
    Ok(thread::Builder::new()
        .name("consensus".into())
        .spawn(move || driver.run())?)
}

fn peer_id(v: &testnet::GenesisValidator) -> PeerId {
    PeerId::from_slice(&v.pubkey.to_bytes()).expect("a validated public key")
}

/// `--p2p-full-nodes-max` and the limits of each full node's connection.
struct FullNodeLimits {
    max: usize,
    frame_max_bytes: u32,
    requests_per_s: u32,
    tx_bytes_per_s: u32,
}

/// Where this node listens and how it reaches and admits the others.
struct NetworkSetup {
    listen: SocketAddr,
    /// Every validator's address, in genesis order.
    addrs: Vec<SocketAddr>,
    /// `--p2p-preauth-max`, `--p2p-preauth-per-ip`, `--p2p-handshake-timeout-ms`.
    preauth_max: usize,
    preauth_per_ip_max: usize,
    handshake_timeout: Duration,
    full_nodes: FullNodeLimits,
}

impl NetworkSetup {
    /// `me`: this validator's index; `None` on a full node, which is not in the set.
    fn new(
        args: &NodeArgs,
        validators: &[testnet::GenesisValidator],
        me: Option<usize>,
    ) -> eyre::Result<Self> {
        let mut addrs: Vec<SocketAddr> = validators.iter().map(|v| v.p2p).collect();
        // `--p2p-peers` gives the other validators' addresses in genesis order (e.g. behind NAT
        // or in another network namespace than the genesis says); a full node's, all of them.
        if !args.p2p_peers.is_empty() {
            let others = validators.len() - usize::from(me.is_some());
            if args.p2p_peers.len() != others {
                bail!(
                    "--p2p-peers lists {} addresses; the genesis has {others} other validators",
                    args.p2p_peers.len(),
                );
            }
            let mut given = args.p2p_peers.iter();
            for (i, addr) in addrs.iter_mut().enumerate() {
                if Some(i) != me {
                    *addr = *given.next().expect("counted above");
                }
            }
        }
        // A full node is dialed by nobody; it listens only for the full nodes it admits.
        let default_listen = me.map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |me| addrs[me]);
        Ok(Self {
            listen: args.p2p_listen.unwrap_or(default_listen),
            addrs,
            preauth_max: args.p2p_preauth_max,
            preauth_per_ip_max: args.p2p_preauth_per_ip,
            handshake_timeout: Duration::from_millis(args.p2p_handshake_timeout_ms),
            full_nodes: FullNodeLimits {
                max: args.p2p_full_nodes_max,
                frame_max_bytes: args.p2p_full_node_frame_max_bytes,
                requests_per_s: args.p2p_full_node_requests_per_s,
                tx_bytes_per_s: args.p2p_full_node_tx_bytes_per_s,
            },
        })
    }
}

/// The datadir's own key in `file` (a dev chain's validator key, a full node's node key),
/// generated (mode 0600) on first start.
fn own_key(datadir: &Path, file: &str) -> eyre::Result<ValidatorKey> {
    let path = datadir.join(file);
    if !path.exists() {
        std::fs::create_dir_all(datadir).wrap_err("creating datadir")?;
        ValidatorKey::generate().write_new(&path)?;
        tracing::info!(target: "node::validator", path = %path.display(), "generated this node's key");
    }
    Ok(ValidatorKey::load_own(&path)?)
}

/// A stage that cannot go on stops the node (`crate::fatal`).
fn fatal(what: &str) -> ! {
    crate::fatal::stop("validator", what)
}
