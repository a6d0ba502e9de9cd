//! Validator-to-validator transport on monoio (io_uring, with an epoll fallback).
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
mod metrics;
mod network;
mod peer;
mod preauth;
mod queue;
mod signal;

pub use crate::metrics::describe_metrics;
pub use config::{
    BULK_QUEUE_MAX_DEFAULT, CONSENSUS_QUEUE_MAX_DEFAULT, FRAME_PAYLOAD_MAX_BYTES_DEFAULT,
    HANDSHAKE_TIMEOUT_DEFAULT, INBOUND_QUEUE_MAX_DEFAULT, NetConfig, PREAUTH_MAX_DEFAULT,
    PREAUTH_PER_IP_MAX_DEFAULT, PeerConfig,
};
pub use error::{FrameError, HandshakeError, NetError, SendError};
pub use frame::Kind;
pub use network::{Driver, Inbound, Network, NetworkHandle};
pub use peer::PeerId;
pub use preauth::RESERVED_PER_VALIDATOR;
