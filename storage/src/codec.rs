//! Byte layouts of keys and values. Integers in keys are big-endian so that MDBX's bytewise key
//! order is numeric order; values use compact encodings (trimmed integers, optional hashes left
//! out when they equal the common default).

use crate::StorageError;
use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_trie::{BranchNodeCompact, EMPTY_ROOT_HASH, Nibbles, TrieAccount, TrieMask};
use kestrel_types::{AccountInfo, BlockNumber, RecoveredTx, state::KECCAK_EMPTY};

/// A key or value copied out of MDBX into a fixed buffer, so that cursor scans do not allocate
/// (in a write transaction every read is a copy).
pub(crate) struct Buf<const N: usize> {
    len: usize,
    bytes: [u8; N],
}

impl<const N: usize> std::ops::Deref for Buf<N> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{len} bytes do not fit a {max}-byte buffer")]
struct TooLong {
    len: usize,
    max: usize,
}

impl<const N: usize> libmdbx::Decodable<'_> for Buf<N> {
    fn decode(data: &[u8]) -> Result<Self, libmdbx::Error> {
        if data.len() > N {
            let error = TooLong {
                len: data.len(),
                max: N,
            };
            return Err(libmdbx::Error::DecodeError(Box::new(error)));
        }
        let mut bytes = [0u8; N];
        bytes[..data.len()].copy_from_slice(data);
        Ok(Self {
            len: data.len(),
            bytes,
        })
    }
}

/// Longest hashed-table key: hashed address ‖ hashed slot.
pub(crate) const HASHED_KEY_LEN_MAX: usize = 64;
/// Longest hashed-table value: an account record.
pub(crate) const HASHED_VALUE_LEN_MAX: usize = ACCOUNT_RECORD_LEN_MAX;

pub(crate) fn corrupt(table: &'static str, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        table,
        reason: reason.into(),
    }
}

/// An account as the flat tables store it; the hashed table also keeps its storage root, so that
/// re-hashing an account leaf never needs the account's storage trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccountRecord {
    pub info: AccountInfo,
    pub storage_root: B256,
}

const HAS_CODE: u8 = 1;
const HAS_STORAGE: u8 = 2;
/// Flags byte, nonce length byte, nonce, balance, code hash, storage root.
pub(crate) const ACCOUNT_RECORD_LEN_MAX: usize = 2 + 8 + 32 + 32 + 32;

impl AccountRecord {
    /// `[flags][nonce length][nonce][balance][code hash if not empty][storage root if not empty]`
    /// with nonce and balance big-endian without leading zeros; the balance takes the bytes left
    /// between the nonce and the hashes.
    pub fn encode(&self) -> ([u8; ACCOUNT_RECORD_LEN_MAX], usize) {
        let mut out = [0u8; ACCOUNT_RECORD_LEN_MAX];
        let mut flags = 0;
        let nonce = self.info.nonce.to_be_bytes();
        let nonce = trim(&nonce);
        let balance = self.info.balance.to_be_bytes::<32>();
        let balance = trim(&balance);
        out[1] = nonce.len() as u8;
        let mut at = 2;
        for part in [nonce, balance] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        if self.info.code_hash != KECCAK_EMPTY {
            flags |= HAS_CODE;
            out[at..at + 32].copy_from_slice(self.info.code_hash.as_slice());
            at += 32;
        }
        if self.storage_root != EMPTY_ROOT_HASH {
            flags |= HAS_STORAGE;
            out[at..at + 32].copy_from_slice(self.storage_root.as_slice());
            at += 32;
        }
        out[0] = flags;
        (out, at)
    }

