//! What validators send each other besides bare consensus messages: proposals bundled with their
//! payload, and block sync. Each message is one tag byte and an RLP body; consensus messages keep
//! the consensus crate's own encoding inside.

use alloy_consensus::Header;
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
    #[error("not the canonical encoding")]
    NonCanonical,
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
    /// The top of the peer's state snapshot (state sync, `statesync/`): the peer makes one of
    /// its committed head if it holds none recent. `resume` (0: none): the block of the
    /// snapshot an interrupted sync was fetching, or the one the other validators offered,
    /// which the peer gives if it still holds it, or makes if its head has not passed it.
    SnapshotTop { resume: u64 },
    /// Part `part` of chunk `index` of depth `depth` of the peer's snapshot of block `height`
    /// (`snapshot::parts`; a chunk that fits one message is its part 0 alone).
    StatePart {
        height: u64,
        depth: u8,
        index: u32,
        part: u32,
    },
}

#[derive(RlpEncodable, RlpDecodable)]
struct StatePartWire {
    height: u64,
    depth: u8,
    index: u32,
    part: u32,
}

/// What a snapshot's chunks are checked against, as its holder claims it: the syncing node
/// trusts none of it until block `height`'s state root and hash are proven by a finalized block
/// that carries them (`statesync/`).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct SnapshotTop {
    /// The block whose state the snapshot is.
    pub height: u64,
    pub state_root: B256,
    /// Its chunking: 16^depth chunks.
    pub depth: u8,
    /// The account trie's nodes above `depth` (`Reader::snapshot_top`).
    pub top: Vec<Bytes>,
    /// The headers of up to `BASE_ANCESTORS` blocks before `height` and its own, oldest first:
    /// the synced node's `BLOCKHASH` and its base header, checked by their hash chain.
    pub headers: Vec<Header>,
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
    SnapshotTop(Box<SnapshotTop>),
    /// The encoded `StatePart` asked for, which says which part of how many it is (kept as
    /// received: its size counts toward the bytes state sync moved).
    StatePart(Bytes),
    /// The peer holds no snapshot of the height asked for; `held` is the one it holds (0: none).
    SnapshotGone {
        held: u64,
    },
}

const TAG_BLOCKS: u8 = 0;
const TAG_PAYLOAD: u8 = 1;
const TAG_SNAPSHOT_TOP: u8 = 2;
const TAG_STATE_PART: u8 = 3;
const TAG_SNAPSHOT_GONE: u8 = 4;

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
            // No resume: the tag alone.
            Self::SnapshotTop { resume: 0 } => vec![TAG_SNAPSHOT_TOP],
            Self::SnapshotTop { resume } => tagged(TAG_SNAPSHOT_TOP, resume),
            Self::StatePart {
                height,
                depth,
                index,
                part,
            } => tagged(
                TAG_STATE_PART,
                &StatePartWire {
                    height: *height,
                    depth: *depth,
                    index: *index,
                    part: *part,
                },
            ),
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
            TAG_SNAPSHOT_TOP if body.is_empty() => Ok(Self::SnapshotTop { resume: 0 }),
            TAG_SNAPSHOT_TOP => match decode_all(body)? {
                // Encoded as the tag alone: one encoding per message.
                0 => Err(WireError::NonCanonical),
                resume => Ok(Self::SnapshotTop { resume }),
            },
            TAG_STATE_PART => {
                let w: StatePartWire = decode_all(body)?;
                Ok(Self::StatePart {
                    height: w.height,
                    depth: w.depth,
                    index: w.index,
                    part: w.part,
                })
            }
            other => Err(WireError::UnknownTag(other)),
        }
    }
}

impl SyncResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Blocks(blocks) => tagged(TAG_BLOCKS, blocks),
            Self::Payload(bytes) => tagged(TAG_PAYLOAD, bytes),
            Self::SnapshotTop(top) => tagged(TAG_SNAPSHOT_TOP, top.as_ref()),
            // Already an RLP item.
            Self::StatePart(part) => [&[TAG_STATE_PART], &part[..]].concat(),
            Self::SnapshotGone { held } => tagged(TAG_SNAPSHOT_GONE, held),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (tag, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match *tag {
            TAG_BLOCKS => Ok(Self::Blocks(decode_all(body)?)),
            TAG_PAYLOAD => Ok(Self::Payload(decode_all(body)?)),
            TAG_SNAPSHOT_TOP => Ok(Self::SnapshotTop(Box::new(decode_all(body)?))),
            TAG_STATE_PART => Ok(Self::StatePart(Bytes::copy_from_slice(body))),
            TAG_SNAPSHOT_GONE => Ok(Self::SnapshotGone {
                held: decode_all(body)?,
            }),
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
            SyncRequest::SnapshotTop { resume: 0 },
            SyncRequest::SnapshotTop { resume: 12_345 },
            SyncRequest::StatePart {
                height: 10_000,
                depth: 2,
                index: 255,
                part: 3,
            },
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
            SyncResponse::SnapshotTop(Box::new(SnapshotTop {
                height: 7,
                state_root: B256::repeat_byte(1),
                depth: 1,
                top: vec![Bytes::from_static(b"node")],
                headers: vec![Header::default()],
            })),
            SyncResponse::StatePart(Bytes::from(alloy_rlp::encode(
                kestrel_storage::snapshot::parts::StatePart {
                    depth: 1,
                    index: 3,
                    part: 0,
                    parts: 1,
                    continues: false,
                    accounts: Vec::new(),
                },
            ))),
            SyncResponse::SnapshotGone { held: 0 },
        ] {
            assert_eq!(SyncResponse::decode(&resp.encode()).unwrap(), resp);
        }
        assert!(matches!(
            SyncRequest::decode(&[9]),
            Err(WireError::UnknownTag(9))
        ));
        assert!(matches!(
            SyncRequest::decode(&[TAG_SNAPSHOT_TOP, 0x80]),
            Err(WireError::NonCanonical)
        ));
        let mut trailing = SyncRequest::Payload(B256::ZERO).encode();
        trailing.push(0);
        assert!(matches!(
            SyncRequest::decode(&trailing),
            Err(WireError::TrailingBytes(1))
        ));
    }
}
