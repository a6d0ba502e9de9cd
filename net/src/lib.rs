//! Validator-to-validator transport on monoio (io_uring, with an epoll fallback), and the
//! connections of full nodes to validators.
//!
//! TCP connections between validators identified by their secp256k1 keys, a versioned
//! length-prefixed frame codec ([`frame`]), a handshake in which each side signs the other's fresh
//! challenge ([`handshake`]), per-peer bounded outbound queues, and reconnection with backoff.
//! Payloads are opaque bytes tagged with a [`Kind`]; consensus, transaction forwarding and sync
//! decide what they mean. `docs/NETWORK.md` describes the wire format and the limits.
//!
//! The runtime runs on its own thread; [`NetworkHandle`] is used from ordinary threads and
//! inbound messages arrive on a crossbeam channel.

mod config;
mod error;
pub mod frame;
pub mod handshake;
mod limit;
mod metrics;
mod network;
mod peer;
mod preauth;
mod queue;
mod signal;

pub use crate::metrics::describe_metrics;
pub use config::{
    BULK_QUEUE_MAX_DEFAULT, CONSENSUS_QUEUE_MAX_DEFAULT, FRAME_PAYLOAD_MAX_BYTES_DEFAULT,
    FULL_NODE_FRAME_MAX_BYTES_DEFAULT, FULL_NODE_REQUESTS_PER_S_DEFAULT,
    FULL_NODE_TX_BYTES_PER_S_DEFAULT, HANDSHAKE_TIMEOUT_DEFAULT, INBOUND_QUEUE_MAX_DEFAULT,
    NetConfig, PREAUTH_MAX_DEFAULT, PREAUTH_PER_IP_MAX_DEFAULT, PeerConfig,
};
pub use error::{FrameError, HandshakeError, NetError, SendError};
pub use frame::Kind;
pub use network::{Driver, Inbound, Network, NetworkHandle};
pub use peer::{PeerClass, PeerId};
pub use preauth::RESERVED_PER_VALIDATOR;