    pub fn decode(table: &'static str, bytes: &[u8]) -> Result<Self, StorageError> {
        let (&flags, rest) = bytes
            .split_first()
            .ok_or_else(|| corrupt(table, "empty account"))?;
        let (&nonce_len, rest) = rest
            .split_first()
            .ok_or_else(|| corrupt(table, "truncated account"))?;
        let hashes =
            32 * (flags & HAS_CODE != 0) as usize + 32 * (flags & HAS_STORAGE != 0) as usize;
        let nonce_len = nonce_len as usize;
        if flags & !(HAS_CODE | HAS_STORAGE) != 0
            || nonce_len > 8
            || rest.len() < nonce_len + hashes
        {
            return Err(corrupt(table, format!("bad account record {}", hex(bytes))));
        }
        let balance_len = rest.len() - nonce_len - hashes;
        if balance_len > 32 {
            return Err(corrupt(
                table,
                format!("bad account balance {}", hex(bytes)),
            ));
        }
        let (nonce, rest) = rest.split_at(nonce_len);
        let (balance, mut rest) = rest.split_at(balance_len);
        let mut take_hash = |present: bool, default: B256| {
            if !present {
                return default;
            }
            let (hash, tail) = rest.split_at(32);
            rest = tail;
            B256::from_slice(hash)
        };
        let code_hash = take_hash(flags & HAS_CODE != 0, KECCAK_EMPTY);
        let storage_root = take_hash(flags & HAS_STORAGE != 0, EMPTY_ROOT_HASH);
        let mut nonce_bytes = [0u8; 8];
        nonce_bytes[8 - nonce.len()..].copy_from_slice(nonce);
        Ok(Self {
            info: AccountInfo {
                nonce: u64::from_be_bytes(nonce_bytes),
                balance: U256::from_be_slice(balance),
                code_hash,
            },
            storage_root,
        })
    }

    /// The account leaf value of the state trie.
    pub fn trie_rlp(&self, out: &mut Vec<u8>) {
        out.clear();
        let account = TrieAccount::new(
            self.info.nonce,
            self.info.balance,
            self.storage_root,
            self.info.code_hash,
        );
        alloy_rlp::Encodable::encode(&account, out);
    }
}

/// Big-endian bytes without leading zeros (empty for zero).
pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[zeros..]
}

/// A storage value: big-endian without leading zeros. Zero is never stored.
pub(crate) fn encode_slot_value(value: &U256) -> ([u8; 32], usize) {
    let bytes = value.to_be_bytes::<32>();
    let len = trim(&bytes).len();
    let mut out = [0u8; 32];
    out[..len].copy_from_slice(&bytes[32 - len..]);
    (out, len)
}

pub(crate) fn decode_slot_value(table: &'static str, bytes: &[u8]) -> Result<U256, StorageError> {
    if bytes.is_empty() || bytes.len() > 32 || bytes[0] == 0 {
        return Err(corrupt(table, format!("bad storage value {}", hex(bytes))));
    }
    Ok(U256::from_be_slice(bytes))
}

/// Plain storage key: address ‖ slot (big-endian).
pub(crate) fn plain_slot_key(address: &Address, slot: &U256) -> [u8; 52] {
    let mut key = [0u8; 52];
    key[..20].copy_from_slice(address.as_slice());
    key[20..].copy_from_slice(&slot.to_be_bytes::<32>());
    key
}

/// Hashed storage key: keccak(address) ‖ keccak(slot).
pub(crate) fn hashed_slot_key(hashed_address: &B256, hashed_slot: &B256) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(hashed_address.as_slice());
    key[32..].copy_from_slice(hashed_slot.as_slice());
    key
}

/// Trie node key: the trie's key prefix (empty for the account trie, the hashed address for a
/// storage trie) followed by the node's path, one byte per nibble, so that a node sorts right
/// before the nodes below it.
pub(crate) fn node_key(prefix: &[u8], path: &Nibbles, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(prefix);
    out.extend(path.iter());
}

pub(crate) fn node_path(table: &'static str, nibbles: &[u8]) -> Result<Nibbles, StorageError> {
    if nibbles.len() >= 64 || nibbles.iter().any(|n| *n > 0xf) {
        return Err(corrupt(table, format!("bad trie path {}", hex(nibbles))));
    }
    Ok(Nibbles::from_nibbles_unchecked(nibbles))
}

/// A trie branch node as stored: the hash builder's [`BranchNodeCompact`], plus the hashes of
/// the children that are single leaves (the hash builder keeps only branch children's hashes),
/// so that an unchanged leaf beside a changed one need not be read and hashed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredNode {
    pub branch: BranchNodeCompact,
    /// Children that are leaves with a known hash; disjoint from the tree and hash masks.
    pub leaf_mask: TrieMask,
    pub leaf_hashes: Vec<B256>,
}

