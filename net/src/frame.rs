//! The frame codec: `[version u8][type u8][payload length u32 BE][payload]`.
//!
//! Decoding checks the version, the type and the length cap as soon as the 6 header bytes are in,
//! before any payload byte is buffered, so a peer cannot make us reserve a claimed length.
//! [`FrameReader`] runs the decoder over a monoio connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use monoio::io::AsyncReadRent;

use crate::error::{ConnectionError, FrameError};

/// Wire protocol version, first byte of every frame. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes before the payload: version, type, length.
pub const FRAME_HEADER_BYTES: usize = 6;

/// What an application payload is, so the node can route it without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Proposals, votes, timeouts: the consensus lane (drop-oldest, sent first).
    Consensus = 0,
    /// Transactions forwarded to upcoming leaders (bulk lane, drop-newest).
    TxForward = 1,
    /// Block sync request (bulk lane).
    SyncRequest = 2,
    /// Block sync response (bulk lane).
    SyncResponse = 3,
}

impl Kind {
    /// Every kind, in discriminant order: `kind as usize` indexes it.
    pub const ALL: [Kind; 4] = [
        Kind::Consensus,
        Kind::TxForward,
        Kind::SyncRequest,
        Kind::SyncResponse,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Consensus => "consensus",
            Kind::TxForward => "tx_forward",
            Kind::SyncRequest => "sync_request",
            Kind::SyncResponse => "sync_response",
        }
    }
}

/// The type byte of a frame: the two handshake messages or an application payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    /// Handshake step 1: network id, public key, challenge.
    Hello,
    /// Handshake step 2: signature over the peer's challenge.
    Auth,
    /// An application payload, accepted only after the handshake.
    App(Kind),
}

impl FrameType {
    /// The type byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            FrameType::App(Kind::Consensus) => 1,
            FrameType::App(Kind::TxForward) => 2,
            FrameType::App(Kind::SyncRequest) => 3,
            FrameType::App(Kind::SyncResponse) => 4,
            FrameType::Hello => 0xf0,
            FrameType::Auth => 0xf1,
        }
    }

    /// Parses a type byte; unknown bytes are a protocol error.
    pub fn from_byte(byte: u8) -> Result<Self, FrameError> {
        Ok(match byte {
            1 => FrameType::App(Kind::Consensus),
            2 => FrameType::App(Kind::TxForward),
            3 => FrameType::App(Kind::SyncRequest),
            4 => FrameType::App(Kind::SyncResponse),
            0xf0 => FrameType::Hello,
            0xf1 => FrameType::Auth,
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

/// Appends one frame to `out`. The caller has checked `payload.len()` against the cap.
pub fn encode(frame_type: FrameType, payload: &[u8], out: &mut Vec<u8>) {
    let len =
        u32::try_from(payload.len()).expect("payload length checked against the u32 frame cap");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.put_u8(PROTOCOL_VERSION);
    out.put_u8(frame_type.to_byte());
    out.put_u32(len);
    out.put_slice(payload);
}

/// Takes one whole frame off the front of `buf`, `Ok(None)` if more bytes are needed.
pub fn decode(
    buf: &mut BytesMut,
    payload_max_bytes: u32,
) -> Result<Option<(FrameType, Bytes)>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let version = buf[0];
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let frame_type = FrameType::from_byte(buf[1])?;
    let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]);
    if len > payload_max_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: payload_max_bytes,
        });
    }
    let total = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_BYTES);
    Ok(Some((frame_type, buf.split_to(len as usize).freeze())))
}

/// Reads frames off a connection, keeping the bytes past the current frame for the next call:
/// the peer may send application frames right behind its `Auth`.
pub struct FrameReader {
    buf: BytesMut,
    chunk: Vec<u8>,
}

/// Bytes asked of one read; also what the buffer grows by.
const READ_CHUNK_BYTES: usize = 64 * 1024;

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            chunk: Vec::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// The next frame, `Ok(None)` at a clean end of stream; `on_read` sees each read's size.
    pub(crate) async fn next<R: AsyncReadRent>(
        &mut self,
        reader: &mut R,
        payload_max_bytes: u32,
        mut on_read: impl FnMut(usize),
    ) -> Result<Option<(FrameType, Bytes)>, ConnectionError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, payload_max_bytes)? {
                return Ok(Some(frame));
            }
            let chunk = std::mem::take(&mut self.chunk);
            let (result, mut chunk) = reader.read(chunk).await;
            let n = result?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnectionError::Truncated)
                };
            }
            on_read(n);
            self.buf.extend_from_slice(&chunk[..n]);
            chunk.clear();
            self.chunk = chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame_type() -> impl Strategy<Value = FrameType> {
        prop_oneof![
            Just(FrameType::Hello),
            Just(FrameType::Auth),
            proptest::sample::select(Kind::ALL.to_vec()).prop_map(FrameType::App),
        ]
    }

    proptest! {
        /// decode ∘ encode == identity, whatever the chunking the socket delivers.
        #[test]
        fn roundtrip_any_split(
            frames in proptest::collection::vec((frame_type(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            for (t, p) in &frames {
                encode(*t, p, &mut wire);
            }
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some((t, p)) = decode(&mut buf, 300).unwrap() {
                    decoded.push((t, p.to_vec()));
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded, frames);
        }
    }

    #[test]
    fn over_cap_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::from(&[PROTOCOL_VERSION, 1, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
        // Nothing was reserved for the claimed length.
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn wrong_version_and_unknown_type_are_rejected() {
        let mut buf = BytesMut::from(&[PROTOCOL_VERSION + 1, 1, 0, 0, 0, 0][..]);
        assert_eq!(
            decode(&mut buf, 1024),
            Err(FrameError::Version(PROTOCOL_VERSION + 1))
        );
        let mut buf = BytesMut::from(&[PROTOCOL_VERSION, 9, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf, 1024), Err(FrameError::UnknownType(9)));
    }

    #[test]
    fn partial_header_waits() {
        let mut buf = BytesMut::from(&[PROTOCOL_VERSION, 1, 0][..]);
        assert_eq!(decode(&mut buf, 1024), Ok(None));
    }
}
