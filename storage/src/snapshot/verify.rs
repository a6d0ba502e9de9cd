//! Checking a snapshot's chunks against a state root the syncing node trusts (see the module
//! above): the top of the account trie gives each chunk's subtrie hash, and a chunk's accounts
//! must rebuild exactly that subtrie. Pure functions of their inputs: no store needed.

use super::{StateChunk, chunk_count, chunk_of};
use alloy_primitives::{B256, Bytes, U256, keccak256, map::HashMap};
use alloy_rlp::Decodable;
use alloy_trie::{
    EMPTY_ROOT_HASH, HashBuilder, Nibbles, TrieAccount,
    nodes::{RlpNode, TrieNode},
};
use kestrel_types::state::KECCAK_EMPTY;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("the snapshot's top has no node with hash {0} (on the path to chunk {1})")]
    MissingTopNode(B256, u32),
    #[error("a node of the snapshot's top does not decode: {0}")]
    BadTopNode(String),
    #[error(
        "the account trie is not all branches above depth {0} (chunk {1}); ask for a shallower snapshot"
    )]
    TooDeep(u8, u32),
    #[error("chunk {got} where chunk {want} of depth {depth} was asked")]
    WrongChunk { depth: u8, want: u32, got: u32 },
    #[error("chunk {index}: account {position} is out of hashed-key order or outside the chunk")]
    Order { index: u32, position: usize },
    #[error("chunk {index}: a slot of account {position} is zero or out of hashed-key order")]
    SlotOrder { index: u32, position: usize },
    #[error("chunk {index}: part {got} where part {want} is next")]
    PartOrder { index: u32, want: u32, got: u32 },
    #[error("chunk {index}: a part says it is one of {got}, the first said {want}")]
    PartCount { index: u32, want: u32, got: u32 },
    #[error("chunk {index}: {parts} parts, not between 1 and STATE_PARTS_MAX")]
    TooManyParts { index: u32, parts: u32 },
    #[error("chunk {index}: part {part} continues no account or carries more than slots")]
    BadContinuation { index: u32, part: u32 },
    #[error("chunk {index}: account {address} alone does not fit a part of {bytes_max} bytes")]
    AccountTooLarge {
        index: u32,
        address: alloy_primitives::Address,
        bytes_max: usize,
    },
    #[error(
        "chunk {index}: its accounts make subtrie {got:?}, the trusted state root says {want:?}"
    )]
    SubtrieMismatch {
        index: u32,
        want: Option<B256>,
        got: Option<B256>,
    },
}

/// The hash of the subtrie under each chunk's prefix (`None`: no account there), for the
/// snapshot of depth `depth` whose top is `top` (the trie's nodes on paths shorter than `depth`,
/// in any order) and whose state root is the trusted `root`.
pub fn expected_subtries(
    root: B256,
    depth: u8,
    top: &[Bytes],
) -> Result<Vec<Option<B256>>, SnapshotError> {
    let count = chunk_count(depth);
    if root == EMPTY_ROOT_HASH {
        return Ok(vec![None; count as usize]);
    }
    let nodes: HashMap<B256, &Bytes> = top.iter().map(|n| (keccak256(n), n)).collect();
    let mut out = Vec::with_capacity(count as usize);
    // (subtrie hash, chunk index of its first chunk, depth), depth first in nibble order, so
    // the chunks come out in index order.
    let mut stack = vec![(Some(root), 0u32, 0u8)];
    while let Some((hash, first, at)) = stack.pop() {
        let chunks_under = chunk_count(depth - at);
        let Some(hash) = hash else {
            out.extend((0..chunks_under).map(|_| None));
            continue;
        };
        if at == depth {
            out.push(Some(hash));
            continue;
        }
        let node = nodes
            .get(&hash)
            .ok_or(SnapshotError::MissingTopNode(hash, first))?;
        let branch = match TrieNode::decode(&mut node.as_ref()) {
            Ok(TrieNode::Branch(branch)) => branch,
            Ok(_) => return Err(SnapshotError::TooDeep(depth, first)),
            Err(e) => return Err(SnapshotError::BadTopNode(e.to_string())),
        };
        let step = chunks_under / 16;
        let branch = branch.as_ref();
        let children: Vec<(u8, Option<&RlpNode>)> = branch.children().collect();
        for (nibble, child) in children.into_iter().rev() {
            let child = match child {
                None => None,
                // Account subtries are never embedded (a leaf alone is over 32 bytes).
                Some(rlp) => Some(rlp.as_hash().ok_or(SnapshotError::TooDeep(depth, first))?),
            };
            stack.push((child, first + u32::from(nibble) * step, at + 1));
        }
    }
    debug_assert_eq!(out.len(), count as usize);
    Ok(out)
}

/// Checks chunk `index` of depth `depth` against `expected`, its entry of
/// [`expected_subtries`]: its accounts are in order and under its prefix, each storage root is
/// rebuilt from the slots and each code hash from the code, and the accounts' trie below the
/// prefix has the expected hash.
pub fn verify_chunk(
    depth: u8,
    index: u32,
    expected: Option<B256>,
    chunk: &StateChunk,
) -> Result<(), SnapshotError> {
    if (chunk.depth, chunk.index) != (depth, index) {
        return Err(SnapshotError::WrongChunk {
            depth,
            want: index,
            got: chunk.index,
        });
    }
    let mut trie = HashBuilder::default();
    let mut last: Option<B256> = None;
    let mut leaf = Vec::with_capacity(128);
    for (position, account) in chunk.accounts.iter().enumerate() {
        let hashed = keccak256(account.address);
        if last.is_some_and(|l| l >= hashed) || chunk_of(depth, &hashed) != index {
            return Err(SnapshotError::Order { index, position });
        }
        last = Some(hashed);
        let storage_root = storage_root(account.storage.iter().map(|s| (s.slot, s.value)))
            .ok_or(SnapshotError::SlotOrder { index, position })?;
        let code_hash = match account.code.is_empty() {
            true => KECCAK_EMPTY,
            false => keccak256(&account.code),
        };
        leaf.clear();
        alloy_rlp::Encodable::encode(
            &TrieAccount::new(account.nonce, account.balance, storage_root, code_hash),
            &mut leaf,
        );
        trie.add_leaf(Nibbles::unpack(hashed).slice(usize::from(depth)..), &leaf);
    }
    let got = (!chunk.accounts.is_empty()).then(|| trie.root());
    if got != expected {
        return Err(SnapshotError::SubtrieMismatch {
            index,
            want: expected,
            got,
        });
    }
    Ok(())
}

/// The storage root of `slots` (in hashed-slot order, none zero), or `None` if they are not.
fn storage_root(slots: impl Iterator<Item = (B256, U256)>) -> Option<B256> {
    let mut trie = HashBuilder::default();
    let mut last: Option<B256> = None;
    let mut value = Vec::with_capacity(33);
    for (slot, v) in slots {
        let hashed = keccak256(slot);
        if v.is_zero() || last.is_some_and(|l| l >= hashed) {
            return None;
        }
        last = Some(hashed);
        value.clear();
        alloy_rlp::Encodable::encode(&v, &mut value);
        trie.add_leaf(Nibbles::unpack(hashed), &value);
    }
    Some(trie.root())
}