impl StoredNode {
    /// The hash of the leaf child at `nibble`, which `leaf_mask` must hold.
    pub fn leaf_hash(&self, nibble: u8) -> B256 {
        let below = *self.leaf_mask & (*TrieMask::from_nibble(nibble) - 1);
        self.leaf_hashes[below.count_ones() as usize]
    }
}

/// `[state mask][tree mask][hash mask][leaf mask]` (u16 big-endian each), the branch children's
/// hashes, the leaf children's hashes, then the root hash if the node has one (only the root
/// node does).
pub(crate) fn encode_node(node: &StoredNode, out: &mut Vec<u8>) {
    out.clear();
    let branch = &node.branch;
    for mask in [
        branch.state_mask,
        branch.tree_mask,
        branch.hash_mask,
        node.leaf_mask,
    ] {
        out.extend_from_slice(&mask.get().to_be_bytes());
    }
    let hashes = branch
        .hashes
        .iter()
        .chain(&node.leaf_hashes)
        .chain(branch.root_hash.iter());
    for hash in hashes {
        out.extend_from_slice(hash.as_slice());
    }
}

pub(crate) fn decode_node(table: &'static str, bytes: &[u8]) -> Result<StoredNode, StorageError> {
    let bad = || corrupt(table, format!("bad trie node {}", hex(bytes)));
    if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(32) {
        return Err(bad());
    }
    let mask = |i: usize| TrieMask::new(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
    let (state_mask, tree_mask, hash_mask, leaf_mask) = (mask(0), mask(2), mask(4), mask(6));
    let mut hashes: Vec<B256> = bytes[8..].chunks_exact(32).map(B256::from_slice).collect();
    let children = (hash_mask.count_ones() + leaf_mask.count_ones()) as usize;
    let root_hash = match hashes.len().checked_sub(children) {
        Some(0) => None,
        Some(1) => hashes.pop(),
        _ => return Err(bad()),
    };
    let valid = tree_mask.is_subset_of(state_mask)
        && hash_mask.is_subset_of(state_mask)
        && leaf_mask.is_subset_of(state_mask)
        && (*leaf_mask & (*tree_mask | *hash_mask)) == 0;
    if !valid {
        return Err(bad());
    }
    let leaf_hashes = hashes.split_off(hash_mask.count_ones() as usize);
    let branch = BranchNodeCompact::new(state_mask, tree_mask, hash_mask, hashes, root_hash);
    Ok(StoredNode {
        branch,
        leaf_mask,
        leaf_hashes,
    })
}

/// Block body: per transaction `[sender][length u32][EIP-2718 bytes]`.
pub(crate) fn encode_body(txs: &[RecoveredTx]) -> Vec<u8> {
    let mut out = Vec::with_capacity(txs.iter().map(|tx| 24 + tx.encoded_len()).sum());
    for tx in txs {
        out.extend_from_slice(tx.sender().as_slice());
        out.extend_from_slice(&(tx.encoded_len() as u32).to_be_bytes());
        out.extend_from_slice(tx.raw());
    }
    out
}

pub(crate) fn decode_body(
    table: &'static str,
    bytes: &[u8],
) -> Result<Vec<RecoveredTx>, StorageError> {
    let mut txs = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 20 {
            return Err(corrupt(table, "truncated sender"));
        }
        let (sender, tail) = rest.split_at(20);
        let (raw, tail) = split_framed(table, tail)?;
        let tx = RecoveredTx::decode(Bytes::copy_from_slice(raw))
            .map_err(|e| corrupt(table, e.to_string()))?;
        txs.push(RecoveredTx::new_unchecked(tx, Address::from_slice(sender)));
        rest = tail;
    }
    Ok(txs)
}

/// The one transaction at `index` of an encoded body, decoding none of the others (`None` past
/// the end): a receipt lookup must not cost a whole block's decoding.
pub(crate) fn decode_body_tx(
    table: &'static str,
    bytes: &[u8],
    index: usize,
) -> Result<Option<RecoveredTx>, StorageError> {
    let mut rest = bytes;
    let mut at = 0;
    while !rest.is_empty() {
        if rest.len() < 20 {
            return Err(corrupt(table, "truncated sender"));
        }
        let (sender, tail) = rest.split_at(20);
        let (raw, tail) = split_framed(table, tail)?;
        if at == index {
            let tx = RecoveredTx::decode(Bytes::copy_from_slice(raw))
                .map_err(|e| corrupt(table, e.to_string()))?;
            return Ok(Some(RecoveredTx::new_unchecked(
                tx,
                Address::from_slice(sender),
            )));
        }
        at += 1;
        rest = tail;
    }
    Ok(None)
}

