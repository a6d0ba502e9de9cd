//! Errors of the consensus crate. Everything here is *invalid input* from the network or the
//! operator (a bad message, a bad validator set); broken invariants are assertions instead.

use crate::bft::ValidatorIndex;
use thiserror::Error;

/// A validator set that cannot run BFT consensus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidatorSetError {
    #[error("validator set is empty")]
    Empty,
    #[error("validator set has {0} members, more than the {max} supported", max = crate::bft::VALIDATORS_MAX)]
    TooMany(usize),
    #[error("validator {0} has zero stake")]
    ZeroStake(usize),
    #[error("validator {0} appears twice")]
    Duplicate(usize),
    #[error("validator {0} is not a valid compressed secp256k1 public key")]
    BadKey(usize),
    #[error("total stake overflows u64")]
    StakeOverflow,
    #[error("this node's key is not in the validator set")]
    NotAMember,
}

/// Why a message failed verification (`Unverified<M>::verify`). The message is dropped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signer {0:?} is not in the validator set")]
    UnknownSigner(ValidatorIndex),
    #[error("bad signature from {0:?}")]
    BadSignature(ValidatorIndex),
    #[error("proposal for round {round} is from {author:?}, not the round's leader")]
    NotLeader { round: u64, author: ValidatorIndex },
    #[error("certificate signers are not strictly increasing")]
    UnsortedSigners,
    #[error("certificate stake {got} is below the quorum {quorum}")]
    NoQuorum { got: u64, quorum: u64 },
    #[error("round-0 certificate that is not the genesis certificate")]
    FakeGenesis,
    #[error("timeout certificate's high QC round does not match its signed rounds")]
    HighQcMismatch,
    #[error("inconsistent rounds or heights: {0}")]
    BadStructure(&'static str),
    #[error("commit proof does not finalize the block: {0}")]
    NotFinal(&'static str),
    #[error("block request for {0} blocks, more than {max}", max = crate::bft::SYNC_BLOCKS_MAX)]
    RequestTooLarge(u16),
    #[error("block response with {0} blocks, more than {max}", max = crate::bft::SYNC_BLOCKS_MAX)]
    ResponseTooLarge(usize),
}

/// A byte string that is not a consensus message of a version we speak.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes exceeds the {max}-byte limit", max = crate::bft::MESSAGE_BYTES_MAX)]
    TooLarge(usize),
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed RLP: {0}")]
    Rlp(#[from] alloy_rlp::Error),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}
