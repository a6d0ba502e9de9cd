//! Network configuration: who we are, where we listen, who the other validators are, how many
//! full nodes we admit, and the limits.

use std::net::SocketAddr;
use std::sync::{Arc, atomic::AtomicUsize};
use std::time::Duration;

use secp256k1::{PublicKey, SecretKey};

use crate::peer::PeerId;

/// Default cap on one frame's payload: a full block proposal fits with room to spare.
pub const FRAME_PAYLOAD_MAX_BYTES_DEFAULT: u32 = 16 * 1024 * 1024;
/// Default bound of each peer's consensus lane (messages).
pub const CONSENSUS_QUEUE_MAX_DEFAULT: usize = 1024;
/// Default bound of each peer's bulk lane (tx forwarding and sync, messages).
pub const BULK_QUEUE_MAX_DEFAULT: usize = 4096;
/// Default bound of the inbound channel to the node (messages, all peers).
pub const INBOUND_QUEUE_MAX_DEFAULT: usize = 8192;
/// Default bound of accepted connections still in their handshake (the general pool; see
/// `preauth`). An honest handshake takes a few round trips, so this many are only ever reached
/// by a flood.
pub const PREAUTH_MAX_DEFAULT: usize = 64;
/// Default bound of those from one address (IPv4, or IPv6 /64): a sixteenth of the pool, so one
/// host cannot fill it. Validators dialing from their configured address have reserved slots.
pub const PREAUTH_PER_IP_MAX_DEFAULT: usize = 4;
/// Default cap on one frame from a full node: it sends only sync requests (tens of bytes) and
/// batches of forwarded transactions, never blocks.
pub const FULL_NODE_FRAME_MAX_BYTES_DEFAULT: u32 = 4 * 1024 * 1024;
/// Default sync requests a second from one full node: a follower polls a few times a block.
pub const FULL_NODE_REQUESTS_PER_S_DEFAULT: u32 = 50;
/// Default forwarded-transaction bytes a second from one full node: 8 MiB, about 70,000 plain
/// transfers a second, above what a validator admits.
pub const FULL_NODE_TX_BYTES_PER_S_DEFAULT: u32 = 8 * 1024 * 1024;
/// Default time for the whole handshake, from connect or accept: a few round trips and two
/// signatures, with room for a lost SYN (retransmitted after 1 s).
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Another validator: its key and where it listens.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub id: PeerId,
    pub addr: SocketAddr,
}

/// Everything `Network::start` needs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Our validator key; the handshake proves we hold it.
    pub secret_key: SecretKey,
    /// Chain id (or any network id): peers with another id are refused in the handshake.
    pub network_id: u64,
    /// Where to accept connections.
    pub listen_addr: SocketAddr,
    /// The validator set. Our own entry, if present, is ignored. On a full node, the nodes it
    /// follows.
    pub peers: Vec<PeerConfig>,
    /// We are a full node: we dial every peer, whatever its key (a validator never dials a full
    /// node, nor counts it among the lower keys that dial it).
    pub full_node: bool,
    /// Connections from keys outside `peers` (full nodes) accepted at once; 0 refuses them all.
    pub full_nodes_max: usize,
    /// Largest payload a full node may send; more closes its connection.
    pub full_node_frame_max_bytes: u32,
    /// Sync requests a second one full node may send (bursts of as many); more closes its
    /// connection.
    pub full_node_requests_per_s: u32,
    /// Forwarded-transaction payload bytes a second one full node may send (bursts of as many,
    /// so at least `full_node_frame_max_bytes`); more closes its connection.
    pub full_node_tx_bytes_per_s: u32,
    /// Largest payload accepted or sent; a peer announcing more is disconnected.
    pub frame_payload_max_bytes: u32,
    /// Per-peer consensus lane bound; when full the oldest message is dropped.
    pub consensus_queue_max: usize,
    /// Per-peer bulk lane bound; when full the new message is refused.
    pub bulk_queue_max: usize,
    /// Bound of the channel to the node; when full, connections stop reading (TCP backpressure).
    pub inbound_queue_max: usize,
    /// Accepted connections still in their handshake, from addresses other than the validators'
    /// own reserve; more are closed at accept.
    pub preauth_max: usize,
    /// Of those, from one address (IPv4, or IPv6 /64).
    pub preauth_per_ip_max: usize,
    /// Time for the whole handshake, from connect or accept; an accepted connection that has not
    /// finished by then is closed and frees its pre-authentication slot.
    pub handshake_timeout: Duration,
    /// First reconnection delay; doubles per failure up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    /// Cap of the reconnection delay.
    pub backoff_max: Duration,
    /// Kept at the number of validators connected (on a full node: of the nodes it follows), for whoever reports it (RPC's
    /// `net_peerCount`).
    pub connected_count: Arc<AtomicUsize>,
}

impl NetConfig {
    /// A configuration with the default limits.
    pub fn new(
        secret_key: SecretKey,
        network_id: u64,
        listen_addr: SocketAddr,
        peers: Vec<PeerConfig>,
    ) -> Self {
        Self {
            secret_key,
            network_id,
            listen_addr,
            peers,
            full_node: false,
            full_nodes_max: 0,
            full_node_frame_max_bytes: FULL_NODE_FRAME_MAX_BYTES_DEFAULT,
            full_node_requests_per_s: FULL_NODE_REQUESTS_PER_S_DEFAULT,
            full_node_tx_bytes_per_s: FULL_NODE_TX_BYTES_PER_S_DEFAULT,
            frame_payload_max_bytes: FRAME_PAYLOAD_MAX_BYTES_DEFAULT,
            consensus_queue_max: CONSENSUS_QUEUE_MAX_DEFAULT,
            bulk_queue_max: BULK_QUEUE_MAX_DEFAULT,
            inbound_queue_max: INBOUND_QUEUE_MAX_DEFAULT,
            preauth_max: PREAUTH_MAX_DEFAULT,
            preauth_per_ip_max: PREAUTH_PER_IP_MAX_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            backoff_initial: Duration::from_millis(100),
            // Short: a restarted validator with the higher key waits for this redial.
            backoff_max: Duration::from_secs(5),
            connected_count: Arc::default(),
        }
    }

    /// Our own id.
    pub fn local_id(&self) -> PeerId {
        PeerId::from(PublicKey::from_secret_key_global(&self.secret_key))
    }
}
