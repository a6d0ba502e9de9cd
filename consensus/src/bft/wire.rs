//! Wire encoding of consensus messages: one version byte, one kind byte, then the message as
//! RLP. The transport frames and delivers these bytes; nothing here trusts them.

use super::MESSAGE_BYTES_MAX;
use super::types::{Block, BlockId, Message};
use super::validators::{Signature, ValidatorIndex};
use crate::Round;
use crate::error::DecodeError;
use alloy_primitives::B256;
use alloy_rlp::{Buf, BufMut, Decodable, Encodable, Header};
use kestrel_types::ExecutionResult;

/// Bumped on any incompatible change; a node rejects versions it does not speak.
pub const WIRE_VERSION: u8 = 1;

const KIND_PROPOSAL: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_TIMEOUT: u8 = 3;
const KIND_BLOCK_REQUEST: u8 = 4;
const KIND_BLOCKS: u8 = 5;
const KIND_CERTIFICATE: u8 = 6;
const KIND_TIMEOUT_CERTIFICATE: u8 = 7;

impl Message {
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = vec![WIRE_VERSION];
        match self {
            Message::Proposal(m) => push(&mut out, KIND_PROPOSAL, m),
            Message::Vote(m) => push(&mut out, KIND_VOTE, m),
            Message::Timeout(m) => push(&mut out, KIND_TIMEOUT, m),
            Message::BlockRequest(m) => push(&mut out, KIND_BLOCK_REQUEST, m),
            Message::Blocks(m) => push(&mut out, KIND_BLOCKS, m),
            Message::Certificate(m) => push(&mut out, KIND_CERTIFICATE, m),
            Message::TimeoutCertificate(m) => push(&mut out, KIND_TIMEOUT_CERTIFICATE, m),
        }
        out
    }
}

fn push(out: &mut Vec<u8>, kind: u8, m: &impl Encodable) {
    out.push(kind);
    m.encode(out);
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let [version, kind, rest @ ..] = bytes else {
        return Err(if bytes.is_empty() {
            DecodeError::Empty
        } else {
            DecodeError::Rlp(alloy_rlp::Error::InputTooShort)
        });
    };
    if *version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(*version));
    }
    let mut buf = rest;
    let message = match *kind {
        KIND_PROPOSAL => Message::Proposal(Decodable::decode(&mut buf)?),
        KIND_VOTE => Message::Vote(Decodable::decode(&mut buf)?),
        KIND_TIMEOUT => Message::Timeout(Decodable::decode(&mut buf)?),
        KIND_BLOCK_REQUEST => Message::BlockRequest(Decodable::decode(&mut buf)?),
        KIND_BLOCKS => Message::Blocks(Decodable::decode(&mut buf)?),
        KIND_CERTIFICATE => Message::Certificate(Decodable::decode(&mut buf)?),
        KIND_TIMEOUT_CERTIFICATE => Message::TimeoutCertificate(Decodable::decode(&mut buf)?),
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if !buf.is_empty() {
        return Err(DecodeError::TrailingBytes(buf.len()));
    }
    Ok(message)
}

/// RLP of a newtype is the RLP of what it wraps.
macro_rules! rlp_newtype {
    ($($outer:ty => $inner:ty),* $(,)?) => {$(
        impl Encodable for $outer {
            fn encode(&self, out: &mut dyn BufMut) {
                self.0.encode(out)
            }
            fn length(&self) -> usize {
                self.0.length()
            }
        }

        impl Decodable for $outer {
            fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
                <$inner>::decode(buf).map(Self)
            }
        }
    )*};
}

rlp_newtype!(Round => u64, BlockId => B256, ValidatorIndex => u16, Signature => [u8; 64]);

/// `ExecutionResult` lives in `kestrel-types`, which has no RLP for it; it is encoded here as the
/// list `[number, block_hash, state_root, receipts_root]`.
fn result_payload_length(r: &ExecutionResult) -> usize {
    r.number.length() + r.block_hash.length() + r.state_root.length() + r.receipts_root.length()
}

impl Block {
    fn payload_length(&self) -> usize {
        self.round.length()
            + self.height.length()
            + self.author.length()
            + self.timestamp_ms.length()
            + self.payload_hash.length()
            + self.qc.length()
            + self.delayed_result.as_ref().map_or(0, |r| {
                let len = result_payload_length(r);
                len + alloy_rlp::length_of_length(len)
            })
    }
}

impl Encodable for Block {
    fn encode(&self, out: &mut dyn BufMut) {
        Header {
            list: true,
            payload_length: self.payload_length(),
        }
        .encode(out);
        self.round.encode(out);
        self.height.encode(out);
        self.author.encode(out);
        self.timestamp_ms.encode(out);
        self.payload_hash.encode(out);
        self.qc.encode(out);
        // Trailing optional field: absent rather than an empty placeholder.
        if let Some(r) = &self.delayed_result {
            Header {
                list: true,
                payload_length: result_payload_length(r),
            }
            .encode(out);
            r.number.encode(out);
            r.block_hash.encode(out);
            r.state_root.encode(out);
            r.receipts_root.encode(out);
        }
    }
    fn length(&self) -> usize {
        let len = self.payload_length();
        len + alloy_rlp::length_of_length(len)
    }
}

impl Decodable for Block {
    fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
        let header = Header::decode(buf)?;
        if !header.list {
            return Err(alloy_rlp::Error::UnexpectedString);
        }
        if buf.len() < header.payload_length {
            return Err(alloy_rlp::Error::InputTooShort);
        }
        let mut body = &buf[..header.payload_length];
        let block = Block {
            round: Decodable::decode(&mut body)?,
            height: Decodable::decode(&mut body)?,
            author: Decodable::decode(&mut body)?,
            timestamp_ms: Decodable::decode(&mut body)?,
            payload_hash: Decodable::decode(&mut body)?,
            qc: Decodable::decode(&mut body)?,
            delayed_result: if body.is_empty() {
                None
            } else {
                let h = Header::decode(&mut body)?;
                if !h.list {
                    return Err(alloy_rlp::Error::UnexpectedString);
                }
                let before = body.len();
                let r = ExecutionResult {
                    number: Decodable::decode(&mut body)?,
                    block_hash: Decodable::decode(&mut body)?,
                    state_root: Decodable::decode(&mut body)?,
                    receipts_root: Decodable::decode(&mut body)?,
                };
                if before - body.len() != h.payload_length {
                    return Err(alloy_rlp::Error::ListLengthMismatch {
                        expected: h.payload_length,
                        got: before - body.len(),
                    });
                }
                Some(r)
            },
        };
        if !body.is_empty() {
            return Err(alloy_rlp::Error::ListLengthMismatch {
                expected: header.payload_length,
                got: header.payload_length - body.len(),
            });
        }
        buf.advance(header.payload_length);
        Ok(block)
    }
}
