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
