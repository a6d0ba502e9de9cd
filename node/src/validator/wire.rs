//! What validators send each other besides bare consensus messages: proposals bundled with their
//! payload, and block sync. Each message is one tag byte and an RLP body; consensus messages keep
//! the consensus crate's own encoding inside.

use alloy_primitives::{B256, Bytes};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use kestrel_consensus::bft::{Block, CommitProof, CommittedBlock, Message, QuorumCert, Unverified};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    #[error("malformed RLP: {0}")]
    Rlp(#[from] alloy_rlp::Error),
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    #[error("consensus message: {0}")]
    Consensus(String),
}

/// A `Kind::Consensus` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusEnvelope {
    /// A consensus message in the consensus crate's wire encoding.
    Message(Bytes),
    /// A proposal (consensus encoding) with its payload: followers hold the payload before they
    /// can vote, and one frame cannot lose one without the other.
    Proposal { payload: Bytes, message: Bytes },
}

#[derive(RlpEncodable, RlpDecodable)]
struct ProposalWire {
    payload: Bytes,
    message: Bytes,
}

const TAG_MESSAGE: u8 = 0;
const TAG_PROPOSAL: u8 = 1;

impl ConsensusEnvelope {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Message(m) => [&[TAG_MESSAGE], &m[..]].concat(),
            Self::Proposal { payload, message } => tagged(
                TAG_PROPOSAL,
                &ProposalWire {
                    payload: payload.clone(),
                    message: message.clone(),
                },
            ),
        }
    }

    /// A consensus message, with its payload if it is a proposal.
    pub fn wrap(message: &Message, payload: Option<&Bytes>) -> Vec<u8> {
        let message = Bytes::from(message.encode_to_vec());
        match payload {
            Some(payload) => Self::Proposal {
                payload: payload.clone(),
                message,
            },
            None => Self::Message(message),
        }
        .encode()
    }

    /// The consensus message (not yet verified) and the payload a proposal carries.
    pub fn open(bytes: &[u8]) -> Result<(Unverified<Message>, Option<Bytes>), WireError> {
        let (message, payload) = match Self::decode(bytes)? {
            Self::Message(m) => (m, None),
            Self::Proposal { payload, message } => (message, Some(payload)),
        };
        let message = Unverified::<Message>::decode(&message)
            .map_err(|e| WireError::Consensus(e.to_string()))?;
        Ok((message, payload))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match *tag {
            TAG_MESSAGE => Ok(Self::Message(Bytes::copy_from_slice(body))),
            TAG_PROPOSAL => {
                let w: ProposalWire = decode_all(body)?;
                Ok(Self::Proposal {
                    payload: w.payload,
                    message: w.message,
                })
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

/// A finalized block as block sync and the chain log carry it: the block, a certificate for it,
/// its payload and, for the last block of each commit, the proof that it is final (its
/// ancestors in the same commit are final by the hash chain up to it).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
#[rlp(trailing)]
pub struct SyncedBlock {
    pub block: Block,
    pub qc: QuorumCert,
    pub payload: Bytes,
    pub proof: Option<CommitProof>,
}

impl SyncedBlock {
    pub fn committed(&self) -> CommittedBlock {
        CommittedBlock {
            block: self.block.clone(),
            qc: self.qc.clone(),
        }
    }
}

/// A `Kind::SyncRequest` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// Finalized blocks from height `from`, at most `count`.
    Blocks { from: u64, count: u16 },
    /// The payload with this hash (of a block consensus fetched without it).
    Payload(B256),
}

#[derive(RlpEncodable, RlpDecodable)]
struct BlocksWire {
    from: u64,
    count: u16,
}

/// A `Kind::SyncResponse` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// Consecutive finalized blocks from the height asked for; empty when the peer has none.
    Blocks(Vec<SyncedBlock>),
    Payload(Bytes),
}

const TAG_BLOCKS: u8 = 0;
const TAG_PAYLOAD: u8 = 1;

impl SyncRequest {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Blocks { from, count } => tagged(
                TAG_BLOCKS,
                &BlocksWire {
                    from: *from,
                    count: *count,
                },
            ),
            Self::Payload(hash) => tagged(TAG_PAYLOAD, hash),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match *tag {
            TAG_BLOCKS => {
                let w: BlocksWire = decode_all(body)?;
                Ok(Self::Blocks {
                    from: w.from,
                    count: w.count,
                })
            }
            TAG_PAYLOAD => Ok(Self::Payload(decode_all(body)?)),
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

impl SyncResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Blocks(blocks) => tagged(TAG_BLOCKS, blocks),
            Self::Payload(bytes) => tagged(TAG_PAYLOAD, bytes),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match *tag {
            TAG_BLOCKS => Ok(Self::Blocks(decode_all(body)?)),
            TAG_PAYLOAD => Ok(Self::Payload(decode_all(body)?)),
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

fn tagged(tag: u8, body: &impl Encodable) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.length());
    out.push(tag);
    body.encode(&mut out);
    out
}

pub fn decode_all<T: Decodable>(mut body: &[u8]) -> Result<T, WireError> {
    let value = T::decode(&mut body)?;
    if !body.is_empty() {
        return Err(WireError::TrailingBytes(body.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let env = ConsensusEnvelope::Proposal {
            payload: Bytes::from_static(b"payload"),
            message: Bytes::from_static(b"\x01\x01message"),
        };
        assert_eq!(ConsensusEnvelope::decode(&env.encode()).unwrap(), env);
        let env = ConsensusEnvelope::Message(Bytes::from_static(b"\x01\x02vote"));
        assert_eq!(ConsensusEnvelope::decode(&env.encode()).unwrap(), env);
        for req in [
            SyncRequest::Blocks { from: 7, count: 32 },
            SyncRequest::Payload(B256::repeat_byte(3)),
        ] {
            assert_eq!(SyncRequest::decode(&req.encode()).unwrap(), req);
        }
        let block = SyncedBlock {
            block: Block::genesis(),
            qc: QuorumCert::genesis(),
            payload: Bytes::from_static(b"p"),
            proof: None,
        };
        let with_proof = SyncedBlock {
            proof: Some(CommitProof {
                child: Block::genesis(),
                child_qc: QuorumCert::genesis(),
            }),
            ..block.clone()
        };
        for resp in [
            SyncResponse::Blocks(vec![block.clone(), with_proof, block]),
            SyncResponse::Payload(Bytes::from_static(b"xyz")),
        ] {
            assert_eq!(SyncResponse::decode(&resp.encode()).unwrap(), resp);
        }
        assert!(matches!(
            SyncRequest::decode(&[9]),
            Err(WireError::UnknownTag(9))
        ));
        let mut trailing = SyncRequest::Payload(B256::ZERO).encode();
        trailing.push(0);
        assert!(matches!(
            SyncRequest::decode(&trailing),
            Err(WireError::TrailingBytes(1))
        ));
    }
}
