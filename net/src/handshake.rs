//! The handshake: each side proves it holds the key it claims, and the key decides the
//! connection's class (validator or full node) for its whole life.
//!
//! Both sides send `Hello {network id, public key, fresh 32-byte challenge}` at once, then
//! `Auth {signature}` over `keccak256(DOMAIN || peer's challenge || signer key || verifier key ||
//! network id)`. The challenge is fresh per connection, so a recorded `Auth` is useless on another
//! connection; both keys are bound, so a signature made for one verifier does not pass with
//! another.

use alloy_primitives::keccak256;
use bytes::{Buf, Bytes};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use secp256k1::{Message, SECP256K1, SecretKey, ecdsa::Signature};

use crate::error::{ConnectionError, HandshakeError};
use crate::frame::{self, FrameReader, FrameType};
use crate::peer::{PeerClass, PeerId};

/// Separates these signatures from any other use of a validator key.
const DOMAIN: &[u8] = b"kestrel-net/handshake/v1";
/// `Hello` payload: network id (u64 BE), compressed key, challenge.
pub const HELLO_BYTES: usize = 8 + 33 + 32;
/// `Auth` payload: compact ECDSA signature.
pub const AUTH_BYTES: usize = 64;
/// Frame cap before the peer is authenticated: nobody unknown gets us to buffer more.
pub const HANDSHAKE_FRAME_MAX_BYTES: u32 = HELLO_BYTES as u32;

/// Handshake step 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub network_id: u64,
    pub peer: PeerId,
    pub challenge: [u8; 32],
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELLO_BYTES);
        out.extend_from_slice(&self.network_id.to_be_bytes());
        out.extend_from_slice(self.peer.as_bytes());
        out.extend_from_slice(&self.challenge);
        out
    }

    pub fn decode(mut payload: &[u8]) -> Result<Self, HandshakeError> {
        if payload.len() != HELLO_BYTES {
            return Err(HandshakeError::Malformed);
        }
        let network_id = payload.get_u64();
        let peer = PeerId::from_slice(&payload[..33]).ok_or(HandshakeError::Malformed)?;
        let challenge = payload[33..].try_into().expect("length checked above");
        Ok(Self {
            network_id,
            peer,
            challenge,
        })
    }
}

fn auth_message(
    network_id: u64,
    challenge: &[u8; 32],
    signer: &PeerId,
    verifier: &PeerId,
) -> Message {
    let mut preimage = Vec::with_capacity(DOMAIN.len() + 32 + 33 + 33 + 8);
    preimage.extend_from_slice(DOMAIN);
    preimage.extend_from_slice(challenge);
    preimage.extend_from_slice(signer.as_bytes());
    preimage.extend_from_slice(verifier.as_bytes());
    preimage.extend_from_slice(&network_id.to_be_bytes());
    Message::from_digest(keccak256(&preimage).0)
}

/// The `Auth` payload `signer` sends to answer `verifier`'s challenge.
pub fn sign_auth(
    key: &SecretKey,
    network_id: u64,
    challenge: &[u8; 32],
    signer: &PeerId,
    verifier: &PeerId,
) -> [u8; AUTH_BYTES] {
    SECP256K1
        .sign_ecdsa(&auth_message(network_id, challenge, signer, verifier), key)
        .serialize_compact()
}

/// Whether `payload` is `signer`'s valid answer to `verifier`'s `challenge`.
pub fn verify_auth(
    payload: &[u8],
    network_id: u64,
    challenge: &[u8; 32],
    signer: &PeerId,
    verifier: &PeerId,
) -> bool {
    let Ok(signature) = Signature::from_compact(payload) else {
        return false;
    };
    SECP256K1
        .verify_ecdsa(
            &auth_message(network_id, challenge, signer, verifier),
            &signature,
            &signer.public_key(),
        )
        .is_ok()
}

/// What a side brings to the handshake.
pub struct Identity<'a> {
    pub key: &'a SecretKey,
    pub id: PeerId,
    pub network_id: u64,
    /// The class a connection with `peer` gets, or why it is refused (checked before we sign
    /// anything for it).
    pub classify: &'a dyn Fn(&PeerId) -> Result<PeerClass, HandshakeError>,
}

