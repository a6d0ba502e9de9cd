//! Senders recovered lately, by transaction hash, so that a transaction that reaches this node
//! again (a forwarded copy after its block committed, a payload proposed again after its round
//! failed, a block synced after its proposal was decoded) is not recovered again (~30 µs of
//! secp256k1 each time) once it has left the pool.
//!
//! Safe because the hash is the keccak of the exact signed bytes a transaction was decoded from
//! (the decoder accepts only canonical encodings), signature included: bytes with the same hash
//! are the same transaction, whose sender a recovery of those bytes found. Only recoveries (and
//! the pool, which holds only recovered transactions) fill it.
//!
//! `recover_reusing` is the one way ingress and the payload decoder get senders: from the pool
//! or this cache when they can, recovered otherwise.

use super::TxPool;
use alloy_primitives::{Address, B256};
use kestrel_types::{DecodedTx, RecoveredTx, TxError};
use parking_lot::Mutex;

/// Transactions recovered between two looks at the cache (`recover_reusing`).
const RECOVERY_CHUNK_TXS: usize = 64;

/// The senders of `txs`, in order, and how many were recovered. One `pool` knows
/// (`TxPool::known_senders`) is taken from it; the rest are recovered a chunk at a time, the
/// cache asked again before each chunk and given the chunk's recoveries at once. Ingress and
/// the payload decoder meet the same transactions at the same moment (a leader proposes what
/// it forwarded a moment before): recovering whole batches side by side, each unaware of the
/// other's, recovered about one transaction in ten twice on a validator of four under load.
pub fn recover_reusing(
    txs: Vec<DecodedTx>,
    pool: Option<&TxPool>,
) -> (Vec<Result<RecoveredTx, TxError>>, usize) {
    let hashes: Vec<B256> = txs.iter().map(|tx| *tx.tx().tx_hash()).collect();
    let mut known = match pool {
        Some(pool) => pool.known_senders(&hashes),
        None => vec![None; txs.len()],
    };
    let mut out = Vec::with_capacity(txs.len());
    let mut recovered = 0;
    let mut txs = txs.into_iter();
    for (hashes, known) in hashes
        .chunks(RECOVERY_CHUNK_TXS)
        .zip(known.chunks_mut(RECOVERY_CHUNK_TXS))
    {
        if let Some(pool) = pool {
            pool.recent.fill(hashes, known);
        }
        let start = out.len();
        for sender in known.iter() {
            let tx = txs.next().expect("one transaction a hash");
            out.push(match sender {
                Some(sender) => Ok(RecoveredTx::new_unchecked(tx, *sender)),
                None => {
                    recovered += 1;
                    RecoveredTx::recover(tx)
                }
            });
        }
        if let Some(pool) = pool {
            let fresh = out[start..].iter().zip(known.iter());
            pool.remember_senders(
                fresh.filter_map(|(tx, k)| tx.as_ref().ok().filter(|_| k.is_none())),
            );
        }
    }
    (out, recovered)
}

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