pub(crate) fn split_framed<'a>(
    table: &'static str,
    bytes: &'a [u8],
) -> Result<(&'a [u8], &'a [u8]), StorageError> {
    if bytes.len() < 4 {
        return Err(corrupt(table, "truncated length"));
    }
    let (len, rest) = bytes.split_at(4);
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if rest.len() < len {
        return Err(corrupt(table, "truncated item"));
    }
    Ok(rest.split_at(len))
}

/// Transaction location: block number ‖ index in the block.
pub(crate) fn encode_tx_location(number: BlockNumber, index: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&number.to_be_bytes());
    out[8..].copy_from_slice(&index.to_be_bytes());
    out
}

pub(crate) fn decode_tx_location(
    table: &'static str,
    bytes: &[u8],
) -> Result<(BlockNumber, u32), StorageError> {
    let bytes: [u8; 12] = bytes
        .try_into()
        .map_err(|_| corrupt(table, format!("bad tx location {}", hex(bytes))))?;
    Ok((
        u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
        u32::from_be_bytes(bytes[8..].try_into().expect("4 bytes")),
    ))
}

pub(crate) fn decode_number(
    table: &'static str,
    bytes: &[u8],
) -> Result<BlockNumber, StorageError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(table, format!("bad block number {}", hex(bytes))))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn decode_hash(table: &'static str, bytes: &[u8]) -> Result<B256, StorageError> {
    B256::try_from(bytes).map_err(|_| corrupt(table, format!("bad hash {}", hex(bytes))))
}

fn hex(bytes: &[u8]) -> String {
    alloy_primitives::hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn account_record_roundtrip(
            nonce: u64,
            balance: [u8; 32],
            balance_bytes in 0usize..=32,
            code: Option<[u8; 32]>,
            root: Option<[u8; 32]>,
        ) {
            let mut balance = balance;
            balance[..32 - balance_bytes].fill(0);
            let record = AccountRecord {
                info: AccountInfo {
                    nonce,
                    balance: U256::from_be_bytes(balance),
                    code_hash: code.map_or(KECCAK_EMPTY, B256::from),
                },
                storage_root: root.map_or(EMPTY_ROOT_HASH, B256::from),
            };
            let (bytes, len) = record.encode();
            prop_assert_eq!(AccountRecord::decode("test", &bytes[..len]).unwrap(), record);
        }

        #[test]
        fn slot_value_roundtrip(value: [u8; 32]) {
            let value = U256::from_be_bytes(value);
            prop_assume!(!value.is_zero());
            let (bytes, len) = encode_slot_value(&value);
            prop_assert_eq!(decode_slot_value("test", &bytes[..len]).unwrap(), value);
        }
    }

    #[test]
    fn node_roundtrip() {
        let hashes = vec![B256::repeat_byte(1), B256::repeat_byte(2)];
        for root in [None, Some(B256::repeat_byte(3))] {
            let branch =
                BranchNodeCompact::new(0b1011_0000_0000_0011, 0b1, 0b11, hashes.clone(), root);
            let leaf_hashes = vec![B256::repeat_byte(4), B256::repeat_byte(5)];
            let node = StoredNode {
                branch,
                leaf_mask: TrieMask::new(0b1010_0000_0000_0000),
                leaf_hashes,
            };
            let mut bytes = Vec::new();
            encode_node(&node, &mut bytes);
            let decoded = decode_node("test", &bytes).unwrap();
            assert_eq!(decoded, node);
            assert_eq!(decoded.leaf_hash(13), B256::repeat_byte(4));
            assert_eq!(decoded.leaf_hash(15), B256::repeat_byte(5));
        }
        assert!(
            decode_node("test", &[0, 1, 0, 0, 0, 1, 0, 0]).is_err(),
            "hash mask without hash"
        );
        assert!(
            decode_node("test", &[0, 1, 0, 0, 0, 1, 0, 1]).is_err(),
            "leaf and hash child"
        );
    }
}
