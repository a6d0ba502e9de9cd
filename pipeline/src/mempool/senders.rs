//! Senders recovered lately, by transaction hash, so that a transaction that reaches this node
//! again (a forwarded copy after its block committed, a payload proposed again after its round
//! failed, a block synced after its proposal was decoded) is not recovered again (~30 µs of
//! secp256k1 each time) once it has left the pool.
//!
//! Safe because the hash is the keccak of the exact signed bytes a transaction was decoded from
//! (the decoder accepts only canonical encodings), signature included: bytes with the same hash
//! are the same transaction, whose sender a recovery of those bytes found. Only recoveries (and
//! the pool, which holds only recovered transactions) fill it.

use alloy_primitives::{Address, B256};
use parking_lot::Mutex;

/// Slots of the cache (52 bytes each, 6.8 MiB), allocated at the first insertion: at 5,000
/// transactions a second, the last ~25 s of transactions, longer than a transaction takes from
/// admission to commit under load.
pub const SENDER_CACHE_SLOTS: usize = 1 << 17;

/// A direct-mapped cache: a hash goes in the slot its low bits name, replacing whatever was
/// there. Keccak hashes are uniform, so the slots fill evenly without any bookkeeping.
#[derive(Debug, Default)]
pub(super) struct SenderCache {
    /// `(hash, sender)`; a zero hash marks an empty slot.
    slots: Mutex<Vec<(B256, Address)>>,
}

fn slot(hash: &B256) -> usize {
    let low = u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"));
    (low as usize) % SENDER_CACHE_SLOTS
}

impl SenderCache {
    /// Remembers `(hash, sender)` pairs, each from a recovery of the bytes the hash is of.
    pub(super) fn insert(&self, senders: impl IntoIterator<Item = (B256, Address)>) {
        let mut slots = self.slots.lock();
        if slots.is_empty() {
            slots.resize(SENDER_CACHE_SLOTS, (B256::ZERO, Address::ZERO));
        }
        for (hash, sender) in senders {
            slots[slot(&hash)] = (hash, sender);
        }
    }

    /// Fills the `None`s of `senders` whose hash (the same index of `hashes`) is cached.
    pub(super) fn fill(&self, hashes: &[B256], senders: &mut [Option<Address>]) {
        let slots = self.slots.lock();
        if slots.is_empty() {
            return;
        }
        for (hash, sender) in hashes.iter().zip(senders) {
            if sender.is_none() {
                let (cached, address) = slots[slot(hash)];
                if cached == *hash && !hash.is_zero() {
                    *sender = Some(address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose slot is `slot` (its low bits), told apart by `tag`.
    fn hash(slot: u64, tag: u8) -> B256 {
        let mut hash = B256::repeat_byte(tag);
        hash[..8].copy_from_slice(&slot.to_le_bytes());
        hash
    }

    #[test]
    fn a_hash_finds_its_own_sender_or_none() {
        let cache = SenderCache::default();
        let (a, b, c) = (hash(5, 1), hash(5, 2), hash(6, 3));
        let mut senders = vec![None; 3];
        cache.fill(&[a, b, c], &mut senders);
        assert_eq!(senders, vec![None; 3], "empty");
        cache.insert([
            (a, Address::with_last_byte(1)),
            (c, Address::with_last_byte(3)),
        ]);
        // b shares a's slot: it replaces a, and a is then unknown, never given b's sender.
        cache.insert([(b, Address::with_last_byte(2))]);
        let mut senders = vec![None, None, None, Some(Address::with_last_byte(9))];
        cache.fill(&[a, b, c, hash(6, 4)], &mut senders);
        assert_eq!(
            senders,
            vec![
                None,
                Some(Address::with_last_byte(2)),
                Some(Address::with_last_byte(3)),
                // Known already (from the pool): left alone.
                Some(Address::with_last_byte(9)),
            ]
        );
        // The zero hash marks empty slots: never a hit.
        let mut senders = vec![None];
        cache.fill(&[B256::ZERO], &mut senders);
        assert_eq!(senders, vec![None]);
    }
}