/// Runs the handshake on a fresh connection; `expected` is the validator we dialed, `None` when
/// we accepted. Returns the authenticated peer and its class. Public for the fuzz target
/// (`fuzz/fuzz_targets/net_handshake.rs`), which runs it over a stream of arbitrary bytes.
pub async fn run<S: AsyncReadRent + AsyncWriteRent>(
    stream: &mut S,
    reader: &mut FrameReader,
    me: &Identity<'_>,
    expected: Option<PeerId>,
) -> Result<(PeerId, PeerClass), HandshakeError> {
    let challenge: [u8; 32] = rand::random();
    let hello = Hello {
        network_id: me.network_id,
        peer: me.id,
        challenge,
    };
    write_frame(stream, FrameType::Hello, &hello.encode()).await?;

    let theirs = Hello::decode(&expect_frame(stream, reader, FrameType::Hello).await?)?;
    if theirs.network_id != me.network_id {
        return Err(HandshakeError::NetworkId {
            ours: me.network_id,
            theirs: theirs.network_id,
        });
    }
    if theirs.peer == me.id {
        return Err(HandshakeError::SelfConnection);
    }
    let class = (me.classify)(&theirs.peer)?;
    match expected {
        Some(expected) if expected != theirs.peer => {
            return Err(HandshakeError::WrongPeer {
                expected,
                actual: theirs.peer,
            });
        }
        // Only the lower key of a pair of validators dials; see `network`. A full node always
        // dials: it is never dialed.
        None if class == PeerClass::Validator && theirs.peer > me.id => {
            return Err(HandshakeError::NotDialer(theirs.peer));
        }
        _ => {}
    }

    let auth = sign_auth(
        me.key,
        me.network_id,
        &theirs.challenge,
        &me.id,
        &theirs.peer,
    );
    write_frame(stream, FrameType::Auth, &auth).await?;
    let answer = expect_frame(stream, reader, FrameType::Auth).await?;
    if !verify_auth(&answer, me.network_id, &challenge, &theirs.peer, &me.id) {
        return Err(HandshakeError::BadSignature(theirs.peer));
    }
    Ok((theirs.peer, class))
}

async fn write_frame<S: AsyncWriteRent>(
    stream: &mut S,
    frame_type: FrameType,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame::encode(frame_type, payload, &mut out);
    stream.write_all(out).await.0.map(drop)
}

async fn expect_frame<S: AsyncReadRent>(
    stream: &mut S,
    reader: &mut FrameReader,
    want: FrameType,
) -> Result<Bytes, HandshakeError> {
    match reader.next(stream, HANDSHAKE_FRAME_MAX_BYTES, |_| {}).await {
        Ok(Some((frame_type, payload))) if frame_type == want => Ok(payload),
        Ok(Some(_)) => Err(HandshakeError::UnexpectedFrame),
        Ok(None) | Err(ConnectionError::Truncated) => Err(HandshakeError::Closed),
        Err(ConnectionError::Io(e)) => Err(HandshakeError::Io(e)),
        Err(ConnectionError::Frame(e)) => Err(HandshakeError::Frame(e)),
        Err(ConnectionError::UnexpectedFrame) => Err(HandshakeError::UnexpectedFrame),
        // Raised by the connection's limits after the handshake, never by the frame reader.
        Err(e @ (ConnectionError::KindNotAllowed(_) | ConnectionError::RateLimited(_))) => {
            unreachable!("the frame reader returned {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use secp256k1::PublicKey;

    use super::*;

    fn key(byte: u8) -> (SecretKey, PeerId) {
        let sk = SecretKey::from_byte_array(&[byte; 32]).unwrap();
        (sk, PeerId::from(PublicKey::from_secret_key_global(&sk)))
    }

    #[test]
    fn auth_binds_challenge_keys_and_network() {
        let (sk_a, a) = key(1);
        let (_, b) = key(2);
        let (_, c) = key(3);
        let challenge = [9; 32];
        let sig = sign_auth(&sk_a, 7, &challenge, &a, &b);
        assert!(verify_auth(&sig, 7, &challenge, &a, &b));
        assert!(!verify_auth(&sig, 8, &challenge, &a, &b), "other network");
        assert!(!verify_auth(&sig, 7, &[8; 32], &a, &b), "other challenge");
        assert!(!verify_auth(&sig, 7, &challenge, &a, &c), "other verifier");
        assert!(
            !verify_auth(&sig, 7, &challenge, &c, &b),
            "claimed by another signer"
        );
    }

    #[test]
    fn hello_roundtrip_and_malformed() {
        let (_, a) = key(1);
        let hello = Hello {
            network_id: 1337,
            peer: a,
            challenge: [5; 32],
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        assert!(matches!(
            Hello::decode(&[0; HELLO_BYTES]),
            Err(HandshakeError::Malformed)
        ));
        assert!(matches!(
            Hello::decode(&[0; 3]),
            Err(HandshakeError::Malformed)
        ));
    }
}
