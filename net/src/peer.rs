//! Validator identity on the wire: the 33-byte compressed secp256k1 public key.

use std::fmt;

use secp256k1::PublicKey;

/// A validator's compressed secp256k1 public key. `Ord` compares the bytes: of two validators,
/// the lower key dials.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId([u8; 33]);

impl PeerId {
    /// The compressed encoding.
    pub fn as_bytes(&self) -> &[u8; 33] {
        &self.0
    }

    /// Parses a compressed key; `None` if it is not a point on the curve.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        PublicKey::from_slice(bytes)
            .ok()
            .filter(|_| bytes.len() == 33)
            .map(Self::from)
    }

    /// The key, for signature verification.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_slice(&self.0).expect("a PeerId is only made from a valid key")
    }
}

impl From<PublicKey> for PeerId {
    fn from(key: PublicKey) -> Self {
        Self(key.serialize())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// What a connection's key makes it, decided once, at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerClass {
    /// A key in `NetConfig::peers`: a validator (or, on a full node, one of the nodes it follows).
    Validator,
    /// Any other key, accepted up to `full_nodes_max`: a full node. It may send only sync
    /// requests and forwarded transactions, under its own limits, and never reaches consensus.
    FullNode,
}

impl PeerClass {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerClass::Validator => "validator",
            PeerClass::FullNode => "full_node",
        }
    }
}
