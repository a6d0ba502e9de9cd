//! Errors of the transport. Invalid input from a peer (a bad frame or handshake) is an outcome that
//! closes that connection; `NetError` is what stops the network from starting.

use std::io;

use crate::frame::Kind;
use crate::peer::PeerId;

/// The network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Binding or configuring the listener failed.
    #[error("listen socket: {0}")]
    Listen(#[source] io::Error),
    /// Spawning the runtime thread or building the monoio runtime failed.
    #[error("runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(&'static str),
}

/// A message could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not a configured validator, nor a full node connected right now.
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    /// Larger than the frame cap; the peer would close the connection.
    #[error("payload of {len} bytes exceeds the frame cap of {max}")]
    PayloadTooLarge { len: usize, max: u32 },
    /// The bulk lane to this peer is full and this message was dropped (drop-newest).
    #[error("outbound queue to {0} is full")]
    QueueFull(PeerId),
    /// The network has been shut down.
    #[error("network is shut down")]
    Shutdown,
}

/// A frame that breaks the codec; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol version {0} not supported")]
    Version(u8),
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame payload of {len} bytes exceeds the cap of {max}")]
    TooLarge { len: u32, max: u32 },
}

impl FrameError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Version(_) => "version",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::TooLarge { .. } => "too_large",
        }
    }
}

/// Why a handshake failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("unexpected frame during handshake")]
    UnexpectedFrame,
    #[error("malformed handshake message")]
    Malformed,
    #[error("network id {theirs} differs from ours ({ours})")]
    NetworkId { ours: u64, theirs: u64 },
    #[error("{0} is not a validator in our set")]
    UnknownPeer(PeerId),
    #[error("peer presented our own key")]
    SelfConnection,
    #[error("dialed {expected} but {actual} answered")]
    WrongPeer { expected: PeerId, actual: PeerId },
    #[error("{0} dialed us but only the lower key of a pair dials")]
    NotDialer(PeerId),
    #[error("bad signature from {0}")]
    BadSignature(PeerId),
    /// A key outside the validator set while `full_nodes_max` full nodes are connected.
    #[error("{0} is not a validator and the full-node slots are taken")]
    FullNodesMax(PeerId),
}

impl HandshakeError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Io(_) => "io",
            HandshakeError::Frame(e) => e.reason(),
            HandshakeError::Timeout => "timeout",
            HandshakeError::Closed => "closed",
            HandshakeError::UnexpectedFrame => "unexpected_frame",
            HandshakeError::Malformed => "malformed",
            HandshakeError::NetworkId { .. } => "network_id",
            HandshakeError::UnknownPeer(_) => "unknown_peer",
            HandshakeError::SelfConnection => "self",
            HandshakeError::WrongPeer { .. } => "wrong_peer",
            HandshakeError::NotDialer(_) => "not_dialer",
            HandshakeError::BadSignature(_) => "bad_signature",
            HandshakeError::FullNodesMax(_) => "full_nodes_max",
        }
    }
}

/// Why an established connection ended (logged; frame errors are also counted).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("handshake frame after the handshake")]
    UnexpectedFrame,
    /// A full node sent a kind it may not send (consensus, or a sync response nobody asked of it).
    #[error("a full node may not send {0:?} messages")]
    KindNotAllowed(Kind),
    /// A full node sent more than its rate allows.
    #[error("over the full-node rate limit ({0})")]
    RateLimited(&'static str),
}

impl ConnectionError {
    /// Metric label of an error that is the peer's fault; `None` for a plain disconnect.
    pub(crate) fn protocol_reason(&self) -> Option<&'static str> {
        match self {
            ConnectionError::Frame(frame) => Some(frame.reason()),
            ConnectionError::UnexpectedFrame => Some("unexpected_frame"),
            ConnectionError::KindNotAllowed(_) => Some("kind_not_allowed"),
            ConnectionError::RateLimited(_) => Some("rate_limited"),
            ConnectionError::Io(_) | ConnectionError::Truncated => None,
        }
    }
}
